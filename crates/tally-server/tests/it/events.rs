//! `/v1/events`: live Server-Sent Events with journal sequence numbers as ids, resumable with
//! `Last-Event-ID`, with an explicit `missed` event for what is no longer retained.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::json;
use tower::ServiceExt as _;

use crate::common::{Harness, ADMIN};

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: serde_json::Value,
}

/// Opens the stream and returns a reader of its events.
async fn open(h: &Harness, last_id: Option<&str>) -> (StatusCode, Body) {
    let mut req = Request::builder()
        .uri("/v1/events")
        .header("authorization", format!("Bearer {ADMIN}"));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let response = h
        .app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    (response.status(), response.into_body())
}

/// Reads events until `stop` says so or 5 s pass.
async fn read_until(body: &mut Body, buf: &mut String, stop: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut e = Sse {
                id: None,
                event: String::new(),
                data: serde_json::Value::Null,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    e.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    e.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    e.data = serde_json::from_str(v.trim()).unwrap();
                }
            }
            if !e.event.is_empty() {
                events.push(e);
            }
        }
        if stop(&events) {
            return events;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame()).await;
        match frame {
            Ok(Some(Ok(f))) => {
                if let Ok(data) = f.into_data() {
                    buf.push_str(&String::from_utf8_lossy(&data));
                }
            }
            _ => return events,
        }
    }
}

#[tokio::test]
async fn a_charge_appears_live_with_its_journal_sequence_number_as_id() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let (status, mut body) = open(&h, None).await;
    assert_eq!(status, StatusCode::OK);
    let charge = h
        .admin(
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 250, "endpoint": "/tts"})),
        )
        .await;
    assert_eq!(charge.status, StatusCode::CREATED);
    let mut buf = String::new();
    let events = read_until(&mut body, &mut buf, |e| {
        e.iter().any(|e| e.event == "credit.record-cost")
    })
    .await;
    let cost = events
        .iter()
        .find(|e| e.event == "credit.record-cost")
        .expect("the charge's event arrives");
    assert_eq!(cost.data["account"], "alice");
    assert_eq!(cost.data["app"], "chat");
    assert_eq!(cost.data["amount"], 250);
    assert_eq!(cost.data["posting"], charge.body["posting"]);
    let seq = cost.data["seq"].as_u64().unwrap();
    assert!(seq > 0);
    assert_eq!(cost.id.as_deref(), Some(seq.to_string().as_str()));
}

#[tokio::test]
async fn reconnecting_with_last_event_id_resumes_without_a_gap() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let (_, mut body) = open(&h, None).await;
    for amount in [11, 12, 13] {
        let a = h
            .admin(
                "POST",
                "/v1/charges",
                Some(json!({"account": "alice", "app": "chat", "amount": amount})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let mut buf = String::new();
    let first = read_until(&mut body, &mut buf, |e| {
        e.iter().filter(|e| e.event == "credit.record-cost").count() == 3
    })
    .await;
    let costs: Vec<&Sse> = first
        .iter()
        .filter(|e| e.event == "credit.record-cost")
        .collect();
    assert_eq!(costs.len(), 3);
    drop(body);
    // The client saw the first charge, then lost its connection; two more happen meanwhile.
    let seen = costs[0].id.clone().unwrap();
    for amount in [14, 15] {
        h.admin(
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": amount})),
        )
        .await;
    }
    let (_, mut body) = open(&h, Some(&seen)).await;
    let mut buf = String::new();
    let resumed = read_until(&mut body, &mut buf, |e| {
        e.iter().filter(|e| e.event == "credit.record-cost").count() == 4
    })
    .await;
    let amounts: Vec<u64> = resumed
        .iter()
        .filter(|e| e.event == "credit.record-cost")
        .map(|e| e.data["amount"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, vec![12, 13, 14, 15]);
    assert!(resumed.iter().all(|e| e.event != "missed"));
}

#[tokio::test]
async fn resuming_from_before_what_is_retained_starts_with_a_missed_event() {
    let h = Harness::new().await;
    h.world(10_000).await;
    // Restart: the new server retains nothing from before it started.
    let h = h.restart().await;
    let (_, mut body) = open(&h, Some("1")).await;
    h.admin(
        "POST",
        "/v1/charges",
        Some(json!({"account": "alice", "app": "chat", "amount": 7})),
    )
    .await;
    let mut buf = String::new();
    let events = read_until(&mut body, &mut buf, |e| {
        e.iter().any(|e| e.event == "credit.record-cost")
    })
    .await;
    assert_eq!(events[0].event, "missed", "{events:?}");
    assert_eq!(events[0].data["after"], 1);
    assert!(events
        .iter()
        .any(|e| e.event == "credit.record-cost" && e.data["amount"] == 7));
}

#[tokio::test]
async fn the_event_stream_needs_an_admin_key() {
    let h = Harness::new().await;
    h.world(0).await;
    let chat = h.service_key("chat").await;
    let a = h.as_key(&chat, "GET", "/v1/events", None, None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = h.raw("GET", "/v1/events", &[], vec![]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = h
        .raw(
            "GET",
            "/v1/events",
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("last-event-id", "x"),
            ],
            vec![],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn event_streams_are_bounded_apart_from_requests_in_flight() {
    let config = tally_server::ServerConfig {
        event_streams_max: 1,
        requests_in_flight_max: 1,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    let (status, first) = open(&h, None).await;
    assert_eq!(status, StatusCode::OK);
    // The open stream takes no request slot: a request still goes through.
    assert_eq!(
        h.admin("GET", "/v1/audit", None).await.status,
        StatusCode::OK
    );
    let (status, _) = open(&h, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    drop(first);
    // Its slot comes back when the client goes.
    let mut ok = false;
    for _ in 0..50 {
        if open(&h, None).await.0 == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
}

#[tokio::test]
async fn with_nobody_watching_the_server_stops_following_events_and_says_so_on_resume() {
    let config = tally_server::ServerConfig {
        event_idle_keep_s: 1,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    h.world(10_000).await;
    assert!(h.state.pump.lock().is_none(), "nobody watched yet");
    let (_, mut body) = open(&h, None).await;
    h.admin(
        "POST",
        "/v1/charges",
        Some(json!({"account": "alice", "app": "chat", "amount": 3})),
    )
    .await;
    let mut buf = String::new();
    let seen = read_until(&mut body, &mut buf, |e| {
        e.iter().any(|e| e.event == "credit.record-cost")
    })
    .await;
    let id = seen
        .iter()
        .find(|e| e.event == "credit.record-cost")
        .unwrap()
        .id
        .clone()
        .unwrap();
    drop(body);
    let mut stopped = false;
    for _ in 0..100 {
        if h.state.pump.lock().is_none() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped,
        "the server still follows the engine with nobody watching"
    );
    // A charge nobody watched, then a resume: told what it missed, then live again.
    h.admin(
        "POST",
        "/v1/charges",
        Some(json!({"account": "alice", "app": "chat", "amount": 4})),
    )
    .await;
    let (_, mut body) = open(&h, Some(&id)).await;
    h.admin(
        "POST",
        "/v1/charges",
        Some(json!({"account": "alice", "app": "chat", "amount": 5})),
    )
    .await;
    let mut buf = String::new();
    let events = read_until(&mut body, &mut buf, |e| {
        e.iter().any(|e| e.data["amount"] == 5)
    })
    .await;
    assert_eq!(events[0].event, "missed", "{events:?}");
    assert!(events.iter().all(|e| e.data["amount"] != 4));
}
