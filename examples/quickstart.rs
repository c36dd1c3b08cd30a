//! A metered LLM call from start to end: fund a user, hold an estimate, commit the actual
//! per-token cost, refund part of it, and audit the books.

use std::time::Duration;
use tally::{AccountId, AccountSpec, OpId, ReserveRequest, Tally};

#[tokio::main]
async fn main() -> Result<(), tally::Error> {
    let tally = Tally::in_memory().await?;
    let (bank, router, alice) = (AccountId(1), AccountId(2), AccountId(100));
    tally.open_account(bank, AccountSpec::funding()).await?;
    tally.open_account(router, AccountSpec::revenue()).await?;
    tally.open_account(alice, AccountSpec::user()).await?;

    // Alice tops up $5.00 (500,000,000 µ¢).
    tally.fund(OpId(1), alice, bank, 500_000_000).await?;
    println!("may alice start? {}", tally.check(alice, None).await?);

    // Hold the most the call can cost: 4,000 output tokens at 600 cents per million tokens
    // = 4,000 × 6 µ¢ = 24,000 µ¢ (600 cents / 1,000,000 tokens = 6 µ¢ per token).
    let request = ReserveRequest::new(alice, router, 24_000)
        .timeout(Duration::from_secs(30))
        .endpoint("/chat");
    let mut hold = tally.hold(OpId(2), request).await?;

    // The call used 1,200 input tokens (2 µ¢ each) and 900 output tokens (6 µ¢ each).
    let actual = 1_200 * 2 + 900 * 6;
    let committed = hold.commit(OpId(3), actual).await?;
    println!(
        "posted {} µ¢, released {} µ¢",
        committed.amount_posted, committed.amount_released
    );

    // A failed call: the guard is dropped without a commit, so the hold is voided.
    {
        let _failed = tally
            .hold(OpId(4), ReserveRequest::new(alice, router, 24_000))
            .await?;
    }

    // Refund half of the first call.
    tally
        .refund(
            OpId(5),
            committed.posting,
            u64::from(committed.amount_posted) / 2,
        )
        .await?;

    tokio::time::sleep(Duration::from_millis(20)).await; // let the dropped guard's void land
    let balance = tally.balance(alice).await?;
    println!(
        "alice: posted {} µ¢, pending {} µ¢, available {} µ¢",
        balance.posted, balance.debits_pending, balance.available
    );
    let report = tally.audit().await?;
    println!(
        "audit: funded {} = revenue {} + user balances {}; invariants {}",
        report.funded,
        report.revenue,
        report.user_balances,
        if report.ok() { "hold" } else { "BROKEN" }
    );
    tally.shutdown().await
}
