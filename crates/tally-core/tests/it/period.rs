//! Volume tiers over a billing period: graduated and volume, at, below and across each
//! boundary; calls straddling a boundary in either order cost what they cost in sequence; the
//! period rolls over at its boundary and replay rebuilds the count.

use tally_core::{
    Command, Error, Meter, Outcome, Period, PinnedPrice, Price, Rate, Tier, TierMode, Timestamp,
    Usage,
};

use crate::world::*;

fn tiers(first_up_to: u64, first: u64, rest: u64) -> Vec<Tier> {
    vec![
        Tier {
            up_to: Some(first_up_to),
            rate: Rate::new(first, 1).unwrap(),
        },
        Tier {
            up_to: None,
            rate: Rate::new(rest, 1).unwrap(),
        },
    ]
}

fn price(mode: TierMode, period: Period, tiers: Vec<Tier>) -> PinnedPrice {
    PinnedPrice {
        version: 1,
        price: Price::PeriodTiered {
            meter: Meter::Tokens,
            tiers,
            mode,
            period,
        },
    }
}

fn tokens(n: u64) -> Usage {
    Usage {
        output_tokens: n,
        ..Usage::default()
    }
}

fn hold(w: &mut World, price: &PinnedPrice, max: u64) -> tally_core::HoldId {
    hold_of(w.ok(
        USER,
        Command::ReserveMetered {
            app: APP,
            endpoint: ENDPOINT.to_owned(),
            max_usage: tokens(max),
            timeout_ms: TIMEOUT_MS,
            metadata: String::new(),
            token: None,
            price: Box::new(price.clone()),
        },
    ))
}

/// Finishes a metered hold; (posted, released).
fn finish(w: &mut World, hold: tally_core::HoldId, used: u64) -> (u64, u64) {
    match w.ok(
        USER,
        Command::Finish {
            hold,
            usage: tokens(used),
        },
    ) {
        Outcome::Committed {
            amount_posted,
            amount_released,
            ..
        } => (amount_posted.get(), amount_released.get()),
        other => panic!("{other:?}"),
    }
}

fn call(w: &mut World, price: &PinnedPrice, used: u64) -> u64 {
    let h = hold(w, price, used);
    finish(w, h, used).0
}

#[test]
fn periods_start_and_end_at_utc_days_calendar_months_and_anchored_lengths() {
    // 2026-12-31T23:59:59Z and 2027-01-01T00:00:00Z.
    let dec31 = Timestamp(1_798_761_599_000);
    let jan1 = Timestamp(1_798_761_600_000);
    assert_eq!(Period::Month.start(dec31), 1_796_083_200_000, "2026-12-01");
    assert_eq!(Period::Month.end(1_796_083_200_000), jan1.0);
    assert_eq!(Period::Month.start(jan1), jan1.0);
    assert_eq!(Period::Day.start(dec31), 1_798_675_200_000);
    // February of a leap year has 29 days: 2028-02-01 .. 2028-03-01.
    let feb = 1_832_976_000_000;
    assert_eq!(Period::Month.end(feb) - feb, 29 * 86_400_000);
    let every = Period::Every {
        anchor_ms: 1_000_000,
        length_ms: 600_000,
    };
    assert_eq!(every.start(Timestamp(1_000_000)), 1_000_000);
    assert_eq!(every.start(Timestamp(1_599_999)), 1_000_000);
    assert_eq!(every.start(Timestamp(1_600_000)), 1_600_000);
    assert_eq!(
        every.start(Timestamp(999_999)),
        400_000,
        "periods run back from the anchor"
    );
    assert_eq!(every.end(1_600_000), 2_200_000);
}

#[test]
fn graduated_tiers_price_each_unit_by_the_tier_it_falls_in_across_calls() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    // 3 µ¢ a token for the first 1,000 of the month, 1 µ¢ after.
    let p = price(TierMode::Graduated, Period::Month, tiers(1_000, 3, 1));
    assert_eq!(call(&mut w, &p, 900), 2_700, "below the boundary");
    assert_eq!(call(&mut w, &p, 100), 300, "up to it exactly");
    assert_eq!(call(&mut w, &p, 1), 1, "past it");
    assert_eq!(call(&mut w, &p, 10), 10);
    let used = w
        .account(USER)
        .period_use(APP, ENDPOINT, &Period::Month, w.now);
    assert_eq!((used.units, used.charged), (1_011, 3_011));
    // A hold made now holds what the call can cost from this count (1 µ¢ a token), unless it
    // may outlive the month, when it holds the cost from an empty period.
    let h = hold(&mut w, &p, 100);
    assert_eq!(w.account(USER).hold(h.seq).unwrap().amount.get(), 100);
    w.ok(USER, Command::Void { hold: h });
    let month_end = Period::Month.end(Period::Month.start(w.now));
    w.advance(month_end - w.now.0 - 3_600_000);
    let long = hold_of(w.ok(
        USER,
        Command::ReserveMetered {
            app: APP,
            endpoint: ENDPOINT.to_owned(),
            max_usage: tokens(100),
            timeout_ms: 2 * 3_600_000,
            metadata: String::new(),
            token: None,
            price: Box::new(p.clone()),
        },
    ));
    assert_eq!(w.account(USER).hold(long.seq).unwrap().amount.get(), 300);
    w.ok(USER, Command::Void { hold: long });
    // One call across the boundary: a second account's period starts where the first's did.
    w.fund(USER2, 1_000_000);
    let h = hold_of(w.ok(
        USER2,
        Command::ReserveMetered {
            app: APP,
            endpoint: ENDPOINT.to_owned(),
            max_usage: tokens(1_500),
            timeout_ms: TIMEOUT_MS,
            metadata: String::new(),
            token: None,
            price: Box::new(p.clone()),
        },
    ));
    let done = w.ok(
        USER2,
        Command::Finish {
            hold: h,
            usage: tokens(1_200),
        },
    );
    assert!(
        matches!(done, Outcome::Committed { amount_posted, .. } if amount_posted.get() == 3_000 + 200),
        "{done:?}"
    );
    // Replay rebuilds the counts.
    assert_eq!(w.recover()[&USER], *w.account(USER));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn volume_tiers_price_the_period_by_the_tier_its_total_reaches_and_give_back_at_the_crossing() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    // All of the month's tokens at 3 µ¢ up to 1,000 tokens, all at 2 µ¢ past it.
    let p = price(TierMode::Volume, Period::Month, tiers(1_000, 3, 2));
    assert_eq!(call(&mut w, &p, 900), 2_700);
    assert_eq!(
        call(&mut w, &p, 100),
        300,
        "1,000 tokens: still the first tier"
    );
    let before = (w.bal(USER), w.bal(APP));
    // 1,001 tokens at 2 µ¢ = 2,002: 998 was charged too much; this call posts nothing and the
    // app gives the 998 back in the same record.
    assert_eq!(call(&mut w, &p, 1), 0);
    let (user, app) = (w.bal(USER), w.bal(APP));
    assert_eq!(user.posted, before.0.posted + 998);
    assert_eq!(app.posted, before.1.posted - 998);
    // The rebate is taken off what the earlier postings may still refund, newest first: a
    // refund cannot return it again.
    let refundable: Vec<u64> = w
        .account(USER)
        .postings()
        .map(|p| p.refundable().get())
        .collect();
    assert_eq!(
        refundable.iter().sum::<u64>(),
        2_700 + 300 - 998,
        "{refundable:?}"
    );
    // After the crossing each token is 2 µ¢.
    assert_eq!(call(&mut w, &p, 99), 198);
    let used = w
        .account(USER)
        .period_use(APP, ENDPOINT, &Period::Month, w.now);
    assert_eq!(
        (used.units, used.charged),
        (1_100, 2_200),
        "1,100 tokens at 2 µ¢, exactly"
    );
    assert_eq!(w.recover()[&USER], *w.account(USER));
    assert_eq!(w.recover()[&APP], *w.account(APP));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn holds_straddling_a_boundary_cost_in_either_order_what_they_cost_in_sequence() {
    for mode in [TierMode::Graduated, TierMode::Volume] {
        let p = price(mode, Period::Month, tiers(1_000, 5, 2));
        // In sequence: 800 then 400.
        let mut seq = World::new();
        seq.fund(USER, 1_000_000);
        call(&mut seq, &p, 800);
        call(&mut seq, &p, 400);
        // What the app has in the end (a volume crossing gives part back).
        let sequential = seq.bal(APP).posted;
        assert_eq!(
            sequential,
            if mode == TierMode::Graduated {
                4_000 + 1_000 + 400
            } else {
                2_400
            }
        );
        for first_a in [true, false] {
            let mut w = World::new();
            w.fund(USER, 1_000_000);
            // Both held before either finishes; each holds what it could cost at most.
            let a = hold(&mut w, &p, 800);
            let b = hold(&mut w, &p, 400);
            let (x, y) = if first_a {
                (finish(&mut w, a, 800), finish(&mut w, b, 400))
            } else {
                (finish(&mut w, b, 400), finish(&mut w, a, 800))
            };
            let paid = w.bal(APP).posted;
            assert_eq!(
                paid, sequential,
                "{mode:?}, a first: {first_a}: {x:?} {y:?}"
            );
            assert_eq!(w.bal(USER).pending, 0, "the rest of each hold is released");
        }
    }
}

#[test]
fn the_period_rolls_over_at_its_boundary_and_the_total_is_rounded_once() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    // A third of a µ¢ per token: the period's total is rounded up once, not per call.
    let third = vec![Tier {
        up_to: None,
        rate: Rate::new(1, 3).unwrap(),
    }];
    let p = price(TierMode::Graduated, Period::Day, third);
    let posted: Vec<u64> = (0..6).map(|_| call(&mut w, &p, 1)).collect();
    assert_eq!(posted, [1, 0, 0, 1, 0, 0], "6 tokens: 2 µ¢ in all");
    // The next UTC day starts from zero.
    let now = w.now.0;
    w.advance(86_400_000 - now % 86_400_000);
    assert_eq!(call(&mut w, &p, 1), 1);
    let used = w
        .account(USER)
        .period_use(APP, ENDPOINT, &Period::Day, w.now);
    assert_eq!((used.units, used.charged), (1, 1));
}

#[test]
fn a_period_price_that_gets_dearer_is_refused() {
    let mut w = World::new();
    let dearer = Price::PeriodTiered {
        meter: Meter::Tokens,
        tiers: tiers(1_000, 1, 2),
        mode: TierMode::Graduated,
        period: Period::Month,
    };
    let e = w.reject(
        APP,
        Command::SetPrice {
            endpoint: ENDPOINT.into(),
            price: Some(dearer),
        },
    );
    assert!(
        matches!(&e, Error::InvalidPrice { reason } if reason.contains("dearer")),
        "{e:?}"
    );
    let short = Price::PeriodTiered {
        meter: Meter::Tokens,
        tiers: tiers(1_000, 2, 1),
        mode: TierMode::Volume,
        period: Period::Every {
            anchor_ms: 0,
            length_ms: 1_000,
        },
    };
    let e = w.reject(
        APP,
        Command::SetPrice {
            endpoint: ENDPOINT.into(),
            price: Some(short),
        },
    );
    assert!(
        matches!(&e, Error::InvalidPrice { reason } if reason.contains("one minute")),
        "{e:?}"
    );
}

#[test]
fn a_new_price_mid_period_keeps_the_count_and_prices_only_the_units_after_it() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    let v1 = price(TierMode::Graduated, Period::Month, tiers(1_000, 5, 2));
    assert_eq!(call(&mut w, &v1, 900), 4_500);
    // Version 2: 4 µ¢ for the first 1,000 of the month, 1 after. 200 more tokens: 100 at 4 and
    // 100 at 1, nothing charged again for the 900 before and nothing given back.
    let mut v2 = price(TierMode::Graduated, Period::Month, tiers(1_000, 4, 1));
    v2.version = 2;
    let before = w.bal(USER).posted;
    assert_eq!(call(&mut w, &v2, 200), 500);
    assert_eq!(w.bal(USER).posted, before - 500);
    let used = w
        .account(USER)
        .period_use(APP, ENDPOINT, &Period::Month, w.now);
    assert_eq!((used.units, used.version), (1_100, 2));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn a_volume_rebate_is_given_back_only_by_an_apps_revenue_account() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    let p = price(TierMode::Volume, Period::Month, tiers(100, 3, 2));
    // Paid to another user (a delegated payment): the crossing would debit that user.
    let to_user = |w: &mut World, units: u64| {
        hold_of(w.ok(
            USER,
            Command::ReserveMetered {
                app: USER2,
                endpoint: ENDPOINT.to_owned(),
                max_usage: tokens(units),
                timeout_ms: TIMEOUT_MS,
                metadata: String::new(),
                token: None,
                price: Box::new(p.clone()),
            },
        ))
    };
    let first = to_user(&mut w, 100);
    w.ok(
        USER,
        Command::Finish {
            hold: first,
            usage: tokens(100),
        },
    );
    // 101 tokens at 2 µ¢ = 202 < the 300 charged: a rebate of 98 from USER2.
    let second = to_user(&mut w, 1);
    let before = (w.account(USER).clone(), w.account(USER2).clone());
    let e = w.reject(
        USER,
        Command::Finish {
            hold: second,
            usage: tokens(1),
        },
    );
    assert!(matches!(e, Error::WrongAccountKind { .. }), "{e:?}");
    assert_eq!((w.account(USER).clone(), w.account(USER2).clone()), before);
}

#[test]
fn a_hold_sized_at_the_count_may_not_be_extended_past_its_period() {
    let mut w = World::new();
    w.fund(USER, 1_000_000);
    let p = price(TierMode::Graduated, Period::Day, tiers(1_000, 5, 2));
    call(&mut w, &p, 1_000);
    let h = hold(&mut w, &p, 100);
    assert_eq!(w.account(USER).hold(h.seq).unwrap().amount.get(), 200);
    let day_end = Period::Day.end(Period::Day.start(w.now));
    let past = day_end - w.now.0 + 1_000;
    let e = w.reject(
        USER,
        Command::Extend {
            hold: h,
            amount: tally_core::Amount::ZERO,
            timeout_ms: past,
        },
    );
    assert!(matches!(e, Error::InvalidTimeout { .. }), "{e:?}");
    // Within the day it may.
    w.ok(
        USER,
        Command::Extend {
            hold: h,
            amount: tally_core::Amount::ZERO,
            timeout_ms: 120_000,
        },
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// What a period's units cost in all, computed independently: graduated, the exact sum
    /// over tiers rounded up once; volume, every unit at the reached tier's rate, rounded up.
    fn expected(
        mode: TierMode,
        first_up_to: u64,
        first: u64,
        rest: u64,
        per: u64,
        units: u64,
    ) -> u64 {
        let exact = match mode {
            TierMode::Graduated => {
                let low = units.min(first_up_to);
                u128::from(low) * u128::from(first) + u128::from(units - low) * u128::from(rest)
            }
            TierMode::Volume => {
                let rate = if units <= first_up_to { first } else { rest };
                u128::from(units) * u128::from(rate)
            }
        };
        u64::try_from(exact.div_ceil(u128::from(per))).unwrap()
    }

    proptest! {
        /// Holds of any sizes, finished in any order and in any number of parts: the app ends
        /// with exactly the period's price of all the units, nothing stays held, nothing is
        /// overspent, and replay rebuilds the accounts.
        #[test]
        fn any_interleaving_of_calls_costs_the_periods_exact_price(
            graduated in any::<bool>(),
            first_up_to in 1u64..400,
            (first, rest) in (1u64..20).prop_flat_map(|f| (Just(f), 0..=f)),
            per in 1u64..5,
            calls in proptest::collection::vec((1u64..150, 0u64..3, any::<u8>()), 1..12),
        ) {
            let mode = if graduated { TierMode::Graduated } else { TierMode::Volume };
            let p = PinnedPrice {
                version: 1,
                price: Price::PeriodTiered {
                    meter: Meter::Tokens,
                    tiers: vec![
                        Tier { up_to: Some(first_up_to), rate: Rate::new(first, per).unwrap() },
                        Tier { up_to: None, rate: Rate::new(rest, per).unwrap() },
                    ],
                    mode,
                    period: Period::Month,
                },
            };
            let mut w = World::new();
            w.fund(USER, 10_000_000);
            // Every call is held first (before any finishes), each then finishes in parts.
            let holds: Vec<_> = calls.iter().map(|(units, _, _)| hold(&mut w, &p, *units)).collect();
            let mut order: Vec<usize> = (0..calls.len()).collect();
            order.sort_by_key(|i| calls[*i].2);
            let mut total = 0u64;
            for i in order {
                let (units, parts, _) = calls[i];
                let mut left = units;
                for _ in 0..parts {
                    let part = left / 2;
                    if part == 0 {
                        break;
                    }
                    // A part may need up to 1 µ¢ more than is held (rounding): extend first.
                    w.ok(USER, Command::Extend { hold: holds[i], amount: tally_core::Amount::new(1).unwrap(), timeout_ms: 0 });
                    w.ok(USER, Command::Progress { hold: holds[i], usage: tokens(part) });
                    left -= part;
                }
                w.ok(USER, Command::Extend { hold: holds[i], amount: tally_core::Amount::new(1).unwrap(), timeout_ms: 0 });
                finish(&mut w, holds[i], left);
                total += units;
            }
            prop_assert_eq!(
                w.bal(APP).posted,
                i128::from(expected(mode, first_up_to, first, rest, per, total))
            );
            prop_assert_eq!(w.bal(USER).pending, 0);
            prop_assert!(w.audit().ok(), "{:?}", w.audit());
            prop_assert_eq!(&w.recover()[&USER], w.account(USER));
        }
    }
}
