//! The pool's shared state: the lock-free depot of full magazines, the
//! locked slow path (loose free frames, growth up to the cap), the
//! epoch-deferred frees, and the counters. Thread caches (`cache.rs`) sit in
//! front of it and come here once per magazine, not once per frame.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::depot::Depot;
use super::frame::RawFrame;
use super::sync::{fence, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use super::{PoolConfig, PoolStats, DEPOT_SLOTS_MAX};

/// Counters, written only on the slow paths and at magazine exchanges.
#[derive(Debug, Default)]
struct Counters {
    /// Frames in existence (≤ `max_frames`).
    allocated: AtomicUsize,
    /// Frames idle in the depot or the slow list.
    free: AtomicUsize,
    /// Frames waiting in the deferred list.
    deferred: AtomicUsize,
    /// Times the pool grew.
    grow_batches: AtomicU64,
    /// Allocations refused at the cap.
    refusals: AtomicU64,
}

/// State shared by a pool's handle, its thread caches and its frames.
pub(crate) struct Shared {
    frame_bytes: usize,
    max_frames: usize,
    magazine_frames: usize,
    /// Set once by the handle's drop; frames coming back afterwards are freed.
    closed: AtomicBool,
    /// Full magazines (exactly `magazine_frames` frames each).
    depot: Depot<Vec<RawFrame>>,
    /// Loose free frames (partial magazines); its lock also serialises growth.
    slow: CachePadded<Mutex<Vec<RawFrame>>>,
    /// Frames freed at an epoch (key) that a snapshot may still read.
    deferred: CachePadded<Mutex<BTreeMap<u64, Vec<RawFrame>>>>,
    counters: CachePadded<Counters>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("frame_bytes", &self.frame_bytes)
            .field("max_frames", &self.max_frames)
            .field("magazine_frames", &self.magazine_frames)
            .field("depot_slots", &self.depot.capacity())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A zeroed buffer of `len` bytes, or `None` when the allocator has no room
/// (the pool then refuses instead of aborting the process).
fn new_bytes(len: usize) -> Option<Box<[u8]>> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).ok()?;
    bytes.resize(len, 0);
    Some(bytes.into_boxed_slice())
}

/// Frees a frame for good (its pool is closing, or trimming); the frame's
/// drop counts it out of its pool.
pub(crate) fn destroy(raw: RawFrame) {
    drop(raw);
}

impl Shared {
    /// Shared state for a validated `config`.
    pub(crate) fn new(config: &PoolConfig) -> Arc<Shared> {
        let depot_slots = (config.max_frames / config.magazine_frames).clamp(1, DEPOT_SLOTS_MAX);
        Arc::new(Shared {
            frame_bytes: config.frame_bytes,
            max_frames: config.max_frames,
            magazine_frames: config.magazine_frames,
            closed: AtomicBool::new(false),
            depot: Depot::new(depot_slots),
            slow: CachePadded(Mutex::new(Vec::new())),
            deferred: CachePadded(Mutex::new(BTreeMap::new())),
            counters: CachePadded(Counters::default()),
        })
    }

    /// A closed pool for one unpooled frame of `frame_bytes` (counted as
    /// allocated already): the frame is freed when dropped.
    pub(crate) fn new_closed(frame_bytes: usize) -> Arc<Shared> {
        let shared = Shared::new(&PoolConfig {
            frame_bytes,
            max_frames: 1,
            magazine_frames: 1,
        });
        shared.closed.store(true, Ordering::Relaxed);
        shared.counters.allocated.store(1, Ordering::Relaxed);
        shared
    }

    /// Counts a frame out (called by `RawFrame::drop`).
    pub(crate) fn frame_destroyed(&self) {
        self.counters.allocated.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    pub(crate) fn max_frames(&self) -> usize {
        self.max_frames
    }

    #[inline]
    pub(crate) fn magazine_frames(&self) -> usize {
        self.magazine_frames
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Fills the empty magazine `out`: a full magazine from the depot (lock
    /// free), else loose frames from the slow list, else new frames up to
    /// the cap. False, `out` still empty, when the pool is at its cap.
    pub(crate) fn refill(self: &Arc<Self>, out: &mut Vec<RawFrame>) -> bool {
        debug_assert!(out.is_empty(), "refilling a non-empty magazine");
        if self.depot.pop(out) {
            self.counters.free.fetch_sub(out.len(), Ordering::Relaxed);
            return true;
        }
        self.refill_slow(out)
    }

    /// The locked path of `refill`.
    fn refill_slow(self: &Arc<Self>, out: &mut Vec<RawFrame>) -> bool {
        let grow = {
            let mut slow = self.slow.lock();
            if !slow.is_empty() {
                let take = slow.len().min(self.magazine_frames);
                let at = slow.len() - take;
                out.extend(slow.drain(at..));
                self.counters.free.fetch_sub(take, Ordering::Relaxed);
                return true;
            }
            // Every increment of `allocated` happens under this lock, so
            // checking and reserving here keeps it at or below the cap.
            let allocated = self.counters.allocated.load(Ordering::Relaxed);
            let grow = self
                .magazine_frames
                .min(self.max_frames.saturating_sub(allocated));
            if grow == 0 {
                self.counters.refusals.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            self.counters.allocated.fetch_add(grow, Ordering::Relaxed);
            grow
        };
        // Allocate outside the lock; give back what the heap refuses.
        for made in 0..grow {
            let Some(bytes) = new_bytes(self.frame_bytes) else {
                self.counters
                    .allocated
                    .fetch_sub(grow - made, Ordering::Relaxed);
                break;
            };
            out.push(RawFrame::new(bytes, Arc::clone(self)));
        }
        self.counters.grow_batches.fetch_add(1, Ordering::Relaxed);
        debug_assert!(self.counters.allocated.load(Ordering::Relaxed) <= self.max_frames);
        !out.is_empty()
    }

    /// One frame for a thread without a usable cache (during thread-local
    /// teardown): a magazine's worth is taken and the rest parked loose.
    pub(crate) fn alloc_uncached(self: &Arc<Self>) -> Option<RawFrame> {
        let mut magazine = Vec::new();
        if !self.refill(&mut magazine) {
            return None;
        }
        let frame = magazine.pop();
        self.put_frames(magazine);
        frame
    }

    /// Hands a full magazine to the shared list and leaves an empty one (an
    /// emptied buffer to reuse) in `magazine`.
    pub(crate) fn put_magazine(&self, magazine: &mut Vec<RawFrame>) {
        let count = magazine.len();
        if count == 0 {
            return;
        }
        debug_assert_eq!(count, self.magazine_frames, "depot holds full magazines");
        // Count before publishing, so a concurrent taker never drives it below zero.
        self.counters.free.fetch_add(count, Ordering::Relaxed);
        if self.depot.push(magazine) {
            // Pairs with the fence in `close`: either close's drain sees this
            // magazine, or this thread sees `closed` and drains it itself.
            fence(Ordering::SeqCst);
            if self.is_closed() {
                self.drain_free();
            }
            return;
        }
        // The depot is full (only when the cap is above DEPOT_SLOTS_MAX magazines).
        self.counters.free.fetch_sub(count, Ordering::Relaxed);
        self.put_loose(std::mem::take(magazine));
    }

    /// Returns free frames of any number: full magazines to the depot, the
    /// rest to the slow list.
    pub(crate) fn put_frames(&self, mut frames: Vec<RawFrame>) {
        while frames.len() >= self.magazine_frames {
            let mut magazine = frames.split_off(frames.len() - self.magazine_frames);
            self.put_magazine(&mut magazine);
        }
        self.put_loose(frames);
    }

    /// Parks loose free frames on the slow list (or frees them if closed).
    fn put_loose(&self, frames: Vec<RawFrame>) {
        if frames.is_empty() {
            return;
        }
        let refused = {
            let mut slow = self.slow.lock();
            if self.is_closed() {
                Some(frames)
            } else {
                self.counters
                    .free
                    .fetch_add(frames.len(), Ordering::Relaxed);
                slow.extend(frames);
                None
            }
        };
        refused.into_iter().flatten().for_each(destroy);
    }

    /// Frees every idle frame of the shared lists to the heap; returns how many.
    pub(crate) fn drain_free(&self) -> usize {
        let mut dropped = Vec::new();
        let mut magazine = Vec::new();
        while self.depot.pop(&mut magazine) {
            self.counters
                .free
                .fetch_sub(magazine.len(), Ordering::Relaxed);
            dropped.append(&mut magazine);
        }
        {
            let mut slow = self.slow.lock();
            self.counters.free.fetch_sub(slow.len(), Ordering::Relaxed);
            dropped.append(&mut slow);
        }
        let count = dropped.len();
        dropped.into_iter().for_each(destroy);
        count
    }

    /// Keeps `raw` until `reclaim` is called with an oldest live snapshot
    /// at or past `epoch`.
    pub(crate) fn defer(&self, raw: RawFrame, epoch: u64) {
        let mut deferred = self.deferred.lock();
        if self.is_closed() {
            drop(deferred);
            destroy(raw);
            return;
        }
        deferred.entry(epoch).or_default().push(raw);
        self.counters.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves every deferred frame whose epoch is at or below `oldest_live`
    /// to the free lists; returns how many.
    pub(crate) fn reclaim(&self, oldest_live: u64) -> usize {
        let ready = {
            let mut deferred = self.deferred.lock();
            let keep = match oldest_live.checked_add(1) {
                Some(bound) => deferred.split_off(&bound),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *deferred, keep)
        };
        let frames: Vec<RawFrame> = ready.into_values().flatten().collect();
        let count = frames.len();
        self.counters.deferred.fetch_sub(count, Ordering::Relaxed);
        self.put_frames(frames);
        count
    }

    /// Marks the pool closed and frees every frame it holds; frames still
    /// out (handed out, or in thread caches) are freed as they come back.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.drain_free();
        let deferred = std::mem::take(&mut *self.deferred.lock());
        let frames: Vec<RawFrame> = deferred.into_values().flatten().collect();
        self.counters
            .deferred
            .fetch_sub(frames.len(), Ordering::Relaxed);
        frames.into_iter().for_each(destroy);
    }

    /// A snapshot of the counters (each exact; together only approximately
    /// simultaneous while other threads work).
    pub(crate) fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let frames_allocated = c.allocated.load(Ordering::Relaxed);
        let frames_free = c.free.load(Ordering::Relaxed);
        let frames_deferred = c.deferred.load(Ordering::Relaxed);
        PoolStats {
            frames_allocated,
            frames_free,
            frames_deferred,
            frames_held_by_threads: frames_allocated
                .saturating_sub(frames_free)
                .saturating_sub(frames_deferred),
            grow_batches: c.grow_batches.load(Ordering::Relaxed),
            refusals: c.refusals.load(Ordering::Relaxed),
        }
    }
}
