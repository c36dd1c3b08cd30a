//! The native API in-process: flows, idempotency, credentials and scopes, bad input, the
//! OpenAPI document.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::{Harness, ADMIN};

#[tokio::test]
async fn a_hold_committed_over_http_moves_exactly_the_committed_amount() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 5_000, "endpoint": "/chat"})),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    assert_eq!(hold.body["status"], "pending");
    assert_eq!(h.available("alice").await, 995_000);
    let id = hold.body["id"].as_str().unwrap().to_owned();
    let commit = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/commit"),
            Some(json!({"amount": 3_000})),
        )
        .await;
    assert_eq!(commit.status, StatusCode::OK, "{commit:?}");
    assert_eq!(commit.body["amount_posted"], 3_000);
    assert_eq!(commit.body["amount_released"], 2_000);
    assert_eq!(h.available("alice").await, 997_000);
    assert_eq!(h.available("chat").await, 3_000);
    let got = h.admin("GET", &format!("/v1/holds/{id}"), None).await;
    assert_eq!(got.body["status"], "posted");
    let again = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/commit"),
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "hold_already_resolved")
    );
    let audit = h.admin("GET", "/v1/audit", None).await;
    assert_eq!(audit.body["ok"], true, "{audit:?}");
}

#[tokio::test]
async fn an_overspend_is_402_and_changes_nothing() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let a = h
        .admin(
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1_001})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_funds")
    );
    assert_eq!(a.body["error"]["available"], 1_000);
    assert_eq!(a.body["error"]["requested"], 1_001);
    assert_eq!(h.available("alice").await, 1_000);
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_response_and_other_content_is_409() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let body = json!({"account": "alice", "app": "chat", "amount": 700, "endpoint": "/tts"});
    let first = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(body.clone()),
            Some("charge-1"),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(body.clone()),
            Some("charge-1"),
        )
        .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(h.available("alice").await, 1_000_000 - 700);

    let mut other = body.clone();
    other["amount"] = json!(701);
    let conflict = h
        .as_key(ADMIN, "POST", "/v1/charges", Some(other), Some("charge-1"))
        .await;
    assert_eq!(
        (conflict.status, conflict.code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
    assert_eq!(conflict.body["error"]["field"], "amount");
    let elsewhere = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/transfers",
            Some(json!({"from": "alice", "to": "bob", "amount": 1})),
            Some("charge-1"),
        )
        .await;
    assert_eq!(
        (elsewhere.status, elsewhere.body["error"]["field"].clone()),
        (StatusCode::CONFLICT, json!("route"))
    );
    assert_eq!(h.available("alice").await, 1_000_000 - 700);

    // Keys differing in case are different keys: compared exactly.
    let upper = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(body.clone()),
            Some("CHARGE-1"),
        )
        .await;
    assert_eq!(upper.status, StatusCode::CREATED);
    assert_ne!(upper.body["posting"], first.body["posting"]);
    assert_eq!(h.available("alice").await, 1_000_000 - 1_400);

    // After a restart the key still answers with the first posting and charges nothing more.
    let h = h.restart().await;
    let after = h
        .as_key(ADMIN, "POST", "/v1/charges", Some(body), Some("charge-1"))
        .await;
    assert_eq!(after.status, StatusCode::CREATED, "{after:?}");
    assert_eq!(after.body, first.body);
    assert_eq!(h.available("alice").await, 1_000_000 - 1_400);
}

#[tokio::test]
async fn idempotency_keys_that_are_empty_too_long_or_not_ascii_are_400() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "has space"] {
        let a = h
            .as_key(
                ADMIN,
                "POST",
                "/v1/charges",
                Some(json!({"account": "alice", "app": "chat", "amount": 1})),
                Some(key),
            )
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            "{key:?}"
        );
    }
    let ok = "k".repeat(255);
    let a = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1})),
            Some(&ok),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(h.available("alice").await, 999);
}

#[tokio::test]
async fn accounts_and_balances_survive_a_restart() {
    let h = Harness::new().await;
    h.world(123_456).await;
    let h = h.restart().await;
    assert_eq!(h.available("alice").await, 123_456);
    let again = h
        .admin(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "alice", "kind": "user"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    let clash = h
        .admin(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "alice", "kind": "revenue"})),
        )
        .await;
    assert_eq!(
        (clash.status, clash.code()),
        (StatusCode::CONFLICT, "account_exists")
    );
    assert_eq!(clash.body["error"]["field"], "kind");
}

#[tokio::test]
async fn missing_wrong_revoked_and_expired_keys_are_401() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let none = h
        .raw("GET", "/v1/accounts/alice/balance", &[], vec![])
        .await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let wrong = h
        .as_key(
            "not-the-key",
            "GET",
            "/v1/accounts/alice/balance",
            None,
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let basic = h
        .raw(
            "GET",
            "/v1/accounts/alice/balance",
            &[("authorization", "Basic YTpi")],
            vec![],
        )
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    let key = h
        .admin(
            "POST",
            "/v1/keys",
            Some(json!({"scope": "admin", "expires_in_s": 60})),
        )
        .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let id = key.body["key"]["id"].as_u64().unwrap();
    assert_eq!(
        h.as_key(&secret, "GET", "/v1/accounts/alice/balance", None, None)
            .await
            .status,
        StatusCode::OK
    );
    // A forged secret with a real key id.
    let forged = format!("tk_{id}_{}", "A".repeat(43));
    assert_eq!(
        h.as_key(&forged, "GET", "/v1/accounts/alice/balance", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    h.clock.advance(61_000);
    let expired = h
        .as_key(&secret, "GET", "/v1/accounts/alice/balance", None, None)
        .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    let key = h
        .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
        .await;
    let secret = key.body["secret"].as_str().unwrap().to_owned();
    let id = key.body["key"]["id"].as_u64().unwrap();
    assert_eq!(
        h.admin("DELETE", &format!("/v1/keys/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    let revoked = h
        .as_key(&secret, "GET", "/v1/accounts/alice/balance", None, None)
        .await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    // The listing never shows a secret.
    let list = h.admin("GET", "/v1/keys", None).await;
    assert!(!list.text.contains(&secret));
    assert!(!list.text.contains("hash"));
}

#[tokio::test]
async fn a_service_key_reaches_only_its_own_app() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let chat = h.service_key("chat").await;
    let hold = h
        .as_key(
            &chat,
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 100})),
            None,
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let search_hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "search", "amount": 200})),
        )
        .await;
    let search_id = search_hold.body["id"].as_str().unwrap().to_owned();
    let before = h.available("alice").await;

    let refusals: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/v1/holds".into(),
            Some(json!({"account": "alice", "app": "search", "amount": 1})),
        ),
        (
            "POST",
            "/v1/charges".into(),
            Some(json!({"account": "alice", "app": "search", "amount": 1})),
        ),
        (
            "POST",
            format!("/v1/holds/{search_id}/commit"),
            Some(json!({"amount": 200})),
        ),
        (
            "POST",
            format!("/v1/holds/{search_id}/void"),
            Some(json!({})),
        ),
        ("GET", format!("/v1/holds/{search_id}"), None),
        (
            "POST",
            "/v1/accounts/alice/fund".into(),
            Some(json!({"amount": 1})),
        ),
        (
            "POST",
            "/v1/accounts".into(),
            Some(json!({"id": "mallory", "kind": "user"})),
        ),
        ("GET", "/v1/accounts/alice/balance".into(), None),
        ("GET", "/v1/accounts/alice/history".into(), None),
        (
            "POST",
            "/v1/transfers".into(),
            Some(json!({"from": "alice", "to": "bob", "amount": 1})),
        ),
        ("POST", "/v1/keys".into(), Some(json!({"scope": "admin"}))),
        ("GET", "/v1/keys".into(), None),
        ("GET", "/v1/audit".into(), None),
        ("GET", "/metrics".into(), None),
        (
            "POST",
            "/v1/batch".into(),
            Some(json!({"operations": [{"op": "fund", "account": "alice", "amount": 1}]})),
        ),
    ];
    for (method, path, body) in refusals {
        let a = h.as_key(&chat, method, &path, body, None).await;
        let refused = a.status == StatusCode::FORBIDDEN || a.body["results"][0]["status"] == 403;
        assert!(refused, "{method} {path}: {a:?}");
    }
    assert_eq!(h.available("alice").await, before);
    let search_after = h
        .admin("GET", &format!("/v1/holds/{search_id}"), None)
        .await;
    assert_eq!(search_after.body["status"], "pending");
}

#[tokio::test]
async fn amounts_that_are_floats_negative_or_too_large_are_400_and_change_nothing() {
    let h = Harness::new().await;
    h.world(1_000).await;
    for amount in [
        "1.5",
        "-1",
        "1e3",
        "\"10\"",
        "9223372036854775808",
        "18446744073709551616",
        "0",
        "null",
    ] {
        let body = format!(r#"{{"account":"alice","app":"chat","amount":{amount}}}"#);
        let a = h
            .raw(
                "POST",
                "/v1/charges",
                &[("authorization", &format!("Bearer {ADMIN}"))],
                body.into_bytes(),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{amount}: {a:?}");
        assert!(a.body["error"]["code"].is_string(), "{amount}: {a:?}");
    }
    assert_eq!(h.available("alice").await, 1_000);
    // 2^63 − 1 is a valid amount (refused here only for want of funds).
    let max = h
        .admin(
            "POST",
            "/v1/charges",
            Some(
                json!({"account": "alice", "app": "chat", "amount": 9_223_372_036_854_775_807u64}),
            ),
        )
        .await;
    assert_eq!(max.code(), "insufficient_funds");
}

#[tokio::test]
async fn malformed_json_unknown_fields_and_oversized_bodies_are_refused_with_their_codes() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let auth = format!("Bearer {ADMIN}");
    let bad = h
        .raw(
            "POST",
            "/v1/charges",
            &[("authorization", &auth)],
            b"{\"account\": \"alice\",\n \"app\"".to_vec(),
        )
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    assert_eq!(bad.body["error"]["line"], 2);
    let unknown = h
        .admin(
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1, "amout": 2})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::BAD_REQUEST, "unknown_field")
    );
    assert_eq!(unknown.body["error"]["field"], "amout");
    let big = format!(
        r#"{{"account":"alice","app":"chat","amount":1,"metadata":"{}"}}"#,
        "x".repeat(70_000)
    );
    let a = h
        .raw(
            "POST",
            "/v1/charges",
            &[("authorization", &auth)],
            big.into_bytes(),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    assert_eq!(h.available("alice").await, 1_000);
}

#[tokio::test]
async fn a_batch_answers_each_operation_in_order_and_runs_one_accounts_operations_in_order() {
    let h = Harness::new().await;
    h.world(0).await;
    let ops = json!({"operations": [
        {"op": "charge", "account": "alice", "app": "chat", "amount": 10},
        {"op": "fund", "account": "alice", "amount": 100},
        {"op": "charge", "account": "alice", "app": "chat", "amount": 60},
        {"op": "transfer", "from": "bob", "to": "alice", "amount": 1},
        {"op": "charge", "account": "alice", "app": "chat", "amount": 60},
    ]});
    let a = h.admin("POST", "/v1/batch", Some(ops)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let statuses: Vec<u64> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![402, 200, 201, 402, 402]);
    assert_eq!(h.available("alice").await, 40);
    let empty = h
        .admin("POST", "/v1/batch", Some(json!({"operations": []})))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let bad = h
        .admin("POST", "/v1/batch", Some(json!({"operations": [{"op": "fund", "account": "alice", "amount": 1}, {"op": "steal"}]})))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["index"], 1);
    assert_eq!(h.available("alice").await, 40);
}

#[tokio::test]
async fn a_service_keys_batch_refuses_each_operation_outside_its_app_and_runs_the_rest() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let chat = h.service_key("chat").await;
    let search_hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "search", "amount": 200})),
        )
        .await;
    let search_id = search_hold.body["id"].as_str().unwrap().to_owned();
    let ops = json!({"operations": [
        {"op": "charge", "account": "alice", "app": "chat", "amount": 30},
        {"op": "charge", "account": "alice", "app": "search", "amount": 1},
        {"op": "commit", "hold": search_id, "amount": 200},
        {"op": "fund", "account": "alice", "amount": 1_000_000},
        {"op": "reserve", "account": "alice", "app": "chat", "amount": 70},
        {"op": "charge", "account": "nobody", "app": "chat", "amount": 1},
    ]});
    let a = h.as_key(&chat, "POST", "/v1/batch", Some(ops), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let results = a.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 403, 403, 403, 201, 404], "{results:?}");
    assert_eq!(
        results[1]["body"]["error"]["code"], "forbidden",
        "{results:?}"
    );
    assert_eq!(results[4]["body"]["status"], "pending");
    // The charge and the reserve only: 10,000 - 200 (search's hold) - 30 - 70.
    assert_eq!(h.available("alice").await, 9_700);
    let hold = h
        .admin("GET", &format!("/v1/holds/{search_id}"), None)
        .await;
    assert_eq!(
        hold.body["status"], "pending",
        "the other app's hold untouched"
    );
}

#[tokio::test]
async fn the_cost_service_moves_call_for_call() {
    let h = Harness::new().await;
    h.world(0).await;
    let allowed = h
        .admin(
            "POST",
            "/v1/cost/funding-allowed",
            Some(json!({"account": "alice"})),
        )
        .await;
    assert_eq!(allowed.body["allowed"], false);
    assert_eq!(allowed.body["minimum"], 100);
    let up = h
        .admin(
            "POST",
            "/v1/cost/funding-update",
            Some(json!({"account": "alice", "old_amount": 0, "new_amount": 5_000})),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{up:?}");
    let stale = h
        .admin(
            "POST",
            "/v1/cost/funding-update",
            Some(json!({"account": "alice", "old_amount": 0, "new_amount": 9_000})),
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::CONFLICT, "funding_mismatch")
    );
    assert_eq!(stale.body["error"]["current"], 5_000);
    let allowed = h
        .admin(
            "POST",
            "/v1/cost/funding-allowed",
            Some(json!({"account": "alice"})),
        )
        .await;
    assert_eq!(allowed.body["allowed"], true);
    let cost = h
        .admin(
            "POST",
            "/v1/cost/record-cost",
            Some(json!({"account": "alice", "app": "chat", "cost": 1_200})),
        )
        .await;
    assert_eq!(cost.status, StatusCode::CREATED, "{cost:?}");
    assert_eq!(h.available("alice").await, 3_800);
}

#[tokio::test]
async fn every_documented_route_is_served_and_needs_a_credential() {
    let h = Harness::new().await;
    let doc = h.admin("GET", "/v1/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    let expected = [
        ("post", "/v1/accounts"),
        ("get", "/v1/accounts/{id}/balance"),
        ("get", "/v1/accounts/{id}/check"),
        ("post", "/v1/accounts/{id}/fund"),
        ("get", "/v1/accounts/{id}/history"),
        ("post", "/v1/holds"),
        ("get", "/v1/holds/{id}"),
        ("post", "/v1/holds/{id}/commit"),
        ("post", "/v1/holds/{id}/void"),
        ("post", "/v1/holds/{id}/extend"),
        ("post", "/v1/holds/{id}/settle"),
        ("post", "/v1/charges"),
        ("post", "/v1/refunds"),
        ("post", "/v1/transfers"),
        ("post", "/v1/batch"),
        ("post", "/v1/funding-updates"),
        ("get", "/v1/audit"),
        ("get", "/v1/trail/head"),
        ("post", "/v1/trail/prune"),
        ("post", "/v1/keys"),
        ("get", "/v1/keys"),
        ("delete", "/v1/keys/{id}"),
        ("post", "/v1/cost/funding-allowed"),
        ("post", "/v1/cost/record-cost"),
        ("post", "/v1/cost/funding-update"),
        ("get", "/v1/events"),
        ("put", "/v1/prices"),
        ("get", "/v1/prices"),
        ("post", "/v1/prices/quote"),
        ("post", "/v1/prices/affordable"),
        ("post", "/v1/meter"),
        ("post", "/v1/meter/{hold}/progress"),
        ("post", "/v1/meter/{hold}/finish"),
        ("get", "/v1/usage"),
        ("get", "/v1/usage/top-users"),
        ("get", "/v1/accounts/{id}/balance-history"),
        ("post", "/v1/tokens"),
        ("delete", "/v1/tokens/{token}"),
        ("get", "/v1/accounts/{id}/tokens"),
        ("post", "/v1/session"),
        ("get", "/v1/session"),
        ("delete", "/v1/session"),
        ("get", "/v1/overview"),
        ("get", "/v1/accounts"),
        ("get", "/v1/accounts/{id}/holds"),
        ("get", "/v1/accounts/{id}/queries"),
        ("put", "/v1/accounts/{id}/low-balance"),
        ("get", "/v1/accounts/{id}/policy"),
        ("put", "/v1/accounts/{id}/spend-cap"),
        ("put", "/v1/accounts/{id}/rate-limit"),
        ("post", "/v1/holds/{id}/commit-estimate"),
        ("post", "/v1/postings/{id}/correct"),
        ("get", "/v1/accounts/{id}/periods"),
        ("post", "/v1/accounts/{id}/grants"),
        ("get", "/v1/accounts/{id}/grants"),
        ("put", "/v1/accounts/{id}/allowance"),
        ("delete", "/v1/accounts/{id}/allowance"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    let mut documented = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented += 1;
            let concrete = path
                .replace("{id}", "x")
                .replace("{hold}", "x")
                .replace("{token}", "x");
            let a = h
                .raw(&method.to_uppercase(), &concrete, &[], b"{}".to_vec())
                .await;
            if (method.as_str(), path.as_str()) == ("post", "/v1/session") {
                // The sign-in itself: it takes a key in its body, and without one starts nothing.
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
                assert!(!a.headers.contains_key("set-cookie"));
                continue;
            }
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} answered {a:?} without a credential"
            );
        }
    }
    assert_eq!(
        documented,
        expected.len(),
        "a route is documented that this test does not know"
    );
    for open in ["/healthz", "/readyz"] {
        assert_eq!(h.raw("GET", open, &[], vec![]).await.status, StatusCode::OK);
    }
    for closed in ["/metrics", "/v1/openapi.json"] {
        assert_eq!(
            h.raw("GET", closed, &[], vec![]).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let metrics = h.admin("GET", "/metrics", None).await;
    assert!(
        metrics.text.contains("tally_http_requests_total"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("tally_resident_accounts"));
    assert!(metrics.text.contains("tally_journal_queue_records"));
    assert!(metrics.text.contains("tally_journal_sync_seconds_last"));
}

#[tokio::test]
async fn expired_idempotency_keys_are_forgotten_and_their_journal_segments_removed() {
    let config = tally_server::ServerConfig {
        idempotency_retention_s: 60,
        idempotency_segment_bytes: 4_096,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    h.world(1_000_000).await;
    let body = json!({"account": "alice", "app": "chat", "amount": 1});
    for i in 0..100 {
        let key = format!("key-{i}");
        let a = h
            .as_key(ADMIN, "POST", "/v1/charges", Some(body.clone()), Some(&key))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    assert_eq!(h.state.registry.idempotency_keys(), 100);
    assert_eq!(h.state.registry.idempotency_first_seq(), 1);
    h.clock.advance(61_000);
    let a = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(body.clone()),
            Some("late"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(h.state.registry.idempotency_keys(), 1);
    // The trim runs off the request path.
    for _ in 0..100 {
        if h.state.registry.idempotency_first_seq() > 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(h.state.registry.idempotency_first_seq() > 1);
    // A key past its retention is a new request: documented, and why the retention is a day.
    let again = h
        .as_key(ADMIN, "POST", "/v1/charges", Some(body), Some("key-0"))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.headers.get("idempotent-replayed").is_none());
    assert_eq!(h.available("alice").await, 1_000_000 - 102);
    // What is still remembered survives a restart with the trimmed journal.
    let h = h.restart().await;
    let late = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1})),
            Some("late"),
        )
        .await;
    // Its first answer was recorded with it, so it is replayed as is.
    assert_eq!(
        late.headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(late.body, a.body);
    assert_eq!(h.available("alice").await, 1_000_000 - 102);
}

#[tokio::test]
async fn past_the_requests_in_flight_a_request_is_503_with_retry_after_and_changes_nothing() {
    let config = tally_server::ServerConfig {
        requests_in_flight_max: 0,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    let a = h
        .admin(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "alice", "kind": "user"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    assert_eq!(a.headers.get("retry-after").unwrap(), "1");
    assert_eq!(a.body["error"]["scope"], "requests in flight");
    assert!(h.state.registry.account("alice").is_none());
}

#[tokio::test]
async fn a_keyed_refusal_is_the_answer_after_a_restart_too() {
    let h = Harness::new().await;
    h.world(100).await;
    let body = json!({"account": "alice", "app": "chat", "amount": 500});
    let first = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(body.clone()),
            Some("k-402"),
        )
        .await;
    assert_eq!(first.code(), "insufficient_funds");
    let h = h.restart().await;
    h.admin(
        "POST",
        "/v1/accounts/alice/fund",
        Some(json!({"amount": 1_000})),
    )
    .await;
    let retry = h
        .as_key(ADMIN, "POST", "/v1/charges", Some(body), Some("k-402"))
        .await;
    assert_eq!(retry.status, StatusCode::PAYMENT_REQUIRED, "{retry:?}");
    assert_eq!(retry.text, first.text);
    assert_eq!(h.available("alice").await, 1_100);
}

#[tokio::test]
async fn concurrent_key_creations_get_distinct_ids_and_working_secrets() {
    let h = Harness::new().await;
    let creations = (0..32).map(|_| h.admin("POST", "/v1/keys", Some(json!({"scope": "admin"}))));
    let made = futures_util::future::join_all(creations).await;
    let mut ids: Vec<u64> = made
        .iter()
        .map(|a| a.body["key"]["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 32);
    for a in &made {
        let secret = a.body["secret"].as_str().unwrap();
        assert_eq!(
            h.as_key(secret, "GET", "/v1/keys", None, None).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn pruning_history_is_for_the_admin_checks_its_body_and_says_what_went() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let head = h.admin("GET", "/v1/trail/head", None).await.body;
    let service = h.service_key("search").await;
    let refused = h
        .as_key(
            &service,
            "POST",
            "/v1/trail/prune",
            Some(json!({"before_seq": 1_000})),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    for body in [
        json!({"before_seq": 0}),
        json!({"before_seq": -1}),
        json!({"before_seq": "9"}),
        json!({"before": 9}),
        json!({"before_seq": 9, "also": 1}),
    ] {
        let a = h.admin("POST", "/v1/trail/prune", Some(body.clone())).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {a:?}");
    }
    // A young ledger has archived nothing yet (its one journal segment is live): nothing goes.
    let a = h
        .admin(
            "POST",
            "/v1/trail/prune",
            Some(json!({"before_seq": 1_000_000})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        (
            a.body["segments"].as_u64(),
            a.body["pruned_through"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(h.admin("GET", "/v1/trail/head", None).await.body, head);
    let history = h.admin("GET", "/v1/accounts/alice/history", None).await;
    assert_eq!(history.body["pruned_through"], 0, "{history:?}");
    assert!(!history.body["entries"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_stream_over_http_extends_settles_and_stops_with_402_when_funds_run_out() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 300, "endpoint": "/chat"})),
        )
        .await;
    let id = hold.body["id"].as_str().unwrap().to_owned();
    let settled = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/settle"),
            Some(json!({"amount": 250, "usage": {"output_tokens": 500}})),
        )
        .await;
    assert_eq!(settled.status, StatusCode::OK, "{settled:?}");
    assert_eq!(
        (
            settled.body["amount_posted"].clone(),
            settled.body["amount_held"].clone()
        ),
        (json!(250), json!(50))
    );
    assert_eq!(
        h.available("chat").await,
        250,
        "the part is the app's at once"
    );
    let extended = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/extend"),
            Some(json!({"amount": 700, "timeout_ms": 120_000})),
        )
        .await;
    assert_eq!(extended.status, StatusCode::OK, "{extended:?}");
    assert_eq!(extended.body["amount"], 1_000);
    assert_eq!(h.available("alice").await, 0);
    // One µ¢ more than alice has: 402, and nothing changed.
    let refused = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/extend"),
            Some(json!({"amount": 1})),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"),
        "{refused:?}"
    );
    let got = h.admin("GET", &format!("/v1/holds/{id}"), None).await;
    assert_eq!(
        (
            got.body["amount"].clone(),
            got.body["amount_posted"].clone(),
            got.body["amount_held"].clone()
        ),
        (json!(1_000), json!(250), json!(750))
    );
    let over = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/settle"),
            Some(json!({"amount": 751})),
        )
        .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "commit_exceeds_hold"),
        "{over:?}"
    );
    assert_eq!(over.body["error"]["held"], 750);
    let done = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/commit"),
            Some(json!({"amount": 100})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(done.body["amount_released"], 650);
    assert_eq!(h.available("alice").await, 650);
    assert_eq!(h.available("chat").await, 350);
    let audit = h.admin("GET", "/v1/audit", None).await;
    assert_eq!(audit.body["ok"], true, "{audit:?}");
}

#[tokio::test]
async fn a_service_key_cannot_extend_or_settle_another_apps_hold() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let chat = h.service_key("chat").await;
    let search_hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "search", "amount": 200})),
        )
        .await;
    let id = search_hold.body["id"].as_str().unwrap().to_owned();
    let before = h.available("alice").await;
    for (path, body) in [
        (format!("/v1/holds/{id}/extend"), json!({"amount": 10})),
        (format!("/v1/holds/{id}/settle"), json!({"amount": 10})),
    ] {
        let refused = h.as_key(&chat, "POST", &path, Some(body), None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}: {refused:?}");
    }
    assert_eq!(h.available("alice").await, before);
    let hold = h.admin("GET", &format!("/v1/holds/{id}"), None).await;
    assert_eq!(hold.body["amount_posted"], 0);
}
