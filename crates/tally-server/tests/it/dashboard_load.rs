//! The dashboard's reads at 10,000 accounts and a day of minute buckets: a measurement, not a
//! check of speed (run by hand, figures in BENCHMARKS.md):
//! `cargo test --release -p tally-server --test it dashboard_load -- --ignored --nocapture`.
//! It asserts only what the reads return.

use std::time::Instant;

use serde_json::json;

use crate::common::{Harness, ADMIN};

/// 10,000 user accounts (one in ten funded) and a day of minute buckets: one charge by alice a
/// minute for the 24 hours up to the harness clock's time plus a day.
pub async fn seed_10k_accounts_and_a_day(h: &Harness) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand with --release"]
async fn dashboard_load_at_10k_accounts() {
    let h = Harness::new().await;
    seed_10k_accounts_and_a_day(&h).await;
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
        // The reads of alice's page (1,440 charges in her history).
        let mut reads = Vec::new();
        for path in [
            "/v1/accounts/alice/balance".to_owned(),
            "/v1/accounts/alice/holds".to_owned(),
            "/v1/accounts/alice/history?limit=50&after=0".to_owned(),
            "/v1/accounts/alice/balance-history?limit=1000".to_owned(),
            "/v1/accounts/alice/tokens".to_owned(),
            "/v1/accounts/alice/queries?from_ms=0&limit=100".to_owned(),
            "/v1/accounts?kind=revenue&limit=20".to_owned(),
            format!(
                "/v1/usage/top-users?granularity=hour&from_ms={}&to_ms={}&n=10",
                now - 86_400_000,
                now + 1
            ),
            format!(
                "/v1/usage?granularity=day&account=alice&from_ms={}&to_ms={}",
                now - 30 * 86_400_000,
                now + 1
            ),
        ] {
            let t = Instant::now();
            let a = h.admin("GET", &path, None).await;
            assert_eq!(a.status.as_u16(), 200, "{path}: {a:?}");
            reads.push(format!("{path}: {:?}", t.elapsed()));
        }
        eprintln!("round {round}: alice's page: {reads:?}");
        // A write, so that the next overview is computed again rather than reused.
        h.admin(
            "POST",
            "/v1/accounts/user-00000/fund",
            Some(json!({"amount": 1})),
        )
        .await;
    }
}
