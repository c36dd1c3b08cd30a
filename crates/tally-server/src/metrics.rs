//! `/metrics` in Prometheus format: requests by route and status, latency histograms, and the
//! engine's gauges (resident accounts, known accounts, requests in flight, registry lag).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder once (several servers in one test process share
/// it) and returns its handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ])
                .ok()
                .and_then(|b| b.install_recorder().ok())
        })
        .clone()
}

/// Bounds requests in flight (503 `overloaded` past the limit, at once) and records each
/// request's route, status and latency.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // An event stream lasts as long as its client; it has a bound of its own.
    let streaming = req.uri().path() == "/v1/events";
    let permit = if streaming {
        None
    } else {
        state.in_flight.clone().try_acquire_owned().ok()
    };
    if !streaming && permit.is_none() {
        metrics::counter!("tally_http_refused_total", "reason" => "in_flight").increment(1);
        return ApiError::overloaded(format!(
            "{} requests are in flight, the limit",
            state.config.requests_in_flight_max
        ))
        .with("scope", "requests in flight")
        .with("limit", state.config.requests_in_flight_max)
        .into_response();
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()));
    let method = intern(req.method().as_str());
    let started = Instant::now();
    let response = next.run(req).await;
    drop(permit);
    let status = intern(response.status().as_str());
    metrics::counter!("tally_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!("tally_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Label values as `&'static str`, so a request allocates none: routes come from the route
/// table, methods and statuses from small sets, so the interned set stays small (and is
/// capped: past [`INTERNED_MAX`] a value is labelled `other`).
fn intern(value: &str) -> &'static str {
    static SET: OnceLock<parking_lot::RwLock<std::collections::HashSet<&'static str>>> =
        OnceLock::new();
    let set = SET.get_or_init(Default::default);
    if let Some(v) = set.read().get(value) {
        return v;
    }
    let mut set = set.write();
    if let Some(v) = set.get(value) {
        return v;
    }
    if set.len() >= INTERNED_MAX {
        return "other";
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// The most distinct label values interned.
const INTERNED_MAX: usize = 1_024;

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>, auth: crate::auth::Auth) -> Response {
    if let Err(e) = auth.0.require_admin() {
        return e.into_response();
    }
    metrics::gauge!("tally_resident_accounts").set(state.tally.resident_accounts() as f64);
    metrics::gauge!("tally_known_accounts").set(state.tally.known_accounts() as f64);
    metrics::gauge!("tally_http_in_flight").set(
        state
            .config
            .requests_in_flight_max
            .saturating_sub(state.in_flight.available_permits()) as f64,
    );
    metrics::gauge!("tally_registry_durable_lag").set(state.registry.durable_lag() as f64);
    if let Some(j) = state.tally.journal_stats() {
        // Records appended but not yet durable: the journal queue, and the durable lag.
        metrics::gauge!("tally_journal_queue_records")
            .set(j.appended_seq.saturating_sub(j.durable_seq) as f64);
        metrics::gauge!("tally_journal_durable_seq").set(j.durable_seq as f64);
        metrics::gauge!("tally_journal_groups_total").set(j.groups as f64);
        metrics::gauge!("tally_journal_records_total").set(j.records as f64);
        metrics::gauge!("tally_journal_sync_seconds_total").set(j.sync_ns_total as f64 / 1e9);
        metrics::gauge!("tally_journal_sync_seconds_last").set(j.sync_ns_last as f64 / 1e9);
        let mean_group = if j.groups == 0 {
            0.0
        } else {
            j.records as f64 / j.groups as f64
        };
        metrics::gauge!("tally_journal_group_records_mean").set(mean_group);
    }
    metrics::gauge!("tally_idempotency_keys").set(state.registry.idempotency_keys() as f64);
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
