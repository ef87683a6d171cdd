//! The in-memory page table: for every page in memory, a base image, the
//! chain of committed deltas not yet folded into it, and the materialized
//! head image (the newest version).
//!
//! A reader at snapshot `S` gets the head when `S` is at or past the newest
//! delta (no copy), else the base with the deltas of epoch ≤ `S` applied.
//! Folding moves the base forward to the fold limit, dropping deltas no live
//! snapshot needs.
//!
//! This module knows nothing of files, the TLog or transactions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mmsb_wal::{CommitEpoch, Delta, PageId};
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::merge::MergeKernel;
use crate::page_hash::PageMap;

/// The fastest merge kernel this CPU runs, chosen once.
fn kernel() -> MergeKernel {
    static KERNEL: std::sync::OnceLock<MergeKernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(MergeKernel::best)
}

/// Shards of the table; a power of two so a mask picks the shard.
const SHARD_COUNT: usize = 64;

/// All versions of one page that are still needed.
#[derive(Debug, Clone)]
struct PageVersions {
    /// Image at `base_epoch`; valid for every snapshot at or past it.
    base: Arc<[u8]>,
    base_epoch: CommitEpoch,
    /// Deltas newer than the base, in epoch order.
    chain: Vec<(CommitEpoch, Arc<Delta>)>,
    /// Bytes the deltas of `chain` change, kept up to date so that
    /// accounting stays O(1) however long a pinned chain grows.
    chain_bytes: usize,
    /// Image with every delta of the chain applied.
    head: Arc<[u8]>,
}

impl PageVersions {
    fn head_epoch(&self) -> CommitEpoch {
        self.chain
            .last()
            .map_or(self.base_epoch, |(epoch, _)| *epoch)
    }

    fn pinned_bytes(&self) -> u64 {
        let base = if self.chain.is_empty() {
            0
        } else {
            self.base.len()
        };
        (self.chain_bytes + base) as u64
    }

    fn new(image: Arc<[u8]>) -> Self {
        PageVersions {
            base: Arc::clone(&image),
            base_epoch: CommitEpoch::ZERO,
            chain: Vec::new(),
            chain_bytes: 0,
            head: image,
        }
    }

    fn read_at(&self, page_id: PageId, snapshot: CommitEpoch) -> Result<Arc<[u8]>> {
        if snapshot >= self.head_epoch() {
            return Ok(Arc::clone(&self.head));
        }
        if snapshot < self.base_epoch {
            return Err(Error::Corrupted(format!(
                "internal: {page_id} was folded to {} past live snapshot {snapshot}",
                self.base_epoch
            )));
        }
        let mut image = self.base.to_vec();
        for (epoch, delta) in &self.chain {
            if *epoch > snapshot {
                break;
            }
            kernel().apply_delta(&mut image, delta)?;
        }
        Ok(Arc::from(image))
    }

    /// Folds every delta at or below `limit` into the base.
    fn fold(&mut self, page_id: PageId, limit: CommitEpoch) -> Result<()> {
        let foldable = self.chain.partition_point(|(epoch, _)| *epoch <= limit);
        if foldable == 0 {
            return Ok(());
        }
        if foldable == self.chain.len() {
            self.base = Arc::clone(&self.head);
        } else {
            let mut image = self.base.to_vec();
            for (_, delta) in &self.chain[..foldable] {
                debug_assert_eq!(delta.page_id(), page_id);
                kernel().apply_delta(&mut image, delta)?;
            }
            self.base = Arc::from(image);
        }
        self.base_epoch = self.chain[foldable - 1].0;
        let folded: usize = self.chain[..foldable]
            .iter()
            .map(|(_, d)| d.changed_len())
            .sum();
        self.chain_bytes -= folded;
        self.chain.drain(..foldable);
        Ok(())
    }
}

/// Counters the table keeps about itself.
#[derive(Debug, Default)]
pub struct PageTableStats {
    /// Pages held in memory.
    pub pages: AtomicU64,
    /// Bytes held only for older snapshots (unfolded deltas and old bases).
    pub pinned_bytes: AtomicU64,
}

/// Every page in memory, sharded by page id.
#[derive(Debug)]
pub struct PageTable {
    shards: Box<[RwLock<PageMap<PageVersions>>]>,
    stats: PageTableStats,
}

impl Default for PageTable {
    fn default() -> Self {
        PageTable {
            shards: (0..SHARD_COUNT).map(|_| RwLock::default()).collect(),
            stats: PageTableStats::default(),
        }
    }
}

impl PageTable {
    fn shard(&self, page_id: PageId) -> &RwLock<PageMap<PageVersions>> {
        &self.shards[(page_id.get() as usize) & (SHARD_COUNT - 1)]
    }

    /// The page as of `snapshot`, or `None` when the page is not in memory.
    pub fn read(&self, page_id: PageId, snapshot: CommitEpoch) -> Result<Option<Arc<[u8]>>> {
        let shard = self.shard(page_id).read();
        shard
            .get(&page_id)
            .map(|versions| versions.read_at(page_id, snapshot))
            .transpose()
    }

    /// Adds a page read from disk (valid for every epoch until it changes).
    /// Keeps the existing entry if another thread loaded it first.
    pub fn insert_clean(&self, page_id: PageId, image: Arc<[u8]>) -> Arc<[u8]> {
        let mut shard = self.shard(page_id).write();
        let versions = shard.entry(page_id).or_insert_with(|| {
            self.stats.pages.fetch_add(1, Ordering::Relaxed);
            PageVersions::new(image)
        });
        Arc::clone(&versions.head)
    }

    /// Records a committed delta and the page image it produces. `prior` is
    /// the image the delta applies to when the page is not yet in memory
    /// (a page new to the database).
    pub fn install(
        &self,
        epoch: CommitEpoch,
        delta: Arc<Delta>,
        image: Arc<[u8]>,
        prior: impl FnOnce() -> Arc<[u8]>,
    ) {
        let page_id = delta.page_id();
        let mut shard = self.shard(page_id).write();
        let versions = shard.entry(page_id).or_insert_with(|| {
            self.stats.pages.fetch_add(1, Ordering::Relaxed);
            PageVersions::new(prior())
        });
        debug_assert!(
            epoch > versions.head_epoch(),
            "deltas must arrive in epoch order"
        );
        let before = versions.pinned_bytes();
        versions.chain_bytes += delta.changed_len();
        versions.chain.push((epoch, delta));
        versions.head = image;
        self.adjust_pinned(before, versions.pinned_bytes());
    }

    /// Folds the deltas of `page_ids` up to `limit`; returns how many pages
    /// still hold deltas afterwards.
    pub fn fold_pages(
        &self,
        page_ids: impl IntoIterator<Item = PageId>,
        limit: CommitEpoch,
    ) -> Result<Vec<PageId>> {
        let mut still_pinned = Vec::new();
        for page_id in page_ids {
            let mut shard = self.shard(page_id).write();
            let Some(versions) = shard.get_mut(&page_id) else {
                continue;
            };
            let before = versions.pinned_bytes();
            versions.fold(page_id, limit)?;
            self.adjust_pinned(before, versions.pinned_bytes());
            if !versions.chain.is_empty() {
                still_pinned.push(page_id);
            }
        }
        Ok(still_pinned)
    }

    fn adjust_pinned(&self, before: u64, after: u64) {
        if after >= before {
            self.stats
                .pinned_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.stats
                .pinned_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Counters of the table.
    pub fn stats(&self) -> &PageTableStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(byte: u8) -> Arc<[u8]> {
        Arc::from(vec![byte; 64])
    }

    fn delta_to(page: u64, from: &[u8], to: &[u8]) -> Arc<Delta> {
        Arc::new(Delta::from_diff(PageId(page), from, to).unwrap())
    }

    #[test]
    fn readers_see_the_version_of_their_snapshot() {
        let table = PageTable::default();
        table.insert_clean(PageId(2), image(0));
        table.install(
            CommitEpoch(1),
            delta_to(2, &image(0), &image(1)),
            image(1),
            || image(0),
        );
        table.install(
            CommitEpoch(2),
            delta_to(2, &image(1), &image(2)),
            image(2),
            || image(0),
        );
        let at = |epoch| table.read(PageId(2), CommitEpoch(epoch)).unwrap().unwrap();
        assert_eq!(at(0), image(0));
        assert_eq!(at(1), image(1));
        assert_eq!(at(2), image(2));
        assert_eq!(at(9), image(2));
        assert!(table.stats().pinned_bytes.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn folding_keeps_what_live_snapshots_need() {
        let table = PageTable::default();
        table.insert_clean(PageId(2), image(0));
        for epoch in 1..=3u8 {
            let delta = delta_to(2, &image(epoch - 1), &image(epoch));
            table.install(CommitEpoch(u64::from(epoch)), delta, image(epoch), || {
                image(0)
            });
        }
        let pinned = table.fold_pages([PageId(2)], CommitEpoch(2)).unwrap();
        assert_eq!(pinned, vec![PageId(2)]);
        assert_eq!(
            table.read(PageId(2), CommitEpoch(2)).unwrap().unwrap(),
            image(2)
        );
        assert!(
            table.read(PageId(2), CommitEpoch(1)).is_err(),
            "folded past epoch 1"
        );
        let pinned = table.fold_pages([PageId(2)], CommitEpoch(3)).unwrap();
        assert!(pinned.is_empty());
        assert_eq!(table.stats().pinned_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pages_not_in_memory_read_as_none() {
        let table = PageTable::default();
        assert!(table.read(PageId(5), CommitEpoch(1)).unwrap().is_none());
    }
}
