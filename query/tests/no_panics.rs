//! Arbitrary input never panics: random token soups and random mutations
//! of valid statements either run or return an error.

use std::sync::Arc;

use mmsb_engine::Options;
use mmsb_query::Connection;
use proptest::prelude::*;

fn connection() -> Connection {
    let options = Options {
        storage: Arc::new(mmsb_wal::storage::MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    };
    let db = options.open("/fuzz/db.mmsb").expect("in-memory database");
    let mut c = Connection::new(db).expect("connection");
    c.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, s TEXT UNIQUE, r REAL, b BOOLEAN, x BYTEA);
         CREATE INDEX t_a ON t (a);
         INSERT INTO t VALUES (1, 2, 'x', 1.5, true, NULL), (2, NULL, 'y', NULL, false, '\\x00ff');",
    )
    .expect("setup");
    c
}

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "t",
    "id",
    "a",
    "s",
    "r",
    "b",
    "x",
    "1",
    "0",
    "-1",
    "2.5",
    "'x'",
    "NULL",
    "TRUE",
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
    "GROUP",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "count(*)",
    "sum(a)",
    "max(s)",
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
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "$1",
    "::",
    "INTEGER",
    "TEXT",
    "||",
    ";",
    "*",
    "EXPLAIN",
    "abs(",
    "substr(",
    "coalesce(",
    "9223372036854775807",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(picks in proptest::collection::vec(0..TOKENS.len(), 1..24)) {
        let sql: Vec<&str> = picks.iter().map(|&i| TOKENS[i]).collect();
        let mut c = connection();
        let _ = c.execute(&sql.join(" "));
        let _ = c.execute("ROLLBACK");
        // The session stays usable.
        prop_assert!(c.query("SELECT count(*) FROM t", &[]).is_ok());
    }

    #[test]
    fn arbitrary_text_never_panics(sql in "\\\\PC{0,60}") {
        let mut c = connection();
        let _ = c.execute(&sql);
    }

    #[test]
    fn statements_with_parameters_never_panic(
        template in 0..4usize,
        v in prop_oneof![
            any::<i64>().prop_map(mmsb_query::Value::Integer),
            any::<f64>().prop_map(mmsb_query::Value::Real),
            ".{0,4}".prop_map(mmsb_query::Value::Text),
            Just(mmsb_query::Value::Null),
            any::<bool>().prop_map(mmsb_query::Value::Boolean),
        ],
    ) {
        let sql = [
            "SELECT * FROM t WHERE id = $1",
            "SELECT * FROM t WHERE a > $1 ORDER BY id LIMIT 3",
            "UPDATE t SET r = $1 WHERE id = 1",
            "SELECT $1 + 1, $1 || 'x', abs($1)",
        ][template];
        let mut c = connection();
        let _ = c.query(sql, &[&v]);
    }
}
