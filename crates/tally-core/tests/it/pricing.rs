//! Prices from the seeds, exact to the microcent, rounded up once.

use tally_core::{parse_cents, parse_usd, Amount, Meter, Price, PricingError, Rate, Tier, Usage};

fn tokens(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

fn mistral() -> Price {
    // The seeds' text model: 200 / 600 cents per million input / output tokens.
    Price::PerToken {
        input: Rate::cents("200", 1_000_000).unwrap(),
        output: Rate::cents("600", 1_000_000).unwrap(),
    }
}

#[test]
fn seed_prices_cost_their_exact_microcents() {
    let cases: Vec<(&str, Price, Usage, u64)> = vec![
        (
            "7 input tokens at 200 cents per million",
            mistral(),
            tokens(7, 0),
            1_400,
        ),
        (
            "1,000 in + 500 out tokens",
            mistral(),
            tokens(1_000, 500),
            500_000,
        ),
        (
            "text to speech: 250 characters at 400 µ¢",
            Price::PerCharacter(Rate::new(400, 1).unwrap()),
            Usage {
                characters: 250,
                ..Usage::default()
            },
            100_000,
        ),
        (
            "document pages: 150 cents per 1,000 pages, 3 pages",
            Price::PerPage(Rate::cents("150", 1_000).unwrap()),
            Usage {
                pages: 3,
                ..Usage::default()
            },
            450_000,
        ),
        (
            "search: $0.01 per request",
            Price::PerRequest(parse_usd("0.01").unwrap()),
            Usage {
                requests: 1,
                ..Usage::default()
            },
            1_000_000,
        ),
        (
            "1.5 s at 1,000 µ¢ per second",
            Price::PerSecond(Rate::new(1_000, 1).unwrap()),
            Usage {
                duration_ms: 1_500,
                ..Usage::default()
            },
            1_500,
        ),
    ];
    for (name, price, usage, expected) in cases {
        assert_eq!(
            price.cost(&usage),
            Ok(Amount::new(expected).unwrap()),
            "{name}"
        );
    }
}

#[test]
fn a_fraction_of_a_microcent_rounds_up_once_on_the_total() {
    let thousandths = Price::PerToken {
        input: Rate::new(3, 1_000).unwrap(),
        output: Rate::new(3, 1_000).unwrap(),
    };
    assert_eq!(thousandths.cost(&tokens(1, 0)), Ok(Amount::new(1).unwrap()));
    // 1/3 + 1/3 = 2/3 µ¢: one unit, not two (rounding each part would charge 2).
    let thirds = Price::PerToken {
        input: Rate::new(1, 3).unwrap(),
        output: Rate::new(1, 3).unwrap(),
    };
    assert_eq!(thirds.cost(&tokens(1, 1)), Ok(Amount::new(1).unwrap()));
    assert_eq!(thirds.cost(&tokens(0, 0)), Ok(Amount::ZERO));
}

#[test]
fn decimal_prices_convert_exactly_or_are_rejected() {
    assert_eq!(parse_usd("0.01"), Ok(Amount::new(1_000_000).unwrap()));
    assert_eq!(parse_usd("1"), Ok(Amount::new(100_000_000).unwrap()));
    assert_eq!(parse_usd("0.00000001"), Ok(Amount::new(1).unwrap()));
    assert_eq!(parse_cents("0.1"), Ok(Amount::new(100_000).unwrap()));
    // Sub-µ¢ rates stay exact by scaling `per`: $0.0000000015 per token = 15 µ¢ per 100 tokens.
    assert_eq!(
        Rate::usd("0.0000000015", 1),
        Ok(Rate { amount: 3, per: 20 })
    );
    let rejected: Vec<(&str, PricingError)> = vec![
        (
            "0.000000001",
            PricingError::NotRepresentable {
                text: "0.000000001".into(),
            },
        ),
        ("abc", PricingError::Malformed { text: "abc".into() }),
        (
            "1.2.3",
            PricingError::Malformed {
                text: "1.2.3".into(),
            },
        ),
        ("", PricingError::Malformed { text: "".into() }),
        ("-1", PricingError::Malformed { text: "-1".into() }),
        (".", PricingError::Malformed { text: ".".into() }),
        (
            "999999999999999999999",
            PricingError::Overflow { what: "amount" },
        ),
    ];
    for (text, expected) in rejected {
        assert_eq!(parse_usd(text), Err(expected), "{text:?}");
    }
    assert_eq!(Rate::new(1, 0), Err(PricingError::ZeroPer));
    assert_eq!(Rate::cents("1", 0), Err(PricingError::ZeroPer));
}

#[test]
fn volume_tiers_are_graduated() {
    let price = Price::Tiered {
        meter: Meter::Tokens,
        tiers: vec![
            Tier {
                up_to: Some(1_000),
                rate: Rate::new(10, 1).unwrap(),
            },
            Tier {
                up_to: None,
                rate: Rate::new(5, 1).unwrap(),
            },
        ],
    };
    assert_eq!(price.cost(&tokens(600, 0)), Ok(Amount::new(6_000).unwrap()));
    assert_eq!(
        price.cost(&tokens(1_000, 500)),
        Ok(Amount::new(12_500).unwrap())
    );
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
            Tier {
                up_to: None,
                rate: Rate::new(1, 1).unwrap(),
            },
        ],
    };
    assert_eq!(
        unordered.cost(&Usage::default()),
        Err(PricingError::BadTiers)
    );
    let closed = Price::Tiered {
        meter: Meter::Pages,
        tiers: vec![Tier {
            up_to: Some(10),
            rate: Rate::new(1, 1).unwrap(),
        }],
    };
    assert_eq!(closed.cost(&Usage::default()), Err(PricingError::BadTiers));
}

#[test]
fn costs_past_the_amount_limit_are_refused_not_wrapped() {
    let price = Price::PerCharacter(Rate::new(u64::MAX, 1).unwrap());
    let usage = Usage {
        characters: u64::MAX,
        ..Usage::default()
    };
    assert_eq!(
        price.cost(&usage),
        Err(PricingError::Overflow { what: "cost" })
    );
    let big = Price::PerCharacter(Rate::new(1 << 40, 1).unwrap());
    let usage = Usage {
        characters: 1 << 30,
        ..Usage::default()
    };
    assert_eq!(
        big.cost(&usage),
        Err(PricingError::Overflow { what: "cost" })
    );
}
