//! Typed domain errors. A rejected request changes nothing.

use crate::{AccountId, HoldId, HoldStatus, OpId, PostingId, Timestamp, TokenId};

/// Why the ledger refused a request. Every variant names the account, hold or posting concerned
/// and the amounts and limit involved; a request that fails leaves every account unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An amount that must be positive was zero.
    #[error("{field} must be greater than zero")]
    ZeroAmount {
        /// The field that was zero.
        field: &'static str,
    },
    /// An amount above the per-operation maximum (2^63 − 1), `u64::MAX` included.
    #[error("amount {amount} exceeds the per-operation maximum {max}")]
    AmountTooLarge {
        /// The amount given.
        amount: u64,
        /// The largest amount allowed.
        max: u64,
    },
    /// Not enough available funds.
    #[error("insufficient funds in {account}: {requested} requested, {available} available")]
    InsufficientFunds {
        /// The account debited.
        account: AccountId,
        /// Available = credits − debits − pending + credit limit, at the time of the request.
        available: i128,
        /// The amount requested.
        requested: u64,
    },
    /// An account total would pass `u128::MAX`.
    #[error("{field} of {account} would overflow")]
    Overflow {
        /// The account.
        account: AccountId,
        /// The total that would overflow.
        field: &'static str,
    },
    /// No such account.
    #[error("{account} does not exist")]
    UnknownAccount {
        /// The account named.
        account: AccountId,
    },
    /// Opening an account that exists with a different specification.
    #[error("{account} already exists with a different {field}")]
    AccountExists {
        /// The account.
        account: AccountId,
        /// The first field that differs.
        field: &'static str,
    },
    /// The account is of the wrong kind for this operation.
    #[error("{account} is a {actual} account; this needs {expected}")]
    WrongAccountKind {
        /// The account.
        account: AccountId,
        /// Its kind.
        actual: &'static str,
        /// What the operation needs.
        expected: &'static str,
    },
    /// A transfer from an account to itself.
    #[error("{account} cannot transfer to itself")]
    SameAccount {
        /// The account.
        account: AccountId,
    },
    /// No such hold (never created, or resolved long enough ago to be forgotten).
    #[error("{hold} does not exist")]
    UnknownHold {
        /// The hold named.
        hold: HoldId,
    },
    /// The hold was already posted or voided.
    #[error("{hold} is already {status}")]
    HoldAlreadyResolved {
        /// The hold.
        hold: HoldId,
        /// How it was resolved.
        status: HoldStatus,
    },
    /// The hold timed out before it was committed; its funds were released.
    #[error("{hold} expired at {expired_at}")]
    HoldExpired {
        /// The hold.
        hold: HoldId,
        /// When it expired.
        expired_at: Timestamp,
    },
    /// A commit above the amount held.
    #[error("commit of {requested} exceeds the {held} held by {hold}")]
    CommitExceedsHold {
        /// The hold.
        hold: HoldId,
        /// The amount held.
        held: u64,
        /// The amount requested.
        requested: u64,
    },
    /// One more pending hold than the account may have.
    #[error("{account} already has {limit} pending holds")]
    TooManyHolds {
        /// The account.
        account: AccountId,
        /// The limit.
        limit: usize,
    },
    /// No such posting (never made, or older than the retained postings).
    #[error("{posting} does not exist or is no longer refundable")]
    UnknownPosting {
        /// The posting named.
        posting: PostingId,
    },
    /// A refund above what remains refundable of the posting.
    #[error("refund of {requested} exceeds the {refundable} still refundable of {posting}")]
    RefundExceedsPosting {
        /// The posting.
        posting: PostingId,
        /// What remains refundable.
        refundable: u64,
        /// The amount requested.
        requested: u64,
    },
    /// The operation id was used before for a request with different content.
    #[error("{op} was used for a different request: {field} differs")]
    IdempotencyConflict {
        /// The reused operation id.
        op: OpId,
        /// The first field that differs (`operation` when it was another kind of request).
        field: &'static str,
    },
    /// A hold timeout outside the allowed range.
    #[error("hold timeout {timeout_ms} ms is outside {min_ms}..={max_ms} ms")]
    InvalidTimeout {
        /// The timeout given.
        timeout_ms: u64,
        /// The shortest allowed.
        min_ms: u64,
        /// The longest allowed.
        max_ms: u64,
    },
    /// A text field longer than its limit.
    #[error("{field} is {len} bytes; the limit is {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// `record_funding_update`'s optimistic check: `old` is not the account's total funding.
    #[error("funding of {account} is {current}, not {expected} as the update assumed")]
    FundingMismatch {
        /// The account.
        account: AccountId,
        /// Its total funding now.
        current: u128,
        /// What the update said it was.
        expected: u128,
    },
    /// A reserve or charge would take the day's spending past a cap. Spending is what was
    /// posted during the current UTC day plus what is held now.
    #[error("spend cap ({scope}) of {account} reached: {spent} spent or held today, {requested} requested, cap {cap}")]
    SpendCapExceeded {
        /// The account.
        account: AccountId,
        /// Which cap: `"account per day"` or `"app per user per day"`.
        scope: &'static str,
        /// The cap.
        cap: u64,
        /// Spent (posted today) and held now.
        spent: u128,
        /// The amount asked for.
        requested: u64,
    },
    /// No such spend token (never issued, or dropped after it expired or was revoked).
    #[error("{token} does not exist")]
    UnknownToken {
        /// The token named.
        token: TokenId,
    },
    /// The spend token was revoked.
    #[error("{token} was revoked")]
    TokenRevoked {
        /// The token.
        token: TokenId,
    },
    /// The spend token expired.
    #[error("{token} expired at {expired_at}")]
    TokenExpired {
        /// The token.
        token: TokenId,
        /// When it expired.
        expired_at: Timestamp,
    },
    /// The spend token does not cover this request: another app or endpoint.
    #[error("{token} is not valid for this {field}")]
    TokenScope {
        /// The token.
        token: TokenId,
        /// `app` or `endpoint`.
        field: &'static str,
    },
    /// The request would take the spend token past its cap.
    #[error("{token} caps spending at {cap}: {used} held or posted, {requested} requested")]
    TokenCapExceeded {
        /// The token.
        token: TokenId,
        /// Its cap.
        cap: u64,
        /// Held now plus posted with it.
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// One more live spend token than the account may have.
    #[error("{account} already has {limit} live spend tokens")]
    TooManyTokens {
        /// The account.
        account: AccountId,
        /// The limit.
        limit: usize,
    },
    /// A spend-token lifetime outside the allowed range.
    #[error("token lifetime {ttl_ms} ms is outside 1..={max_ms} ms")]
    InvalidTokenTtl {
        /// The lifetime given.
        ttl_ms: u64,
        /// The longest allowed.
        max_ms: u64,
    },
    /// The account was read back without its idempotency keys (a store's recovery does that)
    /// and cannot decide until they are loaded: a fault of the engine, never of the request.
    #[error("account {account} has its idempotency keys unloaded and cannot decide")]
    KeysNotLoaded {
        /// The account.
        account: AccountId,
    },
    /// The hold was not made by a metered reserve, so it has no price to finish it with.
    #[error("{hold} is not metered (it has no pinned price); commit an amount instead")]
    NotMetered {
        /// The hold.
        hold: HoldId,
    },
    /// A price the catalog cannot hold.
    #[error("invalid price: {reason}")]
    InvalidPrice {
        /// Why.
        reason: String,
    },
    /// The posting cannot be corrected so.
    #[error("{posting} cannot be corrected: {reason}")]
    InvalidCorrection {
        /// The posting.
        posting: PostingId,
        /// Why.
        reason: String,
    },
    /// The estimate was corrected already (a posting is corrected once).
    #[error("{posting} was corrected already; an estimate is corrected once")]
    AlreadyCorrected {
        /// The posting.
        posting: PostingId,
    },
    /// A policy setting no account may have.
    #[error("invalid policy: {reason}")]
    InvalidPolicy {
        /// Why.
        reason: String,
    },
    /// The app prices as many endpoints as it may.
    #[error("{account} prices {limit} endpoints already, the most an app may")]
    TooManyPrices {
        /// The app.
        account: AccountId,
        /// The limit.
        limit: usize,
    },
    /// A metered hold's parts settled by amount posted more than all its usage costs.
    #[error("{hold} settled {settled} already, more than its usage costs ({cost})")]
    SettledPastCost {
        /// The hold.
        hold: HoldId,
        /// What its parts posted.
        settled: u64,
        /// What its whole usage costs.
        cost: u64,
    },
    /// A grant or allowance the account cannot take.
    #[error("invalid grant: {reason}")]
    InvalidGrant {
        /// Why.
        reason: String,
    },
    /// The account has as many unexpired grants as it may.
    #[error("{account} has {limit} unexpired grants already, the most an account may")]
    TooManyGrants {
        /// The account.
        account: AccountId,
        /// The limit.
        limit: usize,
    },
}
