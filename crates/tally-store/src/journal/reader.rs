//! Reading durable records back from an open journal, beside the committer.
//!
//! The rules (what is read, how trimming and rollover interact with a read) are stated in the
//! parent module's docs under "Reading"; this file applies them. It opens segments read-only,
//! one at a time, and never reads a frame past the durable point it was given.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::format::{self, SegmentFile, FRAME_HEADER_LEN, HEADER_LEN};
use super::{JournalError, RECORD_BYTES_MAX};

/// Buffer for reading a segment: frames skipped by length mostly stay inside it, so skipping
/// costs a header parse rather than a system call.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The caller's callback: `(seq, payload)`; `Ok(false)` stops the read.
pub(crate) type ReadFn<'a> = dyn FnMut(u64, &[u8]) -> Result<bool, JournalError> + 'a;

/// How reading one segment ended.
enum SegmentEnd {
    /// Every wanted record of the segment was read; the next one is this sequence number.
    Next(u64),
    /// The callback returned `Ok(false)`.
    Stopped,
    /// The segment file is gone: a concurrent `trim_before` removed it after the listing.
    Vanished,
}

/// Where reading stands; shared by the segments of one read.
struct Cursor<'f, 'a> {
    /// Records before it are skipped by length (never checksummed, never handed out).
    from_seq: u64,
    /// Records handed to the callback so far.
    delivered: u64,
    /// Holds the frame being handed out (header and payload); reused across frames.
    frame: Vec<u8>,
    f: &'f mut ReadFn<'a>,
}

fn offset_u64(offset: usize) -> u64 {
    u64::try_from(offset).unwrap_or(u64::MAX)
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Hands every record with `from_seq <= seq <= durable_seq` to `f`, in order, reading the
/// segment files of `dir`; see [`super::Journal::read_from`]. `durable_seq` must have been read
/// from the durable point before this call: every segment holding a record up to it then
/// exists (or was trimmed) when the directory is listed here, and every byte of those records
/// was written before it was published.
pub(crate) fn read_from(
    dir: &Path,
    from_seq: u64,
    durable_seq: u64,
    f: &mut ReadFn<'_>,
) -> Result<u64, JournalError> {
    // There is no record 0: reading "from the beginning" starts at 1.
    let from_seq = from_seq.max(1);
    if from_seq > durable_seq {
        return Ok(0);
    }
    let segments = format::list_segments(dir).map_err(io_error("list", dir))?;
    // Segments before `start` end before `from_seq`: the next one starts at or before it.
    let start = segments.partition_point(|segment| segment.first_seq <= from_seq);
    let Some(start) = start.checked_sub(1) else {
        let oldest = segments
            .first()
            .map_or(durable_seq.saturating_add(1), |segment| segment.first_seq);
        return Err(trimmed(dir, from_seq, oldest));
    };

    let mut cursor = Cursor {
        from_seq,
        delivered: 0,
        frame: Vec::new(),
        f,
    };
    let mut seq_next = segments
        .get(start)
        .map_or(from_seq, |segment| segment.first_seq);
    for (index, segment) in segments.iter().enumerate().skip(start) {
        if seq_next > durable_seq {
            break; // the rest holds only records that are not durable yet
        }
        if segment.first_seq != seq_next {
            return Err(JournalError::Corrupt {
                segment: segment.path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at seq {} but the previous segment ends at seq {} \
                     (sequence numbers must be contiguous)",
                    segment.first_seq,
                    seq_next.saturating_sub(1)
                ),
            });
        }
        // The segment holds everything before the next segment's first record.
        let next_first = segments.get(index.saturating_add(1)).map(|s| s.first_seq);
        let stop = next_first
            .unwrap_or(u64::MAX)
            .min(durable_seq.saturating_add(1));
        match read_segment(segment, stop, next_first, &mut cursor)? {
            SegmentEnd::Next(seq) => seq_next = seq,
            SegmentEnd::Stopped => break,
            SegmentEnd::Vanished => {
                // Everything this segment held is gone; so is everything before it.
                let needed = seq_next.max(from_seq);
                let oldest = next_first.unwrap_or(segment.first_seq.saturating_add(1));
                return Err(trimmed(dir, needed, oldest));
            }
        }
    }
    Ok(cursor.delivered)
}

/// [`JournalError::Trimmed`] for a read that needed `needed` (`after` = `needed - 1`); the
/// oldest segment is listed again (a trim may be under way) and is at least `oldest_min`.
fn trimmed(dir: &Path, needed: u64, oldest_min: u64) -> JournalError {
    let listed = format::list_segments(dir)
        .ok()
        .and_then(|segments| segments.first().map(|segment| segment.first_seq));
    JournalError::Trimmed {
        dir: dir.to_owned(),
        first_seq: listed.unwrap_or(oldest_min).max(oldest_min),
        after: needed.saturating_sub(1),
    }
}

/// Reads the records `segment.first_seq .. stop` of one segment: skips those before
/// `cursor.from_seq` by their length, verifies and hands out the others. `next_first` (the next
/// segment's first seq, if any) only words the error when the file ends early.
fn read_segment(
    segment: &SegmentFile,
    stop: u64,
    next_first: Option<u64>,
    cursor: &mut Cursor<'_, '_>,
) -> Result<SegmentEnd, JournalError> {
    let path = &segment.path;
    let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
        segment: path.clone(),
        offset,
        reason,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(SegmentEnd::Vanished),
        Err(error) => return Err(io_error("open for reading", path)(error)),
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);

    let mut header = [0u8; HEADER_LEN];
    if !read_exact_or_eof(&mut reader, &mut header, path)? {
        return Err(corrupt(
            0,
            format!("incomplete segment header (expected {HEADER_LEN} bytes)"),
        ));
    }
    match format::decode_header(&header) {
        Ok(header) if header.first_seq == segment.first_seq => {}
        Ok(header) => {
            return Err(corrupt(
                0,
                format!(
                    "header says first seq {}, the file name says {}",
                    header.first_seq, segment.first_seq
                ),
            ))
        }
        Err(reason) => return Err(corrupt(0, reason)),
    }

    let mut offset = offset_u64(HEADER_LEN);
    let mut seq = segment.first_seq;
    while seq < stop {
        cursor.frame.resize(FRAME_HEADER_LEN, 0);
        let frame_header = cursor.frame.get_mut(..FRAME_HEADER_LEN).unwrap_or_default();
        if !read_exact_or_eof(&mut reader, frame_header, path)? {
            let expected = match next_first {
                Some(next) if next <= stop => {
                    format!("the next segment starts at seq {next}")
                }
                _ => format!("records up to seq {} are durable", stop.saturating_sub(1)),
            };
            return Err(corrupt(
                offset,
                format!(
                    "segment ends at seq {} but {expected}",
                    seq.saturating_sub(1)
                ),
            ));
        }
        let (frame_len, frame_seq) = format::peek_frame(&cursor.frame, 0)
            .ok_or_else(|| corrupt(offset, "unreadable record header".to_owned()))?;
        let payload_len = frame_len.saturating_sub(FRAME_HEADER_LEN);
        if payload_len > RECORD_BYTES_MAX {
            return Err(corrupt(
                offset,
                format!("record length {payload_len} exceeds the maximum {RECORD_BYTES_MAX}"),
            ));
        }
        if frame_seq != seq {
            return Err(corrupt(
                offset,
                format!("record has seq {frame_seq} where seq {seq} was expected"),
            ));
        }
        if seq < cursor.from_seq {
            // Cannot overflow: `payload_len <= RECORD_BYTES_MAX`.
            let skip = i64::try_from(payload_len).unwrap_or(i64::MAX);
            reader
                .seek_relative(skip)
                .map_err(io_error("seek in", path))?;
        } else {
            cursor.frame.resize(frame_len, 0);
            let payload = cursor.frame.get_mut(FRAME_HEADER_LEN..).unwrap_or_default();
            if !read_exact_or_eof(&mut reader, payload, path)? {
                return Err(corrupt(
                    offset,
                    format!("incomplete record seq {seq} (the file ends inside its payload)"),
                ));
            }
            let frame = format::decode_frame(&cursor.frame, 0)
                .map_err(|error| corrupt(offset, format!("record seq {seq}: {error}")))?;
            let payload = cursor.frame.get(frame.payload).unwrap_or_default();
            cursor.delivered = cursor.delivered.saturating_add(1);
            if !(cursor.f)(seq, payload)? {
                return Ok(SegmentEnd::Stopped);
            }
        }
        offset = offset.saturating_add(offset_u64(frame_len));
        seq = seq
            .checked_add(1)
            .ok_or_else(|| corrupt(offset, "sequence numbers exhausted".to_owned()))?;
    }
    Ok(SegmentEnd::Next(seq))
}

/// Fills `buf`; `Ok(false)` if the file ends first (a partial fill included).
fn read_exact_or_eof(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
) -> Result<bool, JournalError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(io_error("read", path)(error)),
    }
}
