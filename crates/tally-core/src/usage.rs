//! Usage tracking: what commits and charges used and cost, aggregated per account, app, endpoint
//! and time bucket (minute, hour, day), in bounded memory.
//!
//! A [`UsageBook`] is a projection of the journal: [`UsageBook::fold`] adds one record (a
//! `Committed`, `Settled`, `Charged` or `Refunded` change; every other record is ignored). Sums are commutative, so
//! records may be folded in any order as long as no bound drops anything: which entries a
//! bound drops, and whether a record for a bucket already dropped is counted, depends on the
//! order. The store folds each record as it is appended and keeps the book durable with the
//! journal (see `tally-store`).
//!
//! **Revenue and margin.** `cost` is gross revenue (what was posted); a refund counts in
//! `refunded` under the posting's user, app and endpoint, in the bucket of the refund's time,
//! so `net()` is revenue net of refunds as they happen. A call may record what the provider
//! behind the app charged for it ([`Usage::provider_cost`]); `margin()` is the net revenue less
//! that.
//!
//! **Buckets.** A record counts in the bucket whose start is its timestamp rounded down to the
//! bucket width (UTC minutes, hours, days since the epoch). A query over `[from, to)` covers
//! the buckets whose start lies in `[from rounded down, to)`: whole buckets, never parts.
//!
//! **Bounds.** Each granularity keeps its buckets for a retention period (minutes 24 hours,
//! hours 32 days, days 400 days by default) and at most [`UsageConfig::entries_max`] entries
//! (one per account, app, endpoint and bucket). Past either bound the oldest buckets are dropped
//! first, and the granularity remembers from when it is complete: a query reaching further back
//! says so ([`UsageReport::complete`] is false).

use std::collections::BTreeMap;

use crate::{FastMap, FastSet};

use serde::{Deserialize, Serialize};

use crate::{AccountId, Amount, Change, Record, Timestamp, Usage};

/// A bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Granularity {
    /// All of them, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// The width in milliseconds.
    pub const fn width_ms(self) -> u64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `at`.
    pub const fn bucket(self, at: Timestamp) -> u64 {
        at.0 - at.0 % self.width_ms()
    }

    /// Index in [`Granularity::ALL`] (also its tag in stored keys).
    pub const fn index(self) -> usize {
        match self {
            Granularity::Minute => 0,
            Granularity::Hour => 1,
            Granularity::Day => 2,
        }
    }
}

/// Sums of usage and cost. Counts are `u128` so no sum of `u64` fields can overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Commits and charges counted.
    pub calls: u64,
    /// Σ [`Usage::requests`].
    pub requests: u128,
    /// Σ [`Usage::input_tokens`].
    pub input_tokens: u128,
    /// Σ [`Usage::output_tokens`].
    pub output_tokens: u128,
    /// Σ [`Usage::characters`].
    pub characters: u128,
    /// Σ [`Usage::pages`].
    pub pages: u128,
    /// Σ [`Usage::duration_ms`].
    pub duration_ms: u128,
    /// Σ amounts posted to the apps (the apps' gross revenue), in the ledger unit.
    pub cost: u128,
    /// Σ [`Usage::provider_cost`]: what the providers behind the apps charged for the work.
    #[serde(default)]
    pub provider_cost: u128,
    /// Σ refunds of postings of these keys, counted when refunded (in the refund's bucket).
    #[serde(default)]
    pub refunded: u128,
}

impl UsageTotals {
    /// Adds one call.
    pub fn add(&mut self, usage: &Usage, cost: Amount) {
        self.calls = self.calls.saturating_add(1);
        self.requests = self.requests.saturating_add(u128::from(usage.requests));
        self.input_tokens = self
            .input_tokens
            .saturating_add(u128::from(usage.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(u128::from(usage.output_tokens));
        self.characters = self.characters.saturating_add(u128::from(usage.characters));
        self.pages = self.pages.saturating_add(u128::from(usage.pages));
        self.duration_ms = self
            .duration_ms
            .saturating_add(u128::from(usage.duration_ms));
        self.cost = self.cost.saturating_add(cost.wide());
        self.provider_cost = self
            .provider_cost
            .saturating_add(u128::from(usage.provider_cost));
    }

    /// Adds one refund.
    pub fn add_refund(&mut self, amount: Amount) {
        self.refunded = self.refunded.saturating_add(amount.wide());
    }

    /// Adds the correction of an estimate: the call's usage (the estimate counted the call and
    /// no usage), what more was posted (`up`, in `cost`) or returned (`down`, in `refunded`).
    pub fn add_correction(&mut self, usage: &Usage, up: Amount, down: Amount) {
        let calls = self.calls;
        self.add(usage, up);
        self.calls = calls;
        self.add_refund(down);
    }

    /// Revenue net of refunds: `cost − refunded` (negative when a bucket refunds more than it
    /// earned: refunds count when they happen, postings when they were made).
    pub fn net(&self) -> i128 {
        wide_difference(self.cost, self.refunded)
    }

    /// Net revenue less what the providers charged.
    pub fn margin(&self) -> i128 {
        wide_difference(self.cost, self.refunded.saturating_add(self.provider_cost))
    }

    /// Adds other sums.
    pub fn merge(&mut self, other: &UsageTotals) {
        self.calls = self.calls.saturating_add(other.calls);
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.characters = self.characters.saturating_add(other.characters);
        self.pages = self.pages.saturating_add(other.pages);
        self.duration_ms = self.duration_ms.saturating_add(other.duration_ms);
        self.cost = self.cost.saturating_add(other.cost);
        self.provider_cost = self.provider_cost.saturating_add(other.provider_cost);
        self.refunded = self.refunded.saturating_add(other.refunded);
    }
}

/// `a − b` as an `i128`, saturating at its bounds (sums of `u64` amounts stay far inside them).
fn wide_difference(a: u128, b: u128) -> i128 {
    if a >= b {
        i128::try_from(a - b).unwrap_or(i128::MAX)
    } else {
        i128::try_from(b - a).map_or(i128::MIN, |d| -d)
    }
}

/// One aggregate's key: a bucket (its start, ms since the epoch) and who used what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    /// The bucket's start.
    pub bucket: u64,
    /// The user account that paid.
    pub account: AccountId,
    /// The app (revenue account) paid.
    pub app: AccountId,
    /// The app's endpoint.
    pub endpoint: String,
}

/// The bounds of a [`UsageBook`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageConfig {
    /// How long each granularity keeps its buckets (ms), in [`Granularity::ALL`]'s order.
    pub retention_ms: [u64; 3],
    /// Entries each granularity keeps at most; past it the oldest bucket's entries go first.
    pub entries_max: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            retention_ms: [24 * 3_600_000, 32 * 86_400_000, 400 * 86_400_000],
            entries_max: 200_000,
        }
    }
}

/// What to sum: a granularity, a time range and optional filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    /// The bucket width.
    pub granularity: Granularity,
    /// Start of the range (rounded down to a bucket start).
    pub from: Timestamp,
    /// End of the range (exclusive).
    pub to: Timestamp,
    /// Only this user account.
    pub account: Option<AccountId>,
    /// Only this app.
    pub app: Option<AccountId>,
    /// Only this endpoint.
    pub endpoint: Option<String>,
}

impl UsageQuery {
    /// Everything in `[from, to)` by `granularity`.
    pub fn new(granularity: Granularity, from: Timestamp, to: Timestamp) -> Self {
        UsageQuery {
            granularity,
            from,
            to,
            account: None,
            app: None,
            endpoint: None,
        }
    }
    /// Only `account`'s usage.
    pub fn account(mut self, account: AccountId) -> Self {
        self.account = Some(account);
        self
    }
    /// Only usage of `app`.
    pub fn app(mut self, app: AccountId) -> Self {
        self.app = Some(app);
        self
    }
    /// Only usage of `endpoint`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    fn matches_pair(&self, (account, app): (AccountId, AccountId)) -> bool {
        self.account.is_none_or(|a| a == account) && self.app.is_none_or(|a| a == app)
    }

    fn matches_endpoint(&self, endpoint: &str) -> bool {
        self.endpoint.as_deref().is_none_or(|e| e == endpoint)
    }
}

/// A query's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// The sums over the whole range.
    pub totals: UsageTotals,
    /// The sums per bucket (bucket start, sums), oldest first; empty buckets are left out.
    pub buckets: Vec<(Timestamp, UsageTotals)>,
    /// False when the range reaches before what the granularity still keeps (older buckets
    /// were dropped by retention or by the entry bound): the sums then miss that part.
    pub complete: bool,
}

#[derive(Clone, Debug, Default)]
struct Series {
    /// Bucket start → (account, app) → endpoint → sums: the current bucket is found by an
    /// integer key and an entry by hashing, with no allocation when it exists.
    buckets: BTreeMap<u64, ByPair>,
    /// Entries over all buckets.
    entries: usize,
    /// Buckets before this start were (partly) dropped.
    complete_from: u64,
    /// The newest bucket seen.
    newest: u64,
}

/// What the usage book takes of a commit or a charge: who, for which app and endpoint, when,
/// how much, and what it used (a record without its other fields, to queue for a later fold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSample {
    /// The account that paid.
    pub account: AccountId,
    /// The app paid.
    pub app: AccountId,
    /// When.
    pub at: Timestamp,
    /// The amount posted.
    pub amount: Amount,
    /// The app's endpoint.
    pub endpoint: String,
    /// What the work used.
    pub usage: Usage,
    /// What the record was.
    pub kind: SampleKind,
    /// What the app gave back with a call (a period's volume tier crossed; in `refunded`).
    pub rebate: Amount,
}

/// What a [`UsageSample`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// A call (commit, settlement or charge): `amount` posted, `usage` used.
    Call,
    /// A refund: `amount` returned (`usage` is zero).
    Refund,
    /// An estimate corrected up: `amount` more posted, `usage` the call's.
    CorrectedUp,
    /// An estimate corrected down: `amount` returned, `usage` the call's.
    CorrectedDown,
}

impl SampleKind {
    /// Adds a sample of this kind to sums.
    fn add_to(self, totals: &mut UsageTotals, usage: &Usage, amount: Amount) {
        match self {
            SampleKind::Call => totals.add(usage, amount),
            SampleKind::Refund => totals.add_refund(amount),
            SampleKind::CorrectedUp => totals.add_correction(usage, amount, Amount::ZERO),
            SampleKind::CorrectedDown => totals.add_correction(usage, Amount::ZERO, amount),
        }
    }
}

impl UsageSample {
    /// The sample of a commit or a charge; `None` for any other record.
    pub fn of(record: &Record) -> Option<UsageSample> {
        let (app, amount, endpoint, usage, kind, rebate) = Self::parts(record)?;
        Some(UsageSample {
            account: record.account,
            app,
            at: record.at,
            amount,
            endpoint: endpoint.to_owned(),
            usage,
            kind,
            rebate,
        })
    }

    /// Who was paid, how much, where, what was used, what kind of sample a record is, and what
    /// the app gave back with it.
    fn parts(record: &Record) -> Option<(AccountId, Amount, &str, Usage, SampleKind, Amount)> {
        let rebate = |period: &Option<crate::PeriodStep>| period.map_or(Amount::ZERO, |p| p.rebate);
        fn call<'a>(
            app: &AccountId,
            amount: &Amount,
            endpoint: &'a str,
            usage: &Usage,
            rebate: Amount,
        ) -> (AccountId, Amount, &'a str, Usage, SampleKind, Amount) {
            (*app, *amount, endpoint, *usage, SampleKind::Call, rebate)
        }
        match &record.change {
            Change::Committed {
                app,
                amount_posted: amount,
                endpoint,
                usage,
                period,
                ..
            }
            | Change::Settled {
                app,
                amount,
                endpoint,
                usage,
                period,
                ..
            } => Some(call(app, amount, endpoint, usage, rebate(period))),
            Change::Charged {
                app,
                amount,
                endpoint,
                usage,
                ..
            } => Some(call(app, amount, endpoint, usage, Amount::ZERO)),
            Change::Refunded {
                app,
                amount,
                endpoint,
                ..
            } => Some((
                *app,
                *amount,
                endpoint.as_str(),
                Usage::default(),
                SampleKind::Refund,
                Amount::ZERO,
            )),
            Change::Corrected {
                app,
                endpoint,
                old,
                new,
                usage,
                ..
            } => {
                let (amount, kind) = match new.checked_sub(*old) {
                    Some(up) => (up, SampleKind::CorrectedUp),
                    None => (
                        old.checked_sub(*new).unwrap_or(Amount::ZERO),
                        SampleKind::CorrectedDown,
                    ),
                };
                Some((*app, amount, endpoint.as_str(), *usage, kind, Amount::ZERO))
            }
            _ => None,
        }
    }
}

/// Usage aggregates for every granularity (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct UsageBook {
    config: UsageConfig,
    series: [Series; 3],
    /// Entries changed (or dropped) since [`UsageBook::take_changes`], for incremental saves:
    /// (granularity, bucket, account, app) → endpoints, so marking an entry already marked
    /// allocates nothing.
    changed: FastMap<(Granularity, u64, AccountId, AccountId), FastSet<String>>,
    /// Whether to keep `changed` at all (a book nobody saves does not).
    track_changes: bool,
}

/// An entry changed since the last save: its new sums, or `None` when it was dropped.
pub type UsageChange = ((Granularity, UsageKey), Option<UsageTotals>);

impl UsageBook {
    /// An empty book with these bounds, that remembers what changed for incremental saves
    /// ([`UsageBook::take_changes`]).
    pub fn new(config: UsageConfig) -> Self {
        UsageBook {
            config,
            track_changes: true,
            ..UsageBook::default()
        }
    }

    /// An empty book with these bounds that nobody saves (it keeps no change set).
    pub fn unsaved(config: UsageConfig) -> Self {
        UsageBook {
            config,
            ..UsageBook::default()
        }
    }

    /// Adds a record's usage, if it is a commit, a settlement or a charge, its refund, if it is
    /// a refund, or its correction. Returns whether it counted.
    pub fn fold(&mut self, record: &Record) -> bool {
        match UsageSample::parts(record) {
            Some((app, amount, endpoint, usage, kind, rebate)) => {
                self.fold_parts(record.account, app, record.at, endpoint, |t| {
                    kind.add_to(t, &usage, amount);
                    t.add_refund(rebate);
                });
                true
            }
            None => false,
        }
    }

    /// Adds a sample taken from a commit or a charge ([`UsageSample::of`]): the same sums as
    /// folding the record.
    pub fn fold_sample(&mut self, sample: &UsageSample) {
        let (amount, usage, kind, rebate) =
            (sample.amount, sample.usage, sample.kind, sample.rebate);
        self.fold_parts(
            sample.account,
            sample.app,
            sample.at,
            &sample.endpoint,
            |t| {
                kind.add_to(t, &usage, amount);
                t.add_refund(rebate);
            },
        );
    }

    fn fold_parts(
        &mut self,
        account: AccountId,
        app: AccountId,
        at: Timestamp,
        endpoint: &str,
        update: impl Fn(&mut UsageTotals),
    ) {
        for granularity in Granularity::ALL {
            let bucket = granularity.bucket(at);
            let series = &mut self.series[granularity.index()];
            if bucket < series.complete_from {
                // Older than what this granularity keeps: it would be dropped at once.
                continue;
            }
            let by_endpoint = series
                .buckets
                .entry(bucket)
                .or_default()
                .entry((account, app))
                .or_default();
            match by_endpoint.get_mut(endpoint) {
                Some(totals) => update(totals),
                None => {
                    let mut totals = UsageTotals::default();
                    update(&mut totals);
                    by_endpoint.insert(endpoint.to_owned(), totals);
                    series.entries += 1;
                }
            }
            series.newest = series.newest.max(bucket);
            if self.track_changes {
                let endpoints = self
                    .changed
                    .entry((granularity, bucket, account, app))
                    .or_default();
                if !endpoints.contains(endpoint) {
                    endpoints.insert(endpoint.to_owned());
                }
            }
            self.prune(granularity);
        }
    }

    /// Drops the oldest entries of a granularity past its retention or its entry bound: whole
    /// buckets past the retention, single entries of the oldest bucket past the bound.
    fn prune(&mut self, granularity: Granularity) {
        let index = granularity.index();
        let width = granularity.width_ms();
        let series = &mut self.series[index];
        let horizon = series
            .newest
            .saturating_sub(self.config.retention_ms[index]);
        while let Some(mut oldest) = series.buckets.first_entry() {
            let bucket = *oldest.key();
            let too_old = bucket < horizon;
            if !too_old && series.entries <= self.config.entries_max {
                break;
            }
            let by_pair = oldest.get_mut();
            let mut dropped = Vec::new();
            if too_old {
                for ((account, app), by_endpoint) in by_pair.drain() {
                    for (endpoint, _) in by_endpoint {
                        dropped.push((account, app, endpoint));
                    }
                }
            } else if let Some(&pair) = by_pair.keys().next() {
                if let Some(by_endpoint) = by_pair.get_mut(&pair) {
                    if let Some(endpoint) = by_endpoint.keys().next().cloned() {
                        by_endpoint.remove(&endpoint);
                        dropped.push((pair.0, pair.1, endpoint));
                    }
                    if by_endpoint.is_empty() {
                        by_pair.remove(&pair);
                    }
                }
            }
            if by_pair.is_empty() {
                oldest.remove();
            }
            series.entries = series.entries.saturating_sub(dropped.len());
            series.complete_from = series.complete_from.max(bucket.saturating_add(width));
            if self.track_changes {
                for (account, app, endpoint) in dropped {
                    self.changed
                        .entry((granularity, bucket, account, app))
                        .or_default()
                        .insert(endpoint);
                }
            }
        }
    }

    fn get(&self, granularity: Granularity, key: &UsageKey) -> Option<UsageTotals> {
        self.series[granularity.index()]
            .buckets
            .get(&key.bucket)?
            .get(&(key.account, key.app))?
            .get(key.endpoint.as_str())
            .copied()
    }

    /// Restores a saved entry (when a store reopens).
    pub fn restore(&mut self, granularity: Granularity, key: UsageKey, totals: UsageTotals) {
        let series = &mut self.series[granularity.index()];
        series.newest = series.newest.max(key.bucket);
        let previous = series
            .buckets
            .entry(key.bucket)
            .or_default()
            .entry((key.account, key.app))
            .or_default()
            .insert(key.endpoint, totals);
        if previous.is_none() {
            series.entries += 1;
        }
    }

    /// Restores from when a granularity is complete (when a store reopens).
    pub fn restore_complete_from(&mut self, granularity: Granularity, from: u64) {
        let series = &mut self.series[granularity.index()];
        series.complete_from = series.complete_from.max(from);
    }

    /// From when each granularity is complete (bucket start, ms), in [`Granularity::ALL`]'s
    /// order.
    pub fn complete_from(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.series[i].complete_from)
    }

    /// The entries changed or dropped since the last call, for an incremental save.
    pub fn take_changes(&mut self) -> Vec<UsageChange> {
        let mut changes: Vec<UsageChange> = std::mem::take(&mut self.changed)
            .into_iter()
            .flat_map(|((granularity, bucket, account, app), endpoints)| {
                endpoints.into_iter().map(move |endpoint| {
                    let key = UsageKey {
                        bucket,
                        account,
                        app,
                        endpoint,
                    };
                    (granularity, key)
                })
            })
            .map(|(granularity, key)| {
                let totals = self.get(granularity, &key);
                ((granularity, key), totals)
            })
            .collect();
        changes.sort_by(|(a, _), (b, _)| a.cmp(b));
        changes
    }

    /// Gives back changes [`UsageBook::take_changes`] took and a save could not store: the
    /// next take lists them again, with their sums as they are then (or as dropped).
    pub fn return_changes(&mut self, changes: Vec<UsageChange>) {
        if self.track_changes {
            for ((granularity, key), _) in changes {
                self.changed
                    .entry((granularity, key.bucket, key.account, key.app))
                    .or_default()
                    .insert(key.endpoint);
            }
        }
    }

    /// Entries kept, over all granularities.
    pub fn len(&self) -> usize {
        self.series.iter().map(|s| s.entries).sum()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sums what `query` selects.
    pub fn report(&self, query: &UsageQuery) -> UsageReport {
        let series = &self.series[query.granularity.index()];
        let from = query.granularity.bucket(query.from);
        let mut report = UsageReport {
            complete: from >= series.complete_from,
            ..UsageReport::default()
        };
        for (bucket, by_pair) in self.buckets(query) {
            let mut sums = UsageTotals::default();
            for (_, totals) in matching(query, by_pair) {
                sums.merge(totals);
            }
            if sums.calls > 0 || sums.cost > 0 || sums.refunded > 0 {
                report.totals.merge(&sums);
                report.buckets.push((Timestamp(bucket), sums));
            }
        }
        report
    }

    /// The `n` accounts that spent most (net of refunds) at `query`'s app (and endpoint) in its
    /// range, most first (ties by account id); each with its sums.
    pub fn top_users(&self, query: &UsageQuery, n: usize) -> Vec<(AccountId, UsageTotals)> {
        let mut by_account: BTreeMap<AccountId, UsageTotals> = BTreeMap::new();
        for (_, by_pair) in self.buckets(query) {
            for (account, totals) in matching(query, by_pair) {
                by_account.entry(account).or_default().merge(totals);
            }
        }
        let mut top: Vec<_> = by_account.into_iter().collect();
        // By what each paid net of refunds.
        top.sort_by(|(a, x), (b, y)| y.net().cmp(&x.net()).then(a.cmp(b)));
        top.truncate(n);
        top
    }

    /// The buckets of `query`'s granularity whose start lies in its range.
    fn buckets<'a>(&'a self, query: &UsageQuery) -> impl Iterator<Item = (u64, &'a ByPair)> + 'a {
        let series = &self.series[query.granularity.index()];
        let from = query.granularity.bucket(query.from);
        let to = query.to.0;
        series
            .buckets
            .range(from..)
            .take_while(move |(bucket, _)| **bucket < to)
            .map(|(bucket, by_pair)| (*bucket, by_pair))
    }
}

/// One bucket's entries: (account, app) → endpoint → sums.
type ByPair = FastMap<(AccountId, AccountId), FastMap<String, UsageTotals>>;

/// The entries of one bucket that `query` selects, with their account.
fn matching<'a>(
    query: &'a UsageQuery,
    by_pair: &'a ByPair,
) -> impl Iterator<Item = (AccountId, &'a UsageTotals)> + 'a {
    by_pair
        .iter()
        .filter(move |(pair, _)| query.matches_pair(**pair))
        .flat_map(move |((account, _), by_endpoint)| {
            by_endpoint
                .iter()
                .filter(move |(endpoint, _)| query.matches_endpoint(endpoint))
                .map(move |(_, totals)| (*account, totals))
        })
}
