//! Dashboard sessions: sign in once with an admin API key, then a cookie.
//!
//! `POST /v1/session` takes `{"key": "..."}` (JSON only, so a cross-site form cannot post it),
//! checks the key as a bearer would be checked, and answers with a `tally_session` cookie
//! (`HttpOnly; SameSite=Strict; Path=/`, `Secure` when `cookie_secure` is set) and the
//! session's CSRF token. The cookie is 32 random bytes; the server keeps only its BLAKE3 hash,
//! in memory (a restart signs everyone out), with the principal and the expiry.
//!
//! What a session may do: **read**. The [`crate::auth::Auth`] extractor accepts the cookie
//! for `GET` and `HEAD` only; a write with nothing but a cookie is 403 `session_read_only`,
//! so a forged cross-site request can change nothing even if a browser sent the cookie.
//! Signing out (`DELETE /v1/session`) takes the cookie and the CSRF token in `X-CSRF-Token`.
//! Each use checks the key behind the session again: revoking or expiring the key ends its
//! sessions at once.
//!
//! Limits: a session lasts `session_ttl_s` (default 8 h) and never past its key's expiry; at
//! most `sessions_max` live at once (default 10,000): past it, with the expired ones dropped,
//! a sign-in is 503 `overloaded`.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use parking_lot::Mutex;
use rand::RngExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{check_bearer, Principal};
use crate::error::ApiError;
use crate::json::Body;
use crate::v1::ErrorBody;
use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "tally_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who signed in.
    pub principal: Principal,
    /// When it ends (ms since the epoch).
    pub expires_ms: u64,
    /// The token a state-changing call of this session must echo in `X-CSRF-Token`.
    pub csrf: String,
}

/// The live sessions, by the BLAKE3 of their cookie.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Starts a session; returns its cookie value. 503 `overloaded` when `max` are live.
    pub fn start(
        &self,
        principal: Principal,
        expires_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<(String, Session), ApiError> {
        let mut live = self.live.lock();
        if live.len() >= max {
            live.retain(|_, s| s.expires_ms > now_ms);
        }
        if live.len() >= max {
            return Err(ApiError::overloaded(format!(
                "{max} dashboard sessions are open, the limit"
            ))
            .with("scope", "sessions")
            .with("limit", max));
        }
        let secret = random_token();
        let session = Session {
            principal,
            expires_ms,
            csrf: random_token(),
        };
        live.insert(crate::auth::hash_secret(&secret), session.clone());
        Ok((secret, session))
    }

    /// The live session of a cookie value, if any (an expired one is dropped).
    pub fn get(&self, secret: &str, now_ms: u64) -> Option<Session> {
        let hash = crate::auth::hash_secret(secret);
        let mut live = self.live.lock();
        match live.get(&hash) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                live.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn end(&self, secret: &str) {
        self.live.lock().remove(&crate::auth::hash_secret(secret));
    }

    /// Sessions held (expired ones included until they are next looked at).
    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    /// No session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session cookie's value in a request, if it has one.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// The principal of a request's session cookie: the session must be live and its key still
/// valid (else 401, and the session is ended).
pub fn principal(state: &AppState, secret: &str, now_ms: u64) -> Result<Session, ApiError> {
    let session = state
        .sessions
        .get(secret, now_ms)
        .ok_or_else(|| ApiError::unauthenticated("the session has ended; sign in again"))?;
    let key_id = match &session.principal {
        Principal::Admin { key_id } | Principal::Service { key_id, .. } => *key_id,
        Principal::User { .. } => 0,
    };
    if key_id != 0 {
        let valid = state
            .registry
            .key(key_id)
            .is_some_and(|k| !k.revoked && k.expires_ms.is_none_or(|at| at > now_ms));
        if !valid {
            state.sessions.end(secret);
            return Err(ApiError::unauthenticated(
                "the key this session signed in with was revoked or has expired",
            ));
        }
    }
    Ok(session)
}

fn set_cookie(state: &AppState, value: &str, max_age_s: u64) -> Result<HeaderValue, ApiError> {
    let secure = if state.config.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}"
    ))
    .map_err(|e| ApiError::internal(format!("building the cookie: {e}")))
}

/// A sign-in: the API key to sign in with.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An admin API key (or the admin key).
    pub key: String,
}

/// Refuses a request whose `Origin` names another site than its `Host`.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a session is started from the dashboard's own origin only",
        )),
    }
}

fn session_json(session: &Session) -> Value {
    let role = match session.principal {
        Principal::Admin { .. } => "admin",
        Principal::Service { .. } => "service",
        Principal::User { .. } => "user",
    };
    json!({"role": role, "expires_at_ms": session.expires_ms, "csrf_token": session.csrf})
}

/// Signs in with an admin API key: sets the session cookie and answers the CSRF token.
#[utoipa::path(post, path = "/v1/session", request_body = SignIn,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)))]
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body<SignIn>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a sign-in is `Content-Type: application/json`",
        ));
    }
    let now_ms = state.now_ms();
    let principal = check_bearer(&state, &body.value.key, now_ms).await?;
    let key_id = match principal {
        Principal::Admin { key_id } => key_id,
        _ => {
            return Err(ApiError::forbidden(
                "the dashboard shows every account: sign in with an admin key",
            ))
        }
    };
    let ttl_ms = state.config.session_ttl_s.saturating_mul(1000);
    let mut expires_ms = now_ms.saturating_add(ttl_ms);
    if key_id != 0 {
        if let Some(at) = state.registry.key(key_id).and_then(|k| k.expires_ms) {
            expires_ms = expires_ms.min(at);
        }
    }
    let (secret, session) =
        state
            .sessions
            .start(principal, expires_ms, now_ms, state.config.sessions_max)?;
    let max_age_s = (expires_ms - now_ms).div_ceil(1000);
    let mut response = (StatusCode::CREATED, Json(session_json(&session))).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, &secret, max_age_s)?);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The session of this browser: its role, expiry and CSRF token (401 when signed out).
#[utoipa::path(get, path = "/v1/session",
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)))]
async fn who(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let secret = cookie(&headers).ok_or_else(|| ApiError::unauthenticated("not signed in"))?;
    let session = principal(&state, &secret, state.now_ms())?;
    let mut response = Json(session_json(&session)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Signs out: needs the session cookie and its CSRF token in `X-CSRF-Token`.
#[utoipa::path(delete, path = "/v1/session",
    params(("X-CSRF-Token" = String, Header, description = "the session's CSRF token")),
    responses((status = 204), (status = "4XX", body = ErrorBody)))]
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let secret = cookie(&headers).ok_or_else(|| ApiError::unauthenticated("not signed in"))?;
    let session = principal(&state, &secret, state.now_ms())?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes())) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "signing out takes the session's CSRF token in X-CSRF-Token",
        ));
    }
    state.sessions.end(&secret);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, "", 0)?);
    Ok(response)
}

/// The session routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sign_in, who, sign_out))
}
