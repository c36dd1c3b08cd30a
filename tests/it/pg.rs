//! The engine on the PostgreSQL store, against a real PostgreSQL: a throwaway cluster
//! (`initdb` + `pg_ctl`, Debian's `postgresql` package; as root, run as the `postgres` user)
//! on a Unix socket of its own, started per test and stopped when the test ends. Set
//! `TALLY_PG_URL` to use a running server instead (each test then takes a schema of its own).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tally::{
    AccountSpec, EngineConfig, LedgerError, OpId, PgConfig, PgStore, ReserveRequest, Store,
    StoreError, Tally,
};

use crate::support::*;

/// A PostgreSQL server for one test.
pub struct PgServer {
    url: String,
    dir: Option<(tempfile::TempDir, PathBuf)>,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TALLY_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "{name} is missing: install PostgreSQL (Debian: apt-get install postgresql), set \
             TALLY_PG_BIN to its bin directory, or TALLY_PG_URL to a running server"
        )
    })
}

fn as_postgres(program: &Path) -> Command {
    // initdb and postgres refuse to run as root.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    pub fn start() -> PgServer {
        if let Ok(url) = std::env::var("TALLY_PG_URL") {
            return PgServer { url, dir: None };
        }
        let tmp = tempfile::Builder::new()
            .prefix("tally-pg-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(tmp.path());
                    c
                },
                "chown",
            );
        }
        let mut initdb = as_postgres(&pg_bin("initdb"));
        initdb
            .args(["-A", "trust", "-U", "tally", "--no-sync", "-D"])
            .arg(&data);
        run(initdb, "initdb");
        // The socket lives in the test's own directory; a port of its own anyway.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let port = 20_000
            + (std::process::id() % 10_000) as u16
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut start = as_postgres(&pg_bin("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(tmp.path().join("log"))
            .args([
                "-o",
                &format!(
                    "-c listen_addresses='' -k {} -p {port} -c max_connections=50",
                    tmp.path().display()
                ),
                "start",
            ]);
        run(start, "pg_ctl start");
        let url = format!(
            "host={} port={port} user=tally dbname=postgres",
            tmp.path().display()
        );
        PgServer {
            url,
            dir: Some((tmp, data)),
        }
    }

    /// A store config on a schema of its own.
    pub fn config(&self, schema: &str) -> PgConfig {
        let unique = format!("{schema}_{}", std::process::id());
        PgConfig::new(self.url.clone(), unique)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some((_, data)) = &self.dir {
            let mut stop = as_postgres(&pg_bin("pg_ctl"));
            stop.arg("-D").arg(data).args(["-m", "immediate", "stop"]);
            let _ = stop.output();
        }
    }
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
    let usage_before = tally
        .usage(&tally::UsageQuery::new(
            tally::Granularity::Day,
            tally::Timestamp(0),
            tally::Timestamp(u64::MAX / 2),
        ))
        .unwrap()
        .totals;
    let head = store.trail_head();
    // A crash: the engine and the store handle go without saving anything.
    drop(tally);
    drop(store);

    let (store, recovery) = PgStore::open(config).unwrap();
    assert_eq!(recovery.records, head.0);
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
    let usage_after = tally
        .usage(&tally::UsageQuery::new(
            tally::Granularity::Day,
            tally::Timestamp(0),
            tally::Timestamp(u64::MAX / 2),
        ))
        .unwrap()
        .totals;
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
    assert!(tally.checkpoint().await.unwrap() >= 3);
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
    assert_eq!(recovery.records, seq);
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
    if pg.dir.is_none() {
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
