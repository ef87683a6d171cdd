//! A crash at any write or fsync of a checkpoint-heavy workload loses no
//! acknowledged commit, leaves no commit partly present, and leaves a
//! database whose later checkpoints and crashes are just as safe.
//!
//! The workload checkpoints after every commit, so most of its writes and
//! fsyncs are a checkpoint's: double-write file, in-place pages, manifest
//! temp file and rename, header slot, TLog truncation. Each one in turn is
//! failed or torn; the process then crashes (unsynced writes kept, dropped
//! or torn). The reopened database must hold exactly a prefix of the
//! workload that includes every acknowledged commit. It then runs more of
//! the workload, again with a checkpoint after each commit (so pages the
//! interrupted checkpoint wrote are read, accepted and written again, and
//! the CRC table's trusted epoch moves past them), and is reopened and
//! checked once more: a page whose CRC the manifest records wrongly (a
//! "lost or misplaced write") fails that second open.
//!
//! The last test does the same with `Durability::Eventual`, where a commit
//! is visible before its TLog frame is durable: a checkpoint must make the
//! TLog durable before it writes pages, or a crash that keeps the pages but
//! loses the frames leaves parts of lost commits in them.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use mmsb::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};
use mmsb::{Database, Durability, Options, PageRead, PageWrite};

/// Commits of the faulted run, each followed by a checkpoint.
const COMMITS: u64 = 8;
/// Commits (each checkpointed) run after the first recovery.
const MORE_COMMITS: u64 = 4;
/// Byte counts a torn write keeps.
const TEAR_KEEP_BYTES: [usize; 2] = [13, 4097];

const CRASH_MODES: [CrashMode; 3] = [
    CrashMode::KeepUnsynced,
    CrashMode::DropUnsynced,
    CrashMode::TearUnsynced { seed: 0x6c6f_7374 },
];

fn db_path() -> PathBuf {
    PathBuf::from("/ckpt/db.mmsb")
}

fn options(storage: Arc<dyn Storage>, durability: Durability) -> Options {
    Options {
        storage,
        durability,
        background_workers: false,
        checkpoint_on_close: false,
        tlog_segment_bytes: 8 * 1024,
        ..Options::default()
    }
}

/// Background flushes never come during a test: only a checkpoint (or an
/// explicit flush) makes an `Eventual` commit durable.
fn eventual() -> Durability {
    Durability::Eventual {
        flush_interval_ms: 3_600_000,
    }
}

/// What a run of the workload got done before its first error.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: u64,
    attempted: u64,
    failed: bool,
}

/// Opens and runs commits `from..to`, each followed by a checkpoint;
/// stops at the first error. A commit counts as acknowledged once its
/// `commit()` returned Ok (with `Eventual` durability, once the
/// checkpoint after it returned Ok too: only then is it durable).
fn run_workload(storage: Arc<dyn Storage>, durability: Durability, from: u64, to: u64) -> Outcome {
    let mut outcome = Outcome {
        acknowledged: from,
        attempted: from,
        failed: false,
    };
    let Ok(db) = options(storage, durability).open(db_path()) else {
        outcome.failed = true;
        return outcome;
    };
    for index in from..to {
        outcome.attempted = index + 1;
        let committed = common::run_commit(&db, index);
        if committed.is_ok() && durability == Durability::Immediate {
            outcome.acknowledged = index + 1;
        }
        match committed.and_then(|()| db.checkpoint().map(drop)) {
            Ok(()) => outcome.acknowledged = index + 1,
            Err(_) => {
                outcome.failed = true;
                return outcome;
            }
        }
    }
    // Whatever is still buffered (none: each checkpoint flushed) is
    // written here, so that a fault in it is seen.
    if db.flush().is_err() {
        outcome.failed = true;
    }
    outcome
}

/// Reopens without faults; checks that the database holds exactly a prefix
/// of the workload between what was acknowledged and what was attempted.
/// Returns how many commits it holds.
fn reopen_and_verify(
    mem: &MemStorage,
    durability: Durability,
    acknowledged: u64,
    attempted: u64,
    label: &str,
) -> u64 {
    let db: Database = options(Arc::new(mem.clone()), durability)
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    let present = common::committed_count(&db).unwrap_or_else(|err| panic!("{label}: {err}"));
    assert!(
        (acknowledged..=attempted).contains(&present),
        "{label}: {acknowledged} acknowledged, {attempted} attempted, {present} recovered"
    );
    common::verify_against_model(&db, present).unwrap_or_else(|diff| panic!("{label}: {diff}"));
    present
}

/// Runs the workload under `plan`, crashes in `mode`, verifies; then runs
/// more checkpointed commits without faults, crashes again (dropping what
/// was not synced) and verifies once more. Returns whether the fault fired.
fn run_point(plan: &FaultPlan, mode: CrashMode, durability: Durability, label: &str) -> bool {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    faulty.set_plan(plan.clone());
    let outcome = run_workload(Arc::new(faulty.clone()), durability, 0, COMMITS);
    let fired = faulty.counters().faults_injected() > 0;
    assert_eq!(
        fired, outcome.failed,
        "{label}: a fault went unreported, or an error came without one"
    );
    mem.crash(mode);
    let present = reopen_and_verify(
        &mem,
        durability,
        outcome.acknowledged,
        outcome.attempted,
        label,
    );

    let more = run_workload(
        Arc::new(mem.clone()),
        durability,
        present,
        present + MORE_COMMITS,
    );
    assert!(
        !more.failed,
        "{label}: the recovered database failed: {more:?}"
    );
    mem.crash(CrashMode::DropUnsynced);
    let total = present + MORE_COMMITS;
    reopen_and_verify(
        &mem,
        durability,
        total,
        total,
        &format!("{label}, then {MORE_COMMITS} more"),
    );
    fired
}

/// Writes and fsyncs of the whole faultless workload.
fn count_operations(durability: Durability) -> (u64, u64) {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let outcome = run_workload(Arc::new(faulty.clone()), durability, 0, COMMITS);
    assert!(
        !outcome.failed && outcome.acknowledged == COMMITS,
        "{outcome:?}"
    );
    (faulty.counters().writes(), faulty.counters().syncs())
}

/// Every plan: each write failed or torn, each fsync failed.
fn every_fault(writes: u64, syncs: u64) -> Vec<(FaultPlan, String)> {
    let mut plans = Vec::new();
    for n in 0..writes {
        plans.push((
            FaultPlan {
                fail_write: Some(n),
                ..FaultPlan::default()
            },
            format!("fail write {n}"),
        ));
        for keep in TEAR_KEEP_BYTES {
            plans.push((
                FaultPlan {
                    tear_write: Some((n, keep)),
                    ..FaultPlan::default()
                },
                format!("tear write {n} after {keep} bytes"),
            ));
        }
    }
    for n in 0..syncs {
        plans.push((
            FaultPlan {
                fail_sync: Some(n),
                ..FaultPlan::default()
            },
            format!("fail fsync {n}"),
        ));
    }
    plans
}

fn crash_at_every_point(durability: Durability) {
    let (writes, syncs) = count_operations(durability);
    // Each commit's checkpoint writes the double-write file, pages, the
    // manifest and a header slot: a workload this size writes far more.
    assert!(
        writes >= 6 * COMMITS,
        "the workload writes little: {writes}"
    );
    let mut fired = 0;
    let mut points = 0;
    for (plan, label) in every_fault(writes, syncs) {
        for mode in CRASH_MODES {
            points += 1;
            if run_point(
                &plan,
                mode,
                durability,
                &format!("{durability:?}: {label} {mode:?}"),
            ) {
                fired += 1;
            }
        }
    }
    eprintln!(
        "{durability:?}: {writes} writes, {syncs} fsyncs, {points} crash points, {fired} faults fired"
    );
    assert_eq!(fired, points, "some planned faults never fired");
}

#[test]
fn a_crash_at_any_write_or_fsync_of_a_checkpoint_loses_nothing() {
    crash_at_every_point(Durability::Immediate);
}

#[test]
fn with_eventual_durability_a_checkpoint_never_writes_pages_ahead_of_the_tlog() {
    crash_at_every_point(eventual());
}

/// The direct form of the write-ahead rule: pages of commits that a crash
/// takes from the TLog never reach the data file. Some commits are flushed,
/// later ones are not; a checkpoint then fails at one of its writes (each in
/// turn, up to those after its pages were synced) and the process crashes.
/// The database must hold a prefix of the commits, whole.
#[test]
fn an_interrupted_checkpoint_holds_only_commits_the_tlog_keeps() {
    const FLUSHED: u64 = 12;
    const ALL: u64 = 16;
    let mut points = 0;
    for mode in CRASH_MODES {
        for fail_at in 0.. {
            let mem = MemStorage::new();
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            let db = options(Arc::new(faulty.clone()), eventual())
                .open(db_path())
                .unwrap();
            for index in 0..COMMITS {
                common::run_commit(&db, index).unwrap();
            }
            db.checkpoint().unwrap();
            for index in COMMITS..FLUSHED {
                common::run_commit(&db, index).unwrap();
            }
            db.flush().unwrap();
            for index in FLUSHED..ALL {
                common::run_commit(&db, index).unwrap();
            }
            // The checkpoint's write `fail_at` fails (the plan counts anew).
            faulty.set_plan(FaultPlan {
                fail_write: Some(fail_at),
                ..FaultPlan::default()
            });
            let checkpointed = db.checkpoint();
            if checkpointed.is_ok() {
                // Past the checkpoint's last write: every point was tried.
                assert!(
                    fail_at > 3,
                    "{mode:?}: the checkpoint wrote only {fail_at} times"
                );
                break;
            }
            // No flush on close: the crash takes what was not written.
            std::mem::forget(db);
            mem.crash(mode);
            let label = format!("{mode:?}: checkpoint failing at its write {fail_at}");
            reopen_and_verify(&mem, eventual(), FLUSHED, ALL, &label);
            points += 1;
        }
    }
    eprintln!("{points} interrupted checkpoints");
}

/// Pages the multi-chunk checkpoint test writes for the first time.
const FRESH_PAGES: u64 = 60;

/// The byte every fresh page `id` is filled with (past its first 16 bytes).
fn fresh_fill(id: u64) -> u8 {
    (id as u8).wrapping_mul(37) | 1
}

/// Opens with the smallest memory budget, so that a checkpoint writes in
/// chunks of a few dozen pages; commits [`FRESH_PAGES`] new pages in one
/// transaction, then checkpoints them. Returns whether the commit was
/// acknowledged and whether anything failed.
fn run_fresh_pages(storage: Arc<dyn Storage>) -> (bool, bool) {
    let options = Options {
        memory_budget_bytes: mmsb::MIN_MEMORY_BUDGET_BYTES,
        ..options(storage, Durability::Immediate)
    };
    let Ok(db) = options.open(db_path()) else {
        return (false, true);
    };
    let committed = (|| {
        let mut tx = db.begin_page_write()?;
        for _ in 0..FRESH_PAGES {
            let id = tx.allocate_page()?;
            let fill = vec![fresh_fill(id.get()); tx.page_len() - 16];
            tx.write(id, 16, &fill)?;
        }
        tx.commit()
    })();
    let acknowledged = committed.is_ok();
    let failed = committed.is_err() || db.checkpoint().is_err();
    (acknowledged, failed)
}

/// Reopens and checks that the fresh pages are all there, whole, or (when
/// the commit was not acknowledged) that none is.
fn verify_fresh_pages(mem: &MemStorage, acknowledged: bool, label: &str) {
    let db = options(Arc::new(mem.clone()), Durability::Immediate)
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    let rx = db.begin_page_read().unwrap();
    let count = rx.page_count();
    if count <= 2 {
        assert!(!acknowledged, "{label}: an acknowledged commit was lost");
        return;
    }
    assert_eq!(count, 2 + FRESH_PAGES, "{label}: page count");
    for id in 2..count {
        let page = rx.read_page(mmsb::PageId(id)).unwrap();
        let fill = fresh_fill(id);
        assert!(
            page[16..].iter().all(|&b| b == fill),
            "{label}: page {id} is not what was committed"
        );
    }
}

/// A checkpoint of many pages written for the first time runs in several
/// chunks, and every chunk but the last writes no double-write copy of
/// them (recovery starts pages past the checkpoint on disk from zeros): a
/// failed or torn write or a failed fsync anywhere, then a crash, loses
/// nothing acknowledged and leaves no part of a commit.
#[test]
fn a_crash_in_a_multi_chunk_checkpoint_of_fresh_pages_loses_nothing() {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let (acknowledged, failed) = run_fresh_pages(Arc::new(faulty.clone()));
    assert!(acknowledged && !failed);
    let (writes, syncs) = (faulty.counters().writes(), faulty.counters().syncs());
    let mut points = 0;
    for (plan, label) in every_fault(writes, syncs) {
        for mode in CRASH_MODES {
            let mem = MemStorage::new();
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            faulty.set_plan(plan.clone());
            let (acknowledged, _) = run_fresh_pages(Arc::new(faulty));
            mem.crash(mode);
            let label = format!("{label} {mode:?}");
            verify_fresh_pages(&mem, acknowledged, &label);
            // Recovered: a checkpoint now completes, and survives a crash.
            {
                let db = options(Arc::new(mem.clone()), Durability::Immediate)
                    .open(db_path())
                    .unwrap();
                db.checkpoint()
                    .unwrap_or_else(|err| panic!("{label}: {err}"));
            }
            mem.crash(CrashMode::DropUnsynced);
            verify_fresh_pages(&mem, acknowledged, &format!("{label}, checkpointed again"));
            points += 1;
        }
    }
    eprintln!("{writes} writes, {syncs} fsyncs, {points} crash points");
}

/// Pages the double-write bound test writes, then overwrites: their copies
/// (4104 bytes each) are past `DOUBLE_WRITE_RETAINED_MAX_BYTES` (1 MiB).
const OVERWRITTEN_PAGES: u64 = 300;

/// Fills pages `2..2 + OVERWRITTEN_PAGES` with `fill` (allocating them first
/// when `allocate`) in one commit, then checkpoints.
fn fill_pages(db: &Database, allocate: bool, fill: u8) {
    let mut tx = db.begin_page_write().unwrap();
    let bytes = vec![fill; tx.page_len() - 16];
    for id in 2..2 + OVERWRITTEN_PAGES {
        let id = if allocate {
            tx.allocate_page().unwrap()
        } else {
            mmsb::PageId(id)
        };
        tx.write(id, 16, &bytes).unwrap();
    }
    tx.commit().unwrap();
    db.checkpoint().unwrap();
}

/// The double-write file holds only copies torn-write protection needs, and
/// does not keep a large set of them once their pages are synced: a bulk
/// write of fresh pages copies only the meta page; overwriting all of them
/// copies them all, and the file is emptied after the in-place writes. A
/// crash then (the emptying is not synced, so it may be undone or kept)
/// loses nothing and repairs nothing.
#[test]
fn the_double_write_file_keeps_no_large_set_of_copies() {
    let dwb = PathBuf::from("/ckpt/db.mmsb-dwb");
    for mode in CRASH_MODES {
        let mem = MemStorage::new();
        let db = options(Arc::new(mem.clone()), Durability::Immediate)
            .open(db_path())
            .unwrap();
        fill_pages(&db, true, 0x11);
        let page_bytes = 8 + 4096;
        let fresh_copies = mem.file_bytes(&dwb).unwrap().len();
        assert_eq!(
            fresh_copies,
            32 + page_bytes,
            "only the meta page is copied"
        );
        fill_pages(&db, false, 0x22);
        assert!(
            mem.file_bytes(&dwb).unwrap().is_empty(),
            "{OVERWRITTEN_PAGES} copies are emptied once synced"
        );
        drop(db);
        mem.crash(mode);
        let db = options(Arc::new(mem.clone()), Durability::Immediate)
            .open(db_path())
            .unwrap_or_else(|err| panic!("{mode:?}: {err}"));
        assert_eq!(db.metrics().double_write_pages_restored, 0, "{mode:?}");
        let rx = db.begin_page_read().unwrap();
        assert_eq!(rx.page_count(), 2 + OVERWRITTEN_PAGES);
        for id in 2..2 + OVERWRITTEN_PAGES {
            let page = rx.read_page(mmsb::PageId(id)).unwrap();
            assert!(
                page[16..].iter().all(|&b| b == 0x22),
                "{mode:?}: page {id} is not the last image committed"
            );
        }
    }
}
