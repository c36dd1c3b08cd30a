//! Streaming settlement through the engine: a call metered chunk by chunk that stops exactly
//! when funds run out, concurrent settlements racing the final commit, and a restart with a
//! stream in flight.

use std::time::Duration;
use tally::{Error, LedgerError, ReserveRequest, Usage};

use crate::support::*;

const CHUNK: u64 = 150;

#[tokio::test]
async fn a_stream_settled_chunk_by_chunk_stops_exactly_when_funds_run_out() {
    let w = World::new(1_000).await;
    let t = &w.tally;
    // The call starts with an estimate of one chunk held.
    let hold = t
        .reserve(op(), ReserveRequest::new(ALICE, APP, CHUNK))
        .await
        .unwrap();
    let mut delivered = 0;
    let mut stopped = None;
    for chunk in 1..=10u64 {
        // Before each chunk after the first, hold its cost; a refusal stops the stream.
        if chunk > 1 {
            match t.extend(op(), hold, CHUNK, None).await {
                Ok(extended) => assert_eq!(extended.amount.get(), CHUNK * chunk),
                Err(e) => {
                    stopped = Some((chunk, e));
                    break;
                }
            }
        }
        let usage = Usage {
            output_tokens: 100,
            ..Usage::default()
        };
        let settled = t.settle(op(), hold, CHUNK, usage).await.unwrap();
        assert_eq!(settled.amount_held.get(), 0);
        delivered += 1;
        assert!(w.available(ALICE).await >= 0, "never overspent");
    }
    let (chunk, error) = stopped.expect("the funds cannot pay ten chunks");
    assert_eq!(chunk, 7, "six chunks of 150 fit in 1,000");
    assert!(
        matches!(
            error,
            Error::Ledger(LedgerError::InsufficientFunds {
                available: 100,
                requested: 150,
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(delivered, 6);
    // Everything delivered is settled: the final commit posts nothing more and frees the hold.
    let done = t.commit(op(), hold, 0).await.unwrap();
    assert_eq!(
        (done.amount_posted.get(), done.amount_released.get()),
        (0, 0)
    );
    let alice = t.balance(ALICE).await.unwrap();
    assert_eq!(
        (alice.posted, alice.debits_pending, alice.available),
        (100, 0, 100)
    );
    assert_eq!(t.balance(APP).await.unwrap().posted, 900);
    w.assert_books_balance().await;
}

#[tokio::test]
async fn settlements_racing_the_final_commit_post_each_part_once_and_never_past_the_hold() {
    for round in 0..20 {
        let w = World::new(10_000).await;
        let hold = w
            .tally
            .reserve(op(), ReserveRequest::new(ALICE, APP, 1_000))
            .await
            .unwrap();
        let settle = |amount| {
            let t = w.tally.clone();
            tokio::spawn(async move { t.settle(op(), hold, amount, Usage::default()).await })
        };
        let (a, b) = (settle(400), settle(400));
        let commit = {
            let t = w.tally.clone();
            tokio::spawn(async move { t.commit(op(), hold, 300).await })
        };
        let (a, b, commit) = (a.await.unwrap(), b.await.unwrap(), commit.await.unwrap());
        let posted: u64 = [&a, &b]
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|s| s.amount_posted.get()))
            .sum::<u64>()
            + commit.as_ref().map_or(0, |c| c.amount_posted.get());
        let alice = w.tally.balance(ALICE).await.unwrap();
        // Whatever the order, the hold is resolved or still holds exactly what was not posted.
        let h = w.tally.get_hold(hold).await.unwrap();
        assert_eq!(h.amount_posted.get(), posted, "round {round}");
        assert!(posted <= 1_000, "round {round}: {posted}");
        assert_eq!(
            alice.debits_pending,
            u128::from(h.held().get()),
            "round {round}"
        );
        assert_eq!(alice.posted, 10_000 - i128::from(posted), "round {round}");
        if let Err(e) = &commit {
            // Both settlements came first: 200 left, a commit of 300 is too much.
            assert!(
                matches!(
                    e,
                    Error::Ledger(LedgerError::CommitExceedsHold { held: 200, .. })
                ),
                "round {round}: {e:?}"
            );
        }
        for r in [&a, &b] {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        Error::Ledger(
                            LedgerError::HoldAlreadyResolved { .. }
                                | LedgerError::CommitExceedsHold { .. }
                        )
                    ),
                    "round {round}: {e:?}"
                );
            }
        }
        w.assert_books_balance().await;
    }
}

#[tokio::test]
async fn an_extension_racing_expiry_either_lands_before_it_or_is_refused() {
    let w = World::new(10_000).await;
    let hold = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 100).timeout(Duration::from_millis(60_000)),
        )
        .await
        .unwrap();
    w.clock.advance(60_000);
    let refused = w
        .tally
        .extend(op(), hold, 10, Some(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Ledger(LedgerError::HoldExpired { .. })),
        "{refused:?}"
    );
    let alice = w.tally.balance(ALICE).await.unwrap();
    assert_eq!((alice.debits_pending, alice.available), (0, 10_000));
}

#[tokio::test]
async fn a_stream_in_flight_survives_a_restart_with_its_parts_and_its_extension() {
    let w = World::new(1_000).await;
    let hold = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 100))
        .await
        .unwrap();
    w.tally.extend(op(), hold, 200, None).await.unwrap();
    let part = op();
    w.tally
        .settle(part, hold, 120, Usage::default())
        .await
        .unwrap();
    let w = w.reopen().await;
    let h = w.tally.get_hold(hold).await.unwrap();
    assert_eq!(
        (h.amount.get(), h.amount_posted.get(), h.held().get()),
        (300, 120, 180)
    );
    // The retry of a settlement made before the crash is answered, not posted again.
    let again = w
        .tally
        .settle(part, hold, 120, Usage::default())
        .await
        .unwrap();
    assert_eq!(again.amount_held.get(), 180);
    let done = w.tally.commit(op(), hold, 80).await.unwrap();
    assert_eq!(done.amount_released.get(), 100);
    assert_eq!(w.tally.balance(ALICE).await.unwrap().available, 800);
    w.assert_books_balance().await;
}

/// Output tokens at 0.003 µ¢ each (input free): 3,333 fit in 10 µ¢.
fn per_output_token() -> tally::Price {
    tally::Price::PerToken {
        input: tally::Rate::new(0, 1).unwrap(),
        output: tally::Rate::new(3, 1_000).unwrap(),
    }
}

#[tokio::test]
async fn affordable_clamps_a_call_to_what_balance_caps_token_and_rate_limits_leave() {
    use tally::{RateLimit, TokenRate, UsageField};
    let w = World::new(1_000).await;
    let t = &w.tally;
    t.set_price(op(), APP, "/chat", Some(per_output_token()))
        .await
        .unwrap();
    let base = Usage::default();
    let ask = |token| {
        let t = t.clone();
        async move {
            t.affordable(
                ALICE,
                APP,
                "/chat",
                &Usage::default(),
                UsageField::OutputTokens,
                token,
            )
            .await
            .unwrap()
        }
    };
    let a = ask(None).await;
    assert_eq!(
        (a.units, a.cost.map(|c| c.get()), a.limited_by),
        (Some(333_333), Some(1_000), "balance")
    );
    // A hold of exactly that cost is accepted; the room is then gone.
    let hold = t
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 1_000).endpoint("/chat"),
        )
        .await
        .unwrap();
    assert_eq!(ask(None).await.units, Some(0));
    t.void(op(), hold).await.unwrap();

    set_cap(t, ALICE, Some(600)).await;
    let a = ask(None).await;
    assert_eq!((a.room.get(), a.limited_by), (600, "spend_cap_account"));
    assert_eq!(a.units, Some(200_000));

    set_rate(
        t,
        APP,
        RateLimit {
            requests: None,
            cost: Some(TokenRate {
                per_second: 1,
                burst: 10,
            }),
        },
    )
    .await;
    let a = ask(None).await;
    assert_eq!(
        (a.room.get(), a.limited_by, a.units),
        (10, "rate_limit", Some(3_333))
    );
    // What the answer says fits is accepted, one unit more of cost is not.
    t.charge_with_usage(
        op(),
        ALICE,
        APP,
        a.cost.unwrap().get(),
        "/chat",
        Usage {
            output_tokens: 3_333,
            ..base
        },
    )
    .await
    .unwrap();
    assert_eq!(ask(None).await.units, Some(0), "the bucket is empty now");
    let no_price = t
        .affordable(ALICE, APP, "/other", &base, UsageField::OutputTokens, None)
        .await
        .unwrap_err();
    assert!(matches!(no_price, Error::NoPrice { .. }), "{no_price:?}");
}
