//! Keeping `snapshots/` near the size of what it holds.
//!
//! sled is log-structured: a value rewritten leaves its old copy behind until sled's own
//! cleaner gets to it, and across kill -9 restarts (every open rewrites the snapshots of the
//! accounts the journal touched) that garbage grew without bound: about 5× the live data after
//! 20 cycles. So at open, once the directory has grown past [`GROWTH_FACTOR`] times its size
//! after the last compaction (plus [`GROWTH_SLACK`]), the store copies every tree into a fresh
//! database beside it (`snapshots.compact/`), closes both, and swaps the directories:
//! `snapshots` → `snapshots.old`, `snapshots.compact` → `snapshots`, then removes the old one.
//! A crash anywhere in between is finished at the next open by [`finish_interrupted`]: a
//! complete copy is only ever renamed, an incomplete one only ever removed. The size after
//! each compaction is kept in `snapshots.size`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{dir_bytes, io_err as io, lock_released_by, sled_err, sync_dir, SNAPSHOT_CLOSE_WAIT};
use crate::StoreError;

/// Compact when `snapshots/` holds more than this many times its size after the last
/// compaction ...
pub const GROWTH_FACTOR: u64 = 2;
/// ... plus this many bytes by default ([`super::DurableConfig::snapshot_compact_slack`]: a
/// young store is not compacted for a few megabytes).
pub const GROWTH_SLACK: u64 = 32 << 20;
/// Entries copied per batch.
const BATCH: usize = 10_000;

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        dir.join("snapshots"),
        dir.join("snapshots.compact"),
        dir.join("snapshots.old"),
        dir.join("snapshots.size"),
    )
}

/// Finishes a compaction a crash interrupted: a complete copy whose swap began is moved into
/// place; an incomplete copy, or an old directory left after the swap, is removed.
pub(crate) fn finish_interrupted(dir: &Path) -> Result<(), StoreError> {
    let (live, copy, old, _) = paths(dir);
    if !live.exists() && copy.exists() && old.exists() {
        // The swap's first rename happened, its second did not: the copy was complete.
        std::fs::rename(&copy, &live).map_err(|e| io("moving", &copy, e))?;
        sync_dir(dir)?;
    }
    if copy.exists() {
        std::fs::remove_dir_all(&copy).map_err(|e| io("removing", &copy, e))?;
    }
    if old.exists() {
        if !live.exists() {
            // Never remove the only copy: put it back.
            std::fs::rename(&old, &live).map_err(|e| io("moving", &old, e))?;
        } else {
            std::fs::remove_dir_all(&old).map_err(|e| io("removing", &old, e))?;
        }
        sync_dir(dir)?;
    }
    Ok(())
}

/// `snapshots/`'s bytes now and after the last compaction (`None` before the first: the
/// current size is recorded as the baseline then).
pub(super) fn sizes(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (live, _, _, size_file) = paths(dir);
    let now = dir_bytes(&live);
    let recorded = std::fs::read_to_string(&size_file)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match recorded {
        Some(base) => Ok((now, base)),
        None => {
            record_size(dir, now)?;
            Ok((now, now))
        }
    }
}

/// Whether `snapshots/` has grown enough to compact.
pub(super) fn bloated(now: u64, base: u64, slack: u64) -> bool {
    now > base.saturating_mul(GROWTH_FACTOR).saturating_add(slack)
}

fn record_size(dir: &Path, bytes: u64) -> Result<(), StoreError> {
    let (_, _, _, size_file) = paths(dir);
    let tmp = size_file.with_extension("size.tmp");
    std::fs::write(&tmp, format!("{bytes}\n")).map_err(|e| io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &size_file).map_err(|e| io("moving", &tmp, e))
}

/// Copies every tree of `db` (the open `snapshots/` of `dir`) into a fresh database, closes
/// both and swaps the directories. Returns the bytes before and after. `db` is closed when
/// this returns, whatever the outcome: the caller opens `snapshots/` again.
pub(super) fn compact(
    dir: &Path,
    db: sled::Db,
    cache_bytes: u64,
) -> Result<(u64, u64), StoreError> {
    let started = Instant::now();
    let (live, copy, old, _) = paths(dir);
    let before = dir_bytes(&live);
    let fresh = sled::Config::new()
        .path(&copy)
        .cache_capacity(cache_bytes)
        .create_new(true)
        .open()
        .map_err(|e| StoreError::Io(format!("creating {}: {e}", copy.display()).into()))?;
    let copied = copy_trees(&db, &fresh).and_then(|()| fresh.flush().map_err(sled_err));
    let deadline = Instant::now() + SNAPSHOT_CLOSE_WAIT;
    drop(fresh);
    drop(db);
    let released = lock_released_by(&copy.join("db"), deadline)
        && lock_released_by(&live.join("db"), deadline);
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&copy);
        return Err(e);
    }
    if !released {
        return Err(StoreError::Failed(
            format!(
                "compacting {}: the databases did not close within {} s",
                live.display(),
                SNAPSHOT_CLOSE_WAIT.as_secs()
            )
            .into(),
        ));
    }
    sync_dir(&copy)?;
    std::fs::rename(&live, &old).map_err(|e| io("moving", &live, e))?;
    std::fs::rename(&copy, &live).map_err(|e| io("moving", &copy, e))?;
    sync_dir(dir)?;
    std::fs::remove_dir_all(&old).map_err(|e| io("removing", &old, e))?;
    let after = dir_bytes(&live);
    record_size(dir, after)?;
    tracing::info!(
        dir = %dir.display(),
        before,
        after,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "tally store: snapshots compacted"
    );
    Ok((before, after))
}

fn copy_trees(from: &sled::Db, to: &sled::Db) -> Result<(), StoreError> {
    for name in from.tree_names() {
        let source = from.open_tree(&name).map_err(sled_err)?;
        let target = to.open_tree(&name).map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        let mut queued = 0;
        for entry in source.iter() {
            let (k, v) = entry.map_err(sled_err)?;
            batch.insert(k, v);
            queued += 1;
            if queued == BATCH {
                target
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(sled_err)?;
                queued = 0;
            }
        }
        target.apply_batch(batch).map_err(sled_err)?;
    }
    Ok(())
}
