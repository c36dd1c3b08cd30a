//! The durable append-only journal: opaque records, numbered, hash-chained, group-committed,
//! fail-stop.
//!
//! # Why it exists
//!
//! The journal is the truth (snapshots are a cache): a client hears `Ok` only after the record
//! of its operation is on disk, and recovery replays the journal. Syncing every record alone
//! would cap the engine at the disk's fsync rate (hundreds to a few thousand per second), so
//! records are **group-committed**: one write and one `fdatasync` make a whole group durable.
//! Appending never waits for the disk; the caller waits for the durable point instead
//! ([`Journal::wait_durable`], [`Journal::durable`]), which is what lets an account actor take
//! its next message while the previous one's record is being synced (pipelined durability).
//! The journal stores opaque payloads: what a record means is the business of the layer above.
//!
//! # On-disk format (version 2)
//!
//! A journal is a directory holding a `LOCK` file, an `ANCHOR` file ([`anchor`]) and segment files named
//! `journal-{first_seq:020}.log`, where `first_seq` is the sequence number of the segment's first
//! record (zero-padded, so names sort in sequence order). Each segment is:
//!
//! ```text
//! header (56 bytes): magic "TALLYJNL" | format version u32 LE (= 2) | first_seq u64 LE
//!                    | chain_before [32] | crc32c u32 LE of the previous 52 bytes
//! record* (48 + n) : length n u32 LE | crc32c u32 LE | seq u64 LE | chain [32] | payload (n bytes)
//! ```
//!
//! A record's checksum is crc32c over its length, its sequence number, its chain hash and its
//! payload (every frame byte except the checksum itself). Its payload is at most
//! [`RECORD_BYTES_MAX`] bytes; empty payloads are allowed. The version lives in the header and
//! is bumped on any format change; a segment of another version is refused as corrupt rather
//! than misread (version 1, without the chain, is not read: there is no migration).
//!
//! Creating a segment writes the header, fsyncs the file, then fsyncs the directory, so a
//! segment name on disk never outlives its header. The committer rolls to a new segment before
//! a group that would take the current one past [`JournalConfig::segment_bytes_max`] (a segment
//! is therefore at most that big, unless a single group is bigger). Each new segment, and the
//! active one at open, has its blocks reserved up to `segment_bytes_max` (`fallocate` with
//! `KEEP_SIZE`: the length stays what was written, so recovery reads exactly the records): a
//! full disk shows as a failed segment creation (the empty segment is removed again and the
//! journal fail-stops), not as a group cut short; unless one group is larger than a segment,
//! or open could not reserve the active segment's rest, which is only warned about so that a
//! full disk never keeps the journal from opening. Filesystems that cannot preallocate are
//! used as they are.
//!
//! # The hash chain
//!
//! The checksum finds damage; it cannot find a change made on purpose, since anyone can
//! recompute a crc32c. So every record also carries a **chain hash**, which makes the journal a
//! tamper-evident audit trail:
//!
//! ```text
//! chain(seq) = BLAKE3(chain(seq - 1) || seq as u64 LE || payload)
//! chain(0)   = 32 zero bytes (the genesis value)
//! ```
//!
//! ([`chain_next`], [`GENESIS`]).
//!
//! Each segment's header carries `chain_before`, the chain hash of the record before its first
//! one (the previous segment's last), so segments link to each other, also across the move to
//! an archive ([`Journal::archive_before`] keeps files whole): an archive and the journal it was
//! archived from verify as one chain from seq 1. The committer computes the hashes when it
//! seals frames, in sequence order, on its own thread (appenders still only copy under the
//! queue lock), and keeps the hash of the last durable record: [`Journal::trail_head`].
//!
//! **What the chain finds.** A record altered (even with its checksum recomputed), inserted,
//! removed or reordered, as long as its chain hash and those after it were left as written; a
//! segment removed from the middle, or one whose header was relinked. [`verify_segments`] (files only) and [`Journal::verify_trail`]
//! (beside a running committer) walk the chain from the first record to the last and report
//! each problem as a [`TrailProblem`] naming the sequence number, resynchronising on the stored
//! hash so that one change is one problem.
//!
//! **What it cannot find alone.** Records cut from the end (a shorter chain is still a
//! consistent chain), and a chain recomputed from the first changed record to the end: the hash
//! is unkeyed, so anyone who can rewrite the files can recompute it. Both are found only against a head `(seq, hash)` known from elsewhere: an
//! **anchor**. The verify calls take anchors and report a chain that ends before one, or
//! differs at one, as [`TrailProblem::Truncated`]; [`Journal::verify_trail`] also checks the
//! head the committer holds in memory. The durable store keeps one anchor in its snapshot
//! database and says why a head should also be published off the machine
//! ([`crate::trail`]).
//!
//! # Sequence numbers
//!
//! [`Journal::append`] assigns the next sequence number: strictly increasing, without gaps, the
//! first being one past the last record recovered (or `after + 1` for a fresh directory opened
//! with [`Journal::open_after`]). Records reach the disk in sequence order, so the durable
//! records are always a prefix `1..=durable.seq` of what was appended.
//!
//! # The committer
//!
//! One dedicated OS thread (blocking I/O has no business on an async runtime) loops: wait on a
//! condition variable until records are queued; take them in FIFO order; for each group of at
//! most [`JournalConfig::group_records_max`] records and [`JournalConfig::group_bytes_max`] bytes
//! (at least one record), write it with one `write`, make it durable with one `fdatasync`
//! ([`SyncMode::Data`]) and publish [`Durable`]`{ seq: last of the group }` on the watch.
//! Appends that arrive during a sync queue up for the next group. Appenders only copy their
//! frame into the queue under a mutex; the committer computes the chain hashes and the
//! checksums.
//!
//! # Limits
//!
//! A payload is at most [`RECORD_BYTES_MAX`] (1 MiB): larger gets [`JournalError::TooLarge`].
//! At most [`JournalConfig::queue_records_max`] records and [`JournalConfig::queue_bytes_max`]
//! frame bytes may be appended but not yet synced (queued or being written); an append past
//! either gets [`JournalError::Full`] / [`JournalError::FullBytes`], which the caller turns into
//! back-pressure (`Busy`). A single record is always admitted into an empty queue.
//!
//! # Fail-stop
//!
//! If a write or a sync fails, the journal can no longer tell what is on disk (after a failed
//! `fsync` the kernel may have dropped the dirty pages), so it stops: the committer publishes
//! `Durable { failed: Some(reason) }` with `seq` unchanged, drops the queued records (none was
//! acknowledged) and exits; every later append gets [`JournalError::Failed`]. The durable point
//! never advances past what was synced. Recovery is a restart: reopen the journal.
//!
//! # Recovery
//!
//! [`Journal::open`] takes an exclusive `flock` on `dir/LOCK` (a second opener, in this process
//! or another, gets [`JournalError::Locked`] once the lock stayed taken for 250 ms: a process
//! that forks holds copies of its open files until the child executes), then reads the segments in order and checks every
//! record (header, length, checksum, sequence number, chain hash), including those that
//! [`Journal::open_after`] does not replay: verifying is cheap next to reading, and damage is
//! better found now than when the snapshot that covers it is lost. The rules:
//!
//! - Sequence numbers are contiguous across segments; a gap or overlap is
//!   [`JournalError::Corrupt`]. The first segment must start at or before the first record to
//!   replay, or the open fails with [`JournalError::Trimmed`].
//! - The chain runs from the oldest segment's `chain_before` (the journal does not read an
//!   archive at open) through every record; a record whose chain hash does not follow, or a
//!   segment whose `chain_before` is not the previous segment's last hash, is
//!   [`JournalError::Corrupt`] naming the sequence number, even in the newest segment: a
//!   checksum-valid record is never a torn write. The committer continues from the chain hash
//!   of the last valid record (after a torn tail is cut, of the last record before it). A
//!   fresh directory starts its chain at [`GENESIS`], whatever `after` is.
//! - The **anchor** ([`anchor`], `dir/ANCHOR`) vouches for every record up to its seq: a
//!   journal that ends before it, a bad record at or before it, a chain hash that differs from
//!   it, segments without the anchor file, or an anchor without segments are
//!   [`JournalError::Corrupt`] naming the range at risk, never a torn tail. After recovery the
//!   anchor is moved to the last record recovered.
//! - In the **newest** segment, past the anchor, a bad record (incomplete, or failing its
//!   checksum) after which the rest of the file holds no valid record is a **torn tail**: the write of an
//!   unacknowledged group was cut short (acknowledgements follow the sync). The file is
//!   truncated at the start of that record, the bytes counted in
//!   [`Recovery::torn_tail_bytes`] and logged with `tracing::warn!`. A newest segment whose
//!   header is incomplete or invalid and that holds nothing else is treated the same way (its
//!   header is rewritten).
//! - A bad record followed by any later valid record, a bad record in an older segment, or a
//!   checksum-valid record with the wrong sequence number is **corruption**: open fails with
//!   [`JournalError::Corrupt`] naming the segment and the byte offset. Acknowledged data is never
//!   dropped silently.
//! - The newest segment is fsynced before the durable point is published as the last recovered
//!   record: a record that reached the page cache but not the disk before a process crash is
//!   made durable before anything is built on it.
//!
//! Open reads one segment at a time into memory, so its memory use is about one segment.
//!
//! # Reading
//!
//! [`Journal::read_from`] hands the records `from_seq ..= durable.seq` (the durable point as of
//! the call) to a callback, in order, while the committer keeps appending. It reads the segment
//! files through its own read-only handles and never touches the append queue, so it never
//! blocks the committer (it takes the queue mutex once, for a moment, to check for close). It
//! never reads a frame past the durable point, so it never sees a torn or unsynced record; the
//! durable point is read before the directory is listed, so every segment holding a record up
//! to it is in that listing (a segment is created before its first record is written).
//! Segments that end before `from_seq` are skipped whole (a segment ends where the next one's
//! file name says it starts); inside the first segment read, the frames before `from_seq` are
//! skipped by their length (their sequence number is checked, their payload not read). Every
//! frame handed to the callback has its checksum and sequence number verified; a mismatch, a
//! gap, or a file that ends before a durable record is [`JournalError::Corrupt`]. Reads do not
//! check the chain (a read may start anywhere): the verify calls do. Memory use is one read
//! buffer plus the largest record handed out.
//!
//! **Trimming takes no lock against reads; a read that loses the race gets
//! [`JournalError::Trimmed`].** Neither waits for the other. Segments are opened one at a time;
//! once open, a segment stays readable even if [`Journal::trim_before`] unlinks it (POSIX
//! semantics). A segment that is gone by the time the read reaches it (trimmed after the
//! listing) ends the read with `Trimmed` whose `after + 1` is the first record that could not be
//! read: possibly after some records were already handed out, always in order and without a
//! gap, never by skipping a record silently. A read that starts at or after
//! [`Journal::first_seq`] cannot hit this unless a new trim starts meanwhile. Rollover needs
//! nothing: segments created after the listing hold only records past the durable point read.
//! The callback may append, trim or read itself: the read holds no lock while calling it.

pub mod anchor;
pub mod ceiling;
mod committer;
mod format;
mod reader;
mod recovery;
pub mod salvage;
mod trail;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use committer::{Committer, CommitterConfig, Queue, Shared};

pub use format::{chain_hex, chain_next, GENESIS};
pub use trail::{verify_segments, TrailProblem, TrailReport, TRAIL_PROBLEMS_MAX};

/// A chain hash: 32 bytes of BLAKE3 (see the module docs, "The hash chain").
pub type Chain = [u8; 32];

/// Largest payload a record may carry, in bytes (1 MiB).
pub const RECORD_BYTES_MAX: usize = 1 << 20;

/// [`JournalConfig::anchor_interval`]'s default.
pub const ANCHOR_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);

/// Name of the lock file inside the journal directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// How the committer makes a group durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` after every group: a published durable point survives power loss.
    #[default]
    Data,
    /// No sync at all: the durable point only means "written to the OS". **Not durable**; for
    /// benchmarks and tests that measure everything but the disk.
    None,
}

/// Where a journal lives and the limits it runs under. [`JournalConfig::new`] gives defaults.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Directory holding the segments and the lock file; created if missing.
    pub dir: PathBuf,
    /// A segment rolls over before a group that would take it past this many bytes. Default 64 MiB.
    pub segment_bytes_max: u64,
    /// Most records written and synced as one group. Default 4096.
    pub group_records_max: usize,
    /// Most bytes (frames included) written and synced as one group; a group holds at least one
    /// record whatever its size. Default 4 MiB.
    pub group_bytes_max: usize,
    /// Most records appended but not yet synced; past it, appends get [`JournalError::Full`].
    /// Default 262,144.
    pub queue_records_max: usize,
    /// Most frame bytes appended but not yet synced; past it, appends get
    /// [`JournalError::FullBytes`]. Bounds the queue's memory. Default 64 MiB.
    pub queue_bytes_max: usize,
    /// How groups are made durable. Default [`SyncMode::Data`].
    pub sync: SyncMode,
    /// The anchor ([`anchor`]) is rewritten at most this often while groups are synced, and
    /// this long after the last group when the journal goes idle: the window in which damage
    /// to acknowledged records cannot be told from a torn tail. Default 100 ms; at least 1 ms.
    pub anchor_interval: Duration,
    /// Test hook (feature `testing`): the sync after this many successful syncs fails as if
    /// the disk had errored, so that fail-stop can be tested.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fail_after_syncs: Option<u64>,
}

impl JournalConfig {
    /// Default limits for a journal in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes_max: 64 << 20,
            group_records_max: 4096,
            group_bytes_max: 4 << 20,
            queue_records_max: 262_144,
            queue_bytes_max: 64 << 20,
            sync: SyncMode::Data,
            anchor_interval: ANCHOR_INTERVAL_DEFAULT,
            #[cfg(feature = "testing")]
            fail_after_syncs: None,
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let header_len = u64::try_from(format::HEADER_LEN).unwrap_or(u64::MAX);
        let problem = if self.segment_bytes_max <= header_len {
            Some(format!(
                "segment_bytes_max = {} must exceed the {header_len}-byte segment header",
                self.segment_bytes_max
            ))
        } else if self.group_records_max == 0 {
            Some("group_records_max must be at least 1".to_owned())
        } else if self.group_bytes_max == 0 {
            Some("group_bytes_max must be at least 1".to_owned())
        } else if self.queue_records_max == 0 {
            Some("queue_records_max must be at least 1".to_owned())
        } else if self.queue_bytes_max == 0 {
            Some("queue_bytes_max must be at least 1".to_owned())
        } else if self.anchor_interval < Duration::from_millis(1) {
            Some("anchor_interval must be at least 1 ms".to_owned())
        } else {
            None
        };
        match problem {
            Some(reason) => Err(JournalError::Config(reason)),
            None => Ok(()),
        }
    }
}

/// The durable point, published by the committer after every group's sync: the store-wide
/// [`crate::DurablePoint`] (`seq` = highest sequence number on disk; `failed` = fail-stop
/// reason, after which `seq` no longer advances).
pub type Durable = crate::DurablePoint;

/// What [`Journal::open`] found and replayed.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// Sequence number of the last record in the journal (`after` for a fresh directory); the
    /// next append gets `last_seq + 1`.
    pub last_seq: u64,
    /// Records passed to the replay callback.
    pub records: u64,
    /// Records verified but not replayed because `seq <= after` ([`Journal::open_after`]).
    pub records_skipped: u64,
    /// Segment files in the journal after open.
    pub segments: usize,
    /// Bytes cut from the end of the newest segment as a torn tail (0 after a clean shutdown).
    /// Never a record up to [`Recovery::anchored_seq`]: damage there refuses the open.
    pub torn_tail_bytes: u64,
    /// The sequence number the anchor vouched for when open began (see [`anchor`]).
    pub anchored_seq: u64,
    /// The directory held no journal: this open created it (and its anchor).
    pub created: bool,
    /// Time taken by open: scan, replay and truncation.
    pub elapsed: Duration,
}

/// Everything that can go wrong with the journal. Messages name the file, offset or limit.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An operating-system error on a journal file or directory.
    #[error("journal I/O error: {op} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done ("read", "create segment in", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another open journal (in this process or another) holds the directory's lock.
    #[error(
        "journal directory {dir} is locked by another open journal (exclusive lock on {dir}/{LOCK_FILE_NAME})",
        dir = .dir.display()
    )]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A segment holds damage that is not a torn tail; the journal refuses to open rather than
    /// drop acknowledged records.
    #[error(
        "journal {segment} is damaged at byte offset {offset}: {reason}; refusing to open",
        segment = .segment.display()
    )]
    Corrupt {
        /// The segment file (or the anchor file, or the journal directory).
        segment: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Too many records appended but not yet synced.
    #[error("journal queue is full: {queued} records are waiting to be synced, the limit is {limit} (queue_records_max)")]
    Full {
        /// Records appended but not yet synced.
        queued: usize,
        /// `queue_records_max`.
        limit: usize,
    },
    /// Too many bytes appended but not yet synced.
    #[error("journal queue is full: {bytes_queued} bytes are waiting to be synced, the limit is {bytes_max} (queue_bytes_max)")]
    FullBytes {
        /// Frame bytes appended but not yet synced.
        bytes_queued: usize,
        /// `queue_bytes_max`.
        bytes_max: usize,
    },
    /// The journal fail-stopped after a failed write or sync; the reason names the file.
    #[error("journal refuses appends: {0}")]
    Failed(Arc<str>),
    /// The payload exceeds [`RECORD_BYTES_MAX`].
    #[error("journal record payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// [`RECORD_BYTES_MAX`].
        max: usize,
    },
    /// The replay callback rejected a record; open was aborted.
    #[error("replay of journal record seq {seq} failed: {reason}")]
    Replay {
        /// The record's sequence number.
        seq: u64,
        /// The callback's error.
        reason: String,
    },
    /// The journal's oldest record is newer than the first record the caller needs.
    #[error(
        "journal in {dir} starts at seq {first_seq} but replay must start at seq {next}: the \
         records before were trimmed; open after a snapshot covering seq {covered}",
        dir = .dir.display(),
        next = .after.saturating_add(1),
        covered = .first_seq.saturating_sub(1)
    )]
    Trimmed {
        /// The journal directory.
        dir: PathBuf,
        /// Sequence number of the oldest record on disk.
        first_seq: u64,
        /// What the caller's snapshot covers (0 for [`Journal::open`]).
        after: u64,
    },
    /// The configuration is unusable; the message names the field.
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// The journal was closed.
    #[error("journal is closed")]
    Closed,
}

/// A journal's running totals (see [`Journal::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// The last sequence number appended.
    pub appended_seq: u64,
    /// The last sequence number durable.
    pub durable_seq: u64,
    /// Groups written and synced since open.
    pub groups: u64,
    /// Records in them.
    pub records: u64,
    /// Bytes of their frames (headers included; segment headers and anchors not).
    pub bytes: u64,
    /// Nanoseconds spent writing and syncing them.
    pub sync_ns_total: u64,
    /// Nanoseconds the last group took.
    pub sync_ns_last: u64,
}

/// A handle to an open journal. Cheap to clone (an `Arc`), `Send + Sync`; the journal shuts
/// down when [`Journal::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    dir: PathBuf,
    committer: Mutex<Option<JoinHandle<()>>>,
    lock_file: Mutex<Option<File>>,
    trim: Mutex<()>,
    /// First seq of the oldest segment not being trimmed; see [`Journal::first_seq`].
    first_seq: AtomicU64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .field("last_seq", &self.last_seq())
            .field("durable", &*self.inner.shared.durable_rx.borrow())
            .finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `config.dir`, takes an exclusive lock on
    /// `dir/LOCK` (a second opener, also from another process, gets [`JournalError::Locked`]),
    /// replays every valid record in sequence order through `on_record(seq, payload)` (an `Err`
    /// from the callback aborts open with [`JournalError::Replay`]), truncates a torn tail (see
    /// the module docs) and starts the committer thread.
    pub fn open(
        config: JournalConfig,
        on_record: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Journal, Recovery), JournalError> {
        Self::open_after(config, 0, on_record)
    }

    /// Like [`Journal::open`], but replays only the records with `seq > after`: those a snapshot
    /// covering `1..=after` does not hold. Records `<= after` are still read and
    /// checksum-verified (counted in [`Recovery::records_skipped`]), so damage is found even in
    /// a part a snapshot covers. The snapshot must cover only durable records; if the journal
    /// ends before `after` the open fails with [`JournalError::Corrupt`], and if its oldest
    /// segment starts after `after + 1` with [`JournalError::Trimmed`]. In an empty directory
    /// the first append gets `after + 1`.
    pub fn open_after(
        config: JournalConfig,
        after: u64,
        on_record: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Journal, Recovery), JournalError> {
        Self::open_after_locked(config, None, after, on_record)
    }

    /// [`Journal::open_after`] with the directory's lock already taken by the caller
    /// ([`lock_dir`]), so that no other opener slips in between.
    pub(crate) fn open_after_locked(
        config: JournalConfig,
        lock: Option<File>,
        after: u64,
        mut on_record: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(Journal, Recovery), JournalError> {
        let started = Instant::now();
        config.validate()?;
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let lock_file = match lock {
            Some(file) => file,
            None => lock_dir(&dir)?,
        };
        let sync = config.sync == SyncMode::Data;
        let recovered = recovery::recover(&dir, after, sync, &mut on_record)?;
        if let Err(error) = format::preallocate(&recovered.active.file, config.segment_bytes_max) {
            // Best effort here: a full disk must not keep the journal from opening (pruning
            // and salvage open it to free space); the next write finds the disk full.
            tracing::warn!(
                segment = %recovered.active.path.display(),
                %error,
                "journal: could not reserve the active segment's blocks"
            );
        }

        let last_seq = recovered.last_seq;
        let (durable_tx, durable_rx) = watch::channel(Durable {
            seq: last_seq,
            failed: None,
        });
        let seq_next = last_seq.checked_add(1).ok_or_else(|| {
            JournalError::Config(format!(
                "the journal ends at seq {last_seq}: no sequence numbers left"
            ))
        })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                bytes: Vec::new(),
                seq_next,
                seq_synced: last_seq,
                chain_synced: recovered.chain,
                bytes_unsynced: 0,
                failed: None,
                closing: false,
                paused: false,
            }),
            work: Condvar::new(),
            durable_rx,
            queue_records_max: config.queue_records_max,
            queue_bytes_max: config.queue_bytes_max,
            stats: Default::default(),
        });
        // Everything recovered is durable now (the newest segment was synced): vouch for it, so
        // that damage to it found by a later open is never taken for a torn tail.
        let mut anchor_file = recovered.anchor_file;
        let anchored_before = recovered.anchor.map_or(0, |a| a.seq);
        anchor_file
            .write(anchor::Anchor {
                seq: last_seq,
                chain: recovered.chain,
            })
            .map_err(|source| JournalError::Io {
                op: "write",
                path: anchor_file.path().to_owned(),
                source,
            })?;
        let committer = Committer {
            shared: Arc::clone(&shared),
            durable_tx,
            active: recovered.active,
            anchor: anchor_file,
            anchor_interval: config.anchor_interval,
            anchor_written_at: Instant::now(),
            config: CommitterConfig {
                dir: dir.clone(),
                segment_bytes_max: config.segment_bytes_max,
                group_records_max: config.group_records_max,
                group_bytes_max: config.group_bytes_max,
                sync: config.sync,
                #[cfg(feature = "testing")]
                fail_after_syncs: config.fail_after_syncs,
                #[cfg(not(feature = "testing"))]
                fail_after_syncs: None,
            },
            syncs_ok: 0,
            batch: Vec::new(),
            chain: recovered.chain,
        };
        let handle = std::thread::Builder::new()
            .name("tally-journal".to_owned())
            .spawn(move || committer.run())
            .map_err(|source| JournalError::Io {
                op: "spawn the committer thread for",
                path: dir.clone(),
                source,
            })?;

        let recovery = Recovery {
            last_seq,
            records: recovered.records_replayed,
            records_skipped: recovered.records_skipped,
            segments: recovered.segments,
            torn_tail_bytes: recovered.torn_tail_bytes,
            anchored_seq: anchored_before,
            created: recovered.anchor.is_none(),
            elapsed: started.elapsed(),
        };
        tracing::info!(
            dir = %dir.display(),
            last_seq,
            records_replayed = recovery.records,
            records_skipped = recovery.records_skipped,
            segments = recovery.segments,
            torn_tail_bytes = recovery.torn_tail_bytes,
            elapsed_ms = recovery.elapsed.as_millis(),
            "journal: opened"
        );
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                dir,
                committer: Mutex::new(Some(handle)),
                lock_file: Mutex::new(Some(lock_file)),
                trim: Mutex::new(()),
                first_seq: AtomicU64::new(recovered.first_seq),
            }),
        };
        Ok((journal, recovery))
    }

    /// Queues `payload` for the committer and returns its sequence number (the next one:
    /// strictly increasing, no gaps). Never waits for the disk: wait for durability with
    /// [`Journal::wait_durable`] or [`Journal::durable`]. Records reach the disk in sequence
    /// order. Empty payloads are allowed.
    ///
    /// Errors: [`JournalError::TooLarge`] above [`RECORD_BYTES_MAX`]; [`JournalError::Full`] /
    /// [`JournalError::FullBytes`] when the un-synced records reach the queue limits (back off
    /// and retry); [`JournalError::Failed`] after fail-stop; [`JournalError::Closed`] after
    /// close.
    pub fn append(&self, payload: &[u8]) -> Result<u64, JournalError> {
        let too_large = || JournalError::TooLarge {
            len: payload.len(),
            max: RECORD_BYTES_MAX,
        };
        if payload.len() > RECORD_BYTES_MAX {
            return Err(too_large());
        }
        let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
        let frame_len = format::FRAME_HEADER_LEN.saturating_add(payload.len());
        let shared = &self.inner.shared;

        let mut queue = shared.queue.lock();
        if let Some(reason) = &queue.failed {
            return Err(JournalError::Failed(Arc::clone(reason)));
        }
        if queue.closing {
            return Err(JournalError::Closed);
        }
        let queued = queue
            .seq_next
            .saturating_sub(1)
            .saturating_sub(queue.seq_synced);
        let queued = usize::try_from(queued).unwrap_or(usize::MAX);
        if queued >= shared.queue_records_max {
            return Err(JournalError::Full {
                queued,
                limit: shared.queue_records_max,
            });
        }
        if queue.bytes_unsynced > 0
            && queue.bytes_unsynced.saturating_add(frame_len) > shared.queue_bytes_max
        {
            return Err(JournalError::FullBytes {
                bytes_queued: queue.bytes_unsynced,
                bytes_max: shared.queue_bytes_max,
            });
        }
        let seq = queue.seq_next;
        let Some(seq_next) = seq.checked_add(1) else {
            return Err(JournalError::Failed(Arc::from(
                "sequence numbers exhausted",
            )));
        };
        let was_empty = queue.bytes.is_empty();
        format::push_unsealed_frame(&mut queue.bytes, seq, len, payload);
        queue.seq_next = seq_next;
        queue.bytes_unsynced = queue.bytes_unsynced.saturating_add(frame_len);
        drop(queue);
        if was_empty {
            shared.work.notify_one();
        }
        Ok(seq)
    }

    /// A watch on the durable point; the committer updates it after each group's sync and on
    /// fail-stop. The channel closes (`changed()` errs) once the committer has exited.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.inner.shared.durable_rx.clone()
    }

    /// Waits until every record up to `seq` is durable. Errs with [`JournalError::Failed`] if
    /// the journal fail-stopped first, or [`JournalError::Closed`] if it closed without `seq`
    /// becoming durable (`seq` was never appended).
    pub async fn wait_durable(&self, seq: u64) -> Result<(), JournalError> {
        let mut durable_rx = self.durable();
        let waited = durable_rx
            .wait_for(|durable| durable.seq >= seq || durable.failed.is_some())
            .await
            .map(|durable| durable.clone());
        // On Err the committer has exited; its last publication is still readable.
        let durable = match waited {
            Ok(durable) => durable,
            Err(_) => durable_rx.borrow().clone(),
        };
        if durable.seq >= seq {
            Ok(())
        } else if let Some(reason) = durable.failed {
            Err(JournalError::Failed(reason))
        } else {
            Err(JournalError::Closed)
        }
    }

    /// Deletes the whole segment files all of whose records have `seq < seq` (those a snapshot
    /// covering `..seq` makes redundant), oldest first, never the newest (active) segment, and
    /// returns how many were removed. The directory is fsynced after each removal, so a crash
    /// leaves a contiguous suffix of segments. Takes no lock against [`Journal::read_from`]: a
    /// read that needs a removed segment gets [`JournalError::Trimmed`] (module docs,
    /// "Reading").
    pub fn trim_before(&self, seq: u64) -> Result<usize, JournalError> {
        self.remove_before(seq, None).map(|moved| moved.len())
    }

    /// Like [`Journal::trim_before`], but moves the segments into `archive_dir` (created if
    /// needed) instead of deleting them: the archive keeps the journal's file format and names,
    /// and [`read_archive`] reads it. Returns the first sequence numbers of the segments moved.
    pub fn archive_before(&self, seq: u64, archive_dir: &Path) -> Result<Vec<u64>, JournalError> {
        std::fs::create_dir_all(archive_dir).map_err(|source| JournalError::Io {
            op: "create archive directory",
            path: archive_dir.to_owned(),
            source,
        })?;
        self.remove_before(seq, Some(archive_dir))
    }

    fn remove_before(&self, seq: u64, archive: Option<&Path>) -> Result<Vec<u64>, JournalError> {
        let _trim = self.inner.trim.lock();
        {
            let queue = self.inner.shared.queue.lock();
            if queue.closing {
                return Err(JournalError::Closed);
            }
        }
        let dir = &self.inner.dir;
        let segments = format::list_segments(dir).map_err(|source| JournalError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        let mut removed = Vec::new();
        // Segment i holds seq first_i ..= first_{i+1} - 1; it may go once first_{i+1} <= seq.
        for pair in segments.windows(2) {
            let [segment, next] = pair else { break };
            if next.first_seq > seq {
                break;
            }
            // Published before the removal, so that a reader starting at `first_seq()` never
            // asks for the segment being removed; taken back if the removal fails. Only trim
            // (serialised by `self.inner.trim`) stores it.
            let first_seq_before = self.inner.first_seq.swap(next.first_seq, Ordering::AcqRel);
            let outcome = match archive {
                None => std::fs::remove_file(&segment.path).map_err(|e| ("remove segment", e)),
                Some(archive) => {
                    let target = archive.join(format::segment_file_name(segment.first_seq));
                    std::fs::rename(&segment.path, &target)
                        .and_then(|()| format::sync_dir(archive))
                        .map_err(|e| ("archive segment", e))
                }
            };
            if let Err((op, source)) = outcome {
                self.inner
                    .first_seq
                    .store(first_seq_before, Ordering::Release);
                return Err(JournalError::Io {
                    op,
                    path: segment.path.clone(),
                    source,
                });
            }
            format::sync_dir(dir).map_err(|source| JournalError::Io {
                op: "fsync directory",
                path: dir.clone(),
                source,
            })?;
            tracing::debug!(segment = %segment.path.display(), archived = archive.is_some(), "journal: segment left the journal");
            removed.push(segment.first_seq);
        }
        Ok(removed)
    }

    /// Stops accepting appends, syncs everything queued, joins the committer thread and
    /// releases the lock. Other handles get [`JournalError::Closed`] from then on. Errs with
    /// [`JournalError::Failed`] if the journal had fail-stopped (queued records were not
    /// written).
    /// Closing twice is harmless: the second reports what the first found.
    pub fn close(&self) -> Result<(), JournalError> {
        self.inner.shutdown()
    }

    /// Calls `f(seq, payload)` for every record with `from_seq <= seq <= durable.seq`, the
    /// durable point as of the call, in sequence order, and returns how many records were passed
    /// to `f` (the one for which it returned `Ok(false)` included). Stops early when `f` returns
    /// `Ok(false)`; an `Err` from `f` stops the read and is returned as is. `from_seq` 0 reads
    /// as 1. Records appended or made durable during the call are not read: call again from
    /// the next seq. Usable from any thread while the committer appends; see the module docs,
    /// "Reading", for how it stays off the committer's path and races with trimming.
    ///
    /// Errors: [`JournalError::Trimmed`] if `from_seq` is older than the oldest remaining
    /// segment, or if a concurrent [`Journal::trim_before`] removed a segment before the read
    /// reached it (`after + 1` is then the first record not read; earlier ones were handed
    /// out); [`JournalError::Corrupt`] for a bad checksum, header or sequence number, or a
    /// durable record missing from its segment; [`JournalError::Io`]; [`JournalError::Closed`]
    /// after close.
    pub fn read_from(
        &self,
        from_seq: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, JournalError>,
    ) -> Result<u64, JournalError> {
        if self.inner.shared.queue.lock().closing {
            return Err(JournalError::Closed);
        }
        // Read before listing the segments: see `reader::read_from`.
        let durable_seq = self.inner.shared.durable_rx.borrow().seq;
        reader::read_from(&self.inner.dir, from_seq, durable_seq, &mut f)
    }

    /// The sequence number of the first record still on disk: the first seq of the oldest
    /// segment after [`Journal::trim_before`], or `last_seq + 1` if the journal holds no record
    /// (a fresh journal). While a trim is removing a segment, this already names the first
    /// record after it. Reads no file.
    pub fn first_seq(&self) -> u64 {
        self.inner.first_seq.load(Ordering::Acquire)
    }

    /// What the journal has done so far: records appended and durable, groups written, time
    /// spent writing and syncing them.
    pub fn stats(&self) -> JournalStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.shared.stats;
        JournalStats {
            appended_seq: self.last_seq(),
            durable_seq: self.inner.shared.durable_rx.borrow().seq,
            groups: c.groups.load(Relaxed),
            records: c.records.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            sync_ns_total: c.sync_ns_total.load(Relaxed),
            sync_ns_last: c.sync_ns_last.load(Relaxed),
        }
    }

    /// The last sequence number assigned (by an append, or recovered at open).
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.queue.lock().seq_next.saturating_sub(1)
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durable head of the hash chain: the sequence number of the last durable record and
    /// its chain hash (as of the call; published with the durable point). For a journal that
    /// holds no record yet, the sequence number it continues after and [`GENESIS`].
    pub fn trail_head(&self) -> (u64, Chain) {
        let queue = self.inner.shared.queue.lock();
        (queue.seq_synced, queue.chain_synced)
    }

    /// Verifies the hash chain from seq 1 to the durable point (as of the call) while the
    /// journal is open: through the segments of `archive_dir` (made by
    /// [`Journal::archive_before`]; `None` if there is none), then this journal's. Checks
    /// `anchors` and, as one more anchor, the durable head the committer holds in memory
    /// ([`Journal::trail_head`]), so a record changed on disk under the running journal is
    /// found even at the head. Holds the trim lock meanwhile (a trim or archive waits; appends
    /// and reads do not). See [`verify_segments`] for the report; records appended during the
    /// call are not checked.
    ///
    /// Errors: [`JournalError::Io`]; [`JournalError::Closed`] after close.
    pub fn verify_trail(
        &self,
        archive_dir: Option<&Path>,
        anchors: &[(u64, Chain)],
        pruned: Option<(u64, Chain)>,
    ) -> Result<TrailReport, JournalError> {
        let _trim = self.inner.trim.lock();
        if self.inner.shared.queue.lock().closing {
            return Err(JournalError::Closed);
        }
        // Read before listing the segments, as `read_from` does.
        let head = self.trail_head();
        let mut all = anchors.to_vec();
        all.push(head);
        let mut dirs: Vec<&Path> = archive_dir.into_iter().collect();
        dirs.push(&self.inner.dir);
        trail::walk(&dirs, Some(head.0), &all, pruned)
    }

    /// Test hook (feature `testing`): while paused, the committer takes no new records (a
    /// group already taken completes), so tests can fill the queue deterministically. Close
    /// overrides a pause.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn set_committer_paused(&self, paused: bool) {
        self.inner.shared.queue.lock().paused = paused;
        self.inner.shared.work.notify_one();
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), JournalError> {
        {
            let mut queue = self.shared.queue.lock();
            queue.closing = true;
        }
        self.shared.work.notify_one();
        let handle = self.committer.lock().take();
        let joined = match handle {
            Some(handle) => handle.join().is_ok(),
            None => true,
        };
        // The committer has exited: nothing writes to the directory any more.
        drop(self.lock_file.lock().take());
        if !joined {
            return Err(JournalError::Failed(Arc::from(
                "the journal committer thread panicked",
            )));
        }
        match &self.shared.queue.lock().failed {
            Some(reason) => Err(JournalError::Failed(Arc::clone(reason))),
            None => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.committer.lock().is_none() {
            return; // closed explicitly; close reported the outcome
        }
        if let Err(error) = self.shutdown() {
            tracing::error!(dir = %self.dir.display(), %error, "journal: shut down with an error");
        }
    }
}

/// Creates `dir/LOCK` if needed and takes an exclusive `flock` on it, held until the returned
/// file is dropped. The file holds the owner's process id, for people.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let io = |op: &'static str| {
        let path = path.clone();
        move |source| JournalError::Io { op, path, source }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("open"))?;
    let taken = crate::open_dirs::wait_for_lock(|| {
        Ok(FileExt::try_lock_exclusive(&file)
            .map_err(io("lock"))?
            .then_some(()))
    })?;
    if taken.is_none() {
        return Err(JournalError::Locked {
            dir: dir.to_owned(),
        });
    }
    file.set_len(0).map_err(io("truncate"))?;
    writeln!(file, "pid {}", std::process::id()).map_err(io("write"))?;
    Ok(file)
}

pub(crate) use format::{segment_file_name, sync_dir};

/// The oldest segment file of the journal directory `dir`, if it has one.
pub(crate) fn first_segment(dir: &Path) -> Result<Option<PathBuf>, JournalError> {
    let segments = format::list_segments(dir).map_err(|source| JournalError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    })?;
    Ok(segments.into_iter().next().map(|segment| segment.path))
}

/// The first sequence number and the chain hash before it that the segment file at `path`
/// names in its header.
pub(crate) fn segment_link(path: &Path) -> Result<(u64, Chain), JournalError> {
    use std::io::Read;
    let mut header = [0u8; format::HEADER_LEN];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(|source| JournalError::Io {
            op: "read the header of",
            path: path.to_owned(),
            source,
        })?;
    let header = format::decode_header(&header).map_err(|reason| JournalError::Corrupt {
        segment: path.to_owned(),
        offset: 0,
        reason,
    })?;
    Ok((header.first_seq, header.chain_before))
}

/// Reads the records `from_seq ..= upto_seq` of an archive made by [`Journal::archive_before`]
/// (read-only; the archive's segments are immutable), calling `f` for each in order until it
/// returns `Ok(false)`. `upto_seq` must not pass the archive's last record (the journal's
/// [`Journal::first_seq`] − 1). Returns the number of records passed to `f`.
pub fn read_archive(
    archive_dir: &Path,
    from_seq: u64,
    upto_seq: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<bool, JournalError>,
) -> Result<u64, JournalError> {
    if !archive_dir.exists() {
        return Ok(0);
    }
    reader::read_from(archive_dir, from_seq, upto_seq, &mut f)
}

/// The first sequence numbers of the segments in an archive (or journal) directory, oldest
/// first; empty if the directory does not exist.
pub fn segment_starts(dir: &Path) -> Result<Vec<u64>, JournalError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    format::list_segments(dir)
        .map(|segments| segments.iter().map(|s| s.first_seq).collect())
        .map_err(|source| JournalError::Io {
            op: "list",
            path: dir.to_owned(),
            source,
        })
}
