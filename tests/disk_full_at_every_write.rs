//! A full disk (ENOSPC) at every write of a workload: the workload runs once
//! to record the size of each write, then again for every write boundary with
//! the disk filling up exactly there. The failing operation returns an error
//! that says the disk is full, later commits are refused cleanly, and once
//! space is back the database opens with every acknowledged commit (and
//! nothing more than was attempted) and keeps working.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mmsb::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage, StorageFile};
use mmsb::{Database, Options};

const COMMITS: u64 = 24;

fn db_path() -> PathBuf {
    PathBuf::from("/full/db.mmsb")
}

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        tlog_segment_bytes: 8 * 1024,
        ..Options::default()
    }
}

/// Passes everything through to `inner`, recording the length of every write.
#[derive(Debug, Clone)]
struct Recording {
    inner: Arc<dyn Storage>,
    sizes: Arc<Mutex<Vec<u64>>>,
}

#[derive(Debug)]
struct RecordingFile {
    inner: Arc<dyn StorageFile>,
    sizes: Arc<Mutex<Vec<u64>>>,
}

impl Storage for Recording {
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(RecordingFile {
            inner: self.inner.open_file(path, create)?,
            sizes: Arc::clone(&self.sizes),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
}

impl StorageFile for RecordingFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.sizes
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(buf.len() as u64);
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
}

/// What one run of the workload got done before its first error.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: u64,
    attempted: u64,
    /// The first error, as displayed.
    error: Option<String>,
    /// The commit tried after the error failed too.
    refused_after_failure: bool,
}

/// Opens, commits with checkpoints after a third and after the last commit,
/// stops at the first error and then tries one more commit.
fn run_workload(storage: Arc<dyn Storage>) -> Outcome {
    let mut outcome = Outcome::default();
    let db = match options(storage).open(db_path()) {
        Ok(db) => db,
        Err(err) => {
            outcome.error = Some(format!("open: {err}"));
            return outcome;
        }
    };
    for index in 0..COMMITS {
        outcome.attempted = index + 1;
        let step = common::run_commit(&db, index).and_then(|()| {
            if index == COMMITS / 3 || index + 1 == COMMITS {
                db.checkpoint().map(drop)
            } else {
                Ok(())
            }
        });
        match step {
            Ok(()) => outcome.acknowledged = index + 1,
            Err(err) => {
                // The commit itself may have succeeded before the checkpoint failed.
                if common::committed_count(&db).is_ok_and(|n| n == index + 1) {
                    outcome.acknowledged = index + 1;
                }
                outcome.error = Some(err.to_string());
                outcome.refused_after_failure = common::run_commit(&db, index + 1).is_err();
                return outcome;
            }
        }
    }
    outcome
}

/// Bytes written before each write of the fault-free workload.
fn write_boundaries() -> Vec<u64> {
    let recording = Recording {
        inner: Arc::new(MemStorage::new()),
        sizes: Arc::default(),
    };
    let outcome = run_workload(Arc::new(recording.clone()));
    assert_eq!(outcome.acknowledged, COMMITS, "{outcome:?}");
    let sizes = recording.sizes.lock().unwrap().clone();
    let mut total = 0;
    let mut boundaries = Vec::new();
    for size in sizes {
        if size > 0 {
            boundaries.push(total);
        }
        total += size;
    }
    boundaries
}

fn says_disk_full(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("space") || text.contains("full")
}

/// Space is back: reopen (after a crash of the given kind), check every
/// acknowledged commit, commit more and read it back.
fn heal_and_verify(mem: &MemStorage, mode: Option<CrashMode>, outcome: &Outcome, label: &str) {
    if let Some(mode) = mode {
        mem.crash(mode);
    }
    let db: Database = options(Arc::new(mem.clone()))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen with space back failed: {err}"));
    let present = common::committed_count(&db).unwrap_or_else(|err| panic!("{label}: {err}"));
    assert!(
        present >= outcome.acknowledged && present <= outcome.attempted,
        "{label}: {present} commits present, {} acknowledged, {} attempted",
        outcome.acknowledged,
        outcome.attempted
    );
    common::verify_against_model(&db, present).unwrap_or_else(|diff| panic!("{label}: {diff}"));
    for index in present..present + 3 {
        common::run_commit(&db, index)
            .unwrap_or_else(|err| panic!("{label}: commit {index} with space back: {err}"));
    }
    db.checkpoint()
        .unwrap_or_else(|err| panic!("{label}: checkpoint with space back: {err}"));
    common::verify_against_model(&db, present + 3).unwrap_or_else(|diff| panic!("{label}: {diff}"));
}

#[test]
fn disk_full_at_every_write_loses_nothing_acknowledged() {
    let boundaries = write_boundaries();
    let mut points = 0;
    for (write, &limit) in boundaries.iter().enumerate() {
        for mode in [None, Some(CrashMode::DropUnsynced)] {
            let mem = MemStorage::new();
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            faulty.set_plan(FaultPlan {
                disk_full_after_bytes: Some(limit),
                ..FaultPlan::default()
            });
            let outcome = run_workload(Arc::new(faulty.clone()));
            let label = format!("disk full at write {write} (after {limit} bytes), crash {mode:?}");
            assert!(
                faulty.counters().faults_injected() > 0,
                "{label}: the disk never filled"
            );
            let error = outcome
                .error
                .clone()
                .unwrap_or_else(|| panic!("{label}: no operation failed"));
            assert!(says_disk_full(&error), "{label}: unclear error: {error}");
            assert!(
                outcome.attempted == 0 || outcome.refused_after_failure,
                "{label}: a commit was accepted after the disk filled"
            );
            drop(faulty);
            heal_and_verify(&mem, mode, &outcome, &label);
            points += 1;
        }
    }
    eprintln!(
        "disk full: {} write boundaries, {points} fault points tried (each also after a crash that drops unsynced writes)",
        boundaries.len()
    );
    assert!(boundaries.len() >= 20);
}
