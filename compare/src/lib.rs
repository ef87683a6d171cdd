//! mmsb-compare: a side-by-side key-value benchmark of mmsb against redb,
//! LMDB (heed), fjall and SQLite (rusqlite), modelled on the public redb
//! benchmark (`benches/lmdb_benchmark.rs`): the same phases, the same key and
//! value sizes, one table of results with the fastest engine per row in bold.
//!
//! `scripts/compare.sh` at the repository root runs it. This crate is its own
//! Cargo workspace, so the root workspace's builds and tests never compile
//! the other engines.

pub mod chart;
pub mod engine;
pub mod engines;
pub mod error;
pub mod harness;
pub mod machine;
pub mod report;
pub mod workload;

pub use engine::{BenchEngine, EngineKind, KvReader, KvWriter, ScanSummary};
pub use error::{Error, Result};
pub use workload::{run_workload, Dataset, Measure, Phase, PhaseResult, WorkloadConfig};
