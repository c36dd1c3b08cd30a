//! tally-core: the pure domain of the tally accounting engine.
//!
//! Everything here is deterministic and synchronous: no async, no I/O, no clocks, no
//! serialization format. The engine feeds it commands and the current time, and it answers with
//! a journal [`Record`] (what changed) or a typed [`Error`] (why nothing changed).
//!
//! The split follows event sourcing:
//! - [`Account::decide`] validates a [`Request`] against the account's state and returns the
//!   record it would produce, without mutating anything;
//! - [`Account::apply`] applies a record to the account that executed it. Infallible, so
//!   replaying a journal after a crash rebuilds exactly the state the accounts passed through.
//! - The other side of a two-account record (the credit to a revenue account, the debit of a
//!   funding account) is a [`Leg`]: a store sums each account's legs as [`LegTotals`] and the
//!   account takes them in with [`Account::absorb_legs`] (see [`legs`]), so no account waits
//!   for its counterparty. [`Account::apply_leg`] applies one leg directly, for models.
//!
//! Money is integers: an [`Amount`] is a `u64` in the ledger unit (microcents by default) no
//! larger than [`Amount::MAX`]; account totals are `u128`; every step is checked. No floats.

mod account;
mod afford;
mod amount;
mod audit;
mod command;
mod error;
mod grant;
mod ids;
mod ledger;
pub mod legs;
mod limits;
pub mod period;
mod policy;
mod pricing;
mod route;
mod usage;

/// The hash map of the hot per-record paths (an account's holds, postings and remembered
/// keys; the usage book): foldhash, seeded at random per process, several times cheaper per
/// look-up than the standard SipHash on these small keys.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use account::{
    signed_diff, Account, AccountFlags, AccountKind, AccountSpec, Balance, CatalogEntry, Estimate,
    Hold, HoldStatus, KeyWindow, Posting, RememberedKey, SpendToken, DAY_MS,
};
pub use afford::{Limiter, UsageField};
pub use amount::Amount;
pub use audit::{audit, AuditReport, Auditor, Violation};
pub use command::{
    funding_difference, Change, Command, Effect, FundingStep, Leg, Metered, Origin, Outcome,
    PinnedPrice, Record, Request,
};
pub use error::Error;
pub use grant::{
    Allowance, AllowanceState, Grant, GrantId, GrantShares, Grants, GRANTS_MAX, GRANT_LABEL_MAX,
};
pub use ids::{AccountId, HoldId, OpId, PostingId, Timestamp, TokenId};
pub use ledger::{Counterparty, DecideCtx, Decision, SpendCaps, PRICES_MAX, TIERS_MAX};
pub use legs::{LegTotals, LegsError};
pub use limits::Limits;
pub use period::{Period, PeriodStep, PeriodUse, TierMode};
pub use policy::{AccountPolicy, PolicySetting, RateLimit, TokenRate};
pub use pricing::{
    parse_cents, parse_usd, Meter, Price, PricingError, Rate, Tier, Usage, MICROCENTS_PER_CENT,
    MICROCENTS_PER_USD,
};

pub use usage::{
    Granularity, SampleKind, UsageBook, UsageChange, UsageConfig, UsageKey, UsageQuery,
    UsageReport, UsageSample, UsageTotals,
};

/// The default minimum of a funds check, in the ledger unit: 100 µ¢ (a tenth of a cent), as in
/// the seeds' `get_funding_allowed({ minimum = 100 })`.
pub const CHECK_MINIMUM_DEFAULT: Amount = Amount::from_const(100);
