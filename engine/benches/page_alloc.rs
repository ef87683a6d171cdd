//! Page-frame allocation (issue 7): `PageFramePool` (thread caches over a
//! lock-free shared list) against a pool that is one `parking_lot::Mutex`
//! around a `Vec` of frames, against crossbeam's lock-free `ArrayQueue`
//! used directly (no thread cache), and against the heap.
//!
//! ```text
//! cargo bench -p mmsb-engine --bench page_alloc
//! ```
//!
//! Besides criterion's means it prints two tables of its own:
//! - latency percentiles: every operation timed on its own with `Instant`
//!   (the median cost of an empty timing, measured in the same run, is
//!   subtracted), and 64-operation batches timed together (per-op average of
//!   each batch);
//! - contention: the same work on 1 and on 2 threads, time per operation
//!   per thread (wall time of the run / operations of one thread), medians
//!   of interleaved repetitions; contention cost = 2-thread − 1-thread. A
//!   thread-private control (no sharing at all) runs alongside: its
//!   2-thread / 1-thread ratio says whether the two threads actually ran at
//!   the same time (1.0) or took turns on a busy machine (2.0); the
//!   "adjusted" cost subtracts that effect, and the table warns when the
//!   threads did not run in parallel (then no contention is measured).
//!
//! Frames are 4 KiB; each operation allocates or frees one frame and the
//! allocating thread writes one byte of it. With `--test` (what `cargo test
//! --benches` passes) everything runs a few iterations only.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use mmsb_engine::alloc::DEFAULT_MAGAZINE_FRAMES;
use mmsb_engine::{PageFramePool, PoolConfig};
use parking_lot::Mutex;

const FRAME_BYTES: usize = 4096;
const MAX_FRAMES: usize = 1 << 14;
/// Frames held at once by one batch (fits two 32-frame magazines).
const BATCH_FRAMES: usize = 64;
/// A batch that overflows the thread cache: the shared list is used every batch.
const BIG_BATCH_FRAMES: usize = 256;
/// Above this control ratio (2-thread / 1-thread time of the thread-private
/// control) the two threads mostly took turns on the CPU.
const PARALLEL_RATIO_MAX: f64 = 1.5;
/// Operations (allocations + frees) per thread in one contention run.
const CONTENTION_OPS_PER_THREAD: usize = 4_000_000;

/// The mutex-only baseline: free frames in one locked `Vec`, growth under
/// the same lock. Frames go back on drop, like `PageFrame`.
struct MutexPool {
    free: Mutex<(Vec<Box<[u8]>>, usize)>,
}

struct MutexFrame<'a> {
    bytes: Box<[u8]>,
    pool: &'a MutexPool,
}

impl MutexPool {
    fn new() -> Self {
        MutexPool {
            free: Mutex::new((Vec::new(), 0)),
        }
    }

    fn alloc(&self) -> Option<MutexFrame<'_>> {
        let mut guard = self.free.lock();
        let bytes = match guard.0.pop() {
            Some(bytes) => bytes,
            None if guard.1 < MAX_FRAMES => {
                guard.1 += 1;
                vec![0u8; FRAME_BYTES].into_boxed_slice()
            }
            None => return None,
        };
        Some(MutexFrame { bytes, pool: self })
    }
}

impl Drop for MutexFrame<'_> {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        self.pool.free.lock().0.push(bytes);
    }
}

/// crossbeam's bounded lock-free queue as the whole pool (no thread cache).
struct QueuePool {
    free: ArrayQueue<Box<[u8]>>,
}

struct QueueFrame<'a> {
    bytes: Box<[u8]>,
    pool: &'a QueuePool,
}

impl QueuePool {
    fn new() -> Self {
        let free = ArrayQueue::new(MAX_FRAMES);
        for _ in 0..MAX_FRAMES / 4 {
            let _ = free.push(vec![0u8; FRAME_BYTES].into_boxed_slice());
        }
        QueuePool { free }
    }

    fn alloc(&self) -> Option<QueueFrame<'_>> {
        let bytes = self.free.pop()?;
        Some(QueueFrame { bytes, pool: self })
    }
}

impl Drop for QueueFrame<'_> {
    fn drop(&mut self) {
        let _ = self.pool.free.push(std::mem::take(&mut self.bytes));
    }
}

fn lock_free_pool(magazine_frames: usize) -> PageFramePool {
    PageFramePool::new(PoolConfig {
        frame_bytes: FRAME_BYTES,
        max_frames: MAX_FRAMES,
        magazine_frames,
    })
    .expect("valid pool config")
}

/// A pool under test. Each is benchmarked through its own monomorphised
/// copy of the harness (no dispatch between them in the timed loops).
trait FramePool: Sync {
    /// A held frame; dropping it frees it.
    type Frame<'a>
    where
        Self: 'a;

    fn name(&self) -> &'static str;

    /// One allocation; the caller's thread writes one byte of it.
    fn alloc(&self) -> Self::Frame<'_>;
}

impl FramePool for PageFramePool {
    type Frame<'a> = mmsb_engine::PageFrame;

    fn name(&self) -> &'static str {
        "lock-free pool"
    }

    #[inline]
    fn alloc(&self) -> mmsb_engine::PageFrame {
        let mut frame = PageFramePool::alloc(self).expect("below the cap");
        frame[0] = frame[0].wrapping_add(1);
        frame
    }
}

impl FramePool for MutexPool {
    type Frame<'a> = MutexFrame<'a>;

    fn name(&self) -> &'static str {
        "mutex pool"
    }

    #[inline]
    fn alloc(&self) -> MutexFrame<'_> {
        let mut frame = MutexPool::alloc(self).expect("below the cap");
        frame.bytes[0] = frame.bytes[0].wrapping_add(1);
        frame
    }
}

impl FramePool for QueuePool {
    type Frame<'a> = QueueFrame<'a>;

    fn name(&self) -> &'static str {
        "ArrayQueue, no cache"
    }

    #[inline]
    fn alloc(&self) -> QueueFrame<'_> {
        let mut frame = QueuePool::alloc(self).expect("below the cap");
        frame.bytes[0] = frame.bytes[0].wrapping_add(1);
        frame
    }
}

thread_local! {
    static PRIVATE_FRAMES: std::cell::RefCell<Vec<Box<[u8]>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The control for the contention table: a free list private to each
/// thread (`thread_local!`), so two threads share nothing. Its 2-thread /
/// 1-thread ratio says how much parallelism the (shared) machine gave at
/// the time: 1.0 on two idle cores, 2.0 when the threads had to take turns.
struct PrivatePool;

struct PrivateFrame(Box<[u8]>);

impl Drop for PrivateFrame {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        let _ = PRIVATE_FRAMES.try_with(|frames| frames.borrow_mut().push(bytes));
    }
}

impl FramePool for PrivatePool {
    type Frame<'a> = PrivateFrame;

    fn name(&self) -> &'static str {
        "thread-private (control)"
    }

    #[inline]
    fn alloc(&self) -> PrivateFrame {
        let bytes = PRIVATE_FRAMES
            .with(|frames| frames.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; FRAME_BYTES].into_boxed_slice());
        let mut frame = PrivateFrame(bytes);
        frame.0[0] = frame.0[0].wrapping_add(1);
        frame
    }
}

/// The heap: a fresh zeroed frame every time, freed on drop.
struct Heap;

impl FramePool for Heap {
    type Frame<'a> = Box<[u8]>;

    fn name(&self) -> &'static str {
        "heap (Box)"
    }

    #[inline]
    fn alloc(&self) -> Box<[u8]> {
        let mut frame = vec![0u8; FRAME_BYTES].into_boxed_slice();
        frame[0] = frame[0].wrapping_add(1);
        frame
    }
}

/// `batches` rounds of: allocate `batch` frames, then free them all.
fn run_batches<P: FramePool>(pool: &P, batches: usize, batch: usize) {
    let mut held = Vec::with_capacity(batch);
    for _ in 0..batches {
        for _ in 0..batch {
            held.push(pool.alloc());
        }
        black_box(&held);
        held.clear();
    }
}

fn single_thread_benches<P: FramePool>(c: &mut Criterion, pool: &P) {
    run_batches(pool, 2, BATCH_FRAMES);
    let mut group = c.benchmark_group("page_alloc/alloc_free");
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::from_parameter(pool.name()), |b| {
        b.iter(|| drop(black_box(pool.alloc())))
    });
    group.finish();
    let mut group = c.benchmark_group("page_alloc/batch64");
    group.throughput(Throughput::Elements(2 * BATCH_FRAMES as u64));
    group.bench_function(BenchmarkId::from_parameter(pool.name()), |b| {
        b.iter(|| run_batches(pool, 1, BATCH_FRAMES))
    });
    group.finish();
}

fn two_thread_bench<P: FramePool>(c: &mut Criterion, pool: &P) {
    let mut group = c.benchmark_group("page_alloc/two_threads_batch64");
    group.throughput(Throughput::Elements(2 * 2 * BATCH_FRAMES as u64));
    group.bench_function(BenchmarkId::from_parameter(pool.name()), |b| {
        b.iter_custom(|iters| run_threads(pool, 2, iters as usize, BATCH_FRAMES))
    });
    group.finish();
}

fn criterion_benches(c: &mut Criterion) {
    let lock_free = lock_free_pool(DEFAULT_MAGAZINE_FRAMES);
    let mutex = MutexPool::new();
    single_thread_benches(c, &lock_free);
    single_thread_benches(c, &mutex);
    single_thread_benches(c, &QueuePool::new());
    single_thread_benches(c, &Heap);
    two_thread_bench(c, &lock_free);
    two_thread_bench(c, &mutex);
}

/// Wall time of `threads` threads each running `batches` batches, started
/// together (thread start-up is outside the timed span).
fn run_threads<P: FramePool>(pool: &P, threads: usize, batches: usize, batch: usize) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    run_batches(pool, 1, batch); // warm this thread's cache
                    barrier.wait();
                    run_batches(pool, batches, batch);
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("bench thread");
        }
        start.elapsed()
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

/// Per-operation latencies of `pool`: (single alloc, single free, batch
/// alloc, batch free) samples in ns.
fn latency_samples<P: FramePool>(pool: &P, samples: usize, timer_ns: f64) -> [Vec<f64>; 4] {
    run_batches(pool, 4, BATCH_FRAMES);
    let mut out: [Vec<f64>; 4] = Default::default();
    let mut held = Vec::with_capacity(BATCH_FRAMES);
    for _ in 0..samples / BATCH_FRAMES {
        // Single operations, each timed.
        for _ in 0..BATCH_FRAMES {
            let start = Instant::now();
            let frame = pool.alloc();
            out[0].push(start.elapsed().as_nanos() as f64 - timer_ns);
            held.push(frame);
        }
        while let Some(frame) = held.pop() {
            let start = Instant::now();
            drop(frame);
            out[1].push(start.elapsed().as_nanos() as f64 - timer_ns);
        }
        // Batches of 64, timed together.
        let start = Instant::now();
        for _ in 0..BATCH_FRAMES {
            held.push(pool.alloc());
        }
        let allocated = Instant::now();
        held.clear();
        let freed = Instant::now();
        out[2].push((allocated - start).as_nanos() as f64 / BATCH_FRAMES as f64);
        out[3].push((freed - allocated).as_nanos() as f64 / BATCH_FRAMES as f64);
    }
    out
}

fn print_latencies<P: FramePool>(pool: &P, samples: usize, timer_ns: f64) {
    let [mut alloc, mut free, mut batch_alloc, mut batch_free] =
        latency_samples(pool, samples, timer_ns);
    for (op, single, batched) in [
        ("alloc", &mut alloc, &mut batch_alloc),
        ("free", &mut free, &mut batch_free),
    ] {
        single.sort_by(f64::total_cmp);
        batched.sort_by(f64::total_cmp);
        println!(
            "{:<22} {:<7} {:>8.1} {:>8.1} {:>8.1} | {:>10.1} {:>10.1}",
            pool.name(),
            op,
            percentile(single, 0.5).max(0.0),
            percentile(single, 0.99).max(0.0),
            percentile(single, 0.999).max(0.0),
            percentile(batched, 0.5),
            percentile(batched, 0.99),
        );
    }
}

/// Per-operation latency percentiles, printed.
fn latency_table(samples: usize) {
    // What timing nothing costs, to subtract from single-op timings.
    let mut empty: Vec<f64> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed().as_nanos() as f64
        })
        .collect();
    let timer_ns = median(&mut empty);
    println!("\n== page_alloc latency (ns per op; timer overhead {timer_ns:.0} ns subtracted from single-op rows) ==");
    println!(
        "{:<22} {:<7} {:>8} {:>8} {:>8} | {:>10} {:>10}",
        "subject", "op", "p50", "p99", "p99.9", "batch p50", "batch p99"
    );
    print_latencies(&lock_free_pool(DEFAULT_MAGAZINE_FRAMES), samples, timer_ns);
    print_latencies(&MutexPool::new(), samples, timer_ns);
    print_latencies(&QueuePool::new(), samples, timer_ns);
    print_latencies(&Heap, samples, timer_ns);
}

/// Median ns per op per thread of `pool` on 1 and on 2 threads.
fn contention_of<P: FramePool>(
    pool: &P,
    batches: usize,
    batch: usize,
    one: &mut Vec<f64>,
    two: &mut Vec<f64>,
) {
    let ops = (2 * batches * batch) as f64;
    one.push(run_threads(pool, 1, batches, batch).as_nanos() as f64 / ops);
    two.push(run_threads(pool, 2, batches, batch).as_nanos() as f64 / ops);
}

/// Contention cost on 2 threads, printed. Raw cost: 2-thread − 1-thread
/// time per op per thread. On a shared machine the two threads may not run
/// at the same time, which inflates every raw cost by the 1-thread time; so
/// each workload also runs a thread-private control, and the adjusted cost
/// is 2-thread − 1-thread × (control's 2-thread / 1-thread ratio).
fn contention_table(ops_per_thread: usize, repetitions: usize) {
    println!("\n== page_alloc contention (ns per op per thread; medians of {repetitions} interleaved runs) ==");
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>9}",
        "subject / workload", "1 thread", "2 threads", "raw cost", "adjusted"
    );
    let workloads = [
        ("batch 64", DEFAULT_MAGAZINE_FRAMES, BATCH_FRAMES),
        ("batch 256", DEFAULT_MAGAZINE_FRAMES, BIG_BATCH_FRAMES),
        ("batch 64, magazine 1", 1, BATCH_FRAMES),
    ];
    for (workload, magazine_frames, batch) in workloads {
        // Long enough runs (tens of ms) that both threads get scheduled.
        let batches = (ops_per_thread / (2 * batch)).max(1);
        let lock_free = lock_free_pool(magazine_frames);
        let mutex = MutexPool::new();
        let queue = QueuePool::new();
        let names = [
            PrivatePool.name(),
            lock_free.name(),
            mutex.name(),
            queue.name(),
        ];
        let mut one: [Vec<f64>; 4] = Default::default();
        let mut two: [Vec<f64>; 4] = Default::default();
        for _ in 0..repetitions {
            contention_of(&PrivatePool, batches, batch, &mut one[0], &mut two[0]);
            contention_of(&lock_free, batches, batch, &mut one[1], &mut two[1]);
            contention_of(&mutex, batches, batch, &mut one[2], &mut two[2]);
            contention_of(&queue, batches, batch, &mut one[3], &mut two[3]);
        }
        let medians: Vec<(f64, f64)> = (0..4)
            .map(|index| (median(&mut one[index]), median(&mut two[index])))
            .collect();
        let scale = medians[0].1 / medians[0].0;
        let mut adjusted = [0.0; 4];
        for (index, &(t1, t2)) in medians.iter().enumerate() {
            adjusted[index] = t2 - t1 * scale;
            println!(
                "{:<46} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                format!("{} / {workload}", names[index]),
                t1,
                t2,
                t2 - t1,
                adjusted[index]
            );
        }
        let raw_cut = 1.0 - (medians[1].1 - medians[1].0) / (medians[2].1 - medians[2].0);
        println!(
            "  -> machine parallelism ratio {scale:.2} (1 = two free cores, 2 = none); \
             lock-free vs mutex contention cost cut: raw {:.0}%, adjusted {:.0}%",
            100.0 * raw_cut,
            100.0 * (1.0 - adjusted[1] / adjusted[2]),
        );
        if scale > PARALLEL_RATIO_MAX {
            println!(
                "  !! the two threads hardly ran at the same time (ratio above \
                 {PARALLEL_RATIO_MAX}): no contention could arise; this run does not measure it"
            );
        }
    }
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--test");
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut criterion);
    criterion.final_summary();
    if quick {
        latency_table(BATCH_FRAMES * 4);
        contention_table(4 * BATCH_FRAMES, 1);
    } else {
        latency_table(400_000);
        contention_table(CONTENTION_OPS_PER_THREAD, 15);
    }
}
