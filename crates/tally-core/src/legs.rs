//! What other accounts' records did to an account: its received legs, summed.
//!
//! A two-account record is decided by one account and carries the other side as a [`Leg`]: the
//! credit of the app a commit pays, the debit of the funding account a funding draws on, the
//! debit of the app a refund takes back. The counterparty never decides a leg and may not refuse
//! one, so it needs only their sum: a store folds every leg into the counterparty's
//! [`LegTotals`] as it appends the record (commutative, so in any order), keeps the sums with the
//! journal point they cover, and an account takes in what arrived since it last looked with
//! [`crate::Account::absorb_legs`]. No account ever waits for, or locks, its counterparty.

use serde::{Deserialize, Serialize};

use crate::{AccountId, Leg, Record};

/// The sums of the legs an account received: every credit and every debit other accounts'
/// records carried to it, and the newest such record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LegTotals {
    /// Σ credited.
    pub credits: u128,
    /// Σ debited.
    pub debits: u128,
    /// The journal sequence number of the newest leg summed (0: none).
    pub last_seq: u64,
}

impl LegTotals {
    /// Adds one leg of record `seq`. Refused (and nothing added) if a sum would pass `u128`,
    /// which 2^64 records of the largest amount cannot reach: it means damage.
    pub fn add(&mut self, leg: Leg, seq: u64) -> Result<(), LegsError> {
        let (credits, debits) = match leg {
            Leg::Credit(_, amount) => (self.credits.checked_add(amount.wide()), Some(self.debits)),
            Leg::Debit(_, amount) => (Some(self.credits), self.debits.checked_add(amount.wide())),
        };
        match (credits, debits) {
            (Some(credits), Some(debits)) => {
                self.credits = credits;
                self.debits = debits;
                self.last_seq = self.last_seq.max(seq);
                Ok(())
            }
            _ => Err(LegsError::Overflow { seq }),
        }
    }

    /// What `self` holds beyond `earlier` (a sum taken before it): `None` if either sum went
    /// backwards, which sums of legs never do.
    pub fn since(&self, earlier: &LegTotals) -> Option<(u128, u128)> {
        Some((
            self.credits.checked_sub(earlier.credits)?,
            self.debits.checked_sub(earlier.debits)?,
        ))
    }
}

/// The leg a record carries and the account it goes to, if any.
pub fn leg_of(record: &Record) -> Option<(AccountId, Leg)> {
    record.leg().map(|leg| match leg {
        Leg::Credit(id, _) | Leg::Debit(id, _) => (id, leg),
    })
}

/// Why legs could not be summed or taken in: the sums are damaged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LegsError {
    /// A sum of legs would pass `u128` at record `seq`.
    #[error("the received legs' sum passes u128 at record {seq}")]
    Overflow {
        /// The record.
        seq: u64,
    },
    /// The sums an account took in are larger than the store's: the store lost legs the account
    /// had seen, or the account's snapshot is not this store's.
    #[error(
        "{account}'s received legs went backwards: it took in credits {} / debits {} through seq \
         {}, the store now sums credits {} / debits {} through seq {}",
        .taken.credits, .taken.debits, .taken.last_seq, .store.credits, .store.debits, .store.last_seq
    )]
    Behind {
        /// The account.
        account: AccountId,
        /// What it took in.
        taken: LegTotals,
        /// What the store sums now.
        store: LegTotals,
    },
    /// Taking the legs in would pass the account's `u128` totals.
    #[error("{account}'s totals pass u128 taking in its received legs")]
    TotalsOverflow {
        /// The account.
        account: AccountId,
    },
}
