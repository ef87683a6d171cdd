//! The tolerant walk of a tree, for `mmsb check` (which pages a tree
//! reaches) and salvage (every entry still readable): unlike the cursor, it
//! does not stop at the first damaged page. A page that cannot be read or
//! parsed is recorded as lost, with the key range its subtree covered, and
//! the walk goes on with its siblings. It never returns bytes of a page that
//! failed verification: every page comes through [`PageRead`], which checks
//! it.

use std::collections::HashSet;

use mmsb_wal::PageId;

use super::format::*;
use super::node::{KeyRef, Node, NodeKind, ValueLoc};
use super::overflow::walk_chain;
use super::TreeHeader;
use crate::error::{Error, Result};
use crate::page_access::PageRead;

/// A page the walk could not use, and the keys its subtree held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LostPage {
    /// The page the walk wanted (a node, or the first page of an overflow
    /// chain of a cell on an intact leaf).
    pub(crate) page: PageId,
    /// Smallest key it could hold (`None`: unbounded).
    pub(crate) lo: Option<Vec<u8>>,
    /// Keys it held lie below this one (`None`: unbounded).
    pub(crate) hi: Option<Vec<u8>>,
    /// Why it could not be used.
    pub(crate) reason: String,
}

/// What a tolerant walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalkOutcome {
    /// Every page read intact: nodes and overflow pages.
    pub(crate) reached: Vec<PageId>,
    /// Subtrees and overflow chains that could not be read.
    pub(crate) lost: Vec<LostPage>,
    /// Entries handed to the visitor.
    pub(crate) entries: u64,
}

/// What [`walk_tolerant`] hands each readable entry to: `(key, value)`.
pub(crate) type EntryVisitor<'v> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'v;

/// Walks the tree in key order, calling `visit(key, value)` for every entry
/// whose leaf, key and value all read intact. Damage (`Corrupted`, or a page
/// id outside the database) is recorded in the outcome; an I/O error, or an
/// error of `visit`, ends the walk with that error.
pub(crate) fn walk_tolerant<P: PageRead>(
    pages: &P,
    header: &TreeHeader,
    visit: &mut EntryVisitor<'_>,
) -> Result<WalkOutcome> {
    let mut walker = Walker {
        pages,
        geo: Geometry::new(pages.page_len())?,
        seen: HashSet::new(),
        outcome: WalkOutcome::default(),
        visit,
    };
    if header.validate().is_ok() && !header.is_empty() {
        walker.node(header.root, header.height - 1, None, None)?;
    }
    Ok(walker.outcome)
}

/// Whether an error means damaged bytes (recorded) rather than a failure of
/// the walk itself (returned).
fn is_damage(err: &Error) -> bool {
    err.is_corruption() || matches!(err, Error::PageOutOfRange(_))
}

struct Walker<'a, P: PageRead> {
    pages: &'a P,
    geo: Geometry,
    seen: HashSet<PageId>,
    outcome: WalkOutcome,
    visit: &'a mut EntryVisitor<'a>,
}

impl<P: PageRead> Walker<'_, P> {
    fn lose(
        &mut self,
        page: PageId,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        err: Error,
    ) -> Result<()> {
        if !is_damage(&err) {
            return Err(err);
        }
        self.outcome.lost.push(LostPage {
            page,
            lo: lo.map(<[u8]>::to_vec),
            hi: hi.map(<[u8]>::to_vec),
            reason: err.to_string(),
        });
        Ok(())
    }

    /// Walks the subtree at `id` (keys in `[lo, hi)`); damage is recorded.
    fn node(&mut self, id: PageId, level: u8, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Result<()> {
        if id.get() == 0 || !self.seen.insert(id) {
            return self.lose(id, lo, hi, corrupt(id, "page reachable twice"));
        }
        match self.node_inner(id, level, lo, hi) {
            Ok(()) => Ok(()),
            Err(err) => self.lose(id, lo, hi, err),
        }
    }

    fn node_inner(
        &mut self,
        id: PageId,
        level: u8,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<()> {
        let page = read_page(self.pages, id)?;
        let geo = self.geo;
        let node = Node::parse(&page, id, level, &geo)?;
        self.outcome.reached.push(id);
        match node.kind() {
            NodeKind::Leaf => self.leaf(&node, lo, hi),
            NodeKind::Branch => self.branch(&node, level, lo, hi),
        }
    }

    fn branch(
        &mut self,
        node: &Node<'_>,
        level: u8,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<()> {
        let n = node.count();
        let mut separators = Vec::with_capacity(n);
        for i in 0..n {
            let key = node.branch_cell(i)?.key;
            let full = self.load_chain_key(&key, lo, hi)?;
            separators.push(full);
        }
        for pos in 0..=n {
            let child_lo = if pos == 0 {
                lo
            } else {
                separators[pos - 1].as_deref()
            };
            let child_hi = if pos == n {
                hi
            } else {
                separators[pos].as_deref()
            };
            let child = node.child(pos)?;
            self.node(child, level - 1, child_lo, child_hi)?;
        }
        Ok(())
    }

    /// A separator or leaf key; `None` when its overflow chain is lost
    /// (recorded), which only widens the key ranges reported.
    fn load_chain_key(
        &mut self,
        key: &KeyRef<'_>,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>> {
        let mut full = Vec::with_capacity(key.len.min(OVERFLOW_PREALLOC_BYTES_MAX));
        full.extend_from_slice(key.local);
        if let Some(first) = key.overflow {
            let len = key.len - key.local.len();
            if !self.chain(first, len, Some(&mut full), (lo, hi))? {
                return Ok(None);
            }
        }
        Ok(Some(full))
    }

    fn leaf(&mut self, node: &Node<'_>, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Result<()> {
        for i in 0..node.count() {
            let cell = node.leaf_cell(i)?;
            let Some(key) = self.load_chain_key(&cell.key, lo, hi)? else {
                continue;
            };
            let value = match cell.value {
                ValueLoc::Inline { start, end } => node.bytes()[start..end].to_vec(),
                ValueLoc::Overflow { first, len } => {
                    let mut value = Vec::with_capacity(len.min(OVERFLOW_PREALLOC_BYTES_MAX));
                    // A lost value loses exactly its key: [key, key ++ 0).
                    let next = [key.as_slice(), &[0]].concat();
                    let only = (Some(key.as_slice()), Some(next.as_slice()));
                    if !self.chain(first, len, Some(&mut value), only)? {
                        continue;
                    }
                    value
                }
            };
            (self.visit)(&key, &value)?;
            self.outcome.entries += 1;
        }
        Ok(())
    }

    /// Reads an overflow chain (into `out` when given); `false` when it is
    /// damaged (recorded as lost, with the key range `(lo, hi)` it costs).
    fn chain(
        &mut self,
        first: PageId,
        len: usize,
        mut out: Option<&mut Vec<u8>>,
        (lo, hi): (Option<&[u8]>, Option<&[u8]>),
    ) -> Result<bool> {
        let mut visited = Vec::new();
        let seen = &mut self.seen;
        let walked = walk_chain(self.pages, &self.geo, first, len, |id, payload| {
            if !seen.insert(id) {
                return Err(corrupt(id, "page reachable twice"));
            }
            visited.push(id);
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(payload);
            }
            Ok(true)
        });
        self.outcome.reached.extend(visited);
        match walked {
            Ok(()) => Ok(true),
            Err(err) => {
                self.lose(first, lo, hi, err)?;
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;
    use crate::btree;
    use crate::page_access::{PageRef, PageWrite};

    const PAGE_LEN: usize = MIN_PAGE_LEN;

    /// Pages in a map; pages in `damaged` read as `Corrupted`.
    #[derive(Default)]
    struct Pages {
        pages: HashMap<PageId, Vec<u8>>,
        damaged: HashSet<PageId>,
        next: u64,
    }

    impl PageRead for Pages {
        fn page_len(&self) -> usize {
            PAGE_LEN
        }
        fn read_page(&self, id: PageId) -> Result<PageRef> {
            if self.damaged.contains(&id) {
                return Err(Error::Corrupted(format!("{id}: checksum mismatch")));
            }
            let page = self.pages.get(&id).ok_or(Error::PageOutOfRange(id))?;
            Ok(PageRef::new(page.as_slice().into()))
        }
    }

    impl PageWrite for Pages {
        fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
            self.pages
                .get_mut(&id)
                .map(Vec::as_mut_slice)
                .ok_or(Error::PageOutOfRange(id))
        }
        fn allocate_page(&mut self) -> Result<PageId> {
            self.next += 1;
            let id = PageId(self.next + 1);
            self.pages.insert(id, vec![0; PAGE_LEN]);
            Ok(id)
        }
        fn free_page(&mut self, id: PageId) -> Result<()> {
            self.pages.remove(&id);
            Ok(())
        }
    }

    fn build(rows: u32) -> (Pages, TreeHeader, BTreeMap<Vec<u8>, Vec<u8>>) {
        let mut pages = Pages::default();
        let mut header = TreeHeader::EMPTY;
        let mut model = BTreeMap::new();
        for i in 0..rows {
            let key = format!("key{i:05}").into_bytes();
            let value = vec![(i % 251) as u8; (i % 7) as usize * 40];
            btree::insert(&mut pages, &mut header, &key, &value).expect("insert");
            model.insert(key, value);
        }
        (pages, header, model)
    }

    fn walk(pages: &Pages, header: &TreeHeader) -> (BTreeMap<Vec<u8>, Vec<u8>>, WalkOutcome) {
        let mut got: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let outcome = walk_tolerant(pages, header, &mut |k, v| {
            assert!(got
                .last_key_value()
                .is_none_or(|(last, _)| last.as_slice() < k));
            got.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .expect("walk");
        (got, outcome)
    }

    #[test]
    fn an_intact_tree_is_walked_whole_in_key_order() {
        let (pages, header, model) = build(600);
        assert!(header.height >= 3, "a deep tree");
        let (got, outcome) = walk(&pages, &header);
        assert_eq!(got, model);
        assert!(outcome.lost.is_empty());
        assert_eq!(outcome.entries, 600);
        let reached: HashSet<PageId> = outcome.reached.iter().copied().collect();
        assert_eq!(reached.len(), outcome.reached.len(), "no page twice");
        assert_eq!(reached, pages.pages.keys().copied().collect());
    }

    #[test]
    fn a_damaged_page_loses_only_the_keys_in_its_range() {
        let (mut pages, header, model) = build(600);
        let ids: Vec<PageId> = {
            let mut ids: Vec<PageId> = pages.pages.keys().copied().collect();
            ids.sort();
            ids
        };
        for victim in ids
            .iter()
            .copied()
            .filter(|id| *id != header.root)
            .step_by(7)
        {
            pages.damaged = HashSet::from([victim]);
            let (got, outcome) = walk(&pages, &header);
            assert!(!outcome.lost.is_empty(), "{victim} not reported");
            for (key, value) in &got {
                assert_eq!(model.get(key), Some(value), "invented or altered row");
            }
            for key in model.keys().filter(|k| !got.contains_key(*k)) {
                let covered = outcome.lost.iter().any(|lost| {
                    lost.lo.as_deref().is_none_or(|lo| lo <= key.as_slice())
                        && lost.hi.as_deref().is_none_or(|hi| key.as_slice() < hi)
                });
                assert!(covered, "{key:?} lost outside every reported range");
            }
        }
    }

    #[test]
    fn a_damaged_root_loses_everything_without_error() {
        let (mut pages, header, _) = build(100);
        pages.damaged.insert(header.root);
        let (got, outcome) = walk(&pages, &header);
        assert!(got.is_empty());
        assert_eq!(outcome.lost.len(), 1);
        assert_eq!(outcome.lost[0].page, header.root);
    }
}
