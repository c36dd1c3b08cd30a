//! Prices, metered calls and usage reports over HTTP.
//!
//! Prices are kept by the engine; the server also records each one in its registry so that
//! it is set again when the server restarts. A metered call holds the cost of its largest
//! usage at the endpoint's price and is finished with the actual usage, priced the same way
//! (rounded up once to a whole µ¢, as the engine does).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tally::{
    Command, Granularity, Meter, Outcome, Price, Rate, Request, Tier, Timestamp, Usage, UsageQuery,
    UsageTotals,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, Principal};
use crate::error::{wide, wide_u, ApiError};
use crate::idempotency;
use crate::json::{Body, QueryParams};
use crate::v1::{hold_str, parse_hold, posting_str, ErrorBody, UsageBody};
use crate::AppState;

/// A rate: `amount` µ¢ per `per` units, or a decimal `usd` or `cents` text per `per` units
/// (converted exactly, or refused).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateBody {
    /// µ¢ per `per` units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// Decimal US dollars per `per` units (e.g. "0.000002").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<String>,
    /// Decimal US cents per `per` units (e.g. "200" per 1,000,000 tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cents: Option<String>,
    /// Units the amount is for. Default 1.
    #[serde(default = "one")]
    pub per: u64,
}

fn one() -> u64 {
    1
}

/// One tier of a tiered price: units up to `up_to` (none: the rest) at `rate`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierBody {
    /// Upper bound of the tier (inclusive); absent for the last.
    #[serde(default)]
    pub up_to: Option<u64>,
    /// Its rate.
    pub rate: RateBody,
}

/// A price.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PriceBody {
    /// A fixed amount per request.
    PerRequest {
        /// µ¢ per request.
        amount: u64,
    },
    /// Input and output tokens at their own rates.
    PerToken {
        /// Input tokens' rate.
        input: RateBody,
        /// Output tokens' rate.
        output: RateBody,
    },
    /// Per character.
    PerCharacter {
        /// The rate.
        rate: RateBody,
    },
    /// Per page.
    PerPage {
        /// The rate.
        rate: RateBody,
    },
    /// Per second of duration.
    PerSecond {
        /// The rate.
        rate: RateBody,
    },
    /// One call's units split across tiers.
    Tiered {
        /// `requests`, `tokens`, `characters`, `pages` or `seconds`.
        meter: String,
        /// The tiers, in order.
        tiers: Vec<TierBody>,
    },
    /// Tiers over a billing period: the units the user has used at this endpoint in the current
    /// period decide the tier. No tier may be dearer per unit than the one before it.
    PeriodTiered {
        /// `requests`, `tokens`, `characters`, `pages` or `seconds`.
        meter: String,
        /// The tiers, in order of the period's count.
        tiers: Vec<TierBody>,
        /// `graduated` (each unit by the tier it falls in) or `volume` (all the period's units by
        /// the tier its total reaches; the difference is given back at the crossing).
        mode: String,
        /// `day` or `month` (UTC), or `every` (`length_ms` from `anchor_ms`).
        period: String,
        /// With `every`: when one period starts (ms since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor_ms: Option<u64>,
        /// With `every`: the period's length in ms (at least 60,000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length_ms: Option<u64>,
    },
}

fn tiers_of(tiers: &[TierBody]) -> Result<Vec<Tier>, ApiError> {
    if tiers.is_empty() || tiers.len() > 32 {
        return Err(ApiError::invalid_field(
            "price.tiers",
            "a tiered price has 1 to 32 tiers",
        ));
    }
    tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok(Tier {
                up_to: t.up_to,
                rate: rate(&format!("price.tiers[{i}].rate"), &t.rate)?,
            })
        })
        .collect()
}

fn tier_bodies(tiers: &[Tier]) -> Vec<TierBody> {
    tiers
        .iter()
        .map(|t| TierBody {
            up_to: t.up_to,
            rate: rate_body(&t.rate),
        })
        .collect()
}

pub(crate) fn period_of(
    field: &str,
    name: &str,
    anchor_ms: Option<u64>,
    length_ms: Option<u64>,
) -> Result<tally::Period, ApiError> {
    match (name, anchor_ms, length_ms) {
        ("day", None, None) => Ok(tally::Period::Day),
        ("month", None, None) => Ok(tally::Period::Month),
        ("every", Some(anchor_ms), Some(length_ms)) => Ok(tally::Period::Every {
            anchor_ms,
            length_ms,
        }),
        ("day" | "month", _, _) => Err(ApiError::invalid_field(
            field,
            "anchor_ms and length_ms go with period \"every\" only",
        )),
        ("every", _, _) => Err(ApiError::invalid_field(
            field,
            "period \"every\" needs anchor_ms and length_ms",
        )),
        (other, _, _) => Err(ApiError::invalid_field(
            field,
            format!("period is day, month or every, not {other:?}"),
        )),
    }
}

fn pricing(field: &str, e: tally::PricingError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_price",
        format!("{field}: {e}"),
    )
    .with("field", field)
}

fn rate(field: &str, r: &RateBody) -> Result<Rate, ApiError> {
    match (r.amount, &r.usd, &r.cents) {
        (Some(a), None, None) => Rate::new(a, r.per),
        (None, Some(u), None) => Rate::usd(u, r.per),
        (None, None, Some(c)) => Rate::cents(c, r.per),
        _ => {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} takes exactly one of amount, usd, cents"),
            ))
        }
    }
    .map_err(|e| pricing(field, e))
}

fn rate_body(r: &Rate) -> RateBody {
    RateBody {
        amount: Some(r.amount),
        usd: None,
        cents: None,
        per: r.per,
    }
}

fn meter(name: &str) -> Result<Meter, ApiError> {
    Ok(match name {
        "requests" => Meter::Requests,
        "tokens" => Meter::Tokens,
        "characters" => Meter::Characters,
        "pages" => Meter::Pages,
        "seconds" => Meter::Seconds,
        other => {
            return Err(ApiError::invalid_field(
                "price.meter",
                format!("meter is requests, tokens, characters, pages or seconds, not {other:?}"),
            ))
        }
    })
}

fn meter_name(m: Meter) -> &'static str {
    match m {
        Meter::Requests => "requests",
        Meter::Tokens => "tokens",
        Meter::Characters => "characters",
        Meter::Pages => "pages",
        Meter::Seconds => "seconds",
    }
}

/// The engine's price for a price body (exact, or refused).
pub fn to_price(p: &PriceBody) -> Result<Price, ApiError> {
    Ok(match p {
        PriceBody::PerRequest { amount } => {
            if *amount == 0 {
                // The ledger holds and charges only positive amounts.
                return Err(ApiError::from(tally::LedgerError::ZeroAmount {
                    field: "price.amount",
                }));
            }
            Price::PerRequest(
                tally::Amount::new(*amount)
                    .map_err(|e| ApiError::from(e).with("field", "price.amount"))?,
            )
        }
        PriceBody::PerToken { input, output } => Price::PerToken {
            input: rate("price.input", input)?,
            output: rate("price.output", output)?,
        },
        PriceBody::PerCharacter { rate: r } => Price::PerCharacter(rate("price.rate", r)?),
        PriceBody::PerPage { rate: r } => Price::PerPage(rate("price.rate", r)?),
        PriceBody::PerSecond { rate: r } => Price::PerSecond(rate("price.rate", r)?),
        PriceBody::Tiered { meter: m, tiers } => Price::Tiered {
            meter: meter(m)?,
            tiers: tiers_of(tiers)?,
        },
        PriceBody::PeriodTiered {
            meter: m,
            tiers,
            mode,
            period,
            anchor_ms,
            length_ms,
        } => Price::PeriodTiered {
            meter: meter(m)?,
            tiers: tiers_of(tiers)?,
            mode: match mode.as_str() {
                "graduated" => tally::TierMode::Graduated,
                "volume" => tally::TierMode::Volume,
                other => {
                    return Err(ApiError::invalid_field(
                        "price.mode",
                        format!("mode is graduated or volume, not {other:?}"),
                    ))
                }
            },
            period: period_of("price.period", period, *anchor_ms, *length_ms)?,
        },
    })
}

/// A price as the API shows it (rates in µ¢ per units).
pub fn price_body(p: &Price) -> PriceBody {
    match p {
        Price::PerRequest(a) => PriceBody::PerRequest { amount: a.get() },
        Price::PerToken { input, output } => PriceBody::PerToken {
            input: rate_body(input),
            output: rate_body(output),
        },
        Price::PerCharacter(r) => PriceBody::PerCharacter { rate: rate_body(r) },
        Price::PerPage(r) => PriceBody::PerPage { rate: rate_body(r) },
        Price::PerSecond(r) => PriceBody::PerSecond { rate: rate_body(r) },
        Price::Tiered { meter: m, tiers } => PriceBody::Tiered {
            meter: meter_name(*m).to_owned(),
            tiers: tier_bodies(tiers),
        },
        Price::PeriodTiered {
            meter: m,
            tiers,
            mode,
            period,
        } => {
            let (name, anchor_ms, length_ms) = match period {
                tally::Period::Day => ("day", None, None),
                tally::Period::Month => ("month", None, None),
                tally::Period::Every {
                    anchor_ms,
                    length_ms,
                } => ("every", Some(*anchor_ms), Some(*length_ms)),
            };
            PriceBody::PeriodTiered {
                meter: meter_name(*m).to_owned(),
                tiers: tier_bodies(tiers),
                mode: match mode {
                    tally::TierMode::Graduated => "graduated",
                    tally::TierMode::Volume => "volume",
                }
                .to_owned(),
                period: name.to_owned(),
                anchor_ms,
                length_ms,
            }
        }
    }
}

/// `PUT /v1/prices`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPrice {
    /// The app (revenue account).
    pub app: String,
    /// The endpoint (≤ 128 bytes).
    pub endpoint: String,
    /// The price.
    pub price: PriceBody,
}

/// Sets the price of an app's endpoint (replacing any earlier one): a journaled change of the
/// app's catalog, versioned; holds already made keep the price they were quoted at.
#[utoipa::path(put, path = "/v1/prices", request_body = SetPrice,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_price(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: axum::http::HeaderMap,
    body: Body<SetPrice>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let checked = async {
        principal.require_admin()?;
        let req = &body.value;
        let app = state.account(&req.app).await?;
        if req.endpoint.len() > 128 {
            return Err(ApiError::invalid_field(
                "endpoint",
                "endpoint is over 128 bytes",
            ));
        }
        Ok((app, to_price(&req.price)?))
    }
    .await;
    let (app, price) = match checked {
        Ok(checked) => checked,
        Err(e) => return e.into_response(),
    };
    let req = body.value;
    let s = state.clone();
    // Under the request's `Idempotency-Key`, a retry is answered as first.
    crate::idempotency::run(
        &state,
        &principal,
        &headers,
        "PUT /v1/prices",
        &body.digest,
        1,
        |op| async move {
            let version = s
                .tally
                .set_price(op, app, req.endpoint.clone(), Some(price.clone()))
                .await?;
            Ok((
                StatusCode::OK,
                json!({"app": req.app, "endpoint": req.endpoint, "price": price_body(&price),
                   "version": version}),
            ))
        },
    )
    .await
}

/// `GET /v1/prices`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PriceQuery {
    /// The app.
    pub app: String,
    /// The endpoint.
    pub endpoint: String,
}

/// The price of an app's endpoint.
#[utoipa::path(get, path = "/v1/prices", params(PriceQuery),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_price(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(q): QueryParams<PriceQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::User { .. } = principal {
        return Err(ApiError::forbidden("this needs an admin or service key"));
    }
    let app = state.account(&q.app).await?;
    let pinned = state.tally.price(app, &q.endpoint).await?.ok_or_else(|| {
        ApiError::from(tally::Error::NoPrice {
            app,
            endpoint: q.endpoint.clone(),
        })
    })?;
    Ok(Json(json!({"app": q.app, "endpoint": q.endpoint,
        "price": price_body(&pinned.price), "version": pinned.version})))
}

/// `POST /v1/prices/quote`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// The app.
    pub app: String,
    /// The endpoint.
    pub endpoint: String,
    /// The usage to price.
    pub usage: UsageBody,
    /// The user who would pay: a period-tiered price is quoted at their count in the current
    /// period (without it, as the first call of a period).
    #[serde(default)]
    pub account: Option<String>,
}

/// What a usage costs at an endpoint's price now (rounded up once to a whole µ¢); for a
/// period-tiered price and an `account`, what it would post at the account's count.
#[utoipa::path(post, path = "/v1/prices/quote", request_body = QuoteRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn quote(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: Body<QuoteRequest>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::User { .. } = principal {
        return Err(ApiError::forbidden("this needs an admin or service key"));
    }
    let req = body.value;
    let app = state.account(&req.app).await?;
    let account = match &req.account {
        Some(name) => {
            // An app reads its own users' counts only.
            principal.require_app(app)?;
            Some(state.account(name).await?)
        }
        None => None,
    };
    let cost = state
        .tally
        .quote(app, &req.endpoint, &Usage::from(req.usage), account)
        .await?;
    Ok(Json(
        json!({"app": req.app, "endpoint": req.endpoint, "cost": cost.get()}),
    ))
}

/// `POST /v1/prices/affordable`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AffordableRequest {
    /// The user account that would pay.
    pub account: String,
    /// The app.
    pub app: String,
    /// The priced endpoint.
    pub endpoint: String,
    /// The usage known before the call (e.g. its input tokens); the field to maximize is
    /// ignored here.
    #[serde(default)]
    pub usage: Option<UsageBody>,
    /// The usage field to maximize: `requests`, `input_tokens`, `output_tokens`, `characters`,
    /// `pages` or `duration_ms`.
    pub maximize: String,
    /// The user's spend token (`st_...`) the call would present.
    #[serde(default)]
    pub token: Option<String>,
}

/// The most of one usage field (say output tokens, for the input given) the account can pay
/// for now: what its balance, spend caps, the token and the rate limits leave for one more
/// hold, priced exactly (one unit more would cost more than that). Clamp `max_tokens` to
/// `units`, then hold `cost`. Reads only.
#[utoipa::path(post, path = "/v1/prices/affordable", request_body = AffordableRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn affordable(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: Body<AffordableRequest>,
) -> Result<Json<Value>, ApiError> {
    let req = body.value;
    let account = state.account(&req.account).await?;
    let app = state.account(&req.app).await?;
    principal.require_app(app)?;
    let maximize = tally::UsageField::parse(&req.maximize).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!(
                "maximize must be one of requests, input_tokens, output_tokens, characters, \
                 pages, duration_ms (got {:?})",
                req.maximize
            ),
        )
        .with("field", "maximize")
    })?;
    let token = crate::tokens::presented(&state, req.token.as_deref(), account)?;
    let base = req.usage.map(Usage::from).unwrap_or_default();
    let found = state
        .tally
        .affordable(account, app, &req.endpoint, &base, maximize, token)
        .await?;
    Ok(Json(json!({
        "account": req.account,
        "app": req.app,
        "endpoint": req.endpoint,
        "maximize": maximize.name(),
        // u64::MAX (the price ignores the field) as a string, like other wide numbers.
        "units": found.units.map(|u| if u == u64::MAX { Value::from(u.to_string()) } else { Value::from(u) }),
        "cost": found.cost.map(|c| c.get()),
        "room": found.room.get(),
        "limited_by": found.limited_by,
    })))
}

/// `POST /v1/meter`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterRequest {
    /// The user account.
    pub account: String,
    /// The app.
    pub app: String,
    /// The priced endpoint.
    pub endpoint: String,
    /// The largest usage the call can have (its `max_tokens`, say): its cost is held.
    pub max_usage: UsageBody,
    /// Hold timeout. Default 60,000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The user's spend token (`st_...`), whose cap the hold must fit.
    #[serde(default)]
    pub token: Option<String>,
}

/// Starts a metered call: holds the cost of `max_usage` at the endpoint's price.
#[utoipa::path(post, path = "/v1/meter", request_body = MeterRequest,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn start_meter(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<MeterRequest>,
) -> Response {
    let s = state.clone();
    let p = principal.clone();
    idempotency::run(
        &state,
        &principal,
        &headers,
        "POST /v1/meter",
        &body.digest,
        1,
        |op| async move {
            let req = body.value;
            let account = s.account(&req.account).await?;
            let app = s.account(&req.app).await?;
            p.require_app(app)?;
            let max_usage = Usage::from(req.max_usage);
            let price = s.tally.price(app, &req.endpoint).await?.ok_or_else(|| {
                ApiError::from(tally::Error::NoPrice {
                    app,
                    endpoint: req.endpoint.clone(),
                })
            })?;
            let version = price.version;
            let command = Command::ReserveMetered {
                app,
                endpoint: req.endpoint.clone(),
                max_usage,
                timeout_ms: req.timeout_ms.unwrap_or(60_000),
                metadata: String::new(),
                token: crate::tokens::presented(&s, req.token.as_deref(), account)?,
                price: Box::new(price),
            };
            let request = Request {
                op,
                command,
                origin: tally::Origin::new("tally-server", p.scope(), ""),
            };
            match s.tally.execute(account, request).await? {
                Outcome::Reserved {
                    hold,
                    expires_at,
                    amount: estimate,
                } => Ok((
                    StatusCode::CREATED,
                    json!({"hold": hold_str(hold), "account": req.account, "app": req.app,
                       "endpoint": req.endpoint, "amount_held": estimate.get(),
                       "price_version": version, "expires_at_ms": expires_at.0}),
                )),
                other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            }
        },
    )
    .await
}

/// Runs `command` (made for the hold's id) on the hold `hold` names, once the credential is
/// found to reach its app: the hold as read before, and the outcome.
async fn on_metered_hold(
    s: &AppState,
    p: &Principal,
    op: tally::OpId,
    hold: &str,
    command: impl FnOnce(tally::HoldId) -> Command,
) -> Result<(tally::Hold, Outcome), ApiError> {
    let id = parse_hold(hold)?;
    let h = s.tally.get_hold(id).await?;
    p.require_app(h.app)?;
    let request = Request {
        op,
        command: command(id),
        origin: tally::Origin::new("tally-server", p.scope(), ""),
    };
    Ok((h, s.tally.execute(id.account, request).await?))
}

/// `POST /v1/meter/{hold}/progress`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    /// What the call used since its last part.
    pub usage: UsageBody,
}

/// Settles a part of a metered (streaming) call by usage: posts the cost of all the call's
/// usage so far at the pinned price minus what was posted (rounded once over the whole call);
/// the hold stays pending. Past what it holds: 422 `commit_exceeds_hold` (extend the hold with
/// `POST /v1/holds/{id}/extend`, or stop the call).
#[utoipa::path(post, path = "/v1/meter/{hold}/progress", params(("hold" = String, Path)),
    request_body = ProgressRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn progress_meter(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(hold): Path<String>,
    headers: HeaderMap,
    body: Body<ProgressRequest>,
) -> Response {
    let route = format!("POST /v1/meter/{hold}/progress");
    let s = state.clone();
    let p = principal.clone();
    idempotency::run(
        &state,
        &principal,
        &headers,
        &route,
        &body.digest,
        1,
        |op| async move {
            let usage = Usage::from(body.value.usage);
            let (_, outcome) = on_metered_hold(&s, &p, op, &hold, |id| Command::Progress {
                hold: id,
                usage,
            })
            .await?;
            match outcome {
                Outcome::Settled {
                    posting,
                    amount_posted,
                    amount_held,
                } => Ok((
                    StatusCode::OK,
                    json!({"hold": hold, "status": "pending", "posting": posting_str(posting),
                       "amount_posted": amount_posted.get(), "amount_held": amount_held.get()}),
                )),
                other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
            }
        },
    )
    .await
}

/// `POST /v1/meter/{hold}/finish`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    /// What the call used (since its last settled part, if any).
    pub usage: UsageBody,
}

/// Finishes a metered call: commits the cost of all its usage (parts already settled plus this
/// `usage`) at the pinned price minus what the parts posted (at most what was held: more is 422
/// `commit_exceeds_hold`), releases the rest, records the usage.
#[utoipa::path(post, path = "/v1/meter/{hold}/finish", params(("hold" = String, Path)),
    request_body = FinishRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn finish_meter(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(hold): Path<String>,
    headers: HeaderMap,
    body: Body<FinishRequest>,
) -> Response {
    let route = format!("POST /v1/meter/{hold}/finish");
    let s = state.clone();
    let p = principal.clone();
    idempotency::run(&state, &principal, &headers, &route, &body.digest, 1, |op| async move {
        let usage = Usage::from(body.value.usage);
        let (h, outcome) =
            on_metered_hold(&s, &p, op, &hold, |id| Command::Finish { hold: id, usage }).await?;
        match outcome {
            Outcome::Committed {
                posting,
                amount_posted,
                amount_released,
            } => Ok((
                StatusCode::OK,
                json!({"hold": hold, "posting": posting_str(posting), "cost": amount_posted.get(),
                       "price_version": h.price.as_ref().map(|p| p.version),
                       "amount_posted": amount_posted.get(), "amount_released": amount_released.get()}),
            )),
            other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
        }
    })
    .await
}

/// `GET /v1/usage` and `/v1/usage/top-users`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// `minute`, `hour` or `day`.
    #[param(pattern = "^(minute|hour|day)$")]
    pub granularity: String,
    /// Start (ms since the epoch, rounded down to a bucket).
    pub from_ms: u64,
    /// End (exclusive).
    pub to_ms: u64,
    /// Only this user account.
    #[serde(default)]
    pub account: Option<String>,
    /// Only this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Only this endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Top users: how many (1 to 1,000, default 10).
    #[serde(default)]
    pub n: Option<usize>,
}

async fn usage_query(state: &AppState, p: &UsageParams) -> Result<UsageQuery, ApiError> {
    let granularity = match p.granularity.as_str() {
        "minute" => Granularity::Minute,
        "hour" => Granularity::Hour,
        "day" => Granularity::Day,
        other => {
            return Err(ApiError::invalid_field(
                "granularity",
                format!("granularity is minute, hour or day, not {other:?}"),
            ))
        }
    };
    if p.to_ms <= p.from_ms {
        return Err(ApiError::invalid_field(
            "to_ms",
            "to_ms must be after from_ms",
        ));
    }
    let mut q = UsageQuery::new(granularity, Timestamp(p.from_ms), Timestamp(p.to_ms));
    if let Some(a) = p.account.as_deref() {
        q.account = Some(state.account(a).await?);
    }
    if let Some(a) = p.app.as_deref() {
        q.app = Some(state.account(a).await?);
    }
    q.endpoint = p.endpoint.clone();
    Ok(q)
}

/// Usage totals as JSON (sums beyond 2^64 as decimal strings).
pub fn totals_json(t: &UsageTotals) -> Value {
    let w = wide_u;
    json!({
        "calls": t.calls,
        "requests": w(t.requests),
        "input_tokens": w(t.input_tokens),
        "output_tokens": w(t.output_tokens),
        "characters": w(t.characters),
        "pages": w(t.pages),
        "duration_ms": w(t.duration_ms),
        "cost": w(t.cost),
        "provider_cost": w(t.provider_cost),
        "refunded": w(t.refunded),
        "net": crate::error::wide(t.net()),
        "margin": crate::error::wide(t.margin()),
    })
}

/// Usage and cost summed per bucket (of a user, an app, an endpoint), with totals; `complete`
/// is false when buckets in the range were already dropped by the retention bounds.
#[utoipa::path(get, path = "/v1/usage", params(UsageParams),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(p): QueryParams<UsageParams>,
) -> Result<Json<Value>, ApiError> {
    let q = usage_query(&state, &p).await?;
    match (&principal, q.app) {
        (Principal::Admin { .. }, _) => {}
        (Principal::Service { app, .. }, Some(asked)) if *app == asked => {}
        _ => {
            return Err(ApiError::forbidden(
                "a service key reads its own app's usage (set app)",
            ))
        }
    }
    let r = state.tally.usage(&q)?;
    let buckets: Vec<Value> = r
        .buckets
        .iter()
        .map(|(at, t)| {
            let mut v = totals_json(t);
            v["start_ms"] = Value::from(at.0);
            v
        })
        .collect();
    Ok(Json(
        json!({"totals": totals_json(&r.totals), "buckets": buckets, "complete": r.complete}),
    ))
}

/// The users who spent most in the range, most first.
#[utoipa::path(get, path = "/v1/usage/top-users", params(UsageParams),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn top_users(
    State(state): State<AppState>,
    Auth(principal): Auth,
    QueryParams(p): QueryParams<UsageParams>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let q = usage_query(&state, &p).await?;
    let n = p.n.unwrap_or(10);
    if n == 0 || n > 1_000 {
        return Err(ApiError::invalid_field("n", "n must be 1 to 1,000"));
    }
    let top = state.tally.top_users(&q, n)?;
    let users: Vec<Value> = top
        .iter()
        .map(|(id, t)| {
            let mut v = totals_json(t);
            v["account"] = Value::from(state.name(*id));
            v
        })
        .collect();
    Ok(Json(json!({"users": users})))
}

/// `GET /v1/accounts/{id}/balance-history`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BalanceHistoryParams {
    /// Start (ms since the epoch). Default 0.
    #[serde(default)]
    pub from_ms: u64,
    /// End (exclusive). Default: no end.
    #[serde(default)]
    pub to_ms: Option<u64>,
    /// At most this many points (1 to 10,000, default 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// An account's balance after each change in the range, oldest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/balance-history", params(("id" = String, Path), BalanceHistoryParams),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn balance_history(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    QueryParams(p): QueryParams<BalanceHistoryParams>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let limit = p.limit.unwrap_or(1_000);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::invalid_field(
            "limit",
            "limit must be 1 to 10,000",
        ));
    }
    let points = state
        .tally
        .balance_history(
            id,
            Timestamp(p.from_ms),
            Timestamp(p.to_ms.unwrap_or(u64::MAX)),
            limit,
        )
        .await?;
    let history = points;
    let points = history
        .points
        .iter()
        .map(|b| {
            // The engine checks every point's totals; a posted balance outside i128 is damage.
            let posted = b.posted().ok_or_else(|| {
                ApiError::internal(format!("{name}'s balance at seq {} is out of range", b.seq))
            })?;
            Ok(json!({
                "seq": b.seq,
                "at_ms": b.at.0,
                "credits_posted": wide_u(b.credits_posted),
                "debits_posted": wide_u(b.debits_posted),
                "debits_pending": wide_u(b.debits_pending),
                "posted": wide(posted),
            }))
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    Ok(Json(
        json!({"account": name, "points": points, "pruned_through": history.pruned_through}),
    ))
}

/// Imports, at start, the prices an earlier build kept in the server's registry into the
/// ledger's catalogs: each endpoint the app's catalog has never had an entry for (a price
/// removed since is not brought back). The registry records no new prices.
pub async fn import_registry_prices(state: &AppState) -> Result<usize, String> {
    let mut imported = 0;
    for (app, endpoint, price) in state.registry.prices() {
        let catalog = match state.tally.catalog(app).await {
            Ok(catalog) => catalog,
            Err(tally::Error::Ledger(tally::LedgerError::UnknownAccount { .. })) => {
                tracing::warn!(%app, %endpoint, "a registry price names an account the ledger lacks; not imported");
                continue;
            }
            Err(e) => return Err(format!("reading {app}'s catalog: {e}")),
        };
        if catalog.1.contains_key(&endpoint) {
            continue;
        }
        let op = state.registry.fresh_op();
        state
            .tally
            .set_price(op, app, endpoint, Some(price))
            .await
            .map_err(|e| format!("importing a price: {e}"))?;
        imported += 1;
    }
    Ok(imported)
}

/// A user's use of each period-tiered price in its current period: units, what it was charged
/// and the tier the count reached. Admin, or an app's service key for its own prices only.
#[utoipa::path(get, path = "/v1/accounts/{id}/periods", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn account_periods(
    State(state): State<AppState>,
    Auth(principal): Auth,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::User { .. } = principal {
        return Err(ApiError::forbidden("this needs an admin or service key"));
    }
    let id = state.account(&name).await?;
    let account = state.tally.account(id).await?;
    let mut rows = Vec::new();
    for (app, endpoint, _) in account.period_uses() {
        if principal.require_app(app).is_err() {
            continue;
        }
        // Only endpoints still period-tiered count (a price changed to another kind does not).
        let Some(pinned) = state.tally.price(app, endpoint).await? else {
            continue;
        };
        let Price::PeriodTiered {
            mode,
            tiers,
            period,
            ..
        } = &pinned.price
        else {
            continue;
        };
        let used = account.period_use(app, endpoint, period, state.tally.now());
        let end = period.end(used.start);
        let tier = tally::tier_reached(tiers, used.units);
        let up_to = tiers.get(tier).and_then(|t| t.up_to);
        let mode = match mode {
            tally::TierMode::Graduated => "graduated",
            tally::TierMode::Volume => "volume",
        };
        rows.push(json!({
            "app": state.name(app), "endpoint": endpoint, "mode": mode,
            "start_ms": used.start, "end_ms": end, "units": used.units, "charged": used.charged,
            "tier": tier, "tier_up_to": up_to,
        }));
    }
    Ok(Json(json!({"account": name, "periods": rows})))
}

/// The metering routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_price, get_price))
        .routes(routes!(quote))
        .routes(routes!(affordable))
        .routes(routes!(start_meter))
        .routes(routes!(progress_meter))
        .routes(routes!(finish_meter))
        .routes(routes!(usage))
        .routes(routes!(top_users))
        .routes(routes!(balance_history))
        .routes(routes!(account_periods))
}
