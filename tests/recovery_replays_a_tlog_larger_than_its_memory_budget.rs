//! Recovery of a TLog several times larger than the memory budget stays
//! within the budget: the replay checkpoints what it replayed (double-write
//! file, manifest, header, TLog truncation) whenever its buffers reach half
//! the budget, drops it and goes on. The commits are written with a large
//! budget and no checkpoint at all, so the whole history lies in the TLog;
//! the database is then reopened with a 1 MiB budget. What must hold:
//! - the engine's accounting of recovery (`recovery_peak_bytes`: replay
//!   buffers plus page table) and of the page table (`peak_cache_bytes`)
//!   stay within the budget, and recovery did checkpoint on the way;
//! - every key reads back exactly as the last commit left it;
//! - a write failing or torn anywhere in that recovery (then a crash that
//!   drops or tears what was not synced) leaves a database that a clean
//!   open recovers to the same state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use mmsb::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};
use mmsb::{Database, Options, PageId, PageRead, PageWrite};

const MIB: u64 = 1024 * 1024;
/// The budget recovery runs under: the smallest accepted.
const BUDGET_BYTES: u64 = MIB;
/// Keys written, `KEYS_PER_COMMIT` to a commit.
const KEYS: u32 = 4000;
const KEYS_PER_COMMIT: u32 = 50;
const VALUE_BYTES: usize = 1000;
/// Every this many keys is rewritten by a second round of commits (so
/// replay order matters).
const REWRITE_EVERY: u32 = 3;
/// The TLog must be at least this many times the budget.
const TLOG_BUDGET_RATIO_MIN: u64 = 4;
/// Write fault points spread over the recovery's writes.
const WRITE_FAULT_POINTS: u64 = 3;
const TABLE: &str = "t";
/// Pages of the one large commit: 300 x (4080 + 160) B = 1.27 MB of
/// replay buffers, more than the whole budget.
const BIG_COMMIT_PAGES: u64 = 300;

fn db_path() -> PathBuf {
    PathBuf::from("/big-tlog/db.mmsb")
}

/// Options of both phases; the writing phase takes the default (large)
/// budget and never checkpoints.
fn options(storage: Arc<dyn Storage>, budget_bytes: Option<u64>) -> Options {
    let defaults = Options::default();
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        checkpoint_tlog_bytes: u64::MAX,
        tlog_segment_bytes: 256 * 1024,
        memory_budget_bytes: budget_bytes.unwrap_or(defaults.memory_budget_bytes),
        backpressure_max_wait_ms: 200,
        ..defaults
    }
}

fn key(index: u32) -> [u8; 4] {
    index.to_be_bytes()
}

/// The value of key `index` in round `round`: checkable on its own.
fn value(index: u32, round: u8) -> Vec<u8> {
    let mut state = u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(round);
    (0..VALUE_BYTES)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// The round whose value key `index` holds after every commit.
fn final_round(index: u32) -> u8 {
    u8::from(index.is_multiple_of(REWRITE_EVERY))
}

/// Writes every key (round 0), then rewrites every third (round 1); no
/// checkpoint runs. Returns the commits made.
fn write_history(storage: &MemStorage) -> u64 {
    let db = options(Arc::new(storage.clone()), None)
        .open(db_path())
        .unwrap();
    let mut commits = 0;
    for round in 0..2u8 {
        let keys: Vec<u32> = (0..KEYS)
            .filter(|index| round == 0 || index.is_multiple_of(REWRITE_EVERY))
            .collect();
        for chunk in keys.chunks(KEYS_PER_COMMIT as usize) {
            let mut tx = db.begin_write().unwrap();
            let mut table = tx.open_table(TABLE).unwrap();
            for &index in chunk {
                table.insert(&key(index), &value(index, round)).unwrap();
            }
            drop(table);
            tx.commit().unwrap();
            commits += 1;
        }
    }
    let metrics = db.metrics();
    assert_eq!(metrics.checkpoints, 0, "{metrics:?}");
    assert!(
        metrics.tlog_bytes_written >= TLOG_BUDGET_RATIO_MIN * BUDGET_BYTES,
        "the TLog holds {} bytes, not {TLOG_BUDGET_RATIO_MIN}x the budget",
        metrics.tlog_bytes_written
    );
    commits
}

/// Every key holds the value of its last round.
fn verify_keys(db: &Database, label: &str) {
    let read = db.begin_read().unwrap();
    let table = read.open_table(TABLE).unwrap();
    for index in 0..KEYS {
        let got = table
            .get(&key(index))
            .unwrap_or_else(|err| panic!("{label}: key {index}: {err}"))
            .unwrap_or_else(|| panic!("{label}: key {index} is missing"));
        assert!(
            got[..] == value(index, final_round(index))[..],
            "{label}: key {index} holds a wrong value"
        );
    }
}

fn files_of(storage: &MemStorage) -> Vec<PathBuf> {
    let mut paths = storage.list_dir(Path::new("/big-tlog")).unwrap();
    paths.extend(
        storage
            .list_dir(Path::new("/big-tlog/db.mmsb-tlog"))
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

#[test]
fn a_tlog_four_times_the_budget_recovers_within_it_and_reads_right() {
    let storage = MemStorage::new();
    let commits = write_history(&storage);
    let db = options(Arc::new(storage.clone()), Some(BUDGET_BYTES))
        .open(db_path())
        .unwrap();
    let metrics = db.metrics();
    eprintln!(
        "recovery of {commits} commits under a {BUDGET_BYTES}-byte budget: peak {} bytes \
         (page table peak {}), {} replay checkpoints writing {} pages",
        metrics.recovery_peak_bytes,
        metrics.peak_cache_bytes,
        metrics.checkpoints,
        metrics.pages_written_back
    );
    assert_eq!(metrics.recovered_commits, commits, "{metrics:?}");
    assert!(
        metrics.checkpoints >= TLOG_BUDGET_RATIO_MIN,
        "recovery did not checkpoint its way through: {metrics:?}"
    );
    assert!(
        metrics.recovery_peak_bytes <= BUDGET_BYTES,
        "recovery held {} bytes, over the {BUDGET_BYTES}-byte budget",
        metrics.recovery_peak_bytes
    );
    assert!(
        metrics.recovery_peak_bytes >= BUDGET_BYTES / 2,
        "the gauge did not see the replay buffers: {metrics:?}"
    );
    assert!(metrics.peak_cache_bytes <= BUDGET_BYTES, "{metrics:?}");
    verify_keys(&db, "after recovery");
    let metrics = db.metrics();
    assert!(metrics.peak_cache_bytes <= BUDGET_BYTES, "{metrics:?}");
    // The database keeps working, and a second open finds the same state.
    let mut tx = db.begin_write().unwrap();
    tx.open_table(TABLE)
        .unwrap()
        .insert(b"after", b"recovery")
        .unwrap();
    tx.commit().unwrap();
    drop(db);
    let db = options(Arc::new(storage), Some(BUDGET_BYTES))
        .open(db_path())
        .unwrap();
    verify_keys(&db, "second open");
    let read = db.begin_read().unwrap();
    let table = read.open_table(TABLE).unwrap();
    assert_eq!(
        table.get(b"after").unwrap().as_deref(),
        Some(&b"recovery"[..])
    );
}

/// Runs the small-budget recovery under `plan`, crashes with `mode`, and
/// checks with `verify` that a clean open recovers everything. Returns
/// whether the fault fired.
fn crash_during_recovery(
    pristine: &MemStorage,
    plan: FaultPlan,
    mode: CrashMode,
    verify: &dyn Fn(&Database, &str),
) -> bool {
    let label = format!("{plan:?} {mode:?}");
    let mem = copy(pristine);
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    faulty.set_plan(plan);
    let outcome = options(Arc::new(faulty.clone()), Some(BUDGET_BYTES)).open(db_path());
    let fired = faulty.counters().faults_injected() > 0;
    assert!(
        !fired || outcome.is_err(),
        "{label}: a fault during recovery went unreported"
    );
    drop(outcome);
    mem.crash(mode);
    let db = options(Arc::new(mem), Some(BUDGET_BYTES))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    verify(&db, &label);
    fired
}

#[test]
fn a_crash_during_a_recovery_that_checkpoints_is_recoverable() {
    let pristine = MemStorage::new();
    write_history(&pristine);
    // How many writes and fsyncs the whole recovery does.
    let counting = FaultyStorage::new(Arc::new(copy(&pristine)));
    let db = options(Arc::new(counting.clone()), Some(BUDGET_BYTES))
        .open(db_path())
        .unwrap();
    assert!(db.metrics().checkpoints >= 2, "{:?}", db.metrics());
    drop(db);
    let (writes, syncs) = (counting.counters().writes(), counting.counters().syncs());
    assert!(writes > 20 && syncs > 10, "{writes} writes, {syncs} syncs");
    let mut fired = 0;
    let mut points = 0;
    for point in 1..=WRITE_FAULT_POINTS {
        // Spread over the whole recovery: some in the first replay
        // checkpoint, some after several have completed.
        let n = writes * point / (WRITE_FAULT_POINTS + 1);
        let plans = [
            (
                FaultPlan {
                    fail_write: Some(n),
                    ..FaultPlan::default()
                },
                CrashMode::DropUnsynced,
            ),
            (
                FaultPlan {
                    tear_write: Some((n, 13)),
                    ..FaultPlan::default()
                },
                CrashMode::TearUnsynced { seed: point },
            ),
            (
                FaultPlan {
                    fail_sync: Some(syncs * point / (WRITE_FAULT_POINTS + 1)),
                    ..FaultPlan::default()
                },
                CrashMode::KeepUnsynced,
            ),
        ];
        for (plan, mode) in plans {
            fired += u64::from(crash_during_recovery(&pristine, plan, mode, &verify_keys));
            points += 1;
        }
    }
    assert_eq!(fired, points, "some planned faults never fired");
}

/// Page images after every commit of [`write_big_commit`].
type PageModel = BTreeMap<PageId, Vec<u8>>;

/// One commit of [`BIG_COMMIT_PAGES`] pages, then three smaller ones
/// rewriting parts of them; no checkpoint. Returns the model.
fn write_big_commit(storage: &MemStorage) -> PageModel {
    let db = options(Arc::new(storage.clone()), None)
        .open(db_path())
        .unwrap();
    let page_len = db.page_len();
    let mut model = PageModel::new();
    let mut tx = db.begin_page_write().unwrap();
    for _ in 0..BIG_COMMIT_PAGES {
        let id = tx.allocate_page().unwrap();
        let image = vec![(id.get() % 251) as u8 + 1; page_len];
        tx.page_mut(id).unwrap().copy_from_slice(&image);
        model.insert(id, image);
    }
    tx.commit().unwrap();
    let ids: Vec<PageId> = model.keys().copied().collect();
    for round in 1..=3u8 {
        let mut tx = db.begin_page_write().unwrap();
        for id in ids.iter().step_by(usize::from(round) + 1) {
            let offset = 100 * usize::from(round);
            tx.write(*id, offset, &[round; 64]).unwrap();
            model.get_mut(id).unwrap()[offset..offset + 64].fill(round);
        }
        tx.commit().unwrap();
    }
    assert_eq!(db.metrics().checkpoints, 0);
    model
}

fn verify_pages(db: &Database, model: &PageModel, label: &str) {
    let read = db.begin_page_read().unwrap();
    for (id, expected) in model {
        let got = read
            .read_page(*id)
            .unwrap_or_else(|err| panic!("{label}: {id}: {err}"));
        assert!(got[..] == expected[..], "{label}: {id} holds wrong bytes");
    }
}

#[test]
fn a_commit_larger_than_the_budget_is_checkpointed_part_way_and_recovers() {
    let storage = MemStorage::new();
    let model = write_big_commit(&storage);
    let pristine = copy(&storage);
    let db = options(Arc::new(storage), Some(BUDGET_BYTES))
        .open(db_path())
        .unwrap();
    let metrics = db.metrics();
    assert_eq!(metrics.recovered_commits, 4, "{metrics:?}");
    assert!(metrics.checkpoints >= 1, "{metrics:?}");
    assert!(
        metrics.recovery_peak_bytes <= BUDGET_BYTES,
        "recovery held {} bytes, over the {BUDGET_BYTES}-byte budget",
        metrics.recovery_peak_bytes
    );
    assert!(metrics.peak_cache_bytes <= BUDGET_BYTES, "{metrics:?}");
    verify_pages(&db, &model, "after recovery");
    drop(db);
    // A crash in the middle of it: the part-way checkpoint holds half a
    // commit, which the next replay applies whole again.
    let counting = FaultyStorage::new(Arc::new(copy(&pristine)));
    drop(
        options(Arc::new(counting.clone()), Some(BUDGET_BYTES))
            .open(db_path())
            .unwrap(),
    );
    let writes = counting.counters().writes();
    let verify = |db: &Database, label: &str| verify_pages(db, &model, label);
    for (n, mode) in [
        (writes / 3, CrashMode::DropUnsynced),
        (writes * 2 / 3, CrashMode::TearUnsynced { seed: 5 }),
    ] {
        let plan = FaultPlan {
            tear_write: Some((n, 13)),
            ..FaultPlan::default()
        };
        assert!(crash_during_recovery(&pristine, plan, mode, &verify));
    }
}
