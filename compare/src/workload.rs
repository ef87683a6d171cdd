//! The workload of the public redb benchmark (`benches/lmdb_benchmark.rs`),
//! rebuilt for this comparison: the data set ([`Dataset`]), the phases
//! ([`Phase`]) and the driver that runs them against one engine
//! ([`run_workload`]), checking every answer outside the timed part.
//!
//! Phases, in order: bulk load of `entries` random pairs in one transaction;
//! `individual_writes` durable transactions of one insert each;
//! `batch_txs` transactions of `batch_len` inserts; `len()`; `entries` point
//! reads of loaded keys in shuffled order; `entries / 2` range reads of
//! [`RANGE_LEN`] entries from shuffled loaded keys; `entries` point reads
//! split over `read_threads` threads; removal of half the loaded keys in
//! `removal_txs` transactions; the file size; the engine's compaction step;
//! the file size again.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{value_digest, BenchEngine, ScanSummary};
use crate::error::{Error, Result};

/// Length of every key.
pub const KEY_BYTES: usize = 24;
/// Length of every value.
pub const VALUE_BYTES: usize = 150;
/// Entries read by one range read.
pub const RANGE_LEN: usize = 10;
/// Seed of the data generator: every run and every engine sees the same data.
pub const SEED: u64 = 0x6d6d_7362_636d_7072;

/// How big each phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// Entries of the bulk load (the redb benchmark's `ELEMENTS`).
    pub entries: usize,
    /// Durable transactions of one insert each.
    pub individual_writes: usize,
    /// Transactions of the batch-write phase.
    pub batch_txs: usize,
    /// Inserts per batch transaction.
    pub batch_len: usize,
    /// Threads of the multi-threaded read phase.
    pub read_threads: usize,
    /// Transactions the removal of half the loaded keys is split into.
    pub removal_txs: usize,
}

/// Smallest bulk load accepted (range reads need room).
pub const MIN_ENTRIES: usize = 4 * RANGE_LEN;

impl WorkloadConfig {
    /// The brief's sizes around a bulk load of `entries`: 1 000 individual
    /// writes, 100 × 1 000 batch writes, 2 reader threads, removals in one
    /// transaction.
    pub fn with_entries(entries: usize) -> WorkloadConfig {
        WorkloadConfig {
            entries,
            individual_writes: 1_000,
            batch_txs: 100,
            batch_len: 1_000,
            read_threads: 2,
            removal_txs: 1,
        }
    }

    /// Rejects sizes the phases cannot run with.
    pub fn validate(&self) -> Result<()> {
        if self.entries < MIN_ENTRIES {
            return Err(Error::Config(format!(
                "entries must be at least {MIN_ENTRIES}, got {}",
                self.entries
            )));
        }
        if self.read_threads == 0 || self.removal_txs == 0 {
            return Err(Error::Config(
                "read_threads and removal_txs must be at least 1".into(),
            ));
        }
        if self.total_entries() > u32::MAX as usize {
            return Err(Error::Config("too many entries for u32 indices".into()));
        }
        Ok(())
    }

    /// Entries present after all write phases.
    pub fn total_entries(&self) -> usize {
        self.entries + self.individual_writes + self.batch_txs * self.batch_len
    }

    /// Keys removed by the removal phase.
    pub fn removals(&self) -> usize {
        self.entries / 2
    }

    /// Range reads of the range phase.
    pub fn range_reads(&self) -> usize {
        self.entries / 2
    }
}

/// One row of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// All `entries` inserts in one durable transaction.
    BulkLoad,
    /// One insert per durable transaction.
    IndividualWrites,
    /// `batch_len` inserts per durable transaction.
    BatchWrites,
    /// `len()` in a fresh read transaction.
    Len,
    /// Point reads of loaded keys, shuffled.
    RandomReads,
    /// Range reads of `RANGE_LEN` entries.
    RangeReads,
    /// Point reads split over several threads.
    ThreadedReads,
    /// Removal of half the loaded keys.
    Removals,
    /// Bytes of every file of the engine after the removals.
    SizeAfterRemovals,
    /// Time of the engine's compaction step (each engine does a different
    /// thing, so this row is not ranked).
    CompactionStep,
    /// Bytes of every file after the compaction step.
    SizeAfterCompaction,
}

/// What a phase measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Wall time in milliseconds.
    Millis(f64),
    /// Bytes on disk: apparent (`st_size`) and allocated (`st_blocks`).
    Bytes {
        /// Sum of file lengths.
        apparent: u64,
        /// Sum of allocated blocks × 512.
        allocated: u64,
    },
}

impl Measure {
    /// The number rows are ranked by: milliseconds or apparent bytes.
    pub fn rank_value(&self) -> f64 {
        match *self {
            Measure::Millis(ms) => ms,
            Measure::Bytes { apparent, .. } => apparent as f64,
        }
    }
}

impl Phase {
    /// Every phase, in table row order.
    pub const ALL: [Phase; 11] = [
        Phase::BulkLoad,
        Phase::IndividualWrites,
        Phase::BatchWrites,
        Phase::Len,
        Phase::RandomReads,
        Phase::RangeReads,
        Phase::ThreadedReads,
        Phase::Removals,
        Phase::SizeAfterRemovals,
        Phase::CompactionStep,
        Phase::SizeAfterCompaction,
    ];

    /// Row label, with the sizes of `cfg`.
    pub fn label(self, cfg: &WorkloadConfig) -> String {
        let n = cfg.entries;
        match self {
            Phase::BulkLoad => format!("bulk load ({} entries, 1 tx)", thousands(n)),
            Phase::IndividualWrites => format!(
                "individual writes ({} tx × 1)",
                thousands(cfg.individual_writes)
            ),
            Phase::BatchWrites => format!(
                "batch writes ({} tx × {})",
                thousands(cfg.batch_txs),
                thousands(cfg.batch_len)
            ),
            Phase::Len => "len()".into(),
            Phase::RandomReads => format!("random reads ({})", thousands(n)),
            Phase::RangeReads => format!(
                "range reads ({} × {RANGE_LEN} entries)",
                thousands(cfg.range_reads())
            ),
            Phase::ThreadedReads => format!(
                "random reads, {} threads ({} total)",
                cfg.read_threads,
                thousands(n)
            ),
            Phase::Removals => format!(
                "removals ({} keys, {} tx)",
                thousands(cfg.removals()),
                cfg.removal_txs
            ),
            Phase::SizeAfterRemovals => "file size after removals".into(),
            Phase::CompactionStep => "compaction step (not ranked)".into(),
            Phase::SizeAfterCompaction => "file size after compaction step".into(),
        }
    }

    /// Short label for the chart.
    pub fn short_label(self) -> &'static str {
        match self {
            Phase::BulkLoad => "bulk load",
            Phase::IndividualWrites => "individual writes",
            Phase::BatchWrites => "batch writes",
            Phase::Len => "len()",
            Phase::RandomReads => "random reads",
            Phase::RangeReads => "range reads",
            Phase::ThreadedReads => "2-thread reads",
            Phase::Removals => "removals",
            Phase::SizeAfterRemovals => "size after removals",
            Phase::CompactionStep => "compaction step",
            Phase::SizeAfterCompaction => "size after compaction",
        }
    }

    /// Whether the row takes part in "fastest / smallest per row".
    pub fn ranked(self) -> bool {
        self != Phase::CompactionStep
    }

    /// Whether the row is a time (as opposed to a size).
    pub fn is_time(self) -> bool {
        !matches!(self, Phase::SizeAfterRemovals | Phase::SizeAfterCompaction)
    }
}

/// `1234567` → `"1,234,567"`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// One measured row of one engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Which row.
    pub phase: Phase,
    /// What it measured.
    pub measure: Measure,
    /// The engine's own counters over the phase ([`BenchEngine::stats`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

/// The keys and values of a run, the orders they are visited in, and the
/// answers every engine must give.
pub struct Dataset {
    cfg: WorkloadConfig,
    keys: Vec<[u8; KEY_BYTES]>,
    values: Vec<[u8; VALUE_BYTES]>,
    /// Shuffled permutation of the loaded keys `0..entries`: random reads.
    lookup_order: Vec<u32>,
    /// Another shuffled permutation of `0..entries`, cut into one slice per
    /// reader thread.
    thread_order: Vec<u32>,
    /// `entries / 2` shuffled loaded keys: range read starts.
    range_starts: Vec<u32>,
    lookup_digest: u64,
    thread_digests: Vec<u64>,
    range_expected: ScanSummary,
}

impl Dataset {
    /// Generates the data of `cfg` from [`SEED`]; fails if two random keys
    /// collide (then `len()` could not be checked).
    pub fn generate(cfg: WorkloadConfig) -> Result<Dataset> {
        cfg.validate()?;
        let total = cfg.total_entries();
        let mut rng = fastrand::Rng::with_seed(SEED);
        let mut keys = vec![[0u8; KEY_BYTES]; total];
        let mut values = vec![[0u8; VALUE_BYTES]; total];
        for (key, value) in keys.iter_mut().zip(values.iter_mut()) {
            rng.fill(key);
            rng.fill(value);
        }
        let mut lookup_order: Vec<u32> = (0..cfg.entries as u32).collect();
        rng.shuffle(&mut lookup_order);
        let mut thread_order = lookup_order.clone();
        rng.shuffle(&mut thread_order);
        let mut range_starts = lookup_order.clone();
        rng.shuffle(&mut range_starts);
        range_starts.truncate(cfg.range_reads());

        let mut data = Dataset {
            cfg,
            keys,
            values,
            lookup_order,
            thread_order,
            range_starts,
            lookup_digest: 0,
            thread_digests: Vec::new(),
            range_expected: ScanSummary::default(),
        };
        data.compute_expectations()?;
        Ok(data)
    }

    fn compute_expectations(&mut self) -> Result<()> {
        self.lookup_digest = self.digest_of(&self.lookup_order);
        self.thread_digests = (0..self.cfg.read_threads)
            .map(|t| self.digest_of(self.thread_slice(t)))
            .collect();
        let mut sorted: Vec<u32> = (0..self.keys.len() as u32).collect();
        sorted.sort_unstable_by(|&a, &b| self.key(a).cmp(self.key(b)));
        if sorted.windows(2).any(|w| self.key(w[0]) == self.key(w[1])) {
            return Err(Error::Config(
                "two random keys collided; change the seed".into(),
            ));
        }
        let mut rank = vec![0u32; sorted.len()];
        for (pos, &index) in sorted.iter().enumerate() {
            rank[index as usize] = pos as u32;
        }
        let mut expected = ScanSummary::default();
        for &start in &self.range_starts {
            let pos = rank[start as usize] as usize;
            for &index in sorted.iter().skip(pos).take(RANGE_LEN) {
                expected.add(self.key(index), self.value(index));
            }
        }
        self.range_expected = expected;
        Ok(())
    }

    fn digest_of(&self, order: &[u32]) -> u64 {
        order.iter().fold(0u64, |sum, &i| {
            sum.wrapping_add(value_digest(self.value(i)))
        })
    }

    /// The sizes this data was generated for.
    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    fn key(&self, index: u32) -> &[u8] {
        &self.keys[index as usize]
    }

    fn value(&self, index: u32) -> &[u8] {
        &self.values[index as usize]
    }

    /// The keys (with values) of the bulk load.
    fn bulk(&self) -> std::ops::Range<usize> {
        0..self.cfg.entries
    }

    /// The entries of individual write `n`.
    fn individual(&self, n: usize) -> usize {
        self.cfg.entries + n
    }

    /// The entries of batch transaction `n`.
    fn batch(&self, n: usize) -> std::ops::Range<usize> {
        let start = self.cfg.entries + self.cfg.individual_writes + n * self.cfg.batch_len;
        start..start + self.cfg.batch_len
    }

    /// The lookups of reader thread `t`.
    fn thread_slice(&self, t: usize) -> &[u32] {
        let chunk = self.thread_order.len() / self.cfg.read_threads;
        let start = t * chunk;
        let end = if t + 1 == self.cfg.read_threads {
            self.thread_order.len()
        } else {
            start + chunk
        };
        &self.thread_order[start..end]
    }

    /// The keys of removal transaction `n`.
    fn removal_chunk(&self, n: usize) -> std::ops::Range<usize> {
        let removals = self.cfg.removals();
        let per_tx = removals.div_ceil(self.cfg.removal_txs);
        let start = (n * per_tx).min(removals);
        start..((n + 1) * per_tx).min(removals)
    }
}

/// Runs `body` and returns its value and its wall time.
fn timed<T>(body: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
    let start = Instant::now();
    let value = body()?;
    Ok((value, start.elapsed()))
}

fn millis(elapsed: Duration) -> Measure {
    Measure::Millis(elapsed.as_secs_f64() * 1e3)
}

/// Sums the sizes of every file under `dir` (recursively).
pub fn disk_usage(dir: &Path) -> Result<Measure> {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0u64;
    let mut allocated = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(Error::io(format!("listing {}", current.display())))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", current.display())))?;
            let meta = entry
                .metadata()
                .map_err(Error::io(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    Ok(Measure::Bytes {
        apparent,
        allocated,
    })
}

/// Compares what an engine returned with what it should have.
fn check(engine: &'static str, phase: Phase, what: &str, got: u64, want: u64) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::Mismatch {
        engine,
        phase: phase.short_label(),
        detail: format!("{what}: got {got}, expected {want}"),
    })
}

/// Runs every phase against `engine`, whose files all live under `dir`;
/// calls `progress` after each phase. Returns the rows in [`Phase::ALL`]
/// order and the description of the engine's compaction step.
pub fn run_workload(
    engine: &mut dyn BenchEngine,
    data: &Dataset,
    dir: &Path,
    progress: &mut dyn FnMut(&PhaseResult),
) -> Result<(Vec<PhaseResult>, &'static str)> {
    let cfg = data.cfg;
    let name = engine.name();
    let mut results = Vec::with_capacity(Phase::ALL.len());
    let mut record = |phase: Phase, measure: Measure, stats: Option<String>| {
        let result = PhaseResult {
            phase,
            measure,
            stats,
        };
        progress(&result);
        results.push(result);
    };

    let ((), t) = timed(|| bulk_load(engine, data))?;
    record(Phase::BulkLoad, millis(t), engine.stats());

    let ((), t) = timed(|| {
        for n in 0..cfg.individual_writes {
            let i = data.individual(n);
            engine.write(&mut |w| w.insert(&data.keys[i], &data.values[i]))?;
        }
        Ok(())
    })?;
    record(Phase::IndividualWrites, millis(t), engine.stats());

    let ((), t) = timed(|| batch_writes(engine, data))?;
    record(Phase::BatchWrites, millis(t), engine.stats());

    let (len, t) = timed(|| {
        let mut len = 0;
        engine.read(&mut |r| {
            len = r.entry_count()?;
            Ok(())
        })?;
        Ok(len)
    })?;
    check(name, Phase::Len, "len", len, cfg.total_entries() as u64)?;
    record(Phase::Len, millis(t), engine.stats());

    let ((digest, missing), t) = timed(|| read_keys(engine, data, &data.lookup_order))?;
    check(name, Phase::RandomReads, "keys missing", missing, 0)?;
    check(
        name,
        Phase::RandomReads,
        "value digest",
        digest,
        data.lookup_digest,
    )?;
    record(Phase::RandomReads, millis(t), engine.stats());

    let (summary, t) = timed(|| {
        let mut total = ScanSummary::default();
        engine.read(&mut |r| {
            for &start in &data.range_starts {
                total.merge(r.scan(data.key(start), RANGE_LEN)?);
            }
            Ok(())
        })?;
        Ok(total)
    })?;
    let want = data.range_expected;
    check(
        name,
        Phase::RangeReads,
        "entries",
        summary.entries,
        want.entries,
    )?;
    check(
        name,
        Phase::RangeReads,
        "entry digest",
        summary.digest,
        want.digest,
    )?;
    record(Phase::RangeReads, millis(t), engine.stats());

    let (per_thread, t) = timed(|| threaded_reads(&*engine, data))?;
    for (t, (digest, missing)) in per_thread.into_iter().enumerate() {
        check(name, Phase::ThreadedReads, "keys missing", missing, 0)?;
        check(
            name,
            Phase::ThreadedReads,
            "value digest",
            digest,
            data.thread_digests[t],
        )?;
    }
    record(Phase::ThreadedReads, millis(t), engine.stats());

    let ((), t) = timed(|| {
        for n in 0..cfg.removal_txs {
            engine.write(&mut |w| {
                for i in data.removal_chunk(n) {
                    w.remove(&data.keys[i])?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    record(Phase::Removals, millis(t), engine.stats());
    check_after_removals(engine, data)?;

    record(Phase::SizeAfterRemovals, disk_usage(dir)?, engine.stats());
    let (what, t) = timed(|| engine.compact())?;
    record(Phase::CompactionStep, millis(t), engine.stats());
    record(Phase::SizeAfterCompaction, disk_usage(dir)?, engine.stats());
    Ok((results, what))
}

/// The bulk load: every entry of `data.bulk()` in one write transaction.
fn bulk_load(engine: &dyn BenchEngine, data: &Dataset) -> Result<()> {
    engine.write(&mut |w| {
        for i in data.bulk() {
            w.insert(&data.keys[i], &data.values[i])?;
        }
        Ok(())
    })
}

/// The batch writes: `batch_txs` write transactions of `batch_len` inserts.
fn batch_writes(engine: &dyn BenchEngine, data: &Dataset) -> Result<()> {
    for n in 0..data.cfg.batch_txs {
        engine.write(&mut |w| {
            for i in data.batch(n) {
                w.insert(&data.keys[i], &data.values[i])?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Point reads of `order` in one read transaction: (digest sum, missing).
fn read_keys(engine: &dyn BenchEngine, data: &Dataset, order: &[u32]) -> Result<(u64, u64)> {
    let mut digest = 0u64;
    let mut missing = 0u64;
    engine.read(&mut |r| {
        for &i in order {
            match r.get(data.key(i))? {
                Some(d) => digest = digest.wrapping_add(d),
                None => missing += 1,
            }
        }
        Ok(())
    })?;
    Ok((digest, missing))
}

/// Every thread reads its slice of the thread order in its own read
/// transaction; returns each thread's (digest sum, missing).
fn threaded_reads(engine: &dyn BenchEngine, data: &Dataset) -> Result<Vec<(u64, u64)>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..data.cfg.read_threads)
            .map(|t| scope.spawn(move || read_keys(engine, data, data.thread_slice(t))))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| Error::Config("a reader thread panicked".into()))?
            })
            .collect()
    })
}

/// After the removals: the count dropped by exactly the removed keys, a
/// removed key is gone and a kept key is still there.
fn check_after_removals(engine: &dyn BenchEngine, data: &Dataset) -> Result<()> {
    let name = engine.name();
    let cfg = data.cfg;
    let removed = data.key(0);
    let kept = data.key(cfg.entries as u32 - 1);
    let mut state = (0u64, None, None);
    engine.read(&mut |r| {
        state = (r.entry_count()?, r.get(removed)?, r.get(kept)?);
        Ok(())
    })?;
    let (len, removed_value, kept_value) = state;
    let want_len = (cfg.total_entries() - cfg.removals()) as u64;
    check(name, Phase::Removals, "len after removals", len, want_len)?;
    check(
        name,
        Phase::Removals,
        "removed key still present",
        u64::from(removed_value.is_some()),
        0,
    )?;
    let kept_digest = value_digest(data.value(cfg.entries as u32 - 1));
    check(
        name,
        Phase::Removals,
        "kept key digest",
        kept_value.unwrap_or(0),
        kept_digest,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadConfig {
        WorkloadConfig {
            entries: 200,
            individual_writes: 5,
            batch_txs: 3,
            batch_len: 7,
            read_threads: 2,
            removal_txs: 3,
        }
    }

    #[test]
    fn dataset_is_deterministic() -> Result<()> {
        let a = Dataset::generate(small())?;
        let b = Dataset::generate(small())?;
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.values, b.values);
        assert_eq!(a.lookup_order, b.lookup_order);
        assert_eq!(a.range_expected, b.range_expected);
        Ok(())
    }

    #[test]
    fn orders_are_permutations_of_the_loaded_keys() -> Result<()> {
        let data = Dataset::generate(small())?;
        let mut lookup = data.lookup_order.clone();
        lookup.sort_unstable();
        assert_eq!(lookup, (0..200).collect::<Vec<u32>>());
        let joined: Vec<u32> = (0..2).flat_map(|t| data.thread_slice(t).to_vec()).collect();
        assert_eq!(joined, data.thread_order);
        assert_eq!(data.range_starts.len(), 100);
        assert!(data.range_starts.iter().all(|&i| i < 200));
        Ok(())
    }

    #[test]
    fn partitions_cover_their_phases_exactly() -> Result<()> {
        let data = Dataset::generate(small())?;
        assert_eq!(data.individual(0), 200);
        assert_eq!(data.batch(0), 205..212);
        assert_eq!(data.batch(2).end, data.cfg.total_entries());
        let removed: Vec<usize> = (0..3).flat_map(|n| data.removal_chunk(n)).collect();
        assert_eq!(removed, (0..100).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn range_expectation_counts_entries_past_the_end() -> Result<()> {
        let data = Dataset::generate(small())?;
        // Every start reads RANGE_LEN entries unless it is among the last
        // RANGE_LEN - 1 keys in key order.
        let total = data.cfg.total_entries() as u64;
        let want_max = data.range_starts.len() as u64 * RANGE_LEN as u64;
        assert!(data.range_expected.entries <= want_max);
        assert!(data.range_expected.entries >= want_max - (RANGE_LEN as u64).pow(2));
        assert!(total > 0);
        Ok(())
    }

    /// An in-memory model engine; `drop_every` > 0 makes it lose every
    /// `drop_every`-th insert, to show that the workload's checks catch it.
    struct ModelEngine {
        map: std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
        inserts: std::sync::atomic::AtomicUsize,
        drop_every: usize,
    }

    impl ModelEngine {
        fn new(drop_every: usize) -> Self {
            ModelEngine {
                map: Default::default(),
                inserts: Default::default(),
                drop_every,
            }
        }

        fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
            self.map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl crate::engine::KvWriter for &ModelEngine {
        fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
            let n = self
                .inserts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if self.drop_every == 0 || !n.is_multiple_of(self.drop_every) {
                self.map().insert(key.to_vec(), value.to_vec());
            }
            Ok(())
        }

        fn remove(&mut self, key: &[u8]) -> Result<()> {
            self.map().remove(key);
            Ok(())
        }
    }

    impl crate::engine::KvReader for &ModelEngine {
        fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
            Ok(self.map().get(key).map(|v| value_digest(v)))
        }

        fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
            let mut summary = ScanSummary::default();
            for (k, v) in self.map().range(start.to_vec()..).take(limit) {
                summary.add(k, v);
            }
            Ok(summary)
        }

        fn entry_count(&mut self) -> Result<u64> {
            Ok(self.map().len() as u64)
        }
    }

    impl BenchEngine for ModelEngine {
        fn name(&self) -> &'static str {
            "model"
        }

        fn write(
            &self,
            body: &mut dyn FnMut(&mut dyn crate::engine::KvWriter) -> Result<()>,
        ) -> Result<()> {
            body(&mut &*self)
        }

        fn read(
            &self,
            body: &mut dyn FnMut(&mut dyn crate::engine::KvReader) -> Result<()>,
        ) -> Result<()> {
            body(&mut &*self)
        }

        fn compact(&mut self) -> Result<&'static str> {
            Ok("nothing")
        }
    }

    #[test]
    fn a_correct_engine_passes_every_check() -> Result<()> {
        let data = Dataset::generate(small())?;
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let mut engine = ModelEngine::new(0);
        let (results, _) = run_workload(&mut engine, &data, dir.path(), &mut |_| {})?;
        assert_eq!(results.len(), Phase::ALL.len());
        assert_eq!(
            engine.map().len(),
            data.cfg.total_entries() - data.cfg.removals()
        );
        Ok(())
    }

    #[test]
    fn an_engine_that_loses_writes_is_caught() -> Result<()> {
        let data = Dataset::generate(small())?;
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let mut engine = ModelEngine::new(97);
        match run_workload(&mut engine, &data, dir.path(), &mut |_| {}) {
            Err(Error::Mismatch { phase, .. }) => assert_eq!(phase, "len()"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn validate_rejects_unusable_sizes() {
        assert!(WorkloadConfig::with_entries(10).validate().is_err());
        let mut cfg = WorkloadConfig::with_entries(1_000);
        assert!(cfg.validate().is_ok());
        cfg.read_threads = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

/// What [`probe_reads`] measured: the time of each round of point reads.
#[derive(Debug, Clone)]
pub struct ReadProbe {
    /// Point reads per round.
    pub reads_per_round: usize,
    /// Wall time of each round, in the order run.
    pub rounds: Vec<Duration>,
    /// Wall time of the bulk load that built the tree.
    pub bulk_load: Duration,
}

impl ReadProbe {
    /// Nanoseconds per read of the round at quantile `q` (0 = fastest).
    pub fn ns_per_read(&self, q: f64) -> f64 {
        let mut sorted = self.rounds.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return f64::NAN;
        };
        let at = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        sorted[at].as_secs_f64() * 1e9 / self.reads_per_round.max(1) as f64
    }
}

/// Diagnosis, not a ranked phase: bulk-loads `data` and runs its batch
/// writes (the tree of the comparison's read phases), then `rounds` rounds
/// of `reads_per_round` point reads of loaded keys in shuffled order, each
/// round in its own read transaction and timed alone. On a machine shared
/// with other work the fastest rounds are the ones nothing interrupted, so
/// their times compare engines (or builds) where whole-phase times cannot.
pub fn probe_reads(
    engine: &dyn BenchEngine,
    data: &Dataset,
    rounds: usize,
    reads_per_round: usize,
) -> Result<ReadProbe> {
    let ((), bulk_load) = timed(|| bulk_load(engine, data))?;
    batch_writes(engine, data)?;
    let order = &data.lookup_order;
    let per_round = reads_per_round.clamp(1, order.len().max(1));
    let mut probe = ReadProbe {
        reads_per_round: per_round,
        rounds: Vec::with_capacity(rounds),
        bulk_load,
    };
    for round in 0..rounds {
        let start = (round * per_round) % order.len().max(1);
        let slice = &order[start..(start + per_round).min(order.len())];
        let ((_, missing), t) = timed(|| read_keys(engine, data, slice))?;
        check(
            engine.name(),
            Phase::RandomReads,
            "keys missing",
            missing,
            0,
        )?;
        probe.rounds.push(t);
    }
    Ok(probe)
}
