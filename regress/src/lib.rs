//! mmsb's performance regression tooling (not published).
//!
//! - [`scenarios`]: fixed, deterministic workloads on the key paths (delta
//!   diff/apply/merge, codecs, merge kernels, B+tree tables, commit + TLog),
//!   each behind a `#[no_mangle]` entry function.
//! - [`callgrind`]: runs a scenario under `valgrind --tool=callgrind` with
//!   collection toggled on that entry function, and reads its `Ir` count.
//! - [`baseline`]: the committed counts (`regress/baseline.json`) and the
//!   comparison that fails on a clear regression (> 10% by default).
//! - [`gate`]: measures every scenario and compares, or refreshes the baseline.
//! - [`criterion_report`] and [`machine`]: turn criterion's results into one
//!   benchmark baseline file for `scripts/bench-all.sh`.
//! - [`workload`]: the seeded generator and data builders the scenarios use.
//!
//! The command-line front end is `src/main.rs`; CI runs it through
//! `scripts/regress-check.sh`.
#![deny(missing_docs)]

pub mod baseline;
pub mod callgrind;
pub mod criterion_report;
mod error;
pub mod gate;
pub mod machine;
pub mod scenarios;
pub mod workload;

pub use error::{RegressError, Result};
