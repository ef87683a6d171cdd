//! Memory pressure with concurrent readers, writers and one long-lived
//! snapshot. The snapshot pins the version of every page it may read, so the
//! writers' changes pile up as delta chains that eviction cannot drop; the
//! budget fills and commits meet back-pressure. What must hold:
//! - no crash, and no error but the documented ones: back-pressure
//!   (`Error::MemoryBudgetExceeded`, after `backpressure_max_wait_ms`) and
//!   serialization conflicts (`Error::Conflict`, retryable);
//! - the engine's accounting never passes the budget;
//! - the long snapshot reads exactly what was there when it began, every
//!   fresh reader sees a state between the commits before it began and
//!   those issued when it read, and the final state matches the commits
//!   that returned Ok;
//! - once the snapshot ends, writes go through again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use mmsb::{Database, Error, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;
const BUDGET_BYTES: u64 = 4 * MIB;
/// Short, so that a refused commit does not hold the test up long.
const BACKPRESSURE_MAX_WAIT_MS: u64 = 100;
const ENTRY_COUNT: u64 = 12_000;
const VALUE_BYTES: usize = 300;
const LOAD_BATCH: u64 = 1000;
const WRITERS: u64 = 2;
const READERS: usize = 2;
/// Transactions a writer tries while the snapshot lives, at most...
const WRITER_TXS: usize = 400;
/// ...stopping early after this many back-pressure refusals.
const REFUSALS_TO_STOP: usize = 4;
const UPDATES_PER_TX: usize = 8;
/// Commits each writer must get through after the snapshot ends.
const COMMITS_AFTER_SNAPSHOT: usize = 10;
/// Tries each of those commits gets (back-pressure may still refuse a few
/// while the pinned versions fold away and the pages are written back).
const TRIES_AFTER_SNAPSHOT: usize = 50;
const TABLE: &str = "t";

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The value of `index` at `version`: the version in its first 4 bytes,
/// then bytes derived from both, so a reader can check it on its own.
fn value(index: u64, version: u32) -> Vec<u8> {
    let mut bytes = version.to_le_bytes().to_vec();
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(version);
    bytes.extend((4..VALUE_BYTES).map(|_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 56) as u8
    }));
    bytes
}

/// The version a stored value claims, checked against the whole value.
fn version_of(index: u64, stored: &[u8]) -> u32 {
    let version = u32::from_le_bytes(stored[..4].try_into().expect("4 bytes"));
    assert_eq!(
        stored,
        &value(index, version)[..],
        "entry {index} is damaged"
    );
    version
}

/// Per key: the newest version whose commit returned Ok, and the newest
/// version any commit was issued with.
struct Versions {
    committed: Vec<AtomicU32>,
    issued: Vec<AtomicU32>,
}

impl Versions {
    fn new() -> Self {
        let zeros = || (0..ENTRY_COUNT).map(|_| AtomicU32::new(0)).collect();
        Versions {
            committed: zeros(),
            issued: zeros(),
        }
    }
}

#[derive(Default, Debug)]
struct WriterOutcome {
    commits: usize,
    refusals: usize,
    conflicts: usize,
}

/// One transaction of updates to keys of this writer (`index % WRITERS`).
fn update_once(
    db: &Database,
    versions: &Versions,
    writer: u64,
    rng: &mut StdRng,
) -> Result<(), Error> {
    let mut tx = db.begin_write()?;
    let mut table = tx.open_table(TABLE)?;
    let mut changed = Vec::new();
    for _ in 0..UPDATES_PER_TX {
        let index = rng.gen_range(0..ENTRY_COUNT / WRITERS) * WRITERS + writer;
        let slot = index as usize;
        let version = versions.issued[slot].load(Ordering::SeqCst) + 1;
        versions.issued[slot].store(version, Ordering::SeqCst);
        table.insert(&key(index), &value(index, version))?;
        changed.push((slot, version));
    }
    drop(table);
    tx.commit()?;
    for (slot, version) in changed {
        versions.committed[slot].store(version, Ordering::SeqCst);
    }
    Ok(())
}

/// Counts a documented refusal; anything else fails the test.
fn tally(outcome: &mut WriterOutcome, result: Result<(), Error>) -> bool {
    match result {
        Ok(()) => {
            outcome.commits += 1;
            true
        }
        Err(Error::MemoryBudgetExceeded { .. }) => {
            outcome.refusals += 1;
            false
        }
        Err(err) if err.is_retryable() => {
            outcome.conflicts += 1;
            false
        }
        Err(err) => panic!("undocumented error under memory pressure: {err}"),
    }
}

fn fresh_reader(db: &Database, versions: &Versions, stop: &AtomicBool, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reads = 0;
    while !stop.load(Ordering::SeqCst) {
        let indexes: Vec<u64> = (0..32).map(|_| rng.gen_range(0..ENTRY_COUNT)).collect();
        let floors: Vec<u32> = indexes
            .iter()
            .map(|&i| versions.committed[i as usize].load(Ordering::SeqCst))
            .collect();
        let rx = db.begin_read().expect("begin_read never fails");
        let table = rx.open_table(TABLE).expect("table");
        for (&index, &floor) in indexes.iter().zip(&floors) {
            let stored = table.get(&key(index)).expect("reads never fail");
            let version = version_of(index, &stored.expect("every key exists"));
            let ceiling = versions.issued[index as usize].load(Ordering::SeqCst);
            assert!(
                (floor..=ceiling).contains(&version),
                "entry {index}: version {version} outside {floor}..={ceiling}"
            );
            reads += 1;
        }
    }
    reads
}

#[test]
fn readers_writers_and_a_long_snapshot_under_memory_pressure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options {
        memory_budget_bytes: BUDGET_BYTES,
        backpressure_max_wait_ms: BACKPRESSURE_MAX_WAIT_MS,
        ..Options::default()
    }
    .open(dir.path().join("pressure.mmsb"))
    .expect("open");
    for start in (0..ENTRY_COUNT).step_by(LOAD_BATCH as usize) {
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table(TABLE).expect("table");
        for index in start..start + LOAD_BATCH {
            table.insert(&key(index), &value(index, 0)).expect("load");
        }
        drop(table);
        tx.commit().expect("load commit");
    }

    let versions = Arc::new(Versions::new());
    let stop_readers = Arc::new(AtomicBool::new(false));
    let snapshot_ended = Arc::new(AtomicBool::new(false));
    let pinned_phase_done = Arc::new(AtomicUsize::new(0));
    let long = db.begin_read().expect("long snapshot");

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (db, versions) = (db.clone(), Arc::clone(&versions));
            let (ended, done) = (Arc::clone(&snapshot_ended), Arc::clone(&pinned_phase_done));
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(writer);
                let mut outcome = WriterOutcome::default();
                for _ in 0..WRITER_TXS {
                    tally(&mut outcome, update_once(&db, &versions, writer, &mut rng));
                    if outcome.refusals >= REFUSALS_TO_STOP {
                        break;
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                while !ended.load(Ordering::SeqCst) {
                    thread::yield_now();
                }
                for _ in 0..COMMITS_AFTER_SNAPSHOT {
                    let went_through = (0..TRIES_AFTER_SNAPSHOT).any(|_| {
                        tally(&mut outcome, update_once(&db, &versions, writer, &mut rng))
                    });
                    assert!(went_through, "writes stay refused after the snapshot ended");
                }
                outcome
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (db, versions, stop) =
                (db.clone(), Arc::clone(&versions), Arc::clone(&stop_readers));
            thread::spawn(move || fresh_reader(&db, &versions, &stop, 100 + reader as u64))
        })
        .collect();

    // The long snapshot keeps reading while the writers run.
    let mut rng = StdRng::seed_from_u64(7);
    let table = long.open_table(TABLE).expect("table");
    let mut snapshot_reads = 0;
    while pinned_phase_done.load(Ordering::SeqCst) < WRITERS as usize {
        for _ in 0..64 {
            let index = rng.gen_range(0..ENTRY_COUNT);
            let stored = table.get(&key(index)).expect("snapshot reads never fail");
            assert_eq!(
                version_of(index, &stored.expect("every key exists")),
                0,
                "the snapshot saw a later commit"
            );
            snapshot_reads += 1;
        }
    }
    let pinned = db.metrics();
    drop(long);
    snapshot_ended.store(true, Ordering::SeqCst);

    let outcomes: Vec<WriterOutcome> = writers
        .into_iter()
        .map(|w| w.join().expect("writer panicked"))
        .collect();
    stop_readers.store(true, Ordering::SeqCst);
    let reads: usize = readers
        .into_iter()
        .map(|r| r.join().expect("reader panicked"))
        .sum();

    // The final state is exactly what the commits that returned Ok wrote.
    let rx = db.begin_read().expect("begin_read");
    let table = rx.open_table(TABLE).expect("table");
    for index in 0..ENTRY_COUNT {
        let stored = table
            .get(&key(index))
            .expect("get")
            .expect("every key exists");
        assert_eq!(
            version_of(index, &stored),
            versions.committed[index as usize].load(Ordering::SeqCst),
            "entry {index}"
        );
    }

    let metrics = db.metrics();
    println!(
        "writers {outcomes:?}; {reads} fresh reads, {snapshot_reads} snapshot reads; \
         while pinned: {:.2} MiB pinned, cache {:.2} MiB; peak cache {:.2} MiB of {:.2} MiB; \
         {} back-pressure waits ({:.1} ms), {} pages evicted",
        pinned.pinned_version_bytes as f64 / MIB as f64,
        pinned.cache_bytes as f64 / MIB as f64,
        metrics.peak_cache_bytes as f64 / MIB as f64,
        BUDGET_BYTES as f64 / MIB as f64,
        metrics.backpressure_waits,
        metrics.backpressure_wait_ns as f64 / 1e6,
        metrics.pages_evicted,
    );
    assert!(
        metrics.peak_cache_bytes <= BUDGET_BYTES,
        "accounting peaked at {} bytes",
        metrics.peak_cache_bytes
    );
    assert!(
        metrics.backpressure_waits > 0,
        "the workload never met back-pressure: {metrics:?}"
    );
    assert!(reads > 0 && snapshot_reads > 0);
}
