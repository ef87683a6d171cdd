//! The head directory: for each page id, the page table's head image when
//! that image is the page's only version in memory — read without a lock.
//!
//! A point read spends most of its page-table time on one cache miss: the
//! hash bucket of the leaf's entry (and two lock operations around it). The
//! directory is a page-id-indexed array of words (8 bytes a page, ~0.5 MB
//! for 60,000 pages: it stays in the CPU's caches) holding a pointer to
//! the head image of each page whose delta chain is empty. A read with any
//! live snapshot may use such an image (see the invariant below), so the
//! fast path is: pin an epoch, load the word, take a reference to the image
//! ([`HeadDirectory::get`]) or lend the bytes to a closure while still
//! pinned, touching no reference count ([`HeadDirectory::with_image`]: the
//! image's allocation header is a cold line that a count change would
//! have to own exclusively, twice a read).
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
//! count while pinned, or reads it only while pinned, so the image cannot
//! be freed under it. The collector is reached through the private
//! `reclaim` shim: a zero-sized handle whose methods are `epoch::pin()`
//! and `defer` themselves in the normal build.
//!
//! The reference bit: the low bit of a word is the CLOCK reference bit of
//! fast-path reads (images are 8-byte aligned); the eviction sweep takes it
//! with the entry's own bit. A read marks the word with a compare-and-swap
//! against the value it loaded, so a mark never lands on a word that was
//! cleared or re-pointed since (a word is either 0 or an image's address
//! with or without the bit: never the bit alone), and a take is a
//! `fetch_and`, so it never undoes a concurrent publish or clear.
//!
//! Model checking: under `--cfg loom` the words are loom atomics, chunks
//! are `CHUNK_PAGES` = 4 words, and the collector is replaced by a
//! deferred-until-quiescent stand-in the model can check: a loom mutex
//! counts pinned readers, and a retired reference is reclaimed at once when
//! none is pinned, else when the last one unpins. Each image's bytes are
//! shadowed by a loom cell counting the directory's references to it:
//! `publish` writes it before the swap (as the bytes were written), a read
//! reads it after taking its own reference and before unpinning (as the
//! count increment touches the image), a borrowed read reads it before and
//! after lending the bytes (the first and last touch of the borrow),
//! reclamation writes it. Reclaimed
//! images are kept alive until the directory drops, so a broken protocol
//! fails a check instead of touching freed memory. Over every interleaving
//! of its models (exhaustively with two threads, up to 3 preemptions with
//! three), `engine/tests/loom_page_directory.rs` so checks: that no read,
//! counted or borrowed, touches an image before its publication
//! happened-before (loom reports
//! the race on the shadow: a torn read) or after its last directory
//! reference was reclaimed (the count is 0, or a race); the word protocol
//! above (modelled with the page table's order — word cleared under the
//! shard lock, then the epoch published through the real
//! `SnapshotRegistry`); and the reference bit. Not checked by loom:
//! crossbeam's collector itself (its global epoch, and the `SeqCst` fences
//! by which a pin is ordered against a later retire: the stand-in gets that
//! order from its mutex, and the directory relies only on the collector's
//! documented contract), the creation of chunks and of `image_len` (std's
//! `OnceLock`, invisible to loom), the 16 Ki-word chunks of the normal
//! build, and `PageTable` itself (its parking_lot locks are not
//! loom-aware: the test replays its order in a one-page model, which a
//! change of that order in `page_table.rs` must follow).
//!
//! This module knows nothing of snapshots, deltas or files.

use std::sync::{Arc, OnceLock};

use mmsb_wal::PageId;

use reclaim::Reclaimer;
use sync::{AtomicUsize, Ordering};

/// Page ids one chunk of the directory covers (128 KiB of words, made on
/// the first publication into it).
#[cfg(not(loom))]
pub(crate) const CHUNK_PAGES: usize = 16 * 1024;

/// Page ids one chunk covers under loom: a handful of modelled atomics.
#[cfg(loom)]
pub(crate) const CHUNK_PAGES: usize = 4;

/// Chunks the directory may have: page ids below 64 Mi (256 GiB of 4 KiB
/// pages) are covered; pages past them always take the locked path. The
/// table of chunk pointers (~96 KiB) is made with the page table.
#[cfg(not(loom))]
pub(crate) const CHUNKS_MAX: usize = 4 * 1024;

/// Chunks the directory may have under loom: page ids below 8.
#[cfg(loom)]
pub(crate) const CHUNKS_MAX: usize = 2;

/// The reference bit in a word.
const REFERENCED_BIT: usize = 1;

/// Collection passes [`HeadDirectory::collect_retired`] runs. A reference
/// retired at collector epoch `e` is dropped once the epoch reaches `e + 2`,
/// and one pass advances the epoch at most once and drops at most 8 sealed
/// bags of 64 references (crossbeam-epoch's `COLLECT_STEPS`): four passes
/// free what a commit of up to ~1,500 pages retired, when no reader is
/// pinned meanwhile.
const COLLECT_PASSES_MAX: usize = 4;

/// The atomics of the words: std's normally, loom's models under
/// `--cfg loom`.
mod sync {
    #[cfg(not(loom))]
    pub(super) use std::sync::atomic::{AtomicUsize, Ordering};

    #[cfg(loom)]
    pub(super) use loom::sync::atomic::{AtomicUsize, Ordering};
}

/// Reclamation of the references the directory retires: crossbeam's epoch
/// collector (a zero-sized handle, so the fast path is `epoch::pin()`
/// itself).
#[cfg(not(loom))]
mod reclaim {
    use std::sync::Arc;

    use crossbeam::epoch;

    /// crossbeam's global epoch collector.
    #[derive(Debug, Default)]
    pub(super) struct Reclaimer;

    impl Reclaimer {
        /// The handle.
        pub(super) const fn new() -> Self {
            Reclaimer
        }

        /// Pins this thread: no reference retired from now on is dropped
        /// until the guard is.
        #[inline]
        pub(super) fn pin(&self) -> epoch::Guard {
            epoch::pin()
        }

        /// The model's record that the image at `address` was initialised
        /// and is about to be published; nothing in the normal build.
        #[inline(always)]
        pub(super) fn note_published(&self, _address: usize) {}

        /// The model's record that a reader pinned by `guard` touched the
        /// image at `address`; nothing in the normal build.
        #[inline(always)]
        pub(super) fn note_read(&self, _guard: &epoch::Guard, _address: usize) {}

        /// Drops `image` once every thread pinned now has unpinned.
        pub(super) fn retire(&self, image: Arc<[u8]>) {
            epoch::pin().defer(move || drop(image));
        }

        /// Pushes this thread's retired references to the collector.
        pub(super) fn flush(&self) {
            epoch::pin().flush();
        }
    }
}

/// Reclamation under `--cfg loom`: a stand-in for the epoch collector with
/// the same guarantee (a reference retired after its word changed is
/// dropped only once every reader pinned at the retire has unpinned), built
/// from a loom mutex so the model checks every interleaving of pins,
/// retires and reclamations, and a loom cell per image (the shadow of its
/// bytes) that catches a read of an unpublished or reclaimed image.
#[cfg(loom)]
mod reclaim {
    use std::collections::HashMap;
    use std::sync::{Arc, PoisonError};

    use loom::cell::UnsafeCell;
    use loom::sync::Mutex;

    /// Pinned readers and the references retired while any was pinned.
    #[derive(Debug, Default)]
    struct Pins {
        pinned: usize,
        retired: Vec<Arc<[u8]>>,
    }

    /// Stands for an image's bytes: the directory's references to it.
    #[derive(Debug, Default)]
    struct Shadow(UnsafeCell<usize>);

    // SAFETY: every access to the cell goes through loom's `with` or
    // `with_mut`, which check it against every other access and fail the
    // model on an unsynchronised pair; loom runs one thread at a time.
    unsafe impl Sync for Shadow {}

    /// The deferred-until-quiescent collector of the model.
    #[derive(Debug, Default)]
    pub(super) struct Reclaimer {
        pins: Mutex<Pins>,
        /// Shadows by image address. std's mutex: it must add no ordering
        /// that loom would see (the shadows check the directory's own).
        shadows: std::sync::Mutex<HashMap<usize, Arc<Shadow>>>,
        /// Reclaimed references, kept so that an address is never reused
        /// within one execution and a read of a reclaimed image fails a
        /// check rather than touching freed memory.
        graveyard: std::sync::Mutex<Vec<Arc<[u8]>>>,
    }

    /// A pinned reader.
    #[derive(Debug)]
    pub(super) struct Guard<'a> {
        reclaimer: &'a Reclaimer,
    }

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.reclaimer.unpin();
        }
    }

    impl Reclaimer {
        /// A collector with no pinned reader and nothing retired.
        pub(super) fn new() -> Self {
            Self::default()
        }

        fn lock_pins(&self) -> loom::sync::MutexGuard<'_, Pins> {
            self.pins.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn shadow(&self, address: usize, create: bool) -> Option<Arc<Shadow>> {
            let mut shadows = self.shadows.lock().unwrap_or_else(PoisonError::into_inner);
            if create {
                return Some(Arc::clone(shadows.entry(address).or_default()));
            }
            shadows.get(&address).cloned()
        }

        /// Pins this thread until the guard drops.
        pub(super) fn pin(&self) -> Guard<'_> {
            self.lock_pins().pinned += 1;
            Guard { reclaimer: self }
        }

        fn unpin(&self) {
            let ready = {
                let mut pins = self.lock_pins();
                assert!(pins.pinned > 0, "unpinned more often than pinned");
                pins.pinned -= 1;
                if pins.pinned == 0 {
                    std::mem::take(&mut pins.retired)
                } else {
                    Vec::new()
                }
            };
            for image in ready {
                self.reclaim(image);
            }
        }

        /// Records a new directory reference to the image at `address`
        /// (written before the word is, like the image's bytes).
        pub(super) fn note_published(&self, address: usize) {
            let shadow = self.shadow(address, true);
            if let Some(shadow) = shadow {
                // SAFETY: loom checks this access against every other
                // access to the shadow; the pointer is used only here.
                shadow.0.with_mut(|references| unsafe { *references += 1 });
            }
        }

        /// Checks that the image at `address`, which a reader pinned by
        /// `_guard` has just taken a reference to, is published and not
        /// reclaimed, and that its publication happened before.
        pub(super) fn note_read(&self, _guard: &Guard<'_>, address: usize) {
            let shadow = self.shadow(address, false);
            let Some(shadow) = shadow else {
                panic!("read an image at {address:#x} that was never published");
            };
            // SAFETY: a shared read checked by loom (see `note_published`).
            let references = shadow.0.with(|references| unsafe { *references });
            assert!(
                references > 0,
                "read an image at {address:#x} whose directory reference was reclaimed"
            );
        }

        /// Drops `image` now if no reader is pinned, else once none is.
        pub(super) fn retire(&self, image: Arc<[u8]>) {
            let now = {
                let mut pins = self.lock_pins();
                if pins.pinned == 0 {
                    Some(image)
                } else {
                    pins.retired.push(image);
                    None
                }
            };
            if let Some(image) = now {
                self.reclaim(image);
            }
        }

        /// Nothing: reclamation happens in `retire` and at the last unpin.
        pub(super) fn flush(&self) {}

        fn reclaim(&self, image: Arc<[u8]>) {
            let address = image.as_ptr() as usize;
            let Some(shadow) = self.shadow(address, false) else {
                panic!("reclaimed an image at {address:#x} that was never published");
            };
            // SAFETY: see `note_published`.
            shadow.0.with_mut(|references| unsafe {
                assert!(*references > 0, "an image reclaimed twice");
                *references -= 1;
            });
            self.graveyard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(image);
        }
    }
}

/// Head images by page id, read without locks. See the module docs.
#[derive(Debug)]
pub struct HeadDirectory {
    chunks: Box<[OnceLock<Box<[AtomicUsize]>>]>,
    /// Length of every image the directory points at, fixed by the first
    /// publication (0 until then); images of another length are not
    /// published (they take the locked path).
    image_len: OnceLock<usize>,
    /// Where retired references go (zero-sized in the normal build).
    reclaim: Reclaimer,
}

impl Default for HeadDirectory {
    fn default() -> Self {
        HeadDirectory {
            chunks: (0..CHUNKS_MAX).map(|_| OnceLock::new()).collect(),
            image_len: OnceLock::new(),
            reclaim: Reclaimer::new(),
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
    pub fn publish(&self, page_id: PageId, image: &Arc<[u8]>) -> bool {
        if *self.image_len.get_or_init(|| image.len()) != image.len() || image.is_empty() {
            return false;
        }
        let Some(word) = self.word_or_create(page_id) else {
            return false;
        };
        let raw = Arc::into_raw(Arc::clone(image)).cast::<u8>() as usize;
        debug_assert_eq!(raw & REFERENCED_BIT, 0, "images are at least 2-aligned");
        self.reclaim.note_published(raw);
        // Published as referenced: the page was just loaded or written.
        // Release: a reader that loads the word sees the image's bytes.
        let old = word.swap(raw | REFERENCED_BIT, Ordering::AcqRel);
        self.retire(old);
        true
    }

    /// Clears `page_id`'s word; returns whether its reference bit was set.
    /// The caller holds the entry's shard write lock.
    pub fn unpublish(&self, page_id: PageId) -> bool {
        let Some(word) = self.word(page_id) else {
            return false;
        };
        let old = word.swap(0, Ordering::AcqRel);
        self.retire(old);
        old & REFERENCED_BIT != 0
    }

    /// Takes the reference bit of `page_id`'s word (the eviction sweep).
    pub fn take_referenced(&self, page_id: PageId) -> bool {
        self.word(page_id).is_some_and(|word| {
            word.fetch_and(!REFERENCED_BIT, Ordering::Relaxed) & REFERENCED_BIT != 0
        })
    }

    /// The head image of `page_id` when the directory holds it.
    #[inline]
    pub fn get(&self, page_id: PageId) -> Option<Arc<[u8]>> {
        let word = self.word(page_id)?;
        let len = *self.image_len.get()?;
        let guard = self.reclaim.pin();
        let address = Self::load_marked(word);
        if address == 0 {
            return None;
        }
        let image = std::ptr::slice_from_raw_parts(address as *const u8, len);
        // SAFETY: `address` came from `Arc::into_raw` of an image of `len`
        // bytes (publish), and the directory's reference to it is dropped
        // only by the collector after every thread pinned when it was
        // retired has unpinned — this thread is pinned by `guard`, so the
        // image is alive and its count at least one here.
        let image = unsafe {
            Arc::increment_strong_count(image);
            Arc::from_raw(image)
        };
        self.reclaim.note_read(&guard, address);
        drop(guard);
        Some(image)
    }

    /// Lends the head image of `page_id` to `read` when the directory holds
    /// it, without touching the image's reference count: the bytes stay
    /// valid while `read` runs because this thread stays pinned until it
    /// returns. Gives `read` back when the directory does not hold the
    /// page (the caller takes the locked path).
    ///
    /// `read` should be short: while it runs, no reference retired by any
    /// thread is reclaimed (it should not block on I/O, and must not wait
    /// for another thread).
    #[inline]
    pub fn with_image<R, F: FnOnce(&[u8]) -> R>(&self, page_id: PageId, read: F) -> Result<R, F> {
        let (Some(word), Some(&len)) = (self.word(page_id), self.image_len.get()) else {
            return Err(read);
        };
        let guard = self.reclaim.pin();
        let address = Self::load_marked(word);
        if address == 0 {
            return Err(read);
        }
        // SAFETY: as in `get`: `address` is the data of a live `Arc<[u8]>`
        // of `len` bytes whose directory reference is reclaimed only after
        // `guard` (held until `read` returns, and the borrow cannot
        // outlive `read`: it is higher-ranked) unpins. The bytes are never
        // written after publication.
        let image = unsafe { std::slice::from_raw_parts(address as *const u8, len) };
        self.reclaim.note_read(&guard, address);
        let value = read(image);
        // The borrow ended: the image must still be live here too.
        self.reclaim.note_read(&guard, address);
        drop(guard);
        Ok(value)
    }

    /// Loads `word` (the caller is pinned) and sets its reference bit if
    /// clear; returns the image address it held (0: none).
    #[inline(always)]
    fn load_marked(word: &AtomicUsize) -> usize {
        let value = word.load(Ordering::Acquire);
        let address = value & !REFERENCED_BIT;
        if address != 0 && value & REFERENCED_BIT == 0 {
            // A plain load first, so a hot word is written once a sweep.
            // Marked only if the word still holds what was loaded: a failed
            // exchange means it was cleared or re-pointed meanwhile, and
            // the mark belonged to the image that left (see the module docs).
            let _ = word.compare_exchange(
                value,
                value | REFERENCED_BIT,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        address
    }

    /// Frees, on this thread, the references it and others retired that no
    /// pinned reader can still see (at most [`COLLECT_PASSES_MAX`] collector
    /// passes). The committing thread calls it after its fold so that the
    /// images its install replaced are freed by the writer that replaced
    /// them, not by whichever reader's pin happens to trigger the
    /// collector's amortized pass (a point read or `len()` would otherwise
    /// now and then pay for hundreds of frees).
    pub fn collect_retired(&self) {
        for _ in 0..COLLECT_PASSES_MAX {
            self.reclaim.flush();
        }
    }

    /// Clears every word (the page table is being emptied).
    pub fn clear(&self) {
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            for word in chunk.iter() {
                let old = word.swap(0, Ordering::AcqRel);
                self.retire(old);
            }
        }
        self.reclaim.flush();
    }

    /// Hands the directory's reference behind `old` (a word) to the
    /// collector.
    fn retire(&self, old: usize) {
        let address = old & !REFERENCED_BIT;
        debug_assert!(
            old == address || address != 0,
            "a reference bit without an image"
        );
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
        self.reclaim.retire(image);
    }
}

impl Drop for HeadDirectory {
    fn drop(&mut self) {
        self.clear();
    }
}

// loom's atomics panic outside `loom::model`: these plain tests run only in
// the normal build (the loom models live in engine/tests/loom_page_directory.rs).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crossbeam::epoch;

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
    fn collect_retired_frees_the_replaced_heads_of_a_large_commit() {
        // ~1,000 heads replaced, as a batch commit's install does; the
        // collector's own amortized pass would leave most of them waiting
        // for some later pin.
        let dir = HeadDirectory::default();
        let old: Vec<Arc<[u8]>> = (0..1_000u64).map(|i| image(i as u8)).collect();
        for (i, img) in old.iter().enumerate() {
            assert!(dir.publish(PageId(i as u64 + 1), img));
        }
        for i in 0..old.len() {
            assert!(dir.publish(PageId(i as u64 + 1), &image(7)));
        }
        // Other tests of this process may hold pins for a moment: retry a
        // bounded number of times (each try is the writer's whole call).
        let mut tries = 0;
        while old.iter().any(|img| Arc::strong_count(img) > 1) {
            assert!(tries < 1_000, "collect_retired never freed the old heads");
            dir.collect_retired();
            tries += 1;
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_borrowed_read_lends_the_published_bytes_and_takes_no_reference() {
        let dir = HeadDirectory::default();
        let a = image(4);
        let absent = dir.with_image(PageId(9), |bytes| bytes.len());
        assert!(
            absent.is_err(),
            "nothing published yet: the read comes back"
        );
        assert!(dir.publish(PageId(9), &a));
        assert!(dir.take_referenced(PageId(9)), "published as referenced");
        let lent = dir.with_image(PageId(9), |bytes| {
            assert_eq!(Arc::strong_count(&a), 2, "the test's and the directory's");
            (bytes.as_ptr(), bytes.to_vec())
        });
        let Ok((address, bytes)) = lent else {
            panic!("a published page must be lent");
        };
        assert_eq!(address, a.as_ptr(), "the image itself, not a copy");
        assert_eq!(bytes, vec![4; 64]);
        assert!(dir.take_referenced(PageId(9)), "a borrowed read marks too");
        assert!(dir.with_image(PageId(10), |_| ()).is_err());
        dir.unpublish(PageId(9));
        let gone = dir.with_image(PageId(9), |bytes| bytes.to_vec());
        assert!(gone.is_err(), "an unpublished page is not lent");
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
                            // The same through a borrow, read at its start
                            // and at its end (a reclaimed image would be
                            // freed, reused or torn by then).
                            let lent = dir.with_image(PageId(id), |image| {
                                let first = image[0];
                                assert_eq!(u64::from(first) % PAGES, id);
                                std::hint::black_box(image);
                                assert!(image.iter().all(|&b| b == first));
                            });
                            seen += u64::from(lent.is_ok());
                        }
                    }
                    seen
                })
            })
            .collect();
        // A sweep keeps taking the bits, so reads keep marking the words.
        let sweeper = {
            let (dir, stop) = (Arc::clone(&dir), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for id in 0..PAGES {
                        dir.take_referenced(PageId(id));
                    }
                }
            })
        };
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
        sweeper.join().expect("sweeper");
        assert!(seen > 0);
        assert_eq!(ROUNDS % 5, 0, "the last round clears every word");
        for id in 0..PAGES {
            assert!(dir.get(PageId(id)).is_none());
            assert!(
                !dir.take_referenced(PageId(id)),
                "a late mark outlived the clear of page {id}"
            );
        }
    }
}
