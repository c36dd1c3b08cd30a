//! Estimate, then correct, through the engine: the estimate and its one correction are journaled,
//! published, counted in usage and survive a crash.

use std::time::Duration;

use tally::{EventKind, Granularity, ReserveRequest, Timestamp, Usage, UsageQuery};

use crate::support::*;

#[tokio::test]
async fn an_estimated_call_is_corrected_once_and_that_survives_a_crash() {
    let w = World::new(10_000).await;
    let mut sub = w.tally.subscribe();
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 4_000))
        .await
        .unwrap();
    let done = w.tally.commit_estimate(op(), hold).await.unwrap();
    assert_eq!(done.amount_posted.get(), 4_000);
    let posting = done.posting;
    let account = w.tally.account(ALICE).await.unwrap();
    let estimate = account.posting(posting.seq).unwrap().estimate.clone();
    assert!(estimate.is_some_and(|e| !e.corrected));
    // The provider reports later: 1,500 output tokens, 2,500 µ¢.
    let usage = Usage {
        output_tokens: 1_500,
        ..Usage::default()
    };
    let again = op();
    let (estimated, amount) = w
        .tally
        .correct(again, posting, Some(2_500), usage)
        .await
        .unwrap();
    assert_eq!((estimated.get(), amount.get()), (4_000, 2_500));
    // A retry is answered as first; another correction is refused.
    assert_eq!(
        w.tally
            .correct(again, posting, Some(2_500), usage)
            .await
            .unwrap(),
        (estimated, amount)
    );
    let e = w
        .tally
        .correct(op(), posting, Some(3_000), usage)
        .await
        .unwrap_err();
    assert!(
        matches!(ledger(e), tally::LedgerError::AlreadyCorrected { .. }),
        "a second correction"
    );
    assert_eq!(w.tally.balance(ALICE).await.unwrap().available, 7_500);
    assert_eq!(w.tally.balance(APP).await.unwrap().available, 2_500);
    // Published once durable.
    let mut names = Vec::new();
    loop {
        let event = match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Ok(Some(event))) => event,
            other => panic!("no posting.corrected event: {other:?} after {names:?}"),
        };
        names.push(event.name());
        if let EventKind::PostingCorrected {
            estimated, amount, ..
        } = event.kind
        {
            assert_eq!((estimated.get(), amount.get()), (4_000, 2_500));
            break;
        }
    }
    assert!(names.contains(&"posting.corrected"), "{names:?}");
    // Usage: one call, its real tokens, net 2,500.
    let now = w.tally.now();
    let q = UsageQuery::new(Granularity::Day, Timestamp(0), Timestamp(now.0 + 1));
    let t = w.tally.usage(&q).unwrap().totals;
    assert_eq!((t.calls, t.output_tokens, t.net()), (1, 1_500, 2_500));
    // After a crash: the same balances and the posting stays corrected.
    let w = w.reopen().await;
    assert_eq!(w.tally.balance(ALICE).await.unwrap().available, 7_500);
    let e = w
        .tally
        .correct(op(), posting, Some(3_000), usage)
        .await
        .unwrap_err();
    assert!(matches!(
        ledger(e),
        tally::LedgerError::AlreadyCorrected { .. }
    ));
    assert!(w.tally.audit().await.unwrap().ok());
}
