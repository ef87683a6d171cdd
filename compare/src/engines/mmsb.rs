//! mmsb through its public facade (`mmsb::Database`), opened with the
//! default options (durable commits: TLog fsync before `commit` returns,
//! group commit; background merge and checkpoint workers on) except one:
//! `max_commit_bytes` is raised to the TLog format's largest frame, because
//! the 64 MiB default rejects the bulk load's single commit at N = 1 000 000
//! (about 180 MB of deltas).
//! Compaction step: `Database::checkpoint`, which writes pages back and
//! truncates the TLog. Removals call `Table::delete`, the blind removal
//! (the benchmark ignores the removed value, so it is not looked up).

use std::path::Path;

use mmsb::{Database, MetricsSnapshot, Options, ReadOnlyTable, Table};
use parking_lot::Mutex;

use super::TABLE;
use crate::engine::{value_digest, BenchEngine, KvReader, KvWriter, ScanSummary};
use crate::error::{Error, Result};

const NAME: &str = "mmsb";

/// File name of the data file inside the engine directory (the TLog
/// directory and the double-write file sit beside it).
const FILE_NAME: &str = "kv.mmsb";

/// Largest commit accepted: the TLog format's frame payload limit (1 GiB).
const MAX_COMMIT_BYTES: u64 = 1 << 30;

/// mmsb on one database file.
pub struct MmsbEngine {
    db: Database,
    /// Counters at the previous [`BenchEngine::stats`] call.
    last_metrics: Mutex<MetricsSnapshot>,
}

impl MmsbEngine {
    /// Creates the database under `dir` and its table.
    pub fn open(dir: &Path) -> Result<MmsbEngine> {
        let options = Options {
            max_commit_bytes: MAX_COMMIT_BYTES,
            ..Options::default()
        };
        let db = options
            .open(dir.join(FILE_NAME))
            .map_err(Error::engine(NAME, "open"))?;
        let mut tx = db
            .begin_write()
            .map_err(Error::engine(NAME, "begin_write"))?;
        tx.open_table(TABLE)
            .map_err(Error::engine(NAME, "open_table"))?;
        tx.commit().map_err(Error::engine(NAME, "commit"))?;
        let last_metrics = Mutex::new(db.metrics());
        Ok(MmsbEngine { db, last_metrics })
    }
}

impl BenchEngine for MmsbEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(Error::engine(NAME, "begin_write"))?;
        {
            let table = tx
                .open_table(TABLE)
                .map_err(Error::engine(NAME, "open_table"))?;
            body(&mut MmsbWriter { table })?;
        }
        tx.commit().map_err(Error::engine(NAME, "commit"))?;
        Ok(())
    }

    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()> {
        let rx = self
            .db
            .begin_read()
            .map_err(Error::engine(NAME, "begin_read"))?;
        let table = rx
            .open_table(TABLE)
            .map_err(Error::engine(NAME, "open_table"))?;
        body(&mut MmsbReader { table })
    }

    fn compact(&mut self) -> Result<&'static str> {
        self.db
            .checkpoint()
            .map_err(Error::engine(NAME, "checkpoint"))?;
        Ok("`db.checkpoint()` (pages written back, TLog truncated)")
    }

    fn stats(&self) -> Option<String> {
        let now = self.db.metrics();
        let before = std::mem::replace(&mut *self.last_metrics.lock(), now.clone());
        Some(format!(
            "{} | files: {}",
            metrics_delta(&before, &now),
            file_breakdown(self.db.path())
        ))
    }
}

/// Sizes of the data file, the TLog directory (and its segment count) and
/// the double-write file of the database at `path`.
fn file_breakdown(path: &Path) -> String {
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let (segments, tlog_bytes) = std::fs::read_dir(with_suffix("-tlog"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .fold((0usize, 0u64), |(n, b), m| (n + 1, b + m.len()))
        })
        .unwrap_or((0, 0));
    format!(
        "data {:.1} MiB, tlog {:.1} MiB in {segments} files, dwb {:.1} MiB",
        mib(len(path)),
        mib(tlog_bytes),
        mib(len(&with_suffix("-dwb")))
    )
}

/// The counters that moved between two snapshots, as one line.
fn metrics_delta(before: &MetricsSnapshot, now: &MetricsSnapshot) -> String {
    let ms = |after: u64, before: u64| after.saturating_sub(before) as f64 / 1e6;
    let (a, b) = (&now.commit_stages, &before.commit_stages);
    format!(
        "commits {} tlog_fsyncs {} tlog_MiB {:.1} data_fsyncs {} pages_written_back {} \
         checkpoints {} (deferred {}) pages_read {} folds {} | stage ms: validate {:.1} tree_apply {:.1} \
         diff {:.1} encode {:.1} log_append {:.1} install {:.1} durable_wait {:.1} \
         publish_fold {:.1} | pages_in_memory {} pinned_version_bytes {} huge_page_regions {} (refused {})",
        now.commits.saturating_sub(before.commits),
        now.tlog_fsyncs.saturating_sub(before.tlog_fsyncs),
        now.tlog_bytes_written
            .saturating_sub(before.tlog_bytes_written) as f64
            / 1048576.0,
        now.data_fsyncs.saturating_sub(before.data_fsyncs),
        now.pages_written_back
            .saturating_sub(before.pages_written_back),
        now.checkpoints.saturating_sub(before.checkpoints),
        now.checkpoints_deferred
            .saturating_sub(before.checkpoints_deferred),
        now.pages_read_from_disk
            .saturating_sub(before.pages_read_from_disk),
        now.folds.saturating_sub(before.folds),
        ms(a.validate, b.validate),
        ms(a.tree_apply, b.tree_apply),
        ms(a.diff, b.diff),
        ms(a.encode, b.encode),
        ms(a.log_append, b.log_append),
        ms(a.install, b.install),
        ms(a.durable_wait, b.durable_wait),
        ms(a.publish_fold, b.publish_fold),
        now.pages_in_memory,
        now.pinned_version_bytes,
        now.huge_page_regions_collapsed,
        now.huge_page_collapses_refused,
    )
}

struct MmsbWriter<'t> {
    table: Table<'t>,
}

impl KvWriter for MmsbWriter<'_> {
    /// A blind put: the benchmark ignores the replaced value, so it calls
    /// what such a user would (`Table::put`, no lookup of the old value;
    /// LMDB's, fjall's and SQLite's writes return none either).
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.table
            .put(key, value)
            .map_err(Error::engine(NAME, "put"))
    }

    /// A blind delete: the benchmark ignores the removed value, so it
    /// calls what such a user would (no lookup of the old value).
    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.table
            .delete(key)
            .map_err(Error::engine(NAME, "delete"))
    }
}

struct MmsbReader<'r> {
    table: ReadOnlyTable<'r>,
}

impl KvReader for MmsbReader<'_> {
    /// A borrowed read (`ReadOnlyTable::get_with`): the value is lent to
    /// the digest for the length of the call, as the other adapters read
    /// theirs: LMDB's `&[u8]` into its map, SQLite's `&[u8]` into the
    /// statement's row (both borrowed, no copy, no count); redb's
    /// `AccessGuard` holds its page's `Arc<[u8]>` and fjall's `Slice` is
    /// an owned, reference-counted byte view (what mmsb's `get` returns
    /// is the like of those two).
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        self.table
            .get_with(key, value_digest)
            .map_err(Error::engine(NAME, "get"))
    }

    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
        let mut summary = ScanSummary::default();
        let mut range = self
            .table
            .range(start..)
            .map_err(Error::engine(NAME, "range"))?;
        // Entries lent from the pinned leaf page, valid until the next call.
        for _ in 0..limit {
            let Some(entry) = range.next_entry() else {
                break;
            };
            let (key, value) = entry.map_err(Error::engine(NAME, "range next"))?;
            summary.add(key, value);
        }
        Ok(summary)
    }

    fn entry_count(&mut self) -> Result<u64> {
        Ok(self.table.len())
    }
}
