//! Slotted leaf and branch pages: header fields, the slot array, cell parsing
//! with bounds checks on every offset read from the page ([`Node`]), and the
//! in-place edits a tree operation makes ([`NodeMut`]): insert/remove cells,
//! overwrite a cell, patch a child pointer, compact free space.
//!
//! Edits touch only the bytes that change (a slot shift, a header field, the
//! new cell), so the transaction's diff of the page stays small. A cell
//! that does not fit the free gap between the slot array and the cells
//! goes into the smallest hole removed cells left (counted in the page's
//! `frag` bytes) that holds it; only when none does is the page compacted,
//! which moves cells and so rewrites (and logs) most of the page.

use std::cmp::Ordering;
use std::ops::Range;

use mmsb_wal::PageId;

use super::format::*;
use super::keys::cmp_key;
use crate::error::Result;
use crate::page_access::PageRead;
use crate::txn::WrittenRanges;

/// Leaf or branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// Holds keys and values.
    Leaf,
    /// Holds separator keys and child page ids.
    Branch,
}

impl NodeKind {
    /// Bytes of the page header of this kind.
    pub(crate) fn header_len(self) -> usize {
        match self {
            NodeKind::Leaf => LEAF_HEADER_BYTES,
            NodeKind::Branch => BRANCH_HEADER_BYTES,
        }
    }

    /// Offset of the key bytes inside a cell of this kind.
    fn cell_key_off(self) -> usize {
        match self {
            NodeKind::Leaf => LEAF_CELL_HEADER_BYTES,
            NodeKind::Branch => BRANCH_CELL_HEADER_BYTES,
        }
    }

    /// The kind expected at `level` (0 = leaves).
    pub(crate) fn at_level(level: u8) -> NodeKind {
        if level == 0 {
            NodeKind::Leaf
        } else {
            NodeKind::Branch
        }
    }
}

/// A key as stored in a cell: `local` holds the whole key, or its first
/// `key_prefix` bytes when the rest lives in an overflow chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyRef<'a> {
    /// Full key length.
    pub(crate) len: usize,
    /// Bytes stored in the page.
    pub(crate) local: &'a [u8],
    /// Offset of `local` in the page.
    pub(crate) local_start: usize,
    /// First page of the chain holding `key[local.len()..]`.
    pub(crate) overflow: Option<PageId>,
}

/// Where a leaf cell's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueLoc {
    /// In the page, at this byte range.
    Inline {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// In an overflow chain.
    Overflow {
        /// First page of the chain.
        first: PageId,
        /// Value length.
        len: usize,
    },
}

impl ValueLoc {
    /// The value's length in bytes.
    pub(crate) fn len(&self) -> usize {
        match *self {
            ValueLoc::Inline { start, end } => end - start,
            ValueLoc::Overflow { len, .. } => len,
        }
    }
}

/// A parsed leaf cell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafCell<'a> {
    /// The key.
    pub(crate) key: KeyRef<'a>,
    /// The value.
    pub(crate) value: ValueLoc,
    /// Bytes the cell occupies (without its slot).
    pub(crate) size: usize,
}

/// A parsed branch cell: keys `>= key` live under its child (read with
/// [`Node::child`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BranchCell<'a> {
    /// The separator key.
    pub(crate) key: KeyRef<'a>,
    /// Bytes the cell occupies (without its slot).
    pub(crate) size: usize,
}

/// Parses a key stored at `start`; `None` when it is malformed.
fn parse_key<'a>(
    b: &'a [u8],
    start: usize,
    overflowed: bool,
    len: usize,
    geo: &Geometry,
) -> Option<(KeyRef<'a>, usize)> {
    if len > MAX_KEY_BYTES {
        return None;
    }
    if overflowed {
        if len <= geo.key_inline_max {
            return None;
        }
        let end = start + geo.key_prefix;
        let local = b.get(start..end)?;
        let first = rd_u64(b, end)?;
        if first == 0 {
            return None;
        }
        let key = KeyRef {
            len,
            local,
            local_start: start,
            overflow: Some(PageId(first)),
        };
        Some((key, end + PAGE_ID_BYTES))
    } else {
        if len > geo.key_inline_max {
            return None;
        }
        let end = start + len;
        let local = b.get(start..end)?;
        let key = KeyRef {
            len,
            local,
            local_start: start,
            overflow: None,
        };
        Some((key, end))
    }
}

/// Bytes of a key's head, compared as one big-endian integer by the binary
/// search before the whole key.
const KEY_HEAD_BYTES: usize = 8;

/// The first [`KEY_HEAD_BYTES`] bytes of `key` as a big-endian integer,
/// zero-padded past its end. Keys whose heads differ are ordered as their
/// heads: at the first differing byte either both keys have real bytes, or
/// the shorter key's padding zero meets a nonzero byte of the longer one,
/// which is then the greater, as in byte-string order.
#[inline]
pub(crate) fn key_head(key: &[u8]) -> u64 {
    if let Some(head) = key.first_chunk::<KEY_HEAD_BYTES>() {
        // The common case, without a variable-length copy.
        return u64::from_be_bytes(*head);
    }
    let mut bytes = [0u8; KEY_HEAD_BYTES];
    let n = key.len().min(KEY_HEAD_BYTES);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// Most cells [`Node::prefetch_cells`] prefetches (a leaf of small
/// entries; beyond this the binary search touches a small share of them).
const PREFETCH_CELLS_MAX: usize = 64;

/// What one binary search compares every probed key with.
struct Probe<'k> {
    /// The search key.
    key: &'k [u8],
    /// Its [`key_head`].
    head: u64,
    /// Longest key a well-formed cell stores whole.
    key_len_max: usize,
}

/// A read-only view of a leaf or branch page whose header has been validated.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    b: &'a [u8],
    id: PageId,
    kind: NodeKind,
    geo: &'a Geometry,
    count: usize,
    content: usize,
    frag: usize,
}

impl<'a> Node<'a> {
    /// Validates the header of page `id` expected at `level` (O(1)).
    pub(crate) fn parse(b: &'a [u8], id: PageId, level: u8, geo: &'a Geometry) -> Result<Self> {
        if b.len() != geo.page_len {
            return Err(corrupt(id, format_args!("page has {} bytes", b.len())));
        }
        let kind = match b[OFF_KIND] {
            KIND_LEAF => NodeKind::Leaf,
            KIND_BRANCH => NodeKind::Branch,
            k => return Err(corrupt(id, format_args!("unexpected page kind {k:#04x}"))),
        };
        if b[OFF_VERSION] != FORMAT_VERSION {
            return Err(corrupt(
                id,
                format_args!("unknown format version {}", b[OFF_VERSION]),
            ));
        }
        if b[OFF_LEVEL] != level || kind != NodeKind::at_level(level) {
            return Err(corrupt(
                id,
                format_args!(
                    "{kind:?} at level {} where level {level} expected",
                    b[OFF_LEVEL]
                ),
            ));
        }
        let node = Self::from_trusted(b, id, kind, geo);
        let slots_end = kind.header_len() + node.count * SLOT_BYTES;
        if slots_end > node.content || node.content > b.len() || node.frag > b.len() - node.content
        {
            return Err(corrupt(
                id,
                "slot array, content start and free bytes disagree",
            ));
        }
        Ok(node)
    }

    /// A view of a page this code has just validated or written.
    #[inline]
    fn from_trusted(b: &'a [u8], id: PageId, kind: NodeKind, geo: &'a Geometry) -> Self {
        let field = |off| rd_u16(b, off).map_or(0, usize::from);
        Node {
            b,
            id,
            kind,
            geo,
            count: field(OFF_COUNT),
            content: field(OFF_CONTENT),
            frag: field(OFF_FRAG),
        }
    }

    /// The page id this view was read from.
    pub(crate) fn id(&self) -> PageId {
        self.id
    }

    /// Leaf or branch.
    pub(crate) fn kind(&self) -> NodeKind {
        self.kind
    }

    /// Number of cells (keys).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The page's bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.b
    }

    /// First byte of the cell area.
    pub(crate) fn content_start(&self) -> usize {
        self.content
    }

    /// Garbage bytes inside the cell area.
    pub(crate) fn frag(&self) -> usize {
        self.frag
    }

    /// Bytes usable for slots and cells.
    pub(crate) fn capacity(&self) -> usize {
        self.b.len() - self.kind.header_len()
    }

    /// Bytes taken by live cells and their slots.
    pub(crate) fn used(&self) -> usize {
        self.b.len() - self.content - self.frag + self.count * SLOT_BYTES
    }

    /// Whether this node should be merged or refilled (if not the root).
    pub(crate) fn is_underfull(&self) -> bool {
        self.used() < self.capacity() / UNDERFULL_DIVISOR
    }

    /// Offset of cell `i`, checked to lie in the cell area.
    pub(crate) fn cell_off(&self, i: usize) -> Result<usize> {
        debug_assert!(i < self.count, "slot {i} of {}", self.count);
        let off = rd_u16(self.b, self.kind.header_len() + i * SLOT_BYTES)
            .map(usize::from)
            .ok_or_else(|| corrupt(self.id, "slot outside the page"))?;
        if off < self.content || off >= self.b.len() {
            return Err(corrupt(self.id, format_args!("slot {i} points at {off}")));
        }
        Ok(off)
    }

    /// The key of cell `i` (hot path: parses only the key).
    pub(crate) fn key(&self, i: usize) -> Result<KeyRef<'a>> {
        let off = self.cell_off(i)?;
        let flags = self.b[off];
        let parsed = rd_u16(self.b, off + CELL_OFF_KEY_LEN).and_then(|len| {
            let start = off + self.kind.cell_key_off();
            let overflowed = flags & FLAG_KEY_OVERFLOW != 0;
            parse_key(self.b, start, overflowed, usize::from(len), self.geo)
        });
        parsed
            .map(|(k, _)| k)
            .ok_or_else(|| corrupt(self.id, format_args!("malformed key in cell {i}")))
    }

    /// Fully parses leaf cell `i`.
    pub(crate) fn leaf_cell(&self, i: usize) -> Result<LeafCell<'a>> {
        debug_assert_eq!(self.kind, NodeKind::Leaf);
        let off = self.cell_off(i)?;
        parse_leaf_cell(self.b, off, self.geo)
            .ok_or_else(|| corrupt(self.id, format_args!("malformed leaf cell {i}")))
    }

    /// Where leaf cell `i`'s key and value lie in the page, as
    /// `(key_start, value_start, value_end)` (the key ends where the value
    /// starts), when both are stored whole in the page and the cell is well
    /// formed: the iteration's fast path, with the checks of
    /// [`Node::leaf_cell`] and nothing built. `None` sends the caller to
    /// [`Node::leaf_cell`], which handles overflow and names any damage.
    #[inline]
    pub(crate) fn inline_entry(&self, i: usize) -> Option<(usize, usize, usize)> {
        debug_assert_eq!(self.kind, NodeKind::Leaf);
        let off = usize::from(rd_u16(self.b, LEAF_HEADER_BYTES + i * SLOT_BYTES)?);
        if off < self.content || *self.b.get(off)? != 0 {
            return None;
        }
        let key_len = usize::from(rd_u16(self.b, off + CELL_OFF_KEY_LEN)?);
        let value_len = usize::try_from(rd_u32(self.b, off + CELL_OFF_VALUE_LEN)?).ok()?;
        if key_len > self.geo.key_inline_max.min(MAX_KEY_BYTES) {
            return None;
        }
        let key_start = off + LEAF_CELL_HEADER_BYTES;
        let value_start = key_start + key_len;
        let value_end = value_start.checked_add(value_len)?;
        if value_end > self.b.len() || value_end - off > self.geo.max_cell {
            return None;
        }
        Some((key_start, value_start, value_end))
    }

    /// Asks the CPU to fetch the first cache line of every cell (at most
    /// [`PREFETCH_CELLS_MAX`]) before a binary search of a page that is
    /// likely cold (a leaf): the probes' cache misses then overlap instead
    /// of following one another. Reads nothing; a hint only.
    #[inline]
    pub(crate) fn prefetch_cells(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let slots = self.kind.header_len();
            for i in 0..self.count.min(PREFETCH_CELLS_MAX) {
                let Some(off) = rd_u16(self.b, slots + i * SLOT_BYTES) else {
                    return;
                };
                if let Some(byte) = self.b.get(usize::from(off)) {
                    // SAFETY: a prefetch is a hint that never faults; the
                    // address lies inside the page anyway.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(byte).cast::<i8>()) };
                }
            }
        }
    }

    /// Fully parses branch cell `i`.
    pub(crate) fn branch_cell(&self, i: usize) -> Result<BranchCell<'a>> {
        debug_assert_eq!(self.kind, NodeKind::Branch);
        let off = self.cell_off(i)?;
        parse_branch_cell(self.b, off, self.geo)
            .ok_or_else(|| corrupt(self.id, format_args!("malformed branch cell {i}")))
    }

    /// Bytes cell `i` occupies (an inline leaf cell ends with its value:
    /// the checks of [`Node::inline_entry`], without a full parse).
    pub(crate) fn cell_size(&self, i: usize) -> Result<usize> {
        match self.kind {
            NodeKind::Leaf => match self.inline_entry(i) {
                Some((_, _, value_end)) => Ok(value_end - self.cell_off(i)?),
                None => self.leaf_cell(i).map(|c| c.size),
            },
            NodeKind::Branch => self.branch_cell(i).map(|c| c.size),
        }
    }

    /// The raw bytes of cell `i` (an inline leaf cell: the checks of
    /// [`Node::inline_entry`], the slot read once).
    pub(crate) fn cell_bytes(&self, i: usize) -> Result<&'a [u8]> {
        if self.kind == NodeKind::Leaf {
            if let Some((key_start, _, value_end)) = self.inline_entry(i) {
                return Ok(&self.b[key_start - LEAF_CELL_HEADER_BYTES..value_end]);
            }
        }
        let off = self.cell_off(i)?;
        let size = self.cell_size(i)?;
        Ok(&self.b[off..off + size])
    }

    /// The cells' `(offset, size)`, sorted by offset.
    fn cell_spans(&self) -> Result<Vec<(usize, usize)>> {
        let mut spans = Vec::with_capacity(self.count);
        for i in 0..self.count {
            spans.push((self.cell_off(i)?, self.cell_size(i)?));
        }
        spans.sort_unstable();
        Ok(spans)
    }

    /// Where a cell of `size` bytes fits in a hole of the cell area (free
    /// bytes between cells, counted in `frag`): the start that ends it at
    /// the top of the smallest such hole (the lowest of equal ones), `None`
    /// when no hole is large enough. Errors on overlapping cells.
    ///
    /// One pass over the slots marks the cells in a bitmap of the cell area
    /// (no sort), then the holes are its runs of clear bits.
    pub(crate) fn hole_for(&self, size: usize) -> Result<Option<usize>> {
        let area = self.b.len() - self.content;
        let words = area.div_ceil(u64::BITS as usize);
        let mut inline = [0u64; OCCUPANCY_INLINE_WORDS];
        let mut heap = Vec::new();
        let bits: &mut [u64] = if words <= OCCUPANCY_INLINE_WORDS {
            &mut inline[..words]
        } else {
            heap.resize(words, 0);
            &mut heap
        };
        for i in 0..self.count {
            let off = self.cell_off(i)? - self.content;
            let end = off + self.cell_size(i)?;
            if end > area || !mark_clear_bits(bits, off, end) {
                return Err(corrupt(self.id, "cells overlap"));
            }
        }
        let mut best: Option<(usize, usize)> = None;
        let mut pos = 0;
        while let Some(free) = next_bit(bits, pos, false).filter(|&free| free < area) {
            let used = next_bit(bits, free, true).map_or(area, |used| used.min(area));
            let hole = used - free;
            if hole >= size && best.is_none_or(|(smallest, _)| hole < smallest) {
                best = Some((hole, self.content + used - size));
            }
            pos = used;
        }
        Ok(best.map(|(_, start)| start))
    }

    /// Whether the cells lie inside the cell area without overlapping and
    /// account, with `frag`, for all of it (for debug assertions).
    pub(crate) fn layout_is_consistent(&self) -> bool {
        let Ok(spans) = self.cell_spans() else {
            return false;
        };
        let mut end = self.content;
        let mut live = 0;
        for (off, size) in spans {
            if off < end || off + size > self.b.len() {
                return false;
            }
            end = off + size;
            live += size;
        }
        live + self.frag == self.b.len() - self.content
    }

    /// Child at position `pos` (0 = leftmost, `pos` in `0..=count`).
    pub(crate) fn child(&self, pos: usize) -> Result<PageId> {
        debug_assert_eq!(self.kind, NodeKind::Branch);
        let raw = if pos == 0 {
            rd_u64(self.b, OFF_LEFTMOST)
        } else {
            let off = self.cell_off(pos - 1)?;
            rd_u64(self.b, off + CELL_OFF_CHILD)
        };
        match raw {
            Some(0) | None => Err(corrupt(self.id, format_args!("bad child pointer {pos}"))),
            Some(id) => Ok(PageId(id)),
        }
    }

    /// Binary search: `(true, i)` when cell `i` holds `key`, else `(false, i)`
    /// with `i` the index of the first key greater than `key`.
    pub(crate) fn search<P: PageRead>(&self, pages: &P, key: &[u8]) -> Result<(bool, usize)> {
        match self.kind {
            NodeKind::Leaf => {
                self.search_in::<{ LEAF_CELL_HEADER_BYTES + KEY_HEAD_BYTES }, P>(pages, key)
            }
            NodeKind::Branch => {
                self.search_in::<{ BRANCH_CELL_HEADER_BYTES + KEY_HEAD_BYTES }, P>(pages, key)
            }
        }
    }

    /// [`Node::search`] over cells whose key starts at byte
    /// `WINDOW - KEY_HEAD_BYTES` (`WINDOW`: the bytes of a cell [`Node::probe`] reads).
    #[inline]
    fn search_in<const WINDOW: usize, P: PageRead>(
        &self,
        pages: &P,
        key: &[u8],
    ) -> Result<(bool, usize)> {
        debug_assert_eq!(WINDOW - KEY_HEAD_BYTES, self.kind.cell_key_off());
        let probe = Probe {
            key,
            head: key_head(key),
            key_len_max: self.geo.key_inline_max.min(MAX_KEY_BYTES),
        };
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let order = match self.probe::<WINDOW>(mid, &probe) {
                Some(order) => order,
                None => cmp_key(pages, self.geo, &self.key(mid)?, key)?,
            };
            match order {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok((true, mid)),
            }
        }
        Ok((false, lo))
    }

    /// The binary search's fast path: orders the key of cell `i` against
    /// the probe's key when the key is stored whole in the page and its
    /// cell is well formed, mostly by one comparison of the first
    /// [`KEY_HEAD_BYTES`] bytes; no overflow read, no error to build.
    /// `None` sends the caller to [`Node::key`], which checks everything
    /// and names the damage.
    #[inline(always)]
    fn probe<const WINDOW: usize>(&self, i: usize, probe: &Probe<'_>) -> Option<Ordering> {
        let key_off = WINDOW - KEY_HEAD_BYTES;
        let off = usize::from(rd_u16(self.b, self.kind.header_len() + i * SLOT_BYTES)?);
        if off < self.content {
            return None;
        }
        // One bounds check for the cell header and the key's head window
        // (bytes past a short key are masked off below).
        let window: &[u8; WINDOW] = self.b.get(off..off + WINDOW)?.try_into().ok()?;
        let flags = window[0];
        let len = usize::from(u16::from_le_bytes([
            window[CELL_OFF_KEY_LEN],
            window[CELL_OFF_KEY_LEN + 1],
        ]));
        if flags & FLAG_KEY_OVERFLOW != 0
            || len > probe.key_len_max
            || off + key_off + len > self.b.len()
        {
            return None;
        }
        let mut raw = [0u8; KEY_HEAD_BYTES];
        raw.copy_from_slice(&window[key_off..]);
        // The stored key's first bytes, big-endian, zero-padded past its end.
        let mask = if len >= KEY_HEAD_BYTES {
            u64::MAX
        } else {
            !(u64::MAX >> (len * 8))
        };
        let stored_head = u64::from_be_bytes(raw) & mask;
        if stored_head != probe.head {
            return Some(stored_head.cmp(&probe.head));
        }
        let stored = self.b.get(off + key_off..off + key_off + len)?;
        Some(stored.cmp(probe.key))
    }

    /// The child position to descend into for `key` (number of separators `<= key`).
    pub(crate) fn child_pos_for<P: PageRead>(&self, pages: &P, key: &[u8]) -> Result<usize> {
        let (found, i) = self.search(pages, key)?;
        Ok(i + usize::from(found))
    }
}

// Read side (cursors): re-opening pages validated before.
impl<'a> Node<'a> {
    /// A view of an immutable page image that [`Node::parse`] accepted
    /// earlier at this `level`: skips the header checks, which cannot fail
    /// again on the same bytes (checked again in debug builds). Inlined:
    /// a range's per-entry step re-opens its leaf.
    #[inline]
    pub(crate) fn reopen(b: &'a [u8], id: PageId, level: u8, geo: &'a Geometry) -> Self {
        debug_assert!(
            Node::parse(b, id, level, geo).is_ok(),
            "reopen of an unvalidated page"
        );
        Self::from_trusted(b, id, NodeKind::at_level(level), geo)
    }
}

/// A branch page's separators decoded once for repeated descents (see
/// `cursor::UpperPages`): the page's common separator prefix, each
/// separator's [`key_head`] after that prefix, where each separator lies in
/// the page, and every child id. A descent then searches a dense array of
/// integers instead of the page's slots and cells, and reads the page only
/// for separators that share the search key's head.
///
/// The heads are searched in two steps that touch few cache lines: the
/// `summary` (kept inline, beside the index's other fields) holds the
/// first head of each block of `stride` heads, so a binary search of the
/// summary picks the one block the answer lies in, and a binary search of
/// that block (one 64-byte line) finishes. A binary search over the whole
/// array made as many probes, spread over some four lines per page; the
/// summaries of a tree's pages are few and stay in the CPU's caches.
///
/// Built only from a page whose cells are all well formed with whole keys
/// (no overflow), in sorted order, and only used with that same immutable
/// image, so a lookup needs no checks and cannot fail.
#[derive(Debug)]
pub(crate) struct BranchIndex {
    /// The common prefix of every separator, as `(start, len)` in the page.
    prefix: (u16, u16),
    /// The prefix's first [`BRANCH_PREFIX_INLINE_BYTES`] bytes: a descent
    /// compares a short prefix without touching the page image.
    prefix_inline: [u8; BRANCH_PREFIX_INLINE_BYTES],
    /// Heads per block (at least [`BRANCH_BLOCK_HEADS`]): the summary's
    /// entries cover every head.
    stride: usize,
    /// `summary[j] == heads[j * stride]` for each block `j`; `u64::MAX`
    /// past the last block (never below a head, so never counted).
    summary: [u64; BRANCH_SUMMARY_HEADS],
    /// [`key_head`] of each separator with the prefix removed, ascending.
    heads: Box<[u64]>,
    /// Each separator as `(start, len)` in the page.
    keys: Box<[(u16, u16)]>,
    /// The `count + 1` children, leftmost first.
    children: Box<[PageId]>,
}

/// Heads of a [`BranchIndex`] block for pages of up to
/// `BRANCH_BLOCK_HEADS * BRANCH_SUMMARY_HEADS` separators: one 64-byte
/// cache line of `u64`s.
const BRANCH_BLOCK_HEADS: usize = 8;

/// Entries of a [`BranchIndex`]'s summary (two 64-byte cache lines):
/// pages with more separators than `BRANCH_BLOCK_HEADS` times this get
/// longer blocks.
const BRANCH_SUMMARY_HEADS: usize = 16;

/// How many of the sorted `heads` are below `head` (where it would go).
#[inline(always)]
fn count_below(heads: &[u64], head: u64) -> usize {
    heads.partition_point(|&h| h < head)
}

/// A prefetch hint for the cache line holding `item` (a hint only: it
/// reads nothing and never faults).
#[inline(always)]
fn prefetch_line<T>(item: Option<&T>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = item {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch never faults; the address is a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(item).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = item;
}

impl BranchIndex {
    /// The index of branch `node`; `None` when a cell is malformed, holds
    /// an overflowed key or is out of order (the caller then searches the
    /// page itself, which reports any damage).
    pub(crate) fn build(node: &Node<'_>) -> Option<BranchIndex> {
        if node.kind != NodeKind::Branch {
            return None;
        }
        let b = node.b;
        let leftmost = rd_u64(b, OFF_LEFTMOST).filter(|&id| id != 0)?;
        let mut keys = Vec::with_capacity(node.count);
        let mut children = Vec::with_capacity(node.count + 1);
        children.push(PageId(leftmost));
        for i in 0..node.count {
            let off = usize::from(rd_u16(b, BRANCH_HEADER_BYTES + i * SLOT_BYTES)?);
            if off < node.content {
                return None;
            }
            let cell = parse_branch_cell(b, off, node.geo)?;
            if cell.key.overflow.is_some() {
                return None;
            }
            let start = u16::try_from(cell.key.local_start).ok()?;
            let len = u16::try_from(cell.key.len).ok()?;
            keys.push((start, len));
            children.push(PageId(rd_u64(b, off + CELL_OFF_CHILD)?));
        }
        // `parse_branch_cell` checked that each key lies in the page.
        let key_at = |&(start, len): &(u16, u16)| {
            let start = usize::from(start);
            &b[start..start + usize::from(len)]
        };
        // Sorted, as the searches assume (a damaged page is searched in
        // place, where the leaf it leads to is checked like any page).
        if keys.windows(2).any(|w| key_at(&w[0]) >= key_at(&w[1])) {
            return None;
        }
        let prefix = match (keys.first(), keys.last()) {
            (Some(first), Some(last)) => {
                let (first_key, last_key) = (key_at(first), key_at(last));
                let common = first_key
                    .iter()
                    .zip(last_key)
                    .take_while(|(a, b)| a == b)
                    .count();
                (first.0, u16::try_from(common).ok()?)
            }
            _ => (0, 0),
        };
        let skip = usize::from(prefix.1);
        let mut prefix_inline = [0u8; BRANCH_PREFIX_INLINE_BYTES];
        if let Some(first) = keys.first() {
            let shared = skip.min(BRANCH_PREFIX_INLINE_BYTES);
            prefix_inline[..shared].copy_from_slice(&key_at(first)[..shared]);
        }
        let heads = keys
            .iter()
            .map(|k| key_at(k).get(skip..).map(key_head))
            .collect::<Option<Box<[u64]>>>()?;
        debug_assert!(heads.windows(2).all(|w| w[0] <= w[1]));
        let (stride, summary) = Self::summarize(&heads);
        Some(BranchIndex {
            prefix,
            prefix_inline,
            stride,
            summary,
            heads,
            keys: keys.into_boxed_slice(),
            children: children.into_boxed_slice(),
        })
    }

    /// The block length and summary of sorted `heads` (see the type's docs).
    fn summarize(heads: &[u64]) -> (usize, [u64; BRANCH_SUMMARY_HEADS]) {
        let stride = heads
            .len()
            .div_ceil(BRANCH_SUMMARY_HEADS)
            .max(BRANCH_BLOCK_HEADS);
        let mut summary = [u64::MAX; BRANCH_SUMMARY_HEADS];
        for (entry, &first) in summary.iter_mut().zip(heads.iter().step_by(stride)) {
            *entry = first;
        }
        (stride, summary)
    }

    /// The number of heads below `head` (where it would go in `heads`):
    /// the summary picks the block, the block's count finishes.
    #[inline]
    fn heads_below(&self, head: u64) -> usize {
        // Blocks whose first head is below `head`: every earlier block lies
        // wholly below it, and every later one (first head >= `head`) above.
        // (The summary is sorted: ascending heads, then `u64::MAX` padding.)
        let blocks = count_below(&self.summary, head);
        let Some(block) = blocks.checked_sub(1) else {
            return 0;
        };
        let start = block * self.stride;
        // The child the descent reads next is in this block's stretch of
        // `children`: start its load beside the block's.
        prefetch_line(self.children.get(start));
        prefetch_line(self.children.get(start + self.stride));
        let end = (start + self.stride).min(self.heads.len());
        let below = start
            + self
                .heads
                .get(start..end)
                .map_or(0, |b| count_below(b, head));
        debug_assert_eq!(below, self.heads.partition_point(|&h| h < head));
        below
    }

    /// Bytes the index holds on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.heads)
            + std::mem::size_of_val(&*self.keys)
            + std::mem::size_of_val(&*self.children)
    }

    /// Number of separators.
    pub(crate) fn count(&self) -> usize {
        self.heads.len()
    }

    /// The child at position `pos` (`0..=count`); `None` past the end.
    pub(crate) fn child(&self, pos: usize) -> Option<PageId> {
        self.children.get(pos).copied()
    }

    /// `len` bytes of `page` from `start` (the image the index was built
    /// from, where the build checked they lie); empty if they do not.
    fn slice(page: &[u8], start: u16, len: usize) -> &[u8] {
        let start = usize::from(start);
        let bytes = page.get(start..start + len);
        debug_assert!(bytes.is_some(), "index used with another page");
        bytes.unwrap_or_default()
    }

    /// The number of separators `<= key`: the position of the child to
    /// descend into, as [`Node::child_pos_for`] finds it on `page`, the
    /// image the index was built from.
    pub(crate) fn child_pos(&self, page: &[u8], key: &[u8]) -> usize {
        let (start, skip) = (self.prefix.0, usize::from(self.prefix.1));
        let (head_part, rest) = key.split_at(skip.min(key.len()));
        if skip > 0 {
            let prefix = match self.prefix_inline.get(..skip) {
                Some(inline) => inline,
                None => Self::slice(page, start, skip),
            };
            match head_part.cmp(prefix) {
                Ordering::Less => return 0,
                Ordering::Greater => return self.count(),
                Ordering::Equal => {}
            }
        }
        let head = key_head(rest);
        let lo = self.heads_below(head);
        if self.heads.get(lo) != Some(&head) {
            return lo;
        }
        let ties = self.heads[lo..].partition_point(|&h| h == head);
        // Separators that share the key's head: compare their rest whole.
        lo + self.keys[lo..lo + ties].partition_point(|&(start, len)| {
            let stored = Self::slice(page, start, usize::from(len));
            stored.get(skip..).unwrap_or_default() <= rest
        })
    }
}

/// Prefix bytes a [`BranchIndex`] keeps beside its heads (longer common
/// prefixes are compared in the page).
const BRANCH_PREFIX_INLINE_BYTES: usize = 16;

/// Parses the leaf cell at `off`; `None` when malformed.
pub(crate) fn parse_leaf_cell<'a>(b: &'a [u8], off: usize, geo: &Geometry) -> Option<LeafCell<'a>> {
    let flags = *b.get(off)?;
    if flags & !(FLAG_KEY_OVERFLOW | FLAG_VALUE_OVERFLOW) != 0 {
        return None;
    }
    let key_len = usize::from(rd_u16(b, off + CELL_OFF_KEY_LEN)?);
    let value_len = usize::try_from(rd_u32(b, off + CELL_OFF_VALUE_LEN)?).ok()?;
    let start = off + LEAF_CELL_HEADER_BYTES;
    let (key, p) = parse_key(b, start, flags & FLAG_KEY_OVERFLOW != 0, key_len, geo)?;
    let (value, end) = if flags & FLAG_VALUE_OVERFLOW != 0 {
        let first = rd_u64(b, p)?;
        if first == 0 || value_len == 0 || value_len > MAX_VALUE_BYTES {
            return None;
        }
        let loc = ValueLoc::Overflow {
            first: PageId(first),
            len: value_len,
        };
        (loc, p + PAGE_ID_BYTES)
    } else {
        let end = p.checked_add(value_len)?;
        if end > b.len() {
            return None;
        }
        (ValueLoc::Inline { start: p, end }, end)
    };
    let size = end - off;
    (size <= geo.max_cell).then_some(LeafCell { key, value, size })
}

/// Parses the branch cell at `off`; `None` when malformed.
pub(crate) fn parse_branch_cell<'a>(
    b: &'a [u8],
    off: usize,
    geo: &Geometry,
) -> Option<BranchCell<'a>> {
    let flags = *b.get(off)?;
    if flags & !FLAG_KEY_OVERFLOW != 0 {
        return None;
    }
    let key_len = usize::from(rd_u16(b, off + CELL_OFF_KEY_LEN)?);
    let child = rd_u64(b, off + CELL_OFF_CHILD)?;
    if child == 0 {
        return None;
    }
    let start = off + BRANCH_CELL_HEADER_BYTES;
    let (key, end) = parse_key(b, start, flags & FLAG_KEY_OVERFLOW != 0, key_len, geo)?;
    let size = end - off;
    (size <= geo.max_cell).then_some(BranchCell { key, size })
}

/// Words of the cell-area bitmap [`Node::hole_for`] keeps on the stack
/// (one bit per byte: a cell area of up to 4 KiB).
const OCCUPANCY_INLINE_WORDS: usize = 64;

/// Sets bits `lo..hi` of `bits` (bit `i` is bit `i % 64` of word
/// `i / 64`); `false`, with some bits maybe set, when one already was.
fn mark_clear_bits(bits: &mut [u64], lo: usize, hi: usize) -> bool {
    const W: usize = u64::BITS as usize;
    debug_assert!(lo <= hi && hi <= bits.len() * W);
    let mut at = lo;
    while at < hi {
        let (word, from) = (at / W, at % W);
        // Bits of this word in the range: 1 to 64.
        let n = (hi - at).min(W - from);
        let mask = (u64::MAX >> (W - n)) << from;
        if bits[word] & mask != 0 {
            return false;
        }
        bits[word] |= mask;
        at += n;
    }
    true
}

/// The first bit at or after `from` that is set (`set`) or clear; `None`
/// past the last word.
fn next_bit(bits: &[u64], from: usize, set: bool) -> Option<usize> {
    const W: usize = u64::BITS as usize;
    let flip = if set { 0 } else { u64::MAX };
    let mut word = from / W;
    let mut x = (*bits.get(word)? ^ flip) & (u64::MAX << (from % W));
    loop {
        if x != 0 {
            return Some(word * W + x.trailing_zeros() as usize);
        }
        word += 1;
        x = *bits.get(word)? ^ flip;
    }
}

/// In-place edits of a leaf or branch page.
pub(crate) struct NodeMut<'a> {
    b: &'a mut [u8],
    id: PageId,
    kind: NodeKind,
    geo: &'a Geometry,
    /// Where every change is noted, when the page keeps a record (see
    /// [`NodeMut::open_noted`]).
    noted: Option<&'a mut WrittenRanges>,
}

impl<'a> NodeMut<'a> {
    /// Opens page `id` (validated like [`Node::parse`]) for editing.
    pub(crate) fn open(b: &'a mut [u8], id: PageId, level: u8, geo: &'a Geometry) -> Result<Self> {
        Self::open_noted((b, None), id, level, geo)
    }

    /// [`NodeMut::open`] on a page from
    /// [`PageWrite::page_mut_noted`](crate::page_access::PageWrite::page_mut_noted):
    /// every edit notes the bytes it changes in the page's record.
    pub(crate) fn open_noted(
        (b, noted): (&'a mut [u8], Option<&'a mut WrittenRanges>),
        id: PageId,
        level: u8,
        geo: &'a Geometry,
    ) -> Result<Self> {
        let kind = Node::parse(b, id, level, geo)?.kind();
        Ok(NodeMut {
            b,
            id,
            kind,
            geo,
            noted,
        })
    }

    /// Notes that bytes `range` change (when the page keeps a record).
    fn note(&mut self, range: Range<usize>) {
        debug_assert!(range.start <= range.end && range.end <= self.b.len());
        if let Some(noted) = self.noted.as_deref_mut() {
            noted.note(range);
        }
    }

    /// Formats a fresh (zero-filled) page as an empty node.
    pub(crate) fn init(b: &'a mut [u8], id: PageId, level: u8, geo: &'a Geometry) -> Result<Self> {
        if b.len() != geo.page_len {
            return Err(corrupt(
                id,
                format_args!("fresh page has {} bytes", b.len()),
            ));
        }
        let kind = NodeKind::at_level(level);
        b[OFF_KIND] = match kind {
            NodeKind::Leaf => KIND_LEAF,
            NodeKind::Branch => KIND_BRANCH,
        };
        b[OFF_VERSION] = FORMAT_VERSION;
        b[OFF_LEVEL] = level;
        b[OFF_RESERVED_BYTE] = 0;
        b[OFF_RESERVED_TAIL..LEAF_HEADER_BYTES].fill(0);
        let mut node = NodeMut {
            b,
            id,
            kind,
            geo,
            noted: None,
        };
        node.set_count(0);
        node.set_content(geo.page_len);
        node.set_frag(0);
        if kind == NodeKind::Branch {
            wr_u64(node.b, OFF_LEFTMOST, 0);
        }
        Ok(node)
    }

    /// A read-only view of the current state.
    pub(crate) fn view(&self) -> Node<'_> {
        Node::from_trusted(self.b, self.id, self.kind, self.geo)
    }

    fn set_count(&mut self, v: usize) {
        debug_assert!(v <= u16::MAX as usize);
        wr_u16(self.b, OFF_COUNT, v as u16);
        self.note(OFF_COUNT..OFF_COUNT + 2);
    }

    fn set_content(&mut self, v: usize) {
        debug_assert!(v <= u16::MAX as usize);
        wr_u16(self.b, OFF_CONTENT, v as u16);
        self.note(OFF_CONTENT..OFF_CONTENT + 2);
    }

    fn set_frag(&mut self, v: usize) {
        debug_assert!(v <= u16::MAX as usize);
        wr_u16(self.b, OFF_FRAG, v as u16);
        self.note(OFF_FRAG..OFF_FRAG + 2);
    }

    /// Sets the cell count, content start and garbage bytes together,
    /// noting the three adjacent header fields as one range (one note
    /// instead of three for an insert or a removal).
    fn set_header(&mut self, count: usize, content: usize, frag: usize) {
        const { assert!(OFF_CONTENT == OFF_COUNT + 2 && OFF_FRAG == OFF_CONTENT + 2) };
        debug_assert!(count <= u16::MAX as usize && content <= u16::MAX as usize);
        debug_assert!(frag <= u16::MAX as usize);
        wr_u16(self.b, OFF_COUNT, count as u16);
        wr_u16(self.b, OFF_CONTENT, content as u16);
        wr_u16(self.b, OFF_FRAG, frag as u16);
        self.note(OFF_COUNT..OFF_FRAG + 2);
    }

    /// Sets the leftmost child of a branch.
    pub(crate) fn set_leftmost(&mut self, child: PageId) {
        debug_assert_eq!(self.kind, NodeKind::Branch);
        wr_u64(self.b, OFF_LEFTMOST, child.0);
        self.note(OFF_LEFTMOST..OFF_LEFTMOST + PAGE_ID_BYTES);
    }

    /// Sets the child at position `pos` (0 = leftmost) of a branch.
    pub(crate) fn set_child(&mut self, pos: usize, child: PageId) -> Result<()> {
        if pos == 0 {
            self.set_leftmost(child);
        } else {
            let off = self.view().cell_off(pos - 1)?;
            wr_u64(self.b, off + CELL_OFF_CHILD, child.0);
            self.note(off + CELL_OFF_CHILD..off + CELL_OFF_CHILD + PAGE_ID_BYTES);
        }
        Ok(())
    }

    /// Inserts a cell of `size` bytes at index `idx`, written by `write`.
    /// Returns `false` (page unchanged) when it does not fit.
    pub(crate) fn insert_cell_with(
        &mut self,
        idx: usize,
        size: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<bool> {
        let view = self.view();
        let (count, content, frag) = (view.count, view.content, view.frag);
        debug_assert!(idx <= count && size <= self.geo.max_cell);
        let slots_end = self.kind.header_len() + count * SLOT_BYTES;
        let need = size + SLOT_BYTES;
        if content - slots_end + frag < need {
            return Ok(false);
        }
        let hole = if content - slots_end >= need {
            None
        } else if content - slots_end >= SLOT_BYTES && frag >= size {
            // The gap holds the slot but not the cell: a hole left by
            // removed cells may (a compaction would rewrite the page).
            self.view().hole_for(size)?
        } else {
            None
        };
        let start = match hole {
            Some(start) => start,
            None => {
                if content - slots_end < need {
                    self.compact()?;
                }
                self.view().content - size
            }
        };
        write(&mut self.b[start..start + size]);
        let slot = self.kind.header_len() + idx * SLOT_BYTES;
        self.b.copy_within(slot..slots_end, slot + SLOT_BYTES);
        wr_u16(self.b, slot, start as u16);
        self.note(start..start + size);
        self.note(slot..slots_end + SLOT_BYTES);
        // Read again: a compaction may have moved the content start.
        let (content, frag) = (self.view().content, self.view().frag);
        if hole.is_some() {
            debug_assert!(frag >= size, "a hole is counted in the free bytes");
            self.set_header(count + 1, content, frag - size);
            debug_assert!(self.view().layout_is_consistent());
        } else {
            self.set_header(count + 1, start, frag);
        }
        Ok(true)
    }

    /// Inserts a copy of `cell` at index `idx`; `false` when it does not fit.
    pub(crate) fn insert_cell(&mut self, idx: usize, cell: &[u8]) -> Result<bool> {
        self.insert_cell_with(idx, cell.len(), |dst| dst.copy_from_slice(cell))
    }

    /// Inserts copies of `cells`, in order, starting at index `idx`, shifting
    /// the slot array once. Returns `false` (page unchanged) when they do not fit.
    pub(crate) fn insert_cells(&mut self, idx: usize, cells: &[&[u8]]) -> Result<bool> {
        let view = self.view();
        let (count, content, frag) = (view.count, view.content, view.frag);
        debug_assert!(idx <= count);
        let bytes: usize = cells.iter().map(|c| c.len()).sum();
        let need = bytes + cells.len() * SLOT_BYTES;
        let slots_end = self.kind.header_len() + count * SLOT_BYTES;
        if content - slots_end + frag < need {
            return Ok(false);
        }
        if content - slots_end < need {
            self.compact()?;
        }
        let mut start = self.view().content;
        let cells_end = start;
        let slot = self.kind.header_len() + idx * SLOT_BYTES;
        let shift = cells.len() * SLOT_BYTES;
        self.b.copy_within(slot..slots_end, slot + shift);
        for (k, cell) in cells.iter().enumerate() {
            start -= cell.len();
            self.b[start..start + cell.len()].copy_from_slice(cell);
            wr_u16(self.b, slot + k * SLOT_BYTES, start as u16);
        }
        self.note(start..cells_end);
        self.note(slot..slots_end + shift);
        let frag = self.view().frag;
        self.set_header(count + cells.len(), start, frag);
        Ok(true)
    }

    /// Removes cells `range` (their overflow chains are the caller's business).
    pub(crate) fn remove_cells(&mut self, range: Range<usize>) -> Result<()> {
        let view = self.view();
        let (count, mut content, mut frag) = (view.count, view.content, view.frag);
        debug_assert!(range.start <= range.end && range.end <= count);
        for i in range.clone().rev() {
            let off = view.cell_off(i)?;
            let size = view.cell_size(i)?;
            if off == content {
                content += size;
            } else {
                frag += size;
            }
        }
        let hdr = self.kind.header_len();
        let slots_end = hdr + count * SLOT_BYTES;
        self.b.copy_within(
            hdr + range.end * SLOT_BYTES..slots_end,
            hdr + range.start * SLOT_BYTES,
        );
        self.note(hdr + range.start * SLOT_BYTES..slots_end);
        let left = count - range.len();
        if left == 0 {
            content = self.b.len();
            frag = 0;
        }
        if frag > self.b.len() - content {
            self.set_count(left);
            return Err(corrupt(self.id, "cells overlap"));
        }
        self.set_header(left, content, frag);
        Ok(())
    }

    /// Replaces cell `idx` by `cell` in place when it is not larger; returns
    /// `false` (page unchanged) otherwise.
    pub(crate) fn overwrite_cell(&mut self, idx: usize, cell: &[u8]) -> Result<bool> {
        let view = self.view();
        let off = view.cell_off(idx)?;
        let old = view.cell_size(idx)?;
        let frag = view.frag;
        if cell.len() > old {
            return Ok(false);
        }
        self.b[off..off + cell.len()].copy_from_slice(cell);
        self.note(off..off + cell.len());
        self.set_frag(frag + old - cell.len());
        Ok(true)
    }

    /// Rewrites the tail of leaf cell `idx` (flags, value length and value
    /// part) in place; the key part is left untouched. The new cell must not
    /// be larger than the old one.
    pub(crate) fn overwrite_leaf_value(
        &mut self,
        idx: usize,
        flags: u8,
        value_len: usize,
        value_part: &[u8],
    ) -> Result<()> {
        let view = self.view();
        let cell = view.leaf_cell(idx)?;
        let (old_size, value) = (cell.size, cell.value);
        let off = view.cell_off(idx)?;
        let frag = view.frag;
        let value_off = match value {
            ValueLoc::Inline { start, .. } => start,
            ValueLoc::Overflow { .. } => off + old_size - PAGE_ID_BYTES,
        };
        let new_size = value_off - off + value_part.len();
        debug_assert!(new_size <= old_size);
        self.b[off] = flags;
        wr_u32(self.b, off + CELL_OFF_VALUE_LEN, value_len as u32);
        self.b[value_off..value_off + value_part.len()].copy_from_slice(value_part);
        self.note(off..value_off + value_part.len());
        self.set_frag(frag + old_size - new_size);
        Ok(())
    }

    /// Moves all cells to the end of the page so free space is contiguous.
    /// Cells already packed at the end are not rewritten.
    fn compact(&mut self) -> Result<()> {
        let view = self.view();
        let count = view.count;
        let mut cells = Vec::with_capacity(count);
        for i in 0..count {
            cells.push((view.cell_off(i)?, view.cell_size(i)?, i));
        }
        cells.sort_unstable_by_key(|&(off, _, _)| std::cmp::Reverse(off));
        let slots_end = self.kind.header_len() + count * SLOT_BYTES;
        // Noted up front: a corrupt cell stops the moves half way.
        self.note(self.kind.header_len()..self.b.len());
        let mut end = self.b.len();
        for (off, size, i) in cells {
            if off + size > end || end - size < slots_end {
                return Err(corrupt(self.id, "cells overlap"));
            }
            let new_off = end - size;
            if new_off != off {
                self.b.copy_within(off..off + size, new_off);
                wr_u16(
                    self.b,
                    self.kind.header_len() + i * SLOT_BYTES,
                    new_off as u16,
                );
            }
            end = new_off;
        }
        self.set_content(end);
        self.set_frag(0);
        Ok(())
    }
}

#[cfg(test)]
mod read_path_tests {
    //! The search and iteration fast paths ([`Node::probe`],
    //! [`Node::inline_entry`]) against the checked parsing they shortcut.

    use proptest::prelude::*;

    use super::*;
    use crate::error::Error;
    use crate::page_access::PageRef;

    const PAGE_LEN: usize = 4080;

    /// No page is ever read: keys in these tests are stored whole.
    struct NoPages;

    impl PageRead for NoPages {
        fn page_len(&self) -> usize {
            PAGE_LEN
        }
        fn read_page(&self, id: PageId) -> Result<PageRef> {
            Err(Error::PageOutOfRange(id))
        }
    }

    /// Keys from a small alphabet with zero bytes, so heads tie often.
    fn key_gen() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(0xff), any::<u8>()],
            0..14,
        )
    }

    /// A leaf holding `entries` (sorted, distinct keys) as inline cells.
    fn leaf(entries: &[(Vec<u8>, Vec<u8>)], geo: &Geometry) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_LEN];
        let mut node = NodeMut::init(&mut page, PageId(2), 0, geo).expect("init");
        for (i, (key, value)) in entries.iter().enumerate() {
            let mut cell = vec![0u8; LEAF_CELL_HEADER_BYTES];
            cell[CELL_OFF_KEY_LEN..CELL_OFF_KEY_LEN + 2]
                .copy_from_slice(&(key.len() as u16).to_le_bytes());
            cell[CELL_OFF_VALUE_LEN..CELL_OFF_VALUE_LEN + 4]
                .copy_from_slice(&(value.len() as u32).to_le_bytes());
            cell.extend_from_slice(key);
            cell.extend_from_slice(value);
            assert!(node.insert_cell(i, &cell).expect("insert"), "cell fits");
        }
        page
    }

    /// The binary search of the checked path only.
    fn checked_search(node: &Node<'_>, key: &[u8]) -> (bool, usize) {
        let (mut lo, mut hi) = (0, node.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let stored = node.key(mid).expect("well-formed key");
            match stored.local.cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return (true, mid),
            }
        }
        (false, lo)
    }

    proptest! {
        /// Unequal heads order two keys as the keys themselves.
        #[test]
        fn key_heads_order_like_the_keys(a in key_gen(), b in key_gen()) {
            let (ha, hb) = (key_head(&a), key_head(&b));
            if ha != hb {
                prop_assert_eq!(ha.cmp(&hb), a.cmp(&b));
            }
            prop_assert_eq!(key_head(&a), key_head(&a[..a.len().min(KEY_HEAD_BYTES)]));
        }

        /// Search (fast path) finds what the checked search finds, and the
        /// iteration's entry ranges are the checked cell's.
        #[test]
        fn fast_paths_agree_with_checked_parsing(
            keys in prop::collection::btree_set(key_gen(), 0..60),
            probes in prop::collection::vec(key_gen(), 1..40),
        ) {
            let geo = Geometry::new(PAGE_LEN).expect("geometry");
            let entries: Vec<_> = keys.into_iter().map(|k| {
                let v = vec![k.len() as u8; k.len() % 5];
                (k, v)
            }).collect();
            let page = leaf(&entries, &geo);
            let node = Node::parse(&page, PageId(2), 0, &geo).expect("parse");
            for key in probes.iter().chain(entries.iter().map(|(k, _)| k)) {
                prop_assert_eq!(node.search(&NoPages, key).expect("search"), checked_search(&node, key));
            }
            for i in 0..node.count() {
                let cell = node.leaf_cell(i).expect("cell");
                let ValueLoc::Inline { start, end } = cell.value else {
                    return Err(TestCaseError::fail("inline value expected"));
                };
                let want = (cell.key.local_start, start, end);
                prop_assert_eq!(node.inline_entry(i), Some(want));
            }
        }

        /// On damaged cells the fast paths never answer differently from
        /// the checked path: they defer to it (`None`) or agree with it.
        #[test]
        fn fast_paths_never_contradict_checks_on_damaged_cells(
            keys in prop::collection::btree_set(key_gen(), 1..40),
            damage in prop::collection::vec((any::<u16>(), any::<u8>()), 1..12),
            search in key_gen(),
        ) {
            let geo = Geometry::new(PAGE_LEN).expect("geometry");
            let entries: Vec<_> = keys.into_iter().map(|k| (k, vec![7u8; 3])).collect();
            let mut page = leaf(&entries, &geo);
            let content = usize::from(u16::from_le_bytes([page[OFF_CONTENT], page[OFF_CONTENT + 1]]));
            for (at, byte) in damage {
                // Damage the slot array and the cells, not the header.
                let at = LEAF_HEADER_BYTES + usize::from(at) % (PAGE_LEN - LEAF_HEADER_BYTES);
                if at >= LEAF_HEADER_BYTES + entries.len() * SLOT_BYTES && at < content {
                    continue;
                }
                page[at] = byte;
            }
            let node = Node::parse(&page, PageId(2), 0, &geo).expect("header intact");
            let probe = Probe {
                key: &search,
                head: key_head(&search),
                key_len_max: geo.key_inline_max.min(MAX_KEY_BYTES),
            };
            for i in 0..node.count() {
                if let Some(order) = node.probe::<{ LEAF_CELL_HEADER_BYTES + KEY_HEAD_BYTES }>(i, &probe) {
                    let stored = node.key(i).expect("the fast path only answers for well-formed keys");
                    prop_assert!(stored.overflow.is_none());
                    prop_assert_eq!(order, stored.local.cmp(&search[..]));
                }
                if let Some((key, value, end)) = node.inline_entry(i) {
                    let cell = node.leaf_cell(i).expect("the fast path only answers for well-formed cells");
                    prop_assert_eq!(cell.key.local_start, key);
                    prop_assert_eq!(cell.value, ValueLoc::Inline { start: value, end });
                }
            }
        }
    }
}

#[cfg(test)]
mod hole_tests {
    //! Inserts that reuse a hole left by removed cells instead of
    //! compacting the page, against a model of the leaf's entries.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::btree::cell::{leaf_cell_vec, KeySpec, ValueSpec};

    const PAGE_LEN: usize = 1024;
    const ID: PageId = PageId(2);

    fn cell(geo: &Geometry, key: &[u8], value: &[u8]) -> Vec<u8> {
        leaf_cell_vec(
            &KeySpec::with_chain(geo, key, None),
            &ValueSpec::Inline(value),
        )
    }

    /// The leaf's entries, in slot order.
    fn entries(page: &[u8], geo: &Geometry) -> Vec<(Vec<u8>, Vec<u8>)> {
        let node = Node::parse(page, ID, 0, geo).expect("parse");
        (0..node.count())
            .map(|i| {
                let c = node.leaf_cell(i).expect("cell");
                let ValueLoc::Inline { start, end } = c.value else {
                    panic!("inline value expected");
                };
                (c.key.local.to_vec(), page[start..end].to_vec())
            })
            .collect()
    }

    /// Whether `old` and `new` agree outside the ranges `written` noted.
    fn equal_outside(old: &[u8], new: &[u8], written: &WrittenRanges) -> bool {
        let Some(ranges) = written.ranges() else {
            return true;
        };
        let mut covered = vec![false; old.len()];
        for r in ranges {
            covered[r].iter_mut().for_each(|c| *c = true);
        }
        (0..old.len()).all(|i| covered[i] || old[i] == new[i])
    }

    #[test]
    fn a_full_gap_reuses_a_removed_cells_hole_without_compacting() {
        let geo = Geometry::new(PAGE_LEN).expect("geometry");
        let mut page = vec![0u8; PAGE_LEN];
        let mut node = NodeMut::init(&mut page, ID, 0, &geo).expect("init");
        let mut n = 0u8;
        while node
            .insert_cell(usize::from(n), &cell(&geo, &[b'k', n], &[n; 60]))
            .expect("insert")
        {
            n += 1;
        }
        assert!(n > 4, "{n} cells fit");
        // A middle cell's bytes become a hole (it does not border the gap).
        node.remove_cells(2..3).expect("remove");
        let before = node.view();
        let (content, frag) = (before.content_start(), before.frag());
        assert!(frag > 0);
        let others: Vec<usize> = (0..before.count())
            .map(|i| before.cell_off(i).expect("slot"))
            .collect();
        let old = page.clone();
        let mut written = WrittenRanges::default();
        let mut node =
            NodeMut::open_noted((&mut page, Some(&mut written)), ID, 0, &geo).expect("open");
        assert!(node
            .insert_cell(2, &cell(&geo, &[b'k', 2], &[9; 60]))
            .expect("insert"));
        let after = node.view();
        assert_eq!(after.content_start(), content, "no compaction");
        assert_eq!(after.frag(), frag - cell(&geo, &[b'k', 2], &[9; 60]).len());
        assert!(after.layout_is_consistent());
        let moved: Vec<usize> = (0..after.count())
            .filter(|&i| i != 2)
            .map(|i| after.cell_off(i).expect("slot"))
            .collect();
        assert_eq!(moved, others, "the other cells stay where they were");
        let noted: usize = written.ranges().expect("noted").map(|r| r.len()).sum();
        assert!(noted < 200, "{noted} bytes noted");
        assert!(equal_outside(&old, &page, &written));
        assert_eq!(entries(&page, &geo)[2], (vec![b'k', 2], vec![9; 60]));
    }

    /// The hole [`Node::hole_for`] must find, by the first method: the
    /// cells sorted by offset, the gaps between them in order.
    fn hole_for_sorted(node: &Node<'_>, size: usize) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        let mut free_from = node.content_start();
        let len = node.bytes().len();
        let spans = node.cell_spans().expect("spans");
        for (off, cell_size) in spans.into_iter().chain([(len, 0)]) {
            let hole = off - free_from;
            if hole >= size && best.is_none_or(|(smallest, _)| hole < smallest) {
                best = Some((hole, off - size));
            }
            free_from = off + cell_size;
        }
        best.map(|(_, start)| start)
    }

    #[test]
    fn bitmap_helpers_find_runs_across_words() {
        let mut bits = [0u64; 3];
        assert!(mark_clear_bits(&mut bits, 60, 130));
        assert!(!mark_clear_bits(&mut bits, 129, 131), "overlap");
        assert_eq!(next_bit(&bits, 0, true), Some(60));
        assert_eq!(next_bit(&bits, 60, false), Some(130));
        assert_eq!(next_bit(&bits, 0, false), Some(0));
        assert_eq!(next_bit(&bits, 131, true), None);
        assert!(mark_clear_bits(&mut bits, 131, 192));
        assert_eq!(next_bit(&bits, 61, false), Some(130));
        assert_eq!(next_bit(&bits, 131, false), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, usize),
        Remove(u8),
    }

    fn op_gen() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<u8>(), 0usize..120).prop_map(|(k, n)| Op::Insert(k, n)),
            2 => any::<u8>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Inserts and removals on one leaf keep its entries equal to a
        /// model's, its layout consistent, and every change inside the
        /// noted ranges, hole or no hole.
        #[test]
        fn edits_match_a_model_and_stay_inside_the_noted_ranges(
            ops in prop::collection::vec(op_gen(), 1..200),
        ) {
            let geo = Geometry::new(PAGE_LEN).expect("geometry");
            let mut page = vec![0u8; PAGE_LEN];
            NodeMut::init(&mut page, ID, 0, &geo).expect("init");
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for op in ops {
                let old = page.clone();
                let mut written = WrittenRanges::default();
                let mut node = NodeMut::open_noted((&mut page, Some(&mut written)), ID, 0, &geo)
                    .expect("open");
                match op {
                    Op::Insert(k, n) => {
                        let key = vec![k];
                        if model.contains_key(&key) {
                            continue;
                        }
                        let value = vec![k ^ 0x5a; n];
                        let idx = model.range(..key.clone()).count();
                        if node.insert_cell(idx, &cell(&geo, &key, &value)).expect("insert") {
                            model.insert(key, value);
                        } else {
                            prop_assert_eq!(&page, &old, "a refused insert changes nothing");
                        }
                    }
                    Op::Remove(k) => {
                        let key = vec![k];
                        if model.remove(&key).is_none() {
                            continue;
                        }
                        let idx = model.range(..key).count();
                        node.remove_cells(idx..idx + 1).expect("remove");
                    }
                }
                let node = Node::parse(&page, ID, 0, &geo).expect("parse");
                prop_assert!(node.layout_is_consistent());
                for size in [1, 9, 40, 70, 130, 400] {
                    prop_assert_eq!(
                        node.hole_for(size).expect("holes"),
                        hole_for_sorted(&node, size),
                        "hole for {} bytes", size
                    );
                }
                prop_assert!(equal_outside(&old, &page, &written));
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(entries(&page, &geo), want);
            }
        }
    }
}

#[cfg(test)]
mod branch_index_tests {
    //! [`BranchIndex::child_pos`] (the summary and block search over the
    //! separators' heads) against the simplest model: the number of
    //! separators `<=` the key, counted one by one.

    use proptest::prelude::*;

    use super::*;
    use crate::btree::cell::{branch_cell_vec, KeySpec};

    const PAGE_LEN: usize = 4080;
    const ID: PageId = PageId(3);

    /// A branch page holding `separators` (sorted, distinct) in order,
    /// with children `100, 101, ...`; the separators that fit.
    fn branch(separators: &[Vec<u8>], geo: &Geometry) -> (Vec<u8>, usize) {
        let mut page = vec![0u8; PAGE_LEN];
        let mut node = NodeMut::init(&mut page, ID, 1, geo).expect("init");
        node.set_leftmost(PageId(100));
        let mut kept = 0;
        for (i, key) in separators.iter().enumerate() {
            let child = PageId(101 + i as u64);
            let cell = branch_cell_vec(&KeySpec::with_chain(geo, key, None), child);
            if !node.insert_cell(i, &cell).expect("insert") {
                break;
            }
            kept += 1;
        }
        (page, kept)
    }

    /// Separators that share a common prefix (of `prefix` bytes), with
    /// bodies from a small alphabet, so that many share their 8-byte head
    /// after the prefix, some are prefixes of others, and runs of equal
    /// heads fall across block boundaries.
    fn separators() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let body = prop::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xff)], 0..11);
        (
            prop::collection::vec(any::<u8>(), 0..5),
            prop::collection::btree_set(body, 1..320),
        )
            .prop_map(|(prefix, bodies)| {
                bodies
                    .into_iter()
                    .map(|b| [&prefix[..], &b[..]].concat())
                    .collect()
            })
    }

    /// The model: separators `<= key`.
    fn linear_child_pos(separators: &[Vec<u8>], key: &[u8]) -> usize {
        separators.iter().filter(|s| s.as_slice() <= key).count()
    }

    proptest! {
        #[test]
        fn child_pos_matches_a_linear_count_of_the_separators(
            separators in separators(),
            probes in prop::collection::vec(prop::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(2), Just(0xff), any::<u8>()], 0..16), 0..40),
        ) {
            let geo = Geometry::new(PAGE_LEN).expect("geometry");
            let (page, kept) = branch(&separators, &geo);
            let separators = &separators[..kept];
            let node = Node::parse(&page, ID, 1, &geo).expect("parse");
            let index = BranchIndex::build(&node).expect("an index of a well-formed page");
            prop_assert_eq!(index.count(), kept);
            let mut tries = probes;
            for sep in separators {
                let mut above = sep.clone();
                above.push(0);
                let mut bumped = sep.clone();
                if let Some(last) = bumped.last_mut() {
                    *last = last.wrapping_add(1);
                }
                tries.extend([
                    sep.clone(),
                    above,
                    bumped,
                    sep[..sep.len().saturating_sub(1)].to_vec(),
                ]);
            }
            for key in &tries {
                let want = linear_child_pos(separators, key);
                prop_assert_eq!(index.child_pos(&page, key), want, "key {:?}", key);
                prop_assert_eq!(index.child(want), Some(PageId(100 + want as u64)));
            }
        }
    }

    #[test]
    fn summaries_cover_every_head_in_at_most_their_entries() {
        for count in [0usize, 1, 7, 8, 9, 120, 128, 129, 300, 1000] {
            let heads: Vec<u64> = (0..count as u64).map(|h| h * 3).collect();
            let (stride, summary) = BranchIndex::summarize(&heads);
            assert!(stride >= BRANCH_BLOCK_HEADS);
            assert!(stride * BRANCH_SUMMARY_HEADS >= count, "{count} heads");
            for (j, &first) in summary.iter().enumerate() {
                let want = heads.get(j * stride).copied().unwrap_or(u64::MAX);
                assert_eq!(first, want, "{count} heads, entry {j}");
            }
        }
    }
}
