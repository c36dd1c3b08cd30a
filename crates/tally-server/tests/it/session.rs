//! Dashboard sessions: sign in with an admin key, read with the cookie, and every refusal.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{Answer, Harness, ADMIN};

async fn sign_in(h: &Harness, key: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    h.raw(
        "POST",
        "/v1/session",
        &headers,
        json!({ "key": key }).to_string().into_bytes(),
    )
    .await
}

/// The cookie's `name=value` from a sign-in's answer.
fn cookie_of(a: &Answer) -> String {
    let set = a.headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn with_cookie(h: &Harness, cookie: &str, method: &str, path: &str) -> Answer {
    h.raw(
        method,
        path,
        &[("cookie", cookie), ("content-type", "application/json")],
        if method == "GET" {
            vec![]
        } else {
            json!({"amount": 5}).to_string().into_bytes()
        },
    )
    .await
}

#[tokio::test]
async fn a_session_reads_what_the_key_reads_and_writes_nothing() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let a = sign_in(&h, ADMIN, &[]).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let set = a.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{set} lacks {attribute}");
    }
    assert!(!set.contains("Secure"), "Secure is off by default: {set}");
    assert_eq!(a.headers["cache-control"], "no-store");
    let csrf = a.body["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 43);
    assert_eq!(a.body["role"], "admin");
    let cookie = cookie_of(&a);
    // The server keeps a hash, not the cookie.
    assert_eq!(h.state.sessions.len(), 1);

    let by_cookie = with_cookie(&h, &cookie, "GET", "/v1/accounts/alice/balance").await;
    let by_key = h.admin("GET", "/v1/accounts/alice/balance", None).await;
    assert_eq!(by_cookie.status, StatusCode::OK, "{by_cookie:?}");
    assert_eq!(by_cookie.body, by_key.body);

    let who = with_cookie(&h, &cookie, "GET", "/v1/session").await;
    assert_eq!(who.status, StatusCode::OK);
    assert_eq!(who.body["csrf_token"], csrf.as_str());

    // A write with only the cookie is refused and changes nothing, CSRF token or not.
    let before = h.available("alice").await;
    let write = with_cookie(&h, &cookie, "POST", "/v1/accounts/alice/fund").await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{write:?}");
    assert_eq!(write.code(), "session_read_only");
    let with_token = h
        .raw(
            "POST",
            "/v1/accounts/alice/fund",
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &csrf),
                ("content-type", "application/json"),
            ],
            json!({"amount": 5}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(with_token.code(), "session_read_only");
    assert_eq!(h.available("alice").await, before);
}

#[tokio::test]
async fn sign_in_refuses_what_it_must_and_keeps_nothing() {
    let h = Harness::new().await;
    h.world(0).await;
    let service = h.service_key("chat").await;

    let cases: Vec<(Answer, StatusCode, &str)> = vec![
        (
            sign_in(&h, "not-a-key-at-all-0000", &[]).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            sign_in(&h, &service, &[]).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            sign_in(&h, ADMIN, &[("origin", "http://evil.example")]).await,
            StatusCode::FORBIDDEN,
            "cross_origin",
        ),
        (
            h.raw(
                "POST",
                "/v1/session",
                &[("content-type", "text/plain")],
                json!({ "key": ADMIN }).to_string().into_bytes(),
            )
            .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            h.raw(
                "POST",
                "/v1/session",
                &[("content-type", "application/json")],
                json!({ "key": ADMIN, "role": "x" })
                    .to_string()
                    .into_bytes(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
    ];
    for (answer, status, code) in cases {
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.code(), code, "{answer:?}");
        assert!(!answer.headers.contains_key("set-cookie"), "{answer:?}");
    }
    assert!(h.state.sessions.is_empty());

    // The same origin is fine (the Host header is the dashboard's own).
    let own = sign_in(
        &h,
        ADMIN,
        &[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ],
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");

    // A made-up cookie reads nothing.
    let forged = with_cookie(
        &h,
        "tally_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "GET",
        "/v1/accounts/alice/balance",
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_session_ends_with_its_time_its_key_or_a_sign_out() {
    let h = Harness::new().await;
    h.world(0).await;
    let read = "/v1/accounts/alice/balance";

    // Its lifetime.
    let cookie = cookie_of(&sign_in(&h, ADMIN, &[]).await);
    h.clock.advance(28_799_000);
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::OK
    );
    h.clock.advance(1_000);
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Its key's expiry caps it.
    let key = h
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"scope": "admin", "expires_in_s": 60})),
        )
        .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let a = sign_in(&h, &secret, &[]).await;
    assert!(a.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=60"));
    let cookie = cookie_of(&a);
    h.clock.advance(60_000);
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Revoking its key ends it at once.
    let key = h
        .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
        .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let id = key.body["key"]["id"].as_u64().unwrap();
    let cookie = cookie_of(&sign_in(&h, &secret, &[]).await);
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::OK
    );
    h.admin("DELETE", &format!("/v1/keys/{id}"), None).await;
    let after = with_cookie(&h, &cookie, "GET", read).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(after.text.contains("revoked"), "{after:?}");

    // Signing out takes the CSRF token.
    let a = sign_in(&h, ADMIN, &[]).await;
    let cookie = cookie_of(&a);
    let csrf = a.body["csrf_token"].as_str().unwrap().to_owned();
    let no_token = h
        .raw("DELETE", "/v1/session", &[("cookie", &cookie)], vec![])
        .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    assert_eq!(no_token.code(), "csrf_failed");
    let wrong = h
        .raw(
            "DELETE",
            "/v1/session",
            &[("cookie", &cookie), ("x-csrf-token", "nope")],
            vec![],
        )
        .await;
    assert_eq!(wrong.code(), "csrf_failed");
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::OK
    );
    let out = h
        .raw(
            "DELETE",
            "/v1/session",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            vec![],
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{out:?}");
    assert!(out.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        with_cookie(&h, &cookie, "GET", read).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sessions_are_bounded() {
    let h = Harness::with(tally_server::ServerConfig {
        sessions_max: 2,
        session_ttl_s: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(sign_in(&h, ADMIN, &[]).await.status, StatusCode::CREATED);
    assert_eq!(sign_in(&h, ADMIN, &[]).await.status, StatusCode::CREATED);
    let full = sign_in(&h, ADMIN, &[]).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{full:?}");
    assert_eq!(full.code(), "overloaded");
    assert_eq!(full.body["error"]["limit"], 2);
    // Once they have expired, their room is reused.
    h.clock.advance(10_000);
    assert_eq!(sign_in(&h, ADMIN, &[]).await.status, StatusCode::CREATED);
    assert_eq!(h.state.sessions.len(), 1);
}
