//! Opening: one process (one open handle) at a time, creation on first open,
//! page sizes, non-databases refused, and `Eventual` durability's promise.

use std::sync::Arc;

use mmsb::storage::{CrashMode, MemStorage};
use mmsb::{Database, Durability, Error, Options};

#[test]
fn a_second_open_of_the_same_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.mmsb");
    let _first = Database::open(&path).unwrap();
    match Database::open(&path) {
        Err(Error::DatabaseLocked(locked)) => assert_eq!(locked, path),
        other => panic!("expected DatabaseLocked, got {other:?}"),
    }
}

#[test]
fn the_lock_is_released_when_the_database_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relock.mmsb");
    drop(Database::open(&path).unwrap());
    Database::open(&path).unwrap();
}

#[test]
fn every_supported_page_size_round_trips() {
    for page_size in [4096u32, 8192, 16384, 32768, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sized.mmsb");
        {
            let db = Options {
                page_size,
                ..Options::default()
            }
            .open(&path)
            .unwrap();
            let mut tx = db.begin_write().unwrap();
            tx.open_table("t")
                .unwrap()
                .insert(b"k", &vec![7u8; 3000])
                .unwrap();
            tx.commit().unwrap();
        }
        // The file's page size wins over the option on reopen.
        let db = Options {
            page_size: 4096,
            ..Options::default()
        }
        .open(&path)
        .unwrap();
        assert_eq!(db.page_size(), page_size);
        let rx = db.begin_read().unwrap();
        assert_eq!(
            rx.open_table("t")
                .unwrap()
                .get(b"k")
                .unwrap()
                .unwrap()
                .len(),
            3000
        );
    }
}

#[test]
fn unsupported_page_sizes_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Options {
        page_size: 1000,
        ..Options::default()
    }
    .open(dir.path().join("bad.mmsb"))
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(500);
    std::fs::write(&path, &text).unwrap();
    let err = Database::open(&path).unwrap_err();
    assert!(matches!(err, Error::BadFormat(_)), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the file was modified"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "nothing may be created beside a foreign file"
    );
}

#[test]
fn eventual_durability_loses_at_most_the_tail_and_never_corrupts() {
    let storage = MemStorage::new();
    let options = Options {
        storage: Arc::new(storage.clone()),
        durability: Durability::Eventual {
            flush_interval_ms: 60_000,
        },
        checkpoint_on_close: false,
        background_workers: false,
        ..Options::default()
    };
    let db = options.open("/eventual/db.mmsb").unwrap();
    for value in 0..20u64 {
        let mut tx = db.begin_write().unwrap();
        tx.open_table("t")
            .unwrap()
            .insert(b"n", &value.to_le_bytes())
            .unwrap();
        tx.commit().unwrap();
        if value == 9 {
            db.flush().unwrap();
        }
    }
    // Visible at once, before any fsync.
    let rx = db.begin_read().unwrap();
    assert_eq!(
        rx.open_table("t")
            .unwrap()
            .get(b"n")
            .unwrap()
            .unwrap()
            .to_vec(),
        19u64.to_le_bytes()
    );
    drop(rx);
    drop(db);
    storage.crash(CrashMode::DropUnsynced);
    let db = options.open("/eventual/db.mmsb").unwrap();
    let rx = db.begin_read().unwrap();
    let value = rx
        .open_table("t")
        .unwrap()
        .get(b"n")
        .unwrap()
        .unwrap()
        .to_vec();
    let value = u64::from_le_bytes(value.try_into().unwrap());
    assert!(
        (9..20).contains(&value),
        "flushed commits survive; got {value}"
    );
}

#[test]
fn a_bare_relative_file_name_opens_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    // The child process runs in the temporary directory, so the current
    // directory of the test harness (shared by every test thread) is untouched.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mmsb"))
        .args(["demo", "bare.mmsb"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mmsb demo bare.mmsb failed in the current directory"
    );
    assert!(dir.path().join("bare.mmsb").exists());
}
