//! Per-thread frame caches: the allocator's fast path, which touches no
//! shared memory at all.
//!
//! Each thread keeps, per pool it uses, two magazines (Bonwick's scheme,
//! "Magazines and Vmem", USENIX 2001): a `loaded` one that allocations pop
//! from and frees push to, and a `previous` one that is either full or
//! empty. Only when both are empty (allocating) or both full (freeing) does
//! the thread go to the pool's shared list, exchanging a whole magazine, so
//! at least `magazine_frames` operations separate two trips to shared memory
//! even when a thread alternates allocations and frees around a boundary.
//! When the thread exits, its magazines go back to the pool.

use std::cell::RefCell;
use std::sync::Arc;

use super::frame::RawFrame;
use super::pool::{destroy, Shared};
use super::sync::thread_local;

thread_local! {
    static CACHES: RefCell<ThreadCaches> = RefCell::new(ThreadCaches::default());
}

/// One thread's caches, one entry per pool the thread has used.
#[derive(Debug, Default)]
struct ThreadCaches {
    entries: Vec<Magazines>,
}

/// One thread's two magazines for one pool.
#[derive(Debug)]
struct Magazines {
    pool: Arc<Shared>,
    loaded: Vec<RawFrame>,
    /// Full or empty, never partial.
    previous: Vec<RawFrame>,
}

impl ThreadCaches {
    /// The entry for `pool`, created on first use.
    #[inline]
    fn entry(&mut self, pool: &Arc<Shared>) -> &mut Magazines {
        let index = match self.entries.iter().position(|m| Arc::ptr_eq(&m.pool, pool)) {
            Some(index) => index,
            None => self.add_entry(pool),
        };
        &mut self.entries[index]
    }

    /// Adds an entry for `pool`; returns its index.
    #[cold]
    #[inline(never)]
    fn add_entry(&mut self, pool: &Arc<Shared>) -> usize {
        // Entries of dropped pools go when a new one comes.
        self.entries.retain(|m| !m.pool.is_closed());
        self.entries.push(Magazines::new(Arc::clone(pool)));
        self.entries.len() - 1
    }

    /// Removes the entry for `pool` (its frames go back to the pool).
    fn remove(&mut self, pool: &Arc<Shared>) -> Option<Magazines> {
        let index = self
            .entries
            .iter()
            .position(|m| Arc::ptr_eq(&m.pool, pool))?;
        Some(self.entries.swap_remove(index))
    }
}

impl Magazines {
    fn new(pool: Arc<Shared>) -> Self {
        let capacity = pool.magazine_frames();
        Magazines {
            pool,
            loaded: Vec::with_capacity(capacity),
            previous: Vec::with_capacity(capacity),
        }
    }

    /// A frame from the cache, refilled from the pool when both magazines
    /// are empty. `None` when the pool is at its cap.
    #[inline]
    fn pop(&mut self) -> Option<RawFrame> {
        match self.loaded.pop() {
            Some(frame) => Some(frame),
            None => self.pop_slow(),
        }
    }

    /// `pop` when the loaded magazine is empty: swap in the previous one if
    /// it is full, else refill from the pool.
    #[cold]
    #[inline(never)]
    fn pop_slow(&mut self) -> Option<RawFrame> {
        if !self.previous.is_empty() {
            std::mem::swap(&mut self.loaded, &mut self.previous);
            return self.loaded.pop();
        }
        if self.pool.refill(&mut self.loaded) {
            return self.loaded.pop();
        }
        None
    }

    /// Caches a freed frame; when both magazines are full the previous one
    /// goes to the pool's shared list.
    #[inline]
    fn push(&mut self, frame: RawFrame) {
        debug_assert!(
            Arc::ptr_eq(&frame.pool, &self.pool),
            "frame of another pool"
        );
        if self.loaded.len() >= self.pool.magazine_frames() {
            self.make_room();
        }
        self.loaded.push(frame);
    }

    /// Empties the loaded magazine: the previous one, if full, goes to the
    /// pool first; then the two swap.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self) {
        if !self.previous.is_empty() {
            self.pool.put_magazine(&mut self.previous);
            debug_assert!(self.previous.is_empty());
        }
        std::mem::swap(&mut self.loaded, &mut self.previous);
        // A buffer recycled through the depot may start out unsized.
        let capacity = self.pool.magazine_frames();
        if self.loaded.capacity() < capacity {
            self.loaded.reserve_exact(capacity);
        }
    }

    /// Frames idle in this cache.
    fn len(&self) -> usize {
        self.loaded.len() + self.previous.len()
    }
}

impl Drop for Magazines {
    fn drop(&mut self) {
        let mut frames = std::mem::take(&mut self.loaded);
        frames.append(&mut self.previous);
        if !frames.is_empty() {
            self.pool.put_frames(frames);
        }
    }
}

/// A frame for `pool` from this thread's cache (or, during thread-local
/// teardown, straight from the pool). `None` at the cap.
#[inline]
pub(crate) fn alloc(pool: &Arc<Shared>) -> Option<RawFrame> {
    let cached = CACHES.try_with(|caches| {
        caches
            .try_borrow_mut()
            .ok()
            .map(|mut caches| caches.entry(pool).pop())
    });
    match cached {
        Ok(Some(frame)) => frame,
        Ok(None) | Err(_) => pool.alloc_uncached(),
    }
}

/// Takes a frame back: into this thread's cache for its pool (or straight
/// into the pool when this thread's cache is borrowed); freed if the pool
/// is closed, or if this thread's cache is already destroyed (thread-local
/// teardown: the closure below is then dropped unrun, and the frame with it).
#[inline]
pub(crate) fn release(raw: RawFrame) {
    if raw.pool.is_closed() {
        destroy(raw);
        return;
    }
    let leftover = CACHES.try_with(move |caches| match caches.try_borrow_mut() {
        Ok(mut caches) => {
            caches.entry(&raw.pool).push(raw);
            None
        }
        Err(_) => Some(raw),
    });
    if let Ok(Some(raw)) = leftover {
        let pool = Arc::clone(&raw.pool);
        pool.put_frames(vec![raw]);
    }
}

/// Returns this thread's cached frames of `pool` to the pool.
pub(crate) fn flush(pool: &Arc<Shared>) {
    let removed = CACHES
        .try_with(|caches| {
            caches
                .try_borrow_mut()
                .ok()
                .and_then(|mut caches| caches.remove(pool))
        })
        .ok()
        .flatten();
    // Dropped outside the borrow: returning frames never re-enters the cache.
    drop(removed);
}

/// Frames of `pool` idle in this thread's cache.
pub(crate) fn cached_here(pool: &Arc<Shared>) -> usize {
    CACHES
        .try_with(|caches| {
            caches.try_borrow().ok().map_or(0, |caches| {
                caches
                    .entries
                    .iter()
                    .find(|m| Arc::ptr_eq(&m.pool, pool))
                    .map_or(0, Magazines::len)
            })
        })
        .unwrap_or(0)
}
