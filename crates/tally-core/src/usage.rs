//! Usage tracking: what commits and charges used and cost, aggregated per account, app, endpoint
//! and time bucket (minute, hour, day), in bounded memory.
//!
//! A [`UsageBook`] is a projection of the journal: [`UsageBook::fold`] adds one record (a
//! `Committed` or `Charged` change; every other record is ignored). Sums are commutative, so
//! records may be folded in any order as long as no bound drops anything: which entries a
//! bound drops, and whether a record for a bucket already dropped is counted, depends on the
//! order. The store folds each record as it is appended and keeps the book durable with the
//! journal (see `tally-store`).
//!
//! **Revenue** here is gross: refunds are not folded (a refund's record names the posting, not
//! the endpoint). An app's net revenue is its account's balance.
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

use std::collections::{BTreeMap, BTreeSet};

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
    /// Σ amounts posted to the apps (the apps' revenue), in the ledger unit.
    pub cost: u128,
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

    fn matches(&self, key: &UsageKey) -> bool {
        self.account.is_none_or(|a| a == key.account)
            && self.app.is_none_or(|a| a == key.app)
            && self.endpoint.as_ref().is_none_or(|e| *e == key.endpoint)
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
    entries: BTreeMap<UsageKey, UsageTotals>,
    /// Buckets before this start were (partly) dropped.
    complete_from: u64,
    /// The newest bucket seen.
    newest: u64,
}

/// Usage aggregates for every granularity (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct UsageBook {
    config: UsageConfig,
    series: [Series; 3],
    /// Entries changed (or dropped) since [`UsageBook::take_changes`], for incremental saves.
    changed: BTreeSet<(Granularity, UsageKey)>,
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

    /// Adds a record's usage, if it is a commit or a charge. Returns whether it counted.
    pub fn fold(&mut self, record: &Record) -> bool {
        let (app, amount, endpoint, usage) = match &record.change {
            Change::Committed {
                app,
                amount_posted,
                endpoint,
                usage,
                ..
            } => (*app, *amount_posted, endpoint, usage),
            Change::Charged {
                app,
                amount,
                endpoint,
                usage,
                ..
            } => (*app, *amount, endpoint, usage),
            _ => return false,
        };
        for granularity in Granularity::ALL {
            let bucket = granularity.bucket(record.at);
            let series = &mut self.series[granularity.index()];
            if bucket < series.complete_from {
                // Older than what this granularity keeps: it would be dropped at once.
                continue;
            }
            let key = UsageKey {
                bucket,
                account: record.account,
                app,
                endpoint: endpoint.clone(),
            };
            // One allocation (the key's endpoint) per granularity, a second only for a new entry.
            match series.entries.get_mut(&key) {
                Some(totals) => totals.add(usage, amount),
                None => {
                    let mut totals = UsageTotals::default();
                    totals.add(usage, amount);
                    series.entries.insert(key.clone(), totals);
                }
            }
            series.newest = series.newest.max(bucket);
            if self.track_changes {
                self.changed.insert((granularity, key));
            }
            self.prune(granularity);
        }
        true
    }

    /// Drops the oldest entries of a granularity past its retention or its entry bound.
    fn prune(&mut self, granularity: Granularity) {
        let index = granularity.index();
        let width = granularity.width_ms();
        let series = &mut self.series[index];
        let horizon = series
            .newest
            .saturating_sub(self.config.retention_ms[index]);
        while let Some(first) = series.entries.first_key_value().map(|(k, _)| k.clone()) {
            if first.bucket >= horizon && series.entries.len() <= self.config.entries_max {
                break;
            }
            series.entries.remove(&first);
            series.complete_from = series.complete_from.max(first.bucket.saturating_add(width));
            if self.track_changes {
                self.changed.insert((granularity, first));
            }
        }
    }

    /// Restores a saved entry (when a store reopens).
    pub fn restore(&mut self, granularity: Granularity, key: UsageKey, totals: UsageTotals) {
        let series = &mut self.series[granularity.index()];
        series.newest = series.newest.max(key.bucket);
        series.entries.insert(key, totals);
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
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(granularity, key)| {
                let totals = self.series[granularity.index()].entries.get(&key).copied();
                ((granularity, key), totals)
            })
            .collect()
    }

    /// Gives back changes [`UsageBook::take_changes`] took and a save could not store: the
    /// next take lists them again, with their sums as they are then (or as dropped).
    pub fn return_changes(&mut self, changes: Vec<UsageChange>) {
        if self.track_changes {
            self.changed.extend(changes.into_iter().map(|(key, _)| key));
        }
    }

    /// Entries kept, over all granularities.
    pub fn len(&self) -> usize {
        self.series.iter().map(|s| s.entries.len()).sum()
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
        for (key, totals) in self.range(query) {
            report.totals.merge(totals);
            match report.buckets.last_mut() {
                Some((start, sums)) if start.0 == key.bucket => sums.merge(totals),
                _ => report.buckets.push((Timestamp(key.bucket), *totals)),
            }
        }
        report
    }

    /// The `n` accounts that spent most at `query`'s app (and endpoint) in its range, most
    /// first (ties by account id); each with its sums.
    pub fn top_users(&self, query: &UsageQuery, n: usize) -> Vec<(AccountId, UsageTotals)> {
        let mut by_account: BTreeMap<AccountId, UsageTotals> = BTreeMap::new();
        for (key, totals) in self.range(query) {
            by_account.entry(key.account).or_default().merge(totals);
        }
        let mut top: Vec<_> = by_account.into_iter().collect();
        top.sort_by(|(a, x), (b, y)| y.cost.cmp(&x.cost).then(a.cmp(b)));
        top.truncate(n);
        top
    }

    fn range<'a>(
        &'a self,
        query: &'a UsageQuery,
    ) -> impl Iterator<Item = (&'a UsageKey, &'a UsageTotals)> + 'a {
        let series = &self.series[query.granularity.index()];
        let from = query.granularity.bucket(query.from);
        let start = UsageKey {
            bucket: from,
            account: AccountId(0),
            app: AccountId(0),
            endpoint: String::new(),
        };
        series
            .entries
            .range(start..)
            .take_while(move |(key, _)| key.bucket < query.to.0)
            .filter(move |(key, _)| query.matches(key))
    }
}
