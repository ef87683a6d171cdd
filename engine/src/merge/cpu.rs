//! [`CpuMerge`]: the CPU [`MergeBackend`], one SIMD kernel over a rayon pool.
//!
//! Pages are independent, so the batch is split by page slot: each worker
//! folds whole chains into whole pages, and no two workers touch one page.

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use super::{MergeBackend, MergeBatch, MergeKernel, MergePath, MergeStats};
use crate::error::{Error, Result};

/// Most worker threads a [`CpuMerge`] may be given.
pub const MAX_MERGE_THREADS: usize = 256;

/// Merges batches on the CPU with one [`MergePath`] and a fixed number of threads.
///
/// With one thread the merge runs on the calling thread; with more, on a
/// private rayon pool made once, when the `CpuMerge` is made.
#[derive(Debug)]
pub struct CpuMerge {
    kernel: MergeKernel,
    threads: usize,
    pool: Option<ThreadPool>,
    name: String,
}

impl CpuMerge {
    /// A CPU merger forced onto `path`, with `threads` workers
    /// (1 ..= [`MAX_MERGE_THREADS`]). Errors with `InvalidArgument` when the
    /// CPU lacks the path or the thread count is out of range, and with `Io`
    /// when the operating system refuses the threads.
    pub fn new(path: MergePath, threads: usize) -> Result<Self> {
        let kernel = MergeKernel::new(path)?;
        if threads == 0 || threads > MAX_MERGE_THREADS {
            return Err(Error::InvalidArgument(format!(
                "merge thread count {threads} is outside 1..={MAX_MERGE_THREADS}"
            )));
        }
        let pool = if threads == 1 {
            None
        } else {
            let pool = ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|index| format!("mmsb-merge-{index}"))
                .build()
                .map_err(|e| Error::io("starting merge threads", std::io::Error::other(e)))?;
            Some(pool)
        };
        Ok(CpuMerge {
            kernel,
            threads,
            pool,
            name: format!("cpu-{path}"),
        })
    }

    /// A CPU merger on the fastest path this CPU supports.
    pub fn best(threads: usize) -> Result<Self> {
        Self::new(MergePath::best_available(), threads)
    }

    /// The path its kernels run.
    pub fn path(&self) -> MergePath {
        self.kernel.path()
    }

    /// Its number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl MergeBackend for CpuMerge {
    fn name(&self) -> &str {
        &self.name
    }

    fn merge_batch(&self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        // MergeBatch's constructors establish these invariants; a failure here
        // is a bug in this module, loud in debug builds and an error in release.
        let checked = batch.validate();
        debug_assert!(
            checked.is_ok(),
            "merge batch invariants broken: {checked:?}"
        );
        let stats = checked?;
        let page_len = batch.page_len();
        let kernel = self.kernel;
        let (images, starts, entries) = batch.split_for_merge();
        // Indexing cannot fail: validate checked that `starts` has one more
        // entry than there are slots and that every range lies in `entries`.
        let fold = |(slot, image): (usize, &mut [u8])| {
            kernel.fold_validated(image, &entries[starts[slot]..starts[slot + 1]]);
        };
        match &self.pool {
            None => images.chunks_exact_mut(page_len).enumerate().for_each(fold),
            Some(pool) => pool.install(|| {
                images
                    .par_chunks_exact_mut(page_len)
                    .enumerate()
                    .for_each(fold)
            }),
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_wal::{CommitEpoch, Delta, PageId};

    use crate::merge::ChainEntry;

    #[test]
    fn thread_count_out_of_range_is_rejected() {
        for threads in [0, MAX_MERGE_THREADS + 1] {
            assert!(matches!(
                CpuMerge::new(MergePath::Scalar, threads),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn unavailable_path_is_rejected() {
        for path in MergePath::ALL {
            let made = CpuMerge::new(path, 1);
            assert_eq!(made.is_ok(), path.is_available());
            if !path.is_available() {
                eprintln!("skipping {path}: not supported on this CPU (refusal checked)");
            }
        }
    }

    #[test]
    fn name_and_settings_are_reported() {
        let merge = CpuMerge::new(MergePath::Scalar, 2).unwrap();
        assert_eq!(merge.name(), "cpu-scalar");
        assert_eq!(merge.threads(), 2);
        assert_eq!(merge.path(), MergePath::Scalar);
        assert_eq!(
            CpuMerge::best(1).unwrap().path(),
            MergePath::best_available()
        );
    }

    #[test]
    fn merges_every_page_of_a_batch() {
        let deltas: Vec<Delta> = (0..3u8)
            .map(|page| Delta::full_image(PageId(page.into()), &[page + 1; 3]).unwrap())
            .collect();
        let mut batch = MergeBatch::new(4).unwrap();
        for (page, delta) in deltas.iter().enumerate() {
            batch
                .push_page(
                    PageId(page as u64),
                    &[9; 4],
                    [ChainEntry::new(CommitEpoch(1), delta)],
                )
                .unwrap();
        }
        let stats = CpuMerge::best(2).unwrap().merge_batch(&mut batch).unwrap();
        assert_eq!(batch.images(), [1, 1, 1, 9, 2, 2, 2, 9, 3, 3, 3, 9]);
        assert_eq!(
            stats,
            MergeStats {
                pages: 3,
                deltas: 3,
                runs: 3,
                bytes_written: 9
            }
        );
    }
}
