//! The wal crate's error type.

use std::io;
use std::path::PathBuf;

use crate::delta::DeltaError;

/// What can go wrong in the wal crate. `Corrupted` (bad bytes on disk) is kept
/// apart from `Io` (the operating system said no).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk failed validation somewhere other than a torn tail.
    #[error("corrupted TLog {}: at byte {offset}: {reason}", path.display())]
    Corrupted {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the damage inside that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A delta or encoded delta was malformed.
    #[error("invalid delta: {0}")]
    Delta(#[from] DeltaError),
    /// An encoded commit record or delta failed validation, or could not be encoded.
    #[error("commit record codec: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// A record or value exceeds a fixed limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// An argument is out of its documented range (a misuse by the caller,
    /// such as a commit epoch that does not increase, or a bad configuration).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier fsync failed: the log's durable state is unknown, so it
    /// refuses writes until the database is reopened and recovered.
    #[error("the TLog refuses writes after an earlier fsync failure; reopen the database")]
    Poisoned,
}

impl WalError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        WalError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The wal crate's result type.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
