//! Helpers the database-level targets share: in-memory options, and reading
//! every table of a database into a plain map to compare with a model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb_engine::{Database, Options};
use mmsb_wal::storage::Storage;

/// Where the targets put their database.
pub const DB_PATH: &str = "/fuzz/db.mmsb";

/// Table name → key → value. Empty tables are left out, so that a table
/// that exists but holds nothing compares equal to a missing one.
pub type Tables = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Options for a database on `storage`: no background threads, no
/// checkpoint on close (the targets checkpoint explicitly).
pub fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// Every non-empty table of `db` as of a fresh read snapshot.
pub fn read_tables(db: &Database) -> mmsb_engine::Result<Tables> {
    let read = db.begin_read()?;
    let mut tables = Tables::new();
    for name in read.list_tables()? {
        let table = read.open_table(&name)?;
        let mut entries = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            entries.insert(key.to_vec(), value.to_vec());
        }
        // The cheap edges must agree with the scan.
        let first = table.first()?.map(|(k, _)| k.to_vec());
        let last = table.last()?.map(|(k, _)| k.to_vec());
        assert_eq!(
            first.as_ref(),
            entries.keys().next(),
            "first() differs from the scan"
        );
        assert_eq!(
            last.as_ref(),
            entries.keys().next_back(),
            "last() differs from the scan"
        );
        assert_eq!(
            table.len(),
            entries.len() as u64,
            "len() differs from the scan"
        );
        if !entries.is_empty() {
            tables.insert(name, entries);
        }
    }
    Ok(tables)
}

/// Drops the empty tables of a model.
pub fn normalized(tables: &Tables) -> Tables {
    tables
        .iter()
        .filter(|(_, entries)| !entries.is_empty())
        .map(|(name, entries)| (name.clone(), entries.clone()))
        .collect()
}

/// Every file of the database (data file, siblings, TLog segments), sorted.
pub fn database_files(storage: &dyn Storage) -> Vec<PathBuf> {
    let db = Path::new(DB_PATH);
    let mut files = Vec::new();
    let dirs = [
        db.parent().unwrap_or(Path::new("/")).to_path_buf(),
        tlog_dir(),
    ];
    for dir in dirs {
        if let Ok(listed) = storage.list_dir(&dir) {
            files.extend(listed);
        }
    }
    files.sort();
    files.dedup();
    files.retain(|path| !path.ends_with("tlog.lock"));
    files
}

/// The TLog directory of [`DB_PATH`].
pub fn tlog_dir() -> PathBuf {
    PathBuf::from(format!("{DB_PATH}-tlog"))
}
