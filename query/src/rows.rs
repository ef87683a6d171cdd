//! What statements return: [`Rows`] of typed [`Row`]s with column names,
//! and a [`StatementResult`] per statement with PostgreSQL's command tag.

use crate::error::{QueryError, Result};
use crate::value::{FromSql, Value};

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// A row of these values.
    pub fn new(values: Vec<Value>) -> Self {
        Row { values }
    }

    /// The value of column `index`, converted; an error when out of range
    /// or of another type.
    pub fn get<T: FromSql>(&self, index: usize) -> Result<T> {
        let value = self.values.get(index).ok_or_else(|| {
            QueryError::sql(
                "42703",
                format!("no column {index} in a row of {}", self.values.len()),
            )
        })?;
        T::from_sql(value)
    }

    /// The values.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Takes the values.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The rows a statement returned, with column names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Row>,
}

impl Rows {
    /// Rows of these columns.
    pub fn new(columns: Vec<String>, rows: Vec<Vec<Value>>) -> Self {
        Rows {
            columns,
            rows: rows.into_iter().map(Row::new).collect(),
        }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `index`.
    pub fn get(&self, index: usize) -> Option<&Row> {
        self.rows.get(index)
    }

    /// The rows, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Row> {
        self.rows.iter()
    }

    /// The only value of a one-row, one-column result.
    pub fn scalar<T: FromSql>(&self) -> Result<T> {
        match self.rows.as_slice() {
            [row] if row.len() == 1 => row.get(0),
            _ => Err(QueryError::sql(
                "21000",
                format!(
                    "expected one row of one column, got {} rows",
                    self.rows.len()
                ),
            )),
        }
    }
}

impl IntoIterator for Rows {
    type Item = Row;
    type IntoIter = std::vec::IntoIter<Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = &'a Row;
    type IntoIter = std::slice::Iter<'a, Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

/// The outcome of one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementResult {
    /// The command, as in PostgreSQL's tag: "SELECT", "INSERT", "CREATE TABLE", "BEGIN", ...
    /// (a static string: no allocation per statement).
    pub command: std::borrow::Cow<'static, str>,
    /// Rows inserted, updated, deleted or selected.
    pub affected: u64,
    /// The rows, for SELECT, EXPLAIN and RETURNING.
    pub rows: Option<Rows>,
}

impl StatementResult {
    pub(crate) fn done(command: &'static str) -> Self {
        StatementResult {
            command: std::borrow::Cow::Borrowed(command),
            affected: 0,
            rows: None,
        }
    }

    /// PostgreSQL's command tag, e.g. `INSERT 0 3`, `SELECT 2`, `BEGIN`.
    pub fn tag(&self) -> String {
        match &*self.command {
            "INSERT" => format!("INSERT 0 {}", self.affected),
            "SELECT" | "UPDATE" | "DELETE" => format!("{} {}", self.command, self.affected),
            other => other.to_owned(),
        }
    }
}
