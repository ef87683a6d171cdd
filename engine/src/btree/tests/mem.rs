//! `MemPages`: a `HashMap` page store with a free list, implementing the
//! page-access traits for tests. Pages are `Arc`s so reads share them and
//! `page_mut` copies on write, like a transaction's private copy.

use std::collections::HashMap;
use std::sync::Arc;

use mmsb_wal::PageId;

use crate::error::{Error, Result};
use crate::page_access::{PageRead, PageRef, PageWrite};

/// An in-memory page store.
#[derive(Clone)]
pub(crate) struct MemPages {
    page_len: usize,
    pages: HashMap<PageId, Arc<[u8]>>,
    free: Vec<PageId>,
    next: u64,
}

impl MemPages {
    pub(crate) fn new(page_len: usize) -> Self {
        MemPages {
            page_len,
            pages: HashMap::new(),
            free: Vec::new(),
            next: 1,
        }
    }

    /// Pages allocated and not freed.
    pub(crate) fn live_pages(&self) -> usize {
        self.pages.len()
    }

    /// Ids of live pages, sorted.
    pub(crate) fn ids(&self) -> Vec<PageId> {
        let mut ids: Vec<_> = self.pages.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Raw access for corrupting a page.
    pub(crate) fn raw_mut(&mut self, id: PageId) -> &mut [u8] {
        Arc::make_mut(self.pages.get_mut(&id).expect("live page"))
    }

    /// A copy of page `id`.
    pub(crate) fn raw(&self, id: PageId) -> Vec<u8> {
        self.pages[&id].to_vec()
    }
}

impl PageRead for MemPages {
    fn page_len(&self) -> usize {
        self.page_len
    }

    fn read_page(&self, id: PageId) -> Result<PageRef> {
        self.pages
            .get(&id)
            .map(|p| PageRef::new(p.clone()))
            .ok_or(Error::PageOutOfRange(id))
    }
}

impl PageWrite for MemPages {
    fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        self.pages
            .get_mut(&id)
            .map(Arc::make_mut)
            .ok_or(Error::PageOutOfRange(id))
    }

    fn allocate_page(&mut self) -> Result<PageId> {
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            PageId(self.next - 1)
        });
        let fresh: Arc<[u8]> = vec![0u8; self.page_len].into();
        assert!(
            self.pages.insert(id, fresh).is_none(),
            "{id} allocated twice"
        );
        Ok(id)
    }

    fn free_page(&mut self, id: PageId) -> Result<()> {
        // A double free must surface as a test failure, not a panic, so the
        // corruption tests can run writes on damaged trees.
        if self.pages.remove(&id).is_none() {
            return Err(Error::InvalidArgument(format!("{id} freed but not live")));
        }
        self.free.push(id);
        Ok(())
    }
}
