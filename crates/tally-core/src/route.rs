//! Which accounts a command touches, so the engine can lock them in a fixed order.

use crate::{Account, AccountId, Command};

impl Account {
    /// The other account whose leg `command` would change, if it succeeds: the funding account of
    /// a fund, the app of a charge, commit, settlement or refund, the target of a transfer. `None` for
    /// reserve, extend and void (one account only), for a hold or posting this account does not have,
    /// and for a transfer to itself (which is refused).
    pub fn leg_counterparty(&self, command: &Command) -> Option<AccountId> {
        let other = match command {
            Command::Fund { from, .. }
            | Command::UpdateFunding { from, .. }
            | Command::Grant { from, .. } => Some(*from),
            Command::Charge { app, .. } => Some(*app),
            Command::Transfer { to, .. } => Some(*to),
            Command::Commit { hold, .. }
            | Command::Settle { hold, .. }
            | Command::Finish { hold, .. }
            | Command::Progress { hold, .. }
            | Command::CommitEstimate { hold } => self
                .holds
                .get(&hold.seq)
                .filter(|_| hold.account == self.id)
                .map(|h| h.app),
            Command::Refund { posting, .. } | Command::Correct { posting, .. } => self
                .postings
                .get(&posting.seq)
                .filter(|_| posting.account == self.id)
                .map(|p| p.app),
            Command::Reserve { .. }
            | Command::ReserveMetered { .. }
            | Command::SetPrice { .. }
            | Command::Void { .. }
            | Command::Extend { .. }
            | Command::IssueToken { .. }
            | Command::RevokeToken { .. }
            | Command::SetPolicy { .. }
            | Command::SetAllowance { .. } => None,
        };
        other.filter(|id| *id != self.id)
    }
}

impl Account {
    /// The outcome and journal sequence number of an operation this account executed, if it
    /// still remembers the operation id (see [`crate::Limits::idempotency_keys_max`]).
    pub fn remembered(&self, op: crate::OpId) -> Option<(crate::Outcome, u64)> {
        self.remembered.get(&op).map(|r| (r.outcome, r.seq))
    }
}
