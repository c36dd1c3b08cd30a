//! Prepaid credit grants over HTTP: issue a grant to a user, set or remove its recurring
//! allowance, and read its grants with how its available balance splits. Admin only.
//!
//! A grant is drawn on before the user's general balance, lowest `priority` first, then the
//! earliest expiry (a grant without one last), then the oldest; holds draw on it in the same
//! decision; what it has left when it expires goes back to its funding account (`grant.expired`).
//! A transfer out of the user moves only its general balance.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tally::{AccountId, Allowance, Amount, Grant, Grants, Timestamp};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use crate::error::{wide, wide_u};
use crate::json::Body;
use crate::v1::{grant_str, ErrorBody};
use crate::AppState;

/// The longest a grant may last: ten years, in seconds.
pub const GRANT_EXPIRES_IN_S_MAX: u64 = 10 * 366 * 86_400;

/// `POST /v1/accounts/{id}/grants`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// µ¢ granted.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub amount: u64,
    /// Lower numbers are consumed first (default 0).
    #[serde(default)]
    #[schema(value_type = u64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub priority: u32,
    /// Seconds until it expires (absent or `null`: never). At most ten years.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 316_224_000)]
    pub expires_in_s: Option<u64>,
    /// What it is for (e.g. `promo`, `purchased`; at most 64 bytes).
    #[serde(default)]
    #[schema(max_length = 64)]
    pub label: String,
    /// The funding account it comes from (default `tally:funding`).
    #[serde(default)]
    pub from: Option<String>,
}

/// `PUT /v1/accounts/{id}/allowance`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowanceBody {
    /// µ¢ granted each period.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub amount: u64,
    /// `day` or `month` (UTC), or `every` (`length_ms` from `anchor_ms`, both then required).
    #[schema(pattern = "^(day|month|every)$")]
    pub period: String,
    /// For `every`: when one period starts (ms since the epoch).
    #[serde(default)]
    pub anchor_ms: Option<u64>,
    /// For `every`: the period's length in ms (at least one minute).
    #[serde(default)]
    #[schema(minimum = 60_000)]
    pub length_ms: Option<u64>,
    /// The grants' priority (default 0).
    #[serde(default)]
    #[schema(value_type = u64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub priority: u32,
    /// The grants' label (default `allowance`).
    #[serde(default)]
    #[schema(max_length = 64)]
    pub label: Option<String>,
    /// The funding account the grants come from (default `tally:funding`).
    #[serde(default)]
    pub from: Option<String>,
}

/// One grant as the API shows it.
fn grant_json(state: &AppState, g: &Grant, now: Timestamp) -> Value {
    let status = if g.expired_at(now) {
        "expired"
    } else if g.free().is_zero() && g.held.is_zero() {
        "used"
    } else {
        "active"
    };
    json!({
        "grant": grant_str(g.id),
        "from": state.name(g.from),
        "amount": g.amount.get(),
        "used": g.used.get(),
        "held": g.held.get(),
        "expired": g.expired.get(),
        "free": g.free().get(),
        "priority": g.priority,
        "label": g.label,
        "issued_at_ms": g.issued_at.0,
        "expires_at_ms": g.expires_at.map(|e| e.0),
        "allowance_period_ms": g.allowance_period,
        "status": status,
    })
}

fn period_json(period: &tally::Period) -> Value {
    match period {
        tally::Period::Day => json!({"period": "day"}),
        tally::Period::Month => json!({"period": "month"}),
        tally::Period::Every {
            anchor_ms,
            length_ms,
        } => json!({"period": "every", "anchor_ms": anchor_ms, "length_ms": length_ms}),
    }
}

/// An account's grants as the API shows them: each grant in the order they are drawn on,
/// its allowance, and how its available balance splits.
fn grants_json(state: &AppState, name: &str, g: &Grants, now: Timestamp) -> Value {
    let mut grants: Vec<&Grant> = g.grants.iter().collect();
    grants.sort_by_key(|g| {
        (
            g.expired_at(now),
            g.priority,
            g.expires_at.unwrap_or(Timestamp(u64::MAX)),
            g.id.seq,
        )
    });
    let allowance = g.allowance.as_ref().map(|a| {
        let mut v = period_json(&a.allowance.period);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("amount".into(), a.allowance.amount.get().into());
            obj.insert("from".into(), state.name(a.allowance.from).into());
            obj.insert("priority".into(), a.allowance.priority.into());
            obj.insert("label".into(), a.allowance.label.clone().into());
            obj.insert("set_at_ms".into(), a.set_at.0.into());
            obj.insert("issued_for_ms".into(), a.issued_for.into());
            obj.insert("next_at_ms".into(), a.next_at().0.into());
        }
        v
    });
    json!({
        "account": name,
        "spendable": wide(g.spendable),
        "general": wide(g.general),
        "granted": wide_u(g.granted),
        "grants": grants.iter().map(|x| grant_json(state, x, now)).collect::<Vec<_>>(),
        "allowance": allowance,
    })
}

async fn user_of(state: &AppState, name: &str) -> Result<AccountId, ApiError> {
    let id = state.account(name).await?;
    match state.tally.spec(id).map(|s| s.kind) {
        Some(tally::AccountKind::User) => Ok(id),
        Some(kind) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_account_kind",
            format!("{name:?} is a {} account: grants go to users", kind.name()),
        )
        .with("expected", "user")),
        None => Err(ApiError::not_found(format!("no account {name:?}"))),
    }
}

fn amount_of(field: &str, value: u64) -> Result<Amount, ApiError> {
    if value == 0 {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be greater than zero"),
        ));
    }
    Amount::new(value).map_err(|_| {
        ApiError::invalid_field(field, format!("{field} is at most {}", Amount::MAX.get()))
    })
}

async fn funding(state: &AppState, from: Option<String>) -> Result<AccountId, ApiError> {
    let name = from.unwrap_or_else(|| crate::FUNDING_ACCOUNT_NAME.to_owned());
    state.account(&name).await
}

/// Runs `f` under the request's `Idempotency-Key` (admin only; a retry is answered as first).
async fn admin_write<F, Fut>(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    route: String,
    digest: &crate::registry::BodyDigest,
    f: F,
) -> Response
where
    F: FnOnce(tally::OpId) -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    crate::idempotency::run(&state, &principal, &headers, &route, digest, 1, f).await
}

/// Issues a prepaid credit grant to a user from a funding account (`grant.issued`).
#[utoipa::path(post, path = "/v1/accounts/{id}/grants", params(("id" = String, Path)),
    request_body = GrantBody,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn issue_grant(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<GrantBody>,
) -> Response {
    let route = format!("POST /v1/accounts/{name}/grants");
    let s = state.clone();
    let digest = body.digest.clone();
    admin_write(state, principal, headers, route, &digest, |op| async move {
        let req = body.value;
        let id = user_of(&s, &name).await?;
        let from = funding(&s, req.from).await?;
        let amount = amount_of("amount", req.amount)?;
        let ttl = match req.expires_in_s {
            None => None,
            Some(0) => {
                return Err(ApiError::invalid_field(
                    "expires_in_s",
                    "expires_in_s must be greater than zero (leave it out for a grant that never expires)",
                ))
            }
            Some(s) if s > GRANT_EXPIRES_IN_S_MAX => {
                return Err(ApiError::invalid_field(
                    "expires_in_s",
                    format!("expires_in_s is at most {GRANT_EXPIRES_IN_S_MAX} (ten years)"),
                ))
            }
            Some(s) => Some(std::time::Duration::from_secs(s)),
        };
        let request = tally::GrantRequest {
            from,
            amount: amount.get(),
            priority: req.priority,
            ttl,
            label: req.label,
        };
        let (grant, _) = s.tally.grant(op, id, request).await?;
        let g = s.tally.grants(id).await?;
        let now = s.tally.now();
        let shown = g
            .grants
            .iter()
            .find(|x| x.id == grant)
            .map(|x| grant_json(&s, x, now))
            .unwrap_or_else(|| json!({"grant": grant_str(grant)}));
        Ok((StatusCode::CREATED, shown))
    })
    .await
}

/// A user's grants (each with what it granted, used, holds, gave back at expiry and has free;
/// in the order they are drawn on, expired ones last), its allowance, and how its available
/// balance splits: `spendable` (live grants and the general balance), `general` (what a
/// transfer out may take) and `granted` (what the live grants have free).
#[utoipa::path(get, path = "/v1/accounts/{id}/grants", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_grants(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = user_of(&state, &name).await?;
    let g = state.tally.grants(id).await?;
    Ok(Json(grants_json(&state, &name, &g, state.tally.now())))
}

/// Sets (replacing) a user's recurring allowance: a grant of `amount` issued at the start of
/// each period (the current one at once), expiring at its end. A new amount for the same
/// period starts with the next period; another period issues at once.
#[utoipa::path(put, path = "/v1/accounts/{id}/allowance", params(("id" = String, Path)),
    request_body = AllowanceBody,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_allowance(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<AllowanceBody>,
) -> Response {
    let route = format!("PUT /v1/accounts/{name}/allowance");
    let s = state.clone();
    let digest = body.digest.clone();
    admin_write(state, principal, headers, route, &digest, |op| async move {
        let req = body.value;
        let id = user_of(&s, &name).await?;
        let allowance = Allowance {
            from: funding(&s, req.from).await?,
            amount: amount_of("amount", req.amount)?,
            period: crate::metering::period_of(
                "period",
                &req.period,
                req.anchor_ms,
                req.length_ms,
            )?,
            priority: req.priority,
            label: req.label.unwrap_or_else(|| "allowance".to_owned()),
        };
        s.tally.set_allowance(op, id, Some(allowance)).await?;
        let g = s.tally.grants(id).await?;
        Ok((StatusCode::OK, grants_json(&s, &name, &g, s.tally.now())))
    })
    .await
}

/// Removes a user's allowance (grants already issued stand until they expire); 404
/// `no_allowance` when it has none.
#[utoipa::path(delete, path = "/v1/accounts/{id}/allowance", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn remove_allowance(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let route = format!("DELETE /v1/accounts/{name}/allowance");
    let s = state.clone();
    let digest = crate::registry::BodyDigest::default();
    admin_write(state, principal, headers, route, &digest, |op| async move {
        let id = user_of(&s, &name).await?;
        if s.tally.grants(id).await?.allowance.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_allowance",
                format!("{name:?} has no allowance to remove"),
            ));
        }
        s.tally.set_allowance(op, id, None).await?;
        let g = s.tally.grants(id).await?;
        Ok((StatusCode::OK, grants_json(&s, &name, &g, s.tally.now())))
    })
    .await
}

/// The grant routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_grant, list_grants))
        .routes(routes!(set_allowance, remove_allowance))
}
