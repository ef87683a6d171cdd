//! Reading: point lookups and ordered iteration in both directions.
//!
//! A cursor is the path of (page, index) frames from the root to a leaf; it
//! moves to a neighbouring leaf through its parents, so pages carry no
//! sibling links. A range holds a front and a back cursor and ends when they
//! meet, so iterating compares no keys after the initial seeks (a range
//! with no end bound seeks its back cursor only when it is first stepped
//! from the back; until then the front ends where the tree ends).
//!
//! Iteration lends entries: a cursor moves past the entry it yielded only
//! at the start of the next step, so [`RangeIter::next_entry`] can hand out
//! slices of the pinned leaf with no per-entry allocation or reference
//! count. Each frame caches its page's cell count, read when the page was
//! validated on the way down. A range opened through a read-only table's
//! branch cache ([`UpperPages`]) shares that cache: its frames of kept
//! branch pages hold no page reference (moving to the next leaf looks the
//! page up again there), so a seek counts a reference on the leaf only.

use std::ops::{Bound, Deref, RangeBounds};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use mmsb_wal::PageId;

use super::format::{read_page, Geometry};
use super::insert::load_value;
use super::keys::{cmp_key, load_key};
use super::node::{BranchIndex, KeyRef, Node, ValueLoc};
use super::overflow::read_chain;
use super::TreeHeader;
use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageRef};

/// Bytes of a key or value: a view into a page (no copy) for data stored in
/// the page, owned bytes for data read from overflow pages.
#[derive(Clone)]
pub struct PageSlice {
    repr: SliceRepr,
}

#[derive(Clone)]
enum SliceRepr {
    Page {
        page: PageRef,
        start: usize,
        end: usize,
    },
    Owned(Vec<u8>),
}

impl PageSlice {
    /// A view of `page[start..end]`; the range must lie in the page.
    fn in_page(page: PageRef, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= page.len());
        PageSlice {
            repr: SliceRepr::Page { page, start, end },
        }
    }

    fn owned(bytes: Vec<u8>) -> Self {
        PageSlice {
            repr: SliceRepr::Owned(bytes),
        }
    }

    /// Whether the bytes are borrowed from a page (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.repr, SliceRepr::Page { .. })
    }

    /// The bytes as an owned vector (copies only borrowed bytes).
    pub fn into_vec(self) -> Vec<u8> {
        match self.repr {
            SliceRepr::Page { page, start, end } => page[start..end].to_vec(),
            SliceRepr::Owned(v) => v,
        }
    }
}

impl Deref for PageSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            SliceRepr::Page { page, start, end } => &page[*start..*end],
            SliceRepr::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for PageSlice {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for PageSlice {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for PageSlice {}

impl PartialEq<[u8]> for PageSlice {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for PageSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSlice")
            .field("len", &self.len())
            .field("borrowed", &self.is_borrowed())
            .finish()
    }
}

/// A key returned by the tree.
pub type KeyGuard = PageSlice;
/// A value returned by the tree.
pub type ValueGuard = PageSlice;

/// The key of a cell in `page` as a guard.
fn key_guard<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    page: &PageRef,
    key: &KeyRef<'_>,
) -> Result<KeyGuard> {
    if key.overflow.is_some() {
        return Ok(PageSlice::owned(load_key(pages, geo, key)?));
    }
    let start = key.local_start;
    Ok(PageSlice::in_page(page.clone(), start, start + key.len))
}

/// The value of a cell in `page` as a guard.
fn value_guard<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    page: &PageRef,
    loc: ValueLoc,
) -> Result<ValueGuard> {
    match loc {
        ValueLoc::Inline { start, end } => Ok(PageSlice::in_page(page.clone(), start, end)),
        ValueLoc::Overflow { .. } => Ok(PageSlice::owned(load_value(pages, geo, page, loc)?)),
    }
}

/// See [`super::get`].
pub(crate) fn get<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    key: &[u8],
) -> Result<Option<ValueGuard>> {
    get_from(pages, header, None, key)
}

/// [`get`] reading the tree's branch pages through `upper` (a cache of
/// one snapshot's branch pages, see [`UpperPages`]): only the leaf comes
/// from `pages`.
pub(crate) fn get_cached<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    upper: &UpperPages,
    key: &[u8],
) -> Result<Option<ValueGuard>> {
    get_from(pages, header, Some(upper), key)
}

/// The descent of [`get`]; branch pages come from `upper` when given.
fn get_from<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    upper: Option<&UpperPages>,
    key: &[u8],
) -> Result<Option<ValueGuard>> {
    if header.is_empty() {
        header.validate()?;
        return Ok(None);
    }
    let geo = match upper {
        Some(upper) => upper.checked(pages, header)?,
        None => {
            header.validate()?;
            Geometry::new(pages.page_len())?
        }
    };
    let id = leaf_for(pages, header, upper, &geo, key)?;
    let page = read_page(pages, id)?;
    let Some(loc) = find_in_leaf(pages, &page, id, &geo, key)? else {
        return Ok(None);
    };
    match loc {
        // The guard takes the leaf over: no second reference count.
        ValueLoc::Inline { start, end } => Ok(Some(PageSlice::in_page(page, start, end))),
        ValueLoc::Overflow { .. } => value_guard(pages, &geo, &page, loc).map(Some),
    }
}

/// [`get_cached`] lending the value to `lend` instead of returning a
/// guard: the leaf is read through [`PageRead::with_page`] (for a
/// snapshot's reader, borrowed from the page table's head directory under
/// one reclamation pin, with no reference count change, when the page has
/// one version in memory), and an inline value is lent straight from it.
/// An overflow value is read after the leaf is released and lent from a
/// buffer. `lend` runs inside the leaf's borrow: it must be short. (A key
/// too long for its cell is compared through its overflow pages inside
/// the borrow: rare, and only delays reclamation while it reads.)
pub(crate) fn get_with<P: PageRead, R>(
    pages: &P,
    header: &TreeHeader,
    upper: &UpperPages,
    key: &[u8],
    lend: impl FnOnce(&[u8]) -> R,
) -> Result<Option<R>> {
    if header.is_empty() {
        header.validate()?;
        return Ok(None);
    }
    let geo = upper.checked(pages, header)?;
    let id = leaf_for(pages, header, Some(upper), &geo, key)?;
    let lent = pages.with_page(id, |leaf| -> Result<Option<_>> {
        let Some(loc) = find_in_leaf(pages, leaf, id, &geo, key)? else {
            return Ok(None);
        };
        Ok(Some(match loc {
            ValueLoc::Inline { start, end } => {
                let value = leaf
                    .get(start..end)
                    .ok_or_else(|| super::format::corrupt(id, "value past the page"))?;
                Ok(lend(value))
            }
            // Lent after the borrow ends: reading the chain may block.
            ValueLoc::Overflow { first, len } => Err((lend, first, len)),
        }))
    });
    // As `read_page` reports it: the id came from a branch page.
    let lent = lent.map_err(|e| match e {
        Error::PageOutOfRange(id) => {
            super::format::corrupt(id, "referenced page is not a data page")
        }
        e => e,
    })??;
    match lent {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err((lend, first, len))) => {
            let mut value = Vec::new();
            read_chain(pages, &geo, first, len, &mut value)?;
            Ok(Some(lend(&value)))
        }
    }
}

/// The leaf `key` lives in (or would go to) in the non-empty tree
/// `header`; branch pages come from `upper` when given.
#[inline]
fn leaf_for<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    upper: Option<&UpperPages>,
    geo: &Geometry,
    key: &[u8],
) -> Result<PageId> {
    debug_assert!(!header.is_empty());
    let mut id = header.root;
    let mut level = header.height - 1;
    while level > 0 {
        let page = branch_page(pages, upper, id, level, geo)?;
        id = page.descend_for(pages, id, level, geo, key)?.2;
        level -= 1;
    }
    Ok(id)
}

/// Where `key`'s value lies in leaf `id` (bytes `leaf`), `None` when the
/// leaf holds no such key.
#[inline]
fn find_in_leaf<P: PageRead>(
    pages: &P,
    leaf: &[u8],
    id: PageId,
    geo: &Geometry,
    key: &[u8],
) -> Result<Option<ValueLoc>> {
    let node = Node::parse(leaf, id, 0, geo)?;
    // Leaves are mostly cold: overlap the binary search's misses.
    node.prefetch_cells();
    let (found, idx) = node.search(pages, key)?;
    if !found {
        return Ok(None);
    }
    match node.inline_entry(idx) {
        Some((_, start, end)) => Ok(Some(ValueLoc::Inline { start, end })),
        None => node.leaf_cell(idx).map(|cell| Some(cell.value)),
    }
}

/// Branch page `id` at `level`: from `upper` when given (read into it on
/// a miss).
fn branch_page<'u, P: PageRead>(
    pages: &P,
    upper: Option<&'u UpperPages>,
    id: PageId,
    level: u8,
    geo: &Geometry,
) -> Result<Held<'u>> {
    match upper {
        Some(upper) => upper.get_or_read(pages, id, level, geo),
        None => read_page(pages, id).map(Held::Read),
    }
}

/// Most bytes one [`UpperPages`] keeps: branch page images plus their
/// [`BranchIndex`]es: every branch page of a tree of about a million
/// entries of ~200 bytes on 4 KiB pages (some 1 000 pages of ~6 KiB each).
pub(crate) const UPPER_PAGES_BYTES_MAX: usize = 8 << 20;
/// Pages the first tier of an [`UpperPages`] keeps: the upper levels of any
/// tree and every branch page of a small one, in a table small enough to
/// allocate for a short-lived handle. The second tier, sized for
/// [`UPPER_PAGES_BYTES_MAX`], is allocated only once the first is full.
const UPPER_FIRST_TIER_PAGES: usize = 64;
/// Slots of a tier per page it may keep (so at most half of the slots
/// fill and probe sequences stay short).
const UPPER_SLOTS_PER_PAGE: usize = 2;
/// Slots a lookup or insertion probes in one tier before it gives up.
const UPPER_PROBES_MAX: usize = 8;

/// The branch pages (root included) of one tree as of one snapshot, kept
/// by a read-only table handle so that its lookups read only the leaf
/// through the page table: a hit costs a hash and a load, with no lock,
/// no reference count change and no header check (a page is kept only
/// once [`Node::parse`] accepted it at its level), and touches no cache
/// line another thread writes. Each kept page carries its
/// [`BranchIndex`], so a descent through it binary-searches a dense array
/// of key heads instead of the page's slots and cells.
///
/// Correctness: a page image read at a snapshot never changes, and the
/// cache lives no longer than the handle of that snapshot, so a kept page
/// is exactly what a read through the page table would return, whatever
/// the page table evicts, reloads or folds meanwhile (the cache holds its
/// own reference to the image, so eviction cannot free it).
///
/// Memory: at most about [`UPPER_PAGES_BYTES_MAX`] of page images and
/// indexes (the images shared with the page table while it keeps them;
/// not charged to the memory budget, like any page a reader holds). Two
/// tiers of open-addressed tables of write-once slots: entries are never
/// removed or replaced, so lookups need no lock. A page goes to the first
/// tier until it is full, then to the second; once the byte limit is
/// reached, further branch pages are read through the page table.
#[derive(Debug, Default)]
pub(crate) struct UpperPages {
    tiers: [Tier; 2],
    /// The root and height of the tree header the cache's lookups
    /// validated, and the geometry of its pages: later lookups of that tree
    /// skip both checks (a snapshot's header and page length never change).
    checked: OnceLock<(PageId, u8, Geometry)>,
    /// Bytes kept (images, indexes and their boxes), at most about
    /// [`UPPER_PAGES_BYTES_MAX`] (concurrent insertions may pass it by a
    /// page each).
    bytes: AtomicUsize,
}

/// One open-addressed table of an [`UpperPages`].
#[derive(Debug, Default)]
struct Tier {
    /// Created on the first insertion; its length is a power of two.
    slots: OnceLock<Box<[OnceLock<Kept>]>>,
    /// Slots filled.
    kept: AtomicUsize,
}

/// A slot of a [`Tier`]: the page id and the kept page inline, so a hit
/// reads the index's prefix and array pointers from the line the probe
/// already brought in (a box here cost one more cache miss per level).
#[derive(Debug)]
struct Kept {
    id: PageId,
    page: KeptPage,
}

/// A page an [`UpperPages`] keeps.
#[derive(Debug)]
pub(crate) struct KeptPage {
    /// The level [`Node::parse`] accepted the page at.
    level: u8,
    page: PageRef,
    /// `None` when the page has overflowed keys (searched in the page).
    index: Option<BranchIndex>,
}

impl KeptPage {
    /// Bytes an [`UpperPages`] charges for this page.
    fn charge(&self) -> usize {
        std::mem::size_of::<KeptPage>()
            + self.page.len()
            + self.index.as_ref().map_or(0, BranchIndex::heap_bytes)
    }
}

impl Kept {
    /// The kept page, as validated when asked for at its own level.
    fn held(&self, level: u8) -> Held<'_> {
        if self.page.level == level {
            Held::Cached(&self.page)
        } else {
            Held::Read(self.page.page.clone())
        }
    }
}

/// What one tier's probe sequence found for a page id.
enum Probed<'t> {
    /// The page is kept in this tier.
    Found(&'t Kept),
    /// Not kept in this tier; this empty slot ends its probe sequence.
    Empty(&'t OnceLock<Kept>),
    /// Not found within [`UPPER_PROBES_MAX`] probes, or the tier was never
    /// allocated.
    Missing,
}

impl Tier {
    /// Probes for `id` (slots fill in probe order, so the first empty slot
    /// means `id` is not kept here).
    fn probe(&self, id: PageId) -> Probed<'_> {
        let Some(slots) = self.slots.get() else {
            return Probed::Missing;
        };
        let mask = slots.len() - 1;
        let home = (id.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        for probe in 0..UPPER_PROBES_MAX {
            let slot = &slots[(home + probe) & mask];
            match slot.get() {
                Some(kept) if kept.id == id => return Probed::Found(kept),
                Some(_) => {}
                None => return Probed::Empty(slot),
            }
        }
        Probed::Missing
    }

    /// The slots, allocated for `pages` pages on the first call.
    fn slots(&self, pages: usize) -> &[OnceLock<Kept>] {
        self.slots.get_or_init(|| {
            let len = (pages.max(1) * UPPER_SLOTS_PER_PAGE).next_power_of_two();
            (0..len).map(|_| OnceLock::new()).collect()
        })
    }
}

/// A branch page either borrowed from an [`UpperPages`] (validated at the
/// level it was asked for, with its index) or read for this use (not
/// validated).
pub(crate) enum Held<'u> {
    /// Kept by the cache, validated at the level asked for.
    Cached(&'u KeptPage),
    /// Read through the page table (not kept, or kept at another level).
    Read(PageRef),
}

impl Deref for Held<'_> {
    type Target = PageRef;
    fn deref(&self) -> &PageRef {
        match self {
            Held::Cached(kept) => &kept.page,
            Held::Read(page) => page,
        }
    }
}

impl Held<'_> {
    /// What a cursor frame keeps of the page: nothing when the cache keeps
    /// it at this level (the frame looks it up again there), else the
    /// page itself.
    fn frame_page(self) -> FramePage {
        match self {
            Held::Cached(_) => FramePage::Kept,
            Held::Read(page) => FramePage::Held(page),
        }
    }

    /// Of branch page `id` at `level`: its separator count and the child at
    /// `pos` (`usize::MAX`: the last), through the page's index when it
    /// has one.
    fn child_at(
        &self,
        id: PageId,
        level: u8,
        geo: &Geometry,
        pos: usize,
    ) -> Result<(usize, usize, PageId)> {
        if let Held::Cached(KeptPage {
            index: Some(index), ..
        }) = self
        {
            let pos = pos.min(index.count());
            let child = index
                .child(pos)
                .ok_or_else(|| super::format::corrupt(id, "branch index out of step"))?;
            return Ok((pos, index.count(), child));
        }
        let node = self.node(id, level, geo)?;
        let pos = pos.min(node.count());
        Ok((pos, node.count(), node.child(pos)?))
    }

    /// The page as the node `id` at `level`: re-opened without checks
    /// when the cache validated it so, else parsed.
    fn node<'g>(&'g self, id: PageId, level: u8, geo: &'g Geometry) -> Result<Node<'g>> {
        match self {
            Held::Cached(kept) => Ok(Node::reopen(&kept.page, id, level, geo)),
            Held::Read(page) => Node::parse(page, id, level, geo),
        }
    }

    /// For branch page `id` at `level`: the position of the child `key`
    /// lives under (the number of separators `<= key`), the number of
    /// separators and that child, through the page's index when it has one.
    fn descend_for<P: PageRead>(
        &self,
        pages: &P,
        id: PageId,
        level: u8,
        geo: &Geometry,
        key: &[u8],
    ) -> Result<(usize, usize, PageId)> {
        if let Held::Cached(KeptPage {
            page,
            index: Some(index),
            ..
        }) = self
        {
            let pos = index.child_pos(page, key);
            let child = index
                .child(pos)
                .ok_or_else(|| super::format::corrupt(id, "branch index out of step"))?;
            return Ok((pos, index.count(), child));
        }
        let node = self.node(id, level, geo)?;
        let pos = node.child_pos_for(pages, key)?;
        Ok((pos, node.count(), node.child(pos)?))
    }
}

impl UpperPages {
    /// An empty cache (allocates nothing until used).
    pub(crate) fn new() -> Self {
        UpperPages::default()
    }

    /// Validates `header` (non-empty) and returns the geometry of `pages`,
    /// once per cache: later calls for the same root, height and page
    /// length (all a descent uses) return the recorded geometry unchecked.
    #[inline]
    fn checked<P: PageRead>(&self, pages: &P, header: &TreeHeader) -> Result<Geometry> {
        if let Some(&(root, height, geo)) = self.checked.get() {
            if root == header.root && height == header.height && geo.page_len == pages.page_len() {
                debug_assert!(header.validate().is_ok());
                return Ok(geo);
            }
        }
        header.validate()?;
        let geo = Geometry::new(pages.page_len())?;
        // Another thread may have recorded the same tree first.
        let _ = self.checked.set((header.root, header.height, geo));
        Ok(geo)
    }

    /// Whether pages went to the second tier (the first is full).
    #[cfg(test)]
    pub(crate) fn spilled(&self) -> bool {
        self.tiers[1].kept.load(Ordering::Relaxed) > 0
    }

    /// Pages tier `tier` may keep for `page_len`-byte pages.
    fn tier_pages(tier: usize, page_len: usize) -> usize {
        let all = (UPPER_PAGES_BYTES_MAX / page_len.max(1)).max(1);
        let first = all.min(UPPER_FIRST_TIER_PAGES);
        if tier == 0 {
            first
        } else {
            all - first
        }
    }

    /// Whether tier `t` is still unallocated and may be allocated now: it is
    /// the first, or the one before it is full.
    fn may_open(&self, t: usize, page_len: usize) -> bool {
        self.tiers[t].slots.get().is_none()
            && (t == 0
                || self.tiers[t - 1].kept.load(Ordering::Relaxed)
                    >= Self::tier_pages(t - 1, page_len))
    }

    /// Whether the byte limit stops further pages from being kept.
    fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= UPPER_PAGES_BYTES_MAX
    }

    /// Branch page `id` at `level`: from the cache, else read through
    /// `pages` and kept when there is room and it parses at `level`.
    pub(crate) fn get_or_read<P: PageRead>(
        &self,
        pages: &P,
        id: PageId,
        level: u8,
        geo: &Geometry,
    ) -> Result<Held<'_>> {
        // The hot path: a hit in either tier.
        for tier in &self.tiers {
            if let Probed::Found(kept) = tier.probe(id) {
                return Ok(kept.held(level));
            }
        }
        self.keep_or_read(pages, id, level, geo)
    }

    /// [`UpperPages::get_or_read`] after a miss: reads the page and keeps
    /// it in the first tier with room (probing again: another thread may
    /// have kept it meanwhile).
    fn keep_or_read<P: PageRead>(
        &self,
        pages: &P,
        id: PageId,
        level: u8,
        geo: &Geometry,
    ) -> Result<Held<'_>> {
        for (t, tier) in self.tiers.iter().enumerate() {
            let capacity = Self::tier_pages(t, geo.page_len);
            let probed = match tier.probe(id) {
                // A tier is allocated once the one before it is full.
                Probed::Missing if capacity > 0 && self.may_open(t, geo.page_len) => {
                    tier.slots(capacity);
                    tier.probe(id)
                }
                probed => probed,
            };
            let slot = match probed {
                Probed::Found(kept) => return Ok(kept.held(level)),
                Probed::Missing => continue,
                Probed::Empty(slot) => slot,
            };
            if tier.kept.load(Ordering::Relaxed) >= capacity {
                // This tier is full: the page may be (or go) in the next.
                continue;
            }
            let page = read_page(pages, id)?;
            if self.is_full() {
                return Ok(Held::Read(page));
            }
            let Ok(node) = Node::parse(&page, id, level, geo) else {
                return Ok(Held::Read(page));
            };
            let index = BranchIndex::build(&node);
            let kept = KeptPage {
                level,
                page: page.clone(),
                index,
            };
            let charge = kept.charge();
            match slot.set(Kept { id, page: kept }) {
                Ok(()) => {
                    tier.kept.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(charge, Ordering::Relaxed);
                }
                // Another thread filled the slot first: this use reads.
                Err(_) => return Ok(Held::Read(page)),
            }
            return match slot.get() {
                Some(kept) if kept.id == id => Ok(kept.held(level)),
                _ => Ok(Held::Read(page)),
            };
        }
        read_page(pages, id).map(Held::Read)
    }
}

/// One level of a cursor's path.
struct Frame {
    id: PageId,
    page: FramePage,
    /// Branch: child position in `0..=count`. Leaf: see [`Cursor`].
    idx: usize,
    /// Cells of the page, read when the page was validated on the way down.
    count: usize,
}

/// Where a frame's page is: a seek through an [`UpperPages`] takes no
/// reference to the branch pages it keeps (a reference count change on
/// an image every reader shares, twice per level and range).
enum FramePage {
    /// Held by the frame: a leaf, or a branch page the cache does not keep.
    Held(PageRef),
    /// A branch page the walker's [`UpperPages`] keeps at the frame's
    /// level (validated there; looked up again when the cursor moves).
    Kept,
}

impl Frame {
    /// The page's bytes when the frame holds them (always for a leaf).
    #[inline]
    fn held(&self) -> Option<&PageRef> {
        match &self.page {
            FramePage::Held(page) => Some(page),
            FramePage::Kept => None,
        }
    }
}

/// A path from the root to a leaf. A front cursor's leaf index is the next
/// entry to yield; a back cursor's leaf index is one past it.
struct Cursor {
    path: Vec<Frame>,
}

/// Which end of a subtree to descend to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    First,
    Last,
}

/// Where one part (key or value) of a borrowed entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// `leaf[start..end]`: stored in the leaf page.
    Page { start: usize, end: usize },
    /// In the iterator's scratch buffer for the part (read from overflow pages).
    Scratch,
}

impl Part {
    fn resolve<'b>(self, leaf: &'b [u8], scratch: &'b [u8]) -> &'b [u8] {
        match self {
            // `leaf_cell` checked the range lies in the page.
            Part::Page { start, end } => leaf.get(start..end).unwrap_or_default(),
            Part::Scratch => scratch,
        }
    }
}

struct Walker<'a, P: PageRead> {
    pages: &'a P,
    geo: Geometry,
    height: u8,
    /// The snapshot's branch pages (see [`UpperPages`]), when the range
    /// was opened through a read-only table's cache: seeks and moves
    /// between leaves read branch pages there.
    upper: Option<Arc<UpperPages>>,
}

impl<P: PageRead> Walker<'_, P> {
    fn level_of(&self, depth: usize) -> u8 {
        // Paths never hold more frames than the tree has levels.
        self.height - 1 - depth as u8
    }

    /// Branch page `id` at `level`, through the cache when the walker has one.
    fn branch(&self, id: PageId, level: u8) -> Result<Held<'_>> {
        branch_page(self.pages, self.upper.as_deref(), id, level, &self.geo)
    }

    /// The child at position `pos` of a branch frame at `depth`: from the
    /// frame's page, or from the cache that keeps it.
    fn child_of(&self, frame: &Frame, depth: usize, pos: usize) -> Result<PageId> {
        let level = self.level_of(depth);
        match &frame.page {
            // Validated when the frame was pushed; images never change.
            FramePage::Held(page) => Node::reopen(page, frame.id, level, &self.geo).child(pos),
            FramePage::Kept => {
                let held = self.branch(frame.id, level)?;
                let (at, _, child) = held.child_at(frame.id, level, &self.geo, pos)?;
                if at != pos {
                    return Err(super::format::corrupt(frame.id, "cursor outside its page"));
                }
                Ok(child)
            }
        }
    }

    /// Reads and validates leaf `id`; returns its frame at `idx` (chosen
    /// from the node by `pick`).
    fn leaf_frame(
        &self,
        id: PageId,
        pick: impl FnOnce(&Node<'_>) -> Result<usize>,
    ) -> Result<Frame> {
        let page = read_page(self.pages, id)?;
        let (idx, count) = {
            let node = Node::parse(&page, id, 0, &self.geo)?;
            // Leaves are mostly cold: overlap the search's misses.
            node.prefetch_cells();
            (pick(&node)?, node.count())
        };
        debug_assert!(idx <= count);
        Ok(Frame {
            id,
            page: FramePage::Held(page),
            idx,
            count,
        })
    }

    /// The frame of branch page `id` at `level` positioned at its first or
    /// last child, and that child.
    fn branch_frame_at_edge(&self, id: PageId, level: u8, edge: Edge) -> Result<(Frame, PageId)> {
        let pos = match edge {
            Edge::First => 0,
            Edge::Last => usize::MAX,
        };
        self.branch_frame(id, level, |held| held.child_at(id, level, &self.geo, pos))
    }

    /// The frame of branch page `id` at `level` on the way to `key`, and the
    /// child to descend into (through the page's index when the cache
    /// keeps it).
    fn branch_frame_for(&self, id: PageId, level: u8, key: &[u8]) -> Result<(Frame, PageId)> {
        self.branch_frame(id, level, |held| {
            held.descend_for(self.pages, id, level, &self.geo, key)
        })
    }

    /// The frame of branch page `id` at `level` at the child `pick` chooses
    /// (its position, the page's cell count and its id), and that child.
    fn branch_frame(
        &self,
        id: PageId,
        level: u8,
        pick: impl FnOnce(&Held<'_>) -> Result<(usize, usize, PageId)>,
    ) -> Result<(Frame, PageId)> {
        let held = self.branch(id, level)?;
        let (idx, count, child) = pick(&held)?;
        let frame = Frame {
            id,
            page: held.frame_page(),
            idx,
            count,
        };
        Ok((frame, child))
    }

    /// Pushes frames from page `id` down to a leaf, along `edge`.
    fn descend(&self, path: &mut Vec<Frame>, mut id: PageId, edge: Edge) -> Result<()> {
        loop {
            let depth = path.len();
            if depth >= usize::from(self.height) {
                return Err(super::format::corrupt(id, "path deeper than the tree"));
            }
            let level = self.level_of(depth);
            if level == 0 {
                let leaf = self.leaf_frame(id, |node| {
                    Ok(match edge {
                        Edge::First => 0,
                        Edge::Last => node.count(),
                    })
                })?;
                path.push(leaf);
                return Ok(());
            }
            let (frame, child) = self.branch_frame_at_edge(id, level, edge)?;
            path.push(frame);
            id = child;
        }
    }

    /// Moves a front cursor whose leaf index may be past its leaf's end to
    /// the next entry; `false` when there is none.
    fn settle_front(&self, path: &mut Vec<Frame>) -> Result<bool> {
        loop {
            let Some(leaf) = path.last() else {
                return Ok(false);
            };
            if leaf.idx < leaf.count {
                return Ok(true);
            }
            path.pop();
            loop {
                let depth = path.len().wrapping_sub(1);
                let Some(frame) = path.last() else {
                    return Ok(false);
                };
                if frame.idx < frame.count {
                    let child = self.child_of(frame, depth, frame.idx + 1)?;
                    if let Some(frame) = path.last_mut() {
                        frame.idx += 1;
                    }
                    self.descend(path, child, Edge::First)?;
                    break;
                }
                path.pop();
            }
        }
    }

    /// Moves a back cursor whose leaf index may be 0 to the previous entry;
    /// `false` when there is none.
    fn settle_back(&self, path: &mut Vec<Frame>) -> Result<bool> {
        loop {
            let Some(leaf) = path.last() else {
                return Ok(false);
            };
            if leaf.idx > 0 {
                return Ok(true);
            }
            path.pop();
            loop {
                let depth = path.len().wrapping_sub(1);
                let Some(frame) = path.last() else {
                    return Ok(false);
                };
                if frame.idx > 0 {
                    let child = self.child_of(frame, depth, frame.idx - 1)?;
                    if let Some(frame) = path.last_mut() {
                        frame.idx -= 1;
                    }
                    self.descend(path, child, Edge::Last)?;
                    break;
                }
                path.pop();
            }
        }
    }

    /// A cursor at the first entry within `bound` (front), or one past the
    /// last entry within it (back); `None` when there is no such entry.
    fn seek(&self, root: PageId, bound: Bound<&[u8]>, front: bool) -> Result<Option<Cursor>> {
        let mut path = Vec::with_capacity(usize::from(self.height));
        let mut id = root;
        let mut level = self.height - 1;
        while level > 0 {
            let (frame, child) = match bound {
                Bound::Included(k) | Bound::Excluded(k) => self.branch_frame_for(id, level, k)?,
                Bound::Unbounded if front => self.branch_frame_at_edge(id, level, Edge::First)?,
                Bound::Unbounded => self.branch_frame_at_edge(id, level, Edge::Last)?,
            };
            path.push(frame);
            id = child;
            level -= 1;
        }
        let leaf = self.leaf_frame(id, |node| {
            Ok(match bound {
                Bound::Unbounded if front => 0,
                Bound::Unbounded => node.count(),
                Bound::Included(k) | Bound::Excluded(k) => {
                    let (found, i) = node.search(self.pages, k)?;
                    let inclusive = matches!(bound, Bound::Included(_));
                    // See `Cursor` for the front/back index conventions.
                    if found && front != inclusive {
                        i + 1
                    } else {
                        i
                    }
                }
            })
        })?;
        path.push(leaf);
        let found = if front {
            self.settle_front(&mut path)?
        } else {
            self.settle_back(&mut path)?
        };
        Ok(found.then_some(Cursor { path }))
    }

    /// The cursor's leaf frame and its node, with `idx` checked against the
    /// leaf's cell count.
    fn leaf_at<'c>(&'c self, cursor: &'c Cursor, idx: usize) -> Result<(&'c Frame, Node<'c>)> {
        let Some(leaf) = cursor.path.last() else {
            return Err(super::format::corrupt(PageId(0), "cursor without a leaf"));
        };
        let page = match leaf.held() {
            Some(page) if idx < leaf.count => page,
            _ => return Err(super::format::corrupt(leaf.id, "cursor outside its leaf")),
        };
        // A full path ends at level 0.
        Ok((leaf, Node::reopen(page, leaf.id, 0, &self.geo)))
    }

    /// The entry at leaf index `idx` of the cursor's leaf, as guards.
    fn entry(&self, cursor: &Cursor, idx: usize) -> Result<(KeyGuard, ValueGuard)> {
        let (leaf, node) = self.leaf_at(cursor, idx)?;
        let cell = node.leaf_cell(idx)?;
        // `leaf_at` checked that the frame holds its page.
        let page = leaf
            .held()
            .ok_or_else(|| super::format::corrupt(leaf.id, "cursor outside its leaf"))?;
        let key = key_guard(self.pages, &self.geo, page, &cell.key)?;
        let value = value_guard(self.pages, &self.geo, page, cell.value)?;
        Ok((key, value))
    }

    /// The entry at leaf index `idx` of the cursor's leaf, located without
    /// copies: parts stored in overflow pages are read into `key_buf` /
    /// `value_buf`.
    fn locate(
        &self,
        cursor: &Cursor,
        idx: usize,
        key_buf: &mut Vec<u8>,
        value_buf: &mut Vec<u8>,
    ) -> Result<(Part, Part)> {
        let (_, node) = self.leaf_at(cursor, idx)?;
        let cell = node.leaf_cell(idx)?;
        let key = match cell.key.overflow {
            None => Part::Page {
                start: cell.key.local_start,
                end: cell.key.local_start + cell.key.len,
            },
            Some(first) => {
                key_buf.clear();
                key_buf.extend_from_slice(cell.key.local);
                let rest = cell.key.len - cell.key.local.len();
                read_chain(self.pages, &self.geo, first, rest, key_buf)?;
                Part::Scratch
            }
        };
        let value = match cell.value {
            ValueLoc::Inline { start, end } => Part::Page { start, end },
            ValueLoc::Overflow { first, len } => {
                value_buf.clear();
                read_chain(self.pages, &self.geo, first, len, value_buf)?;
                Part::Scratch
            }
        };
        Ok((key, value))
    }
}

impl Cursor {
    /// A cursor with no path (an empty range, or a back cursor not sought yet).
    fn unsought() -> Self {
        Cursor { path: Vec::new() }
    }

    fn leaf(&self) -> (PageId, usize) {
        self.path.last().map_or((PageId(0), 0), |f| (f.id, f.idx))
    }

    fn leaf_idx_mut(&mut self) -> Option<&mut usize> {
        self.path.last_mut().map(|f| &mut f.idx)
    }
}

/// Entries of a key range in order, from either end
/// (`Iterator` + `DoubleEndedIterator`). Created by [`super::range`].
///
/// Besides the iterator (which hands out [`PageSlice`] guards, each
/// holding a reference to its page), [`RangeIter::next_entry`] and
/// [`RangeIter::next_back_entry`] lend the entry as plain slices valid
/// until the next call: no allocation and no reference count change per
/// entry for data stored in the leaf.
pub struct RangeIter<'a, P: PageRead> {
    walker: Walker<'a, P>,
    /// Root page, for a back cursor sought late.
    root: PageId,
    front: Cursor,
    /// Empty (not sought yet) while `back_unsought`.
    back: Cursor,
    /// The range has no end bound and nothing was taken from the back yet:
    /// the back cursor (a descent to the last leaf) is sought on the first
    /// step from the back, and the front ends where the tree ends. Short
    /// forward scans (`start..`) save a root-to-leaf descent.
    back_unsought: bool,
    done: bool,
    /// The end (`true`: front) whose cursor still points at the entry it
    /// yielded last. It moves on at the start of the next call, so that
    /// entry's leaf stays pinned while a borrowed entry is alive.
    stale: Option<bool>,
    /// Key bytes read from overflow pages for a borrowed entry.
    key_buf: Vec<u8>,
    /// Value bytes read from overflow pages for a borrowed entry.
    value_buf: Vec<u8>,
}

/// See [`super::range`].
pub(crate) fn range<'a, P: PageRead, R: RangeBounds<[u8]>>(
    pages: &'a P,
    header: &TreeHeader,
    bounds: R,
) -> Result<RangeIter<'a, P>> {
    range_from(pages, header, bounds, None)
}

/// [`range`] reading branch pages through `upper` (see [`UpperPages`]),
/// which the iterator shares: its seeks and its moves between leaves
/// take no reference to a kept branch page, and the tree header is
/// checked once per cache.
pub(crate) fn range_cached<'a, P: PageRead, R: RangeBounds<[u8]>>(
    pages: &'a P,
    header: &TreeHeader,
    bounds: R,
    upper: &Arc<UpperPages>,
) -> Result<RangeIter<'a, P>> {
    range_from(pages, header, bounds, Some(upper))
}

fn range_from<'a, P: PageRead, R: RangeBounds<[u8]>>(
    pages: &'a P,
    header: &TreeHeader,
    bounds: R,
    upper: Option<&Arc<UpperPages>>,
) -> Result<RangeIter<'a, P>> {
    let geo = match upper {
        Some(upper) if !header.is_empty() => upper.checked(pages, header)?,
        _ => {
            header.validate()?;
            Geometry::new(pages.page_len())?
        }
    };
    let walker = Walker {
        pages,
        geo,
        height: header.height,
        upper: upper.cloned(),
    };
    let root = header.root;
    let empty = |walker| RangeIter::new(walker, root, Cursor::unsought(), Cursor::unsought(), true);
    if header.is_empty() {
        return Ok(empty(walker));
    }
    let Some(front) = walker.seek(header.root, bounds.start_bound(), true)? else {
        return Ok(empty(walker));
    };
    let back = match bounds.end_bound() {
        Bound::Unbounded => Cursor::unsought(),
        end => match walker.seek(header.root, end, false)? {
            Some(back) => back,
            None => return Ok(empty(walker)),
        },
    };
    // The range is empty unless the first entry >= start is within the end bound.
    let within = match bounds.end_bound() {
        Bound::Unbounded => true,
        end => {
            let (leaf, node) = walker.leaf_at(&front, front.leaf().1)?;
            let key = node.key(leaf.idx)?;
            match end {
                Bound::Included(end) => cmp_key(pages, &walker.geo, &key, end)?.is_le(),
                Bound::Excluded(end) => cmp_key(pages, &walker.geo, &key, end)?.is_lt(),
                Bound::Unbounded => true,
            }
        }
    };
    if !within {
        return Ok(empty(walker));
    }
    Ok(RangeIter::new(walker, root, front, back, false))
}

/// The first (`first == true`) or last entry of the tree.
pub(crate) fn edge_entry<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    first: bool,
) -> Result<Option<(KeyGuard, ValueGuard)>> {
    let mut iter = range::<P, std::ops::RangeFull>(pages, header, ..)?;
    let item = if first { iter.next() } else { iter.next_back() };
    item.transpose()
}

impl<'a, P: PageRead> RangeIter<'a, P> {
    fn new(walker: Walker<'a, P>, root: PageId, front: Cursor, back: Cursor, done: bool) -> Self {
        RangeIter {
            walker,
            root,
            front,
            back_unsought: !done && back.path.is_empty(),
            back,
            done,
            stale: None,
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Whether the front and back cursors point at the same entry.
    fn cursors_meet(&self) -> bool {
        let (fid, fidx) = self.front.leaf();
        let (bid, bidx) = self.back.leaf();
        fid == bid && fidx + 1 == bidx
    }

    /// Moves the cursor of one end past the entry it yielded.
    #[inline]
    fn move_on(&mut self, front: bool) -> Result<()> {
        // Hot path: the next entry is in the same leaf.
        let cursor = if front {
            &mut self.front
        } else {
            &mut self.back
        };
        if let Some(leaf) = cursor.path.last_mut() {
            if front && leaf.idx + 1 < leaf.count {
                leaf.idx += 1;
                return Ok(());
            }
            if !front && leaf.idx > 1 {
                leaf.idx -= 1;
                return Ok(());
            }
        }
        self.move_across(front)
    }

    /// [`RangeIter::move_on`] when the cursor may have to change leaves.
    fn move_across(&mut self, front: bool) -> Result<()> {
        let moved = if front {
            if let Some(i) = self.front.leaf_idx_mut() {
                *i += 1;
            }
            self.walker.settle_front(&mut self.front.path)?
        } else {
            if let Some(i) = self.back.leaf_idx_mut() {
                *i -= 1;
            }
            self.walker.settle_back(&mut self.back.path)?
        };
        if moved {
            Ok(())
        } else if front && self.back_unsought {
            // No back cursor: the front ran off the end of the tree.
            self.done = true;
            Ok(())
        } else {
            Err(super::format::corrupt(
                self.back.leaf().0,
                "range cursors passed each other",
            ))
        }
    }

    /// Positions one end on its next entry and returns that entry's leaf
    /// index; `None` when the range is exhausted. The previous call's
    /// cursor moves on first (an error there ends the iteration).
    fn position(&mut self, front: bool) -> Option<Result<usize>> {
        if let Some(end) = self.stale.take() {
            if let Err(e) = self.move_on(end) {
                self.done = true;
                return Some(Err(e));
            }
        }
        if self.done {
            return None;
        }
        if !front && self.back_unsought {
            self.back_unsought = false;
            match self.walker.seek(self.root, Bound::Unbounded, false) {
                Ok(Some(back)) => self.back = back,
                // The front still points at an entry, so the tree has one.
                Ok(None) => {
                    self.done = true;
                    return Some(Err(super::format::corrupt(
                        self.root,
                        "no last entry in a tree with entries",
                    )));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let idx = if front {
            self.front.leaf().1
        } else {
            self.back.leaf().1.wrapping_sub(1)
        };
        if self.cursors_meet() {
            self.done = true;
        } else {
            self.stale = Some(front);
        }
        Some(Ok(idx))
    }

    /// Ends the iteration after an error reading an entry.
    fn fail(&mut self) {
        self.done = true;
        self.stale = None;
    }

    fn step(&mut self, front: bool) -> Option<Result<(KeyGuard, ValueGuard)>> {
        let idx = match self.position(front)? {
            Ok(idx) => idx,
            Err(e) => return Some(Err(e)),
        };
        let cursor = if front { &self.front } else { &self.back };
        let item = self.walker.entry(cursor, idx);
        if item.is_err() {
            self.fail();
        }
        Some(item)
    }

    /// [`RangeIter::position`] for the common forward step, the front
    /// cursor moving on inside its leaf; `None` when the step is not that
    /// one (nothing changed then).
    #[inline]
    fn position_in_leaf(&mut self, front: bool) -> Option<usize> {
        if !front || self.stale != Some(true) || self.done {
            return None;
        }
        let leaf = self.front.path.last_mut()?;
        if leaf.idx + 1 >= leaf.count {
            return None;
        }
        leaf.idx += 1;
        let (id, idx) = (leaf.id, leaf.idx);
        // As in `cursors_meet`: the back cursor points just past this entry.
        let meet = self
            .back
            .path
            .last()
            .is_some_and(|back| back.id == id && idx + 1 == back.idx);
        if meet {
            self.done = true;
            self.stale = None;
        }
        Some(idx)
    }

    /// A borrowed step of one end that may change leaves, or whose
    /// entry is not stored whole in its leaf (the fast step of
    /// [`RangeIter::next_entry`] is the rest).
    #[inline(never)]
    fn step_borrowed(&mut self, front: bool) -> Option<Result<(&[u8], &[u8])>> {
        let idx = match self.position_in_leaf(front) {
            Some(idx) => idx,
            None => match self.position(front)? {
                Ok(idx) => idx,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(self.entry_at(front, idx))
    }

    /// Where the key and value of front leaf entry `idx` lie in the leaf
    /// (key start, value start, value end) when both are stored whole in
    /// it; `None` otherwise (read by [`RangeIter::entry_at`]).
    #[inline(always)]
    fn inline_entry_at(&self, front: bool, idx: usize) -> Option<(usize, usize, usize)> {
        let cursor = if front { &self.front } else { &self.back };
        let leaf = cursor.path.last().filter(|leaf| idx < leaf.count)?;
        Node::reopen(leaf.held()?, leaf.id, 0, &self.walker.geo).inline_entry(idx)
    }

    /// The leaf bytes of one end's cursor (empty when it has none).
    #[inline(always)]
    fn leaf_bytes(&self, front: bool) -> &[u8] {
        let cursor = if front { &self.front } else { &self.back };
        cursor
            .path
            .last()
            .and_then(Frame::held)
            .map_or(&[][..], |p| &p[..])
    }

    /// Calls `visit` with each remaining entry from the front, lent as by
    /// [`RangeIter::next_entry`], until it returns `false` or the range
    /// ends. Steps inside a leaf stay in this loop: no per-entry result is
    /// built or passed up. An error reading an entry ends the iteration.
    pub(crate) fn visit_front(
        &mut self,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        loop {
            let idx = match self.position_in_leaf(true) {
                Some(idx) => idx,
                None => match self.position(true) {
                    None => return Ok(()),
                    Some(idx) => idx?,
                },
            };
            let (key, value) = self.entry_at(true, idx)?;
            if !visit(key, value) {
                return Ok(());
            }
        }
    }

    /// The entry at leaf index `idx` of one end's leaf, which
    /// [`RangeIter::position`] (or its in-leaf fast step) just chose; an
    /// error ends the iteration. Always inlined: it is the per-entry
    /// body of the scan loops.
    #[inline(always)]
    fn entry_at(&mut self, front: bool, idx: usize) -> Result<(&[u8], &[u8])> {
        // Fast path: key and value stored whole in the leaf.
        if let Some((key, value, end)) = self.inline_entry_at(front, idx) {
            let page = self.leaf_bytes(front);
            return Ok((&page[key..value], &page[value..end]));
        }
        self.located_entry_at(front, idx)
    }

    /// [`RangeIter::entry_at`] for an entry with a part in overflow pages
    /// (or a damaged cell): the checked parse.
    #[inline(never)]
    fn located_entry_at(&mut self, front: bool, idx: usize) -> Result<(&[u8], &[u8])> {
        let cursor = if front { &self.front } else { &self.back };
        let located = self
            .walker
            .locate(cursor, idx, &mut self.key_buf, &mut self.value_buf);
        let (key, value) = match located {
            Ok(parts) => parts,
            Err(e) => {
                self.fail();
                return Err(e);
            }
        };
        let cursor = if front { &self.front } else { &self.back };
        let leaf = cursor
            .path
            .last()
            .and_then(Frame::held)
            .map_or(&[][..], |p| &p[..]);
        Ok((
            key.resolve(leaf, &self.key_buf),
            value.resolve(leaf, &self.value_buf),
        ))
    }

    /// The next entry from the front, lent until the next call on this
    /// iterator: the key and value are slices of the pinned leaf page (or,
    /// for parts stored in overflow pages, of buffers the iterator reuses).
    /// Same order, bounds and errors as [`Iterator::next`], with which it
    /// may be mixed.
    #[inline]
    pub fn next_entry(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        // The common step, inlined into the caller's loop: on inside the
        // leaf, to an entry stored whole in it.
        if let Some(idx) = self.position_in_leaf(true) {
            if let Some((key, value, end)) = self.inline_entry_at(true, idx) {
                let page = self.leaf_bytes(true);
                return Some(Ok((&page[key..value], &page[value..end])));
            }
            return Some(self.located_entry_at(true, idx));
        }
        self.step_borrowed(true)
    }

    /// The next entry from the back, lent like [`RangeIter::next_entry`].
    pub fn next_back_entry(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        self.step_borrowed(false)
    }
}

impl<P: PageRead> Iterator for RangeIter<'_, P> {
    type Item = Result<(KeyGuard, ValueGuard)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl<P: PageRead> DoubleEndedIterator for RangeIter<'_, P> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;

    use super::*;
    use crate::btree::tests::mem::MemPages;
    use crate::btree::{self, MIN_PAGE_LEN};

    /// `MemPages` that counts reads.
    struct Counting {
        pages: MemPages,
        reads: Cell<usize>,
    }

    impl PageRead for Counting {
        fn page_len(&self) -> usize {
            self.pages.page_len()
        }
        fn read_page(&self, id: PageId) -> Result<PageRef> {
            self.reads.set(self.reads.get() + 1);
            self.pages.read_page(id)
        }
    }

    /// A tree of `rows` entries on minimum-size pages (several levels).
    fn build(rows: u32) -> (Counting, TreeHeader, BTreeMap<Vec<u8>, Vec<u8>>) {
        let mut pages = MemPages::new(MIN_PAGE_LEN);
        let mut header = TreeHeader::EMPTY;
        let mut model = BTreeMap::new();
        for i in 0..rows {
            let key = (i.wrapping_mul(2_654_435_761)).to_be_bytes().to_vec();
            let value = vec![i as u8; (i % 5) as usize * 9];
            btree::insert(&mut pages, &mut header, &key, &value).expect("insert");
            model.insert(key, value);
        }
        let pages = Counting {
            pages,
            reads: Cell::new(0),
        };
        (pages, header, model)
    }

    #[test]
    fn cached_lookups_read_only_the_leaf_once_warm() {
        let (pages, header, model) = build(2_000);
        assert!(
            header.height >= 3,
            "a tree with branch levels below the root"
        );
        let upper = UpperPages::new();
        for (key, value) in &model {
            let got = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        }
        let warm = pages.reads.get();
        for (key, value) in &model {
            let got = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        }
        assert_eq!(
            pages.reads.get() - warm,
            model.len(),
            "one page-table read (the leaf) per warm lookup"
        );
        let absent = get_cached(&pages, &header, &upper, b"\xff\xff\xff\xff\xff").expect("get");
        assert!(absent.is_none());
    }

    #[test]
    fn lent_values_match_guarded_ones_inline_and_in_overflow_pages() {
        let (mut pages, mut header, mut model) = build(1_500);
        // Values past a minimum-size page's cell go to overflow pages.
        for i in 0..20u32 {
            let key = format!("overflow-{i}").into_bytes();
            let value = vec![i as u8; 3 * MIN_PAGE_LEN + i as usize];
            btree::insert(&mut pages.pages, &mut header, &key, &value).expect("insert");
            model.insert(key, value);
        }
        let upper = UpperPages::new();
        for (key, value) in &model {
            let lent = get_with(&pages, &header, &upper, key, <[u8]>::to_vec).expect("get_with");
            assert_eq!(lent.as_ref(), Some(value));
            let guarded = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(guarded.as_deref(), Some(&value[..]));
        }
        let absent = get_with(&pages, &header, &upper, b"absent", |_| ()).expect("get_with");
        assert_eq!(absent, None);
        let empty = get_with(&pages, &TreeHeader::EMPTY, &upper, b"x", |_| ()).expect("empty");
        assert_eq!(empty, None);
    }

    #[test]
    fn headers_are_checked_once_per_tree_and_bad_ones_always_fail() {
        let (pages, header, model) = build(500);
        let upper = UpperPages::new();
        let (key, value) = model.iter().next().expect("an entry");
        let lent = get_with(&pages, &header, &upper, key, <[u8]>::to_vec).expect("get_with");
        assert_eq!(lent.as_ref(), Some(value));
        let bad_height = TreeHeader {
            height: 0,
            ..header
        };
        let bad_empty = TreeHeader {
            root: PageId(0),
            ..header
        };
        for bad in [bad_height, bad_empty] {
            assert!(
                get_with(&pages, &bad, &upper, key, |_| ()).is_err(),
                "{bad:?}"
            );
            assert!(get_cached(&pages, &bad, &upper, key).is_err(), "{bad:?}");
        }
        let got = get_cached(&pages, &header, &upper, key).expect("get");
        assert_eq!(
            got.as_deref(),
            Some(&value[..]),
            "the good header still reads"
        );
    }

    #[test]
    fn a_full_cache_reads_through_and_stays_right() {
        let (pages, header, model) = build(2_000);
        let upper = UpperPages::new();
        // As if pages of this tree had taken every byte the limit allows.
        upper.bytes.store(UPPER_PAGES_BYTES_MAX, Ordering::Relaxed);
        for (key, value) in model.iter().step_by(7) {
            let got = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        }
        let geo = Geometry::new(pages.page_len()).expect("geometry");
        let held = upper
            .get_or_read(&pages, header.root, header.height - 1, &geo)
            .expect("root");
        assert!(matches!(held, Held::Read(_)), "nothing kept past the limit");
        assert_eq!(
            &held[..],
            &pages.pages.read_page(header.root).expect("root")[..]
        );
    }

    /// One step of a range walk in [`cached_ranges_walk_like_the_model`].
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Next,
        NextBack,
        NextEntry,
        NextBackEntry,
    }

    /// A bound from `n` (a key index, or past every key) and `kind`.
    fn bound_of(keys: &[Vec<u8>], n: usize, kind: u8) -> Bound<Vec<u8>> {
        let key = keys.get(n).cloned().unwrap_or_else(|| vec![0xff; 5]);
        match kind % 3 {
            0 => Bound::Included(key),
            1 => Bound::Excluded(key),
            _ => Bound::Unbounded,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Ranges through a shared branch cache (frames of kept branch
        /// pages hold no page; moves between leaves look them up again)
        /// yield the model's entries from both ends, mixing owned and lent
        /// steps, with the cache warm, cold or full.
        #[test]
        fn cached_ranges_walk_like_the_model(
            rows in 300u32..2_500,
            ranges in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<u8>(), any::<prop::sample::Index>(), any::<u8>(),
                 prop::collection::vec(0u8..4, 0..200)),
                1..6),
            full in any::<bool>(),
        ) {
            let (pages, header, model) = build(rows);
            let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
            let upper = Arc::new(UpperPages::new());
            if full {
                upper.bytes.store(UPPER_PAGES_BYTES_MAX, Ordering::Relaxed);
            }
            for (lo, lo_kind, hi, hi_kind, steps) in ranges {
                let lo = bound_of(&keys, lo.index(keys.len() + 1), lo_kind);
                let hi = bound_of(&keys, hi.index(keys.len() + 1), hi_kind);
                let bounds = (lo.as_ref().map(Vec::as_slice), hi.as_ref().map(Vec::as_slice));
                let inverted = matches!(
                    (&lo, &hi),
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b))
                        if a > b || (a == b && !matches!((&lo, &hi), (Bound::Included(_), Bound::Included(_))))
                );
                if inverted {
                    continue;
                }
                let mut want: std::collections::VecDeque<(Vec<u8>, Vec<u8>)> = model
                    .range::<[u8], _>(bounds)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let mut iter = range_cached(&pages, &header, bounds, &upper).expect("range");
                for step in steps.iter().map(|s| match s {
                    0 => Step::Next,
                    1 => Step::NextBack,
                    2 => Step::NextEntry,
                    _ => Step::NextBackEntry,
                }) {
                    let got = match step {
                        Step::Next => iter.next().map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec()))),
                        Step::NextBack => {
                            iter.next_back().map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec())))
                        }
                        Step::NextEntry => iter.next_entry().map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec()))),
                        Step::NextBackEntry => {
                            iter.next_back_entry().map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                        }
                    };
                    let expected = match step {
                        Step::Next | Step::NextEntry => want.pop_front(),
                        Step::NextBack | Step::NextBackEntry => want.pop_back(),
                    };
                    prop_assert_eq!(got.transpose().expect("entry"), expected, "{:?}", step);
                }
            }
        }
    }

    #[test]
    fn cached_range_seeks_match_uncached_ones() {
        let (pages, header, model) = build(1_500);
        let upper = Arc::new(UpperPages::new());
        let keys: Vec<&Vec<u8>> = model.keys().collect();
        for (n, start) in keys.iter().enumerate().step_by(13) {
            let end = keys[(n + 40).min(keys.len() - 1)];
            let bounds = (Bound::Included(&start[..]), Bound::Excluded(&end[..]));
            let cached: Vec<_> = range_cached(&pages, &header, bounds, &upper)
                .expect("range")
                .map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec())))
                .collect::<Result<_>>()
                .expect("entries");
            let want: Vec<_> = model
                .range::<[u8], _>(bounds)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(cached, want);
        }
    }

    /// Every branch page of the tree under `header`, with its level.
    fn branch_pages(pages: &MemPages, header: &TreeHeader) -> Vec<(PageId, u8, PageRef)> {
        let geo = Geometry::new(pages.page_len()).expect("geometry");
        let mut out = Vec::new();
        let mut todo = vec![(header.root, header.height - 1)];
        while let Some((id, level)) = todo.pop() {
            if level == 0 {
                continue;
            }
            let page = pages.read_page(id).expect("page");
            let node = Node::parse(&page, id, level, &geo).expect("node");
            for pos in 0..=node.count() {
                todo.push((node.child(pos).expect("child"), level - 1));
            }
            out.push((id, level, page));
        }
        out
    }

    /// Keys with long shared prefixes and equal heads, short keys and keys
    /// that are prefixes of others.
    fn awkward_key() -> impl Strategy<Value = Vec<u8>> {
        (0u8..5, 0u32..400, 0usize..3).prop_map(|(prefix, n, tail)| {
            let mut key = match prefix {
                0 => Vec::new(),
                1 => b"a".to_vec(),
                2 => b"user:0000".to_vec(),
                3 => vec![0xff; 11],
                // Longer than the prefix a branch index keeps inline.
                _ => b"tenant-0042/orders/2026-11/".to_vec(),
            };
            key.extend_from_slice(&n.to_be_bytes()[..4 - tail]);
            key
        })
    }

    proptest! {
        #[test]
        fn branch_indexes_pick_the_children_the_pages_pick(
            keys in proptest::collection::vec(awkward_key(), 50..400),
            probes in proptest::collection::vec(awkward_key(), 0..60),
        ) {
            let mut pages = MemPages::new(MIN_PAGE_LEN);
            let mut header = TreeHeader::EMPTY;
            for key in &keys {
                btree::insert(&mut pages, &mut header, key, b"v").expect("insert");
            }
            let geo = Geometry::new(pages.page_len()).expect("geometry");
            for (id, level, page) in branch_pages(&pages, &header) {
                let node = Node::parse(&page, id, level, &geo).expect("node");
                let index = BranchIndex::build(&node).expect("index of a well-formed page");
                prop_assert_eq!(index.count(), node.count());
                // Each separator, its neighbours and the probes.
                let mut tries: Vec<Vec<u8>> = probes.clone();
                for i in 0..node.count() {
                    let sep = node.key(i).expect("key").local.to_vec();
                    let mut above = sep.clone();
                    above.push(0);
                    let below = sep[..sep.len().saturating_sub(1)].to_vec();
                    tries.extend([sep, above, below]);
                }
                for key in &tries {
                    let want = node.child_pos_for(&pages, key).expect("search");
                    prop_assert_eq!(index.child_pos(&page, key), want, "key {:?}", key);
                    prop_assert_eq!(index.child(want), Some(node.child(want).expect("child")));
                }
            }
            // Cached lookups through the indexes find every key.
            let upper = UpperPages::new();
            for key in &keys {
                let got = get_cached(&pages, &header, &upper, key).expect("get");
                prop_assert_eq!(got.as_deref(), Some(&b"v"[..]));
            }
        }
    }

    #[test]
    fn overflowed_separators_leave_a_page_unindexed_and_still_searched() {
        let mut pages = MemPages::new(MIN_PAGE_LEN);
        let mut header = TreeHeader::EMPTY;
        let geo = Geometry::new(MIN_PAGE_LEN).expect("geometry");
        let long = |i: u32| {
            let mut key = vec![b'k'; geo.key_inline_max + 10];
            key.extend_from_slice(&i.to_be_bytes());
            key
        };
        for i in 0..200u32 {
            btree::insert(&mut pages, &mut header, &long(i), b"v").expect("insert");
        }
        let branches = branch_pages(&pages, &header);
        assert!(!branches.is_empty());
        for (id, level, page) in &branches {
            let node = Node::parse(page, *id, *level, &geo).expect("node");
            assert!(
                BranchIndex::build(&node).is_none(),
                "overflowed keys are not indexed"
            );
        }
        let upper = UpperPages::new();
        for i in 0..200u32 {
            let got = get_cached(&pages, &header, &upper, &long(i)).expect("get");
            assert_eq!(got.as_deref(), Some(&b"v"[..]));
        }
    }

    #[test]
    fn a_big_tree_spills_into_the_second_tier_and_reads_only_leaves() {
        let (pages, header, model) = build(6_000);
        let branches = branch_pages(&pages.pages, &header).len();
        assert!(branches > UPPER_FIRST_TIER_PAGES, "{branches} branch pages");
        let upper = UpperPages::new();
        for (key, value) in &model {
            let got = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        }
        let first = upper.tiers[0].kept.load(Ordering::Relaxed);
        let second = upper.tiers[1].kept.load(Ordering::Relaxed);
        assert_eq!(first, UPPER_FIRST_TIER_PAGES);
        assert_eq!(first + second, branches, "every branch page kept once");
        let warm = pages.reads.get();
        for (key, value) in &model {
            let got = get_cached(&pages, &header, &upper, key).expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]));
        }
        assert_eq!(pages.reads.get() - warm, model.len());
    }

    #[test]
    fn threads_sharing_a_cache_all_read_right() {
        let (pages, header, model) = build(2_000);
        let pages = pages.pages;
        let upper = UpperPages::new();
        std::thread::scope(|scope| {
            for t in 0..4usize {
                let (pages, upper, model) = (&pages, &upper, &model);
                scope.spawn(move || {
                    for (key, value) in model.iter().skip(t).step_by(3) {
                        let got = get_cached(pages, &header, upper, key).expect("get");
                        assert_eq!(got.as_deref(), Some(&value[..]));
                    }
                });
            }
        });
        assert!(upper.tiers[0].kept.load(Ordering::Relaxed) > 1);
    }
}
