//! The I/O-error loop (after SQLite's method): run a small workload once to
//! count its writes and fsyncs, then run it again for every one of them with
//! that operation failing (an I/O error, a torn write, a failed fsync),
//! crash, reopen, and check that the database holds exactly a prefix of the
//! workload that includes every acknowledged commit.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use mmsb::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};
use mmsb::{Database, Error, Options};

const COMMITS: u64 = 30;

fn db_path() -> PathBuf {
    PathBuf::from("/faults/db.mmsb")
}

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        tlog_segment_bytes: 16 * 1024,
        ..Options::default()
    }
}

/// What one run of the workload got done before its first error.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: u64,
    attempted: u64,
    failed: bool,
    refused_after_failure: bool,
}

/// Opens, commits `COMMITS` times with checkpoints in the middle and at the
/// end, and stops at the first error. After an error it tries one more
/// commit, which must be refused.
fn run_workload(storage: Arc<dyn Storage>) -> Outcome {
    let mut outcome = Outcome::default();
    let db = match options(storage).open(db_path()) {
        Ok(db) => db,
        Err(_) => {
            outcome.failed = true;
            return outcome;
        }
    };
    for index in 0..COMMITS {
        outcome.attempted = index + 1;
        let step = common::run_commit(&db, index).and_then(|()| {
            if index == COMMITS / 2 || index + 1 == COMMITS {
                db.checkpoint().map(drop)
            } else {
                Ok(())
            }
        });
        match step {
            // The commit itself succeeded even if the checkpoint after it failed.
            Ok(()) => outcome.acknowledged = index + 1,
            Err(_) => {
                outcome.failed = true;
                outcome.refused_after_failure = common::run_commit(&db, index + 1).is_err();
                return outcome;
            }
        }
    }
    outcome
}

/// Crashes, reopens without faults and checks the recovered state.
fn crash_and_verify(mem: &MemStorage, mode: CrashMode, outcome: &Outcome, label: &str) {
    mem.crash(mode);
    let db: Database = options(Arc::new(mem.clone()))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    let present = common::committed_count(&db).unwrap_or_else(|err| panic!("{label}: {err}"));
    assert!(
        present >= outcome.acknowledged,
        "{label}: {} acknowledged, {present} recovered",
        outcome.acknowledged
    );
    assert!(
        present <= outcome.attempted,
        "{label}: {present} recovered but only {} attempted",
        outcome.attempted
    );
    if let Err(diff) = common::verify_against_model(&db, present) {
        panic!("{label}: {diff}");
    }
    // The recovered database keeps working.
    common::run_commit(&db, present)
        .unwrap_or_else(|err| panic!("{label}: commit after recovery: {err}"));
}

fn count_operations() -> (u64, u64) {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let outcome = run_workload(Arc::new(faulty.clone()));
    assert!(!outcome.failed && outcome.acknowledged == COMMITS);
    (faulty.counters().writes(), faulty.counters().syncs())
}

const CRASH_MODES: [CrashMode; 3] = [
    CrashMode::KeepUnsynced,
    CrashMode::DropUnsynced,
    CrashMode::TearUnsynced { seed: 7 },
];

fn run_with_plan(plan: FaultPlan, label: &str) -> u64 {
    let mut points = 0;
    for mode in CRASH_MODES {
        let mem = MemStorage::new();
        let faulty = FaultyStorage::new(Arc::new(mem.clone()));
        faulty.set_plan(plan.clone());
        let outcome = run_workload(Arc::new(faulty.clone()));
        let label = format!("{label} {mode:?}");
        assert!(outcome.failed, "{label}: the planned fault never fired");
        assert!(
            outcome.attempted == 0 || outcome.refused_after_failure,
            "{label}: the database accepted a write after an I/O failure"
        );
        crash_and_verify(&mem, mode, &outcome, &label);
        points += 1;
    }
    points
}

#[test]
fn failing_any_write_loses_no_acknowledged_commit() {
    let (writes, _) = count_operations();
    let mut points = 0;
    for n in 0..writes {
        points += run_with_plan(
            FaultPlan {
                fail_write: Some(n),
                ..FaultPlan::default()
            },
            &format!("fail write {n}"),
        );
    }
    eprintln!("{points} failed-write points over {writes} writes");
}

#[test]
fn tearing_any_write_loses_no_acknowledged_commit() {
    let (writes, _) = count_operations();
    let mut points = 0;
    for n in 0..writes {
        for keep in [1usize, 13, 4097] {
            points += run_with_plan(
                FaultPlan {
                    tear_write: Some((n, keep)),
                    ..FaultPlan::default()
                },
                &format!("tear write {n} after {keep} bytes"),
            );
        }
    }
    eprintln!("{points} torn-write points over {writes} writes");
}

#[test]
fn failing_any_fsync_loses_no_acknowledged_commit_and_refuses_writes() {
    let (_, syncs) = count_operations();
    let mut points = 0;
    for n in 0..syncs {
        points += run_with_plan(
            FaultPlan {
                fail_sync: Some(n),
                ..FaultPlan::default()
            },
            &format!("fail fsync {n}"),
        );
    }
    eprintln!("{points} failed-fsync points over {syncs} fsyncs");
}

#[test]
fn after_fsync_failure_writes_are_refused_until_reopen() {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    let db = options(Arc::new(faulty.clone())).open(db_path()).unwrap();
    common::run_commit(&db, 0).unwrap();
    faulty.set_plan(FaultPlan {
        fail_sync: Some(0),
        ..FaultPlan::default()
    });
    assert!(
        common::run_commit(&db, 1).is_err(),
        "the commit whose fsync failed must fail"
    );
    faulty.heal();
    let refused = db.begin_page_write().map(drop);
    assert!(matches!(refused, Err(Error::Poisoned)), "got {refused:?}");
    // Readers still work and see only what was acknowledged.
    assert_eq!(common::committed_count(&db).unwrap(), 1);
    drop(db);
    let db = options(Arc::new(mem.clone())).open(db_path()).unwrap();
    let present = common::committed_count(&db).unwrap();
    assert!(present == 1 || present == 2);
    common::verify_against_model(&db, present).unwrap();
    common::run_commit(&db, present).unwrap();
}

#[test]
fn disk_full_fails_commits_cleanly_and_recovers_once_space_is_back() {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    let db = options(Arc::new(faulty.clone())).open(db_path()).unwrap();
    for index in 0..5 {
        common::run_commit(&db, index).unwrap();
    }
    faulty.set_plan(FaultPlan {
        disk_full_after_bytes: Some(0),
        ..FaultPlan::default()
    });
    let err = common::run_commit(&db, 5).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("space") || text.contains("full") || text.contains("refuses"),
        "disk-full error should say so: {text}"
    );
    drop(db);
    faulty.heal();
    let db = options(Arc::new(faulty)).open(db_path()).unwrap();
    let present = common::committed_count(&db).unwrap();
    assert_eq!(
        present, 5,
        "nothing acknowledged is lost, nothing unacknowledged appears"
    );
    common::verify_against_model(&db, 5).unwrap();
    common::run_commit(&db, 5).unwrap();
}
