//! The engine on the PostgreSQL store, against a real PostgreSQL: a throwaway cluster
//! (`initdb` + `pg_ctl`, Debian's `postgresql` package; as root, run as the `postgres` user)
//! on a Unix socket of its own, started per test and stopped when the test ends. Set
//! `TALLY_PG_URL` to use a running server instead (each test then takes a schema of its own).

use std::sync::Arc;

use tally::{
    AccountSpec, EngineConfig, LedgerError, OpId, PgStore, ReserveRequest, Store, StoreError, Tally,
};

use tally_store::pg_testing::PgServer;

use crate::support::*;

fn all_usage(tally: &Tally) -> tally::UsageTotals {
    let all = tally::UsageQuery::new(
        tally::Granularity::Day,
        tally::Timestamp(0),
        tally::Timestamp(u64::MAX / 2),
    );
    tally.usage(&all).unwrap().totals
}

async fn engine(store: &PgStore) -> Tally {
    Tally::open(Arc::new(store.clone()), EngineConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_on_postgres_keeps_every_acknowledged_write_across_a_crash() {
    let pg = PgServer::start();
    let config = pg.config("crash");
    let (store, recovery) = PgStore::open(config.clone()).unwrap();
    assert_eq!(recovery.records, 0);
    let tally = engine(&store).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 100_000).await.unwrap();
    let retried = op();
    let hold = tally
        .reserve(retried, ReserveRequest::new(ALICE, APP, 30_000))
        .await
        .unwrap();
    let posted = tally.commit(op(), hold, 12_345).await.unwrap();
    tally.refund(op(), posted.posting, 345).await.unwrap();
    tally
        .charge(op(), ALICE, APP, 1_000, "/chat")
        .await
        .unwrap();
    let before = tally.balance(ALICE).await.unwrap();
    assert_eq!(before.available, 100_000 - 12_345 + 345 - 1_000);
    let usage_before = all_usage(&tally);
    let head = store.trail_head();
    // A crash: the engine and the store handle go without saving anything.
    drop(tally);
    drop(store);

    let (store, recovery) = PgStore::open(config).unwrap();
    assert_eq!(recovery.last_seq, head.0);
    assert_eq!(
        recovery.shards_claimed,
        tally::PG_SHARDS,
        "one node serves every shard"
    );
    assert_eq!(
        store.trail_head(),
        head,
        "the chain head is rebuilt from PostgreSQL"
    );
    let tally = engine(&store).await;
    assert_eq!(tally.balance(ALICE).await.unwrap(), before);
    assert_eq!(tally.balance(APP).await.unwrap().available, 12_000 + 1_000);
    // The retry of an acknowledged reserve is answered as first, not made again.
    let again = tally
        .reserve(retried, ReserveRequest::new(ALICE, APP, 30_000))
        .await
        .unwrap();
    assert_eq!(again, hold);
    assert_eq!(tally.balance(ALICE).await.unwrap(), before);
    let usage_after = all_usage(&tally);
    assert_eq!(
        usage_after, usage_before,
        "usage is rebuilt from the records"
    );
    let report = store.verify_trail().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.last_seq, head.0);
    let hist = tally.history(ALICE, 0, 100).await.unwrap();
    assert!(hist.entries.len() >= 5, "{hist:?}");
    assert!(tally.audit().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_their_idempotency_keys_load_back_from_postgres() {
    let pg = PgServer::start();
    let config = pg.config("snap");
    let (store, _) = PgStore::open(config.clone()).unwrap();
    let tally = engine(&store).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 50_000).await.unwrap();
    let ops: Vec<OpId> = (0..20).map(|_| op()).collect();
    for (i, o) in ops.iter().enumerate() {
        tally
            .charge(*o, ALICE, APP, 100 + i as u64, "/chat")
            .await
            .unwrap();
    }
    // Snapshots of every resident account, then a few records after them.
    assert!(tally.checkpoint().await.unwrap() >= 1);
    tally.charge(op(), ALICE, APP, 7, "/chat").await.unwrap();
    let before = tally.balance(ALICE).await.unwrap();
    tally.shutdown().await.unwrap();

    let (store, recovery) = PgStore::open(config).unwrap();
    assert!(recovery.snapshots >= 3, "{recovery:?}");
    let account = store.load(ALICE).unwrap().expect("alice");
    assert_eq!(account.balance(), before);
    assert_eq!(
        account.remembered_keys(),
        22,
        "fund + 20 charges + 1, keys restored"
    );
    let tally = engine(&store).await;
    // Every key survived the snapshot: each retry answers as first and moves nothing.
    for (i, o) in ops.iter().enumerate() {
        tally
            .charge(*o, ALICE, APP, 100 + i as u64, "/chat")
            .await
            .unwrap();
    }
    let e = tally
        .charge(ops[0], ALICE, APP, 999, "/chat")
        .await
        .unwrap_err();
    assert!(
        matches!(ledger(e), LedgerError::IdempotencyConflict { .. }),
        "the key remembers its request"
    );
    assert_eq!(tally.balance(ALICE).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_postgres_never_overspend_and_every_write_is_durable() {
    let pg = PgServer::start();
    let config = pg.config("race");
    let (store, _) = PgStore::open(config.clone()).unwrap();
    let tally = engine(&store).await;
    open_accounts(&tally).await;
    tally
        .open_account(tally::AccountId(12), AccountSpec::user())
        .await
        .unwrap();
    tally.fund(op(), ALICE, BANK, 200_000).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut posted = 0u64;
            for i in 0..25u64 {
                let amount = 500 + (t * 37 + i * 11) % 1_000;
                match tally.charge(op(), ALICE, APP, amount, "/chat").await {
                    Ok(_) => posted += amount,
                    Err(e) => assert!(
                        matches!(ledger(e), LedgerError::InsufficientFunds { .. }),
                        "only funds may refuse"
                    ),
                }
            }
            posted
        }));
    }
    let mut posted = 0u64;
    for t in tasks {
        posted += t.await.unwrap();
    }
    assert!(posted <= 200_000);
    assert_eq!(
        tally.balance(ALICE).await.unwrap().available,
        200_000 - i128::from(posted)
    );
    let seq = store.trail_head().0;
    drop(tally);
    drop(store);
    let (store, recovery) = PgStore::open(config).unwrap();
    assert_eq!(recovery.last_seq, seq);
    let tally = engine(&store).await;
    assert_eq!(
        tally.balance(APP).await.unwrap().available,
        i128::from(posted)
    );
    assert!(tally.audit().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_fail_stops_the_store_and_nothing_unacknowledged_is_claimed() {
    let pg = PgServer::start();
    if !pg.is_own() {
        return; // a shared server is not ours to stop
    }
    let config = pg.config("gone");
    let (store, _) = PgStore::open(config).unwrap();
    let tally = engine(&store).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 1_000).await.unwrap();
    drop(pg); // the server stops (immediate shutdown)
    let e = tally
        .charge(op(), ALICE, APP, 10, "/chat")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            tally::Error::StorageFailed { .. } | tally::Error::Storage { .. }
        ),
        "the write was not acknowledged: {e:?}"
    );
    // A record queued now cannot be committed: the store fail-stops, and says so.
    let record = tally::Account::open_record(
        tally::AccountId(99),
        AccountSpec::user(),
        tally::Timestamp(1),
    );
    let _ = store.append(&record);
    let mut durable = store.durable();
    let failed = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        durable.wait_for(|d| d.failed.is_some()),
    )
    .await;
    assert!(matches!(failed, Ok(Ok(_))), "the store did not fail-stop");
    drop(failed);
    let e = store.append(&record);
    assert!(matches!(e, Err(StoreError::Failed(_))), "{e:?}");
    assert_eq!(
        store.trail_head().0,
        durable.borrow().seq,
        "nothing past the last commit"
    );
}
