//! tally-engine: the actors that own tally's accounts.
//!
//! - One [ractor] actor per resident account handles that account's requests one at a time:
//!   that is what makes "no overspend" structural. Its state is a slot holding the account.
//! - Routing goes through a concurrent map held by the [`Tally`] handle (spawn-and-load on a
//!   miss), never through one mailbox. The supervisor supervises: it reloads failed accounts
//!   and passivates idle ones under a cap on resident accounts.
//! - Admission is bounded before the (unbounded) ractor mailboxes: a global limit on requests
//!   in flight and a per-account one; past them a request is answered `Overloaded` at once.
//! - Durability is pipelined: the actor hands its record to the store and takes its next
//!   message; the caller's reply waits until the record is durable.
//!
//! The engine knows storage only through [`tally_store::Store`].

mod actor;
mod clock;
mod config;
mod error;
mod events;
mod grants;
mod guard;
mod handle;
mod mailbox;
mod metering;
mod policy;
mod shared;
mod supervisor;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::EngineConfig;
pub use error::Error;
pub use events::{Event, EventKind, Missed, Subscription, EVENTS_QUEUE};
pub use grants::GrantRequest;
pub use guard::HoldGuard;
pub use handle::{
    Committed, Extended, HistoryPage, ReserveRequest, Settled, Tally, HISTORY_PAGE_MAX,
    RESIDENT_WAIT_MS, SUBMIT_BATCH_MAX,
};
pub use metering::{Affordable, BalanceHistory, BalancePoint, MeterGuard};
pub use policy::LimitScope;
pub use tally_core::{
    AccountPolicy, Allowance, AllowanceState, Grant, GrantId, Grants, PolicySetting, RateLimit,
    TokenRate,
};
