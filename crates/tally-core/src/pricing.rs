//! Prices and cost models: what a unit of metered work costs, computed exactly.
//!
//! A [`Rate`] is an integer number of ledger units per `per` units of usage, so every price the
//! seeds quote is exact: 200 cents per 1,000,000 tokens is `Rate { amount: 200_000_000, per:
//! 1_000_000 }`, 400 µ¢ per character is `Rate { amount: 400, per: 1 }`. Decimal prices in USD
//! or cents are converted without loss ([`Rate::usd`], [`Rate::cents`], [`parse_usd`]); what
//! cannot be represented (too many digits, overflow, a fixed amount below 1 µ¢) is rejected.
//!
//! **Rounding rule** (the only one): a call's cost is the exact sum of its parts (each part is
//! `units × amount / per`, a fraction), rounded **up** once to a whole ledger unit. So 1 token at
//! 3 µ¢ per 1,000 tokens costs 1 µ¢, and 7 tokens at 200 cents per million cost exactly 1,400 µ¢.

use serde::{Deserialize, Serialize};

use crate::Amount;

/// Ledger units (µ¢) in one US dollar.
pub const MICROCENTS_PER_USD: u64 = 100_000_000;
/// Ledger units (µ¢) in one US cent.
pub const MICROCENTS_PER_CENT: u64 = 1_000_000;

/// Why a price or a cost could not be computed exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The decimal text is not a plain non-negative decimal number.
    #[error("{text:?} is not a decimal amount (digits, at most one '.')")]
    Malformed {
        /// The text given.
        text: String,
    },
    /// The value has a fraction of the ledger unit where a whole amount is needed.
    #[error("{text:?} is not a whole number of ledger units (µ¢)")]
    NotRepresentable {
        /// The text given.
        text: String,
    },
    /// A rate per zero units.
    #[error("a rate must be per at least one unit")]
    ZeroPer,
    /// A number too large for exact arithmetic.
    #[error("{what} overflows")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
    /// Tiers out of order or not ending with an open tier.
    #[error("tiers must have increasing bounds and end with an open tier")]
    BadTiers,
}

/// `amount` ledger units per `per` units of usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    /// Ledger units ...
    pub amount: u64,
    /// ... per this many units of usage (at least 1).
    pub per: u64,
}

impl Rate {
    /// A rate in ledger units per `per` units.
    pub fn new(amount: u64, per: u64) -> Result<Rate, PricingError> {
        if per == 0 {
            return Err(PricingError::ZeroPer);
        }
        Ok(Rate { amount, per })
    }

    /// A rate given as a decimal number of US dollars per `per` units, e.g. `"0.0000015"` per 1
    /// token. Sub-µ¢ precision is kept exact by scaling `per`.
    pub fn usd(text: &str, per: u64) -> Result<Rate, PricingError> {
        Self::decimal(text, MICROCENTS_PER_USD, per)
    }

    /// A rate given as a decimal number of US cents per `per` units, e.g. `"200"` per 1,000,000
    /// tokens.
    pub fn cents(text: &str, per: u64) -> Result<Rate, PricingError> {
        Self::decimal(text, MICROCENTS_PER_CENT, per)
    }

    fn decimal(text: &str, unit: u64, per: u64) -> Result<Rate, PricingError> {
        if per == 0 {
            return Err(PricingError::ZeroPer);
        }
        let (mantissa, scale) = parse_decimal(text)?;
        // value in µ¢ = mantissa × unit / 10^scale; keep it exact by moving 10^k into `per`.
        let numerator = mantissa
            .checked_mul(u128::from(unit))
            .ok_or(PricingError::Overflow { what: "rate" })?;
        let denominator = 10u128
            .checked_pow(scale)
            .ok_or(PricingError::Overflow { what: "rate" })?;
        let g = gcd(numerator, denominator);
        let (amount, scale_per) = (numerator / g.max(1), denominator / g.max(1));
        let per = u128::from(per)
            .checked_mul(scale_per)
            .and_then(|p| u64::try_from(p).ok())
            .ok_or(PricingError::Overflow { what: "rate" })?;
        let amount = u64::try_from(amount).map_err(|_| PricingError::Overflow { what: "rate" })?;
        Ok(Rate { amount, per })
    }
}

/// A whole amount given as a decimal number of US dollars, e.g. `"0.01"` → 1,000,000 µ¢.
/// Rejected when it is not a whole number of µ¢ or is too large.
pub fn parse_usd(text: &str) -> Result<Amount, PricingError> {
    whole(text, MICROCENTS_PER_USD)
}

/// A whole amount given as a decimal number of US cents, e.g. `"0.1"` → 100,000 µ¢.
pub fn parse_cents(text: &str) -> Result<Amount, PricingError> {
    whole(text, MICROCENTS_PER_CENT)
}

fn whole(text: &str, unit: u64) -> Result<Amount, PricingError> {
    let rate = Rate::decimal(text, unit, 1).map_err(|e| match e {
        PricingError::Overflow { .. } => PricingError::Overflow { what: "amount" },
        other => other,
    })?;
    if rate.per != 1 {
        return Err(PricingError::NotRepresentable {
            text: text.to_string(),
        });
    }
    Amount::new(rate.amount).map_err(|_| PricingError::Overflow { what: "amount" })
}

/// Parses `digits[.digits]` into (mantissa, number of fraction digits). At most 30 digits.
fn parse_decimal(text: &str) -> Result<(u128, u32), PricingError> {
    let malformed = || PricingError::Malformed {
        text: text.to_string(),
    };
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (text, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty())
        || !digits_ok(int)
        || !digits_ok(frac)
        || int.len() + frac.len() > 30
    {
        return Err(malformed());
    }
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or_else(malformed)?;
    }
    let scale = u32::try_from(frac.len()).map_err(|_| malformed())?;
    Ok((mantissa, scale))
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What a call used. Fields not metered by a price are ignored by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Requests (usually 1).
    pub requests: u64,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Characters (text to speech).
    pub characters: u64,
    /// Pages (document processing).
    pub pages: u64,
    /// Duration or response time, in milliseconds.
    pub duration_ms: u64,
    /// What the provider behind the app charged for this work, in the ledger unit: recorded
    /// beside the price charged (usage reports give the margin), never priced.
    #[serde(default)]
    pub provider_cost: u64,
}

impl Usage {
    /// The field-by-field sum, `None` if a field would pass `u64::MAX`.
    pub fn checked_add(&self, other: &Usage) -> Option<Usage> {
        Some(Usage {
            requests: self.requests.checked_add(other.requests)?,
            input_tokens: self.input_tokens.checked_add(other.input_tokens)?,
            output_tokens: self.output_tokens.checked_add(other.output_tokens)?,
            characters: self.characters.checked_add(other.characters)?,
            pages: self.pages.checked_add(other.pages)?,
            duration_ms: self.duration_ms.checked_add(other.duration_ms)?,
            provider_cost: self.provider_cost.checked_add(other.provider_cost)?,
        })
    }
}

/// Which usage field a tiered price meters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Meter {
    /// [`Usage::requests`].
    Requests,
    /// [`Usage::input_tokens`] + [`Usage::output_tokens`].
    Tokens,
    /// [`Usage::characters`].
    Characters,
    /// [`Usage::pages`].
    Pages,
    /// [`Usage::duration_ms`] (the tier bounds are in milliseconds, the rate per second).
    Seconds,
}

/// One tier of a graduated price: units up to `up_to` (cumulative, within this call) cost `rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tier {
    /// The tier's upper bound in units (`None`: everything above the previous tier).
    pub up_to: Option<u64>,
    /// The rate inside the tier.
    pub rate: Rate,
}

/// How an app's endpoint charges.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Price {
    /// A fixed amount per request (the router's `per_request`).
    PerRequest(Amount),
    /// Separate rates for input and output tokens.
    PerToken {
        /// Rate for input tokens.
        input: Rate,
        /// Rate for output tokens.
        output: Rate,
    },
    /// A rate per character.
    PerCharacter(Rate),
    /// A rate per page.
    PerPage(Rate),
    /// A rate per second of duration (usage is measured in milliseconds).
    PerSecond(Rate),
    /// Graduated volume tiers on one meter.
    Tiered {
        /// What is metered.
        meter: Meter,
        /// Tiers in increasing order, the last one open (`up_to: None`).
        tiers: Vec<Tier>,
    },
    /// Tiers on one meter over a billing period: the units the account has used at this
    /// endpoint in the current `period` decide the tier (see [`crate::period`]). No tier may be
    /// dearer than the one before it.
    PeriodTiered {
        /// What is metered.
        meter: Meter,
        /// Tiers in increasing order of the period's count, the last one open.
        tiers: Vec<Tier>,
        /// Graduated or volume.
        mode: crate::TierMode,
        /// The billing period.
        period: crate::Period,
    },
}

/// Sums fractions `units × amount / per` exactly and rounds the total up once.
pub(crate) struct Exact {
    numerator: u128,
    denominator: u128,
}

impl Exact {
    pub(crate) fn new() -> Self {
        Exact {
            numerator: 0,
            denominator: 1,
        }
    }

    pub(crate) fn add(&mut self, units: u64, amount: u64, per: u128) -> Result<(), PricingError> {
        let overflow = PricingError::Overflow { what: "cost" };
        if per == 0 {
            return Err(PricingError::ZeroPer);
        }
        let term = u128::from(units)
            .checked_mul(u128::from(amount))
            .ok_or(overflow.clone())?;
        let g = gcd(self.denominator, per);
        let lcm = (self.denominator / g)
            .checked_mul(per)
            .ok_or(overflow.clone())?;
        let left = self
            .numerator
            .checked_mul(lcm / self.denominator)
            .ok_or(overflow.clone())?;
        let right = term.checked_mul(lcm / per).ok_or(overflow.clone())?;
        self.numerator = left.checked_add(right).ok_or(overflow)?;
        self.denominator = lcm;
        Ok(())
    }

    pub(crate) fn ceil(&self) -> Result<Amount, PricingError> {
        let whole = self.numerator.div_ceil(self.denominator);
        u64::try_from(whole)
            .ok()
            .and_then(|w| Amount::new(w).ok())
            .ok_or(PricingError::Overflow { what: "cost" })
    }
}

impl Meter {
    /// The units of `usage` this meter counts.
    pub fn units(self, usage: &Usage) -> u64 {
        match self {
            Meter::Requests => usage.requests,
            Meter::Tokens => usage.input_tokens.saturating_add(usage.output_tokens),
            Meter::Characters => usage.characters,
            Meter::Pages => usage.pages,
            Meter::Seconds => usage.duration_ms,
        }
    }

    /// Units per rate unit (a rate per second meters milliseconds).
    pub(crate) fn scale(self) -> u128 {
        if self == Meter::Seconds {
            1_000
        } else {
            1
        }
    }
}

impl Price {
    /// For a period-tiered price (catalog version `version`), the step `usage` makes in the
    /// account's period at `at`, from its use `before` (`None` for any other price).
    pub fn period_step(
        &self,
        usage: &Usage,
        before: crate::PeriodUse,
        at: crate::Timestamp,
        version: u64,
    ) -> Option<Result<crate::PeriodStep, PricingError>> {
        match self {
            Price::PeriodTiered {
                meter,
                tiers,
                mode,
                period,
            } => Some(crate::period::period_step(
                tiers,
                *mode,
                period,
                meter.scale(),
                before,
                at,
                meter.units(usage),
                version,
            )),
            _ => None,
        }
    }

    /// What a metered hold of `usage` holds at `at`, expiring at `expires_at`: the cost, or,
    /// for a period-tiered price, the most the call can cost in the account's period (`before`
    /// its use there): from its current count when the hold ends within the period, from an
    /// empty period when it may outlive it.
    pub fn hold_bound(
        &self,
        usage: &Usage,
        before: crate::PeriodUse,
        at: crate::Timestamp,
        expires_at: crate::Timestamp,
    ) -> Result<Amount, PricingError> {
        let Price::PeriodTiered {
            meter,
            tiers,
            mode,
            period,
        } = self
        else {
            return self.cost(usage);
        };
        let start = period.start(at);
        if expires_at.0 >= period.end(start) {
            return self.cost(usage);
        }
        let before = if before.start == start {
            before
        } else {
            crate::PeriodUse::default()
        };
        let bound =
            crate::period::step_bound(tiers, *mode, meter.scale(), before, meter.units(usage))?;
        Amount::new(bound).map_err(|_| PricingError::Overflow { what: "cost" })
    }

    /// What `usage` would post now for an account whose use of this price is `before` (the
    /// cost for any price that is not period-tiered; a volume rebate posts nothing).
    pub fn quote(
        &self,
        usage: &Usage,
        before: crate::PeriodUse,
        at: crate::Timestamp,
        version: u64,
    ) -> Result<Amount, PricingError> {
        match self.period_step(usage, before, at, version) {
            None => self.cost(usage),
            Some(step) => step.map(|s| s.cost),
        }
    }

    /// The cost of `usage`: the exact sum, rounded up once to a whole ledger unit. For a
    /// period-tiered price, the cost as the first call of a period (the most it can cost: the
    /// bound a metered hold holds); [`Price::period_step`] prices it in the account's period.
    pub fn cost(&self, usage: &Usage) -> Result<Amount, PricingError> {
        let mut exact = Exact::new();
        match self {
            Price::PeriodTiered {
                meter, tiers, mode, ..
            } => {
                let total =
                    crate::period::period_total(tiers, *mode, meter.units(usage), meter.scale())?;
                return Amount::new(total).map_err(|_| PricingError::Overflow { what: "cost" });
            }
            Price::PerRequest(amount) => exact.add(usage.requests.max(1), amount.get(), 1)?,
            Price::PerToken { input, output } => {
                exact.add(usage.input_tokens, input.amount, u128::from(input.per))?;
                exact.add(usage.output_tokens, output.amount, u128::from(output.per))?;
            }
            Price::PerCharacter(rate) => {
                exact.add(usage.characters, rate.amount, rate.per.into())?
            }
            Price::PerPage(rate) => exact.add(usage.pages, rate.amount, rate.per.into())?,
            Price::PerSecond(rate) => {
                exact.add(usage.duration_ms, rate.amount, u128::from(rate.per) * 1_000)?
            }
            Price::Tiered { meter, tiers } => {
                // One call's units across the tiers: a graduated period of one call.
                let total = crate::period::period_total(
                    tiers,
                    crate::TierMode::Graduated,
                    meter.units(usage),
                    meter.scale(),
                )?;
                return Amount::new(total).map_err(|_| PricingError::Overflow { what: "cost" });
            }
        }
        exact.ceil()
    }
}
