//! Prepaid credit grants through the engine: consumed in order by holds and charges, swept back
//! to the funding account by the account's timer when they expire (published as
//! `grant.expired`), issued each period by an allowance, and all of it surviving a crash.

use std::time::Duration;

use tally::{
    Allowance, Amount, DurableConfig, EngineConfig, EventKind, GrantRequest, Period,
    ReserveRequest, Timestamp,
};

use crate::support::*;

const DAY: Duration = Duration::from_secs(86_400);

fn promo(amount: u64, priority: u32, ttl: Option<Duration>) -> GrantRequest {
    GrantRequest {
        from: BANK,
        amount,
        priority,
        ttl,
        label: "promo".into(),
    }
}

#[tokio::test]
async fn grants_are_consumed_in_order_and_expire_on_time_back_to_the_bank() {
    let w = World::new(1_000).await;
    let mut sub = w.tally.subscribe();
    let (week, expires) = w
        .tally
        .grant(op(), ALICE, promo(500, 0, Some(7 * DAY)))
        .await
        .unwrap();
    assert_eq!(expires, Some(w.tally.now().plus_ms(7 * 86_400_000)));
    let (forever, _) = w
        .tally
        .grant(op(), ALICE, promo(300, 1, None))
        .await
        .unwrap();
    // A stream's hold takes the week's grant first, then the lasting one.
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 600))
        .await
        .unwrap();
    let g = w.tally.grants(ALICE).await.unwrap();
    let by_seq = |seq: u64| g.grants.iter().find(|x| x.id.seq == seq).unwrap().clone();
    assert_eq!(by_seq(week.seq).held.get(), 500);
    assert_eq!(by_seq(forever.seq).held.get(), 100);
    assert_eq!((g.spendable, g.general, g.granted), (1_200, 1_000, 200));
    let done = w.tally.commit(op(), hold, 550).await.unwrap();
    assert_eq!(done.amount_released.get(), 50);
    let g = w.tally.grants(ALICE).await.unwrap();
    let week_now = g.grants.iter().find(|x| x.id == week).unwrap();
    assert_eq!((week_now.used.get(), week_now.free().get()), (500, 0));
    let forever_now = g.grants.iter().find(|x| x.id == forever).unwrap();
    assert_eq!(
        (forever_now.used.get(), forever_now.free().get()),
        (50, 250)
    );

    // A new week-long grant, half spent, then the week passes: its free half goes back.
    let (second, _) = w
        .tally
        .grant(op(), ALICE, promo(400, 0, Some(DAY)))
        .await
        .unwrap();
    w.tally
        .charge(op(), ALICE, APP, 200, "/chat")
        .await
        .unwrap();
    let bank_before = w.available(BANK).await;
    w.clock.advance(86_400_000);
    assert!(w.tally.expire_due().await.unwrap() >= 1);
    let g = w.tally.grants(ALICE).await.unwrap();
    let second_now = g.grants.iter().find(|x| x.id == second).unwrap();
    assert_eq!(
        (second_now.used.get(), second_now.expired.get()),
        (200, 200)
    );
    assert_eq!(w.available(BANK).await, bank_before + 200);
    assert_eq!(w.available(ALICE).await, 1_000 + 250);
    // Published once durable.
    let mut seen = Vec::new();
    loop {
        let event = match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Ok(Some(event))) => event,
            other => panic!("no grant.expired: {other:?} after {seen:?}"),
        };
        seen.push(event.name());
        if let EventKind::GrantExpired { grant, amount } = event.kind {
            assert_eq!((grant, amount), (second, Amount::new(200).unwrap()));
            break;
        }
    }
    assert!(seen.contains(&"grant.issued"), "{seen:?}");
    w.assert_books_balance().await;
    // After a crash: the same grants and balances.
    let before = w.tally.grants(ALICE).await.unwrap();
    let w = w.reopen().await;
    assert_eq!(w.tally.grants(ALICE).await.unwrap(), before);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn an_expired_grant_is_not_spent_even_before_its_sweep_runs() {
    let w = World::new(100).await;
    w.tally
        .grant(op(), ALICE, promo(1_000, 0, Some(DAY)))
        .await
        .unwrap();
    w.clock.advance(86_400_000);
    // The charge is decided after the account's due work: the grant is gone, 100 is left.
    let e = w
        .tally
        .charge(op(), ALICE, APP, 101, "/chat")
        .await
        .unwrap_err();
    assert!(
        matches!(
            ledger(e),
            tally::LedgerError::InsufficientFunds { available: 100, .. }
        ),
        "an expired grant was spent"
    );
    w.tally
        .charge(op(), ALICE, APP, 100, "/chat")
        .await
        .unwrap();
    assert_eq!(w.available(ALICE).await, 0);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn a_monthly_allowance_is_issued_each_month_and_survives_a_restart_of_the_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tally::ManualClock::new(Timestamp(1_700_000_000_000)); // 2023-11-14
    let config = EngineConfig {
        clock: std::sync::Arc::new(clock.clone()),
        ..EngineConfig::default()
    };
    let (tally, store, _) = open_durable(DurableConfig::new(dir.path()), config.clone()).await;
    open_accounts(&tally).await;
    let allowance = Allowance {
        from: BANK,
        amount: Amount::new(5_000).unwrap(),
        period: Period::Month,
        priority: 0,
        label: "plan".into(),
    };
    tally
        .set_allowance(op(), ALICE, Some(allowance))
        .await
        .unwrap();
    // Issued before the next request is decided: a charge can spend it at once.
    tally
        .charge(op(), ALICE, APP, 1_000, "/chat")
        .await
        .unwrap();
    let g = tally.grants(ALICE).await.unwrap();
    assert_eq!(g.grants.len(), 1);
    let november = g.grants[0].clone();
    assert_eq!(november.used.get(), 1_000);
    assert_eq!(november.expires_at, Some(Timestamp(1_701_388_800_000)));
    assert_eq!(november.allowance_period, Some(1_698_796_800_000));
    tally.shutdown().await.unwrap();
    drop(store);

    // Restarted in December: November's 4,000 goes back, December's 5,000 comes.
    clock.set(Timestamp(1_701_388_800_000 + 60_000));
    let (tally, store, _) = open_durable(DurableConfig::new(dir.path()), config.clone()).await;
    let g = tally.grants(ALICE).await.unwrap();
    let old = g.grants.iter().find(|x| x.id == november.id).unwrap();
    assert_eq!(old.expired.get(), 4_000);
    let december: Vec<_> = g
        .grants
        .iter()
        .filter(|x| x.allowance_period == Some(1_701_388_800_000))
        .collect();
    assert_eq!(december.len(), 1, "{:?}", g.grants);
    assert_eq!(december[0].free().get(), 5_000);
    assert_eq!(tally.balance(ALICE).await.unwrap().available, 5_000);
    assert!(tally.audit().await.unwrap().ok());
    drop(tally);
    drop(store);
    // A crash and a replay give the same, and issue nothing twice.
    let (tally, _store, _) = open_durable(DurableConfig::new(dir.path()), config).await;
    assert_eq!(tally.grants(ALICE).await.unwrap(), g);
    assert_eq!(tally.balance(ALICE).await.unwrap().available, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holds_and_charges_never_spend_a_grant_twice_or_past_the_balance() {
    let w = World::new(2_000).await;
    for (amount, priority) in [(3_000, 0), (1_000, 1), (500, 2)] {
        w.tally
            .grant(op(), ALICE, promo(amount, priority, Some(DAY)))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let tally = w.tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut posted = 0u64;
            for i in 0..20u64 {
                let amount = 10 + (task * 31 + i * 17) % 200;
                if (task + i) % 2 == 0 {
                    if tally
                        .charge(op(), ALICE, APP, amount, "/chat")
                        .await
                        .is_ok()
                    {
                        posted += amount;
                    }
                } else if let Ok(hold) = tally
                    .reserve(op(), ReserveRequest::new(ALICE, APP, amount))
                    .await
                {
                    let c = tally.commit(op(), hold, amount / 2 + 1).await.unwrap();
                    posted += c.amount_posted.get();
                }
            }
            posted
        }));
    }
    let mut posted = 0u64;
    for t in tasks {
        posted += t.await.unwrap();
    }
    let g = w.tally.grants(ALICE).await.unwrap();
    let used: u64 = g.grants.iter().map(|x| x.used.get()).sum();
    let held: u64 = g.grants.iter().map(|x| x.held.get()).sum();
    assert_eq!(held, 0, "every hold resolved");
    // Each grant's parts add up; nothing was spent twice (a hold's grant share released while
    // another call paid from the general balance may leave a grant some free, so `used` is at
    // most what was posted, not always all of it).
    assert!(used <= posted.min(4_500), "used {used}, posted {posted}");
    for x in &g.grants {
        assert_eq!(x.used.get() + x.free().get(), x.amount.get());
    }
    assert_eq!(w.available(ALICE).await, 6_500 - i128::from(posted));
    assert_eq!(w.available(APP).await, i128::from(posted));
    w.assert_books_balance().await;
}
