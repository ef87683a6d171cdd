//! The memory budget: what eviction costs and how reads slow down as the
//! database outgrows the budget.
//!
//! Groups (each database lives in a temporary directory on the real disk):
//! - `eviction`: a cyclic scan over a page database 4× the budget, so that
//!   every read misses, loads its page and evicts one (`with_eviction`;
//!   throughput = bytes of pages cycled through the cache = bytes evicted),
//!   next to the same misses (same budget, pages past the mapped share, so
//!   `pread` as well) in a freshly opened database whose cache still has room
//!   (`without_eviction`, the load path alone). The difference is the price
//!   of eviction.
//! - `page_load`: reading random 4 KiB pages of a 32 MiB file through the
//!   memory map (`mmap`, what `read_exact_at` does; every page touched stays
//!   in the process's RSS) or with `pread` (`read_exact_at_unmapped`, what
//!   budgeted page loads use).
//! - `kv_random_read_vs_budget`: random point gets on a table whose data file
//!   is 1×, 2× and 4× the memory budget (same budget, more data).
//!
//! `cargo bench --bench eviction` (about two minutes).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mmsb::storage::{FileStorage, Storage, StorageFile};
use mmsb::{Database, Options, PageId, PageRead, PageWrite};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;
/// The budget of every database here.
const BUDGET_BYTES: u64 = 8 * MIB;
/// Pages of the scanned database: 4× the budget of 4 KiB pages.
const SCAN_PAGES: u64 = 4 * BUDGET_BYTES / 4096;
/// Pages read per iteration of the scans.
const READS_PER_ITER: u64 = 256;
/// Bytes of the file the `page_load` group reads.
const LOAD_FILE_BYTES: u64 = 32 * MIB;
/// Key and value lengths of the KV table.
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 200;
/// Data-file bytes one entry takes, roughly (B+tree fill included); used
/// only to size the loads, the real size is printed.
const BYTES_PER_ENTRY: u64 = 250;
/// Entries per load transaction.
const LOAD_BATCH: usize = 2000;
const TABLE: &str = "kv";
const SEED: u64 = 0x6576_6963_7469_6f6e;

fn options(budget_bytes: u64) -> Options {
    Options {
        memory_budget_bytes: budget_bytes,
        ..Options::default()
    }
}

/// A database of `SCAN_PAGES` pages, each filled with its id, checkpointed
/// and closed.
fn build_page_db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("pages.mmsb");
    let db = options(BUDGET_BYTES).open(&path).expect("open");
    let mut left = SCAN_PAGES;
    while left > 0 {
        let mut tx = db.begin_page_write().expect("begin");
        for _ in 0..left.min(512) {
            let id = tx.allocate_page().expect("allocate");
            tx.page_mut(id).expect("page").fill(id.get() as u8);
        }
        tx.commit().expect("commit");
        left = left.saturating_sub(512);
    }
    db.checkpoint().expect("checkpoint");
    path
}

/// Reads pages `next..next+READS_PER_ITER` (cyclically over the data pages).
fn read_pages(db: &Database, next: &mut u64) {
    let rx = db.begin_page_read().expect("begin read");
    for _ in 0..READS_PER_ITER {
        let id = PageId(2 + *next % SCAN_PAGES);
        let page = rx.read_page(id).expect("read");
        assert_eq!(page[0], id.get() as u8);
        *next += 1;
    }
}

fn eviction(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = build_page_db(&dir);
    let mut group = c.benchmark_group("eviction");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(READS_PER_ITER * 4096));
    {
        let db = options(BUDGET_BYTES).open(&path).expect("open");
        let mut next = 0;
        for _ in 0..SCAN_PAGES / READS_PER_ITER {
            read_pages(&db, &mut next); // fill the cache
        }
        let before = db.metrics();
        group.bench_function("with_eviction", |b| b.iter(|| read_pages(&db, &mut next)));
        let after = db.metrics();
        println!(
            "with_eviction: {} pages evicted in {} sweeps, cache {:.2} MiB of {:.2} MiB",
            after.pages_evicted - before.pages_evicted,
            after.evictions - before.evictions,
            after.cache_bytes as f64 / MIB as f64,
            BUDGET_BYTES as f64 / MIB as f64,
        );
    }
    // The same budget and read path (pread: the pages lie past the mapped
    // share), in a freshly opened database whose cache has room.
    group.bench_function("without_eviction", |b| {
        b.iter_batched(
            || {
                let db = options(BUDGET_BYTES).open(&path).expect("open");
                (db, SCAN_PAGES / 2)
            },
            |(db, mut next)| {
                read_pages(&db, &mut next);
                db
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn page_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file: Arc<dyn StorageFile> = FileStorage
        .open_file(&dir.path().join("load.bin"), true)
        .expect("open");
    let chunk = vec![0x5au8; MIB as usize];
    for offset in (0..LOAD_FILE_BYTES).step_by(MIB as usize) {
        file.write_all_at(&chunk, offset).expect("write");
    }
    file.sync_data().expect("sync");
    let pages = LOAD_FILE_BYTES / 4096;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut order: Vec<u64> = (0..pages).collect();
    order.shuffle(&mut rng);
    let mut group = c.benchmark_group("page_load");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(4096));
    let mut buf = vec![0u8; 4096];
    let mut at = 0usize;
    group.bench_function("mmap", |b| {
        b.iter(|| {
            let offset = order[at % order.len()] * 4096;
            at += 1;
            file.read_exact_at(&mut buf, offset).expect("read");
        })
    });
    group.bench_function("pread", |b| {
        b.iter(|| {
            let offset = order[at % order.len()] * 4096;
            at += 1;
            file.read_exact_at_unmapped(&mut buf, offset).expect("read");
        })
    });
    group.finish();
}

/// Keys in index order, so that a load transaction fills a few leaves
/// (a transaction touching more pages than the budget holds is refused);
/// the gets pick indexes at random.
fn kv_key(index: u64) -> Vec<u8> {
    let mut key = vec![0u8; KEY_BYTES];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&index.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    key
}

/// A table whose data file is about `data_bytes`; returns the entry count.
fn load_kv(db: &Database, data_bytes: u64) -> u64 {
    let entries = data_bytes / BYTES_PER_ENTRY;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut value = vec![0u8; VALUE_BYTES];
    for start in (0..entries).step_by(LOAD_BATCH) {
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table(TABLE).expect("table");
        for index in start..(start + LOAD_BATCH as u64).min(entries) {
            rng.fill(&mut value[..]);
            table.insert(&kv_key(index), &value).expect("insert");
        }
        drop(table);
        tx.commit().expect("commit");
    }
    db.checkpoint().expect("checkpoint");
    entries
}

fn kv_random_read_vs_budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_random_read_vs_budget");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for multiple in [1u64, 2, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.mmsb");
        let db = options(BUDGET_BYTES).open(&path).expect("open");
        let entries = load_kv(&db, multiple * BUDGET_BYTES);
        let file_bytes = std::fs::metadata(&path).expect("stat").len();
        let mut rng = StdRng::seed_from_u64(SEED ^ multiple);
        let rx = db.begin_read().expect("begin read");
        let table = rx.open_table(TABLE).expect("table");
        let before = db.metrics();
        group.bench_function(BenchmarkId::from_parameter(format!("{multiple}x")), |b| {
            b.iter(|| {
                let index = rng.gen_range(0..entries);
                let value = table.get(&kv_key(index)).expect("get");
                assert!(value.is_some(), "entry {index} missing");
            })
        });
        let after = db.metrics();
        println!(
            "{multiple}x: {entries} entries, data file {:.1} MiB, budget {:.1} MiB, \
             {} pages read from disk, {} evicted during the run",
            file_bytes as f64 / MIB as f64,
            BUDGET_BYTES as f64 / MIB as f64,
            after.pages_read_from_disk - before.pages_read_from_disk,
            after.pages_evicted - before.pages_evicted,
        );
    }
    group.finish();
}

criterion_group!(benches, eviction, page_load, kv_random_read_vs_budget);
criterion_main!(benches);
