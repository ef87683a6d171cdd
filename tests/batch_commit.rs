//! A batch of independent transactions commits as one unit: one fsync for
//! the whole batch, while each transaction stays atomic and is checked for
//! conflicts on its own.

use mmsb::{Database, Error, IsolationLevel};

fn open(dir: &tempfile::TempDir) -> Database {
    Database::open(dir.path().join("batch.mmsb")).unwrap()
}

#[test]
fn a_batch_shares_one_fsync_and_every_transaction_lands() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut setup = db.begin_write().unwrap();
    setup.create_table("t").unwrap();
    setup.create_table("u").unwrap();
    setup.commit().unwrap();
    let transactions: Vec<_> = (0..100u32)
        .map(|i| {
            let mut tx = db.begin_write().unwrap();
            tx.open_table("t")
                .unwrap()
                .insert(&i.to_be_bytes(), &[i as u8; 40])
                .unwrap();
            tx.open_table("u")
                .unwrap()
                .insert(&i.to_be_bytes(), b"x")
                .unwrap();
            tx
        })
        .collect();
    let before = db.metrics();
    let outcomes = db.commit_batch(transactions);
    let after = db.metrics();
    let epochs: Vec<_> = outcomes.into_iter().map(|o| o.unwrap()).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "one epoch each, in batch order"
    );
    assert_eq!(after.commits - before.commits, 100);
    assert_eq!(
        after.tlog_fsyncs - before.tlog_fsyncs,
        1,
        "the batch must share one fsync"
    );
    let rx = db.begin_read().unwrap();
    assert_eq!(rx.open_table("t").unwrap().len(), 100);
    assert_eq!(rx.open_table("u").unwrap().len(), 100);
    drop(rx);
    drop(db);
    let db = open(&dir);
    let rx = db.begin_read().unwrap();
    assert_eq!(
        rx.open_table("t").unwrap().len(),
        100,
        "the batch is durable"
    );
}

#[test]
fn conflicts_inside_a_batch_fail_only_the_later_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let mut setup = db.begin_write().unwrap();
    setup
        .open_table("c")
        .unwrap()
        .insert(b"n", &0u64.to_le_bytes())
        .unwrap();
    setup.commit().unwrap();
    let increment = |db: &Database| {
        let mut tx = db.begin(IsolationLevel::RepeatableRead).unwrap();
        let mut table = tx.open_table("c").unwrap();
        let n = u64::from_le_bytes(
            table
                .get(b"n")
                .unwrap()
                .unwrap()
                .to_vec()
                .try_into()
                .unwrap(),
        );
        table.insert(b"n", &(n + 1).to_le_bytes()).unwrap();
        drop(table);
        tx
    };
    let mut independent = db.begin_write().unwrap();
    independent
        .open_table("other")
        .unwrap()
        .insert(b"k", b"v")
        .unwrap();
    let outcomes = db.commit_batch(vec![increment(&db), increment(&db), independent]);
    assert!(outcomes[0].is_ok());
    assert!(
        matches!(outcomes[1], Err(Error::Conflict(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok());
    let rx = db.begin_read().unwrap();
    let n = rx
        .open_table("c")
        .unwrap()
        .get(b"n")
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(u64::from_le_bytes(n.try_into().unwrap()), 1);
    assert_eq!(rx.open_table("other").unwrap().len(), 1);
}
