//! Identifiers and time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An account's identifier, chosen by the caller (map your user ids, emails or app names to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub u64);

/// A caller-chosen operation id: the idempotency key of a write (a UUID fits).
///
/// Keys are scoped to the account whose actor executes the operation (the user account for
/// fund, reserve, commit, void, charge and refund; the source account of a transfer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u128);

/// A hold: the account that holds the funds and that account's sequence number for it, so a hold
/// id routes to its account without any look-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HoldId {
    /// The account whose funds are held.
    pub account: AccountId,
    /// The account's sequence number of the hold (unique within the account).
    pub seq: u64,
}

/// A posting: money that a commit or charge moved from a user account to a revenue account. A
/// refund names the posting it reverses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PostingId {
    /// The account that paid.
    pub account: AccountId,
    /// The account's sequence number of the posting.
    pub seq: u64,
}

/// A spend token: a user's authorization for one app to hold or charge up to a cap, until an
/// expiry. It lives in the user's account (the account and that account's sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenId {
    /// The user account whose funds it lets the app spend.
    pub account: AccountId,
    /// The account's sequence number of the token.
    pub seq: u64,
}

/// Milliseconds since the Unix epoch, as read from the engine's (injectable) clock.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + ms`, saturating at the far future.
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

macro_rules! display_pair {
    ($t:ty, $prefix:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}/{}"), self.account.0, self.seq)
            }
        }
    };
}
display_pair!(HoldId, "hold:");
display_pair!(PostingId, "posting:");
display_pair!(TokenId, "token:");

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account:{}", self.0)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op:{:032x}", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
