//! The head directory: for each page id, the page table's head image when
//! that image is the page's only version in memory — read without a lock.
//!
//! A point read spends most of its page-table time on one cache miss: the
//! hash bucket of the leaf's entry (and two lock operations around it). The
//! directory is a page-id-indexed array of words (8 bytes a page, ~0.5 MB
//! for 60,000 pages: it stays in the CPU's caches) holding a pointer to
//! the head image of each page whose delta chain is empty. A read with any
//! live snapshot may use such an image (see the invariant below), so the
//! fast path is: pin an epoch, load the word, take a reference to the image.
//!
//! Invariant (kept by [`crate::page_table::PageTable`], under the entry's
//! shard write lock): a page's word points at its head exactly while its
//! delta chain is empty. An install (a new version at epoch E) clears the
//! word before E becomes visible to any snapshot, so a reader whose
//! snapshot sees E finds no word and takes the locked path; a reader with an
//! older snapshot that still loads the old word gets the old head, which is
//! its version. A fold publishes the head once the chain is empty, which
//! happens only when no live snapshot needs an older version.
//!
//! Reclamation: the directory owns one strong reference to each image it
//! points at. Replacing or clearing a word hands that reference to
//! crossbeam's epoch collector, which drops it once every thread that was
//! pinned at that moment has unpinned; a reader increments the image's
//! count while pinned, so the image cannot be freed under it.
//!
//! The low bit of a word is the CLOCK reference bit of fast-path reads
//! (images are 8-byte aligned); the eviction sweep takes it with the
//! entry's own bit.
//!
//! This module knows nothing of snapshots, deltas or files.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::epoch;
use mmsb_wal::PageId;

/// Page ids one chunk of the directory covers (128 KiB of words, made on
/// the first publication into it).
pub(crate) const CHUNK_PAGES: usize = 16 * 1024;

/// Chunks the directory may have: page ids below 64 Mi (256 GiB of 4 KiB
/// pages) are covered; pages past them always take the locked path. The
/// table of chunk pointers (~96 KiB) is made with the page table.
pub(crate) const CHUNKS_MAX: usize = 4 * 1024;

/// The reference bit in a word.
const REFERENCED_BIT: usize = 1;

/// Head images by page id, read without locks. See the module docs.
#[derive(Debug)]
pub(crate) struct HeadDirectory {
    chunks: Box<[OnceLock<Box<[AtomicUsize]>>]>,
    /// Length of every image the directory points at, fixed by the first
    /// publication (0 until then); images of another length are not
    /// published (they take the locked path).
    image_len: OnceLock<usize>,
}

impl Default for HeadDirectory {
    fn default() -> Self {
        HeadDirectory {
            chunks: (0..CHUNKS_MAX).map(|_| OnceLock::new()).collect(),
            image_len: OnceLock::new(),
        }
    }
}

impl HeadDirectory {
    /// The word of `page_id`, `None` past the covered ids or in a chunk not
    /// created yet.
    fn word(&self, page_id: PageId) -> Option<&AtomicUsize> {
        let id = usize::try_from(page_id.get()).ok()?;
        let chunk = self.chunks.get(id / CHUNK_PAGES)?.get()?;
        chunk.get(id % CHUNK_PAGES)
    }

    /// The word of `page_id`, creating its chunk; `None` past the covered ids.
    fn word_or_create(&self, page_id: PageId) -> Option<&AtomicUsize> {
        let id = usize::try_from(page_id.get()).ok()?;
        let chunk = self
            .chunks
            .get(id / CHUNK_PAGES)?
            .get_or_init(|| (0..CHUNK_PAGES).map(|_| AtomicUsize::new(0)).collect());
        chunk.get(id % CHUNK_PAGES)
    }

    /// Points `page_id`'s word at `image`; returns whether it did (an id
    /// past the covered range, or an image of another length than the
    /// directory's, is not published). The caller holds the entry's shard
    /// write lock and calls this only while the entry's chain is empty.
    pub(crate) fn publish(&self, page_id: PageId, image: &Arc<[u8]>) -> bool {
        if *self.image_len.get_or_init(|| image.len()) != image.len() || image.is_empty() {
            return false;
        }
        let Some(word) = self.word_or_create(page_id) else {
            return false;
        };
        let raw = Arc::into_raw(Arc::clone(image)).cast::<u8>() as usize;
        debug_assert_eq!(raw & REFERENCED_BIT, 0, "images are at least 2-aligned");
        // Published as referenced: the page was just loaded or written.
        let old = word.swap(raw | REFERENCED_BIT, Ordering::AcqRel);
        self.retire(old);
        true
    }

    /// Clears `page_id`'s word; returns whether its reference bit was set.
    /// The caller holds the entry's shard write lock.
    pub(crate) fn unpublish(&self, page_id: PageId) -> bool {
        let Some(word) = self.word(page_id) else {
            return false;
        };
        let old = word.swap(0, Ordering::AcqRel);
        self.retire(old);
        old & REFERENCED_BIT != 0
    }

    /// Takes the reference bit of `page_id`'s word (the eviction sweep).
    pub(crate) fn take_referenced(&self, page_id: PageId) -> bool {
        self.word(page_id).is_some_and(|word| {
            word.fetch_and(!REFERENCED_BIT, Ordering::Relaxed) & REFERENCED_BIT != 0
        })
    }

    /// The head image of `page_id` when the directory holds it.
    #[inline]
    pub(crate) fn get(&self, page_id: PageId) -> Option<Arc<[u8]>> {
        let word = self.word(page_id)?;
        let len = *self.image_len.get()?;
        let guard = epoch::pin();
        let value = word.load(Ordering::Acquire);
        let address = value & !REFERENCED_BIT;
        if address == 0 {
            return None;
        }
        if value & REFERENCED_BIT == 0 {
            // A plain load first, so a hot word is written once a sweep.
            word.fetch_or(REFERENCED_BIT, Ordering::Relaxed);
        }
        let image = std::ptr::slice_from_raw_parts(address as *const u8, len);
        // SAFETY: `address` came from `Arc::into_raw` of an image of `len`
        // bytes (publish), and the directory's reference to it is dropped
        // only by the epoch collector after every thread pinned when it was
        // retired has unpinned — this thread is pinned by `guard`, so the
        // image is alive and its count at least one here.
        let image = unsafe {
            Arc::increment_strong_count(image);
            Arc::from_raw(image)
        };
        drop(guard);
        Some(image)
    }

    /// Clears every word (the page table is being emptied).
    pub(crate) fn clear(&self) {
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            for word in chunk.iter() {
                let old = word.swap(0, Ordering::AcqRel);
                self.retire(old);
            }
        }
        epoch::pin().flush();
    }

    /// Hands the directory's reference behind `old` (a word) to the epoch
    /// collector.
    fn retire(&self, old: usize) {
        let address = old & !REFERENCED_BIT;
        if address == 0 {
            return;
        }
        let Some(&len) = self.image_len.get() else {
            debug_assert!(false, "a published word without an image length");
            return;
        };
        let image = std::ptr::slice_from_raw_parts(address as *const u8, len);
        // SAFETY: the word held the directory's own strong reference,
        // created by `Arc::into_raw` in `publish` with this length; the swap
        // that produced `old` took it out of the directory, so it is
        // reclaimed exactly once.
        let image: Arc<[u8]> = unsafe { Arc::from_raw(image) };
        epoch::pin().defer(move || drop(image));
    }
}

impl Drop for HeadDirectory {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(byte: u8) -> Arc<[u8]> {
        Arc::from(vec![byte; 64])
    }

    /// Runs the epoch collector until `image` is the only reference left.
    fn wait_until_alone(image: &Arc<[u8]>) {
        for _ in 0..10_000 {
            if Arc::strong_count(image) == 1 {
                return;
            }
            let guard = epoch::pin();
            guard.flush();
            drop(guard);
            std::thread::yield_now();
        }
        panic!(
            "the directory never let go: {} references",
            Arc::strong_count(image)
        );
    }

    #[test]
    fn a_published_head_is_read_and_an_unpublished_one_is_not() {
        let dir = HeadDirectory::default();
        let a = image(1);
        assert!(dir.get(PageId(7)).is_none());
        assert!(dir.publish(PageId(7), &a));
        let read = dir.get(PageId(7)).expect("published");
        assert!(Arc::ptr_eq(&read, &a));
        assert!(dir.get(PageId(8)).is_none());
        assert!(dir.unpublish(PageId(7)), "published as referenced");
        assert!(dir.get(PageId(7)).is_none());
        drop(read);
        wait_until_alone(&a);
    }

    #[test]
    fn replacing_a_head_releases_the_old_one_and_keeps_no_extra_reference() {
        let dir = HeadDirectory::default();
        let (a, b) = (image(1), image(2));
        dir.publish(PageId(3), &a);
        dir.publish(PageId(3), &b);
        assert_eq!(dir.get(PageId(3)).expect("b")[0], 2);
        wait_until_alone(&a);
        assert_eq!(Arc::strong_count(&b), 2, "the test's and the directory's");
        drop(dir);
        wait_until_alone(&b);
    }

    #[test]
    fn reads_set_the_reference_bit_and_the_sweep_takes_it() {
        let dir = HeadDirectory::default();
        dir.publish(PageId(70_000), &image(5));
        assert!(
            dir.take_referenced(PageId(70_000)),
            "published as referenced"
        );
        assert!(!dir.take_referenced(PageId(70_000)));
        dir.get(PageId(70_000)).expect("published");
        assert!(dir.take_referenced(PageId(70_000)));
        assert!(!dir.take_referenced(PageId(1)), "never published");
    }

    #[test]
    fn ids_past_the_covered_range_and_other_lengths_are_not_published() {
        let dir = HeadDirectory::default();
        let far = PageId((CHUNKS_MAX * CHUNK_PAGES) as u64);
        assert!(!dir.publish(far, &image(1)));
        assert!(dir.get(far).is_none());
        assert!(dir.publish(PageId(1), &image(1)));
        assert!(!dir.publish(PageId(2), &Arc::from(vec![0u8; 32])));
        assert!(dir.get(PageId(2)).is_none());
    }

    #[test]
    fn concurrent_readers_see_only_published_images_while_a_writer_swaps_them() {
        const PAGES: u64 = 64;
        const ROUNDS: usize = 2_000;
        let dir = Arc::new(HeadDirectory::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (dir, stop) = (Arc::clone(&dir), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for id in 0..PAGES {
                            if let Some(image) = dir.get(PageId(id)) {
                                // Every image is uniform; a freed one would not be.
                                let first = image[0];
                                assert!(image.iter().all(|&b| b == first));
                                assert_eq!(u64::from(first) % PAGES, id);
                                seen += 1;
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        for round in 0..ROUNDS {
            for id in 0..PAGES {
                let byte = (id + PAGES * (round as u64 % 3)) as u8;
                if round % 5 == 4 {
                    dir.unpublish(PageId(id));
                } else {
                    dir.publish(PageId(id), &Arc::from(vec![byte; 256]));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let seen: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
        assert!(seen > 0);
    }
}
