//! The bounds every account lives within.

use serde::{Deserialize, Serialize};

/// Per-account limits. Each one says what happens when it is reached; the defaults keep a quiet
/// account's memory small and a busy one's bounded.
///
/// The pruning limits (`*_retained`, `idempotency_*`) are applied while records are applied, from
/// the records' own timestamps, so replaying a journal with the same limits rebuilds the same
/// state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Pending holds one account may have at once; one more reserve is `TooManyHolds`.
    pub holds_pending_max: usize,
    /// Resolved (posted, voided, expired) holds kept for look-up and for precise errors on a
    /// second commit; older ones are forgotten and then answer `UnknownHold`.
    pub holds_resolved_retained: usize,
    /// Postings kept refundable per account; a refund of an older one is `UnknownPosting`.
    pub postings_retained: usize,
    /// Idempotency keys remembered per account (the oldest is forgotten first) ...
    pub idempotency_keys_max: usize,
    /// ... and for how long (ms). Keys past either bound are forgotten when the account next
    /// makes a change; a retry after that is executed as a new request.
    pub idempotency_retention_ms: u64,
    /// Shortest hold timeout (ms).
    pub hold_timeout_ms_min: u64,
    /// Longest hold timeout (ms).
    pub hold_timeout_ms_max: u64,
    /// Longest endpoint name (bytes).
    pub endpoint_bytes_max: usize,
    /// Longest metadata (bytes).
    pub metadata_bytes_max: usize,
    /// Longest part of a request's origin: service, app or user (bytes).
    pub origin_bytes_max: usize,
    /// Live (neither expired nor revoked) spend tokens one account may have; one more is
    /// `TooManyTokens`.
    pub tokens_max: usize,
    /// Longest spend-token lifetime (ms).
    pub token_ttl_ms_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            holds_pending_max: 10_000,
            holds_resolved_retained: 1_024,
            postings_retained: 4_096,
            idempotency_keys_max: 10_000,
            idempotency_retention_ms: 24 * 60 * 60 * 1000,
            hold_timeout_ms_min: 1,
            hold_timeout_ms_max: 7 * 24 * 60 * 60 * 1000,
            endpoint_bytes_max: 128,
            metadata_bytes_max: 1_024,
            origin_bytes_max: 128,
            tokens_max: 1_000,
            token_ttl_ms_max: 366 * 24 * 60 * 60 * 1000,
        }
    }
}
