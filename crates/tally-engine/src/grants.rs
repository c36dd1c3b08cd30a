//! Prepaid credit grants through the engine: issue one, set a recurring allowance, read an
//! account's grants (the rules are tally-core's, see [`tally_core::Grant`]).
//!
//! What the engine adds is time: when a grant expires, the account's actor gives what it has
//! free back to its funding account (a journaled `GrantExpired`, and a `grant.expired` event),
//! and at the start of each period of an account's allowance it issues that period's grant
//! (`grant.issued`). Both run on the account's expiry timer, and before any request or read
//! of the account is decided, so a request never sees an allowance that should have been
//! issued, and no decision ever draws on an expired grant (swept or not).

use std::time::Duration;

use tally_core::{
    AccountId, Allowance, Amount, Command, GrantId, Grants, OpId, Outcome, Timestamp,
};

use crate::mailbox::{Answer, Query};
use crate::{Error, Tally};

/// A grant to issue (see [`Tally::grant`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRequest {
    /// The funding account it comes from.
    pub from: AccountId,
    /// The amount, in the ledger unit.
    pub amount: u64,
    /// Lower numbers are consumed first.
    pub priority: u32,
    /// How long it lasts (`None`: it never expires).
    pub ttl: Option<Duration>,
    /// What it is for (at most [`tally_core::GRANT_LABEL_MAX`] bytes).
    pub label: String,
}

impl Tally {
    /// Issues a prepaid credit grant to `account` (a user) from a funding account: consumed
    /// before the account's general balance, lowest priority number first, then earliest
    /// expiry; what it has left when it expires goes back to the funding account.
    pub async fn grant(
        &self,
        op: OpId,
        account: AccountId,
        grant: GrantRequest,
    ) -> Result<(GrantId, Option<Timestamp>), Error> {
        let ttl_ms = grant.ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let command = Command::Grant {
            from: grant.from,
            amount: Amount::new(grant.amount)?,
            priority: grant.priority,
            ttl_ms,
            label: grant.label,
        };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::GrantIssued { grant, expires_at } => Ok((grant, expires_at)),
            other => Err(crate::error::unexpected(other)),
        }
    }

    /// Sets (or, with `None`, removes) `account`'s recurring allowance: a grant of its amount
    /// issued by the engine at the start of each of its periods (the current one at once),
    /// expiring at the period's end. A new amount for the same period starts with the next
    /// period; another period issues at once. Removing it leaves issued grants as they are.
    pub async fn set_allowance(
        &self,
        op: OpId,
        account: AccountId,
        allowance: Option<Allowance>,
    ) -> Result<(), Error> {
        let command = Command::SetAllowance { allowance };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::AllowanceSet => Ok(()),
            other => Err(crate::error::unexpected(other)),
        }
    }

    /// An account's grants and allowance, and how its available balance splits, now (what is
    /// due is run first: an expired grant's sweep, the period's allowance).
    pub async fn grants(&self, account: AccountId) -> Result<Grants, Error> {
        let now = self.now();
        match self.read(account, || Query::Grants(now)).await? {
            Answer::Grants(grants) => Ok(*grants),
            _ => Err(Error::Internal {
                reason: "the account answered another query".into(),
            }),
        }
    }
}
