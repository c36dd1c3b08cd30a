//! Keeping `snapshots/` near the size of what it holds.
//!
//! redb reuses the pages a rewritten snapshot frees, so the file grows only to the high-water
//! mark of the live data (plus the pages freed by unsynced commits until the next flush). It
//! never shrinks by itself, though: after a burst (a ledger that once remembered many more
//! keys) the file keeps its length. So at open, once the file is more than [`GROWTH_FACTOR`]
//! times the bytes its pages in use hold, plus [`GROWTH_SLACK`], the store compacts it in place
//! (redb moves the pages in use to the front through ordinary synced commits, then shortens the
//! file: a crash in between leaves a valid database, compacted or not).
//!
//! Counting the pages in use walks every table, so open does it only once the file has grown
//! past [`GROWTH_FACTOR`] times its length at the last count (plus the slack); that length is
//! kept in the meta table.

use std::time::Instant;

use crate::snapdb::{SnapshotDb, Table};
use crate::StoreError;

/// Compact when the file is more than this many times the bytes in use ...
pub const GROWTH_FACTOR: u64 = 2;
/// ... plus this many bytes by default ([`super::DurableConfig::snapshot_compact_slack`]: a
/// young store is not compacted for a few megabytes).
pub const GROWTH_SLACK: u64 = 32 << 20;

/// The meta key of the file's length when its pages in use were last counted.
const COUNTED_AT_KEY: &[u8] = b"snapshot_file_counted_at";

/// Whether `length` is more than [`GROWTH_FACTOR`] times `base` plus `slack`.
fn grown(base: u64, length: u64, slack: u64) -> bool {
    length > base.saturating_mul(GROWTH_FACTOR).saturating_add(slack)
}

/// Compacts `db` if it is bloated; returns the file's bytes before and after when it did.
pub(super) fn compact_if_bloated(
    db: &mut SnapshotDb,
    slack: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let before = db.file_length()?;
    let counted_at = db.get_u64(Table::Meta, COUNTED_AT_KEY)?;
    if !grown(counted_at, before, slack) {
        return Ok(None);
    }
    let used = db.used_bytes()?;
    let compacted = if grown(used, before, slack) {
        let started = Instant::now();
        db.compact()?;
        let after = db.file_length()?;
        tracing::info!(
            file = %db.file().display(),
            before,
            after,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tally store: snapshots compacted"
        );
        Some((before, after))
    } else {
        None
    };
    let length = db.file_length()?;
    db.put_meta(COUNTED_AT_KEY, &length.to_be_bytes())?;
    db.flush()?;
    Ok(compacted)
}
