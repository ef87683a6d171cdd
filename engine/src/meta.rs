//! The meta page (page 1): allocation high-water mark, the persistent free
//! list, the catalog tree, and the next table id. It changes through deltas like every other
//! page, so allocation is as transactional and as durable as any write.
//!
//! Free pages form a singly linked list: the first 8 bytes of a free page
//! hold the id of the next free page (0 ends the list).

use mmsb_wal::PageId;

use crate::btree::TreeHeader;
use crate::error::{Error, Result};

/// The page that holds the meta record.
pub const META_PAGE: PageId = PageId(1);
/// Magic at the start of the meta page.
const META_MAGIC: u32 = 0x4154_454d; // "META"
/// Version of the meta page layout.
const META_VERSION: u32 = 1;
/// Offsets of the meta fields.
const PAGE_COUNT_AT: usize = 8;
const FREE_HEAD_AT: usize = 16;
const FREE_COUNT_AT: usize = 24;
const CATALOG_AT: usize = 32;
const NEXT_TABLE_ID_AT: usize = 56;
/// Bytes of the meta record.
pub const META_LEN: usize = 64;

/// Decoded meta fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Pages `0..page_count` exist (allocated or free).
    pub page_count: u64,
    /// First page of the free list; `PageId(0)` when empty.
    pub free_head: PageId,
    /// Length of the free list.
    pub free_count: u64,
    /// The catalog B+tree (table name → table entry).
    pub catalog: TreeHeader,
    /// Id the next created table gets (ids are never reused).
    pub next_table_id: u64,
}

impl Meta {
    /// The meta record of a new database: header and meta pages only.
    pub fn new_database() -> Meta {
        Meta {
            page_count: 2,
            free_head: PageId(0),
            free_count: 0,
            catalog: TreeHeader::EMPTY,
            next_table_id: 1,
        }
    }

    /// Writes the record into the first [`META_LEN`] bytes of `page`.
    pub fn encode_into(&self, page: &mut [u8]) {
        put_u32(page, 0, META_MAGIC);
        put_u32(page, 4, META_VERSION);
        put_u64(page, PAGE_COUNT_AT, self.page_count);
        put_u64(page, FREE_HEAD_AT, self.free_head.get());
        put_u64(page, FREE_COUNT_AT, self.free_count);
        page[CATALOG_AT..CATALOG_AT + TreeHeader::ENCODED_BYTES]
            .copy_from_slice(&self.catalog.encode());
        put_u64(page, NEXT_TABLE_ID_AT, self.next_table_id);
    }

    /// Reads and validates the record from a meta page.
    pub fn decode(page: &[u8]) -> Result<Meta> {
        if page.len() < META_LEN || get_u32(page, 0) != META_MAGIC {
            return Err(Error::Corrupted("meta page has no meta magic".into()));
        }
        let version = get_u32(page, 4);
        if version != META_VERSION {
            return Err(Error::Corrupted(format!(
                "meta page version {version} unknown"
            )));
        }
        let meta = Meta {
            page_count: get_u64(page, PAGE_COUNT_AT),
            free_head: PageId(get_u64(page, FREE_HEAD_AT)),
            free_count: get_u64(page, FREE_COUNT_AT),
            catalog: TreeHeader::decode(&page[CATALOG_AT..CATALOG_AT + TreeHeader::ENCODED_BYTES])?,
            next_table_id: get_u64(page, NEXT_TABLE_ID_AT),
        };
        let in_range = |id: PageId| id.get() == 0 || (2..meta.page_count).contains(&id.get());
        if meta.page_count < 2 || !in_range(meta.free_head) || !in_range(meta.catalog.root) {
            return Err(Error::Corrupted(format!(
                "meta page fields out of range: {meta:?}"
            )));
        }
        if (meta.free_count == 0) != (meta.free_head.get() == 0)
            || meta.free_count >= meta.page_count
        {
            return Err(Error::Corrupted(format!(
                "meta free list is inconsistent: {meta:?}"
            )));
        }
        Ok(meta)
    }
}

/// Reads the "next free page" link stored in a free page.
pub fn free_link(page: &[u8]) -> PageId {
    PageId(get_u64(page, 0))
}

/// Stores the "next free page" link into a free page.
pub fn set_free_link(page: &mut [u8], next: PageId) {
    put_u64(page, 0, next.get());
}

fn put_u32(page: &mut [u8], at: usize, value: u32) {
    page[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(page: &mut [u8], at: usize, value: u64) {
    page[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(page: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&page[at..at + 4]);
    u32::from_le_bytes(word)
}

fn get_u64(page: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&page[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let meta = Meta {
            page_count: 10,
            free_head: PageId(4),
            free_count: 2,
            catalog: TreeHeader {
                root: PageId(3),
                len: 4,
                height: 1,
            },
            next_table_id: 9,
        };
        let mut page = vec![0u8; 4080];
        meta.encode_into(&mut page);
        assert_eq!(Meta::decode(&page).unwrap(), meta);
    }

    #[test]
    fn inconsistent_meta_is_corruption() {
        let mut page = vec![0u8; 4080];
        assert!(Meta::decode(&page).is_err(), "zero page has no magic");
        let bad = Meta {
            page_count: 10,
            free_head: PageId(12),
            free_count: 1,
            catalog: TreeHeader::EMPTY,
            next_table_id: 1,
        };
        bad.encode_into(&mut page);
        assert!(matches!(Meta::decode(&page), Err(Error::Corrupted(_))));
        let bad = Meta {
            free_head: PageId(0),
            free_count: 3,
            ..bad
        };
        bad.encode_into(&mut page);
        assert!(matches!(Meta::decode(&page), Err(Error::Corrupted(_))));
    }
}
