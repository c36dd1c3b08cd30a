//! The audit trail of a [`crate::DurableStore`]: the journal's hash chain, its anchors, and
//! verifying both from the files of a data directory.
//!
//! Every journal record carries a chain hash that covers the record and, through the hash
//! before it, every record since seq 1; each segment's header carries the hash before its
//! first record, so the segments in `archive/` and those in `journal/` form one chain (the
//! format is in [`crate::journal`]'s docs, "The hash chain"). The chain alone shows any record
//! altered, inserted or removed *before the last one*; records removed from the end leave a
//! shorter chain that is still consistent. So the store also keeps an **anchor**: the durable
//! head `(seq, hash)`, written to the snapshot database at the end of every open and every
//! checkpoint. It only moves forward: a head older than the stored anchor, or with another
//! hash at the same seq, never replaces it. [`verify_trail`] reports a chain that ends before
//! the anchor, or differs at it, as [`TrailProblem::Truncated`], and opening a store whose
//! journal ends before its anchor fails as corrupt.
//!
//! **What it cannot detect.** Someone who can rewrite every segment file *and* the snapshot
//! database can rebuild a consistent chain and anchor from scratch: the chain proves the trail
//! is what was written only relative to a head known from elsewhere. Publish
//! [`crate::DurableStore::trail_head`] off this machine (to another system, a ticket, a signed
//! log) at the interval that matters to you, and compare it with [`TrailReport::head`] or with
//! the hash at that seq: records up to a published head cannot be changed unseen. Records
//! appended since the last anchor can still be cut off the end unseen by [`verify_trail`]
//! alone.

use std::path::Path;

use crate::journal::{self, Chain, TrailReport};
use crate::StoreError;

#[cfg(doc)]
use crate::journal::TrailProblem;

/// The meta key of the anchor: `seq` (big-endian `u64`) then its 32-byte chain hash.
const TRAIL_ANCHOR_KEY: &[u8] = b"trail_anchor";

use crate::snapdb::{SnapshotDb, Table};

fn journal_io(e: journal::JournalError) -> StoreError {
    StoreError::Io(e.to_string().into())
}

/// The snapshot database of the data directory `dir`, opened to read (its lock taken: no
/// store opens `dir` while it is held), or `None` if there is none.
fn open_snapshots_to_read(dir: &Path) -> Result<Option<SnapshotDb>, StoreError> {
    if !crate::snapdb::file_in(dir).exists() {
        return Ok(None);
    }
    SnapshotDb::open(
        dir,
        1 << 20,
        "open in a tally store: verify through DurableStore::verify_trail",
    )
    .map(Some)
}

/// A stored anchor and the stored limits.
pub(crate) type StoredFacts = (Option<(u64, Chain)>, Option<tally_core::Limits>);

/// The anchor and the limits the snapshot database of the data directory `dir` records, if
/// any (read with one open, its lock taken, then released); unreadable limits read as none.
pub(crate) fn read_stored_anchor_and_limits(dir: &Path) -> Result<StoredFacts, StoreError> {
    match open_snapshots_to_read(dir)? {
        Some(db) => {
            let facts = (
                read_anchor(&db)?,
                crate::durable::stored_limits(&db).ok().flatten(),
            );
            db.close()?;
            Ok(facts)
        }
        None => Ok((None, None)),
    }
}

/// The anchor stored in `db`, if any.
pub(crate) fn read_anchor(db: &SnapshotDb) -> Result<Option<(u64, Chain)>, StoreError> {
    read_seq_chain(db, TRAIL_ANCHOR_KEY, "the trail anchor")
}

/// A `(seq, chain hash)` pair stored under `key` in `db` (big-endian seq, then the 32-byte
/// hash), if any; `what` names it in the error when it is malformed.
pub(crate) fn read_seq_chain(
    db: &SnapshotDb,
    key: &[u8],
    what: &str,
) -> Result<Option<(u64, Chain)>, StoreError> {
    let Some(value) = db.get(Table::Meta, key)? else {
        return Ok(None);
    };
    let seq = value
        .get(0..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes);
    let chain = value
        .get(8..40)
        .and_then(|bytes| <Chain>::try_from(bytes).ok());
    match (seq, chain, value.len()) {
        (Some(seq), Some(chain), 40) => Ok(Some((seq, chain))),
        _ => Err(StoreError::Corrupt(
            format!("{what} is {} bytes, expected 40", value.len()).into(),
        )),
    }
}

/// Stores `head` as the anchor unless the stored one is newer or names the same seq (the
/// anchor never moves back and never changes its mind: evidence of a cut stays). The caller
/// flushes `db`.
pub(crate) fn store_anchor(db: &SnapshotDb, head: (u64, Chain)) -> Result<(), StoreError> {
    let (seq, chain) = head;
    if seq == 0 {
        return Ok(());
    }
    if let Some((anchored, _)) = read_anchor(db)? {
        if anchored >= seq {
            return Ok(());
        }
    }
    let mut value = [0u8; 40];
    value[0..8].copy_from_slice(&seq.to_be_bytes());
    value[8..40].copy_from_slice(&chain);
    db.put_meta(TRAIL_ANCHOR_KEY, &value)?;
    Ok(())
}

/// At open: a journal that ends before the anchor lost records that were durable (and
/// acknowledged) when the anchor was written; refuse it as corrupt.
pub(crate) fn check_anchor_at_open(db: &SnapshotDb, last_seq: u64) -> Result<(), StoreError> {
    match read_anchor(db)? {
        Some((anchored, _)) if anchored > last_seq => Err(StoreError::Corrupt(
            format!(
                "the journal ends at seq {last_seq} but the trail was anchored at seq {anchored}: \
                 durable records were removed from its end (run verify_trail for details)"
            )
            .into(),
        )),
        _ => Ok(()),
    }
}

/// Verifies the audit trail of the data directory `dir` of a [`crate::DurableStore`] that is
/// **not** open: the hash chain through `archive/` then `journal/`, from seq 1 to the last
/// record, and the anchor stored in the snapshot database. Works where opening the store
/// fails (a corrupt journal): it names every problem it finds instead. Reads the segment files
/// only; opens the snapshot database (`snapshots/`, if present) to read the anchor, which
/// takes its lock, so no store can open the directory meanwhile.
///
/// Records that the snapshots cover are verified like all others: nothing but the hash chain
/// decides. A journal trimmed or an archive pruned by hand shows as
/// [`TrailProblem::Missing`] `{ after_seq: 0, .. }`.
///
/// Errors: [`StoreError::Locked`] while a store (in this process or another) has `dir` open:
/// use [`crate::DurableStore::verify_trail`] then; [`StoreError::Io`] if `dir` does not exist
/// or a file cannot be read; [`StoreError::Corrupt`] if the stored anchor is malformed. What
/// is wrong with the trail itself is in the report.
pub fn verify_trail(dir: &Path) -> Result<TrailReport, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Io(
            format!("{} is not a data directory", dir.display()).into(),
        ));
    }
    // Held through the walk: no store opens the directory under it.
    let db = open_snapshots_to_read(dir)?;
    let anchors: Vec<(u64, Chain)> = match &db {
        Some(db) => read_anchor(db)?.into_iter().collect(),
        None => Vec::new(),
    };
    let archive = dir.join("archive");
    let journal_dir = dir.join("journal");
    let pruned = match &db {
        Some(db) => crate::durable::read_pruned(db)?,
        None => None,
    };
    let report = journal::verify_segments(&[&archive, &journal_dir], &anchors, pruned)
        .map_err(journal_io)?;
    drop(db);
    Ok(report)
}
