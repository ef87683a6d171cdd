//! Full verification of a tree (`mmsb check`): page layouts (no overlapping
//! cells, exact free-space accounting, canonical inline/overflow placement),
//! key order within and across pages, separators bounding their children,
//! equal leaf depth, the entry count, overflow chains, and that no page is
//! reachable twice. Also measures fill.

use std::collections::HashSet;

use mmsb_wal::PageId;

use super::format::*;
use super::keys::load_key;
use super::node::{KeyRef, Node, NodeKind, ValueLoc};
use super::overflow::walk_chain;
use super::TreeHeader;
use crate::error::Result;
use crate::page_access::PageRead;

/// Page counts and fill of a tree that passed [`super::check_tree`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Levels (0 for an empty tree).
    pub height: u8,
    /// Entries found in the leaves (equals the header's `len`).
    pub entries: u64,
    /// Leaf pages.
    pub leaf_pages: u64,
    /// Branch pages.
    pub branch_pages: u64,
    /// Overflow pages (values and key suffixes).
    pub overflow_pages: u64,
    /// Bytes of cells and slots in leaf pages.
    pub leaf_used_bytes: u64,
    /// Bytes leaf pages could hold for cells and slots.
    pub leaf_capacity_bytes: u64,
    /// Bytes of cells and slots in branch pages.
    pub branch_used_bytes: u64,
    /// Bytes branch pages could hold for cells and slots.
    pub branch_capacity_bytes: u64,
}

impl TreeStats {
    /// Every page the tree owns.
    pub fn total_pages(&self) -> u64 {
        self.leaf_pages + self.branch_pages + self.overflow_pages
    }

    /// Fraction of leaf capacity in use (0 for an empty tree).
    pub fn leaf_fill(&self) -> f64 {
        ratio(self.leaf_used_bytes, self.leaf_capacity_bytes)
    }

    /// Fraction of branch capacity in use (0 without branches).
    pub fn branch_fill(&self) -> f64 {
        ratio(self.branch_used_bytes, self.branch_capacity_bytes)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// See [`super::check_tree`].
pub(crate) fn check_tree<P: PageRead>(pages: &P, header: &TreeHeader) -> Result<TreeStats> {
    header.validate()?;
    let geo = Geometry::new(pages.page_len())?;
    let mut checker = Checker {
        pages,
        geo,
        seen: HashSet::new(),
        stats: TreeStats {
            height: header.height,
            ..TreeStats::default()
        },
    };
    if !header.is_empty() {
        checker.node(header.root, header.height - 1, None, None)?;
    }
    if checker.stats.entries != header.len {
        return Err(corrupt(
            header.root,
            format_args!(
                "tree header counts {} entries, leaves hold {}",
                header.len, checker.stats.entries
            ),
        ));
    }
    Ok(checker.stats)
}

struct Checker<'a, P: PageRead> {
    pages: &'a P,
    geo: Geometry,
    seen: HashSet<PageId>,
    stats: TreeStats,
}

impl<P: PageRead> Checker<'_, P> {
    fn visit(&mut self, id: PageId) -> Result<()> {
        if id.0 == 0 || !self.seen.insert(id) {
            return Err(corrupt(id, "page reachable twice"));
        }
        Ok(())
    }

    fn chain(&mut self, first: PageId, len: usize) -> Result<()> {
        let seen = &mut self.seen;
        let stats = &mut self.stats;
        walk_chain(self.pages, &self.geo, first, len, |id, _| {
            if !seen.insert(id) {
                return Err(corrupt(id, "page reachable twice"));
            }
            stats.overflow_pages += 1;
            Ok(true)
        })
    }

    fn key_chain(&mut self, key: &KeyRef<'_>) -> Result<()> {
        match key.overflow {
            Some(first) => self.chain(first, key.len - key.local.len()),
            None => Ok(()),
        }
    }

    /// Checks the subtree at `id`, whose keys must lie in `[lo, hi)`.
    fn node(&mut self, id: PageId, level: u8, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Result<()> {
        self.visit(id)?;
        let page = read_page(self.pages, id)?;
        let geo = self.geo;
        let node = Node::parse(&page, id, level, &geo)?;
        check_layout(&node)?;
        let n = node.count();
        if n == 0 {
            return Err(corrupt(id, "node without keys"));
        }
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
        for i in 0..n {
            let key = match node.kind() {
                NodeKind::Leaf => {
                    let cell = node.leaf_cell(i)?;
                    self.leaf_value(id, &cell.key, cell.value)?;
                    cell.key
                }
                NodeKind::Branch => node.branch_cell(i)?.key,
            };
            self.key_chain(&key)?;
            let full = load_key(self.pages, &self.geo, &key)?;
            let ordered = keys.last().is_none_or(|prev| *prev < full)
                && lo.is_none_or(|lo| lo <= &full[..])
                && hi.is_none_or(|hi| &full[..] < hi);
            if !ordered {
                return Err(corrupt(id, format_args!("key {i} out of order or bounds")));
            }
            keys.push(full);
        }
        let (used, cap) = (node.used() as u64, node.capacity() as u64);
        match node.kind() {
            NodeKind::Leaf => {
                self.stats.leaf_pages += 1;
                self.stats.entries += n as u64;
                self.stats.leaf_used_bytes += used;
                self.stats.leaf_capacity_bytes += cap;
            }
            NodeKind::Branch => {
                self.stats.branch_pages += 1;
                self.stats.branch_used_bytes += used;
                self.stats.branch_capacity_bytes += cap;
                for pos in 0..=n {
                    let lo = if pos == 0 {
                        lo
                    } else {
                        Some(&keys[pos - 1][..])
                    };
                    let hi = if pos == n { hi } else { Some(&keys[pos][..]) };
                    self.node(node.child(pos)?, level - 1, lo, hi)?;
                }
            }
        }
        Ok(())
    }

    /// A leaf value must be inline exactly when the geometry says so.
    fn leaf_value(&mut self, id: PageId, key: &KeyRef<'_>, value: ValueLoc) -> Result<()> {
        let stored_key = self.geo.stored_key_len(key.len);
        let inline = self.geo.value_inline(stored_key, value.len());
        match value {
            ValueLoc::Inline { .. } if inline => Ok(()),
            ValueLoc::Overflow { first, len } if !inline => self.chain(first, len),
            _ => Err(corrupt(
                id,
                "value stored inline/overflow against the rules",
            )),
        }
    }
}

/// Reserved header bytes are zero, cells do not overlap, and live cells plus
/// fragmented bytes account for the whole cell area.
fn check_layout(node: &Node<'_>) -> Result<()> {
    let b = node.bytes();
    let id = node.id();
    if b[OFF_RESERVED_BYTE] != 0
        || b[OFF_RESERVED_TAIL..LEAF_HEADER_BYTES]
            .iter()
            .any(|&x| x != 0)
    {
        return Err(corrupt(id, "reserved header bytes are not zero"));
    }
    let mut spans = (0..node.count())
        .map(|i| Ok((node.cell_off(i)?, node.cell_size(i)?)))
        .collect::<Result<Vec<_>>>()?;
    spans.sort_unstable();
    let mut end = node.content_start();
    let mut live = 0;
    for (off, size) in spans {
        if off < end {
            return Err(corrupt(id, format_args!("cell at {off} overlaps another")));
        }
        end = off + size;
        live += size;
    }
    if live + node.frag() != b.len() - node.content_start() {
        return Err(corrupt(
            id,
            "free-space accounting does not match the cells",
        ));
    }
    Ok(())
}
