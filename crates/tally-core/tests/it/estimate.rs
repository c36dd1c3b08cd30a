//! Estimate, then correct: a call that ends without reported usage commits its hold's estimate,
//! marked estimated; one later correction, up or down, adjusts the posting exactly.

use tally_core::{Command, Error, Outcome, PostingId, Usage};

use crate::world::*;

fn estimate(hold: tally_core::HoldId) -> Command {
    Command::CommitEstimate { hold }
}

fn correct(posting: PostingId, amount: Option<u64>, usage: Usage) -> Command {
    Command::Correct {
        posting,
        amount: amount.map(amt),
        usage,
    }
}

fn tokens(output_tokens: u64) -> Usage {
    Usage {
        output_tokens,
        ..Usage::default()
    }
}

fn posted(outcome: Outcome) -> PostingId {
    match outcome {
        Outcome::Committed { posting, .. } => posting,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_estimate_posts_all_the_hold_holds_and_a_correction_down_returns_the_difference_once() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let hold = w.reserve(USER, 400);
    let done = w.ok(USER, estimate(hold));
    assert!(matches!(
        done,
        Outcome::Committed { amount_posted, amount_released, .. }
            if amount_posted == amt(400) && amount_released == amt(0)
    ));
    let posting = posted(done);
    let p = w.account(USER).posting(posting.seq).unwrap();
    let e = p.estimate.as_ref().expect("marked estimated");
    assert_eq!((e.estimated, e.corrected), (amt(400), false));
    assert_eq!(w.bal(USER), bal(600, 0, 600));
    assert_eq!(w.bal(APP), bal(400, 0, 400));

    let corrected = w.ok(USER, correct(posting, Some(250), tokens(50)));
    assert_eq!(
        corrected,
        Outcome::Corrected {
            posting,
            estimated: amt(400),
            amount: amt(250),
        }
    );
    assert_eq!(w.bal(USER), bal(750, 0, 750), "150 back to the user");
    assert_eq!(w.bal(APP), bal(250, 0, 250), "and from the app");
    let p = w.account(USER).posting(posting.seq).unwrap();
    assert_eq!(p.amount, amt(250));
    // Once only; a retry of the same request is its first answer.
    let e = w.reject(USER, correct(posting, Some(300), Usage::default()));
    assert_eq!(e, Error::AlreadyCorrected { posting });
    // What is refundable is the corrected amount.
    let e = w.reject(
        USER,
        Command::Refund {
            posting,
            amount: amt(251),
        },
    );
    assert!(
        matches!(
            e,
            Error::RefundExceedsPosting {
                refundable: 250,
                ..
            }
        ),
        "{e:?}"
    );
    w.ok(
        USER,
        Command::Refund {
            posting,
            amount: amt(250),
        },
    );
    assert!(w.audit().ok(), "{:?}", w.audit());
    // Replay rebuilds the same accounts.
    let recovered = w.recover();
    assert_eq!(recovered[&USER], *w.account(USER));
    assert_eq!(recovered[&APP], *w.account(APP));
}

#[test]
fn a_correction_up_needs_the_funds_and_changes_nothing_until_they_are_there() {
    let mut w = World::new();
    w.fund(USER, 500);
    let hold = w.reserve(USER, 400);
    let posting = posted(w.ok(USER, estimate(hold)));
    let before = (w.account(USER).clone(), w.account(APP).clone());
    // 100 left: 300 more is refused, nothing changes, the estimate may still be corrected.
    let e = w.reject(USER, correct(posting, Some(700), tokens(10)));
    assert!(
        matches!(e, Error::InsufficientFunds { requested: 300, .. }),
        "{e:?}"
    );
    assert_eq!((w.account(USER).clone(), w.account(APP).clone()), before);
    w.fund(USER, 200);
    w.ok(USER, correct(posting, Some(700), tokens(10)));
    assert_eq!(w.bal(USER), bal(0, 0, 0));
    assert_eq!(w.bal(APP), bal(700, 0, 700));
    assert!(w.audit().ok(), "{:?}", w.audit());
}

#[test]
fn a_metered_estimate_is_corrected_by_usage_at_the_pinned_price_with_its_settled_parts() {
    let mut w = World::new();
    w.fund(USER, 10_000);
    // 3 µ¢ per output token, up to 1,000 tokens: 3,000 held.
    let price = tally_core::PinnedPrice {
        version: 1,
        price: tally_core::Price::PerToken {
            input: tally_core::Rate::new(0, 1).unwrap(),
            output: tally_core::Rate::new(3, 1).unwrap(),
        },
    };
    let hold = hold_of(w.ok(
        USER,
        Command::ReserveMetered {
            app: APP,
            endpoint: ENDPOINT.to_owned(),
            max_usage: tokens(1_000),
            timeout_ms: TIMEOUT_MS,
            metadata: String::new(),
            token: None,
            price: Box::new(price),
        },
    ));
    // 100 tokens reported as a part (300 posted), then the stream dies unreported.
    w.ok(
        USER,
        Command::Progress {
            hold,
            usage: tokens(100),
        },
    );
    let posting = posted(w.ok(USER, estimate(hold)));
    assert_eq!(
        w.account(USER).posting(posting.seq).unwrap().amount,
        amt(2_700)
    );
    // The provider says 400 more tokens came after the part: 500 in all cost 1,500, of which
    // 300 was posted by the part, so the estimate is corrected to 1,200.
    let done = w.ok(USER, correct(posting, None, tokens(400)));
    assert!(matches!(done, Outcome::Corrected { amount, .. } if amount == amt(1_200)));
    assert_eq!(w.bal(USER), bal(10_000 - 1_500, 0, 10_000 - 1_500));
    assert!(w.audit().ok(), "{:?}", w.audit());
    // Priced from usage only for a metered hold.
    let plain = w.reserve(USER, 10);
    let plain = posted(w.ok(USER, estimate(plain)));
    let e = w.reject(USER, correct(plain, None, tokens(1)));
    assert!(matches!(e, Error::InvalidCorrection { .. }), "{e:?}");
}

#[test]
fn only_an_unrefunded_estimate_is_corrected() {
    let mut w = World::new();
    w.fund(USER, 1_000);
    let charged = w.charge(USER, 100);
    let e = w.reject(USER, correct(charged, Some(50), Usage::default()));
    assert!(
        matches!(&e, Error::InvalidCorrection { reason, .. } if reason.contains("not an estimate")),
        "{e:?}"
    );
    let hold = w.reserve(USER, 100);
    let posting = posted(w.ok(USER, estimate(hold)));
    w.ok(
        USER,
        Command::Refund {
            posting,
            amount: amt(10),
        },
    );
    let e = w.reject(USER, correct(posting, Some(50), Usage::default()));
    assert!(
        matches!(&e, Error::InvalidCorrection { reason, .. } if reason.contains("refunded")),
        "{e:?}"
    );
}

#[test]
fn a_correction_draws_on_the_holds_spend_token_up_and_gives_back_down() {
    let mut w = World::new();
    w.fund(USER, 10_000);
    let token = match w.ok(
        USER,
        Command::IssueToken {
            app: APP,
            cap: amt(1_000),
            ttl_ms: 3_600_000,
            endpoint: String::new(),
        },
    ) {
        Outcome::TokenIssued { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let hold = hold_of(w.ok(
        USER,
        Command::Reserve {
            app: APP,
            amount: amt(800),
            timeout_ms: TIMEOUT_MS,
            endpoint: ENDPOINT.into(),
            metadata: String::new(),
            token: Some(token.seq),
        },
    ));
    let posting = posted(w.ok(USER, estimate(hold)));
    // 800 used of 1,000: 300 more is past the token's cap, refused, nothing changes.
    let before = w.account(USER).clone();
    let e = w.reject(USER, correct(posting, Some(1_100), Usage::default()));
    assert!(matches!(e, Error::TokenCapExceeded { .. }), "{e:?}");
    assert_eq!(*w.account(USER), before);
    // Down by 500: the token has 700 of room again.
    w.ok(USER, correct(posting, Some(300), Usage::default()));
    let used = w.account(USER).token(token.seq).map(|t| t.used);
    assert_eq!(used, Some(amt(300)));
    assert_eq!(w.recover()[&USER], *w.account(USER));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        Hold(u64),
        Estimate(usize),
        Correct(usize, u64),
        Refund(usize, u64),
        Fund(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..2_000).prop_map(Step::Hold),
            (0usize..8).prop_map(Step::Estimate),
            ((0usize..8), (0u64..4_000)).prop_map(|(i, a)| Step::Correct(i, a)),
            ((0usize..8), (1u64..2_000)).prop_map(|(i, a)| Step::Refund(i, a)),
            (1u64..3_000).prop_map(Step::Fund),
        ]
    }

    proptest! {
        /// Holds, estimates, corrections up and down, refunds and top-ups in any order: every
        /// request either applies or is refused changing nothing; the user is never overspent,
        /// the books balance, a posting is corrected at most once and never refunds more than
        /// it now posts, and replay rebuilds both accounts.
        #[test]
        fn estimates_and_corrections_never_overspend_and_replay_exactly(
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let mut w = World::new();
            w.fund(USER, 3_000);
            let mut holds = Vec::new();
            let mut postings = Vec::new();
            for s in steps {
                let before = (w.account(USER).clone(), w.account(APP).clone());
                let result = match s {
                    Step::Hold(a) => w.exec(USER, reserve(a)).map(|o| holds.push(hold_of(o))),
                    Step::Estimate(i) => match holds.get(i % holds.len().max(1)) {
                        Some(h) => w.exec(USER, estimate(*h)).map(|o| postings.push(posted(o))),
                        None => continue,
                    },
                    Step::Correct(i, a) => match postings.get(i % postings.len().max(1)) {
                        Some(p) => w.exec(USER, correct(*p, Some(a), Usage::default())).map(drop),
                        None => continue,
                    },
                    Step::Refund(i, a) => match postings.get(i % postings.len().max(1)) {
                        Some(p) => w.exec(USER, Command::Refund { posting: *p, amount: amt(a) }).map(drop),
                        None => continue,
                    },
                    Step::Fund(a) => w.exec(USER, fund(BANK, a)).map(drop),
                };
                if result.is_err() {
                    prop_assert_eq!(&(w.account(USER).clone(), w.account(APP).clone()), &before);
                }
                prop_assert!(w.audit().ok(), "{:?}", w.audit());
                prop_assert!(w.bal(USER).available >= 0);
            }
            for p in w.account(USER).postings() {
                prop_assert!(p.amount_refunded <= p.amount);
            }
            let recovered = w.recover();
            prop_assert_eq!(&recovered[&USER], w.account(USER));
            prop_assert_eq!(&recovered[&APP], w.account(APP));
        }
    }
}
