//! mmsb: an embedded transactional storage engine.
//!
//! ```no_run
//! use mmsb::{Database, PageWrite, PageRead};
//! # fn main() -> mmsb::Result<()> {
//! let db = Database::open("app.mmsb")?;          // creates the file if missing
//! let mut tx = db.begin_write()?;
//! let page = tx.allocate_page()?;
//! tx.write(page, 0, b"hello")?;
//! tx.commit()?;                                   // durable when this returns
//! let rx = db.begin_read()?;
//! assert_eq!(&rx.read_page(page)?[..5], b"hello");
//! # Ok(()) }
//! ```
//!
//! The crates behind the facade: `mmsb-wal` (deltas, codecs, TLog, storage
//! seam) and `mmsb-engine` (page store, transactions, workers).
#![deny(missing_docs)]

pub use mmsb_engine::{
    CheckpointStats, CommitEpoch, Database, Durability, Error, MetricsSnapshot, Options, PageId,
    PageRead, PageRef, PageWrite, ReadTransaction, Result, WriteTransaction,
};

/// The storage seam, for tests and embedders that bring their own files.
pub mod storage {
    pub use mmsb_wal::storage::{
        CrashMode, FaultCounters, FaultPlan, FaultyStorage, FileStorage, MemStorage, Storage,
        StorageFile,
    };
}
