//! The durable store's usage projection: a [`UsageBook`] of the records appended, saved
//! to the snapshot database's table `usage` at each checkpoint, and restored when the store opens.
//!
//! Consistency with the journal: a checkpoint takes the book's changed entries and the journal's
//! last sequence number `S` together (under the append gate held exclusively, so every record up
//! to `S` is folded and none after it), waits until `S` is durable, then writes the entries and
//! `S` in one transaction. Opening loads the saved entries and folds the journal records after
//! `S` again. The checkpoint's trim point is chosen under the same gate and is never after
//! `S + 1`, so those records are always still in the journal.
//!
//! **Off the request path.** An append only pushes a sample of its record (commits and
//! charges: who, app, endpoint, when, amount, usage) onto a
//! short queue under a lock held for the push; the queue is folded into the book, in one go
//! under the book's lock, by whoever needs the book: a usage report, a checkpoint's cut, or
//! the appender whose push fills it to [`PENDING_FOLD_MAX`]. So a report still reflects
//! every record appended before it, and writers no longer take turns on the book's lock.
//!
//! Stored keys: granularity (1 byte), bucket start, account, app (big-endian `u64` each), the
//! endpoint's bytes; values: postcard [`UsageTotals`]. Meta keys start with `0xff`.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tally_core::{
    AccountId, Granularity, Record, UsageBook, UsageChange, UsageConfig, UsageKey, UsageQuery,
    UsageReport, UsageSample, UsageTotals,
};

use crate::journal::Journal;
use crate::StoreError;

const SEQ_KEY: &[u8] = b"\xffseq";
const COMPLETE_KEY: &[u8] = b"\xffcomplete";
/// How long a checkpoint waits for its cut to be durable before leaving the save to the next.
const DURABLE_WAIT: Duration = Duration::from_secs(5);

use crate::snapdb::{self, SnapshotDb, Table};

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("usage tree: {what}").into())
}

fn encode_key(granularity: Granularity, key: &UsageKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + key.endpoint.len());
    out.push(granularity.index() as u8);
    out.extend_from_slice(&key.bucket.to_be_bytes());
    out.extend_from_slice(&key.account.0.to_be_bytes());
    out.extend_from_slice(&key.app.0.to_be_bytes());
    out.extend_from_slice(key.endpoint.as_bytes());
    out
}

fn decode_key(bytes: &[u8]) -> Result<(Granularity, UsageKey), StoreError> {
    let word = |at: usize| -> Result<u64, StoreError> {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt("short key"))
    };
    let granularity = bytes
        .first()
        .and_then(|&g| Granularity::ALL.get(usize::from(g)))
        .copied()
        .ok_or_else(|| corrupt("unknown granularity"))?;
    let endpoint = std::str::from_utf8(bytes.get(25..).unwrap_or_default())
        .map_err(|_| corrupt("endpoint is not UTF-8"))?;
    Ok((
        granularity,
        UsageKey {
            bucket: word(1)?,
            account: AccountId(word(9)?),
            app: AccountId(word(17)?),
            endpoint: endpoint.to_owned(),
        },
    ))
}

/// Records appended but not yet folded; the appender that makes the queue this long folds it.
pub(crate) const PENDING_FOLD_MAX: usize = 4_096;

/// The usage projection of a [`crate::DurableStore`].
pub(crate) struct Projection {
    book: Mutex<UsageBook>,
    /// Appended records not folded yet (at most [`PENDING_FOLD_MAX`]); always taken with the
    /// book's lock held, so the book and the queue together hold every appended record.
    pending: Mutex<Vec<UsageSample>>,
    /// The journal sequence number the saved entries cover.
    saved_seq: u64,
}

impl Projection {
    /// Loads the saved book from `db`.
    pub(crate) fn open(db: &SnapshotDb, config: UsageConfig) -> Result<Projection, StoreError> {
        let mut book = UsageBook::new(config);
        let mut saved_seq = 0;
        db.scan(Table::Usage, snapdb::ALL, |k, v| {
            if k == SEQ_KEY {
                saved_seq = <[u8; 8]>::try_from(v)
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("bad sequence number"))?;
            } else if k == COMPLETE_KEY {
                for (i, granularity) in Granularity::ALL.into_iter().enumerate() {
                    let from = v
                        .get(i * 8..i * 8 + 8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| corrupt("bad completeness"))?;
                    book.restore_complete_from(granularity, from);
                }
            } else {
                let (granularity, key) = decode_key(k)?;
                let totals: UsageTotals =
                    postcard::from_bytes(v).map_err(|e| corrupt(&format!("entry: {e}")))?;
                book.restore(granularity, key, totals);
            }
            Ok(true)
        })?;
        // Restoring is not a change: only what is folded from now on needs saving.
        book.take_changes();
        Ok(Projection {
            book: Mutex::new(book),
            pending: Mutex::new(Vec::with_capacity(PENDING_FOLD_MAX)),
            saved_seq,
        })
    }

    /// Folds a record replayed at open, unless the saved entries already cover it.
    pub(crate) fn replay(&self, seq: u64, record: &Record) {
        if seq > self.saved_seq {
            self.book.lock().fold(record);
        }
    }

    /// Queues an appended record for the book (commits and charges; others fold to nothing).
    pub(crate) fn fold(&self, record: &Record) {
        let Some(sample) = UsageSample::of(record) else {
            return;
        };
        let full = {
            let mut pending = self.pending.lock();
            pending.push(sample);
            pending.len() >= PENDING_FOLD_MAX
        };
        if full {
            drop(self.book());
        }
    }

    /// The book with every queued record folded in.
    fn book(&self) -> parking_lot::MutexGuard<'_, UsageBook> {
        let mut book = self.book.lock();
        // Taken, not replaced by a fresh 4,096-sample buffer: a report that finds the queue
        // empty allocates nothing.
        let queued = std::mem::take(&mut *self.pending.lock());
        for sample in &queued {
            book.fold_sample(sample);
        }
        book
    }

    /// The changed entries, to save once the journal is durable up to the cut taken with them.
    pub(crate) fn take_changes(&self) -> (Vec<UsageChange>, [u64; 3]) {
        let mut book = self.book();
        (book.take_changes(), book.complete_from())
    }

    /// Saves what [`Projection::take_changes`] took as covering the journal up to `seq`, once
    /// `seq` is durable. If it cannot be saved, every entry is saved by the next checkpoint.
    pub(crate) fn save(
        &self,
        db: &SnapshotDb,
        journal: &Journal,
        seq: u64,
        (changes, complete_from): (Vec<UsageChange>, [u64; 3]),
    ) -> Result<(), StoreError> {
        let saved = db.get_u64(Table::Usage, SEQ_KEY)?;
        if seq < saved {
            // A later cut was saved already (checkpoints are serialized, so this is a caller
            // saving out of order): never move the saved point back; save these next time.
            self.book.lock().return_changes(changes);
            return Ok(());
        }
        let result = wait_durable(journal, seq).and_then(|()| {
            db.write(|w| {
                for ((granularity, key), totals) in &changes {
                    let k = encode_key(*granularity, key);
                    match totals {
                        Some(totals) => {
                            let v = postcard::to_allocvec(totals)
                                .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
                            w.insert(Table::Usage, &k, &v)?;
                        }
                        None => w.remove(Table::Usage, &k)?,
                    }
                }
                let complete: Vec<u8> =
                    complete_from.iter().flat_map(|f| f.to_be_bytes()).collect();
                w.insert(Table::Usage, COMPLETE_KEY, &complete)?;
                w.insert(Table::Usage, SEQ_KEY, &seq.to_be_bytes())
            })
        });
        if result.is_err() {
            self.book.lock().return_changes(changes);
        }
        result
    }

    pub(crate) fn report(&self, query: &UsageQuery) -> UsageReport {
        self.book().report(query)
    }

    pub(crate) fn top_users(&self, query: &UsageQuery, n: usize) -> Vec<(AccountId, UsageTotals)> {
        self.book().top_users(query, n)
    }
}

/// Waits (a bounded while) until the journal is durable up to `seq`.
pub(crate) fn wait_durable(journal: &Journal, seq: u64) -> Result<(), StoreError> {
    let durable = journal.durable();
    let started = Instant::now();
    loop {
        let point = durable.borrow().clone();
        if point.seq >= seq {
            return Ok(());
        }
        if let Some(reason) = point.failed {
            return Err(StoreError::Failed(reason));
        }
        if started.elapsed() > DURABLE_WAIT {
            return Err(StoreError::Io(
                "the journal did not become durable in time for the usage save".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
