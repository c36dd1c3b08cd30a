//! Resolved holds and postings are kept up to their limits, oldest forgotten first; pending holds
//! are never forgotten.

use tally_core::{Error, HoldStatus, Limits};

use crate::world::*;

#[test]
fn resolved_holds_beyond_the_retained_count_are_forgotten_oldest_first() {
    let limits = Limits {
        holds_resolved_retained: 2,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    let committed = w.reserve(USER, 10);
    let voided = w.reserve(USER, 10);
    let expired = w.reserve_for(USER, 10, 1_000);
    w.commit(committed, 10);
    w.ok(USER, void(voided));
    w.advance(1_000);
    w.expire_due(USER);

    let error = w.reject(USER, commit(committed, 1));

    assert_eq!(error, Error::UnknownHold { hold: committed });
    assert_eq!(
        w.reject(USER, void(committed)),
        Error::UnknownHold { hold: committed }
    );
    assert!(w.account(USER).hold(committed.seq).is_none());
    assert_eq!(
        w.reject(USER, void(voided)),
        Error::HoldAlreadyResolved {
            hold: voided,
            status: HoldStatus::Voided
        }
    );
    assert!(matches!(
        w.reject(USER, void(expired)),
        Error::HoldExpired { hold, .. } if hold == expired
    ));
}

#[test]
fn pending_holds_are_never_forgotten() {
    let limits = Limits {
        holds_resolved_retained: 0,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    let pending = w.reserve(USER, 100);
    for _ in 0..5 {
        let other = w.reserve(USER, 10);
        w.commit(other, 10);
    }
    assert_eq!(w.account(USER).pending_holds().count(), 1);

    w.commit(pending, 100);

    assert!(
        w.account(USER).hold(pending.seq).is_none(),
        "forgotten once resolved"
    );
    assert_eq!(w.bal(USER), bal(850, 0, 850));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn postings_beyond_the_retained_count_are_no_longer_refundable() {
    let limits = Limits {
        postings_retained: 2,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    let oldest = w.charge(USER, 100);
    let hold = w.reserve(USER, 100);
    let middle = w.commit(hold, 100);
    let newest = w.charge(USER, 100);

    let error = w.reject(USER, refund(oldest, 1));

    assert_eq!(error, Error::UnknownPosting { posting: oldest });
    assert!(w.account(USER).posting(oldest.seq).is_none());
    let kept: Vec<_> = w.account(USER).postings().map(|p| p.id).collect();
    assert_eq!(kept, vec![middle, newest]);
    w.ok(USER, refund(middle, 100));
    w.ok(USER, refund(newest, 100));
    assert_eq!(w.bal(USER), bal(900, 0, 900));
}

#[test]
fn a_fully_refunded_posting_still_counts_towards_the_retained_postings() {
    let limits = Limits {
        postings_retained: 1,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    let first = w.charge(USER, 100);
    w.ok(USER, refund(first, 100));

    let second = w.charge(USER, 100);

    assert_eq!(
        w.reject(USER, refund(first, 1)),
        Error::UnknownPosting { posting: first }
    );
    w.ok(USER, refund(second, 1));
}
