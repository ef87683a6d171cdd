//! The blind writes — `Table::put` and `Table::delete`, which never look up
//! the value they replace — against `Table::insert`, `Table::remove` and a
//! `BTreeMap` model: same entries, same `len` inside the transaction
//! (savepoints included) and after commit, and the same write-write
//! conflicts at every isolation level.

use std::collections::BTreeMap;
use std::sync::Arc;

use mmsb::storage::MemStorage;
use mmsb::{Database, Error, IsolationLevel, Options};
use proptest::prelude::*;

const TABLE: &str = "t";

fn memory_db() -> Database {
    Options {
        storage: Arc::new(MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    }
    .open("/blind/db.mmsb")
    .unwrap()
}

/// Every entry of the table, committed.
fn contents(db: &Database) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let rx = db.begin_read().unwrap();
    let table = rx.open_table(TABLE).unwrap();
    let out: BTreeMap<_, _> = table
        .iter()
        .unwrap()
        .map(|entry| {
            let (k, v) = entry.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect();
    assert_eq!(table.len(), out.len() as u64, "header length");
    out
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Insert(u8, u8),
    Delete(u8),
    Remove(u8),
    Len,
    Savepoint,
    RollbackToSavepoint,
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..48, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        4 => (0u8..48, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
        5 => (0u8..48).prop_map(Op::Delete),
        2 => (0u8..48).prop_map(Op::Remove),
        3 => Just(Op::Len),
        1 => Just(Op::Savepoint),
        1 => Just(Op::RollbackToSavepoint),
        1 => Just(Op::Commit),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Blind puts and deletes mixed with inserts, removals, savepoints and
    /// commits give the model's entries and lengths.
    #[test]
    fn blind_writes_match_a_model(ops in prop::collection::vec(op(), 1..120)) {
        let db = memory_db();
        let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut model = committed.clone();
        let mut savepoints = Vec::new();
        let mut tx = db.begin_write().unwrap();
        // The table exists from the first commit on.
        tx.open_table(TABLE).unwrap();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    tx.open_table(TABLE).unwrap().put(&key(k), &[v]).unwrap();
                    model.insert(key(k), vec![v]);
                }
                Op::Insert(k, v) => {
                    let old = tx.open_table(TABLE).unwrap().insert(&key(k), &[v]).unwrap();
                    prop_assert_eq!(old.map(|v| v.to_vec()), model.insert(key(k), vec![v]));
                }
                Op::Delete(k) => {
                    tx.open_table(TABLE).unwrap().delete(&key(k)).unwrap();
                    model.remove(&key(k));
                }
                Op::Remove(k) => {
                    let old = tx.open_table(TABLE).unwrap().remove(&key(k)).unwrap();
                    prop_assert_eq!(old.map(|v| v.to_vec()), model.remove(&key(k)));
                }
                Op::Len => {
                    let len = tx.open_table(TABLE).unwrap().len().unwrap();
                    prop_assert_eq!(len, model.len() as u64);
                }
                Op::Savepoint => savepoints.push((tx.savepoint(), model.clone())),
                Op::RollbackToSavepoint => {
                    if let Some((savepoint, saved)) = savepoints.pop() {
                        tx.rollback_to(&savepoint).unwrap();
                        model = saved;
                    }
                }
                Op::Commit => {
                    tx.commit().unwrap();
                    committed = model.clone();
                    prop_assert_eq!(&contents(&db), &committed);
                    savepoints.clear();
                    tx = db.begin_write().unwrap();
                    // Keep the table in existence for `contents`.
                    tx.open_table(TABLE).unwrap();
                }
            }
        }
        let len = tx.open_table(TABLE).unwrap().len().unwrap();
        prop_assert_eq!(len, model.len() as u64);
        tx.commit().unwrap();
        prop_assert_eq!(&contents(&db), &model);
    }
}

/// A database whose table holds keys 0..10, committed.
fn db_with_ten_keys() -> Database {
    let db = memory_db();
    let mut tx = db.begin_write().unwrap();
    let mut table = tx.open_table(TABLE).unwrap();
    for k in 0..10 {
        table.insert(&key(k), b"v").unwrap();
    }
    drop(table);
    tx.commit().unwrap();
    db
}

/// Keys present before the transaction, put blind: replaced, not counted
/// twice, before and after the commit; a new key put blind is counted once.
#[test]
fn a_blind_put_over_a_present_key_keeps_len() {
    let db = db_with_ten_keys();
    let mut tx = db.begin_write().unwrap();
    let mut table = tx.open_table(TABLE).unwrap();
    table.put(&key(3), b"w").unwrap();
    table.put(&key(200), b"new").unwrap();
    assert_eq!(table.len().unwrap(), 11);
    assert_eq!(table.get(&key(3)).unwrap().unwrap().to_vec(), b"w");
    drop(table);
    tx.commit().unwrap();
    let after = contents(&db);
    assert_eq!(after.len(), 11);
    assert_eq!(after[&key(3)], b"w");
    assert_eq!(after[&key(200)], b"new");
}

/// A key present before the transaction, deleted blind: gone after the
/// commit, and `len` counts it as removed before the commit.
#[test]
fn a_blind_delete_of_a_present_key_lowers_len() {
    let db = db_with_ten_keys();
    let mut tx = db.begin_write().unwrap();
    let mut table = tx.open_table(TABLE).unwrap();
    table.delete(&key(3)).unwrap();
    table.delete(&key(200)).unwrap();
    assert_eq!(table.len().unwrap(), 9);
    assert!(table.get(&key(3)).unwrap().is_none());
    drop(table);
    tx.commit().unwrap();
    let after = contents(&db);
    assert_eq!(after.len(), 9);
    assert!(!after.contains_key(&key(3)));
}

/// Whether a transaction at `level` that writes key `a` blind (`write`)
/// commits after a concurrent transaction wrote the same key and committed
/// first.
fn blind_write_after_concurrent_write(
    level: IsolationLevel,
    write: fn(&mut mmsb::Table<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let db = memory_db();
    let mut tx = db.begin_write().unwrap();
    tx.open_table(TABLE).unwrap().insert(b"a", b"1").unwrap();
    tx.commit().unwrap();
    let mut t1 = db.begin(level).unwrap();
    write(&mut t1.open_table(TABLE).unwrap()).unwrap();
    let mut t2 = db.begin_write().unwrap();
    t2.open_table(TABLE).unwrap().insert(b"a", b"2").unwrap();
    t2.commit().unwrap();
    t1.commit().map(drop)
}

#[test]
fn blind_writes_conflict_with_a_concurrent_write_like_insert_and_remove() {
    let put: fn(&mut mmsb::Table<'_>) -> Result<(), Error> = |t| t.put(b"a", b"3");
    let delete: fn(&mut mmsb::Table<'_>) -> Result<(), Error> = |t| t.delete(b"a");
    for write in [put, delete] {
        for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
            let err = blind_write_after_concurrent_write(level, write).unwrap_err();
            assert!(matches!(err, Error::Conflict(_)), "{level:?}: {err}");
        }
        // READ COMMITTED checks no write-write conflict: the blind write wins.
        blind_write_after_concurrent_write(IsolationLevel::ReadCommitted, write).unwrap();
    }
}
