//! Target over the SQL front end (`mmsb_query`): parsing, binding, planning
//! and running arbitrary statements against a small in-memory database.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use mmsb_query::{Connection, Value};
use mmsb_wal::storage::MemStorage;

use crate::db_util::{self, DB_PATH};

/// The schema and rows every run starts from.
const SETUP_SQL: &str = "\
    CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, s TEXT UNIQUE, r REAL, b BOOLEAN, x BYTEA);\
    CREATE INDEX t_a ON t (a);\
    CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER);\
    INSERT INTO t VALUES (1, 2, 'x', 1.5, true, NULL), (2, NULL, 'y', NULL, false, '\\x00ff'), \
        (3, 2, 'zz', -0.5, NULL, '\\x');\
    INSERT INTO u VALUES ('x', 1), ('q', NULL);";

/// Most statements one input runs (bounds the time one input takes).
const MAX_STATEMENTS: usize = 8;

/// Words the token soup is made of: keywords, names of the schema, literals
/// and punctuation, so that random picks form statements that parse.
const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "t",
    "u",
    "id",
    "a",
    "s",
    "r",
    "b",
    "x",
    "k",
    "n",
    "1",
    "0",
    "-1",
    "2.5",
    "'x'",
    "NULL",
    "TRUE",
    "FALSE",
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "%",
    "=",
    "<>",
    "<",
    ">=",
    "AND",
    "OR",
    "NOT",
    "IS",
    "IN",
    "BETWEEN",
    "LIKE",
    "'%'",
    "ORDER",
    "BY",
    "DESC",
    "GROUP",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "count(*)",
    "sum(a)",
    "max(s)",
    "min(r)",
    "avg(a)",
    "JOIN",
    "LEFT",
    "ON",
    "AS",
    "DISTINCT",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "TABLE",
    "INDEX",
    "DROP",
    "ALTER",
    "ADD",
    "COLUMN",
    "PRIMARY",
    "KEY",
    "UNIQUE",
    "INTEGER",
    "TEXT",
    "REAL",
    "BOOLEAN",
    "BYTEA",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "sp",
    "RELEASE",
    "TO",
    "$1",
    "$2",
    "::",
    "||",
    ";",
    "EXPLAIN",
    "abs(",
    "length(",
    "substr(",
    "coalesce(",
    "lower(",
    "upper(",
    "UNION",
    "ALL",
    "INTERSECT",
    "EXCEPT",
    "EXISTS",
    "RETURNING",
    "ISOLATION",
    "LEVEL",
    "SERIALIZABLE",
    "TRANSACTION",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "'\\x00ff'",
];

/// A parameter value.
#[derive(Debug, Arbitrary)]
enum Param {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Boolean(bool),
    Bytes(Vec<u8>),
}

impl Param {
    fn value(&self) -> Value {
        match self {
            Param::Null => Value::Null,
            Param::Integer(v) => Value::Integer(*v),
            Param::Real(v) => Value::Real(*v),
            Param::Text(v) => Value::Text(v.clone()),
            Param::Boolean(v) => Value::Boolean(*v),
            Param::Bytes(v) => Value::Blob(v.clone()),
        }
    }
}

/// One statement of an input.
#[derive(Debug, Arbitrary)]
enum Statement {
    /// SQL text as given (lossily UTF-8).
    Text(Vec<u8>),
    /// Tokens picked from [`TOKENS`], joined by spaces.
    Tokens(Vec<u8>),
    /// A statement with parameters, run through `query` or prepared.
    WithParams {
        tokens: Vec<u8>,
        params: Vec<Param>,
        prepared: bool,
    },
}

/// Fuzz target `sql_front_end`: every statement must give rows, a result or
/// a typed error, never a panic; afterwards the session still works
/// (`ROLLBACK` then `SELECT 1` succeed).
pub fn sql_front_end(data: &[u8]) {
    let Ok(statements) = Vec::<Statement>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    if statements.is_empty() {
        return;
    }
    let mut conn = connection();
    for statement in statements.iter().take(MAX_STATEMENTS) {
        run(&mut conn, statement);
    }
    // A failed transaction must be recoverable by ROLLBACK.
    let _ = conn.execute("ROLLBACK");
    assert!(!conn.in_transaction(), "ROLLBACK left a transaction open");
    match conn.query("SELECT 1", &[]) {
        Ok(rows) => assert_eq!(rows.len(), 1, "SELECT 1 returned {} rows", rows.len()),
        Err(err) => panic!("the session is unusable after the input: {err}"),
    }
}

/// The files of a database after [`SETUP_SQL`] and a checkpoint, made once:
/// every input starts from a copy (cheaper than running the setup again).
fn setup_files() -> &'static [(PathBuf, Vec<u8>)] {
    static FILES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let storage = MemStorage::new();
        let mut conn = open(&storage);
        if let Err(err) = conn.execute(SETUP_SQL) {
            panic!("the setup script failed: {err}");
        }
        if let Err(err) = conn.database().checkpoint() {
            panic!("checkpointing the setup failed: {err}");
        }
        drop(conn);
        db_util::database_files(&storage)
            .into_iter()
            .filter_map(|path| storage.file_bytes(&path).map(|bytes| (path, bytes)))
            .collect()
    })
}

fn open(storage: &MemStorage) -> Connection {
    let db = match db_util::options(Arc::new(storage.clone())).open(DB_PATH) {
        Ok(db) => db,
        Err(err) => panic!("opening an in-memory database failed: {err}"),
    };
    match Connection::new(db) {
        Ok(conn) => conn,
        Err(err) => panic!("connecting to an in-memory database failed: {err}"),
    }
}

/// A session on a fresh copy of the set-up database.
fn connection() -> Connection {
    let storage = MemStorage::new();
    for (path, bytes) in setup_files() {
        storage.set_file_bytes(path, bytes.clone());
    }
    open(&storage)
}

fn tokens(picks: &[u8]) -> String {
    picks
        .iter()
        .take(48)
        .map(|&pick| TOKENS[usize::from(pick) % TOKENS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(conn: &mut Connection, statement: &Statement) {
    match statement {
        Statement::Text(bytes) => {
            let _ = conn.execute(&String::from_utf8_lossy(bytes));
        }
        Statement::Tokens(picks) => {
            let _ = conn.execute(&tokens(picks));
        }
        Statement::WithParams {
            tokens: picks,
            params,
            prepared,
        } => {
            let values: Vec<Value> = params.iter().take(4).map(Param::value).collect();
            let refs: Vec<&dyn mmsb_query::ToSql> =
                values.iter().map(|v| v as &dyn mmsb_query::ToSql).collect();
            let sql = tokens(picks);
            if *prepared {
                if let Ok(statement) = conn.prepare(&sql) {
                    let _ = statement.execute(conn, &refs);
                    let _ = statement.query(conn, &refs);
                }
            } else {
                let _ = conn.query(&sql, &refs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_and_queries_run() {
        let mut conn = connection();
        let rows = conn.query("SELECT count(*) FROM t", &[]);
        assert!(matches!(rows.map(|r| r.scalar::<i64>()), Ok(Ok(3))));
        run(&mut conn, &Statement::Text(b"SELEC garbage".to_vec()));
        run(&mut conn, &Statement::Tokens(vec![0, 7, 2, 3]));
        let _ = conn.execute("ROLLBACK");
        assert!(conn.query("SELECT 1", &[]).is_ok());
    }

    #[test]
    fn sql_front_end_runs_inputs() {
        sql_front_end(b"\x00SELECT * FROM t WHERE id = 1");
        sql_front_end(&[1, 5, 0, 1, 2, 3, 4, 5]);
        sql_front_end(&[]);
    }
}
