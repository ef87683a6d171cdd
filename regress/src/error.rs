//! [`RegressError`]: everything that can go wrong in a scenario, a callgrind
//! run, or reading and writing a baseline.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = RegressError> = std::result::Result<T, E>;

/// Why a scenario, a measurement or a baseline operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegressError {
    /// The engine refused an operation of a scenario.
    #[error("engine: {0}")]
    Engine(#[from] mmsb_engine::Error),
    /// The TLog or a codec refused an operation of a scenario.
    #[error("wal: {0}")]
    Wal(#[from] mmsb_wal::WalError),
    /// A delta operation of a scenario failed.
    #[error("delta: {0}")]
    Delta(#[from] mmsb_wal::DeltaError),
    /// A scenario computed a wrong result: its counts would be meaningless.
    #[error("scenario {scenario} computed a wrong result: {reason}")]
    WrongResult {
        /// The scenario's name.
        scenario: &'static str,
        /// What differed.
        reason: String,
    },
    /// An operating-system call failed (reading a file, starting valgrind).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A baseline or criterion file is not what this tool expects.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// valgrind failed, or its output could not be understood.
    #[error("callgrind: {0}")]
    Callgrind(String),
    /// The command line was not understood.
    #[error("usage: {0}")]
    Usage(String),
}

impl RegressError {
    /// An [`RegressError::Io`] saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RegressError::Io {
            what: what.into(),
            source,
        }
    }

    /// A [`RegressError::BadFile`] for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        RegressError::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
