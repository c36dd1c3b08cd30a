//! Scenarios that pin down rules the random histories reach rarely or cannot observe, found by
//! mutation testing (see README, "Mutation testing"): with an in-memory store every record is
//! durable the moment it is appended, so "no answer before durability" needs a store whose
//! durable point the test moves by hand.

use std::sync::Arc;
use std::time::Duration;

use tally::{Account, AccountId, AccountSpec, Error, OpId, Record, Tally};

use super::model::{engine_config, runtime, START};
use super::probe::ProbeStore;

const BANK: AccountId = AccountId(1);
const APP: AccountId = AccountId(2);
const ALICE: AccountId = AccountId(10);

async fn gated_world() -> (Tally, ProbeStore) {
    let store = ProbeStore::new(super::small_limits());
    let clock = tally::ManualClock::new(START);
    let config = engine_config(&clock);
    let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
    super::open_alice_funded(&tally).await;
    (tally, store)
}

/// Lets every other task run for a while.
async fn let_others_run() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[test]
fn no_answer_and_no_read_before_the_record_is_durable() {
    runtime().block_on(no_answer_before_durable());
}

async fn no_answer_before_durable() {
    let (tally, store) = gated_world().await;
    store.hold();
    let charge = tokio::spawn({
        let tally = tally.clone();
        async move { tally.charge(OpId(2), ALICE, APP, 300, "/x").await }
    });
    let_others_run().await;
    assert!(
        !charge.is_finished(),
        "a charge was answered before it was durable"
    );
    // The record is in the journal and applied, but no read may show it yet.
    assert_eq!(store.last_seq(), 5);
    let read = tokio::spawn({
        let tally = tally.clone();
        async move { tally.balance(ALICE).await }
    });
    let_others_run().await;
    assert!(
        !read.is_finished(),
        "a read showed state that is not durable"
    );
    // A retry of the pending request waits for the same record.
    let retry = tokio::spawn({
        let tally = tally.clone();
        async move { tally.charge(OpId(2), ALICE, APP, 300, "/x").await }
    });
    let_others_run().await;
    assert!(
        !retry.is_finished(),
        "a retry was answered before the first was durable"
    );

    store.release();
    let posting = charge.await.unwrap().unwrap();
    assert_eq!(retry.await.unwrap().unwrap(), posting);
    assert_eq!(read.await.unwrap().unwrap().available, 700);
}

#[test]
fn a_failed_sync_answers_storage_failed_not_ok() {
    runtime().block_on(failed_sync());
}

async fn failed_sync() {
    let (tally, store) = gated_world().await;
    store.hold();
    let fund = tokio::spawn({
        let tally = tally.clone();
        async move { tally.fund(OpId(2), ALICE, BANK, 5).await }
    });
    let_others_run().await;
    store.fail();
    assert!(
        matches!(fund.await.unwrap(), Err(Error::StorageFailed { .. })),
        "a write whose sync failed must not be acknowledged"
    );
}

/// Errors name the account, the hold, the amounts and the limit, in words a person reads.
#[test]
fn errors_name_what_was_refused_in_words() {
    let hold = tally::HoldId {
        account: ALICE,
        seq: 1,
    };
    let posting = tally::PostingId {
        account: ALICE,
        seq: 2,
    };
    let cases: Vec<(tally::LedgerError, &str)> = vec![
        (
            tally::LedgerError::HoldAlreadyResolved {
                hold,
                status: tally::HoldStatus::Posted,
            },
            "hold:10/1 is already posted",
        ),
        (
            tally::LedgerError::HoldAlreadyResolved {
                hold,
                status: tally::HoldStatus::Voided,
            },
            "hold:10/1 is already voided",
        ),
        (
            tally::LedgerError::HoldExpired {
                hold,
                expired_at: tally::Timestamp(1_700_000_060_000),
            },
            "hold:10/1 expired at 1700000060000ms",
        ),
        (
            tally::LedgerError::InsufficientFunds {
                account: ALICE,
                available: 100,
                requested: 500,
            },
            "insufficient funds in account:10: 500 requested, 100 available",
        ),
        (
            tally::LedgerError::RefundExceedsPosting {
                posting,
                refundable: 3,
                requested: 4,
            },
            "refund of 4 exceeds the 3 still refundable of posting:10/2",
        ),
        (
            tally::LedgerError::IdempotencyConflict {
                op: OpId(255),
                field: "amount",
            },
            "op:000000000000000000000000000000ff was used for a different request: amount differs",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
    assert_eq!(tally::HoldStatus::Pending.to_string(), "pending");
    assert_eq!(tally::HoldStatus::Expired.to_string(), "expired");
}

#[test]
fn amounts_convert_and_print_as_plain_integers() {
    let amount = tally::Amount::new(1_234).unwrap();
    assert_eq!(amount.to_string(), "1234");
    assert_eq!(u64::from(amount), 1_234);
    assert_eq!(tally::Amount::from_const(u64::MAX), tally::Amount::MAX);
    assert_eq!(tally::Amount::from_const(7).get(), 7);
}

#[test]
fn commands_are_named_as_the_docs_name_them() {
    let hold = tally::HoldId {
        account: ALICE,
        seq: 1,
    };
    let posting = tally::PostingId {
        account: ALICE,
        seq: 1,
    };
    let amount = tally::Amount::new(1).unwrap();
    let cases = [
        (tally::Command::Fund { from: BANK, amount }, "fund"),
        (
            tally::Command::Reserve {
                app: APP,
                amount,
                timeout_ms: 1,
                endpoint: String::new(),
                metadata: String::new(),
                token: None,
            },
            "reserve",
        ),
        (
            tally::Command::Commit {
                usage: Default::default(),
                hold,
                amount,
            },
            "commit",
        ),
        (tally::Command::Void { hold }, "void"),
        (
            tally::Command::Charge {
                usage: Default::default(),
                app: APP,
                amount,
                endpoint: String::new(),
                metadata: String::new(),
                token: None,
            },
            "charge",
        ),
        (tally::Command::Refund { posting, amount }, "refund"),
        (tally::Command::Transfer { to: APP, amount }, "transfer"),
    ];
    for (command, name) in cases {
        assert_eq!(command.name(), name);
    }
}

/// The audit notices books that do not balance: a credit whose debit never happened.
#[test]
fn the_audit_reports_books_that_do_not_balance() {
    let limits = tally::Limits::default();
    let mut alice = Account::new(ALICE, AccountSpec::user());
    let bank = Account::new(BANK, AccountSpec::funding());
    let funded = Record {
        origin: Default::default(),
        account: ALICE,
        op: Some(OpId(1)),
        at: START,
        change: tally::Change::Funded {
            from: BANK,
            amount: tally::Amount::new(500).unwrap(),
        },
    };
    alice.apply(&funded, 1, &limits);
    let report = tally::audit([&alice, &bank]);
    assert!(!report.ok(), "{report:?}");
    assert_eq!(
        report.violations,
        vec![tally::Violation::Unbalanced {
            debits_posted: 0,
            credits_posted: 500,
        }]
    );
}

/// Prices: the digit limit of decimal text, exact sums over large denominators, and the shape
/// of tiers.
#[test]
fn decimal_prices_have_at_most_thirty_digits() {
    let malformed = |text: String| tally::PricingError::Malformed { text };
    // 30 digits are read ...
    let thirty = format!("0.{}", "0".repeat(29));
    assert_eq!(tally::parse_cents(&thirty), Ok(tally::Amount::ZERO));
    // ... 31 are not read at all, with or without a fraction.
    let fraction = format!("0.{}", "0".repeat(30));
    assert_eq!(tally::parse_cents(&fraction), Err(malformed(fraction)));
    let integer = "1".repeat(31);
    assert_eq!(tally::parse_cents(&integer), Err(malformed(integer)));
}

#[test]
fn costs_are_exact_over_large_denominators_and_per_second_tiers() {
    use tally::{Meter, Price, Rate, Tier, Usage};
    let quintillion = 1_000_000_000_000_000_000;
    let rate = Rate::new(1, quintillion).unwrap();
    let tokens = Usage {
        input_tokens: quintillion,
        output_tokens: quintillion,
        ..Usage::default()
    };
    let price = Price::PerToken {
        input: rate,
        output: rate,
    };
    assert_eq!(price.cost(&tokens).unwrap().get(), 2);

    let per_second = Price::Tiered {
        meter: Meter::Seconds,
        tiers: vec![Tier {
            up_to: None,
            rate: Rate::new(1_000, 1).unwrap(),
        }],
    };
    let call = Usage {
        duration_ms: 1_500,
        ..Usage::default()
    };
    assert_eq!(per_second.cost(&call).unwrap().get(), 1_500);
}

#[test]
fn tiers_must_rise_and_only_the_last_may_be_open() {
    use tally::{Meter, Price, PricingError, Rate, Tier, Usage};
    let tier = |up_to| Tier {
        up_to,
        rate: Rate::new(1, 1).unwrap(),
    };
    let bad = [
        vec![tier(Some(10)), tier(Some(10)), tier(None)],
        vec![tier(None), tier(None)],
        vec![tier(Some(10))],
        vec![],
    ];
    let usage = Usage {
        requests: 20,
        ..Usage::default()
    };
    for tiers in bad {
        let price = Price::Tiered {
            meter: Meter::Requests,
            tiers: tiers.clone(),
        };
        assert_eq!(price.cost(&usage), Err(PricingError::BadTiers), "{tiers:?}");
    }
}
