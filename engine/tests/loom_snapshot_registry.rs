//! Model checks of `SnapshotRegistry` with loom: every interleaving of two or
//! three threads that publish epochs, take and release snapshots, and compute
//! the fold limit.
//!
//! Run (release: loom explores many thousands of interleavings):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mmsb-engine --release --test loom_snapshot_registry
//! ```
//!
//! (A separate target dir keeps the `--cfg loom` build from invalidating the
//! normal one.) `LOOM_MAX_PREEMPTIONS=N` bounds the search; by default it is
//! exhaustive. Without `--cfg loom` this file compiles to nothing.
//!
//! The properties, which the page table and the merge worker rely on:
//! - (a) a snapshot taken while another thread publishes sees the old or the
//!   new epoch, never one in between or beyond;
//! - (b) a fold limit computed at any moment before a snapshot is released
//!   never exceeds that snapshot (a base image never moves past a live
//!   reader), and successive fold limits never go down;
//! - (c) `publish` never moves the visible epoch backwards, even when a late
//!   publisher brings an older epoch.
#![cfg(loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use mmsb_engine::{CommitEpoch, SnapshotRegistry};

/// Epoch the registry starts at in every model.
const START_EPOCH: u64 = 5;

fn registry() -> Arc<SnapshotRegistry> {
    Arc::new(SnapshotRegistry::new(CommitEpoch(START_EPOCH)))
}

/// (a) One publisher moves 5 → 7 while a reader takes two snapshots: each is
/// 5 or 7 (never 6, never above 7), the second is not older than the first,
/// and both are at most the final visible epoch.
#[test]
fn snapshot_sees_the_old_or_the_new_epoch() {
    loom::model(|| {
        let registry = registry();
        let publisher = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || registry.publish(CommitEpoch(7)))
        };
        let reader = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                let first = registry.acquire();
                let second = registry.acquire();
                registry.release(first);
                registry.release(second);
                (first.get(), second.get())
            })
        };
        publisher.join().expect("publisher");
        let (first, second) = reader.join().expect("reader");
        for seen in [first, second] {
            assert!(
                seen == START_EPOCH || seen == 7,
                "snapshot at {seen}, expected 5 or 7"
            );
        }
        assert!(
            first <= second,
            "second snapshot {second} older than first {first}"
        );
        assert_eq!(registry.visible(), CommitEpoch(7));
        assert_eq!(registry.live_summary(), (0, None));
    });
}

/// (a) Two commits published in order (6, then 8) by one thread and one by a
/// late second publisher (7): a reader's snapshot is always an epoch that
/// was actually published (or the start), never above the newest.
#[test]
fn snapshot_is_always_a_published_epoch() {
    loom::model(|| {
        let registry = registry();
        let in_order = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                registry.publish(CommitEpoch(6));
                registry.publish(CommitEpoch(8));
            })
        };
        let late = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || registry.publish(CommitEpoch(7)))
        };
        let seen = registry.acquire();
        registry.release(seen);
        in_order.join().expect("publisher");
        late.join().expect("late publisher");
        assert!(
            [START_EPOCH, 6, 7, 8].contains(&seen.get()),
            "snapshot at {seen}, which nobody published"
        );
        assert_eq!(registry.visible(), CommitEpoch(8));
    });
}

/// What the reader in the fold-limit model has done so far, as seen under
/// one lock so that "before the release" is well defined.
#[derive(Debug, Default)]
struct ReaderWatch {
    /// The reader's snapshot, once `acquire` returned.
    snapshot: Option<u64>,
    /// Set just before the reader calls `release`.
    releasing: bool,
    /// Fold limits computed before the reader's `acquire` returned; each
    /// must still be at most the snapshot it then got.
    limits_before_snapshot: Vec<u64>,
}

/// A reader takes a snapshot and holds it, a merger computes fold limits,
/// a publisher publishes 6 and 7; all interleaved.
fn fold_limit_model(merger_rounds: usize) {
    let registry = registry();
    let watch = Arc::new(Mutex::new(ReaderWatch::default()));
    let reader = {
        let (registry, watch) = (Arc::clone(&registry), Arc::clone(&watch));
        thread::spawn(move || {
            let snapshot = registry.acquire();
            {
                let mut watch = watch.lock().expect("watch");
                for &limit in &watch.limits_before_snapshot {
                    assert!(
                        limit <= snapshot.get(),
                        "fold limit {limit} computed before snapshot {snapshot} was released exceeds it"
                    );
                }
                watch.snapshot = Some(snapshot.get());
            }
            watch.lock().expect("watch").releasing = true;
            registry.release(snapshot);
        })
    };
    let merger = {
        let (registry, watch) = (Arc::clone(&registry), Arc::clone(&watch));
        thread::spawn(move || {
            let mut previous = 0;
            for _ in 0..merger_rounds {
                let limit = registry.fold_limit().get();
                assert!(
                    limit >= previous,
                    "fold limit went down: {previous} → {limit}"
                );
                previous = limit;
                let mut watch = watch.lock().expect("watch");
                if watch.releasing {
                    continue;
                }
                // The reader has not started releasing: its snapshot is live
                // now, or is yet to be taken.
                match watch.snapshot {
                    Some(snapshot) => assert!(
                        limit <= snapshot,
                        "fold limit {limit} passes live snapshot {snapshot}"
                    ),
                    None => watch.limits_before_snapshot.push(limit),
                }
            }
        })
    };
    registry.publish(CommitEpoch(6));
    registry.publish(CommitEpoch(7));
    reader.join().expect("reader");
    merger.join().expect("merger");
    assert!(registry.fold_limit() <= registry.visible());
    assert_eq!(
        registry.fold_limit(),
        CommitEpoch(7),
        "no reader left: limit is the visible epoch"
    );
}

/// (b) with one fold-limit computation per execution.
#[test]
fn fold_limit_never_passes_a_live_snapshot() {
    loom::model(|| fold_limit_model(1));
}

/// (b) with two, which also checks that fold limits never go down.
#[test]
fn fold_limits_never_go_down_or_pass_a_live_snapshot() {
    loom::model(|| fold_limit_model(2));
}

/// (b) with two readers, one of which releases while the other holds on:
/// the limit never passes the one still held.
#[test]
fn fold_limit_respects_the_oldest_of_two_readers() {
    loom::model(|| {
        let registry = registry();
        let held = registry.acquire();
        let passing = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || {
                let snapshot = registry.acquire();
                registry.release(snapshot);
            })
        };
        let publisher = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || registry.publish(CommitEpoch(9)))
        };
        let limit = registry.fold_limit();
        assert!(
            limit <= held,
            "fold limit {limit} passes held snapshot {held}"
        );
        passing.join().expect("reader");
        publisher.join().expect("publisher");
        assert_eq!(registry.fold_limit(), held);
        registry.release(held);
        assert_eq!(registry.fold_limit(), CommitEpoch(9));
    });
}

/// (c) A publisher of 7 and a late publisher of 6 race while an observer
/// reads the visible epoch and takes a snapshot: what it sees never goes
/// down, and the end state is 7.
#[test]
fn publish_never_moves_visible_backwards() {
    loom::model(|| {
        let registry = registry();
        let newer = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || registry.publish(CommitEpoch(7)))
        };
        let late = {
            let registry = Arc::clone(&registry);
            thread::spawn(move || registry.publish(CommitEpoch(6)))
        };
        let first = registry.visible();
        let snapshot = registry.acquire();
        let last = registry.visible();
        assert!(
            first <= snapshot,
            "snapshot {snapshot} older than visible {first} read before it"
        );
        assert!(
            snapshot <= last,
            "visible {last} older than snapshot {snapshot} taken before it"
        );
        registry.release(snapshot);
        newer.join().expect("publisher");
        late.join().expect("late publisher");
        assert_eq!(registry.visible(), CommitEpoch(7));
    });
}
