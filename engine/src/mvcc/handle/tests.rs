//! Table handles against the model they shortcut: the same operations run
//! with `open_table(name).insert(..)` on one database and `insert_via` on
//! handles kept across statements (and transactions) on another must give
//! the same outcomes and leave the same tables.

use std::sync::Arc;

use mmsb_wal::storage::MemStorage;
use proptest::prelude::*;

use super::TableHandle;
use crate::{Database, IsolationLevel, Options, Savepoint, Transaction};

fn memory_db() -> Database {
    Options {
        storage: Arc::new(MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    }
    .open("/handle/db.mmsb")
    .expect("open a memory database")
}

const TABLES: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, u8, u8),
    Create(usize),
    Drop(usize),
    Savepoint,
    RollbackTo,
    Release,
    /// Commit and begin the next transaction (handles are kept).
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TABLES.len(), 0u8..6, any::<u8>()).prop_map(|(t, k, v)| Op::Insert(t, k, v)),
        1 => (0..TABLES.len()).prop_map(Op::Create),
        1 => (0..TABLES.len()).prop_map(Op::Drop),
        1 => Just(Op::Savepoint),
        1 => Just(Op::RollbackTo),
        1 => Just(Op::Release),
        1 => Just(Op::Commit),
    ]
}

fn level() -> impl Strategy<Value = IsolationLevel> {
    prop_oneof![
        Just(IsolationLevel::ReadCommitted),
        Just(IsolationLevel::RepeatableRead),
        Just(IsolationLevel::Serializable),
    ]
}

/// How inserts reach a table: by name each time, or through kept handles.
trait Writer {
    fn insert(&mut self, tx: &mut Transaction, table: usize, key: &[u8], value: &[u8]) -> String;
}

struct ByName;

impl Writer for ByName {
    fn insert(&mut self, tx: &mut Transaction, table: usize, key: &[u8], value: &[u8]) -> String {
        let result = tx
            .open_table(TABLES[table])
            .and_then(|mut t| t.insert(key, value));
        format!("{:?}", result.map(|old| old.map(|v| v.to_vec())))
    }
}

#[derive(Default)]
struct ByHandle {
    handles: [Option<TableHandle>; 2],
}

impl Writer for ByHandle {
    fn insert(&mut self, tx: &mut Transaction, table: usize, key: &[u8], value: &[u8]) -> String {
        let result = match &mut self.handles[table] {
            Some(handle) => tx.insert_via(handle, key, value),
            slot => tx
                .table_handle(TABLES[table])
                .and_then(|handle| tx.insert_via(slot.insert(handle), key, value)),
        };
        format!("{:?}", result.map(|old| old.map(|v| v.to_vec())))
    }
}

/// Runs `ops`; returns each outcome and every table's entries at the end.
fn run(ops: &[Op], level: IsolationLevel, writer: &mut dyn Writer) -> (Vec<String>, String) {
    let db = memory_db();
    let mut open = Some(db.begin(level).expect("begin"));
    let mut savepoints: Vec<Savepoint> = Vec::new();
    let mut outcomes = Vec::new();
    for op in ops {
        let tx = open.as_mut().expect("a transaction is open");
        let outcome = match op {
            Op::Insert(t, k, v) => writer.insert(tx, *t, &[*k], &[*v]),
            Op::Create(t) => format!("{:?}", tx.create_table(TABLES[*t]).map(drop)),
            Op::Drop(t) => format!("{:?}", tx.delete_table(TABLES[*t])),
            Op::Savepoint => {
                savepoints.push(tx.savepoint());
                "savepoint".into()
            }
            Op::RollbackTo => match savepoints.last() {
                Some(savepoint) => format!("{:?}", tx.rollback_to(savepoint)),
                None => "none".into(),
            },
            Op::Release => match savepoints.pop() {
                Some(savepoint) => format!("{:?}", tx.release(savepoint)),
                None => "none".into(),
            },
            Op::Commit => {
                savepoints.clear();
                let result = open.take().expect("open").commit();
                open = Some(db.begin(level).expect("begin"));
                format!("{:?}", result.map(drop))
            }
        };
        outcomes.push(outcome);
    }
    open.take().expect("open").commit().expect("commit");
    let read = db.begin_read().expect("begin read");
    let mut tables = String::new();
    for name in read.list_tables().expect("list") {
        let table = read.open_table(&name).expect("open");
        let entries: Vec<(Vec<u8>, Vec<u8>)> = table
            .range::<std::ops::RangeFull>(..)
            .expect("range")
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<crate::Result<_>>()
            .expect("entries");
        tables += &format!("{name}: {entries:?}\n");
    }
    (outcomes, tables)
}

proptest! {
    // Each case opens two databases: 64 cases keep the test near a second.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn handle_inserts_match_inserts_by_name(
        ops in proptest::collection::vec(op(), 1..40),
        level in level(),
    ) {
        let by_name = run(&ops, level, &mut ByName);
        let by_handle = run(&ops, level, &mut ByHandle::default());
        prop_assert_eq!(by_name, by_handle);
    }
}

#[test]
fn a_handle_is_current_only_until_the_tables_change() {
    let db = memory_db();
    let mut tx = db.begin_write().expect("begin");
    let mut handle = tx.table_handle("t").expect("handle");
    // Created by `table_handle`: the transaction holds a live entry.
    assert!(tx.handle_is_current(&handle));
    tx.insert_via(&mut handle, b"k", b"1").expect("insert");
    assert!(tx.handle_is_current(&handle));
    let savepoint = tx.savepoint();
    tx.delete_table("t").expect("drop");
    assert!(!tx.handle_is_current(&handle), "a drop makes it stale");
    tx.rollback_to(&savepoint).expect("rollback to");
    assert!(!tx.handle_is_current(&handle), "so does a rollback");
    let old = tx.insert_via(&mut handle, b"k", b"2").expect("insert");
    assert_eq!(old.as_deref(), Some(&b"1"[..]), "the rollback restored k");
    assert!(tx.handle_is_current(&handle), "re-resolved by name");
    tx.commit().expect("commit");

    // In another transaction the handle resolves by name first.
    let mut next = db.begin_write().expect("begin");
    assert!(!next.handle_is_current(&handle));
    let old = next.insert_via(&mut handle, b"k", b"3").expect("insert");
    assert_eq!(old.as_deref(), Some(&b"2"[..]));
    assert!(
        next.handle_is_current(&handle),
        "current from its first write on"
    );
    next.commit().expect("commit");
}
