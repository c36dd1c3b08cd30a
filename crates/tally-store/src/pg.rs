//! The PostgreSQL store: the journal, snapshots, idempotency keys and history in PostgreSQL, so
//! that tally can run on an existing, replicated database (issue 16's first step).
//!
//! - **Append** is in memory and never waits: a record gets its sequence number and its chain
//!   hash (the audit trail's BLAKE3 chain, as the file journal computes it) under one lock and
//!   joins a queue (at most [`PgConfig::queue_max`]; `Full` past it).
//! - **Group commit**: one committer thread takes what is queued (at most
//!   [`PgConfig::group_max`] records) and writes it in one transaction with `COPY … FROM STDIN
//!   BINARY`; the durable point moves when `COMMIT` returns, so with `synchronous_commit = on`
//!   (and a synchronous standby, `remote_apply`, in a cluster) a record is acknowledged only
//!   once PostgreSQL has made it durable. A failed group fail-stops the store, as the file
//!   journal does: every waiter gets `StorageFailed` and every later append is refused.
//! - **Load** waits until everything appended is committed, then reads the account's snapshot,
//!   the idempotency keys it remembers and its own records after it in one read-only
//!   transaction, replays them and takes in the legs it received ([`crate::legs`]: folded in
//!   memory at append, rebuilt from the records at open).
//! - **Save** writes a snapshot, the keys made since the stored one and the removal of the keys
//!   it no longer remembers in one transaction, never replacing a newer snapshot.
//! - History is kept whole in `records` (nothing is trimmed); usage and the legs are folded in
//!   memory at append and rebuilt from the records at open.
//!
//! The `postgres` client blocks on a runtime of its own, which may not run on an async
//! worker: each connection lives on a thread of its own (the committer's, and one for reads and
//! saves), and callers hand it work over a channel.
//!
//! Tables, in the schema [`PgConfig::schema`] (so that several stores share a database):
//! `records (seq, account, leg, kind, body, chain)`, `snapshots (account, seq, body)`,
//! `keys (account, seq, body)`. Bodies are [`crate::codec`]'s encodings, ids `BIGINT` (the
//! `u64` bit for bit).

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, NoTls};
use tokio::sync::watch;

use tally_core::{
    Account, AccountId, AccountSpec, Change, Limits, Record, UsageBook, UsageConfig, UsageQuery,
    UsageReport, UsageTotals,
};

use crate::codec::{
    decode_account, decode_key, decode_record, encode_account, encode_key, encode_record,
    snapshot_key_window,
};
use crate::journal::{chain_next, Chain, TrailProblem, TrailReport, GENESIS, TRAIL_PROBLEMS_MAX};
use crate::mem::replay_one;
use crate::{DurablePoint, HistoryEntry, Store, StoreError};

/// Records that may wait for their group's commit before appends are refused (`Full`).
pub const PG_QUEUE_MAX: usize = 262_144;
/// Records one group (one transaction) takes at most.
pub const PG_GROUP_MAX: usize = 8_192;
/// Records read per round trip when the whole journal is walked (open, trail verification).
const SCAN_CHUNK: i64 = 10_000;
/// How long closing waits for the committer to write what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Where and how a [`PgStore`] keeps its data.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// A libpq connection string (`host=/run/postgresql user=tally dbname=tally`, or a
    /// `postgresql://` URL).
    pub url: String,
    /// The schema its tables live in (created if missing): lowercase letters, digits and `_`,
    /// at most 63 bytes, not starting with a digit.
    pub schema: String,
    /// The account limits records are replayed with (the engine's).
    pub limits: Limits,
    /// Records that may wait for their commit ([`PG_QUEUE_MAX`] by default).
    pub queue_max: usize,
    /// Records per transaction at most ([`PG_GROUP_MAX`] by default).
    pub group_max: usize,
    /// How long opening waits for another store to let go of the schema (10 s by default;
    /// past it the open is refused).
    pub claim_wait: Duration,
}

impl PgConfig {
    /// A store at `url` in `schema`, with the default limits and bounds.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: schema.into(),
            limits: Limits::default(),
            queue_max: PG_QUEUE_MAX,
            group_max: PG_GROUP_MAX,
            claim_wait: CLAIM_WAIT,
        }
    }
}

/// What opening found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgRecovery {
    /// Records in the journal.
    pub records: u64,
    /// Snapshots stored.
    pub snapshots: u64,
}

/// A [`Store`] in PostgreSQL (module docs). Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    /// Dropped with the last handle: the committer then writes what is queued and stops, and
    /// the connections close (a store dropped without `close`, as a crash would, leaves no
    /// thread or session behind).
    _last: Arc<LastHandle>,
}

struct LastHandle(Arc<Inner>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.queue.lock().closing = true;
        self.0.wake.notify_all();
        // The reader's thread ends when its channel closes.
        drop(self.0.reader.lock().take());
    }
}

struct Inner {
    config: PgConfig,
    queue: Mutex<Queue>,
    /// Wakes the committer when records are queued or the store closes.
    wake: Condvar,
    /// Wakes whoever waits for a group to be committed.
    committed: Condvar,
    durable: watch::Sender<DurablePoint>,
    usage: Mutex<UsageBook>,
    /// The legs every account received, folded from the whole journal at open and at append.
    legs: crate::legs::LegBook,
    reader: Mutex<Option<Worker>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

struct Queue {
    pending: VecDeque<Row>,
    /// The next sequence number to hand out, and the chain hash of the record before it.
    next_seq: u64,
    head: Chain,
    /// The last committed record and its chain hash.
    durable_seq: u64,
    durable_head: Chain,
    failed: Option<Arc<str>>,
    closing: bool,
}

/// One record as the `records` table holds it.
struct Row {
    seq: i64,
    account: i64,
    leg: Option<i64>,
    kind: i16,
    body: Vec<u8>,
    chain: Vec<u8>,
}

/// `records.kind`: what the opening reads look for without decoding every record.
const KIND_OTHER: i16 = 0;
const KIND_OPENED: i16 = 1;
const KIND_POLICY: i16 = 2;

/// A `u64` id or sequence number as PostgreSQL's `BIGINT` (the same 64 bits).
fn big(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A `BIGINT` back as the `u64` it was.
fn unbig(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

fn pg_err(what: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{what}: {e}").into())
}

/// A connection on a thread of its own, doing what it is handed, one job at a time.
struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

type Job = Box<dyn FnOnce(&mut Client) + Send>;

impl Worker {
    fn connect(url: &str, name: &str) -> Result<Worker, StoreError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, rx) = mpsc::channel::<Job>();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut client = match Client::connect(&url, NoTls) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut client);
                }
            })
            .map_err(|e| StoreError::Io(format!("spawning {name}: {e}").into()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker {
                jobs,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(StoreError::Io(
                format!("connecting to PostgreSQL: {e}").into(),
            )),
            Err(_) => Err(StoreError::Io("the connection thread stopped".into())),
        }
    }

    /// Runs `f` on the connection and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |client| {
                let _ = tx.send(f(client));
            }))
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| {
            StoreError::Io("the PostgreSQL connection thread stopped mid-call".into())
        })?
    }

    fn stop(mut self) {
        drop(self.jobs);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn check_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.as_bytes()[0].is_ascii_digit()
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Io(
            format!(
                "schema {schema:?}: use lowercase letters, digits and _, at most 63 bytes, not \
                 starting with a digit"
            )
            .into(),
        ))
    }
}

fn schema_sql(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.records (
             seq BIGINT PRIMARY KEY, account BIGINT NOT NULL, leg BIGINT,
             kind SMALLINT NOT NULL, body BYTEA NOT NULL, chain BYTEA NOT NULL);
         CREATE INDEX IF NOT EXISTS records_by_account ON {s}.records (account, seq);
         CREATE INDEX IF NOT EXISTS records_by_leg ON {s}.records (leg, seq)
             WHERE leg IS NOT NULL;
         CREATE INDEX IF NOT EXISTS records_by_kind ON {s}.records (kind, seq)
             WHERE kind <> 0;
         CREATE TABLE IF NOT EXISTS {s}.snapshots (
             account BIGINT PRIMARY KEY, seq BIGINT NOT NULL, body BYTEA NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.keys (
             account BIGINT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL,
             PRIMARY KEY (account, seq));"
    )
}

/// Walks every record in sequence order, `SCAN_CHUNK` at a time, calling `each(seq, body,
/// chain)`; stops early when it returns `false`.
fn scan(
    client: &mut Client,
    schema: &str,
    mut each: impl FnMut(u64, &[u8], &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT seq, body, chain FROM {schema}.records WHERE seq > $1 ORDER BY seq LIMIT $2"
    );
    let mut after = 0i64;
    loop {
        let rows = client
            .query(&sql, &[&after, &SCAN_CHUNK])
            .map_err(pg_err("reading the journal"))?;
        let n = rows.len();
        for row in rows {
            let seq: i64 = row.get(0);
            let body: &[u8] = row.get(1);
            let chain: &[u8] = row.get(2);
            if !each(unbig(seq), body, chain)? {
                return Ok(());
            }
            after = seq;
        }
        if (n as i64) < SCAN_CHUNK {
            return Ok(());
        }
    }
}

fn chain_of(bytes: &[u8], seq: u64) -> Result<Chain, StoreError> {
    bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!("record {seq}'s chain hash is not 32 bytes").into())
    })
}

impl PgStore {
    /// Opens (creating its tables if missing) the store `config` names: reads the journal once
    /// to rebuild the usage aggregates and find its head (a gap in the sequence numbers refuses
    /// the open: `Corrupt`), then starts the committer.
    pub fn open(config: PgConfig) -> Result<(PgStore, PgRecovery), StoreError> {
        check_schema(&config.schema)?;
        let reader = Worker::connect(&config.url, "tally-pg-reader")?;
        let schema = config.schema.clone();
        let (usage, legs, last_seq, head, recovery) = reader.call(move |client| {
            client
                .batch_execute(&schema_sql(&schema))
                .map_err(pg_err("creating the tables"))?;
            let mut usage = UsageBook::unsaved(UsageConfig::default());
            let legs = crate::legs::LegBook::default();
            let (mut last, mut head) = (0u64, GENESIS);
            scan(client, &schema, |seq, body, chain| {
                if seq != last + 1 {
                    return Err(StoreError::Corrupt(
                        format!(
                            "the journal in schema {schema} jumps from seq {last} to {seq}: \
                             records are missing"
                        )
                        .into(),
                    ));
                }
                let record = decode_record(body)?;
                usage.fold(&record);
                legs.fold(&record, seq);
                (last, head) = (seq, chain_of(chain, seq)?);
                Ok(true)
            })?;
            let snapshots: i64 = client
                .query_one(&format!("SELECT count(*) FROM {schema}.snapshots"), &[])
                .map_err(pg_err("counting snapshots"))?
                .get(0);
            let recovery = PgRecovery {
                records: last,
                snapshots: unbig(snapshots),
            };
            Ok((usage, legs, last, head, recovery))
        })?;
        let (durable, _) = watch::channel(DurablePoint {
            seq: last_seq,
            ..DurablePoint::default()
        });
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                next_seq: last_seq + 1,
                head,
                durable_seq: last_seq,
                durable_head: head,
                failed: None,
                closing: false,
            }),
            wake: Condvar::new(),
            committed: Condvar::new(),
            durable,
            usage: Mutex::new(usage),
            legs,
            reader: Mutex::new(Some(reader)),
            committer: Mutex::new(None),
            config,
        });
        let writer = Worker::connect(&inner.config.url, "tally-pg-committer-connect")?;
        claim(&writer, &inner.config.schema, inner.config.claim_wait)?;
        let for_thread = inner.clone();
        let handle = std::thread::Builder::new()
            .name("tally-pg-committer".to_owned())
            .spawn(move || commit_loop(&for_thread, writer))
            .map_err(|e| StoreError::Io(format!("spawning the committer: {e}").into()))?;
        *inner.committer.lock() = Some(handle);
        let last = Arc::new(LastHandle(inner.clone()));
        Ok((PgStore { inner, _last: last }, recovery))
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.inner.reader.lock();
        reader.as_ref().ok_or(StoreError::Closed)?.call(f)
    }

    /// Waits until every record appended so far is committed (or the store failed).
    fn wait_all_committed(&self) -> Result<u64, StoreError> {
        let mut q = self.inner.queue.lock();
        let target = q.next_seq - 1;
        loop {
            if let Some(reason) = &q.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            if q.durable_seq >= target {
                return Ok(q.durable_seq);
            }
            self.inner.committed.wait(&mut q);
        }
    }

    fn schema(&self) -> String {
        self.inner.config.schema.clone()
    }

    /// Every committed record of one `kind` (openings, policy changes), in sequence order.
    fn records_of_kind(&self, kind: i16) -> Result<Vec<Record>, StoreError> {
        self.wait_all_committed()?;
        let schema = self.schema();
        self.read(move |client| {
            client
                .query(
                    &format!("SELECT body FROM {schema}.records WHERE kind = $1 ORDER BY seq"),
                    &[&kind],
                )
                .map_err(pg_err("reading the journal by kind"))?
                .iter()
                .map(|row| decode_record(row.get(0)))
                .collect()
        })
    }
}

/// How long opening waits for another store to let go of the schema (one dropped a moment ago
/// is still closing its connection).
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Makes the committer's connection the schema's only writer (a session advisory lock on the
/// schema's name, held while the connection lives: a second store on the schema is refused,
/// never interleaved) and its commits durable before they return (`synchronous_commit = on`,
/// whatever the server's default).
fn claim(writer: &Worker, schema: &str, wait: Duration) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    loop {
        let name = schema.to_owned();
        let got = writer.call(move |client| {
            client
                .batch_execute("SET synchronous_commit = on")
                .map_err(pg_err("SET synchronous_commit"))?;
            client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended('tally:' || $1, 0))",
                    &[&name],
                )
                .map(|row| row.get::<_, bool>(0))
                .map_err(pg_err("taking the schema's lock"))
        })?;
        if got {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(StoreError::Io(
                format!(
                    "schema {schema} is in use by another tally store (its advisory lock is                      held); one schema has one writer"
                )
                .into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The committer: takes what is queued and commits it, one transaction a group, until the
/// store closes; the first failure fail-stops the store.
fn commit_loop(inner: &Inner, writer: Worker) {
    let schema = inner.config.schema.clone();
    loop {
        let group: Vec<Row> = {
            let mut q = inner.queue.lock();
            while q.pending.is_empty() && !q.closing {
                inner.wake.wait(&mut q);
            }
            if q.pending.is_empty() {
                break;
            }
            let n = q.pending.len().min(inner.config.group_max.max(1));
            q.pending.drain(..n).collect()
        };
        let Some(last) = group.last() else { continue };
        let (last_seq, last_chain) = (unbig(last.seq), last.chain.clone());
        let schema = schema.clone();
        let written = writer.call(move |client| write_group(client, &schema, &group));
        let mut q = inner.queue.lock();
        match written {
            Ok(()) => {
                q.durable_seq = last_seq;
                if let Ok(chain) = chain_of(&last_chain, last_seq) {
                    q.durable_head = chain;
                }
                inner.durable.send_modify(|d| d.seq = last_seq);
            }
            Err(e) => {
                let reason: Arc<str> = format!("committing to PostgreSQL: {e}").into();
                tracing::error!(%reason, "the PostgreSQL store fail-stops");
                q.failed = Some(reason.clone());
                q.pending.clear();
                inner.durable.send_modify(|d| d.failed = Some(reason));
                inner.committed.notify_all();
                break;
            }
        }
        inner.committed.notify_all();
    }
    writer.stop();
}

fn write_group(client: &mut Client, schema: &str, group: &[Row]) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(pg_err("BEGIN"))?;
    {
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.records (seq, account, leg, kind, body, chain) FROM STDIN BINARY"
            ))
            .map_err(pg_err("COPY"))?;
        let types = [
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT2,
            Type::BYTEA,
            Type::BYTEA,
        ];
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        for row in group {
            writer
                .write(&[
                    &row.seq,
                    &row.account,
                    &row.leg,
                    &row.kind,
                    &row.body,
                    &row.chain,
                ])
                .map_err(pg_err("COPY row"))?;
        }
        writer.finish().map_err(pg_err("COPY end"))?;
    }
    tx.commit().map_err(pg_err("COMMIT"))
}

impl Store for PgStore {
    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        let body = encode_record(record)?;
        let kind = match record.change {
            Change::Opened { .. } => KIND_OPENED,
            Change::PolicySet { .. } => KIND_POLICY,
            _ => KIND_OTHER,
        };
        let seq = {
            let mut q = self.inner.queue.lock();
            if let Some(reason) = &q.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            if q.closing {
                return Err(StoreError::Closed);
            }
            if q.pending.len() >= self.inner.config.queue_max {
                return Err(StoreError::Full {
                    queued: q.pending.len(),
                    limit: self.inner.config.queue_max,
                });
            }
            let seq = q.next_seq;
            let chain = chain_next(&q.head, seq, &body);
            q.pending.push_back(Row {
                seq: big(seq),
                account: big(record.account.0),
                leg: record.leg_account().map(|id| big(id.0)),
                kind,
                body,
                chain: chain.to_vec(),
            });
            q.next_seq = seq + 1;
            q.head = chain;
            seq
        };
        self.inner.wake.notify_one();
        self.inner.usage.lock().fold(record);
        self.inner.legs.fold(record, seq);
        Ok(seq)
    }

    fn durable(&self) -> watch::Receiver<DurablePoint> {
        self.inner.durable.subscribe()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError> {
        self.records_of_kind(KIND_OPENED)?
            .into_iter()
            .map(|record| match record.change {
                Change::Opened { spec } => Ok((record.account, spec)),
                _ => Err(StoreError::Corrupt(
                    "a record marked as an opening is another change".into(),
                )),
            })
            .collect()
    }

    fn policies(&self) -> Result<Vec<(AccountId, tally_core::AccountPolicy)>, StoreError> {
        let mut policies: std::collections::BTreeMap<AccountId, tally_core::AccountPolicy> =
            std::collections::BTreeMap::new();
        for record in self.records_of_kind(KIND_POLICY)? {
            if let Change::PolicySet { setting, version } = &record.change {
                policies
                    .entry(record.account)
                    .or_default()
                    .apply(setting, *version, record.at);
            }
        }
        Ok(policies.into_iter().collect())
    }

    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.wait_all_committed()?;
        let schema = self.schema();
        let (snapshot, keys, records) = self.read(move |client| {
            let mut tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .start()
                .map_err(pg_err("BEGIN"))?;
            let account = big(id.0);
            let snapshot: Option<Vec<u8>> = tx
                .query_opt(
                    &format!("SELECT body FROM {schema}.snapshots WHERE account = $1"),
                    &[&account],
                )
                .map_err(pg_err("reading a snapshot"))?
                .map(|row| row.get(0));
            let (covered, keys) = match &snapshot {
                None => (0i64, Vec::new()),
                Some(bytes) => {
                    let window = snapshot_key_window(bytes)?;
                    let covered = big(crate::codec::snapshot_seq(bytes)?);
                    let keys: Vec<Vec<u8>> = if window.count == 0 {
                        Vec::new()
                    } else {
                        tx.query(
                            &format!(
                                "SELECT body FROM {schema}.keys WHERE account = $1 AND seq >= $2 \
                                 AND seq <= $3 ORDER BY seq"
                            ),
                            &[&account, &big(window.first), &covered],
                        )
                        .map_err(pg_err("reading idempotency keys"))?
                        .iter()
                        .map(|row| row.get(0))
                        .collect()
                    };
                    (covered, keys)
                }
            };
            let records: Vec<(i64, Vec<u8>)> = tx
                .query(
                    &format!(
                        "SELECT seq, body FROM {schema}.records WHERE account = $1 \
                         AND seq > $2 ORDER BY seq"
                    ),
                    &[&account, &covered],
                )
                .map_err(pg_err("reading an account's records"))?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            tx.commit().map_err(pg_err("COMMIT"))?;
            Ok((snapshot, keys, records))
        })?;
        let limits = &self.inner.config.limits;
        let mut account = match snapshot {
            None => None,
            Some(bytes) => {
                let mut account = decode_account(&bytes)?;
                let window = snapshot_key_window(&bytes)?;
                let keys = keys
                    .iter()
                    .map(|k| decode_key(k))
                    .collect::<Result<Vec<_>, _>>()?;
                if keys.len() as u64 != window.count {
                    return Err(StoreError::Corrupt(
                        format!(
                            "account {}'s snapshot remembers {} idempotency keys from seq {}, \
                             but {} are stored",
                            id.0,
                            window.count,
                            window.first,
                            keys.len()
                        )
                        .into(),
                    ));
                }
                if window.count > 0 {
                    account
                        .restore_remembered(keys, window.untrimmed_from, limits)
                        .map_err(|e| StoreError::Corrupt(e.into()))?;
                }
                Some(account)
            }
        };
        for (seq, body) in records {
            let record = decode_record(&body)?;
            account = replay_one(account, &record, unbig(seq), limits)?;
        }
        if let Some(account) = account.as_mut() {
            self.inner.legs.give(account)?;
        }
        Ok(account)
    }

    fn legs(&self, id: AccountId) -> tally_core::LegTotals {
        self.inner.legs.get(id)
    }

    fn save(&self, account: &Account) -> Result<(), StoreError> {
        let schema = self.schema();
        let account = account.clone();
        self.read(move |client| {
            let mut tx = client.transaction().map_err(pg_err("BEGIN"))?;
            let id = big(account.id.0);
            let old: Option<i64> = tx
                .query_opt(
                    &format!("SELECT seq FROM {schema}.snapshots WHERE account = $1 FOR UPDATE"),
                    &[&id],
                )
                .map_err(pg_err("reading a snapshot's seq"))?
                .map(|row| row.get(0));
            let old_seq = old.map_or(0, unbig);
            if old.is_some() && old_seq >= account.last_seq() {
                return Ok(()); // never replace a newer snapshot
            }
            // Every new key in one statement (a round trip per key made a save of 10,000
            // accounts take 93 s).
            let mut seqs = Vec::new();
            let mut bodies = Vec::new();
            for key in account.remembered_after(old_seq) {
                seqs.push(big(key.seq()));
                bodies.push(encode_key(&key)?);
            }
            if !seqs.is_empty() {
                tx.execute(
                    &format!(
                        "INSERT INTO {schema}.keys (account, seq, body) \
                         SELECT $1, s, b FROM unnest($2::BIGINT[], $3::BYTEA[]) AS k(s, b) \
                         ON CONFLICT (account, seq) DO NOTHING"
                    ),
                    &[&id, &seqs, &bodies],
                )
                .map_err(pg_err("writing idempotency keys"))?;
            }
            tx.execute(
                &format!(
                    "INSERT INTO {schema}.snapshots (account, seq, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (account) DO UPDATE SET seq = EXCLUDED.seq, body = EXCLUDED.body"
                ),
                &[&id, &big(account.last_seq()), &encode_account(&account)?],
            )
            .map_err(pg_err("writing a snapshot"))?;
            let window = account.remembered_window();
            let keep_from = if window.count == 0 {
                account.last_seq().saturating_add(1)
            } else {
                window.first
            };
            tx.execute(
                &format!("DELETE FROM {schema}.keys WHERE account = $1 AND seq < $2"),
                &[&id, &big(keep_from)],
            )
            .map_err(pg_err("removing forgotten keys"))?;
            tx.commit().map_err(pg_err("COMMIT"))
        })
    }

    fn checkpoint(&self) -> Result<usize, StoreError> {
        // Snapshots are durable when saved and the journal is history: nothing to trim.
        Ok(0)
    }

    fn history(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let durable = self.inner.queue.lock().durable_seq;
        let schema = self.schema();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT seq, body FROM {schema}.records WHERE (account = $1 OR leg = $1) \
                         AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
                    ),
                    &[&big(id.0), &big(after_seq), &big(durable), &limit],
                )
                .map_err(pg_err("reading history"))?;
            rows.iter()
                .map(|row| {
                    Ok(HistoryEntry {
                        seq: unbig(row.get(0)),
                        record: decode_record(row.get(1))?,
                    })
                })
                .collect()
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError> {
        Ok(self.inner.usage.lock().report(query))
    }

    fn top_users(
        &self,
        query: &UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, UsageTotals)>, StoreError> {
        Ok(self.inner.usage.lock().top_users(query, n))
    }

    fn verify_trail(&self) -> Result<TrailReport, StoreError> {
        let durable = self.inner.queue.lock().durable_seq;
        let schema = self.schema();
        self.read(move |client| {
            let (mut prev, mut last) = (GENESIS, 0u64);
            let mut problems = Vec::new();
            let mut problems_total = 0u64;
            let mut note = |p: TrailProblem, problems: &mut Vec<TrailProblem>| {
                problems_total += 1;
                if problems.len() < TRAIL_PROBLEMS_MAX {
                    problems.push(p);
                }
            };
            let mut records = 0u64;
            scan(client, &schema, |seq, body, chain| {
                if seq > durable {
                    return Ok(false);
                }
                records += 1;
                if seq != last + 1 {
                    note(
                        TrailProblem::Missing {
                            after_seq: last,
                            next_seq: seq,
                        },
                        &mut problems,
                    );
                }
                let stored = chain_of(chain, seq)?;
                if chain_next(&prev, seq, body) != stored {
                    note(TrailProblem::Altered { seq }, &mut problems);
                }
                (prev, last) = (stored, seq);
                Ok(true)
            })?;
            Ok(TrailReport {
                pruned_through: 0,
                records,
                segments: 0,
                first_seq: u64::from(records > 0),
                last_seq: last,
                head: prev,
                torn_tail_bytes: 0,
                anchors_checked: 0,
                problems,
                problems_total,
            })
        })
    }

    fn trail_head(&self) -> (u64, Chain) {
        let q = self.inner.queue.lock();
        (q.durable_seq, q.durable_head)
    }

    fn close(&self) -> Result<(), StoreError> {
        {
            let mut q = self.inner.queue.lock();
            q.closing = true;
        }
        self.inner.wake.notify_all();
        let committer = self.inner.committer.lock().take();
        if let Some(handle) = committer {
            // Bounded: a database that stopped answering must not keep the process alive.
            let (tx, rx) = mpsc::channel();
            let joiner = std::thread::spawn(move || {
                let _ = tx.send(handle.join().is_ok());
            });
            match rx.recv_timeout(CLOSE_WAIT) {
                Ok(_) => {
                    let _ = joiner.join();
                }
                Err(_) => {
                    return Err(StoreError::Failed(
                        format!(
                            "the PostgreSQL committer did not finish within {} s",
                            CLOSE_WAIT.as_secs()
                        )
                        .into(),
                    ))
                }
            }
        }
        if let Some(reader) = self.inner.reader.lock().take() {
            reader.stop();
        }
        match self.inner.queue.lock().failed.clone() {
            Some(reason) => Err(StoreError::Failed(reason)),
            None => Ok(()),
        }
    }
}
