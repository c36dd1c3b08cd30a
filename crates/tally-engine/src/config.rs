//! Engine configuration: every queue and map has its bound here.

use std::sync::Arc;
use std::time::Duration;

use tally_core::Limits;

use crate::{Clock, SystemClock};

/// How an engine runs. Every field is a bound, with what happens when it is reached.
#[derive(Clone)]
pub struct EngineConfig {
    /// Per-account limits (holds, retention, field sizes).
    pub limits: Limits,
    /// Requests in flight in the whole engine, waiting for durability included. One more is
    /// answered `Overloaded { scope: "engine" }` at once. This also bounds the journal's queue.
    pub inflight_max: usize,
    /// Messages queued in one account's mailbox (its actor's bound). One more is
    /// `Overloaded { scope: "account" }` at once.
    pub account_inflight_max: usize,
    /// Accounts resident (with an actor and state in memory). Past it the least recently used
    /// idle accounts are passivated (snapshot saved, actor stopped); activating one more while
    /// `resident_max + resident_max / 2` are resident is `Overloaded { scope: "resident accounts" }`.
    pub resident_max: usize,
    /// An account untouched this long is passivated.
    pub idle_passivate_after: Duration,
    /// How often the supervisor looks for idle accounts.
    pub supervisor_tick: Duration,
    /// How often changed resident accounts are snapshotted and the journal trimmed (checked on
    /// each supervisor tick). Longer: less snapshot work; shorter: a shorter journal to replay.
    pub checkpoint_interval: Duration,
    /// The clock (inject a [`crate::ManualClock`] in tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            inflight_max: 65_536,
            account_inflight_max: 4_096,
            resident_max: 100_000,
            idle_passivate_after: Duration::from_secs(60),
            supervisor_tick: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("limits", &self.limits)
            .field("inflight_max", &self.inflight_max)
            .field("account_inflight_max", &self.account_inflight_max)
            .field("resident_max", &self.resident_max)
            .field("idle_passivate_after", &self.idle_passivate_after)
            .field("supervisor_tick", &self.supervisor_tick)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish_non_exhaustive()
    }
}
