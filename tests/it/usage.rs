//! Usage tracking: totals equal what was committed, buckets by minute / hour / day, durable
//! across a crash and a checkpoint, top users, and balance history.

use std::path::Path;
use std::time::Duration;

use tally::{
    AccountId, AccountSpec, DurableConfig, DurableStore, Granularity, ManualClock, Price, Rate,
    Store, Tally, Timestamp, Usage, UsageQuery, UsageReport,
};

use crate::support::*;

const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
/// 10:00 UTC on the day after `T0`'s (so the test's hours share a day).
const HOUR0: u64 = T0 - T0 % 86_400_000 + 86_400_000 + 10 * HOUR;

fn chat_price() -> Price {
    Price::PerToken {
        input: Rate::cents("200", 1_000_000).unwrap(),
        output: Rate::cents("600", 1_000_000).unwrap(),
    }
}

fn tokens(input: u64, output: u64) -> Usage {
    Usage {
        requests: 1,
        input_tokens: input,
        output_tokens: output,
        duration_ms: input + output,
        ..Usage::default()
    }
}

fn everything(granularity: Granularity) -> UsageQuery {
    UsageQuery::new(granularity, Timestamp(0), Timestamp(u64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_totals_equal_the_sum_of_what_was_committed_after_a_concurrent_run() {
    let w = World::new(0).await;
    w.tally
        .set_price(op(), APP, "/chat", Some(chat_price()))
        .await
        .unwrap();
    let users: Vec<AccountId> = (100..108).map(AccountId).collect();
    for &user in &users {
        w.tally
            .open_account(user, AccountSpec::user())
            .await
            .unwrap();
        w.tally.fund(op(), user, BANK, 50_000_000).await.unwrap();
    }
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let tally = w.tally.clone();
        let user = users[(task % 8) as usize];
        tasks.push(tokio::spawn(async move {
            // (cost, input tokens, output tokens, calls) this task saw committed.
            let mut seen = (0u128, 0u128, 0u128, 0u64);
            for i in 0..40u64 {
                let max = tokens(1_000, 2_000);
                let call = tally
                    .meter(op(), user, APP, "/chat", &max, Duration::from_secs(60))
                    .await;
                let mut call = match call {
                    Ok(call) => call,
                    Err(e) => panic!("{e}"),
                };
                if (task + i) % 5 == 0 {
                    // Failed work: the guard is dropped, the hold voided, nothing is counted.
                    drop(call);
                    continue;
                }
                let used = tokens(10 * i + task, 3 * i + 1);
                let committed = call.finish(op(), &used).await.unwrap();
                seen.0 += committed.amount_posted.wide();
                seen.1 += u128::from(used.input_tokens);
                seen.2 += u128::from(used.output_tokens);
                seen.3 += 1;
                if i % 7 == 0 {
                    tally
                        .record_cost(op(), user, 1_000, APP, "/flat")
                        .await
                        .unwrap();
                    seen.0 += 1_000;
                    seen.3 += 1;
                }
            }
            (user, seen)
        }));
    }
    let mut expected = (0u128, 0u128, 0u128, 0u64);
    let mut per_user = std::collections::BTreeMap::<AccountId, u128>::new();
    for task in tasks {
        let (user, seen) = task.await.unwrap();
        expected.0 += seen.0;
        expected.1 += seen.1;
        expected.2 += seen.2;
        expected.3 += seen.3;
        *per_user.entry(user).or_default() += seen.0;
    }
    for granularity in Granularity::ALL {
        let report = w.tally.usage(&everything(granularity)).unwrap();
        assert!(report.complete);
        assert_eq!(report.totals.cost, expected.0, "{granularity:?}");
        assert_eq!(report.totals.input_tokens, expected.1);
        assert_eq!(report.totals.output_tokens, expected.2);
        assert_eq!(report.totals.calls, expected.3);
        assert_eq!(report.totals.requests, u128::from(expected.3));
    }
    // The app's revenue is the usage's cost; each user's spending is its own usage's cost.
    let app = w.tally.balance(APP).await.unwrap();
    assert_eq!(app.credits_posted, expected.0);
    for (&user, &spent) in &per_user {
        let q = everything(Granularity::Day).account(user);
        assert_eq!(w.tally.usage(&q).unwrap().totals.cost, spent);
        assert_eq!(w.tally.balance(user).await.unwrap().debits_posted, spent);
    }
    // Top users: most spent first, exactly the per-user sums.
    let top = w
        .tally
        .top_users(&everything(Granularity::Hour).app(APP), 3)
        .unwrap();
    let mut ranked: Vec<_> = per_user.iter().map(|(u, c)| (*u, *c)).collect();
    ranked.sort_by(|(a, x), (b, y)| y.cmp(x).then(a.cmp(b)));
    let got: Vec<_> = top.iter().map(|(u, t)| (*u, t.cost)).collect();
    assert_eq!(got, ranked[..3].to_vec());
    // Endpoint filter: the flat-fee endpoint alone.
    let flat = w
        .tally
        .usage(&everything(Granularity::Day).endpoint("/flat"))
        .unwrap();
    assert_eq!(flat.totals.cost, u128::from(flat.totals.calls) * 1_000);
    w.assert_books_balance().await;
}

/// Three calls in two minutes of one hour and one of the next: 3 minute buckets (one holds two
/// calls), 2 hour buckets, 1 day bucket.
async fn three_buckets(tally: &Tally, clock: &ManualClock) {
    for (offset, input) in [(0, 10), (30_000, 20), (MINUTE, 40), (HOUR, 80)] {
        clock.set(Timestamp(HOUR0 + offset));
        tally
            .charge_with_usage(op(), ALICE, APP, 100 * input, "/chat", tokens(input, 0))
            .await
            .unwrap();
    }
}

fn check_buckets(report_minute: &UsageReport, report_hour: &UsageReport, day: &UsageReport) {
    let hour0 = HOUR0;
    let minute: Vec<_> = report_minute
        .buckets
        .iter()
        .map(|(t, u)| (t.0, u.input_tokens, u.cost))
        .collect();
    assert_eq!(
        minute,
        vec![
            (hour0, 30, 3_000),
            (hour0 + MINUTE, 40, 4_000),
            (hour0 + HOUR, 80, 8_000)
        ]
    );
    let hours: Vec<_> = report_hour
        .buckets
        .iter()
        .map(|(t, u)| (t.0, u.calls))
        .collect();
    assert_eq!(hours, vec![(hour0, 3), (hour0 + HOUR, 1)]);
    assert_eq!(day.buckets.len(), 1);
    assert_eq!(day.totals.cost, 15_000);
}

fn reports(store: &dyn Store) -> (UsageReport, UsageReport, UsageReport) {
    let q = |g| everything(g).account(ALICE).app(APP).endpoint("/chat");
    (
        store.usage(&q(Granularity::Minute)).unwrap(),
        store.usage(&q(Granularity::Hour)).unwrap(),
        store.usage(&q(Granularity::Day)).unwrap(),
    )
}

async fn open_on(dir: &Path, clock: &ManualClock) -> (Tally, DurableStore) {
    let (tally, store, _) = open_durable(DurableConfig::new(dir), config(clock)).await;
    (tally, store)
}

#[tokio::test]
async fn usage_is_bucketed_by_minute_hour_and_day_and_survives_crashes_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(T0));
    let (tally, store) = open_on(dir.path(), &clock).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 1_000_000).await.unwrap();
    three_buckets(&tally, &clock).await;
    let (m, h, d) = reports(&store);
    check_buckets(&m, &h, &d);

    // A crash with no checkpoint: the aggregates are rebuilt from the journal.
    drop((tally, store));
    let (tally, store) = open_on(dir.path(), &clock).await;
    assert_eq!(reports(&store), (m.clone(), h.clone(), d.clone()));

    // More usage, a checkpoint (aggregates saved), more usage, then a crash: saved aggregates
    // plus the journal after them, each call counted once.
    clock.set(Timestamp(HOUR0 + HOUR + 5));
    tally
        .charge_with_usage(op(), ALICE, APP, 500, "/chat", tokens(5, 0))
        .await
        .unwrap();
    store.checkpoint().unwrap();
    tally
        .charge_with_usage(op(), ALICE, APP, 700, "/chat", tokens(7, 0))
        .await
        .unwrap();
    let (_, _, day_before) = reports(&store);
    assert_eq!(day_before.totals.cost, 15_000 + 1_200);
    drop((tally, store));
    let (tally, store) = open_on(dir.path(), &clock).await;
    let (_, hour_after, day_after) = reports(&store);
    assert_eq!(day_after, day_before);
    assert_eq!(hour_after.buckets.last().map(|(_, u)| u.calls), Some(3));
    assert_eq!(
        tally.balance(APP).await.unwrap().credits_posted,
        day_after.totals.cost
    );
}

#[tokio::test]
async fn a_range_covers_whole_buckets_from_the_one_holding_its_start() {
    let w = World::new(1_000_000).await;
    three_buckets(&w.tally, &w.clock).await;
    let hour0 = HOUR0;
    // From the middle of the first minute to the start of the next hour: the first two
    // minute buckets, not the third.
    let q = UsageQuery::new(
        Granularity::Minute,
        Timestamp(hour0 + 45_000),
        Timestamp(hour0 + HOUR),
    );
    let report = w.tally.usage(&q).unwrap();
    assert_eq!(report.totals.calls, 3);
    assert_eq!(report.totals.cost, 7_000);
    // An empty range.
    let q = UsageQuery::new(Granularity::Day, Timestamp(0), Timestamp(hour0 - HOUR * 24));
    assert_eq!(w.tally.usage(&q).unwrap().totals.calls, 0);
}

#[tokio::test]
async fn balance_history_gives_the_balance_after_each_change_in_the_range() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), tally::ReserveRequest::new(ALICE, APP, 4_000))
        .await
        .unwrap();
    w.clock.advance(1_000);
    w.tally.commit(op(), hold, 2_500).await.unwrap();
    let posting = w.tally.charge(op(), ALICE, APP, 500, "").await.unwrap();
    w.clock.advance(1_000);
    w.tally.refund(op(), posting, 200).await.unwrap();
    let all = w
        .tally
        .balance_history(ALICE, Timestamp(0), Timestamp(u64::MAX), 100)
        .await
        .unwrap()
        .points;
    let seen: Vec<_> = all
        .iter()
        .map(|p| (p.posted().unwrap(), p.debits_pending))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, 0),          // opened
            (10_000, 0),     // funded
            (10_000, 4_000), // reserved
            (7_500, 0),      // committed 2,500, released 1,500
            (7_000, 0),      // charged 500
            (7_200, 0),      // refunded 200
        ]
    );
    let last = all.last().unwrap();
    let balance = w.tally.balance(ALICE).await.unwrap();
    assert_eq!(last.posted().unwrap(), balance.posted);
    // Only the range, and at most `limit` points.
    let t0 = Timestamp(1_700_000_000_000);
    let later = w
        .tally
        .balance_history(ALICE, Timestamp(t0.0 + 1_000), Timestamp(u64::MAX), 1)
        .await
        .unwrap()
        .points;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].posted().unwrap(), 7_500);
    // The app's side is rebuilt from the legs.
    let app = w
        .tally
        .balance_history(APP, Timestamp(0), Timestamp(u64::MAX), 100)
        .await
        .unwrap()
        .points;
    assert_eq!(app.last().map(|p| p.posted().unwrap()), Some(2_800));
}

#[tokio::test]
async fn usage_counts_every_charge_past_the_fold_queue_through_a_checkpoint_and_a_crash() {
    // More charges than the store queues before folding (4,096), in batches, with a
    // checkpoint between: every report counts each once, before and after a crash.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp(HOUR0));
    let (tally, store) = open_on(dir.path(), &clock).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 100_000_000).await.unwrap();
    let charge = |n: u64| {
        (
            ALICE,
            tally::Request::new(
                op(),
                tally::Command::Charge {
                    app: APP,
                    amount: tally::Amount::new(1 + n % 5).unwrap(),
                    endpoint: "/chat".into(),
                    metadata: String::new(),
                    usage: tokens(n % 3, 1),
                    token: None,
                },
            ),
        )
    };
    let mut cost = 0u64;
    for round in 0..3u64 {
        let batch: Vec<_> = (0..3_000).map(|n| charge(round * 3_000 + n)).collect();
        cost += (0..3_000).map(|n| 1 + (round * 3_000 + n) % 5).sum::<u64>();
        let results = tally.submit(batch).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
        let day = store.usage(&everything(Granularity::Day)).unwrap();
        assert_eq!(day.totals.calls, (round + 1) * 3_000, "round {round}");
        assert_eq!(
            u64::try_from(day.totals.cost).unwrap(),
            cost,
            "round {round}"
        );
        if round == 1 {
            store.checkpoint().unwrap();
        }
    }
    let before = reports(&store);
    drop((tally, store));
    let (_tally, store) = open_on(dir.path(), &clock).await;
    assert_eq!(
        reports(&store),
        before,
        "saved at the checkpoint, the rest replayed"
    );
}
