//! Prices, metered calls and usage reports over HTTP.

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{Harness, ADMIN};

async fn priced() -> Harness {
    let h = Harness::new().await;
    h.world(100_000_000).await;
    // The seed's "200 / 600 cents per million input / output tokens".
    let price = json!({"app": "chat", "endpoint": "/v1/chat", "price": {"type": "per_token",
        "input": {"cents": "200", "per": 1_000_000}, "output": {"cents": "600", "per": 1_000_000}}});
    let a = h.admin("PUT", "/v1/prices", Some(price)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    h
}

#[tokio::test]
async fn a_metered_call_holds_its_largest_cost_and_commits_its_actual_cost_exactly() {
    let h = priced().await;
    let start = h
        .admin(
            "POST",
            "/v1/meter",
            Some(
                json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
            "max_usage": {"input_tokens": 1_000, "output_tokens": 4_000}}),
            ),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{start:?}");
    // 200 cents per million tokens is 200 µ¢ a token: 1,000 × 200 + 4,000 × 600 µ¢.
    assert_eq!(start.body["amount_held"], 2_600_000);
    let hold = start.body["hold"].as_str().unwrap().to_owned();
    let done = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/finish"),
            Some(json!({"usage": {"input_tokens": 1_000, "output_tokens": 333}})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(done.body["cost"], 200_000 + 199_800);
    assert_eq!(done.body["amount_released"], 2_600_000 - 399_800);
    assert_eq!(h.available("alice").await, 100_000_000 - 399_800);
    let quote = h
        .admin(
            "POST",
            "/v1/prices/quote",
            Some(json!({"app": "chat", "endpoint": "/v1/chat", "usage": {"output_tokens": 1}})),
        )
        .await;
    assert_eq!(quote.body["cost"], 600);

    let now = h.state.now_ms();
    let usage = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=minute&from_ms={}&to_ms={}&app=chat",
                now - 60_000,
                now + 60_000
            ),
            None,
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{usage:?}");
    assert_eq!(usage.body["totals"]["cost"], 399_800);
    assert_eq!(usage.body["totals"]["output_tokens"], 333);
    let top = h
        .admin(
            "GET",
            &format!(
                "/v1/usage/top-users?granularity=day&from_ms=0&to_ms={}",
                now + 1
            ),
            None,
        )
        .await;
    assert_eq!(top.body["users"][0]["account"], "alice", "{top:?}");
    let history = h
        .admin("GET", "/v1/accounts/alice/balance-history", None)
        .await;
    let points = history.body["points"].as_array().unwrap();
    assert_eq!(points.last().unwrap()["posted"], 100_000_000 - 399_800);
}

#[tokio::test]
async fn a_price_survives_a_restart_and_a_malformed_rate_is_refused() {
    let h = priced().await;
    let h = h.restart().await;
    let got = h
        .admin("GET", "/v1/prices?app=chat&endpoint=/v1/chat", None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(
        got.body["price"]["output"]["amount"], 600_000_000,
        "{got:?}"
    );
    assert_eq!(got.body["price"]["output"]["per"], 1_000_000);
    let inexact = h
        .admin("PUT", "/v1/prices", Some(json!({"app": "chat", "endpoint": "/x", "price": {"type": "per_request", "amount": 0}})))
        .await;
    assert_eq!(inexact.status, StatusCode::BAD_REQUEST);
    // A tenth of a µ¢ per character is exact (1 µ¢ per 10; a call's cost rounds up once) ...
    let fraction = h
        .admin("PUT", "/v1/prices", Some(json!({"app": "chat", "endpoint": "/x", "price": {"type": "per_character", "rate": {"usd": "0.000000001"}}})))
        .await;
    assert_eq!(fraction.status, StatusCode::OK, "{fraction:?}");
    assert_eq!(
        fraction.body["price"]["rate"],
        json!({"amount": 1, "per": 10})
    );
    // ... a rate that is not a decimal number, or given twice over, is not.
    for rate in [
        json!({"usd": "1,5"}),
        json!({"usd": "0.1", "amount": 3}),
        json!({"cents": "-1"}),
    ] {
        let bad = h
            .admin("PUT", "/v1/prices", Some(json!({"app": "chat", "endpoint": "/y", "price": {"type": "per_page", "rate": rate}})))
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{rate}: {bad:?}");
    }
    let none = h
        .admin("GET", "/v1/prices?app=chat&endpoint=/y", None)
        .await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::NOT_FOUND, "no_price")
    );
}

#[tokio::test]
async fn finishing_above_what_was_held_is_refused_and_the_hold_stays() {
    let h = priced().await;
    let start = h
        .admin(
            "POST",
            "/v1/meter",
            Some(
                json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
            "max_usage": {"output_tokens": 10}}),
            ),
        )
        .await;
    let hold = start.body["hold"].as_str().unwrap().to_owned();
    let over = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/finish"),
            Some(json!({"usage": {"output_tokens": 11}})),
        )
        .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "commit_exceeds_hold")
    );
    let got = h.admin("GET", &format!("/v1/holds/{hold}"), None).await;
    assert_eq!(got.body["status"], "pending");
}

#[tokio::test]
async fn affordable_says_how_many_output_tokens_the_balance_pays_for_and_that_is_exact() {
    let h = priced().await;
    // 100,000,000 µ¢, of which 1,000 input tokens take 200,000: the rest buys
    // 99,800,000 / 600 = 166,333.33 output tokens, so 166,333 (one more would not fit).
    let ask = json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
        "usage": {"input_tokens": 1_000}, "maximize": "output_tokens"});
    let a = h
        .admin("POST", "/v1/prices/affordable", Some(ask.clone()))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["units"], 166_333);
    assert_eq!(a.body["cost"], 200_000 + 166_333 * 600);
    assert_eq!(a.body["limited_by"], "balance");
    // Holding that cost is accepted, and then nothing more fits.
    let start = h
        .admin(
            "POST",
            "/v1/meter",
            Some(
                json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
                "max_usage": {"input_tokens": 1_000, "output_tokens": 166_333}}),
            ),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{start:?}");
    let after = h
        .admin("POST", "/v1/prices/affordable", Some(ask.clone()))
        .await;
    assert_eq!(after.body["units"], serde_json::Value::Null, "{after:?}");
    assert_eq!(after.body["room"], 200);

    let mut bad = ask.clone();
    bad["maximize"] = json!("tokens");
    let refused = h.admin("POST", "/v1/prices/affordable", Some(bad)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_REQUEST, "invalid_field"),
        "{refused:?}"
    );
    let search = h.service_key("search").await;
    let other = h
        .as_key(&search, "POST", "/v1/prices/affordable", Some(ask), None)
        .await;
    assert_eq!(
        other.status,
        StatusCode::FORBIDDEN,
        "another app's key: {other:?}"
    );
}

#[tokio::test]
async fn a_price_change_mid_call_does_not_change_what_the_call_costs_and_prices_survive_a_restart()
{
    let h = priced().await;
    let start = h
        .admin(
            "POST",
            "/v1/meter",
            Some(
                json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
                "max_usage": {"output_tokens": 1_000}}),
            ),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{start:?}");
    let hold = start.body["hold"].as_str().unwrap().to_owned();
    let quoted = start.body["price_version"].as_u64().unwrap();
    let price = json!({"app": "chat", "endpoint": "/v1/chat", "price": {"type": "per_token",
        "input": {"cents": "1000", "per": 1_000_000}, "output": {"cents": "3000", "per": 1_000_000}}});
    let set = h.admin("PUT", "/v1/prices", Some(price)).await;
    assert_eq!(set.status, StatusCode::OK, "{set:?}");
    let newer = set.body["version"].as_u64().unwrap();
    assert!(newer > quoted);
    let h = h.restart().await;
    let got = h
        .admin("GET", "/v1/prices?app=chat&endpoint=/v1/chat", None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(
        got.body["version"], newer,
        "the new price survived the restart"
    );
    let done = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/finish"),
            Some(json!({"usage": {"output_tokens": 100}})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(
        done.body["cost"],
        100 * 600,
        "priced as quoted: 600 µ¢ a token, not 3,000"
    );
    assert_eq!(done.body["price_version"], quoted);
}

#[tokio::test]
async fn a_price_an_earlier_build_kept_in_the_registry_moves_into_the_ledger_once() {
    let h = Harness::new().await;
    h.world(1_000).await;
    let chat = h.state.account("chat").await.unwrap();
    let old = tally::Price::PerRequest(tally::Amount::new(700).unwrap());
    h.state
        .registry
        .set_price(chat, "/old", &old)
        .await
        .unwrap();
    let h = h.restart().await;
    let got = h
        .admin("GET", "/v1/prices?app=chat&endpoint=/old", None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(
        got.body["version"], 1,
        "imported as the catalog's first entry"
    );
    // Changed in the ledger, it is not brought back from the registry at the next start.
    let price = json!({"app": "chat", "endpoint": "/old",
        "price": {"type": "per_request", "amount": 900}});
    assert_eq!(
        h.admin("PUT", "/v1/prices", Some(price)).await.status,
        StatusCode::OK
    );
    let h = h.restart().await;
    let got = h
        .admin("GET", "/v1/prices?app=chat&endpoint=/old", None)
        .await;
    assert_eq!(got.body["version"], 2, "{got:?}");
    assert_eq!(got.body["price"]["amount"], 900, "{got:?}");
}

#[tokio::test]
async fn a_metered_stream_reports_its_parts_by_usage_and_finishes_at_the_pinned_price() {
    let h = priced().await;
    let start = h
        .admin(
            "POST",
            "/v1/meter",
            Some(
                json!({"account": "alice", "app": "chat", "endpoint": "/v1/chat",
                "max_usage": {"input_tokens": 1_000, "output_tokens": 100}}),
            ),
        )
        .await;
    assert_eq!(start.status, StatusCode::CREATED, "{start:?}");
    let hold = start.body["hold"].as_str().unwrap().to_owned();
    assert_eq!(start.body["amount_held"], 200_000 + 60_000);
    let part = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/progress"),
            Some(json!({"usage": {"input_tokens": 1_000, "output_tokens": 50}})),
        )
        .await;
    assert_eq!(part.status, StatusCode::OK, "{part:?}");
    assert_eq!(part.body["amount_posted"], 200_000 + 30_000);
    // The stream runs past its estimate: 60 more tokens do not fit until the hold is extended.
    let over = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/progress"),
            Some(json!({"usage": {"output_tokens": 60}})),
        )
        .await;
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "commit_exceeds_hold"),
        "{over:?}"
    );
    let more = h
        .admin(
            "POST",
            &format!("/v1/holds/{hold}/extend"),
            Some(json!({"amount": 6_000})),
        )
        .await;
    assert_eq!(more.status, StatusCode::OK, "{more:?}");
    let done = h
        .admin(
            "POST",
            &format!("/v1/meter/{hold}/finish"),
            Some(json!({"usage": {"output_tokens": 60}})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    assert_eq!(
        done.body["amount_posted"], 36_000,
        "110 output tokens in all, 50 posted"
    );
    assert_eq!(done.body["amount_released"], 0);
    assert_eq!(h.available("alice").await, 100_000_000 - 200_000 - 66_000);
}

#[tokio::test]
async fn usage_reports_revenue_net_of_refunds_and_the_margin_over_the_providers_cost() {
    let h = Harness::new().await;
    h.world(1_000_000).await;
    let charge = |key: &'static str, endpoint: &'static str, amount: u64, provider: u64| {
        let h = &h;
        async move {
            let a = h
                .as_key(
                    ADMIN,
                    "POST",
                    "/v1/charges",
                    Some(json!({"account": "alice", "app": "chat", "amount": amount,
                                "endpoint": endpoint,
                                "usage": {"output_tokens": 10, "provider_cost": provider}})),
                    Some(key),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
            a.body["posting"].as_str().unwrap().to_owned()
        }
    };
    let gpt = charge("c1", "gpt-4o", 10_000, 6_000).await;
    charge("c2", "tts", 2_000, 500).await;
    h.clock.advance(3_600_000);
    let r = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/refunds",
            Some(json!({"posting": gpt, "amount": 3_000})),
            Some("r1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let now = h.state.now_ms();
    let day = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=day&app=chat&from_ms={}&to_ms={}",
                now - 86_400_000,
                now + 1
            ),
            None,
        )
        .await;
    let t = &day.body["totals"];
    assert_eq!(
        (
            &t["cost"],
            &t["refunded"],
            &t["net"],
            &t["provider_cost"],
            &t["margin"]
        ),
        (
            &json!(12_000),
            &json!(3_000),
            &json!(9_000),
            &json!(6_500),
            &json!(2_500)
        ),
        "{t}"
    );
    // By endpoint: the refund counts where its posting was paid.
    let by = |endpoint: &'static str| {
        let h = &h;
        async move {
            h.admin(
                "GET",
                &format!(
                    "/v1/usage?granularity=day&app=chat&endpoint={endpoint}&from_ms={}&to_ms={}",
                    now - 86_400_000,
                    now + 1
                ),
                None,
            )
            .await
            .body["totals"]
                .clone()
        }
    };
    let g = by("gpt-4o").await;
    assert_eq!((&g["net"], &g["margin"]), (&json!(7_000), &json!(1_000)));
    let s = by("tts").await;
    assert_eq!((&s["refunded"], &s["margin"]), (&json!(0), &json!(1_500)));
    // By hour: the refund's hour has no calls and a negative net.
    let hours = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=hour&app=chat&from_ms={}&to_ms={}",
                now - 86_400_000,
                now + 1
            ),
            None,
        )
        .await;
    let buckets = hours.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 2, "{buckets:?}");
    assert_eq!(
        (&buckets[1]["calls"], &buckets[1]["net"]),
        (&json!(0), &json!(-3_000))
    );
}

#[tokio::test]
async fn a_call_that_ends_unreported_commits_its_estimate_and_is_corrected_once() {
    let h = Harness::new().await;
    h.world(10_000).await;
    let hold = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 4_000, "endpoint": "gpt"})),
            Some("h1"),
        )
        .await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let id = hold.body["id"].as_str().unwrap().to_owned();
    let est = h
        .as_key(
            ADMIN,
            "POST",
            &format!("/v1/holds/{id}/commit-estimate"),
            Some(json!({})),
            Some("e1"),
        )
        .await;
    assert_eq!(est.status, StatusCode::OK, "{est:?}");
    assert_eq!(
        (&est.body["estimated"], &est.body["amount_posted"]),
        (&json!(true), &json!(4_000))
    );
    let posting = est.body["posting"].as_str().unwrap().to_owned();
    // The app's own service key may correct its estimate; another app's may not.
    let chat = h.service_key("chat").await;
    let search = h.service_key("search").await;
    let path = format!("/v1/postings/{posting}/correct");
    let body = json!({"amount": 2_500, "usage": {"output_tokens": 1_500, "provider_cost": 1_000}});
    let other = h
        .as_key(&search, "POST", &path, Some(body.clone()), Some("x1"))
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{other:?}");
    let fixed = h
        .as_key(&chat, "POST", &path, Some(body.clone()), Some("c1"))
        .await;
    assert_eq!(fixed.status, StatusCode::OK, "{fixed:?}");
    assert_eq!(
        (
            &fixed.body["estimated"],
            &fixed.body["amount"],
            &fixed.body["difference"]
        ),
        (&json!(4_000), &json!(2_500), &json!(-1_500))
    );
    assert_eq!(h.available("alice").await, 7_500);
    // The retry is replayed; a second correction is refused and changes nothing.
    let again = h.as_key(&chat, "POST", &path, Some(body), Some("c1")).await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let twice = h
        .as_key(&chat, "POST", &path, Some(json!({"amount": 1})), Some("c2"))
        .await;
    assert_eq!(
        (twice.status, twice.code()),
        (StatusCode::CONFLICT, "already_corrected")
    );
    assert_eq!(h.available("alice").await, 7_500);
    // A posting that is no estimate; a correction up past the funds.
    let charge = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/charges",
            Some(json!({"account": "alice", "app": "chat", "amount": 100})),
            Some("ch1"),
        )
        .await;
    let charged = charge.body["posting"].as_str().unwrap();
    let not = h
        .admin(
            "POST",
            &format!("/v1/postings/{charged}/correct"),
            Some(json!({"amount": 50})),
        )
        .await;
    assert_eq!(
        (not.status.as_u16(), not.code()),
        (422, "invalid_correction"),
        "{not:?}"
    );
    let hold = h
        .as_key(
            ADMIN,
            "POST",
            "/v1/holds",
            Some(json!({"account": "alice", "app": "chat", "amount": 7_000})),
            Some("h2"),
        )
        .await;
    let id = hold.body["id"].as_str().unwrap();
    let est = h
        .as_key(
            ADMIN,
            "POST",
            &format!("/v1/holds/{id}/commit-estimate"),
            Some(json!({})),
            Some("e2"),
        )
        .await;
    let posting = est.body["posting"].as_str().unwrap();
    let up = h
        .admin(
            "POST",
            &format!("/v1/postings/{posting}/correct"),
            Some(json!({"amount": 8_000})),
        )
        .await;
    assert_eq!(
        (up.status.as_u16(), up.code()),
        (402, "insufficient_funds"),
        "{up:?}"
    );
    assert_eq!(h.available("alice").await, 400);
    // Usage: the corrected call counts its real cost, tokens and margin.
    let now = h.state.now_ms();
    let u = h
        .admin(
            "GET",
            &format!(
                "/v1/usage?granularity=day&app=chat&endpoint=gpt&from_ms={}&to_ms={}",
                now - 86_400_000,
                now + 1
            ),
            None,
        )
        .await;
    let t = &u.body["totals"];
    assert_eq!(
        (&t["calls"], &t["output_tokens"], &t["net"], &t["margin"]),
        (&json!(1), &json!(1_500), &json!(2_500), &json!(1_500)),
        "{t}"
    );
}

#[tokio::test]
async fn a_period_tiered_price_counts_the_month_over_http_and_keeps_it_across_a_restart() {
    let h = Harness::new().await;
    h.world(100_000_000).await;
    let price = json!({"app": "chat", "endpoint": "gpt", "price": {"type": "period_tiered",
        "meter": "tokens", "mode": "graduated", "period": "month",
        "tiers": [{"up_to": 1_000, "rate": {"amount": 5, "per": 1}},
                  {"rate": {"amount": 2, "per": 1}}]}});
    let set = h.admin("PUT", "/v1/prices", Some(price.clone())).await;
    assert_eq!(set.status, StatusCode::OK, "{set:?}");
    for field in ["type", "meter", "mode", "period"] {
        assert_eq!(
            set.body["price"][field], price["price"][field],
            "{field} reads back"
        );
    }
    assert_eq!(set.body["price"]["tiers"][0], price["price"]["tiers"][0]);
    let call = |key: &'static str, tokens: u64| {
        let h = &h;
        async move {
            let start = h
                .as_key(
                    ADMIN,
                    "POST",
                    "/v1/meter",
                    Some(json!({"account": "alice", "app": "chat", "endpoint": "gpt",
                                "max_usage": {"output_tokens": tokens}})),
                    Some(key),
                )
                .await;
            assert_eq!(start.status, StatusCode::CREATED, "{start:?}");
            let hold = start.body["hold"].as_str().unwrap().to_owned();
            let done = h
                .admin(
                    "POST",
                    &format!("/v1/meter/{hold}/finish"),
                    Some(json!({"usage": {"output_tokens": tokens}})),
                )
                .await;
            assert_eq!(done.status, StatusCode::OK, "{done:?}");
            (start.body["amount_held"].clone(), done.body["cost"].clone())
        }
    };
    assert_eq!(call("m1", 900).await, (json!(4_500), json!(4_500)));
    // 100 at 5 µ¢ and 100 at 2 µ¢; the hold held what the count allowed: 700.
    assert_eq!(call("m2", 200).await, (json!(700), json!(700)));
    let quote = h
        .admin(
            "POST",
            "/v1/prices/quote",
            Some(
                json!({"app": "chat", "endpoint": "gpt", "usage": {"output_tokens": 10},
                        "account": "alice"}),
            ),
        )
        .await;
    assert_eq!(quote.body["cost"], 20, "{quote:?}");
    let periods = h.admin("GET", "/v1/accounts/alice/periods", None).await;
    assert_eq!(periods.status, StatusCode::OK, "{periods:?}");
    let p = &periods.body["periods"][0];
    assert_eq!(
        (
            &p["app"],
            &p["endpoint"],
            &p["units"],
            &p["charged"],
            &p["tier"],
            &p["tier_up_to"]
        ),
        (
            &json!("chat"),
            &json!("gpt"),
            &json!(1_100),
            &json!(5_200),
            &json!(1),
            &json!(null)
        )
    );
    // A service key of another app sees none of it; a tier dearer than the one before it is
    // refused.
    let search = h.service_key("search").await;
    let other = h
        .as_key(&search, "GET", "/v1/accounts/alice/periods", None, None)
        .await;
    assert_eq!(other.body["periods"], json!([]));
    let mut dearer = price.clone();
    dearer["price"]["tiers"][1]["rate"]["amount"] = json!(9);
    let refused = h.admin("PUT", "/v1/prices", Some(dearer)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_REQUEST, "invalid_price")
    );
    // After a restart the month's count is the same.
    let h = h.restart().await;
    let again = h.admin("GET", "/v1/accounts/alice/periods", None).await;
    assert_eq!(again.body["periods"], periods.body["periods"]);
}
