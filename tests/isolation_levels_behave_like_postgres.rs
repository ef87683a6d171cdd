//! The isolation levels behave like PostgreSQL's: dirty reads never, lost
//! updates prevented from REPEATABLE READ up, write skew and phantoms
//! prevented under SERIALIZABLE, READ COMMITTED seeing each statement's
//! newest commits, and many concurrent writers keeping invariants.

use std::sync::Arc;

use mmsb::storage::MemStorage;
use mmsb::{Database, Error, IsolationLevel, Options};

const LEVELS: [IsolationLevel; 3] = [
    IsolationLevel::ReadCommitted,
    IsolationLevel::RepeatableRead,
    IsolationLevel::Serializable,
];

fn memory_db() -> Database {
    Options {
        storage: Arc::new(MemStorage::new()),
        checkpoint_on_close: false,
        ..Options::default()
    }
    .open("/iso/db.mmsb")
    .unwrap()
}

fn put(db: &Database, table: &str, key: &[u8], value: i64) {
    let mut tx = db.begin_write().unwrap();
    tx.open_table(table)
        .unwrap()
        .insert(key, &value.to_le_bytes())
        .unwrap();
    tx.commit().unwrap();
}

fn decode(bytes: &[u8]) -> i64 {
    i64::from_le_bytes(bytes.try_into().expect("8-byte value"))
}

fn read_value(tx: &mut mmsb::Transaction, table: &str, key: &[u8]) -> i64 {
    decode(
        &tx.open_table(table)
            .unwrap()
            .get(key)
            .unwrap()
            .expect("key present"),
    )
}

#[test]
fn uncommitted_writes_are_invisible_to_everyone_else() {
    let db = memory_db();
    put(&db, "t", b"x", 1);
    for level in LEVELS {
        let mut writer = db.begin_write().unwrap();
        writer
            .open_table("t")
            .unwrap()
            .insert(b"x", &2i64.to_le_bytes())
            .unwrap();
        let mut reader = db.begin(level).unwrap();
        assert_eq!(
            read_value(&mut reader, "t", b"x"),
            1,
            "{level:?} saw a dirty write"
        );
        assert_eq!(
            read_value(&mut writer, "t", b"x"),
            2,
            "a transaction sees its own writes"
        );
        writer.rollback();
        assert_eq!(read_value(&mut reader, "t", b"x"), 1);
    }
}

#[test]
fn read_committed_sees_each_statements_newest_commit_repeatable_read_does_not() {
    let db = memory_db();
    put(&db, "t", b"x", 1);
    let mut read_committed = db.begin(IsolationLevel::ReadCommitted).unwrap();
    let mut repeatable = db.begin(IsolationLevel::RepeatableRead).unwrap();
    assert_eq!(read_value(&mut read_committed, "t", b"x"), 1);
    assert_eq!(read_value(&mut repeatable, "t", b"x"), 1);
    put(&db, "t", b"x", 2);
    assert_eq!(read_value(&mut read_committed, "t", b"x"), 2);
    assert_eq!(
        read_value(&mut repeatable, "t", b"x"),
        1,
        "snapshot isolation keeps the first snapshot"
    );
}

/// Two transactions read a counter and write it back incremented.
fn race_increments(
    db: &Database,
    level: IsolationLevel,
) -> (Result<mmsb::CommitEpoch, Error>, i64) {
    put(db, "c", b"n", 0);
    let mut first = db.begin(level).unwrap();
    let mut second = db.begin(level).unwrap();
    let a = read_value(&mut first, "c", b"n");
    let b = read_value(&mut second, "c", b"n");
    first
        .open_table("c")
        .unwrap()
        .insert(b"n", &(a + 1).to_le_bytes())
        .unwrap();
    second
        .open_table("c")
        .unwrap()
        .insert(b"n", &(b + 1).to_le_bytes())
        .unwrap();
    first.commit().unwrap();
    let second_outcome = second.commit();
    let mut check = db.begin(level).unwrap();
    (second_outcome, read_value(&mut check, "c", b"n"))
}

#[test]
fn lost_updates_are_prevented_from_repeatable_read_up() {
    let db = memory_db();
    let (outcome, value) = race_increments(&db, IsolationLevel::ReadCommitted);
    assert!(outcome.is_ok(), "READ COMMITTED lets the last writer win");
    assert_eq!(
        value, 1,
        "one increment is lost under READ COMMITTED, as in PostgreSQL"
    );
    for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
        let (outcome, value) = race_increments(&db, level);
        let err = outcome.expect_err("the second committer must fail");
        assert!(err.is_retryable(), "{level:?}: {err}");
        assert!(matches!(err, Error::Conflict(_)));
        assert_eq!(
            value, 1,
            "{level:?}: the first committer's increment stands alone"
        );
    }
}

/// Two doctors on call; each goes off call if the other is still on.
fn write_skew(db: &Database, level: IsolationLevel) -> Result<mmsb::CommitEpoch, Error> {
    put(db, "oncall", b"alice", 1);
    put(db, "oncall", b"bob", 1);
    let mut t1 = db.begin(level).unwrap();
    let mut t2 = db.begin(level).unwrap();
    let on_call = |tx: &mut mmsb::Transaction| {
        read_value(tx, "oncall", b"alice") + read_value(tx, "oncall", b"bob")
    };
    assert_eq!(on_call(&mut t1), 2);
    assert_eq!(on_call(&mut t2), 2);
    t1.open_table("oncall")
        .unwrap()
        .insert(b"alice", &0i64.to_le_bytes())
        .unwrap();
    t2.open_table("oncall")
        .unwrap()
        .insert(b"bob", &0i64.to_le_bytes())
        .unwrap();
    t1.commit().unwrap();
    t2.commit()
}

#[test]
fn write_skew_is_allowed_under_repeatable_read_and_prevented_under_serializable() {
    let db = memory_db();
    assert!(
        write_skew(&db, IsolationLevel::RepeatableRead).is_ok(),
        "snapshot isolation permits write skew"
    );
    let err = write_skew(&db, IsolationLevel::Serializable)
        .expect_err("serializable must refuse write skew");
    assert!(err.is_retryable());
    let mut check = db.begin_write().unwrap();
    let total =
        read_value(&mut check, "oncall", b"alice") + read_value(&mut check, "oncall", b"bob");
    assert_eq!(total, 1, "someone stays on call");
}

/// T1 counts the rows of a range and records the count; T2 inserts into the range.
fn phantom(db: &Database, level: IsolationLevel) -> Result<mmsb::CommitEpoch, Error> {
    let mut setup = db.begin_write().unwrap();
    setup.delete_table("orders").unwrap();
    setup.commit().unwrap();
    put(db, "orders", b"order-1", 10);
    put(db, "orders", b"order-2", 20);
    let mut t1 = db.begin(level).unwrap();
    let lower: &[u8] = b"order-";
    let upper: &[u8] = b"order-~";
    let count = t1
        .open_table("orders")
        .unwrap()
        .range(lower..upper)
        .unwrap()
        .count();
    assert_eq!(count, 2);
    put(db, "orders", b"order-3", 30);
    // The snapshot does not show the phantom to T1 itself...
    let again = t1
        .open_table("orders")
        .unwrap()
        .range(lower..upper)
        .unwrap()
        .count();
    if level != IsolationLevel::ReadCommitted {
        assert_eq!(
            again, 2,
            "{level:?}: a phantom appeared inside the snapshot"
        );
    }
    // ...but T1 acts on what it saw.
    t1.open_table("summary")
        .unwrap()
        .insert(b"orders", &(count as i64).to_le_bytes())
        .unwrap();
    t1.commit()
}

#[test]
fn phantoms_are_prevented_under_serializable() {
    let db = memory_db();
    assert!(phantom(&db, IsolationLevel::RepeatableRead).is_ok());
    let err = phantom(&db, IsolationLevel::Serializable)
        .expect_err("a range read met a concurrent insert");
    assert!(err.is_retryable());
}

#[test]
fn a_concurrent_delete_inside_a_read_range_is_a_conflict_under_serializable() {
    let db = memory_db();
    for key in [&b"a"[..], b"b", b"c"] {
        put(&db, "t", key, 1);
    }
    let mut t1 = db.begin(IsolationLevel::Serializable).unwrap();
    let sum: i64 = t1
        .open_table("t")
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| decode(&entry.unwrap().1))
        .sum();
    assert_eq!(sum, 3);
    let mut t2 = db.begin_write().unwrap();
    t2.open_table("t").unwrap().remove(b"b").unwrap();
    t2.commit().unwrap();
    t1.open_table("totals")
        .unwrap()
        .insert(b"t", &sum.to_le_bytes())
        .unwrap();
    assert!(matches!(t1.commit(), Err(Error::Conflict(_))));
}

const ACCOUNTS: u64 = 8;
const INITIAL_BALANCE: i64 = 1_000;

fn account(index: u64) -> Vec<u8> {
    format!("acct-{index:03}").into_bytes()
}

fn bank_total(db: &Database) -> i64 {
    let rx = db.begin_read().unwrap();
    let table = rx.open_table("accounts").unwrap();
    assert_eq!(table.len(), ACCOUNTS);
    table
        .iter()
        .unwrap()
        .map(|entry| decode(&entry.unwrap().1))
        .sum()
}

fn run_bank(level: IsolationLevel, threads: u64, transfers_per_thread: u64) {
    let db = memory_db();
    let mut tx = db.begin_write().unwrap();
    let mut table = tx.open_table("accounts").unwrap();
    for index in 0..ACCOUNTS {
        table
            .insert(&account(index), &INITIAL_BALANCE.to_le_bytes())
            .unwrap();
    }
    tx.commit().unwrap();
    let conflicts_before = db.metrics().conflicts;
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let db = db.clone();
            scope.spawn(move || {
                let mut state = thread * 7919 + 1;
                for _ in 0..transfers_per_thread {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (state >> 33) % ACCOUNTS;
                    let to = (from + 1 + (state >> 40) % (ACCOUNTS - 1)) % ACCOUNTS;
                    let amount = ((state >> 20) % 50) as i64;
                    db.run(level, |tx| {
                        let mut accounts = tx.open_table("accounts")?;
                        let from_balance = decode(&accounts.get(&account(from))?.expect("account"));
                        let to_balance = decode(&accounts.get(&account(to))?.expect("account"));
                        accounts.insert(&account(from), &(from_balance - amount).to_le_bytes())?;
                        accounts.insert(&account(to), &(to_balance + amount).to_le_bytes())?;
                        Ok(())
                    })
                    .expect("transfer after retries");
                }
            });
        }
    });
    assert_eq!(
        bank_total(&db),
        INITIAL_BALANCE * ACCOUNTS as i64,
        "{level:?}: money was created or lost"
    );
    let conflicts = db.metrics().conflicts - conflicts_before;
    eprintln!(
        "{level:?}: {} transfers on {threads} threads, {conflicts} conflicts retried",
        threads * transfers_per_thread
    );
    assert!(
        conflicts > 0,
        "{level:?}: contended transfers should have conflicted at least once"
    );
}

#[test]
fn bank_transfers_keep_the_total_under_serializable() {
    run_bank(IsolationLevel::Serializable, 8, 150);
}

#[test]
fn bank_transfers_keep_the_total_under_repeatable_read() {
    run_bank(IsolationLevel::RepeatableRead, 8, 150);
}

#[test]
fn concurrent_increments_are_never_lost_from_repeatable_read_up() {
    for level in [IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
        let db = memory_db();
        put(&db, "c", b"n", 0);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                let db = db.clone();
                scope.spawn(move || {
                    for _ in 0..100 {
                        db.run(level, |tx| {
                            let mut table = tx.open_table("c")?;
                            let n = decode(&table.get(b"n")?.expect("counter"));
                            table.insert(b"n", &(n + 1).to_le_bytes())?;
                            Ok(())
                        })
                        .expect("increment after retries");
                    }
                });
            }
        });
        let mut check = db.begin(level).unwrap();
        assert_eq!(
            read_value(&mut check, "c", b"n"),
            600,
            "{level:?} lost an update"
        );
    }
}

#[test]
fn a_long_reader_blocks_no_writer_and_keeps_its_snapshot() {
    let db = memory_db();
    put(&db, "t", b"x", 0);
    let reader = db.begin_read().unwrap();
    for value in 1..=200 {
        put(&db, "t", b"x", value);
    }
    let table = reader.open_table("t").unwrap();
    assert_eq!(
        decode(&table.get(b"x").unwrap().unwrap()),
        0,
        "the snapshot moved"
    );
    let pinned = db.metrics().pinned_version_bytes;
    assert!(
        pinned > 0,
        "the long reader pins old versions, and the metrics show it"
    );
    drop(reader);
    // Once the reader is gone, the merge worker folds the pinned versions.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.metrics().pinned_version_bytes > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        db.metrics().pinned_version_bytes,
        0,
        "pinned versions were never folded"
    );
    let rx = db.begin_read().unwrap();
    assert_eq!(
        decode(&rx.open_table("t").unwrap().get(b"x").unwrap().unwrap()),
        200
    );
}
