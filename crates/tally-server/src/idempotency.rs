//! `Idempotency-Key` on writes: a retry gets the first response (status and body); the same
//! key with other content is 409 `idempotency_conflict` naming the field. Keys are compared
//! exactly (the registry keeps the key itself, never a hash of it) and are scoped to the
//! credential that sent them.

use std::future::Future;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tally::OpId;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::registry::{Begin, IDEMPOTENCY_KEY_BYTES_MAX};
use crate::AppState;

/// The header's name.
pub const HEADER: &str = "idempotency-key";

/// The key a request carries, if any; 400 for an empty, overlong or non-visible-ASCII key.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key {why}"),
        )
        .with("field", "Idempotency-Key")
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("is empty"));
    }
    if bytes.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(invalid(&format!(
            "is {} bytes; the limit is {IDEMPOTENCY_KEY_BYTES_MAX}",
            bytes.len()
        ))
        .with("max", IDEMPOTENCY_KEY_BYTES_MAX));
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid(
            "must be visible ASCII (no spaces or control characters)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A write's answer: its status and JSON body.
pub type Answer = Result<(StatusCode, Value), ApiError>;

fn cacheable(status: StatusCode) -> bool {
    // Server-side failures and refusals that changed nothing and may pass later are not
    // remembered: their retry runs again (with the same operation id).
    !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
}

fn to_response(status: StatusCode, body: Vec<u8>, replayed: bool) -> Response {
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Runs a write under the request's idempotency key (or a fresh operation id without one).
/// `width` operation ids starting at the one passed to `f` are reserved for it.
pub async fn run<F, Fut>(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    route: &str,
    digest: &crate::registry::BodyDigest,
    width: u64,
    f: F,
) -> Response
where
    F: FnOnce(OpId) -> Fut,
    Fut: Future<Output = Answer>,
{
    let key = match key(headers) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let Some(key) = key else {
        return match f(state.registry.fresh_ops(width)).await {
            Ok((status, body)) => (status, axum::Json(body)).into_response(),
            Err(e) => e.into_response(),
        };
    };
    let scope = principal.scope();
    let begin = state
        .registry
        .begin(&scope, &key, route, digest, width, state.now_ms())
        .await;
    let op = match begin {
        Ok(Begin::Cached { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return to_response(status, body, true);
        }
        Ok(Begin::Run { op }) => op,
        Err(e) => return e.into_response(),
    };
    let (status, body, retry_after, refusal) = match f(op).await {
        Ok((status, body)) => (status, body, None, None),
        Err(e) => (e.status, e.body(), e.retry_after_s, Some(e)),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    // A batch answers 200 whatever its operations answered: one that failed in a way that may
    // pass later makes the whole answer not worth keeping (the retry re-runs its op ids).
    let retryable_inside = body["results"].as_array().is_some_and(|results| {
        results.iter().any(|r| {
            r["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .is_some_and(|s| !cacheable(s))
        })
    });
    if cacheable(status) && !retryable_inside {
        state
            .registry
            .finish(&scope, &key, op, status.as_u16(), bytes.clone());
    }
    let mut response = to_response(status, bytes, false);
    crate::error::set_retry_after(&mut response, retry_after);
    if let Some(e) = &refusal {
        crate::error::mark_not_owner(&mut response, e);
    }
    response
}
