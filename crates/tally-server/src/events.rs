//! `GET /v1/events`: the engine's events as Server-Sent Events.
//!
//! While anyone watches (and for `event_idle_keep_s` after the last stream closes, so a client that
//! reconnects resumes), one task subscribes to the engine and keeps the newest [`RETAINED`]
//! events in a ring; with nobody watching the engine builds no events at all (a subscription
//! costs every write).  each SSE connection gets what the ring holds after its
//! `Last-Event-ID`, then the live events, from the same lock, so nothing falls between the two.
//! An event's id is its journal sequence number (`seq`, then `seq.1`, ... when one record
//! makes several events; reads such as `credit.check-available` carry no id). A client asking
//! to resume from before what the ring retains gets a `missed` event first, naming the range it
//! cannot have. A slow connection may fall [`CONNECTION_QUEUE`] events behind; past that it
//! loses the oldest and gets a `missed` event with their count.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt as _};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tally::{Event, EventKind};
use tokio::sync::broadcast;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::v1::{hold_str, posting_str};
use crate::AppState;

/// Events the server retains for resumption.
pub const RETAINED: usize = 65_536;
/// Events one connection may fall behind before it loses the oldest.
pub const CONNECTION_QUEUE: usize = 4_096;

/// One event as sent.
#[derive(Clone, Debug)]
pub struct Sent {
    /// `(seq, k)`: the record and the event's place among that record's events; `None` for a
    /// read's event.
    pub id: Option<(u64, u32)>,
    /// The SSE event name.
    pub name: &'static str,
    /// The JSON data.
    pub data: String,
}

impl Sent {
    fn to_sse(&self) -> SseEvent {
        let e = SseEvent::default().event(self.name).data(self.data.clone());
        match self.id {
            Some((seq, 0)) => e.id(seq.to_string()),
            Some((seq, k)) => e.id(format!("{seq}.{k}")),
            None => e,
        }
    }
}

/// The ring of retained events and the live channel.
pub struct EventLog {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Sent>>,
}

#[derive(Default)]
struct Ring {
    items: VecDeque<Arc<Sent>>,
    /// The newest record sequence number dropped from the ring (0: none).
    dropped_through: (u64, u32),
    /// The journal's last sequence number when the server subscribed.
    started_after: u64,
}

impl EventLog {
    /// An empty log; `started_after` is the journal's last sequence number at subscription.
    pub fn new(started_after: u64) -> EventLog {
        EventLog {
            ring: Mutex::new(Ring {
                started_after,
                ..Ring::default()
            }),
            tx: broadcast::channel(CONNECTION_QUEUE).0,
        }
    }

    fn push(&self, sent: Sent) {
        let sent = Arc::new(sent);
        let mut ring = self.ring.lock();
        if ring.items.len() >= RETAINED {
            if let Some(old) = ring.items.pop_front() {
                if let Some(id) = old.id {
                    ring.dropped_through = ring.dropped_through.max(id);
                }
            }
        }
        ring.items.push_back(Arc::clone(&sent));
        let _ = self.tx.send(sent);
    }
}

/// Starts following the engine if nobody does now (call it holding a stream slot). What the
/// ring held from an earlier period is dropped: between the two, events were not kept.
pub fn ensure_pump(state: &AppState) {
    let mut pump = state.pump.lock();
    if pump.as_ref().is_some_and(|p| !p.is_finished()) {
        return;
    }
    let sub = state.tally.subscribe();
    {
        let mut ring = state.events.ring.lock();
        ring.items.clear();
        ring.dropped_through = (0, 0);
        ring.started_after = state.tally.trail_head().0;
    }
    *pump = Some(tokio::spawn(run_pump(
        std::sync::Arc::downgrade(&state.0),
        sub,
    )));
}

/// No stream is open.
fn idle(state: &AppState) -> bool {
    state.event_streams.available_permits() == state.config.event_streams_max
}

/// Feeds the log from the engine until nobody has watched for `event_idle_keep_s`, the engine
/// stops, or the server is gone (it holds the state weakly, so it never keeps a stopped server
/// alive).
async fn run_pump(weak: std::sync::Weak<crate::StateInner>, mut sub: tally::Subscription) {
    let mut last = (0u64, 0u32);
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        let next = tokio::select! {
            next = sub.recv() => next,
            _ = tick.tick() => {
                let Some(state) = weak.upgrade().map(AppState) else {
                    return;
                };
                if !idle(&state) {
                    idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                let keep = std::time::Duration::from_secs(state.config.event_idle_keep_s);
                if since.elapsed() >= keep {
                    // Decided under the pump's lock, where a new stream asks for it.
                    let mut pump = state.pump.lock();
                    if idle(&state) {
                        *pump = None;
                        return;
                    }
                }
                continue;
            }
        };
        let Some(state) = weak.upgrade().map(AppState) else {
            return;
        };
        match next {
            Ok(Some(event)) => {
                let id = if event.seq == 0 {
                    None
                } else if event.seq == last.0 {
                    last.1 += 1;
                    Some(last)
                } else {
                    last = (event.seq, 0);
                    Some(last)
                };
                let data = event_json(&state, &event).to_string();
                state.events.push(Sent {
                    id,
                    name: event.name(),
                    data,
                });
            }
            Ok(None) => return,
            Err(missed) => state.events.push(Sent {
                id: None,
                name: "missed",
                data: json!({"missed": missed.0, "reason": "the server fell behind the engine"})
                    .to_string(),
            }),
        }
    }
}

fn event_json(state: &AppState, e: &Event) -> Value {
    let n = |id| state.name(id);
    let mut v = match &e.kind {
        EventKind::CheckAvailable {
            account,
            minimum,
            allowed,
        } => json!({"account": n(*account), "minimum": minimum, "allowed": allowed}),
        EventKind::RecordCost {
            account,
            app,
            endpoint,
            amount,
            posting,
        } => json!({"account": n(*account), "app": n(*app), "endpoint": endpoint,
                    "amount": amount.get(), "posting": posting_str(*posting)}),
        EventKind::FundingUpdate { account, old, new } => {
            json!({"account": n(*account), "old": old.to_string(), "new": new.to_string()})
        }
        EventKind::HoldReserved {
            hold,
            app,
            amount,
            expires_at,
        } => json!({"hold": hold_str(*hold), "account": n(hold.account), "app": n(*app),
                    "amount": amount.get(), "expires_at_ms": expires_at.0}),
        EventKind::HoldCommitted {
            hold,
            posting,
            amount_posted,
            amount_released,
        } => json!({"hold": hold_str(*hold), "account": n(hold.account),
                    "posting": posting_str(*posting), "amount_posted": amount_posted.get(),
                    "amount_released": amount_released.get()}),
        EventKind::HoldExtended {
            hold,
            amount,
            total,
            expires_at,
        } => json!({"hold": hold_str(*hold), "account": n(hold.account), "amount": amount.get(),
                    "total": total.get(), "expires_at_ms": expires_at.0}),
        EventKind::HoldSettled {
            hold,
            posting,
            amount_posted,
            amount_held,
        } => json!({"hold": hold_str(*hold), "account": n(hold.account),
                    "posting": posting_str(*posting), "amount_posted": amount_posted.get(),
                    "amount_held": amount_held.get()}),
        EventKind::HoldVoided {
            hold,
            amount_released,
        }
        | EventKind::HoldExpired {
            hold,
            amount_released,
        } => json!({"hold": hold_str(*hold), "account": n(hold.account),
                    "amount_released": amount_released.get()}),
        EventKind::Refund { posting, amount } => {
            json!({"posting": posting_str(*posting), "account": n(posting.account), "amount": amount.get()})
        }
        EventKind::PostingCorrected {
            posting,
            estimated,
            amount,
        } => {
            json!({"posting": posting_str(*posting), "account": n(posting.account),
                   "estimated": estimated.get(), "amount": amount.get()})
        }
        EventKind::GrantIssued {
            grant,
            amount,
            expires_at,
        } => json!({"grant": crate::v1::grant_str(*grant), "account": n(grant.account),
                    "amount": amount.get(), "expires_at_ms": expires_at.map(|e| e.0)}),
        EventKind::GrantExpired { grant, amount } => {
            json!({"grant": crate::v1::grant_str(*grant), "account": n(grant.account),
                   "amount_released": amount.get()})
        }
        EventKind::LowBalance {
            account,
            available,
            threshold,
        } => {
            json!({"account": n(*account), "available": available.to_string(), "threshold": threshold})
        }
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("event".into(), Value::from(e.name()));
        obj.insert("seq".into(), Value::from(e.seq));
        obj.insert("at_ms".into(), Value::from(e.at.0));
        obj.insert(
            "origin".into(),
            json!({"service": e.origin.service, "app": e.origin.app, "user": e.origin.user}),
        );
    }
    v
}

fn parse_last_id(headers: &HeaderMap) -> Result<Option<(u64, u32)>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad =
        || ApiError::invalid_field("Last-Event-ID", "Last-Event-ID is `<seq>` or `<seq>.<n>`");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let (seq, k) = s.split_once('.').unwrap_or((s, "0"));
    Ok(Some((
        seq.parse().map_err(|_| bad())?,
        k.parse().map_err(|_| bad())?,
    )))
}

/// Every event, live, as Server-Sent Events (admin). Each event's id is its journal sequence
/// number; reconnecting with `Last-Event-ID` resumes after it, or starts with a `missed` event
/// naming what is no longer retained.
#[utoipa::path(get, path = "/v1/events",
    params(("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", description = "the event stream"),
              (status = "4XX", body = crate::v1::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = principal.require_admin() {
        return e.into_response();
    }
    let Ok(slot) = state.event_streams.clone().try_acquire_owned() else {
        return ApiError::overloaded(format!(
            "{} event streams are open, the limit",
            state.config.event_streams_max
        ))
        .with("scope", "event streams")
        .with("limit", state.config.event_streams_max)
        .into_response();
    };
    ensure_pump(&state);
    let last = match parse_last_id(&headers) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let (backlog, rx) = {
        let ring = state.events.ring.lock();
        let rx = state.events.tx.subscribe();
        let mut backlog: Vec<Arc<Sent>> = Vec::new();
        if let Some(after) = last {
            // The client has everything up to `after`; the ring lacks everything up to
            // `dropped_through` (and whatever came before the server started following).
            let gap = after < ring.dropped_through || after.0 < ring.started_after;
            let first_kept = ring.dropped_through.0.max(ring.started_after);
            if gap {
                backlog.push(Arc::new(Sent {
                    id: None,
                    name: "missed",
                    data: json!({
                        "after": after.0,
                        "through": first_kept,
                        "reason": "these events are older than what the server retains; read the accounts' history for them",
                    })
                    .to_string(),
                }));
            }
            // Everything after the last record event the client saw (reads included).
            let start = ring
                .items
                .iter()
                .rposition(|s| s.id.is_some_and(|id| id <= after))
                .map_or(0, |i| i + 1);
            let start = if gap { 0 } else { start };
            backlog.extend(ring.items.iter().skip(start).cloned());
        }
        (backlog, rx)
    };
    // The stream holds its slot until the client goes, and ends when the server shuts down.
    let closing = state.closing.subscribe();
    let live = stream::unfold(
        (rx, slot, closing),
        |(mut rx, slot, mut closing)| async move {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = closing.wait_for(|c| *c) => return None,
            };
            match next {
                Ok(sent) => Some((sent, (rx, slot, closing))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let missed = Arc::new(Sent {
                        id: None,
                        name: "missed",
                        data: json!({"missed": n, "reason": "this connection fell behind"})
                            .to_string(),
                    });
                    Some((missed, (rx, slot, closing)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    let all: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> = Box::pin(
        stream::iter(backlog)
            .chain(live)
            .map(|s| Ok::<_, Infallible>(s.to_sse())),
    );
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}
