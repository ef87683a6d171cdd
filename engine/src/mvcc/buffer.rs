//! A transaction's buffered writes to one table: key → new value (`None`:
//! removed), iterated in key order.
//!
//! Bulk loads put millions of keys, often in random order, and read none
//! of them back before the commit. So a write costs no allocation and no
//! ordered insert: its key and value are appended to one byte arena
//! (`bytes`), described by a [`Slot`], and found again through a hash
//! index (`index`: read-your-writes by key, and whether a write replaces
//! an earlier one). Key order is built only when something needs it — a
//! range read, the commit — by [`WriteBuffer::settle`]:
//!
//! - `sorted`: slots in strictly ascending key order. A key after its last
//!   key is pushed here at once (an in-order load never sorts);
//! - `pending`: slots written since the last settle, unsorted;
//! - `recent`: a `BTreeMap` of keys that arrived in small numbers between
//!   ordered reads (copied keys), so that alternating a few writes and a
//!   range read does not re-merge a large `sorted` each time.
//!
//! `settle` sorts `pending` once (by an 8-byte key head, then the whole
//! key) and merges it into `sorted` when it is large compared with what is
//! settled, else moves it into `recent`; `recent` is merged into `sorted`
//! once it is large in turn. Each live slot is in exactly one of the three.
//! Ranges merge `sorted` and `recent`, which hold distinct keys.
//!
//! A key removed from the buffer (the undo of its first write) leaves a
//! dead slot: out of the index and of `recent`, skipped in `sorted` and
//! `pending` (whose order it still keeps) and dropped by the next merge.
//! A replaced value's bytes stay in the arena until the buffer is cleared;
//! the memory budget charge counts every write, so it errs high, not low.

use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::error::{Error, Result};

/// A buffered entry as ranges see it: the key and its new value (`None`:
/// removed).
pub(crate) type BufferItem<'a> = (&'a [u8], Option<&'a [u8]>);

/// `Slot::value_len` of a buffered removal.
const REMOVED: u32 = u32::MAX;

/// `Slot::value_len` of a slot whose key is no longer buffered.
const DEAD: u32 = u32::MAX - 1;

/// Settled slots per pending slot below which a settle puts the pending
/// keys into `recent` instead of merging them into `sorted`; also the
/// ratio of `sorted` to `recent` past which `recent` is merged.
const MERGE_RATIO: usize = 16;

/// Entries ahead of a forward scan whose slots it prefetches.
const PREFETCH_SLOTS_AHEAD: usize = 16;

/// Entries ahead of a forward scan whose key and value bytes it prefetches.
const PREFETCH_BYTES_AHEAD: usize = 8;

/// Cache lines of one entry's bytes prefetched at most.
const PREFETCH_LINES_MAX: usize = 4;

/// Bytes per cache line (the prefetch stride).
const CACHE_LINE_BYTES: usize = 64;

/// Most slots one buffer holds (slot ids are `u32`).
const MAX_SLOTS: usize = u32::MAX as usize - 1;

/// Where one write's key and value sit in the arena.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// [`key_head`] of the key: sorts and merges compare it first, without
    /// reading the arena.
    head: u64,
    key_at: usize,
    value_at: usize,
    key_len: u32,
    /// The value's length, or [`REMOVED`], or [`DEAD`].
    value_len: u32,
}

impl Slot {
    fn is_live(&self) -> bool {
        self.value_len != DEAD
    }
}

/// What [`WriteBuffer::put`] found.
#[derive(Debug)]
pub(crate) enum Put<T> {
    /// The key was buffered; a copy of its previous buffered value.
    Replaced(Option<Arc<[u8]>>),
    /// The key was not buffered; what the `on_vacant` callback returned.
    Added(T),
}

/// See the module docs.
#[derive(Clone, Default)]
pub(crate) struct WriteBuffer {
    /// Keys and values of every write, back to back.
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    /// Live slot ids with the high 32 bits of their key's hash.
    index: HashTable<(u32, u32)>,
    hasher: DefaultHashBuilder,
    /// Strictly ascending keys (dead slots included).
    sorted: Vec<u32>,
    /// Live slots in neither `sorted` nor `pending`, by a copy of the key.
    recent: BTreeMap<Box<[u8]>, u32>,
    /// Slots written since the last settle, in write order.
    pending: Vec<u32>,
    /// Number of live slots.
    live: usize,
    /// Slots that died since the last clear (merges then drop them).
    dead: usize,
    /// Whether `index` holds every live slot; until a write arrives out of
    /// key order it stays empty (an in-order load pays no hashing).
    indexed: bool,
}

impl std::fmt::Debug for WriteBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBuffer")
            .field("live", &self.live)
            .field("arena_bytes", &self.bytes.len())
            .field("sorted", &self.sorted.len())
            .field("recent", &self.recent.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The hash the index's table is laid out by, from the 32 bits kept per
/// entry (so that growing the table never reads a key again).
fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The first 8 bytes of `key`, big-endian, zero-padded: orders keys as
/// their bytes do, up to ties.
fn key_head(key: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let n = key.len().min(8);
    head[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(head)
}

impl WriteBuffer {
    /// Whether no key is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of buffered keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Forgets every buffered key.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.slots.clear();
        self.index.clear();
        self.sorted.clear();
        self.recent.clear();
        self.pending.clear();
        self.live = 0;
        self.dead = 0;
        self.indexed = false;
    }

    fn slot(&self, id: u32) -> &Slot {
        &self.slots[id as usize]
    }

    fn key_of(&self, slot: &Slot) -> &[u8] {
        &self.bytes[slot.key_at..slot.key_at + slot.key_len as usize]
    }

    fn key(&self, id: u32) -> &[u8] {
        self.key_of(self.slot(id))
    }

    fn value_of(&self, slot: &Slot) -> Option<&[u8]> {
        debug_assert!(slot.is_live(), "a dead slot's value is read");
        match slot.value_len {
            REMOVED | DEAD => None,
            len => Some(&self.bytes[slot.value_at..slot.value_at + len as usize]),
        }
    }

    fn item(&self, id: u32) -> BufferItem<'_> {
        let slot = self.slot(id);
        (self.key_of(slot), self.value_of(slot))
    }

    fn hash(&self, key: &[u8]) -> u32 {
        // The high half: foldhash mixes its last step into the top bits.
        (self.hasher.hash_one(key) >> 32) as u32
    }

    /// The live slot holding `key`.
    fn find(&self, key: &[u8]) -> Option<u32> {
        if !self.indexed {
            // Every live slot is in `sorted`, once per key.
            let at = self
                .sorted
                .binary_search_by(|&id| self.key(id).cmp(key))
                .ok()?;
            let id = self.sorted[at];
            return self.slot(id).is_live().then_some(id);
        }
        let hash = self.hash(key);
        self.index
            .find(table_hash(hash), |&(id, h)| {
                h == hash && self.key(id) == key
            })
            .map(|&(id, _)| id)
    }

    /// Appends `value` to the arena: (offset, length or [`REMOVED`]).
    fn store_value(&mut self, value: Option<&[u8]>) -> Result<(usize, u32)> {
        let at = self.bytes.len();
        let Some(value) = value else {
            return Ok((at, REMOVED));
        };
        let len = u32::try_from(value.len())
            .ok()
            .filter(|&len| len < DEAD)
            .ok_or(Error::TooLarge {
                what: "buffered value",
                len: value.len() as u64,
                limit: u64::from(DEAD - 1),
            })?;
        self.bytes.extend_from_slice(value);
        Ok((at, len))
    }

    /// The buffered value of `key`, if it is buffered (`Some(None)`: a
    /// buffered removal).
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.find(key).map(|id| self.value_of(self.slot(id)))
    }

    /// Buffers `value` under `key` (`None`: a removal) with one hash
    /// lookup. When the key was not buffered, `on_vacant(key)` runs first
    /// (an error leaves the buffer unchanged) and its result is returned.
    pub(crate) fn put<T>(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        on_vacant: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Put<T>> {
        // An in-order write needs no lookup: its key is new.
        let appends = self.sorted.last().is_none_or(|&last| self.key(last) < key);
        if let Some(id) = if appends { None } else { self.find(key) } {
            let slot = *self.slot(id);
            let previous = self.value_of(&slot).map(Arc::from);
            let (value_at, value_len) = self.store_value(value)?;
            let slot = &mut self.slots[id as usize];
            slot.value_at = value_at;
            slot.value_len = value_len;
            return Ok(Put::Replaced(previous));
        }
        if self.slots.len() >= MAX_SLOTS {
            return Err(Error::TooLarge {
                what: "writes buffered for one table",
                len: self.slots.len() as u64 + 1,
                limit: MAX_SLOTS as u64,
            });
        }
        if !appends && !self.indexed {
            self.build_index();
        }
        let found = on_vacant(key)?;
        let key_at = self.bytes.len();
        let key_len = u32::try_from(key.len()).map_err(|_| Error::TooLarge {
            what: "buffered key",
            len: key.len() as u64,
            limit: u64::from(u32::MAX),
        })?;
        self.bytes.extend_from_slice(key);
        let (value_at, value_len) = match self.store_value(value) {
            Ok(stored) => stored,
            Err(err) => {
                self.bytes.truncate(key_at);
                return Err(err);
            }
        };
        let id = self.slots.len() as u32;
        self.slots.push(Slot {
            head: key_head(key),
            key_at,
            value_at,
            key_len,
            value_len,
        });
        if self.indexed {
            let hash = self.hash(key);
            self.index
                .insert_unique(table_hash(hash), (id, hash), |&(_, h)| table_hash(h));
        }
        self.live += 1;
        // A key after every sorted key keeps `sorted` sorted.
        if appends {
            self.sorted.push(id);
        } else {
            self.pending.push(id);
        }
        Ok(Put::Added(found))
    }

    /// Indexes every live slot by its key's hash: from the first write out
    /// of key order on (before it, `sorted` holds every key and a binary
    /// search finds them).
    fn build_index(&mut self) {
        debug_assert!(!self.indexed && self.pending.is_empty() && self.recent.is_empty());
        self.index.reserve(self.live, |&(_, h)| table_hash(h));
        for id in 0..self.slots.len() {
            let slot = &self.slots[id];
            if slot.is_live() {
                let hash = self.hash(self.key_of(slot));
                self.index
                    .insert_unique(table_hash(hash), (id as u32, hash), |&(_, h)| table_hash(h));
            }
        }
        self.indexed = true;
    }

    /// Removes `key` from the buffer (undoing its first buffered write);
    /// returns its buffered value.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Option<Arc<[u8]>>> {
        if !self.indexed {
            let id = self.find(key)?;
            return Some(self.kill(id));
        }
        let hash = self.hash(key);
        let (bytes, slots) = (&self.bytes, &self.slots);
        let entry = self.index.find_entry(table_hash(hash), |&(id, h)| {
            let slot = &slots[id as usize];
            h == hash && &bytes[slot.key_at..slot.key_at + slot.key_len as usize] == key
        });
        let Ok(entry) = entry else {
            return None;
        };
        let ((id, _), _) = entry.remove();
        if let btree_map::Entry::Occupied(found) = self.recent.entry(Box::from(key)) {
            debug_assert_eq!(*found.get(), id);
            found.remove();
        }
        Some(self.kill(id))
    }

    /// Marks live slot `id` dead (already out of the index and `recent`);
    /// returns its value.
    fn kill(&mut self, id: u32) -> Option<Arc<[u8]>> {
        let slot = *self.slot(id);
        let previous = self.value_of(&slot).map(Arc::from);
        self.slots[id as usize].value_len = DEAD;
        self.live -= 1;
        self.dead += 1;
        previous
    }

    /// Sorts `ids` by key: by 8-byte key heads, then whole keys on ties.
    fn sort_by_key(&self, ids: &mut [u32]) {
        let mut heads: Vec<(u64, u32)> = ids.iter().map(|&id| (self.slot(id).head, id)).collect();
        heads.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| self.key(a.1).cmp(self.key(b.1))));
        for (dst, (_, id)) in ids.iter_mut().zip(heads) {
            *dst = id;
        }
    }

    /// Whether slot `a`'s key sorts before slot `b`'s.
    fn less(&self, a: u32, b: u32) -> bool {
        let (sa, sb) = (self.slot(a), self.slot(b));
        match sa.head.cmp(&sb.head) {
            Ordering::Equal => self.key_of(sa) < self.key_of(sb),
            order => order == Ordering::Less,
        }
    }

    /// Merges two runs of ascending, distinct keys, dropping dead slots.
    /// A run much shorter than the other is placed by binary searches
    /// (a bulk load's few in-order keys cost no pass over the rest).
    fn merge(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        if small.len().saturating_mul(MERGE_RATIO) < large.len() {
            let mut rest = large;
            for &id in small {
                let at = rest.partition_point(|&other| self.less(other, id));
                out.extend_from_slice(&rest[..at]);
                out.push(id);
                rest = &rest[at..];
            }
            out.extend_from_slice(rest);
        } else {
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                if self.less(a[i], b[j]) {
                    out.push(a[i]);
                    i += 1;
                } else {
                    out.push(b[j]);
                    j += 1;
                }
            }
            out.extend_from_slice(&a[i..]);
            out.extend_from_slice(&b[j..]);
        }
        if self.dead > 0 {
            out.retain(|&id| self.slot(id).is_live());
        }
        out
    }

    /// Puts every pending write in key order (see the module docs). Cheap
    /// when nothing is pending.
    pub(crate) fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        if self.dead > 0 {
            pending.retain(|&id| self.slot(id).is_live());
        }
        self.sort_by_key(&mut pending);
        let settled = self.sorted.len() + self.recent.len();
        if pending.len() * MERGE_RATIO >= settled {
            let recent: Vec<u32> = std::mem::take(&mut self.recent).into_values().collect();
            let fresh = self.merge(&recent, &pending);
            self.sorted = self.merge(&self.sorted, &fresh);
        } else {
            for id in pending {
                self.recent.insert(Box::from(self.key(id)), id);
            }
            if self.recent.len() * MERGE_RATIO >= self.sorted.len() {
                let recent: Vec<u32> = std::mem::take(&mut self.recent).into_values().collect();
                self.sorted = self.merge(&self.sorted, &recent);
            }
        }
        debug_assert!(self.pending.is_empty());
    }

    /// Every buffered entry in key order; settles first. While every
    /// write so far came in key order (no index built: `sorted` holds
    /// every key, in arena order) a plain walk of `sorted`;
    /// otherwise the merging, prefetching [`BufferRange`].
    pub(crate) fn iter(&mut self) -> Entries<'_> {
        if self.indexed {
            return Entries::Merged(self.range(Bound::Unbounded, Bound::Unbounded));
        }
        debug_assert!(self.pending.is_empty() && self.recent.is_empty());
        Entries::InOrder {
            buffer: self,
            ids: self.sorted.iter(),
        }
    }

    /// Every buffered key in key order.
    pub(crate) fn keys(&mut self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(|(key, _)| key)
    }

    /// Every buffered entry, in no particular order (no settle needed).
    pub(crate) fn unordered(&self) -> impl Iterator<Item = BufferItem<'_>> {
        self.slots
            .iter()
            .filter(|slot| slot.is_live())
            .map(|slot| (self.key_of(slot), self.value_of(slot)))
    }

    /// Entries with keys in the bounds, in key order from either end;
    /// settles first. Inverted bounds select nothing.
    pub(crate) fn range(&mut self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> BufferRange<'_> {
        self.settle();
        let this: &WriteBuffer = self;
        let start = this.sorted.partition_point(|&id| match lower {
            Bound::Included(l) => this.key(id) < l,
            Bound::Excluded(l) => this.key(id) <= l,
            Bound::Unbounded => false,
        });
        let end = this.sorted.partition_point(|&id| match upper {
            Bound::Included(u) => this.key(id) <= u,
            Bound::Excluded(u) => this.key(id) < u,
            Bound::Unbounded => true,
        });
        let inverted = start > end || super::is_inverted(&lower, &upper);
        let sorted = if inverted {
            &[][..]
        } else {
            &this.sorted[start..end]
        };
        let recent = if inverted || this.recent.is_empty() {
            None
        } else {
            Some(this.recent.range::<[u8], _>((lower, upper)))
        };
        BufferRange {
            buffer: this,
            sorted,
            recent,
            recent_front: None,
            recent_back: None,
        }
    }

    /// Checks the invariants (tests).
    #[cfg(test)]
    fn check(&self) -> bool {
        let sorted = self
            .sorted
            .windows(2)
            .all(|w| self.key(w[0]) < self.key(w[1]));
        let recent = self
            .recent
            .iter()
            .all(|(key, &id)| self.slot(id).is_live() && &key[..] == self.key(id));
        let mut seen = vec![0u8; self.slots.len()];
        for &id in self
            .sorted
            .iter()
            .chain(self.recent.values())
            .chain(&self.pending)
        {
            seen[id as usize] += 1;
        }
        let placed = self
            .slots
            .iter()
            .zip(&seen)
            .all(|(slot, &n)| n <= 1 && (n == 1 || !slot.is_live()));
        let live = self.slots.iter().filter(|s| s.is_live()).count();
        let index = if self.indexed {
            self.index.len() == self.live
        } else {
            self.index.is_empty() && self.pending.is_empty() && self.recent.is_empty()
        };
        sorted && recent && placed && live == self.live && index
    }
}

/// Every buffered entry in key order ([`WriteBuffer::iter`]).
pub(crate) enum Entries<'a> {
    /// A buffer written in key order: its `sorted` slots, dead ones skipped.
    InOrder {
        buffer: &'a WriteBuffer,
        ids: std::slice::Iter<'a, u32>,
    },
    /// Any other buffer.
    Merged(BufferRange<'a>),
}

impl<'a> Iterator for Entries<'a> {
    type Item = BufferItem<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Entries::InOrder { buffer, ids } => loop {
                let slot = buffer.slot(*ids.next()?);
                if slot.is_live() {
                    return Some((buffer.key_of(slot), buffer.value_of(slot)));
                }
            },
            Entries::Merged(range) => range.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Entries::InOrder { ids, .. } => (0, Some(ids.len())),
            Entries::Merged(range) => range.size_hint(),
        }
    }
}

/// Buffered entries of a key range, in key order from either end: the
/// `sorted` run merged with `recent` (see the module docs).
pub(crate) struct BufferRange<'a> {
    buffer: &'a WriteBuffer,
    /// What is left of the range's part of `sorted` (dead slots skipped
    /// as they are met).
    sorted: &'a [u32],
    recent: Option<btree_map::Range<'a, Box<[u8]>, u32>>,
    /// A slot taken from the front (back) of `recent` and not yet yielded.
    recent_front: Option<u32>,
    recent_back: Option<u32>,
}

impl std::fmt::Debug for BufferRange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferRange")
            .field("sorted_left", &self.sorted.len())
            .finish()
    }
}

impl<'a> BufferRange<'a> {
    /// Drops dead slots from both ends of `sorted`.
    fn trim_sorted(&mut self) {
        let live = |id: &u32| self.buffer.slot(*id).is_live();
        let start = self
            .sorted
            .iter()
            .position(live)
            .unwrap_or(self.sorted.len());
        let end = self.sorted.iter().rposition(live).map_or(start, |i| i + 1);
        self.sorted = &self.sorted[start..end.max(start)];
    }

    /// The next slot from `recent`'s front (`forward`) or back.
    fn recent_peek(&mut self, forward: bool) -> Option<u32> {
        let (near, far) = if forward {
            (&mut self.recent_front, &mut self.recent_back)
        } else {
            (&mut self.recent_back, &mut self.recent_front)
        };
        if near.is_none() {
            let next = match self.recent.as_mut() {
                Some(range) if forward => range.next(),
                Some(range) => range.next_back(),
                None => None,
            };
            *near = next.map(|(_, &id)| id).or_else(|| far.take());
        }
        *near
    }

    /// Hints the cache about the entries a forward scan of `sorted` reads
    /// next: their slots, and the key and value bytes of nearer ones (in
    /// key order they lie anywhere in the arena, one miss each otherwise).
    #[inline]
    fn prefetch_ahead(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let buffer = self.buffer;
            if let Some(&id) = self.sorted.get(PREFETCH_SLOTS_AHEAD) {
                if let Some(slot) = buffer.slots.get(id as usize) {
                    // SAFETY: a prefetch is a hint that never faults; the
                    // address is an element of the slot vector anyway.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast::<i8>()) };
                }
            }
            let Some(&id) = self.sorted.get(PREFETCH_BYTES_AHEAD) else {
                return;
            };
            let Some(slot) = buffer.slots.get(id as usize) else {
                return;
            };
            let value_len = match slot.value_len {
                REMOVED | DEAD => 0,
                len => len as usize,
            };
            let end = (slot.value_at + value_len).max(slot.key_at + slot.key_len as usize);
            let lines = (slot.key_at..end)
                .step_by(CACHE_LINE_BYTES)
                .take(PREFETCH_LINES_MAX);
            for at in lines {
                if let Some(byte) = buffer.bytes.get(at) {
                    // SAFETY: as above; the byte lies inside the arena.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast::<i8>()) };
                }
            }
        }
    }

    fn step(&mut self, forward: bool) -> Option<BufferItem<'a>> {
        self.trim_sorted();
        if forward {
            self.prefetch_ahead();
        }
        let from_sorted = if forward {
            self.sorted.first()
        } else {
            self.sorted.last()
        }
        .copied();
        let from_recent = self.recent_peek(forward);
        let buffer = self.buffer;
        let take_sorted = match (from_sorted, from_recent) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(s), Some(r)) => (buffer.key(s) < buffer.key(r)) == forward,
        };
        let id = if take_sorted {
            let (first, rest) = if forward {
                self.sorted.split_first()?
            } else {
                let (last, rest) = self.sorted.split_last()?;
                (last, rest)
            };
            self.sorted = rest;
            *first
        } else if forward {
            self.recent_front.take()?
        } else {
            self.recent_back.take()?
        };
        Some(buffer.item(id))
    }
}

impl<'a> Iterator for BufferRange<'a> {
    type Item = BufferItem<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for BufferRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;

    use super::{Put, WriteBuffer};

    #[derive(Clone, Debug)]
    enum Op {
        Put(Vec<u8>, Option<u8>),
        Remove(Vec<u8>),
        Range(Option<(u8, bool)>, Option<(u8, bool)>),
        Get(Vec<u8>),
    }

    /// Keys of one or two bytes: shared 8-byte heads and prefixes of each
    /// other, so the head sort's ties and short keys are exercised.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => any::<u8>().prop_map(|k| vec![k]),
            1 => (any::<u8>(), 0u8..4).prop_map(|(k, l)| vec![k; 8 + usize::from(l)]),
            // Ascending runs are the case `sorted`'s append is for.
            2 => (200u8..=255).prop_map(|k| vec![k]),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (key(), any::<Option<u8>>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => key().prop_map(Op::Remove),
            2 => (any::<Option<(u8, bool)>>(), any::<Option<(u8, bool)>>())
                .prop_map(|(l, u)| Op::Range(l, u)),
            1 => key().prop_map(Op::Get),
        ]
    }

    fn bound(b: &Option<(u8, bool)>) -> Bound<Vec<u8>> {
        match *b {
            None => Bound::Unbounded,
            Some((k, true)) => Bound::Included(vec![k]),
            Some((k, false)) => Bound::Excluded(vec![k]),
        }
    }

    fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(|k| &k[..])
    }

    type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

    fn owned(item: (&[u8], Option<&[u8]>)) -> (Vec<u8>, Option<Vec<u8>>) {
        (item.0.to_vec(), item.1.map(<[u8]>::to_vec))
    }

    /// Checks a range forward, backward and from both ends in turn.
    fn check_range(
        buffer: &mut WriteBuffer,
        model: &Model,
        l: &Bound<Vec<u8>>,
        u: &Bound<Vec<u8>>,
    ) -> Result<(), TestCaseError> {
        let want: Vec<_> = if crate::mvcc::is_inverted(&as_ref(l), &as_ref(u)) {
            Vec::new()
        } else {
            model
                .range::<Vec<u8>, _>((l.clone(), u.clone()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let got: Vec<_> = buffer.range(as_ref(l), as_ref(u)).map(owned).collect();
        prop_assert_eq!(&got, &want);
        let mut back: Vec<_> = buffer
            .range(as_ref(l), as_ref(u))
            .rev()
            .map(owned)
            .collect();
        back.reverse();
        prop_assert_eq!(&back, &want);
        let mut range = buffer.range(as_ref(l), as_ref(u));
        let (mut front, mut rear) = (Vec::new(), Vec::new());
        for turn in 0.. {
            let item = if turn % 2 == 0 {
                range.next()
            } else {
                range.next_back()
            };
            match item {
                Some(item) if turn % 2 == 0 => front.push(owned(item)),
                Some(item) => rear.push(owned(item)),
                None => break,
            }
        }
        front.extend(rear.into_iter().rev());
        prop_assert_eq!(&front, &want);
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(ops in prop::collection::vec(op(), 0..300)) {
            let mut buffer = WriteBuffer::default();
            let mut model = Model::new();
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        let value = v.map(|v| vec![v; usize::from(v % 5)]);
                        let mut vacant_called = false;
                        let put = buffer
                            .put(k, value.as_deref(), |seen| {
                                vacant_called = true;
                                assert_eq!(seen, &k[..]);
                                Ok(())
                            })
                            .unwrap();
                        match (put, model.insert(k.clone(), value)) {
                            (Put::Replaced(got), Some(want)) => {
                                prop_assert_eq!(got.map(|v| v.to_vec()), want);
                            }
                            (Put::Added(()), None) => prop_assert!(vacant_called),
                            (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                        }
                    }
                    Op::Remove(k) => {
                        let got = buffer.remove(k).map(|v| v.map(|v| v.to_vec()));
                        prop_assert_eq!(got, model.remove(k));
                    }
                    Op::Range(l, u) => check_range(&mut buffer, &model, &bound(l), &bound(u))?,
                    Op::Get(k) => {
                        let got = buffer.get(k).map(|v| v.map(<[u8]>::to_vec));
                        prop_assert_eq!(got, model.get(k).cloned());
                    }
                }
                prop_assert!(buffer.check());
                prop_assert_eq!(buffer.len(), model.len());
            }
            let mut unordered: Vec<_> = buffer.unordered().map(owned).collect();
            unordered.sort();
            let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&unordered, &want);
            let all: Vec<Vec<u8>> = buffer.keys().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(all, model.keys().cloned().collect::<Vec<_>>());
        }
    }

    proptest! {
        /// A buffer written only in key order (with replacements and
        /// removals of earlier keys, which build no index) iterates by the
        /// plain walk, like the model.
        #[test]
        fn in_order_writes_iterate_like_a_btreemap(
            steps in prop::collection::vec((1u8..4, any::<u8>(), 0u8..3), 0..200),
        ) {
            let mut buffer = WriteBuffer::default();
            let mut model = Model::new();
            let mut next = 0u16;
            for (gap, value, action) in steps {
                match action {
                    // Later keys ascend; a replacement or removal goes back.
                    0 | 1 if !model.is_empty() => {
                        let back = usize::from(value) % model.len();
                        let key = model.keys().nth(back).cloned().unwrap_or_default();
                        if action == 0 {
                            buffer.put(&key, Some(&[value]), |_| Ok(())).unwrap();
                            model.insert(key, Some(vec![value]));
                        } else {
                            buffer.remove(&key);
                            model.remove(&key);
                        }
                    }
                    _ => {
                        next += u16::from(gap);
                        let key = next.to_be_bytes().to_vec();
                        buffer.put(&key, Some(&[value]), |_| Ok(())).unwrap();
                        model.insert(key, Some(vec![value]));
                    }
                }
            }
            prop_assert!(!buffer.indexed && buffer.check());
            let in_order = matches!(buffer.iter(), super::Entries::InOrder { .. });
            prop_assert!(in_order, "not the plain walk");
            let got: Vec<_> = buffer.iter().map(owned).collect();
            let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(got, want);
        }
    }

    fn put(buffer: &mut WriteBuffer, key: &[u8]) {
        buffer.put(key, Some(key), |_| Ok(())).unwrap();
    }

    #[test]
    fn ascending_writes_need_no_sort_and_an_error_changes_nothing() {
        let mut buffer = WriteBuffer::default();
        for k in 0u8..100 {
            put(&mut buffer, &[k]);
        }
        assert_eq!((buffer.sorted.len(), buffer.pending.len()), (100, 0));
        let err = buffer.put(&[200u8], None, |_| {
            Err::<(), _>(crate::Error::InvalidArgument("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(buffer.len(), 100);
        assert_eq!(buffer.get(&[200u8]), None);
        // A key inside the sorted span waits for the next ordered read.
        put(&mut buffer, &[5, 1]);
        assert_eq!(buffer.pending.len(), 1);
        assert_eq!(
            buffer.iter().nth(6).map(|(k, _)| k.to_vec()),
            Some(vec![5, 1])
        );
        assert!(buffer.pending.is_empty() && buffer.check());
    }

    #[test]
    fn few_writes_between_ordered_reads_go_to_recent_then_merge() {
        let mut buffer = WriteBuffer::default();
        for k in (0u16..1000).map(|k| k * 2) {
            put(&mut buffer, &k.to_be_bytes());
        }
        // One odd key at a time, each followed by a range read.
        let mut merged = false;
        for k in (0u16..200).map(|k| k * 2 + 1) {
            put(&mut buffer, &k.to_be_bytes());
            let n = buffer.range(Bound::Unbounded, Bound::Unbounded).count();
            assert_eq!(n, 1001 + usize::from(k / 2));
            assert!(buffer.check());
            merged |= buffer.recent.is_empty();
        }
        assert!(merged, "recent was merged into sorted at least once");
        assert!(!buffer.recent.is_empty() || buffer.sorted.len() == 1200);
        let keys: Vec<Vec<u8>> = buffer.keys().map(<[u8]>::to_vec).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys.len(), 1200);
    }

    #[test]
    fn random_writes_sort_once_and_removed_keys_stay_out() {
        let mut buffer = WriteBuffer::default();
        let mut model = BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..5000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x.to_le_bytes()[..(x % 9) as usize].to_vec();
            put(&mut buffer, &key);
            model.insert(key.clone(), ());
            if i % 7 == 0 {
                assert!(buffer.remove(&key).is_some());
                model.remove(&key);
            }
        }
        assert!(buffer.pending.len() > 4000, "random keys wait unsorted");
        let keys: Vec<Vec<u8>> = buffer.keys().map(<[u8]>::to_vec).collect();
        assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
        assert!(buffer.recent.is_empty() && buffer.check());
    }
}
