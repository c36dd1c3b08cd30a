//! Spend tokens through the engine: concurrent uses of one token never together pass its cap,
//! and what a token used survives a reopen.

use std::time::Duration;

use tally::{LedgerError, ReserveRequest};

use crate::support::{op, World, ALICE, APP};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_holds_with_one_token_never_pass_its_cap() {
    let w = World::new(1_000_000).await;
    let (token, _) = w
        .tally
        .issue_token(op(), ALICE, APP, 1_000, Duration::from_secs(3_600), "")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let tally = w.tally.clone();
            tokio::spawn(async move {
                tally
                    .reserve(op(), ReserveRequest::new(ALICE, APP, 100).token(token))
                    .await
            })
        })
        .collect();
    let mut held = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => held += 1,
            Err(tally::Error::Ledger(LedgerError::TokenCapExceeded { cap, .. })) => {
                assert_eq!(cap, 1_000)
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(held, 10);
    let account = w.tally.account(ALICE).await.unwrap();
    assert_eq!(account.token(token.seq).unwrap().used.get(), 1_000);
    assert_eq!(
        w.tally.balance(ALICE).await.unwrap().available,
        1_000_000 - 1_000
    );
    assert!(w.tally.audit().await.unwrap().ok());
}

#[tokio::test]
async fn what_a_token_used_survives_a_reopen_and_a_token_of_another_user_is_refused() {
    let w = World::new(1_000_000).await;
    let (token, _) = w
        .tally
        .issue_token(op(), ALICE, APP, 500, Duration::from_secs(3_600), "")
        .await
        .unwrap();
    w.tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 300).token(token))
        .await
        .unwrap();
    let w = w.reopen().await;
    let e = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 201).token(token))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            tally::Error::Ledger(LedgerError::TokenCapExceeded { used: 300, .. })
        ),
        "{e}"
    );
    let e = w
        .tally
        .reserve(
            op(),
            ReserveRequest::new(crate::support::BOB, APP, 1).token(token),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, tally::Error::Ledger(LedgerError::UnknownToken { .. })),
        "{e}"
    );
    w.tally.revoke_token(op(), token).await.unwrap();
    let e = w
        .tally
        .reserve(op(), ReserveRequest::new(ALICE, APP, 1).token(token))
        .await
        .unwrap_err();
    assert!(
        matches!(e, tally::Error::Ledger(LedgerError::TokenRevoked { .. })),
        "{e}"
    );
}
