//! The table catalog: a B+tree (its header in the meta page) from table name
//! to [`TableEntry`] (the table's id and the header of its B+tree).
//!
//! This module knows nothing of transactions or isolation: it reads and
//! writes through the page traits like any other tree user.

use crate::btree::{self, TreeHeader};
use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageWrite};

/// Longest table name, in bytes of UTF-8.
pub const MAX_TABLE_NAME_BYTES: usize = 255;
/// Bytes of an encoded [`TableEntry`].
const ENTRY_BYTES: usize = 8 + TreeHeader::ENCODED_BYTES;

/// What the catalog knows about one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// Unique for the life of the database (never reused after a drop).
    pub id: u64,
    /// The table's B+tree.
    pub tree: TreeHeader,
}

impl TableEntry {
    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..].copy_from_slice(&self.tree.encode());
        out
    }

    fn decode(bytes: &[u8]) -> Result<TableEntry> {
        if bytes.len() != ENTRY_BYTES {
            return Err(Error::Corrupted(format!(
                "catalog entry of {} bytes, expected {ENTRY_BYTES}",
                bytes.len()
            )));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[..8]);
        Ok(TableEntry {
            id: u64::from_le_bytes(id),
            tree: TreeHeader::decode(&bytes[8..])?,
        })
    }
}

/// Checks a table name: 1 to [`MAX_TABLE_NAME_BYTES`] bytes.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TABLE_NAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "table name must be 1 to {MAX_TABLE_NAME_BYTES} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

/// The entry of table `name`, if it exists.
pub fn lookup<P: PageRead>(
    pages: &P,
    catalog: &TreeHeader,
    name: &str,
) -> Result<Option<TableEntry>> {
    btree::get(pages, catalog, name.as_bytes())?
        .map(|value| TableEntry::decode(&value))
        .transpose()
}

/// Stores (creates or updates) the entry of table `name`.
pub fn store<P: PageWrite>(
    pages: &mut P,
    catalog: &mut TreeHeader,
    name: &str,
    entry: &TableEntry,
) -> Result<()> {
    validate_name(name)?;
    btree::insert(pages, catalog, name.as_bytes(), &entry.encode())?;
    Ok(())
}

/// Removes the entry of table `name`; returns it if it existed.
pub fn remove<P: PageWrite>(
    pages: &mut P,
    catalog: &mut TreeHeader,
    name: &str,
) -> Result<Option<TableEntry>> {
    btree::remove(pages, catalog, name.as_bytes())?
        .map(|bytes| TableEntry::decode(&bytes))
        .transpose()
}

/// Most catalog entries reserved up front, whatever count the meta page claims.
const CATALOG_PREALLOC_ENTRIES_MAX: usize = 1024;

/// Every table, in name order.
pub fn list<P: PageRead>(pages: &P, catalog: &TreeHeader) -> Result<Vec<(String, TableEntry)>> {
    // The count comes from disk: a damaged meta page must not make us reserve
    // gigabytes (fuzz/RESULTS.md, finding 1). Grow as entries really arrive.
    let reserve = usize::try_from(catalog.len)
        .unwrap_or(usize::MAX)
        .min(CATALOG_PREALLOC_ENTRIES_MAX);
    let mut tables = Vec::with_capacity(reserve);
    for entry in btree::iter(pages, catalog)? {
        let (name, value) = entry?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| Error::Corrupted("catalog holds a table name that is not UTF-8".into()))?;
        tables.push((name, TableEntry::decode(&value)?));
    }
    Ok(tables)
}

/// Decodes one catalog value (a [`TableEntry`]), for the tolerant catalog
/// walk of `mmsb check` and salvage.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<TableEntry> {
    TableEntry::decode(bytes)
}
