//! Crash tests with a real process: `tally-bench run` is killed with SIGKILL at random points,
//! restarted on the same data directory, killed again; then `tally-bench verify` must find every
//! write the killed processes acknowledged (invariant 6: every acked operation survives a crash).
//!
//! `TALLY_CRASH_CYCLES` raises the number of kill cycles (default 20); `TALLY_CRASH_SEED`
//! replays the kill timings of a failed run (the seed is printed).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::support::{run_stderr, spawn_run, text, BIN};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn verify(data: &Path, acks: &Path) -> Output {
    Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(data)
        .arg("--ack-log")
        .arg(acks)
        .stdin(Stdio::null())
        .output()
        .expect("running tally-bench verify")
}

#[test]
fn every_acknowledged_write_survives_repeated_kill_9() {
    let cycles = env_u64("TALLY_CRASH_CYCLES").unwrap_or(20);
    let seed = env_u64("TALLY_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    eprintln!("crash test: {cycles} cycles, TALLY_CRASH_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acks = dir.path().join("acks.log");

    for cycle in 0..cycles {
        let mut child = spawn_run(&data, &acks);
        std::thread::sleep(Duration::from_millis(rng.random_range(200..=800)));
        if let Some(status) = child.try_wait().unwrap() {
            let said = std::fs::read_to_string(run_stderr(&acks)).unwrap_or_default();
            panic!(
                "cycle {cycle}: `tally-bench run` exited before it was killed: {status}\n{said}"
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    let log = tally_bench::acklog::read(&acks).unwrap();
    assert!(
        !log.lines.is_empty(),
        "no write was acknowledged in {cycles} cycles"
    );
    let output = verify(&data, &acks);
    assert!(
        output.status.success(),
        "verify failed after {cycles} kill cycles ({} acknowledged writes):\n{}",
        log.lines.len(),
        text(&output)
    );
}

#[test]
fn verify_fails_and_names_an_acknowledged_op_that_never_happened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acks = dir.path().join("acks.log");
    let run = Command::new(BIN)
        .args(["run", "--data-dir"])
        .arg(&data)
        .arg("--ack-log")
        .arg(&acks)
        .args([
            "--accounts",
            "20",
            "--clients",
            "4",
            "--ops",
            "200",
            "--no-ceilings",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success(), "the run failed:\n{}", text(&run));
    assert!(verify(&data, &acks).status.success());

    let ghost = "7777777777777777777777777777beef";
    let mut log = std::fs::read_to_string(&acks).unwrap();
    log.push_str(&format!("1000 {ghost} committed\n"));
    std::fs::write(&acks, log).unwrap();

    let output = verify(&data, &acks);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(ghost), "{}", text(&output));
    assert!(stdout.contains("FAIL"), "{}", text(&output));
}
