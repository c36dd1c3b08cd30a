//! Micro-benchmarks of the three layers a request crosses, each alone:
//!
//! - `core/charge`: `Account::decide` + `apply` (+ the app's leg) of one charge, the
//!   domain logic without actors or storage;
//! - `engine/balance`: one round trip through an account actor's mailbox (`Tally::balance`)
//!   on an in-memory engine;
//! - `journal/group-1000`: one group commit: 1,000 journal appends and `wait_durable` on the
//!   last, in a temporary directory (one write + one fdatasync if the committer takes them as
//!   one group).
//!
//! Run with `cargo bench -p tally --bench micro`. The load test (`tally-bench`) measures the whole.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// criterion_group! makes an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally::{AccountId, AccountSpec, Amount, OpId, Tally};
use tally_bench::ceiling::{typical_record_bytes, CoreLoop, FRAME_HEADER_BYTES};
use tally_store::journal::{Journal, JournalConfig};

fn core_charge(c: &mut Criterion) {
    let mut core = CoreLoop::new();
    let amount = Amount::from_const(1_000);
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("charge", |b| {
        b.iter(|| core.charge(black_box(amount)).expect("a funded charge"));
    });
    group.finish();
}

fn engine_balance(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let user = AccountId(1_000);
    let tally = runtime.block_on(async {
        let tally = Tally::in_memory().await.unwrap();
        tally
            .open_account(AccountId(1), AccountSpec::funding())
            .await
            .unwrap();
        tally.open_account(user, AccountSpec::user()).await.unwrap();
        tally
            .fund(OpId(1), user, AccountId(1), 1_000_000)
            .await
            .unwrap();
        tally
    });
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("balance", |b| {
        b.iter(|| runtime.block_on(tally.balance(black_box(user))).unwrap());
    });
    group.finish();
}

fn journal_group(c: &mut Criterion) {
    const GROUP: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(JournalConfig::new(dir.path()), |_, _| Ok(())).unwrap();
    let payload = vec![0x5a_u8; typical_record_bytes() - FRAME_HEADER_BYTES];
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(GROUP));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("group-1000", |b| {
        b.iter(|| {
            let mut last = 0;
            for _ in 0..GROUP {
                last = journal.append(&payload).unwrap();
            }
            runtime.block_on(journal.wait_durable(last)).unwrap();
        });
    });
    group.finish();
    journal.close().unwrap();
}

criterion_group!(benches, core_charge, engine_balance, journal_group);
criterion_main!(benches);
