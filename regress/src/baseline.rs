//! The committed instruction-count baseline (`regress/baseline.json`) and the
//! comparison that decides whether the gate passes.
//!
//! File format (JSON, one object):
//!
//! ```json
//! {
//!   "format": 1,
//!   "threshold_percent": 10.0,
//!   "environment": { "rustc": "rustc 1.95.0 (...)", "valgrind": "valgrind-3.19.0",
//!                    "cpu_features": "sse4.2 pclmulqdq ...", "machine": "..." },
//!   "scenarios": { "delta_ops": { "ir": 12345, "gated": true, "checksum": "0x..." }, ... }
//! }
//! ```
//!
//! `ir` is callgrind's instruction count (event `Ir`) of the scenario's entry
//! function, callees included. A gated scenario fails the gate when its count
//! grows by more than `threshold_percent`; a drop by as much is flagged so the
//! baseline gets refreshed (`scripts/regress-check.sh --update`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{RegressError, Result};

/// Version of the baseline file format.
pub const BASELINE_FORMAT: u64 = 1;
/// Default change, in percent, past which a gated scenario fails.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 10.0;

/// What the counts depend on besides the code: recorded with the baseline and
/// compared (with a warning, never a failure) on every check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// `rustc -V` of the compiler that built the measured binary.
    pub rustc: String,
    /// `valgrind --version`.
    pub valgrind: String,
    /// CPU features the binary saw under valgrind (they steer crc32fast, zstd
    /// and glibc's string functions).
    pub cpu_features: String,
    /// The machine, for the reader (not compared).
    pub machine: String,
}

/// One scenario's count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The scenario's name.
    pub name: String,
    /// Instructions executed (callgrind `Ir`).
    pub ir: u64,
    /// Whether a regression fails the gate.
    pub gated: bool,
    /// The scenario's result checksum; a change means the work itself changed.
    pub checksum: Option<u64>,
}

/// A baseline: the counts and the environment they were taken in.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// Where the counts were taken.
    pub environment: Environment,
    /// Change in percent past which a gated scenario fails.
    pub threshold_percent: f64,
    /// The counts, in report order.
    pub entries: Vec<Entry>,
}

impl Baseline {
    /// The baseline as a JSON value (the file's content).
    pub fn to_json(&self) -> Value {
        let mut scenarios = Map::new();
        for entry in &self.entries {
            let mut object = json!({ "ir": entry.ir, "gated": entry.gated });
            if let (Some(checksum), Some(map)) = (entry.checksum, object.as_object_mut()) {
                map.insert("checksum".into(), Value::String(format!("{checksum:#x}")));
            }
            scenarios.insert(entry.name.clone(), object);
        }
        json!({
            "format": BASELINE_FORMAT,
            "threshold_percent": self.threshold_percent,
            "environment": {
                "rustc": self.environment.rustc,
                "valgrind": self.environment.valgrind,
                "cpu_features": self.environment.cpu_features,
                "machine": self.environment.machine,
            },
            "scenarios": Value::Object(scenarios),
        })
    }

    /// Reads a baseline from its JSON value; the error says what is missing.
    pub fn from_json(value: &Value) -> Result<Baseline, String> {
        let format = value.get("format").and_then(Value::as_u64);
        if format != Some(BASELINE_FORMAT) {
            return Err(format!(
                "format is {format:?}, this tool reads {BASELINE_FORMAT}"
            ));
        }
        let threshold_percent = value
            .get("threshold_percent")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t > 0.0)
            .ok_or("threshold_percent is missing or not a positive number")?;
        let env = value.get("environment").ok_or("environment is missing")?;
        let text = |key: &str| {
            env.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let environment = Environment {
            rustc: text("rustc"),
            valgrind: text("valgrind"),
            cpu_features: text("cpu_features"),
            machine: text("machine"),
        };
        let scenarios = value
            .get("scenarios")
            .and_then(Value::as_object)
            .ok_or("scenarios is missing or not an object")?;
        let mut entries = Vec::with_capacity(scenarios.len());
        for (name, object) in scenarios {
            let ir = object
                .get("ir")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("scenario {name}: ir is missing or not a count"))?;
            let gated = object
                .get("gated")
                .and_then(Value::as_bool)
                .ok_or_else(|| format!("scenario {name}: gated is missing or not a boolean"))?;
            let checksum = object
                .get("checksum")
                .and_then(Value::as_str)
                .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok());
            entries.push(Entry {
                name: name.clone(),
                ir,
                gated,
                checksum,
            });
        }
        Ok(Baseline {
            environment,
            threshold_percent,
            entries,
        })
    }

    /// Loads the baseline file at `path`.
    pub fn load(path: &Path) -> Result<Baseline> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| RegressError::io(format!("reading {}", path.display()), err))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|err| RegressError::bad_file(path, format!("not JSON: {err}")))?;
        Baseline::from_json(&value).map_err(|reason| RegressError::bad_file(path, reason))
    }

    /// Writes the baseline to `path` (pretty-printed, newline-terminated).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|err| RegressError::bad_file(path, format!("serializing: {err}")))?;
        text.push('\n');
        std::fs::write(path, text)
            .map_err(|err| RegressError::io(format!("writing {}", path.display()), err))
    }
}

/// How one scenario's count compares with the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the threshold either way.
    Unchanged,
    /// Grew by more than the threshold.
    Regressed,
    /// Shrank by more than the threshold: refresh the baseline.
    Improved,
    /// Not in the baseline.
    New,
    /// In the baseline but not measured (the scenario was removed or renamed).
    Missing,
}

/// The change from `baseline` to `current` in percent of `baseline`
/// (`+15.0` = 15% more instructions). A zero baseline gives infinity for
/// any growth.
pub fn change_percent(baseline: u64, current: u64) -> f64 {
    if baseline == 0 {
        return if current == 0 { 0.0 } else { f64::INFINITY };
    }
    (current as f64 - baseline as f64) * 100.0 / baseline as f64
}

/// Classifies a change: more than `threshold_percent` up is a regression,
/// more than `threshold_percent` down an improvement; exactly at the
/// threshold still passes.
pub fn classify(baseline: u64, current: u64, threshold_percent: f64) -> Verdict {
    let change = change_percent(baseline, current);
    if change > threshold_percent {
        Verdict::Regressed
    } else if change < -threshold_percent {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The scenario.
    pub name: String,
    /// Whether it gates.
    pub gated: bool,
    /// The baseline count, if the baseline has the scenario.
    pub baseline_ir: Option<u64>,
    /// The measured count, if the scenario was measured.
    pub current_ir: Option<u64>,
    /// The outcome.
    pub verdict: Verdict,
}

/// The outcome of a check: one row per scenario and the warnings.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The rows: measured scenarios in order, then baseline-only ones.
    pub rows: Vec<Row>,
    /// Environment and checksum differences: reasons to distrust, not to fail.
    pub warnings: Vec<String>,
    /// The threshold the verdicts used, percent.
    pub threshold_percent: f64,
}

/// Compares the measured `current` counts (taken in `environment`) with `baseline`.
pub fn compare(baseline: &Baseline, current: &[Entry], environment: &Environment) -> Report {
    let threshold = baseline.threshold_percent;
    let mut warnings = environment_warnings(&baseline.environment, environment);
    let known: BTreeMap<&str, &Entry> = baseline
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let mut rows = Vec::with_capacity(current.len());
    for entry in current {
        let old = known.get(entry.name.as_str());
        let verdict = match old {
            Some(old) => classify(old.ir, entry.ir, threshold),
            None => Verdict::New,
        };
        if let Some(old) =
            old.filter(|old| old.checksum.is_some() && old.checksum != entry.checksum)
        {
            warnings.push(format!(
                "{}: the result checksum changed ({:#x} -> {:#x}): the workload itself changed",
                entry.name,
                old.checksum.unwrap_or_default(),
                entry.checksum.unwrap_or_default()
            ));
        }
        rows.push(Row {
            name: entry.name.clone(),
            gated: entry.gated,
            baseline_ir: old.map(|old| old.ir),
            current_ir: Some(entry.ir),
            verdict,
        });
    }
    for old in &baseline.entries {
        if !current.iter().any(|entry| entry.name == old.name) {
            rows.push(Row {
                name: old.name.clone(),
                gated: old.gated,
                baseline_ir: Some(old.ir),
                current_ir: None,
                verdict: Verdict::Missing,
            });
        }
    }
    Report {
        rows,
        warnings,
        threshold_percent: threshold,
    }
}

/// Warnings for every compared field of the environment that differs.
fn environment_warnings(baseline: &Environment, current: &Environment) -> Vec<String> {
    let fields = [
        ("rustc", &baseline.rustc, &current.rustc),
        ("valgrind", &baseline.valgrind, &current.valgrind),
        (
            "CPU features under valgrind",
            &baseline.cpu_features,
            &current.cpu_features,
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(what, old, new)| {
            format!("{what} differs from the baseline's ({old:?} there, {new:?} here): counts may shift")
        })
        .collect()
}

impl Report {
    /// True when a gated scenario regressed past the threshold.
    pub fn failed(&self) -> bool {
        self.rows
            .iter()
            .any(|row| row.gated && row.verdict == Verdict::Regressed)
    }

    /// True when any scenario moved past the threshold, is new or is missing:
    /// the baseline should be refreshed.
    pub fn baseline_stale(&self) -> bool {
        self.rows
            .iter()
            .any(|row| row.verdict != Verdict::Unchanged)
    }

    /// The report as a table, then the warnings.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:>5} {:>14} {:>14} {:>9}  verdict",
            "scenario", "gated", "baseline Ir", "current Ir", "change"
        );
        for row in &self.rows {
            let change = match (row.baseline_ir, row.current_ir) {
                (Some(old), Some(new)) => format!("{:+.2}%", change_percent(old, new)),
                _ => "-".to_string(),
            };
            let count = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:<16} {:>5} {:>14} {:>14} {:>9}  {}",
                row.name,
                if row.gated { "yes" } else { "info" },
                count(row.baseline_ir),
                count(row.current_ir),
                change,
                self.verdict_text(row)
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }

    fn verdict_text(&self, row: &Row) -> String {
        let threshold = self.threshold_percent;
        match (row.verdict, row.gated) {
            (Verdict::Unchanged, _) => "ok".to_string(),
            (Verdict::Regressed, true) => format!("REGRESSION (> +{threshold}%)"),
            (Verdict::Regressed, false) => format!("slower (> +{threshold}%, informational)"),
            (Verdict::Improved, _) => format!("improved (< -{threshold}%): refresh the baseline"),
            (Verdict::New, _) => "new: not in the baseline".to_string(),
            (Verdict::Missing, _) => "missing: in the baseline, not measured".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ir: u64, gated: bool) -> Entry {
        Entry {
            name: name.to_string(),
            ir,
            gated,
            checksum: Some(7),
        }
    }

    fn baseline(entries: Vec<Entry>) -> Baseline {
        Baseline {
            environment: Environment {
                rustc: "rustc 1.95.0".into(),
                valgrind: "valgrind-3.19.0".into(),
                cpu_features: "avx2".into(),
                machine: "test".into(),
            },
            threshold_percent: DEFAULT_THRESHOLD_PERCENT,
            entries,
        }
    }

    #[test]
    fn fifteen_percent_more_fails_five_percent_passes() {
        assert_eq!(classify(1_000_000, 1_150_000, 10.0), Verdict::Regressed);
        assert_eq!(classify(1_000_000, 1_050_000, 10.0), Verdict::Unchanged);
        assert_eq!(
            classify(1_000_000, 1_100_000, 10.0),
            Verdict::Unchanged,
            "at the threshold passes"
        );
        assert_eq!(classify(1_000_000, 1_100_001, 10.0), Verdict::Regressed);
        assert_eq!(classify(1_000_000, 850_000, 10.0), Verdict::Improved);
        assert_eq!(classify(1_000_000, 950_000, 10.0), Verdict::Unchanged);
    }

    #[test]
    fn change_percent_is_relative_to_the_baseline() {
        assert_eq!(change_percent(200, 230), 15.0);
        assert_eq!(change_percent(200, 190), -5.0);
        assert_eq!(change_percent(0, 0), 0.0);
        assert!(change_percent(0, 1).is_infinite());
    }

    #[test]
    fn a_gated_regression_fails_the_report() {
        let base = baseline(vec![entry("a", 1000, true), entry("b", 1000, true)]);
        let current = [entry("a", 1150, true), entry("b", 1050, true)];
        let report = compare(&base, &current, &base.environment);
        assert!(report.failed());
        assert_eq!(report.rows[0].verdict, Verdict::Regressed);
        assert_eq!(report.rows[1].verdict, Verdict::Unchanged);
        assert!(report.render().contains("REGRESSION"));
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn a_five_percent_change_passes() {
        let base = baseline(vec![entry("a", 1000, true)]);
        let report = compare(&base, &[entry("a", 1050, true)], &base.environment);
        assert!(!report.failed());
        assert!(!report.baseline_stale());
    }

    #[test]
    fn informational_regressions_and_improvements_do_not_fail() {
        let base = baseline(vec![entry("simd", 1000, false), entry("a", 1000, true)]);
        let current = [entry("simd", 2000, false), entry("a", 500, true)];
        let report = compare(&base, &current, &base.environment);
        assert!(!report.failed());
        assert!(report.baseline_stale());
        assert_eq!(report.rows[1].verdict, Verdict::Improved);
        assert!(report.render().contains("refresh the baseline"));
    }

    #[test]
    fn new_and_missing_scenarios_are_reported_not_failed() {
        let base = baseline(vec![entry("gone", 1000, true)]);
        let report = compare(&base, &[entry("fresh", 10, true)], &base.environment);
        let verdicts: Vec<_> = report.rows.iter().map(|row| row.verdict).collect();
        assert_eq!(verdicts, [Verdict::New, Verdict::Missing]);
        assert!(!report.failed());
        assert!(report.baseline_stale());
    }

    #[test]
    fn environment_and_checksum_differences_warn() {
        let base = baseline(vec![entry("a", 1000, true)]);
        let mut env = base.environment.clone();
        env.rustc = "rustc 1.96.0".into();
        env.machine = "another machine".into();
        let mut changed = entry("a", 1000, true);
        changed.checksum = Some(8);
        let report = compare(&base, &[changed], &env);
        assert!(!report.failed());
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("rustc"));
        assert!(report.warnings[1].contains("checksum"));
    }

    #[test]
    fn json_round_trips() {
        let base = baseline(vec![entry("a", 123, true), entry("b", 456, false)]);
        let back = Baseline::from_json(&base.to_json());
        assert_eq!(back, Ok(base));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for text in [
            r#"{}"#,
            r#"{"format": 2}"#,
            r#"{"format": 1, "threshold_percent": -1, "environment": {}, "scenarios": {}}"#,
            r#"{"format": 1, "threshold_percent": 10, "environment": {}, "scenarios": {"a": {"ir": "x", "gated": true}}}"#,
            r#"{"format": 1, "threshold_percent": 10, "environment": {}, "scenarios": {"a": {"ir": 1}}}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            assert!(Baseline::from_json(&value).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        let path = dir.path().join("baseline.json");
        let base = baseline(vec![entry("a", 1, true)]);
        assert!(base.save(&path).is_ok());
        assert_eq!(Baseline::load(&path).ok(), Some(base));
        assert!(Baseline::load(&dir.path().join("missing.json")).is_err());
        std::fs::write(&path, "not json").unwrap_or_else(|err| panic!("{err}"));
        assert!(matches!(
            Baseline::load(&path),
            Err(RegressError::BadFile { .. })
        ));
    }
}
