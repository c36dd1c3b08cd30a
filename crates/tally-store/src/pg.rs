//! The PostgreSQL store: the journal, snapshots, idempotency keys, received legs and history in
//! PostgreSQL, so that tally can run on an existing, replicated database, and several tally
//! nodes can share one (issue 16).
//!
//! - **Shards and leases.** Accounts are hashed into [`PgConfig::shards`] shards
//!   ([`shard_of`]); a node serves the shards whose lease it holds ([`lease`]: a row per shard
//!   with the owner and an epoch raised at every claim). A node claims its fair share (the
//!   shards over the live nodes) of those whose lease lapsed, at open and on every renewal
//!   tick, so a dead node's shards move to the others within the lease's length plus a tick.
//!   A request for an account of a shard this node does not serve is refused,
//!   [`StoreError::NotOwner`], with nothing read or written.
//! - **Append** is in memory and never waits: a record gets its sequence number and its
//!   shard's chain hash (the audit trail's BLAKE3 chain, one chain per shard) under one lock
//!   and joins a queue (at most [`PgConfig::queue_max`]; `Full` past it). Sequence numbers rise
//!   on this node and within each shard across nodes: the next one is above the last handed
//!   out, above the microseconds of the wall clock, and above every record of a shard when
//!   this node claims it, so a shard's records are in sequence order whoever wrote them.
//! - **Group commit**: one committer thread takes what is queued (at most
//!   [`PgConfig::group_max`] records) and writes it in one transaction: it locks the lease rows
//!   of the group's shards `FOR SHARE` and is refused if an epoch moved (this node was
//!   deposed), then `COPY … FROM STDIN BINARY` of the records and one upsert of the legs they
//!   carried, summed per (counterparty, shard). The durable point moves when `COMMIT` returns,
//!   so with `synchronous_commit = on` (and a synchronous standby, `remote_apply`, in a
//!   cluster) a record is acknowledged only once PostgreSQL has made it durable. A failed group
//!   fail-stops the store, as the file journal does: every waiter gets `StorageFailed`, every
//!   later append is refused, and the node serves nothing more; so does a renewal that finds a
//!   lease taken over (the node was frozen past its lease).
//! - **Load** waits until everything appended is committed, then reads the account's snapshot,
//!   the idempotency keys it remembers and its own records after it in one read-only
//!   transaction, replays them and takes in the legs it received.
//! - **Save** writes a snapshot, the keys made since the stored one and the removal of the keys
//!   it no longer remembers in one transaction, fenced like a group, never replacing a newer
//!   snapshot.
//! - **Legs** ([`legs`]): the shards this node serves are folded in memory at append; the
//!   others' sums are read from the `legs` table on every lease tick, so a leg another node
//!   acknowledged reaches a counterparty served here within a tick ([`PgConfig::renew_every`]).
//! - History is kept whole in `records` (nothing is trimmed); usage is folded in memory at
//!   append and rebuilt from the records at open.
//!
//! The `postgres` client blocks on a runtime of its own, which may not run on an async
//! worker: each connection lives on a thread of its own (the committer's, the lease keeper's,
//! and one for reads and saves), and callers hand it work over a channel.
//!
//! Tables, in the schema [`PgConfig::schema`] (so that several ledgers share a database):
//! `meta (key, value)` (the layout and the shard count), `leases (shard, node, epoch,
//! expires_at)`, `nodes (node, expires_at)`, `records (shard, seq, epoch, account, leg, kind,
//! body, chain)`, `legs (account, shard, credits, debits, last_seq, version)`, `snapshots
//! (account, seq, body)`, `keys (account, seq, body)`. Bodies are [`crate::codec`]'s encodings,
//! ids `BIGINT` (the `u64` bit for bit), leg sums `NUMERIC` (exact `u128`).

mod lease;
mod legs;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use postgres::{Client, NoTls};
use tokio::sync::watch;

use tally_core::{
    Account, AccountId, AccountSpec, Change, Leg, LegTotals, Limits, Record, UsageBook,
    UsageConfig, UsageQuery, UsageReport, UsageTotals,
};

use crate::codec::{
    decode_account, decode_key, decode_record, encode_account, encode_key, encode_record,
    snapshot_key_window,
};
use crate::journal::{chain_next, Chain, TrailProblem, TrailReport, GENESIS, TRAIL_PROBLEMS_MAX};
use crate::mem::replay_one;
use crate::{DurablePoint, HistoryEntry, Store, StoreError};

use lease::{shard_of_sql, shard_sql, Leases};
use legs::ShardLegs;

/// Records that may wait for their group's commit before appends are refused (`Full`).
pub const PG_QUEUE_MAX: usize = 262_144;
/// Records one group (one transaction) takes at most.
pub const PG_GROUP_MAX: usize = 8_192;
/// Shards accounts are hashed into by default.
pub const PG_SHARDS: u16 = 64;
/// The most shards a schema may have.
pub const PG_SHARDS_MAX: u16 = 4_096;
/// A lease's length by default: a dead node's shards move after at most this plus a tick.
pub const PG_LEASE_TTL: Duration = Duration::from_secs(5);
/// How often a node renews its leases, claims lapsed ones and reads other shards' legs.
pub const PG_RENEW_EVERY: Duration = Duration::from_secs(1);
/// Records read per round trip when the whole journal is walked (open, trail verification).
const SCAN_CHUNK: i64 = 10_000;
/// How long closing waits for the committer to write what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// The layout of the tables this version writes (`meta.layout`).
const LAYOUT: &str = "2";

/// The shard an account belongs to among `shards` (a fixed hash of its id: every node and
/// every version computes the same).
pub fn shard_of(id: AccountId, shards: u16) -> u16 {
    // SplitMix64's finalizer: ids chosen in sequence spread evenly.
    let mut z = id.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    u16::try_from(z % u64::from(shards.max(1))).unwrap_or(0)
}

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
    /// This node's name among the nodes sharing the schema (`tally` by default): 1 to 64 bytes
    /// of letters, digits, `-`, `_` and `.`. Each node needs its own; a node opened under the
    /// name of one still running takes its shards over at once and the other is deposed.
    pub node: String,
    /// Shards the schema's accounts are hashed into ([`PG_SHARDS`] by default, at most
    /// [`PG_SHARDS_MAX`]): fixed when the schema is created; opening with another count is
    /// refused.
    pub shards: u16,
    /// A lease's length ([`PG_LEASE_TTL`] by default; at least twice `renew_every`).
    pub lease_ttl: Duration,
    /// How often leases are renewed ([`PG_RENEW_EVERY`] by default; at least 10 ms).
    pub renew_every: Duration,
}

impl PgConfig {
    /// A store at `url` in `schema`, with the default limits and bounds, as node `tally`.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: schema.into(),
            limits: Limits::default(),
            queue_max: PG_QUEUE_MAX,
            group_max: PG_GROUP_MAX,
            node: "tally".to_owned(),
            shards: PG_SHARDS,
            lease_ttl: PG_LEASE_TTL,
            renew_every: PG_RENEW_EVERY,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        check_schema(&self.schema)?;
        let bad = |what: String| Err(StoreError::Io(what.into()));
        let node_ok = !self.node.is_empty()
            && self.node.len() <= 64
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !node_ok {
            return bad(format!(
                "node {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                self.node
            ));
        }
        if self.shards == 0 || self.shards > PG_SHARDS_MAX {
            return bad(format!("shards {}: use 1 to {PG_SHARDS_MAX}", self.shards));
        }
        if self.renew_every < Duration::from_millis(10) || self.lease_ttl < self.renew_every * 2 {
            return bad(format!(
                "lease_ttl {:?} and renew_every {:?}: renew at least every 10 ms and at least \
                 twice per lease",
                self.lease_ttl, self.renew_every
            ));
        }
        Ok(())
    }
}

/// What opening found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgRecovery {
    /// Records in the journal (every shard's).
    pub records: u64,
    /// The highest sequence number among them.
    pub last_seq: u64,
    /// Snapshots stored.
    pub snapshots: u64,
    /// Shards this node claimed at open.
    pub shards_claimed: u16,
}

/// A [`Store`] in PostgreSQL (module docs). Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    /// Dropped with the last handle: the committer then writes what is queued and stops, the
    /// lease keeper stops without releasing anything (its leases lapse, as a crash's would),
    /// and the connections close.
    _last: Arc<LastHandle>,
}

struct LastHandle(Arc<Inner>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.queue.lock().closing = true;
        self.0.wake.notify_all();
        if let Some(stop) = self.0.keeper_stop.lock().take() {
            let _ = stop.send(false);
        }
        drop(self.0.poller_stop.lock().take());
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
    legs: ShardLegs,
    leases: Leases,
    /// The epoch of the lease under which this node's copy of each account began (its load,
    /// or its opening): a copy from before the node let go of the shard and claimed it again
    /// may be stale, and is refused (its actor stops and the account reloads). One entry per
    /// account loaded or opened here since the store opened.
    origin: DashMap<AccountId, u64, foldhash::fast::RandomState>,
    reader: Mutex<Option<Worker>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// Stops the lease keeper: `true` to release the leases first (a clean close).
    keeper_stop: Mutex<Option<mpsc::Sender<bool>>>,
    poller: Mutex<Option<JoinHandle<()>>>,
    poller_stop: Mutex<Option<mpsc::Sender<()>>>,
    /// Held while sums read from the `legs` table go into the book with the shards held
    /// checked (a claim, a poll), so that a poll read before a claim cannot overwrite it.
    legs_apply: Mutex<()>,
    /// Test hook: the committer and the lease keeper stand still (a frozen process).
    frozen: AtomicBool,
    /// `Queue::durable_seq`, read without the lock by `raise_floor`.
    durable_hint: AtomicU64,
}

struct Queue {
    pending: VecDeque<Row>,
    /// The next sequence number to hand out at least.
    next_seq: u64,
    /// Each shard's chain hash of its last record handed out, and of its last committed one.
    heads: Vec<Chain>,
    durable_heads: Vec<Chain>,
    /// The last record handed out, and the last committed one.
    last_appended: u64,
    durable_seq: u64,
    failed: Option<Arc<str>>,
    closing: bool,
}

/// One record as the `records` table holds it.
struct Row {
    shard: i16,
    seq: i64,
    epoch: i64,
    account: i64,
    /// The leg it carries: to whom, and what.
    leg: Option<(AccountId, Leg)>,
    kind: i16,
    body: Vec<u8>,
    chain: Chain,
}

/// The spec of a record stored as an opening (`KIND_OPENED`).
fn spec_of_opening(record: Record) -> Result<AccountSpec, StoreError> {
    match record.change {
        Change::Opened { spec } => Ok(spec),
        _ => Err(StoreError::Corrupt(
            "a record marked as an opening is another change".into(),
        )),
    }
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

/// Microseconds of the wall clock (the floor of the next sequence number).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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

/// A connection for one of the store's threads. Its transactions are bounded by the lease's
/// length (`idle_in_transaction_session_timeout`, and for the committer `statement_timeout`
/// too): a node frozen inside a transaction lets go of the lease rows it locked, and the legs
/// poller may count on a group's transaction ending within it. The committer's commits are
/// durable before they return (`synchronous_commit = on`, whatever the server's default).
fn session(config: &PgConfig, name: &str, committer: bool) -> Result<Worker, StoreError> {
    let worker = Worker::connect(&config.url, name)?;
    let ms = config.lease_ttl.as_millis();
    let mut sql = format!("SET idle_in_transaction_session_timeout = {ms}");
    if committer {
        sql.push_str(&format!(
            "; SET statement_timeout = {ms}; SET synchronous_commit = on"
        ));
    }
    worker.call(move |client| {
        client
            .batch_execute(&sql)
            .map_err(pg_err("setting the session's bounds"))
    })?;
    Ok(worker)
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

/// Creates the schema's tables if missing (under a transaction-level advisory lock, so that
/// nodes opening at once do not race) and refuses a schema of another layout or shard count.
fn create_tables(client: &mut Client, s: &str, shards: u16) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(pg_err("BEGIN"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('tally:' || $1, 0))",
        &[&s],
    )
    .map_err(pg_err("locking the schema's creation"))?;
    let old_layout: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'records') \
             AND NOT EXISTS (SELECT 1 FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name = 'meta')",
            &[&s],
        )
        .map_err(pg_err("reading the schema's layout"))?
        .get(0);
    if old_layout {
        return Err(StoreError::Corrupt(
            format!(
                "schema {s} holds an earlier tally's tables (one writer, no shards): open a new \
                 schema"
            )
            .into(),
        ));
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.leases (
             shard SMALLINT PRIMARY KEY, node TEXT, epoch BIGINT NOT NULL,
             expires_at TIMESTAMPTZ NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.nodes (
             node TEXT PRIMARY KEY, expires_at TIMESTAMPTZ NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.records (
             shard SMALLINT NOT NULL, seq BIGINT NOT NULL, epoch BIGINT NOT NULL,
             account BIGINT NOT NULL, leg BIGINT, kind SMALLINT NOT NULL, body BYTEA NOT NULL,
             chain BYTEA NOT NULL, PRIMARY KEY (shard, seq));
         CREATE INDEX IF NOT EXISTS records_by_account ON {s}.records (account, seq);
         CREATE INDEX IF NOT EXISTS records_by_leg ON {s}.records (leg, seq)
             WHERE leg IS NOT NULL;
         CREATE INDEX IF NOT EXISTS records_by_kind ON {s}.records (kind, seq)
             WHERE kind <> 0;
         CREATE SEQUENCE IF NOT EXISTS {s}.legs_version;
         CREATE TABLE IF NOT EXISTS {s}.legs (
             account BIGINT NOT NULL, shard SMALLINT NOT NULL, to_shard SMALLINT NOT NULL,
             credits NUMERIC(40, 0) NOT NULL, debits NUMERIC(40, 0) NOT NULL,
             last_seq BIGINT NOT NULL, version BIGINT NOT NULL,
             PRIMARY KEY (account, shard)) WITH (fillfactor = 50);
         CREATE INDEX IF NOT EXISTS legs_by_shard ON {s}.legs (shard);
         CREATE INDEX IF NOT EXISTS legs_to_shard ON {s}.legs (to_shard);
         CREATE TABLE IF NOT EXISTS {s}.snapshots (
             account BIGINT PRIMARY KEY, seq BIGINT NOT NULL, body BYTEA NOT NULL);
         CREATE TABLE IF NOT EXISTS {s}.keys (
             account BIGINT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL,
             PRIMARY KEY (account, seq));"
    ))
    .map_err(pg_err("creating the tables"))?;
    tx.execute(
        &format!(
            "INSERT INTO {s}.meta (key, value) VALUES ('layout', $1), ('shards', $2) \
             ON CONFLICT (key) DO NOTHING"
        ),
        &[&LAYOUT, &shards.to_string()],
    )
    .map_err(pg_err("writing the schema's layout"))?;
    let meta: BTreeMap<String, String> = tx
        .query(&format!("SELECT key, value FROM {s}.meta"), &[])
        .map_err(pg_err("reading the schema's layout"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if meta.get("layout").map(String::as_str) != Some(LAYOUT) {
        return Err(StoreError::Corrupt(
            format!(
                "schema {s} has layout {:?}; this tally reads layout {LAYOUT}",
                meta.get("layout")
            )
            .into(),
        ));
    }
    let stored = meta.get("shards").cloned().unwrap_or_default();
    if stored != shards.to_string() {
        return Err(StoreError::Io(
            format!(
                "schema {s} was created with {stored} shards; this node is configured with \
                 {shards}: the count is fixed when the schema is created"
            )
            .into(),
        ));
    }
    tx.execute(
        &format!(
            "INSERT INTO {s}.leases (shard, node, epoch, expires_at) \
             SELECT g, NULL, 0, '-infinity' FROM generate_series(0, $1 - 1) AS g \
             ON CONFLICT (shard) DO NOTHING"
        ),
        &[&i32::from(shards)],
    )
    .map_err(pg_err("creating the leases"))?;
    tx.commit().map_err(pg_err("COMMIT"))
}

/// Walks every record in (shard, sequence) order, `SCAN_CHUNK` at a time, calling
/// `each(shard, seq, body, chain)`.
fn scan(
    client: &mut Client,
    schema: &str,
    mut each: impl FnMut(u16, u64, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT shard, seq, body, chain FROM {schema}.records WHERE (shard, seq) > ($1, $2) \
         ORDER BY shard, seq LIMIT $3"
    );
    let (mut shard, mut after) = (-1i16, i64::MIN);
    loop {
        let rows = client
            .query(&sql, &[&shard, &after, &SCAN_CHUNK])
            .map_err(pg_err("reading the journal"))?;
        let n = rows.len();
        for row in rows {
            let (sh, seq): (i16, i64) = (row.get(0), row.get(1));
            each(shard_of_sql(sh)?, unbig(seq), row.get(2), row.get(3))?;
            (shard, after) = (sh, seq);
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

/// One digest of every shard's chain head (shards with no record left out), in shard order:
/// what [`Store::trail_head`] publishes and [`Store::verify_trail`] recomputes.
fn heads_digest(heads: impl Iterator<Item = (u16, Chain)>) -> Chain {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tally shards");
    for (shard, head) in heads.filter(|(_, h)| *h != GENESIS) {
        hasher.update(&shard.to_be_bytes());
        hasher.update(&head);
    }
    *hasher.finalize().as_bytes()
}

/// A `NUMERIC` sum read as text, back as the `u128` it is.
fn sum_of(text: &str) -> Result<u128, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("a leg sum {text:?} is not a u128").into()))
}

impl PgStore {
    /// What is durable of `id` (its snapshot, the idempotency keys it remembers, its records
    /// since, the legs to it), read in one snapshot of the database; no lease is checked.
    fn read_durable(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
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
            crate::legs::give(account, &self.inner.legs.get(id))?;
        }
        Ok(account)
    }

    /// Opens (creating its tables if missing) the store `config` names: reads the journal once
    /// to rebuild the usage aggregates, claims this node's fair share of the shards whose
    /// lease lapsed, then starts the committer and the lease keeper. A node that claims no
    /// shard opens too (it serves none until one lapses).
    pub fn open(config: PgConfig) -> Result<(PgStore, PgRecovery), StoreError> {
        config.check()?;
        let reader = Worker::connect(&config.url, "tally-pg-reader")?;
        let schema = config.schema.clone();
        let shards = config.shards;
        let (usage, recovery) = reader.call(move |client| {
            create_tables(client, &schema, shards)?;
            let mut usage = UsageBook::unsaved(UsageConfig::default());
            let mut recovery = PgRecovery::default();
            scan(client, &schema, |_, seq, body, _| {
                usage.fold(&decode_record(body)?);
                recovery.records += 1;
                recovery.last_seq = recovery.last_seq.max(seq);
                Ok(())
            })?;
            let snapshots: i64 = client
                .query_one(&format!("SELECT count(*) FROM {schema}.snapshots"), &[])
                .map_err(pg_err("counting snapshots"))?
                .get(0);
            recovery.snapshots = unbig(snapshots);
            Ok((usage, recovery))
        })?;
        let (durable, _) = watch::channel(DurablePoint {
            seq: recovery.last_seq,
            ..DurablePoint::default()
        });
        let n = usize::from(config.shards);
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                next_seq: recovery.last_seq + 1,
                heads: vec![GENESIS; n],
                durable_heads: vec![GENESIS; n],
                last_appended: recovery.last_seq,
                durable_seq: recovery.last_seq,
                failed: None,
                closing: false,
            }),
            wake: Condvar::new(),
            committed: Condvar::new(),
            durable,
            usage: Mutex::new(usage),
            legs: ShardLegs::default(),
            leases: Leases::new(config.shards, config.lease_ttl),
            origin: DashMap::default(),
            reader: Mutex::new(Some(reader)),
            committer: Mutex::new(None),
            keeper: Mutex::new(None),
            keeper_stop: Mutex::new(None),
            poller: Mutex::new(None),
            poller_stop: Mutex::new(None),
            legs_apply: Mutex::new(()),
            frozen: AtomicBool::new(false),
            durable_hint: AtomicU64::new(recovery.last_seq),
            config,
        });
        // Every other shard's legs first, then this node's claims (which read their own), up
        // to its fair share: waiting for shards whose lease has not lapsed yet (a restart
        // after a crash) or that other nodes let go of on their next tick (a node joining), at
        // most a lease and two ticks; past that it opens with what it has.
        let poller = session(&inner.config, "tally-pg-legs-connect", false)?;
        let mut poll = LegsPoll::default();
        read_other_legs(&inner, &poller, &mut poll, true)?;
        let keeper = session(&inner.config, "tally-pg-leases-connect", false)?;
        let started = Instant::now();
        let patience = inner.config.lease_ttl + inner.config.renew_every * 2;
        let mut claimed = 0u16;
        loop {
            let tick = keep_leases(&inner, &keeper)?;
            claimed = claimed.saturating_add(tick.claimed);
            if tick.held >= usize::from(tick.share) || started.elapsed() >= patience {
                break;
            }
            std::thread::sleep(inner.config.renew_every);
        }
        let writer = session(&inner.config, "tally-pg-committer-connect", true)?;
        let for_committer = inner.clone();
        let committer = std::thread::Builder::new()
            .name("tally-pg-committer".to_owned())
            .spawn(move || commit_loop(&for_committer, writer))
            .map_err(|e| StoreError::Io(format!("spawning the committer: {e}").into()))?;
        *inner.committer.lock() = Some(committer);
        let (stop_tx, stop_rx) = mpsc::channel();
        *inner.keeper_stop.lock() = Some(stop_tx);
        let for_keeper = inner.clone();
        let keeper_thread = std::thread::Builder::new()
            .name("tally-pg-leases".to_owned())
            .spawn(move || keeper_loop(&for_keeper, keeper, stop_rx))
            .map_err(|e| StoreError::Io(format!("spawning the lease keeper: {e}").into()))?;
        *inner.keeper.lock() = Some(keeper_thread);
        let (stop_tx, stop_rx) = mpsc::channel();
        *inner.poller_stop.lock() = Some(stop_tx);
        let for_poller = inner.clone();
        let poller_thread = std::thread::Builder::new()
            .name("tally-pg-legs".to_owned())
            .spawn(move || poller_loop(&for_poller, poller, stop_rx, poll))
            .map_err(|e| StoreError::Io(format!("spawning the legs poller: {e}").into()))?;
        *inner.poller.lock() = Some(poller_thread);
        let last = Arc::new(LastHandle(inner.clone()));
        let recovery = PgRecovery {
            shards_claimed: claimed,
            ..recovery
        };
        Ok((PgStore { inner, _last: last }, recovery))
    }

    /// The shards this node serves now, with the epochs it holds them at.
    pub fn shards_held(&self) -> Vec<(u16, u64)> {
        self.inner.leases.held()
    }

    /// The shard `id` belongs to in this store.
    pub fn shard_of(&self, id: AccountId) -> u16 {
        shard_of(id, self.inner.config.shards)
    }

    /// Test hook (feature `testing`): the committer and the lease keeper stand still while
    /// `frozen`, as in a process stopped by SIGSTOP (appends are still queued).
    #[cfg(feature = "testing")]
    pub fn freeze(&self, frozen: bool) {
        self.inner.frozen.store(frozen, Ordering::Release);
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
        let target = q.last_appended;
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

impl Inner {
    /// Keeps every sequence number this node hands out above `seq`, a number an account's
    /// state here reflects (a record another node wrote: the account's last record before
    /// this node claimed its shard, or the newest leg another shard carried to it), so the
    /// account's next record follows it whatever the nodes' clocks say. When nothing is
    /// waiting for its commit, the durable point moves up to it too (the numbers skipped are
    /// never used), so a caller waiting for what that state reflects is answered at once.
    fn raise_floor(&self, seq: u64) {
        // Covered by the durable point: below the next number too, and nothing to wait for.
        if seq <= self.durable_hint.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.queue.lock();
        self.raise_locked(&mut q, seq);
    }

    /// [`Inner::raise_floor`] under the queue's lock.
    fn raise_locked(&self, q: &mut Queue, seq: u64) {
        q.next_seq = q.next_seq.max(seq.saturating_add(1));
        if q.pending.is_empty() && q.durable_seq >= q.last_appended && q.failed.is_none() {
            self.set_durable(q, q.next_seq - 1);
        }
    }

    /// Moves the durable point to `seq` (never back) and wakes whoever waits for it.
    fn set_durable(&self, q: &mut Queue, seq: u64) {
        q.durable_seq = q.durable_seq.max(seq);
        let point = q.durable_seq;
        self.durable_hint.store(point, Ordering::Release);
        self.durable.send_modify(|d| d.seq = d.seq.max(point));
        self.committed.notify_all();
    }

    /// Refuses unless this node's copy of `id` began under the lease it holds now (`epoch`).
    fn current(&self, id: AccountId, shard: u16, epoch: u64) -> Result<(), StoreError> {
        match self.origin.get(&id).map(|e| *e) {
            Some(began) if began == epoch => Ok(()),
            began => Err(StoreError::NotOwner {
                shard,
                reason: format!(
                    "this node's copy of {id} is from lease epoch {}, the node now holds epoch \
                     {epoch}: the account must be read again",
                    began.unwrap_or(0)
                )
                .into(),
            }),
        }
    }
}

/// Fail-stops the store: every waiter gets `reason`, nothing more is appended or served.
fn fail_stop(inner: &Inner, reason: Arc<str>) {
    tracing::error!(%reason, "the PostgreSQL store fail-stops");
    inner.leases.drop_all();
    let mut q = inner.queue.lock();
    if q.failed.is_none() {
        q.failed = Some(reason.clone());
        q.pending.clear();
        inner.durable.send_modify(|d| d.failed = Some(reason));
    }
    inner.committed.notify_all();
    inner.wake.notify_all();
}

/// What one tick of the lease keeper did.
struct Tick {
    /// Shards claimed.
    claimed: u16,
    /// Shards held after it.
    held: usize,
    /// This node's fair share.
    share: u16,
}

/// One tick of the lease keeper's work: announces the node, renews what it holds
/// (fail-stopping the store if any was taken over), lets go of shards over its fair share and
/// claims lapsed ones up to it, each made ready (its chain head, its sequence floor, the legs
/// to and from it) before it is served.
fn keep_leases(inner: &Inner, keeper: &Worker) -> Result<Tick, StoreError> {
    let config = &inner.config;
    let (schema, node, ttl, shards) = (
        config.schema.clone(),
        config.node.clone(),
        config.lease_ttl,
        config.shards,
    );
    let holding = inner.leases.held();
    let sent = Instant::now();
    let (renewed, share) = {
        let (schema, node, holding) = (schema.clone(), node.clone(), holding.clone());
        keeper.call(move |client| {
            lease::heartbeat(client, &schema, &node, ttl)?;
            let renewed = lease::renew(client, &schema, &node, &holding, ttl)?;
            let share = lease::fair_share(client, &schema, shards)?;
            Ok((renewed, share))
        })?
    };
    let lost: Vec<u16> = holding
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !renewed.contains(s))
        .collect();
    if !lost.is_empty() {
        fail_stop(
            inner,
            format!(
                "node {node} lost the lease of shard(s) {lost:?} to another node (it was \
                 frozen or cut off past its lease): it serves nothing more until reopened"
            )
            .into(),
        );
        return Err(StoreError::NotOwner {
            shard: lost[0],
            reason: "taken over".into(),
        });
    }
    for shard in &renewed {
        inner.leases.extend(*shard, sent);
    }
    if renewed.len() > usize::from(share) {
        // More than the fair share (a node joined): the highest shards go.
        let mut going = renewed;
        going.sort_unstable();
        let going = going.split_off(usize::from(share));
        release_shards(inner, keeper, &going)?;
        return Ok(Tick {
            claimed: 0,
            held: inner.leases.held().len(),
            share,
        });
    }
    let want = share.saturating_sub(u16::try_from(renewed.len()).unwrap_or(u16::MAX));
    if want == 0 {
        return Ok(Tick {
            claimed: 0,
            held: renewed.len(),
            share,
        });
    }
    let sent = Instant::now();
    let claimed = {
        let (schema, node) = (schema.clone(), node.clone());
        keeper.call(move |client| lease::claim(client, &schema, &node, want, &holding, ttl))?
    };
    for (shard, epoch) in &claimed {
        let (schema, shard) = (schema.clone(), *shard);
        let (tail, legs) = keeper.call(move |client| {
            let tail = lease::tail(client, &schema, shard)?;
            // The legs its records carried, and the legs carried to its accounts.
            let legs = read_legs(
                client,
                &format!(
                    "SELECT account, shard, credits::TEXT, debits::TEXT, last_seq, version \
                     FROM {schema}.legs WHERE shard = $1 OR to_shard = $1"
                ),
                &shard_sql(shard),
            )?;
            Ok((tail, legs))
        })?;
        // Under the legs' lock: a poll read before the claim does not overwrite these.
        let _legs = inner.legs_apply.lock();
        let held = inner.leases.held();
        for (id, from, totals, _) in legs {
            // The sums of shards this node serves are its own, ahead of the table.
            if from == shard || !held.iter().any(|(s, _)| *s == from) {
                inner.legs.set(id, from, totals);
            }
        }
        {
            let mut guard = inner.queue.lock();
            let q = &mut *guard;
            let (last, chain) = match &tail {
                None => (0, GENESIS),
                Some((seq, bytes)) => (*seq, chain_of(bytes, *seq)?),
            };
            let i = usize::from(shard);
            if let (Some(head), Some(durable)) = (q.heads.get_mut(i), q.durable_heads.get_mut(i)) {
                *head = chain;
                *durable = chain;
            }
            inner.raise_locked(q, last);
        }
        inner.leases.hold(shard, *epoch, sent);
        tracing::info!(node = %inner.config.node, shard, epoch, "claimed a shard");
    }
    Ok(Tick {
        claimed: u16::try_from(claimed.len()).unwrap_or(u16::MAX),
        held: inner.leases.held().len(),
        share,
    })
}

/// Lets go of `shards` for another node to claim: they stop being served (under the queue's
/// lock, so no record of theirs is queued after), the records queued so far are committed
/// (waiting at most half a tick: the renewal of the others must not be late), then their
/// leases are released. If the queue is not committed in time they are left unserved and
/// unrenewed: they lapse, and the fence keeps a late group out once another node claims
/// them. The accounts' actors here stop on their next turn (the store refuses them), and a
/// copy of one is never used again (see `Inner::origin`).
fn release_shards(inner: &Inner, keeper: &Worker, shards: &[u16]) -> Result<(), StoreError> {
    let (going, target) = {
        let q = inner.queue.lock();
        let going: Vec<(u16, u64)> = shards
            .iter()
            .filter_map(|s| inner.leases.stop_serving(*s).map(|e| (*s, e)))
            .collect();
        (going, q.last_appended)
    };
    {
        let wait = inner.config.renew_every / 2;
        let started = Instant::now();
        let mut q = inner.queue.lock();
        while q.durable_seq < target {
            if let Some(reason) = &q.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                tracing::warn!(shards = ?going, "shards let go of without release: their queue was not committed in time");
                return Ok(());
            }
            inner.committed.wait_for(&mut q, left);
        }
    }
    let (schema, node) = (inner.config.schema.clone(), inner.config.node.clone());
    let released = going.clone();
    keeper.call(move |client| lease::release_some(client, &schema, &node, &released))?;
    tracing::info!(node = %inner.config.node, shards = ?going, "let go of shards over the fair share");
    Ok(())
}

/// One row of the `legs` table: to whom, from which shard, the sums, its version.
type LegRow = (AccountId, u16, LegTotals, i64);

fn read_legs(
    client: &mut Client,
    sql: &str,
    param: &(dyn postgres::types::ToSql + Sync),
) -> Result<Vec<LegRow>, StoreError> {
    client
        .query(sql, &[param])
        .map_err(pg_err("reading legs"))?
        .iter()
        .map(|row| {
            let totals = LegTotals {
                credits: sum_of(row.get(2))?,
                debits: sum_of(row.get(3))?,
                last_seq: unbig(row.get(4)),
            };
            Ok((
                AccountId(unbig(row.get(0))),
                shard_of_sql(row.get(1))?,
                totals,
                row.get(5),
            ))
        })
        .collect()
}

/// Reads the legs other shards' records carried (those whose version may be newer than the
/// last read's, or all of them when `full`; `version` has no index, so that a group's upsert
/// of a counterparty's row is a heap-only update: a read scans the table, one row per
/// counterparty and source shard) into the book, skipping the shards this node
/// serves (their sums are its own). A version is taken when its group's transaction writes
/// it and seen when that commits, so a read starts again from the newest version seen by a
/// read older than the longest a group's transaction may take (`statement_timeout` and
/// `idle_in_transaction_session_timeout` are the lease's length on the committer's session).
fn read_other_legs(
    inner: &Inner,
    poller: &Worker,
    poll: &mut LegsPoll,
    full: bool,
) -> Result<(), StoreError> {
    let schema = inner.config.schema.clone();
    let from = if full { 0 } else { poll.watermark };
    let rows = poller.call(move |client| {
        read_legs(
            client,
            &format!(
                "SELECT account, shard, credits::TEXT, debits::TEXT, last_seq, version \
                 FROM {schema}.legs WHERE version > $1"
            ),
            &from,
        )
    })?;
    let now = Instant::now();
    {
        let _legs = inner.legs_apply.lock();
        let held = inner.leases.held();
        for (id, shard, totals, version) in rows {
            poll.seen = poll.seen.max(version);
            if !held.iter().any(|(s, _)| *s == shard) {
                inner.legs.set(id, shard, totals);
            }
        }
    }
    poll.reads.push_back((now, poll.seen));
    let horizon = inner.config.lease_ttl + inner.config.renew_every;
    while let Some(&(at, seen)) = poll.reads.front() {
        if now.saturating_duration_since(at) < horizon {
            break;
        }
        poll.watermark = seen;
        poll.reads.pop_front();
    }
    Ok(())
}

/// Where the legs poller is.
#[derive(Default)]
struct LegsPoll {
    /// The newest version seen.
    seen: i64,
    /// Reads not yet past the horizon: when, and the newest version seen by then.
    reads: VecDeque<(Instant, i64)>,
    /// Reads start after this version.
    watermark: i64,
    /// Reads since the last full one.
    since_full: u32,
}

/// Every this many polls the poller reads all of the other shards' legs again (a backstop).
const FULL_LEGS_EVERY: u32 = 60;

/// The lease keeper: every `renew_every`, renews, releases and claims, until told to stop
/// (releasing the leases on a clean close).
fn keeper_loop(inner: &Inner, keeper: Worker, stop: mpsc::Receiver<bool>) {
    let every = inner.config.renew_every;
    let release = loop {
        match stop.recv_timeout(every) {
            Ok(release) => break release,
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if inner.frozen.load(Ordering::Acquire) || inner.queue.lock().failed.is_some() {
            continue;
        }
        if let Err(e) = keep_leases(inner, &keeper) {
            tracing::warn!(error = %e, "lease tick failed");
        }
    };
    if release {
        let holding = inner.leases.held();
        inner.leases.drop_all();
        let (schema, node) = (inner.config.schema.clone(), inner.config.node.clone());
        if let Err(e) = keeper.call(move |client| lease::release(client, &schema, &node, &holding))
        {
            tracing::warn!(error = %e, "releasing the leases failed; they lapse by themselves");
        }
    }
    keeper.stop();
}

/// The legs poller: every `renew_every`, reads what other shards' records carried, on a
/// connection of its own (a large read never delays a renewal).
fn poller_loop(inner: &Inner, poller: Worker, stop: mpsc::Receiver<()>, mut poll: LegsPoll) {
    let every = inner.config.renew_every;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if inner.frozen.load(Ordering::Acquire) || inner.queue.lock().failed.is_some() {
            continue;
        }
        poll.since_full += 1;
        let full = poll.since_full >= FULL_LEGS_EVERY;
        if full {
            poll.since_full = 0;
        }
        if let Err(e) = read_other_legs(inner, &poller, &mut poll, full) {
            tracing::warn!(error = %e, "reading other shards' legs failed");
        }
    }
    poller.stop();
}

/// The committer: takes what is queued and commits it, one transaction a group, until the
/// store closes; the first failure fail-stops the store.
fn commit_loop(inner: &Inner, writer: Worker) {
    let schema = inner.config.schema.clone();
    let shard_count = inner.config.shards;
    loop {
        let group: Vec<Row> = {
            let mut q = inner.queue.lock();
            loop {
                while q.pending.is_empty() && !q.closing {
                    inner.wake.wait(&mut q);
                }
                if !inner.frozen.load(Ordering::Acquire) {
                    break;
                }
                parking_lot::MutexGuard::unlocked(&mut q, || {
                    std::thread::sleep(Duration::from_millis(5));
                });
            }
            if q.pending.is_empty() || q.failed.is_some() {
                break;
            }
            let n = q.pending.len().min(inner.config.group_max.max(1));
            q.pending.drain(..n).collect()
        };
        let Some(last) = group.last() else { continue };
        let last_seq = unbig(last.seq);
        let mut heads: BTreeMap<i16, Chain> = BTreeMap::new();
        for row in &group {
            heads.insert(row.shard, row.chain);
        }
        let schema = schema.clone();
        let written = writer.call(move |client| write_group(client, &schema, shard_count, &group));
        match written {
            Ok(()) => {
                let mut guard = inner.queue.lock();
                let q = &mut *guard;
                for (shard, chain) in heads {
                    let i = usize::try_from(shard).unwrap_or(usize::MAX);
                    if let Some(head) = q.durable_heads.get_mut(i) {
                        *head = chain;
                    }
                }
                // With nothing more appended, the numbers skipped after it are never used.
                let point = if q.pending.is_empty() && q.last_appended == last_seq {
                    q.next_seq - 1
                } else {
                    last_seq
                };
                inner.set_durable(q, point);
            }
            Err(e) => {
                fail_stop(inner, format!("committing to PostgreSQL: {e}").into());
                break;
            }
        }
    }
    writer.stop();
}

/// Legs of one group summed per (counterparty, source shard, counterparty's shard): (credits,
/// debits, newest seq).
type GroupLegs = BTreeMap<(i64, i16, i16), (u128, u128, i64)>;

fn write_group(
    client: &mut Client,
    schema: &str,
    shard_count: u16,
    group: &[Row],
) -> Result<(), StoreError> {
    let mut shards: std::collections::BTreeSet<(i16, i64)> = std::collections::BTreeSet::new();
    let mut legs = GroupLegs::new();
    for row in group {
        shards.insert((row.shard, row.epoch));
        if let Some((to, leg)) = row.leg {
            let to_shard = shard_sql(shard_of(to, shard_count));
            let sum = legs
                .entry((big(to.0), row.shard, to_shard))
                .or_insert((0, 0, 0));
            let (credit, debit) = match leg {
                Leg::Credit(_, a) => (a.wide(), 0),
                Leg::Debit(_, a) => (0, a.wide()),
            };
            // Fewer than 2^64 legs below 2^63 each: a sum past u128 is damage.
            sum.0 = sum.0.checked_add(credit).ok_or_else(leg_overflow)?;
            sum.1 = sum.1.checked_add(debit).ok_or_else(leg_overflow)?;
            sum.2 = sum.2.max(row.seq);
        }
    }
    let fenced: Vec<(u16, u64)> = shards
        .iter()
        .map(|(s, e)| Ok((shard_of_sql(*s)?, unbig(*e))))
        .collect::<Result<_, StoreError>>()?;
    let mut tx = client.transaction().map_err(pg_err("BEGIN"))?;
    lease::fence(&mut tx, schema, &fenced)?;
    {
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.records (shard, seq, epoch, account, leg, kind, body, chain) \
                 FROM STDIN BINARY"
            ))
            .map_err(pg_err("COPY"))?;
        let types = [
            Type::INT2,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT2,
            Type::BYTEA,
            Type::BYTEA,
        ];
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        for row in group {
            let leg = row.leg.map(|(to, _)| big(to.0));
            writer
                .write(&[
                    &row.shard,
                    &row.seq,
                    &row.epoch,
                    &row.account,
                    &leg,
                    &row.kind,
                    &row.body,
                    &row.chain.as_slice(),
                ])
                .map_err(pg_err("COPY row"))?;
        }
        writer.finish().map_err(pg_err("COPY end"))?;
    }
    if !legs.is_empty() {
        let mut accounts = Vec::with_capacity(legs.len());
        let mut from = Vec::with_capacity(legs.len());
        let mut credits = Vec::with_capacity(legs.len());
        let mut debits = Vec::with_capacity(legs.len());
        let mut last = Vec::with_capacity(legs.len());
        let mut to = Vec::with_capacity(legs.len());
        for ((account, shard, to_shard), (c, d, seq)) in legs {
            accounts.push(account);
            from.push(shard);
            to.push(to_shard);
            credits.push(c.to_string());
            debits.push(d.to_string());
            last.push(seq);
        }
        tx.execute(
            &format!(
                "INSERT INTO {schema}.legs AS l \
                     (account, shard, to_shard, credits, debits, last_seq, version) \
                 SELECT a, sh, ts, c::NUMERIC, d::NUMERIC, ls, nextval('{schema}.legs_version') \
                 FROM unnest($1::BIGINT[], $2::SMALLINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], \
                     $6::SMALLINT[]) AS t(a, sh, c, d, ls, ts) \
                 ON CONFLICT (account, shard) DO UPDATE SET \
                     credits = l.credits + EXCLUDED.credits, debits = l.debits + EXCLUDED.debits, \
                     last_seq = GREATEST(l.last_seq, EXCLUDED.last_seq), version = EXCLUDED.version"
            ),
            &[&accounts, &from, &credits, &debits, &last, &to],
        )
        .map_err(pg_err("adding the group's legs"))?;
    }
    tx.commit().map_err(pg_err("COMMIT"))
}

fn leg_overflow() -> StoreError {
    StoreError::Corrupt("a group's legs sum past u128: the records are damaged".into())
}

impl Store for PgStore {
    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        let shard = self.shard_of(record.account);
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
            // Under the queue's lock: a shard let go of stops serving under it too, so no
            // record of it is queued after the release waited for the queue.
            let epoch = self.inner.leases.serving(shard)?;
            if kind == KIND_OPENED {
                self.inner.origin.insert(record.account, epoch);
            } else {
                self.inner.current(record.account, shard, epoch)?;
            }
            if q.pending.len() >= self.inner.config.queue_max {
                return Err(StoreError::Full {
                    queued: q.pending.len(),
                    limit: self.inner.config.queue_max,
                });
            }
            let seq = q.next_seq.max(now_micros());
            let Some(head) = q.heads.get_mut(usize::from(shard)) else {
                return Err(StoreError::NotOwner {
                    shard,
                    reason: "no such shard".into(),
                });
            };
            let chain = chain_next(head, seq, &body);
            *head = chain;
            let leg = tally_core::legs::leg_of(record);
            q.pending.push_back(Row {
                shard: shard_sql(shard),
                seq: big(seq),
                epoch: big(epoch),
                account: big(record.account.0),
                leg,
                kind,
                body,
                chain,
            });
            q.next_seq = seq + 1;
            q.last_appended = seq;
            if let Some((to, leg)) = leg {
                self.inner.legs.fold(to, shard, leg, seq);
            }
            seq
        };
        self.inner.wake.notify_one();
        self.inner.usage.lock().fold(record);
        Ok(seq)
    }

    fn durable(&self) -> watch::Receiver<DurablePoint> {
        self.inner.durable.subscribe()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError> {
        self.records_of_kind(KIND_OPENED)?
            .into_iter()
            .map(|record| Ok((record.account, spec_of_opening(record)?)))
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
        let shard = self.shard_of(id);
        let epoch = self.inner.leases.serving(shard)?;
        self.wait_all_committed()?;
        let mut account = self.read_durable(id)?;
        // Still the lease it was read under: otherwise another node may have written the
        // account meanwhile.
        if self.inner.leases.serving(shard)? != epoch {
            return Err(StoreError::NotOwner {
                shard,
                reason: "its lease moved while the account was read".into(),
            });
        }
        self.inner.origin.insert(id, epoch);
        if let Some(account) = account.as_mut() {
            self.inner.raise_floor(account.last_seq());
        }
        Ok(account)
    }

    fn peek(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.read_durable(id)
    }

    fn legs(&self, id: AccountId) -> Result<LegTotals, StoreError> {
        let shard = self.shard_of(id);
        let epoch = self.inner.leases.serving(shard)?;
        self.inner.current(id, shard, epoch)?;
        let legs = self.inner.legs.get(id);
        self.inner.raise_floor(legs.last_seq);
        Ok(legs)
    }

    fn shares_directory(&self) -> bool {
        true
    }

    fn find_account(&self, id: AccountId) -> Result<Option<AccountSpec>, StoreError> {
        let schema = self.schema();
        let body: Option<Vec<u8>> = self.read(move |client| {
            Ok(client
                .query_opt(
                    &format!(
                        "SELECT body FROM {schema}.records WHERE account = $1 AND kind = $2 \
                         ORDER BY seq LIMIT 1"
                    ),
                    &[&big(id.0), &KIND_OPENED],
                )
                .map_err(pg_err("looking an account up"))?
                .map(|row| row.get(0)))
        })?;
        body.map(|b| spec_of_opening(decode_record(&b)?))
            .transpose()
    }

    fn save(&self, account: &Account) -> Result<(), StoreError> {
        let shard = self.shard_of(account.id);
        let epoch = self.inner.leases.serving(shard)?;
        self.inner.current(account.id, shard, epoch)?;
        let schema = self.schema();
        let account = account.clone();
        self.read(move |client| {
            let mut tx = client.transaction().map_err(pg_err("BEGIN"))?;
            lease::fence(&mut tx, &schema, &[(shard, epoch)])?;
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
        let schema = self.schema();
        self.read(move |client| {
            let mut heads: BTreeMap<u16, Chain> = BTreeMap::new();
            let (mut records, mut last) = (0u64, 0u64);
            let mut problems = Vec::new();
            let mut problems_total = 0u64;
            let mut last_of: BTreeMap<u16, u64> = BTreeMap::new();
            // Each shard is one chain from GENESIS, in sequence order: a record altered,
            // inserted or removed inside it breaks the link after it.
            scan(client, &schema, |shard, seq, body, chain| {
                records += 1;
                last = last.max(seq);
                let prev = heads.get(&shard).copied().unwrap_or(GENESIS);
                let stored = chain_of(chain, seq)?;
                if chain_next(&prev, seq, body) != stored {
                    problems_total += 1;
                    if problems.len() < TRAIL_PROBLEMS_MAX {
                        problems.push(TrailProblem::Altered { seq });
                    }
                }
                heads.insert(shard, stored);
                last_of.insert(shard, seq);
                Ok(())
            })?;
            Ok(TrailReport {
                pruned_through: 0,
                records,
                segments: 0,
                first_seq: u64::from(records > 0),
                last_seq: last,
                head: heads_digest(heads.into_iter()),
                torn_tail_bytes: 0,
                anchors_checked: 0,
                problems,
                problems_total,
            })
        })
    }

    /// The last durable record's sequence number on this node, and one digest of the chain
    /// heads of the shards it serves (every shard's when it serves them all, as
    /// [`Store::verify_trail`]'s head is).
    fn trail_head(&self) -> (u64, Chain) {
        let held = self.inner.leases.held();
        let q = self.inner.queue.lock();
        let heads = held
            .iter()
            .filter_map(|(s, _)| q.durable_heads.get(usize::from(*s)).map(|h| (*s, *h)));
        (q.durable_seq, heads_digest(heads))
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
        // The leases go once the queue is written: another node may claim them at once.
        let stop = self.inner.keeper_stop.lock().take();
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
        let keeper = self.inner.keeper.lock().take();
        if let Some(keeper) = keeper {
            let _ = keeper.join();
        }
        drop(self.inner.poller_stop.lock().take());
        let poller = self.inner.poller.lock().take();
        if let Some(poller) = poller {
            let _ = poller.join();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_spread_evenly_over_shards_and_the_hash_never_changes() {
        let mut counts = vec![0u32; 64];
        for id in 1..=64_000u64 {
            counts[usize::from(shard_of(AccountId(id), 64))] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            matches!((min, max), (Some(&lo), Some(&hi)) if lo >= 850 && hi <= 1_150),
            "{counts:?}"
        );
        // Fixed values: nodes of different versions must agree where an account lives.
        assert_eq!(
            [1u64, 2, 3, 1_000, u64::MAX].map(|id| shard_of(AccountId(id), 64)),
            FIXED
        );
        assert_eq!(shard_of(AccountId(42), 1), 0);
    }

    const FIXED: [u16; 5] = [1, 14, 45, 8, 32];

    #[test]
    fn a_leg_sum_must_be_a_whole_u128() {
        assert_eq!(
            sum_of("340282366920938463463374607431768211455").ok(),
            Some(u128::MAX)
        );
        assert!(sum_of("1.5").is_err());
        assert!(sum_of("-1").is_err());
    }
}
