//! On-page format constants of B+tree pages (see `docs/format-btree.md`), the
//! per-page-size [`Geometry`] derived from them, and little-endian byte helpers.
//!
//! Everything that decides where a byte lives on a leaf, branch or overflow
//! page is named here, so the layout document and the code share one source.

use mmsb_wal::PageId;

use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageRef};

/// Version of the B+tree page format written into every page (byte 1).
pub const FORMAT_VERSION: u8 = 1;

/// Page-kind byte (byte 0) of a leaf page.
pub const KIND_LEAF: u8 = 0xB1;
/// Page-kind byte (byte 0) of a branch (interior) page.
pub const KIND_BRANCH: u8 = 0xB2;
/// Page-kind byte (byte 0) of an overflow page.
pub const KIND_OVERFLOW: u8 = 0xB3;

/// Longest key accepted by `insert`, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Longest value accepted by `insert`, in bytes (the format allows up to `u32::MAX`).
pub const MAX_VALUE_BYTES: usize = 256 << 20;
/// Most levels a tree may have; deeper headers or pages are corrupt.
pub const MAX_TREE_HEIGHT: u8 = 32;
/// Most bytes reserved up front for a key or value read from overflow
/// pages: the length comes from a cell on disk, so a damaged cell must not
/// cost an allocation of up to [`MAX_VALUE_BYTES`] before its chain fails.
pub(crate) const OVERFLOW_PREALLOC_BYTES_MAX: usize = 1 << 20;
/// Smallest usable page length the tree accepts. mmsb's page sizes give
/// 4080..=65520; smaller lengths exist so tests can build deep trees cheaply.
pub const MIN_PAGE_LEN: usize = 256;
/// Largest usable page length the tree accepts (slot offsets are `u16`).
pub const MAX_PAGE_LEN: usize = u16::MAX as usize;

/// Every leaf/branch page holds at least this many largest-size cells.
pub(crate) const MIN_CELLS_PER_PAGE: usize = 4;
/// A non-root node whose used bytes fall below `capacity / UNDERFULL_DIVISOR`
/// (25 %, LMDB's and BoltDB's bound) is merged with or refilled from a
/// sibling, so every non-root node stays at least a quarter full after a
/// removal (see `docs/format-btree.md`, *Fill*).
pub(crate) const UNDERFULL_DIVISOR: usize = 4;

// Node header (leaf and branch), byte offsets.
pub(crate) const OFF_KIND: usize = 0;
pub(crate) const OFF_VERSION: usize = 1;
pub(crate) const OFF_LEVEL: usize = 2;
pub(crate) const OFF_RESERVED_BYTE: usize = 3;
pub(crate) const OFF_COUNT: usize = 4;
pub(crate) const OFF_CONTENT: usize = 6;
pub(crate) const OFF_FRAG: usize = 8;
pub(crate) const OFF_RESERVED_TAIL: usize = 10;
pub(crate) const OFF_LEFTMOST: usize = 16;
/// Bytes of a leaf page header; the slot array follows.
pub(crate) const LEAF_HEADER_BYTES: usize = 16;
/// Bytes of a branch page header (leaf header + leftmost child id).
pub(crate) const BRANCH_HEADER_BYTES: usize = 24;
/// Bytes of one slot (a `u16` cell offset).
pub(crate) const SLOT_BYTES: usize = 2;

// Cells.
pub(crate) const FLAG_KEY_OVERFLOW: u8 = 0x01;
pub(crate) const FLAG_VALUE_OVERFLOW: u8 = 0x02;
/// flags u8, key_len u16, value_len u32.
pub(crate) const LEAF_CELL_HEADER_BYTES: usize = 7;
/// flags u8, key_len u16, child u64.
pub(crate) const BRANCH_CELL_HEADER_BYTES: usize = 11;
pub(crate) const CELL_OFF_KEY_LEN: usize = 1;
pub(crate) const CELL_OFF_VALUE_LEN: usize = 3;
pub(crate) const CELL_OFF_CHILD: usize = 3;
pub(crate) const PAGE_ID_BYTES: usize = 8;

// Overflow page header.
pub(crate) const OVF_OFF_USED: usize = 4;
pub(crate) const OVF_OFF_NEXT: usize = 8;
/// Bytes of an overflow page header; the payload follows.
pub(crate) const OVF_HEADER_BYTES: usize = 16;

/// Sizes derived from the usable page length; fixed for a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Usable bytes per page.
    pub(crate) page_len: usize,
    /// Largest cell (without its slot) a leaf or branch page ever holds.
    pub(crate) max_cell: usize,
    /// Keys up to this many bytes are stored whole in their cell.
    pub(crate) key_inline_max: usize,
    /// Bytes of a longer key kept in the cell; the rest goes to overflow.
    pub(crate) key_prefix: usize,
    /// Payload bytes per overflow page.
    pub(crate) overflow_payload: usize,
}

impl Geometry {
    /// The geometry of pages with `page_len` usable bytes.
    pub(crate) fn new(page_len: usize) -> Result<Geometry> {
        if !(MIN_PAGE_LEN..=MAX_PAGE_LEN).contains(&page_len) {
            return Err(Error::InvalidArgument(format!(
                "B+tree page length {page_len} is outside {MIN_PAGE_LEN}..={MAX_PAGE_LEN}"
            )));
        }
        let max_cell = (page_len - BRANCH_HEADER_BYTES) / MIN_CELLS_PER_PAGE - SLOT_BYTES;
        // A leaf cell with an inline key must still fit a value pointer.
        let key_inline_max = max_cell - LEAF_CELL_HEADER_BYTES - PAGE_ID_BYTES;
        let key_prefix = key_inline_max - PAGE_ID_BYTES;
        Ok(Geometry {
            page_len,
            max_cell,
            key_inline_max,
            key_prefix,
            overflow_payload: page_len - OVF_HEADER_BYTES,
        })
    }

    /// Bytes a key of `key_len` bytes occupies inside a cell.
    pub(crate) fn stored_key_len(&self, key_len: usize) -> usize {
        if key_len <= self.key_inline_max {
            key_len
        } else {
            self.key_prefix + PAGE_ID_BYTES
        }
    }

    /// Whether a value of `value_len` bytes is stored inside a leaf cell whose
    /// key occupies `stored_key_len` bytes.
    pub(crate) fn value_inline(&self, stored_key_len: usize, value_len: usize) -> bool {
        LEAF_CELL_HEADER_BYTES + stored_key_len + value_len <= self.max_cell
    }

    /// Overflow pages needed for `len` payload bytes.
    pub(crate) fn overflow_pages(&self, len: usize) -> usize {
        len.div_ceil(self.overflow_payload)
    }
}

/// A `Corrupted` error naming the page.
pub(crate) fn corrupt(id: PageId, what: impl std::fmt::Display) -> Error {
    Error::Corrupted(format!("B+tree {id}: {what}"))
}

/// Reads page `id` for the tree. The id came from a page or the tree
/// header, so an id outside the database means those bytes are corrupt.
pub(crate) fn read_page<P: PageRead>(pages: &P, id: PageId) -> Result<PageRef> {
    pages.read_page(id).map_err(|e| match e {
        Error::PageOutOfRange(id) => corrupt(id, "referenced page is not a data page"),
        e => e,
    })
}

/// Reads a little-endian `u16` at `off`, `None` when out of bounds.
#[inline]
pub(crate) fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Reads a little-endian `u32` at `off`, `None` when out of bounds.
#[inline]
pub(crate) fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

/// Reads a little-endian `u64` at `off`, `None` when out of bounds.
#[inline]
pub(crate) fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Writes a little-endian `u16` at `off` (an offset this code computed and checked).
#[inline]
pub(crate) fn wr_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u32` at `off`.
#[inline]
pub(crate) fn wr_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u64` at `off`.
#[inline]
pub(crate) fn wr_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_at_product_sizes() {
        let g = Geometry::new(4080).expect("4 KiB");
        assert_eq!(g.max_cell, 1012);
        assert_eq!(g.key_inline_max, 997);
        assert_eq!(g.key_prefix, 989);
        assert_eq!(g.overflow_payload, 4064);
        let g = Geometry::new(65520).expect("64 KiB");
        assert!(
            g.key_inline_max >= MAX_KEY_BYTES,
            "no key overflow at 64 KiB"
        );
        assert!(Geometry::new(MIN_PAGE_LEN - 1).is_err());
        assert!(Geometry::new(MAX_PAGE_LEN + 1).is_err());
    }

    #[test]
    fn byte_helpers_bounds_check() {
        let b = [1u8, 2, 3];
        assert_eq!(rd_u16(&b, 1), Some(0x0302));
        assert_eq!(rd_u16(&b, 2), None);
        assert_eq!(rd_u64(&b, usize::MAX), None);
    }
}
