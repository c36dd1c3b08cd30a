//! Hold timeouts and the hold guard.

use std::sync::Arc;
use std::time::Duration;
use tally::{EngineConfig, HoldStatus, LedgerError, ReserveRequest, SystemClock};

use crate::support::*;

#[tokio::test]
async fn an_expired_hold_is_released_on_access_and_cannot_be_committed() {
    let w = World::new(1_000).await;
    let hold = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 800).timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    w.clock.advance(9_999);
    assert_eq!(w.available(ALICE).await, 200);
    w.clock.advance(1);
    assert_eq!(
        w.available(ALICE).await,
        1_000,
        "the hold should have expired on access"
    );
    let err = w.tally.commit(op(), hold, 800).await.unwrap_err();
    assert_eq!(
        ledger(err),
        LedgerError::HoldExpired {
            hold,
            expired_at: w.tally.get_hold(hold).await.unwrap().expires_at
        }
    );
    assert_eq!(
        w.tally.get_hold(hold).await.unwrap().status,
        HoldStatus::Expired
    );
    w.assert_books_balance().await;
}

#[tokio::test]
async fn commit_at_the_deadline_is_refused_as_expired() {
    let w = World::new(1_000).await;
    let hold = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 800).timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    w.clock.advance(50);
    let err = w.tally.commit(op(), hold, 1).await.unwrap_err();
    assert!(matches!(ledger(err), LedgerError::HoldExpired { .. }));
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 0);
}

#[tokio::test]
async fn expire_due_sweeps_every_resident_account() {
    let w = World::new(1_000).await;
    for _ in 0..3 {
        w.tally
            .reserve(
                op(),
                ReserveRequest::new(ALICE, APP, 100).timeout(Duration::from_secs(1)),
            )
            .await
            .unwrap();
    }
    w.clock.advance(1_000);
    assert_eq!(w.tally.expire_due().await.unwrap(), 3);
    assert_eq!(w.tally.balance(ALICE).await.unwrap().debits_pending, 0);
}

#[tokio::test]
async fn the_timer_voids_a_hold_without_any_access() {
    let config = EngineConfig {
        clock: Arc::new(SystemClock),
        ..EngineConfig::default()
    };
    let w = World::with_config(1_000, config, tally::ManualClock::default()).await;
    let hold = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 700).timeout(Duration::from_millis(30)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Read the record straight from the journal: no request touched the account meanwhile.
    let expired = w.store.records().iter().any(|r| {
        r.account == ALICE
            && matches!(r.change, tally::Change::Expired { hold: h, .. } if h == hold.seq)
    });
    assert!(expired, "the timer should have expired the hold");
}

#[tokio::test]
async fn a_dropped_guard_voids_its_hold_at_once() {
    let w = World::new(1_000).await;
    let hold = {
        let guard = w
            .tally
            .hold(
                op(),
                ReserveRequest::new(ALICE, APP, 600).timeout(Duration::from_secs(3_600)),
            )
            .await
            .unwrap();
        guard.id()
    };
    for _ in 0..200 {
        if w.tally.get_hold(hold).await.unwrap().status == HoldStatus::Voided {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        w.tally.get_hold(hold).await.unwrap().status,
        HoldStatus::Voided
    );
    assert_eq!(w.available(ALICE).await, 1_000);
}

#[tokio::test]
async fn work_that_fails_inside_a_guard_costs_nothing() {
    let w = World::new(1_000).await;
    async fn call_model(tally: &tally::Tally) -> Result<u64, String> {
        let _guard = tally
            .hold(op(), ReserveRequest::new(ALICE, APP, 900))
            .await
            .map_err(|e| e.to_string())?;
        Err("upstream model returned 500".to_string())
    }
    assert!(call_model(&w.tally).await.is_err());
    for _ in 0..200 {
        if w.tally.balance(ALICE).await.unwrap().debits_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.available(ALICE).await, 1_000);
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 0);
}

#[tokio::test]
async fn an_explicit_guard_void_returns_the_amount() {
    let w = World::new(1_000).await;
    let guard = w
        .tally
        .hold(op(), ReserveRequest::new(ALICE, APP, 250))
        .await
        .unwrap();
    assert_eq!(guard.void().await.unwrap().get(), 250);
    assert_eq!(w.available(ALICE).await, 1_000);
}
