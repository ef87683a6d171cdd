//! Reading segments back: a chunked frame cursor, the open-time validation
//! scan (which tells a torn tail from corruption) and the replay iterator.
//!
//! Everything here reads through [`StorageFile::read_exact_at`] in chunks of
//! [`READ_CHUNK_BYTES`], so memory stays bounded by one chunk (or one frame,
//! when a frame is larger) whatever the size of the log.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    decode_frame_header, FrameHeader, SegmentHeader, FRAME_HEADER_BYTES, FRAME_MAGIC,
    FRAME_OVERHEAD_BYTES, FRAME_TRAILER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::storage::StorageFile;
use crate::{CommitEpoch, Result, WalError};

/// How much one read asks of the storage while scanning or replaying.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// Block size of the streaming CRC check used when probing for a frame.
const PROBE_BLOCK_BYTES: usize = 64 << 10;

/// One step of a [`FrameCursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A self-consistent frame (magic, header fields and CRC check out).
    Frame {
        /// File offset of the frame's first byte.
        offset: u64,
        /// The frame's epoch.
        epoch: CommitEpoch,
        /// Where the payload sits in the cursor's buffer ([`FrameCursor::bytes`]).
        payload: Range<usize>,
    },
    /// The cursor stands exactly at the end of the readable range.
    End,
    /// The bytes at `offset` are not a frame.
    Bad {
        /// File offset of the first byte that is not a valid frame.
        offset: u64,
        /// Which check failed.
        reason: String,
    },
}

/// Streams the frames of one segment file between a start offset and an end.
#[derive(Debug)]
pub(crate) struct FrameCursor {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    /// The segment's header: a frame that does not belong to it (another
    /// segment tag, an epoch below its first) is not a frame of this log.
    owner: SegmentHeader,
    /// Chunk buffer; its length is its capacity, `filled` says how much is data.
    buf: Vec<u8>,
    filled: usize,
    /// Index in `buf` of the next frame.
    start: usize,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// File offset where the readable bytes end.
    end: u64,
}

impl FrameCursor {
    /// A cursor over `[start, end)` of `file`, the segment `owner` opens.
    pub(crate) fn new(
        file: Arc<dyn StorageFile>,
        path: &Path,
        owner: SegmentHeader,
        start: u64,
        end: u64,
    ) -> Self {
        debug_assert!(start <= end);
        let first_chunk = (end - start).min(READ_CHUNK_BYTES as u64) as usize;
        FrameCursor {
            file,
            path: path.to_path_buf(),
            owner,
            buf: vec![0u8; first_chunk],
            filled: 0,
            start: 0,
            buf_offset: start,
            end,
        }
    }

    /// File offset of the next frame.
    pub(crate) fn position(&self) -> u64 {
        self.buf_offset + self.start as u64
    }

    /// The bytes a [`Step::Frame`] range points into.
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Reads and checks the next frame.
    pub(crate) fn next_step(&mut self) -> Result<Step> {
        let offset = self.position();
        let left = self.end - offset;
        if left == 0 {
            return Ok(Step::End);
        }
        if left < FRAME_OVERHEAD_BYTES as u64 {
            return Ok(bad(offset, format!("frame truncated: {left} bytes left")));
        }
        self.fill(FRAME_HEADER_BYTES)?;
        let header = match decode_frame_header(&self.buf[self.start..self.filled]) {
            Ok(header) => header,
            Err(reason) => return Ok(bad(offset, reason)),
        };
        if !header.belongs_to(&self.owner) {
            let reason = format!(
                "frame of {} with segment tag {:#08x} is not part of segment {} (tag {:#08x}, first {})",
                header.epoch,
                header.segment_tag,
                self.owner.seq,
                self.owner.tag(),
                self.owner.first_epoch
            );
            return Ok(bad(offset, reason));
        }
        let frame_len = header.frame_len();
        if frame_len as u64 > left {
            let reason =
                format!("frame of {frame_len} bytes runs past the end ({left} bytes left)");
            return Ok(bad(offset, reason));
        }
        self.fill(frame_len)?;
        let frame = self.start..self.start + frame_len;
        if !super::format::frame_crc_matches(&self.buf[frame.clone()]) {
            return Ok(bad(offset, "frame CRC mismatch".to_string()));
        }
        self.start = frame.end;
        Ok(Step::Frame {
            offset,
            epoch: header.epoch,
            payload: frame.start + FRAME_HEADER_BYTES..frame.end - FRAME_TRAILER_BYTES,
        })
    }

    /// Makes at least `need` bytes from the cursor available in `buf`;
    /// the caller has checked that they lie before `end`.
    fn fill(&mut self, need: usize) -> Result<()> {
        if self.filled - self.start >= need {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.filled, 0);
        self.filled -= self.start;
        self.buf_offset += self.start as u64;
        self.start = 0;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let file_pos = self.buf_offset + self.filled as u64;
        let room = (self.buf.len() - self.filled) as u64;
        let take = room.min(self.end - file_pos) as usize;
        debug_assert!(self.filled + take >= need, "fill past the end of the range");
        let target = &mut self.buf[self.filled..self.filled + take];
        self.file
            .read_exact_at(target, file_pos)
            .map_err(|err| WalError::io(format!("reading {}", self.path.display()), err))?;
        self.filled += take;
        Ok(())
    }
}

fn bad(offset: u64, reason: String) -> Step {
    Step::Bad { offset, reason }
}

/// Reads a segment's header; `Err(reason)` when it is missing or damaged.
pub(crate) fn read_segment_header(
    file: &dyn StorageFile,
    path: &Path,
    len: u64,
) -> Result<Result<SegmentHeader, (u64, String)>> {
    if len < SEGMENT_HEADER_BYTES as u64 {
        let reason = format!("segment header truncated: {len} of {SEGMENT_HEADER_BYTES} bytes");
        return Ok(Err((0, reason)));
    }
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|err| WalError::io(format!("reading {}", path.display()), err))?;
    Ok(SegmentHeader::decode(&bytes))
}

/// What the open-time scan found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentScan {
    /// Offset just past the last valid frame (the header's end when none).
    pub valid_end: u64,
    /// Valid frames found.
    pub frames: u64,
    /// Epoch of the last valid frame (`prev_epoch` when none).
    pub last_epoch: CommitEpoch,
    /// The first bad frame, if any: offset and reason.
    pub bad: Option<(u64, String)>,
}

/// Walks the frames of the segment `header` opens, after a log whose last
/// epoch is `prev_epoch`, and stops at the first bad frame. A frame whose CRC
/// holds but whose epoch breaks the chain, or that is not part of the segment
/// (see [`FrameHeader::belongs_to`]), counts as bad too.
pub(crate) fn scan_segment(
    file: Arc<dyn StorageFile>,
    path: &Path,
    len: u64,
    header: &SegmentHeader,
    prev_epoch: CommitEpoch,
) -> Result<SegmentScan> {
    let first_epoch = header.first_epoch;
    let start = SEGMENT_HEADER_BYTES as u64;
    let mut cursor = FrameCursor::new(file, path, *header, start, len);
    let mut scan = SegmentScan {
        valid_end: SEGMENT_HEADER_BYTES as u64,
        frames: 0,
        last_epoch: prev_epoch,
        bad: None,
    };
    loop {
        match cursor.next_step()? {
            Step::End => return Ok(scan),
            Step::Bad { offset, reason } => {
                scan.bad = Some((offset, reason));
                return Ok(scan);
            }
            Step::Frame { offset, epoch, .. } => {
                if let Some(reason) = chain_break(scan.frames, epoch, first_epoch, scan.last_epoch)
                {
                    scan.bad = Some((offset, reason));
                    return Ok(scan);
                }
                scan.frames += 1;
                scan.last_epoch = epoch;
                scan.valid_end = cursor.position();
            }
        }
    }
}

/// Why a frame with `epoch`, the `index`-th of its segment, does not continue
/// the log; `None` when it does.
fn chain_break(
    index: u64,
    epoch: CommitEpoch,
    first_epoch: CommitEpoch,
    prev_epoch: CommitEpoch,
) -> Option<String> {
    if index == 0 && epoch != first_epoch {
        return Some(format!(
            "first frame has {epoch} but the segment header says {first_epoch}"
        ));
    }
    if epoch <= prev_epoch {
        return Some(format!("{epoch} does not follow {prev_epoch}"));
    }
    None
}

/// Whether any self-consistent frame of the segment `owner` (see
/// [`FrameHeader::belongs_to`]) starts at an offset in `[from, end)`. Used to
/// tell a torn tail (nothing valid after the damage) from corruption; stale
/// frames of a recycled file's earlier life do not count.
pub(crate) fn valid_frame_after(
    file: &dyn StorageFile,
    path: &Path,
    owner: &SegmentHeader,
    from: u64,
    end: u64,
) -> Result<bool> {
    let io_err = |err| WalError::io(format!("reading {}", path.display()), err);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES.min(end.saturating_sub(from) as usize)];
    let mut pos = from;
    while end.saturating_sub(pos) >= FRAME_OVERHEAD_BYTES as u64 {
        let take = (end - pos).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..take], pos)
            .map_err(io_err)?;
        for hit in magic_positions(&chunk[..take]) {
            let at = pos + hit as u64;
            if whole_frame_at(file, path, at, end, |frame| frame.belongs_to(owner))? {
                return Ok(true);
            }
        }
        // Step back so a magic split across two chunks is still seen.
        pos += (take as u64)
            .saturating_sub(FRAME_MAGIC.len() as u64 - 1)
            .max(1);
    }
    Ok(false)
}

fn magic_positions(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .windows(FRAME_MAGIC.len())
        .enumerate()
        .filter(|(_, window)| *window == FRAME_MAGIC)
        .map(|(index, _)| index)
}

/// Whether the bytes at `offset` are the clean end of a preallocated or
/// recycled segment (zeros, or a whole stale frame) rather than a torn write:
/// the rule of [`super::format::is_clean_end`], read in bounded blocks.
pub(crate) fn clean_end_at(
    file: &dyn StorageFile,
    path: &Path,
    owner: &SegmentHeader,
    offset: u64,
    end: u64,
) -> Result<bool> {
    let io_err = |err| WalError::io(format!("reading {}", path.display()), err);
    let mut head = [0u8; FRAME_HEADER_BYTES];
    let take = (end.saturating_sub(offset) as usize).min(FRAME_HEADER_BYTES);
    file.read_exact_at(&mut head[..take], offset)
        .map_err(io_err)?;
    if head[..take].iter().all(|&byte| byte == 0) {
        return Ok(true);
    }
    whole_frame_at(file, path, offset, end, |frame| !frame.belongs_to(owner))
}

/// Whether a whole, self-consistent frame that `accept` admits starts at
/// `offset` (CRC checked in blocks, so a damaged length field cannot make
/// this allocate much).
fn whole_frame_at(
    file: &dyn StorageFile,
    path: &Path,
    offset: u64,
    end: u64,
    accept: impl Fn(&FrameHeader) -> bool,
) -> Result<bool> {
    let io_err = |err| WalError::io(format!("reading {}", path.display()), err);
    if end - offset < FRAME_OVERHEAD_BYTES as u64 {
        return Ok(false);
    }
    let mut header_bytes = [0u8; FRAME_HEADER_BYTES];
    file.read_exact_at(&mut header_bytes, offset)
        .map_err(io_err)?;
    let Ok(header) = decode_frame_header(&header_bytes) else {
        return Ok(false);
    };
    if !accept(&header) || header.frame_len() as u64 > end - offset {
        return Ok(false);
    }
    let payload_len = header.payload_len;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes);
    let mut block = vec![0u8; PROBE_BLOCK_BYTES.min(payload_len.max(1))];
    let mut pos = offset + FRAME_HEADER_BYTES as u64;
    let payload_end = pos + payload_len as u64;
    while pos < payload_end {
        let take = (payload_end - pos).min(block.len() as u64) as usize;
        file.read_exact_at(&mut block[..take], pos)
            .map_err(io_err)?;
        hasher.update(&block[..take]);
        pos += take as u64;
    }
    let mut trailer = [0u8; FRAME_TRAILER_BYTES];
    file.read_exact_at(&mut trailer, payload_end)
        .map_err(io_err)?;
    Ok(hasher.finalize() == u32::from_le_bytes(trailer))
}

/// A segment as a replay sees it: a snapshot taken when the replay began.
#[derive(Debug, Clone)]
pub(crate) struct ReplaySegment {
    /// The segment's sequence number (its frames carry its tag).
    pub seq: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes written to the segment when the replay began.
    pub len: u64,
    /// The header's first epoch: the epoch of the segment's first frame.
    pub first_epoch: CommitEpoch,
}

/// The segment a replay is reading.
#[derive(Debug)]
struct Current {
    cursor: FrameCursor,
    first_epoch: CommitEpoch,
    frames: u64,
    /// Whether more segments follow (so this one must hold a frame).
    sealed: bool,
}

/// Streams the frames of the log with an epoch above a bound, in log order,
/// checking every CRC and the epoch chain again as it reads.
///
/// As an [`Iterator`] it hands out owned payloads; [`Replay::next_frame`]
/// lends them instead and saves the copy. After the first error it ends.
#[derive(Debug)]
pub struct Replay {
    segments: VecDeque<ReplaySegment>,
    current: Option<Current>,
    after: CommitEpoch,
    prev_epoch: CommitEpoch,
    done: bool,
}

impl Replay {
    pub(crate) fn new(segments: VecDeque<ReplaySegment>, after: CommitEpoch) -> Self {
        Replay {
            segments,
            current: None,
            after,
            prev_epoch: CommitEpoch::ZERO,
            done: false,
        }
    }

    /// The next frame with its payload borrowed from the replay's buffer.
    pub fn next_frame(&mut self) -> Option<Result<(CommitEpoch, &[u8])>> {
        match self.advance() {
            Ok(Some((epoch, range))) => {
                let current = self.current.as_ref()?;
                Some(Ok((epoch, current.cursor.bytes(range))))
            }
            Ok(None) => None,
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }

    /// Moves to the next frame to hand out: its epoch and payload range.
    fn advance(&mut self) -> Result<Option<(CommitEpoch, Range<usize>)>> {
        while !self.done {
            let Some(current) = self.current.as_mut() else {
                self.open_next_segment();
                continue;
            };
            let step = current.cursor.next_step()?;
            let path = &current.cursor.path;
            match step {
                Step::End if current.frames == 0 && current.sealed => {
                    let reason = "a segment before the last holds no frame";
                    return Err(corrupted(path, SEGMENT_HEADER_BYTES as u64, reason));
                }
                Step::End => self.current = None,
                Step::Bad { offset, reason } => {
                    return Err(corrupted(path, offset, reason));
                }
                Step::Frame {
                    offset,
                    epoch,
                    payload,
                } => {
                    let prev = self.prev_epoch;
                    if let Some(reason) =
                        chain_break(current.frames, epoch, current.first_epoch, prev)
                    {
                        return Err(corrupted(path, offset, reason));
                    }
                    current.frames += 1;
                    self.prev_epoch = epoch;
                    if epoch > self.after {
                        return Ok(Some((epoch, payload)));
                    }
                }
            }
        }
        Ok(None)
    }

    fn open_next_segment(&mut self) {
        match self.segments.pop_front() {
            Some(segment) => {
                let start = SEGMENT_HEADER_BYTES as u64;
                let owner = SegmentHeader {
                    seq: segment.seq,
                    first_epoch: segment.first_epoch,
                };
                let (file, path, end) = (segment.file, &segment.path, segment.len);
                self.current = Some(Current {
                    cursor: FrameCursor::new(file, path, owner, start, end),
                    first_epoch: segment.first_epoch,
                    frames: 0,
                    sealed: !self.segments.is_empty(),
                });
            }
            None => self.done = true,
        }
    }
}

impl Iterator for Replay {
    type Item = Result<(CommitEpoch, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
            .map(|frame| frame.map(|(epoch, payload)| (epoch, payload.to_vec())))
    }
}

/// A [`WalError::Corrupted`] for `path` at `offset`.
pub(crate) fn corrupted(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemStorage, Storage};
    use crate::tlog::format::encode_commit_frame;

    fn owner(first_epoch: u64) -> SegmentHeader {
        SegmentHeader {
            seq: 1,
            first_epoch: CommitEpoch(first_epoch),
        }
    }

    fn segment(frames: &[(u64, usize)]) -> Vec<u8> {
        let header = owner(frames.first().map_or(1, |f| f.0));
        let mut bytes = header.encode().to_vec();
        for &(epoch, len) in frames {
            encode_commit_frame(&mut bytes, 1, CommitEpoch(epoch), &vec![epoch as u8; len]);
        }
        bytes
    }

    fn file_with(bytes: Vec<u8>) -> (Arc<dyn StorageFile>, PathBuf) {
        let storage = MemStorage::new();
        let path = PathBuf::from("/t/seg");
        storage.set_file_bytes(&path, bytes);
        (storage.open_file(&path, false).unwrap(), path)
    }

    #[test]
    fn cursor_reads_frames_bigger_than_its_chunk() {
        let big = READ_CHUNK_BYTES + 1000;
        let bytes = segment(&[(1, 10), (2, big), (3, 5)]);
        let len = bytes.len() as u64;
        let (file, path) = file_with(bytes);
        let scan = scan_segment(file, &path, len, &owner(1), CommitEpoch::ZERO).unwrap();
        assert_eq!(scan.frames, 3);
        assert_eq!(scan.valid_end, len);
        assert_eq!(scan.last_epoch, CommitEpoch(3));
        assert_eq!(scan.bad, None);
    }

    #[test]
    fn scan_stops_at_the_first_bad_frame_and_probe_finds_later_ones() {
        let mut bytes = segment(&[(1, 10), (2, 10), (3, 10)]);
        let second = SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES + 10;
        bytes[second + FRAME_HEADER_BYTES] ^= 0x10;
        let len = bytes.len() as u64;
        let (file, path) = file_with(bytes);
        let scan = scan_segment(file.clone(), &path, len, &owner(1), CommitEpoch::ZERO);
        let scan = scan.unwrap();
        assert_eq!(scan.frames, 1);
        assert_eq!(scan.bad.as_ref().map(|b| b.0), Some(second as u64));
        assert!(valid_frame_after(&*file, &path, &owner(1), second as u64 + 1, len).unwrap());
        let third = (second + FRAME_OVERHEAD_BYTES + 10) as u64;
        assert!(!valid_frame_after(&*file, &path, &owner(1), third + 1, len).unwrap());
    }

    #[test]
    fn scan_ends_at_preallocated_zeros_and_at_stale_frames() {
        let mut bytes = segment(&[(1, 10), (2, 10)]);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 100]);
        let mut stale = bytes.clone();
        stale.truncate(end as usize);
        encode_commit_frame(&mut stale, 7, CommitEpoch(40), b"old frame");
        for image in [bytes, stale] {
            let len = image.len() as u64;
            let (file, path) = file_with(image);
            let scan = scan_segment(file.clone(), &path, len, &owner(1), CommitEpoch::ZERO);
            let scan = scan.unwrap();
            assert_eq!((scan.frames, scan.valid_end), (2, end));
            assert!(scan.bad.is_some());
            assert!(clean_end_at(&*file, &path, &owner(1), end, len).unwrap());
            assert!(!valid_frame_after(&*file, &path, &owner(1), end + 1, len).unwrap());
        }
    }

    #[test]
    fn scan_flags_epochs_that_do_not_increase() {
        let bytes = segment(&[(5, 1), (6, 1), (6, 1)]);
        let len = bytes.len() as u64;
        let (file, path) = file_with(bytes);
        let scan = scan_segment(file.clone(), &path, len, &owner(5), CommitEpoch(4));
        let scan = scan.unwrap();
        assert_eq!(scan.frames, 2);
        assert!(scan.bad.unwrap().1.contains("does not follow"));
        let wrong_first = scan_segment(file, &path, len, &owner(4), CommitEpoch(3)).unwrap();
        assert_eq!(wrong_first.frames, 0);
        assert!(wrong_first.bad.unwrap().1.contains("segment header says"));
    }

    #[test]
    fn probe_finds_a_frame_whose_magic_straddles_two_chunks() {
        let mut bytes = vec![0u8; READ_CHUNK_BYTES - 2];
        encode_commit_frame(&mut bytes, 1, CommitEpoch(9), b"payload");
        let len = bytes.len() as u64;
        let (file, path) = file_with(bytes);
        assert!(valid_frame_after(&*file, &path, &owner(9), 0, len).unwrap());
        let from = READ_CHUNK_BYTES as u64;
        assert!(!valid_frame_after(&*file, &path, &owner(9), from, len).unwrap());
        let other = SegmentHeader {
            seq: 2,
            first_epoch: CommitEpoch(9),
        };
        assert!(
            !valid_frame_after(&*file, &path, &other, 0, len).unwrap(),
            "a frame of another segment is not one of this segment's"
        );
        assert!(clean_end_at(&*file, &path, &other, len - 31, len).unwrap());
        assert!(!clean_end_at(&*file, &path, &owner(9), len - 31, len).unwrap());
    }
}
