//! Conflict detection: what recent commits wrote, what a transaction read,
//! and the checks that decide whether it may commit.
//!
//! Every commit of a table transaction leaves a [`CommitFootprint`] (the keys
//! it wrote, per key space) in the [`CommitLog`]. At commit, a transaction
//! is checked against the footprints of every commit after its snapshot:
//! - REPEATABLE READ and SERIALIZABLE: its writes must not meet theirs
//!   (first committer wins: no lost update);
//! - SERIALIZABLE also: its reads (point keys, ranges, whole tables) must not
//!   meet their writes. Every committed read-write transaction then read
//!   exactly the state it would have read at its commit point, so the
//!   history is equivalent to the serial order of commit epochs (no write
//!   skew, no phantom). Read-only transactions read a committed prefix of
//!   that order and need no check.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use mmsb_wal::CommitEpoch;

/// Where keys live: the catalog (table names) or one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum KeySpace {
    /// Table names: creating or dropping a table writes its name here.
    Catalog,
    /// The keys of one table, by name (shared: cloning it allocates nothing).
    Table(Arc<str>),
}

/// Longest first key whose length [`SpaceWrites::of_sorted_keys`] takes
/// for every key's when it reserves room, in bytes.
const MAX_GUESSED_KEY_BYTES: usize = 64;

/// The keys one commit wrote in one key space.
///
/// The keys are copied back to back into one buffer rather than shared
/// with the writing transaction's buffer: a bulk load's million keys are
/// then freed with that buffer, at its own commit, and a footprint is two
/// allocations to free. (Shared per-key allocations were freed by the
/// first small commit after the bulk load, and glibc's allocator folds a
/// million freed small chunks at the next large allocation: about 0.3 s
/// of that one commit.)
#[derive(Debug, Default, Clone)]
pub(crate) struct SpaceWrites {
    /// Every key of the space changed (the table was dropped or recreated).
    pub whole: bool,
    /// The keys' bytes, back to back, strictly ascending.
    bytes: Vec<u8>,
    /// Where each key ends in `bytes` (non-decreasing).
    ends: Vec<usize>,
}

impl SpaceWrites {
    /// Writes of the keys `keys` yields, which must be strictly ascending.
    pub fn of_sorted_keys<K: AsRef<[u8]>>(whole: bool, keys: impl Iterator<Item = K>) -> Self {
        let (lower, upper) = keys.size_hint();
        let count = upper.unwrap_or(lower);
        let mut writes = SpaceWrites {
            whole,
            bytes: Vec::new(),
            ends: Vec::with_capacity(count),
        };
        let mut keys = keys.peekable();
        // Keys of one table are often of one length: room for `count` of
        // the first one's when it is short (more is grown as usual).
        if let Some(first) = keys.peek() {
            let len = first.as_ref().len();
            if len <= MAX_GUESSED_KEY_BYTES {
                writes.bytes.reserve(len.saturating_mul(count));
            }
        }
        for key in keys {
            writes.bytes.extend_from_slice(key.as_ref());
            writes.ends.push(writes.bytes.len());
        }
        debug_assert!(
            (1..writes.len()).all(|i| writes.key(i - 1) < writes.key(i)),
            "keys not ascending"
        );
        writes
    }

    /// Adds `key` (kept sorted and distinct; for the few catalog keys).
    pub fn add_key(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        if let Err(at) = self.search(key) {
            let start = self.start(at);
            self.bytes.splice(start..start, key.iter().copied());
            self.ends.insert(at, start);
            for end in &mut self.ends[at..] {
                *end += key.len();
            }
        }
    }

    /// Number of keys.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where key `index` starts in `bytes`.
    fn start(&self, index: usize) -> usize {
        index.checked_sub(1).map_or(0, |before| self.ends[before])
    }

    /// Key `index` (`index < len()`).
    fn key(&self, index: usize) -> &[u8] {
        &self.bytes[self.start(index)..self.ends[index]]
    }

    /// The first index whose key does not satisfy `below` (keys satisfying
    /// it must come first).
    fn partition_point(&self, below: impl Fn(&[u8]) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if below(self.key(mid)) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// `Ok(index)` of `key`, or `Err(index)` where it would go.
    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let at = self.partition_point(|k| k < key);
        if at < self.len() && self.key(at) == key {
            Ok(at)
        } else {
            Err(at)
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.search(key).is_ok()
    }

    fn meets_key(&self, key: &[u8]) -> bool {
        self.whole || self.contains(key)
    }

    fn meets_range(&self, lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
        if self.whole {
            return true;
        }
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) =
            (lower, upper)
        {
            // An inverted range holds nothing (BTreeSet::range would panic).
            if l > u
                || (l == u && !matches!((lower, upper), (Bound::Included(_), Bound::Included(_))))
            {
                return false;
            }
        }
        // The first key at or past the lower bound, then the upper bound.
        let start = self.partition_point(|k| match lower {
            Bound::Included(l) => k < &l[..],
            Bound::Excluded(l) => k <= &l[..],
            Bound::Unbounded => false,
        });
        (start < self.len())
            .then(|| self.key(start))
            .is_some_and(|k| match upper {
                Bound::Included(u) => k <= &u[..],
                Bound::Excluded(u) => k < &u[..],
                Bound::Unbounded => true,
            })
    }
}

/// Everything one commit wrote.
pub(crate) type CommitFootprint = BTreeMap<KeySpace, SpaceWrites>;

/// One read a SERIALIZABLE transaction depends on.
#[derive(Debug, Clone)]
pub(crate) enum ReadDependency {
    /// The presence and value of one key.
    Key(Vec<u8>),
    /// Every key in a range (so a later insert into it is a phantom).
    Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
}

/// The reads of one transaction, per key space.
#[derive(Debug, Default)]
pub(crate) struct ReadSet {
    reads: BTreeMap<KeySpace, Vec<ReadDependency>>,
}

/// Bound on reads remembered per key space before they are widened into one
/// whole-space read (keeps validation cost and memory bounded).
const MAX_READS_PER_SPACE: usize = 100_000;

impl ReadSet {
    /// The reads of `space`, created empty on first use.
    fn space_reads(&mut self, space: &KeySpace) -> &mut Vec<ReadDependency> {
        // Cloning a space is cheap: a unit or a shared name.
        self.reads.entry(space.clone()).or_default()
    }

    pub fn record(&mut self, space: &KeySpace, read: ReadDependency) {
        let reads = self.space_reads(space);
        if reads.len() >= MAX_READS_PER_SPACE {
            widen(reads);
            return;
        }
        reads.push(read);
    }

    /// Records a read of one key; a repeat of the space's last read (a table
    /// opened once per statement, a key read twice in a row) is not stored
    /// again, and the key is copied only when stored.
    pub fn record_key(&mut self, space: &KeySpace, key: &[u8]) {
        let reads = self.space_reads(space);
        match reads.last() {
            Some(ReadDependency::Key(last)) if last.as_slice() == key => return,
            // The last read covers the whole space (a scan, or widened).
            Some(ReadDependency::Range(Bound::Unbounded, Bound::Unbounded)) => return,
            _ => {}
        }
        if reads.len() >= MAX_READS_PER_SPACE {
            widen(reads);
            return;
        }
        reads.push(ReadDependency::Key(key.to_vec()));
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Reads recorded in `space`.
    #[cfg(test)]
    pub fn reads_in(&self, space: &KeySpace) -> usize {
        self.reads.get(space).map_or(0, Vec::len)
    }
}

/// Replaces every read of a space by one read of the whole space.
fn widen(reads: &mut Vec<ReadDependency>) {
    reads.clear();
    reads.push(ReadDependency::Range(Bound::Unbounded, Bound::Unbounded));
}

/// Whether two key sets share a key: probes the larger set with the
/// smaller one's keys.
fn keys_meet(a: &SpaceWrites, b: &SpaceWrites) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    (0..small.len()).any(|index| large.contains(small.key(index)))
}

/// Footprints of recent commits, oldest first.
#[derive(Debug, Default)]
pub(crate) struct CommitLog {
    entries: VecDeque<(CommitEpoch, Arc<CommitFootprint>)>,
}

/// Why a commit must not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConflictReason {
    pub epoch: CommitEpoch,
    pub space: KeySpace,
    pub what: &'static str,
}

impl CommitLog {
    pub fn record(&mut self, epoch: CommitEpoch, footprint: CommitFootprint) {
        debug_assert!(self.entries.back().is_none_or(|(last, _)| *last < epoch));
        self.entries.push_back((epoch, Arc::new(footprint)));
    }

    /// Drops footprints no live transaction can be checked against: those at
    /// or below the oldest live snapshot.
    pub fn prune(&mut self, oldest_live: Option<CommitEpoch>) {
        let keep_from = match oldest_live {
            None => self.entries.len(),
            Some(oldest) => self.entries.partition_point(|(epoch, _)| *epoch <= oldest),
        };
        self.entries.drain(..keep_from);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn after(
        &self,
        snapshot: CommitEpoch,
    ) -> impl Iterator<Item = &(CommitEpoch, Arc<CommitFootprint>)> {
        let start = self
            .entries
            .partition_point(|(epoch, _)| *epoch <= snapshot);
        self.entries.range(start..)
    }

    /// First commit after `snapshot` whose writes meet `writes`.
    pub fn write_conflict(
        &self,
        snapshot: CommitEpoch,
        writes: &CommitFootprint,
    ) -> Option<ConflictReason> {
        for (epoch, theirs) in self.after(snapshot) {
            for (space, mine) in writes {
                let Some(their_space) = theirs.get(space) else {
                    continue;
                };
                let meets = mine.whole || their_space.whole || keys_meet(mine, their_space);
                if meets {
                    return Some(ConflictReason {
                        epoch: *epoch,
                        space: space.clone(),
                        what: "write-write",
                    });
                }
            }
        }
        None
    }

    /// First commit after `snapshot` that wrote something `reads` depends on.
    pub fn read_conflict(&self, snapshot: CommitEpoch, reads: &ReadSet) -> Option<ConflictReason> {
        for (epoch, theirs) in self.after(snapshot) {
            for (space, dependencies) in &reads.reads {
                let Some(their_space) = theirs.get(space) else {
                    continue;
                };
                let meets = dependencies.iter().any(|read| match read {
                    ReadDependency::Key(key) => their_space.meets_key(key),
                    ReadDependency::Range(lower, upper) => their_space.meets_range(lower, upper),
                });
                if meets {
                    return Some(ConflictReason {
                        epoch: *epoch,
                        space: space.clone(),
                        what: "read-write (serialization)",
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> KeySpace {
        KeySpace::Table("t".into())
    }

    fn footprint(keys: &[&[u8]]) -> CommitFootprint {
        let mut writes = SpaceWrites::default();
        for key in keys {
            writes.add_key(Arc::from(*key));
        }
        CommitFootprint::from([(space(), writes)])
    }

    #[test]
    fn prune_drops_only_footprints_at_or_below_the_oldest_snapshot() {
        let mut log = CommitLog::default();
        log.record(CommitEpoch(3), footprint(&[b"a", b"b"]));
        log.record(CommitEpoch(5), footprint(&[b"c"]));
        log.record(CommitEpoch(8), footprint(&[b"d"]));
        log.prune(Some(CommitEpoch(2)));
        assert_eq!(log.len(), 3);
        log.prune(Some(CommitEpoch(5)));
        assert_eq!(log.len(), 1);
        assert!(log
            .write_conflict(CommitEpoch(5), &footprint(&[b"d"]))
            .is_some());
        log.prune(None);
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn keys_are_stored_sorted_and_distinct_and_found_back() {
        let mut writes = SpaceWrites::of_sorted_keys(false, [&b"b"[..], b"bb", b"d"].into_iter());
        writes.add_key(b"a");
        writes.add_key(b"c");
        writes.add_key(b"bb");
        writes.add_key(b"");
        let keys: Vec<&[u8]> = (0..writes.len()).map(|i| writes.key(i)).collect();
        assert_eq!(keys, [&b""[..], b"a", b"b", b"bb", b"c", b"d"]);
        assert!(writes.contains(b"bb") && writes.contains(b""));
        assert!(!writes.contains(b"ba") && !writes.contains(b"e"));
    }

    #[test]
    fn only_commits_after_the_snapshot_conflict() {
        let mut log = CommitLog::default();
        log.record(CommitEpoch(5), footprint(&[b"a"]));
        log.record(CommitEpoch(7), footprint(&[b"b"]));
        assert!(log
            .write_conflict(CommitEpoch(5), &footprint(&[b"a"]))
            .is_none());
        let reason = log
            .write_conflict(CommitEpoch(6), &footprint(&[b"b"]))
            .unwrap();
        assert_eq!(reason.epoch, CommitEpoch(7));
        log.prune(Some(CommitEpoch(7)));
        assert_eq!(log.len(), 0);
    }

    #[test]
    fn ranges_catch_phantoms_and_respect_bounds() {
        let mut log = CommitLog::default();
        log.record(CommitEpoch(2), footprint(&[b"m"]));
        let mut reads = ReadSet::default();
        reads.record(
            &space(),
            ReadDependency::Range(
                Bound::Included(b"a".to_vec()),
                Bound::Excluded(b"m".to_vec()),
            ),
        );
        assert!(log.read_conflict(CommitEpoch(1), &reads).is_none());
        reads.record(
            &space(),
            ReadDependency::Range(Bound::Excluded(b"l".to_vec()), Bound::Unbounded),
        );
        assert!(log.read_conflict(CommitEpoch(1), &reads).is_some());
    }

    #[test]
    fn repeated_key_reads_are_stored_once_and_whole_reads_absorb_keys() {
        let mut reads = ReadSet::default();
        reads.record_key(&space(), b"a");
        reads.record_key(&space(), b"a");
        reads.record_key(&space(), b"b");
        assert_eq!(reads.reads_in(&space()), 2);
        reads.record(
            &space(),
            ReadDependency::Range(Bound::Unbounded, Bound::Unbounded),
        );
        reads.record_key(&space(), b"c");
        assert_eq!(reads.reads_in(&space()), 3);
        let mut log = CommitLog::default();
        log.record(CommitEpoch(2), footprint(&[b"c"]));
        assert!(log.read_conflict(CommitEpoch(1), &reads).is_some());
    }

    #[test]
    fn key_reads_past_the_limit_widen_to_the_whole_space() {
        let mut reads = ReadSet::default();
        for i in 0..=MAX_READS_PER_SPACE as u32 {
            reads.record_key(&space(), &i.to_be_bytes());
        }
        assert_eq!(reads.reads_in(&space()), 1);
        let mut log = CommitLog::default();
        log.record(CommitEpoch(2), footprint(&[b"anything"]));
        assert!(log.read_conflict(CommitEpoch(1), &reads).is_some());
    }

    fn bound_of(b: Option<(u8, bool)>) -> Bound<Vec<u8>> {
        match b {
            None => Bound::Unbounded,
            Some((k, true)) => Bound::Included(vec![k]),
            Some((k, false)) => Bound::Excluded(vec![k]),
        }
    }

    proptest::proptest! {
        /// The sorted key list answers like a `BTreeSet` of the same keys.
        #[test]
        fn sorted_keys_meet_like_a_set(
            keys in proptest::collection::btree_set(proptest::prelude::any::<u8>(), 0..40),
            probes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            ranges in proptest::collection::vec(
                (proptest::option::of((proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>())),
                 proptest::option::of((proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()))),
                0..20,
            ),
        ) {
            let model: std::collections::BTreeSet<Vec<u8>> = keys.iter().map(|&k| vec![k]).collect();
            let writes = SpaceWrites::of_sorted_keys(false, model.iter().map(|k| Arc::from(&k[..])));
            for p in probes {
                proptest::prop_assert_eq!(writes.meets_key(&[p]), model.contains(&vec![p]));
            }
            for (lo, hi) in ranges {
                let (lo, hi) = (bound_of(lo), bound_of(hi));
                let inverted = match (&lo, &hi) {
                    (Bound::Included(l), Bound::Included(u)) => l > u,
                    (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => l >= u,
                    _ => false,
                };
                let want = !inverted && model.range((lo.clone(), hi.clone())).next().is_some();
                proptest::prop_assert_eq!(writes.meets_range(&lo, &hi), want, "{:?}..{:?}", lo, hi);
            }
        }
    }

    #[test]
    fn inverted_ranges_meet_nothing() {
        let writes = SpaceWrites::of_sorted_keys(false, std::iter::once(Arc::from(&b"k"[..])));
        assert!(!writes.meets_range(
            &Bound::Included(b"z".to_vec()),
            &Bound::Included(b"a".to_vec())
        ));
        assert!(!writes.meets_range(
            &Bound::Excluded(b"k".to_vec()),
            &Bound::Excluded(b"k".to_vec())
        ));
        assert!(writes.meets_range(
            &Bound::Included(b"k".to_vec()),
            &Bound::Included(b"k".to_vec())
        ));
    }
}
