//! The Syft accounting APIs: `/syft/v1` (what `syft-accounting-sdk` 0.1.1 calls) and
//! `/syft/v2` (what the accounting client of `syfthub-sdk` 0.3.1 calls), read from both
//! packages' sources and matched field for field.
//!
//! - Users are user accounts named by their email, with an argon2id password hash; users
//!   authenticate with HTTP Basic, the operator with `Bearer <admin key>`.
//! - A PENDING transaction is a hold on the sender payable to the recipient (another user);
//!   confirm posts it (COMPLETED), cancel voids it (CANCELLED), its timeout expires it
//!   (CANCELLED by SYSTEM).
//! - A delegation token is an HS256 JWT (`id`, `senderEmail`, `recipientEmail`, `iat`, `exp`)
//!   signed with a secret kept in the data directory; it lets the recipient it names create
//!   transactions on the sender's account until it expires, as many times as it likes.
//! - Amounts arrive as JSON floats in USD: the number's decimal text is converted exactly
//!   (1 USD = 10^8 µ¢); finer than 1 µ¢, zero, negative, or not a number is 422. Balances
//!   and amounts go back as exact decimals.
//! - v1 wraps every answer (`{"user": …}`) and spells enums in upper case; v2 answers bare
//!   objects and lists and spells them in lower case. Errors are JSON with `detail` (what v2
//!   shows) beside the native `error` object.

use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tally::{AccountId, Command, HoldId, Outcome, Request};

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::registry::{Party, Txn, TxnStatus, User};
use crate::v1::{check_name, hold_str, open_named, parse_hold, Kind};
use crate::AppState;

/// µ¢ per US dollar.
const UNIT: u128 = 100_000_000;

/// An error as the Syft clients read it: `detail` for v2, the native `error` object beside.
pub struct SyftError(pub ApiError);

impl From<ApiError> for SyftError {
    fn from(e: ApiError) -> Self {
        SyftError(e)
    }
}

impl IntoResponse for SyftError {
    fn into_response(self) -> Response {
        let mut body = self.0.body();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("detail".into(), self.0.message.clone().into());
        }
        let mut response = (self.0.status, axum::Json(body)).into_response();
        crate::error::set_retry_after(&mut response, self.0.retry_after_s);
        crate::error::mark_not_owner(&mut response, &self.0);
        response
    }
}

type SyftResult<T> = Result<T, SyftError>;

/// A request body's bytes, its rejection (too large: 413 `body_too_large`) as a Syft error.
pub struct SyftBytes(Bytes);

impl std::ops::Deref for SyftBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl<S: Send + Sync> FromRequest<S> for SyftBytes {
    type Rejection = SyftError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, SyftError> {
        Bytes::from_request(req, state)
            .await
            .map(SyftBytes)
            .map_err(|e| {
                let status = e.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else {
                    "invalid_body"
                };
                SyftError(ApiError::new(status, code, e.body_text()))
            })
    }
}

fn unprocessable(field: &str, message: impl Into<String>) -> SyftError {
    SyftError(
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            .with("field", field),
    )
}

/// Converts a JSON number's text in USD to µ¢ exactly: `10`, `0.01`, `1e-08`, `1.5E+2`.
/// Finer than 1 µ¢, zero, negative, or not a plain number is refused with the reason.
pub fn usd_to_microcents(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!("amount must be positive, not {t}"));
    }
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, "0"),
    };
    let exponent: i64 = exponent
        .parse()
        .map_err(|_| format!("amount {t} is not a decimal number"))?;
    if !(-400..=400).contains(&exponent) {
        return Err(format!("amount {t} is out of range"));
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("amount {t} is not a decimal number"));
    }
    let mut digits: String = format!("{int}{frac}").trim_start_matches('0').to_owned();
    // µ¢ = digits × 10^(8 + exponent − len(frac))
    let mut scale = 8 + exponent - frac.len() as i64;
    while digits.ends_with('0') {
        digits.pop();
        scale += 1;
    }
    if digits.is_empty() {
        return Err("amount must be greater than zero".into());
    }
    if scale < 0 {
        return Err(format!(
            "amount {t} USD is finer than 1 microcent (8 decimal places of a dollar)"
        ));
    }
    let too_large = || format!("amount {t} USD is larger than the ledger's maximum");
    if digits.len() > 19 || scale > 19 {
        return Err(too_large());
    }
    let base: u128 = digits.parse().map_err(|_| too_large())?;
    let value = 10u128
        .checked_pow(scale as u32)
        .and_then(|p| base.checked_mul(p))
        .ok_or_else(too_large)?;
    if value > u128::from(tally::Amount::MAX.get()) {
        return Err(too_large());
    }
    u64::try_from(value).map_err(|_| too_large())
}

/// µ¢ as an exact decimal number of USD: `1050000000` → `10.5`.
pub fn microcents_to_usd(value: i128) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let v = value.unsigned_abs();
    let (whole, frac) = (v / UNIT, v % UNIT);
    if frac == 0 {
        format!("{sign}{whole}.0")
    } else {
        let frac = format!("{frac:08}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| {
        // Unreachable: the decimal text above is always a valid JSON number.
        RawValue::from_string("0".into()).unwrap_or_default()
    })
}

/// RFC 3339 UTC with milliseconds, from ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> SyftResult<T> {
    // First strictly (an object, no key twice, no arrays: no Syft request has one), then into
    // the request type, whose amounts keep their exact decimal text.
    let value = crate::json::parse_value(bytes).map_err(|e| {
        let structural =
            e.message.contains("recursion limit") || e.message.contains("out of range");
        if e.code == "malformed_json" && !structural {
            SyftError(e)
        } else if e.code == "malformed_json" {
            // Well-formed text the parser will not hold (too deep, a number beyond range).
            unprocessable("body", e.message)
        } else {
            // Well-formed JSON that is not a request: a validation error, as FastAPI answers.
            let mut err = e;
            err.status = StatusCode::UNPROCESSABLE_ENTITY;
            SyftError(err)
        }
    })?;
    crate::json::no_stray_arrays(&value, "", &[]).map_err(|e| unprocessable("body", e.message))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            SyftError(
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("the body is not valid JSON: {inner}"),
                )
                .with("line", inner.line())
                .with("column", inner.column()),
            )
        } else {
            let field = if path == "." { "body".to_owned() } else { path };
            unprocessable(&field, format!("{field}: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        SyftError(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("trailing characters after the JSON body: {e}"),
        ))
    })?;
    Ok(value)
}

fn amount_of(raw: &RawValue) -> SyftResult<u64> {
    let text = raw.get();
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        return Err(unprocessable(
            "amount",
            format!("amount must be a number, not {text}"),
        ));
    }
    usd_to_microcents(text).map_err(|m| unprocessable("amount", m))
}

// ---------------------------------------------------------------------------------------------
// Credentials

async fn basic_user(state: &AppState, headers: &HeaderMap) -> SyftResult<(String, AccountId)> {
    match scheme(headers)? {
        Some((s, value)) if s == "basic" => match auth::check_basic(state, &value).await? {
            Principal::User { email, account } => Ok((email, account)),
            _ => Err(ApiError::unauthenticated("invalid email or password").into()),
        },
        Some(_) => {
            Err(ApiError::unauthenticated("this call takes HTTP Basic (email, password)").into())
        }
        None => Err(ApiError::unauthenticated("HTTP Basic credentials are required").into()),
    }
}

async fn admin(state: &AppState, headers: &HeaderMap) -> SyftResult<()> {
    match scheme(headers)? {
        Some((s, secret)) if s == "bearer" => {
            auth::check_bearer(state, &secret, state.now_ms())
                .await?
                .require_admin()?;
            Ok(())
        }
        Some(_) => Err(ApiError::unauthenticated("this call takes `Bearer <admin key>`").into()),
        None => Err(ApiError::unauthenticated("the admin key is required").into()),
    }
}

fn scheme(headers: &HeaderMap) -> SyftResult<Option<(String, String)>> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not ASCII"))?;
    let (s, rest) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("the Authorization header has no scheme"))?;
    Ok(Some((s.to_ascii_lowercase(), rest.trim().to_owned())))
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Serialize)]
struct UserOut {
    id: String,
    email: String,
    balance: Box<RawValue>,
    organization: Option<String>,
}

async fn user_out(state: &AppState, user: &User) -> SyftResult<UserOut> {
    let b = state
        .tally
        .balance(user.account)
        .await
        .map_err(ApiError::from)?;
    Ok(UserOut {
        id: user.account.0.to_string(),
        email: user.email.clone(),
        balance: raw(microcents_to_usd(b.available)),
        organization: user.organization.clone(),
    })
}

fn json_out<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            SyftError(ApiError::internal(format!("encoding the answer: {e}"))).into_response()
        }
    }
}

fn check_email(email: &str) -> SyftResult<()> {
    check_name(email, "email")?;
    let ok = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    });
    if !ok || email.chars().any(char::is_whitespace) {
        return Err(unprocessable(
            "email",
            format!("{email:?} is not an email address"),
        ));
    }
    Ok(())
}

fn check_password(password: &str, field: &str) -> SyftResult<()> {
    if password.len() < 8 || password.len() > 256 {
        return Err(unprocessable(
            field,
            format!("{field} must be 8 to 256 bytes"),
        ));
    }
    Ok(())
}

fn check_organization(org: &Option<String>) -> SyftResult<()> {
    if org.as_ref().is_some_and(|o| o.len() > 128) {
        return Err(unprocessable(
            "organization",
            "organization is over 128 bytes",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    organization: Option<String>,
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) || !state.config.open_signup {
        admin(&state, &headers).await?;
    }
    let req: CreateUser = parse_body(&body)?;
    check_email(&req.email)?;
    if req.email.starts_with("tally:") {
        return Err(SyftError(ApiError::invalid_field(
            "email",
            "names starting with `tally:` are reserved",
        )));
    }
    check_organization(&req.organization)?;
    let password = match req.password {
        Some(p) => {
            check_password(&p, "password")?;
            p
        }
        None => random_password(),
    };
    // A name already mapped (a native account, or a Syft user) is never taken over by a
    // sign-up: that would hand its funds to whoever signs up first. A name mapped whose
    // account was never opened (a sign-up or an open cut short: by a crash, or refused by a
    // node that does not serve its shard before going on to the one that does) is taken up.
    let taken = match state.registry.user_fresh(&req.email).await? {
        Some(_) => true,
        None => match state.registry.account(&req.email) {
            None => false,
            Some(id) => match state.tally.account(id).await {
                Ok(_) => true,
                Err(tally::Error::Ledger(tally_core::Error::UnknownAccount { .. })) => false,
                Err(e) => return Err(SyftError(e.into())),
            },
        },
    };
    if taken {
        return Err(SyftError(
            ApiError::new(
                StatusCode::CONFLICT,
                "user_exists",
                format!("user {} already exists", req.email),
            )
            .with("email", req.email),
        ));
    }
    let hash = hash_blocking(&state, password.clone()).await?;
    let account = open_named(&state, &req.email, Kind::User, 0).await?;
    let user = User {
        email: req.email.clone(),
        account,
        password_hash: hash,
        organization: req.organization,
        created_ms: state.now_ms(),
    };
    if !state.registry.add_user(user.clone()).await? {
        return Err(SyftError(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            format!("user {} already exists", req.email),
        )));
    }
    #[derive(Serialize)]
    struct Created {
        user: UserOut,
        password: String,
    }
    let out = Created {
        user: user_out(&state, &user).await?,
        password,
    };
    Ok(json_out(StatusCode::CREATED, &out))
}

async fn hash_blocking(state: &AppState, password: String) -> SyftResult<String> {
    let _slot = auth::argon2_slot(state)?;
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(format!("hashing a password: {e}")))?
        .map_err(SyftError)
}

async fn user_named(state: &AppState, email: &str) -> SyftResult<User> {
    state.registry.user_fresh(email).await?.ok_or_else(|| {
        SyftError(
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_user",
                format!("no user {email}"),
            )
            .with("email", email),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct AddBalance {
    recipient_email: String,
    amount: Box<RawValue>,
}

async fn add_balance(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    admin(&state, &headers).await?;
    let req: AddBalance = parse_body(&body)?;
    let amount = amount_of(&req.amount)?;
    let user = user_named(&state, &req.recipient_email).await?;
    let request = Request {
        op: state.registry.fresh_op(),
        command: Command::Fund {
            from: crate::FUNDING_ACCOUNT,
            amount: tally::Amount::new(amount).map_err(ApiError::from)?,
        },
        origin: tally::Origin::new("syft", "admin", user.email.as_str()),
    };
    state
        .tally
        .execute(user.account, request)
        .await
        .map_err(ApiError::from)?;
    wrapped_user(&state, &user).await
}

async fn wrapped_user(state: &AppState, user: &User) -> SyftResult<Response> {
    #[derive(Serialize)]
    struct Wrapped {
        user: UserOut,
    }
    Ok(json_out(
        StatusCode::OK,
        &Wrapped {
            user: user_out(state, user).await?,
        },
    ))
}

async fn v1_my_info(State(state): State<AppState>, headers: HeaderMap) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    wrapped_user(&state, &user_named(&state, &email).await?).await
}

async fn v1_get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(email): Path<String>,
) -> SyftResult<Response> {
    admin(&state, &headers).await?;
    wrapped_user(&state, &user_named(&state, &email).await?).await
}

async fn v1_users(State(state): State<AppState>, headers: HeaderMap) -> SyftResult<Response> {
    admin(&state, &headers).await?;
    #[derive(Serialize)]
    struct Users {
        users: Vec<UserOut>,
    }
    let mut users = Vec::new();
    for u in state.registry.users() {
        users.push(user_out(&state, &u).await?);
    }
    Ok(json_out(StatusCode::OK, &Users { users }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdatePassword {
    old_password: String,
    new_password: String,
}

async fn update_password(state: &AppState, headers: &HeaderMap, body: &[u8]) -> SyftResult<User> {
    let (email, _) = basic_user(state, headers).await?;
    let req: UpdatePassword = parse_body(body)?;
    check_password(&req.new_password, "newPassword")?;
    let user = user_named(state, &email).await?;
    let stored = user.password_hash.clone();
    let old = req.old_password.clone();
    let slot = auth::argon2_slot(state)?;
    let ok = tokio::task::spawn_blocking(move || {
        use argon2::{Argon2, PasswordHash, PasswordVerifier};
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(old.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::internal(format!("verifying a password: {e}")))?;
    drop(slot);
    if !ok {
        return Err(SyftError(ApiError::forbidden("the old password is wrong")));
    }
    let hash = hash_blocking(state, req.new_password).await?;
    state.registry.set_password(&email, hash).await?;
    state.passwords.forget(&email);
    user_named(state, &email).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateOrganization {
    organization: Option<String>,
}

async fn update_organization(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> SyftResult<User> {
    let (email, _) = basic_user(state, headers).await?;
    let req: UpdateOrganization = parse_body(body)?;
    check_organization(&req.organization)?;
    state
        .registry
        .set_organization(&email, req.organization)
        .await?;
    user_named(state, &email).await
}

async fn v1_update_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let user = update_password(&state, &headers, &body).await?;
    wrapped_user(&state, &user).await
}

async fn v1_update_organization(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let user = update_organization(&state, &headers, &body).await?;
    wrapped_user(&state, &user).await
}

async fn v2_user(State(state): State<AppState>, headers: HeaderMap) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let out = user_out(&state, &user_named(&state, &email).await?).await?;
    Ok(json_out(StatusCode::OK, &out))
}

async fn v2_update_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let user = update_password(&state, &headers, &body).await?;
    Ok(json_out(StatusCode::OK, &user_out(&state, &user).await?))
}

async fn v2_update_organization(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let user = update_organization(&state, &headers, &body).await?;
    Ok(json_out(StatusCode::OK, &user_out(&state, &user).await?))
}

// ---------------------------------------------------------------------------------------------
// Delegation tokens

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    id: String,
    sender_email: String,
    recipient_email: String,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateToken {
    recipient_email: String,
}

async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let req: CreateToken = parse_body(&body)?;
    user_named(&state, &req.recipient_email).await?;
    if req.recipient_email == email {
        return Err(unprocessable(
            "recipientEmail",
            "a token for yourself would let you pay yourself",
        ));
    }
    let now_s = state.now_ms() / 1000;
    let mut id = [0u8; 16];
    rand::rng().fill(&mut id);
    let claims = Claims {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        sender_email: email,
        recipient_email: req.recipient_email,
        iat: now_s,
        exp: now_s.saturating_add(state.config.token_lifetime_s),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&state.jwt_secret),
    )
    .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    Ok(json_out(
        StatusCode::OK,
        &serde_json::json!({ "token": token }),
    ))
}

/// Checks a delegation token: signed by this server, not expired, naming `sender` (when
/// given) and, when given, `recipient`. Returns its claims.
fn verify_token(
    state: &AppState,
    token: &str,
    sender: &str,
    recipient: Option<&str>,
) -> SyftResult<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked against the engine's clock below (tests move it).
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(&state.jwt_secret),
        &validation,
    )
    .map_err(|e| ApiError::unauthenticated(format!("the delegation token is not valid: {e}")))?
    .claims;
    if claims.exp.saturating_mul(1000) <= state.now_ms() {
        return Err(ApiError::unauthenticated("the delegation token has expired").into());
    }
    if claims.sender_email != sender {
        return Err(ApiError::forbidden(format!(
            "the delegation token is for spending {}'s funds, not {sender}'s",
            claims.sender_email
        ))
        .into());
    }
    if let Some(r) = recipient {
        if claims.recipient_email != r {
            return Err(ApiError::forbidden(format!(
                "the delegation token was issued to {}, not {r}",
                claims.recipient_email
            ))
            .into());
        }
    }
    Ok(claims)
}

// ---------------------------------------------------------------------------------------------
// Transactions

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    V1,
    V2,
}

fn party_str(p: Party, d: Dialect) -> &'static str {
    match (p, d) {
        (Party::System, Dialect::V1) => "SYSTEM",
        (Party::Sender, Dialect::V1) => "SENDER",
        (Party::Recipient, Dialect::V1) => "RECIPIENT",
        (Party::System, Dialect::V2) => "system",
        (Party::Sender, Dialect::V2) => "sender",
        (Party::Recipient, Dialect::V2) => "recipient",
    }
}

fn status_str(s: TxnStatus, d: Dialect) -> &'static str {
    match (s, d) {
        (TxnStatus::Pending, Dialect::V1) => "PENDING",
        (TxnStatus::Completed, Dialect::V1) => "COMPLETED",
        (TxnStatus::Cancelled, Dialect::V1) => "CANCELLED",
        (TxnStatus::Pending, Dialect::V2) => "pending",
        (TxnStatus::Completed, Dialect::V2) => "completed",
        (TxnStatus::Cancelled, Dialect::V2) => "cancelled",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TxnOut {
    id: String,
    sender_email: String,
    recipient_email: String,
    amount: Box<RawValue>,
    status: &'static str,
    created_by: &'static str,
    resolved_by: Option<&'static str>,
    created_at: String,
    resolved_at: Option<String>,
    app_name: Option<String>,
    app_ep_path: Option<String>,
}

/// Where a transaction stands now: its recorded resolution, else its hold's status (a hold
/// past its timeout reads as expired, so as CANCELLED by SYSTEM).
async fn standing(state: &AppState, t: &Txn) -> (TxnStatus, Option<Party>, Option<u64>) {
    if let Some((status, by, at)) = t.resolved {
        return (status, Some(by), Some(at));
    }
    match state.tally.get_hold(t.hold).await {
        Ok(h) => match h.status {
            tally::HoldStatus::Pending => (TxnStatus::Pending, None, None),
            tally::HoldStatus::Posted => (
                TxnStatus::Completed,
                Some(t.created_by),
                h.resolved_at.map(|x| x.0),
            ),
            tally::HoldStatus::Voided => (
                TxnStatus::Cancelled,
                Some(t.created_by),
                h.resolved_at.map(|x| x.0),
            ),
            tally::HoldStatus::Expired => (
                TxnStatus::Cancelled,
                Some(Party::System),
                Some(h.resolved_at.unwrap_or(h.expires_at).0),
            ),
        },
        // Forgotten by the ledger (past its retained resolved holds) without a recorded
        // resolution: it can only have expired.
        Err(tally::Error::Ledger(tally::LedgerError::UnknownHold { .. })) => {
            (TxnStatus::Cancelled, Some(Party::System), None)
        }
        // Overloaded, unavailable, storage: say nothing new rather than something false.
        Err(_) => (TxnStatus::Pending, None, None),
    }
}

async fn txn_out(state: &AppState, t: &Txn, d: Dialect) -> TxnOut {
    let (status, by, at) = standing(state, t).await;
    TxnOut {
        id: hold_str(t.hold),
        sender_email: t.sender.clone(),
        recipient_email: t.recipient.clone(),
        amount: raw(microcents_to_usd(i128::from(t.amount))),
        status: status_str(status, d),
        created_by: party_str(t.created_by, d),
        resolved_by: by.map(|p| party_str(p, d)),
        created_at: rfc3339(t.created_ms),
        resolved_at: at.map(rfc3339),
        app_name: t.app_name.clone(),
        app_ep_path: t.app_ep_path.clone(),
    }
}

/// Holds `amount` of the sender payable to the recipient and records the transaction.
async fn create_txn(
    state: &AppState,
    sender: &str,
    recipient: &str,
    amount: u64,
    created_by: Party,
    app_name: Option<String>,
    app_ep_path: Option<String>,
) -> SyftResult<Txn> {
    let s = user_named(state, sender).await?;
    let r = user_named(state, recipient).await?;
    if s.account == r.account {
        return Err(unprocessable(
            "recipientEmail",
            "sender and recipient are the same user",
        ));
    }
    if app_name.as_ref().is_some_and(|a| a.len() > 128) {
        return Err(unprocessable("appName", "appName is over 128 bytes"));
    }
    let timeout_ms = state.config.transaction_timeout_s.saturating_mul(1000);
    let request = Request {
        op: state.registry.fresh_op(),
        command: Command::Reserve {
            app: r.account,
            amount: tally::Amount::new(amount).map_err(ApiError::from)?,
            timeout_ms,
            endpoint: app_ep_path.clone().unwrap_or_default(),
            metadata: app_name.clone().unwrap_or_default(),
            token: None,
        },
        origin: tally::Origin::new("syft", recipient, sender),
    };
    let hold = match state
        .tally
        .execute(s.account, request)
        .await
        .map_err(ApiError::from)?
    {
        Outcome::Reserved { hold, .. } => hold,
        other => return Err(ApiError::internal(format!("unexpected outcome {other:?}")).into()),
    };
    let txn = Txn {
        hold,
        sender: s.email,
        recipient: r.email,
        amount,
        created_by,
        created_ms: state.now_ms(),
        app_name,
        app_ep_path,
        resolved: None,
        expires_ms: state.now_ms().saturating_add(timeout_ms),
    };
    if let Err(e) = state.registry.add_txn(txn.clone()).await {
        // Unrecorded, the hold would be invisible to Syft and lock the sender's funds until its
        // timeout: release it (best effort; if that fails too, the timeout releases it).
        if let Err(void) = state.tally.void(state.registry.fresh_op(), hold).await {
            tracing::warn!(error = %void, %hold, "releasing an unrecorded Syft hold failed");
        }
        return Err(e.into());
    }
    Ok(txn)
}

async fn txn_for(state: &AppState, id: &str, email: &str) -> SyftResult<(HoldId, Txn, Party)> {
    let not_found = || {
        SyftError(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_transaction",
            format!("no transaction {id:?}"),
        ))
    };
    let hold = parse_hold(id).map_err(|_| not_found())?;
    let t = state
        .registry
        .txn_fresh(hold)
        .await?
        .ok_or_else(not_found)?;
    let party = if t.sender == email {
        Party::Sender
    } else if t.recipient == email {
        Party::Recipient
    } else {
        // Another user's transaction does not exist, as far as this caller can tell.
        return Err(not_found());
    };
    Ok((hold, t, party))
}

#[derive(Clone, Copy)]
enum Resolve {
    Confirm,
    Cancel,
}

/// Confirms (posts) or cancels (voids) a transaction. Only its creator confirms it; either
/// party may cancel it while it is pending.
async fn resolve(state: &AppState, email: &str, id: &str, how: Resolve) -> SyftResult<Txn> {
    let (hold, t, party) = txn_for(state, id, email).await?;
    if matches!(how, Resolve::Confirm) && party != t.created_by {
        return Err(
            ApiError::forbidden("only the party that created a transaction confirms it").into(),
        );
    }
    let op = state.registry.fresh_op();
    let command = match how {
        Resolve::Confirm => Command::Commit {
            hold,
            amount: tally::Amount::new(t.amount).map_err(ApiError::from)?,
            usage: tally::Usage {
                requests: 1,
                ..tally::Usage::default()
            },
        },
        Resolve::Cancel => Command::Void { hold },
    };
    let request = Request {
        op,
        command,
        origin: tally::Origin::new("syft", t.recipient.as_str(), t.sender.as_str()),
    };
    state
        .tally
        .execute(hold.account, request)
        .await
        .map_err(|e| SyftError(ApiError::from(e)))?;
    let status = match how {
        Resolve::Confirm => TxnStatus::Completed,
        Resolve::Cancel => TxnStatus::Cancelled,
    };
    state
        .registry
        .resolve_txn(hold, status, party, state.now_ms())
        .await?;
    state
        .registry
        .txn(hold)
        .ok_or_else(|| ApiError::internal("the transaction vanished").into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V1CreateTxn {
    sender_email: String,
    recipient_email: String,
    amount: Box<RawValue>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    app_ep_path: Option<String>,
}

async fn wrapped_txn(state: &AppState, t: &Txn, status: StatusCode) -> Response {
    #[derive(Serialize)]
    struct Wrapped {
        transaction: TxnOut,
    }
    json_out(
        status,
        &Wrapped {
            transaction: txn_out(state, t, Dialect::V1).await,
        },
    )
}

async fn v1_create_txn(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let req: V1CreateTxn = parse_body(&body)?;
    let amount = amount_of(&req.amount)?;
    let created_by = match &req.token {
        Some(token) => {
            if req.recipient_email != email {
                return Err(ApiError::forbidden(
                    "a delegated transaction is created by its recipient",
                )
                .into());
            }
            verify_token(&state, token, &req.sender_email, Some(&email))?;
            Party::Recipient
        }
        None => {
            if req.sender_email != email {
                return Err(ApiError::forbidden(
                    "spending another user's funds needs their delegation token",
                )
                .into());
            }
            Party::Sender
        }
    };
    let t = create_txn(
        &state,
        &req.sender_email,
        &req.recipient_email,
        amount,
        created_by,
        req.app_name,
        req.app_ep_path,
    )
    .await?;
    Ok(wrapped_txn(&state, &t, StatusCode::CREATED).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TxnIdBody {
    transaction_id: String,
}

async fn v1_resolve(
    state: AppState,
    headers: HeaderMap,
    body: SyftBytes,
    how: Resolve,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let req: TxnIdBody = parse_body(&body)?;
    let t = resolve(&state, &email, &req.transaction_id, how).await?;
    Ok(wrapped_txn(&state, &t, StatusCode::OK).await)
}

async fn v1_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    v1_resolve(state, headers, body, Resolve::Confirm).await
}

async fn v1_cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    v1_resolve(state, headers, body, Resolve::Cancel).await
}

/// A user's transactions are listed at most this many at a time (v1 has no paging; v2's
/// `limit` is capped here).
const TRANSACTIONS_PAGE_MAX: usize = 10_000;

async fn v1_transactions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    #[derive(Serialize)]
    struct List {
        transactions: Vec<TxnOut>,
    }
    let mut transactions = Vec::new();
    for t in state.registry.txns_of(&email, 0, TRANSACTIONS_PAGE_MAX) {
        transactions.push(txn_out(&state, &t, Dialect::V1).await);
    }
    Ok(json_out(StatusCode::OK, &List { transactions }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    skip: usize,
    #[serde(default)]
    limit: Option<usize>,
}

async fn v2_transactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::json::QueryParams(page): crate::json::QueryParams<Page>,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let limit = page.limit.unwrap_or(100);
    if limit == 0 || limit > TRANSACTIONS_PAGE_MAX {
        return Err(unprocessable(
            "limit",
            format!("limit must be 1 to {TRANSACTIONS_PAGE_MAX}"),
        ));
    }
    let mut out = Vec::new();
    for t in state.registry.txns_of(&email, page.skip, limit) {
        out.push(txn_out(&state, &t, Dialect::V2).await);
    }
    Ok(json_out(StatusCode::OK, &out))
}

async fn v2_transaction(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let (_, t, _) = txn_for(&state, &id, &email).await?;
    Ok(json_out(
        StatusCode::OK,
        &txn_out(&state, &t, Dialect::V2).await,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct V2CreateTxn {
    #[serde(default)]
    sender_email: Option<String>,
    #[serde(default)]
    recipient_email: Option<String>,
    amount: Box<RawValue>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    app_ep_path: Option<String>,
}

/// `POST /transactions`: with Basic, a direct payment by the caller; with `Bearer <token>`,
/// a delegated one for the token's recipient. A delegated create that arrives with Basic and
/// no token (what syfthub-sdk 0.3.1 sends as shipped) is refused: nothing authorizes
/// spending the sender's money.
async fn v2_create_txn(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: SyftBytes,
) -> SyftResult<Response> {
    let bearer = match scheme(&headers)? {
        Some((s, token)) if s == "bearer" => Some(token),
        _ => None,
    };
    let req: V2CreateTxn = match &bearer {
        // Authenticate before reading the body, as every other route does.
        Some(_) => parse_body(&body)?,
        None => {
            basic_user(&state, &headers).await?;
            parse_body(&body)?
        }
    };
    let amount = amount_of(&req.amount)?;
    let t = match bearer {
        Some(token) => {
            let sender = req.sender_email.ok_or_else(|| {
                unprocessable(
                    "senderEmail",
                    "a delegated transaction names its senderEmail",
                )
            })?;
            let claims = verify_token(&state, &token, &sender, req.recipient_email.as_deref())?;
            create_txn(
                &state,
                &sender,
                &claims.recipient_email,
                amount,
                Party::Recipient,
                req.app_name,
                req.app_ep_path,
            )
            .await?
        }
        None => {
            let (email, _) = basic_user(&state, &headers).await?;
            match (req.sender_email, req.recipient_email) {
                (Some(sender), None) if sender != email => {
                    return Err(ApiError::forbidden(
                        "spending another user's funds needs their delegation token as `Authorization: Bearer <token>`",
                    )
                    .into())
                }
                (sender, Some(recipient)) => {
                    if sender.is_some_and(|s| s != email) {
                        return Err(ApiError::forbidden(
                            "spending another user's funds needs their delegation token",
                        )
                        .into());
                    }
                    create_txn(&state, &email, &recipient, amount, Party::Sender, req.app_name, req.app_ep_path).await?
                }
                (_, None) => return Err(unprocessable("recipientEmail", "recipientEmail is required")),
            }
        }
    };
    Ok(json_out(
        StatusCode::CREATED,
        &txn_out(&state, &t, Dialect::V2).await,
    ))
}

async fn v2_resolve(
    state: AppState,
    headers: HeaderMap,
    id: String,
    how: Resolve,
) -> SyftResult<Response> {
    let (email, _) = basic_user(&state, &headers).await?;
    let t = resolve(&state, &email, &id, how).await?;
    Ok(json_out(
        StatusCode::OK,
        &txn_out(&state, &t, Dialect::V2).await,
    ))
}

async fn v2_confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> SyftResult<Response> {
    v2_resolve(state, headers, id, Resolve::Confirm).await
}

async fn v2_cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> SyftResult<Response> {
    v2_resolve(state, headers, id, Resolve::Cancel).await
}

/// Both Syft APIs, to be nested under `/syft`.
pub fn routes() -> Router<AppState> {
    let v1 = Router::new()
        .route("/user/create", post(create_user))
        .route("/user/add-balance", post(add_balance))
        // A literal segment wins over a capture in axum's router, so my-info is never taken
        // for an email.
        .route("/user/my-info", get(v1_my_info))
        .route("/user/{email}", get(v1_get_user))
        .route("/users", get(v1_users))
        .route("/user/update-password", put(v1_update_password))
        .route("/user/update-organization", put(v1_update_organization))
        .route("/transaction/create", post(v1_create_txn))
        .route("/transaction/confirm", post(v1_confirm))
        .route("/transaction/cancel", post(v1_cancel))
        .route("/token/create", post(create_token))
        .route("/transactions", get(v1_transactions));
    let v2 = Router::new()
        .route("/user", get(v2_user))
        .route("/user/password", put(v2_update_password))
        .route("/user/organization", put(v2_update_organization))
        .route("/token/create", post(create_token))
        .route("/transactions", get(v2_transactions).post(v2_create_txn))
        .route("/transactions/{id}", get(v2_transaction))
        .route("/transactions/{id}/confirm", post(v2_confirm))
        .route("/transactions/{id}/cancel", post(v2_cancel));
    Router::new().nest("/v1", v1).nest("/v2", v2)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usd_text_converts_exactly_or_is_refused() {
        let ok = [
            ("10", 1_000_000_000),
            ("10.0", 1_000_000_000),
            ("0.01", 1_000_000),
            ("1e-08", 1),
            ("1E-8", 1),
            ("0.00000001", 1),
            ("1.5e+2", 15_000_000_000),
        ];
        for (text, want) in ok {
            assert_eq!(usd_to_microcents(text), Ok(want), "{text}");
        }
        for bad in [
            "0",
            "0.0",
            "-1",
            "1e-09",
            "0.000000001",
            "0.30000000000000004",
            "abc",
            "1e999",
            "",
            ".",
        ] {
            assert!(usd_to_microcents(bad).is_err(), "{bad} should be refused");
        }
        // 2^63 − 1 µ¢ is the largest amount; one more is refused.
        assert_eq!(
            usd_to_microcents("92233720368.54775807"),
            Ok(9_223_372_036_854_775_807)
        );
        assert!(usd_to_microcents("92233720368.54775808").is_err());
    }

    #[test]
    fn microcents_print_as_exact_usd() {
        assert_eq!(microcents_to_usd(1_050_000_000), "10.5");
        assert_eq!(microcents_to_usd(1), "0.00000001");
        assert_eq!(microcents_to_usd(0), "0.0");
        assert_eq!(microcents_to_usd(200_000_000), "2.0");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(1_709_210_096_000), "2024-02-29T12:34:56.000Z");
    }
}
