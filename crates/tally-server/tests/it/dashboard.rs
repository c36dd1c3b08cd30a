//! The dashboard's reads: the overview, the account list, an account's holds, the low-balance
//! thresholds, and the page itself.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{Harness, ADMIN};

#[tokio::test]
async fn the_overview_sums_what_the_accounts_say() {
    let h = Harness::new().await;
    h.world(10_000).await;
    h.admin(
        "POST",
        "/v1/accounts/bob/fund",
        Some(json!({"amount": 500})),
    )
    .await;
    let charge = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 1_234, "endpoint": "gpt"})),
            Some("c1"),
        )
        .await;
    assert_eq!(charge.status, StatusCode::CREATED, "{charge:?}");
    let hold = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/holds",
            Some(json!({"account": "bob", "app": "search", "amount": 200})),
            Some("h1"),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let low = h
        .admin(
            "PUT",
            "/v1/accounts/bob/low-balance",
            Some(json!({"threshold": 1_000})),
        )
        .await;
    assert_eq!(low.status, StatusCode::OK, "{low:?}");

    let o = h.admin("GET", "/v1/overview", None).await;
    assert_eq!(o.status, StatusCode::OK, "{o:?}");
    let b = &o.body["balances"];
    let alice = h.available("alice").await;
    let bob = h.available("bob").await;
    assert_eq!(alice, 10_000 - 1_234);
    assert_eq!(bob, 300);
    assert_eq!(b["available"], alice + bob);
    assert_eq!(b["pending"], 200);
    assert_eq!(b["holding_accounts"], 1);
    assert_eq!(b["complete"], true);
    assert_eq!(o.body["accounts"]["user"], 2);
    assert_eq!(o.body["accounts"]["revenue"], 2);
    assert_eq!(o.body["today"]["cost"], 1_234);
    assert_eq!(o.body["today"]["calls"], 1);
    assert_eq!(o.body["month"]["cost"], 1_234);
    let minutes = o.body["per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert_eq!(minutes[59]["calls"], 1);
    let chat = o.body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "chat")
        .unwrap();
    assert_eq!(chat["cost"], 1_234);
    assert_eq!(o.body["low_balance"]["count"], 1);
    assert_eq!(o.body["low_balance"]["accounts"][0]["account"], "bob");

    // The thresholds are kept across a restart.
    let h = h.restart().await;
    let o = h.admin("GET", "/v1/overview", None).await;
    assert_eq!(o.body["low_balance"]["count"], 1, "{o:?}");
    let clear = h
        .admin(
            "PUT",
            "/v1/accounts/bob/low-balance",
            Some(json!({"threshold": null})),
        )
        .await;
    assert_eq!(clear.status, StatusCode::OK);
    h.clock.advance(1_000);
    let o = h.admin("GET", "/v1/overview", None).await;
    assert_eq!(o.body["low_balance"]["count"], 0, "{o:?}");
}

#[tokio::test]
async fn accounts_are_listed_by_name_a_page_at_a_time() {
    let h = Harness::new().await;
    h.world(700).await;
    let page = h.admin("GET", "/v1/accounts?limit=2", None).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let names: Vec<&str> = page.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(page.body["accounts"][0]["available"], 700);
    assert_eq!(page.body["accounts"][0]["kind"], "user");
    let next = page.body["next_after"].as_str().unwrap();
    let rest = h
        .admin("GET", &format!("/v1/accounts?limit=10&after={next}"), None)
        .await;
    let names: Vec<&str> = rest.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chat", "search", "tally:funding"]);
    assert!(rest.body["next_after"].is_null());
    let apps = h.admin("GET", "/v1/accounts?kind=revenue", None).await;
    assert_eq!(apps.body["accounts"].as_array().unwrap().len(), 2);

    for bad in ["limit=0", "limit=1001", "kind=other", "sort=name"] {
        let a = h.admin("GET", &format!("/v1/accounts?{bad}"), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
    }
    let service = h.service_key("chat").await;
    let refused = h.as_key(&service, "GET", "/v1/accounts", None, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = h.as_key(&service, "GET", "/v1/overview", None, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_account_shows_its_pending_holds_soonest_first() {
    let h = Harness::new().await;
    h.world(1_000).await;
    for (key, timeout) in [("a", 600_000), ("b", 60_000)] {
        let a = h
            .as_key(
                ADMIN,
                "POST",
                "/v1/holds",
                Some(json!({"account": "alice", "app": "chat", "amount": 100,
                            "timeout_ms": timeout})),
                Some(key),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    }
    let a = h.admin("GET", "/v1/accounts/alice/holds", None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let holds = a.body["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 2);
    assert!(holds[0]["expires_at_ms"].as_u64() < holds[1]["expires_at_ms"].as_u64());
    assert_eq!(holds[0]["amount_held"], 100);
    // Every record of the history is given, its operation id (past 2^64 for the server's own
    // ids) as a string.
    let hist = h
        .admin("GET", "/v1/accounts/alice/history", None)
        .await
        .body;
    let entries = hist["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{hist}"); // opened, funded, two holds
    for e in entries {
        assert!(
            e["record"]["change"].is_object() || e["record"]["change"].is_string(),
            "{e}"
        );
    }
    assert_eq!(
        entries[2]["record"]["change"]["Reserved"]["app_name"],
        "chat"
    );
    assert_eq!(
        entries[1]["record"]["change"]["Funded"]["from_name"],
        "tally:funding"
    );
    let op = entries[1]["record"]["op"].as_str().unwrap();
    assert!(op.parse::<u128>().unwrap() > u128::from(u64::MAX), "{op}");
    let missing = h.admin("GET", "/v1/accounts/nobody/holds", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = h
        .admin(
            "PUT",
            "/v1/accounts/alice/low-balance",
            Some(json!({"threshold": -1})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let h = Harness::new().await;
    let page = h.raw("GET", "/", &[], vec![]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(page.text.contains("assets/app.js"));
    for asset in [
        "app.js",
        "app.css",
        "uPlot.iife.min.js",
        "LICENSE-uPlot.txt",
    ] {
        let a = h.raw("GET", &format!("/assets/{asset}"), &[], vec![]).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        assert!(!a.text.is_empty());
    }
    let none = h.raw("GET", "/assets/secret.key", &[], vec![]).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_query_history_reads_as_a_router_shows_it() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let hold = |key: &'static str| {
        let h = &h;
        async move {
            let a = h
                .as_key(
                    ADMIN,
                    "POST",
                    "/v1/holds",
                    Some(json!({"account": "alice", "app": "chat", "amount": 500,
                                "endpoint": "gpt", "timeout_ms": 60_000})),
                    Some(key),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
            a.body["id"].as_str().unwrap().to_owned()
        }
    };
    let done = hold("q1").await;
    let commit = h
        .as_key(
            ADMIN,
            "POST",
            &format!("/v1/holds/{done}/commit"),
            Some(json!({"amount": 321})),
            Some("q1c"),
        )
        .await;
    assert_eq!(commit.status, StatusCode::OK, "{commit:?}");
    let cancelled = hold("q2").await;
    h.as_key(
        ADMIN,
        "POST",
        &format!("/v1/holds/{cancelled}/void"),
        Some(json!({})),
        Some("q2v"),
    )
    .await;
    h.clock.advance(1_000);
    let since = h.state.now_ms();
    let pending = hold("q3").await;
    h.as_key(
        ADMIN,
        "POST",
        "/v1/charges",
        Some(json!({"account": "alice", "app": "search", "amount": 42, "endpoint": "web"})),
        Some("q4"),
    )
    .await;

    let all = h.admin("GET", "/v1/accounts/alice/queries", None).await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    assert_eq!(all.body["complete"], true);
    let q = all.body["queries"].as_array().unwrap();
    let seen: Vec<(&str, &str, u64)> = q
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["amount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("search", "completed", 42),
            ("chat", "pending", 500),
            ("chat", "cancelled", 500),
            ("chat", "completed", 321),
        ]
    );
    assert_eq!(q[1]["id"], pending.as_str());
    assert_eq!(q[3]["id"], done.as_str());
    assert_eq!(q[0]["sender"], "alice");

    let recent = h
        .admin(
            "GET",
            &format!("/v1/accounts/alice/queries?from_ms={since}&limit=1"),
            None,
        )
        .await;
    assert_eq!(recent.body["matched"], 2, "{recent:?}");
    assert_eq!(recent.body["queries"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "from_ms=10&to_ms=5", "status=x"] {
        let a = h
            .admin("GET", &format!("/v1/accounts/alice/queries?{bad}"), None)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
    }
}
