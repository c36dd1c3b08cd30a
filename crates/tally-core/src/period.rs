//! Volume tiers over a billing period: a price whose tiers apply to the units an account has
//! used at an app's endpoint in the current period ([`crate::Price::PeriodTiered`]).
//!
//! The period's running count is ledger state: the user's account keeps, per app and endpoint,
//! the period it is in, the units used in it and what it was charged in it
//! ([`PeriodUse`]), read and advanced in the same decision as the part or finish of a metered
//! hold, so concurrent calls are priced as if one after another. Each step posts
//! `ceil(F(units after)) − charged before`, where `F` is the exact (unrounded) cost of the
//! period's units: what a period charges in all is `F` of its units rounded up once, never a
//! unit twice.
//!
//! - **Graduated**: each unit is priced by the tier it falls in (`F` is the sum over tiers).
//! - **Volume**: every unit of the period is priced by the tier the total reaches. Crossing into
//!   a cheaper tier can make `F` smaller than what was charged: the difference goes back to the
//!   account at the crossing (a rebate from the app in the same record).
//!
//! Tiers must not get dearer as the count grows (each tier's rate at most the one before), so
//! a call's cost from an empty period bounds its cost at any count: that is what a metered
//! hold holds. The period rolls over at its boundary by the engine's clock (a decision after
//! it starts from zero).

use serde::{Deserialize, Serialize};

use crate::pricing::Exact;
use crate::{Amount, PricingError, Rate, Tier, Timestamp, DAY_MS};

/// The shortest period of [`Period::Every`] (ms): one minute.
pub const PERIOD_MS_MIN: u64 = 60_000;

/// How long a period is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A calendar month in UTC.
    Month,
    /// Periods of `length_ms` one after another from `anchor_ms` (for example 30 days from a
    /// subscription's start).
    Every {
        /// When one period starts (ms since the epoch).
        anchor_ms: u64,
        /// Its length in ms (at least one minute).
        length_ms: u64,
    },
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), and back.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, u32::try_from(m).unwrap_or(1))
}

/// Milliseconds since the epoch of a day number (saturating at 0 and `u64::MAX`).
fn ms_of_day(day: i64) -> u64 {
    u64::try_from(day).unwrap_or(0).saturating_mul(DAY_MS)
}

impl Period {
    /// The start (ms) of the period that contains `at`.
    pub fn start(&self, at: Timestamp) -> u64 {
        match *self {
            Period::Day => at.0 - at.0 % DAY_MS,
            Period::Month => {
                let day = i64::try_from(at.0 / DAY_MS).unwrap_or(i64::MAX);
                let (y, m) = civil_from_days(day);
                ms_of_day(days_from_civil(y, m, 1))
            }
            Period::Every {
                anchor_ms,
                length_ms,
            } => {
                let length = length_ms.max(1);
                if at.0 >= anchor_ms {
                    at.0 - (at.0 - anchor_ms) % length
                } else {
                    // Before the anchor: periods run back from it.
                    let back = (anchor_ms - at.0).div_ceil(length);
                    anchor_ms.saturating_sub(back.saturating_mul(length))
                }
            }
        }
    }

    /// The end (ms, exclusive) of the period that starts at `start`.
    pub fn end(&self, start: u64) -> u64 {
        match *self {
            Period::Day => start.saturating_add(DAY_MS),
            Period::Month => {
                let day = i64::try_from(start / DAY_MS).unwrap_or(i64::MAX);
                let (y, m) = civil_from_days(day);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                ms_of_day(days_from_civil(y, m, 1))
            }
            Period::Every { length_ms, .. } => start.saturating_add(length_ms.max(1)),
        }
    }
}

/// How period tiers price the period's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TierMode {
    /// Each unit by the tier it falls in.
    Graduated,
    /// All units by the tier the period's total reaches.
    Volume,
}

/// An account's use of one period-tiered price (an app's endpoint) in its current period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUse {
    /// The period's start (ms).
    pub start: u64,
    /// Units used in it.
    pub units: u64,
    /// What it was charged in it, rebates taken off.
    pub charged: u64,
    /// The catalog version of the price it was last charged at: a new version of the price
    /// keeps the period's count, and charges only the units after it at the new price
    /// (what was charged is taken as the new price's cost of the units before).
    #[serde(default)]
    pub version: u64,
}

/// One step of a period: what it posts (or gives back) and the period's use after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodStep {
    /// The use after the step (recorded: replay sets it).
    pub after: PeriodUse,
    /// What the step posts to the app.
    pub cost: Amount,
    /// What the app gives back (a volume tier crossed into a cheaper rate).
    pub rebate: Amount,
}

/// Adds `units` at `rate` (per `rate.per × scale` units) to an exact sum.
fn add(exact: &mut Exact, units: u64, rate: &Rate, scale: u128) -> Result<(), PricingError> {
    let per = u128::from(rate.per)
        .checked_mul(scale)
        .ok_or(PricingError::Overflow { what: "cost" })?;
    exact.add(units, rate.amount, per)
}

/// An exact sum rounded up, as a whole number of ledger units.
fn whole(exact: &Exact) -> Result<u64, PricingError> {
    exact.ceil().map(Amount::get)
}

/// Each tier's `(floor, ceiling)` in units; refuses tiers out of order or without an open last.
pub(crate) fn tier_bounds(tiers: &[Tier]) -> Result<Vec<(u64, u64)>, PricingError> {
    if tiers.is_empty() {
        return Err(PricingError::BadTiers);
    }
    let mut floor = 0u64;
    let mut bounds = Vec::with_capacity(tiers.len());
    for (i, tier) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        let ceiling = match tier.up_to {
            Some(up_to) if up_to > floor && !last => up_to,
            None if last => u64::MAX,
            _ => return Err(PricingError::BadTiers),
        };
        bounds.push((floor, ceiling));
        floor = ceiling;
    }
    Ok(bounds)
}

/// Whether no tier is dearer per unit than the one before it.
pub(crate) fn non_increasing(tiers: &[Tier]) -> bool {
    tiers.windows(2).all(|w| {
        // a/p ≥ b/q ⇔ a·q ≥ b·p (exact in u128).
        u128::from(w[0].rate.amount) * u128::from(w[1].rate.per)
            >= u128::from(w[1].rate.amount) * u128::from(w[0].rate.per)
    })
}

/// `F(units)` rounded up: the cost of a period's first `units` units.
pub(crate) fn period_total(
    tiers: &[Tier],
    mode: TierMode,
    units: u64,
    scale: u128,
) -> Result<u64, PricingError> {
    let bounds = tier_bounds(tiers)?;
    let mut exact = Exact::new();
    match mode {
        TierMode::Graduated => {
            for (tier, (floor, ceiling)) in tiers.iter().zip(&bounds) {
                let in_tier = units.min(*ceiling).saturating_sub(*floor);
                add(&mut exact, in_tier, &tier.rate, scale)?;
            }
        }
        TierMode::Volume => {
            // The tier the total reaches: the one whose range holds the last unit.
            let reached = bounds
                .iter()
                .position(|(floor, ceiling)| units > *floor && units <= *ceiling)
                .unwrap_or(0);
            if let Some(tier) = tiers.get(reached) {
                add(&mut exact, units, &tier.rate, scale)?;
            }
        }
    }
    whole(&exact)
}

/// The most `units` more can cost in a period from `before` (the use in the current period), for
/// a hold that ends before the period does: graduated, the step itself (marginal rates never
/// rise); volume, the units at the rate of the tier the count is in (a later count is never
/// dearer).
pub(crate) fn step_bound(
    tiers: &[Tier],
    mode: TierMode,
    scale: u128,
    before: PeriodUse,
    units: u64,
) -> Result<u64, PricingError> {
    match mode {
        TierMode::Graduated => {
            // The exact cost of the units from the count on, rounded up once.
            let (from, to) = (
                before.units,
                before
                    .units
                    .checked_add(units)
                    .ok_or(PricingError::Overflow { what: "units" })?,
            );
            let mut exact = Exact::new();
            for (tier, (floor, ceiling)) in tiers.iter().zip(tier_bounds(tiers)?) {
                let in_tier = to.min(ceiling).saturating_sub(from.max(floor));
                add(&mut exact, in_tier, &tier.rate, scale)?;
            }
            whole(&exact)
        }
        TierMode::Volume => {
            let at = tier_reached(tiers, before.units.max(1));
            let rate = tiers.get(at).ok_or(PricingError::BadTiers)?.rate;
            let mut exact = Exact::new();
            add(&mut exact, units, &rate, scale)?;
            whole(&exact)
        }
    }
}

/// The tier (0-based) a count of `units` has reached.
pub fn tier_reached(tiers: &[Tier], units: u64) -> usize {
    tier_bounds(tiers)
        .ok()
        .and_then(|b| {
            b.iter()
                .position(|(floor, ceiling)| units > *floor && units <= *ceiling)
        })
        .unwrap_or(0)
}

/// The step of `units` more in the period of `at`, from `before` (a use of another period
/// counts as none).
#[allow(clippy::too_many_arguments)]
pub(crate) fn period_step(
    tiers: &[Tier],
    mode: TierMode,
    period: &Period,
    scale: u128,
    before: PeriodUse,
    at: Timestamp,
    units: u64,
    version: u64,
) -> Result<PeriodStep, PricingError> {
    let start = period.start(at);
    let before = if before.start != start {
        PeriodUse {
            start,
            version,
            ..PeriodUse::default()
        }
    } else if before.version != version {
        // Another version of the price: the count goes on, re-based on this price.
        PeriodUse {
            charged: period_total(tiers, mode, before.units, scale)?,
            version,
            ..before
        }
    } else {
        before
    };
    let count = before
        .units
        .checked_add(units)
        .ok_or(PricingError::Overflow { what: "units" })?;
    let total = period_total(tiers, mode, count, scale)?;
    let amount = |v: u64| Amount::new(v).map_err(|_| PricingError::Overflow { what: "cost" });
    let (cost, rebate) = if total >= before.charged {
        (amount(total - before.charged)?, Amount::ZERO)
    } else {
        (Amount::ZERO, amount(before.charged - total)?)
    };
    Ok(PeriodStep {
        after: PeriodUse {
            start,
            units: count,
            charged: total,
            version,
        },
        cost,
        rebate,
    })
}
