//! The on-disk format: segment file names, the segment header and record framing.
//!
//! Everything that knows a byte offset lives here, so a format change is a change to this file
//! plus a bump of [`FORMAT_VERSION`]. The layout itself is described in the parent module's docs.
//! The chain hash ([`chain_next`]) is part of the format: it is defined over bytes, here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Chain, RECORD_BYTES_MAX};

/// First eight bytes of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"TALLYJNL";
/// Version of the segment and record layout; bump it on any format change.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Segment header: magic (8) | version u32 LE (4) | first_seq u64 LE (8) | chain before the
/// first record (32) | crc32c u32 LE (4).
pub(crate) const HEADER_LEN: usize = 56;
/// Where the segment header's crc32c lies (it covers every header byte before it).
const HEADER_CRC_AT: usize = 52;
/// Record frame header: length u32 LE (4) | crc32c u32 LE (4) | seq u64 LE (8) | chain (32).
pub(crate) const FRAME_HEADER_LEN: usize = 48;
/// Where a frame's chain hash lies.
const FRAME_CHAIN_AT: usize = 16;
/// Bytes of a chain hash.
pub(crate) const CHAIN_LEN: usize = 32;

/// The chain value before the first record of a trail (sequence number 1): 32 zero bytes.
pub const GENESIS: Chain = [0u8; CHAIN_LEN];

/// The chain hash of the record `seq` whose payload is `payload`, following the record whose
/// chain hash is `prev` ([`GENESIS`] before seq 1): `BLAKE3(prev || seq as u64 LE || payload)`.
pub fn chain_next(prev: &Chain, seq: u64, payload: &[u8]) -> Chain {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

/// A chain hash in lower-case hex (64 characters), as an operator would publish it.
pub fn chain_hex(chain: &Chain) -> String {
    use std::fmt::Write;
    chain
        .iter()
        .fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Sequence number of the segment's first record.
    pub(crate) first_seq: u64,
    /// The chain hash of the record before `first_seq` (the previous segment's last record),
    /// [`GENESIS`] when `first_seq` is 1.
    pub(crate) chain_before: Chain,
}

const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

/// Name of the segment whose first record has sequence number `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number encoded in a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment file found in the journal directory.
#[derive(Clone, Debug)]
pub(crate) struct SegmentFile {
    /// Sequence number of its first record, from the file name.
    pub(crate) first_seq: u64,
    /// Full path.
    pub(crate) path: PathBuf,
}

/// Every segment file in `dir`, sorted by first sequence number. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_segment_file_name) else {
            continue;
        };
        segments.push(SegmentFile {
            first_seq,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.first_seq);
    Ok(segments)
}

/// The header of a segment whose first record is `first_seq`, following the record whose chain
/// hash is `chain_before`.
pub(crate) fn encode_header(first_seq: u64, chain_before: &Chain) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&first_seq.to_le_bytes());
    header[20..HEADER_CRC_AT].copy_from_slice(chain_before);
    let crc = crc32c::crc32c(&header[0..HEADER_CRC_AT]);
    header[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a segment header and returns what it records.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header, String> {
    let header = bytes
        .get(0..HEADER_LEN)
        .ok_or_else(|| format!("header is {} bytes, expected {HEADER_LEN}", bytes.len()))?;
    if header[0..8] != MAGIC {
        return Err("bad magic: not a tally journal segment".to_owned());
    }
    let version = read_u32(header, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
        ));
    }
    let crc_stored = read_u32(header, HEADER_CRC_AT);
    let crc_computed = crc32c::crc32c(&header[0..HEADER_CRC_AT]);
    if crc_stored != crc_computed {
        return Err(format!(
            "header checksum mismatch (stored {crc_stored:#010x}, computed {crc_computed:#010x})"
        ));
    }
    Ok(Header {
        first_seq: read_u64(header, 12),
        chain_before: read_chain(header, 20),
    })
}

/// Creates a new segment file holding only its header. With `sync`, the file and then the
/// directory are fsynced so the new name survives a crash.
pub(crate) fn create_segment(
    dir: &Path,
    first_seq: u64,
    chain_before: &Chain,
    sync: bool,
) -> io::Result<(File, PathBuf)> {
    let path = dir.join(segment_file_name(first_seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)?;
    file.write_all(&encode_header(first_seq, chain_before))?;
    if sync {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok((file, path))
}

/// Reserves disk blocks for `file` up to `len` bytes without changing its length
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so that a full disk shows when a segment is
/// created, not in the middle of a group. A filesystem that cannot preallocate is not an error:
/// writes there find a full disk when they happen, as before.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Fsyncs a directory, making file creations and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checksum of a frame: crc32c over the length, the sequence number, the chain hash and the
/// payload (the frame minus its own checksum field). `frame` must hold at least
/// [`FRAME_HEADER_LEN`] bytes.
pub(crate) fn frame_checksum(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(frame.get(0..4).unwrap_or_default());
    let crc = crc32c::crc32c_append(crc, frame.get(8..FRAME_HEADER_LEN).unwrap_or_default());
    crc32c::crc32c_append(crc, frame.get(FRAME_HEADER_LEN..).unwrap_or_default())
}

/// Appends an unsealed frame (checksum and chain fields zero) for `payload` to `buf`;
/// [`seal_frame`] fills them in later, on the committer thread, so appenders hold the queue
/// lock only for a copy.
pub(crate) fn push_unsealed_frame(buf: &mut Vec<u8>, seq: u64, len: u32, payload: &[u8]) {
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&GENESIS);
    buf.extend_from_slice(payload);
}

/// Seals a complete frame: writes its chain hash (following `chain`, which then becomes the
/// frame's own hash) and then its checksum, which covers the chain hash. Frames must be sealed
/// in sequence order.
pub(crate) fn seal_frame(frame: &mut [u8], chain: &mut Chain) {
    let seq = read_u64(frame, 8);
    let payload = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
    *chain = chain_next(chain, seq, payload);
    if let Some(field) = frame.get_mut(FRAME_CHAIN_AT..FRAME_HEADER_LEN) {
        field.copy_from_slice(chain);
    }
    let crc = frame_checksum(frame);
    if let Some(field) = frame.get_mut(4..8) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Length and sequence number of the frame at `offset` of a buffer of frames written by this
/// process (trusted: lengths are not re-validated against [`RECORD_BYTES_MAX`]).
pub(crate) fn peek_frame(buf: &[u8], offset: usize) -> Option<(usize, u64)> {
    let header = buf.get(offset..offset.checked_add(FRAME_HEADER_LEN)?)?;
    let payload_len = usize::try_from(read_u32(header, 0)).ok()?;
    let frame_len = FRAME_HEADER_LEN.checked_add(payload_len)?;
    Some((frame_len, read_u64(header, 8)))
}

/// A frame that decoded and whose checksum matched.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Its stored chain hash (covered by the checksum, not yet checked against the payload).
    pub(crate) chain: Chain,
    /// Where its payload lies in the buffer.
    pub(crate) payload: Range<usize>,
    /// Offset just past the frame.
    pub(crate) end: usize,
}

/// Why a frame failed to decode. Cheap to build: recovery's torn-tail scan tries every offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes remain.
    IncompleteHeader { available: usize },
    /// The length field exceeds [`RECORD_BYTES_MAX`].
    TooLong { len: u32 },
    /// The file ends inside the payload.
    IncompletePayload { needed: usize, available: usize },
    /// The checksum does not match.
    Checksum { stored: u32, computed: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IncompleteHeader { available } => write!(
                f,
                "incomplete record header ({available} of {FRAME_HEADER_LEN} bytes)"
            ),
            Self::TooLong { len } => {
                write!(
                    f,
                    "record length {len} exceeds the maximum {RECORD_BYTES_MAX}"
                )
            }
            Self::IncompletePayload { needed, available } => write!(
                f,
                "incomplete record (needs {needed} bytes, {available} left in the file)"
            ),
            Self::Checksum { stored, computed } => write!(
                f,
                "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Decodes and verifies the frame at `offset` of `buf`; the error says what is wrong with it.
pub(crate) fn decode_frame(buf: &[u8], offset: usize) -> Result<Frame, FrameError> {
    let available = buf.len().saturating_sub(offset);
    let payload_start = offset.saturating_add(FRAME_HEADER_LEN);
    let header = buf
        .get(offset..payload_start)
        .ok_or(FrameError::IncompleteHeader { available })?;
    let len = read_u32(header, 0);
    let payload_len = usize::try_from(len)
        .ok()
        .filter(|payload_len| *payload_len <= RECORD_BYTES_MAX)
        .ok_or(FrameError::TooLong { len })?;
    // Cannot overflow: `payload_start <= buf.len()` and `payload_len <= RECORD_BYTES_MAX`.
    let end = payload_start.saturating_add(payload_len);
    let frame = buf.get(offset..end).ok_or(FrameError::IncompletePayload {
        needed: FRAME_HEADER_LEN.saturating_add(payload_len),
        available,
    })?;
    let stored = read_u32(header, 4);
    let computed = frame_checksum(frame);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(Frame {
        seq: read_u64(header, 8),
        chain: read_chain(header, FRAME_CHAIN_AT),
        payload: payload_start..end,
        end,
    })
}

/// The fields of the whole frame at `offset` without checking its checksum (for reporting a
/// frame that fails it): `None` if its length is over [`RECORD_BYTES_MAX`] or past the buffer.
pub(crate) fn peek_frame_fields(buf: &[u8], offset: usize) -> Option<Frame> {
    let payload_start = offset.checked_add(FRAME_HEADER_LEN)?;
    let header = buf.get(offset..payload_start)?;
    let payload_len = usize::try_from(read_u32(header, 0))
        .ok()
        .filter(|payload_len| *payload_len <= RECORD_BYTES_MAX)?;
    let end = payload_start.checked_add(payload_len)?;
    if end > buf.len() {
        return None;
    }
    Some(Frame {
        seq: read_u64(header, 8),
        chain: read_chain(header, FRAME_CHAIN_AT),
        payload: payload_start..end,
        end,
    })
}

/// Offset of the first frame at or after `from` that decodes, verifies and has a sequence number
/// of at least `seq_min`: evidence that the bytes before it are damage, not a torn tail.
pub(crate) fn find_valid_frame(buf: &[u8], from: usize, seq_min: u64) -> Option<usize> {
    let last_start = buf.len().checked_sub(FRAME_HEADER_LEN)?;
    (from..=last_start).find(|offset| {
        decode_frame(buf, *offset)
            .map(|frame| frame.seq >= seq_min)
            .unwrap_or(false)
    })
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut out = [0u8; 4];
    if let Some(src) = bytes.get(at..at.saturating_add(4)) {
        out.copy_from_slice(src);
    }
    u32::from_le_bytes(out)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    if let Some(src) = bytes.get(at..at.saturating_add(8)) {
        out.copy_from_slice(src);
    }
    u64::from_le_bytes(out)
}

fn read_chain(bytes: &[u8], at: usize) -> Chain {
    let mut out = GENESIS;
    if let Some(src) = bytes.get(at..at.saturating_add(CHAIN_LEN)) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_numerically() {
        let name = segment_file_name(42);
        assert_eq!(name, "journal-00000000000000000042.log");
        assert_eq!(parse_segment_file_name(&name), Some(42));
        assert_eq!(parse_segment_file_name("journal-42.log"), None);
        assert_eq!(parse_segment_file_name("LOCK"), None);
    }

    #[test]
    fn sealed_frame_decodes_and_a_flipped_bit_does_not() {
        let mut buf = Vec::new();
        push_unsealed_frame(&mut buf, 7, 3, b"abc");
        let mut chain = [5u8; CHAIN_LEN];
        seal_frame(&mut buf, &mut chain);
        assert_eq!(chain, chain_next(&[5u8; CHAIN_LEN], 7, b"abc"));
        let frame = decode_frame(&buf, 0);
        assert!(matches!(
            frame,
            Ok(Frame {
                seq: 7,
                end: 51,
                ..
            })
        ));
        assert_eq!(frame.map(|frame| frame.chain), Ok(chain));
        buf[FRAME_HEADER_LEN + 1] ^= 1;
        assert!(decode_frame(&buf, 0).is_err());
    }

    #[test]
    fn the_checksum_covers_the_chain_hash() {
        let mut buf = Vec::new();
        push_unsealed_frame(&mut buf, 1, 3, b"abc");
        let mut chain = GENESIS;
        seal_frame(&mut buf, &mut chain);
        buf[FRAME_CHAIN_AT + 5] ^= 1;
        assert!(matches!(
            decode_frame(&buf, 0),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn chain_depends_on_every_input() {
        let base = chain_next(&GENESIS, 1, b"abc");
        assert_ne!(base, chain_next(&[1u8; CHAIN_LEN], 1, b"abc"));
        assert_ne!(base, chain_next(&GENESIS, 2, b"abc"));
        assert_ne!(base, chain_next(&GENESIS, 1, b"abd"));
        assert_eq!(base, chain_next(&GENESIS, 1, b"abc"));
    }

    #[test]
    fn header_round_trips() {
        let chain = [7u8; CHAIN_LEN];
        let header = Header {
            first_seq: 9,
            chain_before: chain,
        };
        assert_eq!(decode_header(&encode_header(9, &chain)), Ok(header));
        let mut bytes = encode_header(9, &chain);
        bytes[13] ^= 1;
        assert!(decode_header(&bytes).is_err());
        let mut bytes = encode_header(9, &chain);
        bytes[30] ^= 1;
        assert!(decode_header(&bytes).is_err());
    }
}
