//! A CPU twin of the merge kernel: the same chunk ownership and run walk,
//! written in Rust. It lets the CPU-only tests check that the flat layout and
//! the kernel's algorithm fold exactly like [`mmsb_engine::merge::CpuMerge`],
//! and it backs [`crate::SimulatedDevice`].

use crate::layout::{ChunkView, CHUNK_BYTES};

/// Folds every page of a chunk in `images` (`pages * page_len` bytes) the
/// way `mmsb_merge` does: per 16-byte chunk, apply every overlapping run in
/// list order.
pub fn fold_chunk(images: &mut [u8], page_len: usize, view: &ChunkView<'_>) {
    let pages = view.layout().pages;
    debug_assert_eq!(images.len(), pages * page_len);
    let payload = view.payload();
    for (page, image) in images.chunks_exact_mut(page_len).enumerate().take(pages) {
        let runs = view.page_runs(page);
        for lo in (0..page_len).step_by(CHUNK_BYTES) {
            let hi = (lo + CHUNK_BYTES).min(page_len);
            let mut chunk = [0u8; CHUNK_BYTES];
            chunk[..hi - lo].copy_from_slice(&image[lo..hi]);
            for index in runs.clone() {
                let run = view.run(index);
                let a = run.page_offset as usize;
                let b = a + run.len();
                let (s, e) = (a.max(lo), b.min(hi));
                if s >= e {
                    continue;
                }
                let src = run.payload_offset as usize + (s - a);
                chunk[s - lo..e - lo].copy_from_slice(&payload[src..src + (e - s)]);
            }
            image[lo..hi].copy_from_slice(&chunk[..hi - lo]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{fill_chunk, measure_chunk, plan_chunks};
    use mmsb_engine::merge::{ChainEntry, CpuMerge, MergeBackend, MergeBatch};
    use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId};
    use proptest::prelude::*;

    /// Per page, deltas as (epoch, runs as (offset, bytes)).
    type RawChain = Vec<(u64, Vec<(u32, Vec<u8>)>)>;

    /// Random deltas: (page, epoch, runs as (offset, bytes)) for `pages` pages.
    fn chains(page_len: usize) -> impl Strategy<Value = Vec<RawChain>> {
        let run = (
            0..page_len as u32,
            prop::collection::vec(any::<u8>(), 1..80),
        );
        let delta = (1u64..1000, prop::collection::vec(run, 0..6));
        prop::collection::vec(prop::collection::vec(delta, 0..6), 1..8)
    }

    /// Turns raw runs into a valid delta: clip to the page, sort, drop overlaps.
    fn make_delta(page: u64, page_len: usize, mut runs: Vec<(u32, Vec<u8>)>) -> Delta {
        runs.sort_by_key(|(offset, _)| *offset);
        let mut kept: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut end = 0usize;
        for (offset, mut bytes) in runs {
            let start = offset as usize;
            if start < end && !kept.is_empty() {
                continue;
            }
            bytes.truncate(page_len - start);
            end = start + bytes.len() + 1;
            kept.push((offset, bytes));
        }
        Delta::from_sorted_runs(
            PageId(page),
            kept.iter().map(|(offset, bytes)| DeltaRun {
                offset: *offset,
                bytes,
            }),
        )
        .unwrap()
    }

    fn check(page_len: usize, raw: Vec<RawChain>, max_pages: usize) {
        let mut deltas: Vec<Vec<(CommitEpoch, Delta)>> = Vec::new();
        for (page, chain) in raw.into_iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            let mut list = Vec::new();
            for (epoch, runs) in chain {
                if seen.insert(epoch) {
                    list.push((CommitEpoch(epoch), make_delta(page as u64, page_len, runs)));
                }
            }
            deltas.push(list);
        }
        let base: Vec<u8> = (0..page_len).map(|i| (i * 7 + 3) as u8).collect();
        let build = || {
            let mut batch = MergeBatch::new(page_len).unwrap();
            for (page, list) in deltas.iter().enumerate() {
                batch
                    .push_page(
                        PageId(page as u64),
                        &base,
                        list.iter()
                            .map(|(epoch, delta)| ChainEntry::new(*epoch, delta)),
                    )
                    .unwrap();
            }
            batch
        };
        let mut expected = build();
        CpuMerge::best(1)
            .unwrap()
            .merge_batch(&mut expected)
            .unwrap();
        let batch = build();
        let mut images = batch.images().to_vec();
        for slots in plan_chunks(&batch, max_pages, usize::MAX) {
            let layout = measure_chunk(&batch, slots.clone()).unwrap();
            let mut meta = vec![0xEE; layout.total_len + 5];
            fill_chunk(&batch, slots.clone(), &layout, &mut meta).unwrap();
            let view = ChunkView::new(layout, &meta).unwrap();
            let range = slots.start * page_len..slots.end * page_len;
            fold_chunk(&mut images[range], page_len, &view);
        }
        assert_eq!(images, expected.images());
    }

    proptest! {
        #[test]
        fn kernel_twin_matches_the_cpu_merge(raw in chains(256), max_pages in 1usize..4) {
            check(256, raw, max_pages);
        }

        #[test]
        fn kernel_twin_handles_pages_not_multiple_of_16(raw in chains(100)) {
            check(100, raw, 3);
        }
    }

    #[test]
    fn later_epoch_wins_on_overlap_regardless_of_push_order() {
        let old = make_delta(0, 64, vec![(0, vec![1; 40])]);
        let new = make_delta(0, 64, vec![(8, vec![2; 8])]);
        let mut batch = MergeBatch::new(64).unwrap();
        batch
            .push_page(
                PageId(0),
                &[0; 64],
                [
                    ChainEntry::new(CommitEpoch(9), &new),
                    ChainEntry::new(CommitEpoch(3), &old),
                ],
            )
            .unwrap();
        let layout = measure_chunk(&batch, 0..1).unwrap();
        let mut meta = vec![0; layout.total_len];
        fill_chunk(&batch, 0..1, &layout, &mut meta).unwrap();
        let mut images = batch.images().to_vec();
        fold_chunk(&mut images, 64, &ChunkView::new(layout, &meta).unwrap());
        let mut expected = vec![1u8; 40];
        expected[8..16].fill(2);
        expected.resize(64, 0);
        assert_eq!(images, expected);
    }
}
