//! The server's own durable state, beside the ledger: account names, API keys, Syft users,
//! idempotency keys, the operation-id epoch.
//!
//! It is two more journals (the same segmented, checksummed, group-committed log the ledger
//! uses), replayed into memory at open: `<data>/server/` for what is kept (names, keys, users,
//! Syft transactions, prices) and `<data>/idempotency/` for idempotency keys, which live 24 h:
//! its segments older than the oldest remembered key are deleted (checked at most once a
//! minute), so it holds about a day of keyed writes. Every change is appended and made durable
//! *before* the ledger operation it enables runs, so a crash between the two leaves a name or a
//! key whose operation a retry finishes, never an operation a retry repeats:
//!
//! - a name is mapped to an account id before the account is opened (opening is idempotent);
//! - an `Idempotency-Key` is bound to an operation id before the operation runs; a retry after
//!   a crash runs the same operation id again and the ledger answers with the first outcome.
//!
//! Writes without a key get a fresh operation id: `epoch << 64 | counter`, where the epoch is
//! journaled once per start, so no id is ever reused across restarts.
//!
//! A server whose ledger is in PostgreSQL keeps this state there instead, shared by every node
//! over the same schema: see [`shared`].

mod shared;

pub use shared::{
    SharedConfig, CONNECTIONS as SHARED_CONNECTIONS, POLL_EVERY as SHARED_POLL_EVERY,
};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tally::{AccountId, OpId};
use tally_store::journal::{Journal, JournalConfig, JournalError, SyncMode};

use crate::error::ApiError;

const FORMAT_VERSION: u8 = 1;

/// Names are at most this many bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Idempotency keys are at most this many bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// What an API key may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyScope {
    /// Everything.
    Admin,
    /// Reserve, commit, void and charge for one app (its revenue account), and check balances.
    Service {
        /// The app's revenue account.
        app: AccountId,
    },
}

/// A stored API key: never the secret, only its BLAKE3 hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKey {
    /// Its id (the `tk_<id>_` prefix of the secret).
    pub id: u64,
    /// BLAKE3 of the whole secret.
    pub hash: [u8; 32],
    /// What it may do.
    pub scope: KeyScope,
    /// The operator's label.
    pub label: String,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_ms: Option<u64>,
    /// Revoked keys are kept so their ids are never reused.
    pub revoked: bool,
}

/// A Syft user: an account keyed by email, with an argon2 password hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// The email (its account's name).
    pub email: String,
    /// The account.
    pub account: AccountId,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The user's organization, if given.
    pub organization: Option<String>,
    /// When it was created.
    pub created_ms: u64,
}

/// Who created or resolved a Syft transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Party {
    /// The server (an expiry).
    System,
    /// The payer.
    Sender,
    /// The payee.
    Recipient,
}

/// Where a Syft transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// Its hold is pending.
    Pending,
    /// Confirmed: posted to the recipient.
    Completed,
    /// Cancelled or expired: released to the sender.
    Cancelled,
}

/// A Syft transaction: a hold on the sender payable to the recipient.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Txn {
    /// The hold (its id is the transaction's id).
    pub hold: tally::HoldId,
    /// The payer's email.
    pub sender: String,
    /// The payee's email.
    pub recipient: String,
    /// µ¢ held.
    pub amount: u64,
    /// Who created it.
    pub created_by: Party,
    /// When (ms since the epoch).
    pub created_ms: u64,
    /// The app's name, if given.
    pub app_name: Option<String>,
    /// The app's endpoint path, if given.
    pub app_ep_path: Option<String>,
    /// How and when it was resolved, once it was.
    pub resolved: Option<(TxnStatus, Party, u64)>,
    /// When its hold expires if still pending (ms since the epoch).
    pub expires_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Boot {
        epoch: u64,
        at_ms: u64,
    },
    Name {
        name: String,
        id: AccountId,
    },
    Key(ApiKey),
    KeyRevoked {
        id: u64,
    },
    Idempotency {
        principal: String,
        key: String,
        op: u128,
        route: String,
        body: BodyDigest,
        at_ms: u64,
    },
    User(User),
    UserPassword {
        email: String,
        password_hash: String,
    },
    UserOrganization {
        email: String,
        organization: Option<String>,
    },
    Txn(Txn),
    TxnResolved {
        hold: tally::HoldId,
        status: TxnStatus,
        by: Party,
        at_ms: u64,
    },
    Price {
        app: AccountId,
        endpoint: String,
        price: tally::Price,
    },
    IdemResponse {
        principal: String,
        key: String,
        status: u16,
        body: Vec<u8>,
    },
    /// An account's low-balance threshold set (`Some`) or removed (`None`), by builds before
    /// thresholds were ledger state (an account's policy): read and ignored, kept so that the
    /// entries after it still decode.
    LowBalance {
        account: AccountId,
        threshold: Option<u64>,
    },
}

/// What is kept of a keyed request's body to recognize its retries: a BLAKE3 of its canonical
/// text, and one short hash per top-level field to name the one that differs. Never the body
/// itself (up to 64 KiB × a million keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyDigest {
    whole: [u8; 32],
    fields: Vec<(String, u64)>,
}

/// Longest field name kept in a digest (longer names are cut; only used to name a field).
const DIGEST_NAME_BYTES_MAX: usize = 64;
/// Most fields kept in a digest (the rest are still covered by the whole-body hash).
const DIGEST_FIELDS_MAX: usize = 32;

impl BodyDigest {
    /// The digest of a parsed body (its canonical text: keys sorted, no whitespace).
    pub fn of(value: &serde_json::Value) -> BodyDigest {
        let whole = *blake3::hash(value.to_string().as_bytes()).as_bytes();
        let fields = match value {
            serde_json::Value::Object(map) => map
                .iter()
                .take(DIGEST_FIELDS_MAX)
                .map(|(k, v)| {
                    let name: String = k.chars().take(DIGEST_NAME_BYTES_MAX).collect();
                    let h = blake3::hash(v.to_string().as_bytes());
                    let mut eight = [0u8; 8];
                    eight.copy_from_slice(&h.as_bytes()[..8]);
                    (name, u64::from_le_bytes(eight))
                })
                .collect(),
            _ => Vec::new(),
        };
        BodyDigest { whole, fields }
    }

    /// The BLAKE3 of the whole canonical body.
    pub fn whole(&self) -> &[u8; 32] {
        &self.whole
    }

    /// The first field (in name order) whose value differs, `body` when none can be named.
    fn first_difference(&self, other: &BodyDigest) -> String {
        let mut names: Vec<&String> = self
            .fields
            .iter()
            .chain(other.fields.iter())
            .map(|(k, _)| k)
            .collect();
        names.sort();
        names.dedup();
        let get = |d: &BodyDigest, k: &str| d.fields.iter().find(|(n, _)| n == k).map(|(_, h)| *h);
        names
            .into_iter()
            .find(|k| get(self, k) != get(other, k))
            .map_or_else(|| "body".to_owned(), |k| k.clone())
    }
}

/// What [`Registry::begin`] found for an idempotency key.
#[derive(Debug)]
pub enum Begin {
    /// The first response, to give back as is.
    Cached {
        /// Its status.
        status: u16,
        /// Its body.
        body: Vec<u8>,
    },
    /// Run the operation with this id (the first time, or again after a restart).
    Run {
        /// The operation id bound to the key.
        op: OpId,
    },
}

struct IdemEntry {
    op: OpId,
    route: String,
    body: BodyDigest,
    at_ms: u64,
    /// The registry record binding it, which must be durable before the operation runs.
    seq: u64,
    response: Option<(u16, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    /// In byte order, so that the account list pages through it without sorting.
    names: BTreeMap<String, AccountId>,
    ids: HashMap<AccountId, String>,
    id_next: u64,
    keys: BTreeMap<u64, ApiKey>,
    users: BTreeMap<String, User>,
    idem: HashMap<(String, String), IdemEntry>,
    /// Remembered keys, oldest first: (at_ms, the idempotency journal's seq, principal, key).
    idem_order: VecDeque<(u64, u64, String, String)>,
    epoch: u64,
    /// When the idempotency journal was last trimmed.
    idem_trimmed_ms: u64,
    txns: HashMap<tally::HoldId, Txn>,
    txns_by_user: HashMap<String, VecDeque<tally::HoldId>>,
    /// Transactions remembered, oldest first (at most `txns_max`).
    txn_order: VecDeque<tally::HoldId>,
    txns_max: usize,
    prices: BTreeMap<(AccountId, String), tally::Price>,
}

/// The bounds of the registry.
#[derive(Clone, Debug)]
pub struct RegistryLimits {
    /// Idempotency keys are remembered this long (ms). Default 24 h.
    pub idempotency_retention_ms: u64,
    /// At most this many keys are remembered; past it a keyed write is refused with
    /// `overloaded` (never forgotten early, which could repeat a charge). Default 1,000,000.
    pub idempotency_keys_max: usize,
    /// The idempotency journal rolls to a new segment past this size; a segment goes once every
    /// key in it has expired. Default 16 MiB.
    pub idempotency_segment_bytes: u64,
    /// Syft transactions remembered; past it the oldest are forgotten: no longer listed,
    /// confirmed or cancelled through Syft (a forgotten pending one expires by its timeout; the
    /// ledger's history keeps every one). Default 1,000,000.
    pub txns_max: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            idempotency_retention_ms: 24 * 3_600_000,
            idempotency_keys_max: 1_000_000,
            idempotency_segment_bytes: 16 << 20,
            txns_max: 1_000_000,
        }
    }
}

/// The first account id handed to a name; lower ids are the server's own.
pub const FIRST_NAMED_ID: u64 = 1_000;

/// The server's durable state. See the module docs.
pub struct Registry {
    backend: Backend,
    inner: RwLock<Inner>,
    op_next: AtomicU64,
    epoch: AtomicU64,
    limits: RegistryLimits,
}

enum Backend {
    /// Two journals in the data directory.
    Local {
        journal: Journal,
        idem_journal: Journal,
    },
    /// Tables in PostgreSQL, shared with the other nodes.
    Shared(shared::Shared),
}

/// How often a shared registry sweeps its expired idempotency keys (ms).
pub const SHARED_SWEEP_EVERY_MS: u64 = 60_000;

fn encode(entry: &Entry) -> Result<Vec<u8>, ApiError> {
    postcard::to_extend(entry, vec![FORMAT_VERSION])
        .map_err(|e| ApiError::internal(format!("encoding a registry entry: {e}")))
}

fn decode(payload: &[u8]) -> Result<Entry, String> {
    match payload.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("decoding a registry entry: {e}"))
        }
        Some((v, _)) => Err(format!("registry entry format {v} is not {FORMAT_VERSION}")),
        None => Err("empty registry entry".to_owned()),
    }
}

fn journal_error(e: JournalError) -> ApiError {
    match e {
        JournalError::Full { .. } | JournalError::FullBytes { .. } => {
            ApiError::overloaded(format!("the server's registry queue is full: {e}"))
                .with("scope", "registry")
        }
        JournalError::Failed(_) => {
            let mut err = ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_failed",
                format!("the server's registry failed: {e}"),
            );
            err.retry_after_s = Some(5);
            err
        }
        other => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            format!("the server's registry: {other}"),
        ),
    }
}

impl Inner {
    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Boot { epoch, .. } => self.epoch = self.epoch.max(epoch),
            Entry::Name { name, id } => {
                self.id_next = self.id_next.max(id.0.saturating_add(1));
                // The first mapping of a name (or of an id) stands: nodes sharing a registry
                // may both propose one, and the log's order decides.
                if self.names.contains_key(&name) || self.ids.contains_key(&id) {
                    return;
                }
                self.ids.insert(id, name.clone());
                self.names.insert(name, id);
            }
            Entry::Key(key) => {
                self.keys.insert(key.id, key);
            }
            Entry::KeyRevoked { id } => {
                if let Some(k) = self.keys.get_mut(&id) {
                    k.revoked = true;
                }
            }
            Entry::Idempotency {
                principal,
                key,
                op,
                route,
                body,
                at_ms,
            } => {
                // Replayed from the idempotency journal: `seq` is set by the caller.
                self.idem_order
                    .push_back((at_ms, 0, principal.clone(), key.clone()));
                self.idem.insert(
                    (principal, key),
                    IdemEntry {
                        op: OpId(op),
                        route,
                        body,
                        at_ms,
                        seq: 0,
                        response: None,
                    },
                );
            }
            Entry::User(user) => {
                // The first sign-up of an email stands (see names).
                self.users.entry(user.email.clone()).or_insert(user);
            }
            Entry::IdemResponse {
                principal,
                key,
                status,
                body,
            } => {
                if let Some(entry) = self.idem.get_mut(&(principal, key)) {
                    entry.response.get_or_insert((status, body));
                }
            }
            Entry::UserPassword {
                email,
                password_hash,
            } => {
                if let Some(u) = self.users.get_mut(&email) {
                    u.password_hash = password_hash;
                }
            }
            Entry::UserOrganization {
                email,
                organization,
            } => {
                if let Some(u) = self.users.get_mut(&email) {
                    u.organization = organization;
                }
            }
            Entry::Txn(txn) => {
                if self.txns.contains_key(&txn.hold) {
                    return;
                }
                for user in [&txn.sender, &txn.recipient] {
                    let list = self.txns_by_user.entry(user.clone()).or_default();
                    if list.back() != Some(&txn.hold) {
                        list.push_back(txn.hold);
                    }
                }
                let now_ms = txn.created_ms;
                self.txn_order.push_back(txn.hold);
                self.txns.insert(txn.hold, txn);
                // Past the bound the oldest go, but never one that may still be pending: the
                // payee of a pending transaction must still be able to confirm it. Those wait
                // their turn again (they are bounded by the ledger's pending holds).
                let mut looked = 0;
                while self.txns.len() > self.txns_max && looked < self.txn_order.len() {
                    let Some(old) = self.txn_order.pop_front() else {
                        break;
                    };
                    looked += 1;
                    let settled = self
                        .txns
                        .get(&old)
                        .is_some_and(|t| t.resolved.is_some() || t.expires_ms <= now_ms);
                    if !settled {
                        self.txn_order.push_back(old);
                        continue;
                    }
                    if let Some(t) = self.txns.remove(&old) {
                        for user in [&t.sender, &t.recipient] {
                            if let Some(list) = self.txns_by_user.get_mut(user) {
                                if list.front() == Some(&old) {
                                    list.pop_front();
                                } else {
                                    list.retain(|h| *h != old);
                                }
                                if list.is_empty() {
                                    self.txns_by_user.remove(user);
                                }
                            }
                        }
                    }
                }
            }
            Entry::TxnResolved {
                hold,
                status,
                by,
                at_ms,
            } => {
                if let Some(t) = self.txns.get_mut(&hold) {
                    t.resolved.get_or_insert((status, by, at_ms));
                }
            }
            Entry::Price {
                app,
                endpoint,
                price,
            } => {
                self.prices.insert((app, endpoint), price);
            }
            Entry::LowBalance { .. } => {}
        }
    }

    fn expire_idempotency(&mut self, now_ms: u64, retention_ms: u64) {
        let horizon = now_ms.saturating_sub(retention_ms);
        while let Some((at, _, _, _)) = self.idem_order.front() {
            if *at >= horizon {
                break;
            }
            if let Some((_, _, principal, key)) = self.idem_order.pop_front() {
                let k = (principal, key);
                if self.idem.get(&k).is_some_and(|e| e.at_ms < horizon) {
                    self.idem.remove(&k);
                }
            }
        }
    }
}

impl Registry {
    /// Opens (or recovers) the registry in `dir`, starting a new operation-id epoch.
    pub async fn open(
        data_dir: &Path,
        sync: SyncMode,
        limits: RegistryLimits,
        now_ms: u64,
    ) -> Result<Registry, String> {
        let dir = data_dir.join("server");
        let mut config = JournalConfig::new(&dir);
        config.sync = sync;
        let mut inner = Inner {
            id_next: FIRST_NAMED_ID,
            idem_trimmed_ms: now_ms,
            txns_max: limits.txns_max.max(1),
            ..Inner::default()
        };
        let (journal, _recovery) = Journal::open(config, |_seq, payload| {
            inner.apply(decode(payload)?);
            Ok(())
        })
        .map_err(|e| format!("opening the server registry in {}: {e}", dir.display()))?;
        let idem_dir = data_dir.join("idempotency");
        let mut config = JournalConfig::new(&idem_dir);
        config.sync = sync;
        config.segment_bytes_max = limits.idempotency_segment_bytes;
        // Its oldest segments go as their keys expire: replay from the first one left.
        let after = tally_store::journal::segment_starts(&idem_dir)
            .map_err(|e| format!("listing {}: {e}", idem_dir.display()))?
            .first()
            .map_or(0, |first| first.saturating_sub(1));
        let (idem_journal, _recovery) = Journal::open_after(config, after, |seq, payload| {
            let entry = decode(payload)?;
            let binding = matches!(entry, Entry::Idempotency { .. });
            inner.apply(entry);
            if binding {
                if let Some(last) = inner.idem_order.back_mut() {
                    last.1 = seq;
                }
            }
            Ok(())
        })
        .map_err(|e| {
            format!(
                "opening the idempotency keys in {}: {e}",
                idem_dir.display()
            )
        })?;
        inner.expire_idempotency(now_ms, limits.idempotency_retention_ms);
        let epoch = inner
            .epoch
            .checked_add(1)
            .ok_or("operation-id epochs exhausted")?;
        let boot = encode(&Entry::Boot {
            epoch,
            at_ms: now_ms,
        })
        .map_err(|e| e.message)?;
        let seq = journal
            .append(&boot)
            .map_err(|e| format!("recording the start: {e}"))?;
        inner.epoch = epoch;
        // The epoch must be durable before any id of it is handed out.
        journal
            .wait_durable(seq)
            .await
            .map_err(|e| format!("recording the start: {e}"))?;
        Ok(Registry {
            backend: Backend::Local {
                journal,
                idem_journal,
            },
            inner: RwLock::new(inner),
            op_next: AtomicU64::new(0),
            epoch: AtomicU64::new(epoch),
            limits,
        })
    }

    /// Opens the registry shared by the nodes over `config`'s schema, creating its tables if
    /// missing. A new shared registry takes in what a local one in `data_dir` holds (names,
    /// keys, users, Syft transactions), so a server moving its ledger to PostgreSQL keeps
    /// them; idempotency keys stay behind (they live a day).
    pub async fn open_shared(
        config: &SharedConfig,
        data_dir: &Path,
        limits: RegistryLimits,
        now_ms: u64,
    ) -> Result<Registry, String> {
        let (import, max_id, max_key) = local_entries(data_dir)?;
        let shared = shared::Shared::open(config, &import, max_id, max_key).await?;
        let epoch = shared.epoch().await.map_err(|e| e.message)?;
        let inner = Inner {
            id_next: FIRST_NAMED_ID,
            idem_trimmed_ms: now_ms,
            txns_max: limits.txns_max.max(1),
            epoch,
            ..Inner::default()
        };
        let registry = Registry {
            backend: Backend::Shared(shared),
            inner: RwLock::new(inner),
            op_next: AtomicU64::new(0),
            epoch: AtomicU64::new(epoch),
            limits,
        };
        registry.refresh().await.map_err(|e| e.message)?;
        // The count of remembered idempotency keys (their bound) from the start.
        if let Backend::Shared(shared) = &registry.backend {
            let horizon = now_ms.saturating_sub(registry.limits.idempotency_retention_ms);
            shared.sweep(horizon).await.map_err(|e| e.message)?;
        }
        Ok(registry)
    }

    /// Whether the registry is shared with other nodes (in PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared(_))
    }

    /// Applies what other nodes added to a shared registry since the last look (at most one
    /// catch-up at a time; entries apply in the log's order). Nothing to do locally.
    pub async fn refresh(&self) -> Result<(), ApiError> {
        self.catch_up(None).await
    }

    async fn catch_up(&self, to: Option<i64>) -> Result<(), ApiError> {
        let Backend::Shared(shared) = &self.backend else {
            return Ok(());
        };
        let asked = std::time::Instant::now();
        let mut applied = shared.applied.lock().await;
        // Misses that pile up share one read: one that began after this was asked, and went
        // on to the log's end without failing, saw all this one would.
        if to.is_none() && applied.complete_at.is_some_and(|at| at >= asked) {
            return Ok(());
        }
        loop {
            if to.is_some_and(|to| applied.seq >= to) {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let page = shared.read_after(applied.seq).await?;
            if page.len() < shared::PAGE_ENTRIES {
                applied.complete_at = Some(started);
            }
            if page.is_empty() {
                return match to {
                    Some(to) => Err(ApiError::internal(format!(
                        "registry log entry {to} is committed but not found after {}",
                        applied.seq
                    ))),
                    None => Ok(()),
                };
            }
            let mut inner = self.inner.write();
            for (seq, entry) in page {
                if let Some(entry) = entry {
                    inner.apply(entry);
                }
                applied.seq = seq;
            }
        }
    }

    /// A shared registry's sweep of expired idempotency keys (and count of those left), at
    /// most once every [`SHARED_SWEEP_EVERY_MS`]. Nothing to do locally.
    pub async fn sweep(&self, now_ms: u64) -> Result<(), ApiError> {
        let Backend::Shared(shared) = &self.backend else {
            return Ok(());
        };
        let due = {
            let mut inner = self.inner.write();
            let due = now_ms.saturating_sub(inner.idem_trimmed_ms) >= SHARED_SWEEP_EVERY_MS;
            if due {
                inner.idem_trimmed_ms = now_ms;
            }
            due
        };
        if due {
            let horizon = now_ms.saturating_sub(self.limits.idempotency_retention_ms);
            shared.sweep(horizon).await?;
        }
        Ok(())
    }

    /// A secret every node shares (a shared registry), made from `fresh` by the first node to
    /// ask; `None` for a local registry (the caller keeps its secret in the data directory).
    pub async fn shared_secret(
        &self,
        name: &str,
        fresh: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        match &self.backend {
            Backend::Shared(shared) => shared.secret(name, fresh).await.map(Some),
            Backend::Local { .. } => Ok(None),
        }
    }

    /// Records where other nodes reach this one (a shared registry; nothing to do locally).
    pub async fn advertise(&self, node: &str, url: &str) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Shared(shared) => shared.advertise(node, url).await,
            Backend::Local { .. } => Ok(()),
        }
    }

    /// The node serving `shard` now, other than `me`, and its advertised URL (a shared
    /// registry; `None` locally, or when no other live node holds it).
    pub async fn shard_owner(
        &self,
        shard: u16,
        me: &str,
    ) -> Result<Option<(String, String)>, ApiError> {
        match &self.backend {
            Backend::Shared(shared) => shared.owner(shard, me).await,
            Backend::Local { .. } => Ok(None),
        }
    }

    /// Appends an entry and applies it to memory under one lock (so memory changes in journal
    /// order, as a replay will), then waits until it is durable. Shared: appends it to the
    /// log and applies the log up to it.
    async fn record(&self, entry: Entry) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local { journal, .. } => {
                let bytes = encode(&entry)?;
                let seq = {
                    let mut inner = self.inner.write();
                    let seq = journal.append(&bytes).map_err(journal_error)?;
                    inner.apply(entry);
                    seq
                };
                self.durable(seq).await
            }
            Backend::Shared(shared) => {
                let seq = shared.append(&entry).await?;
                self.catch_up(Some(seq)).await
            }
        }
    }

    async fn durable(&self, seq: u64) -> Result<(), ApiError> {
        match &self.backend {
            Backend::Local { journal, .. } => {
                journal.wait_durable(seq).await.map_err(journal_error)
            }
            Backend::Shared(_) => Ok(()),
        }
    }

    /// Closes the registry's journals (syncing what is queued); a shared registry's
    /// connections close as it drops.
    pub fn close(&self) -> Result<(), String> {
        let Backend::Local {
            journal,
            idem_journal,
        } = &self.backend
        else {
            return Ok(());
        };
        let idem = idem_journal.clone().close().map_err(|e| e.to_string());
        journal.clone().close().map_err(|e| e.to_string())?;
        idem
    }

    /// A fresh operation id, never handed out before (also across restarts).
    pub fn fresh_op(&self) -> OpId {
        self.fresh_ops(1)
    }

    /// The first of `width` consecutive fresh operation ids (a batch's operations).
    pub fn fresh_ops(&self, width: u64) -> OpId {
        let counter = self.op_next.fetch_add(width.max(1), Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        OpId((u128::from(epoch) << 64) | u128::from(counter))
    }

    /// The account a name maps to.
    pub fn account(&self, name: &str) -> Option<AccountId> {
        self.inner.read().names.get(name).copied()
    }

    /// A page of names in byte order after `after` (`""` for the first), at most `limit`, with
    /// their accounts.
    pub fn names_after(&self, after: &str, limit: usize) -> Vec<(String, AccountId)> {
        use std::ops::Bound;
        let inner = self.inner.read();
        inner
            .names
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(n, id)| (n.clone(), *id))
            .collect()
    }

    /// The name of an account.
    pub fn name(&self, id: AccountId) -> Option<String> {
        self.inner.read().ids.get(&id).cloned()
    }

    /// The account a name maps to, mapping it (durably) to a new id if it is new. Returns the
    /// id and whether it was new.
    pub async fn map_name(&self, name: &str) -> Result<(AccountId, bool), ApiError> {
        let journal = match &self.backend {
            Backend::Local { journal, .. } => journal,
            Backend::Shared(shared) => {
                if let Some(id) = self.account(name) {
                    return Ok((id, false));
                }
                let proposed = AccountId(shared.name_id().await?);
                self.record(Entry::Name {
                    name: name.to_owned(),
                    id: proposed,
                })
                .await?;
                let id = self.account(name).ok_or_else(|| {
                    ApiError::internal(format!("name {name:?} is not mapped after its entry"))
                })?;
                return Ok((id, id == proposed));
            }
        };
        let (id, seq) = {
            let mut inner = self.inner.write();
            if let Some(id) = inner.names.get(name) {
                return Ok((*id, false));
            }
            let id = AccountId(inner.id_next);
            let entry = Entry::Name {
                name: name.to_owned(),
                id,
            };
            let seq = journal.append(&encode(&entry)?).map_err(journal_error)?;
            inner.apply(entry);
            (id, seq)
        };
        self.durable(seq).await?;
        Ok((id, true))
    }

    /// Maps a reserved name to a fixed id (the server's own accounts).
    pub async fn map_fixed(&self, name: &str, id: AccountId) -> Result<(), ApiError> {
        if self.account(name).is_some() {
            return Ok(());
        }
        let entry = Entry::Name {
            name: name.to_owned(),
            id,
        };
        self.record(entry).await
    }

    /// Looks an idempotency key up, binding it (durably) to a fresh operation id if it is new.
    /// `route` and `body` are what a retry must repeat exactly.
    pub async fn begin(
        &self,
        principal: &str,
        key: &str,
        route: &str,
        body: &BodyDigest,
        width: u64,
        now_ms: u64,
    ) -> Result<Begin, ApiError> {
        let idem_journal = match &self.backend {
            Backend::Local { idem_journal, .. } => idem_journal,
            Backend::Shared(shared) => {
                let horizon = now_ms.saturating_sub(self.limits.idempotency_retention_ms);
                let op = self.fresh_ops(width);
                return shared
                    .begin(
                        principal,
                        key,
                        route,
                        body,
                        op,
                        now_ms,
                        horizon,
                        self.limits.idempotency_keys_max,
                    )
                    .await;
            }
        };
        let (op, seq, trim) =
            match self.begin_locked(idem_journal, principal, key, route, body, width, now_ms)? {
                Step::Cached(begin) => return Ok(begin),
                Step::Wait { op, seq, trim } => (op, seq, trim),
            };
        if let Some(before) = trim {
            // Whole segments of keys older than the oldest remembered one: a few unlinks and
            // a directory sync, off the request path.
            let journal = idem_journal.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = journal.trim_before(before) {
                    tracing::warn!(error = %e, "trimming the idempotency journal failed");
                }
            });
        }
        idem_journal
            .wait_durable(seq)
            .await
            .map_err(journal_error)?;
        Ok(Begin::Run { op })
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_locked(
        &self,
        idem_journal: &Journal,
        principal: &str,
        key: &str,
        route: &str,
        body: &BodyDigest,
        width: u64,
        now_ms: u64,
    ) -> Result<Step, ApiError> {
        let mut inner = self.inner.write();
        inner.expire_idempotency(now_ms, self.limits.idempotency_retention_ms);
        let trim = if now_ms.saturating_sub(inner.idem_trimmed_ms) >= IDEMPOTENCY_TRIM_EVERY_MS {
            inner.idem_trimmed_ms = now_ms;
            Some(
                inner
                    .idem_order
                    .front()
                    .map_or_else(|| idem_journal.last_seq().saturating_add(1), |f| f.1),
            )
        } else {
            None
        };
        let k = (principal.to_owned(), key.to_owned());
        if let Some(entry) = inner.idem.get(&k) {
            if entry.route != route {
                return Err(conflict(key, "route"));
            }
            if entry.body != *body {
                return Err(conflict(key, &entry.body.first_difference(body)));
            }
            if let Some((status, body)) = &entry.response {
                return Ok(Step::Cached(Begin::Cached {
                    status: *status,
                    body: body.clone(),
                }));
            }
            return Ok(Step::Wait {
                op: entry.op,
                seq: entry.seq,
                trim,
            });
        }
        if inner.idem.len() >= self.limits.idempotency_keys_max {
            return Err(ApiError::overloaded(format!(
                "{} idempotency keys are remembered, the limit; retry once older ones expire",
                inner.idem.len()
            ))
            .with("scope", "idempotency keys")
            .with("limit", self.limits.idempotency_keys_max));
        }
        let op = self.fresh_ops(width);
        let entry = Entry::Idempotency {
            principal: principal.to_owned(),
            key: key.to_owned(),
            op: op.0,
            route: route.to_owned(),
            body: body.clone(),
            at_ms: now_ms,
        };
        // Appended under the lock, so a concurrent first use of the same key finds this entry
        // and waits for the same record.
        let seq = idem_journal
            .append(&encode(&entry)?)
            .map_err(journal_error)?;
        inner
            .idem_order
            .push_back((now_ms, seq, k.0.clone(), k.1.clone()));
        inner.idem.insert(
            k,
            IdemEntry {
                op,
                route: route.to_owned(),
                body: body.clone(),
                at_ms: now_ms,
                seq,
                response: None,
            },
        );
        Ok(Step::Wait { op, seq, trim })
    }

    /// Remembers the response to a keyed request, for its retries.
    /// Remembers the response to a keyed request, for its retries, also across a restart: it
    /// is appended to the idempotency journal (not waited for: if it is lost in a crash, a
    /// retry runs the same operation id again and the ledger answers with its first outcome).
    pub fn finish(&self, principal: &str, key: &str, op: OpId, status: u16, body: Vec<u8>) {
        let idem_journal = match &self.backend {
            Backend::Local { idem_journal, .. } => idem_journal,
            Backend::Shared(shared) => {
                if body.len() <= RESPONSE_BYTES_KEPT_MAX {
                    shared.finish(principal, key, op, status, body);
                }
                return;
            }
        };
        let mut inner = self.inner.write();
        let k = (principal.to_owned(), key.to_owned());
        let Some(entry) = inner.idem.get_mut(&k) else {
            return;
        };
        // A large answer (a big batch's) is not kept: its retry runs the same operation ids
        // again, which the ledger answers with their first outcomes.
        if entry.response.is_some() || body.len() > RESPONSE_BYTES_KEPT_MAX {
            return;
        }
        entry.response = Some((status, body.clone()));
        let record = Entry::IdemResponse {
            principal: k.0,
            key: k.1,
            status,
            body,
        };
        if let Ok(bytes) = encode(&record) {
            if let Err(e) = idem_journal.append(&bytes) {
                tracing::warn!(error = %e, "recording an idempotent response failed");
            }
        }
    }

    /// Idempotency keys remembered now.
    pub fn idempotency_keys(&self) -> usize {
        match &self.backend {
            Backend::Local { .. } => self.inner.read().idem.len(),
            Backend::Shared(shared) => shared.keys_remembered(),
        }
    }

    /// Stores a new API key.
    pub async fn add_key(&self, key: ApiKey) -> Result<(), ApiError> {
        let entry = Entry::Key(key);
        self.record(entry).await
    }

    /// Stores a new API key whose id is the next free one, chosen under the lock (so two
    /// concurrent creations never share an id); `make` builds the key and its secret from it.
    pub async fn add_new_key<T>(
        &self,
        make: impl FnOnce(u64) -> (ApiKey, T),
    ) -> Result<(ApiKey, T), ApiError> {
        let journal = match &self.backend {
            Backend::Local { journal, .. } => journal,
            Backend::Shared(shared) => {
                let (key, extra) = make(shared.key_id().await?);
                self.record(Entry::Key(key.clone())).await?;
                return Ok((key, extra));
            }
        };
        let (key, extra, seq) = {
            let mut inner = self.inner.write();
            let id = inner
                .keys
                .keys()
                .next_back()
                .map_or(1, |id| id.saturating_add(1));
            let (key, extra) = make(id);
            let entry = Entry::Key(key.clone());
            let seq = journal.append(&encode(&entry)?).map_err(journal_error)?;
            inner.apply(entry);
            (key, extra, seq)
        };
        self.durable(seq).await?;
        Ok((key, extra))
    }

    /// A key by id.
    pub fn key(&self, id: u64) -> Option<ApiKey> {
        self.inner.read().keys.get(&id).cloned()
    }

    /// A key by id, bringing a shared registry up to date first if it is not known here (it
    /// may have been made on another node a moment ago).
    pub async fn key_fresh(&self, id: u64) -> Result<Option<ApiKey>, ApiError> {
        if let Some(key) = self.key(id) {
            return Ok(Some(key));
        }
        self.refresh().await?;
        Ok(self.key(id))
    }

    /// A user by email, bringing a shared registry up to date first if it is not known here.
    pub async fn user_fresh(&self, email: &str) -> Result<Option<User>, ApiError> {
        if let Some(user) = self.user(email) {
            return Ok(Some(user));
        }
        self.refresh().await?;
        Ok(self.user(email))
    }

    /// A Syft transaction, bringing a shared registry up to date first if it is not known here.
    pub async fn txn_fresh(&self, hold: tally::HoldId) -> Result<Option<Txn>, ApiError> {
        if let Some(txn) = self.txn(hold) {
            return Ok(Some(txn));
        }
        self.refresh().await?;
        Ok(self.txn(hold))
    }

    /// Every key, revoked ones included.
    pub fn keys(&self) -> Vec<ApiKey> {
        self.inner.read().keys.values().cloned().collect()
    }

    /// Revokes a key; false if there is none with that id.
    pub async fn revoke_key(&self, id: u64) -> Result<bool, ApiError> {
        if self.key(id).is_none() {
            self.refresh().await?;
        }
        if !self.inner.read().keys.contains_key(&id) {
            return Ok(false);
        }
        self.record(Entry::KeyRevoked { id }).await?;
        Ok(true)
    }

    /// A user by email.
    pub fn user(&self, email: &str) -> Option<User> {
        self.inner.read().users.get(email).cloned()
    }

    /// Every user, by email.
    pub fn users(&self) -> Vec<User> {
        self.inner.read().users.values().cloned().collect()
    }

    /// Stores a new user; false if the email is taken.
    pub async fn add_user(&self, user: User) -> Result<bool, ApiError> {
        let journal = match &self.backend {
            Backend::Local { journal, .. } => journal,
            Backend::Shared(_) => {
                if self.user(&user.email).is_some() {
                    return Ok(false);
                }
                let (email, hash) = (user.email.clone(), user.password_hash.clone());
                self.record(Entry::User(user)).await?;
                // Ours stands unless another node's sign-up of the email came first.
                return Ok(self.user(&email).is_some_and(|u| u.password_hash == hash));
            }
        };
        let seq = {
            let mut inner = self.inner.write();
            if inner.users.contains_key(&user.email) {
                return Ok(false);
            }
            let entry = Entry::User(user);
            let seq = journal.append(&encode(&entry)?).map_err(journal_error)?;
            inner.apply(entry);
            seq
        };
        self.durable(seq).await?;
        Ok(true)
    }

    /// Changes a user's password hash.
    pub async fn set_password(&self, email: &str, password_hash: String) -> Result<(), ApiError> {
        let entry = Entry::UserPassword {
            email: email.to_owned(),
            password_hash,
        };
        self.record(entry).await
    }

    /// Changes a user's organization.
    pub async fn set_organization(
        &self,
        email: &str,
        organization: Option<String>,
    ) -> Result<(), ApiError> {
        let entry = Entry::UserOrganization {
            email: email.to_owned(),
            organization,
        };
        self.record(entry).await
    }

    /// Records a new Syft transaction.
    pub async fn add_txn(&self, txn: Txn) -> Result<(), ApiError> {
        let entry = Entry::Txn(txn);
        self.record(entry).await
    }

    /// Records how a Syft transaction was resolved (the first resolution stands).
    pub async fn resolve_txn(
        &self,
        hold: tally::HoldId,
        status: TxnStatus,
        by: Party,
        at_ms: u64,
    ) -> Result<(), ApiError> {
        let entry = Entry::TxnResolved {
            hold,
            status,
            by,
            at_ms,
        };
        self.record(entry).await
    }

    /// A Syft transaction.
    pub fn txn(&self, hold: tally::HoldId) -> Option<Txn> {
        self.inner.read().txns.get(&hold).cloned()
    }

    /// A user's Syft transactions (as sender or recipient), oldest first, `skip` then at most
    /// `limit`.
    pub fn txns_of(&self, email: &str, skip: usize, limit: usize) -> Vec<Txn> {
        let inner = self.inner.read();
        inner
            .txns_by_user
            .get(email)
            .map(|ids| {
                ids.iter()
                    .skip(skip)
                    .take(limit)
                    .filter_map(|id| inner.txns.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records the price of an app's endpoint in the registry, as builds before prices were
    /// ledger state did (the server no longer calls it; [`crate::metering`] imports such
    /// entries into the ledger at start, and tests use it to make one).
    pub async fn set_price(
        &self,
        app: AccountId,
        endpoint: &str,
        price: &tally::Price,
    ) -> Result<(), ApiError> {
        let entry = Entry::Price {
            app,
            endpoint: endpoint.to_owned(),
            price: price.clone(),
        };
        self.record(entry).await
    }

    /// Every recorded price.
    pub fn prices(&self) -> Vec<(AccountId, String, tally::Price)> {
        self.inner
            .read()
            .prices
            .iter()
            .map(|((a, e), p)| (*a, e.clone(), p.clone()))
            .collect()
    }

    /// The registry journals' queues: appended, not yet durable.
    pub fn durable_lag(&self) -> u64 {
        let Backend::Local {
            journal,
            idem_journal,
        } = &self.backend
        else {
            return 0;
        };
        let lag = |j: &Journal| j.last_seq().saturating_sub(j.durable().borrow().seq);
        lag(journal).saturating_add(lag(idem_journal))
    }

    /// The oldest idempotency journal record still needed (for tests of the trim; 0 for a
    /// shared registry).
    pub fn idempotency_first_seq(&self) -> u64 {
        match &self.backend {
            Backend::Local { idem_journal, .. } => idem_journal.first_seq(),
            Backend::Shared(_) => 0,
        }
    }
}

/// What a local registry in `data_dir` holds that a new shared one takes in (names, keys,
/// users, Syft transactions; not the start records, idempotency keys or legacy prices), with
/// the highest account id named and the highest key id.
fn local_entries(data_dir: &Path) -> Result<(Vec<Vec<u8>>, u64, u64), String> {
    let dir = data_dir.join("server");
    let mut kept = Vec::new();
    let (mut max_id, mut max_key) = (0, 0);
    if !dir.exists() {
        return Ok((kept, max_id, max_key));
    }
    let (journal, _) = Journal::open(JournalConfig::new(&dir), |_seq, payload| {
        let entry = decode(payload)?;
        match &entry {
            Entry::Name { id, .. } => max_id = max_id.max(id.0),
            Entry::Key(key) => max_key = max_key.max(key.id),
            Entry::KeyRevoked { .. }
            | Entry::User(_)
            | Entry::UserPassword { .. }
            | Entry::UserOrganization { .. }
            | Entry::Txn(_)
            | Entry::TxnResolved { .. } => {}
            _ => return Ok(()),
        }
        kept.push(payload.to_vec());
        Ok(())
    })
    .map_err(|e| format!("reading the local registry in {}: {e}", dir.display()))?;
    journal
        .close()
        .map_err(|e| format!("closing the local registry: {e}"))?;
    Ok((kept, max_id, max_key))
}

enum Step {
    Cached(Begin),
    Wait {
        op: OpId,
        seq: u64,
        /// Trim the idempotency journal before this seq.
        trim: Option<u64>,
    },
}

/// The largest answer kept for a key's retries.
const RESPONSE_BYTES_KEPT_MAX: usize = 16 * 1024;

/// The idempotency journal is trimmed at most this often.
const IDEMPOTENCY_TRIM_EVERY_MS: u64 = 60_000;

fn conflict(key: &str, field: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "idempotency_conflict",
        format!("Idempotency-Key {key:?} was used for a different request: {field} differs"),
    )
    .with("field", field)
}
