//! The audit trail through the engine: every record carries who asked, when and its
//! idempotency id; the chain verifies across checkpoints and crashes, and a changed record is
//! found. (Tampering with the files themselves is in tally-store's `tests/it/trail.rs`.)

use std::time::Duration;

use tally::{Change, DurableConfig, EngineConfig, Origin, TrailProblem};

use crate::support::*;

#[tokio::test]
async fn records_carry_who_asked_and_a_changed_record_breaks_the_chain() {
    let w = World::new(10_000).await;
    let svc = w
        .tally
        .with_origin(Origin::new("search-api", "web", "alice@example.com"));
    let charge_op = op();
    svc.record_cost(charge_op, ALICE, 1_000, APP, "/search")
        .await
        .unwrap();
    let records = w.store.records();
    let (index, record) = records
        .iter()
        .enumerate()
        .find(|(_, r)| r.op == Some(charge_op))
        .unwrap();
    assert_eq!(
        record.origin,
        Origin::new("search-api", "web", "alice@example.com")
    );
    assert_eq!(record.at, w.tally.now());
    let report = w.tally.verify_trail().await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, records.len() as u64);
    assert_eq!(w.tally.trail_head(), (report.last_seq, report.head));

    // Someone lowers the charge in the stored journal.
    let seq = index as u64 + 1;
    let mut forged = record.clone();
    if let Change::Charged { amount, .. } = &mut forged.change {
        *amount = tally::Amount::new(1).unwrap();
    }
    assert!(w.store.tamper_record(seq, forged));
    let report = w.tally.verify_trail().await.unwrap();
    assert_eq!(report.problems, vec![TrailProblem::Altered { seq }]);
}

#[tokio::test]
async fn the_chain_verifies_across_checkpoints_archives_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        supervisor_tick: Duration::from_millis(10),
        checkpoint_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let mut store_config = DurableConfig::new(dir.path());
    store_config.segment_bytes_max = 8 * 1024;
    let (tally, _, _) = open_durable(store_config.clone(), config.clone()).await;
    open_accounts(&tally).await;
    tally.fund(op(), ALICE, BANK, 1_000_000).await.unwrap();
    for _ in 0..300 {
        tally.charge(op(), ALICE, APP, 3, "/x").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = tally.verify_trail().await.unwrap();
    assert!(before.ok(), "{before}");
    assert!(before.segments > 2, "{before}");
    // A crash (no shutdown), then more work.
    drop(tally);
    let (tally, _, _) = open_durable(store_config, config).await;
    for _ in 0..50 {
        tally.charge(op(), ALICE, APP, 3, "/x").await.unwrap();
    }
    let after = tally.verify_trail().await.unwrap();
    assert!(after.ok(), "{after}");
    assert_eq!(after.first_seq, 1);
    assert_eq!(after.records, before.records + 50);
    assert_eq!(tally.trail_head(), (after.last_seq, after.head));
}
