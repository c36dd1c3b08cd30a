//! The one mapping from a typed error to an HTTP answer: a documented status and
//! `{"error": {"code", "message", ...details}}` with one stable code per typed error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use tally::{Error as EngineError, LedgerError};

/// An error answer. `code` is stable (clients match on it); `message` is for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// A human message naming the account, amounts and limit where there are any.
    pub message: String,
    /// Extra fields of the error object (`field`, `available`, `retry_after_ms`, ...).
    pub details: Map<String, Value>,
    /// `Retry-After` in seconds, for 429 and 503.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after_s: None,
        }
    }

    /// Adds a detail field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400 `invalid_field`, naming the field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with("field", field)
    }

    /// 401 `unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 503 `overloaded` with a Retry-After.
    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message);
        e.retry_after_s = Some(1);
        e
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message.clone()));
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
        }
        json!({ "error": error })
    }
}

/// Sets `Retry-After` (seconds) on an answer, when there is one to give.
pub fn set_retry_after(response: &mut Response, seconds: Option<u64>) {
    if let Some(v) = seconds.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        set_retry_after(&mut response, self.retry_after_s);
        mark_not_owner(&mut response, &self);
        response
    }
}

/// On the response to a request refused because another node serves the account's shard (and
/// nothing changed): the shard, for [`crate::forward`] to re-send the request to its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotOwnerShard(pub u16);

/// Marks `response` with [`NotOwnerShard`] when `err` is a `not_owner` refusal.
pub fn mark_not_owner(response: &mut Response, err: &ApiError) {
    if err.code != "not_owner" {
        return;
    }
    if let Some(shard) = err
        .details
        .get("shard")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
    {
        response.extensions_mut().insert(NotOwnerShard(shard));
    }
}

/// An unsigned 128-bit total as JSON: a number when it fits a `u64`, else a decimal string
/// (exact at every size: never wrapped, never clamped).
pub fn wide_u(value: u128) -> Value {
    match u64::try_from(value) {
        Ok(v) => Value::from(v),
        Err(_) => Value::from(value.to_string()),
    }
}

/// A signed 128-bit total as JSON: a number when it fits an `i64`/`u64`, else a decimal string.
pub fn wide(value: i128) -> Value {
    if let Ok(v) = i64::try_from(value) {
        Value::from(v)
    } else if let Ok(v) = u64::try_from(value) {
        Value::from(v)
    } else {
        Value::from(value.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        use LedgerError as L;
        let message = e.to_string();
        let s = |status: StatusCode, code: &'static str| ApiError::new(status, code, &message);
        match e {
            L::ZeroAmount { field } => {
                s(StatusCode::BAD_REQUEST, "zero_amount").with("field", field)
            }
            L::AmountTooLarge { amount, max } => s(StatusCode::BAD_REQUEST, "amount_too_large")
                .with("amount", amount)
                .with("max", max),
            L::InsufficientFunds {
                available,
                requested,
                ..
            } => s(StatusCode::PAYMENT_REQUIRED, "insufficient_funds")
                .with("available", wide(available))
                .with("requested", requested),
            L::Overflow { field, .. } => s(StatusCode::CONFLICT, "overflow").with("field", field),
            L::UnknownAccount { .. } => s(StatusCode::NOT_FOUND, "unknown_account"),
            L::AccountExists { field, .. } => {
                s(StatusCode::CONFLICT, "account_exists").with("field", field)
            }
            L::WrongAccountKind {
                actual, expected, ..
            } => s(StatusCode::UNPROCESSABLE_ENTITY, "wrong_account_kind")
                .with("actual", actual)
                .with("expected", expected),
            L::SameAccount { .. } => s(StatusCode::UNPROCESSABLE_ENTITY, "same_account"),
            L::UnknownHold { .. } => s(StatusCode::NOT_FOUND, "unknown_hold"),
            L::HoldAlreadyResolved { status, .. } => {
                s(StatusCode::CONFLICT, "hold_already_resolved").with("status", status.to_string())
            }
            L::HoldExpired { expired_at, .. } => {
                s(StatusCode::CONFLICT, "hold_expired").with("expired_at_ms", expired_at.0)
            }
            L::CommitExceedsHold {
                held, requested, ..
            } => s(StatusCode::UNPROCESSABLE_ENTITY, "commit_exceeds_hold")
                .with("held", held)
                .with("requested", requested),
            L::TooManyHolds { limit, .. } => {
                s(StatusCode::TOO_MANY_REQUESTS, "too_many_holds").with("limit", limit)
            }
            L::UnknownPosting { .. } => s(StatusCode::NOT_FOUND, "unknown_posting"),
            L::RefundExceedsPosting {
                refundable,
                requested,
                ..
            } => s(StatusCode::UNPROCESSABLE_ENTITY, "refund_exceeds_posting")
                .with("refundable", refundable)
                .with("requested", requested),
            L::IdempotencyConflict { field, .. } => {
                s(StatusCode::CONFLICT, "idempotency_conflict").with("field", field)
            }
            L::InvalidTimeout { min_ms, max_ms, .. } => {
                s(StatusCode::BAD_REQUEST, "invalid_timeout")
                    .with("field", "timeout_ms")
                    .with("min_ms", min_ms)
                    .with("max_ms", max_ms)
            }
            L::FieldTooLong { field, len, max } => s(StatusCode::BAD_REQUEST, "field_too_long")
                .with("field", field)
                .with("len", len)
                .with("max", max),
            L::FundingMismatch {
                current, expected, ..
            } => s(StatusCode::CONFLICT, "funding_mismatch")
                .with("current", wide_u(current))
                .with("expected", wide_u(expected)),
            L::UnknownToken { .. } => s(StatusCode::UNAUTHORIZED, "token_unknown"),
            L::TokenRevoked { .. } => s(StatusCode::UNAUTHORIZED, "token_revoked"),
            L::TokenExpired { expired_at, .. } => {
                s(StatusCode::UNAUTHORIZED, "token_expired").with("expired_at_ms", expired_at.0)
            }
            L::TokenScope { field, .. } => {
                s(StatusCode::FORBIDDEN, "token_scope").with("field", field)
            }
            L::TokenCapExceeded {
                cap,
                used,
                requested,
                ..
            } => s(StatusCode::PAYMENT_REQUIRED, "token_cap_exceeded")
                .with("cap", cap)
                .with("used", used)
                .with("requested", requested),
            L::TooManyTokens { limit, .. } => {
                s(StatusCode::CONFLICT, "too_many_tokens").with("limit", limit)
            }
            L::InvalidTokenTtl { max_ms, .. } => s(StatusCode::BAD_REQUEST, "invalid_token_ttl")
                .with("field", "expires_in_s")
                .with("max_ms", max_ms),
            L::SpendCapExceeded {
                scope,
                cap,
                spent,
                requested,
                ..
            } => s(StatusCode::PAYMENT_REQUIRED, "spend_cap_exceeded")
                .with("scope", scope)
                .with("cap", cap)
                .with("spent", wide_u(spent))
                .with("requested", requested),
            L::KeysNotLoaded { .. } => s(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            L::NotMetered { .. } => s(StatusCode::CONFLICT, "not_metered"),
            L::SettledPastCost { settled, cost, .. } => {
                s(StatusCode::CONFLICT, "settled_past_cost")
                    .with("settled", settled)
                    .with("cost", cost)
            }
            L::InvalidPrice { .. } => s(StatusCode::BAD_REQUEST, "invalid_price"),
            L::InvalidPolicy { .. } => s(StatusCode::BAD_REQUEST, "invalid_policy"),
            L::InvalidCorrection { reason, .. } => {
                s(StatusCode::UNPROCESSABLE_ENTITY, "invalid_correction").with("reason", reason)
            }
            L::AlreadyCorrected { .. } => s(StatusCode::CONFLICT, "already_corrected"),
            L::TooManyPrices { limit, .. } => {
                s(StatusCode::CONFLICT, "too_many_prices").with("limit", limit)
            }
            L::InvalidGrant { reason } => {
                s(StatusCode::BAD_REQUEST, "invalid_grant").with("reason", reason)
            }
            L::TooManyGrants { limit, .. } => {
                s(StatusCode::CONFLICT, "too_many_grants").with("limit", limit)
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Ledger(l) => l.into(),
            EngineError::Pricing(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "pricing_error", message)
            }
            EngineError::NoPrice { endpoint, .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "no_price", message).with("endpoint", endpoint)
            }
            EngineError::Overloaded { scope, limit } => ApiError::overloaded(message)
                .with("scope", scope)
                .with("limit", limit),
            EngineError::StorageFailed { .. } => {
                let mut e =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", message);
                e.retry_after_s = Some(5);
                e
            }
            EngineError::Locked { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "locked", message)
            }
            EngineError::Storage { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", message)
            }
            EngineError::Shutdown => {
                let mut e =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message);
                e.retry_after_s = Some(1);
                e
            }
            EngineError::Internal { .. } => ApiError::internal(message),
            EngineError::RateLimited {
                limit,
                retry_after_ms,
                ..
            } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                    .with("limit", limit)
                    .with("retry_after_ms", retry_after_ms);
                e.retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1));
                e
            }
            EngineError::BatchTooLarge { len, max } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", message)
                    .with("len", len)
                    .with("max", max)
            }
            EngineError::NotOwner { shard, .. } => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_owner", message)
                    .with("shard", shard);
                e.retry_after_s = Some(1);
                e
            }
            EngineError::Unavailable { .. } => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
                e.retry_after_s = Some(1);
                e
            }
        }
    }
}

/// Makes every error answer JSON with a stable code, whoever produced it (axum's own
/// rejections of a path, a method or a body are plain text), and gives the Syft routes'
/// errors the `detail` field their clients read.
pub async fn jsonify(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let syft = req.uri().path().starts_with("/syft/");
    let response = next.run(req).await;
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json && !syft {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Error bodies are small; one that is not is cut to its first MiB.
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut value: Value = if is_json {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if value.get("error").and_then(|e| e.get("code")).is_none() {
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        let code = match status.as_u16() {
            400 if text.starts_with("Invalid URL") => "invalid_path",
            400 => "invalid_request",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "body_too_large",
            415 => "unsupported_media_type",
            _ => "error",
        };
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        value = ApiError::new(status, code, message).body();
    }
    if syft && value.get("detail").is_none() {
        let detail = value["error"]["message"].clone();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("detail".into(), detail);
        }
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&value).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}
