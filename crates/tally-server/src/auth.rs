//! Credentials: the admin key, scoped API keys (stored as BLAKE3 hashes, compared in constant
//! time), and Syft users (HTTP Basic, argon2 password hashes).
//!
//! API keys are 32 random bytes, so a fast hash is enough to store them: nobody can guess
//! one from its hash. Passwords are chosen by people and get argon2id. A verified password is
//! remembered (as a BLAKE3 of email and password, in memory only, for a minute) so that a
//! client sending Basic credentials on every call does not pay argon2 on every call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use parking_lot::Mutex;
use rand::RngExt as _;
use subtle::ConstantTimeEq;
use tally::AccountId;

use crate::error::ApiError;
use crate::registry::{ApiKey, KeyScope};
use crate::AppState;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The admin key, or an API key with admin scope.
    Admin {
        /// The key's id (0 for the admin key).
        key_id: u64,
    },
    /// A service key: one app.
    Service {
        /// The key's id.
        key_id: u64,
        /// The app's revenue account.
        app: AccountId,
    },
    /// A Syft user, by HTTP Basic.
    User {
        /// The email.
        email: String,
        /// Its account.
        account: AccountId,
    },
}

impl Principal {
    /// The scope of its idempotency keys: one principal's key never answers another's request.
    pub fn scope(&self) -> String {
        match self {
            Principal::Admin { key_id } => format!("admin/{key_id}"),
            Principal::Service { key_id, .. } => format!("service/{key_id}"),
            Principal::User { email, .. } => format!("user/{email}"),
        }
    }

    /// Refuses anything but an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            _ => Err(ApiError::forbidden("this needs an admin key")),
        }
    }

    /// Refuses a service key of another app (admins may act for any app).
    pub fn require_app(&self, app: AccountId) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Service { app: own, .. } if *own == app => Ok(()),
            Principal::Service { .. } => Err(ApiError::forbidden(
                "this service key is bound to another app",
            )),
            Principal::User { .. } => {
                Err(ApiError::forbidden("this needs an admin or service key"))
            }
        }
    }
}

/// A new secret API key for `id`: `tk_<id>_<43 base64url characters>`.
pub fn new_secret(id: u64) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!(
        "tk_{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored hash of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

fn key_id(secret: &str) -> Option<u64> {
    let rest = secret.strip_prefix("tk_")?;
    let (id, _) = rest.split_once('_')?;
    id.parse().ok()
}

/// Checks a bearer secret: the admin key, or a stored API key that is neither revoked nor
/// expired.
pub async fn check_bearer(
    state: &AppState,
    secret: &str,
    now_ms: u64,
) -> Result<Principal, ApiError> {
    let hash = hash_secret(secret);
    if bool::from(hash.ct_eq(&state.admin_hash)) {
        return Ok(Principal::Admin { key_id: 0 });
    }
    let refused = || ApiError::unauthenticated("the API key is not valid");
    let id = key_id(secret).ok_or_else(refused)?;
    let key: ApiKey = state.registry.key_fresh(id).await?.ok_or_else(refused)?;
    if !bool::from(key.hash.ct_eq(&hash)) {
        return Err(refused());
    }
    if key.revoked {
        return Err(ApiError::unauthenticated("the API key was revoked"));
    }
    if key.expires_ms.is_some_and(|at| at <= now_ms) {
        return Err(ApiError::unauthenticated("the API key has expired"));
    }
    Ok(match key.scope {
        KeyScope::Admin => Principal::Admin { key_id: key.id },
        KeyScope::Service { app } => Principal::Service {
            key_id: key.id,
            app,
        },
    })
}

/// The argon2id hash of a password (PHC string).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ApiError::internal(format!("making a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing a password: {e}")))
}

/// Passwords verified recently, by BLAKE3(email ‖ 0 ‖ password ‖ 0 ‖ stored hash), with when
/// they expire.
#[derive(Default)]
pub struct PasswordCache {
    verified: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

/// How long a verified password is remembered.
const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many verified passwords are remembered.
const PASSWORD_CACHE_MAX: usize = 10_000;

impl PasswordCache {
    /// Over the stored hash too, so that a password changed on another node (sharing the
    /// registry) is no longer taken once the change reaches this one.
    fn key(email: &str, password: &str, stored_hash: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(email.as_bytes());
        h.update(&[0]);
        h.update(password.as_bytes());
        h.update(&[0]);
        h.update(stored_hash.as_bytes());
        *h.finalize().as_bytes()
    }

    /// Forgets every remembered password of `email` (after a password change).
    pub fn forget(&self, email: &str) {
        self.verified.lock().retain(|_, (_, e)| e != email);
    }
}

/// Checks HTTP Basic credentials of a Syft user.
pub async fn check_basic(state: &AppState, value: &str) -> Result<Principal, ApiError> {
    let refused = || ApiError::unauthenticated("invalid email or password");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| ApiError::unauthenticated("malformed Basic credentials"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| ApiError::unauthenticated("malformed Basic credentials"))?;
    let (email, password) = text
        .split_once(':')
        .ok_or_else(|| ApiError::unauthenticated("malformed Basic credentials"))?;
    let user = state
        .registry
        .user_fresh(email)
        .await?
        .ok_or_else(refused)?;
    let cache_key = PasswordCache::key(email, password, &user.password_hash);
    {
        let cache = state.passwords.verified.lock();
        if let Some((until, _)) = cache.get(&cache_key) {
            if *until > Instant::now() {
                return Ok(Principal::User {
                    email: user.email,
                    account: user.account,
                });
            }
        }
    }
    let _slot = argon2_slot(state)?;
    let hash = user.password_hash.clone();
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ApiError::internal(format!("verifying a password: {e}")))?;
    if !ok {
        return Err(refused());
    }
    let mut cache = state.passwords.verified.lock();
    if cache.len() >= PASSWORD_CACHE_MAX {
        let now = Instant::now();
        cache.retain(|_, (until, _)| *until > now);
        if cache.len() >= PASSWORD_CACHE_MAX {
            cache.clear();
        }
    }
    cache.insert(
        cache_key,
        (Instant::now() + PASSWORD_CACHE_TTL, user.email.clone()),
    );
    Ok(Principal::User {
        email: user.email,
        account: user.account,
    })
}

/// A slot for one argon2 computation: at most [`ARGON2_AT_ONCE`] run at once (each takes tens of
/// ms and 19 MiB), so wrong passwords cannot exhaust the CPUs or the memory; past it a caller
/// is 503 `overloaded` at once.
pub fn argon2_slot(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state.argon2.try_acquire().map_err(|_| {
        ApiError::overloaded("too many password checks are running; retry shortly")
            .with("scope", "password checks")
            .with("limit", ARGON2_AT_ONCE)
    })
}

/// Password hashes computed or verified at once.
pub const ARGON2_AT_ONCE: usize = 4;

/// The `Authorization` header's scheme and value.
pub fn authorization(parts: &Parts) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("the Authorization header has no scheme"))?;
    Ok(Some((scheme.to_ascii_lowercase(), rest.trim().to_owned())))
}

/// The native API's credential: `Authorization: Bearer <key>`, or, for a read, a dashboard
/// session's cookie ([`crate::session`]).
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match authorization(parts)? {
            Some((scheme, secret)) if scheme == "bearer" => {
                check_bearer(state, &secret, state.now_ms()).await.map(Auth)
            }
            Some(_) => Err(ApiError::unauthenticated(
                "the native API takes `Authorization: Bearer <key>`",
            )),
            None => match crate::session::cookie(&parts.headers) {
                Some(secret) => {
                    let session = crate::session::principal(state, &secret, state.now_ms())?;
                    if parts.method != axum::http::Method::GET
                        && parts.method != axum::http::Method::HEAD
                    {
                        return Err(ApiError::new(
                            axum::http::StatusCode::FORBIDDEN,
                            "session_read_only",
                            "a dashboard session reads; a write takes `Authorization: Bearer <key>`",
                        ));
                    }
                    Ok(Auth(session.principal))
                }
                None => Err(ApiError::unauthenticated("an API key is required")),
            },
        }
    }
}
