//! Transactions over pages: [`PageReadTransaction`] sees one snapshot;
//! [`PageWriteTransaction`] changes private page copies that its commit turns
//! into deltas, logs, installs and publishes.
//!
//! One write transaction runs at a time (the writer lock); readers never
//! wait for it and it never waits for them.
//!
//! Memory: each private page copy is charged against the memory budget
//! before it is made ([`Shared::charge_page_copy`]; back-pressure, then
//! [`Error::MemoryBudgetExceeded`]); the commit's admission takes the charge
//! over, and rollback or drop gives it back.
//!
//! Diff: each dirty page keeps a [`WrittenRanges`] record; writers that
//! note their changes ([`PageWrite::page_mut_noted`]) let the commit diff
//! only those ranges, any other write makes it diff the whole page.

mod diff;
mod written;

pub use written::WrittenRanges;

use std::sync::Arc;

use mmsb_wal::{CommitEpoch, Delta, PageId};

use crate::db::{PendingCommit, Shared, WriterGuard};
use crate::error::{Error, Result};
use crate::eviction::PageCopyCharge;
use crate::meta::{self, Meta, META_PAGE};
use crate::metrics::{timed, Metrics};
use crate::page_access::{PageRead, PageRef, PageWrite};
use crate::page_hash::PageMap;

/// Checks that a user-visible page id lies inside the database.
fn check_data_page(page_id: PageId, meta: &Meta) -> Result<()> {
    if page_id.get() < 2 || page_id.get() >= meta.page_count {
        return Err(Error::PageOutOfRange(page_id));
    }
    Ok(())
}

/// A consistent, read-only view of the database as of one commit epoch.
/// Dropping it releases the snapshot.
pub struct PageReadTransaction {
    shared: Arc<Shared>,
    snapshot: CommitEpoch,
    meta: Meta,
}

impl std::fmt::Debug for PageReadTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageReadTransaction")
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

impl PageReadTransaction {
    pub(crate) fn begin(shared: Arc<Shared>) -> Result<Self> {
        let snapshot = shared.snapshots.acquire();
        // From here on, Drop releases the snapshot even if reading meta fails.
        let mut txn = PageReadTransaction {
            shared,
            snapshot,
            meta: Meta::new_database(),
        };
        let meta_image = txn.shared.read_page_at(META_PAGE, snapshot)?;
        txn.meta = Meta::decode(&meta_image)?;
        Ok(txn)
    }

    /// The commit epoch this transaction sees.
    pub fn snapshot(&self) -> CommitEpoch {
        self.snapshot
    }

    /// Pages allocated (including free ones) as of the snapshot.
    pub fn page_count(&self) -> u64 {
        self.meta.page_count
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl PageRead for PageReadTransaction {
    fn page_len(&self) -> usize {
        self.shared.page_len()
    }

    fn read_page(&self, id: PageId) -> Result<PageRef> {
        check_data_page(id, &self.meta)?;
        Ok(PageRef::new(self.shared.read_page_at(id, self.snapshot)?))
    }

    #[inline]
    fn with_page<R>(&self, id: PageId, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        check_data_page(id, &self.meta)?;
        self.shared.with_page_at(id, self.snapshot, read)
    }
}

impl Drop for PageReadTransaction {
    fn drop(&mut self) {
        self.shared.snapshots.release(self.snapshot);
        self.shared.wake_merge_worker();
    }
}

/// A page a write transaction changed: the image it started from and its
/// private copy.
struct DirtyPage {
    original: Arc<[u8]>,
    image: Arc<[u8]>,
    /// Where `image` may differ from `original`.
    written: WrittenRanges,
}

/// The single write transaction. Dropping it without commit rolls it back.
pub struct PageWriteTransaction {
    shared: Arc<Shared>,
    writer: Option<WriterGuard>,
    meta: Meta,
    meta_changed: bool,
    dirty: PageMap<DirtyPage>,
    /// What the private copies in `dirty` are charged against the budget.
    copies: PageCopyCharge,
}

impl std::fmt::Debug for PageWriteTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWriteTransaction")
            .field("dirty_pages", &self.dirty.len())
            .field("copy_bytes", &self.copies.bytes())
            .field("meta", &self.meta)
            .finish()
    }
}

impl PageWriteTransaction {
    pub(crate) fn begin(shared: Arc<Shared>) -> Result<Self> {
        shared.check_writable()?;
        let writer = shared.writer.lock_arc();
        Self::begin_with_writer(shared, writer)
    }

    /// Starts with a writer lock the caller already holds.
    pub(crate) fn begin_with_writer(shared: Arc<Shared>, writer: WriterGuard) -> Result<Self> {
        // Re-check under the lock: the previous writer may have poisoned the database.
        shared.check_writable()?;
        let meta = Meta::decode(&shared.read_page_latest(META_PAGE)?)?;
        Ok(PageWriteTransaction {
            shared,
            writer: Some(writer),
            meta,
            meta_changed: false,
            dirty: PageMap::default(),
            copies: PageCopyCharge::default(),
        })
    }

    /// Pages allocated (including free ones) as seen by this transaction.
    pub fn page_count(&self) -> u64 {
        self.meta.page_count
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The meta record, to change; written into the meta page at commit.
    pub(crate) fn meta_mut(&mut self) -> &mut Meta {
        self.meta_changed = true;
        &mut self.meta
    }

    /// Writes `bytes` into page `id` at `offset`.
    pub fn write(&mut self, id: PageId, offset: usize, bytes: &[u8]) -> Result<()> {
        let page_len = self.page_len();
        let end = offset
            .checked_add(bytes.len())
            .filter(|&end| end <= page_len);
        let Some(end) = end else {
            return Err(Error::InvalidArgument(format!(
                "write of {} bytes at offset {offset} does not fit a {page_len}-byte page",
                bytes.len()
            )));
        };
        self.page_mut(id)?[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    /// The transaction's record of page `id`, made on its first write: the
    /// image it starts from (the zero page for a page past the durable file
    /// that no commit wrote) shared with its future private copy. One hash
    /// lookup when the page is already dirty.
    fn ensure_dirty(&mut self, id: PageId) -> Result<&mut DirtyPage> {
        match self.dirty.entry(id) {
            std::collections::hash_map::Entry::Occupied(slot) => Ok(slot.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let original = if id.get() >= self.shared.durable_page_count()
                    && !self.shared.is_page_in_memory(id)
                {
                    self.shared.zero_page()
                } else {
                    self.shared.read_page_latest(id)?
                };
                // Charged before the copy is made (on its first write).
                self.shared.charge_page_copy(&mut self.copies)?;
                Ok(slot.insert(DirtyPage {
                    image: Arc::clone(&original),
                    original,
                    written: WrittenRanges::default(),
                }))
            }
        }
    }

    /// The private copy of page `id`, to change anywhere: the commit diffs
    /// the whole page.
    fn page_image_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        let (image, written) = self.page_image_noted(id)?;
        written.set_whole();
        Ok(image)
    }

    /// The private copy of page `id` and its record of changed ranges,
    /// which the caller keeps true.
    fn page_image_noted(&mut self, id: PageId) -> Result<(&mut [u8], &mut WrittenRanges)> {
        let page = self.ensure_dirty(id)?;
        if Arc::get_mut(&mut page.image).is_none() {
            // Shared with the original or with a PageRef handed out: copy on write.
            page.image = Arc::from(&page.image[..]);
        }
        let image = Arc::get_mut(&mut page.image)
            .ok_or_else(|| Error::Corrupted("internal: page copy is shared".into()))?;
        Ok((image, &mut page.written))
    }

    /// A private, all-zero image of page `id` (a page being allocated),
    /// written once: a copy of the zero page where the image is still
    /// shared (no copy of the old bytes followed by a fill), a fill where
    /// the transaction already owns it.
    fn zeroed_image_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        let zero = self.shared.zero_page();
        let page = self.ensure_dirty(id)?;
        page.written.set_whole();
        if Arc::get_mut(&mut page.image).is_none() {
            page.image = Arc::from(&zero[..]);
        } else if let Some(image) = Arc::get_mut(&mut page.image) {
            image.fill(0);
        }
        let image = Arc::get_mut(&mut page.image)
            .ok_or_else(|| Error::Corrupted("internal: page copy is shared".into()))?;
        debug_assert!(image.iter().all(|&b| b == 0), "an allocated page is zeroed");
        Ok(image)
    }

    /// Commits: logs the deltas, waits for durability (per the database's
    /// durability mode), then makes them visible. Returns the commit epoch
    /// (the current epoch when the transaction changed nothing).
    pub fn commit(self) -> Result<CommitEpoch> {
        self.commit_with(|_| {})
    }

    /// Commits, calling `on_installed` with the new epoch while the writer
    /// lock is still held (after the commit is logged and installed, before
    /// the next writer can start).
    pub(crate) fn commit_with(
        mut self,
        on_installed: impl FnOnce(CommitEpoch),
    ) -> Result<CommitEpoch> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::TransactionEnded);
        };
        if self.meta_changed {
            let meta = self.meta;
            meta.encode_into(self.page_image_mut(META_PAGE)?);
        }
        let dirty = std::mem::take(&mut self.dirty);
        let pages = timed(&self.shared.metrics.stages.diff_ns, || dirty_deltas(dirty))?;
        self.shared
            .commit_pages(writer, pages, &mut self.copies, on_installed)
    }

    /// Logs and installs the commit but keeps the writer lock and does not
    /// wait for durability: the caller finishes it with
    /// [`Shared::finish_commit`]. Returns the lock (when still held).
    pub(crate) fn commit_deferred(
        mut self,
        on_installed: impl FnOnce(CommitEpoch),
    ) -> (Option<WriterGuard>, Result<Option<PendingCommit>>) {
        let Some(mut writer) = self.writer.take() else {
            return (None, Err(Error::TransactionEnded));
        };
        if self.meta_changed {
            let meta = self.meta;
            match self.page_image_mut(META_PAGE) {
                Ok(page) => meta.encode_into(page),
                Err(err) => return (Some(writer), Err(err)),
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        let pending =
            timed(&self.shared.metrics.stages.diff_ns, || dirty_deltas(dirty)).and_then(|pages| {
                self.shared
                    .log_and_install(&mut writer, pages, &mut self.copies, on_installed)
            });
        (Some(writer), pending)
    }

    /// Discards every change.
    pub fn rollback(mut self) {
        self.end_without_commit();
    }

    fn end_without_commit(&mut self) {
        if self.writer.take().is_some() {
            Metrics::bump(&self.shared.metrics.rollbacks);
        }
    }
}

/// One page a commit changes: its delta, the new image, and the image the
/// delta applies to.
#[derive(Debug)]
pub(crate) struct ChangedPage {
    pub delta: Arc<Delta>,
    pub image: Arc<[u8]>,
    pub original: Arc<[u8]>,
}

/// Turns private page copies into deltas against the images they started
/// from, in page order: the deltas are built (and so allocated) in the
/// order the encoder and the fold walk them. Only the page ids are sorted;
/// each record leaves the map once, when its turn comes.
fn dirty_deltas(mut dirty: PageMap<DirtyPage>) -> Result<Vec<ChangedPage>> {
    let mut ids: Vec<PageId> = dirty.keys().copied().collect();
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(page) = dirty.remove(&id) else {
            return Err(Error::Corrupted(format!(
                "internal: dirty page {id} taken twice"
            )));
        };
        let delta = page_delta(id, &page)?;
        if !delta.is_empty() {
            out.push(ChangedPage {
                delta: Arc::new(delta),
                image: page.image,
                original: page.original,
            });
        }
    }
    Ok(out)
}

/// The delta of one dirty page: its noted ranges diffed, or the whole page.
/// Debug builds check the noted ranges against the whole-page diff.
fn page_delta(id: PageId, page: &DirtyPage) -> Result<Delta> {
    let Some(ranges) = page.written.ranges() else {
        return diff::page_delta(id, &page.original, &page.image);
    };
    let delta = diff::page_delta_in(id, &page.original, &page.image, ranges)?;
    debug_assert_eq!(
        delta,
        diff::page_delta(id, &page.original, &page.image)?,
        "page {id}: a change outside the noted ranges {:?}",
        page.written
    );
    Ok(delta)
}

impl Drop for PageWriteTransaction {
    fn drop(&mut self) {
        self.end_without_commit();
        self.shared.release_page_copies(&mut self.copies);
    }
}

impl PageRead for PageWriteTransaction {
    fn page_len(&self) -> usize {
        self.shared.page_len()
    }

    fn read_page(&self, id: PageId) -> Result<PageRef> {
        check_data_page(id, &self.meta)?;
        if let Some(page) = self.dirty.get(&id) {
            return Ok(PageRef::new(Arc::clone(&page.image)));
        }
        Ok(PageRef::new(self.shared.read_page_latest(id)?))
    }
}

impl PageWrite for PageWriteTransaction {
    fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        check_data_page(id, &self.meta)?;
        self.page_image_mut(id)
    }

    fn page_mut_noted(&mut self, id: PageId) -> Result<(&mut [u8], Option<&mut WrittenRanges>)> {
        check_data_page(id, &self.meta)?;
        let (image, written) = self.page_image_noted(id)?;
        Ok((image, Some(written)))
    }

    fn allocate_page(&mut self) -> Result<PageId> {
        let id = if self.meta.free_head.get() != 0 {
            let id = self.meta.free_head;
            let next = meta::free_link(&self.read_page(id)?);
            if next.get() != 0 && (next.get() < 2 || next.get() >= self.meta.page_count) {
                return Err(Error::Corrupted(format!(
                    "free list link of {id} points at {next}, outside the database"
                )));
            }
            self.meta.free_head = next;
            self.meta.free_count = self.meta.free_count.saturating_sub(1);
            id
        } else {
            let id = PageId(self.meta.page_count);
            self.meta.page_count += 1;
            id
        };
        self.meta_changed = true;
        self.zeroed_image_mut(id)?;
        Ok(id)
    }

    fn free_page(&mut self, id: PageId) -> Result<()> {
        check_data_page(id, &self.meta)?;
        let head = self.meta.free_head;
        meta::set_free_link(self.page_image_mut(id)?, head);
        self.meta.free_head = id;
        self.meta.free_count += 1;
        self.meta_changed = true;
        Ok(())
    }
}

#[cfg(test)]
mod noted_diff_tests {
    //! Random inserts into a loaded tree diff only what their writers
    //! noted: a whole-page diff is left to pages the transaction allocated
    //! and the meta page (a writer that takes plain `page_mut` on an
    //! existing page, or notes too many ranges, fails this).

    use mmsb_wal::storage::MemStorage;

    use super::*;
    use crate::btree::{BatchWriter, TreeHeader};
    use crate::db::Options;

    /// A key of 24 bytes spread over the key space by `i`.
    fn key(i: u64) -> [u8; 24] {
        let mut k = [0u8; 24];
        let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        k[..8].copy_from_slice(&mixed.to_be_bytes());
        k[8..16].copy_from_slice(&i.to_le_bytes());
        k
    }

    #[test]
    fn random_inserts_diff_only_noted_ranges_of_existing_pages() {
        let db = Options {
            storage: Arc::new(MemStorage::new()),
            background_workers: false,
            checkpoint_on_close: false,
            ..Options::default()
        }
        .open("/noted.mmsb")
        .unwrap();
        let mut tree = TreeHeader::EMPTY;
        let value = [7u8; 150];
        let mut tx = db.begin_page_write().unwrap();
        let mut loaded: Vec<[u8; 24]> = (0..3000).map(key).collect();
        loaded.sort_unstable();
        let mut writer = BatchWriter::new(tx.page_len()).unwrap();
        let entries = loaded.iter().map(|k| (&k[..], Some(&value[..])));
        writer.apply_sorted(&mut tx, &mut tree, entries).unwrap();
        tx.commit().unwrap();

        // Two rounds, so the second meets leaves split and refilled (holes).
        for round in 0..2u64 {
            let mut tx = db.begin_page_write().unwrap();
            let pages_before = tx.page_count();
            let mut fresh: Vec<[u8; 24]> =
                (0..400).map(|i| key(10_000 + round * 1000 + i)).collect();
            fresh.sort_unstable();
            let mut writer = BatchWriter::new(tx.page_len()).unwrap();
            let entries = fresh.iter().map(|k| (&k[..], Some(&value[..])));
            writer.apply_sorted(&mut tx, &mut tree, entries).unwrap();
            tx.meta_mut();
            let (mut noted, mut whole) = (0, 0);
            for (id, page) in &tx.dirty {
                if !page.written.is_whole() {
                    noted += 1;
                    continue;
                }
                whole += 1;
                assert!(
                    *id == META_PAGE || id.get() >= pages_before,
                    "round {round}: existing page {id} is diffed whole"
                );
            }
            assert!(noted > 100, "round {round}: {noted} noted, {whole} whole");
            assert!(
                tx.page_count() > pages_before,
                "round {round}: leaves split"
            );
            tx.commit().unwrap();
        }
    }
}
