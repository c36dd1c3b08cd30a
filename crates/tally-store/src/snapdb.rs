//! The snapshot database: one redb file, `snapshots/tally.redb`, with a table per kind of
//! entry ([`Table`]). Keys and values are bytes; the callers encode them.
//!
//! Why redb (it replaced sled; figures in BENCHMARKS.md, "Kill -9 cycles"): a copy-on-write
//! B-tree that reuses freed pages, so rewriting a snapshot does not grow the file; no
//! background threads, so closing never waits on a flush that a full disk makes retry forever;
//! and with quick-repair commits, opening after a crash loads the saved allocator state instead
//! of walking the file.
//!
//! Durability follows the journal's needs, not each write's: [`SnapshotDb::write`] commits
//! without syncing (what it wrote is visible at once, durable at the next flush), and
//! [`SnapshotDb::flush`] makes everything written before it durable with one synced commit.
//! The store flushes before it trims the journal, so a trimmed record is always covered by a
//! snapshot on disk; a crash loses only unflushed writes, which the journal still holds.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::StoreError;

/// The database file, inside the data directory's `snapshots/`.
pub(crate) const FILE: &str = "tally.redb";

/// The tables of the snapshot database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// Named single values: the limits, the trim point, the anchor, the pruned mark, ...
    Meta,
    /// Account id → encoded account snapshot, without its remembered idempotency keys.
    Accounts,
    /// (account id, seq of the record) → an encoded remembered idempotency key.
    Keys,
    /// Account id → encoded account spec.
    Directory,
    /// (account id, archived segment's first seq) → (): which archived segments touch an
    /// account.
    HistoryIndex,
    /// The usage projection's saved entries.
    Usage,
    /// Account id → the totals of its pruned history.
    Bases,
    /// Account id → its policy, for every account whose snapshot has one (version > 0): read
    /// when the engine opens, so limits apply before an account is first loaded.
    Policies,
    /// Account id → the sums of the legs it received ([`tally_core::LegTotals`]), and the
    /// journal point they cover (see [`crate::legs`]).
    Legs,
}

impl Table {
    const ALL: [Table; 9] = [
        Table::Meta,
        Table::Accounts,
        Table::Keys,
        Table::Directory,
        Table::HistoryIndex,
        Table::Usage,
        Table::Bases,
        Table::Policies,
        Table::Legs,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Accounts => "accounts",
            Table::Keys => "idempotency_keys",
            Table::Directory => "directory",
            Table::HistoryIndex => "history_index",
            Table::Usage => "usage",
            Table::Bases => "history_base",
            Table::Policies => "policies",
            Table::Legs => "legs",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// A key range of a table.
pub(crate) type Range<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Every key of a table.
pub(crate) const ALL: Range<'static> = (Bound::Unbounded, Bound::Unbounded);

/// The keys from `lo` up to and including `hi`.
pub(crate) fn inclusive<'a>(lo: &'a [u8], hi: &'a [u8]) -> Range<'a> {
    (Bound::Included(lo), Bound::Included(hi))
}

/// The keys from `lo` up to `hi`, `hi` excluded.
pub(crate) fn half_open<'a>(lo: &'a [u8], hi: &'a [u8]) -> Range<'a> {
    (Bound::Included(lo), Bound::Excluded(hi))
}

/// The open snapshot database.
pub(crate) struct SnapshotDb {
    db: Database,
    /// The file, for messages.
    file: PathBuf,
}

/// The snapshot database's file in the data directory `dir`.
pub(crate) fn file_in(dir: &Path) -> PathBuf {
    dir.join("snapshots").join(FILE)
}

/// Whether `snapshots/` of `dir` holds a sled database (tally before redb).
fn holds_sled(dir: &Path) -> bool {
    let snapshots = dir.join("snapshots");
    snapshots.join("conf").exists() || snapshots.join("db").exists()
}

impl SnapshotDb {
    /// Opens (creating if missing) the snapshot database of the data directory `dir`, waiting
    /// [`crate::open_dirs::LOCK_WAIT`] for its lock; [`StoreError::Locked`] naming `holder` if
    /// it stays taken. `cache_bytes` bounds redb's page cache.
    pub(crate) fn open(
        dir: &Path,
        cache_bytes: u64,
        holder: &'static str,
    ) -> Result<SnapshotDb, StoreError> {
        let snapshots = dir.join("snapshots");
        if holds_sled(dir) {
            return Err(StoreError::Corrupt(
                format!(
                    "{} holds a snapshot database of an earlier, pre-release tally (sled), which \
                     this version does not read: open a fresh data directory",
                    snapshots.display()
                )
                .into(),
            ));
        }
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| crate::durable::io_err("creating", &snapshots, e))?;
        let file = snapshots.join(FILE);
        let mut builder = Database::builder();
        builder.set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX));
        let opened = crate::open_dirs::wait_for_lock(|| {
            // redb checks what it reads; a file damaged past its checks may panic instead of
            // answering an error: either way the file is named as damaged.
            let attempt =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.create(&file)));
            match attempt {
                Ok(Ok(db)) => Ok(Some(db)),
                Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Ok(None),
                Ok(Err(e)) => Err(db_error(&file, "opening", e.into())),
                Err(_) => Err(StoreError::Corrupt(
                    format!(
                        "{} is damaged: opening it failed a consistency check",
                        file.display()
                    )
                    .into(),
                )),
            }
        })?;
        let db = opened.ok_or_else(|| StoreError::Locked {
            path: dir.to_owned(),
            holder: holder.into(),
        })?;
        let db = SnapshotDb { db, file };
        db.create_tables()?;
        Ok(db)
    }

    /// Creates the tables a new file lacks, so that every read finds its table.
    fn create_tables(&self) -> Result<(), StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err("reading", e))?;
        let missing = Table::ALL.iter().any(|t| {
            matches!(
                read.open_table(t.def()),
                Err(redb::TableError::TableDoesNotExist(_))
            )
        });
        drop(read);
        if !missing {
            return Ok(());
        }
        self.write(|w| {
            for table in Table::ALL {
                w.txn
                    .open_table(table.def())
                    .map_err(|e| w.err("creating a table in", e))?;
            }
            Ok(())
        })?;
        self.flush()
    }

    /// The file, for messages.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    fn err(&self, op: &str, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.file, op, e.into())
    }

    /// A consistent view of the database as of now.
    pub(crate) fn reader(&self) -> Result<Reader<'_>, StoreError> {
        Ok(Reader {
            txn: self.db.begin_read().map_err(|e| self.err("reading", e))?,
            file: &self.file,
        })
    }

    /// The value of `key` in `table`.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader()?.get(table, key)
    }

    /// Calls `each` with every entry of `table` in `range`, in key order, until it returns
    /// `false`.
    pub(crate) fn scan(
        &self,
        table: Table,
        range: Range<'_>,
        each: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.reader()?.scan(table, range, each)
    }

    /// The big-endian `u64` stored under `key` in `table` (0 if none, or not 8 bytes).
    pub(crate) fn get_u64(&self, table: Table, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .get(table, key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// How many entries `table` holds.
    pub(crate) fn len(&self, table: Table) -> Result<u64, StoreError> {
        let reader = self.reader()?;
        let opened = reader
            .txn
            .open_table(table.def())
            .map_err(|e| self.err("reading", e))?;
        opened.len().map_err(|e| self.err("reading", e))
    }

    /// Sets `key` in the [`Table::Meta`] table (not durable before the next flush).
    pub(crate) fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write(|w| w.insert(Table::Meta, key, value))
    }

    /// Runs `body` in one write transaction and commits it, unsynced: visible at once to
    /// every reader, durable at the next [`SnapshotDb::flush`]. Nothing is written when `body`
    /// fails.
    pub(crate) fn write<R>(
        &self,
        body: impl FnOnce(&mut Writer<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err("writing", e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| StoreError::Io(format!("{}: {e}", self.file.display()).into()))?;
        let mut writer = Writer {
            txn,
            file: &self.file,
        };
        match body(&mut writer) {
            Ok(done) => {
                writer
                    .txn
                    .commit()
                    .map_err(|e| self.err("committing to", e))?;
                Ok(done)
            }
            Err(e) => {
                // Dropping an uncommitted transaction discards it.
                drop(writer);
                Err(e)
            }
        }
    }

    /// Makes every write before it durable: one synced commit, which also saves redb's
    /// allocator state so that an open after a crash does not walk the whole file.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err("writing", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Io(format!("{}: {e}", self.file.display()).into()))?;
        txn.set_quick_repair(true);
        txn.commit().map_err(|e| self.err("syncing", e))
    }

    /// Bytes of the file's pages in use (walks every table).
    pub(crate) fn used_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err("writing", e))?;
        let stats = txn.stats().map_err(|e| self.err("measuring", e))?;
        drop(txn);
        Ok(stats
            .allocated_pages()
            .saturating_mul(stats.page_size() as u64))
    }

    /// The file's length.
    pub(crate) fn file_length(&self) -> Result<u64, StoreError> {
        Ok(std::fs::metadata(&self.file)
            .map_err(|e| crate::durable::io_err("measuring", &self.file, e))?
            .len())
    }

    /// Moves the data to the front of the file and shortens it (no reader may be open).
    pub(crate) fn compact(&mut self) -> Result<(), StoreError> {
        loop {
            match self.db.compact() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.err("compacting", e)),
            }
        }
    }

    /// Closes the file (what was not flushed is not durable).
    pub(crate) fn close(self) -> Result<(), StoreError> {
        let file = self.file;
        self.db
            .close()
            .map_err(|e| db_error(&file, "closing", e.into()))
    }
}

/// A snapshot database error: [`StoreError::Corrupt`] for damage, else [`StoreError::Io`];
/// either names the file and the operation.
fn db_error(file: &Path, op: &str, e: redb::Error) -> StoreError {
    let text = format!("{op} the snapshot database {}: {e}", file.display());
    match e {
        redb::Error::Corrupted(_) => StoreError::Corrupt(text.into()),
        _ => StoreError::Io(text.into()),
    }
}

/// A consistent read view ([`SnapshotDb::reader`]).
pub(crate) struct Reader<'a> {
    txn: redb::ReadTransaction,
    file: &'a Path,
}

impl Reader<'_> {
    /// The value of `key` in `table`.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let err = |e: redb::Error| db_error(self.file, "reading", e);
        let opened = self
            .txn
            .open_table(table.def())
            .map_err(|e| err(e.into()))?;
        let value = opened.get(key).map_err(|e| err(e.into()))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Calls `each` with every entry of `table` in `range`, in key order, until it returns
    /// `false`.
    pub(crate) fn scan(
        &self,
        table: Table,
        range: Range<'_>,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let err = |e: redb::Error| db_error(self.file, "reading", e);
        let opened = self
            .txn
            .open_table(table.def())
            .map_err(|e| err(e.into()))?;
        for entry in opened.range::<&[u8]>(range).map_err(|e| err(e.into()))? {
            let (k, v) = entry.map_err(|e| err(e.into()))?;
            if !each(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }
}

/// One write transaction ([`SnapshotDb::write`]).
pub(crate) struct Writer<'a> {
    txn: redb::WriteTransaction,
    file: &'a Path,
}

impl Writer<'_> {
    fn err(&self, op: &str, e: impl Into<redb::Error>) -> StoreError {
        db_error(self.file, op, e.into())
    }

    fn table(
        &self,
        table: Table,
    ) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, StoreError> {
        self.txn
            .open_table(table.def())
            .map_err(|e| self.err("writing", e))
    }

    /// The value of `key` in `table`, as this transaction sees it.
    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let opened = self.table(table)?;
        let value = opened.get(key).map_err(|e| self.err("reading", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Sets `key` in `table`.
    pub(crate) fn insert(&self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.table(table)?
            .insert(key, value)
            .map(drop)
            .map_err(|e| self.err("writing", e))
    }

    /// Sets every `(key, value)` of `entries` in `table` (the table opened once).
    pub(crate) fn insert_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        table: Table,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), StoreError> {
        let mut opened = self.table(table)?;
        for (key, value) in entries {
            opened
                .insert(key.as_ref(), value.as_ref())
                .map_err(|e| self.err("writing", e))?;
        }
        Ok(())
    }

    /// Removes `key` from `table`.
    pub(crate) fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.table(table)?
            .remove(key)
            .map(drop)
            .map_err(|e| self.err("writing", e))
    }

    /// Removes the entries of `table` in `range` for which `remove` says so.
    pub(crate) fn remove_in(
        &self,
        table: Table,
        range: Range<'_>,
        mut remove: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.table(table)?
            .retain_in::<&[u8], _>(range, |k, _| !remove(k))
            .map_err(|e| self.err("writing", e))
    }
}
