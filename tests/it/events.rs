//! Events: every kind in journal order once durable, low balance once per crossing, and a slow
//! subscriber told how much it missed.

use std::time::Duration;

use tally::{EventKind, Missed, Origin, ReserveRequest, Subscription, EVENTS_QUEUE};

use crate::support::*;

async fn next(sub: &mut Subscription) -> tally::Event {
    match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
        Ok(Ok(Some(event))) => event,
        other => panic!("no event: {other:?}"),
    }
}

async fn names(sub: &mut Subscription, n: usize) -> Vec<&'static str> {
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(next(sub).await.name());
    }
    names
}

#[tokio::test]
async fn every_change_is_published_in_journal_order_with_who_asked() {
    let w = World::new(0).await;
    let mut sub = w.tally.subscribe();
    let router = w
        .tally
        .with_origin(Origin::new("ai-router", "chat", "user-42"));
    router.fund(op(), ALICE, BANK, 10_000).await.unwrap();
    assert!(router.funding_allowed(ALICE, None).await.unwrap());
    let hold = router
        .reserve(op(), ReserveRequest::new(ALICE, APP, 3_000))
        .await
        .unwrap();
    router.commit(op(), hold, 1_000).await.unwrap();
    let voided = router
        .reserve(op(), ReserveRequest::new(ALICE, APP, 500))
        .await
        .unwrap();
    router.void(op(), voided).await.unwrap();
    let posting = router
        .record_cost(op(), ALICE, 700, APP, "/search")
        .await
        .unwrap();
    router.refund(op(), posting, 200).await.unwrap();
    router
        .record_funding_update(op(), ALICE, BANK, 10_000, 12_000)
        .await
        .unwrap();
    let expiring = router
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 100).timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    w.clock.advance(2_000);
    assert_eq!(w.tally.expire_due().await.unwrap(), 1);

    let first = next(&mut sub).await;
    assert_eq!(first.name(), "credit.funding-update");
    assert_eq!(
        first.kind,
        EventKind::FundingUpdate {
            account: ALICE,
            old: 0,
            new: 10_000
        }
    );
    assert_eq!(first.origin, Origin::new("ai-router", "chat", "user-42"));
    assert!(first.seq > 0);
    let check = next(&mut sub).await;
    assert_eq!(
        check.kind,
        EventKind::CheckAvailable {
            account: ALICE,
            minimum: 100,
            allowed: true
        }
    );
    assert_eq!(
        names(&mut sub, 9).await,
        vec![
            "hold.reserved",
            "hold.committed",
            "hold.reserved",
            "hold.voided",
            "credit.record-cost",
            "refund",
            "credit.funding-update",
            "hold.reserved",
            "hold.expired",
        ]
    );
    assert!(sub.try_recv().unwrap().is_none(), "one event per change");
    let _ = expiring;
}

#[tokio::test]
async fn low_balance_fires_once_per_crossing() {
    let w = World::new(1_000).await;
    w.tally
        .set_policy(
            op(),
            ALICE,
            tally::PolicySetting::LowBalance(Some(tally::Amount::new(500).unwrap())),
        )
        .await
        .unwrap();
    let mut sub = w.tally.subscribe();
    let mut lows = Vec::new();
    // 1,000 → 700 → 400 (crosses) → 100 → refund: 400 (still below, no event) → funded: 600
    // (back above) → 300 (crosses again).
    let mut posting = None;
    for cost in [300, 300, 300] {
        posting = Some(w.tally.charge(op(), ALICE, APP, cost, "").await.unwrap());
    }
    w.tally.refund(op(), posting.unwrap(), 300).await.unwrap();
    w.tally.fund(op(), ALICE, BANK, 200).await.unwrap(); // 600: above
    w.tally.charge(op(), ALICE, APP, 300, "").await.unwrap(); // 300: crosses
    for _ in 0..8 {
        let event = next(&mut sub).await;
        if let EventKind::LowBalance {
            account,
            available,
            threshold,
        } = event.kind
        {
            assert_eq!((account, threshold), (ALICE, 500));
            lows.push(available);
        }
    }
    assert_eq!(lows, vec![400, 300]);
}

#[tokio::test]
async fn a_slow_subscriber_is_told_how_many_events_it_missed() {
    let w = World::new(u64::from(u32::MAX)).await;
    let mut slow = w.tally.subscribe();
    let total = EVENTS_QUEUE + 100;
    for _ in 0..total {
        w.tally.charge(op(), ALICE, APP, 1, "").await.unwrap();
    }
    // Published once durable, by a background task: wait for the last one.
    let mut fast = w.tally.subscribe();
    w.tally.charge(op(), ALICE, APP, 2, "").await.unwrap();
    loop {
        if let EventKind::RecordCost { amount, .. } = next(&mut fast).await.kind {
            if amount.get() == 2 {
                break;
            }
        }
    }
    match slow.recv().await {
        Err(Missed(n)) => assert_eq!(n, 101, "the oldest events beyond the queue are missed"),
        other => panic!("expected Missed, got {other:?}"),
    }
    // Then it goes on with the oldest event still kept.
    let mut kept = 0;
    while let Ok(Some(_)) = slow.try_recv() {
        kept += 1;
    }
    assert_eq!(kept, EVENTS_QUEUE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_concurrent_writers_arrive_once_each_in_journal_order() {
    let w = World::new(0).await;
    let users: Vec<_> = (100..108).map(tally::AccountId).collect();
    for &user in &users {
        w.tally
            .open_account(user, tally::AccountSpec::user())
            .await
            .unwrap();
        w.tally.fund(op(), user, BANK, 1_000_000).await.unwrap();
    }
    let mut sub = w.tally.subscribe();
    let per_task = 150;
    let mut tasks = Vec::new();
    for &user in &users {
        let tally = w.tally.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                tally.charge(op(), user, APP, 1, "/x").await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < users.len() * per_task {
        let event = next(&mut sub).await;
        assert_eq!(event.name(), "credit.record-cost");
        seqs.push(event.seq);
    }
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "events out of journal order"
    );
    assert!(sub.try_recv().unwrap().is_none());
}
