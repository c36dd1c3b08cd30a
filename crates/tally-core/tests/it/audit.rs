//! The audit: conservation after real histories, each violation from a hand-broken history, and a
//! property test of random command sequences.

use proptest::prelude::*;

use tally_core::{
    AccountId, Amount, Change, Decision, Error, HoldId, Leg, OpId, Outcome, PostingId, Record,
    Request, Violation,
};

use crate::world::*;

#[test]
fn conservation_holds_after_a_mixed_history() {
    let mut w = World::new();
    mixed_history(&mut w);

    let report = w.audit();

    assert!(report.ok(), "{report:?}");
    assert_eq!(report.accounts, 4);
    assert_eq!(report.debits_posted, report.credits_posted);
    assert_eq!(report.funded, report.revenue + report.user_balances);
    assert_eq!(
        (report.funded, report.revenue, report.user_balances),
        (13_050, 850, 12_200)
    );
    assert_eq!((report.debits_pending, report.holds_pending), (375, 2));
}

#[test]
fn an_empty_ledger_audits_clean() {
    let report = World::new().audit();
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.funded, report.debits_posted), (0, 0));
}

/// The record `command` would make on `account` in `w`, not applied.
fn decided(w: &mut World, account: AccountId, command: tally_core::Command) -> Record {
    let request = Request {
        origin: Default::default(),
        op: w.op(),
        command,
    };
    match w.decide(account, &request) {
        Ok(Decision::Apply { record, .. }) => record,
        other => panic!("{request:?}: {other:?}"),
    }
}

#[test]
fn a_record_applied_on_one_side_only_is_unbalanced() {
    let cases: &[(&str, bool, bool, u128, u128)] = &[
        // (case, apply on the user, apply the leg on the app, Σ debits, Σ credits)
        ("the user's side only", true, false, 1_300, 1_000),
        ("the app's leg only", false, true, 1_000, 1_300),
    ];
    for &(name, on_user, on_app, debits_posted, credits_posted) in cases {
        let mut w = World::new();
        w.fund(USER, 1_000);
        let record = decided(&mut w, USER, charge(300));
        let limits = w.limits.clone();
        if on_user {
            w.accounts
                .get_mut(&USER)
                .unwrap()
                .apply(&record, 99, &limits);
        }
        if on_app {
            w.accounts.get_mut(&APP).unwrap().apply_leg(&record, 99);
        }

        let report = w.audit();

        assert_eq!(
            report.violations,
            vec![Violation::Unbalanced {
                debits_posted,
                credits_posted
            }],
            "{name}"
        );
        assert_ne!(
            report.funded,
            report.revenue + report.user_balances,
            "{name}"
        );
    }
}

/// Journals a record that was never decided (applies it with its leg, as recovery would).
fn forced(w: &mut World, change: Change) {
    let record = Record {
        origin: Default::default(),
        account: USER,
        op: None,
        at: w.now,
        change,
    };
    w.append(record);
}

#[test]
fn a_record_that_overspends_is_caught_as_overspent() {
    let mut w = World::new();
    w.fund(USER, 100);

    forced(
        &mut w,
        Change::Charged {
            usage: Default::default(),
            app: APP,
            amount: amt(150),
            endpoint: String::new(),
            metadata: String::new(),
            posting: 1,
            token: None,
        },
    );

    assert_eq!(
        w.audit().violations,
        vec![Violation::Overspent {
            account: USER,
            available: -50
        }]
    );
}

#[test]
fn a_commit_above_its_hold_is_caught() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    // A second hold, so that the pending total covers the 150 released (a record that
    // released more than is pending would stop the account when applied).
    w.reserve(USER, 100);

    forced(
        &mut w,
        Change::Committed {
            endpoint: Default::default(),
            usage: Default::default(),
            hold: hold.seq,
            app: APP,
            amount_posted: amt(150),
            amount_released: Amount::ZERO,
            posting: hold.seq + 1,
            metered: false,
            estimated: false,
            period: None,
        },
    );

    let violations = w.audit().violations;
    assert!(
        violations.contains(&Violation::CommitAboveHold { hold }),
        "{violations:?}"
    );
    assert!(
        violations.contains(&Violation::PendingMismatch {
            account: USER,
            debits_pending: 50,
            holds_pending: 100,
        }),
        "{violations:?}"
    );
}

#[test]
fn a_refund_above_its_posting_is_caught() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let posting = w.charge(USER, 100);

    forced(
        &mut w,
        Change::Refunded {
            posting: posting.seq,
            app: APP,
            amount: amt(150),
            endpoint: String::new(),
        },
    );

    assert_eq!(
        w.audit().violations,
        vec![Violation::RefundAbovePosting { posting }]
    );
}

#[test]
#[should_panic(expected = "takes debits_pending out of range")]
fn a_record_releasing_more_than_is_pending_stops_the_account_instead_of_clamping() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 100);
    forced(
        &mut w,
        Change::Voided {
            hold: hold.seq,
            amount_released: amt(150),
        },
    );
}

#[test]
fn a_hold_recorded_twice_is_a_pending_mismatch() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let record = decided(&mut w, USER, reserve(100));

    w.append(record.clone());
    w.append(record);

    assert_eq!(
        w.audit().violations,
        vec![Violation::PendingMismatch {
            account: USER,
            debits_pending: 200,
            holds_pending: 100
        }]
    );
}

/// One random step against USER, APP and BANK.
#[derive(Clone, Debug)]
enum Step {
    Fund(u64),
    Reserve {
        amount: u64,
        timeout_ms: u64,
    },
    Commit {
        hold: usize,
        amount: u64,
    },
    Void {
        hold: usize,
    },
    Charge(u64),
    Refund {
        posting: usize,
        amount: u64,
    },
    /// USER pays APP directly.
    Spend(u64),
    /// APP pays USER back.
    Payout(u64),
    /// Time passes and USER's due holds expire.
    Advance(u64),
    /// An earlier request is sent again with its operation id.
    Retry(usize),
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0_u64), 1..=300_u64, 1..=3_000_u64]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        amount().prop_map(Step::Fund),
        (amount(), 0..=20_000_u64)
            .prop_map(|(amount, timeout_ms)| Step::Reserve { amount, timeout_ms }),
        (any::<usize>(), amount()).prop_map(|(hold, amount)| Step::Commit { hold, amount }),
        any::<usize>().prop_map(|hold| Step::Void { hold }),
        amount().prop_map(Step::Charge),
        (any::<usize>(), amount()).prop_map(|(posting, amount)| Step::Refund { posting, amount }),
        amount().prop_map(Step::Spend),
        amount().prop_map(Step::Payout),
        (0..=10_000_u64).prop_map(Step::Advance),
        any::<usize>().prop_map(Step::Retry),
    ]
}

fn pick<T: Copy>(items: &[T], index: usize, none: T) -> T {
    if items.is_empty() {
        none
    } else {
        items[index % items.len()]
    }
}

/// A request sent, and what it first produced (outcome and seq) if it was applied.
type Sent = (AccountId, Request, Option<(Outcome, u64)>);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_histories_conserve_money_and_never_overspend(
        steps in prop::collection::vec(step(), 1..64)
    ) {
        let mut w = World::new();
        let mut holds: Vec<HoldId> = Vec::new();
        let mut postings: Vec<PostingId> = Vec::new();
        let mut sent: Vec<Sent> = Vec::new();
        let no_hold = HoldId { account: USER, seq: 999_999 };
        let no_posting = PostingId { account: USER, seq: 999_999 };
        for step in steps {
            let before = w.accounts.clone();
            let (account, command) = match step {
                Step::Advance(ms) => {
                    w.advance(ms);
                    w.expire_due(USER);
                    let report = w.audit();
                    prop_assert!(report.ok(), "{:?}", report);
                    continue;
                }
                Step::Retry(i) => {
                    if sent.is_empty() {
                        continue;
                    }
                    let (account, request, first) = sent[i % sent.len()].clone();
                    let result = w.submit(account, request.clone());
                    if let Some((outcome, seq)) = first {
                        prop_assert_eq!(&result, &Ok(Decision::Replay { outcome, seq }));
                    }
                    if !matches!(result, Ok(Decision::Apply { .. })) {
                        prop_assert_eq!(&w.accounts, &before, "{:?} changed state", request);
                    }
                    let report = w.audit();
                    prop_assert!(report.ok(), "{:?}", report);
                    continue;
                }
                Step::Fund(a) => (USER, fund(BANK, a)),
                Step::Reserve { amount, timeout_ms } => {
                    (USER, reserve_with(APP, amount, timeout_ms, ENDPOINT, ""))
                }
                Step::Commit { hold, amount } => (USER, commit(pick(&holds, hold, no_hold), amount)),
                Step::Void { hold } => (USER, void(pick(&holds, hold, no_hold))),
                Step::Charge(a) => (USER, charge(a)),
                Step::Refund { posting, amount } => {
                    (USER, refund(pick(&postings, posting, no_posting), amount))
                }
                Step::Spend(a) => (USER, transfer(APP, a)),
                Step::Payout(a) => (APP, transfer(USER, a)),
            };
            let predicted = w.account(account).leg_counterparty(&command);
            let request = Request { origin: Default::default(), op: OpId(sent.len() as u128 + 1), command };
            let result = w.submit(account, request.clone());
            let mut first = None;
            match &result {
                Ok(Decision::Apply { outcome, record }) => {
                    let leg = record.leg().map(|(Leg::Credit(id, _) | Leg::Debit(id, _))| id);
                    prop_assert_eq!(predicted, leg, "the leg predicted before deciding");
                    first = Some((*outcome, w.last_seq()));
                    match *outcome {
                        Outcome::Reserved { hold, .. } => holds.push(hold),
                        Outcome::Committed { posting, .. } | Outcome::Charged { posting } => {
                            postings.push(posting);
                        }
                        _ => {}
                    }
                }
                Ok(Decision::Replay { .. }) => prop_assert!(false, "a fresh id replayed"),
                Err(_) => prop_assert_eq!(&w.accounts, &before, "{:?} changed state", request),
            }
            sent.push((account, request, first));

            let report = w.audit();
            prop_assert!(report.ok(), "{:?}", report);
            prop_assert_eq!(report.funded, report.revenue + report.user_balances);
            prop_assert!(w.bal(USER).available >= 0, "{:?}", w.bal(USER));
        }
        prop_assert_eq!(w.recover(), w.accounts);
    }
}

#[test]
fn errors_name_what_they_are_about() {
    // The messages callers log: the account, the amounts and the limit.
    let error = Error::InsufficientFunds {
        account: USER,
        available: 400,
        requested: 500,
    };
    assert_eq!(
        error.to_string(),
        "insufficient funds in account:1: 500 requested, 400 available"
    );
    let error = Error::IdempotencyConflict {
        op: OpId(255),
        field: "amount",
    };
    assert_eq!(
        error.to_string(),
        "op:000000000000000000000000000000ff was used for a different request: amount differs"
    );
}
