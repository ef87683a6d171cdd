//! Where the time of a durable commit goes: runs small durable commits
//! through the table API and prints the engine's per-stage timers.
//!
//! `cargo run --release --example commit_stages [COMMITS]`

use mmsb::Database;

fn main() -> mmsb::Result<()> {
    let commits: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("mmsb-commit-stages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|err| mmsb::Error::io("create temp dir", err))?;
    let db = Database::open(dir.join("stages.mmsb"))?;
    let started = std::time::Instant::now();
    for i in 0..commits {
        let mut tx = db.begin_write()?;
        tx.open_table("t")?
            .insert(&(i % 1000).to_be_bytes(), &i.to_le_bytes())?;
        tx.commit()?;
    }
    let elapsed = started.elapsed();
    let m = db.metrics();
    let s = m.commit_stages;
    let per = |ns: u64| ns as f64 / commits as f64 / 1000.0;
    println!(
        "{commits} durable commits: {:.1} us each (wall)",
        elapsed.as_secs_f64() * 1e6 / commits as f64
    );
    for (name, ns) in [
        ("validate", s.validate),
        ("tree_apply", s.tree_apply),
        ("diff", s.diff),
        ("encode", s.encode),
        ("log_append", s.log_append),
        ("install", s.install),
        ("durable_wait", s.durable_wait),
        ("publish_fold", s.publish_fold),
    ] {
        println!("  {name:<13} {:>8.2} us", per(ns));
    }
    println!(
        "  fsyncs/commit {:.2}, TLog bytes/commit {:.0}",
        m.tlog_fsyncs as f64 / commits as f64,
        m.tlog_bytes_written as f64 / commits as f64
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
