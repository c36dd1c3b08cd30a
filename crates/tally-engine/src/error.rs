//! The engine's errors: the ledger's domain errors plus what admission and storage can say.

use std::sync::Arc;

/// Why a request failed. A request that fails changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The ledger refused the request (insufficient funds, unknown hold, ...).
    #[error(transparent)]
    Ledger(#[from] tally_core::Error),
    /// A price could not be applied exactly.
    #[error(transparent)]
    Pricing(tally_core::PricingError),
    /// No price is set for the app's endpoint.
    #[error("no price is set for endpoint {endpoint:?} of {app}")]
    NoPrice {
        /// The app.
        app: tally_core::AccountId,
        /// The endpoint.
        endpoint: String,
    },
    /// Admission is at a limit; retry later. Nothing was queued.
    #[error("overloaded: {scope} is at its limit of {limit} requests in flight")]
    Overloaded {
        /// Which limit: `engine` (all requests), `account` (one account), `journal` (records
        /// waiting to be made durable) or `resident accounts`.
        scope: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Making records durable failed; the engine is fail-stopped and refuses writes until it is
    /// reopened. The request was not acknowledged.
    #[error("storage failed; the engine refuses writes until reopened: {reason}")]
    StorageFailed {
        /// What the store said.
        reason: Arc<str>,
    },
    /// Another process, or another open engine in this one, owns the data directory.
    #[error("the data directory {path} is in use: {holder}", path = .path.display())]
    Locked {
        /// The data directory.
        path: std::path::PathBuf,
        /// What holds it (another store of this process, or another process and its pid).
        holder: Arc<str>,
    },
    /// Reading or snapshotting failed.
    #[error("storage error: {reason}")]
    Storage {
        /// What the store said.
        reason: Arc<str>,
    },
    /// The account's shard is not served by this node (a store shared by several nodes):
    /// another node owns it, or this node's lease on it lapsed. Nothing was changed; retry on
    /// the shard's owner (with the same op id, which makes the retry safe).
    #[error("shard {shard} is not served by this node: {reason}")]
    NotOwner {
        /// The shard.
        shard: u16,
        /// Why.
        reason: Arc<str>,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Shutdown,
    /// A bug: the engine reached a state it should not. Please report it.
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: Arc<str>,
    },
    /// A rate limit refused the request (nothing was taken from any bucket); it would fit after
    /// `retry_after_ms` (`u64::MAX`: never, the request is larger than the bucket).
    #[error("rate limited ({limit} of {scope:?}); retry after {retry_after_ms} ms")]
    RateLimited {
        /// Whose limit.
        scope: crate::LimitScope,
        /// Which rate: `requests` or `cost`.
        limit: &'static str,
        /// How long until the request would fit.
        retry_after_ms: u64,
    },
    /// A batch ([`crate::Tally::submit`]) larger than the engine takes; nothing executed.
    #[error("a batch of {len} requests is larger than the {max} one submit takes")]
    BatchTooLarge {
        /// Requests in the batch.
        len: usize,
        /// The most one batch may hold.
        max: usize,
    },
    /// The account's actor could not be reached after restarts (it keeps failing).
    #[error("{account} is unavailable: its actor stopped {attempts} times")]
    Unavailable {
        /// The account.
        account: tally_core::AccountId,
        /// Attempts made.
        attempts: u32,
    },
}

impl From<tally_store::StoreError> for Error {
    fn from(e: tally_store::StoreError) -> Self {
        use tally_store::StoreError as S;
        match e {
            S::Full { limit, .. } => Error::Overloaded {
                scope: "journal",
                limit,
            },
            S::Failed(reason) => Error::StorageFailed { reason },
            S::Locked { path, holder } => Error::Locked { path, holder },
            S::Closed => Error::Shutdown,
            S::Io(reason) | S::Corrupt(reason) => Error::Storage { reason },
            S::NotOwner { shard, reason } => Error::NotOwner { shard, reason },
            S::Trimmed => Error::Storage {
                reason: "the journal was trimmed under the reader".into(),
            },
        }
    }
}

/// The error for an outcome a call did not expect from its command (a bug).
pub(crate) fn unexpected(outcome: tally_core::Outcome) -> Error {
    Error::Internal {
        reason: format!("unexpected outcome {outcome:?}").into(),
    }
}
