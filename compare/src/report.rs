//! The results of a run ([`RunReport`], one [`EngineRun`] per engine), and
//! how they are shown: the markdown table (rows = phases, columns = engines,
//! fastest or smallest per row in bold, plus mmsb's ratio to the best) and
//! the markdown file around it. The JSON file is `RunReport` through serde.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::workload::{
    thousands, Measure, Phase, WorkloadConfig, KEY_BYTES, RANGE_LEN, SEED, VALUE_BYTES,
};

/// What one engine's child process reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineRun {
    /// Engine name (`mmsb`, `redb`, ...).
    pub engine: String,
    /// Crate and version, from this crate's Cargo.lock.
    pub version: String,
    /// How the engine was configured.
    pub settings: String,
    /// What its compaction step did.
    pub compaction: String,
    /// The measured rows, in [`Phase::ALL`] order (fewer when it failed).
    pub results: Vec<crate::workload::PhaseResult>,
    /// Why the engine did not finish, if it did not.
    pub error: Option<String>,
    /// Wall time of the whole child process, seconds.
    pub wall_seconds: f64,
}

impl EngineRun {
    /// The measurement of `phase`, if the engine got that far.
    pub fn measure(&self, phase: Phase) -> Option<Measure> {
        self.results
            .iter()
            .find(|r| r.phase == phase)
            .map(|r| r.measure)
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// When the run started, RFC 3339 UTC.
    pub date: String,
    /// The command that produced it.
    pub command: String,
    /// The mmsb commit benchmarked (`-dirty` when the tree had changes).
    pub mmsb_commit: String,
    /// `rustc --version` of the toolchain on PATH.
    pub rustc: String,
    /// The machine.
    pub machine: Machine,
    /// `/proc/loadavg` when the run ended.
    pub load_at_end: String,
    /// The phase sizes.
    pub workload: WorkloadConfig,
    /// Runs of every engine.
    #[serde(default = "one_run")]
    pub runs: usize,
    /// One entry per engine, in column order: each cell the median of its runs.
    pub engines: Vec<EngineRun>,
    /// Every run of every engine, in the order they ran.
    #[serde(default)]
    pub samples: Vec<EngineRun>,
}

/// Reports written before `runs` existed had one run.
fn one_run() -> usize {
    1
}

/// The median of a list (mean of the middle two for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One engine's runs folded into one: each phase the median of the runs
/// that measured it; the first error, if any run failed; summed wall time.
pub fn median_run(runs: &[EngineRun]) -> EngineRun {
    debug_assert!(runs.iter().all(|r| r.engine == runs[0].engine));
    let Some(first) = runs.first() else {
        return EngineRun {
            engine: "?".into(),
            version: "?".into(),
            settings: String::new(),
            compaction: String::new(),
            results: Vec::new(),
            error: Some("no run".into()),
            wall_seconds: 0.0,
        };
    };
    let mut results = Vec::new();
    for phase in Phase::ALL {
        let measures: Vec<Measure> = runs.iter().filter_map(|r| r.measure(phase)).collect();
        let Some(template) = measures.first().copied() else {
            continue;
        };
        let pick = |f: fn(&Measure) -> f64| {
            let mut values: Vec<f64> = measures.iter().map(f).collect();
            median(&mut values).unwrap_or(f64::NAN)
        };
        let measure = match template {
            Measure::Millis(_) => Measure::Millis(pick(|m| m.rank_value())),
            Measure::Bytes { .. } => Measure::Bytes {
                apparent: pick(|m| m.rank_value()) as u64,
                allocated: pick(|m| match m {
                    Measure::Bytes { allocated, .. } => *allocated as f64,
                    Measure::Millis(_) => f64::NAN,
                }) as u64,
            },
        };
        let stats = runs
            .iter()
            .flat_map(|r| &r.results)
            .find(|r| r.phase == phase)
            .and_then(|r| r.stats.clone());
        results.push(crate::workload::PhaseResult {
            phase,
            measure,
            stats,
        });
    }
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    let error = runs
        .iter()
        .find_map(|r| r.error.clone())
        .map(|err| format!("{failed} of {} runs failed; first: {err}", runs.len()));
    EngineRun {
        engine: first.engine.clone(),
        version: first.version.clone(),
        settings: first.settings.clone(),
        compaction: first.compaction.clone(),
        results,
        error,
        wall_seconds: runs.iter().map(|r| r.wall_seconds).sum(),
    }
}

/// Per engine and phase, the spread of the runs: "min–max" of the cell.
pub fn render_spread_table(report: &RunReport) -> String {
    let names: Vec<&str> = report.engines.iter().map(|e| e.engine.as_str()).collect();
    let mut out = String::from("| phase (min – max of the runs) |");
    for name in &names {
        let _ = write!(out, " {name} |");
    }
    out.push_str("\n|---|");
    for _ in &names {
        out.push_str("--:|");
    }
    out.push('\n');
    for phase in Phase::ALL {
        let _ = write!(out, "| {} |", phase.label(&report.workload));
        for name in &names {
            let values: Vec<Measure> = report
                .samples
                .iter()
                .filter(|s| s.engine == *name)
                .filter_map(|s| s.measure(phase))
                .collect();
            let lo = values
                .iter()
                .copied()
                .min_by(|a, b| a.rank_value().total_cmp(&b.rank_value()));
            let hi = values
                .iter()
                .copied()
                .max_by(|a, b| a.rank_value().total_cmp(&b.rank_value()));
            match (lo, hi) {
                (Some(lo), Some(hi)) => {
                    let _ = write!(out, " {} – {} |", format_measure(lo), format_measure(hi));
                }
                _ => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The version of `crate_name` recorded in a Cargo.lock text.
pub fn locked_version(lock: &str, crate_name: &str) -> Option<String> {
    let wanted = format!("name = \"{crate_name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_owned());
        }
    }
    None
}

/// A time cell: milliseconds with about three significant digits.
pub fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

/// A size cell in MiB.
pub fn format_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn format_measure(measure: Measure) -> String {
    match measure {
        Measure::Millis(ms) => format_ms(ms),
        Measure::Bytes { apparent, .. } => format_mib(apparent),
    }
}

/// Per engine, whether its value is the best of the row (lowest; ties all
/// win). Engines without a value never win.
pub fn row_winners(values: &[Option<f64>]) -> Vec<bool> {
    let best = values
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    values.iter().map(|v| *v == Some(best)).collect()
}

/// mmsb's standing in one row: "**fastest** (next: 1.8× lmdb)" or
/// "2.3× lmdb" (mmsb's value divided by the best engine's).
pub fn mmsb_standing(phase: Phase, names: &[&str], values: &[Option<f64>]) -> String {
    let Some(mmsb_at) = names.iter().position(|n| *n == "mmsb") else {
        return "—".into();
    };
    let Some(mmsb) = values[mmsb_at] else {
        return "—".into();
    };
    let best_word = if phase.is_time() {
        "fastest"
    } else {
        "smallest"
    };
    let others = names
        .iter()
        .zip(values)
        .enumerate()
        .filter(|(i, _)| *i != mmsb_at)
        .filter_map(|(_, (name, v))| v.map(|v| (*name, v)));
    let best_other = others.fold(None::<(&str, f64)>, |best, (name, v)| match best {
        Some((_, b)) if b <= v => best,
        _ => Some((name, v)),
    });
    match best_other {
        None => best_word.into(),
        Some((name, other)) if mmsb <= other => {
            format!("{best_word} (next: {} {name})", ratio_text(other, mmsb))
        }
        Some((name, other)) => format!("{} {name}", ratio_text(mmsb, other)),
    }
}

/// `a / b` as "2.31×" (`∞×` when `b` is 0).
fn ratio_text(a: f64, b: f64) -> String {
    if b <= 0.0 {
        return "∞×".into();
    }
    let ratio = a / b;
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// The result table in markdown.
pub fn render_table(report: &RunReport) -> String {
    let names: Vec<&str> = report.engines.iter().map(|e| e.engine.as_str()).collect();
    let mut out = String::new();
    out.push_str("| phase |");
    for name in &names {
        let _ = write!(out, " {name} |");
    }
    out.push_str(" mmsb ÷ best |\n|---|");
    for _ in &names {
        out.push_str("--:|");
    }
    out.push_str("---|\n");
    for phase in Phase::ALL {
        let measures: Vec<Option<Measure>> =
            report.engines.iter().map(|e| e.measure(phase)).collect();
        let values: Vec<Option<f64>> = measures.iter().map(|m| m.map(|m| m.rank_value())).collect();
        let winners = if phase.ranked() {
            row_winners(&values)
        } else {
            vec![false; values.len()]
        };
        let _ = write!(out, "| {} |", phase.label(&report.workload));
        for (measure, wins) in measures.iter().zip(&winners) {
            let cell = measure.map_or_else(|| "—".to_owned(), format_measure);
            if *wins {
                let _ = write!(out, " **{cell}** |");
            } else {
                let _ = write!(out, " {cell} |");
            }
        }
        let standing = if phase.ranked() {
            mmsb_standing(phase, &names, &values)
        } else {
            String::new()
        };
        let _ = writeln!(out, " {standing} |");
    }
    out
}

/// The whole results file: context, table, engine settings, failures.
pub fn render_markdown(report: &RunReport) -> String {
    let cfg = &report.workload;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mmsb against redb, LMDB, fjall, SQLite — {}\n",
        report.date
    );
    let _ = writeln!(out, "Command: `{}`\n", report.command);
    let _ = writeln!(out, "Machine: {}.", report.machine.summary());
    let _ = writeln!(
        out,
        "Load average at start `{}`, at end `{}`. mmsb commit `{}`; {}.\n",
        report.machine.load_at_start, report.load_at_end, report.mmsb_commit, report.rustc
    );
    let _ = writeln!(
        out,
        "Workload (the public redb benchmark's, rebuilt): {KEY_BYTES}-byte random keys, \
         {VALUE_BYTES}-byte random values (fastrand, seed {SEED:#x}); bulk load of {} entries; \
         {} individual writes; {} × {} batch writes; point reads of every loaded key in shuffled \
         order; {} range reads of {RANGE_LEN} entries; the same point reads over {} threads; \
         removal of {} loaded keys. Every answer is checked (values by digest) outside the timed \
         part. Each engine runs in its own process on a fresh directory.\n",
        thousands(cfg.entries),
        thousands(cfg.individual_writes),
        thousands(cfg.batch_txs),
        thousands(cfg.batch_len),
        thousands(cfg.range_reads()),
        cfg.read_threads,
        thousands(cfg.removals()),
    );
    out.push_str(&render_table(report));
    let _ = writeln!(
        out,
        "\nTimes in ms (wall clock), sizes the sum of the lengths of every file of the engine; \
         each cell is the median of {} run(s), the engines' runs interleaved. Bold: fastest \
         (smallest) per row. \"mmsb ÷ best\": mmsb's value divided by the best other engine's \
         (\"fastest (next: …)\" when mmsb leads).\n",
        report.runs
    );
    if report.runs > 1 {
        out.push_str("Spread of the runs:\n\n");
        out.push_str(&render_spread_table(report));
        out.push('\n');
    }
    out.push_str("Engines:\n\n");
    for engine in &report.engines {
        let _ = writeln!(
            out,
            "- **{}** ({}): {}. Compaction step: {}. Process wall time {:.1} s.",
            engine.engine, engine.version, engine.settings, engine.compaction, engine.wall_seconds
        );
    }
    let failures: Vec<&EngineRun> = report
        .engines
        .iter()
        .filter(|e| e.error.is_some())
        .collect();
    if !failures.is_empty() {
        out.push_str("\nFailures:\n\n");
        for engine in failures {
            let _ = writeln!(
                out,
                "- {}: {}",
                engine.engine,
                engine.error.as_deref().unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::PhaseResult;

    fn run(engine: &str, bulk_ms: f64, size: u64) -> EngineRun {
        EngineRun {
            engine: engine.into(),
            version: format!("{engine} 1.0"),
            settings: "defaults".into(),
            compaction: "nothing".into(),
            results: vec![
                PhaseResult {
                    phase: Phase::BulkLoad,
                    measure: Measure::Millis(bulk_ms),
                    stats: None,
                },
                PhaseResult {
                    phase: Phase::SizeAfterRemovals,
                    measure: Measure::Bytes {
                        apparent: size,
                        allocated: size,
                    },
                    stats: None,
                },
                PhaseResult {
                    phase: Phase::CompactionStep,
                    measure: Measure::Millis(0.0),
                    stats: None,
                },
            ],
            error: None,
            wall_seconds: 1.0,
        }
    }

    fn report(engines: Vec<EngineRun>) -> RunReport {
        RunReport {
            date: "2026-11-25T00:00:00Z".into(),
            command: "scripts/compare.sh".into(),
            mmsb_commit: "abc".into(),
            rustc: "rustc 1.95.0".into(),
            machine: Machine::describe(std::path::Path::new(".")),
            load_at_end: "0".into(),
            workload: WorkloadConfig::with_entries(1_000),
            runs: 1,
            engines,
            samples: Vec::new(),
        }
    }

    #[test]
    fn median_run_takes_each_cells_median() {
        let runs = [
            run("mmsb", 3.0, 10),
            run("mmsb", 1.0, 30),
            run("mmsb", 2.0, 20),
        ];
        let folded = median_run(&runs);
        assert_eq!(folded.measure(Phase::BulkLoad), Some(Measure::Millis(2.0)));
        assert_eq!(
            folded.measure(Phase::SizeAfterRemovals),
            Some(Measure::Bytes {
                apparent: 20,
                allocated: 20
            })
        );
        assert_eq!(folded.error, None);
        assert_eq!(folded.wall_seconds, 3.0);
        let even = median_run(&runs[..2]);
        assert_eq!(even.measure(Phase::BulkLoad), Some(Measure::Millis(2.0)));
    }

    #[test]
    fn median_run_reports_failed_runs() {
        let mut failed = run("mmsb", 1.0, 1);
        failed.results.clear();
        failed.error = Some("boom".into());
        let folded = median_run(&[run("mmsb", 4.0, 1), failed]);
        assert_eq!(folded.measure(Phase::BulkLoad), Some(Measure::Millis(4.0)));
        assert_eq!(
            folded.error.as_deref(),
            Some("1 of 2 runs failed; first: boom")
        );
    }

    #[test]
    fn spread_table_shows_min_and_max() {
        let mut r = report(vec![run("mmsb", 2.0, 1)]);
        r.runs = 2;
        r.samples = vec![run("mmsb", 2.0, 1), run("mmsb", 5.0, 1)];
        let text = render_spread_table(&r);
        assert!(text.contains("| 2.00 – 5.00 |"), "{text}");
        assert!(render_markdown(&r).contains("Spread of the runs"));
    }

    #[test]
    fn locked_version_reads_the_line_after_the_name() {
        let lock = "[[package]]\nname = \"redb\"\nversion = \"4.6.0\"\n\n[[package]]\nname = \"redb-x\"\nversion = \"9\"\n";
        assert_eq!(locked_version(lock, "redb").as_deref(), Some("4.6.0"));
        assert_eq!(locked_version(lock, "redb-x").as_deref(), Some("9"));
        assert_eq!(locked_version(lock, "heed"), None);
    }

    #[test]
    fn winners_are_the_minimum_and_ignore_missing() {
        assert_eq!(
            row_winners(&[Some(3.0), None, Some(1.0), Some(1.0)]),
            vec![false, false, true, true]
        );
        assert_eq!(row_winners(&[None, None]), vec![false, false]);
    }

    #[test]
    fn standing_says_by_how_much() {
        let names = ["mmsb", "redb", "lmdb"];
        assert_eq!(
            mmsb_standing(Phase::BulkLoad, &names, &[Some(2.0), Some(5.0), Some(3.0)]),
            "fastest (next: 1.50× lmdb)"
        );
        assert_eq!(
            mmsb_standing(Phase::BulkLoad, &names, &[Some(6.0), Some(5.0), Some(3.0)]),
            "2.00× lmdb"
        );
        assert_eq!(
            mmsb_standing(
                Phase::SizeAfterRemovals,
                &names,
                &[Some(60.0), None, Some(3.0)]
            ),
            "20× lmdb"
        );
        assert_eq!(
            mmsb_standing(Phase::Len, &names, &[None, Some(1.0), None]),
            "—"
        );
    }

    #[test]
    fn table_bolds_the_best_and_not_unranked_rows() {
        let text = render_table(&report(vec![
            run("mmsb", 12.5, 3 << 20),
            run("redb", 20.0, 2 << 20),
        ]));
        assert!(
            text.contains("| **12.5** | 20.0 | fastest (next: 1.60× redb) |"),
            "{text}"
        );
        assert!(
            text.contains("| 3.0 MiB | **2.0 MiB** | 1.50× redb |"),
            "{text}"
        );
        assert!(
            text.contains("| compaction step (not ranked) | 0.000 | 0.000 |  |"),
            "{text}"
        );
        // Rows an engine never reached show a dash.
        assert!(text.contains("| len() | — | — | — |"), "{text}");
    }

    #[test]
    fn markdown_lists_failures() {
        let mut failed = run("fjall", 1.0, 1);
        failed.error = Some("fjall: commit failed: boom".into());
        let text = render_markdown(&report(vec![run("mmsb", 1.0, 1), failed]));
        assert!(text.contains("Failures:"));
        assert!(text.contains("- fjall: fjall: commit failed: boom"));
    }

    #[test]
    fn report_round_trips_through_json() -> serde_json::Result<()> {
        let original = report(vec![run("mmsb", 1.0, 1)]);
        let text = serde_json::to_string(&original)?;
        let back: RunReport = serde_json::from_str(&text)?;
        assert_eq!(back, original);
        Ok(())
    }

    #[test]
    fn cells_keep_three_significant_digits() {
        assert_eq!(format_ms(1234.4), "1234");
        assert_eq!(format_ms(12.34), "12.3");
        assert_eq!(format_ms(1.234), "1.23");
        assert_eq!(format_ms(0.01234), "0.012");
        assert_eq!(format_mib(3 << 20), "3.0 MiB");
    }
}
