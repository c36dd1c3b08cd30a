//! The registry shared by the nodes of a cluster, in the ledger's PostgreSQL schema.
//!
//! - **A log** (`registry_log`): names, API keys and their revocations, Syft users and
//!   transactions, the same entries the local journal holds, one row each. Appends take a
//!   transaction-level advisory lock before their sequence number is drawn, so numbers are
//!   committed in order and a reader that tails `seq > last applied` misses none. Every node
//!   replays the log at open and tails it every [`POLL_EVERY`]; a lookup that misses tails it
//!   at once before answering "unknown" (a name or a key made on another node a moment ago is
//!   found). Conflicts resolve in log order: the first entry for a name or an email wins, and
//!   the node that lost learns it from its own catch-up.
//! - **Idempotency keys** (`registry_idempotency`): one row per (credential, key), bound by an
//!   `INSERT … ON CONFLICT` (a key's first use on any node binds it; every other use, on any
//!   node, finds it) before the operation runs; expired rows are replaced in place and swept
//!   every minute.
//! - **Operation-id epochs** from a sequence starting at 2³², above any a local registry ever
//!   handed out, so no two nodes (and no node before and after joining) share an epoch.
//! - **Secrets** (`registry_secrets`): the delegation tokens' signing secret, the same on every
//!   node.
//!
//! Bounds: [`CONNECTIONS`] connections a node (one for the log's appends, the rest shared by
//! the other statements, pipelined), every statement bounded by [`STATEMENT_TIMEOUT`] on both
//! ends, a catch-up reads at most [`PAGE`] entries a round trip. A connection that broke (the
//! database failed over) is opened again by the next statement on it; the statement that saw
//! it break answers 503 `storage_failed` with Retry-After, having changed nothing it
//! acknowledged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio_postgres::{Client, NoTls, Row};

use super::{decode, encode, Begin, BodyDigest, Entry};
use crate::error::ApiError;

/// How often a node tails the log for other nodes' changes (a revocation made on one node
/// holds on the others within this, plus a round trip).
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Connections a node opens.
pub const CONNECTIONS: usize = 4;
/// A statement taking longer is abandoned (503).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries read per round trip of a catch-up.
pub(super) const PAGE_ENTRIES: usize = 1_000;
const PAGE: i64 = PAGE_ENTRIES as i64;
/// Opening a connection taking longer is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Expired idempotency keys deleted per statement of a sweep.
const SWEEP_ROWS: i64 = 10_000;
/// The first operation-id epoch of a shared registry.
const FIRST_EPOCH: i64 = 1 << 32;

/// Where the shared registry lives.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// A libpq connection string.
    pub url: String,
    /// The ledger's schema (already created by the ledger's store; validated there).
    pub schema: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_failed",
        format!("the server's registry in PostgreSQL, {what}: {e}"),
    );
    err.retry_after_s = Some(1);
    err
}

/// A few connections, opened again when they break.
struct Db {
    url: String,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl Db {
    async fn connect(url: &str) -> Result<Client, ApiError> {
        let (client, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
                .await
                .map_err(|_| unavailable("connecting", "timed out"))?
                .map_err(|e| unavailable("connecting", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "a registry connection to PostgreSQL ended");
            }
        });
        let ms = STATEMENT_TIMEOUT.as_millis();
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}"
            ))
            .await
            .map_err(|e| unavailable("setting up a connection", e))?;
        Ok(client)
    }

    /// Slot 0 appends to the log; the others take turns at everything else.
    async fn client(&self, appends: bool) -> Result<Arc<Client>, ApiError> {
        let i = if appends {
            0
        } else {
            1 + self.next.fetch_add(1, Ordering::Relaxed) % (self.slots.len() - 1)
        };
        let mut slot = self.slots[i].lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(Db::connect(&self.url).await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
}

/// Runs a statement future under the client-side bound.
async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, f)
        .await
        .map_err(|_| unavailable(what, "timed out"))?
        .map_err(|e| unavailable(what, e))
}

/// How far a node's memory follows the log.
#[derive(Default)]
pub(super) struct Applied {
    /// The last entry applied.
    pub(super) seq: i64,
    /// When the last read that reached the log's end (and did not fail) began.
    pub(super) complete_at: Option<std::time::Instant>,
}

/// The shared backend. See the module docs.
pub(super) struct Shared {
    db: Arc<Db>,
    s: String,
    /// How far memory follows the log; held while applying, so entries apply in order.
    pub(super) applied: tokio::sync::Mutex<Applied>,
    /// Idempotency keys remembered, as of the last sweep plus this node's bindings since.
    keys_remembered: AtomicUsize,
}

impl Shared {
    /// Connects and creates the registry's tables if missing. `ledger_max` gives the highest
    /// account id of entries being imported (names are numbered above it and above every
    /// account the ledger holds).
    pub(super) async fn open(
        config: &SharedConfig,
        import: &[Vec<u8>],
        import_max_id: u64,
        import_max_key: u64,
    ) -> Result<Shared, String> {
        let s = config.schema.clone();
        // Interpolated into statements: the same rule the ledger's store applies.
        let valid = !s.is_empty()
            && s.len() <= 63
            && !s.as_bytes()[0].is_ascii_digit()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "schema {s:?}: use lowercase letters, digits and _, at most 63 bytes, not \
                 starting with a digit"
            ));
        }
        let mut init = Db::connect(&config.url)
            .await
            .map_err(|e| e.message.clone())?;
        let tx = init
            .transaction()
            .await
            .map_err(|e| format!("BEGIN: {e}"))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('tally-registry:' || $1, 0))",
            &[&s],
        )
        .await
        .map_err(|e| format!("locking the registry's creation: {e}"))?;
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = $1 AND table_name = 'registry_log')",
                &[&s],
            )
            .await
            .map_err(|e| format!("reading the schema: {e}"))?
            .get(0);
        if !exists {
            let ledger_max: i64 = tx
                .query_one(
                    &format!(
                        "SELECT GREATEST((SELECT max(account) FROM {s}.records), \
                         (SELECT max(account) FROM {s}.snapshots), 0)"
                    ),
                    &[],
                )
                .await
                .map_err(|e| format!("reading the ledger's highest account: {e}"))?
                .get(0);
            let first_id = u64::try_from(ledger_max)
                .unwrap_or(0)
                .max(import_max_id)
                .saturating_add(1)
                .max(super::FIRST_NAMED_ID);
            let first_id = i64::try_from(first_id).map_err(|_| "account ids exhausted")?;
            let first_key =
                i64::try_from(import_max_key.saturating_add(1)).map_err(|_| "key ids exhausted")?;
            tx.batch_execute(&format!(
                "CREATE TABLE {s}.registry_log (seq BIGSERIAL PRIMARY KEY, entry BYTEA NOT NULL);
                 CREATE TABLE {s}.registry_idempotency (
                     principal TEXT NOT NULL, key TEXT NOT NULL, op BYTEA NOT NULL,
                     route TEXT NOT NULL, body BYTEA NOT NULL, at_ms BIGINT NOT NULL,
                     status INTEGER, response BYTEA, PRIMARY KEY (principal, key));
                 CREATE INDEX registry_idempotency_by_age ON {s}.registry_idempotency (at_ms);
                 CREATE TABLE {s}.registry_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
                 CREATE SEQUENCE {s}.registry_name_ids START WITH {first_id};
                 CREATE SEQUENCE {s}.registry_key_ids START WITH {first_key};
                 CREATE SEQUENCE {s}.registry_epochs START WITH {FIRST_EPOCH};"
            ))
            .await
            .map_err(|e| format!("creating the registry's tables: {e}"))?;
            for entry in import {
                tx.execute(
                    &format!("INSERT INTO {s}.registry_log (entry) VALUES ($1)"),
                    &[entry],
                )
                .await
                .map_err(|e| format!("importing the local registry: {e}"))?;
            }
        }
        // Where each node takes requests forwarded to it (added after the other tables).
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {s}.registry_nodes (
                 node TEXT PRIMARY KEY, url TEXT NOT NULL,
                 at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(|e| format!("creating the registry's tables: {e}"))?;
        tx.commit()
            .await
            .map_err(|e| format!("creating the registry's tables: {e}"))?;
        let shared = Shared {
            db: Arc::new(Db {
                url: config.url.clone(),
                slots: (0..CONNECTIONS)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            }),
            s,
            applied: tokio::sync::Mutex::new(Applied::default()),
            keys_remembered: AtomicUsize::new(0),
        };
        Ok(shared)
    }

    /// A fresh operation-id epoch, never handed to any node before.
    pub(super) async fn epoch(&self) -> Result<u64, ApiError> {
        self.next_value("registry_epochs").await
    }

    /// A fresh account id for a new name.
    pub(super) async fn name_id(&self) -> Result<u64, ApiError> {
        self.next_value("registry_name_ids").await
    }

    /// A fresh API key id.
    pub(super) async fn key_id(&self) -> Result<u64, ApiError> {
        self.next_value("registry_key_ids").await
    }

    async fn next_value(&self, sequence: &str) -> Result<u64, ApiError> {
        let client = self.db.client(false).await?;
        let sql = format!("SELECT nextval('{}.{sequence}')", self.s);
        let row = bounded("drawing an id", client.query_one(&sql, &[])).await?;
        u64::try_from(row.get::<_, i64>(0)).map_err(|_| ApiError::internal("a negative id"))
    }

    /// Appends an entry to the log; returns its seq once it is committed (durable as the
    /// database's `synchronous_commit` makes it).
    pub(super) async fn append(&self, entry: &Entry) -> Result<i64, ApiError> {
        let bytes = encode(entry)?;
        let client = self.db.client(true).await?;
        // One implicit transaction: the lock first, then the number drawn under it. The
        // entry goes as hex digits through decode(), which no setting (such as
        // standard_conforming_strings) reads otherwise.
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let sql = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('tally-registry-log:{s}', 0)); \
             INSERT INTO {s}.registry_log (entry) VALUES (decode('{hex}', 'hex')) RETURNING seq",
            s = self.s
        );
        let messages = bounded("appending to the log", client.simple_query(&sql)).await?;
        // The lock's row comes first; the insert's is the last.
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .last()
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(|| ApiError::internal("appending to the registry log returned no seq"))
    }

    /// Log entries after `after`, at most a page, in order.
    pub(super) async fn read_after(
        &self,
        after: i64,
    ) -> Result<Vec<(i64, Option<Entry>)>, ApiError> {
        let client = self.db.client(false).await?;
        let sql = format!(
            "SELECT seq, entry FROM {}.registry_log WHERE seq > $1 ORDER BY seq LIMIT {PAGE}",
            self.s
        );
        let rows = bounded("reading the log", client.query(&sql, &[&after])).await?;
        // An entry this build cannot read (written by a newer one, or damaged) is reported and
        // passed over, so that it does not stop every node from following the log.
        Ok(rows
            .iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let bytes: &[u8] = row.get(1);
                match decode(bytes) {
                    Ok(entry) => (seq, Some(entry)),
                    Err(e) => {
                        metrics::counter!("tally_registry_entries_unreadable_total").increment(1);
                        tracing::error!(seq, error = %e, "a shared registry entry is unreadable: passed over");
                        (seq, None)
                    }
                }
            })
            .collect())
    }

    /// The signing secret `name`, made from `fresh` by the first node that asks.
    pub(super) async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, ApiError> {
        let client = self.db.client(false).await?;
        let sql = format!(
            "INSERT INTO {}.registry_secrets (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            self.s
        );
        bounded("storing a secret", client.execute(&sql, &[&name, &fresh])).await?;
        let sql = format!(
            "SELECT value FROM {}.registry_secrets WHERE name = $1",
            self.s
        );
        let row = bounded("reading a secret", client.query_one(&sql, &[&name])).await?;
        Ok(row.get(0))
    }

    /// Binds an idempotency key to `op` unless it is bound (and not expired), then answers as
    /// the local registry does.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn begin(
        &self,
        principal: &str,
        key: &str,
        route: &str,
        body: &BodyDigest,
        op: tally::OpId,
        now_ms: u64,
        horizon_ms: u64,
        keys_max: usize,
    ) -> Result<Begin, ApiError> {
        let client = self.db.client(false).await?;
        let s = &self.s;
        let select = format!(
            "SELECT op, route, body, status, response FROM {s}.registry_idempotency \
             WHERE principal = $1 AND key = $2 AND at_ms >= $3"
        );
        let horizon = i64::try_from(horizon_ms).unwrap_or(i64::MAX);
        let found = bounded(
            "reading an idempotency key",
            client.query_opt(&select, &[&principal, &key, &horizon]),
        )
        .await?;
        if let Some(row) = found {
            return existing(&row, key, route, body);
        }
        let remembered = self.keys_remembered.load(Ordering::Relaxed);
        if remembered >= keys_max {
            return Err(ApiError::overloaded(format!(
                "{remembered} idempotency keys are remembered, the limit; retry once older \
                 ones expire"
            ))
            .with("scope", "idempotency keys")
            .with("limit", keys_max));
        }
        let digest = postcard::to_stdvec(body)
            .map_err(|e| ApiError::internal(format!("encoding a body digest: {e}")))?;
        let at = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let op_bytes = op.0.to_be_bytes().to_vec();
        let insert = format!(
            "INSERT INTO {s}.registry_idempotency AS i (principal, key, op, route, body, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (principal, key) DO UPDATE \
             SET op = EXCLUDED.op, route = EXCLUDED.route, body = EXCLUDED.body, \
                 at_ms = EXCLUDED.at_ms, status = NULL, response = NULL \
             WHERE i.at_ms < $7 RETURNING op"
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&principal, &key, &op_bytes, &route, &digest, &at, &horizon];
        let bound = bounded(
            "binding an idempotency key",
            client.query_opt(&insert, &params),
        )
        .await?;
        if bound.is_some() {
            self.keys_remembered.fetch_add(1, Ordering::Relaxed);
            return Ok(Begin::Run { op });
        }
        // Bound meanwhile by another request (on this node or another): its binding stands.
        let row = bounded(
            "reading an idempotency key",
            client.query_opt(&select, &[&principal, &key, &horizon]),
        )
        .await?
        .ok_or_else(|| unavailable("binding an idempotency key", "it moved; retry"))?;
        existing(&row, key, route, body)
    }

    /// Records a keyed request's answer for its retries, in the background (as locally: if it
    /// is lost, a retry runs the same operation id again).
    pub(super) fn finish(
        &self,
        principal: &str,
        key: &str,
        op: tally::OpId,
        status: u16,
        body: Vec<u8>,
    ) {
        let db = Arc::clone(&self.db);
        // Only the binding this answer is for (the key may have expired and been bound anew).
        let sql = format!(
            "UPDATE {}.registry_idempotency SET status = $3, response = $4 \
             WHERE principal = $1 AND key = $2 AND op = $5 AND status IS NULL",
            self.s
        );
        let op = op.0.to_be_bytes().to_vec();
        let (principal, key) = (principal.to_owned(), key.to_owned());
        tokio::spawn(async move {
            let status = i32::from(status);
            let done = match db.client(false).await {
                Ok(client) => {
                    bounded(
                        "recording an answer",
                        client.execute(&sql, &[&principal, &key, &status, &body, &op]),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e.message, "recording an idempotent response failed");
            }
        });
    }

    /// Deletes idempotency keys older than `horizon_ms` and counts those left.
    pub(super) async fn sweep(&self, horizon_ms: u64) -> Result<usize, ApiError> {
        let client = self.db.client(false).await?;
        let s = &self.s;
        let horizon = i64::try_from(horizon_ms).unwrap_or(i64::MAX);
        let delete = format!(
            "DELETE FROM {s}.registry_idempotency WHERE ctid IN (SELECT ctid FROM \
             {s}.registry_idempotency WHERE at_ms < $1 LIMIT {SWEEP_ROWS})"
        );
        while bounded(
            "sweeping idempotency keys",
            client.execute(&delete, &[&horizon]),
        )
        .await?
            == u64::try_from(SWEEP_ROWS).unwrap_or(u64::MAX)
        {}
        let count = format!("SELECT count(*) FROM {s}.registry_idempotency");
        let row = bounded("counting idempotency keys", client.query_one(&count, &[])).await?;
        let n = usize::try_from(row.get::<_, i64>(0)).unwrap_or(usize::MAX);
        self.keys_remembered.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Records the URL other nodes forward requests for this node's shards to.
    pub(super) async fn advertise(&self, node: &str, url: &str) -> Result<(), ApiError> {
        let client = self.db.client(false).await?;
        let sql = format!(
            "INSERT INTO {}.registry_nodes (node, url) VALUES ($1, $2) \
             ON CONFLICT (node) DO UPDATE SET url = EXCLUDED.url, at = now()",
            self.s
        );
        bounded(
            "advertising this node",
            client.execute(&sql, &[&node, &url]),
        )
        .await?;
        Ok(())
    }

    /// The node holding `shard`'s lease now (not `me`) and its URL, if any node does.
    pub(super) async fn owner(
        &self,
        shard: u16,
        me: &str,
    ) -> Result<Option<(String, String)>, ApiError> {
        let client = self.db.client(false).await?;
        let s = &self.s;
        let sql = format!(
            "SELECT l.node, n.url FROM {s}.leases l JOIN {s}.registry_nodes n ON n.node = l.node \
             WHERE l.shard = $1 AND l.expires_at > now() AND l.node <> $2"
        );
        let shard = i16::try_from(shard).unwrap_or(i16::MAX);
        let row = bounded(
            "reading a shard's owner",
            client.query_opt(&sql, &[&shard, &me]),
        )
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Idempotency keys remembered (as of the last sweep, plus this node's bindings since).
    pub(super) fn keys_remembered(&self) -> usize {
        self.keys_remembered.load(Ordering::Relaxed)
    }
}

fn existing(row: &Row, key: &str, route: &str, body: &BodyDigest) -> Result<Begin, ApiError> {
    let op_bytes: &[u8] = row.get(0);
    let stored_route: &str = row.get(1);
    let digest: &[u8] = row.get(2);
    let status: Option<i32> = row.get(3);
    let response: Option<Vec<u8>> = row.get(4);
    let op = <[u8; 16]>::try_from(op_bytes)
        .map(|b| tally::OpId(u128::from_be_bytes(b)))
        .map_err(|_| ApiError::internal("an idempotency key's operation id is not 16 bytes"))?;
    let stored: BodyDigest = postcard::from_bytes(digest)
        .map_err(|e| ApiError::internal(format!("an idempotency key's digest: {e}")))?;
    if stored_route != route {
        return Err(super::conflict(key, "route"));
    }
    if stored != *body {
        return Err(super::conflict(key, &stored.first_difference(body)));
    }
    match (status.and_then(|s| u16::try_from(s).ok()), response) {
        (Some(status), Some(body)) => Ok(Begin::Cached { status, body }),
        _ => Ok(Begin::Run { op }),
    }
}
