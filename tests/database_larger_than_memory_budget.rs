//! A database several times larger than its memory budget: loaded, then read
//! and updated at random, with every read checked against a model. The
//! engine's own accounting (`peak_cache_bytes`) must stay within the budget,
//! and the process's peak resident set (`VmHWM` in /proc/self/status, which
//! includes file pages mapped into the process) may grow past its level
//! before the open by at most the budget plus [`FIXED_OVERHEAD_BYTES`].
//!
//! One test in this file, so that `VmHWM` measures this workload alone.

use std::collections::HashMap;

use mmsb::{Database, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1024 * 1024;
/// The memory budget under test.
const BUDGET_BYTES: u64 = 12 * MIB;
/// Memory the process may hold besides the page table, whatever the
/// database's size: data-file pages read through the memory map (only the
/// file's first 25% of the budget's bytes are: 3 MiB), the checkpoint's
/// sealed copies of one write-back round (10% of the budget), open
/// transactions' private page copies and commit records, TLog and codec
/// buffers, the page images readers hold while they use them, allocator
/// slack, and the test's own model and thread stacks. Measured: 15–16.5 MiB.
const FIXED_OVERHEAD_BYTES: u64 = 24 * MIB;
/// Entries loaded; with `VALUE_BYTES` they make the data file ≥ 4× the budget.
const ENTRY_COUNT: u64 = 40_000;
const VALUE_BYTES: usize = 900;
/// Entries per load transaction.
const LOAD_BATCH: u64 = 500;
/// Random operations after the load; about one in five is an update.
const RANDOM_OPS: usize = 12_000;
const UPDATES_PER_TX: usize = 10;
const READS_PER_TX: usize = 50;
const TABLE: &str = "big";

/// Keys are a permutation of `0..ENTRY_COUNT` (inserted out of order, as
/// real keys are), 8 bytes big-endian.
fn key(index: u64) -> [u8; 8] {
    const STRIDE: u64 = 30_011; // coprime with ENTRY_COUNT (2^6 * 5^4)
    ((index * STRIDE) % ENTRY_COUNT).to_be_bytes()
}

/// The value of `index` at `version`: derived, so the model stores only
/// versions.
fn value(index: u64, version: u32) -> Vec<u8> {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(version);
    (0..VALUE_BYTES)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// A field of /proc/self/status in bytes (`VmHWM`, `VmRSS`).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number of kB");
    kib * 1024
}

fn load(db: &Database) {
    for start in (0..ENTRY_COUNT).step_by(LOAD_BATCH as usize) {
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table(TABLE).expect("table");
        for index in start..(start + LOAD_BATCH).min(ENTRY_COUNT) {
            table.insert(&key(index), &value(index, 0)).expect("insert");
        }
        drop(table);
        tx.commit().expect("commit during the load");
    }
}

/// Random reads and updates; every read checked against `versions`.
fn read_and_update(db: &Database, versions: &mut HashMap<u64, u32>, rng: &mut StdRng) {
    let mut done = 0;
    while done < RANDOM_OPS {
        if rng.gen_bool(0.2) {
            let mut tx = db.begin_write().expect("begin");
            let mut table = tx.open_table(TABLE).expect("table");
            let mut changed = Vec::new();
            for _ in 0..UPDATES_PER_TX {
                let index = rng.gen_range(0..ENTRY_COUNT);
                let version = versions.get(&index).copied().unwrap_or(0) + 1;
                table
                    .insert(&key(index), &value(index, version))
                    .expect("update");
                changed.push((index, version));
            }
            drop(table);
            tx.commit().expect("commit of updates");
            versions.extend(changed);
            done += UPDATES_PER_TX;
        } else {
            let rx = db.begin_read().expect("begin read");
            let table = rx.open_table(TABLE).expect("table");
            for _ in 0..READS_PER_TX {
                let index = rng.gen_range(0..ENTRY_COUNT);
                let expected = value(index, versions.get(&index).copied().unwrap_or(0));
                let got = table.get(&key(index)).expect("get");
                assert_eq!(got.as_deref(), Some(&expected[..]), "entry {index}");
            }
            done += READS_PER_TX;
        }
    }
}

#[test]
fn a_database_four_times_its_budget_reads_and_updates_right_within_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.mmsb");
    let baseline_hwm = proc_status_bytes("VmHWM");
    let db = Options {
        memory_budget_bytes: BUDGET_BYTES,
        ..Options::default()
    }
    .open(&path)
    .expect("open");

    load(&db);
    let load_hwm_growth = proc_status_bytes("VmHWM").saturating_sub(baseline_hwm);
    db.checkpoint().expect("checkpoint");
    let file_bytes = std::fs::metadata(&path).expect("stat").len();
    assert!(
        file_bytes >= 4 * BUDGET_BYTES,
        "the data file is {file_bytes} bytes, not 4x the budget"
    );

    let mut versions = HashMap::new();
    let mut rng = StdRng::seed_from_u64(0x6275_6467_6574);
    read_and_update(&db, &mut versions, &mut rng);

    // Every entry, in key order, once more.
    let rx = db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("table");
    assert_eq!(table.len(), ENTRY_COUNT);
    for index in 0..ENTRY_COUNT {
        let expected = value(index, versions.get(&index).copied().unwrap_or(0));
        let got = table.get(&key(index)).expect("get");
        assert_eq!(got.as_deref(), Some(&expected[..]), "entry {index}");
    }
    drop(rx);

    let metrics = db.metrics();
    let hwm_growth = proc_status_bytes("VmHWM").saturating_sub(baseline_hwm);
    println!(
        "data file {:.1} MiB, budget {:.1} MiB: engine peak {:.2} MiB (now {:.2} MiB), \
         VmHWM growth {:.2} MiB ({:.2} MiB after the load; VmRSS now {:.2} MiB), \
         {} pages evicted in {} sweeps, {} back-pressure waits, {} pages read from disk",
        file_bytes as f64 / MIB as f64,
        BUDGET_BYTES as f64 / MIB as f64,
        metrics.peak_cache_bytes as f64 / MIB as f64,
        metrics.cache_bytes as f64 / MIB as f64,
        hwm_growth as f64 / MIB as f64,
        load_hwm_growth as f64 / MIB as f64,
        proc_status_bytes("VmRSS") as f64 / MIB as f64,
        metrics.pages_evicted,
        metrics.evictions,
        metrics.backpressure_waits,
        metrics.pages_read_from_disk,
    );
    assert!(metrics.pages_evicted > 0, "{metrics:?}");
    assert!(metrics.pages_read_from_disk > 0, "{metrics:?}");
    assert!(
        metrics.peak_cache_bytes <= BUDGET_BYTES,
        "engine accounting peaked at {} bytes, over the {BUDGET_BYTES}-byte budget",
        metrics.peak_cache_bytes
    );
    assert!(
        hwm_growth <= BUDGET_BYTES + FIXED_OVERHEAD_BYTES,
        "VmHWM grew by {hwm_growth} bytes, over budget {BUDGET_BYTES} + overhead {FIXED_OVERHEAD_BYTES}"
    );
}
