//! The snapshot registry: which commit epochs live readers still see, and
//! the published (visible) epoch that new snapshots start from.
//!
//! The watermark (the oldest live snapshot, or the visible epoch when there
//! is none) bounds what the merge worker may fold: a page's base image never
//! moves past an epoch that some reader still needs.
//!
//! Concurrency: every operation that relates the live set to the visible
//! epoch (`publish`, `acquire`, `fold_limit`) does so under the one lock, so
//! the three are linearizable. Under `--cfg loom` the lock and the atomic come
//! from [loom](https://docs.rs/loom) (see the private `sync` shim below), and
//! `engine/tests/loom_snapshot_registry.rs` checks these properties over every
//! interleaving of a few threads; its first lines give the command.

use std::collections::BTreeMap;

use mmsb_wal::CommitEpoch;

use sync::{AtomicU64, Mutex, Ordering};

/// The synchronisation primitives the registry is built from: parking_lot's
/// mutex (no poisoning) and std's atomic normally; loom's models of both
/// under `--cfg loom`, so that loom can explore every interleaving.
mod sync {
    #[cfg(not(loom))]
    pub(super) use parking_lot::Mutex;
    #[cfg(not(loom))]
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};

    #[cfg(loom)]
    pub(super) use loom::sync::atomic::{AtomicU64, Ordering};

    /// loom's mutex with parking_lot's signature: `lock` returns the guard
    /// itself and ignores poisoning, as parking_lot does.
    #[cfg(loom)]
    #[derive(Debug, Default)]
    pub(super) struct Mutex<T>(loom::sync::Mutex<T>);

    #[cfg(loom)]
    impl<T> Mutex<T> {
        /// Locks, taking the data even when a panicking holder poisoned it.
        pub(super) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

/// Live snapshots and the visible epoch.
#[derive(Debug)]
pub struct SnapshotRegistry {
    /// Snapshot epoch → number of live readers at it.
    live: Mutex<BTreeMap<u64, usize>>,
    /// Newest epoch whose commit is durable (per the durability mode) and
    /// visible to new snapshots. Only grows.
    visible: AtomicU64,
}

impl Default for SnapshotRegistry {
    /// An empty registry at epoch zero.
    fn default() -> Self {
        SnapshotRegistry::new(CommitEpoch::ZERO)
    }
}

impl SnapshotRegistry {
    /// A registry whose first visible epoch is `epoch`.
    pub fn new(epoch: CommitEpoch) -> Self {
        SnapshotRegistry {
            live: Mutex::default(),
            visible: AtomicU64::new(epoch.get()),
        }
    }

    /// The newest visible epoch.
    pub fn visible(&self) -> CommitEpoch {
        CommitEpoch(self.visible.load(Ordering::Acquire))
    }

    /// Makes `epoch` visible to snapshots taken from now on. Epochs are
    /// published in commit order because the TLog makes them durable in
    /// that order; `fetch_max` keeps a late publisher from going backwards.
    pub fn publish(&self, epoch: CommitEpoch) {
        let _live = self.live.lock();
        self.visible.fetch_max(epoch.get(), Ordering::AcqRel);
    }

    /// Pins the visible epoch for a new reader.
    pub fn acquire(&self) -> CommitEpoch {
        let mut live = self.live.lock();
        let epoch = self.visible.load(Ordering::Acquire);
        *live.entry(epoch).or_insert(0) += 1;
        CommitEpoch(epoch)
    }

    /// Releases a snapshot taken by [`SnapshotRegistry::acquire`].
    pub fn release(&self, epoch: CommitEpoch) {
        let mut live = self.live.lock();
        match live.get_mut(&epoch.get()) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                live.remove(&epoch.get());
            }
            None => debug_assert!(false, "released a snapshot that was not live: {epoch}"),
        }
    }

    /// The newest epoch every live and future snapshot can see: versions at or
    /// below it may be folded into base images.
    pub fn fold_limit(&self) -> CommitEpoch {
        let live = self.live.lock();
        let visible = self.visible.load(Ordering::Acquire);
        let oldest = live.keys().next().copied().unwrap_or(visible);
        CommitEpoch(oldest.min(visible))
    }

    /// Number of live snapshots and the oldest one.
    pub fn live_summary(&self) -> (usize, Option<CommitEpoch>) {
        let live = self.live.lock();
        (
            live.values().sum(),
            live.keys().next().map(|&epoch| CommitEpoch(epoch)),
        )
    }
}

// loom's primitives panic outside `loom::model`: these plain tests run only in
// the normal build.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fold_limit_follows_the_oldest_reader() {
        let registry = SnapshotRegistry::new(CommitEpoch(5));
        assert_eq!(registry.fold_limit(), CommitEpoch(5));
        let old = registry.acquire();
        registry.publish(CommitEpoch(6));
        registry.publish(CommitEpoch(7));
        assert_eq!(registry.fold_limit(), CommitEpoch(5));
        let newer = registry.acquire();
        assert_eq!(newer, CommitEpoch(7));
        registry.release(old);
        assert_eq!(registry.fold_limit(), CommitEpoch(7));
        registry.release(newer);
        assert_eq!(registry.live_summary(), (0, None));
    }

    #[test]
    fn publish_never_goes_backwards() {
        let registry = SnapshotRegistry::new(CommitEpoch(0));
        registry.publish(CommitEpoch(3));
        registry.publish(CommitEpoch(2));
        assert_eq!(registry.visible(), CommitEpoch(3));
    }

    #[test]
    fn default_is_empty_at_epoch_zero() {
        let registry = SnapshotRegistry::default();
        assert_eq!(registry.visible(), CommitEpoch::ZERO);
        assert_eq!(registry.fold_limit(), CommitEpoch::ZERO);
        assert_eq!(registry.live_summary(), (0, None));
    }

    #[test]
    fn readers_at_one_epoch_are_counted() {
        let registry = SnapshotRegistry::new(CommitEpoch(2));
        let first = registry.acquire();
        let second = registry.acquire();
        assert_eq!(registry.live_summary(), (2, Some(CommitEpoch(2))));
        registry.publish(CommitEpoch(4));
        registry.release(first);
        assert_eq!(registry.fold_limit(), CommitEpoch(2));
        registry.release(second);
        assert_eq!(registry.fold_limit(), CommitEpoch(4));
    }
}
