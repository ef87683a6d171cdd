//! Huge pages under the page images: which 2 MiB regions of memory hold
//! page images, and asking the kernel, from a background worker, to back
//! each such region with one transparent huge page.
//!
//! Why: a read touches a page image it has not touched for a while (a
//! random point read misses the caches on its leaf anyway). With 4 KiB
//! pages the address translation misses too — on a virtual machine a TLB
//! miss walks two page tables — and the images of a million-entry tree
//! span some 60,000 of them. Backed by 2 MiB pages the same images need
//! about 120 TLB entries. Measured (docs/benchmarks.md, "Huge pages under
//! page images"): point reads of the 1M-entry comparison tree get faster
//! once the memory holding the images is backed by huge pages.
//!
//! How: the page table notes the address of every image it takes in
//! ([`HugePageAdvisor::note`], a compare with the last region noted and,
//! on a new region, an insert into a bounded set); the background worker calls
//! [`HugePageAdvisor::collapse_noted`], which asks the kernel to collapse
//! each region not yet collapsed (`madvise(MADV_COLLAPSE)`, Linux 6.1 and
//! later; it works whatever `/sys/kernel/mm/transparent_hugepage/enabled`
//! says, except `never`). The advice changes no byte of memory, so it is
//! safe on memory the allocator manages; it can back the allocator's
//! memory around the images too. A kernel without `MADV_COLLAPSE`, or
//! another OS, gets no advice (and no error): the first refusal of that
//! kind turns the advisor off.
//!
//! Costs: collapsing copies the region once into a fresh 2 MiB page (off
//! the commit path, in the worker); a region only partly in use becomes
//! 2 MiB of resident memory (at most one region's slack per collapsed
//! region: the images fill the rest). Regions whose huge page the kernel
//! later splits (the allocator handing memory back) are not advised again.
//!
//! This module knows nothing of pages, transactions or files: it sees
//! addresses.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Bytes of one transparent huge page (x86-64 and aarch64 with 4 KiB base
/// pages).
pub(crate) const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Distinct regions noted and not yet collapsed that the advisor keeps;
/// notes of further regions are dropped (a region is noted again by its
/// next image).
pub(crate) const NOTED_REGIONS_MAX: usize = 4096;

/// Regions one [`HugePageAdvisor::collapse_noted`] call advises at most,
/// so one worker pass stays short: a collapse copies 2 MiB and holds the
/// process's memory-map lock meanwhile, stalling other threads' page faults
/// (the stall per collapse is not measured here). The worker calls it only
/// while writes pause.
pub(crate) const COLLAPSES_PER_PASS_MAX: usize = 32;

/// Regions the advisor remembers as collapsed: 64 GiB of images; past it
/// the set is cleared (re-advising a collapsed region is a cheap no-op).
pub(crate) const COLLAPSED_REGIONS_MAX: usize = 32 * 1024;

/// Counters of the advisor.
#[derive(Debug, Default)]
pub(crate) struct HugePageStats {
    /// Regions the kernel collapsed (or found already huge).
    pub(crate) collapsed: AtomicU64,
    /// Regions the kernel could not collapse (no free huge page, a region
    /// not wholly mapped, memory locked by another user...).
    pub(crate) refused: AtomicU64,
}

/// Notes the regions page images live in and advises the kernel to back
/// them with huge pages. See the module documentation.
#[derive(Debug)]
pub(crate) struct HugePageAdvisor {
    /// Off by option, on a kernel without `MADV_COLLAPSE` or another OS.
    enabled: AtomicBool,
    /// The region noted last: consecutive images mostly share one.
    last_region: AtomicUsize,
    /// Distinct regions noted since the last pass, at most
    /// [`NOTED_REGIONS_MAX`]: a set, because images of scattered pages
    /// (random inserts) alternate between a few regions, and a list of
    /// every change of region would fill with repeats and drop the regions
    /// noted later.
    noted: Mutex<HashSet<usize>>,
    /// Regions advised already (only the worker touches it).
    collapsed: Mutex<HashSet<usize>>,
    stats: HugePageStats,
}

impl HugePageAdvisor {
    /// An advisor; `enabled` false makes every call a no-op.
    pub(crate) fn new(enabled: bool) -> Self {
        HugePageAdvisor {
            enabled: AtomicBool::new(enabled && advice_is_possible()),
            last_region: AtomicUsize::new(usize::MAX),
            noted: Mutex::new(HashSet::new()),
            collapsed: Mutex::new(HashSet::new()),
            stats: HugePageStats::default(),
        }
    }

    /// Whether advice is given.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The advisor's counters.
    pub(crate) fn stats(&self) -> &HugePageStats {
        &self.stats
    }

    /// Notes that `image` lives in memory: its regions are advised at the
    /// next [`HugePageAdvisor::collapse_noted`]. Cheap when the image lies
    /// in the region noted last.
    #[inline]
    pub(crate) fn note(&self, image: &[u8]) {
        if image.is_empty() || !self.is_enabled() {
            return;
        }
        let first = region_of(image.as_ptr() as usize);
        let last = region_of(image.as_ptr() as usize + (image.len() - 1));
        if self.last_region.swap(last, Ordering::Relaxed) == last && first == last {
            return;
        }
        let mut noted = self.noted.lock();
        for region in first..=last {
            if noted.len() >= NOTED_REGIONS_MAX {
                break;
            }
            noted.insert(region);
        }
    }

    /// Regions noted and waiting for the worker.
    #[cfg(test)]
    pub(crate) fn noted_len(&self) -> usize {
        self.noted.lock().len()
    }

    /// Advises the kernel to collapse every noted region not advised yet,
    /// at most [`COLLAPSES_PER_PASS_MAX`] of them; returns how many it
    /// advised. Runs in the background worker.
    pub(crate) fn collapse_noted(&self) -> usize {
        if !self.is_enabled() {
            return 0;
        }
        let batch = {
            let mut noted = self.noted.lock();
            if noted.is_empty() {
                return 0;
            }
            let mut batch: Vec<usize> = noted.drain().collect();
            batch.sort_unstable();
            batch
        };
        let mut collapsed = self.collapsed.lock();
        if collapsed.len() >= COLLAPSED_REGIONS_MAX {
            collapsed.clear();
        }
        let mut advised = 0;
        let mut rest = Vec::new();
        for region in batch {
            if collapsed.contains(&region) {
                continue;
            }
            if advised == COLLAPSES_PER_PASS_MAX {
                rest.push(region);
                continue;
            }
            advised += 1;
            match collapse(region) {
                Advice::Done => {
                    collapsed.insert(region);
                    self.stats.collapsed.fetch_add(1, Ordering::Relaxed);
                }
                Advice::Refused => {
                    // Not retried until an image there is noted again.
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                Advice::Unsupported => {
                    tracing::debug!("MADV_COLLAPSE unsupported: no huge-page advice");
                    self.enabled.store(false, Ordering::Relaxed);
                    return advised;
                }
            }
        }
        if !rest.is_empty() {
            let mut noted = self.noted.lock();
            let room = NOTED_REGIONS_MAX.saturating_sub(noted.len());
            noted.extend(rest.into_iter().take(room));
        }
        advised
    }
}

/// The index of the huge-page region holding `address`.
fn region_of(address: usize) -> usize {
    address / HUGE_PAGE_BYTES
}

/// What the kernel said to one collapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advice {
    /// The region is backed by a huge page now.
    Done,
    /// Not this time (no huge page free, a hole in the region...).
    Refused,
    /// The OS has no such advice.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Unsupported,
}

/// Whether this kernel knows the advice: the kernel checks the advice
/// before the range, so an empty range asks without touching memory.
#[cfg(target_os = "linux")]
fn advice_is_possible() -> bool {
    // SAFETY: an empty range: the call maps, unmaps and reads nothing.
    unsafe { libc::madvise(std::ptr::null_mut(), 0, MADV_COLLAPSE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advice_is_possible() -> bool {
    false
}

/// `MADV_COLLAPSE` from the kernel's `include/uapi/asm-generic/mman-common.h`
/// (Linux 6.1); not in every libc binding yet.
#[cfg(target_os = "linux")]
const MADV_COLLAPSE: libc::c_int = 25;

#[cfg(target_os = "linux")]
fn collapse(region: usize) -> Advice {
    let Some(start) = region.checked_mul(HUGE_PAGE_BYTES) else {
        return Advice::Refused;
    };
    // SAFETY: MADV_COLLAPSE changes how memory is mapped, never its
    // contents; on addresses this process does not map the kernel answers
    // ENOMEM and does nothing.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, HUGE_PAGE_BYTES, MADV_COLLAPSE) };
    if rc == 0 {
        Advice::Done
    } else {
        // EAGAIN/ENOMEM (no huge page, a hole in the region), EINVAL (a
        // region spanning a mapping that may not be huge): not this one.
        Advice::Refused
    }
}

#[cfg(not(target_os = "linux"))]
fn collapse(_region: usize) -> Advice {
    Advice::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_images_in_one_region_are_noted_once() {
        let advisor = HugePageAdvisor::new(true);
        if !advisor.is_enabled() {
            eprintln!("skipped: no huge-page advice on this OS");
            return;
        }
        let buffer = vec![7u8; 3 * HUGE_PAGE_BYTES];
        let base = buffer.as_ptr() as usize;
        let aligned = base.next_multiple_of(HUGE_PAGE_BYTES) - base;
        // Eight 4 KiB images in one region, then one straddling into the next.
        for i in 0..8 {
            advisor.note(&buffer[aligned + i * 4096..aligned + (i + 1) * 4096]);
        }
        assert_eq!(advisor.noted_len(), 1);
        let straddling = aligned + HUGE_PAGE_BYTES - 100;
        advisor.note(&buffer[straddling..straddling + 4096]);
        let first = (base + aligned) / HUGE_PAGE_BYTES;
        assert_eq!(*advisor.noted.lock(), HashSet::from([first, first + 1]));
    }

    #[test]
    fn images_alternating_between_regions_note_each_region_once() {
        let advisor = HugePageAdvisor::new(true);
        if !advisor.is_enabled() {
            eprintln!("skipped: no huge-page advice on this OS");
            return;
        }
        // Images of scattered pages: each note changes region, over and over
        // (a list of every change filled with repeats and dropped the rest).
        let fake = |region: usize| {
            let address = (region * 2 + 1) * HUGE_PAGE_BYTES;
            // SAFETY: never read: note looks at the address and length only.
            unsafe { std::slice::from_raw_parts(address as *const u8, 1) }
        };
        for round in 0..NOTED_REGIONS_MAX {
            advisor.note(fake(round % 3));
        }
        advisor.note(fake(7));
        assert_eq!(
            advisor.noted_len(),
            4,
            "three repeated regions and a later one"
        );
    }

    #[test]
    fn a_disabled_advisor_notes_nothing() {
        let advisor = HugePageAdvisor::new(false);
        advisor.note(&[1u8; 4096]);
        assert_eq!(advisor.noted_len(), 0);
        assert_eq!(advisor.collapse_noted(), 0);
    }

    #[test]
    fn notes_stop_at_the_limit() {
        let advisor = HugePageAdvisor::new(true);
        if !advisor.is_enabled() {
            eprintln!("skipped: no huge-page advice on this OS");
            return;
        }
        // Regions far apart, never mapped: noted, never dereferenced.
        for region in 0..NOTED_REGIONS_MAX + 10 {
            let address = (region * 2 + 1) * HUGE_PAGE_BYTES;
            // SAFETY: a slice over unmapped memory is never read here: note
            // looks at its address and length only.
            let fake = unsafe { std::slice::from_raw_parts(address as *const u8, 1) };
            advisor.note(fake);
        }
        assert_eq!(advisor.noted_len(), NOTED_REGIONS_MAX);
    }

    #[test]
    fn collapsing_changes_no_byte_and_counts_each_region_once() {
        let advisor = HugePageAdvisor::new(true);
        if !advisor.is_enabled() {
            eprintln!("skipped: no huge-page advice on this OS");
            return;
        }
        let mut buffer = vec![0u8; 4 * HUGE_PAGE_BYTES];
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        advisor.note(&buffer);
        let advised = advisor.collapse_noted();
        // The buffer spans 4 or 5 regions (the outer ones partly).
        assert!((4..=5).contains(&advised), "{advised}");
        let stats = advisor.stats();
        let collapsed = stats.collapsed.load(Ordering::Relaxed);
        let refused = stats.refused.load(Ordering::Relaxed);
        assert_eq!(collapsed + refused, advised as u64);
        eprintln!("collapsed {collapsed}, refused {refused}");
        assert!(buffer
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));
        // A second note of the same regions advises only the refused ones.
        advisor.last_region.store(usize::MAX, Ordering::Relaxed);
        advisor.note(&buffer);
        assert_eq!(advisor.collapse_noted() as u64, refused);
    }
}
