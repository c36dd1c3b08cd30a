//! Strict JSON bodies: malformed JSON is 400 with its line and column, a wrong type or an
//! unknown field is 400 naming the field; a digest of the body (keys sorted) is kept
//! for the idempotency check.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A parsed body and, for a keyed write, the digest its retries are compared with.
pub struct Body<T> {
    /// The request.
    pub value: T,
    /// Equal for equal content (empty for a request without an `Idempotency-Key`, which
    /// nothing compares).
    pub digest: crate::registry::BodyDigest,
}

/// A JSON value read strictly: a key given twice in one object is an error (a plain
/// `serde_json::Value` keeps the last one silently).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses JSON text strictly (no key twice in an object) into a value that must be an object,
/// with errors as the API gives them.
pub fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is empty; a JSON object is expected",
        ));
    }
    let Strict(value) = serde_json::from_slice::<Strict>(bytes).map_err(|e| {
        let text = e.to_string();
        if let Some(rest) = text.strip_prefix("duplicate field `") {
            let name = rest.split('`').next().unwrap_or_default();
            ApiError::invalid_field(name, format!("{name} is given twice: {text}"))
        } else {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            )
        }
        .with("line", e.line())
        .with("column", e.column())
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid_field(
            "body",
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Refuses a JSON array anywhere but at the fields named in `lists`: no request type of the API
/// takes an array elsewhere, and serde would otherwise read an array as a struct's fields in
/// order.
pub fn no_stray_arrays(value: &Value, path: &str, lists: &[&str]) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => {
            let field = path.rsplit('.').next().unwrap_or(path);
            if !lists.contains(&field) {
                return Err(ApiError::invalid_field(
                    if path.is_empty() { "body" } else { path },
                    format!("{path}: a JSON array is not allowed here"),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                if !item.is_object() && field == "operations" {
                    return Err(ApiError::invalid_field(
                        &format!("{path}[{i}]"),
                        format!("{path}[{i}] must be a JSON object"),
                    ));
                }
                no_stray_arrays(item, &format!("{path}[{i}]"), lists)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                no_stray_arrays(v, &p, lists)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The fields of native request bodies that are lists.
pub const NATIVE_LISTS: [&str; 2] = ["operations", "tiers"];

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
        // Only a keyed write is compared with its retries (and a forwarded sub-batch's body
        // with the MAC of its operation ids).
        let keyed = req.headers().contains_key(crate::idempotency::HEADER)
            || req.headers().contains_key(crate::forward::OP_IDS);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "body_too_large", e.body_text())
            } else {
                ApiError::new(status, "invalid_body", e.body_text())
            }
        })?;
        let value = parse_value(&bytes)?;
        no_stray_arrays(&value, "", &NATIVE_LISTS)?;
        let digest = if keyed {
            crate::registry::BodyDigest::of(&value)
        } else {
            crate::registry::BodyDigest::default()
        };
        Ok(Body {
            value: from_value(value)?,
            digest,
        })
    }
}

/// A page's `limit` parameter: `default` when absent, else 1 to `max` (400 `invalid_field`).
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid_field(
            "limit",
            format!("limit must be 1 to {max}"),
        ));
    }
    Ok(limit)
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
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
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
