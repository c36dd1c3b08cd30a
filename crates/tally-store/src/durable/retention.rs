//! Retention: pruning the oldest archived history on purpose, without breaking what reads it.
//!
//! [`DurableStore::prune_history`] removes whole archived segments from the oldest on. Before a
//! file goes it records, durably in `snapshots/`, the last pruned record with its chain hash
//! (the trail verifies on from there: [`crate::trail`] reports the range as pruned, not as
//! missing) and, per account the pruned records touched, the totals they summed to
//! ([`HistoryBase`]: a balance history continues exactly from the cut). History reads start
//! after the cut. The chain over the pruned records must lead into the segment that stays, or
//! nothing is pruned: damage is never pruned away unnoticed. A prune interrupted after its
//! record but before the files went is finished by the next one (the leftovers are removed,
//! never counted twice).

use std::collections::HashMap;

use tally_core::{AccountId, Timestamp};

use super::{decode_record, io_err, journal_err, key, sync_dir, touched, DurableStore, Snapshots};
use crate::journal::{self, chain_hex, chain_next, Chain, GENESIS};
use crate::snapdb::{self, SnapshotDb, Table};
use crate::{HistoryBase, StoreError};

/// The meta key of the last pruned record: its seq (big-endian `u64`) then its chain hash.
const PRUNED_KEY: &[u8] = b"history_pruned";

/// What [`DurableStore::prune_history`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Archived segment files removed.
    pub segments: usize,
    /// Records pruned by this call.
    pub records: u64,
    /// Accounts whose history lost records (their bases were updated).
    pub accounts: usize,
    /// The last pruned record now (0: none ever).
    pub pruned_through: u64,
}

/// The last pruned record and its chain hash, if history was ever pruned.
pub(crate) fn read_pruned(db: &SnapshotDb) -> Result<Option<(u64, Chain)>, StoreError> {
    crate::trail::read_seq_chain(db, PRUNED_KEY, "the pruned-history mark")
}

fn read_base(snapshots: &Snapshots, id: AccountId) -> Result<Option<HistoryBase>, StoreError> {
    snapshots
        .db
        .get(Table::Bases, &key(id))?
        .map(|bytes| {
            postcard::from_bytes(&bytes).map_err(|e| {
                StoreError::Corrupt(format!("history base of account {}: {e}", id.0).into())
            })
        })
        .transpose()
}

impl DurableStore {
    /// Removes the archived history before `before_seq`, whole segments only (those whose
    /// last record is below it), oldest first; the journal itself is never pruned. Returns
    /// what went. Afterwards [`crate::Store::history`] starts after the cut,
    /// [`crate::Store::history_base`] gives each account's totals at the cut, and
    /// [`crate::verify_trail`] reports the range as pruned and verifies on from the chain
    /// hash kept at it.
    ///
    /// Errors: [`StoreError::Corrupt`] if the pruned records do not chain into what stays
    /// (nothing is removed then: run a trail verification); [`StoreError::Io`] naming the file
    /// that could not be read or removed.
    pub fn prune_history(&self, before_seq: u64) -> Result<Pruned, StoreError> {
        let inner = &self.inner;
        let _checkpointing = inner.checkpointing.lock();
        let _moving = inner.archive.lock.write();
        let snapshots = inner.snapshots()?;
        let (pruned_seq, pruned_chain) = read_pruned(&snapshots.db)?.unwrap_or((0, GENESIS));
        let segments = inner.archive.segments(&inner.journal)?;
        let leftovers: Vec<u64> = segments
            .iter()
            .filter(|(_, end)| *end <= pruned_seq)
            .map(|(first, _)| *first)
            .collect();
        let chosen: Vec<(u64, u64)> = segments
            .iter()
            .copied()
            .filter(|(first, end)| *first > pruned_seq && *end < before_seq)
            .collect();
        let mut outcome = Pruned {
            pruned_through: pruned_seq,
            ..Pruned::default()
        };
        if !chosen.is_empty() {
            let (bases, last, chain) =
                self.fold_pruned(&snapshots, &chosen, pruned_seq, pruned_chain)?;
            // The chain must lead into what stays: the next segment's header links to it.
            let next = segments
                .iter()
                .find(|(first, _)| *first == last.saturating_add(1))
                .map(|(first, _)| inner.archive.dir.join(journal::segment_file_name(*first)))
                .or(journal::first_segment(inner.journal.dir()).map_err(journal_err)?);
            if let Some(next) = next {
                let (first, before) = journal::segment_link(&next).map_err(journal_err)?;
                if first != last.saturating_add(1) || before != chain {
                    return Err(StoreError::Corrupt(
                        format!(
                            "refusing to prune: the records up to seq {last} chain to {}, but \
                             {} starts at seq {first} after {}; verify the trail",
                            chain_hex(&chain),
                            next.display(),
                            chain_hex(&before)
                        )
                        .into(),
                    ));
                }
            }
            // Durable before any file goes: the bases, then the mark.
            let mut mark = last.to_be_bytes().to_vec();
            mark.extend_from_slice(&chain);
            snapshots.db.write(|w| {
                for (id, base) in &bases {
                    let bytes = postcard::to_allocvec(base)
                        .map_err(|e| StoreError::Io(format!("encoding: {e}").into()))?;
                    w.insert(Table::Bases, &key(*id), &bytes)?;
                }
                w.insert(Table::Meta, PRUNED_KEY, &mark)
            })?;
            snapshots.db.flush()?;
            outcome = Pruned {
                segments: chosen.len(),
                records: last - pruned_seq,
                accounts: bases.len(),
                pruned_through: last,
            };
        }
        let gone: Vec<u64> = leftovers
            .into_iter()
            .chain(chosen.iter().map(|(first, _)| *first))
            .collect();
        for first in &gone {
            let path = inner.archive.dir.join(journal::segment_file_name(*first));
            std::fs::remove_file(&path).map_err(|e| io_err("removing", &path, e))?;
        }
        if !gone.is_empty() {
            sync_dir(&inner.archive.dir)?;
            // The history index no longer names the removed segments.
            snapshots.db.write(|w| {
                w.remove_in(Table::HistoryIndex, snapdb::ALL, |k| {
                    k.get(8..16)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .is_some_and(|s| gone.contains(&s))
                })
            })?;
        }
        tracing::info!(
            segments = outcome.segments,
            records = outcome.records,
            pruned_through = outcome.pruned_through,
            "tally store: history pruned"
        );
        Ok(outcome)
    }

    /// Prunes, like [`DurableStore::prune_history`], the archived segments whose records are
    /// all older than `cutoff` (by their timestamps, judged from the first record of the
    /// segment after each: records are stamped in journal order, so a clock stepped back
    /// keeps a segment a little longer, never prunes a newer one).
    pub fn prune_history_older_than(&self, cutoff: Timestamp) -> Result<Pruned, StoreError> {
        let before_seq = {
            let inner = &self.inner;
            let _reading = inner.archive.lock.read();
            let segments = inner.archive.segments(&inner.journal)?;
            let mut before_seq = 0;
            for window in segments.windows(2) {
                if self.first_at_of_archived(window[1].0)? >= cutoff {
                    before_seq = window[0].0;
                    break;
                }
            }
            if before_seq == 0 {
                if let Some(&(last_first, _)) = segments.last() {
                    let journal_first = inner.journal.first_seq();
                    before_seq = match self.first_at_in_journal(journal_first)? {
                        Some(at) if at < cutoff => journal_first,
                        _ => last_first,
                    };
                }
            }
            before_seq
        };
        // 0 (nothing archived, or the oldest segment is not old enough): nothing goes.
        self.prune_history(before_seq)
    }

    /// The timestamp of the archived record `seq` (the first of its segment).
    fn first_at_of_archived(&self, seq: u64) -> Result<Timestamp, StoreError> {
        let mut at = None;
        let mut failure = None;
        journal::read_archive(&self.inner.archive.dir, seq, seq, |_, payload| {
            match decode_record(payload) {
                Ok(record) => at = Some(record.at),
                Err(e) => failure = Some(e),
            }
            Ok(false)
        })
        .map_err(journal_err)?;
        if let Some(e) = failure {
            return Err(e);
        }
        at.ok_or_else(|| StoreError::Corrupt(format!("archived record {seq} is missing").into()))
    }

    /// The timestamp of the journal's record `seq`, if it holds it yet.
    fn first_at_in_journal(&self, seq: u64) -> Result<Option<Timestamp>, StoreError> {
        let mut at = None;
        let mut failure = None;
        self.inner
            .journal
            .read_from(seq, |_, payload| {
                match decode_record(payload) {
                    Ok(record) => at = Some(record.at),
                    Err(e) => failure = Some(e),
                }
                Ok(false)
            })
            .map_err(journal_err)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(at),
        }
    }

    /// Reads the records of `chosen` (contiguous archived segments right after `pruned_seq`),
    /// checking their order and chain, and sums each touched account's totals onto its base.
    /// Returns the bases, the last record and its chain hash.
    fn fold_pruned(
        &self,
        snapshots: &Snapshots,
        chosen: &[(u64, u64)],
        pruned_seq: u64,
        mut chain: Chain,
    ) -> Result<(HashMap<AccountId, HistoryBase>, u64, Chain), StoreError> {
        let dir = &self.inner.archive.dir;
        let mut bases: HashMap<AccountId, HistoryBase> = HashMap::new();
        let mut last = pruned_seq;
        let mut failure = None;
        for &(first, end) in chosen {
            journal::read_archive(dir, first, end, |seq, payload| {
                let step = (|| {
                    if seq != last.saturating_add(1) {
                        return Err(StoreError::Corrupt(
                            format!(
                                "refusing to prune: seq {seq} follows seq {last} in {}",
                                dir.display()
                            )
                            .into(),
                        ));
                    }
                    chain = chain_next(&chain, seq, payload);
                    last = seq;
                    let record = decode_record(payload)?;
                    let (a, b) = touched(&record);
                    for id in std::iter::once(a).chain(b) {
                        let base = match bases.get_mut(&id) {
                            Some(base) => base,
                            None => {
                                let stored = read_base(snapshots, id)?.unwrap_or_default();
                                bases.entry(id).or_insert(stored)
                            }
                        };
                        if seq <= base.pruned_through {
                            // Summed by a prune whose mark a crash lost: never twice.
                            continue;
                        }
                        record
                            .effect_on(id)
                            .add_to(
                                &mut base.credits_posted,
                                &mut base.debits_posted,
                                &mut base.debits_pending,
                            )
                            .map_err(|total| {
                                StoreError::Corrupt(
                                    format!(
                                        "pruning: record {seq} takes {id}'s {total} out of range"
                                    )
                                    .into(),
                                )
                            })?;
                        base.pruned_through = seq;
                    }
                    Ok(())
                })();
                match step {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        failure = Some(e);
                        Ok(false)
                    }
                }
            })
            .map_err(journal_err)?;
            if let Some(e) = failure.take() {
                return Err(e);
            }
        }
        Ok((bases, last, chain))
    }

    /// Where pruned history ends and what it summed to for `id`.
    pub(crate) fn history_base_of(&self, id: AccountId) -> Result<HistoryBase, StoreError> {
        let snapshots = self.inner.snapshots()?;
        let pruned_through = read_pruned(&snapshots.db)?.map_or(0, |(seq, _)| seq);
        let base = read_base(&snapshots, id)?.unwrap_or_default();
        Ok(HistoryBase {
            pruned_through,
            ..base
        })
    }
}
