//! The end-to-end write pipeline, stage by stage: a table API call → B+tree
//! pages → page deltas → commit record → TLog frame (→ fsync) → installed
//! versions → publish and fold → readable state, on a real-disk directory
//! (`CARGO_TARGET_TMPDIR`, or `PIPELINE_DIR` when set).
//!
//! Runs `PIPELINE_COMMITS` (default 300) small commits, each inserting one
//! 24-byte key with a 100-byte value through `Transaction::open_table` +
//! `Table::insert`, once with `Durability::Immediate` (fsync per commit) and
//! once with `Durability::Eventual`, and prints where a commit's time goes
//! from `db.metrics().commit_stages` (ns per commit per stage and % of the
//! commit's wall time; `other` is what no stage covers: begin, buffering the
//! insert, taking locks). Then the read side: every key read back through a
//! fresh snapshot, a full scan, a checkpoint (fold into the data file), as
//! many commits again, and a reopen that replays them from the TLog (close
//! does not checkpoint here), followed by the same reads.
//!
//! `cargo bench --bench pipeline` (plain `main`; criterion's flags are ignored).
//! Timings are wall clock on a shared machine: read them as shares of the
//! total and as ratios within one run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mmsb::{Database, Durability, Options};
use mmsb_engine::CommitStageNanos;

/// Commits measured per durability mode unless `PIPELINE_COMMITS` says otherwise.
const DEFAULT_COMMITS: usize = 300;
/// Commits run before measuring (table creation, first pages, warm caches).
const WARMUP_COMMITS: usize = 20;
/// Flush interval of the Eventual mode, milliseconds.
const EVENTUAL_FLUSH_INTERVAL_MS: u64 = 10;
/// Value bytes per inserted row.
const VALUE_BYTES: usize = 100;
/// The table the bench writes.
const TABLE: &str = "pipeline";

/// What one durability mode measured.
struct ModeResult {
    name: &'static str,
    commits: usize,
    wall: Duration,
    stages: CommitStageNanos,
    fsyncs: u64,
    record_bytes: u64,
    reads: ReadResult,
    checkpoint: Duration,
    reopen: Duration,
    recovered_commits: u64,
    reads_after_reopen: ReadResult,
}

/// Read-back timings.
struct ReadResult {
    gets: usize,
    get_all: Duration,
    scan: Duration,
}

fn key(index: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&index.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    key[8..16].copy_from_slice(&index.to_be_bytes());
    key
}

fn value(index: u64) -> [u8; VALUE_BYTES] {
    let mut value = [0x42u8; VALUE_BYTES];
    value[..8].copy_from_slice(&index.to_le_bytes());
    value
}

/// The defaults (background merge and checkpoint workers on), except that
/// closing does not checkpoint: the reopen then has the log tail to replay.
fn options(durability: Durability) -> Options {
    Options {
        durability,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

fn insert_one(db: &Database, index: u64) {
    let mut tx = db.begin_write().expect("begin");
    tx.open_table(TABLE)
        .expect("table")
        .insert(&key(index), &value(index))
        .expect("insert");
    tx.commit().expect("commit");
}

fn minus(after: CommitStageNanos, before: CommitStageNanos) -> CommitStageNanos {
    CommitStageNanos {
        validate: after.validate - before.validate,
        tree_apply: after.tree_apply - before.tree_apply,
        diff: after.diff - before.diff,
        encode: after.encode - before.encode,
        log_append: after.log_append - before.log_append,
        install: after.install - before.install,
        durable_wait: after.durable_wait - before.durable_wait,
        publish_fold: after.publish_fold - before.publish_fold,
    }
}

fn stage_list(stages: &CommitStageNanos) -> [(&'static str, u64); 8] {
    [
        ("validate", stages.validate),
        ("tree_apply", stages.tree_apply),
        ("diff", stages.diff),
        ("encode", stages.encode),
        ("log_append", stages.log_append),
        ("install", stages.install),
        ("durable_wait", stages.durable_wait),
        ("publish_fold", stages.publish_fold),
    ]
}

/// Reads every key `0..rows` through a fresh snapshot, then scans the table.
fn read_back(db: &Database, rows: u64) -> ReadResult {
    let started = Instant::now();
    let rx = db.begin_read().expect("begin read");
    let table = rx.open_table(TABLE).expect("table");
    for index in 0..rows {
        let got = table.get(&key(index)).expect("get").expect("row present");
        assert_eq!(&got[..], &value(index)[..], "row {index} read back wrong");
    }
    let get_all = started.elapsed();
    let started = Instant::now();
    let mut scanned = 0usize;
    for entry in table.iter().expect("iter") {
        let (_key, row) = entry.expect("scan");
        scanned += usize::from(!row.is_empty());
    }
    let scan = started.elapsed();
    assert_eq!(scanned as u64, rows, "the scan saw every row");
    ReadResult {
        gets: rows as usize,
        get_all,
        scan,
    }
}

fn run_mode(name: &'static str, durability: Durability, dir: &Path, commits: usize) -> ModeResult {
    let path = dir.join(format!("{name}.mmsb"));
    let db = options(durability).open(&path).expect("open");
    for index in 0..WARMUP_COMMITS as u64 {
        insert_one(&db, index);
    }
    let before = db.metrics();
    let started = Instant::now();
    let total = (WARMUP_COMMITS + commits) as u64;
    for index in WARMUP_COMMITS as u64..total {
        insert_one(&db, index);
    }
    let wall = started.elapsed();
    let after = db.metrics();
    db.flush().expect("flush");
    let reads = read_back(&db, total);
    let started = Instant::now();
    db.checkpoint().expect("checkpoint");
    let checkpoint = started.elapsed();
    // As many commits again after the checkpoint: the log the reopen replays.
    let rows = total + commits as u64;
    for index in total..rows {
        insert_one(&db, index);
    }
    db.flush().expect("flush");
    drop(db);
    let started = Instant::now();
    let reopened = options(durability).open(&path).expect("reopen");
    let reopen = started.elapsed();
    let recovered_commits = reopened.metrics().recovered_commits;
    let reads_after_reopen = read_back(&reopened, rows);
    ModeResult {
        name,
        commits,
        wall,
        stages: minus(after.commit_stages, before.commit_stages),
        fsyncs: after.tlog_fsyncs - before.tlog_fsyncs,
        record_bytes: after.commit_record_bytes - before.commit_record_bytes,
        reads,
        checkpoint,
        reopen,
        recovered_commits,
        reads_after_reopen,
    }
}

fn print_stage_table(results: &[ModeResult]) {
    print!("{:<34}", "stage (ns per commit, % of wall)");
    for result in results {
        print!(" {:>22}", result.name);
    }
    println!();
    let per_commit = |result: &ModeResult, ns: u64| ns as f64 / result.commits as f64;
    let share =
        |result: &ModeResult, ns: u64| ns as f64 * 100.0 / result.wall.as_nanos().max(1) as f64;
    for row in 0..8 {
        print!("{:<34}", stage_list(&results[0].stages)[row].0);
        for result in results {
            let ns = stage_list(&result.stages)[row].1;
            print!(
                " {:>12.0} {:>8.1}%",
                per_commit(result, ns),
                share(result, ns)
            );
        }
        println!();
    }
    print!("{:<34}", "other (begin, insert buffer, locks)");
    for result in results {
        let staged: u64 = stage_list(&result.stages).iter().map(|(_, ns)| ns).sum();
        let other = (result.wall.as_nanos() as u64).saturating_sub(staged);
        print!(
            " {:>12.0} {:>8.1}%",
            per_commit(result, other),
            share(result, other)
        );
    }
    println!();
    print!("{:<34}", "total (wall)");
    for result in results {
        let wall = result.wall.as_nanos() as u64;
        print!(" {:>12.0} {:>8.1}%", per_commit(result, wall), 100.0);
    }
    println!();
    print!("{:<34}", "commits/s");
    for result in results {
        print!(
            " {:>22.0}",
            result.commits as f64 / result.wall.as_secs_f64()
        );
    }
    println!();
    print!("{:<34}", "TLog fsyncs per commit");
    for result in results {
        print!(" {:>22.3}", result.fsyncs as f64 / result.commits as f64);
    }
    println!();
    print!("{:<34}", "commit record bytes per commit");
    for result in results {
        print!(
            " {:>22.1}",
            result.record_bytes as f64 / result.commits as f64
        );
    }
    println!();
}

fn print_read_table(results: &[ModeResult]) {
    type Cell = fn(&ModeResult) -> String;
    fn per(total: Duration, count: usize) -> String {
        format!("{:.0}", total.as_nanos() as f64 / count.max(1) as f64)
    }
    let rows: [(&str, Cell); 7] = [
        ("get every row, ns/get", |r| {
            per(r.reads.get_all, r.reads.gets)
        }),
        ("scan, ns/row", |r| per(r.reads.scan, r.reads.gets)),
        ("checkpoint, ms", |r| {
            format!("{:.2}", r.checkpoint.as_secs_f64() * 1e3)
        }),
        ("reopen (recovery), ms", |r| {
            format!("{:.2}", r.reopen.as_secs_f64() * 1e3)
        }),
        ("commits replayed at reopen", |r| {
            r.recovered_commits.to_string()
        }),
        ("after reopen: get, ns/get", |r| {
            per(r.reads_after_reopen.get_all, r.reads_after_reopen.gets)
        }),
        ("after reopen: scan, ns/row", |r| {
            per(r.reads_after_reopen.scan, r.reads_after_reopen.gets)
        }),
    ];
    println!();
    print!("{:<34}", "read side");
    for result in results {
        print!(" {:>22}", result.name);
    }
    println!();
    for (label, cell) in rows {
        print!("{label:<34}");
        for result in results {
            print!(" {:>22}", cell(result));
        }
        println!();
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("PIPELINE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn main() {
    // cargo bench passes `--bench` and any criterion flags: none apply here.
    let commits = std::env::var("PIPELINE_COMMITS")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_COMMITS);
    let root = bench_dir();
    std::fs::create_dir_all(&root).expect("bench dir");
    let dir = tempfile::tempdir_in(&root).expect("tempdir");
    println!(
        "pipeline: {commits} commits of one insert (24-byte key, {VALUE_BYTES}-byte value) per mode, \
         after {WARMUP_COMMITS} warm-up commits, in {}",
        dir.path().display()
    );
    let results = [
        run_mode("immediate", Durability::Immediate, dir.path(), commits),
        run_mode(
            "eventual",
            Durability::Eventual {
                flush_interval_ms: EVENTUAL_FLUSH_INTERVAL_MS,
            },
            dir.path(),
            commits,
        ),
    ];
    print_stage_table(&results);
    print_read_table(&results);
}
