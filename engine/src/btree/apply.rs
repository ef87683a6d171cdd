//! Applying a batch of writes (usually in key order, as a transaction's
//! write buffer is) without descending from the root for every key.
//!
//! [`BatchWriter`] remembers the path to the leaf the last write went to and
//! the key range each node on it covers (its fences: the separators around
//! it in its parents). A write whose key lies in the leaf's range and that
//! changes only the leaf — a new inline cell that fits (and, in the tree's
//! rightmost leaf, stays under the append fill target of the ordinary
//! insert), an inline value replaced by one no longer, a removal that leaves
//! the leaf above the fill threshold — is done right there; a key after the
//! leaf's last key costs one comparison, not a binary search. A key outside
//! the leaf is looked up from the deepest cached branch covering it. Anything
//! else (a split, an overflow chain, an underfull leaf) goes through the
//! ordinary [`insert`] or [`remove`], after which the path is dropped and
//! the next write finds its leaf from the root — except the edge split of
//! an in-order load: a key appended past the rightmost leaf's fill target
//! starts the next rightmost leaf right there (the same split and
//! separator insertion the ordinary insert makes, up the cached rightmost
//! path), and the path moves on to the new leaf. The resulting tree is the
//! same as with one ordinary call per key: the fast paths make exactly the
//! page writes those calls make.
//!
//! [`insert`]: super::insert::insert
//! [`remove`]: super::remove::remove

use std::cmp::Ordering;

use mmsb_wal::PageId;

use super::cell::{
    branch_cell_vec, leaf_cell_size, leaf_cell_vec, leaf_flags, store_key, write_leaf_cell,
    KeySpec, ValueSpec,
};
use super::format::{
    corrupt, read_page, Geometry, MAX_KEY_BYTES, MAX_TREE_HEIGHT, MAX_VALUE_BYTES, SLOT_BYTES,
    UNDERFULL_DIVISOR,
};
use super::insert::{grow_root, insert_separator, past_append_fill, split_node, Split};
use super::keys::{cmp_key, load_key, load_key_into, separator};
use super::node::{Node, NodeMut, ValueLoc};
use super::TreeHeader;
use crate::error::Result;
use crate::page_access::{PageRead, PageWrite};

/// Fence buffers kept for reuse by the next descents (two per level of
/// the tallest tree a path holds).
const SPARE_FENCES_MAX: usize = 2 * MAX_TREE_HEIGHT as usize;

/// Bytes per CPU cache line (what one prefetch fetches).
const CACHE_LINE_BYTES: usize = 64;

/// Asks the CPU to fetch every cache line of `page` (a hint that reads
/// nothing and never faults).
fn prefetch_page(page: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for line in page.chunks(CACHE_LINE_BYTES) {
            // SAFETY: a prefetch never faults; the address lies in `page`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = page;
}

/// [`Node::search`] with a shortcut for in-order loads: a key after the
/// leaf's last key lands at the end after one comparison.
fn search_appending<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    node: &Node<'_>,
    key: &[u8],
) -> Result<(bool, usize)> {
    let count = node.count();
    if count > 0 && cmp_key(pages, geo, &node.key(count - 1)?, key)? == Ordering::Less {
        return Ok((false, count));
    }
    node.search(pages, key)
}

/// The edge split of a full rightmost leaf whose last key is `last`: a
/// new leaf holding only the entry `k`/`v` (key `key`), and the separator
/// for the parent. The same pages and separator as [`split_node`] makes
/// for a cell past the end of a leaf (the leaf keeps every cell), without
/// re-reading the leaf's cells or keys.
///
/// [`split_node`]: super::insert::split_node
fn edge_split<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    last: &[u8],
    key: &[u8],
    k: &KeySpec<'_>,
    v: &ValueSpec<'_>,
) -> Result<Split> {
    debug_assert!(last < key);
    let new_page = pages.allocate_page()?;
    {
        let mut node = NodeMut::init(pages.page_mut(new_page)?, new_page, 0, geo)?;
        let size = leaf_cell_size(k, v);
        if !node.insert_cell_with(0, size, |dst| write_leaf_cell(dst, k, v))? {
            return Err(corrupt(new_page, "one cell does not fit an empty leaf"));
        }
    }
    let sep = store_key(pages, geo, separator(last, key))?;
    Ok(Split {
        sep_cell: branch_cell_vec(&sep, PageId(0)),
        new_page,
        new_is_left: false,
    })
}

/// Inserts the separator of `split` (a split of the last node of `path`)
/// into each ancestor up `path`, splitting full branches on the way, and
/// grows the root when the top one splits too; returns how many branches
/// split. `child_pos` gives, for an ancestor (parsed at its level), the
/// position of the child the split node hangs from.
fn separators_up<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    header: &mut TreeHeader,
    path: &[CachedNode],
    split: Split,
    child_pos: impl Fn(&Node<'_>, &P) -> Result<usize>,
) -> Result<usize> {
    let depth = path.len();
    let mut split = Some(split);
    let mut branch_splits = 0;
    for (d, node) in path[..depth.saturating_sub(1)].iter().enumerate().rev() {
        let Some(below) = split.take() else { break };
        let level = u8::try_from(depth - 1 - d)
            .map_err(|_| corrupt(node.id, "tree deeper than its header allows"))?;
        let pos = {
            let page = read_page(pages, node.id)?;
            child_pos(&Node::parse(&page, node.id, level, geo)?, pages)?
        };
        split = insert_separator(pages, geo, node.id, level, pos, below)?;
        branch_splits += usize::from(split.is_some());
    }
    if let Some(split) = split {
        grow_root(pages, geo, header, split)?;
    }
    Ok(branch_splits)
}

/// A node on the path to the last written leaf, and the keys its subtree
/// may hold (its fences: the nearest separators around it in its parents).
#[derive(Debug)]
struct CachedNode {
    id: PageId,
    /// Keys `>= lower` (none: no lower bound).
    lower: Option<Vec<u8>>,
    /// Keys `< upper` (none: no upper bound).
    upper: Option<Vec<u8>>,
}

impl CachedNode {
    fn covers(&self, key: &[u8]) -> bool {
        self.lower.as_deref().is_none_or(|l| l <= key)
            && self.upper.as_deref().is_none_or(|u| key < u)
    }
}

/// Applies inserts and removals to one tree, reusing the last leaf's
/// position (see the module docs). Use one per tree and batch; any order of
/// keys is correct, ascending order is fast.
///
/// The whole root-to-leaf path is kept: a key outside the cached leaf is
/// looked up from the deepest cached branch that covers it (in an ordered
/// batch, usually the leaf's parent), not from the root. Only the leaf
/// changes on the fast paths, so the cached branches stay valid; anything
/// else drops the path.
#[derive(Debug)]
pub struct BatchWriter {
    geo: Geometry,
    /// Root first, leaf last; empty when nothing is cached.
    path: Vec<CachedNode>,
    /// The tree the path was read from (root and height).
    tree: (PageId, u8),
    /// Writes done in the cached leaf without a descent (for tests and tuning).
    fast_writes: u64,
    /// The leaf last prefetched whole (see [`prefetch_page`]): a run of
    /// keys in one leaf fetches it once.
    prefetched: PageId,
    /// Fence buffers of nodes dropped from the path, reused by the next
    /// descents (a random batch descends once per key: no allocation).
    spare_fences: Vec<Vec<u8>>,
}

impl BatchWriter {
    /// A writer for trees on pages of `page_len` bytes.
    pub fn new(page_len: usize) -> Result<Self> {
        Ok(BatchWriter {
            geo: Geometry::new(page_len)?,
            path: Vec::new(),
            tree: (PageId(0), 0),
            fast_writes: 0,
            prefetched: PageId(0),
            spare_fences: Vec::new(),
        })
    }

    /// Writes done in the cached leaf without a descent from the root.
    pub fn fast_writes(&self) -> u64 {
        self.fast_writes
    }

    /// Stores `value` under `key` (as [`super::insert`], without returning
    /// the old value).
    pub fn insert<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        super::insert::check_limits(key, value)?;
        if self.locate(pages, header, key)? && self.try_insert(pages, header, key, value)? {
            self.fast_writes += 1;
            return Ok(());
        }
        self.path.clear();
        super::insert::insert(pages, header, key, value).map(drop)
    }

    /// Applies `entries` — strictly ascending keys, each with its new
    /// value or `None` for a removal — as one [`BatchWriter::insert`] or
    /// [`BatchWriter::remove`] per entry would, to the same tree. A run of
    /// keys past the tree's last key (a bulk load into an empty or
    /// ordered table) fills the rightmost leaf in one loop with the leaf
    /// open: no page lookup, parse or search per key; the rightmost
    /// leaf's fill target starts each next leaf as the single insert does.
    pub fn apply_sorted<'e, P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        entries: impl Iterator<Item = (&'e [u8], Option<&'e [u8]>)>,
    ) -> Result<()> {
        let mut entries = entries.peekable();
        while let Some((key, value)) = entries.next() {
            let Some(value) = value else {
                self.remove(pages, header, key)?;
                continue;
            };
            self.insert(pages, header, key, value)?;
            if self.path.last().is_some_and(|leaf| leaf.upper.is_none()) {
                self.append_run(pages, header, key, &mut entries)?;
            }
        }
        Ok(())
    }

    /// Appends the inserts at the front of `entries` to the rightmost leaf
    /// while they fit under its fill target, when `prev` (just inserted)
    /// is the tree's last key; stops at a removal, at a cell that is not
    /// inline or at the fill target (leaving that entry to the caller).
    fn append_run<'e, P: PageWrite, I>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        prev: &[u8],
        entries: &mut std::iter::Peekable<I>,
    ) -> Result<()>
    where
        I: Iterator<Item = (&'e [u8], Option<&'e [u8]>)>,
    {
        let geo = &self.geo;
        let Some(leaf) = self.path.last() else {
            return Ok(());
        };
        let id = leaf.id;
        // The path may end above the leaves (after a split, see
        // `split_leaf`): then there is no open leaf to append to.
        if leaf.upper.is_some()
            || self.tree != (header.root, header.height)
            || self.path.len() != usize::from(header.height)
        {
            return Ok(());
        }
        {
            let page = read_page(pages, id)?;
            let node = Node::parse(&page, id, 0, geo)?;
            let count = node.count();
            if count == 0 || cmp_key(pages, geo, &node.key(count - 1)?, prev)? != Ordering::Equal {
                return Ok(());
            }
        }
        let mut prev = prev;
        let mut node = NodeMut::open(pages.page_mut(id)?, id, 0, geo)?;
        while let Some(&(key, Some(value))) = entries.peek() {
            debug_assert!(prev < key, "entries not ascending");
            if prev >= key
                || key.len() > geo.key_inline_max
                || value.len() > MAX_VALUE_BYTES
                || !geo.value_inline(key.len(), value.len())
            {
                break;
            }
            let k = KeySpec::with_chain(geo, key, None);
            let v = ValueSpec::Inline(value);
            let size = leaf_cell_size(&k, &v);
            let (count, used, capacity) = {
                let view = node.view();
                (view.count(), view.used(), view.capacity())
            };
            if past_append_fill(used, capacity, size)
                || !node.insert_cell_with(count, size, |dst| write_leaf_cell(dst, &k, &v))?
            {
                break;
            }
            header.len += 1;
            self.fast_writes += 1;
            prev = key;
            entries.next();
        }
        Ok(())
    }

    /// Removes `key` (as [`super::remove`], without returning the value).
    pub fn remove<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        key: &[u8],
    ) -> Result<()> {
        if key.len() <= MAX_KEY_BYTES
            && self.locate(pages, header, key)?
            && self.try_remove(pages, header, key)?
        {
            self.fast_writes += 1;
            return Ok(());
        }
        self.path.clear();
        super::remove::remove(pages, header, key).map(drop)
    }

    /// Makes the cached leaf the one `key` belongs in; `false` for an
    /// empty tree.
    fn locate<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &TreeHeader,
        key: &[u8],
    ) -> Result<bool> {
        let height = usize::from(header.height);
        if self.tree != (header.root, header.height) {
            self.path.clear();
        }
        if self.path.len() == height && self.path.last().is_some_and(|n| n.covers(key)) {
            return Ok(true);
        }
        // Keep the branches whose ranges hold the key (the root holds all).
        while self.path.last().is_some_and(|n| !n.covers(key)) {
            self.drop_last();
        }
        while self.path.len() > height.saturating_sub(1) {
            self.drop_last();
        }
        if self.path.is_empty() {
            header.validate()?;
            if header.is_empty() {
                return Ok(false);
            }
            self.tree = (header.root, header.height);
            self.path.push(CachedNode {
                id: header.root,
                lower: None,
                upper: None,
            });
        }
        while self.path.len() < height {
            let child = self.child_for(pages, height, key)?;
            self.path.push(child);
        }
        debug_assert!(
            self.path.last().is_some_and(|n| n.covers(key)),
            "a descent ends in the key's leaf"
        );
        Ok(true)
    }

    /// Drops the path's last node, keeping its fence buffers for reuse.
    fn drop_last(&mut self) {
        let Some(node) = self.path.pop() else {
            return;
        };
        self.keep_fence(node.lower);
        self.keep_fence(node.upper);
    }

    /// Keeps a dropped fence buffer for reuse (while there is room).
    fn keep_fence(&mut self, fence: Option<Vec<u8>>) {
        if let Some(fence) = fence {
            if self.spare_fences.len() < SPARE_FENCES_MAX {
                self.spare_fences.push(fence);
            }
        }
    }

    /// The child of the deepest cached branch that `key` belongs in, with
    /// its fences (in reused buffers).
    fn child_for<P: PageRead>(
        &mut self,
        pages: &P,
        height: usize,
        key: &[u8],
    ) -> Result<CachedNode> {
        let mut lower_buf = self.spare_fences.pop().unwrap_or_default();
        let mut upper_buf = self.spare_fences.pop().unwrap_or_default();
        let depth = self.path.len() - 1;
        let parent = &self.path[depth];
        // Levels count up from the leaves (0); the root is at `height - 1`.
        let level = u8::try_from(height - 1 - depth)
            .map_err(|_| corrupt(parent.id, "tree deeper than its header says"))?;
        let page = read_page(pages, parent.id)?;
        let node = Node::parse(&page, parent.id, level, &self.geo)?;
        let pos = node.child_pos_for(pages, key)?;
        // Deeper separators are tighter than the ones above them.
        let lower = if pos > 0 {
            load_key_into(pages, &self.geo, &node.key(pos - 1)?, &mut lower_buf)?;
            Some(lower_buf)
        } else {
            parent.lower.as_deref().map(|fence| {
                lower_buf.clear();
                lower_buf.extend_from_slice(fence);
                lower_buf
            })
        };
        let upper = if pos < node.count() {
            load_key_into(pages, &self.geo, &node.key(pos)?, &mut upper_buf)?;
            Some(upper_buf)
        } else {
            parent.upper.as_deref().map(|fence| {
                upper_buf.clear();
                upper_buf.extend_from_slice(fence);
                upper_buf
            })
        };
        Ok(CachedNode {
            id: node.child(pos)?,
            lower,
            upper,
        })
    }

    /// The cached leaf's id (set by a successful `locate`).
    fn leaf_id(&self) -> Option<PageId> {
        self.path.last().map(|leaf| leaf.id)
    }

    /// Inserts into the cached leaf when nothing else changes; `false`
    /// (nothing changed) otherwise.
    fn try_insert<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool> {
        let geo = &self.geo;
        let Some(id) = self.leaf_id() else {
            return Ok(false);
        };
        if key.len() > geo.key_inline_max || !geo.value_inline(key.len(), value.len()) {
            return Ok(false);
        }
        let k = KeySpec::with_chain(geo, key, None);
        let v = ValueSpec::Inline(value);
        let new_size = leaf_cell_size(&k, &v);
        let rightmost = self.path.last().is_some_and(|leaf| leaf.upper.is_none());
        let (found, idx, replace_fits) = {
            let page = read_page(pages, id)?;
            if self.prefetched != id {
                // A random batch finds each leaf cold: the search's probes
                // and the copy on write then overlap their misses instead
                // of waiting on memory one line after another.
                prefetch_page(&page);
                self.prefetched = id;
            }
            let node = Node::parse(&page, id, 0, geo)?;
            let (found, idx) = search_appending(pages, geo, &node, key)?;
            let count = node.count();
            if !found && rightmost && idx == count && count > 0 {
                // The same rule as the ordinary insert's rightmost append.
                if past_append_fill(node.used(), node.capacity(), new_size) {
                    let last = load_key(pages, geo, &node.key(count - 1)?)?;
                    drop(page);
                    return self.append_leaf(pages, header, &last, key, value);
                }
            }
            let replace_fits = found && {
                let cell = node.leaf_cell(idx)?;
                cell.key.overflow.is_none()
                    && matches!(cell.value, ValueLoc::Inline { .. })
                    && new_size <= cell.size
            };
            (found, idx, replace_fits)
        };
        // Only the leaf changes, every change through `node`: noted.
        let mut node = NodeMut::open_noted(pages.page_mut_noted(id)?, id, 0, geo)?;
        if found {
            if !replace_fits {
                return Ok(false);
            }
            node.overwrite_leaf_value(idx, leaf_flags(&k, &v), value.len(), &v.part())?;
            return Ok(true);
        }
        if !node.insert_cell_with(idx, new_size, |dst| write_leaf_cell(dst, &k, &v))? {
            let cell = leaf_cell_vec(&k, &v);
            return self.split_leaf(pages, header, key, idx, &cell);
        }
        header.len += 1;
        Ok(true)
    }

    /// Splits the full cached leaf for the new `cell` (at `idx`, key
    /// `key`) exactly as the ordinary insert does (the same
    /// [`split_node`], separators and root growth), up the cached path
    /// instead of a descent from the root. When no branch split, the path
    /// keeps the leaf's ancestors (their key ranges are unchanged), so the
    /// next key descends from the parent, not the root. `false` (nothing
    /// changed) when the leaf is the root: the ordinary insert grows the
    /// tree.
    ///
    /// [`split_node`]: super::insert::split_node
    fn split_leaf<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        key: &[u8],
        idx: usize,
        cell: &[u8],
    ) -> Result<bool> {
        let depth = self.path.len();
        if depth < 2 || self.tree != (header.root, header.height) {
            return Ok(false);
        }
        let geo = &self.geo;
        let leaf = self.path[depth - 1].id;
        let split = split_node(pages, geo, leaf, 0, idx, cell)?;
        // The child the key went down to: where the separator goes.
        let branch_splits = separators_up(pages, geo, header, &self.path, split, |node, pages| {
            node.child_pos_for(pages, key)
        })?;
        header.len += 1;
        if branch_splits > 0 || self.tree != (header.root, header.height) {
            self.path.clear();
        } else {
            // The parent now holds the separator; its own range is as before.
            self.drop_last();
        }
        Ok(true)
    }

    /// Starts the next rightmost leaf with the new entry, exactly as the
    /// ordinary insert's edge split does (the full leaf keeps its cells, the
    /// new leaf holds the entry, the separator goes up the rightmost path,
    /// splitting full branches and growing the root), without a descent
    /// from the root. `last` is the full leaf's last key. The path then
    /// ends at the new leaf when only the parent changed; it is dropped
    /// when a branch split. `false` (nothing changed) when the leaf is the
    /// root: the ordinary insert grows the tree.
    fn append_leaf<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        last: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> Result<bool> {
        let depth = self.path.len();
        if depth < 2 || last >= key {
            return Ok(false);
        }
        debug_assert!(self.path.iter().all(|node| node.upper.is_none()));
        let geo = &self.geo;
        let k = KeySpec::with_chain(geo, key, None);
        let v = ValueSpec::Inline(value);
        let split = edge_split(pages, geo, last, key, &k, &v)?;
        let new_leaf = Some(split.new_page);
        debug_assert!(!split.new_is_left);
        // The rightmost path: the child is the branch's last one.
        let splits_above = separators_up(pages, geo, header, &self.path, split, |node, _| {
            Ok(node.count())
        })?;
        header.len += 1;
        match new_leaf {
            Some(id) if splits_above == 0 && self.tree == (header.root, header.height) => {
                self.path[depth - 1] = CachedNode {
                    id,
                    lower: Some(separator(last, key).to_vec()),
                    upper: None,
                };
            }
            _ => self.path.clear(),
        }
        Ok(true)
    }

    /// Removes from the cached leaf when it keeps another cell, stays above
    /// the fill threshold and no overflow chain is involved; `false`
    /// (nothing changed) otherwise.
    fn try_remove<P: PageWrite>(
        &mut self,
        pages: &mut P,
        header: &mut TreeHeader,
        key: &[u8],
    ) -> Result<bool> {
        let geo = &self.geo;
        let Some(id) = self.leaf_id() else {
            return Ok(false);
        };
        let idx = {
            let page = read_page(pages, id)?;
            let node = Node::parse(&page, id, 0, geo)?;
            let (found, idx) = node.search(pages, key)?;
            if !found {
                // Absent: the ordinary call changes nothing either.
                return Ok(true);
            }
            let cell = node.leaf_cell(idx)?;
            let inline =
                cell.key.overflow.is_none() && matches!(cell.value, ValueLoc::Inline { .. });
            let used_after = node
                .used()
                .checked_sub(cell.size + SLOT_BYTES)
                .ok_or_else(|| corrupt(id, "cell larger than the page's used bytes"))?;
            // The same threshold as `Node::is_underfull`, after the removal.
            let stays_full_enough =
                node.count() > 1 && used_after >= node.capacity() / UNDERFULL_DIVISOR;
            if !inline || !stays_full_enough {
                return Ok(false);
            }
            idx
        };
        let mut node = NodeMut::open(pages.page_mut(id)?, id, 0, geo)?;
        node.remove_cells(idx..idx + 1)?;
        debug_assert!(!node.view().is_underfull());
        header.len = header
            .len
            .checked_sub(1)
            .ok_or_else(|| corrupt(header.root, "tree header counts no entries"))?;
        Ok(true)
    }
}
