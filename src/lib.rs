//! mmsb: an embedded transactional storage engine.
//!
//! ```no_run
//! # fn main() -> mmsb::Result<()> {
//! let db = mmsb::Database::open("app.mmsb")?;     // creates the file if missing
//! let mut tx = db.begin_write()?;                 // SERIALIZABLE by default
//! tx.open_table("users")?.insert(b"alice", b"admin")?;
//! tx.commit()?;                                   // durable when this returns
//!
//! let rx = db.begin_read()?;                      // a snapshot: never blocks, never blocked
//! let users = rx.open_table("users")?;
//! assert_eq!(users.get(b"alice")?.as_deref(), Some(&b"admin"[..]));
//! # Ok(()) }
//! ```
//!
//! The crates behind the facade: `mmsb-wal` (deltas, codecs, TLog, storage
//! seam) and `mmsb-engine` (page store, transactions, workers).
#![deny(missing_docs)]

pub use mmsb_engine::{
    ByteView, CheckpointStats, CommitEpoch, Database, Durability, Error, IsolationLevel,
    MetricsSnapshot, Options, PageId, PageRead, PageReadTransaction, PageRef, PageWrite,
    PageWriteTransaction, Range, ReadOnlyTable, ReadTransaction, Result, Savepoint, Table,
    Transaction, CHECKPOINT_URGENT_FACTOR, MAX_CONFLICT_RETRIES, MAX_TABLE_NAME_BYTES,
    WRITES_PAUSED_AFTER_MS,
};

/// Memory budget defaults and limits (`Options::memory_budget_bytes`,
/// `Options::backpressure_max_wait_ms`).
pub use mmsb_engine::{
    default_memory_budget_bytes, DEFAULT_BACKPRESSURE_MAX_WAIT_MS, DEFAULT_MEMORY_BUDGET_BYTES,
    MIN_MEMORY_BUDGET_BYTES,
};

/// Verification (`mmsb check`) and salvage (`mmsb check --repair`) of a closed database.
pub use mmsb_engine::{
    check_database, salvage, Area, CheckOptions, CheckPhase, CheckProgress, CheckReport,
    CheckSummary, Finding, Location, LostRange, SalvageOptions, SalvageReport, Severity,
    TableSalvage,
};

/// The SQL layer (crate `mmsb-query`): sessions, statements, rows, values.
pub use mmsb_query::{
    parse_script, Connection, DataType, FromSql, ParsedStatement, QueryError, Row, Rows, Statement,
    StatementResult, TableSchema, ToSql, Value,
};

/// The GPU merge backend (feature `cuda`): options that recover on the GPU.
#[cfg(feature = "cuda")]
pub mod gpu;

/// The storage seam, for tests and embedders that bring their own files.
pub mod storage {
    pub use mmsb_wal::storage::{
        CrashMode, FaultCounters, FaultPlan, FaultyStorage, FileStorage, MemStorage, Storage,
        StorageFile,
    };
}
