//! `verify`: did every acknowledged write survive? Opens the durable store in a data directory
//! (recovering it), looks up every operation of an acknowledgement log with `find_op` on the
//! account that executed it, requires its outcome to be of the logged kind, and audits.
//!
//! The store must be opened with the limits the runs used (`--idempotency-keys`): an account
//! forgets operation ids past that bound, and a forgotten id would be reported missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use tally::{AccountId, AuditReport, EngineConfig, OpId, SyncMode, Tally};

use crate::acklog::{self, outcome_kind, AckLine};
use crate::cli::VerifyArgs;
use crate::plan::{limits_with_keys, IDEMPOTENCY_KEYS_DEFAULT};
use crate::report::{thousands, RecoveryFigures};
use crate::store::{open_engine, open_store, StoreOptions};

/// Problems listed by name in the report (the rest are counted).
pub const PROBLEMS_LISTED: usize = 20;
/// Accounts checked concurrently.
const VERIFY_TASKS: usize = 64;

/// What `verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// `PASS` when nothing is missing, the log is well formed and the invariants hold.
    pub verdict: &'static str,
    /// Lines of the log checked.
    pub ops_checked: u64,
    /// Operations found with the logged outcome.
    pub ops_found: u64,
    /// Operations missing or with another outcome (or whose look-up failed).
    pub ops_missing: u64,
    /// The first problems, each naming the account, the op id and what was found.
    pub missing: Vec<String>,
    /// Malformed lines of the log (a torn last line is not counted).
    pub lines_malformed: u64,
    /// The log ended in an incomplete line (ignored).
    pub torn_tail: bool,
    /// The audit found no violation.
    pub invariants_ok: bool,
    /// The audit.
    pub audit: AuditReport,
    /// What opening the store found.
    pub open: Option<RecoveryFigures>,
    /// Seconds the whole verification took.
    pub seconds: f64,
}

impl VerifyReport {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if let Some(open) = &self.open {
            out.push_str(&format!(
                "open: {} accounts, {} snapshots, {} records replayed, {} torn bytes, {:.2} s\n",
                thousands(open.accounts),
                thousands(open.snapshots_loaded),
                thousands(open.records_replayed),
                open.torn_tail_bytes,
                open.seconds
            ));
        }
        out.push_str(&format!(
            "verify: {} acknowledged operations checked, {} found, {} missing{}\n",
            thousands(self.ops_checked),
            thousands(self.ops_found),
            thousands(self.ops_missing),
            if self.torn_tail {
                " (the log's torn last line was ignored)"
            } else {
                ""
            }
        ));
        for problem in &self.missing {
            out.push_str(&format!("  missing: {problem}\n"));
        }
        if self.ops_missing > self.missing.len() as u64 {
            out.push_str(&format!(
                "  ... and {} more\n",
                thousands(self.ops_missing - self.missing.len() as u64)
            ));
        }
        if self.lines_malformed > 0 {
            out.push_str(&format!(
                "  {} malformed lines in the log\n",
                self.lines_malformed
            ));
        }
        out.push_str(&format!(
            "audit: {} (Σ debits {} = Σ credits {}, {} accounts)\n",
            if self.invariants_ok {
                "ok"
            } else {
                "VIOLATIONS"
            },
            self.audit.debits_posted,
            self.audit.credits_posted,
            self.audit.accounts
        ));
        for v in self.audit.violations.iter().take(PROBLEMS_LISTED) {
            out.push_str(&format!("  {v:?}\n"));
        }
        out.push_str(self.verdict);
        out.push('\n');
        out
    }
}

/// Runs `verify`.
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    let path = args.ack_log.clone();
    let log = tokio::task::spawn_blocking(move || acklog::read(&path))
        .await
        .context("the log-reading task")?
        .with_context(|| format!("reading the acknowledgement log {}", args.ack_log.display()))?;
    if !args.data_dir.is_dir() {
        anyhow::bail!(
            "the data directory {} does not exist",
            args.data_dir.display()
        );
    }
    let limits = limits_with_keys(args.idempotency_keys.unwrap_or(IDEMPOTENCY_KEYS_DEFAULT));
    let options = StoreOptions {
        dir: Some(args.data_dir.clone()),
        limits: limits.clone(),
        sync: SyncMode::Data,
        segment_bytes_max: None,
        anchor_interval: None,
        postgres: None,
    };
    let (backend, opened) = tokio::task::spawn_blocking(move || open_store(&options))
        .await
        .context("the store-opening task")??;
    let config = EngineConfig {
        limits,
        ..EngineConfig::default()
    };
    let tally = open_engine(&backend, config).await?;

    let mut by_account: BTreeMap<AccountId, Vec<(OpId, String)>> = BTreeMap::new();
    for AckLine {
        account,
        op,
        outcome,
    } in log.lines.iter().cloned()
    {
        by_account.entry(account).or_default().push((op, outcome));
    }
    let (found, problems) = check_ops(&tally, by_account).await?;
    let audit = tally.audit().await.context("the audit")?;
    tally.shutdown().await.context("shutting the engine down")?;
    drop(backend);

    let ops_missing = problems.len() as u64;
    let invariants_ok = audit.ok();
    let lines_malformed = log.malformed.len() as u64;
    let mut missing: Vec<String> = problems.into_iter().take(PROBLEMS_LISTED).collect();
    for (line, problem) in log
        .malformed
        .iter()
        .take(PROBLEMS_LISTED.saturating_sub(missing.len()))
    {
        missing.push(format!("log line {line} is malformed: {problem}"));
    }
    let pass = ops_missing == 0 && lines_malformed == 0 && invariants_ok;
    Ok(VerifyReport {
        verdict: if pass { "PASS" } else { "FAIL" },
        ops_checked: log.lines.len() as u64,
        ops_found: found,
        ops_missing,
        missing,
        lines_malformed,
        torn_tail: log.torn_tail,
        invariants_ok,
        audit,
        open: opened.as_ref().map(RecoveryFigures::from),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Looks every operation up; returns how many were found as logged, and a description of each
/// problem, in account order.
async fn check_ops(
    tally: &Tally,
    by_account: BTreeMap<AccountId, Vec<(OpId, String)>>,
) -> anyhow::Result<(u64, Vec<String>)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(VERIFY_TASKS));
    let mut set = tokio::task::JoinSet::new();
    for (n, (account, ops)) in by_account.into_iter().enumerate() {
        let tally = tally.clone();
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut found = 0u64;
            let mut problems = Vec::new();
            for (op, logged) in ops {
                match tally.find_op(account, op).await {
                    Ok(Some(outcome)) if outcome_kind(&outcome) == logged => found += 1,
                    Ok(Some(outcome)) => problems.push(format!(
                        "{account} op {:032x}: logged `{logged}`, found `{}`",
                        op.0,
                        outcome_kind(&outcome)
                    )),
                    Ok(None) => problems.push(format!(
                        "{account} op {:032x}: logged `{logged}`, not found",
                        op.0
                    )),
                    Err(e) => problems.push(format!(
                        "{account} op {:032x}: logged `{logged}`, look-up failed: {e}",
                        op.0
                    )),
                }
            }
            (n, found, problems)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = set.join_next().await {
        parts.push(done.context("a verifying task")?);
    }
    parts.sort_by_key(|(n, _, _)| *n);
    let found = parts.iter().map(|(_, f, _)| f).sum();
    let problems = parts.into_iter().flat_map(|(_, _, p)| p).collect();
    Ok((found, problems))
}
