//! The data directories open in this process, so that a second opener is told the truth: the
//! directory is held by a store in this very process, not by "another tally process".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static OPEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

/// Records `dir` as open; `false` if a store in this process has it open already.
pub(crate) fn claim(dir: &Path) -> bool {
    match OPEN.lock() {
        Ok(mut open) => open.insert(canonical(dir)),
        Err(poisoned) => poisoned.into_inner().insert(canonical(dir)),
    }
}

/// Forgets `dir` (its store closed, or its open failed).
pub(crate) fn release(dir: &Path) {
    match OPEN.lock() {
        Ok(mut open) => open.remove(&canonical(dir)),
        Err(poisoned) => poisoned.into_inner().remove(&canonical(dir)),
    };
}

/// Who holds the lock of `dir` when a lock attempt failed and no store here has it: the pid
/// the journal's lock file names, if it can be read.
pub(crate) fn other_holder(dir: &Path) -> String {
    let pid = std::fs::read_to_string(dir.join("journal").join("LOCK"))
        .ok()
        .and_then(|text| text.trim().strip_prefix("pid ").map(str::to_owned));
    match pid {
        Some(pid) => format!("locked by another process (pid {pid}, per journal/LOCK)"),
        None => "locked by another process".to_owned(),
    }
}
