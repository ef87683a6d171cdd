//! SQLite (bundled, through rusqlite) with `journal_mode=WAL` and
//! `synchronous=FULL` (a commit fsyncs the WAL before it returns), one
//! `kv(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID` table, a 4 GiB page
//! cache (as the other engines' caches) and prepared statements held for the
//! whole transaction. One writer connection; readers take a connection from a
//! pool (one per thread, opened on first use) and read inside a deferred
//! transaction, so each read phase sees one snapshot, like the other engines.
//! Compaction step: `PRAGMA wal_checkpoint(TRUNCATE)`.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::engine::{value_digest, BenchEngine, KvReader, KvWriter, ScanSummary, CACHE_BYTES};
use crate::error::{Error, Result};

const NAME: &str = "sqlite";

/// File name of the database inside the engine directory (`-wal` and
/// `-shm` sit beside it).
const FILE_NAME: &str = "kv.sqlite";

const CREATE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID";
const INSERT_SQL: &str = "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)";
const DELETE_SQL: &str = "DELETE FROM kv WHERE key = ?1";
const GET_SQL: &str = "SELECT value FROM kv WHERE key = ?1";
const SCAN_SQL: &str = "SELECT key, value FROM kv WHERE key >= ?1 ORDER BY key LIMIT ?2";
const LEN_SQL: &str = "SELECT COUNT(*) FROM kv";

/// SQLite on one database file.
pub struct SqliteEngine {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteEngine {
    /// Creates the database under `dir` and its table.
    pub fn open(dir: &Path) -> Result<SqliteEngine> {
        let path = dir.join(FILE_NAME);
        let writer = connect(&path)?;
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(Error::engine(NAME, "journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "sqlite: journal_mode is {mode}, not WAL"
            )));
        }
        writer
            .execute(CREATE_SQL, [])
            .map_err(Error::engine(NAME, "create table"))?;
        Ok(SqliteEngine {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn take_reader(&self) -> Result<Connection> {
        match self.readers.lock().pop() {
            Some(conn) => Ok(conn),
            None => connect(&self.path),
        }
    }
}

/// Opens a connection with the per-connection settings.
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(Error::engine(NAME, "open"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(Error::engine(NAME, "synchronous=FULL"))?;
    let cache_kib = -((CACHE_BYTES / 1024) as i64);
    conn.pragma_update(None, "cache_size", cache_kib)
        .map_err(Error::engine(NAME, "cache_size"))?;
    Ok(conn)
}

impl BenchEngine for SqliteEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::engine(NAME, "begin"))?;
        {
            let mut writer = SqliteWriter {
                insert: tx
                    .prepare_cached(INSERT_SQL)
                    .map_err(Error::engine(NAME, "prepare"))?,
                delete: tx
                    .prepare_cached(DELETE_SQL)
                    .map_err(Error::engine(NAME, "prepare"))?,
            };
            body(&mut writer)?;
        }
        tx.commit().map_err(Error::engine(NAME, "commit"))
    }

    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()> {
        let mut conn = self.take_reader()?;
        let outcome = read_in(&mut conn, body);
        self.readers.lock().push(conn);
        outcome
    }

    fn compact(&mut self) -> Result<&'static str> {
        let conn = self.writer.lock();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(Error::engine(NAME, "wal_checkpoint"))?;
        if busy != 0 {
            return Err(Error::Engine {
                engine: NAME,
                op: "wal_checkpoint",
                message: "checkpoint was blocked by a reader".into(),
            });
        }
        Ok("`PRAGMA wal_checkpoint(TRUNCATE)`")
    }
}

/// Runs `body` in a deferred (read) transaction on `conn`.
fn read_in(
    conn: &mut Connection,
    body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>,
) -> Result<()> {
    let tx = conn.transaction().map_err(Error::engine(NAME, "begin"))?;
    {
        let prepare = |sql| {
            tx.prepare_cached(sql)
                .map_err(Error::engine(NAME, "prepare"))
        };
        let mut reader = SqliteReader {
            get: prepare(GET_SQL)?,
            scan: prepare(SCAN_SQL)?,
            len: prepare(LEN_SQL)?,
        };
        body(&mut reader)?;
    }
    tx.commit().map_err(Error::engine(NAME, "commit read"))
}

struct SqliteWriter<'c> {
    insert: CachedStatement<'c>,
    delete: CachedStatement<'c>,
}

impl KvWriter for SqliteWriter<'_> {
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.insert
            .execute((key, value))
            .map_err(Error::engine(NAME, "insert"))?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.delete
            .execute([key])
            .map_err(Error::engine(NAME, "delete"))?;
        Ok(())
    }
}

struct SqliteReader<'c> {
    get: CachedStatement<'c>,
    scan: CachedStatement<'c>,
    len: CachedStatement<'c>,
}

/// The BLOB in column `idx`, borrowed from the row.
fn blob<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r [u8]> {
    Ok(row.get_ref(idx)?.as_blob()?)
}

impl KvReader for SqliteReader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        self.get
            .query_row([key], |row| blob(row, 0).map(value_digest))
            .optional()
            .map_err(Error::engine(NAME, "get"))
    }

    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
        let limit = i64::try_from(limit)
            .map_err(|_| Error::Config(format!("scan limit {limit} too large")))?;
        let mut rows = self
            .scan
            .query((start, limit))
            .map_err(Error::engine(NAME, "scan"))?;
        let mut summary = ScanSummary::default();
        while let Some(row) = rows.next().map_err(Error::engine(NAME, "scan next"))? {
            let key = blob(row, 0).map_err(Error::engine(NAME, "scan key"))?;
            let value = blob(row, 1).map_err(Error::engine(NAME, "scan value"))?;
            summary.add(key, value);
        }
        Ok(summary)
    }

    fn entry_count(&mut self) -> Result<u64> {
        let count: i64 = self
            .len
            .query_row([], |row| row.get(0))
            .map_err(Error::engine(NAME, "count"))?;
        u64::try_from(count).map_err(|_| Error::Engine {
            engine: NAME,
            op: "count",
            message: format!("negative count {count}"),
        })
    }
}
