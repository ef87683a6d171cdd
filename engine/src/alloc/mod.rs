//! The page-frame allocator: pools of page-sized buffers ("frames") with a
//! lock-free fast path, the memory that page reads, private page copies and
//! write-back buffers are made of, and the building block of the memory
//! budget.
//!
//! # Why frames, and not page ids
//!
//! Page *ids* in the data file are allocated at commit time under the single
//! writer lock (`txn.rs` `allocate_page`/`free_page`, through the persistent
//! free list linked through free pages in `meta.rs`), so id allocation is
//! never concurrent and gains nothing from a lock-free path. A reused id
//! cannot corrupt an old snapshot either: MVCC keeps old versions per page id
//! in the page table. What *is* allocated concurrently, by every reader and
//! writer thread, is page-sized memory: a buffer for every page read from
//! disk, every private page copy, every write-back buffer. That is what this
//! module allocates.
//!
//! # Structure
//!
//! - Fast path (`cache.rs`): per-thread caches of two magazines of up to
//!   `magazine_frames` frames each (`thread_local!`). An allocation or free
//!   that the cache can serve touches no shared memory: no atomic, no lock.
//! - Shared free list (`depot.rs`): a lock-free, ABA-safe (tagged index)
//!   stack of full magazines. A thread whose cache runs dry or overflows
//!   swaps a whole magazine with it in one compare-and-swap.
//! - Slow path (`pool.rs`, one mutex): loose frames (partial magazines from
//!   exiting threads, reclaimed frames), and growth, which stops at
//!   `max_frames`: past the cap [`PageFramePool::alloc`] returns `None`.
//! - Deferred frees: [`PageFramePool::free_after`] parks a frame that a
//!   snapshot may still read until [`PageFramePool::reclaim`] is told the
//!   oldest live snapshot has moved past it.
//!
//! [`PageFrame`] owns its buffer and returns it on drop, on any thread.
//! Frames idle in a thread's cache still count against the cap: up to
//! `2 × magazine_frames` per thread and pool, returned when the thread exits
//! or calls [`PageFramePool::flush_local`].

mod cache;
mod depot;
mod frame;
mod pool;
mod sync;

use std::sync::Arc;

use mmsb_wal::CommitEpoch;

use crate::error::{Error, Result};

#[cfg(loom)]
#[doc(hidden)]
pub use depot::Depot;
pub use frame::PageFrame;
use pool::Shared;

/// Frames per magazine unless configured: 32 frames of 4 KiB keep at most
/// 256 KiB idle per thread and pool, and a thread visits shared memory at
/// most once every 32 operations.
pub const DEFAULT_MAGAZINE_FRAMES: usize = 32;
/// The largest magazine a pool accepts.
pub const MAGAZINE_FRAMES_MAX: usize = 1024;
/// The largest frame a pool accepts (pages are at most 64 KiB).
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// The most full magazines the lock-free shared list holds; beyond that
/// (only with caps above `DEPOT_SLOTS_MAX × magazine_frames`) free frames
/// wait on the locked slow list.
pub const DEPOT_SLOTS_MAX: usize = 1 << 16;

/// How a [`PageFramePool`] is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per frame, in `1..=FRAME_BYTES_MAX`.
    pub frame_bytes: usize,
    /// The most frames that may exist at once (the cap), at least 1.
    pub max_frames: usize,
    /// Frames per thread-cache magazine, in `1..=MAGAZINE_FRAMES_MAX`.
    pub magazine_frames: usize,
}

impl PoolConfig {
    /// Frames of `frame_bytes`, at most `max_frames` of them, with the
    /// default magazine size.
    pub fn new(frame_bytes: usize, max_frames: usize) -> Self {
        PoolConfig {
            frame_bytes,
            max_frames,
            magazine_frames: DEFAULT_MAGAZINE_FRAMES,
        }
    }

    /// Checks every field against its documented range.
    fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: String| {
            if ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument(what))
            }
        };
        check(
            (1..=FRAME_BYTES_MAX).contains(&self.frame_bytes),
            format!(
                "frame size {} is not in 1..={FRAME_BYTES_MAX} bytes",
                self.frame_bytes
            ),
        )?;
        check(
            self.max_frames >= 1,
            "a pool needs room for one frame".into(),
        )?;
        check(
            (1..=MAGAZINE_FRAMES_MAX).contains(&self.magazine_frames),
            format!(
                "magazine of {} frames is not in 1..={MAGAZINE_FRAMES_MAX}",
                self.magazine_frames
            ),
        )
    }
}

/// A pool's counters. Each is exact; read together while other threads
/// work they are only approximately simultaneous. Per-thread caches are not
/// counted one by one (that would put a shared counter on the fast path):
/// `frames_held_by_threads` covers both frames handed out and frames idle
/// in thread caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Frames in existence, never above `max_frames`.
    pub frames_allocated: usize,
    /// Frames idle in the shared free lists.
    pub frames_free: usize,
    /// Frames freed with [`PageFramePool::free_after`], not yet reclaimed.
    pub frames_deferred: usize,
    /// Frames handed out or idle in thread caches.
    pub frames_held_by_threads: usize,
    /// Times the pool grew (by up to one magazine).
    pub grow_batches: u64,
    /// Allocations refused because the pool was at its cap.
    pub refusals: u64,
}

/// A pool of equal-sized page frames with per-thread caches over a
/// lock-free shared free list (see the [module docs](self)).
///
/// Share it by reference or in an `Arc`. Dropping the pool frees every
/// frame it holds; frames still handed out stay valid and are freed when
/// dropped.
#[derive(Debug)]
pub struct PageFramePool {
    shared: Arc<Shared>,
}

impl PageFramePool {
    /// An empty pool; frames are created on demand, up to the cap.
    pub fn new(config: PoolConfig) -> Result<PageFramePool> {
        config.validate()?;
        Ok(PageFramePool {
            shared: Shared::new(&config),
        })
    }

    /// Bytes per frame.
    pub fn frame_bytes(&self) -> usize {
        self.shared.frame_bytes()
    }

    /// The cap: the most frames that may exist at once.
    pub fn max_frames(&self) -> usize {
        self.shared.max_frames()
    }

    /// A frame (full length, contents left by its last holder), or `None`
    /// when `max_frames` frames exist and none is free to this thread.
    #[inline]
    pub fn alloc(&self) -> Option<PageFrame> {
        let frame = cache::alloc(&self.shared).map(PageFrame::from_raw);
        debug_assert!(frame
            .as_ref()
            .is_none_or(|f| f.capacity() == self.frame_bytes()));
        frame
    }

    /// A frame from the pool, or past the cap a zeroed heap frame that is
    /// freed on drop: for scratch buffers that must not fail.
    pub fn alloc_or_unpooled(&self) -> PageFrame {
        self.alloc()
            .unwrap_or_else(|| PageFrame::unpooled(self.frame_bytes()))
    }

    /// Frees `frame` once no snapshot can still read it: the frame holds a
    /// page version that commit `superseded_at` replaced, so snapshots older
    /// than `superseded_at` may still read it. It is reused only after
    /// [`reclaim`](Self::reclaim) is called with an oldest live snapshot at
    /// or past `superseded_at`. The frame goes to its own pool's list (an
    /// unpooled frame, or one of a dropped pool, is simply freed).
    pub fn free_after(&self, frame: PageFrame, superseded_at: CommitEpoch) {
        let raw = frame.into_raw();
        let pool = Arc::clone(&raw.pool);
        pool.defer(raw, superseded_at.get());
    }

    /// Makes every deferred frame with `superseded_at <= oldest_live`
    /// reusable; returns how many. `oldest_live` is the oldest live
    /// snapshot's epoch, or the visible epoch when none is live (no later
    /// snapshot can be older).
    pub fn reclaim(&self, oldest_live: CommitEpoch) -> usize {
        self.shared.reclaim(oldest_live.get())
    }

    /// Returns the calling thread's cached frames to the shared list.
    pub fn flush_local(&self) {
        cache::flush(&self.shared);
    }

    /// Frees every frame idle in the shared lists back to the heap (what a
    /// memory budget calls to shrink); returns how many.
    pub fn release_free(&self) -> usize {
        self.shared.drain_free()
    }

    /// Frames idle in the calling thread's cache for this pool.
    pub fn cached_on_this_thread(&self) -> usize {
        cache::cached_here(&self.shared)
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }
}

impl Drop for PageFramePool {
    fn drop(&mut self) {
        self.shared.close();
        cache::flush(&self.shared);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn pool(max_frames: usize, magazine_frames: usize) -> PageFramePool {
        PageFramePool::new(PoolConfig {
            frame_bytes: 64,
            max_frames,
            magazine_frames,
        })
        .unwrap()
    }

    #[test]
    fn bad_configs_are_refused() {
        for config in [
            PoolConfig::new(0, 8),
            PoolConfig::new(FRAME_BYTES_MAX + 1, 8),
            PoolConfig::new(64, 0),
            PoolConfig {
                magazine_frames: 0,
                ..PoolConfig::new(64, 8)
            },
            PoolConfig {
                magazine_frames: MAGAZINE_FRAMES_MAX + 1,
                ..PoolConfig::new(64, 8)
            },
        ] {
            assert!(
                matches!(PageFramePool::new(config), Err(Error::InvalidArgument(_))),
                "{config:?}"
            );
        }
    }

    #[test]
    fn frames_are_zeroed_at_first_and_reused_after_drop() {
        let pool = pool(4, 2);
        let mut frame = pool.alloc().unwrap();
        assert_eq!(frame.len(), 64);
        assert!(frame.iter().all(|&b| b == 0));
        frame.fill(7);
        let address = frame.as_ptr();
        drop(frame);
        let again = pool.alloc().unwrap();
        assert_eq!(again.as_ptr(), address, "the cached frame comes back first");
        assert!(again.iter().all(|&b| b == 7), "contents are not cleared");
    }

    #[test]
    fn allocation_stops_at_the_cap_and_resumes_after_a_free() {
        let pool = pool(5, 2);
        let held: Vec<PageFrame> = (0..5).map(|_| pool.alloc().unwrap()).collect();
        assert!(pool.alloc().is_none());
        let stats = pool.stats();
        assert_eq!(stats.frames_allocated, 5);
        assert_eq!(stats.frames_held_by_threads, 5);
        assert_eq!(stats.refusals, 1);
        let unpooled = pool.alloc_or_unpooled();
        assert!(!unpooled.is_pooled());
        assert_eq!(unpooled.len(), 64);
        let distinct: HashSet<_> = held.iter().map(|f| f.as_ptr()).collect();
        assert_eq!(distinct.len(), 5);
        drop(held);
        assert!(pool.alloc().is_some());
        assert_eq!(pool.stats().frames_allocated, 5);
    }

    #[test]
    fn a_frame_dropped_on_another_thread_returns_to_the_pool() {
        let pool = pool(2, 1);
        let frames = vec![pool.alloc().unwrap(), pool.alloc().unwrap()];
        assert!(pool.alloc().is_none());
        std::thread::spawn(move || drop(frames)).join().unwrap();
        // The other thread's cache went back to the shared list at exit.
        assert_eq!(pool.stats().frames_free, 2);
        let again = [pool.alloc(), pool.alloc()];
        assert!(again.iter().all(Option::is_some));
        assert!(pool.alloc().is_none());
    }

    #[test]
    fn deferred_frames_wait_for_reclaim() {
        let pool = pool(2, 1);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.free_after(a, CommitEpoch(10));
        pool.free_after(b, CommitEpoch(12));
        assert_eq!(pool.stats().frames_deferred, 2);
        assert!(pool.alloc().is_none(), "deferred frames are not reused");
        assert_eq!(pool.reclaim(CommitEpoch(9)), 0);
        assert_eq!(pool.reclaim(CommitEpoch(11)), 1);
        let first = pool.alloc();
        assert!(first.is_some());
        assert!(pool.alloc().is_none());
        assert_eq!(pool.reclaim(CommitEpoch(u64::MAX)), 1);
        let second = pool.alloc();
        assert!(second.is_some());
        assert_eq!(pool.stats().frames_deferred, 0);
    }

    #[test]
    fn flush_and_release_free_give_memory_back() {
        let pool = pool(64, 4);
        let frames: Vec<PageFrame> = (0..10).map(|_| pool.alloc().unwrap()).collect();
        drop(frames);
        assert!(pool.cached_on_this_thread() > 0);
        pool.flush_local();
        assert_eq!(pool.cached_on_this_thread(), 0);
        let stats = pool.stats();
        assert_eq!(stats.frames_free, stats.frames_allocated);
        assert_eq!(pool.release_free(), stats.frames_allocated);
        assert_eq!(pool.stats().frames_allocated, 0);
    }

    #[test]
    fn frames_outlive_their_pool() {
        let pool = pool(4, 2);
        let mut frame = pool.alloc().unwrap();
        let deferred = pool.alloc().unwrap();
        pool.free_after(deferred, CommitEpoch(1));
        drop(pool);
        frame.fill(3);
        assert!(frame.iter().all(|&b| b == 3));
        drop(frame);
    }

    #[test]
    fn a_truncated_frame_returns_whole() {
        let pool = pool(1, 1);
        let mut frame = pool.alloc().unwrap();
        frame.truncate(10);
        assert_eq!(frame.len(), 10);
        drop(frame);
        assert_eq!(pool.alloc().unwrap().len(), 64);
    }

    proptest! {
        /// Against a model: a set of held frames and a count of existing
        /// ones. The pool never exceeds the cap, never hands out a held
        /// frame, refuses only at the cap when nothing is free, and after a
        /// flush every frame not held is free.
        #[test]
        fn behaves_like_a_capped_free_list(
            max_frames in 1usize..12,
            magazine_frames in 1usize..5,
            ops in proptest::collection::vec(0u8..4, 0..80),
        ) {
            let pool = pool(max_frames, magazine_frames);
            let mut held: Vec<PageFrame> = Vec::new();
            let mut deferred = 0usize;
            let mut epoch = 0u64;
            for op in ops {
                match op {
                    0 | 1 => match pool.alloc() {
                        Some(frame) => {
                            prop_assert!(held.iter().all(|h| h.as_ptr() != frame.as_ptr()));
                            held.push(frame);
                        }
                        None => prop_assert_eq!(
                            pool.stats().frames_allocated, max_frames,
                            "refused below the cap"
                        ),
                    },
                    2 => {
                        if let Some(frame) = held.pop() {
                            drop(frame);
                        }
                    }
                    _ => {
                        if let Some(frame) = held.pop() {
                            epoch += 1;
                            pool.free_after(frame, CommitEpoch(epoch));
                            deferred += 1;
                        }
                        if epoch.is_multiple_of(3) {
                            pool.reclaim(CommitEpoch(epoch));
                            deferred = 0;
                        }
                    }
                }
                let stats = pool.stats();
                prop_assert!(stats.frames_allocated <= max_frames);
                prop_assert_eq!(stats.frames_deferred, deferred);
            }
            let held_count = held.len();
            pool.flush_local();
            let stats = pool.stats();
            prop_assert_eq!(stats.frames_held_by_threads, held_count);
            prop_assert_eq!(
                stats.frames_free + stats.frames_deferred + held_count,
                stats.frames_allocated
            );
        }
    }
}
