//! tally-server: tally as a service.
//!
//! The server is an edge, not a second engine: [`router`] builds an axum `Router` from an
//! [`AppState`] (a [`tally::Tally`] handle, the server's [`registry::Registry`] and its
//! [`ServerConfig`]); handlers parse, authenticate, call one engine method and map the typed
//! error to a status ([`error::ApiError`]). Every rule of money stays in tally-core and the
//! engine, so the embedded and the HTTP user get the same answers.
//!
//! - `/v1`: the native API (JSON, amounts as integers in µ¢, `Idempotency-Key` on writes).
//! - `/v1/cost`: the seeds' cost service calls.
//! - `/syft/v1` and `/syft/v2`: the APIs the Syft accounting clients call.
//! - `/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`.
//! - `/`: the dashboard ([`dashboard`]), signed in through [`session`].

pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod forward;
pub mod grants;
pub mod idempotency;
pub mod json;
pub mod metering;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod serve;
pub mod session;
pub mod syft;
pub mod tokens;
pub mod v1;

use std::path::Path;
use std::sync::Arc;

use tally::{AccountId, AccountSpec, Tally};
use tokio::sync::Semaphore;

pub use config::ServerConfig;
pub use serve::{router, Server};

use crate::error::ApiError;
use crate::registry::Registry;

/// The name of the server's own funding account (Syft's `add-balance` draws on it).
pub const FUNDING_ACCOUNT_NAME: &str = "tally:funding";
/// Its account id.
pub const FUNDING_ACCOUNT: AccountId = AccountId(1);

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

/// The shared state behind [`AppState`].
pub struct StateInner {
    /// The engine.
    pub tally: Tally,
    /// Names, keys, users, idempotency keys.
    pub registry: Registry,
    /// The configuration.
    pub config: ServerConfig,
    /// BLAKE3 of the admin key.
    pub admin_hash: [u8; 32],
    /// The secret delegation tokens are signed with.
    pub jwt_secret: Vec<u8>,
    /// Recently verified Syft passwords.
    pub passwords: auth::PasswordCache,
    /// Requests in flight (past it: 503).
    pub in_flight: Arc<Semaphore>,
    /// Open event streams (past it: 503).
    pub event_streams: Arc<Semaphore>,
    /// Password hashes computed or verified at once (past it: 503).
    pub argon2: Semaphore,
    /// Set when the server starts shutting down: event streams end so the drain can finish.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The Prometheus exporter's handle.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Dashboard sessions.
    pub sessions: session::Sessions,
    /// The last dashboard overview computed.
    pub overview: dashboard::OverviewCache,
    /// Retained events for `/v1/events`.
    pub events: events::EventLog,
    /// The client that re-sends a request refused `not_owner` to the shard's owner.
    pub forwarder: forward::Forwarder,
    /// The task feeding `events` while anyone watches (stopped at shutdown).
    pub pump: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

impl AppState {
    /// Builds the state over an open engine, opening the registry in `data_dir/server`, and
    /// makes sure the server's funding account exists.
    pub async fn open(
        tally: Tally,
        data_dir: &Path,
        config: ServerConfig,
        admin_key: &str,
    ) -> Result<AppState, String> {
        let now_ms = tally.now().0;
        let registry = match &config.postgres {
            Some(url) => {
                let shared = registry::SharedConfig {
                    url: url.clone(),
                    schema: config.pg_schema.clone(),
                };
                Registry::open_shared(&shared, data_dir, config.registry_limits(), now_ms).await?
            }
            None => Registry::open(data_dir, config.sync, config.registry_limits(), now_ms).await?,
        };
        // Nodes sharing a registry share the tokens' signing secret (a token made on one is
        // good on every other); a lone server keeps it in its data directory.
        let jwt_path = data_dir.join("jwt.secret");
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh);
        let jwt_secret = match registry
            .shared_secret("jwt", &fresh)
            .await
            .map_err(|e| e.message)?
        {
            Some(secret) => secret,
            None => config::load_or_create_secret(&jwt_path)?,
        };
        let started_after = tally.trail_head().0;
        let state = AppState(Arc::new(StateInner {
            events: events::EventLog::new(started_after),
            sessions: session::Sessions::default(),
            overview: dashboard::OverviewCache::default(),
            pump: parking_lot::Mutex::new(None),
            forwarder: forward::Forwarder::default(),
            in_flight: Arc::new(Semaphore::new(config.requests_in_flight_max)),
            event_streams: Arc::new(Semaphore::new(config.event_streams_max)),
            argon2: Semaphore::new(auth::ARGON2_AT_ONCE),
            closing: tokio::sync::watch::channel(false).0,
            tally,
            registry,
            admin_hash: auth::hash_secret(admin_key),
            jwt_secret,
            passwords: auth::PasswordCache::default(),
            metrics: metrics::install(),
            config,
        }));
        if state.registry.is_shared() {
            spawn_registry_ticker(&state);
        }
        let imported = metering::import_registry_prices(&state).await?;
        if imported > 0 {
            tracing::info!(
                imported,
                "prices kept by the registry moved into the ledger"
            );
        }
        state
            .registry
            .map_fixed(FUNDING_ACCOUNT_NAME, FUNDING_ACCOUNT)
            .await
            .map_err(|e| e.message)?;
        state
            .tally
            .open_account(FUNDING_ACCOUNT, AccountSpec::funding())
            .await
            .map_err(|e| format!("opening the funding account: {e}"))?;
        Ok(state)
    }

    /// The engine's clock, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.tally.now().0
    }

    /// The account a name maps to, or 404 `unknown_account` (a shared registry is brought up
    /// to date first: the name may have been mapped on another node a moment ago).
    pub async fn account(&self, name: &str) -> Result<AccountId, ApiError> {
        if let Some(id) = self.registry.account(name) {
            return Ok(id);
        }
        self.registry.refresh().await?;
        self.registry.account(name).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_account",
                format!("account {name:?} does not exist"),
            )
            .with("account", name)
        })
    }

    /// The name of an account id (its number if it has none; on a shared registry, a name
    /// mapped on another node within the last poll may show as its number).
    pub fn name(&self, id: AccountId) -> String {
        self.registry.name(id).unwrap_or_else(|| id.0.to_string())
    }
}

/// Keeps a shared registry up to date with the other nodes (every
/// [`registry::SHARED_POLL_EVERY`]) until the server closes or the state is dropped.
fn spawn_registry_ticker(state: &AppState) {
    let weak = Arc::downgrade(&state.0);
    // The sweep of expired idempotency keys on a task of its own: a long one never holds up
    // following the log (revocations).
    let sweeper = weak.clone();
    tokio::spawn(async move {
        let every = std::time::Duration::from_millis(registry::SHARED_SWEEP_EVERY_MS);
        loop {
            tokio::time::sleep(every).await;
            let Some(state) = sweeper.upgrade() else {
                return;
            };
            if *state.closing.borrow() {
                return;
            }
            let now_ms = state.tally.now().0;
            if let Err(e) = state.registry.sweep(now_ms).await {
                tracing::warn!(error = %e.message, "sweeping the shared idempotency keys failed");
            }
        }
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(registry::SHARED_POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(state) = weak.upgrade() else {
                return;
            };
            if *state.closing.borrow() {
                return;
            }
            if let Err(e) = state.registry.refresh().await {
                tracing::warn!(error = %e.message, "bringing the shared registry up to date failed");
            }
        }
    });
}
