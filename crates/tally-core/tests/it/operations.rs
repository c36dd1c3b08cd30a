//! Every operation's success and its exact effect on both accounts' posted, pending and available.

use tally_core::{
    AccountSpec, Amount, HoldId, HoldStatus, Outcome, PostingId, CHECK_MINIMUM_DEFAULT,
};

use crate::world::*;

#[test]
fn fund_credits_the_account_and_debits_the_funding_account() {
    let mut w = World::new();

    let outcome = w.ok(USER, fund(BANK, 1_000));

    assert_eq!(outcome, Outcome::Funded);
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(BANK), bal(-1_000, 0, -1_000));
}

#[test]
fn fund_may_credit_a_revenue_account() {
    let mut w = World::new();

    w.ok(APP, fund(BANK, 70));

    assert_eq!(w.bal(APP), bal(70, 0, 70));
    assert_eq!(w.bal(BANK), bal(-70, 0, -70));
}

#[test]
fn reserve_moves_the_amount_from_available_to_pending() {
    let mut w = World::new();
    w.fund(USER, 1_000);

    let outcome = w.ok(USER, reserve(300));

    let hold = HoldId {
        account: USER,
        seq: 1,
    };
    let expires_at = T0.plus_ms(TIMEOUT_MS);
    assert_eq!(
        outcome,
        Outcome::Reserved {
            hold,
            expires_at,
            amount: amt(300)
        }
    );
    assert_eq!(w.bal(USER), bal(1_000, 300, 700));
    assert_eq!(
        w.bal(APP),
        bal(0, 0, 0),
        "the app gets nothing until the commit"
    );
    let h = w.account(USER).hold(hold.seq).unwrap();
    assert_eq!(
        (h.amount, h.app, h.status, h.expires_at, h.created_at),
        (amt(300), APP, HoldStatus::Pending, expires_at, T0)
    );
    assert_eq!((&*h.endpoint, h.metadata.as_str()), (ENDPOINT, METADATA));
    assert_eq!(w.account(USER).next_deadline(), Some(expires_at));
    assert_eq!(w.account(USER).pending_holds().count(), 1);
}

#[test]
fn full_commit_posts_the_whole_hold_to_the_app() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 300);

    let outcome = w.ok(USER, commit(hold, 300));

    let posting = PostingId {
        account: USER,
        seq: hold.seq + 1,
    };
    assert_eq!(
        outcome,
        Outcome::Committed {
            posting,
            amount_posted: amt(300),
            amount_released: Amount::ZERO,
        }
    );
    assert_eq!(w.bal(USER), bal(700, 0, 700));
    assert_eq!(w.bal(APP), bal(300, 0, 300));
    let h = w.account(USER).hold(hold.seq).unwrap();
    assert_eq!(
        (h.status, h.amount_posted, h.posting, h.resolved_at),
        (HoldStatus::Posted, amt(300), Some(posting), Some(T0))
    );
    assert_eq!(
        w.account(USER).posting(posting.seq).unwrap().amount,
        amt(300)
    );
    assert_eq!(w.account(USER).next_deadline(), None);
}

#[test]
fn partial_commit_posts_the_actual_cost_and_releases_the_rest() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 300);

    let outcome = w.ok(USER, commit(hold, 120));

    assert_eq!(
        outcome,
        Outcome::Committed {
            posting: PostingId {
                account: USER,
                seq: hold.seq + 1
            },
            amount_posted: amt(120),
            amount_released: amt(180),
        }
    );
    assert_eq!(w.bal(USER), bal(880, 0, 880));
    assert_eq!(w.bal(APP), bal(120, 0, 120));
}

#[test]
fn void_releases_the_whole_hold_and_posts_nothing() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 300);

    let outcome = w.ok(USER, void(hold));

    assert_eq!(
        outcome,
        Outcome::Voided {
            amount_released: amt(300)
        }
    );
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(APP), bal(0, 0, 0));
    let h = w.account(USER).hold(hold.seq).unwrap();
    assert_eq!(
        (h.status, h.amount_posted),
        (HoldStatus::Voided, Amount::ZERO)
    );
}

#[test]
fn a_hold_is_due_exactly_at_its_deadline_and_expiry_releases_it() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve_for(USER, 300, 1_000);
    w.advance(999);
    assert_eq!(w.account(USER).due_holds(w.now).count(), 0);
    assert_eq!(w.account(USER).expire_record(hold.seq, w.now), None);
    w.advance(1);

    let expired = w.expire_due(USER);

    assert_eq!(
        expired,
        vec![Outcome::Expired {
            amount_released: amt(300)
        }]
    );
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(APP), bal(0, 0, 0));
    let h = w.account(USER).hold(hold.seq).unwrap();
    assert_eq!(
        (h.status, h.resolved_at),
        (HoldStatus::Expired, Some(w.now))
    );
    assert_eq!(w.account(USER).next_deadline(), None);
    assert_eq!(
        w.account(USER).expire_record(hold.seq, w.now),
        None,
        "an expired hold does not expire twice"
    );
}

#[test]
fn due_holds_come_soonest_first_and_only_pending_ones() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let late = w.reserve_for(USER, 10, 3_000);
    let early = w.reserve_for(USER, 10, 1_000);
    let committed = w.reserve_for(USER, 10, 2_000);
    w.commit(committed, 10);
    w.advance(5_000);

    let due: Vec<HoldId> = w.account(USER).due_holds(w.now).collect();

    assert_eq!(due, vec![early, late]);
}

#[test]
fn charge_posts_to_the_app_at_once() {
    let mut w = World::new();
    w.fund(USER, 1_000);

    let outcome = w.ok(USER, charge(250));

    let posting = PostingId {
        account: USER,
        seq: 1,
    };
    assert_eq!(outcome, Outcome::Charged { posting });
    assert_eq!(w.bal(USER), bal(750, 0, 750));
    assert_eq!(w.bal(APP), bal(250, 0, 250));
    let p = w.account(USER).posting(posting.seq).unwrap();
    assert_eq!(
        (p.app, p.amount, p.amount_refunded, p.posted_at),
        (APP, amt(250), Amount::ZERO, T0)
    );
}

#[test]
fn full_refund_returns_the_whole_posting_from_the_app() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let posting = w.charge(USER, 250);

    let outcome = w.ok(USER, refund(posting, 250));

    assert_eq!(outcome, Outcome::Refunded { posting });
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(APP), bal(0, 0, 0));
    assert_eq!(
        w.account(USER).posting(posting.seq).unwrap().refundable(),
        Amount::ZERO
    );
}

#[test]
fn refunds_in_parts_return_up_to_the_posting_and_no_more() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 400);
    let posting = w.commit(hold, 250);

    w.ok(USER, refund(posting, 100));
    assert_eq!(w.bal(USER), bal(850, 0, 850));
    assert_eq!(w.bal(APP), bal(150, 0, 150));
    w.ok(USER, refund(posting, 150));
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(APP), bal(0, 0, 0));

    let error = w.reject(USER, refund(posting, 1));

    assert_eq!(
        error,
        tally_core::Error::RefundExceedsPosting {
            posting,
            refundable: 0,
            requested: 1
        }
    );
}

#[test]
fn a_refund_is_applied_even_after_the_app_paid_out() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let posting = w.charge(USER, 300);
    w.ok(APP, transfer(USER2, 300));

    w.ok(USER, refund(posting, 300));

    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    assert_eq!(w.bal(APP), bal(-300, 0, -300));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn transfer_moves_posted_funds_between_accounts() {
    let mut w = World::new();
    w.fund(USER, 1_000);

    let outcome = w.ok(USER, transfer(USER2, 400));

    assert_eq!(outcome, Outcome::Transferred);
    assert_eq!(w.bal(USER), bal(600, 0, 600));
    assert_eq!(w.bal(USER2), bal(400, 0, 400));
}

#[test]
fn transfer_may_spend_all_that_is_not_held() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    w.reserve(USER, 300);

    w.ok(USER, transfer(USER2, 700));

    assert_eq!(w.bal(USER), bal(300, 300, 0));
    assert_eq!(w.bal(USER2), bal(700, 0, 700));
}

#[test]
fn an_app_pays_out_its_revenue_by_transfer() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    w.charge(USER, 600);

    w.ok(APP, transfer(USER2, 600));

    assert_eq!(w.bal(APP), bal(0, 0, 0));
    assert_eq!(w.bal(USER2), bal(600, 0, 600));
}

#[test]
fn reserving_and_charging_may_use_every_last_unit() {
    let mut w = World::new();
    w.fund(USER, 1_000);

    w.reserve(USER, 600);
    w.charge(USER, 400);

    assert_eq!(w.bal(USER), bal(600, 600, 0));
}

#[test]
fn credit_limit_lets_a_user_go_negative_down_to_minus_the_limit_and_not_further() {
    let mut w = World::new();
    w.open(USER, AccountSpec::user().with_credit_limit(amt(500)));
    assert_eq!(w.bal(USER), bal(0, 0, 500));

    w.reserve(USER, 200);
    w.charge(USER, 300);
    assert_eq!(w.bal(USER), bal(-300, 200, 0));

    let error = w.reject(USER, charge(1));
    assert_eq!(
        error,
        tally_core::Error::InsufficientFunds {
            account: USER,
            available: 0,
            requested: 1
        }
    );
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn check_compares_available_with_the_minimum() {
    let mut w = World::new();
    let cases: &[(u64, u64, bool)] = &[
        // (funded, minimum, allowed)
        (0, 0, true),
        (0, 1, false),
        (99, 100, false),
        (100, 100, true),
        (101, 100, true),
    ];
    for &(funded, minimum, allowed) in cases {
        w.open(USER, AccountSpec::user());
        if funded > 0 {
            w.fund(USER, funded);
        }
        assert_eq!(
            w.account(USER).check(amt(minimum)),
            allowed,
            "funded {funded}, minimum {minimum}"
        );
    }
    assert_eq!(CHECK_MINIMUM_DEFAULT, amt(100));
}

#[test]
fn check_counts_pending_holds_against_the_minimum() {
    let mut w = World::new();
    w.fund(USER, 150);
    assert!(w.account(USER).check(CHECK_MINIMUM_DEFAULT));

    w.reserve(USER, 51);

    assert!(!w.account(USER).check(CHECK_MINIMUM_DEFAULT));
}

#[test]
fn the_largest_amount_is_accepted_and_totals_go_past_it() {
    let mut w = World::new();
    let max = Amount::MAX.get();

    w.fund(USER, max);
    w.fund(USER, max);
    w.reserve(USER, max);
    w.charge(USER, max);

    let twice = 2 * i128::from(max);
    assert_eq!(w.bal(USER), bal(twice - i128::from(max), max.into(), 0));
    assert_eq!(w.bal(BANK).posted, -twice);
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn holds_and_postings_number_from_one_shared_sequence() {
    let mut w = World::new();
    w.fund(USER, 1_000);

    let h1 = w.reserve(USER, 10);
    let p2 = w.commit(h1, 10);
    let p3 = w.charge(USER, 10);
    let h4 = w.reserve(USER, 10);

    assert_eq!((h1.seq, p2.seq, p3.seq, h4.seq), (1, 2, 3, 4));
    w.fund(USER2, 10);
    assert_eq!(
        w.reserve(USER2, 10).seq,
        1,
        "another account numbers its own"
    );
}
