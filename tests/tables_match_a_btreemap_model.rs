//! Model-based property test: random sequences of table operations, commits,
//! rollbacks, savepoints, clean reopens and crashes (through the storage
//! seam) give exactly what a `BTreeMap` model gives.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use mmsb::storage::{CrashMode, MemStorage};
use mmsb::{Database, Options, Transaction};
use proptest::prelude::*;

type Tables = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

const TABLES: [&str; 3] = ["alpha", "beta", "gamma"];

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, Vec<u8>, Vec<u8>),
    Remove(usize, Vec<u8>),
    Get(usize, Vec<u8>),
    Range(usize, Vec<u8>, Vec<u8>, bool),
    Len(usize),
    DropTable(usize),
    Savepoint,
    RollbackToSavepoint,
    Commit,
    Rollback,
    Reopen,
    Crash,
    Checkpoint,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small key space so that operations meet each other.
    prop_oneof![
        (0u8..40).prop_map(|k| vec![b'k', k]),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 1000..6000),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let table = 0..TABLES.len();
    prop_oneof![
        30 => (table.clone(), key(), value()).prop_map(|(t, k, v)| Op::Insert(t, k, v)),
        10 => (table.clone(), key()).prop_map(|(t, k)| Op::Remove(t, k)),
        10 => (table.clone(), key()).prop_map(|(t, k)| Op::Get(t, k)),
        8 => (table.clone(), key(), key(), any::<bool>()).prop_map(|(t, a, b, r)| Op::Range(t, a, b, r)),
        4 => table.clone().prop_map(Op::Len),
        1 => table.prop_map(Op::DropTable),
        3 => Just(Op::Savepoint),
        3 => Just(Op::RollbackToSavepoint),
        8 => Just(Op::Commit),
        2 => Just(Op::Rollback),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => Just(Op::Checkpoint),
    ]
}

struct Harness {
    storage: MemStorage,
    db: Option<Database>,
    tx: Option<Transaction>,
    committed: Tables,
    pending: Tables,
    savepoints: Vec<(mmsb::Savepoint, Tables)>,
}

fn options(storage: &MemStorage) -> Options {
    Options {
        storage: Arc::new(storage.clone()),
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

fn path() -> PathBuf {
    PathBuf::from("/model/db.mmsb")
}

impl Harness {
    fn new() -> Self {
        let storage = MemStorage::new();
        let db = options(&storage).open(path()).unwrap();
        Harness {
            storage,
            db: Some(db),
            tx: None,
            committed: Tables::new(),
            pending: Tables::new(),
            savepoints: Vec::new(),
        }
    }

    fn tx(&mut self) -> &mut Transaction {
        if self.tx.is_none() {
            self.tx = Some(self.db.as_ref().unwrap().begin_write().unwrap());
            self.pending = self.committed.clone();
            self.savepoints.clear();
        }
        self.tx.as_mut().unwrap()
    }

    fn end_transaction(&mut self, commit: bool) {
        if let Some(tx) = self.tx.take() {
            if commit {
                tx.commit().unwrap();
                self.committed = self.pending.clone();
            } else {
                tx.rollback();
            }
        }
        self.savepoints.clear();
    }

    fn reopen(&mut self, crash: bool) {
        self.tx = None;
        self.savepoints.clear();
        self.db = None;
        if crash {
            self.storage.crash(CrashMode::DropUnsynced);
        }
        self.db = Some(options(&self.storage).open(path()).unwrap());
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Insert(t, k, v) => {
                let old = self
                    .tx()
                    .open_table(TABLES[t])
                    .unwrap()
                    .insert(&k, &v)
                    .unwrap();
                let model_old = self
                    .pending
                    .entry(TABLES[t].into())
                    .or_default()
                    .insert(k, v);
                assert_eq!(old.map(|o| o.to_vec()), model_old);
            }
            Op::Remove(t, k) => {
                let old = self.tx().open_table(TABLES[t]).unwrap().remove(&k).unwrap();
                let model_old = self.pending.entry(TABLES[t].into()).or_default().remove(&k);
                assert_eq!(old.map(|o| o.to_vec()), model_old);
            }
            Op::Get(t, k) => {
                let got = self.tx().open_table(TABLES[t]).unwrap().get(&k).unwrap();
                self.pending.entry(TABLES[t].into()).or_default();
                assert_eq!(
                    got.map(|v| v.to_vec()),
                    self.pending[TABLES[t]].get(&k).cloned()
                );
            }
            Op::Range(t, a, b, reverse) => {
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let mut table = self.tx().open_table(TABLES[t]).unwrap();
                let range = table
                    .range::<(Bound<&[u8]>, Bound<&[u8]>)>((
                        Bound::Included(&lo[..]),
                        Bound::Excluded(&hi[..]),
                    ))
                    .unwrap();
                let got: Vec<(Vec<u8>, Vec<u8>)> = if reverse {
                    range
                        .rev()
                        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                        .collect::<Result<_, _>>()
                        .unwrap()
                } else {
                    range
                        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                        .collect::<Result<_, _>>()
                        .unwrap()
                };
                drop(table);
                let model = self.pending.entry(TABLES[t].into()).or_default();
                let mut expected: Vec<(Vec<u8>, Vec<u8>)> = model
                    .range::<[u8], _>((Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if reverse {
                    expected.reverse();
                }
                assert_eq!(got, expected);
            }
            Op::Len(t) => {
                let len = self.tx().open_table(TABLES[t]).unwrap().len().unwrap();
                let model = self.pending.entry(TABLES[t].into()).or_default();
                assert_eq!(len, model.len() as u64);
            }
            Op::DropTable(t) => {
                let existed = self.tx().delete_table(TABLES[t]).unwrap();
                assert_eq!(existed, self.pending.remove(TABLES[t]).is_some());
            }
            Op::Savepoint => {
                let savepoint = self.tx().savepoint();
                let snapshot = self.pending.clone();
                self.savepoints.push((savepoint, snapshot));
            }
            Op::RollbackToSavepoint => {
                if let Some((savepoint, snapshot)) = self.savepoints.pop() {
                    self.tx().rollback_to(&savepoint).unwrap();
                    self.pending = snapshot;
                }
            }
            Op::Commit => self.end_transaction(true),
            Op::Rollback => self.end_transaction(false),
            Op::Reopen => self.reopen(false),
            Op::Crash => self.reopen(true),
            Op::Checkpoint => {
                self.db.as_ref().unwrap().checkpoint().unwrap();
            }
        }
    }

    /// Every committed table, read through a fresh snapshot, equals the model.
    fn check_committed(&self) {
        let rx = self.db.as_ref().unwrap().begin_read().unwrap();
        for name in TABLES {
            let expected = self.committed.get(name);
            match rx.open_table(name) {
                Ok(table) => {
                    let got: BTreeMap<Vec<u8>, Vec<u8>> = table
                        .iter()
                        .unwrap()
                        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                        .collect::<Result<_, _>>()
                        .unwrap();
                    assert_eq!(table.len(), got.len() as u64);
                    assert_eq!(Some(&got), expected.or(Some(&BTreeMap::new())));
                }
                Err(mmsb::Error::TableNotFound(_)) => {
                    assert!(expected.is_none_or(|t| t.is_empty()) || expected.is_none());
                }
                Err(err) => panic!("open_table: {err}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn table_operations_match_the_model(ops in prop::collection::vec(op(), 1..160)) {
        let mut harness = Harness::new();
        for op in ops {
            harness.apply(op);
            if harness.tx.is_none() {
                harness.check_committed();
            }
        }
        harness.end_transaction(true);
        harness.check_committed();
        harness.reopen(true);
        harness.check_committed();
    }
}
