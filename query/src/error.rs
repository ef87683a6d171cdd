//! The SQL layer's error type: parse errors with positions, "not supported"
//! for anything outside the implemented subset, errors with PostgreSQL's
//! SQLSTATE codes, serialization failures (retryable) and wrapped engine
//! errors.

use std::fmt;

/// Everything that can go wrong running SQL. Match on the variant or on
/// [`QueryError::sqlstate`], not on the text.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueryError {
    /// The text is not valid SQL.
    Parse {
        /// What is wrong.
        message: String,
        /// 1-based line of the error in the text given to the call.
        line: u64,
        /// 1-based column (in characters) of the error.
        column: u64,
    },
    /// Valid SQL that this engine does not implement.
    NotSupported(String),
    /// An error PostgreSQL would report with this SQLSTATE.
    Sql {
        /// The five-character SQLSTATE code.
        sqlstate: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A concurrent transaction made this one impossible at its isolation
    /// level (SQLSTATE 40001). The transaction was rolled back; run it again.
    SerializationFailure(String),
    /// The storage engine failed (I/O, corruption, limits).
    Engine(mmsb_engine::Error),
}

/// The SQL layer's result type.
pub type Result<T, E = QueryError> = std::result::Result<T, E>;

impl QueryError {
    /// The SQLSTATE code PostgreSQL would report.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Parse { .. } => "42601",
            QueryError::NotSupported(_) => "0A000",
            QueryError::Sql { sqlstate, .. } => sqlstate,
            QueryError::SerializationFailure(_) => "40001",
            QueryError::Engine(err) if err.is_corruption() => "XX001",
            QueryError::Engine(mmsb_engine::Error::TooLarge { .. }) => "54000",
            // PostgreSQL's out_of_memory: the statement needed more than
            // `Options::memory_budget_bytes` allows.
            QueryError::Engine(mmsb_engine::Error::MemoryBudgetExceeded { .. }) => "53200",
            QueryError::Engine(_) => "58030",
        }
    }

    /// True when running the whole transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueryError::SerializationFailure(_))
    }

    /// The line and column of a parse error.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            QueryError::Parse { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }

    pub(crate) fn sql(sqlstate: &'static str, message: impl Into<String>) -> Self {
        QueryError::Sql {
            sqlstate,
            message: message.into(),
        }
    }

    pub(crate) fn not_supported(what: impl Into<String>) -> Self {
        QueryError::NotSupported(what.into())
    }

    pub(crate) fn type_mismatch(message: impl Into<String>) -> Self {
        Self::sql("42804", message)
    }

    pub(crate) fn out_of_range(message: impl Into<String>) -> Self {
        Self::sql("22003", message)
    }

    pub(crate) fn invalid_text(message: impl Into<String>) -> Self {
        Self::sql("22P02", message)
    }

    pub(crate) fn division_by_zero() -> Self {
        Self::sql("22012", "division by zero")
    }

    pub(crate) fn undefined_table(name: &str) -> Self {
        Self::sql("42P01", format!("relation \"{name}\" does not exist"))
    }

    pub(crate) fn undefined_column(name: &str) -> Self {
        Self::sql("42703", format!("column \"{name}\" does not exist"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::sql("42601", message)
    }

    pub(crate) fn corrupted(message: impl Into<String>) -> Self {
        QueryError::Engine(mmsb_engine::Error::Corrupted(message.into()))
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Parse {
                message,
                line,
                column,
            } => {
                write!(f, "syntax error at line {line}, column {column}: {message}")
            }
            QueryError::NotSupported(what) => write!(f, "not supported: {what}"),
            QueryError::Sql { message, .. } => f.write_str(message),
            QueryError::SerializationFailure(detail) => write!(
                f,
                "could not serialize access due to concurrent update (SQLSTATE 40001): {detail}"
            ),
            QueryError::Engine(err) => write!(f, "storage error: {err}"),
        }
    }
}

impl std::error::Error for QueryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueryError::Engine(err) => Some(err),
            _ => None,
        }
    }
}

impl From<mmsb_engine::Error> for QueryError {
    fn from(err: mmsb_engine::Error) -> Self {
        if err.is_retryable() {
            QueryError::SerializationFailure(err.to_string())
        } else {
            QueryError::Engine(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_become_retryable_serialization_failures() {
        let err = QueryError::from(mmsb_engine::Error::Conflict("x".into()));
        assert!(err.is_retryable());
        assert_eq!(err.sqlstate(), "40001");
        assert!(err.to_string().contains("40001"));
        let io = QueryError::from(mmsb_engine::Error::Poisoned);
        assert!(!io.is_retryable());
    }

    #[test]
    fn a_full_memory_budget_is_out_of_memory() {
        let err = QueryError::from(mmsb_engine::Error::MemoryBudgetExceeded {
            budget_bytes: 1 << 20,
            needed_bytes: 2 << 20,
        });
        assert_eq!(err.sqlstate(), "53200");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("memory_budget_bytes"), "{err}");
    }
}
