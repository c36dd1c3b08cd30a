//! The decisions: validate a request against an account (`decide`), then change the account by
//! applying the record (`apply`, `apply_leg`). Deciding never mutates; applying never fails.

use crate::account::{forget_oldest, forget_through, totals_fit, Remembered};
use crate::command::Metered;
use crate::{
    Account, AccountId, AccountKind, AccountSpec, Amount, Change, Command, Error, Hold, HoldId,
    HoldStatus, Limits, OpId, Origin, Outcome, Posting, PostingId, Record, Request, SpendToken,
    Timestamp, TokenId,
};

/// The other account a request names, as the engine's directory knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counterparty {
    /// Its id.
    pub id: AccountId,
    /// Its kind.
    pub kind: AccountKind,
}

/// What a decision needs besides the account: the time, the limits, the counterparty and the
/// spend caps that apply.
#[derive(Clone, Copy, Debug)]
pub struct DecideCtx<'a> {
    /// Now, from the engine's clock.
    pub now: Timestamp,
    /// The account limits.
    pub limits: &'a Limits,
    /// The account [`Command::counterparty`] names, if it exists.
    pub counterparty: Option<Counterparty>,
    /// The spend caps of this account and of the app a reserve or charge names.
    pub caps: SpendCaps,
}

/// Spend caps checked before a reserve or charge: posted today (UTC) + held now + the amount
/// must stay within each cap that is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpendCaps {
    /// Cap on the account's spending per day, over all apps.
    pub account_per_day: Option<Amount>,
    /// Cap on what one user may spend per day at the app named by the request.
    pub app_per_user_per_day: Option<Amount>,
}

/// The result of deciding a request.
// A decision is made and consumed once per write; boxing the record would cost an allocation
// on every write to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new change: make `record` durable, apply it, answer `outcome`.
    Apply {
        /// The record to journal and apply.
        record: Record,
        /// What the caller is told.
        outcome: Outcome,
    },
    /// A retry of a request already executed: answer its first outcome (once record `seq` is
    /// durable); nothing changes.
    Replay {
        /// The first outcome.
        outcome: Outcome,
        /// The journal sequence number of the first execution's record.
        seq: u64,
    },
}

/// What a debit may spend (see [`crate::Grant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// Live grants first, then the general balance.
    Any,
    /// The general balance only (a transfer out, a funding update down).
    General,
}

fn positive(amount: Amount, field: &'static str) -> Result<(), Error> {
    if amount.is_zero() {
        Err(Error::ZeroAmount { field })
    } else {
        Ok(())
    }
}

fn bounded_text(text: &str, field: &'static str, max: usize) -> Result<(), Error> {
    if text.len() > max {
        Err(Error::FieldTooLong {
            field,
            len: text.len(),
            max,
        })
    } else {
        Ok(())
    }
}

impl Account {
    /// The record that opens an account.
    pub fn open_record(id: AccountId, spec: AccountSpec, at: Timestamp) -> Record {
        Record {
            account: id,
            op: None,
            at,
            origin: Origin::default(),
            change: Change::Opened { spec },
        }
    }

    /// Decides a request: validates it and returns the record it makes, or why it is refused.
    /// Never mutates the account.
    pub fn decide(&self, request: &Request, ctx: &DecideCtx<'_>) -> Result<Decision, Error> {
        let origin = &request.origin;
        let max = ctx.limits.origin_bytes_max;
        bounded_text(&origin.service, "origin.service", max)?;
        bounded_text(&origin.app, "origin.app", max)?;
        bounded_text(&origin.user, "origin.user", max)?;
        if self.keys_unloaded.is_some() {
            return Err(Error::KeysNotLoaded { account: self.id });
        }
        if let Some(seen) = self.remembered.get(&request.op) {
            return match seen.digest.first_difference(&request.command.digest()) {
                None => Ok(Decision::Replay {
                    outcome: seen.outcome,
                    seq: seen.seq,
                }),
                Some(field) => Err(Error::IdempotencyConflict {
                    op: request.op,
                    field,
                }),
            };
        }
        let change = self.decide_change(&request.command, ctx)?;
        let record = Record {
            account: self.id,
            op: Some(request.op),
            at: ctx.now,
            origin: origin.clone(),
            change,
        };
        let outcome = record.outcome();
        Ok(Decision::Apply { record, outcome })
    }

    fn decide_change(&self, command: &Command, ctx: &DecideCtx<'_>) -> Result<Change, Error> {
        match command {
            Command::Fund { from, amount } => {
                positive(*amount, "amount")?;
                self.require_kind_not(AccountKind::Funding, "a user or revenue account")?;
                require_counterparty(ctx, *from, Some(AccountKind::Funding), "a funding account")?;
                self.credit_fits(*amount)?;
                Ok(Change::Funded {
                    from: *from,
                    amount: *amount,
                })
            }
            Command::Reserve {
                app,
                amount,
                timeout_ms,
                endpoint,
                metadata,
                token,
            } => self.decide_reserve(
                *app,
                *amount,
                *timeout_ms,
                endpoint,
                metadata,
                *token,
                None,
                ctx,
            ),
            Command::ReserveMetered {
                app,
                endpoint,
                max_usage,
                timeout_ms,
                metadata,
                token,
                price,
            } => {
                // A period-tiered price holds the most the call can cost in the account's
                // period as it stands (it only gets cheaper as the count grows).
                let before = self.period_before(*app, endpoint, &price.price);
                let expires_at = ctx.now.plus_ms(*timeout_ms);
                let amount = price
                    .price
                    .hold_bound(max_usage, before, ctx.now, expires_at)
                    .map_err(|_| Error::AmountTooLarge {
                        amount: u64::MAX,
                        max: Amount::MAX.get(),
                    })?;
                let metered = Metered {
                    max_usage: *max_usage,
                    price: (**price).clone(),
                };
                self.decide_reserve(
                    *app,
                    amount,
                    *timeout_ms,
                    endpoint,
                    metadata,
                    *token,
                    Some(Box::new(metered)),
                    ctx,
                )
            }
            Command::Commit {
                hold,
                amount,
                usage,
            } => {
                let held = self.pending_hold(*hold, ctx.now)?;
                // Zero only finishes a hold that settled parts already (posting nothing more).
                if held.amount_posted.is_zero() {
                    positive(*amount, "amount")?;
                }
                commit_change(held, *hold, *amount, *usage, self.next_seq, false)
            }
            Command::Finish { hold, usage } => {
                // Priced as quoted when the hold was made, whatever the catalog says now; a
                // zero cost (no usage) posts nothing and releases all.
                let (held, part, step) =
                    self.metered_step(*hold, usage, ctx.now, ctx.counterparty)?;
                let mut change = commit_change(held, *hold, part, *usage, self.next_seq, true)?;
                if let Change::Committed { period, .. } = &mut change {
                    *period = step;
                }
                Ok(change)
            }
            Command::Progress { hold, usage } => {
                let (held, part, step) =
                    self.metered_step(*hold, usage, ctx.now, ctx.counterparty)?;
                let mut change = settle_change(held, *hold, part, *usage, self.next_seq, true)?;
                if let Change::Settled { period, .. } = &mut change {
                    *period = step;
                }
                Ok(change)
            }
            Command::SetPrice { endpoint, price } => {
                self.require_kind_not(AccountKind::Funding, "a revenue or user account")?;
                bounded_text(endpoint, "endpoint", ctx.limits.endpoint_bytes_max)?;
                if let Some(price) = price {
                    check_price(price)?;
                }
                let listed = self
                    .catalog
                    .get(endpoint)
                    .is_some_and(|e| e.price.is_some());
                if price.is_none() && !listed {
                    return Err(Error::InvalidPrice {
                        reason: format!("{endpoint:?} has no price to remove"),
                    });
                }
                let live = self.catalog.values().filter(|e| e.price.is_some()).count();
                if price.is_some() && !listed && live >= PRICES_MAX {
                    return Err(Error::TooManyPrices {
                        account: self.id,
                        limit: PRICES_MAX,
                    });
                }
                Ok(Change::PriceSet {
                    endpoint: endpoint.clone(),
                    price: price.clone(),
                    version: self.catalog_version.saturating_add(1),
                })
            }
            Command::CommitEstimate { hold } => {
                let held = self.pending_hold(*hold, ctx.now)?;
                let estimate = held.held();
                let mut change = commit_change(
                    held,
                    *hold,
                    estimate,
                    crate::Usage::default(),
                    self.next_seq,
                    false,
                )?;
                if let Change::Committed { estimated, .. } = &mut change {
                    *estimated = true;
                }
                Ok(change)
            }
            Command::Correct {
                posting,
                amount,
                usage,
            } => self.decide_correction(*posting, *amount, usage, ctx),
            Command::SetPolicy { setting } => {
                self.require_kind_not(AccountKind::Funding, "a user or revenue account")?;
                setting.check()?;
                Ok(Change::PolicySet {
                    setting: *setting,
                    version: self.policy.version.saturating_add(1),
                })
            }
            Command::Void { hold } => {
                let held = self.pending_hold(*hold, ctx.now)?;
                Ok(Change::Voided {
                    hold: hold.seq,
                    amount_released: held.held(),
                })
            }
            Command::Extend {
                hold,
                amount,
                timeout_ms,
            } => {
                if amount.is_zero() && *timeout_ms == 0 {
                    return Err(Error::ZeroAmount { field: "amount" });
                }
                let held = self.pending_hold(*hold, ctx.now)?;
                if *timeout_ms != 0 {
                    timeout_in_range(*timeout_ms, ctx.limits)?;
                }
                let total = held
                    .amount
                    .checked_add(*amount)
                    .ok_or(Error::AmountTooLarge {
                        amount: amount.get(),
                        max: Amount::MAX.get().saturating_sub(held.amount.get()),
                    })?;
                if !amount.is_zero() {
                    self.debit_fits(*amount, ctx.now, Pool::Any)?;
                    self.within_caps(held.app, *amount, ctx)?;
                }
                let expires_at = if *timeout_ms == 0 {
                    held.expires_at
                } else {
                    held.expires_at.max(ctx.now.plus_ms(*timeout_ms))
                };
                // A period-priced hold sized at the period's count may not outlive the period:
                // after it the count starts again and the call could cost more than it holds.
                if let Some(crate::Price::PeriodTiered { period, .. }) =
                    held.price.as_ref().map(|p| &p.price)
                {
                    // (A hold that already outlived it was sized from an empty period.)
                    let end = period.end(period.start(ctx.now));
                    if held.expires_at.0 < end && expires_at.0 >= end {
                        return Err(Error::InvalidTimeout {
                            timeout_ms: *timeout_ms,
                            min_ms: ctx.limits.hold_timeout_ms_min,
                            max_ms: end.saturating_sub(ctx.now.0).saturating_sub(1),
                        });
                    }
                }
                // A hold made with a token draws the extension from it, and may not outlive it.
                let hold_token = (held.token, held.app, &*held.endpoint);
                self.token_allows(hold_token, *amount, expires_at, *timeout_ms, ctx)?;
                Ok(Change::Extended {
                    hold: hold.seq,
                    amount: *amount,
                    timeout_ms: *timeout_ms,
                    expires_at,
                    total,
                })
            }
            Command::Settle {
                hold,
                amount,
                usage,
            } => {
                positive(*amount, "amount")?;
                let held = self.pending_hold(*hold, ctx.now)?;
                if held.usage_settled.checked_add(usage).is_none() {
                    return Err(Error::Overflow {
                        account: self.id,
                        field: "usage",
                    });
                }
                settle_change(held, *hold, *amount, *usage, self.next_seq, false)
            }
            Command::Charge {
                app,
                amount,
                endpoint,
                metadata,
                usage,
                token,
            } => {
                positive(*amount, "amount")?;
                self.require_kind(AccountKind::User, "a user account")?;
                self.require_payee(ctx, *app)?;
                bounded_text(endpoint, "endpoint", ctx.limits.endpoint_bytes_max)?;
                bounded_text(metadata, "metadata", ctx.limits.metadata_bytes_max)?;
                self.debit_fits(*amount, ctx.now, Pool::Any)?;
                self.within_caps(*app, *amount, ctx)?;
                self.token_covers(*token, *app, endpoint, *amount, ctx.now)?;
                Ok(Change::Charged {
                    app: *app,
                    amount: *amount,
                    endpoint: endpoint.clone(),
                    metadata: metadata.clone(),
                    posting: self.next_seq,
                    usage: *usage,
                    token: *token,
                })
            }
            Command::Refund { posting, amount } => {
                positive(*amount, "amount")?;
                let found = self.retained_posting(*posting)?;
                // A refund's debit of the payee may not be refused, which only a revenue account
                // can take (it may go below zero; a user may not): money paid to a user goes
                // back by a transfer, which the user decides.
                if let Some(cp) = ctx.counterparty.filter(|cp| cp.id == found.app) {
                    if cp.kind == AccountKind::User {
                        return Err(Error::WrongAccountKind {
                            account: found.app,
                            actual: cp.kind.name(),
                            expected:
                                "a revenue account (a payment to a user is returned by a transfer)",
                        });
                    }
                }
                let refundable = found.refundable();
                if *amount > refundable {
                    return Err(Error::RefundExceedsPosting {
                        posting: *posting,
                        refundable: refundable.get(),
                        requested: amount.get(),
                    });
                }
                self.credit_fits(*amount)?;
                Ok(Change::Refunded {
                    posting: posting.seq,
                    app: found.app,
                    amount: *amount,
                    endpoint: found.endpoint.to_string(),
                })
            }
            Command::Transfer { to, amount } => {
                positive(*amount, "amount")?;
                if *to == self.id {
                    return Err(Error::SameAccount { account: self.id });
                }
                require_counterparty(ctx, *to, None, "an account")?;
                // Granted credit is not the user's to move: only the general balance.
                self.debit_fits(*amount, ctx.now, Pool::General)?;
                Ok(Change::Transferred {
                    to: *to,
                    amount: *amount,
                })
            }
            Command::IssueToken {
                app,
                cap,
                ttl_ms,
                endpoint,
            } => {
                positive(*cap, "cap")?;
                self.require_kind(AccountKind::User, "a user account")?;
                self.require_payee(ctx, *app)?;
                let limits = ctx.limits;
                if *ttl_ms == 0 || *ttl_ms > limits.token_ttl_ms_max {
                    return Err(Error::InvalidTokenTtl {
                        ttl_ms: *ttl_ms,
                        max_ms: limits.token_ttl_ms_max,
                    });
                }
                bounded_text(endpoint, "endpoint", limits.endpoint_bytes_max)?;
                let live = self.tokens.values().filter(|t| t.live(ctx.now)).count();
                if live >= limits.tokens_max {
                    return Err(Error::TooManyTokens {
                        account: self.id,
                        limit: limits.tokens_max,
                    });
                }
                Ok(Change::TokenIssued {
                    token: self.next_seq,
                    app: *app,
                    cap: *cap,
                    expires_at: ctx.now.plus_ms(*ttl_ms),
                    endpoint: endpoint.clone(),
                })
            }
            Command::RevokeToken { token } => {
                let id = TokenId {
                    account: self.id,
                    seq: *token,
                };
                match self.tokens.get(token) {
                    None => Err(Error::UnknownToken { token: id }),
                    Some(t) if t.revoked => Err(Error::TokenRevoked { token: id }),
                    Some(_) => Ok(Change::TokenRevoked { token: *token }),
                }
            }
            Command::Grant {
                from,
                amount,
                priority,
                ttl_ms,
                label,
            } => {
                positive(*amount, "amount")?;
                self.require_kind(AccountKind::User, "a user account")?;
                require_counterparty(ctx, *from, Some(AccountKind::Funding), "a funding account")?;
                bounded_text(label, "label", crate::GRANT_LABEL_MAX)?;
                if *ttl_ms > ctx.limits.token_ttl_ms_max.saturating_mul(10) {
                    return Err(Error::InvalidGrant {
                        reason: format!(
                            "ttl_ms {ttl_ms} is past the longest, {} (0: never expires)",
                            ctx.limits.token_ttl_ms_max.saturating_mul(10)
                        ),
                    });
                }
                let live = self
                    .grants
                    .values()
                    .filter(|g| !g.expired_at(ctx.now))
                    .count();
                if live >= crate::GRANTS_MAX {
                    return Err(Error::TooManyGrants {
                        account: self.id,
                        limit: crate::GRANTS_MAX,
                    });
                }
                self.credit_fits(*amount)?;
                Ok(Change::GrantIssued {
                    grant: self.next_seq,
                    from: *from,
                    amount: *amount,
                    priority: *priority,
                    expires_at: (*ttl_ms > 0).then(|| ctx.now.plus_ms(*ttl_ms)),
                    label: label.clone(),
                    allowance_period: None,
                })
            }
            Command::SetAllowance { allowance } => {
                self.require_kind(AccountKind::User, "a user account")?;
                match allowance {
                    None if self.allowance.is_none() => Err(Error::InvalidGrant {
                        reason: "the account has no allowance to remove".into(),
                    }),
                    None => Ok(Change::AllowanceSet { allowance: None }),
                    Some(a) => {
                        positive(a.amount, "amount")?;
                        require_counterparty(
                            ctx,
                            a.from,
                            Some(AccountKind::Funding),
                            "a funding account",
                        )?;
                        bounded_text(&a.label, "label", crate::GRANT_LABEL_MAX)?;
                        if let crate::Period::Every { length_ms, .. } = a.period {
                            if length_ms < crate::period::PERIOD_MS_MIN {
                                return Err(Error::InvalidGrant {
                                    reason: format!(
                                        "an allowance period of {length_ms} ms is shorter than \
                                         the shortest, {} ms",
                                        crate::period::PERIOD_MS_MIN
                                    ),
                                });
                            }
                        }
                        Ok(Change::AllowanceSet {
                            allowance: Some(a.clone()),
                        })
                    }
                }
            }
            Command::UpdateFunding { from, old, new } => {
                self.require_kind_not(AccountKind::Funding, "a user or revenue account")?;
                require_counterparty(ctx, *from, Some(AccountKind::Funding), "a funding account")?;
                if *old != self.funded {
                    return Err(Error::FundingMismatch {
                        account: self.id,
                        current: self.funded,
                        expected: *old,
                    });
                }
                if new == old {
                    return Err(Error::ZeroAmount {
                        field: "new − old"
                    });
                }
                match crate::command::funding_difference(*old, *new) {
                    Some(crate::command::FundingStep::Up(up)) => self.credit_fits(up)?,
                    Some(crate::command::FundingStep::Down(down)) => {
                        self.debit_fits(down, ctx.now, Pool::General)?
                    }
                    None => {
                        return Err(Error::AmountTooLarge {
                            amount: u64::try_from(new.abs_diff(*old)).unwrap_or(u64::MAX),
                            max: Amount::MAX.get(),
                        })
                    }
                }
                Ok(Change::FundingUpdated {
                    from: *from,
                    old: *old,
                    new: *new,
                })
            }
        }
    }

    /// A pending metered hold and what its next part posts: the cost of all its usage (the
    /// parts settled plus `usage`) at its pinned price, minus what it posted already.
    /// The one correction of an estimated posting (see [`Command::Correct`]).
    fn decide_correction(
        &self,
        posting: PostingId,
        amount: Option<Amount>,
        usage: &crate::Usage,
        ctx: &DecideCtx<'_>,
    ) -> Result<Change, Error> {
        let found = self.retained_posting(posting)?;
        let invalid = |reason: &str| Error::InvalidCorrection {
            posting,
            reason: reason.to_owned(),
        };
        let estimate = found.estimate.as_ref().ok_or_else(|| {
            invalid("it is not an estimate (only a committed estimate is corrected)")
        })?;
        if estimate.corrected {
            return Err(Error::AlreadyCorrected { posting });
        }
        if found.amount_refunded > Amount::ZERO {
            return Err(invalid(
                "part of it was refunded: correct an estimate before refunding it",
            ));
        }
        let new = match amount {
            Some(amount) => amount,
            None => {
                let price = estimate.price.as_ref().ok_or_else(|| {
                    invalid("the hold was not metered: give the amount the call cost")
                })?;
                if matches!(price.price, crate::Price::PeriodTiered { .. }) {
                    return Err(invalid(
                        "a period-tiered estimate is corrected by amount (its units do not enter the period's count)",
                    ));
                }
                let cost = self.cost_of_all(price, &estimate.usage_before, usage)?;
                cost.checked_sub(estimate.posted_before).ok_or_else(|| {
                    invalid("the hold's settled parts posted more than the whole usage costs")
                })?
            }
        };
        let old = found.amount;
        if let Some(up) = new.checked_sub(old).filter(|up| *up > Amount::ZERO) {
            self.debit_fits(up, ctx.now, Pool::Any)?;
            self.within_caps(found.app, up, ctx)?;
            // The hold's spend token must still cover what the app takes more.
            self.token_covers(estimate.token, found.app, &found.endpoint, up, ctx.now)?;
        } else if let Some(down) = old.checked_sub(new).filter(|d| *d > Amount::ZERO) {
            // As a refund: only an app's revenue account takes a debit it may not refuse.
            if let Some(cp) = ctx.counterparty.filter(|cp| cp.id == found.app) {
                if cp.kind == AccountKind::User {
                    return Err(Error::WrongAccountKind {
                        account: found.app,
                        actual: cp.kind.name(),
                        expected:
                            "a revenue account (a payment to a user is returned by a transfer)",
                    });
                }
            }
            self.credit_fits(down)?;
        }
        Ok(Change::Corrected {
            posting: posting.seq,
            app: found.app,
            endpoint: found.endpoint.to_string(),
            old,
            new,
            usage: *usage,
            by_usage: amount.is_none(),
        })
    }

    /// A metered hold's next part: priced over all its usage at its pinned price, or, for a
    /// period-tiered price, as the next step of the account's period at the app's endpoint
    /// (read and advanced in this decision, so concurrent calls price as if in sequence).
    fn metered_step(
        &self,
        hold: HoldId,
        usage: &crate::Usage,
        now: Timestamp,
        counterparty: Option<Counterparty>,
    ) -> Result<(&Hold, Amount, Option<crate::PeriodStep>), Error> {
        let held = self.pending_hold(hold, now)?;
        let price = held.price.as_ref().ok_or(Error::NotMetered { hold })?;
        let before = self.period_before(held.app, &held.endpoint, &price.price);
        match price.price.period_step(usage, before, now, price.version) {
            None => {
                let cost = self.cost_of_all(price, &held.usage_settled, usage)?;
                let part = cost
                    .checked_sub(held.amount_posted)
                    .ok_or(Error::SettledPastCost {
                        hold,
                        settled: held.amount_posted.get(),
                        cost: cost.get(),
                    })?;
                Ok((held, part, None))
            }
            Some(step) => {
                let step = step.map_err(|_| Error::AmountTooLarge {
                    amount: u64::MAX,
                    max: Amount::MAX.get(),
                })?;
                if held.usage_settled.checked_add(usage).is_none() {
                    return Err(Error::Overflow {
                        account: self.id,
                        field: "usage",
                    });
                }
                if step.rebate > Amount::ZERO {
                    // Given back by the payee, a debit it may not refuse: an app's only.
                    if let Some(cp) = counterparty.filter(|cp| cp.id == held.app) {
                        if cp.kind != AccountKind::Revenue {
                            return Err(Error::WrongAccountKind {
                                account: held.app,
                                actual: cp.kind.name(),
                                expected:
                                    "a revenue account (a volume rebate is given back by the app)",
                            });
                        }
                    }
                    self.credit_fits(step.rebate)?;
                }
                Ok((held, step.cost, Some(step)))
            }
        }
    }

    /// What all of a metered call's usage costs at its pinned price: the usage reported
    /// `before` and `more`.
    fn cost_of_all(
        &self,
        price: &crate::PinnedPrice,
        before: &crate::Usage,
        more: &crate::Usage,
    ) -> Result<Amount, Error> {
        let total = before.checked_add(more).ok_or(Error::Overflow {
            account: self.id,
            field: "usage",
        })?;
        price.price.cost(&total).map_err(|_| Error::AmountTooLarge {
            amount: u64::MAX,
            max: Amount::MAX.get(),
        })
    }

    /// The account's use of a period-tiered `price` of `app` at `endpoint` (none for any other
    /// price: nothing is looked up).
    fn period_before(
        &self,
        app: AccountId,
        endpoint: &str,
        price: &crate::Price,
    ) -> crate::PeriodUse {
        if !matches!(price, crate::Price::PeriodTiered { .. }) {
            return crate::PeriodUse::default();
        }
        self.period_use
            .get(&(app, endpoint.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// A reserve of `amount` (of a metered hold when `metered` is given): the checks of a new
    /// hold, in the order they are reported.
    #[allow(clippy::too_many_arguments)]
    fn decide_reserve(
        &self,
        app: AccountId,
        amount: Amount,
        timeout_ms: u64,
        endpoint: &str,
        metadata: &str,
        token: Option<u64>,
        metered: Option<Box<Metered>>,
        ctx: &DecideCtx<'_>,
    ) -> Result<Change, Error> {
        positive(amount, "amount")?;
        self.require_kind(AccountKind::User, "a user account")?;
        self.require_payee(ctx, app)?;
        let limits = ctx.limits;
        timeout_in_range(timeout_ms, limits)?;
        bounded_text(endpoint, "endpoint", limits.endpoint_bytes_max)?;
        bounded_text(metadata, "metadata", limits.metadata_bytes_max)?;
        if self.deadlines.len() >= limits.holds_pending_max {
            return Err(Error::TooManyHolds {
                account: self.id,
                limit: limits.holds_pending_max,
            });
        }
        self.debit_fits(amount, ctx.now, Pool::Any)?;
        self.within_caps(app, amount, ctx)?;
        let expires_at = ctx.now.plus_ms(timeout_ms);
        // A hold made with a token may not outlive it (the record keeps the timeout as
        // asked, so a retry is recognized: a longer one is refused, not shortened).
        self.token_allows((token, app, endpoint), amount, expires_at, timeout_ms, ctx)?;
        Ok(Change::Reserved {
            hold: self.next_seq,
            app,
            amount,
            expires_at,
            endpoint: endpoint.to_owned(),
            metadata: metadata.to_owned(),
            token,
            metered,
        })
    }

    /// The spend token (if any) of a hold of `amount` for `app` at `endpoint` until `expires_at`
    /// covers it, and the hold does not outlive the token (`InvalidTimeout` naming the longest
    /// timeout left, `timeout_ms` being the one asked).
    fn token_allows(
        &self,
        (token, app, endpoint): (Option<u64>, AccountId, &str),
        amount: Amount,
        expires_at: Timestamp,
        timeout_ms: u64,
        ctx: &DecideCtx<'_>,
    ) -> Result<(), Error> {
        if let Some(token_expiry) = self.token_covers(token, app, endpoint, amount, ctx.now)? {
            if expires_at > token_expiry {
                return Err(Error::InvalidTimeout {
                    timeout_ms,
                    min_ms: ctx.limits.hold_timeout_ms_min,
                    max_ms: token_expiry.0.saturating_sub(ctx.now.0),
                });
            }
        }
        Ok(())
    }

    /// What the account spent on the day of `now` with what it holds: in all, and at `app`
    /// (what its spend caps count).
    pub(crate) fn spent_today(&self, app: AccountId, now: Timestamp) -> (u128, u128) {
        let (posted, posted_app) = self.spend.on(now, app);
        let held_app: u128 = self
            .pending_holds()
            .filter(|h| h.app == app)
            .map(|h| h.held().wide())
            .sum();
        (
            posted.saturating_add(self.debits_pending),
            posted_app.saturating_add(held_app),
        )
    }

    /// The spend token presented (if any) covers holding or charging `amount` for `app` at
    /// `endpoint` now: live, for that app (and endpoint, if it names one), within its cap.
    /// Returns the token's expiry.
    pub(crate) fn token_covers(
        &self,
        token: Option<u64>,
        app: AccountId,
        endpoint: &str,
        amount: Amount,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, Error> {
        let Some(seq) = token else {
            return Ok(None);
        };
        let id = TokenId {
            account: self.id,
            seq,
        };
        let t = self
            .tokens
            .get(&seq)
            .ok_or(Error::UnknownToken { token: id })?;
        if t.revoked {
            return Err(Error::TokenRevoked { token: id });
        }
        if now >= t.expires_at {
            return Err(Error::TokenExpired {
                token: id,
                expired_at: t.expires_at,
            });
        }
        if t.app != app {
            return Err(Error::TokenScope {
                token: id,
                field: "app",
            });
        }
        if !t.endpoint.is_empty() && t.endpoint != endpoint {
            return Err(Error::TokenScope {
                token: id,
                field: "endpoint",
            });
        }
        if amount > t.remaining() {
            return Err(Error::TokenCapExceeded {
                token: id,
                cap: t.cap.get(),
                used: t.used.get(),
                requested: amount.get(),
            });
        }
        Ok(Some(t.expires_at))
    }

    /// The spend caps in `ctx` allow holding or charging `amount` more for `app` now.
    fn within_caps(
        &self,
        app: AccountId,
        amount: Amount,
        ctx: &DecideCtx<'_>,
    ) -> Result<(), Error> {
        let caps = ctx.caps;
        if caps.account_per_day.is_none() && caps.app_per_user_per_day.is_none() {
            return Ok(());
        }
        let (spent, spent_app) = self.spent_today(app, ctx.now);
        let checks = [
            (caps.account_per_day, spent, "account per day"),
            (caps.app_per_user_per_day, spent_app, "app per user per day"),
        ];
        for (cap, spent, scope) in checks {
            let Some(cap) = cap else { continue };
            if spent.saturating_add(amount.wide()) > cap.wide() {
                return Err(Error::SpendCapExceeded {
                    account: self.id,
                    scope,
                    cap: cap.get(),
                    spent,
                    requested: amount.get(),
                });
            }
        }
        Ok(())
    }

    /// The record that expires a pending hold whose deadline has passed, if `hold` is one.
    pub fn expire_record(&self, hold: u64, now: Timestamp) -> Option<Record> {
        let found = self.holds.get(&hold)?;
        (found.status == HoldStatus::Pending && found.expires_at <= now).then_some(Record {
            account: self.id,
            op: None,
            at: now,
            origin: Origin::default(),
            change: Change::Expired {
                hold,
                amount_released: found.held(),
            },
        })
    }

    fn require_kind(&self, kind: AccountKind, expected: &'static str) -> Result<(), Error> {
        if self.spec.kind == kind {
            Ok(())
        } else {
            Err(self.wrong_kind(expected))
        }
    }

    fn require_kind_not(&self, kind: AccountKind, expected: &'static str) -> Result<(), Error> {
        if self.spec.kind != kind {
            Ok(())
        } else {
            Err(self.wrong_kind(expected))
        }
    }

    /// The payee of a hold or charge: an app's revenue account or another user (a transfer
    /// between users of a delegated-payment service), never a funding account or itself.
    fn require_payee(&self, ctx: &DecideCtx<'_>, app: AccountId) -> Result<(), Error> {
        if app == self.id {
            return Err(Error::SameAccount { account: self.id });
        }
        let cp = require_counterparty(ctx, app, None, "a revenue or user account")?;
        if cp.kind == AccountKind::Funding {
            return Err(Error::WrongAccountKind {
                account: app,
                actual: cp.kind.name(),
                expected: "a revenue or user account",
            });
        }
        Ok(())
    }

    fn wrong_kind(&self, expected: &'static str) -> Error {
        Error::WrongAccountKind {
            account: self.id,
            actual: self.spec.kind.name(),
            expected,
        }
    }

    /// A debit of `amount` (posted or pending) keeps the account within its limit, and its
    /// totals in range: the balances stay within `i128` even once every pending hold posts.
    /// `pool` says what it may spend: live grants and the general balance, or the general
    /// balance only; never what expired grants still have.
    fn debit_fits(&self, amount: Amount, now: Timestamp, pool: Pool) -> Result<(), Error> {
        let total = self
            .debits_posted
            .checked_add(self.debits_pending)
            .and_then(|t| t.checked_add(amount.wide()));
        let limit = self.spec.credit_limit.wide();
        if !total.is_some_and(|t| totals_fit(self.credits_posted, t, 0, limit)) {
            return Err(Error::Overflow {
                account: self.id,
                field: "debits",
            });
        }
        let available = match pool {
            Pool::Any => self.spendable(now),
            Pool::General => self.general_available(now),
        };
        if !self.spec.may_overdraw() && available < amount.wide() as i128 {
            return Err(Error::InsufficientFunds {
                account: self.id,
                available,
                requested: amount.get(),
            });
        }
        Ok(())
    }

    /// A credit of `amount` keeps the account's totals in range (the credit limit counted).
    fn credit_fits(&self, amount: Amount) -> Result<(), Error> {
        let credits = self.credits_posted.checked_add(amount.wide());
        let limit = self.spec.credit_limit.wide();
        if credits.is_some_and(|c| totals_fit(c, self.debits_posted, self.debits_pending, limit)) {
            Ok(())
        } else {
            Err(Error::Overflow {
                account: self.id,
                field: "credits_posted",
            })
        }
    }

    /// The hold, if it belongs here and is still pending at `now`.
    fn pending_hold(&self, hold: HoldId, now: Timestamp) -> Result<&Hold, Error> {
        let found = self
            .holds
            .get(&hold.seq)
            .filter(|_| hold.account == self.id)
            .ok_or(Error::UnknownHold { hold })?;
        match found.status {
            HoldStatus::Pending if found.expires_at <= now => Err(Error::HoldExpired {
                hold,
                expired_at: found.expires_at,
            }),
            HoldStatus::Pending => Ok(found),
            HoldStatus::Expired => Err(Error::HoldExpired {
                hold,
                expired_at: found.expires_at,
            }),
            status => Err(Error::HoldAlreadyResolved { hold, status }),
        }
    }

    fn retained_posting(&self, posting: PostingId) -> Result<&Posting, Error> {
        self.postings
            .get(&posting.seq)
            .filter(|_| posting.account == self.id)
            .ok_or(Error::UnknownPosting { posting })
    }

    /// A new account from its `Opened` record (`None` for any other record).
    pub fn from_open_record(record: &Record, seq: u64) -> Option<Account> {
        match &record.change {
            Change::Opened { spec } => {
                let mut account = Account::new(record.account, *spec);
                account.last_seq = seq;
                Some(account)
            }
            _ => None,
        }
    }

    /// Applies a record this account made (decided here, or read back from the journal).
    /// Infallible: the record was validated when it was decided.
    pub fn apply(&mut self, record: &Record, seq: u64, limits: &Limits) {
        debug_assert_eq!(
            record.account, self.id,
            "record applied to the wrong account"
        );
        self.last_seq = self.last_seq.max(seq);
        self.add_effect(record, seq);
        match &record.change {
            Change::Opened { .. } => {}
            Change::Funded { amount, .. } => match self.funded.checked_add(amount.wide()) {
                // Decided within credits_posted, which bounds every funding: anything else is
                // a bug, and stops the account loudly.
                Some(funded) => self.funded = funded,
                None => panic!(
                    "{}: record {seq} funds past u128::MAX ({} + {amount})",
                    self.id, self.funded
                ),
            },
            Change::FundingUpdated { new, .. } => self.funded = *new,
            Change::Reserved {
                hold,
                app,
                amount,
                expires_at,
                endpoint,
                metadata,
                token,
                metered,
            } => {
                self.next_seq = self.next_seq.max(hold.saturating_add(1));
                self.token_use(*token, *amount);
                self.deadlines.insert((*expires_at, *hold));
                self.holds.insert(
                    *hold,
                    Hold {
                        id: HoldId {
                            account: self.id,
                            seq: *hold,
                        },
                        amount: *amount,
                        app: *app,
                        endpoint: self.last_endpoint.share(endpoint),
                        metadata: metadata.clone(),
                        created_at: record.at,
                        expires_at: *expires_at,
                        status: HoldStatus::Pending,
                        amount_posted: Amount::ZERO,
                        posting: None,
                        resolved_at: None,
                        token: *token,
                        price: metered.as_ref().map(|m| m.price.clone()),
                        usage_settled: crate::Usage::default(),
                        grants: crate::GrantShares::new(),
                    },
                );
                let shares = self.grants_draw(*amount, record.at, false);
                if let Some(h) = self.holds.get_mut(hold).filter(|_| !shares.is_empty()) {
                    h.grants = shares;
                }
            }
            Change::GrantIssued {
                grant,
                from,
                amount,
                priority,
                expires_at,
                label,
                allowance_period,
            } => {
                self.next_seq = self.next_seq.max(grant.saturating_add(1));
                self.grants_prune(record.at);
                self.grants.insert(
                    *grant,
                    crate::Grant {
                        id: crate::GrantId {
                            account: self.id,
                            seq: *grant,
                        },
                        from: *from,
                        amount: *amount,
                        priority: *priority,
                        expires_at: *expires_at,
                        label: label.clone(),
                        issued_at: record.at,
                        held: Amount::ZERO,
                        used: Amount::ZERO,
                        expired: Amount::ZERO,
                        allowance_period: *allowance_period,
                    },
                );
                if let (Some(start), Some(state)) = (allowance_period, self.allowance.as_mut()) {
                    state.issued_for = Some(*start);
                }
            }
            Change::GrantExpired { grant, amount, .. } => {
                match self.grants.get_mut(grant) {
                    // Decided from what the grant had free: anything else is a bug or damage.
                    Some(g) if *amount <= g.free() => {
                        g.expired = g.expired.checked_add(*amount).unwrap_or(g.amount);
                    }
                    found => panic!(
                        "{}: record {seq} expires {amount} of grant {grant}, which has {:?} free",
                        self.id,
                        found.map(|g| g.free())
                    ),
                }
                self.grants_prune(record.at);
            }
            Change::AllowanceSet { allowance } => {
                let before = self.allowance.take();
                self.allowance = allowance.clone().map(|allowance| {
                    // The same period keeps what was issued (a new amount starts next period);
                    // another period issues at once.
                    let start = allowance.period.start(record.at);
                    let issued_for = before
                        .filter(|b| b.allowance.period == allowance.period)
                        .and_then(|b| b.issued_for)
                        // Removed and set again within a period: its grant stands, and is
                        // not issued twice.
                        .or_else(|| {
                            self.grants
                                .values()
                                .any(|g| g.allowance_period == Some(start))
                                .then_some(start)
                        });
                    crate::AllowanceState {
                        allowance,
                        set_at: record.at,
                        issued_for,
                    }
                });
            }
            Change::PolicySet { setting, version } => {
                self.policy.apply(setting, *version, record.at);
            }
            Change::Corrected {
                posting,
                app,
                old,
                new,
                ..
            } => {
                let mut token = None;
                if let Some(down) = old.checked_sub(*new).filter(|d| !d.is_zero()) {
                    self.posting_give_back(*posting, down, Amount::ZERO);
                } else if let Some(up) = new.checked_sub(*old).filter(|u| !u.is_zero()) {
                    let more = self.grants_draw(up, record.at, true);
                    if let Some(p) = self.postings.get_mut(posting) {
                        merge_shares(&mut p.grants, more);
                    }
                }
                if let Some(p) = self.postings.get_mut(posting) {
                    p.amount = *new;
                    if let Some(e) = p.estimate.as_mut() {
                        e.corrected = true;
                        token = e.token;
                    }
                }
                if let Some(up) = new.checked_sub(*old).filter(|up| *up > Amount::ZERO) {
                    self.spend.add(record.at, *app, up);
                    self.token_use(token, up);
                } else if let Some(down) = old.checked_sub(*new) {
                    self.token_give_back(token, down);
                }
            }
            Change::PriceSet {
                endpoint,
                price,
                version,
            } => {
                self.catalog_version = self.catalog_version.max(*version);
                self.catalog.insert(
                    endpoint.clone(),
                    crate::account::CatalogEntry {
                        version: *version,
                        price: price.clone(),
                        set_at: record.at,
                    },
                );
            }
            Change::Committed {
                hold,
                app,
                amount_posted,
                amount_released,
                posting,
                endpoint,
                estimated,
                period,
                ..
            } => {
                if let Some(step) = period {
                    self.period_step_applied(*app, endpoint, step);
                }
                // What the estimate's correction needs, as the hold was before this commit.
                let estimate = estimated.then(|| self.holds.get(hold)).flatten().map(|h| {
                    Box::new(crate::account::Estimate {
                        price: h.price.clone(),
                        usage_before: h.usage_settled,
                        posted_before: h.amount_posted,
                        estimated: *amount_posted,
                        corrected: false,
                        token: h.token,
                    })
                });
                // The posting shares its hold's endpoint (taken before the hold may be dropped).
                let shared = self.hold_endpoint(*hold, endpoint);
                let paid = self.hold_grants_post(*hold, *amount_posted, true);
                self.token_release(*hold, *amount_released);
                let posting_id = PostingId {
                    account: self.id,
                    seq: *posting,
                };
                self.resolve(*hold, HoldStatus::Posted, record.at, limits, |h| {
                    h.amount_posted =
                        h.amount_posted
                            .checked_add(*amount_posted)
                            .unwrap_or_else(|| {
                                panic!(
                                    "{}: record {seq} posts past u64 on hold {hold}",
                                    h.id.account
                                )
                            });
                    h.posting = Some(posting_id);
                });
                self.add_posting(*posting, *app, *amount_posted, record.at, shared, limits);
                if let Some(p) = self.postings.get_mut(posting) {
                    p.estimate = estimate;
                    p.grants = paid;
                }
                self.spend.add(record.at, *app, *amount_posted);
            }
            Change::Voided {
                hold,
                amount_released,
            } => {
                self.token_release(*hold, *amount_released);
                self.hold_grants_post(*hold, Amount::ZERO, true);
                self.resolve(*hold, HoldStatus::Voided, record.at, limits, |_| {});
            }
            Change::Extended {
                hold,
                amount,
                expires_at,
                total,
                ..
            } => {
                let token = self.holds.get(hold).and_then(|h| h.token);
                self.token_use(token, *amount);
                let more = self.grants_draw(*amount, record.at, false);
                if let Some(h) = self.holds.get_mut(hold) {
                    merge_shares(&mut h.grants, more);
                    // Decided from this hold: anything else is a bug, and stops the account.
                    assert_eq!(
                        h.amount.checked_add(*amount),
                        Some(*total),
                        "{}: record {seq} extends hold {hold} to a total it does not make",
                        self.id
                    );
                    h.amount = *total;
                    if h.expires_at != *expires_at {
                        self.deadlines.remove(&(h.expires_at, *hold));
                        self.deadlines.insert((*expires_at, *hold));
                        h.expires_at = *expires_at;
                    }
                }
            }
            Change::Settled {
                hold,
                app,
                amount,
                posting,
                usage,
                endpoint,
                period,
                ..
            } => {
                if let Some(step) = period {
                    self.period_step_applied(*app, endpoint, step);
                }
                if let Some(h) = self.holds.get_mut(hold) {
                    h.usage_settled = h.usage_settled.checked_add(usage).unwrap_or_else(|| {
                        panic!(
                            "{}: record {seq} settles usage past u64 on hold {hold}",
                            h.id
                        )
                    });
                    h.amount_posted = match h.amount_posted.checked_add(*amount) {
                        Some(posted) if posted <= h.amount => posted,
                        _ => panic!(
                            "{}: record {seq} settles {amount} of hold {hold}, past its {} \
                             ({} posted already)",
                            self.id, h.amount, h.amount_posted
                        ),
                    };
                }
                let paid = self.hold_grants_post(*hold, *amount, false);
                let shared = self.hold_endpoint(*hold, endpoint);
                self.add_posting(*posting, *app, *amount, record.at, shared, limits);
                if let Some(p) = self.postings.get_mut(posting).filter(|_| !paid.is_empty()) {
                    p.grants = paid;
                }
                self.spend.add(record.at, *app, *amount);
            }
            Change::Expired {
                hold,
                amount_released,
            } => {
                self.token_release(*hold, *amount_released);
                self.hold_grants_post(*hold, Amount::ZERO, true);
                self.resolve(*hold, HoldStatus::Expired, record.at, limits, |_| {});
            }
            Change::Charged {
                app,
                amount,
                posting,
                token,
                endpoint,
                ..
            } => {
                self.token_use(*token, *amount);
                let paid = self.grants_draw(*amount, record.at, true);
                let endpoint = self.last_endpoint.share(endpoint);
                self.add_posting(*posting, *app, *amount, record.at, endpoint, limits);
                if let Some(p) = self.postings.get_mut(posting).filter(|_| !paid.is_empty()) {
                    p.grants = paid;
                }
                self.spend.add(record.at, *app, *amount);
            }
            Change::Refunded {
                posting, amount, ..
            } => {
                self.posting_give_back(*posting, *amount, Amount::ZERO);
                if let Some(p) = self.postings.get_mut(posting) {
                    // Decided within what is left of the posting; a record past it is kept as
                    // it is, for the audit to report (never clamped to fit).
                    match p.amount_refunded.checked_add(*amount) {
                        Some(refunded) => p.amount_refunded = refunded,
                        None => panic!(
                            "{}: record {seq} refunds {amount} of posting {}, past u64::MAX \
                             ({} refunded already)",
                            self.id, p.id, p.amount_refunded
                        ),
                    }
                }
            }
            Change::Transferred { .. } => {}
            Change::TokenIssued {
                token,
                app,
                cap,
                expires_at,
                endpoint,
            } => {
                self.next_seq = self.next_seq.max(token.saturating_add(1));
                // Dead tokens go when a new one comes, so the map stays within the live bound.
                self.tokens.retain(|_, t| t.live(record.at));
                self.tokens.insert(
                    *token,
                    SpendToken {
                        id: TokenId {
                            account: self.id,
                            seq: *token,
                        },
                        app: *app,
                        endpoint: endpoint.clone(),
                        cap: *cap,
                        used: Amount::ZERO,
                        issued_at: record.at,
                        expires_at: *expires_at,
                        revoked: false,
                    },
                );
            }
            Change::TokenRevoked { token } => {
                if let Some(t) = self.tokens.get_mut(token) {
                    t.revoked = true;
                }
            }
        }
        if let (Some(op), Some(command)) = (record.op, record.command()) {
            self.remember(
                op,
                command.digest(),
                record.outcome(),
                record.at,
                seq,
                limits,
            );
        }
    }

    /// Applies the counterparty's side of a record another account made: the credit of a
    /// revenue account by a commit or charge, the debit of a funding account by a funding, the
    /// debit of a revenue account by a refund, the credit of a transfer's target.
    pub fn apply_leg(&mut self, record: &Record, seq: u64) {
        let Some((id, leg)) = crate::legs::leg_of(record) else {
            panic!("{}: record {seq} carries no leg", self.id);
        };
        assert_eq!(
            id, self.id,
            "record {seq}'s leg applied to the wrong account"
        );
        let mut legs = self.legs;
        if let Err(e) = legs.add(leg, seq) {
            panic!("{}: {e}", self.id);
        }
        if let Err(e) = self.absorb_legs(&legs) {
            panic!("{e}");
        }
    }

    /// A hold or charge made with a spend token uses that much of its cap.
    fn token_use(&mut self, token: Option<u64>, amount: Amount) {
        if let Some(t) = token.and_then(|seq| self.tokens.get_mut(&seq)) {
            // Decided within the cap: anything else is a bug, and stops the account loudly.
            match t.used.checked_add(amount) {
                Some(used) if used <= t.cap => t.used = used,
                _ => panic!(
                    "{} used past its cap: {} + {amount} > {}",
                    t.id, t.used, t.cap
                ),
            }
        }
    }

    /// The released part of a hold made with a spend token goes back to the token.
    fn token_release(&mut self, hold: u64, released: Amount) {
        let token = self.holds.get(&hold).and_then(|h| h.token);
        self.token_give_back(token, released);
    }

    /// Gives `released` back to a spend token's room (a hold's remainder, an estimate
    /// corrected down).
    fn token_give_back(&mut self, token: Option<u64>, released: Amount) {
        if let Some(t) = token.and_then(|seq| self.tokens.get_mut(&seq)) {
            match t.used.checked_sub(released) {
                Some(used) => t.used = used,
                None => panic!(
                    "{} released {released}, more than its {} used",
                    t.id, t.used
                ),
            }
        }
    }

    /// Adds what `record` does to this account's totals. A decided record fits them (decide
    /// checks the totals of the account deciding; a counterparty's would need 2^64 records to
    /// overflow): anything else is a bug or damage, and stops the account loudly rather than
    /// clamping a balance.
    fn add_effect(&mut self, record: &Record, seq: u64) {
        let effect = record.effect_on(self.id);
        if let Err(total) = effect.add_to(
            &mut self.credits_posted,
            &mut self.debits_posted,
            &mut self.debits_pending,
        ) {
            panic!(
                "{}: record {seq} takes {total} out of range ({effect:?} on credits {}, debits \
                 {}, pending {})",
                self.id, self.credits_posted, self.debits_posted, self.debits_pending
            );
        }
    }

    fn resolve(
        &mut self,
        hold: u64,
        status: HoldStatus,
        at: Timestamp,
        limits: &Limits,
        update: impl FnOnce(&mut Hold),
    ) {
        let Some(h) = self.holds.get_mut(&hold) else {
            debug_assert!(false, "resolving an unknown hold");
            return;
        };
        debug_assert_eq!(h.status, HoldStatus::Pending, "hold resolved twice");
        h.status = status;
        h.resolved_at = Some(at);
        update(h);
        self.deadlines.remove(&(h.expires_at, hold));
        self.resolved_order.push_back(hold);
        self.next_seq = self.next_seq.max(hold.saturating_add(1));
        while self.resolved_order.len() > limits.holds_resolved_retained {
            if let Some(old) = self.resolved_order.pop_front() {
                self.holds.remove(&old);
            }
        }
    }

    /// Applies a period step: the period's use after it, and a volume rebate taken off what
    /// the period's earlier postings at this app and endpoint may still refund (newest first):
    /// it returned part of what they charged, so a refund of them cannot return it again.
    fn period_step_applied(&mut self, app: AccountId, endpoint: &str, step: &crate::PeriodStep) {
        self.period_use
            .insert((app, endpoint.to_owned()), step.after);
        let mut left = step.rebate;
        let mut rebated = Vec::new();
        for seq in self.posting_order.iter().rev() {
            if left.is_zero() {
                break;
            }
            let Some(p) = self.postings.get_mut(seq) else {
                continue;
            };
            if p.app != app || &*p.endpoint != endpoint || p.posted_at.0 < step.after.start {
                continue;
            }
            let take = p.refundable().min(left);
            if !p.grants.is_empty() {
                rebated.push((*seq, take));
            }
            p.amount_refunded = p.amount_refunded.checked_add(take).unwrap_or(p.amount);
            left = left.checked_sub(take).unwrap_or(Amount::ZERO);
        }
        // What the rebate gave back of postings grants paid goes back to those grants.
        for (seq, take) in rebated {
            self.posting_give_back(seq, take, take);
        }
    }

    /// Gives `amount` returned on a retained posting back where it was paid from (see
    /// [`crate::Grant`]: its general part first, then its grants from the last drawn).
    /// `reduced` is how much of it the posting's refundable amount was already reduced by (a
    /// volume rebate takes it off first; a refund or a correction after).
    fn posting_give_back(&mut self, posting: u64, amount: Amount, reduced: Amount) {
        if self.grants.is_empty() {
            return;
        }
        let Some(p) = self.postings.get_mut(&posting) else {
            return;
        };
        let mut shares = std::mem::take(&mut p.grants);
        let general = p
            .refundable()
            .wide()
            .saturating_add(reduced.wide())
            .saturating_sub(crate::grant::shares_total(&shares));
        self.grants_restore(&mut shares, general, amount);
        if let Some(p) = self.postings.get_mut(&posting) {
            p.grants = shares;
        }
    }

    /// Posts `amount` of a hold from its grant shares first (a settlement or commit) and, when
    /// `release`, gives the shares left back to their grants; returns what each grant paid.
    fn hold_grants_post(&mut self, hold: u64, amount: Amount, release: bool) -> crate::GrantShares {
        let Some(h) = self.holds.get_mut(&hold).filter(|h| !h.grants.is_empty()) else {
            return crate::GrantShares::new();
        };
        let mut shares = std::mem::take(&mut h.grants);
        let paid = self.grants_consume(&mut shares, amount);
        if release {
            self.grants_release(&mut shares);
        }
        if let Some(h) = self.holds.get_mut(&hold) {
            h.grants = shares;
        }
        paid
    }

    /// The record the engine makes by itself for this account's grants at `now`, if one is
    /// due: what an expired grant has free going back to its funding account, else the
    /// grant of its allowance for the current period. (Hold expiry is [`Account::expire_record`].)
    pub fn grant_timer_record(&self, now: Timestamp) -> Option<Record> {
        let change = if let Some(g) = self
            .grants
            .values()
            .find(|g| g.expired_at(now) && !g.free().is_zero())
        {
            Change::GrantExpired {
                grant: g.id.seq,
                from: g.from,
                amount: g.free(),
            }
        } else {
            let state = self.allowance.as_ref()?;
            let a = &state.allowance;
            let start = a.period.start(now);
            if now < state.next_at() || state.issued_for == Some(start) {
                return None;
            }
            if self.credit_fits(a.amount).is_err() {
                return None;
            }
            Change::GrantIssued {
                grant: self.next_seq,
                from: a.from,
                amount: a.amount,
                priority: a.priority,
                expires_at: Some(Timestamp(a.period.end(start))),
                label: a.label.clone(),
                allowance_period: Some(start),
            }
        };
        Some(Record {
            account: self.id,
            op: None,
            at: now,
            origin: Origin::default(),
            change,
        })
    }

    /// A hold's endpoint, shared (the record's text when the hold is gone).
    fn hold_endpoint(&mut self, hold: u64, endpoint: &str) -> std::sync::Arc<str> {
        match self.holds.get(&hold) {
            Some(h) if &*h.endpoint == endpoint => h.endpoint.clone(),
            _ => self.last_endpoint.share(endpoint),
        }
    }

    fn add_posting(
        &mut self,
        seq: u64,
        app: AccountId,
        amount: Amount,
        at: Timestamp,
        endpoint: std::sync::Arc<str>,
        limits: &Limits,
    ) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.postings.insert(
            seq,
            Posting {
                id: PostingId {
                    account: self.id,
                    seq,
                },
                app,
                amount,
                amount_refunded: Amount::ZERO,
                posted_at: at,
                endpoint,
                estimate: None,
                grants: crate::GrantShares::new(),
            },
        );
        self.posting_order.push_back(seq);
        while self.posting_order.len() > limits.postings_retained {
            if let Some(old) = self.posting_order.pop_front() {
                self.postings.remove(&old);
            }
        }
    }

    fn remember(
        &mut self,
        op: OpId,
        digest: crate::command::Digest,
        outcome: Outcome,
        at: Timestamp,
        seq: u64,
        limits: &Limits,
    ) {
        let unloaded = self.keys_unloaded.is_some();
        if unloaded && self.remembered.contains_key(&op) {
            // Replayed onto an account without its keys: the op id was used again, so when
            // it was, its first use had been forgotten, and with it every key before it (the
            // store's unread keys too).
            forget_through(&mut self.remembered, &mut self.remembered_order, op);
            self.keys_unloaded = Some(crate::KeyWindow::default());
        }
        self.remembered.insert(
            op,
            Remembered {
                digest,
                outcome,
                at,
                seq,
            },
        );
        self.remembered_order.push_back((at, op));
        if unloaded {
            // The oldest keys are in the store, unread: forgotten when they are restored.
            if self.keys_untrimmed_from == 0 {
                self.keys_untrimmed_from = seq;
            }
            return;
        }
        forget_oldest(&mut self.remembered, &mut self.remembered_order, at, limits);
    }
}

/// Adds `more` to `shares`, a grant already there growing its share.
fn merge_shares(shares: &mut crate::GrantShares, more: crate::GrantShares) {
    for (seq, amount) in more {
        match shares.iter_mut().find(|(s, _)| *s == seq) {
            // Shares of one hold or posting add up to at most its amount.
            Some((_, share)) => {
                *share = share
                    .checked_add(amount)
                    .unwrap_or_else(|| panic!("grant {seq}: share {share} + {amount} overflows"))
            }
            None => shares.push((seq, amount)),
        }
    }
}

/// The commit of `amount` of `held` (a pending hold), posted as `posting`: refused past what it
/// still holds.
fn commit_change(
    held: &Hold,
    hold: HoldId,
    amount: Amount,
    usage: crate::Usage,
    posting: u64,
    metered: bool,
) -> Result<Change, Error> {
    let amount_released = left_in(held, hold, amount)?;
    Ok(Change::Committed {
        hold: hold.seq,
        app: held.app,
        amount_posted: amount,
        amount_released,
        posting,
        endpoint: held.endpoint.to_string(),
        usage,
        metered,
        estimated: false,
        period: None,
    })
}

/// The settlement of `amount` of `held` (a pending hold), posted as `posting`; by usage at its
/// pinned price when `metered`.
fn settle_change(
    held: &Hold,
    hold: HoldId,
    amount: Amount,
    usage: crate::Usage,
    posting: u64,
    metered: bool,
) -> Result<Change, Error> {
    if held.usage_settled.checked_add(&usage).is_none() {
        return Err(Error::Overflow {
            account: hold.account,
            field: "usage",
        });
    }
    Ok(Change::Settled {
        hold: hold.seq,
        app: held.app,
        amount,
        posting,
        endpoint: held.endpoint.to_string(),
        usage,
        amount_held: left_in(held, hold, amount)?,
        metered,
        period: None,
    })
}

/// What `held` still holds once `part` of it is posted; refused past what it holds.
fn left_in(held: &Hold, hold: HoldId, part: Amount) -> Result<Amount, Error> {
    let holding = held.held();
    holding.checked_sub(part).ok_or(Error::CommitExceedsHold {
        hold,
        held: holding.get(),
        requested: part.get(),
    })
}

/// A hold's timeout within the limits.
fn timeout_in_range(timeout_ms: u64, limits: &Limits) -> Result<(), Error> {
    if timeout_ms < limits.hold_timeout_ms_min || timeout_ms > limits.hold_timeout_ms_max {
        return Err(Error::InvalidTimeout {
            timeout_ms,
            min_ms: limits.hold_timeout_ms_min,
            max_ms: limits.hold_timeout_ms_max,
        });
    }
    Ok(())
}

/// The most endpoints one app may price at once.
pub const PRICES_MAX: usize = 1_000;
/// The most tiers one price may have.
pub const TIERS_MAX: usize = 64;

/// A price the catalog may hold: its tiers in order and at most [`TIERS_MAX`], every rate per at
/// least one unit (checked by pricing nothing with it, which walks every tier).
fn check_price(price: &crate::Price) -> Result<(), Error> {
    if let crate::Price::Tiered { tiers, .. } | crate::Price::PeriodTiered { tiers, .. } = price {
        if tiers.len() > TIERS_MAX {
            return Err(Error::InvalidPrice {
                reason: format!("{} tiers, at most {TIERS_MAX}", tiers.len()),
            });
        }
    }
    if let crate::Price::PeriodTiered { tiers, period, .. } = price {
        if !crate::period::non_increasing(tiers) {
            return Err(Error::InvalidPrice {
                reason: "a period tier may not be dearer per unit than the one before it".into(),
            });
        }
        if let crate::Period::Every { length_ms, .. } = period {
            if *length_ms < crate::period::PERIOD_MS_MIN {
                return Err(Error::InvalidPrice {
                    reason: format!("a period of {length_ms} ms: at least one minute"),
                });
            }
        }
    }
    let rates_ok = match price {
        crate::Price::PerRequest(_) => true,
        crate::Price::PerToken { input, output } => input.per > 0 && output.per > 0,
        crate::Price::PerCharacter(r) | crate::Price::PerPage(r) | crate::Price::PerSecond(r) => {
            r.per > 0
        }
        crate::Price::Tiered { tiers, .. } | crate::Price::PeriodTiered { tiers, .. } => {
            tiers.iter().all(|t| t.rate.per > 0)
        }
    };
    if !rates_ok {
        return Err(Error::InvalidPrice {
            reason: crate::PricingError::ZeroPer.to_string(),
        });
    }
    price
        .cost(&crate::Usage::default())
        .map(drop)
        .map_err(|e| Error::InvalidPrice {
            reason: e.to_string(),
        })
}

fn require_counterparty(
    ctx: &DecideCtx<'_>,
    id: AccountId,
    kind: Option<AccountKind>,
    expected: &'static str,
) -> Result<Counterparty, Error> {
    let cp = ctx
        .counterparty
        .filter(|cp| cp.id == id)
        .ok_or(Error::UnknownAccount { account: id })?;
    match kind {
        Some(kind) if cp.kind != kind => Err(Error::WrongAccountKind {
            account: id,
            actual: cp.kind.name(),
            expected,
        }),
        _ => Ok(cp),
    }
}
