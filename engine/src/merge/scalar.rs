//! The scalar merge kernel: one byte loaded and one byte stored per step.
//!
//! This is the portable fallback and the baseline the SIMD paths are measured
//! against, so it must stay honestly scalar. Left alone, LLVM would turn a
//! byte-copy loop into a `memcpy` call (loop-idiom recognition) or vectorize
//! it, and the "scalar" numbers would really be libc's SIMD `memcpy`. Each
//! store is therefore a `write_volatile`: LLVM may neither merge, widen,
//! reorder nor drop volatile accesses, so the loop compiles to one `movzx`
//! load and one `mov byte` store per byte. The loads stay ordinary and
//! volatile adds no fences, so this is exactly the plain byte loop the source
//! says, nothing slower and nothing faster. `apply_runs` is
//! `#[inline(never)]` so its machine code can be inspected on its own
//! (`objdump -d --no-show-raw-insn <bench binary> | grep -A40 scalar..apply_runs`).

use std::ptr;

use mmsb_wal::Delta;

/// Writes every run of `delta` into `page` a byte at a time.
///
/// The caller has checked `delta.extent() <= page.len()`; a run past the page
/// would hit a slice bounds check, never memory outside the page.
#[inline(never)]
pub(super) fn apply_runs(page: &mut [u8], delta: &Delta) {
    for run in delta.runs() {
        copy_bytes(&mut page[run.offset as usize..run.end()], run.bytes);
    }
}

/// Copies `src` into `dst` (equal lengths) one byte per iteration.
#[inline(always)]
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    for (out, &byte) in dst.iter_mut().zip(src) {
        // SAFETY: `out` is a live `&mut u8`, so the pointer is valid, aligned
        // and exclusive for a one-byte write. Volatile only stops the compiler
        // from widening the loop; it has no other effect on ordinary memory.
        unsafe { ptr::write_volatile(out, byte) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_wal::{DeltaRun, PageId};

    #[test]
    fn copies_exactly_the_runs() {
        let delta = Delta::from_sorted_runs(
            PageId(3),
            [
                DeltaRun {
                    offset: 1,
                    bytes: &[9, 8],
                },
                DeltaRun {
                    offset: 6,
                    bytes: &[7],
                },
            ],
        )
        .unwrap();
        let mut page = [0u8; 8];
        apply_runs(&mut page, &delta);
        assert_eq!(page, [0, 9, 8, 0, 0, 0, 7, 0]);
    }
}
