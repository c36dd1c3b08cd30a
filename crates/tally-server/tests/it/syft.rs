//! The Syft routes in-process, for what the SDK flows do not reach: the bound on remembered
//! transactions.

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::json;

use crate::common::Harness;

fn basic(email: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"))
    )
}

#[tokio::test]
async fn past_the_bound_the_oldest_settled_transactions_are_forgotten_pending_ones_never() {
    let config = tally_server::ServerConfig {
        syft_transactions_max: 3,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    for email in ["payer@example.com", "router@example.com"] {
        let a = h
            .admin(
                "POST",
                "/syft/v1/user/create",
                Some(json!({"email": email, "password": "password-123", "organization": "x"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    }
    let a = h
        .admin(
            "POST",
            "/syft/v1/user/add-balance",
            Some(json!({"recipientEmail": "payer@example.com", "amount": 10.0})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let payer = basic("payer@example.com", "password-123");
    async fn create(h: &Harness, payer: &str, i: u32) -> crate::common::Answer {
        let body = format!(
            r#"{{"senderEmail":"payer@example.com","recipientEmail":"router@example.com","amount":0.0{i}}}"#
        );
        h.raw(
            "POST",
            "/syft/v1/transaction/create",
            &[
                ("authorization", payer),
                ("content-type", "application/json"),
            ],
            body.into_bytes(),
        )
        .await
    }
    // The first one stays pending; then create-and-cancel rounds push past the bound.
    let pending = create(&h, &payer, 1).await;
    let pending_id = pending.body["transaction"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cancelled = Vec::new();
    for i in 2..=6 {
        let a = create(&h, &payer, i).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let id = a.body["transaction"]["id"].as_str().unwrap().to_owned();
        let cancel = format!(r#"{{"transactionId":"{id}"}}"#);
        let c = h
            .raw(
                "POST",
                "/syft/v1/transaction/cancel",
                &[("authorization", &payer)],
                cancel.into_bytes(),
            )
            .await;
        assert_eq!(c.status, StatusCode::OK, "{c:?}");
        cancelled.push(id);
    }
    let list = h
        .raw(
            "GET",
            "/syft/v1/transactions",
            &[("authorization", &payer)],
            vec![],
        )
        .await;
    let listed: Vec<&str> = list.body["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&pending_id.as_str()), "{listed:?}");
    assert!(!listed.contains(&cancelled[0].as_str()), "{listed:?}");
    assert!(listed.len() <= 4, "{listed:?}");
    // The pending one can still be confirmed by its creator.
    let confirm = format!(r#"{{"transactionId":"{pending_id}"}}"#);
    let a = h
        .raw(
            "POST",
            "/syft/v1/transaction/confirm",
            &[("authorization", &payer)],
            confirm.into_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["transaction"]["status"], "COMPLETED");
    // The bound holds across a restart too.
    let h = h.restart().await;
    let list = h
        .raw(
            "GET",
            "/syft/v1/transactions",
            &[("authorization", &payer)],
            vec![],
        )
        .await;
    assert!(list.body["transactions"].as_array().unwrap().len() <= 4);
}

#[tokio::test]
async fn open_sign_up_never_takes_over_an_existing_account() {
    let config = tally_server::ServerConfig {
        open_signup: true,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    let a = h
        .admin(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "alice@corp.com", "kind": "user"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    h.admin(
        "POST",
        "/v1/accounts/alice@corp.com/fund",
        Some(json!({"amount": 500_000_000})),
    )
    .await;
    let body = br#"{"email":"alice@corp.com","password":"attacker-password"}"#.to_vec();
    let a = h
        .raw(
            "POST",
            "/syft/v1/user/create",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::CONFLICT, "user_exists"),
        "{a:?}"
    );
    let me = h
        .raw(
            "GET",
            "/syft/v1/user/my-info",
            &[(
                "authorization",
                &basic("alice@corp.com", "attacker-password"),
            )],
            vec![],
        )
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.available("alice@corp.com").await, 500_000_000);
}

/// The other way round: a name mapped whose account was never opened (an open cut short) is
/// taken up by a sign-up, and a native open of it afterwards is refused (so an admin never
/// funds, thinking it theirs, an account someone else signs in to).
#[tokio::test]
async fn a_native_open_of_a_syft_users_name_is_refused() {
    let config = tally_server::ServerConfig {
        open_signup: true,
        ..tally_server::ServerConfig::default()
    };
    let h = Harness::with(config).await;
    // As an open cut short leaves it: the name mapped, no account.
    h.state.registry.map_name("bob@corp.com").await.unwrap();
    let body = br#"{"email":"bob@corp.com","password":"bobs-own-password"}"#.to_vec();
    let a = h
        .raw(
            "POST",
            "/syft/v1/user/create",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert!(a.status.is_success(), "{a:?}");
    let open = h
        .admin(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "bob@corp.com", "kind": "user"})),
        )
        .await;
    assert_eq!(
        (open.status, open.code()),
        (StatusCode::CONFLICT, "name_taken"),
        "{open:?}"
    );
}
