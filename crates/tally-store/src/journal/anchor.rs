//! The journal's anchor: a small file, `ANCHOR`, that vouches for the durable point.
//!
//! # Why it exists
//!
//! A torn write of the group being synced when the process died and damage to records that
//! were already durable (and acknowledged) look the same in the newest segment: a bad frame
//! with nothing valid after it. Without more evidence recovery would have to guess, and
//! guessing "torn" drops acknowledged records. The anchor is that evidence: `(seq, chain)`,
//! the sequence number and chain hash of a record known to be durable. Recovery treats every
//! record up to the anchored seq as acknowledged: damage to one of them, a journal that ends
//! before it, a missing newest segment, an empty journal, or a chain that differs at it make
//! open fail with [`super::JournalError::Corrupt`] naming the file, the offset and the range
//! at risk. Only a bad frame *after* the anchored seq may be cut as a torn tail.
//!
//! # When it is written
//!
//! The committer rewrites the anchor after a group's sync once
//! [`super::JournalConfig::anchor_interval`] (100 ms by default) has passed since the last
//! write, and, when the journal goes idle with the anchor behind, as soon as the interval has
//! passed; also at close. So the records that a single copy of the data cannot vouch for are
//! at most those made durable in the last interval before a crash (see README, "What a data
//! directory can detect").
//!
//! # Format
//!
//! Two slots of 64 bytes; writes alternate between them (the one not holding the
//! newest generation is overwritten, then the file is synced), so a write torn by a crash
//! leaves the other slot whole:
//!
//! ```text
//! slot (64 bytes): magic "TALLYANC" | generation u64 LE | seq u64 LE | chain [32]
//!                  | crc32c u32 LE of the previous 56 bytes | 4 zero bytes
//! ```
//!
//! The valid slot with the highest generation is the anchor. A file with no valid slot is
//! damage, never "no anchor": the file is created (with the anchor of the journal's starting
//! point) before the first segment, so a journal with segments and no `ANCHOR` was tampered
//! with too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::format;
use super::{Chain, JournalError};

/// Name of the anchor file inside the journal directory.
pub const ANCHOR_FILE_NAME: &str = "ANCHOR";
/// Bytes of one slot.
const SLOT_LEN: usize = 64;
const MAGIC: [u8; 8] = *b"TALLYANC";
const CRC_AT: usize = 56;

/// What the anchor vouches for: every record up to `seq` was durable, and record `seq` has
/// chain hash `chain` (for `seq` before the journal's first record: the hash its first
/// segment's header carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The last sequence number vouched for (0: none).
    pub seq: u64,
    /// Its chain hash.
    pub chain: Chain,
}

fn encode_slot(generation: u64, anchor: &Anchor) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[0..8].copy_from_slice(&MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    slot[16..24].copy_from_slice(&anchor.seq.to_le_bytes());
    slot[24..56].copy_from_slice(&anchor.chain);
    let crc = crc32c::crc32c(&slot[..CRC_AT]);
    slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(bytes: &[u8]) -> Option<(u64, Anchor)> {
    let slot = bytes.get(..SLOT_LEN)?;
    if slot.get(0..8)? != MAGIC {
        return None;
    }
    let word = |at: usize| {
        slot.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let crc = slot
        .get(CRC_AT..CRC_AT + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)?;
    if crc != crc32c::crc32c(slot.get(..CRC_AT)?) {
        return None;
    }
    let chain = slot.get(24..56).and_then(|b| <Chain>::try_from(b).ok())?;
    Some((
        word(8)?,
        Anchor {
            seq: word(16)?,
            chain,
        },
    ))
}

/// What the anchor file of a journal holds: its newest generation and anchor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    generation: u64,
    /// The anchor.
    pub(crate) anchor: Anchor,
}

/// The anchor of the journal in `dir`: `Ok(None)` if the file does not exist; `Corrupt` if it
/// exists and holds no valid slot.
pub(crate) fn read(dir: &Path) -> Result<Option<Found>, JournalError> {
    let path = dir.join(ANCHOR_FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let best = [0, SLOT_LEN]
        .iter()
        .filter_map(|&at| bytes.get(at..).and_then(decode_slot))
        .max_by_key(|(generation, _)| *generation);
    match best {
        Some((generation, anchor)) => Ok(Some(Found { generation, anchor })),
        None => Err(JournalError::Corrupt {
            segment: path,
            offset: 0,
            reason: format!(
                "the anchor file ({} bytes) holds no valid slot: the durable point it vouched \
                 for is unknown",
                bytes.len()
            ),
        }),
    }
}

/// The open anchor file, owned by the committer after open.
pub(crate) struct AnchorFile {
    file: File,
    path: PathBuf,
    generation: u64,
    /// What the file says now.
    pub(crate) anchored: Anchor,
    sync: bool,
}

impl AnchorFile {
    /// Opens the anchor file of `dir`, which [`read`] found holding `existing`, or creates it
    /// with `initial` when `existing` is `None` (the file and the directory entry are synced
    /// before this returns, so a segment created after it never exists without it).
    pub(crate) fn open_or_create(
        dir: &Path,
        existing: Option<Found>,
        initial: Anchor,
        sync: bool,
    ) -> Result<AnchorFile, JournalError> {
        let path = dir.join(ANCHOR_FILE_NAME);
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { op, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut anchor = AnchorFile {
            file,
            path: path.clone(),
            generation: 0,
            anchored: initial,
            sync,
        };
        match existing {
            Some(found) => {
                anchor.generation = found.generation;
                anchor.anchored = found.anchor;
            }
            None => {
                anchor.write_slot(initial).map_err(|e| JournalError::Io {
                    op: "write",
                    path: path.clone(),
                    source: e,
                })?;
                if sync {
                    format::sync_dir(dir).map_err(io_err("fsync directory", dir))?;
                }
            }
        }
        Ok(anchor)
    }

    /// Moves the anchor forward to `anchor`: overwrites the older slot and syncs the file. An
    /// anchor never moves back, and one that says what the file says already is not rewritten.
    pub(crate) fn write(&mut self, anchor: Anchor) -> io::Result<()> {
        if anchor.seq <= self.anchored.seq {
            return Ok(());
        }
        self.write_slot(anchor)
    }

    fn write_slot(&mut self, anchor: Anchor) -> io::Result<()> {
        let generation = self.generation.wrapping_add(1);
        let at = if generation % 2 == 0 { 0 } else { SLOT_LEN };
        let slot = encode_slot(generation, &anchor);
        self.file
            .write_all_at(&slot, u64::try_from(at).unwrap_or(0))?;
        if self.sync {
            self.file.sync_data()?;
        }
        self.generation = generation;
        self.anchored = anchor;
        Ok(())
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let first = Anchor {
            seq: 5,
            chain: [1; 32],
        };
        let mut file = AnchorFile::open_or_create(dir.path(), None, first, true).unwrap();
        let second = Anchor {
            seq: 9,
            chain: [2; 32],
        };
        file.write(second).unwrap();
        assert_eq!(read(dir.path()).unwrap().map(|f| f.anchor), Some(second));
        // Tear the newest slot (generation 2 lives at offset 0): the older one is the anchor.
        let path = dir.path().join(ANCHOR_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().map(|f| f.anchor), Some(first));
        // Both torn: damage, not "no anchor".
        bytes[SLOT_LEN + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_anchor_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = AnchorFile::open_or_create(
            dir.path(),
            None,
            Anchor {
                seq: 7,
                chain: [3; 32],
            },
            false,
        )
        .unwrap();
        file.write(Anchor {
            seq: 3,
            chain: [4; 32],
        })
        .unwrap();
        assert_eq!(read(dir.path()).unwrap().map(|f| f.anchor.seq), Some(7));
    }
}
