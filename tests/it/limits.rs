//! Rate limits (token buckets, per account and per app) and spend caps (per account per day,
//! per app per user per day), enforced before a hold or charge; a refused request changes
//! nothing.

use tally::{
    AccountId, AccountSpec, Error, LedgerError, LimitScope, RateLimit, ReserveRequest, TokenRate,
    DAY_MS,
};

use crate::support::*;

fn rate_limited(e: Error) -> (LimitScope, &'static str, u64) {
    match e {
        Error::RateLimited {
            scope,
            limit,
            retry_after_ms,
        } => (scope, limit, retry_after_ms),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_per_second_refill_continuously_and_a_refusal_takes_nothing() {
    let w = World::new(1_000_000).await;
    set_rate(
        &w.tally,
        ALICE,
        RateLimit {
            requests: Some(TokenRate {
                per_second: 4,
                burst: 2,
            }),
            cost: None,
        },
    )
    .await;
    w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap();
    let held = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 10))
        .await
        .unwrap();
    let before = w.tally.balance(ALICE).await.unwrap();
    let e = w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap_err();
    // 4 per second: one token every 250 ms.
    assert_eq!(
        rate_limited(e),
        (LimitScope::Account(ALICE), "requests", 250)
    );
    assert_eq!(w.tally.balance(ALICE).await.unwrap(), before);
    // Commits, voids and fundings are not limited; a retry of an accepted request is a replay.
    w.tally.commit(op(), held, 5).await.unwrap();
    w.tally.fund(op(), ALICE, BANK, 5).await.unwrap();
    w.clock.advance(100);
    let e = w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap_err();
    assert_eq!(rate_limited(e).2, 150);
    w.clock.advance(150);
    let again = op();
    w.tally.charge(again, ALICE, APP, 10, "").await.unwrap();
    w.tally.charge(again, ALICE, APP, 10, "").await.unwrap();
    // Bob is not limited.
    w.tally.fund(op(), BOB, BANK, 100).await.unwrap();
    for _ in 0..5 {
        w.tally.charge(op(), BOB, APP, 1, "").await.unwrap();
    }
}

#[tokio::test]
async fn an_apps_cost_rate_is_shared_by_its_users() {
    let w = World::new(1_000_000).await;
    w.tally.fund(op(), BOB, BANK, 1_000_000).await.unwrap();
    set_rate(
        &w.tally,
        APP,
        RateLimit {
            requests: None,
            cost: Some(TokenRate {
                per_second: 1_000,
                burst: 1_500,
            }),
        },
    )
    .await;
    w.tally.charge(op(), ALICE, APP, 1_000, "").await.unwrap();
    let e = w.tally.charge(op(), BOB, APP, 1_000, "").await.unwrap_err();
    // 500 left; 500 more at 1 per ms.
    assert_eq!(rate_limited(e), (LimitScope::App(APP), "cost", 500));
    w.tally.charge(op(), BOB, APP, 500, "").await.unwrap();
    // When several buckets are short, the wait is the longest one's.
    set_rate(
        &w.tally,
        BOB,
        RateLimit {
            requests: Some(TokenRate {
                per_second: 10,
                burst: 1,
            }),
            cost: None,
        },
    )
    .await;
    w.clock.advance(1_000);
    w.tally.charge(op(), BOB, APP, 1_000, "").await.unwrap();
    let e = w.tally.charge(op(), BOB, APP, 900, "").await.unwrap_err();
    // Bob's requests: 100 ms; the app's cost: 900 at 1 per ms.
    assert_eq!(rate_limited(e), (LimitScope::App(APP), "cost", 900));
    set_rate(&w.tally, BOB, RateLimit::default()).await;
    // More than the bucket ever holds never fits.
    w.clock.advance(10_000);
    let e = w.tally.charge(op(), BOB, APP, 1_501, "").await.unwrap_err();
    assert_eq!(rate_limited(e).2, u64::MAX);
    // Removing the limit lifts it.
    set_rate(&w.tally, APP, RateLimit::default()).await;
    w.tally.charge(op(), BOB, APP, 100_000, "").await.unwrap();
}

fn cap_exceeded(e: Error) -> (&'static str, u64, u128, u64) {
    match ledger(e) {
        LedgerError::SpendCapExceeded {
            scope,
            cap,
            spent,
            requested,
            ..
        } => (scope, cap, spent, requested),
        other => panic!("expected SpendCapExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn a_daily_spend_cap_counts_posted_today_plus_held_and_resets_at_midnight_utc() {
    let w = World::new(1_000_000).await;
    set_cap(&w.tally, ALICE, Some(1_000)).await;
    w.tally.charge(op(), ALICE, APP, 600, "").await.unwrap();
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 300))
        .await
        .unwrap();
    let before = w.tally.balance(ALICE).await.unwrap();
    let e = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 101))
        .await
        .unwrap_err();
    assert_eq!(cap_exceeded(e), ("account per day", 1_000, 900, 101));
    assert_eq!(w.tally.balance(ALICE).await.unwrap(), before);
    // Exactly at the cap is allowed.
    w.tally.charge(op(), ALICE, APP, 100, "").await.unwrap();
    // A commit below the hold frees the rest for today.
    w.tally.commit(op(), hold, 100).await.unwrap();
    w.tally.charge(op(), ALICE, APP, 200, "").await.unwrap();
    assert!(w.tally.charge(op(), ALICE, APP, 1, "").await.is_err());
    // The next UTC day starts from zero.
    let now = w.tally.now().0;
    w.clock.advance(DAY_MS - now % DAY_MS);
    w.tally.charge(op(), ALICE, APP, 1_000, "").await.unwrap();
    // The cap survives a crash: it is the account's policy, and spending is ledger state.
    let w = w.reopen().await;
    assert_eq!(
        w.tally.policy(ALICE).await.unwrap().spend_cap_per_day,
        Some(tally::Amount::new(1_000).unwrap())
    );
    let e = w.tally.charge(op(), ALICE, APP, 1, "").await.unwrap_err();
    assert_eq!(cap_exceeded(e).2, 1_000);
    // Removed, nothing stops it.
    set_cap(&w.tally, ALICE, None).await;
    w.tally.charge(op(), ALICE, APP, 1, "").await.unwrap();
}

#[tokio::test]
async fn an_apps_cap_limits_each_user_separately_and_other_apps_not_at_all() {
    let w = World::new(1_000_000).await;
    let other = AccountId(3);
    w.tally
        .open_account(other, AccountSpec::revenue())
        .await
        .unwrap();
    w.tally.fund(op(), BOB, BANK, 1_000_000).await.unwrap();
    set_cap(&w.tally, APP, Some(500)).await;
    w.tally.charge(op(), ALICE, APP, 500, "").await.unwrap();
    w.tally.charge(op(), BOB, APP, 500, "").await.unwrap();
    let e = w.tally.charge(op(), ALICE, APP, 1, "").await.unwrap_err();
    assert_eq!(cap_exceeded(e), ("app per user per day", 500, 500, 1));
    w.tally.charge(op(), ALICE, other, 5_000, "").await.unwrap();
    // Spending at the other app is counted there, not at this one.
    set_cap(&w.tally, other, Some(5_000)).await;
    let e = w.tally.charge(op(), ALICE, APP, 1, "").await.unwrap_err();
    assert_eq!(cap_exceeded(e).2, 500);
    let e = w.tally.charge(op(), ALICE, other, 1, "").await.unwrap_err();
    assert_eq!(cap_exceeded(e).2, 5_000);
    let alice = w.tally.account(ALICE).await.unwrap();
    let now = w.tally.now();
    assert_eq!(alice.spent_on_day(now, APP), (5_500, 500));
    assert_eq!(alice.spent_on_day(now, other), (5_500, 5_000));
    assert_eq!(
        alice.spent_on_day(tally::Timestamp(now.0 + DAY_MS), APP),
        (0, 0)
    );
}

#[tokio::test]
async fn an_apps_cap_counts_only_what_is_held_for_that_app() {
    let w = World::new(1_000_000).await;
    let other = AccountId(3);
    w.tally
        .open_account(other, AccountSpec::revenue())
        .await
        .unwrap();
    set_cap(&w.tally, other, Some(1_000)).await;
    // 900 held for APP does not count against the cap at the other app...
    w.tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 900))
        .await
        .unwrap();
    let held = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, other, 600))
        .await
        .unwrap();
    // ... but what is held for the other app does.
    let e = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, other, 401))
        .await
        .unwrap_err();
    assert_eq!(cap_exceeded(e), ("app per user per day", 1_000, 600, 401));
    w.tally.void(op(), held).await.unwrap();
    w.tally
        .reserve(op(), ReserveRequest::new(ALICE, other, 1_000))
        .await
        .unwrap();
}

#[tokio::test]
async fn limits_are_ledger_state_and_a_restart_hands_out_no_new_burst() {
    let w = World::new(1_000_000).await;
    let limit = RateLimit {
        requests: Some(TokenRate {
            per_second: 2,
            burst: 3,
        }),
        cost: None,
    };
    assert_eq!(set_rate(&w.tally, ALICE, limit).await, 1);
    assert_eq!(set_cap(&w.tally, APP, Some(10_000)).await, 1);
    // The burst is there when the limit is set.
    for _ in 0..3 {
        w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap();
    }
    assert!(w.tally.charge(op(), ALICE, APP, 10, "").await.is_err());
    // Setting the same limit again (a retried request) does not refill it.
    assert_eq!(set_rate(&w.tally, ALICE, limit).await, 2);
    assert!(w.tally.charge(op(), ALICE, APP, 10, "").await.is_err());
    // Each setting is a record in the account's history, with its version.
    let history = tally::Store::history(&w.store, ALICE, 0, 100).unwrap();
    assert!(history
        .iter()
        .any(|e| matches!(e.record.change, tally::Change::PolicySet { version: 1, .. })));
    // After a crash the limits are in force before the accounts are loaded, and the buckets
    // start empty: the first request waits for a refill.
    let w = w.reopen().await;
    let policy = w.tally.policy(ALICE).await.unwrap();
    assert_eq!((policy.rate_limit, policy.version), (limit, 2));
    assert_eq!(
        w.tally.policy(APP).await.unwrap().spend_cap_per_day,
        Some(tally::Amount::new(10_000).unwrap())
    );
    let e = w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap_err();
    assert_eq!(
        rate_limited(e),
        (LimitScope::Account(ALICE), "requests", 500)
    );
    w.clock.advance(500);
    w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap();
    // The app's cap applies to each user after the restart as before it.
    w.tally.fund(op(), BOB, BANK, 100_000).await.unwrap();
    w.tally.charge(op(), BOB, APP, 10_000, "").await.unwrap();
    let e = w.tally.charge(op(), BOB, APP, 1, "").await.unwrap_err();
    assert_eq!(cap_exceeded(e), ("app per user per day", 10_000, 10_000, 1));
    // A funding account has no policy; a zero burst is refused; neither changes anything.
    let e = w
        .tally
        .set_policy(op(), BANK, tally::PolicySetting::SpendCapPerDay(None))
        .await
        .unwrap_err();
    assert!(matches!(ledger(e), LedgerError::WrongAccountKind { .. }));
    let zero = RateLimit {
        requests: Some(TokenRate {
            per_second: 1,
            burst: 0,
        }),
        cost: None,
    };
    let e = w
        .tally
        .set_policy(op(), ALICE, tally::PolicySetting::RateLimit(zero))
        .await
        .unwrap_err();
    assert!(matches!(ledger(e), LedgerError::InvalidPolicy { .. }));
    assert_eq!(w.tally.policy(ALICE).await.unwrap(), policy);
}

#[tokio::test]
async fn caps_and_rates_apply_to_metered_holds_extensions_and_corrections_up() {
    let w = World::new(1_000_000).await;
    w.tally
        .set_price(
            op(),
            APP,
            "/chat",
            Some(tally::Price::PerRequest(tally::Amount::new(1_500).unwrap())),
        )
        .await
        .unwrap();
    set_cap(&w.tally, ALICE, Some(1_000)).await;
    // A metered hold of 1,500 passes the day's cap of 1,000.
    let one = tally::Usage {
        requests: 1,
        ..tally::Usage::default()
    };
    let e = w
        .tally
        .meter(
            op(),
            ALICE,
            APP,
            "/chat",
            &one,
            std::time::Duration::from_secs(60),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(cap_exceeded(e), ("account per day", 1_000, 0, 1_500));
    // An extension is spending too.
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 800))
        .await
        .unwrap();
    let e = w.tally.extend(op(), hold, 300, None).await.unwrap_err();
    assert_eq!(cap_exceeded(e), ("account per day", 1_000, 800, 300));
    // So is a correction up of an estimate.
    let posted = w.tally.commit_estimate(op(), hold).await.unwrap();
    let e = w
        .tally
        .correct(op(), posted.posting, Some(1_100), tally::Usage::default())
        .await
        .unwrap_err();
    assert_eq!(cap_exceeded(e), ("account per day", 1_000, 800, 300));
    // A cost rate counts an extension's amount (no request token).
    set_cap(&w.tally, ALICE, None).await;
    set_rate(
        &w.tally,
        ALICE,
        RateLimit {
            requests: None,
            cost: Some(TokenRate {
                per_second: 1,
                burst: 1_000,
            }),
        },
    )
    .await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 900))
        .await
        .unwrap();
    let e = w.tally.extend(op(), hold, 200, None).await.unwrap_err();
    assert_eq!(rate_limited(e).1, "cost");
    w.tally.extend(op(), hold, 100, None).await.unwrap();
}
