//! The direct path of a one-row `INSERT ... VALUES` into a table without
//! indexes and without RETURNING (the prepared insert of a bulk load).
//!
//! When the plan is bound, [`DirectInsert::compile`] resolves where each
//! table column's value comes from: a parameter, or a constant (a literal
//! or the column's DEFAULT) already converted to the column's type and
//! checked. Each run then reads the parameters in place: a value of the
//! column's type (the usual case) is checked and encoded as it is, with no
//! copy; the key and the row are encoded straight into reused buffers and
//! written with one engine call. Only a parameter of another type is
//! converted (copied), exactly as the general path converts it.
//!
//! Semantics are the general path's (`insert_one_row`): values are checked
//! in column order (the first failing column is the error reported), the
//! key is the primary key's values or a reserved rowid, and a key already
//! present fails the statement with the same duplicate-key error.

use std::borrow::Cow;
use std::cell::RefCell;

use mmsb_engine::{ByteView, TableHandle, Transaction};

use super::{check_constraints, duplicate, reserve_rowids};
use crate::catalog::TableSchema;
use crate::encoding::{
    encode_key_value, encode_row_header, encode_row_integer, encode_row_text, encode_row_value,
};
use crate::error::{QueryError, Result};
use crate::expr::Expr;
use crate::plan::{InsertSource, Returning};
use crate::value::{DataType, Value};

/// Starting capacity of the reused key buffer, in bytes.
const INITIAL_KEY_BYTES: usize = 64;

/// Starting capacity of the reused row buffer, in bytes.
const INITIAL_ROW_BYTES: usize = 256;

/// Largest buffer, in bytes, kept for the next statement on this thread.
const MAX_KEPT_BUFFER_BYTES: usize = 64 * 1024;

/// Where one table column's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum ColumnSource {
    /// Statement parameter `$n + 1`, checked on every run.
    Param(usize),
    /// A constant of the column's type that passed the column's checks.
    Fixed(Value),
}

/// One table column of a direct insert: its source and what a parameter
/// is checked against (copied from the schema, so a run reads one list).
#[derive(Debug, Clone, PartialEq)]
struct DirectColumn {
    source: ColumnSource,
    ty: DataType,
    not_null: bool,
    /// VARCHAR(n): the most characters.
    max_chars: Option<u32>,
}

/// The compiled form of a one-row INSERT ... VALUES: one entry per table
/// column, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectInsert {
    columns: Vec<DirectColumn>,
    /// The primary key's column when it has exactly one (its key is
    /// encoded as the row is, from the value already in hand).
    key_column: Option<usize>,
}

/// The data table a run writes: its name, and the caller's handle slot
/// when it keeps one (`None`: opened by name).
struct Target<'a> {
    data_table: &'a str,
    handle: Option<&'a mut Option<TableHandle>>,
}

impl Target<'_> {
    /// Inserts `row` under `key` into the data table (through the handle,
    /// resolved first when it is missing or names another table); returns
    /// the value it replaced.
    #[inline]
    fn insert(self, tx: &mut Transaction, key: &[u8], row: &[u8]) -> Result<Option<ByteView>> {
        let Some(slot) = self.handle else {
            return Ok(tx.open_table(self.data_table)?.insert(key, row)?);
        };
        let handle = match slot {
            Some(handle) if handle.name() == self.data_table => handle,
            slot => slot.insert(tx.table_handle(self.data_table)?),
        };
        Ok(tx.insert_via(handle, key, row)?)
    }
}

/// Key and row buffers reused from statement to statement on a thread (a
/// prepared INSERT run a million times allocates them once).
struct Scratch {
    key: Vec<u8>,
    row: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { key: Vec::new(), row: Vec::new() })
    };
}

/// The general path's check of one value for column `c` (`check_cow`):
/// converted (copied) only when its type is not the column's, then NOT
/// NULL and VARCHAR(n) checked.
fn checked<'a>(schema: &TableSchema, c: usize, value: &'a Value) -> Result<Cow<'a, Value>> {
    let column = schema
        .columns
        .get(c)
        .ok_or_else(|| QueryError::corrupted(format!("no column {c}")))?;
    let value = match value.data_type() {
        Some(ty) if ty != column.ty => Cow::Owned(value.clone().coerce_to(column.ty)?),
        _ => Cow::Borrowed(value),
    };
    check_constraints(schema, column, &value)?;
    Ok(value)
}

/// A parameter's value, or the error a missing one gives.
#[inline]
fn param(params: &[Value], index: usize) -> Result<&Value> {
    params
        .get(index)
        .ok_or_else(|| QueryError::sql("08P01", format!("no value for parameter ${}", index + 1)))
}

impl DirectColumn {
    /// Encodes `value` into `row` when it goes in as it is: of the column's
    /// type (or NULL where allowed) and within VARCHAR(n). Returns false,
    /// appending nothing, for anything else: [`checked`] converts it or
    /// reports the error.
    #[inline]
    fn encode_as_is(&self, value: &Value, row: &mut Vec<u8>) -> bool {
        match (value, self.ty) {
            (Value::Integer(i), DataType::Integer) => encode_row_integer(*i, row),
            // Bytes bound characters from above: a short text needs no count.
            (Value::Text(s), DataType::Text)
                if self.max_chars.is_none_or(|max| s.len() <= max as usize) =>
            {
                encode_row_text(s, row)
            }
            (Value::Real(_), DataType::Real)
            | (Value::Blob(_), DataType::Blob)
            | (Value::Boolean(_), DataType::Boolean) => encode_row_value(value, row),
            (Value::Null, _) if !self.not_null => encode_row_value(value, row),
            _ => return false,
        }
        true
    }
}

impl DirectInsert {
    /// The direct form of an INSERT, when it has one: one VALUES row of
    /// parameters, literals and DEFAULTs into a table without indexes,
    /// without RETURNING. `None` sends the statement down the general path
    /// (also when a constant fails its column's checks: that path reports
    /// the error when the statement runs, as it always did).
    pub fn compile(
        schema: &TableSchema,
        columns: &[usize],
        source: &InsertSource,
        returning: Option<&Returning>,
    ) -> Option<DirectInsert> {
        let InsertSource::Values(rows) = source else {
            return None;
        };
        let [row] = rows.as_slice() else {
            return None;
        };
        if returning.is_some() || !schema.indexes.is_empty() || columns.len() != row.len() {
            return None;
        }
        let mut sources: Vec<ColumnSource> = schema
            .columns
            .iter()
            .map(|c| ColumnSource::Fixed(c.default.clone()))
            .collect();
        for (&column, e) in columns.iter().zip(row) {
            let slot = sources.get_mut(column)?;
            match e {
                None => {}
                Some(Expr::Param(i)) => *slot = ColumnSource::Param(*i),
                Some(Expr::Literal(v)) => *slot = ColumnSource::Fixed(v.clone()),
                Some(_) => return None,
            }
        }
        let mut compiled = Vec::with_capacity(sources.len());
        for (c, (source, column)) in sources.into_iter().zip(&schema.columns).enumerate() {
            let source = match source {
                ColumnSource::Fixed(v) => {
                    ColumnSource::Fixed(checked(schema, c, &v).ok()?.into_owned())
                }
                param => param,
            };
            compiled.push(DirectColumn {
                source,
                ty: column.ty,
                not_null: column.not_null,
                max_chars: column.max_chars,
            });
        }
        debug_assert!(schema.primary_key.iter().all(|&c| c < compiled.len()));
        let key_column = match schema.primary_key.as_slice() {
            [c] => Some(*c),
            _ => None,
        };
        Some(DirectInsert {
            columns: compiled,
            key_column,
        })
    }

    /// Whether column `column` takes parameter `$index + 1` (tests).
    #[cfg(test)]
    fn takes_param(&self, column: usize, index: usize) -> bool {
        self.columns
            .get(column)
            .is_some_and(|c| c.source == ColumnSource::Param(index))
    }

    /// Runs the insert of one row into `schema`'s data table `data_table`;
    /// returns the row count (1).
    pub fn run(
        &self,
        tx: &mut Transaction,
        schema: &TableSchema,
        data_table: &str,
        params: &[Value],
    ) -> Result<u64> {
        self.run_in(
            tx,
            schema,
            Target {
                data_table,
                handle: None,
            },
            params,
        )
    }

    /// [`DirectInsert::run`] with `handle`, the data table a previous
    /// statement resolved (see [`TableHandle`]): used when it names
    /// `data_table`, else replaced by a handle on `data_table`.
    pub fn run_with_handle(
        &self,
        tx: &mut Transaction,
        schema: &TableSchema,
        data_table: &str,
        params: &[Value],
        handle: &mut Option<TableHandle>,
    ) -> Result<u64> {
        let handle = Some(handle);
        self.run_in(tx, schema, Target { data_table, handle }, params)
    }

    /// Runs the insert of one row into `table`.
    fn run_in(
        &self,
        tx: &mut Transaction,
        schema: &TableSchema,
        table: Target<'_>,
        params: &[Value],
    ) -> Result<u64> {
        debug_assert_eq!(self.columns.len(), schema.columns.len());
        debug_assert!(schema.indexes.is_empty());
        let rowid = match schema.has_rowid() {
            true => Some(reserve_rowids(tx, schema, 1)?),
            false => None,
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                let scratch = &mut *scratch;
                let result = self.write_row(tx, schema, table, params, rowid, scratch);
                for buffer in [&mut scratch.key, &mut scratch.row] {
                    if buffer.capacity() > MAX_KEPT_BUFFER_BYTES {
                        *buffer = Vec::new();
                    }
                }
                result
            }
            // A nested use (none today) gets fresh buffers.
            Err(_) => {
                let mut scratch = Scratch {
                    key: Vec::new(),
                    row: Vec::new(),
                };
                self.write_row(tx, schema, table, params, rowid, &mut scratch)
            }
        })?;
        Ok(1)
    }

    /// Checks and encodes the row and its key into `scratch`, then writes
    /// them.
    fn write_row(
        &self,
        tx: &mut Transaction,
        schema: &TableSchema,
        table: Target<'_>,
        params: &[Value],
        rowid: Option<i64>,
        scratch: &mut Scratch,
    ) -> Result<()> {
        let Scratch { key, row } = scratch;
        row.clear();
        row.reserve(INITIAL_ROW_BYTES);
        key.clear();
        key.reserve(INITIAL_KEY_BYTES);
        encode_row_header(self.columns.len(), row);
        let mut keyed = false;
        for (c, column) in self.columns.iter().enumerate() {
            match &column.source {
                ColumnSource::Fixed(value) => encode_row_value(value, row),
                ColumnSource::Param(i) => {
                    let value = param(params, *i)?;
                    if !column.encode_as_is(value, row) {
                        encode_row_value(&*checked(schema, c, value)?, row);
                    } else if self.key_column == Some(c) {
                        // The value stored as it is: it is the key too.
                        encode_key_value(value, key);
                        keyed = true;
                    }
                }
            }
        }
        match rowid {
            Some(id) => encode_key_value(&Value::Integer(id), key),
            None if keyed => {}
            None => {
                for &c in &schema.primary_key {
                    encode_key_value(&*self.stored_value(c, params)?, key);
                }
            }
        }
        debug_assert!(rowid.is_none() || !keyed, "a rowid table has no key column");
        if table.insert(tx, key, row)?.is_some() {
            let constraint = format!("{}_pkey", schema.name);
            let values = (0..self.columns.len())
                .map(|c| self.stored_value(c, params).map(Cow::into_owned))
                .collect::<Result<Vec<_>>>()?;
            return Err(duplicate(&constraint, schema, &schema.primary_key, &values));
        }
        Ok(())
    }

    /// The value column `c` stores (the row passed its checks).
    fn stored_value<'a>(&'a self, c: usize, params: &'a [Value]) -> Result<Cow<'a, Value>> {
        let column = self
            .columns
            .get(c)
            .ok_or_else(|| QueryError::corrupted(format!("no column {c}")))?;
        match &column.source {
            ColumnSource::Fixed(value) => Ok(Cow::Borrowed(value)),
            ColumnSource::Param(i) => {
                let value = param(params, *i)?;
                match value.data_type() {
                    Some(ty) if ty != column.ty => {
                        Ok(Cow::Owned(value.clone().coerce_to(column.ty)?))
                    }
                    _ => Ok(Cow::Borrowed(value)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The direct path against the general one as the model: the same
    //! one-row insert run directly (prepared, parameters) and through the
    //! general path (the same statement with `RETURNING`, which never
    //! compiles to a direct insert) must give the same outcome, error
    //! text included, and leave the same rows.

    use proptest::prelude::*;

    use crate::plan::Plan;
    use crate::{Connection, Value};

    fn connect() -> Connection {
        crate::test_db::memory_connection("/direct/db.mmsb")
    }

    /// The direct form `sql` binds to in `c`'s database.
    fn direct_of(c: &mut Connection, sql: &str) -> Option<super::DirectInsert> {
        let parsed = crate::parse::parse_one(sql).expect("parse");
        let db = c.database().clone();
        let mut tx = db
            .begin(mmsb_engine::IsolationLevel::default())
            .expect("begin");
        let plan = crate::bind::Binder::new(&mut tx)
            .bind_statement(&parsed.statement)
            .expect("bind");
        match plan {
            Plan::Insert(insert) => insert.direct,
            _ => None,
        }
    }

    #[test]
    fn only_one_row_of_parameters_and_constants_compiles() {
        let mut c = connect();
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER DEFAULT 7, s TEXT)")
            .expect("create");
        c.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, s TEXT UNIQUE)")
            .expect("create");
        c.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, s VARCHAR(1) NOT NULL)")
            .expect("create");
        let direct = direct_of(&mut c, "INSERT INTO t (s, id) VALUES ($1, $2)").expect("direct");
        assert!(direct.takes_param(0, 1) && direct.takes_param(2, 0));
        assert!(!direct.takes_param(1, 0), "g keeps its DEFAULT");
        assert!(direct_of(&mut c, "INSERT INTO t VALUES (1, DEFAULT, 'a')").is_some());
        for general in [
            "INSERT INTO t VALUES ($1, 1, 'a'), ($2, 2, 'b')",
            "INSERT INTO t VALUES ($1, 1, 'a') RETURNING id",
            "INSERT INTO t VALUES ($1 + 1, 1, 'a')",
            "INSERT INTO t SELECT id, g, s FROM t",
            "INSERT INTO u VALUES ($1, $2)",
            // Constants that fail their column's checks: the general path
            // reports that when the statement runs.
            "INSERT INTO v VALUES ($1, 'too long')",
            "INSERT INTO v (id) VALUES ($1)",
        ] {
            assert!(direct_of(&mut c, general).is_none(), "{general}");
        }
    }

    /// A parameter of any type, NULL included.
    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            (-3i64..6).prop_map(Value::Integer),
            (-3i64..6).prop_map(|i| Value::Real(i as f64 / 2.0)),
            "[0-9a-c]{0,5}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Boolean),
            proptest::collection::vec(any::<u8>(), 0..3).prop_map(Value::Blob),
        ]
    }

    const SCHEMA: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, r REAL NOT NULL, \
                          s VARCHAR(3), d INTEGER DEFAULT 5, b BOOLEAN)";
    const SCHEMA_ROWID: &str = "CREATE TABLE t (r REAL NOT NULL, s VARCHAR(3), \
                                d INTEGER DEFAULT 5, b BOOLEAN)";

    /// Runs every row through `insert` (autocommit), returning each
    /// outcome (error text or count) and the table's rows.
    fn run(schema: &str, insert: &str, rows: &[Vec<Value>]) -> (Vec<String>, Vec<Vec<Value>>) {
        let mut c = connect();
        c.execute(schema).expect("create");
        let statement = c.prepare(insert).expect("prepare");
        let outcomes = rows
            .iter()
            .map(|row| {
                let params: Vec<&dyn crate::ToSql> =
                    row.iter().map(|v| v as &dyn crate::ToSql).collect();
                match statement.execute(&mut c, &params) {
                    Ok(result) => format!("ok {}", result.affected),
                    Err(err) => format!("{} {err}", err.sqlstate()),
                }
            })
            .collect();
        let stored = c
            .query("SELECT * FROM t", &[])
            .expect("select")
            .iter()
            .map(|r| r.values().to_vec())
            .collect();
        (outcomes, stored)
    }

    /// Runs `rows` through `insert` (the direct path) and through the same
    /// statement with `RETURNING 1` (always the general path): the same
    /// outcomes, error texts and stored rows.
    fn direct_matches_general(
        schema: &str,
        insert: &str,
        rows: &[Vec<Value>],
    ) -> Result<(), TestCaseError> {
        let (direct_outcomes, direct_rows) = run(schema, insert, rows);
        let general = format!("{insert} RETURNING 1");
        let (general_outcomes, general_rows) = run(schema, &general, rows);
        prop_assert_eq!(direct_outcomes, general_outcomes);
        prop_assert_eq!(direct_rows, general_rows);
        Ok(())
    }

    proptest! {
        #[test]
        fn direct_inserts_match_the_general_path(
            rows in proptest::collection::vec(
                proptest::collection::vec(any_value(), 4), 1..12),
        ) {
            let insert = "INSERT INTO t (b, id, r, s) VALUES ($1, $2, $3, $4)";
            direct_matches_general(SCHEMA, insert, &rows)?;
        }

        #[test]
        fn direct_rowid_inserts_match_the_general_path(
            rows in proptest::collection::vec(
                proptest::collection::vec(any_value(), 3), 1..8),
        ) {
            let insert = "INSERT INTO t (s, r, b) VALUES ($1, $2, $3)";
            direct_matches_general(SCHEMA_ROWID, insert, &rows)?;
        }
    }
}
