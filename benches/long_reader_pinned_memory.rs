//! What a long-lived reader costs: memory pinned for its snapshot while two
//! writers keep committing, how fast that memory is released once the reader
//! ends, and whether the reader slows the writers.
//!
//! Two runs of the same workload, each on a fresh database in a temporary
//! directory on the real disk, loaded with 50 000 entries (24-byte keys,
//! 150-byte values): first without a reader (the writer-throughput baseline),
//! then with a read transaction begun right after the load and held for the
//! whole run. Two writer threads update random keys, `UPDATES_PER_TX` per
//! transaction, with `Durability::Eventual { flush_interval_ms: 10 }` so the
//! run is CPU-bound rather than fsync-bound. Every second the run prints
//! commits so far, `pinned_version_bytes` and `pages_in_memory`. At the end
//! the reader re-reads what it read at the start (it must be unchanged), is
//! dropped while the writers keep going, and the time until the pinned bytes
//! fall back to the no-reader level is printed.
//!
//! `MMSB_LONG_READER_SECS=20 cargo bench --bench long_reader_pinned_memory`
//! (default 60 s per run; the whole program takes a little over twice that).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mmsb::{Database, Durability, Options, ReadTransaction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Entries loaded before the writers start.
const ENTRY_COUNT: usize = 50_000;
/// Length of every key.
const KEY_BYTES: usize = 24;
/// Length of every value.
const VALUE_BYTES: usize = 150;
/// Writer threads.
const WRITER_COUNT: usize = 2;
/// Random updates per write transaction.
const UPDATES_PER_TX: usize = 4;
/// Background flush interval of the TLog in this workload.
const FLUSH_INTERVAL_MS: u64 = 10;
/// Seconds each run lasts unless `MMSB_LONG_READER_SECS` says otherwise.
const DEFAULT_RUN_SECS: u64 = 60;
/// How often the pinned bytes are sampled while they drain.
const DRAIN_SAMPLE_MS: u64 = 20;
/// How often a drain sample is printed.
const DRAIN_PRINT_MS: u64 = 250;
/// Longest wait for the pinned bytes to drain.
const DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Keys the reader reads at the start and again at the end.
const CHECKED_KEY_COUNT: usize = 1000;
/// Seed of keys and values.
const SEED: u64 = 0x6c6f_6e67_7265_6164;
/// The benchmark's table.
const TABLE: &str = "bench";

const MIB: f64 = 1024.0 * 1024.0;

fn run_secs() -> u64 {
    match std::env::var("MMSB_LONG_READER_SECS") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => secs,
            _ => {
                eprintln!("MMSB_LONG_READER_SECS={text:?} is not a positive number of seconds");
                std::process::exit(2);
            }
        },
        Err(_) => DEFAULT_RUN_SECS,
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

fn generate_keys() -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(SEED);
    (0..ENTRY_COUNT)
        .map(|_| random_bytes(&mut rng, KEY_BYTES))
        .collect()
}

/// A fresh database in `dir` with every key loaded.
fn open_loaded(dir: &std::path::Path, keys: &[Vec<u8>]) -> Database {
    let db = Options {
        durability: Durability::Eventual {
            flush_interval_ms: FLUSH_INTERVAL_MS,
        },
        ..Options::default()
    }
    .open(dir.join("long_reader.mmsb"))
    .expect("open database");
    let mut rng = StdRng::seed_from_u64(SEED ^ 1);
    let mut tx = db.begin_write().expect("begin");
    {
        let mut table = tx.open_table(TABLE).expect("open table");
        for key in keys {
            table
                .insert(key, &random_bytes(&mut rng, VALUE_BYTES))
                .expect("insert");
        }
    }
    tx.commit().expect("commit load");
    db
}

/// The writers' shared counters and stop flag.
#[derive(Default)]
struct WriterState {
    stop: AtomicBool,
    committed: AtomicU64,
    conflicts: AtomicU64,
}

fn spawn_writers(
    db: &Database,
    keys: &Arc<Vec<Vec<u8>>>,
    state: &Arc<WriterState>,
) -> Vec<JoinHandle<()>> {
    (0..WRITER_COUNT)
        .map(|writer| {
            let (db, keys, state) = (db.clone(), Arc::clone(keys), Arc::clone(state));
            std::thread::spawn(move || write_until_stopped(&db, &keys, &state, writer as u64))
        })
        .collect()
}

fn write_until_stopped(db: &Database, keys: &[Vec<u8>], state: &WriterState, writer: u64) {
    let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(100 + writer));
    let mut value = [0u8; VALUE_BYTES];
    while !state.stop.load(Ordering::Relaxed) {
        let mut tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(TABLE).expect("open table");
            for _ in 0..UPDATES_PER_TX {
                let key = &keys[rng.gen_range(0..keys.len())];
                rng.fill(&mut value[..]);
                table.insert(key, &value).expect("update");
            }
        }
        match tx.commit() {
            Ok(_) => state.committed.fetch_add(1, Ordering::Relaxed),
            Err(err) if err.is_retryable() => state.conflicts.fetch_add(1, Ordering::Relaxed),
            Err(err) => panic!("writer {writer}: commit failed: {err}"),
        };
    }
}

fn stop_writers(state: &WriterState, writers: Vec<JoinHandle<()>>) {
    state.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer thread panicked");
    }
}

/// What the reader saw at the start: the values of some keys, and the count.
struct ReaderProbe {
    values: Vec<Vec<u8>>,
}

impl ReaderProbe {
    fn take(rx: &ReadTransaction, keys: &[Vec<u8>]) -> ReaderProbe {
        let table = rx.open_table(TABLE).expect("open table");
        let values = keys[..CHECKED_KEY_COUNT]
            .iter()
            .map(|key| table.get(key).expect("get").expect("loaded key").to_vec())
            .collect();
        ReaderProbe { values }
    }

    /// Re-reads the same keys and scans the whole table through the old
    /// snapshot; panics if anything changed. Returns the scan's duration.
    fn verify(&self, rx: &ReadTransaction, keys: &[Vec<u8>]) -> Duration {
        let table = rx.open_table(TABLE).expect("open table");
        for (key, expected) in keys.iter().zip(&self.values) {
            let value = table.get(key).expect("get").expect("loaded key");
            assert_eq!(
                &*value,
                expected.as_slice(),
                "the long reader's snapshot changed"
            );
        }
        let started = Instant::now();
        let mut count = 0usize;
        for item in table.iter().expect("scan") {
            item.expect("scan entry");
            count += 1;
        }
        assert_eq!(
            count, ENTRY_COUNT,
            "the long reader's scan saw a different table"
        );
        started.elapsed()
    }
}

/// One run's outcome.
struct RunReport {
    commits: u64,
    conflicts: u64,
    secs: f64,
    /// Largest pinned bytes seen during the run.
    peak_pinned_bytes: u64,
    /// Pinned bytes at the last sample of the run.
    last_pinned_bytes: u64,
}

impl RunReport {
    fn commits_per_sec(&self) -> f64 {
        self.commits as f64 / self.secs
    }
}

/// Runs the writers for `secs`, printing a sample every second.
fn run_writers(
    db: &Database,
    keys: &Arc<Vec<Vec<u8>>>,
    secs: u64,
    label: &str,
) -> (RunReport, Arc<WriterState>, Vec<JoinHandle<()>>) {
    let state = Arc::new(WriterState::default());
    println!("\n{label}");
    println!(
        "{:>6} {:>12} {:>12} {:>14} {:>10}",
        "second", "commits", "pinned MiB", "pages in mem", "live snaps"
    );
    let started = Instant::now();
    let writers = spawn_writers(db, keys, &state);
    let mut peak_pinned_bytes = 0;
    let mut last_pinned_bytes = 0;
    for second in 1..=secs {
        let due = started + Duration::from_secs(second);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let metrics = db.metrics();
        peak_pinned_bytes = peak_pinned_bytes.max(metrics.pinned_version_bytes);
        last_pinned_bytes = metrics.pinned_version_bytes;
        println!(
            "{second:>6} {:>12} {:>12.1} {:>14} {:>10}",
            state.committed.load(Ordering::Relaxed),
            metrics.pinned_version_bytes as f64 / MIB,
            metrics.pages_in_memory,
            metrics.live_snapshots
        );
    }
    let report = RunReport {
        commits: state.committed.load(Ordering::Relaxed),
        conflicts: state.conflicts.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        peak_pinned_bytes,
        last_pinned_bytes,
    };
    (report, state, writers)
}

/// Samples the pinned bytes until they are at most `target_bytes`; returns
/// how long that took, or `None` after `DRAIN_TIMEOUT_MS`.
fn time_to_drain(db: &Database, target_bytes: u64) -> Option<Duration> {
    let started = Instant::now();
    let mut next_print = Duration::ZERO;
    loop {
        let elapsed = started.elapsed();
        let metrics = db.metrics();
        let drained = metrics.pinned_version_bytes <= target_bytes;
        if elapsed >= next_print || drained {
            println!(
                "  +{:>6} ms: pinned {:>8.2} MiB, pages in memory {}",
                elapsed.as_millis(),
                metrics.pinned_version_bytes as f64 / MIB,
                metrics.pages_in_memory
            );
            next_print += Duration::from_millis(DRAIN_PRINT_MS);
        }
        if drained {
            return Some(elapsed);
        }
        if elapsed >= Duration::from_millis(DRAIN_TIMEOUT_MS) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(DRAIN_SAMPLE_MS));
    }
}

fn main() {
    let secs = run_secs();
    let keys = Arc::new(generate_keys());
    println!(
        "long reader: {ENTRY_COUNT} entries ({KEY_BYTES} B keys, {VALUE_BYTES} B values), {WRITER_COUNT} writers, \
         {UPDATES_PER_TX} random updates per transaction, Eventual {{ flush_interval_ms: {FLUSH_INTERVAL_MS} }}, {secs} s per run"
    );

    // Run 1: no reader.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_loaded(dir.path(), &keys);
    let (baseline, state, writers) =
        run_writers(&db, &keys, secs, "run 1: writers alone (no reader)");
    stop_writers(&state, writers);
    drop(db);
    drop(dir);

    // Run 2: a reader holds the snapshot of the loaded table throughout.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_loaded(dir.path(), &keys);
    let reader = db.begin_read().expect("begin read");
    let probe = ReaderProbe::take(&reader, &keys);
    let (with_reader, state, writers) = run_writers(
        &db,
        &keys,
        secs,
        "run 2: writers with a long reader (snapshot of the loaded table)",
    );
    let scan_time = probe.verify(&reader, &keys);
    println!(
        "the reader's snapshot ({}) is unchanged; a full scan of it took {:.1} ms",
        reader.snapshot_epoch(),
        scan_time.as_secs_f64() * 1e3
    );
    // The no-reader run's steady level, with a floor for sampling noise.
    let target_bytes = (2 * baseline.peak_pinned_bytes).max(1 << 20);
    println!(
        "\ndropping the reader with the writers still running; waiting for pinned bytes <= {:.2} MiB \
         (2x the no-reader peak, at least 1 MiB)",
        target_bytes as f64 / MIB
    );
    drop(reader);
    let drained = time_to_drain(&db, target_bytes);
    stop_writers(&state, writers);
    std::thread::sleep(Duration::from_secs(1));
    let idle = db.metrics();

    println!("\nsummary ({secs} s per run)");
    for (name, report) in [("no reader", &baseline), ("long reader", &with_reader)] {
        println!(
            "  {name:<12} {:>9} commits, {:>8.0} commits/s, {:>5} conflicts, pinned peak {:>8.1} MiB, at end {:>8.1} MiB",
            report.commits,
            report.commits_per_sec(),
            report.conflicts,
            report.peak_pinned_bytes as f64 / MIB,
            report.last_pinned_bytes as f64 / MIB
        );
    }
    println!(
        "  writer throughput with the reader: {:.2}x the no-reader run",
        with_reader.commits_per_sec() / baseline.commits_per_sec()
    );
    match drained {
        Some(took) => println!(
            "  pinned bytes back to the no-reader level {:.0} ms after the reader ended",
            took.as_secs_f64() * 1e3
        ),
        None => {
            println!("  pinned bytes NOT back to the no-reader level within {DRAIN_TIMEOUT_MS} ms")
        }
    }
    println!(
        "  writers stopped, 1 s later: pinned {:.3} MiB, pages in memory {}, live snapshots {}",
        idle.pinned_version_bytes as f64 / MIB,
        idle.pages_in_memory,
        idle.live_snapshots
    );
}
