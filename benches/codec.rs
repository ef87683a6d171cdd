//! Throughput of the delta codecs: encoding and decoding a commit record
//! with each codec (raw, RLE, zstd, adaptive) on three workloads built from
//! the accounts table of `tests/support/sparse_workload.rs`:
//! - `sparse`: one commit of the sparse-update workload (100 rows updated,
//!   a few bytes each, about 80 deltas);
//! - `dense`: every other row of 64 pages rewritten (half of each page);
//! - `full`: full images of 64 4 KiB pages.
//!
//! Throughput is counted in raw-encoded record bytes (the uncompressed log
//! size), so MB/s of different codecs compare directly. Encoded sizes and
//! ratios are printed once before the measurements.
//!
//! Run: `cargo bench --bench codec`.

#[path = "../tests/support/sparse_workload.rs"]
mod sparse_workload;

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb_wal::codec::{CodecConfig, CodecMode};
use mmsb_wal::record::CommitRecord;
use sparse_workload::{SparseWorkload, PAGE_BYTES};

/// Commits run before the measured one, so rows have been updated before.
const WARM_COMMITS: usize = 30;
/// Pages in the dense and full-image records.
const BULK_PAGES: usize = 64;

const CODECS: [(&str, CodecMode); 4] = [
    ("raw", CodecMode::Raw),
    ("rle", CodecMode::Rle),
    ("zstd", CodecMode::Zstd),
    ("adaptive", CodecMode::Adaptive),
];

fn workloads() -> Vec<(&'static str, CommitRecord)> {
    let mut workload = SparseWorkload::new(7);
    for _ in 0..WARM_COMMITS {
        workload.next_commit();
    }
    let sparse = CommitRecord::new(workload.next_commit());
    let dense = CommitRecord::new(workload.rewrite_half_of_each_page(BULK_PAGES));
    let full = CommitRecord::new(workload.full_page_images(BULK_PAGES));
    vec![("sparse", sparse), ("dense", dense), ("full", full)]
}

fn encode(record: &CommitRecord, config: &CodecConfig) -> Vec<u8> {
    let mut out = Vec::new();
    record.encode(config, &mut out).expect("encodes");
    out
}

fn print_sizes(workloads: &[(&str, CommitRecord)]) {
    println!("encoded sizes (ratio = raw / encoded):");
    for (name, record) in workloads {
        let raw = record.raw_encoded_len();
        print!(
            "  {name:7} {:3} deltas, raw {raw:7} B:",
            record.deltas.len()
        );
        for (codec, mode) in CODECS {
            let encoded = encode(record, &CodecConfig::with_mode(mode)).len();
            print!(
                "  {codec} {encoded} B ({:.2}x)",
                raw as f64 / encoded as f64
            );
        }
        println!();
    }
}

fn bench_codecs(c: &mut Criterion) {
    let workloads = workloads();
    print_sizes(&workloads);
    for (name, record) in &workloads {
        let mut group = c.benchmark_group(format!("codec/{name}"));
        group.throughput(Throughput::Bytes(record.raw_encoded_len() as u64));
        for (codec, mode) in CODECS {
            let config = CodecConfig::with_mode(mode);
            let mut out = Vec::with_capacity(record.raw_encoded_len());
            group.bench_function(BenchmarkId::new("encode", codec), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(&record)
                        .encode(&config, &mut out)
                        .expect("encodes")
                })
            });
            let bytes = encode(record, &config);
            group.bench_function(BenchmarkId::new("decode", codec), |b| {
                b.iter(|| CommitRecord::decode(black_box(&bytes), PAGE_BYTES).expect("decodes"))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(900))
        .sample_size(20);
    targets = bench_codecs
}
criterion_main!(benches);
