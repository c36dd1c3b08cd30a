//! Any node takes any request: one refused `not_owner` (another node serves the account's
//! shard; nothing changed here) is sent again, once, to the node holding the shard's lease, and
//! that node's answer is the client's.
//!
//! - Only with a shared registry (the ledger in PostgreSQL): the owner is read from the
//!   `leases` table joined with the URLs nodes advertise (`registry_nodes`), remembered per
//!   shard for [`OWNER_KEPT`] (forgotten when a forward fails or is refused again).
//! - The request goes as it came (method, path, query, headers, the body buffered up to
//!   `body_bytes_max`), with [`FORWARDED`] naming this node; a request carrying it is never
//!   forwarded again, so a shard on the move costs the client at most one retryable 503, never
//!   a loop. The owner authenticates the request itself (its `Authorization` goes along);
//!   nodes trust each other with nothing.
//! - A retry is safe on any node: an `Idempotency-Key` was bound (in the shared registry)
//!   before the refused attempt, so the owner runs the same operation id; without a key the
//!   refused attempt changed nothing.
//! - A batch (`POST /v1/batch`) is answered 200 whatever its operations answered, so the
//!   layer leaves it alone: the batch itself sends the operations refused `not_owner` on, as
//!   one sub-batch per owner ([`batch_rest`]), under the operation ids they were refused with
//!   ([`OP_IDS`], MAC'd with a key derived from the secret the nodes share and bound to the
//!   sub-batch's body), so that a retry of the whole batch (with its `Idempotency-Key`) runs
//!   each operation under its first id again, wherever it lands.
//! - At most [`FORWARD_TIMEOUT`] a forward; when the owner cannot be reached in it (or there is
//!   none), the client gets the original `not_owner` answer, with its `Retry-After`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{ApiError, NotOwnerShard};
use crate::AppState;

/// The header a forwarded request carries: the forwarding node's name.
pub const FORWARDED: &str = "x-tally-forwarded-by";
/// The header on an answer that another node gave: that node's name.
pub const ANSWERED_BY: &str = "x-tally-answered-by";
/// A forward taking longer is abandoned (the client gets the original refusal).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shard's owner is remembered.
pub const OWNER_KEPT: Duration = Duration::from_secs(1);
/// Idle connections kept to each other node.
const IDLE_PER_NODE: usize = 64;

/// On a forwarded sub-batch: the operation ids to run its operations under (decimal,
/// comma-separated, one per operation).
pub const OP_IDS: &str = "x-tally-op-ids";
/// Their MAC (hex BLAKE3 keyed hash over the ids and the sub-batch's body digest).
pub const OP_IDS_MAC: &str = "x-tally-op-ids-mac";

/// The HTTP client to the other nodes and the owners it knows.
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    owners: parking_lot::Mutex<HashMap<u16, (Instant, String, String)>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Forwarder {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(IDLE_PER_NODE)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            owners: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl Forwarder {
    async fn owner(&self, state: &AppState, shard: u16) -> Option<(String, String)> {
        if let Some((at, node, url)) = self.owners.lock().get(&shard) {
            if at.elapsed() < OWNER_KEPT {
                return Some((node.clone(), url.clone()));
            }
        }
        let found = state
            .registry
            .shard_owner(shard, &state.config.pg_node)
            .await;
        match found {
            Ok(Some((node, url))) => {
                self.owners
                    .lock()
                    .insert(shard, (Instant::now(), node.clone(), url.clone()));
                Some((node, url))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(shard, error = %e.message, "finding a shard's owner failed");
                None
            }
        }
    }

    fn forget(&self, shard: u16) {
        self.owners.lock().remove(&shard);
    }

    fn forget_all(&self) {
        self.owners.lock().clear();
    }
}

/// The layer: runs the request here, and re-sends it to the owner when it was refused
/// `not_owner`. See the module docs.
pub async fn forward(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // A dashboard session (a cookie, no `Authorization`) lives on the node that made it: its
    // reads are not forwarded (the owner would not know the session).
    if !may_forward(&state, req.headers()) || !req.headers().contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = state.config.body_bytes_max;
    let collected =
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is over {limit} bytes"),
            )
            .with("max", limit)
            .into_response();
        }
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("reading the request body: {e}"),
            )
            .into_response();
        }
    };
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;
    let Some(&NotOwnerShard(shard)) = response.extensions().get::<NotOwnerShard>() else {
        return response;
    };
    let Some((node, url)) = state.forwarder.owner(&state, shard).await else {
        return response;
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Request::builder()
        .method(method)
        .uri(format!("{}{path}", url.trim_end_matches('/')));
    for (name, value) in &headers {
        if !hop_by_hop(&headers, name) && name != header::HOST && name != header::CONTENT_LENGTH {
            out = out.header(name, value);
        }
    }
    let Ok(me) = HeaderValue::from_str(&state.config.pg_node) else {
        return response;
    };
    let Ok(out) = out.header(FORWARDED, me).body(Body::from(bytes)) else {
        return response;
    };
    let sent = tokio::time::timeout(FORWARD_TIMEOUT, state.forwarder.client.request(out)).await;
    match sent {
        Ok(Ok(answer)) => {
            metrics::counter!("tally_forwarded_total").increment(1);
            if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
                // Perhaps the shard moved again: look its owner up afresh next time.
                state.forwarder.forget(shard);
            }
            let (mut head, body) = answer.into_parts();
            let answered = head.headers.clone();
            for name in answered.keys() {
                if hop_by_hop(&answered, name) {
                    head.headers.remove(name);
                }
            }
            if let Ok(node) = HeaderValue::from_str(&node) {
                head.headers.insert(ANSWERED_BY, node);
            }
            Response::from_parts(head, Body::new(body))
        }
        // Never connected: the owner saw nothing, and the refusal stands as it was.
        Ok(Err(e)) if e.is_connect() => {
            tracing::warn!(shard, %url, error = %e, "the shard's owner could not be reached");
            state.forwarder.forget(shard);
            response
        }
        Ok(Err(e)) => {
            tracing::warn!(shard, %url, error = %e, "forwarding to a shard's owner failed");
            state.forwarder.forget(shard);
            lost(&node, "its answer was lost", e)
        }
        Err(_) => {
            tracing::warn!(shard, %url, "forwarding to a shard's owner timed out");
            state.forwarder.forget(shard);
            lost(
                &node,
                "it did not answer",
                format!("within {FORWARD_TIMEOUT:?}"),
            )
        }
    }
}

/// The request reached the owner, which may have run it: the client must retry it (with the
/// same `Idempotency-Key`, which makes the retry safe) rather than take it as refused.
fn lost(node: &str, what: &str, why: impl std::fmt::Display) -> Response {
    lost_error(node, what, why).into_response()
}

fn lost_error(node: &str, what: &str, why: impl std::fmt::Display) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "forward_failed",
        format!(
            "the request was forwarded to node {node}, which serves the account, and {what} \
             ({why}): it may have run there; retry with the same Idempotency-Key"
        ),
    )
    .with("node", node);
    e.retry_after_s = Some(1);
    e
}

/// The headers of one hop only (RFC 9110 §7.6.1): never passed on.
fn hop_by_hop(headers: &axum::http::HeaderMap, name: &header::HeaderName) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.contains(&name.as_str())
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Whether a request that arrived with `headers` may be forwarded from here.
pub fn may_forward(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    state.registry.is_shared() && !headers.contains_key(FORWARDED)
}

fn op_ids_mac(state: &AppState, ids: &str, digest: &crate::registry::BodyDigest) -> String {
    let key = blake3::derive_key("tally-server forwarded op ids v1", &state.jwt_secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(ids.as_bytes());
    h.update(&[0]);
    h.update(digest.whole());
    h.finalize().to_hex().to_string()
}

/// The operation ids a forwarded sub-batch must run under, when it carries them (checked: a
/// node of the cluster made them for exactly this body); `None` for any other request.
pub fn forced_ops(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    digest: &crate::registry::BodyDigest,
    n: usize,
) -> Result<Option<Vec<tally::OpId>>, ApiError> {
    let Some(ids) = headers.get(OP_IDS) else {
        return Ok(None);
    };
    let refused = || {
        ApiError::unauthenticated("the forwarded operation ids failed their check")
            .with("field", OP_IDS)
    };
    if !state.registry.is_shared() || !headers.contains_key(FORWARDED) {
        return Err(refused());
    }
    let ids = ids.to_str().map_err(|_| refused())?;
    let mac = headers
        .get(OP_IDS_MAC)
        .and_then(|m| m.to_str().ok())
        .ok_or_else(refused)?;
    let expected = op_ids_mac(state, ids, digest);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        expected.as_bytes(),
        mac.as_bytes(),
    )) {
        return Err(refused());
    }
    let parsed: Vec<tally::OpId> = ids
        .split(',')
        .map(|id| id.parse::<u128>().map(tally::OpId))
        .collect::<Result<_, _>>()
        .map_err(|_| refused())?;
    if parsed.len() != n {
        return Err(refused());
    }
    Ok(Some(parsed))
}

/// The shard of a batch result refused `not_owner`.
fn refused_shard(result: &serde_json::Value) -> Option<u16> {
    let error = &result["body"]["error"];
    if error["code"] != "not_owner" {
        return None;
    }
    error["shard"].as_u64().and_then(|s| u16::try_from(s).ok())
}

/// Sends the operations of a batch that were refused `not_owner` on to their shards' owners,
/// one sub-batch per owner under the operations' own ids, and puts the owners' answers in
/// `results` in their place. An owner that cannot be connected to leaves its operations'
/// refusals as they were; one whose answer is lost makes them `forward_failed`.
pub async fn batch_rest(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    operations: &[serde_json::Value],
    ids: &[tally::OpId],
    results: &mut [serde_json::Value],
) {
    let mut by_owner: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, result) in results.iter().enumerate() {
        let Some(shard) = refused_shard(result) else {
            continue;
        };
        if let Some(owner) = state.forwarder.owner(state, shard).await {
            by_owner.entry(owner).or_default().push(i);
        }
    }
    for ((node, url), indices) in by_owner {
        let body = serde_json::json!({
            "operations": indices.iter().map(|&i| operations[i].clone()).collect::<Vec<_>>()
        });
        let digest = crate::registry::BodyDigest::of(&body);
        let id_text = indices
            .iter()
            .map(|&i| ids[i].0.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mac = op_ids_mac(state, &id_text, &digest);
        let mut out = Request::builder()
            .method("POST")
            .uri(format!("{}/v1/batch", url.trim_end_matches('/')))
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED, state.config.pg_node.as_str())
            .header(OP_IDS, id_text)
            .header(OP_IDS_MAC, mac);
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            out = out.header(header::AUTHORIZATION, auth);
        }
        let Ok(out) = out.body(Body::from(body.to_string())) else {
            continue;
        };
        let sent = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let answer = state.forwarder.client.request(out).await?;
            let status = answer.status();
            let bytes = http_body_util::BodyExt::collect(answer.into_body())
                .await?
                .to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        })
        .await;
        let answered = match &sent {
            Ok(Ok((StatusCode::OK, bytes))) => serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v["results"].as_array().cloned())
                .filter(|r| r.len() == indices.len()),
            _ => None,
        };
        match answered {
            Some(answers) => {
                metrics::counter!("tally_forwarded_total").increment(1);
                for (&i, answer) in indices.iter().zip(answers) {
                    results[i] = answer;
                }
            }
            None => {
                state.forwarder.forget_all();
                let connect_failed = matches!(&sent, Ok(Err(e)) if e
                    .downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(hyper_util::client::legacy::Error::is_connect));
                let answer = match &sent {
                    Ok(Ok((status, _))) => status.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {FORWARD_TIMEOUT:?}"),
                };
                tracing::warn!(%node, %url, %answer, "forwarding part of a batch failed");
                if connect_failed {
                    continue;
                }
                let e = lost_error(&node, "its answer was lost or unreadable", answer);
                for &i in &indices {
                    results[i] = serde_json::json!({"status": e.status.as_u16(), "body": e.body()});
                }
            }
        }
    }
}
