//! What the real-process tests share: the binary, a killable load run, and how a failed
//! command is shown.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The `tally-bench` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tally-bench");

/// Where [`spawn_run`] sends the run's stderr (replaced by each run): next to `acks`.
pub fn run_stderr(acks: &Path) -> std::path::PathBuf {
    acks.with_extension("run-stderr")
}

/// Starts a 30-second durable load (200 accounts, 16 clients) on `data`, logging
/// acknowledgements to `acks`, for the caller to kill; its stderr goes to [`run_stderr`].
pub fn spawn_run(data: &Path, acks: &Path) -> Child {
    let stderr = std::fs::File::create(run_stderr(acks)).expect("creating the run's stderr file");
    Command::new(BIN)
        .args(["run", "--data-dir"])
        .arg(data)
        .arg("--ack-log")
        .arg(acks)
        .args([
            "--accounts",
            "200",
            "--clients",
            "16",
            "--duration",
            "30",
            "--no-ceilings",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning tally-bench run")
}

/// A finished command's status and output, for an assertion message.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
