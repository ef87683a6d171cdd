//! Property tests of the merge module against the model: [`Delta::apply`]
//! applied one delta after another in epoch order.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId};

use super::{ChainEntry, CpuMerge, MergeBackend, MergeBatch, MergeKernel, MergePath};

/// Longest run the generators make, in bytes.
const MAX_RUN_LEN: usize = 300;

/// The shape of one random delta; the bytes come from `seed`.
#[derive(Clone, Debug)]
struct DeltaSpec {
    /// (gap before the run, run length) pairs, laid out left to right.
    runs: Vec<(usize, usize)>,
    /// Length of a run forced to end exactly at the page end, if any.
    tail_run_len: Option<usize>,
    seed: u64,
}

/// Sparse deltas: short runs far apart. Dense: runs a few bytes apart.
fn delta_spec() -> impl Strategy<Value = DeltaSpec> {
    let sparse = prop::collection::vec((1usize..4096, 1usize..=64), 0..48);
    let dense = prop::collection::vec((1usize..16, 1usize..=MAX_RUN_LEN), 0..64);
    (
        prop_oneof![sparse, dense],
        prop::option::of(1usize..=MAX_RUN_LEN),
        any::<u64>(),
    )
        .prop_map(|(runs, tail_run_len, seed)| DeltaSpec {
            runs,
            tail_run_len,
            seed,
        })
}

/// Builds the delta `spec` describes on a `page_len`-byte page.
fn build_delta(page_id: PageId, page_len: usize, spec: &DeltaSpec) -> Delta {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let tail_len = spec.tail_run_len.map_or(0, |len| len.min(page_len / 2));
    // Leave one byte between the last ordinary run and the tail run.
    let limit = page_len - tail_len - usize::from(tail_len > 0);
    let mut spans = Vec::new();
    let mut pos = 0usize;
    for &(gap, len) in &spec.runs {
        let offset = pos + gap;
        if offset >= limit {
            break;
        }
        let len = len.min(limit - offset);
        spans.push((offset, len));
        pos = offset + len;
    }
    if tail_len > 0 {
        spans.push((page_len - tail_len, tail_len));
    }
    let total: usize = spans.iter().map(|&(_, len)| len).sum();
    let mut payload = vec![0u8; total];
    rng.fill_bytes(&mut payload);
    let mut at = 0usize;
    let runs = spans.iter().map(|&(offset, len)| {
        let bytes = &payload[at..at + len];
        at += len;
        DeltaRun {
            offset: offset as u32,
            bytes,
        }
    });
    let runs: Vec<DeltaRun<'_>> = runs.collect();
    Delta::from_sorted_runs(page_id, runs).unwrap()
}

fn random_page(page_len: usize, seed: u64) -> Vec<u8> {
    let mut page = vec![0u8; page_len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut page);
    page
}

/// The model: apply the deltas one after another with `Delta::apply`.
fn model_apply<'a>(base: &[u8], deltas: impl IntoIterator<Item = &'a Delta>) -> Vec<u8> {
    let mut page = base.to_vec();
    for delta in deltas {
        delta.apply(&mut page).unwrap();
    }
    page
}

fn available_kernels() -> Vec<MergeKernel> {
    MergePath::ALL
        .into_iter()
        .filter_map(|path| {
            let kernel = MergeKernel::new(path).ok();
            if kernel.is_none() {
                eprintln!("skipping {path}: not supported on this CPU");
            }
            kernel
        })
        .collect()
}

/// One page of a random batch: its base seed and its deltas with epochs, in
/// the (shuffled) order they are handed to the batch.
#[derive(Clone, Debug)]
struct PageSpec {
    base_seed: u64,
    chain: Vec<(u64, DeltaSpec)>,
}

fn page_spec() -> impl Strategy<Value = PageSpec> {
    (
        any::<u64>(),
        prop::collection::vec(delta_spec(), 0..6),
        any::<u64>(),
    )
        .prop_map(|(base_seed, deltas, shuffle_seed)| {
            // Distinct epochs, then a shuffle so the given order is not the epoch order.
            let mut rng = StdRng::seed_from_u64(shuffle_seed);
            let mut chain: Vec<(u64, DeltaSpec)> = deltas
                .into_iter()
                .enumerate()
                .map(|(i, spec)| (i as u64 * 3 + rng.gen_range(1..3), spec))
                .collect();
            for i in (1..chain.len()).rev() {
                chain.swap(i, rng.gen_range(0..=i));
            }
            PageSpec { base_seed, chain }
        })
}

/// A page of a built batch: id, base image and (epoch, delta) chain as given.
type BuiltPage = (PageId, Vec<u8>, Vec<(u64, Delta)>);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every available path leaves the page exactly as `Delta::apply` does,
    /// delta after delta: sparse and dense deltas, runs of 1..=300 bytes
    /// (every tail length mod 32 and 64), runs that end at the page end, and
    /// page sizes from 4 KiB to 64 KiB that need not be powers of two.
    #[test]
    fn every_path_matches_delta_apply(
        page_len in 4096usize..=65536,
        base_seed in any::<u64>(),
        specs in prop::collection::vec(delta_spec(), 1..6),
    ) {
        let page_id = PageId(42);
        let base = random_page(page_len, base_seed);
        let deltas: Vec<Delta> = specs.iter().map(|s| build_delta(page_id, page_len, s)).collect();
        let expected = model_apply(&base, &deltas);
        for kernel in available_kernels() {
            let mut page = base.clone();
            for delta in &deltas {
                kernel.apply_delta(&mut page, delta).unwrap();
            }
            prop_assert!(page == expected, "{:?} differs from Delta::apply", kernel.path());

            let chain: Vec<ChainEntry<'_>> = deltas
                .iter()
                .enumerate()
                .map(|(i, d)| ChainEntry::new(CommitEpoch(i as u64 + 1), d))
                .collect();
            let mut folded = base.clone();
            let stats = kernel.fold_chain(page_id, &mut folded, &chain).unwrap();
            prop_assert!(folded == expected, "{:?} fold_chain differs", kernel.path());
            let written: usize = deltas.iter().map(Delta::changed_len).sum();
            prop_assert_eq!(stats.bytes_written, written as u64);
        }
    }

    /// A batch merge, on every path and with one or two threads, equals
    /// applying each page's deltas in epoch order, although the deltas were
    /// handed to the batch in shuffled order.
    #[test]
    fn batch_merge_matches_sequential_apply_in_epoch_order(
        page_len in 4096usize..=16384,
        pages in prop::collection::vec(page_spec(), 1..10),
    ) {
        let built: Vec<BuiltPage> = pages
            .iter()
            .enumerate()
            .map(|(slot, spec)| {
                let id = PageId(slot as u64 * 5 + 1);
                let chain = spec
                    .chain
                    .iter()
                    .map(|(epoch, d)| (*epoch, build_delta(id, page_len, d)))
                    .collect();
                (id, random_page(page_len, spec.base_seed), chain)
            })
            .collect();
        let expected: Vec<Vec<u8>> = built
            .iter()
            .map(|(_, base, chain)| {
                let mut by_epoch: Vec<&(u64, Delta)> = chain.iter().collect();
                by_epoch.sort_by_key(|(epoch, _)| *epoch);
                model_apply(base, by_epoch.into_iter().map(|(_, d)| d))
            })
            .collect();
        for path in MergePath::available() {
            for threads in [1, 2] {
                let backend = CpuMerge::new(path, threads).unwrap();
                let mut batch = MergeBatch::new(page_len).unwrap();
                for (id, base, chain) in &built {
                    let entries = chain.iter().map(|(e, d)| ChainEntry::new(CommitEpoch(*e), d));
                    batch.push_page(*id, base, entries).unwrap();
                }
                let stats = backend.merge_batch(&mut batch).unwrap();
                prop_assert_eq!(stats.pages, built.len() as u64);
                for (slot, want) in expected.iter().enumerate() {
                    prop_assert!(
                        batch.page(slot) == Some(&want[..]),
                        "{} with {} threads: slot {} differs", path, threads, slot
                    );
                }
            }
        }
    }
}

#[test]
fn newer_epoch_wins_whatever_the_argument_order() {
    let page_id = PageId(9);
    let old = Delta::full_image(page_id, &[1; 4096]).unwrap();
    let new = Delta::full_image(page_id, &[2; 4096]).unwrap();
    for path in MergePath::available() {
        let mut batch = MergeBatch::new(4096).unwrap();
        batch
            .push_page(
                page_id,
                &[0; 4096],
                [
                    ChainEntry::new(CommitEpoch(8), &new),
                    ChainEntry::new(CommitEpoch(7), &old),
                ],
            )
            .unwrap();
        CpuMerge::new(path, 2)
            .unwrap()
            .merge_batch(&mut batch)
            .unwrap();
        assert!(batch.images().iter().all(|&b| b == 2), "{path}");
    }
}

#[test]
fn empty_batch_merges_to_nothing() {
    let mut batch = MergeBatch::new(4096).unwrap();
    let stats = CpuMerge::best(2).unwrap().merge_batch(&mut batch).unwrap();
    assert_eq!(stats, Default::default());
}
