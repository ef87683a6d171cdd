//! Target that opens arbitrary or damaged bytes as a database: the data
//! file (header slots, meta page, sealed pages), the double-write file, the
//! checkpoint manifest and the TLog segments, on an in-memory file system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use mmsb_engine::Database;
use mmsb_wal::storage::{MemStorage, Storage};
use mmsb_wal::tlog::format::segment_file_name;

use crate::db_util::{self, Tables, DB_PATH};

/// Table names the built databases use.
const TABLES: [&str; 2] = ["alpha", "beta"];

/// Table the target writes into after a successful open.
const PROBE_TABLE: &str = "fuzz-probe";

/// A step of building the database that is then damaged.
#[derive(Debug, Arbitrary)]
enum BuildStep {
    Insert { table: bool, key: u8, value: Value },
    Remove { table: bool, key: u8 },
    Commit,
    Checkpoint,
}

/// A value: given outright, or one byte repeated (cheap overflow pages).
#[derive(Debug, Arbitrary)]
enum Value {
    Given(Vec<u8>),
    Repeated { byte: u8, len: u16 },
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Given(bytes) => bytes.clone(),
            Value::Repeated { byte, len } => vec![*byte; usize::from(*len % 12_000)],
        }
    }
}

/// Damage to one of the database's files (picked modulo their number).
#[derive(Debug, Arbitrary)]
enum FileDamage {
    /// Flips the bits of `mask` in one byte.
    Xor { file: u8, offset: u32, mask: u8 },
    /// Cuts the file to `len` bytes (when shorter).
    Truncate { file: u8, len: u32 },
    /// Overwrites bytes at `offset`.
    Overwrite {
        file: u8,
        offset: u32,
        bytes: Vec<u8>,
    },
    /// Removes the file.
    Remove { file: u8 },
}

/// Input of [`open_arbitrary_database`].
#[derive(Debug, Arbitrary)]
enum OpenInput {
    /// Files given byte for byte.
    Raw {
        data_file: Option<Vec<u8>>,
        segment: Option<Vec<u8>>,
        double_write: Option<Vec<u8>>,
        manifest: Option<Vec<u8>>,
    },
    /// A real database built by `steps`, then damaged.
    Damaged {
        steps: Vec<BuildStep>,
        damage: Vec<FileDamage>,
    },
}

/// Fuzz target `open_arbitrary_database`: opening must give `Ok` or a typed
/// error, never a panic. A database that opens and reads whole holds
/// exactly the tables of some acknowledged commit (damage is detected,
/// never returned as data); it then takes a commit and a checkpoint (or
/// refuses them with a typed error), and if it did, reopens with that
/// commit in it.
pub fn open_arbitrary_database(data: &[u8]) {
    let Ok(input) = OpenInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let storage = MemStorage::new();
    let states = match input {
        OpenInput::Raw {
            data_file,
            segment,
            double_write,
            manifest,
        } => {
            let db = Path::new(DB_PATH);
            let files = [
                (db.to_path_buf(), data_file),
                (db_util::tlog_dir().join(segment_file_name(1)), segment),
                (sibling(db, "-dwb"), double_write),
                (sibling(db, "-manifest"), manifest),
            ];
            for (path, bytes) in files {
                if let Some(bytes) = bytes {
                    storage.set_file_bytes(&path, bytes);
                }
            }
            None
        }
        OpenInput::Damaged { steps, damage } => {
            let states = build(&storage, &steps);
            let files = db_util::database_files(&storage);
            for hurt in &damage {
                apply_damage(&storage, &files, hurt);
            }
            Some(states)
        }
    };
    check_open(&storage, states.as_deref());
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

/// Builds a database; returns the table states after each acknowledged
/// commit, the empty database first.
fn build(storage: &MemStorage, steps: &[BuildStep]) -> Vec<Tables> {
    let options = db_util::options(Arc::new(storage.clone()));
    let db = match options.open(DB_PATH) {
        Ok(db) => db,
        Err(err) => panic!("creating an in-memory database failed: {err}"),
    };
    let mut states = vec![Tables::new()];
    let mut pending = Tables::new();
    let mut tx = None;
    for step in steps {
        match step {
            BuildStep::Insert { table, key, value } => {
                let name = TABLES[usize::from(*table)];
                let tx = match &mut tx {
                    Some(tx) => tx,
                    None => tx.insert(begin(&db)),
                };
                let value = value.bytes();
                let inserted = tx
                    .open_table(name)
                    .and_then(|mut t| t.insert(&[*key], &value));
                if let Err(err) = inserted {
                    panic!("insert into a sound database failed: {err}");
                }
                pending
                    .entry(name.to_string())
                    .or_default()
                    .insert(vec![*key], value);
            }
            BuildStep::Remove { table, key } => {
                let name = TABLES[usize::from(*table)];
                let tx = match &mut tx {
                    Some(tx) => tx,
                    None => tx.insert(begin(&db)),
                };
                if let Err(err) = tx.open_table(name).and_then(|mut t| t.remove(&[*key])) {
                    panic!("remove from a sound database failed: {err}");
                }
                pending
                    .entry(name.to_string())
                    .or_default()
                    .remove(&[*key][..]);
            }
            BuildStep::Commit => {
                if let Some(tx) = tx.take() {
                    if let Err(err) = tx.commit() {
                        panic!("commit to a sound database failed: {err}");
                    }
                    states.push(db_util::normalized(&pending));
                }
            }
            BuildStep::Checkpoint => {
                if let Err(err) = db.checkpoint() {
                    panic!("checkpoint of a sound database failed: {err}");
                }
            }
        }
    }
    if let Some(tx) = tx {
        tx.rollback();
    }
    pending.clear();
    states
}

fn begin(db: &Database) -> mmsb_engine::Transaction {
    match db.begin_write() {
        Ok(tx) => tx,
        Err(err) => panic!("begin on a sound database failed: {err}"),
    }
}

fn apply_damage(storage: &MemStorage, files: &[PathBuf], damage: &FileDamage) {
    let file = match damage {
        FileDamage::Xor { file, .. }
        | FileDamage::Truncate { file, .. }
        | FileDamage::Overwrite { file, .. }
        | FileDamage::Remove { file } => *file,
    };
    let Some(path) = files.get(usize::from(file) % files.len().max(1)) else {
        return;
    };
    if let FileDamage::Remove { .. } = damage {
        // Removing a file that is already gone changes nothing.
        let _ = storage.remove_file(path);
        return;
    }
    let Some(mut bytes) = storage.file_bytes(path) else {
        return;
    };
    match damage {
        FileDamage::Xor { offset, mask, .. } => {
            let len = bytes.len().max(1);
            if let Some(byte) = bytes.get_mut(*offset as usize % len) {
                *byte ^= *mask;
            }
        }
        FileDamage::Truncate { len, .. } => bytes.truncate(*len as usize),
        FileDamage::Overwrite {
            offset, bytes: new, ..
        } => {
            let start = *offset as usize % bytes.len().max(1);
            let end = (start + new.len()).min(bytes.len());
            bytes[start..end].copy_from_slice(&new[..end - start]);
        }
        FileDamage::Remove { .. } => {}
    }
    storage.set_file_bytes(path, bytes);
}

/// Opens the database and checks what it shows; `states`: the acknowledged
/// states of a built database (`None` for raw files).
fn check_open(storage: &MemStorage, states: Option<&[Tables]>) {
    let options = db_util::options(Arc::new(storage.clone()));
    let Ok(db) = options.open(DB_PATH) else {
        return;
    };
    let Ok(tables) = db_util::read_tables(&db) else {
        return;
    };
    if let Some(states) = states {
        assert!(
            states.contains(&tables),
            "a damaged database opened with contents that no commit produced: {tables:?}"
        );
    }
    let committed = db.begin_write().and_then(|mut tx| {
        tx.open_table(PROBE_TABLE)?.insert(b"probe", b"value")?;
        tx.commit()
    });
    if committed.is_err() {
        return;
    }
    let mut expected = tables;
    expected
        .entry(PROBE_TABLE.to_string())
        .or_default()
        .insert(b"probe".to_vec(), b"value".to_vec());
    match db_util::read_tables(&db) {
        Ok(now) => assert_eq!(
            now, expected,
            "the probe commit is not what the database shows"
        ),
        Err(_) => return,
    }
    if db.checkpoint().is_err() {
        return;
    }
    drop(db);
    let db = match options.open(DB_PATH) {
        Ok(db) => db,
        Err(err) => panic!("a database that opened and checkpointed fails to reopen: {err}"),
    };
    match db_util::read_tables(&db) {
        Ok(now) => assert_eq!(now, expected, "reopening changed the database"),
        Err(err) => panic!("a database that opened and checkpointed fails to read: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<BuildStep> {
        let mut steps = Vec::new();
        for key in 0..30u8 {
            steps.push(BuildStep::Insert {
                table: key % 2 == 0,
                key,
                value: Value::Repeated {
                    byte: key,
                    len: 300,
                },
            });
            if key % 10 == 9 {
                steps.push(BuildStep::Commit);
            }
            if key == 19 {
                steps.push(BuildStep::Checkpoint);
            }
        }
        steps.push(BuildStep::Remove {
            table: false,
            key: 1,
        });
        steps.push(BuildStep::Commit);
        steps
    }

    #[test]
    fn sound_database_reopens_with_its_last_commit() {
        let storage = MemStorage::new();
        let states = build(&storage, &steps());
        assert_eq!(states.len(), 5);
        let db = db_util::options(Arc::new(storage.clone()))
            .open(DB_PATH)
            .map_err(|e| e.to_string());
        let tables = db.and_then(|db| db_util::read_tables(&db).map_err(|e| e.to_string()));
        assert_eq!(tables.as_ref(), Ok(&states[4]));
        check_open(&storage, Some(&states));
    }

    #[test]
    fn damaged_databases_open_or_fail_cleanly() {
        for offset in (0..20_000u32).step_by(997) {
            let storage = MemStorage::new();
            let states = build(&storage, &steps());
            let files = db_util::database_files(&storage);
            assert!(files.len() >= 2, "files: {files:?}");
            for file in 0..files.len() as u8 {
                apply_damage(
                    &storage,
                    &files,
                    &FileDamage::Xor {
                        file,
                        offset,
                        mask: 0x10,
                    },
                );
            }
            check_open(&storage, Some(&states));
        }
    }

    #[test]
    fn raw_garbage_is_refused() {
        open_arbitrary_database(&[0; 64]);
        open_arbitrary_database(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }
}
