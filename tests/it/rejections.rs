//! Every bad input gets a typed error and changes nothing.

use tally::{AccountId, AccountSpec, HoldId, HoldStatus, LedgerError, PostingId, ReserveRequest};

use crate::support::*;

/// Runs `action`, expects `expected`, and checks that no account changed.
async fn rejected<F, Fut, T>(w: &World, expected: LedgerError, action: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, tally::Error>>,
    T: std::fmt::Debug,
{
    let before = snapshot(w).await;
    let records_before = w.store.records().len();
    let err = action().await.expect_err("the request should be refused");
    assert_eq!(ledger(err), expected);
    assert_eq!(
        snapshot(w).await,
        before,
        "a refused request changed an account"
    );
    assert_eq!(
        w.store.records().len(),
        records_before,
        "a refused request was journaled"
    );
}

async fn snapshot(w: &World) -> Vec<tally::Account> {
    let mut all = Vec::new();
    for id in [BANK, APP, ALICE, BOB] {
        all.push(w.tally.account(id).await.unwrap());
    }
    all
}

#[tokio::test]
async fn zero_amounts_are_rejected_for_every_operation() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    let posting = w.tally.charge(op(), ALICE, APP, 100, "").await.unwrap();
    let zero = LedgerError::ZeroAmount { field: "amount" };
    rejected(&w, zero.clone(), || w.tally.fund(op(), ALICE, BANK, 0)).await;
    rejected(&w, zero.clone(), || {
        w.tally.reserve(op(), ReserveRequest::new(ALICE, APP, 0))
    })
    .await;
    rejected(&w, zero.clone(), || w.tally.commit(op(), hold, 0)).await;
    rejected(&w, zero.clone(), || w.tally.charge(op(), ALICE, APP, 0, "")).await;
    rejected(&w, zero.clone(), || w.tally.refund(op(), posting, 0)).await;
    rejected(&w, zero, || w.tally.transfer(op(), ALICE, BOB, 0)).await;
}

#[tokio::test]
async fn u64_max_and_amounts_past_the_operation_limit_are_rejected() {
    let w = World::new(10_000).await;
    let too_large = |amount| LedgerError::AmountTooLarge {
        amount,
        max: i64::MAX as u64,
    };
    rejected(&w, too_large(u64::MAX), || {
        w.tally.fund(op(), ALICE, BANK, u64::MAX)
    })
    .await;
    rejected(&w, too_large(1 << 63), || {
        w.tally.charge(op(), ALICE, APP, 1 << 63, "")
    })
    .await;
    rejected(&w, too_large(u64::MAX), || {
        w.tally
            .reserve(op(), ReserveRequest::new(ALICE, APP, u64::MAX))
    })
    .await;
}

#[tokio::test]
async fn the_largest_amount_is_accepted_and_totals_do_not_overflow() {
    let w = World::new(0).await;
    let max = i64::MAX as u64;
    for _ in 0..4 {
        w.tally.fund(op(), ALICE, BANK, max).await.unwrap();
    }
    assert_eq!(w.available(ALICE).await, 4 * i128::from(max));
    w.tally.charge(op(), ALICE, APP, max, "").await.unwrap();
    w.assert_books_balance().await;
}

#[tokio::test]
async fn unknown_accounts_are_rejected() {
    let w = World::new(10_000).await;
    let ghost = AccountId(999);
    let unknown = LedgerError::UnknownAccount { account: ghost };
    rejected(&w, unknown.clone(), || w.tally.fund(op(), ALICE, ghost, 5)).await;
    rejected(&w, unknown.clone(), || {
        w.tally.charge(op(), ALICE, ghost, 5, "")
    })
    .await;
    rejected(&w, unknown.clone(), || {
        w.tally.transfer(op(), ALICE, ghost, 5)
    })
    .await;
    rejected(&w, unknown.clone(), || w.tally.balance(ghost)).await;
    rejected(&w, unknown, || w.tally.fund(op(), ghost, BANK, 5)).await;
}

#[tokio::test]
async fn wrong_account_kinds_are_rejected() {
    let w = World::new(10_000).await;
    rejected(
        &w,
        LedgerError::WrongAccountKind {
            account: BOB,
            actual: "user",
            expected: "a funding account",
        },
        || w.tally.fund(op(), ALICE, BOB, 5),
    )
    .await;
    rejected(
        &w,
        LedgerError::WrongAccountKind {
            account: BANK,
            actual: "funding",
            expected: "a revenue or user account",
        },
        || w.tally.reserve(op(), ReserveRequest::new(ALICE, BANK, 5)),
    )
    .await;
    rejected(
        &w,
        LedgerError::WrongAccountKind {
            account: APP,
            actual: "revenue",
            expected: "a user account",
        },
        || w.tally.charge(op(), APP, APP, 5, ""),
    )
    .await;
}

#[tokio::test]
async fn reopening_an_account_with_another_spec_is_rejected() {
    let w = World::new(0).await;
    w.tally
        .open_account(ALICE, AccountSpec::user())
        .await
        .unwrap();
    rejected(
        &w,
        LedgerError::AccountExists {
            account: ALICE,
            field: "kind",
        },
        || w.tally.open_account(ALICE, AccountSpec::revenue()),
    )
    .await;
}

#[tokio::test]
async fn unknown_holds_and_holds_of_other_accounts_are_rejected() {
    let w = World::new(10_000).await;
    let missing = HoldId {
        account: ALICE,
        seq: 77,
    };
    rejected(&w, LedgerError::UnknownHold { hold: missing }, || {
        w.tally.commit(op(), missing, 1)
    })
    .await;
    rejected(&w, LedgerError::UnknownHold { hold: missing }, || {
        w.tally.void(op(), missing)
    })
    .await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    let elsewhere = HoldId {
        account: BOB,
        seq: hold.seq,
    };
    rejected(&w, LedgerError::UnknownHold { hold: elsewhere }, || {
        w.tally.commit(op(), elsewhere, 1)
    })
    .await;
}

#[tokio::test]
async fn commit_above_the_held_amount_is_rejected() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    rejected(
        &w,
        LedgerError::CommitExceedsHold {
            hold,
            held: 100,
            requested: 101,
        },
        || w.tally.commit(op(), hold, 101),
    )
    .await;
}

#[tokio::test]
async fn a_second_commit_is_rejected() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    w.tally.commit(op(), hold, 60).await.unwrap();
    let resolved = LedgerError::HoldAlreadyResolved {
        hold,
        status: HoldStatus::Posted,
    };
    rejected(&w, resolved.clone(), || w.tally.commit(op(), hold, 40)).await;
    rejected(&w, resolved, || w.tally.void(op(), hold)).await;
}

#[tokio::test]
async fn commit_after_void_is_rejected() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    w.tally.void(op(), hold).await.unwrap();
    rejected(
        &w,
        LedgerError::HoldAlreadyResolved {
            hold,
            status: HoldStatus::Voided,
        },
        || w.tally.commit(op(), hold, 10),
    )
    .await;
}

#[tokio::test]
async fn refund_above_what_was_posted_is_rejected() {
    let w = World::new(10_000).await;
    let posting = w.tally.charge(op(), ALICE, APP, 300, "").await.unwrap();
    w.tally.refund(op(), posting, 200).await.unwrap();
    rejected(
        &w,
        LedgerError::RefundExceedsPosting {
            posting,
            refundable: 100,
            requested: 101,
        },
        || w.tally.refund(op(), posting, 101),
    )
    .await;
    let missing = PostingId {
        account: ALICE,
        seq: 999,
    };
    rejected(&w, LedgerError::UnknownPosting { posting: missing }, || {
        w.tally.refund(op(), missing, 1)
    })
    .await;
}

#[tokio::test]
async fn insufficient_funds_counts_the_holds_still_pending() {
    let w = World::new(1_000).await;
    w.tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 600))
        .await
        .unwrap();
    w.tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 300))
        .await
        .unwrap();
    rejected(
        &w,
        LedgerError::InsufficientFunds {
            account: ALICE,
            available: 100,
            requested: 101,
        },
        || w.tally.reserve(op(), ReserveRequest::new(ALICE, APP, 101)),
    )
    .await;
    rejected(
        &w,
        LedgerError::InsufficientFunds {
            account: ALICE,
            available: 100,
            requested: 200,
        },
        || w.tally.charge(op(), ALICE, APP, 200, ""),
    )
    .await;
    rejected(
        &w,
        LedgerError::InsufficientFunds {
            account: ALICE,
            available: 100,
            requested: 150,
        },
        || w.tally.transfer(op(), ALICE, BOB, 150),
    )
    .await;
}

#[tokio::test]
async fn transfer_to_the_same_account_is_rejected() {
    let w = World::new(1_000).await;
    rejected(&w, LedgerError::SameAccount { account: ALICE }, || {
        w.tally.transfer(op(), ALICE, ALICE, 1)
    })
    .await;
}

#[tokio::test]
async fn oversized_fields_and_bad_timeouts_are_rejected() {
    let w = World::new(1_000).await;
    let long = "x".repeat(129);
    rejected(
        &w,
        LedgerError::FieldTooLong {
            field: "endpoint",
            len: 129,
            max: 128,
        },
        || {
            w.tally.reserve(
                op(),
                ReserveRequest::new(ALICE, APP, 1).endpoint(long.clone()),
            )
        },
    )
    .await;
    rejected(
        &w,
        LedgerError::FieldTooLong {
            field: "metadata",
            len: 2_000,
            max: 1_024,
        },
        || {
            w.tally
                .charge_with(op(), ALICE, APP, 1, "", "m".repeat(2_000))
        },
    )
    .await;
    rejected(
        &w,
        LedgerError::InvalidTimeout {
            timeout_ms: 0,
            min_ms: 1,
            max_ms: 7 * 24 * 3_600_000,
        },
        || {
            w.tally.reserve(
                op(),
                ReserveRequest::new(ALICE, APP, 1).timeout(std::time::Duration::ZERO),
            )
        },
    )
    .await;
}
