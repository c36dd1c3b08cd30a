//! What a client measures: latency histograms per logical operation and per call, and answers
//! by kind. Each client owns its [`ClientStats`] (no sharing on the hot path); the driver
//! merges them at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::{CallKind, OpKind};

/// Largest latency a histogram tracks, in microseconds (60 s); longer ones count as 60 s.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Significant decimal digits the histograms keep (1 % resolution). Three digits made each
/// histogram 140 KB; with 13 per client, recording became a cache miss and a few percent of the
/// process's CPU in profiles.
const LATENCY_SIGFIG: u8 = 2;

/// Why statistics could not be built or merged.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A histogram could not be created.
    #[error("creating a latency histogram: {0:?}")]
    Create(hdrhistogram::CreationError),
    /// Two histograms could not be added.
    #[error("merging latency histograms: {0:?}")]
    Add(hdrhistogram::AdditionError),
}

/// A latency histogram in microseconds, from 1 µs to [`LATENCY_US_MAX`].
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram. Its counts are zero-allocated, so untouched buckets cost no memory.
    pub fn new() -> Result<Latency, StatsError> {
        Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
            .map(Latency)
            .map_err(StatsError::Create)
    }

    /// Records one latency (clamped to 1 µs ..= [`LATENCY_US_MAX`]).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) -> Result<(), StatsError> {
        self.0.add(&other.0).map_err(StatsError::Add)
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Percentiles and maximum.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            latency_us_p50: h.value_at_quantile(0.50),
            latency_us_p90: h.value_at_quantile(0.90),
            latency_us_p99: h.value_at_quantile(0.99),
            latency_us_p999: h.value_at_quantile(0.999),
            latency_us_max: h.max(),
            latency_us_mean: h.mean(),
        }
    }
}

/// Latency percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub latency_us_p50: u64,
    /// 90th percentile.
    pub latency_us_p90: u64,
    /// 99th percentile.
    pub latency_us_p99: u64,
    /// 99.9th percentile.
    pub latency_us_p999: u64,
    /// Largest.
    pub latency_us_max: u64,
    /// Mean.
    pub latency_us_mean: f64,
}

/// The name of an error kind the load expects and handles (a user out of funds is topped up).
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";

/// How an answer that was not `Ok` is counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// An outcome the load expects ([`INSUFFICIENT_FUNDS`]).
    Expected(&'static str),
    /// Anything else, by kind (snake_case of the variant, e.g. `unknown_posting`,
    /// `overloaded_journal`).
    Unexpected(String),
}

/// Classifies an engine error.
pub fn classify(error: &tally::Error) -> ErrorClass {
    match error {
        tally::Error::Ledger(tally::LedgerError::InsufficientFunds { .. }) => {
            ErrorClass::Expected(INSUFFICIENT_FUNDS)
        }
        tally::Error::Ledger(inner) => ErrorClass::Unexpected(variant_name(&format!("{inner:?}"))),
        tally::Error::Overloaded { scope, .. } => {
            ErrorClass::Unexpected(format!("overloaded_{}", snake(scope)))
        }
        other => ErrorClass::Unexpected(variant_name(&format!("{other:?}"))),
    }
}

/// Classifies an HTTP error answer by its JSON `code` (`insufficient_funds`, `unknown_hold`,
/// ...), or a failure to get one (`transport`, `bad_response`, ...).
pub fn classify_code(code: &str) -> ErrorClass {
    if code == INSUFFICIENT_FUNDS {
        ErrorClass::Expected(INSUFFICIENT_FUNDS)
    } else {
        ErrorClass::Unexpected(code.to_owned())
    }
}

/// `SomeVariant { .. }` or `SomeVariant(..)` → `some_variant`.
fn variant_name(debug: &str) -> String {
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    snake(&name)
}

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// Everything one client measured.
#[derive(Clone, Debug)]
pub struct ClientStats {
    /// Latency of each logical operation that succeeded, by [`OpKind::index`].
    pub ops: Vec<Latency>,
    /// Logical operations that ended in an error (expected or not), by [`OpKind::index`].
    pub ops_failed: [u64; OpKind::ALL.len()],
    /// Latency of each call that was answered (`Ok` or not), by [`CallKind::index`].
    pub calls: Vec<Latency>,
    /// Expected rejections, by kind.
    pub rejections: BTreeMap<&'static str, u64>,
    /// Unexpected errors, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Write calls acknowledged (`Ok`): records made durable, replays of setup included.
    pub writes_acked: u64,
}

impl ClientStats {
    /// Empty statistics.
    pub fn new() -> Result<ClientStats, StatsError> {
        Ok(ClientStats {
            ops: OpKind::ALL
                .iter()
                .map(|_| Latency::new())
                .collect::<Result<_, _>>()?,
            ops_failed: [0; OpKind::ALL.len()],
            calls: CallKind::ALL
                .iter()
                .map(|_| Latency::new())
                .collect::<Result<_, _>>()?,
            rejections: BTreeMap::new(),
            errors: BTreeMap::new(),
            writes_acked: 0,
        })
    }

    /// Records a logical operation that succeeded.
    pub fn op_ok(&mut self, kind: OpKind, latency: Duration) {
        if let Some(h) = self.ops.get_mut(kind.index()) {
            h.record(latency);
        }
    }

    /// Records a logical operation that failed; returns whether the failure was expected.
    pub fn op_failed(&mut self, kind: OpKind, error: &tally::Error) -> bool {
        self.op_failed_class(kind, classify(error))
    }

    /// Records a logical operation that failed as `class`; returns whether it was expected.
    pub fn op_failed_class(&mut self, kind: OpKind, class: ErrorClass) -> bool {
        if let Some(n) = self.ops_failed.get_mut(kind.index()) {
            *n += 1;
        }
        self.count_class(class)
    }

    /// Counts an error by kind; returns whether it was expected.
    pub fn count_error(&mut self, error: &tally::Error) -> bool {
        self.count_class(classify(error))
    }

    /// Counts an error of `class`; returns whether it was expected.
    pub fn count_class(&mut self, class: ErrorClass) -> bool {
        match class {
            ErrorClass::Expected(kind) => {
                *self.rejections.entry(kind).or_default() += 1;
                true
            }
            ErrorClass::Unexpected(kind) => {
                *self.errors.entry(kind).or_default() += 1;
                false
            }
        }
    }

    /// Records the latency of one answered call.
    pub fn call(&mut self, kind: CallKind, latency: Duration) {
        if let Some(h) = self.calls.get_mut(kind.index()) {
            h.record(latency);
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ClientStats) -> Result<(), StatsError> {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.merge(theirs)?;
        }
        for (mine, theirs) in self.calls.iter_mut().zip(&other.calls) {
            mine.merge(theirs)?;
        }
        for (mine, theirs) in self.ops_failed.iter_mut().zip(other.ops_failed) {
            *mine += theirs;
        }
        for (kind, n) in &other.rejections {
            *self.rejections.entry(kind).or_default() += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.writes_acked += other.writes_acked;
        Ok(())
    }

    /// All successful logical operations in one histogram.
    pub fn all_ops(&self) -> Result<Latency, StatsError> {
        let mut all = Latency::new()?;
        for h in &self.ops {
            all.merge(h)?;
        }
        Ok(all)
    }

    /// Successful logical operations.
    pub fn ops_ok(&self) -> u64 {
        self.ops.iter().map(Latency::count).sum()
    }

    /// Logical operations that ended in an error.
    pub fn ops_failed_total(&self) -> u64 {
        self.ops_failed.iter().sum()
    }

    /// Unexpected errors.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tally::{AccountId, LedgerError};

    #[test]
    fn insufficient_funds_is_expected_and_other_errors_are_named() {
        let poor = tally::Error::Ledger(LedgerError::InsufficientFunds {
            account: AccountId(7),
            available: 3,
            requested: 5,
        });
        assert_eq!(classify(&poor), ErrorClass::Expected(INSUFFICIENT_FUNDS));
        let unknown = tally::Error::Ledger(LedgerError::UnknownAccount {
            account: AccountId(7),
        });
        assert_eq!(
            classify(&unknown),
            ErrorClass::Unexpected("unknown_account".to_owned())
        );
        let busy = tally::Error::Overloaded {
            scope: "resident accounts",
            limit: 10,
        };
        assert_eq!(
            classify(&busy),
            ErrorClass::Unexpected("overloaded_resident_accounts".to_owned())
        );
        assert_eq!(
            classify(&tally::Error::Shutdown),
            ErrorClass::Unexpected("shutdown".to_owned())
        );
    }

    #[test]
    fn http_codes_are_classified_like_engine_errors() {
        assert_eq!(
            classify_code("insufficient_funds"),
            ErrorClass::Expected(INSUFFICIENT_FUNDS)
        );
        assert_eq!(
            classify_code("unknown_hold"),
            ErrorClass::Unexpected("unknown_hold".to_owned())
        );
    }

    #[test]
    fn merged_statistics_add_counts_and_samples() {
        let mut a = ClientStats::new().unwrap();
        let mut b = ClientStats::new().unwrap();
        a.op_ok(OpKind::Charge, Duration::from_micros(100));
        b.op_ok(OpKind::Charge, Duration::from_micros(300));
        b.op_failed(OpKind::Charge, &tally::Error::Shutdown);
        a.merge(&b).unwrap();
        assert_eq!(a.ops_ok(), 2);
        assert_eq!(a.ops_failed_total(), 1);
        assert_eq!(a.errors_total(), 1);
        let summary = a.all_ops().unwrap().summary();
        assert_eq!(summary.count, 2);
        assert!(summary.latency_us_max >= 300);
    }
}
