//! Recovery: replaying a large TLog at open, against a sequential read of
//! the same segment files (the bar: replay within 2x of reading).
//!
//! `cargo bench --bench recovery` (env `MMSB_RECOVERY_COMMITS`, default 40000).
//! Both sides read files that are in the page cache: the comparison is CPU
//! cost of replay (decode, verify, apply) against the cost of just reading.

use std::time::{Duration, Instant};

use mmsb::{Durability, Options};

fn options() -> Options {
    Options {
        durability: Durability::Eventual {
            flush_interval_ms: 50,
        },
        checkpoint_tlog_bytes: u64::MAX,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// Sparse updates: each commit changes a small field in a few rows.
fn build(path: &std::path::Path, commits: u64) {
    let db = options().open(path).expect("open");
    let mut tx = db.begin_write().expect("begin");
    let mut table = tx.open_table("rows").expect("table");
    for row in 0..20_000u64 {
        table
            .insert(&row.to_be_bytes(), &[0x5au8; 100])
            .expect("insert");
    }
    tx.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
    for commit in 0..commits {
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table("rows").expect("table");
        for step in 0..4u64 {
            let row = (commit.wrapping_mul(7919) + step * 4999) % 20_000;
            let mut value = [0x5au8; 100];
            value[..8].copy_from_slice(&commit.to_le_bytes());
            table.insert(&row.to_be_bytes(), &value).expect("insert");
        }
        tx.commit().expect("commit");
    }
    db.flush().expect("flush");
}

fn read_segments(dir: &std::path::Path) -> u64 {
    let mut bytes = 0u64;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("tlog dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        bytes += std::fs::read(&path).expect("read segment").len() as u64;
    }
    bytes
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let commits = std::env::var("MMSB_RECOVERY_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("recovery.mmsb");
    build(&path, commits);
    let tlog_dir = dir.path().join("recovery.mmsb-tlog");
    let mut read_times = Vec::new();
    let mut replay_times = Vec::new();
    let mut tlog_bytes = 0;
    let mut replayed = 0;
    for _ in 0..5 {
        let started = Instant::now();
        tlog_bytes = read_segments(&tlog_dir);
        read_times.push(started.elapsed());
        let started = Instant::now();
        let db = options().open(&path).expect("reopen");
        replay_times.push(started.elapsed());
        replayed = db.metrics().recovered_commits;
        drop(db);
    }
    let read = median(read_times);
    let replay = median(replay_times);
    println!(
        "recovery: {replayed} commits, {:.1} MiB of TLog",
        tlog_bytes as f64 / 1048576.0
    );
    println!(
        "sequential read {:>9.2} ms ({:.0} MiB/s)",
        read.as_secs_f64() * 1e3,
        tlog_bytes as f64 / 1048576.0 / read.as_secs_f64()
    );
    println!(
        "replay at open  {:>9.2} ms ({:.0} MiB/s, {:.0} commits/s)",
        replay.as_secs_f64() * 1e3,
        tlog_bytes as f64 / 1048576.0 / replay.as_secs_f64(),
        replayed as f64 / replay.as_secs_f64()
    );
    println!(
        "replay / read = {:.2}x (bar: <= 2x)",
        replay.as_secs_f64() / read.as_secs_f64()
    );
}
