//! Property tests that prove the design brief's invariants against the real engine:
//!
//! - `model`: any sequential history (every operation, invalid inputs, retries, expiry) gives
//!   the same results and the same state as a plainly correct reference ledger (`reference`);
//! - `concurrency`: many tasks on few accounts: no overspend, conservation, every hold resolved
//!   once, refunds within what was posted, replays change nothing; and the classic races;
//! - `recovery`: histories with crashes (the engine dropped, even mid-request) and clean
//!   shutdowns, on the durable store and on the in-memory one: what was acknowledged is what
//!   the recovered engine holds, and it equals the model.
//! - `mutants`: small scenarios that pin down rules the random histories reach only rarely.
//!
//! Every property runs `PROPTEST_CASES` cases (default 256). Failures are saved next to the
//! test file (`*.regressions`) and replayed first on the next run.

mod calls;
mod concurrency;
mod engine;
mod model;
mod mutants;
mod probe;
mod recovery;
mod reference;

use proptest::test_runner::{Config, FileFailurePersistence};
use tally::{Account, AccountKind, Limits, Tally};

/// Cases per property: `PROPTEST_CASES` if set, else 256.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Counts a passed case of `property`; when the count reaches [`cases`], says so on stderr
/// (seen with `--nocapture`), which is how a long pass records how many cases it ran.
pub fn case_passed(property: &'static str) {
    static COUNTS: std::sync::Mutex<Vec<(&str, u32)>> = std::sync::Mutex::new(Vec::new());
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let n = match counts.iter_mut().find(|(name, _)| *name == property) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            counts.push((property, 1));
            1
        }
    };
    if n == cases() {
        eprintln!("props: {property}: {n} cases passed");
    }
}

/// The proptest configuration of every property here.
pub fn config() -> Config {
    Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::with_cases(cases())
    }
}

/// Small limits, so that every bound (pending holds, retention of resolved holds, postings and
/// idempotency keys, timeouts, text fields) is reached by short histories.
pub fn small_limits() -> Limits {
    Limits {
        origin_bytes_max: Default::default(),
        holds_pending_max: 2,
        holds_resolved_retained: 3,
        postings_retained: 3,
        idempotency_keys_max: 12,
        idempotency_retention_ms: 2 * 3_600_000,
        // At least a minute: no hold's expiry timer fires (in real time) during a test case, so
        // a hold expires exactly when a test touches its account after moving the clock.
        hold_timeout_ms_min: 60_000,
        hold_timeout_ms_max: 7 * 24 * 3_600_000,
        endpoint_bytes_max: 16,
        metadata_bytes_max: 32,
        tokens_max: 2,
        token_ttl_ms_max: 7 * 24 * 3_600_000,
    }
}

/// Opens the bank (funding), the app (revenue) and Alice (user), and funds Alice with 1,000
/// (operation id 1): the small world of the scenario tests.
pub async fn open_alice_funded(tally: &Tally) {
    use crate::support::{open_accounts_with, ALICE, BANK};
    open_accounts_with(tally, &[ALICE]).await;
    tally
        .fund(tally::OpId(1), ALICE, BANK, 1_000)
        .await
        .unwrap();
}

/// The invariants of the design brief, checked on a set of accounts (every account of an
/// engine, read from its state or its store) by sums of our own, not by the engine's audit.
/// Holds are probed up to sequence number `seq_max`.
pub fn assert_invariants(accounts: &[Account], seq_max: u64) {
    let (mut debits, mut credits) = (0u128, 0u128);
    for account in accounts {
        let balance = account.balance();
        debits += balance.debits_posted;
        credits += balance.credits_posted;
        // 1. No overspend.
        if account.spec.kind == AccountKind::User && !account.spec.flags.may_overdraw {
            assert!(
                balance.available >= 0,
                "{:?} overspent: {balance:?}",
                account.id
            );
        }
        // The pending total is the sum of what the pending holds still hold.
        let pending: u128 = account.pending_holds().map(|h| h.held().wide()).sum();
        assert_eq!(
            pending, balance.debits_pending,
            "pending of {:?}",
            account.id
        );
        for hold in (1..=seq_max).filter_map(|seq| account.hold(seq)) {
            // 3. committed and settled ≤ held, and only a committed hold has its posting (a
            // settled part has a posting of its own).
            assert!(hold.amount_posted <= hold.amount, "{hold:?}");
            let posted = hold.status == tally::HoldStatus::Posted;
            assert_eq!(posted, hold.posting.is_some(), "{hold:?}");
            if posted {
                assert!(!hold.amount_posted.is_zero(), "{hold:?}");
            }
            assert_eq!(
                hold.status == tally::HoldStatus::Pending,
                hold.resolved_at.is_none()
            );
        }
        for posting in account.postings() {
            // 4. Refunds never exceed what was posted.
            assert!(posting.amount_refunded <= posting.amount, "{posting:?}");
        }
    }
    // 2. Conservation.
    assert_eq!(debits, credits, "Σ debits ≠ Σ credits");
}

/// The accounts `ids` as the engine reads them (expiring due holds first, as every read does).
pub async fn all_accounts(
    tally: &Tally,
    ids: impl IntoIterator<Item = tally::AccountId>,
) -> Vec<Account> {
    let mut all = Vec::new();
    for id in ids {
        all.push(tally.account(id).await.expect("a known account"));
    }
    all
}
