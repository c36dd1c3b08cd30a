//! `run --http URL`: the same load against a running tally-server, through its native API.
//!
//! # The load
//!
//! The clients are those of [`crate::run`]: each is a task with one logical operation in
//! flight, the same mix, users, prices and top-ups after `insufficient_funds` (HTTP 402), and
//! each has its own keep-alive HTTP/1.1 connection ([`crate::api::Api`]). A call is one
//! request: `POST /v1/holds`, `/v1/holds/{id}/commit`, `/v1/holds/{id}/void`, `/v1/charges`,
//! `/v1/refunds`, `/v1/transfers`, `/v1/accounts/{id}/fund`. With `--batch N` a client takes N
//! logical operations at a time and sends their first writes as one `POST /v1/batch`, then the
//! commits and voids of the holds it got as a second; a logical operation's latency is then
//! the time of the batches it was in. Writes carry no `Idempotency-Key` (the server would keep
//! one per write for 24 hours, at most 1,000,000 of them).
//!
//! # The checks
//!
//! The bench keeps its own books: the change every acknowledged write makes to the totals of
//! the accounts it touches (posted credits, posted debits, pending debits). It reads the
//! balances of every account (an even sample of a large ledger) before and after the load, and
//! requires `after = before + its books` for each, and `GET /v1/audit` to be `ok`. An account
//! touched by a write whose outcome is unknown (no answer, or a 5xx other than `overloaded`)
//! cannot be predicted: it is left out of the comparison and counted. There is no reopen over
//! HTTP; the server's own tests cover its recovery.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tally::AccountId;

use crate::api::{str_field, wide_field, Api, CallError, Endpoint};
use crate::cli::RunArgs;
use crate::plan::{Plan, BATCH_MAX};
use crate::report::{human_cpu, thousands, LoadFigures, Machine, Setup};
use crate::run::{progress, progress_bar, Gate, CHECK_ACCOUNTS_MAX};
use crate::stats::{classify_code, ClientStats};
use crate::sys::{CpuFigures, CpuSample};
use crate::workload::{CallKind, Cost, Layout, OpKind, UserPicker};

/// The server's own funding account, which every top-up comes from.
pub const FUNDING_NAME: &str = "tally:funding";
/// The default prefix of the bench's account names.
pub const ACCOUNT_PREFIX_DEFAULT: &str = "bench-";
/// Longest account prefix (names are at most 128 bytes; idempotency keys 255).
const ACCOUNT_PREFIX_MAX: usize = 64;
/// Tasks (each with its own connection) that open accounts during setup.
const SETUP_TASKS: u64 = 64;
/// Most bytes of one setup `/v1/batch` request body (the server's default limit is 64 KiB).
const SETUP_BATCH_BYTES: u64 = 48 * 1024;
/// Largest `--batch` whose requests surely fit the server's default body limit (an operation
/// of the load is at most about 120 bytes of JSON with the default prefix).
const BATCH_BODY_SAFE: u32 = 500;
/// `/v1/batch` funding requests in flight during setup.
const SETUP_FUND_TASKS: usize = 4;
/// Tasks (each with its own connection) reading balances for the comparison.
const CHECK_TASKS: usize = 32;
/// Attempts at one setup or check call answered `overloaded` before giving up.
const PATIENCE: u32 = 2_000;
/// Recent postings a client keeps to refund from (at least the batch size).
const POSTINGS_KEPT: usize = 16;
/// Differences listed in the report.
const DIFFERENCES_LISTED: usize = 20;

/// The account names of a run: `tally:funding`, `PREFIXapp-K`, `PREFIXuser-I`.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (visible ASCII that needs no escaping in a URL path, ≤ 64 bytes).
    pub fn new(prefix: &str) -> anyhow::Result<Names> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.~:".contains(c);
        if prefix.len() > ACCOUNT_PREFIX_MAX || !prefix.chars().all(ok) {
            bail!(
                "--account-prefix must be at most {ACCOUNT_PREFIX_MAX} of A-Z a-z 0-9 - _ . ~ :, \
                 not {prefix:?}"
            );
        }
        if prefix.starts_with("tally:") {
            bail!("--account-prefix may not start with `tally:` (the server's own names)");
        }
        Ok(Names {
            prefix: prefix.to_owned(),
        })
    }

    /// The server's name of a bench account.
    pub fn of(&self, id: AccountId) -> String {
        if id == Layout::FUNDING {
            return FUNDING_NAME.to_owned();
        }
        match Layout::APPS.iter().position(|a| *a == id) {
            Some(k) => format!("{}app-{k}", self.prefix),
            None => format!(
                "{}user-{}",
                self.prefix,
                id.0.saturating_sub(Layout::USER_FIRST)
            ),
        }
    }
}

/// An account's totals, or changes to them, in µ¢.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Posted credits.
    pub credits_posted: i128,
    /// Posted debits.
    pub debits_posted: i128,
    /// Pending debits (holds).
    pub debits_pending: i128,
}

impl Totals {
    /// The totals of a `GET /v1/accounts/{id}/balance` answer.
    pub fn from_balance(answer: &Value) -> Result<Totals, CallError> {
        Ok(Totals {
            credits_posted: wide_field(answer, "credits_posted")?,
            debits_posted: wide_field(answer, "debits_posted")?,
            debits_pending: wide_field(answer, "debits_pending")?,
        })
    }

    fn plus(self, d: Totals) -> Totals {
        Totals {
            credits_posted: self.credits_posted + d.credits_posted,
            debits_posted: self.debits_posted + d.debits_posted,
            debits_pending: self.debits_pending + d.debits_pending,
        }
    }
}

/// The bench's books: what the acknowledged writes changed, per account.
#[derive(Clone, Debug, Default)]
pub struct Book {
    deltas: HashMap<AccountId, Totals>,
    uncertain: HashSet<AccountId>,
    /// Writes whose outcome is unknown.
    pub writes_uncertain: u64,
}

impl Book {
    fn entry(&mut self, id: AccountId) -> &mut Totals {
        self.deltas.entry(id).or_default()
    }

    /// A top-up of `user` from the funding account.
    pub fn funded(&mut self, user: AccountId, amount: u64) {
        self.entry(user).credits_posted += i128::from(amount);
        self.entry(Layout::FUNDING).debits_posted += i128::from(amount);
    }

    /// A hold of `amount` on `user`.
    pub fn held(&mut self, user: AccountId, amount: u64) {
        self.entry(user).debits_pending += i128::from(amount);
    }

    /// A commit of `posted` of a hold of `held` (the rest released), credited to `app`.
    pub fn committed(&mut self, user: AccountId, app: AccountId, held: u64, posted: u64) {
        let u = self.entry(user);
        u.debits_pending -= i128::from(held);
        u.debits_posted += i128::from(posted);
        self.entry(app).credits_posted += i128::from(posted);
    }

    /// A void of a hold of `held`.
    pub fn voided(&mut self, user: AccountId, held: u64) {
        self.entry(user).debits_pending -= i128::from(held);
    }

    /// A charge of `amount` to `user`, credited to `app`.
    pub fn charged(&mut self, user: AccountId, app: AccountId, amount: u64) {
        self.entry(user).debits_posted += i128::from(amount);
        self.entry(app).credits_posted += i128::from(amount);
    }

    /// A refund of `amount` to `user`, debited from `app`.
    pub fn refunded(&mut self, user: AccountId, app: AccountId, amount: u64) {
        self.entry(user).credits_posted += i128::from(amount);
        self.entry(app).debits_posted += i128::from(amount);
    }

    /// A transfer of `amount` from `from` to `to`.
    pub fn transferred(&mut self, from: AccountId, to: AccountId, amount: u64) {
        self.entry(from).debits_posted += i128::from(amount);
        self.entry(to).credits_posted += i128::from(amount);
    }

    /// A write whose outcome is unknown touched `accounts`.
    pub fn unknown(&mut self, accounts: &[AccountId]) {
        self.writes_uncertain += 1;
        self.uncertain.extend(accounts.iter().copied());
    }

    /// What the books expect to have changed on `id`.
    pub fn delta(&self, id: AccountId) -> Totals {
        self.deltas.get(&id).copied().unwrap_or_default()
    }

    /// Whether a write of unknown outcome touched `id`.
    pub fn is_uncertain(&self, id: AccountId) -> bool {
        self.uncertain.contains(&id)
    }

    /// Adds `other`'s entries.
    pub fn merge(&mut self, other: Book) {
        for (id, d) in other.deltas {
            let mine = self.entry(id);
            *mine = mine.plus(d);
        }
        self.uncertain.extend(other.uncertain);
        self.writes_uncertain += other.writes_uncertain;
    }
}

/// The balance check through the API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BalanceCheck {
    /// Accounts whose balances were read before and after the load (all, or an even sample).
    pub accounts_compared: u64,
    /// Accounts whose totals after the load differ from before + the bench's books, or could
    /// not be read.
    pub accounts_differing: u64,
    /// Accounts left out: a write of unknown outcome touched them.
    pub accounts_uncertain: u64,
    /// The first differences, described.
    pub differences: Vec<String>,
    /// Seconds the reads took (before and after together).
    pub read_seconds: f64,
}

/// The report of `run --http`.
#[derive(Clone, Debug, Serialize)]
pub struct HttpReport {
    /// `PASS` when the audit is ok and every predictable balance is as the books say.
    pub verdict: &'static str,
    /// `GET /v1/audit` answered `"ok": true` after the load.
    pub invariants_ok: bool,
    /// Every compared account's totals equal before + the books (and at least one compared).
    pub balances_ok: bool,
    /// The resolved configuration.
    pub config: Plan,
    /// Where the load generator ran.
    pub machine: Machine,
    /// The server's base URL.
    pub server: String,
    /// The prefix of the account names.
    pub account_prefix: String,
    /// Accounts opened and funded before the load.
    pub setup: Setup,
    /// What the load did.
    #[serde(flatten)]
    pub load: LoadFigures,
    /// CPU use during the load (the load generator, and the whole machine).
    pub cpu: Option<CpuFigures>,
    /// Writes whose outcome is unknown (no answer, or a 5xx other than `overloaded`).
    pub writes_uncertain: u64,
    /// `GET /v1/audit` after the load, as the server answered it.
    pub audit: Value,
    /// The balance comparison.
    pub balances: BalanceCheck,
}

impl HttpReport {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let calls = if c.batch > 1 {
            format!("writes in /v1/batch requests of up to {}", c.batch)
        } else {
            "one request per write".to_owned()
        };
        let _ = writeln!(
            out,
            "tally-bench {}: workload `{}` over HTTP against {} ({calls}, one keep-alive \
             connection per client)",
            self.machine.version,
            c.name(),
            self.server
        );
        let stop = match (c.ops, c.duration_s) {
            (Some(ops), _) => format!("{} ops", thousands(ops)),
            (None, Some(s)) => format!("{s:.0} s"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} users `{}user-*` (+{FUNDING_NAME}, 4 apps), {} of them loaded, {} clients, \
             {stop}, mix {}",
            thousands(c.accounts),
            self.account_prefix,
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
            "  partial commits {partial}, skew {}, seed {}; {} CPUs here{}",
            c.skew,
            c.seed,
            self.machine.cpus,
            self.machine
                .load_average_at_start
                .map(|l| format!(", load average {l:.2} at start"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "setup: opened {} accounts and funded {} users in {:.2} s (idempotent: a repeated \
             setup replays)",
            thousands(self.setup.accounts_opened),
            thousands(self.setup.users_funded),
            self.setup.seconds
        );
        let note = if c.batch > 1 {
            "every answered request; `batch` = one /v1/batch request"
        } else {
            "every answered request"
        };
        self.load.human(&mut out, note);
        human_cpu(
            &mut out,
            self.cpu.as_ref(),
            "tally-bench (the clients only)",
        );
        if self.writes_uncertain > 0 {
            let _ = writeln!(
                out,
                "writes of unknown outcome: {}",
                thousands(self.writes_uncertain)
            );
        }
        let a = &self.audit;
        let text = |f: &str| match &a[f] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let elsewhere = a["accounts_elsewhere"].as_u64().unwrap_or(0);
        if elsewhere > 0 {
            // A cluster node's audit covers the accounts it serves: sums over a part.
            let _ = writeln!(
                out,
                "checks (through the API):\n  audit: {} on every node (the first node's part: \
                 {} accounts here, {elsewhere} served elsewhere; conservation is a whole-ledger \
                 check, not made over a part)",
                if self.invariants_ok {
                    "ok"
                } else {
                    "VIOLATIONS"
                },
                text("accounts"),
            );
        }
        let _ = (elsewhere == 0).then(|| {
            writeln!(
                out,
                "checks (through the API):\n  audit: {} (Σ debits {} = Σ credits {}; funded {} = \
             revenue {} + user balances {}; {} holds pending; {} accounts)",
                if self.invariants_ok {
                    "ok"
                } else {
                    "VIOLATIONS"
                },
                text("debits_posted"),
                text("credits_posted"),
                text("funded"),
                text("revenue"),
                text("user_balances"),
                text("holds_pending"),
                text("accounts"),
            )
        });
        if let Some(violations) = a["violations"].as_array() {
            for v in violations.iter().take(20) {
                let _ = writeln!(out, "    {}", v.as_str().unwrap_or_default());
            }
        }
        let b = &self.balances;
        let uncertain = if b.accounts_uncertain > 0 {
            format!(
                " ({} left out: touched by a write of unknown outcome)",
                thousands(b.accounts_uncertain)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  balances of {} accounts, before and after the load ({:.2} s of reads): {}{uncertain}",
            thousands(b.accounts_compared),
            b.read_seconds,
            if b.accounts_differing == 0 {
                "all as the bench's books say".to_owned()
            } else {
                format!("{} DIFFER", thousands(b.accounts_differing))
            }
        );
        for d in &b.differences {
            let _ = writeln!(out, "    {d}");
        }
        let _ = writeln!(out, "{}", self.verdict);
        out
    }
}

/// How long the balances are left to settle before they are read, over several nodes (twice
/// the default lease tick of 1 s).
const CLUSTER_SETTLE: Duration = Duration::from_secs(2);

/// Calls `f` until it is not `overloaded`, sleeping a little between attempts.
async fn patiently<T, F, Fut>(mut f: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut attempts = 0u32;
    loop {
        match f().await {
            Err(e) if e.is_overloaded() && attempts < PATIENCE => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Runs the load against the server `args.http` names and returns its report.
pub async fn run(args: &RunArgs) -> anyhow::Result<HttpReport> {
    let plan = Plan::resolve(args)?;
    let Some(url) = &args.http else {
        bail!("remote::run needs --http");
    };
    let Some(key) = args.admin_key.as_deref().filter(|k| !k.trim().is_empty()) else {
        bail!("--http needs the server's admin key: --admin-key KEY or TALLY_ADMIN_KEY");
    };
    let prefix = args
        .account_prefix
        .clone()
        .unwrap_or_else(|| ACCOUNT_PREFIX_DEFAULT.to_owned());
    let names = Names::new(&prefix)?;
    let endpoints = url
        .split(',')
        .map(|u| Endpoint::new(u, key).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Some(endpoint) = endpoints.first().cloned() else {
        bail!("--http names no URL");
    };
    let load_average_at_start = crate::sys::load_average();
    let show_progress = !args.quiet && std::io::stderr().is_terminal();

    if plan.batch > BATCH_BODY_SAFE {
        eprintln!(
            "note: a /v1/batch of {} operations may exceed the server's default body limit \
             (64 KiB: 413 body_too_large, counted as errors); raise its body_bytes_max",
            plan.batch
        );
    }
    let probe = Api::new(Arc::clone(&endpoint));
    match probe.get("/v1/trail/head").await {
        Ok(_) => {}
        Err(CallError::Transport(e)) => bail!("no answer from {}: {e}", endpoint.base()),
        Err(e @ CallError::Answered { status: 401, .. }) => {
            bail!("the server refused the admin key: {e}")
        }
        Err(e) => bail!(
            "{} is not a tally-server that answers: {e}",
            endpoint.base()
        ),
    }

    let setup = set_up(&endpoint, &plan, &names, show_progress).await?;
    let sample = plan.layout().sample(CHECK_ACCOUNTS_MAX);
    // Over several nodes, a leg another node acknowledged reaches its counterparty within the
    // store's poll (a lease tick): let them settle before each read of the balances.
    let settle = match args.settle_ms {
        Some(ms) => Duration::from_millis(ms),
        None if endpoints.len() > 1 => CLUSTER_SETTLE,
        None => Duration::ZERO,
    };
    tokio::time::sleep(settle).await;
    let reads_started = Instant::now();
    let before = read_balances(&endpoint, &names, &sample).await?;
    let mut read_seconds = reads_started.elapsed().as_secs_f64();

    let load = drive(&endpoints, &plan, &names, show_progress).await?;

    tokio::time::sleep(settle).await;
    let reads_started = Instant::now();
    let after = read_balances(&endpoint, &names, &sample).await?;
    read_seconds += reads_started.elapsed().as_secs_f64();
    let audit = patiently(|| probe.get("/v1/audit"))
        .await
        .context("GET /v1/audit")?;
    // Each node of a cluster audits the accounts it serves: all of them must pass.
    let mut others_ok = true;
    for other in endpoints.iter().skip(1) {
        let api = Api::new(Arc::clone(other));
        let report = patiently(|| api.get("/v1/audit"))
            .await
            .with_context(|| format!("GET {}/v1/audit", other.base()))?;
        others_ok &= report["ok"].as_bool() == Some(true);
    }

    let mut balances = compare(&names, &sample, &before, &after, &load.book);
    balances.read_seconds = read_seconds;
    let invariants_ok = audit["ok"].as_bool() == Some(true) && others_ok;
    let balances_ok = balances.accounts_differing == 0
        && balances.accounts_compared > balances.accounts_uncertain;
    Ok(HttpReport {
        verdict: if invariants_ok && balances_ok {
            "PASS"
        } else {
            "FAIL"
        },
        invariants_ok,
        balances_ok,
        machine: Machine {
            load_average_at_start,
            ..Machine::here()
        },
        server: endpoints
            .iter()
            .map(|e| e.base())
            .collect::<Vec<_>>()
            .join(","),
        account_prefix: prefix,
        setup,
        load: LoadFigures::from_stats(&load.stats, load.elapsed)?,
        cpu: load.cpu,
        writes_uncertain: load.book.writes_uncertain,
        audit,
        balances,
        config: plan,
    })
}

/// Opens an account (idempotent: the same name and kind again is 201).
async fn open_account(api: &Api, name: &str, kind: &str) -> anyhow::Result<()> {
    let body = json!({"id": name, "kind": kind});
    patiently(|| api.post("/v1/accounts", &body))
        .await
        .with_context(|| format!("opening the {kind} account {name:?}"))?;
    Ok(())
}

/// Opens the apps and the users (one request each, from many connections), then funds every
/// user with `/v1/batch` requests of up to 1,000 operations, each under an `Idempotency-Key`
/// that names the layout and the amount: a repeated setup replays instead of paying twice.
async fn set_up(
    endpoint: &Arc<Endpoint>,
    plan: &Plan,
    names: &Names,
    show_progress: bool,
) -> anyhow::Result<Setup> {
    let started = Instant::now();
    let layout = plan.layout();
    let api = Api::new(Arc::clone(endpoint));
    for app in Layout::APPS {
        open_account(&api, &names.of(app), "revenue").await?;
    }
    let bar = progress_bar(
        show_progress,
        layout.users.saturating_mul(2),
        "setup {bar:30} {human_pos}/{human_len} accounts opened, then funded, eta {eta}",
    );
    let tasks = SETUP_TASKS.min(layout.users).max(1);
    let mut set = tokio::task::JoinSet::new();
    for first in 0..tasks {
        let (api, names, bar) = (Api::new(Arc::clone(endpoint)), names.clone(), bar.clone());
        set.spawn(async move {
            let mut i = first;
            while i < layout.users {
                open_account(&api, &names.of(layout.user(i)), "user").await?;
                bar.inc(1);
                i += tasks;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done.context("a setup task")??;
    }

    let amount = plan.fund_initial_uc;
    let chunk = setup_chunk(
        &names.of(layout.user(layout.users.saturating_sub(1))),
        amount,
    );
    let starts: Vec<u64> = (0..layout.users)
        .step_by(usize::try_from(chunk).unwrap_or(1))
        .collect();
    let starts = Arc::new(std::sync::Mutex::new(starts));
    for _ in 0..SETUP_FUND_TASKS {
        let (api, names, bar) = (Api::new(Arc::clone(endpoint)), names.clone(), bar.clone());
        let starts = Arc::clone(&starts);
        set.spawn(async move {
            loop {
                let next = starts.lock().ok().and_then(|mut s| s.pop());
                let Some(start) = next else {
                    return anyhow::Ok(());
                };
                let end = (start + chunk).min(layout.users);
                let operations: Vec<Value> = (start..end)
                    .map(|i| json!({"op": "fund", "account": names.of(layout.user(i)), "amount": amount}))
                    .collect();
                let key = format!(
                    "tally-bench:setup:{}:{}:{amount}:{start}",
                    names.prefix, layout.users
                );
                let body = json!({ "operations": operations });
                let answer = patiently(|| api.post_keyed("/v1/batch", &body, Some(&key)))
                    .await
                    .with_context(|| format!("funding users {start}..{end}"))?;
                for (i, result) in batch_results(&answer, operations.len())?
                    .into_iter()
                    .enumerate()
                {
                    if let Err(e) = result {
                        bail!("funding {}: {e}", names.of(layout.user(start + i as u64)));
                    }
                }
                bar.inc(end - start);
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.context("a funding task")??;
    }
    bar.finish_and_clear();
    Ok(Setup {
        continued: false,
        accounts_opened: layout.total(),
        users_funded: layout.users,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Funding operations per setup batch: up to [`BATCH_MAX`], and few enough that the request
/// stays well within the server's default body limit (64 KiB) for the longest name.
fn setup_chunk(longest_name: &str, amount: u64) -> u64 {
    let op = json!({"op": "fund", "account": longest_name, "amount": amount}).to_string();
    let per_op = op.len() as u64 + 1;
    (SETUP_BATCH_BYTES / per_op).clamp(1, u64::from(BATCH_MAX))
}

/// The results of a `/v1/batch` answer: each operation's body, or its error.
fn batch_results(
    answer: &Value,
    expected: usize,
) -> Result<Vec<Result<Value, CallError>>, CallError> {
    let results = answer["results"]
        .as_array()
        .filter(|r| r.len() == expected)
        .ok_or_else(|| CallError::BadResponse {
            status: 200,
            detail: format!("a batch answer without {expected} results"),
        })?;
    Ok(results
        .iter()
        .map(|r| {
            let status = r["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0);
            if (200..300).contains(&status) {
                Ok(r["body"].clone())
            } else {
                Err(CallError::from_body(status, &r["body"]))
            }
        })
        .collect())
}

/// The totals of `ids`, read with a few concurrent connections; `Err` text where a read failed.
async fn read_balances(
    endpoint: &Arc<Endpoint>,
    names: &Names,
    ids: &[AccountId],
) -> anyhow::Result<Vec<Result<Totals, String>>> {
    let chunk = ids.len().div_ceil(CHECK_TASKS).max(1);
    let mut set = tokio::task::JoinSet::new();
    for (n, part) in ids.chunks(chunk).enumerate() {
        let (api, names, part) = (Api::new(Arc::clone(endpoint)), names.clone(), part.to_vec());
        set.spawn(async move {
            let mut out = Vec::with_capacity(part.len());
            for id in part {
                let path = format!("/v1/accounts/{}/balance", names.of(id));
                let read = patiently(|| api.get(&path))
                    .await
                    .and_then(|answer| Totals::from_balance(&answer));
                out.push(read.map_err(|e| e.to_string()));
            }
            (n, out)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = set.join_next().await {
        parts.push(done.context("a balance-reading task")?);
    }
    parts.sort_by_key(|(n, _)| *n);
    Ok(parts.into_iter().flat_map(|(_, out)| out).collect())
}

/// Compares `after` with `before` + the books, account by account.
fn compare(
    names: &Names,
    ids: &[AccountId],
    before: &[Result<Totals, String>],
    after: &[Result<Totals, String>],
    book: &Book,
) -> BalanceCheck {
    let mut check = BalanceCheck {
        accounts_compared: ids.len() as u64,
        ..BalanceCheck::default()
    };
    for ((id, b), a) in ids.iter().zip(before).zip(after) {
        let name = names.of(*id);
        let differs = match (b, a) {
            (Err(e), _) => Some(format!("{name}: reading before the load failed: {e}")),
            (_, Err(e)) => Some(format!("{name}: reading after the load failed: {e}")),
            _ if book.is_uncertain(*id) => {
                check.accounts_uncertain += 1;
                None
            }
            (Ok(b), Ok(a)) => {
                let expected = b.plus(book.delta(*id));
                (expected != *a).then(|| format!("{name}: expected {expected:?}, read {a:?}"))
            }
        };
        if let Some(text) = differs {
            check.accounts_differing += 1;
            if check.differences.len() < DIFFERENCES_LISTED {
                check.differences.push(text);
            }
        }
    }
    check
}

/// What the clients share.
struct Shared {
    /// Client i drives endpoint i mod their number.
    endpoints: Vec<Arc<Endpoint>>,
    plan: Plan,
    picker: UserPicker,
    names: Names,
    gate: Arc<Gate>,
}

/// What the load produced.
struct Load {
    stats: ClientStats,
    book: Book,
    elapsed: Duration,
    cpu: Option<CpuFigures>,
}

async fn drive(
    endpoints: &[Arc<Endpoint>],
    plan: &Plan,
    names: &Names,
    show_progress: bool,
) -> anyhow::Result<Load> {
    let started = Instant::now();
    let cpu_start = CpuSample::now();
    let shared = Arc::new(Shared {
        endpoints: endpoints.to_vec(),
        plan: plan.clone(),
        picker: plan.picker()?,
        names: names.clone(),
        gate: Arc::new(Gate::new(plan, started)),
    });
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..plan.clients {
        let client = HttpClient::new(Arc::clone(&shared), id)?;
        clients.spawn(client.run());
    }
    let ticker = show_progress.then(|| tokio::spawn(progress(Arc::clone(&shared.gate), started)));
    let mut stats = ClientStats::new()?;
    let mut book = Book::default();
    while let Some(done) = clients.join_next().await {
        let (client_stats, client_book) = done.context("a client task")?;
        stats.merge(&client_stats)?;
        book.merge(client_book);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_start.since();
    if let Some(ticker) = ticker {
        ticker.abort();
        let _ = ticker.await;
    }
    Ok(Load {
        stats,
        book,
        elapsed,
        cpu,
    })
}

/// A posting a client may refund from.
#[derive(Clone, Debug)]
struct Posting {
    id: String,
    user: AccountId,
    app: AccountId,
    refundable: u64,
}

/// The first write of a logical operation.
#[derive(Clone, Debug)]
enum Step {
    /// A reserve, then a commit (`true`) or a void.
    Reserve {
        commit: bool,
    },
    Charge,
    Refund(Posting),
    Transfer {
        to: AccountId,
        amount: u64,
    },
    Fund,
}

/// One logical operation in progress.
#[derive(Debug)]
struct Item {
    kind: OpKind,
    user: AccountId,
    app: AccountId,
    cost: Cost,
    step: Step,
    /// The hold a reserve made.
    hold: Option<String>,
    /// How it ended, and when.
    outcome: Option<(Result<(), CallError>, Instant)>,
}

/// One client: a task with one logical operation (or, with `--batch N`, one batch of N) in
/// flight, on its own connection.
struct HttpClient {
    shared: Arc<Shared>,
    api: Api,
    rng: SmallRng,
    postings: VecDeque<Posting>,
    postings_kept: usize,
    stats: ClientStats,
    book: Book,
}

impl HttpClient {
    fn new(shared: Arc<Shared>, id: u32) -> anyhow::Result<HttpClient> {
        let seed = shared.plan.seed ^ u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let postings_kept = POSTINGS_KEPT.max(shared.plan.batch as usize);
        Ok(HttpClient {
            api: Api::new(Arc::clone(
                &shared.endpoints[id as usize % shared.endpoints.len().max(1)],
            )),
            shared,
            rng: SmallRng::seed_from_u64(seed),
            postings: VecDeque::with_capacity(postings_kept),
            postings_kept,
            stats: ClientStats::new()?,
            book: Book::default(),
        })
    }

    async fn run(mut self) -> (ClientStats, Book) {
        let batch = self.shared.plan.batch as usize;
        loop {
            let mut items = Vec::with_capacity(batch);
            while items.len() < batch && self.shared.gate.next_ticket() {
                items.push(self.pick());
            }
            if items.is_empty() {
                break;
            }
            if batch > 1 {
                self.batched(items).await;
            } else {
                for item in items {
                    self.single(item).await;
                }
            }
        }
        (self.stats, self.book)
    }

    fn name(&self, id: AccountId) -> String {
        self.shared.names.of(id)
    }

    /// The next logical operation: kind, user, app and cost.
    fn pick(&mut self) -> Item {
        let shared = Arc::clone(&self.shared);
        let plan = &shared.plan;
        let kind = plan.mix.pick(&mut self.rng);
        let user = shared.picker.pick(&mut self.rng);
        let cost = plan.pricing.cost(&mut self.rng, plan.partial_commit);
        let app = Layout::APPS[self.rng.random_range(0..Layout::APPS.len())];
        let item = |kind, user, app, step| Item {
            kind,
            user,
            app,
            cost,
            step,
            hold: None,
            outcome: None,
        };
        match kind {
            OpKind::ReserveCommit => item(kind, user, app, Step::Reserve { commit: true }),
            OpKind::ReserveVoid => item(kind, user, app, Step::Reserve { commit: false }),
            OpKind::Charge => item(kind, user, app, Step::Charge),
            OpKind::Refund => match self.postings.pop_back() {
                Some(p) => item(kind, p.user, p.app, Step::Refund(p)),
                // Nothing to refund yet: do the work that makes a posting.
                None => item(OpKind::Charge, user, app, Step::Charge),
            },
            OpKind::Transfer => {
                let layout = plan.layout();
                let to = layout.transfer_target(&shared.picker, &mut self.rng, user);
                let amount = self
                    .rng
                    .random_range(1..=(plan.pricing.reserve_max() / 10).max(1));
                item(kind, user, app, Step::Transfer { to, amount })
            }
            OpKind::Fund => item(kind, user, app, Step::Fund),
        }
    }

    /// The accounts the first write of `item` touches.
    fn touched(item: &Item) -> Vec<AccountId> {
        match &item.step {
            Step::Reserve { .. } => vec![item.user],
            Step::Charge | Step::Refund(_) => vec![item.user, item.app],
            Step::Transfer { to, .. } => vec![item.user, *to],
            Step::Fund => vec![item.user, Layout::FUNDING],
        }
    }

    /// The first write of `item` as a single request (path and body) and as a batch operation.
    fn first_write(&self, item: &Item) -> (String, Value, Value) {
        let plan = &self.shared.plan;
        let (account, app) = (self.name(item.user), self.name(item.app));
        match &item.step {
            Step::Reserve { .. } => {
                let body = json!({"account": account, "app": app, "amount": item.cost.reserve,
                                  "endpoint": plan.endpoint});
                ("/v1/holds".to_owned(), with_op("reserve", &body), body)
            }
            Step::Charge => {
                let body = json!({"account": account, "app": app, "amount": item.cost.commit,
                                  "endpoint": plan.endpoint});
                ("/v1/charges".to_owned(), with_op("charge", &body), body)
            }
            Step::Refund(p) => {
                let body = json!({"posting": p.id, "amount": refund_amount(p)});
                ("/v1/refunds".to_owned(), with_op("refund", &body), body)
            }
            Step::Transfer { to, amount } => {
                let body = json!({"from": account, "to": self.name(*to), "amount": amount});
                ("/v1/transfers".to_owned(), with_op("transfer", &body), body)
            }
            Step::Fund => {
                let body = json!({"amount": plan.topup_uc});
                let op = json!({"op": "fund", "account": account, "amount": plan.topup_uc});
                (format!("/v1/accounts/{account}/fund"), op, body)
            }
        }
    }

    /// One write as one request: its latency is recorded under `call`; an acknowledged write
    /// is counted; a write of unknown outcome makes `touched` unpredictable.
    async fn write(
        &mut self,
        call: CallKind,
        path: &str,
        body: &Value,
        touched: &[AccountId],
    ) -> Result<Value, CallError> {
        let called = Instant::now();
        let answer = self.api.post(path, body).await;
        self.stats.call(call, called.elapsed());
        match &answer {
            Ok(_) => self.stats.writes_acked += 1,
            Err(e) if !e.changed_nothing() => self.book.unknown(touched),
            Err(_) => {}
        }
        answer
    }

    /// Books the first write of `item` as acknowledged with `answer`.
    fn first_done(&mut self, item: &mut Item, answer: &Value) -> Result<(), CallError> {
        match &item.step {
            Step::Reserve { .. } => {
                self.book.held(item.user, item.cost.reserve);
                match str_field(answer, "id") {
                    Ok(hold) => item.hold = Some(hold),
                    Err(e) => {
                        // A hold was made that the bench cannot resolve: it expires later.
                        self.book.unknown(&[item.user]);
                        return Err(e);
                    }
                }
            }
            Step::Charge => {
                self.book.charged(item.user, item.app, item.cost.commit);
                let posting = str_field(answer, "posting")?;
                self.remember(posting, item.user, item.app, item.cost.commit);
            }
            Step::Refund(p) => {
                let amount = refund_amount(p);
                self.book.refunded(p.user, p.app, amount);
                if p.refundable > amount {
                    let mut rest = p.clone();
                    rest.refundable -= amount;
                    self.postings.push_back(rest);
                }
            }
            Step::Transfer { to, amount } => self.book.transferred(item.user, *to, *amount),
            Step::Fund => self.book.funded(item.user, self.shared.plan.topup_uc),
        }
        Ok(())
    }

    /// Books a commit of `item`'s hold as acknowledged with `answer`.
    fn commit_done(&mut self, item: &Item, answer: &Value) -> Result<(), CallError> {
        let (held, posted) = (item.cost.reserve, item.cost.commit);
        self.book.committed(item.user, item.app, held, posted);
        if answer["amount_posted"].as_u64() != Some(posted)
            || answer["amount_released"].as_u64() != Some(held - posted)
        {
            return Err(CallError::BadResponse {
                status: 200,
                detail: format!("a commit of {posted} of {held} answered {answer}"),
            });
        }
        let posting = str_field(answer, "posting")?;
        self.remember(posting, item.user, item.app, posted);
        Ok(())
    }

    fn remember(&mut self, id: String, user: AccountId, app: AccountId, amount: u64) {
        if self.postings.len() >= self.postings_kept {
            self.postings.pop_front();
        }
        self.postings.push_back(Posting {
            id,
            user,
            app,
            refundable: amount,
        });
    }

    /// Counts a finished logical operation.
    fn finish(&mut self, kind: OpKind, latency: Duration, result: &Result<(), CallError>) {
        self.shared.gate.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => self.stats.op_ok(kind, latency),
            Err(e) => {
                if !self.stats.op_failed_class(kind, classify_code(e.code())) {
                    self.shared.gate.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// One logical operation, one request per write.
    async fn single(&mut self, mut item: Item) {
        let started = Instant::now();
        let result = self.single_calls(&mut item).await;
        self.finish(item.kind, started.elapsed(), &result);
        match result {
            Err(e) if e.is_insufficient_funds() => {
                let started = Instant::now();
                let mut topup = Item {
                    kind: OpKind::Fund,
                    step: Step::Fund,
                    ..item
                };
                let result = self.single_calls(&mut topup).await;
                self.finish(OpKind::Fund, started.elapsed(), &result);
            }
            Err(e) if e.is_overloaded() => tokio::time::sleep(Duration::from_millis(1)).await,
            // A server restarting (a failover): not a busy loop of refused connections.
            Err(e) if e.is_unreachable() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => {}
        }
    }

    async fn single_calls(&mut self, item: &mut Item) -> Result<(), CallError> {
        let (path, _, body) = self.first_write(item);
        let call = match item.step {
            Step::Reserve { .. } => CallKind::Reserve,
            Step::Charge => CallKind::Charge,
            Step::Refund(_) => CallKind::Refund,
            Step::Transfer { .. } => CallKind::Transfer,
            Step::Fund => CallKind::Fund,
        };
        let answer = self.write(call, &path, &body, &Self::touched(item)).await?;
        self.first_done(item, &answer)?;
        let Step::Reserve { commit } = item.step else {
            return Ok(());
        };
        let Some(hold) = item.hold.clone() else {
            return Ok(());
        };
        let (user, app) = (item.user, item.app);
        if commit {
            let path = format!("/v1/holds/{hold}/commit");
            let body = json!({"amount": item.cost.commit});
            match self
                .write(CallKind::Commit, &path, &body, &[user, app])
                .await
            {
                Ok(answer) => self.commit_done(item, &answer),
                Err(error) => {
                    // Release the hold rather than leave it until its timeout.
                    self.void(item, &hold).await;
                    Err(error)
                }
            }
        } else {
            let path = format!("/v1/holds/{hold}/void");
            self.write(CallKind::Void, &path, &json!({}), &[user])
                .await?;
            self.book.voided(user, item.cost.reserve);
            Ok(())
        }
    }

    /// Voids a hold whose commit failed (an error is counted, not returned).
    async fn void(&mut self, item: &Item, hold: &str) {
        let path = format!("/v1/holds/{hold}/void");
        match self
            .write(CallKind::Void, &path, &json!({}), &[item.user])
            .await
        {
            Ok(_) => self.book.voided(item.user, item.cost.reserve),
            Err(e) => {
                self.stats.count_class(classify_code(e.code()));
            }
        }
    }

    /// One `/v1/batch` request of `ops`; each operation's answer. A failed request fails every
    /// operation (and, if its outcome is unknown, makes every touched account unpredictable).
    async fn batch(
        &mut self,
        ops: Vec<Value>,
        touched: &[Vec<AccountId>],
    ) -> Vec<Result<Value, CallError>> {
        let n = ops.len();
        let body = json!({ "operations": ops });
        let called = Instant::now();
        let answer = self.api.post("/v1/batch", &body).await;
        self.stats.call(CallKind::Batch, called.elapsed());
        let results = answer.and_then(|a| batch_results(&a, n));
        match results {
            Ok(results) => {
                for (result, touched) in results.iter().zip(touched) {
                    match result {
                        Ok(_) => self.stats.writes_acked += 1,
                        Err(e) if !e.changed_nothing() => self.book.unknown(touched),
                        Err(_) => {}
                    }
                }
                results
            }
            Err(e) => {
                if !e.changed_nothing() {
                    for t in touched {
                        self.book.unknown(t);
                    }
                }
                vec![Err(e); n]
            }
        }
    }

    /// Up to N logical operations: their first writes in one batch, the commits and voids of
    /// the holds made in a second, voids of failed commits in a third, then top-ups of the
    /// users who ran out of funds.
    async fn batched(&mut self, mut items: Vec<Item>) {
        let started = Instant::now();
        let (ops, touched): (Vec<Value>, Vec<Vec<AccountId>>) = items
            .iter()
            .map(|item| (self.first_write(item).1, Self::touched(item)))
            .unzip();
        let results = self.batch(ops, &touched).await;
        let ended = Instant::now();
        let mut second: Vec<usize> = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            let item = &mut items[i];
            let outcome = match result {
                Ok(answer) => self.first_done(item, &answer),
                Err(e) => Err(e),
            };
            match (&outcome, &item.step, &item.hold) {
                (Ok(()), Step::Reserve { .. }, Some(_)) => second.push(i),
                _ => item.outcome = Some((outcome, ended)),
            }
        }

        let mut third: Vec<usize> = Vec::new();
        if !second.is_empty() {
            let mut ops = Vec::with_capacity(second.len());
            let mut touched = Vec::with_capacity(second.len());
            for &i in &second {
                let item = &items[i];
                let hold = item.hold.clone().unwrap_or_default();
                if matches!(item.step, Step::Reserve { commit: true }) {
                    ops.push(json!({"op": "commit", "hold": hold, "amount": item.cost.commit}));
                    touched.push(vec![item.user, item.app]);
                } else {
                    ops.push(json!({"op": "void", "hold": hold}));
                    touched.push(vec![item.user]);
                }
            }
            let results = self.batch(ops, &touched).await;
            let ended = Instant::now();
            for (&i, result) in second.iter().zip(results) {
                let commit = matches!(items[i].step, Step::Reserve { commit: true });
                let outcome = match (result, commit) {
                    (Ok(answer), true) => self.commit_done(&items[i], &answer),
                    (Ok(_), false) => {
                        self.book.voided(items[i].user, items[i].cost.reserve);
                        Ok(())
                    }
                    (Err(e), true) => {
                        third.push(i);
                        Err(e)
                    }
                    (Err(e), false) => Err(e),
                };
                items[i].outcome = Some((outcome, ended));
            }
        }
        if !third.is_empty() {
            // Release the holds whose commit failed rather than leave them until their timeout.
            let ops: Vec<Value> = third
                .iter()
                .map(|&i| json!({"op": "void", "hold": items[i].hold.clone().unwrap_or_default()}))
                .collect();
            let touched: Vec<Vec<AccountId>> = third.iter().map(|&i| vec![items[i].user]).collect();
            let results = self.batch(ops, &touched).await;
            for (&i, result) in third.iter().zip(results) {
                match result {
                    Ok(_) => self.book.voided(items[i].user, items[i].cost.reserve),
                    Err(e) => {
                        self.stats.count_class(classify_code(e.code()));
                    }
                }
            }
        }

        let mut poor: BTreeSet<AccountId> = BTreeSet::new();
        let mut overloaded = false;
        for item in &mut items {
            let (outcome, ended) = item.outcome.take().unwrap_or_else(|| {
                (
                    Err(CallError::BadResponse {
                        status: 0,
                        detail: "no outcome".to_owned(),
                    }),
                    Instant::now(),
                )
            });
            if let Err(e) = &outcome {
                if e.is_insufficient_funds() {
                    poor.insert(item.user);
                }
                overloaded |= e.is_overloaded();
            }
            self.finish(item.kind, ended.duration_since(started), &outcome);
        }
        if !poor.is_empty() {
            let started = Instant::now();
            let topup = self.shared.plan.topup_uc;
            let ops: Vec<Value> = poor
                .iter()
                .map(|u| json!({"op": "fund", "account": self.name(*u), "amount": topup}))
                .collect();
            let touched: Vec<Vec<AccountId>> =
                poor.iter().map(|u| vec![*u, Layout::FUNDING]).collect();
            let results = self.batch(ops, &touched).await;
            let latency = started.elapsed();
            for (user, result) in poor.iter().zip(results) {
                let outcome = result.map(|_| self.book.funded(*user, topup));
                self.finish(OpKind::Fund, latency, &outcome);
            }
        }
        if overloaded {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What a refund of `p` returns: half of what is left to refund (at least 1 µ¢).
fn refund_amount(p: &Posting) -> u64 {
    (p.refundable / 2).max(1)
}

/// `body` with `"op": op` added (a batch operation).
fn with_op(op: &str, body: &Value) -> Value {
    let mut v = body.clone();
    if let Value::Object(map) = &mut v {
        map.insert("op".to_owned(), Value::from(op));
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_map_the_layout_to_the_server() {
        let names = Names::new("b-").unwrap();
        assert_eq!(names.of(Layout::FUNDING), "tally:funding");
        assert_eq!(names.of(Layout::APPS[2]), "b-app-2");
        assert_eq!(names.of(Layout { users: 10 }.user(7)), "b-user-7");
        assert!(Names::new("a/b").is_err());
        assert!(Names::new("tally:x").is_err());
        assert!(Names::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn the_books_follow_each_write_and_conserve_money() {
        let (user, other, app) = (AccountId(1_000), AccountId(1_001), Layout::APPS[0]);
        let mut book = Book::default();
        book.funded(user, 1_000);
        book.held(user, 300);
        book.committed(user, app, 300, 200);
        book.held(user, 50);
        book.voided(user, 50);
        book.charged(user, app, 100);
        book.refunded(user, app, 40);
        book.transferred(user, other, 10);
        assert_eq!(
            book.delta(user),
            Totals {
                credits_posted: 1_040,
                debits_posted: 310,
                debits_pending: 0
            }
        );
        assert_eq!(
            book.delta(app).credits_posted - book.delta(app).debits_posted,
            260
        );
        let (mut credits, mut debits) = (0, 0);
        for id in [user, other, app, Layout::FUNDING] {
            credits += book.delta(id).credits_posted;
            debits += book.delta(id).debits_posted;
        }
        assert_eq!(credits, debits);

        let mut total = Book::default();
        total.merge(book.clone());
        total.merge(book);
        assert_eq!(total.delta(other).credits_posted, 20);
        total.unknown(&[other]);
        assert!(total.is_uncertain(other) && !total.is_uncertain(user));
    }

    #[test]
    fn the_comparison_leaves_out_uncertain_accounts_and_names_differences() {
        let names = Names::new("b-").unwrap();
        let ids = [AccountId(1_000), AccountId(1_001), AccountId(1_002)];
        let zero = Totals::default();
        let mut book = Book::default();
        book.funded(ids[0], 5);
        book.funded(ids[1], 5);
        book.unknown(&[ids[2]]);
        let before = vec![Ok(zero), Ok(zero), Ok(zero)];
        let funded = Totals {
            credits_posted: 5,
            ..zero
        };
        let after = vec![Ok(funded), Ok(zero), Ok(funded)];
        let check = compare(&names, &ids, &before, &after, &book);
        assert_eq!(check.accounts_compared, 3);
        assert_eq!(check.accounts_uncertain, 1);
        assert_eq!(check.accounts_differing, 1);
        assert!(check.differences[0].starts_with("b-user-1:"));
    }

    #[test]
    fn setup_batches_stay_within_the_body_limit() {
        assert_eq!(setup_chunk("b-user-9", 1), 1_000);
        let long = format!("{}user-999999", "p".repeat(64));
        let n = setup_chunk(&long, 1_000_000_000);
        assert!(n < 1_000 && n * 120 < 64 * 1024, "{n}");
    }

    #[test]
    fn batch_answers_are_split_into_results() {
        let answer = json!({"results": [
            {"status": 201, "body": {"id": "h_7_1"}},
            {"status": 402, "body": {"error": {"code": "insufficient_funds", "message": "m"}}},
        ]});
        let results = batch_results(&answer, 2).unwrap();
        assert_eq!(results[0].as_ref().unwrap()["id"], "h_7_1");
        assert!(results[1].as_ref().unwrap_err().is_insufficient_funds());
        assert!(batch_results(&answer, 3).is_err());
    }
}
