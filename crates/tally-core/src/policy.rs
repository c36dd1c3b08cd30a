//! What a service allows an account: a spend cap per UTC day, rate limits, a low-balance
//! threshold. Ledger state: each setting is a journaled record made by the account it belongs
//! to ([`crate::Command::SetPolicy`]), so it is versioned, in the audit trail and in the
//! account's history, and survives restarts with the account's snapshot.
//!
//! On a user account a setting applies to that user (over all apps); on an app's revenue
//! account, the rate limit applies to all its users together and the spend cap to each user
//! of it. A funding account has no policy.

use serde::{Deserialize, Serialize};

use crate::{Amount, Error, Timestamp};

/// A token bucket's rate: `per_second` units per second, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRate {
    /// Units added per second; at least 1 (a bucket that never refilled would, emptied at
    /// each restart, refuse its scope for good).
    pub per_second: u64,
    /// Units the bucket holds at most; at least 1.
    pub burst: u64,
}

/// A rate limit: on requests per second, on cost (ledger units) per second, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests (reserves and charges).
    pub requests: Option<TokenRate>,
    /// Cost: the amounts held or charged.
    pub cost: Option<TokenRate>,
}

impl RateLimit {
    /// Whether it limits anything.
    pub fn is_set(&self) -> bool {
        self.requests.is_some() || self.cost.is_some()
    }
}

/// One setting of an account's policy; `None` (or a rate limit without rates) removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicySetting {
    /// The most the account (or, on an app, each of its users) may spend per UTC day: posted
    /// during the day plus held now.
    SpendCapPerDay(Option<Amount>),
    /// The rate limit (replacing the one before).
    RateLimit(RateLimit),
    /// A `balance.low` event when the available balance falls below this.
    LowBalance(Option<Amount>),
}

impl PolicySetting {
    /// Refuses a setting no account may have: a rate with a zero burst (it could never let a
    /// request through) or refilling zero per second (its bucket starts empty after a restart
    /// and would never let one through again).
    pub fn check(&self) -> Result<(), Error> {
        if let PolicySetting::RateLimit(limit) = self {
            for (what, rate) in [("requests", limit.requests), ("cost", limit.cost)] {
                let Some(rate) = rate else { continue };
                let problem = if rate.burst == 0 {
                    "burst is 0: it would refuse every request"
                } else if rate.per_second == 0 {
                    "per_second is 0: an empty bucket would never refill"
                } else {
                    continue;
                };
                return Err(Error::InvalidPolicy {
                    reason: format!("the {what} rate's {problem}"),
                });
            }
        }
        Ok(())
    }

    /// A stable name for the audit trail and the API.
    pub fn name(&self) -> &'static str {
        match self {
            PolicySetting::SpendCapPerDay(_) => "spend_cap_per_day",
            PolicySetting::RateLimit(_) => "rate_limit",
            PolicySetting::LowBalance(_) => "low_balance",
        }
    }
}

/// An account's policy: every setting as last set, the version of the newest change (versions
/// count up per account from 1; 0: never set) and when it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPolicy {
    /// See [`PolicySetting::SpendCapPerDay`].
    pub spend_cap_per_day: Option<Amount>,
    /// See [`PolicySetting::RateLimit`].
    pub rate_limit: RateLimit,
    /// See [`PolicySetting::LowBalance`].
    pub low_balance: Option<Amount>,
    /// The version of the newest change.
    pub version: u64,
    /// When the newest change was made.
    pub set_at: Timestamp,
}

impl AccountPolicy {
    /// The policy with `setting` made as `version` at `at`.
    pub fn apply(&mut self, setting: &PolicySetting, version: u64, at: Timestamp) {
        match setting {
            PolicySetting::SpendCapPerDay(cap) => self.spend_cap_per_day = *cap,
            PolicySetting::RateLimit(limit) => self.rate_limit = *limit,
            PolicySetting::LowBalance(threshold) => self.low_balance = *threshold,
        }
        self.version = self.version.max(version);
        self.set_at = at;
    }
}
