//! Many tasks on one account: no overspend, and the books balance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tally::{Error, LedgerError, ReserveRequest};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_on_one_account_never_overspend() {
    const FUNDS: u64 = 1_000_000;
    let w = World::new(FUNDS).await;
    let posted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for task in 0..64u64 {
        let (tally, posted, refused) = (w.tally.clone(), posted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..60u64 {
                let amount = 1_000 + (task * 7 + i * 13) % 5_000;
                let result = match (task + i) % 4 {
                    0 => tally
                        .charge(op(), ALICE, APP, amount, "")
                        .await
                        .map(|_| amount),
                    1 => match tally
                        .reserve(op(), ReserveRequest::new(ALICE, APP, amount))
                        .await
                    {
                        Ok(hold) => tally
                            .commit(op(), hold, amount / 2 + 1)
                            .await
                            .map(|c| c.amount_posted.get()),
                        Err(e) => Err(e),
                    },
                    2 => match tally
                        .reserve(op(), ReserveRequest::new(ALICE, APP, amount))
                        .await
                    {
                        Ok(hold) => tally.void(op(), hold).await.map(|_| 0),
                        Err(e) => Err(e),
                    },
                    _ => match tally
                        .reserve(op(), ReserveRequest::new(ALICE, APP, amount))
                        .await
                    {
                        Ok(hold) => tally
                            .commit(op(), hold, amount)
                            .await
                            .map(|c| c.amount_posted.get()),
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(amount) => {
                        posted.fetch_add(amount, Ordering::Relaxed);
                    }
                    Err(Error::Ledger(LedgerError::InsufficientFunds { available, .. })) => {
                        assert!(available >= 0, "available went negative: {available}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let posted = posted.load(Ordering::Relaxed);
    assert!(posted <= FUNDS, "posted {posted} of {FUNDS}");
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the workload should exhaust the funds"
    );
    let alice = w.tally.balance(ALICE).await.unwrap();
    assert_eq!(alice.debits_pending, 0);
    assert_eq!(alice.available, i128::from(FUNDS - posted));
    assert_eq!(
        w.tally.balance(APP).await.unwrap().posted,
        i128::from(posted)
    );
    w.assert_books_balance().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opposite_transfers_between_two_accounts_do_not_deadlock() {
    let w = World::new(100_000).await;
    w.tally.transfer(op(), ALICE, BOB, 50_000).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let tally = w.tally.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let (from, to) = if task % 2 == 0 {
                    (ALICE, BOB)
                } else {
                    (BOB, ALICE)
                };
                match tally.transfer(op(), from, to, 97).await {
                    Ok(()) | Err(Error::Ledger(LedgerError::InsufficientFunds { .. })) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let all = futures_join(tasks);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("transfers deadlocked");
    let (a, b) = (w.available(ALICE).await, w.available(BOB).await);
    assert_eq!(a + b, 100_000);
    w.assert_books_balance().await;
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_and_voids_racing_on_one_hold_resolve_it_exactly_once() {
    let w = World::new(10_000).await;
    for _ in 0..20 {
        let hold = w
            .tally
            .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
            .await
            .unwrap();
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let tally = w.tally.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        tally.commit(op(), hold, 100).await.is_ok()
                    } else {
                        tally.void(op(), hold).await.is_ok()
                    }
                })
            })
            .collect();
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap());
        }
        assert_eq!(winners, 1, "a hold resolved {winners} times");
    }
    w.assert_books_balance().await;
}
