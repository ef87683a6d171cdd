//! A crash during recovery, or during the checkpoint that follows it, is
//! itself recoverable. The starting state needs real recovery work: a page
//! torn by an interrupted write-back (its copy is in the double-write file),
//! commits only in the TLog, and a torn TLog tail. Every write and fsync that
//! the open and the first checkpoint do is, in turn, failed or torn; then the
//! process crashes (unsynced writes kept, dropped or torn), recovery runs
//! again under the same fault and crashes again, and a clean open must find
//! every acknowledged commit, exactly, and keep working.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};
use mmsb::{Database, Options};

/// Commits in the checkpoint.
const CHECKPOINTED_COMMITS: u64 = 20;
/// Every commit made (all acknowledged before the first crash).
const ALL_COMMITS: u64 = 32;
/// Bytes of garbage appended to the last TLog segment (a torn tail).
const TORN_TAIL_BYTES: usize = 37;
/// Byte counts a torn write keeps.
const TEAR_KEEP_BYTES: [usize; 3] = [1, 13, 4097];

const CRASH_MODES: [CrashMode; 3] = [
    CrashMode::KeepUnsynced,
    CrashMode::DropUnsynced,
    CrashMode::TearUnsynced { seed: 11 },
];

fn db_path() -> PathBuf {
    PathBuf::from("/recover/db.mmsb")
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

fn files_of(storage: &MemStorage) -> Vec<PathBuf> {
    let mut paths = storage.list_dir(Path::new("/recover")).unwrap();
    paths.extend(
        storage
            .list_dir(Path::new("/recover/db.mmsb-tlog"))
            .unwrap(),
    );
    paths
}

fn copy(from: &MemStorage) -> MemStorage {
    let to = MemStorage::new();
    for path in files_of(from) {
        to.set_file_bytes(&path, from.file_bytes(&path).unwrap());
    }
    to
}

/// The state a crash left: checkpoint at `CHECKPOINTED_COMMITS`, later
/// commits in the TLog, a torn page with a good copy in the double-write
/// file, and garbage after the last TLog frame.
fn crashed_state() -> MemStorage {
    let storage = MemStorage::new();
    let db = options(Arc::new(storage.clone())).open(db_path()).unwrap();
    for index in 0..CHECKPOINTED_COMMITS {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    for index in CHECKPOINTED_COMMITS..ALL_COMMITS {
        common::run_commit(&db, index).unwrap();
    }
    drop(db);
    let dwb = storage
        .file_bytes(Path::new("/recover/db.mmsb-dwb"))
        .unwrap();
    let torn_page = u64::from_le_bytes(dwb[32..40].try_into().unwrap()) as usize;
    let mut data = storage.file_bytes(&db_path()).unwrap();
    data[torn_page * 4096 + 64..torn_page * 4096 + 1000].fill(0x77);
    storage.set_file_bytes(&db_path(), data);
    let last_segment = files_of(&storage)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|ext| ext == "seg"))
        .max()
        .unwrap();
    let mut tail = storage.file_bytes(&last_segment).unwrap();
    tail.extend(std::iter::repeat_n(0xa5, TORN_TAIL_BYTES));
    storage.set_file_bytes(&last_segment, tail);
    storage
}

/// Recovery and the checkpoint after it; stops at the first error.
fn recover_and_checkpoint(storage: Arc<dyn Storage>) -> Result<(), String> {
    let db = options(storage)
        .open(db_path())
        .map_err(|err| format!("open: {err}"))?;
    db.checkpoint()
        .map_err(|err| format!("checkpoint: {err}"))?;
    Ok(())
}

/// Opens cleanly and checks every acknowledged commit, exactly; then the
/// database must take and return a new commit.
fn verify_recovered(mem: &MemStorage, label: &str) {
    let db: Database = options(Arc::new(mem.clone()))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    let present = common::committed_count(&db).unwrap_or_else(|err| panic!("{label}: {err}"));
    assert_eq!(present, ALL_COMMITS, "{label}: acknowledged commits lost");
    common::verify_against_model(&db, ALL_COMMITS).unwrap_or_else(|diff| panic!("{label}: {diff}"));
    common::run_commit(&db, ALL_COMMITS)
        .unwrap_or_else(|err| panic!("{label}: commit after recovery: {err}"));
    common::verify_against_model(&db, ALL_COMMITS + 1)
        .unwrap_or_else(|diff| panic!("{label}: after one more commit: {diff}"));
}

/// Writes and fsyncs that recovery plus the first checkpoint do.
fn count_operations(pristine: &MemStorage) -> (u64, u64) {
    let faulty = FaultyStorage::new(Arc::new(copy(pristine)));
    recover_and_checkpoint(Arc::new(faulty.clone())).unwrap();
    (faulty.counters().writes(), faulty.counters().syncs())
}

/// Runs recovery under `plan`, crashes, runs it again under the same plan
/// (a crash during the recovery of a crash), crashes, and verifies. Returns
/// how many times the fault fired.
fn run_point(pristine: &MemStorage, plan: &FaultPlan, label: &str) -> u64 {
    let mut fired = 0;
    for mode in CRASH_MODES {
        let mem = copy(pristine);
        let label = format!("{label} {mode:?}");
        for round in 0..2 {
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            faulty.set_plan(plan.clone());
            let outcome = recover_and_checkpoint(Arc::new(faulty.clone()));
            if faulty.counters().faults_injected() > 0 {
                fired += 1;
                assert!(
                    outcome.is_err(),
                    "{label} round {round}: a fault went unreported"
                );
            }
            mem.crash(mode);
        }
        verify_recovered(&mem, &label);
    }
    fired
}

#[test]
fn the_crashed_state_needs_recovery_work() {
    let mem = crashed_state();
    let db = options(Arc::new(mem.clone())).open(db_path()).unwrap();
    let metrics = db.metrics();
    assert_eq!(metrics.double_write_pages_restored, 1, "{metrics:?}");
    assert!(metrics.tlog_torn_bytes_cut > 0, "{metrics:?}");
    assert_eq!(
        metrics.recovered_commits,
        ALL_COMMITS - CHECKPOINTED_COMMITS
    );
    drop(db);
    verify_recovered(&mem, "no fault");
}

#[test]
fn failing_or_tearing_any_write_of_recovery_is_recoverable() {
    let pristine = crashed_state();
    let (writes, _) = count_operations(&pristine);
    assert!(
        writes >= 5,
        "recovery and checkpoint write little: {writes}"
    );
    let mut points = 0;
    let mut fired = 0;
    for n in 0..writes {
        let mut plans = vec![(
            FaultPlan {
                fail_write: Some(n),
                ..FaultPlan::default()
            },
            format!("fail write {n}"),
        )];
        for keep in TEAR_KEEP_BYTES {
            plans.push((
                FaultPlan {
                    tear_write: Some((n, keep)),
                    ..FaultPlan::default()
                },
                format!("tear write {n} after {keep} bytes"),
            ));
        }
        for (plan, label) in plans {
            fired += run_point(&pristine, &plan, &label);
            points += 1;
        }
    }
    eprintln!(
        "recovery + checkpoint: {writes} writes, {points} write fault points, \
         {fired} faults fired (x{} crash modes, 2 rounds each)",
        CRASH_MODES.len()
    );
    assert!(fired >= points, "some planned faults never fired");
}

#[test]
fn failing_any_fsync_of_recovery_is_recoverable() {
    let pristine = crashed_state();
    let (_, syncs) = count_operations(&pristine);
    assert!(syncs >= 5, "recovery and checkpoint sync little: {syncs}");
    let mut fired = 0;
    for n in 0..syncs {
        let plan = FaultPlan {
            fail_sync: Some(n),
            ..FaultPlan::default()
        };
        fired += run_point(&pristine, &plan, &format!("fail fsync {n}"));
    }
    eprintln!("recovery + checkpoint: {syncs} fsync fault points, {fired} faults fired");
    assert!(fired >= syncs, "some planned faults never fired");
}
