//! The real Syft clients, unmodified, against the real binary: a Python venv with both SDKs
//! from PyPI, then the seed's router flow through each (tests/sdk/flow_v1.py, flow_v2.py).
//!
//! The venv is made once under `target/sdk-venv`. Set `TALLY_SDK_VENV` to use another; set
//! `TALLY_SKIP_SDK_TESTS=1` to skip (CI never does).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Served;

const PACKAGES: [&str; 2] = ["syft-accounting-sdk==0.1.1", "syfthub-sdk==0.3.1"];

fn venv() -> PathBuf {
    if let Ok(dir) = std::env::var("TALLY_SDK_VENV") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.join("../../target/sdk-venv")
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// Both flows run at once in this binary: one makes the venv while the other waits (two
/// `python3 -m venv` on one directory at once fail).
static VENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ensure_venv() -> PathBuf {
    let _one_at_a_time = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = venv();
    let py = python(&dir);
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import syft_accounting_sdk, syfthub_sdk"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "python3 -m venv {} failed: install python3 and python3-venv",
            dir.display()
        );
        let installed = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES)
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()),
            "pip install {PACKAGES:?} failed (PyPI must be reachable)"
        );
    }
    dir
}

fn run_flow(script: &str, base: &str) {
    if std::env::var("TALLY_SKIP_SDK_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("TALLY_SKIP_SDK_TESTS=1: not running {script}");
        return;
    }
    let venv = ensure_venv();
    let dir = tempfile::tempdir().unwrap();
    let key = "sdk-flow-admin-key-0123456789";
    let served = Served::start(dir.path(), &[("TALLY_ADMIN_KEY", key)]);
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let out = Command::new(python(&venv))
        .arg(&script_path)
        .env("TALLY_URL", format!("{}{base}", served.url))
        .env("TALLY_ADMIN_KEY", key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains("ALL PASSED"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    drop(served);
}

#[test]
fn the_v1_sdk_runs_the_router_flow_unmodified() {
    run_flow("flow_v1.py", "/syft/v1");
}

#[test]
fn the_v2_sdk_runs_the_router_flow_unmodified() {
    run_flow("flow_v2.py", "/syft/v2");
}
