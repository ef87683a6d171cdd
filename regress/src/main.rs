//! `mmsb-regress`: the instruction-count gate and the benchmark collector.
//!
//! ```text
//! mmsb-regress list
//! mmsb-regress run <scenario>
//! mmsb-regress gate [--baseline PATH] [--update] [--threshold PCT]
//!                   [--valgrind PATH] [--jobs N] [--out-dir DIR]
//! mmsb-regress collect-criterion --criterion-dir DIR --out-dir DIR --date ISO8601
//!                   [--since UNIX_SECONDS] [--git-commit TEXT] [--rustc TEXT]
//!                   [--bench-args TEXT]
//! ```
//!
//! Exit status: 0 success, 1 a gated scenario regressed, 2 an error.
//! CI runs the gate through `scripts/regress-check.sh`, which builds this
//! binary with `--release` first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use mmsb_regress::baseline::Baseline;
use mmsb_regress::callgrind::{CHECKSUM_PREFIX, FEATURES_PREFIX};
use mmsb_regress::criterion_report::{collect, report_json, RunInfo};
use mmsb_regress::gate::{run_gate, GateOptions, GateOutcome, BUILD_RUSTC};
use mmsb_regress::machine::{cpu_features, sanitize, Machine};
use mmsb_regress::scenarios::{find, SCENARIOS};
use mmsb_regress::{RegressError, Result};

/// Exit status when a gated scenario regressed.
const EXIT_REGRESSED: u8 = 1;
/// Exit status on any error.
const EXIT_ERROR: u8 = 2;
/// Default baseline path, relative to the workspace root.
const DEFAULT_BASELINE: &str = "regress/baseline.json";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("mmsb-regress: {err}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn dispatch(args: &[String]) -> Result<u8> {
    let (command, rest) = args.split_first().ok_or_else(|| {
        RegressError::Usage("a command: list, run, gate or collect-criterion".into())
    })?;
    match command.as_str() {
        "list" => list(),
        "run" => run(rest),
        "gate" => gate(&Flags::parse(rest, &["--update"])?),
        "collect-criterion" => collect_criterion(&Flags::parse(rest, &[])?),
        other => Err(RegressError::Usage(format!("unknown command {other:?}"))),
    }
}

fn list() -> Result<u8> {
    for scenario in SCENARIOS {
        let gated = if scenario.gated { "gated" } else { "info " };
        println!("{:<16} {gated}  {}", scenario.name, scenario.about);
    }
    Ok(0)
}

fn run(args: &[String]) -> Result<u8> {
    let [name] = args else {
        return Err(RegressError::Usage("run <scenario> (see `list`)".into()));
    };
    let scenario =
        find(name).ok_or_else(|| RegressError::Usage(format!("unknown scenario {name:?}")))?;
    let checksum = scenario.run()?;
    println!("scenario={}", scenario.name);
    println!("{CHECKSUM_PREFIX}{checksum:#x}");
    println!("{FEATURES_PREFIX}{}", cpu_features());
    Ok(0)
}

fn gate(flags: &Flags) -> Result<u8> {
    let jobs = match flags.value("--jobs") {
        Some(text) => parse_number(text, "--jobs")?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let threshold_percent = flags
        .value("--threshold")
        .map(|text| {
            text.parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| {
                    RegressError::Usage(format!("--threshold {text:?} is not a positive number"))
                })
        })
        .transpose()?;
    let options = GateOptions {
        baseline: PathBuf::from(flags.value("--baseline").unwrap_or(DEFAULT_BASELINE)),
        update: flags.has("--update"),
        threshold_percent,
        valgrind: PathBuf::from(flags.value("--valgrind").unwrap_or("valgrind")),
        jobs,
        out_dir: flags
            .value("--out-dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("mmsb-regress-{}", std::process::id()))
            }),
    };
    println!("instruction counts (callgrind Ir of each scenario's entry function), {BUILD_RUSTC}");
    let outcome = run_gate(&options);
    if flags.value("--out-dir").is_none() {
        // Our own temporary directory: the callgrind files are not wanted.
        let _ = std::fs::remove_dir_all(&options.out_dir);
    }
    match outcome? {
        GateOutcome::Updated(baseline) => {
            print_updated(&baseline, &options);
            Ok(0)
        }
        GateOutcome::Compared(report) => {
            print!("{}", report.render());
            if report.failed() {
                println!(
                    "FAILED: a gated scenario needs more than {}% more instructions than the baseline.\n\
                     If the change is intended, refresh the baseline on the baseline machine:\n  \
                     scripts/regress-check.sh --update   (then commit {})",
                    report.threshold_percent,
                    options.baseline.display()
                );
                return Ok(EXIT_REGRESSED);
            }
            if report.baseline_stale() {
                println!(
                    "passed, but the baseline is stale (see above): refresh it with \
                     scripts/regress-check.sh --update and commit {}",
                    options.baseline.display()
                );
            } else {
                println!(
                    "passed: every gated scenario within {}% of the baseline",
                    report.threshold_percent
                );
            }
            Ok(0)
        }
    }
}

fn print_updated(baseline: &Baseline, options: &GateOptions) {
    for entry in &baseline.entries {
        let gated = if entry.gated { "gated" } else { "info " };
        println!("{:<16} {gated} {:>14}", entry.name, entry.ir);
    }
    println!(
        "baseline written to {} (threshold {}%, {}, CPU features under valgrind: {})",
        options.baseline.display(),
        baseline.threshold_percent,
        baseline.environment.rustc,
        baseline.environment.cpu_features
    );
}

fn collect_criterion(flags: &Flags) -> Result<u8> {
    let required = |name: &str| {
        flags
            .value(name)
            .ok_or_else(|| RegressError::Usage(format!("collect-criterion needs {name}")))
    };
    let criterion_dir = PathBuf::from(required("--criterion-dir")?);
    let out_dir = PathBuf::from(required("--out-dir")?);
    let date = required("--date")?.to_string();
    let since = flags
        .value("--since")
        .map(|text| {
            parse_number(text, "--since")
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
        })
        .transpose()?;
    let results = collect(&criterion_dir, since)?;
    if results.is_empty() {
        return Err(RegressError::Usage(format!(
            "no criterion results under {} newer than the run's start",
            criterion_dir.display()
        )));
    }
    let machine = Machine::detect();
    let info = RunInfo {
        date: date.clone(),
        git_commit: flags.value("--git-commit").unwrap_or("unknown").to_string(),
        rustc: flags.value("--rustc").unwrap_or(BUILD_RUSTC).to_string(),
        bench_args: flags.value("--bench-args").unwrap_or("").to_string(),
        machine: machine.clone(),
    };
    let day: String = date.chars().take("YYYY-MM-DD".len()).collect();
    let path = out_dir.join(format!("{}-{}.json", sanitize(&day), machine.id));
    let mut text = serde_json::to_string_pretty(&report_json(&info, &results))
        .map_err(|err| RegressError::bad_file(&path, format!("serializing: {err}")))?;
    text.push('\n');
    std::fs::create_dir_all(&out_dir)
        .map_err(|err| RegressError::io(format!("creating {}", out_dir.display()), err))?;
    std::fs::write(&path, text)
        .map_err(|err| RegressError::io(format!("writing {}", path.display()), err))?;
    for result in &results {
        let rate = result.per_second().map_or(String::new(), |rate| {
            let unit = result.throughput.as_ref().map_or("", |t| t.unit);
            format!("  {rate:.4e} {unit}/s")
        });
        println!("{:<60} {:>14.1} ns{rate}", result.id, result.median_ns);
    }
    println!("{} benchmarks written to {}", results.len(), path.display());
    Ok(0)
}

fn parse_number(text: &str, flag: &str) -> Result<usize> {
    text.parse::<usize>()
        .map_err(|_| RegressError::Usage(format!("{flag} {text:?} is not a whole number")))
}

/// `--name value` pairs and bare `--switch`es.
struct Flags {
    pairs: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Flags {
    /// Parses `args`; names in `switches` take no value.
    fn parse(args: &[String], switches: &[&str]) -> Result<Flags> {
        let mut flags = Flags {
            pairs: Vec::new(),
            switches: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if !arg.starts_with("--") {
                return Err(RegressError::Usage(format!("unexpected argument {arg:?}")));
            }
            if switches.contains(&arg.as_str()) {
                flags.switches.push(arg.clone());
            } else {
                let value = iter
                    .next()
                    .ok_or_else(|| RegressError::Usage(format!("{arg} needs a value")))?;
                flags.pairs.push((arg.clone(), value.clone()));
            }
        }
        Ok(flags)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|switch| switch == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn flags_take_values_and_switches() {
        let flags = Flags::parse(
            &strings(&["--jobs", "2", "--update", "--jobs", "3"]),
            &["--update"],
        );
        let flags = flags.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(flags.value("--jobs"), Some("3"), "the last value wins");
        assert!(flags.has("--update"));
        assert!(!flags.has("--jobs"));
        assert_eq!(flags.value("--baseline"), None);
    }

    #[test]
    fn malformed_flags_are_usage_errors() {
        for args in [&["--jobs"][..], &["positional"][..]] {
            assert!(matches!(
                Flags::parse(&strings(args), &[]),
                Err(RegressError::Usage(_))
            ));
        }
    }

    #[test]
    fn unknown_commands_and_scenarios_are_usage_errors() {
        assert!(matches!(dispatch(&[]), Err(RegressError::Usage(_))));
        assert!(matches!(
            dispatch(&strings(&["frobnicate"])),
            Err(RegressError::Usage(_))
        ));
        assert!(matches!(
            dispatch(&strings(&["run", "nope"])),
            Err(RegressError::Usage(_))
        ));
        assert!(matches!(
            parse_number("x", "--jobs"),
            Err(RegressError::Usage(_))
        ));
    }
}
