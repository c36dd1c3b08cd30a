//! Metering on top of the ledger: the price catalog, the seeds' cost-service calls, and the
//! metered call guard.
//!
//! A service written against the seeds' cost service moves to tally one call for one call:
//! `get_funding_allowed({minimum})` is [`Tally::funding_allowed`], `record_cost({cost})` is
//! [`Tally::record_cost`], and a variable-cost call is [`Tally::meter`] + [`MeterGuard::finish`].
//!
//! The catalog is ledger state: each app's prices live in its account, set by journaled
//! records ([`Tally::set_price`], versioned per app), so they survive restarts and are in the
//! audit trail. A metered hold pins the price it was quoted at ([`Tally::meter`]) and
//! finishing it prices the usage with that price ([`Tally::finish`]), whatever the catalog
//! says by then.

use std::time::Duration;

use std::sync::Arc;

use tally_core::{
    AccountId, Amount, Command, HoldId, OpId, Outcome, PinnedPrice, PostingId, Price, PricingError,
    Record, Timestamp, Usage, UsageQuery, UsageReport, UsageTotals,
};

use crate::{Committed, Error, HoldGuard, Settled, Tally, HISTORY_PAGE_MAX};

/// How long the catalog of an app another node serves is kept before it is read again.
pub const REMOTE_CATALOG_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

/// How many catalogs of apps other nodes serve are kept at most: past it, the stale ones are
/// dropped first and then the whole map (each is read again on its next use).
pub const REMOTE_CATALOGS_MAX: usize = 4_096;

/// Why a metered call could not be priced.
impl From<PricingError> for Error {
    fn from(e: PricingError) -> Self {
        Error::Pricing(e)
    }
}

/// A metered call in progress: the hold sized from the most the call can cost at the price it
/// pinned.
pub struct MeterGuard {
    hold: HoldGuard,
    price: PinnedPrice,
}

impl MeterGuard {
    /// The hold behind the call.
    pub fn hold(&self) -> &HoldGuard {
        &self.hold
    }

    /// The price the hold pinned.
    pub fn price(&self) -> &PinnedPrice {
        &self.price
    }

    /// Lets go of the call without resolving it (see [`HoldGuard::detach`]): its hold stays
    /// pending, to be finished by id with [`Tally::finish`].
    pub fn detach(self) -> HoldId {
        self.hold.detach()
    }

    /// Settles the part of the call that used `usage` (see [`Tally::progress`]).
    pub async fn progress(&self, op: OpId, usage: &Usage) -> Result<Settled, Error> {
        self.hold.tally().progress(op, self.hold.id(), *usage).await
    }

    /// Commits the cost of `usage` at the pinned price (at most what was held). Dropping the
    /// guard instead voids the hold: nobody pays for failed work.
    pub async fn finish(&mut self, op: OpId, usage: &Usage) -> Result<Committed, Error> {
        self.hold.finish(op, usage).await
    }
}

impl Tally {
    /// Sets (with `None`, removes) the price of an app's endpoint: a journaled change of the
    /// app's catalog, decided by the app's account; returns the entry's new version. Holds
    /// already made keep the price they were quoted at. Refused: `InvalidPrice` (tiers out of
    /// order, more than 64, a rate per zero units; removing what is not priced),
    /// `TooManyPrices` (1,000 endpoints per app), `FieldTooLong`, `WrongAccountKind` (a
    /// funding account).
    pub async fn set_price(
        &self,
        op: OpId,
        app: AccountId,
        endpoint: impl Into<String>,
        price: Option<Price>,
    ) -> Result<u64, Error> {
        let command = Command::SetPrice {
            endpoint: endpoint.into(),
            price,
        };
        match self.execute(app, self.request(op, command)).await? {
            Outcome::PriceSet { version } => Ok(version),
            other => Err(crate::error::unexpected(other)),
        }
    }

    /// The price an app's catalog has for `endpoint` now, with its version (`None`: not
    /// priced). The first look-up of an app after the engine opens reads its account.
    pub async fn price(
        &self,
        app: AccountId,
        endpoint: &str,
    ) -> Result<Option<PinnedPrice>, Error> {
        let catalog = self.catalog(app).await?;
        Ok(catalog.1.get(endpoint).and_then(|entry| {
            entry.price.as_ref().map(|price| PinnedPrice {
                version: entry.version,
                price: price.clone(),
            })
        }))
    }

    /// An app's whole catalog: its newest version and every endpoint's entry (removed ones
    /// have no price).
    pub async fn catalog(&self, app: AccountId) -> Result<Arc<crate::mailbox::Catalog>, Error> {
        if let Some(cached) = self.shared.catalogs.get(&app) {
            return Ok(cached.clone());
        }
        if let Some(cached) = self.shared.remote_catalogs.get(&app) {
            if cached.0.elapsed() < REMOTE_CATALOG_KEPT {
                return Ok(cached.1.clone());
            }
        }
        let read = match self.read(app, || crate::mailbox::Query::Catalog).await {
            // The app is served by another node (a store shared by several): its durable
            // catalog, kept a moment (a price set there holds here within that, and a round
            // trip), never cached as this node's own.
            Err(Error::NotOwner { .. }) if self.shared.store.shares_directory() => {
                let store = self.shared.store.clone();
                let account = tokio::task::spawn_blocking(move || store.peek(app))
                    .await
                    .map_err(|e| Error::Internal {
                        reason: format!("reading an app's catalog: {e}").into(),
                    })??
                    .ok_or(Error::Ledger(tally_core::Error::UnknownAccount {
                        account: app,
                    }))?;
                let catalog = Arc::new(crate::mailbox::catalog_of(&account));
                let remote = &self.shared.remote_catalogs;
                if remote.len() >= REMOTE_CATALOGS_MAX {
                    remote.retain(|_, (at, _)| at.elapsed() < REMOTE_CATALOG_KEPT);
                    if remote.len() >= REMOTE_CATALOGS_MAX {
                        remote.clear();
                    }
                }
                self.shared
                    .remote_catalogs
                    .insert(app, (std::time::Instant::now(), catalog.clone()));
                return Ok(catalog);
            }
            other => other?,
        };
        match read {
            crate::mailbox::Answer::Catalog(catalog) => {
                self.shared.cache_catalog(app, *catalog);
                self.shared
                    .catalogs
                    .get(&app)
                    .map(|c| c.clone())
                    .ok_or_else(|| Error::Internal {
                        reason: "a cached catalog vanished".into(),
                    })
            }
            _ => Err(Error::Internal {
                reason: "unexpected answer to catalog".into(),
            }),
        }
    }

    async fn priced(&self, app: AccountId, endpoint: &str) -> Result<PinnedPrice, Error> {
        self.price(app, endpoint)
            .await?
            .ok_or_else(|| Error::NoPrice {
                app,
                endpoint: endpoint.to_string(),
            })
    }

    /// What `usage` costs at an app's endpoint's price now. A period-tiered price costs what it
    /// would post for `account` at its count in the current period (without an account: as the
    /// first call of a period).
    pub async fn quote(
        &self,
        app: AccountId,
        endpoint: &str,
        usage: &Usage,
        account: Option<AccountId>,
    ) -> Result<Amount, Error> {
        let pinned = self.priced(app, endpoint).await?;
        let price = &pinned.price;
        let (tally_core::Price::PeriodTiered { period, .. }, Some(account)) = (price, account)
        else {
            return Ok(price.cost(usage)?);
        };
        let now = self.shared.config.clock.now();
        let used = self
            .period_use_at(account, app, endpoint, *period, now)
            .await?;
        Ok(price.quote(usage, used, now, pinned.version)?)
    }

    /// Asks the account for its use of a period-tiered price (no copy of the account).
    async fn period_use_at(
        &self,
        account: AccountId,
        app: AccountId,
        endpoint: &str,
        period: tally_core::Period,
        now: tally_core::Timestamp,
    ) -> Result<tally_core::PeriodUse, Error> {
        let query = || crate::mailbox::Query::PeriodUse {
            app,
            endpoint: endpoint.to_owned(),
            period,
            now,
        };
        match self.read(account, query).await? {
            crate::mailbox::Answer::PeriodUse(used) => Ok(used),
            _ => Err(Error::Internal {
                reason: "unexpected answer to period use".into(),
            }),
        }
    }

    /// An account's use of an app's endpoint's period-tiered price in its current period, with
    /// the tier its count has reached (`None`: the price is not period-tiered).
    pub async fn period_use(
        &self,
        account: AccountId,
        app: AccountId,
        endpoint: &str,
    ) -> Result<Option<(tally_core::PeriodUse, u64, usize)>, Error> {
        let Some(price) = self.price(app, endpoint).await? else {
            return Ok(None);
        };
        let tally_core::Price::PeriodTiered { period, tiers, .. } = &price.price else {
            return Ok(None);
        };
        let now = self.shared.config.clock.now();
        let used = self
            .period_use_at(account, app, endpoint, *period, now)
            .await?;
        let end = period.end(used.start);
        Ok(Some((
            used,
            end,
            tally_core::period::tier_reached(tiers, used.units),
        )))
    }

    /// Settles a part of a metered call by usage: the call used `usage` more since its last
    /// part; posts the cost of all its usage so far at the pinned price minus what was posted
    /// (the cost is rounded once over the whole call), the hold staying pending. More than it
    /// holds is `CommitExceedsHold`: extend it ([`Tally::extend`]) or stop the call.
    pub async fn progress(&self, op: OpId, hold: HoldId, usage: Usage) -> Result<Settled, Error> {
        let command = Command::Progress { hold, usage };
        crate::handle::settled(
            self.execute(hold.account, self.request(op, command))
                .await?,
        )
    }

    /// Finishes a metered hold: posts the cost of all its usage (the parts settled plus
    /// `usage`, the rest of the call's) at the price the hold pinned, minus what its parts
    /// posted (at most what it still holds: more is `CommitExceedsHold`), and releases the
    /// rest. `NotMetered` for a hold made by a plain reserve; `SettledPastCost` when parts
    /// settled by amount posted more than the whole usage costs.
    pub async fn finish(&self, op: OpId, hold: HoldId, usage: Usage) -> Result<Committed, Error> {
        let command = Command::Finish { hold, usage };
        crate::handle::committed(
            self.execute(hold.account, self.request(op, command))
                .await?,
        )
    }

    /// The most of one usage field (`maximize`, e.g. output tokens, with the rest of `base`
    /// as given) that `account` can pay for at `app`'s `endpoint` right now: what its available
    /// balance, spend caps, the spend token presented (its sequence number) and the rate limits
    /// leave for one more hold, priced by the current catalog under its rounding (the cost of
    /// one unit more is above that room). A caller clamps `max_tokens` to it before calling a
    /// model, then reserves `cost`. Reads only: nothing is held, and a concurrent request may
    /// take the room first (the hold is still decided on its own).
    ///
    /// Errors: `NoPrice`, `UnknownAccount`, the token's refusals, pricing overflow.
    pub async fn affordable(
        &self,
        account: AccountId,
        app: AccountId,
        endpoint: &str,
        base: &Usage,
        maximize: tally_core::UsageField,
        token: Option<u64>,
    ) -> Result<Affordable, Error> {
        let price = self.priced(app, endpoint).await?.price;
        let caps = self.shared.policy.caps_for(account, app);
        let now = self.shared.config.clock.now();
        let period = match &price {
            tally_core::Price::PeriodTiered { period, .. } => Some(*period),
            _ => None,
        };
        let query = || crate::mailbox::Query::Room {
            app,
            endpoint: endpoint.to_owned(),
            token,
            caps,
            now,
            period,
        };
        let (room, used) = match self.read(account, query).await? {
            crate::mailbox::Answer::Room(room, used) => (room, used),
            _ => {
                return Err(Error::Internal {
                    reason: "unexpected answer to room".into(),
                })
            }
        };
        let (mut room, limiter) = room?;
        let mut limited_by = limiter.name();
        if let Some((rate_room, _)) = self.shared.policy.rate_room(account, app, now.0) {
            if rate_room < room.get() {
                room = Amount::new(rate_room).unwrap_or(Amount::ZERO);
                limited_by = "rate_limit";
            }
        }
        // A period-tiered price: what a hold made now would hold, at the account's count.
        let found = match used {
            Some(used) => price.max_units_by(base, maximize, room, |usage| {
                price.hold_bound(usage, used, now, now)
            })?,
            None => price.max_units(base, maximize, room)?,
        };
        Ok(Affordable {
            units: found.map(|(units, _)| units),
            cost: found.map(|(_, cost)| cost),
            room,
            limited_by,
        })
    }

    /// The seeds' `get_funding_allowed({ minimum })`: whether `available ≥ minimum` (default
    /// 100 µ¢).
    pub async fn funding_allowed(
        &self,
        account: AccountId,
        minimum: Option<u64>,
    ) -> Result<bool, Error> {
        self.check(account, minimum).await
    }

    /// The seeds' `record_cost({ cost })`: charge a cost the work already incurred (counted
    /// as one request in usage).
    pub async fn record_cost(
        &self,
        op: OpId,
        account: AccountId,
        cost: u64,
        app: AccountId,
        endpoint: impl Into<String>,
    ) -> Result<PostingId, Error> {
        let usage = Usage {
            requests: 1,
            ..Usage::default()
        };
        self.charge_with_usage(op, account, app, cost, endpoint, usage)
            .await
    }

    /// The seeds' `record_funding_update({ old_amount, new_amount })`: sets the account's total
    /// funding ([`tally_core::Account::funded`]: every funding so far, or the last update's
    /// total) from `old` to `new`, crediting the difference from the funding account `from`
    /// (or returning it there when `new < old`, refused as `InsufficientFunds` if the account
    /// no longer has it available). Refused with `FundingMismatch` (naming the current total)
    /// when `old` is not the current total: an optimistic check, so two updates computed from
    /// the same total never both apply. Returns the new total.
    pub async fn record_funding_update(
        &self,
        op: OpId,
        account: AccountId,
        from: AccountId,
        old: u128,
        new: u128,
    ) -> Result<u128, Error> {
        let command = Command::UpdateFunding { from, old, new };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::FundingUpdated { funded } => Ok(funded),
            other => Err(crate::error::unexpected(other)),
        }
    }

    /// Usage and cost of commits and charges, summed as `query` says (per account, app,
    /// endpoint, over a range of minute, hour or day buckets; see [`tally_core::UsageBook`]).
    pub fn usage(&self, query: &UsageQuery) -> Result<UsageReport, Error> {
        Ok(self.shared.store.usage(query)?)
    }

    /// The `n` accounts that spent most in `query`'s range (at its app and endpoint, if set),
    /// most first.
    pub fn top_users(
        &self,
        query: &UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, UsageTotals)>, Error> {
        Ok(self.shared.store.top_users(query, n)?)
    }

    /// Starts a metered call: holds the cost of `max_usage` at the endpoint's price, and returns
    /// the guard whose [`MeterGuard::finish`] commits the cost of the actual usage.
    pub async fn meter(
        &self,
        op: OpId,
        account: AccountId,
        app: AccountId,
        endpoint: &str,
        max_usage: &Usage,
        timeout: Duration,
    ) -> Result<MeterGuard, Error> {
        let price = self.priced(app, endpoint).await?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let command = Command::ReserveMetered {
            app,
            endpoint: endpoint.to_owned(),
            max_usage: *max_usage,
            timeout_ms,
            metadata: String::new(),
            token: None,
            price: Box::new(price.clone()),
        };
        let hold = match self.execute(account, self.request(op, command)).await? {
            Outcome::Reserved { hold, amount, .. } => (hold, amount),
            other => return Err(crate::error::unexpected(other)),
        };
        let (hold, amount) = hold;
        let hold = HoldGuard::new(self.clone(), hold, amount, op);
        Ok(MeterGuard { hold, price })
    }

    /// Verifies the audit trail: walks the hash-chained journal (archive included) from its
    /// first record and reports every altered, inserted, removed or truncated record (see
    /// `tally_store::trail`). Reads the whole history on a blocking thread.
    pub async fn verify_trail(&self) -> Result<tally_store::TrailReport, Error> {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.verify_trail())
            .await
            .map_err(|e| Error::Internal {
                reason: format!("verifying the trail: {e}").into(),
            })?
            .map_err(Error::from)
    }

    /// Removes the archived history before `before_seq`, whole segments only (see
    /// `tally_store::DurableStore::prune_history`): history and balance history then start
    /// after the cut and say so, and the trail verifies from the hash kept there. On a blocking
    /// thread. Errors: `Storage` on the in-memory store (nothing to prune) or when the range
    /// does not chain into what stays (nothing removed).
    pub async fn prune_history(&self, before_seq: u64) -> Result<tally_store::Pruned, Error> {
        self.admit()?;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.prune_history(before_seq))
            .await
            .map_err(|e| Error::Internal {
                reason: format!("pruning the history: {e}").into(),
            })?
            .map_err(Error::from)
    }

    /// The last durable record's sequence number and chain hash, to publish off the machine.
    pub fn trail_head(&self) -> (u64, [u8; 32]) {
        self.shared.store.trail_head()
    }

    /// An account's balance after each change made in `[from, to)` (at most `limit` points,
    /// oldest first), rebuilt from its history: every durable record that touched it since it
    /// was opened (or since the cut of pruned history, starting from the totals kept at the
    /// cut) is read, so the cost grows with the account's history. Changes in pruned history
    /// have no points: [`BalanceHistory::pruned_through`] says where the points can start.
    pub async fn balance_history(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<BalanceHistory, Error> {
        // A prune between two pages would hide records the kept totals do not include: start
        // again from the new cut.
        for _ in 0..4 {
            if let Some(history) = self.balance_history_once(account, from, to, limit).await? {
                return Ok(history);
            }
        }
        Err(Error::Storage {
            reason: "the history was pruned again and again while it was read".into(),
        })
    }

    /// One pass of [`Tally::balance_history`]; `None` if history was pruned meanwhile.
    async fn balance_history_once(
        &self,
        account: AccountId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Option<BalanceHistory>, Error> {
        let base = self.shared.store.history_base(account)?;
        let mut point = BalancePoint {
            seq: base.pruned_through,
            credits_posted: base.credits_posted,
            debits_posted: base.debits_posted,
            debits_pending: base.debits_pending,
            ..BalancePoint::default()
        };
        let mut points = Vec::new();
        let mut after = base.pruned_through;
        let done = |points| {
            Some(BalanceHistory {
                points,
                pruned_through: base.pruned_through,
            })
        };
        loop {
            let page = self.history(account, after, HISTORY_PAGE_MAX).await?;
            if page.pruned_through != base.pruned_through {
                return Ok(None);
            }
            for entry in &page.entries {
                let record = &entry.record;
                point
                    .apply(account, record)
                    .map_err(|total| Error::Storage {
                        reason: format!(
                            "{account}'s history is damaged: record {} takes {total} out of range",
                            entry.seq
                        )
                        .into(),
                    })?;
                point.seq = entry.seq;
                point.at = record.at;
                if record.at >= from && record.at < to {
                    if points.len() >= limit {
                        return Ok(done(points));
                    }
                    points.push(point);
                }
            }
            match page.next_after_seq {
                Some(next) => after = next,
                None => return Ok(done(points)),
            }
        }
    }
}

/// What [`Tally::affordable`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affordable {
    /// The most of the field asked for that fits (`u64::MAX` when the price ignores it);
    /// `None` when even none of it fits (the rest of the usage, or a fixed price, costs more
    /// than the room).
    pub units: Option<u64>,
    /// What that usage costs (what to reserve).
    pub cost: Option<Amount>,
    /// The most one more hold may take now.
    pub room: Amount,
    /// What bounds the room: `balance`, `spend_cap_account`, `spend_cap_app`, `token`,
    /// `rate_limit` or `none`.
    pub limited_by: &'static str,
}

/// What [`Tally::balance_history`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceHistory {
    /// The balance after each change, oldest first.
    pub points: Vec<BalancePoint>,
    /// Records up to this seq were pruned (0: none): no point comes from them, and the
    /// points after them start from the totals kept at the cut.
    pub pruned_through: u64,
}

/// An account's balance right after one change (see [`Tally::balance_history`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalancePoint {
    /// The change's journal sequence number.
    pub seq: u64,
    /// When it was made.
    pub at: Timestamp,
    /// Σ posted credits.
    pub credits_posted: u128,
    /// Σ posted debits.
    pub debits_posted: u128,
    /// Σ pending holds.
    pub debits_pending: u128,
}

impl BalancePoint {
    /// `credits_posted − debits_posted`: the account's posted balance after the change, which
    /// the ledger keeps within `i128` (`None` only for damaged totals).
    pub fn posted(&self) -> Option<i128> {
        tally_core::signed_diff(self.credits_posted, self.debits_posted)
    }

    /// Adds `record`'s change of `account`; `Err` names the total it takes out of range.
    fn apply(&mut self, account: AccountId, record: &Record) -> Result<(), &'static str> {
        record.effect_on(account).add_to(
            &mut self.credits_posted,
            &mut self.debits_posted,
            &mut self.debits_pending,
        )
    }
}
