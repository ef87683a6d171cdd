//! redb in its defaults (`Durability::Immediate`: the commit returns after
//! fsync), with the 4 GiB cache the public redb benchmark gives it.
//! Compaction step: none (the brief's choice; `Database::compact` exists but
//! is an offline rewrite, not part of normal operation).

use std::path::Path;

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTableMetadata, Table, TableDefinition,
};

use super::TABLE;
use crate::engine::{value_digest, BenchEngine, KvReader, KvWriter, ScanSummary, CACHE_BYTES};
use crate::error::{Error, Result};

const NAME: &str = "redb";

/// File name of the database inside the engine directory.
const FILE_NAME: &str = "kv.redb";

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new(TABLE);

/// redb on one file.
pub struct RedbEngine {
    db: Database,
}

impl RedbEngine {
    /// Creates the database under `dir` and its table.
    pub fn open(dir: &Path) -> Result<RedbEngine> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))
            .map_err(Error::engine(NAME, "create"))?;
        let tx = db
            .begin_write()
            .map_err(Error::engine(NAME, "begin_write"))?;
        tx.open_table(KV)
            .map_err(Error::engine(NAME, "open_table"))?;
        tx.commit().map_err(Error::engine(NAME, "commit"))?;
        Ok(RedbEngine { db })
    }
}

impl BenchEngine for RedbEngine {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&self, body: &mut dyn FnMut(&mut dyn KvWriter) -> Result<()>) -> Result<()> {
        let tx = self
            .db
            .begin_write()
            .map_err(Error::engine(NAME, "begin_write"))?;
        {
            let table = tx
                .open_table(KV)
                .map_err(Error::engine(NAME, "open_table"))?;
            body(&mut RedbWriter { table })?;
        }
        tx.commit().map_err(Error::engine(NAME, "commit"))?;
        Ok(())
    }

    fn read(&self, body: &mut dyn FnMut(&mut dyn KvReader) -> Result<()>) -> Result<()> {
        let rx = self
            .db
            .begin_read()
            .map_err(Error::engine(NAME, "begin_read"))?;
        let table = rx
            .open_table(KV)
            .map_err(Error::engine(NAME, "open_table"))?;
        body(&mut RedbReader { table })
    }

    fn compact(&mut self) -> Result<&'static str> {
        Ok("nothing")
    }
}

struct RedbWriter<'t> {
    table: Table<'t, &'static [u8], &'static [u8]>,
}

impl KvWriter for RedbWriter<'_> {
    fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.table
            .insert(key, value)
            .map_err(Error::engine(NAME, "insert"))?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) -> Result<()> {
        self.table
            .remove(key)
            .map_err(Error::engine(NAME, "remove"))?;
        Ok(())
    }
}

struct RedbReader {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl KvReader for RedbReader {
    fn get(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let value = self.table.get(key).map_err(Error::engine(NAME, "get"))?;
        Ok(value.map(|guard| value_digest(guard.value())))
    }

    fn scan(&mut self, start: &[u8], limit: usize) -> Result<ScanSummary> {
        let mut summary = ScanSummary::default();
        let range = self
            .table
            .range::<&[u8]>(start..)
            .map_err(Error::engine(NAME, "range"))?;
        for entry in range.take(limit) {
            let (key, value) = entry.map_err(Error::engine(NAME, "range next"))?;
            summary.add(key.value(), value.value());
        }
        Ok(summary)
    }

    fn entry_count(&mut self) -> Result<u64> {
        self.table.len().map_err(Error::engine(NAME, "len"))
    }
}
