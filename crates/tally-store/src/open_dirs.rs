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

/// How long an opener waits for a lock that is taken before reporting it held. A lock can be
/// held for a moment by no owner at all: a process that forks (to run a program) copies every
/// open file into the child until it executes the program, and sled's background threads let go
/// of their files a moment after the last handle.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Calls `attempt` until it returns `Ok(Some(_))` or an error, or [`LOCK_WAIT`] has passed;
/// `Ok(None)` means "locked", and is what is returned once the wait is over.
pub(crate) fn wait_for_lock<T, E>(
    mut attempt: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        if let Some(taken) = attempt()? {
            return Ok(Some(taken));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
