//! Which store a run drives: the embedded durable store in a directory, or the in-memory store
//! (the engine's own ceiling: no disk at all).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tally::{
    DurableConfig, DurableRecovery, DurableStore, EngineConfig, Limits, MemStore, PgConfig,
    PgStore, Store, StoreError, SyncMode, Tally,
};

/// How long a reopen waits for the previous owner of a data directory to let go of it (the
/// actors of a shut-down engine drop their handles asynchronously).
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(10);

/// An open store.
#[derive(Clone)]
pub enum Backend {
    /// The durable store.
    Durable(DurableStore),
    /// The in-memory store (clones share the same data, so it can be "reopened").
    Memory(MemStore),
    /// The PostgreSQL store.
    Postgres(PgStore),
}

impl Backend {
    /// The store, for [`Tally::open`].
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Durable(store) => Arc::new(store.clone()),
            Backend::Memory(store) => Arc::new(store.clone()),
            Backend::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// The local journal's running totals (`None` in memory and on PostgreSQL).
    pub fn journal_stats(&self) -> Option<tally::JournalStats> {
        match self {
            Backend::Durable(store) => store.journal_stats(),
            Backend::Memory(_) | Backend::Postgres(_) => None,
        }
    }

    /// Bytes on disk (`None` in memory).
    pub fn data_bytes(&self) -> Option<u64> {
        match self {
            Backend::Durable(store) => Some(store.data_bytes()),
            Backend::Memory(_) | Backend::Postgres(_) => None,
        }
    }

    /// A short description for the summary.
    pub fn describe(&self, sync: SyncMode) -> String {
        match (self, sync) {
            (Backend::Durable(store), SyncMode::Data) => {
                format!(
                    "durable store (fdatasync per group) in {}",
                    store.dir().display()
                )
            }
            (Backend::Durable(store), SyncMode::None) => format!(
                "durable store WITHOUT fdatasync (not durable) in {}",
                store.dir().display()
            ),
            (Backend::Memory(_), _) => "in-memory store (no disk: the engine's ceiling)".to_owned(),
            (Backend::Postgres(_), _) => {
                "PostgreSQL store (one COPY transaction per group)".to_owned()
            }
        }
    }
}

/// Where and how to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The data directory; `None` for the in-memory store.
    pub dir: Option<PathBuf>,
    /// Account limits (the engine's, also used when replaying).
    pub limits: Limits,
    /// How journal groups are made durable.
    pub sync: SyncMode,
    /// Journal segment size (`None`: the store's default).
    pub segment_bytes_max: Option<u64>,
    /// How often the anchor moves (`None`: the store's default).
    pub anchor_interval: Option<Duration>,
    /// The PostgreSQL store instead (`dir` is then ignored).
    pub postgres: Option<PgConfig>,
}

/// Opens the store: the durable one in `options.dir` (recovering what it holds, waiting up to
/// [`REOPEN_WAIT_MAX`] for a previous owner in this process to let go), or a fresh in-memory one.
pub fn open_store(options: &StoreOptions) -> anyhow::Result<(Backend, Option<DurableRecovery>)> {
    if let Some(config) = &options.postgres {
        let (store, _) = PgStore::open(config.clone())
            .with_context(|| format!("opening the PostgreSQL store in schema {}", config.schema))?;
        return Ok((Backend::Postgres(store), None));
    }
    match &options.dir {
        None => Ok((Backend::Memory(MemStore::new(options.limits.clone())), None)),
        Some(dir) => {
            let (store, recovery) = open_durable(dir, options)?;
            Ok((Backend::Durable(store), Some(recovery)))
        }
    }
}

fn open_durable(
    dir: &Path,
    options: &StoreOptions,
) -> anyhow::Result<(DurableStore, DurableRecovery)> {
    let started = Instant::now();
    loop {
        let config = durable_config(dir, options);
        match DurableStore::open(config) {
            Ok(opened) => return Ok(opened),
            Err(StoreError::Locked { .. }) if started.elapsed() < REOPEN_WAIT_MAX => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening the store in {}", dir.display()))
            }
        }
    }
}

/// The durable store's configuration for `dir` under `options`.
pub fn durable_config(dir: &Path, options: &StoreOptions) -> DurableConfig {
    let mut config = DurableConfig::new(dir);
    config.limits = options.limits.clone();
    config.sync = options.sync;
    if let Some(bytes) = options.segment_bytes_max {
        config.segment_bytes_max = bytes;
    }
    if let Some(interval) = options.anchor_interval {
        config.anchor_interval = interval;
    }
    config
}

/// Opens an engine on `backend`.
pub async fn open_engine(backend: &Backend, config: EngineConfig) -> anyhow::Result<Tally> {
    Tally::open(backend.store(), config)
        .await
        .context("opening the engine")
}
