//! The usage book on its own: folding, bucket bounds, retention and the entry bound.

use tally_core::{
    AccountId, Amount, Change, Granularity, Origin, Record, Timestamp, Usage, UsageBook,
    UsageConfig, UsageQuery, UsageSample,
};

const USER: AccountId = AccountId(10);
const APP: AccountId = AccountId(2);
const MINUTE: u64 = 60_000;

fn charge(at: u64, amount: u64, endpoint: &str, tokens: u64) -> Record {
    Record {
        account: USER,
        op: None,
        at: Timestamp(at),
        origin: Origin::default(),
        change: Change::Charged {
            app: APP,
            amount: Amount::new(amount).unwrap(),
            endpoint: endpoint.to_owned(),
            metadata: String::new(),
            posting: 1,
            token: None,
            usage: Usage {
                input_tokens: tokens,
                ..Usage::default()
            },
        },
    }
}

fn all(granularity: Granularity) -> UsageQuery {
    UsageQuery::new(granularity, Timestamp(0), Timestamp(u64::MAX))
}

#[test]
fn only_commits_and_charges_count_and_order_does_not_matter() {
    let records = [charge(5, 10, "/a", 1), charge(MINUTE + 1, 20, "/a", 2)];
    let mut forward = UsageBook::new(UsageConfig::default());
    let mut backward = UsageBook::new(UsageConfig::default());
    for r in &records {
        assert!(forward.fold(r));
    }
    for r in records.iter().rev() {
        backward.fold(r);
    }
    let voided = Record {
        change: Change::Voided {
            hold: 1,
            amount_released: Amount::new(5).unwrap(),
        },
        ..charge(0, 1, "", 0)
    };
    assert!(!forward.fold(&voided));
    for g in Granularity::ALL {
        assert_eq!(forward.report(&all(g)), backward.report(&all(g)));
    }
    assert_eq!(forward.report(&all(Granularity::Minute)).buckets.len(), 2);
    assert_eq!(forward.report(&all(Granularity::Hour)).totals.cost, 30);
}

#[test]
fn the_entry_bound_drops_the_oldest_buckets_and_says_the_range_is_incomplete() {
    let config = UsageConfig {
        entries_max: 3,
        ..UsageConfig::default()
    };
    let mut book = UsageBook::new(config);
    for minute in 0..5 {
        book.fold(&charge(minute * MINUTE, 1, "/a", 0));
    }
    // Minute buckets: only the newest three remain; hours and days hold one entry each.
    let minutes = book.report(&all(Granularity::Minute));
    assert!(!minutes.complete);
    assert_eq!(
        minutes.buckets.iter().map(|(t, _)| t.0).collect::<Vec<_>>(),
        vec![2 * MINUTE, 3 * MINUTE, 4 * MINUTE]
    );
    let from_kept = UsageQuery::new(
        Granularity::Minute,
        Timestamp(2 * MINUTE),
        Timestamp(u64::MAX),
    );
    assert!(book.report(&from_kept).complete);
    let hours = book.report(&all(Granularity::Hour));
    assert!(hours.complete);
    assert_eq!(hours.totals.calls, 5);
    assert_eq!(book.len(), 5);
    // A record older than what is kept is not counted where it would be dropped at once.
    book.fold(&charge(0, 1, "/a", 0));
    assert_eq!(book.report(&all(Granularity::Minute)).totals.calls, 3);
    assert_eq!(book.report(&all(Granularity::Day)).totals.calls, 6);
}

#[test]
fn retention_drops_buckets_older_than_the_newest_minus_the_period() {
    let config = UsageConfig {
        retention_ms: [10 * MINUTE, u64::MAX, u64::MAX],
        entries_max: 1_000,
    };
    let mut book = UsageBook::new(config);
    book.fold(&charge(0, 1, "/a", 0));
    book.fold(&charge(5 * MINUTE, 1, "/a", 0));
    book.fold(&charge(12 * MINUTE, 1, "/a", 0));
    let minutes = book.report(&all(Granularity::Minute));
    assert_eq!(minutes.totals.calls, 2);
    assert!(!minutes.complete);
    // Saving sees the dropped entry as removed.
    let changes = book.take_changes();
    assert!(changes
        .iter()
        .any(|((g, k), v)| *g == Granularity::Minute && k.bucket == 0 && v.is_none()));
    assert!(book.take_changes().is_empty());
}

#[test]
fn sums_never_overflow_and_filters_select_exactly() {
    let mut book = UsageBook::new(UsageConfig::default());
    for _ in 0..3 {
        book.fold(&charge(0, Amount::MAX.get(), "/big", u64::MAX));
    }
    book.fold(&charge(0, 7, "/small", 1));
    let big = book.report(&all(Granularity::Day).endpoint("/big"));
    assert_eq!(big.totals.cost, 3 * u128::from(Amount::MAX.get()));
    assert_eq!(big.totals.input_tokens, 3 * u128::from(u64::MAX));
    let small = book.report(
        &all(Granularity::Day)
            .endpoint("/small")
            .app(APP)
            .account(USER),
    );
    assert_eq!(small.totals.cost, 7);
    assert_eq!(
        book.report(&all(Granularity::Day).account(AccountId(99)))
            .totals
            .calls,
        0
    );
    let top = book.top_users(&all(Granularity::Day), 5);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].0, USER);
}

#[test]
fn a_restored_book_remembers_from_when_it_is_complete() {
    let mut saved = UsageBook::new(UsageConfig {
        entries_max: 1,
        ..UsageConfig::default()
    });
    saved.fold(&charge(0, 1, "/a", 0));
    saved.fold(&charge(MINUTE, 1, "/a", 0));
    let mut restored = UsageBook::new(UsageConfig::default());
    for ((granularity, key), totals) in saved.take_changes() {
        if let Some(totals) = totals {
            restored.restore(granularity, key, totals);
        }
    }
    for (granularity, from) in Granularity::ALL.into_iter().zip(saved.complete_from()) {
        restored.restore_complete_from(granularity, from);
    }
    assert_eq!(restored.complete_from(), [MINUTE, 0, 0]);
    assert!(!restored.report(&all(Granularity::Minute)).complete);
    assert_eq!(
        restored.report(&all(Granularity::Minute)),
        saved.report(&all(Granularity::Minute))
    );
}

#[test]
fn changes_a_save_could_not_store_are_listed_again() {
    let mut book = UsageBook::new(UsageConfig::default());
    assert!(book.is_empty());
    book.fold(&charge(0, 5, "/a", 0));
    assert!(!book.is_empty());
    let taken = book.take_changes();
    assert_eq!(taken.len(), 3, "one entry per granularity");
    assert!(book.take_changes().is_empty());
    book.return_changes(taken.clone());
    assert_eq!(book.take_changes(), taken);
    // A book nobody saves keeps no change set.
    let mut unsaved = UsageBook::unsaved(UsageConfig::default());
    unsaved.fold(&charge(0, 5, "/a", 0));
    unsaved.return_changes(taken);
    assert!(unsaved.take_changes().is_empty());
    assert_eq!(unsaved.len(), 3);
}

#[test]
fn a_report_has_one_row_per_bucket_whoever_used_it() {
    let mut book = UsageBook::new(UsageConfig::default());
    book.fold(&charge(1, 5, "/a", 1));
    book.fold(&charge(2, 7, "/b", 2));
    book.fold(&charge(MINUTE, 11, "/a", 4));
    let report = book.report(&all(Granularity::Minute));
    let rows: Vec<_> = report
        .buckets
        .iter()
        .map(|(t, u)| (t.0, u.calls, u.cost, u.input_tokens))
        .collect();
    assert_eq!(rows, vec![(0, 2, 12, 3), (MINUTE, 1, 11, 4)]);
}

fn refund(at: u64, amount: u64, endpoint: &str) -> Record {
    Record {
        change: Change::Refunded {
            posting: 1,
            app: APP,
            amount: Amount::new(amount).unwrap(),
            endpoint: endpoint.to_owned(),
        },
        ..charge(at, 1, "", 0)
    }
}

#[test]
fn revenue_is_net_of_refunds_where_they_happen_and_margin_is_net_of_the_providers_cost() {
    let mut book = UsageBook::new(UsageConfig::default());
    let mut with_cost = charge(5, 1_000, "/gpt", 10);
    if let Change::Charged { usage, .. } = &mut with_cost.change {
        usage.provider_cost = 600;
    }
    book.fold(&with_cost);
    book.fold(&charge(6, 500, "/tts", 0));
    // 300 of the first call refunded a minute later: counted then, at its endpoint.
    assert!(book.fold(&refund(MINUTE + 1, 300, "/gpt")));
    let minutes = book.report(&all(Granularity::Minute));
    assert_eq!(minutes.buckets.len(), 2);
    assert_eq!(
        (minutes.buckets[0].1.cost, minutes.buckets[0].1.refunded),
        (1_500, 0)
    );
    assert_eq!(
        (minutes.buckets[1].1.cost, minutes.buckets[1].1.net()),
        (0, -300),
        "a bucket that only refunds is negative"
    );
    let day = book.report(&all(Granularity::Day)).totals;
    assert_eq!((day.calls, day.cost, day.refunded), (2, 1_500, 300));
    assert_eq!(
        (day.provider_cost, day.net(), day.margin()),
        (600, 1_200, 600)
    );
    let mut gpt = all(Granularity::Day);
    gpt.endpoint = Some("/gpt".into());
    let gpt = book.report(&gpt).totals;
    assert_eq!((gpt.net(), gpt.margin()), (700, 100));
}

#[test]
fn a_sample_folds_exactly_as_its_record_and_other_records_have_none() {
    let records = [
        charge(5, 10, "/a", 1),
        charge(MINUTE + 1, 20, "/b", 2),
        refund(MINUTE + 2, 4, "/b"),
        charge(MINUTE + 2, 7, "/a", 0),
    ];
    let mut by_record = UsageBook::new(UsageConfig::default());
    let mut by_sample = UsageBook::new(UsageConfig::default());
    for r in &records {
        by_record.fold(r);
        let sample = UsageSample::of(r).unwrap();
        assert_eq!((sample.account, sample.app, sample.at), (USER, APP, r.at));
        by_sample.fold_sample(&sample);
    }
    for g in Granularity::ALL {
        assert_eq!(by_record.report(&all(g)), by_sample.report(&all(g)));
    }
    assert_eq!(by_record.take_changes(), by_sample.take_changes());
    let voided = Record {
        change: Change::Voided {
            hold: 1,
            amount_released: Amount::new(5).unwrap(),
        },
        ..charge(0, 1, "", 0)
    };
    assert_eq!(UsageSample::of(&voided), None);
}

#[test]
fn a_corrected_estimate_counts_one_call_its_real_usage_and_its_real_cost() {
    let mut book = UsageBook::new(UsageConfig::default());
    let estimate = Record {
        change: Change::Committed {
            hold: 1,
            app: APP,
            amount_posted: Amount::new(400).unwrap(),
            amount_released: Amount::ZERO,
            posting: 2,
            endpoint: "/gpt".into(),
            usage: Usage::default(),
            metered: false,
            estimated: true,
            period: None,
        },
        ..charge(5, 1, "", 0)
    };
    let correction = |old: u64, new: u64| Record {
        change: Change::Corrected {
            posting: 2,
            app: APP,
            endpoint: "/gpt".into(),
            old: Amount::new(old).unwrap(),
            new: Amount::new(new).unwrap(),
            usage: Usage {
                output_tokens: 70,
                ..Usage::default()
            },
            by_usage: false,
        },
        ..charge(MINUTE * 2, 1, "", 0)
    };
    book.fold(&estimate);
    assert!(book.fold(&correction(400, 250)));
    let day = book.report(&all(Granularity::Day)).totals;
    assert_eq!((day.calls, day.output_tokens), (1, 70));
    assert_eq!((day.cost, day.refunded, day.net()), (400, 150, 250));
    let mut up = UsageBook::new(UsageConfig::default());
    up.fold(&estimate);
    up.fold(&correction(400, 500));
    let day = up.report(&all(Granularity::Day)).totals;
    assert_eq!((day.calls, day.cost, day.net()), (1, 500, 500));
    // The correction's minute has no call and is still reported.
    assert_eq!(up.report(&all(Granularity::Minute)).buckets.len(), 2);
}

/// Entries of ever new endpoints under a tight entry bound: the dropped ones' endpoint numbers
/// are reused, and neither a report nor an incremental save ever shows an entry under another
/// endpoint's name. A book rebuilt from the saves alone equals the live one.
#[test]
fn endpoints_that_come_and_go_under_the_bound_keep_their_names_in_reports_and_saves() {
    let config = UsageConfig {
        retention_ms: [u64::MAX; 3],
        entries_max: 4,
    };
    let mut live = UsageBook::new(config.clone());
    let mut saved: std::collections::BTreeMap<_, _> = std::collections::BTreeMap::new();
    for i in 0..200u64 {
        // A new endpoint every other call, an old one (often dropped by now) in between.
        let endpoint = if i % 2 == 0 {
            format!("/e{i}")
        } else {
            format!("/e{}", i / 3)
        };
        live.fold(&charge(i * MINUTE, i + 1, &endpoint, i));
        if i % 7 == 0 {
            for (key, totals) in live.take_changes() {
                match totals {
                    Some(totals) => saved.insert(key, totals),
                    None => saved.remove(&key),
                };
            }
        }
    }
    for (key, totals) in live.take_changes() {
        match totals {
            Some(totals) => saved.insert(key, totals),
            None => saved.remove(&key),
        };
    }
    let mut rebuilt = UsageBook::new(config);
    for ((granularity, key), totals) in saved.clone() {
        rebuilt.restore(granularity, key, totals);
    }
    for (granularity, from) in Granularity::ALL.into_iter().zip(live.complete_from()) {
        rebuilt.restore_complete_from(granularity, from);
    }
    assert_eq!(rebuilt.len(), live.len());
    assert_eq!(
        saved.len(),
        live.len(),
        "the saves hold exactly the live entries"
    );
    for g in Granularity::ALL {
        assert_eq!(rebuilt.report(&all(g)), live.report(&all(g)));
    }
    // Each kept minute entry is the one call made at its minute, under its own endpoint.
    for ((granularity, key), totals) in &saved {
        if *granularity == Granularity::Minute {
            let i = key.bucket / MINUTE;
            let endpoint = if i % 2 == 0 {
                format!("/e{i}")
            } else {
                format!("/e{}", i / 3)
            };
            assert_eq!(key.endpoint, endpoint);
            assert_eq!((totals.calls, totals.cost), (1, u128::from(i + 1)));
            let only = all(Granularity::Minute).endpoint(endpoint);
            assert!(live.report(&only).totals.cost >= u128::from(i + 1));
        }
    }
    // An endpoint no entry has any more matches nothing.
    let gone = all(Granularity::Minute).endpoint("/e0");
    assert_eq!(live.report(&gone).totals.calls, 0);
    assert!(live.top_users(&gone, 3).is_empty());
}

/// Random folds under tight bounds (retention and the entry bound both pruning, endpoints the
/// empty one included), saves taken and given back at random: the saves always rebuild the
/// live book exactly, and reports and top users filtered by endpoint sum what the saves hold.
#[test]
fn incremental_saves_rebuild_the_live_book_under_any_folds_prunes_and_returns() {
    for seed in 1..300u64 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = |n: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % n
        };
        let config = UsageConfig {
            retention_ms: [10 * MINUTE, 3 * 3_600_000, 5 * 86_400_000],
            entries_max: 1 + rnd(6) as usize,
        };
        let eps = ["", "/a", "/b", "/c", "/d", "/e"];
        let mut live = UsageBook::new(config.clone());
        let mut saved: std::collections::BTreeMap<_, _> = std::collections::BTreeMap::new();
        let mut t = 0u64;
        for i in 0..400u64 {
            t += rnd(3) * MINUTE * (1 + rnd(2) * 30);
            let at = t.saturating_sub(rnd(4) * MINUTE);
            let ep = eps[rnd(eps.len() as u64) as usize];
            let mut r = charge(at, i + 1, ep, i);
            r.account = AccountId(10 + rnd(3));
            live.fold(&r);
            match rnd(10) {
                0 | 1 => {
                    for (key, totals) in live.take_changes() {
                        match totals {
                            Some(totals) => saved.insert(key, totals),
                            None => saved.remove(&key),
                        };
                    }
                }
                2 => {
                    let taken = live.take_changes();
                    live.return_changes(taken);
                }
                _ => {}
            }
        }
        for (key, totals) in live.take_changes() {
            match totals {
                Some(totals) => saved.insert(key, totals),
                None => saved.remove(&key),
            };
        }
        assert!(live.take_changes().is_empty());
        assert_eq!(saved.len(), live.len(), "seed {seed}");
        let mut rebuilt = UsageBook::new(config);
        for ((g, key), totals) in saved.clone() {
            rebuilt.restore(g, key, totals);
        }
        for (g, from) in Granularity::ALL.into_iter().zip(live.complete_from()) {
            rebuilt.restore_complete_from(g, from);
        }
        for g in Granularity::ALL {
            assert_eq!(rebuilt.report(&all(g)), live.report(&all(g)), "seed {seed}");
            for ep in eps {
                let q = all(g).endpoint(ep);
                let mut want = tally_core::UsageTotals::default();
                for ((gg, k), tot) in &saved {
                    if *gg == g && k.endpoint == ep {
                        want.merge(tot);
                    }
                }
                assert_eq!(live.report(&q).totals, want, "seed {seed} {g:?} {ep:?}");
                assert_eq!(rebuilt.report(&q), live.report(&q), "seed {seed}");
                let top: u128 = live.top_users(&q, 10).iter().map(|(_, t)| t.cost).sum();
                assert_eq!(top, want.cost);
            }
        }
    }
}
