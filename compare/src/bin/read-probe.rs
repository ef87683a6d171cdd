//! Diagnosis of the point-read path under a noisy machine: loads the
//! comparison's tree into one engine, then times many short rounds of point
//! reads and prints quantiles of the per-read time (the fastest rounds are
//! the uninterrupted ones). Usage: `read-probe ENGINE DIR [ENTRIES] [ROUNDS]
//! [READS_PER_ROUND]`.
//!
//! Environment: `READ_PROBE_CHECKPOINT=1` runs the engine's compaction step
//! (for mmsb `Database::checkpoint`, which writes the bulk load back) after
//! the writes and before the first read round, and prints what it did;
//! `READ_PROBE_COLLAPSE=1` asks the kernel to collapse the heap into huge
//! pages every half second.

use std::path::PathBuf;
use std::time::Instant;

use mmsb_compare::engine::{BenchEngine, EngineKind, KvReader, KvWriter};
use mmsb_compare::workload::{probe_reads, Dataset, WorkloadConfig};
use mmsb_compare::Error;

fn arg<T: std::str::FromStr>(args: &[String], at: usize, default: T) -> Result<T, Error> {
    match args.get(at) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| Error::Config(format!("argument {at}: cannot parse {text:?}"))),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let kind = EngineKind::parse(args.get(1).map_or("mmsb", String::as_str))?;
    let dir = PathBuf::from(args.get(2).map_or("/tmp/read-probe", String::as_str));
    let entries: usize = arg(&args, 3, 1_000_000)?;
    let rounds: usize = arg(&args, 4, 200)?;
    let per_round: usize = arg(&args, 5, 20_000)?;
    let data = Dataset::generate(WorkloadConfig::with_entries(entries))?;
    let dir = dir.join(kind.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::Config(format!("clearing: {e}")))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Config(format!("creating: {e}")))?;
    let engine = kind.open(&dir)?;
    let engine: Box<dyn BenchEngine> = if std::env::var_os("READ_PROBE_CHECKPOINT").is_some() {
        Box::new(CompactBeforeReads {
            inner: parking_lot::Mutex::new(engine),
            done: std::sync::Once::new(),
        })
    } else {
        engine
    };
    if std::env::var_os("READ_PROBE_COLLAPSE").is_some() {
        std::thread::spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            collapse_heap();
        });
    }
    let probe = probe_reads(&*engine, &data, rounds, per_round)?;
    println!(
        "{} reads/round={} rounds={} ns/read: min {:.0} p10 {:.0} p25 {:.0} p50 {:.0}",
        kind.name(),
        probe.reads_per_round,
        probe.rounds.len(),
        probe.ns_per_read(0.0),
        probe.ns_per_read(0.1),
        probe.ns_per_read(0.25),
        probe.ns_per_read(0.5),
    );
    println!("  bulk load {:.0} ms", probe.bulk_load.as_secs_f64() * 1e3);
    if let Some(stats) = engine.stats() {
        println!("  {stats}");
    }
    // Whether the heap got transparent huge pages (Linux; diagnosis only).
    if let Ok(rollup) = std::fs::read_to_string("/proc/self/smaps_rollup") {
        for line in rollup.lines().filter(|l| l.starts_with("AnonHugePages")) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// An engine whose first read transaction is preceded by its compaction
/// step (after the probe's writes, before its reads).
struct CompactBeforeReads {
    inner: parking_lot::Mutex<Box<dyn BenchEngine>>,
    done: std::sync::Once,
}

impl BenchEngine for CompactBeforeReads {
    fn name(&self) -> &'static str {
        self.inner.lock().name()
    }

    fn write(
        &self,
        body: &mut dyn FnMut(&mut dyn KvWriter) -> mmsb_compare::Result<()>,
    ) -> mmsb_compare::Result<()> {
        self.inner.lock().write(body)
    }

    fn read(
        &self,
        body: &mut dyn FnMut(&mut dyn KvReader) -> mmsb_compare::Result<()>,
    ) -> mmsb_compare::Result<()> {
        let mut result = Ok(());
        self.done.call_once(|| {
            let mut inner = self.inner.lock();
            if let Some(stats) = inner.stats() {
                println!("  before the compaction step: {stats}");
            }
            let started = Instant::now();
            result = inner.compact().map(|what| {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                println!("  compaction step {what}: {ms:.0} ms");
                if let Some(stats) = inner.stats() {
                    println!("  {stats}");
                }
            });
        });
        result?;
        self.inner.lock().read(body)
    }

    fn compact(&mut self) -> mmsb_compare::Result<&'static str> {
        self.inner.get_mut().compact()
    }

    fn stats(&self) -> Option<String> {
        self.inner.lock().stats()
    }
}

/// Diagnosis: asks the kernel to collapse every private anonymous mapping
/// into transparent huge pages (MADV_COLLAPSE, Linux 6.1+).
fn collapse_heap() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if perms != "rw-p" || inode != "0" {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        const HUGE: usize = 2 << 20;
        let mut base = lo.next_multiple_of(HUGE);
        while base + HUGE <= hi {
            // SAFETY: MADV_COLLAPSE does not change the contents of memory.
            let rc = unsafe { libc::madvise(base as *mut libc::c_void, HUGE, 25) };
            if rc == 0 {
                ok += 1
            } else {
                failed += 1
            }
            base += HUGE;
        }
    }
    eprintln!("collapse: {ok} ok, {failed} failed");
}
