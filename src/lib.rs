//! # tally
//!
//! An accounting engine for services that sell metered work: reserve funds before the work,
//! commit the actual cost only if it succeeded, void or refund otherwise. Exact to the microcent
//! (integers only), impossible to overspend (one actor per account decides, one request at a
//! time), and nothing is acknowledged before it is durable.
//!
//! This crate is the facade: it re-exports the embedding API of [`tally_engine`], the domain
//! types of [`tally_core`] and the stores of [`tally_store`].
//!
//! ```
//! use std::time::Duration;
//! use tally::{AccountId, AccountSpec, OpId, ReserveRequest, Tally};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tally::Error> {
//! let tally = Tally::in_memory().await?;
//! let (bank, app, user) = (AccountId(1), AccountId(2), AccountId(3));
//! tally.open_account(bank, AccountSpec::funding()).await?;
//! tally.open_account(app, AccountSpec::revenue()).await?;
//! tally.open_account(user, AccountSpec::user()).await?;
//!
//! // $1.00 = 100,000,000 µ¢
//! tally.fund(OpId(1), user, bank, 100_000_000).await?;
//!
//! // Hold an estimate, do the work, commit what it actually cost.
//! let request = ReserveRequest::new(user, app, 2_000_000).timeout(Duration::from_secs(30));
//! let mut hold = tally.hold(OpId(2), request).await?;
//! let committed = hold.commit(OpId(3), 1_400).await?;
//! assert_eq!(committed.amount_posted.get(), 1_400);
//!
//! assert_eq!(tally.balance(user).await?.available, 100_000_000 - 1_400);
//! assert!(tally.audit().await?.ok());
//! # Ok(())
//! # }
//! ```

/// The tier (0-based) a period's count has reached.
pub use tally_core::period::tier_reached;
pub use tally_core::{
    audit, Account, AccountFlags, AccountId, AccountKind, AccountSpec, Amount, AuditReport,
    Auditor, Balance, Change, Command, Hold, HoldId, HoldStatus, Limits, OpId, Origin, Outcome,
    Posting, PostingId, Record, Request, SpendCaps, SpendToken, Timestamp, TokenId, Violation,
    CHECK_MINIMUM_DEFAULT, DAY_MS,
};
pub use tally_core::{
    parse_cents, parse_usd, Limiter, Meter, Price, PricingError, Rate, Tier, Usage, UsageField,
    MICROCENTS_PER_CENT, MICROCENTS_PER_USD,
};
pub use tally_core::{
    AccountPolicy, Period, PeriodStep, PeriodUse, PolicySetting, TierMode, TokenRate,
};
pub use tally_core::{
    Allowance, AllowanceState, Grant, GrantId, GrantShares, GRANTS_MAX, GRANT_LABEL_MAX,
};
pub use tally_core::{
    Granularity, UsageBook, UsageConfig, UsageKey, UsageQuery, UsageReport, UsageTotals,
};
pub use tally_core::{LegTotals, LegsError};
pub use tally_engine::{
    Affordable, BalanceHistory, BalancePoint, Clock, Committed, EngineConfig, Error, Event,
    EventKind, Extended, GrantRequest, Grants, HistoryPage, HoldGuard, LimitScope, ManualClock,
    MeterGuard, Missed, RateLimit, ReserveRequest, Settled, Subscription, SystemClock, Tally,
    EVENTS_QUEUE, HISTORY_PAGE_MAX, SUBMIT_BATCH_MAX,
};
/// The local journal's running totals ([`Store::journal_stats`]).
pub use tally_store::journal::JournalStats;
pub use tally_store::journal::SyncMode;
/// The shard an account belongs to in a [`PgStore`] of so many shards.
pub use tally_store::shard_of;
pub use tally_store::{
    verify_trail, DurableConfig, DurablePoint, DurableRecovery, DurableStore, HistoryBase,
    HistoryEntry, MemStore, PgConfig, PgRecovery, PgStore, Pruned, SnapshotStats, Store,
    StoreError, TrailProblem, TrailReport, PG_LEASE_TTL, PG_RENEW_EVERY, PG_SHARDS,
};

/// The domain errors of the ledger (`tally::Error::Ledger` wraps them).
pub use tally_core::Error as LedgerError;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
