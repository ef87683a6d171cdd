//! The database: opening and recovery, the commit path, checkpoints, and the
//! background workers (merge and checkpoint).
//!
//! Files of a database at `PATH`:
//! - `PATH`: the data file (header page, meta page, data pages);
//! - `PATH-tlog/`: the TLog segments;
//! - `PATH-dwb`: the double-write file (copies of the pages a checkpoint
//!   chunk overwrites; emptied once synced when over 1 MiB);
//! - `PATH-manifest`: the checkpoint manifest (per-page CRC table, SHA-256).
//!
//! Recovery: pick the newest valid header slot, load the manifest that
//! matches it into the page file's CRC table (or rebuild the table from the
//! pages when the manifest is missing or damaged), copy a complete
//! double-write image back into place (repairing a torn write-back), open the
//! TLog (which cuts a torn tail), and replay every commit after the
//! checkpoint epoch. Deltas set bytes to absolute values, so replaying a
//! commit onto a page that already holds it is harmless. A page that fails
//! its checks is rebuilt from its double-write copy, or from zeros when the
//! TLog deltas since the checkpoint cover every byte of it; otherwise the
//! open fails naming it. Replay stays within the memory budget: past half of
//! it after a commit (or 90% inside one) it checkpoints what it replayed and
//! drops it (`Shared::checkpoint_replay`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmsb_wal::codec::CodecConfig;
use mmsb_wal::manifest::{CheckpointManifest, MANIFEST_FORMAT_VERSION};
use mmsb_wal::record::{self, CommitRecord};
use mmsb_wal::storage::{FileStorage, Storage, StorageFile};
use mmsb_wal::tlog::{CommitTicket, Durability, TLog, TLogConfig};
use mmsb_wal::{CommitEpoch, Delta, PageId, WalError};
use parking_lot::{ArcMutexGuard, Condvar, Mutex, RawMutex};

use crate::error::{Error, Result};
use crate::eviction::{
    Evictor, PageCopyCharge, DEFAULT_BACKPRESSURE_MAX_WAIT_MS, SYSTEM_SAMPLE_INTERVAL_MS,
};
use crate::memory::{
    default_memory_budget_bytes, BoundedMapReads, MemoryBudget, MIN_MEMORY_BUDGET_BYTES,
};
use crate::merge::{
    ChainEntry, CpuMerge, MergeBackend, MergeBatch, MergeKernel, MergeSession, MAX_MERGE_THREADS,
};
use crate::meta::{Meta, META_PAGE};
use crate::metrics::{timed, Metrics, MetricsSnapshot};
use crate::mvcc::{CommitLog, IsolationLevel, ReadTransaction, Transaction};
use crate::page_file::{
    seal_page, FileHeader, PageFile, WriteBackBuffer, DEFAULT_PAGE_SIZE, HEADER_MAGIC,
    IN_PLACE_RUN_MAX_BYTES, MAX_PAGE_SIZE, PAGE_TRAILER_LEN,
};
use crate::page_hash::{PageMap, PageSet};
use crate::page_table::PageTable;
use crate::snapshots::SnapshotRegistry;
use crate::txn::{ChangedPage, PageReadTransaction, PageWriteTransaction};

/// Decoded delta bytes (changed bytes plus per-delta and per-run overhead)
/// recovery gathers before it folds them into pages: the default of
/// [`Options::replay_window_bytes`].
pub const REPLAY_WINDOW_DELTA_BYTES: usize = 256 * 1024 * 1024;

/// Pages a recovery window may hold before it is folded, whatever its bytes
/// (bounds the window's copy of the page images: 1 GiB of 4 KiB pages).
pub const REPLAY_WINDOW_MAX_PAGES: usize = 256 * 1024;

/// Default of [`Options::gpu_merge_min_pages`]: below this many pages a
/// batch is merged on the CPU even when a backend is set (the PCIe round
/// trip costs more than it saves; see docs/gpu.md).
pub const DEFAULT_GPU_MERGE_MIN_PAGES: usize = 16 * 1024;

/// Recovery checkpoints what it replayed once its buffers hold this share of
/// the memory budget (checked after each commit; see `Shared::replay_pass`).
pub(crate) const REPLAY_CHECKPOINT_PERCENT: u64 = 50;

/// ... and at once, part-way through a commit, past this share.
pub(crate) const REPLAY_CHECKPOINT_HARD_PERCENT: u64 = 90;

/// Most of the memory budget one recovery merge window may hold (with a
/// merge backend), whatever [`Options::replay_window_bytes`] says.
pub(crate) const REPLAY_WINDOW_BUDGET_PERCENT: u64 = 20;

/// Windows with fewer pages are merged on the calling thread (no pool).
const REPLAY_PARALLEL_MIN_PAGES: usize = 256;

/// Bytes a decoded delta is counted for in a window, besides its runs.
const REPLAY_DELTA_OVERHEAD_BYTES: usize = 64;

/// Bytes each run of a decoded delta is counted for, besides its bytes.
const REPLAY_RUN_OVERHEAD_BYTES: usize = 16;

/// How often [`Database::run`] retries a transaction that conflicted.
pub const MAX_CONFLICT_RETRIES: u32 = 64;

/// Sleeps a little, longer on later attempts, jittered so that retrying
/// transactions do not collide again in lockstep.
fn backoff(attempt: u32) {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let ceiling_us = 20u64 << attempt.min(8);
    std::thread::sleep(Duration::from_micros(random % ceiling_us));
}

/// Pages a checkpoint writes per double-write round (bounds its memory).
const CHECKPOINT_CHUNK_PAGES: usize = 4096;

/// While commits stream, a due background checkpoint waits until the TLog
/// holds this many times [`Options::checkpoint_tlog_bytes`] past the
/// checkpoint.
pub const CHECKPOINT_URGENT_FACTOR: u64 = 4;

/// Writes count as paused once no commit has finished for this long (and
/// none is finishing or applying): a background checkpoint short of
/// urgent and the huge-page collapses wait for that. Longer than the gap
/// between the commits of a stream (a 1,000-row commit takes a few ms), so
/// a background pass woken between two of them does not take it for a pause.
pub const WRITES_PAUSED_AFTER_MS: u64 = 50;

/// Default [`Options::maintenance_nice`]: a nice-10 thread gets about a
/// tenth of a CPU's time against one busy thread at nice 0 (the kernel's
/// weights 110 and 1024), so the deferred work yields but still finishes.
pub const DEFAULT_MAINTENANCE_NICE: i32 = 10;

/// Highest [`Options::maintenance_nice`]: Linux's lowest priority.
pub const MAINTENANCE_NICE_MAX: i32 = 19;

/// How a database is opened. `Options::default()` is what `Database::open` uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Page size for a new database (ignored when opening an existing one).
    pub page_size: u32,
    /// When a commit is durable: `Immediate` (fsync before commit returns,
    /// the default) or `Eventual` (background fsync every interval).
    pub durability: Durability,
    /// A background checkpoint starts once the TLog holds this many bytes
    /// of frames past the last checkpoint's epoch, at the first pass of the
    /// maintenance thread ([`Options::maintenance_nice`])
    /// that finds writes paused (no commit finished for
    /// [`WRITES_PAUSED_AFTER_MS`]); while commits stream it waits until the
    /// TLog holds
    /// [`CHECKPOINT_URGENT_FACTOR`] times this many, so that its writes and
    /// syncs do not queue the commits' fsyncs behind them.
    pub checkpoint_tlog_bytes: u64,
    /// Target size of one TLog segment.
    pub tlog_segment_bytes: u64,
    /// Largest encoded commit accepted (one TLog frame).
    pub max_commit_bytes: u64,
    /// How deltas are encoded in the TLog.
    pub codec: CodecConfig,
    /// Where the files live; the real file system by default.
    pub storage: Arc<dyn Storage>,
    /// Run the merge and checkpoint workers in background threads.
    pub background_workers: bool,
    /// How often the workers look for work.
    pub worker_interval_ms: u64,
    /// Checkpoint when the database is closed cleanly.
    pub checkpoint_on_close: bool,
    /// Where large merge batches go (recovery folds its windows with it):
    /// for example the GPU merge of the `mmsb-cuda` crate. `None` (the
    /// default): every batch is merged on the CPU.
    pub merge_backend: Option<Arc<dyn MergeBackend>>,
    /// Fewest pages a batch must have to go to `merge_backend`; smaller
    /// batches are merged on the CPU.
    pub gpu_merge_min_pages: usize,
    /// Decoded delta bytes recovery gathers into one merge window (a window
    /// also ends at [`REPLAY_WINDOW_MAX_PAGES`] pages, and at 20% of
    /// `memory_budget_bytes`).
    pub replay_window_bytes: usize,
    /// Read every data page at open and check it against its trailer and the
    /// manifest's CRC table (repairing what can be repaired); the open fails
    /// naming every damaged page. Off by default: pages are always verified
    /// when they are read.
    pub verify_pages_on_open: bool,
    /// Bytes the engine may hold in memory for pages: materialized page
    /// images, their delta chains and dirty pages (each entry with a fixed
    /// overhead), open transactions' write buffers and private page copies,
    /// and recovery's replay buffers (see ARCHITECTURE.md). Cold clean
    /// pages are evicted to stay within it and commits wait (back-pressure)
    /// when they would pass it; a commit (or a transaction's buffer or page
    /// copies) that cannot fit fails with [`Error::MemoryBudgetExceeded`]. At
    /// least [`MIN_MEMORY_BUDGET_BYTES`]; default
    /// [`crate::default_memory_budget_bytes`]: a quarter of the machine's
    /// memory, at least 1 GiB.
    pub memory_budget_bytes: u64,
    /// Longest a commit waits for memory (back-pressure) before it fails
    /// with [`Error::MemoryBudgetExceeded`].
    pub backpressure_max_wait_ms: u64,
    /// Lower the budget in force while the machine (or the process's cgroup)
    /// runs short of memory: the worker reads `/proc/meminfo` and cgroup
    /// `memory.max`/`memory.current` once a second. Off by default.
    pub follow_system_memory: bool,
    /// Ask the kernel to back the memory holding page images with 2 MiB
    /// transparent huge pages (`madvise(MADV_COLLAPSE)`, Linux 6.1 and
    /// later, from the background worker; see ARCHITECTURE.md): fewer TLB
    /// misses on reads of cold pages. On by default; a no-op elsewhere and
    /// without `background_workers`.
    pub huge_page_images: bool,
    /// Niceness (Linux, `0..=MAINTENANCE_NICE_MAX`) of the maintenance
    /// thread, which runs the checkpoint that waits for writes to pause
    /// (one short of urgent). Above 0 the application's threads (readers
    /// above all) get a CPU first when they compete with it. The work
    /// something may wait for stays on the worker thread at the process's
    /// priority: folds, an urgent checkpoint (the TLog past
    /// [`CHECKPOINT_URGENT_FACTOR`] times `checkpoint_tlog_bytes`, or dirty
    /// pages the memory budget needs written back), eviction, and the
    /// huge-page collapses (they hold the memory-map lock every page fault
    /// needs). 0 leaves the thread's priority alone; other systems ignore
    /// it. Default [`DEFAULT_MAINTENANCE_NICE`].
    pub maintenance_nice: i32,
}

/// Backends are shown by name (`Options` is `Debug`).
impl std::fmt::Debug for dyn MergeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MergeBackend").field(&self.name()).finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: DEFAULT_PAGE_SIZE,
            durability: Durability::Immediate,
            checkpoint_tlog_bytes: 64 * 1024 * 1024,
            tlog_segment_bytes: mmsb_wal::tlog::DEFAULT_SEGMENT_TARGET_BYTES,
            // The largest frame the TLog format allows: a bulk load of a million
            // rows in one transaction must fit.
            max_commit_bytes: mmsb_wal::tlog::format::FRAME_PAYLOAD_LIMIT_BYTES,
            codec: CodecConfig::default(),
            storage: Arc::new(FileStorage),
            background_workers: true,
            worker_interval_ms: 20,
            checkpoint_on_close: true,
            merge_backend: None,
            gpu_merge_min_pages: DEFAULT_GPU_MERGE_MIN_PAGES,
            replay_window_bytes: REPLAY_WINDOW_DELTA_BYTES,
            verify_pages_on_open: false,
            memory_budget_bytes: default_memory_budget_bytes(),
            backpressure_max_wait_ms: DEFAULT_BACKPRESSURE_MAX_WAIT_MS,
            follow_system_memory: false,
            huge_page_images: true,
            maintenance_nice: DEFAULT_MAINTENANCE_NICE,
        }
    }
}

impl Options {
    /// Opens (or creates) the database at `path` with these options.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Database> {
        if self.memory_budget_bytes < MIN_MEMORY_BUDGET_BYTES {
            return Err(Error::InvalidArgument(format!(
                "memory_budget_bytes of {} is below the minimum of {MIN_MEMORY_BUDGET_BYTES} bytes",
                self.memory_budget_bytes
            )));
        }
        if !(0..=MAINTENANCE_NICE_MAX).contains(&self.maintenance_nice) {
            return Err(Error::InvalidArgument(format!(
                "maintenance_nice of {} is outside 0..={MAINTENANCE_NICE_MAX} (a thread may lower \
                 its priority, not raise it)",
                self.maintenance_nice
            )));
        }
        Database::open_with(path.as_ref(), self.clone())
    }
}

/// The held writer lock.
pub(crate) type WriterGuard = ArcMutexGuard<RawMutex, WriterState>;

/// A commit logged and installed under the writer lock, not yet durable or
/// visible; [`Shared::finish_commit`] completes it.
#[derive(Debug)]
pub(crate) struct PendingCommit {
    epoch: CommitEpoch,
    ticket: CommitTicket,
    touched: Vec<PageId>,
    record_bytes: u64,
    deltas: u64,
    /// Counts this commit as finishing until it is dropped.
    _finishing: FinishingCommit,
}

/// One commit between its append to the TLog and the end of its
/// [`Shared::finish_commit`] (durable wait, publish, fold), or its failure:
/// counted in `Shared::commits_finishing` while it lives, so the worker
/// sees a long commit (a bulk load folding its pages) as writes in progress
/// even though it no longer holds the writer lock.
#[derive(Debug)]
struct FinishingCommit(Arc<AtomicU64>);

impl FinishingCommit {
    fn start(count: &Arc<AtomicU64>) -> FinishingCommit {
        count.fetch_add(1, Ordering::AcqRel);
        FinishingCommit(Arc::clone(count))
    }
}

impl Drop for FinishingCommit {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a finishing commit was counted once");
    }
}

/// What the writer lock protects.
#[derive(Debug)]
pub(crate) struct WriterState {
    /// Epoch of the newest installed commit (published or not yet).
    last_epoch: CommitEpoch,
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Every commit up to this epoch is now in the data file.
    pub epoch: CommitEpoch,
    /// Pages written back.
    pub pages_written: usize,
}

/// State shared by the database handle, its transactions and its workers.
pub(crate) struct Shared {
    options: Options,
    path: PathBuf,
    page_file: PageFile,
    tlog: TLog,
    pub(crate) pages: PageTable,
    pub(crate) snapshots: SnapshotRegistry,
    pub(crate) writer: Arc<Mutex<WriterState>>,
    /// Commits logged but not yet through `finish_commit` (see
    /// [`FinishingCommit`]).
    commits_finishing: Arc<AtomicU64>,
    /// When the last commit finished, in ms since `opened_at` (0: none yet).
    last_commit_end_ms: AtomicU64,
    /// When the database was opened (the clock of `last_commit_end_ms`).
    opened_at: Instant,
    header: Mutex<FileHeader>,
    /// Serialises checkpoints.
    checkpoint_lock: Mutex<()>,
    durable_page_count: AtomicU64,
    /// Pages changed since the last checkpoint → epoch of their newest
    /// change (a hash map: a commit of a thousand scattered pages inserts
    /// each in O(1); the checkpoint sorts what it writes).
    pub(crate) dirty: Mutex<PageMap<CommitEpoch>>,
    /// Pages whose delta chains could not be folded yet (a reader pins them).
    pending_fold: Mutex<PageSet>,
    /// The manifest on disk is missing, damaged or does not match the
    /// header: the next checkpoint writes one even with nothing dirty.
    manifest_stale: AtomicBool,
    poisoned: AtomicBool,
    pub(crate) metrics: Metrics,
    /// Footprints of recent table commits, for conflict checks.
    pub(crate) commit_log: Mutex<CommitLog>,
    zero_page: Arc<[u8]>,
    worker_signal: WorkerSignal,
    /// The memory budget and its reservations (see `memory`).
    pub(crate) memory: MemoryBudget,
    /// The CLOCK hand and write-back requests (see `eviction`).
    pub(crate) evictor: Evictor,
}

#[derive(Debug, Default)]
struct WorkerSignal {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("path", &self.path).finish()
    }
}

/// An open mmsb database. Cheap to clone; the last clone dropped stops the
/// background workers and, by default, checkpoints.
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<DatabaseInner>,
}

#[derive(Debug)]
struct DatabaseInner {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Database {
    /// Opens the database at `path`, creating it if missing, with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Database> {
        Options::default().open(path)
    }

    /// Default options, to adjust before `open`.
    pub fn options() -> Options {
        Options::default()
    }

    fn open_with(path: &Path, options: Options) -> Result<Database> {
        let shared = Arc::new(Shared::open(path, options)?);
        let workers = if shared.options.background_workers {
            spawn_workers(&shared)?
        } else {
            Vec::new()
        };
        Ok(Database {
            inner: Arc::new(DatabaseInner {
                shared,
                workers: Mutex::new(workers),
            }),
        })
    }

    /// Starts a read-write table transaction at the default isolation
    /// level, SERIALIZABLE. Any number may run at once.
    pub fn begin_write(&self) -> Result<Transaction> {
        self.begin(IsolationLevel::default())
    }

    /// Starts a read-write table transaction at `isolation`.
    pub fn begin(&self, isolation: IsolationLevel) -> Result<Transaction> {
        Transaction::begin(Arc::clone(&self.inner.shared), isolation)
    }

    /// Starts a read-only snapshot of every table. Never blocks, never conflicts.
    pub fn begin_read(&self) -> Result<ReadTransaction> {
        ReadTransaction::begin(Arc::clone(&self.inner.shared))
    }

    /// Runs `body` in a transaction at `isolation` and commits it, running it
    /// again (up to `MAX_CONFLICT_RETRIES` times, with a short randomised
    /// back-off) while the commit fails with [`Error::Conflict`].
    pub fn run<T>(
        &self,
        isolation: IsolationLevel,
        mut body: impl FnMut(&mut Transaction) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            let mut tx = self.begin(isolation)?;
            let outcome = body(&mut tx).and_then(|value| tx.commit().map(|_| value));
            match outcome {
                Err(err) if err.is_retryable() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    backoff(attempt);
                }
                other => return other,
            }
        }
    }

    /// Commits a batch of independent transactions as one unit: their
    /// frames go to the TLog back to back under one writer lock and share one
    /// fsync. Each transaction is still atomic and checked for conflicts on
    /// its own (in batch order), so each gets its own outcome.
    pub fn commit_batch(&self, transactions: Vec<Transaction>) -> Vec<Result<CommitEpoch>> {
        crate::mvcc::commit_batch(&self.inner.shared, transactions)
    }

    /// Starts the low-level page write transaction (allocate pages, write
    /// bytes into them); waits while another one is running. Pages belong to
    /// whoever allocated them: do not write into pages that tables own.
    pub fn begin_page_write(&self) -> Result<PageWriteTransaction> {
        PageWriteTransaction::begin(Arc::clone(&self.inner.shared))
    }

    /// Starts a read transaction at the newest visible commit. Never waits for writers.
    pub fn begin_page_read(&self) -> Result<PageReadTransaction> {
        PageReadTransaction::begin(Arc::clone(&self.inner.shared))
    }

    /// Writes every committed change back into the data file and truncates
    /// the TLog it covers.
    pub fn checkpoint(&self) -> Result<CheckpointStats> {
        self.inner.shared.checkpoint()
    }

    /// Forces every commit so far to disk (useful in `Eventual` durability).
    pub fn flush(&self) -> Result<()> {
        self.inner.shared.tlog.flush().map_err(Error::from)
    }

    /// Newest commit visible to new readers.
    pub fn last_commit(&self) -> CommitEpoch {
        self.inner.shared.snapshots.visible()
    }

    /// Usable bytes per page.
    pub fn page_len(&self) -> usize {
        self.inner.shared.page_len()
    }

    /// Bytes per page on disk.
    pub fn page_size(&self) -> u32 {
        self.inner.shared.page_file.page_size()
    }

    /// Where the data file lives.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// A copy of every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.shared.metrics_snapshot()
    }
}

impl Drop for DatabaseInner {
    fn drop(&mut self) {
        {
            let mut stop = self.shared.worker_signal.stop.lock();
            *stop = true;
            self.shared.worker_signal.wake.notify_all();
        }
        for handle in self.workers.lock().drain(..) {
            if handle.join().is_err() {
                tracing::error!("an mmsb background worker panicked");
            }
        }
        if self.shared.options.checkpoint_on_close && !self.shared.poisoned.load(Ordering::Acquire)
        {
            if let Err(err) = self.shared.checkpoint() {
                tracing::warn!(error = %err, "checkpoint on close failed; the TLog still holds every commit");
            }
        }
    }
}

/// The data file as [`open_or_create_data_file`] left it.
struct OpenedDataFile {
    page_file: PageFile,
    header: FileHeader,
    /// Pages copied back from the double-write file.
    restored: usize,
    /// No valid manifest matching the header was found.
    manifest_stale: bool,
}

/// Opens the data file (loading its manifest, repairing torn write-back
/// from the double-write file), or creates it when it is empty or its
/// creation never completed.
fn open_or_create_data_file(
    storage: &Arc<dyn Storage>,
    file: Arc<dyn StorageFile>,
    path: &Path,
    options: &Options,
    tlog: &TLog,
) -> Result<OpenedDataFile> {
    let file_len = file.len().map_err(|err| Error::io("stat data file", err))?;
    if file_len > 0 {
        let opened = PageFile::open(Arc::clone(storage), Arc::clone(&file), path).and_then(
            |(page_file, header)| {
                let manifest = load_manifest(storage.as_ref(), path, &page_file, &header)?;
                let restored = page_file.restore_double_write()?;
                let manifest_stale = manifest != ManifestState::Loaded;
                if manifest_stale {
                    rebuild_manifest_table(&page_file, &header, &manifest, path)?;
                }
                Meta::decode(&page_file.read_page(META_PAGE)?)?;
                Ok(OpenedDataFile {
                    page_file,
                    header,
                    restored,
                    manifest_stale,
                })
            },
        );
        match opened {
            Ok(opened) => return Ok(opened),
            Err(err) if creation_was_interrupted(storage.as_ref(), file.as_ref(), path, tlog)? => {
                tracing::warn!(error = %err, "creation of {} never completed; creating it again", path.display());
                file.set_len(0)
                    .map_err(|err| Error::io("reset data file", err))?;
            }
            Err(err) => return Err(err),
        }
    }
    let mut meta_page = vec![0u8; options.page_size as usize - PAGE_TRAILER_LEN];
    Meta::new_database().encode_into(&mut meta_page);
    let (page_file, header) = PageFile::create(
        Arc::clone(storage),
        file,
        path,
        options.page_size,
        &meta_page,
    )?;
    Ok(OpenedDataFile {
        page_file,
        header,
        restored: 0,
        manifest_stale: true,
    })
}

/// What [`load_manifest`] found.
#[derive(Debug, PartialEq, Eq)]
enum ManifestState {
    /// Valid and matching the header; its CRC table is installed.
    Loaded,
    /// No manifest file.
    Missing,
    /// Present but damaged or not matching the header: why.
    Invalid(String),
}

/// Reads the checkpoint manifest and, when it is valid and matches the
/// header, installs its CRC table in the page file. An I/O error fails the
/// open; damage is reported as [`ManifestState::Invalid`].
fn load_manifest(
    storage: &dyn Storage,
    path: &Path,
    page_file: &PageFile,
    header: &FileHeader,
) -> Result<ManifestState> {
    let manifest = match CheckpointManifest::read(storage, path) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return Ok(ManifestState::Missing),
        Err(WalError::Io { context, source }) => return Err(Error::Io { context, source }),
        Err(err) => return Ok(ManifestState::Invalid(err.to_string())),
    };
    if let Err(reason) = manifest_matches_header(&manifest, header) {
        return Ok(ManifestState::Invalid(reason));
    }
    page_file.install_crc_table(manifest.page_crcs, manifest.checkpoint_epoch);
    Ok(ManifestState::Loaded)
}

/// A checkpoint writes its manifest before it moves the header, so the
/// manifest names either the header's checkpoint or the next one (whose
/// pages were all synced before a crash kept the header from moving).
fn manifest_matches_header(
    manifest: &CheckpointManifest,
    header: &FileHeader,
) -> Result<(), String> {
    let same = manifest.checkpoint_seq == header.checkpoint_seq
        && manifest.checkpoint_epoch == header.checkpoint_epoch
        && manifest.page_count == header.page_count;
    let next = Some(manifest.checkpoint_seq) == header.checkpoint_seq.checked_add(1)
        && manifest.checkpoint_epoch >= header.checkpoint_epoch
        && manifest.page_count >= header.page_count;
    if manifest.page_size == header.page_size && (same || next) {
        return Ok(());
    }
    Err(format!(
        "manifest (checkpoint {} at {}, {} pages of {} bytes) does not match the header \
         (checkpoint {} at {}, {} pages of {} bytes)",
        manifest.checkpoint_seq,
        manifest.checkpoint_epoch,
        manifest.page_count,
        manifest.page_size,
        header.checkpoint_seq,
        header.checkpoint_epoch,
        header.page_count,
        header.page_size,
    ))
}

/// Without a usable manifest, the CRC table is rebuilt from the pages'
/// own trailers (the next checkpoint writes a new manifest). A database that
/// never checkpointed has no manifest yet; anything else is reported.
fn rebuild_manifest_table(
    page_file: &PageFile,
    header: &FileHeader,
    manifest: &ManifestState,
    path: &Path,
) -> Result<()> {
    let damaged = page_file.rebuild_crc_table(header.page_count, header.checkpoint_epoch)?;
    let manifest_file = mmsb_wal::manifest_path(path);
    match manifest {
        ManifestState::Missing if header.checkpoint_seq == 0 => {}
        ManifestState::Missing => tracing::warn!(
            manifest = %manifest_file.display(),
            "the checkpoint manifest is missing; rebuilt its CRC table from the page trailers"
        ),
        ManifestState::Invalid(reason) => tracing::warn!(
            manifest = %manifest_file.display(),
            %reason,
            "the checkpoint manifest is damaged; rebuilt its CRC table from the page trailers"
        ),
        ManifestState::Loaded => {}
    }
    if !damaged.is_empty() {
        tracing::warn!(pages = ?damaged, "pages fail their trailer check while the manifest is rebuilt");
    }
    Ok(())
}

/// Refuses, before anything is created beside it, a file that does not
/// start like an mmsb data file.
fn refuse_foreign_file(file: &dyn StorageFile, path: &Path) -> Result<()> {
    if starts_like_data_file(file)? {
        return Ok(());
    }
    Err(Error::BadFormat(format!(
        "{} is not an mmsb database",
        path.display()
    )))
}

/// Whether the file begins with the header magic, or with zeros (what a
/// torn creation write leaves), as far as it is long.
fn starts_like_data_file(file: &dyn StorageFile) -> Result<bool> {
    let file_len = file.len().map_err(|err| Error::io("stat data file", err))?;
    let mut start = [0u8; HEADER_MAGIC.len()];
    let prefix_len = (file_len as usize).min(start.len());
    file.read_exact_at(&mut start[..prefix_len], 0)
        .map_err(|err| Error::io("read data file", err))?;
    let prefix = &start[..prefix_len];
    Ok(prefix.iter().all(|&b| b == 0) || *prefix == HEADER_MAGIC[..prefix_len])
}

/// A database whose creation crashed holds no commit (the TLog is empty),
/// no checkpoint manifest (a checkpoint, after which the TLog may be
/// empty, writes one first), is at most two pages long, and starts like a
/// data file. Anything else is not ours to reset.
fn creation_was_interrupted(
    storage: &dyn Storage,
    file: &dyn StorageFile,
    path: &Path,
    tlog: &TLog,
) -> Result<bool> {
    let file_len = file.len().map_err(|err| Error::io("stat data file", err))?;
    if tlog.last_epoch() != CommitEpoch::ZERO || file_len > 2 * u64::from(MAX_PAGE_SIZE) {
        return Ok(false);
    }
    let manifest = mmsb_wal::manifest_path(path);
    if storage
        .exists(&manifest)
        .map_err(|err| Error::io(format!("look for {}", manifest.display()), err))?
    {
        return Ok(false);
    }
    starts_like_data_file(file)
}

fn tlog_dir(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push("-tlog");
    path.with_file_name(name)
}

impl Shared {
    fn open(path: &Path, options: Options) -> Result<Shared> {
        let started = Instant::now();
        let storage = Arc::clone(&options.storage);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage
                .create_dir_all(parent)
                .map_err(|err| Error::io("create database directory", err))?;
        }
        let file = storage
            .open_file(path, true)
            .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
        if !file
            .try_lock_exclusive()
            .map_err(|err| Error::io("lock data file", err))?
        {
            return Err(Error::DatabaseLocked(path.to_path_buf()));
        }
        refuse_foreign_file(file.as_ref(), path)?;
        // Reads past a share of the budget bypass the map (RSS): see `memory`.
        let file: Arc<dyn StorageFile> =
            Arc::new(BoundedMapReads::new(file, options.memory_budget_bytes));
        let tlog = TLog::open(
            Arc::clone(&storage),
            TLogConfig {
                segment_target_bytes: options.tlog_segment_bytes,
                max_frame_bytes: options.max_commit_bytes,
                durability: options.durability,
                // A checkpoint covering the whole active segment retires it
                // (at the next commit) once it holds a quarter of a segment.
                retire_covered_min_bytes: (options.tlog_segment_bytes / 4)
                    .min(mmsb_wal::tlog::DEFAULT_RETIRE_COVERED_MIN_BYTES),
                ..TLogConfig::new(tlog_dir(path))
            },
        )?;
        let OpenedDataFile {
            page_file,
            header,
            restored,
            manifest_stale,
        } = open_or_create_data_file(&storage, file, path, &options, &tlog)?;
        let page_len = page_file.page_len();
        let shared = Shared {
            path: path.to_path_buf(),
            tlog,
            pages: PageTable::with_huge_page_images(options.huge_page_images),
            snapshots: SnapshotRegistry::new(header.checkpoint_epoch),
            writer: Arc::new(Mutex::new(WriterState {
                last_epoch: header.checkpoint_epoch,
            })),
            commits_finishing: Arc::default(),
            last_commit_end_ms: AtomicU64::new(0),
            opened_at: Instant::now(),
            durable_page_count: AtomicU64::new(header.page_count),
            header: Mutex::new(header),
            checkpoint_lock: Mutex::new(()),
            dirty: Mutex::default(),
            pending_fold: Mutex::default(),
            manifest_stale: AtomicBool::new(manifest_stale),
            poisoned: AtomicBool::new(false),
            metrics: Metrics::default(),
            commit_log: Mutex::default(),
            zero_page: Arc::from(vec![0u8; page_len]),
            worker_signal: WorkerSignal::default(),
            memory: MemoryBudget::new(options.memory_budget_bytes),
            evictor: Evictor::new(
                options.backpressure_max_wait_ms,
                options.follow_system_memory,
                !options.background_workers,
            ),
            page_file,
            options,
        };
        let last_epoch = shared.replay(header.checkpoint_epoch)?;
        shared.writer.lock().last_epoch = last_epoch;
        shared.snapshots.publish(last_epoch);
        // The meta page must decode, or nothing else can be trusted.
        Meta::decode(&shared.read_page_latest(META_PAGE)?)?;
        if shared.options.verify_pages_on_open {
            shared.verify_all_pages()?;
        }
        Metrics::add(&shared.metrics.double_write_pages_restored, restored as u64);
        Metrics::add(&shared.metrics.pages_repaired, restored as u64);
        Metrics::add(
            &shared.metrics.recovery_micros,
            started.elapsed().as_micros() as u64,
        );
        Ok(shared)
    }

    /// Applies every logged commit after `checkpoint_epoch`; returns the last epoch.
    ///
    /// With a merge backend that offers a [`MergeSession`] (a GPU keeping
    /// pages resident), the windows from the first one of at least
    /// `options.gpu_merge_min_pages` pages on are folded in that session and
    /// the pages come back at the end (or at a replay checkpoint). If the
    /// session fails, the TLog is replayed again on the CPU (folding in
    /// place) from the newest checkpoint, so a backend failure never fails
    /// recovery.
    fn replay(&self, checkpoint_epoch: CommitEpoch) -> Result<CommitEpoch> {
        let (last, replayed, commits) = match self.replay_pass(checkpoint_epoch, true) {
            Ok(done) => done,
            Err(ReplayFailure::Session(error)) => {
                tracing::warn!(%error, "merge session failed; replaying the TLog again on the CPU");
                // A replay checkpoint may have moved the header on.
                let from = self.header.lock().checkpoint_epoch;
                self.replay_pass(from, false)
                    .map_err(ReplayFailure::into_error)?
            }
            Err(ReplayFailure::Other(error)) => return Err(error),
        };
        Metrics::add(&self.metrics.recovered_commits, commits);
        debug_assert_eq!(
            self.pages.resident_bytes(),
            0,
            "replay leaves the table empty"
        );
        for (page_id, image) in replayed {
            self.pages.insert_clean(page_id, Arc::from(image));
        }
        Ok(last)
    }

    /// One pass over the TLog: the last epoch, the replayed pages and the
    /// commits replayed.
    ///
    /// Decoded commits are gathered in windows (bounded by
    /// `options.replay_window_bytes`, [`REPLAY_WINDOW_BUDGET_PERCENT`] of the
    /// memory budget and [`REPLAY_WINDOW_MAX_PAGES`]); each window becomes
    /// one [`MergeBatch`] (every page it touches, with its deltas in epoch
    /// order) folded by [`Shared::merge_replay_batch`] or the session. A
    /// page's base image is read when the page is first seen, so errors
    /// surface in log order as before. Without `use_backend` (or without a
    /// backend) deltas are folded in place as they are decoded.
    ///
    /// Memory: once the pass holds [`REPLAY_CHECKPOINT_PERCENT`] of the
    /// memory budget after a commit (or [`REPLAY_CHECKPOINT_HARD_PERCENT`]
    /// after any delta), it checkpoints what it replayed
    /// ([`Shared::checkpoint_replay`]) and drops it, so a TLog larger than
    /// the budget replays within it.
    fn replay_pass(
        &self,
        checkpoint_epoch: CommitEpoch,
        use_backend: bool,
    ) -> std::result::Result<ReplayedPages, ReplayFailure> {
        let mut last = checkpoint_epoch;
        let mut commits = 0u64;
        let page_len = self.page_len();
        // No reader exists yet: pages are folded in plain buffers and
        // handed to the page table at a replay checkpoint or at the end.
        let mut replayed: HashMap<PageId, Vec<u8>> = HashMap::new();
        // With a merge backend, deltas are gathered into windows and merged
        // as batches (large ones on the backend); without one they are folded
        // in place as they are decoded.
        let windowed = use_backend && self.options.merge_backend.is_some();
        let budget = self.memory.effective_bytes();
        let window_bytes = self.options.replay_window_bytes.min(
            usize::try_from(budget / 100 * REPLAY_WINDOW_BUDGET_PERCENT).unwrap_or(usize::MAX),
        );
        let checkpoint_bytes = budget / 100 * REPLAY_CHECKPOINT_PERCENT;
        let hard_checkpoint_bytes = budget / 100 * REPLAY_CHECKPOINT_HARD_PERCENT;
        let mut window = ReplayWindow::default();
        let mut cpu = ReplayCpu::default();
        let mut session = ReplaySession::Untried;
        // Pages replayed since the last replay checkpoint → epoch of their
        // newest change; they join `self.dirty` at a checkpoint or the end.
        let mut dirty: BTreeMap<PageId, CommitEpoch> = BTreeMap::new();
        // Pages that failed their checks: rebuilt from zeros if the deltas
        // replayed onto them cover every byte.
        let mut damaged: BTreeMap<PageId, DamagedPage> = BTreeMap::new();
        let mut frames = self.tlog.replay(checkpoint_epoch)?;
        while let Some(frame) = frames.next_frame() {
            let (epoch, payload) = frame?;
            if Some(epoch) != last.checked_next() {
                return Err(Error::Corrupted(format!(
                    "the TLog jumps from {last} to {epoch}: commits are missing"
                ))
                .into());
            }
            let record = CommitRecord::decode(payload, page_len)?;
            for delta in record.deltas {
                let page_id = delta.page_id();
                let pages_before = replayed.len();
                let page = match replayed.entry(page_id) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let page = match self.load_page_for_replay(page_id) {
                            Ok(image) => entry.insert(image.to_vec()),
                            Err(err) if err.is_corruption() => {
                                damaged.insert(page_id, DamagedPage::new(page_len, err));
                                entry.insert(vec![0u8; page_len])
                            }
                            Err(err) => return Err(err.into()),
                        };
                        // The buffers grow by a page: sample the gauge.
                        let held =
                            replay_held_bytes(page_len, pages_before + 1, &window, damaged.len());
                        self.note_recovery_bytes(held);
                        page
                    }
                };
                if let Some(damage) = damaged.get_mut(&page_id) {
                    damage.cover(&delta);
                }
                dirty.insert(page_id, epoch);
                if windowed {
                    window.push(epoch, delta)?;
                } else {
                    // No backend: fold in place as the log streams by (the
                    // fastest path on the CPU: no batch copies).
                    MergeKernel::best().apply_delta(page, &delta)?;
                }
                // A commit larger than what is left of the budget is
                // checkpointed part-way (see `checkpoint_replay`).
                let mut state = ReplayState {
                    replayed: &mut replayed,
                    dirty: &mut dirty,
                    window: &mut window,
                    damaged: &mut damaged,
                    cpu: &mut cpu,
                    session: &mut session,
                };
                self.checkpoint_replay_past(hard_checkpoint_bytes, last, &mut state)?;
            }
            commits += 1;
            last = epoch;
            if window.is_full(window_bytes) {
                let full = std::mem::take(&mut window);
                self.merge_window(full, &mut replayed, &mut cpu, &mut session)?;
            }
            let held = replay_held_bytes(page_len, replayed.len(), &window, damaged.len());
            self.note_recovery_bytes(held);
            let mut state = ReplayState {
                replayed: &mut replayed,
                dirty: &mut dirty,
                window: &mut window,
                damaged: &mut damaged,
                cpu: &mut cpu,
                session: &mut session,
            };
            self.checkpoint_replay_past(checkpoint_bytes, last, &mut state)?;
        }
        self.merge_window(window, &mut replayed, &mut cpu, &mut session)?;
        if let ReplaySession::Open(open) = session {
            open.finish(&mut |page_id: PageId, image: &[u8]| {
                replay_sink(&mut replayed, page_id, image)
            })
            .map_err(ReplayFailure::Session)?;
        }
        self.settle_damaged_pages(damaged)?;
        self.dirty.lock().extend(std::mem::take(&mut dirty));
        Ok((last, replayed, commits))
    }

    /// Raises the `recovery_peak_bytes` gauge to `replay_bytes` (what the
    /// replay buffers hold) plus what the page table holds.
    fn note_recovery_bytes(&self, replay_bytes: u64) {
        let held = replay_bytes.saturating_add(self.pages.resident_bytes());
        self.metrics
            .recovery_peak_bytes
            .fetch_max(held, Ordering::Relaxed);
    }

    /// [`Shared::checkpoint_replay`] through `epoch` when the pass holds at
    /// least `threshold` bytes, unless a page that failed its checks is not
    /// yet covered by replayed deltas (sealing it would pass it off as whole:
    /// the checkpoint waits for its deltas).
    fn checkpoint_replay_past<'s>(
        &'s self,
        threshold: u64,
        epoch: CommitEpoch,
        state: &mut ReplayState<'_, 's>,
    ) -> std::result::Result<(), ReplayFailure> {
        let held = replay_held_bytes(
            self.page_len(),
            state.replayed.len(),
            state.window,
            state.damaged.len(),
        );
        if held < threshold || !state.damaged.values().all(DamagedPage::is_fully_covered) {
            return Ok(());
        }
        self.note_recovery_bytes(held);
        self.checkpoint_replay(epoch, state)
    }

    /// A replay checkpoint: folds every delta read so far into the page
    /// images (the window, then the session's pages), settles the damaged
    /// pages (all covered, see the caller), and makes everything replayed
    /// through `epoch` durable the way a checkpoint does: the images go
    /// into the page table, [`Shared::checkpoint_at`] writes them through
    /// the double-write file, then the manifest and the header, and
    /// truncates the TLog through `epoch`; then the table is emptied. A
    /// crash at any point leaves the header at this checkpoint or the one
    /// before, and replay from there rebuilds the same pages (deltas are
    /// byte-run overwrites applied in epoch order).
    ///
    /// Part-way through a commit (`epoch` is then the commit before it,
    /// complete in the TLog like every frame replay reads), some pages hold
    /// part of that commit: replay from `epoch` applies all of it again,
    /// which leaves them exactly as applying it once would, as after a
    /// crash in the middle of an ordinary checkpoint. Pages of that commit
    /// stay in the dirty map (their epoch is past `epoch`), so the next
    /// checkpoint writes them again, read back from the data file.
    fn checkpoint_replay<'s>(
        &'s self,
        epoch: CommitEpoch,
        state: &mut ReplayState<'_, 's>,
    ) -> std::result::Result<(), ReplayFailure> {
        let window = std::mem::take(state.window);
        self.merge_window(window, state.replayed, state.cpu, state.session)?;
        if let ReplaySession::Open(open) = std::mem::replace(state.session, ReplaySession::Untried)
        {
            let replayed = &mut *state.replayed;
            open.finish(&mut |page_id: PageId, image: &[u8]| replay_sink(replayed, page_id, image))
                .map_err(ReplayFailure::Session)?;
        }
        self.settle_damaged_pages(std::mem::take(state.damaged))?;
        let _one_at_a_time = self.checkpoint_lock.lock();
        // Pages at or past the page count are not written by a checkpoint
        // (a valid log never has them; a damaged one keeps them replayed).
        let page_count = match state.replayed.get(&META_PAGE) {
            Some(image) => Meta::decode(image)?.page_count,
            None => Meta::decode(&self.load_page_for_replay(META_PAGE)?)?.page_count,
        };
        let kept: Vec<PageId> = state
            .replayed
            .keys()
            .copied()
            .filter(|id| id.get() >= page_count)
            .collect();
        let mut kept_pages = HashMap::new();
        let mut kept_dirty = BTreeMap::new();
        for page_id in kept {
            kept_pages.extend(state.replayed.remove_entry(&page_id));
            kept_dirty.extend(state.dirty.remove_entry(&page_id));
        }
        self.pages.clear();
        self.dirty.lock().extend(std::mem::take(state.dirty));
        for (page_id, image) in state.replayed.drain() {
            self.pages.insert_clean(page_id, Arc::from(image));
        }
        let stats = self.checkpoint_at(epoch)?;
        // The table now holds every replayed page (and what the checkpoint read).
        self.note_recovery_bytes(0);
        let cleared = self.pages.clear();
        tracing::info!(
            %epoch,
            pages = stats.pages_written,
            bytes = cleared.bytes,
            "recovery checkpointed its replayed pages to stay within the memory budget"
        );
        *state.replayed = kept_pages;
        state.dirty.append(&mut kept_dirty);
        Ok(())
    }

    /// Counts the damaged pages replay rebuilt from zeros (their deltas
    /// covered every byte; they stay dirty, so the next checkpoint rewrites
    /// them), or fails naming every page that could not be rebuilt.
    fn settle_damaged_pages(&self, damaged: BTreeMap<PageId, DamagedPage>) -> Result<()> {
        let mut lost = Vec::new();
        for (page_id, damage) in damaged {
            if damage.is_fully_covered() {
                tracing::warn!(%page_id, error = %damage.error, "rebuilt a damaged page from the TLog deltas that cover all of it");
                Metrics::bump(&self.metrics.pages_repaired);
            } else {
                lost.push(format!(
                    "{} (its TLog deltas since the checkpoint cover {} of {} bytes)",
                    damage.error,
                    damage.covered_bytes,
                    damage.covered.len()
                ));
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        Err(Error::Corrupted(format!(
            "{} damaged page(s) cannot be rebuilt: {}",
            lost.len(),
            lost.join("; ")
        )))
    }

    /// Reads every data page on disk that recovery did not already load and
    /// checks it (trailer and manifest CRC), repairing from the double-write
    /// file where possible; fails naming every damaged page.
    fn verify_all_pages(&self) -> Result<()> {
        let mut damaged = Vec::new();
        for id in 1..self.durable_page_count() {
            let page_id = PageId(id);
            if self.is_page_in_memory(page_id) {
                continue; // loaded (and checked) or rebuilt by recovery
            }
            match self.page_file.read_page(page_id) {
                Ok(_) => {}
                Err(err) if err.is_corruption() => {
                    if let Err(err) = self.repair_from_double_write(page_id, err) {
                        damaged.push(err.to_string());
                    }
                }
                Err(err) => return Err(err),
            }
        }
        if damaged.is_empty() {
            return Ok(());
        }
        Err(Error::Corrupted(format!(
            "{} damaged page(s): {}",
            damaged.len(),
            damaged.join("; ")
        )))
    }

    /// After `err` (a corruption) reading `page_id`: its payload rebuilt from
    /// the double-write file, or `err` when there is no usable copy.
    fn repair_from_double_write(&self, page_id: PageId, err: Error) -> Result<Vec<u8>> {
        match self.page_file.repair_from_double_write(page_id)? {
            Some(payload) => {
                Metrics::bump(&self.metrics.pages_repaired);
                Ok(payload)
            }
            None => Err(err),
        }
    }

    /// Folds one window's deltas into the replayed page images (or into the
    /// merge session, which then holds the window's pages).
    fn merge_window<'s>(
        &'s self,
        window: ReplayWindow,
        replayed: &mut HashMap<PageId, Vec<u8>>,
        cpu: &mut ReplayCpu,
        session: &mut ReplaySession<'s>,
    ) -> std::result::Result<(), ReplayFailure> {
        if window.pages.is_empty() {
            return Ok(());
        }
        let deltas = window.chains.values().map(Vec::len).sum();
        let mut batch = MergeBatch::with_capacity(self.page_len(), window.pages.len(), deltas)?;
        for page_id in &window.pages {
            let (base, chain) = match (replayed.get(page_id), window.chains.get(page_id)) {
                (Some(base), Some(chain)) => (base, chain),
                _ => return Err(replay_bookkeeping(*page_id).into()),
            };
            let entries = chain
                .iter()
                .map(|(epoch, delta)| ChainEntry::new(*epoch, delta));
            batch.push_page(*page_id, base, entries)?;
        }
        if let (ReplaySession::Untried, Some(backend)) = (&session, &self.options.merge_backend) {
            if batch.len() >= self.options.gpu_merge_min_pages {
                *session = match backend.open_session(self.page_len()) {
                    Ok(Some(open)) => ReplaySession::Open(open),
                    Ok(None) => ReplaySession::Unavailable,
                    Err(error) => return Err(ReplayFailure::Session(error)),
                };
            }
        }
        if let ReplaySession::Open(open) = session {
            // The session keeps the pages; `replayed` gets them at the end.
            open.fold(&mut batch).map_err(ReplayFailure::Session)?;
            return Ok(());
        }
        self.merge_replay_batch(&mut batch, cpu)?;
        for (slot, page_id) in window.pages.iter().enumerate() {
            match (replayed.get_mut(page_id), batch.page(slot)) {
                (Some(image), Some(merged)) => image.copy_from_slice(merged),
                _ => return Err(replay_bookkeeping(*page_id).into()),
            }
        }
        Ok(())
    }

    /// Merges a recovery batch: on `options.merge_backend` when the batch
    /// has at least `options.gpu_merge_min_pages` pages, else on the CPU
    /// (all cores for large batches, the calling thread for small ones).
    fn merge_replay_batch(&self, batch: &mut MergeBatch<'_>, cpu: &mut ReplayCpu) -> Result<()> {
        if let Some(backend) = &self.options.merge_backend {
            if batch.len() >= self.options.gpu_merge_min_pages {
                backend.merge_batch(batch)?;
                return Ok(());
            }
        }
        cpu.for_pages(batch.len())?.merge_batch(batch)?;
        Ok(())
    }

    /// During replay, pages past the checkpoint's page count start as zeros.
    fn load_page_for_replay(&self, page_id: PageId) -> Result<Arc<[u8]>> {
        if page_id.get() == 0 {
            return Err(Error::Corrupted(
                "a logged delta targets the header page".into(),
            ));
        }
        if page_id.get() >= self.durable_page_count() {
            return Ok(self.zero_page());
        }
        self.load_from_disk(page_id)
    }

    fn load_from_disk(&self, page_id: PageId) -> Result<Arc<[u8]>> {
        // Read and verify into a pooled scratch frame, then the one copy
        // into the cache image.
        let image: Arc<[u8]> = match self.page_file.read_page_frame(page_id) {
            Ok(frame) => Arc::from(&frame[..]),
            Err(err) if err.is_corruption() => {
                Arc::from(self.repair_from_double_write(page_id, err)?)
            }
            Err(err) => return Err(err),
        };
        Metrics::bump(&self.metrics.pages_read_from_disk);
        Ok(image)
    }

    pub(crate) fn page_len(&self) -> usize {
        self.page_file.page_len()
    }

    pub(crate) fn zero_page(&self) -> Arc<[u8]> {
        Arc::clone(&self.zero_page)
    }

    pub(crate) fn durable_page_count(&self) -> u64 {
        self.durable_page_count.load(Ordering::Acquire)
    }

    pub(crate) fn is_page_in_memory(&self, page_id: PageId) -> bool {
        matches!(self.pages.read(page_id, CommitEpoch(u64::MAX)), Ok(Some(_)))
    }

    /// The page as of `snapshot`, loading it from disk when not in memory.
    pub(crate) fn read_page_at(&self, page_id: PageId, snapshot: CommitEpoch) -> Result<Arc<[u8]>> {
        if let Some(image) = self.pages.read(page_id, snapshot)? {
            return Ok(image);
        }
        if page_id.get() >= self.durable_page_count() {
            // Allocated since the last checkpoint and never written: zeros.
            return Ok(self.zero_page());
        }
        let image = match self.load_from_disk(page_id) {
            Ok(image) => image,
            Err(err) if err.is_corruption() => {
                // A checkpoint may have been writing the page while it was
                // read: the page is then in memory (a writer changed it, and
                // this reader's snapshot pins the change). Else read again.
                if let Some(image) = self.pages.read(page_id, snapshot)? {
                    return Ok(image);
                }
                self.load_from_disk(page_id)?
            }
            Err(err) => return Err(err),
        };
        // Another thread may have loaded (or a writer installed) it
        // meanwhile; that entry wins.
        self.cache_loaded(page_id, image, snapshot)
    }

    /// Lends the page as of `snapshot` to `read`: borrowed from the page
    /// table's head directory when the page has one version in memory (no
    /// lock, no reference count), else through [`Shared::read_page_at`].
    #[inline]
    pub(crate) fn with_page_at<R>(
        &self,
        page_id: PageId,
        snapshot: CommitEpoch,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        match self.pages.with_head(page_id, read) {
            Ok(value) => Ok(value),
            Err(read) => Ok(read(&self.read_page_at(page_id, snapshot)?)),
        }
    }

    /// The newest installed version (what the writer builds on).
    pub(crate) fn read_page_latest(&self, page_id: PageId) -> Result<Arc<[u8]>> {
        self.read_page_at(page_id, CommitEpoch(u64::MAX))
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn poison(&self, err: Error) -> Error {
        if !matches!(err, Error::Wal(WalError::TooLarge { .. })) {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %err, "mmsb refuses further writes until reopened");
        }
        err
    }

    /// The commit path: log and install under the writer lock, release it,
    /// then wait for durability, publish and fold. `copies`: what the
    /// transaction's page copies are charged (the admission takes it over).
    pub(crate) fn commit_pages(
        &self,
        mut writer: WriterGuard,
        pages: Vec<ChangedPage>,
        copies: &mut PageCopyCharge,
        on_installed: impl FnOnce(CommitEpoch),
    ) -> Result<CommitEpoch> {
        let pending = self.log_and_install(&mut writer, pages, copies, on_installed)?;
        let last_epoch = writer.last_epoch;
        drop(writer);
        pending.map_or(Ok(last_epoch), |pending| self.finish_commit(pending))
    }

    /// Encodes the deltas as one commit record, appends it to the TLog at
    /// the next epoch and installs the deltas (not yet visible). `None` when
    /// there is nothing to commit. The admission takes over `copies` (see
    /// [`Shared::admit_commit`]).
    pub(crate) fn log_and_install(
        &self,
        writer: &mut WriterState,
        pages: Vec<ChangedPage>,
        copies: &mut PageCopyCharge,
        on_installed: impl FnOnce(CommitEpoch),
    ) -> Result<Option<PendingCommit>> {
        self.check_writable()?;
        if pages.is_empty() {
            return Ok(None);
        }
        // Room for what the install adds, held until it is in the accounting.
        let _room = self.admit_commit(&pages, copies)?;
        let epoch = writer
            .last_epoch
            .checked_next()
            .ok_or_else(|| Error::Corrupted("the commit epoch would pass u64::MAX".into()))?;
        let stages = &self.metrics.stages;
        let mut payload = Vec::new();
        timed(&stages.encode_ns, || {
            let deltas = pages.iter().map(|page| &*page.delta);
            record::encode_deltas(deltas, &self.options.codec, &mut payload)
        })?;
        let ticket = timed(&stages.log_append_ns, || self.tlog.append(epoch, &payload))
            .map_err(|err| self.poison(err.into()))?;
        let finishing = FinishingCommit::start(&self.commits_finishing);
        let delta_count = pages.len();
        let touched = timed(&stages.install_ns, || self.install(epoch, pages));
        writer.last_epoch = epoch;
        on_installed(epoch);
        Ok(Some(PendingCommit {
            epoch,
            ticket,
            touched,
            record_bytes: payload.len() as u64,
            deltas: delta_count as u64,
            _finishing: finishing,
        }))
    }

    /// Installs a commit's deltas into the page versions (not yet visible)
    /// and marks the pages dirty; returns the pages touched.
    fn install(&self, epoch: CommitEpoch, pages: Vec<ChangedPage>) -> Vec<PageId> {
        let mut touched = Vec::with_capacity(pages.len());
        let mut dirty = self.dirty.lock();
        for ChangedPage {
            delta,
            image,
            original,
        } in pages
        {
            let page_id = delta.page_id();
            self.pages.install(epoch, delta, image, || original);
            dirty.insert(page_id, epoch);
            touched.push(page_id);
        }
        touched
    }

    /// Waits until the commit is durable, publishes it and folds what no
    /// snapshot needs. Called without the writer lock.
    pub(crate) fn finish_commit(&self, pending: PendingCommit) -> Result<CommitEpoch> {
        let stages = &self.metrics.stages;
        timed(&stages.durable_wait_ns, || {
            self.tlog.wait_durable(pending.ticket)
        })
        .map_err(|err| self.poison(err.into()))?;
        timed(&stages.publish_fold_ns, || {
            self.snapshots.publish(pending.epoch);
            self.fold(pending.touched)
        })?;
        Metrics::bump(&self.metrics.commits);
        self.last_commit_end_ms
            .store(self.elapsed_ms(), Ordering::Release);
        Metrics::add(&self.metrics.commit_record_bytes, pending.record_bytes);
        Metrics::add(&self.metrics.deltas_committed, pending.deltas);
        Ok(pending.epoch)
    }

    /// Folds what no snapshot needs; remembers pages a reader still pins.
    fn fold(&self, pages: Vec<PageId>) -> Result<()> {
        let limit = self.snapshots.fold_limit();
        let pinned = self.pages.fold_pages(pages, limit)?;
        // The images this commit's install replaced: freed here, by the
        // writer, rather than by a later reader's pin.
        self.pages.collect_retired();
        Metrics::bump(&self.metrics.folds);
        if !pinned.is_empty() {
            self.pending_fold.lock().extend(pinned);
        }
        Ok(())
    }

    /// One pass of the merge worker over pages that readers had pinned.
    fn fold_pending(&self) -> Result<()> {
        let pending: Vec<PageId> = self.pending_fold.lock().drain().collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.fold(pending)
    }

    /// Milliseconds since the database was opened.
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.opened_at.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether writes pause: no commit finished in the last
    /// [`WRITES_PAUSED_AFTER_MS`], none is finishing (`finishing_counts`:
    /// its durable wait, publish and fold) and none holds the writer lock.
    fn writes_paused(&self, finishing_counts: bool) -> bool {
        let last_end_ms = self.last_commit_end_ms.load(Ordering::Acquire);
        let quiet = self.elapsed_ms().saturating_sub(last_end_ms) >= WRITES_PAUSED_AFTER_MS;
        let finishing = finishing_counts && self.commits_finishing.load(Ordering::Acquire) > 0;
        quiet && !finishing && self.writer.try_lock().is_some()
    }

    /// Wakes the background worker.
    pub(crate) fn wake_worker(&self) {
        self.worker_signal.wake.notify_all();
    }

    /// Writes dirty pages back (a checkpoint) so that eviction may drop
    /// them: the route of a commit that needs room when no worker runs.
    pub(crate) fn write_back_for_memory(&self) -> Result<()> {
        self.checkpoint().map(|_| ())
    }

    pub(crate) fn wake_merge_worker(&self) {
        if !self.pending_fold.lock().is_empty() {
            self.worker_signal.wake.notify_all();
        }
    }

    /// Bytes of TLog frames past the checkpointed epoch: counted from where
    /// that epoch's frames end, not from what was appended when the
    /// checkpoint ran (a commit appended but not yet visible then is not
    /// covered by it, and counts).
    fn tlog_bytes_past_checkpoint(&self) -> u64 {
        let checkpointed = self.header.lock().checkpoint_epoch;
        self.tlog.bytes_after(checkpointed)
    }

    /// Whether a background checkpoint should run now: when one would cover
    /// `checkpoint_tlog_bytes` of TLog frames (those past the checkpointed
    /// epoch up to the visible one) and `writes_paused`, or
    /// [`CHECKPOINT_URGENT_FACTOR`] times that however busy the writers are.
    ///
    /// A checkpoint's in-place writes and syncs share the disk with the
    /// commits' TLog fsyncs, and a commit's fsync then waits for them (it
    /// doubled the latency of single-put durable commits): so while commits
    /// stream, the checkpoint waits for a pause, bounded by the urgent
    /// size (which bounds the TLog, and so recovery time). Frames of commits
    /// not yet visible (a bulk load installing its pages) wait until they
    /// are: a checkpoint could not truncate them, and would write their
    /// pages as of an older epoch, to be written again.
    fn checkpoint_due(&self, writes_paused: bool) -> bool {
        let past_visible = self.tlog.bytes_after(self.snapshots.visible());
        let covered = self
            .tlog_bytes_past_checkpoint()
            .saturating_sub(past_visible);
        let threshold = self.options.checkpoint_tlog_bytes;
        if writes_paused {
            covered >= threshold
        } else {
            covered >= threshold.saturating_mul(CHECKPOINT_URGENT_FACTOR)
        }
    }

    /// Writes every page changed up to the visible epoch back to the data
    /// file (through the double-write file), moves the header to that epoch
    /// and truncates the TLog it covers. Readers and writers keep running.
    fn checkpoint(&self) -> Result<CheckpointStats> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        self.check_writable()?;
        let epoch = self.snapshots.acquire();
        // Nothing became visible since the last checkpoint: the dirty pages
        // hold only commits not yet visible, and their images as of `epoch`
        // are on disk already. Rewriting them would only reseal them at the
        // manifest's epoch (see `CrcTable::trusted_through`).
        let unmoved = epoch == self.header.lock().checkpoint_epoch
            && !self.manifest_stale.load(Ordering::Acquire);
        let result = if unmoved {
            Ok(CheckpointStats {
                epoch,
                pages_written: 0,
            })
        } else {
            self.checkpoint_at(epoch)
        };
        self.snapshots.release(epoch);
        result.map_err(|err| self.poison(err))
    }

    fn checkpoint_at(&self, epoch: CommitEpoch) -> Result<CheckpointStats> {
        let previous = *self.header.lock();
        let dirty: Vec<PageId> = self.dirty.lock().keys().copied().collect();
        let manifest_stale = self.manifest_stale.load(Ordering::Acquire);
        if dirty.is_empty() && previous.checkpoint_epoch == epoch && !manifest_stale {
            return Ok(CheckpointStats {
                epoch,
                pages_written: 0,
            });
        }
        // Write-ahead: no page may reach the data file before the commits it
        // holds are durable in the TLog. With `Durability::Eventual` the
        // epoch is visible before it is durable; a crash that then kept the
        // pages (sealed past the header's epoch, so accepted) but lost the
        // frames would leave parts of lost commits in them.
        if self.tlog.durable_epoch() < epoch {
            self.tlog.flush()?;
        }
        let meta = Meta::decode(&self.read_page_at(META_PAGE, epoch)?)?;
        let seq = previous.checkpoint_seq + 1;
        let mut written = 0usize;
        // Pages allocated since the last checkpoint are written even when
        // they were never changed (zeros), so every page below the new page
        // count is sealed on disk.
        // Only the dirty pages the checkpoint on disk holds are sorted: the
        // fresh ones are the whole range past them, in order already.
        let mut page_ids: Vec<PageId> = dirty
            .into_iter()
            .filter(|id| id.get() < previous.page_count.min(meta.page_count))
            .collect();
        page_ids.sort_unstable();
        page_ids.extend((previous.page_count..meta.page_count).map(PageId));
        debug_assert!(page_ids.windows(2).all(|pair| pair[0] < pair[1]));
        let chunk_pages = self.checkpoint_chunk_pages(CHECKPOINT_CHUNK_PAGES);
        let mut buffer = WriteBackBuffer::new(self.page_file.page_size());
        for chunk in page_ids.chunks(chunk_pages) {
            // Only pages the checkpoint on disk holds get a double-write
            // copy: torn-write protection needs no more (see
            // `write_back_chunk`), and fresh pages copied would only grow
            // the file (a bulk load's last chunk: megabytes).
            written +=
                self.write_back_chunk(seq, chunk, epoch, previous.page_count, &mut buffer)?;
        }
        let header = FileHeader {
            checkpoint_seq: seq,
            checkpoint_epoch: epoch,
            page_count: meta.page_count,
            ..previous
        };
        // The manifest goes first: a crash before the header moves leaves a
        // manifest one checkpoint ahead, whose pages are all synced already.
        self.write_manifest(&header)?;
        self.page_file.write_header(&header)?;
        Metrics::bump(&self.metrics.data_fsyncs);
        *self.header.lock() = header;
        self.durable_page_count
            .store(meta.page_count, Ordering::Release);
        self.tlog.truncate_through(epoch)?;
        self.dirty.lock().retain(|_, changed| *changed > epoch);
        Metrics::bump(&self.metrics.checkpoints);
        Metrics::add(&self.metrics.pages_written_back, written as u64);
        Ok(CheckpointStats {
            epoch,
            pages_written: written,
        })
    }

    /// Writes the manifest of the checkpoint `header` describes (the CRC
    /// table covers every page: each was written by this checkpoint or an
    /// earlier one) atomically: temp file, fsync, rename, fsync directory.
    fn write_manifest(&self, header: &FileHeader) -> Result<()> {
        let page_crcs = self.page_file.crc_table(header.page_count).ok_or_else(|| {
            Error::Corrupted(format!(
                "internal: the CRC table does not cover {} pages",
                header.page_count
            ))
        })?;
        let manifest = CheckpointManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            page_size: header.page_size,
            checkpoint_seq: header.checkpoint_seq,
            checkpoint_epoch: header.checkpoint_epoch,
            page_count: header.page_count,
            page_crcs,
        };
        manifest.write_atomically(self.options.storage.as_ref(), &self.path)?;
        self.page_file
            .trust_crc_table_through(header.checkpoint_epoch);
        self.manifest_stale.store(false, Ordering::Release);
        Metrics::add(&self.metrics.data_fsyncs, 2);
        Ok(())
    }

    /// Seals the pages as of `epoch`, writes those below `copy_below` to
    /// the double-write file, then all of them in place, then syncs.
    ///
    /// `copy_below` is at least the page count of the checkpoint on disk: a
    /// page at or past that count needs no double-write copy to survive a
    /// torn write, since until the header names this checkpoint recovery
    /// never reads it (replay starts such pages from zeros,
    /// [`Shared::load_page_for_replay`]), and the header moves only after
    /// this sync. So a bulk load's fresh pages are written once, not twice.
    /// Once the chunk is synced, a double-write file longer than
    /// [`crate::page_file::DOUBLE_WRITE_RETAINED_MAX_BYTES`] is emptied (it
    /// has done its job); a smaller one stays to repair later damage to the
    /// pages it holds.
    ///
    /// `chunk` is in increasing id order; its pages are sealed straight into
    /// `buffer` (reused by every chunk of the checkpoint) and each run of
    /// consecutive ids goes in place with one write
    /// ([`PageFile::write_back_runs`]).
    fn write_back_chunk(
        &self,
        seq: u64,
        chunk: &[PageId],
        epoch: CommitEpoch,
        copy_below: u64,
        buffer: &mut WriteBackBuffer,
    ) -> Result<usize> {
        debug_assert!(copy_below >= self.durable_page_count());
        // Without double-write copies (ids increase: the first is the
        // lowest) pages are sealed and written one run at a time, so the
        // buffer the kernel copies from stays small and hot in the cache.
        let needs_copies = chunk.first().is_some_and(|id| id.get() < copy_below);
        let part_pages = if needs_copies {
            chunk.len()
        } else {
            IN_PLACE_RUN_MAX_BYTES / self.page_file.page_size() as usize
        };
        let mut double_written = false;
        for part in chunk.chunks(part_pages.max(1)) {
            buffer.clear();
            for &page_id in part {
                let image = self.read_page_at(page_id, epoch)?;
                seal_page(page_id, &image, epoch, buffer.push(page_id));
            }
            double_written |= self
                .page_file
                .write_double_write_below(seq, buffer, copy_below)?;
            self.page_file.write_back_runs(buffer)?;
        }
        self.page_file.sync("sync written-back pages")?;
        if double_written {
            // The copies protected writes that are synced now: a large set
            // of them is not kept on disk until the next checkpoint.
            self.page_file.retire_double_write()?;
        }
        Metrics::add(&self.metrics.data_fsyncs, 1 + u64::from(double_written));
        Ok(chunk.len())
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        let m = &self.metrics;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let tlog = self.tlog.stats();
        let (live_snapshots, _) = self.snapshots.live_summary();
        MetricsSnapshot {
            commits: load(&m.commits),
            rollbacks: load(&m.rollbacks),
            commit_record_bytes: load(&m.commit_record_bytes),
            deltas_committed: load(&m.deltas_committed),
            tlog_frames: tlog.frames_appended,
            tlog_bytes_written: tlog.bytes_written,
            tlog_fsyncs: tlog.fsyncs,
            data_fsyncs: load(&m.data_fsyncs),
            pages_read_from_disk: load(&m.pages_read_from_disk),
            pages_written_back: load(&m.pages_written_back),
            checkpoints: load(&m.checkpoints),
            checkpoints_deferred: load(&m.checkpoints_deferred),
            recovery_micros: load(&m.recovery_micros),
            recovered_commits: load(&m.recovered_commits),
            recovery_peak_bytes: load(&m.recovery_peak_bytes),
            double_write_pages_restored: load(&m.double_write_pages_restored),
            pages_repaired: load(&m.pages_repaired),
            tlog_torn_bytes_cut: tlog.torn_tail_bytes_cut,
            pages_in_memory: load(&self.pages.stats().pages),
            pinned_version_bytes: load(&self.pages.stats().pinned_bytes),
            huge_page_regions_collapsed: load(&self.pages.huge_pages().stats().collapsed),
            huge_page_collapses_refused: load(&self.pages.huge_pages().stats().refused),
            live_snapshots: live_snapshots as u64,
            folds: load(&m.folds),
            conflicts: load(&m.conflicts),
            cache_bytes: self.pages.resident_bytes(),
            peak_cache_bytes: load(&self.pages.stats().peak_resident_bytes),
            budget_bytes: self.memory.effective_bytes(),
            write_buffer_bytes: self.memory.transaction_bytes(),
            evictions: load(&m.evictions),
            pages_evicted: load(&m.pages_evicted),
            bytes_evicted: load(&m.bytes_evicted),
            backpressure_waits: load(&m.backpressure_waits),
            backpressure_wait_ns: load(&m.backpressure_wait_ns),
            commit_stages: m.stage_snapshot(),
        }
    }
}

/// What a replay pass holds between its commits, lent to a replay checkpoint.
struct ReplayState<'a, 's> {
    replayed: &'a mut HashMap<PageId, Vec<u8>>,
    dirty: &'a mut BTreeMap<PageId, CommitEpoch>,
    window: &'a mut ReplayWindow,
    damaged: &'a mut BTreeMap<PageId, DamagedPage>,
    cpu: &'a mut ReplayCpu,
    session: &'a mut ReplaySession<'s>,
}

/// Bytes a replay pass holds: `pages` replayed images (each at a clean
/// page-table entry's charge, which it gets when a checkpoint moves it
/// there), the window's decoded deltas and the page copies its merge batch
/// will make, and the coverage maps of `damaged` pages (a byte per page byte).
fn replay_held_bytes(page_len: usize, pages: usize, window: &ReplayWindow, damaged: usize) -> u64 {
    let page_bytes = PageTable::clean_entry_bytes(page_len);
    let window_bytes = window.bytes as u64 + window.pages.len() as u64 * page_len as u64;
    (pages as u64)
        .saturating_mul(page_bytes)
        .saturating_add(window_bytes)
        .saturating_add(damaged as u64 * page_len as u64)
}

/// Where a merge session hands a page back: into its replayed image.
fn replay_sink(
    replayed: &mut HashMap<PageId, Vec<u8>>,
    page_id: PageId,
    image: &[u8],
) -> Result<()> {
    match replayed.get_mut(&page_id) {
        Some(slot) if slot.len() == image.len() => {
            slot.copy_from_slice(image);
            Ok(())
        }
        _ => Err(replay_bookkeeping(page_id)),
    }
}

/// Decoded deltas of consecutive commits, by page in first-seen order.
#[derive(Debug, Default)]
struct ReplayWindow {
    pages: Vec<PageId>,
    chains: HashMap<PageId, Vec<(CommitEpoch, Delta)>>,
    bytes: usize,
}

impl ReplayWindow {
    /// Adds `delta` of commit `epoch` (commits come in epoch order). Two
    /// deltas of one page in one commit become one, the later winning where
    /// they overlap, as applying them one after the other would.
    fn push(&mut self, epoch: CommitEpoch, delta: Delta) -> Result<()> {
        self.bytes += delta.changed_len()
            + delta.run_count() * REPLAY_RUN_OVERHEAD_BYTES
            + REPLAY_DELTA_OVERHEAD_BYTES;
        let page_id = delta.page_id();
        match self.chains.entry(page_id) {
            Entry::Vacant(entry) => {
                self.pages.push(page_id);
                entry.insert(vec![(epoch, delta)]);
            }
            Entry::Occupied(entry) => {
                let chain = entry.into_mut();
                match chain.last_mut() {
                    Some((last_epoch, last)) if *last_epoch == epoch => {
                        *last = last.merge(&delta)?;
                    }
                    _ => {
                        debug_assert!(chain.last().is_none_or(|(e, _)| *e < epoch));
                        chain.push((epoch, delta));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the window reached its bounds and must be folded now.
    fn is_full(&self, max_bytes: usize) -> bool {
        self.bytes >= max_bytes || self.pages.len() >= REPLAY_WINDOW_MAX_PAGES
    }
}

/// The CPU merges recovery uses: one on the calling thread, and one over all
/// cores, made the first time a window is large enough to need it.
#[derive(Debug, Default)]
struct ReplayCpu {
    single: Option<CpuMerge>,
    parallel: Option<CpuMerge>,
}

impl ReplayCpu {
    /// The merge for a batch of `pages` pages.
    fn for_pages(&mut self, pages: usize) -> Result<&CpuMerge> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_MERGE_THREADS);
        let slot = if pages < REPLAY_PARALLEL_MIN_PAGES || threads == 1 {
            &mut self.single
        } else {
            &mut self.parallel
        };
        if slot.is_none() {
            let threads = if pages < REPLAY_PARALLEL_MIN_PAGES {
                1
            } else {
                threads
            };
            *slot = Some(CpuMerge::best(threads)?);
        }
        slot.as_ref()
            .ok_or_else(|| Error::Corrupted("internal: replay merge missing".into()))
    }
}

/// What one replay pass gives: the last epoch, the replayed page images and
/// the commits replayed.
type ReplayedPages = (CommitEpoch, HashMap<PageId, Vec<u8>>, u64);

/// Recovery's merge session: not asked for yet, open, or not offered.
enum ReplaySession<'s> {
    /// No window has been large enough to ask the backend yet.
    Untried,
    /// The backend holds the pages of every window since it opened.
    Open(Box<dyn MergeSession + 's>),
    /// The backend keeps no pages: windows go through `merge_batch`.
    Unavailable,
}

/// Why a replay pass stopped: its merge session failed (replay again
/// without it), or anything else (recovery fails).
enum ReplayFailure {
    Session(Error),
    Other(Error),
}

impl ReplayFailure {
    fn into_error(self) -> Error {
        match self {
            ReplayFailure::Session(error) | ReplayFailure::Other(error) => error,
        }
    }
}

impl From<Error> for ReplayFailure {
    fn from(error: Error) -> Self {
        ReplayFailure::Other(error)
    }
}

impl From<mmsb_wal::DeltaError> for ReplayFailure {
    fn from(error: mmsb_wal::DeltaError) -> Self {
        ReplayFailure::Other(error.into())
    }
}

impl From<WalError> for ReplayFailure {
    fn from(error: WalError) -> Self {
        ReplayFailure::Other(error.into())
    }
}

/// A page that failed its checks during replay: which of its bytes the
/// replayed deltas have written so far.
#[derive(Debug)]
struct DamagedPage {
    /// Why the page on disk was rejected.
    error: Error,
    covered: Vec<bool>,
    covered_bytes: usize,
}

impl DamagedPage {
    fn new(page_len: usize, error: Error) -> Self {
        DamagedPage {
            error,
            covered: vec![false; page_len],
            covered_bytes: 0,
        }
    }

    /// Marks the bytes `delta` writes.
    fn cover(&mut self, delta: &Delta) {
        for run in delta.runs() {
            let end = run.end().min(self.covered.len());
            let start = (run.offset as usize).min(end);
            for byte in &mut self.covered[start..end] {
                if !*byte {
                    *byte = true;
                    self.covered_bytes += 1;
                }
            }
        }
    }

    fn is_fully_covered(&self) -> bool {
        self.covered_bytes == self.covered.len()
    }
}

/// A replay page whose bookkeeping went missing: a bug, reported as an error.
fn replay_bookkeeping(page_id: PageId) -> Error {
    Error::Corrupted(format!("internal: replay lost track of {page_id}"))
}

/// The background threads' shares of the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WorkerRole {
    /// What commits or memory may wait for: folds of pinned versions, an
    /// urgent checkpoint, write-back for eviction, the memory pass; and
    /// the huge-page collapses (which hold the memory-map lock).
    Worker,
    /// A checkpoint short of urgent, which waits for writes to pause
    /// anyway, at a lower priority ([`Options::maintenance_nice`]).
    Maintenance,
}

impl WorkerRole {
    fn thread_name(self) -> &'static str {
        match self {
            WorkerRole::Worker => "mmsb-worker",
            // Linux keeps 15 bytes of a thread name.
            WorkerRole::Maintenance => "mmsb-maintain",
        }
    }
}

/// Starts the background threads: the worker (folds pinned versions as
/// readers go away, checkpoints when the TLog or memory needs it, huge-page
/// collapses) and the maintenance thread (the checkpoint that waits for
/// writes to pause).
fn spawn_workers(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let interval = Duration::from_millis(shared.options.worker_interval_ms.max(1));
    let nice = shared.options.maintenance_nice;
    [WorkerRole::Worker, WorkerRole::Maintenance]
        .into_iter()
        .map(|role| {
            let weak = Arc::downgrade(shared);
            std::thread::Builder::new()
                .name(role.thread_name().into())
                .spawn(move || {
                    if role == WorkerRole::Maintenance {
                        lower_thread_priority(nice);
                    }
                    worker_loop(weak, interval, role)
                })
                .map_err(|err| Error::io("spawn background worker", err))
        })
        .collect()
}

/// Lowers the calling thread's priority to niceness `nice` (Linux; a no-op
/// at 0, elsewhere, and when the thread runs at that niceness or lower
/// priority already: an unprivileged thread cannot raise it). A refusal is
/// logged: the work then runs at the process's priority, which is only
/// slower for the readers beside it.
fn lower_thread_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid`, `getpriority` and `setpriority` take plain
        // integers and touch no memory of ours; on Linux `PRIO_PROCESS` with
        // a thread id reads or sets that one thread's niceness.
        let refused = unsafe {
            let tid = libc::gettid() as libc::id_t;
            // -1 is also the error value: then the set below decides.
            libc::getpriority(libc::PRIO_PROCESS, tid) < nice
                && libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
        };
        if refused {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "maintenance thread keeps the process's priority"
            );
        }
    }
}

fn worker_loop(shared: Weak<Shared>, interval: Duration, role: WorkerRole) {
    let sample_interval = Duration::from_millis(SYSTEM_SAMPLE_INTERVAL_MS);
    let mut last_sample: Option<Instant> = None;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        {
            let mut stop = shared.worker_signal.stop.lock();
            if *stop {
                return;
            }
            shared.worker_signal.wake.wait_for(&mut stop, interval);
            if *stop {
                return;
            }
        }
        match role {
            WorkerRole::Worker => {
                let sample = last_sample.is_none_or(|at| at.elapsed() >= sample_interval);
                if sample {
                    last_sample = Some(Instant::now());
                }
                worker_pass(&shared, sample);
            }
            WorkerRole::Maintenance => maintenance_pass(&shared),
        }
    }
}

/// One pass of the worker: folds, huge-page collapses, an urgent or
/// write-back checkpoint, the memory pass (`sample`: read the system's
/// memory figures too).
fn worker_pass(shared: &Shared, sample: bool) {
    if let Err(err) = shared.fold_pending() {
        tracing::error!(error = %err, "merge worker failed");
    }
    // Huge-page collapses wait until writes pause (a commit may still
    // be finishing: its durable wait and fold allocate no images): a
    // collapse copies 2 MiB and stalls the page faults of a commit
    // allocating its images, and under a stream of commits the regions
    // fill with images soon replaced. They stay at the process's
    // priority: a collapse holds the process's memory-map lock, and a
    // low-priority holder preempted there would stall every page fault of
    // the application behind it.
    if shared.writes_paused(false) {
        shared.pages.huge_pages().collapse_noted();
    }
    // Dirty pages past their share of the memory budget are written
    // back too (at once: eviction waits for them), so that eviction
    // may drop them.
    let writeback = shared.writeback_due();
    let urgent = shared.checkpoint_due(false);
    if shared.checkpoint_due(true) && !urgent && !shared.writes_paused(true) {
        Metrics::bump(&shared.metrics.checkpoints_deferred);
    }
    if writeback || urgent {
        background_checkpoint(shared);
    }
    shared.memory_pass(sample);
}

/// One pass of the maintenance thread: the checkpoint that waits for
/// writes to pause.
fn maintenance_pass(shared: &Shared) {
    // A checkpoint short of urgent (`checkpoint_due`) also waits for
    // the commits still finishing: their fsyncs are what it would slow.
    if shared.writes_paused(true) && shared.checkpoint_due(true) {
        background_checkpoint(shared);
    }
}

/// A checkpoint from a background thread: errors are logged (a poisoned
/// database is left alone; its writers see the error).
fn background_checkpoint(shared: &Shared) {
    if shared.poisoned.load(Ordering::Acquire) {
        return;
    }
    if let Err(err) = shared.checkpoint() {
        tracing::error!(error = %err, "background checkpoint failed");
    }
}

#[cfg(test)]
mod manifest_and_repair_tests {
    use super::*;
    use proptest::prelude::*;

    fn header(seq: u64, epoch: u64, page_count: u64) -> FileHeader {
        FileHeader {
            page_size: 4096,
            checkpoint_seq: seq,
            checkpoint_epoch: CommitEpoch(epoch),
            page_count,
        }
    }

    fn manifest(seq: u64, epoch: u64, page_count: u64) -> CheckpointManifest {
        CheckpointManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            page_size: 4096,
            checkpoint_seq: seq,
            checkpoint_epoch: CommitEpoch(epoch),
            page_count,
            page_crcs: vec![0; page_count as usize - 1],
        }
    }

    #[test]
    fn the_manifest_of_the_same_or_the_next_checkpoint_is_accepted() {
        let head = header(4, 40, 10);
        assert!(manifest_matches_header(&manifest(4, 40, 10), &head).is_ok());
        assert!(manifest_matches_header(&manifest(5, 52, 12), &head).is_ok());
        assert!(manifest_matches_header(&manifest(5, 40, 10), &head).is_ok());
    }

    #[test]
    fn any_other_manifest_is_refused() {
        let head = header(4, 40, 10);
        for other in [
            manifest(3, 30, 10),
            manifest(4, 41, 10),
            manifest(4, 40, 11),
            manifest(5, 39, 10),
            manifest(5, 52, 9),
            manifest(6, 60, 12),
            CheckpointManifest {
                page_size: 8192,
                ..manifest(4, 40, 10)
            },
        ] {
            assert!(manifest_matches_header(&other, &head).is_err(), "{other:?}");
        }
    }

    proptest! {
        /// Coverage of a damaged page agrees with a byte-set model, whatever
        /// the runs (overlapping, adjacent, at the end of the page).
        #[test]
        fn damaged_page_coverage_matches_a_model(
            writes in proptest::collection::vec((0usize..256, 1usize..64), 0..24),
        ) {
            let page_len = 256;
            let mut damage = DamagedPage::new(page_len, Error::Corrupted("test".into()));
            let mut model = vec![false; page_len];
            for (offset, len) in writes {
                let len = len.min(page_len - offset);
                let mut delta = Delta::new(PageId(3));
                delta.write(offset, &vec![7u8; len]).unwrap();
                damage.cover(&delta);
                model[offset..offset + len].fill(true);
            }
            let covered = model.iter().filter(|&&b| b).count();
            prop_assert_eq!(damage.covered_bytes, covered);
            prop_assert_eq!(damage.is_fully_covered(), covered == page_len);
        }
    }

    #[test]
    fn a_page_written_whole_is_fully_covered() {
        let mut damage = DamagedPage::new(100, Error::Corrupted("test".into()));
        let mut first = Delta::new(PageId(3));
        first.write(0, &[1u8; 60]).unwrap();
        damage.cover(&first);
        assert!(!damage.is_fully_covered());
        let mut second = Delta::new(PageId(3));
        second.write(40, &[2u8; 60]).unwrap();
        damage.cover(&second);
        assert!(damage.is_fully_covered());
    }
}

#[cfg(test)]
mod checkpoint_trigger_tests {
    use super::*;
    use crate::page_access::{PageRead, PageWrite};
    use mmsb_wal::storage::MemStorage;

    /// Bytes past the checkpoint that make a background checkpoint due.
    const THRESHOLD_BYTES: u64 = 64 * 1024;

    fn options() -> Options {
        Options {
            storage: Arc::new(MemStorage::new()),
            background_workers: false,
            checkpoint_on_close: false,
            checkpoint_tlog_bytes: THRESHOLD_BYTES,
            ..Options::default()
        }
    }

    fn db() -> Database {
        options().open("/trigger.mmsb").unwrap()
    }

    /// One commit of `pages` new pages of incompressible bytes from `seed`
    /// (so each adds about a page to the TLog).
    fn commit_pages(db: &Database, pages: usize, seed: u64) {
        let mut tx = db.begin_page_write().unwrap();
        let mut state = seed | 1;
        for _ in 0..pages {
            let id = tx.allocate_page().unwrap();
            for byte in tx.page_mut(id).unwrap() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = (state >> 32) as u8;
            }
        }
        tx.commit().unwrap();
    }

    #[test]
    fn the_growth_count_restarts_at_each_checkpoint_epoch() {
        let db = db();
        let shared = &db.inner.shared;
        assert!(!shared.checkpoint_due(true));
        commit_pages(&db, 4, 1);
        assert!(
            !shared.checkpoint_due(true),
            "4 pages are below the threshold"
        );
        commit_pages(&db, 20, 2);
        assert!(
            shared.checkpoint_due(true),
            "24 pages are past the threshold"
        );
        shared.checkpoint().unwrap();
        assert!(!shared.checkpoint_due(true), "the checkpoint covered them");
    }

    #[test]
    fn while_commits_stream_a_checkpoint_waits_for_the_urgent_size() {
        let db = db();
        let shared = &db.inner.shared;
        let pages_per_threshold = (THRESHOLD_BYTES / 4096) as usize;
        commit_pages(&db, pages_per_threshold + 4, 1);
        assert!(shared.checkpoint_due(true), "due once writes pause");
        assert!(!shared.checkpoint_due(false), "deferred while they stream");
        let urgent_pages = pages_per_threshold * CHECKPOINT_URGENT_FACTOR as usize;
        commit_pages(&db, urgent_pages, 2);
        assert!(shared.checkpoint_due(false), "urgent: due however busy");
        shared.checkpoint().unwrap();
        assert!(!shared.checkpoint_due(false));
        assert!(!shared.checkpoint_due(true));
    }

    #[test]
    fn a_finishing_commit_is_writing_for_checkpoints_not_for_collapses() {
        let db = db();
        let shared = &db.inner.shared;
        commit_pages(&db, 1, 1);
        std::thread::sleep(Duration::from_millis(WRITES_PAUSED_AFTER_MS + 10));
        assert!(shared.writes_paused(true), "quiet since the commit");
        let finishing = FinishingCommit::start(&shared.commits_finishing);
        assert!(
            !shared.writes_paused(true),
            "a commit is in its durable wait"
        );
        assert!(shared.writes_paused(false), "collapses may run meanwhile");
        drop(finishing);
        assert!(shared.writes_paused(true));
        let writer = shared.writer.lock();
        assert!(
            !shared.writes_paused(false),
            "a commit holds the writer lock"
        );
        drop(writer);
    }

    #[test]
    fn a_due_checkpoint_runs_once_writes_pause() {
        let db = Options {
            background_workers: true,
            worker_interval_ms: 1,
            ..options()
        }
        .open("/paused.mmsb")
        .unwrap();
        commit_pages(&db, (THRESHOLD_BYTES / 4096) as usize + 4, 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.metrics().checkpoints == 0 {
            assert!(
                Instant::now() < deadline,
                "no checkpoint after writes paused"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !db.inner.shared.checkpoint_due(true),
            "it covered the commit"
        );
    }

    #[test]
    fn a_checkpoint_covering_the_tlog_frees_it_at_the_next_commit() {
        let storage = Arc::new(MemStorage::new());
        let options = Options {
            storage: storage.clone(),
            tlog_segment_bytes: 16 << 20,
            ..options()
        };
        // The frames of 300 pages, then of 1 (each segment is preallocated
        // 1 MiB ahead of its frames).
        let (pages, preallocated) = (300, 1 << 20);
        let tlog_bytes = || {
            let files = storage
                .list_dir(&tlog_dir(Path::new("/retire.mmsb")))
                .unwrap();
            let lens = files.iter().map(|path| {
                let file = storage.open_file(path, false).unwrap();
                file.len().unwrap()
            });
            lens.sum::<u64>()
        };
        let db = options.clone().open("/retire.mmsb").unwrap();
        commit_pages(&db, pages, 1);
        let before = tlog_bytes();
        assert!(before > pages as u64 * 4096, "{before} bytes of TLog");
        db.checkpoint().unwrap();
        commit_pages(&db, 1, 2);
        let after = tlog_bytes();
        assert!(
            after < preallocated + 16 * 4096,
            "{after} bytes of TLog still on disk"
        );
        let pages = |db: &Database| {
            let rx = db.begin_page_read().unwrap();
            // Pages 0 and 1 are the engine's (meta and catalog).
            (2..rx.page_count())
                .map(|id| rx.read_page(PageId(id)).unwrap().to_vec())
                .collect::<Vec<_>>()
        };
        let written = pages(&db);
        let last = db.last_commit();
        drop(db);
        let db = options.open("/retire.mmsb").unwrap();
        assert_eq!(db.last_commit(), last);
        assert!(pages(&db) == written, "a page changed across the reopen");
    }

    #[test]
    fn a_frame_appended_but_not_visible_at_a_checkpoint_still_counts() {
        let db = db();
        let shared = &db.inner.shared;
        commit_pages(&db, 4, 1);
        // A commit whose frame is durable but not yet visible when the
        // checkpoint runs (a bulk load installing its pages): its frame is
        // appended behind the engine's back, so it never becomes visible.
        let next = CommitEpoch(db.last_commit().get() + 1);
        let frame = vec![0u8; 4 * THRESHOLD_BYTES as usize];
        let ticket = shared.tlog.append(next, &frame).unwrap();
        shared.tlog.wait_durable(ticket).unwrap();
        let stats = shared.checkpoint().unwrap();
        assert!(stats.epoch < next);
        assert_eq!(shared.header.lock().checkpoint_epoch, stats.epoch);
        assert!(
            shared.tlog_bytes_past_checkpoint() >= frame.len() as u64,
            "a frame the checkpoint did not cover was counted as covered"
        );
        // A checkpoint now could not cover the frame: not due until visible.
        assert!(!shared.checkpoint_due(true));
        shared.snapshots.publish(next);
        assert!(shared.checkpoint_due(true), "the frame is visible now");
    }
}
