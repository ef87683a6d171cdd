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
//! Gathering: a new leader that saw several committers waiting during the
//! previous flush waits a moment (at most half the previous flush, at most
//! [`GATHER_WAIT_LIMIT_MICROS`]) for their next frames before it writes, so
//! that two or three alternating committers share fsyncs instead of taking
//! turns. A lone committer never waits.

use std::collections::VecDeque;
use std::mem;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::format::{commit_frame_parts, segment_file_name, SegmentHeader, FRAME_OVERHEAD_BYTES};
use super::recover::{Recovered, Segment};
use super::scan::{corrupted, ReplaySegment};
use super::{segments_to_replay, CommitTicket, Counters, Durability, TLogConfig};
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
}

/// What the state lock guards.
#[derive(Debug)]
struct State {
    /// Encoded frames waiting for the next group flush.
    buf: Vec<u8>,
    /// An empty buffer kept for the next swap, so flushes do not reallocate.
    spare: Vec<u8>,
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

/// The segment files of the log.
#[derive(Debug)]
struct Writer {
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    next_seq: u64,
}

/// Frames a leader took from the buffer.
struct Batch {
    bytes: Vec<u8>,
    first: CommitEpoch,
    last: CommitEpoch,
}

impl Shared {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        config: TLogConfig,
        recovered: Recovered,
        counters: Counters,
    ) -> Self {
        let last = recovered.last_epoch;
        Shared {
            storage,
            config,
            counters,
            state: Mutex::new(State {
                buf: Vec::new(),
                spare: Vec::new(),
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
            }),
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

    /// Frames the payload outside the lock, then buffers it in call order.
    pub(crate) fn append(&self, epoch: CommitEpoch, payload: &[u8]) -> Result<CommitTicket> {
        let len = payload.len() as u64;
        if len > self.config.max_frame_bytes {
            return Err(WalError::TooLarge {
                what: "TLog frame payload",
                len,
                limit: self.config.max_frame_bytes,
            });
        }
        let (header, crc) = commit_frame_parts(epoch, payload);
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
        state.buf.reserve(frame_len);
        state.buf.extend_from_slice(&header);
        state.buf.extend_from_slice(payload);
        state.buf.extend_from_slice(&crc.to_le_bytes());
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
            let batch = take_batch(state);
            let started = Instant::now();
            let result = MutexGuard::unlocked(state, || self.write_batch(&batch));
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
            recycle(state, batch.bytes, self.config.group_buffer_limit_bytes);
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
    fn write_batch(&self, batch: &Batch) -> Result<()> {
        let mut writer = self.writer.lock();
        let target_bytes = self.config.segment_target_bytes;
        let reuse = writer.segments.back().is_some_and(|s| s.len < target_bytes);
        let mut active = match writer.segments.pop_back() {
            Some(active) if reuse => active,
            previous => {
                writer.segments.extend(previous);
                self.create_segment(&mut writer, batch.first)?
            }
        };
        let result = self.append_batch(&mut active, batch);
        writer.segments.push_back(active);
        result
    }

    fn append_batch(&self, active: &mut Segment, batch: &Batch) -> Result<()> {
        let io_err = |what: &str| {
            let context = format!("{what} {}", active.path.display());
            move |err| WalError::io(context, err)
        };
        active
            .file
            .write_all_at(&batch.bytes, active.len)
            .map_err(io_err("appending to"))?;
        self.counters.wrote(batch.bytes.len());
        self.counters.fsync();
        active.file.sync_data().map_err(io_err("syncing"))?;
        active.len += batch.bytes.len() as u64;
        self.counters.group_flush();
        Ok(())
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
            first_epoch,
        })
    }

    /// Deletes the oldest segments whose frames all lie at or below `epoch`
    /// (known from the next segment's first epoch, since epochs increase),
    /// never the active one, syncing the directory after each removal so the
    /// remaining segments always form a run without gaps.
    pub(crate) fn truncate_through(&self, epoch: CommitEpoch) -> Result<()> {
        self.check_poison()?;
        let doomed = {
            let mut writer = self.writer.lock();
            let mut doomed = Vec::new();
            while writer
                .segments
                .get(1)
                .is_some_and(|next| next.first_epoch.get() - 1 <= epoch.get())
            {
                doomed.extend(writer.segments.pop_front());
            }
            doomed
        };
        for segment in doomed {
            self.delete_segment(&segment.path)?;
        }
        Ok(())
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

/// Takes the buffered frames (at least one) as a batch.
fn take_batch(state: &mut State) -> Batch {
    debug_assert!(state.buf_frames > 0 && !state.buf.is_empty());
    let spare = mem::take(&mut state.spare);
    state.buf_frames = 0;
    Batch {
        bytes: mem::replace(&mut state.buf, spare),
        first: state.buf_first.take().unwrap_or(state.appended),
        last: state.appended,
    }
}

/// Keeps a flushed batch's allocation for the next swap, unless it grew huge.
fn recycle(state: &mut State, mut bytes: Vec<u8>, limit_bytes: u64) {
    bytes.clear();
    if bytes.capacity() as u64 <= limit_bytes.saturating_mul(2) {
        state.spare = bytes;
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
