//! The native API under `/v1`: JSON, amounts as integers in µ¢, accounts named by strings,
//! `Authorization: Bearer <key>`, `Idempotency-Key` on every write.
//!
//! Each handler parses, checks the credential's scope, calls one engine method and maps the
//! answer; the rules of money are the engine's.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tally::{
    AccountId, AccountKind, AccountSpec, Amount, Command, HoldId, OpId, Origin, Outcome, PostingId,
    Request, Usage,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{hash_secret, new_secret, Auth, Principal};
use crate::error::{wide, wide_u, ApiError};
use crate::idempotency::{self, Answer};
use crate::json::{from_value, Body, QueryParams};
use crate::registry::{ApiKey, KeyScope, NAME_BYTES_MAX};
use crate::AppState;

/// The error body every 4xx and 5xx carries.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `{"code": stable code, "message": for people, ...details}`.
    pub error: ErrorObject,
}

/// The error object.
#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable code, one per typed error (`insufficient_funds`, `idempotency_conflict`, ...).
    pub code: String,
    /// A message naming the account, the amounts and the limit.
    pub message: String,
}

/// An account's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A customer: funded, holds and charges debit it, never below `-credit_limit`.
    User,
    /// An app's revenue account: commits and charges credit it.
    Revenue,
    /// Where money enters; may overdraw.
    Funding,
}

impl From<Kind> for AccountKind {
    fn from(k: Kind) -> AccountKind {
        match k {
            Kind::User => AccountKind::User,
            Kind::Revenue => AccountKind::Revenue,
            Kind::Funding => AccountKind::Funding,
        }
    }
}

impl From<AccountKind> for Kind {
    fn from(k: AccountKind) -> Kind {
        match k {
            AccountKind::User => Kind::User,
            AccountKind::Revenue => Kind::Revenue,
            AccountKind::Funding => Kind::Funding,
        }
    }
}

/// Checks an account name: 1 to 128 bytes, no control characters, no `/`.
pub fn check_name(name: &str, field: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "{field} must be 1 to {NAME_BYTES_MAX} bytes, not {}",
                name.len()
            ),
        ));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} may not contain control characters or '/'"),
        ));
    }
    Ok(())
}

fn amount_field(value: u64, field: &'static str) -> Result<Amount, ApiError> {
    Amount::new(value).map_err(|e| match e {
        tally::LedgerError::ZeroAmount { .. } => {
            ApiError::from(tally::LedgerError::ZeroAmount { field })
        }
        other => ApiError::from(other).with("field", field),
    })
}

/// A hold's id as the API spells it: `h_<account>_<seq>`.
pub fn hold_str(id: HoldId) -> String {
    format!("h_{}_{}", id.account.0, id.seq)
}

/// A posting's id as the API spells it: `p_<account>_<seq>`.
pub fn posting_str(id: PostingId) -> String {
    format!("p_{}_{}", id.account.0, id.seq)
}

/// A grant's id as the API spells it: `g_<account>_<seq>`.
pub fn grant_str(id: tally_core::GrantId) -> String {
    format!("g_{}_{}", id.account.0, id.seq)
}

fn parse_pair(s: &str, prefix: &str) -> Option<(u64, u64)> {
    let rest = s.strip_prefix(prefix)?;
    let (a, b) = rest.split_once('_')?;
    let ok = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) && t.len() <= 20;
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Parses `h_<account>_<seq>`.
pub fn parse_hold(s: &str) -> Result<HoldId, ApiError> {
    parse_pair(s, "h_")
        .map(|(a, seq)| HoldId {
            account: AccountId(a),
            seq,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_hold",
                format!("{s:?} is not a hold id (h_<account>_<seq>)"),
            )
        })
}

/// Parses `p_<account>_<seq>`.
pub fn parse_posting(s: &str, field: &str) -> Result<PostingId, ApiError> {
    parse_pair(s, "p_")
        .map(|(a, seq)| PostingId {
            account: AccountId(a),
            seq,
        })
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                format!("{s:?} is not a posting id (p_<account>_<seq>)"),
            )
        })
}

/// Usage a call reports (all counts default to 0).
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UsageBody {
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Characters.
    pub characters: u64,
    /// Pages.
    pub pages: u64,
    /// Duration in ms.
    pub duration_ms: u64,
    /// What the provider behind the app charged for this work, in µ¢: recorded beside the
    /// price (usage reports give the margin), never priced.
    pub provider_cost: u64,
}

impl From<UsageBody> for Usage {
    fn from(u: UsageBody) -> Usage {
        Usage {
            requests: u.requests,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            characters: u.characters,
            pages: u.pages,
            duration_ms: u.duration_ms,
            provider_cost: u.provider_cost,
        }
    }
}

fn origin(principal: &Principal) -> Origin {
    Origin::new("tally-server", principal.scope(), "")
}

// ---------------------------------------------------------------------------------------------
// Accounts

/// `POST /v1/accounts`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// The account's name (1 to 128 bytes; `tally:` names are the server's own).
    #[schema(min_length = 1, max_length = 128)]
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// How far below zero a user's available balance may go, in µ¢. Default 0.
    #[serde(default)]
    pub credit_limit: u64,
}

/// An account as created.
#[derive(Serialize, ToSchema)]
pub struct AccountBody {
    /// Its name.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its credit limit in µ¢.
    pub credit_limit: u64,
}

/// Opens an account (idempotent: the same id and content again is 201 with the same body).
#[utoipa::path(post, path = "/v1/accounts", request_body = CreateAccount,
    responses((status = 201, body = AccountBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_account(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<CreateAccount>,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let s = state.clone();
    idempotency::run(
        &state,
        &principal,
        &headers,
        "POST /v1/accounts",
        &body.digest,
        1,
        |_op| async move {
            let req = body.value;
            check_name(&req.id, "id")?;
            if req.id.starts_with("tally:") {
                return Err(ApiError::invalid_field(
                    "id",
                    "names starting with `tally:` are reserved",
                ));
            }
            // A Syft user's name is theirs: a native open of it would hand an admin (who
            // might fund it) an account someone else signs in to.
            if s.registry.user_fresh(&req.id).await?.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "name_taken",
                    format!("{:?} is a Syft user's account", req.id),
                )
                .with("field", "id"));
            }
            open_named(&s, &req.id, req.kind, req.credit_limit).await?;
            Ok((
                StatusCode::CREATED,
                json!({"id": req.id, "kind": req.kind, "credit_limit": req.credit_limit}),
            ))
        },
    )
    .await
}

/// Maps `name` to an account and opens it with `kind` (idempotent).
pub async fn open_named(
    state: &AppState,
    name: &str,
    kind: Kind,
    credit_limit: u64,
) -> Result<AccountId, ApiError> {
    let mut spec = AccountSpec {
        kind: kind.into(),
        credit_limit: Amount::ZERO,
        flags: Default::default(),
    };
    if credit_limit > 0 {
        spec.credit_limit = amount_field(credit_limit, "credit_limit")?;
    }
    if spec.kind == AccountKind::Funding {
        spec.flags.may_overdraw = true;
    }
    let (id, _) = state.registry.map_name(name).await?;
    state.tally.open_account(id, spec).await.map_err(|e| {
        let mut err = ApiError::from(e);
        err.details.insert("account".into(), Value::from(name));
        err
    })?;
    Ok(id)
}

/// An account's balance; totals in µ¢.
#[derive(Serialize, ToSchema)]
pub struct BalanceBody {
    /// The account.
    pub account: String,
    /// Sum of posted credits.
    pub credits_posted: u64,
    /// Sum of posted debits.
    pub debits_posted: u64,
    /// Sum of pending holds.
    pub debits_pending: u64,
    /// The credit limit.
    pub credit_limit: u64,
    /// credits_posted − debits_posted.
    pub posted: i64,
    /// What can be reserved or charged now.
    pub available: i64,
}

/// The balance as JSON (totals beyond 2^63 are given as decimal strings).
pub fn balance_json(name: &str, b: &tally::Balance) -> Value {
    json!({
        "account": name,
        "credits_posted": wide_u(b.credits_posted),
        "debits_posted": wide_u(b.debits_posted),
        "debits_pending": wide_u(b.debits_pending),
        "credit_limit": b.credit_limit.get(),
        "posted": wide(b.posted),
        "available": wide(b.available),
    })
}

/// An account's balance.
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", params(("id" = String, Path)),
    responses((status = 200, body = BalanceBody), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_balance(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let b = state.tally.balance(id).await?;
    Ok(Json(balance_json(&name, &b)))
}

/// `GET /v1/accounts/{id}/check`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    /// The minimum available, in µ¢. Default 100.
    pub minimum: Option<u64>,
}

/// Whether the account's available balance is at least `minimum` (default 100 µ¢).
#[utoipa::path(get, path = "/v1/accounts/{id}/check", params(("id" = String, Path), CheckQuery),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn check(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<CheckQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::User { .. } = principal {
        return Err(ApiError::forbidden("this needs an admin or service key"));
    }
    let id = state.account(&name).await?;
    if let Some(m) = q.minimum {
        amount_field(m, "minimum")?;
    }
    let allowed = state.tally.check(id, q.minimum).await?;
    Ok(Json(json!({
        "account": name,
        "minimum": q.minimum.unwrap_or(tally::CHECK_MINIMUM_DEFAULT.get()),
        "allowed": allowed,
    })))
}

/// `POST /v1/accounts/{id}/fund`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FundRequest {
    /// µ¢ to credit.
    pub amount: u64,
    /// The funding account it comes from. Default `tally:funding`.
    #[serde(default)]
    pub from: Option<String>,
}

/// Credits an account from a funding account (a top-up).
#[utoipa::path(post, path = "/v1/accounts/{id}/fund", params(("id" = String, Path)),
    request_body = FundRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn fund(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<FundRequest>,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let route = format!("POST /v1/accounts/{name}/fund");
    let (s, p) = (state.clone(), principal.clone());
    idempotency::run(
        &state,
        &principal,
        &headers,
        &route,
        &body.digest,
        1,
        |op| async move {
            let req = body.value;
            let op_json = Op::Fund {
                account: name,
                amount: req.amount,
                from: req.from,
            };
            run_op(&s, &p, op, op_json).await
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// One operation: the writes a batch can hold, each decided by one engine call.

/// One write, as `/v1/batch` takes it (`"op"` names it); the single-write routes take the
/// same fields.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Credit `account` from the funding account `from` (default `tally:funding`).
    Fund {
        /// The account credited.
        account: String,
        /// µ¢.
        amount: u64,
        /// The funding account.
        #[serde(default)]
        from: Option<String>,
    },
    /// Hold `amount` of `account` for work `app` is about to do.
    Reserve(HoldRequest),
    /// Post `amount` (≤ held) of a hold; the rest is released.
    Commit {
        /// The hold.
        hold: String,
        /// µ¢ to post.
        amount: u64,
        /// Usage to record.
        #[serde(default)]
        usage: Option<UsageBody>,
    },
    /// Release a hold.
    Void {
        /// The hold.
        hold: String,
    },
    /// Raise a pending hold while its work runs, and/or move its deadline.
    Extend {
        /// The hold.
        hold: String,
        /// µ¢ more to hold (0 when only the deadline moves).
        amount: u64,
        /// A new timeout from now (the deadline never moves back).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Post part of a pending hold now; it stays pending with the rest.
    Settle {
        /// The hold.
        hold: String,
        /// µ¢ to post (≤ what it still holds).
        amount: u64,
        /// Usage of this part.
        #[serde(default)]
        usage: Option<UsageBody>,
    },
    /// Reserve and commit in one step.
    Charge(ChargeRequest),
    /// Return up to what a posting moved.
    Refund(RefundRequest),
    /// Move posted funds between accounts.
    Transfer(TransferRequest),
    /// Commit a hold's estimate (the call ended without reported usage): all it still holds is
    /// posted, marked estimated.
    CommitEstimate {
        /// The hold.
        hold: String,
    },
    /// Correct an estimated posting once to what the call cost.
    Correct {
        /// The posting.
        posting: String,
        /// What the call cost, µ¢ (absent: the cost of `usage` at the hold's pinned price).
        #[serde(default)]
        amount: Option<u64>,
        /// What the call used.
        #[serde(default)]
        usage: Option<UsageBody>,
    },
}

/// `POST /v1/holds`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// The user account whose funds are held.
    pub account: String,
    /// The app's revenue account a commit credits.
    pub app: String,
    /// µ¢ to hold.
    pub amount: u64,
    /// How long before the hold is voided by itself. Default 60,000 (1 ms to 7 days).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The app's endpoint (≤ 128 bytes).
    #[serde(default)]
    pub endpoint: String,
    /// Caller's metadata (≤ 1 KiB).
    #[serde(default)]
    pub metadata: String,
    /// The user's spend token (`st_...`): the hold must fit its app, endpoint, expiry and cap.
    #[serde(default)]
    pub token: Option<String>,
}

/// `POST /v1/charges`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    /// The user account charged.
    pub account: String,
    /// The app's revenue account credited.
    pub app: String,
    /// µ¢.
    pub amount: u64,
    /// The app's endpoint.
    #[serde(default)]
    pub endpoint: String,
    /// Caller's metadata.
    #[serde(default)]
    pub metadata: String,
    /// Usage to record.
    #[serde(default)]
    pub usage: Option<UsageBody>,
    /// The user's spend token (`st_...`): the charge must fit its app, endpoint, expiry and cap.
    #[serde(default)]
    pub token: Option<String>,
}

/// `POST /v1/refunds`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The posting (`p_<account>_<seq>`) a commit or charge returned.
    #[schema(pattern = "^p_[0-9]{1,20}_[0-9]{1,20}$")]
    pub posting: String,
    /// µ¢ to return.
    pub amount: u64,
}

/// `POST /v1/transfers`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// µ¢.
    pub amount: u64,
}

/// The posting's app, once the caller is allowed it: an admin, or a service key of that app.
async fn posting_for_app(
    state: &AppState,
    principal: &Principal,
    posting: PostingId,
) -> Result<AccountId, ApiError> {
    let account = state.tally.account(posting.account).await?;
    let app = account
        .posting(posting.seq)
        .map(|p| p.app)
        .ok_or(tally::LedgerError::UnknownPosting { posting })?;
    principal.require_app(app)?;
    Ok(app)
}

async fn hold_for_app(
    state: &AppState,
    principal: &Principal,
    hold: HoldId,
) -> Result<tally::Hold, ApiError> {
    let h = state.tally.get_hold(hold).await?;
    principal.require_app(h.app)?;
    Ok(h)
}

/// A write ready for the engine: the account that executes it, the request, and how its
/// outcome becomes the answer.
struct Prepared {
    account: AccountId,
    request: Request,
    respond: Box<dyn FnOnce(Outcome) -> Answer + Send>,
}

impl Prepared {
    fn new(
        principal: &Principal,
        account: AccountId,
        op: OpId,
        command: Command,
        respond: impl FnOnce(Outcome) -> Answer + Send + 'static,
    ) -> Prepared {
        Prepared {
            account,
            request: Request {
                op,
                command,
                origin: origin(principal),
            },
            respond: Box::new(respond),
        }
    }
}

/// Runs one write with operation id `op`, checking the credential's scope first.
pub async fn run_op(state: &AppState, principal: &Principal, op: OpId, req: Op) -> Answer {
    let prepared = prepare(state, principal, op, req).await?;
    let outcome = state
        .tally
        .execute(prepared.account, prepared.request)
        .await?;
    (prepared.respond)(outcome)
}

/// Checks the credential's scope for a write and builds its request (reading what the check
/// needs, a hold's app), without executing it.
async fn prepare(
    state: &AppState,
    principal: &Principal,
    op: OpId,
    req: Op,
) -> Result<Prepared, ApiError> {
    match req {
        Op::Fund {
            account,
            amount,
            from,
        } => {
            principal.require_admin()?;
            let id = state.account(&account).await?;
            let from_name = from.unwrap_or_else(|| crate::FUNDING_ACCOUNT_NAME.to_owned());
            let from = state.account(&from_name).await?;
            let command = Command::Fund {
                from,
                amount: amount_field(amount, "amount")?,
            };
            Ok(Prepared::new(principal, id, op, command, move |_| {
                Ok((
                    StatusCode::OK,
                    json!({"account": account, "from": from_name, "amount": amount}),
                ))
            }))
        }
        Op::Reserve(r) => {
            let account = state.account(&r.account).await?;
            let app = state.account(&r.app).await?;
            principal.require_app(app)?;
            let command = Command::Reserve {
                app,
                amount: amount_field(r.amount, "amount")?,
                timeout_ms: r.timeout_ms.unwrap_or(60_000),
                endpoint: r.endpoint.clone(),
                metadata: r.metadata.clone(),
                token: crate::tokens::presented(state, r.token.as_deref(), account)?,
            };
            Ok(Prepared::new(
                principal,
                account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Reserved {
                        hold, expires_at, ..
                    } => Ok((
                        StatusCode::CREATED,
                        json!({
                            "id": hold_str(hold),
                            "account": r.account,
                            "app": r.app,
                            "amount": r.amount,
                            "endpoint": r.endpoint,
                            "status": "pending",
                            "expires_at_ms": expires_at.0,
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Commit {
            hold,
            amount,
            usage,
        } => {
            let id = parse_hold(&hold)?;
            hold_for_app(state, principal, id).await?;
            let command = Command::Commit {
                hold: id,
                amount: amount_field(amount, "amount")?,
                usage: usage.map(Usage::from).unwrap_or_default(),
            };
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Committed {
                        posting,
                        amount_posted,
                        amount_released,
                    } => Ok((
                        StatusCode::OK,
                        json!({
                            "hold": hold,
                            "status": "posted",
                            "posting": posting_str(posting),
                            "amount_posted": amount_posted.get(),
                            "amount_released": amount_released.get(),
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::CommitEstimate { hold } => {
            let id = parse_hold(&hold)?;
            hold_for_app(state, principal, id).await?;
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                Command::CommitEstimate { hold: id },
                move |outcome| match outcome {
                    Outcome::Committed {
                        posting,
                        amount_posted,
                        amount_released,
                    } => Ok((
                        StatusCode::OK,
                        json!({
                            "hold": hold,
                            "status": "posted",
                            "estimated": true,
                            "posting": posting_str(posting),
                            "amount_posted": amount_posted.get(),
                            "amount_released": amount_released.get(),
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Correct {
            posting,
            amount,
            usage,
        } => {
            let id = parse_posting(&posting, "posting")?;
            posting_for_app(state, principal, id).await?;
            let command = Command::Correct {
                posting: id,
                amount: amount.map(|a| amount_field(a, "amount")).transpose()?,
                usage: usage.map(Usage::from).unwrap_or_default(),
            };
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Corrected {
                        estimated, amount, ..
                    } => Ok((
                        StatusCode::OK,
                        json!({
                            "posting": posting,
                            "estimated": estimated.get(),
                            "amount": amount.get(),
                            "difference": i128::from(amount.get()) - i128::from(estimated.get()),
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Void { hold } => {
            let id = parse_hold(&hold)?;
            hold_for_app(state, principal, id).await?;
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                Command::Void { hold: id },
                move |outcome| match outcome {
                    Outcome::Voided { amount_released } => Ok((
                        StatusCode::OK,
                        json!({"hold": hold, "status": "voided", "amount_released": amount_released.get()}),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Extend {
            hold,
            amount,
            timeout_ms,
        } => {
            let id = parse_hold(&hold)?;
            hold_for_app(state, principal, id).await?;
            let command = Command::Extend {
                hold: id,
                amount: amount_field(amount, "amount")?,
                timeout_ms: timeout_ms.unwrap_or(0),
            };
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Extended { amount, expires_at } => Ok((
                        StatusCode::OK,
                        json!({
                            "hold": hold,
                            "status": "pending",
                            "amount": amount.get(),
                            "expires_at_ms": expires_at.0,
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Settle {
            hold,
            amount,
            usage,
        } => {
            let id = parse_hold(&hold)?;
            hold_for_app(state, principal, id).await?;
            let command = Command::Settle {
                hold: id,
                amount: amount_field(amount, "amount")?,
                usage: usage.map(Usage::from).unwrap_or_default(),
            };
            Ok(Prepared::new(
                principal,
                id.account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Settled {
                        posting,
                        amount_posted,
                        amount_held,
                    } => Ok((
                        StatusCode::OK,
                        json!({
                            "hold": hold,
                            "status": "pending",
                            "posting": posting_str(posting),
                            "amount_posted": amount_posted.get(),
                            "amount_held": amount_held.get(),
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Charge(r) => {
            let account = state.account(&r.account).await?;
            let app = state.account(&r.app).await?;
            principal.require_app(app)?;
            let command = Command::Charge {
                app,
                amount: amount_field(r.amount, "amount")?,
                endpoint: r.endpoint.clone(),
                metadata: r.metadata,
                usage: r.usage.map(Usage::from).unwrap_or_default(),
                token: crate::tokens::presented(state, r.token.as_deref(), account)?,
            };
            let (name, app_name, amount, endpoint) = (r.account, r.app, r.amount, r.endpoint);
            Ok(Prepared::new(
                principal,
                account,
                op,
                command,
                move |outcome| match outcome {
                    Outcome::Charged { posting } => Ok((
                        StatusCode::CREATED,
                        json!({
                            "posting": posting_str(posting),
                            "account": name,
                            "app": app_name,
                            "amount": amount,
                            "endpoint": endpoint,
                        }),
                    )),
                    other => Err(unexpected(other)),
                },
            ))
        }
        Op::Refund(r) => {
            principal.require_admin()?;
            let posting = parse_posting(&r.posting, "posting")?;
            let command = Command::Refund {
                posting,
                amount: amount_field(r.amount, "amount")?,
            };
            Ok(Prepared::new(
                principal,
                posting.account,
                op,
                command,
                move |_| {
                    Ok((
                        StatusCode::OK,
                        json!({"posting": r.posting, "amount": r.amount}),
                    ))
                },
            ))
        }
        Op::Transfer(r) => {
            principal.require_admin()?;
            let from = state.account(&r.from).await?;
            let to = state.account(&r.to).await?;
            let command = Command::Transfer {
                to,
                amount: amount_field(r.amount, "amount")?,
            };
            Ok(Prepared::new(principal, from, op, command, move |_| {
                Ok((
                    StatusCode::OK,
                    json!({"from": r.from, "to": r.to, "amount": r.amount}),
                ))
            }))
        }
    }
}

fn unexpected(outcome: Outcome) -> ApiError {
    ApiError::internal(format!("unexpected outcome {outcome:?}"))
}

async fn single(
    state: AppState,
    principal: Principal,
    headers: HeaderMap,
    route: &str,
    digest: crate::registry::BodyDigest,
    op: Op,
) -> Response {
    let (s, p) = (state.clone(), principal.clone());
    idempotency::run(
        &state,
        &principal,
        &headers,
        route,
        &digest,
        1,
        |id| async move { run_op(&s, &p, id, op).await },
    )
    .await
}

/// Holds funds for work about to be done (the delegated transfer's first half).
#[utoipa::path(post, path = "/v1/holds", request_body = HoldRequest,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<HoldRequest>,
) -> Response {
    single(
        state,
        principal,
        headers,
        "POST /v1/holds",
        body.digest,
        Op::Reserve(body.value),
    )
    .await
}

/// A hold.
#[utoipa::path(get, path = "/v1/holds/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hold = parse_hold(&id)?;
    let h = hold_for_app(&state, &principal, hold).await?;
    Ok(Json(hold_json(&state, &h)))
}

/// A hold as JSON.
pub fn hold_json(state: &AppState, h: &tally::Hold) -> Value {
    json!({
        "id": hold_str(h.id),
        "account": state.name(h.id.account),
        "app": state.name(h.app),
        "amount": h.amount.get(),
        "endpoint": h.endpoint,
        "metadata": h.metadata,
        "status": h.status.to_string(),
        "created_at_ms": h.created_at.0,
        "expires_at_ms": h.expires_at.0,
        "amount_posted": h.amount_posted.get(),
        "amount_held": h.held().get(),
        "posting": h.posting.map(posting_str),
        "resolved_at_ms": h.resolved_at.map(|t| t.0),
    })
}

/// `POST /v1/holds/{id}/commit`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// µ¢ to post (≤ what it still holds; 0 allowed once a part was settled); the rest is
    /// released.
    pub amount: u64,
    /// Usage to record.
    #[serde(default)]
    pub usage: Option<UsageBody>,
}

/// Posts part or all of a hold to its app; releases the rest.
#[utoipa::path(post, path = "/v1/holds/{id}/commit", params(("id" = String, Path)),
    request_body = CommitRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn commit_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<CommitRequest>,
) -> Response {
    let route = format!("POST /v1/holds/{id}/commit");
    let op = Op::Commit {
        hold: id,
        amount: body.value.amount,
        usage: body.value.usage,
    };
    single(state, principal, headers, &route, body.digest, op).await
}

/// Commits a hold's estimate: the call ended without reported usage, so all the hold still
/// holds is posted to its app, marked estimated, to be corrected once later
/// (`POST /v1/postings/{id}/correct`).
#[utoipa::path(post, path = "/v1/holds/{id}/commit-estimate", params(("id" = String, Path)),
    request_body = VoidRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn commit_estimate(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<VoidRequest>,
) -> Response {
    let route = format!("POST /v1/holds/{id}/commit-estimate");
    single(
        state,
        principal,
        headers,
        &route,
        body.digest,
        Op::CommitEstimate { hold: id },
    )
    .await
}

/// `POST /v1/postings/{id}/correct`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectRequest {
    /// What the call cost, µ¢. Absent: the cost of `usage` at the price the hold was quoted at
    /// (a metered hold's estimate only), with the hold's settled parts.
    #[serde(default)]
    pub amount: Option<u64>,
    /// What the call used (counted in usage).
    #[serde(default)]
    pub usage: Option<UsageBody>,
}

/// Corrects an estimated posting once, up or down. Down returns the difference to the user
/// from the app; up posts it (402 `insufficient_funds` when the user cannot pay it, nothing
/// changed: correct again later). 409 `already_corrected` the second time; 422
/// `invalid_correction` for a posting that is not an estimate or was refunded in part.
#[utoipa::path(post, path = "/v1/postings/{id}/correct", params(("id" = String, Path)),
    request_body = CorrectRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn correct_posting(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<CorrectRequest>,
) -> Response {
    let route = format!("POST /v1/postings/{id}/correct");
    let op = Op::Correct {
        posting: id,
        amount: body.value.amount,
        usage: body.value.usage,
    };
    single(state, principal, headers, &route, body.digest, op).await
}

/// `POST /v1/holds/{id}/extend`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// µ¢ more to hold (0 when only the deadline moves). Refused like a hold of that much:
    /// `insufficient_funds`, a spend cap, the hold's spend token.
    pub amount: u64,
    /// A new timeout from now, 1 ms to 7 days (the deadline never moves back; absent: kept).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Raises a pending hold while its work runs (a streaming call that needs more), and/or moves
/// its deadline. A refusal changes nothing: the caller stops the work there.
#[utoipa::path(post, path = "/v1/holds/{id}/extend", params(("id" = String, Path)),
    request_body = ExtendRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn extend_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<ExtendRequest>,
) -> Response {
    let route = format!("POST /v1/holds/{id}/extend");
    let op = Op::Extend {
        hold: id,
        amount: body.value.amount,
        timeout_ms: body.value.timeout_ms,
    };
    single(state, principal, headers, &route, body.digest, op).await
}

/// `POST /v1/holds/{id}/settle`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// µ¢ to post now (≤ what the hold still holds).
    pub amount: u64,
    /// Usage of this part.
    #[serde(default)]
    pub usage: Option<UsageBody>,
}

/// Posts part of a pending hold to its app now (a delivered chunk of a stream); the hold
/// stays pending with the rest. The final commit posts what is left to post (0 allowed once
/// a part was settled) and releases the remainder.
#[utoipa::path(post, path = "/v1/holds/{id}/settle", params(("id" = String, Path)),
    request_body = SettleRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn settle_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<SettleRequest>,
) -> Response {
    let route = format!("POST /v1/holds/{id}/settle");
    let op = Op::Settle {
        hold: id,
        amount: body.value.amount,
        usage: body.value.usage,
    };
    single(state, principal, headers, &route, body.digest, op).await
}

/// `POST /v1/holds/{id}/void` and `/commit-estimate` (an empty object).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {}

/// Releases a hold.
#[utoipa::path(post, path = "/v1/holds/{id}/void", params(("id" = String, Path)),
    request_body = VoidRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn void_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body<VoidRequest>,
) -> Response {
    let route = format!("POST /v1/holds/{id}/void");
    single(
        state,
        principal,
        headers,
        &route,
        body.digest,
        Op::Void { hold: id },
    )
    .await
}

/// Charges fixed-cost work in one step.
#[utoipa::path(post, path = "/v1/charges", request_body = ChargeRequest,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_charge(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<ChargeRequest>,
) -> Response {
    single(
        state,
        principal,
        headers,
        "POST /v1/charges",
        body.digest,
        Op::Charge(body.value),
    )
    .await
}

/// Returns up to what a commit or charge posted.
#[utoipa::path(post, path = "/v1/refunds", request_body = RefundRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_refund(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<RefundRequest>,
) -> Response {
    single(
        state,
        principal,
        headers,
        "POST /v1/refunds",
        body.digest,
        Op::Refund(body.value),
    )
    .await
}

/// Moves posted funds between two accounts.
#[utoipa::path(post, path = "/v1/transfers", request_body = TransferRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_transfer(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<TransferRequest>,
) -> Response {
    single(
        state,
        principal,
        headers,
        "POST /v1/transfers",
        body.digest,
        Op::Transfer(body.value),
    )
    .await
}

/// `POST /v1/batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The operations, answered one result each, in this order. Operations decided by the
    /// same account (the user of a fund, reserve, charge; the hold's or posting's account; a
    /// transfer's source) run in this order; the others run concurrently.
    #[schema(value_type = Vec<Op>, min_items = 1, max_items = 1000)]
    pub operations: Vec<Value>,
}

/// Many writes in one request. One `Idempotency-Key` covers the whole batch. Each operation's
/// scope is checked first, then all go to the engine as one batch (`Tally::submit`): answered
/// in order, each on its own (one refused changes nothing for the others), operations on one
/// account executed in the batch's order, one wait for the journal for the whole batch.
#[utoipa::path(post, path = "/v1/batch", request_body = BatchRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn batch(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<BatchRequest>,
) -> Response {
    let max = state.config.batch_operations_max;
    let n = body.value.operations.len();
    if n == 0 || n > max {
        return ApiError::invalid_field(
            "operations",
            format!("a batch holds 1 to {max} operations, not {n}"),
        )
        .with("max", max)
        .into_response();
    }
    // A sub-batch another node forwarded runs under the ids its operations were refused with.
    let forced = match crate::forward::forced_ops(&state, &headers, &body.digest, n) {
        Ok(forced) => forced,
        Err(e) => return e.into_response(),
    };
    let originals =
        crate::forward::may_forward(&state, &headers).then(|| body.value.operations.clone());
    let mut ops = Vec::with_capacity(n);
    for (i, v) in body.value.operations.into_iter().enumerate() {
        match from_value::<Op>(v) {
            Ok(op) => ops.push(op),
            Err(mut e) => {
                let field = e.details.get("field").and_then(|f| f.as_str()).map_or_else(
                    || format!("operations[{i}]"),
                    |f| format!("operations[{i}].{f}"),
                );
                e.details.insert("field".into(), Value::from(field));
                e.details.insert("index".into(), Value::from(i));
                return e.into_response();
            }
        }
    }
    let (s, p, h) = (state.clone(), principal.clone(), headers.clone());
    idempotency::run(
        &state,
        &principal,
        &headers,
        "POST /v1/batch",
        &body.digest,
        n as u64,
        |base| async move {
            // Every operation checked and built first (in order), then all of them through one
            // engine batch: one wait for the journal, operations on one account in order.
            let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
            let mut prepared = Vec::with_capacity(n);
            let ids: Vec<OpId> = forced.unwrap_or_else(|| {
                (0..n)
                    .map(|i| OpId(base.0.wrapping_add(i as u128)))
                    .collect()
            });
            for (i, op) in ops.into_iter().enumerate() {
                match prepare(&s, &p, ids[i], op).await {
                    Ok(ready) => prepared.push((i, ready)),
                    Err(e) => answers[i] = Some(Err(e)),
                }
            }
            let mut rest = prepared.into_iter().peekable();
            while rest.peek().is_some() {
                let chunk: Vec<(usize, Prepared)> =
                    rest.by_ref().take(tally::SUBMIT_BATCH_MAX).collect();
                let mut respond = Vec::with_capacity(chunk.len());
                let mut requests = Vec::with_capacity(chunk.len());
                for (i, ready) in chunk {
                    requests.push((ready.account, ready.request));
                    respond.push((i, ready.respond));
                }
                match s.tally.submit(requests).await {
                    Ok(results) => {
                        for ((i, respond), result) in respond.into_iter().zip(results) {
                            answers[i] = Some(match result {
                                Ok(outcome) => respond(outcome),
                                Err(e) => Err(e.into()),
                            });
                        }
                    }
                    Err(e) => {
                        for (i, _) in respond {
                            answers[i] = Some(Err(e.clone().into()));
                        }
                    }
                }
            }
            let mut results: Vec<Value> = answers
                .into_iter()
                .map(|answer| match answer {
                    Some(Ok((status, body))) => json!({"status": status.as_u16(), "body": body}),
                    Some(Err(e)) => json!({"status": e.status.as_u16(), "body": e.body()}),
                    None => {
                        let e = ApiError::internal("a batch operation went unanswered");
                        json!({"status": e.status.as_u16(), "body": e.body()})
                    }
                })
                .collect();
            if let Some(originals) = originals {
                crate::forward::batch_rest(&s, &h, &originals, &ids, &mut results).await;
            }
            Ok((StatusCode::OK, json!({"results": results})))
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Funding updates, reads, audit

/// `POST /v1/funding-updates`: the seeds' `record_funding_update({old_amount, new_amount})`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FundingUpdateRequest {
    /// The account.
    pub account: String,
    /// The funding account (default `tally:funding`).
    #[serde(default)]
    pub from: Option<String>,
    /// What the caller believes the account's total funding is, µ¢ (409 `funding_mismatch`
    /// if it is not).
    pub old_amount: u64,
    /// The new total funding, µ¢.
    pub new_amount: u64,
}

/// Sets an account's total funding from `old_amount` to `new_amount`, refused if stale.
#[utoipa::path(post, path = "/v1/funding-updates", request_body = FundingUpdateRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn funding_update(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<FundingUpdateRequest>,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let route = "POST /v1/funding-updates";
    let s = state.clone();
    idempotency::run(
        &state,
        &principal,
        &headers,
        route,
        &body.digest,
        1,
        |op| async move {
            let r = body.value;
            funding_update_op(
                &s,
                op,
                &r.account,
                r.from.as_deref(),
                r.old_amount,
                r.new_amount,
            )
            .await
        },
    )
    .await
}

/// The funding update both `/v1/funding-updates` and `/v1/cost/funding-update` run.
pub async fn funding_update_op(
    state: &AppState,
    op: OpId,
    account: &str,
    from: Option<&str>,
    old: u64,
    new: u64,
) -> Answer {
    let id = state.account(account).await?;
    let from = state
        .account(from.unwrap_or(crate::FUNDING_ACCOUNT_NAME))
        .await?;
    let funded = state
        .tally
        .record_funding_update(op, id, from, old.into(), new.into())
        .await?;
    Ok((
        StatusCode::OK,
        json!({"account": account, "old_amount": old, "new_amount": new, "funded": crate::error::wide_u(funded)}),
    ))
}

/// `GET /v1/accounts/{id}/history`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The cursor: `next_after` of the previous page (0 or absent for the first).
    pub after: Option<u64>,
    /// Entries per page, 1 to 1,000. Default 100.
    pub limit: Option<usize>,
}

/// A journal record as JSON. Its operation id is a decimal string: the server's ids pass 2^64,
/// which a JSON number (and `serde_json::Value`) cannot hold; a record that still holds such a
/// number is given as its JSON text in `record_text`. The accounts a change names (`app`,
/// `from`, `to`) get their names beside them (`app_name`, ...).
pub fn record_json(state: &AppState, record: &tally::Record) -> Value {
    let op = record.op.map(|op| op.0.to_string());
    let bare = tally::Record {
        op: None,
        ..record.clone()
    };
    match serde_json::to_value(&bare) {
        Ok(mut v) => {
            v["op"] = Value::from(op);
            let body = v
                .get_mut("change")
                .and_then(Value::as_object_mut)
                .and_then(|c| c.values_mut().next())
                .and_then(Value::as_object_mut);
            if let Some(body) = body {
                for key in ["app", "from", "to"] {
                    if let Some(id) = body.get(key).and_then(Value::as_u64) {
                        let name = state.name(AccountId(id));
                        body.insert(format!("{key}_name"), Value::from(name));
                    }
                }
            }
            v
        }
        Err(_) => {
            json!({"op": op, "record_text": serde_json::to_string(&bare).unwrap_or_default()})
        }
    }
}

/// The records that touched an account, oldest first, with a cursor.
#[utoipa::path(get, path = "/v1/accounts/{id}/history", params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn history(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id = state.account(&name).await?;
    let limit = crate::json::page_limit(q.limit, 100, tally::HISTORY_PAGE_MAX)?;
    let page = state.tally.history(id, q.after.unwrap_or(0), limit).await?;
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at_ms": e.record.at.0,
                "record": record_json(&state, &e.record),
            })
        })
        .collect();
    Ok(Json(
        json!({"account": name, "entries": entries, "next_after": page.next_after_seq,
               "pruned_through": page.pruned_through}),
    ))
}

/// Σ debits = Σ credits over every account, and nothing overspent.
#[utoipa::path(get, path = "/v1/audit",
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn audit(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let r = state.tally.audit().await?;
    Ok(Json(json!({
        "ok": r.ok(),
        "accounts": r.accounts,
        "debits_posted": wide_u(r.debits_posted),
        "credits_posted": wide_u(r.credits_posted),
        "debits_pending": wide_u(r.debits_pending),
        "holds_pending": r.holds_pending,
        "funded": wide(r.funded),
        "revenue": wide(r.revenue),
        "user_balances": wide(r.user_balances),
        "violations": r.violations.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>(),
        // On a cluster node: accounts other nodes serve (audit each node; conservation is
        // checked only by a node that serves every account).
        "accounts_elsewhere": r.elsewhere,
    })))
}

/// The audit trail's head: the journal's last sequence number and its BLAKE3 chain hash.
#[utoipa::path(get, path = "/v1/trail/head",
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn trail_head(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let (seq, hash) = state.tally.trail_head();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Json(json!({"seq": seq, "hash": hex})))
}

/// `POST /v1/trail/prune`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Prune the archived segments whose records all come before this sequence number (≥ 1).
    pub before_seq: u64,
}

/// Removes the oldest archived history, whole segments only (the live journal is never
/// pruned). History and balance history then start after the cut (`pruned_through`), and the
/// trail verifies from the chain hash kept at it.
#[utoipa::path(post, path = "/v1/trail/prune", request_body = PruneRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn prune_history(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: Body<PruneRequest>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let before_seq = body.value.before_seq;
    if before_seq == 0 {
        return Err(ApiError::invalid_field(
            "before_seq",
            "before_seq must be at least 1",
        ));
    }
    let pruned = state.tally.prune_history(before_seq).await?;
    Ok(Json(json!({
        "segments": pruned.segments,
        "records": pruned.records,
        "accounts": pruned.accounts,
        "pruned_through": pruned.pruned_through,
    })))
}

// ---------------------------------------------------------------------------------------------
// API keys

/// `POST /v1/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `admin` or `service`.
    #[schema(pattern = "^(admin|service)$")]
    pub scope: String,
    /// For a service key: the app (a revenue account) it is bound to.
    #[serde(default)]
    pub app: Option<String>,
    /// A label for people.
    #[serde(default)]
    pub label: String,
    /// Lifetime in seconds (none: until revoked).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// Creates an API key. The secret is in this answer only; the server keeps its hash.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKey,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: Body<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require_admin()?;
    let req = body.value;
    let (secret, key) = make_key(
        &state,
        &req.scope,
        req.app.as_deref(),
        &req.label,
        req.expires_in_s,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"secret": secret, "key": key_json(&state, &key)})),
    ))
}

/// Creates and stores a key; returns its secret and what was stored.
pub async fn make_key(
    state: &AppState,
    scope: &str,
    app: Option<&str>,
    label: &str,
    expires_in_s: Option<u64>,
) -> Result<(String, ApiKey), ApiError> {
    if label.len() > NAME_BYTES_MAX {
        return Err(ApiError::invalid_field(
            "label",
            format!("label is over {NAME_BYTES_MAX} bytes"),
        ));
    }
    let scope = match (scope, app) {
        ("admin", None) => KeyScope::Admin,
        ("admin", Some(_)) => {
            return Err(ApiError::invalid_field(
                "app",
                "an admin key is not bound to an app",
            ))
        }
        ("service", Some(app)) => {
            let id = state.account(app).await?;
            let account = state.tally.account(id).await?;
            if account.spec.kind != AccountKind::Revenue {
                return Err(ApiError::invalid_field(
                    "app",
                    format!("{app:?} is not a revenue account"),
                ));
            }
            KeyScope::Service { app: id }
        }
        ("service", None) => {
            return Err(ApiError::invalid_field(
                "app",
                "a service key needs its app",
            ))
        }
        (other, _) => {
            return Err(ApiError::invalid_field(
                "scope",
                format!("scope is `admin` or `service`, not {other:?}"),
            ))
        }
    };
    let now = state.now_ms();
    let expires_ms = match expires_in_s {
        Some(0) => {
            return Err(ApiError::invalid_field(
                "expires_in_s",
                "expires_in_s must be positive",
            ))
        }
        Some(s) => Some(
            s.checked_mul(1000)
                .and_then(|ms| now.checked_add(ms))
                .ok_or_else(|| {
                    ApiError::invalid_field("expires_in_s", "expires_in_s is too large")
                })?,
        ),
        None => None,
    };
    let label = label.to_owned();
    let (key, secret) = state
        .registry
        .add_new_key(|id| {
            let secret = new_secret(id);
            let key = ApiKey {
                id,
                hash: hash_secret(&secret),
                scope,
                label,
                created_ms: now,
                expires_ms,
                revoked: false,
            };
            (key, secret)
        })
        .await?;
    Ok((secret, key))
}

/// A key as listed (never its secret).
pub fn key_json(state: &AppState, key: &ApiKey) -> Value {
    let (scope, app) = match &key.scope {
        KeyScope::Admin => ("admin", None),
        KeyScope::Service { app } => ("service", Some(state.name(*app))),
    };
    json!({
        "id": key.id,
        "scope": scope,
        "app": app,
        "label": key.label,
        "created_at_ms": key.created_ms,
        "expires_at_ms": key.expires_ms,
        "revoked": key.revoked,
    })
}

/// Lists API keys (never their secrets).
#[utoipa::path(get, path = "/v1/keys",
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_keys(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let keys: Vec<Value> = state
        .registry
        .keys()
        .iter()
        .map(|k| key_json(&state, k))
        .collect();
    Ok(Json(json!({"keys": keys})))
}

/// Revokes an API key at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn revoke_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    principal.require_admin()?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no API key {id:?}")))?;
    if !state.registry.revoke_key(id).await? {
        return Err(ApiError::not_found(format!("no API key {id}")));
    }
    Ok(Json(json!({"id": id, "revoked": true})))
}

/// The native API's routes, with their OpenAPI descriptions.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_account))
        .routes(routes!(get_balance))
        .routes(routes!(check))
        .routes(routes!(fund))
        .routes(routes!(create_hold))
        .routes(routes!(get_hold))
        .routes(routes!(commit_hold))
        .routes(routes!(commit_estimate))
        .routes(routes!(correct_posting))
        .routes(routes!(void_hold))
        .routes(routes!(extend_hold))
        .routes(routes!(settle_hold))
        .routes(routes!(create_charge))
        .routes(routes!(create_refund))
        .routes(routes!(create_transfer))
        .routes(routes!(batch))
        .routes(routes!(funding_update))
        .routes(routes!(history))
        .routes(routes!(audit))
        .routes(routes!(trail_head))
        .routes(routes!(prune_history))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

// ---------------------------------------------------------------------------------------------
// The seeds' cost service

/// `POST /v1/cost/funding-allowed`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FundingAllowedRequest {
    /// The account.
    pub account: String,
    /// The minimum available, µ¢. Default 100.
    #[serde(default)]
    pub minimum: Option<u64>,
}

/// The seeds' `get_funding_allowed({minimum})`.
#[utoipa::path(post, path = "/v1/cost/funding-allowed", request_body = FundingAllowedRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn cost_funding_allowed(
    State(state): State<AppState>,
    Auth(principal): Auth,
    body: Body<FundingAllowedRequest>,
) -> Result<Json<Value>, ApiError> {
    if let Principal::User { .. } = principal {
        return Err(ApiError::forbidden("this needs an admin or service key"));
    }
    let r = body.value;
    let id = state.account(&r.account).await?;
    if let Some(m) = r.minimum {
        amount_field(m, "minimum")?;
    }
    let allowed = state.tally.funding_allowed(id, r.minimum).await?;
    Ok(Json(json!({
        "account": r.account,
        "minimum": r.minimum.unwrap_or(tally::CHECK_MINIMUM_DEFAULT.get()),
        "allowed": allowed,
    })))
}

/// `POST /v1/cost/record-cost`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordCostRequest {
    /// The user account charged.
    pub account: String,
    /// The app's revenue account credited.
    pub app: String,
    /// The cost, µ¢.
    pub cost: u64,
    /// The endpoint.
    #[serde(default)]
    pub endpoint: String,
}

/// The seeds' `record_cost({cost})`: charge what the work cost (one request in usage).
#[utoipa::path(post, path = "/v1/cost/record-cost", request_body = RecordCostRequest,
    responses((status = 201, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn cost_record_cost(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<RecordCostRequest>,
) -> Response {
    let r = body.value;
    let op = Op::Charge(ChargeRequest {
        account: r.account,
        app: r.app,
        amount: r.cost,
        endpoint: r.endpoint,
        metadata: String::new(),
        usage: Some(UsageBody {
            requests: 1,
            ..UsageBody::default()
        }),
        token: None,
    });
    single(
        state,
        principal,
        headers,
        "POST /v1/cost/record-cost",
        body.digest,
        op,
    )
    .await
}

/// The seeds' `record_funding_update({old_amount, new_amount})`; 409 `funding_mismatch` when
/// `old_amount` is stale.
#[utoipa::path(post, path = "/v1/cost/funding-update", request_body = FundingUpdateRequest,
    responses((status = 200, body = Value), (status = "4XX", body = ErrorBody)),
    security(("bearer" = [])))]
async fn cost_funding_update(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    body: Body<FundingUpdateRequest>,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let s = state.clone();
    idempotency::run(
        &state,
        &principal,
        &headers,
        "POST /v1/cost/funding-update",
        &body.digest,
        1,
        |op| async move {
            let r = body.value;
            funding_update_op(
                &s,
                op,
                &r.account,
                r.from.as_deref(),
                r.old_amount,
                r.new_amount,
            )
            .await
        },
    )
    .await
}

/// The cost service's routes.
pub fn cost_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cost_funding_allowed))
        .routes(routes!(cost_record_cost))
        .routes(routes!(cost_funding_update))
}
