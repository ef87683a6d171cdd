//! Model checks of the page-frame pool with loom: every interleaving (up to a
//! preemption bound) of two or three threads that push and pop the shared
//! free list (the lock-free depot of magazines) and exchange magazines
//! between thread caches and the pool.
//!
//! Run (release: loom explores many thousands of interleavings):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mmsb-engine --release --test loom_page_frame_pool
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS=N` sets the bound (default here: 3 for two
//! threads, 2 for three; the pool models run a few hundred atomic steps per
//! thread, which an unbounded search cannot finish). Removing the ABA tag
//! from the depot, or weakening its `Acquire`s to `Relaxed`, makes these
//! models fail. Without `--cfg loom` this file compiles to nothing.
//!
//! The properties:
//! - (a) the depot never loses or duplicates an item, whatever the order of
//!   concurrent pushes and pops, including the ABA pattern (a slot popped,
//!   another popped, the first pushed back while a third thread's pop of the
//!   first is between its load and its compare-and-swap);
//! - (b) a slot's item is never accessed by two threads at once (loom's
//!   `UnsafeCell` checks every access);
//! - (c) no frame is held by two threads at once, frames dropped on other
//!   threads come back, magazines of exiting threads return to the pool,
//!   and the pool never grows past its cap.
//!
//! loom's `join` returns before the joined thread's thread-locals are
//! dropped (std's `join` waits for them), so the threads here return their
//! caches with `flush_local`; the return at thread exit is tested with real
//! threads in the unit tests and `page_frame_pool_stress.rs`.
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::{Arc, Mutex};
use loom::thread;
use mmsb_engine::alloc::Depot;
use mmsb_engine::{CommitEpoch, PageFrame, PageFramePool, PoolConfig};

/// Default preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_PREEMPTIONS: usize = 3;

/// Default bound for the three-thread models (2 suffices for the ABA
/// interleaving: A stalls once, B once, C runs through).
const THREE_THREAD_PREEMPTIONS: usize = 2;

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(DEFAULT_PREEMPTIONS, f);
}

fn model_bounded(default_bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(default_bound);
    }
    builder.check(f);
}

/// Pops everything left in `depot`, then checks that the two stacks still
/// partition the slots: all of them are now free (exactly `capacity`
/// pushes fit). A slot on both stacks, or on neither, fails here.
fn drain(depot: &Depot<Option<u32>>) -> Vec<u32> {
    let capacity = depot.capacity();
    let mut rest = Vec::new();
    let mut item = None;
    let mut pops = 0;
    while depot.pop(&mut item) {
        pops += 1;
        assert!(
            pops <= capacity,
            "more items than slots: a slot is linked twice"
        );
        rest.extend(item.take());
    }
    for _ in 0..capacity {
        assert!(depot.push(&mut Some(u32::MAX)), "a slot was lost");
    }
    assert!(!depot.push(&mut Some(u32::MAX)), "a slot is on both stacks");
    rest
}

/// (a, b) Two threads push one item each and pop one each into a depot of
/// two slots: every item comes out exactly once.
#[test]
fn depot_push_and_pop_never_lose_or_duplicate() {
    model(|| {
        let depot = Arc::new(Depot::<Option<u32>>::new(2));
        let handles: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|value| {
                let depot = Arc::clone(&depot);
                thread::spawn(move || {
                    let mut item = Some(value);
                    assert!(depot.push(&mut item), "two slots for two pushes");
                    assert_eq!(item, None);
                    let mut out = None;
                    let popped = depot.pop(&mut out);
                    assert_eq!(popped, out.is_some());
                    out
                })
            })
            .collect();
        let mut seen: Vec<u32> = handles
            .into_iter()
            .filter_map(|h| h.join().expect("thread"))
            .collect();
        seen.extend(drain(&depot));
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2]);
    });
}

/// (a, b) The ABA pattern: the depot (three slots) holds 1 on top of 2.
/// Thread A pops once; thread B pops and pushes its item back; thread C
/// pops once. In the bad interleaving A reads the head (slot s, next t) and
/// stalls; B pops s and takes s back from the free slots for its push; C
/// pops t; B pushes s, so the head is s again but s's next is no longer t.
/// Without the tag, A's compare-and-swap would succeed and link t, which
/// C holds, back into the stack. Items and slots must stay intact.
#[test]
fn depot_is_aba_safe() {
    model_bounded(THREE_THREAD_PREEMPTIONS, || {
        let depot = Arc::new(Depot::<Option<u32>>::new(3));
        for value in [2u32, 1] {
            assert!(depot.push(&mut Some(value)));
        }
        let popper = |depot: Arc<Depot<Option<u32>>>, push_back: bool| {
            thread::spawn(move || {
                let mut out = None;
                depot.pop(&mut out);
                if push_back && out.is_some() {
                    assert!(depot.push(&mut out), "a slot is free after a pop");
                }
                out
            })
        };
        let a = popper(Arc::clone(&depot), false);
        let b = popper(Arc::clone(&depot), true);
        let c = popper(Arc::clone(&depot), false);
        let mut seen: Vec<u32> = Vec::new();
        for handle in [a, b, c] {
            seen.extend(handle.join().expect("thread"));
        }
        seen.extend(drain(&depot));
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2], "an item was lost or duplicated");
    });
}

/// (a, b) Three threads, one slot: pushes that find the depot full keep
/// their item; nothing is lost or duplicated.
#[test]
fn depot_with_three_threads_and_one_slot() {
    model_bounded(THREE_THREAD_PREEMPTIONS, || {
        let depot = Arc::new(Depot::<Option<u32>>::new(1));
        let handles: Vec<_> = [1u32, 2, 3]
            .into_iter()
            .map(|value| {
                let depot = Arc::clone(&depot);
                thread::spawn(move || {
                    let mut item = Some(value);
                    if depot.push(&mut item) {
                        assert_eq!(item, None);
                    }
                    item
                })
            })
            .collect();
        let mut seen: Vec<u32> = handles
            .into_iter()
            .filter_map(|h| h.join().expect("thread"))
            .collect();
        let rest = drain(&depot);
        assert_eq!(rest.len(), 1, "exactly one push fits");
        seen.extend(rest);
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3]);
    });
}

fn small_pool(max_frames: usize) -> Arc<PageFramePool> {
    Arc::new(
        PageFramePool::new(PoolConfig {
            frame_bytes: 8,
            max_frames,
            magazine_frames: 1,
        })
        .expect("valid config"),
    )
}

/// Records `frame` as held; panics if another thread holds it.
fn take_ownership(held: &Mutex<BTreeSet<usize>>, frame: &PageFrame) {
    let fresh = held.lock().expect("lock").insert(frame.as_ptr() as usize);
    assert!(fresh, "a frame was handed out twice");
}

fn give_up_ownership(held: &Mutex<BTreeSet<usize>>, frame: &PageFrame) {
    let was_held = held
        .lock()
        .expect("lock")
        .remove(&(frame.as_ptr() as usize));
    assert!(was_held, "a frame freed that was not held");
}

/// (c) Two threads each allocate, free and allocate again from a pool of
/// two frames with one-frame magazines (so every second operation exchanges
/// a magazine with the shared list). No frame is held twice, the cap holds,
/// and after both exit every frame is back in the shared list.
#[test]
fn magazine_exchange_between_two_threads() {
    model(|| {
        let pool = small_pool(2);
        let held = Arc::new(Mutex::new(BTreeSet::new()));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let pool = Arc::clone(&pool);
                let held = Arc::clone(&held);
                thread::spawn(move || {
                    for _ in 0..2 {
                        if let Some(frame) = pool.alloc() {
                            take_ownership(&held, &frame);
                            assert!(pool.stats().frames_allocated <= 2);
                            give_up_ownership(&held, &frame);
                        }
                    }
                    // loom's `join` returns before a thread's locals are
                    // dropped (std's waits), so hand the cache back here.
                    pool.flush_local();
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        let stats = pool.stats();
        assert!(stats.frames_allocated <= 2);
        assert_eq!(stats.frames_free, stats.frames_allocated, "{stats:?}");
        assert_eq!(stats.frames_held_by_threads, 0);
    });
}

/// (c) Frames handed to other threads: the main thread allocates both
/// frames of the pool and hands one to each of two threads, which drop
/// them (into their own caches, returned at exit). Afterwards both are
/// free, and allocating three times yields two distinct frames and a refusal.
#[test]
fn frames_dropped_on_other_threads_come_back() {
    model(|| {
        let pool = small_pool(2);
        let frames = [pool.alloc(), pool.alloc()];
        let handles: Vec<_> = frames
            .into_iter()
            .map(|frame| {
                let frame = frame.expect("below the cap");
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    drop(frame);
                    // loom's `join` returns before a thread's locals are
                    // dropped (std's waits), so hand the cache back here.
                    pool.flush_local();
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        assert_eq!(pool.stats().frames_free, 2);
        let first = pool.alloc().expect("a free frame");
        let second = pool.alloc().expect("a free frame");
        assert_ne!(first.as_ptr(), second.as_ptr());
        assert!(pool.alloc().is_none(), "past the cap");
    });
}

/// (c) A deferred free racing an allocation: a frame freed after epoch 5 is
/// not reused until reclaim sees an oldest snapshot of 5, even while
/// another thread allocates.
#[test]
fn deferred_frames_are_not_reused_before_reclaim() {
    model(|| {
        let pool = small_pool(1);
        let frame = pool.alloc().expect("the only frame");
        let address = frame.as_ptr() as usize;
        let freer = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.free_after(frame, CommitEpoch(5)))
        };
        let allocator = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.alloc().is_some())
        };
        freer.join().expect("freer");
        assert!(
            !allocator.join().expect("allocator"),
            "reused before reclaim"
        );
        assert_eq!(pool.reclaim(CommitEpoch(4)), 0);
        assert_eq!(pool.reclaim(CommitEpoch(5)), 1);
        let again = pool.alloc().expect("reclaimed");
        assert_eq!(again.as_ptr() as usize, address);
    });
}
