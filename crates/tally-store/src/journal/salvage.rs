//! Salvage: the longest prefix of a trail that verifies, and cutting a journal back to it.
//!
//! [`valid_prefix`] reads segment files (read-only) in order and stops at the first thing that
//! does not follow from what came before: a bad segment header, a segment that does not start
//! where the last one ended or does not link to its chain, a frame that fails its checksum, a
//! sequence number out of order, a chain hash that does not follow. Everything before that
//! point is intact and linked from seq 1 (or from the first segment's chain) to the prefix's
//! last record. [`cut_to`] then removes everything after it from a journal directory and writes
//! a fresh anchor at the prefix's end, so the journal opens again: the records after the cut
//! are given up, which is why the store-level salvage copies the directory aside first.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::anchor::{self, Anchor, AnchorFile};
use super::format::{self, GENESIS, HEADER_LEN};
use super::Chain;
use super::JournalError;

/// Where a trail stops verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset in it of the first byte that does not verify (the segment's start if its
    /// header is bad).
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// The longest verifying prefix of a trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The first record's sequence number (0: no record).
    pub first_seq: u64,
    /// The last record that verifies with everything before it (0: none).
    pub last_seq: u64,
    /// Its chain hash ([`GENESIS`] if none).
    pub chain: Chain,
    /// Where verification stopped; `None` when every byte verifies.
    pub cut: Option<Cut>,
    /// Whether the cut looks like a torn tail: undecodable bytes at the end of the newest
    /// segment with no valid record after them (what opening cuts when the anchor allows).
    pub torn_tail: bool,
    /// Segment files after the cut's segment (dropped whole by a cut).
    pub later_segments: Vec<PathBuf>,
    /// Frames after the cut that still decode (records a cut gives up, at the most: some may
    /// be the torn, never acknowledged group).
    pub frames_after: u64,
    /// Highest sequence number such a frame carries (0: none).
    pub seq_after_max: u64,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_owned();
    move |source| JournalError::Io { op, path, source }
}

/// Walks the segments of `dirs` (each listed in sequence order, the directories in the order
/// given: `archive/` then `journal/`) and returns the longest verifying prefix. Read-only.
pub fn valid_prefix(dirs: &[&Path]) -> Result<Prefix, JournalError> {
    let mut segments = Vec::new();
    for dir in dirs {
        match format::list_segments(dir) {
            Ok(found) => segments.extend(found),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("list", dir)(e)),
        }
    }
    // One sequence across the directories: a salvage interrupted while moving `archive/`
    // back into `journal/` leaves its segments split between them in any mix.
    segments.sort_by_key(|segment| segment.first_seq);
    let mut prefix = Prefix {
        first_seq: 0,
        last_seq: 0,
        chain: GENESIS,
        cut: None,
        later_segments: Vec::new(),
        frames_after: 0,
        seq_after_max: 0,
        torn_tail: false,
    };
    let count = segments.len();
    for (index, segment) in segments.iter().enumerate() {
        if prefix.cut.is_some() {
            prefix.later_segments.push(segment.path.clone());
            count_frames(&segment.path, 0, &mut prefix)?;
            continue;
        }
        let bytes = fs::read(&segment.path).map_err(io_error("read", &segment.path))?;
        let stop = |offset: usize, reason: String| Cut {
            segment: segment.path.clone(),
            offset: offset as u64,
            reason,
        };
        let header = match format::decode_header(&bytes) {
            Ok(header) => header,
            Err(reason) => {
                prefix.cut = Some(stop(0, format!("bad segment header: {reason}")));
                continue;
            }
        };
        let expected_first = if prefix.last_seq == 0 {
            header.first_seq
        } else {
            prefix.last_seq.saturating_add(1)
        };
        let expected_chain = if prefix.last_seq == 0 && index == 0 {
            // The oldest segment: seq 1 follows genesis; a later start (history pruned) is
            // taken on its header's word, and says so through `first_seq`.
            if header.first_seq == 1 {
                GENESIS
            } else {
                header.chain_before
            }
        } else {
            prefix.chain
        };
        if header.first_seq != expected_first || header.chain_before != expected_chain {
            prefix.cut = Some(stop(
                0,
                format!(
                    "the segment starts at seq {} but the trail continues at seq {expected_first}{}",
                    header.first_seq,
                    if header.chain_before == expected_chain {
                        ""
                    } else {
                        ", and its header does not link to the chain before it"
                    }
                ),
            ));
            continue;
        }
        if prefix.last_seq == 0 {
            prefix.first_seq = header.first_seq;
            prefix.chain = expected_chain;
        }
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            let frame = match format::decode_frame(&bytes, offset) {
                Ok(frame) => frame,
                Err(e) => {
                    prefix.torn_tail = index + 1 == count && tail_is_torn(&bytes, offset, &prefix);
                    prefix.cut = Some(stop(offset, e.to_string()));
                    break;
                }
            };
            let expected = prefix
                .last_seq
                .max(header.first_seq.saturating_sub(1))
                .saturating_add(1);
            let payload = bytes.get(frame.payload.clone()).unwrap_or_default();
            let chain = format::chain_next(&prefix.chain, frame.seq, payload);
            if frame.seq != expected {
                prefix.cut = Some(stop(
                    offset,
                    format!("record seq {} where seq {expected} was due", frame.seq),
                ));
                break;
            }
            if chain != frame.chain {
                prefix.cut = Some(stop(
                    offset,
                    format!(
                        "record seq {} does not follow from the chain before it (altered)",
                        frame.seq
                    ),
                ));
                break;
            }
            prefix.last_seq = frame.seq;
            prefix.chain = chain;
            offset = frame.end;
        }
        if let Some(cut) = &prefix.cut {
            let from = usize::try_from(cut.offset).unwrap_or(usize::MAX);
            count_frames_in(&bytes, from, &mut prefix);
        }
    }
    Ok(prefix)
}

/// Whether the bytes from `offset` to the end hold no decodable frame: a torn tail of the
/// newest segment rather than damage with records after it.
fn tail_is_torn(bytes: &[u8], offset: usize, prefix: &Prefix) -> bool {
    format::find_valid_frame(
        bytes,
        offset.saturating_add(1),
        prefix.last_seq.saturating_add(1),
    )
    .is_none()
}

/// Counts the decodable frames of a file after a cut, from `from`.
fn count_frames(path: &Path, from: usize, prefix: &mut Prefix) -> Result<(), JournalError> {
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    count_frames_in(&bytes, from.max(HEADER_LEN), prefix);
    Ok(())
}

fn count_frames_in(bytes: &[u8], from: usize, prefix: &mut Prefix) {
    let mut at = from;
    while let Some(found) = format::find_valid_frame(bytes, at, 0) {
        let Ok(frame) = format::decode_frame(bytes, found) else {
            break;
        };
        prefix.frames_after += 1;
        prefix.seq_after_max = prefix.seq_after_max.max(frame.seq);
        at = frame.end;
    }
}

/// Cuts the journal in `dir` back to `prefix` (computed over `dir` alone): truncates the cut
/// segment at the cut (or removes it, if its header is bad or nothing of it stays), removes
/// every later segment, and replaces the anchor with one at the prefix's end. The caller holds
/// the directory (no journal is open on it) and has copied it aside.
pub fn cut_to(dir: &Path, prefix: &Prefix) -> Result<(), JournalError> {
    for later in &prefix.later_segments {
        fs::remove_file(later).map_err(io_error("remove", later))?;
    }
    if let Some(cut) = &prefix.cut {
        if cut.offset <= HEADER_LEN as u64 {
            fs::remove_file(&cut.segment).map_err(io_error("remove", &cut.segment))?;
        } else {
            let file = OpenOptions::new()
                .write(true)
                .open(&cut.segment)
                .map_err(io_error("open", &cut.segment))?;
            file.set_len(cut.offset)
                .map_err(io_error("truncate", &cut.segment))?;
            file.sync_all().map_err(io_error("fsync", &cut.segment))?;
        }
    }
    let anchor_path = dir.join(anchor::ANCHOR_FILE_NAME);
    match fs::remove_file(&anchor_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &anchor_path)(e)),
    }
    format::sync_dir(dir).map_err(io_error("fsync directory", dir))?;
    AnchorFile::open_or_create(
        dir,
        None,
        Anchor {
            seq: prefix.last_seq,
            chain: prefix.chain,
        },
        true,
    )?;
    Ok(())
}
