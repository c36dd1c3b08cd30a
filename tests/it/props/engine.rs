//! The engine's machinery that histories of requests cannot see, pinned down by scenarios that
//! look at it from below (through `ProbeStore`): the resident cap and least-recently-used
//! eviction, checkpoints and passivation saving only durable state, the expiry timer re-armed
//! for an earlier deadline, the lock order under contention, and passivation racing requests.
//! Each one was found by mutation testing (see README, "Mutation testing") as a change to the
//! engine that no other test noticed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally::{
    AccountId, AccountSpec, Change, EngineConfig, Limits, ManualClock, OpId, ReserveRequest,
    SystemClock, Tally,
};

use super::model::{runtime, START};
use super::probe::{Event, ProbeStore};

const BANK: AccountId = AccountId(1);
const APP: AccountId = AccountId(2);
const ALICE: AccountId = AccountId(10);
const BOB: AccountId = AccountId(11);
const NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3_600);

fn config(clock: &ManualClock) -> EngineConfig {
    EngineConfig {
        limits: Limits::default(),
        clock: Arc::new(clock.clone()),
        idle_passivate_after: NEVER,
        checkpoint_interval: NEVER,
        ..EngineConfig::default()
    }
}

/// Waits (a bounded while, in real time) until `done` holds; says whether it did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1_000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

/// An engine capped at 10 resident accounts (the supervisor ticking every
/// `tick`) with `n` users opened, none of them resident yet.
async fn capped_world(tick: Duration, n: u64) -> (Tally, ProbeStore, ManualClock, Vec<AccountId>) {
    let clock = ManualClock::new(START);
    let store = ProbeStore::new(Limits::default());
    let config = EngineConfig {
        resident_max: 10,
        supervisor_tick: tick,
        ..config(&clock)
    };
    let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
    let users: Vec<AccountId> = (100..100 + n).map(AccountId).collect();
    for user in &users {
        tally
            .open_account(*user, AccountSpec::user())
            .await
            .unwrap();
    }
    (tally, store, clock, users)
}

fn saved_ids(events: &[Event]) -> Vec<AccountId> {
    let mut ids: Vec<AccountId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Saved { account, .. } => Some(*account),
            Event::Checkpoint => None,
        })
        .collect();
    ids.sort();
    ids
}

/// Past the cap, the least recently used idle accounts are passivated until 90% of the cap is
/// resident (by the supervisor, woken by the activation that passes the cap).
/// (On one thread: the touches run without yielding, so the supervisor acts
/// only between waves and the outcome is exact.)
#[test]
fn the_resident_cap_passivates_the_least_recently_used_accounts() {
    runtime().block_on(async {
        let (tally, store, clock, users) = capped_world(Duration::from_millis(2), 30).await;
        store.take_events();

        // Wave 1: 20 accounts, oldest access first (the last one opened, whose record is the
        // newest in the journal, first of all).
        let order: Vec<AccountId> = std::iter::once(users[29])
            .chain(users[0..19].iter().copied())
            .collect();
        for id in &order {
            clock.advance(1);
            tally.balance(*id).await.unwrap();
        }
        // Past the cap the least recently used leave, never below 90% of it: whoever left,
        // left in access order.
        assert!(eventually(|| tally.resident_accounts() <= 10).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resident = tally.resident_accounts();
        assert!((9..=10).contains(&resident), "{resident} resident");
        let left = saved_ids(&store.take_events());
        assert_eq!(left.len() + resident, 20, "{left:?} {resident}");
        let mut oldest: Vec<AccountId> = order[..left.len()].to_vec();
        oldest.sort();
        assert_eq!(left, oldest);

        // Wave 2: 5 more; the oldest of those resident leave.
        for id in &users[19..24] {
            clock.advance(1);
            tally.balance(*id).await.unwrap();
        }
        assert!(eventually(|| tally.resident_accounts() <= 10).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now_resident = tally.resident_accounts();
        assert!((9..=10).contains(&now_resident), "{now_resident} resident");
        let next_left = saved_ids(&store.take_events());
        assert_eq!(next_left.len() + now_resident, resident + 5);
        let mut next: Vec<AccountId> = order[left.len()..left.len() + next_left.len()].to_vec();
        next.sort();
        assert_eq!(next_left, next);

        // Passivated accounts come back as they were.
        assert_eq!(tally.balance(order[0]).await.unwrap().available, 0);
        assert!(tally.audit().await.unwrap().ok());
    });
}

/// Checkpoints save every changed account once (not again while it is unchanged), and
/// neither a checkpoint nor the eviction of an idle account ever saves a state that is not
/// durable yet.
#[test]
fn checkpoints_and_passivation_save_only_durable_state() {
    runtime().block_on(async {
        let clock = ManualClock::new(START);
        let store = ProbeStore::new(Limits::default());
        let config = EngineConfig {
            resident_max: 3,
            supervisor_tick: Duration::from_millis(2),
            checkpoint_interval: Duration::from_millis(5),
            ..config(&clock)
        };
        let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
        for (id, spec) in [
            (BANK, AccountSpec::funding()),
            (APP, AccountSpec::revenue()),
            (ALICE, AccountSpec::user()),
            (AccountId(200), AccountSpec::user()),
            (AccountId(201), AccountSpec::user()),
        ] {
            tally.open_account(id, spec).await.unwrap();
        }
        store.take_events();

        // A changed account is saved by a checkpoint, two changed accounts in one round (the
        // bank's debits are legs: summed by the store, never a reason to save the bank).
        let mut both_in_one_round = false;
        for op in 1..=50 {
            tally.fund(OpId(op), ALICE, BANK, 10).await.unwrap();
            let alice = store.last_seq();
            tally
                .fund(OpId(op + 500), AccountId(200), BANK, 10)
                .await
                .unwrap();
            let other = store.last_seq();
            let saved = |id, last| {
                store
                    .saves()
                    .iter()
                    .any(|(a, seq, _)| *a == id && *seq >= last)
            };
            assert!(eventually(|| saved(ALICE, alice) && saved(AccountId(200), other)).await);
            let events = store.take_events();
            let mut run = 0;
            for event in &events {
                match event {
                    Event::Saved { .. } => run += 1,
                    Event::Checkpoint => {
                        both_in_one_round |= run >= 2;
                        run = 0;
                    }
                }
            }
            if both_in_one_round {
                break;
            }
        }
        assert!(both_in_one_round, "no checkpoint saved two accounts");

        // Unchanged, they are not saved again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(saved_ids(&store.take_events()), Vec::<AccountId>::new());

        // A change that is not durable yet: no snapshot may include it, whether a checkpoint
        // or the eviction of an idle account (two more accounts pass the cap of 3) takes it.
        store.hold();
        let pending = tokio::spawn({
            let tally = tally.clone();
            async move { tally.fund(OpId(1_000), ALICE, BANK, 5).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(store.last_seq() > store.durable_seq());
        for id in [AccountId(200), AccountId(201)] {
            clock.advance(1);
            tally.balance(id).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        for (account, last_seq, durable) in store.saves() {
            assert!(
                last_seq <= durable,
                "{account:?} saved at {last_seq}, durable only up to {durable}"
            );
        }
        store.release();
        pending.await.unwrap().unwrap();
        let last = store.last_seq();
        assert!(
            eventually(|| store
                .saves()
                .iter()
                .any(|(a, seq, _)| *a == ALICE && *seq == last))
            .await
        );
    });
}

/// A hold with an earlier deadline than the one the timer waits for gets the timer: it
/// expires on time with no request touching its account.
#[test]
fn an_earlier_deadline_re_arms_the_expiry_timer() {
    {
        runtime().block_on(async {
            let store = ProbeStore::new(Limits::default());
            let config = EngineConfig {
                clock: Arc::new(SystemClock),
                ..config(&ManualClock::default())
            };
            let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
            super::open_alice_funded(&tally).await;
            let late = ReserveRequest::new(ALICE, APP, 100).timeout(Duration::from_secs(60));
            let late = tally.reserve(OpId(2), late).await.unwrap();
            // Let the actor arm its timer for the late deadline first, so the early one must
            // re-arm it (without this pause both nudges may find no timer armed yet).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let soon = ReserveRequest::new(ALICE, APP, 100).timeout(Duration::from_millis(30));
            let soon = tally.reserve(OpId(3), soon).await.unwrap();
            let expired = |hold: u64| {
                store
                    .records()
                    .iter()
                    .any(|r| matches!(r.change, Change::Expired { hold: h, .. } if h == hold))
            };
            assert!(
                eventually(|| expired(soon.seq)).await,
                "the hold due first did not expire on its own"
            );
            assert!(!expired(late.seq));
        });
    }
}

/// Transfers both ways between two accounts, with every append slow (so the account locks
/// are held long and contended): they all complete. Locks taken in another order than by
/// account id deadlock here.
#[test]
fn opposite_transfers_under_contention_never_deadlock() {
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let clock = ManualClock::new(START);
                let store = ProbeStore::new(Limits::default());
                let tally = Tally::open(Arc::new(store.clone()), config(&clock))
                    .await
                    .unwrap();
                tally
                    .open_account(BANK, AccountSpec::funding())
                    .await
                    .unwrap();
                for user in [ALICE, BOB] {
                    tally.open_account(user, AccountSpec::user()).await.unwrap();
                    tally
                        .fund(OpId(u128::from(user.0)), user, BANK, 1_000_000)
                        .await
                        .unwrap();
                }
                store.slow_appends(Duration::from_micros(200));
                let tasks: Vec<_> = (0..8u128)
                    .map(|task| {
                        let tally = tally.clone();
                        tokio::spawn(async move {
                            let (from, to) = if task % 2 == 0 {
                                (ALICE, BOB)
                            } else {
                                (BOB, ALICE)
                            };
                            for i in 0..100u128 {
                                tally
                                    .transfer(OpId(1_000 * (task + 1) + i), from, to, 1)
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                let total = tally.balance(ALICE).await.unwrap().available
                    + tally.balance(BOB).await.unwrap().available;
                assert_eq!(total, 2_000_000);
            });
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(120)).is_ok(),
            "opposite transfers deadlocked (or failed)"
        );
    }
}

/// Accounts passivated again and again (slowly: the snapshot holds the account's lock) while
/// transfers use them: every transfer still succeeds (a request that finds its counterparty
/// passivated under it looks it up again) and nothing is lost.
#[test]
fn transfers_racing_passivation_retry_and_lose_nothing() {
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let clock = ManualClock::new(START);
            let store = ProbeStore::new(Limits::default());
            let config = EngineConfig {
                idle_passivate_after: Duration::from_secs(1),
                supervisor_tick: Duration::from_millis(1),
                ..config(&clock)
            };
            let tally = Tally::open(Arc::new(store.clone()), config).await.unwrap();
            tally
                .open_account(BANK, AccountSpec::funding())
                .await
                .unwrap();
            for user in [ALICE, BOB] {
                tally.open_account(user, AccountSpec::user()).await.unwrap();
            }
            tally.fund(OpId(1), ALICE, BANK, 10_000).await.unwrap();
            store.slow_saves(Duration::from_millis(2));
            let done = Arc::new(AtomicBool::new(false));
            let idler = {
                let (clock, done) = (clock.clone(), done.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::Acquire) {
                        clock.advance(2_000);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            };
            for i in 0..300u128 {
                let result = tally.transfer(OpId(100 + i), ALICE, BOB, 1).await;
                assert_eq!(result, Ok(()), "transfer {i}");
            }
            done.store(true, Ordering::Release);
            idler.await.unwrap();
            assert_eq!(tally.balance(ALICE).await.unwrap().available, 10_000 - 300);
            assert_eq!(tally.balance(BOB).await.unwrap().available, 300);
            assert!(tally.audit().await.unwrap().ok());
            let passivated = store.saves().len();
            assert!(passivated > 0, "nothing was passivated");
        });
        rt.shutdown_timeout(Duration::from_secs(10));
    }
}

/// With no supervisor tick to fall back on, going past the resident cap asks the supervisor to
/// evict at once (and only past it).
#[test]
fn going_past_the_resident_cap_asks_for_an_eviction_at_once() {
    runtime().block_on(async {
        let (tally, _store, clock, users) = capped_world(Duration::from_secs(3_600), 11).await;
        // Exactly at the cap: nothing to do (give the supervisor time to do it anyway).
        for user in &users[..10] {
            clock.advance(1);
            tally.balance(*user).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(tally.resident_accounts(), 10);
        // One past it.
        clock.advance(1);
        tally.balance(users[10]).await.unwrap();
        assert!(
            eventually(|| tally.resident_accounts() <= 10).await,
            "{} resident past a cap of 10 with no eviction",
            tally.resident_accounts()
        );
    });
}
