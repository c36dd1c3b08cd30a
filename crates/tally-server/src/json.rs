//! Strict JSON bodies: malformed JSON is 400 with its line and column, a wrong type or an
//! unknown field is 400 naming the field; the canonical text of the body (keys sorted) is kept
//! for the idempotency check.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A parsed body and its canonical JSON text.
pub struct Body<T> {
    /// The request.
    pub value: T,
    /// Keys sorted, no whitespace: equal for equal content.
    pub canonical: String,
}

/// Parses JSON text into a value, with errors as the API gives them.
pub fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
        .with("line", e.line())
        .with("column", e.column())
    })
}

/// Turns a JSON value into a request type, naming the field that does not fit.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            // The path already ends with the unknown field's name.
            let field = if path == "." || path.is_empty() {
                name.to_owned()
            } else {
                path
            };
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "unknown_field",
                format!(
                    "unknown field {field:?}; {}",
                    inner.split_once(", ").map_or("", |(_, r)| r)
                ),
            )
            .with("field", field)
        } else if let Some(rest) = inner.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "missing_field",
                format!("missing field {name:?}"),
            )
            .with("field", name)
        } else {
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::invalid_field(&field, format!("{field}: {inner}"))
        }
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "body_too_large", e.body_text())
            } else {
                ApiError::new(status, "invalid_body", e.body_text())
            }
        })?;
        let value = parse_value(&bytes)?;
        let canonical = value.to_string();
        Ok(Body {
            value: from_value(value)?,
            canonical,
        })
    }
}

/// A strict query string: an unknown parameter or a wrong type is 400 naming it.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize::<_, T>(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                if let Some(rest) = inner.strip_prefix("unknown field `") {
                    let name = rest.split('`').next().unwrap_or_default().to_owned();
                    ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "unknown_field",
                        format!("unknown query parameter {name:?}"),
                    )
                    .with("field", name)
                } else {
                    ApiError::invalid_field(&path, format!("query parameter {path}: {inner}"))
                }
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}
