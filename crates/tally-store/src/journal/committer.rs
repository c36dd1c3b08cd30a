//! The committer: one dedicated OS thread that turns queued records into durable groups.
//!
//! Appenders copy an unsealed frame into [`Queue::bytes`] under a mutex and return at once. The
//! committer swaps the whole buffer out (O(1); appends that arrive meanwhile fill the other
//! buffer, which is what pipelines them behind the running sync), then, group by group, seals
//! each frame (its chain hash, which needs the previous frame's, then its checksum: frames are
//! sealed here, in sequence order, never under the queue lock), writes the group with one
//! `write`, makes it durable with one `fdatasync` and publishes the last sequence number of the
//! group on the `Durable` watch.
//! A failed write or sync is final: the committer records the reason, publishes it and exits.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::anchor::{Anchor, AnchorFile};
use super::format::{self, FRAME_HEADER_LEN};
use super::recovery::ActiveSegment;
use super::{Chain, Durable, SyncMode};

/// State shared by every [`super::Journal`] handle and the committer thread.
pub(crate) struct Shared {
    /// The append queue and the journal's lifecycle flags.
    pub(crate) queue: Mutex<Queue>,
    /// Signalled when the committer may have work: records queued, resumed, closing.
    pub(crate) work: Condvar,
    /// Kept to hand out receivers; the committer owns the sender, so receivers see the channel
    /// close when the committer exits.
    pub(crate) durable_rx: watch::Receiver<Durable>,
    /// `JournalConfig::queue_records_max`.
    pub(crate) queue_records_max: usize,
    /// `JournalConfig::queue_bytes_max`.
    pub(crate) queue_bytes_max: usize,
    /// What the committer has done, for metrics.
    pub(crate) stats: Counters,
}

/// The committer's running totals (relaxed atomics: read for metrics only).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) groups: std::sync::atomic::AtomicU64,
    pub(crate) records: std::sync::atomic::AtomicU64,
    pub(crate) bytes: std::sync::atomic::AtomicU64,
    pub(crate) sync_ns_total: std::sync::atomic::AtomicU64,
    pub(crate) sync_ns_last: std::sync::atomic::AtomicU64,
}

/// Everything appenders and the committer coordinate on, behind one mutex.
pub(crate) struct Queue {
    /// Unsealed frames not yet taken by the committer, in sequence order.
    pub(crate) bytes: Vec<u8>,
    /// The sequence number the next append gets.
    pub(crate) seq_next: u64,
    /// Highest sequence number made durable.
    pub(crate) seq_synced: u64,
    /// The chain hash of record `seq_synced` (the durable head of the trail), published with
    /// it.
    pub(crate) chain_synced: Chain,
    /// Frame bytes appended but not yet synced (queued plus in the committer's hands).
    pub(crate) bytes_unsynced: usize,
    /// Set once by the committer when a write or sync fails.
    pub(crate) failed: Option<Arc<str>>,
    /// Set by close/drop: no more appends; the committer drains and exits.
    pub(crate) closing: bool,
    /// Test hook: the committer takes no new records while set (unless closing).
    pub(crate) paused: bool,
}

/// Limits and settings the committer thread needs.
pub(crate) struct CommitterConfig {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes_max: u64,
    pub(crate) group_records_max: usize,
    pub(crate) group_bytes_max: usize,
    pub(crate) sync: SyncMode,
    pub(crate) fail_after_syncs: Option<u64>,
}

/// The committer thread's own state.
pub(crate) struct Committer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) durable_tx: watch::Sender<Durable>,
    pub(crate) active: ActiveSegment,
    pub(crate) config: CommitterConfig,
    /// Successful syncs so far (for `fail_after_syncs`).
    pub(crate) syncs_ok: u64,
    /// The buffer swapped out of the queue; kept to reuse its capacity.
    pub(crate) batch: Vec<u8>,
    /// The chain hash of the last frame sealed (of the last record recovered at first).
    pub(crate) chain: Chain,
    /// The anchor file: moved forward to the durable point at most every `anchor_interval`.
    pub(crate) anchor: AnchorFile,
    pub(crate) anchor_interval: std::time::Duration,
    pub(crate) anchor_written_at: std::time::Instant,
}

/// A failed write or sync, with the file it concerned.
struct CommitError(String);

impl CommitError {
    fn new(op: &str, path: &std::path::Path, error: impl Display) -> Self {
        Self(format!("{op} {} failed: {error}", path.display()))
    }
}

impl Committer {
    /// The thread body: take queued frames, commit them group by group, until closed or failed.
    pub(crate) fn run(mut self) {
        loop {
            {
                let mut queue = self.shared.queue.lock();
                loop {
                    if !queue.bytes.is_empty() && (!queue.paused || queue.closing) {
                        std::mem::swap(&mut queue.bytes, &mut self.batch);
                        break;
                    }
                    if queue.failed.is_some() {
                        return;
                    }
                    let synced = Anchor {
                        seq: queue.seq_synced,
                        chain: queue.chain_synced,
                    };
                    if queue.closing {
                        drop(queue);
                        // A clean close leaves nothing unvouched for.
                        if let Err(CommitError(reason)) = self.write_anchor(synced) {
                            self.fail_stop(reason);
                        }
                        return;
                    }
                    if self.anchor.anchored.seq >= synced.seq {
                        self.shared.work.wait(&mut queue);
                        continue;
                    }
                    // Idle with the anchor behind: move it once its interval has passed.
                    let due = self.anchor_written_at + self.anchor_interval;
                    if self.shared.work.wait_until(&mut queue, due).timed_out() {
                        drop(queue);
                        if let Err(CommitError(reason)) = self.write_anchor(synced) {
                            self.fail_stop(reason);
                            return;
                        }
                        queue = self.shared.queue.lock();
                    }
                }
            }
            let mut batch = std::mem::take(&mut self.batch);
            let result = self.commit_batch(&mut batch);
            batch.clear();
            self.batch = batch;
            if let Err(CommitError(reason)) = result {
                self.fail_stop(reason);
                return;
            }
        }
    }

    /// Commits `batch` (whole frames, contiguous sequence numbers) in groups bounded by
    /// `group_records_max` and `group_bytes_max`; a group always holds at least one record.
    fn commit_batch(&mut self, batch: &mut [u8]) -> Result<(), CommitError> {
        let mut start = 0usize;
        while start < batch.len() {
            // A segment the group rolls to links to the record before the group.
            let chain_before = self.chain;
            let mut end = start;
            let mut records = 0usize;
            let mut seq_first = 0u64;
            let mut seq_last = 0u64;
            while end < batch.len() && records < self.config.group_records_max {
                let (frame_len, seq) = format::peek_frame(batch, end).ok_or_else(|| {
                    CommitError(format!("internal: malformed queued frame at {end}"))
                })?;
                let group_len = end.saturating_sub(start).saturating_add(frame_len);
                if records > 0 && group_len > self.config.group_bytes_max {
                    break;
                }
                let frame_end = end
                    .checked_add(frame_len)
                    .filter(|frame_end| *frame_end <= batch.len())
                    .ok_or_else(|| {
                        CommitError(format!("internal: truncated queued frame at {end}"))
                    })?;
                debug_assert!(frame_len >= FRAME_HEADER_LEN);
                if let Some(frame) = batch.get_mut(end..frame_end) {
                    format::seal_frame(frame, &mut self.chain);
                }
                if records == 0 {
                    seq_first = seq;
                } else {
                    debug_assert_eq!(seq, seq_last.wrapping_add(1), "queued frames out of order");
                }
                seq_last = seq;
                records += 1;
                end = frame_end;
            }
            let group = batch.get(start..end).unwrap_or_default();
            let started = std::time::Instant::now();
            self.write_group(group, seq_first, &chain_before, records)?;
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let stats = &self.shared.stats;
            use std::sync::atomic::Ordering::Relaxed;
            stats.groups.fetch_add(1, Relaxed);
            stats
                .records
                .fetch_add(u64::try_from(records).unwrap_or(u64::MAX), Relaxed);
            stats
                .bytes
                .fetch_add(u64::try_from(group.len()).unwrap_or(u64::MAX), Relaxed);
            stats.sync_ns_total.fetch_add(ns, Relaxed);
            stats.sync_ns_last.store(ns, Relaxed);
            self.publish(seq_last, group.len());
            if self.anchor_written_at.elapsed() >= self.anchor_interval {
                let synced = Anchor {
                    seq: seq_last,
                    chain: self.chain,
                };
                self.write_anchor(synced)?;
            }
            start = end;
        }
        Ok(())
    }

    /// Moves the anchor to `synced` (a durable point) and syncs it.
    fn write_anchor(&mut self, synced: Anchor) -> Result<(), CommitError> {
        self.anchor_written_at = std::time::Instant::now();
        self.anchor
            .write(synced)
            .map_err(|e| CommitError::new("write of", self.anchor.path(), e))
    }

    /// Rolls the segment if the group would push it past `segment_bytes_max`, then writes the
    /// group with one write and makes it durable with one sync.
    fn write_group(
        &mut self,
        group: &[u8],
        seq_first: u64,
        chain_before: &Chain,
        records: usize,
    ) -> Result<(), CommitError> {
        let group_len = u64::try_from(group.len()).unwrap_or(u64::MAX);
        if self.active.records > 0
            && self.active.len.saturating_add(group_len) > self.config.segment_bytes_max
        {
            self.roll(seq_first, chain_before)?;
        }
        let path = &self.active.path;
        self.active
            .file
            .write_all(group)
            .map_err(|e| CommitError::new("write to", path, e))?;
        self.active.len = self.active.len.saturating_add(group_len);
        let records = u64::try_from(records).unwrap_or(u64::MAX);
        self.active.records = self.active.records.saturating_add(records);
        self.sync()
    }

    fn sync(&mut self) -> Result<(), CommitError> {
        let path = &self.active.path;
        if let Some(limit) = self.config.fail_after_syncs {
            if self.syncs_ok >= limit {
                let error = io::Error::other(format!(
                    "injected sync failure after {limit} successful syncs (fail_after_syncs)"
                ));
                return Err(CommitError::new("fdatasync of", path, error));
            }
        }
        if self.config.sync == SyncMode::Data {
            self.active
                .file
                .sync_data()
                .map_err(|e| CommitError::new("fdatasync of", path, e))?;
        }
        self.syncs_ok = self.syncs_ok.saturating_add(1);
        Ok(())
    }

    /// Starts a new segment whose first record is `seq_first`, its header carrying the chain
    /// hash of the record before. The old one needs no sync: every group written to it was
    /// synced before the next one was taken.
    fn roll(&mut self, seq_first: u64, chain_before: &Chain) -> Result<(), CommitError> {
        let sync = self.config.sync == SyncMode::Data;
        let (file, path) = format::create_segment(&self.config.dir, seq_first, chain_before, sync)
            .map_err(|e| CommitError::new("create segment in", &self.config.dir, e))?;
        if let Err(e) = format::preallocate(&file, self.config.segment_bytes_max) {
            // Out of space now rather than mid-group: the new, empty segment goes again and the
            // journal fail-stops with nothing of the group written.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(CommitError::new("preallocating", &path, e));
        }
        tracing::debug!(segment = %path.display(), seq_first, "journal: rolled to a new segment");
        self.active = ActiveSegment {
            file,
            path,
            len: u64::try_from(format::HEADER_LEN).unwrap_or(u64::MAX),
            records: 0,
        };
        Ok(())
    }

    fn publish(&mut self, seq_last: u64, group_bytes: usize) {
        {
            let mut queue = self.shared.queue.lock();
            queue.seq_synced = seq_last;
            queue.chain_synced = self.chain;
            queue.bytes_unsynced = queue.bytes_unsynced.saturating_sub(group_bytes);
        }
        self.durable_tx.send_replace(Durable {
            seq: seq_last,
            failed: None,
        });
    }

    /// Fail-stop: refuse every later append, drop what is queued (never acknowledged), and
    /// publish the reason with the durable point unchanged.
    fn fail_stop(&mut self, reason: String) {
        let reason: Arc<str> = Arc::from(format!("journal fail-stopped: {reason}"));
        tracing::error!(%reason, "journal: write or sync failed; refusing all further appends");
        let seq_synced = {
            let mut queue = self.shared.queue.lock();
            queue.failed = Some(Arc::clone(&reason));
            queue.bytes = Vec::new();
            queue.seq_synced
        };
        self.durable_tx.send_replace(Durable {
            seq: seq_synced,
            failed: Some(reason),
        });
    }
}
