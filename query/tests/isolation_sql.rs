//! Isolation through SQL with several sessions on several threads: money is
//! neither created nor destroyed by concurrent transfers, increments are not
//! lost from REPEATABLE READ up, write skew is prevented under SERIALIZABLE,
//! and single statements always read a consistent snapshot.

use std::sync::Arc;

use mmsb_engine::{Database, Options};
use mmsb_query::{Connection, QueryError};

const THREADS: i64 = 4;
const ACCOUNTS: i64 = 8;
const TRANSFERS_PER_THREAD: i64 = 25;
const TOTAL: i64 = ACCOUNTS * 100;

fn memory_db() -> Database {
    let options = Options {
        storage: Arc::new(mmsb_wal::storage::MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    };
    options.open("/iso/db.mmsb").expect("in-memory database")
}

fn conn(db: &Database) -> Connection {
    Connection::new(db.clone()).expect("connection")
}

/// Runs `body` inside BEGIN/COMMIT at `level`, retrying serialization failures.
fn transaction(
    c: &mut Connection,
    level: &str,
    body: &mut dyn FnMut(&mut Connection) -> Result<(), QueryError>,
) -> u32 {
    let mut retries = 0;
    loop {
        c.execute(&format!("BEGIN ISOLATION LEVEL {level}"))
            .expect("begin");
        let outcome = body(c).and_then(|()| c.execute("COMMIT").map(|_| ()));
        match outcome {
            Ok(()) => return retries,
            Err(err) if err.is_retryable() => {
                let _ = c.execute("ROLLBACK");
                retries += 1;
                assert!(retries < 1000, "too many retries");
            }
            Err(err) => panic!("unexpected error: {err}"),
        }
    }
}

fn total(c: &mut Connection) -> i64 {
    c.query("SELECT sum(balance) FROM accounts", &[])
        .expect("sum")
        .scalar()
        .expect("scalar")
}

fn setup(db: &Database) {
    let mut c = conn(db);
    c.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        .expect("create");
    for id in 0..ACCOUNTS {
        c.query("INSERT INTO accounts VALUES ($1, 100)", &[&id])
            .expect("insert");
    }
}

#[test]
fn concurrent_transfers_preserve_the_total() {
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let db = memory_db();
        setup(&db);
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let mut c = conn(&db);
                    for i in 0..TRANSFERS_PER_THREAD {
                        let from = (t + i) % ACCOUNTS;
                        let to = (t * 3 + i * 5 + 1) % ACCOUNTS;
                        transaction(&mut c, level, &mut |c| {
                            c.query(
                                "UPDATE accounts SET balance = balance - 7 WHERE id = $1",
                                &[&from],
                            )?;
                            c.query(
                                "UPDATE accounts SET balance = balance + 7 WHERE id = $1",
                                &[&to],
                            )?;
                            Ok(())
                        });
                    }
                })
            })
            .collect();
        let mut reader = conn(&db);
        for _ in 0..20 {
            assert_eq!(
                total(&mut reader),
                TOTAL,
                "{level}: a reader saw money in flight"
            );
        }
        for w in workers {
            w.join().expect("worker");
        }
        assert_eq!(total(&mut reader), TOTAL, "{level}");
    }
}

#[test]
fn increments_are_not_lost_from_repeatable_read_up() {
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let db = memory_db();
        conn(&db)
            .execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO counter VALUES (1, 0)")
            .expect("setup");
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let mut c = conn(&db);
                    let mut retries = 0;
                    for _ in 0..TRANSFERS_PER_THREAD {
                        retries += transaction(&mut c, level, &mut |c| {
                            let n: i64 = c
                                .query("SELECT n FROM counter WHERE id = 1", &[])?
                                .scalar()?;
                            c.query("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])?;
                            Ok(())
                        });
                    }
                    retries
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let n: i64 = conn(&db)
            .query("SELECT n FROM counter", &[])
            .expect("n")
            .scalar()
            .expect("scalar");
        assert_eq!(n, THREADS * TRANSFERS_PER_THREAD, "{level} lost an update");
    }
}

#[test]
fn autocommit_statements_retry_conflicts_and_lose_nothing() {
    let db = memory_db();
    conn(&db)
        .execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER); INSERT INTO counter VALUES (1, 0)")
        .expect("setup");
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut c = conn(&db);
                for _ in 0..TRANSFERS_PER_THREAD {
                    c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                        .expect("autocommit update");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let n: i64 = conn(&db)
        .query("SELECT n FROM counter", &[])
        .expect("n")
        .scalar()
        .expect("scalar");
    assert_eq!(n, THREADS * TRANSFERS_PER_THREAD);
}

#[test]
fn write_skew_is_prevented_under_serializable_only() {
    for (level, skew_allowed) in [("REPEATABLE READ", true), ("SERIALIZABLE", false)] {
        let db = memory_db();
        conn(&db)
            .execute("CREATE TABLE oncall (name TEXT PRIMARY KEY, on_call BOOLEAN); INSERT INTO oncall VALUES ('a', true), ('b', true)")
            .expect("setup");
        let mut x = conn(&db);
        let mut y = conn(&db);
        for (c, _) in [(&mut x, 'a'), (&mut y, 'b')] {
            c.execute(&format!("BEGIN ISOLATION LEVEL {level}"))
                .expect("begin");
            let n: i64 = c
                .query("SELECT count(*) FROM oncall WHERE on_call", &[])
                .expect("count")
                .scalar()
                .expect("n");
            assert_eq!(n, 2);
        }
        x.execute("UPDATE oncall SET on_call = false WHERE name = 'a'")
            .expect("x update");
        y.execute("UPDATE oncall SET on_call = false WHERE name = 'b'")
            .expect("y update");
        x.execute("COMMIT").expect("first commit");
        let second = y.execute("COMMIT");
        match (skew_allowed, second) {
            (true, Ok(_)) => {}
            (false, Err(err)) => assert!(err.is_retryable() && err.sqlstate() == "40001", "{err}"),
            (_, other) => panic!("{level}: unexpected outcome {other:?}"),
        }
    }
}

#[test]
fn concurrent_inserts_into_a_rowid_table_keep_every_row_at_every_level() {
    for level in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
        let db = memory_db();
        conn(&db)
            .execute("CREATE TABLE log (msg INTEGER)")
            .expect("create");
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let mut c = conn(&db);
                    for i in 0..TRANSFERS_PER_THREAD {
                        transaction(&mut c, level, &mut |c| {
                            c.query("INSERT INTO log VALUES ($1)", &[&(t * 1000 + i)])?;
                            Ok(())
                        });
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let n: i64 = conn(&db)
            .query("SELECT count(DISTINCT msg) FROM log", &[])
            .expect("count")
            .scalar()
            .expect("scalar");
        assert_eq!(n, THREADS * TRANSFERS_PER_THREAD, "{level} lost an insert");
    }
}
