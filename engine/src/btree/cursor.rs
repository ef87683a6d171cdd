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
//! validated on the way down.

use std::ops::{Bound, Deref, RangeBounds};

use mmsb_wal::PageId;

use super::format::{read_page, Geometry};
use super::insert::load_value;
use super::keys::{cmp_key, load_key};
use super::node::{KeyRef, Node, ValueLoc};
use super::overflow::read_chain;
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
    get_from(pages, header, None, key)
}

/// A private copy of the tree's root page (`None` for an empty tree), for
/// [`get_with_root`]. Page images never change, so the copy stays right for
/// the snapshot `pages` reads; being private, sharing it costs other
/// threads nothing (no shared reference count, no page-table lock).
pub(crate) fn root_copy<P: PageRead>(pages: &P, header: &TreeHeader) -> Result<Option<PageRef>> {
    header.validate()?;
    if header.is_empty() {
        return Ok(None);
    }
    let page = read_page(pages, header.root)?;
    Ok(Some(PageRef::new(std::sync::Arc::from(&page[..]))))
}

/// [`get`] starting from `root`, the bytes of the tree's root page as of
/// the snapshot `pages` reads (see [`root_copy`]).
pub(crate) fn get_with_root<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    root: &PageRef,
    key: &[u8],
) -> Result<Option<ValueGuard>> {
    get_from(pages, header, Some(root), key)
}

/// The descent of [`get`]; `root`, when given, stands in for a read of
/// the root page.
fn get_from<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    mut root: Option<&PageRef>,
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
        let read;
        let page = match root.take() {
            Some(page) => page,
            None => {
                read = read_page(pages, id)?;
                &read
            }
        };
        let node = Node::parse(page, id, level, &geo)?;
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
        return value_guard(pages, &geo, page, loc).map(Some);
    }
}

/// One level of a cursor's path.
struct Frame {
    id: PageId,
    page: PageRef,
    /// Branch: child position in `0..=count`. Leaf: see [`Cursor`].
    idx: usize,
    /// Cells of the page, read when the page was validated on the way down.
    count: usize,
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
}

impl<P: PageRead> Walker<'_, P> {
    fn level_of(&self, depth: usize) -> u8 {
        // Paths never hold more frames than the tree has levels.
        self.height - 1 - depth as u8
    }

    /// The node of a frame: validated when the frame was pushed, and page
    /// images never change, so it is re-opened without checks.
    fn node<'f>(&'f self, frame: &'f Frame, depth: usize) -> Node<'f> {
        Node::reopen(&frame.page, frame.id, self.level_of(depth), &self.geo)
    }

    /// Reads and validates page `id` at `depth`; returns its frame at `idx`
    /// (chosen from the node by `pick`) and the child to descend to.
    fn frame_at(
        &self,
        id: PageId,
        depth: usize,
        pick: impl FnOnce(&Node<'_>) -> Result<usize>,
    ) -> Result<(Frame, Option<PageId>)> {
        let level = self.level_of(depth);
        let page = read_page(self.pages, id)?;
        let (idx, count, child) = {
            let node = Node::parse(&page, id, level, &self.geo)?;
            let idx = pick(&node)?;
            let child = if level > 0 {
                Some(node.child(idx)?)
            } else {
                None
            };
            (idx, node.count(), child)
        };
        debug_assert!(idx <= count);
        Ok((
            Frame {
                id,
                page,
                idx,
                count,
            },
            child,
        ))
    }

    /// Pushes frames from page `id` down to a leaf, along `edge`.
    fn descend(&self, path: &mut Vec<Frame>, mut id: PageId, edge: Edge) -> Result<()> {
        loop {
            let depth = path.len();
            if depth >= usize::from(self.height) {
                return Err(super::format::corrupt(id, "path deeper than the tree"));
            }
            let (frame, child) = self.frame_at(id, depth, |node| {
                Ok(match edge {
                    Edge::First => 0,
                    Edge::Last => node.count(),
                })
            })?;
            path.push(frame);
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
                    let child = self.node(frame, depth).child(frame.idx + 1)?;
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
                    let child = self.node(frame, depth).child(frame.idx - 1)?;
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
            let (frame, child) = self.frame_at(id, depth, |node| {
                Ok(match bound {
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
                })
            })?;
            path.push(frame);
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

    /// The cursor's leaf frame and its node, with `idx` checked against the
    /// leaf's cell count.
    fn leaf_at<'c>(&'c self, cursor: &'c Cursor, idx: usize) -> Result<(&'c Frame, Node<'c>)> {
        let Some(leaf) = cursor.path.last() else {
            return Err(super::format::corrupt(PageId(0), "cursor without a leaf"));
        };
        if idx >= leaf.count {
            return Err(super::format::corrupt(leaf.id, "cursor outside its leaf"));
        }
        // A full path ends at level 0.
        Ok((leaf, Node::reopen(&leaf.page, leaf.id, 0, &self.geo)))
    }

    /// The entry at leaf index `idx` of the cursor's leaf, as guards.
    fn entry(&self, cursor: &Cursor, idx: usize) -> Result<(KeyGuard, ValueGuard)> {
        let (leaf, node) = self.leaf_at(cursor, idx)?;
        let cell = node.leaf_cell(idx)?;
        let key = key_guard(self.pages, &self.geo, &leaf.page, &cell.key)?;
        let value = value_guard(self.pages, &self.geo, &leaf.page, cell.value)?;
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
    header.validate()?;
    let geo = Geometry::new(pages.page_len())?;
    let walker = Walker {
        pages,
        geo,
        height: header.height,
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
    let within = {
        let (leaf, node) = walker.leaf_at(&front, front.leaf().1)?;
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

    fn step_borrowed(&mut self, front: bool) -> Option<Result<(&[u8], &[u8])>> {
        let idx = match self.position(front)? {
            Ok(idx) => idx,
            Err(e) => return Some(Err(e)),
        };
        let cursor = if front { &self.front } else { &self.back };
        let located = self
            .walker
            .locate(cursor, idx, &mut self.key_buf, &mut self.value_buf);
        let (key, value) = match located {
            Ok(parts) => parts,
            Err(e) => {
                self.fail();
                return Some(Err(e));
            }
        };
        let cursor = if front { &self.front } else { &self.back };
        let leaf = cursor.path.last().map_or(&[][..], |frame| &frame.page[..]);
        Some(Ok((
            key.resolve(leaf, &self.key_buf),
            value.resolve(leaf, &self.value_buf),
        )))
    }

    /// The next entry from the front, lent until the next call on this
    /// iterator: the key and value are slices of the pinned leaf page (or,
    /// for parts stored in overflow pages, of buffers the iterator reuses).
    /// Same order, bounds and errors as [`Iterator::next`], with which it
    /// may be mixed.
    pub fn next_entry(&mut self) -> Option<Result<(&[u8], &[u8])>> {
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
