//! Durable commits through the whole engine (page diff → delta → record →
//! TLog frame → fsync → install → publish), against the floor: one bare
//! `write + fdatasync` of the same number of bytes on the same disk.
//!
//! Also commits per second with 1, 2, 4 and 8 committing threads, printing
//! the fsyncs per commit that group commit achieves.
//!
//! `cargo bench --bench commit`

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb::{Database, Options, PageId, PageWrite};

const CHANGE_BYTES: [usize; 2] = [128, 4000];

fn open_db(dir: &tempfile::TempDir) -> Database {
    Options {
        background_workers: true,
        ..Options::default()
    }
    .open(dir.path().join("bench.mmsb"))
    .expect("open")
}

/// One page per thread, allocated up front.
fn prepare_pages(db: &Database, count: usize) -> Vec<PageId> {
    let mut tx = db.begin_page_write().expect("begin");
    let pages = (0..count)
        .map(|_| tx.allocate_page().expect("allocate"))
        .collect();
    tx.commit().expect("commit");
    pages
}

fn durable_commit_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_commit");
    group
        .sample_size(60)
        .measurement_time(Duration::from_secs(6));
    for change in CHANGE_BYTES {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(&dir);
        let page = prepare_pages(&db, 1)[0];
        // Incompressible bytes, different every commit, so the delta and the
        // frame really carry `change` bytes.
        let noise: Vec<u8> = (0..change + 256)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17) as u8
            })
            .collect();
        let mut round = 0usize;
        let commit_once = |round: &mut usize| {
            *round = (*round + 1) % 256;
            let mut tx = db.begin_page_write().expect("begin");
            tx.write(page, 0, &noise[*round..*round + change])
                .expect("write");
            tx.commit().expect("commit");
        };
        let before = db.metrics();
        for _ in 0..20 {
            commit_once(&mut round);
        }
        let after = db.metrics();
        let frame_bytes = ((after.tlog_bytes_written - before.tlog_bytes_written)
            / (after.commits - before.commits)) as usize;
        group.bench_with_input(BenchmarkId::new("mmsb_commit", change), &change, |b, _| {
            b.iter(|| commit_once(&mut round))
        });
        let path = dir.path().join("bare.bin");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("bare file");
        let frame = vec![0x5Au8; frame_bytes];
        group.bench_with_input(
            BenchmarkId::new(format!("bare_write_fsync_{frame_bytes}B"), change),
            &change,
            |b, _| {
                b.iter(|| {
                    file.write_all(&frame).expect("write");
                    file.sync_data().expect("fsync");
                })
            },
        );
    }
    group.finish();
}

fn concurrent_commits(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_commits");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    const COMMITS_PER_THREAD: usize = 50;
    for threads in [1usize, 2, 4, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(&dir);
        let pages = Arc::new(prepare_pages(&db, threads));
        group.throughput(Throughput::Elements((threads * COMMITS_PER_THREAD) as u64));
        let mut fsyncs = 0u64;
        let mut commits = 0u64;
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iterations| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        let before = db.metrics();
                        let started = Instant::now();
                        std::thread::scope(|scope| {
                            for thread in 0..threads {
                                let db = db.clone();
                                let page = pages[thread];
                                scope.spawn(move || {
                                    for i in 0..COMMITS_PER_THREAD {
                                        let mut tx = db.begin_page_write().expect("begin");
                                        tx.write(page, 0, &(i as u64).to_le_bytes())
                                            .expect("write");
                                        tx.commit().expect("commit");
                                    }
                                });
                            }
                        });
                        total += started.elapsed();
                        let after = db.metrics();
                        fsyncs += after.tlog_fsyncs - before.tlog_fsyncs;
                        commits += after.commits - before.commits;
                    }
                    total
                })
            },
        );
        println!(
            "concurrent_commits/{threads}: {:.3} fsyncs per commit over {commits} commits",
            fsyncs as f64 / commits.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, durable_commit_latency, concurrent_commits);
criterion_main!(benches);
