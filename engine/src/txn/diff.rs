//! The commit's page diff: the delta that turns the image a transaction
//! started from into its private copy, exactly as [`Delta::from_diff`]
//! builds it, found in a fraction of the time.
//!
//! A small write changes a few hundred bytes of a page (a leaf insert: the
//! header's counters, a stretch of the slot array, the new cell), so nearly
//! the whole page is equal. The scan skips equal [`DIFF_SPAN_BYTES`]-byte
//! spans and then [`DIFF_BLOCK_BYTES`]-byte blocks with one library
//! comparison each (vector compares, no byte loop) and looks at bytes only
//! inside *windows*: maximal stretches of
//! blocks that differ. Windows are separated by at least one equal block,
//! far more than [`DIFF_GAP_JOIN_LEN`] bytes, so no run of `from_diff` can
//! span two windows, and inside a window the runs are found with
//! `from_diff`'s own rule (changed spans closer than `DIFF_GAP_JOIN_LEN`
//! equal bytes share a run). The result is the same delta, byte for byte
//! (checked against `from_diff` by a property test).
//!
//! [`page_delta_in`] takes the windows from the ranges a writer noted
//! (`written`): the bytes outside them are equal by the writer's promise,
//! and noted ranges lie at least [`DIFF_GAP_JOIN_LEN`] bytes apart, so the
//! same rule inside them gives the same delta without reading the rest.

use std::ops::Range;

use mmsb_wal::delta::{DIFF_GAP_JOIN_LEN, MAX_PAGE_LEN};
use mmsb_wal::{Delta, DeltaRun, PageId};

use crate::error::Result;

/// Bytes compared at once while skipping equal stretches. Much longer than
/// [`DIFF_GAP_JOIN_LEN`] (see the module docs), short enough that a window
/// around a small change stays small.
pub(crate) const DIFF_BLOCK_BYTES: usize = 64;

/// Bytes skipped with one comparison while an equal stretch lasts; a span
/// that differs is then scanned block by block.
const DIFF_SPAN_BYTES: usize = 8 * DIFF_BLOCK_BYTES;

/// Runs reserved per noted window: a window usually holds one run, the
/// slot array of a leaf insert two or three (equal high bytes of shifted
/// slots split it).
const RUNS_PER_WINDOW_HINT: usize = 2;

/// Runs a whole-page diff makes room for up front (a new page: its
/// header, its slot array and its cells).
const WHOLE_PAGE_RUNS_HINT: usize = 8;

/// Bytes of the words the scan inside a window compares at once.
const WORD_BYTES: usize = 8;

/// Bytes [`run_end`] compares at once into one bit mask, before it goes
/// on word by word; one bit per byte of a `u32`.
const MASK_BLOCK_BYTES: usize = 32;

const _: () = assert!(MASK_BLOCK_BYTES == u32::BITS as usize);
const _: () = assert!(DIFF_GAP_JOIN_LEN <= MASK_BLOCK_BYTES);

const _: () = assert!(DIFF_BLOCK_BYTES > DIFF_GAP_JOIN_LEN);
// `run_end`: an equal stretch inside a word that differs (at most
// `WORD_BYTES - 2` bytes) is too short to end a run.
const _: () = assert!(DIFF_GAP_JOIN_LEN >= WORD_BYTES - 1);

/// The delta that turns `old` into `new` (two images of page `page_id`):
/// the same delta as [`Delta::from_diff`].
pub(crate) fn page_delta(page_id: PageId, old: &[u8], new: &[u8]) -> Result<Delta> {
    if old.len() != new.len() || new.len() > MAX_PAGE_LEN {
        // `from_diff` reports what is wrong.
        return Ok(Delta::from_diff(page_id, old, new)?);
    }
    let runs = ChangedRuns {
        old,
        new,
        pos: 0,
        window_end: 0,
        windows: None::<std::iter::Empty<(usize, usize)>>,
    };
    // The runs first, then the delta with exactly their room: a new page's
    // payload (a split's new half) does not regrow, a small change (the
    // meta page's counters) takes no more than it needs.
    let mut found: Vec<DeltaRun<'_>> = Vec::with_capacity(WHOLE_PAGE_RUNS_HINT);
    found.extend(runs);
    let payload: usize = found.iter().map(|run| run.bytes.len()).sum();
    let run_count = found.len();
    Ok(Delta::from_sorted_runs_reserved(
        page_id, found, run_count, payload,
    )?)
}

/// The delta that turns `old` into `new` when they differ only inside
/// `windows` (sorted, each at least [`DIFF_GAP_JOIN_LEN`] bytes before the
/// next, within the images): the same delta as [`page_delta`], reading
/// only the windows' bytes.
pub(crate) fn page_delta_in<I>(page_id: PageId, old: &[u8], new: &[u8], windows: I) -> Result<Delta>
where
    I: Iterator<Item = Range<usize>> + Clone,
{
    if old.len() != new.len() || new.len() > MAX_PAGE_LEN {
        return Ok(Delta::from_diff(page_id, old, new)?);
    }
    let windows = windows.map(|w| (w.start, w.end.min(new.len())));
    // The runs lie inside the windows: their bytes bound the payload.
    let payload_hint = windows.clone().map(|(s, e)| e.saturating_sub(s)).sum();
    let runs_hint = windows.clone().count() * RUNS_PER_WINDOW_HINT;
    let runs = ChangedRuns {
        old,
        new,
        pos: 0,
        window_end: 0,
        windows: Some(windows),
    };
    Ok(Delta::from_sorted_runs_reserved(
        page_id,
        runs,
        runs_hint,
        payload_hint,
    )?)
}

/// The runs of the diff of two equally long images, in offset order.
struct ChangedRuns<'a, W> {
    old: &'a [u8],
    new: &'a [u8],
    /// Where the search for the next run starts.
    pos: usize,
    /// End of the window being scanned (a block boundary, or the length);
    /// at or before `pos` when no window is open.
    window_end: usize,
    /// The windows to scan, when known (noted ranges); `None`: found by
    /// comparing blocks.
    windows: Option<W>,
}

impl<'a, W: Iterator<Item = (usize, usize)>> Iterator for ChangedRuns<'a, W> {
    type Item = DeltaRun<'a>;

    fn next(&mut self) -> Option<DeltaRun<'a>> {
        loop {
            if self.pos < self.window_end {
                if let Some(start) = first_difference(self.old, self.new, self.pos, self.window_end)
                {
                    let end = run_end(self.old, self.new, start, self.window_end);
                    self.pos = end;
                    debug_assert!(end > start && end <= self.new.len());
                    return Some(DeltaRun {
                        // Below MAX_PAGE_LEN (checked by `page_delta`).
                        offset: start as u32,
                        bytes: &self.new[start..end],
                    });
                }
                self.pos = self.window_end;
            }
            let (start, end) = match &mut self.windows {
                Some(windows) => windows.find(|&(start, end)| start < end)?,
                None => next_window(self.old, self.new, self.pos)?,
            };
            debug_assert!(start >= self.pos && end <= self.new.len());
            self.pos = start;
            self.window_end = end;
        }
    }
}

/// Whether the blocks of `old` and `new` at `at` are equal (`at` is a
/// block boundary; the last block may be short).
fn block_equal(old: &[u8], new: &[u8], at: usize) -> bool {
    let end = (at + DIFF_BLOCK_BYTES).min(new.len());
    match (
        <&[u8; DIFF_BLOCK_BYTES]>::try_from(&old[at..end]),
        <&[u8; DIFF_BLOCK_BYTES]>::try_from(&new[at..end]),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => old[at..end] == new[at..end],
    }
}

/// The next window at or after block boundary `from`: the first block that
/// differs and every differing block right after it, as `[start, end)`.
fn next_window(old: &[u8], new: &[u8], from: usize) -> Option<(usize, usize)> {
    let len = new.len();
    let mut start = from;
    // Long equal stretches a span at a time (one library compare), then
    // block by block up to the first difference.
    while start + DIFF_SPAN_BYTES <= len
        && old[start..start + DIFF_SPAN_BYTES] == new[start..start + DIFF_SPAN_BYTES]
    {
        start += DIFF_SPAN_BYTES;
    }
    while start < len && block_equal(old, new, start) {
        start += DIFF_BLOCK_BYTES;
    }
    if start >= len {
        return None;
    }
    let mut end = start + DIFF_BLOCK_BYTES;
    while end < len && !block_equal(old, new, end) {
        end += DIFF_BLOCK_BYTES;
    }
    Some((start, end.min(len)))
}

/// The run that starts at the difference at `start`: it ends at the first
/// equal byte that is not followed, within [`DIFF_GAP_JOIN_LEN`] bytes and
/// before `limit`, by another difference (the equal byte at `limit`, a
/// window's end, never is). That is the start of the first stretch of
/// equal bytes that is at least [`DIFF_GAP_JOIN_LEN`] long or reaches
/// `limit`; found [`MASK_BLOCK_BYTES`] bytes at a time while whole blocks
/// remain ([`run_end_blocks`]), then a word at a time, carrying the length
/// of the equal stretch that ends the previous block or word (a stretch
/// inside one word that differs somewhere is shorter than a word, so too
/// short to end the run).
fn run_end(old: &[u8], new: &[u8], start: usize, limit: usize) -> usize {
    // Equal bytes right before `pos` (fewer than DIFF_GAP_JOIN_LEN).
    let (mut pos, mut equal) = match run_end_blocks(old, new, start, limit) {
        BlockScan::End(end) => return end,
        BlockScan::Stopped { pos, equal } => (pos, equal),
    };
    let (old_words, _) = old[pos..limit].as_chunks::<WORD_BYTES>();
    let (new_words, _) = new[pos..limit].as_chunks::<WORD_BYTES>();
    for (a, b) in old_words.iter().zip(new_words) {
        let x = u64::from_le_bytes(*a) ^ u64::from_le_bytes(*b);
        if !has_zero_byte(x) {
            // Every byte differs (the common case inside a run).
            equal = 0;
        } else {
            // Equal bytes at the low (first) end of the word: all when x == 0.
            let low = (x.trailing_zeros() / 8) as usize;
            if equal + low >= DIFF_GAP_JOIN_LEN {
                return pos - equal;
            }
            equal = if x == 0 {
                equal + WORD_BYTES
            } else {
                (x.leading_zeros() / 8) as usize
            };
        }
        pos += WORD_BYTES;
    }
    while pos < limit {
        if old[pos] == new[pos] {
            equal += 1;
            if equal >= DIFF_GAP_JOIN_LEN {
                return pos + 1 - equal;
            }
        } else {
            equal = 0;
        }
        pos += 1;
    }
    limit - equal
}

/// Where [`run_end_blocks`] left off.
enum BlockScan {
    /// The run ends here.
    End(usize),
    /// No end in the whole blocks before `pos`; `equal` bytes right before
    /// `pos` are equal (fewer than [`DIFF_GAP_JOIN_LEN`]).
    Stopped { pos: usize, equal: usize },
}

/// [`run_end`] over the whole [`MASK_BLOCK_BYTES`]-byte blocks from
/// `start`: one bit per byte says "equal" (a mask the compiler builds with
/// vector compares), runs of [`DIFF_GAP_JOIN_LEN`] set bits are found with
/// a few shifts, and the equal bytes at a block's top carry into the next.
fn run_end_blocks(old: &[u8], new: &[u8], start: usize, limit: usize) -> BlockScan {
    let (old_blocks, _) = old[start..limit].as_chunks::<MASK_BLOCK_BYTES>();
    let (new_blocks, _) = new[start..limit].as_chunks::<MASK_BLOCK_BYTES>();
    let mut equal = 0usize;
    let mut pos = start;
    for (a, b) in old_blocks.iter().zip(new_blocks) {
        let mask = equal_mask(a, b);
        // Equal bytes at the block's low (first) end: all when every one is.
        let low = mask.trailing_ones() as usize;
        if equal + low >= DIFF_GAP_JOIN_LEN {
            return BlockScan::End(pos - equal);
        }
        let stretches = stretch_starts(mask);
        if stretches != 0 {
            return BlockScan::End(pos + stretches.trailing_zeros() as usize);
        }
        equal = mask.leading_ones() as usize;
        pos += MASK_BLOCK_BYTES;
    }
    BlockScan::Stopped { pos, equal }
}

/// Bit `i` set where byte `i` of `a` equals byte `i` of `b`: two SSE2
/// byte compares and their sign masks (SSE2 is part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn equal_mask(a: &[u8; MASK_BLOCK_BYTES], b: &[u8; MASK_BLOCK_BYTES]) -> u32 {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8};
    const HALF: usize = MASK_BLOCK_BYTES / 2;
    let (a_lo, a_hi) = a.split_at(HALF);
    let (b_lo, b_hi) = b.split_at(HALF);
    // SAFETY: each unaligned load reads 16 bytes of a 16-byte slice; SSE2
    // is enabled on every x86_64 target.
    let (lo, hi) = unsafe {
        let load = |half: &[u8]| _mm_loadu_si128(half.as_ptr().cast::<__m128i>());
        (
            _mm_movemask_epi8(_mm_cmpeq_epi8(load(a_lo), load(b_lo))),
            _mm_movemask_epi8(_mm_cmpeq_epi8(load(a_hi), load(b_hi))),
        )
    };
    // Each mask holds 16 bits in the low half of an i32.
    (lo as u32 & 0xffff) | ((hi as u32) << HALF)
}

/// Bit `i` set where byte `i` of `a` equals byte `i` of `b`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn equal_mask(a: &[u8; MASK_BLOCK_BYTES], b: &[u8; MASK_BLOCK_BYTES]) -> u32 {
    let mut mask = 0u32;
    for i in 0..MASK_BLOCK_BYTES {
        mask |= u32::from(a[i] == b[i]) << i;
    }
    mask
}

/// Bit `i` set where bits `i..i + DIFF_GAP_JOIN_LEN` of `mask` all are:
/// the starts of equal stretches long enough to end a run, inside the
/// block (bits past the top count as clear).
#[inline]
fn stretch_starts(mask: u32) -> u32 {
    let mut starts = mask;
    let mut have = 1;
    while have < DIFF_GAP_JOIN_LEN {
        let step = have.min(DIFF_GAP_JOIN_LEN - have);
        starts &= starts >> step;
        have += step;
    }
    starts
}

/// Whether some byte of `x` is zero (exact: a borrow only reaches bytes
/// above the lowest zero byte).
fn has_zero_byte(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Reads the little-endian word at `at` (a full word must fit).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; WORD_BYTES];
    word.copy_from_slice(&bytes[at..at + WORD_BYTES]);
    u64::from_le_bytes(word)
}

/// First index in `[from, limit)` where the images differ.
fn first_difference(old: &[u8], new: &[u8], from: usize, limit: usize) -> Option<usize> {
    let mut pos = from;
    while pos + WORD_BYTES <= limit {
        let x = word_at(old, pos) ^ word_at(new, pos);
        if x != 0 {
            return Some(pos + (x.trailing_zeros() / 8) as usize);
        }
        pos += WORD_BYTES;
    }
    (pos..limit).find(|&i| old[i] != new[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: PageId = PageId(9);

    fn check_same_as_from_diff(old: &[u8], new: &[u8]) {
        let fast = page_delta(PAGE, old, new).unwrap();
        let reference = Delta::from_diff(PAGE, old, new).unwrap();
        assert_eq!(fast, reference);
        let mut applied = old.to_vec();
        fast.apply(&mut applied).unwrap();
        assert_eq!(applied, new);
    }

    #[test]
    fn stretch_starts_marks_long_enough_equal_stretches() {
        assert_eq!(stretch_starts(0), 0);
        assert_eq!(
            stretch_starts(u32::MAX),
            u32::MAX >> (DIFF_GAP_JOIN_LEN - 1)
        );
        let stretch = ((1u32 << DIFF_GAP_JOIN_LEN) - 1) << 5;
        assert_eq!(stretch_starts(stretch), 1 << 5);
        assert_eq!(stretch_starts((stretch >> 1) & stretch), 0, "one short");
        let mut a = [0u8; MASK_BLOCK_BYTES];
        let b = [0u8; MASK_BLOCK_BYTES];
        a[3] = 1;
        a[31] = 9;
        assert_eq!(equal_mask(&a, &b), !((1 << 3) | (1 << 31)));
    }

    #[test]
    fn equal_pages_give_an_empty_delta() {
        let page = vec![7u8; 4080];
        assert!(page_delta(PAGE, &page, &page).unwrap().is_empty());
    }

    #[test]
    fn a_leaf_insert_gives_the_header_slot_and_cell_runs() {
        let old = vec![0u8; 4080];
        let mut new = old.clone();
        new[4..8].copy_from_slice(&[1, 0, 0x20, 0x0f]);
        new[16..18].copy_from_slice(&[0x20, 0x0f]);
        new[3872..4080].fill(0xab);
        let delta = page_delta(PAGE, &old, &new).unwrap();
        let runs: Vec<(u32, usize)> = delta.runs().map(|r| (r.offset, r.bytes.len())).collect();
        // The header and slot changes are 8 equal bytes apart: two runs.
        assert_eq!(runs, vec![(4, 4), (16, 2), (3872, 208)]);
        check_same_as_from_diff(&old, &new);
    }

    #[test]
    fn changes_at_block_edges_and_the_short_last_block() {
        let old = vec![0u8; 4080];
        for at in [0, 63, 64, 127, 4031, 4032, 4079] {
            let mut new = old.clone();
            new[at] = 1;
            check_same_as_from_diff(&old, &new);
        }
        // Spans 7 and 8 equal bytes apart across a block edge.
        let mut new = old.clone();
        new[60] = 1;
        new[68] = 1;
        new[120] = 1;
        new[129] = 1;
        check_same_as_from_diff(&old, &new);
    }

    #[test]
    fn images_of_different_lengths_are_refused() {
        assert!(page_delta(PAGE, &[0u8; 64], &[0u8; 65]).is_err());
    }

    proptest! {
        /// Diffing only the noted ranges of the edits gives the whole-page
        /// delta (the writer's promise: nothing changed outside them).
        #[test]
        fn noted_windows_give_the_whole_page_delta(
            len in 64usize..1200,
            seed in any::<u8>(),
            edits in prop::collection::vec((0usize..1200, 1usize..40, any::<u8>()), 0..6),
        ) {
            let old: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed) % 3).collect();
            let mut new = old.clone();
            let mut written = super::super::WrittenRanges::default();
            for (at, n, byte) in edits {
                let at = at % len;
                let end = (at + n).min(len);
                for (i, b) in new[at..end].iter_mut().enumerate() {
                    *b = if i % 5 == 4 { *b } else { byte.wrapping_add(i as u8) };
                }
                written.note(at..end);
            }
            let whole = page_delta(PAGE, &old, &new).unwrap();
            let noted = written
                .ranges()
                .map(|ranges| page_delta_in(PAGE, &old, &new, ranges).unwrap());
            prop_assert_eq!(noted.is_none(), written.is_whole());
            if let Some(noted) = noted {
                prop_assert_eq!(noted, whole);
            }
        }

        /// Two-letter images: equal stretches of every length at every
        /// offset of a word, where a run ends or two runs join.
        #[test]
        fn runs_end_where_from_diff_ends_them(
            len in 1usize..600,
            old_bits in prop::collection::vec(any::<bool>(), 600),
            flips in prop::collection::vec(0u8..4, 600),
        ) {
            let old: Vec<u8> = old_bits[..len].iter().map(|&b| u8::from(b)).collect();
            // A quarter of the bytes change: stretches of 0 to ~20 equal bytes.
            let new: Vec<u8> = old
                .iter()
                .zip(&flips)
                .map(|(&b, &f)| if f == 0 { b ^ 1 } else { b })
                .collect();
            check_same_as_from_diff(&old, &new);
            let whole = std::iter::once(0..len);
            prop_assert_eq!(
                page_delta_in(PAGE, &old, &new, whole).unwrap(),
                Delta::from_diff(PAGE, &old, &new).unwrap()
            );
        }

        /// Long runs broken by equal stretches of every length around
        /// the join distance, at every offset of a mask block: the block
        /// scan, its carry and the word tail end runs where `from_diff` does.
        #[test]
        fn long_runs_end_where_from_diff_ends_them(
            pieces in prop::collection::vec((0usize..80, 0usize..14), 1..24),
            lead in 0usize..40,
        ) {
            let mut old = vec![0u8; lead];
            let mut new = vec![0u8; lead];
            for (i, &(differ, same)) in pieces.iter().enumerate() {
                for k in 0..differ {
                    old.push(k as u8);
                    new.push((k as u8).wrapping_add(1 + i as u8));
                }
                old.extend(std::iter::repeat_n(7u8, same));
                new.extend(std::iter::repeat_n(7u8, same));
            }
            check_same_as_from_diff(&old, &new);
            let whole = std::iter::once(0..new.len());
            prop_assert_eq!(
                page_delta_in(PAGE, &old, &new, whole).unwrap(),
                Delta::from_diff(PAGE, &old, &new).unwrap()
            );
        }

        #[test]
        fn the_delta_is_the_one_from_diff_builds(
            len in 1usize..1200,
            seed in any::<u64>(),
            edits in prop::collection::vec((0usize..1200, 1usize..40, any::<u8>()), 0..12),
        ) {
            let mut state = seed | 1;
            let old: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 3) as u8
                })
                .collect();
            let mut new = old.clone();
            for (at, n, byte) in edits {
                let at = at % len;
                let end = (at + n).min(len);
                for (i, b) in new[at..end].iter_mut().enumerate() {
                    // Some edits write what is already there (equal bytes
                    // inside a changed stretch).
                    *b = if i % 5 == 4 { *b } else { byte.wrapping_add(i as u8) };
                }
            }
            check_same_as_from_diff(&old, &new);
        }
    }
}
