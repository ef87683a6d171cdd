//! A transaction's buffered writes to one table: key → new value (`None`:
//! removed), ordered by key.
//!
//! Writes in ascending key order — bulk loads, and updates that follow a
//! scan — are the common case, and the worst one for a `BTreeMap`: every
//! insert of a new largest key compares it with every key of each node on
//! the right edge. So the buffer keeps two parts: `map`, a `BTreeMap`, and
//! `tail`, a sorted `Vec` of keys all greater than every key in `map`. A key
//! beyond the last one is pushed onto `tail` (one comparison); a key inside
//! `tail`'s span is found by binary search; a new key inside that span
//! moves `tail` into `map` first (in bulk when it is large). Iteration is
//! `map` then `tail`, which is key order.

use std::collections::{btree_map, BTreeMap};
use std::iter::Chain;
use std::ops::Bound;
use std::slice;
use std::sync::Arc;

use crate::error::Result;

/// A buffered value: the new bytes, or `None` for a removal.
pub(crate) type Buffered = Option<Arc<[u8]>>;

type TailEntry = (Arc<[u8]>, Buffered);
type TailFn<'a> = fn(&'a TailEntry) -> (&'a Arc<[u8]>, &'a Buffered);
type TailIter<'a> = std::iter::Map<slice::Iter<'a, TailEntry>, TailFn<'a>>;

/// Buffered entries of a key range, in key order from either end.
pub(crate) type BufferRange<'a> = Chain<btree_map::Range<'a, Arc<[u8]>, Buffered>, TailIter<'a>>;

/// What [`WriteBuffer::put`] found.
#[derive(Debug)]
pub(crate) enum Put<T> {
    /// The key was buffered; its previous buffered value.
    Replaced(Buffered),
    /// The key was not buffered; what the `on_vacant` callback returned.
    Added(T),
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteBuffer {
    map: BTreeMap<Arc<[u8]>, Buffered>,
    /// Strictly ascending; every key greater than every key of `map`.
    tail: Vec<TailEntry>,
}

fn tail_pair(entry: &TailEntry) -> (&Arc<[u8]>, &Buffered) {
    (&entry.0, &entry.1)
}

impl WriteBuffer {
    /// Whether no key is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty() && self.tail.is_empty()
    }

    /// Number of buffered keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len() + self.tail.len()
    }

    /// Forgets every buffered key.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.tail.clear();
    }

    /// Whether `key` falls inside the tail's span (at or after its first key).
    fn in_tail_span(&self, key: &[u8]) -> bool {
        self.tail
            .first()
            .is_some_and(|(first, _)| key >= &first[..])
    }

    /// Position of `key` in the tail (`Err`: where it would go).
    fn tail_search(&self, key: &[u8]) -> std::result::Result<usize, usize> {
        self.tail.binary_search_by(|(k, _)| k[..].cmp(key))
    }

    /// Whether `key` is greater than every buffered key.
    fn appends(&self, key: &[u8]) -> bool {
        match self.tail.last() {
            Some((last, _)) => key > &last[..],
            None => self
                .map
                .last_key_value()
                .is_none_or(|(last, _)| key > &last[..]),
        }
    }

    /// The buffered value of `key`, if it is buffered.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Buffered> {
        if self.in_tail_span(key) {
            return self.tail_search(key).ok().map(|i| &self.tail[i].1);
        }
        self.map.get(key)
    }

    /// Buffers `value` under `key` with one search. When the key was not
    /// buffered, `on_vacant(key)` runs first (an error leaves the buffer
    /// unchanged) and its result is returned.
    pub(crate) fn put<T>(
        &mut self,
        key: Arc<[u8]>,
        value: Buffered,
        on_vacant: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Put<T>> {
        if self.appends(&key) {
            let found = on_vacant(&key)?;
            self.tail.push((key, value));
            return Ok(Put::Added(found));
        }
        if self.in_tail_span(&key) {
            match self.tail_search(&key) {
                Ok(i) => {
                    let previous = std::mem::replace(&mut self.tail[i].1, value);
                    return Ok(Put::Replaced(previous));
                }
                // A new key inside the tail's span: the tail joins the map.
                Err(_) => self.settle(),
            }
        }
        match self.map.entry(key) {
            btree_map::Entry::Occupied(mut slot) => Ok(Put::Replaced(slot.insert(value))),
            btree_map::Entry::Vacant(slot) => {
                let found = on_vacant(slot.key())?;
                slot.insert(value);
                Ok(Put::Added(found))
            }
        }
    }

    /// Removes `key` from the buffer (undoing its first buffered write).
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Buffered> {
        if self.in_tail_span(key) {
            return self.tail_search(key).ok().map(|i| self.tail.remove(i).1);
        }
        self.map.remove(key)
    }

    /// Moves the tail into the map: in bulk when it is large compared with
    /// the map (`append` rebuilds both in linear time), else key by key.
    fn settle(&mut self) {
        if self.tail.len() * 8 >= self.map.len() {
            let mut moved: BTreeMap<_, _> = self.tail.drain(..).collect();
            self.map.append(&mut moved);
        } else {
            for (key, value) in self.tail.drain(..) {
                self.map.insert(key, value);
            }
        }
    }

    /// Every buffered entry in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Buffered)> {
        self.map.iter().chain(self.tail.iter().map(tail_pair))
    }

    /// Every buffered key in key order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.iter().map(|(key, _)| key)
    }

    /// Entries with keys in the bounds, which must not be inverted (the
    /// caller checks: `BTreeMap::range` panics on them).
    pub(crate) fn range<'a>(&'a self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> BufferRange<'a> {
        let start = self.tail.partition_point(|(k, _)| match lower {
            Bound::Included(l) => &k[..] < l,
            Bound::Excluded(l) => &k[..] <= l,
            Bound::Unbounded => false,
        });
        let end = self.tail.partition_point(|(k, _)| match upper {
            Bound::Included(u) => &k[..] <= u,
            Bound::Excluded(u) => &k[..] < u,
            Bound::Unbounded => true,
        });
        let tail = &self.tail[start..end.max(start)];
        self.map
            .range::<[u8], _>((lower, upper))
            .chain(tail.iter().map(tail_pair as TailFn<'a>))
    }

    /// Checks the invariants (tests and debug builds).
    #[cfg(test)]
    fn check(&self) -> bool {
        let sorted = self.tail.windows(2).all(|w| w[0].0 < w[1].0);
        let after_map = match (self.map.last_key_value(), self.tail.first()) {
            (Some((last, _)), Some((first, _))) => last < first,
            _ => true,
        };
        sorted && after_map
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Bound;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{Put, WriteBuffer};

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, Option<u8>),
        Remove(u8),
        Range(Option<(u8, bool)>, Option<(u8, bool)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u8>(), any::<Option<u8>>()).prop_map(|(k, v)| Op::Put(k, v)),
            // Ascending runs are the case the tail is for.
            3 => (200u8..=255, any::<Option<u8>>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => any::<u8>().prop_map(Op::Remove),
            2 => (any::<Option<(u8, bool)>>(), any::<Option<(u8, bool)>>())
                .prop_map(|(l, u)| Op::Range(l, u)),
        ]
    }

    fn bound(b: &Option<(u8, bool)>) -> Bound<Vec<u8>> {
        match *b {
            None => Bound::Unbounded,
            Some((k, true)) => Bound::Included(vec![k]),
            Some((k, false)) => Bound::Excluded(vec![k]),
        }
    }

    fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        b.as_ref().map(|k| &k[..])
    }

    fn inverted(l: &Bound<Vec<u8>>, u: &Bound<Vec<u8>>) -> bool {
        match (l, u) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a >= b
            }
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(ops in prop::collection::vec(op(), 0..300)) {
            let mut buffer = WriteBuffer::default();
            let mut model: BTreeMap<Vec<u8>, Option<Arc<[u8]>>> = BTreeMap::new();
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        let value: Option<Arc<[u8]>> = v.map(|v| Arc::from(&[v][..]));
                        let key: Arc<[u8]> = Arc::from(&[*k][..]);
                        let mut vacant_called = false;
                        let put = buffer
                            .put(key, value.clone(), |seen| {
                                vacant_called = true;
                                assert_eq!(seen, &[*k][..]);
                                Ok(())
                            })
                            .unwrap();
                        match (put, model.insert(vec![*k], value)) {
                            (Put::Replaced(got), Some(want)) => prop_assert_eq!(got, want),
                            (Put::Added(()), None) => prop_assert!(vacant_called),
                            (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                        }
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(buffer.remove(&[*k]), model.remove(&vec![*k]));
                    }
                    Op::Range(l, u) => {
                        let (l, u) = (bound(l), bound(u));
                        if inverted(&l, &u) {
                            continue;
                        }
                        let want: Vec<_> = model.range::<Vec<u8>, _>((l.clone(), u.clone())).collect();
                        let got: Vec<_> = buffer.range(as_ref(&l), as_ref(&u)).collect();
                        prop_assert_eq!(got.len(), want.len());
                        for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
                            prop_assert_eq!(&gk[..], &wk[..]);
                            prop_assert_eq!(gv, wv);
                        }
                        let back: Vec<_> = buffer.range(as_ref(&l), as_ref(&u)).rev().collect();
                        prop_assert_eq!(back.len(), want.len());
                    }
                }
                prop_assert!(buffer.check());
                prop_assert_eq!(buffer.len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(buffer.get(k), Some(v));
                }
            }
            let all: Vec<Vec<u8>> = buffer.keys().map(|k| k.to_vec()).collect();
            let want: Vec<Vec<u8>> = model.keys().cloned().collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn ascending_writes_stay_in_the_tail_and_an_error_changes_nothing() {
        let mut buffer = WriteBuffer::default();
        for k in 0u8..100 {
            buffer.put(Arc::from(&[k][..]), None, |_| Ok(())).unwrap();
        }
        assert_eq!((buffer.map.len(), buffer.tail.len()), (0, 100));
        let err = buffer.put(Arc::from(&[200u8][..]), None, |_| {
            Err::<(), _>(crate::Error::InvalidArgument("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(buffer.len(), 100);
        // A new key inside the tail's span moves the tail into the map.
        buffer
            .put(Arc::from(&[5u8, 1][..]), None, |_| Ok(()))
            .unwrap();
        assert_eq!((buffer.map.len(), buffer.tail.len()), (101, 0));
        assert!(buffer.check());
    }
}
