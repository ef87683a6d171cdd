//! Engine counters, collected in one place. Exporting them (Prometheus) is
//! a separate concern; this module only counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters updated by the engine as it works. All are monotonic except
/// where noted.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) commits: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    pub(crate) commit_record_bytes: AtomicU64,
    pub(crate) deltas_committed: AtomicU64,
    pub(crate) pages_read_from_disk: AtomicU64,
    pub(crate) pages_written_back: AtomicU64,
    pub(crate) data_fsyncs: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoints_deferred: AtomicU64,
    pub(crate) recovery_micros: AtomicU64,
    pub(crate) recovered_commits: AtomicU64,
    pub(crate) recovery_peak_bytes: AtomicU64,
    pub(crate) double_write_pages_restored: AtomicU64,
    pub(crate) pages_repaired: AtomicU64,
    pub(crate) folds: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) pages_evicted: AtomicU64,
    pub(crate) bytes_evicted: AtomicU64,
    pub(crate) backpressure_waits: AtomicU64,
    pub(crate) backpressure_wait_ns: AtomicU64,
    pub(crate) stages: StageCounters,
}

/// Cumulative nanoseconds spent in each stage of the commit pipeline.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    pub validate_ns: AtomicU64,
    pub tree_apply_ns: AtomicU64,
    pub diff_ns: AtomicU64,
    pub encode_ns: AtomicU64,
    pub log_append_ns: AtomicU64,
    pub install_ns: AtomicU64,
    pub durable_wait_ns: AtomicU64,
    pub publish_fold_ns: AtomicU64,
}

impl StageCounters {
    fn snapshot(&self) -> CommitStageNanos {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CommitStageNanos {
            validate: load(&self.validate_ns),
            tree_apply: load(&self.tree_apply_ns),
            diff: load(&self.diff_ns),
            encode: load(&self.encode_ns),
            log_append: load(&self.log_append_ns),
            install: load(&self.install_ns),
            durable_wait: load(&self.durable_wait_ns),
            publish_fold: load(&self.publish_fold_ns),
        }
    }
}

/// Runs `stage` and adds its wall-clock nanoseconds to `counter`.
pub(crate) fn timed<T>(counter: &AtomicU64, stage: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = stage();
    counter.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    value
}

/// Cumulative nanoseconds each stage of the commit pipeline took, over every
/// commit since open: where a commit's time goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStageNanos {
    /// Conflict checks against recent commits (table transactions).
    pub validate: u64,
    /// Applying buffered writes to the B+trees (table transactions).
    pub tree_apply: u64,
    /// Diffing changed pages into deltas.
    pub diff: u64,
    /// Encoding the commit record (codecs).
    pub encode: u64,
    /// Appending the frame to the TLog buffer.
    pub log_append: u64,
    /// Installing deltas into the page versions.
    pub install: u64,
    /// Waiting for the group commit's fsync.
    pub durable_wait: u64,
    /// Publishing the epoch and folding versions no reader needs.
    pub publish_fold: u64,
}

impl Metrics {
    pub(crate) fn stage_snapshot(&self) -> CommitStageNanos {
        self.stages.snapshot()
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time copy of every engine counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Write transactions committed since open.
    pub commits: u64,
    /// Write transactions rolled back (explicitly or by drop) since open.
    pub rollbacks: u64,
    /// Encoded commit-record bytes handed to the TLog.
    pub commit_record_bytes: u64,
    /// Page deltas committed.
    pub deltas_committed: u64,
    /// Frames the TLog appended.
    pub tlog_frames: u64,
    /// Bytes the TLog wrote (frames and segment headers).
    pub tlog_bytes_written: u64,
    /// fsyncs issued by the TLog.
    pub tlog_fsyncs: u64,
    /// fsyncs of the data file and double-write file (checkpoints).
    pub data_fsyncs: u64,
    /// Pages read (and verified) from the data file.
    pub pages_read_from_disk: u64,
    /// Pages written back by checkpoints.
    pub pages_written_back: u64,
    /// Completed checkpoints.
    pub checkpoints: u64,
    /// Worker passes that found a background checkpoint due but put it off
    /// because commits were streaming (see `Options::checkpoint_tlog_bytes`).
    pub checkpoints_deferred: u64,
    /// Time the last open spent recovering, in microseconds.
    pub recovery_micros: u64,
    /// Commits replayed from the TLog at the last open.
    pub recovered_commits: u64,
    /// Highest bytes the last open's recovery held (gauge): its replay
    /// buffers (replayed page images at a page-table entry's charge each,
    /// the merge window's deltas and batch copies) plus the page table,
    /// sampled as the buffers grow. Recovery checkpoints its progress to
    /// keep this within the memory budget (see ARCHITECTURE.md).
    pub recovery_peak_bytes: u64,
    /// Pages repaired from the double-write file at the last open.
    pub double_write_pages_restored: u64,
    /// Damaged pages rebuilt since open (from the double-write file, or
    /// from zeros plus TLog deltas that cover every byte), each also logged
    /// with `tracing::warn`.
    pub pages_repaired: u64,
    /// Torn-tail bytes the TLog cut at the last open.
    pub tlog_torn_bytes_cut: u64,
    /// Pages held in memory (gauge).
    pub pages_in_memory: u64,
    /// Bytes held only for older snapshots: unfolded deltas and old base images (gauge).
    pub pinned_version_bytes: u64,
    /// 2 MiB regions holding page images that the kernel backed with a
    /// huge page on the worker's advice (see `Options::huge_page_images`).
    pub huge_page_regions_collapsed: u64,
    /// Huge-page advice the kernel refused (no free huge page, say).
    pub huge_page_collapses_refused: u64,
    /// Live read snapshots (gauge).
    pub live_snapshots: u64,
    /// Page versions folded by the merge worker or at commit.
    pub folds: u64,
    /// Transactions refused at commit with `Error::Conflict`.
    pub conflicts: u64,
    /// Bytes the page table is charged now against the memory budget:
    /// page images, delta chains and per-entry overhead (gauge).
    pub cache_bytes: u64,
    /// Highest `cache_bytes` since open (gauge).
    pub peak_cache_bytes: u64,
    /// Memory budget in force (gauge): `Options::memory_budget_bytes`, lower
    /// while `follow_system_memory` finds the machine short of memory.
    pub budget_bytes: u64,
    /// Bytes the write buffers of open transactions are charged against
    /// the budget (gauge).
    pub write_buffer_bytes: u64,
    /// Eviction sweeps that dropped at least one page.
    pub evictions: u64,
    /// Pages dropped from memory by eviction.
    pub pages_evicted: u64,
    /// Bytes those pages were charged.
    pub bytes_evicted: u64,
    /// Commits that had to wait for memory (back-pressure).
    pub backpressure_waits: u64,
    /// Nanoseconds commits spent waiting for memory.
    pub backpressure_wait_ns: u64,
    /// Where commit time went, per pipeline stage.
    pub commit_stages: CommitStageNanos,
}
