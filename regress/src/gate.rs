//! The gate: measure every scenario under callgrind (a few at a time), then
//! compare with the committed baseline or, with `--update`, rewrite it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::baseline::{compare, Baseline, Entry, Environment, Report, DEFAULT_THRESHOLD_PERCENT};
use crate::callgrind::{valgrind_version, Measurement, Runner};
use crate::error::{RegressError, Result};
use crate::machine::Machine;
use crate::scenarios::{Scenario, SCENARIOS};

/// The compiler that built this binary (`rustc -V`, plus any RUSTFLAGS), from `build.rs`.
pub const BUILD_RUSTC: &str = env!("MMSB_REGRESS_RUSTC");
/// The optimization level this binary was built with, from `build.rs`.
pub const BUILD_OPT_LEVEL: &str = env!("MMSB_REGRESS_OPT_LEVEL");

/// What the gate should do.
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// The baseline file.
    pub baseline: PathBuf,
    /// Rewrite the baseline with the new counts instead of comparing.
    pub update: bool,
    /// Override of the baseline's threshold, percent.
    pub threshold_percent: Option<f64>,
    /// The valgrind executable.
    pub valgrind: PathBuf,
    /// Scenarios measured at once (valgrind runs one thread per process).
    pub jobs: usize,
    /// Where callgrind's output files go.
    pub out_dir: PathBuf,
}

/// What the gate concluded.
#[derive(Clone, Debug)]
pub enum GateOutcome {
    /// Compared with the baseline.
    Compared(Report),
    /// The baseline was rewritten with these counts.
    Updated(Baseline),
}

/// Runs the gate.
pub fn run_gate(options: &GateOptions) -> Result<GateOutcome> {
    if BUILD_OPT_LEVEL == "0" {
        return Err(RegressError::Usage(
            "this binary is unoptimized: build it with --release, counts of a debug build mean nothing".into(),
        ));
    }
    let valgrind = valgrind_version(&options.valgrind).ok_or_else(|| {
        RegressError::Callgrind(format!("cannot run {}", options.valgrind.display()))
    })?;
    let exe =
        std::env::current_exe().map_err(|err| RegressError::io("finding this executable", err))?;
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|err| RegressError::io(format!("creating {}", options.out_dir.display()), err))?;
    let runner = Runner {
        valgrind: options.valgrind.clone(),
        exe,
        out_dir: options.out_dir.clone(),
    };
    let measured = measure_all(&runner, SCENARIOS, options.jobs)?;
    let environment = Environment {
        rustc: BUILD_RUSTC.to_string(),
        valgrind,
        cpu_features: measured
            .first()
            .map(|(_, m)| m.cpu_features.clone())
            .unwrap_or_default(),
        machine: Machine::detect().describe(),
    };
    let entries: Vec<Entry> = measured
        .iter()
        .map(|(scenario, measurement)| Entry {
            name: scenario.name.to_string(),
            ir: measurement.ir,
            gated: scenario.gated,
            checksum: measurement.checksum,
        })
        .collect();
    if options.update {
        let threshold_percent = options
            .threshold_percent
            .or_else(|| {
                Baseline::load(&options.baseline)
                    .ok()
                    .map(|b| b.threshold_percent)
            })
            .unwrap_or(DEFAULT_THRESHOLD_PERCENT);
        let baseline = Baseline {
            environment,
            threshold_percent,
            entries,
        };
        baseline.save(&options.baseline)?;
        return Ok(GateOutcome::Updated(baseline));
    }
    let mut baseline = Baseline::load(&options.baseline)?;
    if let Some(threshold) = options.threshold_percent {
        baseline.threshold_percent = threshold;
    }
    Ok(GateOutcome::Compared(compare(
        &baseline,
        &entries,
        &environment,
    )))
}

/// Measures `scenarios` with up to `jobs` valgrind processes at once;
/// results in the scenarios' order. The first failure is returned.
fn measure_all<'s>(
    runner: &Runner,
    scenarios: &'s [Scenario],
    jobs: usize,
) -> Result<Vec<(&'s Scenario, Measurement)>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Measurement>>>> =
        Mutex::new(scenarios.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, scenarios.len().max(1)) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(scenario) = scenarios.get(index) else {
                    break;
                };
                let outcome = runner.measure(scenario);
                let mut slots = results
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                slots[index] = Some(outcome);
            });
        }
    });
    let slots = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    scenarios
        .iter()
        .zip(slots)
        .map(|(scenario, slot)| {
            let measurement = slot.ok_or_else(|| {
                RegressError::Callgrind(format!("scenario {} was not measured", scenario.name))
            })??;
            Ok((scenario, measurement))
        })
        .collect()
}
