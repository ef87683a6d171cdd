//! LMDB through heed, with the default environment flags (a commit fsyncs
//! before it returns) and a 4 GiB map. Compaction step: none.

use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithTls};

use crate::engine::{value_digest, BenchEngine, KvReader, KvWriter, ScanSummary, CACHE_BYTES};
use crate::error::{Error, Result};

const NAME: &str = "lmdb";

/// The unnamed LMDB database, keys and values as raw bytes.
type KvDatabase = Database<'static, Bytes, Bytes>;

/// An LMDB environment in the engine directory (`data.mdb`, `lock.mdb`).
pub struct LmdbEngine {
    env: Env,
    db: KvDatabase,
}

impl LmdbEngine {
    /// Creates the environment under `dir` and opens its unnamed database.
    pub fn open(dir: &Path) -> Result<LmdbEngine> {
        // SAFETY: the directory is fresh and private to this process; no
        // other code maps or modifies its files while the env is open.
        let env = unsafe { EnvOpenOptions::new().map_size(CACHE_BYTES).open(dir) }
            .map_err(Error::engine(NAME, "open env"))?;
        let wtxn = env.write_txn().map_err(Error::engine(NAME, "write_txn"))?;
        let created = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(Error::engine(NAME, "create database"))?;
        let db: KvDatabase = match created {
            CommitOrAbort::Commit(db) => db,
            CommitOrAbort::Abort(()) => {
                return Err(Error::Config("lmdb: creating the database aborted".into()))
            }
        };
        Ok(LmdbEngine { env, db })
    }
}

impl BenchEngine for LmdbEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()> {
        let mut txn = self
            .env
            .write_txn()
            .map_err(Error::engine(NAME, "write_txn"))?;
        body(&mut LmdbWriter {
            db: self.db,
            txn: &mut txn,
        })?;
        txn.commit().map_err(Error::engine(NAME, "commit"))
    }

    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()> {
        let txn = self
            .env
            .read_txn()
            .map_err(Error::engine(NAME, "read_txn"))?;
        body(&mut LmdbReader {
            db: self.db,
            txn: &txn,
        })
    }

    fn compact(&mut self) -> Result<&'static str> {
        Ok("nothing")
    }
}

struct LmdbWriter<'t, 'e> {
    db: KvDatabase,
    txn: &'t mut RwTxn<'e>,
}

impl KvWriter for LmdbWriter<'_, '_> {
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .put(self.txn, key, value)
            .map_err(Error::engine(NAME, "put"))
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.db
            .delete(self.txn, key)
            .map_err(Error::engine(NAME, "delete"))?;
        Ok(())
    }
}

struct LmdbReader<'t, 'e> {
    db: KvDatabase,
    txn: &'t RoTxn<'e, WithTls>,
}

impl KvReader for LmdbReader<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let value = self
            .db
            .get(self.txn, key)
            .map_err(Error::engine(NAME, "get"))?;
        Ok(value.map(value_digest))
    }

    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
        let mut summary = ScanSummary::default();
        let bounds = (std::ops::Bound::Included(start), std::ops::Bound::Unbounded);
        let range = self
            .db
            .range(self.txn, &bounds)
            .map_err(Error::engine(NAME, "range"))?;
        for entry in range.take(limit) {
            let (key, value) = entry.map_err(Error::engine(NAME, "range next"))?;
            summary.add(key, value);
        }
        Ok(summary)
    }

    fn entry_count(&mut self) -> Result<u64> {
        self.db.len(self.txn).map_err(Error::engine(NAME, "len"))
    }
}
