//! Every rejection, with its exact error, and that a rejected request changes nothing (the helper's
//! `reject` compares every account and the journal before and after).

use tally_core::{
    AccountId, Amount, Command, Error, HoldId, HoldStatus, Limits, OpId, PostingId, Request,
    Timestamp,
};

use crate::world::*;

/// A world with a hold in every state and postings to refund:
/// USER funded 10,000 with `pending` (1,000, live), `overdue` (70, deadline passed, no expiry
/// record yet), `expired` (50, expired by record), `posted` (500, committed 200 as
/// `committed_posting`), `voided` (100); `charged_posting` (300, 100 refunded). USER2 has a hold
/// and a posting of its own.
struct Scene {
    w: World,
    pending: HoldId,
    overdue: HoldId,
    expired: HoldId,
    posted: HoldId,
    voided: HoldId,
    committed_posting: PostingId,
    charged_posting: PostingId,
    other_hold: HoldId,
    other_posting: PostingId,
}

fn scene() -> Scene {
    let mut w = World::new();
    w.fund(USER, 10_000);
    w.fund(USER2, 1_000);
    let expired = w.reserve_for(USER, 50, 1_000);
    let overdue = w.reserve_for(USER, 70, 5_000);
    w.advance(1_000);
    assert_eq!(w.expire_due(USER).len(), 1);
    let posted = w.reserve(USER, 500);
    let committed_posting = w.commit(posted, 200);
    let voided = w.reserve(USER, 100);
    w.ok(USER, void(voided));
    let charged_posting = w.charge(USER, 300);
    w.ok(USER, refund(charged_posting, 100));
    let other_hold = w.reserve(USER2, 10);
    let other_posting = w.charge(USER2, 20);
    w.advance(4_000);
    let pending = w.reserve(USER, 1_000);
    Scene {
        w,
        pending,
        overdue,
        expired,
        posted,
        voided,
        committed_posting,
        charged_posting,
        other_hold,
        other_posting,
    }
}

#[test]
fn the_scene_is_what_the_rejection_tables_assume() {
    let s = scene();
    assert_eq!(s.w.bal(USER), bal(9_600, 1_070, 8_530));
    assert_eq!(s.w.bal(APP), bal(420, 0, 420));
    let status = |h: HoldId| s.w.account(h.account).hold(h.seq).map(|h| h.status);
    assert_eq!(status(s.pending), Some(HoldStatus::Pending));
    assert_eq!(status(s.overdue), Some(HoldStatus::Pending));
    assert_eq!(status(s.expired), Some(HoldStatus::Expired));
    assert_eq!(status(s.posted), Some(HoldStatus::Posted));
    assert_eq!(status(s.voided), Some(HoldStatus::Voided));
    assert!(s.w.audit().ok(), "{:?}", s.w.audit());
}

#[test]
fn amount_above_the_per_operation_maximum_is_rejected_at_construction() {
    let max = i64::MAX as u64;
    let cases: &[u64] = &[u64::MAX, max + 1];
    for &value in cases {
        assert_eq!(
            Amount::new(value),
            Err(Error::AmountTooLarge { amount: value, max }),
            "{value}"
        );
        assert_eq!(Amount::try_from(value), Amount::new(value));
    }
    assert_eq!(Amount::new(max), Ok(Amount::MAX));
}

#[test]
fn a_zero_amount_is_rejected_for_every_amount_bearing_command() {
    let mut s = scene();
    let zero = |c: Command| -> Command {
        match c {
            Command::Fund { from, .. } => Command::Fund {
                from,
                amount: Amount::ZERO,
            },
            Command::Reserve {
                app,
                timeout_ms,
                endpoint,
                metadata,
                ..
            } => Command::Reserve {
                app,
                amount: Amount::ZERO,
                timeout_ms,
                endpoint,
                metadata,
                token: None,
            },
            Command::Commit { hold, .. } => Command::Commit {
                usage: Default::default(),
                hold,
                amount: Amount::ZERO,
            },
            Command::Charge {
                app,
                endpoint,
                metadata,
                ..
            } => Command::Charge {
                usage: Default::default(),
                app,
                amount: Amount::ZERO,
                endpoint,
                metadata,
                token: None,
            },
            Command::Refund { posting, .. } => Command::Refund {
                posting,
                amount: Amount::ZERO,
            },
            Command::Transfer { to, .. } => Command::Transfer {
                to,
                amount: Amount::ZERO,
            },
            Command::UpdateFunding { from, old, .. } => Command::UpdateFunding {
                from,
                old,
                new: old,
            },
            Command::IssueToken {
                app,
                ttl_ms,
                endpoint,
                ..
            } => Command::IssueToken {
                app,
                cap: Amount::ZERO,
                ttl_ms,
                endpoint,
            },
            Command::Extend { hold, .. } => Command::Extend {
                hold,
                amount: Amount::ZERO,
                timeout_ms: 0,
            },
            Command::Settle { hold, .. } => Command::Settle {
                hold,
                amount: Amount::ZERO,
                usage: Default::default(),
            },
            Command::Grant {
                from,
                priority,
                ttl_ms,
                label,
                ..
            } => Command::Grant {
                from,
                amount: Amount::ZERO,
                priority,
                ttl_ms,
                label,
            },
            Command::Void { .. }
            | Command::SetAllowance { .. }
            | Command::RevokeToken { .. }
            | Command::ReserveMetered { .. }
            | Command::Finish { .. }
            | Command::Progress { .. }
            | Command::SetPrice { .. }
            | Command::SetPolicy { .. }
            | Command::CommitEstimate { .. }
            | Command::Correct { .. } => {
                unreachable!("carries no amount")
            }
        }
    };
    let cases = [
        fund(BANK, 1),
        reserve(1),
        commit(s.pending, 1),
        Command::Extend {
            hold: s.pending,
            amount: amt(1),
            timeout_ms: 0,
        },
        Command::Settle {
            hold: s.pending,
            amount: amt(1),
            usage: Default::default(),
        },
        charge(1),
        refund(s.charged_posting, 1),
        transfer(USER2, 1),
        Command::Grant {
            from: BANK,
            amount: amt(1),
            priority: 0,
            ttl_ms: 0,
            label: String::new(),
        },
    ];
    for command in cases {
        let name = command.name();
        let error = s.w.reject(USER, zero(command));
        assert_eq!(error, Error::ZeroAmount { field: "amount" }, "{name}");
    }
}

/// One rejection: who executes what, and the exact error.
type Case = (&'static str, AccountId, Command, Error);

fn run(s: &mut Scene, cases: Vec<Case>) {
    for (name, account, command, expected) in cases {
        let error = s.w.reject(account, command);
        assert_eq!(error, expected, "{name}");
    }
}

#[test]
fn a_counterparty_that_does_not_exist_is_an_unknown_account() {
    let mut s = scene();
    let unknown = Error::UnknownAccount { account: NOBODY };
    run(
        &mut s,
        vec![
            ("fund", USER, fund(NOBODY, 1), unknown.clone()),
            (
                "reserve",
                USER,
                reserve_with(NOBODY, 1, TIMEOUT_MS, "", ""),
                unknown.clone(),
            ),
            (
                "charge",
                USER,
                charge_with(NOBODY, 1, "", ""),
                unknown.clone(),
            ),
            ("transfer", USER, transfer(NOBODY, 1), unknown),
        ],
    );
}

#[test]
fn an_account_of_the_wrong_kind_is_rejected_naming_it() {
    let mut s = scene();
    let wrong = |account, actual, expected| Error::WrongAccountKind {
        account,
        actual,
        expected,
    };
    run(
        &mut s,
        vec![
            (
                "fund from a user account",
                USER,
                fund(USER2, 1),
                wrong(USER2, "user", "a funding account"),
            ),
            (
                "fund from a revenue account",
                USER,
                fund(APP, 1),
                wrong(APP, "revenue", "a funding account"),
            ),
            (
                "fund a funding account",
                BANK,
                fund(BANK, 1),
                wrong(BANK, "funding", "a user or revenue account"),
            ),
            (
                "reserve with the funding account as the app",
                USER,
                reserve_with(BANK, 1, TIMEOUT_MS, "", ""),
                wrong(BANK, "funding", "a revenue or user account"),
            ),
            (
                "reserve on a revenue account",
                APP,
                reserve(1),
                wrong(APP, "revenue", "a user account"),
            ),
            (
                "reserve on the funding account",
                BANK,
                reserve(1),
                wrong(BANK, "funding", "a user account"),
            ),
            (
                "charge with the funding account as the app",
                USER,
                charge_with(BANK, 1, "", ""),
                wrong(BANK, "funding", "a revenue or user account"),
            ),
            (
                "charge on a revenue account",
                APP,
                charge(1),
                wrong(APP, "revenue", "a user account"),
            ),
        ],
    );
}

#[test]
fn a_hold_that_cannot_be_committed_or_voided_is_rejected_with_why() {
    let mut s = scene();
    let unknown_seq = HoldId {
        account: USER,
        seq: 999,
    };
    let foreign = HoldId {
        account: USER2,
        seq: s.pending.seq,
    };
    let (pending, posted, voided) = (s.pending, s.posted, s.voided);
    let (expired, overdue, other_hold) = (s.expired, s.overdue, s.other_hold);
    let expired_at = |h: HoldId| s.w.account(h.account).hold(h.seq).unwrap().expires_at;
    let (expired_at_expired, expired_at_overdue) = (expired_at(expired), expired_at(overdue));
    assert_eq!(expired_at_overdue, s.w.now, "overdue is due exactly now");
    let resolved = |hold, status| Error::HoldAlreadyResolved { hold, status };
    let expired_err = |hold, expired_at| Error::HoldExpired { hold, expired_at };
    run(
        &mut s,
        vec![
            (
                "commit of a hold never made",
                USER,
                commit(unknown_seq, 1),
                Error::UnknownHold { hold: unknown_seq },
            ),
            (
                "void of a hold never made",
                USER,
                void(unknown_seq),
                Error::UnknownHold { hold: unknown_seq },
            ),
            (
                "commit naming another account's hold",
                USER,
                commit(foreign, 1),
                Error::UnknownHold { hold: foreign },
            ),
            (
                "void naming another account's hold",
                USER,
                void(foreign),
                Error::UnknownHold { hold: foreign },
            ),
            (
                "commit of a user's hold by another user",
                USER2,
                commit(pending, 1),
                Error::UnknownHold { hold: pending },
            ),
            (
                "commit of a user's hold by its app",
                APP,
                commit(pending, 1),
                Error::UnknownHold { hold: pending },
            ),
            (
                "commit of another user's hold",
                USER,
                commit(other_hold, 1),
                Error::UnknownHold { hold: other_hold },
            ),
            (
                "commit above the amount held",
                USER,
                commit(pending, 1_001),
                Error::CommitExceedsHold {
                    hold: pending,
                    held: 1_000,
                    requested: 1_001,
                },
            ),
            (
                "second commit",
                USER,
                commit(posted, 1),
                resolved(posted, HoldStatus::Posted),
            ),
            (
                "commit after void",
                USER,
                commit(voided, 1),
                resolved(voided, HoldStatus::Voided),
            ),
            (
                "commit after expiry by record",
                USER,
                commit(expired, 1),
                expired_err(expired, expired_at_expired),
            ),
            (
                "commit after the deadline, before the expiry record",
                USER,
                commit(overdue, 1),
                expired_err(overdue, expired_at_overdue),
            ),
            (
                "void after commit",
                USER,
                void(posted),
                resolved(posted, HoldStatus::Posted),
            ),
            (
                "second void",
                USER,
                void(voided),
                resolved(voided, HoldStatus::Voided),
            ),
            (
                "void after expiry by record",
                USER,
                void(expired),
                expired_err(expired, expired_at_expired),
            ),
            (
                "void after the deadline, before the expiry record",
                USER,
                void(overdue),
                expired_err(overdue, expired_at_overdue),
            ),
        ],
    );
}

#[test]
fn a_posting_that_cannot_be_refunded_is_rejected_with_why() {
    let mut s = scene();
    let unknown = PostingId {
        account: USER,
        seq: 999,
    };
    let foreign = PostingId {
        account: USER2,
        seq: s.charged_posting.seq,
    };
    let hold_seq = PostingId {
        account: USER,
        seq: s.pending.seq,
    };
    let (charged, committed, other) = (s.charged_posting, s.committed_posting, s.other_posting);
    run(
        &mut s,
        vec![
            (
                "refund above what remains of a partly refunded charge",
                USER,
                refund(charged, 201),
                Error::RefundExceedsPosting {
                    posting: charged,
                    refundable: 200,
                    requested: 201,
                },
            ),
            (
                "refund above a commit's posting",
                USER,
                refund(committed, 201),
                Error::RefundExceedsPosting {
                    posting: committed,
                    refundable: 200,
                    requested: 201,
                },
            ),
            (
                "refund of a posting never made",
                USER,
                refund(unknown, 1),
                Error::UnknownPosting { posting: unknown },
            ),
            (
                "refund naming a hold's number",
                USER,
                refund(hold_seq, 1),
                Error::UnknownPosting { posting: hold_seq },
            ),
            (
                "refund naming another account's posting",
                USER,
                refund(foreign, 1),
                Error::UnknownPosting { posting: foreign },
            ),
            (
                "refund of another user's posting",
                USER,
                refund(other, 1),
                Error::UnknownPosting { posting: other },
            ),
            (
                "refund of a user's posting by its app",
                APP,
                refund(charged, 1),
                Error::UnknownPosting { posting: charged },
            ),
        ],
    );
}

#[test]
fn a_request_above_available_is_insufficient_funds_naming_what_is_available() {
    let mut s = scene();
    let short = |account, available, requested| Error::InsufficientFunds {
        account,
        available,
        requested,
    };
    run(
        &mut s,
        vec![
            ("reserve", USER, reserve(8_531), short(USER, 8_530, 8_531)),
            ("charge", USER, charge(8_531), short(USER, 8_530, 8_531)),
            (
                "transfer",
                USER,
                transfer(USER2, 8_531),
                short(USER, 8_530, 8_531),
            ),
            (
                "payout above revenue",
                APP,
                transfer(USER2, 421),
                short(APP, 420, 421),
            ),
        ],
    );
}

#[test]
fn a_second_reserve_is_refused_when_the_first_holds_the_funds() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    w.reserve(USER, 600);

    let error = w.reject(USER, reserve(500));

    assert_eq!(
        error,
        Error::InsufficientFunds {
            account: USER,
            available: 400,
            requested: 500
        }
    );
}

#[test]
fn a_transfer_to_oneself_is_rejected() {
    let mut s = scene();
    let error = s.w.reject(USER, transfer(USER, 1));
    assert_eq!(error, Error::SameAccount { account: USER });
}

#[test]
fn a_hold_timeout_outside_the_limits_is_rejected() {
    let mut s = scene();
    let limits = Limits::default();
    let (min_ms, max_ms) = (limits.hold_timeout_ms_min, limits.hold_timeout_ms_max);
    for timeout_ms in [0, max_ms + 1, u64::MAX] {
        let error = s.w.reject(USER, reserve_with(APP, 1, timeout_ms, "", ""));
        assert_eq!(
            error,
            Error::InvalidTimeout {
                timeout_ms,
                min_ms,
                max_ms
            }
        );
    }
    for timeout_ms in [min_ms, max_ms] {
        s.w.ok(USER, reserve_with(APP, 1, timeout_ms, "", ""));
    }
}

#[test]
fn an_endpoint_or_metadata_above_its_limit_is_rejected() {
    let mut s = scene();
    let limits = Limits::default();
    let (e, m) = (limits.endpoint_bytes_max, limits.metadata_bytes_max);
    let long = |n: usize| "é".repeat(n / 2) + &"x".repeat(n % 2);
    let too_long = |field, len, max| Error::FieldTooLong { field, len, max };
    run(
        &mut s,
        vec![
            (
                "reserve endpoint",
                USER,
                reserve_with(APP, 1, TIMEOUT_MS, &long(e + 1), ""),
                too_long("endpoint", e + 1, e),
            ),
            (
                "reserve metadata",
                USER,
                reserve_with(APP, 1, TIMEOUT_MS, "", &long(m + 1)),
                too_long("metadata", m + 1, m),
            ),
            (
                "charge endpoint",
                USER,
                charge_with(APP, 1, &long(e + 1), ""),
                too_long("endpoint", e + 1, e),
            ),
            (
                "charge metadata",
                USER,
                charge_with(APP, 1, "", &long(m + 1)),
                too_long("metadata", m + 1, m),
            ),
        ],
    );
    assert_eq!(
        long(e + 1).len(),
        e + 1,
        "lengths are bytes, not characters"
    );
    s.w.ok(USER, reserve_with(APP, 1, TIMEOUT_MS, &long(e), &long(m)));
    s.w.ok(USER, charge_with(APP, 1, &long(e), &long(m)));
}

#[test]
fn one_more_pending_hold_than_the_limit_is_rejected() {
    let limits = Limits {
        holds_pending_max: 2,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    let first = w.reserve(USER, 1);
    w.reserve(USER, 1);

    let error = w.reject(USER, reserve(1));

    assert_eq!(
        error,
        Error::TooManyHolds {
            account: USER,
            limit: 2
        }
    );
    w.ok(USER, void(first));
    w.reserve(USER, 1);
    w.charge(USER, 1);
}

#[test]
fn an_overdue_hold_still_counts_against_the_limit_until_it_is_expired() {
    let limits = Limits {
        holds_pending_max: 1,
        ..Limits::default()
    };
    let mut w = World::with_limits(limits);
    w.fund(USER, 1_000);
    w.reserve_for(USER, 1, 10);
    w.advance(10);

    assert_eq!(
        w.reject(USER, reserve(1)),
        Error::TooManyHolds {
            account: USER,
            limit: 1
        }
    );

    w.expire_due(USER);
    w.reserve(USER, 1);
}

#[test]
fn a_rejected_request_is_not_remembered_and_its_retry_runs_anew() {
    let mut w = World::new();
    let op = OpId(7);
    let request = Request {
        origin: Default::default(),
        op,
        command: reserve(500),
    };
    assert!(matches!(
        w.submit(USER, request.clone()),
        Err(Error::InsufficientFunds { .. })
    ));
    assert_eq!(w.account(USER).remembered_keys(), 0);
    w.fund(USER, 500);

    let retry = w.exec_op(USER, op, request.command);

    assert_eq!(
        retry.map(hold_of),
        Ok(HoldId {
            account: USER,
            seq: 1
        })
    );
}

#[test]
fn decide_changes_nothing_even_when_it_accepts() {
    let s = scene();
    let before = s.w.accounts.clone();
    let commands = [
        fund(BANK, 1),
        reserve(1),
        commit(s.pending, 1),
        void(s.pending),
        charge(1),
        refund(s.charged_posting, 1),
        transfer(USER2, 1),
    ];
    for command in commands {
        let request = Request {
            origin: Default::default(),
            op: OpId(1_000),
            command,
        };
        assert!(s.w.decide(USER, &request).is_ok(), "{request:?}");
    }
    assert_eq!(s.w.accounts, before);
    assert_eq!(s.w.now, Timestamp(T0.0 + 5_000));
}
