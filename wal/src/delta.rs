//! The page delta: a sparse, byte-level change to one page.
//!
//! A [`Delta`] is a sorted list of non-overlapping, non-adjacent runs, each an
//! offset into the page and the bytes that replace what was there. Applying a
//! delta costs time in proportion to the bytes it changes, never to the page
//! size. Merging two deltas of one page gives one delta equal to applying both
//! in epoch order: the later delta wins on every byte both touch.
//!
//! This module knows nothing about how deltas are encoded in the TLog (see
//! `codec`) nor about pages beyond their length.

use crate::ids::PageId;

/// Largest page a delta may address: 64 KiB, the largest page size mmsb supports.
pub const MAX_PAGE_LEN: usize = 64 * 1024;

/// Equal bytes shorter than this between two changed spans are folded into one
/// run by [`Delta::from_diff`]: a run header costs 8 bytes, so short gaps are
/// cheaper to carry than to split on.
pub const DIFF_GAP_JOIN_LEN: usize = 8;

/// One run of a delta: `bytes` replace the page's bytes starting at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaRun<'a> {
    /// Byte offset into the page.
    pub offset: u32,
    /// The new bytes.
    pub bytes: &'a [u8],
}

impl DeltaRun<'_> {
    /// One past the last byte this run writes.
    pub fn end(&self) -> usize {
        self.offset as usize + self.bytes.len()
    }
}

/// Offset and length of one run; the bytes live in [`Delta`]'s payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunSpan {
    offset: u32,
    len: u32,
}

impl RunSpan {
    fn end(self) -> usize {
        self.offset as usize + self.len as usize
    }
}

/// Why a delta could not be applied or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A run reaches past the end of the page.
    #[error("delta run [{offset}, {end}) reaches past the {page_len}-byte page")]
    OutOfBounds {
        /// Start of the offending run.
        offset: usize,
        /// End of the offending run.
        end: usize,
        /// Length of the page it was applied to.
        page_len: usize,
    },
    /// Two deltas of different pages were merged.
    #[error("cannot merge a delta of {left} with a delta of {right}")]
    PageMismatch {
        /// Page of the older delta.
        left: PageId,
        /// Page of the newer delta.
        right: PageId,
    },
    /// Runs were given out of order or overlapping where a canonical list was required.
    #[error("delta runs are not sorted and disjoint at offset {offset}")]
    Unordered {
        /// Offset of the first run out of order.
        offset: usize,
    },
}

/// A sparse, byte-level change to one page.
///
/// Invariants (checked by [`Delta::check_invariants`] in debug builds):
/// runs are sorted by offset, non-empty, disjoint and not adjacent; the payload
/// holds exactly the runs' bytes in order; no run ends past [`MAX_PAGE_LEN`].
#[derive(Clone, PartialEq, Eq)]
pub struct Delta {
    page_id: PageId,
    runs: Vec<RunSpan>,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Delta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delta")
            .field("page_id", &self.page_id)
            .field("runs", &self.runs.len())
            .field("changed_bytes", &self.payload.len())
            .finish()
    }
}

impl Delta {
    /// An empty delta of `page_id`: applying it changes nothing.
    pub fn new(page_id: PageId) -> Self {
        Delta {
            page_id,
            runs: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Builds a delta from runs that are already sorted and disjoint.
    /// Adjacent runs are coalesced and empty runs dropped.
    pub fn from_sorted_runs<'a, I>(page_id: PageId, runs: I) -> Result<Self, DeltaError>
    where
        I: IntoIterator<Item = DeltaRun<'a>>,
    {
        Self::from_sorted_runs_reserved(page_id, runs, 0, 0)
    }

    /// [`Delta::from_sorted_runs`] with room for `runs_hint` runs and
    /// `payload_hint` changed bytes reserved up front (hints: more are
    /// taken, fewer leave spare capacity), saving the reallocations of a
    /// growing delta.
    pub fn from_sorted_runs_reserved<'a, I>(
        page_id: PageId,
        runs: I,
        runs_hint: usize,
        payload_hint: usize,
    ) -> Result<Self, DeltaError>
    where
        I: IntoIterator<Item = DeltaRun<'a>>,
    {
        let mut delta = Delta {
            page_id,
            runs: Vec::with_capacity(runs_hint),
            payload: Vec::with_capacity(payload_hint.min(MAX_PAGE_LEN)),
        };
        let mut prev_end = 0usize;
        for run in runs {
            if run.bytes.is_empty() {
                continue;
            }
            check_run_bounds(run.offset as usize, run.end(), MAX_PAGE_LEN)?;
            if !delta.runs.is_empty() && (run.offset as usize) < prev_end {
                return Err(DeltaError::Unordered {
                    offset: run.offset as usize,
                });
            }
            prev_end = run.end();
            delta.push_back(run.offset as usize, run.bytes);
        }
        delta.debug_check();
        Ok(delta)
    }

    /// The delta that turns `old` into `new` (two images of one page).
    /// Changed spans separated by fewer than [`DIFF_GAP_JOIN_LEN`] equal bytes
    /// share one run.
    pub fn from_diff(page_id: PageId, old: &[u8], new: &[u8]) -> Result<Self, DeltaError> {
        if old.len() != new.len() || new.len() > MAX_PAGE_LEN {
            return Err(DeltaError::OutOfBounds {
                offset: 0,
                end: new.len(),
                page_len: old.len().min(MAX_PAGE_LEN),
            });
        }
        let mut delta = Delta::new(page_id);
        // Each equal stretch is scanned once: the difference that ends a
        // gap too long to join starts the next run.
        let mut next = first_difference(old, new, 0);
        while let Some(start) = next {
            let mut end = start;
            loop {
                end += first_equal(&old[end..], &new[end..]);
                next = first_difference(old, new, end);
                match next {
                    Some(at) if at - end < DIFF_GAP_JOIN_LEN => end = at,
                    _ => break,
                }
            }
            delta.push_back(start, &new[start..end]);
        }
        delta.debug_check();
        Ok(delta)
    }

    /// A delta that writes the whole `image` from offset 0: a full page image.
    pub fn full_image(page_id: PageId, image: &[u8]) -> Result<Self, DeltaError> {
        Delta::from_sorted_runs(
            page_id,
            [DeltaRun {
                offset: 0,
                bytes: image,
            }],
        )
    }

    /// The page this delta changes.
    pub fn page_id(&self) -> PageId {
        self.page_id
    }

    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Number of bytes the delta writes.
    pub fn changed_len(&self) -> usize {
        self.payload.len()
    }

    /// True when applying the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// One past the highest byte the delta writes (0 when empty).
    pub fn extent(&self) -> usize {
        self.runs.last().map_or(0, |run| run.end())
    }

    /// The runs in offset order.
    pub fn runs(&self) -> impl ExactSizeIterator<Item = DeltaRun<'_>> + '_ {
        let mut payload_pos = 0usize;
        self.runs.iter().map(move |span| {
            let bytes = &self.payload[payload_pos..payload_pos + span.len as usize];
            payload_pos += span.len as usize;
            DeltaRun {
                offset: span.offset,
                bytes,
            }
        })
    }

    /// Records a write of `bytes` at `offset`; it wins over earlier writes to
    /// the same bytes of this delta.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), DeltaError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = offset.saturating_add(bytes.len());
        check_run_bounds(offset, end, MAX_PAGE_LEN)?;
        if self.runs.last().is_none_or(|last| last.end() < offset) {
            self.push_back(offset, bytes);
            self.debug_check();
            return Ok(());
        }
        let single = Delta::from_sorted_runs(
            self.page_id,
            [DeltaRun {
                offset: offset as u32,
                bytes,
            }],
        )?;
        *self = self.overlay(&single);
        Ok(())
    }

    /// Applies the delta to `page` in place. Costs time proportional to
    /// [`Delta::changed_len`]; the page is left untouched when a run would not fit.
    pub fn apply(&self, page: &mut [u8]) -> Result<(), DeltaError> {
        let extent = self.extent();
        if extent > page.len() {
            return Err(DeltaError::OutOfBounds {
                offset: self.runs.last().map_or(0, |run| run.offset as usize),
                end: extent,
                page_len: page.len(),
            });
        }
        for run in self.runs() {
            page[run.offset as usize..run.end()].copy_from_slice(run.bytes);
        }
        Ok(())
    }

    /// Merges `self` (older) with `newer` into one delta equal to applying
    /// `self` then `newer`.
    pub fn merge(&self, newer: &Delta) -> Result<Delta, DeltaError> {
        if self.page_id != newer.page_id {
            return Err(DeltaError::PageMismatch {
                left: self.page_id,
                right: newer.page_id,
            });
        }
        Ok(self.overlay(newer))
    }

    /// Sweep of two sorted run lists; `newer` wins where both write.
    fn overlay(&self, newer: &Delta) -> Delta {
        let mut out = Delta {
            page_id: self.page_id,
            runs: Vec::with_capacity(self.runs.len() + newer.runs.len()),
            payload: Vec::with_capacity(self.payload.len() + newer.payload.len()),
        };
        let mut newer_runs = newer.runs().peekable();
        for old in self.runs() {
            let mut cursor = old.offset as usize;
            let old_end = old.end();
            // Emit every newer run that starts before this old run ends,
            // filling the gaps between them with the old run's bytes.
            while let Some(next) = newer_runs.peek().copied() {
                if next.offset as usize >= old_end {
                    break;
                }
                if (next.offset as usize) > cursor {
                    let from = cursor - old.offset as usize;
                    let to = next.offset as usize - old.offset as usize;
                    out.push_back(cursor, &old.bytes[from..to]);
                }
                out.push_back(next.offset as usize, next.bytes);
                cursor = cursor.max(next.end());
                newer_runs.next();
            }
            if cursor < old_end {
                out.push_back(cursor, &old.bytes[cursor - old.offset as usize..]);
            }
        }
        for rest in newer_runs {
            out.push_back(rest.offset as usize, rest.bytes);
        }
        out.debug_check();
        out
    }

    /// Appends bytes at `offset`, which must not start before the last run's
    /// end minus its overlap: overlapping bytes already emitted are skipped
    /// (they were written by a newer run), adjacent runs are coalesced.
    fn push_back(&mut self, offset: usize, bytes: &[u8]) {
        let (offset, bytes) = match self.runs.last() {
            Some(last) if last.end() > offset => {
                let skip = last.end() - offset;
                if skip >= bytes.len() {
                    return;
                }
                (last.end(), &bytes[skip..])
            }
            _ => (offset, bytes),
        };
        if bytes.is_empty() {
            return;
        }
        self.payload.extend_from_slice(bytes);
        match self.runs.last_mut() {
            Some(last) if last.end() == offset => last.len += bytes.len() as u32,
            _ => self.runs.push(RunSpan {
                offset: offset as u32,
                len: bytes.len() as u32,
            }),
        }
    }

    /// Asserts the type's invariants; a no-op in release builds.
    pub fn check_invariants(&self) -> bool {
        let mut prev_end: Option<usize> = None;
        let mut total = 0usize;
        for span in &self.runs {
            if span.len == 0 || span.end() > MAX_PAGE_LEN {
                return false;
            }
            if prev_end.is_some_and(|end| span.offset as usize <= end) {
                return false;
            }
            prev_end = Some(span.end());
            total += span.len as usize;
        }
        total == self.payload.len()
    }

    fn debug_check(&self) {
        debug_assert!(
            self.check_invariants(),
            "delta invariants violated: {self:?}"
        );
    }
}

fn check_run_bounds(offset: usize, end: usize, page_len: usize) -> Result<(), DeltaError> {
    if end > page_len || offset >= end {
        return Err(DeltaError::OutOfBounds {
            offset,
            end,
            page_len,
        });
    }
    Ok(())
}

/// Bytes compared per step of the word-wide scans.
const WORD_BYTES: usize = 8;
/// Words compared per step while skipping long equal stretches.
const WORDS_PER_BLOCK: usize = 4;

/// The little-endian word at `at` (the caller keeps `at + 8` in bounds).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; WORD_BYTES];
    buf.copy_from_slice(&bytes[at..at + WORD_BYTES]);
    u64::from_le_bytes(buf)
}

/// First index at or after `from` where the two slices differ.
fn first_difference(old: &[u8], new: &[u8], from: usize) -> Option<usize> {
    debug_assert_eq!(old.len(), new.len());
    let len = old.len().min(new.len());
    let mut pos = from;
    // Equal stretches dominate page diffs: 32 bytes a step, then 8.
    const BLOCK: usize = WORD_BYTES * WORDS_PER_BLOCK;
    while pos + BLOCK <= len {
        let differs = (0..WORDS_PER_BLOCK)
            .map(|i| word_at(old, pos + i * WORD_BYTES) ^ word_at(new, pos + i * WORD_BYTES))
            .fold(0, |acc, x| acc | x);
        if differs != 0 {
            break;
        }
        pos += BLOCK;
    }
    while pos + WORD_BYTES <= len {
        let x = word_at(old, pos) ^ word_at(new, pos);
        if x != 0 {
            return Some(pos + (x.trailing_zeros() / 8) as usize);
        }
        pos += WORD_BYTES;
    }
    (pos..len).find(|&i| old[i] != new[i])
}

/// Length of the leading run in which the slices differ.
fn first_equal(old: &[u8], new: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let len = old.len().min(new.len());
    let mut pos = 0;
    while pos + WORD_BYTES <= len {
        let x = word_at(old, pos) ^ word_at(new, pos);
        // Byte i of `x` is zero iff the slices agree there; the lowest
        // flagged byte is exact (higher flags may be borrows).
        let equal_bytes = x.wrapping_sub(ONES) & !x & HIGHS;
        if equal_bytes != 0 {
            return pos + (equal_bytes.trailing_zeros() / 8) as usize;
        }
        pos += WORD_BYTES;
    }
    pos + old[pos..len]
        .iter()
        .zip(&new[pos..len])
        .position(|(a, b)| a == b)
        .unwrap_or(len - pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: PageId = PageId(7);

    fn delta_from(writes: &[(usize, Vec<u8>)], page_len: usize) -> Delta {
        let mut delta = Delta::new(PAGE);
        for (offset, bytes) in writes {
            let offset = offset % page_len;
            let len = bytes.len().min(page_len - offset);
            delta.write(offset, &bytes[..len]).unwrap();
        }
        delta
    }

    fn apply_writes(page: &mut [u8], writes: &[(usize, Vec<u8>)]) {
        let page_len = page.len();
        for (offset, bytes) in writes {
            let offset = offset % page_len;
            let len = bytes.len().min(page_len - offset);
            page[offset..offset + len].copy_from_slice(&bytes[..len]);
        }
    }

    fn writes_strategy() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> {
        prop::collection::vec(
            (0usize..4096, prop::collection::vec(any::<u8>(), 0..64)),
            0..24,
        )
    }

    proptest! {
        #[test]
        fn write_then_apply_matches_direct_writes(
            base in prop::collection::vec(any::<u8>(), 4096),
            writes in writes_strategy(),
        ) {
            let delta = delta_from(&writes, base.len());
            prop_assert!(delta.check_invariants());
            let mut expected = base.clone();
            apply_writes(&mut expected, &writes);
            let mut page = base.clone();
            delta.apply(&mut page).unwrap();
            prop_assert_eq!(page, expected);
        }

        #[test]
        fn merge_equals_sequential_apply(
            base in prop::collection::vec(any::<u8>(), 4096),
            a in writes_strategy(),
            b in writes_strategy(),
        ) {
            let older = delta_from(&a, base.len());
            let newer = delta_from(&b, base.len());
            let mut sequential = base.clone();
            older.apply(&mut sequential).unwrap();
            newer.apply(&mut sequential).unwrap();
            let merged = older.merge(&newer).unwrap();
            prop_assert!(merged.check_invariants());
            let mut folded = base.clone();
            merged.apply(&mut folded).unwrap();
            prop_assert_eq!(folded, sequential);
            prop_assert!(merged.changed_len() <= older.changed_len() + newer.changed_len());
        }

        #[test]
        fn word_wide_scans_match_bytewise_scans(
            base in prop::collection::vec(any::<u8>(), 0..200),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..12),
            from in any::<prop::sample::Index>(),
        ) {
            let mut new = base.clone();
            for (index, flip) in flips.iter().filter(|_| !base.is_empty()) {
                new[index.index(base.len())] ^= flip;
            }
            let from = if base.is_empty() { 0 } else { from.index(base.len()) };
            let naive_difference = (from..base.len()).find(|&i| base[i] != new[i]);
            prop_assert_eq!(first_difference(&base, &new, from), naive_difference);
            let naive_equal = base[from..]
                .iter()
                .zip(&new[from..])
                .position(|(a, b)| a == b)
                .unwrap_or(base.len() - from);
            prop_assert_eq!(first_equal(&base[from..], &new[from..]), naive_equal);
        }

        #[test]
        fn diff_reproduces_new_image(
            base in prop::collection::vec(any::<u8>(), 4096),
            writes in writes_strategy(),
        ) {
            let mut new = base.clone();
            apply_writes(&mut new, &writes);
            let delta = Delta::from_diff(PAGE, &base, &new).unwrap();
            prop_assert!(delta.check_invariants());
            let mut page = base.clone();
            delta.apply(&mut page).unwrap();
            prop_assert_eq!(page, new);
        }

        #[test]
        fn reapplying_a_prefix_is_idempotent(
            base in prop::collection::vec(any::<u8>(), 1024),
            a in writes_strategy(),
            b in writes_strategy(),
        ) {
            // Replay may start from a page that already holds some of the
            // deltas: byte-set deltas make that harmless.
            let d1 = delta_from(&a, base.len());
            let d2 = delta_from(&b, base.len());
            let mut clean = base.clone();
            d1.apply(&mut clean).unwrap();
            d2.apply(&mut clean).unwrap();
            let mut ahead = base.clone();
            d1.apply(&mut ahead).unwrap();
            d1.apply(&mut ahead).unwrap();
            d2.apply(&mut ahead).unwrap();
            prop_assert_eq!(ahead, clean);
        }
    }

    #[test]
    fn apply_rejects_runs_past_the_page() {
        let delta = Delta::full_image(PAGE, &[1u8; 100]).unwrap();
        let mut short = [0u8; 50];
        assert!(matches!(
            delta.apply(&mut short),
            Err(DeltaError::OutOfBounds { .. })
        ));
        assert_eq!(short, [0u8; 50], "a failed apply must not touch the page");
    }

    #[test]
    fn merge_of_different_pages_is_an_error() {
        let a = Delta::new(PageId(1));
        let b = Delta::new(PageId(2));
        assert!(matches!(a.merge(&b), Err(DeltaError::PageMismatch { .. })));
    }

    #[test]
    fn unordered_runs_are_rejected() {
        let runs = [
            DeltaRun {
                offset: 10,
                bytes: &[1, 2],
            },
            DeltaRun {
                offset: 5,
                bytes: &[3],
            },
        ];
        assert!(matches!(
            Delta::from_sorted_runs(PAGE, runs),
            Err(DeltaError::Unordered { offset: 5 })
        ));
    }

    #[test]
    fn diff_joins_short_gaps() {
        let old = [0u8; 64];
        let mut new = old;
        new[10] = 1;
        new[14] = 1;
        new[40] = 1;
        let delta = Delta::from_diff(PAGE, &old, &new).unwrap();
        let runs: Vec<_> = delta.runs().map(|r| (r.offset, r.bytes.len())).collect();
        assert_eq!(runs, vec![(10, 5), (40, 1)]);
    }
}
