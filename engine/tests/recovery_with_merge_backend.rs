//! Recovery through a merge backend (`Options::merge_backend`) gives exactly
//! the pages recovery on the CPU gives, and both equal a model of what was
//! committed: whatever the window size, whatever the backend threshold, with
//! pages read back from the data file (written before a checkpoint) and
//! pages allocated after it (which replay starts from zeros).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mmsb_engine::merge::{CpuMerge, MergeBackend, MergeBatch, MergeStats};
use mmsb_engine::{Database, Error, Options, PageId, PageRead, PageWrite};
use mmsb_wal::storage::MemStorage;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PATH: &str = "/db/recovery.mmsb";

/// A CPU merge that counts the batches and pages it was given.
#[derive(Debug)]
struct Counting {
    inner: CpuMerge,
    batches: AtomicUsize,
    pages: AtomicUsize,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Counting {
            inner: CpuMerge::best(2).unwrap(),
            batches: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
        })
    }
}

impl MergeBackend for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn merge_batch(&self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(batch.len(), Ordering::Relaxed);
        self.inner.merge_batch(batch)
    }
}

fn options(storage: &Arc<MemStorage>) -> Options {
    Options {
        storage: Arc::clone(storage) as _,
        background_workers: false,
        checkpoint_on_close: false,
        checkpoint_tlog_bytes: u64::MAX,
        ..Options::default()
    }
}

/// Commits a seeded random history (a checkpoint after `checkpoint_after`
/// commits) and returns the model: every allocated page's expected bytes.
fn build(
    storage: &Arc<MemStorage>,
    seed: u64,
    commits: usize,
    checkpoint_after: usize,
) -> BTreeMap<PageId, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = options(storage).open(PATH).unwrap();
    let page_len = db.page_len();
    let mut model: BTreeMap<PageId, Vec<u8>> = BTreeMap::new();
    for commit in 0..commits {
        let mut tx = db.begin_page_write().unwrap();
        let fresh = if model.len() < 4 {
            4
        } else {
            rng.gen_range(0..3)
        };
        for _ in 0..fresh {
            let id = tx.allocate_page().unwrap();
            model.insert(id, vec![0; page_len]);
        }
        let ids: Vec<PageId> = model.keys().copied().collect();
        for _ in 0..rng.gen_range(1..12) {
            let id = ids[rng.gen_range(0..ids.len())];
            let len = rng.gen_range(1..300usize);
            let offset = rng.gen_range(0..page_len - len);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            tx.write(id, offset, &bytes).unwrap();
            model.get_mut(&id).unwrap()[offset..offset + len].copy_from_slice(&bytes);
        }
        tx.commit().unwrap();
        if commit + 1 == checkpoint_after {
            db.checkpoint().unwrap();
        }
    }
    model
}

/// Reopens (replaying the TLog) and reads every page of the model.
fn recover(
    storage: &Arc<MemStorage>,
    options: Options,
    model: &BTreeMap<PageId, Vec<u8>>,
) -> Database {
    let db = Options {
        storage: Arc::clone(storage) as _,
        ..options
    }
    .open(PATH)
    .unwrap();
    let rx = db.begin_page_read().unwrap();
    for (id, expected) in model {
        assert_eq!(&rx.read_page(*id).unwrap()[..], &expected[..], "{id}");
    }
    drop(rx);
    db
}

#[test]
fn backend_recovery_equals_cpu_recovery_and_the_model() {
    let history = |storage: &Arc<MemStorage>| build(storage, 7, 60, 20);
    // CPU, one window.
    let storage = Arc::new(MemStorage::new());
    let model = history(&storage);
    let cpu = recover(&storage, options(&storage), &model);
    let commits = cpu.metrics().recovered_commits;
    assert_eq!(commits, 40, "commits after the checkpoint are replayed");
    drop(cpu);
    // Backend for every window, many small windows.
    let storage = Arc::new(MemStorage::new());
    assert_eq!(history(&storage), model);
    let backend = Counting::new();
    let small_windows = Options {
        merge_backend: Some(backend.clone()),
        gpu_merge_min_pages: 1,
        replay_window_bytes: 2048,
        ..options(&storage)
    };
    let db = recover(&storage, small_windows, &model);
    assert_eq!(db.metrics().recovered_commits, commits);
    assert!(
        backend.batches.load(Ordering::Relaxed) > 3,
        "several windows"
    );
    drop(db);
    // Backend for the one big window.
    let storage = Arc::new(MemStorage::new());
    history(&storage);
    let backend = Counting::new();
    let one_window = Options {
        merge_backend: Some(backend.clone()),
        gpu_merge_min_pages: 1,
        ..options(&storage)
    };
    drop(recover(&storage, one_window, &model));
    assert_eq!(backend.batches.load(Ordering::Relaxed), 1);
    // A threshold above every window keeps the backend idle.
    let storage = Arc::new(MemStorage::new());
    history(&storage);
    let backend = Counting::new();
    let below_threshold = Options {
        merge_backend: Some(backend.clone()),
        gpu_merge_min_pages: 1_000_000,
        replay_window_bytes: 2048,
        ..options(&storage)
    };
    drop(recover(&storage, below_threshold, &model));
    assert_eq!(backend.batches.load(Ordering::Relaxed), 0);
}

#[test]
fn options_show_the_backend_by_name() {
    let options = Options {
        merge_backend: Some(Counting::new()),
        ..Options::default()
    };
    assert!(format!("{options:?}").contains("counting"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_window_and_threshold_recovers_the_model(
        seed in any::<u64>(),
        commits in 1usize..30,
        checkpoint_after in 0usize..30,
        window in 64usize..16_384,
        min_pages in 1usize..40,
    ) {
        let storage = Arc::new(MemStorage::new());
        let model = build(&storage, seed, commits, checkpoint_after);
        let backend = Counting::new();
        let options = Options {
            merge_backend: Some(backend.clone()),
            gpu_merge_min_pages: min_pages,
            replay_window_bytes: window,
            ..options(&storage)
        };
        drop(recover(&storage, options, &model));
        // Each commit changes at most every model page and the meta page.
        prop_assert!(backend.pages.load(Ordering::Relaxed) <= (model.len() + 1) * commits);
    }
}
