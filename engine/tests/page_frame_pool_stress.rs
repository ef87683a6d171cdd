//! Stress test of `PageFramePool`: 16 threads allocate, free, defer-free and
//! hand frames to each other through channels, against a pool whose cap
//! they regularly hit.
//!
//! Checked:
//! - no frame is handed out twice: an ownership set (by address) must not
//!   already hold a frame the pool hands out, and a tag written by its holder
//!   must be intact when the holder (or the thread it handed it to) lets go;
//! - a frame freed with `free_after(epoch)` is handed out again only after
//!   `reclaim` was called with an oldest snapshot at or past `epoch`;
//! - the pool never holds more than its cap;
//! - no leak: after the threads exit (their caches go back) and a final
//!   reclaim, every frame is free, and the pool hands out exactly its cap.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use crossbeam::channel::{unbounded, Receiver, Sender};
use mmsb_engine::{CommitEpoch, PageFrame, PageFramePool, PoolConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const THREADS: usize = 16;
const ROUNDS: usize = 20_000;
const FRAME_BYTES: usize = 256;
/// Below what 16 threads could hold at once, so the cap is hit.
const MAX_FRAMES: usize = 96;
const MAGAZINE_FRAMES: usize = 4;
/// Frames a thread keeps at most before it frees one.
const HELD_FRAMES_MAX: usize = 6;
/// Marks a frame's bytes 16..24 while it waits in the deferred list.
const DEFERRED_MAGIC: u64 = 0xDEFE_22ED_F2A3_E000;
/// How far behind the newest epoch the simulated oldest snapshot lags.
const SNAPSHOT_LAG_EPOCHS: u64 = 32;

/// Who holds which frame (by address), sharded to keep threads apart.
struct Ownership {
    shards: Vec<Mutex<HashSet<usize>>>,
}

impl Ownership {
    fn new() -> Self {
        Ownership {
            shards: (0..64).map(|_| Mutex::new(HashSet::new())).collect(),
        }
    }

    fn shard(&self, address: usize) -> &Mutex<HashSet<usize>> {
        &self.shards[(address / FRAME_BYTES) % self.shards.len()]
    }

    fn acquire(&self, frame: &PageFrame) {
        let address = frame.as_ptr() as usize;
        let fresh = self.shard(address).lock().unwrap().insert(address);
        assert!(fresh, "frame {address:#x} handed out while held");
    }

    fn release(&self, frame: &PageFrame) {
        let address = frame.as_ptr() as usize;
        let held = self.shard(address).lock().unwrap().remove(&address);
        assert!(held, "frame {address:#x} released but not held");
    }
}

struct World {
    pool: PageFramePool,
    owners: Ownership,
    /// Epoch of the newest deferred free.
    epoch: AtomicU64,
    /// The highest oldest-snapshot epoch `reclaim` has been called with
    /// (published before the call).
    reclaimed_through: AtomicU64,
}

fn read_u64(frame: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(frame[at..at + 8].try_into().unwrap())
}

fn write_u64(frame: &mut [u8], at: usize, value: u64) {
    frame[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// A frame with its holder's tag, as held or in flight to another thread.
struct Tagged {
    frame: PageFrame,
    tag: u64,
}

impl World {
    fn alloc(&self, tag: u64) -> Option<Tagged> {
        let mut frame = self.pool.alloc()?;
        self.owners.acquire(&frame);
        assert_eq!(frame.len(), FRAME_BYTES);
        if read_u64(&frame, 16) == DEFERRED_MAGIC {
            let freed_at = read_u64(&frame, 24);
            let reclaimed = self.reclaimed_through.load(Ordering::SeqCst);
            assert!(
                freed_at <= reclaimed,
                "frame deferred at epoch {freed_at} reused before reclaim (reclaimed through {reclaimed})"
            );
        }
        write_u64(&mut frame, 0, tag);
        write_u64(&mut frame, 16, 0);
        write_u64(&mut frame, FRAME_BYTES - 8, tag);
        Some(Tagged { frame, tag })
    }

    fn check(&self, held: &Tagged) {
        assert_eq!(read_u64(&held.frame, 0), held.tag, "tag overwritten");
        assert_eq!(read_u64(&held.frame, FRAME_BYTES - 8), held.tag);
    }

    fn free(&self, held: Tagged) {
        self.check(&held);
        self.owners.release(&held.frame);
        drop(held.frame);
    }

    fn free_deferred(&self, mut held: Tagged) {
        self.check(&held);
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        write_u64(&mut held.frame, 16, DEFERRED_MAGIC);
        write_u64(&mut held.frame, 24, epoch);
        self.owners.release(&held.frame);
        self.pool.free_after(held.frame, CommitEpoch(epoch));
    }

    fn reclaim(&self) {
        let oldest = self
            .epoch
            .load(Ordering::SeqCst)
            .saturating_sub(SNAPSHOT_LAG_EPOCHS);
        self.reclaimed_through.fetch_max(oldest, Ordering::SeqCst);
        self.pool.reclaim(CommitEpoch(oldest));
    }
}

fn worker(
    world: &World,
    index: usize,
    inbox: &Receiver<Tagged>,
    next: &Sender<Tagged>,
    barrier: &Barrier,
) {
    let mut rng = StdRng::seed_from_u64(index as u64);
    let mut held: Vec<Tagged> = Vec::new();
    for round in 0..ROUNDS {
        let tag = ((index as u64) << 48) | round as u64;
        match rng.gen_range(0..10) {
            0..=3 if held.len() < HELD_FRAMES_MAX => {
                if let Some(frame) = world.alloc(tag) {
                    held.push(frame);
                }
            }
            4 if !held.is_empty() => {
                let frame = held.swap_remove(rng.gen_range(0..held.len()));
                world.check(&frame);
                next.send(frame).unwrap();
            }
            5 if !held.is_empty() => {
                let frame = held.swap_remove(rng.gen_range(0..held.len()));
                world.free_deferred(frame);
            }
            _ => {
                if let Some(frame) = held.pop() {
                    world.free(frame);
                }
            }
        }
        while let Ok(received) = inbox.try_recv() {
            world.check(&received);
            if held.len() < HELD_FRAMES_MAX {
                held.push(received);
            } else {
                world.free(received);
            }
        }
        if index == 0 && round % 64 == 0 {
            world.reclaim();
        }
        if round % 128 == 0 {
            assert!(world.pool.stats().frames_allocated <= MAX_FRAMES);
        }
    }
    // Every send happens before this barrier: afterwards the inbox only drains.
    barrier.wait();
    for received in inbox.try_iter() {
        world.free(received);
    }
    for frame in held {
        world.free(frame);
    }
}

#[test]
fn sixteen_threads_never_share_a_frame_and_leak_nothing() {
    let world = Arc::new(World {
        pool: PageFramePool::new(PoolConfig {
            frame_bytes: FRAME_BYTES,
            max_frames: MAX_FRAMES,
            magazine_frames: MAGAZINE_FRAMES,
        })
        .unwrap(),
        owners: Ownership::new(),
        epoch: AtomicU64::new(0),
        reclaimed_through: AtomicU64::new(0),
    });
    let barrier = Arc::new(Barrier::new(THREADS));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| unbounded()).unzip();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| {
            let world = Arc::clone(&world);
            let barrier = Arc::clone(&barrier);
            let next = senders[(index + 1) % THREADS].clone();
            std::thread::spawn(move || worker(&world, index, &inbox, &next, &barrier))
        })
        .collect();
    drop(senders);
    for handle in handles {
        handle.join().unwrap();
    }

    for shard in &world.owners.shards {
        assert!(shard.lock().unwrap().is_empty(), "a frame is still held");
    }
    let before = world.pool.stats();
    assert!(before.frames_allocated <= MAX_FRAMES, "{before:?}");
    assert!(before.refusals > 0, "the cap was never hit: {before:?}");
    world.reclaimed_through.store(u64::MAX, Ordering::SeqCst);
    world.pool.reclaim(CommitEpoch(u64::MAX));
    let stats = world.pool.stats();
    assert_eq!(stats.frames_deferred, 0, "{stats:?}");
    assert_eq!(stats.frames_held_by_threads, 0, "leaked: {stats:?}");
    assert_eq!(stats.frames_free, stats.frames_allocated, "{stats:?}");

    // Everything is back: the pool hands out exactly its cap, all distinct.
    let mut all = Vec::new();
    while let Some(frame) = world.pool.alloc() {
        all.push(frame);
    }
    assert_eq!(all.len(), MAX_FRAMES);
    let distinct: HashSet<usize> = all.iter().map(|f| f.as_ptr() as usize).collect();
    assert_eq!(distinct.len(), MAX_FRAMES);
}
