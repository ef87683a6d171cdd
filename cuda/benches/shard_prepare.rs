//! Host side of a sharded mirror fold (`nccl::ShardedMerge::fold`), GPU
//! calls excluded, for world sizes 1, 2, 4 and 8 on rayon pools of 1 and 2
//! threads: everything the host writes before the device copies a byte.
//!
//! - `new`: what the merger does now. One thread per rank picks its pages by
//!   an index list over the caller's batch (`ShardPlan::for_rank`; the whole
//!   batch with one rank), checks and measures them in parallel, looks up
//!   their mirror slots in parallel (`MirrorIndex::assign`, pages resident
//!   as in a repeated fold), and packs each chunk (`ShardPlan::pack`) into a
//!   buffer kept across folds (the pinned staging stands in as plain memory).
//! - `old`: the path before (the anchor, rebuilt from public pieces): serial
//!   `MergeBatch::validate`, serial counts, each rank's pages copied into a
//!   batch of their own (`part_of`) when there are several ranks, a SipHash
//!   slot index filled serially, pages routed by `page_id % world`, `plan_chunks` walking every chain, then
//!   per chunk `ChunkPlan::new` walking it again and `fill`.
//!
//! First, `PHASE|` lines split the world-size-1 host path into its steps
//! (old and new) in CPU milliseconds per fold. Before each criterion pair,
//! a `CPU-PROFILE|` line gives wall and process
//! CPU milliseconds per fold (5 folds): CPU time is the host work whatever
//! else loads the machine.
//!
//! `MMSB_SHARD_PAGES` sets the batch size (default 64 Ki pages of 4 KiB,
//! 8 deltas a page, runs of 8–256 bytes). Run:
//! `CARGO_TARGET_DIR=/work/target-gpu cargo bench -p mmsb-cuda --bench shard_prepare`

use std::collections::HashMap;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb_cuda::bench::{DeltaShape, Workload};
use mmsb_cuda::layout::{align16, plan_chunks, ChunkPlan};
use mmsb_cuda::shard::{home_rank, packed_len, ChunkLimits, DeltaCounts, MirrorIndex, ShardPlan};
use mmsb_engine::merge::MergeBatch;
use mmsb_wal::PageId;
use rayon::ThreadPool;

/// Bytes per page.
const PAGE_LEN: usize = 4096;
/// Pages of the batch unless `MMSB_SHARD_PAGES` says otherwise.
const DEFAULT_PAGES: usize = 64 * 1024;
/// World sizes timed.
const WORLD_SIZES: [usize; 4] = [1, 2, 4, 8];
/// Folds per CPU-time profile line.
const CPU_PROFILE_REPS: usize = 5;
/// Rayon pool sizes timed (this VM has 2 vCPUs).
const POOL_THREADS: [usize; 2] = [1, 2];

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The merger's ownership (`home_rank`), or `page_id % world` (the one
/// before) when `MMSB_SHARD_MODULO` is set.
fn owner(world: usize) -> impl Fn(PageId) -> usize + Sync {
    let modulo = std::env::var_os("MMSB_SHARD_MODULO").is_some();
    move |page: PageId| {
        if modulo {
            (page.get() % world as u64) as usize
        } else {
            home_rank(page, world)
        }
    }
}

/// What one rank keeps between folds: its mirror index and its staging.
struct Rank {
    index: MirrorIndex,
    staging: Vec<u8>,
}

/// One rank's host work in the current merger: plan, slot lookup, packing.
fn new_rank(
    batch: &MergeBatch<'_>,
    rank: usize,
    world: usize,
    state: &mut Rank,
) -> BenchResult<u64> {
    let limits = ChunkLimits::default();
    let plan = if world == 1 {
        ShardPlan::whole(batch, limits)?
    } else {
        ShardPlan::for_rank(batch, rank, owner(world), limits)?
    };
    let (slots, _) = state.index.assign(batch, &plan)?;
    let mut packed = 0u64;
    for (index, range) in plan.chunks().iter().enumerate() {
        let chunk = plan.chunk(index)?;
        let len = packed_len(chunk.layout());
        if state.staging.len() < len {
            state.staging.resize(len, 0);
        }
        plan.pack(
            batch,
            &chunk,
            &slots[range.clone()],
            &mut state.staging[..len],
        )?;
        packed += len as u64;
    }
    Ok(packed)
}

/// A fold's host side on `pool`: one thread per rank, as `ShardedMerge`.
fn new_fold(batch: &MergeBatch<'_>, ranks: &mut [Rank], pool: &ThreadPool) -> BenchResult<u64> {
    let world = ranks.len();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .iter_mut()
            .enumerate()
            .map(|(rank, state)| {
                scope.spawn(move || pool.install(|| new_rank(batch, rank, world, state)))
            })
            .collect();
        let mut total = 0;
        for handle in handles {
            total += handle.join().map_err(|_| "rank thread panicked")??;
        }
        Ok(total)
    })
}

/// The old per-rank work over `batch` (the whole batch or a copied part).
fn old_rank(
    batch: &MergeBatch<'_>,
    index: &mut HashMap<PageId, u32>,
    staging: &mut Vec<u8>,
) -> BenchResult<u64> {
    let mut slots = Vec::with_capacity(batch.len());
    for &page in batch.page_ids() {
        let next = index.len() as u32;
        slots.push(*index.entry(page).or_insert(next));
    }
    let limits = ChunkLimits::default();
    let mut packed = 0u64;
    for range in plan_chunks(batch, limits.max_pages, limits.max_meta_bytes) {
        let chunk = ChunkPlan::new(batch, range.clone())?;
        let at = align16(chunk.layout().total_len);
        let len = at + 4 * range.len();
        if staging.len() < len {
            staging.resize(len, 0);
        }
        chunk.fill(batch, &mut staging[..at])?;
        for (to, slot) in staging[at..len].chunks_exact_mut(4).zip(&slots[range]) {
            to.copy_from_slice(&slot.to_le_bytes());
        }
        packed += len as u64;
    }
    Ok(packed)
}

/// The pages of `batch` that `rank` owns, copied into a batch of their own.
fn part_of<'a>(
    batch: &MergeBatch<'a>,
    owners: &[usize],
    rank: usize,
) -> BenchResult<MergeBatch<'a>> {
    let mine = owners.iter().filter(|&&r| r == rank).count();
    let mut part = MergeBatch::with_capacity(batch.page_len(), mine, mine * 8)?;
    for (slot, &page) in batch.page_ids().iter().enumerate() {
        if owners[slot] == rank {
            let (Some(base), Some(chain)) = (batch.page(slot), batch.chain(slot)) else {
                return Err("batch slot".into());
            };
            part.push_page(page, base, chain.iter().copied())?;
        }
    }
    Ok(part)
}

/// The old fold's host side: serial checks and counts on the caller's
/// thread, then one thread per rank (copying its part when world > 1).
fn old_fold(
    batch: &MergeBatch<'_>,
    state: &mut [(HashMap<PageId, u32>, Vec<u8>)],
    pool: &ThreadPool,
) -> BenchResult<u64> {
    let world = state.len();
    pool.install(|| batch.validate())?;
    let moved: HashMap<PageId, usize> = HashMap::new();
    let owners: Vec<usize> = batch
        .page_ids()
        .iter()
        .map(|p| {
            moved
                .get(p)
                .copied()
                .unwrap_or((p.get() % world as u64) as usize)
        })
        .collect();
    let mut counts = vec![DeltaCounts::EMPTY; world];
    for (slot, &rank) in owners.iter().enumerate() {
        counts[rank] =
            counts[rank].combine(DeltaCounts::of_chain(batch.chain(slot).unwrap_or(&[])));
    }
    let owners = &owners;
    std::thread::scope(|scope| {
        let handles: Vec<_> = state
            .iter_mut()
            .enumerate()
            .map(|(rank, (index, staging))| {
                scope.spawn(move || {
                    pool.install(|| {
                        if world == 1 {
                            return old_rank(batch, index, staging);
                        }
                        let part = part_of(batch, owners, rank)?;
                        old_rank(&part, index, staging)
                    })
                })
            })
            .collect();
        let mut total = 0;
        for handle in handles {
            total += handle.join().map_err(|_| "rank thread panicked")??;
        }
        Ok(total)
    })
}

/// CPU time of this process so far (all threads, user + system), from
/// `/proc/self/stat` in clock ticks of 10 ms; `None` where it is unreadable.
fn process_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |at: usize| fields.get(at)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) * 10.0)
}

/// Folds `reps` times; prints wall and CPU milliseconds per fold. CPU time
/// is the work done whatever else runs on the machine: it shows how the
/// host work splits over ranks when wall times are too noisy to.
fn cpu_profile<F>(label: &str, reps: usize, mut fold: F)
where
    F: FnMut() -> BenchResult<u64>,
{
    let (Some(cpu_start), wall_start) = (process_cpu_ms(), std::time::Instant::now()) else {
        return;
    };
    for _ in 0..reps {
        if let Err(error) = fold() {
            println!("{label}: failed: {error}");
            return;
        }
    }
    let wall = wall_start.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let cpu = process_cpu_ms().map_or(0.0, |end| (end - cpu_start) / reps as f64);
    println!("CPU-PROFILE|{label:<14} wall {wall:8.1} ms/fold  cpu {cpu:8.1} ms/fold");
}

/// CPU milliseconds per call of `step`, over `reps` calls.
fn cpu_ms_of<F>(reps: usize, mut step: F) -> BenchResult<f64>
where
    F: FnMut() -> BenchResult<()>,
{
    let start = process_cpu_ms().ok_or("no /proc/self/stat")?;
    for _ in 0..reps {
        step()?;
    }
    let end = process_cpu_ms().ok_or("no /proc/self/stat")?;
    Ok((end - start) / reps as f64)
}

/// The world-size-1 host path step by step, old and new, in CPU
/// milliseconds per fold (`PHASE|` lines): where a fold's host time goes.
fn phase_profile(batch: &MergeBatch<'_>, pool: &ThreadPool) -> BenchResult<()> {
    let limits = ChunkLimits::default();
    let reps = CPU_PROFILE_REPS;
    pool.install(|| -> BenchResult<()> {
        let validate = cpu_ms_of(reps, || Ok(batch.validate().map(|_| ())?))?;
        let counts = cpu_ms_of(reps, || {
            let mut total = DeltaCounts::EMPTY;
            for slot in 0..batch.len() {
                total = total.combine(DeltaCounts::of_chain(batch.chain(slot).unwrap_or(&[])));
            }
            Ok(())
        })?;
        let mut index: HashMap<PageId, u32> = HashMap::new();
        let assign_old = cpu_ms_of(reps, || {
            for &page in batch.page_ids() {
                let next = index.len() as u32;
                index.entry(page).or_insert(next);
            }
            Ok(())
        })?;
        let ranges = plan_chunks(batch, limits.max_pages, limits.max_meta_bytes);
        let plan_old = cpu_ms_of(reps, || {
            plan_chunks(batch, limits.max_pages, limits.max_meta_bytes);
            Ok(())
        })?;
        let measure_old = cpu_ms_of(reps, || {
            for range in &ranges {
                ChunkPlan::new(batch, range.clone())?;
            }
            Ok(())
        })?;
        let plans: Vec<ChunkPlan> = ranges
            .iter()
            .map(|r| ChunkPlan::new(batch, r.clone()))
            .collect::<Result<_, _>>()?;
        let mut staging = Vec::new();
        let fill = cpu_ms_of(reps, || {
            for chunk in &plans {
                let len = chunk.layout().total_len;
                if staging.len() < len {
                    staging.resize(len, 0);
                }
                chunk.fill(batch, &mut staging[..len])?;
            }
            Ok(())
        })?;
        println!(
            "PHASE|old w1: validate {validate:.1}, counts {counts:.1}, slot index (SipHash, serial) {assign_old:.1}, plan_chunks {plan_old:.1}, ChunkPlan::new {measure_old:.1}, fill {fill:.1} CPU ms/fold"
        );
        let plan_new = cpu_ms_of(reps, || {
            ShardPlan::whole(batch, limits)?;
            Ok(())
        })?;
        let plan = ShardPlan::whole(batch, limits)?;
        let mut mirror = MirrorIndex::new(batch.page_len());
        mirror.assign(batch, &plan)?;
        let assign_new = cpu_ms_of(reps, || {
            mirror.assign(batch, &plan)?;
            Ok(())
        })?;
        let (slots, _) = mirror.assign(batch, &plan)?;
        let pack = cpu_ms_of(reps, || {
            for (at, range) in plan.chunks().iter().enumerate() {
                let chunk = plan.chunk(at)?;
                let len = packed_len(chunk.layout());
                if staging.len() < len {
                    staging.resize(len, 0);
                }
                plan.pack(batch, &chunk, &slots[range.clone()], &mut staging[..len])?;
            }
            Ok(())
        })?;
        println!(
            "PHASE|new w1: ShardPlan (check + size + counts + chunks) {plan_new:.1}, MirrorIndex::assign (resident) {assign_new:.1}, pack {pack:.1} CPU ms/fold"
        );
        Ok(())
    })
}

fn shard_prepare(c: &mut Criterion) {
    let pages = std::env::var("MMSB_SHARD_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PAGES);
    let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 11);
    let batch = match work.batch() {
        Ok(batch) => batch,
        Err(error) => panic!("workload batch: {error}"),
    };
    if let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        if let Err(error) = phase_profile(&batch, &pool) {
            println!("PHASE|failed: {error}");
        }
    }
    let mut group = c.benchmark_group("shard_prepare");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(pages as u64));
    for threads in POOL_THREADS {
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
            Ok(pool) => pool,
            Err(error) => panic!("rayon pool: {error}"),
        };
        for world in WORLD_SIZES {
            let id = format!("w{world}/t{threads}");
            // Resident pages: one fold first fills the indexes, as the
            // first (uploading) fold does on a GPU.
            let mut ranks: Vec<Rank> = (0..world)
                .map(|_| Rank {
                    index: MirrorIndex::new(PAGE_LEN),
                    staging: Vec::new(),
                })
                .collect();
            let first = new_fold(&batch, &mut ranks, &pool);
            first.unwrap_or_else(|e| panic!("new fold: {e}"));
            cpu_profile(&format!("new {id}"), CPU_PROFILE_REPS, || {
                new_fold(&batch, &mut ranks, &pool)
            });
            group.bench_function(BenchmarkId::new("new", &id), |b| {
                b.iter(|| new_fold(&batch, &mut ranks, &pool))
            });
            let mut state: Vec<(HashMap<PageId, u32>, Vec<u8>)> =
                (0..world).map(|_| (HashMap::new(), Vec::new())).collect();
            old_fold(&batch, &mut state, &pool).unwrap_or_else(|e| panic!("old fold: {e}"));
            cpu_profile(&format!("old {id}"), CPU_PROFILE_REPS, || {
                old_fold(&batch, &mut state, &pool)
            });
            group.bench_function(BenchmarkId::new("old", &id), |b| {
                b.iter(|| old_fold(&batch, &mut state, &pool))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, shard_prepare);
criterion_main!(benches);
