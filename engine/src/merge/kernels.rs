//! [`MergeKernel`]: a merge path this CPU was checked to support, and the
//! single place that dispatches to the scalar or SIMD code.
//!
//! A `MergeKernel` can only be made for an available path, which is what makes
//! the `unsafe` calls into `#[target_feature]` code sound: the check happens
//! once when the kernel is made, not per run.

use mmsb_wal::{Delta, DeltaError, PageId, WalError};

use super::path::MergePath;
use super::{scalar, validate_chain, ChainEntry, MergeStats};
use crate::error::Result;

/// A merge path this CPU supports, with the kernels that run on it.
///
/// Invariant: `self.path().is_available()`; only the constructors below make
/// one, and they check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeKernel {
    path: MergePath,
}

impl MergeKernel {
    /// The kernel for `path`. Errors with `InvalidArgument` when this CPU
    /// cannot run it. Use this to force a path (tests, benches).
    pub fn new(path: MergePath) -> Result<Self> {
        path.check_available()?;
        Ok(MergeKernel { path })
    }

    /// The kernel of the fastest path this CPU supports.
    pub fn best() -> Self {
        MergeKernel {
            path: MergePath::best_available(),
        }
    }

    /// The scalar kernel, available everywhere.
    pub fn scalar() -> Self {
        MergeKernel {
            path: MergePath::Scalar,
        }
    }

    /// The path this kernel runs.
    pub fn path(self) -> MergePath {
        self.path
    }

    /// Applies one delta's runs to `page`, exactly like [`Delta::apply`]. The
    /// page is left untouched when a run would not fit. Costs time in
    /// proportion to [`Delta::changed_len`].
    pub fn apply_delta(self, page: &mut [u8], delta: &Delta) -> Result<(), DeltaError> {
        check_extent(page.len(), delta)?;
        self.apply_runs(page, delta);
        Ok(())
    }

    /// Folds the delta chain of one page into `page` in epoch order.
    ///
    /// The chain must be sorted by strictly increasing epoch and every delta
    /// must belong to `page_id` and fit in `page`; otherwise the page is left
    /// untouched and the error says why (`InvalidArgument` for the order,
    /// `Wal(Delta(PageMismatch | OutOfBounds))` for a delta).
    pub fn fold_chain(
        self,
        page_id: PageId,
        page: &mut [u8],
        chain: &[ChainEntry<'_>],
    ) -> Result<MergeStats> {
        let stats = validate_chain(page_id, page.len(), chain)?;
        self.fold_validated(page, chain);
        Ok(stats)
    }

    /// Applies a chain already checked by [`validate_chain`] against this
    /// page's id and length.
    pub(super) fn fold_validated(self, page: &mut [u8], chain: &[ChainEntry<'_>]) {
        for entry in chain {
            debug_assert!(entry.delta.extent() <= page.len());
            self.apply_runs(page, entry.delta);
        }
    }

    /// Dispatches to the path's kernel. The delta's extent was checked.
    fn apply_runs(self, page: &mut [u8], delta: &Delta) {
        match self.path {
            MergePath::Scalar => scalar::apply_runs(page, delta),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a MergeKernel with this path exists only after
            // `MergePath::Avx2.is_available()` said this CPU has AVX2.
            MergePath::Avx2 => unsafe { super::x86::apply_runs_avx2(page, delta) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a MergeKernel with this path exists only after
            // `MergePath::Avx512.is_available()` said this CPU has AVX-512F
            // and AVX-512BW.
            MergePath::Avx512 => unsafe { super::x86::apply_runs_avx512(page, delta) },
            // Unreachable: these paths are never available off x86-64, so no
            // kernel for them can be made. The scalar code is the safe answer.
            #[cfg(not(target_arch = "x86_64"))]
            MergePath::Avx2 | MergePath::Avx512 => scalar::apply_runs(page, delta),
        }
    }
}

impl Default for MergeKernel {
    /// The fastest available kernel.
    fn default() -> Self {
        MergeKernel::best()
    }
}

/// Errors when `delta` writes past a `page_len`-byte page.
pub(super) fn check_extent(page_len: usize, delta: &Delta) -> Result<(), DeltaError> {
    let end = delta.extent();
    if end > page_len {
        let offset = delta.runs().last().map_or(0, |run| run.offset as usize);
        return Err(DeltaError::OutOfBounds {
            offset,
            end,
            page_len,
        });
    }
    Ok(())
}

/// Wraps a delta error in the engine's error type.
pub(super) fn delta_error(error: DeltaError) -> crate::Error {
    crate::Error::Wal(WalError::Delta(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_wal::{CommitEpoch, DeltaRun};

    const PAGE: PageId = PageId(11);

    fn delta(runs: &[(u32, &[u8])]) -> Delta {
        Delta::from_sorted_runs(
            PAGE,
            runs.iter()
                .map(|&(offset, bytes)| DeltaRun { offset, bytes }),
        )
        .unwrap()
    }

    fn kernels() -> Vec<MergeKernel> {
        MergePath::ALL
            .into_iter()
            .filter_map(|path| match MergeKernel::new(path) {
                Ok(kernel) => Some(kernel),
                Err(_) => {
                    eprintln!("skipping {path}: not supported on this CPU");
                    None
                }
            })
            .collect()
    }

    /// Every run length 0..=300 at every source and destination misalignment
    /// in a 64-byte window: the run's bytes are copied and not one byte
    /// outside it changes.
    #[test]
    fn every_length_and_alignment_copies_exactly_the_run() {
        const GUARD: u8 = 0xA5;
        const MAX_LEN: usize = 300;
        let source: Vec<u8> = (0..MAX_LEN + 64).map(|i| (i * 7 + 1) as u8).collect();
        for kernel in kernels() {
            for len in 0..=MAX_LEN {
                for shift in 0..64 {
                    let src_shift = (shift * 13) % 64;
                    let bytes = &source[src_shift..src_shift + len];
                    let mut page = vec![GUARD; MAX_LEN + 128];
                    let runs: &[(u32, &[u8])] = &[(shift as u32, bytes)];
                    let delta = delta(if len == 0 { &[] } else { runs });
                    kernel.apply_delta(&mut page, &delta).unwrap();
                    assert!(page[..shift].iter().all(|&b| b == GUARD), "{kernel:?}");
                    assert_eq!(&page[shift..shift + len], bytes, "{kernel:?} len {len}");
                    assert!(
                        page[shift + len..].iter().all(|&b| b == GUARD),
                        "{kernel:?} wrote past a {len}-byte run at {shift}"
                    );
                }
            }
        }
    }

    #[test]
    fn run_ending_at_the_page_end_is_applied() {
        for kernel in kernels() {
            for len in 1..=130usize {
                let bytes = vec![0x3C; len];
                let mut page = vec![0u8; 4096];
                let start = page.len() - len;
                kernel
                    .apply_delta(&mut page, &delta(&[(start as u32, &bytes)]))
                    .unwrap();
                assert!(page[start..].iter().all(|&b| b == 0x3C));
                assert!(page[..start].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn delta_past_the_page_is_rejected_and_page_untouched() {
        let d = delta(&[(0, &[1, 2]), (100, &[3; 10])]);
        for kernel in kernels() {
            let mut page = vec![0u8; 105];
            assert!(matches!(
                kernel.apply_delta(&mut page, &d),
                Err(DeltaError::OutOfBounds {
                    end: 110,
                    page_len: 105,
                    ..
                })
            ));
            assert!(page.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn fold_chain_applies_in_epoch_order() {
        let older = delta(&[(0, &[1; 8])]);
        let newer = delta(&[(4, &[2; 8])]);
        let chain = [
            ChainEntry::new(CommitEpoch(3), &older),
            ChainEntry::new(CommitEpoch(4), &newer),
        ];
        for kernel in kernels() {
            let mut page = vec![0u8; 16];
            let stats = kernel.fold_chain(PAGE, &mut page, &chain).unwrap();
            assert_eq!(page, [1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0]);
            assert_eq!(stats.deltas, 2);
            assert_eq!(stats.bytes_written, 16);
        }
    }

    #[test]
    fn fold_chain_out_of_epoch_order_is_rejected_and_page_untouched() {
        let older = delta(&[(0, &[1; 8])]);
        let newer = delta(&[(4, &[2; 8])]);
        let chain = [
            ChainEntry::new(CommitEpoch(4), &newer),
            ChainEntry::new(CommitEpoch(3), &older),
        ];
        let mut page = vec![0u8; 16];
        let result = MergeKernel::best().fold_chain(PAGE, &mut page, &chain);
        assert!(matches!(result, Err(crate::Error::InvalidArgument(_))));
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn fold_chain_rejects_a_delta_of_another_page() {
        let other = Delta::full_image(PageId(12), &[1; 4]).unwrap();
        let chain = [ChainEntry::new(CommitEpoch(1), &other)];
        let mut page = vec![0u8; 16];
        let result = MergeKernel::scalar().fold_chain(PAGE, &mut page, &chain);
        assert!(matches!(
            result,
            Err(crate::Error::Wal(WalError::Delta(
                DeltaError::PageMismatch {
                    left: PAGE,
                    right: PageId(12)
                }
            )))
        ));
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn unavailable_path_cannot_make_a_kernel() {
        for path in MergePath::ALL {
            assert_eq!(MergeKernel::new(path).is_ok(), path.is_available());
            if !path.is_available() {
                eprintln!("skipping {path}: not supported on this CPU (refusal checked)");
            }
        }
    }
}
