//! Opening a TLog directory: list the segments, validate their headers and
//! frames, cut a torn tail, and refuse (with [`WalError::Corrupted`]) anything
//! damaged before the tail.
//!
//! The rule that separates a torn tail from corruption: a bad frame in the
//! last segment with no self-consistent frame of that segment anywhere after
//! it is the trace of a write that a crash interrupted; anything else is
//! damage. The last segment is preallocated (zeros past the write position)
//! and may be a recycled file (stale frames of another segment tag past it):
//! a log that ends at zeros or at a whole stale frame ended cleanly and keeps
//! its preallocated space; any other end is a torn tail, cut off.
//!
//! With [`OpenValidation::LastSegment`] the frames of the sealed segments are
//! left to `replay`, which checks them as it reads them; their headers and the
//! whole last segment are still checked here.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{parse_segment_file_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::scan::{clean_end_at, corrupted, read_segment_header, scan_segment, valid_frame_after};
use super::{Counters, OpenValidation};
use crate::storage::{Storage, StorageFile};
use crate::{CommitEpoch, Result, WalError};

/// One segment file of an open log.
#[derive(Debug)]
pub(crate) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes of header and frames (for the active segment: where the next
    /// frame goes).
    pub len: u64,
    /// The file's size: `len` plus the zeros (or stale frames) preallocated
    /// past it. Equal to `len` for a sealed segment.
    pub allocated: u64,
    /// Whether bytes past `len` may be anything but zeros (a recycled file,
    /// or a file recovered with space past its end): each flush then ends
    /// its write with a frame header of zeros.
    pub stale_past_len: bool,
    /// Epoch of the first frame (the header's first epoch). Every frame of a
    /// segment lies below the next segment's first epoch.
    pub first_epoch: CommitEpoch,
}

/// What [`recover`] leaves behind: the valid segments, oldest first.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: VecDeque<Segment>,
    /// Sequence number the next new segment gets.
    pub next_seq: u64,
    /// Epoch of the last valid frame; zero for an empty log.
    pub last_epoch: CommitEpoch,
}

/// A segment kept by [`recover`], with what the scan learned of it.
struct Kept {
    segment: Segment,
    /// Epoch of its last frame, when its frames were scanned.
    last_epoch: Option<CommitEpoch>,
    /// The epoch its frames had to exceed (exact, or a lower bound when the
    /// segment before it was not scanned).
    floor: CommitEpoch,
}

/// Validates the segments in `dir` as `validation` says, cuts a torn tail,
/// and returns the log.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    validation: OpenValidation,
    counters: &Counters,
) -> Result<Recovered> {
    let listed = list_segments(storage, dir)?;
    let mut kept: Vec<Kept> = Vec::with_capacity(listed.len());
    let mut next_seq = 1;
    for (index, (seq, path)) in listed.iter().enumerate() {
        let is_last = index + 1 == listed.len();
        next_seq = *seq;
        let floor = kept.last().map_or(CommitEpoch::ZERO, |k| {
            k.last_epoch.unwrap_or(k.segment.first_epoch)
        });
        let target = SegmentFile::open(storage, *seq, path)?;
        let outcome = if is_last {
            recover_last(storage, dir, target, floor, counters)?
        } else {
            let scan_frames = validation == OpenValidation::AllFrames;
            Some(check_sealed(target, floor, scan_frames)?)
        };
        if let Some((segment, last_epoch)) = outcome {
            next_seq = seq
                .checked_add(1)
                .ok_or_else(|| corrupted(path, 12, "segment sequence number overflows"))?;
            kept.push(Kept {
                segment,
                last_epoch,
                floor,
            });
        }
    }
    // A removed last segment leaves an unscanned sealed one as the new last.
    if let Some(back) = kept.last_mut().filter(|k| k.last_epoch.is_none()) {
        let file = SegmentFile {
            seq: back.segment.seq,
            path: back.segment.path.clone(),
            file: Arc::clone(&back.segment.file),
            len: back.segment.len,
        };
        let header = SegmentHeader {
            seq: back.segment.seq,
            first_epoch: back.segment.first_epoch,
        };
        back.last_epoch = Some(scan_sealed(&file, &header, back.floor)?);
    }
    let last_epoch = kept
        .last()
        .and_then(|k| k.last_epoch)
        .unwrap_or(CommitEpoch::ZERO);
    Ok(Recovered {
        segments: kept.into_iter().map(|k| k.segment).collect(),
        next_seq,
        last_epoch,
    })
}

/// An open segment file and its length.
struct SegmentFile {
    seq: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    len: u64,
}

impl SegmentFile {
    fn open(storage: &dyn Storage, seq: u64, path: &Path) -> Result<SegmentFile> {
        let io_err = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |err| WalError::io(context, err)
        };
        let file = storage.open_file(path, false).map_err(io_err("opening"))?;
        let len = file.len().map_err(io_err("sizing"))?;
        Ok(SegmentFile {
            seq,
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// The header, checked against the file name and the epoch floor;
    /// `Ok(Err((offset, reason)))` when it is missing, damaged or inconsistent.
    fn header(&self, floor: CommitEpoch) -> Result<Result<SegmentHeader, (u64, String)>> {
        let header = match read_segment_header(&*self.file, &self.path, self.len)? {
            Ok(header) => header,
            Err(defect) => return Ok(Err(defect)),
        };
        if header.seq != self.seq {
            let reason = format!(
                "header names segment {} but the file is {}",
                header.seq, self.seq
            );
            return Ok(Err((12, reason)));
        }
        if header.first_epoch <= floor {
            let reason = format!("first {} does not follow {floor}", header.first_epoch);
            return Ok(Err((20, reason)));
        }
        Ok(Ok(header))
    }

    fn into_segment(self, header: &SegmentHeader, len: u64, allocated: u64) -> Segment {
        debug_assert!(len <= allocated);
        Segment {
            seq: self.seq,
            path: self.path,
            file: self.file,
            len,
            allocated,
            stale_past_len: allocated > len,
            first_epoch: header.first_epoch,
        }
    }
}

/// Checks a segment before the last: its header always, its frames when
/// `scan` is set. Any flaw is corruption: a sealed segment was fsync'd whole
/// before the next one was created.
fn check_sealed(
    target: SegmentFile,
    floor: CommitEpoch,
    scan: bool,
) -> Result<(Segment, Option<CommitEpoch>)> {
    let header = target
        .header(floor)?
        .map_err(|(offset, reason)| corrupted(&target.path, offset, reason))?;
    let last_epoch = if scan {
        Some(scan_sealed(&target, &header, floor)?)
    } else {
        None
    };
    let len = target.len;
    Ok((target.into_segment(&header, len, len), last_epoch))
}

/// Scans every frame of a sealed segment; returns the epoch of its last.
fn scan_sealed(
    target: &SegmentFile,
    header: &SegmentHeader,
    floor: CommitEpoch,
) -> Result<CommitEpoch> {
    let scan = scan_segment(
        Arc::clone(&target.file),
        &target.path,
        target.len,
        header,
        floor,
    )?;
    if let Some((offset, reason)) = scan.bad {
        return Err(corrupted(&target.path, offset, reason));
    }
    if scan.frames == 0 {
        let reason = "a segment before the last holds no frame";
        return Err(corrupted(&target.path, SEGMENT_HEADER_BYTES as u64, reason));
    }
    Ok(scan.last_epoch)
}

/// Validates the last segment and cuts its torn tail; `None` when it held
/// nothing but a torn or empty header and was removed.
fn recover_last(
    storage: &dyn Storage,
    dir: &Path,
    target: SegmentFile,
    floor: CommitEpoch,
    counters: &Counters,
) -> Result<Option<(Segment, Option<CommitEpoch>)>> {
    let (file, path, len) = (&*target.file, target.path.as_path(), target.len);
    let guess = guessed_header(&target, floor);
    let header = match target.header(floor)? {
        Ok(header) => header,
        Err((0, _)) if !valid_frame_after(file, path, &guess, 0, len)? => {
            remove_torn_segment(storage, dir, path, len, counters)?;
            return Ok(None);
        }
        Err((offset, reason)) => return Err(corrupted(path, offset, reason)),
    };
    let scan = scan_segment(Arc::clone(&target.file), path, len, &header, floor)?;
    let mut clean = true;
    if let Some((offset, reason)) = scan.bad {
        if valid_frame_after(file, path, &header, offset + 1, len)? {
            return Err(corrupted(path, offset, reason));
        }
        clean = clean_end_at(file, path, &header, offset, len)?;
    }
    if scan.frames == 0 {
        remove_torn_segment(storage, dir, path, len, counters)?;
        return Ok(None);
    }
    let allocated = if clean {
        len
    } else {
        cut_torn_tail(file, path, scan.valid_end, len, counters)?;
        scan.valid_end
    };
    Ok(Some((
        target.into_segment(&header, scan.valid_end, allocated),
        Some(scan.last_epoch),
    )))
}

/// What the header of a last segment whose own header is torn would have
/// said: its file's sequence number, and a first epoch just above the log
/// before it (the lowest its frames can carry).
fn guessed_header(target: &SegmentFile, floor: CommitEpoch) -> SegmentHeader {
    SegmentHeader {
        seq: target.seq,
        first_epoch: CommitEpoch(floor.get().saturating_add(1)),
    }
}

/// The segment files of `dir` sorted by sequence number, which must have no gap
/// (truncation removes the oldest segments, one at a time, so what remains is
/// always a run).
fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = storage
        .list_dir(dir)
        .map_err(|err| WalError::io(format!("listing {}", dir.display()), err))?;
    let mut listed: Vec<(u64, PathBuf)> = entries
        .into_iter()
        .filter_map(|path| {
            let seq = parse_segment_file_name(path.file_name()?.to_str()?)?;
            Some((seq, path))
        })
        .collect();
    listed.sort();
    for pair in listed.windows(2) {
        let (prev, (seq, path)) = (pair[0].0, &pair[1]);
        if prev.checked_add(1) != Some(*seq) {
            let reason = format!("segment sequence gap: segment {prev} is followed by {seq}");
            return Err(corrupted(path, 0, reason));
        }
    }
    Ok(listed)
}

/// Truncates the last segment at its last valid frame and makes that durable.
fn cut_torn_tail(
    file: &dyn StorageFile,
    path: &Path,
    valid_end: u64,
    len: u64,
    counters: &Counters,
) -> Result<()> {
    tracing::warn!(path = %path.display(), valid_end, cut = len - valid_end, "cutting torn TLog tail");
    let io_err = |err| WalError::io(format!("cutting the torn tail of {}", path.display()), err);
    file.set_len(valid_end).map_err(io_err)?;
    counters.fsync();
    file.sync_data().map_err(io_err)?;
    counters.add_torn_bytes(len - valid_end);
    Ok(())
}

/// Removes a last segment that holds no frame (its header torn, or written
/// just before a crash) and makes the removal durable.
fn remove_torn_segment(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    len: u64,
    counters: &Counters,
) -> Result<()> {
    tracing::warn!(path = %path.display(), len, "removing a TLog segment with no frame");
    let io_err = |err| WalError::io(format!("removing {}", path.display()), err);
    storage.remove_file(path).map_err(io_err)?;
    counters.fsync();
    storage.sync_dir(dir).map_err(io_err)?;
    counters.add_torn_bytes(len);
    Ok(())
}
