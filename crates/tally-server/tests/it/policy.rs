//! An account's policy over HTTP: spend caps, rate limits and low-balance thresholds are ledger
//! state (journaled, versioned, surviving a restart), enforced on the next request, and every
//! bad setting is refused with its code and changes nothing.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{Harness, ADMIN};

async fn charge(h: &Harness, account: &str, amount: u64, key: &str) -> crate::common::Answer {
    h.as_key(
        ADMIN,
        "POST",
        "/v1/charges",
        Some(json!({"account": account, "app": "chat", "amount": amount})),
        Some(key),
    )
    .await
}

#[tokio::test]
async fn limits_set_over_http_are_enforced_and_survive_a_restart() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let fresh = h.admin("GET", "/v1/accounts/alice/policy", None).await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_eq!(fresh.body["version"], 0);
    assert_eq!(fresh.body["set_at_ms"], json!(null));

    let rate = h
        .admin(
            "PUT",
            "/v1/accounts/alice/rate-limit",
            Some(json!({"requests": {"per_second": 2, "burst": 2}})),
        )
        .await;
    assert_eq!(rate.status, StatusCode::OK, "{rate:?}");
    assert_eq!(rate.body["version"], 1);
    assert_eq!(
        rate.body["rate_limit"],
        json!({"requests": {"per_second": 2, "burst": 2}, "cost": null})
    );
    let cap = h
        .admin(
            "PUT",
            "/v1/accounts/chat/spend-cap",
            Some(json!({"per_day": 1_000})),
        )
        .await;
    assert_eq!(cap.status, StatusCode::OK, "{cap:?}");
    assert_eq!(cap.body["kind"], "revenue");
    assert_eq!(cap.body["spend_cap_per_day"], 1_000);

    assert_eq!(
        charge(&h, "alice", 300, "c1").await.status,
        StatusCode::CREATED
    );
    // The app's cap: 300 + 701 > 1,000 for alice today.
    let over = charge(&h, "alice", 701, "c2").await;
    assert_eq!(over.status, StatusCode::PAYMENT_REQUIRED, "{over:?}");
    assert_eq!(over.code(), "spend_cap_exceeded");
    // Two requests were the burst (the refused one took no token: a refusal takes nothing).
    assert_eq!(
        charge(&h, "alice", 200, "c3").await.status,
        StatusCode::CREATED
    );
    let limited = charge(&h, "alice", 1, "c4").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    assert_eq!(limited.code(), "rate_limited");
    assert_eq!(limited.headers["retry-after"], "1");
    let before = h.available("alice").await;

    // The settings are records of the accounts' histories.
    let hist = h
        .admin("GET", "/v1/accounts/alice/history?limit=50", None)
        .await;
    let kinds: Vec<String> = hist.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["record"]["change"]
                .as_object()
                .map_or(String::new(), |c| c.keys().next().unwrap().clone())
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "PolicySet"), "{kinds:?}");

    // After a restart: the same policy, the cap still counts today's spending, and the
    // request bucket starts empty (no new burst).
    let h = h.restart().await;
    let after = h.admin("GET", "/v1/accounts/alice/policy", None).await;
    assert_eq!(after.body, rate.body, "the policy is kept");
    let limited = charge(&h, "alice", 1, "c5").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{limited:?}");
    assert_eq!(limited.body["error"]["retry_after_ms"], 500);
    h.clock.advance(500);
    let over = charge(&h, "alice", 501, "c6").await;
    assert_eq!(over.code(), "spend_cap_exceeded", "{over:?}");
    assert_eq!(h.available("alice").await, before);

    // Removing both lifts them.
    let clear = h
        .admin("PUT", "/v1/accounts/alice/rate-limit", Some(json!({})))
        .await;
    assert_eq!(
        clear.body["rate_limit"],
        json!({"requests": null, "cost": null})
    );
    assert_eq!(clear.body["version"], 2);
    let clear = h
        .admin(
            "PUT",
            "/v1/accounts/chat/spend-cap",
            Some(json!({"per_day": null})),
        )
        .await;
    assert_eq!(clear.body["spend_cap_per_day"], json!(null));
    assert_eq!(
        charge(&h, "alice", 5_000, "c7").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_bad_setting_is_refused_with_its_code_and_changes_nothing() {
    let h = Harness::new().await;
    h.world(1_000).await;
    h.admin(
        "PUT",
        "/v1/accounts/alice/spend-cap",
        Some(json!({"per_day": 100})),
    )
    .await;
    let policy = h.admin("GET", "/v1/accounts/alice/policy", None).await.body;
    let cases = [
        (
            "/v1/accounts/alice/spend-cap",
            json!({}),
            400,
            "missing_field",
        ),
        (
            "/v1/accounts/alice/spend-cap",
            json!({"per_day": -1}),
            400,
            "invalid_field",
        ),
        (
            "/v1/accounts/alice/spend-cap",
            json!({"per_day": 9_223_372_036_854_775_808u64}),
            400,
            "invalid_field",
        ),
        (
            "/v1/accounts/alice/spend-cap",
            json!({"per_day": 1, "x": 1}),
            400,
            "unknown_field",
        ),
        (
            "/v1/accounts/alice/low-balance",
            json!({}),
            400,
            "missing_field",
        ),
        (
            "/v1/accounts/alice/rate-limit",
            json!({"cost": {"per_second": 5, "burst": 0}}),
            400,
            "invalid_policy",
        ),
        (
            "/v1/accounts/alice/rate-limit",
            json!({"requests": {"per_second": 0, "burst": 5}}),
            400,
            "invalid_policy",
        ),
        (
            "/v1/accounts/alice/rate-limit",
            json!({"requests": {"per_second": 5}}),
            400,
            "missing_field",
        ),
        (
            "/v1/accounts/tally:funding/spend-cap",
            json!({"per_day": 1}),
            422,
            "wrong_account_kind",
        ),
        (
            "/v1/accounts/nobody/spend-cap",
            json!({"per_day": 1}),
            404,
            "unknown_account",
        ),
    ];
    for (path, body, status, code) in cases {
        let a = h.admin("PUT", path, Some(body.clone())).await;
        assert_eq!(a.status.as_u16(), status, "{path} {body}: {a:?}");
        assert_eq!(a.code(), code, "{path} {body}: {a:?}");
    }
    // A service key may not set or read a policy.
    let key = h.service_key("chat").await;
    let a = h
        .as_key(
            &key,
            "PUT",
            "/v1/accounts/alice/spend-cap",
            Some(json!({"per_day": 1_000_000})),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let a = h
        .as_key(&key, "GET", "/v1/accounts/alice/policy", None, None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert_eq!(
        h.admin("GET", "/v1/accounts/alice/policy", None).await.body,
        policy,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_setting_retried_with_its_idempotency_key_is_answered_as_first() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let put = |body: serde_json::Value| {
        let h = &h;
        async move {
            h.as_key(
                ADMIN,
                "PUT",
                "/v1/accounts/alice/spend-cap",
                Some(body),
                Some("cap-1"),
            )
            .await
        }
    };
    let first = put(json!({"per_day": 500})).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body["version"], 1);
    let again = put(json!({"per_day": 500})).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    let other = put(json!({"per_day": 600})).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "idempotency_conflict"),
        "{other:?}"
    );
    let now = h.admin("GET", "/v1/accounts/alice/policy", None).await.body;
    assert_eq!(
        (&now["version"], &now["spend_cap_per_day"]),
        (&json!(1), &json!(500))
    );
}

#[tokio::test]
async fn the_documented_rate_limit_body_is_the_one_the_route_reads() {
    // Two body types once shared a schema name, and the document described a price's rate here.
    let h = Harness::new().await;
    let doc = h.admin("GET", "/v1/openapi.json", None).await.body;
    let schemas = &doc["components"]["schemas"];
    let requests = &schemas["RateLimitBody"]["properties"]["requests"]["oneOf"];
    let reference = requests
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["$ref"].as_str())
        .unwrap();
    let name = reference.rsplit('/').next().unwrap();
    let props = schemas[name]["properties"].as_object().unwrap();
    let mut fields: Vec<&str> = props.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["burst", "per_second"]);
}
