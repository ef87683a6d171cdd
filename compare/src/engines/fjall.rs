//! fjall (an LSM tree) as a `SingleWriterTxDatabase` with one keyspace.
//! Durable mode: every write transaction is given
//! `.durability(Some(PersistMode::SyncAll))`, so its commit fsyncs the
//! journal before returning (the default is `Buffer`, not durable). Cache
//! 4 GiB as in the public redb benchmark. Compaction step: none (the redb
//! benchmark's fjall adapter does none either; fjall's `major_compact` is a
//! hidden, test-only API).

use std::path::Path;

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
    SingleWriterWriteTx, Snapshot,
};

use super::TABLE;
use crate::engine::{value_digest, BenchEngine, KvReader, KvWriter, ScanSummary, CACHE_BYTES};
use crate::error::{Error, Result};

const NAME: &str = "fjall";

/// A fjall database in the engine directory.
pub struct FjallEngine {
    db: SingleWriterTxDatabase,
    keyspace: SingleWriterTxKeyspace,
}

impl FjallEngine {
    /// Creates the database under `dir` and its keyspace.
    pub fn open(dir: &Path) -> Result<FjallEngine> {
        let db = SingleWriterTxDatabase::builder(dir)
            .cache_size(CACHE_BYTES as u64)
            .open()
            .map_err(Error::engine(NAME, "open"))?;
        let keyspace = db
            .keyspace(TABLE, KeyspaceCreateOptions::default)
            .map_err(Error::engine(NAME, "keyspace"))?;
        Ok(FjallEngine { db, keyspace })
    }
}

impl BenchEngine for FjallEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()> {
        let mut tx = self.db.write_tx().durability(Some(PersistMode::SyncAll));
        body(&mut FjallWriter {
            keyspace: &self.keyspace,
            tx: &mut tx,
        })?;
        tx.commit().map_err(Error::engine(NAME, "commit"))
    }

    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()> {
        let snapshot = self.db.read_tx();
        body(&mut FjallReader {
            keyspace: &self.keyspace,
            snapshot: &snapshot,
        })
    }

    fn compact(&mut self) -> Result<&'static str> {
        Ok("nothing")
    }
}

struct FjallWriter<'a, 'db> {
    keyspace: &'a SingleWriterTxKeyspace,
    tx: &'a mut SingleWriterWriteTx<'db>,
}

impl KvWriter for FjallWriter<'_, '_> {
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.insert(self.keyspace, key, value);
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.tx.remove(self.keyspace, key);
        Ok(())
    }
}

struct FjallReader<'a> {
    keyspace: &'a SingleWriterTxKeyspace,
    snapshot: &'a Snapshot,
}

impl KvReader for FjallReader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let value = self
            .snapshot
            .get(self.keyspace, key)
            .map_err(Error::engine(NAME, "get"))?;
        Ok(value.map(|value| value_digest(&value)))
    }

    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
        let mut summary = ScanSummary::default();
        for guard in self.snapshot.range(self.keyspace, start..).take(limit) {
            let (key, value) = guard
                .into_inner()
                .map_err(Error::engine(NAME, "range next"))?;
            summary.add(&key, &value);
        }
        Ok(summary)
    }

    fn entry_count(&mut self) -> Result<u64> {
        let len = self
            .snapshot
            .len(self.keyspace)
            .map_err(Error::engine(NAME, "len"))?;
        Ok(len as u64)
    }
}
