//! The report of a run: one serializable structure with stable field names (the JSON written by
//! `--json`), and its human rendering (the summary printed at the end).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::time::Duration;

use serde::Serialize;
use tally::AuditReport;

use crate::ceiling::Ceilings;
use crate::plan::Plan;
use crate::stats::{ClientStats, LatencySummary, StatsError, INSUFFICIENT_FUNDS};
pub use crate::sys::CpuFigures;
use crate::workload::{CallKind, OpKind};

/// The whole report of `run`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `PASS` when the invariants hold and recovery gave the same state, else `FAIL`.
    pub verdict: &'static str,
    /// The audit found no violation, before and after the reopen.
    pub invariants_ok: bool,
    /// Reopening gave the same audit totals and the same balances.
    pub recovery_ok: bool,
    /// The resolved configuration.
    pub config: Plan,
    /// Where it ran.
    pub machine: Machine,
    /// What the store was.
    pub store: String,
    /// Opening the store at the start (a continued ledger is recovered).
    pub open: Option<RecoveryFigures>,
    /// Accounts opened and funded before the load.
    pub setup: Setup,
    /// What the load did: operations, acknowledged writes, latencies, rejections, errors.
    #[serde(flatten)]
    pub load: LoadFigures,
    /// CPU use during the load.
    pub cpu: Option<CpuFigures>,
    /// What the journal wrote during the load (`None` without a local journal).
    pub journal: Option<JournalFigures>,
    /// Accounts resident at the end of the load.
    pub resident_accounts: u64,
    /// Accounts known.
    pub known_accounts: u64,
    /// Resident set size at the end of the load, bytes.
    pub rss_bytes: Option<u64>,
    /// Peak resident set size over the whole run (the checks' reopen included), bytes.
    pub rss_bytes_peak: Option<u64>,
    /// Resident set size before the engine opened, bytes.
    pub rss_bytes_before_engine: Option<u64>,
    /// `(rss_bytes - rss_bytes_before_engine) / resident_accounts`: an upper bound of the memory
    /// one resident account costs (it includes the directory of known accounts, the journal's
    /// queues and allocator slack).
    pub rss_bytes_per_resident_account: Option<u64>,
    /// Mean size of an account's encoded state (its snapshot) over the compared accounts: a
    /// lower bound of what a resident account costs in memory.
    pub account_state_bytes_mean: Option<u64>,
    /// Bytes the data directory holds after the reopen (journal and snapshots).
    pub data_bytes: Option<u64>,
    /// Ceilings measured in this run.
    pub ceilings: Ceilings,
    /// `writes_per_sec / ceilings.group_commit_records_per_sec`.
    pub ratio_to_group_commit: Option<f64>,
    /// `writes_per_sec / ceilings.fdatasync_per_sec` (how much group commit gains).
    pub ratio_to_fdatasync: Option<f64>,
    /// `writes_per_sec / ceilings.core_apply_ops_per_sec`.
    pub ratio_to_core_apply: Option<f64>,
    /// The audit at the end of the load.
    pub audit: AuditReport,
    /// The reopen and comparison.
    pub recovery: RecoveryCheck,
}

/// What a load did, with the same names in both reports (flattened into them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadFigures {
    /// Seconds the load ran.
    pub elapsed_s: f64,
    /// Logical operations answered (successes, expected rejections and errors).
    pub ops: u64,
    /// Logical operations that succeeded.
    pub ops_ok: u64,
    /// Successful logical operations per second.
    pub ops_per_sec: f64,
    /// Write calls acknowledged (each a durable journal record; over HTTP, each
    /// operation answered 2xx, alone or in a batch).
    pub writes_acked: u64,
    /// Acknowledged write calls per second.
    pub writes_per_sec: f64,
    /// Median latency of a successful logical operation, µs.
    pub latency_us_p50: u64,
    /// 90th percentile, µs.
    pub latency_us_p90: u64,
    /// 99th percentile, µs.
    pub latency_us_p99: u64,
    /// 99.9th percentile, µs.
    pub latency_us_p999: u64,
    /// Largest, µs.
    pub latency_us_max: u64,
    /// Per logical operation (`reserve-commit`, `charge`, ...).
    pub per_op: BTreeMap<&'static str, OpFigures>,
    /// Per engine call (`reserve`, `commit`, ...; over HTTP one request each, `batch` for a
    /// `/v1/batch` request), every answered call.
    pub per_call: BTreeMap<&'static str, LatencySummary>,
    /// Expected rejections by kind (`insufficient_funds`, answered by a top-up).
    pub rejections_expected: BTreeMap<&'static str, u64>,
    /// Unexpected errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub errors_total: u64,
}

/// `n` per second over `seconds` (0 for an empty interval).
pub fn per_sec(n: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    // Precision loss above 2^53 is irrelevant for a rate.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / seconds
}

impl LoadFigures {
    /// The figures of merged client statistics over a load of `elapsed`.
    pub fn from_stats(stats: &ClientStats, elapsed: Duration) -> Result<LoadFigures, StatsError> {
        let seconds = elapsed.as_secs_f64();
        let all = stats.all_ops()?.summary();
        let ops_ok = stats.ops_ok();
        let mut per_op = BTreeMap::new();
        for kind in OpKind::ALL {
            let latency = stats.ops[kind.index()].summary();
            let failed = stats.ops_failed[kind.index()];
            if latency.count > 0 || failed > 0 {
                per_op.insert(
                    kind.name(),
                    OpFigures {
                        ok: latency.count,
                        failed,
                        ops_per_sec: per_sec(latency.count, seconds),
                        latency,
                    },
                );
            }
        }
        let mut per_call = BTreeMap::new();
        for kind in CallKind::ALL {
            let latency = stats.calls[kind.index()].summary();
            if latency.count > 0 {
                per_call.insert(kind.name(), latency);
            }
        }
        let mut rejections_expected = stats.rejections.clone();
        rejections_expected.entry(INSUFFICIENT_FUNDS).or_default();
        Ok(LoadFigures {
            elapsed_s: seconds,
            ops: ops_ok + stats.ops_failed_total(),
            ops_ok,
            ops_per_sec: per_sec(ops_ok, seconds),
            writes_acked: stats.writes_acked,
            writes_per_sec: per_sec(stats.writes_acked, seconds),
            latency_us_p50: all.latency_us_p50,
            latency_us_p90: all.latency_us_p90,
            latency_us_p99: all.latency_us_p99,
            latency_us_p999: all.latency_us_p999,
            latency_us_max: all.latency_us_max,
            per_op,
            per_call,
            rejections_expected,
            errors: stats.errors.clone(),
            errors_total: stats.errors_total(),
        })
    }

    /// The throughput line, the latency tables, the rejections and the errors.
    pub fn human(&self, out: &mut String, call_note: &str) {
        let _ = writeln!(
            out,
            "\nthroughput: {} ops/s ({} ok of {} in {:.1} s), {} acknowledged writes/s",
            rate(self.ops_per_sec),
            thousands(self.ops_ok),
            thousands(self.ops),
            self.elapsed_s,
            rate(self.writes_per_sec)
        );
        let _ = writeln!(
            out,
            "\n  {:<15} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "operation", "ok", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p999 µs", "max µs"
        );
        for (name, f) in &self.per_op {
            latency_row(out, name, f.ok, Some(f.ops_per_sec), &f.latency);
        }
        let all = LatencySummary {
            count: self.ops_ok,
            latency_us_p50: self.latency_us_p50,
            latency_us_p90: self.latency_us_p90,
            latency_us_p99: self.latency_us_p99,
            latency_us_p999: self.latency_us_p999,
            latency_us_max: self.latency_us_max,
            latency_us_mean: 0.0,
        };
        latency_row(out, "all", self.ops_ok, Some(self.ops_per_sec), &all);
        let _ = writeln!(out, "\n  {:<15} {:>11}  ({call_note})", "call", "answered");
        for (name, l) in &self.per_call {
            latency_row(out, name, l.count, None, l);
        }
        let _ = writeln!(out);
        if self.rejections_expected.is_empty() {
            let _ = writeln!(out, "expected rejections: none");
        } else {
            let list: Vec<String> = self
                .rejections_expected
                .iter()
                .map(|(k, n)| format!("{k} {}", thousands(*n)))
                .collect();
            let _ = writeln!(
                out,
                "expected rejections: {} (each answered by a top-up)",
                list.join(", ")
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {}", thousands(*n)))
                .collect();
            let _ = writeln!(out, "errors: {}", list.join(", "));
        }
    }
}

/// The CPU line: what this process and the whole machine used during the load.
pub fn human_cpu(out: &mut String, cpu: Option<&CpuFigures>, what: &str) {
    let Some(c) = cpu else {
        return;
    };
    let machine = c
        .machine_busy_share
        .map(|m| {
            format!(
                "; the machine's {} CPUs {:.0}% busy (every process)",
                c.cpus,
                m * 100.0
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "cpu during the load: {what} {:.1} CPU s = {:.2} CPUs busy{machine}",
        c.process_cpu_s, c.process_cpus_busy
    );
}

/// Where a run ran.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// Operating system.
    pub os: &'static str,
    /// Architecture.
    pub arch: &'static str,
    /// tally-bench's version.
    pub version: &'static str,
    /// 1-minute load average when the run started (other work on the machine skews results).
    pub load_average_at_start: Option<f64>,
}

impl Machine {
    /// This machine.
    pub fn here() -> Machine {
        Machine {
            cpus: crate::sys::cpus(),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            version: env!("CARGO_PKG_VERSION"),
            load_average_at_start: None,
        }
    }
}

/// What opening a durable store found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryFigures {
    /// Accounts known.
    pub accounts: u64,
    /// Snapshots loaded.
    pub snapshots_loaded: u64,
    /// Journal records replayed.
    pub records_replayed: u64,
    /// Bytes of torn journal tail cut.
    pub torn_tail_bytes: u64,
    /// Seconds the store took to open.
    pub seconds: f64,
}

impl From<&tally::DurableRecovery> for RecoveryFigures {
    fn from(r: &tally::DurableRecovery) -> Self {
        RecoveryFigures {
            accounts: r.accounts,
            snapshots_loaded: r.snapshots_loaded,
            records_replayed: r.records_replayed,
            torn_tail_bytes: r.torn_tail_bytes,
            seconds: r.elapsed.as_secs_f64(),
        }
    }
}

/// What the journal wrote during the load.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct JournalFigures {
    /// Records made durable.
    pub records: u64,
    /// Groups they were written and synced in.
    pub groups: u64,
    /// Bytes of their frames.
    pub bytes: u64,
    /// `bytes / records`.
    pub bytes_per_record: f64,
    /// `bytes / writes_acked`: what one acknowledged write cost the journal (expiries and
    /// other records the engine made by itself included).
    pub bytes_per_write_acked: f64,
    /// `records / groups`.
    pub records_per_group: f64,
    /// Mean time to write and sync a group, µs.
    pub sync_us_mean: f64,
}

impl JournalFigures {
    fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "journal during the load: {} records in {} groups ({:.1} a group, {:.0} µs to \
             write and sync one), {:.0} bytes a record, {:.0} bytes per acknowledged write",
            thousands(self.records),
            thousands(self.groups),
            self.records_per_group,
            self.sync_us_mean,
            self.bytes_per_record,
            self.bytes_per_write_acked,
        );
    }
}

/// Setup before the load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Setup {
    /// The ledger already held the accounts (a continued run): nothing was set up.
    pub continued: bool,
    /// Accounts opened (funding and apps included).
    pub accounts_opened: u64,
    /// Users funded.
    pub users_funded: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// Figures of one logical operation kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OpFigures {
    /// Successes.
    pub ok: u64,
    /// Failures (expected rejections and errors).
    pub failed: u64,
    /// Successes per second.
    pub ops_per_sec: f64,
    /// Latency of the successes.
    pub latency: LatencySummary,
}

/// The reopen-and-compare check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryCheck {
    /// Seconds the graceful shutdown took (drain, snapshot every resident account).
    pub shutdown_seconds: f64,
    /// Seconds from the start of the reopen to an engine ready.
    pub reopen_seconds: f64,
    /// What the store found (durable only).
    pub store: Option<RecoveryFigures>,
    /// The audit after the reopen.
    pub audit_after: AuditReport,
    /// The audit totals before and after are equal.
    pub audit_equal: bool,
    /// Accounts whose balances were compared (all, or an even sample of a large ledger).
    pub accounts_compared: u64,
    /// Accounts whose balance differed, or could not be read.
    pub accounts_differing: u64,
    /// The first differences, described.
    pub differences: Vec<String>,
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate, rounded to an integer with thousands separators.
pub fn rate(value: f64) -> String {
    if !value.is_finite() || value < 0.0 {
        return "-".to_owned();
    }
    // Rounding a non-negative finite rate to an integer is the intent.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = value.round() as u64;
    thousands(n)
}

/// Bytes in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    // Display only.
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / (1024.0 * 1024.0);
    format!("{m:.1} MiB")
}

pub(crate) fn latency_row(
    out: &mut String,
    name: &str,
    ok: u64,
    per_sec: Option<f64>,
    l: &LatencySummary,
) {
    let per_sec = per_sec.map(rate).unwrap_or_default();
    let _ = writeln!(
        out,
        "  {name:<15} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
        thousands(ok),
        per_sec,
        l.latency_us_p50,
        l.latency_us_p90,
        l.latency_us_p99,
        l.latency_us_p999,
        l.latency_us_max
    );
}

impl Report {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "tally-bench {}: workload `{}` on the {}",
            self.machine.version,
            c.name(),
            self.store
        );
        let stop = match (c.ops, c.duration_s) {
            (Some(ops), _) => format!("{} ops", thousands(ops)),
            (None, Some(s)) => format!("{s:.0} s"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} users (+1 funding, 4 apps), {} of them loaded, {} clients, {stop}, mix {}",
            thousands(c.accounts),
            thousands(c.hot_accounts),
            c.clients,
            c.mix
        );
        let partial = match c.pricing {
            crate::workload::Pricing::Tokens { .. } => "per token used".to_owned(),
            _ => format!("{:.0}%", c.partial_commit * 100.0),
        };
        let _ = writeln!(
            out,
            "  partial commits {partial}, skew {}, resident max {}, idempotency keys {}/account, \
             seed {}; {} CPUs{}",
            c.skew,
            thousands(c.resident_max as u64),
            thousands(c.idempotency_keys_max as u64),
            c.seed,
            self.machine.cpus,
            self.machine
                .load_average_at_start
                .map(|l| format!(", load average {l:.2} at start"))
                .unwrap_or_default()
        );
        if let Some(open) = &self.open {
            if open.records_replayed > 0 || open.accounts > 0 {
                let _ = writeln!(
                    out,
                    "open: recovered {} accounts ({} snapshots, {} records replayed, {} torn bytes) in {:.2} s",
                    thousands(open.accounts),
                    thousands(open.snapshots_loaded),
                    thousands(open.records_replayed),
                    open.torn_tail_bytes,
                    open.seconds
                );
            }
        }
        if self.setup.continued {
            let _ = writeln!(out, "setup: continued an existing ledger");
        } else {
            let _ = writeln!(
                out,
                "setup: opened {} accounts and funded {} users in {:.2} s",
                thousands(self.setup.accounts_opened),
                thousands(self.setup.users_funded),
                self.setup.seconds
            );
        }
        self.load.human(&mut out, "every answered call");
        human_cpu(
            &mut out,
            self.cpu.as_ref(),
            "tally-bench (clients and engine)",
        );
        if let Some(journal) = &self.journal {
            journal.human(&mut out);
        }
        let rss = self.rss_bytes.map(mib).unwrap_or_else(|| "-".to_owned());
        let peak = self
            .rss_bytes_peak
            .map(mib)
            .unwrap_or_else(|| "-".to_owned());
        let per = match (
            self.rss_bytes_per_resident_account,
            self.account_state_bytes_mean,
        ) {
            (Some(upper), Some(lower)) => format!(
                "; per resident account ≤ {} bytes of RSS growth, ≥ {} bytes of encoded state",
                thousands(upper),
                thousands(lower)
            ),
            (Some(upper), None) => {
                format!(
                    "; ≤ {} bytes of RSS growth per resident account",
                    thousands(upper)
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "memory: RSS {rss} at the end of the load (peak {peak} over the run, reopen included), \
             {} resident of {} accounts{per}",
            thousands(self.resident_accounts),
            thousands(self.known_accounts)
        );
        if let Some(bytes) = self.data_bytes {
            let _ = writeln!(out, "data: {} on disk (journal and snapshots)", mib(bytes));
        }
        self.human_ceilings(&mut out);
        self.human_checks(&mut out);
        let _ = writeln!(out, "{}", self.verdict);
        out
    }

    fn human_ceilings(&self, out: &mut String) {
        let ce = &self.ceilings;
        if ce.fdatasync_per_sec.is_none()
            && ce.group_commit_records_per_sec.is_none()
            && ce.core_apply_ops_per_sec.is_none()
        {
            let _ = writeln!(out, "ceilings: not measured");
            return;
        }
        let _ = writeln!(
            out,
            "ceilings (this run, this disk; engine = acknowledged writes/s):"
        );
        let ratio = |r: Option<f64>| {
            r.map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".to_owned())
        };
        if let Some(f) = ce.fdatasync_per_sec {
            let _ = writeln!(
                out,
                "  fdatasync, one write each        {:>12}/s   engine ÷ ceiling = {}",
                rate(f),
                ratio(self.ratio_to_fdatasync)
            );
        }
        if let Some(g) = ce.group_commit_records_per_sec {
            let _ = writeln!(
                out,
                "  group commit, {:>5} × {:>3} B     {:>12}/s   engine ÷ ceiling = {}",
                ce.group_commit_group_records,
                ce.group_commit_record_bytes,
                rate(g),
                ratio(self.ratio_to_group_commit)
            );
        }
        if let Some(a) = ce.core_apply_ops_per_sec {
            let _ = writeln!(
                out,
                "  core decide+apply, 1 thread      {:>12}/s   engine ÷ ceiling = {}",
                rate(a),
                ratio(self.ratio_to_core_apply)
            );
        }
    }

    fn human_checks(&self, out: &mut String) {
        let a = &self.audit;
        let _ = writeln!(
            out,
            "checks:\n  audit: {} (Σ debits {} = Σ credits {}; funded {} = revenue {} + user balances {}; {} holds pending)",
            if a.ok() { "ok" } else { "VIOLATIONS" },
            a.debits_posted,
            a.credits_posted,
            a.funded,
            a.revenue,
            a.user_balances,
            a.holds_pending
        );
        for v in a.violations.iter().take(20) {
            let _ = writeln!(out, "    {v:?}");
        }
        let r = &self.recovery;
        let replayed = r
            .store
            .as_ref()
            .map(|s| format!(", {} records replayed", thousands(s.records_replayed)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  recovery: shut down in {:.2} s, reopened in {:.2} s{replayed}; audit totals {}; balances of {} accounts: {}",
            r.shutdown_seconds,
            r.reopen_seconds,
            if r.audit_equal { "equal" } else { "DIFFER" },
            thousands(r.accounts_compared),
            if r.accounts_differing == 0 {
                "all equal".to_owned()
            } else {
                format!("{} DIFFER", thousands(r.accounts_differing))
            }
        );
        for d in &r.differences {
            let _ = writeln!(out, "    {d}");
        }
        if !r.audit_after.ok() {
            for v in r.audit_after.violations.iter().take(20) {
                let _ = writeln!(out, "    after reopen: {v:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rate(12_345.6), "12,346");
        assert_eq!(rate(f64::NAN), "-");
    }
}
