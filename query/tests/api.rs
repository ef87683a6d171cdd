//! The Rust API of the SQL layer: prepared statements with parameters,
//! typed rows, error kinds and positions, persistence across reopen,
//! sessions on several threads.

use std::sync::Arc;

use mmsb_engine::{Database, Options};
use mmsb_query::{Connection, QueryError, Value};

fn memory_db() -> Database {
    let options = Options {
        storage: Arc::new(mmsb_wal::storage::MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    };
    options.open("/api/db.mmsb").expect("in-memory database")
}

fn conn(db: &Database) -> Connection {
    Connection::new(db.clone()).expect("connection")
}

#[test]
fn prepared_statements_bind_parameters_and_return_typed_rows() {
    let db = memory_db();
    let mut c = conn(&db);
    c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance REAL, vip BOOLEAN, pic BYTEA)")
        .expect("create");
    let insert = c
        .prepare("INSERT INTO accounts VALUES ($1, $2, $3, $4, $5)")
        .expect("prepare");
    for i in 0..20i64 {
        let name = format!("user{i}");
        let vip = i % 2 == 0;
        let pic: Option<Vec<u8>> = (i % 3 == 0).then(|| vec![i as u8, 0, 255]);
        let result = insert
            .execute(&mut c, &[&i, &name, &(i as f64 * 1.5), &vip, &pic])
            .expect("insert");
        assert_eq!(result.tag(), "INSERT 0 1");
    }
    let select = c
        .prepare("SELECT name, balance, vip, pic FROM accounts WHERE id = $1")
        .expect("prepare");
    let rows = select.query(&mut c, &[&3]).expect("select");
    assert_eq!(rows.columns(), ["name", "balance", "vip", "pic"]);
    let row = rows.get(0).expect("one row");
    assert_eq!(row.get::<String>(0).expect("name"), "user3");
    assert_eq!(row.get::<f64>(1).expect("balance"), 4.5);
    assert!(!row.get::<bool>(2).expect("vip"));
    assert_eq!(
        row.get::<Option<Vec<u8>>>(3).expect("pic"),
        Some(vec![3, 0, 255])
    );
    assert!(
        row.get::<i64>(0).is_err(),
        "a text column read as i64 must fail"
    );
    assert!(select.query(&mut c, &[&99]).expect("no match").is_empty());

    let count: i64 = c
        .query(
            "SELECT count(*) FROM accounts WHERE balance > $1 AND vip = $2",
            &[&10.0, &true],
        )
        .expect("count")
        .scalar()
        .expect("scalar");
    assert_eq!(count, 6, "ids 8, 10, ..., 18");
    assert_eq!(
        c.query("SELECT $1 + 1, $2", &[&41, &Option::<i64>::None])
            .expect("params")
            .get(0)
            .map(|r| r.values().to_vec()),
        Some(vec![Value::Integer(42), Value::Null])
    );
    let err = select.query(&mut c, &[]).expect_err("missing parameter");
    assert_eq!(err.sqlstate(), "08P01");
}

#[test]
fn errors_have_kinds_positions_and_sqlstates() {
    let db = memory_db();
    let mut c = conn(&db);
    match c.execute("SELECT 1;\nSELECT * FORM t") {
        Err(QueryError::Parse { line, column, .. }) => {
            assert_eq!((line, column), (2, 15), "at the stray `t`")
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let err = c
        .execute("SELECT sum(1) OVER ()")
        .expect_err("window function");
    assert!(matches!(err, QueryError::NotSupported(_)), "{err:?}");
    assert!(err.to_string().starts_with("not supported: "), "{err}");
    assert_eq!(
        c.execute("SELECT 1/0").expect_err("div").sqlstate(),
        "22012"
    );
    assert_eq!(
        c.execute("SELECT * FROM nope")
            .expect_err("table")
            .sqlstate(),
        "42P01"
    );
    for bad in [
        "INSERT INTO",
        "CREATE TABLE t (",
        "SELECT 'unterminated",
        "SELECT * FROM t WHERE a = ANY (SELECT 1)",
        "WITH RECURSIVE x AS (SELECT 1) SELECT * FROM x",
        "SELECT sum(a) OVER () FROM t",
        "COPY t FROM stdin",
        "SELECT ?",
    ] {
        let err = c.execute(bad).expect_err(bad);
        assert!(
            matches!(
                err,
                QueryError::Parse { .. } | QueryError::NotSupported(_) | QueryError::Sql { .. }
            ),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sql.mmsb");
    {
        let db = Database::open(&path).expect("open");
        let mut c = conn(&db);
        c.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT UNIQUE);
             INSERT INTO t VALUES (1, 'one'), (2, 'two');
             ALTER TABLE t ADD COLUMN n INTEGER DEFAULT 5;",
        )
        .expect("script");
    }
    let db = Database::open(&path).expect("reopen");
    let mut c = conn(&db);
    let rows = c
        .query("SELECT id, s, n FROM t WHERE s = 'two'", &[])
        .expect("select");
    assert_eq!(
        rows.get(0).map(|r| r.values().to_vec()),
        Some(vec![
            Value::Integer(2),
            Value::Text("two".into()),
            Value::Integer(5)
        ])
    );
    let tables = c.tables().expect("tables");
    assert_eq!(tables.len(), 1);
    assert!(
        tables[0]
            .to_sql()
            .contains("CREATE UNIQUE INDEX t_s_key ON t (s);"),
        "{}",
        tables[0].to_sql()
    );
}

#[test]
fn sessions_run_on_many_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Connection>();
    let db = memory_db();
    conn(&db)
        .execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, thread INTEGER)")
        .expect("create");
    let handles: Vec<_> = (0..4i64)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut c = conn(&db);
                for i in 0..25 {
                    c.query("INSERT INTO hits VALUES ($1, $2)", &[&(t * 100 + i), &t])
                        .expect("insert");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let rows = conn(&db)
        .query(
            "SELECT thread, count(*) FROM hits GROUP BY thread ORDER BY thread",
            &[],
        )
        .expect("count");
    let counts: Vec<i64> = rows.iter().map(|r| r.get(1).expect("count")).collect();
    assert_eq!(counts, vec![25; 4]);
}

#[test]
fn dropping_a_connection_rolls_its_transaction_back() {
    let db = memory_db();
    conn(&db)
        .execute("CREATE TABLE t (a INTEGER)")
        .expect("create");
    {
        let mut c = conn(&db);
        c.execute("BEGIN; INSERT INTO t VALUES (1)")
            .expect("insert");
        assert!(c.in_transaction());
    }
    let n: i64 = conn(&db)
        .query("SELECT count(*) FROM t", &[])
        .expect("count")
        .scalar()
        .expect("scalar");
    assert_eq!(n, 0);
}

#[test]
fn prepared_plans_follow_schema_changes() {
    let db = memory_db();
    let mut c = conn(&db);
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); INSERT INTO t VALUES (1, 'x')")
        .expect("setup");
    let all = c.prepare("SELECT * FROM t WHERE id = $1").expect("prepare");
    assert_eq!(
        all.query(&mut c, &[&1]).expect("first").columns(),
        ["id", "a"]
    );
    c.execute("ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 9")
        .expect("alter");
    let rows = all.query(&mut c, &[&1]).expect("after alter");
    assert_eq!(rows.columns(), ["id", "a", "b"]);
    assert_eq!(
        rows.get(0).map(|r| r.values().to_vec()),
        Some(vec![
            Value::Integer(1),
            Value::Text("x".into()),
            Value::Integer(9)
        ])
    );
    c.execute("DROP TABLE t").expect("drop");
    assert_eq!(
        all.query(&mut c, &[&1]).expect_err("dropped").sqlstate(),
        "42P01"
    );
    c.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
        .expect("recreate");
    c.execute("INSERT INTO t VALUES ('1')").expect("insert");
    let rows = all.query(&mut c, &[&"1"]).expect("recreated");
    assert_eq!(rows.columns(), ["id"]);
    assert_eq!(rows.len(), 1);
    // Inside a transaction, DDL and ROLLBACK TO re-check the plan.
    c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .expect("begin");
    assert_eq!(all.query(&mut c, &[&"1"]).expect("in tx").columns(), ["id"]);
    c.execute("SAVEPOINT s; ALTER TABLE t ADD COLUMN z INTEGER")
        .expect("alter in tx");
    assert_eq!(
        all.query(&mut c, &[&"1"]).expect("after alter").columns(),
        ["id", "z"]
    );
    c.execute("ROLLBACK TO s").expect("rollback to");
    assert_eq!(
        all.query(&mut c, &[&"1"])
            .expect("after rollback to")
            .columns(),
        ["id"]
    );
    c.execute("COMMIT").expect("commit");
    // A prepared statement works on another session too.
    let mut other = conn(&db);
    assert_eq!(
        all.query(&mut other, &[&"1"]).expect("other session").len(),
        1
    );
}

#[test]
fn deeply_nested_input_is_an_error_not_a_crash() {
    let db = memory_db();
    let mut c = conn(&db);
    let long_sum = format!("SELECT {}", vec!["1"; 20_000].join(" + "));
    let err = c.execute(&long_sum).expect_err("too deep");
    assert!(
        matches!(err, QueryError::Sql { .. } | QueryError::Parse { .. }),
        "{err:?}"
    );
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    assert!(c.execute(&nested).is_err());
    let not_chain = format!("SELECT {}true", "NOT ".repeat(5_000));
    assert!(c.execute(&not_chain).is_err());
    // Just inside the limits: accepted, and evaluated without exhausting the stack.
    let near_limit = format!("SELECT {}", vec!["1"; 90].join(" + "));
    let n: i64 = c
        .query(&near_limit, &[])
        .expect("90 terms")
        .scalar()
        .expect("scalar");
    assert_eq!(n, 90);
    let nested = format!("SELECT {}1{}", "(1 + ".repeat(25), ")".repeat(25));
    let n: i64 = c
        .query(&nested, &[])
        .expect("25 levels")
        .scalar()
        .expect("scalar");
    assert_eq!(n, 26);
}
