//! The data directories open in this process, so that a second opener is told the truth: the
//! directory is held by a store in this very process, not by "another tally process".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static OPEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

/// Records `dir` as open and returns the name it is recorded under (give it back to
/// [`release`]: the directory may be gone by then); `None` if a store in this process has it
/// open already.
pub(crate) fn claim(dir: &Path) -> Option<PathBuf> {
    let name = canonical(dir);
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open.insert(name.clone()).then_some(name)
}

/// Forgets a directory [`claim`] recorded (its store closed, or its open failed).
pub(crate) fn release(name: &Path) {
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open.remove(name);
}

/// Who holds the journal directory `journal_dir` when taking its lock failed and no store here
/// has it: the pid its lock file names, if it can be read.
pub(crate) fn other_holder(journal_dir: &Path) -> String {
    let pid = std::fs::read_to_string(journal_dir.join("LOCK"))
        .ok()
        .and_then(|text| text.trim().strip_prefix("pid ").map(str::to_owned));
    match pid {
        Some(pid) => format!("locked by another process (pid {pid}, per journal/LOCK)"),
        None => "locked by another process".to_owned(),
    }
}
