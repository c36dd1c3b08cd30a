//! The same operation id with the same command returns the first outcome; with different content
//! it is a conflict naming the field; keys past the limits are forgotten.

use tally_core::{AccountId, Command, Decision, Error, Limits, OpId, Outcome, Request};

use crate::world::*;

/// Prepares a world for one command kind; who runs it and what.
type Setup = fn(&mut World) -> (AccountId, Command);

fn every_command_kind() -> Vec<(&'static str, Setup)> {
    vec![
        ("fund", |_| (USER, fund(BANK, 500))),
        ("reserve", |_| (USER, reserve(300))),
        ("commit", |w| {
            let hold = w.reserve(USER, 300);
            (USER, commit(hold, 100))
        }),
        ("void", |w| {
            let hold = w.reserve(USER, 300);
            (USER, void(hold))
        }),
        ("charge", |_| (USER, charge(100))),
        ("refund", |w| {
            let posting = w.charge(USER, 300);
            (USER, refund(posting, 100))
        }),
        ("transfer", |_| (USER, transfer(USER2, 100))),
        ("payout", |w| {
            w.charge(USER, 300);
            (APP, transfer(USER2, 100))
        }),
    ]
}

#[test]
fn a_retry_of_every_command_kind_replays_the_first_outcome_and_changes_nothing() {
    for (name, setup) in every_command_kind() {
        let mut w = World::new();
        w.fund(USER, 1_000);
        let (account, command) = setup(&mut w);
        let op = w.op();
        let first = w.submit(
            account,
            Request {
                origin: Default::default(),
                op,
                command: command.clone(),
            },
        );
        let Ok(Decision::Apply { outcome, .. }) = first else {
            panic!("{name}: {first:?}");
        };
        let seq = w.last_seq();
        w.fund(USER2, 1); // a later, unrelated record
        let accounts = w.accounts.clone();

        let retry = w.submit(
            account,
            Request {
                origin: Default::default(),
                op,
                command,
            },
        );

        assert_eq!(retry, Ok(Decision::Replay { outcome, seq }), "{name}");
        assert_eq!(w.accounts, accounts, "{name}: the retry changed an account");
    }
}

#[test]
fn a_retried_commit_replays_even_though_its_hold_is_now_resolved() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 300);
    let op = w.op();
    let first = w.exec_op(USER, op, commit(hold, 100)).unwrap();

    let retry = w.exec_op(USER, op, commit(hold, 100));
    let fresh = w.exec(USER, commit(hold, 100));

    assert_eq!(retry, Ok(first));
    assert_eq!(w.bal(USER), bal(900, 0, 900), "posted once");
    assert!(matches!(fresh, Err(Error::HoldAlreadyResolved { .. })));
}

/// A first command and a second one under the same id that differs in the named field.
type ConflictSetup = fn(&mut World) -> (Command, Command);

#[test]
fn the_same_id_with_different_content_is_a_conflict_naming_the_first_field_that_differs() {
    let cases: Vec<(&str, ConflictSetup)> = vec![
        ("from", |_| (fund(BANK, 500), fund(NOBODY, 500))),
        ("amount", |_| (fund(BANK, 500), fund(BANK, 501))),
        ("amount", |_| (reserve(300), reserve(301))),
        ("app", |_| {
            (
                reserve(300),
                reserve_with(USER2, 300, TIMEOUT_MS, ENDPOINT, METADATA),
            )
        }),
        ("timeout_ms", |_| {
            (
                reserve(300),
                reserve_with(APP, 300, TIMEOUT_MS + 1, ENDPOINT, METADATA),
            )
        }),
        ("endpoint", |_| {
            (
                reserve(300),
                reserve_with(APP, 300, TIMEOUT_MS, "/v1/embeddings", METADATA),
            )
        }),
        ("metadata", |_| {
            (
                reserve(300),
                reserve_with(APP, 300, TIMEOUT_MS, ENDPOINT, "{}"),
            )
        }),
        ("amount", |w| {
            let hold = w.reserve(USER, 300);
            (commit(hold, 100), commit(hold, 101))
        }),
        ("hold", |w| {
            let (a, b) = (w.reserve(USER, 300), w.reserve(USER, 300));
            (commit(a, 100), commit(b, 100))
        }),
        ("hold", |w| {
            let (a, b) = (w.reserve(USER, 300), w.reserve(USER, 300));
            (void(a), void(b))
        }),
        ("amount", |_| (charge(100), charge(101))),
        ("app", |_| {
            (charge(100), charge_with(USER2, 100, ENDPOINT, METADATA))
        }),
        ("endpoint", |_| {
            (charge(100), charge_with(APP, 100, "/v2", METADATA))
        }),
        ("metadata", |_| {
            (charge(100), charge_with(APP, 100, ENDPOINT, ""))
        }),
        ("amount", |w| {
            let posting = w.charge(USER, 300);
            (refund(posting, 100), refund(posting, 99))
        }),
        ("posting", |w| {
            let (a, b) = (w.charge(USER, 300), w.charge(USER, 300));
            (refund(a, 100), refund(b, 100))
        }),
        ("to", |_| (transfer(USER2, 100), transfer(APP, 100))),
        ("amount", |_| (transfer(USER2, 100), transfer(USER2, 1))),
        ("operation", |_| (fund(BANK, 100), transfer(BANK, 100))),
        ("operation", |_| (reserve(100), charge(100))),
        ("operation", |w| {
            let hold = w.reserve(USER, 300);
            (commit(hold, 300), void(hold))
        }),
        ("app", |_| {
            // Several fields differ: the first in the command's order is named.
            (reserve(300), reserve_with(USER2, 301, 1, "/other", "other"))
        }),
    ];
    for (field, setup) in cases {
        let mut w = World::new();
        w.fund(USER, 1_000);
        let (first, second) = setup(&mut w);
        let op = w.op();
        w.exec_op(USER, op, first.clone()).unwrap();
        let name = format!("{first:?} then {second:?}");
        let accounts = w.accounts.clone();

        let result = w.exec_op(USER, op, second);

        assert_eq!(
            result,
            Err(Error::IdempotencyConflict { op, field }),
            "{name}"
        );
        assert_eq!(
            w.accounts, accounts,
            "{name}: the conflict changed an account"
        );
    }
}

#[test]
fn operation_ids_are_scoped_to_the_executing_account() {
    let mut w = World::new();
    let op = OpId(42);
    w.exec_op(USER, op, fund(BANK, 100)).unwrap();

    let other = w.submit(
        USER2,
        Request {
            origin: Default::default(),
            op,
            command: fund(BANK, 200),
        },
    );

    assert!(matches!(other, Ok(Decision::Apply { .. })), "{other:?}");
    assert_eq!(w.bal(USER2), bal(200, 0, 200));
}

#[test]
fn keys_beyond_the_count_limit_are_forgotten_oldest_first() {
    let limits = Limits {
        idempotency_keys_max: 2,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    let ops = [OpId(1_001), OpId(1_002), OpId(1_003)];
    for op in ops {
        w.exec_op(USER, op, fund(BANK, 100)).unwrap();
    }
    assert_eq!(w.account(USER).remembered_keys(), 2);

    let oldest = w.submit(
        USER,
        Request {
            origin: Default::default(),
            op: ops[0],
            command: fund(BANK, 100),
        },
    );
    let newest = w.decide(
        USER,
        &Request {
            origin: Default::default(),
            op: ops[2],
            command: fund(BANK, 100),
        },
    );

    assert!(matches!(oldest, Ok(Decision::Apply { .. })), "{oldest:?}");
    assert_eq!(
        w.bal(USER),
        bal(400, 0, 400),
        "the forgotten retry ran anew"
    );
    assert!(matches!(newest, Ok(Decision::Replay { .. })), "{newest:?}");
}

#[test]
fn keys_older_than_the_retention_are_forgotten_once_a_later_record_is_applied() {
    let limits = Limits {
        idempotency_retention_ms: 1_000,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    let old = Request {
        origin: Default::default(),
        op: OpId(1),
        command: fund(BANK, 100),
    };
    let Ok(Decision::Apply { outcome, .. }) = w.submit(USER, old.clone()) else {
        panic!("the first funding failed");
    };
    let seq = w.last_seq();

    // Exactly the retention later, the key is still remembered.
    w.advance(1_000);
    w.fund(USER, 1);
    assert_eq!(w.decide(USER, &old), Ok(Decision::Replay { outcome, seq }));

    // One millisecond more, and the next record applied forgets it.
    w.advance(1);
    w.fund(USER, 1);
    assert_eq!(
        w.account(USER).remembered_keys(),
        2,
        "the two later fundings only"
    );
    let retry = w.submit(USER, old);

    assert!(matches!(retry, Ok(Decision::Apply { .. })), "{retry:?}");
    assert_eq!(
        w.bal(USER),
        bal(202, 0, 202),
        "the forgotten retry ran anew"
    );
}

#[test]
fn a_replay_names_the_first_outcome_not_a_fresh_one() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let op = w.op();
    let first = w.exec_op(USER, op, reserve(100)).unwrap();
    w.advance(10);

    let again = w.exec_op(USER, op, reserve(100)).unwrap();

    assert_eq!(again, first);
    assert!(matches!(
        again,
        Outcome::Reserved { expires_at, .. } if expires_at == T0.plus_ms(TIMEOUT_MS)
    ));
    assert_eq!(w.bal(USER), bal(1_000, 100, 900), "held once");
}

#[test]
fn an_account_read_without_its_keys_decides_nothing() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let op = w.op();
    w.exec_op(USER, op, reserve(100)).unwrap();
    let retry = Request {
        origin: Default::default(),
        op,
        command: reserve(100),
    };
    assert!(matches!(
        w.decide(USER, &retry),
        Ok(Decision::Replay { .. })
    ));

    // A store's recovery reads an account without its keys (they stay in its index): such an
    // account refuses to decide, even a request its keys would answer as a replay, which it
    // could otherwise run a second time.
    let mut keyless = tally_core::Account::new(USER, w.account(USER).spec);
    keyless
        .defer_remembered(tally_core::KeyWindow {
            first: 1,
            count: 2,
            untrimmed_from: 0,
        })
        .unwrap();
    assert!(keyless.keys_unloaded());
    assert_eq!(
        keyless.decide(&retry, &w.ctx(&retry.command)),
        Err(Error::KeysNotLoaded { account: USER })
    );
    assert_eq!(
        keyless.remembered_window().count,
        2,
        "the window counts the keys it did not load"
    );
    // Marked once only.
    assert!(keyless
        .defer_remembered(tally_core::KeyWindow::default())
        .is_err());
}
