//! Spend tokens: a user's authorization for one app (and endpoint) up to a cap, until an
//! expiry, checked in the same decision as each hold or charge made with it.

use tally_core::{Command, Error, TokenId};

use crate::world::*;

fn issue(app: tally_core::AccountId, cap: u64, ttl_ms: u64, endpoint: &str) -> Command {
    Command::IssueToken {
        app,
        cap: amt(cap),
        ttl_ms,
        endpoint: endpoint.to_owned(),
    }
}

fn token_of(outcome: tally_core::Outcome) -> TokenId {
    match outcome {
        tally_core::Outcome::TokenIssued { token, .. } => token,
        other => panic!("not a token: {other:?}"),
    }
}

fn reserve_t(amount: u64, token: TokenId) -> Command {
    Command::Reserve {
        app: APP,
        amount: amt(amount),
        timeout_ms: TIMEOUT_MS,
        endpoint: ENDPOINT.to_owned(),
        metadata: String::new(),
        token: Some(token.seq),
    }
}

fn charge_t(amount: u64, endpoint: &str, token: TokenId) -> Command {
    Command::Charge {
        app: APP,
        amount: amt(amount),
        endpoint: endpoint.to_owned(),
        metadata: String::new(),
        usage: Default::default(),
        token: Some(token.seq),
    }
}

fn world() -> (World, TokenId) {
    let mut w = World::new();
    w.fund(USER, 10_000);
    let token = token_of(w.ok(USER, issue(APP, 1_000, 3_600_000, "")));
    (w, token)
}

#[test]
fn holds_and_charges_with_a_token_never_pass_its_cap() {
    let (mut w, token) = world();
    let hold = hold_of(w.ok(USER, reserve_t(600, token)));
    w.ok(USER, charge_t(300, ENDPOINT, token));
    assert_eq!(
        w.reject(USER, charge_t(101, ENDPOINT, token)),
        Error::TokenCapExceeded {
            token,
            cap: 1_000,
            used: 900,
            requested: 101
        }
    );
    // Exactly the cap is allowed.
    w.ok(USER, charge_t(100, ENDPOINT, token));
    assert_eq!(
        w.account(USER).token(token.seq).unwrap().remaining().get(),
        0
    );
    // Committing less than was held gives the rest back to the token.
    w.commit(hold, 250);
    let t = w.account(USER).token(token.seq).unwrap();
    assert_eq!((t.used.get(), t.remaining().get()), (650, 350));
    // Without a token the same user may spend beyond it: the token limits the app, not the user.
    w.ok(USER, charge(2_000));
}

#[test]
fn a_voided_or_expired_hold_returns_its_amount_to_the_token() {
    let (mut w, token) = world();
    let hold = hold_of(w.ok(USER, reserve_t(700, token)));
    w.ok(USER, void(hold));
    assert_eq!(w.account(USER).token(token.seq).unwrap().used.get(), 0);
    let _expiring = w.ok(USER, reserve_t(1_000, token));
    w.advance(TIMEOUT_MS);
    assert_eq!(w.expire_due(USER).len(), 1);
    assert_eq!(w.account(USER).token(token.seq).unwrap().used.get(), 0);
}

#[test]
fn an_expired_revoked_other_app_or_other_endpoint_token_is_refused() {
    let mut w = World::new();
    w.fund(USER, 10_000);
    w.open(APP2, tally_core::AccountSpec::revenue());
    let scoped = token_of(w.ok(USER, issue(APP, 500, 60_000, "/tts")));
    assert_eq!(
        w.reject(USER, charge_t(1, "/other", scoped)),
        Error::TokenScope {
            token: scoped,
            field: "endpoint"
        }
    );
    let mut other_app = charge_t(1, "/tts", scoped);
    if let Command::Charge { app, .. } = &mut other_app {
        *app = APP2;
    }
    assert_eq!(
        w.reject(USER, other_app),
        Error::TokenScope {
            token: scoped,
            field: "app"
        }
    );
    w.ok(USER, charge_t(1, "/tts", scoped));
    w.advance(60_000);
    assert!(matches!(
        w.reject(USER, charge_t(1, "/tts", scoped)),
        Error::TokenExpired { .. }
    ));
    let revoked = token_of(w.ok(USER, issue(APP, 500, 60_000, "")));
    w.ok(USER, Command::RevokeToken { token: revoked.seq });
    assert_eq!(
        w.reject(USER, charge_t(1, "", revoked)),
        Error::TokenRevoked { token: revoked }
    );
    assert_eq!(
        w.reject(USER, Command::RevokeToken { token: revoked.seq }),
        Error::TokenRevoked { token: revoked }
    );
    let unknown = TokenId {
        account: USER,
        seq: 999,
    };
    assert_eq!(
        w.reject(USER, charge_t(1, "", unknown)),
        Error::UnknownToken { token: unknown }
    );
}

#[test]
fn issuing_is_bounded_and_checked() {
    let mut w = World::new();
    w.fund(USER, 10_000);
    assert_eq!(
        w.reject(USER, issue(APP, 0, 1_000, "")),
        Error::ZeroAmount { field: "cap" }
    );
    assert!(matches!(
        w.reject(USER, issue(APP, 1, 0, "")),
        Error::InvalidTokenTtl { .. }
    ));
    assert!(matches!(
        w.reject(USER, issue(BANK, 1, 1_000, "")),
        Error::WrongAccountKind { .. }
    ));
    assert!(matches!(
        w.reject(APP, issue(USER, 1, 1_000, "")),
        Error::WrongAccountKind { .. }
    ));
    let limits = tally_core::Limits::default();
    for _ in 0..limits.tokens_max {
        w.ok(USER, issue(APP, 1, 1_000, ""));
    }
    assert_eq!(
        w.reject(USER, issue(APP, 1, 1_000, "")),
        Error::TooManyTokens {
            account: USER,
            limit: limits.tokens_max
        }
    );
    // Once they expire, new ones may be issued, and the dead ones are dropped.
    w.advance(1_000);
    w.ok(USER, issue(APP, 1, 1_000, ""));
    assert_eq!(w.account(USER).tokens().count(), 1);
}

#[test]
fn replaying_the_journal_rebuilds_tokens_and_what_they_used() {
    let (mut w, token) = world();
    let hold = hold_of(w.ok(USER, reserve_t(400, token)));
    w.ok(USER, charge_t(100, ENDPOINT, token));
    w.commit(hold, 150);
    let recovered = w.recover();
    assert_eq!(recovered[&USER], *w.account(USER));
    assert_eq!(recovered[&USER].token(token.seq).unwrap().used.get(), 250);
}

/// A second revenue account, for the scope test.
const APP2: tally_core::AccountId = tally_core::AccountId(11);

#[test]
fn a_hold_made_with_a_token_may_not_outlive_it() {
    let mut w = World::new();
    w.fund(USER, 10_000);
    let token = token_of(w.ok(USER, issue(APP, 1_000, 60_000, "")));
    let mut long = reserve_t(10, token);
    if let Command::Reserve { timeout_ms, .. } = &mut long {
        *timeout_ms = 60_001;
    }
    assert_eq!(
        w.reject(USER, long),
        Error::InvalidTimeout {
            timeout_ms: 60_001,
            min_ms: tally_core::Limits::default().hold_timeout_ms_min,
            max_ms: 60_000
        }
    );
    let mut exact = reserve_t(10, token);
    if let Command::Reserve { timeout_ms, .. } = &mut exact {
        *timeout_ms = 60_000;
    }
    w.ok(USER, exact);
}
