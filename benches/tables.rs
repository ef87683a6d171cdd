//! The table API on the key-value workload of the public redb benchmark:
//! 24-byte random keys, 150-byte random values (seeded), 100 000 entries.
//!
//! Each row is its own criterion function: bulk insert in one transaction,
//! random point gets through a read transaction (held, and begun per get),
//! range scans of 10 entries, `len`, removals (1000 per durable transaction),
//! and single-entry durable write transactions (`Durability::Immediate`).
//! The database lives in a temporary directory on the real disk; the sizes of
//! its files after the bulk load are printed.
//!
//! Honesty rules: lookups walk a shuffled permutation of the loaded keys, so
//! no two consecutive iterations touch the same key; every get asserts that it
//! found its key; removals take a new chunk of keys every iteration and put
//! them back outside the timed part; single writes insert fresh random keys.
//!
//! `cargo bench --bench tables` (about two minutes).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{black_box, BatchSize, BenchmarkId, Criterion, Throughput};
use mmsb::{Database, Durability, Options};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Entries in the loaded table (the redb benchmark's element count, scaled
/// to this machine).
const ENTRY_COUNT: usize = 100_000;
/// Length of every key.
const KEY_BYTES: usize = 24;
/// Length of every value.
const VALUE_BYTES: usize = 150;
/// Entries read by one range scan.
const RANGE_LEN: usize = 10;
/// Keys removed by one removal transaction.
const REMOVE_BATCH_LEN: usize = 1000;
/// Seed of the key and value generator: every run benches the same data.
const SEED: u64 = 0x6d6d_7362_7461_626c;
/// The benchmark's table.
const TABLE: &str = "bench";
/// Name of the data file inside the temporary directory.
const FILE_NAME: &str = "tables.mmsb";

/// The entries, and orders to visit them in.
struct Dataset {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// A shuffled permutation of `0..ENTRY_COUNT`: the lookup order.
    lookup_order: Vec<usize>,
    /// The keys sorted, and a shuffled permutation of the start positions
    /// that leave `RANGE_LEN` entries after them.
    sorted_keys: Vec<Vec<u8>>,
    range_starts: Vec<usize>,
}

impl Dataset {
    fn generate() -> Dataset {
        let mut rng = StdRng::seed_from_u64(SEED);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..ENTRY_COUNT)
            .map(|_| {
                (
                    random_bytes(&mut rng, KEY_BYTES),
                    random_bytes(&mut rng, VALUE_BYTES),
                )
            })
            .collect();
        let mut lookup_order: Vec<usize> = (0..ENTRY_COUNT).collect();
        lookup_order.shuffle(&mut rng);
        let mut sorted_keys: Vec<Vec<u8>> = entries.iter().map(|(key, _)| key.clone()).collect();
        sorted_keys.sort();
        sorted_keys.dedup();
        assert_eq!(
            sorted_keys.len(),
            ENTRY_COUNT,
            "random 24-byte keys collided"
        );
        let mut range_starts: Vec<usize> = (0..ENTRY_COUNT - RANGE_LEN).collect();
        range_starts.shuffle(&mut rng);
        Dataset {
            entries,
            lookup_order,
            sorted_keys,
            range_starts,
        }
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

/// Walks `order` round and round.
struct Cursor<'a> {
    order: &'a [usize],
    next: usize,
}

impl<'a> Cursor<'a> {
    fn new(order: &'a [usize]) -> Self {
        Cursor { order, next: 0 }
    }

    fn next_index(&mut self) -> usize {
        let index = self.order[self.next];
        self.next = (self.next + 1) % self.order.len();
        index
    }
}

fn open_db(dir: &Path) -> Database {
    Options {
        durability: Durability::Immediate,
        ..Options::default()
    }
    .open(dir.join(FILE_NAME))
    .expect("open database")
}

/// Inserts every entry in one transaction and commits it (durably).
fn load(db: &Database, data: &Dataset) {
    let mut tx = db.begin_write().expect("begin");
    {
        let mut table = tx.open_table(TABLE).expect("open table");
        for (key, value) in &data.entries {
            table.insert(key, value).expect("insert");
        }
    }
    tx.commit().expect("commit bulk load");
}

/// Bytes of every file under `dir`: (apparent length, allocated on disk).
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let meta = entry.metadata().expect("metadata");
        let (len, allocated) = if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            (meta.len(), meta.blocks() * 512)
        };
        total = (total.0 + len, total.1 + allocated);
    }
    total
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints the total size of the database's files, then each top-level one.
fn print_sizes(dir: &Path, when: &str) {
    let (total, allocated) = dir_bytes(dir);
    println!(
        "tables: {when}: all files {:.1} MiB ({:.1} MiB allocated)",
        mib(total),
        mib(allocated)
    );
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let (len, _) = if path.is_dir() {
            dir_bytes(&path)
        } else {
            (std::fs::metadata(&path).map_or(0, |m| m.len()), 0)
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("tables:     {name}: {:.1} MiB", mib(len));
    }
}

/// A database holding the whole dataset, for the read and write rows.
struct Loaded {
    dir: tempfile::TempDir,
    db: Database,
}

impl Loaded {
    fn new(data: &Dataset) -> Loaded {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        load(&db, data);
        print_sizes(
            dir.path(),
            "after bulk load of 100k entries (commit returned)",
        );
        db.checkpoint().expect("checkpoint");
        print_sizes(dir.path(), "after checkpoint");
        Loaded { dir, db }
    }
}

fn bulk_insert(c: &mut Criterion, data: &Dataset) {
    let mut group = c.benchmark_group("tables");
    group
        .throughput(Throughput::Elements(ENTRY_COUNT as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15));
    group.bench_function("bulk_insert_100k", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let db = open_db(dir.path());
                (dir, db)
            },
            |(dir, db)| {
                load(&db, data);
                // Dropped after the timed part: closing checkpoints.
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn random_gets(c: &mut Criterion, data: &Dataset, loaded: &Loaded) {
    let mut group = c.benchmark_group("tables");
    group.throughput(Throughput::Elements(1));
    let rx = loaded.db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("open table");
    let mut cursor = Cursor::new(&data.lookup_order);
    group.bench_function("random_get", |b| {
        b.iter(|| {
            let key = &data.entries[cursor.next_index()].0;
            let value = table.get(key).expect("get").expect("loaded key is present");
            black_box(value.len())
        })
    });
    let mut cursor = Cursor::new(&data.lookup_order);
    group.bench_function("begin_read_and_random_get", |b| {
        b.iter(|| {
            let key = &data.entries[cursor.next_index()].0;
            let rx = loaded.db.begin_read().expect("begin read");
            let table = rx.open_table(TABLE).expect("open table");
            let value = table.get(key).expect("get").expect("loaded key is present");
            black_box(value.len())
        })
    });
    group.finish();
}

fn range_scans(c: &mut Criterion, data: &Dataset, loaded: &Loaded) {
    let mut group = c.benchmark_group("tables");
    group.throughput(Throughput::Elements(RANGE_LEN as u64));
    let rx = loaded.db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("open table");
    let mut cursor = Cursor::new(&data.range_starts);
    group.bench_function("range_10", |b| {
        b.iter(|| {
            let start = data.sorted_keys[cursor.next_index()].as_slice();
            let mut entries = 0;
            let mut bytes = 0;
            for item in table.range(start..).expect("range").take(RANGE_LEN) {
                let (key, value) = item.expect("range entry");
                entries += 1;
                bytes += key.len() + value.len();
            }
            assert_eq!(entries, RANGE_LEN, "range scan came back short");
            black_box(bytes)
        })
    });
    group.finish();
}

fn len(c: &mut Criterion, loaded: &Loaded) {
    let mut group = c.benchmark_group("tables");
    let rx = loaded.db.begin_read().expect("begin read");
    group.bench_function("len_read_tx", |b| {
        b.iter(|| {
            let table = rx.open_table(TABLE).expect("open table");
            let len = table.len();
            assert!(len >= ENTRY_COUNT as u64);
            black_box(len)
        })
    });
    drop(rx);
    group.bench_function("len_write_tx", |b| {
        b.iter_batched(
            || loaded.db.begin_write().expect("begin"),
            |mut tx| {
                let len = tx
                    .open_table(TABLE)
                    .expect("open table")
                    .len()
                    .expect("len");
                assert!(len >= ENTRY_COUNT as u64);
                // The transaction rolls back when dropped, outside the timing.
                (black_box(len), tx)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn removals(c: &mut Criterion, data: &Dataset, loaded: &Loaded) {
    let mut group = c.benchmark_group("tables");
    group
        .throughput(Throughput::Elements(REMOVE_BATCH_LEN as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    let chunks: Vec<&[usize]> = data.lookup_order.chunks(REMOVE_BATCH_LEN).collect();
    let mut next_chunk = 0;
    group.bench_function(
        BenchmarkId::new("remove_durable_tx", REMOVE_BATCH_LEN),
        |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let chunk = chunks[next_chunk];
                    next_chunk = (next_chunk + 1) % chunks.len();
                    let started = Instant::now();
                    let mut tx = loaded.db.begin_write().expect("begin");
                    {
                        let mut table = tx.open_table(TABLE).expect("open table");
                        for &index in chunk {
                            let old = table.remove(&data.entries[index].0).expect("remove");
                            assert!(old.is_some(), "removed a key that was not there");
                        }
                    }
                    tx.commit().expect("commit removals");
                    timed += started.elapsed();
                    put_back(&loaded.db, data, chunk);
                }
                timed
            })
        },
    );
    group.finish();
}

/// Re-inserts removed entries (untimed) so every removal finds its key.
fn put_back(db: &Database, data: &Dataset, chunk: &[usize]) {
    let mut tx = db.begin_write().expect("begin");
    {
        let mut table = tx.open_table(TABLE).expect("open table");
        for &index in chunk {
            let (key, value) = &data.entries[index];
            table.insert(key, value).expect("insert");
        }
    }
    tx.commit().expect("commit put-back");
}

fn durable_single_writes(c: &mut Criterion, loaded: &Loaded) {
    let mut group = c.benchmark_group("tables");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    let mut rng = StdRng::seed_from_u64(SEED ^ 1);
    let mut key = [0u8; KEY_BYTES];
    let mut value = [0u8; VALUE_BYTES];
    let before = loaded.db.metrics();
    group.bench_function("single_write_durable_tx", |b| {
        b.iter(|| {
            rng.fill(&mut key[..]);
            rng.fill(&mut value[..]);
            let mut tx = loaded.db.begin_write().expect("begin");
            tx.open_table(TABLE)
                .expect("open table")
                .insert(&key, &value)
                .expect("insert");
            black_box(tx.commit().expect("commit"))
        })
    });
    group.finish();
    let after = loaded.db.metrics();
    let commits = after.commits - before.commits;
    println!(
        "tables: single_write_durable_tx: {commits} commits, {} TLog fsyncs ({:.2} per commit)",
        after.tlog_fsyncs - before.tlog_fsyncs,
        (after.tlog_fsyncs - before.tlog_fsyncs) as f64 / commits.max(1) as f64
    );
}

fn main() {
    let data = Dataset::generate();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    bulk_insert(&mut c, &data);
    let loaded = Loaded::new(&data);
    random_gets(&mut c, &data, &loaded);
    range_scans(&mut c, &data, &loaded);
    len(&mut c, &loaded);
    removals(&mut c, &data, &loaded);
    durable_single_writes(&mut c, &loaded);
    c.final_summary();
    let Loaded { dir, db } = loaded;
    drop(db);
    print_sizes(dir.path(), "after every row and a clean close");
}
