//! Benchmarks of the TLog alone, each beside its anchor on the same disk in
//! the same run (a tempdir under the system temp directory, real files):
//!
//! 1. `tlog_append`: append throughput (1 KiB and 16 KiB payloads, Eventual
//!    mode, one flush per 4 MiB) against plain sequential `write_all` of the
//!    same payload bytes (one call per payload, and one call for all of them),
//!    each ending with one `sync_data`.
//! 2. `tlog_durable_commit`: one Immediate commit (append + wait_durable)
//!    against a bare `write_all + sync_data` of the same frame size.
//! 3. `tlog_group_commit`: commits per second with 1, 2, 4 and 8 committing
//!    threads; prints the fsyncs per commit from `TLog::stats`.
//! 4. `tlog_recovery`: open + replay of a 64 MiB log (both open validations)
//!    against a sequential read of its files, with the files in the page
//!    cache (`hot`) and evicted from it before each run (`cold`, through
//!    `posix_fadvise(DONTNEED)`).
//!
//! `cargo bench --bench tlog`

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmsb_wal::storage::{FileStorage, Storage};
use mmsb_wal::tlog::format::FRAME_OVERHEAD_BYTES;
use mmsb_wal::tlog::OpenValidation;
use mmsb_wal::{CommitEpoch, Durability, TLog, TLogConfig};

/// Payload bytes appended per measured iteration of the throughput bench.
const APPEND_BATCH_BYTES: usize = 4 << 20;
/// Size past which the throughput benches start their files over (keeps the disk use bounded).
const RESTART_FILE_BYTES: u64 = 256 << 20;
/// Size of the log the recovery bench reads back.
const RECOVERY_LOG_BYTES: usize = 64 << 20;
/// Payload size of the recovery bench's frames (and of its second log).
const RECOVERY_PAYLOAD_BYTES: [usize; 2] = [1024, 16 << 10];
/// Interval of the Eventual-mode log: long, so only explicit flushes write.
const HOUR_MS: u64 = 3_600_000;

fn storage() -> Arc<dyn Storage> {
    Arc::new(FileStorage)
}

fn config(dir: &Path, durability: Durability) -> TLogConfig {
    TLogConfig {
        durability,
        ..TLogConfig::new(dir.join("tlog"))
    }
}

fn quick(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

/// A file that appends with plain `write_all` and starts over past a size.
struct PlainFile {
    file: File,
    len: u64,
}

impl PlainFile {
    fn create(path: &Path) -> PlainFile {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .expect("create baseline file");
        PlainFile { file, len: 0 }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.file.write_all(bytes).expect("write_all");
        self.len += bytes.len() as u64;
    }

    fn sync(&mut self) {
        self.file.sync_data().expect("sync_data");
    }

    /// Truncates and rewinds when past `RESTART_FILE_BYTES`; not timed.
    fn restart_if_big(&mut self) {
        if self.len >= RESTART_FILE_BYTES {
            use std::io::Seek;
            self.file.set_len(0).expect("set_len");
            self.file.rewind().expect("rewind");
            self.len = 0;
        }
    }
}

fn append_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("tlog_append");
    quick(&mut group);
    for payload_len in [1024usize, 16 << 10] {
        let frames = APPEND_BATCH_BYTES / payload_len;
        let payload = vec![0x5Au8; payload_len];
        let label = format!("{}KiB", payload_len >> 10);
        group.throughput(Throughput::Bytes((frames * payload_len) as u64));

        let tmp = tempfile::tempdir().expect("tempdir");
        let eventual = Durability::Eventual {
            flush_interval_ms: HOUR_MS,
        };
        let log = TLog::open(storage(), config(tmp.path(), eventual)).expect("open");
        let mut epoch = 0u64;
        group.bench_function(BenchmarkId::new("tlog_eventual", &label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for _ in 0..frames {
                        epoch += 1;
                        log.append(CommitEpoch(epoch), &payload).expect("append");
                    }
                    log.flush().expect("flush");
                    total += start.elapsed();
                    log.truncate_through(CommitEpoch(epoch)).expect("truncate");
                }
                total
            })
        });
        drop(log);

        let mut plain = PlainFile::create(&tmp.path().join("plain"));
        group.bench_function(BenchmarkId::new("write_all_each", &label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for _ in 0..frames {
                        plain.write(&payload);
                    }
                    plain.sync();
                    total += start.elapsed();
                    plain.restart_if_big();
                }
                total
            })
        });
        let whole = vec![0x5Au8; frames * payload_len];
        group.bench_function(BenchmarkId::new("write_all_once", &label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    plain.write(&whole);
                    plain.sync();
                    total += start.elapsed();
                    plain.restart_if_big();
                }
                total
            })
        });
    }
    group.finish();
}

/// Rounds of the paired (interleaved) durable-commit comparison.
const PAIRED_ROUNDS: usize = 8;
/// Commits per side in each round of the paired comparison.
const PAIRED_COMMITS_PER_ROUND: usize = 40;

fn durable_commit_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("tlog_durable_commit");
    quick(&mut group);
    let mut paired = Vec::new();
    for payload_len in [128usize, 4096] {
        let label = format!("{payload_len}B");
        let payload = vec![0xA5u8; payload_len];
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = TLog::open(storage(), config(tmp.path(), Durability::Immediate)).expect("open");
        let mut epoch = 0u64;
        let mut commit = || {
            epoch += 1;
            let ticket = log.append(CommitEpoch(epoch), &payload).expect("append");
            log.wait_durable(ticket).expect("durable");
        };
        group.bench_function(BenchmarkId::new("tlog_immediate", &label), |b| {
            b.iter(&mut commit)
        });

        let frame = vec![0xA5u8; payload_len + FRAME_OVERHEAD_BYTES];
        let mut plain = PlainFile::create(&tmp.path().join("plain"));
        let mut bare = || {
            plain.write(&frame);
            plain.sync();
        };
        group.bench_function(BenchmarkId::new("write_all_sync_data", &label), |b| {
            b.iter(&mut bare)
        });
        paired.push((label, paired_medians(&mut commit, &mut bare)));
    }
    group.finish();
    for (label, (tlog, bare)) in paired {
        println!(
            "tlog_durable_commit/{label} paired medians: tlog {:.1} us, write_all+sync_data {:.1} us, ratio {:.2}",
            tlog.as_secs_f64() * 1e6,
            bare.as_secs_f64() * 1e6,
            tlog.as_secs_f64() / bare.as_secs_f64()
        );
    }
}

/// Median latencies of `a` and `b`, run in alternating rounds so that the
/// drift of a shared disk hits both alike.
fn paired_medians(a: &mut impl FnMut(), b: &mut impl FnMut()) -> (Duration, Duration) {
    let (mut a_times, mut b_times) = (Vec::new(), Vec::new());
    for _ in 0..PAIRED_ROUNDS {
        for (run, times) in [
            (&mut *a as &mut dyn FnMut(), &mut a_times),
            (b, &mut b_times),
        ] {
            for _ in 0..PAIRED_COMMITS_PER_ROUND {
                let start = Instant::now();
                run();
                times.push(start.elapsed());
            }
        }
    }
    (median(&mut a_times), median(&mut b_times))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn group_commit(c: &mut Criterion) {
    const PAYLOAD_BYTES: usize = 128;
    let mut group = c.benchmark_group("tlog_group_commit");
    quick(&mut group);
    group.throughput(Throughput::Elements(1));
    let mut report = Vec::new();
    for threads in [1u64, 2, 4, 8] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(
            TLog::open(storage(), config(tmp.path(), Durability::Immediate)).expect("open"),
        );
        let next_epoch = Arc::new(Mutex::new(1u64));
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| run_committers(&log, &next_epoch, threads, iters, PAYLOAD_BYTES))
        });
        let stats = log.stats();
        if stats.frames_appended > 0 {
            let ratio = stats.fsyncs as f64 / stats.frames_appended as f64;
            report.push((threads, ratio));
        }
    }
    group.finish();
    for (threads, ratio) in report {
        println!("tlog_group_commit/threads/{threads}: {ratio:.3} fsyncs per commit");
    }
}

/// `threads` threads commit `iters` commits in all; returns the wall time.
fn run_committers(
    log: &Arc<TLog>,
    next_epoch: &Arc<Mutex<u64>>,
    threads: u64,
    iters: u64,
    payload_len: usize,
) -> Duration {
    let per_thread = iters.div_ceil(threads);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (log, next_epoch) = (Arc::clone(log), Arc::clone(next_epoch));
            std::thread::spawn(move || {
                let payload = vec![7u8; payload_len];
                for _ in 0..per_thread {
                    let ticket = {
                        let mut next = next_epoch.lock().expect("epoch lock");
                        let ticket = log.append(CommitEpoch(*next), &payload).expect("append");
                        *next += 1;
                        ticket
                    };
                    log.wait_durable(ticket).expect("durable");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("committer");
    }
    start.elapsed()
}

/// Writes a log of about `RECOVERY_LOG_BYTES` of `payload_len`-byte frames;
/// returns its segment files.
fn build_recovery_log(dir: &Path, payload_len: usize) -> Vec<PathBuf> {
    let eventual = Durability::Eventual {
        flush_interval_ms: HOUR_MS,
    };
    let cfg = TLogConfig {
        segment_target_bytes: 16 << 20,
        ..config(dir, eventual)
    };
    let log = TLog::open(storage(), cfg.clone()).expect("open");
    let payload = vec![0x3Cu8; payload_len];
    let frames = RECOVERY_LOG_BYTES / (payload_len + FRAME_OVERHEAD_BYTES);
    for epoch in 1..=frames as u64 {
        log.append(CommitEpoch(epoch), &payload).expect("append");
    }
    log.flush().expect("flush");
    drop(log);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cfg.dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// Drops the files' pages from the page cache (they are clean: synced).
fn evict(files: &[PathBuf]) {
    use std::os::fd::AsRawFd;
    for path in files {
        let file = File::open(path).expect("open");
        // SAFETY: a plain syscall on a file descriptor this function owns.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise failed");
    }
}

fn sequential_read(files: &[PathBuf], buf: &mut [u8]) -> u64 {
    let mut read = 0u64;
    for path in files {
        let mut file = File::open(path).expect("open");
        loop {
            let n = file.read(buf).expect("read");
            if n == 0 {
                break;
            }
            read += n as u64;
        }
    }
    read
}

/// Opens the log and replays all of it (payloads lent, not copied).
fn open_and_replay(cfg: &TLogConfig) -> usize {
    let log = TLog::open(storage(), cfg.clone()).expect("open");
    let mut replay = log.replay(CommitEpoch::ZERO).expect("replay");
    let mut bytes = 0usize;
    while let Some(frame) = replay.next_frame() {
        bytes += frame.expect("frame").1.len();
    }
    bytes
}

/// Times `run` over `iters` runs, each after `prepare` (untimed).
fn timed(iters: u64, mut prepare: impl FnMut(), mut run: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        prepare();
        let start = Instant::now();
        run();
        total += start.elapsed();
    }
    total
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("tlog_recovery");
    quick(&mut group);
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = build_recovery_log(tmp.path(), RECOVERY_PAYLOAD_BYTES[0]);
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("stat").len())
        .sum();
    let payload_total = open_and_replay(&config(tmp.path(), Durability::Immediate));
    group.throughput(Throughput::Bytes(total));
    let full = config(tmp.path(), Durability::Immediate);
    let lazy = TLogConfig {
        open_validation: OpenValidation::LastSegment,
        ..full.clone()
    };
    let mut buf = vec![0u8; 4 << 20];
    for (cache, cold) in [("hot", false), ("cold", true)] {
        let prepare = || {
            if cold {
                evict(&files);
            }
        };
        group.bench_function(BenchmarkId::new("sequential_read", cache), |b| {
            b.iter_custom(|iters| {
                timed(iters, prepare, || {
                    assert_eq!(sequential_read(&files, &mut buf), total);
                })
            })
        });
        for (name, cfg) in [
            ("open_all_frames_and_replay", &full),
            ("open_last_segment_and_replay", &lazy),
        ] {
            group.bench_function(BenchmarkId::new(name, cache), |b| {
                b.iter_custom(|iters| {
                    timed(iters, prepare, || {
                        assert_eq!(open_and_replay(cfg), payload_total);
                    })
                })
            });
        }
    }
    let log = TLog::open(storage(), lazy.clone()).expect("open");
    group.bench_function(BenchmarkId::new("replay_only_lending", "hot"), |b| {
        b.iter(|| {
            let mut replay = log.replay(CommitEpoch::ZERO).expect("replay");
            let mut bytes = 0usize;
            while let Some(frame) = replay.next_frame() {
                bytes += frame.expect("frame").1.len();
            }
            assert_eq!(bytes, payload_total);
        })
    });
    group.bench_function(BenchmarkId::new("replay_only_iterator", "hot"), |b| {
        b.iter(|| {
            let bytes: usize = log
                .replay(CommitEpoch::ZERO)
                .expect("replay")
                .map(|frame| frame.expect("frame").1.len())
                .sum();
            assert_eq!(bytes, payload_total);
        })
    });
    drop(log);
    big_frame_replay(&mut group, &mut buf);
    group.finish();
}

/// Hot replay of a log of 16 KiB frames against a read of its files.
fn big_frame_replay(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    buf: &mut [u8],
) {
    let payload_len = RECOVERY_PAYLOAD_BYTES[1];
    let label = format!("hot_{}KiB_frames", payload_len >> 10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = build_recovery_log(tmp.path(), payload_len);
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("stat").len())
        .sum();
    group.throughput(Throughput::Bytes(total));
    group.bench_function(BenchmarkId::new("sequential_read", &label), |b| {
        b.iter(|| assert_eq!(sequential_read(&files, buf), total))
    });
    let log = TLog::open(storage(), config(tmp.path(), Durability::Immediate)).expect("open");
    group.bench_function(BenchmarkId::new("replay_only_lending", &label), |b| {
        b.iter(|| {
            let mut replay = log.replay(CommitEpoch::ZERO).expect("replay");
            let mut frames = 0usize;
            while let Some(frame) = replay.next_frame() {
                frame.expect("frame");
                frames += 1;
            }
            assert!(frames > 0);
        })
    });
}

criterion_group!(
    benches,
    append_throughput,
    durable_commit_latency,
    group_commit,
    recovery
);
criterion_main!(benches);
