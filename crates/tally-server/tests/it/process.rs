//! The real binary: serve on a fresh directory, a generated admin key (mode 0600), SIGTERM
//! drains and exits 0, kill -9 loses nothing acknowledged.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `tally-server serve` child on a free port.
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Served {
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Served {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-server"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env_remove("TALLY_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("tally-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Served { child, url }
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }

    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection (no client crate needed for a few calls).
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The server answers with a Content-Length (no chunking) for these small bodies.
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_fresh_start_generates_a_private_admin_key_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &[]);
    let key_path = dir.path().join("admin.key");
    let key = std::fs::read_to_string(&key_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let (status, _) = http(
        &served.url,
        "POST",
        "/v1/accounts",
        key.trim(),
        r#"{"id":"alice","kind":"user"}"#,
    );
    assert_eq!(status, 201);
    let (status, _) = http(
        &served.url,
        "POST",
        "/v1/accounts",
        "wrong",
        r#"{"id":"bob","kind":"user"}"#,
    );
    assert_eq!(status, 401);
    served.signal("-TERM");
    assert_eq!(
        served.wait(Duration::from_secs(30)),
        Some(0),
        "SIGTERM must drain and exit 0"
    );
    // The directory is released: the same key opens it again and alice is there.
    let served = Served::start(dir.path(), &[]);
    let (status, body) = http(
        &served.url,
        "GET",
        "/v1/accounts/alice/balance",
        key.trim(),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], 0);
}

#[test]
fn what_was_acknowledged_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_loses_nothing(dir.path(), &[]);
    assert!(dir.path().join("ledger").is_dir());
}

/// The same with the ledger in a real PostgreSQL (a throwaway cluster): the process killed
/// with -9 mid-life, started again on the same schema, every acknowledged charge there.
#[test]
fn what_was_acknowledged_survives_kill_9_with_the_ledger_in_postgres() {
    let pg = tally_store::pg_testing::PgServer::start();
    let schema = pg.config("server_kill").schema;
    let dir = tempfile::tempdir().unwrap();
    kill_9_loses_nothing(
        dir.path(),
        &[("TALLY_POSTGRES", pg.url()), ("TALLY_PG_SCHEMA", &schema)],
    );
    assert!(
        !dir.path().join("ledger").exists(),
        "the ledger is in PostgreSQL, not the data directory"
    );
}

fn kill_9_loses_nothing(dir: &Path, extra: &[(&str, &str)]) {
    let key = "kill-nine-admin-key-0123";
    let mut env = vec![("TALLY_ADMIN_KEY", key)];
    env.extend_from_slice(extra);
    let served = Served::start(dir, &env);
    for (id, kind) in [("alice", "user"), ("chat", "revenue")] {
        let (s, _) = http(
            &served.url,
            "POST",
            "/v1/accounts",
            key,
            &format!(r#"{{"id":"{id}","kind":"{kind}"}}"#),
        );
        assert_eq!(s, 201);
    }
    let (s, _) = http(
        &served.url,
        "POST",
        "/v1/accounts/alice/fund",
        key,
        r#"{"amount":1000000}"#,
    );
    assert_eq!(s, 200);
    let mut acked = 0u64;
    for i in 0..50 {
        let (s, _) = http(
            &served.url,
            "POST",
            "/v1/charges",
            key,
            &format!(r#"{{"account":"alice","app":"chat","amount":{}}}"#, 100 + i),
        );
        assert_eq!(s, 201);
        acked += 100 + i;
    }
    served.signal("-KILL");
    drop(served);
    let served = Served::start(dir, &env);
    let (s, body) = http(&served.url, "GET", "/v1/accounts/alice/balance", key, "");
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["available"].as_u64().unwrap(), 1_000_000 - acked);
    let (_, audit) = http(&served.url, "GET", "/v1/audit", key, "");
    assert_eq!(audit["ok"], true, "{audit}");
}

#[test]
fn keys_made_with_the_cli_work_until_revoked_and_are_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tally-server");
    let env_key = "cli-admin-key-0123456789";
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("TALLY_ADMIN_KEY", env_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: serde_json::Value =
        serde_json::from_str(run(&["keys", "create", "--scope", "admin", "--label", "ops"]).trim())
            .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_u64().unwrap();
    assert!(run(&["keys", "list"]).contains("\"label\":\"ops\""));
    // Nothing under the data directory holds the secret itself.
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
    let served = Served::start(dir.path(), &[("TALLY_ADMIN_KEY", env_key)]);
    let (status, _) = http(&served.url, "GET", "/v1/keys", &secret, "");
    assert_eq!(status, 200);
    drop(served);
    run(&["keys", "revoke", &id.to_string()]);
    let served = Served::start(dir.path(), &[("TALLY_ADMIN_KEY", env_key)]);
    let (status, _) = http(&served.url, "GET", "/v1/keys", &secret, "");
    assert_eq!(status, 401);
}

#[test]
fn sigterm_ends_open_event_streams_and_exits_promptly() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let key = "sse-admin-key-0123456789";
    let mut served = Served::start(dir.path(), &[("TALLY_ADMIN_KEY", key)]);
    let addr = served.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    served.signal("-TERM");
    // The grace period is 30 s; an open stream must not hold the drain that long.
    assert_eq!(served.wait(Duration::from_secs(10)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stream);
}
