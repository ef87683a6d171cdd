//! The range iterator of a table inside a transaction: the snapshot's
//! B+tree entries merged with the transaction's own buffered writes (which
//! win on equal keys; a buffered removal hides the key). Iterates from both
//! ends.

use std::sync::Arc;

use crate::btree::{KeyGuard, RangeIter, ValueGuard};
use crate::error::Result;
use crate::mvcc::view::ByteView;
use crate::txn::PageReadTransaction;

type TreeItem = (KeyGuard, ValueGuard);
type BufferItem<'a> = (&'a Arc<[u8]>, &'a Option<Arc<[u8]>>);
pub(crate) use super::buffer::BufferRange;

/// Entries of a table in key order, from either end.
pub struct Range<'a> {
    tree: Option<RangeIter<'a, PageReadTransaction>>,
    buffer: Option<BufferRange<'a>>,
    front_tree: Option<TreeItem>,
    back_tree: Option<TreeItem>,
    front_buffer: Option<BufferItem<'a>>,
    back_buffer: Option<BufferItem<'a>>,
    failed: bool,
}

impl std::fmt::Debug for Range<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("failed", &self.failed)
            .finish()
    }
}

/// Which side of the merge to take next.
enum Pick {
    Tree,
    Buffer,
    Both,
}

impl<'a> Range<'a> {
    pub(crate) fn new(
        tree: Option<RangeIter<'a, PageReadTransaction>>,
        buffer: Option<BufferRange<'a>>,
    ) -> Self {
        Range {
            tree,
            buffer,
            front_tree: None,
            back_tree: None,
            front_buffer: None,
            back_buffer: None,
            failed: false,
        }
    }

    pub(crate) fn empty() -> Self {
        Range::new(None, None)
    }

    /// Fills the front slots; `Err` when the tree failed.
    fn fill_front(&mut self) -> Result<()> {
        if self.front_tree.is_none() {
            self.front_tree = match self.tree.as_mut().and_then(Iterator::next) {
                Some(item) => Some(item?),
                None => self.back_tree.take(),
            };
        }
        if self.front_buffer.is_none() {
            self.front_buffer = match self.buffer.as_mut().and_then(Iterator::next) {
                Some(item) => Some(item),
                None => self.back_buffer.take(),
            };
        }
        Ok(())
    }

    fn fill_back(&mut self) -> Result<()> {
        if self.back_tree.is_none() {
            self.back_tree = match self.tree.as_mut().and_then(DoubleEndedIterator::next_back) {
                Some(item) => Some(item?),
                None => self.front_tree.take(),
            };
        }
        if self.back_buffer.is_none() {
            self.back_buffer = match self
                .buffer
                .as_mut()
                .and_then(DoubleEndedIterator::next_back)
            {
                Some(item) => Some(item),
                None => self.front_buffer.take(),
            };
        }
        Ok(())
    }

    fn pick(
        tree: Option<&TreeItem>,
        buffer: Option<&BufferItem<'_>>,
        forward: bool,
    ) -> Option<Pick> {
        match (tree, buffer) {
            (None, None) => None,
            (Some(_), None) => Some(Pick::Tree),
            (None, Some(_)) => Some(Pick::Buffer),
            (Some((tree_key, _)), Some((buffer_key, _))) => {
                let order = tree_key[..].cmp(&buffer_key[..]);
                let order = if forward { order } else { order.reverse() };
                Some(match order {
                    std::cmp::Ordering::Less => Pick::Tree,
                    std::cmp::Ordering::Greater => Pick::Buffer,
                    std::cmp::Ordering::Equal => Pick::Both,
                })
            }
        }
    }

    fn step(&mut self, forward: bool) -> Option<Result<(ByteView, ByteView)>> {
        if self.failed {
            return None;
        }
        loop {
            let filled = if forward {
                self.fill_front()
            } else {
                self.fill_back()
            };
            if let Err(err) = filled {
                self.failed = true;
                return Some(Err(err));
            }
            let (tree_slot, buffer_slot) = if forward {
                (&mut self.front_tree, &mut self.front_buffer)
            } else {
                (&mut self.back_tree, &mut self.back_buffer)
            };
            let tree_item = match Self::pick(tree_slot.as_ref(), buffer_slot.as_ref(), forward)? {
                Pick::Tree => {
                    let (key, value) = tree_slot.take()?;
                    return Some(Ok((ByteView::from_page(key), ByteView::from_page(value))));
                }
                Pick::Buffer => None,
                Pick::Both => tree_slot.take(),
            };
            let (key, value) = buffer_slot.take()?;
            if let Some(value) = value {
                let key = match tree_item {
                    Some((tree_key, _)) => ByteView::from_page(tree_key),
                    None => ByteView::shared(Arc::clone(key)),
                };
                return Some(Ok((key, ByteView::shared(Arc::clone(value)))));
            }
            // A buffered removal: the key is gone; look at the next one.
        }
    }
}

impl Iterator for Range<'_> {
    type Item = Result<(ByteView, ByteView)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}
