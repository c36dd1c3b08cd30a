//! Spend tokens over HTTP: issued by the admin for a user, presented by the app's service key
//! with a hold or charge; the cap, expiry, app and owner are enforced, forgeries refused.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::Harness;

async fn issued(h: &Harness, cap: u64, endpoint: Option<&str>) -> String {
    let mut body = json!({"account": "alice", "app": "chat", "cap": cap, "expires_in_s": 600});
    if let Some(e) = endpoint {
        body["endpoint"] = json!(e);
    }
    let a = h.admin("POST", "/v1/tokens", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_app_spends_with_a_token_up_to_its_cap_and_no_further() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let token = issued(&h, 1_000, None).await;
    let chat = h.service_key("chat").await;
    let charge =
        |amount: u64| json!({"account": "alice", "app": "chat", "amount": amount, "token": token});
    assert_eq!(
        h.as_key(&chat, "POST", "/v1/charges", Some(charge(600)), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let hold = h
        .as_key(
            &chat,
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 400, "token": token})),
            None,
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let over = h
        .as_key(&chat, "POST", "/v1/charges", Some(charge(1)), None)
        .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::PAYMENT_REQUIRED, "token_cap_exceeded")
    );
    assert_eq!(over.body["error"]["used"], 1_000);
    // Voiding the hold gives its 400 back to the token.
    let id = hold.body["id"].as_str().unwrap();
    let void = h
        .as_key(
            &chat,
            "POST",
            &format!("/v1/holds/{id}/void"),
            Some(json!({})),
            None,
        )
        .await;
    assert_eq!(void.status, StatusCode::OK);
    let list = h.admin("GET", "/v1/accounts/alice/tokens", None).await;
    assert_eq!(list.body["tokens"][0]["used"], 600, "{list:?}");
    assert_eq!(list.body["tokens"][0]["remaining"], 400);
    assert_eq!(h.available("alice").await, 1_000_000 - 600);

    // The count survives a restart.
    let h = h.restart().await;
    let chat = h.service_key("chat").await;
    let over = h
        .as_key(
            &chat,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 401, "token": token})),
            None,
        )
        .await;
    assert_eq!(over.code(), "token_cap_exceeded");
}

#[tokio::test]
async fn forged_revoked_expired_other_app_and_other_user_tokens_are_refused_and_change_nothing() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let token = issued(&h, 1_000, Some("/tts")).await;
    let search = h.service_key("search").await;
    let chat = h.service_key("chat").await;
    let before = h.available("alice").await;

    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let cases = [
        (
            chat.as_str(),
            json!({"account": "alice", "app": "chat", "amount": 1, "endpoint": "/tts", "token": forged}),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            chat.as_str(),
            json!({"account": "alice", "app": "chat", "amount": 1, "endpoint": "/tts", "token": "st_1000_1"}),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            chat.as_str(),
            json!({"account": "alice", "app": "chat", "amount": 1, "endpoint": "/chat", "token": token}),
            StatusCode::FORBIDDEN,
            "token_scope",
        ),
        (
            chat.as_str(),
            json!({"account": "bob", "app": "chat", "amount": 1, "endpoint": "/tts", "token": token}),
            StatusCode::FORBIDDEN,
            "token_scope",
        ),
        (
            search.as_str(),
            json!({"account": "alice", "app": "search", "amount": 1, "endpoint": "/tts", "token": token}),
            StatusCode::FORBIDDEN,
            "token_scope",
        ),
    ];
    for (key, body, status, code) in cases {
        let a = h
            .as_key(key, "POST", "/v1/charges", Some(body.clone()), None)
            .await;
        assert_eq!((a.status, a.code()), (status, code), "{body}: {a:?}");
    }
    let ok = h
        .as_key(&chat, "POST", "/v1/charges", Some(json!({"account": "alice", "app": "chat", "amount": 5, "endpoint": "/tts", "token": token})), None)
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(
        h.admin("DELETE", &format!("/v1/tokens/{token}"), None)
            .await
            .status,
        StatusCode::OK
    );
    let revoked = h
        .as_key(&chat, "POST", "/v1/charges", Some(json!({"account": "alice", "app": "chat", "amount": 5, "endpoint": "/tts", "token": token})), None)
        .await;
    assert_eq!(
        (revoked.status, revoked.code()),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );

    let fresh = issued(&h, 1_000, None).await;
    h.clock.advance(601_000);
    let expired = h
        .as_key(
            &chat,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 5, "token": fresh})),
            None,
        )
        .await;
    assert_eq!(
        (expired.status, expired.code()),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );
    assert_eq!(h.available("alice").await, before - 5);
    // A service key cannot issue tokens.
    let a = h
        .as_key(
            &chat,
            "POST",
            "/v1/tokens",
            Some(json!({"account": "alice", "app": "chat", "cap": 1, "expires_in_s": 1})),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}
