//! The server's settings, each with its default and what happens at its limit. They come from
//! an optional TOML file (`--config FILE`, the same names), then the environment (`TALLY_*`),
//! then flags; later sources win.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tally::SyncMode;

use crate::registry::RegistryLimits;

/// Every setting of the server. `ServerConfig::default()` is what a bare `tally-server` uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where to listen. Default `127.0.0.1:8080`.
    pub listen: String,
    /// The data directory (ledger journal, snapshots, the server's registry, secrets).
    /// Default `./tally-data`.
    pub data_dir: PathBuf,
    /// Largest request body in bytes; larger is 413 `body_too_large`. Default 64 KiB.
    pub body_bytes_max: usize,
    /// Requests handled at once; past it a request is answered 503 `overloaded` at once.
    /// Default 4,096.
    pub requests_in_flight_max: usize,
    /// Open connections; past it new connections wait in the kernel's backlog until one
    /// closes. Default 10,000.
    pub connections_max: usize,
    /// Open `/v1/events` streams (not counted as requests in flight); past it a new stream is
    /// 503 `overloaded`. Default 1,024.
    pub event_streams_max: usize,
    /// Seconds the server keeps following the engine's events after the last `/v1/events`
    /// stream closed, so a client that reconnects within it resumes with no gap; after it a
    /// resume starts with a `missed` event. Default 60.
    pub event_idle_keep_s: u64,
    /// Operations in one `/v1/batch`; more is 400. Default 1,000.
    pub batch_operations_max: usize,
    /// How long an idempotency key is remembered, in seconds. Default 86,400 (24 h).
    pub idempotency_retention_s: u64,
    /// Idempotency keys remembered at once; past it a keyed write is 503 `overloaded`.
    /// Default 1,000,000.
    pub idempotency_keys_max: usize,
    /// The idempotency journal's segment size in bytes: a segment is removed once every key in
    /// it has expired, so the journal holds about `idempotency_retention_s` of keyed writes
    /// plus one segment. Default 16 MiB.
    pub idempotency_segment_bytes: u64,
    /// Syft transactions the server remembers; past it the oldest settled ones are no longer
    /// listed (one that may still be pending is never dropped). Default 1,000,000.
    pub syft_transactions_max: usize,
    /// Syft: may `user/create` be called without the admin key? Default false.
    pub open_signup: bool,
    /// Syft: lifetime of a delegation token, in seconds. Default 86,400 (24 h).
    pub token_lifetime_s: u64,
    /// Syft: how long a PENDING transaction holds the sender's funds before it is cancelled,
    /// in seconds. Default 86,400 (24 h; the ledger's longest hold is 7 days).
    pub transaction_timeout_s: u64,
    /// `json` or `text` logs. Default `text`.
    pub log_format: String,
    /// Sync the journals (`data`) or not (`none`: benchmarks only, **not durable**).
    /// Default `data`.
    #[serde(deserialize_with = "sync_mode")]
    pub sync: SyncMode,
    /// Seconds to wait for in-flight requests at shutdown. Default 30.
    pub shutdown_grace_s: u64,
    /// Dashboard: how long a session lasts, in seconds (never past its key's expiry).
    /// Default 28,800 (8 h).
    pub session_ttl_s: u64,
    /// Dashboard: sessions live at once; past it a sign-in is 503 `overloaded`. Default 10,000.
    pub sessions_max: usize,
    /// Dashboard: mark the session cookie `Secure` (set it when a TLS proxy fronts the
    /// server). Default false.
    pub cookie_secure: bool,
    /// Keep the ledger in PostgreSQL (a libpq connection string) instead of `data_dir/ledger`,
    /// and the server's own state (names, keys, users, idempotency keys, the tokens' secret)
    /// there too, shared by every node on the schema. Default: none.
    pub postgres: Option<String>,
    /// The schema of the PostgreSQL ledger. Default `tally`.
    pub pg_schema: String,
    /// This node's name among the nodes sharing the PostgreSQL schema (each needs its own).
    /// Default `tally`.
    pub pg_node: String,
    /// The PostgreSQL ledger's shard leases: their length in ms (renewed every fifth of it).
    /// Default 5,000.
    pub pg_lease_ms: u64,
    /// The URL other nodes forward requests for this node's shards to (with the ledger in
    /// PostgreSQL). Default: `http://` and the bound address, when `listen` names one IP.
    pub advertise: Option<String>,
    /// Exit (status 75) once the ledger's store fail-stops, for a supervisor to start the
    /// server again, which reopens the ledger from what is durable (a cluster node whose
    /// database failed over, or whose lease was taken). Default false: the server stays up,
    /// answering writes 503 `storage_failed`.
    pub exit_on_storage_failure: bool,
}

fn sync_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SyncMode, D::Error> {
    let s = String::deserialize(d)?;
    parse_sync(&s).map_err(serde::de::Error::custom)
}

/// Parses `data` or `none`.
pub fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "data" => Ok(SyncMode::Data),
        "none" => Ok(SyncMode::None),
        other => Err(format!("sync must be `data` or `none`, not {other:?}")),
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./tally-data"),
            body_bytes_max: 64 * 1024,
            requests_in_flight_max: 4_096,
            connections_max: 10_000,
            event_streams_max: 1_024,
            event_idle_keep_s: 60,
            batch_operations_max: 1_000,
            idempotency_retention_s: 86_400,
            idempotency_keys_max: 1_000_000,
            idempotency_segment_bytes: 16 << 20,
            syft_transactions_max: 1_000_000,
            open_signup: false,
            token_lifetime_s: 86_400,
            transaction_timeout_s: 86_400,
            log_format: "text".into(),
            sync: SyncMode::Data,
            shutdown_grace_s: 30,
            session_ttl_s: 28_800,
            sessions_max: 10_000,
            cookie_secure: false,
            postgres: None,
            pg_schema: "tally".into(),
            pg_node: "tally".into(),
            pg_lease_ms: 5_000,
            exit_on_storage_failure: false,
            advertise: None,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file of settings (unknown names are an error).
    pub fn from_toml_file(path: &Path) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The registry's bounds.
    pub fn registry_limits(&self) -> RegistryLimits {
        RegistryLimits {
            idempotency_retention_ms: self.idempotency_retention_s.saturating_mul(1000),
            idempotency_keys_max: self.idempotency_keys_max,
            idempotency_segment_bytes: self.idempotency_segment_bytes,
            txns_max: self.syft_transactions_max,
        }
    }
}

/// Reads a secret file, or creates one (32 random bytes, mode 0600) if there is none.
pub fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => return Err(format!("{} is shorter than 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    write_private(path, &bytes)?;
    Ok(bytes.to_vec())
}

/// Writes a file readable by its owner only (mode 0600), durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
