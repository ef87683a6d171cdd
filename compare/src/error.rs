//! The benchmark's error type: what failed, in which engine and phase.

use std::fmt;

/// Everything that can stop a benchmark run.
#[derive(Debug)]
pub enum Error {
    /// An engine returned an error from one of its operations.
    Engine {
        /// Which engine.
        engine: &'static str,
        /// The operation that failed (`"commit"`, `"get"`, ...).
        op: &'static str,
        /// The engine's own message.
        message: String,
    },
    /// An engine returned data that the workload did not write: a missing
    /// key, a wrong value, a wrong count.
    Mismatch {
        /// Which engine.
        engine: &'static str,
        /// The phase whose check failed.
        phase: &'static str,
        /// What was expected and what came back.
        detail: String,
    },
    /// A file-system or process operation of the harness itself failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The arguments or the environment are unusable (unknown engine, a
    /// temporary directory in memory, a child that printed no result).
    Config(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds the mapper that turns an engine's error into [`Error::Engine`].
    pub fn engine<E: fmt::Display>(engine: &'static str, op: &'static str) -> impl Fn(E) -> Error {
        move |err| Error::Engine {
            engine,
            op,
            message: err.to_string(),
        }
    }

    /// Builds the mapper that turns an I/O error into [`Error::Io`] with `context`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine {
                engine,
                op,
                message,
            } => write!(f, "{engine}: {op} failed: {message}"),
            Error::Mismatch {
                engine,
                phase,
                detail,
            } => write!(f, "{engine}: wrong result in phase '{phase}': {detail}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Config(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_name_engine_and_operation() {
        let err = Error::engine("redb", "commit")("disk full");
        assert_eq!(err.to_string(), "redb: commit failed: disk full");
    }

    #[test]
    fn io_errors_keep_their_source() {
        let err = Error::io("reading /x")(std::io::Error::other("boom"));
        assert_eq!(err.to_string(), "reading /x: boom");
        assert!(std::error::Error::source(&err).is_some());
    }
}
