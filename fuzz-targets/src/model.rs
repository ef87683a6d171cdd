//! Model-based target: random sequences of table operations, commits,
//! rollbacks, checkpoints, injected I/O faults and simulated crashes
//! against a `BTreeMap` of the acknowledged state.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use mmsb_engine::{Database, Transaction};
use mmsb_wal::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage};

use crate::db_util::{self, Tables, DB_PATH};

/// Table names the operations pick from.
const TABLES: [&str; 3] = ["alpha", "beta", "gamma"];

/// Most operations one input runs (bounds the time one input takes).
const MAX_OPS: usize = 256;

/// A value: given outright, or one byte repeated (cheap overflow pages).
#[derive(Debug, Arbitrary)]
enum Value {
    Given(Vec<u8>),
    Repeated { byte: u8, len: u16 },
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Given(bytes) => bytes.clone(),
            Value::Repeated { byte, len } => vec![*byte; usize::from(*len % 12_000)],
        }
    }
}

/// How a simulated crash treats unsynced writes.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Crash {
    DropUnsynced,
    KeepUnsynced,
    Tear(u64),
}

impl Crash {
    fn mode(self) -> CrashMode {
        match self {
            Crash::DropUnsynced => CrashMode::DropUnsynced,
            Crash::KeepUnsynced => CrashMode::KeepUnsynced,
            Crash::Tear(seed) => CrashMode::TearUnsynced { seed },
        }
    }
}

/// An I/O fault, counted from when it is armed.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Fault {
    FailWrite(u8),
    TearWrite(u8, u16),
    FailSync(u8),
    DiskFull(u16),
}

impl Fault {
    fn plan(self) -> FaultPlan {
        match self {
            Fault::FailWrite(n) => FaultPlan {
                fail_write: Some(u64::from(n % 16)),
                ..FaultPlan::default()
            },
            Fault::TearWrite(n, len) => FaultPlan {
                tear_write: Some((u64::from(n % 16), usize::from(len))),
                ..FaultPlan::default()
            },
            Fault::FailSync(n) => FaultPlan {
                fail_sync: Some(u64::from(n % 8)),
                ..FaultPlan::default()
            },
            Fault::DiskFull(bytes) => FaultPlan {
                disk_full_after_bytes: Some(u64::from(bytes)),
                ..FaultPlan::default()
            },
        }
    }
}

/// One operation of the sequence.
#[derive(Debug, Arbitrary)]
enum Op {
    Insert {
        table: u8,
        key: u8,
        value: Value,
    },
    Remove {
        table: u8,
        key: u8,
    },
    DropTable {
        table: u8,
    },
    Commit,
    Rollback,
    Checkpoint,
    Crash(Crash),
    Reopen,
    /// Arms a fault; when it fires, the database is crashed (as given) and reopened.
    Fault(Fault, Crash),
}

/// The database under test and the model of what it must hold.
struct Harness {
    storage: MemStorage,
    faulty: FaultyStorage,
    db: Option<Database>,
    tx: Option<Transaction>,
    /// State of the last acknowledged commit (empty tables left out).
    committed: Tables,
    /// What the open transaction would commit.
    pending: Tables,
    /// A commit that failed: after recovery it is wholly present or wholly absent.
    in_doubt: Option<Tables>,
    /// How the database is crashed when an armed fault fires.
    crash_on_fault: Crash,
}

/// Fuzz target `model_ops_with_crash`: after every crash (with unsynced
/// writes dropped, kept or torn), clean reopen or injected fault, the
/// reopened database holds exactly the acknowledged commits, plus possibly
/// the one commit whose outcome the fault left in doubt, wholly; every
/// error seen is explained by an injected fault.
pub fn model_ops_with_crash(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut harness = Harness::new();
    for op in ops.iter().take(MAX_OPS) {
        harness.apply(op);
    }
    harness.crash_and_verify(Crash::DropUnsynced);
}

impl Harness {
    fn new() -> Self {
        let storage = MemStorage::new();
        let faulty = FaultyStorage::new(Arc::new(storage.clone()));
        let mut harness = Harness {
            storage,
            faulty,
            db: None,
            tx: None,
            committed: Tables::new(),
            pending: Tables::new(),
            in_doubt: None,
            crash_on_fault: Crash::DropUnsynced,
        };
        harness.reopen();
        harness
    }

    fn db(&self) -> &Database {
        match &self.db {
            Some(db) => db,
            None => panic!("the harness lost its database"),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Insert { table, key, value } => {
                let name = TABLES[usize::from(*table) % TABLES.len()];
                let value = value.bytes();
                let result =
                    self.with_tx(|tx| tx.open_table(name)?.insert(&[*key], &value).map(|_| ()));
                if result {
                    self.pending
                        .entry(name.into())
                        .or_default()
                        .insert(vec![*key], value);
                }
            }
            Op::Remove { table, key } => {
                let name = TABLES[usize::from(*table) % TABLES.len()];
                if self.with_tx(|tx| tx.open_table(name)?.remove(&[*key]).map(|_| ())) {
                    self.pending
                        .entry(name.into())
                        .or_default()
                        .remove(&[*key][..]);
                }
            }
            Op::DropTable { table } => {
                let name = TABLES[usize::from(*table) % TABLES.len()];
                if self.with_tx(|tx| tx.delete_table(name).map(|_| ())) {
                    self.pending.remove(name);
                }
            }
            Op::Commit => self.commit(),
            Op::Rollback => {
                if let Some(tx) = self.tx.take() {
                    tx.rollback();
                }
            }
            Op::Checkpoint => {
                if let Err(err) = self.db().checkpoint() {
                    self.failed("checkpoint", &err);
                }
            }
            Op::Crash(crash) => self.crash_and_verify(*crash),
            Op::Reopen => {
                self.tx = None;
                self.db = None;
                self.reopen();
            }
            Op::Fault(fault, crash) => {
                self.faulty.set_plan(fault.plan());
                self.crash_on_fault = *crash;
            }
        }
    }

    /// Runs `body` in the open transaction (beginning one if needed);
    /// returns whether it succeeded.
    fn with_tx(&mut self, body: impl FnOnce(&mut Transaction) -> mmsb_engine::Result<()>) -> bool {
        if self.tx.is_none() {
            match self.db().begin_write() {
                Ok(tx) => {
                    self.tx = Some(tx);
                    self.pending = self.committed.clone();
                }
                Err(err) => {
                    self.failed("begin", &err);
                    return false;
                }
            }
        }
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        match body(tx) {
            Ok(()) => true,
            Err(err) => {
                self.failed("a table operation", &err);
                false
            }
        }
    }

    fn commit(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        match tx.commit() {
            Ok(_) => self.committed = db_util::normalized(&self.pending),
            Err(err) => {
                self.in_doubt = Some(db_util::normalized(&self.pending));
                self.failed("commit", &err);
            }
        }
    }

    /// An operation failed: only an injected fault may explain it. The
    /// database is crashed, healed, reopened and checked.
    fn failed(&mut self, what: &str, err: &mmsb_engine::Error) {
        assert!(
            self.faulty.counters().faults_injected() > 0,
            "{what} failed with no fault injected: {err}"
        );
        self.crash_and_verify(self.crash_on_fault);
    }

    /// Simulates a crash, reopens and checks the database against the model.
    fn crash_and_verify(&mut self, crash: Crash) {
        self.storage.crash(crash.mode());
        self.tx = None;
        self.db = None;
        self.reopen();
    }

    /// Opens the database (healing faults if the open itself hit one) and
    /// checks it holds the acknowledged state, or the state in doubt.
    fn reopen(&mut self) {
        let options = db_util::options(Arc::new(self.faulty.clone()));
        let db = match options.open(DB_PATH) {
            Ok(db) => db,
            Err(err) => {
                assert!(
                    self.faulty.counters().faults_injected() > 0,
                    "reopening failed with no fault injected: {err}"
                );
                self.faulty.set_plan(FaultPlan::default());
                self.storage.crash(self.crash_on_fault.mode());
                match options.open(DB_PATH) {
                    Ok(db) => db,
                    Err(err) => {
                        panic!("the database does not reopen once faults are healed: {err}")
                    }
                }
            }
        };
        // No fault stays armed past a reopen, and the counters start over.
        self.faulty.set_plan(FaultPlan::default());
        let tables = match db_util::read_tables(&db) {
            Ok(tables) => tables,
            Err(err) => panic!("a recovered database fails to read: {err}"),
        };
        if tables != self.committed {
            match self.in_doubt.take() {
                Some(in_doubt) if tables == in_doubt => self.committed = in_doubt,
                in_doubt => panic!(
                    "recovered state differs from the model\nrecovered: {tables:?}\nacknowledged: {:?}\nin doubt: {in_doubt:?}",
                    self.committed
                ),
            }
        }
        self.in_doubt = None;
        self.pending = self.committed.clone();
        self.db = Some(db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(table: u8, key: u8, len: u16) -> Op {
        Op::Insert {
            table,
            key,
            value: Value::Repeated { byte: key, len },
        }
    }

    #[test]
    fn acknowledged_commits_survive_every_crash_mode() {
        for crash in [Crash::DropUnsynced, Crash::KeepUnsynced, Crash::Tear(7)] {
            let mut harness = Harness::new();
            for key in 0..40 {
                harness.apply(&insert(key % 3, key, 50 + 300 * u16::from(key % 5)));
                if key % 8 == 7 {
                    harness.apply(&Op::Commit);
                }
                if key == 20 {
                    harness.apply(&Op::Checkpoint);
                }
            }
            // The last, uncommitted inserts must vanish.
            harness.apply(&Op::Crash(crash));
            assert_eq!(
                harness.committed.values().map(|t| t.len()).sum::<usize>(),
                40
            );
        }
    }

    #[test]
    fn faults_leave_the_commit_in_doubt_or_absent() {
        for n in 0..6 {
            let mut harness = Harness::new();
            harness.apply(&insert(0, 1, 10));
            harness.apply(&Op::Commit);
            harness.apply(&Op::Fault(Fault::FailSync(n), Crash::KeepUnsynced));
            harness.apply(&insert(1, 2, 5000));
            harness.apply(&Op::Commit);
            harness.apply(&Op::Checkpoint);
            harness.apply(&Op::Fault(Fault::FailWrite(n), Crash::DropUnsynced));
            harness.apply(&insert(2, 3, 5000));
            harness.apply(&Op::Commit);
            harness.apply(&Op::Checkpoint);
            harness.crash_and_verify(Crash::Tear(u64::from(n)));
        }
    }

    #[test]
    #[should_panic(expected = "recovered state differs from the model")]
    fn a_wrong_model_is_caught() {
        let mut harness = Harness::new();
        harness.apply(&insert(0, 1, 10));
        harness.apply(&Op::Commit);
        harness.committed.clear();
        harness.apply(&Op::Reopen);
    }
}
