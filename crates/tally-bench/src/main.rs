//! `tally-bench`: load-test the tally engine (see the library's docs and `--help`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tally_bench::cli::{Cli, CliCommand};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().into_command();
    match execute(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("tally-bench: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` when its verdict is FAIL.
fn execute(command: CliCommand) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let verdict = match command {
        CliCommand::Run(args) if args.http.is_some() => {
            let report = runtime.block_on(tally_bench::remote::run(&args))?;
            print!("{}", report.human());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(report.verdict == "PASS")
        }
        CliCommand::Run(args) => {
            let report = runtime.block_on(tally_bench::run::run(&args))?;
            print!("{}", report.human());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(report.verdict == "PASS")
        }
        CliCommand::Verify(args) => {
            let report = runtime.block_on(tally_bench::verify::verify(&args))?;
            print!("{}", report.human());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(report.verdict == "PASS")
        }
        CliCommand::Salvage(args) => tally_bench::admin::salvage(&args),
        CliCommand::Prune(args) => tally_bench::admin::prune(&args),
        CliCommand::Cycles(args) => {
            let report = runtime.block_on(tally_bench::cycles::cycles(&args))?;
            print!("{}", report.human());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(report.verdict == "PASS")
        }
    };
    // Everything is durable and checked by now. Give background work (a store dropped on a
    // blocking thread closing its files) a bounded time rather than wait on it forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    verdict
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding the JSON report")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
