//! The router and the server's life: bind, serve with bounded connections, drain on a signal,
//! checkpoint, release the directory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::{metrics, syft, v1, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "tally", description = "The native API of tally-server: amounts are integers in microcents (1 USD = 100,000,000 µ¢); every write takes an Idempotency-Key."),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the native API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(v1::routes())
        .merge(v1_cost_routes())
        .split_for_parts();
    doc
}

fn v1_cost_routes() -> OpenApiRouter<AppState> {
    crate::v1::cost_routes()
        .routes(utoipa_axum::routes!(crate::events::stream_events))
        .merge(crate::metering::routes())
        .merge(crate::tokens::routes())
        .merge(crate::session::routes())
        .merge(crate::dashboard::routes())
        .merge(crate::policy::routes())
        .merge(crate::grants::routes())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "up"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.tally.storage_failed() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_failed",
            format!("the engine is fail-stopped: {reason}"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The whole service as one axum `Router`, ready to serve (tests call it in-process).
pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1::routes())
        .merge(v1_cost_routes())
        .split_for_parts();
    let doc = Arc::new(doc.to_json().unwrap_or_default());
    Router::new()
        .merge(api)
        .route(
            "/v1/openapi.json",
            get(move |_auth: crate::auth::Auth| {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .nest("/syft", syft::routes())
        .merge(crate::dashboard::pages())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::error::jsonify))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::forward::forward,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(state.config.body_bytes_max))
        .with_state(state)
}

/// A TCP listener that holds at most `connections_max` connections open (the rest wait in the
/// kernel's backlog) and turns Nagle off on each.
pub struct Bounded {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl Bounded {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, connections_max: usize) -> Self {
        Bounded {
            listener,
            slots: Arc::new(Semaphore::new(connections_max.max(1))),
        }
    }
}

/// A connection holding its slot.
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        loop {
            let slot = match Arc::clone(&self.slots).acquire_owned().await {
                Ok(slot) => slot,
                // The semaphore is never closed; wait and try again rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Conn {
                            stream,
                            _slot: slot,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, as axum's own listener does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// A running service: its state and listener.
pub struct Server {
    state: AppState,
    listener: TcpListener,
}

impl Server {
    /// Binds `state.config.listen`; with a shared registry, records where the other nodes
    /// forward requests to this one (`advertise`, or `http://` and the bound address when it
    /// is a specific IP; a node bound to every address that advertises nothing gets no
    /// forwarded requests, and says so).
    pub async fn bind(state: AppState) -> io::Result<Server> {
        let listener = TcpListener::bind(&state.config.listen).await?;
        if state.registry.is_shared() {
            let addr = listener.local_addr()?;
            let url = match &state.config.advertise {
                Some(url) => Some(url.clone()),
                None if addr.ip().is_unspecified() => None,
                None => Some(format!("http://{addr}")),
            };
            if let Some(url) = url.as_ref().filter(|u| !u.starts_with("http://")) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "advertise must be an http:// URL (nodes talk plain HTTP), not {url:?}"
                    ),
                ));
            }
            match url {
                Some(url) => state
                    .registry
                    .advertise(&state.config.pg_node, &url)
                    .await
                    .map_err(|e| io::Error::other(e.message))?,
                None => tracing::warn!(
                    %addr,
                    "listening on every address with no `advertise` URL: other nodes cannot \
                     forward requests here"
                ),
            }
        }
        Ok(Server { state, listener })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests
    /// (at most `shutdown_grace_s`), checkpoints the engine, shuts it down and closes the
    /// registry, which releases the data directory.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let state = self.state.clone();
        let app = router(state.clone());
        let listener = Bounded::new(self.listener, state.config.connections_max);
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let closing = state.closing.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            // Event streams last as long as their clients: end them, so the drain can finish.
            closing.send_replace(true);
            let _ = drained_tx.send(());
        });
        let grace = Duration::from_secs(state.config.shutdown_grace_s);
        let mut serving = tokio::spawn(async move { serve.await });
        let _ = drained_rx.await;
        tracing::info!("shutting down: draining in-flight requests");
        match tokio::time::timeout(grace, &mut serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "serving ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the serving task failed"),
            Err(_) => {
                // Nothing may run against the engine once it is being closed.
                serving.abort();
                let _ = serving.await;
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    "in-flight requests outlived the grace period and were dropped"
                );
            }
        }
        shutdown_state(state).await
    }
}

/// Checkpoints and shuts the engine down, then closes the registry.
pub async fn shutdown_state(state: AppState) -> Result<(), String> {
    if let Some(pump) = state.pump.lock().take() {
        pump.abort();
    }
    let tally = state.tally.clone();
    if let Err(e) = tally.checkpoint().await {
        tracing::warn!(error = %e, "checkpoint at shutdown failed");
    }
    state.registry.close()?;
    drop(state);
    tally
        .shutdown()
        .await
        .map_err(|e| format!("shutting the engine down: {e}"))
}
