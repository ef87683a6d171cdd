//! The range iterator of a table inside a transaction: the snapshot's
//! B+tree entries merged with the transaction's own buffered writes (which
//! win on equal keys; a buffered removal hides the key). Iterates from both
//! ends.

use std::sync::Arc;

use crate::btree::{KeyGuard, RangeIter, ValueGuard};
use crate::error::Result;
use crate::mvcc::view::ByteView;
use crate::txn::PageReadTransaction;

type TreeItem = (KeyGuard, ValueGuard);
use super::buffer::BufferItem;
pub(crate) use super::buffer::BufferRange;

/// Entries of a table in key order, from either end.
///
/// As an iterator it yields owned [`ByteView`]s. [`Range::next_entry`] and
/// [`Range::next_back_entry`] lend each entry as slices instead, valid until
/// the next call: when the transaction has no buffered writes in the range
/// they come straight from the pinned leaf page, with no allocation and no
/// reference count change per entry.
pub struct Range<'a> {
    tree: Option<RangeIter<'a, PageReadTransaction>>,
    buffer: Option<BufferRange<'a>>,
    front_tree: Option<TreeItem>,
    back_tree: Option<TreeItem>,
    front_buffer: Option<BufferItem<'a>>,
    back_buffer: Option<BufferItem<'a>>,
    failed: bool,
    /// The entry lent by the last merged (buffered-writes) borrowed step.
    held: Option<(ByteView, ByteView)>,
}

impl std::fmt::Debug for Range<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("failed", &self.failed)
            .finish()
    }
}

/// Which side of the merge to take next.
enum Pick {
    Tree,
    Buffer,
    Both,
}

impl<'a> Range<'a> {
    pub(crate) fn new(
        tree: Option<RangeIter<'a, PageReadTransaction>>,
        buffer: Option<BufferRange<'a>>,
    ) -> Self {
        Range {
            tree,
            buffer,
            front_tree: None,
            back_tree: None,
            front_buffer: None,
            back_buffer: None,
            failed: false,
            held: None,
        }
    }

    pub(crate) fn empty() -> Self {
        Range::new(None, None)
    }

    /// Fills the front slots; `Err` when the tree failed.
    fn fill_front(&mut self) -> Result<()> {
        if self.front_tree.is_none() {
            self.front_tree = match self.tree.as_mut().and_then(Iterator::next) {
                Some(item) => Some(item?),
                None => self.back_tree.take(),
            };
        }
        if self.front_buffer.is_none() {
            self.front_buffer = match self.buffer.as_mut().and_then(Iterator::next) {
                Some(item) => Some(item),
                None => self.back_buffer.take(),
            };
        }
        Ok(())
    }

    fn fill_back(&mut self) -> Result<()> {
        if self.back_tree.is_none() {
            self.back_tree = match self.tree.as_mut().and_then(DoubleEndedIterator::next_back) {
                Some(item) => Some(item?),
                None => self.front_tree.take(),
            };
        }
        if self.back_buffer.is_none() {
            self.back_buffer = match self
                .buffer
                .as_mut()
                .and_then(DoubleEndedIterator::next_back)
            {
                Some(item) => Some(item),
                None => self.front_buffer.take(),
            };
        }
        Ok(())
    }

    fn pick(
        tree: Option<&TreeItem>,
        buffer: Option<&BufferItem<'_>>,
        forward: bool,
    ) -> Option<Pick> {
        match (tree, buffer) {
            (None, None) => None,
            (Some(_), None) => Some(Pick::Tree),
            (None, Some(_)) => Some(Pick::Buffer),
            (Some((tree_key, _)), Some((buffer_key, _))) => {
                let order = tree_key[..].cmp(&buffer_key[..]);
                let order = if forward { order } else { order.reverse() };
                Some(match order {
                    std::cmp::Ordering::Less => Pick::Tree,
                    std::cmp::Ordering::Greater => Pick::Buffer,
                    std::cmp::Ordering::Equal => Pick::Both,
                })
            }
        }
    }

    fn step(&mut self, forward: bool) -> Option<Result<(ByteView, ByteView)>> {
        if self.failed {
            return None;
        }
        loop {
            let filled = if forward {
                self.fill_front()
            } else {
                self.fill_back()
            };
            if let Err(err) = filled {
                self.failed = true;
                return Some(Err(err));
            }
            let (tree_slot, buffer_slot) = if forward {
                (&mut self.front_tree, &mut self.front_buffer)
            } else {
                (&mut self.back_tree, &mut self.back_buffer)
            };
            let tree_item = match Self::pick(tree_slot.as_ref(), buffer_slot.as_ref(), forward)? {
                Pick::Tree => {
                    let (key, value) = tree_slot.take()?;
                    return Some(Ok((ByteView::from_page(key), ByteView::from_page(value))));
                }
                Pick::Buffer => None,
                Pick::Both => tree_slot.take(),
            };
            let (key, value) = buffer_slot.take()?;
            if let Some(value) = value {
                let key = match tree_item {
                    Some((tree_key, _)) => ByteView::from_page(tree_key),
                    None => ByteView::shared(Arc::from(key)),
                };
                return Some(Ok((key, ByteView::shared(Arc::from(value)))));
            }
            // A buffered removal: the key is gone; look at the next one.
        }
    }
}

impl Range<'_> {
    /// The next entry from the front, lent until the next call on this
    /// range. Same entries, order and errors as [`Iterator::next`], with
    /// which it may be mixed.
    #[inline]
    pub fn next_entry(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        // Without buffered writes the tree's step is the answer: inlined
        // into the caller's loop (its in-leaf step is).
        if !self.failed && self.is_direct() {
            let item = self.tree.as_mut()?.next_entry();
            if matches!(item, Some(Err(_))) {
                self.failed = true;
            }
            return item;
        }
        self.step_borrowed(true)
    }

    /// The next entry from the back, lent like [`Range::next_entry`].
    pub fn next_back_entry(&mut self) -> Option<Result<(&[u8], &[u8])>> {
        self.step_borrowed(false)
    }

    /// Calls `visit` with each remaining entry (from the back when
    /// `backward`), lent as by [`Range::next_entry`], until it returns
    /// `false` or the range ends. Same entries, order and errors as the
    /// step-by-step calls; forward scans with no buffered writes step the
    /// pinned leaf's slots in one loop.
    pub fn visit_entries(
        &mut self,
        backward: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        if !backward && !self.failed && self.is_direct() {
            let Some(tree) = self.tree.as_mut() else {
                return Ok(());
            };
            let visited = tree.visit_front(visit);
            self.failed = visited.is_err();
            return visited;
        }
        loop {
            let entry = if backward {
                self.next_back_entry()
            } else {
                self.next_entry()
            };
            let Some(entry) = entry else { return Ok(()) };
            let (key, value) = entry?;
            if !visit(key, value) {
                return Ok(());
            }
        }
    }

    /// Whether the tree's entries are the answer as they are: no buffered
    /// writes, and nothing parked by an owned step.
    #[inline]
    fn is_direct(&self) -> bool {
        self.buffer.is_none() && self.front_tree.is_none() && self.back_tree.is_none()
    }

    fn step_borrowed(&mut self, forward: bool) -> Option<Result<(&[u8], &[u8])>> {
        if self.failed {
            return None;
        }
        // Without buffered writes (and nothing parked by an owned step) the
        // tree's entries are the answer: lend them directly.
        if self.is_direct() {
            let tree = self.tree.as_mut()?;
            let item = if forward {
                tree.next_entry()
            } else {
                tree.next_back_entry()
            };
            if matches!(item, Some(Err(_))) {
                self.failed = true;
            }
            return item;
        }
        match self.step(forward)? {
            Ok(pair) => {
                let (key, value) = self.held.insert(pair);
                Some(Ok((&key[..], &value[..])))
            }
            Err(err) => Some(Err(err)),
        }
    }
}

impl Iterator for Range<'_> {
    type Item = Result<(ByteView, ByteView)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;
    use std::sync::Arc;

    use mmsb_wal::storage::MemStorage;
    use proptest::prelude::*;

    use super::Range;
    use crate::{Database, Options};

    type Model = BTreeMap<Vec<u8>, Vec<u8>>;

    fn memory_db() -> Database {
        Options {
            storage: Arc::new(MemStorage::new()),
            checkpoint_on_close: false,
            background_workers: false,
            ..Options::default()
        }
        .open("/range/db.mmsb")
        .expect("open a memory database")
    }

    /// Key `k`: two big-endian bytes, padded past the inline key limit of
    /// 4 KiB pages (an overflow chain) when `long`.
    fn key(k: u16, long: bool) -> Vec<u8> {
        let mut key = k.to_be_bytes().to_vec();
        if long {
            key.resize(1_500, k as u8);
        }
        key
    }

    /// Value of `len` bytes; lengths past about 1 KiB live in overflow pages.
    fn value(k: u16, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8) ^ (k as u8)).collect()
    }

    fn in_bounds(key: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
        let above = match lo {
            Bound::Included(l) => key >= &l[..],
            Bound::Excluded(l) => key > &l[..],
            Bound::Unbounded => true,
        };
        let below = match hi {
            Bound::Included(h) => key <= &h[..],
            Bound::Excluded(h) => key < &h[..],
            Bound::Unbounded => true,
        };
        above && below
    }

    /// One step: from the front or the back, lent or owned.
    #[derive(Clone, Copy, Debug)]
    struct Step {
        forward: bool,
        lent: bool,
    }

    fn take(range: &mut Range<'_>, step: Step) -> crate::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if step.lent {
            let item = if step.forward {
                range.next_entry()
            } else {
                range.next_back_entry()
            };
            item.transpose()
                .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
        } else {
            let item = if step.forward {
                range.next()
            } else {
                range.next_back()
            };
            item.transpose()
                .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
        }
    }

    /// Walks `range` by `steps` (then forward until it ends) and checks
    /// every answer against the model's entries in the bounds.
    fn check_walk(
        mut range: Range<'_>,
        want: &[(&Vec<u8>, &Vec<u8>)],
        steps: &[Step],
    ) -> Result<(), TestCaseError> {
        let (mut i, mut j) = (0, want.len());
        let tail = std::iter::repeat_n(
            Step {
                forward: true,
                lent: true,
            },
            want.len() + 2,
        );
        for step in steps.iter().copied().chain(tail) {
            let got = take(&mut range, step).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expect = if i == j {
                None
            } else if step.forward {
                i += 1;
                Some(want[i - 1])
            } else {
                j -= 1;
                Some(want[j])
            };
            let expect = expect.map(|(k, v)| (k.clone(), v.clone()));
            prop_assert_eq!(got, expect, "step {:?}", step);
        }
        Ok(())
    }

    fn bound_of(b: Option<(u16, bool)>) -> Bound<Vec<u8>> {
        match b {
            None => Bound::Unbounded,
            Some((k, true)) => Bound::Included(key(k, false)),
            Some((k, false)) => Bound::Excluded(key(k, false)),
        }
    }

    fn slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(Vec::as_slice)
    }

    fn step_gen() -> impl Strategy<Value = Step> {
        (any::<bool>(), any::<bool>()).prop_map(|(forward, lent)| Step { forward, lent })
    }

    /// (key, long key?, value length or removal)
    type Write = (u16, bool, Option<usize>);

    fn write_gen() -> impl Strategy<Value = Write> {
        let len = prop_oneof![8 => 0usize..120, 1 => 1_200usize..3_000];
        (
            0u16..400,
            prop::bool::weighted(0.05),
            prop::option::weighted(0.9, len),
        )
    }

    fn apply(
        table: &mut crate::Table<'_>,
        model: &mut Model,
        writes: &[Write],
    ) -> crate::Result<()> {
        for &(k, long, len) in writes {
            let key = key(k, long);
            match len {
                Some(len) => {
                    let value = value(k, len);
                    table.insert(&key, &value)?;
                    model.insert(key, value);
                }
                None => {
                    table.remove(&key)?;
                    model.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Commits `committed`, then runs `check` on the range `lo..hi` of a
    /// read snapshot (lent straight from the leaves) and of a write
    /// transaction holding `buffered` on top (merged), each time with the
    /// model's entries of that range.
    fn on_snapshot_and_buffered(
        committed: &[Write],
        buffered: &[Write],
        lo: Option<(u16, bool)>,
        hi: Option<(u16, bool)>,
        mut check: impl FnMut(Range<'_>, &[(&Vec<u8>, &Vec<u8>)]) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let fail = |e: crate::Error| TestCaseError::fail(e.to_string());
        let db = memory_db();
        let mut model = Model::new();
        let mut tx = db.begin_write().map_err(fail)?;
        apply(
            &mut tx.open_table("t").map_err(fail)?,
            &mut model,
            committed,
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        let (lo, hi) = (bound_of(lo), bound_of(hi));
        let bounds = (slice_bound(&lo), slice_bound(&hi));

        let want: Vec<_> = model
            .iter()
            .filter(|(k, _)| in_bounds(k, &lo, &hi))
            .collect();
        let rx = db.begin_read().map_err(fail)?;
        let table = rx.open_table("t").map_err(fail)?;
        check(table.range(bounds).map_err(fail)?, &want)?;

        let mut tx = db.begin_write().map_err(fail)?;
        let mut table = tx.open_table("t").map_err(fail)?;
        let mut mine = model.clone();
        apply(&mut table, &mut mine, buffered).map_err(fail)?;
        let want: Vec<_> = mine
            .iter()
            .filter(|(k, _)| in_bounds(k, &lo, &hi))
            .collect();
        check(table.range(bounds).map_err(fail)?, &want)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Lent and owned steps, mixed and from both ends, give the model's
        /// entries: on a read snapshot (lent straight from the leaves) and
        /// inside a write transaction with buffered writes (merged).
        #[test]
        fn lent_and_owned_steps_match_a_model(
            committed in prop::collection::vec(write_gen(), 0..400),
            buffered in prop::collection::vec(write_gen(), 0..40),
            lo in prop::option::of((0u16..400, any::<bool>())),
            hi in prop::option::of((0u16..400, any::<bool>())),
            steps in prop::collection::vec(step_gen(), 0..60),
        ) {
            on_snapshot_and_buffered(&committed, &buffered, lo, hi, |range, want| {
                check_walk(range, want, &steps)
            })?;
        }
    }

    /// After `steps`, visits up to `stop` entries with
    /// [`Range::visit_entries`] (from the back when `backward`), then walks
    /// on forward: every answer is the model's, and the visit stops where
    /// asked.
    fn check_visit(
        mut range: Range<'_>,
        want: &[(&Vec<u8>, &Vec<u8>)],
        steps: &[Step],
        backward: bool,
        stop: usize,
    ) -> Result<(), TestCaseError> {
        let (mut i, mut j) = (0, want.len());
        for &step in steps {
            let got = take(&mut range, step).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expect = if i == j {
                None
            } else if step.forward {
                i += 1;
                Some(want[i - 1])
            } else {
                j -= 1;
                Some(want[j])
            };
            prop_assert_eq!(got, expect.map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut seen = Vec::new();
        range
            .visit_entries(backward, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                seen.len() < stop
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rest = &want[i..j];
        let expect: Vec<_> = if backward {
            rest.iter().rev().take(stop).collect()
        } else {
            rest.iter().take(stop).collect()
        };
        let expect: Vec<_> = expect
            .iter()
            .map(|(k, v)| ((*k).clone(), (*v).clone()))
            .collect();
        prop_assert_eq!(&seen, &expect);
        let n = seen.len();
        let (mut i, j) = if backward { (i, j - n) } else { (i + n, j) };
        // The range goes on after an early stop.
        let forward = Step {
            forward: true,
            lent: true,
        };
        for _ in 0..want.len() + 2 {
            let got = take(&mut range, forward).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expect = (i < j).then(|| {
                i += 1;
                (want[i - 1].0.clone(), want[i - 1].1.clone())
            });
            prop_assert_eq!(got, expect);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// `visit_entries`, after mixed steps and stopping early or not,
        /// gives the model's entries on a read snapshot (the leaf loop) and
        /// with buffered writes (merged).
        #[test]
        fn visiting_entries_matches_a_model(
            committed in prop::collection::vec(write_gen(), 0..400),
            buffered in prop::collection::vec(write_gen(), 0..40),
            lo in prop::option::of((0u16..400, any::<bool>())),
            hi in prop::option::of((0u16..400, any::<bool>())),
            steps in prop::collection::vec(step_gen(), 0..8),
            backward in any::<bool>(),
            stop in prop_oneof![1usize..5, Just(usize::MAX)],
        ) {
            on_snapshot_and_buffered(&committed, &buffered, lo, hi, |range, want| {
                check_visit(range, want, &steps, backward, stop)
            })?;
        }
    }

    /// `ReadOnlyTable::get` (which keeps the branch pages it reads) agrees
    /// with the model for trees of one and two levels and for an empty
    /// table, and keeps reading its own snapshot after later commits.
    #[test]
    fn read_only_gets_match_the_model_at_every_height() {
        let db = memory_db();
        let mut tx = db.begin_write().expect("begin");
        tx.open_table("t").expect("create");
        tx.commit().expect("commit");
        let mut model = Model::new();
        let mut next = 0u16;
        for batch in [0u16, 10, 3_000, 20_000] {
            {
                let rx = db.begin_read().expect("read");
                let table = rx.open_table("t").expect("open");
                for k in (0..next + 5).step_by(7) {
                    let got = table.get(&key(k, false)).expect("get");
                    assert_eq!(got.as_deref(), model.get(&key(k, false)).map(|v| &v[..]));
                }
                // A commit after the first get: the cached root must not see it.
                let mut tx = db.begin_write().expect("begin");
                tx.open_table("t")
                    .and_then(|mut t| t.insert(&key(next, false), b"later"))
                    .expect("insert");
                tx.commit().expect("commit");
                assert_eq!(table.get(&key(next, false)).expect("get"), None);
            }
            let mut tx = db.begin_write().expect("begin");
            let mut table = tx.open_table("t").expect("open");
            for k in next..next + batch {
                table.insert(&key(k, false), &value(k, 30)).expect("insert");
                model.insert(key(k, false), value(k, 30));
            }
            table
                .insert(&key(next + batch, false), &value(next + batch, 30))
                .expect("insert");
            model.insert(key(next + batch, false), value(next + batch, 30));
            drop(table);
            tx.commit().expect("commit");
            next += batch + 1;
        }
        let rx = db.begin_read().expect("read");
        let table = rx.open_table("t").expect("open");
        for (k, v) in &model {
            assert_eq!(table.get(k).expect("get").as_deref(), Some(&v[..]));
        }
        assert_eq!(table.get(b"missing").expect("get"), None);
    }

    #[test]
    fn a_lent_entry_survives_until_the_next_call_across_leaves() {
        let db = memory_db();
        let mut tx = db.begin_write().expect("begin");
        let mut table = tx.open_table("t").expect("open");
        for k in 0..2_000u16 {
            table.insert(&key(k, false), &value(k, 40)).expect("insert");
        }
        drop(table);
        tx.commit().expect("commit");
        let rx = db.begin_read().expect("read");
        let table = rx.open_table("t").expect("open");
        let mut range = table.range::<std::ops::RangeFull>(..).expect("range");
        let mut seen = 0u16;
        while let Some(entry) = range.next_entry() {
            let (k, v) = entry.expect("entry");
            assert_eq!(k, &key(seen, false)[..]);
            assert_eq!(v, &value(seen, 40)[..]);
            seen += 1;
        }
        assert_eq!(seen, 2_000, "every entry, over many leaves");
        assert!(range.next_entry().is_none(), "stays exhausted");
        assert!(range.next().is_none());
    }

    /// Version of key `k` as of commit `v`: the last commit `c <= v` that
    /// rewrote it (commit `c` rewrites the keys with `k % 64 == c % 64`).
    fn version_at(k: u16, v: u32) -> u32 {
        const STRIDE: u32 = 64;
        let last = (1..=v).rev().find(|c| u32::from(k) % STRIDE == c % STRIDE);
        last.unwrap_or(0)
    }

    fn versioned(k: u16, version: u32) -> Vec<u8> {
        let mut v = value(k, 300);
        v[..4].copy_from_slice(&version.to_le_bytes());
        v
    }

    /// Readers keep one table handle (and the branch pages it caches) across
    /// many commits while the writer rewrites keys and a 1 MiB budget makes
    /// the engine evict and reload pages: every get and range read must
    /// still see the reader's snapshot.
    #[test]
    fn cached_branch_pages_keep_snapshots_right_through_eviction() {
        const KEYS: u16 = 8_000;
        const COMMITS: u32 = 40;
        let db = Options {
            storage: Arc::new(MemStorage::new()),
            checkpoint_on_close: false,
            memory_budget_bytes: 2 * crate::MIN_MEMORY_BUDGET_BYTES,
            ..Options::default()
        }
        .open("/range/evict.mmsb")
        .expect("open");
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let mut tx = db.begin_write().expect("begin");
            let mut table = tx.open_table("t").expect("open");
            for &k in chunk {
                table
                    .insert(&key(k, false), &versioned(k, 0))
                    .expect("load");
            }
            drop(table);
            tx.commit().expect("commit");
        }
        let epoch_key = b"~epoch";
        let check = |table: &crate::ReadOnlyTable<'_>, v: u32, round: u16| {
            for k in (round % 5..KEYS).step_by(5) {
                let got = table.get(&key(k, false)).expect("get");
                assert_eq!(got.as_deref(), Some(&versioned(k, version_at(k, v))[..]));
            }
            let start = key(round * 97 % KEYS, false);
            let mut range = table.range(&start[..]..).expect("range");
            for n in 0..20u16 {
                let k = round * 97 % KEYS + n;
                if k >= KEYS {
                    break;
                }
                let (got_k, got_v) = range.next_entry().expect("entry").expect("read");
                assert_eq!(got_k, &key(k, false)[..]);
                assert_eq!(got_v, &versioned(k, version_at(k, v))[..]);
            }
        };
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let commit = |c: u32| -> crate::Result<()> {
                    let mut tx = db.begin_write()?;
                    let mut table = tx.open_table("t")?;
                    for k in (0..KEYS).filter(|k| version_at(*k, c) == c) {
                        table.insert(&key(k, false), &versioned(k, c))?;
                    }
                    table.insert(epoch_key, &c.to_le_bytes())?;
                    drop(table);
                    tx.commit().map(drop)
                };
                for c in 1..=COMMITS {
                    // Readers pin old versions: a full budget is retryable.
                    let mut tries = 0;
                    while let Err(err) = commit(c) {
                        tries += 1;
                        let full = matches!(err, crate::Error::MemoryBudgetExceeded { .. });
                        assert!(full && tries < 200, "commit {c}: {err}");
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            });
            for reader in 0..2u16 {
                let db = &db;
                scope.spawn(move || {
                    for round in 0..6u16 {
                        let rx = db.begin_read().expect("read");
                        let table = rx.open_table("t").expect("open");
                        let v = table.get(epoch_key).expect("epoch").map_or(0, |b| {
                            u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
                        });
                        // The same handle before and after later commits.
                        check(&table, v, round + reader);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        check(&table, v, round + reader + 1);
                    }
                });
            }
            writer.join().expect("writer");
        });
        assert!(
            db.metrics().pages_evicted > 0,
            "the budget made pages leave memory"
        );
    }
}
