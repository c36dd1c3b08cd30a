//! The amount type: a non-negative integer in the ledger unit.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::Error;

/// An amount of money in the ledger unit (microcents by default: 1 USD = 100,000,000 µ¢).
///
/// Every amount fits in `i64` ([`Amount::MAX`] = 2^63 − 1), so it survives a round trip through
/// any store with signed 64-bit integers (PostgreSQL `bigint`) and `u128` account totals cannot
/// overflow in any realistic history; they are still checked. Arithmetic is checked: there is no
/// `Add` impl that could wrap.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// The largest amount one operation may carry: 2^63 − 1 (≈ 92 million USD in µ¢).
    pub const MAX: Amount = Amount(i64::MAX as u64);

    /// An amount, or [`Error::AmountTooLarge`] above [`Amount::MAX`] (`u64::MAX` included).
    pub fn new(value: u64) -> Result<Amount, Error> {
        if value > Self::MAX.0 {
            return Err(Error::AmountTooLarge {
                amount: value,
                max: Self::MAX.0,
            });
        }
        Ok(Amount(value))
    }

    /// An amount from a constant known to be in range (clamped to [`Amount::MAX`] otherwise).
    pub const fn from_const(value: u64) -> Amount {
        if value > Self::MAX.0 {
            Self::MAX
        } else {
            Amount(value)
        }
    }

    /// The value in the ledger unit.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether the amount is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or `None` past [`Amount::MAX`].
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0
            .checked_add(other.0)
            .filter(|v| *v <= Self::MAX.0)
            .map(Amount)
    }

    /// `self − other`, or `None` below zero.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self × factor`, or `None` past [`Amount::MAX`].
    pub fn checked_mul(self, factor: u64) -> Option<Amount> {
        self.0
            .checked_mul(factor)
            .filter(|v| *v <= Self::MAX.0)
            .map(Amount)
    }

    /// The amount widened for sums.
    pub const fn wide(self) -> u128 {
        self.0 as u128
    }
}

impl TryFrom<u64> for Amount {
    type Error = Error;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Amount::new(value)
    }
}

impl From<Amount> for u64 {
    fn from(a: Amount) -> u64 {
        a.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_max_is_rejected_with_the_limit() {
        assert_eq!(
            Amount::new(u64::MAX),
            Err(Error::AmountTooLarge {
                amount: u64::MAX,
                max: i64::MAX as u64
            })
        );
        assert_eq!(Amount::new(i64::MAX as u64), Ok(Amount::MAX));
    }

    #[test]
    fn arithmetic_is_checked_at_both_ends() {
        let cases: &[(u64, u64, Option<u64>, Option<u64>)] = &[
            (1, 2, Some(3), None),
            (5, 5, Some(10), Some(0)),
            (i64::MAX as u64, 1, None, Some(i64::MAX as u64 - 1)),
            (0, 0, Some(0), Some(0)),
        ];
        for &(a, b, sum, diff) in cases {
            let (a, b) = (Amount::from_const(a), Amount::from_const(b));
            assert_eq!(a.checked_add(b).map(Amount::get), sum, "{a} + {b}");
            assert_eq!(a.checked_sub(b).map(Amount::get), diff, "{a} - {b}");
        }
        assert_eq!(Amount::MAX.checked_mul(2), None);
        assert_eq!(
            Amount::from_const(7).checked_mul(3),
            Some(Amount::from_const(21))
        );
    }
}
