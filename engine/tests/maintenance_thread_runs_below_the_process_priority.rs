//! The checkpoint that waits for writes to pause (one short of urgent)
//! runs on its own thread at
//! [`Options::maintenance_nice`], below the application's threads; the
//! worker that commits and memory may wait for keeps the process's
//! priority; a niceness a thread could not set is refused at open.
//!
//! One test function: the threads are found by name in this process, so no
//! other database may be open beside it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmsb_engine::{Database, Error, Options, DEFAULT_MAINTENANCE_NICE, MAINTENANCE_NICE_MAX};
use mmsb_wal::storage::MemStorage;

/// How long a started thread may take to show its niceness.
const THREAD_START_WAIT_MS: u64 = 10_000;

fn open(nice: i32) -> Result<Database, Error> {
    Options {
        storage: Arc::new(MemStorage::new()),
        maintenance_nice: nice,
        ..Options::default()
    }
    .open(Path::new("/nice.mmsb"))
}

/// The niceness of every thread of this process named `name`.
#[cfg(target_os = "linux")]
fn nice_of_threads(name: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("list /proc/self/task") {
        let dir = task.expect("task entry").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, nice 19.
        let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
        let nice = after_name
            .split(' ')
            .nth(16)
            .expect("stat has a nice field")
            .parse()
            .expect("nice is a number");
        found.push(nice);
    }
    found
}

/// Waits until exactly one thread named `name` shows niceness `nice`.
#[cfg(target_os = "linux")]
fn wait_for_thread(name: &str, nice: i64) {
    let deadline = Instant::now() + Duration::from_millis(THREAD_START_WAIT_MS);
    loop {
        let found = nice_of_threads(name);
        if found == [nice] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "threads named {name}: niceness {found:?}, expected one at {nice}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn maintenance_runs_at_its_niceness_and_the_worker_at_the_process_priority() {
    for refused in [-1, MAINTENANCE_NICE_MAX + 1] {
        match open(refused) {
            Err(Error::InvalidArgument(reason)) => {
                assert!(reason.contains("maintenance_nice"), "{reason}")
            }
            other => panic!("maintenance_nice {refused} accepted: {:?}", other.map(drop)),
        }
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `getpriority` takes plain integers and reads no memory.
        let process_nice = i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
        if process_nice >= i64::from(DEFAULT_MAINTENANCE_NICE) {
            println!(
                "the test runs at nice {process_nice}: the maintenance thread keeps it where the \
                 niceness asked for is not lower"
            );
        }
        for nice in [DEFAULT_MAINTENANCE_NICE, MAINTENANCE_NICE_MAX, 0] {
            let db = open(nice).expect("open");
            // A thread may lower its priority, never raise it.
            let expected = process_nice.max(i64::from(nice));
            wait_for_thread("mmsb-maintain", expected);
            wait_for_thread("mmsb-worker", process_nice);
            drop(db);
            let deadline = Instant::now() + Duration::from_millis(THREAD_START_WAIT_MS);
            while !nice_of_threads("mmsb-maintain").is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "the maintenance thread outlived its database"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    println!("skipped the niceness checks: thread priorities are only set on Linux");
}
