//! The TLog: mmsb's write-ahead log of commits.
//!
//! The engine hands the TLog one opaque payload per commit (an encoded commit
//! record) with the commit's [`CommitEpoch`]; the TLog frames it (length, type,
//! epoch, CRC32), group-commits it (one write and one fsync for every frame
//! buffered while the previous flush ran), and replays the frames after a
//! crash. It never looks inside a payload.
//!
//! Files: the log is a run of segment files `tlog-<seq:020>.seg` in one
//! directory, each opened by a header; `docs/format-tlog.md` gives the bytes.
//! The active segment is preallocated with zeros ahead of its write position
//! so that a commit's fdatasync flushes data, not a file-size change; a
//! truncated segment is kept as a spare file, cut to the preallocation step,
//! and renamed into place by the next rotation.
//! Every access goes through [`Storage`], so tests inject faults and crashes.
//!
//! Submodules: [`format`](mod@format) (bytes), `scan` (reading back), `recover` (open-time
//! validation), `commit` (group commit, segment rotation, the flusher thread).

mod commit;
pub mod format;
mod recover;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use commit::Shared;
pub use commit::GATHER_WAIT_LIMIT_MICROS;
use parking_lot::Mutex;
pub use scan::{Replay, READ_CHUNK_BYTES};

use crate::storage::{Storage, StorageFile};
use crate::{CommitEpoch, Result, WalError};

/// Default size past which the active segment is closed and a new one begun.
pub const DEFAULT_SEGMENT_TARGET_BYTES: u64 = 64 << 20;

/// Default largest payload one frame may carry.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 64 << 20;

/// Default bound on frames buffered for the next group flush; an append that
/// would pass it waits for (or performs) a flush first. A single frame larger
/// than the bound is still accepted into an empty buffer.
pub const DEFAULT_GROUP_BUFFER_LIMIT_BYTES: u64 = 8 << 20;

/// Default bytes of zeros written ahead of the active segment's write
/// position whenever a flush reaches past the file's size.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 1 << 20;

/// Default [`TLogConfig::retire_covered_min_bytes`].
pub const DEFAULT_RETIRE_COVERED_MIN_BYTES: u64 = 1 << 20;

/// Frames whose end position [`TLog::bytes_after`] remembers exactly (the
/// most recent ones); older frames are remembered about every
/// [`POSITION_STEP_BYTES`].
pub const EXACT_POSITION_FRAMES: usize = 64;

/// Spacing of the positions [`TLog::bytes_after`] remembers for frames older
/// than the last [`EXACT_POSITION_FRAMES`]: its answer about such an epoch is
/// at most this many bytes too high.
pub const POSITION_STEP_BYTES: u64 = 1 << 20;

/// Name of the lock file that keeps a second process out of the directory.
pub const LOCK_FILE_NAME: &str = "tlog.lock";

/// Name of the spare file: a truncated segment kept for the next rotation
/// (not a segment name, so recovery and `mmsb check` ignore it).
pub const SPARE_FILE_NAME: &str = "tlog.spare";

/// When a commit counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `wait_durable` returns once the commit's frame is fsync'd (the default).
    #[default]
    Immediate,
    /// A background thread flushes every `flush_interval_ms`; a crash may lose
    /// the commits of the last interval, never corrupt the log.
    Eventual {
        /// Milliseconds between background flushes (at least 1).
        flush_interval_ms: u64,
    },
}

/// How much of the log [`TLog::open`] checks before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenValidation {
    /// Every header and every frame of every segment, CRCs included: damage
    /// anywhere makes `open` itself fail with `Corrupted` (the default).
    /// Recovery then reads the log twice (once here, once in `replay`).
    #[default]
    AllFrames,
    /// Every segment header, and every frame of the last segment (where a
    /// torn tail can be); the frames of earlier, sealed segments are checked
    /// by `replay` as it reads them (CRC, epoch order, first epoch, no
    /// trailing bytes), so damage there surfaces as `Corrupted` from the
    /// replay. Recovery then reads the log once.
    LastSegment,
}

/// How to open a TLog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TLogConfig {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// Size past which the active segment is closed and a new one begun.
    pub segment_target_bytes: u64,
    /// Largest payload one frame may carry; larger ones get `TooLarge`.
    /// At most [`format::FRAME_PAYLOAD_LIMIT_BYTES`].
    pub max_frame_bytes: u64,
    /// When a commit counts as durable.
    pub durability: Durability,
    /// Bound on bytes buffered for the next group flush (back-pressure).
    pub group_buffer_limit_bytes: u64,
    /// How much `open` checks before it returns.
    pub open_validation: OpenValidation,
    /// Zeros written ahead of the active segment's write position (capped
    /// at `segment_target_bytes`) each time a flush reaches past the file's
    /// size, so that most flushes overwrite and their fdatasync commits no
    /// file-size change. 0 turns preallocation and segment recycling off.
    pub preallocate_bytes: u64,
    /// When a truncation covers every frame written to the active segment
    /// and that segment holds at least this many bytes, the truncation
    /// removes it too (the next flush starts a new segment) instead of
    /// keeping frames no recovery needs on disk. `u64::MAX` keeps the
    /// active segment.
    pub retire_covered_min_bytes: u64,
}

impl TLogConfig {
    /// The defaults, with the log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TLogConfig {
            dir: dir.into(),
            segment_target_bytes: DEFAULT_SEGMENT_TARGET_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            durability: Durability::Immediate,
            group_buffer_limit_bytes: DEFAULT_GROUP_BUFFER_LIMIT_BYTES,
            open_validation: OpenValidation::AllFrames,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            retire_covered_min_bytes: DEFAULT_RETIRE_COVERED_MIN_BYTES,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_frame_bytes > format::FRAME_PAYLOAD_LIMIT_BYTES {
            return Err(WalError::TooLarge {
                what: "configured max_frame_bytes",
                len: self.max_frame_bytes,
                limit: format::FRAME_PAYLOAD_LIMIT_BYTES,
            });
        }
        if self.segment_target_bytes == 0 || self.group_buffer_limit_bytes == 0 {
            return Err(WalError::InvalidArgument(
                "segment_target_bytes and group_buffer_limit_bytes must be above 0".to_string(),
            ));
        }
        if self.durability
            == (Durability::Eventual {
                flush_interval_ms: 0,
            })
        {
            return Err(WalError::InvalidArgument(
                "flush_interval_ms must be at least 1".to_string(),
            ));
        }
        Ok(())
    }
}

/// Proof that a frame was appended; pass it to [`TLog::wait_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket {
    epoch: CommitEpoch,
}

impl CommitTicket {
    /// The epoch of the appended frame.
    pub fn epoch(&self) -> CommitEpoch {
        self.epoch
    }
}

/// Counters since the log was opened, each read atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TLogStats {
    /// Frames accepted by `append`.
    pub frames_appended: u64,
    /// Bytes of segment headers and frames handed to the storage (the zeros
    /// of preallocation are counted in `preallocated_bytes` instead).
    pub bytes_written: u64,
    /// File and directory syncs issued (including open-time and rotation syncs).
    pub fsyncs: u64,
    /// Group flushes: one write and one fsync of every buffered frame.
    pub group_flushes: u64,
    /// Bytes of torn tail (and torn or empty last segments) removed at open.
    pub torn_tail_bytes_cut: u64,
    /// Segments created by rotation.
    pub segments_created: u64,
    /// Segments deleted by `truncate_through` (including one kept as the spare).
    pub segments_deleted: u64,
    /// Segments made from the spare file instead of a new file.
    pub segments_recycled: u64,
    /// Bytes of zeros written ahead of the write position (and over stale
    /// bytes of a recycled file).
    pub preallocated_bytes: u64,
}

/// The counters behind [`TLogStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    frames_appended: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
    group_flushes: AtomicU64,
    torn_tail_bytes_cut: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    segments_recycled: AtomicU64,
    preallocated_bytes: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
    pub(crate) fn frame_appended(&self) {
        Self::bump(&self.frames_appended, 1);
    }
    pub(crate) fn wrote(&self, bytes: usize) {
        Self::bump(&self.bytes_written, bytes as u64);
    }
    pub(crate) fn fsync(&self) {
        Self::bump(&self.fsyncs, 1);
    }
    pub(crate) fn group_flush(&self) {
        Self::bump(&self.group_flushes, 1);
    }
    pub(crate) fn add_torn_bytes(&self, bytes: u64) {
        Self::bump(&self.torn_tail_bytes_cut, bytes);
    }
    pub(crate) fn segment_created(&self) {
        Self::bump(&self.segments_created, 1);
    }
    pub(crate) fn segment_deleted(&self) {
        Self::bump(&self.segments_deleted, 1);
    }
    pub(crate) fn segment_recycled(&self) {
        Self::bump(&self.segments_recycled, 1);
    }
    pub(crate) fn preallocated(&self, bytes: usize) {
        Self::bump(&self.preallocated_bytes, bytes as u64);
    }

    fn snapshot(&self) -> TLogStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TLogStats {
            frames_appended: read(&self.frames_appended),
            bytes_written: read(&self.bytes_written),
            fsyncs: read(&self.fsyncs),
            group_flushes: read(&self.group_flushes),
            torn_tail_bytes_cut: read(&self.torn_tail_bytes_cut),
            segments_created: read(&self.segments_created),
            segments_deleted: read(&self.segments_deleted),
            segments_recycled: read(&self.segments_recycled),
            preallocated_bytes: read(&self.preallocated_bytes),
        }
    }
}

/// The write-ahead log. `Send + Sync`: committing threads share it by `&self`.
#[derive(Debug)]
pub struct TLog {
    shared: Arc<Shared>,
    /// Where each epoch's frames end in the appended bytes (for `bytes_after`).
    positions: Mutex<PositionIndex>,
    /// The background flusher of [`Durability::Eventual`]; joined on drop.
    flusher: Option<JoinHandle<()>>,
    /// Held open so the directory lock lasts as long as the log.
    _lock: Arc<dyn StorageFile>,
}

impl TLog {
    /// Opens or creates the log in `config.dir`: validates the segments (every
    /// frame of every segment by default; see [`OpenValidation`]), cuts a torn
    /// tail, and returns `Corrupted` for damage before the tail.
    pub fn open(storage: Arc<dyn Storage>, config: TLogConfig) -> Result<TLog> {
        config.validate()?;
        let dir = &config.dir;
        storage
            .create_dir_all(dir)
            .map_err(|err| WalError::io(format!("creating {}", dir.display()), err))?;
        let lock = lock_dir(&*storage, &config)?;
        let counters = Counters::default();
        let recovered = recover::recover(&*storage, dir, config.open_validation, &counters)?;
        let spare = dir.join(SPARE_FILE_NAME);
        let has_spare = storage
            .exists(&spare)
            .map_err(|err| WalError::io(format!("looking for {}", spare.display()), err))?;
        if has_spare {
            cut_spare(&*storage, &config, &spare);
        }
        let shared = Arc::new(Shared::new(storage, config, recovered, has_spare, counters));
        let flusher = commit::start_flusher(&shared)?;
        let positions = Mutex::new(PositionIndex::new(shared.last_epoch()));
        Ok(TLog {
            shared,
            positions,
            flusher,
            _lock: lock,
        })
    }

    /// Streams the frames with an epoch above `after`, in log order, reading
    /// in chunks of [`READ_CHUNK_BYTES`]; every frame read is checked again
    /// (CRC, epoch order). Segments whose frames all lie at or below `after`
    /// are not read. Frames appended but not yet written by a group flush are
    /// not included.
    pub fn replay(&self, after: CommitEpoch) -> Result<Replay> {
        Ok(Replay::new(self.shared.replay_segments(after), after))
    }

    /// Buffers one commit frame for the next group flush. `epoch` must be
    /// above every epoch appended before (`InvalidArgument` otherwise); a
    /// payload above `max_frame_bytes` is `TooLarge`.
    pub fn append(&self, epoch: CommitEpoch, payload: &[u8]) -> Result<CommitTicket> {
        let ticket = self.shared.append(epoch, payload)?;
        let frame_bytes = (format::FRAME_OVERHEAD_BYTES + payload.len()) as u64;
        self.positions.lock().record(epoch, frame_bytes);
        Ok(ticket)
    }

    /// Blocks until the ticket's frame is durable ([`Durability::Immediate`]);
    /// returns at once in [`Durability::Eventual`] mode. A poisoned log
    /// answers `Poisoned`.
    pub fn wait_durable(&self, ticket: CommitTicket) -> Result<()> {
        match self.shared.config.durability {
            Durability::Immediate => self.shared.sync_through(ticket.epoch),
            Durability::Eventual { .. } => self.shared.check_poison(),
        }
    }

    /// Writes and fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        self.shared.flush_all()
    }

    /// Deletes the oldest segments whose frames all have an epoch at or below
    /// `epoch`, the active one included when every frame written to it is
    /// and it holds at least [`TLogConfig::retire_covered_min_bytes`] (the
    /// next flush then starts a new segment). The first segment deleted
    /// becomes the spare file when there is none, cut to the preallocation
    /// step. Call it once the page store holds everything up to `epoch`
    /// durably.
    pub fn truncate_through(&self, epoch: CommitEpoch) -> Result<()> {
        self.shared.truncate_through(epoch)?;
        self.positions.lock().forget_through(epoch);
        Ok(())
    }

    /// Bytes of the frames appended since open whose epoch is above `epoch`
    /// (headers and trailers included; the frames a checkpoint through
    /// `epoch` leaves to the log), whether flushed yet or not. Never below
    /// the true figure; above it only when `epoch` is older than the last
    /// [`EXACT_POSITION_FRAMES`] frames (by less than [`POSITION_STEP_BYTES`]),
    /// when `epoch` is older than the last `truncate_through` (then every
    /// byte appended counts), or by the frames of appends still returning.
    pub fn bytes_after(&self, epoch: CommitEpoch) -> u64 {
        self.positions.lock().bytes_after(epoch)
    }

    /// The highest epoch appended (after open: of the last valid frame; 0 if
    /// the log is empty).
    pub fn last_epoch(&self) -> CommitEpoch {
        self.shared.last_epoch()
    }

    /// The highest epoch known durable.
    pub fn durable_epoch(&self) -> CommitEpoch {
        self.shared.durable_epoch()
    }

    /// Counters since open.
    pub fn stats(&self) -> TLogStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for TLog {
    /// Stops the flusher thread, then flushes best-effort and trims the
    /// active segment's preallocated space.
    fn drop(&mut self) {
        self.shared.stop_flusher();
        if let Some(handle) = self.flusher.take() {
            if handle.join().is_err() {
                tracing::error!("the TLog flusher thread panicked");
            }
        }
        match self
            .shared
            .flush_all()
            .and_then(|()| self.shared.trim_active())
        {
            Ok(()) | Err(WalError::Poisoned) => {}
            Err(err) => tracing::warn!(%err, "flushing the TLog on close failed"),
        }
    }
}

/// Where the frames of each epoch end in the byte stream appended since
/// open: exactly for the last [`EXACT_POSITION_FRAMES`] frames, about every
/// [`POSITION_STEP_BYTES`] before them (so it stays small between two
/// truncations, however many commits they hold).
///
/// Invariant: every mark's bytes are at most the bytes of the frames with an
/// epoch at or below its epoch (a mark is set only by the highest epoch
/// recorded so far, so every frame it counts is at or below it), which makes
/// [`PositionIndex::bytes_after`] an upper bound even when two appends
/// record out of epoch order.
#[derive(Debug)]
struct PositionIndex {
    /// Frame bytes appended since open.
    appended_bytes: u64,
    /// Highest epoch recorded (at open: the log's last epoch).
    last_epoch: CommitEpoch,
    /// Older marks `(epoch, appended bytes through it)`, epochs increasing,
    /// at least [`POSITION_STEP_BYTES`] apart; the first is the base.
    coarse: VecDeque<(CommitEpoch, u64)>,
    /// The marks of the last [`EXACT_POSITION_FRAMES`] frames, oldest first.
    recent: VecDeque<(CommitEpoch, u64)>,
}

impl PositionIndex {
    /// An index whose base is the log's last epoch at open (no bytes).
    fn new(last_epoch: CommitEpoch) -> Self {
        PositionIndex {
            appended_bytes: 0,
            last_epoch,
            coarse: VecDeque::from([(last_epoch, 0)]),
            recent: VecDeque::with_capacity(EXACT_POSITION_FRAMES + 1),
        }
    }

    /// Counts one appended frame of `frame_bytes` with `epoch`.
    fn record(&mut self, epoch: CommitEpoch, frame_bytes: u64) {
        self.appended_bytes += frame_bytes;
        if epoch <= self.last_epoch {
            // Recorded after a later epoch: counted, but marks no position.
            return;
        }
        self.last_epoch = epoch;
        self.recent.push_back((epoch, self.appended_bytes));
        if self.recent.len() > EXACT_POSITION_FRAMES {
            if let Some(old) = self.recent.pop_front() {
                let last_coarse = self.coarse.back().map_or(0, |&(_, bytes)| bytes);
                if old.1 - last_coarse >= POSITION_STEP_BYTES {
                    self.coarse.push_back(old);
                }
            }
        }
    }

    /// Appended bytes through the latest mark at or below `epoch` (0 when
    /// none is).
    fn bytes_through(&self, epoch: CommitEpoch) -> u64 {
        let latest_at_or_below = |marks: &VecDeque<(CommitEpoch, u64)>| {
            let after = marks.partition_point(|&(mark, _)| mark <= epoch);
            after.checked_sub(1).map(|at| marks[at].1)
        };
        latest_at_or_below(&self.recent)
            .or_else(|| latest_at_or_below(&self.coarse))
            .unwrap_or(0)
    }

    fn bytes_after(&self, epoch: CommitEpoch) -> u64 {
        self.appended_bytes - self.bytes_through(epoch)
    }

    /// Drops the coarse marks before the latest one at or below `epoch`,
    /// which becomes the base.
    fn forget_through(&mut self, epoch: CommitEpoch) {
        while self.coarse.get(1).is_some_and(|&(mark, _)| mark <= epoch) {
            self.coarse.pop_front();
        }
    }
}

/// Most bytes the spare file keeps: one preallocation step (see
/// `docs/format-tlog.md`, *Recycling*). A recycled segment grows past it by
/// preallocation, like a new one.
pub(crate) fn spare_keep_bytes(config: &TLogConfig) -> u64 {
    config.preallocate_bytes
}

/// Cuts a spare file longer than [`spare_keep_bytes`] (one an older build
/// kept whole), after syncing the directory so that the rename that made
/// it the spare is durable before any cut: a segment is never cut. Best
/// effort: recovery ignores the spare's bytes, so only disk space is at
/// stake.
fn cut_spare(storage: &dyn Storage, config: &TLogConfig, spare: &std::path::Path) {
    let keep = spare_keep_bytes(config);
    let cut = storage.open_file(spare, false).and_then(|file| {
        if file.len()? <= keep {
            return Ok(());
        }
        storage.sync_dir(&config.dir)?;
        file.set_len(keep)
    });
    if let Err(err) = cut {
        tracing::warn!(%err, "cutting the TLog spare file failed");
    }
}

/// Takes the directory's lock file; a second holder is refused.
fn lock_dir(storage: &dyn Storage, config: &TLogConfig) -> Result<Arc<dyn StorageFile>> {
    let path = config.dir.join(LOCK_FILE_NAME);
    let io_err = |err| WalError::io(format!("locking {}", path.display()), err);
    let file = storage.open_file(&path, true).map_err(io_err)?;
    if !file.try_lock_exclusive().map_err(io_err)? {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the TLog is open in another process",
        )));
    }
    Ok(file)
}

/// The segments a replay after `after` must read: all but those whose frames
/// all lie at or below `after` (known from the next segment's first epoch).
fn segments_to_replay<'a>(
    segments: impl ExactSizeIterator<Item = &'a recover::Segment> + Clone,
    after: CommitEpoch,
) -> VecDeque<scan::ReplaySegment> {
    let firsts: Vec<CommitEpoch> = segments.clone().map(|s| s.first_epoch).collect();
    segments
        .enumerate()
        .filter(|(index, _)| {
            firsts
                .get(index + 1)
                .is_none_or(|next_first| next_first.get() > after.get().saturating_add(1))
        })
        .map(|(_, segment)| scan::ReplaySegment {
            seq: segment.seq,
            path: segment.path.clone(),
            file: Arc::clone(&segment.file),
            len: segment.len,
            first_epoch: segment.first_epoch,
        })
        .collect()
}
