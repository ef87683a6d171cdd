//! The in-memory page table: for every page in memory, a base image, the
//! chain of committed deltas not yet folded into it, and the materialized
//! head image (the newest version).
//!
//! A reader at snapshot `S` gets the head when `S` is at or past the newest
//! delta (no copy), else the base with the deltas of epoch ≤ `S` applied.
//! Folding moves the base forward to the fold limit, dropping deltas no live
//! snapshot needs.
//!
//! Memory accounting: every entry is charged [`PageTable::entry_bytes`]
//! (its head, its base when the base differs from the head, its deltas and
//! a fixed per-entry overhead); the sum is `resident_bytes`. Eviction
//! ([`PageTable::evict_shard`]) is one CLOCK revolution over one shard: a
//! read sets an entry's reference bit (a relaxed atomic store under the
//! shard's read lock), the sweep clears set bits (a second chance) and drops
//! entries whose bit was clear, whose chain is empty (no snapshot needs an
//! older version) and which the caller reports clean (on disk as they are).
//!
//! This module knows nothing of files, the TLog or transactions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::utils::CachePadded;
use mmsb_wal::{CommitEpoch, Delta, PageId};
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::huge_pages::HugePageAdvisor;
use crate::merge::MergeKernel;
use crate::page_directory::HeadDirectory;
use crate::page_hash::PageMap;

/// The fastest merge kernel this CPU runs, chosen once.
fn kernel() -> MergeKernel {
    static KERNEL: std::sync::OnceLock<MergeKernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(MergeKernel::best)
}

/// Shards of the table; a power of two so a mask picks the shard.
pub(crate) const SHARD_COUNT: usize = 64;

/// Bytes an entry is charged besides its images and deltas: the hash-map
/// slot, the `PageVersions` struct and the allocation headers of its images.
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 160;

/// Bytes a delta in a chain is charged besides the bytes it changes (the
/// `Arc<Delta>`, its run vector and the chain slot).
pub(crate) const DELTA_OVERHEAD_BYTES: u64 = 96;

/// Bytes each run of a delta in a chain is charged.
pub(crate) const RUN_OVERHEAD_BYTES: u64 = 16;

/// What a delta in a chain is charged.
pub(crate) fn delta_bytes(delta: &Delta) -> u64 {
    delta.changed_len() as u64
        + delta.run_count() as u64 * RUN_OVERHEAD_BYTES
        + DELTA_OVERHEAD_BYTES
}

/// All versions of one page that are still needed.
#[derive(Debug)]
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
    /// What the deltas of `chain` are charged ([`delta_bytes`] summed).
    chain_charge: u64,
    /// CLOCK reference bit: set by reads, cleared by the eviction sweep.
    referenced: AtomicBool,
    /// A commit admitted against this entry's present size is about to
    /// install into it: eviction must leave it (see [`InstallPins`]).
    install_pending: AtomicBool,
    /// The table's [`HeadDirectory`] points at `head` (only while `chain`
    /// is empty; changed under the shard's write lock).
    in_directory: bool,
}

impl Clone for PageVersions {
    fn clone(&self) -> Self {
        PageVersions {
            base: Arc::clone(&self.base),
            base_epoch: self.base_epoch,
            chain: self.chain.clone(),
            chain_bytes: self.chain_bytes,
            head: Arc::clone(&self.head),
            chain_charge: self.chain_charge,
            referenced: AtomicBool::new(self.referenced.load(Ordering::Relaxed)),
            install_pending: AtomicBool::new(self.install_pending.load(Ordering::Relaxed)),
            // A copy is not what the directory points at.
            in_directory: false,
        }
    }
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

    /// Bytes this entry is charged against the memory budget.
    fn resident_bytes(&self) -> u64 {
        let base = if self.chain.is_empty() {
            0
        } else {
            self.base.len() as u64
        };
        ENTRY_OVERHEAD_BYTES + self.head.len() as u64 + base + self.chain_charge
    }

    /// Marks the entry recently used; a plain load first, so a hot entry's
    /// cache line is not written on every read.
    fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    fn new(image: Arc<[u8]>) -> Self {
        PageVersions {
            base: Arc::clone(&image),
            base_epoch: CommitEpoch::ZERO,
            chain: Vec::new(),
            chain_bytes: 0,
            head: image,
            chain_charge: 0,
            referenced: AtomicBool::new(true),
            install_pending: AtomicBool::new(false),
            in_directory: false,
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
        let folded_charge: u64 = self.chain[..foldable]
            .iter()
            .map(|(_, d)| delta_bytes(d))
            .sum();
        self.chain_bytes -= folded;
        self.chain_charge -= folded_charge;
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
    /// Bytes charged for every entry (see [`PageTable::entry_bytes`]).
    pub resident_bytes: AtomicU64,
    /// Highest `resident_bytes` seen since the table was made.
    pub peak_resident_bytes: AtomicU64,
}

/// What one eviction sweep dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries dropped.
    pub pages: u64,
    /// Bytes they were charged.
    pub bytes: u64,
}

/// Entries a commit's admission measured and pinned against eviction until
/// the commit installed (or failed); unpins them when dropped.
#[derive(Debug)]
pub struct InstallPins<'a> {
    table: &'a PageTable,
    pages: Vec<PageId>,
}

impl Drop for InstallPins<'_> {
    fn drop(&mut self) {
        for &page_id in &self.pages {
            if let Some(versions) = self.table.shard(page_id).read().get(&page_id) {
                versions.install_pending.store(false, Ordering::Release);
            }
        }
    }
}

/// Every page in memory, sharded by page id.
#[derive(Debug)]
pub struct PageTable {
    /// One cache line per shard's lock: readers on different cores take
    /// different shards' locks without invalidating each other's lines.
    shards: Box<[CachePadded<RwLock<PageMap<PageVersions>>>]>,
    stats: PageTableStats,
    /// Where the images live: advised onto huge pages by the worker.
    huge_pages: HugePageAdvisor,
    /// Heads of entries with an empty chain, read without a lock.
    directory: HeadDirectory,
}

impl Default for PageTable {
    fn default() -> Self {
        PageTable {
            shards: (0..SHARD_COUNT)
                .map(|_| CachePadded::new(RwLock::default()))
                .collect(),
            stats: PageTableStats::default(),
            huge_pages: HugePageAdvisor::new(false),
            directory: HeadDirectory::default(),
        }
    }
}

impl PageTable {
    /// An empty table; with `huge_page_images`, the images it takes in are
    /// noted for huge-page advice (see [`crate::huge_pages`]).
    pub(crate) fn with_huge_page_images(huge_page_images: bool) -> Self {
        PageTable {
            huge_pages: HugePageAdvisor::new(huge_page_images),
            ..PageTable::default()
        }
    }

    /// The advisor noting where this table's images live.
    pub(crate) fn huge_pages(&self) -> &HugePageAdvisor {
        &self.huge_pages
    }

    fn shard(&self, page_id: PageId) -> &RwLock<PageMap<PageVersions>> {
        &self.shards[(page_id.get() as usize) & (SHARD_COUNT - 1)]
    }

    /// The page as of `snapshot`, or `None` when the page is not in memory.
    pub fn read(&self, page_id: PageId, snapshot: CommitEpoch) -> Result<Option<Arc<[u8]>>> {
        // An entry with an empty chain has one version, every live
        // snapshot's (see `page_directory`): no lock, no hash probe.
        if let Some(image) = self.directory.get(page_id) {
            return Ok(Some(image));
        }
        let shard = self.shard(page_id).read();
        shard
            .get(&page_id)
            .map(|versions| {
                versions.touch();
                versions.read_at(page_id, snapshot)
            })
            .transpose()
    }

    /// Lends the page's image to `read` when it is the page's only version
    /// in memory (so every live snapshot's, see `page_directory`): no
    /// lock, no hash probe and no reference count change. Gives `read`
    /// back otherwise; the caller then takes [`PageTable::read`]'s path.
    #[inline]
    pub fn with_head<R, F: FnOnce(&[u8]) -> R>(
        &self,
        page_id: PageId,
        read: F,
    ) -> std::result::Result<R, F> {
        self.directory.with_image(page_id, read)
    }

    /// What an entry holding only a clean `page_len`-byte image is charged.
    pub fn clean_entry_bytes(page_len: usize) -> u64 {
        ENTRY_OVERHEAD_BYTES + page_len as u64
    }

    /// The most installing `deltas` (one commit's, one per page) can add to
    /// `resident_bytes`, measured against the table as it is now, and the
    /// entries measured present, pinned against eviction until the returned
    /// pins drop. Per page: a missing entry gets its prior image and its new
    /// head; a present one at most a second image (its image becomes the
    /// base beside the new head); plus the delta. What others do meanwhile
    /// keeps the growth within this: a pinned entry cannot be evicted (which
    /// would make re-creating it cost a whole entry more), a fold only frees,
    /// and a load of a missing entry brings its own reservation.
    pub fn install_growth_bound<'d>(
        &self,
        page_len: usize,
        deltas: impl IntoIterator<Item = &'d Delta>,
    ) -> (u64, InstallPins<'_>) {
        let mut pins = InstallPins {
            table: self,
            pages: Vec::new(),
        };
        let mut bound = 0;
        for delta in deltas {
            let page_id = delta.page_id();
            let images = match self.shard(page_id).read().get(&page_id) {
                None => ENTRY_OVERHEAD_BYTES + 2 * page_len as u64,
                Some(versions) => {
                    versions.install_pending.store(true, Ordering::Release);
                    pins.pages.push(page_id);
                    page_len as u64
                }
            };
            bound += images + delta_bytes(delta);
        }
        (bound, pins)
    }

    /// Adds a page read from disk (valid for every epoch until it changes).
    /// Keeps the existing entry if another thread loaded it first.
    pub fn insert_clean(&self, page_id: PageId, image: Arc<[u8]>) -> Arc<[u8]> {
        self.huge_pages.note(&image);
        let mut shard = self.shard(page_id).write();
        let versions = shard.entry(page_id).or_insert_with(|| {
            self.stats.pages.fetch_add(1, Ordering::Relaxed);
            let versions = PageVersions::new(image);
            self.grow(versions.resident_bytes());
            versions
        });
        self.publish_if_alone(page_id, versions);
        Arc::clone(&versions.head)
    }

    /// Points the directory at the entry's head when its chain is empty
    /// and it does not already (the caller holds the shard's write lock).
    fn publish_if_alone(&self, page_id: PageId, versions: &mut PageVersions) {
        if versions.chain.is_empty() && !versions.in_directory {
            versions.in_directory = self.directory.publish(page_id, &versions.head);
        }
    }

    /// Takes the entry's head out of the directory (the caller holds the
    /// shard's write lock); a fast-path read since the last sweep counts as
    /// a reference.
    fn unpublish(&self, page_id: PageId, versions: &mut PageVersions) {
        if versions.in_directory {
            versions.in_directory = false;
            if self.directory.unpublish(page_id) {
                versions.touch();
            }
        }
    }

    /// [`PageTable::insert_clean`], then the page as of `snapshot`, under
    /// one lock (so an eviction cannot slip in between).
    pub fn insert_clean_and_read(
        &self,
        page_id: PageId,
        image: Arc<[u8]>,
        snapshot: CommitEpoch,
    ) -> Result<Arc<[u8]>> {
        self.huge_pages.note(&image);
        let mut shard = self.shard(page_id).write();
        let versions = shard.entry(page_id).or_insert_with(|| {
            self.stats.pages.fetch_add(1, Ordering::Relaxed);
            let versions = PageVersions::new(image);
            self.grow(versions.resident_bytes());
            versions
        });
        self.publish_if_alone(page_id, versions);
        versions.read_at(page_id, snapshot)
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
        self.huge_pages.note(&image);
        let mut shard = self.shard(page_id).write();
        let mut created = false;
        let versions = shard.entry(page_id).or_insert_with(|| {
            created = true;
            self.stats.pages.fetch_add(1, Ordering::Relaxed);
            PageVersions::new(prior())
        });
        debug_assert!(
            epoch > versions.head_epoch(),
            "deltas must arrive in epoch order"
        );
        // Before `epoch` becomes visible: a snapshot that sees it must not
        // find the old head in the directory.
        self.unpublish(page_id, versions);
        // A new entry has not been charged yet: it starts from nothing.
        let before_resident = if created {
            0
        } else {
            versions.resident_bytes()
        };
        let before = versions.pinned_bytes();
        versions.chain_bytes += delta.changed_len();
        versions.chain_charge += delta_bytes(&delta);
        versions.chain.push((epoch, delta));
        versions.head = image;
        versions.touch();
        self.adjust_pinned(before, versions.pinned_bytes());
        self.adjust_resident(before_resident, versions.resident_bytes());
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
            let before_resident = versions.resident_bytes();
            versions.fold(page_id, limit)?;
            self.adjust_pinned(before, versions.pinned_bytes());
            self.adjust_resident(before_resident, versions.resident_bytes());
            if versions.chain.is_empty() {
                self.publish_if_alone(page_id, versions);
            } else {
                still_pinned.push(page_id);
            }
        }
        Ok(still_pinned)
    }

    /// Frees the head images that installs and evictions retired and no
    /// pinned reader can still see (see [`HeadDirectory::collect_retired`]).
    pub fn collect_retired(&self) {
        self.directory.collect_retired();
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

    fn adjust_resident(&self, before: u64, after: u64) {
        if after >= before {
            self.grow(after - before);
        } else {
            self.stats
                .resident_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn grow(&self, bytes: u64) {
        let now = self
            .stats
            .resident_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        self.stats
            .peak_resident_bytes
            .fetch_max(now, Ordering::Relaxed);
    }

    /// Bytes charged for every entry now.
    pub fn resident_bytes(&self) -> u64 {
        self.stats.resident_bytes.load(Ordering::Relaxed)
    }

    /// One CLOCK revolution over shard `shard` (taken modulo the shard
    /// count): entries read since the last sweep lose their reference bit
    /// and stay; the others are dropped when their chain is empty and
    /// `is_dirty` says they are clean, until `want_bytes` are freed.
    pub fn evict_shard(
        &self,
        shard: usize,
        want_bytes: u64,
        is_dirty: impl Fn(PageId) -> bool,
    ) -> Evicted {
        let mut evicted = Evicted::default();
        let mut map = self.shards[shard & (SHARD_COUNT - 1)].write();
        map.retain(|&page_id, versions| {
            if evicted.bytes >= want_bytes {
                return true;
            }
            // Both bits are taken: the entry's (locked reads) and the
            // directory's (fast-path reads).
            let read_fast = versions.in_directory && self.directory.take_referenced(page_id);
            if versions.referenced.swap(false, Ordering::Relaxed) || read_fast {
                return true;
            }
            if !versions.chain.is_empty()
                || versions.install_pending.load(Ordering::Acquire)
                || is_dirty(page_id)
            {
                return true;
            }
            self.unpublish(page_id, versions);
            evicted.pages += 1;
            evicted.bytes += versions.resident_bytes();
            false
        });
        drop(map);
        self.stats.pages.fetch_sub(evicted.pages, Ordering::Relaxed);
        self.stats
            .resident_bytes
            .fetch_sub(evicted.bytes, Ordering::Relaxed);
        evicted
    }

    /// Drops every entry, whatever its state (recovery empties the table
    /// after each of its checkpoints, when no reader or writer exists yet and
    /// the data file holds every page); returns what was dropped.
    pub fn clear(&self) -> Evicted {
        let mut cleared = Evicted::default();
        for shard in self.shards.iter() {
            let mut map = shard.write();
            cleared.pages += map.len() as u64;
            cleared.bytes += map.values().map(PageVersions::resident_bytes).sum::<u64>();
            let pinned: u64 = map.values().map(PageVersions::pinned_bytes).sum();
            self.stats.pinned_bytes.fetch_sub(pinned, Ordering::Relaxed);
            for (&page_id, versions) in map.iter_mut() {
                self.unpublish(page_id, versions);
            }
            map.clear();
        }
        self.stats.pages.fetch_sub(cleared.pages, Ordering::Relaxed);
        self.stats
            .resident_bytes
            .fetch_sub(cleared.bytes, Ordering::Relaxed);
        cleared
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
    fn a_head_is_lent_exactly_while_it_is_the_only_version() {
        let table = PageTable::default();
        let lent = |table: &PageTable| table.with_head(PageId(2), <[u8]>::to_vec).ok();
        assert_eq!(lent(&table), None, "not in memory");
        table.insert_clean(PageId(2), image(0));
        assert_eq!(lent(&table), Some(image(0).to_vec()));
        table.install(
            CommitEpoch(1),
            delta_to(2, &image(0), &image(1)),
            image(1),
            || image(0),
        );
        assert_eq!(lent(&table), None, "a chain: snapshots may differ");
        table.fold_pages([PageId(2)], CommitEpoch(1)).unwrap();
        assert_eq!(lent(&table), Some(image(1).to_vec()), "folded: alone again");
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

    fn contains(table: &PageTable, page_id: PageId) -> bool {
        table.shard(page_id).read().contains_key(&page_id)
    }

    /// Charges recomputed from every entry, and the entry count.
    fn recount(table: &PageTable) -> (u64, u64) {
        let mut bytes = 0;
        let mut pages = 0;
        for shard in table.shards.iter() {
            for versions in shard.read().values() {
                bytes += versions.resident_bytes();
                pages += 1;
            }
        }
        (bytes, pages)
    }

    #[test]
    fn accounting_follows_inserts_installs_folds_and_evictions() {
        let table = PageTable::default();
        let clean = PageTable::clean_entry_bytes(64);
        table.insert_clean(PageId(1), image(0));
        assert_eq!(table.resident_bytes(), clean);
        let delta = delta_to(1, &image(0), &image(1));
        let (bound, pins) = table.install_growth_bound(64, [&*delta]);
        table.install(CommitEpoch(1), delta, image(1), || image(0));
        drop(pins);
        assert_eq!(table.resident_bytes(), clean + bound, "base + head + delta");
        // With a chain, the next install only replaces the head.
        let delta = delta_to(1, &image(1), &image(2));
        let (bound, pins) = table.install_growth_bound(64, [&*delta]);
        let before = table.resident_bytes();
        table.install(CommitEpoch(2), delta, image(2), || image(0));
        drop(pins);
        assert!(table.resident_bytes() <= before + bound);
        table.fold_pages([PageId(1)], CommitEpoch(2)).unwrap();
        assert_eq!(table.resident_bytes(), clean);
        // A new page: charged for its prior image, its head and the delta.
        let delta = delta_to(2, &image(0), &image(5));
        let (bound, pins) = table.install_growth_bound(64, [&*delta]);
        table.install(CommitEpoch(3), delta, image(5), || image(0));
        drop(pins);
        assert_eq!(table.resident_bytes(), clean + bound);
        assert_eq!(recount(&table), (table.resident_bytes(), 2));
        assert_eq!(
            table.stats().peak_resident_bytes.load(Ordering::Relaxed),
            table.resident_bytes()
        );
    }

    #[test]
    fn eviction_gives_a_second_chance_and_spares_dirty_and_pinned_pages() {
        let table = PageTable::default();
        for id in 1..=3 {
            table.insert_clean(PageId(id), image(0));
        }
        table.install(
            CommitEpoch(1),
            delta_to(3, &image(0), &image(3)),
            image(3),
            || image(0),
        );
        let all = u64::MAX;
        let sweep = |table: &PageTable| {
            (0..SHARD_COUNT)
                .map(|shard| table.evict_shard(shard, all, |id| id == PageId(2)).pages)
                .sum::<u64>()
        };
        assert_eq!(sweep(&table), 0, "new entries start referenced");
        assert_eq!(sweep(&table), 1, "page 1 only: 2 is dirty, 3 has a chain");
        assert!(!contains(&table, PageId(1)));
        assert!(contains(&table, PageId(2)) && contains(&table, PageId(3)));
        table.fold_pages([PageId(3)], CommitEpoch(1)).unwrap();
        table.read(PageId(3), CommitEpoch(1)).unwrap();
        assert_eq!(sweep(&table), 0, "the read gave page 3 a second chance");
        assert_eq!(sweep(&table), 1);
        assert_eq!(recount(&table), (table.resident_bytes(), 1));
        assert_eq!(table.stats().pages.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn entries_measured_for_a_commit_are_not_evicted_until_it_is_done() {
        let table = PageTable::default();
        table.insert_clean(PageId(1), image(0));
        let delta = delta_to(1, &image(0), &image(1));
        let (_, pins) = table.install_growth_bound(64, [&*delta]);
        let sweep = |table: &PageTable| {
            (0..SHARD_COUNT)
                .map(|shard| table.evict_shard(shard, u64::MAX, |_| false).pages)
                .sum::<u64>()
        };
        assert_eq!(sweep(&table), 0);
        assert_eq!(sweep(&table), 0, "pinned for the install");
        drop(pins); // the commit failed: nothing installed
        assert_eq!(sweep(&table), 1);
    }

    #[test]
    fn clearing_drops_every_entry_and_its_charge() {
        let table = PageTable::default();
        table.insert_clean(PageId(1), image(0));
        table.insert_clean(PageId(2), image(0));
        table.install(
            CommitEpoch(1),
            delta_to(2, &image(0), &image(2)),
            image(2),
            || image(0),
        );
        let charged = table.resident_bytes();
        let cleared = table.clear();
        assert_eq!(
            cleared,
            Evicted {
                pages: 2,
                bytes: charged
            }
        );
        assert_eq!(table.resident_bytes(), 0);
        assert_eq!(table.stats().pages.load(Ordering::Relaxed), 0);
        assert_eq!(table.stats().pinned_bytes.load(Ordering::Relaxed), 0);
        assert!(table.read(PageId(2), CommitEpoch(1)).unwrap().is_none());
        assert_eq!(recount(&table), (0, 0));
    }

    #[test]
    fn a_sweep_stops_once_it_freed_enough() {
        let table = PageTable::default();
        for id in 0..64 * 8 {
            table.insert_clean(PageId(id), image(0));
        }
        for shard in 0..SHARD_COUNT {
            // Clears every reference bit; everything reads as dirty, so stays.
            table.evict_shard(shard, u64::MAX, |_| true);
        }
        let one = PageTable::clean_entry_bytes(64);
        let evicted = table.evict_shard(0, 2 * one, |_| false);
        assert_eq!(
            evicted,
            Evicted {
                pages: 2,
                bytes: 2 * one
            }
        );
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        const PAGES: u64 = 6;

        #[derive(Debug, Clone)]
        enum Op {
            Load(u64),
            Write(u64, u8),
            Clean(u64),
            Fold,
            Evict,
            Pin,
            Unpin,
            Read(u64, bool),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..PAGES).prop_map(Op::Load),
                (0..PAGES, any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
                (0..PAGES).prop_map(Op::Clean),
                Just(Op::Fold),
                Just(Op::Evict),
                Just(Op::Pin),
                Just(Op::Unpin),
                (0..PAGES, any::<bool>()).prop_map(|(p, at_pin)| Op::Read(p, at_pin)),
            ]
        }

        /// Every version of a page (epoch, byte) and whether it is dirty.
        #[derive(Debug)]
        struct Page {
            versions: Vec<(u64, u8)>,
            dirty: bool,
        }

        impl Page {
            fn at(&self, epoch: u64) -> u8 {
                self.versions
                    .iter()
                    .rev()
                    .find(|(e, _)| *e <= epoch)
                    .map_or(0, |v| v.1)
            }
            fn latest(&self) -> u8 {
                self.versions.last().map_or(0, |v| v.1)
            }
        }

        proptest! {
            /// Reads stay right and accounting exact through loads, writes,
            /// write-backs, folds, pins and evictions.
            #[test]
            fn the_table_matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
                let table = PageTable::default();
                let mut pages: HashMap<u64, Page> = (0..PAGES)
                    .map(|p| (p, Page { versions: vec![(0, 0)], dirty: false }))
                    .collect();
                let mut epoch = 0u64;
                let mut pin: Option<u64> = None;
                for op in ops {
                    match op {
                        Op::Load(p) => {
                            if !contains(&table, PageId(p)) {
                                prop_assert!(!pages[&p].dirty, "a dirty page left memory");
                                table.insert_clean(PageId(p), image(pages[&p].latest()));
                            }
                        }
                        Op::Write(p, byte) => {
                            epoch += 1;
                            let page = pages.get_mut(&p).unwrap();
                            let prior = image(page.latest());
                            let delta = delta_to(p, &prior, &image(byte));
                            table.install(CommitEpoch(epoch), delta, image(byte), || prior);
                            page.versions.push((epoch, byte));
                            page.dirty = true;
                        }
                        Op::Clean(p) => pages.get_mut(&p).unwrap().dirty = false,
                        Op::Fold => {
                            let limit = pin.unwrap_or(epoch);
                            table.fold_pages((0..PAGES).map(PageId), CommitEpoch(limit)).unwrap();
                        }
                        Op::Evict => {
                            for shard in 0..SHARD_COUNT {
                                table.evict_shard(shard, u64::MAX, |id| pages[&id.get()].dirty);
                            }
                        }
                        Op::Pin => pin = Some(epoch),
                        Op::Unpin => pin = None,
                        Op::Read(p, at_pin) => {
                            let at = if at_pin { pin.unwrap_or(epoch) } else { epoch };
                            let page = &pages[&p];
                            let read = match table.read(PageId(p), CommitEpoch(at)).unwrap() {
                                Some(read) => read,
                                None => {
                                    prop_assert!(!page.dirty);
                                    table.insert_clean_and_read(
                                        PageId(p),
                                        image(page.latest()),
                                        CommitEpoch(at),
                                    ).unwrap()
                                }
                            };
                            prop_assert_eq!(read, image(page.at(at)));
                        }
                    }
                    let (bytes, count) = recount(&table);
                    prop_assert_eq!(table.resident_bytes(), bytes);
                    prop_assert_eq!(table.stats().pages.load(Ordering::Relaxed), count);
                }
            }
        }
    }
}
