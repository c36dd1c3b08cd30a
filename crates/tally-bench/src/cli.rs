//! The command line: `tally-bench [run] [OPTIONS]`, `tally-bench verify` and
//! `tally-bench cycles`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::workload::{parse_duration, Mix};

/// Load-test the tally accounting engine: throughput, latency percentiles, ceilings measured in
/// the same run, and a check that the ledger balances and recovers exactly.
///
/// With no arguments: a 20-second load of 64 clients on 10,000 accounts against the durable
/// store in a temporary directory, then the audit and a reopen-and-compare; prints PASS or FAIL.
/// With `--http URL`: the same load against a running tally-server, checked through its API.
#[derive(Debug, Parser)]
#[command(name = "tally-bench", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: `run`).
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// Options of `run`, when no subcommand is named.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The command to execute: `run` with the top-level options when none was named.
    pub fn into_command(self) -> CliCommand {
        self.command.unwrap_or(CliCommand::Run(self.run))
    }
}

/// The subcommands.
// Parsed once per process: the size of `RunArgs` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run a load, then audit, reopen and compare (the default).
    Run(RunArgs),
    /// Check that every write in an acknowledgement log survived in a data directory.
    Verify(VerifyArgs),
    /// Kill `run` with SIGKILL again and again on one data directory; time each recovery,
    /// measure the directory's growth, then check every acknowledged write.
    Cycles(CyclesArgs),
    /// Say which acknowledged records a damaged data directory has at risk; with
    /// `--truncate`, copy it aside, then cut it back to its last verified record so the
    /// ledger serves again.
    Salvage(SalvageArgs),
    /// Remove the oldest archived history (whole segments before a sequence number); history,
    /// balance history and the trail then report that range as pruned.
    Prune(PruneArgs),
}

/// Options of `salvage`.
#[derive(Clone, Debug, Args)]
pub struct SalvageArgs {
    /// Data directory of the durable store (no store may have it open).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Cut the ledger back to its last verified record, giving up what follows (after copying
    /// the whole directory to `--copy-to`). Without it nothing is changed.
    #[arg(long)]
    pub truncate: bool,
    /// Where the untouched copy goes; must not exist [default: `DIR.salvaged-UNIXTIME`].
    #[arg(long, value_name = "DIR", requires = "truncate")]
    pub copy_to: Option<PathBuf>,
    /// Idempotency keys remembered per account, for rebuilding the snapshots: the value the
    /// ledger runs with [default: 1,000,000, as `run`].
    #[arg(long, value_name = "N")]
    pub idempotency_keys: Option<usize>,
}

/// Options of `prune` (exactly one of `--before-seq` and `--older-than-days`).
#[derive(Clone, Debug, Args)]
#[command(group(clap::ArgGroup::new("cut").required(true).args(["before_seq", "older_than_days"])))]
pub struct PruneArgs {
    /// Data directory of the durable store (no store may have it open).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Prune archived segments whose records all come before this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub before_seq: Option<u64>,
    /// Prune archived segments whose records are all older than this many days (by the
    /// records' timestamps), 1 to 36,500.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub older_than_days: Option<u64>,
    /// Idempotency keys remembered per account: the value the ledger runs with [default:
    /// 1,000,000, as `run`].
    #[arg(long, value_name = "N")]
    pub idempotency_keys: Option<usize>,
}

/// A named workload; explicit options override what it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Per-token LLM pricing: reserve the estimate for max_tokens, commit the tokens used at
    /// 200 / 600 µ¢ per input / output token (the seed's 200 / 600 cents per million tokens); Zipf-skewed users.
    LlmRouter,
    /// A search API: a fixed charge of $0.01 (1,000,000 µ¢) per request.
    SearchApi,
    /// Every client on one account: the single-writer worst case.
    HotWallet,
    /// 1,000,000 accounts under a cap of 100,000 resident: activation and passivation churn;
    /// reports memory per resident account.
    ManyAccounts,
}

/// How the journal makes groups durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncArg {
    /// fdatasync after every group (durable).
    #[default]
    Data,
    /// No sync at all: NOT durable; measures everything but the disk.
    None,
}

/// Options of `run`.
#[derive(Clone, Debug, Default, Args)]
pub struct RunArgs {
    /// A named workload (its settings are the defaults; explicit options win).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// User accounts [default: 10,000; presets differ].
    #[arg(long, value_name = "N")]
    pub accounts: Option<u64>,
    /// Concurrent clients (tasks), each with one logical operation in flight [default: 64].
    #[arg(long, value_name = "N")]
    pub clients: Option<u32>,
    /// How long the load runs: seconds (`10`), or `10s`, `2m`, `500ms` [default: 20s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Stop after this many logical operations instead of after a duration.
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Operation mix, e.g. `reserve-commit=70,charge=20,void=5,refund=5`; also `transfer`,
    /// `fund` [default: that example].
    #[arg(long, value_name = "SPEC", value_parser = clap::value_parser!(Mix))]
    pub mix: Option<Mix>,
    /// Share of commits that post less than was held, 0 to 1 [default: 0.5].
    #[arg(long, value_name = "RATIO")]
    pub partial_commit: Option<f64>,
    /// Zipf exponent of the users' popularity; 0 = uniform [default: 0].
    #[arg(long, value_name = "S")]
    pub skew: Option<f64>,
    /// Send the load to the first N users only (the others exist but stay idle).
    #[arg(long, value_name = "N")]
    pub hot_accounts: Option<u64>,
    /// Most accounts resident in memory (EngineConfig::resident_max) [default: 100,000].
    #[arg(long, value_name = "N")]
    pub resident_max: Option<usize>,
    /// Idempotency keys remembered per account (Limits::idempotency_keys_max). Large so that
    /// nothing acknowledged is forgotten during a crash test; `verify` must use the same value
    /// [default: 1,000,000].
    #[arg(long, value_name = "N")]
    pub idempotency_keys: Option<usize>,
    /// Data directory of the durable store. An existing ledger is continued (recovered, not
    /// re-created) [default: a temporary directory, deleted at the end unless --keep].
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory.
    #[arg(long)]
    pub keep: bool,
    /// Use the in-memory store instead (no disk: the engine's own ceiling).
    #[arg(long)]
    pub in_memory: bool,
    /// Use the PostgreSQL store on this server instead (a libpq connection string, e.g.
    /// `host=/run/postgresql dbname=tally`); its tables go in the schema of --pg-schema.
    #[arg(long, value_name = "CONNINFO", conflicts_with_all = ["in_memory", "data_dir"])]
    pub postgres: Option<String>,
    /// The schema of the PostgreSQL store (an existing ledger in it is continued)
    /// [default: tally_bench_<pid>].
    #[arg(long, value_name = "NAME", requires = "postgres")]
    pub pg_schema: Option<String>,
    /// How journal groups are made durable.
    #[arg(long, value_enum, default_value_t = SyncArg::Data)]
    pub sync: SyncArg,
    /// Journal segment size in MiB, 1 to 1,024 (segments are preallocated: a full disk shows
    /// when one is created) [default: 64].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub segment_mib: Option<u64>,
    /// How often the journal's anchor moves to the durable point, in ms, 1 to 3,600,000 (the
    /// window in which damage looks like a torn tail) [default: 100].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub anchor_ms: Option<u64>,
    /// Seed of the workload's choices (users, amounts, mix) [default: 1].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Append one line per acknowledged write (`ACCOUNT OP OUTCOME`) to this file.
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Skip the ceilings (fdatasync, group commit, core apply loop).
    #[arg(long)]
    pub no_ceilings: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Drive a running tally-server at this base URL (plain `http://HOST:PORT`) instead of an
    /// engine in this process; setup and checks go through its `/v1` API. Several URLs,
    /// comma-separated (the nodes of a cluster): client i drives URL i mod their number, and
    /// setup and checks go through the first.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = ["in_memory", "data_dir", "keep", "ack_log", "resident_max",
                              "idempotency_keys"]
    )]
    pub http: Option<String>,
    /// The server's admin key (with `--http`).
    #[arg(
        long,
        value_name = "KEY",
        env = "TALLY_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// Send each client's writes in batches of N operations: `Tally::submit` on the embedded
    /// engine (1 to 8,192), `/v1/batch` requests with `--http` (1 to 1,000) [default: 1, one
    /// call per write].
    #[arg(long, value_name = "N")]
    pub batch: Option<u32>,
    /// With `--http`: the prefix of the bench's account names (`PREFIXuser-0`, `PREFIXapp-0`);
    /// a run with the same prefix and layout reuses the accounts [default: `bench-`].
    #[arg(long, value_name = "PREFIX", requires = "http")]
    pub account_prefix: Option<String>,
    /// With `--http`: wait this long before each read of the balances, for the legs another
    /// node of a cluster acknowledged to reach their counterparties (within a lease tick)
    /// [default: 2000 with several URLs, else 0].
    #[arg(long, value_name = "MS", requires = "http")]
    pub settle_ms: Option<u64>,
}

/// Options of `verify`.
#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    /// Data directory of the durable store to check.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The acknowledgement log written by `run --ack-log`.
    #[arg(long, value_name = "FILE")]
    pub ack_log: PathBuf,
    /// Idempotency keys remembered per account: the value the runs used [default: 1,000,000].
    #[arg(long, value_name = "N")]
    pub idempotency_keys: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Options of `cycles`.
#[derive(Clone, Debug, Args)]
pub struct CyclesArgs {
    /// Kill cycles: each starts `tally-bench run` on the data directory, kills it with SIGKILL
    /// at a random time, then reopens (recovers) the store in this process, closes it and
    /// measures the directory.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub cycles: u32,
    /// Data directory of the durable store (created if absent). An existing ledger is continued.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The acknowledgement log the runs append to and the final check reads; an existing one is
    /// continued [default: `DIR.acks`, next to the data directory: `/srv/data` →
    /// `/srv/data.acks`].
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
    /// The runs' workload (passed to `run`).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// The runs' user accounts [default: 200; with --preset, the preset's].
    #[arg(long, value_name = "N")]
    pub accounts: Option<u64>,
    /// The runs' concurrent clients [default: 16; with --preset, the preset's].
    #[arg(long, value_name = "N")]
    pub clients: Option<u32>,
    /// Seed of the kill times (and of each run's workload seed); printed, so that a run can be
    /// replayed [default: the clock].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Earliest kill, in milliseconds after a run was started.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub min_ms: u64,
    /// Latest kill, in milliseconds after a run was started.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    pub max_ms: u64,
    /// Also write the report as JSON to this file (every cycle's figures included).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// No line per cycle on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CliCommand, clap::Error> {
        Cli::try_parse_from(args).map(Cli::into_command)
    }

    #[test]
    fn no_arguments_means_run_with_defaults() {
        let CliCommand::Run(args) = parse(&["tally-bench"]).unwrap() else {
            panic!("expected run");
        };
        assert!(args.preset.is_none() && args.duration.is_none() && !args.in_memory);
    }

    #[test]
    fn run_options_work_with_and_without_the_subcommand() {
        for argv in [
            &["tally-bench", "--in-memory", "--duration", "2m"][..],
            &["tally-bench", "run", "--in-memory", "--duration", "2m"][..],
        ] {
            let CliCommand::Run(args) = parse(argv).unwrap() else {
                panic!("expected run");
            };
            assert!(args.in_memory);
            assert_eq!(args.duration, Some(Duration::from_secs(120)));
        }
    }

    #[test]
    fn verify_needs_its_directory_and_log() {
        assert!(parse(&["tally-bench", "verify"]).is_err());
        let CliCommand::Verify(args) =
            parse(&["tally-bench", "verify", "--data-dir", "d", "--ack-log", "f"]).unwrap()
        else {
            panic!("expected verify");
        };
        assert_eq!(args.data_dir, PathBuf::from("d"));
    }

    #[test]
    fn cycles_needs_its_directory_and_has_defaults() {
        assert!(parse(&["tally-bench", "cycles"]).is_err());
        let CliCommand::Cycles(args) =
            parse(&["tally-bench", "cycles", "--data-dir", "d"]).unwrap()
        else {
            panic!("expected cycles");
        };
        assert_eq!((args.cycles, args.min_ms, args.max_ms), (100, 500, 3_000));
        assert!(args.ack_log.is_none() && args.preset.is_none() && args.seed.is_none());
    }

    #[test]
    fn http_options_parse_and_refuse_the_in_process_store() {
        let CliCommand::Run(args) = parse(&[
            "tally-bench",
            "--http",
            "http://127.0.0.1:8080",
            "--admin-key",
            "k",
            "--batch",
            "100",
        ])
        .unwrap() else {
            panic!("expected run");
        };
        assert_eq!(args.http.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(args.batch, Some(100));
        assert!(parse(&["tally-bench", "--http", "http://x", "--in-memory"]).is_err());
        assert!(parse(&["tally-bench", "--http", "http://x", "--data-dir", "d"]).is_err());
        let CliCommand::Run(args) = parse(&["tally-bench", "--batch", "10"]).unwrap() else {
            panic!("expected run");
        };
        assert_eq!(
            args.batch,
            Some(10),
            "the embedded engine takes batches too"
        );
    }

    #[test]
    fn contradictory_options_are_refused() {
        assert!(parse(&["tally-bench", "--duration", "5", "--ops", "5"]).is_err());
        assert!(parse(&["tally-bench", "--in-memory", "--data-dir", "x"]).is_err());
        assert!(parse(&["tally-bench", "--mix", "teleport=1"]).is_err());
    }
}
