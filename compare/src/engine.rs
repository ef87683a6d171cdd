//! The engine seam: [`BenchEngine`] (one adapter per engine), the reader and
//! writer it hands to the workload, and [`EngineKind`], which opens each one.
//!
//! The trait works at transaction granularity, like the public redb
//! benchmark's `BenchDatabase`: the workload asks for one write transaction
//! (committed durably when the body returns) or one read snapshot, and drives
//! the operations inside it through `dyn` reader and writer objects. The
//! adapter keeps its transaction and table handles on its own stack, so no
//! engine's lifetimes leak into the workload.

use std::path::Path;

use crate::engines;
use crate::error::{Error, Result};

/// Cache size given to every engine that has one (redb, fjall, SQLite), as
/// in the public redb benchmark; also LMDB's map size.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024 * 1024;

/// One engine under test, opened on a directory of its own.
pub trait BenchEngine: Send + Sync {
    /// Short name used in tables and file names.
    fn name(&self) -> &'static str;

    /// Runs `body` in one write transaction and commits it in the engine's
    /// durable mode (the commit returns after the data is on disk).
    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()>;

    /// Runs `body` in one read transaction (a consistent snapshot).
    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()>;

    /// The engine's normal step before measuring its file size after
    /// removals; returns a one-line description of what it did.
    fn compact(&mut self) -> Result<&'static str>;

    /// Engine counters since the previous call, for diagnosis (mmsb reports
    /// its commit pipeline; the others report nothing).
    fn stats(&self) -> Option<String> {
        None
    }
}

/// Writes inside one write transaction.
pub trait KvWriter {
    /// Stores `value` under `key`, replacing any value there.
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `key`.
    fn remove(&mut self, key: &[u8]) -> Result<()>;
}

/// Reads inside one read transaction.
pub trait KvReader {
    /// [`value_digest`] of the value under `key`, or `None` when absent.
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>>;

    /// Reads up to `limit` entries from the first key `>= start`, in key order.
    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary>;

    /// Number of entries in the table.
    fn entry_count(&mut self) -> Result<u64>;
}

/// What one range scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Entries read.
    pub entries: u64,
    /// Wrapping sum of [`entry_digest`] over the entries read.
    pub digest: u64,
}

impl ScanSummary {
    /// Adds one entry.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.entries += 1;
        self.digest = self.digest.wrapping_add(entry_digest(key, value));
    }

    /// Adds another summary.
    pub fn merge(&mut self, other: ScanSummary) {
        self.entries += other.entries;
        self.digest = self.digest.wrapping_add(other.digest);
    }
}

/// A cheap fingerprint of a value that every engine must compute from the
/// bytes it returns: its first 8 bytes (little-endian, zero-padded) plus its
/// length. It makes each read touch the value, and catches wrong values.
pub fn value_digest(value: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let take = value.len().min(head.len());
    head[..take].copy_from_slice(&value[..take]);
    u64::from_le_bytes(head).wrapping_add(value.len() as u64)
}

/// Fingerprint of one scanned entry: [`value_digest`] of the value, rotated,
/// plus the first key byte (so that a scan returning the wrong keys fails).
pub fn entry_digest(key: &[u8], value: &[u8]) -> u64 {
    let key_head = key.first().copied().map_or(0, u64::from);
    value_digest(value).rotate_left(7).wrapping_add(key_head)
}

/// The engines this benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// mmsb, this repository's engine.
    Mmsb,
    /// redb.
    Redb,
    /// LMDB through heed.
    Lmdb,
    /// fjall (LSM tree).
    Fjall,
    /// SQLite through rusqlite (bundled).
    Sqlite,
}

impl EngineKind {
    /// Every engine, in table column order.
    pub const ALL: [EngineKind; 5] = [
        EngineKind::Mmsb,
        EngineKind::Redb,
        EngineKind::Lmdb,
        EngineKind::Fjall,
        EngineKind::Sqlite,
    ];

    /// Name used on the command line, in tables and in file names.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Mmsb => "mmsb",
            EngineKind::Redb => "redb",
            EngineKind::Lmdb => "lmdb",
            EngineKind::Fjall => "fjall",
            EngineKind::Sqlite => "sqlite",
        }
    }

    /// The crate that provides the engine (for version look-ups).
    pub fn crate_name(self) -> &'static str {
        match self {
            EngineKind::Mmsb => "mmsb",
            EngineKind::Redb => "redb",
            EngineKind::Lmdb => "heed",
            EngineKind::Fjall => "fjall",
            EngineKind::Sqlite => "rusqlite",
        }
    }

    /// Parses a name as printed by [`EngineKind::name`].
    pub fn parse(name: &str) -> Result<EngineKind> {
        EngineKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown engine '{name}' (known: mmsb, redb, lmdb, fjall, sqlite)"
                ))
            })
    }

    /// Parses a comma-separated list of engine names.
    pub fn parse_list(list: &str) -> Result<Vec<EngineKind>> {
        let kinds = list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(EngineKind::parse)
            .collect::<Result<Vec<_>>>()?;
        if kinds.is_empty() {
            return Err(Error::Config("no engine selected".into()));
        }
        Ok(kinds)
    }

    /// How the engine is configured for durability, for the report.
    pub fn durability_note(self) -> &'static str {
        match self {
            EngineKind::Mmsb => "`Options::default()` (`Durability::Immediate`: TLog fsync before commit returns, group commit; background workers on) except `max_commit_bytes` = 1 GiB, the TLog format's largest frame (the 64 MiB default rejects the bulk load's commit from about 370 000 entries up)",
            EngineKind::Redb => "defaults (`Durability::Immediate`), cache 4 GiB",
            EngineKind::Lmdb => "default env flags (fsync on commit), map size 4 GiB",
            EngineKind::Fjall => "`SingleWriterTxDatabase`, every write tx `.durability(Some(PersistMode::SyncAll))`, cache 4 GiB",
            EngineKind::Sqlite => "bundled SQLite, `journal_mode=WAL`, `synchronous=FULL`, `cache_size` 4 GiB, one `kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID` table, cached prepared statements",
        }
    }

    /// Opens a fresh engine whose files all live under `dir` (which exists
    /// and is empty).
    pub fn open(self, dir: &Path) -> Result<Box<dyn BenchEngine>> {
        debug_assert!(dir.is_dir(), "engine directory must exist");
        Ok(match self {
            EngineKind::Mmsb => Box::new(engines::mmsb::MmsbEngine::open(dir)?),
            EngineKind::Redb => Box::new(engines::redb::RedbEngine::open(dir)?),
            EngineKind::Lmdb => Box::new(engines::lmdb::LmdbEngine::open(dir)?),
            EngineKind::Fjall => Box::new(engines::fjall::FjallEngine::open(dir)?),
            EngineKind::Sqlite => Box::new(engines::sqlite::SqliteEngine::open(dir)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn engine_names_round_trip() {
        for kind in EngineKind::ALL {
            assert_eq!(EngineKind::parse(kind.name()).ok(), Some(kind));
        }
        assert!(EngineKind::parse("rocksdb").is_err());
        assert_eq!(
            EngineKind::parse_list("mmsb, sqlite").ok(),
            Some(vec![EngineKind::Mmsb, EngineKind::Sqlite])
        );
        assert!(EngineKind::parse_list(" , ").is_err());
    }

    #[test]
    fn value_digest_sees_head_and_length() {
        assert_eq!(value_digest(&[]), 0);
        assert_eq!(value_digest(&[1]), 2);
        assert_ne!(value_digest(&[1, 2, 3]), value_digest(&[1, 2, 3, 0]));
        assert_ne!(value_digest(&[9; 150]), value_digest(&[8; 150]));
    }

    proptest! {
        #[test]
        fn scan_summary_merge_is_addition(
            a in proptest::collection::vec((any::<u8>(), any::<[u8; 12]>()), 0..20),
            b in proptest::collection::vec((any::<u8>(), any::<[u8; 12]>()), 0..20),
        ) {
            let mut whole = ScanSummary::default();
            let mut left = ScanSummary::default();
            let mut right = ScanSummary::default();
            for (k, v) in &a { whole.add(&[*k], v); left.add(&[*k], v); }
            for (k, v) in &b { whole.add(&[*k], v); right.add(&[*k], v); }
            left.merge(right);
            prop_assert_eq!(left, whole);
        }
    }
}
