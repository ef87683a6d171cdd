//! The shared free list of the frame pool: a lock-free depot of magazines
//! (batches of frames), built as two Treiber stacks over one fixed arena of
//! slots, one stack of slots holding full magazines, one of empty slots.
//!
//! ABA safety without memory reclamation: a stack head is one `AtomicU64`
//! packing a slot index (low 32 bits) and a tag (high 32 bits) that every
//! successful push or pop increments. A pop that read `head = (i, t)` and
//! `next = slots[i].next` can only succeed while the head is still exactly
//! `(i, t)`; if slot `i` was popped and pushed back in between, the tag moved
//! on and the compare-and-swap fails (a false success needs 2^32 operations
//! on one stack between a thread's load and its CAS). Slots live as long as
//! the depot and are never freed, so a stale `next` read is always a read of
//! live memory (an atomic one: no data race either), and no epoch-based
//! reclamation (crossbeam-epoch) is needed.
//!
//! A slot's contents belong to whoever popped the slot's index from either
//! stack, until they push it onto the other: the `Release` of that push and
//! the `Acquire` of the next pop order the hand-over.

use super::sync::{AtomicU32, AtomicU64, CachePadded, Ordering, UnsafeCell};

/// The "no slot" index: the empty stack.
const NIL: u32 = u32::MAX;

/// Packs a slot index and an ABA tag into one stack-head word.
fn pack(index: u32, tag: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index)
}

/// Splits a stack-head word into (slot index, tag).
fn unpack(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// One arena slot: the link of whichever stack it is on, and an item.
struct Slot<T> {
    next: AtomicU32,
    item: UnsafeCell<T>,
}

/// A bounded lock-free exchange of items (magazines of frames): `push` swaps
/// a caller's item into a free slot, `pop` swaps the newest pushed item out.
/// Items move by `std::mem::swap`, so a caller pushing a full magazine gets
/// back an empty one whose allocation it can reuse, and nothing is allocated
/// after construction.
pub struct Depot<T> {
    /// Slots holding pushed items (LIFO: the warmest magazine first).
    full: CachePadded<AtomicU64>,
    /// Slots free for a push.
    empty: CachePadded<AtomicU64>,
    slots: Box<[Slot<T>]>,
}

impl<T> std::fmt::Debug for Depot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Depot")
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: a slot's item is only accessed by the one thread that popped the
// slot's index from a stack (see the module docs), so sharing the depot
// hands items between threads, which is sound when `T: Send`.
unsafe impl<T: Send> Sync for Depot<T> {}

impl<T: Default> Depot<T> {
    /// The largest number of slots a depot can have (indices are 32 bits,
    /// one value reserved for "none").
    pub const SLOTS_MAX: usize = (u32::MAX - 1) as usize;

    /// A depot with room for `slots` items (at least one), all slots empty.
    pub fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, Self::SLOTS_MAX);
        // Slot i links to i + 1: the empty stack starts as 0 → 1 → … → NIL.
        let arena: Box<[Slot<T>]> = (0..slots)
            .map(|index| Slot {
                next: AtomicU32::new(if index + 1 < slots {
                    (index + 1) as u32
                } else {
                    NIL
                }),
                item: UnsafeCell::new(T::default()),
            })
            .collect();
        Depot {
            full: CachePadded(AtomicU64::new(pack(NIL, 0))),
            empty: CachePadded(AtomicU64::new(pack(0, 0))),
            slots: arena,
        }
    }
}

impl<T> Depot<T> {
    /// How many items the depot can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores `item` in a free slot and leaves that slot's previous contents
    /// (an emptied item) in `item`. Returns false, leaving `item` untouched,
    /// when every slot is taken.
    pub fn push(&self, item: &mut T) -> bool {
        let Some(index) = self.pop_index(&self.empty) else {
            return false;
        };
        self.swap_item(index, item);
        self.push_index(&self.full, index);
        true
    }

    /// Takes the most recently pushed item, leaving `item`'s old contents in
    /// its slot (for a later `push` to hand back). Returns false, leaving
    /// `item` untouched, when the depot holds nothing.
    pub fn pop(&self, item: &mut T) -> bool {
        let Some(index) = self.pop_index(&self.full) else {
            return false;
        };
        self.swap_item(index, item);
        self.push_index(&self.empty, index);
        true
    }

    /// Exchanges `item` with slot `index`'s item. The caller owns the slot:
    /// it popped `index` from a stack and has not pushed it back yet.
    fn swap_item(&self, index: u32, item: &mut T) {
        self.slots[index as usize].item.with_mut(|slot_item| {
            // SAFETY: the caller popped `index` and has not pushed it back,
            // so no other thread can reach this slot's item (module docs);
            // the pop's `Acquire` ordered the previous owner's writes first.
            unsafe { std::ptr::swap(slot_item, item) }
        });
    }

    /// Pops a slot index from the stack whose head is `head`.
    fn pop_index(&self, head: &AtomicU64) -> Option<u32> {
        let mut current = head.load(Ordering::Acquire);
        loop {
            let (index, tag) = unpack(current);
            if index == NIL {
                return None;
            }
            debug_assert!((index as usize) < self.slots.len(), "bad slot index");
            // May be stale if the slot was popped meanwhile; the tag then
            // makes the CAS below fail.
            let next = self.slots[index as usize].next.load(Ordering::Relaxed);
            match head.compare_exchange_weak(
                current,
                pack(next, tag.wrapping_add(1)),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(index),
                Err(actual) => current = actual,
            }
        }
    }

    /// Pushes slot `index` (owned by the caller) onto the stack at `head`.
    fn push_index(&self, head: &AtomicU64, index: u32) {
        let mut current = head.load(Ordering::Relaxed);
        loop {
            let (top, tag) = unpack(current);
            self.slots[index as usize]
                .next
                .store(top, Ordering::Relaxed);
            match head.compare_exchange_weak(
                current,
                pack(index, tag.wrapping_add(1)),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

// loom's primitives panic outside `loom::model`: these plain tests run only in
// the normal build (the loom model lives in engine/tests/loom_page_frame_pool.rs).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pack_round_trips() {
        for (index, tag) in [(0, 0), (7, 1), (NIL, u32::MAX), (12345, 99)] {
            assert_eq!(unpack(pack(index, tag)), (index, tag));
        }
    }

    #[test]
    fn push_and_pop_are_lifo_and_bounded() {
        let depot: Depot<Vec<u32>> = Depot::new(2);
        let mut item = vec![1];
        assert!(depot.push(&mut item));
        assert!(item.is_empty(), "push hands back the slot's empty item");
        let mut item = vec![2];
        assert!(depot.push(&mut item));
        let mut item = vec![3];
        assert!(!depot.push(&mut item), "third push into two slots");
        assert_eq!(item, vec![3], "a refused push leaves the item");
        let mut out = Vec::new();
        assert!(depot.pop(&mut out));
        assert_eq!(out, vec![2]);
        let mut out = Vec::new();
        assert!(depot.pop(&mut out));
        assert_eq!(out, vec![1]);
        assert!(!depot.pop(&mut out));
    }

    #[test]
    fn a_zero_slot_request_still_gets_one_slot() {
        let depot: Depot<u8> = Depot::new(0);
        assert_eq!(depot.capacity(), 1);
    }

    #[test]
    fn threads_never_lose_or_duplicate_items() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 2_000;
        let depot: Depot<Vec<usize>> = Depot::new(8);
        let outcomes: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let depot = &depot;
                    scope.spawn(move || {
                        let mut taken = Vec::new();
                        for round in 0..ROUNDS {
                            let mut item = vec![thread * ROUNDS + round];
                            if depot.push(&mut item) {
                                assert!(item.is_empty());
                            } else {
                                taken.extend(item);
                            }
                            let mut out = Vec::new();
                            if depot.pop(&mut out) {
                                taken.extend(out);
                            }
                        }
                        taken
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<usize> = outcomes.into_iter().flatten().collect();
        let mut rest = Vec::new();
        while depot.pop(&mut rest) {
            all.append(&mut rest);
        }
        all.sort_unstable();
        let expected: Vec<usize> = (0..THREADS * ROUNDS).collect();
        assert_eq!(all, expected, "every pushed value comes out exactly once");
    }

    proptest! {
        /// Against a model (a bounded Vec used as a stack).
        #[test]
        fn behaves_like_a_bounded_stack(
            capacity in 1usize..6,
            ops in proptest::collection::vec(any::<Option<u8>>(), 0..64),
        ) {
            let depot: Depot<Option<u8>> = Depot::new(capacity);
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    Some(value) => {
                        let mut item = Some(value);
                        let pushed = depot.push(&mut item);
                        prop_assert_eq!(pushed, model.len() < capacity);
                        if pushed {
                            model.push(value);
                            prop_assert_eq!(item, None);
                        } else {
                            prop_assert_eq!(item, Some(value));
                        }
                    }
                    None => {
                        let mut item = None;
                        let popped = depot.pop(&mut item);
                        prop_assert_eq!(popped, !model.is_empty());
                        prop_assert_eq!(item, model.pop());
                    }
                }
            }
        }
    }
}
