//! [`WrittenRanges`]: the byte ranges of a page a writer says it changed,
//! so that the commit diffs only those ranges of the page instead of all of
//! it (a leaf insert changes a few hundred of its 4 096 bytes).
//!
//! The record is a promise: every byte outside the noted ranges equals the
//! image the transaction started from. Writers that cannot keep it (plain
//! [`PageWrite::page_mut`](crate::page_access::PageWrite::page_mut)) turn
//! the page's record into "whole page" for the rest of the transaction; a
//! record that would need more than [`WRITTEN_RANGES_MAX`] ranges does too.
//! Debug builds check the promise at commit (`txn::dirty_deltas`).

use std::ops::Range;

use mmsb_wal::delta::DIFF_GAP_JOIN_LEN;

/// Most separate ranges remembered per page before falling back to a
/// whole-page diff (a leaf insert notes three, two nearby inserts five).
pub const WRITTEN_RANGES_MAX: usize = 8;

/// The ranges of one page changed since the transaction's first write to
/// it, or "the whole page" when unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenRanges {
    /// Sorted, disjoint, non-adjacent `[start, end)` ranges; meaningless when `whole`.
    ranges: [(u32, u32); WRITTEN_RANGES_MAX],
    /// Ranges in use.
    len: usize,
    /// Every byte may have changed.
    whole: bool,
}

impl Default for WrittenRanges {
    fn default() -> Self {
        WrittenRanges {
            ranges: [(0, 0); WRITTEN_RANGES_MAX],
            len: 0,
            whole: false,
        }
    }
}

impl WrittenRanges {
    /// A record that knows nothing: the whole page is diffed.
    pub fn whole() -> Self {
        WrittenRanges {
            whole: true,
            ..WrittenRanges::default()
        }
    }

    /// Whether the whole page must be diffed.
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// Forgets the ranges: the whole page must be diffed.
    pub fn set_whole(&mut self) {
        self.whole = true;
        self.len = 0;
    }

    /// Notes that bytes `range` may have changed. Ranges closer than
    /// [`DIFF_GAP_JOIN_LEN`] bytes are kept as one (the diff would join
    /// their runs anyway); past `WRITTEN_RANGES_MAX` ranges the record
    /// becomes "whole page".
    pub fn note(&mut self, range: Range<usize>) {
        if self.whole || range.is_empty() {
            return;
        }
        let (Ok(mut start), Ok(mut end)) = (u32::try_from(range.start), u32::try_from(range.end))
        else {
            self.set_whole();
            return;
        };
        let join = DIFF_GAP_JOIN_LEN as u32;
        let (first, last) = self.touched(start, end.saturating_add(join));
        if first < last {
            let (s, e) = self.ranges[first];
            if last - first == 1 && s <= start && end <= e {
                // Already covered (a header field noted again): no change.
                return;
            }
            start = start.min(s);
            end = end.max(self.ranges[last - 1].1);
        } else if self.len == WRITTEN_RANGES_MAX {
            self.set_whole();
            return;
        }
        // Replace ranges first..last by the merged one.
        let removed = last - first;
        if removed == 0 {
            self.ranges.copy_within(first..self.len, first + 1);
        } else {
            self.ranges.copy_within(last..self.len, first + 1);
        }
        self.ranges[first] = (start, end);
        self.len = self.len + 1 - removed;
        debug_assert!(self.check());
    }

    /// The ranges `first..last` that a new range starting at `start` and
    /// ending (with the join distance added) at `reach` touches or comes
    /// within the join distance of. A linear scan: there are at most
    /// [`WRITTEN_RANGES_MAX`] ranges, usually one to three.
    #[inline]
    fn touched(&self, start: u32, reach: u32) -> (usize, usize) {
        let join = DIFF_GAP_JOIN_LEN as u32;
        let ranges = &self.ranges[..self.len];
        let mut first = 0;
        while first < ranges.len() && ranges[first].1.saturating_add(join) < start {
            first += 1;
        }
        let mut last = first;
        while last < ranges.len() && ranges[last].0 <= reach {
            last += 1;
        }
        (first, last)
    }

    /// The noted ranges, sorted, each at least [`DIFF_GAP_JOIN_LEN`] bytes
    /// from the next; `None` when the whole page must be diffed.
    pub fn ranges(&self) -> Option<impl ExactSizeIterator<Item = Range<usize>> + Clone + '_> {
        (!self.whole).then(|| {
            self.ranges[..self.len]
                .iter()
                .map(|&(s, e)| s as usize..e as usize)
        })
    }

    fn check(&self) -> bool {
        self.len <= WRITTEN_RANGES_MAX
            && self.ranges[..self.len].iter().all(|&(s, e)| s < e)
            && self.ranges[..self.len]
                .windows(2)
                .all(|w| w[0].1 + DIFF_GAP_JOIN_LEN as u32 <= w[1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes covered by `ranges` in a page of `len` bytes.
    fn covered(written: &WrittenRanges, len: usize) -> Vec<bool> {
        let mut out = vec![written.is_whole(); len];
        if let Some(ranges) = written.ranges() {
            for range in ranges {
                out[range].iter_mut().for_each(|b| *b = true);
            }
        }
        out
    }

    #[test]
    fn nearby_ranges_merge_and_far_ones_stay_apart() {
        let mut w = WrittenRanges::default();
        w.note(100..110);
        w.note(4..8);
        w.note(112..120);
        w.note(2000..2181);
        let ranges: Vec<_> = w.ranges().unwrap().collect();
        assert_eq!(ranges, vec![4..8, 100..120, 2000..2181]);
        w.note(8..100);
        assert_eq!(
            w.ranges().unwrap().collect::<Vec<_>>(),
            vec![4..120, 2000..2181]
        );
    }

    #[test]
    fn too_many_ranges_become_the_whole_page() {
        let mut w = WrittenRanges::default();
        for i in 0..WRITTEN_RANGES_MAX {
            w.note(i * 100..i * 100 + 1);
        }
        assert!(!w.is_whole());
        w.note(5000..5001);
        assert!(w.is_whole());
        assert!(w.ranges().is_none());
        w.note(1..2);
        assert!(w.is_whole());
    }

    /// The ranges as first written (two binary searches, no shortcut for
    /// a covered range): the reference the linear scan must match.
    fn note_reference(w: &mut WrittenRanges, range: Range<usize>) {
        if w.whole || range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start as u32, range.end as u32);
        let join = DIFF_GAP_JOIN_LEN as u32;
        let first = w.ranges[..w.len].partition_point(|&(_, e)| e.saturating_add(join) < start);
        let last = w.ranges[..w.len].partition_point(|&(s, _)| s <= end.saturating_add(join));
        if first < last {
            start = start.min(w.ranges[first].0);
            end = end.max(w.ranges[last - 1].1);
        } else if w.len == WRITTEN_RANGES_MAX {
            w.set_whole();
            return;
        }
        let removed = last - first;
        if removed == 0 {
            w.ranges.copy_within(first..w.len, first + 1);
        } else {
            w.ranges.copy_within(last..w.len, first + 1);
        }
        w.ranges[first] = (start, end);
        w.len = w.len + 1 - removed;
    }

    #[test]
    fn a_covered_range_changes_nothing() {
        let mut w = WrittenRanges::default();
        w.note(4..10);
        w.note(200..300);
        let before = w.clone();
        w.note(6..8);
        w.note(250..300);
        assert_eq!(w, before);
        w.note(295..305);
        assert_eq!(
            w.ranges().unwrap().collect::<Vec<_>>(),
            vec![4..10, 200..305]
        );
    }

    proptest! {
        /// The linear scan with its covered-range shortcut keeps exactly
        /// the ranges of the reference (binary search) version.
        #[test]
        fn matches_the_reference_note(notes in prop::collection::vec((0usize..600, 0usize..40), 0..16)) {
            let mut w = WrittenRanges::default();
            let mut reference = WrittenRanges::default();
            for &(start, n) in &notes {
                w.note(start..start + n);
                note_reference(&mut reference, start..start + n);
                prop_assert_eq!(w.is_whole(), reference.is_whole());
                if !w.is_whole() {
                    prop_assert_eq!(
                        w.ranges().unwrap().collect::<Vec<_>>(),
                        reference.ranges().unwrap().collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    proptest! {
        /// Against a model (a bitmap of noted bytes): every noted byte is
        /// covered, and every covered byte lies within the join distance
        /// of a noted one.
        #[test]
        fn covers_what_was_noted(notes in prop::collection::vec((0usize..4096, 0usize..300), 0..12)) {
            let len = 4096 + 300;
            let mut w = WrittenRanges::default();
            let mut model = vec![false; len];
            for &(start, n) in &notes {
                w.note(start..start + n);
                model[start..start + n].iter_mut().for_each(|b| *b = true);
            }
            let got = covered(&w, len);
            for i in 0..len {
                prop_assert!(!model[i] || got[i], "byte {} noted but not covered", i);
                if got[i] && !w.is_whole() {
                    let lo = i.saturating_sub(DIFF_GAP_JOIN_LEN);
                    let hi = (i + DIFF_GAP_JOIN_LEN + 1).min(len);
                    prop_assert!(model[lo..hi].iter().any(|&b| b), "byte {} covered, far from any note", i);
                }
            }
            prop_assert!(w.check());
        }
    }
}
