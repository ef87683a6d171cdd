//! Merge sessions over a device page mirror (`GpuMerge::open_session`):
//! folding a run of batches in a session gives the pages folding every chain
//! at once gives, whatever the batches; recovery through a session equals a
//! model of the commits; a session that fails makes recovery replay on the
//! CPU, still exact. These run on the simulated device (the kernel's CPU
//! twin behind the same mirror contract); `session_on_a_real_gpu` runs the
//! same check on a GPU and skips with a printed reason without one.

use std::collections::BTreeMap;
use std::sync::Arc;

use mmsb_cuda::bench::{DeltaShape, Workload};
use mmsb_cuda::{probe, FaultInjection, GpuConfig, GpuMerge, GpuStatus, SimulatedDevice};
use mmsb_engine::merge::{ChainEntry, CpuMerge, MergeBackend, MergeBatch};
use mmsb_engine::{Database, Options, PageId, PageRead, PageWrite};
use mmsb_wal::storage::MemStorage;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PATH: &str = "/db/session.mmsb";

fn simulated(max_chunk_pages: usize) -> GpuMerge {
    GpuMerge::with_device(
        Box::new(SimulatedDevice::new(max_chunk_pages)),
        CpuMerge::best(2).unwrap(),
    )
}

/// Every page of `work` folded at once on the CPU.
fn folded_at_once(work: &Workload) -> Vec<u8> {
    let mut batch = work.batch().unwrap();
    CpuMerge::best(1).unwrap().merge_batch(&mut batch).unwrap();
    batch.into_images()
}

/// The deltas of page `page` (epoch order) that batch `part` of `parts`
/// carries: contiguous pieces, cut at page-dependent places.
fn piece(work: &Workload, page: usize, part: usize, parts: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..work.chains[page].len()).collect();
    order.sort_by_key(|&i| work.chains[page][i].0);
    let len = order.len();
    let cut = |j: usize| ((j * len) / parts + (page % 3)).min(len);
    let (from, to) = (
        if part == 0 { 0 } else { cut(part) },
        if part + 1 == parts {
            len
        } else {
            cut(part + 1)
        },
    );
    order[from.min(to)..to].iter().map(|&i| (page, i)).collect()
}

/// Folds `work` through a session in `parts` batches; pages a batch brings
/// again get a garbage base image, which the session must ignore.
fn folded_in_session(merge: &GpuMerge, work: &Workload, parts: usize) -> Vec<u8> {
    let page_len = work.page_len;
    let garbage = vec![0xEEu8; page_len];
    let mut session = merge
        .open_session(page_len)
        .unwrap()
        .expect("the simulated device keeps a mirror");
    let mut seen = vec![false; work.pages()];
    for part in 0..parts {
        let mut batch = MergeBatch::new(page_len).unwrap();
        for (page, seen) in seen.iter_mut().enumerate() {
            let entries = piece(work, page, part, parts);
            if entries.is_empty() {
                continue;
            }
            let base = if *seen {
                &garbage[..]
            } else {
                &work.base[page * page_len..(page + 1) * page_len]
            };
            *seen = true;
            let chain = entries.iter().map(|&(p, i)| {
                let (epoch, delta) = &work.chains[p][i];
                ChainEntry::new(*epoch, delta)
            });
            batch.push_page(PageId(page as u64), base, chain).unwrap();
        }
        session.fold(&mut batch).unwrap();
    }
    let mut out = work.base.clone();
    let mut delivered = 0;
    session
        .finish(&mut |page_id, image| {
            let at = page_id.get() as usize * page_len;
            out[at..at + page_len].copy_from_slice(image);
            delivered += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        delivered,
        seen.iter().filter(|s| **s).count(),
        "every page once"
    );
    out
}

#[test]
fn a_session_equals_folding_at_once() {
    let work = Workload::generate(300, 512, DeltaShape::default(), 11);
    let merge = simulated(7);
    assert_eq!(folded_in_session(&merge, &work, 4), folded_at_once(&work));
    assert_eq!(merge.fallback_count(), 0);
    assert!(merge.gpu_batches() >= 4);
}

#[test]
fn a_session_without_a_device_is_not_offered() {
    let merge = GpuMerge::new(&GpuConfig {
        fault: Some(FaultInjection::NoDevice),
        ..GpuConfig::default()
    })
    .unwrap();
    assert!(merge.open_session(4096).unwrap().is_none());
}

#[test]
fn a_failed_fold_is_an_error_and_retires_the_device() {
    let work = Workload::generate(40, 256, DeltaShape::default(), 5);
    let merge = simulated(8);
    // Armed before the session: the session holds the device until it ends.
    merge.set_fault(Some(FaultInjection::FailLaunch));
    let mut session = merge.open_session(256).unwrap().unwrap();
    let mut batch = work.batch().unwrap();
    assert!(session.fold(&mut batch).is_err());
    drop(session);
    assert_eq!(merge.fallback_count(), 1);
    assert!(matches!(merge.status(), GpuStatus::CpuOnly(_)));
    assert!(merge.open_session(256).unwrap().is_none(), "retired");
    // Later batches still merge, on the CPU.
    let mut batch = work.batch().unwrap();
    merge.merge_batch(&mut batch).unwrap();
    assert_eq!(batch.into_images(), folded_at_once(&work));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_split_into_batches_folds_like_once(
        pages in 1usize..60,
        page_len in prop_oneof![Just(64usize), Just(100), Just(512), Just(4096)],
        parts in 1usize..6,
        chunk in 1usize..20,
        seed in any::<u64>(),
    ) {
        let shape = DeltaShape { max_run_bytes: 256.min(page_len), ..DeltaShape::default() };
        let work = Workload::generate(pages, page_len, shape, seed);
        let merge = simulated(chunk);
        prop_assert_eq!(folded_in_session(&merge, &work, parts), folded_at_once(&work));
    }
}

/// Commits a seeded random history; returns every page's expected bytes.
fn history(storage: &Arc<MemStorage>, seed: u64, commits: usize) -> BTreeMap<PageId, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let db = options(storage).open(PATH).unwrap();
    let page_len = db.page_len();
    let mut model: BTreeMap<PageId, Vec<u8>> = BTreeMap::new();
    for _ in 0..commits {
        let mut tx = db.begin_page_write().unwrap();
        for _ in 0..if model.len() < 8 {
            8
        } else {
            rng.gen_range(0..3)
        } {
            model.insert(tx.allocate_page().unwrap(), vec![0; page_len]);
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
    }
    model
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

fn recover(storage: &Arc<MemStorage>, merge: Arc<GpuMerge>, window: usize) -> Database {
    Options {
        merge_backend: Some(merge),
        gpu_merge_min_pages: 1,
        replay_window_bytes: window,
        ..options(storage)
    }
    .open(PATH)
    .unwrap()
}

fn assert_model(db: &Database, model: &BTreeMap<PageId, Vec<u8>>) {
    let rx = db.begin_page_read().unwrap();
    for (id, expected) in model {
        assert_eq!(&rx.read_page(*id).unwrap()[..], &expected[..], "{id}");
    }
}

#[test]
fn recovery_through_a_session_equals_the_model() {
    let storage = Arc::new(MemStorage::new());
    let model = history(&storage, 3, 50);
    let merge = Arc::new(simulated(5));
    let db = recover(&storage, Arc::clone(&merge), 4096);
    assert_model(&db, &model);
    assert_eq!(db.metrics().recovered_commits, 50);
    assert!(merge.gpu_batches() > 3, "several windows in the session");
    assert_eq!(merge.fallback_count(), 0);
}

#[test]
fn a_failing_session_makes_recovery_replay_on_the_cpu() {
    for fault in [FaultInjection::FailLaunch, FaultInjection::OutOfMemory] {
        let storage = Arc::new(MemStorage::new());
        let model = history(&storage, 9, 40);
        let merge = Arc::new(simulated(5));
        merge.set_fault(Some(fault));
        let db = recover(&storage, Arc::clone(&merge), 4096);
        assert_model(&db, &model);
        assert_eq!(
            db.metrics().recovered_commits,
            40,
            "{fault:?}: counted once"
        );
        assert_eq!(merge.fallback_count(), 1, "{fault:?}");
    }
}

#[test]
fn session_on_a_real_gpu() {
    let info = match probe(0) {
        Ok(info) => info,
        Err(error) => {
            println!("skipped: no usable CUDA device ({error})");
            return;
        }
    };
    let merge = GpuMerge::new(&GpuConfig {
        max_chunk_pages: 64,
        ..GpuConfig::default()
    })
    .unwrap();
    if let GpuStatus::CpuOnly(reason) = merge.status() {
        println!("skipped: GPU merge unavailable on {info:?}: {reason}");
        return;
    }
    for (pages, page_len) in [(500, 4096), (300, 1000), (40, 65536)] {
        let work = Workload::generate(pages, page_len, DeltaShape::default(), pages as u64);
        assert_eq!(folded_in_session(&merge, &work, 3), folded_at_once(&work));
    }
    assert_eq!(merge.fallback_count(), 0);
}
