//! `mmsb check --repair`: copies every table and row still readable from a
//! damaged database into a new one.
//!
//! The source is read through the same read-only image as `mmsb check`
//! (checkpointed pages verified on every read, the TLog replayed as far as it
//! is intact). The catalog and each table's tree are walked tolerantly: a
//! page that fails verification is skipped with the key range it covered,
//! and the walk goes on with its siblings. No row is ever taken from a page
//! that failed verification. Rows are written to the new database through
//! the ordinary transaction API, in batches, so the result is a valid
//! database; by default it is then checked with [`check_database`].
//! SQL tables and their schema (`__schema`) are ordinary tables here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb_wal::storage::{FileStorage, Storage};
use mmsb_wal::{CommitEpoch, PageId};

use crate::btree::{self, LostPage, TreeHeader};
use crate::catalog::{self, TableEntry};
use crate::check::{
    check_database, open_image, read_meta, CheckOptions, CheckReport, DbImage, Finding, Findings,
};
use crate::db::{Database, Options};
use crate::error::{Error, Result};
use crate::mvcc::Transaction;

/// Rows a salvage transaction copies before it commits.
pub const SALVAGE_BATCH_ROWS: u64 = 10_000;
/// Key and value bytes a salvage transaction copies before it commits.
pub const SALVAGE_BATCH_BYTES: u64 = 32 << 20;

/// How to run [`salvage`].
#[derive(Clone)]
pub struct SalvageOptions<'a> {
    /// Where the damaged database lives; the real file system by default.
    pub storage: Arc<dyn Storage>,
    /// How the new database is created (its storage, durability). Its page
    /// size is taken from the source.
    pub output: Options,
    /// Run [`check_database`] on the new database once it is written.
    pub verify_output: bool,
    /// Called after each table is copied.
    pub progress: Option<&'a dyn Fn(&TableSalvage)>,
}

impl Default for SalvageOptions<'_> {
    fn default() -> Self {
        SalvageOptions {
            storage: Arc::new(FileStorage),
            output: Options::default(),
            verify_output: true,
            progress: None,
        }
    }
}

impl fmt::Debug for SalvageOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalvageOptions")
            .field("storage", &self.storage)
            .field("output", &self.output)
            .field("verify_output", &self.verify_output)
            .finish()
    }
}

/// A damaged page and the keys it (with its subtree) held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    /// The page that could not be used (a tree node, or the first page of an
    /// overflow chain).
    pub page: PageId,
    /// Smallest key it could hold (`None`: unbounded).
    pub from: Option<Vec<u8>>,
    /// Its keys lie below this one (`None`: unbounded).
    pub to: Option<Vec<u8>>,
    /// Why it could not be used.
    pub reason: String,
}

impl From<LostPage> for LostRange {
    fn from(lost: LostPage) -> Self {
        LostRange {
            page: lost.page,
            from: lost.lo,
            to: lost.hi,
            reason: lost.reason,
        }
    }
}

/// What was saved of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSalvage {
    /// The table's name.
    pub name: String,
    /// Entries its tree header counted.
    pub rows_expected: u64,
    /// Entries copied into the new database.
    pub rows_copied: u64,
    /// Pages skipped because they failed verification (or could not be parsed).
    pub pages_lost: Vec<LostRange>,
}

impl TableSalvage {
    /// Every entry was copied and no page was lost.
    pub fn is_complete(&self) -> bool {
        self.pages_lost.is_empty() && self.rows_copied == self.rows_expected
    }

    /// Entries counted by the tree header but not copied.
    pub fn rows_lost(&self) -> u64 {
        self.rows_expected.saturating_sub(self.rows_copied)
    }
}

/// The result of [`salvage`].
#[derive(Debug, Clone, PartialEq)]
pub struct SalvageReport {
    /// The damaged database.
    pub source: PathBuf,
    /// The new database.
    pub output: PathBuf,
    /// Newest commit of the source that was read (checkpoint plus the intact TLog).
    pub last_epoch: CommitEpoch,
    /// The meta page was unreadable: no table could be found.
    pub meta_lost: bool,
    /// Catalog pages that were lost: the tables whose names lie in these
    /// ranges are gone (their names are unknown).
    pub catalog_lost: Vec<LostRange>,
    /// Every table found, in name order.
    pub tables: Vec<TableSalvage>,
    /// What reading the source found (header slots, TLog damage).
    pub source_findings: Vec<Finding>,
    /// The check of the new database, when asked for.
    pub output_check: Option<CheckReport>,
}

impl SalvageReport {
    /// Nothing was lost: every table and every row was copied.
    pub fn is_complete(&self) -> bool {
        !self.meta_lost
            && self.catalog_lost.is_empty()
            && self.tables.iter().all(TableSalvage::is_complete)
            && !self
                .source_findings
                .iter()
                .any(|f| f.severity == crate::check::Severity::Error)
    }

    /// Rows copied over all tables.
    pub fn rows_copied(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_copied).sum()
    }

    /// Rows counted by tree headers but not copied, over all tables found.
    pub fn rows_lost(&self) -> u64 {
        self.tables.iter().map(TableSalvage::rows_lost).sum()
    }
}

/// Copies every table and row that can be read intact from the database at
/// `src` (closed; it is locked and never written) into a new database at
/// `dst` (which must not exist), and reports what was lost. `Err` when the
/// salvage cannot run: `src` missing, locked or without a valid header,
/// `dst` existing, or an I/O error.
pub fn salvage(
    src: impl AsRef<Path>,
    dst: impl AsRef<Path>,
    options: &SalvageOptions<'_>,
) -> Result<SalvageReport> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    let out_storage = &options.output.storage;
    let dst_exists = out_storage
        .exists(dst)
        .map_err(|err| Error::io(format!("stat {}", dst.display()), err))?;
    if dst_exists {
        return Err(Error::InvalidArgument(format!(
            "{} already exists: salvage writes a new database",
            dst.display()
        )));
    }
    let mut sink = Findings::new(src);
    let Some(mut image) = open_image(src, &options.storage, &mut sink, &|_| {})? else {
        return Err(Error::Corrupted(format!(
            "{}: both header slots are invalid; nothing can be salvaged",
            src.display()
        )));
    };
    let mut report = SalvageReport {
        source: src.to_path_buf(),
        output: dst.to_path_buf(),
        last_epoch: image.tlog.last_epoch,
        meta_lost: false,
        catalog_lost: Vec::new(),
        tables: Vec::new(),
        source_findings: Vec::new(),
        output_check: None,
    };
    let output = Options {
        page_size: image.page_size,
        ..options.output.clone()
    };
    let db = output.open(dst)?;
    match read_meta(&image, &mut sink) {
        Some(meta) => {
            image.set_page_count(meta.page_count);
            let tables = salvage_catalog(&image, &meta.catalog, &mut report)?;
            for (name, entry) in tables {
                let table = copy_table(&image, &db, &name, &entry)?;
                if let Some(progress) = options.progress {
                    progress(&table);
                }
                report.tables.push(table);
            }
        }
        None => report.meta_lost = true,
    }
    drop(db);
    drop(image);
    report.source_findings = sink.findings;
    if options.verify_output {
        let check = CheckOptions {
            storage: Arc::clone(out_storage),
            progress: None,
        };
        report.output_check = Some(check_database(dst, &check)?);
    }
    Ok(report)
}

/// The tables the catalog still lists; lost catalog pages go to the report.
fn salvage_catalog(
    image: &DbImage,
    catalog_tree: &TreeHeader,
    report: &mut SalvageReport,
) -> Result<Vec<(String, TableEntry)>> {
    let mut tables = Vec::new();
    let outcome = btree::walk_tolerant(image, catalog_tree, &mut |name, value| {
        let name = std::str::from_utf8(name).map(str::to_string);
        match (name, catalog::decode_entry(value)) {
            (Ok(name), Ok(entry)) => tables.push((name, entry)),
            (Ok(name), Err(err)) => report.catalog_lost.push(LostRange {
                page: PageId(0),
                from: Some(name.clone().into_bytes()),
                to: Some(name.into_bytes()),
                reason: err.to_string(),
            }),
            (Err(_), _) => {}
        }
        Ok(())
    })?;
    report
        .catalog_lost
        .extend(outcome.lost.into_iter().map(LostRange::from));
    Ok(tables)
}

/// Copies the readable rows of one table, committing in batches.
fn copy_table(
    image: &DbImage,
    db: &Database,
    name: &str,
    entry: &TableEntry,
) -> Result<TableSalvage> {
    let mut copier = Copier {
        db,
        name,
        tx: None,
        rows_in_tx: 0,
        bytes_in_tx: 0,
        copied: 0,
    };
    // The table exists in the output even when none of its rows survived.
    copier.tx()?.open_table(name)?;
    let outcome = btree::walk_tolerant(image, &entry.tree, &mut |key, value| {
        copier.copy(key, value)
    })?;
    copier.commit()?;
    debug_assert_eq!(outcome.entries, copier.copied);
    Ok(TableSalvage {
        name: name.to_string(),
        rows_expected: entry.tree.len,
        rows_copied: copier.copied,
        pages_lost: outcome.lost.into_iter().map(LostRange::from).collect(),
    })
}

/// Writes rows of one table into the new database in bounded transactions.
struct Copier<'a> {
    db: &'a Database,
    name: &'a str,
    tx: Option<Transaction>,
    rows_in_tx: u64,
    bytes_in_tx: u64,
    copied: u64,
}

impl Copier<'_> {
    fn tx(&mut self) -> Result<&mut Transaction> {
        if self.tx.is_none() {
            self.tx = Some(self.db.begin_write()?);
        }
        self.tx
            .as_mut()
            .ok_or_else(|| Error::Corrupted("internal: salvage transaction missing".into()))
    }

    fn copy(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let name = self.name;
        self.tx()?.open_table(name)?.insert(key, value)?;
        self.copied += 1;
        self.rows_in_tx += 1;
        self.bytes_in_tx += (key.len() + value.len()) as u64;
        if self.rows_in_tx >= SALVAGE_BATCH_ROWS || self.bytes_in_tx >= SALVAGE_BATCH_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.commit()?;
        }
        self.rows_in_tx = 0;
        self.bytes_in_tx = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mmsb_wal::storage::MemStorage;

    use super::*;
    use crate::check::Area;

    fn src() -> PathBuf {
        PathBuf::from("/db/src.mmsb")
    }

    fn dst() -> PathBuf {
        PathBuf::from("/db/dst.mmsb")
    }

    fn options(storage: &MemStorage) -> Options {
        Options {
            storage: Arc::new(storage.clone()),
            background_workers: false,
            checkpoint_on_close: false,
            ..Options::default()
        }
    }

    fn salvage_options(storage: &MemStorage) -> SalvageOptions<'static> {
        SalvageOptions {
            storage: Arc::new(storage.clone()),
            output: options(storage),
            ..SalvageOptions::default()
        }
    }

    /// Table `t` gets row `i` in commit `i + 1`; a checkpoint after 5 commits.
    fn build(commits: u64) -> MemStorage {
        let storage = MemStorage::new();
        let db = options(&storage).open(src()).expect("open");
        for i in 0..commits {
            if i == 5 {
                db.checkpoint().expect("checkpoint");
            }
            let mut tx = db.begin_write().expect("begin");
            tx.open_table("t")
                .expect("t")
                .insert(format!("row{i:03}").as_bytes(), &i.to_le_bytes())
                .expect("insert");
            tx.commit().expect("commit");
        }
        storage
    }

    fn rows(storage: &MemStorage, path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = options(storage).open(path).expect("open output");
        let rx = db.begin_read().expect("read");
        let table = rx.open_table("t").expect("t");
        let rows = table
            .iter()
            .expect("iter")
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("row"))
            .collect();
        rows
    }

    #[test]
    fn commits_after_tlog_damage_are_not_copied() {
        let storage = build(12);
        let dir = crate::check::tlog_dir(&src());
        let segment = storage
            .list_dir(&dir)
            .expect("list")
            .into_iter()
            .rfind(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("segment");
        let mut bytes = storage.file_bytes(&segment).expect("bytes");
        // Find the frame of epoch 9 and damage its payload.
        let mut at = mmsb_wal::tlog::format::SEGMENT_HEADER_BYTES;
        loop {
            let header = mmsb_wal::tlog::format::decode_frame_header(&bytes[at..]).expect("frame");
            if header.epoch == CommitEpoch(9) {
                break;
            }
            at += header.frame_len();
        }
        bytes[at + 25] ^= 1;
        storage.set_file_bytes(&segment, bytes);
        let report = salvage(src(), dst(), &salvage_options(&storage)).expect("salvage");
        assert_eq!(report.last_epoch, CommitEpoch(8));
        assert!(!report.is_complete(), "the TLog damage is reported");
        assert!(report.source_findings.iter().any(|f| f.area == Area::TLog));
        assert_eq!(report.tables[0].rows_copied, 8);
        assert!(report.tables[0].is_complete(), "complete as of epoch 8");
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..8u64)
            .map(|i| (format!("row{i:03}").into_bytes(), i.to_le_bytes().to_vec()))
            .collect();
        assert_eq!(rows(&storage, &dst()), expected);
        assert!(report.output_check.is_some_and(|c| c.is_clean()));
    }

    #[test]
    fn a_lost_meta_page_is_reported_and_the_output_is_still_valid() {
        let storage = build(5);
        {
            let db = options(&storage).open(src()).expect("open");
            db.checkpoint().expect("checkpoint");
        }
        let _ = storage.remove_file(Path::new("/db/src.mmsb-dwb"));
        let mut bytes = storage.file_bytes(&src()).expect("data file");
        bytes[4096 + 40] ^= 1;
        storage.set_file_bytes(&src(), bytes);
        let report = salvage(src(), dst(), &salvage_options(&storage)).expect("salvage");
        assert!(report.meta_lost);
        assert!(report.tables.is_empty());
        assert!(!report.is_complete());
        assert!(report.output_check.is_some_and(|c| c.is_clean()));
    }

    #[test]
    fn batches_split_large_tables_into_several_commits() {
        let storage = build(0);
        {
            let db = options(&storage).open(src()).expect("open");
            let mut tx = db.begin_write().expect("begin");
            let mut t = tx.open_table("t").expect("t");
            for i in 0..SALVAGE_BATCH_ROWS + 10 {
                t.insert(&i.to_be_bytes(), b"v").expect("insert");
            }
            drop(t);
            tx.commit().expect("commit");
            db.checkpoint().expect("checkpoint");
        }
        let report = salvage(src(), dst(), &salvage_options(&storage)).expect("salvage");
        assert_eq!(report.rows_copied(), SALVAGE_BATCH_ROWS + 10);
        let db = options(&storage).open(dst()).expect("open");
        assert!(db.last_commit() >= CommitEpoch(2), "more than one commit");
    }
}
