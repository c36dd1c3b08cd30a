//! Same id and same content returns the first result; same id and different content is an error
//! naming the field.

use tally::{Error, LedgerError, OpId, ReserveRequest};

use crate::support::*;

#[tokio::test]
async fn a_retried_request_returns_the_first_result_and_changes_nothing() {
    let w = World::new(10_000).await;
    let (fund, reserve, commit, charge, refund, transfer) = (op(), op(), op(), op(), op(), op());
    w.tally.fund(fund, ALICE, BANK, 1_000).await.unwrap();
    let request = ReserveRequest::new(ALICE, APP, 500).endpoint("/chat");
    let hold = w.tally.reserve(reserve, request.clone()).await.unwrap();
    let committed = w.tally.commit(commit, hold, 200).await.unwrap();
    let posting = w.tally.charge(charge, ALICE, APP, 50, "/s").await.unwrap();
    w.tally.refund(refund, posting, 10).await.unwrap();
    w.tally.transfer(transfer, ALICE, BOB, 5).await.unwrap();
    let before = w.tally.account(ALICE).await.unwrap();
    let records = w.store.records().len();

    w.tally.fund(fund, ALICE, BANK, 1_000).await.unwrap();
    assert_eq!(w.tally.reserve(reserve, request).await.unwrap(), hold);
    assert_eq!(w.tally.commit(commit, hold, 200).await.unwrap(), committed);
    assert_eq!(
        w.tally.charge(charge, ALICE, APP, 50, "/s").await.unwrap(),
        posting
    );
    w.tally.refund(refund, posting, 10).await.unwrap();
    w.tally.transfer(transfer, ALICE, BOB, 5).await.unwrap();

    assert_eq!(w.tally.account(ALICE).await.unwrap(), before);
    assert_eq!(
        w.store.records().len(),
        records,
        "a retry was journaled again"
    );
    w.assert_books_balance().await;
}

#[tokio::test]
async fn a_reused_id_with_different_content_names_the_field() {
    let w = World::new(10_000).await;
    let (fund, reserve, charge) = (op(), op(), op());
    w.tally.fund(fund, ALICE, BANK, 1_000).await.unwrap();
    w.tally
        .reserve(
            reserve,
            ReserveRequest::new(ALICE, APP, 500).endpoint("/chat"),
        )
        .await
        .unwrap();
    w.tally.charge(charge, ALICE, APP, 50, "/s").await.unwrap();
    let before = w.tally.account(ALICE).await.unwrap();

    let conflict = |op: OpId, field| LedgerError::IdempotencyConflict { op, field };
    let cases: Vec<(Result<(), Error>, LedgerError)> = vec![
        (
            w.tally.fund(fund, ALICE, BANK, 999).await,
            conflict(fund, "amount"),
        ),
        (
            w.tally
                .reserve(
                    reserve,
                    ReserveRequest::new(ALICE, APP, 501).endpoint("/chat"),
                )
                .await
                .map(drop),
            conflict(reserve, "amount"),
        ),
        (
            w.tally
                .reserve(
                    reserve,
                    ReserveRequest::new(ALICE, APP, 500).endpoint("/other"),
                )
                .await
                .map(drop),
            conflict(reserve, "endpoint"),
        ),
        (
            w.tally
                .reserve(
                    reserve,
                    ReserveRequest::new(ALICE, APP, 500)
                        .endpoint("/chat")
                        .timeout(std::time::Duration::from_secs(1)),
                )
                .await
                .map(drop),
            conflict(reserve, "timeout_ms"),
        ),
        (
            w.tally.charge(charge, ALICE, APP, 50, "/t").await.map(drop),
            conflict(charge, "endpoint"),
        ),
        (
            w.tally.charge(fund, ALICE, APP, 50, "/s").await.map(drop),
            conflict(fund, "operation"),
        ),
        (
            w.tally.transfer(charge, ALICE, BOB, 50).await,
            conflict(charge, "operation"),
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(ledger(result.unwrap_err()), expected);
    }
    assert_eq!(w.tally.account(ALICE).await.unwrap(), before);
}

#[tokio::test]
async fn a_retry_is_recognised_after_a_crash() {
    let w = World::new(10_000).await;
    let charge = op();
    let posting = w.tally.charge(charge, ALICE, APP, 70, "").await.unwrap();
    let w = w.reopen().await;
    assert_eq!(
        w.tally.charge(charge, ALICE, APP, 70, "").await.unwrap(),
        posting
    );
    assert_eq!(w.available(ALICE).await, 10_000 - 70);
}

#[tokio::test]
async fn a_refused_request_can_be_retried_with_the_same_id() {
    let w = World::new(100).await;
    let charge = op();
    let err = w
        .tally
        .charge(charge, ALICE, APP, 500, "")
        .await
        .unwrap_err();
    assert!(matches!(ledger(err), LedgerError::InsufficientFunds { .. }));
    w.tally.fund(op(), ALICE, BANK, 1_000).await.unwrap();
    w.tally.charge(charge, ALICE, APP, 500, "").await.unwrap();
    assert_eq!(w.available(ALICE).await, 600);
}
