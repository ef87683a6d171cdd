//! Eviction and back-pressure: the CLOCK hand over the page table's
//! shards, direct eviction on the paths that need room, the background pass
//! the worker runs, and commit admission that waits (bounded by
//! `Options::backpressure_max_wait_ms`) and then fails with
//! [`Error::MemoryBudgetExceeded`].
//!
//! Policy:
//! - Only clean entries are evicted: not in the dirty map (the data file
//!   holds them as they are) and with an empty delta chain (no live snapshot
//!   needs an older version). A page loaded again later is valid for every
//!   live snapshot, because a snapshot older than the page's last change
//!   keeps that change in the chain, and so the entry in memory.
//! - Dirty pages get clean by a checkpoint (the whole route through the
//!   double-write file), which the worker runs when dirty pages pass
//!   [`DIRTY_WRITEBACK_PERCENT`] of the budget or when an admission asks.
//! - The worker evicts down to [`EVICT_LOW_WATERMARK_PERCENT`] once the
//!   table passes [`EVICT_HIGH_WATERMARK_PERCENT`]; a thread that needs
//!   room and finds none evicts directly (at least [`DIRECT_EVICT_MIN_PERCENT`]
//!   of the budget at a time).
//! - A page load that finds no room even then is returned to its reader
//!   without being cached (readers never wait). A commit that finds no room
//!   waits for the worker; when the wait passes its bound it fails.
//!
//! Lock order: the dirty map, then one page-table shard (as in commit's install).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmsb_wal::{CommitEpoch, PageId};

use crate::db::Shared;
use crate::error::{Error, Result};
use crate::memory::{self, Reservation};
use crate::metrics::Metrics;
use crate::page_file::PAGE_TRAILER_LEN;
use crate::page_table::{Evicted, InstallPins, PageTable, SHARD_COUNT};
use crate::txn::ChangedPage;

/// Default of `Options::backpressure_max_wait_ms`: how long a commit waits
/// for room before it fails with [`Error::MemoryBudgetExceeded`].
pub const DEFAULT_BACKPRESSURE_MAX_WAIT_MS: u64 = 10_000;

/// The worker starts evicting when the table holds this share of the budget.
pub(crate) const EVICT_HIGH_WATERMARK_PERCENT: u64 = 90;

/// ... and evicts down to this share.
pub(crate) const EVICT_LOW_WATERMARK_PERCENT: u64 = 75;

/// The worker writes dirty pages back (a checkpoint) when they pass this
/// share of the budget.
pub(crate) const DIRTY_WRITEBACK_PERCENT: u64 = 25;

/// Direct eviction frees at least this share of the budget at a time, so
/// that a burst of misses does not sweep once per page.
pub(crate) const DIRECT_EVICT_MIN_PERCENT: u64 = 2;

/// Most of the budget one checkpoint round's sealed page copies may take.
pub(crate) const CHECKPOINT_BUFFER_PERCENT: u64 = 10;

/// Fewest pages a checkpoint round writes, however small the budget.
const MIN_CHECKPOINT_CHUNK_PAGES: usize = 16;

/// Longest single sleep of a commit waiting for room (it re-checks after).
const BACKPRESSURE_POLL_MS: u64 = 5;

/// How often the worker samples the machine's memory (when asked to).
pub(crate) const SYSTEM_SAMPLE_INTERVAL_MS: u64 = 1000;

/// The CLOCK hand and the requests between threads and the worker.
#[derive(Debug)]
pub(crate) struct Evictor {
    /// Next shard the hand visits.
    hand: AtomicUsize,
    /// An admission found dirty pages in its way: the worker should write back.
    writeback_requested: AtomicBool,
    max_wait: Duration,
    /// Whether the worker lowers the budget when the machine runs short.
    follow_system: bool,
    /// No background worker runs: a commit needing room writes back itself.
    inline_writeback: bool,
}

impl Evictor {
    /// An evictor whose commits wait at most `max_wait_ms`; with
    /// `inline_writeback` (no background worker) they write back themselves.
    pub(crate) fn new(max_wait_ms: u64, follow_system: bool, inline_writeback: bool) -> Self {
        Evictor {
            hand: AtomicUsize::new(0),
            writeback_requested: AtomicBool::new(false),
            max_wait: Duration::from_millis(max_wait_ms),
            follow_system,
            inline_writeback,
        }
    }

    /// Whether the worker samples the machine's memory.
    pub(crate) fn follows_system(&self) -> bool {
        self.follow_system
    }
}

/// A commit's room under the budget, and its entries pinned against
/// eviction, both held until the commit is installed (or failed).
#[derive(Debug)]
pub(crate) struct CommitRoom<'a> {
    _reservation: Reservation<'a>,
    _pins: InstallPins<'a>,
}

/// Bytes a page transaction's private copy of one page is charged besides
/// the page itself: its map slot, the `DirtyPage` pair and the copy's `Arc`
/// header (an upper estimate).
pub(crate) const PAGE_COPY_OVERHEAD_BYTES: u64 = 96;

/// Bytes an open page-level write transaction is charged against the budget
/// for its private page copies ([`Shared::charge_page_copy`]). The commit's
/// admission takes them over: the copies become the heads the install adds,
/// which the admission reserves ([`Shared::admit_commit`]). What is left
/// when the transaction ends is given back ([`Shared::release_page_copies`]).
#[derive(Debug, Default)]
pub(crate) struct PageCopyCharge {
    bytes: u64,
}

impl PageCopyCharge {
    /// Bytes charged now.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Rounds of waiting for room a write-buffer charge makes before it fails
/// (other threads may take the room between the wait and the charge).
const WRITE_BUFFER_CHARGE_ATTEMPTS_MAX: usize = 3;

/// `percent` of `bytes`.
fn share(bytes: u64, percent: u64) -> u64 {
    bytes / 100 * percent
}

impl Shared {
    /// Sweeps shards from the hand until `want_bytes` are freed or two
    /// revolutions found nothing more (the first may only clear bits).
    pub(crate) fn evict(&self, want_bytes: u64) -> Evicted {
        let mut total = Evicted::default();
        for _ in 0..2 * SHARD_COUNT {
            if total.bytes >= want_bytes {
                break;
            }
            let shard = self.evictor.hand.fetch_add(1, Ordering::Relaxed);
            let dirty = self.dirty.lock();
            let evicted = self
                .pages
                .evict_shard(shard, want_bytes - total.bytes, |id| {
                    dirty.contains_key(&id)
                });
            drop(dirty);
            total.pages += evicted.pages;
            total.bytes += evicted.bytes;
        }
        if total.pages > 0 {
            Metrics::bump(&self.metrics.evictions);
            Metrics::add(&self.metrics.pages_evicted, total.pages);
            Metrics::add(&self.metrics.bytes_evicted, total.bytes);
            self.memory.notify_freed();
        }
        total
    }

    /// Reserves `bytes` (in place of `transaction_bytes` already charged,
    /// see [`crate::memory::MemoryBudget::try_reserve_in_place_of`]),
    /// evicting directly when there is no room; `None` when even that
    /// leaves none.
    fn reserve_evicting(&self, bytes: u64, transaction_bytes: u64) -> Option<Reservation<'_>> {
        let resident = || self.pages.resident_bytes();
        let memory = &self.memory;
        if let Some(reservation) =
            memory.try_reserve_in_place_of(resident, bytes, transaction_bytes)
        {
            return Some(reservation);
        }
        let batch = share(self.memory.effective_bytes(), DIRECT_EVICT_MIN_PERCENT);
        self.evict(bytes.max(batch));
        memory.try_reserve_in_place_of(resident, bytes, transaction_bytes)
    }

    /// Charges one private page copy to `charge` before a page transaction
    /// makes it: like a table's write buffer ([`Shared::charge_write_buffer`]),
    /// evicting directly, then waiting for write-back (back-pressure); a
    /// transaction whose copies alone would pass the budget fails at once
    /// with [`Error::MemoryBudgetExceeded`]. Nothing is charged on failure.
    pub(crate) fn charge_page_copy(&self, charge: &mut PageCopyCharge) -> Result<()> {
        let cost = self.page_len() as u64 + PAGE_COPY_OVERHEAD_BYTES;
        self.charge_write_buffer(charge.bytes, cost)?;
        charge.bytes += cost;
        Ok(())
    }

    /// Gives back what `charge` still holds (the transaction ended).
    pub(crate) fn release_page_copies(&self, charge: &mut PageCopyCharge) {
        self.memory
            .release_transaction_bytes(std::mem::take(&mut charge.bytes));
    }

    /// Charges `bytes` of a transaction's write buffer against the budget,
    /// evicting directly and then, like a commit, waiting for write-back
    /// (back-pressure, at most `backpressure_max_wait_ms`).
    /// `own_bytes`: what this transaction's buffer already holds; a buffer
    /// that would pass the whole budget fails at once.
    pub(crate) fn charge_write_buffer(&self, own_bytes: u64, bytes: u64) -> Result<()> {
        let budget = self.memory.effective_bytes();
        let needed = own_bytes.saturating_add(bytes);
        if needed > budget {
            return Err(Error::MemoryBudgetExceeded {
                budget_bytes: budget,
                needed_bytes: needed,
            });
        }
        let resident = || self.pages.resident_bytes();
        if self.memory.try_charge_transaction_bytes(resident, bytes) {
            return Ok(());
        }
        for _ in 0..WRITE_BUFFER_CHARGE_ATTEMPTS_MAX {
            // Waits for room as a commit would, then takes it for the buffer.
            drop(self.reserve_for_commit(bytes, 0)?);
            if self.memory.try_charge_transaction_bytes(resident, bytes) {
                return Ok(());
            }
        }
        Err(Error::MemoryBudgetExceeded {
            budget_bytes: self.memory.effective_bytes(),
            needed_bytes: bytes,
        })
    }

    /// Puts a page just read from disk into the table, when the budget has
    /// room, and returns it as of `snapshot`. Without room the page is
    /// returned uncached (unless another thread put it in meanwhile, which
    /// then wins: it may hold versions the disk image does not).
    pub(crate) fn cache_loaded(
        &self,
        page_id: PageId,
        image: Arc<[u8]>,
        snapshot: CommitEpoch,
    ) -> Result<Arc<[u8]>> {
        let cost = PageTable::clean_entry_bytes(image.len());
        match self.reserve_evicting(cost, 0) {
            Some(_reservation) => self.pages.insert_clean_and_read(page_id, image, snapshot),
            None => {
                self.request_writeback();
                Ok(self.pages.read(page_id, snapshot)?.unwrap_or(image))
            }
        }
    }

    /// Admits a commit of `pages`: reserves the most its install can add,
    /// evicting directly, then asking the worker to write dirty pages back
    /// and waiting (back-pressure) for at most `backpressure_max_wait_ms`.
    /// The reservation takes the place of `copies`, the private page copies
    /// the transaction was charged for (they become the installed heads,
    /// which the reservation counts): admitted, `copies` holds nothing.
    /// Hold the room until the install is done.
    pub(crate) fn admit_commit(
        &self,
        pages: &[ChangedPage],
        copies: &mut PageCopyCharge,
    ) -> Result<CommitRoom<'_>> {
        let deltas = pages.iter().map(|page| &*page.delta);
        let (needed, pins) = self.pages.install_growth_bound(self.page_len(), deltas);
        let reservation = self.reserve_for_commit(needed, copies.bytes)?;
        copies.bytes = 0;
        Ok(CommitRoom {
            _reservation: reservation,
            _pins: pins,
        })
    }

    /// Reserves `needed` bytes for a commit (see [`Shared::admit_commit`]),
    /// in place of `transaction_bytes` the committing transaction holds.
    fn reserve_for_commit(&self, needed: u64, transaction_bytes: u64) -> Result<Reservation<'_>> {
        let budget = self.memory.effective_bytes();
        if needed > budget {
            return Err(Error::MemoryBudgetExceeded {
                budget_bytes: budget,
                needed_bytes: needed,
            });
        }
        if let Some(reservation) = self.reserve_evicting(needed, transaction_bytes) {
            return Ok(reservation);
        }
        let started = Instant::now();
        let deadline = started + self.evictor.max_wait;
        let outcome = loop {
            if self.evictor.inline_writeback {
                if let Err(err) = self.write_back_for_memory() {
                    break Err(err);
                }
            } else {
                self.request_writeback();
            }
            if let Some(reservation) = self.reserve_evicting(needed, transaction_bytes) {
                break Ok(reservation);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(Error::MemoryBudgetExceeded {
                    budget_bytes: self.memory.effective_bytes(),
                    needed_bytes: needed,
                });
            }
            let poll = Duration::from_millis(BACKPRESSURE_POLL_MS);
            self.memory.wait_for_room((deadline - now).min(poll));
        };
        Metrics::bump(&self.metrics.backpressure_waits);
        Metrics::add(
            &self.metrics.backpressure_wait_ns,
            started.elapsed().as_nanos() as u64,
        );
        outcome
    }

    /// Pages a checkpoint writes per double-write round: `default_pages`,
    /// fewer when that would pass [`CHECKPOINT_BUFFER_PERCENT`] of the budget
    /// (the round's sealed copies are held outside the page table).
    pub(crate) fn checkpoint_chunk_pages(&self, default_pages: usize) -> usize {
        let page_size = (self.page_len() + PAGE_TRAILER_LEN) as u64;
        let pages = share(self.memory.configured_bytes(), CHECKPOINT_BUFFER_PERCENT) / page_size;
        usize::try_from(pages)
            .unwrap_or(usize::MAX)
            .max(MIN_CHECKPOINT_CHUNK_PAGES)
            .min(default_pages)
            .max(1)
    }

    /// Asks the worker to write dirty pages back and wakes it.
    fn request_writeback(&self) {
        self.evictor
            .writeback_requested
            .store(true, Ordering::Relaxed);
        self.wake_worker();
    }

    /// Whether the worker should checkpoint to make dirty pages evictable:
    /// dirty pages pass [`DIRTY_WRITEBACK_PERCENT`] of the budget, or an
    /// admission asked (the request is consumed).
    pub(crate) fn writeback_due(&self) -> bool {
        let dirty_bytes = self.dirty.lock().len() as u64 * self.page_len() as u64;
        let requested = self
            .evictor
            .writeback_requested
            .swap(false, Ordering::Relaxed);
        requested || dirty_bytes >= share(self.memory.effective_bytes(), DIRTY_WRITEBACK_PERCENT)
    }

    /// The worker's memory pass: follows the machine's memory when asked
    /// to, then evicts down to the low watermark once past the high one.
    pub(crate) fn memory_pass(&self, sample_system: bool) {
        if sample_system && self.evictor.follows_system() {
            let effective = memory::effective_budget_bytes(
                self.memory.configured_bytes(),
                self.pages.resident_bytes(),
                memory::system_headroom_bytes(),
            );
            self.memory.set_effective_bytes(effective);
        }
        let budget = self.memory.effective_bytes();
        let resident = self.pages.resident_bytes();
        if resident > share(budget, EVICT_HIGH_WATERMARK_PERCENT) {
            self.evict(resident - share(budget, EVICT_LOW_WATERMARK_PERCENT));
        }
        self.memory.notify_freed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIN_MEMORY_BUDGET_BYTES;
    use crate::page_access::{PageRead, PageWrite};
    use crate::{Database, Options};
    use mmsb_wal::storage::MemStorage;

    fn small_db(workers: bool, max_wait_ms: u64) -> Database {
        Options {
            storage: Arc::new(MemStorage::new()),
            memory_budget_bytes: MIN_MEMORY_BUDGET_BYTES,
            backpressure_max_wait_ms: max_wait_ms,
            background_workers: workers,
            worker_interval_ms: 2,
            ..Options::default()
        }
        .open("/budget.mmsb")
        .unwrap()
    }

    /// The byte page `id` is filled with: never 0, so every page is a delta.
    fn pattern(id: PageId) -> u8 {
        (id.get() % 255) as u8 + 1
    }

    /// Allocates `count` pages in commits of `per_commit`, each filled with
    /// [`pattern`] of its id.
    fn fill(db: &Database, count: usize, per_commit: usize) -> Vec<PageId> {
        let mut ids = Vec::new();
        for _ in 0..count / per_commit {
            let mut tx = db.begin_page_write().unwrap();
            for _ in 0..per_commit {
                let id = tx.allocate_page().unwrap();
                tx.page_mut(id).unwrap().fill(pattern(id));
                ids.push(id);
            }
            tx.commit().unwrap();
        }
        ids
    }

    #[test]
    fn pages_beyond_the_budget_are_evicted_and_read_back_right() {
        let db = small_db(false, 100);
        // 4 MiB of pages under a 1 MiB budget.
        let ids = fill(&db, 1024, 16);
        let read = db.begin_page_read().unwrap();
        for id in &ids {
            let page = read.read_page(*id).unwrap();
            assert!(page.iter().all(|&b| b == pattern(*id)), "{id}");
        }
        let metrics = db.metrics();
        assert!(metrics.pages_evicted > 0, "{metrics:?}");
        assert!(
            metrics.peak_cache_bytes <= MIN_MEMORY_BUDGET_BYTES,
            "{metrics:?}"
        );
        assert_eq!(metrics.budget_bytes, MIN_MEMORY_BUDGET_BYTES);
    }

    #[test]
    fn a_page_transaction_copying_more_than_the_budget_fails_and_gives_back_its_charge() {
        let db = small_db(true, 100);
        let copy_bytes = db.page_len() as u64 + PAGE_COPY_OVERHEAD_BYTES;
        let mut tx = db.begin_page_write().unwrap();
        let mut refused = None;
        for copied in 0..300u64 {
            if let Err(err) = tx.allocate_page() {
                refused = Some((copied, err));
                break;
            }
            assert!(db.metrics().write_buffer_bytes >= copied * copy_bytes);
        }
        let (copied, err) = refused.expect("300 page copies under a 1 MiB budget are refused");
        match &err {
            Error::MemoryBudgetExceeded {
                budget_bytes,
                needed_bytes,
            } => {
                assert_eq!(*budget_bytes, MIN_MEMORY_BUDGET_BYTES);
                assert!(needed_bytes > budget_bytes);
            }
            other => panic!("expected MemoryBudgetExceeded, got {other:?}"),
        }
        assert!(err.to_string().contains("memory_budget_bytes"), "{err}");
        // Refused when the copies reached the budget: 1 MiB / 4176 B = 251.
        let most = MIN_MEMORY_BUDGET_BYTES / copy_bytes;
        assert!(
            (most - 8..=most).contains(&copied),
            "refused after {copied}"
        );
        assert!(db.metrics().write_buffer_bytes > 0);
        drop(tx);
        assert_eq!(db.metrics().write_buffer_bytes, 0, "charge given back");
        assert_eq!(
            db.begin_page_read().unwrap().page_count(),
            2,
            "nothing written"
        );
        // Smaller transactions commit, and their charge ends with the commit.
        assert_eq!(fill(&db, 4, 4).len(), 4);
        assert_eq!(db.metrics().write_buffer_bytes, 0);
        let mut tx = db.begin_page_write().unwrap();
        let id = tx.allocate_page().unwrap();
        tx.rollback();
        assert_eq!(db.metrics().write_buffer_bytes, 0, "rollback gives it back");
        assert!(db.begin_page_read().unwrap().page_count() <= id.get());
    }

    #[test]
    fn a_commit_admission_counts_the_page_copies_once() {
        // 64 new pages in one commit: copies 64 x 4176 B = 267 KB; the
        // install adds at most 64 x (160 + 2 x 4080 + 4192) = 801 KB. Counted twice that would
        // pass the 1 MiB budget; counted once it fits.
        let db = small_db(false, 100);
        let ids = fill(&db, 64, 64);
        assert_eq!(ids.len(), 64);
        let metrics = db.metrics();
        assert_eq!(metrics.write_buffer_bytes, 0, "{metrics:?}");
        assert_eq!(metrics.backpressure_waits, 0, "{metrics:?}");
        assert!(metrics.peak_cache_bytes <= MIN_MEMORY_BUDGET_BYTES);
        let read = db.begin_page_read().unwrap();
        for id in &ids {
            assert!(read
                .read_page(*id)
                .unwrap()
                .iter()
                .all(|&b| b == pattern(*id)));
        }
    }

    #[test]
    fn a_write_buffer_larger_than_the_budget_fails_at_the_write_and_gives_back_its_charge() {
        let db = small_db(true, 100);
        let value = vec![5u8; 4000];
        let mut tx = db.begin_write().unwrap();
        let mut table = tx.create_table("t").unwrap();
        let mut refused = None;
        for key in 0..1000u32 {
            if let Err(err) = table.insert(&key.to_be_bytes(), &value) {
                refused = Some((key, err));
                break;
            }
        }
        let (key, err) = refused.expect("a 4 MB buffer under a 1 MiB budget is refused");
        assert!(
            matches!(err, Error::MemoryBudgetExceeded { .. }),
            "expected MemoryBudgetExceeded, got {err:?}"
        );
        assert!(err.to_string().contains("memory_budget_bytes"), "{err}");
        // Refused before the buffer reached the budget: about 1 MiB / 4 KiB.
        assert!((100..=260).contains(&key), "refused at write {key}");
        assert!(db.metrics().write_buffer_bytes > 0);
        drop(tx);
        assert_eq!(db.metrics().write_buffer_bytes, 0, "charge given back");
        // Smaller transactions still go through and are charged while open.
        let mut tx = db.begin_write().unwrap();
        tx.create_table("t").unwrap().insert(b"k", &value).unwrap();
        assert!(db.metrics().write_buffer_bytes >= 4000);
        tx.commit().unwrap();
        assert_eq!(db.metrics().write_buffer_bytes, 0);
        let read = db.begin_read().unwrap();
        let got = read.open_table("t").unwrap().get(b"k").unwrap().unwrap();
        assert_eq!(&got[..], &value[..]);
    }

    #[test]
    fn a_pinned_snapshot_turns_into_backpressure_not_growth() {
        let db = small_db(true, 30);
        let ids = fill(&db, 64, 16);
        let reader = db.begin_page_read().unwrap();
        let mut refused = None;
        'rounds: for round in 0..200u32 {
            for chunk in ids.chunks(16) {
                let mut tx = db.begin_page_write().unwrap();
                // Back-pressure meets the page copies (at the write) or the
                // install (at the commit).
                let written = chunk.iter().try_for_each(|id| {
                    tx.write(*id, (round as usize * 8) % 4000, &round.to_le_bytes())
                });
                if let Err(err) = written.and_then(|()| tx.commit().map(drop)) {
                    refused = Some(err);
                    break 'rounds;
                }
            }
        }
        assert!(
            matches!(refused, Some(Error::MemoryBudgetExceeded { .. })),
            "{refused:?}"
        );
        for id in &ids {
            let page = reader.read_page(*id).unwrap();
            assert!(page.iter().all(|&b| b == pattern(*id)), "{id}");
        }
        let metrics = db.metrics();
        assert!(metrics.backpressure_waits > 0, "{metrics:?}");
        assert!(
            metrics.peak_cache_bytes <= MIN_MEMORY_BUDGET_BYTES,
            "{metrics:?}"
        );
        drop(reader);
        // Once the snapshot ends, its versions fold away and writes resume.
        let mut resumed = false;
        for _ in 0..100 {
            let mut tx = db.begin_page_write().unwrap();
            if tx.write(ids[0], 0, b"after").is_ok() && tx.commit().is_ok() {
                resumed = true;
                break;
            }
        }
        assert!(resumed, "{:?}", db.metrics());
    }

    #[test]
    fn shares_are_taken_of_the_budget() {
        assert_eq!(share(1000, 25), 250);
        assert_eq!(share(u64::MAX, 100), u64::MAX / 100 * 100);
    }
}
