//! Differential tests: random data and random queries run on mmsb and on
//! SQLite (rusqlite), restricted to where the two agree on semantics
//! (integers without overflow or division, byte-ordered text, explicit
//! NULL ordering); results must match.

use std::sync::Arc;

use mmsb_engine::Options;
use mmsb_query::{Connection, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T_ROWS: i64 = 60;
const U_ROWS: i64 = 15;
const QUERIES_PER_SEED: usize = 150;
const SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];

struct Pair {
    mmsb: Connection,
    sqlite: rusqlite::Connection,
}

impl Pair {
    fn new() -> Pair {
        let options = Options {
            storage: Arc::new(mmsb_wal::storage::MemStorage::new()),
            checkpoint_on_close: false,
            ..Options::default()
        };
        let db = options.open("/diff/db.mmsb").expect("in-memory database");
        Pair {
            mmsb: Connection::new(db).expect("connection"),
            sqlite: rusqlite::Connection::open_in_memory().expect("sqlite"),
        }
    }

    fn both(&mut self, sql: &str) {
        self.mmsb
            .execute(sql)
            .unwrap_or_else(|e| panic!("mmsb failed {sql}: {e}"));
        self.sqlite
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("sqlite failed {sql}: {e}"));
    }

    fn mmsb_rows(&mut self, sql: &str) -> Vec<Vec<Value>> {
        let rows = self
            .mmsb
            .query(sql, &[])
            .unwrap_or_else(|e| panic!("mmsb failed {sql}: {e}"));
        rows.into_iter().map(|r| r.into_values()).collect()
    }

    fn sqlite_rows(&mut self, sql: &str) -> Vec<Vec<Value>> {
        let mut stmt = self
            .sqlite
            .prepare(sql)
            .unwrap_or_else(|e| panic!("sqlite failed {sql}: {e}"));
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(i) => Value::Integer(i),
                            rusqlite::types::ValueRef::Real(r) => Value::Real(r),
                            rusqlite::types::ValueRef::Text(t) => {
                                Value::Text(String::from_utf8_lossy(t).into())
                            }
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Value>>>()
            })
            .unwrap_or_else(|e| panic!("sqlite failed {sql}: {e}"));
        rows.collect::<rusqlite::Result<_>>()
            .unwrap_or_else(|e| panic!("sqlite failed {sql}: {e}"))
    }

    fn compare(&mut self, sql: &str, ordered: bool) {
        let mut ours = self.mmsb_rows(sql);
        let mut theirs = self.sqlite_rows(sql);
        if !ordered {
            let key = |r: &Vec<Value>| format!("{r:?}");
            ours.sort_by_key(key);
            theirs.sort_by_key(key);
        }
        let same = ours.len() == theirs.len()
            && ours
                .iter()
                .zip(&theirs)
                .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(x, y)));
        assert!(
            same,
            "results differ for {sql}\nmmsb:   {ours:?}\nsqlite: {theirs:?}"
        );
    }
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        (Value::Real(x), Value::Integer(y)) | (Value::Integer(y), Value::Real(x)) => {
            *x == *y as f64
        }
        _ => a == b,
    }
}

fn maybe_null(rng: &mut StdRng, value: String) -> String {
    if rng.gen_bool(0.15) {
        "NULL".into()
    } else {
        value
    }
}

const STRINGS: [&str; 6] = ["'ab'", "'b'", "'abc'", "''", "'zz'", "'a'"];

fn populate(pair: &mut Pair, rng: &mut StdRng) {
    pair.both("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, s TEXT)");
    pair.both("CREATE TABLE u (k INTEGER PRIMARY KEY, a INTEGER, w TEXT)");
    pair.both("CREATE INDEX t_a ON t (a, b)");
    for id in 0..T_ROWS {
        let raw = rng.gen_range(-4..5).to_string();
        let a = maybe_null(rng, raw);
        let raw = rng.gen_range(-20..21).to_string();
        let b = maybe_null(rng, raw);
        let raw = STRINGS[rng.gen_range(0..STRINGS.len())].into();
        let s = maybe_null(rng, raw);
        pair.both(&format!(
            "INSERT INTO t VALUES ({}, {a}, {b}, {s})",
            id * 3 - 40
        ));
    }
    for k in 0..U_ROWS {
        let raw = rng.gen_range(-4..5).to_string();
        let a = maybe_null(rng, raw);
        let raw = STRINGS[rng.gen_range(0..STRINGS.len())].into();
        let w = maybe_null(rng, raw);
        pair.both(&format!("INSERT INTO u VALUES ({k}, {a}, {w})"));
    }
}

fn int_column(rng: &mut StdRng, qualifier: &str) -> String {
    format!("{qualifier}{}", ["id", "a", "b"][rng.gen_range(0..3)])
}

fn constant(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.05) {
        "NULL".into()
    } else {
        rng.gen_range(-45..50).to_string()
    }
}

fn predicate(rng: &mut StdRng, q: &str, depth: u32) -> String {
    let leaf = depth == 0 || rng.gen_bool(0.4);
    if leaf {
        let op = ["=", "<>", "<", "<=", ">", ">="][rng.gen_range(0..6)];
        match rng.gen_range(0..7) {
            0 => format!("{} {op} {}", int_column(rng, q), constant(rng)),
            1 => format!("{} {op} {}", int_column(rng, q), int_column(rng, q)),
            2 => format!(
                "{} IS {}NULL",
                int_column(rng, q),
                if rng.gen() { "NOT " } else { "" }
            ),
            3 => {
                let lo = rng.gen_range(-45..20);
                format!(
                    "{} {}BETWEEN {lo} AND {}",
                    int_column(rng, q),
                    if rng.gen_bool(0.3) { "NOT " } else { "" },
                    lo + rng.gen_range(0..30)
                )
            }
            4 => {
                let items: Vec<String> = (0..rng.gen_range(1..4)).map(|_| constant(rng)).collect();
                format!(
                    "{} {}IN ({})",
                    int_column(rng, q),
                    if rng.gen_bool(0.3) { "NOT " } else { "" },
                    items.join(", ")
                )
            }
            5 => format!("{q}s {op} {}", STRINGS[rng.gen_range(0..STRINGS.len())]),
            _ => format!("{q}id {op} {}", rng.gen_range(-45..150)),
        }
    } else {
        match rng.gen_range(0..3) {
            0 => format!("NOT ({})", predicate(rng, q, depth - 1)),
            1 => format!(
                "({}) AND ({})",
                predicate(rng, q, depth - 1),
                predicate(rng, q, depth - 1)
            ),
            _ => format!(
                "({}) OR ({})",
                predicate(rng, q, depth - 1),
                predicate(rng, q, depth - 1)
            ),
        }
    }
}

/// A condition on table `u` alone (columns k, a, w).
fn u_predicate(rng: &mut StdRng) -> String {
    let leaf = |rng: &mut StdRng| {
        let op = ["=", "<>", "<", ">="][rng.gen_range(0..4)];
        match rng.gen_range(0..4) {
            0 => format!("k {op} {}", rng.gen_range(-2..16)),
            1 => format!("a {op} {}", constant(rng)),
            2 => format!("a IS {}NULL", if rng.gen() { "NOT " } else { "" }),
            _ => format!("w {op} {}", STRINGS[rng.gen_range(0..STRINGS.len())]),
        }
    };
    match rng.gen_range(0..3) {
        0 => leaf(rng),
        1 => format!("({}) AND ({})", leaf(rng), leaf(rng)),
        _ => format!("({}) OR NOT ({})", leaf(rng), leaf(rng)),
    }
}

fn random_query(rng: &mut StdRng) -> (String, bool) {
    let p = predicate(rng, "", 3);
    let tp = predicate(rng, "t.", 2);
    let up = u_predicate(rng);
    let p2 = predicate(rng, "", 2);
    match rng.gen_range(0..18) {
        16 => (format!("SELECT a, n FROM (SELECT a, count(*) AS n FROM t WHERE {p} GROUP BY a) AS g WHERE n > 1"), false),
        17 => (format!("WITH c AS (SELECT id, b FROM t WHERE {p}) SELECT c.id, u.k FROM c JOIN u ON c.b = u.a WHERE {up}"), false),
        12 => (format!("SELECT a, s FROM t WHERE {p} UNION SELECT a, w FROM u WHERE {up}"), false),
        13 => (format!("SELECT a FROM t WHERE {p} INTERSECT SELECT a FROM u WHERE {up}"), false),
        14 => (format!("SELECT a, b FROM t WHERE {p} EXCEPT SELECT a, b FROM t WHERE {p2}"), false),
        15 => (format!("SELECT a, s FROM t WHERE {p} UNION ALL SELECT k, w FROM u WHERE {up}"), false),
        9 => (format!("SELECT id, a FROM t WHERE a {}IN (SELECT a FROM u WHERE {up})", if rng.gen() { "NOT " } else { "" }), false),
        10 => (format!("SELECT id FROM t WHERE {p} AND {}EXISTS (SELECT 1 FROM u WHERE {up})", if rng.gen() { "NOT " } else { "" }), false),
        11 => (format!("SELECT id, b - (SELECT max(b) FROM t WHERE {p}) FROM t WHERE b > (SELECT min(a) FROM u)"), false),
        0 => (format!("SELECT id, a, b, s FROM t WHERE {p}"), false),
        1 => (format!("SELECT a, count(*), sum(b), min(b), max(s), count(s) FROM t WHERE {p} GROUP BY a"), false),
        2 => (format!("SELECT id, a + b, a - b * 2, -a, b % 7 FROM t WHERE {p}"), false),
        3 => (format!("SELECT t.id, u.k, u.w FROM t JOIN u ON t.a = u.a WHERE {tp}"), false),
        4 => (format!("SELECT t.id, u.k FROM t LEFT JOIN u ON t.a = u.a AND u.w <> 'b' WHERE {tp}"), false),
        5 => (
            format!(
                "SELECT id, a FROM t WHERE {p} ORDER BY id {} LIMIT {} OFFSET {}",
                if rng.gen() { "DESC" } else { "ASC" },
                rng.gen_range(0..10),
                rng.gen_range(0..5)
            ),
            true,
        ),
        6 => (format!("SELECT count(DISTINCT a), sum(DISTINCT b), avg(b), count(*) FROM t WHERE {p}"), false),
        7 => (format!("SELECT DISTINCT a, s FROM t WHERE {p}"), false),
        _ => (
            format!("SELECT a, b, id FROM t WHERE {p} ORDER BY a NULLS LAST, b DESC NULLS FIRST, id LIMIT 15"),
            true,
        ),
    }
}

#[test]
fn queries_agree_with_sqlite() {
    for seed in SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pair = Pair::new();
        populate(&mut pair, &mut rng);
        for _ in 0..QUERIES_PER_SEED {
            let (sql, ordered) = random_query(&mut rng);
            pair.compare(&sql, ordered);
        }
    }
}

#[test]
fn writes_agree_with_sqlite() {
    for seed in SEEDS {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xD1FF);
        let mut pair = Pair::new();
        populate(&mut pair, &mut rng);
        for step in 0..40 {
            let p = predicate(&mut rng, "", 2);
            let sql = match rng.gen_range(0..4) {
                0 => format!("UPDATE t SET b = b + 1, s = 'ab' WHERE {p}"),
                1 => format!("UPDATE t SET a = a - 1 WHERE {p}"),
                2 => format!("DELETE FROM t WHERE {p}"),
                _ => format!(
                    "INSERT INTO t VALUES ({}, {}, {}, 'new')",
                    1000 + step,
                    constant(&mut rng),
                    constant(&mut rng)
                ),
            };
            pair.both(&sql);
            pair.compare("SELECT id, a, b, s FROM t ORDER BY id", true);
            pair.compare("SELECT id, a, b FROM t WHERE a = 1 ORDER BY id", true);
        }
    }
}
