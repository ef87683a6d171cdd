//! The two halves of a run. The parent ([`run_parent`]) starts one child
//! process per engine (so no engine's memory, threads or page-cache warmth
//! leaks into the next), collects their JSON, and writes the markdown
//! table, the JSON file and the chart. A child ([`run_child`]) generates the
//! data, runs every phase against one engine in a fresh directory, prints
//! progress on stderr and one JSON line ([`EngineRun`]) on stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use crate::chart::render_svg;
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::machine::{load_average, Machine};
use crate::report::{
    format_mib, format_ms, locked_version, median_run, render_markdown, render_table, EngineRun,
    RunReport,
};
use crate::workload::{run_workload, Dataset, Measure, PhaseResult, WorkloadConfig};

/// This crate's lock file: the versions of the engines benchmarked.
const CARGO_LOCK: &str = include_str!("../Cargo.lock");

/// What the parent needs to know.
#[derive(Debug, Clone)]
pub struct ParentOptions {
    /// Phase sizes.
    pub workload: WorkloadConfig,
    /// Engines, in column order.
    pub engines: Vec<EngineKind>,
    /// Runs of every engine; the table shows each cell's median.
    pub runs: usize,
    /// Directory under which each engine gets a fresh sub-directory.
    pub bench_dir: PathBuf,
    /// Accept a benchmark directory on tmpfs/ramfs.
    pub allow_memory_fs: bool,
    /// Where `<date>.md` and `<date>.json` go.
    pub results_dir: PathBuf,
    /// Where the SVG chart goes (`None`: no chart).
    pub chart: Option<PathBuf>,
    /// The command line to record in the reports.
    pub command: String,
}

/// Runs every engine in its own child process and writes the reports;
/// returns the report.
pub fn run_parent(options: &ParentOptions) -> Result<RunReport> {
    options.workload.validate()?;
    std::fs::create_dir_all(&options.bench_dir).map_err(Error::io(format!(
        "creating {}",
        options.bench_dir.display()
    )))?;
    let machine = Machine::describe(&options.bench_dir);
    if machine.bench_dir_in_memory() && !options.allow_memory_fs {
        return Err(Error::Config(format!(
            "{} is on a memory file system ({}); pass --dir on a real disk (or --allow-memory-fs)",
            options.bench_dir.display(),
            machine.bench_fs
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix("mmsb-compare-")
        .tempdir_in(&options.bench_dir)
        .map_err(Error::io("creating the scratch directory"))?;
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    eprintln!("machine: {}", machine.summary());
    if options.runs == 0 {
        return Err(Error::Config("--runs must be at least 1".into()));
    }
    // Interleaved (run 1 of every engine, then run 2, ...) so that a change
    // of machine load hits every engine alike.
    let mut samples = Vec::with_capacity(options.engines.len() * options.runs);
    for run in 0..options.runs {
        for &kind in &options.engines {
            eprintln!("== run {}/{}: {}", run + 1, options.runs, kind.name());
            samples.push(spawn_child(kind, &options.workload, scratch.path()));
        }
    }
    let engines = options
        .engines
        .iter()
        .map(|kind| {
            let mine: Vec<EngineRun> = samples
                .iter()
                .filter(|s| s.engine == kind.name())
                .cloned()
                .collect();
            median_run(&mine)
        })
        .collect();
    let report = RunReport {
        date,
        command: options.command.clone(),
        mmsb_commit: mmsb_commit(),
        rustc: command_line_output("rustc", &["--version"]),
        machine,
        load_at_end: load_average(),
        workload: options.workload,
        runs: options.runs,
        engines,
        samples,
    };
    write_reports(&report, options)?;
    Ok(report)
}

/// Runs one engine in a child process of this executable and reads its
/// report; a failed child becomes an [`EngineRun`] with `error` set.
fn spawn_child(kind: EngineKind, workload: &WorkloadConfig, scratch: &Path) -> EngineRun {
    let started = Instant::now();
    let outcome = run_child_process(kind, workload, scratch);
    outcome.unwrap_or_else(|err| EngineRun {
        engine: kind.name().into(),
        version: engine_version(kind),
        settings: kind.durability_note().into(),
        compaction: "—".into(),
        results: Vec::new(),
        error: Some(err.to_string()),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_child_process(
    kind: EngineKind,
    workload: &WorkloadConfig,
    scratch: &Path,
) -> Result<EngineRun> {
    let exe = std::env::current_exe().map_err(Error::io("locating this executable"))?;
    let output = Command::new(exe)
        .arg("--child")
        .arg(kind.name())
        .arg("--dir")
        .arg(scratch)
        .args(workload_args(workload))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(Error::io(format!("starting the {} child", kind.name())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last_line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match (output.status.success(), last_line) {
        (true, Some(line)) => serde_json::from_str(line).map_err(|err| {
            Error::Config(format!("{}: unreadable child report: {err}", kind.name()))
        }),
        (_, _) => Err(Error::Config(format!(
            "{} child exited with {} (see its stderr above)",
            kind.name(),
            output.status
        ))),
    }
}

/// The command-line flags that reproduce `workload` in a child.
fn workload_args(workload: &WorkloadConfig) -> Vec<String> {
    [
        ("--entries", workload.entries),
        ("--individual-writes", workload.individual_writes),
        ("--batch-txs", workload.batch_txs),
        ("--batch-len", workload.batch_len),
        ("--read-threads", workload.read_threads),
        ("--removal-txs", workload.removal_txs),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value.to_string()])
    .collect()
}

/// Runs every phase of `workload` against `kind` in a fresh directory under
/// `scratch`, printing progress on stderr.
pub fn run_child(kind: EngineKind, workload: WorkloadConfig, scratch: &Path) -> Result<EngineRun> {
    let started = Instant::now();
    eprintln!("{}: generating data", kind.name());
    let data = Dataset::generate(workload)?;
    let dir = scratch.join(kind.name());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(Error::io(format!("clearing {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let mark_monotonic = std::env::var_os(MONOTONIC_ENV).is_some();
    if mark_monotonic {
        eprintln!(
            "{}: workload starts [at CLOCK_MONOTONIC {:.6} s]",
            kind.name(),
            monotonic_seconds()
        );
    }
    let (results, compaction) = {
        let mut engine = kind.open(&dir)?;
        let mut progress = |result: &PhaseResult| {
            let value = match result.measure {
                Measure::Millis(ms) => format!("{} ms", format_ms(ms)),
                Measure::Bytes {
                    apparent,
                    allocated,
                } => {
                    format!(
                        "{} ({} allocated)",
                        format_mib(apparent),
                        format_mib(allocated)
                    )
                }
            };
            let stamp = if mark_monotonic {
                format!(" [ended at CLOCK_MONOTONIC {:.6} s]", monotonic_seconds())
            } else {
                String::new()
            };
            eprintln!(
                "{}: {}: {value}{stamp}",
                kind.name(),
                result.phase.label(&workload)
            );
            if let Some(stats) = &result.stats {
                eprintln!("    {stats}");
            }
        };
        run_workload(engine.as_mut(), &data, &dir, &mut progress)?
    };
    std::fs::remove_dir_all(&dir).map_err(Error::io(format!("removing {}", dir.display())))?;
    Ok(EngineRun {
        engine: kind.name().into(),
        version: engine_version(kind),
        settings: kind.durability_note().into(),
        compaction: compaction.into(),
        results,
        error: None,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// When set, each progress line ends with the phase's end time on
/// `CLOCK_MONOTONIC`, to cut a `perf record -k CLOCK_MONOTONIC` profile into
/// phases (`perf report --time START,END`).
pub const MONOTONIC_ENV: &str = "MMSB_COMPARE_MONOTONIC";

/// Seconds on `CLOCK_MONOTONIC` (the clock `perf record -k CLOCK_MONOTONIC` stamps samples with).
fn monotonic_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// "crate x.y.z" from the lock file (mmsb: the path dependency's version).
fn engine_version(kind: EngineKind) -> String {
    let version = locked_version(CARGO_LOCK, kind.crate_name()).unwrap_or_else(|| "?".into());
    format!("{} {version}", kind.crate_name())
}

/// The repository's commit, with `-dirty` when tracked files changed.
fn mmsb_commit() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let commit = command_line_output("git", &["-C", repo, "rev-parse", "--short=12", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", repo, "status", "--porcelain", "--untracked-files=no"])
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .map(|out| !out.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

fn command_line_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Reads a recorded run from `json`, writes its chart to `chart` and prints
/// its markdown results file.
pub fn rerender(json: &Path, chart: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).map_err(Error::io(format!("reading {}", json.display())))?;
    let report: RunReport = serde_json::from_str(&text)
        .map_err(|err| Error::Config(format!("{}: not a run report: {err}", json.display())))?;
    write_file(chart, &render_svg(&report))?;
    print!("{}", render_markdown(&report));
    Ok(())
}

/// Writes `<date>.md`, `<date>.json` and the chart; prints the table.
fn write_reports(report: &RunReport, options: &ParentOptions) -> Result<()> {
    let day = report.date.get(..10).unwrap_or(&report.date);
    std::fs::create_dir_all(&options.results_dir).map_err(Error::io(format!(
        "creating {}",
        options.results_dir.display()
    )))?;
    let stem = unused_stem(&options.results_dir, day);
    let md_path = options.results_dir.join(format!("{stem}.md"));
    write_file(&md_path, &render_markdown(report))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|err| Error::Config(format!("serialising the report: {err}")))?;
    let json_path = options.results_dir.join(format!("{stem}.json"));
    write_file(&json_path, &(json + "\n"))?;
    if let Some(chart) = &options.chart {
        if let Some(parent) = chart.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        write_file(chart, &render_svg(report))?;
    }
    println!("\n{}", render_table(report));
    for engine in report.engines.iter().filter(|e| e.error.is_some()) {
        println!(
            "{} FAILED: {}",
            engine.engine,
            engine.error.as_deref().unwrap_or_default()
        );
    }
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// `day`, or `day-2`, `day-3`, ... : the first stem with no `.md` or
/// `.json` file in `dir`, so a second run on one day keeps the first.
fn unused_stem(dir: &Path, day: &str) -> String {
    let taken = |stem: &str| {
        dir.join(format!("{stem}.md")).exists() || dir.join(format!("{stem}.json")).exists()
    };
    if !taken(day) {
        return day.to_owned();
    }
    (2..)
        .map(|n| format!("{day}-{n}"))
        .find(|stem| !taken(stem))
        .unwrap_or_else(|| day.to_owned())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_args_carry_every_size() {
        let cfg = WorkloadConfig::with_entries(5_000);
        let args = workload_args(&cfg);
        assert_eq!(args.len(), 12);
        assert_eq!(args[0..2], ["--entries".to_owned(), "5000".to_owned()]);
        assert!(args.contains(&"--removal-txs".to_owned()));
    }

    #[test]
    fn a_second_run_on_one_day_gets_its_own_files() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(unused_stem(dir.path(), "2026-11-25"), "2026-11-25");
        std::fs::write(dir.path().join("2026-11-25.md"), "")?;
        assert_eq!(unused_stem(dir.path(), "2026-11-25"), "2026-11-25-2");
        std::fs::write(dir.path().join("2026-11-25-2.json"), "")?;
        assert_eq!(unused_stem(dir.path(), "2026-11-25"), "2026-11-25-3");
        Ok(())
    }

    #[test]
    fn engine_versions_come_from_the_lock_file() {
        for kind in EngineKind::ALL {
            assert!(!engine_version(kind).ends_with('?'), "{kind:?}");
        }
    }
}
