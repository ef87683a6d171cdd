//! A checkpoint writes back exactly the pages changed since the one before,
//! each once, with one in-place write per run of consecutive page ids (at
//! most [`IN_PLACE_RUN_MAX_BYTES`]); and a write that fails or tears in the
//! middle of such a run leaves a database that refuses writes, reports the
//! I/O error, and after a crash and reopen holds every acknowledged commit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use mmsb_engine::page_file::IN_PLACE_RUN_MAX_BYTES;
use mmsb_engine::{Database, Error, Options, PageId, PageRead, PageWrite};
use mmsb_wal::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};
use proptest::prelude::*;

/// Pages the workload allocates (past the meta page): more than one
/// capped run, so the cap is exercised.
const DATA_PAGES: u64 = 600;
/// The first page the workload allocates (page 0 is the header, 1 the meta).
const FIRST_PAGE: u64 = 2;
/// Bytes of a page, trailer included.
const PAGE_SIZE: usize = 4096;
/// Where a change writes its marker byte.
const MARK_OFFSET: usize = 100;

fn db_path() -> PathBuf {
    PathBuf::from("/runs/db.mmsb")
}

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// Page id → the byte at [`MARK_OFFSET`] (the rest: the id, then zeros).
type Model = BTreeMap<u64, u8>;

/// Allocates the workload's pages (each holds its id), commits and
/// checkpoints them; returns the model.
fn create(db: &Database) -> Model {
    let mut tx = db.begin_page_write().expect("begin");
    let mut model = Model::new();
    for _ in 0..DATA_PAGES {
        let id = tx.allocate_page().expect("allocate");
        tx.page_mut(id).expect("page")[..8].copy_from_slice(&id.get().to_le_bytes());
        model.insert(id.get(), 0);
    }
    tx.commit().expect("commit");
    db.checkpoint().expect("first checkpoint");
    assert_eq!(model.keys().next(), Some(&FIRST_PAGE));
    model
}

/// Changes the marker byte of `pages` in one commit.
fn change(db: &Database, model: &mut Model, pages: &BTreeSet<u64>) {
    let mut tx = db.begin_page_write().expect("begin");
    for &id in pages {
        let mark = model[&id].wrapping_add(1).max(1);
        tx.page_mut(PageId(id)).expect("page")[MARK_OFFSET] = mark;
        model.insert(id, mark);
    }
    tx.commit().expect("commit");
}

/// Checks every page of the database against the model.
fn verify(db: &Database, model: &Model) -> Result<(), String> {
    let rx = db.begin_page_read().map_err(|err| err.to_string())?;
    let want_count = FIRST_PAGE + model.len() as u64;
    if rx.page_count() != want_count {
        return Err(format!("{} pages, want {want_count}", rx.page_count()));
    }
    for (&id, &mark) in model {
        let page = rx
            .read_page(PageId(id))
            .map_err(|err| format!("page {id}: {err}"))?;
        let mut want = vec![0u8; page.len()];
        want[..8].copy_from_slice(&id.to_le_bytes());
        want[MARK_OFFSET] = mark;
        if page[..] != want[..] {
            return Err(format!("page {id} differs from the model"));
        }
    }
    Ok(())
}

/// Runs of consecutive ids in `pages`, each cut at `max_pages`.
fn model_runs(pages: &BTreeSet<u64>, max_pages: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &id in pages {
        match runs.last_mut() {
            Some((first, len)) if *first + *len == id && *len < max_pages => *len += 1,
            _ => runs.push((id, 1)),
        }
    }
    runs
}

/// The in-place page writes in `log` (the header slots, inside page 0, are
/// left out) as (first page, pages); each must cover whole pages.
fn page_writes(log: &[(u64, usize)]) -> Vec<(u64, u64)> {
    let page_size = PAGE_SIZE as u64;
    log.iter()
        .filter(|(offset, _)| *offset >= page_size)
        .map(|&(offset, len)| {
            assert_eq!(offset % page_size, 0, "a page write starts at a page");
            assert!(
                (len as u64).is_multiple_of(page_size),
                "a page write is whole pages"
            );
            (offset / page_size, len as u64 / page_size)
        })
        .collect()
}

/// Pages to change: a few ranges (long runs, past the write cap too) and
/// scattered single pages.
fn changed_pages() -> impl Strategy<Value = BTreeSet<u64>> {
    let last = FIRST_PAGE + DATA_PAGES;
    let ranges = prop::collection::vec((FIRST_PAGE..last, 1u64..400), 0..4);
    let singles = prop::collection::btree_set(FIRST_PAGE..last, 0..40);
    (ranges, singles)
        .prop_map(move |(ranges, singles)| {
            let mut pages = singles;
            for (first, len) in ranges {
                pages.extend(first..(first + len).min(last));
            }
            pages
        })
        .prop_filter("changes at least one page", |pages| !pages.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The checkpoint writes each changed page once and no other page, one
    /// write per (capped) run of consecutive ids; after a crash that drops
    /// everything unsynced, the reopened database matches the model.
    #[test]
    fn a_checkpoint_writes_exactly_the_changed_pages_one_write_per_run(
        pages in changed_pages(),
    ) {
        let mem = MemStorage::new();
        let recording = FaultyStorage::new(Arc::new(mem.clone()));
        recording.log_writes_to(&db_path());
        let db = options(Arc::new(recording.clone())).open(db_path()).expect("open");
        let mut model = create(&db);
        change(&db, &mut model, &pages);
        recording.take_logged_writes();
        let stats = db.checkpoint().expect("checkpoint");
        prop_assert_eq!(stats.pages_written, pages.len());
        let writes = page_writes(&recording.take_logged_writes());
        let mut written = BTreeSet::new();
        for &(first, count) in &writes {
            for id in first..first + count {
                prop_assert!(written.insert(id), "page {} written twice", id);
            }
        }
        prop_assert_eq!(&written, &pages);
        let max_pages = (IN_PLACE_RUN_MAX_BYTES / PAGE_SIZE) as u64;
        prop_assert_eq!(writes, model_runs(&pages, max_pages));
        drop(db);
        mem.crash(CrashMode::DropUnsynced);
        let reopened = Options { verify_pages_on_open: true, ..options(Arc::new(mem.clone())) }
            .open(db_path())
            .expect("reopen");
        prop_assert_eq!(verify(&reopened, &model), Ok(()));
    }
}

#[test]
fn runs_are_cut_at_gaps_and_at_the_cap() {
    let pages: BTreeSet<u64> = [2, 3, 4, 7, 8, 10, 11, 12, 13, 14].into_iter().collect();
    assert_eq!(
        model_runs(&pages, 3),
        vec![(2, 3), (7, 2), (10, 3), (13, 2)]
    );
}

// ---------------------------------------------------------------------------
// A failing write in the middle of a run
// ---------------------------------------------------------------------------

/// Pages the fault test changes: a run longer than the write cap, a short
/// run and a single page.
fn fault_pages() -> BTreeSet<u64> {
    (10..310).chain(400..410).chain([500]).collect()
}

/// The checkpoint after [`fault_pages`] changed, under `plan`; returns
/// whether the fault fired. Checks that a failed checkpoint reports an I/O
/// error and that the database then refuses writes; crashes in `mode`,
/// reopens and checks every acknowledged commit, checkpoints once more
/// and checks again after a second crash.
fn run_fault(plan: FaultPlan, mode: CrashMode, label: &str) -> bool {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    let db = options(Arc::new(faulty.clone()))
        .open(db_path())
        .expect("open");
    let mut model = create(&db);
    change(&db, &mut model, &fault_pages());
    faulty.set_plan(plan);
    let result = db.checkpoint();
    let fired = faulty.counters().faults_injected() > 0;
    match &result {
        Ok(_) => assert!(!fired, "{label}: a fault went unreported"),
        Err(err) => {
            assert!(fired, "{label}: an error without a fault: {err}");
            assert!(
                matches!(err, Error::Io { .. } | Error::Wal(_)),
                "{label}: reported as {err:?}, not an I/O error"
            );
            let refused = db.begin_page_write().map(drop);
            assert!(
                matches!(refused, Err(Error::Poisoned)),
                "{label}: writes not refused after the failed checkpoint: {refused:?}"
            );
        }
    }
    faulty.heal();
    drop(db);
    mem.crash(mode);
    let reopened = options(Arc::new(mem.clone()))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen: {err}"));
    verify(&reopened, &model).unwrap_or_else(|diff| panic!("{label}: {diff}"));
    reopened
        .checkpoint()
        .unwrap_or_else(|err| panic!("{label}: checkpoint after reopen: {err}"));
    drop(reopened);
    mem.crash(CrashMode::DropUnsynced);
    let again = Options {
        verify_pages_on_open: true,
        ..options(Arc::new(mem.clone()))
    }
    .open(db_path())
    .unwrap_or_else(|err| panic!("{label}: second reopen: {err}"));
    verify(&again, &model).unwrap_or_else(|diff| panic!("{label}, second reopen: {diff}"));
    fired
}

#[test]
fn a_write_failing_or_torn_mid_run_loses_no_acknowledged_commit() {
    const MODES: [CrashMode; 3] = [
        CrashMode::KeepUnsynced,
        CrashMode::DropUnsynced,
        CrashMode::TearUnsynced { seed: 0x7275_6e73 },
    ];
    // Torn after three pages and a part: inside the first run's write.
    let tear_keep = 3 * PAGE_SIZE + 100;
    let mut fired = 0;
    for n in 0.. {
        let mode = MODES[n as usize % MODES.len()];
        let failed = run_fault(
            FaultPlan {
                fail_write: Some(n),
                ..FaultPlan::default()
            },
            mode,
            &format!("fail write {n}, {mode:?}"),
        );
        let torn = run_fault(
            FaultPlan {
                tear_write: Some((n, tear_keep)),
                ..FaultPlan::default()
            },
            MODES[(n as usize + 1) % MODES.len()],
            &format!("tear write {n}"),
        );
        if !failed && !torn {
            break;
        }
        fired += usize::from(failed) + usize::from(torn);
    }
    // The double-write file, the in-place runs (4 of them), the manifest and
    // the header slot each had their turn.
    let runs = model_runs(&fault_pages(), (IN_PLACE_RUN_MAX_BYTES / PAGE_SIZE) as u64);
    assert_eq!(runs.len(), 4);
    assert!(
        fired >= 2 * (runs.len() + 3),
        "only {fired} faults fired: the checkpoint did fewer writes than expected"
    );
}
