//! Delta merge: folding chains of page deltas into page images, in epoch order.
//!
//! This module owns the law `page state × delta → page state′` as the engine
//! runs it in bulk (background merge worker, recovery):
//! - [`MergePath`] / [`MergeKernel`]: scalar, AVX2 and AVX-512 kernels with
//!   runtime dispatch; all give bit-identical pages to [`Delta::apply`].
//! - [`MergeBatch`]: many pages, each with its delta chain, in a flat layout.
//! - [`MergeBackend`]: the trait a batch merger implements; [`CpuMerge`] is the
//!   CPU one (rayon over pages), and the `cuda` crate implements it for GPUs.
//!
//! Merging is ordered by epoch, never by argument order: chains are sorted by
//! [`CommitEpoch`] when a batch is built and checked again before a merge.

mod batch;
mod cpu;
mod kernels;
mod path;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::AddAssign;

use mmsb_wal::{CommitEpoch, Delta, DeltaError, PageId};

pub use batch::MergeBatch;
pub use cpu::{CpuMerge, MAX_MERGE_THREADS};
pub use kernels::MergeKernel;
pub use path::MergePath;

use crate::error::{Error, Result};
use kernels::{check_extent, delta_error};

/// One delta of a page's chain and the epoch of the commit that wrote it.
#[derive(Clone, Copy, Debug)]
pub struct ChainEntry<'a> {
    /// The commit epoch; chains are folded in increasing epoch order.
    pub epoch: CommitEpoch,
    /// The delta, borrowed from wherever the engine keeps it.
    pub delta: &'a Delta,
}

impl<'a> ChainEntry<'a> {
    /// Pairs a delta with its commit epoch.
    pub fn new(epoch: CommitEpoch, delta: &'a Delta) -> Self {
        ChainEntry { epoch, delta }
    }
}

/// What a merge did, in counts and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Pages merged.
    pub pages: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// Runs applied.
    pub runs: u64,
    /// Bytes written into pages (the sum of the deltas' changed lengths).
    pub bytes_written: u64,
}

impl AddAssign for MergeStats {
    fn add_assign(&mut self, other: MergeStats) {
        self.pages += other.pages;
        self.deltas += other.deltas;
        self.runs += other.runs;
        self.bytes_written += other.bytes_written;
    }
}

/// Something that folds a [`MergeBatch`]'s chains into its page images.
///
/// Contract for every implementation:
/// - call [`MergeBatch::validate`] before writing any image, so a bad batch
///   fails with no page changed;
/// - leave each slot equal to its base image with its chain's deltas applied
///   one after another in epoch order by [`Delta::apply`], bit for bit;
/// - return the totals [`MergeBatch::validate`] gives.
pub trait MergeBackend: Send + Sync {
    /// A short name for logs and metrics, such as `cpu-avx2`.
    fn name(&self) -> &str;

    /// Folds every chain of `batch` into its page image.
    fn merge_batch(&self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error>;

    /// Opens a [`MergeSession`] that keeps pages between batches (a GPU
    /// keeps them resident in device memory), for a run of batches such as
    /// recovery's windows. `None`, the default, means the backend keeps no
    /// pages: callers then merge batch by batch with [`Self::merge_batch`].
    fn open_session(&self, page_len: usize) -> Result<Option<Box<dyn MergeSession + '_>>, Error> {
        let _ = page_len;
        Ok(None)
    }
}

/// Where [`MergeSession::finish`] hands each page and its final image.
pub type PageSink<'a> = dyn FnMut(PageId, &[u8]) -> Result<(), Error> + 'a;

/// A run of folds whose pages stay with the backend between batches: each
/// page's image crosses to the backend once (the first batch that has it)
/// and comes back once ([`MergeSession::finish`]).
///
/// Contract: for a page that an earlier [`MergeSession::fold`] of the same
/// session already held, the session's own image is the base and the
/// batch's image is ignored; after a fold the batch's images are
/// unspecified. `finish` hands out every page the session holds, with its
/// base image folded with every chain given to it, in epoch order, bit for
/// bit as [`Delta::apply`] would. After any error the session's pages are
/// lost: the caller redoes the whole run another way.
pub trait MergeSession {
    /// Folds `batch`'s chains into the session's pages (validating the
    /// batch first, as [`MergeBackend::merge_batch`] does).
    fn fold(&mut self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error>;

    /// Ends the session, giving `sink` every page it holds and its image.
    fn finish(self: Box<Self>, sink: &mut PageSink<'_>) -> Result<(), Error>;
}

/// Checks one page's chain: every delta belongs to `page_id` and fits in
/// `page_len` bytes, and epochs strictly increase. Returns what folding it
/// will do.
pub(crate) fn validate_chain(
    page_id: PageId,
    page_len: usize,
    chain: &[ChainEntry<'_>],
) -> Result<MergeStats> {
    let mut stats = MergeStats {
        pages: 1,
        ..MergeStats::default()
    };
    let mut previous: Option<CommitEpoch> = None;
    for entry in chain {
        let delta_page = entry.delta.page_id();
        if delta_page != page_id {
            return Err(delta_error(DeltaError::PageMismatch {
                left: page_id,
                right: delta_page,
            }));
        }
        if let Some(previous) = previous.filter(|&previous| entry.epoch <= previous) {
            return Err(Error::InvalidArgument(format!(
                "delta chain of {page_id} is not in strictly increasing epoch order: \
                 {previous} is followed by {}",
                entry.epoch
            )));
        }
        check_extent(page_len, entry.delta).map_err(delta_error)?;
        previous = Some(entry.epoch);
        stats.deltas += 1;
        stats.runs += entry.delta.run_count() as u64;
        stats.bytes_written += entry.delta.changed_len() as u64;
    }
    Ok(stats)
}
