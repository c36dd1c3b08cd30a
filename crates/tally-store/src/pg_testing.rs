//! A throwaway PostgreSQL server for the test suites (feature `testing`): a cluster made by
//! `initdb` in a temporary directory and started by `pg_ctl` on a Unix socket of its own
//! (Debian's `postgresql` package; as root, both run as the `postgres` user), stopped when the
//! value is dropped. With `TALLY_PG_URL` set, that server is used instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PgConfig;

/// A PostgreSQL server for one test.
pub struct PgServer {
    url: String,
    dir: Option<(tempfile::TempDir, PathBuf)>,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TALLY_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "{name} is missing: install PostgreSQL (Debian: apt-get install postgresql), set \
             TALLY_PG_BIN to its bin directory, or TALLY_PG_URL to a running server"
        )
    })
}

/// Whether this process runs as root (initdb and postgres refuse to).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Starts a server (or takes `TALLY_PG_URL`'s). Panics with what to install when
    /// PostgreSQL is missing.
    pub fn start() -> PgServer {
        if let Ok(url) = std::env::var("TALLY_PG_URL") {
            return PgServer { url, dir: None };
        }
        let tmp = tempfile::Builder::new()
            .prefix("tally-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("a temporary directory for PostgreSQL: {e}"));
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("creating {}: {e}", data.display()));
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(tmp.path());
                    c
                },
                "chown",
            );
        }
        let mut initdb = as_postgres(&pg_bin("initdb"));
        initdb
            .args(["-A", "trust", "-U", "tally", "--no-sync", "-D"])
            .arg(&data);
        run(initdb, "initdb");
        // The socket lives in the test's own directory; a port of its own anyway.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let port = 20_000
            + (std::process::id() % 10_000) as u16
            + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut start = as_postgres(&pg_bin("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(tmp.path().join("log"))
            .args([
                "-o",
                &format!(
                    "-c listen_addresses='' -k {} -p {port} -c max_connections=50",
                    tmp.path().display()
                ),
                "start",
            ]);
        run(start, "pg_ctl start");
        let url = format!(
            "host={} port={port} user=tally dbname=postgres",
            tmp.path().display()
        );
        PgServer {
            url,
            dir: Some((tmp, data)),
        }
    }

    /// Whether this value started the server (and so may stop it).
    pub fn is_own(&self) -> bool {
        self.dir.is_some()
    }

    /// Its libpq connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store config on a schema of its own, with leases of 1 s renewed every 100 ms (a
    /// store reopened after a crash waits for its own leases to lapse).
    pub fn config(&self, schema: &str) -> PgConfig {
        let unique = format!("{schema}_{}", std::process::id());
        let mut config = PgConfig::new(self.url.clone(), unique);
        config.lease_ttl = std::time::Duration::from_secs(1);
        config.renew_every = std::time::Duration::from_millis(100);
        config
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some((_, data)) = &self.dir {
            let mut stop = as_postgres(&pg_bin("pg_ctl"));
            stop.arg("-D").arg(data).args(["-m", "immediate", "stop"]);
            let _ = stop.output();
        }
    }
}
