//! A small client of tally-server's native API (`/v1`): JSON in and out, `Authorization:
//! Bearer`, errors mapped by their JSON `code`.
//!
//! Each [`Api`] is its own hyper client with its own connection pool holding at most one idle
//! connection: a bench client with one request in flight at a time therefore uses exactly one
//! keep-alive HTTP/1.1 connection, reopened only if the server closes it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::stats::INSUFFICIENT_FUNDS;

/// How long one request may take before it is given up (its outcome is then unknown).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The server answered with an error body `{"error": {"code", "message"}}`.
    Answered {
        /// The HTTP status (or, inside a batch, the operation's status).
        status: u16,
        /// The stable code (`insufficient_funds`, `unknown_hold`, ...).
        code: String,
        /// The message, for people.
        message: String,
    },
    /// No answer: the connection failed or was lost, or the request timed out. A write may or
    /// may not have happened.
    Transport(String),
    /// No connection could be made (refused, unreachable): the request was never sent, so
    /// nothing happened (a server restarting after a failover).
    Unsent(String),
    /// An answer this client does not understand (no JSON, no error code, a missing field).
    BadResponse {
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

impl CallError {
    /// The code the statistics count it under: the server's code, `transport` or
    /// `bad_response`.
    pub fn code(&self) -> &str {
        match self {
            CallError::Answered { code, .. } => code,
            CallError::Transport(_) => "transport",
            CallError::Unsent(_) => "unsent",
            CallError::BadResponse { .. } => "bad_response",
        }
    }

    /// The user is out of funds (an answer the load expects).
    pub fn is_insufficient_funds(&self) -> bool {
        self.code() == INSUFFICIENT_FUNDS
    }

    /// The server asked to slow down (503 `overloaded` or 429).
    pub fn is_overloaded(&self) -> bool {
        matches!(self, CallError::Answered { status, code, .. }
            if code == "overloaded" || *status == 429)
    }

    /// Whether the write certainly did not happen: a 4xx answer (the request was refused as
    /// it stood), 503 `overloaded` (refused before it ran) or `not_owner` (the node does not
    /// serve the account: nothing was changed), or a request never sent. Any other failure
    /// leaves the outcome unknown.
    pub fn changed_nothing(&self) -> bool {
        match self {
            CallError::Answered { status, code, .. } => {
                (400..500).contains(status) || code == "overloaded" || code == "not_owner"
            }
            CallError::Unsent(_) => true,
            CallError::Transport(_) | CallError::BadResponse { .. } => false,
        }
    }

    /// The server could not be reached or did not answer (a client backs off a moment).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Transport(_) | CallError::Unsent(_))
    }

    /// The error an operation's `{"error": {...}}` body (or a whole error response) names.
    pub fn from_body(status: u16, body: &Value) -> CallError {
        let error = &body["error"];
        match error["code"].as_str() {
            Some(code) => CallError::Answered {
                status,
                code: code.to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            },
            None => CallError::BadResponse {
                status,
                detail: format!("an error answer without a code: {body}"),
            },
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Answered {
                status,
                code,
                message,
            } => write!(f, "{status} {code}: {message}"),
            CallError::Transport(e) => write!(f, "no answer: {e}"),
            CallError::Unsent(e) => write!(f, "not sent (no connection): {e}"),
            CallError::BadResponse { status, detail } => {
                write!(f, "an answer not understood ({status}): {detail}")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// Where the server is and how to authenticate to it.
#[derive(Debug)]
pub struct Endpoint {
    /// `http://host:port` (and a path prefix, if the URL had one), without a trailing `/`.
    base: String,
    auth: HeaderValue,
}

impl Endpoint {
    /// Parses a base URL (`http://127.0.0.1:8080`, plain HTTP only) and the admin key.
    pub fn new(url: &str, key: &str) -> anyhow::Result<Endpoint> {
        let base = url.trim().trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--http {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            bail!("--http takes a plain http://HOST:PORT URL, not {url:?}");
        }
        if uri.query().is_some() {
            bail!("--http {url:?}: a base URL has no query");
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .context("the admin key is not a valid header value")?;
        auth.set_sensitive(true);
        Ok(Endpoint { base, auth })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// One client of the API with its own connection (see the module's docs).
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Arc<Endpoint>,
}

impl Api {
    /// A client of `endpoint` with its own pool of at most one idle connection.
    pub fn new(endpoint: Arc<Endpoint>) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Api { client, endpoint }
    }

    /// `GET path`; the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.send(Method::GET, path, None, None).await
    }

    /// `POST path` with a JSON body; the JSON body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.post_keyed(path, body, None).await
    }

    /// `POST path` with a JSON body and, if given, an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::BadResponse {
            status: 0,
            detail: format!("encoding the request: {e}"),
        })?;
        self.send(Method::POST, path, Some(bytes), idempotency_key)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, CallError> {
        let uri: Uri = format!("{}{path}", self.endpoint.base)
            .parse()
            .map_err(|e| CallError::BadResponse {
                status: 0,
                detail: format!("the path {path:?} makes no URL: {e}"),
            })?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.endpoint.auth.clone());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::BadResponse {
                status: 0,
                detail: format!("building the request: {e}"),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    CallError::Unsent(error_chain(&e))
                } else {
                    CallError::Transport(error_chain(&e))
                }
            })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Transport(error_chain(&e)))?
                .to_bytes();
            Ok::<_, CallError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                CallError::Transport(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            })??;
        let value: Result<Value, _> = serde_json::from_slice(&bytes);
        match value {
            Ok(value) if (200..300).contains(&status) => Ok(value),
            Ok(value) => Err(CallError::from_body(status, &value)),
            Err(e) => Err(CallError::BadResponse {
                status,
                detail: format!(
                    "not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            }),
        }
    }
}

/// An error and its sources, `: `-separated (hyper's errors say little at the top level).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A JSON string field of an answer, or [`CallError::BadResponse`].
pub fn str_field(answer: &Value, field: &str) -> Result<String, CallError> {
    answer[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CallError::BadResponse {
            status: 200,
            detail: format!("the answer has no string `{field}`: {answer}"),
        })
}

/// A total of a balance or an audit: a JSON integer, or a decimal string beyond 2^63.
pub fn wide_field(answer: &Value, field: &str) -> Result<i128, CallError> {
    let value = &answer[field];
    let parsed = match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.parse::<i128>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| CallError::BadResponse {
        status: 200,
        detail: format!("the answer has no integer `{field}`: {answer}"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_bodies_are_mapped_by_code() {
        let body = json!({"error": {"code": "insufficient_funds", "message": "alice has 3"}});
        let e = CallError::from_body(402, &body);
        assert!(e.is_insufficient_funds() && e.changed_nothing() && !e.is_overloaded());
        assert_eq!(e.code(), "insufficient_funds");
        let busy = CallError::from_body(503, &json!({"error": {"code": "overloaded"}}));
        assert!(busy.is_overloaded() && busy.changed_nothing());
        let failed = CallError::from_body(503, &json!({"error": {"code": "storage_failed"}}));
        assert!(!failed.changed_nothing());
        let odd = CallError::from_body(500, &json!({"oops": 1}));
        assert_eq!(odd.code(), "bad_response");
        assert!(!CallError::Transport("reset".into()).changed_nothing());
        // Never sent (no connection) or refused by a node that does not serve the account:
        // nothing happened, and the account stays in the comparison.
        let unsent = CallError::Unsent("connection refused".into());
        assert!(unsent.changed_nothing() && unsent.is_unreachable());
        assert_eq!(unsent.code(), "unsent");
        let moved = CallError::from_body(503, &json!({"error": {"code": "not_owner"}}));
        assert!(moved.changed_nothing() && !moved.is_unreachable());
    }

    #[test]
    fn endpoints_must_be_plain_http() {
        assert_eq!(
            Endpoint::new("http://127.0.0.1:8080/", "k").unwrap().base(),
            "http://127.0.0.1:8080"
        );
        assert!(Endpoint::new("https://example.com", "k").is_err());
        assert!(Endpoint::new("127.0.0.1:8080", "k").is_err());
        assert!(Endpoint::new("http://h:1/?q=1", "k").is_err());
    }

    #[test]
    fn wide_totals_are_numbers_or_decimal_strings() {
        let b = json!({"a": 5, "b": "170141183460469231731687303715884105727", "c": -3});
        assert_eq!(wide_field(&b, "a").unwrap(), 5);
        assert_eq!(wide_field(&b, "b").unwrap(), i128::MAX);
        assert_eq!(wide_field(&b, "c").unwrap(), -3);
        assert!(wide_field(&b, "d").is_err());
    }
}
