//! How code above the page store (B+trees, catalogs) reads and changes pages.
//!
//! A transaction implements these traits: reads see its snapshot plus its own
//! writes; `page_mut` hands out a private copy of the page that the commit
//! turns into a [`mmsb_wal::Delta`] by diffing it against the snapshot's image.
//! Code written against these traits knows nothing of the TLog, MVCC or files.

use std::ops::Deref;
use std::sync::Arc;

use mmsb_wal::PageId;

use crate::error::Result;

/// An immutable view of one page's usable bytes (the payload, without the
/// trailer that holds the checksum). Cheap to clone: it shares the buffer.
#[derive(Clone, Debug)]
pub struct PageRef {
    bytes: Arc<[u8]>,
}

impl PageRef {
    /// Wraps a page image.
    pub fn new(bytes: Arc<[u8]>) -> Self {
        PageRef { bytes }
    }

    /// The shared buffer behind this view.
    pub fn shared(&self) -> &Arc<[u8]> {
        &self.bytes
    }
}

impl Deref for PageRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Read access to pages as of one snapshot.
pub trait PageRead {
    /// Usable bytes per page (page size minus the trailer).
    fn page_len(&self) -> usize;
    /// The page's bytes. Errors on a page id outside the database or on a
    /// page whose checksum fails.
    fn read_page(&self, id: PageId) -> Result<PageRef>;
    /// Lends the page's bytes to `read` (the same bytes
    /// [`PageRead::read_page`] returns). An implementation may lend them
    /// without a reference count or a copy; `read` should then be short
    /// and must not block. The default reads the page and lends that.
    fn with_page<R>(&self, id: PageId, read: impl FnOnce(&[u8]) -> R) -> Result<R>
    where
        Self: Sized,
    {
        Ok(read(&self.read_page(id)?))
    }
}

/// Write access to pages inside one write transaction.
pub trait PageWrite: PageRead {
    /// A mutable private copy of the page; changes become a delta at commit.
    fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]>;
    /// [`PageWrite::page_mut`], with the page's record of changed ranges
    /// when the implementation keeps one: the caller must note in it every
    /// byte range it changes before it asks for another page (the commit
    /// then diffs only those ranges). `None` (the default): nothing to note.
    fn page_mut_noted(
        &mut self,
        id: PageId,
    ) -> Result<(&mut [u8], Option<&mut crate::txn::WrittenRanges>)> {
        Ok((self.page_mut(id)?, None))
    }
    /// A fresh page, zero-filled, owned by this transaction.
    fn allocate_page(&mut self) -> Result<PageId>;
    /// Returns a page to the free list when the transaction commits.
    fn free_page(&mut self, id: PageId) -> Result<()>;
}
