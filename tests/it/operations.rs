//! Every operation's success and its exact effect on balances.

use std::time::Duration;
use tally::{AccountId, AccountSpec, Change, HoldStatus, ReserveRequest};

use crate::support::*;

#[tokio::test]
async fn fund_credits_the_user_and_debits_the_funding_account() {
    let w = World::new(0).await;
    w.tally.fund(op(), ALICE, BANK, 5_000).await.unwrap();
    let alice = w.tally.balance(ALICE).await.unwrap();
    assert_eq!((alice.credits_posted, alice.available), (5_000, 5_000));
    assert_eq!(w.tally.balance(BANK).await.unwrap().posted, -5_000);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn check_uses_a_default_minimum_of_100_microcents() {
    let w = World::new(99).await;
    assert!(!w.tally.check(ALICE, None).await.unwrap());
    assert!(w.tally.check(ALICE, Some(99)).await.unwrap());
    w.tally.fund(op(), ALICE, BANK, 1).await.unwrap();
    assert!(w.tally.check(ALICE, None).await.unwrap());
}

#[tokio::test]
async fn reserve_moves_available_to_pending() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 3_000).endpoint("/chat"),
        )
        .await
        .unwrap();
    let b = w.tally.balance(ALICE).await.unwrap();
    assert_eq!(
        (b.debits_pending, b.available, b.posted),
        (3_000, 7_000, 10_000)
    );
    let found = w.tally.get_hold(hold).await.unwrap();
    assert_eq!(
        (found.status, found.amount.get()),
        (HoldStatus::Pending, 3_000)
    );
    assert_eq!(&*found.endpoint, "/chat");
}

#[tokio::test]
async fn full_commit_posts_everything_to_the_app() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 3_000))
        .await
        .unwrap();
    let c = w.tally.commit(op(), hold, 3_000).await.unwrap();
    assert_eq!((c.amount_posted.get(), c.amount_released.get()), (3_000, 0));
    assert_eq!(w.available(ALICE).await, 7_000);
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 3_000);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn partial_commit_releases_the_rest() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 3_000))
        .await
        .unwrap();
    let c = w.tally.commit(op(), hold, 1_234).await.unwrap();
    assert_eq!(
        (c.amount_posted.get(), c.amount_released.get()),
        (1_234, 1_766)
    );
    let b = w.tally.balance(ALICE).await.unwrap();
    assert_eq!((b.debits_pending, b.available), (0, 10_000 - 1_234));
    assert_eq!(
        w.tally.get_hold(hold).await.unwrap().status,
        HoldStatus::Posted
    );
    w.assert_books_balance().await;
}

#[tokio::test]
async fn void_releases_the_whole_hold() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 3_000))
        .await
        .unwrap();
    assert_eq!(w.tally.void(op(), hold).await.unwrap().get(), 3_000);
    assert_eq!(w.available(ALICE).await, 10_000);
    assert_eq!(
        w.tally.get_hold(hold).await.unwrap().status,
        HoldStatus::Voided
    );
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 0);
}

#[tokio::test]
async fn charge_posts_in_one_step() {
    let w = World::new(10_000).await;
    let posting = w
        .tally
        .charge(op(), ALICE, APP, 1_000_000 / 100, "/search")
        .await
        .unwrap();
    assert_eq!(posting.account, ALICE);
    assert_eq!(w.available(ALICE).await, 0);
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 10_000);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn refund_returns_money_in_parts_up_to_the_posting() {
    let w = World::new(10_000).await;
    let posting = w
        .tally
        .charge(op(), ALICE, APP, 4_000, "/ocr")
        .await
        .unwrap();
    w.tally.refund(op(), posting, 1_000).await.unwrap();
    w.tally.refund(op(), posting, 3_000).await.unwrap();
    assert_eq!(w.available(ALICE).await, 10_000);
    assert_eq!(w.tally.balance(APP).await.unwrap().posted, 0);
    let state = w.tally.account(ALICE).await.unwrap();
    assert_eq!(state.posting(posting.seq).unwrap().refundable().get(), 0);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn transfer_moves_posted_funds() {
    let w = World::new(10_000).await;
    w.tally.transfer(op(), ALICE, BOB, 2_500).await.unwrap();
    assert_eq!(w.available(ALICE).await, 7_500);
    assert_eq!(w.available(BOB).await, 2_500);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn credit_limit_lets_a_user_go_negative_down_to_the_limit() {
    let w = World::new(0).await;
    let carol = AccountId(12);
    w.tally
        .open_account(
            carol,
            AccountSpec::user().with_credit_limit(tally::Amount::new(500).unwrap()),
        )
        .await
        .unwrap();
    w.tally.charge(op(), carol, APP, 500, "").await.unwrap();
    let b = w.tally.balance(carol).await.unwrap();
    assert_eq!((b.posted, b.available), (-500, 0));
    w.assert_books_balance().await;
}

#[tokio::test]
async fn history_pages_through_every_record_that_touched_an_account() {
    let w = World::new(10_000).await;
    for _ in 0..5 {
        w.tally.charge(op(), ALICE, APP, 10, "").await.unwrap();
    }
    let first = w.tally.history(ALICE, 0, 4).await.unwrap();
    assert_eq!(first.entries.len(), 4);
    assert!(matches!(
        first.entries[0].record.change,
        Change::Opened { .. }
    ));
    assert!(matches!(
        first.entries[1].record.change,
        Change::Funded { .. }
    ));
    let after = first.next_after_seq.unwrap();
    let second = w.tally.history(ALICE, after, 4).await.unwrap();
    assert_eq!(second.entries.len(), 3);
    assert_eq!(second.next_after_seq, None);
    assert!(second.entries.iter().all(|e| e.seq > after));
    // The app sees the five charges as the counterparty.
    let app = w.tally.history(APP, 0, 100).await.unwrap();
    let charges = app
        .entries
        .iter()
        .filter(|e| matches!(e.record.change, Change::Charged { .. }))
        .count();
    assert_eq!(charges, 5);
}

#[tokio::test]
async fn hold_guard_commit_charges_the_actual_cost() {
    let w = World::new(10_000).await;
    let mut guard = w
        .tally
        .hold(
            op(),
            ReserveRequest::new(ALICE, APP, 5_000).timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    guard.commit(op(), 1_400).await.unwrap();
    drop(guard);
    assert_eq!(w.available(ALICE).await, 8_600);
    assert_eq!(w.tally.balance(ALICE).await.unwrap().debits_pending, 0);
}
