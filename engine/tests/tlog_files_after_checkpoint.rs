//! The TLog's files after a checkpoint: once a checkpoint covers every
//! commit, the TLog directory holds at most the lock file and a spare of one
//! preallocation step, whatever the commits wrote (a bulk load, a large
//! removal); the database still recovers every acknowledged commit after a
//! crash, from a log with no segment left. A small damaged database whose
//! TLog a checkpoint emptied is reported, never taken for an interrupted
//! creation and recreated empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb_engine::page_file::HEADER_MAGIC;
use mmsb_engine::{Database, Options};
use mmsb_wal::storage::{CrashMode, MemStorage, Storage};
use mmsb_wal::tlog::DEFAULT_PREALLOCATE_BYTES;

fn db_path() -> PathBuf {
    PathBuf::from("/runs/kv.mmsb")
}

fn tlog_dir(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-tlog");
    PathBuf::from(name)
}

fn options(storage: &MemStorage) -> Options {
    Options {
        storage: Arc::new(storage.clone()),
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// Bytes of every file in the TLog directory (unsynced writes included).
fn tlog_bytes(storage: &MemStorage) -> usize {
    storage
        .list_dir(&tlog_dir(&db_path()))
        .expect("list the TLog directory")
        .iter()
        .map(|path| storage.file_bytes(path).map_or(0, |bytes| bytes.len()))
        .sum()
}

/// Incompressible bytes (a xorshift stream), so commits log what they write.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key(i: u64) -> Vec<u8> {
    noise(i + 1, 24)
}

/// Every entry of the table, in key order.
fn entries(db: &Database) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let rx = db.begin_read().expect("begin_read");
    let table = rx.open_table("t").expect("open_table");
    let mut out = BTreeMap::new();
    for entry in table.iter().expect("iter") {
        let (k, v) = entry.expect("entry");
        out.insert(k.to_vec(), v.to_vec());
    }
    out
}

/// Creates table `t` holding keys `0..entries` with 150 bytes of noise
/// each (seeded from the key plus `seed`) in one commit; returns the model.
fn load(db: &Database, entries: u64, seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    let mut tx = db.begin_write().expect("begin_write");
    {
        let mut table = tx.create_table("t").expect("create_table");
        for i in 0..entries {
            let value = noise(i + seed, 150);
            table.insert(&key(i), &value).expect("insert");
            model.insert(key(i), value);
        }
    }
    tx.commit().expect("commit");
    model
}

/// Commits `key` = `value` into table `t` alone, and into the model.
fn put(db: &Database, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], value: &[u8]) {
    let mut tx = db.begin_write().expect("begin_write");
    tx.open_table("t")
        .expect("open_table")
        .insert(key, value)
        .expect("insert");
    tx.commit().expect("commit");
    model.insert(key.to_vec(), value.to_vec());
}

#[test]
fn a_checkpoint_leaves_at_most_one_preallocation_step_of_tlog() {
    let storage = MemStorage::new();
    let db = options(&storage).open(db_path()).expect("open");
    // About 6 MiB of commits: far more than the bound checked below.
    let mut model = load(&db, 40_000, 1_000_000);
    assert!(tlog_bytes(&storage) > 5 << 20);
    db.checkpoint().expect("checkpoint");
    let bound = DEFAULT_PREALLOCATE_BYTES as usize;
    assert!(
        tlog_bytes(&storage) <= bound,
        "{} TLog bytes after the load's checkpoint",
        tlog_bytes(&storage)
    );
    // One large removal commit, then the compaction step's checkpoint.
    let mut tx = db.begin_write().expect("begin_write");
    {
        let mut table = tx.open_table("t").expect("open_table");
        for i in (0..40_000).step_by(2) {
            table.delete(&key(i)).expect("delete");
            model.remove(&key(i));
        }
    }
    tx.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
    assert!(
        tlog_bytes(&storage) <= bound,
        "{} TLog bytes after the removal's checkpoint",
        tlog_bytes(&storage)
    );
    // A commit after the checkpoint, then a crash: both survive.
    put(&db, &mut model, b"after", b"checkpoint");
    storage.crash(CrashMode::DropUnsynced);
    drop(db);
    let db = options(&storage).open(db_path()).expect("reopen");
    assert!(
        entries(&db) == model,
        "the reopened table differs from the model"
    );
}

#[test]
fn a_crash_right_after_a_checkpoint_emptied_the_tlog_loses_nothing() {
    for mode in [
        CrashMode::DropUnsynced,
        CrashMode::KeepUnsynced,
        CrashMode::TearUnsynced { seed: 5 },
    ] {
        let storage = MemStorage::new();
        let db = options(&storage).open(db_path()).expect("open");
        let mut model = load(&db, 12_000, 7);
        db.checkpoint().expect("checkpoint");
        storage.crash(mode);
        drop(db);
        let db = options(&storage).open(db_path()).expect("reopen");
        assert!(entries(&db) == model, "{mode:?}: the table differs");
        // The next commit goes to a fresh segment and survives a reopen.
        put(&db, &mut model, b"next", b"commit");
        drop(db);
        let db = options(&storage).open(db_path()).expect("reopen");
        assert!(entries(&db) == model, "{mode:?}: the next commit was lost");
    }
}

#[test]
fn a_damaged_small_database_with_an_emptied_tlog_is_reported_not_recreated() {
    let storage = MemStorage::new();
    // Segments of 64 KiB: a checkpoint retires an active segment of 16 KiB.
    let small_log = || Options {
        tlog_segment_bytes: 64 << 10,
        ..options(&storage)
    };
    let db = small_log().open(db_path()).expect("open");
    let mut tx = db.begin_write().expect("begin_write");
    {
        let mut table = tx.create_table("t").expect("create_table");
        for i in 0..40 {
            table.insert(&key(i), &noise(i, 600)).expect("insert");
        }
    }
    tx.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
    drop(db);
    let file = storage.file_bytes(&db_path()).expect("data file");
    assert!(file.len() <= 2 * 64 * 1024, "the database is small");
    let segments = storage
        .list_dir(&tlog_dir(&db_path()))
        .expect("list")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|ext| ext == "seg"))
        .count();
    assert_eq!(segments, 0, "the checkpoint emptied the TLog");
    // Damage the header page past its magic: not a half-created file.
    let data = storage
        .open_file(&db_path(), false)
        .expect("open data file");
    let garbage = vec![0xA5u8; 4096 - HEADER_MAGIC.len()];
    data.write_all_at(&garbage, HEADER_MAGIC.len() as u64)
        .expect("damage");
    assert!(small_log().open(db_path()).is_err());
    let after = storage.file_bytes(&db_path()).expect("data file");
    assert_eq!(after.len(), file.len(), "the damaged file was recreated");
}
