//! [`MergeBatch`]: many pages, each with the chain of deltas to fold into it,
//! laid out flat so that a GPU backend can copy it in a few transfers.
//!
//! Layout: the page images sit back to back in one buffer of `page_len`-byte
//! slots (slot `i` is bytes `[i * page_len, (i + 1) * page_len)`); the chains
//! are one array of [`ChainEntry`] with per-page start offsets (CSR style:
//! page `i`'s chain is `entries[starts[i]..starts[i + 1]]`). The deltas
//! themselves are borrowed, not copied.
//!
//! Invariants (established by [`MergeBatch::push_page`], rechecked by
//! [`MergeBatch::validate`] before any backend writes a byte): each chain is
//! in strictly increasing epoch order, each delta belongs to its slot's page
//! and fits in `page_len`, and no page appears twice.

use std::collections::HashSet;

use mmsb_wal::delta::MAX_PAGE_LEN;
use mmsb_wal::PageId;

use super::{validate_chain, ChainEntry, MergeStats};
use crate::error::{Error, Result};

/// Pages and their delta chains, ready for a [`super::MergeBackend`].
pub struct MergeBatch<'a> {
    page_len: usize,
    page_ids: Vec<PageId>,
    images: Vec<u8>,
    starts: Vec<usize>,
    entries: Vec<ChainEntry<'a>>,
    seen: HashSet<PageId>,
}

impl std::fmt::Debug for MergeBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeBatch")
            .field("page_len", &self.page_len)
            .field("pages", &self.page_ids.len())
            .field("deltas", &self.entries.len())
            .finish()
    }
}

impl<'a> MergeBatch<'a> {
    /// An empty batch of `page_len`-byte pages (1 ..= [`MAX_PAGE_LEN`]).
    pub fn new(page_len: usize) -> Result<Self> {
        Self::with_capacity(page_len, 0, 0)
    }

    /// An empty batch with room for `pages` pages and `deltas` deltas.
    pub fn with_capacity(page_len: usize, pages: usize, deltas: usize) -> Result<Self> {
        if page_len == 0 || page_len > MAX_PAGE_LEN {
            return Err(Error::InvalidArgument(format!(
                "merge page length {page_len} is outside 1..={MAX_PAGE_LEN}"
            )));
        }
        let mut starts = Vec::with_capacity(pages.saturating_add(1));
        starts.push(0);
        Ok(MergeBatch {
            page_len,
            page_ids: Vec::with_capacity(pages),
            images: Vec::with_capacity(pages.saturating_mul(page_len)),
            starts,
            entries: Vec::with_capacity(deltas),
            seen: HashSet::with_capacity(pages),
        })
    }

    /// Adds a page: its current image `base` (exactly `page_len` bytes, copied
    /// into the batch) and its deltas, in any order: they are sorted by epoch
    /// here, so the merge order never depends on the order given.
    ///
    /// Errors, leaving the batch as it was: `InvalidArgument` for a base of
    /// the wrong length, a page already in the batch or two deltas of one
    /// epoch; `Wal(Delta(PageMismatch))` for a delta of another page;
    /// `Wal(Delta(OutOfBounds))` for a delta that does not fit the page.
    /// Returns the page's slot index.
    pub fn push_page<I>(&mut self, page_id: PageId, base: &[u8], chain: I) -> Result<usize>
    where
        I: IntoIterator<Item = ChainEntry<'a>>,
    {
        if base.len() != self.page_len {
            return Err(Error::InvalidArgument(format!(
                "base image of {page_id} has {} bytes, the batch's pages have {}",
                base.len(),
                self.page_len
            )));
        }
        if self.seen.contains(&page_id) {
            return Err(Error::InvalidArgument(format!(
                "{page_id} is already in the merge batch"
            )));
        }
        let first = self.entries.len();
        self.entries.extend(chain);
        if let Err(error) = self.seal_chain(page_id, first) {
            self.entries.truncate(first);
            return Err(error);
        }
        self.seen.insert(page_id);
        self.page_ids.push(page_id);
        self.images.extend_from_slice(base);
        self.starts.push(self.entries.len());
        Ok(self.page_ids.len() - 1)
    }

    /// Sorts the chain just appended at `entries[first..]` by epoch and checks it.
    fn seal_chain(&mut self, page_id: PageId, first: usize) -> Result<MergeStats> {
        let chain = &mut self.entries[first..];
        chain.sort_by_key(|entry| entry.epoch);
        validate_chain(page_id, self.page_len, chain)
    }

    /// Bytes per page.
    pub fn page_len(&self) -> usize {
        self.page_len
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.page_ids.len()
    }

    /// True when the batch has no page.
    pub fn is_empty(&self) -> bool {
        self.page_ids.is_empty()
    }

    /// Number of deltas over all chains.
    pub fn delta_count(&self) -> usize {
        self.entries.len()
    }

    /// The page ids, in slot order.
    pub fn page_ids(&self) -> &[PageId] {
        &self.page_ids
    }

    /// The image in slot `slot` (after a merge: the merged image).
    pub fn page(&self, slot: usize) -> Option<&[u8]> {
        let start = slot.checked_mul(self.page_len)?;
        self.images.get(start..start.checked_add(self.page_len)?)
    }

    /// Page `slot`'s chain, in epoch order.
    pub fn chain(&self, slot: usize) -> Option<&[ChainEntry<'a>]> {
        let (start, end) = (*self.starts.get(slot)?, *self.starts.get(slot + 1)?);
        self.entries.get(start..end)
    }

    /// Every image, slot after slot.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// Takes the image buffer out (slot after slot), ending the batch.
    pub fn into_images(self) -> Vec<u8> {
        self.images
    }

    /// Per-page chain starts: page `i`'s chain is `entries()[starts()[i]..starts()[i + 1]]`.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// Every chain entry, page after page, each page's in epoch order.
    pub fn entries(&self) -> &[ChainEntry<'a>] {
        &self.entries
    }

    /// The image buffer to write merged pages into, with the chains to fold
    /// (for backends: each `page_len` chunk of the first goes with the chain
    /// of the same slot).
    pub fn split_for_merge(&mut self) -> (&mut [u8], &[usize], &[ChainEntry<'a>]) {
        (&mut self.images, &self.starts, &self.entries)
    }

    /// Rechecks every invariant and totals what a merge will do. Backends call
    /// this before writing anything, so a bad batch changes no page.
    pub fn validate(&self) -> Result<MergeStats> {
        let pages = self.page_ids.len();
        if self.starts.len() != pages + 1
            || self.images.len() != pages * self.page_len
            || self.starts.last() != Some(&self.entries.len())
        {
            return Err(Error::InvalidArgument(
                "merge batch layout is inconsistent".into(),
            ));
        }
        let mut total = MergeStats::default();
        for (slot, &page_id) in self.page_ids.iter().enumerate() {
            let chain = self.chain(slot).ok_or_else(|| {
                Error::InvalidArgument(format!("chain offsets of slot {slot} are out of order"))
            })?;
            total += validate_chain(page_id, self.page_len, chain)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_wal::{CommitEpoch, Delta, DeltaError, WalError};

    fn image_delta(page: u64, byte: u8, len: usize) -> Delta {
        Delta::full_image(PageId(page), &vec![byte; len]).unwrap()
    }

    #[test]
    fn page_len_out_of_range_is_rejected() {
        assert!(matches!(MergeBatch::new(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            MergeBatch::new(MAX_PAGE_LEN + 1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(MergeBatch::new(MAX_PAGE_LEN).is_ok());
    }

    #[test]
    fn push_sorts_the_chain_by_epoch() {
        let (a, b, c) = (
            image_delta(1, 1, 4),
            image_delta(1, 2, 4),
            image_delta(1, 3, 4),
        );
        let mut batch = MergeBatch::new(8).unwrap();
        let slot = batch
            .push_page(
                PageId(1),
                &[0; 8],
                [
                    ChainEntry::new(CommitEpoch(9), &c),
                    ChainEntry::new(CommitEpoch(2), &a),
                    ChainEntry::new(CommitEpoch(5), &b),
                ],
            )
            .unwrap();
        let epochs: Vec<u64> = batch
            .chain(slot)
            .unwrap()
            .iter()
            .map(|e| e.epoch.get())
            .collect();
        assert_eq!(epochs, [2, 5, 9]);
        assert_eq!(batch.validate().unwrap().deltas, 3);
    }

    #[test]
    fn failed_push_leaves_the_batch_unchanged() {
        let good = image_delta(1, 1, 4);
        let foreign = image_delta(2, 1, 4);
        let too_long = image_delta(1, 1, 9);
        let mut batch = MergeBatch::new(8).unwrap();
        batch
            .push_page(PageId(1), &[0; 8], [ChainEntry::new(CommitEpoch(1), &good)])
            .unwrap();
        let before = (batch.len(), batch.delta_count(), batch.images().to_vec());

        let mismatch = batch.push_page(
            PageId(3),
            &[0; 8],
            [
                ChainEntry::new(CommitEpoch(1), &foreign),
                ChainEntry::new(CommitEpoch(2), &good),
            ],
        );
        assert!(matches!(
            mismatch,
            Err(Error::Wal(WalError::Delta(DeltaError::PageMismatch { .. })))
        ));
        let past_end = batch.push_page(
            PageId(1),
            &[0; 8],
            [ChainEntry::new(CommitEpoch(1), &too_long)],
        );
        assert!(past_end.is_err());
        let short_base = batch.push_page(PageId(4), &[0; 7], []);
        assert!(matches!(short_base, Err(Error::InvalidArgument(_))));
        let twice = batch.push_page(PageId(1), &[0; 8], []);
        assert!(matches!(twice, Err(Error::InvalidArgument(_))));

        assert_eq!(
            (batch.len(), batch.delta_count(), batch.images().to_vec()),
            before
        );
        assert!(batch.validate().is_ok());
    }

    #[test]
    fn delta_past_the_page_end_is_rejected() {
        let too_long = image_delta(5, 1, 9);
        let mut batch = MergeBatch::new(8).unwrap();
        let result = batch.push_page(
            PageId(5),
            &[0; 8],
            [ChainEntry::new(CommitEpoch(1), &too_long)],
        );
        assert!(matches!(
            result,
            Err(Error::Wal(WalError::Delta(DeltaError::OutOfBounds {
                end: 9,
                page_len: 8,
                ..
            })))
        ));
    }

    #[test]
    fn two_deltas_of_one_epoch_are_rejected() {
        let (a, b) = (image_delta(1, 1, 4), image_delta(1, 2, 4));
        let mut batch = MergeBatch::new(8).unwrap();
        let result = batch.push_page(
            PageId(1),
            &[0; 8],
            [
                ChainEntry::new(CommitEpoch(7), &a),
                ChainEntry::new(CommitEpoch(7), &b),
            ],
        );
        assert!(matches!(result, Err(Error::InvalidArgument(_))));
        assert!(batch.is_empty());
    }

    #[test]
    fn validate_catches_a_chain_out_of_epoch_order() {
        // Only code inside this module can break the invariant; validate must
        // still see it, since backends trust it for what they write.
        let (a, b) = (image_delta(1, 1, 4), image_delta(1, 2, 4));
        let mut batch = MergeBatch::new(8).unwrap();
        batch
            .push_page(
                PageId(1),
                &[0; 8],
                [
                    ChainEntry::new(CommitEpoch(1), &a),
                    ChainEntry::new(CommitEpoch(2), &b),
                ],
            )
            .unwrap();
        batch.entries.swap(0, 1);
        assert!(matches!(batch.validate(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn validate_catches_a_broken_layout() {
        let mut batch = MergeBatch::new(8).unwrap();
        batch.push_page(PageId(1), &[0; 8], []).unwrap();
        batch.images.push(0);
        assert!(matches!(batch.validate(), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn debug_output_summarises_instead_of_dumping_images() {
        let mut batch = MergeBatch::new(4096).unwrap();
        batch.push_page(PageId(1), &[0; 4096], []).unwrap();
        let text = format!("{batch:?}");
        assert_eq!(text, "MergeBatch { page_len: 4096, pages: 1, deltas: 0 }");
    }

    #[test]
    fn accessors_report_the_layout() {
        let d = image_delta(4, 9, 2);
        let mut batch = MergeBatch::with_capacity(4, 2, 1).unwrap();
        batch.push_page(PageId(3), &[1; 4], []).unwrap();
        batch
            .push_page(PageId(4), &[2; 4], [ChainEntry::new(CommitEpoch(1), &d)])
            .unwrap();
        assert_eq!(batch.page_ids(), [PageId(3), PageId(4)]);
        assert_eq!(batch.starts(), [0, 0, 1]);
        assert_eq!(batch.page(1), Some(&[2u8; 4][..]));
        assert_eq!(batch.page(2), None);
        assert_eq!(batch.chain(0).map(<[_]>::len), Some(0));
        assert_eq!(batch.chain(2).map(<[_]>::len), None);
        assert_eq!(batch.into_images(), [1, 1, 1, 1, 2, 2, 2, 2]);
    }
}
