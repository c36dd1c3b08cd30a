//! An account's policy is ledger state: each setting is a record the account decides, with a
//! version, replayed exactly.

use tally_core::{
    AccountPolicy, Amount, Command, Error, Outcome, PolicySetting, RateLimit, Timestamp, TokenRate,
};

use crate::world::{World, APP, BANK, USER};

fn set(setting: PolicySetting) -> Command {
    Command::SetPolicy { setting }
}

#[test]
fn settings_count_versions_up_and_each_replaces_only_its_own_part() {
    let mut w = World::new();
    let cap = Amount::new(5_000).unwrap();
    assert_eq!(
        w.ok(USER, set(PolicySetting::SpendCapPerDay(Some(cap)))),
        Outcome::PolicySet { version: 1 }
    );
    w.advance(1_000);
    let rate = RateLimit {
        requests: Some(TokenRate {
            per_second: 10,
            burst: 20,
        }),
        cost: None,
    };
    assert_eq!(
        w.ok(USER, set(PolicySetting::RateLimit(rate))),
        Outcome::PolicySet { version: 2 }
    );
    let expected = AccountPolicy {
        spend_cap_per_day: Some(cap),
        rate_limit: rate,
        low_balance: None,
        version: 2,
        set_at: Timestamp(w.now.0),
    };
    assert_eq!(*w.account(USER).policy(), expected);
    // Removing the cap leaves the rate limit.
    w.ok(USER, set(PolicySetting::SpendCapPerDay(None)));
    assert_eq!(w.account(USER).policy().spend_cap_per_day, None);
    assert_eq!(w.account(USER).policy().rate_limit, rate);
    assert_eq!(w.account(USER).policy().version, 3);
    // An app has a policy of its own.
    w.ok(APP, set(PolicySetting::LowBalance(Some(cap))));
    assert_eq!(w.account(APP).policy().low_balance, Some(cap));
    assert_eq!(w.account(APP).policy().version, 1);
    // Replaying the journal rebuilds the same policies.
    let recovered = w.recover();
    assert_eq!(recovered[&USER].policy(), w.account(USER).policy());
    assert_eq!(recovered[&APP].policy(), w.account(APP).policy());
}

#[test]
fn a_policy_no_account_may_have_is_refused_and_changes_nothing() {
    let mut w = World::new();
    let before = w.account(USER).clone();
    let zero_burst = RateLimit {
        requests: None,
        cost: Some(TokenRate {
            per_second: 1,
            burst: 0,
        }),
    };
    let e = w.reject(USER, set(PolicySetting::RateLimit(zero_burst)));
    assert!(
        matches!(&e, Error::InvalidPolicy { reason } if reason.contains("cost rate's burst is 0")),
        "{e:?}"
    );
    // A funding account has no policy.
    let e = w.reject(BANK, set(PolicySetting::LowBalance(None)));
    assert!(matches!(e, Error::WrongAccountKind { .. }), "{e:?}");
    assert_eq!(*w.account(USER), before);
}

#[test]
fn a_retry_of_a_setting_is_answered_with_its_first_version() {
    let mut w = World::new();
    let op = w.op();
    let command = set(PolicySetting::LowBalance(Some(Amount::new(7).unwrap())));
    let first = w.exec_op(USER, op, command.clone()).unwrap();
    let again = w.exec_op(USER, op, command).unwrap();
    assert_eq!(first, again);
    assert_eq!(w.account(USER).policy().version, 1);
    // The same key with another setting is refused.
    let other = set(PolicySetting::LowBalance(Some(Amount::new(8).unwrap())));
    assert!(w.exec_op(USER, op, other).is_err());
    assert_eq!(
        w.account(USER).policy().low_balance,
        Some(Amount::new(7).unwrap())
    );
}
