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

use crate::FastMap;

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

/// One entry's key within a bucket: who paid which app, at which endpoint (by its interned
/// number, see [`Endpoints`]): a fold hashes three integers per granularity, never a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EntryKey {
    account: AccountId,
    app: AccountId,
    endpoint: usize,
}

/// An entry's sums, and whether it changed since the last [`UsageBook::take_changes`].
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    totals: UsageTotals,
    changed: bool,
}

/// One bucket's entries.
type Bucket = FastMap<EntryKey, Entry>;

#[derive(Clone, Debug, Default)]
struct Series {
    /// Bucket start → its entries: the current bucket is found by an integer key and an entry
    /// by hashing integers, with no allocation when it exists.
    buckets: BTreeMap<u64, Bucket>,
    /// Entries over all buckets.
    entries: usize,
    /// Buckets before this start were (partly) dropped.
    complete_from: u64,
    /// The newest bucket seen.
    newest: u64,
}

/// The endpoints' names, each a number while some entry uses it: a name is hashed once per
/// fold, and a number whose last entry is dropped is given to the next new name (so the
/// names held are never more than the entries, plus the one being folded).
#[derive(Clone, Debug, Default)]
struct Endpoints {
    ids: FastMap<String, usize>,
    /// Number → (name, uses); a free number has no uses (and an empty name).
    names: Vec<(String, usize)>,
    free: Vec<usize>,
}

impl Endpoints {
    /// The number of `name`, given one if it has none.
    fn id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.names.get_mut(id) {
                    *slot = (name.to_owned(), 0);
                }
                id
            }
            None => {
                self.names.push((name.to_owned(), 0));
                self.names.len() - 1
            }
        };
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The number of `name`, if it has one.
    fn find(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    /// The name of a number some entry uses.
    fn name(&self, id: usize) -> Option<&str> {
        self.names
            .get(id)
            .filter(|(_, uses)| *uses > 0)
            .map(|(name, _)| name.as_str())
    }

    /// One more use of `id` (an entry, or a fold in progress).
    fn hold(&mut self, id: usize) {
        if let Some((_, uses)) = self.names.get_mut(id) {
            *uses += 1;
        }
    }

    /// One use less of `id`; unused, its number is free again.
    fn release(&mut self, id: usize) {
        let Some((name, uses)) = self.names.get_mut(id) else {
            return;
        };
        if *uses == 0 {
            return; // free already
        }
        *uses -= 1;
        if *uses == 0 {
            let name = std::mem::take(name);
            self.ids.remove(&name);
            self.free.push(id);
        }
    }
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
    endpoints: Endpoints,
    /// Entries that changed since [`UsageBook::take_changes`], each listed once (its
    /// `changed` flag says it is listed): for incremental saves.
    changed: Vec<(Granularity, u64, EntryKey)>,
    /// Entries dropped since then, by name (their endpoint's number may be reused).
    dropped: Vec<(Granularity, UsageKey)>,
    /// Whether to keep `changed` and `dropped` at all (a book nobody saves does not).
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
        let key = EntryKey {
            account,
            app,
            endpoint: self.endpoints.id(endpoint),
        };
        // Held through the fold: a prune below may drop every other entry of the endpoint
        // (even the one just made), and its number must not be given away meanwhile.
        self.endpoints.hold(key.endpoint);
        for granularity in Granularity::ALL {
            let bucket = granularity.bucket(at);
            let series = &mut self.series[granularity.index()];
            if bucket < series.complete_from {
                // Older than what this granularity keeps: it would be dropped at once.
                continue;
            }
            let entry = match series.buckets.entry(bucket).or_default().entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    self.endpoints.hold(key.endpoint);
                    series.entries += 1;
                    slot.insert(Entry::default())
                }
            };
            update(&mut entry.totals);
            if self.track_changes && !entry.changed {
                entry.changed = true;
                self.changed.push((granularity, bucket, key));
            }
            series.newest = series.newest.max(bucket);
            self.prune(granularity);
        }
        self.endpoints.release(key.endpoint);
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
            let entries = oldest.get_mut();
            let mut gone = Vec::new();
            if too_old {
                gone.extend(entries.drain().map(|(key, _)| key));
            } else if let Some(&key) = entries.keys().next() {
                entries.remove(&key);
                gone.push(key);
            }
            if entries.is_empty() {
                oldest.remove();
            }
            series.entries = series.entries.saturating_sub(gone.len());
            series.complete_from = series.complete_from.max(bucket.saturating_add(width));
            for key in gone {
                if self.track_changes {
                    if let Some(endpoint) = self.endpoints.name(key.endpoint) {
                        let key = UsageKey {
                            bucket,
                            account: key.account,
                            app: key.app,
                            endpoint: endpoint.to_owned(),
                        };
                        self.dropped.push((granularity, key));
                    }
                }
                self.endpoints.release(key.endpoint);
            }
        }
    }

    /// The entry of `key`'s bucket and names, if it is kept.
    fn entry_mut(&mut self, granularity: Granularity, key: &UsageKey) -> Option<&mut Entry> {
        let entry = self.entry_key(key)?;
        self.series[granularity.index()]
            .buckets
            .get_mut(&key.bucket)?
            .get_mut(&entry)
    }

    /// `key` within its bucket, if its endpoint has a number.
    fn entry_key(&self, key: &UsageKey) -> Option<EntryKey> {
        Some(EntryKey {
            account: key.account,
            app: key.app,
            endpoint: self.endpoints.find(&key.endpoint)?,
        })
    }

    /// Restores a saved entry (when a store reopens).
    pub fn restore(&mut self, granularity: Granularity, key: UsageKey, totals: UsageTotals) {
        let endpoint = self.endpoints.id(&key.endpoint);
        let series = &mut self.series[granularity.index()];
        series.newest = series.newest.max(key.bucket);
        let previous = series.buckets.entry(key.bucket).or_default().insert(
            EntryKey {
                account: key.account,
                app: key.app,
                endpoint,
            },
            Entry {
                totals,
                changed: false,
            },
        );
        if previous.is_none() {
            series.entries += 1;
            self.endpoints.hold(endpoint);
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

    /// The entries changed or dropped since the last call, for an incremental save: each
    /// once, in key order, with its sums as they are now (`None`: dropped).
    pub fn take_changes(&mut self) -> Vec<UsageChange> {
        let mut keys = std::collections::BTreeSet::new();
        for (granularity, bucket, key) in std::mem::take(&mut self.changed) {
            let series = &mut self.series[granularity.index()];
            if let Some(entry) = series
                .buckets
                .get_mut(&bucket)
                .and_then(|entries| entries.get_mut(&key))
            {
                entry.changed = false;
            }
            // A dropped entry's number may name another endpoint now: listing that one too
            // only saves its sums as they are.
            if let Some(endpoint) = self.endpoints.name(key.endpoint) {
                keys.insert((
                    granularity,
                    UsageKey {
                        bucket,
                        account: key.account,
                        app: key.app,
                        endpoint: endpoint.to_owned(),
                    },
                ));
            }
        }
        keys.extend(std::mem::take(&mut self.dropped));
        keys.into_iter()
            .map(|(granularity, key)| {
                let totals = self.entry_mut(granularity, &key).map(|e| e.totals);
                ((granularity, key), totals)
            })
            .collect()
    }

    /// Gives back changes [`UsageBook::take_changes`] took and a save could not store: the
    /// next take lists them again, with their sums as they are then (or as dropped).
    pub fn return_changes(&mut self, changes: Vec<UsageChange>) {
        if !self.track_changes {
            return;
        }
        for ((granularity, key), _) in changes {
            let listed = match self.entry_mut(granularity, &key) {
                Some(entry) => std::mem::replace(&mut entry.changed, true),
                None => {
                    self.dropped.push((granularity, key));
                    continue;
                }
            };
            if let Some(entry) = self.entry_key(&key).filter(|_| !listed) {
                self.changed.push((granularity, key.bucket, entry));
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
        let Some(endpoint) = self.endpoint_filter(query) else {
            return report;
        };
        for (bucket, entries) in self.buckets(query) {
            let mut sums = UsageTotals::default();
            for (_, totals) in matching(query, endpoint, entries) {
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
        let Some(endpoint) = self.endpoint_filter(query) else {
            return Vec::new();
        };
        let mut by_account: BTreeMap<AccountId, UsageTotals> = BTreeMap::new();
        for (_, entries) in self.buckets(query) {
            for (account, totals) in matching(query, endpoint, entries) {
                by_account.entry(account).or_default().merge(totals);
            }
        }
        let mut top: Vec<_> = by_account.into_iter().collect();
        // By what each paid net of refunds.
        top.sort_by(|(a, x), (b, y)| y.net().cmp(&x.net()).then(a.cmp(b)));
        top.truncate(n);
        top
    }

    /// The query's endpoint filter as a number: `Some(None)` for any endpoint, `None` when it
    /// names an endpoint no entry has (nothing matches).
    fn endpoint_filter(&self, query: &UsageQuery) -> Option<Option<usize>> {
        match &query.endpoint {
            None => Some(None),
            Some(name) => self.endpoints.find(name).map(Some),
        }
    }

    /// The buckets of `query`'s granularity whose start lies in its range.
    fn buckets<'a>(&'a self, query: &UsageQuery) -> impl Iterator<Item = (u64, &'a Bucket)> + 'a {
        let series = &self.series[query.granularity.index()];
        let from = query.granularity.bucket(query.from);
        let to = query.to.0;
        series
            .buckets
            .range(from..)
            .take_while(move |(bucket, _)| **bucket < to)
            .map(|(bucket, entries)| (*bucket, entries))
    }
}

/// The entries of one bucket that `query` selects (at `endpoint`, if set), with their account.
fn matching<'a>(
    query: &'a UsageQuery,
    endpoint: Option<usize>,
    entries: &'a Bucket,
) -> impl Iterator<Item = (AccountId, &'a UsageTotals)> + 'a {
    entries
        .iter()
        .filter(move |(key, _)| {
            query.matches_pair((key.account, key.app)) && endpoint.is_none_or(|e| e == key.endpoint)
        })
        .map(|(key, entry)| (key.account, &entry.totals))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints that come and go under the entry bound reuse the numbers of those dropped:
    /// the names kept stay within the entries kept.
    #[test]
    fn the_endpoint_names_kept_never_outgrow_the_entries() {
        let mut book = UsageBook::new(UsageConfig {
            retention_ms: [u64::MAX; 3],
            entries_max: 4,
        });
        for i in 0..1_000u64 {
            let record = Record {
                account: AccountId(1),
                op: None,
                at: Timestamp(i * 60_000),
                origin: crate::Origin::default(),
                change: Change::Charged {
                    app: AccountId(2),
                    amount: Amount::new(1).unwrap_or(Amount::ZERO),
                    endpoint: format!("/e{i}"),
                    metadata: String::new(),
                    posting: 1,
                    token: None,
                    usage: Usage::default(),
                },
            };
            assert!(book.fold(&record));
            assert!(book.endpoints.ids.len() <= book.len());
            assert!(book.endpoints.names.len() <= 3 * 4 + 1);
        }
        assert_eq!(book.len(), 3 * 4);
    }
}
