//! Two nodes over one PostgreSQL schema share the server's registry: a name, a key, a user or
//! an idempotency key made on one is known on the other; revocations reach the other within
//! a poll; operation ids never collide; a local registry is taken in by a new shared one.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tally_store::pg_testing::PgServer;

use crate::common::{Harness, ADMIN};

/// Both nodes of a cluster on a schema of its own.
async fn pair(pg: &PgServer, schema: &str) -> (Harness, Harness) {
    let a = Harness::on_postgres(pg, schema, "a").await;
    let b = Harness::on_postgres(pg, schema, "b").await;
    (a, b)
}

/// Opens `name` on whichever node owns its shard; returns (owner, other).
async fn open_somewhere<'h>(
    a: &'h Harness,
    b: &'h Harness,
    name: &str,
    kind: &str,
) -> (&'h Harness, &'h Harness) {
    let body = json!({"id": name, "kind": kind});
    let started = Instant::now();
    loop {
        for (owner, other) in [(a, b), (b, a)] {
            let r = owner
                .admin("POST", "/v1/accounts", Some(body.clone()))
                .await;
            match r.status {
                StatusCode::CREATED | StatusCode::OK => return (owner, other),
                StatusCode::SERVICE_UNAVAILABLE => assert_eq!(r.code(), "not_owner", "{r:?}"),
                _ => panic!("opening {name}: {r:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no node owns {name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_and_an_idempotency_key_made_on_one_node_are_known_on_the_other() {
    let pg = PgServer::start();
    let (a, b) = pair(&pg, "shared_names").await;
    let (owner, other) = open_somewhere(&a, &b, "alice", "user").await;
    let (chat_owner, _) = open_somewhere(&a, &b, "chat", "revenue").await;
    // The other node resolves the name at once (no poll waited for): it answers that it does
    // not own the account, never that the account does not exist.
    let r = other.admin("GET", "/v1/accounts/alice/balance", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.code(), "not_owner", "{r:?}");
    assert!(
        other.state.registry.account("alice").is_some(),
        "the miss brought the other node's registry up to date"
    );
    // Both nodes hand the same id to the name.
    assert_eq!(
        a.state.registry.account("alice"),
        b.state.registry.account("alice")
    );
    // A name nobody mapped is still unknown on both.
    for node in [&a, &b] {
        let r = node.admin("GET", "/v1/accounts/nobody/balance", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        assert_eq!(r.code(), "unknown_account");
    }
    let r = owner
        .admin(
            "POST",
            "/v1/accounts/alice/fund",
            Some(json!({"amount": 1_000_000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // A keyed charge on the owner; its retry on the other node is answered from the shared
    // idempotency key (the same body, marked replayed), without running it again.
    let charge = json!({"account": "alice", "app": "chat", "amount": 1_234});
    let first = owner
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(charge.clone()),
            Some("charge-1"),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    // The answer is recorded in the background: wait for the retry to find it.
    let started = Instant::now();
    let retry = loop {
        let retry = other
            .as_key(
                ADMIN,
                "POST",
                "/v1/charges",
                Some(charge.clone()),
                Some("charge-1"),
            )
            .await;
        if retry.headers.get("idempotent-replayed").is_some() {
            break retry;
        }
        // Until then the other node runs the same operation id, which it does not own.
        assert_eq!(retry.code(), "not_owner", "{retry:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{retry:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    // The same key with another amount is a conflict on either node, naming the field.
    for node in [owner, other] {
        let r = node
            .as_key(
                ADMIN,
                "POST",
                "/v1/charges",
                Some(json!({"account": "alice", "app": "chat", "amount": 999})),
                Some("charge-1"),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
        assert_eq!(r.code(), "idempotency_conflict");
        assert_eq!(r.body["error"]["field"], "amount", "{r:?}");
    }
    // Charged once.
    assert_eq!(owner.available("alice").await, 1_000_000 - 1_234);
    // The idempotency keys live in PostgreSQL, not in either data directory.
    for node in [&a, &b] {
        assert!(!node.dir.path().join("idempotency").exists());
        assert!(!node.dir.path().join("server").exists());
    }
    let _ = chat_owner;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_node_works_on_the_other_until_revoked_there() {
    let pg = PgServer::start();
    let (a, b) = pair(&pg, "shared_keys").await;
    let made = a
        .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    let secret = made.body["secret"].as_str().unwrap().to_owned();
    let id = made.body["key"]["id"].as_u64().unwrap();
    // Known on b at once (a miss brings b up to date).
    let r = b.as_key(&secret, "GET", "/v1/keys", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    // A wrong secret for the same id is refused on both.
    let forged = format!("tk_{id}_not-the-secret");
    for node in [&a, &b] {
        let r = node.as_key(&forged, "GET", "/v1/keys", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    }
    // Key ids drawn on both nodes never collide.
    let other = b
        .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{other:?}");
    assert_ne!(other.body["key"]["id"].as_u64().unwrap(), id);
    let r = a.admin("DELETE", &format!("/v1/keys/{id}"), None).await;
    assert!(r.status.is_success(), "{r:?}");
    let r = a.as_key(&secret, "GET", "/v1/keys", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    // b follows within a poll (500 ms) and a round trip.
    let started = Instant::now();
    loop {
        let r = b.as_key(&secret, "GET", "/v1/keys", None, None).await;
        if r.status == StatusCode::UNAUTHORIZED {
            assert!(r.text.contains("revoked"), "{r:?}");
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revocation did not reach b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nodes share the tokens' signing secret and never share an operation-id epoch.
    assert_eq!(a.state.jwt_secret, b.state.jwt_secret);
    assert!(!a.dir.path().join("jwt.secret").exists());
    let (ea, eb) = (
        a.state.registry.fresh_op().0 >> 64,
        b.state.registry.fresh_op().0 >> 64,
    );
    assert_ne!(ea, eb);
    assert!(ea >= 1 << 32 && eb >= 1 << 32, "{ea} {eb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_racing_for_one_name_or_one_email_agree_on_the_winner() {
    let pg = PgServer::start();
    let (a, b) = pair(&pg, "shared_race").await;
    let names: Vec<String> = (0..20).map(|i| format!("race-{i}")).collect();
    let (ra, rb) = tokio::join!(
        async {
            let mut out = Vec::new();
            for n in &names {
                out.push(a.state.registry.map_name(n).await.unwrap());
            }
            out
        },
        async {
            let mut out = Vec::new();
            for n in names.iter().rev() {
                out.push(b.state.registry.map_name(n).await.unwrap());
            }
            out.reverse();
            out
        }
    );
    let mut ids = std::collections::HashSet::new();
    for ((ida, new_a), (idb, new_b)) in ra.iter().zip(&rb) {
        assert_eq!(ida, idb, "both nodes map a name to one id");
        assert!(new_a ^ new_b, "exactly one node made the mapping");
        assert!(ids.insert(*ida), "two names share id {ida:?}");
    }
    // One email signed up on both at once: exactly one stands, on both nodes.
    let user = |hash: &str| tally_server::registry::User {
        email: "eve@example.com".into(),
        account: tally::AccountId(77_777),
        password_hash: hash.into(),
        organization: None,
        created_ms: 1,
    };
    let (wa, wb) = tokio::join!(
        a.state.registry.add_user(user("hash-a")),
        b.state.registry.add_user(user("hash-b"))
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    assert!(wa ^ wb, "exactly one sign-up stands: {wa} {wb}");
    let winner = if wa { "hash-a" } else { "hash-b" };
    for node in [&a, &b] {
        let u = node
            .state
            .registry
            .user_fresh("eve@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.password_hash, winner);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shared_registry_takes_in_the_local_one() {
    let pg = PgServer::start();
    let local = Harness::new().await;
    local.world(0).await;
    let made = local
        .admin("POST", "/v1/keys", Some(json!({"scope": "admin"})))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    let key_id = made.body["key"]["id"].as_u64().unwrap();
    let alice = local.state.registry.account("alice").unwrap();
    let dir = local.dir;
    tally_server::serve::shutdown_state(local.state)
        .await
        .unwrap();
    // The ledger's store makes the schema; the registry is opened over it.
    let store_config = pg.config("shared_import");
    let schema = store_config.schema.clone();
    let (store, _) = tokio::task::spawn_blocking(move || tally::PgStore::open(store_config))
        .await
        .unwrap()
        .unwrap();
    let shared = tally_server::registry::SharedConfig {
        url: pg.url().to_owned(),
        schema,
    };
    let limits = tally_server::registry::RegistryLimits::default();
    let registry = tally_server::registry::Registry::open_shared(&shared, dir.path(), limits, 1)
        .await
        .unwrap();
    assert!(registry.is_shared());
    assert_eq!(registry.account("alice"), Some(alice));
    assert!(registry.key(key_id).is_some());
    // New names are numbered above the imported ones, new keys above the imported keys.
    let (fresh, new) = registry.map_name("newcomer").await.unwrap();
    assert!(new);
    assert!(fresh.0 > alice.0, "{fresh:?} after {alice:?}");
    assert!(registry.account("chat").is_some_and(|c| c.0 < fresh.0));
    drop(store);
}

/// A node serving on a real listener: its URL, and the sender that stops it.
async fn listen(h: &Harness) -> (String, tokio::sync::oneshot::Sender<()>) {
    let server = tally_server::Server::bind(h.state.clone()).await.unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// One request over HTTP: (status, the node that answered if another did, the JSON body).
async fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, serde_json::Value) {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, axum::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client
        .request(req.body(axum::body::Body::from(bytes)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let by = response
        .headers()
        .get(tally_server::forward::ANSWERED_BY)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        by,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_takes_any_request_and_forwards_it_to_the_shards_owner() {
    let pg = PgServer::start();
    let (a, b) = pair(&pg, "shared_forward").await;
    let (ua, _stop_a) = listen(&a).await;
    let (ub, _stop_b) = listen(&b).await;
    // Every account opened through a; those of b's shards are answered by b.
    let users: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    let mut answered_by_b = 0;
    for (name, kind) in users
        .iter()
        .map(|u| (u.as_str(), "user"))
        .chain([("chat", "revenue")])
    {
        let (status, by, body) = call(
            &ua,
            "POST",
            "/v1/accounts",
            Some(json!({"id": name, "kind": kind})),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        if by.as_deref() == Some("b") {
            answered_by_b += 1;
        }
    }
    assert!(
        answered_by_b > 0 && answered_by_b < 25,
        "both nodes serve shards: {answered_by_b} of 25 answered by b"
    );
    // Funded through b, charged through either with a key, retried through the other.
    for (i, name) in users.iter().enumerate() {
        let (status, _, body) = call(
            &ub,
            "POST",
            &format!("/v1/accounts/{name}/fund"),
            Some(json!({"amount": 10_000})),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let (first, second) = if i % 2 == 0 { (&ua, &ub) } else { (&ub, &ua) };
        let charge = json!({"account": name, "app": "chat", "amount": 100 + i});
        let key = format!("charge-{name}");
        let headers = [("idempotency-key", key.as_str())];
        let (status, _, body) =
            call(first, "POST", "/v1/charges", Some(charge.clone()), &headers).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {body}");
        let (again, _, replay) = call(second, "POST", "/v1/charges", Some(charge), &headers).await;
        assert_eq!(again, StatusCode::CREATED, "{name}: {replay}");
        assert_eq!(
            replay, body,
            "the retry on the other node is the first answer"
        );
    }
    // Each charged once, read through either node.
    let mut revenue = 0;
    for (i, name) in users.iter().enumerate() {
        let via = if i % 3 == 0 { &ua } else { &ub };
        let (status, _, body) = call(
            via,
            "GET",
            &format!("/v1/accounts/{name}/balance"),
            None,
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["available"].as_i64(), Some(10_000 - 100 - i as i64));
        revenue += 100 + i as i64;
    }
    let chat_balance = |url: String| async move {
        call(&url, "GET", "/v1/accounts/chat/balance", None, &[]).await
    };
    let (status, _, body) = chat_balance(ua.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The credits reach chat's node through the legs (within a tick).
    let started = Instant::now();
    let mut body = body;
    while body["available"].as_i64() != Some(revenue) {
        assert!(started.elapsed() < Duration::from_secs(5), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body = chat_balance(ub.clone()).await.2;
    }
    // A batch through one node over every account: each operation refused there goes on to
    // its owner under its own op id; the batch's retry through the other node (same key) is
    // the first answer again, and nothing is charged twice.
    let operations: Vec<serde_json::Value> = users
        .iter()
        .map(|u| json!({"op": "charge", "account": u, "app": "chat", "amount": 7}))
        .collect();
    let batch = json!({ "operations": operations });
    let headers = [("idempotency-key", "batch-1")];
    let (status, _, first) = call(&ua, "POST", "/v1/batch", Some(batch.clone()), &headers).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let statuses: Vec<u64> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == 201), "{first}");
    // Once its answer is recorded, the retry through b is answered with it.
    let started = Instant::now();
    loop {
        let (status, _, again) =
            call(&ub, "POST", "/v1/batch", Some(batch.clone()), &headers).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        if again == first {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{again} vs {first}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, name) in users.iter().enumerate() {
        let (_, _, body) = call(
            &ub,
            "GET",
            &format!("/v1/accounts/{name}/balance"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            body["available"].as_i64(),
            Some(10_000 - 100 - i as i64 - 7),
            "{name}: {body}"
        );
    }
    // Operation ids a client makes up are refused (only a node's MAC'd ids are taken).
    let (status, _, body) = call(
        &ua,
        "POST",
        "/v1/batch",
        Some(batch.clone()),
        &[
            (tally_server::forward::FORWARDED, "a"),
            (tally_server::forward::OP_IDS, "1,2,3"),
            (tally_server::forward::OP_IDS_MAC, "00"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A request already forwarded is never forwarded again: the node that does not serve the
    // account answers it not_owner itself.
    let (a_owns, b_owns) = {
        let mut a_owns = None;
        let mut b_owns = None;
        for name in &users {
            let (_, by, _) = call(
                &ua,
                "GET",
                &format!("/v1/accounts/{name}/balance"),
                None,
                &[],
            )
            .await;
            match by.as_deref() {
                Some("b") => b_owns = Some(name.clone()),
                _ => a_owns = Some(name.clone()),
            }
        }
        (a_owns.unwrap(), b_owns.unwrap())
    };
    for (url, name) in [(&ua, &b_owns), (&ub, &a_owns)] {
        let (status, by, body) = call(
            url,
            "GET",
            &format!("/v1/accounts/{name}/balance"),
            None,
            &[(tally_server::forward::FORWARDED, "elsewhere")],
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "not_owner", "{body}");
        assert_eq!(by, None);
    }
}
