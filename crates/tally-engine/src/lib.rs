//! tally-engine: the actors that own tally's accounts.
//!
//! - One actor (a task) per resident account owns that account's state and handles its
//!   messages one at a time, draining its mailbox in batches: that is what makes "no
//!   overspend" structural, with no lock on any account (see `actor.rs`).
//! - Routing goes through a concurrent map (account → mailbox); a miss registers a mailbox and
//!   starts the actor, which loads the account on a blocking thread while messages queue. The
//!   supervisor task passivates idle accounts and the least recently used past a cap, and
//!   checkpoints; a failed actor's account reloads from the store on its next message.
//! - Everything is bounded: admission limits the requests in flight in the engine; each
//!   mailbox holds at most `account_inflight_max` messages; past either a request is answered
//!   `Overloaded` at once.
//! - A two-account change never waits for the counterparty: the store sums its leg, and the
//!   counterparty takes it in on its next turn.
//! - Durability is pipelined: the actor hands its record to the store and takes its next
//!   message; the caller's reply waits until the record is durable.
//!
//! The engine knows storage only through [`tally_store::Store`].

mod acks;
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
