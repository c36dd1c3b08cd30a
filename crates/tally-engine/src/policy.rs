//! Rate limits and spend caps: what a service allows each account and each app, enforced by the
//! account before a hold or a charge (under the account's lock, so two requests never both pass
//! a limit that only one fits in).
//!
//! Like prices, limits are configuration the service sets when it starts; they are not
//! journaled. The spending a cap is checked against is ledger state (posted today per the
//! account's records, plus what it holds now), so caps hold across restarts exactly; the token
//! buckets of rate limits live in memory and start full after a restart.
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
use tally_core::{AccountId, Amount, Command, SpendCaps};

use crate::{Error, Tally};

/// Who a rate limit or spend cap applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// One user account (over all apps).
    Account(AccountId),
    /// One app: for a rate limit, all its users together; for a spend cap, each user of it.
    App(AccountId),
}

/// A token bucket's rate: `per_second` units per second, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Units added per second.
    pub per_second: u64,
    /// Units the bucket holds at most (and starts with).
    pub burst: u64,
}

/// A rate limit: on requests per second, on cost (ledger units) per second, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests (reserves and charges).
    pub requests: Option<Rate>,
    /// Cost: the amounts held or charged.
    pub cost: Option<Rate>,
}

/// A bucket's level in thousandths of a unit, and when it was last refilled.
#[derive(Debug)]
struct Bucket {
    rate: Rate,
    level_milli: u128,
    at_ms: u64,
}

impl Bucket {
    fn new(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            rate,
            level_milli: u128::from(rate.burst) * 1_000,
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

/// The app and amount of a request that spends (reserve or charge).
fn spending(command: &Command) -> Option<(AccountId, Amount)> {
    match command {
        Command::Reserve { app, amount, .. } | Command::Charge { app, amount, .. } => {
            Some((*app, *amount))
        }
        _ => None,
    }
}

impl Policy {
    /// The spend caps that apply to `command` executed by `account`.
    pub(crate) fn caps(&self, account: AccountId, command: &Command) -> SpendCaps {
        if !self.any_caps.load(Ordering::Acquire) {
            return SpendCaps::default();
        }
        let Some((app, _)) = spending(command) else {
            return SpendCaps::default();
        };
        SpendCaps {
            account_per_day: self.caps.get(&LimitScope::Account(account)).map(|c| *c),
            app_per_user_per_day: self.caps.get(&LimitScope::App(app)).map(|c| *c),
        }
    }

    /// The buckets that apply to `command` executed by `account`, in locking order (the
    /// account's, then the app's), with the amount it spends.
    fn buckets(
        &self,
        account: AccountId,
        command: &Command,
    ) -> Option<(Amount, Vec<ScopedBuckets>)> {
        if !self.any_rates.load(Ordering::Acquire) {
            return None;
        }
        let (app, amount) = spending(command)?;
        let found: Vec<_> = [LimitScope::Account(account), LimitScope::App(app)]
            .iter()
            .filter_map(|scope| self.rates.get(scope).map(|b| (*scope, b.clone())))
            .collect();
        (!found.is_empty()).then_some((amount, found))
    }

    /// Takes the tokens `command` needs from the account's and the app's buckets, or nothing
    /// and says how long until every bucket would have them.
    pub(crate) fn take(
        &self,
        account: AccountId,
        command: &Command,
        now_ms: u64,
    ) -> Result<(), Error> {
        let Some((amount, found)) = self.buckets(account, command) else {
            return Ok(());
        };
        // Locked in a fixed order and all checked before any is taken from.
        let mut guards: Vec<_> = found.iter().map(|(s, b)| (*s, b.lock())).collect();
        let mut longest: Option<(LimitScope, &'static str, u64)> = None;
        for (scope, guard) in guards.iter_mut() {
            let buckets: &mut Buckets = guard;
            let needs = [
                (buckets.requests.as_mut(), 1, "requests"),
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
                b.take(1);
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
    pub(crate) fn give_back(&self, account: AccountId, command: &Command) {
        let Some((amount, found)) = self.buckets(account, command) else {
            return;
        };
        for (_, buckets) in &found {
            let mut buckets = buckets.lock();
            if let Some(b) = buckets.requests.as_mut() {
                b.give_back(1);
            }
            if let Some(b) = buckets.cost.as_mut() {
                b.give_back(amount.get());
            }
        }
    }
}

impl Tally {
    /// Sets (replacing) the rate limit of an account or an app; its buckets start full.
    /// `RateLimit::default()` (no rates) removes it.
    pub fn set_rate_limit(&self, scope: LimitScope, limit: RateLimit) {
        let policy = &self.shared.policy;
        let _settings = policy.settings.lock();
        if limit.requests.is_none() && limit.cost.is_none() {
            policy.rates.remove(&scope);
        } else {
            let now = self.shared.now_ms();
            let buckets = Buckets {
                requests: limit.requests.map(|r| Bucket::new(r, now)),
                cost: limit.cost.map(|r| Bucket::new(r, now)),
            };
            policy.rates.insert(scope, Arc::new(Mutex::new(buckets)));
        }
        policy
            .any_rates
            .store(!policy.rates.is_empty(), Ordering::Release);
    }

    /// Sets (replacing) a spend cap per UTC day: on an account's spending over all apps
    /// (`LimitScope::Account`), or on each user's spending at an app (`LimitScope::App`).
    /// `None` removes it. Spending is what was posted (commits and charges) during the day plus
    /// what is held now; a reserve or charge that would pass a cap is refused with
    /// `SpendCapExceeded`. Refunds do not give cap room back.
    pub fn set_spend_cap(&self, scope: LimitScope, per_day: Option<u64>) -> Result<(), Error> {
        let policy = &self.shared.policy;
        let _settings = policy.settings.lock();
        match per_day {
            None => {
                policy.caps.remove(&scope);
            }
            Some(cap) => {
                let cap = Amount::new(cap)?;
                policy.caps.insert(scope, cap);
            }
        }
        policy
            .any_caps
            .store(!policy.caps.is_empty(), Ordering::Release);
        Ok(())
    }
}
