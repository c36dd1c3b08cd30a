//! `tally-bench --http` against a real `tally-server` process: a short load, one request per
//! write and in batches, must end in PASS (the audit and every balance checked through the API).
//!
//! The server binary is looked up next to tally-bench's (`target/<profile>/tally-server`);
//! `cargo test --workspace` builds it. If it is missing the test fails, unless
//! `TALLY_SKIP_HTTP_BENCH_TEST=1`, which skips it with a note.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{text, BIN};
const ADMIN_KEY: &str = "bench-test-admin-key-0123456789";

/// `tally-server` next to `tally-bench`, if it was built.
fn server_binary() -> Option<PathBuf> {
    let dir = PathBuf::from(BIN).parent()?.to_owned();
    let path = dir.join(format!("tally-server{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// A `tally-server serve` child on a free port, stopped with SIGTERM when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(binary: &PathBuf, data: &std::path::Path) -> Served {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("TALLY_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning tally-server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("tally-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from tally-server: {line:?}"))
            .to_owned();
        Served { child, url }
    }

    /// SIGTERM (a graceful drain), then the exit status within `limit`.
    fn stop(&mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn bench(url: &str, json: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--http", url, "--accounts", "50", "--clients", "8"])
        .args(["--duration", "2", "--quiet", "--json"])
        .arg(json)
        .args(extra)
        .env("TALLY_ADMIN_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("running tally-bench --http")
}

#[test]
fn an_http_load_against_a_real_server_passes_its_checks() {
    let Some(server) = server_binary() else {
        if std::env::var("TALLY_SKIP_HTTP_BENCH_TEST").as_deref() == Ok("1") {
            eprintln!(
                "skipped: no tally-server binary next to {BIN} (TALLY_SKIP_HTTP_BENCH_TEST=1)"
            );
            return;
        }
        panic!(
            "no tally-server binary next to {BIN}: build it first (`cargo build -p tally-server`, \
             or run `cargo test --workspace`), or set TALLY_SKIP_HTTP_BENCH_TEST=1 to skip"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(&server, &dir.path().join("data"));

    for (name, extra) in [
        ("single", &[][..]),
        // Small batches and a mix with every operation.
        (
            "batch",
            &[
                "--batch",
                "10",
                "--mix",
                "reserve-commit=50,void=10,charge=20,refund=10,transfer=5,fund=5",
            ][..],
        ),
    ] {
        let json = dir.path().join(format!("{name}.json"));
        let output = bench(&served.url, &json, extra);
        assert!(
            output.status.success(),
            "{name}: tally-bench --http failed:\n{}",
            text(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("PASS"), "{name}:\n{}", text(&output));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["verdict"], "PASS", "{name}: {report:#}");
        assert_eq!(report["audit"]["ok"], true, "{name}");
        assert!(report["writes_acked"].as_u64().unwrap() > 0, "{name}");
        assert_eq!(report["balances"]["accounts_compared"], 55, "{name}");
        assert_eq!(report["balances"]["accounts_differing"], 0, "{name}");
        assert_eq!(report["errors_total"], 0, "{name}: {report:#}");
        if name == "batch" {
            assert!(report["per_call"]["batch"]["count"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(served.stop(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_wrong_admin_key_is_an_error_not_a_verdict() {
    let Some(server) = server_binary() else {
        if std::env::var("TALLY_SKIP_HTTP_BENCH_TEST").as_deref() == Ok("1") {
            eprintln!("skipped: no tally-server binary next to {BIN}");
            return;
        }
        panic!(
            "no tally-server binary next to {BIN}: build it first (`cargo build -p tally-server`)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&server, &dir.path().join("data"));
    let output = Command::new(BIN)
        .args([
            "--http",
            &served.url,
            "--admin-key",
            "not-the-key-0123456789",
        ])
        .args(["--accounts", "5", "--duration", "1", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin key"), "{}", text(&output));
}
