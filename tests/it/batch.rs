//! The batch API: `Tally::submit` answers each request as `execute` would have, in order.

use std::time::Duration;

use tally::{
    AccountId, Amount, Command, EngineConfig, Error, LedgerError, Outcome, Request, Usage,
    SUBMIT_BATCH_MAX,
};

use crate::support::{op, World, ALICE, APP, BANK, BOB};

fn charge(amount: u64) -> Command {
    Command::Charge {
        app: APP,
        amount: Amount::new(amount).unwrap(),
        endpoint: "/v1/chat".into(),
        metadata: String::new(),
        usage: Usage::default(),
        token: None,
    }
}

fn fund(amount: u64) -> Command {
    Command::Fund {
        from: BANK,
        amount: Amount::new(amount).unwrap(),
    }
}

async fn world() -> World {
    let clock = tally::ManualClock::new(tally::Timestamp(1_700_000_000_000));
    let config = crate::support::config(&clock);
    World::with_config(1_000, config, clock).await
}

#[tokio::test]
async fn a_batch_answers_each_request_in_order_and_refusals_change_nothing() {
    {
        let w = world().await;
        let repeated = op();
        let batch = vec![
            (ALICE, Request::new(op(), charge(400))),
            // More than Alice has left: refused, and nothing else in the batch is affected.
            (ALICE, Request::new(op(), charge(700))),
            (BOB, Request::new(op(), fund(50))),
            (ALICE, Request::new(repeated, charge(100))),
            // The same op id again within the batch: a retry, answered with the first outcome.
            (ALICE, Request::new(repeated, charge(100))),
            // The same op id with another amount: a conflict.
            (ALICE, Request::new(repeated, charge(101))),
            (BOB, Request::new(op(), charge(50))),
            (AccountId(999), Request::new(op(), charge(1))),
        ];
        let results = w.tally.submit(batch).await.unwrap();
        assert_eq!(results.len(), 8);
        assert!(
            matches!(results[0], Ok(Outcome::Charged { .. })),
            "{results:?}"
        );
        assert!(
            matches!(
                results[1],
                Err(Error::Ledger(LedgerError::InsufficientFunds { .. }))
            ),
            "{results:?}"
        );
        assert!(matches!(results[2], Ok(Outcome::Funded)), "{results:?}");
        assert!(
            matches!(results[3], Ok(Outcome::Charged { .. })),
            "{results:?}"
        );
        assert_eq!(results[4], results[3], "a retry answers the first outcome");
        assert!(
            matches!(
                results[5],
                Err(Error::Ledger(LedgerError::IdempotencyConflict { .. }))
            ),
            "{results:?}"
        );
        assert!(
            matches!(results[6], Ok(Outcome::Charged { .. })),
            "{results:?}"
        );
        assert!(
            matches!(
                results[7],
                Err(Error::Ledger(LedgerError::UnknownAccount { .. }))
            ),
            "{results:?}"
        );
        assert_eq!(w.available(ALICE).await, 1_000 - 400 - 100);
        assert_eq!(w.available(BOB).await, 0);
        assert_eq!(w.tally.balance(APP).await.unwrap().posted, 550);
        w.assert_books_balance().await;
    }
}

#[tokio::test]
async fn a_batch_past_its_bound_is_refused_whole_and_an_empty_one_is_empty() {
    let w = world().await;
    let batch: Vec<_> = (0..=SUBMIT_BATCH_MAX)
        .map(|_| (ALICE, Request::new(op(), charge(1))))
        .collect();
    match w.tally.submit(batch).await {
        Err(Error::BatchTooLarge { len, max }) => {
            assert_eq!((len, max), (SUBMIT_BATCH_MAX + 1, SUBMIT_BATCH_MAX));
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert_eq!(w.available(ALICE).await, 1_000, "nothing executed");
    assert!(w.tally.submit(Vec::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_that_does_not_fit_in_admission_is_refused_whole() {
    let clock = tally::ManualClock::new(tally::Timestamp(1_700_000_000_000));
    let config = EngineConfig {
        inflight_max: 16,
        ..crate::support::config(&clock)
    };
    let w = World::with_config(1_000, config, clock).await;
    let batch: Vec<_> = (0..17)
        .map(|_| (ALICE, Request::new(op(), charge(1))))
        .collect();
    match w.tally.submit(batch).await {
        Err(Error::Overloaded { scope, limit }) => assert_eq!((scope, limit), ("engine", 16)),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(w.available(ALICE).await, 1_000, "nothing executed");
}

#[tokio::test]
async fn a_full_batch_on_one_account_is_exact_and_survives_a_reopen() {
    let w = world().await;
    w.tally.fund(op(), ALICE, BANK, 10_000_000).await.unwrap();
    let batch: Vec<_> = (0..SUBMIT_BATCH_MAX)
        .map(|n| (ALICE, Request::new(op(), charge(1 + (n as u64 % 7)))))
        .collect();
    let spent: i128 = (0..SUBMIT_BATCH_MAX).map(|n| 1 + (n as i128 % 7)).sum();
    let results = w.tally.submit(batch).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    let before = w.available(ALICE).await;
    assert_eq!(before, 10_001_000 - spent);
    let w = w.reopen().await;
    assert_eq!(
        w.available(ALICE).await,
        before,
        "every acknowledged charge journaled"
    );
    w.assert_books_balance().await;
}

#[tokio::test]
async fn a_durable_batch_acknowledged_is_all_there_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store_config = tally::DurableConfig::new(dir.path());
    let (tally, _store, _) =
        crate::support::open_durable(store_config.clone(), EngineConfig::default()).await;
    crate::support::open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 1_000_000).await.unwrap();
    let batch: Vec<_> = (0..2_000)
        .map(|_| (ALICE, Request::new(op(), charge(3))))
        .collect();
    let results = tally.submit(batch).await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    // Dropped without a shutdown, as a crash: what was acknowledged is in the journal.
    drop(tally);
    drop(_store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (tally, _, recovery) =
        crate::support::open_durable(store_config, EngineConfig::default()).await;
    assert!(recovery.records_replayed >= 2_000, "{recovery:?}");
    assert_eq!(
        tally.balance(ALICE).await.unwrap().available,
        1_000_000 - 6_000
    );
}
