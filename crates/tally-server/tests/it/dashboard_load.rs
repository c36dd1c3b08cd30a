//! The dashboard's reads at 10,000 accounts and a day of minute buckets: a measurement, not a
//! check of speed (run by hand, figures in BENCHMARKS.md):
//! `cargo test --release -p tally-server --test it dashboard_load -- --ignored --nocapture`.
//! It asserts only what the reads return.

use std::time::Instant;

use serde_json::json;

use crate::common::{Harness, ADMIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand with --release"]
async fn dashboard_load_at_10k_accounts() {
    let h = Harness::new().await;
    h.world(100_000_000).await;
    let t = Instant::now();
    for i in 0..10_000u32 {
        let name = format!("user-{i:05}");
        let a = h
            .admin(
                "POST",
                "/v1/accounts",
                Some(json!({"id": name, "kind": "user"})),
            )
            .await;
        assert_eq!(a.status.as_u16(), 201, "{a:?}");
        if i % 10 == 0 {
            h.admin(
                "POST",
                &format!("/v1/accounts/{name}/fund"),
                Some(json!({"amount": 1_000_000})),
            )
            .await;
        }
    }
    eprintln!("made 10,000 accounts in {:?}", t.elapsed());
    // A day of minute buckets: one charge a minute for 24 hours.
    for m in 0..1_440u64 {
        h.clock.advance(60_000);
        let a = h
            .as_key(
                ADMIN,
                "POST",
                "/v1/charges",
                Some(
                    json!({"account": "alice", "app": "chat", "amount": 1, "endpoint": "gpt",
                            "usage": {"input_tokens": 5}}),
                ),
                Some(&format!("m{m}")),
            )
            .await;
        assert_eq!(a.status.as_u16(), 201, "{a:?}");
    }
    for round in 0..3 {
        let t = Instant::now();
        let o = h.admin("GET", "/v1/overview", None).await;
        let overview = t.elapsed();
        assert_eq!(o.body["balances"]["scanned"], 10_002);
        assert_eq!(o.body["balances"]["complete"], true);
        let t = Instant::now();
        let l = h.admin("GET", "/v1/accounts?limit=50", None).await;
        let list = t.elapsed();
        assert_eq!(l.body["accounts"].as_array().unwrap().len(), 50);
        let now = h.state.now_ms();
        let t = Instant::now();
        let u = h
            .admin(
                "GET",
                &format!(
                    "/v1/usage?granularity=minute&from_ms={}&to_ms={}",
                    now - 86_400_000,
                    now + 1
                ),
                None,
            )
            .await;
        let usage = t.elapsed();
        assert_eq!(u.body["buckets"].as_array().unwrap().len(), 1_440);
        eprintln!(
            "round {round}: overview {overview:?}, accounts page {list:?}, a day of minute buckets {usage:?}"
        );
        // A write, so that the next overview is computed again rather than reused.
        h.admin(
            "POST",
            "/v1/accounts/user-00000/fund",
            Some(json!({"amount": 1})),
        )
        .await;
    }
}
