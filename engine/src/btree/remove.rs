//! Removal and shrinking: delete the cell, then repair underfull pages on
//! the way up by merging with a sibling (when both fit one page) or moving
//! cells over from it; collapse a root left with one child; free a tree.
//!
//! Moving cells may change a separator's length, so a parent can overflow
//! during a removal: it then splits exactly as on insertion.

use std::collections::HashSet;

use mmsb_wal::PageId;

use super::cell::*;
use super::format::*;
use super::insert::{grow_root, insert_separator, split_node, Split};
use super::keys::{load_key, separator};
use super::node::{parse_branch_cell, KeyRef, Node, NodeMut, ValueLoc};
use super::overflow::free_chain;
use super::TreeHeader;
use crate::error::Result;
use crate::page_access::PageWrite;

/// What a removal below a branch reports to it.
struct Removed {
    /// The removed value, `None` when the key was absent (nothing changed).
    old: Option<Vec<u8>>,
    /// The child fell below the fill threshold.
    underfull: bool,
    /// The child split (its separator grew during a repair).
    split: Option<Split>,
}

/// See [`super::remove`].
pub(crate) fn remove<P: PageWrite>(
    pages: &mut P,
    header: &mut TreeHeader,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    let geo = Geometry::new(pages.page_len())?;
    header.validate()?;
    if header.is_empty() || key.len() > MAX_KEY_BYTES {
        return Ok(None);
    }
    let out = remove_rec(pages, &geo, header.root, header.height - 1, key)?;
    if out.old.is_none() {
        return Ok(None);
    }
    header.len = header
        .len
        .checked_sub(1)
        .ok_or_else(|| corrupt(header.root, "tree header counts no entries"))?;
    match out.split {
        Some(split) => grow_root(pages, &geo, header, split)?,
        None => shrink_root(pages, &geo, header)?,
    }
    Ok(out.old)
}

fn remove_rec<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    level: u8,
    key: &[u8],
) -> Result<Removed> {
    if level == 0 {
        return remove_leaf(pages, geo, id, key);
    }
    let (pos, child) = {
        let page = read_page(pages, id)?;
        let node = Node::parse(&page, id, level, geo)?;
        let pos = node.child_pos_for(pages, key)?;
        (pos, node.child(pos)?)
    };
    let out = remove_rec(pages, geo, child, level - 1, key)?;
    let split = match out.split {
        Some(split) => insert_separator(pages, geo, id, level, pos, split)?,
        None if out.underfull => rebalance(pages, geo, id, level, pos)?,
        None => None,
    };
    // Only a merge below can leave this node underfull.
    let underfull = out.underfull && split.is_none() && {
        let page = read_page(pages, id)?;
        Node::parse(&page, id, level, geo)?.is_underfull()
    };
    Ok(Removed {
        old: out.old,
        underfull,
        split,
    })
}

fn remove_leaf<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    key: &[u8],
) -> Result<Removed> {
    let (idx, key_chain, value) = {
        let page = read_page(pages, id)?;
        let node = Node::parse(&page, id, 0, geo)?;
        let (found, idx) = node.search(pages, key)?;
        if !found {
            return Ok(Removed {
                old: None,
                underfull: false,
                split: None,
            });
        }
        let cell = node.leaf_cell(idx)?;
        let value = match cell.value {
            ValueLoc::Inline { start, end } => Ok(page[start..end].to_vec()),
            ValueLoc::Overflow { first, len } => Err((first, len)),
        };
        (idx, key_chain(&cell.key), value)
    };
    let old = match value {
        Ok(inline) => inline,
        Err((first, len)) => take_chain(pages, geo, first, len)?,
    };
    if let Some((first, len)) = key_chain {
        free_chain(pages, geo, first, len)?;
    }
    let mut node = NodeMut::open(pages.page_mut(id)?, id, 0, geo)?;
    node.remove_cells(idx..idx + 1)?;
    Ok(Removed {
        old: Some(old),
        underfull: node.view().is_underfull(),
        split: None,
    })
}

/// The overflow chain (first page, length) holding a key's suffix.
fn key_chain(key: &KeyRef<'_>) -> Option<(PageId, usize)> {
    key.overflow.map(|first| (first, key.len - key.local.len()))
}

/// Reads a chain's bytes and frees its pages in one pass.
fn take_chain<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    first: PageId,
    len: usize,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(super::format::OVERFLOW_PREALLOC_BYTES_MAX));
    super::overflow::read_chain(pages, geo, first, len, &mut out)?;
    free_chain(pages, geo, first, len)?;
    Ok(out)
}

/// Frees the key chain of an encoded branch cell (a separator leaving the tree).
fn free_separator<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    cell: &[u8],
    parent: PageId,
) -> Result<()> {
    let parsed =
        parse_branch_cell(cell, 0, geo).ok_or_else(|| corrupt(parent, "malformed separator"))?;
    if let Some((first, len)) = key_chain(&parsed.key) {
        free_chain(pages, geo, first, len)?;
    }
    Ok(())
}

/// The two siblings around separator `sep_idx` of a parent.
struct Pair {
    parent: PageId,
    parent_level: u8,
    sep_idx: usize,
    sep_cell: Vec<u8>,
    left: PageId,
    right: PageId,
}

/// Repairs the underfull child at `pos` of branch `parent` with a sibling.
fn rebalance<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    parent: PageId,
    parent_level: u8,
    pos: usize,
) -> Result<Option<Split>> {
    let pair = {
        let page = read_page(pages, parent)?;
        let node = Node::parse(&page, parent, parent_level, geo)?;
        if node.count() == 0 {
            return Ok(None);
        }
        let sep_idx = pos.saturating_sub(1);
        Pair {
            parent,
            parent_level,
            sep_idx,
            sep_cell: node.cell_bytes(sep_idx)?.to_vec(),
            left: node.child(sep_idx)?,
            right: node.child(sep_idx + 1)?,
        }
    };
    if parent_level == 1 {
        rebalance_leaves(pages, geo, pair)
    } else {
        rebalance_branches(pages, geo, pair)
    }
}

/// Which sibling gives cells to the other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The right sibling's first cells go to the end of the left one.
    RightToLeft,
    /// The left sibling's last cells go to the front of the right one.
    LeftToRight,
}

fn rebalance_leaves<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    pair: Pair,
) -> Result<Option<Split>> {
    let (lref, rref) = (read_page(pages, pair.left)?, read_page(pages, pair.right)?);
    let ln = Node::parse(&lref, pair.left, 0, geo)?;
    let rn = Node::parse(&rref, pair.right, 0, geo)?;
    if ln.used() + rn.used() <= ln.capacity() {
        merge_pair(pages, geo, &pair, &ln, &rn, None)?;
        free_separator(pages, geo, &pair.sep_cell, pair.parent)?;
        return Ok(None);
    }
    // Move cells from the fuller sibling until the two are about even.
    let (dir, giver) = if ln.used() < rn.used() {
        (Direction::RightToLeft, &rn)
    } else {
        (Direction::LeftToRight, &ln)
    };
    let (mut recv, mut give) = (ln.used().min(rn.used()), ln.used().max(rn.used()));
    let n = giver.count();
    let mut k = 0;
    while k + 1 < n {
        let i = if dir == Direction::RightToLeft {
            k
        } else {
            n - 1 - k
        };
        let s = giver.cell_size(i)? + SLOT_BYTES;
        if recv + s > give.saturating_sub(s) {
            break;
        }
        recv += s;
        give = give.saturating_sub(s);
        k += 1;
    }
    if k == 0 {
        return Ok(None);
    }
    // The boundary keys after the move, and the cells that move.
    let (range, last_left, first_right) = match dir {
        Direction::RightToLeft => (0..k, rn.key(k - 1)?, rn.key(k)?),
        Direction::LeftToRight => (n - k..n, ln.key(n - k - 1)?, ln.key(n - k)?),
    };
    let left_key = load_key(pages, geo, &last_left)?;
    let right_key = load_key(pages, geo, &first_right)?;
    if left_key >= right_key {
        return Err(corrupt(pair.parent, "leaf keys out of order"));
    }
    let cells = range
        .clone()
        .map(|i| giver.cell_bytes(i))
        .collect::<Result<Vec<_>>>()?;
    move_cells(pages, geo, &pair, 0, dir, &cells, range, &ln, None)?;
    drop((lref, rref));
    free_separator(pages, geo, &pair.sep_cell, pair.parent)?;
    let k = store_key(pages, geo, separator(&left_key, &right_key))?;
    let new_sep = branch_cell_vec(&k, pair.right);
    replace_separator(pages, geo, &pair, &new_sep)
}

fn rebalance_branches<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    pair: Pair,
) -> Result<Option<Split>> {
    let level = pair.parent_level - 1;
    let (lref, rref) = (read_page(pages, pair.left)?, read_page(pages, pair.right)?);
    let ln = Node::parse(&lref, pair.left, level, geo)?;
    let rn = Node::parse(&rref, pair.right, level, geo)?;
    // The parent's separator comes down between the two, over the right
    // sibling's leftmost child.
    let mut down = pair.sep_cell.clone();
    set_cell_child(&mut down, rn.child(0)?);
    let sep_size = down.len() + SLOT_BYTES;
    if ln.used() + rn.used() + sep_size <= ln.capacity() {
        merge_pair(pages, geo, &pair, &ln, &rn, Some(&down))?;
        return Ok(None);
    }
    // Rotate through the parent: each step moves the separator down into the
    // emptier node and the fuller node's edge cell up into the parent.
    let (dir, giver, receiver) = if ln.used() < rn.used() {
        (Direction::RightToLeft, &rn, &ln)
    } else {
        (Direction::LeftToRight, &ln, &rn)
    };
    let (mut recv, mut give) = (receiver.used(), giver.used());
    let n = giver.count();
    let mut k = 0;
    while k + 1 < n {
        let (incoming, outgoing) = match dir {
            Direction::RightToLeft => (if k == 0 { None } else { Some(k - 1) }, k),
            Direction::LeftToRight => (if k == 0 { None } else { Some(n - k) }, n - 1 - k),
        };
        let inc = match incoming {
            None => sep_size,
            Some(i) => giver.cell_size(i)? + SLOT_BYTES,
        };
        let out = giver.cell_size(outgoing)? + SLOT_BYTES;
        let forced = k == 0 && receiver.count() == 0;
        if recv + inc > give.saturating_sub(out) && !forced {
            break;
        }
        recv += inc;
        give = give.saturating_sub(out);
        k += 1;
    }
    if k == 0 {
        return Ok(None);
    }
    // Cells entering the receiver (in key order), the cell going up, and
    // the cells leaving the giver.
    let (cells, up_idx, range) = match dir {
        Direction::RightToLeft => {
            let mut cells = vec![&down[..]];
            for i in 0..k - 1 {
                cells.push(rn.cell_bytes(i)?);
            }
            (cells, k - 1, 0..k)
        }
        Direction::LeftToRight => {
            let mut cells = Vec::with_capacity(k);
            for i in n - k + 1..n {
                cells.push(ln.cell_bytes(i)?);
            }
            cells.push(&down[..]);
            (cells, n - k, n - k..n)
        }
    };
    let mut up = giver.cell_bytes(up_idx)?.to_vec();
    let new_leftmost = cell_child(&up);
    move_cells(
        pages,
        geo,
        &pair,
        level,
        dir,
        &cells,
        range,
        &ln,
        Some(new_leftmost),
    )?;
    drop((lref, rref));
    set_cell_child(&mut up, pair.right);
    replace_separator(pages, geo, &pair, &up)
}

/// Moves `cells` into the receiver and removes `range` from the giver; for
/// branches, the right node's leftmost child becomes `right_leftmost`.
#[allow(clippy::too_many_arguments)]
fn move_cells<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    pair: &Pair,
    level: u8,
    dir: Direction,
    cells: &[&[u8]],
    range: std::ops::Range<usize>,
    ln: &Node<'_>,
    right_leftmost: Option<PageId>,
) -> Result<()> {
    let (receiver, at, giver) = match dir {
        Direction::RightToLeft => (pair.left, ln.count(), pair.right),
        Direction::LeftToRight => (pair.right, 0, pair.left),
    };
    let mut node = NodeMut::open(pages.page_mut(receiver)?, receiver, level, geo)?;
    if !node.insert_cells(at, cells)? {
        return Err(corrupt(receiver, "moved cells do not fit"));
    }
    if let (Some(leftmost), Direction::LeftToRight) = (right_leftmost, dir) {
        node.set_leftmost(leftmost);
    }
    let mut node = NodeMut::open(pages.page_mut(giver)?, giver, level, geo)?;
    node.remove_cells(range)?;
    if let (Some(leftmost), Direction::RightToLeft) = (right_leftmost, dir) {
        node.set_leftmost(leftmost);
    }
    Ok(())
}

/// Merges the pair into the fuller sibling, frees the other and drops the
/// separator from the parent. `down` is the separator cell entering a merged
/// branch (`None` for leaves).
fn merge_pair<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    pair: &Pair,
    ln: &Node<'_>,
    rn: &Node<'_>,
    down: Option<&[u8]>,
) -> Result<()> {
    let level = pair.parent_level - 1;
    let keep_left = ln.used() >= rn.used();
    let mut cells = Vec::with_capacity(ln.count() + rn.count() + 1);
    if keep_left {
        cells.extend(down);
        for i in 0..rn.count() {
            cells.push(rn.cell_bytes(i)?);
        }
    } else {
        for i in 0..ln.count() {
            cells.push(ln.cell_bytes(i)?);
        }
        cells.extend(down);
    }
    let (keeper, at, gone) = if keep_left {
        (pair.left, ln.count(), pair.right)
    } else {
        (pair.right, 0, pair.left)
    };
    let mut node = NodeMut::open(pages.page_mut(keeper)?, keeper, level, geo)?;
    if !node.insert_cells(at, &cells)? {
        return Err(corrupt(keeper, "merged cells do not fit"));
    }
    if down.is_some() && !keep_left {
        node.set_leftmost(ln.child(0)?);
    }
    pages.free_page(gone)?;
    let parent = pair.parent;
    let mut node = NodeMut::open(pages.page_mut(parent)?, parent, pair.parent_level, geo)?;
    if !keep_left {
        node.set_child(pair.sep_idx, pair.right)?;
    }
    node.remove_cells(pair.sep_idx..pair.sep_idx + 1)
}

/// Replaces the pair's separator in the parent by `cell`, splitting the
/// parent when the new separator does not fit.
fn replace_separator<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    pair: &Pair,
    cell: &[u8],
) -> Result<Option<Split>> {
    let (parent, idx) = (pair.parent, pair.sep_idx);
    let mut node = NodeMut::open(pages.page_mut(parent)?, parent, pair.parent_level, geo)?;
    if node.overwrite_cell(idx, cell)? {
        return Ok(None);
    }
    node.remove_cells(idx..idx + 1)?;
    if node.insert_cell(idx, cell)? {
        return Ok(None);
    }
    split_node(pages, geo, parent, pair.parent_level, idx, cell).map(Some)
}

/// Drops root levels left with a single child, and an empty root leaf.
fn shrink_root<P: PageWrite>(pages: &mut P, geo: &Geometry, header: &mut TreeHeader) -> Result<()> {
    while !header.is_empty() {
        let root = header.root;
        let level = header.height - 1;
        let child = {
            let page = read_page(pages, root)?;
            let node = Node::parse(&page, root, level, geo)?;
            if node.count() > 0 {
                return Ok(());
            }
            if level > 0 {
                Some(node.child(0)?)
            } else {
                None
            }
        };
        pages.free_page(root)?;
        match child {
            Some(child) => {
                header.root = child;
                header.height -= 1;
            }
            None => {
                if header.len != 0 {
                    return Err(corrupt(root, "tree header counts entries of an empty tree"));
                }
                *header = TreeHeader::EMPTY;
            }
        }
    }
    Ok(())
}

/// See [`super::free_tree`].
pub(crate) fn free_tree<P: PageWrite>(pages: &mut P, header: &mut TreeHeader) -> Result<()> {
    let geo = Geometry::new(pages.page_len())?;
    header.validate()?;
    if !header.is_empty() {
        let mut seen = HashSet::new();
        free_subtree(pages, &geo, header.root, header.height - 1, &mut seen)?;
    }
    *header = TreeHeader::EMPTY;
    Ok(())
}

fn free_subtree<P: PageWrite>(
    pages: &mut P,
    geo: &Geometry,
    id: PageId,
    level: u8,
    seen: &mut HashSet<PageId>,
) -> Result<()> {
    if !seen.insert(id) {
        return Err(corrupt(id, "page reachable twice"));
    }
    let page = read_page(pages, id)?;
    let node = Node::parse(&page, id, level, geo)?;
    for i in 0..node.count() {
        let (key, value) = if level == 0 {
            let cell = node.leaf_cell(i)?;
            let value = match cell.value {
                ValueLoc::Overflow { first, len } => Some((first, len)),
                ValueLoc::Inline { .. } => None,
            };
            (key_chain(&cell.key), value)
        } else {
            (key_chain(&node.branch_cell(i)?.key), None)
        };
        for (first, len) in key.into_iter().chain(value) {
            free_chain(pages, geo, first, len)?;
        }
    }
    if level > 0 {
        for pos in 0..=node.count() {
            free_subtree(pages, geo, node.child(pos)?, level - 1, seen)?;
        }
    }
    drop(page);
    pages.free_page(id)
}
