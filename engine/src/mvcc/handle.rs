//! [`TableHandle`]: a table of one transaction resolved once by name, for
//! callers that write to it statement after statement (the query layer's
//! prepared INSERT), and the [`Transaction`] calls that use it.
//!
//! A handle is current while the transaction it came from has a live
//! entry for its table in its buffered writes and has neither created,
//! dropped nor rolled back a table since (`tables_generation`): then
//! `Transaction::open_table` would neither read the catalog nor create
//! the table, only find it by name, which the handle skips. Any other
//! handle is resolved by name again, exactly as `open_table` does.

use std::sync::Arc;

use super::conflict::KeySpace;
use super::{check_key_value, ByteView, Table, TableWrites, Transaction, Vacant};
use crate::error::Result;

/// A table of one [`Transaction`] resolved once by name
/// ([`Transaction::table_handle`]), for a caller that writes to it
/// statement after statement (a prepared INSERT run a million times):
/// [`Transaction::open_handle`] then gives the table without validating
/// and searching the name again.
///
/// A handle is exact, never stale: it is used as it is only while the
/// transaction it came from has neither created, dropped nor rolled back
/// any table since it was resolved; otherwise `open_handle` resolves the
/// name again, exactly as [`Transaction::open_table`] does.
#[derive(Debug, Clone)]
pub struct TableHandle {
    name: Arc<str>,
    transaction_id: u64,
    /// The transaction's `tables_generation` when its buffered writes
    /// held a live entry for the table; `None`: resolve by name.
    generation: Option<u64>,
}

impl TableHandle {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Transaction {
    /// Resolves `name` as [`Transaction::open_table`] does (creating the
    /// table in this transaction if it does not exist) and returns a handle
    /// for [`Transaction::open_handle`].
    pub fn table_handle(&mut self, name: &str) -> Result<TableHandle> {
        let table = self.open_table(name)?;
        let name = Arc::clone(&table.name);
        let mut handle = TableHandle {
            name,
            transaction_id: self.id,
            generation: None,
        };
        self.note_handle(&mut handle);
        Ok(handle)
    }

    /// The table `handle` names, as [`Transaction::open_table`] opens it.
    /// While the handle is current (see [`TableHandle`]) this skips the
    /// name's validation and search; otherwise it resolves the name again
    /// and updates the handle. A handle from another transaction is
    /// resolved by name too.
    pub fn open_handle(&mut self, handle: &mut TableHandle) -> Result<Table<'_>> {
        if self.handle_is_current(handle) {
            self.begin_statement()?;
            return Ok(Table {
                space: KeySpace::Table(Arc::clone(&handle.name)),
                name: Arc::clone(&handle.name),
                tx: self,
                write_base: None,
            });
        }
        // Resolved by name: `open_table` may create the table or record
        // the catalog read; then the handle is current again once the
        // transaction buffers writes to it.
        self.open_table(&handle.name)?;
        handle.transaction_id = self.id;
        self.note_handle(handle);
        let name = match self.tables.get_key_value(&*handle.name) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::clone(&handle.name),
        };
        handle.name = Arc::clone(&name);
        Ok(Table {
            space: KeySpace::Table(Arc::clone(&name)),
            name,
            tx: self,
            write_base: None,
        })
    }

    /// [`Table::insert`] into the table `handle` names: what
    /// [`Transaction::open_handle`] then `insert` do, without building a
    /// [`Table`] (a bulk load's statement per row).
    pub fn insert_via(
        &mut self,
        handle: &mut TableHandle,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<ByteView>> {
        let resolved = !self.handle_is_current(handle);
        if resolved {
            self.open_handle(handle)?;
        }
        check_key_value(key, Some(value))?;
        // Each call finds its tree through `last_write_base`, as a new
        // `Table` per statement does.
        let mut write_base = None;
        let old = self.write_to(
            &handle.name,
            &mut write_base,
            key,
            Some(value),
            Vacant::Look,
        );
        if resolved {
            // The write made the table's entry if it had none.
            self.note_handle(handle);
        }
        old
    }

    /// Whether `handle` may be used as it is: it comes from this
    /// transaction, which has created, dropped and rolled back no table
    /// since it found a live entry for it.
    #[inline]
    fn handle_is_current(&self, handle: &TableHandle) -> bool {
        let current =
            handle.transaction_id == self.id && handle.generation == Some(self.tables_generation);
        debug_assert!(
            !current
                || self
                    .tables
                    .get(&*handle.name)
                    .is_some_and(TableWrites::exists),
            "a current handle names a table without a live entry"
        );
        current
    }

    /// Marks `handle` current when this transaction's writes hold a live
    /// entry for its table (the only case where `open_table` neither reads
    /// the catalog nor may create the table).
    fn note_handle(&self, handle: &mut TableHandle) {
        handle.generation = self
            .tables
            .get(&*handle.name)
            .is_some_and(TableWrites::exists)
            .then_some(self.tables_generation);
    }
}

#[cfg(test)]
mod tests;
