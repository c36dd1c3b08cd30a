//! `run`: measure the ceilings, open the store and the engine, set up the ledger, drive the
//! load with concurrent clients, then audit, shut down, reopen and compare.
//!
//! # The load
//!
//! Each client is a tokio task with one logical operation in flight: pick an operation from the
//! mix and a user (uniform or Zipf), make the calls, record the latency of the whole operation
//! and of each call. A user out of funds is an expected answer: it is counted apart and the
//! client tops the user up from the funding account (as a service with auto-recharge would).
//! Operation ids are unique per call: (random run id, client, counter), so a continued ledger
//! never sees an id twice; setup ids depend only on the account, so a repeated setup replays.
//!
//! # The checks
//!
//! At the end: balances of every account (or an even sample of a large ledger), the audit;
//! then a graceful shutdown, a reopen of the same store (recovery from the journal and the
//! snapshots), the audit again and the balances again. PASS requires no violation and equality.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tally::{
    AccountId, AccountSpec, Balance, Command, OpId, Outcome, PostingId, Request, ReserveRequest,
    Tally,
};

use crate::acklog::{outcome_kind, AckSender, AckWriter};
use crate::ceiling::{self, Ceilings};
use crate::cli::RunArgs;
use crate::plan::Plan;
use crate::report::{
    JournalFigures, LoadFigures, Machine, RecoveryCheck, RecoveryFigures, Report, Setup,
};
use crate::stats::ClientStats;
use crate::store::{open_engine, open_store, Backend, StoreOptions};
use crate::sys::{CpuFigures, CpuSample};
use crate::workload::{fresh_run_id, run_op, setup_op, CallKind, Layout, OpKind, UserPicker};

/// Tasks that open and fund accounts during setup.
const SETUP_TASKS: u64 = 256;
/// Attempts at one setup call answered `Overloaded` before setup gives up.
const SETUP_ATTEMPTS_MAX: u32 = 2_000;
/// Most accounts whose balances are compared across the reopen (an even sample beyond).
pub const CHECK_ACCOUNTS_MAX: u64 = 20_000;
/// Tasks reading balances for the comparison.
const CHECK_TASKS: usize = 32;
/// Recent postings a client keeps to refund from.
const POSTINGS_KEPT: usize = 16;
/// Differences listed in the report.
const DIFFERENCES_LISTED: usize = 20;
/// How long a disk ceiling is measured.
const CEILING_DISK_TIME: Duration = Duration::from_secs(1);
/// How long the core apply loop is measured.
const CEILING_CORE_TIME: Duration = Duration::from_millis(500);
/// How often the progress display is refreshed.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Runs the load as `args` say and returns its report (the caller prints it and sets the exit
/// code from [`Report::verdict`]).
pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let plan = Plan::resolve(args)?;
    let load_average_at_start = crate::sys::load_average();
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let temp = if args.in_memory || args.data_dir.is_some() || args.postgres.is_some() {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix("tally-bench-")
                .tempdir()
                .context("creating a temporary data directory")?,
        )
    };
    let dir: Option<PathBuf> = match (&args.data_dir, &temp) {
        _ if args.in_memory || args.postgres.is_some() => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(temp)) => Some(temp.path().to_owned()),
        (None, None) => None,
    };
    if let Some(dir) = &dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
    }

    let ceilings = if args.no_ceilings {
        Ceilings::default()
    } else {
        if show_progress {
            eprintln!("measuring ceilings (about 2.5 s)...");
        }
        measure_ceilings(dir.clone(), plan.clients).await?
    };

    let rss_before = crate::sys::rss_bytes();
    let options = StoreOptions {
        dir: dir.clone(),
        limits: plan.limits(),
        sync: plan.sync_mode(),
        segment_bytes_max: args.segment_mib.map(|mib| mib << 20),
        anchor_interval: args.anchor_ms.map(Duration::from_millis),
        postgres: args.postgres.as_ref().map(|url| {
            let schema = args
                .pg_schema
                .clone()
                .unwrap_or_else(|| format!("tally_bench_{}", std::process::id()));
            let mut config = tally::PgConfig::new(url.clone(), schema);
            config.limits = plan.limits();
            config
        }),
    };
    let (backend, opened) = open_store_blocking(options.clone()).await?;
    let store_text = backend.describe(plan.sync_mode());
    let tally = open_engine(&backend, plan.engine_config()).await?;

    let ack_writer = match &args.ack_log {
        Some(path) => Some(
            AckWriter::open(path)
                .with_context(|| format!("opening the acknowledgement log {}", path.display()))?,
        ),
        None => None,
    };
    let ack = ack_writer.as_ref().and_then(AckWriter::sender);

    let setup = set_up(&tally, &plan, ack.clone(), show_progress).await?;
    let journal_before = backend.journal_stats();
    let load = drive(&tally, &plan, ack, show_progress).await?;
    let journal = journal_figures(journal_before, backend.journal_stats(), &load);
    if let Some(writer) = ack_writer {
        writer.finish().context("writing the acknowledgement log")?;
    }
    if load.ack_failed {
        bail!("the acknowledgement log writer stopped during the load");
    }

    let resident_accounts = tally.resident_accounts() as u64;
    let known_accounts = tally.known_accounts() as u64;
    let rss_bytes = crate::sys::rss_bytes();

    let checked = check_and_reopen(tally, backend, &options, &plan).await?;
    let rss_bytes_peak = crate::sys::rss_bytes_peak();

    if let Some(temp) = temp {
        if args.keep {
            let kept = temp.keep();
            eprintln!("kept the data directory {}", kept.display());
        } else {
            temp.close()
                .context("removing the temporary data directory")?;
        }
    }

    assemble(Assembly {
        plan,
        load_average_at_start,
        store_text,
        opened: opened.as_ref().map(RecoveryFigures::from),
        setup,
        load,
        journal,
        ceilings,
        resident_accounts,
        known_accounts,
        rss_before,
        rss_bytes,
        rss_bytes_peak,
        checked,
    })
}

async fn open_store_blocking(
    options: StoreOptions,
) -> anyhow::Result<(Backend, Option<tally::DurableRecovery>)> {
    tokio::task::spawn_blocking(move || open_store(&options))
        .await
        .context("the store-opening task")?
}

async fn measure_ceilings(dir: Option<PathBuf>, clients: u32) -> anyhow::Result<Ceilings> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Ceilings> {
        let mut ceilings = Ceilings {
            group_commit_group_records: usize::try_from(clients).unwrap_or(usize::MAX),
            group_commit_record_bytes: ceiling::typical_record_bytes(),
            ..Ceilings::default()
        };
        if let Some(dir) = &dir {
            let (fsync, group, _) =
                ceiling::measure_disk(dir, ceilings.group_commit_group_records, CEILING_DISK_TIME)
                    .with_context(|| format!("measuring the disk under {}", dir.display()))?;
            ceilings.fdatasync_per_sec = Some(fsync);
            ceilings.group_commit_records_per_sec = Some(group);
        }
        ceilings.core_apply_ops_per_sec = Some(ceiling::core_apply_rate(CEILING_CORE_TIME)?);
        Ok(ceilings)
    })
    .await
    .context("the ceiling task")?
}

pub(crate) fn progress_bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Calls `f` until it is not `Overloaded`, sleeping a little between attempts.
async fn patiently<T, F, Fut>(mut f: F) -> Result<T, tally::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tally::Error>>,
{
    let mut attempts = 0u32;
    loop {
        match f().await {
            Err(tally::Error::Overloaded { .. }) if attempts < SETUP_ATTEMPTS_MAX => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Opens the funding account, the apps and the users, and funds every user (idempotently: the
/// funding ids depend only on the account). Skipped when the ledger already holds them all.
async fn set_up(
    tally: &Tally,
    plan: &Plan,
    ack: Option<AckSender>,
    show_progress: bool,
) -> anyhow::Result<Setup> {
    let layout = plan.layout();
    if tally.known_accounts() as u64 >= layout.total() {
        return Ok(Setup {
            continued: true,
            ..Setup::default()
        });
    }
    let started = Instant::now();
    patiently(|| tally.open_account(Layout::FUNDING, AccountSpec::funding()))
        .await
        .context("opening the funding account")?;
    for app in Layout::APPS {
        patiently(|| tally.open_account(app, AccountSpec::revenue()))
            .await
            .with_context(|| format!("opening the app account {app}"))?;
    }
    let bar = progress_bar(
        show_progress,
        layout.users,
        "setup {bar:30} {human_pos}/{human_len} users opened and funded, eta {eta}",
    );
    let tasks = SETUP_TASKS.min(layout.users).max(1);
    let mut set = tokio::task::JoinSet::new();
    for first in 0..tasks {
        let tally = tally.clone();
        let ack = ack.clone();
        let bar = bar.clone();
        let amount = plan.fund_initial_uc;
        set.spawn(async move {
            let mut i = first;
            while i < layout.users {
                let user = layout.user(i);
                patiently(|| tally.open_account(user, AccountSpec::user()))
                    .await
                    .with_context(|| format!("opening {user}"))?;
                let op = setup_op(user);
                patiently(|| tally.fund(op, user, Layout::FUNDING, amount))
                    .await
                    .with_context(|| format!("funding {user}"))?;
                if let Some(ack) = &ack {
                    ack.acked(user, op, "funded").await?;
                }
                bar.inc(1);
                i += tasks;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done.context("a setup task")??;
    }
    bar.finish_and_clear();
    Ok(Setup {
        continued: false,
        accounts_opened: layout.total(),
        users_funded: layout.users,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the clients of a load share to start and count logical operations (in process and
/// over HTTP).
pub(crate) struct Gate {
    deadline: Option<Instant>,
    ops_limit: Option<u64>,
    total: Option<Duration>,
    tickets: AtomicU64,
    /// Logical operations answered.
    pub(crate) done: AtomicU64,
    /// Unexpected errors.
    pub(crate) failed: AtomicU64,
    /// Set to stop the clients early.
    pub(crate) stop: AtomicBool,
}

impl Gate {
    /// A gate for `plan`'s load starting at `started`.
    pub(crate) fn new(plan: &Plan, started: Instant) -> Gate {
        Gate {
            deadline: plan.duration().map(|d| started + d),
            ops_limit: plan.ops,
            total: plan.duration(),
            tickets: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Whether a client may start another logical operation.
    pub(crate) fn next_ticket(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(deadline) = self.deadline {
            if Instant::now() >= deadline {
                return false;
            }
        }
        match self.ops_limit {
            Some(limit) => self.tickets.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

/// What the clients share.
struct Shared {
    tally: Tally,
    plan: Plan,
    picker: UserPicker,
    run_id: u64,
    gate: Arc<Gate>,
    ack_failed: AtomicBool,
    ack: Option<AckSender>,
}

/// What the load produced.
struct Load {
    stats: ClientStats,
    elapsed: Duration,
    cpu: Option<CpuFigures>,
    ack_failed: bool,
}

async fn drive(
    tally: &Tally,
    plan: &Plan,
    ack: Option<AckSender>,
    show_progress: bool,
) -> anyhow::Result<Load> {
    let started = Instant::now();
    let cpu_start = CpuSample::now();
    let shared = Arc::new(Shared {
        tally: tally.clone(),
        plan: plan.clone(),
        picker: plan.picker()?,
        run_id: fresh_run_id(),
        gate: Arc::new(Gate::new(plan, started)),
        ack_failed: AtomicBool::new(false),
        ack,
    });
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..plan.clients {
        let client = Client::new(Arc::clone(&shared), id)?;
        clients.spawn(client.run());
    }
    let ticker = show_progress.then(|| tokio::spawn(progress(Arc::clone(&shared.gate), started)));
    let mut stats = ClientStats::new()?;
    while let Some(done) = clients.join_next().await {
        let client_stats = done.context("a client task")?;
        stats.merge(&client_stats)?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_start.since();
    if let Some(ticker) = ticker {
        ticker.abort();
        let _ = ticker.await;
    }
    let ack_failed = shared.ack_failed.load(Ordering::Relaxed);
    Ok(Load {
        stats,
        elapsed,
        cpu,
        ack_failed,
    })
}

/// Shows elapsed time (or operations done), operations per second over the last second, and
/// errors, until aborted.
pub(crate) async fn progress(gate: Arc<Gate>, started: Instant) {
    let total = gate.total;
    let len = match (gate.ops_limit, total) {
        (Some(ops), _) => ops,
        (None, Some(d)) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        (None, None) => 0,
    };
    let template = "load  {bar:30} {msg}";
    let bar = progress_bar(true, len, template);
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = gate.done.load(Ordering::Relaxed);
        window.push_back((now, done));
        while window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            window.pop_front();
        }
        let per_sec = match window.front() {
            Some((t, n)) if now > *t => {
                // Display only.
                #[allow(clippy::cast_precision_loss)]
                let delta = done.saturating_sub(*n) as f64;
                delta / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        };
        if gate.ops_limit.is_some() {
            bar.set_position(done);
        } else {
            bar.set_position(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        let clock = match total {
            Some(total) => format!(
                "{:.0}/{:.0} s  ",
                started.elapsed().as_secs_f64().min(total.as_secs_f64()),
                total.as_secs_f64()
            ),
            None => format!("{:.0} s  ", started.elapsed().as_secs_f64()),
        };
        bar.set_message(format!(
            "{clock}{} ops/s  {} ops  {} errors",
            crate::report::rate(per_sec),
            crate::report::thousands(done),
            crate::report::thousands(gate.failed.load(Ordering::Relaxed))
        ));
    }
}

/// One client: a task with one logical operation in flight.
struct Client {
    shared: Arc<Shared>,
    id: u32,
    counter: u32,
    rng: SmallRng,
    postings: VecDeque<(PostingId, u64)>,
    stats: ClientStats,
}

impl Client {
    fn new(shared: Arc<Shared>, id: u32) -> anyhow::Result<Client> {
        let seed = shared.plan.seed ^ u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(Client {
            shared,
            id,
            counter: 0,
            rng: SmallRng::seed_from_u64(seed),
            postings: VecDeque::with_capacity(POSTINGS_KEPT),
            stats: ClientStats::new()?,
        })
    }

    async fn run(mut self) -> ClientStats {
        let batch = self.shared.plan.batch as usize;
        if batch > 1 {
            loop {
                let mut kinds = Vec::with_capacity(batch);
                while kinds.len() < batch && self.shared.gate.next_ticket() {
                    kinds.push(self.shared.plan.mix.pick(&mut self.rng));
                }
                if kinds.is_empty() {
                    break;
                }
                self.batched(kinds).await;
            }
            return self.stats;
        }
        while self.shared.gate.next_ticket() {
            let kind = self.shared.plan.mix.pick(&mut self.rng);
            self.logical(kind).await;
        }
        self.stats
    }

    /// Submits one batch through [`Tally::submit`], timing it as one call.
    async fn submit(
        &mut self,
        requests: Vec<(AccountId, Request)>,
    ) -> Vec<Result<Outcome, tally::Error>> {
        let n = requests.len();
        let called = Instant::now();
        let answered = self.shared.tally.submit(requests).await;
        self.stats.call(CallKind::Batch, called.elapsed());
        match answered {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// N logical operations at a time: their first writes in one batch, the commits and
    /// voids of the holds made in a second, voids of failed commits in a third, then top-ups
    /// of the users who ran out of funds. A logical operation's latency is the time of the
    /// batches it was in.
    async fn batched(&mut self, kinds: Vec<OpKind>) {
        let shared = Arc::clone(&self.shared);
        let started = Instant::now();
        let mut items: Vec<Batched> = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let user = shared.picker.pick(&mut self.rng);
            let cost = shared
                .plan
                .pricing
                .cost(&mut self.rng, shared.plan.partial_commit);
            let app = self.app();
            let (kind, account, command) = match kind {
                OpKind::ReserveCommit | OpKind::ReserveVoid => (
                    kind,
                    user,
                    Command::Reserve {
                        app,
                        amount: bench_amount(cost.reserve),
                        timeout_ms: 60_000,
                        endpoint: shared.plan.endpoint.to_owned(),
                        metadata: String::new(),
                        token: None,
                    },
                ),
                OpKind::Refund => match self.postings.pop_back() {
                    Some((posting, refundable)) => {
                        let amount = (refundable / 2).max(1);
                        if refundable > amount {
                            self.postings.push_back((posting, refundable - amount));
                        }
                        (
                            kind,
                            posting.account,
                            Command::Refund {
                                posting,
                                amount: bench_amount(amount),
                            },
                        )
                    }
                    // Nothing to refund yet: do the work that makes a posting.
                    None => (
                        OpKind::Charge,
                        user,
                        charge_command(app, cost.commit, &shared),
                    ),
                },
                OpKind::Transfer => {
                    let to =
                        shared
                            .plan
                            .layout()
                            .transfer_target(&shared.picker, &mut self.rng, user);
                    let amount = self
                        .rng
                        .random_range(1..=(shared.plan.pricing.reserve_max() / 10).max(1));
                    (
                        kind,
                        user,
                        Command::Transfer {
                            to,
                            amount: bench_amount(amount),
                        },
                    )
                }
                OpKind::Fund => (
                    kind,
                    user,
                    Command::Fund {
                        from: Layout::FUNDING,
                        amount: bench_amount(shared.plan.topup_uc),
                    },
                ),
                OpKind::Charge => (kind, user, charge_command(app, cost.commit, &shared)),
            };
            let op = self.next_op();
            items.push(Batched {
                kind,
                user,
                account,
                op,
                command,
                commit: cost.commit,
                outcome: None,
            });
        }
        let requests = items
            .iter()
            .map(|i| (i.account, Request::new(i.op, i.command.clone())))
            .collect();
        let results = self.submit(requests).await;
        let mut second = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            let item = &mut items[i];
            match result {
                Ok(outcome) => {
                    self.acked(item.account, item.op, outcome_kind(&outcome))
                        .await;
                    match outcome {
                        Outcome::Reserved { hold, .. } => second.push((i, hold)),
                        Outcome::Charged { posting } => {
                            self.remember(posting, item.commit);
                            item.outcome = Some(Ok(()));
                        }
                        _ => item.outcome = Some(Ok(())),
                    }
                }
                Err(e) => item.outcome = Some(Err(e)),
            }
        }
        if !second.is_empty() {
            let mut requests = Vec::with_capacity(second.len());
            for &(i, hold) in &second {
                let op = self.next_op();
                let command = if items[i].kind == OpKind::ReserveCommit {
                    Command::Commit {
                        hold,
                        amount: bench_amount(items[i].commit),
                        usage: tally::Usage::default(),
                    }
                } else {
                    Command::Void { hold }
                };
                requests.push((items[i].user, Request::new(op, command)));
            }
            let ops: Vec<OpId> = requests.iter().map(|(_, r)| r.op).collect();
            let results = self.submit(requests).await;
            let mut third = Vec::new();
            for ((&(i, hold), result), op) in second.iter().zip(results).zip(ops) {
                let user = items[i].user;
                match result {
                    Ok(outcome) => {
                        self.acked(user, op, outcome_kind(&outcome)).await;
                        if let Outcome::Committed {
                            posting,
                            amount_posted,
                            ..
                        } = outcome
                        {
                            self.remember(posting, amount_posted.get());
                        }
                        items[i].outcome = Some(Ok(()));
                    }
                    Err(e) => {
                        if items[i].kind == OpKind::ReserveCommit {
                            third.push((user, hold));
                        }
                        items[i].outcome = Some(Err(e));
                    }
                }
            }
            if !third.is_empty() {
                // Release the holds whose commit failed rather than leave them until their
                // timeout.
                let requests: Vec<_> = third
                    .iter()
                    .map(|&(user, hold)| {
                        (user, Request::new(self.next_op(), Command::Void { hold }))
                    })
                    .collect();
                let ops: Vec<(AccountId, OpId)> =
                    requests.iter().map(|(a, r)| (*a, r.op)).collect();
                for (result, (user, op)) in self.submit(requests).await.into_iter().zip(ops) {
                    match result {
                        Ok(_) => self.acked(user, op, "voided").await,
                        Err(e) => {
                            self.stats.count_error(&e);
                        }
                    }
                }
            }
        }
        let mut poor = std::collections::BTreeSet::new();
        let mut overloaded = false;
        for item in &mut items {
            let outcome = item.outcome.take().unwrap_or(Ok(()));
            match &outcome {
                Err(tally::Error::StorageFailed { .. }) => {
                    self.shared.gate.stop.store(true, Ordering::Relaxed);
                }
                Err(tally::Error::Ledger(tally::LedgerError::InsufficientFunds { .. })) => {
                    poor.insert(item.user);
                }
                Err(tally::Error::Overloaded { .. }) => overloaded = true,
                _ => {}
            }
            self.finish(item.kind, started, &outcome);
        }
        if !poor.is_empty() {
            let started = Instant::now();
            let requests: Vec<_> = poor
                .iter()
                .map(|&user| {
                    let command = Command::Fund {
                        from: Layout::FUNDING,
                        amount: bench_amount(shared.plan.topup_uc),
                    };
                    (user, Request::new(self.next_op(), command))
                })
                .collect();
            let ops: Vec<(AccountId, OpId)> = requests.iter().map(|(a, r)| (*a, r.op)).collect();
            let results = self.submit(requests).await;
            for (result, (user, op)) in results.into_iter().zip(ops) {
                let outcome = match result {
                    Ok(_) => {
                        self.acked(user, op, "funded").await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                self.finish(OpKind::Fund, started, &outcome);
            }
        }
        if overloaded {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn next_op(&mut self) -> OpId {
        let op = run_op(self.shared.run_id, self.id, self.counter);
        self.counter = self.counter.wrapping_add(1);
        op
    }

    fn app(&mut self) -> AccountId {
        Layout::APPS[self.rng.random_range(0..Layout::APPS.len())]
    }

    /// Records an acknowledged write (after the call returned `Ok`).
    async fn acked(&mut self, account: AccountId, op: OpId, outcome: &'static str) {
        self.stats.writes_acked += 1;
        if let Some(ack) = &self.shared.ack {
            if ack.acked(account, op, outcome).await.is_err() {
                self.shared.ack_failed.store(true, Ordering::Relaxed);
                self.shared.gate.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn logical(&mut self, kind: OpKind) {
        let user = self.shared.picker.pick(&mut self.rng);
        let started = Instant::now();
        let (kind, result) = match kind {
            OpKind::ReserveCommit => (kind, self.reserve_then(user, true).await),
            OpKind::ReserveVoid => (kind, self.reserve_then(user, false).await),
            OpKind::Charge => (kind, self.charge(user).await),
            OpKind::Refund => match self.postings.pop_back() {
                Some(posting) => (kind, self.refund(posting).await),
                // Nothing to refund yet: do the work that makes a posting.
                None => (OpKind::Charge, self.charge(user).await),
            },
            OpKind::Transfer => (kind, self.transfer(user).await),
            OpKind::Fund => (kind, self.fund(user).await),
        };
        self.finish(kind, started, &result);
        if let Err(error) = result {
            self.after_error(user, &error).await;
        }
    }

    fn finish(&mut self, kind: OpKind, started: Instant, result: &Result<(), tally::Error>) {
        self.shared.gate.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => self.stats.op_ok(kind, started.elapsed()),
            Err(error) => {
                if !self.stats.op_failed(kind, error) {
                    self.shared.gate.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// A user out of funds is topped up; an overloaded engine is given a moment; a
    /// fail-stopped store ends the load (nothing more can be acknowledged until a reopen).
    async fn after_error(&mut self, user: AccountId, error: &tally::Error) {
        match error {
            tally::Error::StorageFailed { .. } => {
                self.shared.gate.stop.store(true, Ordering::Relaxed);
            }
            tally::Error::Ledger(tally::LedgerError::InsufficientFunds { .. }) => {
                let started = Instant::now();
                let result = self.fund(user).await;
                self.finish(OpKind::Fund, started, &result);
            }
            tally::Error::Overloaded { .. } => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => {}
        }
    }

    async fn reserve_then(&mut self, user: AccountId, commit: bool) -> Result<(), tally::Error> {
        let shared = Arc::clone(&self.shared);
        let cost = shared
            .plan
            .pricing
            .cost(&mut self.rng, shared.plan.partial_commit);
        let app = self.app();
        let op = self.next_op();
        let request = ReserveRequest::new(user, app, cost.reserve).endpoint(shared.plan.endpoint);
        let called = Instant::now();
        let reserved = shared.tally.reserve(op, request).await;
        self.stats.call(CallKind::Reserve, called.elapsed());
        let hold = reserved?;
        self.acked(user, op, "reserved").await;
        let op = self.next_op();
        let called = Instant::now();
        if commit {
            let committed = shared.tally.commit(op, hold, cost.commit).await;
            self.stats.call(CallKind::Commit, called.elapsed());
            match committed {
                Ok(done) => {
                    self.acked(user, op, "committed").await;
                    self.remember(done.posting, done.amount_posted.get());
                    Ok(())
                }
                Err(error) => {
                    // Release the hold rather than leave it until its timeout.
                    let op = self.next_op();
                    let called = Instant::now();
                    let voided = shared.tally.void(op, hold).await;
                    self.stats.call(CallKind::Void, called.elapsed());
                    match voided {
                        Ok(_) => self.acked(user, op, "voided").await,
                        Err(e) => {
                            self.stats.count_error(&e);
                        }
                    }
                    Err(error)
                }
            }
        } else {
            let voided = shared.tally.void(op, hold).await;
            self.stats.call(CallKind::Void, called.elapsed());
            voided?;
            self.acked(user, op, "voided").await;
            Ok(())
        }
    }

    async fn charge(&mut self, user: AccountId) -> Result<(), tally::Error> {
        let shared = Arc::clone(&self.shared);
        let cost = shared
            .plan
            .pricing
            .cost(&mut self.rng, shared.plan.partial_commit);
        let app = self.app();
        let op = self.next_op();
        let called = Instant::now();
        let charged = shared
            .tally
            .charge(op, user, app, cost.commit, shared.plan.endpoint)
            .await;
        self.stats.call(CallKind::Charge, called.elapsed());
        let posting = charged?;
        self.acked(user, op, "charged").await;
        self.remember(posting, cost.commit);
        Ok(())
    }

    fn remember(&mut self, posting: PostingId, amount: u64) {
        if self.postings.len() == POSTINGS_KEPT {
            self.postings.pop_front();
        }
        self.postings.push_back((posting, amount));
    }

    async fn refund(
        &mut self,
        (posting, refundable): (PostingId, u64),
    ) -> Result<(), tally::Error> {
        let shared = Arc::clone(&self.shared);
        let amount = (refundable / 2).max(1);
        let op = self.next_op();
        let called = Instant::now();
        let refunded = shared.tally.refund(op, posting, amount).await;
        self.stats.call(CallKind::Refund, called.elapsed());
        refunded?;
        self.acked(posting.account, op, "refunded").await;
        if refundable > amount {
            self.postings.push_back((posting, refundable - amount));
        }
        Ok(())
    }

    async fn transfer(&mut self, from: AccountId) -> Result<(), tally::Error> {
        let shared = Arc::clone(&self.shared);
        let layout = shared.plan.layout();
        let to = layout.transfer_target(&shared.picker, &mut self.rng, from);
        let amount = self
            .rng
            .random_range(1..=(shared.plan.pricing.reserve_max() / 10).max(1));
        let op = self.next_op();
        let called = Instant::now();
        let moved = shared.tally.transfer(op, from, to, amount).await;
        self.stats.call(CallKind::Transfer, called.elapsed());
        moved?;
        self.acked(from, op, "transferred").await;
        Ok(())
    }

    async fn fund(&mut self, user: AccountId) -> Result<(), tally::Error> {
        let shared = Arc::clone(&self.shared);
        let op = self.next_op();
        let called = Instant::now();
        let funded = shared
            .tally
            .fund(op, user, Layout::FUNDING, shared.plan.topup_uc)
            .await;
        self.stats.call(CallKind::Fund, called.elapsed());
        funded?;
        self.acked(user, op, "funded").await;
        Ok(())
    }
}

/// One logical operation of a batch ([`Client::batched`]).
struct Batched {
    kind: OpKind,
    user: AccountId,
    /// The account that executes its first write.
    account: AccountId,
    op: OpId,
    command: Command,
    /// What a commit posts (reserve-commit) or a charge costs.
    commit: u64,
    outcome: Option<Result<(), tally::Error>>,
}

/// A charge of `amount` to `app` at the plan's endpoint.
fn charge_command(app: AccountId, amount: u64, shared: &Shared) -> Command {
    Command::Charge {
        app,
        amount: bench_amount(amount),
        endpoint: shared.plan.endpoint.to_owned(),
        metadata: String::new(),
        usage: tally::Usage::default(),
        token: None,
    }
}

/// A bench amount (drawn from the plan's prices, so within an amount's bounds; one that is
/// not becomes zero, which the engine refuses as `ZeroAmount`: counted as an error, never
/// silently changed into another amount).
fn bench_amount(value: u64) -> tally::Amount {
    tally::Amount::new(value).unwrap_or(tally::Amount::ZERO)
}

/// What the comparison reads of one account: its balance and, when asked, the size of its
/// encoded state (what its snapshot holds).
type Read = Result<(Balance, Option<usize>), String>;

/// Balances of `ids` (with their encoded state sizes if `sizes`), read with a few concurrent
/// tasks; `Err` text where a read failed.
async fn read_accounts(tally: &Tally, ids: &[AccountId], sizes: bool) -> anyhow::Result<Vec<Read>> {
    let chunk = ids.len().div_ceil(CHECK_TASKS).max(1);
    let mut set = tokio::task::JoinSet::new();
    for (n, part) in ids.chunks(chunk).enumerate() {
        let tally = tally.clone();
        let part = part.to_vec();
        set.spawn(async move {
            let mut out: Vec<Read> = Vec::with_capacity(part.len());
            for id in part {
                let read = if sizes {
                    tally.account(id).await.map(|state| {
                        let bytes = tally_store::codec::encode_account(&state)
                            .map(|b| b.len())
                            .ok();
                        (state.balance(), bytes)
                    })
                } else {
                    tally.balance(id).await.map(|b| (b, None))
                };
                out.push(read.map_err(|e| e.to_string()));
            }
            (n, out)
        });
    }
    let mut parts = Vec::new();
    while let Some(done) = set.join_next().await {
        parts.push(done.context("an account-reading task")?);
    }
    parts.sort_by_key(|(n, _)| *n);
    Ok(parts.into_iter().flat_map(|(_, out)| out).collect())
}

/// The checks' results.
struct Checked {
    audit_before: tally::AuditReport,
    account_state_bytes_mean: Option<u64>,
    recovery: RecoveryCheck,
    data_bytes: Option<u64>,
}

async fn check_and_reopen(
    tally: Tally,
    backend: Backend,
    options: &StoreOptions,
    plan: &Plan,
) -> anyhow::Result<Checked> {
    let sample = plan.layout().sample(CHECK_ACCOUNTS_MAX);
    let before = read_accounts(&tally, &sample, true).await?;
    let sizes: Vec<u64> = before
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|(_, size)| *size))
        .map(|size| size as u64)
        .collect();
    let account_state_bytes_mean =
        (!sizes.is_empty()).then(|| sizes.iter().sum::<u64>() / sizes.len() as u64);
    let audit_before = tally.audit().await.context("the audit")?;
    let shutdown_started = Instant::now();
    tally.shutdown().await.context("shutting the engine down")?;
    let shutdown_seconds = shutdown_started.elapsed().as_secs_f64();

    let reopen_started = Instant::now();
    let (backend, opened) = match backend {
        // The in-memory store's clones share its journal: "reopening" is a new engine on it.
        Backend::Memory(store) => (Backend::Memory(store), None),
        Backend::Durable(store) => {
            drop(store);
            open_store_blocking(options.clone()).await?
        }
        // Closed by the shutdown: opened again from what PostgreSQL holds.
        Backend::Postgres(store) => {
            drop(store);
            open_store_blocking(options.clone()).await?
        }
    };
    let tally = open_engine(&backend, plan.engine_config()).await?;
    let reopen_seconds = reopen_started.elapsed().as_secs_f64();
    let audit_after = tally.audit().await.context("the audit after the reopen")?;
    let after = read_accounts(&tally, &sample, false).await?;

    let mut differences = Vec::new();
    let mut accounts_differing = 0u64;
    for ((id, b), a) in sample.iter().zip(&before).zip(&after) {
        let differs = match (b, a) {
            (Ok((b, _)), Ok((a, _))) => {
                (b != a).then(|| format!("{id}: before {b:?}, after {a:?}"))
            }
            (Err(e), _) => Some(format!("{id}: reading before the reopen failed: {e}")),
            (_, Err(e)) => Some(format!("{id}: reading after the reopen failed: {e}")),
        };
        if let Some(text) = differs {
            accounts_differing += 1;
            if differences.len() < DIFFERENCES_LISTED {
                differences.push(text);
            }
        }
    }
    let audit_equal = audit_before == audit_after;
    tally
        .shutdown()
        .await
        .context("shutting the reopened engine down")?;
    let data_bytes = backend.data_bytes();
    Ok(Checked {
        audit_before,
        account_state_bytes_mean,
        recovery: RecoveryCheck {
            shutdown_seconds,
            reopen_seconds,
            store: opened.as_ref().map(RecoveryFigures::from),
            audit_after,
            audit_equal,
            accounts_compared: sample.len() as u64,
            accounts_differing,
            differences,
        },
        data_bytes,
    })
}

struct Assembly {
    plan: Plan,
    load_average_at_start: Option<f64>,
    store_text: String,
    opened: Option<RecoveryFigures>,
    setup: Setup,
    load: Load,
    journal: Option<JournalFigures>,
    ceilings: Ceilings,
    resident_accounts: u64,
    known_accounts: u64,
    rss_before: Option<u64>,
    rss_bytes: Option<u64>,
    rss_bytes_peak: Option<u64>,
    checked: Checked,
}

/// What the journal wrote between two readings of its totals.
fn journal_figures(
    before: Option<tally::JournalStats>,
    after: Option<tally::JournalStats>,
    load: &Load,
) -> Option<JournalFigures> {
    let (before, after) = (before?, after?);
    let records = after.records.saturating_sub(before.records);
    let groups = after.groups.saturating_sub(before.groups);
    let bytes = after.bytes.saturating_sub(before.bytes);
    let sync_ns = after.sync_ns_total.saturating_sub(before.sync_ns_total);
    let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    Some(JournalFigures {
        records,
        groups,
        bytes,
        bytes_per_record: per(bytes, records),
        bytes_per_write_acked: per(bytes, load.stats.writes_acked),
        records_per_group: per(records, groups),
        sync_us_mean: per(sync_ns, groups) / 1_000.0,
    })
}

fn ratio(value: f64, ceiling: Option<f64>) -> Option<f64> {
    ceiling.filter(|c| *c > 0.0).map(|c| value / c)
}

fn assemble(a: Assembly) -> anyhow::Result<Report> {
    let load = LoadFigures::from_stats(&a.load.stats, a.load.elapsed)?;
    let writes_per_sec = load.writes_per_sec;
    let rss_bytes_per_resident_account = match (a.rss_bytes, a.rss_before) {
        (Some(end), Some(start)) if a.resident_accounts > 0 => {
            Some(end.saturating_sub(start) / a.resident_accounts)
        }
        _ => None,
    };
    let recovery = a.checked.recovery;
    let invariants_ok = a.checked.audit_before.ok() && recovery.audit_after.ok();
    let recovery_ok = recovery.audit_equal && recovery.accounts_differing == 0;
    let ceilings = a.ceilings;
    Ok(Report {
        verdict: if invariants_ok && recovery_ok {
            "PASS"
        } else {
            "FAIL"
        },
        invariants_ok,
        recovery_ok,
        machine: Machine {
            load_average_at_start: a.load_average_at_start,
            ..Machine::here()
        },
        store: a.store_text,
        open: a.opened,
        setup: a.setup,
        load,
        cpu: a.load.cpu,
        journal: a.journal,
        resident_accounts: a.resident_accounts,
        known_accounts: a.known_accounts,
        rss_bytes: a.rss_bytes,
        rss_bytes_peak: a.rss_bytes_peak,
        rss_bytes_before_engine: a.rss_before,
        rss_bytes_per_resident_account,
        account_state_bytes_mean: a.checked.account_state_bytes_mean,
        data_bytes: a.checked.data_bytes,
        ratio_to_group_commit: ratio(writes_per_sec, ceilings.group_commit_records_per_sec),
        ratio_to_fdatasync: ratio(writes_per_sec, ceilings.fdatasync_per_sec),
        ratio_to_core_apply: ratio(writes_per_sec, ceilings.core_apply_ops_per_sec),
        ceilings,
        audit: a.checked.audit_before,
        recovery,
        config: a.plan,
    })
}
