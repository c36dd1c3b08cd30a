//! Replaying the journal on fresh accounts rebuilds exactly the live accounts, remembered
//! idempotency keys included, and every record names the request that made it.

use std::collections::HashMap;

use tally_core::{AccountId, Change, Decision, Limits, Request};

use crate::world::*;

fn limit_sets() -> Vec<(&'static str, Limits)> {
    vec![
        ("default limits", Limits::default()),
        (
            "tight limits",
            Limits {
                holds_resolved_retained: 1,
                postings_retained: 1,
                idempotency_keys_max: 2,
                idempotency_retention_ms: 2_000,
                ..Limits::default()
            },
        ),
        (
            "nothing retained",
            Limits {
                holds_resolved_retained: 0,
                postings_retained: 2,
                idempotency_keys_max: 0,
                idempotency_retention_ms: 0,
                ..Limits::default()
            },
        ),
    ]
}

#[test]
fn replaying_the_journal_rebuilds_the_live_accounts_exactly() {
    for (name, limits) in limit_sets() {
        let mut w = World::with_limits(limits);
        mixed_history(&mut w);

        let recovered = w.recover();

        assert_eq!(recovered, w.accounts, "{name}");
    }
}

#[test]
fn the_mixed_history_ends_where_the_arithmetic_says() {
    let mut w = World::new();
    mixed_history(&mut w);
    // USER: +10,000 −1,000 −300 +100 −1,500 +400, 250 held.
    assert_eq!(w.bal(USER), bal(7_700, 250, 7_450));
    // USER2: +3,000 −700 +200 +500 +1,500, 125 held.
    assert_eq!(w.bal(USER2), bal(4_500, 125, 4_375));
    // APP: +50 +1,000 +300 −100 +700 −200 −500 −400.
    assert_eq!(w.bal(APP), bal(850, 0, 850));
    assert_eq!(w.bal(BANK), bal(-13_050, 0, -13_050));
}

#[test]
fn a_retry_after_recovery_is_still_recognised() {
    let mut w = World::new();
    mixed_history(&mut w);
    let recovered = w.recover();
    let records: HashMap<u64, _> = w.journal.iter().cloned().collect();
    assert!(!w.submitted.is_empty());

    for (seq, command) in &w.submitted {
        let record = &records[seq];
        let request = Request {
            origin: Default::default(),
            op: record.op.unwrap(),
            command: command.clone(),
        };
        let ctx = w.ctx(command);

        let decision = recovered[&record.account].decide(&request, &ctx);

        let replay = Decision::Replay {
            outcome: record.outcome(),
            seq: *seq,
        };
        assert_eq!(decision, Ok(replay.clone()), "{command:?}");
        assert_eq!(w.decide(record.account, &request), Ok(replay), "live");
    }
}

#[test]
fn every_record_reconstructs_the_command_that_made_it() {
    let mut w = World::new();
    mixed_history(&mut w);
    let records: HashMap<u64, _> = w.journal.iter().cloned().collect();

    for (seq, command) in &w.submitted {
        assert_eq!(records[seq].command().as_ref(), Some(command), "seq {seq}");
    }
    let made_by_requests = w.journal.iter().filter(|(_, r)| r.op.is_some()).count();
    assert_eq!(made_by_requests, w.submitted.len());
    for (_, record) in w.journal.iter().filter(|(_, r)| r.op.is_none()) {
        assert!(
            matches!(
                record.change,
                Change::Opened { .. } | Change::Expired { .. }
            ),
            "{record:?}"
        );
        assert_eq!(record.command(), None, "{record:?}");
    }
}

#[test]
fn every_account_knows_the_last_record_that_touched_it_legs_included() {
    let mut w = World::new();
    mixed_history(&mut w);
    let mut last: HashMap<AccountId, u64> = HashMap::new();
    for (seq, record) in &w.journal {
        last.insert(record.account, *seq);
        if let Some(tally_core::Leg::Credit(other, _) | tally_core::Leg::Debit(other, _)) =
            record.leg()
        {
            last.insert(other, *seq);
        }
    }

    for (id, account) in &w.accounts {
        assert_eq!(account.last_seq(), last[id], "{id}");
    }
}
