//! kill -9 at random moments: every commit acknowledged before the kill is
//! present after reopening, and no commit is partly present.
//!
//! The test re-runs its own executable as a child process that commits the
//! deterministic workload of `common` in a loop, printing each commit's index
//! once `commit()` has returned. The parent kills it at a random moment,
//! reopens the database and compares every page with the model.
//!
//! Rounds: 120 by default; set `MMSB_KILL_ROUNDS=5000` to run thousands.
//! Small checkpoint thresholds make kills land inside checkpoints too; set
//! `MMSB_KILL_CHECKPOINT_BYTES=1` to checkpoint at every worker tick, and
//! `MMSB_KILL_MEMORY_BUDGET_BYTES` (at least 1 MiB) to make the children
//! evict and reload pages while checkpoints write them.
//!
//! A second test gives the child pauses longer than the engine's
//! `WRITES_PAUSED_AFTER_MS` every few commits, with a checkpoint due at
//! every byte: checkpoints then cover the whole TLog, and the next commit
//! retires the active segment (new segment, old one deleted), so kills land
//! in that rotation too (`MMSB_KILL_PAUSE_ROUNDS`, 30 by default).
//!
//! Reopening retries for a while when the database is locked: the test
//! binary runs its tests on several threads, and a child spawned by another
//! test inherits this process's open files (and so the data file's `flock`)
//! from the fork until its `exec`, which a loaded machine can delay.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mmsb::{Database, Options};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "MMSB_KILL_CHILD_DB";
const DEFAULT_ROUNDS: u64 = 120;

/// Set in a child that pauses (see the module comment).
const CHILD_PAUSES_ENV: &str = "MMSB_KILL_CHILD_PAUSES";
const DEFAULT_PAUSE_ROUNDS: u64 = 30;
/// Commits between two pauses of a pausing child.
const COMMITS_BETWEEN_PAUSES: u64 = 8;
/// A pause: longer than the engine's `WRITES_PAUSED_AFTER_MS` (50).
const PAUSE_MS: u64 = 70;

/// The children's TLog growth between checkpoints, unless
/// `MMSB_KILL_CHECKPOINT_BYTES` says otherwise.
const CHECKPOINT_TLOG_BYTES: u64 = 64 * 1024;

/// How long a reopen waits for a lock held by a forked, not yet exec'd,
/// child of another test.
const LOCKED_RETRY_MS: u64 = 10_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn options() -> Options {
    let defaults = Options::default();
    let pauses = std::env::var_os(CHILD_PAUSES_ENV).is_some();
    Options {
        checkpoint_tlog_bytes: env_u64("MMSB_KILL_CHECKPOINT_BYTES").unwrap_or(if pauses {
            1
        } else {
            CHECKPOINT_TLOG_BYTES
        }),
        tlog_segment_bytes: 128 * 1024,
        worker_interval_ms: 2,
        memory_budget_bytes: env_u64("MMSB_KILL_MEMORY_BUDGET_BYTES")
            .unwrap_or(defaults.memory_budget_bytes),
        ..defaults
    }
}

/// Where a test keeps its database: a fresh temporary directory (and the
/// guard that removes it), kept after the test for `mmsb check` when
/// `MMSB_KILL_KEEP_DIR` is set.
fn test_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("MMSB_KILL_KEEP_DIR").is_some() {
        let path = dir.keep();
        eprintln!("keeping {}", path.display());
        return (None, path);
    }
    let path = dir.path().to_path_buf();
    (Some(dir), path)
}

/// Opens with `options`, retrying while the database is locked (see the
/// module comment) for at most [`LOCKED_RETRY_MS`].
fn open_retrying_locked(options: &Options, path: &Path) -> mmsb::Result<Database> {
    let started = Instant::now();
    loop {
        match options.open(path) {
            Err(mmsb::Error::DatabaseLocked(_))
                if started.elapsed() < Duration::from_millis(LOCKED_RETRY_MS) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The child's body; a no-op unless the parent started this process.
#[test]
#[ignore = "run by acknowledged_commits_survive_kill_9 as a child process"]
fn child_commit_loop() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let db = open_retrying_locked(&options(), &PathBuf::from(path)).expect("child open");
    let pauses = std::env::var_os(CHILD_PAUSES_ENV).is_some();
    let mut next = common::committed_count(&db).expect("child count");
    println!("start {next}");
    loop {
        common::run_commit(&db, next).expect("child commit");
        println!("ack {next}");
        next += 1;
        if pauses && next.is_multiple_of(COMMITS_BETWEEN_PAUSES) {
            std::thread::sleep(Duration::from_millis(PAUSE_MS));
        }
    }
}

fn spawn_child(db_path: &Path, pauses: bool) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().expect("test executable"));
    command
        .args([
            "child_commit_loop",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if pauses {
        command.env(CHILD_PAUSES_ENV, "1");
    }
    command.spawn().expect("spawn child")
}

/// Reads "ack N" lines until the channel closes; returns the highest N.
fn collect_acks(stdout: std::process::ChildStdout, tx: mpsc::Sender<u64>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        if let Some(index) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
            if tx.send(index).is_err() {
                return;
            }
        }
    }
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let rounds = env_u64("MMSB_KILL_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    kill_rounds(rounds, false, 5..60);
}

#[test]
fn acknowledged_commits_survive_kill_9_across_checkpoint_pauses() {
    let rounds = env_u64("MMSB_KILL_PAUSE_ROUNDS").unwrap_or(DEFAULT_PAUSE_ROUNDS);
    kill_rounds(rounds, true, 20..400);
}

/// `rounds` times: start a child (pausing or not), kill it after a random
/// time from `alive_ms`, reopen, and check every acknowledged commit is
/// there and every page matches the model.
fn kill_rounds(rounds: u64, pauses: bool, alive_ms: std::ops::Range<u64>) {
    let (_guard, dir) = test_dir();
    let db_path = dir.join("killed.mmsb");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b696c6c);
    let mut acked: Option<u64> = None;
    let mut kills_mid_commit = 0u64;
    let mut model = common::Model::default();
    for round in 0..rounds {
        let mut child = spawn_child(&db_path, pauses);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || collect_acks(stdout, tx));
        // Let the child open (and recover), then kill it at a random moment.
        let alive_for = Duration::from_millis(rng.gen_range(alive_ms.clone()));
        let started = Instant::now();
        while started.elapsed() < alive_for {
            if let Ok(index) = rx.recv_timeout(Duration::from_millis(1)) {
                acked = Some(acked.map_or(index, |a| a.max(index)));
            }
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap child");
        reader.join().expect("reader thread");
        for index in rx.try_iter() {
            acked = Some(acked.map_or(index, |a| a.max(index)));
        }

        let db = open_retrying_locked(&Database::options(), &db_path)
            .unwrap_or_else(|err| panic!("round {round}: reopen failed: {err}"));
        let present = common::committed_count(&db).expect("count");
        let must_have = acked.map_or(0, |a| a + 1);
        assert!(
            present >= must_have,
            "round {round}: {must_have} commits were acknowledged but only {present} survived"
        );
        // At most the one commit in flight may be present without an ack.
        assert!(
            present <= must_have + 1,
            "round {round}: {present} commits present, only {must_have} acknowledged"
        );
        kills_mid_commit += present - must_have;
        while model.commits < present {
            model.apply_next(db.page_len());
        }
        if let Err(diff) = common::verify_against(&db, &model) {
            panic!("round {round}: {diff}");
        }
        acked = present.checked_sub(1);
    }
    eprintln!(
        "{rounds} kill rounds, {} commits survived, {kills_mid_commit} kills after a commit became durable but before its ack",
        acked.map_or(0, |a| a + 1)
    );
}

// ---------------------------------------------------------------------------
// Multi-table, multi-writer: concurrent SERIALIZABLE transfers, each also
// writing a ledger entry in a second table.
// ---------------------------------------------------------------------------

const BANK_CHILD_ENV: &str = "MMSB_KILL_BANK_CHILD_DB";
const BANK_THREADS: u8 = 4;
const BANK_ACCOUNTS: u64 = 16;
const BANK_INITIAL: i64 = 10_000;
const DEFAULT_BANK_ROUNDS: u64 = 40;

fn account_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn ledger_key(thread: u8, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = thread;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn decode_i64(bytes: &[u8]) -> i64 {
    i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The transfer thread `thread` makes as its `seq`-th: (from, to, amount).
fn planned_transfer(thread: u8, seq: u64) -> (u64, u64, i64) {
    let mut x = (u64::from(thread) << 56) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let from = x % BANK_ACCOUNTS;
    let to = (from + 1 + (x >> 20) % (BANK_ACCOUNTS - 1)) % BANK_ACCOUNTS;
    (from, to, ((x >> 40) % 100) as i64)
}

fn next_seq(db: &Database, thread: u8) -> u64 {
    let rx = db.begin_read().expect("read");
    let Ok(ledger) = rx.open_table("ledger") else {
        return 0;
    };
    let lower = ledger_key(thread, 0);
    let upper = ledger_key(thread, u64::MAX);
    let last = ledger
        .range(&lower[..]..=&upper[..])
        .expect("range")
        .next_back()
        .map(|entry| entry.expect("entry"));
    last.map_or(0, |(key, _)| {
        u64::from_be_bytes(key[1..9].try_into().expect("seq")) + 1
    })
}

#[test]
#[ignore = "run by acknowledged_transfers_survive_kill_9 as a child process"]
fn child_bank_loop() {
    let Some(path) = std::env::var_os(BANK_CHILD_ENV) else {
        return;
    };
    let db = open_retrying_locked(&options(), &PathBuf::from(path)).expect("child open");
    db.run(mmsb::IsolationLevel::Serializable, |tx| {
        let mut accounts = tx.open_table("accounts")?;
        if accounts.is_empty()? {
            for index in 0..BANK_ACCOUNTS {
                accounts.insert(&account_key(index), &BANK_INITIAL.to_le_bytes())?;
            }
        }
        Ok(())
    })
    .expect("init");
    std::thread::scope(|scope| {
        for thread in 0..BANK_THREADS {
            let db = db.clone();
            scope.spawn(move || {
                let mut seq = next_seq(&db, thread);
                loop {
                    let (from, to, amount) = planned_transfer(thread, seq);
                    db.run(mmsb::IsolationLevel::Serializable, |tx| {
                        let mut accounts = tx.open_table("accounts")?;
                        let a = decode_i64(&accounts.get(&account_key(from))?.expect("account"));
                        let b = decode_i64(&accounts.get(&account_key(to))?.expect("account"));
                        accounts.insert(&account_key(from), &(a - amount).to_le_bytes())?;
                        accounts.insert(&account_key(to), &(b + amount).to_le_bytes())?;
                        tx.open_table("ledger")?
                            .insert(&ledger_key(thread, seq), &amount.to_le_bytes())?;
                        Ok(())
                    })
                    .expect("transfer");
                    println!("ack {thread} {seq}");
                    seq += 1;
                }
            });
        }
    });
}

/// Checks the recovered bank: balances equal the initial ones plus exactly
/// the transfers in the ledger, and the ledger holds every acknowledged one.
fn verify_bank(db: &Database, acked: &[Option<u64>], round: u64) {
    let rx = db.begin_read().expect("read");
    let Ok(accounts) = rx.open_table("accounts") else {
        assert!(
            acked.iter().all(Option::is_none),
            "round {round}: accounts vanished"
        );
        return;
    };
    let mut expected = vec![BANK_INITIAL; BANK_ACCOUNTS as usize];
    if let Ok(ledger) = rx.open_table("ledger") {
        for entry in ledger.iter().expect("iter") {
            let (key, value) = entry.expect("entry");
            let thread = key[0];
            let seq = u64::from_be_bytes(key[1..9].try_into().expect("seq"));
            let (from, to, amount) = planned_transfer(thread, seq);
            assert_eq!(
                decode_i64(&value),
                amount,
                "round {round}: ledger entry altered"
            );
            expected[from as usize] -= amount;
            expected[to as usize] += amount;
        }
        for (thread, last) in acked.iter().enumerate() {
            if let Some(last) = last {
                for seq in 0..=*last {
                    let key = ledger_key(thread as u8, seq);
                    assert!(
                        ledger.get(&key).expect("get").is_some(),
                        "round {round}: acknowledged transfer {thread}/{seq} is missing"
                    );
                }
            }
        }
    }
    for index in 0..BANK_ACCOUNTS {
        let balance = decode_i64(
            &accounts
                .get(&account_key(index))
                .expect("get")
                .expect("account"),
        );
        assert_eq!(
            balance, expected[index as usize],
            "round {round}: account {index} disagrees with the ledger (a partial commit?)"
        );
    }
}

#[test]
fn acknowledged_transfers_survive_kill_9_with_concurrent_writers() {
    let rounds = std::env::var("MMSB_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_BANK_ROUNDS, |n: u64| n / 3)
        .max(1);
    let (_guard, dir) = test_dir();
    let db_path = dir.join("bank.mmsb");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x62616e6b);
    let mut acked: Vec<Option<u64>> = vec![None; BANK_THREADS as usize];
    let mut total_acks = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().expect("test executable"))
            .args([
                "child_bank_loop",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BANK_CHILD_ENV, &db_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<(u8, u64)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut parts = line.strip_prefix("ack ").unwrap_or("").split(' ');
                let (Some(t), Some(s)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if let (Ok(t), Ok(s)) = (t.parse(), s.parse()) {
                    if tx.send((t, s)).is_err() {
                        return;
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..120)));
        child.kill().expect("kill -9");
        child.wait().expect("reap child");
        reader.join().expect("reader");
        for (thread, seq) in rx.try_iter() {
            let slot = &mut acked[thread as usize];
            *slot = Some(slot.map_or(seq, |s| s.max(seq)));
            total_acks += 1;
        }
        let db = open_retrying_locked(&Database::options(), &db_path)
            .unwrap_or_else(|err| panic!("round {round}: reopen failed: {err}"));
        verify_bank(&db, &acked, round);
    }
    eprintln!("{rounds} kill rounds of {BANK_THREADS} concurrent writers, {total_acks} acknowledged transfers verified");
    assert!(total_acks > 0, "the child never acknowledged a transfer");
}
