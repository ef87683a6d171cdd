//! Pages sharded over the GPUs of one process through NCCL
//! (`mmsb_cuda::nccl`, cargo feature `nccl`). On a machine with one GPU the
//! same code runs with a world size of 1 (ownership moves then go through an
//! NCCL send to self). Skips with a printed reason without a GPU or NCCL.
#![cfg(feature = "nccl")]

use mmsb_cuda::arena::DEFAULT_CHUNK_ENTRIES;
use mmsb_cuda::bench::{DeltaShape, Workload};
use mmsb_cuda::nccl::{loaded_nccl_library, nccl_library_present, DeltaCounts, ShardedMerge};
use mmsb_cuda::{device_count, ArenaGeometry, GpuConfig};
use mmsb_engine::merge::{CpuMerge, MergeBackend};
use mmsb_wal::PageId;

fn usable_devices() -> Option<usize> {
    if !nccl_library_present() {
        println!("skipped: no NCCL library (cudarc looks for libnccl.so)");
        return None;
    }
    match device_count() {
        Ok(0) | Err(_) => {
            println!("skipped: no CUDA device");
            None
        }
        Ok(count) => Some(count),
    }
}

#[test]
fn sharded_fold_moves_and_all_reduce_match_the_cpu() {
    let Some(count) = usable_devices() else {
        return;
    };
    let ordinals: Vec<usize> = (0..count).collect();
    let work = Workload::generate(3000, 4096, DeltaShape::default(), 42);
    let mut expected = work.batch().unwrap();
    CpuMerge::best(2)
        .unwrap()
        .merge_batch(&mut expected)
        .unwrap();
    let mut sharded = ShardedMerge::from_devices(&ordinals, 4096, &GpuConfig::default()).unwrap();
    println!(
        "world size {}, NCCL loaded from {:?}",
        sharded.world_size(),
        loaded_nccl_library()
    );
    // Fold the first half of the pages, move a third of them (to the next
    // rank, or to themselves with one GPU), then fold everything: the moved
    // pages must fold from their moved images.
    let batch = work.batch().unwrap();
    let mut half = mmsb_engine::merge::MergeBatch::new(4096).unwrap();
    for slot in 0..1500 {
        half.push_page(
            batch.page_ids()[slot],
            batch.page(slot).unwrap(),
            batch.chain(slot).unwrap().iter().copied(),
        )
        .unwrap();
    }
    let first = sharded.fold(&half).unwrap();
    let moves: Vec<(PageId, usize)> = (0..1500u64)
        .step_by(3)
        .map(|p| {
            (
                PageId(p),
                (sharded.owner(PageId(p)) + 1) % sharded.world_size(),
            )
        })
        .collect();
    let moved = sharded.move_pages(&moves).unwrap();
    assert_eq!(moved, 500 * 4096);
    for &(page, to) in &moves {
        assert_eq!(sharded.owner(page), to);
    }
    // Folding the whole batch again re-applies the first half's chains to
    // their folded images: folding is idempotent, so the result is exact.
    let second = sharded.fold(&batch).unwrap();
    let reduced = sharded.all_reduce_counts().unwrap();
    let local = sharded
        .shard_counts()
        .into_iter()
        .fold(DeltaCounts::EMPTY, DeltaCounts::combine);
    assert_eq!(reduced, local);
    assert_eq!(reduced, first.combine(second));
    assert_eq!(reduced.pages, 4500);
    assert_eq!(sharded.resident_pages().iter().sum::<usize>(), 3000);
    let mut out = vec![0xA5u8; work.base.len()];
    sharded
        .finish(&mut |page, image| {
            let at = page.get() as usize * 4096;
            out[at..at + 4096].copy_from_slice(image);
            Ok(())
        })
        .unwrap();
    assert!(
        out == expected.images(),
        "sharded pages differ from the CPU merge"
    );
}

/// The decode-arena path on every GPU: a first arena gives half of the
/// pages as base images with their whole chains, a second one (built
/// after the first folded) the other half; arenas routed before an
/// ownership move are refused; pages end as the CPU merge.
#[test]
fn decode_arenas_fold_like_the_cpu_and_stale_ones_are_refused() {
    let Some(count) = usable_devices() else {
        return;
    };
    let ordinals: Vec<usize> = (0..count).collect();
    let work = Workload::generate(3000, 4096, DeltaShape::default(), 77);
    let mut expected = work.batch().unwrap();
    CpuMerge::best(2)
        .unwrap()
        .merge_batch(&mut expected)
        .unwrap();
    let mut sharded = ShardedMerge::from_devices(&ordinals, 4096, &GpuConfig::default()).unwrap();
    let build = |sharded: &ShardedMerge, pages: std::ops::Range<usize>| {
        let mut builder = sharded
            .arena_builder(ArenaGeometry::default(), DEFAULT_CHUNK_ENTRIES)
            .unwrap();
        for page in pages.clone() {
            let base = &work.base[page * 4096..(page + 1) * 4096];
            builder.push_base(PageId(page as u64), base).unwrap();
        }
        for k in 0..8 {
            for page in pages.clone() {
                if let Some((epoch, delta)) = work.chains[page].get(k) {
                    builder.push_delta(epoch.get(), delta).unwrap();
                }
            }
        }
        builder.finish()
    };
    let first = build(&sharded, 0..1500);
    let counts = sharded.fold_arenas(&first).unwrap();
    assert_eq!(counts.pages, 1500);
    let second = build(&sharded, 1500..3000);
    let stale = build(&sharded, 1500..1501);
    sharded.move_pages(&[(PageId(0), 0)]).unwrap();
    assert!(sharded.fold_arenas(&stale).is_err());
    // Built against the mirrors as they were before the move: the move
    // changed ownership, so this one is refused too.
    assert!(sharded.fold_arenas(&second).is_err());
    let second = build(&sharded, 1500..3000);
    sharded.fold_arenas(&second).unwrap();
    assert_eq!(sharded.resident_pages().iter().sum::<usize>(), 3000);
    let mut out = vec![0xA5u8; work.base.len()];
    sharded
        .finish(&mut |page, image| {
            let at = page.get() as usize * 4096;
            out[at..at + 4096].copy_from_slice(image);
            Ok(())
        })
        .unwrap();
    assert!(
        out == expected.images(),
        "decode-arena pages differ from the CPU merge"
    );
}
