//! Overflow chains: values (and key suffixes) too large for a cell, stored as
//! a singly linked list of overflow pages. Every page but the last is full, so
//! a chain of `len` bytes has exactly `ceil(len / payload)` pages; readers
//! check that and never follow more links than that.

use std::cmp::Ordering;

use mmsb_wal::PageId;

use super::format::*;
use crate::error::Result;
use crate::page_access::{PageRead, PageWrite};

/// Validates overflow page `id` as the `index`-th page of a chain of `len`
/// bytes; returns its payload and the next page id (0 at the end).
fn page_payload<'p>(
    page: &'p [u8],
    id: PageId,
    geo: &Geometry,
    len: usize,
    index: usize,
) -> Result<(&'p [u8], u64)> {
    if page.len() != geo.page_len {
        return Err(corrupt(id, format_args!("page has {} bytes", page.len())));
    }
    if page[OFF_KIND] != KIND_OVERFLOW {
        return Err(corrupt(
            id,
            format_args!(
                "expected an overflow page, found kind {:#04x}",
                page[OFF_KIND]
            ),
        ));
    }
    if page[OFF_VERSION] != FORMAT_VERSION {
        return Err(corrupt(id, "unknown overflow page version"));
    }
    let pages = geo.overflow_pages(len);
    let expect_used = if index + 1 == pages {
        len - index * geo.overflow_payload
    } else {
        geo.overflow_payload
    };
    let used = rd_u32(page, OVF_OFF_USED).map_or(usize::MAX, |u| u as usize);
    let next = rd_u64(page, OVF_OFF_NEXT).unwrap_or(u64::MAX);
    if used != expect_used {
        return Err(corrupt(
            id,
            format_args!("overflow page holds {used} bytes, chain expects {expect_used}"),
        ));
    }
    if (next == 0) != (index + 1 == pages) {
        return Err(corrupt(
            id,
            "overflow chain length disagrees with its byte count",
        ));
    }
    Ok((&page[OVF_HEADER_BYTES..OVF_HEADER_BYTES + used], next))
}

/// Walks a chain of `len` bytes from `first`, calling `visit` with each
/// page's id and payload; stops early when `visit` returns `false`.
pub(crate) fn walk_chain<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    first: PageId,
    len: usize,
    mut visit: impl FnMut(PageId, &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut id = first;
    for index in 0..geo.overflow_pages(len) {
        let page = read_page(pages, id)?;
        let (payload, next) = page_payload(&page, id, geo, len, index)?;
        if !visit(id, payload)? {
            return Ok(());
        }
        id = PageId(next);
    }
    Ok(())
}

/// Appends the `len` bytes of the chain at `first` to `out`.
pub(crate) fn read_chain<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    first: PageId,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.reserve(len);
    walk_chain(pages, geo, first, len, |_, payload| {
        out.extend_from_slice(payload);
        Ok(true)
    })
}

/// Compares the chain's bytes with `other`, lexicographically.
pub(crate) fn cmp_chain<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    first: PageId,
    len: usize,
    other: &[u8],
) -> Result<Ordering> {
    let mut pos = 0;
    let mut result = Ordering::Equal;
    walk_chain(pages, geo, first, len, |_, payload| {
        let rest = &other[pos..];
        let n = payload.len().min(rest.len());
        match payload[..n].cmp(&rest[..n]) {
            Ordering::Equal => {}
            o => {
                result = o;
                return Ok(false);
            }
        }
        if n < payload.len() {
            // `other` ran out inside this page: the chain is longer.
            result = Ordering::Greater;
            return Ok(false);
        }
        pos += n;
        Ok(true)
    })?;
    if result == Ordering::Equal && pos < other.len() {
        // Every chain byte matched and `other` goes on: the chain is shorter.
        return Ok(Ordering::Less);
    }
    Ok(result)
}

/// Writes one overflow page: header, payload, link.
fn write_page<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    chunk: &[u8],
    next: PageId,
) -> Result<()> {
    let page = pages.page_mut(id)?;
    if page.len() != geo.page_len {
        return Err(corrupt(id, format_args!("page has {} bytes", page.len())));
    }
    page[OFF_KIND] = KIND_OVERFLOW;
    page[OFF_VERSION] = FORMAT_VERSION;
    page[2..OVF_OFF_USED].fill(0);
    wr_u32(page, OVF_OFF_USED, chunk.len() as u32);
    wr_u64(page, OVF_OFF_NEXT, next.0);
    page[OVF_HEADER_BYTES..OVF_HEADER_BYTES + chunk.len()].copy_from_slice(chunk);
    Ok(())
}

/// Stores `data` (non-empty) in a fresh chain; returns its first page.
pub(crate) fn write_chain<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    data: &[u8],
) -> Result<PageId> {
    debug_assert!(!data.is_empty());
    let first = pages.allocate_page()?;
    let mut id = first;
    let mut chunks = data.chunks(geo.overflow_payload).peekable();
    while let Some(chunk) = chunks.next() {
        let next = if chunks.peek().is_some() {
            pages.allocate_page()?
        } else {
            PageId(0)
        };
        write_page(pages, geo, id, chunk, next)?;
        id = next;
    }
    Ok(first)
}

/// Replaces the chain at `first` (holding `old_len` bytes) by one holding
/// `data`, reusing its pages in order so unchanged bytes stay unchanged;
/// extra pages are allocated or freed. Returns the first page.
pub(crate) fn rewrite_chain<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    first: PageId,
    old_len: usize,
    data: &[u8],
) -> Result<PageId> {
    debug_assert!(!data.is_empty());
    let old_pages = geo.overflow_pages(old_len);
    let new_pages = geo.overflow_pages(data.len());
    let mut id = first;
    for (index, chunk) in data.chunks(geo.overflow_payload).enumerate() {
        let old_next = if index < old_pages {
            let page = read_page(pages, id)?;
            PageId(page_payload(&page, id, geo, old_len, index)?.1)
        } else {
            PageId(0)
        };
        let last = index + 1 == new_pages;
        let next = if last {
            PageId(0)
        } else if index + 1 < old_pages {
            old_next
        } else {
            pages.allocate_page()?
        };
        write_page(pages, geo, id, chunk, next)?;
        if last && index + 1 < old_pages {
            free_rest(pages, geo, old_next, old_len, index + 1)?;
        }
        id = next;
    }
    Ok(first)
}

/// Frees the pages of a chain of `len` bytes from page number `from` on,
/// whose id is `id`.
fn free_rest<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    mut id: PageId,
    len: usize,
    from: usize,
) -> Result<()> {
    for index in from..geo.overflow_pages(len) {
        let next = {
            let page = read_page(pages, id)?;
            page_payload(&page, id, geo, len, index)?.1
        };
        pages.free_page(id)?;
        id = PageId(next);
    }
    Ok(())
}

/// Frees every page of the chain at `first` holding `len` bytes.
pub(crate) fn free_chain<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    first: PageId,
    len: usize,
) -> Result<()> {
    free_rest(pages, geo, first, len, 0)
}
