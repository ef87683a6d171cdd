//! Applying a batch of writes (usually in key order, as a transaction's
//! write buffer is) without descending from the root for every key.
//!
//! [`BatchWriter`] remembers the leaf the last write went to and the key
//! range that leaf covers (its fences: the separators around it in its
//! parents). A write whose key lies in that range and that changes only the
//! leaf — a new inline cell that fits, an inline value replaced by one no
//! longer, a removal that leaves the leaf above the fill threshold — is done
//! right there. Anything else (a split, an overflow chain, an underfull
//! leaf, a key outside the range) goes through the ordinary [`insert`] or
//! [`remove`], after which the cache is dropped and the next write finds
//! its leaf afresh. The resulting tree is the same as with one ordinary
//! call per key: the fast path does exactly what those calls do when no
//! page but the leaf changes.
//!
//! [`insert`]: super::insert::insert
//! [`remove`]: super::remove::remove

use mmsb_wal::PageId;

use super::cell::{leaf_cell_size, leaf_flags, write_leaf_cell, KeySpec, ValueSpec};
use super::format::{corrupt, read_page, Geometry, MAX_KEY_BYTES, SLOT_BYTES, UNDERFULL_DIVISOR};
use super::keys::load_key;
use super::node::{Node, NodeMut, ValueLoc};
use super::TreeHeader;
use crate::error::Result;
use crate::page_access::PageWrite;

/// The leaf the last write went to, and the keys it may hold.
#[derive(Debug)]
struct CachedLeaf {
    id: PageId,
    /// Keys `>= lower` (none: no lower bound).
    lower: Option<Vec<u8>>,
    /// Keys `< upper` (none: no upper bound).
    upper: Option<Vec<u8>>,
}

impl CachedLeaf {
    fn covers(&self, key: &[u8]) -> bool {
        self.lower.as_deref().is_none_or(|l| l <= key)
            && self.upper.as_deref().is_none_or(|u| key < u)
    }
}

/// Applies inserts and removals to one tree, reusing the last leaf's
/// position (see the module docs). Use one per tree and batch; any order of
/// keys is correct, ascending order is fast.
#[derive(Debug)]
pub struct BatchWriter {
    geo: Geometry,
    leaf: Option<CachedLeaf>,
    /// Writes done in the cached leaf without a descent (for tests and tuning).
    fast_writes: u64,
}

impl BatchWriter {
    /// A writer for trees on pages of `page_len` bytes.
    pub fn new(page_len: usize) -> Result<Self> {
        Ok(BatchWriter {
            geo: Geometry::new(page_len)?,
            leaf: None,
            fast_writes: 0,
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
        self.leaf = None;
        super::insert::insert(pages, header, key, value).map(drop)
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
        self.leaf = None;
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
        if self.leaf.as_ref().is_some_and(|leaf| leaf.covers(key)) {
            return Ok(true);
        }
        self.leaf = None;
        header.validate()?;
        if header.is_empty() {
            return Ok(false);
        }
        let (mut lower, mut upper) = (None, None);
        let mut id = header.root;
        for level in (1..header.height).rev() {
            let page = read_page(pages, id)?;
            let node = Node::parse(&page, id, level, &self.geo)?;
            let pos = node.child_pos_for(pages, key)?;
            // Deeper separators are tighter than the ones above them.
            if pos > 0 {
                lower = Some(load_key(pages, &self.geo, &node.key(pos - 1)?)?);
            }
            if pos < node.count() {
                upper = Some(load_key(pages, &self.geo, &node.key(pos)?)?);
            }
            id = node.child(pos)?;
        }
        let leaf = CachedLeaf { id, lower, upper };
        debug_assert!(leaf.covers(key), "a descent ends in the key's leaf");
        self.leaf = Some(leaf);
        Ok(true)
    }

    /// The cached leaf's id (set by a successful `locate`).
    fn leaf_id(&self) -> Option<PageId> {
        self.leaf.as_ref().map(|leaf| leaf.id)
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
        let (found, idx, replace_fits) = {
            let page = read_page(pages, id)?;
            let node = Node::parse(&page, id, 0, geo)?;
            let (found, idx) = node.search(pages, key)?;
            let replace_fits = found && {
                let cell = node.leaf_cell(idx)?;
                cell.key.overflow.is_none()
                    && matches!(cell.value, ValueLoc::Inline { .. })
                    && new_size <= cell.size
            };
            (found, idx, replace_fits)
        };
        let mut node = NodeMut::open(pages.page_mut(id)?, id, 0, geo)?;
        if found {
            if !replace_fits {
                return Ok(false);
            }
            node.overwrite_leaf_value(idx, leaf_flags(&k, &v), value.len(), &v.part())?;
            return Ok(true);
        }
        if !node.insert_cell_with(idx, new_size, |dst| write_leaf_cell(dst, &k, &v))? {
            return Ok(false);
        }
        header.len += 1;
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
