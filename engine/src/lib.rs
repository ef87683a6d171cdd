//! mmsb's storage engine: page store, transactions, background workers, metrics.
//!
//! Code map:
//! - [`page_file`]: the data file, page trailers with CRC32, header slots, double-write file.
//! - `meta`: the meta page (allocation high-water mark, free list, catalog root).
//! - `page_table`: in-memory page versions (base + delta chain + head) per page.
//! - `memory`: the memory budget, its reservations, machine memory pressure, pread page loads.
//! - `eviction`: CLOCK eviction of clean pages, write-back requests, commit back-pressure.
//! - `snapshots`: live snapshots, the visible epoch, the fold limit.
//! - `db`: open and recovery, the commit path, checkpoints, background workers.
//! - `txn`: read and write transactions over pages.
//! - `catalog`: table name → table id and B+tree header.
//! - `mvcc`: table transactions, isolation levels, conflict checks.
//! - [`alloc`]: page-frame pools (page-sized buffers) with a lock-free fast path.
//! - [`btree`]: B+tree tables over pages.
//! - [`merge`]: CPU delta merge kernels.
//! - `check`: `mmsb check`, read-only verification of a closed database.
//! - `salvage`: `mmsb check --repair`, copies what is intact into a new database.
//!
//! This crate knows nothing of SQL or CUDA.
#![deny(missing_docs)]

pub mod alloc;
pub mod btree;
mod catalog;
mod check;
mod db;
mod error;
mod eviction;
#[doc(hidden)]
pub mod fuzz_hooks;
mod huge_pages;
mod memory;
pub mod merge;
mod meta;
mod metrics;
mod mvcc;
pub mod page_access;
mod page_directory;
pub mod page_file;
mod page_hash;
mod page_table;
mod salvage;
mod snapshots;
mod txn;

pub use alloc::{PageFrame, PageFramePool, PoolConfig, PoolStats};
pub use catalog::MAX_TABLE_NAME_BYTES;
pub use check::{
    check_database, Area, CheckOptions, CheckPhase, CheckProgress, CheckReport, CheckSummary,
    Finding, Location, Severity,
};
pub use db::{
    CheckpointStats, Database, Options, CHECKPOINT_URGENT_FACTOR, DEFAULT_MAINTENANCE_NICE,
    MAINTENANCE_NICE_MAX, MAX_CONFLICT_RETRIES, REPLAY_WINDOW_MAX_PAGES, WRITES_PAUSED_AFTER_MS,
};
pub use error::{Error, Result};
pub use eviction::DEFAULT_BACKPRESSURE_MAX_WAIT_MS;
pub use memory::{
    default_memory_budget_bytes, DEFAULT_MEMORY_BUDGET_BYTES, MIN_MEMORY_BUDGET_BYTES,
};
pub use metrics::{CommitStageNanos, MetricsSnapshot};
pub use mmsb_wal::tlog::Durability;
pub use mmsb_wal::{CommitEpoch, PageId};
pub use mvcc::TableHandle;
pub use mvcc::{
    ByteView, IsolationLevel, Range, ReadOnlyTable, ReadTransaction, Savepoint, Table, Transaction,
};
pub use page_access::{PageRead, PageRef, PageWrite};
/// The page table's head directory, exposed only to the loom model tests
/// (`engine/tests/loom_page_directory.rs`, built with `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub use page_directory::HeadDirectory;
pub use salvage::{
    salvage, LostRange, SalvageOptions, SalvageReport, TableSalvage, SALVAGE_BATCH_BYTES,
    SALVAGE_BATCH_ROWS,
};
/// The snapshot registry, exposed only to the loom model tests
/// (`engine/tests/loom_snapshot_registry.rs`, built with `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub use snapshots::SnapshotRegistry;
pub use txn::WrittenRanges;
pub use txn::{PageReadTransaction, PageWriteTransaction};
