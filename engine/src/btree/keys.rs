//! Keys as stored in cells: comparing a stored key (inline, or prefix plus
//! overflow suffix) with a search key, materialising it, and choosing the
//! shortest separator between two adjacent keys (suffix truncation).

use std::cmp::Ordering;

use super::format::Geometry;
use super::node::KeyRef;
use super::overflow::{cmp_chain, read_chain};
use crate::error::Result;
use crate::page_access::PageRead;

/// Orders the stored key `stored` against `search`. Reads the overflow
/// suffix only when the in-page prefix ties.
#[inline]
pub(crate) fn cmp_key<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    stored: &KeyRef<'_>,
    search: &[u8],
) -> Result<Ordering> {
    let Some(first) = stored.overflow else {
        return Ok(stored.local.cmp(search));
    };
    let p = stored.local.len();
    let n = p.min(search.len());
    match stored.local[..n].cmp(&search[..n]) {
        Ordering::Equal => {}
        o => return Ok(o),
    }
    if search.len() <= p {
        // `search` is a prefix of the stored key, which is longer than `p`.
        return Ok(Ordering::Greater);
    }
    cmp_chain(pages, geo, first, stored.len - p, &search[p..])
}

/// The whole stored key.
pub(crate) fn load_key<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    key: &KeyRef<'_>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(key.len.min(super::format::OVERFLOW_PREALLOC_BYTES_MAX));
    load_key_into(pages, geo, key, &mut out)?;
    Ok(out)
}

/// [`load_key`] into `out` (cleared first), reusing its buffer.
pub(crate) fn load_key_into<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    key: &KeyRef<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    out.extend_from_slice(key.local);
    if let Some(first) = key.overflow {
        read_chain(pages, geo, first, key.len - key.local.len(), out)?;
    }
    Ok(())
}

/// The shortest `s` with `left < s <= right` (a prefix of `right`).
pub(crate) fn separator<'r>(left: &[u8], right: &'r [u8]) -> &'r [u8] {
    debug_assert!(left < right, "separator of unordered keys");
    let common = left.iter().zip(right).take_while(|(a, b)| a == b).count();
    &right[..(common + 1).min(right.len())]
}

#[cfg(test)]
mod tests {
    use super::separator;

    #[test]
    fn separator_is_shortest_between() {
        assert_eq!(separator(b"abc", b"abd"), b"abd");
        assert_eq!(separator(b"abc", b"b"), b"b");
        assert_eq!(separator(b"ab", b"abcdef"), b"abc");
        assert_eq!(separator(b"", b"x"), b"x");
        assert_eq!(separator(b"apple", b"banana"), b"b");
        for (l, r) in [(&b"a"[..], &b"a\0"[..]), (b"zz", b"zzz"), (b"m", b"n")] {
            let s = separator(l, r);
            assert!(l < s && s <= r);
        }
    }
}
