//! `tally-bench cycles` with a real process: three kill -9 cycles of `run` on one directory,
//! then the report must say that every acknowledged write was found, and its JSON must hold one
//! entry per cycle with the directory's sizes.

use std::process::{Command, Stdio};

use crate::support::{text, BIN};

#[test]
fn cycles_kills_three_runs_and_finds_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let json = dir.path().join("cycles.json");
    let output = Command::new(BIN)
        .args(["cycles", "--cycles", "3", "--data-dir"])
        .arg(&data)
        .args([
            "--accounts",
            "20",
            "--clients",
            "4",
            "--min-ms",
            "600",
            "--max-ms",
            "900",
            "--seed",
            "7",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "cycles failed:\n{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(" 0 missing"), "{}", text(&output));
    assert!(stdout.contains("3 cycles of `run`"), "{}", text(&output));
    assert!(stdout.contains("seed 7"), "{}", text(&output));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verdict"], "PASS");
    assert_eq!(report["cycles"], 3);
    assert_eq!(report["ops_missing"], 0);
    assert!(report["acked"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(
        report["config"]["ack_log"].as_str().unwrap(),
        std::fs::canonicalize(dir.path())
            .unwrap()
            .join("data.acks")
            .to_str()
            .unwrap()
    );
    let cycle_list = report["cycle_list"].as_array().unwrap();
    assert_eq!(cycle_list.len(), 3);
    for cycle in cycle_list {
        let size = &cycle["size"];
        for part in ["journal_bytes", "snapshots_bytes", "total_bytes"] {
            assert!(size[part].as_u64().unwrap() > 0, "{part} in {cycle:#}");
        }
        assert!(cycle["reopen_ms"].as_f64().unwrap() > 0.0, "{cycle:#}");
    }
}
