//! Table transactions with MVCC and PostgreSQL's isolation levels.
//!
//! A [`Transaction`] reads a page snapshot (its first statement's for
//! REPEATABLE READ and SERIALIZABLE, each statement's own for READ
//! COMMITTED) and buffers its writes per table. Any number of transactions
//! run at once on any threads; none blocks another. At commit it takes the
//! page writer lock, is checked against the commits that happened since its
//! snapshot (see `conflict`), applies its buffer to the B+trees as one page
//! transaction, and records its footprint for the checks of others. A failed
//! check is [`Error::Conflict`]: retry the whole transaction
//! ([`crate::Database::run`] does).
//!
//! A [`ReadTransaction`] is a read-only snapshot: it never conflicts.

mod buffer;
mod conflict;
mod handle;
mod range;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use mmsb_wal::CommitEpoch;

use crate::btree::{self, TreeHeader, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::catalog::{self, TableEntry};
use crate::db::{PendingCommit, Shared, WriterGuard};
use crate::error::{Error, Result};
use crate::metrics::timed;
use crate::txn::{PageReadTransaction, PageWriteTransaction};

use buffer::{Put, WriteBuffer};
pub(crate) use conflict::CommitLog;
use conflict::{CommitFootprint, KeySpace, ReadDependency, ReadSet, SpaceWrites};
pub use handle::TableHandle;
pub use range::Range;
pub use view::ByteView;

/// Isolation level of a transaction, with PostgreSQL's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Each read sees what was committed when it started. Concurrent writes
    /// to one key: the last commit wins.
    ReadCommitted,
    /// Snapshot isolation: every read sees the transaction's first snapshot;
    /// a write to a key another transaction changed since is a conflict
    /// (first committer wins). Write skew is possible.
    RepeatableRead,
    /// No anomaly at all: additionally, a commit fails when anything the
    /// transaction read (keys, ranges, lengths) changed since its snapshot.
    #[default]
    Serializable,
}

/// A point inside a transaction to roll back to.
#[derive(Debug)]
pub struct Savepoint {
    undo_len: usize,
    transaction_id: u64,
}

/// Changes a transaction made to one table.
#[derive(Debug, Clone, Default)]
struct TableWrites {
    /// The table was (re)created by this transaction: it starts empty.
    created: bool,
    /// The table as of the snapshot is dropped by this transaction.
    dropped: bool,
    /// Key → new value, or `None` for a removal, in one byte arena (no
    /// allocation per write; see `buffer`).
    entries: WriteBuffer,
    /// Entries added minus entries removed, as this transaction sees it.
    len_delta: i64,
    /// A blind put or delete ([`Table::put`], [`Table::delete`]) buffered a key without learning
    /// whether the snapshot holds it: `len_delta` counts such a key as
    /// absent there, and [`Table::len`] recounts from the buffer instead.
    blind: bool,
}

impl TableWrites {
    fn exists(&self) -> bool {
        self.created || !self.dropped
    }

    fn footprint(&mut self) -> SpaceWrites {
        let whole = self.created || self.dropped;
        SpaceWrites::of_sorted_keys(whole, self.entries.keys())
    }
}

/// How to undo one change.
#[derive(Debug)]
enum Undo {
    /// Restore one buffered entry (`None`: the key was not buffered).
    ///
    /// The write read the key's old value (it returned it), but records no
    /// read dependency: while the key is in the write set, the write-write
    /// check covers every commit a key read would meet. Rolling the write
    /// back records the read (SERIALIZABLE).
    Entry {
        table: Arc<str>,
        key: Arc<[u8]>,
        previous: Option<Option<Arc<[u8]>>>,
        len_delta: i64,
    },
    /// Restore a table's whole buffer (`None`: the table was not touched).
    Table {
        table: Arc<str>,
        previous: Option<TableWrites>,
    },
}

static NEXT_TRANSACTION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A read-write transaction over tables. Dropping it uncommitted rolls it back.
pub struct Transaction {
    shared: Arc<Shared>,
    id: u64,
    isolation: IsolationLevel,
    /// The page snapshot reads go to.
    snapshot: PageReadTransaction,
    /// The snapshot conflicts are checked from (the first one).
    start_epoch: CommitEpoch,
    /// Catalog entries as of `snapshot`, cached per name.
    catalog_cache: NameMap<Option<TableEntry>>,
    tables: BTreeMap<Arc<str>, TableWrites>,
    reads: ReadSet,
    /// How to undo the changes made since the oldest open savepoint; empty
    /// (and not written) while no savepoint is open, since nothing can
    /// roll back then.
    undo: Vec<Undo>,
    /// Savepoints handed out and not yet released. One dropped without
    /// [`Transaction::release`] stays counted (its undo entries are kept).
    open_savepoints: usize,
    /// The snapshot tree of the table last written, per snapshot epoch (see
    /// [`Table::write_base`]): a statement's new handle reuses it.
    last_write_base: Option<(Arc<str>, CommitEpoch, Option<TreeHeader>)>,
    /// What the write buffer is charged against the memory budget.
    buffer_charge: BufferCharge,
    /// Bumped whenever a table's whole entry in `tables` changes (created,
    /// dropped, restored or removed by a rollback): a [`TableHandle`]
    /// taken at another generation is resolved again by name.
    tables_generation: u64,
}

/// Bookkeeping bytes of one buffered write beside its key and value: its
/// slot, hash-index entry and place in the buffer's key order (a copied
/// key in its map, for the few written between range reads), the undo
/// entry while a savepoint is open, and the arena's growth slack (an
/// upper estimate).
const WRITE_BUFFER_ENTRY_OVERHEAD_BYTES: u64 = 160;

/// Bytes charged to the memory budget ahead of a transaction's writes,
/// when the budget has room (one budget lock per chunk instead of one per
/// write); writes then use them up without touching the budget.
const WRITE_BUFFER_CHARGE_CHUNK_BYTES: u64 = 64 * 1024;

/// A prepaid chunk is at most the budget divided by this.
const WRITE_BUFFER_CHARGE_CHUNKS_PER_BUDGET: u64 = 256;

/// Bytes of a transaction's write buffer charged against the memory
/// budget; given back when the transaction ends (commit, rollback, drop).
/// A key written twice is charged twice: the charge errs high.
struct BufferCharge {
    shared: Arc<Shared>,
    /// Everything charged to the budget, `prepaid` included.
    bytes: u64,
    /// Charged but not yet used by a write (less than a chunk).
    prepaid: u64,
}

impl BufferCharge {
    /// Charges one write of `cost` bytes: from the prepaid bytes, else a
    /// new chunk when the budget has room for it at once, else exactly
    /// `cost` as [`Shared::charge_write_buffer`] does (evicting, waiting
    /// for write-back, or failing with `MemoryBudgetExceeded`).
    #[inline]
    fn charge(&mut self, cost: u64) -> Result<()> {
        if cost <= self.prepaid {
            self.prepaid -= cost;
            return Ok(());
        }
        self.charge_more(cost)
    }

    fn charge_more(&mut self, cost: u64) -> Result<()> {
        debug_assert!(self.prepaid <= self.bytes);
        let used = self.bytes - self.prepaid;
        let chunk = cost.max(WRITE_BUFFER_CHARGE_CHUNK_BYTES);
        let shared = &*self.shared;
        let budget = shared.memory.effective_bytes();
        // Prepaid bytes stay a sliver of a small budget.
        let chunk = chunk.min(cost.max(budget / WRITE_BUFFER_CHARGE_CHUNKS_PER_BUDGET));
        let fits = used.saturating_add(chunk) <= budget;
        if fits
            && shared
                .memory
                .try_charge_transaction_bytes(|| shared.pages.resident_bytes(), chunk)
        {
            self.bytes += chunk;
            self.prepaid += chunk - cost;
            return Ok(());
        }
        shared.charge_write_buffer(used, cost)?;
        self.bytes += cost;
        Ok(())
    }
}

impl Drop for BufferCharge {
    fn drop(&mut self) {
        self.shared.memory.release_transaction_bytes(self.bytes);
    }
}

/// What one buffered write of `key_len` and `value_len` bytes is charged.
fn write_buffer_cost(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add(WRITE_BUFFER_ENTRY_OVERHEAD_BYTES)
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("isolation", &self.isolation)
            .field("start_epoch", &self.start_epoch)
            .field("tables_written", &self.tables.len())
            .finish()
    }
}

impl Transaction {
    pub(crate) fn begin(shared: Arc<Shared>, isolation: IsolationLevel) -> Result<Self> {
        shared.check_writable()?;
        let snapshot = PageReadTransaction::begin(Arc::clone(&shared))?;
        let buffer_charge = BufferCharge {
            shared: Arc::clone(&shared),
            bytes: 0,
            prepaid: 0,
        };
        Ok(Transaction {
            start_epoch: snapshot.snapshot(),
            id: NEXT_TRANSACTION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shared,
            isolation,
            snapshot,
            catalog_cache: NameMap::default(),
            tables: BTreeMap::new(),
            reads: ReadSet::default(),
            undo: Vec::new(),
            open_savepoints: 0,
            last_write_base: None,
            buffer_charge,
            tables_generation: 0,
        })
    }

    /// The isolation level.
    pub fn isolation(&self) -> IsolationLevel {
        self.isolation
    }

    /// The epoch the current snapshot sees.
    pub fn snapshot_epoch(&self) -> CommitEpoch {
        self.snapshot.snapshot()
    }

    /// READ COMMITTED: every statement (each table call) sees the newest
    /// commits. The other levels keep their first snapshot.
    fn begin_statement(&mut self) -> Result<()> {
        if self.isolation == IsolationLevel::ReadCommitted
            && self.shared.snapshots.visible() != self.snapshot.snapshot()
        {
            self.snapshot = PageReadTransaction::begin(Arc::clone(&self.shared))?;
            self.catalog_cache.clear();
        }
        Ok(())
    }

    fn record_read(&mut self, space: KeySpace, read: ReadDependency) {
        if self.isolation == IsolationLevel::Serializable {
            self.reads.record(&space, read);
        }
    }

    /// Records a read of one key (SERIALIZABLE only); copies the key only
    /// when it is stored.
    fn record_key_read(&mut self, space: &KeySpace, key: &[u8]) {
        if self.isolation == IsolationLevel::Serializable {
            self.reads.record_key(space, key);
        }
    }

    /// The shared name under which `name`'s writes are buffered, or a new one.
    fn shared_name(&self, name: &str) -> Arc<str> {
        match self.tables.get_key_value(name) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(name),
        }
    }

    /// The table's catalog entry as of the snapshot.
    fn snapshot_entry(&mut self, name: &str) -> Result<Option<TableEntry>> {
        if let Some(entry) = self.catalog_cache.get(name) {
            return Ok(*entry);
        }
        let entry = catalog::lookup(&self.snapshot, &self.snapshot.meta().catalog, name)?;
        self.catalog_cache.insert(name.to_owned(), entry);
        Ok(entry)
    }

    /// Whether the table exists as this transaction sees it.
    fn table_exists(&mut self, name: &str) -> Result<bool> {
        if let Some(writes) = self.tables.get(name) {
            // The call that made this entry (every one goes through here
            // first) recorded the catalog read: a statement reopening the
            // table records nothing more.
            return Ok(writes.exists());
        }
        self.record_key_read(&KeySpace::Catalog, name.as_bytes());
        Ok(self.snapshot_entry(name)?.is_some())
    }

    /// The snapshot tree under a table, or `None` when the transaction
    /// replaced or dropped it.
    fn base_tree(&mut self, name: &str) -> Result<Option<TreeHeader>> {
        if self
            .tables
            .get(name)
            .is_some_and(|w| w.created || w.dropped)
        {
            return Ok(None);
        }
        Ok(self.snapshot_entry(name)?.map(|entry| entry.tree))
    }

    /// Opens a table, creating it (in this transaction) if it does not exist.
    pub fn open_table(&mut self, name: &str) -> Result<Table<'_>> {
        catalog::validate_name(name)?;
        self.begin_statement()?;
        // A table this transaction wrote (each statement of a bulk load):
        // one search gives its existence and its shared name, and no
        // catalog read is recorded again (see `table_exists`).
        if let Some((shared, writes)) = self.tables.get_key_value(name) {
            if writes.exists() {
                let name = Arc::clone(shared);
                return Ok(Table {
                    space: KeySpace::Table(Arc::clone(&name)),
                    name,
                    tx: self,
                    write_base: None,
                });
            }
        }
        if !self.table_exists(name)? {
            self.change_table(name, |writes| {
                writes.created = true;
                writes.entries.clear();
                writes.len_delta = 0;
            });
        }
        let name = self.shared_name(name);
        Ok(Table {
            space: KeySpace::Table(Arc::clone(&name)),
            name,
            tx: self,
            write_base: None,
        })
    }

    /// Creates a table; `TableExists` when it already exists.
    pub fn create_table(&mut self, name: &str) -> Result<Table<'_>> {
        catalog::validate_name(name)?;
        self.begin_statement()?;
        if self.table_exists(name)? {
            return Err(Error::TableExists(name.to_owned()));
        }
        self.open_table(name)
    }

    /// Drops a table and every entry in it; returns whether it existed.
    pub fn delete_table(&mut self, name: &str) -> Result<bool> {
        catalog::validate_name(name)?;
        self.begin_statement()?;
        if !self.table_exists(name)? {
            return Ok(false);
        }
        self.change_table(name, |writes| {
            writes.dropped = true;
            writes.created = false;
            writes.entries.clear();
            writes.len_delta = 0;
        });
        Ok(true)
    }

    /// Names of every table this transaction sees, sorted.
    pub fn list_tables(&mut self) -> Result<Vec<String>> {
        self.begin_statement()?;
        self.record_read(
            KeySpace::Catalog,
            ReadDependency::Range(Bound::Unbounded, Bound::Unbounded),
        );
        let mut names: Vec<String> = catalog::list(&self.snapshot, &self.snapshot.meta().catalog)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.tables
                    .get(name.as_str())
                    .is_none_or(TableWrites::exists)
            })
            .collect();
        names.extend(
            self.tables
                .iter()
                .filter(|(_, writes)| writes.created)
                .map(|(name, _)| name.to_string()),
        );
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn change_table(&mut self, name: &str, change: impl FnOnce(&mut TableWrites)) {
        // A created or dropped table changes the trees writes go to.
        self.last_write_base = None;
        self.tables_generation += 1;
        let table = self.shared_name(name);
        if self.open_savepoints > 0 {
            let previous = self.tables.get(name).cloned();
            self.undo.push(Undo::Table {
                table: Arc::clone(&table),
                previous,
            });
        }
        change(self.tables.entry(table).or_default());
    }

    /// Marks a point to roll back to. Undo entries are kept from the first
    /// open savepoint until every open one is released.
    pub fn savepoint(&mut self) -> Savepoint {
        self.open_savepoints += 1;
        Savepoint {
            undo_len: self.undo.len(),
            transaction_id: self.id,
        }
    }

    /// Undoes every change made since `savepoint`; the savepoint stays valid.
    pub fn rollback_to(&mut self, savepoint: &Savepoint) -> Result<()> {
        if savepoint.transaction_id != self.id || savepoint.undo_len > self.undo.len() {
            return Err(Error::InvalidArgument(
                "the savepoint belongs to another transaction or was already rolled back past"
                    .into(),
            ));
        }
        while self.undo.len() > savepoint.undo_len {
            match self.undo.pop() {
                Some(Undo::Entry {
                    table,
                    key,
                    previous,
                    len_delta,
                }) => {
                    if let Some(writes) = self.tables.get_mut(&table) {
                        writes.len_delta -= len_delta;
                        match previous {
                            Some(value) => {
                                writes.entries.put(&key, value.as_deref(), |_| Ok(()))?;
                            }
                            None => {
                                writes.entries.remove(&key);
                            }
                        }
                    }
                    // The undone write had read the key (see `Undo::Entry`).
                    self.record_key_read(&KeySpace::Table(table), &key);
                }
                Some(Undo::Table { table, previous }) => {
                    self.last_write_base = None;
                    self.tables_generation += 1;
                    match previous {
                        Some(writes) => {
                            self.tables.insert(table, writes);
                        }
                        None => {
                            self.tables.remove(&table);
                        }
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Forgets a savepoint, keeping its changes. When it was the last open
    /// one, the undo log is dropped: nothing can roll back any more.
    pub fn release(&mut self, savepoint: Savepoint) -> Result<()> {
        if savepoint.transaction_id != self.id {
            return Err(Error::InvalidArgument(
                "the savepoint belongs to another transaction".into(),
            ));
        }
        debug_assert!(self.open_savepoints > 0, "a savepoint released twice");
        self.open_savepoints = self.open_savepoints.saturating_sub(1);
        if self.open_savepoints == 0 {
            self.undo.clear();
        }
        Ok(())
    }

    /// Discards every change.
    pub fn rollback(self) {
        crate::metrics::Metrics::bump(&self.shared.metrics.rollbacks);
    }

    /// Commits. `Error::Conflict` when a concurrent commit makes this one
    /// impossible at its isolation level; retry the whole transaction.
    pub fn commit(mut self) -> Result<CommitEpoch> {
        if self.tables.is_empty() {
            return Ok(self.snapshot.snapshot());
        }
        self.settle_buffers();
        let shared = Arc::clone(&self.shared);
        let snapshot = self.snapshot.snapshot();
        let writer = shared.writer.lock_arc();
        let (writer, pending) = self.prepare(writer);
        drop(writer);
        match pending? {
            Some(pending) => shared.finish_commit(pending),
            None => Ok(snapshot),
        }
    }

    /// Puts every table's buffered writes in key order (a bulk load's one
    /// sort), before the commit takes the writer lock.
    fn settle_buffers(&mut self) {
        let shared = Arc::clone(&self.shared);
        timed(&shared.metrics.stages.tree_apply_ns, || {
            for writes in self.tables.values_mut() {
                writes.entries.settle();
            }
        });
    }

    /// Under the writer lock: checks for conflicts, applies the buffer to
    /// the trees, logs and installs. Hands the lock back when it still holds it.
    fn prepare(
        mut self,
        writer: WriterGuard,
    ) -> (Option<WriterGuard>, Result<Option<PendingCommit>>) {
        let shared = Arc::clone(&self.shared);
        let stages = &shared.metrics.stages;
        let footprint = self.footprint();
        if let Err(err) = timed(&stages.validate_ns, || self.validate(&footprint)) {
            return (Some(writer), Err(err));
        }
        let mut pages =
            match PageWriteTransaction::begin_with_writer(Arc::clone(&self.shared), writer) {
                Ok(pages) => pages,
                Err(err) => return (None, Err(err)),
            };
        if let Err(err) = timed(&stages.tree_apply_ns, || self.apply(&mut pages)) {
            return (None, Err(err));
        }
        pages.commit_deferred(|epoch| shared.commit_log.lock().record(epoch, footprint))
    }

    fn footprint(&mut self) -> CommitFootprint {
        let mut footprint = CommitFootprint::new();
        for (name, writes) in &mut self.tables {
            if writes.created || writes.dropped {
                footprint
                    .entry(KeySpace::Catalog)
                    .or_default()
                    .add_key(Arc::from(name.as_bytes()));
            }
            if writes.created || writes.dropped || !writes.entries.is_empty() {
                footprint.insert(KeySpace::Table(name.clone()), writes.footprint());
            }
        }
        footprint
    }

    fn validate(&self, footprint: &CommitFootprint) -> Result<()> {
        if self.isolation == IsolationLevel::ReadCommitted {
            return Ok(());
        }
        let (_, oldest_live) = self.shared.snapshots.live_summary();
        let mut log = self.shared.commit_log.lock();
        // Footprints at or below the oldest live snapshot can meet no one.
        log.prune(oldest_live);
        let conflict = log.write_conflict(self.start_epoch, footprint).or_else(|| {
            (self.isolation == IsolationLevel::Serializable && !self.reads.is_empty())
                .then(|| log.read_conflict(self.start_epoch, &self.reads))
                .flatten()
        });
        match conflict {
            Some(reason) => {
                crate::metrics::Metrics::bump(&self.shared.metrics.conflicts);
                Err(Error::Conflict(format!(
                    "{} conflict with the commit at {} on {:?}",
                    reason.what, reason.epoch, reason.space
                )))
            }
            None => Ok(()),
        }
    }

    /// Applies the buffered writes to the newest trees.
    fn apply(&mut self, pages: &mut PageWriteTransaction) -> Result<()> {
        let mut catalog_tree = pages.meta().catalog;
        for (name, writes) in &mut self.tables {
            // READ COMMITTED may find a table a concurrent commit created:
            // its writes then go into that table.
            let mut current = catalog::lookup(pages, &catalog_tree, name)?;
            if writes.dropped {
                if let Some(mut entry) = current.take() {
                    btree::free_tree(pages, &mut entry.tree)?;
                    catalog::remove(pages, &mut catalog_tree, name)?;
                }
            }
            if !writes.exists() {
                continue;
            }
            let mut entry = match current {
                Some(entry) => entry,
                None if writes.created => {
                    let meta = pages.meta_mut();
                    let id = meta.next_table_id;
                    meta.next_table_id += 1;
                    TableEntry {
                        id,
                        tree: TreeHeader::EMPTY,
                    }
                }
                None => {
                    return Err(Error::Conflict(format!(
                        "table {name:?} was dropped by a concurrent commit"
                    )))
                }
            };
            // In key order, mostly without a descent per key.
            let mut writer =
                btree::BatchWriter::new(crate::page_access::PageRead::page_len(&*pages))?;
            writer.apply_sorted(pages, &mut entry.tree, writes.entries.iter())?;
            catalog::store(pages, &mut catalog_tree, name, &entry)?;
        }
        pages.meta_mut().catalog = catalog_tree;
        Ok(())
    }
}

/// A table inside a [`Transaction`].
pub struct Table<'t> {
    tx: &'t mut Transaction,
    name: Arc<str>,
    /// `KeySpace::Table(name)`, built once.
    space: KeySpace,
    /// The snapshot tree writes look old values up in, with the snapshot
    /// epoch it was found at (READ COMMITTED may move the snapshot between
    /// calls). While this handle lives the transaction cannot create or drop
    /// tables, so the tree only changes with the snapshot.
    write_base: Option<(CommitEpoch, Option<TreeHeader>)>,
}

impl std::fmt::Debug for Table<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).finish()
    }
}

/// FNV-1a, for the catalog cache: every write looks its table up by name,
/// and SipHash cost more than the rest of that lookup. The names are the
/// transaction's own (a caller can only slow down its own transaction).
#[derive(Debug, Clone, Copy)]
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map keyed by table name, hashed with [`NameHasher`].
type NameMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<NameHasher>>;

/// What a write does with a key it has not buffered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vacant {
    /// Look it up in the snapshot (for the old value and the length).
    Look,
    /// The caller read it in this transaction and found it present.
    KnownPresent,
    /// Do not look it up: the caller ignores the old value (a blind put
    /// or delete).
    Blind,
}

fn check_key_value(key: &[u8], value: Option<&[u8]>) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge {
            what: "key",
            len: key.len() as u64,
            limit: MAX_KEY_BYTES as u64,
        });
    }
    if let Some(value) = value {
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge {
                what: "value",
                len: value.len() as u64,
                limit: MAX_VALUE_BYTES as u64,
            });
        }
    }
    Ok(())
}

fn owned_bound(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(key.to_vec()),
        Bound::Excluded(key) => Bound::Excluded(key.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// True when the bounds select nothing (and would make `BTreeMap::range` panic).
fn is_inverted(lower: &Bound<&[u8]>, upper: &Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
            l >= u
        }
        _ => false,
    }
}

impl Table<'_> {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value under `key` as this transaction sees it.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<ByteView>> {
        self.tx.begin_statement()?;
        self.tx.record_key_read(&self.space, key);
        self.lookup(key)
    }

    fn lookup(&mut self, key: &[u8]) -> Result<Option<ByteView>> {
        if let Some(slot) = self
            .tx
            .tables
            .get(&*self.name)
            .and_then(|w| w.entries.get(key))
        {
            return Ok(slot.map(|value| ByteView::shared(Arc::from(value))));
        }
        let Some(tree) = self.tx.base_tree(&self.name)? else {
            return Ok(None);
        };
        Ok(btree::get(&self.tx.snapshot, &tree, key)?.map(ByteView::from_page))
    }

    /// Stores `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<ByteView>> {
        check_key_value(key, Some(value))?;
        self.write(key, Some(value), Vacant::Look)
    }

    /// Stores `value` under `key` without looking up the value it replaces
    /// (a blind put): the cheap write for callers that ignore what
    /// [`Table::insert`] returns, as most key-value stores' `put` does.
    /// Conflict checks are those of `insert` (the write set holds the key).
    /// After a blind put, [`Table::len`] in this transaction looks up every
    /// buffered key of the table once per call; the committed length is
    /// counted exactly when the commit applies the write.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key_value(key, Some(value))?;
        self.write(key, Some(value), Vacant::Blind).map(drop)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Result<Option<ByteView>> {
        check_key_value(key, None)?;
        self.write(key, None, Vacant::Look)
    }

    /// Stores `value` under `key`, which the caller found present by
    /// reading this table in this transaction (an UPDATE of a row it just
    /// scanned). Unlike [`Table::insert`] it does not look the key up again
    /// for its old value. Conflict checks are those of `insert` (the write
    /// set holds the key); under READ COMMITTED, where each call may see a
    /// newer snapshot than the read did, it looks the key up like `insert`.
    pub fn overwrite_known(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key_value(key, Some(value))?;
        self.write(key, Some(value), Vacant::KnownPresent).map(drop)
    }

    /// Removes `key`, which the caller found present by reading this table
    /// in this transaction; see [`Table::overwrite_known`].
    pub fn remove_known(&mut self, key: &[u8]) -> Result<()> {
        check_key_value(key, None)?;
        self.write(key, None, Vacant::KnownPresent).map(drop)
    }

    /// Removes `key` without looking up its old value (a blind delete):
    /// the cheap removal for callers that ignore what [`Table::remove`]
    /// returns; removing an absent key is not an error. Conflict checks are
    /// those of `remove`: the write set holds the key, so a concurrent
    /// commit that wrote it makes this transaction's commit fail with
    /// `Conflict` under SERIALIZABLE and REPEATABLE READ. After a blind
    /// delete, [`Table::len`] in this transaction looks up every buffered
    /// key of the table once per call.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        check_key_value(key, None)?;
        self.write(key, None, Vacant::Blind).map(drop)
    }

    /// Buffers one write (see [`Transaction::write_to`]).
    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        vacant: Vacant,
    ) -> Result<Option<ByteView>> {
        self.tx
            .write_to(&self.name, &mut self.write_base, key, value, vacant)
    }

    /// Entries with keys in `bounds`, in key order, from either end.
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&mut self, bounds: R) -> Result<Range<'_>> {
        let lower = bounds.start_bound().cloned();
        let upper = bounds.end_bound().cloned();
        self.tx.begin_statement()?;
        self.tx.record_read(
            self.space.clone(),
            ReadDependency::Range(owned_bound(lower), owned_bound(upper)),
        );
        if is_inverted(&lower, &upper) {
            return Ok(Range::empty());
        }
        let tree = self.tx.base_tree(&self.name)?;
        let tx = &mut *self.tx;
        let tree_iter = match tree {
            Some(tree) => Some(btree::range(&tx.snapshot, &tree, (lower, upper))?),
            None => None,
        };
        // Settles the table's buffered writes (key order) first.
        let buffer = tx
            .tables
            .get_mut(&*self.name)
            .map(|writes| writes.entries.range(lower, upper));
        Ok(Range::new(tree_iter, buffer))
    }

    /// Every entry, in key order.
    pub fn iter(&mut self) -> Result<Range<'_>> {
        self.range::<std::ops::RangeFull>(..)
    }

    /// The entry with the smallest key.
    pub fn first(&mut self) -> Result<Option<(ByteView, ByteView)>> {
        self.iter()?.next().transpose()
    }

    /// The entry with the largest key.
    pub fn last(&mut self) -> Result<Option<(ByteView, ByteView)>> {
        self.iter()?.next_back().transpose()
    }

    /// Number of entries, in O(1).
    pub fn len(&mut self) -> Result<u64> {
        self.tx.begin_statement()?;
        self.tx.record_read(
            self.space.clone(),
            ReadDependency::Range(Bound::Unbounded, Bound::Unbounded),
        );
        let base_tree = self.tx.base_tree(&self.name)?;
        let base = base_tree.map_or(0, |tree| tree.len);
        let delta = match self.tx.tables.get(&*self.name) {
            Some(writes) if writes.blind => {
                recount_len_delta(&self.tx.snapshot, base_tree, writes)?
            }
            Some(writes) => writes.len_delta,
            None => 0,
        };
        Ok(base.saturating_add_signed(delta))
    }

    /// Whether the table has no entries.
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Transaction {
    /// [`Transaction::base_tree`] of table `name`, remembered per snapshot
    /// in `cache` (one catalog lookup per table handle instead of one per
    /// write) and for the next handle on the table the last write went to.
    fn write_base(
        &mut self,
        name: &Arc<str>,
        cache: &mut Option<(CommitEpoch, Option<TreeHeader>)>,
    ) -> Result<Option<TreeHeader>> {
        let epoch = self.snapshot.snapshot();
        if let Some((at, tree)) = *cache {
            if at == epoch {
                debug_assert_eq!(tree, self.base_tree(name)?);
                return Ok(tree);
            }
        }
        // A new handle on the table the last write went to (the next
        // statement of a bulk load) reuses what that write found.
        if let Some((last, at, tree)) = &self.last_write_base {
            if *at == epoch && Arc::ptr_eq(last, name) {
                let tree = *tree;
                debug_assert_eq!(tree, self.base_tree(name)?);
                *cache = Some((epoch, tree));
                return Ok(tree);
            }
        }
        let tree = self.base_tree(name)?;
        *cache = Some((epoch, tree));
        self.last_write_base = Some((Arc::clone(name), epoch, tree));
        Ok(tree)
    }

    /// Buffers one write to table `name` (which exists as this transaction
    /// sees it) with a single search of the buffer; a key not yet buffered
    /// is looked up in the snapshot's tree (for the old value and the
    /// length change) unless `vacant` says the caller knows it is there.
    /// `write_base`: the caller's cache of [`Transaction::write_base`].
    fn write_to(
        &mut self,
        name: &Arc<str>,
        write_base: &mut Option<(CommitEpoch, Option<TreeHeader>)>,
        key: &[u8],
        value: Option<&[u8]>,
        vacant: Vacant,
    ) -> Result<Option<ByteView>> {
        self.begin_statement()?;
        // READ COMMITTED: the caller's read may predate this call's snapshot.
        let known =
            vacant == Vacant::KnownPresent && self.isolation != IsolationLevel::ReadCommitted;
        let base = self.write_base(name, write_base)?;
        let tx = self;
        let cost = write_buffer_cost(key.len(), value.as_ref().map_or(0, |v| v.len()));
        tx.buffer_charge.charge(cost)?;
        // One search of the table map per write (an `entry` would clone
        // the name's `Arc` every time).
        let writes = match tx.tables.get_mut(&**name) {
            Some(writes) => writes,
            None => tx.tables.entry(Arc::clone(name)).or_default(),
        };
        let is_some = value.is_some();
        let snapshot = &tx.snapshot;
        let put = writes.entries.put(key, value, |key| {
            if vacant == Vacant::Blind {
                // Counted as absent; `blind` makes `len` recount.
                return Ok((false, None));
            }
            let found = match base {
                // An empty snapshot tree (a bulk load into a new table) holds no key.
                Some(tree) if !known && tree.len > 0 => {
                    btree::get(snapshot, &tree, key)?.map(ByteView::from_page)
                }
                _ => None,
            };
            debug_assert!(
                !known
                    || base.is_some_and(|tree| {
                        btree::get(snapshot, &tree, key).is_ok_and(|v| v.is_some())
                    }),
                "a key written as known present is absent from the snapshot"
            );
            Ok((known || found.is_some(), found))
        })?;
        let (old, present, previous) = match put {
            Put::Replaced(previous) => {
                let old = previous.clone().map(ByteView::shared);
                (old, previous.is_some(), Some(previous))
            }
            Put::Added((present, old)) => {
                writes.blind |= vacant == Vacant::Blind;
                (old, present, None)
            }
        };
        let len_delta = i64::from(is_some) - i64::from(present);
        writes.len_delta += len_delta;
        if tx.open_savepoints > 0 {
            tx.undo.push(Undo::Entry {
                table: Arc::clone(name),
                key: Arc::from(key),
                previous,
                len_delta,
            });
        }
        Ok(old)
    }
}

/// Entries added minus entries removed by a table's buffered writes,
/// counted key by key against the snapshot tree (after a blind delete,
/// whose key's presence in the snapshot was never looked up).
fn recount_len_delta(
    snapshot: &PageReadTransaction,
    base: Option<TreeHeader>,
    writes: &TableWrites,
) -> Result<i64> {
    let mut delta = 0i64;
    for (key, value) in writes.entries.unordered() {
        let present = match base {
            Some(tree) if tree.len > 0 => btree::get(snapshot, &tree, key)?.is_some(),
            _ => false,
        };
        delta += i64::from(value.is_some()) - i64::from(present);
    }
    Ok(delta)
}

/// A read-only snapshot of every table. Never blocks, never conflicts.
pub struct ReadTransaction {
    snapshot: PageReadTransaction,
}

impl std::fmt::Debug for ReadTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTransaction")
            .field("snapshot", &self.snapshot.snapshot())
            .finish()
    }
}

impl ReadTransaction {
    pub(crate) fn begin(shared: Arc<Shared>) -> Result<Self> {
        Ok(ReadTransaction {
            snapshot: PageReadTransaction::begin(shared)?,
        })
    }

    /// The commit epoch this snapshot sees.
    pub fn snapshot_epoch(&self) -> CommitEpoch {
        self.snapshot.snapshot()
    }

    /// Opens a table; `TableNotFound` when it does not exist.
    pub fn open_table(&self, name: &str) -> Result<ReadOnlyTable<'_>> {
        let entry = catalog::lookup(&self.snapshot, &self.snapshot.meta().catalog, name)?
            .ok_or_else(|| Error::TableNotFound(name.to_owned()))?;
        Ok(ReadOnlyTable {
            snapshot: &self.snapshot,
            tree: entry.tree,
            upper: Arc::new(btree::UpperPages::new()),
        })
    }

    /// Names of every table, sorted.
    pub fn list_tables(&self) -> Result<Vec<String>> {
        Ok(
            catalog::list(&self.snapshot, &self.snapshot.meta().catalog)?
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
        )
    }
}

/// A table inside a [`ReadTransaction`].
pub struct ReadOnlyTable<'r> {
    snapshot: &'r PageReadTransaction,
    tree: TreeHeader,
    /// The tree's branch pages as of the snapshot, kept as lookups and
    /// range seeks read them: later ones read only their leaf through the
    /// page table (whose upper entries every reader thread would otherwise
    /// share). Shared with the table's ranges, which read branch pages
    /// there as they move between leaves.
    upper: Arc<btree::UpperPages>,
}

impl std::fmt::Debug for ReadOnlyTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyTable")
            .field("snapshot", &self.snapshot)
            .field("tree", &self.tree)
            .finish()
    }
}

impl<'r> ReadOnlyTable<'r> {
    /// The value under `key`: a view into the page when it is in memory.
    pub fn get(&self, key: &[u8]) -> Result<Option<ByteView>> {
        let found = btree::get_cached(self.snapshot, &self.tree, &self.upper, key)?;
        Ok(found.map(ByteView::from_page))
    }

    /// Lends the value under `key` to `read` and returns what it returns;
    /// `None` when the key is absent. No guard is built: when the leaf has
    /// one version in memory (the common case) the bytes are borrowed from
    /// the page cache under one reclamation pin, with no lock and no
    /// reference count change, and are valid only while `read` runs (like
    /// LMDB's values, which live as long as their transaction). Values in
    /// overflow pages, and leaves that are not in the cache or have
    /// versions newer than other snapshots, are read as [`Self::get`] does
    /// and lent from there. Sees exactly what [`Self::get`] sees.
    ///
    /// `read` runs while this thread holds the pin, during which no page
    /// image retired by any thread is freed: keep it short (digest,
    /// compare, decode or copy the bytes); never block in it, nor wait for
    /// another thread or a write transaction.
    ///
    /// ```
    /// # fn main() -> mmsb_engine::Result<()> {
    /// # let options = mmsb_engine::Options {
    /// #     storage: std::sync::Arc::new(mmsb_wal::storage::MemStorage::new()),
    /// #     ..mmsb_engine::Options::default()
    /// # };
    /// # let db = options.open("/doc/get_with.mmsb")?;
    /// let mut tx = db.begin_write()?;
    /// tx.open_table("users")?.insert(b"alice", b"42")?;
    /// tx.commit()?;
    /// let rx = db.begin_read()?;
    /// let users = rx.open_table("users")?;
    /// let len = users.get_with(b"alice", |value| value.len())?;
    /// assert_eq!(len, Some(2));
    /// assert_eq!(users.get_with(b"bob", |value| value.to_vec())?, None);
    /// # Ok(())
    /// # }
    /// ```
    #[inline]
    pub fn get_with<R>(&self, key: &[u8], read: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        btree::get_with(self.snapshot, &self.tree, &self.upper, key, read)
    }

    /// Entries with keys in `bounds`, in key order, from either end.
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&self, bounds: R) -> Result<Range<'r>> {
        let lower = bounds.start_bound().cloned();
        let upper = bounds.end_bound().cloned();
        if is_inverted(&lower, &upper) {
            return Ok(Range::empty());
        }
        let bounds = (lower, upper);
        Ok(Range::new(
            Some(btree::range_cached(
                self.snapshot,
                &self.tree,
                bounds,
                &self.upper,
            )?),
            None,
        ))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Result<Range<'r>> {
        self.range::<std::ops::RangeFull>(..)
    }

    /// The entry with the smallest key.
    pub fn first(&self) -> Result<Option<(ByteView, ByteView)>> {
        Ok(btree::first(self.snapshot, &self.tree)?
            .map(|(k, v)| (ByteView::from_page(k), ByteView::from_page(v))))
    }

    /// The entry with the largest key.
    pub fn last(&self) -> Result<Option<(ByteView, ByteView)>> {
        Ok(btree::last(self.snapshot, &self.tree)?
            .map(|(k, v)| (ByteView::from_page(k), ByteView::from_page(v))))
    }

    /// Number of entries, in O(1).
    pub fn len(&self) -> u64 {
        self.tree.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.tree.len == 0
    }
}

/// See [`crate::Database::commit_batch`].
pub(crate) fn commit_batch(
    shared: &Arc<Shared>,
    mut transactions: Vec<Transaction>,
) -> Vec<Result<CommitEpoch>> {
    enum Outcome {
        Done(Result<CommitEpoch>),
        Pending(PendingCommit),
    }
    // Key order is built before the writer lock is taken.
    for tx in &mut transactions {
        tx.settle_buffers();
    }
    let mut writer = Some(shared.writer.lock_arc());
    let mut outcomes = Vec::with_capacity(transactions.len());
    for tx in transactions {
        if tx.tables.is_empty() {
            outcomes.push(Outcome::Done(Ok(tx.snapshot.snapshot())));
            continue;
        }
        let snapshot = tx.snapshot.snapshot();
        let held = writer.take().unwrap_or_else(|| shared.writer.lock_arc());
        let (returned, pending) = tx.prepare(held);
        writer = returned;
        outcomes.push(match pending {
            Ok(Some(pending)) => Outcome::Pending(pending),
            Ok(None) => Outcome::Done(Ok(snapshot)),
            Err(err) => Outcome::Done(Err(err)),
        });
    }
    drop(writer);
    // The first wait makes every frame of the batch durable in one group flush.
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Done(result) => result,
            Outcome::Pending(pending) => shared.finish_commit(pending),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mmsb_wal::storage::MemStorage;

    use super::IsolationLevel;
    use crate::{Database, Error, Options};

    fn memory_db() -> Database {
        Options {
            storage: Arc::new(MemStorage::new()),
            checkpoint_on_close: false,
            ..Options::default()
        }
        .open("/mvcc/db.mmsb")
        .expect("open a memory database")
    }

    fn put(db: &Database, key: &[u8], value: &[u8]) {
        let mut tx = db.begin_write().expect("begin");
        tx.open_table("t")
            .expect("open")
            .insert(key, value)
            .expect("insert");
        tx.commit().expect("commit");
    }

    /// T1 writes `k` (reading its old value), rolls the write back, writes
    /// another key; T2 commits a write to `k`; T1 then commits.
    fn rolled_back_write_then_commit(
        level: IsolationLevel,
    ) -> crate::Result<mmsb_wal::CommitEpoch> {
        let db = memory_db();
        put(&db, b"k", b"1");
        let mut t1 = db.begin(level).expect("begin t1");
        let savepoint = t1.savepoint();
        let old = t1.open_table("t")?.insert(b"k", b"2")?;
        assert_eq!(
            old.as_deref(),
            Some(&b"1"[..]),
            "insert returns the old value"
        );
        t1.rollback_to(&savepoint)?;
        t1.open_table("t")?.insert(b"z", b"9")?;
        put(&db, b"k", b"3");
        t1.commit()
    }

    #[test]
    fn a_rolled_back_write_still_counts_as_a_read_under_serializable() {
        let result = rolled_back_write_then_commit(IsolationLevel::Serializable);
        assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
    }

    #[test]
    fn a_rolled_back_write_is_no_conflict_under_repeatable_read() {
        let result = rolled_back_write_then_commit(IsolationLevel::RepeatableRead);
        assert!(result.is_ok(), "{result:?}");
    }

    #[test]
    fn a_buffered_write_conflicts_without_a_recorded_read() {
        for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
            let db = memory_db();
            put(&db, b"k", b"1");
            let mut t1 = db.begin(level).expect("begin t1");
            t1.open_table("t")
                .and_then(|mut t| t.insert(b"k", b"2"))
                .expect("insert");
            // No read of the table was recorded (only opening it reads the catalog).
            assert_eq!(t1.reads.reads_in(&super::KeySpace::Table("t".into())), 0);
            put(&db, b"k", b"3");
            let result = t1.commit();
            assert!(
                matches!(result, Err(Error::Conflict(_))),
                "{level:?}: {result:?}"
            );
        }
    }

    #[test]
    fn known_writes_keep_len_and_undo_like_plain_ones() {
        for level in [
            IsolationLevel::ReadCommitted,
            IsolationLevel::RepeatableRead,
            IsolationLevel::Serializable,
        ] {
            let db = memory_db();
            put(&db, b"a", b"1");
            put(&db, b"b", b"2");
            let mut tx = db.begin(level).expect("begin");
            let savepoint = tx.savepoint();
            let mut t = tx.open_table("t").expect("open");
            t.overwrite_known(b"a", b"10").expect("overwrite");
            t.remove_known(b"b").expect("remove");
            // Known writes to keys already buffered behave the same.
            t.overwrite_known(b"a", b"11").expect("overwrite again");
            assert_eq!(t.len().expect("len"), 1, "{level:?}");
            assert_eq!(t.get(b"a").expect("get").as_deref(), Some(&b"11"[..]));
            assert_eq!(t.get(b"b").expect("get"), None);
            tx.rollback_to(&savepoint).expect("rollback to");
            let mut t = tx.open_table("t").expect("open");
            assert_eq!(t.len().expect("len"), 2, "{level:?}");
            assert_eq!(t.get(b"a").expect("get").as_deref(), Some(&b"1"[..]));
            t.overwrite_known(b"b", b"20").expect("overwrite");
            tx.commit().expect("commit");
            let read = db.begin_read().expect("read");
            let table = read.open_table("t").expect("open");
            assert_eq!(table.len(), 2);
            assert_eq!(table.get(b"b").expect("get").as_deref(), Some(&b"20"[..]));
        }
    }

    #[test]
    fn known_writes_conflict_like_plain_ones() {
        for (level, conflicts) in [
            (IsolationLevel::ReadCommitted, false),
            (IsolationLevel::RepeatableRead, true),
            (IsolationLevel::Serializable, true),
        ] {
            let db = memory_db();
            put(&db, b"k", b"1");
            let mut t1 = db.begin(level).expect("begin t1");
            t1.open_table("t")
                .and_then(|mut t| t.overwrite_known(b"k", b"2"))
                .expect("overwrite");
            put(&db, b"k", b"3");
            let result = t1.commit();
            assert_eq!(
                matches!(result, Err(Error::Conflict(_))),
                conflicts,
                "{level:?}: {result:?}"
            );
        }
    }

    #[test]
    fn writes_return_the_value_they_replace_and_keep_len() {
        let db = memory_db();
        put(&db, b"a", b"base");
        let mut tx = db.begin_write().expect("begin");
        let mut t = tx.open_table("t").expect("open");
        assert_eq!(
            t.insert(b"a", b"x").expect("insert").as_deref(),
            Some(&b"base"[..])
        );
        assert_eq!(
            t.insert(b"a", b"y").expect("insert").as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(t.insert(b"b", b"z").expect("insert"), None);
        assert_eq!(t.len().expect("len"), 2);
        assert_eq!(t.remove(b"a").expect("remove").as_deref(), Some(&b"y"[..]));
        assert_eq!(t.remove(b"a").expect("remove"), None);
        assert_eq!(t.len().expect("len"), 1);
        let keys: Vec<Vec<u8>> = t
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.to_vec())
            .collect();
        assert_eq!(keys, vec![b"b".to_vec()]);
        tx.commit().expect("commit");
        let read = db.begin_read().expect("read");
        let table = read.open_table("t").expect("open");
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(b"b").expect("get").as_deref(), Some(&b"z"[..]));
    }

    fn value_of(tx: &mut super::Transaction, key: &[u8]) -> Option<Vec<u8>> {
        tx.open_table("t")
            .and_then(|mut t| t.get(key))
            .expect("get")
            .map(|v| v.to_vec())
    }

    #[test]
    fn writes_outside_savepoints_keep_no_undo_and_savepoints_still_undo() {
        let db = memory_db();
        let mut tx = db.begin_write().expect("begin");
        tx.open_table("t")
            .and_then(|mut t| t.insert(b"a", b"1"))
            .expect("insert");
        assert!(tx.undo.is_empty(), "no savepoint is open: nothing to undo");
        let outer = tx.savepoint();
        tx.open_table("t")
            .and_then(|mut t| t.insert(b"b", b"2"))
            .expect("insert");
        let inner = tx.savepoint();
        tx.open_table("t")
            .and_then(|mut t| t.insert(b"a", b"3"))
            .expect("insert");
        tx.release(inner).expect("release inner");
        assert!(!tx.undo.is_empty(), "the outer savepoint still needs undo");
        tx.rollback_to(&outer).expect("rollback");
        assert_eq!(value_of(&mut tx, b"a"), Some(b"1".to_vec()));
        assert_eq!(value_of(&mut tx, b"b"), None);
        assert_eq!(
            tx.open_table("t").and_then(|mut t| t.len()).expect("len"),
            1
        );
        tx.release(outer).expect("release outer");
        assert!(tx.undo.is_empty(), "every savepoint released: undo dropped");
        // A savepoint taken after the undo was dropped undoes what follows.
        let again = tx.savepoint();
        tx.open_table("t")
            .and_then(|mut t| t.insert(b"c", b"4"))
            .expect("insert");
        tx.rollback_to(&again).expect("rollback");
        assert_eq!(value_of(&mut tx, b"c"), None);
        assert_eq!(value_of(&mut tx, b"a"), Some(b"1".to_vec()));
        tx.commit().expect("commit");
        let read = db.begin_read().expect("read");
        assert_eq!(read.open_table("t").expect("open").len(), 1);
    }

    #[test]
    fn reopening_a_written_table_records_no_more_catalog_reads() {
        let db = memory_db();
        put(&db, b"a", b"1");
        let mut tx = db.begin(IsolationLevel::Serializable).expect("begin");
        for round in 0..3u8 {
            for name in ["t", "u"] {
                tx.open_table(name)
                    .and_then(|mut t| t.insert(&[round], b"v"))
                    .expect("insert");
            }
        }
        // One catalog read per table, however often a statement reopens it.
        assert_eq!(tx.reads.reads_in(&super::KeySpace::Catalog), 2);
        // A concurrent drop of a table it wrote still makes it conflict.
        let mut other = db.begin_write().expect("begin other");
        other.delete_table("t").expect("drop");
        other.commit().expect("commit other");
        assert!(matches!(tx.commit(), Err(Error::Conflict(_))));
    }

    #[test]
    fn a_recreated_table_is_not_written_through_the_old_tree() {
        let db = memory_db();
        put(&db, b"old", b"1");
        let mut tx = db.begin_write().expect("begin");
        // The write remembers the snapshot tree of "t" ...
        tx.open_table("t")
            .and_then(|mut t| t.insert(b"a", b"1"))
            .expect("insert");
        // ... which no longer holds once the table is dropped and recreated.
        assert!(tx.delete_table("t").expect("drop"));
        let old = tx
            .open_table("t")
            .and_then(|mut t| t.insert(b"old", b"2"))
            .expect("insert");
        assert_eq!(old, None, "the recreated table starts empty");
        assert_eq!(
            tx.open_table("t").and_then(|mut t| t.len()).expect("len"),
            1
        );
        tx.commit().expect("commit");
        let read = db.begin_read().expect("read");
        let table = read.open_table("t").expect("open");
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(b"old").expect("get").as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_random_order_load_reads_its_own_writes_and_commits_them() {
        let db = memory_db();
        put(&db, &20_000u32.to_be_bytes(), b"old");
        let mut tx = db.begin_write().expect("begin");
        let mut t = tx.open_table("t").expect("open");
        let keys: Vec<[u8; 4]> = (0..3000u32)
            .map(|i| (i * 7919 % 10_007).to_be_bytes())
            .collect();
        for (n, key) in keys.iter().enumerate() {
            t.insert(key, key).expect("insert");
            if n % 500 == 0 {
                // A range read in the middle of the load sees every write.
                let seen = t.iter().expect("iter").count();
                assert_eq!(seen, n + 2, "the loaded keys and the committed one");
                assert_eq!(t.get(key).expect("get").as_deref(), Some(&key[..]));
            }
        }
        let old = t.insert(&20_000u32.to_be_bytes(), b"new").expect("insert");
        assert_eq!(old.as_deref(), Some(&b"old"[..]));
        let removed = t.remove(&keys[7]).expect("remove");
        assert_eq!(removed.as_deref(), Some(&keys[7][..]));
        let all: Vec<Vec<u8>> = t
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.to_vec())
            .collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "key order");
        assert_eq!(all.len(), keys.len());
        tx.commit().expect("commit");
        let read = db.begin_read().expect("read");
        let table = read.open_table("t").expect("open");
        assert_eq!(table.len(), keys.len() as u64);
        for key in keys.iter().filter(|k| **k != keys[7]) {
            assert_eq!(table.get(key).expect("get").as_deref(), Some(&key[..]));
        }
        assert_eq!(table.get(&keys[7]).expect("get"), None);
        let five = table.get(&20_000u32.to_be_bytes()).expect("get");
        assert_eq!(five.as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn read_committed_writes_see_each_new_snapshot() {
        let db = memory_db();
        put(&db, b"a", b"1");
        let mut tx = db.begin(IsolationLevel::ReadCommitted).expect("begin");
        let old = tx
            .open_table("t")
            .and_then(|mut t| t.insert(b"b", b"1"))
            .expect("insert");
        assert_eq!(old, None);
        put(&db, b"c", b"1");
        // A new snapshot: the write finds the key committed meanwhile.
        let old = tx
            .open_table("t")
            .and_then(|mut t| t.insert(b"c", b"2"))
            .expect("insert");
        assert_eq!(old.as_deref(), Some(&b"1"[..]));
        assert_eq!(
            tx.open_table("t").and_then(|mut t| t.len()).expect("len"),
            3
        );
        tx.commit().expect("commit");
    }

    /// A read-only handle over a tree with more branch pages than the first
    /// tier of its branch cache keeps: gets and range seeks through the
    /// kept pages (and their indexes) see the handle's snapshot while a
    /// writer rewrites every key.
    #[test]
    fn read_only_handles_see_their_snapshot_through_kept_branch_pages() {
        let db = Options {
            storage: Arc::new(MemStorage::new()),
            checkpoint_on_close: false,
            ..Options::default()
        }
        .open("/mvcc/long-keys.mmsb")
        .expect("open");
        // Long keys that differ only at their end: separators cannot be
        // shortened, so few fit a branch page and there are many of those.
        let key = |i: u32| {
            let mut key = vec![b'k'; 390];
            key.extend(format!("{:010}", i.wrapping_mul(2_654_435_761)).bytes());
            key
        };
        let rows = 6_000u32;
        let write_all = |value: &[u8]| {
            let mut tx = db.begin_write().expect("begin");
            let mut table = tx.open_table("t").expect("open");
            for i in 0..rows {
                table.insert(&key(i), value).expect("insert");
            }
            drop(table);
            tx.commit().expect("commit");
        };
        write_all(b"old");
        let read = db.begin_read().expect("read");
        let table = read.open_table("t").expect("open");
        let mut keys: Vec<Vec<u8>> = (0..rows).map(key).collect();
        keys.sort();
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(table.get(k).expect("get").as_deref(), Some(&b"old"[..]));
            if n == rows as usize / 2 {
                write_all(b"new");
            }
        }
        for (n, start) in keys.iter().enumerate().step_by(97) {
            let mut range = table.range(&start[..]..).expect("range");
            for want in keys.iter().skip(n).take(3) {
                let (k, v) = range.next_entry().expect("an entry").expect("read");
                assert_eq!((k, v), (&want[..], &b"old"[..]));
            }
        }
        assert!(table.get(b"key:").expect("get").is_none());
        assert!(
            table.upper.spilled(),
            "more branch pages than the first tier"
        );
        let fresh = db.begin_read().expect("read");
        let fresh = fresh.open_table("t").expect("open");
        assert_eq!(
            fresh.get(&keys[0]).expect("get").as_deref(),
            Some(&b"new"[..])
        );
    }
}
