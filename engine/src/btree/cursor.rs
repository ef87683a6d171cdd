//! Reading: point lookups and ordered iteration in both directions.
//!
//! A cursor is the path of (page, index) frames from the root to a leaf; it
//! moves to a neighbouring leaf through its parents, so pages carry no
//! sibling links. A range holds a front and a back cursor and ends when they
//! meet, so iterating compares no keys after the two initial seeks.

use std::ops::{Bound, Deref, RangeBounds};

use mmsb_wal::PageId;

use super::format::{read_page, Geometry};
use super::insert::load_value;
use super::keys::{cmp_key, load_key};
use super::node::{KeyRef, Node, ValueLoc};
use super::TreeHeader;
use crate::error::Result;
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
    header.validate()?;
    if header.is_empty() {
        return Ok(None);
    }
    let geo = Geometry::new(pages.page_len())?;
    let mut id = header.root;
    let mut level = header.height - 1;
    loop {
        let page = read_page(pages, id)?;
        let node = Node::parse(&page, id, level, &geo)?;
        let (found, idx) = node.search(pages, key)?;
        if level > 0 {
            id = node.child(idx + usize::from(found))?;
            level -= 1;
            continue;
        }
        if !found {
            return Ok(None);
        }
        let loc = node.leaf_cell(idx)?.value;
        return value_guard(pages, &geo, &page, loc).map(Some);
    }
}

/// One level of a cursor's path.
struct Frame {
    id: PageId,
    page: PageRef,
    /// Branch: child position in `0..=count`. Leaf: see [`Cursor`].
    idx: usize,
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

struct Walker<'a, P: PageRead> {
    pages: &'a P,
    geo: Geometry,
    height: u8,
}

impl<P: PageRead> Walker<'_, P> {
    fn level_of(&self, depth: usize) -> u8 {
        // Paths never hold more frames than the tree has levels.
        self.height - 1 - depth as u8
    }

    fn node<'f>(&'f self, frame: &'f Frame, depth: usize) -> Result<Node<'f>> {
        Node::parse(&frame.page, frame.id, self.level_of(depth), &self.geo)
    }

    /// Pushes frames from page `id` down to a leaf, along `edge`.
    fn descend(&self, path: &mut Vec<Frame>, mut id: PageId, edge: Edge) -> Result<()> {
        loop {
            let depth = path.len();
            if depth >= usize::from(self.height) {
                return Err(super::format::corrupt(id, "path deeper than the tree"));
            }
            let page = read_page(self.pages, id)?;
            let (idx, child) = {
                let node = Node::parse(&page, id, self.level_of(depth), &self.geo)?;
                let idx = match edge {
                    Edge::First => 0,
                    Edge::Last => node.count(),
                };
                let child = if self.level_of(depth) > 0 {
                    Some(node.child(idx)?)
                } else {
                    None
                };
                (idx, child)
            };
            path.push(Frame { id, page, idx });
            match child {
                Some(c) => id = c,
                None => return Ok(()),
            }
        }
    }

    /// Moves a front cursor whose leaf index may be past its leaf's end to
    /// the next entry; `false` when there is none.
    fn settle_front(&self, path: &mut Vec<Frame>) -> Result<bool> {
        loop {
            let Some(leaf) = path.last() else {
                return Ok(false);
            };
            if leaf.idx < self.node(leaf, path.len() - 1)?.count() {
                return Ok(true);
            }
            path.pop();
            loop {
                let depth = path.len().wrapping_sub(1);
                let Some(frame) = path.last() else {
                    return Ok(false);
                };
                let node = self.node(frame, depth)?;
                if frame.idx < node.count() {
                    let child = node.child(frame.idx + 1)?;
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
                    let child = self.node(frame, depth)?.child(frame.idx - 1)?;
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
        loop {
            let depth = path.len();
            let level = self.level_of(depth);
            let page = read_page(self.pages, id)?;
            let (idx, child) = {
                let node = Node::parse(&page, id, level, &self.geo)?;
                let idx = match bound {
                    Bound::Unbounded if front => 0,
                    Bound::Unbounded => node.count(),
                    Bound::Included(k) | Bound::Excluded(k) => {
                        let (found, i) = node.search(self.pages, k)?;
                        let inclusive = matches!(bound, Bound::Included(_));
                        // Branch: descend where `k` would live. Leaf: see
                        // `Cursor` for the front/back index conventions.
                        if level > 0 || found && front != inclusive {
                            i + usize::from(found)
                        } else {
                            i
                        }
                    }
                };
                let child = if level > 0 {
                    Some(node.child(idx)?)
                } else {
                    None
                };
                (idx, child)
            };
            path.push(Frame { id, page, idx });
            match child {
                Some(c) => id = c,
                None => break,
            }
        }
        let found = if front {
            self.settle_front(&mut path)?
        } else {
            self.settle_back(&mut path)?
        };
        Ok(found.then_some(Cursor { path }))
    }

    /// The entry at leaf index `idx` of the cursor's leaf.
    fn entry(&self, cursor: &Cursor, idx: usize) -> Result<(KeyGuard, ValueGuard)> {
        let depth = cursor.path.len() - 1;
        let leaf = &cursor.path[depth];
        let node = self.node(leaf, depth)?;
        if idx >= node.count() {
            return Err(super::format::corrupt(leaf.id, "cursor outside its leaf"));
        }
        let cell = node.leaf_cell(idx)?;
        let key = key_guard(self.pages, &self.geo, &leaf.page, &cell.key)?;
        let value = value_guard(self.pages, &self.geo, &leaf.page, cell.value)?;
        Ok((key, value))
    }
}

impl Cursor {
    fn leaf(&self) -> (PageId, usize) {
        self.path.last().map_or((PageId(0), 0), |f| (f.id, f.idx))
    }

    fn leaf_idx_mut(&mut self) -> Option<&mut usize> {
        self.path.last_mut().map(|f| &mut f.idx)
    }
}

/// Entries of a key range in order, from either end
/// (`Iterator` + `DoubleEndedIterator`). Created by [`super::range`].
pub struct RangeIter<'a, P: PageRead> {
    walker: Walker<'a, P>,
    front: Cursor,
    back: Cursor,
    done: bool,
    pending: Option<crate::Error>,
}

/// See [`super::range`].
pub(crate) fn range<'a, P: PageRead, R: RangeBounds<[u8]>>(
    pages: &'a P,
    header: &TreeHeader,
    bounds: R,
) -> Result<RangeIter<'a, P>> {
    header.validate()?;
    let geo = Geometry::new(pages.page_len())?;
    let walker = Walker {
        pages,
        geo,
        height: header.height,
    };
    let empty = |walker| RangeIter {
        walker,
        front: Cursor { path: Vec::new() },
        back: Cursor { path: Vec::new() },
        done: true,
        pending: None,
    };
    if header.is_empty() {
        return Ok(empty(walker));
    }
    let Some(front) = walker.seek(header.root, bounds.start_bound(), true)? else {
        return Ok(empty(walker));
    };
    let Some(back) = walker.seek(header.root, bounds.end_bound(), false)? else {
        return Ok(empty(walker));
    };
    // The range is empty unless the first entry >= start is within the end bound.
    let within = {
        let depth = front.path.len() - 1;
        let leaf = &front.path[depth];
        let node = walker.node(leaf, depth)?;
        let key = node.key(leaf.idx)?;
        match bounds.end_bound() {
            Bound::Unbounded => true,
            Bound::Included(end) => cmp_key(pages, &walker.geo, &key, end)?.is_le(),
            Bound::Excluded(end) => cmp_key(pages, &walker.geo, &key, end)?.is_lt(),
        }
    };
    if !within {
        return Ok(empty(walker));
    }
    Ok(RangeIter {
        walker,
        front,
        back,
        done: false,
        pending: None,
    })
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

impl<P: PageRead> RangeIter<'_, P> {
    /// Whether the front and back cursors point at the same entry.
    fn cursors_meet(&self) -> bool {
        let (fid, fidx) = self.front.leaf();
        let (bid, bidx) = self.back.leaf();
        fid == bid && fidx + 1 == bidx
    }

    fn step(&mut self, front: bool) -> Option<Result<(KeyGuard, ValueGuard)>> {
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        let item = if front {
            self.walker.entry(&self.front, self.front.leaf().1)
        } else {
            self.walker
                .entry(&self.back, self.back.leaf().1.wrapping_sub(1))
        };
        if item.is_err() || self.cursors_meet() {
            self.done = true;
            return Some(item);
        }
        let moved = if front {
            if let Some(i) = self.front.leaf_idx_mut() {
                *i += 1;
            }
            self.walker.settle_front(&mut self.front.path)
        } else {
            if let Some(i) = self.back.leaf_idx_mut() {
                *i -= 1;
            }
            self.walker.settle_back(&mut self.back.path)
        };
        match moved {
            Ok(true) => {}
            Ok(false) => {
                self.pending = Some(super::format::corrupt(
                    self.back.leaf().0,
                    "range cursors passed each other",
                ))
            }
            Err(e) => self.pending = Some(e),
        }
        Some(item)
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
