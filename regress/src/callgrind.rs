//! Running one scenario under `valgrind --tool=callgrind` and reading its
//! instruction count back.
//!
//! Collection is off at start (`--collect-atstart=no`) and toggled on entry
//! to and exit from the scenario's `#[no_mangle]` entry function
//! (`--toggle-collect=<symbol>`), so process start-up, the scenario's setup
//! and the teardown are not counted; the callees of the entry function are.
//! The count is the `totals:` line of the output file (or `summary:`, which
//! older valgrinds write instead).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{RegressError, Result};
use crate::scenarios::Scenario;

/// Prefix of the line `mmsb-regress run` prints with the scenario's checksum.
pub const CHECKSUM_PREFIX: &str = "checksum=";
/// Prefix of the line `mmsb-regress run` prints with the CPU features it sees.
pub const FEATURES_PREFIX: &str = "cpu_features=";
/// Lines of valgrind's own output quoted when it fails.
const QUOTED_STDERR_LINES: usize = 20;

/// What one callgrind run of a scenario measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Instructions executed inside the entry function (callgrind `Ir`).
    pub ir: u64,
    /// The checksum the scenario printed.
    pub checksum: Option<u64>,
    /// The CPU features the scenario saw (under valgrind: valgrind's CPU).
    pub cpu_features: String,
}

/// The `Ir` total of a callgrind output file: the `totals:` line, or the
/// `summary:` line when there is none. `None` when neither is there.
pub fn parse_total_ir(callgrind_out: &str) -> Option<u64> {
    let find = |prefix: &str| {
        callgrind_out
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|first| first.parse::<u64>().ok())
    };
    find("totals:").or_else(|| find("summary:"))
}

/// Reads the `checksum=` and `cpu_features=` lines of a scenario's output.
pub fn parse_run_output(stdout: &str) -> (Option<u64>, String) {
    let mut checksum = None;
    let mut features = String::new();
    for line in stdout.lines() {
        if let Some(hex) = line.strip_prefix(CHECKSUM_PREFIX) {
            checksum = u64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok();
        } else if let Some(list) = line.strip_prefix(FEATURES_PREFIX) {
            features = list.trim().to_string();
        }
    }
    (checksum, features)
}

/// `valgrind --version` of `valgrind`, or `None` when it cannot be run.
pub fn valgrind_version(valgrind: &Path) -> Option<String> {
    let output = Command::new(valgrind).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// How to run callgrind.
#[derive(Clone, Debug)]
pub struct Runner {
    /// The valgrind executable.
    pub valgrind: PathBuf,
    /// The `mmsb-regress` executable to measure (an optimized build).
    pub exe: PathBuf,
    /// Where the callgrind output files go.
    pub out_dir: PathBuf,
}

impl Runner {
    /// Runs `scenario` under callgrind and returns its count.
    pub fn measure(&self, scenario: &Scenario) -> Result<Measurement> {
        let out_file = self.out_dir.join(format!("{}.callgrind", scenario.name));
        let output = Command::new(&self.valgrind)
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg("--collect-atstart=no")
            .arg(format!("--toggle-collect={}", scenario.entry_symbol))
            .arg(&self.exe)
            .arg("run")
            .arg(scenario.name)
            .output()
            .map_err(|err| {
                RegressError::io(format!("starting {}", self.valgrind.display()), err)
            })?;
        if !output.status.success() {
            return Err(RegressError::Callgrind(format!(
                "scenario {} exited with {}:\n{}",
                scenario.name,
                output.status,
                tail(
                    &String::from_utf8_lossy(&output.stderr),
                    QUOTED_STDERR_LINES
                )
            )));
        }
        let text = std::fs::read_to_string(&out_file)
            .map_err(|err| RegressError::io(format!("reading {}", out_file.display()), err))?;
        let ir = parse_total_ir(&text).ok_or_else(|| {
            RegressError::bad_file(&out_file, "no totals: or summary: line with an Ir count")
        })?;
        if ir == 0 {
            return Err(RegressError::Callgrind(format!(
                "scenario {}: no instruction was counted, so the toggle symbol {} was never \
                 entered (stripped binary, or the entry function was inlined)",
                scenario.name, scenario.entry_symbol
            )));
        }
        let (checksum, cpu_features) = parse_run_output(&String::from_utf8_lossy(&output.stdout));
        Ok(Measurement {
            ir,
            checksum,
            cpu_features,
        })
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_win_over_summary() {
        let text = "version: 1\ncmd: x\nevents: Ir\nsummary: 99\nfn=(1) main\n5 3\ntotals: 1234\n";
        assert_eq!(parse_total_ir(text), Some(1234));
    }

    #[test]
    fn summary_is_used_without_totals() {
        assert_eq!(parse_total_ir("events: Ir\nsummary: 42 7\n"), Some(42));
    }

    #[test]
    fn no_count_is_none() {
        assert_eq!(parse_total_ir("events: Ir\n"), None);
        assert_eq!(parse_total_ir("totals: lots\n"), None);
    }

    #[test]
    fn run_output_lines_are_read() {
        let (checksum, features) =
            parse_run_output("scenario x\nchecksum=0x1f\ncpu_features=avx2 bmi2\n");
        assert_eq!(checksum, Some(0x1f));
        assert_eq!(features, "avx2 bmi2");
        assert_eq!(parse_run_output("nothing"), (None, String::new()));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
