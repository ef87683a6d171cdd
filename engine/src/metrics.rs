//! Engine counters, collected in one place. Exporting them (Prometheus) is
//! a separate concern; this module only counts.

use std::sync::atomic::{AtomicU64, Ordering};

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
    pub(crate) recovery_micros: AtomicU64,
    pub(crate) recovered_commits: AtomicU64,
    pub(crate) double_write_pages_restored: AtomicU64,
    pub(crate) folds: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

impl Metrics {
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
    /// Time the last open spent recovering, in microseconds.
    pub recovery_micros: u64,
    /// Commits replayed from the TLog at the last open.
    pub recovered_commits: u64,
    /// Pages repaired from the double-write file at the last open.
    pub double_write_pages_restored: u64,
    /// Torn-tail bytes the TLog cut at the last open.
    pub tlog_torn_bytes_cut: u64,
    /// Pages held in memory (gauge).
    pub pages_in_memory: u64,
    /// Bytes held only for older snapshots: unfolded deltas and old base images (gauge).
    pub pinned_version_bytes: u64,
    /// Live read snapshots (gauge).
    pub live_snapshots: u64,
    /// Page versions folded by the merge worker or at commit.
    pub folds: u64,
    /// Transactions refused at commit with `Error::Conflict`.
    pub conflicts: u64,
}
