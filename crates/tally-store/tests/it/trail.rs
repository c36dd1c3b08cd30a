//! The audit trail: a clean store verifies, and each way of tampering with the stored files
//! (an altered, removed or forged record, a relinked segment, a cut tail) is found and named.
//!
//! The tests edit segment files by hand using the documented layout (journal module docs):
//! segment header = magic (8) | version (4) | first_seq (8) | chain before (32) | crc32c (4);
//! record = length (4) | crc32c (4) | seq (8) | chain (32) | payload, the crc32c covering every
//! frame byte but itself.

use std::fs;
use std::path::{Path, PathBuf};

use tally_core::{AccountId, AccountSpec, Change, Origin, Record, Timestamp};
use tally_store::journal::{verify_segments, Journal, JournalConfig, SyncMode};
use tally_store::{
    verify_trail, DurableConfig, DurableStore, MemStore, Store, StoreError, TrailProblem,
    TrailReport,
};

const HEADER_LEN: usize = 56;
const HEADER_CRC_AT: usize = 52;
const FRAME_HEADER_LEN: usize = 48;
/// Records per segment in these tests (records are appended and synced one at a time).
const RECORDS_PER_SEGMENT: u64 = 4;

/// Record `n` opens account `n`: replay accepts any number of them in any order.
fn record(n: u64) -> Record {
    Record {
        account: AccountId(n),
        op: None,
        at: Timestamp(n),
        origin: Origin::default(),
        change: Change::Opened {
            spec: AccountSpec::user(),
        },
    }
}

fn config(dir: &Path) -> DurableConfig {
    let payload_len = tally_store::codec::encode_record(&record(1)).unwrap().len();
    let frame_len = (FRAME_HEADER_LEN + payload_len) as u64;
    DurableConfig {
        sync: SyncMode::None,
        segment_bytes_max: HEADER_LEN as u64 + RECORDS_PER_SEGMENT * frame_len,
        snapshot_cache_bytes: 1 << 20,
        ..DurableConfig::new(dir)
    }
}

fn try_open(dir: &Path) -> Result<DurableStore, StoreError> {
    DurableStore::open(config(dir)).map(|(store, _)| store)
}

fn open(dir: &Path) -> DurableStore {
    try_open(dir).unwrap()
}

fn verify(dir: &Path) -> TrailReport {
    verify_trail(dir).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Appends records `from..=to`, each made durable before the next (one group each).
fn append(store: &DurableStore, from: u64, to: u64) {
    for n in from..=to {
        let seq = store.append(&record(n)).unwrap();
        assert_eq!(seq, n);
        let mut durable = store.durable();
        block_on(durable.wait_for(|point| point.seq >= seq)).unwrap();
    }
}

/// Saves every account's snapshot and checkpoints: the segments before the newest move to
/// `archive/`, and the durable head becomes the anchor.
fn checkpoint(store: &DurableStore, accounts: u64) {
    for n in 1..=accounts {
        let account = store.load(AccountId(n)).unwrap().unwrap();
        store.save(&account).unwrap();
    }
    store.checkpoint().unwrap();
}

/// A closed store holding records 1..=10, checkpointed: `archive/` holds segments 1 (1..=4)
/// and 5 (5..=8), `journal/` segment 9 (9, 10); the anchor is at seq 10.
fn store_of_ten(dir: &Path) {
    let store = open(dir);
    append(&store, 1, 10);
    checkpoint(&store, 10);
    drop(store);
    assert_eq!(segments(&dir.join("archive")), [1, 5]);
    assert_eq!(segments(&dir.join("journal")), [9]);
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("journal-{first_seq:020}.log"))
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("journal-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    starts.sort_unstable();
    starts
}

/// Where each frame of a segment lies: (offset, frame length, seq).
fn frames(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap());
        out.push((offset, FRAME_HEADER_LEN + len, seq));
        offset += FRAME_HEADER_LEN + len;
    }
    out
}

fn frame_of(bytes: &[u8], seq: u64) -> (usize, usize) {
    let (offset, len, _) = frames(bytes)
        .into_iter()
        .find(|(_, _, s)| *s == seq)
        .unwrap();
    (offset, len)
}

/// Recomputes the crc32c of the frame at `offset` (length and seq, chain, payload).
fn reseal_frame(bytes: &mut [u8], offset: usize, frame_len: usize) {
    let crc = crc32c::crc32c(&bytes[offset..offset + 4]);
    let crc = crc32c::crc32c_append(crc, &bytes[offset + 8..offset + frame_len]);
    bytes[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Alters the last payload byte of record `seq` in `segment` and fixes the frame's checksum,
/// so that only the chain can tell.
fn alter_record(segment: &Path, seq: u64) {
    let mut bytes = fs::read(segment).unwrap();
    let (offset, len) = frame_of(&bytes, seq);
    bytes[offset + len - 1] ^= 0x01;
    reseal_frame(&mut bytes, offset, len);
    fs::write(segment, bytes).unwrap();
}

fn problems(dir: &Path) -> Vec<TrailProblem> {
    let report = verify(dir);
    assert_eq!(report.problems_total, report.problems.len() as u64);
    report.problems
}

#[test]
fn clean_store_with_archived_segments_verifies_and_the_chain_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let report = verify(dir.path());
    assert!(report.ok(), "{report}");

    let store = open(dir.path());
    append(&store, 11, 15);
    let report = store.verify_trail().unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (15, 1, 15)
    );
    let head = store.trail_head();
    assert_eq!((report.last_seq, report.head), head);
    checkpoint(&store, 15);
    drop(store);

    let report = verify(dir.path());
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (15, 1, 15)
    );
    assert_eq!(report.head, head.1);
    assert_eq!(report.head_hex().len(), 64);
    assert_eq!(report.anchors_checked, 1);
    assert!(report.segments >= 4, "{report}");
}

#[test]
fn altered_record_in_the_live_journal_refuses_open_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    alter_record(&segment_path(&dir.path().join("journal"), 9), 9);

    let error = try_open(dir.path()).err().unwrap();
    assert!(
        matches!(&error, StoreError::Corrupt(reason) if reason.contains("record seq 9: chain hash mismatch")),
        "{error}"
    );
    assert_eq!(problems(dir.path()), [TrailProblem::Altered { seq: 9 }]);
}

#[test]
fn altered_record_in_the_archive_is_found_by_both_verifies_while_open_still_works() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    alter_record(&segment_path(&dir.path().join("archive"), 5), 6);

    assert_eq!(problems(dir.path()), [TrailProblem::Altered { seq: 6 }]);
    let store = open(dir.path());
    let report = store.verify_trail().unwrap();
    assert_eq!(report.problems, [TrailProblem::Altered { seq: 6 }]);
    assert_eq!(report.last_seq, 10);
}

#[test]
fn removed_record_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let segment = segment_path(&dir.path().join("archive"), 5);
    let mut bytes = fs::read(&segment).unwrap();
    let (offset, len) = frame_of(&bytes, 6);
    bytes.drain(offset..offset + len);
    fs::write(&segment, bytes).unwrap();

    assert_eq!(
        problems(dir.path()),
        [TrailProblem::Missing {
            after_seq: 5,
            next_seq: 7
        }]
    );
}

#[test]
fn forged_record_with_a_valid_checksum_is_found_as_inserted() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let segment = segment_path(&dir.path().join("archive"), 5);
    let mut bytes = fs::read(&segment).unwrap();
    // A copy of record 7 with another payload, a made-up chain hash and a valid checksum,
    // placed before the real record 7.
    let (offset, len) = frame_of(&bytes, 7);
    let mut forged = bytes[offset..offset + len].to_vec();
    forged[16..48].copy_from_slice(&[0xab; 32]);
    forged[len - 1] ^= 0x01;
    reseal_frame(&mut forged, 0, len);
    bytes.splice(offset..offset, forged);
    fs::write(&segment, bytes).unwrap();

    let report = verify(dir.path());
    assert_eq!(report.problems, [TrailProblem::Inserted { seq: 7 }]);
    assert_eq!((report.records, report.last_seq), (11, 10));
}

#[test]
fn cut_tail_after_an_anchoring_checkpoint_is_truncated_and_refuses_open() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    // Records 11 and 12 are not in any snapshot: the checkpoint anchors them all the same.
    let store = open(dir.path());
    append(&store, 11, 12);
    store.checkpoint().unwrap();
    drop(store);
    // Remove record 12 cleanly: what is left is a consistent, shorter chain.
    let segment = segment_path(&dir.path().join("journal"), 9);
    let bytes = fs::read(&segment).unwrap();
    let (offset, _) = frame_of(&bytes, 12);
    fs::write(&segment, &bytes[..offset]).unwrap();

    assert_eq!(
        problems(dir.path()),
        [TrailProblem::Truncated { anchor_seq: 12 }]
    );
    let error = try_open(dir.path()).err().unwrap();
    assert!(
        matches!(&error, StoreError::Corrupt(reason) if reason.contains("up to seq 12")),
        "{error}"
    );
}

#[test]
fn relinked_segment_header_is_a_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let segment = segment_path(&dir.path().join("archive"), 5);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[20..HEADER_CRC_AT].copy_from_slice(&[0x11; 32]);
    let crc = crc32c::crc32c(&bytes[..HEADER_CRC_AT]);
    bytes[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    fs::write(&segment, bytes).unwrap();

    assert_eq!(
        problems(dir.path()),
        [TrailProblem::BrokenLink {
            segment_first_seq: 5
        }]
    );
}

#[test]
fn removed_archived_segment_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    fs::remove_file(segment_path(&dir.path().join("archive"), 5)).unwrap();

    assert_eq!(
        problems(dir.path()),
        [TrailProblem::Missing {
            after_seq: 4,
            next_seq: 9
        }]
    );
}

#[test]
fn flipped_bit_without_a_checksum_fix_is_altered() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let segment = segment_path(&dir.path().join("archive"), 5);
    let mut bytes = fs::read(&segment).unwrap();
    let (offset, len) = frame_of(&bytes, 6);
    bytes[offset + len - 2] ^= 0x10;
    fs::write(&segment, bytes).unwrap();

    assert_eq!(problems(dir.path()), [TrailProblem::Altered { seq: 6 }]);
}

#[test]
fn torn_tail_of_the_newest_segment_is_no_problem() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let segment = segment_path(&dir.path().join("journal"), 9);
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]); // a frame cut short by a crash
    fs::write(&segment, bytes).unwrap();

    let report = verify(dir.path());
    assert!(report.ok(), "{report}");
    assert_eq!((report.last_seq, report.torn_tail_bytes), (10, 6));
}

#[test]
fn journal_chain_follows_the_documented_formula_across_groups_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes_max: 512,
        group_records_max: 7,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _) = Journal::open(config, |_, _| Ok(())).unwrap();
    let mut head = [0u8; 32];
    let mut last = 0;
    for seq in 1..=100u64 {
        let payload = vec![u8::try_from(seq).unwrap(); usize::try_from(seq % 40).unwrap()];
        last = journal.append(&payload).unwrap();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        hasher.update(&seq.to_le_bytes());
        hasher.update(&payload);
        head = *hasher.finalize().as_bytes();
    }
    block_on(journal.wait_durable(last)).unwrap();
    assert_eq!(journal.trail_head(), (100, head));
    let report = journal.verify_trail(None, &[], None).unwrap();
    assert!(report.ok(), "{report}");
    journal.close().unwrap();

    let report = verify_segments(&[dir.path()], &[(100, head)], None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.records, report.head), (100, head));
    assert!(report.segments > 3, "{report}");
    // Reopened, the chain goes on from the last record.
    let (journal, _) = Journal::open(JournalConfig::new(dir.path()), |_, _| Ok(())).unwrap();
    assert_eq!(journal.trail_head(), (100, head));
}

#[test]
fn open_store_sees_a_record_altered_under_it_and_refuses_a_second_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, 1, 6);
    alter_record(&segment_path(&dir.path().join("journal"), 5), 6);

    let report = store.verify_trail().unwrap();
    assert_eq!(report.problems, [TrailProblem::Altered { seq: 6 }]);
    assert!(matches!(
        verify_trail(dir.path()),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn mem_store_chain_matches_the_durable_store_and_finds_a_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    let durable = open(dir.path());
    let mem = MemStore::default();
    append(&durable, 1, 6);
    for n in 1..=6 {
        mem.append(&record(n)).unwrap();
    }
    assert_eq!(mem.trail_head(), durable.trail_head());
    let report = mem.verify_trail().unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.head, durable.verify_trail().unwrap().head);

    assert!(mem.tamper_record(3, record(33)));
    let report = mem.verify_trail().unwrap();
    assert_eq!(report.problems, [TrailProblem::Altered { seq: 3 }]);
}

// Salvage: inspect reports, salvage cuts back to the last verified record after a copy.

#[test]
fn salvage_of_a_clean_store_reports_nothing_to_do_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let report = tally_store::salvage::inspect(dir.path()).unwrap();
    assert!(!report.needed(), "{report}");
    assert_eq!((report.prefix.first_seq, report.prefix.last_seq), (1, 10));
    assert_eq!(report.anchored_seq, 10);
    assert!(
        report.to_string().contains("nothing to salvage"),
        "{report}"
    );
    let inside = dir.path().join("copy");
    let refused = tally_store::salvage::salvage(config(dir.path()), &inside).unwrap_err();
    assert!(
        refused.to_string().contains("inside the data directory"),
        "{refused}"
    );
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("copy");
    let done = tally_store::salvage::salvage(config(dir.path()), &copy).unwrap();
    assert!(done.is_none());
    assert!(!copy.exists(), "nothing kept when nothing is to be done");
    drop(open(dir.path()));
}

#[test]
fn salvage_reports_the_acknowledged_records_at_risk_then_cuts_and_rebuilds_after_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    store_of_ten(&data);
    // More records after the checkpoint, then damage in the middle of the live journal.
    let store = open(&data);
    append(&store, 11, 14);
    store.close().unwrap();
    drop(store);
    let live = segment_path(&data.join("journal"), 9);
    let mut bytes = fs::read(&live).unwrap();
    let (offset, _) = frame_of(&bytes, 12);
    bytes[offset + FRAME_HEADER_LEN] ^= 0xff;
    fs::write(&live, &bytes).unwrap();
    let damaged = fs::read(&live).unwrap();
    assert!(matches!(try_open(&data), Err(StoreError::Corrupt(_))));

    let report = tally_store::salvage::inspect(&data).unwrap();
    assert!(report.needed(), "{report}");
    assert_eq!(report.prefix.last_seq, 11);
    assert_eq!(report.anchored_seq, 14);
    assert_eq!(report.vouched_at_risk(), Some((12, 14)));
    let cut = report.prefix.cut.as_ref().unwrap();
    assert_eq!(
        (cut.segment.as_path(), cut.offset),
        (live.as_path(), offset as u64)
    );
    assert_eq!(
        report.prefix.frames_after, 2,
        "13 and 14 still decode: {report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("AT RISK: acknowledged records 12..=14"),
        "{text}"
    );

    // The copy must be new.
    let taken = dir.path().join("taken");
    fs::create_dir(&taken).unwrap();
    let refused = tally_store::salvage::salvage(config(&data), &taken).unwrap_err();
    assert!(refused.to_string().contains("exists already"), "{refused}");
    assert_eq!(
        fs::read(&live).unwrap(),
        damaged,
        "a refusal changes nothing"
    );

    let copy = dir.path().join("copy");
    // Asked to rebuild under other limits, salvage keeps the ledger's own (recorded at open).
    let mut other = config(&data);
    other.limits.idempotency_keys_max = 5;
    let done = tally_store::salvage::salvage(other, &copy)
        .unwrap()
        .unwrap();
    assert!(done.used_recorded_limits);
    assert_eq!(done.kept_through, 11);
    assert_eq!(done.recovery.records_replayed, 11, "rebuilt from seq 1");
    // The copy holds the directory as it was, damage included.
    assert_eq!(
        fs::read(copy.join("journal").join(live.file_name().unwrap())).unwrap(),
        damaged
    );
    assert!(copy.join("snapshots").is_dir());

    // The ledger serves again: records 1..=11, every account opened by them, none after.
    let report = verify(&data);
    assert!(report.ok(), "{report}");
    assert_eq!((report.first_seq, report.last_seq), (1, 11));
    let store = open(&data);
    assert_eq!(store.accounts().unwrap().len(), 11);
    assert!(store.load(AccountId(11)).unwrap().is_some());
    assert!(store.load(AccountId(12)).unwrap().is_none());
    assert_eq!(
        store.append(&record(12)).unwrap(),
        12,
        "the trail continues at 12"
    );
}

#[test]
fn salvage_is_refused_while_a_store_has_the_directory_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    append(&store, 1, 3);
    let error = tally_store::salvage::inspect(dir.path()).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    let error =
        tally_store::salvage::salvage(config(dir.path()), &dir.path().join("c")).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    assert!(!dir.path().join("c").exists());
}

#[test]
fn salvage_takes_a_torn_tail_past_the_anchor_for_what_it_is_and_an_anchored_cut_as_loss() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let live = segment_path(&dir.path().join("journal"), 9);
    let mut bytes = fs::read(&live).unwrap();
    let intact = bytes.clone();
    bytes.extend_from_slice(&[0x5a; 20]);
    fs::write(&live, &bytes).unwrap();
    let report = tally_store::salvage::inspect(dir.path()).unwrap();
    assert!(report.prefix.torn_tail && !report.needed(), "{report}");
    assert!(report.to_string().contains("a torn tail"), "{report}");

    // Record 10, vouched for by the anchor, cut off: a loss, not a torn tail.
    let (offset, _) = frame_of(&intact, 10);
    fs::write(&live, &intact[..offset + 7]).unwrap();
    let report = tally_store::salvage::inspect(dir.path()).unwrap();
    assert!(report.needed(), "{report}");
    assert_eq!(report.vouched_at_risk(), Some((10, 10)));
}

// Retention: pruning the oldest archived segments keeps history, and the trail, consistent.

#[test]
fn pruned_history_is_reported_as_pruned_and_the_trail_verifies_from_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let store = open(dir.path());
    let pruned = store.prune_history(5).unwrap();
    assert_eq!(
        (pruned.segments, pruned.records, pruned.pruned_through),
        (1, 4, 4)
    );
    assert_eq!(pruned.accounts, 4, "records 1..=4 opened accounts 1..=4");
    assert_eq!(segments(&dir.path().join("archive")), [5]);
    let report = store.verify_trail().unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.pruned_through, 4);
    assert!(store.history(AccountId(2), 0, 10).unwrap().is_empty());
    let six = store.history(AccountId(6), 0, 10).unwrap();
    assert_eq!(six.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    assert_eq!(store.history_base(AccountId(2)).unwrap().pruned_through, 4);
    // A second prune before the same point does nothing.
    assert_eq!(store.prune_history(5).unwrap().segments, 0);
    drop(store);

    let report = verify(dir.path());
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.pruned_through, report.first_seq, report.last_seq),
        (4, 5, 10)
    );
    assert!(
        report.to_string().contains("records 1 ..= 4 pruned"),
        "{report}"
    );
    // The journal is never pruned: only archived segments go.
    let store = open(dir.path());
    let pruned = store.prune_history(u64::MAX).unwrap();
    assert_eq!((pruned.segments, pruned.pruned_through), (1, 8));
    assert_eq!(segments(&dir.path().join("journal")), [9]);
    assert_eq!(
        store.load(AccountId(10)).unwrap().unwrap().id,
        AccountId(10)
    );
    assert!(store.verify_trail().unwrap().ok());
}

#[test]
fn a_prune_of_a_damaged_range_is_refused_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let archived = segment_path(&dir.path().join("archive"), 1);
    alter_record(&archived, 2);
    let store = open(dir.path());
    let error = store.prune_history(5).unwrap_err();
    assert!(
        matches!(error, StoreError::Corrupt(_)) && error.to_string().contains("refusing to prune"),
        "{error}"
    );
    assert_eq!(segments(&dir.path().join("archive")), [1, 5]);
    assert_eq!(store.history_base(AccountId(2)).unwrap().pruned_through, 0);
}

#[test]
fn a_segment_left_by_an_interrupted_prune_is_skipped_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    let archived = segment_path(&dir.path().join("archive"), 1);
    let kept = fs::read(&archived).unwrap();
    let store = open(dir.path());
    store.prune_history(5).unwrap();
    // As if the process died after recording the prune, before removing the file.
    fs::write(&archived, &kept).unwrap();
    let report = store.verify_trail().unwrap();
    assert!(report.ok(), "{report}");
    assert!(store.history(AccountId(2), 0, 10).unwrap().is_empty());
    let again = store.prune_history(5).unwrap();
    assert_eq!(
        (again.segments, again.records),
        (0, 0),
        "nothing counted twice"
    );
    assert!(!archived.exists(), "the leftover went");
}

#[test]
fn a_record_encoded_into_a_reused_buffer_is_the_same_bytes_and_decodes() {
    let mut buffer = vec![0xAA; 700];
    for n in [1, 2, 1_000_000] {
        tally_store::codec::encode_record_into(&record(n), &mut buffer).unwrap();
        let fresh = tally_store::codec::encode_record(&record(n)).unwrap();
        assert_eq!(buffer, fresh, "record {n}");
        assert_eq!(
            tally_store::codec::decode_record(&buffer).unwrap(),
            record(n)
        );
    }
}

// Compaction: open shortens a snapshot database file that grew past its data.

fn snapshot_file_len(dir: &Path) -> u64 {
    fs::metadata(dir.join("snapshots").join("tally.redb"))
        .unwrap()
        .len()
}

fn compacting(dir: &Path) -> DurableConfig {
    DurableConfig {
        snapshot_compact_slack: 256 << 10,
        ..config(dir)
    }
}

#[test]
fn open_compacts_a_grown_snapshot_database_and_keeps_every_account() {
    let dir = tempfile::tempdir().unwrap();
    let (store, first) = DurableStore::open(compacting(dir.path())).unwrap();
    assert_eq!(first.snapshots_compacted, None);
    let mut durable = store.durable();
    for n in 1..=100 {
        let seq = store.append(&record(n)).unwrap();
        block_on(durable.wait_for(|point| point.seq >= seq)).unwrap();
    }
    store.checkpoint().unwrap();
    let before: Vec<_> = (1..=100)
        .map(|n| store.load(AccountId(n)).unwrap().unwrap())
        .collect();
    store.close().unwrap();
    drop(store);
    // The file grows by 8 MiB that are then freed (as after a burst of remembered keys that
    // were later forgotten): redb reuses freed pages but never shortens the file itself.
    let file = dir.path().join("snapshots").join("tally.redb");
    let db = redb::Database::open(&file).unwrap();
    let scratch = redb::TableDefinition::<u64, &[u8]>::new("scratch");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(scratch).unwrap();
        for n in 0..2048u64 {
            table.insert(n, &[7u8; 4096][..]).unwrap();
        }
    }
    txn.commit().unwrap();
    // Something written after it, so the freed pages are not the file's tail (which redb
    // may give back by itself).
    let tail = redb::TableDefinition::<u64, &[u8]>::new("tail");
    let txn = db.begin_write().unwrap();
    txn.open_table(tail)
        .unwrap()
        .insert(0, &[1u8; 64][..])
        .unwrap();
    txn.commit().unwrap();
    let txn = db.begin_write().unwrap();
    txn.delete_table(scratch).unwrap();
    txn.commit().unwrap();
    drop(db);
    let grown = snapshot_file_len(dir.path());
    assert!(grown > 8 << 20, "{grown}");

    let (store, recovery) = DurableStore::open(compacting(dir.path())).unwrap();
    let (was, now) = recovery.snapshots_compacted.expect("compacted");
    assert!(was == grown && now < grown / 4, "{grown}: {was} -> {now}");
    assert!(
        snapshot_file_len(dir.path()) < grown / 4,
        "and recovery's writes after it"
    );
    let after: Vec<_> = (1..=100)
        .map(|n| store.load(AccountId(n)).unwrap().unwrap())
        .collect();
    assert_eq!(after, before);
    assert!(store.verify_trail().unwrap().ok());
    store.close().unwrap();
    drop(store);
    // Just compacted: the next open leaves it alone.
    let (_store, recovery) = DurableStore::open(compacting(dir.path())).unwrap();
    assert_eq!(recovery.snapshots_compacted, None);
}

#[test]
fn a_snapshot_database_of_the_earlier_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    fs::create_dir_all(&snapshots).unwrap();
    fs::write(snapshots.join("conf"), b"segment_size: 524288\n").unwrap();
    fs::write(snapshots.join("db"), b"sled").unwrap();
    let Err(error) = DurableStore::open(config(dir.path())) else {
        panic!("opened a directory it cannot read");
    };
    let text = error.to_string();
    assert!(matches!(error, StoreError::Corrupt(_)), "{text}");
    assert!(
        text.contains("sled") && text.contains("snapshots"),
        "{text}"
    );
    assert_eq!(
        fs::read(snapshots.join("db")).unwrap(),
        b"sled",
        "untouched"
    );
    assert!(!snapshots.join("tally.redb").exists());
    // The lock is released: the same process may open another directory at once.
    assert!(DurableStore::open(config(&dir.path().join("other"))).is_ok());
}

#[test]
fn salvage_reads_segments_split_between_archive_and_journal_by_an_interrupted_salvage() {
    let dir = tempfile::tempdir().unwrap();
    store_of_ten(dir.path());
    // As if a salvage died after moving archived segment 5 back into the journal.
    let moved = segment_path(&dir.path().join("journal"), 5);
    fs::rename(segment_path(&dir.path().join("archive"), 5), &moved).unwrap();
    let report = tally_store::salvage::inspect(dir.path()).unwrap();
    assert_eq!(
        (report.prefix.first_seq, report.prefix.last_seq),
        (1, 10),
        "{report}"
    );
    assert!(report.prefix.cut.is_none(), "{report}");
}
