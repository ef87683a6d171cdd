//! SQL workload, mmsb vs SQLite (rusqlite, WAL, synchronous=FULL), both
//! durable on the same disk: bulk insert in one transaction, durable
//! autocommit inserts, point selects by primary key (prepared), range
//! scans, updating 10% of the rows, GROUP BY over every row.
//!
//! Sizes: `MMSB_SQL_BENCH_ROWS` (default 20,000; the full run uses 1,000,000)
//! and `MMSB_SQL_BENCH_AUTOCOMMIT` (default 200 inserts).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use mmsb::{Connection, Database};

const DEFAULT_ROWS: i64 = 20_000;
const DEFAULT_AUTOCOMMIT: i64 = 200;
const POINT_SELECTS: i64 = 2_000;
const RANGE_SCANS: i64 = 50;
const RANGE_ROWS: i64 = 1_000;
const GROUPS: i64 = 100;

fn env_count(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value_of(i: i64) -> i64 {
    i.wrapping_mul(2_654_435_761) % 1_000_003
}

/// A pseudo-random permutation of keys for point selects.
fn probe_key(i: i64, rows: i64) -> i64 {
    (i.wrapping_mul(7_919) + 13).rem_euclid(rows)
}

trait Engine {
    fn setup(&mut self);
    fn bulk_insert(&mut self, rows: i64);
    fn autocommit_inserts(&mut self, first: i64, count: i64);
    fn point_selects(&mut self, rows: i64, count: i64) -> i64;
    fn range_scans(&mut self, rows: i64) -> i64;
    fn update_tenth(&mut self) -> i64;
    fn group_by(&mut self) -> i64;
}

struct Mmsb {
    _dir: tempfile::TempDir,
    conn: Connection,
}

impl Mmsb {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(dir.path().join("bench.mmsb")).expect("open");
        Mmsb {
            conn: Connection::new(db).expect("connection"),
            _dir: dir,
        }
    }
}

impl Engine for Mmsb {
    fn setup(&mut self) {
        self.conn
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, v INTEGER, s TEXT)")
            .expect("create");
    }

    fn bulk_insert(&mut self, rows: i64) {
        self.conn.execute("BEGIN").expect("begin");
        let insert = self
            .conn
            .prepare("INSERT INTO t VALUES ($1, $2, $3, $4)")
            .expect("prepare");
        for i in 0..rows {
            let s = format!("row {i}");
            insert
                .execute(&mut self.conn, &[&i, &(i % GROUPS), &value_of(i), &s])
                .expect("insert");
        }
        self.conn.execute("COMMIT").expect("commit");
    }

    fn autocommit_inserts(&mut self, first: i64, count: i64) {
        let insert = self
            .conn
            .prepare("INSERT INTO t VALUES ($1, $2, $3, 'x')")
            .expect("prepare");
        for i in first..first + count {
            insert
                .execute(&mut self.conn, &[&i, &(i % GROUPS), &i])
                .expect("insert");
        }
    }

    fn point_selects(&mut self, rows: i64, count: i64) -> i64 {
        let select = self
            .conn
            .prepare("SELECT v FROM t WHERE id = $1")
            .expect("prepare");
        let mut sum = 0;
        for i in 0..count {
            let rows = select
                .query(&mut self.conn, &[&probe_key(i, rows)])
                .expect("select");
            sum += rows.get(0).map_or(0, |r| r.get::<i64>(0).unwrap_or(0));
        }
        sum
    }

    fn range_scans(&mut self, rows: i64) -> i64 {
        let scan = self
            .conn
            .prepare("SELECT sum(v) FROM t WHERE id BETWEEN $1 AND $2")
            .expect("prepare");
        let mut sum = 0;
        for i in 0..RANGE_SCANS {
            let lo = probe_key(i, rows.max(RANGE_ROWS) - RANGE_ROWS + 1);
            let rows = scan
                .query(&mut self.conn, &[&lo, &(lo + RANGE_ROWS - 1)])
                .expect("scan");
            sum += rows.scalar::<Option<i64>>().expect("sum").unwrap_or(0);
        }
        sum
    }

    fn update_tenth(&mut self) -> i64 {
        self.conn
            .execute("UPDATE t SET v = v + 1 WHERE id % 10 = 0")
            .expect("update")[0]
            .affected as i64
    }

    fn group_by(&mut self) -> i64 {
        self.conn
            .query("SELECT g, count(*), sum(v) FROM t GROUP BY g", &[])
            .expect("group by")
            .len() as i64
    }
}

struct Sqlite {
    _dir: tempfile::TempDir,
    conn: rusqlite::Connection,
}

impl Sqlite {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = rusqlite::Connection::open(dir.path().join("bench.sqlite")).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .expect("pragmas");
        Sqlite { _dir: dir, conn }
    }
}

impl Engine for Sqlite {
    fn setup(&mut self) {
        self.conn
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER, v INTEGER, s TEXT)")
            .expect("create");
    }

    fn bulk_insert(&mut self, rows: i64) {
        let tx = self.conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare("INSERT INTO t VALUES (?1, ?2, ?3, ?4)")
                .expect("prepare");
            for i in 0..rows {
                insert
                    .execute(rusqlite::params![
                        i,
                        i % GROUPS,
                        value_of(i),
                        format!("row {i}")
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn autocommit_inserts(&mut self, first: i64, count: i64) {
        let mut insert = self
            .conn
            .prepare("INSERT INTO t VALUES (?1, ?2, ?3, 'x')")
            .expect("prepare");
        for i in first..first + count {
            insert
                .execute(rusqlite::params![i, i % GROUPS, i])
                .expect("insert");
        }
    }

    fn point_selects(&mut self, rows: i64, count: i64) -> i64 {
        let mut select = self
            .conn
            .prepare("SELECT v FROM t WHERE id = ?1")
            .expect("prepare");
        let mut sum = 0;
        for i in 0..count {
            sum += select
                .query_row([probe_key(i, rows)], |r| r.get::<_, i64>(0))
                .unwrap_or(0);
        }
        sum
    }

    fn range_scans(&mut self, rows: i64) -> i64 {
        let mut scan = self
            .conn
            .prepare("SELECT sum(v) FROM t WHERE id BETWEEN ?1 AND ?2")
            .expect("prepare");
        let mut sum = 0;
        for i in 0..RANGE_SCANS {
            let lo = probe_key(i, rows.max(RANGE_ROWS) - RANGE_ROWS + 1);
            sum += scan
                .query_row([lo, lo + RANGE_ROWS - 1], |r| r.get::<_, Option<i64>>(0))
                .expect("scan")
                .unwrap_or(0);
        }
        sum
    }

    fn update_tenth(&mut self) -> i64 {
        self.conn
            .execute("UPDATE t SET v = v + 1 WHERE id % 10 = 0", [])
            .expect("update") as i64
    }

    fn group_by(&mut self) -> i64 {
        let mut stmt = self
            .conn
            .prepare("SELECT g, count(*), sum(v) FROM t GROUP BY g")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .expect("group by");
        rows.count() as i64
    }
}

/// Times `work` on a freshly loaded engine, `iters` times.
fn timed<E: Engine>(
    make: &dyn Fn() -> E,
    rows: i64,
    load: bool,
    iters: u64,
    work: &dyn Fn(&mut E),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut engine = make();
        engine.setup();
        if load {
            engine.bulk_insert(rows);
        }
        let start = Instant::now();
        work(&mut engine);
        total += start.elapsed();
    }
    total
}

fn bench_engine<E: Engine>(c: &mut Criterion, name: &str, make: &dyn Fn() -> E) {
    let rows = env_count("MMSB_SQL_BENCH_ROWS", DEFAULT_ROWS);
    let autocommit = env_count("MMSB_SQL_BENCH_AUTOCOMMIT", DEFAULT_AUTOCOMMIT);
    let mut group = c.benchmark_group("sql");
    group.sample_size(10);
    // Each iteration loads a whole database: a fixed count per sample.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(format!("bulk_insert_{rows}/{name}"), |b| {
        b.iter_custom(|iters| timed(make, rows, false, iters, &|e| e.bulk_insert(rows)))
    });
    group.bench_function(format!("autocommit_inserts_{autocommit}/{name}"), |b| {
        b.iter_custom(|iters| {
            timed(make, 0, false, iters, &|e| {
                e.autocommit_inserts(0, autocommit)
            })
        })
    });
    // Read-only workloads share one loaded database.
    let mut loaded = make();
    loaded.setup();
    loaded.bulk_insert(rows);
    group.bench_function(format!("point_selects_{POINT_SELECTS}/{name}"), |b| {
        b.iter(|| black_box(loaded.point_selects(rows, POINT_SELECTS)))
    });
    group.bench_function(
        format!("range_scans_{RANGE_SCANS}x{RANGE_ROWS}/{name}"),
        |b| b.iter(|| black_box(loaded.range_scans(rows))),
    );
    group.bench_function(format!("group_by_{rows}/{name}"), |b| {
        b.iter(|| black_box(loaded.group_by()))
    });
    group.bench_function(format!("update_10pct_{rows}/{name}"), |b| {
        b.iter(|| black_box(loaded.update_tenth()))
    });
    group.finish();
}

fn sql_vs_sqlite(c: &mut Criterion) {
    bench_engine(c, "mmsb", &Mmsb::new);
    bench_engine(c, "sqlite", &Sqlite::new);
}

criterion_group!(benches, sql_vs_sqlite);
criterion_main!(benches);
