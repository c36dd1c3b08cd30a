//! The journal's rules, each as a scenario: replay, sequence numbers, durability, segments,
//! torn tails versus corruption, locking, fail-stop, limits, and a real `kill -9`.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_store::journal::{
    ceiling, Journal, JournalConfig, JournalError, Recovery, SyncMode, RECORD_BYTES_MAX,
};

/// Segment header and record frame header sizes, from the format in the module docs.
const HEADER_LEN: u64 = 56;
const FRAME_HEADER_LEN: u64 = 48;
/// A frame of one of the first nine records: [`payload`] gives them 8 bytes.
const SMALL_FRAME_LEN: u64 = FRAME_HEADER_LEN + 8;

type Records = Vec<(u64, Vec<u8>)>;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn open(config: JournalConfig) -> (Journal, Recovery, Records) {
    open_after(config, 0)
}

fn open_after(config: JournalConfig, after: u64) -> (Journal, Recovery, Records) {
    let mut records = Vec::new();
    let (journal, recovery) = Journal::open_after(config, after, |seq, payload| {
        records.push((seq, payload.to_vec()));
        Ok(())
    })
    .unwrap();
    (journal, recovery, records)
}

fn open_err(config: JournalConfig) -> JournalError {
    Journal::open(config, |_, _| Ok(())).unwrap_err()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn wait(journal: &Journal, seq: u64) -> Result<(), JournalError> {
    block_on(journal.wait_durable(seq))
}

fn payload(seq: u64) -> Vec<u8> {
    format!("record {seq}").into_bytes()
}

/// Appends `count` records with [`payload`] contents, each synced as its own group.
fn append_synced(journal: &Journal, count: u64) {
    for _ in 0..count {
        let seq = journal.append(&payload(journal.last_seq() + 1)).unwrap();
        wait(journal, seq).unwrap();
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with("journal-") && name.ends_with(".log")
        })
        .collect();
    files.sort();
    files
}

fn assert_records(records: &Records, seqs: std::ops::RangeInclusive<u64>) {
    let expected: Records = seqs.map(|seq| (seq, payload(seq))).collect();
    assert_eq!(records, &expected);
}

#[test]
fn append_then_reopen_replays_every_record_in_order() {
    let dir = tempdir();
    let (journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert_eq!((recovery.last_seq, recovery.records), (0, 0));
    assert!(records.is_empty());
    for seq in 1..=100 {
        assert_eq!(journal.append(&payload(seq)).unwrap(), seq);
    }
    wait(&journal, 100).unwrap();
    journal.close().unwrap();

    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=100);
    assert_eq!(
        (
            recovery.last_seq,
            recovery.records,
            recovery.torn_tail_bytes
        ),
        (100, 100, 0)
    );
}

#[test]
fn sequence_continues_after_reopen() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 3);
    journal.close().unwrap();

    let (journal, recovery, _) = open(JournalConfig::new(dir.path()));
    assert_eq!(recovery.last_seq, 3);
    assert_eq!(journal.last_seq(), 3);
    assert_eq!(
        *journal.durable().borrow(),
        tally_store::journal::Durable {
            seq: 3,
            failed: None
        }
    );
    assert_eq!(journal.append(&payload(4)).unwrap(), 4);
    journal.close().unwrap();

    let (_journal, _, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=4);
}

#[test]
fn empty_payload_is_a_record() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let seq = journal.append(b"").unwrap();
    wait(&journal, seq).unwrap();
    journal.close().unwrap();
    let (_journal, _, records) = open(JournalConfig::new(dir.path()));
    assert_eq!(records, vec![(1, Vec::new())]);
}

#[test]
fn wait_durable_returns_after_sync() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    journal.set_committer_paused(true);
    let seq = journal.append(b"held back").unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let waited = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), journal.wait_durable(seq)).await
    });
    assert!(waited.is_err(), "durable before the committer synced");
    assert_eq!(journal.durable().borrow().seq, 0);

    journal.set_committer_paused(false);
    runtime.block_on(journal.wait_durable(seq)).unwrap();
    assert!(journal.durable().borrow().seq >= seq);
}

#[test]
fn dropping_the_last_handle_syncs_queued_records() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let clone = journal.clone();
    for seq in 1..=50 {
        clone.append(&payload(seq)).unwrap();
    }
    drop(journal);
    drop(clone);
    let (_journal, _, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=50);
}

#[test]
fn appends_from_many_threads_get_contiguous_unique_sequence_numbers() {
    let dir = tempdir();
    let config = JournalConfig {
        sync: SyncMode::None,
        group_records_max: 7,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config.clone());
    let written: Vec<(u64, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|thread| {
                let journal = journal.clone();
                scope.spawn(move || {
                    (0..500)
                        .map(|i| {
                            let body = format!("thread {thread} record {i}").into_bytes();
                            (journal.append(&body).unwrap(), body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    journal.close().unwrap();

    let mut written = written;
    written.sort();
    let (_journal, _, records) = open(config);
    assert_eq!(records.len(), 2000);
    assert_eq!(records, written);
}

#[test]
fn segment_rollover_and_trim_before_removes_only_old_segments() {
    let dir = tempdir();
    // "record N" payloads are 8-9 bytes: 3 one-record groups fit a 100-byte segment, 4 do not.
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 3 * (FRAME_HEADER_LEN + 9),
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config.clone());
    append_synced(&journal, 12);
    let names = |dir: &Path| -> Vec<String> {
        segment_files(dir)
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(dir.path()),
        [1, 4, 7, 10].map(|seq| format!("journal-{seq:020}.log"))
    );

    // Segments 1 (1..=3) and 4 (4..=6) hold only seq < 7; segment 7 holds 7.
    assert_eq!(journal.trim_before(7).unwrap(), 2);
    assert_eq!(
        names(dir.path()),
        [7, 10].map(|seq| format!("journal-{seq:020}.log"))
    );
    // The active segment is never removed.
    assert_eq!(journal.trim_before(1_000).unwrap(), 1);
    assert_eq!(names(dir.path()), [format!("journal-{:020}.log", 10)]);
    journal.close().unwrap();

    let (_journal, recovery, records) = open_after(config, 9);
    assert_records(&records, 10..=12);
    assert_eq!(recovery.segments, 1);
}

#[test]
fn open_without_a_covering_snapshot_after_trim_is_refused() {
    let dir = tempdir();
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + FRAME_HEADER_LEN + 9,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config.clone());
    append_synced(&journal, 3);
    assert_eq!(journal.trim_before(3).unwrap(), 2);
    journal.close().unwrap();

    let error = open_err(config.clone());
    assert!(
        matches!(
            error,
            JournalError::Trimmed {
                first_seq: 3,
                after: 0,
                ..
            }
        ),
        "{error}"
    );
    assert!(matches!(
        Journal::open_after(config, 1, |_, _| Ok(())),
        Err(JournalError::Trimmed {
            first_seq: 3,
            after: 1,
            ..
        })
    ));
}

#[test]
fn open_after_skips_covered_records() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 10);
    journal.close().unwrap();

    let (journal, recovery, records) = open_after(JournalConfig::new(dir.path()), 6);
    assert_records(&records, 7..=10);
    assert_eq!(
        (
            recovery.records,
            recovery.records_skipped,
            recovery.last_seq
        ),
        (4, 6, 10)
    );
    assert_eq!(journal.append(b"next").unwrap(), 11);
}

#[test]
fn open_after_on_an_empty_directory_starts_after_the_snapshot() {
    let dir = tempdir();
    let (journal, recovery, _) = open_after(JournalConfig::new(dir.path()), 41);
    assert_eq!(recovery.last_seq, 41);
    assert_eq!(journal.append(&payload(42)).unwrap(), 42);
    journal.close().unwrap();
    let (_journal, _, records) = open_after(JournalConfig::new(dir.path()), 41);
    assert_records(&records, 42..=42);
}

#[test]
fn snapshot_ahead_of_the_journal_is_refused() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 2);
    journal.close().unwrap();
    let error = Journal::open_after(JournalConfig::new(dir.path()), 5, |_, _| Ok(())).unwrap_err();
    assert!(matches!(error, JournalError::Corrupt { .. }), "{error}");
}

#[test]
fn replay_error_aborts_open_naming_the_record() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 3);
    journal.close().unwrap();

    let error = Journal::open(JournalConfig::new(dir.path()), |seq, _| {
        if seq == 2 {
            Err("bad account".to_owned())
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(&error, JournalError::Replay { seq: 2, reason } if reason == "bad account"));
    // The failed open released the lock.
    open(JournalConfig::new(dir.path()));
}

/// What a crash would leave of an open journal: a copy of its segments and its anchor as they
/// are on disk now (the lock file is not copied; the running journal never writes the copy).
fn crash_image(dir: &Path) -> tempfile::TempDir {
    let image = tempdir();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if name != "LOCK" {
            fs::copy(&path, image.path().join(name)).unwrap();
        }
    }
    image
}

fn cut(path: &Path, bytes: u64) {
    let len = fs::metadata(path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - bytes)
        .unwrap();
}

fn never_anchoring(dir: &Path) -> JournalConfig {
    let mut config = JournalConfig::new(dir);
    config.anchor_interval = Duration::from_secs(3600);
    config
}

#[test]
fn torn_tail_past_the_anchor_is_truncated_and_reopen_succeeds() {
    let dir = tempdir();
    // The anchor stays where open put it (seq 0): records 1..=10 are durable but not vouched
    // for, as the newest records are when a process dies within an anchor interval.
    let (journal, _, _) = open(never_anchoring(dir.path()));
    append_synced(&journal, 10);
    let image = crash_image(dir.path());
    journal.close().unwrap();

    let segment = segment_files(image.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    let last_frame = FRAME_HEADER_LEN + payload(10).len() as u64;
    cut(&segment, 5);

    let (journal, recovery, records) = open(JournalConfig::new(image.path()));
    assert_records(&records, 1..=9);
    assert_eq!(recovery.torn_tail_bytes, last_frame - 5);
    assert_eq!(recovery.anchored_seq, 0);
    assert_eq!(fs::metadata(&segment).unwrap().len(), len - last_frame);
    assert_eq!(journal.append(&payload(10)).unwrap(), 10);
    journal.close().unwrap();

    let (_journal, recovery, records) = open(JournalConfig::new(image.path()));
    assert_records(&records, 1..=10);
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.anchored_seq, 10);
}

fn corrupt_reason(error: JournalError) -> (PathBuf, String) {
    match error {
        JournalError::Corrupt {
            segment, reason, ..
        } => (segment, reason),
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn a_cut_acknowledged_record_refuses_open_naming_the_range_at_risk() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 10);
    journal.close().unwrap(); // close anchors seq 10
    let segment = segment_files(dir.path()).pop().unwrap();
    cut(&segment, 5);

    let (named, reason) = corrupt_reason(open_err(JournalConfig::new(dir.path())));
    assert_eq!(named, segment);
    assert!(reason.contains("records 10..=10"), "{reason}");
    // Nothing was truncated: the damage is left for salvage to look at.
    let (named, _) = corrupt_reason(open_err(JournalConfig::new(dir.path())));
    assert_eq!(named, segment);
}

#[test]
fn a_flipped_byte_in_the_last_acknowledged_record_is_damage_not_a_torn_tail() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 10);
    journal.close().unwrap();
    let segment = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    flip_byte(&segment, len - 2);

    let (_, reason) = corrupt_reason(open_err(JournalConfig::new(dir.path())));
    assert!(reason.contains("record seq 10"), "{reason}");
}

#[test]
fn an_idle_journal_anchors_within_its_interval() {
    let dir = tempdir();
    let mut config = JournalConfig::new(dir.path());
    config.anchor_interval = Duration::from_millis(20);
    let (journal, _, _) = open(config);
    append_synced(&journal, 5);
    // No more appends: the committer moves the anchor on its own once the interval passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let image = loop {
        let image = crash_image(dir.path());
        let seg = segment_files(image.path()).pop().unwrap();
        cut(&seg, 3);
        if Journal::open(JournalConfig::new(image.path()), |_, _| Ok(())).is_err() {
            break image;
        }
        assert!(Instant::now() < deadline, "the anchor never reached seq 5");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (_, reason) = corrupt_reason(open_err(JournalConfig::new(image.path())));
    assert!(reason.contains("records 5..=5"), "{reason}");
    journal.close().unwrap();
}

#[test]
fn a_removed_newest_segment_is_refused() {
    let dir = tempdir();
    let mut config = JournalConfig::new(dir.path());
    config.segment_bytes_max = HEADER_LEN + 2 * SMALL_FRAME_LEN;
    let (journal, _, _) = open(config.clone());
    append_synced(&journal, 6);
    journal.close().unwrap();
    let newest = segment_files(dir.path()).pop().unwrap();
    fs::remove_file(&newest).unwrap();

    let (_, reason) = corrupt_reason(open_err(config));
    assert!(reason.contains("ends at seq 4"), "{reason}");
    assert!(reason.contains("records 5..=6"), "{reason}");
}

#[test]
fn a_journal_emptied_of_its_segments_is_refused() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 3);
    journal.close().unwrap();
    for segment in segment_files(dir.path()) {
        fs::remove_file(segment).unwrap();
    }
    let (named, reason) = corrupt_reason(open_err(JournalConfig::new(dir.path())));
    assert_eq!(named, dir.path());
    assert!(reason.contains("records 1..=3"), "{reason}");
}

#[test]
fn segments_without_their_anchor_file_are_refused() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 3);
    journal.close().unwrap();
    fs::remove_file(
        dir.path()
            .join(tally_store::journal::anchor::ANCHOR_FILE_NAME),
    )
    .unwrap();
    let (named, reason) = corrupt_reason(open_err(JournalConfig::new(dir.path())));
    assert!(named.ends_with("ANCHOR"), "{}", named.display());
    assert!(reason.contains("no anchor file"), "{reason}");
}

#[test]
fn torn_frame_header_is_a_torn_tail() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 2);
    journal.close().unwrap();
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&[9, 0, 0]).unwrap(); // 3 bytes of a 48-byte frame header
    drop(file);

    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=2);
    assert_eq!(recovery.torn_tail_bytes, 3);
}

#[test]
fn garbage_appended_after_last_record_is_treated_as_torn_tail() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 5);
    journal.close().unwrap();

    let segment = segment_files(dir.path()).pop().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=5);
    assert_eq!(recovery.torn_tail_bytes, 4096);
}

#[test]
fn zero_filled_tail_is_a_torn_tail() {
    // What a crash can leave when the file size reached the disk but the data did not.
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 3);
    journal.close().unwrap();
    let segment = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len + (64 << 10))
        .unwrap();

    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert_records(&records, 1..=3);
    assert_eq!(recovery.torn_tail_bytes, 64 << 10);
    assert_eq!(fs::metadata(&segment).unwrap().len(), len);
}

#[test]
fn journal_handles_and_waits_cross_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    assert_send_sync(&journal);
    assert_send(&journal.wait_durable(1));
}

#[test]
fn corrupt_record_in_the_middle_refuses_to_open() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 5);
    journal.close().unwrap();

    // Records 1..=5 have 8-byte payloads. Flip a payload byte of record 2.
    let segment = segment_files(dir.path()).pop().unwrap();
    let record_2_offset = HEADER_LEN + SMALL_FRAME_LEN;
    flip_byte(&segment, record_2_offset + FRAME_HEADER_LEN + 3);

    let error = open_err(JournalConfig::new(dir.path()));
    match &error {
        JournalError::Corrupt {
            segment: path,
            offset,
            ..
        } => {
            assert_eq!((path, *offset), (&segment, record_2_offset));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&segment.display().to_string())
            && message.contains(&record_2_offset.to_string()),
        "{message}"
    );
}

#[test]
fn corrupt_record_in_an_older_segment_refuses_to_open() {
    let dir = tempdir();
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 2 * SMALL_FRAME_LEN,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config.clone());
    append_synced(&journal, 5);
    journal.close().unwrap();

    // The last record of the first segment would look torn if that segment were the newest.
    let first = segment_files(dir.path()).remove(0);
    flip_byte(&first, HEADER_LEN + SMALL_FRAME_LEN + FRAME_HEADER_LEN);
    let error = open_err(config);
    let record_2_offset = HEADER_LEN + SMALL_FRAME_LEN;
    assert!(
        matches!(&error, JournalError::Corrupt { segment, offset, .. }
            if *segment == first && *offset == record_2_offset),
        "{error}"
    );
}

#[test]
fn missing_segment_in_the_middle_is_a_gap() {
    let dir = tempdir();
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 2 * SMALL_FRAME_LEN,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config.clone());
    append_synced(&journal, 6);
    journal.close().unwrap();
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3);
    fs::remove_file(&segments[1]).unwrap();

    let error = open_err(config);
    assert!(
        matches!(&error, JournalError::Corrupt { segment, offset: 0, .. } if *segment == segments[2]),
        "{error}"
    );
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[usize::try_from(offset).unwrap()] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn second_open_of_same_dir_is_locked() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let error = open_err(JournalConfig::new(dir.path()));
    assert!(matches!(&error, JournalError::Locked { dir: locked } if locked == dir.path()));
    assert!(error
        .to_string()
        .contains(&dir.path().display().to_string()));

    journal.close().unwrap();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    drop(journal);
    open(JournalConfig::new(dir.path()));
}

#[test]
fn failed_sync_fail_stops_and_refuses_appends() {
    let dir = tempdir();
    let config = JournalConfig {
        fail_after_syncs: Some(2),
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    append_synced(&journal, 2);

    let seq = journal.append(&payload(3)).unwrap();
    let error = wait(&journal, seq).unwrap_err();
    assert!(
        matches!(&error, JournalError::Failed(reason) if reason.contains("fail_after_syncs")),
        "{error}"
    );
    let durable = journal.durable().borrow().clone();
    assert_eq!(
        durable.seq, 2,
        "the durable point never passes what was synced"
    );
    assert!(durable.failed.is_some());
    assert!(matches!(
        journal.append(b"after"),
        Err(JournalError::Failed(_))
    ));
    assert!(
        wait(&journal, 2).is_ok(),
        "records synced before the failure stay durable"
    );
    assert!(matches!(journal.close(), Err(JournalError::Failed(_))));

    // A restart recovers: every acknowledged record is there, the sequence stays contiguous.
    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    assert!(recovery.last_seq >= 2);
    assert_records(&records[..2].to_vec(), 1..=2);
    assert_eq!(records.len() as u64, recovery.last_seq);
}

#[test]
fn full_queue_returns_full() {
    let dir = tempdir();
    let config = JournalConfig {
        queue_records_max: 4,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    journal.set_committer_paused(true);
    for seq in 1..=4 {
        assert_eq!(journal.append(&payload(seq)).unwrap(), seq);
    }
    assert!(matches!(
        journal.append(b"fifth"),
        Err(JournalError::Full {
            queued: 4,
            limit: 4
        })
    ));
    assert_eq!(
        journal.last_seq(),
        4,
        "a refused append takes no sequence number"
    );

    journal.set_committer_paused(false);
    wait(&journal, 4).unwrap();
    assert_eq!(journal.append(&payload(5)).unwrap(), 5);
}

#[test]
fn full_queue_bytes_returns_full_bytes_but_admits_one_record_into_an_empty_queue() {
    let dir = tempdir();
    let config = JournalConfig {
        queue_bytes_max: 100,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    journal.set_committer_paused(true);
    journal.append(&[1u8; 500]).unwrap();
    assert!(matches!(
        journal.append(b"x"),
        Err(JournalError::FullBytes {
            bytes_queued: 548,
            bytes_max: 100
        })
    ));
    journal.set_committer_paused(false);
    wait(&journal, 1).unwrap();
    journal.append(b"x").unwrap();
}

#[test]
fn too_large_payload_rejected() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig {
        sync: SyncMode::None,
        ..JournalConfig::new(dir.path())
    });
    let big = vec![7u8; RECORD_BYTES_MAX + 1];
    assert!(matches!(
        journal.append(&big),
        Err(JournalError::TooLarge { len, max: RECORD_BYTES_MAX }) if len == RECORD_BYTES_MAX + 1
    ));
    let seq = journal.append(&big[..RECORD_BYTES_MAX]).unwrap();
    assert_eq!(seq, 1, "the refused payload took no sequence number");
    journal.close().unwrap();
    let (_journal, _, records) = open(JournalConfig::new(dir.path()));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.len(), RECORD_BYTES_MAX);
}

#[test]
fn appends_after_close_are_refused() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let other = journal.clone();
    journal.close().unwrap();
    assert!(matches!(other.append(b"late"), Err(JournalError::Closed)));
    assert!(matches!(wait(&other, 1), Err(JournalError::Closed)));
    assert!(matches!(other.trim_before(1), Err(JournalError::Closed)));
}

#[test]
fn invalid_config_is_refused() {
    let dir = tempdir();
    let error = open_err(JournalConfig {
        group_records_max: 0,
        ..JournalConfig::new(dir.path())
    });
    assert!(matches!(&error, JournalError::Config(reason) if reason.contains("group_records_max")));
}

#[test]
fn ceilings_measure_and_clean_up() {
    let dir = tempdir();
    let syncs = ceiling::fdatasync_rate(dir.path(), Duration::from_millis(20)).unwrap();
    let records =
        ceiling::group_commit_rate(dir.path(), 100, 64, Duration::from_millis(20)).unwrap();
    assert!(syncs > 0.0 && records > 0.0);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp files removed"
    );
}

/// Set in the child process of [`acknowledged_records_survive_sigkill`]: the journal directory.
const CRASH_DIR_ENV: &str = "TALLY_JOURNAL_CRASH_WRITER_DIR";

/// Not a test on its own: the writer half of [`acknowledged_records_survive_sigkill`], run in a
/// child process. Appends batches of records, pipelined (batch k+1 is queued before batch k is
/// waited for, so a group is always in flight), and prints `ACK seq` for each record once it is
/// durable.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let (journal, recovery) = Journal::open(JournalConfig::new(dir), |_, _| Ok(())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut stdout = std::io::stdout();
    stdout.write_all(b"\n").unwrap(); // end the test harness's line
    let started = Instant::now();
    let mut seq_next = recovery.last_seq + 1;
    let mut unacked_from = seq_next;
    let mut batch = 1u64;
    while started.elapsed() < Duration::from_secs(20) {
        let batch_first = seq_next;
        for _ in 0..batch {
            assert_eq!(journal.append(&payload(seq_next)).unwrap(), seq_next);
            seq_next += 1;
        }
        // Acknowledge the previous batch; this one stays in flight.
        runtime
            .block_on(journal.wait_durable(batch_first - 1))
            .unwrap();
        let acks: String = (unacked_from..batch_first)
            .map(|seq| format!("ACK {seq}\n"))
            .collect();
        stdout.write_all(acks.as_bytes()).unwrap();
        stdout.flush().unwrap();
        unacked_from = batch_first;
        batch = batch % 64 + 1;
    }
}

#[test]
fn acknowledged_records_survive_sigkill() {
    if std::env::var_os(CRASH_DIR_ENV).is_some() {
        return;
    }
    let dir = tempdir();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal::crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        // A line cut short by the kill has no newline: that ack was never fully printed.
        if let Some(seq) = line
            .strip_suffix(b"\n")
            .and_then(|l| l.strip_prefix(b"ACK "))
            .map(|seq| std::str::from_utf8(seq).unwrap().parse::<u64>().unwrap())
        {
            acked.push(seq);
        }
        if !killed && (acked.len() >= 3000 || started.elapsed() > Duration::from_secs(4)) {
            child.kill().unwrap(); // SIGKILL, mid-run; keep reading what it printed before
            killed = true;
        }
    }
    child.wait().unwrap();
    assert!(killed, "the writer exited before it was killed");
    assert!(!acked.is_empty(), "the writer acknowledged nothing");

    let (_journal, recovery, records) = open(JournalConfig::new(dir.path()));
    let acked_max = *acked.iter().max().unwrap();
    eprintln!(
        "sigkill: {} acknowledged (max {acked_max}), journal ends at {}, torn tail {} bytes",
        acked.len(),
        recovery.last_seq,
        recovery.torn_tail_bytes
    );
    assert!(
        recovery.last_seq >= acked_max,
        "acknowledged seq {acked_max} lost: journal ends at {}",
        recovery.last_seq
    );
    assert_records(&records, 1..=recovery.last_seq);
}

/// Every `(seq, payload)` that `read_from(from_seq)` hands out, and its return value.
fn read_all(journal: &Journal, from_seq: u64) -> Result<(u64, Records), JournalError> {
    let mut records = Vec::new();
    let count = journal.read_from(from_seq, |seq, payload| {
        records.push((seq, payload.to_vec()));
        Ok(true)
    })?;
    Ok((count, records))
}

#[test]
fn read_from_returns_durable_records_in_order() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    assert_eq!(
        journal.first_seq(),
        1,
        "an empty journal starts at last_seq + 1"
    );
    assert_eq!(read_all(&journal, 1).unwrap(), (0, Vec::new()));
    for seq in 1..=50 {
        journal.append(&payload(seq)).unwrap();
    }
    wait(&journal, 50).unwrap();

    let (count, records) = read_all(&journal, 1).unwrap();
    assert_eq!(count, 50);
    assert_records(&records, 1..=50);
    let (count, records) = read_all(&journal, 0).unwrap();
    assert_eq!(count, 50, "from_seq 0 reads from the first record");
    assert_records(&records, 1..=50);
    assert_eq!(read_all(&journal, 51).unwrap(), (0, Vec::new()));
    assert_eq!(journal.first_seq(), 1);

    // Records recovered at open are read the same way.
    journal.close().unwrap();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let (_, records) = read_all(&journal, 20).unwrap();
    assert_records(&records, 20..=50);
    journal.close().unwrap();
    let (journal, _, _) = open_after(JournalConfig::new(dir.path()), 50);
    assert_eq!(read_all(&journal, 1).unwrap().0, 50);
}

#[test]
fn read_from_a_middle_seq_across_segment_boundaries() {
    let dir = tempdir();
    // 3 one-record groups of "record N" (8-9 byte payloads) fit a segment, 4 do not.
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 3 * (FRAME_HEADER_LEN + 9),
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    append_synced(&journal, 14);
    assert_eq!(segment_files(dir.path()).len(), 5); // 1, 4, 7, 10, 13

    for from in 1..=15 {
        let (count, records) = read_all(&journal, from).unwrap();
        assert_eq!(count, 15 - from, "from {from}");
        assert_records(&records, from..=14);
    }
}

#[test]
fn read_from_stops_when_callback_returns_false() {
    let dir = tempdir();
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 3 * (FRAME_HEADER_LEN + 9),
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    append_synced(&journal, 10);

    let mut seen = Vec::new();
    let count = journal
        .read_from(3, |seq, payload| {
            seen.push((seq, payload.to_vec()));
            Ok(seq < 6)
        })
        .unwrap();
    assert_eq!(count, 4, "the record that stopped the read is counted");
    assert_records(&seen, 3..=6);

    // An error from the callback stops the read and comes back as is.
    let mut calls = 0;
    let error = journal
        .read_from(1, |_, _| {
            calls += 1;
            Err(JournalError::Config("stop here".to_owned()))
        })
        .unwrap_err();
    assert!(matches!(&error, JournalError::Config(reason) if reason == "stop here"));
    assert_eq!(calls, 1);
}

#[test]
fn read_from_never_returns_undurable_records() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 5);
    journal.set_committer_paused(true);
    for seq in 6..=10 {
        assert_eq!(journal.append(&payload(seq)).unwrap(), seq);
    }
    assert_eq!(journal.durable().borrow().seq, 5);

    let (count, records) = read_all(&journal, 1).unwrap();
    assert_eq!(count, 5);
    assert_records(&records, 1..=5);
    assert_eq!(read_all(&journal, 6).unwrap(), (0, Vec::new()));

    journal.set_committer_paused(false);
    wait(&journal, 10).unwrap();
    let (_, records) = read_all(&journal, 6).unwrap();
    assert_records(&records, 6..=10);
}

#[test]
fn read_from_after_trim_before_returns_trimmed_for_old_seq() {
    let dir = tempdir();
    let config = JournalConfig {
        segment_bytes_max: HEADER_LEN + 3 * (FRAME_HEADER_LEN + 9),
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    append_synced(&journal, 12); // segments 1, 4, 7, 10
    assert_eq!(journal.trim_before(7).unwrap(), 2);
    assert_eq!(journal.first_seq(), 7);

    for from in [1, 6] {
        let error = read_all(&journal, from).unwrap_err();
        assert!(
            matches!(
                &error,
                JournalError::Trimmed { dir: trimmed_dir, first_seq: 7, after }
                    if trimmed_dir == dir.path() && *after == from - 1
            ),
            "{error}"
        );
    }
    let (_, records) = read_all(&journal, journal.first_seq()).unwrap();
    assert_records(&records, 7..=12);

    // Trimming everything but the active segment: first_seq follows.
    assert_eq!(journal.trim_before(1_000).unwrap(), 1);
    assert_eq!(journal.first_seq(), 10);
    let (_, records) = read_all(&journal, 10).unwrap();
    assert_records(&records, 10..=12);
}

#[test]
fn read_from_reports_corrupt_on_a_bad_checksum() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    append_synced(&journal, 5);
    // Records 1..=5 have 8-byte payloads. Flip a payload byte of record 3.
    let segment = segment_files(dir.path()).pop().unwrap();
    let record_3_offset = HEADER_LEN + 2 * SMALL_FRAME_LEN;
    flip_byte(&segment, record_3_offset + FRAME_HEADER_LEN + 2);

    let error = read_all(&journal, 1).unwrap_err();
    assert!(
        matches!(&error, JournalError::Corrupt { segment: path, offset, .. }
            if *path == segment && *offset == record_3_offset),
        "{error}"
    );
    // Records skipped by length are not checksummed; those handed out are.
    let (_, records) = read_all(&journal, 4).unwrap();
    assert_records(&records, 4..=5);
}

#[test]
fn read_from_a_closed_journal_is_refused() {
    let dir = tempdir();
    let (journal, _, _) = open(JournalConfig::new(dir.path()));
    let other = journal.clone();
    journal.close().unwrap();
    assert!(matches!(read_all(&other, 1), Err(JournalError::Closed)));
}

#[test]
fn read_while_appending_concurrently() {
    let dir = tempdir();
    let config = JournalConfig {
        sync: SyncMode::None,
        segment_bytes_max: 2048,
        group_records_max: 16,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    const RECORDS: u64 = 5_000;
    let reads = std::thread::scope(|scope| {
        let appender = journal.clone();
        scope.spawn(move || {
            for seq in 1..=RECORDS {
                loop {
                    match appender.append(&payload(seq)) {
                        Ok(appended) => {
                            assert_eq!(appended, seq);
                            break;
                        }
                        Err(JournalError::Full { .. } | JournalError::FullBytes { .. }) => {
                            std::thread::yield_now();
                        }
                        Err(error) => panic!("append: {error}"),
                    }
                }
            }
        });
        let reader = journal.clone();
        let reading = scope.spawn(move || {
            let mut reads = 0u64;
            let mut last_end = 0u64;
            loop {
                let durable_before = reader.durable().borrow().seq;
                let from = if reads % 2 == 0 { 1 } else { last_end / 2 + 1 };
                let mut expected = from;
                let count = reader
                    .read_from(from, |seq, bytes| {
                        assert_eq!(seq, expected, "a read skipped or repeated a record");
                        assert_eq!(bytes, payload(seq));
                        expected += 1;
                        Ok(true)
                    })
                    .unwrap();
                let end = expected - 1;
                assert_eq!(count, end + 1 - from);
                assert!(
                    end >= durable_before,
                    "read ended at {end}, before the durable point {durable_before}"
                );
                assert!(
                    end <= reader.durable().borrow().seq,
                    "read past the durable point"
                );
                assert!(end >= last_end, "a later read saw fewer records");
                last_end = end;
                reads += 1;
                if end == RECORDS {
                    return reads;
                }
            }
        });
        reading.join().unwrap()
    });
    assert!(reads > 1, "the reader ran {reads} reads");
    assert!(
        segment_files(dir.path()).len() > 10,
        "the appends rolled segments"
    );
}

#[test]
fn read_racing_trim_before_gets_contiguous_records_or_trimmed() {
    let dir = tempdir();
    let config = JournalConfig {
        sync: SyncMode::None,
        segment_bytes_max: 1024,
        group_records_max: 8,
        ..JournalConfig::new(dir.path())
    };
    let (journal, _, _) = open(config);
    for seq in 1..=2_000 {
        journal.append(&payload(seq)).unwrap();
    }
    wait(&journal, 2_000).unwrap();
    let trims_done = std::sync::atomic::AtomicBool::new(false);
    let (complete, trimmed) = std::thread::scope(|scope| {
        let trimmer = journal.clone();
        let trims_done = &trims_done;
        scope.spawn(move || {
            for before in (0..=2_000).step_by(50) {
                trimmer.trim_before(before).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            trims_done.store(true, std::sync::atomic::Ordering::Release);
        });
        let reader = journal.clone();
        scope
            .spawn(move || {
                let (mut complete, mut trimmed) = (0u32, 0u32);
                while !trims_done.load(std::sync::atomic::Ordering::Acquire) {
                    let from = reader.first_seq();
                    let mut expected = from;
                    let result = reader.read_from(from, |seq, bytes| {
                        assert_eq!(seq, expected, "a read skipped or repeated a record");
                        assert_eq!(bytes, payload(seq));
                        expected += 1;
                        Ok(true)
                    });
                    match result {
                        Ok(_) => {
                            assert_eq!(expected, 2_001, "a complete read ends at the last record");
                            complete += 1;
                        }
                        Err(JournalError::Trimmed {
                            first_seq, after, ..
                        }) => {
                            assert_eq!(
                                after + 1,
                                expected,
                                "Trimmed names the first record not read"
                            );
                            assert!(first_seq > after + 1);
                            trimmed += 1;
                        }
                        Err(error) => panic!("read racing a trim: {error}"),
                    }
                }
                (complete, trimmed)
            })
            .join()
            .unwrap()
    });
    eprintln!("read racing trim: {complete} complete reads, {trimmed} trimmed");
    assert!(complete + trimmed > 0, "the reader never ran");
    let (_, records) = read_all(&journal, journal.first_seq()).unwrap();
    assert_records(&records, journal.first_seq()..=2_000);
}

/// Bytes the filesystem allocated to `path` (blocks, not length).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// Whether the filesystem of `dir` preallocates (a probe file, removed again).
fn preallocation_supported(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let file = fs::File::create(&probe).unwrap();
    let supported = fs4::fs_std::FileExt::allocate(&file, 1 << 16).is_ok();
    drop(file);
    fs::remove_file(probe).unwrap();
    supported
}

#[test]
fn segments_are_preallocated_without_changing_their_length() {
    let dir = tempdir();
    if !preallocation_supported(dir.path()) {
        eprintln!("SKIPPED: this filesystem does not preallocate");
        return;
    }
    let mut config = JournalConfig::new(dir.path());
    config.segment_bytes_max = HEADER_LEN + 4 * SMALL_FRAME_LEN + (1 << 20);
    let (journal, _, _) = open(config.clone());
    let first = segment_files(dir.path()).pop().unwrap();
    assert_eq!(fs::metadata(&first).unwrap().len(), HEADER_LEN);
    assert!(
        allocated(&first) >= config.segment_bytes_max,
        "{}",
        allocated(&first)
    );
    // Rolled segments are preallocated as they are created; lengths stay what was written,
    // so recovery reads exactly the records (no zero-filled tail to cut).
    config.segment_bytes_max = HEADER_LEN + 2 * SMALL_FRAME_LEN;
    journal.close().unwrap();
    let (journal, recovery, _) = open(config.clone());
    assert_eq!(recovery.torn_tail_bytes, 0);
    append_synced(&journal, 6);
    journal.close().unwrap();
    let (_journal, recovery, records) = open(config);
    assert_records(&records, 1..=6);
    assert_eq!(recovery.torn_tail_bytes, 0);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let newest = segments.last().unwrap();
    assert!(allocated(newest) >= fs::metadata(newest).unwrap().len());
}
