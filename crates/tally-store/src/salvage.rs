//! Salvage of a damaged data directory: say what is at risk, and, on request, cut the ledger
//! back to its last verified record so that it can serve again.
//!
//! [`inspect`] is read-only: it walks `archive/` then `journal/` for the longest prefix that
//! verifies ([`crate::journal::salvage::valid_prefix`]) and compares its end with what the
//! anchors vouch for (`journal/ANCHOR` and the one in `snapshots/`): records the anchors vouch
//! for were acknowledged, and those past the prefix are at risk. [`salvage`] refuses unless
//! the copy-aside directory is new; it copies the whole data directory there first, then moves
//! the archive back into the journal, cuts the journal at the end of the prefix with a fresh
//! anchor, deletes the snapshot database and opens the store, whose recovery rebuilds every
//! snapshot, the account directory, the remembered keys, the usage aggregates and the history
//! index from the records kept. What was cut stays in the copy, for people to examine.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::durable::{io_err as io, journal_err};
use crate::journal::salvage::{cut_to, valid_prefix, Prefix};
use crate::journal::{self, chain_hex};
use crate::{DurableConfig, DurableRecovery, DurableStore, StoreError};

/// What [`inspect`] found.
#[derive(Clone, Debug)]
pub struct SalvageReport {
    /// The data directory.
    pub dir: PathBuf,
    /// The longest verifying prefix of `archive/` then `journal/`.
    pub prefix: Prefix,
    /// The highest seq an anchor vouches for (0: none found).
    pub anchored_seq: u64,
    /// What could not be read (an anchor), so the report may understate what is at risk.
    pub notes: Vec<String>,
    /// The limits the snapshots recorded at the ledger's last open (`None`: unreadable or
    /// never recorded).
    pub limits: Option<tally_core::Limits>,
}

impl SalvageReport {
    /// Whether the directory needs salvage: acknowledged records are missing or damaged, or
    /// bytes that are not a torn tail stand after the last verified record.
    pub fn needed(&self) -> bool {
        self.prefix.last_seq < self.anchored_seq
            || (self.prefix.cut.is_some() && !self.prefix.torn_tail)
    }

    /// The records anchors vouch for that the prefix lacks (acknowledged, and lost by a cut).
    pub fn vouched_at_risk(&self) -> Option<(u64, u64)> {
        (self.prefix.last_seq < self.anchored_seq)
            .then(|| (self.prefix.last_seq.saturating_add(1), self.anchored_seq))
    }
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.prefix;
        if p.last_seq == 0 {
            writeln!(f, "{}: no record verifies", self.dir.display())?;
        } else {
            writeln!(
                f,
                "{}: records {}..={} verify (chain head {})",
                self.dir.display(),
                p.first_seq,
                p.last_seq,
                chain_hex(&p.chain)
            )?;
        }
        match &p.cut {
            None => writeln!(f, "every byte after them verifies too")?,
            Some(cut) => writeln!(
                f,
                "{} at {} byte offset {}: {}",
                if p.torn_tail { "a torn tail" } else { "damage" },
                cut.segment.display(),
                cut.offset,
                cut.reason
            )?,
        }
        if p.frames_after > 0 {
            writeln!(
                f,
                "{} record(s) after it still decode (highest seq {}), in {} later segment(s)",
                p.frames_after,
                p.seq_after_max,
                p.later_segments.len()
            )?;
        }
        writeln!(
            f,
            "the anchors vouch for records up to seq {}",
            self.anchored_seq
        )?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        match self.vouched_at_risk() {
            Some((from, to)) => writeln!(
                f,
                "AT RISK: acknowledged records {from}..={to} are damaged or missing; \
                 `--truncate` gives them up (after copying the directory aside)"
            ),
            None if self.needed() => writeln!(
                f,
                "no record the anchors vouch for is lost, but bytes after seq {} are damaged; \
                 `--truncate` cuts them",
                p.last_seq
            ),
            None => writeln!(f, "nothing to salvage: the store opens as it is"),
        }
    }
}

/// What [`salvage`] did.
#[derive(Debug)]
pub struct Salvaged {
    /// What was found before anything changed.
    pub report: SalvageReport,
    /// Where the untouched copy is.
    pub copy: PathBuf,
    /// The last record kept.
    pub kept_through: u64,
    /// The rebuilding open's report.
    pub recovery: DurableRecovery,
    /// Whether the rebuild used the limits the directory recorded instead of the caller's
    /// (they differed).
    pub used_recorded_limits: bool,
}

/// Reports, read-only, what in the data directory `dir` verifies and what acknowledged records
/// are at risk. Refused with [`StoreError::Locked`] while a store has `dir` open.
pub fn inspect(dir: &Path) -> Result<SalvageReport, StoreError> {
    if !dir.join("journal").is_dir() {
        return Err(StoreError::Io(
            format!("{} holds no journal/: not a data directory", dir.display()).into(),
        ));
    }
    let archive = dir.join("archive");
    let journal_dir = dir.join("journal");
    let prefix = valid_prefix(&[&archive, &journal_dir]).map_err(journal_err)?;
    let mut notes = Vec::new();
    let journal_anchor = match journal::anchor::read(&journal_dir) {
        Ok(found) => found.map_or(0, |found| found.anchor.seq),
        Err(e) => {
            notes.push(format!(
                "the journal's anchor is unreadable ({e}): records it vouched for may be at \
                 risk unreported"
            ));
            0
        }
    };
    // Reading the snapshot database takes its lock: an open store stops the inspection here.
    let (snapshot_anchor, limits) = match crate::trail::read_stored_anchor_and_limits(dir) {
        Ok((found, limits)) => (found.map_or(0, |(seq, _)| seq), limits),
        Err(e @ StoreError::Locked { .. }) => return Err(e),
        Err(e) => {
            notes.push(format!("the snapshots' anchor is unreadable ({e})"));
            (0, None)
        }
    };
    Ok(SalvageReport {
        dir: dir.to_owned(),
        prefix,
        anchored_seq: journal_anchor.max(snapshot_anchor),
        notes,
        limits,
    })
}

/// Copies `dir` to `copy` (which must not exist), then cuts the ledger in `dir` back to its
/// last verified record and rebuilds its snapshots by opening it with `config` (whose `dir`
/// is the data directory). The rebuilt idempotency windows follow the limits: those the
/// snapshots recorded when they are readable (every open records them), else `config`'s. Does nothing but report when [`SalvageReport::needed`] is false.
///
/// Errors: [`StoreError::Locked`] while a store has the directory open; [`StoreError::Io`]
/// if `copy` exists or a file operation fails (naming the path); [`StoreError::Corrupt`] if
/// the trail does not start at seq 1 (history pruned: the snapshots cannot be rebuilt).
pub fn salvage(mut config: DurableConfig, copy: &Path) -> Result<Option<Salvaged>, StoreError> {
    let dir = config.dir.clone();
    let journal_dir = dir.join("journal");
    let mut used_recorded_limits = false;
    let report = {
        // The journal's lock, held from the inspection to the cut: no store opens the
        // directory meanwhile.
        let _lock = journal::lock_dir(&journal_dir).map_err(journal_err)?;
        if copy.exists() {
            return Err(StoreError::Io(
                format!("the copy-aside directory {} exists already", copy.display()).into(),
            ));
        }
        if inside(copy, &dir) {
            return Err(StoreError::Io(
                format!(
                    "the copy-aside directory {} is inside the data directory {}",
                    copy.display(),
                    dir.display()
                )
                .into(),
            ));
        }
        // The copy comes before anything opens the snapshot database (opening it after a
        // crash repairs its file).
        copy_dir(&dir, copy)?;
        let report = inspect(&dir)?;
        if !report.needed() {
            fs::remove_dir_all(copy).map_err(|e| io("remove", copy, e))?;
            return Ok(None);
        }
        if report.prefix.first_seq > 1 {
            fs::remove_dir_all(copy).map_err(|e| io("remove", copy, e))?;
            return Err(StoreError::Corrupt(
                format!(
                    "{}: the trail starts at seq {}, not 1 (history was pruned), so the \
                     snapshots cannot be rebuilt from it; restore a backup instead",
                    dir.display(),
                    report.prefix.first_seq
                )
                .into(),
            ));
        }
        let archive = dir.join("archive");
        if archive.is_dir() {
            for entry in fs::read_dir(&archive).map_err(|e| io("list", &archive, e))? {
                let entry = entry.map_err(|e| io("list", &archive, e))?;
                let to = journal_dir.join(entry.file_name());
                fs::rename(entry.path(), &to).map_err(|e| io("move", &entry.path(), e))?;
            }
        }
        let prefix = valid_prefix(&[&journal_dir]).map_err(journal_err)?;
        // The ledger's own limits, if the snapshots still say them: rebuilt under others, the
        // idempotency windows would differ (a smaller one forgets keys, and a retry of an
        // acknowledged operation would execute again).
        if let Some(limits) = report.limits.clone().filter(|l| *l != config.limits) {
            config.limits = limits;
            used_recorded_limits = true;
        }
        cut_to(&journal_dir, &prefix).map_err(journal_err)?;
        let snapshots = dir.join("snapshots");
        if snapshots.exists() {
            fs::remove_dir_all(&snapshots).map_err(|e| io("remove", &snapshots, e))?;
        }
        report
    };
    let (store, recovery) = DurableStore::open(config)?;
    crate::Store::close(&store)?;
    Ok(Some(Salvaged {
        kept_through: recovery.last_seq,
        report,
        copy: copy.to_owned(),
        recovery,
        used_recorded_limits,
    }))
}

/// Whether the path `copy` (which does not exist yet) lies inside the directory `dir`.
fn inside(copy: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => parent
            .canonicalize()
            .map(|parent| parent.join(name))
            .unwrap_or_else(|_| p.to_owned()),
        _ => std::env::current_dir()
            .map(|cwd| cwd.join(p))
            .unwrap_or_else(|_| p.to_owned()),
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    absolute(copy).starts_with(dir)
}

/// Copies the directory tree `from` to `to` (created), syncing every file.
fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(to).map_err(|e| io("create", to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io("list", from, e))? {
        let entry = entry.map_err(|e| io("list", from, e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| io("stat", &source, e))?;
        if kind.is_dir() {
            copy_dir(&source, &target)?;
        } else if kind.is_file() {
            fs::copy(&source, &target).map_err(|e| io("copy", &source, e))?;
            fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("fsync", &target, e))?;
        }
    }
    crate::durable::sync_dir(to)
}
