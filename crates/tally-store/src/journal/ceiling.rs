//! Ceilings: what the disk under a directory allows, measured without the journal.
//!
//! A journal benchmark means little alone: "200k records/s" is excellent on a disk that syncs
//! 300 times a second and poor on one that syncs 50,000 times. These functions measure the
//! two numbers the journal's throughput is bounded by, on the same file system and in the same
//! run, so a benchmark can report its result as a ratio of the ceiling:
//!
//! - [`fdatasync_rate`]: one small append then one `fdatasync`, repeated: the most
//!   individually durable writes per second (what a journal without group commit could reach);
//! - [`group_commit_rate`]: a group of records written with one `write` then one `fdatasync`:
//!   the most records per second a group-commit journal with that group size could reach.
//!
//! Both write to a temporary file inside `dir` and remove it afterwards, also on error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes appended before each sync by [`fdatasync_rate`].
pub const FDATASYNC_RECORD_BYTES: usize = 64;

/// Syncs per second of [`FDATASYNC_RECORD_BYTES`]-byte appends, each followed by `fdatasync`,
/// to a temporary file in `dir`, measured for about `duration` (at least one sync is done).
pub fn fdatasync_rate(dir: &Path, duration: Duration) -> io::Result<f64> {
    let record = [0x5au8; FDATASYNC_RECORD_BYTES];
    measure(dir, duration, |file| {
        file.write_all(&record)?;
        file.sync_data()?;
        Ok(1)
    })
}

/// Records per second when writing groups of `group_records` records of `record_bytes` bytes
/// each with one `write` and then one `fdatasync`, to a temporary file in `dir`, measured for
/// about `duration` (at least one group is done).
pub fn group_commit_rate(
    dir: &Path,
    group_records: usize,
    record_bytes: usize,
    duration: Duration,
) -> io::Result<f64> {
    let group_bytes = group_records.checked_mul(record_bytes).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("group of {group_records} records of {record_bytes} bytes overflows usize"),
        )
    })?;
    let group = vec![0x5au8; group_bytes];
    let records = u64::try_from(group_records).unwrap_or(u64::MAX);
    measure(dir, duration, |file| {
        file.write_all(&group)?;
        file.sync_data()?;
        Ok(records)
    })
}

/// Runs `step` until `duration` has passed and returns the units it reported per second.
fn measure(
    dir: &Path,
    duration: Duration,
    mut step: impl FnMut(&mut File) -> io::Result<u64>,
) -> io::Result<f64> {
    let scratch = ScratchFile::create(dir)?;
    let mut file = scratch.open()?;
    let started = Instant::now();
    let mut units = 0u64;
    loop {
        units = units.saturating_add(step(&mut file)?);
        if started.elapsed() >= duration {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    scratch.remove()?;
    // Precision loss above 2^53 units is irrelevant for a rate.
    #[allow(clippy::cast_precision_loss)]
    let rate = units as f64 / seconds;
    Ok(rate)
}

/// A temporary file that is removed when dropped (best effort) or by [`ScratchFile::remove`].
struct ScratchFile {
    path: PathBuf,
    removed: bool,
}

impl ScratchFile {
    fn create(dir: &Path) -> io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(".ceiling-{}-{nanos}.tmp", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            removed: false,
        })
    }

    fn open(&self) -> io::Result<File> {
        OpenOptions::new().append(true).open(&self.path)
    }

    fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        fs::remove_file(&self.path)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if !self.removed {
            let _ = fs::remove_file(&self.path);
        }
    }
}
