//! Recovery of a TLog larger than the memory budget through a merge backend
//! that keeps pages between batches (a [`MergeSession`], as the GPU backend
//! does): each replay checkpoint first takes the session's pages back, and
//! a later window opens a new session. The result equals a model of what
//! was committed, recovery's accounting stays within the budget, and the
//! backend saw several sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mmsb_engine::merge::{CpuMerge, MergeBackend, MergeBatch, MergeSession, MergeStats, PageSink};
use mmsb_engine::{Database, Error, Options, PageId, PageRead, PageWrite, MIN_MEMORY_BUDGET_BYTES};
use mmsb_wal::storage::MemStorage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PATH: &str = "/db/session.mmsb";
/// Pages the history allocates: about 4x the 1 MiB budget.
const PAGES: usize = 1000;
const COMMITS: usize = 400;

/// A backend whose sessions keep their pages in host memory.
#[derive(Debug, Default)]
struct HostSessions {
    sessions: AtomicUsize,
    batches: AtomicUsize,
}

struct HostSession<'b> {
    backend: &'b HostSessions,
    pages: HashMap<PageId, Vec<u8>>,
}

impl MergeBackend for HostSessions {
    fn name(&self) -> &str {
        "host-sessions"
    }

    fn merge_batch(&self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        CpuMerge::best(1)?.merge_batch(batch)
    }

    fn open_session(&self, _page_len: usize) -> Result<Option<Box<dyn MergeSession + '_>>, Error> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Box::new(HostSession {
            backend: self,
            pages: HashMap::new(),
        })))
    }
}

impl MergeSession for HostSession<'_> {
    fn fold(&mut self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        self.backend.batches.fetch_add(1, Ordering::Relaxed);
        let stats = batch.validate()?;
        for (slot, page_id) in batch.page_ids().iter().enumerate() {
            let base = batch.page(slot).unwrap_or_default();
            let image = self.pages.entry(*page_id).or_insert_with(|| base.to_vec());
            for entry in batch.chain(slot).unwrap_or_default() {
                entry.delta.apply(image)?;
            }
        }
        Ok(stats)
    }

    fn finish(self: Box<Self>, sink: &mut PageSink<'_>) -> Result<(), Error> {
        for (page_id, image) in &self.pages {
            sink(*page_id, image)?;
        }
        Ok(())
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

/// Commits a seeded history over `PAGES` pages with no checkpoint; returns
/// the model of every page.
fn build(storage: &Arc<MemStorage>) -> BTreeMap<PageId, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(11);
    let db = options(storage).open(PATH).unwrap();
    let page_len = db.page_len();
    let mut model: BTreeMap<PageId, Vec<u8>> = BTreeMap::new();
    for _ in 0..COMMITS {
        let mut tx = db.begin_page_write().unwrap();
        for _ in 0..(PAGES / COMMITS + 1) {
            if model.len() < PAGES {
                let id = tx.allocate_page().unwrap();
                model.insert(id, vec![0; page_len]);
            }
        }
        let ids: Vec<PageId> = model.keys().copied().collect();
        for _ in 0..rng.gen_range(1..8) {
            let id = ids[rng.gen_range(0..ids.len())];
            let len = rng.gen_range(1..300usize);
            let offset = rng.gen_range(0..page_len - len);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            tx.write(id, offset, &bytes).unwrap();
            model.get_mut(&id).unwrap()[offset..offset + len].copy_from_slice(&bytes);
        }
        tx.commit().unwrap();
    }
    assert_eq!(db.metrics().checkpoints, 0);
    model
}

fn verify(db: &Database, model: &BTreeMap<PageId, Vec<u8>>) {
    let rx = db.begin_page_read().unwrap();
    for (id, expected) in model {
        assert_eq!(&rx.read_page(*id).unwrap()[..], &expected[..], "{id}");
    }
}

#[test]
fn a_session_backed_recovery_checkpoints_within_the_budget_and_matches_the_model() {
    let storage = Arc::new(MemStorage::new());
    let model = build(&storage);
    let backend = Arc::new(HostSessions::default());
    let db = Options {
        merge_backend: Some(backend.clone()),
        gpu_merge_min_pages: 1,
        replay_window_bytes: 8 * 1024,
        memory_budget_bytes: MIN_MEMORY_BUDGET_BYTES,
        ..options(&storage)
    }
    .open(PATH)
    .unwrap();
    let metrics = db.metrics();
    assert_eq!(metrics.recovered_commits, COMMITS as u64);
    assert!(metrics.checkpoints >= 3, "{metrics:?}");
    assert!(
        metrics.recovery_peak_bytes <= MIN_MEMORY_BUDGET_BYTES,
        "{metrics:?}"
    );
    assert!(
        metrics.peak_cache_bytes <= MIN_MEMORY_BUDGET_BYTES,
        "{metrics:?}"
    );
    let sessions = backend.sessions.load(Ordering::Relaxed);
    assert!(
        sessions >= 3,
        "a new session after each checkpoint: {sessions}"
    );
    assert!(backend.batches.load(Ordering::Relaxed) > sessions);
    verify(&db, &model);
    drop(db);
    // A CPU recovery of the checkpointed state reads the same.
    let db = options(&storage).open(PATH).unwrap();
    let replayed = db.metrics().recovered_commits;
    assert!(
        replayed < COMMITS as u64,
        "replayed from the last replay checkpoint: {replayed}"
    );
    verify(&db, &model);
}
