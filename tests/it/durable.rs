//! The engine on the durable store: reopen, checkpoints, one owner, fail-stop, damaged files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tally::{
    AccountId, AccountSpec, DurableConfig, DurableStore, EngineConfig, Error, ReserveRequest, Tally,
};

use crate::support::*;

async fn open(dir: &Path, config: EngineConfig) -> (Tally, DurableStore, tally::DurableRecovery) {
    open_durable(DurableConfig::new(dir), config).await
}

async fn setup(tally: &Tally) {
    open_accounts(tally).await;
    tally.fund(op(), ALICE, BANK, 100_000).await.unwrap();
}

async fn history(tally: &Tally) -> Vec<tally::Account> {
    let mut all = Vec::new();
    for id in [BANK, APP, ALICE, BOB] {
        all.push(tally.account(id).await.unwrap());
    }
    all
}

async fn some_work(tally: &Tally) -> tally::HoldId {
    let hold = tally
        .reserve(
            op(),
            ReserveRequest::new(ALICE, APP, 5_000).timeout(Duration::from_secs(3_600)),
        )
        .await
        .unwrap();
    let posting = tally.charge(op(), ALICE, APP, 2_000, "/x").await.unwrap();
    tally.refund(op(), posting, 500).await.unwrap();
    tally.transfer(op(), ALICE, BOB, 700).await.unwrap();
    hold
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn reopen_without_shutdown_recovers_every_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    let hold = some_work(&tally).await;
    let before = history(&tally).await;
    drop(tally);
    let (tally, _, recovery) = open(dir.path(), EngineConfig::default()).await;
    assert!(recovery.records_replayed >= 9, "{recovery:?}");
    assert_eq!(history(&tally).await, before);
    tally.commit(op(), hold, 5_000).await.unwrap();
    assert!(tally.audit().await.unwrap().ok());
}

#[tokio::test]
async fn a_second_owner_of_a_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    match DurableStore::open(DurableConfig::new(dir.path())) {
        Err(tally::StoreError::Locked { path, holder }) => {
            assert_eq!(path, dir.path());
            // It is this process that holds it: the message says so, not "another process".
            assert!(holder.contains("this process"), "{holder}");
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second owner opened the directory"),
    }
}

#[tokio::test]
async fn shutdown_releases_the_directory_for_an_immediate_reopen_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = 0;
    for round in 0..100u64 {
        // No retry: the open right after `shutdown` must succeed.
        let (tally, _) = Tally::open_durable(dir.path(), EngineConfig::default())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if round == 0 {
            open_accounts(&tally).await;
        }
        tally.fund(op(), ALICE, BANK, 10).await.unwrap();
        expected += 10;
        assert_eq!(tally.balance(ALICE).await.unwrap().available, expected);
        tally.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn every_call_after_shutdown_is_refused_as_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _) = Tally::open_durable(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    open_accounts(&tally).await;
    let other = tally.clone();
    tally.shutdown().await.unwrap();
    assert_eq!(other.checkpoint().await, Err(Error::Shutdown));
    assert_eq!(other.expire_due().await, Err(Error::Shutdown));
    assert_eq!(other.balance(ALICE).await.err(), Some(Error::Shutdown));
    assert_eq!(
        other.fund(op(), ALICE, BANK, 1).await.err(),
        Some(Error::Shutdown)
    );
    // And the directory is free although a handle is still alive.
    let (again, _) = Tally::open_durable(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    again.shutdown().await.unwrap();
    drop(other);
}

#[tokio::test]
async fn checkpoints_trim_the_journal_and_shorten_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        supervisor_tick: Duration::from_millis(10),
        checkpoint_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let mut store_config = DurableConfig::new(dir.path());
    store_config.segment_bytes_max = 16 * 1024;
    let (store, _) = DurableStore::open(store_config).unwrap();
    let tally = Tally::open(Arc::new(store.clone()), config.clone())
        .await
        .unwrap();
    setup(&tally).await;
    for _ in 0..2_000 {
        tally.charge(op(), ALICE, APP, 3, "").await.unwrap();
    }
    for _ in 0..200 {
        if store.journal().first_seq() > 1_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.journal().first_seq() > 1_000,
        "the journal was not trimmed"
    );
    let before = history(&tally).await;
    drop((tally, store));
    let (tally, _, recovery) = open(dir.path(), config).await;
    assert!(recovery.records_replayed < 1_500, "{recovery:?}");
    assert_eq!(history(&tally).await, before);
}

#[tokio::test]
async fn accounts_passivated_and_accounts_never_used_come_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tally::ManualClock::new(tally::Timestamp(5_000_000));
    let config = EngineConfig {
        idle_passivate_after: Duration::from_secs(1),
        supervisor_tick: Duration::from_millis(10),
        checkpoint_interval: Duration::from_millis(10),
        ..config(&clock)
    };
    let (tally, _, _) = open(dir.path(), config.clone()).await;
    setup(&tally).await;
    some_work(&tally).await;
    let idle = AccountId(77);
    tally.open_account(idle, AccountSpec::user()).await.unwrap();
    let before = history(&tally).await;
    clock.advance(10_000);
    for _ in 0..200 {
        if tally.resident_accounts() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tally.resident_accounts(), 0);
    assert_eq!(
        history(&tally).await,
        before,
        "passivation changed an account"
    );
    drop(tally);
    let (tally, _, _) = open(dir.path(), config).await;
    assert_eq!(history(&tally).await, before);
    assert_eq!(tally.balance(idle).await.unwrap().available, 0);
    assert!(tally.audit().await.unwrap().ok());
}

/// The directory of accounts is written in batches and by each checkpoint, not at each open:
/// accounts opened before a checkpoint that trimmed their `Opened` records, more than one
/// batch of them, and accounts opened after it (their records still in the journal) are all
/// known again after a reopen without shutdown.
#[tokio::test]
async fn accounts_opened_around_a_trimming_checkpoint_are_all_known_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..EngineConfig::default()
    };
    let (tally, _, _) = open(dir.path(), config.clone()).await;
    let before = 4_200u64; // more than one batch of directory entries (4,096)
    let mut opens = tokio::task::JoinSet::new();
    for id in 0..before {
        let tally = tally.clone();
        opens.spawn(async move {
            tally
                .open_account(AccountId(10_000 + id), AccountSpec::user())
                .await
        });
        if opens.len() >= 64 {
            opens.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(opened) = opens.join_next().await {
        opened.unwrap().unwrap();
    }
    tally.checkpoint().await.unwrap();
    tally.checkpoint().await.unwrap();
    for id in 0..3 {
        tally
            .open_account(AccountId(20_000 + id), AccountSpec::user())
            .await
            .unwrap();
    }
    let known = tally.known_accounts();
    assert_eq!(known as u64, before + 3);
    drop(tally);
    let (tally, _, recovery) = open(dir.path(), config).await;
    assert!(
        recovery.records_replayed < before,
        "the checkpoint trimmed the opens ({} records replayed)",
        recovery.records_replayed
    );
    assert_eq!(tally.known_accounts(), known);
    for id in [10_000, 10_000 + before - 1, 20_000, 20_002] {
        assert_eq!(tally.balance(AccountId(id)).await.unwrap().available, 0);
    }
}

#[tokio::test]
async fn a_failing_disk_fail_stops_and_only_acknowledged_changes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut store_config = DurableConfig::new(dir.path());
    store_config.fail_after_syncs = Some(12);
    let (store, _) = DurableStore::open(store_config).unwrap();
    let tally = Tally::open(Arc::new(store), EngineConfig::default())
        .await
        .unwrap();
    setup(&tally).await;
    let mut acked = 0u64;
    let mut failed = None;
    for _ in 0..100 {
        match tally.charge(op(), ALICE, APP, 10, "").await {
            Ok(_) => acked += 1,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(failed, Some(Error::StorageFailed { .. })),
        "{failed:?}"
    );
    assert!(matches!(
        tally.fund(op(), ALICE, BANK, 1).await,
        Err(Error::StorageFailed { .. })
    ));
    drop(tally);
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    // Every acknowledged charge survived. The one refused when the sync failed may be there too
    // (it reached the file, only its sync failed): present whole, or absent, never in part.
    let charged = tally.balance(ALICE).await.unwrap().debits_posted;
    let acked = u128::from(acked * 10);
    assert!(
        charged == acked || charged == acked + 10,
        "charged {charged}, acked {acked}"
    );
    assert!(tally.audit().await.unwrap().ok());
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_everything_acknowledged_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    some_work(&tally).await;
    let before = history(&tally).await;
    tally.shutdown().await.unwrap();
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0x2a, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 9, 9, 9]); // half a frame
    std::fs::write(&last, bytes).unwrap();
    let (tally, _, recovery) = open(dir.path(), EngineConfig::default()).await;
    assert_eq!(recovery.torn_tail_bytes, 11);
    assert_eq!(history(&tally).await, before);
}

#[tokio::test]
async fn a_damaged_record_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    some_work(&tally).await;
    tally.shutdown().await.unwrap();
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = 24 + (bytes.len() - 24) / 3;
    bytes[middle] ^= 0xff;
    std::fs::write(&last, bytes).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    match DurableStore::open(DurableConfig::new(dir.path())) {
        Err(tally::StoreError::Corrupt(reason)) => assert!(reason.contains("journal"), "{reason}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a damaged journal opened"),
    }
}

#[tokio::test]
async fn history_survives_checkpoints_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        supervisor_tick: Duration::from_millis(10),
        checkpoint_interval: Duration::from_millis(10),
        ..EngineConfig::default()
    };
    let mut store_config = DurableConfig::new(dir.path());
    store_config.segment_bytes_max = 8 * 1024;
    let (store, _) = DurableStore::open(store_config).unwrap();
    let tally = Tally::open(Arc::new(store.clone()), config.clone())
        .await
        .unwrap();
    setup(&tally).await;
    for _ in 0..600 {
        tally.charge(op(), ALICE, APP, 1, "").await.unwrap();
    }
    for _ in 0..300 {
        if store.journal().first_seq() > 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.journal().first_seq() > 300,
        "the journal was not trimmed"
    );
    let pages = |tally: Tally| async move {
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = tally.history(ALICE, after, 128).await.unwrap();
            seqs.extend(page.entries.iter().map(|e| e.seq));
            match page.next_after_seq {
                Some(next) => after = next,
                None => return seqs,
            }
        }
    };
    let before = pages(tally.clone()).await;
    assert_eq!(before.len(), 602, "opened + funded + 600 charges");
    assert!(before.windows(2).all(|w| w[0] < w[1]));
    drop((tally, store));
    let (tally, _, _) = open(dir.path(), config).await;
    assert_eq!(pages(tally).await, before);
}

#[tokio::test]
async fn a_checkpoint_saves_each_changed_account_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..EngineConfig::default()
    };
    let (tally, _, _) = open(dir.path(), config).await;
    setup(&tally).await;
    // Opening leaves an account on disk, not resident; funding Alice from the bank made Alice
    // resident and changed (the bank's debit is a leg, summed by the store, saved with it).
    assert_eq!(tally.checkpoint().await.unwrap(), 1);
    assert_eq!(
        tally.checkpoint().await.unwrap(),
        0,
        "nothing changed since"
    );
    tally.charge(op(), ALICE, APP, 10, "").await.unwrap();
    assert_eq!(
        tally.checkpoint().await.unwrap(),
        1,
        "Alice (the app's credit is a leg)"
    );
}

#[tokio::test]
async fn a_directory_open_elsewhere_is_a_typed_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _) = Tally::open_durable(dir.path(), EngineConfig::default())
        .await
        .unwrap();
    let second = Tally::open_durable(dir.path(), EngineConfig::default()).await;
    assert!(
        matches!(second, Err(Error::Locked { .. })),
        "{:?}",
        second.err()
    );
    drop(tally);
}

/// Funds Alice `n` times from the bank, each with a fresh op id; returns the ids.
async fn fund_many(tally: &Tally, n: usize) -> Vec<tally::OpId> {
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let id = op();
        tally.fund(id, ALICE, BANK, 1).await.unwrap();
        ops.push(id);
    }
    ops
}

#[tokio::test]
async fn idempotency_keys_live_apart_from_the_snapshot_and_answer_retries_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, store, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    let ops = fund_many(&tally, 2_000).await;
    tally.checkpoint().await.unwrap();
    let account = tally.account(ALICE).await.unwrap();
    assert_eq!(
        account.remembered_keys(),
        2_001,
        "setup's funding and 2,000 more"
    );
    let snapshot = tally_store::codec::encode_account(&account).unwrap();
    assert!(
        snapshot.len() < 512,
        "a snapshot is small whatever the window: {} bytes for {} keys",
        snapshot.len(),
        account.remembered_keys()
    );
    let stats = store.snapshot_stats().unwrap();
    assert_eq!(stats.keys, 2_001, "{stats:?}");
    let (outcome, seq) = account.remembered(ops[0]).unwrap();
    tally.shutdown().await.unwrap();

    let (tally, store, _) = open(dir.path(), EngineConfig::default()).await;
    assert_eq!(
        tally.account(ALICE).await.unwrap(),
        account,
        "keys and order restored"
    );
    // A retry of the oldest key is answered, not executed again.
    tally.fund(ops[0], ALICE, BANK, 1).await.unwrap();
    let again = tally.account(ALICE).await.unwrap();
    assert_eq!(again.remembered(ops[0]), Some((outcome, seq)));
    assert_eq!(
        again.balance(),
        account.balance(),
        "the retry moved nothing"
    );
    // A conflicting retry is still refused.
    let conflict = tally.fund(ops[1], ALICE, BANK, 2).await.unwrap_err();
    assert!(
        matches!(
            conflict,
            Error::Ledger(tally::LedgerError::IdempotencyConflict { .. })
        ),
        "{conflict:?}"
    );
    tally.checkpoint().await.unwrap();
    assert_eq!(
        store.snapshot_stats().unwrap().keys,
        2_001,
        "a retry adds no key"
    );
}

#[tokio::test]
async fn forgotten_keys_leave_the_index_so_it_stays_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::default();
    config.limits.idempotency_keys_max = 100;
    let (tally, store, _) = open(dir.path(), config.clone()).await;
    setup(&tally).await;
    for round in 0..10 {
        let ops = fund_many(&tally, 150).await;
        tally.checkpoint().await.unwrap();
        let stats = store.snapshot_stats().unwrap();
        assert_eq!(stats.keys, 100, "round {round}: {stats:?}");
        let account = tally.account(ALICE).await.unwrap();
        assert_eq!(account.remembered(ops[149]).map(|_| ()), Some(()));
        assert_eq!(
            account.remembered(ops[0]),
            None,
            "forgotten: beyond the window"
        );
    }
    let before = tally.account(ALICE).await.unwrap();
    drop(tally);
    drop(store);
    // Reopened without a clean shutdown: recovery replays and saves; still 100 keys.
    let (tally, store, _) = open(dir.path(), config).await;
    assert_eq!(tally.account(ALICE).await.unwrap(), before);
    assert_eq!(store.snapshot_stats().unwrap().keys, 100);
}

#[tokio::test]
async fn recovery_reads_no_keys_and_forgets_as_the_live_engine_did() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tally::ManualClock::new(tally::Timestamp(1_700_000_000_000));
    let mut config = config(&clock);
    config.limits.idempotency_keys_max = 100;
    config.limits.idempotency_retention_ms = 60_000;
    let (tally, store, _) = open(dir.path(), config.clone()).await;
    setup(&tally).await;
    let old = fund_many(&tally, 150).await;
    tally.checkpoint().await.unwrap();
    assert_eq!(store.snapshot_stats().unwrap().keys, 100);

    // After the checkpoint, in the journal only: a reused id, forgotten before it is used
    // again; a clock stepped back; keys forgotten by age.
    let reused = op();
    tally.fund(reused, ALICE, BANK, 1).await.unwrap();
    fund_many(&tally, 100).await;
    tally.fund(reused, ALICE, BANK, 1).await.unwrap();
    clock.set(tally::Timestamp(1_700_000_000_000 - 5_000));
    fund_many(&tally, 3).await;
    clock.set(tally::Timestamp(1_700_000_000_000 + 30_000));
    fund_many(&tally, 20).await;
    clock.advance(45_000);
    let recent = fund_many(&tally, 10).await;
    let before = tally.account(ALICE).await.unwrap();
    assert!(before.remembered_keys() < 100, "some forgotten by age");
    assert!(before.remembered(reused).is_none(), "forgotten again");
    drop(tally);
    drop(store);

    // Recovery replays the 135 records without reading the 100 keys before them, so it
    // forgets none by count or age. Only the reused id tells it something: its first use, and
    // every key before it (the 100 in the index too), had been forgotten. The index holds the
    // other 134 until Alice is next written.
    let (tally, store, recovery) = open(dir.path(), config).await;
    assert!(recovery.records_replayed >= 135, "{recovery:?}");
    assert_eq!(store.snapshot_stats().unwrap().keys, 134);
    assert!(before.remembered_keys() < 134);
    // Loading Alice forgets them exactly as the engine did when it made them.
    let after = tally.account(ALICE).await.unwrap();
    assert_eq!(after, before, "the same keys, in the same order");
    assert!(after.remembered(old[149]).is_none());
    assert!(after.remembered(recent[0]).is_some());
    // A retry of a remembered key is answered, a forgotten one runs anew.
    tally.fund(recent[0], ALICE, BANK, 1).await.unwrap();
    assert_eq!(
        tally.account(ALICE).await.unwrap().balance(),
        before.balance()
    );
    tally.fund(old[149], ALICE, BANK, 1).await.unwrap();
    assert_eq!(
        tally.account(ALICE).await.unwrap().balance().credits_posted,
        before.balance().credits_posted + 1
    );
    // Written again, the index is back within the window.
    tally.checkpoint().await.unwrap();
    let keys = store.snapshot_stats().unwrap().keys;
    assert_eq!(keys, before.remembered_keys() as u64 + 1, "and the new one");
}

#[tokio::test]
async fn a_key_missing_from_the_index_is_reported_as_damage_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    fund_many(&tally, 10).await;
    tally.shutdown().await.unwrap();

    remove_from_snapshot_db(dir.path(), "idempotency_keys", |keys| {
        use redb::ReadableTable;
        let victim = keys
            .iter()
            .unwrap()
            .nth(5)
            .unwrap()
            .unwrap()
            .0
            .value()
            .to_vec();
        victim
    });

    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    let error = tally.balance(ALICE).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, Error::Storage { .. }) && text.contains("idempotency keys"),
        "{text}"
    );
    assert!(text.contains("snapshots"), "names the database: {text}");
}

/// Removes from the table `table` of the snapshot database in `dir` the key `pick` chooses,
/// durably, as damage or a lost write would.
fn remove_from_snapshot_db(
    dir: &std::path::Path,
    table: &str,
    pick: impl FnOnce(&redb::Table<&[u8], &[u8]>) -> Vec<u8>,
) {
    let db = redb::Database::open(dir.join("snapshots").join("tally.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut opened = txn
            .open_table(redb::TableDefinition::<&[u8], &[u8]>::new(table))
            .unwrap();
        let victim = pick(&opened);
        assert!(opened.remove(&victim[..]).unwrap().is_some());
    }
    txn.commit().unwrap();
}

/// Alice's balance after every change she ever made.
async fn whole_balance_history(tally: &Tally) -> tally::BalanceHistory {
    tally
        .balance_history(
            ALICE,
            tally::Timestamp(0),
            tally::Timestamp(u64::MAX),
            10_000,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn pruned_history_leaves_balance_history_exact_from_the_cut_and_the_trail_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store_config = DurableConfig {
        segment_bytes_max: 8 << 10,
        ..DurableConfig::new(dir.path())
    };
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..EngineConfig::default()
    };
    let (tally, store, _) = open_durable(store_config.clone(), config.clone()).await;
    setup(&tally).await;
    for n in 0..300u64 {
        tally.charge(op(), ALICE, APP, 10 + n, "/x").await.unwrap();
        if n % 50 == 0 {
            some_work(&tally).await;
        }
    }
    tally.checkpoint().await.unwrap();
    let full = whole_balance_history(&tally).await;
    assert_eq!(full.pruned_through, 0);
    let middle = full.points[full.points.len() / 2].seq;

    let pruned = store.prune_history(middle).unwrap();
    assert!(
        pruned.segments > 0 && pruned.pruned_through < middle,
        "{pruned:?}"
    );
    let cut = pruned.pruned_through;
    let after = whole_balance_history(&tally).await;
    assert_eq!(after.pruned_through, cut);
    let expected: Vec<_> = full
        .points
        .iter()
        .copied()
        .filter(|p| p.seq > cut)
        .collect();
    assert_eq!(after.points, expected, "the same balances, from the cut on");
    let page = tally.history(ALICE, 0, 10).await.unwrap();
    assert_eq!(page.pruned_through, cut);
    assert!(page.entries.iter().all(|e| e.seq > cut));
    let report = tally.verify_trail().await.unwrap();
    assert!(report.ok() && report.pruned_through == cut, "{report}");
    let balance = tally.balance(ALICE).await.unwrap();
    tally.shutdown().await.unwrap();
    drop(store);

    let (tally, _, _) = open_durable(store_config, config).await;
    assert_eq!(tally.balance(ALICE).await.unwrap(), balance);
    assert_eq!(whole_balance_history(&tally).await, after);
    assert!(
        tally::verify_trail(dir.path()).is_err(),
        "locked while open"
    );
    tally.shutdown().await.unwrap();
    let report = tally::verify_trail(dir.path()).unwrap();
    assert!(report.ok() && report.pruned_through == cut, "{report}");
}

#[tokio::test]
async fn a_prune_whose_mark_a_crash_lost_is_redone_without_counting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store_config = DurableConfig {
        segment_bytes_max: 8 << 10,
        ..DurableConfig::new(dir.path())
    };
    let (tally, store, _) = open_durable(store_config.clone(), EngineConfig::default()).await;
    setup(&tally).await;
    for n in 0..400u64 {
        tally.charge(op(), ALICE, APP, 10 + n, "/x").await.unwrap();
    }
    tally.checkpoint().await.unwrap();
    let archive = dir.path().join("archive");
    let saved: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    let middle = whole_balance_history(&tally).await.points[190].seq;
    let first = store.prune_history(middle).unwrap();
    assert!(
        first.segments > 0,
        "{first:?} {middle} {:?}",
        saved.iter().map(|s| s.0.clone()).collect::<Vec<_>>()
    );
    let after = whole_balance_history(&tally).await;
    tally.shutdown().await.unwrap();
    drop(store);

    // As if the bases reached the disk but the mark and the removals did not.
    remove_from_snapshot_db(dir.path(), "meta", |_| b"history_pruned".to_vec());
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let (tally, store, _) = open_durable(store_config, EngineConfig::default()).await;
    let again = store.prune_history(middle).unwrap();
    assert_eq!(again.pruned_through, first.pruned_through);
    assert_eq!(
        whole_balance_history(&tally).await,
        after,
        "the pruned range counted once"
    );
}

#[tokio::test]
async fn pruning_by_age_removes_only_segments_whose_records_are_all_older() {
    let dir = tempfile::tempdir().unwrap();
    let clock = tally::ManualClock::new(tally::Timestamp(1_000_000));
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..crate::support::config(&clock)
    };
    let store_config = DurableConfig {
        segment_bytes_max: 8 << 10,
        ..DurableConfig::new(dir.path())
    };
    let (tally, store, _) = open_durable(store_config, config).await;
    setup(&tally).await;
    for n in 0..400u64 {
        clock.advance(1_000);
        tally.charge(op(), ALICE, APP, 10 + n, "/x").await.unwrap();
    }
    tally.checkpoint().await.unwrap();
    let before = tally.history(ALICE, 0, 1_000).await.unwrap().entries;
    let cutoff = before[250].record.at;

    let pruned = store.prune_history_older_than(cutoff).unwrap();
    assert!(pruned.segments > 0, "{pruned:?}");
    let cut = pruned.pruned_through;
    assert!(
        before
            .iter()
            .filter(|e| e.seq <= cut)
            .all(|e| e.record.at < cutoff),
        "a pruned record was not older than the cutoff"
    );
    let kept = tally.history(ALICE, 0, 1_000).await.unwrap();
    assert_eq!(kept.pruned_through, cut);
    assert!(kept.entries.iter().any(|e| e.record.at >= cutoff));
    // Nothing older is left to go but the segment the cutoff falls in.
    assert_eq!(store.prune_history_older_than(cutoff).unwrap().segments, 0);
}

#[tokio::test]
async fn policies_are_in_force_after_a_crash_and_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    setup(&tally).await;
    let cap = tally::Amount::new(1_000).unwrap();
    set_cap(&tally, ALICE, Some(1_000)).await;
    set_cap(&tally, APP, Some(5_000)).await;
    tally.charge(op(), ALICE, APP, 1_000, "/x").await.unwrap();
    // A crash (no shutdown, no snapshot of the changed accounts): recovery replays the
    // settings and writes the policies the engine reads before any account is loaded.
    drop(tally);
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    let e = tally.charge(op(), ALICE, APP, 1, "/x").await.unwrap_err();
    assert!(
        matches!(ledger(e), tally::LedgerError::SpendCapExceeded { .. }),
        "the cap must be in force before alice is loaded"
    );
    assert_eq!(
        tally.policy(ALICE).await.unwrap().spend_cap_per_day,
        Some(cap)
    );
    // Removed, then a clean shutdown: the removal is what the next open sees.
    set_cap(&tally, ALICE, None).await;
    tally.shutdown().await.unwrap();
    let (tally, _, _) = open(dir.path(), EngineConfig::default()).await;
    tally.charge(op(), ALICE, APP, 1, "/x").await.unwrap();
    let app = tally.policy(APP).await.unwrap();
    assert_eq!(
        (app.spend_cap_per_day, app.version),
        (Some(tally::Amount::new(5_000).unwrap()), 1)
    );
    assert_eq!(tally.policy(ALICE).await.unwrap().version, 2);
}

/// The app's credits and the bank's debits are legs, summed by the store: across a checkpoint
/// that trims the journal they cover, more work after it, and a crash (no shutdown), the
/// reopened engine has every one of them, neither lost nor counted twice.
#[tokio::test]
async fn legs_survive_a_checkpoint_that_trims_their_records_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3_600),
        ..EngineConfig::default()
    };
    // Small segments, so that a checkpoint removes some.
    let durable = || {
        let mut durable = DurableConfig::new(dir.path());
        durable.segment_bytes_max = 4_096;
        durable
    };
    let (tally, store, _) = open_durable(durable(), config.clone()).await;
    setup(&tally).await;
    for i in 0..50u64 {
        tally.charge(op(), ALICE, APP, 10 + i, "/x").await.unwrap();
    }
    let first_before = store.journal().first_seq();
    tally.checkpoint().await.unwrap();
    assert!(
        store.journal().first_seq() > first_before,
        "the checkpoint trimmed the journal the legs were in"
    );
    for i in 0..30u64 {
        tally.charge(op(), ALICE, APP, 100 + i, "/x").await.unwrap();
    }
    let paid: i128 = (0..50).map(|i| 10 + i).sum::<i128>() + (0..30).map(|i| 100 + i).sum::<i128>();
    assert_eq!(tally.balance(APP).await.unwrap().available, paid);
    drop((tally, store));

    let (tally, _, _) = open_durable(durable(), config).await;
    assert_eq!(tally.balance(APP).await.unwrap().available, paid);
    assert_eq!(tally.balance(BANK).await.unwrap().available, -100_000);
    assert_eq!(
        tally.balance(ALICE).await.unwrap().available,
        100_000 - paid
    );
    assert!(tally.audit().await.unwrap().ok());
}
