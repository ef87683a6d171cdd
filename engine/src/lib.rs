//! mmsb's storage engine: page store, transactions, background workers, metrics.
//!
//! Code map:
//! - [`page_file`]: the data file, page trailers with CRC32, header slots, double-write file.
//! - `meta`: the meta page (allocation high-water mark, free list, catalog root).
//! - `page_table`: in-memory page versions (base + delta chain + head) per page.
//! - `snapshots`: live snapshots, the visible epoch, the fold limit.
//! - `db`: open and recovery, the commit path, checkpoints, background workers.
//! - `txn`: read and write transactions over pages.
//! - `catalog`: table name → table id and B+tree header.
//! - `mvcc`: table transactions, isolation levels, conflict checks.
//! - [`btree`]: B+tree tables over pages.
//! - [`merge`]: CPU delta merge kernels.
//!
//! This crate knows nothing of SQL or CUDA.
#![deny(missing_docs)]

pub mod btree;
mod catalog;
mod db;
mod error;
pub mod merge;
mod meta;
mod metrics;
mod mvcc;
pub mod page_access;
pub mod page_file;
mod page_hash;
mod page_table;
mod snapshots;
mod txn;

pub use catalog::MAX_TABLE_NAME_BYTES;
pub use db::{CheckpointStats, Database, Options, MAX_CONFLICT_RETRIES};
pub use error::{Error, Result};
pub use metrics::{CommitStageNanos, MetricsSnapshot};
pub use mmsb_wal::tlog::Durability;
pub use mmsb_wal::{CommitEpoch, PageId};
pub use mvcc::{
    ByteView, IsolationLevel, Range, ReadOnlyTable, ReadTransaction, Savepoint, Table, Transaction,
};
pub use page_access::{PageRead, PageRef, PageWrite};
/// The snapshot registry, exposed only to the loom model tests
/// (`engine/tests/loom_snapshot_registry.rs`, built with `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub use snapshots::SnapshotRegistry;
pub use txn::{PageReadTransaction, PageWriteTransaction};
