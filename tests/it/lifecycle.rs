//! Crash and reopen, passivation, actor failure, admission limits, fail-stop, shutdown.

use std::sync::Arc;
use std::time::Duration;
use tally::{EngineConfig, Error, MemStore, ReserveRequest, Tally};

use crate::support::*;

#[tokio::test]
async fn reopening_after_a_crash_recovers_every_acknowledged_change() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 1_000))
        .await
        .unwrap();
    let posting = w.tally.charge(op(), ALICE, APP, 2_000, "").await.unwrap();
    w.tally.refund(op(), posting, 500).await.unwrap();
    w.tally.transfer(op(), ALICE, BOB, 300).await.unwrap();
    let before: Vec<_> = futures(&w).await;
    let w = w.reopen().await;
    assert_eq!(futures(&w).await, before);
    // The pending hold survived and can still be committed.
    w.tally.commit(op(), hold, 1_000).await.unwrap();
    w.assert_books_balance().await;
}

async fn futures(w: &World) -> Vec<tally::Account> {
    let mut all = Vec::new();
    for id in [BANK, APP, ALICE, BOB] {
        all.push(w.tally.account(id).await.unwrap());
    }
    all
}

#[tokio::test]
async fn idle_accounts_are_passivated_and_come_back_unchanged() {
    let clock = tally::ManualClock::new(tally::Timestamp(1_000_000));
    let config = EngineConfig {
        idle_passivate_after: Duration::from_secs(10),
        supervisor_tick: Duration::from_millis(10),
        ..config(&clock)
    };
    let w = World::with_config(10_000, config, clock).await;
    let request = ReserveRequest::new(ALICE, APP, 1_000).timeout(Duration::from_secs(3_600));
    w.tally.reserve(op(), request).await.unwrap();
    let before = w.tally.account(ALICE).await.unwrap();
    // The hold made Alice resident; the app is credited through the store's leg book, never
    // activated by it.
    assert!(w.tally.resident_accounts() >= 1, "alice is resident");
    w.clock.advance(60_000);
    for _ in 0..200 {
        if w.tally.resident_accounts() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        w.tally.resident_accounts(),
        0,
        "idle accounts should have been passivated"
    );
    let after = w.tally.account(ALICE).await.unwrap();
    assert_eq!(after.balance(), before.balance());
    assert_eq!(after.pending_holds().count(), 1);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn resident_accounts_stay_near_the_cap() {
    let clock = tally::ManualClock::new(tally::Timestamp(1_000_000));
    let config = EngineConfig {
        resident_max: 20,
        ..config(&clock)
    };
    let w = World::with_config(0, config, clock).await;
    for i in 0..200u64 {
        let id = tally::AccountId(1_000 + i);
        w.tally
            .open_account(id, tally::AccountSpec::user())
            .await
            .unwrap();
        w.tally.fund(op(), id, BANK, 10).await.unwrap();
        w.clock.advance(1);
        assert!(
            w.tally.resident_accounts() <= 30,
            "resident {} past the hard bound",
            w.tally.resident_accounts()
        );
    }
    for i in 0..200u64 {
        assert_eq!(w.available(tally::AccountId(1_000 + i)).await, 10);
    }
    w.assert_books_balance().await;
}

#[tokio::test]
async fn a_panicked_account_is_restarted_from_its_last_state() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 1_000))
        .await
        .unwrap();
    let before = w.tally.account(ALICE).await.unwrap();
    w.tally.inject_panic(ALICE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        w.tally.account(ALICE).await.unwrap().balance(),
        before.balance()
    );
    w.tally.commit(op(), hold, 400).await.unwrap();
    assert_eq!(w.available(ALICE).await, 9_600);
    w.assert_books_balance().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_account_limit_requests_are_refused_as_overloaded() {
    let clock = tally::ManualClock::default();
    let config = EngineConfig {
        account_inflight_max: 2,
        ..config(&clock)
    };
    let w = World::with_config(1_000_000, config, clock).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let tally = w.tally.clone();
            tokio::spawn(async move { tally.charge(op(), ALICE, APP, 1, "").await })
        })
        .collect();
    let (mut ok, mut overloaded) = (0i128, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Overloaded {
                scope: "account",
                limit: 2,
            }) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok + overloaded, 64);
    assert_eq!(
        w.available(ALICE).await,
        1_000_000 - ok,
        "an overloaded request changed the balance"
    );
}

#[tokio::test]
async fn past_the_engine_limit_requests_are_refused_as_overloaded() {
    let clock = tally::ManualClock::default();
    // The first request is still in flight (in the mailbox) when the second arrives.
    let config = EngineConfig {
        inflight_max: 1,
        ..config(&clock)
    };
    let w = World::with_config(1_000, config, clock).await;
    let first = w.tally.charge(op(), ALICE, APP, 1, "");
    let second = w.tally.charge(op(), ALICE, APP, 1, "");
    let (a, b) = tokio::join!(first, second);
    let overloaded = [&a, &b]
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(Error::Overloaded {
                    scope: "engine",
                    limit: 1
                })
            )
        })
        .count();
    assert_eq!(overloaded, 1, "{a:?} {b:?}");
}

#[tokio::test]
async fn a_failing_store_fail_stops_and_acknowledges_nothing_more() {
    let config = EngineConfig::default();
    // Four accounts opened and one funding: the sixth append fails.
    let store = MemStore::failing_after(config.limits.clone(), 5);
    let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
    tally
        .open_account(BANK, tally::AccountSpec::funding())
        .await
        .unwrap();
    tally
        .open_account(APP, tally::AccountSpec::revenue())
        .await
        .unwrap();
    tally
        .open_account(ALICE, tally::AccountSpec::user())
        .await
        .unwrap();
    tally
        .open_account(BOB, tally::AccountSpec::user())
        .await
        .unwrap();
    tally.fund(op(), ALICE, BANK, 1_000).await.unwrap();
    let err = tally.charge(op(), ALICE, APP, 10, "").await.unwrap_err();
    assert!(matches!(err, Error::StorageFailed { .. }), "{err:?}");
    let err = tally.fund(op(), ALICE, BANK, 10).await.unwrap_err();
    assert!(matches!(err, Error::StorageFailed { .. }), "{err:?}");
    assert_eq!(store.records().len(), 5);
    assert_eq!(tally.balance(ALICE).await.unwrap().available, 1_000);
}

#[tokio::test]
async fn shutdown_drains_snapshots_and_refuses_new_requests() {
    let w = World::new(5_000).await;
    w.tally.charge(op(), ALICE, APP, 1_000, "").await.unwrap();
    let other = w.tally.clone();
    w.tally.clone().shutdown().await.unwrap();
    assert_eq!(
        other.charge(op(), ALICE, APP, 1, "").await.unwrap_err(),
        Error::Shutdown
    );
    // Every call says so, the maintenance ones included.
    assert_eq!(other.checkpoint().await.unwrap_err(), Error::Shutdown);
    assert_eq!(other.expire_due().await.unwrap_err(), Error::Shutdown);
    let w = w.reopen().await;
    assert_eq!(w.available(ALICE).await, 4_000);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn an_engine_refuses_a_store_that_replays_under_other_limits() {
    let limits = tally::Limits {
        idempotency_keys_max: 5,
        ..Default::default()
    };
    let store = Arc::new(MemStore::new(limits));
    let refused = Tally::open(store, EngineConfig::default()).await;
    match refused {
        Err(Error::Internal { reason }) => {
            assert!(reason.contains("limits"), "{reason}")
        }
        other => panic!("opened: {:?}", other.err()),
    }
}
