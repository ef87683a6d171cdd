//! The engine's umbrella error. Narrow errors of lower layers convert into it.

use std::io;
use std::path::PathBuf;

use mmsb_wal::{PageId, WalError};

/// Everything that can go wrong in the engine. Match on the variant, not the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed (the disk, not the data, is at fault).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Bytes read from disk failed validation. Never returned as data.
    #[error("corrupted database: {0}")]
    Corrupted(String),
    /// The TLog failed (I/O, corruption of a frame, refusal after an fsync failure).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Another process (or another `Database` in this one) holds the database.
    #[error("database {} is already open in another process", .0.display())]
    DatabaseLocked(PathBuf),
    /// A page id past the end of the database, or page 0 (the header).
    #[error("{0} is not a data page of this database")]
    PageOutOfRange(PageId),
    /// The file is not an mmsb database, or of an unsupported format version.
    #[error("not an mmsb database or unsupported format: {0}")]
    BadFormat(String),
    /// An argument is out of its documented range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A value, key or transaction exceeds a fixed limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The database refuses writes after a failed fsync or write-back; reopen it.
    #[error("the database refuses writes after an earlier I/O failure; reopen it")]
    Poisoned,
    /// The transaction was already committed or rolled back.
    #[error("the transaction has already ended")]
    TransactionEnded,
    /// A concurrent commit makes this transaction impossible at its isolation
    /// level (SQLSTATE 40001). Retry the whole transaction.
    #[error("could not serialize access due to concurrent update: {0}")]
    Conflict(String),
    /// No table of that name.
    #[error("table {0:?} does not exist")]
    TableNotFound(String),
    /// A table of that name already exists.
    #[error("table {0:?} already exists")]
    TableExists(String),
    /// Back-pressure gave up: a commit needed `needed_bytes` of memory that
    /// the budget (`Options::memory_budget_bytes`, or less while the machine
    /// is short of memory) could not make room for within
    /// `Options::backpressure_max_wait_ms`, because live snapshots pin the
    /// rest or because the transaction alone is larger than the budget.
    /// Nothing was written; retrying may succeed once snapshots end
    /// (unless the transaction is larger than the budget: split it).
    #[error(
        "memory budget exceeded: the commit needs {needed_bytes} bytes and the budget of \
         {budget_bytes} bytes (Options::memory_budget_bytes) has no more room"
    )]
    MemoryBudgetExceeded {
        /// The budget in force.
        budget_bytes: u64,
        /// Bytes the commit needed.
        needed_bytes: u64,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for [`Error::Conflict`]: running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// True when the error means bytes on disk are damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupted(_) | Error::Wal(WalError::Corrupted { .. })
        )
    }
}

impl From<mmsb_wal::DeltaError> for Error {
    fn from(err: mmsb_wal::DeltaError) -> Self {
        Error::Wal(WalError::Delta(err))
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
