//! A CPU twin of the merge kernel: the same staging decision, the same chunk
//! ownership, the same word arithmetic (aligned word pairs, funnel shift,
//! byte masks, co-aligned 16-byte copies), written in Rust. It lets the
//! CPU-only tests check that the flat layout and the kernel's algorithm fold
//! exactly like [`mmsb_engine::merge::CpuMerge`], and it backs
//! [`crate::SimulatedDevice`]. A read the kernel would make outside its
//! buffers (shared stage or meta region) fails a debug assertion here.
//!
//! It models the per-page arithmetic, which kernel v2 and v3 share; v3's
//! scheduling (the two-deep page pipeline, the warp ballot that skips runs
//! missing a warp's span) changes which loads overlap, not which runs reach
//! a chunk or in what order, and is checked on the GPU by the bench's
//! `correct` section against the CPU merge.

use crate::kernel::{PAYLOAD_TILE_BYTES, RUN_TILE, STAGE_MARGIN_BYTES};
use crate::layout::{ChunkView, GpuRun, CHUNK_BYTES};

/// Filler of the stage's margins: the kernel's margins hold stale bytes,
/// which the byte masks must never let through.
const MARGIN_FILLER: u8 = 0xCD;

/// The kernel's shared-memory tiles: a page takes the staged path when its
/// runs and its payload window both fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// Most runs staged at once.
    pub runs: usize,
    /// Most payload bytes (16-aligned window) staged.
    pub payload_bytes: usize,
}

impl Tiles {
    /// The tiles the CUDA kernel is compiled with.
    pub const KERNEL: Tiles = Tiles {
        runs: RUN_TILE,
        payload_bytes: PAYLOAD_TILE_BYTES,
    };
}

impl Default for Tiles {
    fn default() -> Self {
        Tiles::KERNEL
    }
}

/// Folds every page of a chunk in `images` (`pages * page_len` bytes) the
/// way `mmsb_merge` does.
pub fn fold_chunk(images: &mut [u8], page_len: usize, view: &ChunkView<'_>) {
    fold_chunk_with(images, page_len, view, Tiles::KERNEL);
}

/// [`fold_chunk`] with other tile sizes (tests use tiny ones to drive pages
/// down the large path).
pub fn fold_chunk_with(images: &mut [u8], page_len: usize, view: &ChunkView<'_>, tiles: Tiles) {
    let pages = view.layout().pages;
    debug_assert_eq!(images.len(), pages * page_len);
    let payload_offset = view.layout().payload_offset;
    for (page, image) in images.chunks_exact_mut(page_len).enumerate().take(pages) {
        let desc = view.page(page);
        if desc.run_count == 0 {
            continue;
        }
        let runs: Vec<GpuRun> = desc.runs().map(|index| view.run(index)).collect();
        let window = desc.staged_window();
        if runs.len() <= tiles.runs && window.len() <= tiles.payload_bytes {
            let mut stage = vec![MARGIN_FILLER; 2 * STAGE_MARGIN_BYTES + window.len()];
            let from = payload_offset + window.start..payload_offset + window.end;
            stage[STAGE_MARGIN_BYTES..STAGE_MARGIN_BYTES + window.len()]
                .copy_from_slice(&view.meta()[from]);
            let src = Source {
                bytes: &stage,
                base: STAGE_MARGIN_BYTES as i64 - window.start as i64,
            };
            fold_page(image, &runs, &src);
        } else {
            let src = Source {
                bytes: view.meta(),
                base: payload_offset as i64,
            };
            for tile in runs.chunks(tiles.runs.max(1)) {
                fold_page(image, tile, &src);
            }
        }
    }
}

/// Where run bytes are read from: `bytes[payload_offset + base]` is a run's
/// first byte (the kernel's `SharedSrc` / `GlobalSrc`).
struct Source<'a> {
    bytes: &'a [u8],
    base: i64,
}

impl Source<'_> {
    fn read<const N: usize>(&self, at: i64) -> [u8; N] {
        let mut out = [0u8; N];
        let range = usize::try_from(at)
            .ok()
            .and_then(|start| self.bytes.get(start..start + N));
        debug_assert!(
            range.is_some(),
            "the kernel would read outside its buffer at {at}"
        );
        if let Some(bytes) = range {
            out.copy_from_slice(bytes);
        }
        out
    }

    /// The 4-aligned word at `at`.
    fn word(&self, at: i64) -> u32 {
        debug_assert_eq!(at & 3, 0);
        u32::from_le_bytes(self.read::<4>(at))
    }

    /// The 16-aligned chunk at `at`.
    fn vec(&self, at: i64) -> [u32; 4] {
        debug_assert_eq!(at & 15, 0);
        let bytes = self.read::<16>(at);
        std::array::from_fn(|k| {
            u32::from_le_bytes([
                bytes[4 * k],
                bytes[4 * k + 1],
                bytes[4 * k + 2],
                bytes[4 * k + 3],
            ])
        })
    }
}

/// Every 16-byte chunk of `image`: load, apply `runs` in order, store.
fn fold_page(image: &mut [u8], runs: &[GpuRun], src: &Source<'_>) {
    for lo in (0..image.len()).step_by(CHUNK_BYTES) {
        let hi = (lo + CHUNK_BYTES).min(image.len());
        let mut bytes = [0u8; CHUNK_BYTES];
        bytes[..hi - lo].copy_from_slice(&image[lo..hi]);
        let mut chunk: [u32; 4] = std::array::from_fn(|k| {
            u32::from_le_bytes([
                bytes[4 * k],
                bytes[4 * k + 1],
                bytes[4 * k + 2],
                bytes[4 * k + 3],
            ])
        });
        apply_runs(&mut chunk, lo, runs, src);
        for (k, word) in chunk.iter().enumerate() {
            bytes[4 * k..4 * k + 4].copy_from_slice(&word.to_le_bytes());
        }
        image[lo..hi].copy_from_slice(&bytes[..hi - lo]);
    }
}

/// The kernel's `apply_runs`.
fn apply_runs(chunk: &mut [u32; 4], lo: usize, runs: &[GpuRun], src: &Source<'_>) {
    let hi = lo + CHUNK_BYTES;
    for run in runs {
        let a = run.page_offset as usize;
        let b = a + run.len();
        if a >= hi || b <= lo {
            continue;
        }
        let p0 = run.payload_offset as i64 + src.base + lo as i64 - a as i64;
        if a <= lo && b >= hi && p0 & 15 == 0 {
            *chunk = src.vec(p0);
            continue;
        }
        let s = (a.max(lo) - lo) as i32;
        let e = (b.min(hi) - lo) as i32;
        for (k, word) in chunk.iter_mut().enumerate() {
            merge_word(word, k as i32, s, e, p0, src);
        }
    }
}

/// Mask of the low `n` bytes of a word (`n` clamped to 0..=4).
fn low_mask(n: i32) -> u32 {
    match n {
        i32::MIN..=0 => 0,
        4.. => u32::MAX,
        n => (1u32 << (8 * n)) - 1,
    }
}

/// CUDA's `__funnelshift_r`: `hi:lo` shifted right by `shift & 31` bits.
fn funnel_shift_r(lo: u32, hi: u32, shift: u32) -> u32 {
    ((((hi as u64) << 32) | lo as u64) >> (shift & 31)) as u32
}

/// The kernel's `merge_word`.
fn merge_word(word: &mut u32, k: i32, s: i32, e: i32, p0: i64, src: &Source<'_>) {
    let mask = low_mask(e - 4 * k) & !low_mask(s - 4 * k);
    if mask == 0 {
        return;
    }
    let p = p0 + 4 * k as i64;
    let at = p & !3;
    let shift = (p & 3) as u32;
    let mut x = src.word(at);
    if shift != 0 {
        x = funnel_shift_r(x, src.word(at + 4), 8 * shift);
    }
    *word = (*word & !mask) | (x & mask);
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

    fn check(page_len: usize, raw: Vec<RawChain>, max_pages: usize, tiles: Tiles) {
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
            let measured = measure_chunk(&batch, slots.clone()).unwrap();
            let mut meta = vec![0xEE; measured.total_len + 5];
            let layout = fill_chunk(&batch, slots.clone(), &mut meta).unwrap();
            assert_eq!(layout, measured);
            let view = ChunkView::new(layout, &meta).unwrap();
            let range = slots.start * page_len..slots.end * page_len;
            fold_chunk_with(&mut images[range], page_len, &view, tiles);
        }
        assert_eq!(images, expected.images());
    }

    fn tiny_tiles() -> impl Strategy<Value = Tiles> {
        (1usize..5, 0usize..6).prop_map(|(runs, sixteens)| Tiles {
            runs,
            payload_bytes: 16 * sixteens,
        })
    }

    proptest! {
        #[test]
        fn kernel_twin_matches_the_cpu_merge(raw in chains(256), max_pages in 1usize..4) {
            check(256, raw, max_pages, Tiles::KERNEL);
        }

        #[test]
        fn kernel_twin_handles_pages_not_multiple_of_16(raw in chains(100)) {
            check(100, raw, 3, Tiles::KERNEL);
        }

        #[test]
        fn large_path_and_run_tiles_match_the_cpu_merge(
            raw in chains(256),
            tiles in tiny_tiles(),
            page_len in prop_oneof![Just(256usize), Just(250usize)],
        ) {
            let raw = raw
                .into_iter()
                .map(|chain| {
                    chain
                        .into_iter()
                        .map(|(epoch, runs)| {
                            let runs = runs
                                .into_iter()
                                .filter(|(offset, _)| (*offset as usize) < page_len)
                                .collect();
                            (epoch, runs)
                        })
                        .collect()
                })
                .collect();
            check(page_len, raw, 2, tiles);
        }
    }

    #[test]
    fn funnel_shift_and_masks_behave_like_cuda() {
        assert_eq!(funnel_shift_r(0x4433_2211, 0x8877_6655, 8), 0x5544_3322);
        assert_eq!(funnel_shift_r(0x4433_2211, 0x8877_6655, 40), 0x5544_3322);
        assert_eq!(low_mask(-3), 0);
        assert_eq!(low_mask(0), 0);
        assert_eq!(low_mask(1), 0xFF);
        assert_eq!(low_mask(3), 0x00FF_FFFF);
        assert_eq!(low_mask(9), u32::MAX);
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
        let mut meta = vec![0; 1024];
        let layout = fill_chunk(&batch, 0..1, &mut meta).unwrap();
        let mut expected = vec![1u8; 40];
        expected[8..16].fill(2);
        expected.resize(64, 0);
        for tiles in [
            Tiles::KERNEL,
            Tiles {
                runs: 1,
                payload_bytes: 0,
            },
        ] {
            let mut images = batch.images().to_vec();
            fold_chunk_with(
                &mut images,
                64,
                &ChunkView::new(layout, &meta).unwrap(),
                tiles,
            );
            assert_eq!(images, expected);
        }
    }
}
