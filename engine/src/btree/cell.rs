//! Building cells: a key or value is placed inline or in an overflow chain
//! by the [`Geometry`]'s rules, then encoded as a leaf cell
//! (`flags, key_len, value_len, key, value`) or branch cell
//! (`flags, key_len, child, key`).

use mmsb_wal::PageId;

use super::format::*;
use super::overflow::write_chain;
use crate::error::Result;
use crate::page_access::PageWrite;

/// A key ready to be written into a cell.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeySpec<'k> {
    /// Full key length.
    pub(crate) len: usize,
    /// Bytes kept in the cell (whole key or its prefix).
    pub(crate) local: &'k [u8],
    /// Chain holding the rest of the key.
    pub(crate) overflow: Option<PageId>,
}

impl<'k> KeySpec<'k> {
    /// `key` with its suffix already stored in the chain at `overflow` (if
    /// the geometry says the key overflows).
    pub(crate) fn with_chain(geo: &Geometry, key: &'k [u8], overflow: Option<PageId>) -> Self {
        debug_assert_eq!(overflow.is_some(), key.len() > geo.key_inline_max);
        let local = if overflow.is_some() {
            &key[..geo.key_prefix]
        } else {
            key
        };
        KeySpec {
            len: key.len(),
            local,
            overflow,
        }
    }

    /// Bytes the key occupies in a cell.
    pub(crate) fn stored_len(&self) -> usize {
        self.local.len()
            + if self.overflow.is_some() {
                PAGE_ID_BYTES
            } else {
                0
            }
    }

    fn flags(&self) -> u8 {
        if self.overflow.is_some() {
            FLAG_KEY_OVERFLOW
        } else {
            0
        }
    }

    fn write(&self, dst: &mut [u8]) {
        dst[..self.local.len()].copy_from_slice(self.local);
        if let Some(first) = self.overflow {
            wr_u64(dst, self.local.len(), first.0);
        }
    }
}

/// Stores `key` for a new cell, writing its suffix to a fresh overflow chain
/// when it is longer than the geometry's inline limit.
pub(crate) fn store_key<'k, P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    key: &'k [u8],
) -> Result<KeySpec<'k>> {
    let overflow = if key.len() > geo.key_inline_max {
        Some(write_chain(pages, geo, &key[geo.key_prefix..])?)
    } else {
        None
    };
    Ok(KeySpec::with_chain(geo, key, overflow))
}

/// A value ready to be written into a leaf cell.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ValueSpec<'v> {
    /// Stored in the cell.
    Inline(&'v [u8]),
    /// Stored in an overflow chain.
    Overflow {
        /// First page of the chain.
        first: PageId,
        /// Value length.
        len: usize,
    },
}

impl ValueSpec<'_> {
    /// Value length.
    pub(crate) fn len(&self) -> usize {
        match *self {
            ValueSpec::Inline(v) => v.len(),
            ValueSpec::Overflow { len, .. } => len,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            ValueSpec::Inline(_) => 0,
            ValueSpec::Overflow { .. } => FLAG_VALUE_OVERFLOW,
        }
    }

    /// Bytes the value occupies in a cell.
    pub(crate) fn stored_len(&self) -> usize {
        match self {
            ValueSpec::Inline(v) => v.len(),
            ValueSpec::Overflow { .. } => PAGE_ID_BYTES,
        }
    }

    /// The bytes written into the cell (the value or the chain's first page id).
    pub(crate) fn part(&self) -> ValuePart<'_> {
        match *self {
            ValueSpec::Inline(v) => ValuePart::Bytes(v),
            ValueSpec::Overflow { first, .. } => ValuePart::Id(first.0.to_le_bytes()),
        }
    }
}

/// The bytes of a value inside its cell.
pub(crate) enum ValuePart<'v> {
    /// Inline value bytes.
    Bytes(&'v [u8]),
    /// Little-endian first overflow page id.
    Id([u8; PAGE_ID_BYTES]),
}

impl std::ops::Deref for ValuePart<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ValuePart::Bytes(b) => b,
            ValuePart::Id(id) => id,
        }
    }
}

/// Stores `value` for a leaf cell whose key takes `stored_key_len` bytes:
/// inline when the cell stays within the geometry's limit, else in a chain.
pub(crate) fn store_value<'v, P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    stored_key_len: usize,
    value: &'v [u8],
) -> Result<ValueSpec<'v>> {
    if geo.value_inline(stored_key_len, value.len()) {
        Ok(ValueSpec::Inline(value))
    } else {
        let first = write_chain(pages, geo, value)?;
        Ok(ValueSpec::Overflow {
            first,
            len: value.len(),
        })
    }
}

/// Flags byte of a leaf cell.
pub(crate) fn leaf_flags(key: &KeySpec<'_>, value: &ValueSpec<'_>) -> u8 {
    key.flags() | value.flags()
}

/// Bytes of a leaf cell.
pub(crate) fn leaf_cell_size(key: &KeySpec<'_>, value: &ValueSpec<'_>) -> usize {
    LEAF_CELL_HEADER_BYTES + key.stored_len() + value.stored_len()
}

/// Encodes a leaf cell into `dst` (exactly [`leaf_cell_size`] bytes).
pub(crate) fn write_leaf_cell(dst: &mut [u8], key: &KeySpec<'_>, value: &ValueSpec<'_>) {
    debug_assert_eq!(dst.len(), leaf_cell_size(key, value));
    dst[0] = leaf_flags(key, value);
    wr_u16(dst, CELL_OFF_KEY_LEN, key.len as u16);
    wr_u32(dst, CELL_OFF_VALUE_LEN, value.len() as u32);
    let k = LEAF_CELL_HEADER_BYTES;
    key.write(&mut dst[k..k + key.stored_len()]);
    dst[k + key.stored_len()..].copy_from_slice(&value.part());
}

/// A leaf cell as an owned buffer.
pub(crate) fn leaf_cell_vec(key: &KeySpec<'_>, value: &ValueSpec<'_>) -> Vec<u8> {
    let mut cell = vec![0; leaf_cell_size(key, value)];
    write_leaf_cell(&mut cell, key, value);
    cell
}

/// A branch cell (`key`, `child`) as an owned buffer.
pub(crate) fn branch_cell_vec(key: &KeySpec<'_>, child: PageId) -> Vec<u8> {
    let mut cell = vec![0; BRANCH_CELL_HEADER_BYTES + key.stored_len()];
    cell[0] = key.flags();
    wr_u16(&mut cell, CELL_OFF_KEY_LEN, key.len as u16);
    wr_u64(&mut cell, CELL_OFF_CHILD, child.0);
    key.write(&mut cell[BRANCH_CELL_HEADER_BYTES..]);
    cell
}

/// The child id of an encoded branch cell.
pub(crate) fn cell_child(cell: &[u8]) -> PageId {
    PageId(rd_u64(cell, CELL_OFF_CHILD).unwrap_or(0))
}

/// Sets the child id of an encoded branch cell.
pub(crate) fn set_cell_child(cell: &mut [u8], child: PageId) {
    wr_u64(cell, CELL_OFF_CHILD, child.0);
}
