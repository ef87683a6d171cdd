//! Test support: databases and connections on in-memory storage (no files).

use std::sync::Arc;

use mmsb_engine::{Database, Options};

use crate::Connection;

/// A database on a fresh `MemStorage`, opened at `path`.
pub(crate) fn memory_db(path: &str) -> Database {
    Options {
        storage: Arc::new(mmsb_wal::storage::MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    }
    .open(path)
    .expect("in-memory database")
}

/// A connection to [`memory_db`] at `path`.
pub(crate) fn memory_connection(path: &str) -> Connection {
    Connection::new(memory_db(path)).expect("connection")
}
