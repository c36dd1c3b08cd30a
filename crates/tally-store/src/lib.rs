//! tally-store: where tally's state lives between requests and across restarts.
//!
//! The engine knows storage only through the [`Store`] trait:
//! - [`Store::append`] queues one journal [`Record`] and returns its sequence number at once; it
//!   never waits for the disk. The journal is FIFO: sequence numbers are handed out in the order
//!   records are queued, and the durable point only moves forward.
//! - [`Store::durable`] watches the durable point. A caller is acknowledged only once the
//!   durable point has reached its record's sequence number; if making a group durable fails the
//!   point carries the failure and every later append is refused (fail-stop).
//! - [`Store::load`] gives an account's state as the journal says it is: the newest snapshot plus
//!   every record of its own after it, with the legs other accounts' records carried to it
//!   ([`Store::legs`], summed by the store at append) taken in. [`Store::save`] stores a snapshot (when an
//!   account is passivated); snapshots are a cache, the journal is the truth.
//!
//! [`MemStore`] keeps all of it in memory: for tests, for embedding without durability, and as
//! the engine's own ceiling in benchmarks. The [`journal`] module is the durable append-only log.
//! Its records are hash-chained into a tamper-evident audit trail: [`verify_trail`] (on a data
//! directory), [`DurableStore::verify_trail`] and [`MemStore::verify_trail`] check it; the
//! [`trail`] module says what it proves and what it cannot.

pub mod codec;
mod durable;
pub mod journal;
mod legs;
mod mem;
mod open_dirs;
mod pg;
#[cfg(feature = "testing")]
pub mod pg_testing;
mod projection;
pub mod salvage;
mod snapdb;
pub mod trail;

use std::sync::Arc;

use tally_core::{Account, AccountId, AccountSpec, Record, UsageQuery, UsageReport, UsageTotals};

pub use durable::{DurableConfig, DurableRecovery, DurableStore, Pruned, SnapshotStats};
pub use journal::{TrailProblem, TrailReport};
pub use mem::MemStore;
pub use pg::{
    shard_of, PgConfig, PgRecovery, PgStore, PG_GROUP_MAX, PG_LEASE_TTL, PG_QUEUE_MAX,
    PG_RENEW_EVERY, PG_SHARDS, PG_SHARDS_MAX,
};
pub use trail::verify_trail;

/// The durable point of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurablePoint {
    /// Every record with a sequence number up to this one is durable.
    pub seq: u64,
    /// Set once making a group durable failed: the store is fail-stopped and acknowledges
    /// nothing more until reopened.
    pub failed: Option<Arc<str>>,
}

/// Why a store refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The queue of records not yet durable is at its bound; try again shortly.
    #[error("journal queue full: {queued} records waiting, limit {limit}")]
    Full {
        /// Records waiting.
        queued: usize,
        /// The bound.
        limit: usize,
    },
    /// The store is fail-stopped after a write or sync failed.
    #[error("storage failed: {0}")]
    Failed(Arc<str>),
    /// Another process, or another open store in this one, owns the data directory.
    #[error("data directory {path} is in use: {holder}", path = .path.display())]
    Locked {
        /// The data directory.
        path: std::path::PathBuf,
        /// Who holds it: "another store in this process", or another process (with the pid
        /// its lock file names).
        holder: Arc<str>,
    },
    /// The store was closed; nothing more is read or written.
    #[error("the store is closed")]
    Closed,
    /// What a reader wanted was trimmed from the journal while it read; read again.
    #[error("the journal was trimmed under the reader")]
    Trimmed,
    /// A read or snapshot failed.
    #[error("storage error: {0}")]
    Io(Arc<str>),
    /// The stored data is not what was written (checksum, sequence or decoding failure).
    #[error("stored data is corrupt: {0}")]
    Corrupt(Arc<str>),
    /// The account's shard is not this node's (a store shared by several nodes, see
    /// [`PgStore`]): another node owns it, its lease is being taken over, or this node's lease
    /// lapsed. Nothing was read or written; retry, on the shard's owner.
    #[error("shard {shard} is not served by this node: {reason}")]
    NotOwner {
        /// The shard.
        shard: u16,
        /// Why (who owns it, or that the lease lapsed).
        reason: Arc<str>,
    },
}

/// One record of an account's history, with its journal sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The journal sequence number.
    pub seq: u64,
    /// The record.
    pub record: Record,
}

/// What pruning left of an account's history ([`Store::history_base`]): records up to
/// `pruned_through` are gone, and these are the totals they had summed to for the account, so
/// that a balance history continues exactly from the cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryBase {
    /// The last pruned record (0: nothing pruned).
    pub pruned_through: u64,
    /// Σ posted credits of the pruned records.
    pub credits_posted: u128,
    /// Σ posted debits of the pruned records.
    pub debits_posted: u128,
    /// Σ pending holds as of the cut.
    pub debits_pending: u128,
}

/// Durable state behind the engine. Implementations must be cheap to call from many threads.
pub trait Store: Send + Sync + 'static {
    /// Queues a record; returns its sequence number. Never waits for the disk.
    fn append(&self, record: &Record) -> Result<u64, StoreError>;

    /// A watch on the durable point.
    fn durable(&self) -> tokio::sync::watch::Receiver<DurablePoint>;

    /// The account limits it replays records with: an engine deciding under other limits
    /// would find its accounts rebuilt differently (keys forgotten at another count), so the
    /// engine refuses to open on a store whose limits differ from its own.
    fn limits(&self) -> &tally_core::Limits;

    /// Every account the store knows, with its specification (read once when the engine opens).
    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError>;

    /// Every account that has a policy (see [`tally_core::AccountPolicy`]), as of the records
    /// its snapshot or recovery covers (read once when the engine opens, which then follows the
    /// records it applies).
    fn policies(&self) -> Result<Vec<(AccountId, tally_core::AccountPolicy)>, StoreError>;

    /// An account's state as of the last record of its own appended, with every leg other
    /// accounts' records carried to it taken in, or `None` if it was never opened.
    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError>;

    /// The sums of the legs other accounts' records carried to `id` so far, every record
    /// appended included (see [`tally_core::legs`]): an account takes them in with
    /// [`Account::absorb_legs`]. Asked on every turn of a resident account, so it is answered
    /// from memory; a store shared by several nodes refuses with [`StoreError::NotOwner`] once
    /// `id`'s shard is no longer this node's, and the account's actor then stops.
    fn legs(&self, id: AccountId) -> Result<tally_core::LegTotals, StoreError>;

    /// An account the store knows that this process's engine may not have seen open (a store
    /// shared by several nodes: opened by another node after this one read
    /// [`Store::accounts`]). The default: every account is in [`Store::accounts`].
    fn find_account(&self, id: AccountId) -> Result<Option<AccountSpec>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// What is durable of an account, also of one whose shard another node serves (a store
    /// shared by several nodes): behind by what that node has not committed yet, and nothing
    /// is registered (the copy may not be written back). For reads that may be a moment old,
    /// such as an app's price catalog; [`Store::load`] by default.
    fn peek(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.load(id)
    }

    /// Whether [`Store::find_account`] may know accounts [`Store::accounts`] did not list (a
    /// store shared by several nodes); `false` by default, and the engine then never asks.
    fn shares_directory(&self) -> bool {
        false
    }

    /// Stores a snapshot of an account (its `last_seq` says which records it covers). The
    /// engine saves only state that is durable up to its `last_seq`.
    fn save(&self, account: &Account) -> Result<(), StoreError>;

    /// Makes the saved snapshots durable, then drops the journal records that every snapshot
    /// covers (those older than the oldest record some account's snapshot does not cover yet).
    /// Returns how many journal files were removed.
    fn checkpoint(&self) -> Result<usize, StoreError>;

    /// Up to `limit` records that touched `id` (as the executing account or as a counterparty)
    /// with a sequence number above `after_seq`, oldest first. Only durable records are listed.
    fn history(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Usage and cost of the commits and charges appended so far, summed as `query` says (see
    /// [`tally_core::UsageBook`]). The store keeps the aggregates durable with the journal.
    fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError>;

    /// The `n` accounts that spent most in `query`'s range (at its app and endpoint, if set).
    fn top_users(
        &self,
        query: &UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, UsageTotals)>, StoreError>;

    /// Walks the hash-chained journal from its first record and reports every altered,
    /// inserted, removed or truncated record found (see [`trail`]). Reads the whole history:
    /// call it off the request path.
    fn verify_trail(&self) -> Result<TrailReport, StoreError>;

    /// The last durable record's sequence number and chain hash: publish it off the machine.
    fn trail_head(&self) -> (u64, journal::Chain);

    /// Closes the store: makes everything appended durable, releases its files and its data
    /// directory (a new store may open it as soon as this returns); every later call gets
    /// [`StoreError::Closed`]. Returns within a bounded time even when the disk fails.
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Removes the archived history before `before_seq` (see
    /// [`DurableStore::prune_history`]); the default (the in-memory store, which keeps no
    /// archive) refuses with [`StoreError::Io`] and changes nothing.
    fn prune_history(&self, before_seq: u64) -> Result<Pruned, StoreError> {
        let _ = before_seq;
        Err(StoreError::Io(
            "this store keeps no archived history to prune".into(),
        ))
    }

    /// Where pruned history ends and what it summed to for `id` (see [`HistoryBase`]); the
    /// default: nothing pruned.
    fn history_base(&self, id: AccountId) -> Result<HistoryBase, StoreError> {
        let _ = id;
        Ok(HistoryBase::default())
    }

    /// The journal's running totals, for metrics (`None` for a store without one).
    fn journal_stats(&self) -> Option<journal::JournalStats> {
        None
    }
}
