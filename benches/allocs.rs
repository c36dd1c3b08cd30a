//! Heap allocations per request on the charge path, counted by a counting global allocator
//! around the system one (`stats_alloc`): `cargo bench -p tally --bench allocs`.
//!
//! One caller charges one user again and again (each charge awaited: the whole path of one
//! request, the handle, the mailbox, the actor, decide, append, apply, the acknowledgement),
//! on the in-memory store and on the durable store in a temporary directory. Every allocation
//! the process makes while they run is counted, the engine's background tasks and the
//! journal's committer included, and divided by the charges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tally::{AccountId, AccountSpec, EngineConfig, MemStore, OpId, Tally};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const USER: AccountId = AccountId(1_000);
const APP: AccountId = AccountId(2);
const WARM_UP: u64 = 20_000;
const CHARGES: u64 = 100_000;

async fn count(tally: &Tally, what: &str) {
    tally
        .open_account(AccountId(1), AccountSpec::funding())
        .await
        .unwrap();
    tally
        .open_account(APP, AccountSpec::revenue())
        .await
        .unwrap();
    tally.open_account(USER, AccountSpec::user()).await.unwrap();
    tally
        .fund(OpId(1), USER, AccountId(1), u64::MAX / 4)
        .await
        .unwrap();
    // Warmed up first: the account's tables and the journal's buffers have grown.
    for op in 0..WARM_UP {
        tally
            .charge(OpId(u128::from(1_000 + op)), USER, APP, 1_000, "/v1/chat")
            .await
            .unwrap();
    }
    let region = Region::new(GLOBAL);
    for op in WARM_UP..WARM_UP + CHARGES {
        tally
            .charge(OpId(u128::from(1_000 + op)), USER, APP, 1_000, "/v1/chat")
            .await
            .unwrap();
    }
    let change = region.change();
    let allocations = change.allocations + change.reallocations;
    let bytes = change.bytes_allocated + change.bytes_reallocated.max(0) as usize;
    println!(
        "{what}: {:.2} allocations and {:.0} bytes allocated per charge ({CHARGES} charges)",
        allocations as f64 / CHARGES as f64,
        bytes as f64 / CHARGES as f64
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = EngineConfig::default();
        let store = Arc::new(MemStore::new(config.limits.clone()));
        let tally = Tally::open(store, config).await.unwrap();
        count(&tally, "in-memory store").await;
        tally.shutdown().await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (tally, _) = Tally::open_durable(dir.path(), EngineConfig::default())
            .await
            .unwrap();
        count(&tally, "durable store").await;
        tally.shutdown().await.unwrap();
    });
}
