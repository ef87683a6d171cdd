//! Point reads on a table of 1 000 000 entries (the comparison benchmark's
//! shape: 24-byte random keys, 150-byte random values, seeded), through a
//! held read transaction: `ReadOnlyTable::get` (a guard that holds a
//! reference to the leaf image) against `ReadOnlyTable::get_with` (the
//! value lent to a closure, no reference count), on one thread and on two
//! threads sharing one read transaction (the comparison's "2-thread reads"
//! row).
//!
//! Every read digests its value (its first 8 bytes plus its length, like
//! `compare/`'s `value_digest`) and asserts that the key was found; the keys
//! are visited in a shuffled order, so consecutive reads touch different
//! leaves. The table is loaded in a few transactions and checkpointed
//! before measuring, and the pages stay in memory (the default budget).
//!
//! The machine this runs on is shared and loaded: the two methods
//! alternate in blocks of [`BLOCK_READS`] reads inside every sample (the
//! threads of the two-thread rows start each block together), and each
//! row times only its own method's blocks, so `get` and `get_with` see the
//! same load. Compare the two rows of one thread count in one run.
//!
//! The `range_reads_1m` group times the comparison's range-read row on
//! the same table: ranges of [`RANGE_ENTRIES`] entries from a shuffled
//! start key (`ReadOnlyTable::range(start..)`, then `Range::next_entry`
//! for each entry, its key's first byte and its value's digest summed), one
//! read transaction for every sample.
//!
//! `cargo bench --bench point_reads` (about a minute, most of it the load);
//! `cargo bench --bench point_reads -- range_reads` for the ranges only.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};
use mmsb::{Database, Options, ReadOnlyTable};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Entries in the table.
const ENTRY_COUNT: usize = 1_000_000;
/// Length of every key.
const KEY_BYTES: usize = 24;
/// Length of every value.
const VALUE_BYTES: usize = 150;
/// Seed of the key and value generator: every run reads the same data.
const SEED: u64 = 0x6d6d_7362_7265_6164;
/// The benchmark's table.
const TABLE: &str = "bench";
/// Entries per load transaction (the default commit size limit holds
/// about 300 000 of these entries).
const LOAD_BATCH_ENTRIES: usize = 200_000;
/// Threads of the two-thread rows.
const THREADS: usize = 2;

/// The digest the comparison benchmark computes of a value
/// (`compare/src/engine.rs`): its first 8 bytes plus its length.
fn value_digest(value: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    let take = value.len().min(head.len());
    head[..take].copy_from_slice(&value[..take]);
    u64::from_le_bytes(head).wrapping_add(value.len() as u64)
}

/// The keys in a shuffled order (values are not kept: the load writes them
/// as it makes them).
fn load(db: &Database) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut keys = Vec::with_capacity(ENTRY_COUNT);
    let mut value = vec![0u8; VALUE_BYTES];
    while keys.len() < ENTRY_COUNT {
        let mut tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(TABLE).expect("open table");
            for _ in 0..LOAD_BATCH_ENTRIES.min(ENTRY_COUNT - keys.len()) {
                let mut key = vec![0u8; KEY_BYTES];
                rng.fill(&mut key[..]);
                rng.fill(&mut value[..]);
                table.put(&key, &value).expect("put");
                keys.push(key);
            }
        }
        tx.commit().expect("commit");
    }
    db.checkpoint().expect("checkpoint");
    keys.shuffle(&mut rng);
    keys
}

/// Reads per block: the two methods alternate in blocks of this many
/// reads (about a millisecond), so both meet the same machine load.
const BLOCK_READS: u64 = 1_000;

/// A read method: the digest of the value under the key, `None` if absent.
type Read = for<'t, 'r> fn(&'t ReadOnlyTable<'r>, &[u8]) -> Option<u64>;

/// A read through `get` (a guard).
fn by_get(table: &ReadOnlyTable<'_>, key: &[u8]) -> Option<u64> {
    let value = table.get(key).expect("get")?;
    Some(value_digest(&value))
}

/// A read through `get_with` (a loan).
fn by_get_with(table: &ReadOnlyTable<'_>, key: &[u8]) -> Option<u64> {
    table.get_with(key, value_digest).expect("get_with")
}

/// Reads `count` keys of `keys` from `*next` on (wrapping) with `read`,
/// asserting that each is found; returns the sum of the digests.
fn read_block(
    table: &ReadOnlyTable<'_>,
    keys: &[Vec<u8>],
    next: &mut usize,
    count: u64,
    read: Read,
) -> u64 {
    let mut sum = 0u64;
    for _ in 0..count {
        let key = &keys[*next % keys.len()];
        *next += 1;
        sum = sum.wrapping_add(read(table, key).expect("a loaded key is present"));
    }
    sum
}

/// `threads` threads each read `iters` keys with `timed` and as many with
/// `other`, in alternating blocks that start together (a barrier); returns
/// the time the slowest thread spent in `timed` blocks. Each thread walks
/// its own part of the shuffled order from `start`.
fn interleaved(
    table: &ReadOnlyTable<'_>,
    keys: &[Vec<u8>],
    start: usize,
    threads: usize,
    iters: u64,
    (timed, other): (Read, Read),
) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut next = start + t * keys.len() / threads;
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let block = left.min(BLOCK_READS);
                        barrier.wait();
                        let started = Instant::now();
                        black_box(read_block(table, keys, &mut next, block, timed));
                        spent += started.elapsed();
                        barrier.wait();
                        black_box(read_block(table, keys, &mut next, block, other));
                        left -= block;
                    }
                    spent
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("reader"))
            .max()
            .unwrap_or_default()
    })
}

/// One row per read method, on one thread and on [`THREADS`] threads
/// sharing the read transaction. The rows of one thread count alternate
/// the two methods block by block and each times only its own blocks, so
/// a load spike of the shared machine lands on both alike.
fn point_reads(c: &mut Criterion, db: &Database, keys: &[Vec<u8>]) {
    let rx = db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("open table");
    let pairs: [(&str, (Read, Read)); 2] = [
        ("get", (by_get, by_get_with)),
        ("get_with", (by_get_with, by_get)),
    ];
    let mut group = c.benchmark_group("point_reads_1m");
    group.throughput(Throughput::Elements(1));
    for threads in [1, THREADS] {
        for (name, pair) in pairs {
            let id = if threads == 1 {
                name.to_owned()
            } else {
                format!("{name}_{threads}_threads")
            };
            let mut next = 0usize;
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let spent = interleaved(&table, keys, next, threads, iters, pair);
                    next = next.wrapping_add(2 * iters as usize);
                    spent
                })
            });
        }
    }
    group.finish();
}

/// Entries read from each range (the comparison's range-read row).
const RANGE_ENTRIES: usize = 10;

/// Reads [`RANGE_ENTRIES`] entries from each of `count` ranges starting at
/// the keys of `keys` from `*next` on (wrapping); returns the sum of the
/// entries' key bytes and value digests.
fn range_block(table: &ReadOnlyTable<'_>, keys: &[Vec<u8>], next: &mut usize, count: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..count {
        let start = &keys[*next % keys.len()][..];
        *next += 1;
        let mut range = table.range(start..).expect("range");
        for _ in 0..RANGE_ENTRIES {
            let Some(entry) = range.next_entry() else {
                break;
            };
            let (key, value) = entry.expect("entry");
            sum = sum
                .wrapping_add(u64::from(key[0]))
                .wrapping_add(value_digest(value));
        }
    }
    sum
}

/// One row: ranges of [`RANGE_ENTRIES`] entries on one thread.
fn range_reads(c: &mut Criterion, db: &Database, keys: &[Vec<u8>]) {
    let rx = db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("open table");
    let mut group = c.benchmark_group("range_reads_1m");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function(format!("range_{RANGE_ENTRIES}"), |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            black_box(range_block(&table, keys, &mut next, iters));
            started.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::default()
        .open(dir.path().join("point_reads.mmsb"))
        .expect("open database");
    let keys = load(&db);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    point_reads(&mut c, &db, &keys);
    range_reads(&mut c, &db, &keys);
    c.final_summary();
}
