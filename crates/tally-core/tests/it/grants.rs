//! Prepaid credit grants: consumed before the general balance in the documented order (lowest
//! priority number, then earliest expiry, then oldest), drawn on by holds in the same decision,
//! given back last-taken-first by refunds, never moved out by a transfer, swept back to their
//! funding account when they expire, and issued each period by an allowance.

use tally_core::{Allowance, Command, Error, GrantId, Outcome, Period, Timestamp, GRANTS_MAX};

use crate::world::*;

const DAY: u64 = 86_400_000;

fn grant(amount: u64, priority: u32, ttl_ms: u64, label: &str) -> Command {
    Command::Grant {
        from: BANK,
        amount: amt(amount),
        priority,
        ttl_ms,
        label: label.to_owned(),
    }
}

fn issue(w: &mut World, amount: u64, priority: u32, ttl_ms: u64) -> GrantId {
    match w.ok(USER, grant(amount, priority, ttl_ms, "promo")) {
        Outcome::GrantIssued { grant, .. } => grant,
        other => panic!("{other:?}"),
    }
}

/// (used, held, expired, free) of a grant.
fn state(w: &World, g: GrantId) -> (u64, u64, u64, u64) {
    let g = w.account(USER).grant(g.seq).expect("the grant is kept");
    (g.used.get(), g.held.get(), g.expired.get(), g.free().get())
}

fn general(w: &World) -> i128 {
    w.account(USER).general_available(w.now)
}

#[test]
fn a_grant_credits_the_user_from_the_funding_account_and_is_its_own_part_of_the_balance() {
    let mut w = World::new();
    w.fund(USER, 100);
    let g = issue(&mut w, 500, 0, 10 * DAY);
    assert_eq!(w.bal(USER), bal(600, 0, 600));
    assert_eq!(w.bal(BANK), bal(-600, 0, -600));
    assert_eq!(state(&w, g), (0, 0, 0, 500));
    assert_eq!(general(&w), 100);
    let kept = w.account(USER).grant(g.seq).unwrap();
    assert_eq!(kept.expires_at, Some(T0.plus_ms(10 * DAY)));
    assert_eq!(
        (kept.from, kept.priority, kept.label.as_str()),
        (BANK, 0, "promo")
    );
    assert!(w.audit().ok());
}

#[test]
fn spending_draws_on_grants_by_priority_then_earliest_expiry_then_the_general_balance() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let late_low = issue(&mut w, 100, 1, 5 * DAY); // priority 1: after every priority 0
    let never = issue(&mut w, 100, 0, 0); // priority 0, never expires: last of priority 0
    let late = issue(&mut w, 100, 0, 30 * DAY);
    let soon = issue(&mut w, 100, 0, 2 * DAY);
    // 250: soon (100), late (100), never (50).
    w.charge(USER, 250);
    assert_eq!(state(&w, soon), (100, 0, 0, 0));
    assert_eq!(state(&w, late), (100, 0, 0, 0));
    assert_eq!(state(&w, never), (50, 0, 0, 50));
    assert_eq!(state(&w, late_low), (0, 0, 0, 100));
    assert_eq!(general(&w), 1_000);
    // 200 more: never's 50, late_low's 100, then 50 of the general balance.
    let p = w.charge(USER, 200);
    assert_eq!(state(&w, never), (100, 0, 0, 0));
    assert_eq!(state(&w, late_low), (100, 0, 0, 0));
    assert_eq!(general(&w), 950);
    assert_eq!(
        w.account(USER).posting(p.seq).unwrap().grants,
        vec![(never.seq, amt(50)), (late_low.seq, amt(100))]
    );
    assert_eq!(w.bal(USER), bal(950, 0, 950));
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn a_hold_draws_on_grants_in_the_same_decision_and_its_commit_posts_them_first() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let g = issue(&mut w, 300, 0, DAY);
    let hold = w.reserve(USER, 500);
    // The hold holds all 300 of the grant and 200 of the general balance.
    assert_eq!(state(&w, g), (0, 300, 0, 0));
    assert_eq!(general(&w), 800);
    assert_eq!(
        w.account(USER).hold(hold.seq).unwrap().grants,
        vec![(g.seq, amt(300))]
    );
    // Commit 200 of it: paid by the grant; its other 100 goes back to the grant, and the 200
    // of the general balance is released.
    let posting = w.commit(hold, 200);
    assert_eq!(state(&w, g), (200, 0, 0, 100));
    assert_eq!(general(&w), 1_000);
    assert_eq!(
        w.account(USER).posting(posting.seq).unwrap().grants,
        vec![(g.seq, amt(200))]
    );
    assert_eq!(w.bal(USER), bal(1_100, 0, 1_100));
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn extensions_and_settled_parts_of_a_stream_draw_and_post_grants_first() {
    let mut w = World::new();
    w.fund(USER, 100);
    let g = issue(&mut w, 150, 0, DAY);
    let hold = w.reserve(USER, 100);
    assert_eq!(state(&w, g), (0, 100, 0, 50));
    // Extending by 100: the grant's last 50, then 50 of the general balance.
    w.ok(
        USER,
        Command::Extend {
            hold,
            amount: amt(100),
            timeout_ms: 0,
        },
    );
    assert_eq!(state(&w, g), (0, 150, 0, 0));
    assert_eq!(general(&w), 50);
    // A part of 120: all from the grant's shares.
    w.ok(
        USER,
        Command::Settle {
            hold,
            amount: amt(120),
            usage: Default::default(),
        },
    );
    assert_eq!(state(&w, g), (120, 30, 0, 0));
    // The final commit posts 40 more (30 grant, 10 general) and releases the rest.
    w.commit(hold, 40);
    assert_eq!(state(&w, g), (150, 0, 0, 0));
    assert_eq!(general(&w), 90);
    assert_eq!(w.bal(USER), bal(90, 0, 90));
    // Spending past everything is refused, changing nothing.
    let refused = w.reject(USER, charge(91));
    assert!(
        matches!(refused, Error::InsufficientFunds { .. }),
        "{refused:?}"
    );
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn a_void_or_an_expired_hold_gives_its_grant_shares_back() {
    let mut w = World::new();
    let g = issue(&mut w, 300, 0, 10 * DAY);
    let voided = w.reserve(USER, 200);
    w.ok(USER, void(voided));
    assert_eq!(state(&w, g), (0, 0, 0, 300));
    let expiring = w.reserve_for(USER, 250, 1_000);
    assert_eq!(state(&w, g), (0, 250, 0, 50));
    w.advance(1_000);
    assert_eq!(w.expire_due(USER).len(), 1);
    assert_eq!(state(&w, g), (0, 0, 0, 300));
    let _ = expiring;
}

#[test]
fn a_refund_gives_back_the_general_part_first_then_the_grants_last_drawn_first() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let first = issue(&mut w, 30, 0, DAY);
    let second = issue(&mut w, 30, 1, DAY);
    let p = w.charge(USER, 100); // first 30, second 30, general 40
    assert_eq!(general(&w), 960);
    // 50 back: the 40 of the general balance, then 10 to `second` (drawn last).
    w.ok(USER, refund(p, 50));
    assert_eq!(general(&w), 1_000);
    assert_eq!(state(&w, second), (20, 0, 0, 10));
    assert_eq!(state(&w, first), (30, 0, 0, 0));
    // The rest: 20 to `second`, then 30 to `first`.
    w.ok(USER, refund(p, 50));
    assert_eq!(state(&w, second), (0, 0, 0, 30));
    assert_eq!(state(&w, first), (0, 0, 0, 30));
    assert!(w.account(USER).posting(p.seq).unwrap().grants.is_empty());
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn a_transfer_out_or_a_funding_update_down_may_use_only_the_general_balance() {
    let mut w = World::new();
    w.fund(USER, 100);
    issue(&mut w, 1_000, 0, DAY);
    let refused = w.reject(USER, transfer(USER2, 101));
    assert_eq!(
        refused,
        Error::InsufficientFunds {
            account: USER,
            available: 100,
            requested: 101,
        }
    );
    w.ok(USER, transfer(USER2, 100));
    let refused = w.reject(
        USER,
        Command::UpdateFunding {
            from: BANK,
            old: 100,
            new: 50,
        },
    );
    assert!(
        matches!(refused, Error::InsufficientFunds { available: 0, .. }),
        "{refused:?}"
    );
    // A charge may still spend the grant.
    w.charge(USER, 1_000);
    assert_eq!(w.bal(USER), bal(0, 0, 0));
}

#[test]
fn an_expired_grant_is_never_drawn_on_and_its_free_part_goes_back_to_the_funding_account() {
    let mut w = World::new();
    w.fund(USER, 100);
    let g = issue(&mut w, 500, 0, DAY);
    w.charge(USER, 200); // from the grant
    w.advance(DAY);
    // Not swept yet, but expired: the 300 it has free cannot be spent.
    let refused = w.reject(USER, charge(101));
    assert_eq!(
        refused,
        Error::InsufficientFunds {
            account: USER,
            available: 100,
            requested: 101,
        }
    );
    assert_eq!(w.account(USER).next_deadline(), Some(T0.plus_ms(DAY)));
    let swept = w.grant_timers(USER);
    assert_eq!(
        swept,
        vec![Outcome::GrantExpired {
            grant: g,
            amount: amt(300),
        }]
    );
    assert_eq!(state(&w, g), (200, 0, 300, 0));
    assert_eq!(w.bal(USER), bal(100, 0, 100));
    // The bank funded 600 and got 300 back.
    assert_eq!(w.bal(BANK), bal(-300, 0, -300));
    assert_eq!(w.account(USER).next_deadline(), None);
    assert!(w.grant_timers(USER).is_empty(), "swept once");
    assert!(w.audit().ok(), "{:?}", w.audit());
    assert_eq!(w.recover()[&USER], *w.account(USER));
    assert_eq!(w.recover()[&BANK], *w.account(BANK));
}

#[test]
fn what_a_hold_held_of_an_expired_grant_goes_back_when_the_hold_is_released() {
    let mut w = World::new();
    let g = issue(&mut w, 500, 0, 1_000);
    let hold = w.reserve_for(USER, 400, 10_000);
    w.advance(1_000);
    // At expiry only the free 100 goes back; the hold keeps its 400.
    assert_eq!(w.grant_timers(USER).len(), 1);
    assert_eq!(state(&w, g), (0, 400, 100, 0));
    // The hold posts 150: paid by the expired grant's share (it was held before expiry).
    let p = w.commit(hold, 150);
    assert_eq!(state(&w, g), (150, 0, 100, 250));
    // The 250 released is due back at once.
    assert_eq!(
        w.grant_timers(USER),
        vec![Outcome::GrantExpired {
            grant: g,
            amount: amt(250),
        }]
    );
    assert_eq!(w.bal(USER), bal(0, 0, 0));
    // A refund of the posting gives back to the expired grant, which sweeps it too.
    w.ok(USER, refund(p, 150));
    assert_eq!(w.bal(USER), bal(150, 0, 150));
    assert_eq!(general(&w), 0);
    assert_eq!(w.grant_timers(USER).len(), 1);
    // All of it went back: nothing refers to it any more, so it is dropped.
    assert!(w.account(USER).grant(g.seq).is_none());
    assert_eq!(w.bal(USER), bal(0, 0, 0));
    assert_eq!(w.bal(BANK), bal(0, 0, 0));
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn an_allowance_issues_a_grant_each_period_that_expires_at_its_end() {
    let mut w = World::new();
    // T0 is 2023-11-14T22:13:20Z: this month ends on 2023-12-01.
    let december = Timestamp(1_701_388_800_000);
    let allowance = Allowance {
        from: BANK,
        amount: amt(1_000),
        period: Period::Month,
        priority: 0,
        label: "plan".into(),
    };
    w.ok(
        USER,
        Command::SetAllowance {
            allowance: Some(allowance.clone()),
        },
    );
    // Due at once: the current month's grant, to the end of the month.
    assert_eq!(w.account(USER).next_deadline(), Some(T0));
    let issued = w.grant_timers(USER);
    let first = match issued.as_slice() {
        [Outcome::GrantIssued {
            grant,
            expires_at: Some(end),
        }] if *end == december => *grant,
        other => panic!("{other:?}"),
    };
    assert!(w.grant_timers(USER).is_empty(), "once per period");
    assert_eq!(w.account(USER).next_deadline(), Some(december));
    w.charge(USER, 400);
    assert_eq!(state(&w, first), (400, 0, 0, 600));
    // At the month's end: the old grant's 600 goes back, December's grant comes.
    w.now = december;
    let turned = w.grant_timers(USER);
    assert_eq!(turned.len(), 2, "{turned:?}");
    assert_eq!(
        turned[0],
        Outcome::GrantExpired {
            grant: first,
            amount: amt(600),
        }
    );
    assert!(
        matches!(turned[1], Outcome::GrantIssued { expires_at: Some(e), .. }
        if e == Timestamp(1_704_067_200_000))
    );
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    // A new amount for the same period starts next period: nothing is issued now.
    w.ok(
        USER,
        Command::SetAllowance {
            allowance: Some(Allowance {
                amount: amt(2_000),
                ..allowance
            }),
        },
    );
    assert!(w.grant_timers(USER).is_empty());
    // Removed and set again in the same month: December's grant is not issued twice.
    w.ok(USER, Command::SetAllowance { allowance: None });
    w.ok(
        USER,
        Command::SetAllowance {
            allowance: Some(Allowance {
                from: BANK,
                amount: amt(1_000),
                period: Period::Month,
                priority: 0,
                label: "plan".into(),
            }),
        },
    );
    assert!(w.grant_timers(USER).is_empty(), "issued once per period");
    assert_eq!(w.bal(USER), bal(1_000, 0, 1_000));
    // Removed: no more grants; the one issued stands until its end.
    w.ok(USER, Command::SetAllowance { allowance: None });
    w.now = Timestamp(1_704_067_200_000);
    let last = w.grant_timers(USER);
    assert!(
        matches!(last.as_slice(), [Outcome::GrantExpired { .. }]),
        "{last:?}"
    );
    assert!(w.account(USER).allowance().is_none());
    assert_eq!(w.bal(USER), bal(-400 + 400, 0, 0));
    assert!(w.audit().ok(), "{:?}", w.audit());
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

#[test]
fn bad_grants_and_allowances_are_refused_changing_nothing() {
    let mut w = World::new();
    let e = w.reject(APP, grant(10, 0, 0, ""));
    assert!(matches!(e, Error::WrongAccountKind { .. }), "{e:?}");
    let e = w.reject(
        USER,
        Command::Grant {
            from: USER2,
            amount: amt(10),
            priority: 0,
            ttl_ms: 0,
            label: String::new(),
        },
    );
    assert!(matches!(e, Error::WrongAccountKind { .. }), "{e:?}");
    let e = w.reject(USER, grant(10, 0, 0, &"x".repeat(65)));
    assert!(
        matches!(e, Error::FieldTooLong { field: "label", .. }),
        "{e:?}"
    );
    let e = w.reject(USER, Command::SetAllowance { allowance: None });
    assert!(matches!(e, Error::InvalidGrant { .. }), "{e:?}");
    let short = Allowance {
        from: BANK,
        amount: amt(10),
        period: Period::Every {
            anchor_ms: 0,
            length_ms: 1_000,
        },
        priority: 0,
        label: String::new(),
    };
    let e = w.reject(
        USER,
        Command::SetAllowance {
            allowance: Some(short),
        },
    );
    assert!(matches!(e, Error::InvalidGrant { .. }), "{e:?}");
    for _ in 0..GRANTS_MAX {
        w.ok(USER, grant(1, 0, DAY, ""));
    }
    let e = w.reject(USER, grant(1, 0, DAY, ""));
    assert_eq!(
        e,
        Error::TooManyGrants {
            account: USER,
            limit: GRANTS_MAX,
        }
    );
    // Once they expire (and are swept, and nothing refers to them) there is room again.
    w.advance(DAY);
    assert_eq!(w.grant_timers(USER).len(), GRANTS_MAX);
    w.ok(USER, grant(1, 0, DAY, ""));
    assert_eq!(w.account(USER).grants().count(), 1, "dead grants pruned");
}

#[test]
fn a_retry_of_a_grant_returns_the_first_outcome_and_issues_nothing_more() {
    let mut w = World::new();
    let op = w.op();
    let first = w.exec_op(USER, op, grant(500, 0, DAY, "promo")).unwrap();
    w.advance(10);
    let again = w.exec_op(USER, op, grant(500, 0, DAY, "promo")).unwrap();
    assert_eq!(first, again);
    assert_eq!(w.bal(USER), bal(500, 0, 500));
    let e = w
        .exec_op(USER, op, grant(600, 0, DAY, "promo"))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdempotencyConflict {
                field: "amount",
                ..
            }
        ),
        "{e:?}"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        Grant(u64, u32, u64),
        Hold(u64),
        Commit(usize, u64),
        Void(usize),
        Extend(usize, u64),
        Charge(u64),
        Refund(usize, u64),
        Transfer(u64),
        Fund(u64),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            ((1u64..800), (0u32..3), (0u64..5)).prop_map(|(a, p, d)| Step::Grant(a, p, d)),
            (1u64..1_000).prop_map(Step::Hold),
            ((0usize..8), (0u64..1_200)).prop_map(|(i, a)| Step::Commit(i, a)),
            (0usize..8).prop_map(Step::Void),
            ((0usize..8), (1u64..500)).prop_map(|(i, a)| Step::Extend(i, a)),
            (1u64..800).prop_map(Step::Charge),
            ((0usize..8), (1u64..800)).prop_map(|(i, a)| Step::Refund(i, a)),
            (1u64..600).prop_map(Step::Transfer),
            (1u64..600).prop_map(Step::Fund),
            (1u64..3).prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// Grants, holds, commits, voids, extensions, charges, refunds, transfers, top-ups and
        /// time passing in any order: every request either applies or is refused changing
        /// nothing; the user is never overspent, its general part never goes below zero, every
        /// grant's parts add up to what it granted, no expired grant is drawn on, the books
        /// balance, and replay rebuilds every account.
        #[test]
        fn grants_never_overspend_keep_their_parts_and_replay_exactly(
            steps in proptest::collection::vec(step(), 1..50),
        ) {
            let mut w = World::new();
            w.fund(USER, 500);
            let mut holds = Vec::new();
            let mut postings = Vec::new();
            fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
                v.get(i % v.len().max(1)).copied()
            }
            for s in steps {
                let before = w.accounts.clone();
                let result = match s {
                    Step::Grant(a, p, d) => w.exec(USER, grant(a, p, d * DAY, "")).map(drop),
                    Step::Hold(a) => w
                        .exec(USER, reserve_with(APP, a, 10 * DAY, ENDPOINT, METADATA))
                        .map(|o| holds.push(hold_of(o))),
                    Step::Commit(i, a) => match pick(&holds, i) {
                        Some(h) => w.exec(USER, commit(h, a)).map(|o| postings.push(posting_of(o))),
                        None => continue,
                    },
                    Step::Void(i) => match pick(&holds, i) {
                        Some(h) => w.exec(USER, void(h)).map(drop),
                        None => continue,
                    },
                    Step::Extend(i, a) => match pick(&holds, i) {
                        Some(h) => w
                            .exec(USER, Command::Extend { hold: h, amount: amt(a), timeout_ms: 0 })
                            .map(drop),
                        None => continue,
                    },
                    Step::Charge(a) => w.exec(USER, charge(a)).map(|o| postings.push(posting_of(o))),
                    Step::Refund(i, a) => match pick(&postings, i) {
                        Some(p) => w.exec(USER, refund(p, a)).map(drop),
                        None => continue,
                    },
                    Step::Transfer(a) => w.exec(USER, transfer(USER2, a)).map(drop),
                    Step::Fund(a) => w.exec(USER, fund(BANK, a)).map(drop),
                    Step::Advance(d) => {
                        let before_free = w.account(USER).granted_free(w.now).0;
                        w.advance(d * DAY / 2);
                        w.expire_due(USER);
                        w.grant_timers(USER);
                        prop_assert!(w.account(USER).granted_free(w.now).0 <= before_free);
                        Ok(())
                    }
                };
                if result.is_err() {
                    prop_assert_eq!(&w.accounts, &before);
                }
                let user = w.account(USER);
                prop_assert!(w.audit().ok(), "{:?}", w.audit());
                prop_assert!(w.bal(USER).available >= 0);
                prop_assert!(user.general_available(w.now) >= 0, "general below zero");
                let mut held_by_holds = 0u128;
                for h in user.pending_holds() {
                    let shares: u128 = h.grants.iter().map(|(_, a)| a.wide()).sum();
                    prop_assert!(shares <= h.held().wide());
                    held_by_holds += shares;
                }
                let mut held = 0u128;
                for g in user.grants() {
                    let parts = g.used.wide() + g.held.wide() + g.expired.wide() + g.free().wide();
                    prop_assert_eq!(parts, g.amount.wide());
                    held += g.held.wide();
                }
                prop_assert_eq!(held, held_by_holds);
                for p in user.postings() {
                    let shares: u128 = p.grants.iter().map(|(_, a)| a.wide()).sum();
                    prop_assert!(shares <= p.refundable().wide());
                }
            }
            let recovered = w.recover();
            for (id, account) in &w.accounts {
                prop_assert_eq!(&recovered[id], account);
            }
        }
    }
}
