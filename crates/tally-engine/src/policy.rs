//! Rate limits and spend caps: what a service allows each account and each app, enforced by the
//! account before a hold or a charge (under the account's lock, so two requests never both pass
//! a limit that only one fits in).
//!
//! Like prices, limits are ledger state: each is a setting of an account's policy
//! ([`tally_core::AccountPolicy`]), set by a journaled record ([`Tally::set_policy`]) and kept in
//! the account's snapshot; the engine reads every policy when it opens and follows each change it
//! applies. The spending a cap is checked against is ledger state too (posted today per the
//! account's records, plus what it holds now), so caps hold across restarts exactly. The token
//! buckets' levels are not journaled (a record per request would double the journal): a bucket
//! starts full when its limit is set and **empty when the engine opens**, so a restart never
//! hands out a fresh burst; it then refills at its rate.
//!
//! **Token buckets** are exact integer arithmetic in thousandths of a unit: a bucket holds at
//! most `burst` units and refills `per_second` units per second, continuously (per
//! millisecond of the engine's clock). A request takes 1 request token and `amount` cost
//! tokens from every bucket that applies (the account's, then the app's), or takes nothing and
//! is refused with [`Error::RateLimited`] naming the bucket that needs the longest wait, and
//! that wait (after it, every bucket has what the request needs, unless others took it
//! meanwhile). A request larger than a bucket's burst never fits: `retry_after_ms` is then
//! `u64::MAX`. If the journal then refuses the request's record, its tokens are given back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tally_core::{
    AccountId, AccountKind, AccountPolicy, Amount, Command, OpId, Outcome, PolicySetting,
    RateLimit, SpendCaps, TokenRate,
};

use crate::{Error, Tally};

/// Who a rate limit or spend cap applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// One user account (over all apps).
    Account(AccountId),
    /// One app: for a rate limit, all its users together; for a spend cap, each user of it.
    App(AccountId),
}

/// A bucket's level in thousandths of a unit, and when it was last refilled.
#[derive(Debug)]
struct Bucket {
    rate: TokenRate,
    level_milli: u128,
    at_ms: u64,
}

impl Bucket {
    fn new(rate: TokenRate, now_ms: u64, full: bool) -> Self {
        Bucket {
            rate,
            level_milli: if full {
                u128::from(rate.burst) * 1_000
            } else {
                0
            },
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = u128::from(now_ms.saturating_sub(self.at_ms));
        let cap = u128::from(self.rate.burst) * 1_000;
        self.level_milli = cap.min(
            self.level_milli
                .saturating_add(elapsed.saturating_mul(u128::from(self.rate.per_second))),
        );
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Milliseconds until `units` fit (0: they fit now).
    fn wait_for(&self, units: u64) -> u64 {
        let need = u128::from(units) * 1_000;
        if need <= self.level_milli {
            return 0;
        }
        if units > self.rate.burst || self.rate.per_second == 0 {
            return u64::MAX;
        }
        let missing = need - self.level_milli;
        let per_ms = u128::from(self.rate.per_second);
        u64::try_from(missing.div_ceil(per_ms)).unwrap_or(u64::MAX)
    }

    fn take(&mut self, units: u64) {
        self.level_milli = self.level_milli.saturating_sub(u128::from(units) * 1_000);
    }

    fn give_back(&mut self, units: u64) {
        let cap = u128::from(self.rate.burst) * 1_000;
        self.level_milli = cap.min(self.level_milli.saturating_add(u128::from(units) * 1_000));
    }
}

/// A scope's buckets, shared.
type ScopedBuckets = (LimitScope, Arc<Mutex<Buckets>>);

/// The buckets of one scope.
#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    cost: Option<Bucket>,
}

/// Limits and caps, looked up per request only when any are set.
#[derive(Default)]
pub(crate) struct Policy {
    rates: DashMap<LimitScope, Arc<Mutex<Buckets>>>,
    any_rates: AtomicBool,
    caps: DashMap<LimitScope, Amount>,
    any_caps: AtomicBool,
    /// Held while a setting changes and its `any_*` flag is recomputed, so two changes cannot
    /// leave a flag saying "none" while a limit is set.
    settings: Mutex<()>,
}

/// What a change spends, for the rate limits: the app, the amount held or posted, and whether
/// it is a request (a hold or a charge; an extension or a correction up spends without being
/// one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spend {
    pub(crate) app: AccountId,
    pub(crate) amount: Amount,
    pub(crate) request: bool,
}

/// The app a command would spend at, from the account that decides it: a reserve's or
/// charge's app, an extended hold's, a corrected posting's. `None` for a command that spends
/// nothing.
fn spending_app(account: &tally_core::Account, command: &Command) -> Option<AccountId> {
    match command {
        Command::Reserve { app, .. }
        | Command::ReserveMetered { app, .. }
        | Command::Charge { app, .. } => Some(*app),
        Command::Extend { hold, .. } => account.hold(hold.seq).map(|h| h.app),
        Command::Correct { posting, .. } => account.posting(posting.seq).map(|p| p.app),
        _ => None,
    }
}

/// What a decided record spends (see [`Spend`]), from the account before it applies it.
fn spend_of(account: &tally_core::Account, record: &tally_core::Record) -> Option<Spend> {
    use tally_core::Change;
    let spend = |app, amount, request| {
        Some(Spend {
            app,
            amount,
            request,
        })
    };
    match &record.change {
        Change::Reserved { app, amount, .. } | Change::Charged { app, amount, .. } => {
            spend(*app, *amount, true)
        }
        Change::Extended { hold, amount, .. } if !amount.is_zero() => {
            spend(account.hold(*hold)?.app, *amount, false)
        }
        Change::Corrected { app, old, new, .. } => {
            let up = new.checked_sub(*old).filter(|up| !up.is_zero())?;
            spend(*app, up, false)
        }
        _ => None,
    }
}

impl Policy {
    /// The spend caps that apply to `command` decided by `account` (nothing is looked at while
    /// no cap is set).
    pub(crate) fn caps_of(
        &self,
        id: AccountId,
        account: &tally_core::Account,
        command: &Command,
    ) -> SpendCaps {
        if !self.any_caps.load(Ordering::Acquire) {
            return SpendCaps::default();
        }
        spending_app(account, command).map_or_else(SpendCaps::default, |app| self.caps_for(id, app))
    }

    /// What `record` spends, for the rate limits (`None` while no rate limit is set).
    pub(crate) fn spend_of(
        &self,
        account: &tally_core::Account,
        record: &tally_core::Record,
    ) -> Option<Spend> {
        if !self.any_rates.load(Ordering::Acquire) {
            return None;
        }
        spend_of(account, record)
    }

    /// The buckets that apply to `spend` by `account`, in locking order (the account's, then
    /// the app's).
    fn buckets(
        &self,
        account: AccountId,
        spend: Option<Spend>,
    ) -> Option<(Spend, Vec<ScopedBuckets>)> {
        if !self.any_rates.load(Ordering::Acquire) {
            return None;
        }
        let spend = spend?;
        let found: Vec<_> = [LimitScope::Account(account), LimitScope::App(spend.app)]
            .iter()
            .filter_map(|scope| self.rates.get(scope).map(|b| (*scope, b.clone())))
            .collect();
        (!found.is_empty()).then_some((spend, found))
    }

    /// Takes the tokens `spend` needs from the account's and the app's buckets (a request
    /// token only for a request), or nothing and says how long until every bucket would have
    /// them.
    pub(crate) fn take(
        &self,
        account: AccountId,
        spend: Option<Spend>,
        now_ms: u64,
    ) -> Result<(), Error> {
        let Some((spend, found)) = self.buckets(account, spend) else {
            return Ok(());
        };
        let (amount, requests) = (spend.amount, u64::from(spend.request));
        // Locked in a fixed order and all checked before any is taken from.
        let mut guards: Vec<_> = found.iter().map(|(s, b)| (*s, b.lock())).collect();
        let mut longest: Option<(LimitScope, &'static str, u64)> = None;
        for (scope, guard) in guards.iter_mut() {
            let buckets: &mut Buckets = guard;
            let needs = [
                (buckets.requests.as_mut(), requests, "requests"),
                (buckets.cost.as_mut(), amount.get(), "cost"),
            ];
            for (bucket, units, what) in needs {
                let Some(bucket) = bucket else { continue };
                bucket.refill(now_ms);
                let wait = bucket.wait_for(units);
                if wait > longest.map_or(0, |(_, _, w)| w) {
                    longest = Some((*scope, what, wait));
                }
            }
        }
        if let Some((scope, limit, retry_after_ms)) = longest {
            return Err(Error::RateLimited {
                scope,
                limit,
                retry_after_ms,
            });
        }
        for (_, buckets) in guards.iter_mut() {
            if let Some(b) = buckets.requests.as_mut() {
                b.take(requests);
            }
            if let Some(b) = buckets.cost.as_mut() {
                b.take(amount.get());
            }
        }
        Ok(())
    }

    /// The spend caps that apply to one more hold or charge of `account` for `app`.
    pub(crate) fn caps_for(&self, account: AccountId, app: AccountId) -> SpendCaps {
        if !self.any_caps.load(Ordering::Acquire) {
            return SpendCaps::default();
        }
        SpendCaps {
            account_per_day: self.caps.get(&LimitScope::Account(account)).map(|c| *c),
            app_per_user_per_day: self.caps.get(&LimitScope::App(app)).map(|c| *c),
        }
    }

    /// What the rate limits of `account` and `app` let one more request spend now, taking
    /// nothing: `Some((0, scope))` when a request bucket is empty, the least whole level of the
    /// cost buckets otherwise; `None` when no rate limit applies.
    pub(crate) fn rate_room(
        &self,
        account: AccountId,
        app: AccountId,
        now_ms: u64,
    ) -> Option<(u64, LimitScope)> {
        if !self.any_rates.load(Ordering::Acquire) {
            return None;
        }
        let mut room: Option<(u64, LimitScope)> = None;
        for scope in [LimitScope::Account(account), LimitScope::App(app)] {
            let Some(found) = self.rates.get(&scope).map(|b| b.clone()) else {
                continue;
            };
            let mut buckets = found.lock();
            let mut levels = Vec::with_capacity(2);
            if let Some(b) = buckets.requests.as_mut() {
                b.refill(now_ms);
                if b.level_milli < 1_000 {
                    levels.push(0);
                }
            }
            if let Some(b) = buckets.cost.as_mut() {
                b.refill(now_ms);
                levels.push(u64::try_from(b.level_milli / 1_000).unwrap_or(u64::MAX));
            }
            for level in levels {
                if room.is_none_or(|(r, _)| level < r) {
                    room = Some((level, scope));
                }
            }
        }
        room
    }

    /// Returns the tokens [`Policy::take`] took for a request that then failed (the journal
    /// refused its record), up to each bucket's burst.
    pub(crate) fn give_back(&self, account: AccountId, spend: Option<Spend>) {
        let Some((spend, found)) = self.buckets(account, spend) else {
            return;
        };
        for (_, buckets) in &found {
            let mut buckets = buckets.lock();
            if let Some(b) = buckets.requests.as_mut() {
                b.give_back(u64::from(spend.request));
            }
            if let Some(b) = buckets.cost.as_mut() {
                b.give_back(spend.amount.get());
            }
        }
    }
}

impl Policy {
    /// Installs (replacing) a scope's rate limit; its buckets start full, or empty (`full` false:
    /// as the engine opens); the same rates again keep the buckets as they are. A limit without
    /// rates removes it.
    pub(crate) fn install_rate(
        &self,
        scope: LimitScope,
        limit: RateLimit,
        now_ms: u64,
        full: bool,
    ) {
        let _settings = self.settings.lock();
        if limit.is_set() {
            // The same limit set again (a retried request) keeps its buckets' levels: setting a
            // limit is no way to refill it.
            let same = self.rates.get(&scope).is_some_and(|b| {
                let b = b.lock();
                b.requests.as_ref().map(|x| x.rate) == limit.requests
                    && b.cost.as_ref().map(|x| x.rate) == limit.cost
            });
            if same {
                return;
            }
            let buckets = Buckets {
                requests: limit.requests.map(|r| Bucket::new(r, now_ms, full)),
                cost: limit.cost.map(|r| Bucket::new(r, now_ms, full)),
            };
            self.rates.insert(scope, Arc::new(Mutex::new(buckets)));
        } else {
            self.rates.remove(&scope);
        }
        self.any_rates
            .store(!self.rates.is_empty(), Ordering::Release);
    }

    /// Installs (with `None`, removes) a scope's spend cap per UTC day.
    pub(crate) fn install_cap(&self, scope: LimitScope, per_day: Option<Amount>) {
        let _settings = self.settings.lock();
        match per_day {
            Some(cap) => {
                self.caps.insert(scope, cap);
            }
            None => {
                self.caps.remove(&scope);
            }
        }
        self.any_caps
            .store(!self.caps.is_empty(), Ordering::Release);
    }
}

/// The scope an account's policy applies to: a user's own, or an app's (its users together for
/// rates, each user for caps); a funding account has none.
pub(crate) fn scope_of(account: AccountId, kind: AccountKind) -> Option<LimitScope> {
    match kind {
        AccountKind::User => Some(LimitScope::Account(account)),
        AccountKind::Revenue => Some(LimitScope::App(account)),
        AccountKind::Funding => None,
    }
}

impl Tally {
    /// Changes one setting of an account's policy: a journaled change decided by the account,
    /// in force for the next request once this returns; returns the policy's new version. On a
    /// user account it applies to that user; on an app's revenue account, the rate limit to all
    /// its users together and the spend cap to each user of it. Refused: `InvalidPolicy` (a
    /// rate's burst of 0), `WrongAccountKind` (a funding account).
    ///
    /// - **Spend cap per UTC day**: spending is what was posted (commits and charges) during the
    ///   day plus what is held now; a reserve or charge that would pass it is refused with
    ///   `SpendCapExceeded`. Refunds do not give cap room back.
    /// - **Rate limit** (replacing the one before; no rates removes it): token buckets, full when
    ///   set, empty when the engine opens (module docs).
    /// - **Low-balance threshold**: a `balance.low` event when a change takes the available
    ///   balance below it.
    pub async fn set_policy(
        &self,
        op: OpId,
        account: AccountId,
        setting: PolicySetting,
    ) -> Result<u64, Error> {
        let command = Command::SetPolicy { setting };
        match self.execute(account, self.request(op, command)).await? {
            Outcome::PolicySet { version } => Ok(version),
            other => Err(crate::error::unexpected(other)),
        }
    }

    /// An account's policy as its account holds it.
    pub async fn policy(&self, account: AccountId) -> Result<AccountPolicy, Error> {
        Ok(*self.account(account).await?.policy())
    }
}
