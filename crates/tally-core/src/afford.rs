//! Affordability: the most usage a caller may start now, so that it can clamp a model call's
//! `max_tokens` (or a document's pages) before making it.
//!
//! Two exact parts. [`Account::spend_room`] is the most one more hold or charge of this account
//! for an app may take now: its available balance, its spend caps and the spend token presented,
//! whichever is least (the same checks a reserve makes). [`Price::max_units`] is the largest
//! value of one usage field whose cost, with the other fields as given, fits a budget, under
//! the price's one rounding rule (found by bisection on the exact cost, which never decreases
//! as usage grows).

use crate::{Account, AccountId, Amount, Error, Price, PricingError, SpendCaps, Timestamp, Usage};

/// The usage field [`Price::max_units`] maximizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageField {
    /// `requests`.
    Requests,
    /// `input_tokens`.
    InputTokens,
    /// `output_tokens`.
    OutputTokens,
    /// `characters`.
    Characters,
    /// `pages`.
    Pages,
    /// `duration_ms`.
    DurationMs,
}

impl UsageField {
    /// The field's name, as usage is spelled over HTTP.
    pub fn name(self) -> &'static str {
        match self {
            UsageField::Requests => "requests",
            UsageField::InputTokens => "input_tokens",
            UsageField::OutputTokens => "output_tokens",
            UsageField::Characters => "characters",
            UsageField::Pages => "pages",
            UsageField::DurationMs => "duration_ms",
        }
    }

    /// The field named `name` (see [`UsageField::name`]).
    pub fn parse(name: &str) -> Option<UsageField> {
        [
            UsageField::Requests,
            UsageField::InputTokens,
            UsageField::OutputTokens,
            UsageField::Characters,
            UsageField::Pages,
            UsageField::DurationMs,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    fn set(self, usage: &Usage, value: u64) -> Usage {
        let mut usage = *usage;
        let field = match self {
            UsageField::Requests => &mut usage.requests,
            UsageField::InputTokens => &mut usage.input_tokens,
            UsageField::OutputTokens => &mut usage.output_tokens,
            UsageField::Characters => &mut usage.characters,
            UsageField::Pages => &mut usage.pages,
            UsageField::DurationMs => &mut usage.duration_ms,
        };
        *field = value;
        usage
    }
}

/// What limits the room for spending (see [`Account::spend_room`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limiter {
    /// The available balance.
    Balance,
    /// The account's spend cap per day.
    AccountCap,
    /// The cap on what one user spends per day at this app.
    AppCap,
    /// The spend token presented.
    Token,
    /// Nothing bounds it below the largest amount one operation carries.
    None,
}

impl Limiter {
    /// Its name, as reported over HTTP.
    pub fn name(self) -> &'static str {
        match self {
            Limiter::Balance => "balance",
            Limiter::AccountCap => "spend_cap_account",
            Limiter::AppCap => "spend_cap_app",
            Limiter::Token => "token",
            Limiter::None => "none",
        }
    }
}

impl Account {
    /// The most one more hold or charge of this account for `app` at `endpoint` may take now
    /// (what a reserve would check: the available balance unless the account may overdraw,
    /// the day's spend caps with what is held counted, the spend token's remaining cap), and
    /// what bounds it. At most [`Amount::MAX`]. Errors: the token is unknown, revoked, expired
    /// or for another app or endpoint.
    pub fn spend_room(
        &self,
        app: AccountId,
        endpoint: &str,
        token: Option<u64>,
        caps: SpendCaps,
        now: Timestamp,
    ) -> Result<(Amount, Limiter), Error> {
        let mut room = (Amount::MAX.wide(), Limiter::None);
        let mut bound = |value: u128, limiter: Limiter| {
            if value < room.0 {
                room = (value, limiter);
            }
        };
        if !self.spec.may_overdraw() {
            bound(
                u128::try_from(self.spendable(now)).unwrap_or(0),
                Limiter::Balance,
            );
        }
        let (spent, spent_app) = self.spent_today(app, now);
        if let Some(cap) = caps.account_per_day {
            bound(cap.wide().saturating_sub(spent), Limiter::AccountCap);
        }
        if let Some(cap) = caps.app_per_user_per_day {
            bound(cap.wide().saturating_sub(spent_app), Limiter::AppCap);
        }
        if token.is_some() {
            self.token_covers(token, app, endpoint, Amount::ZERO, now)?;
            let remaining = token
                .and_then(|seq| self.tokens.get(&seq))
                .map_or(0, |t| t.remaining().wide());
            bound(remaining, Limiter::Token);
        }
        // Every bound is at most Amount::MAX, which fits.
        let amount = u64::try_from(room.0)
            .ok()
            .and_then(|v| Amount::new(v).ok())
            .unwrap_or(Amount::MAX);
        Ok((amount, room.1))
    }
}

impl Price {
    /// The largest value of `field` whose cost, with the other fields of `base`, is at most
    /// `budget`, with that cost; `None` when even zero of it costs more (a per-request price
    /// above the budget, or the other fields' cost). `u64::MAX` when the price does not depend
    /// on `field`. Exact under the rounding rule: the cost of one unit more is above `budget`.
    pub fn max_units(
        &self,
        base: &Usage,
        field: UsageField,
        budget: Amount,
    ) -> Result<Option<(u64, Amount)>, PricingError> {
        self.max_units_by(base, field, budget, |usage| self.cost(usage))
    }

    /// [`Price::max_units`] under another cost of usage (one that never decreases with it: what
    /// a hold of a period-tiered price holds at an account's count).
    pub fn max_units_by(
        &self,
        base: &Usage,
        field: UsageField,
        budget: Amount,
        cost: impl Fn(&Usage) -> Result<Amount, PricingError>,
    ) -> Result<Option<(u64, Amount)>, PricingError> {
        // A cost too large to compute is above any budget (cost never decreases with usage).
        let fits = |units: u64| -> Result<Option<Amount>, PricingError> {
            match cost(&field.set(base, units)) {
                Ok(cost) => Ok((cost <= budget).then_some(cost)),
                Err(PricingError::Overflow { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(mut best) = fits(0)? else {
            return Ok(None);
        };
        let (mut lo, mut hi) = (0u64, u64::MAX);
        if let Some(cost) = fits(hi)? {
            return Ok(Some((hi, cost)));
        }
        // Invariant: lo fits, hi does not.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match fits(mid)? {
                Some(cost) => {
                    lo = mid;
                    best = cost;
                }
                None => hi = mid,
            }
        }
        Ok(Some((lo, best)))
    }
}
