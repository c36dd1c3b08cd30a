//! The seeds' metered services, priced to the exact microcent and charged only on success.

use std::time::Duration;
use tally::{parse_usd, Price, Rate, Usage};

use crate::support::*;

#[tokio::test]
async fn a_text_model_holds_its_maximum_and_charges_the_tokens_used() {
    let w = World::new(100_000_000).await;
    w.tally
        .set_price(
            op(),
            APP,
            "/chat",
            Some(Price::PerToken {
                input: Rate::cents("200", 1_000_000).unwrap(),
                output: Rate::cents("600", 1_000_000).unwrap(),
            }),
        )
        .await
        .unwrap();
    let max = Usage {
        input_tokens: 1_200,
        output_tokens: 4_096,
        ..Usage::default()
    };
    let mut call = w
        .tally
        .meter(op(), ALICE, APP, "/chat", &max, Duration::from_secs(60))
        .await
        .unwrap();
    // 1,200 × 200 µ¢ + 4,096 × 600 µ¢ held.
    assert_eq!(call.hold().amount().get(), 1_200 * 200 + 4_096 * 600);
    let used = Usage {
        input_tokens: 1_200,
        output_tokens: 7,
        ..Usage::default()
    };
    let committed = call.finish(op(), &used).await.unwrap();
    assert_eq!(committed.amount_posted.get(), 240_000 + 4_200);
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 244_200);
    assert_eq!(w.available(ALICE).await, 100_000_000 - 244_200);
}

#[tokio::test]
async fn text_to_speech_costs_400_microcents_per_character() {
    let w = World::new(1_000_000).await;
    w.tally
        .set_price(
            op(),
            APP,
            "/polly",
            Some(Price::PerCharacter(Rate::new(400, 1).unwrap())),
        )
        .await
        .unwrap();
    let text = "Hello from tally, exact to the microcent.";
    let cost = w
        .tally
        .quote(
            APP,
            "/polly",
            &Usage {
                characters: text.len() as u64,
                ..Usage::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(cost.get(), 400 * text.len() as u64);
    w.tally
        .record_cost(op(), ALICE, cost.get(), APP, "/polly")
        .await
        .unwrap();
    assert_eq!(w.available(ALICE).await, 1_000_000 - 16_400);
}

#[tokio::test]
async fn document_pages_cost_150000_microcents_each() {
    let w = World::new(10_000_000).await;
    // 150 cents per 1,000 pages = 150,000 µ¢ per page.
    w.tally
        .set_price(
            op(),
            APP,
            "/textract",
            Some(Price::PerPage(Rate::cents("150", 1_000).unwrap())),
        )
        .await
        .unwrap();
    let max = Usage {
        pages: 12,
        ..Usage::default()
    };
    let mut call = w
        .tally
        .meter(op(), ALICE, APP, "/textract", &max, Duration::from_secs(60))
        .await
        .unwrap();
    call.finish(
        op(),
        &Usage {
            pages: 9,
            ..Usage::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 9 * 150_000);
}

#[tokio::test]
async fn a_search_at_one_cent_is_charged_only_when_the_work_succeeded() {
    let w = World::new(5_000_000).await;
    w.tally
        .set_price(
            op(),
            APP,
            "/search",
            Some(Price::PerRequest(parse_usd("0.01").unwrap())),
        )
        .await
        .unwrap();
    assert!(w
        .tally
        .funding_allowed(ALICE, Some(1_000_000))
        .await
        .unwrap());
    let one = Usage {
        requests: 1,
        ..Usage::default()
    };
    for succeeded in [true, false, true] {
        let mut call = w
            .tally
            .meter(op(), ALICE, APP, "/search", &one, Duration::from_secs(5))
            .await
            .unwrap();
        if succeeded {
            call.finish(op(), &one).await.unwrap();
        } // else dropped: voided
    }
    for _ in 0..200 {
        if w.tally.balance(ALICE).await.unwrap().debits_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 2_000_000);
    assert_eq!(w.available(ALICE).await, 3_000_000);
}

#[tokio::test]
async fn an_endpoint_without_a_price_is_refused() {
    let w = World::new(1_000).await;
    let err = w
        .tally
        .meter(
            op(),
            ALICE,
            APP,
            "/unknown",
            &Usage::default(),
            Duration::from_secs(1),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, tally::Error::NoPrice { .. }), "{err}");
    assert_eq!(w.available(ALICE).await, 1_000);
}

#[tokio::test]
async fn record_funding_update_moves_the_difference_and_checks_the_old_total() {
    let w = World::new(1_000).await;
    let account = w.tally.account(ALICE).await.unwrap();
    assert_eq!(account.funded(), 1_000);
    let raise = op();
    let funded = w
        .tally
        .record_funding_update(raise, ALICE, BANK, 1_000, 5_000)
        .await
        .unwrap();
    assert_eq!(funded, 5_000);
    assert_eq!(w.available(ALICE).await, 5_000);
    assert_eq!(w.tally.balance(BANK).await.unwrap().posted, -5_000);
    // A retry is answered as before; a stale `old` is refused, naming the current total.
    let again = w
        .tally
        .record_funding_update(raise, ALICE, BANK, 1_000, 5_000)
        .await
        .unwrap();
    assert_eq!(again, 5_000);
    let stale = w
        .tally
        .record_funding_update(op(), ALICE, BANK, 1_000, 7_000)
        .await
        .unwrap_err();
    assert_eq!(
        ledger(stale),
        tally::LedgerError::FundingMismatch {
            account: ALICE,
            current: 5_000,
            expected: 1_000
        }
    );
    assert_eq!(w.available(ALICE).await, 5_000);
    // Lowering takes the difference back, but never money already spent or held.
    w.tally
        .record_funding_update(op(), ALICE, BANK, 5_000, 2_000)
        .await
        .unwrap();
    assert_eq!(w.available(ALICE).await, 2_000);
    let _hold = w
        .tally
        .reserve(op(), tally::ReserveRequest::new(ALICE, APP, 1_500))
        .await
        .unwrap();
    let e = w
        .tally
        .record_funding_update(op(), ALICE, BANK, 2_000, 0)
        .await
        .unwrap_err();
    assert!(matches!(
        ledger(e),
        tally::LedgerError::InsufficientFunds { .. }
    ));
    // No change is not an update; the source must be a funding account; a fund adds to the
    // total.
    let e = w
        .tally
        .record_funding_update(op(), ALICE, BANK, 2_000, 2_000)
        .await
        .unwrap_err();
    assert!(matches!(ledger(e), tally::LedgerError::ZeroAmount { .. }));
    let e = w
        .tally
        .record_funding_update(op(), ALICE, APP, 2_000, 3_000)
        .await
        .unwrap_err();
    assert!(matches!(
        ledger(e),
        tally::LedgerError::WrongAccountKind { .. }
    ));
    w.tally.fund(op(), ALICE, BANK, 300).await.unwrap();
    assert_eq!(w.tally.account(ALICE).await.unwrap().funded(), 2_300);
    w.assert_books_balance().await;
    // The total survives a crash.
    let w = w.reopen().await;
    assert_eq!(w.tally.account(ALICE).await.unwrap().funded(), 2_300);
}

#[tokio::test]
async fn a_retry_that_reports_other_usage_is_a_conflict_naming_usage() {
    let w = World::new(1_000_000).await;
    let tokens = |input, output| Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    };
    let first = op();
    w.tally
        .charge_with_usage(first, ALICE, APP, 100, "/chat", tokens(10, 20))
        .await
        .unwrap();
    w.tally
        .charge_with_usage(first, ALICE, APP, 100, "/chat", tokens(10, 20))
        .await
        .unwrap();
    for other in [
        tokens(10, 21),
        tokens(11, 20),
        tokens(20, 10),
        Usage::default(),
    ] {
        let e = w
            .tally
            .charge_with_usage(first, ALICE, APP, 100, "/chat", other)
            .await
            .unwrap_err();
        assert_eq!(
            ledger(e),
            tally::LedgerError::IdempotencyConflict {
                op: first,
                field: "usage"
            }
        );
    }
    let hold = w
        .tally
        .reserve(op(), tally::ReserveRequest::new(ALICE, APP, 500))
        .await
        .unwrap();
    let commit = op();
    w.tally
        .commit_with_usage(commit, hold, 300, tokens(1, 2))
        .await
        .unwrap();
    let e = w
        .tally
        .commit_with_usage(commit, hold, 300, tokens(2, 1))
        .await
        .unwrap_err();
    assert!(matches!(
        ledger(e),
        tally::LedgerError::IdempotencyConflict { field: "usage", .. }
    ));
}

#[tokio::test]
async fn funding_updates_work_once_the_total_passes_the_largest_amount() {
    let w = World::new(0).await;
    let max = tally::Amount::MAX.get();
    w.tally.fund(op(), ALICE, BANK, max).await.unwrap();
    w.tally.fund(op(), ALICE, BANK, 1_000).await.unwrap();
    let total = u128::from(max) + 1_000;
    assert_eq!(w.tally.account(ALICE).await.unwrap().funded(), total);
    // The old total no longer fits an amount; the update still checks and applies it exactly.
    let funded = w
        .tally
        .record_funding_update(op(), ALICE, BANK, total, total - 400)
        .await
        .unwrap();
    assert_eq!(funded, total - 400);
    assert_eq!(w.tally.account(ALICE).await.unwrap().funded(), total - 400);
    // A difference larger than an amount is refused, changing nothing.
    let e = w
        .tally
        .record_funding_update(op(), ALICE, BANK, total - 400, total * 3)
        .await
        .unwrap_err();
    assert!(
        matches!(ledger(e.clone()), tally::LedgerError::AmountTooLarge { .. }),
        "{e:?}"
    );
    assert_eq!(w.tally.account(ALICE).await.unwrap().funded(), total - 400);
}

fn per_token(input_cents: &str, output_cents: &str) -> Price {
    Price::PerToken {
        input: Rate::cents(input_cents, 1_000_000).unwrap(),
        output: Rate::cents(output_cents, 1_000_000).unwrap(),
    }
}

#[tokio::test]
async fn a_call_is_finished_at_the_price_it_was_quoted_even_when_the_price_changes_mid_call() {
    let w = World::new(100_000_000).await;
    let t = &w.tally;
    let v1 = t
        .set_price(op(), APP, "/chat", Some(per_token("200", "600")))
        .await
        .unwrap();
    let max = Usage {
        output_tokens: 1_000,
        ..Usage::default()
    };
    let start = op();
    let mut call = t
        .meter(start, ALICE, APP, "/chat", &max, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(call.price().version, v1);
    // The price triples while the call runs.
    let v2 = t
        .set_price(op(), APP, "/chat", Some(per_token("600", "1800")))
        .await
        .unwrap();
    assert!(v2 > v1, "versions count up: {v1} then {v2}");
    assert_eq!(t.price(APP, "/chat").await.unwrap().unwrap().version, v2);
    // A retry of the start after the change is the same request: the same hold, not a
    // conflict and not a second hold.
    let again = t
        .meter(start, ALICE, APP, "/chat", &max, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.detach(), call.hold().id());
    let used = Usage {
        output_tokens: 100,
        ..Usage::default()
    };
    let done = call.finish(op(), &used).await.unwrap();
    assert_eq!(
        done.amount_posted.get(),
        100 * 600,
        "the quoted price, not the new one"
    );
    // A new call pays the new price.
    let mut next = t
        .meter(op(), ALICE, APP, "/chat", &max, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        next.finish(op(), &used).await.unwrap().amount_posted.get(),
        100 * 1_800
    );
    w.assert_books_balance().await;
}

#[tokio::test]
async fn prices_are_ledger_state_that_survives_a_crash_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let config = tally::EngineConfig::default();
    let (t, _, _) = open_durable(tally::DurableConfig::new(dir.path()), config.clone()).await;
    open_accounts(&t).await;
    t.fund(op(), ALICE, BANK, 1_000_000).await.unwrap();
    let v1 = t
        .set_price(op(), APP, "/chat", Some(per_token("200", "600")))
        .await
        .unwrap();
    let v2 = t
        .set_price(
            op(),
            APP,
            "/pages",
            Some(Price::PerPage(Rate::new(500, 1).unwrap())),
        )
        .await
        .unwrap();
    let max = Usage {
        output_tokens: 1_000,
        ..Usage::default()
    };
    let call = t
        .meter(op(), ALICE, APP, "/chat", &max, Duration::from_secs(600))
        .await
        .unwrap();
    let hold = call.detach();
    // Removed, and repriced: the hold keeps its pinned price through all of it and a crash.
    t.set_price(op(), APP, "/pages", None).await.unwrap();
    t.set_price(op(), APP, "/chat", Some(per_token("1", "1")))
        .await
        .unwrap();
    drop(t);

    let (t, _, _) = open_durable(tally::DurableConfig::new(dir.path()), config).await;
    let chat = t.price(APP, "/chat").await.unwrap().unwrap();
    assert_eq!(chat.price, per_token("1", "1"));
    assert!(chat.version > v2 && v2 > v1);
    assert_eq!(
        t.price(APP, "/pages").await.unwrap(),
        None,
        "removed stays removed"
    );
    let pinned = t.get_hold(hold).await.unwrap().price.unwrap();
    assert_eq!(
        (pinned.version, pinned.price),
        (v1, per_token("200", "600"))
    );
    let done = t
        .finish(
            op(),
            hold,
            Usage {
                output_tokens: 10,
                ..Usage::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.amount_posted.get(), 6_000);
}

#[tokio::test]
async fn bad_prices_and_finishing_a_plain_hold_are_refused_and_change_nothing() {
    use tally::{Error, LedgerError, Meter, ReserveRequest, Tier};
    let w = World::new(10_000).await;
    let t = &w.tally;
    let unordered = Price::Tiered {
        meter: Meter::Pages,
        tiers: vec![
            Tier {
                up_to: Some(10),
                rate: Rate::new(1, 1).unwrap(),
            },
            Tier {
                up_to: Some(5),
                rate: Rate::new(1, 1).unwrap(),
            },
        ],
    };
    for (bad, what) in [
        (Some(unordered), "tiers out of order"),
        (
            Some(Price::PerPage(Rate { amount: 1, per: 0 })),
            "a rate per zero units",
        ),
        (None, "removing what is not priced"),
    ] {
        let refused = t.set_price(op(), APP, "/x", bad).await;
        let Err(refused) = refused else {
            panic!("{what}: accepted as version {refused:?}");
        };
        assert!(
            matches!(refused, Error::Ledger(LedgerError::InvalidPrice { .. })),
            "{what}: {refused:?}"
        );
    }
    assert!(t.catalog(APP).await.unwrap().1.is_empty(), "nothing set");
    let refused = t
        .set_price(
            op(),
            BANK,
            "/x",
            Some(Price::PerRequest(tally::Amount::MAX)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Ledger(LedgerError::WrongAccountKind { .. })),
        "{refused:?}"
    );
    let plain = t
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    let refused = t.finish(op(), plain, Usage::default()).await.unwrap_err();
    assert!(
        matches!(refused, Error::Ledger(LedgerError::NotMetered { .. })),
        "{refused:?}"
    );
    assert_eq!(w.available(ALICE).await, 9_900);
}

#[tokio::test]
async fn concurrent_calls_straddling_a_period_tier_cost_exactly_the_sequential_price() {
    use tally::{Meter, Period, Price, Rate, Tier, TierMode};
    for mode in [TierMode::Graduated, TierMode::Volume] {
        let w = World::new(100_000_000).await;
        // 7 µ¢ a token for the month's first 1,050 tokens, 3 µ¢ after (graduated: each token by
        // its tier; volume: all by the tier the month's total reaches).
        let price = Price::PeriodTiered {
            meter: Meter::Tokens,
            tiers: vec![
                Tier {
                    up_to: Some(1_050),
                    rate: Rate::new(7, 1).unwrap(),
                },
                Tier {
                    up_to: None,
                    rate: Rate::new(3, 1).unwrap(),
                },
            ],
            mode,
            period: Period::Month,
        };
        w.tally
            .set_price(op(), APP, "/chat", Some(price))
            .await
            .unwrap();
        // 20 calls of 100 tokens at once: they straddle the boundary in whatever order the
        // account decides them.
        let calls = (0..20).map(|_| {
            let t = w.tally.clone();
            tokio::spawn(async move {
                let max = Usage {
                    output_tokens: 100,
                    ..Usage::default()
                };
                let mut call = t
                    .meter(op(), ALICE, APP, "/chat", &max, Duration::from_secs(60))
                    .await
                    .unwrap();
                call.finish(op(), &max).await.unwrap()
            })
        });
        for c in calls.collect::<Vec<_>>() {
            c.await.unwrap();
        }
        // In sequence: 2,000 tokens.
        let expected: i128 = match mode {
            TierMode::Graduated => 1_050 * 7 + 950 * 3,
            TierMode::Volume => 2_000 * 3,
        };
        assert_eq!(
            w.tally.balance(APP).await.unwrap().posted,
            expected,
            "{mode:?}"
        );
        assert_eq!(
            w.tally.balance(ALICE).await.unwrap().posted,
            100_000_000 - expected,
            "{mode:?}"
        );
        assert_eq!(w.tally.balance(ALICE).await.unwrap().debits_pending, 0);
        assert!(w.tally.audit().await.unwrap().ok());
        // The count survives a crash; a quote sees it.
        let w = w.reopen().await;
        let one = Usage {
            output_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(
            w.tally
                .quote(APP, "/chat", &one, Some(ALICE))
                .await
                .unwrap()
                .get(),
            3,
            "{mode:?}: the month is past the boundary"
        );
        assert_eq!(
            w.tally.quote(APP, "/chat", &one, None).await.unwrap().get(),
            7
        );
        let (used, _, tier) = w
            .tally
            .period_use(ALICE, APP, "/chat")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((used.units, tier), (2_000, 1));
    }
}
