//! Prepaid credit grants over HTTP: issued to a user, drawn on first by holds and charges in
//! the documented order, never moved out by a transfer, expiring on time back to the funding
//! account, issued each period by an allowance; every bad request refused with its code and
//! changing nothing; all of it surviving a restart.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::{Harness, ADMIN};

async fn grants(h: &Harness) -> Value {
    let g = h.admin("GET", "/v1/accounts/alice/grants", None).await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    g.body
}

#[tokio::test]
async fn grants_are_spent_first_in_order_expire_on_time_and_survive_a_restart() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let promo = h
        .admin(
            "POST",
            "/v1/accounts/alice/grants",
            Some(json!({"amount": 500, "priority": 0, "expires_in_s": 3_600, "label": "promo"})),
        )
        .await;
    assert_eq!(promo.status, StatusCode::CREATED, "{promo:?}");
    assert_eq!(promo.body["free"], 500);
    assert_eq!(promo.body["status"], "active");
    assert_eq!(promo.body["from"], "tally:funding");
    let promo_id = promo.body["grant"].as_str().unwrap().to_owned();
    let bought = h
        .admin(
            "POST",
            "/v1/accounts/alice/grants",
            Some(json!({"amount": 300, "priority": 5, "label": "purchased"})),
        )
        .await;
    assert_eq!(bought.status, StatusCode::CREATED, "{bought:?}");
    assert_eq!(bought.body["expires_at_ms"], json!(null));
    assert_eq!(h.available("alice").await, 1_800);

    // A hold of 600 draws the promo's 500, then 100 of the purchased credit.
    let hold = h
        .admin(
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 600, "endpoint": "/chat"})),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let g = grants(&h).await;
    assert_eq!(g["grants"][0]["grant"], promo_id.as_str());
    assert_eq!(g["grants"][0]["held"], 500);
    assert_eq!(g["grants"][1]["held"], 100);
    assert_eq!(
        (&g["spendable"], &g["general"], &g["granted"]),
        (&json!(1_200), &json!(1_000), &json!(200))
    );
    let id = hold.body["id"].as_str().unwrap().to_owned();
    let commit = h
        .admin(
            "POST",
            &format!("/v1/holds/{id}/commit"),
            Some(json!({"amount": 450})),
        )
        .await;
    assert_eq!(commit.status, StatusCode::OK, "{commit:?}");
    let g = grants(&h).await;
    assert_eq!(
        (&g["grants"][0]["used"], &g["grants"][0]["free"]),
        (&json!(450), &json!(50))
    );
    assert_eq!(
        (&g["grants"][1]["used"], &g["grants"][1]["free"]),
        (&json!(0), &json!(300))
    );

    // A transfer out may use only the general balance (1,000).
    let too_much = h
        .admin(
            "POST",
            "/v1/transfers",
            Some(json!({"from": "alice", "to": "bob", "amount": 1_001})),
        )
        .await;
    assert_eq!(
        too_much.status,
        StatusCode::PAYMENT_REQUIRED,
        "{too_much:?}"
    );
    assert_eq!(too_much.code(), "insufficient_funds");
    assert_eq!(too_much.body["error"]["available"], 1_000);

    // An hour later the promo expires: its 50 goes back to the funding account.
    let funding_before = h.available("tally:funding").await;
    h.clock.advance(3_600_000);
    let g = grants(&h).await;
    let last = &g["grants"][1];
    assert_eq!(
        last["grant"],
        promo_id.as_str(),
        "expired grants come last: {g}"
    );
    assert_eq!(
        (&last["status"], &last["expired"], &last["free"]),
        (&json!("expired"), &json!(50), &json!(0))
    );
    assert_eq!(h.available("tally:funding").await, funding_before + 50);
    assert_eq!(h.available("alice").await, 1_300);

    // The history shows the grant records; a restart keeps everything.
    let hist = h
        .admin("GET", "/v1/accounts/alice/history?limit=50", None)
        .await;
    let kinds: Vec<String> = hist.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["record"]["change"]
                .as_object()
                .and_then(|c| c.keys().next().cloned())
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "GrantIssued"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "GrantExpired"), "{kinds:?}");
    let before = grants(&h).await;
    let h = h.restart().await;
    assert_eq!(grants(&h).await, before);
    assert_eq!(h.available("alice").await, 1_300);
}

#[tokio::test]
async fn an_allowance_grants_each_period_and_can_be_removed() {
    let h = Harness::new().await;
    h.world(0).await;
    let set = h
        .admin(
            "PUT",
            "/v1/accounts/alice/allowance",
            Some(json!({"amount": 2_000, "period": "day", "label": "plan"})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{set:?}");
    assert_eq!(set.body["allowance"]["period"], "day");
    assert_eq!(set.body["allowance"]["amount"], 2_000);
    // Issued before the next request: spendable at once, expiring at the end of the UTC day.
    let g = grants(&h).await;
    assert_eq!(g["grants"].as_array().unwrap().len(), 1, "{g}");
    let day = g["grants"][0]["allowance_period_ms"].as_u64().unwrap();
    assert_eq!(g["grants"][0]["expires_at_ms"], day + 86_400_000);
    assert_eq!(g["grants"][0]["label"], "plan");
    assert_eq!(h.available("alice").await, 2_000);
    let charge = h
        .admin(
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1_500})),
        )
        .await;
    assert_eq!(charge.status, StatusCode::CREATED, "{charge:?}");
    // The next day: yesterday's 500 went back, today's 2,000 came.
    let now = g["grants"][0]["issued_at_ms"].as_u64().unwrap();
    h.clock.advance(day + 86_400_000 - now);
    let g = grants(&h).await;
    assert_eq!(g["grants"].as_array().unwrap().len(), 2, "{g}");
    assert_eq!(g["grants"][0]["free"], 2_000);
    assert_eq!(g["grants"][1]["expired"], 500);
    assert_eq!(h.available("alice").await, 2_000);
    let removed = h
        .admin("DELETE", "/v1/accounts/alice/allowance", None)
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    assert_eq!(removed.body["allowance"], json!(null));
    let again = h
        .admin("DELETE", "/v1/accounts/alice/allowance", None)
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::NOT_FOUND, "no_allowance")
    );
}

#[tokio::test]
async fn bad_grant_requests_are_refused_with_their_codes_and_change_nothing() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let before = grants(&h).await;
    let cases = [
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({}),
            400,
            "missing_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 0}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 9_223_372_036_854_775_808u64}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 5, "expires_in_s": 0}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 5, "expires_in_s": 400_000_000}),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 5, "label": "x".repeat(65)}),
            400,
            "field_too_long",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 5, "x": 1}),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/v1/accounts/alice/grants",
            json!({"amount": 5, "from": "bob"}),
            422,
            "wrong_account_kind",
        ),
        (
            "POST",
            "/v1/accounts/chat/grants",
            json!({"amount": 5}),
            422,
            "wrong_account_kind",
        ),
        (
            "POST",
            "/v1/accounts/nobody/grants",
            json!({"amount": 5}),
            404,
            "unknown_account",
        ),
        (
            "PUT",
            "/v1/accounts/alice/allowance",
            json!({"amount": 5, "period": "week"}),
            400,
            "invalid_field",
        ),
        (
            "PUT",
            "/v1/accounts/alice/allowance",
            json!({"amount": 5, "period": "every", "anchor_ms": 0, "length_ms": 1_000}),
            400,
            "invalid_grant",
        ),
        (
            "PUT",
            "/v1/accounts/alice/allowance",
            json!({"amount": 0, "period": "day"}),
            400,
            "invalid_field",
        ),
        (
            "DELETE",
            "/v1/accounts/alice/allowance",
            json!(null),
            404,
            "no_allowance",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let a = h.admin(method, path, body.clone()).await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (status, code),
            "{method} {path} {body:?}: {a:?}"
        );
    }
    // A service key may not grant.
    let key = h.service_key("chat").await;
    let a = h
        .as_key(
            &key,
            "POST",
            "/v1/accounts/alice/grants",
            Some(json!({"amount": 5})),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{a:?}"
    );
    let a = h
        .as_key(&key, "GET", "/v1/accounts/alice/grants", None, None)
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert_eq!(grants(&h).await, before);
    assert_eq!(h.available("alice").await, 1_000);
}

#[tokio::test]
async fn a_grant_retried_with_its_idempotency_key_is_issued_once() {
    let h = Harness::new().await;
    h.world(0).await;
    let post = |amount: u64| {
        let h = &h;
        async move {
            h.as_key(
                ADMIN,
                "POST",
                "/v1/accounts/alice/grants",
                Some(json!({"amount": amount})),
                Some("grant-1"),
            )
            .await
        }
    };
    let first = post(700).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let again = post(700).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    let other = post(800).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
    assert_eq!(h.available("alice").await, 700);
    assert_eq!(grants(&h).await["grants"].as_array().unwrap().len(), 1);
}
