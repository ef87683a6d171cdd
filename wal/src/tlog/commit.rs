//! Group commit: the append buffer, the leader/follower flush, segment
//! rotation, truncation, poisoning, and the background flusher of
//! [`Durability::Eventual`].
//!
//! Protocol: `append` copies a finished frame into `State::buf` under the
//! state lock. A thread that needs its frame durable and finds no flush in
//! progress becomes the leader: it takes the whole buffer, releases the lock,
//! does one write and one fsync, then publishes the new durable epoch and wakes
//! every waiter. Threads arriving meanwhile buffer their frames and wait; the
//! next leader takes them all at once. Any failed write or fsync poisons the
//! log: after a failed fsync the kernel may have dropped the dirty pages, so
//! nothing written since the last good fsync can be trusted until a reopen
//! re-validates the files.
//!
//! Frames are buffered before the segment they go to is known for sure (a
//! flush may rotate first), so `append` stamps each frame whole, tag and
//! CRC, for the segment the next flush is expected to write to
//! (`Shared::expected_seq`), outside every lock and in one CRC pass; the
//! leader restamps only the frames stamped for another segment (those
//! buffered across a rotation: once per segment at most, not per commit).
//!
//! Preallocation: the active segment's file is kept longer than its frames,
//! zeros past the write position ([`TLogConfig::preallocate_bytes`] at a
//! time, written with the batch that needs them), so most flushes overwrite
//! within the file's size and their fdatasync writes data only, with no
//! file-size (metadata journal) commit. A segment is trimmed to its frames
//! when it is sealed and when the log is closed. Truncation keeps one deleted
//! segment as a spare file that the next rotation renames into place instead
//! of creating a file; its stale frames carry another segment tag.
//!
//! Gathering: a new leader that saw several committers waiting during the
//! previous flush waits a moment (at most half the previous flush, at most
//! [`GATHER_WAIT_LIMIT_MICROS`]) for their next frames before it writes, so
//! that two or three alternating committers share fsyncs instead of taking
//! turns. A lone committer never waits.

use std::collections::VecDeque;
use std::mem;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::format::{
    commit_frame_header, decode_frame_header, frame_crc_matches, payload_crc, segment_file_name,
    segment_tag, stamp_frame, SegmentHeader, FRAME_HEADER_BYTES, FRAME_OVERHEAD_BYTES,
    FRAME_TRAILER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::recover::{Recovered, Segment};
use super::scan::{corrupted, ReplaySegment};
use super::{
    segments_to_replay, spare_keep_bytes, CommitTicket, Counters, Durability, TLogConfig,
    SPARE_FILE_NAME,
};
use crate::storage::Storage;
use crate::{CommitEpoch, Result, WalError};

/// Name of the background flusher thread.
const FLUSHER_THREAD_NAME: &str = "mmsb-tlog-flush";

/// Longest a new leader waits for the frames of the other committers.
pub const GATHER_WAIT_LIMIT_MICROS: u64 = 200;

/// State shared by every handle on one open log and its flusher thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: TLogConfig,
    pub(crate) counters: Counters,
    state: Mutex<State>,
    /// Signalled when a flush ends (durable epoch moved, buffer drained, or
    /// the log was poisoned).
    progress: Condvar,
    /// Signalled to stop the flusher thread.
    flusher_wake: Condvar,
    /// Signalled by `append` while a leader gathers frames.
    appended_cv: Condvar,
    /// The segment files; locked by the flush leader, truncation and replay.
    writer: Mutex<Writer>,
    /// Sequence number of the segment the next flush is expected to write
    /// to: `append` stamps frames for it. Only a hint: the flush restamps
    /// every frame stamped for another segment.
    expected_seq: AtomicU64,
}

/// What the state lock guards.
#[derive(Debug)]
struct State {
    /// Encoded frames waiting for the next group flush (segment tag and CRC
    /// not yet stamped).
    buf: Vec<u8>,
    /// Where each frame of `buf` lies, with its payload's CRC.
    slots: Vec<FrameSlot>,
    /// An empty buffer kept for the next swap, so flushes do not reallocate.
    spare: Vec<u8>,
    /// An empty slot list kept for the next swap.
    spare_slots: Vec<FrameSlot>,
    /// Epoch of the first frame in `buf`.
    buf_first: Option<CommitEpoch>,
    /// Frames in `buf`.
    buf_frames: usize,
    /// Highest epoch appended.
    appended: CommitEpoch,
    /// Highest epoch written and fsync'd.
    durable: CommitEpoch,
    /// A leader is gathering or writing a batch.
    flushing: bool,
    /// A leader waits for more frames (appends signal `appended_cv`).
    gathering: bool,
    /// Threads now waiting for a flush to end.
    waiting: usize,
    /// Committers seen at the end of the last flush (its leader and waiters):
    /// how many frames the next leader may wait for.
    committers_hint: usize,
    /// How long the last flush took.
    last_flush: Duration,
    /// A write or fsync failed; only a reopen clears this.
    poisoned: bool,
    /// The flusher thread must exit.
    stop: bool,
}

/// One buffered frame: its byte range in the buffer and the sequence number
/// of the segment its tag and CRC were stamped for.
#[derive(Debug, Clone, Copy)]
struct FrameSlot {
    start: usize,
    len: usize,
    stamped_seq: u64,
}

/// The segment files of the log.
#[derive(Debug)]
struct Writer {
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    next_seq: u64,
    /// Whether a deleted segment waits in the spare file for the next rotation.
    has_spare: bool,
    /// A truncation is turning a segment into the spare file (renamed, not
    /// yet cut): no other segment becomes the spare, and no rotation takes
    /// it, until `has_spare` is set.
    spare_pending: bool,
    /// Highest epoch written to the segments (at open: the log's last
    /// epoch). Frames still buffered lie above it and go to the segment the
    /// next flush writes to.
    written: CommitEpoch,
}

/// Frames a leader took from the buffer.
struct Batch {
    bytes: Vec<u8>,
    slots: Vec<FrameSlot>,
    first: CommitEpoch,
    last: CommitEpoch,
}

impl Shared {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        config: TLogConfig,
        recovered: Recovered,
        has_spare: bool,
        counters: Counters,
    ) -> Self {
        let last = recovered.last_epoch;
        let expected_seq = match recovered.segments.back() {
            Some(active) if active.len < config.segment_target_bytes => active.seq,
            _ => recovered.next_seq,
        };
        Shared {
            storage,
            config,
            counters,
            state: Mutex::new(State {
                buf: Vec::new(),
                slots: Vec::new(),
                spare: Vec::new(),
                spare_slots: Vec::new(),
                buf_first: None,
                buf_frames: 0,
                appended: last,
                durable: last,
                flushing: false,
                gathering: false,
                waiting: 0,
                committers_hint: 1,
                last_flush: Duration::ZERO,
                poisoned: false,
                stop: false,
            }),
            progress: Condvar::new(),
            flusher_wake: Condvar::new(),
            appended_cv: Condvar::new(),
            writer: Mutex::new(Writer {
                segments: recovered.segments,
                next_seq: recovered.next_seq,
                has_spare,
                spare_pending: false,
                written: last,
            }),
            expected_seq: AtomicU64::new(expected_seq),
        }
    }

    pub(crate) fn last_epoch(&self) -> CommitEpoch {
        self.state.lock().appended
    }

    pub(crate) fn durable_epoch(&self) -> CommitEpoch {
        self.state.lock().durable
    }

    /// Whether a leader is gathering or writing a batch.
    #[cfg(test)]
    pub(crate) fn is_flushing(&self) -> bool {
        self.state.lock().flushing
    }

    /// Bytes waiting in the group-commit buffer.
    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.state.lock().buf.len()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.state.lock().poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Frames the payload outside the lock (stamped for the expected
    /// segment), then buffers it in call order.
    pub(crate) fn append(&self, epoch: CommitEpoch, payload: &[u8]) -> Result<CommitTicket> {
        let len = payload.len() as u64;
        if len > self.config.max_frame_bytes {
            return Err(WalError::TooLarge {
                what: "TLog frame payload",
                len,
                limit: self.config.max_frame_bytes,
            });
        }
        // The whole frame is stamped here, outside the lock, by the
        // committing thread; the flush restamps it only if it goes to
        // another segment.
        let stamped_seq = self.expected_seq.load(Ordering::Acquire);
        let header = commit_frame_header(stamped_seq, epoch, payload.len());
        let crc = whole_frame_crc(&header, payload);
        let frame_len = FRAME_OVERHEAD_BYTES + payload.len();
        let mut state = self.state.lock();
        loop {
            if state.poisoned {
                return Err(WalError::Poisoned);
            }
            if epoch <= state.appended {
                return Err(WalError::InvalidArgument(format!(
                    "appended {epoch} does not follow the last appended {}",
                    state.appended
                )));
            }
            if state.buf.is_empty()
                || (state.buf.len() + frame_len) as u64 <= self.config.group_buffer_limit_bytes
            {
                break;
            }
            // Back-pressure: the buffer is full; drain it before adding more.
            let target = state.appended;
            self.sync_through_locked(&mut state, target)?;
        }
        let start = state.buf.len();
        state.buf.reserve(frame_len);
        state.buf.extend_from_slice(&header);
        state.buf.extend_from_slice(payload);
        state.buf.extend_from_slice(&crc.to_le_bytes());
        state.slots.push(FrameSlot {
            start,
            len: frame_len,
            stamped_seq,
        });
        state.buf_first.get_or_insert(epoch);
        state.buf_frames += 1;
        state.appended = epoch;
        if state.gathering {
            self.appended_cv.notify_one();
        }
        self.counters.frame_appended();
        Ok(CommitTicket { epoch })
    }

    /// Returns once every frame up to `target` is durable, leading a group
    /// flush when no other thread is.
    pub(crate) fn sync_through(&self, target: CommitEpoch) -> Result<()> {
        let mut state = self.state.lock();
        self.sync_through_locked(&mut state, target)
    }

    /// Writes and fsyncs everything appended so far.
    pub(crate) fn flush_all(&self) -> Result<()> {
        let mut state = self.state.lock();
        let target = state.appended;
        self.sync_through_locked(&mut state, target)
    }

    fn sync_through_locked(
        &self,
        state: &mut MutexGuard<'_, State>,
        target: CommitEpoch,
    ) -> Result<()> {
        loop {
            if state.poisoned {
                return Err(WalError::Poisoned);
            }
            if state.durable >= target {
                return Ok(());
            }
            if state.flushing {
                state.waiting += 1;
                self.progress.wait(state);
                state.waiting -= 1;
                continue;
            }
            if state.buf_frames == 0 {
                return Err(WalError::InvalidArgument(format!(
                    "{target} was never appended to this TLog"
                )));
            }
            state.flushing = true;
            self.gather(state);
            let mut batch = take_batch(state);
            let started = Instant::now();
            let result = MutexGuard::unlocked(state, || self.write_batch(&mut batch));
            state.last_flush = started.elapsed();
            state.committers_hint = state.waiting + 1;
            state.flushing = false;
            if let Err(err) = result {
                state.poisoned = true;
                self.progress.notify_all();
                tracing::error!(%err, "TLog poisoned by a failed write or fsync");
                return Err(err);
            }
            debug_assert!(batch.last > state.durable);
            state.durable = batch.last;
            recycle(state, batch, self.config.group_buffer_limit_bytes);
            self.progress.notify_all();
        }
    }

    /// Waits briefly for the frames of the committers seen at the last flush.
    fn gather(&self, state: &mut MutexGuard<'_, State>) {
        let want = state.committers_hint;
        if want <= 1 || state.buf_frames >= want {
            return;
        }
        let wait = (state.last_flush / 2).min(Duration::from_micros(GATHER_WAIT_LIMIT_MICROS));
        let deadline = Instant::now() + wait;
        let full_bytes = self.config.group_buffer_limit_bytes / 2;
        state.gathering = true;
        while state.buf_frames < want && (state.buf.len() as u64) < full_bytes {
            if self.appended_cv.wait_until(state, deadline).timed_out() {
                break;
            }
        }
        state.gathering = false;
    }

    /// One write and one fsync of a batch, rotating first when the active
    /// segment is past its target size. Runs without the state lock.
    fn write_batch(&self, batch: &mut Batch) -> Result<()> {
        let mut writer = self.writer.lock();
        let target_bytes = self.config.segment_target_bytes;
        let reuse = writer.segments.back().is_some_and(|s| s.len < target_bytes);
        let mut active = match writer.segments.pop_back() {
            Some(active) if reuse => active,
            previous => {
                if let Some(mut sealed) = previous {
                    let sealing = self.trim(&mut sealed, true);
                    writer.segments.push_back(sealed);
                    sealing?;
                }
                self.next_segment(&mut writer, batch.first)?
            }
        };
        restamp_frames(batch, active.seq);
        let result = self.append_batch(&mut active, &mut batch.bytes);
        // The next flush writes here again unless this one filled the segment.
        let next = if active.len < target_bytes {
            active.seq
        } else {
            writer.next_seq
        };
        self.expected_seq.store(next, Ordering::Release);
        writer.segments.push_back(active);
        result?;
        debug_assert!(batch.last > writer.written);
        writer.written = batch.last;
        Ok(())
    }

    /// Writes `bytes` at the active segment's write position and fsyncs
    /// them. When they reach past the file's size, zeros up to the next
    /// preallocation step follow them in the same flush (one fsync). Over
    /// stale bytes (a recycled file) a frame header's worth of zeros follows
    /// them in the same write, so that the log ends cleanly there.
    fn append_batch(&self, active: &mut Segment, bytes: &mut Vec<u8>) -> Result<()> {
        // The message is built only on failure: this runs once per commit.
        let io_err = |what: &'static str| {
            let path = &active.path;
            move |err| WalError::io(format!("{what} {}", path.display()), err)
        };
        let new_end = active.len + bytes.len() as u64;
        let terminator = if active.stale_past_len {
            active
                .allocated
                .saturating_sub(new_end)
                .min(FRAME_HEADER_BYTES as u64) as usize
        } else {
            0
        };
        let frames_len = bytes.len();
        bytes.resize(frames_len + terminator, 0);
        let written = active.file.write_all_at(bytes, active.len);
        bytes.truncate(frames_len);
        written.map_err(io_err("appending to"))?;
        self.counters.wrote(frames_len);
        self.counters.preallocated(terminator);
        let allocate_to = self.allocation_for(new_end).max(active.allocated);
        if allocate_to > new_end && new_end > active.allocated {
            let zeros = vec![0u8; (allocate_to - new_end) as usize];
            active
                .file
                .write_all_at(&zeros, new_end)
                .map_err(io_err("preallocating"))?;
            self.counters.preallocated(zeros.len());
        }
        self.counters.fsync();
        active.file.sync_data().map_err(io_err("syncing"))?;
        active.len = new_end;
        active.allocated = allocate_to.max(new_end);
        self.counters.group_flush();
        Ok(())
    }

    /// How long the active segment's file should be once it holds `end`
    /// bytes: `preallocate_bytes` more, but no more than the segment target
    /// (the segment is sealed there).
    fn allocation_for(&self, end: u64) -> u64 {
        let step = self.config.preallocate_bytes;
        let cap = self.config.segment_target_bytes.max(end);
        end.saturating_add(step).min(cap)
    }

    /// Trims a segment to its frames. A segment being sealed is trimmed
    /// durably (`sync`), so that only the last segment ever holds bytes past
    /// its frames. The sync happens even when this process has nothing left
    /// to cut: the trim may have been done by the close of an earlier process
    /// and never synced (a crash would bring the bytes past the frames back,
    /// in a segment that is no longer the last). The trim on close is not
    /// synced: should it be lost, the segment is still the last one, and the
    /// zeros it cut are a clean end of the log again.
    fn trim(&self, segment: &mut Segment, sync: bool) -> Result<()> {
        debug_assert!(segment.allocated >= segment.len);
        if segment.allocated == segment.len && !sync {
            return Ok(());
        }
        let io_err = |err| WalError::io(format!("trimming {}", segment.path.display()), err);
        if segment.allocated != segment.len {
            segment.file.set_len(segment.len).map_err(io_err)?;
        }
        if sync {
            self.counters.fsync();
            segment.file.sync_data().map_err(io_err)?;
        }
        segment.allocated = segment.len;
        segment.stale_past_len = false;
        Ok(())
    }

    /// The next segment, whose first frame has `first_epoch`: the spare file
    /// renamed into place when truncation left one, else a new file.
    fn next_segment(&self, writer: &mut Writer, first_epoch: CommitEpoch) -> Result<Segment> {
        if writer.has_spare {
            writer.has_spare = false;
            return self.recycle_spare(writer, first_epoch);
        }
        self.create_segment(writer, first_epoch)
    }

    /// Turns the spare file into the next segment: write and sync the new
    /// header while it still has the spare's name, rename it, sync the
    /// directory. A crash at any step leaves either the spare (ignored by
    /// recovery) or a last segment whose only frames are stale (removed by
    /// recovery as empty).
    fn recycle_spare(&self, writer: &mut Writer, first_epoch: CommitEpoch) -> Result<Segment> {
        let seq = writer.next_seq;
        let dir = &self.config.dir;
        let spare = dir.join(SPARE_FILE_NAME);
        let path = dir.join(segment_file_name(seq));
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| corrupted(&path, 12, "segment sequence number overflows"))?;
        let io_err = |what: &str| {
            let context = format!("{what} {}", spare.display());
            move |err| WalError::io(context, err)
        };
        let file = self
            .storage
            .open_file(&spare, false)
            .map_err(io_err("opening"))?;
        let allocated = file.len().map_err(io_err("sizing"))?;
        let header = SegmentHeader { seq, first_epoch }.encode();
        // The header and zeros over the stale first frame's header: the
        // segment ends cleanly right after its header until a frame is written.
        let mut head = header.to_vec();
        head.resize(SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES, 0);
        file.write_all_at(&head, 0)
            .map_err(io_err("writing the header of"))?;
        self.counters.wrote(header.len());
        self.counters.fsync();
        file.sync_data().map_err(io_err("syncing"))?;
        self.storage
            .rename(&spare, &path)
            .map_err(io_err("renaming"))?;
        self.counters.fsync();
        self.storage
            .sync_dir(dir)
            .map_err(io_err("syncing the directory of"))?;
        writer.next_seq = next_seq;
        self.counters.segment_recycled();
        Ok(Segment {
            seq,
            path,
            file,
            len: header.len() as u64,
            allocated: allocated.max(head.len() as u64),
            stale_past_len: true,
            first_epoch,
        })
    }

    /// Creates the next segment, whose first frame has `first_epoch`: create
    /// the file, write and sync its header, then sync the directory.
    fn create_segment(&self, writer: &mut Writer, first_epoch: CommitEpoch) -> Result<Segment> {
        let seq = writer.next_seq;
        debug_assert!(writer.segments.back().is_none_or(|s| s.seq + 1 == seq));
        let dir = &self.config.dir;
        let path = dir.join(segment_file_name(seq));
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| corrupted(&path, 12, "segment sequence number overflows"))?;
        let io_err = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |err| WalError::io(context, err)
        };
        let file = self
            .storage
            .open_file(&path, true)
            .map_err(io_err("creating"))?;
        if file.len().map_err(io_err("sizing"))? != 0 {
            return Err(corrupted(&path, 0, "a new segment's file already exists"));
        }
        let header = SegmentHeader { seq, first_epoch }.encode();
        file.write_all_at(&header, 0)
            .map_err(io_err("writing the header of"))?;
        self.counters.wrote(header.len());
        self.counters.fsync();
        file.sync_data().map_err(io_err("syncing"))?;
        self.counters.fsync();
        self.storage
            .sync_dir(dir)
            .map_err(io_err("syncing the directory of"))?;
        writer.next_seq = next_seq;
        self.counters.segment_created();
        Ok(Segment {
            seq,
            path,
            file,
            len: header.len() as u64,
            allocated: header.len() as u64,
            stale_past_len: false,
            first_epoch,
        })
    }

    /// Trims the active segment's preallocated space (on close), unless the
    /// log is poisoned (then nothing is written).
    pub(crate) fn trim_active(&self) -> Result<()> {
        self.check_poison()?;
        let mut writer = self.writer.lock();
        match writer.segments.back_mut() {
            Some(active) => self.trim(active, false),
            None => Ok(()),
        }
    }

    /// Deletes the oldest segments whose frames all lie at or below `epoch`
    /// (known from the next segment's first epoch, since epochs increase),
    /// syncing the directory after each removal so the remaining segments
    /// always form a run without gaps. The active segment goes too when
    /// every frame written to it lies at or below `epoch` and it holds at
    /// least `retire_covered_min_bytes` (see [`Shared::retire_active`]).
    /// The first segment removed becomes the spare file when there is none
    /// (cut to [`spare_keep_bytes`]).
    pub(crate) fn truncate_through(&self, epoch: CommitEpoch) -> Result<()> {
        self.check_poison()?;
        let (mut doomed, retired) = {
            let mut writer = self.writer.lock();
            let doomed = pop_covered(&mut writer.segments, epoch);
            (doomed, self.retire_active(&mut writer, epoch))
        };
        match retired {
            Ok(active) => doomed.extend(active),
            Err(err) => {
                // A failed sync, as anywhere: nothing since the last good
                // one is trusted (poisoned outside the writer lock, which is
                // never held with the state lock).
                self.poison();
                return Err(err);
            }
        }
        for segment in doomed {
            if self.keep_as_spare(&segment)? {
                continue;
            }
            self.delete_segment(&segment.path)?;
        }
        Ok(())
    }

    /// Takes the active segment out of the log when a truncation through
    /// `epoch` covers every frame written to it (frames still buffered lie
    /// above `epoch` and go to the segment the next flush makes) and it
    /// holds at least `retire_covered_min_bytes`: it is sealed first
    /// (trimmed to its frames and synced, as a rotation does), so that
    /// should its deletion fail it is an ordinary covered sealed segment.
    fn retire_active(&self, writer: &mut Writer, epoch: CommitEpoch) -> Result<Option<Segment>> {
        let retire = writer.written <= epoch
            && writer
                .segments
                .back()
                .is_some_and(|active| active.len >= self.config.retire_covered_min_bytes);
        if !retire {
            return Ok(None);
        }
        let Some(mut active) = writer.segments.pop_back() else {
            return Ok(None);
        };
        debug_assert!(
            writer.segments.is_empty(),
            "older segments were covered too"
        );
        if let Err(err) = self.trim(&mut active, true) {
            writer.segments.push_back(active);
            return Err(err);
        }
        self.expected_seq.store(writer.next_seq, Ordering::Release);
        Ok(Some(active))
    }

    /// Renames a truncated segment to the spare file when there is none yet
    /// (and preallocation is on), syncs the directory, then cuts the spare
    /// to [`spare_keep_bytes`] (not synced: recovery ignores the spare's
    /// bytes and length, and the cut follows the durable rename, so no
    /// segment is ever cut). Only then may a rotation take the spare.
    /// `false` when the segment is to be deleted.
    fn keep_as_spare(&self, segment: &Segment) -> Result<bool> {
        let dir = &self.config.dir;
        let path = &segment.path;
        {
            let mut writer = self.writer.lock();
            if writer.has_spare || writer.spare_pending || self.config.preallocate_bytes == 0 {
                return Ok(false);
            }
            let spare = dir.join(SPARE_FILE_NAME);
            let io_err = |err| WalError::io(format!("recycling {}", path.display()), err);
            self.storage.rename(path, &spare).map_err(io_err)?;
            writer.spare_pending = true;
        }
        self.counters.fsync();
        if let Err(err) = self.storage.sync_dir(dir) {
            self.poison();
            let context = format!("syncing the directory after recycling {}", path.display());
            return Err(WalError::io(context, err));
        }
        self.counters.segment_deleted();
        let keep = spare_keep_bytes(&self.config);
        if segment.allocated > keep {
            if let Err(err) = segment.file.set_len(keep) {
                // Only disk space is at stake: the spare's bytes are ignored.
                tracing::warn!(%err, "cutting the TLog spare file failed");
            }
        }
        let mut writer = self.writer.lock();
        writer.spare_pending = false;
        writer.has_spare = true;
        Ok(true)
    }

    fn delete_segment(&self, path: &Path) -> Result<()> {
        let io_err = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |err| WalError::io(context, err)
        };
        self.storage.remove_file(path).map_err(io_err("deleting"))?;
        self.counters.fsync();
        if let Err(err) = self.storage.sync_dir(&self.config.dir) {
            self.poison();
            return Err(io_err("syncing the directory after deleting")(err));
        }
        self.counters.segment_deleted();
        Ok(())
    }

    fn poison(&self) {
        self.state.lock().poisoned = true;
        self.progress.notify_all();
    }

    /// Snapshot of the segments a replay after `after` must read.
    pub(crate) fn replay_segments(&self, after: CommitEpoch) -> VecDeque<ReplaySegment> {
        let writer = self.writer.lock();
        segments_to_replay(writer.segments.iter(), after)
    }

    /// Asks the flusher thread to exit.
    pub(crate) fn stop_flusher(&self) {
        self.state.lock().stop = true;
        self.flusher_wake.notify_all();
    }

    /// Body of the flusher thread: flush every `interval` until told to stop.
    fn run_flusher(&self, interval: Duration) {
        let mut state = self.state.lock();
        loop {
            if state.stop {
                return;
            }
            self.flusher_wake.wait_for(&mut state, interval);
            if state.stop {
                return;
            }
            if state.poisoned || state.durable >= state.appended {
                continue;
            }
            let target = state.appended;
            if let Err(err) = self.sync_through_locked(&mut state, target) {
                tracing::warn!(%err, "background TLog flush failed");
            }
        }
    }
}

/// The CRC32 of `header ++ payload`, the frame's trailer, in one pass (for
/// a small frame far cheaper than combining the payload's CRC with the
/// header's, which costs a few thousand instructions whatever the length).
fn whole_frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Restamps, for the segment `seq`, every frame of `batch` stamped for
/// another one (buffered while the expected segment changed).
fn restamp_frames(batch: &mut Batch, seq: u64) {
    for slot in batch.slots.iter().filter(|slot| slot.stamped_seq != seq) {
        let frame = &mut batch.bytes[slot.start..slot.start + slot.len];
        let payload = &frame[FRAME_HEADER_BYTES..frame.len() - FRAME_TRAILER_BYTES];
        let crc = payload_crc(payload);
        stamp_frame(frame, seq, crc);
    }
    debug_assert!(batch.slots.iter().all(|slot| {
        let frame = &batch.bytes[slot.start..slot.start + slot.len];
        frame_crc_matches(frame)
            && decode_frame_header(frame).is_ok_and(|h| h.segment_tag == segment_tag(seq))
    }));
}

/// Takes the buffered frames (at least one) as a batch.
fn take_batch(state: &mut State) -> Batch {
    debug_assert!(state.buf_frames > 0 && !state.buf.is_empty());
    debug_assert_eq!(state.buf_frames, state.slots.len());
    let spare = mem::take(&mut state.spare);
    let spare_slots = mem::take(&mut state.spare_slots);
    state.buf_frames = 0;
    Batch {
        bytes: mem::replace(&mut state.buf, spare),
        slots: mem::replace(&mut state.slots, spare_slots),
        first: state.buf_first.take().unwrap_or(state.appended),
        last: state.appended,
    }
}

/// Takes the oldest segments whose frames all lie at or below `epoch`
/// (known from the next segment's first epoch, since epochs increase); never
/// the last one.
fn pop_covered(segments: &mut VecDeque<Segment>, epoch: CommitEpoch) -> Vec<Segment> {
    let mut covered = Vec::new();
    while segments
        .get(1)
        .is_some_and(|next| next.first_epoch.get() - 1 <= epoch.get())
    {
        covered.extend(segments.pop_front());
    }
    covered
}

/// Keeps a flushed batch's allocations for the next swap, unless they grew huge.
fn recycle(state: &mut State, batch: Batch, limit_bytes: u64) {
    let Batch {
        mut bytes,
        mut slots,
        ..
    } = batch;
    bytes.clear();
    slots.clear();
    if bytes.capacity() as u64 <= limit_bytes.saturating_mul(2) {
        state.spare = bytes;
        state.spare_slots = slots;
    }
}

/// Starts the flusher thread when the log is in [`Durability::Eventual`] mode.
pub(crate) fn start_flusher(shared: &Arc<Shared>) -> Result<Option<JoinHandle<()>>> {
    let Durability::Eventual { flush_interval_ms } = shared.config.durability else {
        return Ok(None);
    };
    let interval = Duration::from_millis(flush_interval_ms);
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(FLUSHER_THREAD_NAME.to_string())
        .spawn(move || shared.run_flusher(interval))
        .map(Some)
        .map_err(|err| WalError::io("starting the TLog flusher thread", err))
}

#[cfg(test)]
mod tests {
    use super::super::format::encode_commit_frame;
    use super::*;
    use proptest::prelude::*;

    /// A batch of frames, each stamped as `append` stamps it, for the
    /// segment given beside its payload.
    fn batch_of(frames: &[(u64, Vec<u8>)]) -> Batch {
        let mut bytes = Vec::new();
        let mut slots = Vec::new();
        for (i, (seq, payload)) in frames.iter().enumerate() {
            let epoch = CommitEpoch(i as u64 + 1);
            let header = commit_frame_header(*seq, epoch, payload.len());
            let start = bytes.len();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(payload);
            bytes.extend_from_slice(&whole_frame_crc(&header, payload).to_le_bytes());
            slots.push(FrameSlot {
                start,
                len: bytes.len() - start,
                stamped_seq: *seq,
            });
        }
        Batch {
            bytes,
            slots,
            first: CommitEpoch(1),
            last: CommitEpoch(frames.len().max(1) as u64),
        }
    }

    #[test]
    fn a_frame_stamped_at_append_equals_the_encoded_frame() {
        let payload = b"one small commit record".to_vec();
        let batch = batch_of(&[(7, payload.clone())]);
        let mut expected = Vec::new();
        encode_commit_frame(&mut expected, 7, CommitEpoch(1), &payload);
        assert_eq!(batch.bytes, expected);
    }

    #[test]
    fn frames_stamped_for_another_segment_are_restamped_and_others_kept() {
        let mut batch = batch_of(&[(3, vec![1; 40]), (4, vec![2; 10]), (3, vec![])]);
        let kept = batch.bytes[batch.slots[1].start..][..batch.slots[1].len].to_vec();
        restamp_frames(&mut batch, 4);
        let mut expected = Vec::new();
        for (i, payload) in [vec![1; 40], vec![2; 10], vec![]].iter().enumerate() {
            encode_commit_frame(&mut expected, 4, CommitEpoch(i as u64 + 1), payload);
        }
        assert_eq!(batch.bytes, expected);
        assert_eq!(
            &batch.bytes[batch.slots[1].start..][..batch.slots[1].len],
            &kept[..]
        );
    }

    proptest! {
        /// Model: whatever segment each frame was stamped for at append,
        /// after the flush's restamp every frame is byte for byte the frame
        /// `encode_commit_frame` makes for the segment written to.
        #[test]
        fn restamped_batches_match_encoded_frames(
            frames in prop::collection::vec(
                (0u64..3, prop::collection::vec(any::<u8>(), 0..300)),
                1..12,
            ),
            target in 0u64..3,
        ) {
            // Sequence numbers past the 24-bit tag wrap, too.
            let frames: Vec<(u64, Vec<u8>)> = frames
                .into_iter()
                .map(|(seq, payload)| (seq << 23, payload))
                .collect();
            let mut batch = batch_of(&frames);
            restamp_frames(&mut batch, target << 23);
            let mut expected = Vec::new();
            for (i, (_, payload)) in frames.iter().enumerate() {
                encode_commit_frame(&mut expected, target << 23, CommitEpoch(i as u64 + 1), payload);
            }
            prop_assert_eq!(batch.bytes, expected);
        }
    }
}
