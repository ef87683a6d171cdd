//! Collecting criterion's results into one benchmark baseline file
//! (`benches/baselines/<date>-<machine id>.json`), for `scripts/bench-all.sh`.
//!
//! criterion writes, per benchmark, `<criterion dir>/<id>/new/benchmark.json`
//! (the id and throughput) and `new/estimates.json` (the statistics, in ns).
//! Only results written at or after `since` are taken, so stale results of
//! benchmarks that no longer exist (or were not run) are left out.
//!
//! Output format (JSON):
//!
//! ```json
//! {
//!   "format": 1,
//!   "date": "2026-05-01T12:00:00Z", "git_commit": "abc123 (dirty)", "rustc": "rustc 1.95.0 ...",
//!   "bench_args": "--warm-up-time 1 --measurement-time 2",
//!   "machine": { "model": "...", "cpus": 2, "memory_bytes": 123, "kernel": "6.1.0", "id": "1a2b3c4d" },
//!   "benchmarks": {
//!     "codec/sparse/encode/raw": { "median_ns": 1234.5,
//!        "throughput": { "unit": "bytes", "per_iteration": 9000, "per_second": 7.3e9 } }
//!   }
//! }
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::error::{RegressError, Result};
use crate::machine::Machine;

/// Version of the benchmark baseline format.
pub const BENCH_BASELINE_FORMAT: u64 = 1;
/// Deepest directory nesting searched below the criterion directory.
const MAX_DEPTH: usize = 12;

/// What a benchmark's iteration processes, as criterion records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// `bytes` or `elements`.
    pub unit: &'static str,
    /// Bytes or elements per iteration.
    pub per_iteration: u64,
}

/// One benchmark's result.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// criterion's full id (`group/function/parameter`).
    pub id: String,
    /// Median time per iteration, nanoseconds.
    pub median_ns: f64,
    /// Throughput, when the benchmark declares one.
    pub throughput: Option<Throughput>,
}

impl BenchResult {
    /// Reads a result from criterion's `benchmark.json` and `estimates.json`.
    pub fn from_criterion(benchmark: &Value, estimates: &Value) -> Result<BenchResult, String> {
        let id = benchmark
            .get("full_id")
            .and_then(Value::as_str)
            .ok_or("benchmark.json has no full_id")?
            .to_string();
        let median_ns = estimates
            .pointer("/median/point_estimate")
            .and_then(Value::as_f64)
            .filter(|ns| ns.is_finite() && *ns >= 0.0)
            .ok_or("estimates.json has no median point estimate")?;
        let throughput = benchmark
            .get("throughput")
            .and_then(Value::as_object)
            .and_then(|object| object.iter().next())
            .and_then(|(kind, amount)| {
                let unit = if kind.starts_with("Bytes") {
                    "bytes"
                } else if kind == "Elements" {
                    "elements"
                } else {
                    return None;
                };
                Some(Throughput {
                    unit,
                    per_iteration: amount.as_u64()?,
                })
            });
        Ok(BenchResult {
            id,
            median_ns,
            throughput,
        })
    }

    /// Units per second at the median time, when there is a throughput.
    pub fn per_second(&self) -> Option<f64> {
        let throughput = self.throughput.as_ref()?;
        (self.median_ns > 0.0).then(|| throughput.per_iteration as f64 * 1e9 / self.median_ns)
    }

    fn to_json(&self) -> Value {
        let mut object = json!({ "median_ns": self.median_ns });
        if let (Some(throughput), Some(map)) = (&self.throughput, object.as_object_mut()) {
            map.insert(
                "throughput".into(),
                json!({
                    "unit": throughput.unit,
                    "per_iteration": throughput.per_iteration,
                    "per_second": self.per_second(),
                }),
            );
        }
        object
    }
}

/// Every result under `criterion_dir` whose `new/estimates.json` was written
/// at or after `since` (all of them when `since` is `None`), sorted by id.
pub fn collect(criterion_dir: &Path, since: Option<SystemTime>) -> Result<Vec<BenchResult>> {
    let mut new_dirs = Vec::new();
    find_new_dirs(criterion_dir, 0, &mut new_dirs)?;
    let mut results = Vec::new();
    for dir in new_dirs {
        let estimates_path = dir.join("estimates.json");
        let modified = std::fs::metadata(&estimates_path)
            .and_then(|meta| meta.modified())
            .map_err(|err| {
                RegressError::io(format!("reading {}", estimates_path.display()), err)
            })?;
        if since.is_some_and(|since| modified < since) {
            continue;
        }
        let benchmark = read_json(&dir.join("benchmark.json"))?;
        let estimates = read_json(&estimates_path)?;
        let result = BenchResult::from_criterion(&benchmark, &estimates)
            .map_err(|reason| RegressError::bad_file(&dir, reason))?;
        results.push(result);
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(results)
}

/// Collects the `new` directories holding both criterion files.
fn find_new_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|err| RegressError::io(format!("listing {}", dir.display()), err))?;
    for entry in entries {
        let entry =
            entry.map_err(|err| RegressError::io(format!("listing {}", dir.display()), err))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let is_new = entry.file_name() == "new";
        if is_new && path.join("estimates.json").is_file() && path.join("benchmark.json").is_file()
        {
            out.push(path);
        } else if !is_new && entry.file_name() != "report" {
            find_new_dirs(&path, depth + 1, out)?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| RegressError::io(format!("reading {}", path.display()), err))?;
    serde_json::from_str(&text)
        .map_err(|err| RegressError::bad_file(path, format!("not JSON: {err}")))
}

/// Where and when the results were taken.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// ISO-8601 UTC time of the run.
    pub date: String,
    /// The git commit benchmarked (with a dirty mark when the tree differs).
    pub git_commit: String,
    /// `rustc -V`.
    pub rustc: String,
    /// The arguments the benchmark binaries were given (criterion's flags).
    pub bench_args: String,
    /// The machine.
    pub machine: Machine,
}

/// The benchmark baseline document.
pub fn report_json(info: &RunInfo, results: &[BenchResult]) -> Value {
    let mut benchmarks = Map::new();
    for result in results {
        benchmarks.insert(result.id.clone(), result.to_json());
    }
    json!({
        "format": BENCH_BASELINE_FORMAT,
        "date": info.date,
        "git_commit": info.git_commit,
        "rustc": info.rustc,
        "bench_args": info.bench_args,
        "machine": {
            "model": info.machine.model,
            "cpus": info.machine.cpus,
            "memory_bytes": info.machine.memory_bytes,
            "kernel": info.machine.kernel,
            "id": info.machine.id,
        },
        "benchmarks": Value::Object(benchmarks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write_result(root: &Path, dir: &str, full_id: &str, median: f64, throughput: Value) {
        let new = root.join(dir).join("new");
        std::fs::create_dir_all(&new).unwrap_or_else(|err| panic!("mkdir: {err}"));
        let benchmark = json!({ "full_id": full_id, "throughput": throughput });
        let estimates =
            json!({ "median": { "point_estimate": median }, "mean": { "point_estimate": 1.0 } });
        std::fs::write(new.join("benchmark.json"), benchmark.to_string())
            .unwrap_or_else(|err| panic!("{err}"));
        std::fs::write(new.join("estimates.json"), estimates.to_string())
            .unwrap_or_else(|err| panic!("{err}"));
    }

    #[test]
    fn collects_medians_and_throughputs() {
        let root = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        write_result(
            root.path(),
            "g/f/1",
            "g/f/1",
            2000.0,
            json!({ "Bytes": 4000 }),
        );
        write_result(
            root.path(),
            "g/f/2",
            "g/f/2",
            500.0,
            json!({ "Elements": 10 }),
        );
        write_result(root.path(), "h", "h", 7.5, Value::Null);
        std::fs::create_dir_all(root.path().join("g/report")).unwrap_or_else(|err| panic!("{err}"));
        let results = collect(root.path(), None).unwrap_or_else(|err| panic!("collect: {err}"));
        let ids: Vec<_> = results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["g/f/1", "g/f/2", "h"]);
        assert_eq!(results[0].per_second(), Some(2e9));
        assert_eq!(
            results[1].throughput.as_ref().map(|t| t.unit),
            Some("elements")
        );
        assert_eq!(results[1].per_second(), Some(2e7));
        assert_eq!(results[2].throughput, None);
        assert_eq!(results[2].median_ns, 7.5);
    }

    #[test]
    fn results_older_than_since_are_skipped() {
        let root = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        write_result(root.path(), "old", "old", 1.0, Value::Null);
        let future = SystemTime::now() + Duration::from_secs(3600);
        let results = collect(root.path(), Some(future)).unwrap_or_else(|err| panic!("{err}"));
        assert!(results.is_empty());
    }

    #[test]
    fn a_malformed_estimate_is_an_error() {
        let benchmark = json!({ "full_id": "x" });
        assert!(BenchResult::from_criterion(&benchmark, &json!({})).is_err());
        assert!(BenchResult::from_criterion(
            &json!({}),
            &json!({"median": {"point_estimate": 1.0}})
        )
        .is_err());
    }

    #[test]
    fn the_report_has_every_field() {
        let info = RunInfo {
            date: "2026-01-01T00:00:00Z".into(),
            git_commit: "abc".into(),
            rustc: "rustc x".into(),
            bench_args: "--quick".into(),
            machine: Machine::detect(),
        };
        let result = BenchResult {
            id: "a/b".into(),
            median_ns: 10.0,
            throughput: Some(Throughput {
                unit: "bytes",
                per_iteration: 100,
            }),
        };
        let report = report_json(&info, &[result]);
        assert_eq!(
            report.pointer("/benchmarks/a~1b/median_ns"),
            Some(&json!(10.0))
        );
        assert_eq!(
            report.pointer("/benchmarks/a~1b/throughput/per_second"),
            Some(&json!(1e10))
        );
        assert!(report.pointer("/machine/model").is_some());
        assert_eq!(report["git_commit"], "abc");
        assert_eq!(report["bench_args"], "--quick");
    }
}
