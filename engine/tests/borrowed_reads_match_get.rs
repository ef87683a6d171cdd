//! Borrowed point reads (`ReadOnlyTable::get_with`) see exactly what
//! `ReadOnlyTable::get` sees, and what a model of every snapshot says:
//! - a proptest over puts (inline and overflow values), removals, commits,
//!   snapshots taken and dropped, and checkpoints, on a database whose
//!   memory budget is far below its size, so leaves are read through the
//!   head directory (borrowed), with delta chains (a held snapshot keeps
//!   older versions), and from disk after eviction;
//! - a deterministic run that checks that each of those paths was taken;
//! - threads that read through borrows while a writer commits and the
//!   background workers fold, each read checked against its snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mmsb_engine::{Database, Options, ReadTransaction, MIN_MEMORY_BUDGET_BYTES};
use mmsb_wal::storage::MemStorage;
use proptest::prelude::*;

/// Keys the model draws from.
const KEYS: u32 = 3_000;

/// Value lengths: small, the benchmark's, one that fills a good part of a
/// leaf, and one stored in overflow pages (past a 4 KiB page's cell).
const VALUE_LENS: [usize; 4] = [8, 150, 900, 5_000];

/// Memory budget of the fixed run: 2 MiB, smaller than the table it
/// builds (a write transaction's buffer and the versions held snapshots
/// pin are charged to it too, so its writes stay small).
const SMALL_BUDGET_BYTES: u64 = 2 * MIN_MEMORY_BUDGET_BYTES;

/// Memory budget of the model runs (their snapshots may pin several
/// versions of everything); pages come from disk there after a reopen.
const MODEL_BUDGET_BYTES: u64 = 16 * MIN_MEMORY_BUDGET_BYTES;

/// Keys one put writes at most with overflow values (the others: 400).
const OVERFLOW_PUT_KEYS_MAX: u32 = 30;

/// The database at `path` in `storage` (opened again on a reopen) with a
/// memory budget of `budget_bytes`.
fn open(storage: &Arc<MemStorage>, path: &str, budget_bytes: u64) -> Database {
    Options {
        storage: Arc::clone(storage) as Arc<dyn mmsb_wal::storage::Storage>,
        memory_budget_bytes: budget_bytes,
        follow_system_memory: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
    .open(path)
    .expect("open a memory database")
}

/// Key `i`: 24 bytes, like the comparison benchmark's.
fn key(i: u32) -> Vec<u8> {
    format!("key:{:020}", i.wrapping_mul(2_654_435_761) % 1_000_003).into_bytes()
}

/// The value of length `len` made of `byte` (its first 4 bytes say which).
fn value(len: usize, byte: u8) -> Vec<u8> {
    let mut v = vec![byte; len];
    v[..4.min(len)].copy_from_slice(&u32::from(byte).to_le_bytes()[..4.min(len)]);
    v
}

/// Checks every model key (and a few absent ones) of `table` against the
/// model: `get_with` and `get` agree with each other and with it.
fn check(rx: &ReadTransaction, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let table = rx.open_table("t").expect("open the table");
    assert_eq!(table.len(), model.len() as u64);
    for (k, want) in model {
        let lent = table.get_with(k, |v| v.to_vec()).expect("get_with");
        let got = table.get(k).expect("get").map(|v| v.to_vec());
        assert_eq!(lent.as_ref(), Some(want), "get_with of a present key");
        assert_eq!(got.as_ref(), Some(want), "get of a present key");
    }
    for i in KEYS..KEYS + 20 {
        let k = key(i);
        if !model.contains_key(&k) {
            assert_eq!(table.get_with(&k, |v| v.len()).expect("get_with"), None);
            assert!(table.get(&k).expect("get").is_none());
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Puts `count` keys from `start` with values of `VALUE_LENS[len]`.
    Put {
        start: u32,
        count: u32,
        len: usize,
        byte: u8,
    },
    /// Removes `count` keys from `start`.
    Remove { start: u32, count: u32 },
    /// Commits the open write (and checks every live snapshot).
    Commit,
    /// Takes a snapshot of the last commit.
    Snapshot,
    /// Drops the oldest snapshot held.
    DropSnapshot,
    /// Writes pages back (so the budget can evict them).
    Checkpoint,
    /// Commits, drops every snapshot and the database, and opens it again
    /// with this memory budget: every page is then read from disk first.
    Reopen { budget_bytes: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, 1..400u32, 0..VALUE_LENS.len(), any::<u8>())
            .prop_map(|(start, count, len, byte)| {
                let count = if len + 1 == VALUE_LENS.len() {
                    count.min(OVERFLOW_PUT_KEYS_MAX)
                } else {
                    count
                };
                Op::Put { start, count, len, byte }
            }),
        1 => (0..KEYS, 1..400u32).prop_map(|(start, count)| Op::Remove { start, count }),
        3 => Just(Op::Commit),
        2 => Just(Op::Snapshot),
        1 => Just(Op::DropSnapshot),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen { budget_bytes: MODEL_BUDGET_BYTES }),
    ]
}

/// Every entry of the table, read by iteration.
fn contents(db: &Database) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let rx = db.begin_read().expect("begin_read");
    let table = rx.open_table("t").expect("open");
    let mut range = table.iter().expect("iter");
    let mut model = BTreeMap::new();
    while let Some(entry) = range.next_entry() {
        let (k, v) = entry.expect("entry");
        model.insert(k.to_vec(), v.to_vec());
    }
    model
}

/// A snapshot and the model of what it sees.
type Snapshot = (ReadTransaction, BTreeMap<Vec<u8>, Vec<u8>>);

/// Runs `ops` against a database and a model of each snapshot, checking
/// every live snapshot after each commit and at the end; returns the
/// snapshots still held.
fn run(
    storage: &Arc<MemStorage>,
    path: &str,
    budget_bytes: u64,
    ops: &[Op],
) -> (Database, Vec<Snapshot>) {
    let mut db = open(storage, path, budget_bytes);
    let mut tx = db.begin_write().expect("begin");
    tx.open_table("t").expect("create the table");
    tx.commit().expect("commit the new table");
    let mut committed = contents(&db);
    let mut pending = committed.clone();
    let mut tx = db.begin_write().expect("begin");
    let mut snapshots: Vec<Snapshot> = Vec::new();
    for op in ops {
        match *op {
            Op::Put {
                start,
                count,
                len,
                byte,
            } => {
                let mut table = tx.open_table("t").expect("open");
                for i in start..(start + count).min(KEYS) {
                    let (k, v) = (key(i), value(VALUE_LENS[len], byte));
                    table.put(&k, &v).expect("put");
                    pending.insert(k, v);
                }
            }
            Op::Remove { start, count } => {
                let mut table = tx.open_table("t").expect("open");
                for i in start..(start + count).min(KEYS) {
                    let k = key(i);
                    table.delete(&k).expect("delete");
                    pending.remove(&k);
                }
            }
            Op::Commit => {
                tx.commit().expect("commit");
                committed = pending.clone();
                for (rx, model) in &snapshots {
                    check(rx, model);
                }
                tx = db.begin_write().expect("begin");
            }
            Op::Snapshot => {
                let rx = db.begin_read().expect("begin_read");
                check(&rx, &committed);
                snapshots.push((rx, committed.clone()));
            }
            Op::DropSnapshot => {
                if !snapshots.is_empty() {
                    snapshots.remove(0);
                }
            }
            Op::Checkpoint => {
                db.checkpoint().expect("checkpoint");
            }
            Op::Reopen { budget_bytes } => {
                tx.commit().expect("commit");
                committed = pending.clone();
                snapshots.clear();
                drop(db);
                db = open(storage, path, budget_bytes);
                check(&db.begin_read().expect("begin_read"), &committed);
                tx = db.begin_write().expect("begin");
            }
        }
    }
    tx.commit().expect("commit");
    for (rx, model) in &snapshots {
        check(rx, model);
    }
    check(&db.begin_read().expect("begin_read"), &pending);
    (db, snapshots)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Borrowed reads equal `get` and the model at every snapshot.
    #[test]
    fn borrowed_reads_match_get_and_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        let storage = Arc::new(MemStorage::new());
        run(&storage, "/borrowed/model.mmsb", MODEL_BUDGET_BYTES, &ops);
    }
}

/// One fixed run that goes through every path a borrowed read can take:
/// a lone head in the directory, a page with a delta chain (a held
/// snapshot), a page read back from disk after eviction, overflow values.
#[test]
fn a_fixed_run_covers_chains_evictions_and_overflow_values() {
    let put = |start: u32, count: u32, len: usize, byte: u8| Op::Put {
        start,
        count,
        len,
        byte,
    };
    // Written back after each commit, so the budget can evict the pages;
    // small commits (keys are spread over the leaves, and a commit
    // reserves room for every page it changes).
    let mut ops: Vec<Op> = (0..KEYS)
        .step_by(100)
        .flat_map(|start| [put(start, 100, 2, 1), Op::Commit, Op::Checkpoint])
        .collect();
    ops.extend([
        put(0, OVERFLOW_PUT_KEYS_MAX, 3, 2),
        Op::Commit,
        Op::Checkpoint,
    ]);
    let storage = Arc::new(MemStorage::new());
    let (db, held) = run(&storage, "/borrowed/fixed.mmsb", SMALL_BUDGET_BYTES, &ops);
    assert!(held.is_empty());
    assert!(
        db.metrics().pages_read_from_disk > 0,
        "the budget evicted pages and reads loaded them back"
    );
    drop(db);
    // Held snapshots pin versions: opened again with more room.
    let ops = [
        Op::Snapshot,
        put(100, 100, 1, 3),
        Op::Remove {
            start: 2_000,
            count: 100,
        },
        Op::Commit,
        Op::Snapshot,
        put(500, 100, 1, 4),
    ];
    let (db, held) = run(&storage, "/borrowed/fixed.mmsb", MODEL_BUDGET_BYTES, &ops);
    assert_eq!(held.len(), 2);
    assert!(
        db.metrics().pinned_version_bytes > 0,
        "the held snapshots keep older versions (delta chains)"
    );
}

/// A writer rewrites every key with the next generation's value and
/// commits, again and again, while the background workers fold; readers
/// take snapshots, read the generation marker, and check through borrowed
/// reads that every key they look up holds that generation's value.
#[test]
fn borrowed_reads_see_their_snapshot_during_commits_and_folds() {
    const ROWS: u32 = 600;
    const GENERATIONS: u8 = 40;
    let storage = Arc::new(MemStorage::new());
    let db = Arc::new(open(&storage, "/borrowed/threads.mmsb", MODEL_BUDGET_BYTES));
    let write = |generation: u8| {
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table("t").expect("open");
        for i in 0..ROWS {
            table.put(&key(i), &value(150, generation)).expect("put");
        }
        table.put(b"generation", &[generation]).expect("put");
        drop(table);
        tx.commit().expect("commit");
    };
    write(0);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u32)
        .map(|seed| {
            let (db, done) = (Arc::clone(&db), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut i = seed;
                while !done.load(Ordering::Acquire) {
                    let rx = db.begin_read().expect("begin_read");
                    let table = rx.open_table("t").expect("open");
                    let generation = table
                        .get_with(b"generation", |v| v[0])
                        .expect("get_with")
                        .expect("the marker");
                    let want = value(150, generation);
                    for _ in 0..50 {
                        i = (i.wrapping_mul(1_103_515_245).wrapping_add(12_345)) % ROWS;
                        let same = table
                            .get_with(&key(i), |v| v == want.as_slice())
                            .expect("get_with");
                        assert_eq!(same, Some(true), "key {i} at generation {generation}");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    for generation in 1..=GENERATIONS {
        write(generation);
        if generation % 8 == 0 {
            db.checkpoint().expect("checkpoint");
        }
    }
    done.store(true, Ordering::Release);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(reads > 0, "the readers read");
    assert!(db.metrics().folds > 0, "the workers folded meanwhile");
}
