//! Batch commit against individual durable commits: transactions per second
//! for batches of 10, 100 and 1000 small independent transactions, each
//! inserting one 150-byte value under a 24-byte key.
//!
//! `cargo bench --bench batch_commit`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb::{Database, Transaction};

const VALUE: [u8; 150] = [0x42; 150];

fn key(counter: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&counter.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    key[8..16].copy_from_slice(&counter.to_be_bytes());
    key
}

fn staged(db: &Database, counter: &mut u64) -> Transaction {
    *counter += 1;
    let mut tx = db.begin_write().expect("begin");
    tx.open_table("t")
        .expect("table")
        .insert(&key(*counter), &VALUE)
        .expect("insert");
    tx
}

fn batch_vs_individual(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path().join("batch.mmsb")).expect("open");
    let mut counter = 0u64;
    // Create the table first: concurrent creations of one table conflict.
    staged(&db, &mut counter).commit().expect("create table");
    for size in [10usize, 100, 1000] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("individual", size), &size, |b, &size| {
            b.iter(|| {
                for _ in 0..size {
                    staged(&db, &mut counter).commit().expect("commit");
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("batch", size), &size, |b, &size| {
            b.iter(|| {
                let batch: Vec<_> = (0..size).map(|_| staged(&db, &mut counter)).collect();
                for outcome in db.commit_batch(batch) {
                    outcome.expect("commit");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, batch_vs_individual);
criterion_main!(benches);
