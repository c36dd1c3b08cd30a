//! Verifying the hash chain through a trail of segments: the audit walk.
//!
//! The chain itself, what it can and cannot detect, and the anchors are described in the
//! parent module's docs under "The hash chain". This file walks segments from the first record
//! to the last and reports what it finds; it never writes and never stops at the first problem
//! when it can go on: after a mismatch it continues the chain from the stored hash, so one
//! altered record is one problem, not every record after it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, FrameError, GENESIS, HEADER_LEN};
use super::{Chain, JournalError};

/// Most problems a [`TrailReport`] lists; [`TrailReport::problems_total`] counts them all.
pub const TRAIL_PROBLEMS_MAX: usize = 100;

/// Something the audit walk found wrong with a trail. Sequence numbers are the journal's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrailProblem {
    /// Record `seq`'s stored chain hash does not follow from the chain before it and its
    /// payload, or its checksum fails: the record was altered (a payload edited with its
    /// checksum recomputed is found here), or the record before it was altered and its chain
    /// hash recomputed.
    Altered {
        /// The record's sequence number.
        seq: u64,
    },
    /// The records `after_seq + 1 ..= next_seq - 1` are not in the trail: removed (a frame, or
    /// a whole segment). `after_seq` 0 means the trail does not start at seq 1.
    Missing {
        /// The last record before the gap (0: the start of the trail).
        after_seq: u64,
        /// The first record after the gap.
        next_seq: u64,
    },
    /// A record that does not belong where it is: a second record with sequence number `seq`
    /// (the first of the two did not chain, the second did), or one whose number is not above
    /// the record before it.
    Inserted {
        /// The sequence number the record carries.
        seq: u64,
    },
    /// The chain hash a segment's header carries does not match the last hash of the segment
    /// before it (or genesis, for the segment holding seq 1): the header was altered, or the
    /// segment was replaced.
    BrokenLink {
        /// The first sequence number of the segment.
        segment_first_seq: u64,
    },
    /// An anchor (a durable head recorded earlier) is not in the trail: the chain ends before
    /// `anchor_seq`, or its hash at `anchor_seq` differs from the one recorded. Records at the
    /// end were removed, or the chain was rebuilt.
    Truncated {
        /// The anchor's sequence number.
        anchor_seq: u64,
    },
    /// Bytes that are no readable record or segment header (an incomplete or overlong record,
    /// a bad header); the walk resumed at the next valid record, if any.
    Damaged {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// The last record accepted before the damage (0: none).
        after_seq: u64,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for TrailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Altered { seq } => write!(
                f,
                "record seq {seq} was altered (its chain hash or checksum does not match)"
            ),
            Self::Missing {
                after_seq,
                next_seq,
            } => write!(
                f,
                "records seq {} ..= {} are missing (after seq {after_seq} comes seq {next_seq})",
                after_seq.saturating_add(1),
                next_seq.saturating_sub(1)
            ),
            Self::Inserted { seq } => write!(f, "a record with seq {seq} was inserted"),
            Self::BrokenLink { segment_first_seq } => write!(
                f,
                "the segment starting at seq {segment_first_seq} does not link to the one before"
            ),
            Self::Truncated { anchor_seq } => write!(
                f,
                "the trail does not reach the anchor at seq {anchor_seq} with its recorded hash"
            ),
            Self::Damaged {
                segment,
                offset,
                after_seq,
                reason,
            } => write!(
                f,
                "unreadable bytes after seq {after_seq} in {} at offset {offset}: {reason}",
                segment.display()
            ),
        }
    }
}

/// What an audit walk of a trail found. [`TrailReport::ok`] when it found nothing wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrailReport {
    /// Records whose chain hash was checked.
    pub records: u64,
    /// Segment files read.
    pub segments: usize,
    /// Sequence number of the first record (0 if there is none).
    pub first_seq: u64,
    /// Sequence number of the last record (0 if there is none).
    pub last_seq: u64,
    /// The chain hash of the last record: the head of the trail ([`GENESIS`] if there is
    /// none). Compare it with a head published earlier (see [`TrailReport::head_hex`]).
    pub head: Chain,
    /// Bytes at the end of the newest segment that hold no valid record: a torn tail, which
    /// opening the journal cuts off (never acknowledged). Not a problem: a tail cut short on
    /// purpose is found through the anchors.
    pub torn_tail_bytes: u64,
    /// Anchors checked (distinct `(seq, hash)` pairs with `seq > 0`).
    pub anchors_checked: usize,
    /// The first [`TRAIL_PROBLEMS_MAX`] problems, in the order found.
    pub problems: Vec<TrailProblem>,
    /// Every problem found, listed or not.
    pub problems_total: u64,
    /// Records `1..=pruned_through` were pruned on purpose (0: none): the walk started after
    /// them, from the chain hash kept at the cut, and they are no problem.
    pub pruned_through: u64,
}

impl TrailReport {
    /// True when the walk found no problem.
    pub fn ok(&self) -> bool {
        self.problems_total == 0
    }

    /// [`TrailReport::head`] in lower-case hex.
    pub fn head_hex(&self) -> String {
        format::chain_hex(&self.head)
    }
}

impl std::fmt::Display for TrailReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records (seq {} ..= {}) in {} segments, head {}, {} anchors checked: ",
            self.records,
            self.first_seq,
            self.last_seq,
            self.segments,
            self.head_hex(),
            self.anchors_checked
        )?;
        if self.pruned_through > 0 {
            write!(
                f,
                "records 1 ..= {} pruned (verified from the hash kept at the cut), ",
                self.pruned_through
            )?;
        }
        if self.ok() {
            return write!(f, "ok");
        }
        write!(f, "{} problems", self.problems_total)?;
        for problem in &self.problems {
            write!(f, "; {problem}")?;
        }
        Ok(())
    }
}

/// Verifies the chain through the segment files of `dirs`, in order (an archive made by
/// [`super::Journal::archive_before`], then the journal directory), from seq 1 to the last
/// record, and checks every anchor `(seq, hash)` against it. Reads files only; a directory
/// that does not exist holds no segment. A bad record at the very end of the last segment
/// with nothing valid after it is a torn tail ([`TrailReport::torn_tail_bytes`]), as at open.
///
/// Use it on a journal that is not open (or through [`super::Journal::verify_trail`] on one
/// that is): a trim or an append running meanwhile makes it report problems that are not
/// there. Memory use is about one segment.
///
/// Errors: [`JournalError::Io`] when a directory cannot be listed or a segment read; what is
/// wrong with the data itself is in the report.
pub fn verify_segments(
    dirs: &[&Path],
    anchors: &[(u64, Chain)],
    pruned: Option<(u64, Chain)>,
) -> Result<TrailReport, JournalError> {
    walk(dirs, None, anchors, pruned)
}

/// The walk: `upto`, if set, is the durable point of an open journal: nothing after it is
/// read, and the newest segment has no torn tail to allow for. `pruned`, if set, is the last
/// pruned record and its chain hash: the walk starts after it, and segments that end at or
/// before it (left by a prune interrupted before it removed them) are not read.
pub(crate) fn walk(
    dirs: &[&Path],
    upto: Option<u64>,
    anchors: &[(u64, Chain)],
    pruned: Option<(u64, Chain)>,
) -> Result<TrailReport, JournalError> {
    let mut segments = Vec::new();
    for dir in dirs {
        match format::list_segments(dir) {
            Ok(found) => segments.extend(found),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Io {
                    op: "list",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    let mut walk = Walk::new(upto, anchors, pruned);
    let count = segments.len();
    let pruned_seq = pruned.map_or(0, |(seq, _)| seq);
    for (index, segment) in segments.iter().enumerate() {
        if walk.reached_upto() {
            break;
        }
        let next_first = segments.get(index + 1).map(|next| next.first_seq);
        if next_first.is_some_and(|next| next <= pruned_seq.saturating_add(1)) {
            continue; // wholly pruned
        }
        let bytes = fs::read(&segment.path).map_err(|source| JournalError::Io {
            op: "read",
            path: segment.path.clone(),
            source,
        })?;
        let torn_allowed = upto.is_none() && index + 1 == count;
        walk.segment(&segment.path, segment.first_seq, &bytes, torn_allowed);
    }
    Ok(walk.finish())
}

/// A record whose chain hash did not follow; settled by the next record (see
/// [`Walk::record`]).
struct Pending {
    seq: u64,
    /// The chain hash before it.
    prev: Chain,
}

struct Anchor {
    seq: u64,
    chain: Chain,
    /// The stored chain hash of the record accepted at `seq`.
    seen: Option<Chain>,
}

/// The walk's state, carried from segment to segment.
struct Walk {
    upto: Option<u64>,
    /// The sequence number the next record should carry.
    seq_expected: u64,
    /// The chain hash the next record should follow.
    prev: Chain,
    records: u64,
    segments: usize,
    first_seq: Option<u64>,
    last_seq: u64,
    pending: Option<Pending>,
    anchors: Vec<Anchor>,
    torn_tail_bytes: u64,
    problems: Vec<TrailProblem>,
    problems_total: u64,
    pruned_through: u64,
}

impl Walk {
    fn new(upto: Option<u64>, anchors: &[(u64, Chain)], pruned: Option<(u64, Chain)>) -> Self {
        let (pruned_through, prev) = pruned.unwrap_or((0, GENESIS));
        let mut distinct: Vec<(u64, Chain)> = anchors
            .iter()
            .copied()
            .filter(|(seq, _)| *seq > pruned_through)
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        Walk {
            upto,
            seq_expected: pruned_through.saturating_add(1),
            prev,
            pruned_through,
            records: 0,
            segments: 0,
            first_seq: None,
            last_seq: 0,
            pending: None,
            anchors: distinct
                .into_iter()
                .map(|(seq, chain)| Anchor {
                    seq,
                    chain,
                    seen: None,
                })
                .collect(),
            torn_tail_bytes: 0,
            problems: Vec::new(),
            problems_total: 0,
        }
    }

    fn reached_upto(&self) -> bool {
        self.upto.is_some_and(|upto| self.last_seq >= upto)
    }

    fn problem(&mut self, problem: TrailProblem) {
        self.problems_total = self.problems_total.saturating_add(1);
        if self.problems.len() < TRAIL_PROBLEMS_MAX {
            self.problems.push(problem);
        }
    }

    /// A pending mismatch that no following record explained is an altered record.
    fn settle_pending(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.problem(TrailProblem::Altered { seq: pending.seq });
        }
    }

    /// Takes record `seq` with stored hash `chain` into the chain: the next record follows it.
    fn accept(&mut self, seq: u64, chain: Chain) {
        self.prev = chain;
        self.seq_expected = seq.saturating_add(1);
        self.last_seq = seq;
        self.first_seq.get_or_insert(seq);
        for anchor in self.anchors.iter_mut().filter(|anchor| anchor.seq == seq) {
            anchor.seen = Some(chain);
        }
    }

    fn segment(&mut self, path: &Path, name_first_seq: u64, bytes: &[u8], torn_allowed: bool) {
        self.segments = self.segments.saturating_add(1);
        match format::decode_header(bytes) {
            Ok(header) => {
                if header.first_seq != name_first_seq {
                    self.settle_pending();
                    self.problem(TrailProblem::Damaged {
                        segment: path.to_owned(),
                        offset: 0,
                        after_seq: self.last_seq,
                        reason: format!(
                            "header says first seq {}, the file name says {name_first_seq}",
                            header.first_seq
                        ),
                    });
                }
                self.link(header.first_seq, header.chain_before);
            }
            // A newest segment created but never written whole, as recovery allows.
            Err(_) if torn_allowed && bytes.len() <= HEADER_LEN => {
                self.torn_tail_bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                return;
            }
            Err(reason) => {
                self.settle_pending();
                self.problem(TrailProblem::Damaged {
                    segment: path.to_owned(),
                    offset: 0,
                    after_seq: self.last_seq,
                    reason,
                });
            }
        }
        self.frames(path, bytes, torn_allowed);
    }

    /// Checks that a segment starting at `first_seq` links to what came before.
    fn link(&mut self, first_seq: u64, chain_before: Chain) {
        if first_seq == self.seq_expected {
            if chain_before != self.prev {
                self.settle_pending();
                self.problem(TrailProblem::BrokenLink {
                    segment_first_seq: first_seq,
                });
                // Go on from the previous segment's hash: if only the header was altered,
                // its first record still chains.
            }
        } else if first_seq > self.seq_expected {
            self.settle_pending();
            self.problem(TrailProblem::Missing {
                after_seq: self.seq_expected.saturating_sub(1),
                next_seq: first_seq,
            });
            self.prev = chain_before;
            self.seq_expected = first_seq;
        }
        // A segment starting before the expected record overlaps the one before: its records
        // are reported one by one as inserted.
    }

    fn frames(&mut self, path: &Path, bytes: &[u8], torn_allowed: bool) {
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            if self.reached_upto() {
                return;
            }
            let error = match format::decode_frame(bytes, offset) {
                Ok(frame) => {
                    let payload = bytes.get(frame.payload).unwrap_or_default();
                    self.record(frame.seq, frame.chain, payload);
                    offset = frame.end;
                    continue;
                }
                Err(error) => error,
            };
            let next_valid = format::find_valid_frame(bytes, offset.saturating_add(1), 0);
            if torn_allowed && next_valid.is_none() {
                self.torn_tail_bytes =
                    u64::try_from(bytes.len().saturating_sub(offset)).unwrap_or(u64::MAX);
                return;
            }
            // A whole frame failing its checksum, followed by a valid frame or the end of the
            // file, is one altered record.
            if let FrameError::Checksum { .. } = error {
                if let Some(frame) = format::peek_frame_fields(bytes, offset) {
                    let follows =
                        frame.end == bytes.len() || format::decode_frame(bytes, frame.end).is_ok();
                    if follows {
                        self.settle_pending();
                        self.records = self.records.saturating_add(1);
                        let seq = self.seq_expected;
                        self.problem(TrailProblem::Altered { seq });
                        self.accept(seq, frame.chain);
                        offset = frame.end;
                        continue;
                    }
                }
            }
            self.settle_pending();
            self.problem(TrailProblem::Damaged {
                segment: path.to_owned(),
                offset: u64::try_from(offset).unwrap_or(u64::MAX),
                after_seq: self.last_seq,
                reason: error.to_string(),
            });
            match next_valid {
                Some(next) => offset = next,
                None => return,
            }
        }
    }

    /// One checksum-valid record. A record whose hash does not follow is held as pending: if
    /// the next record carries the same number and does follow the chain before the pending
    /// one, the pending record was inserted; otherwise it was altered.
    fn record(&mut self, seq: u64, chain: Chain, payload: &[u8]) {
        self.records = self.records.saturating_add(1);
        if let Some(pending) = self.pending.take() {
            if seq == pending.seq && format::chain_next(&pending.prev, seq, payload) == chain {
                self.problem(TrailProblem::Inserted { seq });
                self.accept(seq, chain);
                return;
            }
            self.problem(TrailProblem::Altered { seq: pending.seq });
        }
        if seq == self.seq_expected {
            if format::chain_next(&self.prev, seq, payload) != chain {
                self.pending = Some(Pending {
                    seq,
                    prev: self.prev,
                });
            }
            self.accept(seq, chain);
        } else if seq > self.seq_expected {
            // The chain goes on from this record's stored hash: its own link is unverifiable.
            self.problem(TrailProblem::Missing {
                after_seq: self.seq_expected.saturating_sub(1),
                next_seq: seq,
            });
            self.accept(seq, chain);
        } else {
            // Not taken into the chain: the next record should follow the one before this.
            self.problem(TrailProblem::Inserted { seq });
        }
    }

    fn finish(mut self) -> TrailReport {
        self.settle_pending();
        let anchors = std::mem::take(&mut self.anchors);
        for anchor in &anchors {
            let truncated = if self.last_seq < anchor.seq {
                true
            } else {
                // `None`: the anchored record is missing, which is reported already.
                anchor.seen.is_some_and(|seen| seen != anchor.chain)
            };
            if truncated {
                self.problem(TrailProblem::Truncated {
                    anchor_seq: anchor.seq,
                });
            }
        }
        TrailReport {
            records: self.records,
            segments: self.segments,
            first_seq: self.first_seq.unwrap_or(0),
            last_seq: self.last_seq,
            head: self.prev,
            torn_tail_bytes: self.torn_tail_bytes,
            anchors_checked: anchors.len(),
            problems: self.problems,
            problems_total: self.problems_total,
            pruned_through: self.pruned_through,
        }
    }
}
