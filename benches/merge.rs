//! Delta merge throughput: every available merge path against the scalar
//! baseline and against memcpy of the same number of bytes, in one run.
//!
//! Run: `cargo bench --bench merge` (about 80 seconds). Throughput is bytes
//! written into pages per second (the deltas' changed bytes), so GB/s rows are
//! comparable with the memcpy anchor rows.
//!
//! Groups:
//! - `apply/dense`: 256 pages of 16 KiB, one delta each, runs of 256..4096
//!   bytes with 16..256-byte gaps;
//! - `apply/sparse`: the same pages, runs of 8..64 bytes with 64..512-byte gaps;
//! - `apply/sparse_cached`: the sparse shape on 32 pages (512 KiB, fits L2),
//!   which shows the kernels without the cost of fetching page lines;
//! - `batch/4096x8`: a `MergeBatch` of 4096 pages of 4 KiB with 8 deltas each
//!   (4 runs of 16..512 bytes), on one thread per path and on a rayon pool of
//!   every core with the best path.
//!
//! Every group also times one `copy_from_slice` of as many bytes as it
//! changes (`memcpy`, the anchor), and the apply groups `Delta::apply`
//! (`copy_from_slice` per run, `std_delta_apply`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use mmsb_engine::merge::{ChainEntry, CpuMerge, MergeBackend, MergeBatch, MergeKernel, MergePath};
use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Page size of the apply groups.
const APPLY_PAGE_LEN: usize = 16 * 1024;
/// Pages in the apply groups (4 MiB of pages: L3-resident, not L2).
const APPLY_PAGES: usize = 256;
/// Pages in the cache-resident sparse group (512 KiB: fits one core's L2).
const CACHED_PAGES: usize = 32;
/// Page size of the batch group.
const BATCH_PAGE_LEN: usize = 4096;
/// Pages in the batch group.
const BATCH_PAGES: usize = 4096;
/// Deltas per page in the batch group.
const BATCH_DELTAS_PER_PAGE: usize = 8;
/// Runs per delta in the batch group.
const BATCH_RUNS_PER_DELTA: usize = 4;

/// Run lengths and gaps (inclusive ranges, bytes) of a workload.
#[derive(Clone, Copy)]
struct Shape {
    run_len: (usize, usize),
    gap_len: (usize, usize),
    max_runs: usize,
}

const DENSE: Shape = Shape {
    run_len: (256, 4096),
    gap_len: (16, 256),
    max_runs: usize::MAX,
};
const SPARSE: Shape = Shape {
    run_len: (8, 64),
    gap_len: (64, 512),
    max_runs: usize::MAX,
};
const BATCH: Shape = Shape {
    run_len: (16, 512),
    gap_len: (16, 512),
    max_runs: BATCH_RUNS_PER_DELTA,
};

/// A random delta of `shape` on a `page_len`-byte page.
fn random_delta(rng: &mut StdRng, page_id: PageId, page_len: usize, shape: Shape) -> Delta {
    let mut spans = Vec::new();
    let mut pos = rng.gen_range(0..shape.gap_len.1);
    while spans.len() < shape.max_runs && pos < page_len {
        let len = rng
            .gen_range(shape.run_len.0..=shape.run_len.1)
            .min(page_len - pos);
        spans.push((pos, len));
        pos += len + rng.gen_range(shape.gap_len.0..=shape.gap_len.1);
    }
    let mut payload = vec![0u8; spans.iter().map(|s| s.1).sum()];
    rng.fill_bytes(&mut payload);
    let mut at = 0;
    let runs: Vec<DeltaRun<'_>> = spans
        .iter()
        .map(|&(offset, len)| {
            at += len;
            DeltaRun {
                offset: offset as u32,
                bytes: &payload[at - len..at],
            }
        })
        .collect();
    Delta::from_sorted_runs(page_id, runs).expect("generated runs are sorted and in bounds")
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, bytes: u64) {
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2000))
        .throughput(Throughput::Bytes(bytes));
}

fn bench_apply(c: &mut Criterion, name: &str, shape: Shape, page_count: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let deltas: Vec<Delta> = (0..page_count)
        .map(|i| random_delta(&mut rng, PageId(i as u64), APPLY_PAGE_LEN, shape))
        .collect();
    let changed: usize = deltas.iter().map(Delta::changed_len).sum();
    let mut pages = vec![0u8; page_count * APPLY_PAGE_LEN];
    rng.fill_bytes(&mut pages);

    let mut group = c.benchmark_group(format!("apply/{name}"));
    configure(&mut group, changed as u64);
    for path in MergePath::ALL {
        let Ok(kernel) = MergeKernel::new(path) else {
            eprintln!("skipping {path}: not supported on this CPU");
            continue;
        };
        group.bench_function(path.name(), |b| {
            b.iter(|| {
                for (page, delta) in pages.chunks_exact_mut(APPLY_PAGE_LEN).zip(&deltas) {
                    kernel
                        .apply_delta(page, delta)
                        .expect("delta fits its page");
                }
                black_box(&mut pages);
            })
        });
    }
    group.bench_function("std_delta_apply", |b| {
        b.iter(|| {
            for (page, delta) in pages.chunks_exact_mut(APPLY_PAGE_LEN).zip(&deltas) {
                delta.apply(page).expect("delta fits its page");
            }
            black_box(&mut pages);
        })
    });
    let source = vec![0x5Au8; changed];
    let mut target = vec![0u8; changed];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&source));
            black_box(&mut target);
        })
    });
    group.finish();
    eprintln!(
        "apply/{name}: {} runs, {changed} bytes changed over {} pages",
        deltas.iter().map(Delta::run_count).sum::<usize>(),
        page_count
    );
}

fn apply_dense(c: &mut Criterion) {
    bench_apply(c, "dense", DENSE, APPLY_PAGES, 1);
}

fn apply_sparse(c: &mut Criterion) {
    bench_apply(c, "sparse", SPARSE, APPLY_PAGES, 2);
}

fn apply_sparse_cached(c: &mut Criterion) {
    bench_apply(c, "sparse_cached", SPARSE, CACHED_PAGES, 2);
}

fn batch_merge(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let deltas: Vec<Vec<Delta>> = (0..BATCH_PAGES)
        .map(|page| {
            (0..BATCH_DELTAS_PER_PAGE)
                .map(|_| random_delta(&mut rng, PageId(page as u64), BATCH_PAGE_LEN, BATCH))
                .collect()
        })
        .collect();
    let mut base = vec![0u8; BATCH_PAGE_LEN];
    rng.fill_bytes(&mut base);
    let mut batch = MergeBatch::with_capacity(
        BATCH_PAGE_LEN,
        BATCH_PAGES,
        BATCH_PAGES * BATCH_DELTAS_PER_PAGE,
    )
    .expect("page length is valid");
    for (page, chain) in deltas.iter().enumerate() {
        let entries = chain
            .iter()
            .enumerate()
            .map(|(epoch, delta)| ChainEntry::new(CommitEpoch(epoch as u64 + 1), delta));
        batch
            .push_page(PageId(page as u64), &base, entries)
            .expect("generated chains are valid");
    }
    let changed = batch.validate().expect("batch is valid").bytes_written;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut backends: Vec<CpuMerge> = MergePath::available()
        .into_iter()
        .filter_map(|path| CpuMerge::new(path, 1).ok())
        .collect();
    if cores > 1 {
        backends.extend(CpuMerge::best(cores).ok());
    }

    let mut group = c.benchmark_group(format!("batch/{BATCH_PAGES}x{BATCH_DELTAS_PER_PAGE}"));
    configure(&mut group, changed);
    for backend in &backends {
        let id = format!("{}/{}t", backend.path(), backend.threads());
        group.bench_function(id, |b| {
            b.iter(|| backend.merge_batch(&mut batch).expect("batch is valid"))
        });
    }
    let source = vec![0x5Au8; changed as usize];
    let mut target = vec![0u8; changed as usize];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&source));
            black_box(&mut target);
        })
    });
    group.finish();
    eprintln!("batch: {changed} bytes changed over {BATCH_PAGES} pages");
}

criterion_group!(
    benches,
    apply_dense,
    apply_sparse,
    apply_sparse_cached,
    batch_merge
);
criterion_main!(benches);
