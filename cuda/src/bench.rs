//! Measurement helpers shared by the GPU bench (`examples/gpu_bench.rs`) and
//! the tests: a seeded random workload of pages and delta chains, and
//! medians. No timing happens here.

use mmsb_engine::merge::{ChainEntry, MergeBatch};
use mmsb_engine::Error;
use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId};

/// A small, fast, seeded generator (SplitMix64); benches need no crypto.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi` (`lo <= hi`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The shape of the random delta chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaShape {
    /// Deltas per page.
    pub deltas_per_page: usize,
    /// Most runs per delta (at least one).
    pub max_runs_per_delta: usize,
    /// Shortest run in bytes.
    pub min_run_bytes: usize,
    /// Longest run in bytes.
    pub max_run_bytes: usize,
}

impl Default for DeltaShape {
    /// 8 deltas a page, 1–4 runs a delta, runs of 8–256 bytes.
    fn default() -> Self {
        DeltaShape {
            deltas_per_page: 8,
            max_runs_per_delta: 4,
            min_run_bytes: 8,
            max_run_bytes: 256,
        }
    }
}

/// Base images and delta chains of `pages` pages, reproducible from a seed.
#[derive(Debug)]
pub struct Workload {
    /// Bytes per page.
    pub page_len: usize,
    /// Base images, slot after slot.
    pub base: Vec<u8>,
    /// Per page, its deltas with their epochs (in a shuffled order: the batch
    /// sorts them).
    pub chains: Vec<Vec<(CommitEpoch, Delta)>>,
}

impl Workload {
    /// Random pages and chains; chains overlap each other within a page so
    /// that epoch order matters.
    pub fn generate(pages: usize, page_len: usize, shape: DeltaShape, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut base = vec![0u8; pages * page_len];
        rng.fill(&mut base);
        let chains = (0..pages)
            .map(|page| random_chain(&mut rng, page as u64, page_len, shape))
            .collect();
        Workload {
            page_len,
            base,
            chains,
        }
    }

    /// Pages in the workload.
    pub fn pages(&self) -> usize {
        self.chains.len()
    }

    /// Bytes the deltas change (the payload), over all pages.
    pub fn payload_bytes(&self) -> u64 {
        self.chains
            .iter()
            .flatten()
            .map(|(_, delta)| delta.changed_len() as u64)
            .sum()
    }

    /// Bytes a merge must move: page images in and out plus the payload.
    pub fn bytes_moved(&self) -> u64 {
        2 * self.base.len() as u64 + self.payload_bytes()
    }

    /// A fresh batch of every page over its base image.
    pub fn batch(&self) -> Result<MergeBatch<'_>, Error> {
        let deltas: usize = self.chains.iter().map(Vec::len).sum();
        let mut batch = MergeBatch::with_capacity(self.page_len, self.pages(), deltas)?;
        for (page, (chain, base)) in self
            .chains
            .iter()
            .zip(self.base.chunks_exact(self.page_len))
            .enumerate()
        {
            batch.push_page(
                PageId(page as u64),
                base,
                chain
                    .iter()
                    .map(|(epoch, delta)| ChainEntry::new(*epoch, delta)),
            )?;
        }
        Ok(batch)
    }
}

fn random_chain(
    rng: &mut SplitMix64,
    page: u64,
    page_len: usize,
    shape: DeltaShape,
) -> Vec<(CommitEpoch, Delta)> {
    let mut chain = Vec::with_capacity(shape.deltas_per_page);
    let first_epoch = 1 + rng.range(0, 1000) as u64;
    for index in 0..shape.deltas_per_page {
        // Epochs are pushed newest first half the time: the batch must sort them.
        let step = if rng.next_u64().is_multiple_of(2) {
            index
        } else {
            shape.deltas_per_page - 1 - index
        };
        let epoch = CommitEpoch(first_epoch + 2 * step as u64);
        chain.push((epoch, random_delta(rng, page, page_len, shape)));
    }
    chain.sort_by_key(|(epoch, _)| *epoch);
    chain.dedup_by_key(|(epoch, _)| *epoch);
    chain
}

fn random_delta(rng: &mut SplitMix64, page: u64, page_len: usize, shape: DeltaShape) -> Delta {
    let runs = rng.range(1, shape.max_runs_per_delta.max(1));
    let mut spans: Vec<(usize, usize)> = (0..runs)
        .map(|_| {
            let len = rng
                .range(shape.min_run_bytes.max(1), shape.max_run_bytes.max(1))
                .min(page_len);
            (rng.range(0, page_len - len), len)
        })
        .collect();
    spans.sort_unstable();
    let mut kept: Vec<(usize, Vec<u8>)> = Vec::with_capacity(spans.len());
    let mut end = 0usize;
    for (offset, len) in spans {
        if !kept.is_empty() && offset <= end {
            continue;
        }
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        end = offset + len;
        kept.push((offset, bytes));
    }
    let runs = kept.iter().map(|(offset, bytes)| DeltaRun {
        offset: *offset as u32,
        bytes,
    });
    // Spans are sorted, disjoint and not adjacent by construction.
    Delta::from_sorted_runs(PageId(page), runs).unwrap_or_else(|_| Delta::new(PageId(page)))
}

/// The median of `samples` (sorted in place); 0 for none.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2.0
    }
}

/// Gigabytes (10^9 bytes) per second.
pub fn gb_per_s(bytes: u64, ms: f64) -> f64 {
    if ms <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (ms * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_engine::merge::{CpuMerge, MergeBackend};

    #[test]
    fn workload_is_reproducible_and_valid() {
        let a = Workload::generate(16, 512, DeltaShape::default(), 7);
        let b = Workload::generate(16, 512, DeltaShape::default(), 7);
        assert_eq!(a.base, b.base);
        assert_eq!(a.payload_bytes(), b.payload_bytes());
        let mut batch = a.batch().unwrap();
        let stats = CpuMerge::best(1).unwrap().merge_batch(&mut batch).unwrap();
        assert_eq!(stats.pages, 16);
        assert_eq!(stats.bytes_written, a.payload_bytes());
        assert_ne!(batch.images(), &a.base[..]);
        assert_eq!(a.bytes_moved(), 2 * 16 * 512 + a.payload_bytes());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(gb_per_s(2_000_000, 1.0), 2.0);
    }
}
