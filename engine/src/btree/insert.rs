//! Insertion: descend to the leaf, add or replace the cell, split pages that
//! overflow and grow the root. At a page's edge, a key landing after the
//! last (or before the first) cell of a full page starts a new page of its
//! own and the old page stays full. The old page of a split only loses
//! cells (a header and slot edit, plus the new cell when it stays there)
//! and the new page is logged whole, so the split's delta is about the new
//! page: a leaf's middle split moves only its right-hand third of the bytes
//! (random inserts log about a third less than with a balanced cut); a
//! branch's is balanced by bytes.
//!
//! Appends at the right edge of the tree (a key after every key, as in an
//! in-order bulk load) start a new rightmost leaf once the last leaf is
//! filled past `capacity - capacity / APPEND_SLACK_DIVISOR`: loaded leaves
//! keep room for later random inserts, which then rarely split a leaf (a
//! 50/50 split leaves two half-full leaves and logs a new page image).
//! Descending loads still fill leaves (the left edge has no slack rule).

use mmsb_wal::PageId;

use super::cell::*;
use super::format::*;
use super::keys::{load_key, separator};
use super::node::{parse_leaf_cell, Node, NodeMut, ValueLoc};
use super::overflow::{free_chain, read_chain, rewrite_chain};
use super::TreeHeader;
use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageWrite};

/// Rightmost-leaf appends leave `capacity / APPEND_SLACK_DIVISOR` bytes of
/// the leaf free (about 12 %) for later inserts into the loaded key range.
pub(crate) const APPEND_SLACK_DIVISOR: usize = 8;

/// A leaf split leaves each side at least `1 / SPLIT_MIN_SHARE_DIVISOR` of
/// the bytes: no less than the fill bound ([`UNDERFULL_DIVISOR`]), so
/// neither side starts underfull.
pub(crate) const SPLIT_MIN_SHARE_DIVISOR: usize = 3;
const _: () = assert!(SPLIT_MIN_SHARE_DIVISOR <= UNDERFULL_DIVISOR);

/// Whether appending a cell of `cell_size` bytes (plus its slot) to a leaf
/// that uses `used` of its `capacity` bytes passes the append fill target,
/// so the cell should start a new rightmost leaf instead.
pub(crate) fn past_append_fill(used: usize, capacity: usize, cell_size: usize) -> bool {
    used + cell_size + SLOT_BYTES > capacity - capacity / APPEND_SLACK_DIVISOR
}

/// A page split, reported to the parent.
#[derive(Debug)]
pub(crate) struct Split {
    /// Encoded branch cell holding the separator; the parent sets its child.
    pub(crate) sep_cell: Vec<u8>,
    /// The page the split created.
    pub(crate) new_page: PageId,
    /// Whether the new page holds the lower keys (it sits left of the old page).
    pub(crate) new_is_left: bool,
}

/// Rejects keys and values over the limits.
pub(crate) fn check_limits(key: &[u8], value: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge {
            what: "key",
            len: key.len() as u64,
            limit: MAX_KEY_BYTES as u64,
        });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge {
            what: "value",
            len: value.len() as u64,
            limit: MAX_VALUE_BYTES as u64,
        });
    }
    Ok(())
}

/// See [`super::insert`].
pub(crate) fn insert<P: PageWrite>(
    pages: &mut P,
    header: &mut TreeHeader,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Vec<u8>>> {
    check_limits(key, value)?;
    let geo = Geometry::new(pages.page_len())?;
    header.validate()?;
    if header.is_empty() {
        let root = new_root_leaf(pages, &geo, key, value)?;
        *header = TreeHeader {
            root,
            len: 1,
            height: 1,
        };
        return Ok(None);
    }
    let (old, split) = insert_rec(
        pages,
        &geo,
        header.root,
        header.height - 1,
        key,
        value,
        true,
    )?;
    if let Some(split) = split {
        grow_root(pages, &geo, header, split)?;
    }
    if old.is_none() {
        header.len += 1;
    }
    Ok(old)
}

/// A one-cell leaf for the first entry of a tree.
fn new_root_leaf<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    key: &[u8],
    value: &[u8],
) -> Result<PageId> {
    let id = pages.allocate_page()?;
    let k = store_key(pages, geo, key)?;
    let v = store_value(pages, geo, k.stored_len(), value)?;
    let mut node = NodeMut::init(pages.page_mut(id)?, id, 0, geo)?;
    let fits = node.insert_cell_with(0, leaf_cell_size(&k, &v), |d| write_leaf_cell(d, &k, &v))?;
    debug_assert!(fits, "a largest cell fits an empty page");
    Ok(id)
}

/// Inserts below page `id` at `level`; `rightmost` says every page above
/// (and so `id`) is the last child of its parent.
fn insert_rec<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    level: u8,
    key: &[u8],
    value: &[u8],
    rightmost: bool,
) -> Result<(Option<Vec<u8>>, Option<Split>)> {
    if level == 0 {
        return insert_leaf(pages, geo, id, key, value, rightmost);
    }
    let (pos, child, last) = {
        let page = read_page(pages, id)?;
        let node = Node::parse(&page, id, level, geo)?;
        let pos = node.child_pos_for(pages, key)?;
        (pos, node.child(pos)?, pos == node.count())
    };
    let (old, split) = insert_rec(pages, geo, child, level - 1, key, value, rightmost && last)?;
    let split = match split {
        Some(split) => insert_separator(pages, geo, id, level, pos, split)?,
        None => None,
    };
    Ok((old, split))
}

/// Copies an inline value out of its page, or reads its overflow chain.
pub(crate) fn load_value<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    page: &[u8],
    loc: ValueLoc,
) -> Result<Vec<u8>> {
    match loc {
        ValueLoc::Inline { start, end } => Ok(page[start..end].to_vec()),
        ValueLoc::Overflow { first, len } => {
            let mut out = Vec::new();
            read_chain(pages, geo, first, len, &mut out)?;
            Ok(out)
        }
    }
}

fn insert_leaf<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    key: &[u8],
    value: &[u8],
    rightmost: bool,
) -> Result<(Option<Vec<u8>>, Option<Split>)> {
    let page = read_page(pages, id)?;
    let node = Node::parse(&page, id, 0, geo)?;
    let (found, idx) = node.search(pages, key)?;
    let (count, used, capacity) = (node.count(), node.used(), node.capacity());
    if found {
        let cell = node.leaf_cell(idx)?;
        let (key_chain, old_size, old_loc) = (cell.key.overflow, cell.size, cell.value);
        let old_value = load_value(pages, geo, &page, old_loc)?;
        drop(page);
        let k = KeySpec::with_chain(geo, key, key_chain);
        let v = replace_value(pages, geo, k.stored_len(), old_loc, value)?;
        let new_size = leaf_cell_size(&k, &v);
        let mut node = NodeMut::open_noted(pages.page_mut_noted(id)?, id, 0, geo)?;
        if new_size <= old_size {
            node.overwrite_leaf_value(idx, leaf_flags(&k, &v), value.len(), &v.part())?;
            return Ok((Some(old_value), None));
        }
        node.remove_cells(idx..idx + 1)?;
        let split = place_leaf_cell(pages, geo, id, idx, &k, &v)?;
        return Ok((Some(old_value), split));
    }
    drop(page);
    let k = store_key(pages, geo, key)?;
    let v = store_value(pages, geo, k.stored_len(), value)?;
    let appends = rightmost && idx == count && count > 0;
    if appends && past_append_fill(used, capacity, leaf_cell_size(&k, &v)) {
        // The new cell alone starts the next rightmost leaf (an edge split).
        let split = split_node(pages, geo, id, 0, idx, &leaf_cell_vec(&k, &v))?;
        debug_assert!(!split.new_is_left);
        return Ok((None, Some(split)));
    }
    Ok((None, place_leaf_cell(pages, geo, id, idx, &k, &v)?))
}

/// Inserts a leaf cell at `idx`, splitting the leaf when it is full.
fn place_leaf_cell<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    idx: usize,
    k: &KeySpec<'_>,
    v: &ValueSpec<'_>,
) -> Result<Option<Split>> {
    let mut node = NodeMut::open_noted(pages.page_mut_noted(id)?, id, 0, geo)?;
    let size = leaf_cell_size(k, v);
    if node.insert_cell_with(idx, size, |d| write_leaf_cell(d, k, v))? {
        return Ok(None);
    }
    split_node(pages, geo, id, 0, idx, &leaf_cell_vec(k, v)).map(Some)
}

/// The value part of a replaced entry: an overflow chain is rewritten in
/// place (reusing its pages) or freed; an inline value is stored afresh.
fn replace_value<'v, P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    stored_key_len: usize,
    old: ValueLoc,
    value: &'v [u8],
) -> Result<ValueSpec<'v>> {
    let inline = geo.value_inline(stored_key_len, value.len());
    match old {
        ValueLoc::Overflow { first, len } if !inline => {
            let first = rewrite_chain(pages, geo, first, len, value)?;
            Ok(ValueSpec::Overflow {
                first,
                len: value.len(),
            })
        }
        ValueLoc::Overflow { first, len } => {
            free_chain(pages, geo, first, len)?;
            Ok(ValueSpec::Inline(value))
        }
        ValueLoc::Inline { .. } => store_value(pages, geo, stored_key_len, value),
    }
}

/// Adds a child's split to branch `id` (whose child at `pos` split).
pub(crate) fn insert_separator<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    level: u8,
    pos: usize,
    split: Split,
) -> Result<Option<Split>> {
    let Split {
        mut sep_cell,
        new_page,
        new_is_left,
    } = split;
    let mut node = NodeMut::open_noted(pages.page_mut_noted(id)?, id, level, geo)?;
    if new_is_left {
        let old_child = node.view().child(pos)?;
        node.set_child(pos, new_page)?;
        set_cell_child(&mut sep_cell, old_child);
    } else {
        set_cell_child(&mut sep_cell, new_page);
    }
    if node.insert_cell(pos, &sep_cell)? {
        return Ok(None);
    }
    split_node(pages, geo, id, level, pos, &sep_cell).map(Some)
}

/// Puts a new root above the split old root.
pub(crate) fn grow_root<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    header: &mut TreeHeader,
    split: Split,
) -> Result<()> {
    if header.height >= MAX_TREE_HEIGHT {
        return Err(Error::TooLarge {
            what: "B+tree height",
            len: u64::from(header.height) + 1,
            limit: u64::from(MAX_TREE_HEIGHT),
        });
    }
    let Split {
        mut sep_cell,
        new_page,
        new_is_left,
    } = split;
    let (left, right) = if new_is_left {
        (new_page, header.root)
    } else {
        (header.root, new_page)
    };
    let root = pages.allocate_page()?;
    let mut node = NodeMut::init(pages.page_mut(root)?, root, header.height, geo)?;
    node.set_leftmost(left);
    set_cell_child(&mut sep_cell, right);
    if !node.insert_cell(0, &sep_cell)? {
        return Err(corrupt(root, "separator does not fit an empty root"));
    }
    header.root = root;
    header.height += 1;
    Ok(())
}

/// Where to cut an overflowing page, and which side the new page takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    /// A leaf keeps cells `..s` left and `s..` right; a branch keeps `..s`
    /// left, pushes cell `s` up and keeps `s + 1..` right.
    s: usize,
    /// The new page takes the left side (else the right one).
    new_is_left: bool,
}

/// Chooses where to cut `n = sizes.len()` cells (slot included) of an
/// overflowing page after inserting at `new_idx`. Edge inserts cut at the
/// edge, the new cell alone on the new page; a leaf's middle insert moves
/// its right third (see [`leaf_middle_cut`]); a branch's middle insert is
/// balanced by bytes, the new page taking the side with the new cell.
fn choose_split(sizes: &[usize], new_idx: usize, branch: bool) -> Cut {
    let n = sizes.len();
    let (lo, hi) = if branch { (1, n - 2) } else { (1, n - 1) };
    let s = if new_idx == n - 1 {
        hi
    } else if new_idx == 0 {
        lo
    } else if let Some(s) = (!branch).then(|| leaf_middle_cut(sizes)).flatten() {
        return Cut {
            s,
            new_is_left: false,
        };
    } else {
        balanced_split(sizes, lo, hi, branch)
    };
    Cut {
        s,
        new_is_left: new_idx < s,
    }
}

/// The cut of a leaf's middle insert: the new page takes the fewest
/// right-hand cells that hold at least `1 / SPLIT_MIN_SHARE_DIVISOR` of
/// the bytes, when the left side keeps as much; `None` when no cut does.
///
/// The new page is logged whole and the old page only loses cells (a
/// header and slot edit, plus the new cell when it stays), so a random
/// insert logs about a third less than with a balanced cut. Moving the
/// right side keeps the old page's free space in one piece for pages
/// filled in key order (cells then lie at falling offsets, so the highest
/// keys border the free gap): its next insert needs no compaction, which
/// would rewrite the page.
fn leaf_middle_cut(sizes: &[usize]) -> Option<usize> {
    let n = sizes.len();
    let total: usize = sizes.iter().sum();
    let min_side = total / SPLIT_MIN_SHARE_DIVISOR;
    let mut right = 0;
    for s in (1..n).rev() {
        right += sizes[s];
        if right >= min_side {
            return (total - right >= min_side).then_some(s);
        }
    }
    None
}

/// The cut between `lo` and `hi` that makes the larger side smallest.
fn balanced_split(sizes: &[usize], lo: usize, hi: usize, branch: bool) -> usize {
    let total: usize = sizes.iter().sum();
    let mut best = (usize::MAX, lo);
    let mut left = sizes[..lo].iter().sum::<usize>();
    for (s, &size) in sizes.iter().enumerate().take(hi + 1).skip(lo) {
        let right = total - left - if branch { size } else { 0 };
        let worst = left.max(right);
        if worst < best.0 {
            best = (worst, s);
        }
        left += size;
    }
    best.1
}

/// The full key of an encoded leaf cell.
fn leaf_cell_key<P: PageRead>(
    pages: &P,
    geo: &Geometry,
    cell: &[u8],
    id: PageId,
) -> Result<Vec<u8>> {
    let parsed = parse_leaf_cell(cell, 0, geo).ok_or_else(|| corrupt(id, "malformed leaf cell"))?;
    load_key(pages, geo, &parsed.key)
}

/// Splits page `id` at `level`, which has no room for `new_cell` at
/// `new_idx`. The page keeps one half; a new page gets the other.
pub(crate) fn split_node<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    level: u8,
    new_idx: usize,
    new_cell: &[u8],
) -> Result<Split> {
    let branch = level > 0;
    let old_ref = read_page(pages, id)?;
    let old = Node::parse(&old_ref, id, level, geo)?;
    let n = old.count() + 1;
    if n < if branch { 3 } else { 2 } {
        return Err(corrupt(id, "page is full with too few cells"));
    }
    // Every cell after the insert, each parsed once.
    let mut all: Vec<&[u8]> = Vec::with_capacity(n);
    for v in 0..n {
        all.push(match v.cmp(&new_idx) {
            std::cmp::Ordering::Equal => new_cell,
            std::cmp::Ordering::Less => old.cell_bytes(v)?,
            std::cmp::Ordering::Greater => old.cell_bytes(v - 1)?,
        });
    }
    let cell = |v: usize| -> Result<&[u8]> {
        all.get(v)
            .copied()
            .ok_or_else(|| corrupt(id, "split index past the cells"))
    };
    let sizes: Vec<usize> = all.iter().map(|c| c.len() + SLOT_BYTES).collect();
    let Cut { s, new_is_left } = choose_split(&sizes, new_idx, branch);
    // A leaf's middle cut may leave the new cell on the old page.
    let new_cell_stays = !new_is_left && new_idx < s;
    debug_assert!(!(branch && new_cell_stays), "a branch's new cell moves");

    // The new page.
    let moved = if new_is_left {
        0..s
    } else if branch {
        s + 1..n
    } else {
        s..n
    };
    // Built in place: the old page is only read through `old_ref`.
    let new_page = pages.allocate_page()?;
    {
        let mut node = NodeMut::init(pages.page_mut(new_page)?, new_page, level, geo)?;
        if branch {
            let leftmost = if new_is_left {
                old.child(0)?
            } else {
                cell_child(cell(s)?)
            };
            node.set_leftmost(leftmost);
        }
        let cells = all
            .get(moved)
            .ok_or_else(|| corrupt(id, "split range past the cells"))?;
        if !node.insert_cells(0, cells)? {
            return Err(corrupt(id, "split half does not fit a page"));
        }
    }

    let sep_cell = if branch {
        cell(s)?.to_vec()
    } else {
        let left = leaf_cell_key(pages, geo, cell(s - 1)?, id)?;
        let right = leaf_cell_key(pages, geo, cell(s)?, id)?;
        if left >= right {
            return Err(corrupt(id, "leaf keys out of order"));
        }
        let k = store_key(pages, geo, separator(&left, &right))?;
        branch_cell_vec(&k, PageId(0))
    };

    // What the old page loses: everything now in the new page or pushed up.
    let (remove, new_leftmost) = if new_is_left {
        let gone = if branch { s } else { s - 1 };
        let leftmost = if branch {
            Some(cell_child(cell(s)?))
        } else {
            None
        };
        (0..gone, leftmost)
    } else if new_cell_stays {
        (s - 1..old.count(), None)
    } else {
        (s..old.count(), None)
    };
    drop(old_ref);

    // Noted: the commit diffs only the old page's header and slots (and
    // the new cell when it stays).
    let mut node = NodeMut::open_noted(pages.page_mut_noted(id)?, id, level, geo)?;
    node.remove_cells(remove)?;
    if let Some(leftmost) = new_leftmost {
        node.set_leftmost(leftmost);
    }
    if new_cell_stays && !node.insert_cell(new_idx, new_cell)? {
        return Err(corrupt(id, "split half does not fit a page"));
    }
    Ok(Split {
        sep_cell,
        new_page,
        new_is_left,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{
        balanced_split, choose_split, leaf_middle_cut, past_append_fill, Cut, APPEND_SLACK_DIVISOR,
        SPLIT_MIN_SHARE_DIVISOR,
    };
    use crate::btree::format::SLOT_BYTES;

    fn cut(s: usize, new_is_left: bool) -> Cut {
        Cut { s, new_is_left }
    }

    #[test]
    fn append_fill_target_leaves_an_eighth_free() {
        let capacity = 4064;
        let target = capacity - capacity / APPEND_SLACK_DIVISOR;
        assert!(!past_append_fill(target - 100 - SLOT_BYTES, capacity, 100));
        assert!(past_append_fill(target - 99 - SLOT_BYTES, capacity, 100));
        assert!(!past_append_fill(0, capacity, 1000));
    }

    #[test]
    fn edge_inserts_split_at_the_edge() {
        let sizes = [10; 8];
        assert_eq!(choose_split(&sizes, 7, false), cut(7, false));
        assert_eq!(choose_split(&sizes, 0, false), cut(1, true));
        assert_eq!(choose_split(&sizes, 7, true), cut(6, false));
        assert_eq!(choose_split(&sizes, 0, true), cut(1, true));
    }

    #[test]
    fn branch_middle_inserts_split_by_bytes() {
        assert_eq!(
            choose_split(&[10; 9], 4, true),
            cut(4, false),
            "pushes the middle cell up"
        );
        assert_eq!(
            choose_split(&[100, 10, 10, 10, 10, 10, 10], 3, true),
            cut(1, false)
        );
        assert_eq!(balanced_split(&[10; 8], 1, 7, false), 4);
        assert_eq!(
            balanced_split(&[10, 10, 10, 10, 10, 10, 10, 100], 1, 7, false),
            7
        );
    }

    #[test]
    fn leaf_middle_inserts_move_the_right_third() {
        // 22 cells of 10 bytes: the 8 last (80 >= 220 / 3) move, wherever
        // the new cell lies; the new page is always the right one.
        let sizes = [10; 22];
        for new_idx in [1, 3, 10, 14, 18, 20] {
            assert_eq!(choose_split(&sizes, new_idx, false), cut(14, false));
        }
        // A large last cell is a third on its own.
        assert_eq!(
            choose_split(&[10, 10, 10, 10, 10, 10, 10, 100], 3, false),
            cut(7, false)
        );
    }

    #[test]
    fn a_leaf_split_without_a_fair_cut_is_balanced() {
        // One cell holds nearly every byte: no cut leaves a third on each
        // side, so the balanced cut rules (the new page takes the new cell).
        assert_eq!(leaf_middle_cut(&[1000, 1, 1]), None);
        assert_eq!(leaf_middle_cut(&[1, 1, 1000, 1]), None);
        assert_eq!(choose_split(&[1000, 1, 1], 1, false), cut(1, false));
        assert_eq!(choose_split(&[1, 1, 1000, 1], 1, false), cut(2, true));
    }

    proptest! {
        /// A leaf's middle cut keeps a third of the bytes on each side,
        /// moves no more than the balanced cut, and the new page is the
        /// right one.
        #[test]
        fn leaf_cut_is_fair_and_no_larger_than_balanced(
            sizes in proptest::collection::vec(9usize..200, 3..40),
            at in 0.0f64..1.0,
        ) {
            let n = sizes.len();
            let new_idx = 1 + ((n - 2) as f64 * at) as usize;
            let Cut { s, new_is_left } = choose_split(&sizes, new_idx, false);
            prop_assert!((1..n).contains(&s));
            let total: usize = sizes.iter().sum();
            let right: usize = sizes[s..].iter().sum();
            if let Some(fair) = leaf_middle_cut(&sizes) {
                prop_assert_eq!(fair, s);
                prop_assert!(!new_is_left);
                prop_assert!(right >= total / SPLIT_MIN_SHARE_DIVISOR);
                prop_assert!(total - right >= total / SPLIT_MIN_SHARE_DIVISOR);
                // The fewest right-hand cells that reach a third.
                prop_assert!(right - sizes[s] < total / SPLIT_MIN_SHARE_DIVISOR);
            } else {
                prop_assert_eq!(s, balanced_split(&sizes, 1, n - 1, false));
                prop_assert_eq!(new_is_left, new_idx < s);
            }
        }
    }
}
