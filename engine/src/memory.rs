//! The memory budget: the configured and the effective budget, admission of
//! growth against it (reservations), and the machine's memory pressure read
//! from cgroup (v2 `memory.max`/`memory.current`, v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`) and `/proc/meminfo`
//! (`MemAvailable`).
//!
//! Admission: whoever is about to grow the page table (a page load, a
//! commit) first reserves the most it can add. A reservation succeeds when
//! `resident + reserved + bytes <= effective budget`, checked and recorded
//! under one lock, and is released once the growth is in `resident`. Growth
//! never exceeds its reservation, so `resident` never passes the budget.
//!
//! Resident set: [`BoundedMapReads`] wraps the data file so that reads of
//! its first [`MAP_BUDGET_PERCENT`]% of the budget's bytes go through the
//! memory map (the fast path: no system call once a page is mapped) and
//! reads past them use `pread`. Bytes read through a map stay in the
//! process's RSS (`RssFile`) until the kernel reclaims them, which would put
//! every page ever read on top of the budget; bytes read with `pread` are
//! copied into the page table's own buffer, which the budget counts. So the
//! map adds at most that share of the budget to the RSS, and a database
//! smaller than it reads exactly as before (see `benches/eviction.rs`,
//! group `page_load`, for the two costs).
//!
//! This module knows nothing of pages or transactions.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mmsb_wal::storage::StorageFile;
use parking_lot::{Condvar, Mutex};

/// Floor of the default `Options::memory_budget_bytes` (see
/// [`default_memory_budget_bytes`]): 1 GiB, far above what the repository's
/// benchmarks hold, so they never meet the budget.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 1 << 30;

/// Share of the machine's memory (`MemTotal`) the default budget takes when
/// that is more than [`DEFAULT_MEMORY_BUDGET_BYTES`].
pub(crate) const DEFAULT_BUDGET_MEMORY_PERCENT: u64 = 25;

/// The default `Options::memory_budget_bytes`: a quarter of the machine's
/// memory, at least [`DEFAULT_MEMORY_BUDGET_BYTES`] (also when `/proc` cannot
/// be read). Read once per process.
pub fn default_memory_budget_bytes() -> u64 {
    static DEFAULT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_meminfo_bytes(&text, "MemTotal"))
            .unwrap_or(0);
        (total / 100 * DEFAULT_BUDGET_MEMORY_PERCENT).max(DEFAULT_MEMORY_BUDGET_BYTES)
    })
}

/// Smallest budget accepted (and the floor machine pressure may lower the
/// effective budget to): 1 MiB, 256 pages of 4 KiB.
pub const MIN_MEMORY_BUDGET_BYTES: u64 = 1 << 20;

/// Share of the budget the data file's memory map may add to the RSS.
pub(crate) const MAP_BUDGET_PERCENT: u64 = 25;

/// Memory left to the rest of the machine when machine pressure lowers the
/// effective budget: 64 MiB.
pub(crate) const SYSTEM_RESERVE_BYTES: u64 = 64 << 20;

/// The budget and the outstanding reservations against it.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    configured_bytes: u64,
    /// The configured budget, lowered while the machine is short of memory.
    effective_bytes: AtomicU64,
    /// Bytes reserved and not yet released; the lock also serialises admission.
    reserved_bytes: Mutex<u64>,
    /// Bytes held by the write buffers of open transactions (changed only
    /// under the `reserved_bytes` lock, read by admission under it too).
    transaction_bytes: AtomicU64,
    /// Signalled when reservations are released or memory is freed.
    freed: Condvar,
}

/// Room reserved under the budget; released when dropped.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.budget.reserved_bytes.lock();
        debug_assert!(*reserved >= self.bytes, "reservation released twice");
        *reserved = reserved.saturating_sub(self.bytes);
        drop(reserved);
        self.budget.freed.notify_all();
    }
}

impl MemoryBudget {
    /// A budget of `configured_bytes` (at least [`MIN_MEMORY_BUDGET_BYTES`]).
    pub(crate) fn new(configured_bytes: u64) -> Self {
        let configured_bytes = configured_bytes.max(MIN_MEMORY_BUDGET_BYTES);
        MemoryBudget {
            configured_bytes,
            effective_bytes: AtomicU64::new(configured_bytes),
            reserved_bytes: Mutex::new(0),
            transaction_bytes: AtomicU64::new(0),
            freed: Condvar::new(),
        }
    }

    /// The budget the database was opened with.
    pub(crate) fn configured_bytes(&self) -> u64 {
        self.configured_bytes
    }

    /// The budget in force now.
    pub(crate) fn effective_bytes(&self) -> u64 {
        self.effective_bytes.load(Ordering::Relaxed)
    }

    /// Sets the budget in force, clamped to `[MIN_MEMORY_BUDGET_BYTES, configured]`.
    pub(crate) fn set_effective_bytes(&self, bytes: u64) {
        let bytes = bytes.clamp(MIN_MEMORY_BUDGET_BYTES, self.configured_bytes);
        self.effective_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes reserved and not yet released.
    #[cfg(test)]
    pub(crate) fn reserved_bytes(&self) -> u64 {
        *self.reserved_bytes.lock()
    }

    /// Reserves `bytes` when `resident() + reserved + bytes` fits the budget.
    /// `resident` is read under the admission lock, so a growth whose
    /// reservation is still held is counted at least once.
    #[cfg(test)]
    pub(crate) fn try_reserve(
        &self,
        resident: impl FnOnce() -> u64,
        bytes: u64,
    ) -> Option<Reservation<'_>> {
        self.try_reserve_in_place_of(resident, bytes, 0)
    }

    /// Reserves `bytes` when `resident() + reserved + transaction bytes -
    /// transaction_bytes + bytes` fits the budget (`resident` read under the
    /// admission lock, so a growth whose reservation is still held is
    /// counted at least once). `transaction_bytes`: bytes already charged to
    /// the transaction this growth comes from (a page transaction's private
    /// copies, which its commit installs); they are left out of the check
    /// and, when the reservation is made, given back under the same lock, so
    /// they are counted once, and never not at all. On failure nothing changes.
    pub(crate) fn try_reserve_in_place_of(
        &self,
        resident: impl FnOnce() -> u64,
        bytes: u64,
        transaction_bytes: u64,
    ) -> Option<Reservation<'_>> {
        let mut reserved = self.reserved_bytes.lock();
        let held = self.transaction_bytes.load(Ordering::Relaxed);
        debug_assert!(held >= transaction_bytes, "more handed over than charged");
        let others = held.saturating_sub(transaction_bytes);
        let total = resident()
            .saturating_add(*reserved)
            .saturating_add(others)
            .saturating_add(bytes);
        if total > self.effective_bytes() {
            return None;
        }
        *reserved += bytes;
        self.transaction_bytes.store(others, Ordering::Relaxed);
        Some(Reservation {
            budget: self,
            bytes,
        })
    }

    /// Charges `bytes` of a transaction's write buffer when
    /// `resident() + reserved + transaction bytes + bytes` fits the budget;
    /// `false` (nothing charged) otherwise. Undone by
    /// [`MemoryBudget::release_transaction_bytes`].
    pub(crate) fn try_charge_transaction_bytes(
        &self,
        resident: impl FnOnce() -> u64,
        bytes: u64,
    ) -> bool {
        let reserved = self.reserved_bytes.lock();
        let held = self.transaction_bytes.load(Ordering::Relaxed);
        let total = resident()
            .saturating_add(*reserved)
            .saturating_add(held)
            .saturating_add(bytes);
        if total > self.effective_bytes() {
            return false;
        }
        self.transaction_bytes
            .store(held + bytes, Ordering::Relaxed);
        true
    }

    /// Gives back `bytes` a transaction's write buffer was charged.
    pub(crate) fn release_transaction_bytes(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let reserved = self.reserved_bytes.lock();
        let held = self.transaction_bytes.load(Ordering::Relaxed);
        debug_assert!(held >= bytes, "write buffer bytes released twice");
        self.transaction_bytes
            .store(held.saturating_sub(bytes), Ordering::Relaxed);
        drop(reserved);
        self.freed.notify_all();
    }

    /// Bytes held by the write buffers of open transactions.
    pub(crate) fn transaction_bytes(&self) -> u64 {
        self.transaction_bytes.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for memory to be freed (or a reservation released).
    pub(crate) fn wait_for_room(&self, timeout: Duration) {
        let mut reserved = self.reserved_bytes.lock();
        self.freed.wait_for(&mut reserved, timeout);
    }

    /// Wakes every thread waiting for room.
    pub(crate) fn notify_freed(&self) {
        self.freed.notify_all();
    }
}

/// A file whose reads go through the memory map only below `map_limit_bytes`
/// (see the module docs); everything else passes through to the wrapped file.
#[derive(Debug)]
pub(crate) struct BoundedMapReads {
    inner: Arc<dyn StorageFile>,
    map_limit_bytes: u64,
}

impl BoundedMapReads {
    /// Wraps `inner` for a database with a budget of `budget_bytes`.
    pub(crate) fn new(inner: Arc<dyn StorageFile>, budget_bytes: u64) -> Self {
        BoundedMapReads {
            inner,
            map_limit_bytes: budget_bytes / 100 * MAP_BUDGET_PERCENT,
        }
    }
}

impl StorageFile for BoundedMapReads {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end <= self.map_limit_bytes {
            self.inner.read_exact_at(buf, offset)
        } else {
            self.inner.read_exact_at_unmapped(buf, offset)
        }
    }

    fn read_exact_at_unmapped(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at_unmapped(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
}

/// Value of `MemAvailable` in `/proc/meminfo` text, in bytes.
pub(crate) fn parse_meminfo_available_bytes(text: &str) -> Option<u64> {
    parse_meminfo_bytes(text, "MemAvailable")
}

/// Value of `field` in `/proc/meminfo` text, in bytes.
fn parse_meminfo_bytes(text: &str, field: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(multiplier)
}

/// A cgroup memory file (`memory.max`, `memory.current`, v1's
/// `memory.limit_in_bytes`): a byte count, or `None` for `max` (no limit),
/// for v1's "unlimited" (a value near `i64::MAX`) and for malformed text.
pub(crate) fn parse_cgroup_bytes(text: &str) -> Option<u64> {
    /// v1 reports "no limit" as `PAGE_COUNTER_MAX` pages: about 2^63 bytes.
    const UNLIMITED_FLOOR_BYTES: u64 = 1 << 62;
    let value: u64 = text.trim().parse().ok()?;
    (value < UNLIMITED_FLOOR_BYTES).then_some(value)
}

/// Free room under a cgroup limit: `limit - usage`, `None` without a limit.
fn cgroup_headroom_bytes(root: &Path) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).ok();
    let pairs = [
        ("memory.max", "memory.current"),
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
        ),
    ];
    pairs.iter().find_map(|(limit, usage)| {
        let limit = parse_cgroup_bytes(&read(limit)?)?;
        let usage = parse_cgroup_bytes(&read(usage)?)?;
        Some(limit.saturating_sub(usage))
    })
}

/// How much more memory this process may take before the machine (or its
/// cgroup) runs short: the smaller of `MemAvailable` and the cgroup's free
/// room. `None` when neither can be read (not Linux, no `/proc`).
pub(crate) fn system_headroom_bytes() -> Option<u64> {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_available_bytes(&text));
    let cgroup = cgroup_headroom_bytes(Path::new("/sys/fs/cgroup"));
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// The budget in force given the machine's headroom: what the engine holds
/// plus what it may still take, less [`SYSTEM_RESERVE_BYTES`], never above
/// the configured budget nor below [`MIN_MEMORY_BUDGET_BYTES`].
pub(crate) fn effective_budget_bytes(
    configured_bytes: u64,
    resident_bytes: u64,
    headroom_bytes: Option<u64>,
) -> u64 {
    let Some(headroom) = headroom_bytes else {
        return configured_bytes;
    };
    let room = resident_bytes.saturating_add(headroom.saturating_sub(SYSTEM_RESERVE_BYTES));
    room.clamp(
        MIN_MEMORY_BUDGET_BYTES,
        configured_bytes.max(MIN_MEMORY_BUDGET_BYTES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16384000 kB\n\
                           MemFree:         1000000 kB\n\
                           MemAvailable:    8000000 kB\n\
                           Buffers:          100000 kB\n";

    #[test]
    fn meminfo_available_is_read_in_bytes() {
        assert_eq!(
            parse_meminfo_available_bytes(MEMINFO),
            Some(8_000_000 * 1024)
        );
    }

    #[test]
    fn meminfo_total_is_read_and_the_default_budget_has_its_floor() {
        assert_eq!(
            parse_meminfo_bytes(MEMINFO, "MemTotal"),
            Some(16_384_000 * 1024)
        );
        assert_eq!(
            parse_meminfo_bytes(MEMINFO, "Mem"),
            None,
            "whole names only"
        );
        assert!(default_memory_budget_bytes() >= DEFAULT_MEMORY_BUDGET_BYTES);
    }

    #[test]
    fn meminfo_without_available_or_with_garbage_is_none() {
        assert_eq!(parse_meminfo_available_bytes("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_meminfo_available_bytes("MemAvailable: x kB\n"), None);
        assert_eq!(parse_meminfo_available_bytes("MemAvailable: 5 MB\n"), None);
        assert_eq!(
            parse_meminfo_available_bytes("MemAvailable: 18446744073709551615 kB\n"),
            None,
            "overflow is refused, not wrapped"
        );
    }

    #[test]
    fn cgroup_files_parse_limits_and_no_limit() {
        assert_eq!(parse_cgroup_bytes("536870912\n"), Some(512 << 20));
        assert_eq!(parse_cgroup_bytes("max\n"), None);
        assert_eq!(
            parse_cgroup_bytes("9223372036854771712\n"),
            None,
            "v1 unlimited"
        );
        assert_eq!(parse_cgroup_bytes(""), None);
        assert_eq!(parse_cgroup_bytes("-1"), None);
    }

    #[test]
    fn cgroup_headroom_is_limit_minus_usage() {
        let dir = std::env::temp_dir().join(format!("mmsb-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), "1000000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "250000\n").unwrap();
        assert_eq!(cgroup_headroom_bytes(&dir), Some(750_000));
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_headroom_bytes(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn effective_budget_follows_headroom_within_bounds() {
        let gib = 1u64 << 30;
        assert_eq!(effective_budget_bytes(gib, 0, None), gib);
        assert_eq!(effective_budget_bytes(gib, 0, Some(8 * gib)), gib);
        let tight = effective_budget_bytes(gib, 100 << 20, Some(164 << 20));
        assert_eq!(tight, 200 << 20);
        assert_eq!(
            effective_budget_bytes(gib, 0, Some(0)),
            MIN_MEMORY_BUDGET_BYTES
        );
    }

    #[test]
    fn write_buffers_and_reservations_share_the_budget() {
        let budget = MemoryBudget::new(8 << 20);
        assert!(budget.try_charge_transaction_bytes(|| 2 << 20, 4 << 20));
        assert_eq!(budget.transaction_bytes(), 4 << 20);
        assert!(
            budget.try_reserve(|| 2 << 20, 3 << 20).is_none(),
            "2 resident + 4 buffered + 3 > 8"
        );
        assert!(!budget.try_charge_transaction_bytes(|| 2 << 20, 3 << 20));
        budget.release_transaction_bytes(4 << 20);
        assert_eq!(budget.transaction_bytes(), 0);
        assert!(budget.try_reserve(|| 2 << 20, 3 << 20).is_some());
    }

    #[test]
    fn a_reservation_in_place_of_transaction_bytes_counts_them_once() {
        let budget = MemoryBudget::new(8 << 20);
        assert!(budget.try_charge_transaction_bytes(|| 1 << 20, 4 << 20));
        // 1 resident + 4 charged + 5 asked > 8, but 4 of the 5 replace the charge.
        assert!(budget.try_reserve(|| 1 << 20, 5 << 20).is_none());
        assert!(
            budget
                .try_reserve_in_place_of(|| 1 << 20, 8 << 20, 4 << 20)
                .is_none(),
            "1 + 8 > 8 even without the charge"
        );
        assert_eq!(
            budget.transaction_bytes(),
            4 << 20,
            "a failure changes nothing"
        );
        let room = budget.try_reserve_in_place_of(|| 1 << 20, 5 << 20, 4 << 20);
        assert!(room.is_some());
        assert_eq!(
            budget.transaction_bytes(),
            0,
            "the charge became the reservation"
        );
        assert_eq!(budget.reserved_bytes(), 5 << 20);
        drop(room);
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[test]
    fn reservations_never_pass_the_budget() {
        let budget = MemoryBudget::new(4 << 20);
        let first = budget.try_reserve(|| 1 << 20, 2 << 20);
        assert!(first.is_some());
        assert!(budget.try_reserve(|| 1 << 20, 2 << 20).is_none());
        assert_eq!(budget.reserved_bytes(), 2 << 20);
        drop(first);
        assert_eq!(budget.reserved_bytes(), 0);
        assert!(budget.try_reserve(|| 1 << 20, 3 << 20).is_some());
    }

    /// Counts which read path each read took.
    #[derive(Debug, Default)]
    struct Paths {
        mapped: AtomicU64,
        unmapped: AtomicU64,
    }

    impl StorageFile for Paths {
        fn read_exact_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            self.mapped.fetch_add(1, Ordering::Relaxed);
            buf.fill(1);
            Ok(())
        }
        fn read_exact_at_unmapped(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            self.unmapped.fetch_add(1, Ordering::Relaxed);
            buf.fill(2);
            Ok(())
        }
        fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(u64::MAX)
        }
        fn set_len(&self, _len: u64) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_the_first_share_of_the_budget_is_read_through_the_map() {
        let paths = Arc::new(Paths::default());
        let file = BoundedMapReads::new(paths.clone(), 4 << 20);
        let limit = (4 << 20) / 100 * MAP_BUDGET_PERCENT;
        let mut page = [0u8; 4096];
        file.read_exact_at(&mut page, 0).unwrap();
        assert_eq!(page[0], 1);
        file.read_exact_at(&mut page, limit - 4096).unwrap();
        file.read_exact_at(&mut page, limit - 4095).unwrap();
        assert_eq!(page[0], 2);
        file.read_exact_at(&mut page, u64::MAX - 10).unwrap();
        assert_eq!(paths.mapped.load(Ordering::Relaxed), 2);
        assert_eq!(paths.unmapped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_lower_effective_budget_is_clamped() {
        let budget = MemoryBudget::new(64 << 20);
        budget.set_effective_bytes(1);
        assert_eq!(budget.effective_bytes(), MIN_MEMORY_BUDGET_BYTES);
        budget.set_effective_bytes(u64::MAX);
        assert_eq!(budget.effective_bytes(), 64 << 20);
        assert_eq!(budget.configured_bytes(), 64 << 20);
    }
}
