//! Tests of the write paths (INSERT, UPDATE, DELETE in `exec`): the direct
//! VALUES insert, the filtered full scan of UPDATE and DELETE, and the known
//! present writes they hand the engine, against a simple model.

use std::collections::BTreeMap;

use mmsb_engine::Database;
use proptest::prelude::*;

use crate::{Connection, Value};

fn memory_db() -> Database {
    crate::test_db::memory_db("/write/db.mmsb")
}

fn connect() -> Connection {
    Connection::new(memory_db()).expect("connection")
}

/// Every row of `sql`, as values.
fn rows(c: &mut Connection, sql: &str) -> Vec<Vec<Value>> {
    c.query(sql, &[])
        .expect("query")
        .iter()
        .map(|r| r.values().to_vec())
        .collect()
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn prepared_inserts_coerce_check_and_reject_duplicates() {
    let mut c = connect();
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, r REAL, s VARCHAR(3) NOT NULL)")
        .expect("create");
    let insert = c
        .prepare("INSERT INTO t VALUES ($1, $2, $3)")
        .expect("prepare");
    let s = String::from("abc");
    insert
        .execute(&mut c, &[&1i64, &2i64, &s])
        .expect("integer into REAL");
    insert
        .execute(&mut c, &[&"2", &1.5f64, &"xy"])
        .expect("text into INTEGER");
    let err = insert
        .execute(&mut c, &[&1i64, &0.0f64, &"z"])
        .expect_err("duplicate key");
    assert_eq!(err.sqlstate(), "23505", "{err}");
    let err = insert
        .execute(&mut c, &[&3i64, &0.0f64, &"abcd"])
        .expect_err("too long");
    assert_eq!(err.sqlstate(), "22001", "{err}");
    let err = insert
        .execute(&mut c, &[&3i64, &0.0f64, &Value::Null])
        .expect_err("not null");
    assert_eq!(err.sqlstate(), "23502", "{err}");
    // A multi-row VALUES with a repeated key inserts none of its rows.
    let err = c
        .execute("INSERT INTO t VALUES (5, 0, 'a'), (6, 0, 'b'), (5, 0, 'c')")
        .expect_err("duplicate inside one statement");
    assert_eq!(err.sqlstate(), "23505", "{err}");
    assert_eq!(
        rows(&mut c, "SELECT id, r, s FROM t ORDER BY id"),
        vec![
            vec![int(1), Value::Real(2.0), text("abc")],
            vec![int(2), Value::Real(1.5), text("xy")],
        ]
    );
}

#[test]
fn inserts_into_a_rowid_table_and_with_defaults_store_whole_rows() {
    let mut c = connect();
    c.execute("CREATE TABLE r (a INTEGER, b TEXT DEFAULT 'd', c INTEGER)")
        .expect("create");
    c.execute("INSERT INTO r (c, a) VALUES (3, 1), (4, 2)")
        .expect("insert");
    c.execute("INSERT INTO r VALUES (5, DEFAULT, 6)")
        .expect("insert defaults");
    assert_eq!(
        rows(&mut c, "SELECT a, b, c FROM r ORDER BY a"),
        vec![
            vec![int(1), text("d"), int(3)],
            vec![int(2), text("d"), int(4)],
            vec![int(5), text("d"), int(6)],
        ]
    );
}

#[test]
fn a_table_wider_than_the_inline_row_inserts_every_column() {
    let mut c = connect();
    let width = 20;
    let columns: Vec<String> = (0..width).map(|i| format!("c{i} INTEGER")).collect();
    c.execute(&format!(
        "CREATE TABLE w (id INTEGER PRIMARY KEY, {})",
        columns.join(", ")
    ))
    .expect("create");
    let values: Vec<String> = (0..width).map(|i| (i * 10).to_string()).collect();
    c.execute(&format!("INSERT INTO w VALUES (1, {})", values.join(", ")))
        .expect("insert");
    let mut expected = vec![int(1)];
    expected.extend((0..width).map(|i| int(i * 10)));
    assert_eq!(rows(&mut c, "SELECT * FROM w"), vec![expected]);
}

#[test]
fn prepared_inserts_in_one_transaction_roll_back_to_a_savepoint() {
    let mut c = connect();
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT)")
        .expect("create");
    c.execute("BEGIN").expect("begin");
    let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").expect("prepare");
    for i in 0..50i64 {
        let s = format!("row {i}");
        insert.execute(&mut c, &[&i, &s]).expect("insert");
    }
    c.execute("SAVEPOINT s").expect("savepoint");
    c.execute("INSERT INTO t VALUES (100, 'a'), (101, 'b')")
        .expect("insert");
    // The second row repeats a key: the whole statement is undone.
    let err = c
        .execute("INSERT INTO t VALUES (102, 'c'), (7, 'dup')")
        .expect_err("duplicate key");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    c.execute("ROLLBACK TO SAVEPOINT s").expect("rollback to");
    insert
        .execute(&mut c, &[&103i64, &"after"])
        .expect("insert after rollback");
    c.execute("COMMIT").expect("commit");
    let all = rows(&mut c, "SELECT id FROM t WHERE id >= 49 ORDER BY id");
    assert_eq!(all, vec![vec![int(49)], vec![int(103)]]);
    assert_eq!(rows(&mut c, "SELECT count(*) FROM t"), vec![vec![int(51)]]);
}

#[test]
fn filtered_updates_and_deletes_keep_unread_columns_and_indexes() {
    let mut c = connect();
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, s TEXT)")
        .expect("create");
    c.execute("CREATE UNIQUE INDEX t_v ON t (v)")
        .expect("index");
    for i in 0..30i64 {
        c.execute_one(
            "INSERT INTO t VALUES ($1, $2, $3)",
            &[&i, &(i * 10), &format!("row {i}")],
        )
        .expect("insert");
    }
    let updated = c
        .execute("UPDATE t SET v = v + 1 WHERE id % 10 = 0")
        .expect("update");
    assert_eq!(updated[0].affected, 3);
    assert_eq!(
        rows(
            &mut c,
            "SELECT id, v, s FROM t WHERE id % 10 = 0 ORDER BY id"
        ),
        vec![
            vec![int(0), int(1), text("row 0")],
            vec![int(10), int(101), text("row 10")],
            vec![int(20), int(201), text("row 20")],
        ]
    );
    // The index follows the new values.
    assert_eq!(
        rows(&mut c, "SELECT id FROM t WHERE v = 101"),
        vec![vec![int(10)]]
    );
    assert!(rows(&mut c, "SELECT id FROM t WHERE v = 100").is_empty());
    // A key-moving UPDATE that collides is a duplicate and changes nothing.
    let err = c
        .execute("UPDATE t SET id = id + 1 WHERE id % 10 = 0")
        .expect_err("moves onto existing keys");
    assert_eq!(err.sqlstate(), "23505", "{err}");
    let deleted = c
        .execute("DELETE FROM t WHERE s LIKE 'row 1%' RETURNING id")
        .expect("delete");
    assert_eq!(deleted[0].affected, 11);
    assert_eq!(rows(&mut c, "SELECT count(*) FROM t"), vec![vec![int(19)]]);
    assert!(rows(&mut c, "SELECT id FROM t WHERE v = 101").is_empty());
}

/// One statement of the model test.
#[derive(Debug, Clone)]
enum Op {
    /// Insert (id, v) through a prepared statement.
    Insert(i64, i64),
    /// `UPDATE t SET v = v + add WHERE v % m = r`.
    Update { add: i64, m: i64, r: i64 },
    /// `DELETE FROM t WHERE v % m = r`.
    Delete { m: i64, r: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..40, 0i64..100).prop_map(|(id, v)| Op::Insert(id, v)),
        2 => (-5i64..5, 1i64..5, 0i64..5).prop_map(|(add, m, r)| Op::Update { add, m, r }),
        1 => (1i64..6, 0i64..6).prop_map(|(m, r)| Op::Delete { m, r }),
    ]
}

/// Runs `ops` on a table (with or without an index on `v`, inside one
/// transaction or not) and checks every row against a `BTreeMap` model.
fn run_model(ops: &[Op], indexed: bool, explicit: bool) -> Result<(), TestCaseError> {
    let mut c = connect();
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, s TEXT)")
        .expect("create");
    if indexed {
        c.execute("CREATE INDEX t_v ON t (v)").expect("index");
    }
    if explicit {
        c.execute("BEGIN").expect("begin");
    }
    let insert = c
        .prepare("INSERT INTO t VALUES ($1, $2, $3)")
        .expect("prepare");
    let mut model: BTreeMap<i64, (i64, String)> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Insert(id, v) => {
                let s = format!("s{id}");
                let result = insert.execute(&mut c, &[&id, &v, &s]);
                match model.entry(id) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        prop_assert!(result.is_err(), "duplicate {} accepted", id);
                        if explicit {
                            c.execute("ROLLBACK").expect("rollback");
                            return Ok(());
                        }
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        prop_assert!(result.is_ok(), "{:?}", result);
                        slot.insert((v, s));
                    }
                }
            }
            Op::Update { add, m, r } => {
                let sql = format!("UPDATE t SET v = v + {add} WHERE v % {m} = {r}");
                let n = c.execute(&sql).expect("update")[0].affected;
                let mut want = 0;
                for (v, _) in model.values_mut() {
                    if *v % m == r {
                        *v += add;
                        want += 1;
                    }
                }
                prop_assert_eq!(n, want);
            }
            Op::Delete { m, r } => {
                let sql = format!("DELETE FROM t WHERE v % {m} = {r}");
                let n = c.execute(&sql).expect("delete")[0].affected;
                let before = model.len();
                model.retain(|_, (v, _)| *v % m != r);
                prop_assert_eq!(n as usize, before - model.len());
            }
        }
    }
    if explicit {
        c.execute("COMMIT").expect("commit");
    }
    let got = rows(&mut c, "SELECT id, v, s FROM t ORDER BY id");
    let want: Vec<Vec<Value>> = model
        .iter()
        .map(|(id, (v, s))| vec![int(*id), int(*v), text(s)])
        .collect();
    prop_assert_eq!(got, want);
    if indexed {
        let by_index = rows(&mut c, "SELECT count(*) FROM t WHERE v >= -1000");
        prop_assert_eq!(by_index, vec![vec![int(model.len() as i64)]]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn writes_match_a_model(
        ops in prop::collection::vec(op(), 1..40),
        indexed in any::<bool>(),
        explicit in any::<bool>(),
    ) {
        run_model(&ops, indexed, explicit)?;
    }
}
