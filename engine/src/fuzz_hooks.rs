//! Entry points for the fuzz targets (`fuzz-targets/`, `fuzz/`) into
//! decoders that are private to the engine: the meta page and the table
//! catalog. Hidden from the documentation and not a stable API; they add no
//! behaviour, only reach.

use mmsb_wal::PageId;

use crate::btree::TreeHeader;
use crate::catalog::{self, TableEntry};
use crate::error::Result;
use crate::meta::{Meta, META_PAGE};
use crate::page_access::{PageRead, PageWrite};

/// The page that holds the meta record (page 1).
pub const META_PAGE_ID: PageId = META_PAGE;

/// Bytes of the meta record at the start of the meta page.
pub const META_RECORD_BYTES: usize = crate::meta::META_LEN;

/// Decodes the meta record of `page` (a meta page's payload); returns its
/// page count and catalog tree. `Corrupted` on anything malformed.
pub fn decode_meta(page: &[u8]) -> Result<(u64, TreeHeader)> {
    let meta = Meta::decode(page)?;
    Ok((meta.page_count, meta.catalog))
}

/// Writes the meta record of a database of `page_count` pages whose
/// catalog is `catalog` into the first [`META_RECORD_BYTES`] of `page`.
///
/// # Panics
/// When `page` is shorter than [`META_RECORD_BYTES`] (a caller's bug).
pub fn encode_meta(page: &mut [u8], page_count: u64, catalog: TreeHeader) {
    assert!(page.len() >= META_RECORD_BYTES, "meta page too short");
    Meta {
        page_count,
        catalog,
        ..Meta::new_database()
    }
    .encode_into(page);
}

/// Every table of the catalog whose tree is `catalog`, in name order, with
/// its table id and tree. `Corrupted` on any malformed page or entry.
pub fn list_catalog<P: PageRead>(
    pages: &P,
    catalog: &TreeHeader,
) -> Result<Vec<(String, u64, TreeHeader)>> {
    Ok(catalog::list(pages, catalog)?
        .into_iter()
        .map(|(name, entry)| (name, entry.id, entry.tree))
        .collect())
}

/// Reads the meta page through `pages` and lists the catalog it names.
pub fn read_catalog<P: PageRead>(pages: &P) -> Result<Vec<(String, u64, TreeHeader)>> {
    let (_, catalog) = decode_meta(&pages.read_page(META_PAGE)?)?;
    list_catalog(pages, &catalog)
}

/// Stores the entry of table `name` (id `id`, tree `tree`) in the catalog
/// whose tree is `catalog`, updating `catalog`.
pub fn store_catalog_entry<P: PageWrite>(
    pages: &mut P,
    catalog: &mut TreeHeader,
    name: &str,
    id: u64,
    tree: TreeHeader,
) -> Result<()> {
    catalog::store(pages, catalog, name, &TableEntry { id, tree })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_garbage_is_corrupted() {
        let mut page = vec![0u8; 256];
        encode_meta(&mut page, 9, TreeHeader::EMPTY);
        let decoded = decode_meta(&page);
        assert!(matches!(decoded, Ok((9, header)) if header == TreeHeader::EMPTY));
        page[0] ^= 1;
        assert!(matches!(
            decode_meta(&page),
            Err(crate::Error::Corrupted(_))
        ));
        assert!(decode_meta(&[]).is_err());
    }
}
