//! Host cost of building a fold's input from TLog records, at decode
//! time: the decode arenas of the GPU path ([`mmsb_cuda::arena`]: records
//! decoded straight into each rank's arena) against what the `Delta`-batch
//! path needs (records decoded into `Delta`s grouped per page, then a
//! `MergeBatch`). One thread, as a TLog is decoded in order. The arenas
//! live in ordinary memory here (the simulated device's), not pinned.
//!
//! `MMSB_ARENA_PAGES` sets the pages (default 16 Ki pages of 4 KiB, 8
//! deltas a page, 1–4 runs of 8–256 bytes, records of 2048 pages, Raw
//! codec). Run:
//! `CARGO_TARGET_DIR=/work/target-gpu cargo bench -p mmsb-cuda --bench arena_build`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmsb_cuda::arena::{ArenaBuilder, ArenaGeometry, DecodeArenas, DEFAULT_CHUNK_ENTRIES};
use mmsb_cuda::bench::{DeltaShape, Workload};
use mmsb_cuda::shard::home_rank;
use mmsb_cuda::{DeviceMerger, SimulatedDevice};
use mmsb_engine::merge::{ChainEntry, MergeBatch};
use mmsb_wal::codec::{CodecConfig, CodecMode};
use mmsb_wal::{CommitEpoch, CommitRecord, Delta, PageId};

/// Bytes per page.
const PAGE_LEN: usize = 4096;
/// Pages unless `MMSB_ARENA_PAGES` says otherwise.
const DEFAULT_PAGES: usize = 16 * 1024;
/// Pages per commit record.
const RECORD_PAGES: usize = 2048;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The workload's deltas as records, layer after layer (every page's
/// `k`-th delta), with growing epochs.
fn records(work: &Workload) -> BenchResult<Vec<(u64, Vec<u8>)>> {
    let config = CodecConfig::with_mode(CodecMode::Raw);
    let mut out = Vec::new();
    for k in 0..DeltaShape::default().deltas_per_page {
        for pages in work.chains.chunks(RECORD_PAGES) {
            let deltas: Vec<&Delta> = pages
                .iter()
                .filter_map(|c| c.get(k))
                .map(|(_, d)| d)
                .collect();
            let mut bytes = Vec::new();
            mmsb_wal::record::encode_deltas(deltas, &config, &mut bytes)?;
            out.push((out.len() as u64 + 1, bytes));
        }
    }
    Ok(out)
}

/// Records into `Delta`s grouped per page.
fn decode_grouped(records: &[(u64, Vec<u8>)], pages: usize) -> BenchResult<Vec<Vec<(u64, Delta)>>> {
    let mut chains: Vec<Vec<(u64, Delta)>> = (0..pages).map(|_| Vec::new()).collect();
    for (epoch, bytes) in records {
        for delta in CommitRecord::decode(bytes, PAGE_LEN)?.deltas {
            let page = delta.page_id().get() as usize;
            chains
                .get_mut(page)
                .ok_or("page out of range")?
                .push((*epoch, delta));
        }
    }
    Ok(chains)
}

/// Records into decode arenas for `sims` (pages resident there).
fn build_arenas(
    sims: &[SimulatedDevice],
    records: &[(u64, Vec<u8>)],
    old: Option<DecodeArenas>,
) -> BenchResult<DecodeArenas> {
    let world = sims.len();
    let targets = sims
        .iter()
        .map(|s| s.arena_target().ok_or("no mirror"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = ArenaBuilder::new(
        PAGE_LEN,
        targets,
        Box::new(move |page: PageId| home_rank(page, world)),
        ArenaGeometry::default(),
        DEFAULT_CHUNK_ENTRIES,
        0,
    )?;
    if let Some(old) = old {
        builder.recycle(old);
    }
    for (epoch, bytes) in records {
        builder.push_record(*epoch, bytes)?;
    }
    Ok(builder.finish())
}

fn arena_build(c: &mut Criterion) {
    let pages = std::env::var("MMSB_ARENA_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PAGES);
    let mut run = || -> BenchResult<()> {
        let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 99);
        let records = records(&work)?;
        let bytes: usize = records.iter().map(|(_, b)| b.len()).sum();
        // Pages resident on one simulated device, as in a repeated fold.
        let mut sims = vec![SimulatedDevice::new(DEFAULT_CHUNK_ENTRIES)];
        for sim in &mut sims {
            sim.mirror_open(PAGE_LEN)?;
            sim.mirror_fold(&work.batch()?)?;
        }
        let mut group = c.benchmark_group("arena_build");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("delta_batch/{pages}"), |b| {
            b.iter(|| {
                let chains = decode_grouped(&records, pages).unwrap_or_default();
                let deltas = chains.iter().map(Vec::len).sum();
                let mut batch = MergeBatch::with_capacity(PAGE_LEN, pages, deltas).ok();
                for (page, (chain, base)) in chains
                    .iter()
                    .zip(work.base.chunks_exact(PAGE_LEN))
                    .enumerate()
                {
                    if let Some(batch) = batch.as_mut() {
                        let entries = chain
                            .iter()
                            .map(|(e, d)| ChainEntry::new(CommitEpoch(*e), d));
                        let _ = batch.push_page(PageId(page as u64), base, entries);
                    }
                }
                batch.map(|b| b.len())
            })
        });
        let mut kept = Some(build_arenas(&sims, &records, None)?);
        group.bench_function(format!("decode_arenas/{pages}"), |b| {
            b.iter(|| {
                let old = kept.take();
                kept = build_arenas(&sims, &records, old).ok();
                kept.as_ref().map(|a| a.counts().deltas)
            })
        });
        group.finish();
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("arena_build: {e}");
    }
}

criterion_group!(benches, arena_build);
criterion_main!(benches);
