//! Affordability: the room for one more hold, and the most usage a price fits in it.

use proptest::prelude::*;
use tally_core::{Amount, Limiter, Meter, Price, Rate, SpendCaps, Tier, Usage, UsageField};

use crate::world::*;

fn tokens(input: Rate, output: Rate) -> Price {
    Price::PerToken { input, output }
}

#[test]
fn the_most_output_tokens_a_budget_pays_for_is_exact_under_the_rounding() {
    // 0.003 µ¢ per output token: 3,333 tokens cost 9.999 µ¢, rounded up to 10; one more is 11.
    let price = tokens(Rate::new(1, 1).unwrap(), Rate::new(3, 1_000).unwrap());
    let base = Usage::default();
    let (units, cost) = price
        .max_units(&base, UsageField::OutputTokens, amt(10))
        .unwrap()
        .unwrap();
    assert_eq!((units, cost), (3_333, amt(10)));
    let over = Usage {
        output_tokens: units + 1,
        ..base
    };
    assert_eq!(price.cost(&over).unwrap(), amt(11));

    // With 1,000 input tokens at 1 µ¢ each to pay, a budget of 1,000 µ¢ has room for no output
    // token (one would round the cost up to 1,001), and 1,010 µ¢ for 3,333.
    let base = Usage {
        input_tokens: 1_000,
        ..Usage::default()
    };
    assert_eq!(
        price
            .max_units(&base, UsageField::OutputTokens, amt(1_000))
            .unwrap(),
        Some((0, amt(1_000)))
    );
    assert_eq!(
        price
            .max_units(&base, UsageField::OutputTokens, amt(1_010))
            .unwrap()
            .map(|(n, _)| n),
        Some(3_333)
    );
    assert_eq!(
        price
            .max_units(&base, UsageField::OutputTokens, amt(999))
            .unwrap(),
        None,
        "the input alone costs more than the budget"
    );
}

#[test]
fn a_field_the_price_ignores_is_unbounded_and_a_fixed_price_above_the_budget_is_none() {
    let per_page = Price::PerPage(Rate::new(500, 1).unwrap());
    assert_eq!(
        per_page
            .max_units(&Usage::default(), UsageField::OutputTokens, amt(1))
            .unwrap(),
        Some((u64::MAX, Amount::ZERO))
    );
    assert_eq!(
        per_page
            .max_units(&Usage::default(), UsageField::Pages, amt(1_999))
            .unwrap(),
        Some((3, amt(1_500)))
    );
    let fixed = Price::PerRequest(amt(100));
    assert_eq!(
        fixed
            .max_units(&Usage::default(), UsageField::Requests, amt(99))
            .unwrap(),
        None
    );
}

#[test]
fn tiers_are_followed_across_their_bounds() {
    // 10 µ¢ each for the first 100 pages, 1 µ¢ each after.
    let price = Price::Tiered {
        meter: Meter::Pages,
        tiers: vec![
            Tier {
                up_to: Some(100),
                rate: Rate::new(10, 1).unwrap(),
            },
            Tier {
                up_to: None,
                rate: Rate::new(1, 1).unwrap(),
            },
        ],
    };
    let most = |budget| {
        price
            .max_units(&Usage::default(), UsageField::Pages, amt(budget))
            .unwrap()
            .map(|(n, _)| n)
    };
    assert_eq!(most(999), Some(99));
    assert_eq!(most(1_000), Some(100));
    assert_eq!(most(1_050), Some(150));
}

#[test]
fn the_room_is_the_least_of_balance_caps_and_token() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    w.reserve(USER, 300);
    let caps = SpendCaps::default();
    let room = |w: &World, caps, token| {
        w.account(USER)
            .spend_room(APP, ENDPOINT, token, caps, w.now)
    };
    assert_eq!(room(&w, caps, None), Ok((amt(700), Limiter::Balance)));
    let capped = SpendCaps {
        account_per_day: Some(amt(500)),
        app_per_user_per_day: None,
    };
    assert_eq!(
        room(&w, capped, None),
        Ok((amt(200), Limiter::AccountCap)),
        "the 300 held counts against the day's cap"
    );
    let app_capped = SpendCaps {
        account_per_day: None,
        app_per_user_per_day: Some(amt(350)),
    };
    assert_eq!(room(&w, app_capped, None), Ok((amt(50), Limiter::AppCap)));
    let issued = w.ok(
        USER,
        tally_core::Command::IssueToken {
            app: APP,
            cap: amt(120),
            ttl_ms: 60_000,
            endpoint: ENDPOINT.to_owned(),
        },
    );
    let tally_core::Outcome::TokenIssued { token, .. } = issued else {
        panic!("{issued:?}")
    };
    assert_eq!(
        room(&w, caps, Some(token.seq)),
        Ok((amt(120), Limiter::Token))
    );
    w.advance(60_000);
    assert!(matches!(
        room(&w, caps, Some(token.seq)),
        Err(tally_core::Error::TokenExpired { .. })
    ));
    let bank = w.account(BANK).spend_room(APP, "", None, caps, w.now);
    assert_eq!(bank, Ok((Amount::MAX, Limiter::None)), "may overdraw");
}

proptest! {
    /// Whatever the rates and the budget: the answer fits, and one unit more does not.
    #[test]
    fn max_units_is_the_largest_that_fits(
        input in (0..1_000u64, 1..1_000_000u64),
        output in (0..1_000_000u64, 1..1_000_000u64),
        input_tokens in 0..100_000u64,
        budget in 0..10_000_000u64,
    ) {
        let price = tokens(
            Rate::new(input.0, input.1).unwrap(),
            Rate::new(output.0, output.1).unwrap(),
        );
        let base = Usage { input_tokens, ..Usage::default() };
        let budget = amt(budget);
        match price.max_units(&base, UsageField::OutputTokens, budget).unwrap() {
            None => prop_assert!(price.cost(&base).unwrap() > budget),
            Some((n, cost)) => {
                let at = Usage { output_tokens: n, ..base };
                prop_assert_eq!(price.cost(&at).unwrap(), cost);
                prop_assert!(cost <= budget);
                if n < u64::MAX {
                    let more = Usage { output_tokens: n + 1, ..base };
                    let over = price.cost(&more);
                    prop_assert!(over.map_or(true, |c| c > budget));
                } else {
                    prop_assert_eq!(output.0, 0, "unbounded only when output is free");
                }
            }
        }
    }
}
