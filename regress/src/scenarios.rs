//! The measured scenarios: fixed, deterministic amounts of work on mmsb's key
//! paths, each behind one `#[no_mangle]` entry function that callgrind
//! toggles collection on (`--collect-atstart=no --toggle-collect=<symbol>`).
//!
//! A scenario is split in two: the setup (building pages, deltas, opening a
//! database on [`MemStorage`]) runs outside the entry function and is not
//! counted; the entry function does the measured work and returns a checksum
//! of what it computed, so nothing can be optimized away and a change in
//! behaviour shows as a changed checksum. Every entry checks its own result
//! against a reference (for example [`Delta::apply`]) and fails with
//! [`RegressError::WrongResult`] rather than count a wrong computation.
//!
//! Entry functions must not call each other or anything whose symbol equals
//! another entry's: callgrind flips collection on every entry and exit of a
//! toggle function, so a nested match would turn counting off. Each entry
//! ends with `black_box` on its result: it is then never compiled to a tail
//! jump (which callgrind would see as leaving the entry early), and no two
//! entries have identical bodies (which LLVM may fold into one address, one
//! symbol hiding the other).
//!
//! Gated scenarios run code whose instruction stream does not depend on the
//! CPU's SIMD extensions (the portable paths). Scenarios on runtime-dispatched
//! SIMD paths are informational: they differ between machines.

use std::hint::black_box;
use std::sync::Arc;

use mmsb_engine::merge::{ChainEntry, CpuMerge, MergeBackend, MergeBatch, MergePath};
use mmsb_engine::{Database, Options};
use mmsb_wal::codec::{CodecConfig, CodecMode};
use mmsb_wal::record::CommitRecord;
use mmsb_wal::storage::MemStorage;
use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId, TLog, TLogConfig};

use crate::error::{RegressError, Result};
use crate::workload::{random_page, row_key, row_value, sparse_edit, SplitMix64};

/// Page size of every scenario, bytes.
pub const PAGE_BYTES: usize = 4096;

/// Pages of the delta scenario.
const DELTA_PAGES: usize = 48;
/// Successive versions of each page in the delta scenario.
const DELTA_VERSIONS: usize = 8;
/// Edits between two versions of a page in the delta scenario.
const DELTA_EDITS: usize = 16;
/// Largest edit of the sparse workloads, bytes.
const MAX_EDIT_BYTES: usize = 8;

/// Deltas in the codec scenarios' commit record.
const CODEC_DELTAS: usize = 80;
/// Edits per delta in the codec scenarios.
const CODEC_EDITS: usize = 4;
/// Encode + decode rounds of the codec scenarios.
const CODEC_ROUNDS: usize = 20;

/// Pages in the merge scenarios' batch.
const MERGE_PAGES: usize = 128;
/// Deltas per page in the merge scenarios.
const MERGE_DELTAS_PER_PAGE: usize = 8;
/// Runs per delta in the merge scenarios.
const MERGE_RUNS_PER_DELTA: usize = 4;
/// Shortest and longest run of the merge scenarios, bytes.
const MERGE_RUN_BYTES: (usize, usize) = (16, 256);
/// Times the batch is merged.
const MERGE_ROUNDS: usize = 4;

/// Commits that insert fresh rows in the table scenario.
const TABLE_INSERT_COMMITS: u64 = 20;
/// Commits that update existing rows in the table scenario.
const TABLE_UPDATE_COMMITS: u64 = 5;
/// Rows inserted or updated per commit in the table scenario.
const TABLE_ROWS_PER_COMMIT: u64 = 50;

/// Commits appended in the TLog scenario.
const TLOG_COMMITS: usize = 200;
/// Deltas per commit in the TLog scenario.
const TLOG_DELTAS_PER_COMMIT: usize = 4;

/// One scenario: its name, whether the gate fails on its regression, and the
/// symbol of its entry function.
#[derive(Debug)]
pub struct Scenario {
    /// Name used on the command line and in the baseline.
    pub name: &'static str,
    /// Whether a regression of this scenario fails the gate (portable code
    /// only); otherwise it is reported for information.
    pub gated: bool,
    /// The unmangled symbol callgrind toggles collection on.
    pub entry_symbol: &'static str,
    /// One line on what the scenario does.
    pub about: &'static str,
    run: fn() -> Result<u64>,
}

impl Scenario {
    /// Runs the setup and the measured entry function; returns the entry's
    /// checksum.
    pub fn run(&self) -> Result<u64> {
        (self.run)()
    }
}

/// Every scenario, in the order the gate reports them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "delta_ops",
        gated: true,
        entry_symbol: "mmsb_regress_entry_delta_ops",
        about: "Delta::from_diff + apply + merge over 48 pages x 8 versions",
        run: run_delta_ops,
    },
    Scenario {
        name: "codec_adaptive",
        gated: true,
        entry_symbol: "mmsb_regress_entry_codec_adaptive",
        about: "CommitRecord encode + decode, adaptive codec, 80 sparse deltas x 20",
        run: run_codec_adaptive,
    },
    Scenario {
        name: "codec_rle",
        gated: true,
        entry_symbol: "mmsb_regress_entry_codec_rle",
        about: "CommitRecord encode + decode, RLE codec, 80 sparse deltas x 20",
        run: run_codec_rle,
    },
    Scenario {
        name: "merge_scalar",
        gated: true,
        entry_symbol: "mmsb_regress_entry_merge_scalar",
        about: "CpuMerge (scalar, 1 thread) of 128 pages x 8 deltas x 4 rounds",
        run: run_merge_scalar,
    },
    Scenario {
        name: "merge_best",
        gated: false,
        entry_symbol: "mmsb_regress_entry_merge_best",
        about: "the same merge on the best SIMD path this CPU has (informational)",
        run: run_merge_best,
    },
    Scenario {
        name: "table_btree",
        gated: true,
        entry_symbol: "mmsb_regress_entry_table_btree",
        about: "table API on MemStorage: 25 commits of 50 inserts/updates, 1000 gets, a scan",
        run: run_table_btree,
    },
    Scenario {
        name: "tlog_commit",
        gated: true,
        entry_symbol: "mmsb_regress_entry_tlog_commit",
        about: "200 x (encode record, TLog append, wait_durable) on MemStorage, then replay",
        run: run_tlog_commit,
    },
];

/// The scenario called `name`, if any.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

fn wrong(scenario: &'static str, reason: impl Into<String>) -> RegressError {
    RegressError::WrongResult {
        scenario,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------- delta_ops

/// Each page's successive versions, version 0 first.
struct PageVersions {
    id: PageId,
    versions: Vec<Vec<u8>>,
}

fn run_delta_ops() -> Result<u64> {
    let mut rng = SplitMix64::new(0xDE17A);
    let pages: Vec<PageVersions> = (0..DELTA_PAGES)
        .map(|index| {
            let mut versions = vec![random_page(&mut rng, PAGE_BYTES)];
            for _ in 0..DELTA_VERSIONS {
                let mut next = versions[versions.len() - 1].clone();
                sparse_edit(&mut rng, &mut next, DELTA_EDITS, MAX_EDIT_BYTES);
                versions.push(next);
            }
            PageVersions {
                id: PageId(index as u64 + 1),
                versions,
            }
        })
        .collect();
    mmsb_regress_entry_delta_ops(black_box(&pages))
}

/// Diffs each pair of successive versions, applies the deltas in turn and
/// merges them into one; both routes must reach the last version.
#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_delta_ops(pages: &[PageVersions]) -> Result<u64> {
    let mut checksum = 0u64;
    for page in pages {
        let first = &page.versions[0];
        let last = &page.versions[page.versions.len() - 1];
        let mut stepped = first.clone();
        let mut merged = Delta::new(page.id);
        for pair in page.versions.windows(2) {
            let delta = Delta::from_diff(page.id, &pair[0], &pair[1])?;
            delta.apply(&mut stepped)?;
            merged = merged.merge(&delta)?;
            checksum += (delta.run_count() + delta.changed_len()) as u64;
        }
        let mut folded = first.clone();
        merged.apply(&mut folded)?;
        if &stepped != last || &folded != last {
            return Err(wrong(
                "delta_ops",
                format!("{} did not reach its last version", page.id),
            ));
        }
        checksum = checksum.wrapping_mul(31) + merged.changed_len() as u64;
    }
    Ok(black_box(checksum))
}

// ------------------------------------------------------------------- codecs

/// A commit record of `CODEC_DELTAS` sparse deltas on distinct pages.
fn sparse_record(rng: &mut SplitMix64, deltas: usize, edits: usize) -> Result<CommitRecord> {
    let mut out = Vec::with_capacity(deltas);
    let mut page_id = 0u64;
    for _ in 0..deltas {
        page_id += rng.in_range(1, 4) as u64;
        let old = random_page(rng, PAGE_BYTES);
        let mut new = old.clone();
        sparse_edit(rng, &mut new, edits, MAX_EDIT_BYTES);
        out.push(Delta::from_diff(PageId(page_id), &old, &new)?);
    }
    Ok(CommitRecord::new(out))
}

fn run_codec_adaptive() -> Result<u64> {
    let record = sparse_record(&mut SplitMix64::new(0xC0DEC), CODEC_DELTAS, CODEC_EDITS)?;
    let config = CodecConfig::with_mode(CodecMode::Adaptive);
    mmsb_regress_entry_codec_adaptive(black_box(&record), &config)
}

fn run_codec_rle() -> Result<u64> {
    let record = sparse_record(&mut SplitMix64::new(0xC0DEC), CODEC_DELTAS, CODEC_EDITS)?;
    let config = CodecConfig::with_mode(CodecMode::Rle);
    mmsb_regress_entry_codec_rle(black_box(&record), &config)
}

#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_codec_adaptive(record: &CommitRecord, config: &CodecConfig) -> Result<u64> {
    black_box(encode_decode_rounds("codec_adaptive", record, config))
}

#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_codec_rle(record: &CommitRecord, config: &CodecConfig) -> Result<u64> {
    black_box(encode_decode_rounds("codec_rle", record, config))
}

/// Encodes and decodes `record` `CODEC_ROUNDS` times; the decoded record
/// must equal the original.
fn encode_decode_rounds(
    scenario: &'static str,
    record: &CommitRecord,
    config: &CodecConfig,
) -> Result<u64> {
    let mut encoded = Vec::new();
    let mut checksum = 0u64;
    for _ in 0..CODEC_ROUNDS {
        encoded.clear();
        let stats = record.encode(config, &mut encoded)?;
        let decoded = CommitRecord::decode(&encoded, PAGE_BYTES)?;
        if &decoded != record {
            return Err(wrong(
                scenario,
                "the decoded record differs from the encoded one",
            ));
        }
        checksum = checksum.wrapping_mul(31) + stats.encoded_bytes as u64;
    }
    Ok(checksum)
}

// -------------------------------------------------------------------- merge

/// The merge scenarios' pages: base images and each page's deltas, epoch order.
struct MergeInput {
    bases: Vec<Vec<u8>>,
    chains: Vec<Vec<Delta>>,
}

impl MergeInput {
    fn build() -> Result<Self> {
        let mut rng = SplitMix64::new(0x3E26E);
        let mut bases = Vec::with_capacity(MERGE_PAGES);
        let mut chains = Vec::with_capacity(MERGE_PAGES);
        for index in 0..MERGE_PAGES {
            bases.push(random_page(&mut rng, PAGE_BYTES));
            let chain = (0..MERGE_DELTAS_PER_PAGE)
                .map(|_| random_runs_delta(&mut rng, PageId(index as u64 + 1)))
                .collect::<Result<Vec<_>>>()?;
            chains.push(chain);
        }
        Ok(MergeInput { bases, chains })
    }

    /// A batch over every page, epochs 1, 2, ... per chain.
    fn batch(&self) -> Result<MergeBatch<'_>> {
        let mut batch = MergeBatch::with_capacity(
            PAGE_BYTES,
            MERGE_PAGES,
            MERGE_PAGES * MERGE_DELTAS_PER_PAGE,
        )?;
        for (index, (base, chain)) in self.bases.iter().zip(&self.chains).enumerate() {
            let entries = chain
                .iter()
                .enumerate()
                .map(|(at, delta)| ChainEntry::new(CommitEpoch(at as u64 + 1), delta));
            batch.push_page(PageId(index as u64 + 1), base, entries)?;
        }
        Ok(batch)
    }

    /// Checks the batch's images against `Delta::apply` of every chain.
    fn check(&self, scenario: &'static str, batch: &MergeBatch<'_>) -> Result<()> {
        for (slot, (base, chain)) in self.bases.iter().zip(&self.chains).enumerate() {
            let mut expected = base.clone();
            for delta in chain {
                delta.apply(&mut expected)?;
            }
            if batch.page(slot) != Some(&expected[..]) {
                return Err(wrong(
                    scenario,
                    format!("page slot {slot} differs from Delta::apply"),
                ));
            }
        }
        Ok(())
    }
}

/// A delta of `MERGE_RUNS_PER_DELTA` random runs, sorted and disjoint.
fn random_runs_delta(rng: &mut SplitMix64, page_id: PageId) -> Result<Delta> {
    let slot_bytes = PAGE_BYTES / MERGE_RUNS_PER_DELTA;
    debug_assert!(MERGE_RUN_BYTES.1 <= slot_bytes);
    let payload = random_page(rng, MERGE_RUN_BYTES.1 * MERGE_RUNS_PER_DELTA);
    let runs: Vec<DeltaRun<'_>> = (0..MERGE_RUNS_PER_DELTA)
        .map(|slot| {
            let len = rng.in_range(MERGE_RUN_BYTES.0, MERGE_RUN_BYTES.1);
            let offset = slot * slot_bytes + rng.in_range(0, slot_bytes - len);
            let from = slot * MERGE_RUN_BYTES.1;
            DeltaRun {
                offset: offset as u32,
                bytes: &payload[from..from + len],
            }
        })
        .collect();
    Ok(Delta::from_sorted_runs(page_id, runs)?)
}

fn run_merge_scalar() -> Result<u64> {
    run_merge(
        "merge_scalar",
        MergePath::Scalar,
        mmsb_regress_entry_merge_scalar,
    )
}

fn run_merge_best() -> Result<u64> {
    run_merge(
        "merge_best",
        MergePath::best_available(),
        mmsb_regress_entry_merge_best,
    )
}

/// Builds the batch, merges it with `entry` on `path`, checks the images.
fn run_merge(
    scenario: &'static str,
    path: MergePath,
    entry: fn(&CpuMerge, &mut MergeBatch<'_>) -> Result<u64>,
) -> Result<u64> {
    let input = MergeInput::build()?;
    let merger = CpuMerge::new(path, 1)?;
    let mut batch = input.batch()?;
    let checksum = entry(&merger, black_box(&mut batch))?;
    // Every round re-applies the same chains, so one round's result stands.
    input.check(scenario, &batch)?;
    Ok(checksum)
}

#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_merge_scalar(merger: &CpuMerge, batch: &mut MergeBatch<'_>) -> Result<u64> {
    black_box(merge_rounds(merger, batch, MergePath::Scalar))
}

#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_merge_best(merger: &CpuMerge, batch: &mut MergeBatch<'_>) -> Result<u64> {
    black_box(merge_rounds(merger, batch, MergePath::best_available()))
}

/// Merges the batch `MERGE_ROUNDS` times (the chains fold onto the result of
/// the previous round; the work per round is the same). `expected` is the
/// path the merger must run: it also keeps the two entry functions' bodies
/// different, so the linker cannot fold them into one symbol.
fn merge_rounds(merger: &CpuMerge, batch: &mut MergeBatch<'_>, expected: MergePath) -> Result<u64> {
    if merger.path() != expected {
        return Err(wrong(
            "merge",
            format!("the merger runs {}, not {expected}", merger.path()),
        ));
    }
    let mut checksum = 0u64;
    for _ in 0..MERGE_ROUNDS {
        let stats = merger.merge_batch(batch)?;
        checksum = checksum.wrapping_mul(31) + stats.bytes_written + stats.runs;
    }
    Ok(checksum)
}

// -------------------------------------------------------------- table_btree

/// Options for a database on [`MemStorage`] with no disk, no fsync to a
/// device and no background threads.
pub fn mem_options() -> Options {
    Options {
        storage: Arc::new(MemStorage::new()),
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// The table scenario's table name.
const TABLE_NAME: &str = "rows";

fn run_table_btree() -> Result<u64> {
    let db = mem_options().open("/regress/table.mmsb")?;
    let mut tx = db.begin_write()?;
    tx.open_table(TABLE_NAME)?
        .insert(&row_key(0), &row_value(0, 0))?;
    tx.commit()?;
    mmsb_regress_entry_table_btree(black_box(&db))
}

/// Inserts rows in commits, updates some, then reads every row back and
/// scans the table.
#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_table_btree(db: &Database) -> Result<u64> {
    let rows = 1 + TABLE_INSERT_COMMITS * TABLE_ROWS_PER_COMMIT;
    for commit in 0..TABLE_INSERT_COMMITS {
        let first = 1 + commit * TABLE_ROWS_PER_COMMIT;
        write_rows(db, first, 0)?;
    }
    for commit in 0..TABLE_UPDATE_COMMITS {
        // Every 7th block of rows, so updates hit pages all over the tree.
        let first = 1 + (commit * 7 % TABLE_INSERT_COMMITS) * TABLE_ROWS_PER_COMMIT;
        write_rows(db, first, 1)?;
    }
    let rx = db.begin_read()?;
    let table = rx.open_table(TABLE_NAME)?;
    let mut checksum = 0u64;
    for index in 0..rows {
        let value = table
            .get(&row_key(index))?
            .ok_or_else(|| wrong("table_btree", format!("row {index} is missing")))?;
        checksum = checksum.wrapping_add(u64::from(value.as_ref()[8]));
    }
    let mut scanned = 0u64;
    for entry in table.iter()? {
        let (key, _) = entry?;
        scanned += 1;
        checksum = checksum.wrapping_mul(31) + u64::from(key.as_ref()[0]);
    }
    if scanned != rows || table.len() != rows {
        return Err(wrong(
            "table_btree",
            format!("scanned {scanned} rows of {rows}"),
        ));
    }
    Ok(black_box(checksum))
}

/// One commit writing `TABLE_ROWS_PER_COMMIT` rows from `first` at `version`.
fn write_rows(db: &Database, first: u64, version: u64) -> Result<()> {
    let mut tx = db.begin_write()?;
    let mut table = tx.open_table(TABLE_NAME)?;
    for index in first..first + TABLE_ROWS_PER_COMMIT {
        table.insert(&row_key(index), &row_value(index, version))?;
    }
    tx.commit()?;
    Ok(())
}

// -------------------------------------------------------------- tlog_commit

fn run_tlog_commit() -> Result<u64> {
    let storage = Arc::new(MemStorage::new());
    let tlog = TLog::open(storage, TLogConfig::new("/regress/tlog"))?;
    let mut rng = SplitMix64::new(0x7106);
    let records = (0..TLOG_COMMITS)
        .map(|_| sparse_record(&mut rng, TLOG_DELTAS_PER_COMMIT, CODEC_EDITS))
        .collect::<Result<Vec<_>>>()?;
    mmsb_regress_entry_tlog_commit(&tlog, black_box(&records))
}

/// Encodes each record, appends it as one durable commit, then replays the
/// log and decodes every frame.
#[no_mangle]
#[inline(never)]
fn mmsb_regress_entry_tlog_commit(tlog: &TLog, records: &[CommitRecord]) -> Result<u64> {
    let config = CodecConfig::default();
    let mut encoded = Vec::new();
    for (index, record) in records.iter().enumerate() {
        encoded.clear();
        record.encode(&config, &mut encoded)?;
        let ticket = tlog.append(CommitEpoch(index as u64 + 1), &encoded)?;
        tlog.wait_durable(ticket)?;
    }
    let mut replay = tlog.replay(CommitEpoch(0))?;
    let mut checksum = 0u64;
    let mut frames = 0usize;
    while let Some(frame) = replay.next_frame() {
        let (epoch, payload) = frame?;
        let record = CommitRecord::decode(payload, PAGE_BYTES)?;
        let expected = records
            .get(frames)
            .ok_or_else(|| wrong("tlog_commit", "extra frames"))?;
        if epoch != CommitEpoch(frames as u64 + 1) || &record != expected {
            return Err(wrong(
                "tlog_commit",
                format!("frame {frames} differs from its commit"),
            ));
        }
        frames += 1;
        checksum = checksum.wrapping_mul(31) + payload.len() as u64;
    }
    if frames != records.len() {
        return Err(wrong(
            "tlog_commit",
            format!("replayed {frames} of {} frames", records.len()),
        ));
    }
    Ok(black_box(checksum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_symbols_are_unique_and_well_formed() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for scenario in SCENARIOS {
            assert_eq!(
                scenario.entry_symbol,
                format!("mmsb_regress_entry_{}", scenario.name)
            );
            assert_eq!(find(scenario.name).map(|s| s.name), Some(scenario.name));
        }
        assert!(find("no_such_scenario").is_none());
    }

    #[test]
    fn only_the_simd_scenario_is_informational() {
        let informational: Vec<_> = SCENARIOS
            .iter()
            .filter(|s| !s.gated)
            .map(|s| s.name)
            .collect();
        assert_eq!(informational, ["merge_best"]);
    }

    /// Every scenario runs to a correct result, and twice gives the same
    /// checksum (the workloads are deterministic).
    #[test]
    fn every_scenario_is_correct_and_deterministic() {
        for scenario in SCENARIOS {
            let first = scenario.run();
            let second = scenario.run();
            match (first, second) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{} is not deterministic", scenario.name),
                (a, b) => panic!("{} failed: {a:?} / {b:?}", scenario.name),
            }
        }
    }

    #[test]
    fn scalar_and_best_merges_agree() {
        assert_eq!(run_merge_scalar().ok(), run_merge_best().ok());
    }
}
