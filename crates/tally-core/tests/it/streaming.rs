//! Streaming settlement: a pending hold extended while its work runs, settled in parts, and
//! finished by a commit (or a void, or its expiry) that posts or releases the rest.

use tally_core::{Command, Error, HoldStatus, Outcome, Usage};

use crate::world::*;

fn extend(hold: tally_core::HoldId, amount: u64, timeout_ms: u64) -> Command {
    Command::Extend {
        hold,
        amount: amt(amount),
        timeout_ms,
    }
}

fn settle(hold: tally_core::HoldId, amount: u64) -> Command {
    Command::Settle {
        hold,
        amount: amt(amount),
        usage: Usage {
            output_tokens: amount,
            ..Usage::default()
        },
    }
}

#[test]
fn a_hold_extended_and_settled_in_parts_posts_exactly_its_parts_and_releases_the_rest() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    assert_eq!(w.bal(USER), bal(1_000, 100, 900));

    let extended = w.ok(USER, extend(hold, 50, 0));
    assert!(matches!(extended, Outcome::Extended { amount, .. } if amount == amt(150)));
    assert_eq!(w.bal(USER), bal(1_000, 150, 850));

    let first = w.ok(USER, settle(hold, 30));
    let Outcome::Settled {
        posting,
        amount_posted,
        amount_held,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!((amount_posted, amount_held), (amt(30), amt(120)));
    assert_eq!(
        w.bal(USER),
        bal(970, 120, 850),
        "posted 30, still holding 120"
    );
    assert_eq!(w.bal(APP), bal(30, 0, 30), "the app has the part at once");
    assert_eq!(
        w.account(USER).posting(posting.seq).map(|p| p.amount),
        Some(amt(30))
    );

    w.ok(USER, settle(hold, 40));
    let done = w.ok(USER, commit(hold, 20));
    assert!(
        matches!(done, Outcome::Committed { amount_posted, amount_released, .. }
            if amount_posted == amt(20) && amount_released == amt(60)),
        "{done:?}"
    );
    assert_eq!(w.bal(USER), bal(910, 0, 910));
    assert_eq!(w.bal(APP), bal(90, 0, 90));
    let h = w.account(USER).hold(hold.seq).unwrap();
    assert_eq!(
        (h.status, h.amount, h.amount_posted),
        (HoldStatus::Posted, amt(150), amt(90))
    );
    assert!(w.audit().ok(), "{:?}", w.audit());
    // The journal alone rebuilds the same accounts.
    assert_eq!(&w.recover()[&USER], w.account(USER));
}

#[test]
fn an_extension_that_funds_cannot_cover_is_refused_and_changes_nothing() {
    let mut w = World::new();
    w.fund(USER, 300);
    let hold = w.reserve(USER, 100);
    let before = w.account(USER).clone();

    let refused = w.reject(USER, extend(hold, 201, 0));

    assert!(
        matches!(
            refused,
            Error::InsufficientFunds {
                available: 200,
                requested: 201,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(w.account(USER), &before);
    w.ok(USER, extend(hold, 200, 0));
    assert_eq!(w.bal(USER), bal(300, 300, 0));
}

#[test]
fn a_settlement_or_commit_past_what_is_held_is_refused() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    w.ok(USER, settle(hold, 60));
    assert_eq!(
        w.reject(USER, settle(hold, 41)),
        Error::CommitExceedsHold {
            hold,
            held: 40,
            requested: 41
        }
    );
    assert_eq!(
        w.reject(USER, commit(hold, 41)),
        Error::CommitExceedsHold {
            hold,
            held: 40,
            requested: 41
        }
    );
    // Everything settled: a commit of zero finishes the hold, posting nothing more.
    w.ok(USER, settle(hold, 40));
    let done = w.ok(USER, commit(hold, 0));
    assert!(
        matches!(done, Outcome::Committed { amount_posted, amount_released, .. }
            if amount_posted.is_zero() && amount_released.is_zero()),
        "{done:?}"
    );
    assert_eq!(w.bal(USER), bal(900, 0, 900));
    // A commit of zero on a hold that settled nothing is still refused.
    let other = w.reserve(USER, 10);
    assert_eq!(
        w.reject(USER, commit(other, 0)),
        Error::ZeroAmount { field: "amount" }
    );
}

#[test]
fn a_resolved_or_expired_hold_takes_no_extension_or_settlement() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let voided = w.reserve(USER, 100);
    w.ok(USER, settle(voided, 25));
    let released = w.ok(USER, void(voided));
    assert_eq!(
        released,
        Outcome::Voided {
            amount_released: amt(75)
        },
        "a void releases what is left, the settled part stays posted"
    );
    for command in [extend(voided, 1, 0), settle(voided, 1)] {
        assert!(
            matches!(w.reject(USER, command), Error::HoldAlreadyResolved { .. }),
            "after a void"
        );
    }

    let expiring = w.reserve_for(USER, 100, TIMEOUT_MS);
    w.ok(USER, settle(expiring, 10));
    w.advance(TIMEOUT_MS);
    for command in [extend(expiring, 1, 0), settle(expiring, 1)] {
        assert!(matches!(w.reject(USER, command), Error::HoldExpired { .. }));
    }
    assert_eq!(
        w.expire_due(USER),
        vec![Outcome::Expired {
            amount_released: amt(90)
        }]
    );
    assert_eq!(
        w.bal(USER),
        bal(965, 0, 965),
        "25 and 10 posted, the rest back"
    );
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn an_extension_moves_the_deadline_forward_only_and_within_the_limits() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve_for(USER, 100, TIMEOUT_MS);
    let deadline = |w: &World| w.account(USER).hold(hold.seq).unwrap().expires_at;
    let first = deadline(&w);

    w.advance(10_000);
    w.ok(USER, extend(hold, 0, TIMEOUT_MS));
    assert_eq!(deadline(&w), first.plus_ms(10_000), "now + the timeout");
    w.ok(USER, extend(hold, 0, 1_000));
    assert_eq!(deadline(&w), first.plus_ms(10_000), "never moved back");
    assert_eq!(w.account(USER).next_deadline(), Some(first.plus_ms(10_000)));

    let max = w.limits.hold_timeout_ms_max;
    assert!(matches!(
        w.reject(USER, extend(hold, 0, max + 1)),
        Error::InvalidTimeout { .. }
    ));
    assert_eq!(
        w.reject(USER, extend(hold, 0, 0)),
        Error::ZeroAmount { field: "amount" },
        "nothing to do"
    );
    // It expires at its new deadline, not the old one.
    w.advance(TIMEOUT_MS - 10_000);
    assert!(w.expire_due(USER).is_empty());
    w.advance(10_000);
    assert_eq!(w.expire_due(USER).len(), 1);
}

#[test]
fn a_retried_extension_or_settlement_replays_and_a_changed_one_is_a_conflict() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    let op = w.op();
    let first = w.exec_op(USER, op, extend(hold, 50, 0)).unwrap();
    assert_eq!(w.exec_op(USER, op, extend(hold, 50, 0)).unwrap(), first);
    assert_eq!(
        w.exec_op(USER, op, extend(hold, 51, 0)),
        Err(Error::IdempotencyConflict {
            op,
            field: "amount"
        })
    );
    let op = w.op();
    let part = w.exec_op(USER, op, settle(hold, 30)).unwrap();
    assert_eq!(w.exec_op(USER, op, settle(hold, 30)).unwrap(), part);
    assert_eq!(w.bal(USER), bal(970, 120, 850), "each once");
    // Rebuilt from the journal, the account answers the same retries.
    let rebuilt = w.recover();
    assert_eq!(&rebuilt[&USER], w.account(USER));
}

#[test]
fn settlements_count_in_usage_with_their_cost() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    w.ok(USER, settle(hold, 30));
    w.ok(USER, settle(hold, 20));
    let mut book = tally_core::UsageBook::new(tally_core::UsageConfig::default());
    for (_, record) in &w.journal {
        book.fold(record);
    }
    let query = tally_core::UsageQuery::new(
        tally_core::Granularity::Day,
        T0,
        T0.plus_ms(tally_core::DAY_MS),
    );
    let totals = book.report(&query).totals;
    assert_eq!(
        (totals.calls, totals.cost, totals.output_tokens),
        (2, 50, 50),
        "each part a call with its cost and usage"
    );
}

#[test]
fn an_extension_draws_on_the_holds_spend_token_within_its_cap() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let issued = w.ok(
        USER,
        Command::IssueToken {
            app: APP,
            cap: amt(150),
            ttl_ms: 3_600_000,
            endpoint: ENDPOINT.to_owned(),
        },
    );
    let Outcome::TokenIssued { token, .. } = issued else {
        panic!("{issued:?}")
    };
    let hold = hold_of(w.ok(
        USER,
        Command::Reserve {
            app: APP,
            amount: amt(100),
            timeout_ms: TIMEOUT_MS,
            endpoint: ENDPOINT.to_owned(),
            metadata: String::new(),
            token: Some(token.seq),
        },
    ));
    let used = |w: &World| w.account(USER).token(token.seq).unwrap().used;
    assert!(matches!(
        w.reject(USER, extend(hold, 51, 0)),
        Error::TokenCapExceeded { .. }
    ));
    w.ok(USER, extend(hold, 50, 0));
    assert_eq!(used(&w), amt(150));
    w.ok(USER, settle(hold, 70));
    assert_eq!(used(&w), amt(150), "a settled part stays used");
    w.ok(USER, commit(hold, 30));
    assert_eq!(used(&w), amt(100), "the released 50 goes back to the token");
    assert!(w.audit().ok(), "{:?}", w.audit());
}

fn metered(w: &mut World, max_output: u64) -> tally_core::HoldId {
    // 0.003 µ¢ per output token: rounding per part would overcharge.
    let price = tally_core::PinnedPrice {
        version: 1,
        price: tally_core::Price::PerToken {
            input: tally_core::Rate::new(0, 1).unwrap(),
            output: tally_core::Rate::new(3, 1_000).unwrap(),
        },
    };
    hold_of(w.ok(
        USER,
        Command::ReserveMetered {
            app: APP,
            endpoint: ENDPOINT.to_owned(),
            max_usage: Usage {
                output_tokens: max_output,
                ..Usage::default()
            },
            timeout_ms: TIMEOUT_MS,
            metadata: String::new(),
            token: None,
            price: Box::new(price),
        },
    ))
}

fn tokens(output_tokens: u64) -> Usage {
    Usage {
        output_tokens,
        ..Usage::default()
    }
}

#[test]
fn a_metered_stream_is_priced_once_over_all_its_parts_not_rounded_up_per_part() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = metered(&mut w, 10_000); // 30 µ¢ held
                                        // Three parts of 1 token: 0.003 µ¢ in all so far, rounded up once to 1 µ¢.
    let mut posted = 0;
    for _ in 0..3 {
        let part = w.ok(
            USER,
            Command::Progress {
                hold,
                usage: tokens(1),
            },
        );
        let Outcome::Settled { amount_posted, .. } = part else {
            panic!("{part:?}")
        };
        posted += amount_posted.get();
    }
    assert_eq!(posted, 1, "the cost of 3 tokens, rounded once");
    // 997 more tokens: 1,000 cost 3 µ¢, 1 posted already.
    let part = w.ok(
        USER,
        Command::Progress {
            hold,
            usage: tokens(997),
        },
    );
    assert!(matches!(part, Outcome::Settled { amount_posted, .. } if amount_posted == amt(2)));
    // Finishing with the rest (1,000 tokens more): 2,000 tokens cost 6 µ¢ in all.
    let done = w.ok(
        USER,
        Command::Finish {
            hold,
            usage: tokens(1_000),
        },
    );
    assert!(
        matches!(done, Outcome::Committed { amount_posted, amount_released, .. }
            if amount_posted == amt(3) && amount_released == amt(24)),
        "{done:?}"
    );
    assert_eq!(w.bal(USER), bal(994, 0, 994));
    assert_eq!(
        w.account(USER).hold(hold.seq).unwrap().usage_settled,
        tokens(1_000)
    );
    assert!(w.audit().ok(), "{:?}", w.audit());
    assert_eq!(
        &w.recover()[&USER],
        w.account(USER),
        "replay rebuilds the same"
    );
}

#[test]
fn parts_settled_by_amount_count_against_a_metered_holds_cost() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = metered(&mut w, 10_000);
    w.ok(USER, settle(hold, 5)); // 5 µ¢ for 5 tokens (0.015 µ¢ worth, 1 rounded up)
    assert_eq!(
        w.reject(
            USER,
            Command::Finish {
                hold,
                usage: Usage::default(),
            }
        ),
        Error::SettledPastCost {
            hold,
            settled: 5,
            cost: 1
        },
        "5 tokens cost 1 µ¢, 5 were posted"
    );
    // With the rest of the usage counted, the 2,005 tokens cost 7 µ¢: 2 more are posted.
    let done = w.ok(
        USER,
        Command::Finish {
            hold,
            usage: tokens(2_000),
        },
    );
    assert!(matches!(done, Outcome::Committed { amount_posted, .. } if amount_posted == amt(2)));
    // A plain hold cannot be settled by usage.
    let plain = w.reserve(USER, 10);
    assert_eq!(
        w.reject(
            USER,
            Command::Progress {
                hold: plain,
                usage: tokens(1)
            }
        ),
        Error::NotMetered { hold: plain }
    );
}
