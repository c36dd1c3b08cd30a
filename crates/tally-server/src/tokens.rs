//! Spend tokens over HTTP: a user's authorization (issued by the admin for the user) for one
//! app, optionally one endpoint, up to a cap in µ¢, until an expiry. The app presents it with
//! a hold or charge (`"token": "st_..."`); the ledger checks the cap in the same decision as
//! the hold, so concurrent uses can never together pass it.
//!
//! A token's text is `st_<account>_<seq>_<mac>`: the ledger's token id and a keyed BLAKE3 MAC
//! of it (128 bits, under a key derived from the data directory's secret), so a token cannot
//! be forged or guessed from its id; it is checked in constant time before the ledger sees it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tally::{AccountId, Command, Outcome, Request, TokenId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::idempotency;
use crate::json::Body;
use crate::v1::ErrorBody;
use crate::AppState;

fn key(state: &AppState) -> [u8; 32] {
    blake3::derive_key("tally-server spend tokens v1", &state.jwt_secret)
}

fn mac(state: &AppState, id: TokenId) -> String {
    let tag = blake3::keyed_hash(
        &key(state),
        format!("{}:{}", id.account.0, id.seq).as_bytes(),
    );
    tag.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text of a token.
pub fn token_str(state: &AppState, id: TokenId) -> String {
    format!("st_{}_{}_{}", id.account.0, id.seq, mac(state, id))
}

fn invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "the spend token is not valid",
    )
}

/// Checks a token's text (its MAC, in constant time) and returns its id.
pub fn parse(state: &AppState, text: &str) -> Result<TokenId, ApiError> {
    let rest = text.strip_prefix("st_").ok_or_else(invalid)?;
    let mut parts = rest.split('_');
    let (Some(a), Some(s), Some(m), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(a) || !digits(s) {
        return Err(invalid());
    }
    let id = TokenId {
        account: AccountId(a.parse().map_err(|_| invalid())?),
        seq: s.parse().map_err(|_| invalid())?,
    };
    if !bool::from(mac(state, id).as_bytes().ct_eq(m.as_bytes())) {
        return Err(invalid());
    }
    Ok(id)
}

/// The token a hold or charge presents, as the ledger names it (its sequence number in the
/// user's account); 403 `token_scope` for another user's token.
pub fn presented(
    state: &AppState,
    text: Option<&str>,
    account: AccountId,
) -> Result<Option<u64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let id = parse(state, text)?;
    if id.account != account {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_scope",
            "the spend token is another user's",
        )
        .with("field", "account"));
    }
    Ok(Some(id.seq))
}

/// `POST /v1/tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    /// The user whose funds it lets be spent.
    pub account: String,
    /// The app (revenue account) it lets spend.
    pub app: String,
    /// The most it lets be held and posted in all, µ¢.
    pub cap: u64,
    /// Lifetime in seconds (1 to 366 days).
    pub expires_in_s: u64,
    /// The endpoint it is limited to (absent: any).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Issues a spend token for a user (admin).
#[utoipa::path(post, path = "/v1/tokens", request_body = IssueToken,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn issue(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<IssueToken>,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let (s, p) = (state.clone(), principal.clone());
    idempotency::run(
        &state,
        &principal,
        &headers,
        "POST /v1/tokens",
        &body.digest,
        1,
        |op| async move {
            let r = body.value;
            let account = s.account(&r.account).await?;
            let app = s.account(&r.app).await?;
            let cap =
                tally::Amount::new(r.cap).map_err(|e| ApiError::from(e).with("field", "cap"))?;
            let ttl_ms = r.expires_in_s.checked_mul(1000).ok_or_else(|| {
                ApiError::invalid_field("expires_in_s", "expires_in_s is too large")
            })?;
            let endpoint = r.endpoint.clone().unwrap_or_default();
            let request = Request {
                op,
                command: Command::IssueToken {
                    app,
                    cap,
                    ttl_ms,
                    endpoint: endpoint.clone(),
                },
                origin: tally::Origin::new("tally-server", p.scope(), ""),
            };
            match s.tally.execute(account, request).await? {
                Outcome::TokenIssued { token, expires_at } => Ok((
                    StatusCode::CREATED,
                    json!({"token": token_str(&s, token), "account": r.account, "app": r.app,
                       "cap": r.cap, "endpoint": r.endpoint, "expires_at_ms": expires_at.0}),
                )),
                other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            }
        },
    )
    .await
}

/// Revokes a spend token at once (holds already made with it stand).
#[utoipa::path(delete, path = "/v1/tokens/{token}", params(("token" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn revoke(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(token): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = parse(&state, &token)?;
    match state
        .tally
        .revoke_token(state.registry.fresh_op(), id)
        .await
    {
        // Revoking twice, or a token already dropped after it died, is done all the same.
        Ok(())
        | Err(tally::Error::Ledger(
            tally::LedgerError::TokenRevoked { .. } | tally::LedgerError::UnknownToken { .. },
        )) => Ok(Json(json!({"token": token, "revoked": true}))),
        Err(e) => Err(e.into()),
    }
}

/// A user's spend tokens, with what each has used (admin).
#[utoipa::path(get, path = "/v1/accounts/{id}/tokens", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let account = state.tally.account(id).await?;
    let now = state.tally.now();
    let tokens: Vec<Value> = account
        .tokens()
        .map(|t| {
            json!({
                "token": token_str(&state, t.id),
                "app": state.name(t.app),
                "endpoint": t.endpoint,
                "cap": t.cap.get(),
                "used": t.used.get(),
                "remaining": t.remaining().get(),
                "issued_at_ms": t.issued_at.0,
                "expires_at_ms": t.expires_at.0,
                "revoked": t.revoked,
                "live": t.live(now),
            })
        })
        .collect();
    Ok(Json(json!({"account": name, "tokens": tokens})))
}

/// The spend-token routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue))
        .routes(routes!(revoke))
        .routes(routes!(list))
}
