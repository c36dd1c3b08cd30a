//! Open-time recovery: verify every segment and the chain through it, replay records, truncate
//! a torn tail.
//!
//! The rules (contiguous sequence numbers, torn tail versus corruption) are stated in the parent
//! module's docs; this file applies them and is the only code that reads segments.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::anchor::{self, Anchor, AnchorFile};
use super::format::{self, SegmentFile, GENESIS, HEADER_LEN};
use super::{Chain, JournalError};

/// The segment the committer appends to after open.
pub(crate) struct ActiveSegment {
    /// Open for appending.
    pub(crate) file: File,
    /// Its path, for error messages.
    pub(crate) path: PathBuf,
    /// Current length in bytes, header included.
    pub(crate) len: u64,
    /// Number of records it holds.
    pub(crate) records: u64,
}

/// The caller's replay callback: `(seq, payload)`, an `Err` aborts open.
pub(crate) type ReplayFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// Called for every verified record of a segment, replayed or not.
type VisitFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), JournalError> + 'a;

/// What recovery found, before the committer starts.
pub(crate) struct Recovered {
    /// First sequence number of the oldest segment (`last_seq + 1` when it holds no record).
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) records_replayed: u64,
    pub(crate) records_skipped: u64,
    pub(crate) segments: usize,
    pub(crate) torn_tail_bytes: u64,
    pub(crate) active: ActiveSegment,
    /// The chain hash of record `last_seq`: where the committer's chain continues.
    pub(crate) chain: Chain,
    /// What the anchor vouched for when open began (`None`: a fresh journal, no anchor yet).
    pub(crate) anchor: Option<Anchor>,
    /// The anchor file, for the committer to move forward.
    pub(crate) anchor_file: AnchorFile,
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn offset_u64(offset: usize) -> u64 {
    u64::try_from(offset).unwrap_or(u64::MAX)
}

/// Scans `dir`, replays records with `seq > after` through `on_record`, truncates a torn tail
/// and returns the segment to append to. With `sync`, the active segment is fsynced so that
/// everything replayed is durable before it is reported as such.
pub(crate) fn recover(
    dir: &Path,
    after: u64,
    sync: bool,
    on_record: &mut ReplayFn<'_>,
) -> Result<Recovered, JournalError> {
    let segments = format::list_segments(dir).map_err(io_error("list", dir))?;
    let found = anchor::read(dir)?;
    let anchor = found.map(|f| f.anchor);

    let Some(first) = segments.first() else {
        // The newest segment is never trimmed, so an anchor without segments means they were
        // removed; unless open created the anchor and died before the first segment (then it
        // still names the starting point, with the genesis hash).
        let fresh = |a: &Anchor| a.seq == after && a.chain == GENESIS;
        if let Some(anchor) = anchor.filter(|a| !fresh(a)) {
            let range = if anchor.seq > after {
                format!(
                    "records {}..={} were acknowledged and are missing",
                    after.saturating_add(1),
                    anchor.seq
                )
            } else {
                format!(
                    "the snapshots cover them, but their history and the trail from seq {} are \
                     gone",
                    anchor.seq
                )
            };
            return Err(JournalError::Corrupt {
                segment: dir.to_owned(),
                offset: 0,
                reason: format!(
                    "the journal holds no segment, but its anchor vouches for every record up to \
                     seq {} (the segments were removed): {range}",
                    anchor.seq
                ),
            });
        }
        // A fresh journal: the first record continues after what the caller's snapshot covers.
        let first_seq = after.checked_add(1).ok_or_else(|| {
            JournalError::Config(format!("after = {after} leaves no sequence numbers"))
        })?;
        // The anchor exists before the first segment does (see `anchor`).
        let anchor_file = AnchorFile::open_or_create(
            dir,
            found,
            Anchor {
                seq: after,
                chain: GENESIS,
            },
            sync,
        )?;
        // Nothing before it is known here: the chain starts at the genesis value.
        let (file, path) = format::create_segment(dir, first_seq, &GENESIS, sync)
            .map_err(io_error("create segment in", dir))?;
        let len = offset_u64(HEADER_LEN);
        return Ok(Recovered {
            first_seq,
            last_seq: after,
            records_replayed: 0,
            records_skipped: 0,
            segments: 1,
            torn_tail_bytes: 0,
            active: ActiveSegment {
                file,
                path,
                len,
                records: 0,
            },
            chain: GENESIS,
            anchor,
            anchor_file,
        });
    };
    let Some(anchor) = anchor else {
        return Err(JournalError::Corrupt {
            segment: dir.join(anchor::ANCHOR_FILE_NAME),
            offset: 0,
            reason: format!(
                "the journal holds {} segment(s) but no anchor file: the anchor is created \
                 before the first segment, so it was removed and what was acknowledged cannot \
                 be told from a torn tail; restore it, or salvage the directory",
                segments.len()
            ),
        });
    };
    if first.first_seq > after.saturating_add(1) {
        return Err(JournalError::Trimmed {
            dir: dir.to_owned(),
            first_seq: first.first_seq,
            after,
        });
    }

    let mut seq_expected = first.first_seq;
    let mut records_replayed = 0u64;
    let mut records_skipped = 0u64;
    let mut torn_tail_bytes = 0u64;
    let mut active_len = 0u64;
    let mut active_records = 0u64;
    // The oldest segment's header says where the chain starts; later ones must link to it.
    let mut chain: Option<Chain> = None;
    let segment_count = segments.len();

    for (index, segment) in segments.iter().enumerate() {
        let is_last = index + 1 == segment_count;
        let start = Start {
            seq: seq_expected,
            chain,
            anchor,
        };
        let outcome = scan_segment(segment, is_last, start, &mut |seq, payload| {
            if seq > after {
                on_record(seq, payload).map_err(|reason| JournalError::Replay { seq, reason })?;
                records_replayed += 1;
            } else {
                records_skipped += 1;
            }
            Ok(())
        })?;
        seq_expected = outcome.seq_next;
        chain = Some(outcome.chain);
        if is_last {
            torn_tail_bytes = outcome.torn_tail_bytes;
            active_len = outcome.len_valid;
            active_records = outcome.records;
        }
    }

    let last_seq = seq_expected.saturating_sub(1);
    let Some(last) = segments.last() else {
        return Err(JournalError::Config(
            "no segments after listing some".to_owned(),
        ));
    };
    if last_seq < anchor.seq {
        return Err(JournalError::Corrupt {
            segment: last.path.clone(),
            offset: active_len,
            reason: format!(
                "the journal ends at seq {last_seq}, but its anchor vouches for every record up \
                 to seq {}: records {}..={} were acknowledged and are missing (the newest \
                 segment was cut short or removed)",
                anchor.seq,
                last_seq.saturating_add(1),
                anchor.seq
            ),
        });
    }
    if last_seq < after {
        return Err(JournalError::Corrupt {
            segment: last.path.clone(),
            offset: active_len,
            reason: format!(
                "the journal ends at seq {last_seq} but the caller's snapshot covers seq {after}: \
                 records the snapshot was built from are missing"
            ),
        });
    }

    let file = OpenOptions::new()
        .append(true)
        .open(&last.path)
        .map_err(io_error("open for append", &last.path))?;
    if sync {
        file.sync_data()
            .map_err(io_error("fdatasync", &last.path))?;
    }
    Ok(Recovered {
        first_seq: first.first_seq,
        last_seq,
        records_replayed,
        records_skipped,
        segments: segment_count,
        torn_tail_bytes,
        active: ActiveSegment {
            file,
            path: last.path.clone(),
            len: active_len,
            records: active_records,
        },
        chain: chain.unwrap_or(GENESIS),
        anchor: Some(anchor),
        anchor_file: AnchorFile::open_or_create(dir, found, anchor, sync)?,
    })
}

/// Where a segment's scan starts: the sequence number and chain hash the previous segment
/// ended with (`chain` is `None` for the oldest segment, which starts from its header's).
#[derive(Clone, Copy)]
struct Start {
    seq: u64,
    chain: Option<Chain>,
    /// Records up to `anchor.seq` are vouched for: damage to one is never a torn tail.
    anchor: Anchor,
}

struct SegmentOutcome {
    seq_next: u64,
    records: u64,
    len_valid: u64,
    torn_tail_bytes: u64,
    /// The chain hash of the segment's last valid record (or the one it starts from).
    chain: Chain,
}

fn scan_segment(
    segment: &SegmentFile,
    is_last: bool,
    start: Start,
    on_record: &mut VisitFn<'_>,
) -> Result<SegmentOutcome, JournalError> {
    let seq_expected = start.seq;
    let path = &segment.path;
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        segment: path.clone(),
        offset: offset_u64(offset),
        reason,
    };
    if segment.first_seq != seq_expected {
        return Err(corrupt(
            0,
            format!(
                "segment starts at seq {} but the previous segment ends at seq {} \
                 (sequence numbers must be contiguous)",
                segment.first_seq,
                seq_expected.saturating_sub(1)
            ),
        ));
    }
    let bytes = fs::read(path).map_err(io_error("read", path))?;

    let mut chain = match format::decode_header(&bytes) {
        Ok(header) if header.first_seq != segment.first_seq => {
            return Err(corrupt(
                0,
                format!(
                    "header says first seq {}, the file name says {}",
                    header.first_seq, segment.first_seq
                ),
            ))
        }
        Ok(header) => match start.chain {
            Some(chain) if chain != header.chain_before => {
                return Err(corrupt(
                    0,
                    format!(
                        "chain broken before seq {}: the header carries {} but the previous \
                         segment ends with {} (a segment was altered, replaced or removed)",
                        segment.first_seq,
                        format::chain_hex(&header.chain_before),
                        format::chain_hex(&chain)
                    ),
                ))
            }
            Some(chain) => chain,
            None if start.anchor.seq.saturating_add(1) == segment.first_seq
                && start.anchor.seq > 0
                && start.anchor.chain != header.chain_before =>
            {
                return Err(corrupt(
                    0,
                    format!(
                        "chain broken before seq {}: the header carries {} but the anchor \
                         vouches for {} (the segment was replaced)",
                        segment.first_seq,
                        format::chain_hex(&header.chain_before),
                        format::chain_hex(&start.anchor.chain)
                    ),
                ))
            }
            None => header.chain_before,
        },
        // The newest segment was created but its header never reached the disk whole: it holds
        // no record, so rewriting the header loses nothing.
        Err(reason) if is_last && bytes.len() <= HEADER_LEN && start.anchor.seq < seq_expected => {
            tracing::warn!(
                segment = %path.display(),
                bytes = bytes.len(),
                %reason,
                "journal: rewriting the torn header of the newest segment"
            );
            // The chain before it is the previous segment's last hash; with no previous
            // segment it is unknown, and only a fresh journal can be here: genesis.
            let chain = start.chain.unwrap_or(GENESIS);
            rewrite_header(path, segment.first_seq, &chain)?;
            return Ok(SegmentOutcome {
                seq_next: seq_expected,
                records: 0,
                len_valid: offset_u64(HEADER_LEN),
                torn_tail_bytes: offset_u64(bytes.len()),
                chain,
            });
        }
        Err(reason) => return Err(corrupt(0, reason)),
    };

    let mut offset = HEADER_LEN;
    let mut seq_next = seq_expected;
    let mut records = 0u64;
    while offset < bytes.len() {
        let bad_reason = match format::decode_frame(&bytes, offset) {
            Ok(frame) if frame.seq == seq_next => {
                let payload = bytes.get(frame.payload.clone()).unwrap_or_default();
                // A checksum-valid record whose chain hash does not follow is never a torn
                // write: a record was altered, inserted or removed.
                let computed = format::chain_next(&chain, frame.seq, payload);
                if computed != frame.chain {
                    return Err(corrupt(
                        offset,
                        format!(
                            "record seq {}: chain hash mismatch (stored {}, computed {}): the \
                             record, or one before it, was altered, inserted or removed",
                            frame.seq,
                            format::chain_hex(&frame.chain),
                            format::chain_hex(&computed)
                        ),
                    ));
                }
                if frame.seq == start.anchor.seq && computed != start.anchor.chain {
                    return Err(corrupt(
                        offset,
                        format!(
                            "record seq {}: chain hash {} differs from the {} the anchor vouches \
                             for: records up to it were rewritten",
                            frame.seq,
                            format::chain_hex(&computed),
                            format::chain_hex(&start.anchor.chain)
                        ),
                    ));
                }
                chain = computed;
                on_record(frame.seq, payload)?;
                seq_next = seq_next
                    .checked_add(1)
                    .ok_or_else(|| corrupt(offset, "sequence numbers exhausted".to_owned()))?;
                records += 1;
                offset = frame.end;
                continue;
            }
            // A checksum-valid record is never a torn write: a wrong number is damage.
            Ok(frame) => {
                return Err(corrupt(
                    offset,
                    format!(
                        "record has seq {} where seq {seq_next} was expected",
                        frame.seq
                    ),
                ))
            }
            Err(error) => error.to_string(),
        };
        if !is_last {
            return Err(corrupt(
                offset,
                format!("{bad_reason} (in a segment that is not the newest)"),
            ));
        }
        if seq_next <= start.anchor.seq {
            return Err(corrupt(
                offset,
                format!(
                    "record seq {seq_next}: {bad_reason}; the anchor vouches for every record up \
                     to seq {}, so records {seq_next}..={} were acknowledged and are damaged or \
                     cut (not a torn tail)",
                    start.anchor.seq, start.anchor.seq
                ),
            ));
        }
        let from = offset.saturating_add(1);
        if let Some(valid_at) = format::find_valid_frame(&bytes, from, seq_next) {
            return Err(corrupt(
                offset,
                format!("{bad_reason}, yet a valid record follows at offset {valid_at}"),
            ));
        }
        let torn = offset_u64(bytes.len().saturating_sub(offset));
        tracing::warn!(
            segment = %path.display(),
            offset,
            torn_tail_bytes = torn,
            %bad_reason,
            "journal: truncating a torn tail (never acknowledged: acks follow the sync)"
        );
        truncate(path, offset_u64(offset))?;
        return Ok(SegmentOutcome {
            seq_next,
            records,
            len_valid: offset_u64(offset),
            torn_tail_bytes: torn,
            chain,
        });
    }
    Ok(SegmentOutcome {
        seq_next,
        records,
        len_valid: offset_u64(bytes.len()),
        torn_tail_bytes: 0,
        chain,
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open for truncation", path))?;
    file.set_len(len).map_err(io_error("truncate", path))?;
    file.sync_all().map_err(io_error("fsync", path))
}

fn rewrite_header(path: &Path, first_seq: u64, chain_before: &Chain) -> Result<(), JournalError> {
    use std::io::Write;
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("open for header rewrite", path))?;
    file.write_all(&format::encode_header(first_seq, chain_before))
        .map_err(io_error("write header", path))?;
    file.sync_all().map_err(io_error("fsync", path))
}
