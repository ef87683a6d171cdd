//! mmsb's SQL layer: a PostgreSQL-flavoured subset of SQL over the engine's
//! transactional tables.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = mmsb_engine::Database::open("app.mmsb")?;
//! let mut conn = mmsb_query::Connection::new(db.clone())?;
//! conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance INTEGER)")?;
//! conn.execute("INSERT INTO accounts VALUES (7, 'ada', 100)")?;
//! let rows = conn.query("SELECT name, balance FROM accounts WHERE id = $1", &[&7])?;
//! let balance: i64 = rows.scalar().or_else(|_| rows.iter().next().map_or(Ok(0), |r| r.get(1)))?;
//! # let _ = balance; Ok(()) }
//! ```
//!
//! Code map:
//! - `parse`: SQL text → sqlparser statements with positions.
//! - `bind`: statements → plans (names resolved, aggregates separated,
//!   conditions pushed down, access paths chosen); rejects what is not supported.
//! - `plan`: plan types, access-path choice, EXPLAIN.
//! - `exec`: runs plans over engine transactions (scans, joins, aggregation, writes).
//! - `ddl`: CREATE/DROP TABLE and INDEX, ALTER TABLE ADD COLUMN.
//! - `catalog`: table schemas in the `__schema` engine table.
//! - `encoding`: memcomparable keys and compact rows.
//! - `expr`: bound expressions and their evaluation.
//! - `connection`: sessions, transactions, savepoints, prepared statements.
//!
//! This crate knows nothing of pages or the TLog.
#![deny(missing_docs)]

mod bind;
mod catalog;
mod connection;
mod ddl;
pub mod encoding;
mod error;
mod exec;
mod expr;
mod parse;
mod plan;
mod rows;
#[cfg(test)]
mod test_db;
mod value;
#[cfg(test)]
mod write_tests;

pub use catalog::{
    ColumnDef, IndexDef, TableSchema, MAX_COLUMNS, MAX_IDENTIFIER_BYTES, SCHEMA_TABLE,
};
pub use connection::{Connection, Statement, MAX_AUTOCOMMIT_RETRIES};
pub use error::{QueryError, Result};
pub use parse::{parse_script, ParsedStatement, MAX_PARSE_DEPTH};
pub use rows::{Row, Rows, StatementResult};
pub use value::{DataType, FromSql, ToSql, Value};
