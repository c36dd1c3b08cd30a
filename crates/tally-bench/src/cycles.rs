//! `cycles`: the crash test as a measured benchmark. Each cycle starts `tally-bench run` (this
//! executable) on one data directory, SIGKILLs it at a random time, then recovers the directory
//! in this process with the store the run uses, timing the open, closes it cleanly and measures
//! the bytes on disk by part (journal, archive, snapshots). At the end, the check of `verify`
//! runs against the acknowledgement log the killed runs appended to: every acknowledged write
//! must be found.
//!
//! What it answers: how long recovery takes after a kill, whether it stays bounded as cycles
//! accumulate, and how the directory grows when no run ever ends gracefully (so no run's final
//! checkpoint ever happens; each in-process reopen closes the store, not an engine, and saves no
//! snapshot either).
//!
//! Sizes are allocated bytes (`st_blocks × 512`), not file lengths: sparse or preallocated
//! files count for what the disk holds. The report also carries the apparent total.
//!
//! The kill timings are drawn from `--seed` (printed); each run's workload seed is derived from
//! it and the cycle, so a seed replays the same sequence of runs and kill times (up to the
//! machine's speed).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::ValueEnum as _;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tally::Store as _;

use crate::cli::{CyclesArgs, Preset, RunArgs, VerifyArgs};
use crate::plan::Plan;
use crate::report::{thousands, Machine};
use crate::stats::Latency;
use crate::store::{open_store, Backend, StoreOptions};
use crate::verify::{VerifyReport, PROBLEMS_LISTED};

/// User accounts of each run when neither `--accounts` nor `--preset` says (as the crash test).
pub const CYCLE_ACCOUNTS_DEFAULT: u64 = 200;
/// Clients of each run when neither `--clients` nor `--preset` says (as the crash test).
pub const CYCLE_CLIENTS_DEFAULT: u32 = 16;
/// How long a run is told to last: far longer than any kill time, so it never ends by itself.
const RUN_DURATION: &str = "1h";
/// Bytes of a run's stderr shown when it ended by itself.
const STDERR_SHOWN_BYTES_MAX: u64 = 4_096;
/// How the sizes are measured (said in the report).
const SIZE_MEASURE: &str = "allocated bytes on disk (st_blocks x 512)";
/// SIGKILL's number.
const SIGKILL: i32 = 9;

/// The sizes of a data directory, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataSize {
    /// `journal/`: the live journal segments.
    pub journal_bytes: u64,
    /// `archive/`: journal segments a checkpoint retired.
    pub archive_bytes: u64,
    /// `snapshots/`: the snapshot database (account snapshots, keys, indexes).
    pub snapshots_bytes: u64,
    /// Everything else (the anchor, locks).
    pub other_bytes: u64,
    /// The sum of the parts.
    pub total_bytes: u64,
    /// The sum of the files' lengths (what `ls -l` adds up).
    pub total_bytes_apparent: u64,
}

impl DataSize {
    /// `snapshots / (journal + archive)`; `None` when there is no journal at all.
    pub fn snapshots_ratio(&self) -> Option<f64> {
        let log = self.journal_bytes + self.archive_bytes;
        // Display ratio only.
        #[allow(clippy::cast_precision_loss)]
        (log > 0).then(|| self.snapshots_bytes as f64 / log as f64)
    }
}

/// One cycle's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct CycleFigures {
    /// 1-based.
    pub cycle: u32,
    /// When the run was killed, after it was started.
    pub kill_after_ms: u64,
    /// The run's workload seed.
    pub run_seed: u64,
    /// Lines the run added to the acknowledgement log.
    pub acked: u64,
    /// The run's last ack line was cut by the kill and was removed (a lost acknowledgement).
    pub ack_torn_tail: bool,
    /// Wall time of the reopen (`DurableStore::open`, a wait for the lock included).
    pub reopen_ms: f64,
    /// The store's own measure of its recovery (`DurableRecovery::elapsed`).
    pub recovery_ms: f64,
    /// Journal records replayed.
    pub records_replayed: u64,
    /// Snapshots read.
    pub snapshots_loaded: u64,
    /// Torn journal tail cut.
    pub torn_tail_bytes: u64,
    /// Accounts known.
    pub accounts: u64,
    /// Sequence number of the last record.
    pub last_seq: u64,
    /// Wall time of the clean close.
    pub close_ms: f64,
    /// The data directory after the close.
    pub size: DataSize,
}

/// Percentiles of the reopens, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReopenSummary {
    /// Wall time, median.
    pub reopen_ms_p50: f64,
    /// Wall time, 99th percentile.
    pub reopen_ms_p99: f64,
    /// Wall time, largest (exact).
    pub reopen_ms_max: f64,
    /// The store's recovery time, median.
    pub recovery_ms_p50: f64,
    /// The store's recovery time, 99th percentile.
    pub recovery_ms_p99: f64,
    /// The store's recovery time, largest (exact).
    pub recovery_ms_max: f64,
    /// Most journal records one reopen replayed.
    pub records_replayed_max: u64,
}

/// The settings, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct CyclesConfig {
    /// Cycles asked for.
    pub cycles: u32,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The acknowledgement log.
    pub ack_log: PathBuf,
    /// The runs' preset.
    pub preset: Option<Preset>,
    /// The runs' user accounts.
    pub accounts: u64,
    /// The runs' clients.
    pub clients: u32,
    /// The seed of the kill times and of the runs' workloads.
    pub seed: u64,
    /// Earliest kill, after the run started.
    pub kill_after_ms_min: u64,
    /// Latest kill.
    pub kill_after_ms_max: u64,
    /// How sizes are measured.
    pub size_measure: &'static str,
    /// The data directory already held something.
    pub continued: bool,
}

/// What `cycles` found.
#[derive(Clone, Debug, Serialize)]
pub struct CyclesReport {
    /// `PASS` when every acknowledged write was found, some were, and `verify` passed.
    pub verdict: &'static str,
    /// Why it is `FAIL` (empty on `PASS`).
    pub problems: Vec<String>,
    /// The settings.
    pub config: CyclesConfig,
    /// Where it ran.
    pub machine: Machine,
    /// Cycles done.
    pub cycles: u32,
    /// Lines the acknowledgement log held before the first cycle.
    pub acked_before: u64,
    /// Lines it holds at the end.
    pub acked: u64,
    /// Acknowledged writes whose operation was not found (or found with another outcome).
    pub ops_missing: u64,
    /// The first of them, as `verify` names them.
    pub missing: Vec<String>,
    /// Reopen times.
    pub reopen: ReopenSummary,
    /// The data directory before the first cycle.
    pub size_start: DataSize,
    /// After the last cycle's reopen and close.
    pub size_end: DataSize,
    /// After the final check (an engine opened, audited and shut down: a checkpoint).
    pub size_after_verify: Option<DataSize>,
    /// `snapshots / (journal + archive)` at the end (before the final check).
    pub snapshots_ratio_end: Option<f64>,
    /// What the snapshot database held after the last cycle's reopen.
    pub live_end: Option<tally::SnapshotStats>,
    /// The data directory over journal + archive + the live snapshot data (encoded account
    /// snapshots and keys) after the last cycle; the bound is 2.
    pub dir_over_live_end: Option<f64>,
    /// Every cycle.
    pub cycle_list: Vec<CycleFigures>,
    /// The final check.
    pub verify: Option<VerifyReport>,
    /// Seconds the whole command took.
    pub seconds: f64,
}

/// Runs `cycles`: the kill cycles on a blocking thread, then the check of `verify`.
pub async fn cycles(args: &CyclesArgs) -> anyhow::Result<CyclesReport> {
    let started = Instant::now();
    let setup = Setup::resolve(args)?;
    if !args.quiet {
        eprintln!(
            "cycles: {} cycles on {}, acks in {}, kill after {}..{} ms, seed {}",
            setup.config.cycles,
            setup.config.data_dir.display(),
            setup.config.ack_log.display(),
            setup.config.kill_after_ms_min,
            setup.config.kill_after_ms_max,
            setup.config.seed
        );
    }
    let quiet = args.quiet;
    let run_setup = setup.clone();
    let done = tokio::task::spawn_blocking(move || run_cycles(&run_setup, quiet))
        .await
        .context("the cycles task")?
        .with_context(|| format!("the kill cycles (seed {})", setup.config.seed))?;

    let mut problems = Vec::new();
    let acked = done.acked_before + done.cycle_list.iter().map(|c| c.acked).sum::<u64>();
    let (verify, size_after_verify) = if setup.config.ack_log.exists() {
        let verify_args = VerifyArgs {
            data_dir: setup.config.data_dir.clone(),
            ack_log: setup.config.ack_log.clone(),
            idempotency_keys: Some(setup.plan.idempotency_keys_max),
            json: None,
        };
        let report = crate::verify::verify(&verify_args)
            .await
            .context("the final check (verify)")?;
        let dir = setup.config.data_dir.clone();
        let size = tokio::task::spawn_blocking(move || data_size(&dir))
            .await
            .context("the size-measuring task")??;
        (Some(report), Some(size))
    } else {
        problems.push(format!(
            "no run wrote the acknowledgement log {}",
            setup.config.ack_log.display()
        ));
        (None, None)
    };
    if acked == 0 {
        problems.push(format!(
            "no write was acknowledged in {} cycles: kill later (--min-ms)",
            done.cycle_list.len()
        ));
    }
    let (ops_missing, missing) = match &verify {
        Some(v) => {
            if v.ops_missing > 0 {
                problems.push(format!(
                    "{} acknowledged writes are missing",
                    thousands(v.ops_missing)
                ));
            }
            if v.lines_malformed > 0 {
                problems.push(format!(
                    "{} malformed lines in the acknowledgement log",
                    thousands(v.lines_malformed)
                ));
            }
            if !v.invariants_ok {
                problems.push(format!(
                    "the audit found {} violations",
                    v.audit.violations.len()
                ));
            }
            if v.verdict != "PASS" && problems.is_empty() {
                problems.push(format!("verify said {}", v.verdict));
            }
            (v.ops_missing, v.missing.clone())
        }
        None => (0, Vec::new()),
    };
    let size_end = done.cycle_list.last().map_or(done.size_start, |c| c.size);
    Ok(CyclesReport {
        verdict: if problems.is_empty() { "PASS" } else { "FAIL" },
        problems,
        machine: Machine {
            load_average_at_start: done.load_average_at_start,
            ..Machine::here()
        },
        cycles: u32::try_from(done.cycle_list.len()).unwrap_or(u32::MAX),
        acked_before: done.acked_before,
        acked,
        ops_missing,
        missing,
        reopen: summarize(&done.cycle_list)?,
        size_start: done.size_start,
        size_end,
        size_after_verify,
        snapshots_ratio_end: size_end.snapshots_ratio(),
        live_end: done.live_end,
        dir_over_live_end: done.live_end.and_then(|live| {
            let log = size_end.journal_bytes + size_end.archive_bytes;
            let denominator = log + live.account_bytes + live.key_bytes;
            (denominator > 0).then(|| size_end.total_bytes as f64 / denominator as f64)
        }),
        cycle_list: done.cycle_list,
        verify,
        seconds: started.elapsed().as_secs_f64(),
        config: setup.config,
    })
}

/// The settings and the plan the runs resolve to.
#[derive(Clone, Debug)]
struct Setup {
    config: CyclesConfig,
    plan: Plan,
    /// This executable.
    exe: PathBuf,
}

impl Setup {
    fn resolve(args: &CyclesArgs) -> anyhow::Result<Setup> {
        if args.cycles == 0 {
            bail!("--cycles must be at least 1");
        }
        if args.min_ms > args.max_ms {
            bail!(
                "--min-ms ({}) must not exceed --max-ms ({})",
                args.min_ms,
                args.max_ms
            );
        }
        if args.max_ms == 0 {
            bail!("--max-ms must be at least 1");
        }
        let (accounts, clients) = match args.preset {
            Some(_) => (args.accounts, args.clients),
            None => (
                Some(args.accounts.unwrap_or(CYCLE_ACCOUNTS_DEFAULT)),
                Some(args.clients.unwrap_or(CYCLE_CLIENTS_DEFAULT)),
            ),
        };
        // What each run will resolve to: validates the options before anything is started, and
        // gives the limits to reopen with.
        let plan = Plan::resolve(&RunArgs {
            preset: args.preset,
            accounts,
            clients,
            data_dir: Some(args.data_dir.clone()),
            no_ceilings: true,
            ..RunArgs::default()
        })?;

        let data_dir = &args.data_dir;
        let continued = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the data directory {}", data_dir.display()))
            }
        };
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let ack_log = match &args.ack_log {
            Some(path) => path.clone(),
            None => default_ack_log(data_dir)?,
        };
        if !continued {
            let stale = std::fs::metadata(&ack_log).is_ok_and(|m| m.len() > 0);
            if stale {
                bail!(
                    "the data directory {} is new but the acknowledgement log {} is not empty \
                     (from another ledger?): remove it or name another with --ack-log",
                    data_dir.display(),
                    ack_log.display()
                );
            }
        }
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let exe = std::env::current_exe().context("finding this executable (to start runs)")?;
        Ok(Setup {
            config: CyclesConfig {
                cycles: args.cycles,
                data_dir: data_dir.clone(),
                ack_log,
                preset: args.preset,
                accounts: plan.accounts,
                clients: plan.clients,
                seed,
                kill_after_ms_min: args.min_ms,
                kill_after_ms_max: args.max_ms,
                size_measure: SIZE_MEASURE,
                continued,
            },
            plan,
            exe,
        })
    }

    /// The command of one run.
    fn run_command(&self, run_seed: u64) -> Command {
        let c = &self.config;
        let mut command = Command::new(&self.exe);
        command
            .arg("run")
            .arg("--data-dir")
            .arg(&c.data_dir)
            .arg("--ack-log")
            .arg(&c.ack_log)
            .args(["--duration", RUN_DURATION, "--no-ceilings", "--quiet"])
            .arg("--seed")
            .arg(run_seed.to_string());
        if let Some(preset) = c.preset.and_then(|p| p.to_possible_value()) {
            command.arg("--preset").arg(preset.get_name());
        }
        // The resolved values, so that the runs do what the report says.
        command
            .arg("--accounts")
            .arg(c.accounts.to_string())
            .arg("--clients")
            .arg(c.clients.to_string());
        command
    }
}

/// `DIR.acks` next to the data directory (`/srv/tally/data` → `/srv/tally/data.acks`).
pub fn default_ack_log(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::fs::canonicalize(data_dir)
        .with_context(|| format!("resolving the data directory {}", data_dir.display()))?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        bail!(
            "the data directory {} has no parent to put the acknowledgement log in: name one \
             with --ack-log",
            absolute.display()
        );
    };
    let mut file = name.to_owned();
    file.push(".acks");
    Ok(parent.join(file))
}

/// What the blocking part measured.
struct Done {
    load_average_at_start: Option<f64>,
    acked_before: u64,
    size_start: DataSize,
    cycle_list: Vec<CycleFigures>,
    live_end: Option<tally::SnapshotStats>,
}

fn run_cycles(setup: &Setup, quiet: bool) -> anyhow::Result<Done> {
    let c = &setup.config;
    let load_average_at_start = crate::sys::load_average();
    let logs = tempfile::Builder::new()
        .prefix("tally-bench-cycles-")
        .tempdir()
        .context("creating a temporary directory for the runs' stderr")?;
    let stderr_path = logs.path().join("run.stderr");
    let mut acks = AckCounter::new(&c.ack_log);
    let (acked_before, _) = acks.count_new()?;
    let size_start = data_size(&c.data_dir)?;
    let options = StoreOptions {
        dir: Some(c.data_dir.clone()),
        limits: setup.plan.limits(),
        sync: setup.plan.sync_mode(),
        segment_bytes_max: None,
        anchor_interval: None,
        postgres: None,
    };
    let mut rng = SmallRng::seed_from_u64(c.seed);
    let mut cycle_list = Vec::with_capacity(usize::try_from(c.cycles).unwrap_or(0));
    let mut live_end = None;
    for cycle in 1..=c.cycles {
        let kill_after_ms = rng.random_range(c.kill_after_ms_min..=c.kill_after_ms_max);
        let run_seed = c
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(u64::from(cycle));
        kill_one_run(
            setup,
            run_seed,
            Duration::from_millis(kill_after_ms),
            &stderr_path,
        )
        .with_context(|| format!("cycle {cycle}"))?;
        let (acked, ack_torn_tail) = acks.count_new().with_context(|| format!("cycle {cycle}"))?;
        let last = cycle == c.cycles;
        let reopened =
            reopen(&options, &c.data_dir, last).with_context(|| format!("cycle {cycle}"))?;
        if last {
            live_end = reopened.live;
        }
        let figures = CycleFigures {
            cycle,
            kill_after_ms,
            run_seed,
            acked,
            ack_torn_tail,
            reopen_ms: reopened.reopen_ms,
            recovery_ms: ms(reopened.recovery.elapsed),
            records_replayed: reopened.recovery.records_replayed,
            snapshots_loaded: reopened.recovery.snapshots_loaded,
            torn_tail_bytes: reopened.recovery.torn_tail_bytes,
            accounts: reopened.recovery.accounts,
            last_seq: reopened.recovery.last_seq,
            close_ms: reopened.close_ms,
            size: reopened.size,
        };
        if !quiet {
            eprintln!(
                "cycle {cycle}/{}: killed after {kill_after_ms} ms, +{} acked, reopen {:.1} ms \
                 ({} records replayed), {} on disk",
                c.cycles,
                thousands(acked),
                figures.reopen_ms,
                thousands(figures.records_replayed),
                bytes_text(figures.size.total_bytes)
            );
        }
        cycle_list.push(figures);
    }
    Ok(Done {
        load_average_at_start,
        acked_before,
        size_start,
        cycle_list,
        live_end,
    })
}

/// A child killed (and reaped) when dropped, so that an error never leaves a run behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts one run, SIGKILLs it after `after`, reaps it. A run that ended by itself is an error.
fn kill_one_run(
    setup: &Setup,
    run_seed: u64,
    after: Duration,
    stderr_path: &Path,
) -> anyhow::Result<()> {
    let stderr =
        File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut command = setup.run_command(run_seed);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    let child = command
        .spawn()
        .with_context(|| format!("starting {} run", setup.exe.display()))?;
    let mut child = KillOnDrop(child);
    std::thread::sleep(after);
    if let Some(status) = child
        .0
        .try_wait()
        .context("checking on the run before the kill")?
    {
        return Err(ended_by_itself(status, after, stderr_path));
    }
    child.0.kill().context("killing the run")?;
    let status = child.0.wait().context("waiting for the killed run")?;
    if status.signal() != Some(SIGKILL) {
        // It ended between the check and the kill.
        return Err(ended_by_itself(status, after, stderr_path));
    }
    Ok(())
}

fn ended_by_itself(status: ExitStatus, after: Duration, stderr_path: &Path) -> anyhow::Error {
    let stderr = stderr_tail(stderr_path);
    anyhow::anyhow!(
        "`tally-bench run` ended by itself within {} ms, before it was killed ({status}); its \
         stderr:\n{stderr}",
        after.as_millis()
    )
}

/// The last bytes of a run's stderr, or why they could not be read.
fn stderr_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(STDERR_SHOWN_BYTES_MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(empty)".to_owned(),
        Ok(text) => text,
        Err(e) => format!("(reading {}: {e})", path.display()),
    }
}

/// What one reopen measured.
struct Reopened {
    reopen_ms: f64,
    recovery: tally::DurableRecovery,
    close_ms: f64,
    size: DataSize,
    live: Option<tally::SnapshotStats>,
}

/// Opens the store in the data directory (recovering it), closes it, measures the directory.
fn reopen(options: &StoreOptions, dir: &Path, measure_live: bool) -> anyhow::Result<Reopened> {
    let started = Instant::now();
    let (backend, recovery) = open_store(options)?;
    let reopen_ms = ms(started.elapsed());
    let (Backend::Durable(store), Some(recovery)) = (backend, recovery) else {
        bail!("expected the durable store in {}", dir.display());
    };
    let live = if measure_live {
        Some(
            store
                .snapshot_stats()
                .with_context(|| format!("measuring the snapshots in {}", dir.display()))?,
        )
    } else {
        None
    };
    let closing = Instant::now();
    store
        .close()
        .with_context(|| format!("closing the store in {}", dir.display()))?;
    drop(store);
    let close_ms = ms(closing.elapsed());
    Ok(Reopened {
        reopen_ms,
        recovery,
        close_ms,
        size: data_size(dir)?,
        live,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Counts the lines the runs append to the acknowledgement log, reading only what is new, and
/// cuts a last line a kill left incomplete (an acknowledgement lost, as one still in a buffer
/// would be; left there, the next run's first line would be glued to it).
struct AckCounter {
    path: PathBuf,
    /// Bytes counted so far (always just after a newline, or 0).
    offset: u64,
}

impl AckCounter {
    fn new(path: &Path) -> AckCounter {
        AckCounter {
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// Lines added since the last call, and whether a torn last line was cut.
    fn count_new(&mut self) -> anyhow::Result<(u64, bool)> {
        let path = &self.path;
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, false)),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("opening the acknowledgement log {}", path.display()))
            }
        };
        let reading = || format!("reading the acknowledgement log {}", path.display());
        file.seek(SeekFrom::Start(self.offset))
            .with_context(reading)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = 0u64;
        let mut at = self.offset;
        let mut after_last_newline = self.offset;
        loop {
            let n = file.read(&mut buf).with_context(reading)?;
            if n == 0 {
                break;
            }
            for (i, byte) in buf[..n].iter().enumerate() {
                if *byte == b'\n' {
                    lines += 1;
                    after_last_newline = at + i as u64 + 1;
                }
            }
            at += n as u64;
        }
        let torn = at > after_last_newline;
        if torn {
            file.set_len(after_last_newline).with_context(|| {
                format!(
                    "cutting the torn last line of the acknowledgement log {}",
                    path.display()
                )
            })?;
        }
        self.offset = after_last_newline;
        Ok((lines, torn))
    }
}

/// Measures a data directory by part (see [`DataSize`]); an absent directory is empty.
pub fn data_size(dir: &Path) -> anyhow::Result<DataSize> {
    let mut size = DataSize::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(size),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the data directory {}", dir.display()))
        }
    };
    for entry in entries {
        let entry =
            entry.with_context(|| format!("reading the data directory {}", dir.display()))?;
        let path = entry.path();
        let (allocated, apparent) = tree_bytes(&path)?;
        match entry.file_name().to_str() {
            Some("journal") => size.journal_bytes += allocated,
            Some("archive") => size.archive_bytes += allocated,
            Some("snapshots") => size.snapshots_bytes += allocated,
            _ => size.other_bytes += allocated,
        }
        size.total_bytes += allocated;
        size.total_bytes_apparent += apparent;
    }
    Ok(size)
}

/// `(allocated, apparent)` bytes of a file or a directory tree (symbolic links not followed).
fn tree_bytes(path: &Path) -> anyhow::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("reading the metadata of {}", path.display()))?;
    if !meta.is_dir() {
        return Ok((meta.blocks() * 512, meta.len()));
    }
    let mut allocated = 0;
    let mut apparent = 0;
    for entry in std::fs::read_dir(path)
        .with_context(|| format!("reading the directory {}", path.display()))?
    {
        let entry = entry.with_context(|| format!("reading the directory {}", path.display()))?;
        let (a, b) = tree_bytes(&entry.path())?;
        allocated += a;
        apparent += b;
    }
    Ok((allocated, apparent))
}

fn summarize(cycle_list: &[CycleFigures]) -> anyhow::Result<ReopenSummary> {
    let mut reopen = Latency::new()?;
    let mut recovery = Latency::new()?;
    let mut s = ReopenSummary::default();
    for c in cycle_list {
        reopen.record(Duration::from_secs_f64(c.reopen_ms / 1_000.0));
        recovery.record(Duration::from_secs_f64(c.recovery_ms / 1_000.0));
        s.reopen_ms_max = s.reopen_ms_max.max(c.reopen_ms);
        s.recovery_ms_max = s.recovery_ms_max.max(c.recovery_ms);
        s.records_replayed_max = s.records_replayed_max.max(c.records_replayed);
    }
    // Microseconds to milliseconds, for display.
    #[allow(clippy::cast_precision_loss)]
    let to_ms = |us: u64| us as f64 / 1_000.0;
    if !cycle_list.is_empty() {
        let r = reopen.summary();
        let v = recovery.summary();
        // The histogram's buckets are 1 % wide: never report a percentile above the exact max.
        s.reopen_ms_p50 = to_ms(r.latency_us_p50).min(s.reopen_ms_max);
        s.reopen_ms_p99 = to_ms(r.latency_us_p99).min(s.reopen_ms_max);
        s.recovery_ms_p50 = to_ms(v.latency_us_p50).min(s.recovery_ms_max);
        s.recovery_ms_p99 = to_ms(v.latency_us_p99).min(s.recovery_ms_max);
    }
    Ok(s)
}

/// Whether the size after `cycle` is a line of the text report: 1, 10, 25, 50, 100, 250, 500,
/// 1000, … (the last cycle is always shown too).
pub fn is_checkpoint(cycle: u32) -> bool {
    if cycle == 1 {
        return true;
    }
    let mut decade = 10u64;
    let cycle = u64::from(cycle);
    while decade <= cycle {
        if cycle == decade || cycle * 2 == decade * 5 || cycle == decade * 5 {
            return true;
        }
        decade *= 10;
    }
    false
}

/// Bytes with a binary unit: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.50 GiB`.
pub fn bytes_text(bytes: u64) -> String {
    // Display only.
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

impl CyclesReport {
    /// The human summary.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let c = &self.config;
        let preset = c
            .preset
            .and_then(|p| p.to_possible_value())
            .map(|p| format!("preset {}, ", p.get_name()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "tally-bench cycles {}: {} cycles of `run` ({preset}{} accounts, {} clients) killed \
             with SIGKILL {}..{} ms after start; seed {} (--seed {} replays the kill times)",
            self.machine.version,
            self.cycles,
            thousands(c.accounts),
            thousands(c.clients.into()),
            c.kill_after_ms_min,
            c.kill_after_ms_max,
            c.seed,
            c.seed
        );
        let _ = writeln!(
            out,
            "data: {}{}; acks: {}",
            c.data_dir.display(),
            if c.continued {
                " (an existing ledger, continued)"
            } else {
                " (new)"
            },
            c.ack_log.display()
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}/{}, load average {}",
            self.machine.cpus,
            self.machine.os,
            self.machine.arch,
            self.machine
                .load_average_at_start
                .map_or_else(|| "-".to_owned(), |l| format!("{l:.2}"))
        );
        let r = &self.reopen;
        let _ = writeln!(
            out,
            "reopen after a kill (wall): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the store's \
             recovery: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; at most {} records replayed",
            r.reopen_ms_p50,
            r.reopen_ms_p99,
            r.reopen_ms_max,
            r.recovery_ms_p50,
            r.recovery_ms_p99,
            r.recovery_ms_max,
            thousands(r.records_replayed_max)
        );
        let _ = writeln!(
            out,
            "data directory, {SIZE_MEASURE}; `apparent` adds up the files' lengths:"
        );
        let _ = writeln!(
            out,
            "  {:<15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "", "journal", "archive", "snapshots", "other", "total", "apparent", "acked"
        );
        let mut acked_so_far = self.acked_before;
        let row = |out: &mut String, name: &str, s: &DataSize, acked: Option<u64>| {
            let _ = writeln!(
                out,
                "  {name:<15} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                bytes_text(s.journal_bytes),
                bytes_text(s.archive_bytes),
                bytes_text(s.snapshots_bytes),
                bytes_text(s.other_bytes),
                bytes_text(s.total_bytes),
                bytes_text(s.total_bytes_apparent),
                acked.map(thousands).unwrap_or_default()
            );
        };
        row(&mut out, "start", &self.size_start, Some(acked_so_far));
        let last = self.cycle_list.last().map(|c| c.cycle);
        for cycle in &self.cycle_list {
            acked_so_far += cycle.acked;
            if is_checkpoint(cycle.cycle) || Some(cycle.cycle) == last {
                let name = format!("after cycle {}", cycle.cycle);
                row(&mut out, &name, &cycle.size, Some(acked_so_far));
            }
        }
        if let Some(after) = &self.size_after_verify {
            row(&mut out, "after verify", after, None);
        }
        let _ = writeln!(
            out,
            "snapshots / (journal + archive) at the end: {}",
            self.snapshots_ratio_end
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
        );
        if let Some(live) = &self.live_end {
            let _ = writeln!(
                out,
                "live snapshot data at the end: {} accounts in {}, {} keys in {}; the file's \
                 pages in use {}, its length {}; directory / (journal + archive + live) = {}",
                thousands(live.accounts),
                bytes_text(live.account_bytes),
                thousands(live.keys),
                bytes_text(live.key_bytes),
                bytes_text(live.pages_bytes),
                bytes_text(live.file_bytes),
                self.dir_over_live_end
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
            );
        }
        let torn = self.cycle_list.iter().filter(|c| c.ack_torn_tail).count();
        let _ = writeln!(
            out,
            "acked: {} writes in the log ({} during these cycles{})",
            thousands(self.acked),
            thousands(self.acked - self.acked_before),
            if torn > 0 {
                format!("; {torn} torn last lines cut")
            } else {
                String::new()
            }
        );
        if let Some(v) = &self.verify {
            let _ = writeln!(
                out,
                "verify: {} checked, {} found, {} missing; audit {}",
                thousands(v.ops_checked),
                thousands(v.ops_found),
                thousands(v.ops_missing),
                if v.invariants_ok { "ok" } else { "VIOLATIONS" }
            );
        }
        for problem in &self.missing {
            let _ = writeln!(out, "  missing: {problem}");
        }
        if self.ops_missing > self.missing.len() as u64 {
            let _ = writeln!(
                out,
                "  ... and {} more",
                thousands(self.ops_missing - self.missing.len() as u64)
            );
        }
        if let Some(v) = &self.verify {
            for violation in v.audit.violations.iter().take(PROBLEMS_LISTED) {
                let _ = writeln!(out, "  {violation:?}");
            }
        }
        for problem in &self.problems {
            let _ = writeln!(out, "FAIL: {problem}");
        }
        let _ = writeln!(out, "{} ({:.1} s)", self.verdict, self.seconds);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_1_10_25_50_100_and_so_on() {
        let shown: Vec<u32> = (1..=1000).filter(|&c| is_checkpoint(c)).collect();
        assert_eq!(shown, [1, 10, 25, 50, 100, 250, 500, 1000]);
    }

    #[test]
    fn the_default_ack_log_sits_next_to_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let expected = std::fs::canonicalize(dir.path()).unwrap().join("data.acks");
        assert_eq!(default_ack_log(&data).unwrap(), expected);
    }

    #[test]
    fn sizes_are_split_by_part() {
        let dir = tempfile::tempdir().unwrap();
        for part in ["journal", "archive", "snapshots"] {
            std::fs::create_dir(dir.path().join(part)).unwrap();
            std::fs::write(dir.path().join(part).join("f"), vec![1u8; 10_000]).unwrap();
        }
        std::fs::write(dir.path().join("anchor"), b"x").unwrap();
        let size = data_size(dir.path()).unwrap();
        assert!(size.journal_bytes >= 10_000 && size.snapshots_bytes >= 10_000);
        assert_eq!(
            size.total_bytes,
            size.journal_bytes + size.archive_bytes + size.snapshots_bytes + size.other_bytes
        );
        assert_eq!(size.total_bytes_apparent, 30_001);
        assert_eq!(
            data_size(&dir.path().join("absent")).unwrap(),
            DataSize::default()
        );
    }

    #[test]
    fn a_torn_last_ack_line_is_cut_and_counting_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks");
        let mut counter = AckCounter::new(&path);
        assert_eq!(counter.count_new().unwrap(), (0, false));
        std::fs::write(&path, "1 0a funded\n2 0b charged\n3 0c char").unwrap();
        assert_eq!(counter.count_new().unwrap(), (2, true));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "1 0a funded\n2 0b charged\n"
        );
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("4 0d charged\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(counter.count_new().unwrap(), (1, false));
    }
}
