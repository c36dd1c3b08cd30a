//! An account's policy over HTTP: its spend cap per UTC day, its rate limit and its
//! low-balance threshold. Each change is a journaled record of the ledger (versioned, in the
//! audit trail and the account's history, surviving restarts); on a user it applies to that
//! user, on an app's revenue account the rate limit applies to all its users together and the
//! spend cap to each of them. Admin only.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use tally::{AccountId, AccountPolicy, Amount, PolicySetting, RateLimit, TokenRate};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::json::Body;
use crate::v1::{ErrorBody, Kind};
use crate::AppState;

/// A token bucket: `per_second` units a second, at most `burst` at once (at least 1).
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRateBody {
    /// Units added per second, at least 1.
    pub per_second: u64,
    /// Units the bucket holds at most, at least 1.
    pub burst: u64,
}

/// `PUT /v1/accounts/{id}/rate-limit`: the whole rate limit (replacing the one before); with
/// neither rate, the limit is removed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Requests (reserves and charges) per second.
    #[serde(default)]
    pub requests: Option<TokenRateBody>,
    /// Cost (µ¢ held or charged) per second.
    #[serde(default)]
    pub cost: Option<TokenRateBody>,
}

/// A field that must be present; `null` is a value (it removes the setting).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// `PUT /v1/accounts/{id}/spend-cap`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendCapBody {
    /// The most the account (on an app: each of its users) may spend per UTC day, in µ¢:
    /// posted during the day plus held now. `null` removes the cap; 0 stops all spending.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, required = true)]
    pub per_day: Option<Option<u64>>,
}

/// `PUT /v1/accounts/{id}/low-balance`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LowBalanceBody {
    /// The threshold in µ¢: a `balance.low` event when a change takes the available balance
    /// below it, and the overview counts the account. `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, required = true)]
    pub threshold: Option<Option<u64>>,
}

fn rate_json(rate: Option<TokenRate>) -> Value {
    rate.map_or(
        Value::Null,
        |r| json!({"per_second": r.per_second, "burst": r.burst}),
    )
}

/// An account's policy as the API shows it.
pub fn policy_json(name: &str, kind: Kind, p: &AccountPolicy) -> Value {
    json!({
        "account": name,
        "kind": kind,
        "version": p.version,
        "set_at_ms": (p.version > 0).then_some(p.set_at.0),
        "spend_cap_per_day": p.spend_cap_per_day.map(Amount::get),
        "rate_limit": {
            "requests": rate_json(p.rate_limit.requests),
            "cost": rate_json(p.rate_limit.cost),
        },
        "low_balance_threshold": p.low_balance.map(Amount::get),
    })
}

fn amount(field: &str, value: Option<u64>) -> Result<Option<Amount>, ApiError> {
    value
        .map(|v| {
            Amount::new(v).map_err(|_| {
                ApiError::invalid_field(field, format!("{field} is at most {}", Amount::MAX.get()))
            })
        })
        .transpose()
}

fn required(field: &str, value: Option<Option<u64>>) -> Result<Option<u64>, ApiError> {
    value.ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "missing_field",
            format!("missing field {field:?} (null removes the setting)"),
        )
        .with("field", field)
    })
}

async fn account_of(state: &AppState, name: &str) -> Result<(AccountId, Kind), ApiError> {
    let id = state.account(name).await?;
    let spec = state
        .tally
        .spec(id)
        .ok_or_else(|| ApiError::not_found(format!("no account {name:?}")))?;
    Ok((id, Kind::from(spec.kind)))
}

/// Records one setting (admin only, refused before anything runs when `setting` is an error)
/// under the request's `Idempotency-Key` (a retry is answered as first,
/// `Idempotent-Replayed: true`), and answers with the policy it makes.
async fn set(
    state: AppState,
    principal: crate::auth::Principal,
    headers: HeaderMap,
    body_digest: &crate::registry::BodyDigest,
    name: String,
    what: &str,
    setting: Result<PolicySetting, ApiError>,
) -> Response {
    let setting = match principal.require_admin().and(setting) {
        Ok(setting) => setting,
        Err(e) => return e.into_response(),
    };
    let route = format!("PUT /v1/accounts/{name}/{what}");
    let s = state.clone();
    crate::idempotency::run(
        &state,
        &principal,
        &headers,
        &route,
        body_digest,
        1,
        |op| async move {
            let (id, kind) = account_of(&s, &name).await?;
            s.tally.set_policy(op, id, setting).await?;
            let policy = s.tally.policy(id).await?;
            Ok((StatusCode::OK, policy_json(&name, kind, &policy)))
        },
    )
    .await
}

/// An account's policy: spend cap, rate limit and low-balance threshold, with the version of
/// the newest change (0: never set) and when it was made.
#[utoipa::path(get, path = "/v1/accounts/{id}/policy", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let (id, kind) = account_of(&state, &name).await?;
    let policy = state.tally.policy(id).await?;
    Ok(Json(policy_json(&name, kind, &policy)))
}

/// Sets (replacing) or removes an account's spend cap per UTC day; a reserve or charge that
/// would pass it is 402 `spend_cap_exceeded`.
#[utoipa::path(put, path = "/v1/accounts/{id}/spend-cap", params(("id" = String, Path)),
    request_body = SpendCapBody,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_spend_cap(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<SpendCapBody>,
) -> Response {
    let setting = required("per_day", body.value.per_day)
        .and_then(|cap| amount("per_day", cap))
        .map(PolicySetting::SpendCapPerDay);
    set(
        state,
        principal,
        headers,
        &body.digest,
        name,
        "spend-cap",
        setting,
    )
    .await
}

/// Sets (replacing) or removes an account's rate limit: token buckets on requests and on cost,
/// full when set, empty after a restart (a restart never hands out a new burst). A request
/// past it is 429 `rate_limited` with `Retry-After`.
#[utoipa::path(put, path = "/v1/accounts/{id}/rate-limit", params(("id" = String, Path)),
    request_body = RateLimitBody,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_rate_limit(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<RateLimitBody>,
) -> Response {
    let rate = |r: Option<TokenRateBody>| {
        r.map(|r| TokenRate {
            per_second: r.per_second,
            burst: r.burst,
        })
    };
    let setting = Ok(PolicySetting::RateLimit(RateLimit {
        requests: rate(body.value.requests),
        cost: rate(body.value.cost),
    }));
    set(
        state,
        principal,
        headers,
        &body.digest,
        name,
        "rate-limit",
        setting,
    )
    .await
}

/// Sets (replacing) or removes an account's low-balance threshold.
#[utoipa::path(put, path = "/v1/accounts/{id}/low-balance", params(("id" = String, Path)),
    request_body = LowBalanceBody,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_low_balance(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<LowBalanceBody>,
) -> Response {
    let setting = required("threshold", body.value.threshold)
        .and_then(|t| amount("threshold", t))
        .map(PolicySetting::LowBalance);
    set(
        state,
        principal,
        headers,
        &body.digest,
        name,
        "low-balance",
        setting,
    )
    .await
}

/// The policy routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policy))
        .routes(routes!(set_spend_cap))
        .routes(routes!(set_rate_limit))
        .routes(routes!(set_low_balance))
}
