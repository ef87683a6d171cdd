//! B+tree tables over pages: ordered byte-string keys mapped to byte-string
//! values, stored on fixed-size pages reached through [`PageRead`] /
//! [`PageWrite`]. The tree knows nothing of the TLog, MVCC or files; every
//! structural change (split, merge, root growth or collapse) is an ordinary
//! page write of the caller's transaction, so it commits all or nothing.
//!
//! - Leaf and branch pages are slotted pages (binary search over a `u16` slot
//!   array); branch separators are suffix-truncated.
//! - Values that do not fit a cell, and the tails of long keys, live in
//!   overflow page chains.
//! - Every page byte is untrusted: a malformed page yields
//!   [`Error::Corrupted`], never a panic.
//! - After an `Err` from [`insert`], [`remove`] or [`free_tree`] the pages
//!   may be half changed: the caller must roll its transaction back.
//!
//! The byte layout is documented in `docs/format-btree.md`.

mod apply;
mod cell;
mod check;
mod cursor;
mod format;
mod insert;
mod keys;
mod node;
mod overflow;
mod remove;
#[cfg(test)]
mod tests;
mod walk;

use std::ops::RangeBounds;

use mmsb_wal::PageId;

use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageWrite};

pub use apply::BatchWriter;
pub use check::TreeStats;
pub(crate) use cursor::{get_cached, get_with, range_cached, UpperPages};
pub use cursor::{KeyGuard, PageSlice, RangeIter, ValueGuard};
pub use format::{
    FORMAT_VERSION, KIND_BRANCH, KIND_LEAF, KIND_OVERFLOW, MAX_KEY_BYTES, MAX_PAGE_LEN,
    MAX_TREE_HEIGHT, MAX_VALUE_BYTES, MIN_PAGE_LEN,
};
pub(crate) use walk::{walk_tolerant, LostPage};

/// What the catalog stores per table to find its tree (see
/// [`TreeHeader::encode`]). Persisted by the caller after every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeHeader {
    /// Root page; `PageId(0)` for an empty tree, which owns no pages.
    pub root: PageId,
    /// Number of entries.
    pub len: u64,
    /// Levels: 0 for an empty tree, 1 when the root is a leaf.
    pub height: u8,
}

impl TreeHeader {
    /// The empty tree.
    pub const EMPTY: TreeHeader = TreeHeader {
        root: PageId(0),
        len: 0,
        height: 0,
    };

    /// Bytes of [`TreeHeader::encode`]'s output.
    pub const ENCODED_BYTES: usize = 24;

    /// Whether the tree has no entries (and no pages).
    pub fn is_empty(&self) -> bool {
        self.root.0 == 0
    }

    /// Checks the fields agree with each other; `Corrupted` otherwise.
    pub fn validate(&self) -> Result<()> {
        let empty_ok = self.root.0 == 0 && self.height == 0 && self.len == 0;
        let tree_ok =
            self.root.0 != 0 && self.len > 0 && (1..=MAX_TREE_HEIGHT).contains(&self.height);
        if empty_ok || tree_ok {
            Ok(())
        } else {
            Err(Error::Corrupted(format!(
                "inconsistent B+tree header {self:?}"
            )))
        }
    }

    /// Little-endian encoding: root `u64`, len `u64`, height `u8`, format
    /// version `u8`, 6 zero bytes.
    pub fn encode(&self) -> [u8; Self::ENCODED_BYTES] {
        let mut out = [0u8; Self::ENCODED_BYTES];
        out[0..8].copy_from_slice(&self.root.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16] = self.height;
        out[17] = FORMAT_VERSION;
        out
    }

    /// Decodes [`TreeHeader::encode`]'s output; `Corrupted` on anything else.
    pub fn decode(bytes: &[u8]) -> Result<TreeHeader> {
        let bad = |what: &str| Error::Corrupted(format!("B+tree header: {what}"));
        if bytes.len() != Self::ENCODED_BYTES {
            return Err(bad("wrong length"));
        }
        if bytes[17] != FORMAT_VERSION || bytes[18..].iter().any(|&b| b != 0) {
            return Err(bad("unknown version or nonzero reserved bytes"));
        }
        let u64_at = |off: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[off..off + 8]);
            u64::from_le_bytes(a)
        };
        let header = TreeHeader {
            root: PageId(u64_at(0)),
            len: u64_at(8),
            height: bytes[16],
        };
        header.validate()?;
        Ok(header)
    }
}

/// The value stored under `key`. Inline values are borrowed from their page
/// (no allocation); overflow values are read into owned bytes.
pub fn get<P: PageRead>(pages: &P, header: &TreeHeader, key: &[u8]) -> Result<Option<ValueGuard>> {
    cursor::get(pages, header, key)
}

/// Stores `value` under `key`, returning the value it replaces. Updates
/// `header` (root, height, len). `TooLarge` when `key` exceeds
/// [`MAX_KEY_BYTES`] or `value` exceeds [`MAX_VALUE_BYTES`].
pub fn insert<P: PageWrite>(
    pages: &mut P,
    header: &mut TreeHeader,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Vec<u8>>> {
    insert::insert(pages, header, key, value)
}

/// Removes `key`, returning its value; underfull pages are merged or
/// refilled and freed pages (overflow included) go back via `free_page`.
pub fn remove<P: PageWrite>(
    pages: &mut P,
    header: &mut TreeHeader,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    remove::remove(pages, header, key)
}

/// Entries whose keys lie in `bounds`, in key order, iterable from both
/// ends. Pass `..` or a pair of slice bounds, e.g.
/// `(Bound::Included(&b"a"[..]), Bound::Excluded(&b"m"[..]))` (`a..b` over
/// slices does not implement `RangeBounds<[u8]>`). A range whose start lies
/// after its end is empty (no panic, unlike `BTreeMap::range`).
pub fn range<'a, P: PageRead, R: RangeBounds<[u8]>>(
    pages: &'a P,
    header: &TreeHeader,
    bounds: R,
) -> Result<RangeIter<'a, P>> {
    cursor::range(pages, header, bounds)
}

/// Every entry, in key order (same as `range(pages, header, ..)`).
pub fn iter<'a, P: PageRead>(pages: &'a P, header: &TreeHeader) -> Result<RangeIter<'a, P>> {
    cursor::range::<P, std::ops::RangeFull>(pages, header, ..)
}

/// The entry with the smallest key.
pub fn first<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
) -> Result<Option<(KeyGuard, ValueGuard)>> {
    cursor::edge_entry(pages, header, true)
}

/// The entry with the largest key.
pub fn last<P: PageRead>(pages: &P, header: &TreeHeader) -> Result<Option<(KeyGuard, ValueGuard)>> {
    cursor::edge_entry(pages, header, false)
}

/// Frees every page of the tree (nodes and overflow chains) and leaves
/// `header` empty: dropping or clearing a table.
pub fn free_tree<P: PageWrite>(pages: &mut P, header: &mut TreeHeader) -> Result<()> {
    remove::free_tree(pages, header)
}

/// Removes every entry: the same as [`free_tree`].
pub fn clear<P: PageWrite>(pages: &mut P, header: &mut TreeHeader) -> Result<()> {
    free_tree(pages, header)
}

/// Verifies every invariant of the tree (see the `check` module) and
/// returns its page counts and fill. `Corrupted` names the first problem.
pub fn check_tree<P: PageRead>(pages: &P, header: &TreeHeader) -> Result<TreeStats> {
    check::check_tree(pages, header)
}
