//! The durable store: the journal for every change, a redb file for snapshots.
//!
//! Layout of a data directory:
//! - `journal/`: the append-only log ([`crate::journal`]); its `LOCK` makes the directory
//!   single-owner: a second opener, in this process or another, gets [`StoreError::Locked`];
//!   its `ANCHOR` vouches for the durable point ([`crate::journal::anchor`]).
//! - `snapshots/tally.redb`: the snapshot database ([`crate::snapdb`]), a table each for the
//!   account snapshots (account id → encoded [`Account`], whose `last_seq` says which records
//!   it covers), their remembered idempotency keys, the directory (account id → encoded
//!   [`AccountSpec`]), the history index, the usage aggregates, the pruned-history bases, and
//!   the store's own marks (trim point, anchor, limits).
//!
//! Every change goes to the journal (one fdatasync per group); the snapshot database only
//! receives snapshots, off the request path, in unsynced commits that one synced commit makes
//! durable before the journal is trimmed.
//!
//! **Open** = recovery: for each journal record, the account(s) it touches are loaded (snapshot,
//! or nothing before the account's `Opened` record) and the record is applied where the
//! snapshot does not cover it. Every account touched is then written back as a snapshot (one
//! transaction), the database is flushed, and the journal is trimmed: after open, every
//! account's snapshot is current.
//!
//! **Checkpoint** ([`Store::checkpoint`]): the engine saves the snapshots of accounts changed
//! since their last one, then asks to trim the journal before the oldest record a snapshot does
//! not cover yet. The snapshot database is flushed before any segment is removed, so a trimmed
//! record is always covered by a snapshot on disk.
//!
//! **History**: a checkpoint does not delete journal segments, it moves them to `archive/`
//! (same format), and indexes each archived segment in the table `history_index`
//! ((account id, segment's first sequence number) → nothing): one entry per account a segment
//! touches, not per record, so keeping history costs the request path nothing. A history page
//! reads the archived segments the index names for the account, then the journal. The archive
//! grows with the ledger, as a ledger's history must; prune it with
//! [`DurableStore::prune_history`] (never by hand: see [`retention`]).
//!
//! **Audit trail** ([`crate::trail`]): journal records are hash-chained and segment headers
//! link to the segment before, so `archive/` then `journal/` form one chain from seq 1.
//! [`DurableStore::verify_trail`] (open store, up to the durable point, under the archive's read
//! lock) and [`crate::verify_trail`] (a directory no store has open; works where open fails)
//! report every record altered, inserted or removed, and every segment relinked. Open refuses
//! a chain mismatch in `journal/` as corruption; `archive/` is not read at open, so damage
//! there shows only to verify. Every open and every checkpoint stores the durable head
//! ([`DurableStore::trail_head`]) as the **anchor** (meta key `trail_anchor`: seq, then hash;
//! it only moves forward), so records cut from the end are reported too, and open refuses a
//! journal that ends before its anchor. Someone able to rewrite every file *and* the snapshot
//! database can rebuild a consistent chain and anchor: publish the head off the machine to
//! close that gap.
//!
//! **Close** ([`Store::close`]): the journal closes first (last group synced, anchor moved to
//! it, lock released), then the snapshot database (it sits in one `RwLock<Option<_>>`; close
//! waits for its readers) is closed on a thread of its own, waited on for at most 5 s, so a
//! failing disk cannot hold the caller. Dropping the last handle closes the same way.
//!
//! **Load** = snapshot + the journal records after it that touched the account (the store
//! remembers, per account, the sequence number of the last record that touched it, so a load
//! whose snapshot is current reads no journal).

use dashmap::DashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::legs::LegBook;
use tally_core::{
    Account, AccountId, AccountSpec, Change, Limits, Record, RememberedKey, UsageConfig,
    UsageQuery, UsageReport, UsageTotals,
};

mod compact;
mod retention;

pub(crate) use retention::read_pruned;
pub use retention::Pruned;

use crate::codec::{
    decode_account, decode_key, decode_record, encode_account, encode_key, encode_record_into,
    snapshot_key_window, snapshot_seq,
};
use crate::journal::{Journal, JournalConfig, JournalError, SyncMode};
use crate::mem::replay_one;
use crate::projection::Projection;
use crate::snapdb::{self, SnapshotDb, Table};
use crate::{DurablePoint, HistoryEntry, Store, StoreError};

/// How a [`DurableStore`] is opened.
#[derive(Clone, Debug)]
pub struct DurableConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// The engine's account limits (used when replaying).
    pub limits: Limits,
    /// How groups are made durable. [`SyncMode::None`] is not durable: benchmarks only.
    pub sync: SyncMode,
    /// A journal segment rolls over past this size.
    pub segment_bytes_max: u64,
    /// Records appended but not yet durable; one more is refused as `Full` (`Overloaded`).
    pub queue_records_max: usize,
    /// Memory the snapshot database may use as its page cache (bytes; default 64 MiB).
    pub snapshot_cache_bytes: u64,
    /// Open compacts the snapshot database once its file exceeds twice the bytes its pages in
    /// use hold plus this many bytes (default 32 MiB; see [`DurableRecovery::snapshots_compacted`]).
    pub snapshot_compact_slack: u64,
    /// Bounds of the usage aggregates (see [`tally_core::UsageBook`]).
    pub usage: UsageConfig,
    /// How often the journal's anchor vouches for the durable point (see
    /// [`crate::journal::anchor`]); the window in which damage cannot be told from a torn
    /// tail. Default 100 ms.
    pub anchor_interval: Duration,
    /// Test hook (feature `testing`): the journal's sync after this many fails, as a
    /// failing disk would.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fail_after_syncs: Option<u64>,
}

impl DurableConfig {
    /// Defaults for `dir`: fdatasync per group, 64 MiB segments, 262,144 queued records.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let journal = JournalConfig::new(PathBuf::new());
        DurableConfig {
            dir: dir.into(),
            limits: Limits::default(),
            sync: SyncMode::Data,
            segment_bytes_max: journal.segment_bytes_max,
            queue_records_max: journal.queue_records_max,
            snapshot_cache_bytes: 64 * 1024 * 1024,
            snapshot_compact_slack: compact::GROWTH_SLACK,
            usage: UsageConfig::default(),
            anchor_interval: journal.anchor_interval,
            #[cfg(feature = "testing")]
            fail_after_syncs: None,
        }
    }
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableRecovery {
    /// Accounts known.
    pub accounts: u64,
    /// Snapshots read to replay onto.
    pub snapshots_loaded: u64,
    /// Journal records replayed.
    pub records_replayed: u64,
    /// Bytes of a torn journal tail cut off (an unacknowledged group cut short by a crash).
    pub torn_tail_bytes: u64,
    /// Sequence number of the last record.
    pub last_seq: u64,
    /// How long recovery took.
    pub elapsed: Duration,
    /// The snapshot database file's bytes before and after, when this open compacted it (see
    /// [`compact::GROWTH_FACTOR`]).
    pub snapshots_compacted: Option<(u64, u64)>,
}

/// A [`Store`] on disk. Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct DurableStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The name this process's registry of open directories knows `dir` by.
    claimed: PathBuf,
    limits: Limits,
    journal: Journal,
    /// The snapshot database; `None` once closed (its lock is released when the last of these
    /// handles drops, so they all live here, and nowhere else).
    snapshots: parking_lot::RwLock<Option<Snapshots>>,
    archive: Archive,
    /// Accounts touched by records their saved snapshot does not cover yet: the first such
    /// record and the last. The oldest first record bounds what a checkpoint may trim.
    dirty: DashMap<AccountId, Dirty, foldhash::fast::RandomState>,
    /// Held (shared) across a journal append and the `dirty` update that follows it, and
    /// (exclusive) while a checkpoint computes its trim point, so no record is ever appended
    /// but not yet counted as dirty when the trim point is chosen.
    append_gate: parking_lot::RwLock<()>,
    /// Usage aggregates of the commits and charges appended (see [`crate::projection`]).
    usage: Projection,
    /// The legs every account received (see [`crate::legs`]).
    legs: LegBook,
    /// Held through a whole checkpoint: two at once (the periodic one and a shutdown's) would
    /// save usage cuts and trim points out of order.
    checkpointing: parking_lot::Mutex<()>,
    /// Directory entries of accounts opened since they were last written (the directory is a
    /// cache of the journal's `Opened` records): written [`DIRECTORY_BATCH`] at a time, and
    /// by every checkpoint before it trims, so an open costs no snapshot-database commit.
    opened: parking_lot::Mutex<Vec<(AccountId, Vec<u8>)>>,
}

/// Directory entries written together (one snapshot-database commit per this many opens).
const DIRECTORY_BATCH: usize = 4_096;

/// The snapshot database and what the store reads and writes in it.
pub(crate) struct Snapshots {
    pub(crate) db: SnapshotDb,
}

impl Snapshots {
    /// The snapshot of `id` with the idempotency keys it remembers, if it has one.
    ///
    /// Errors: [`StoreError::Corrupt`] if the keys the snapshot names are not all stored.
    fn read_account(&self, id: AccountId, limits: &Limits) -> Result<Option<Account>, StoreError> {
        // One read view: a snapshot and the keys it names are read as of the same commit.
        let reader = self.db.reader()?;
        let Some(bytes) = reader.get(Table::Accounts, &key(id))? else {
            return Ok(None);
        };
        let mut account = decode_account(&bytes)?;
        let window = snapshot_key_window(&bytes)?;
        if window.count == 0 {
            return Ok(Some(account));
        }
        let (lo, hi) = (seq_key(id, window.first), seq_key(id, account.last_seq()));
        let mut keys = Vec::with_capacity(usize::try_from(window.count).unwrap_or(0).min(1 << 20));
        reader.scan(Table::Keys, snapdb::inclusive(&lo, &hi), |_, value| {
            keys.push(decode_key(value)?);
            Ok(true)
        })?;
        let found = (keys.len() as u64, keys.first().map(RememberedKey::seq));
        if found != (window.count, Some(window.first)) {
            return Err(StoreError::Corrupt(
                format!(
                    "account {}'s snapshot remembers {} idempotency keys from seq {}, but {} \
                     holds {} of them (from seq {})",
                    id.0,
                    window.count,
                    window.first,
                    self.db.file().display(),
                    found.0,
                    found.1.unwrap_or(0)
                )
                .into(),
            ));
        }
        account
            .restore_remembered(keys, window.untrimmed_from, limits)
            .map_err(|e| StoreError::Corrupt(e.into()))?;
        Ok(Some(account))
    }

    /// The snapshot of `id` without reading its idempotency keys, if it has one: records can
    /// be replayed onto it and it can be written back (with only the keys they made), but it
    /// decides nothing. What recovery reads: its time does not grow with the keys' window.
    fn read_account_keyless(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let Some(bytes) = self.db.get(Table::Accounts, &key(id))? else {
            return Ok(None);
        };
        let mut account = decode_account(&bytes)?;
        account
            .defer_remembered(snapshot_key_window(&bytes)?)
            .map_err(|e| StoreError::Corrupt(e.into()))?;
        Ok(Some(account))
    }

    /// Writes `account`'s snapshot unless the stored one covers as much already (saves may
    /// race: a checkpoint and a passivation); returns whether it wrote. In one transaction: the
    /// keys made since the stored snapshot, the snapshot, and the removal of the keys it no
    /// longer remembers. Each key is written once, however often the account is saved.
    fn write_account(&self, account: &Account) -> Result<bool, StoreError> {
        self.db.write(|w| write_account_in(w, account))
    }

    /// Closes the database on a thread of its own, waiting at most [`SNAPSHOT_CLOSE_WAIT`]
    /// (a sync on a failing disk may hang); the file is released when it returns `Ok`.
    fn close(self, dir: &Path) -> Result<(), StoreError> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tally-snapshots-close".to_owned())
            .spawn(move || {
                let _ = done_tx.send(self.db.close());
            });
        if let Err(e) = spawned {
            return Err(StoreError::Io(
                format!("closing the snapshots in {}: spawning: {e}", dir.display()).into(),
            ));
        }
        match done_rx.recv_timeout(SNAPSHOT_CLOSE_WAIT) {
            Ok(closed) => closed,
            Err(_) => Err(StoreError::Failed(
                format!(
                    "the snapshot database in {} did not close within {} s (is the disk failing?); \
                     left behind, it holds the directory until this process exits",
                    dir.join("snapshots").display(),
                    SNAPSHOT_CLOSE_WAIT.as_secs()
                )
                .into(),
            )),
        }
    }
}

/// [`Snapshots::write_account`] within the transaction `w`.
fn write_account_in(w: &snapdb::Writer<'_>, account: &Account) -> Result<bool, StoreError> {
    let id = account.id;
    let old_seq = match w.get(Table::Accounts, &key(id))? {
        Some(old) => {
            let old_seq = snapshot_seq(&old)?;
            if old_seq >= account.last_seq() {
                return Ok(false);
            }
            old_seq
        }
        None => 0,
    };
    let keys = account
        .remembered_after(old_seq)
        .iter()
        .map(|remembered| Ok((seq_key(id, remembered.seq()), encode_key(remembered)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    w.insert_all(Table::Keys, keys)?;
    w.insert(Table::Accounts, &key(id), &encode_account(account)?)?;
    if account.policy().version > 0 {
        w.insert(
            Table::Policies,
            &key(id),
            &crate::codec::encode_policy(account.policy())?,
        )?;
    }
    let window = account.remembered_window();
    let keep_from = if window.count == 0 {
        account.last_seq().saturating_add(1)
    } else {
        window.first
    };
    let (lo, hi) = (seq_key(id, 0), seq_key(id, keep_from));
    w.remove_in(Table::Keys, snapdb::half_open(&lo, &hi), |_| true)?;
    Ok(true)
}

/// How long closing waits for the snapshot database to close and release its file; past it
/// the database is left to a detached thread.
const SNAPSHOT_CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Inner {
    /// Writes directory entries in one snapshot-database commit; on failure they stay queued
    /// (before any queued since), for the next try.
    fn write_directory(&self, entries: Vec<(AccountId, Vec<u8>)>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let written = self.snapshots().and_then(|snapshots| {
            snapshots.db.write(|w| {
                w.insert_all(
                    Table::Directory,
                    entries.iter().map(|(id, spec)| (key(*id), spec)),
                )
            })
        });
        if written.is_err() {
            let mut opened = self.opened.lock();
            let later = std::mem::replace(&mut *opened, entries);
            opened.extend(later);
        }
        written
    }

    /// The snapshot database, or [`StoreError::Closed`] once the store is closed. The guard is
    /// shared: [`DurableStore::close`] waits for the holders to finish.
    fn snapshots(&self) -> Result<parking_lot::MappedRwLockReadGuard<'_, Snapshots>, StoreError> {
        parking_lot::RwLockReadGuard::try_map(self.snapshots.read(), Option::as_ref)
            .map_err(|_| StoreError::Closed)
    }

    /// Closes the journal (its last group synced, the anchor written, its lock released), then
    /// the snapshot database, within a bounded time; releases the directory. Idempotent.
    fn close(&self) -> Result<(), StoreError> {
        let journal = self.journal.close().map_err(journal_err);
        let snapshots = match self.snapshots.write().take() {
            Some(snapshots) => snapshots.close(&self.dir),
            None => Ok(()),
        };
        crate::open_dirs::release(&self.claimed);
        journal.and(snapshots)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.snapshots.get_mut().is_none() {
            return; // closed explicitly; close reported the outcome
        }
        if let Err(error) = self.close() {
            tracing::error!(dir = %self.dir.display(), %error, "tally store: closed with an error");
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Dirty {
    first_seq: u64,
    last_seq: u64,
}

pub(crate) fn journal_err(e: JournalError) -> StoreError {
    match e {
        JournalError::Full { queued, limit } => StoreError::Full { queued, limit },
        JournalError::FullBytes {
            bytes_queued,
            bytes_max,
        } => StoreError::Full {
            queued: bytes_queued,
            limit: bytes_max,
        },
        JournalError::Failed(reason) => StoreError::Failed(reason),
        JournalError::Locked { ref dir } => StoreError::Locked {
            // The data directory, whose `journal/` it is.
            path: dir.parent().unwrap_or(dir).to_owned(),
            holder: crate::open_dirs::other_holder(dir).into(),
        },
        JournalError::Closed => StoreError::Closed,
        JournalError::Corrupt { .. }
        | JournalError::Trimmed { .. }
        | JournalError::Replay { .. } => StoreError::Corrupt(e.to_string().into()),
        other => StoreError::Io(other.to_string().into()),
    }
}

/// Who holds `snapshots/` when a store opening the directory, with the journal's lock held,
/// finds the snapshot database's lock taken: a reader of the directory that does not open it
/// as a store.
const SNAPSHOTS_HELD_BY_A_READER: &str = "its snapshot database is held by a reader of the \
     directory (a trail verification or a salvage inspection)";

/// A failed file operation: `op` on `path`.
pub(crate) fn io_err(op: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{op} {}: {e}", path.display()).into())
}

/// Fsyncs the directory `dir` (its entries' creations, renames and removals).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::journal::sync_dir(dir).map_err(|e| io_err("fsync", dir, e))
}

fn key(id: AccountId) -> [u8; 8] {
    id.0.to_be_bytes()
}

fn touched(record: &Record) -> (AccountId, Option<AccountId>) {
    (record.account, record.leg_account())
}

impl DurableStore {
    /// Opens (creating if needed) the store in `config.dir` and recovers it.
    ///
    /// Errors: [`StoreError::Locked`] naming the directory and its holder (another store in
    /// this process, or another process); [`StoreError::Corrupt`] naming the file, the offset
    /// and the records at risk when acknowledged records are damaged or missing (see
    /// [`crate::journal::anchor`]); [`StoreError::Io`] naming the file and the operation.
    pub fn open(config: DurableConfig) -> Result<(DurableStore, DurableRecovery), StoreError> {
        let started = Instant::now();
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display()).into()))?;
        let Some(claimed) = crate::open_dirs::claim(&dir) else {
            return Err(StoreError::Locked {
                path: dir,
                holder: "open in another store of this process (close it first)".into(),
            });
        };
        let opened = Self::open_claimed(config, started, claimed.clone());
        if opened.is_err() {
            crate::open_dirs::release(&claimed);
        }
        opened
    }

    fn open_claimed(
        config: DurableConfig,
        started: Instant,
        claimed: PathBuf,
    ) -> Result<(DurableStore, DurableRecovery), StoreError> {
        let dir = config.dir.clone();
        let journal_dir = dir.join("journal");
        std::fs::create_dir_all(&journal_dir).map_err(|e| {
            StoreError::Io(format!("creating {}: {e}", journal_dir.display()).into())
        })?;
        // The journal's lock first, held through recovery (the journal takes it over): a second
        // owner stops here, before the snapshot database.
        let lock = crate::journal::lock_dir(&journal_dir).map_err(journal_err)?;
        let mut db = SnapshotDb::open(
            &dir,
            config.snapshot_cache_bytes,
            SNAPSHOTS_HELD_BY_A_READER,
        )?;
        let compacted = compact::compact_if_bloated(&mut db, config.snapshot_compact_slack)?;
        let snapshots = Snapshots { db };
        let archive = Archive {
            dir: dir.join("archive"),
            lock: parking_lot::RwLock::new(()),
        };
        match Self::recover(&config, lock, &snapshots, &archive, started) {
            Ok((journal, usage, legs, mut report)) => {
                report.snapshots_compacted = compacted;
                let store = DurableStore {
                    inner: Arc::new(Inner {
                        dir,
                        claimed,
                        limits: config.limits,
                        journal,
                        snapshots: parking_lot::RwLock::new(Some(snapshots)),
                        archive,
                        dirty: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                        append_gate: parking_lot::RwLock::new(()),
                        usage,
                        legs,
                        checkpointing: parking_lot::Mutex::new(()),
                        opened: parking_lot::Mutex::new(Vec::new()),
                    }),
                };
                Ok((store, report))
            }
            Err(error) => {
                // Bounded, and the files released, even when the disk is what failed.
                if let Err(closing) = snapshots.close(&dir) {
                    tracing::warn!(%closing, "tally store: closing after a failed open");
                }
                Err(error)
            }
        }
    }

    /// Replays the journal onto the snapshots, checks it against its anchors, writes every
    /// touched account back and trims: after it, every account's snapshot is current.
    fn recover(
        config: &DurableConfig,
        lock: std::fs::File,
        snapshots: &Snapshots,
        archive: &Archive,
        started: Instant,
    ) -> Result<(Journal, Projection, LegBook, DurableRecovery), StoreError> {
        let dir = &config.dir;
        // Made durable by the trim at the end of recovery.
        let limits = postcard::to_allocvec(&config.limits)
            .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
        snapshots.db.put_meta(LIMITS_KEY, &limits)?;
        let mut journal_config = JournalConfig::new(dir.join("journal"));
        journal_config.sync = config.sync;
        journal_config.segment_bytes_max = config.segment_bytes_max;
        journal_config.queue_records_max = config.queue_records_max;
        #[cfg(feature = "testing")]
        {
            journal_config.fail_after_syncs = config.fail_after_syncs;
        }
        journal_config.anchor_interval = config.anchor_interval;

        let usage = Projection::open(&snapshots.db, config.usage.clone())?;
        let legs = LegBook::open(&snapshots.db)?;
        let mut replay = Replay {
            usage: &usage,
            legs: &legs,
            snapshots,
            opened: Vec::new(),
            limits: &config.limits,
            touched: std::collections::HashMap::new(),
            snapshots_loaded: 0,
        };
        // Records before the last trim point are covered by snapshots: verify, don't replay.
        let trimmed_before = snapshots
            .db
            .get_u64(Table::Meta, TRIMMED_BEFORE_KEY)?
            .max(1);
        let after = trimmed_before.saturating_sub(1);
        let (journal, recovered) =
            Journal::open_after_locked(journal_config, Some(lock), after, |seq, payload| {
                replay.record(seq, payload).map_err(|e| e.to_string())
            })
            .map_err(journal_err)?;
        crate::trail::check_anchor_at_open(&snapshots.db, recovered.last_seq)?;
        let known = snapshots.db.len(Table::Directory)?;
        let had_journal = snapshots
            .db
            .get(Table::Meta, JOURNAL_CREATED_KEY)?
            .is_some();
        if recovered.created && (trimmed_before > 1 || known > 0 || had_journal) {
            return Err(StoreError::Corrupt(
                format!(
                    "{} holds no journal, but its snapshots say one was created here (they know \
                     {} account(s) and cover records up to seq {}): the journal was removed",
                    dir.display(),
                    known,
                    trimmed_before.saturating_sub(1)
                )
                .into(),
            ));
        }
        if !had_journal {
            // Durable with the flush below, before anything is appended.
            snapshots.db.put_meta(JOURNAL_CREATED_KEY, &[1])?;
        }
        let snapshots_loaded = replay.snapshots_loaded;
        // One transaction: the directory entries the journal opened and every touched account.
        snapshots.db.write(|w| {
            w.insert_all(
                Table::Directory,
                replay.opened.iter().map(|(id, spec)| (key(*id), spec)),
            )?;
            for account in replay.touched.values() {
                write_account_in(w, account)?;
            }
            Ok(())
        })?;
        // The usage aggregates now cover the whole journal too.
        usage.save(
            &snapshots.db,
            &journal,
            recovered.last_seq,
            usage.take_changes(),
        )?;
        legs.save(&snapshots.db, recovered.last_seq, legs.take_changes())?;
        // Every account's snapshot is now current: nothing in the journal is needed any more.
        archive.index_unindexed(snapshots, &journal)?;
        trim(
            snapshots,
            &journal,
            archive,
            recovered.last_seq.saturating_add(1),
        )?;
        let report = DurableRecovery {
            accounts: snapshots.db.len(Table::Directory)?,
            snapshots_loaded,
            records_replayed: recovered.records,
            torn_tail_bytes: recovered.torn_tail_bytes,
            last_seq: recovered.last_seq,
            elapsed: started.elapsed(),
            snapshots_compacted: None,
        };
        tracing::info!(
            dir = %dir.display(),
            accounts = report.accounts,
            records_replayed = report.records_replayed,
            snapshots_loaded = report.snapshots_loaded,
            torn_tail_bytes = report.torn_tail_bytes,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "tally store recovered"
        );
        Ok((journal, usage, legs, report))
    }

    /// What the snapshot database holds: account snapshots and remembered idempotency keys,
    /// counted and in encoded bytes, and the file's pages in use and length. Walks every table
    /// (for tools, benchmarks and tests).
    pub fn snapshot_stats(&self) -> Result<SnapshotStats, StoreError> {
        let snapshots = self.inner.snapshots()?;
        let reader = snapshots.db.reader()?;
        let mut stats = SnapshotStats::default();
        reader.scan(Table::Accounts, snapdb::ALL, |_, value| {
            stats.accounts += 1;
            stats.account_bytes += value.len() as u64;
            Ok(true)
        })?;
        reader.scan(Table::Keys, snapdb::ALL, |_, value| {
            stats.keys += 1;
            stats.key_bytes += value.len() as u64;
            Ok(true)
        })?;
        drop(reader);
        stats.pages_bytes = snapshots.db.used_bytes()?;
        stats.file_bytes = snapshots.db.file_length()?;
        Ok(stats)
    }

    /// Bytes the data directory holds on disk.
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.inner.dir)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The journal (for benchmarks and tools).
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    fn snapshot(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        self.inner.snapshots()?.read_account(id, &self.inner.limits)
    }
}

/// The history archive: journal segments moved out of the journal, and their index.
struct Archive {
    dir: PathBuf,
    /// Exclusive while segments move and are indexed; shared while history reads them.
    lock: parking_lot::RwLock<()>,
}

/// The meta key of the first sequence number of the newest archived segment that is indexed.
const INDEXED_SEGMENT_KEY: &[u8] = b"history_indexed_segment";

/// A key of an account and a seq, ordered by account then seq: the history index's
/// (account, segment) and the remembered keys' (account, record).
fn seq_key(id: AccountId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl Archive {
    /// The archived segments and, for each, its last sequence number (the archive is
    /// contiguous and ends where the journal begins).
    fn segments(&self, journal: &Journal) -> Result<Vec<(u64, u64)>, StoreError> {
        let starts = crate::journal::segment_starts(&self.dir).map_err(journal_err)?;
        let journal_first = journal.first_seq();
        Ok(starts
            .iter()
            .enumerate()
            .map(|(i, &first)| {
                let end = starts
                    .get(i + 1)
                    .copied()
                    .unwrap_or(journal_first)
                    .saturating_sub(1);
                (first, end)
            })
            .collect())
    }

    /// Indexes archived segments newer than the last one indexed (after a crash between a
    /// segment's move and its indexing, or after the moves of a checkpoint).
    fn index_unindexed(&self, snapshots: &Snapshots, journal: &Journal) -> Result<(), StoreError> {
        let indexed = snapshots.db.get_u64(Table::Meta, INDEXED_SEGMENT_KEY)?;
        for (first, end) in self.segments(journal)? {
            if first <= indexed && indexed != 0 {
                continue;
            }
            let mut accounts = std::collections::HashSet::new();
            let mut failure = None;
            crate::journal::read_archive(&self.dir, first, end, |_, payload| {
                match decode_record(payload) {
                    Ok(record) => {
                        let (a, b) = touched(&record);
                        accounts.insert(a);
                        accounts.extend(b);
                        Ok(true)
                    }
                    Err(e) => {
                        failure = Some(e);
                        Ok(false)
                    }
                }
            })
            .map_err(journal_err)?;
            if let Some(e) = failure {
                return Err(e);
            }
            snapshots.db.write(|w| {
                w.insert_all(
                    Table::HistoryIndex,
                    accounts.iter().map(|id| (seq_key(*id, first), [])),
                )?;
                w.insert(Table::Meta, INDEXED_SEGMENT_KEY, &first.to_be_bytes())
            })?;
        }
        Ok(())
    }
}

/// The meta key of the [`Limits`] the store was last opened with (postcard): replaying the
/// journal under other limits rebuilds other idempotency windows, so salvage rebuilds with
/// these.
const LIMITS_KEY: &[u8] = b"limits";

/// The limits `db` records, if any.
pub(crate) fn stored_limits(db: &SnapshotDb) -> Result<Option<Limits>, StoreError> {
    db.get(Table::Meta, LIMITS_KEY)?
        .map(|bytes| {
            postcard::from_bytes(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("the stored limits: {e}").into()))
        })
        .transpose()
}

/// The meta key that records the journal's trim point (big-endian `u64`).
const TRIMMED_BEFORE_KEY: &[u8] = b"journal_trimmed_before";

thread_local! {
    /// Each thread's buffer for encoding the records it appends (kept at its largest record,
    /// at most the journal's record bound).
    static ENCODE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The meta key written (durably, before the first append) once the journal exists: a
/// directory whose journal is gone later is refused, not taken for a new one.
const JOURNAL_CREATED_KEY: &[u8] = b"journal_created";

/// Records the trim point and makes every snapshot durable, then trims: snapshots reach the
/// disk before the journal records they replace leave it.
fn trim(
    snapshots: &Snapshots,
    journal: &Journal,
    archive: &Archive,
    trim_before: u64,
) -> Result<usize, StoreError> {
    let db = &snapshots.db;
    let previous = db.get_u64(Table::Meta, TRIMMED_BEFORE_KEY)?.max(1);
    let trim_before = trim_before.max(previous);
    db.put_meta(TRIMMED_BEFORE_KEY, &trim_before.to_be_bytes())?;
    crate::trail::store_anchor(db, journal.trail_head())?;
    db.flush()?;
    let _moving = archive.lock.write();
    let moved = journal
        .archive_before(trim_before, &archive.dir)
        .map_err(journal_err)?;
    archive.index_unindexed(snapshots, journal)?;
    Ok(moved.len())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What the snapshot database holds ([`DurableStore::snapshot_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStats {
    /// Account snapshots.
    pub accounts: u64,
    /// Their encoded bytes.
    pub account_bytes: u64,
    /// Remembered idempotency keys, stored apart from the snapshots.
    pub keys: u64,
    /// Their encoded bytes.
    pub key_bytes: u64,
    /// Bytes of the database file's pages in use (every table, indexes included).
    pub pages_bytes: u64,
    /// The database file's length.
    pub file_bytes: u64,
}

/// Recovery's working set: the accounts the journal touches, loaded from their snapshots.
struct Replay<'a> {
    usage: &'a Projection,
    legs: &'a LegBook,
    snapshots: &'a Snapshots,
    /// The accounts the journal opened, written to the directory at the end of recovery.
    opened: Vec<(AccountId, Vec<u8>)>,
    limits: &'a Limits,
    touched: std::collections::HashMap<AccountId, Account>,
    snapshots_loaded: u64,
}

impl Replay<'_> {
    fn record(&mut self, seq: u64, payload: &[u8]) -> Result<(), StoreError> {
        let record = decode_record(payload)?;
        self.usage.replay(seq, &record);
        if let Change::Opened { spec } = &record.change {
            self.opened.push((record.account, encode_spec(spec)?));
        }
        // The counterparty's side goes to the book; the account replays its own records.
        self.legs.replay(&record, seq);
        let id = record.account;
        let current = match self.touched.remove(&id) {
            Some(account) => Some(account),
            None => {
                let snapshot = self.snapshots.read_account_keyless(id)?;
                self.snapshots_loaded += u64::from(snapshot.is_some());
                snapshot
            }
        };
        if let Some(account) = replay_one(current, &record, seq, self.limits)? {
            self.touched.insert(id, account);
        }
        Ok(())
    }
}

fn encode_spec(spec: &AccountSpec) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(spec).map_err(|e| StoreError::Io(format!("encoding: {e}").into()))
}

impl Store for DurableStore {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }

    fn journal_stats(&self) -> Option<crate::journal::JournalStats> {
        Some(self.inner.journal.stats())
    }

    fn append(&self, record: &Record) -> Result<u64, StoreError> {
        // Encoded into this thread's buffer, then copied into the journal's queue: no
        // allocation per record. The gate is taken after the encoding.
        let (seq, _gate) = ENCODE_BUFFER.with_borrow_mut(|payload| {
            encode_record_into(record, payload)?;
            let gate = self.inner.append_gate.read();
            let seq = self.inner.journal.append(payload).map_err(journal_err)?;
            Ok::<_, StoreError>((seq, gate))
        })?;
        self.inner.usage.fold(record);
        self.inner.legs.fold(record, seq);
        // Only the account that made it replays the record; its counterparty has the book.
        self.inner
            .dirty
            .entry(record.account)
            .and_modify(|d| d.last_seq = seq)
            .or_insert(Dirty {
                first_seq: seq,
                last_seq: seq,
            });
        if let Change::Opened { spec } = &record.change {
            // The directory is a cache of the journal's Opened records (recovery rebuilds it
            // from those after the trim point; a checkpoint writes what is queued before it
            // trims past them).
            let spec = encode_spec(spec)?;
            let full = {
                let mut opened = self.inner.opened.lock();
                opened.push((record.account, spec));
                (opened.len() >= DIRECTORY_BATCH).then(|| std::mem::take(&mut *opened))
            };
            // The record is in the journal already: a failed write is not this append's
            // failure. The entries stay queued, and the next checkpoint writes them (or fails,
            // and trims nothing).
            if let Some(entries) = full {
                if let Err(error) = self.inner.write_directory(entries) {
                    tracing::warn!(%error, "tally store: directory entries stay queued for the next checkpoint");
                }
            }
        }
        Ok(seq)
    }

    fn durable(&self) -> watch::Receiver<DurablePoint> {
        self.inner.journal.durable()
    }

    fn accounts(&self) -> Result<Vec<(AccountId, AccountSpec)>, StoreError> {
        // The entries still queued first, so the table is the whole directory.
        let queued = std::mem::take(&mut *self.inner.opened.lock());
        self.inner.write_directory(queued)?;
        let mut accounts = Vec::new();
        self.inner
            .snapshots()?
            .db
            .scan(Table::Directory, snapdb::ALL, |k, v| {
                let id = <[u8; 8]>::try_from(k)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("directory key is not 8 bytes".into()))?;
                let spec = postcard::from_bytes(v)
                    .map_err(|e| StoreError::Corrupt(format!("directory entry: {e}").into()))?;
                accounts.push((AccountId(id), spec));
                Ok(true)
            })?;
        Ok(accounts)
    }

    fn policies(&self) -> Result<Vec<(AccountId, tally_core::AccountPolicy)>, StoreError> {
        let mut policies = Vec::new();
        self.inner
            .snapshots()?
            .db
            .scan(Table::Policies, snapdb::ALL, |k, v| {
                let id = <[u8; 8]>::try_from(k)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("policy key is not 8 bytes".into()))?;
                policies.push((AccountId(id), crate::codec::decode_policy(v)?));
                Ok(true)
            })?;
        Ok(policies)
    }

    fn load(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let snapshot = self.snapshot(id)?;
        let covered = snapshot.as_ref().map_or(0, Account::last_seq);
        let journal_last = self.inner.journal.last_seq();
        if covered > journal_last {
            // Never wait for a durable point the journal will not reach: records were lost.
            return Err(StoreError::Corrupt(
                format!(
                    "account {}'s snapshot covers seq {covered}, but the journal in {} ends at \
                     seq {journal_last}: records it was built from are missing",
                    id.0,
                    self.inner.journal.dir().display()
                )
                .into(),
            ));
        }
        let last_touch = self.inner.dirty.get(&id).map_or(0, |d| d.last_seq);
        // The journal is read up to its durable point: wait until the account's own records
        // are all there, or a load would return a prefix of them (and, once it took in newer
        // legs, never replay the rest).
        crate::projection::wait_durable(&self.inner.journal, last_touch)?;
        let mut account = snapshot;
        if last_touch <= covered {
            if let Some(account) = account.as_mut() {
                self.inner.legs.give(account)?;
            }
            return Ok(account);
        }
        // Records of its own after the snapshot: replay them from the journal.
        let mut failure = None;
        let from = covered
            .saturating_add(1)
            .max(self.inner.journal.first_seq());
        self.inner
            .journal
            .read_from(from, |seq, payload| {
                let step = decode_record(payload).and_then(|record| {
                    if record.account == id {
                        account = replay_one(account.take(), &record, seq, &self.inner.limits)?;
                    }
                    Ok(())
                });
                match step {
                    Ok(()) => Ok(seq < last_touch),
                    Err(e) => {
                        failure = Some(e);
                        Ok(false)
                    }
                }
            })
            .map_err(journal_err)?;
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(account) = account.as_mut() {
            self.inner.legs.give(account)?;
        }
        Ok(account)
    }

    fn legs(&self, id: AccountId) -> Result<tally_core::LegTotals, StoreError> {
        Ok(self.inner.legs.get(id))
    }

    fn save(&self, account: &Account) -> Result<(), StoreError> {
        // Never replaces a snapshot with an older one.
        self.inner.snapshots()?.write_account(account)?;
        self.inner
            .dirty
            .remove_if(&account.id, |_, d| d.last_seq <= account.last_seq());
        Ok(())
    }

    fn checkpoint(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let _checkpointing = inner.checkpointing.lock();
        let (dirty_min, cut, usage, legs, opened) = {
            let _gate = inner.append_gate.write();
            let cut = inner.journal.last_seq();
            let dirty_min = inner
                .dirty
                .iter()
                .map(|d| d.first_seq)
                .min()
                .unwrap_or_else(|| cut.saturating_add(1));
            (
                dirty_min,
                cut,
                inner.usage.take_changes(),
                inner.legs.take_changes(),
                // The directory entries of the accounts opened up to the cut.
                std::mem::take(&mut *inner.opened.lock()),
            )
        };
        let snapshots = inner.snapshots()?;
        // The usage save waits for the cut to be durable; the legs' follows it. Both cover
        // the cut before anything up to it is trimmed.
        if let Err(e) = inner.usage.save(&snapshots.db, &inner.journal, cut, usage) {
            inner.legs.return_changes(&legs);
            return Err(e);
        }
        if let Err(e) = crate::projection::wait_durable(&inner.journal, cut) {
            inner.legs.return_changes(&legs);
            return Err(e);
        }
        inner.legs.save(&snapshots.db, cut, legs)?;
        // Every account opened up to the cut is in the directory before its record may be
        // trimmed (a failed write leaves them queued for the next checkpoint, and no trim).
        inner.write_directory(opened)?;
        trim(&snapshots, &inner.journal, &inner.archive, dirty_min)
    }

    fn history(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        // The archive first, then the journal after it. A checkpoint may archive and trim in
        // between; then the journal read is refused as trimmed and the whole read is redone.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.history_once(id, after_seq, limit) {
                Err(StoreError::Trimmed) if attempts < 4 => continue,
                Err(StoreError::Trimmed) => {
                    return Err(StoreError::Io(
                        "history kept moving under the reader".into(),
                    ))
                }
                other => return other,
            }
        }
    }

    fn usage(&self, query: &UsageQuery) -> Result<UsageReport, StoreError> {
        Ok(self.inner.usage.report(query))
    }

    fn top_users(
        &self,
        query: &UsageQuery,
        n: usize,
    ) -> Result<Vec<(AccountId, UsageTotals)>, StoreError> {
        Ok(self.inner.usage.top_users(query, n))
    }
    fn verify_trail(&self) -> Result<crate::TrailReport, StoreError> {
        DurableStore::verify_trail(self)
    }

    fn trail_head(&self) -> (u64, crate::journal::Chain) {
        DurableStore::trail_head(self)
    }

    fn history_base(&self, id: AccountId) -> Result<crate::HistoryBase, StoreError> {
        self.history_base_of(id)
    }

    fn prune_history(&self, before_seq: u64) -> Result<Pruned, StoreError> {
        DurableStore::prune_history(self, before_seq)
    }
}

impl DurableStore {
    fn history_once(
        &self,
        id: AccountId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let inner = &self.inner;
        let mut entries = Vec::new();
        let _reading = inner.archive.lock.read();
        let snapshots = inner.snapshots()?;
        let segments = inner.archive.segments(&inner.journal)?;
        let pruned_seq = retention::read_pruned(&snapshots.db)?.map_or(0, |(seq, _)| seq);
        let archived_end = segments.last().map_or(0, |(_, end)| *end);
        let (lo, hi) = (seq_key(id, 0), seq_key(id, u64::MAX));
        let mut indexed = Vec::new();
        snapshots.db.scan(
            Table::HistoryIndex,
            snapdb::inclusive(&lo, &hi),
            |key, _| {
                let first = key
                    .get(8..16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| {
                        StoreError::Corrupt("history index key is not 16 bytes".into())
                    })?;
                indexed.push(first);
                Ok(true)
            },
        )?;
        drop(snapshots);
        for first in indexed {
            if entries.len() >= limit {
                return Ok(entries);
            }
            let Some(&(_, end)) = segments.iter().find(|(f, _)| *f == first) else {
                continue; // pruned (an interrupted prune removes its index entries next time)
            };
            if end <= pruned_seq {
                continue;
            }
            if end <= after_seq {
                continue;
            }
            let mut failure = None;
            let from = first.max(after_seq.saturating_add(1));
            crate::journal::read_archive(&inner.archive.dir, from, end, |seq, payload| {
                collect(id, seq, payload, &mut entries, &mut failure, limit)
            })
            .map_err(journal_err)?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        if entries.len() >= limit {
            return Ok(entries);
        }
        let mut failure = None;
        let from = after_seq.max(archived_end).saturating_add(1);
        let read = inner
            .journal
            .read_from(from, |seq, payload| match decode_record(payload) {
                Ok(record) => {
                    let (first, second) = touched(&record);
                    if first == id || second == Some(id) {
                        entries.push(HistoryEntry { seq, record });
                    }
                    Ok(entries.len() < limit)
                }
                Err(e) => {
                    failure = Some(e);
                    Ok(false)
                }
            });
        match (read, failure) {
            (Err(JournalError::Trimmed { .. }), _) => Err(StoreError::Trimmed),
            (Err(e), _) => Err(journal_err(e)),
            (Ok(_), Some(e)) => Err(e),
            (Ok(_), None) => Ok(entries),
        }
    }
}

/// Keeps a record for `id`'s history; says whether to read on.
fn collect(
    id: AccountId,
    seq: u64,
    payload: &[u8],
    entries: &mut Vec<HistoryEntry>,
    failure: &mut Option<StoreError>,
    limit: usize,
) -> Result<bool, JournalError> {
    match decode_record(payload) {
        Ok(record) => {
            let (first, second) = touched(&record);
            if first == id || second == Some(id) {
                entries.push(HistoryEntry { seq, record });
            }
            Ok(entries.len() < limit)
        }
        Err(e) => {
            *failure = Some(e);
            Ok(false)
        }
    }
}

/// The audit trail (see [`crate::trail`]).
impl DurableStore {
    /// Verifies the audit trail while the store is open: the hash chain from seq 1 through
    /// `archive/` and `journal/` up to the durable point (as of the call), the stored anchor,
    /// and the durable head the journal holds in memory. Holds the archive's read lock (a
    /// checkpoint waits to move segments; appends and history reads do not) and reads about
    /// one segment at a time into memory. The report names every problem found;
    /// [`crate::verify_trail`] does the same for a directory no store has open.
    pub fn verify_trail(&self) -> Result<crate::journal::TrailReport, StoreError> {
        let inner = &self.inner;
        let _reading = inner.archive.lock.read();
        let anchors: Vec<_> = crate::trail::read_anchor(&inner.snapshots()?.db)?
            .into_iter()
            .collect();
        let pruned = retention::read_pruned(&inner.snapshots()?.db)?;
        inner
            .journal
            .verify_trail(Some(&inner.archive.dir), &anchors, pruned)
            .map_err(journal_err)
    }

    /// The durable head of the audit trail: the sequence number of the last durable record and
    /// its chain hash (`(0, GENESIS)` for an empty store). Publish it off this machine from
    /// time to time: a trail that later verifies to the same hash at that seq was not changed
    /// up to it, even by someone who could rewrite every file here (see [`crate::trail`]).
    pub fn trail_head(&self) -> (u64, [u8; 32]) {
        self.inner.journal.trail_head()
    }
}
