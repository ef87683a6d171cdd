//! `BatchWriter` against one ordinary `insert`/`remove` per key: batches
//! of writes (sorted like a transaction's buffer, or shuffled) must leave
//! byte-identical pages, the same header, and the contents of a
//! `BTreeMap` model; the fast path must actually be taken on sorted loads.
//! Sorted batches also go through `BatchWriter::apply_sorted` (a third
//! tree), which must leave the same pages again.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::mem::MemPages;
use crate::btree::*;

/// One write: key id, value (`None`: remove).
type Write = (u16, Option<(usize, u8)>);

fn key(id: u16) -> Vec<u8> {
    if id.is_multiple_of(97) {
        // Long keys (overflowing at small pages) take the slow path.
        let mut k = vec![b'k'; 900 + usize::from(id % 3) * 200];
        k.extend_from_slice(&id.to_be_bytes());
        k
    } else {
        format!("key{id:05}").into_bytes()
    }
}

fn value((len, seed): (usize, u8)) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

fn write_gen() -> impl Strategy<Value = Write> {
    let value = prop_oneof![
        8 => (0usize..60, any::<u8>()),
        2 => (200usize..900, any::<u8>()),
        1 => (2000usize..6000, any::<u8>()),
    ];
    (
        0u16..3000,
        prop_oneof![3 => value.prop_map(Some), 1 => Just(None)],
    )
}

fn fail(e: crate::Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Applies `batches` both ways and compares after each batch.
fn run(page_len: usize, batches: &[(Vec<Write>, bool)]) -> Result<u64, TestCaseError> {
    let mut fast = MemPages::new(page_len);
    let mut slow = MemPages::new(page_len);
    let mut bulk = MemPages::new(page_len);
    let (mut fast_h, mut slow_h) = (TreeHeader::EMPTY, TreeHeader::EMPTY);
    let mut bulk_h = TreeHeader::EMPTY;
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut fast_writes = 0;
    for (writes, sorted) in batches {
        let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .iter()
            .map(|&(k, v)| (key(k), v.map(value)))
            .collect();
        if *sorted {
            // A transaction's buffer: last write per key, in key order.
            let buffer: BTreeMap<_, _> = batch.into_iter().collect();
            batch = buffer.into_iter().collect();
        }
        let mut bulk_writer = BatchWriter::new(page_len).map_err(fail)?;
        if *sorted {
            let entries = batch.iter().map(|(k, v)| (&k[..], v.as_deref()));
            bulk_writer
                .apply_sorted(&mut bulk, &mut bulk_h, entries)
                .map_err(fail)?;
        }
        let mut writer = BatchWriter::new(page_len).map_err(fail)?;
        for (k, v) in &batch {
            match v {
                Some(v) => {
                    if !*sorted {
                        bulk_writer
                            .insert(&mut bulk, &mut bulk_h, k, v)
                            .map_err(fail)?;
                    }
                    writer.insert(&mut fast, &mut fast_h, k, v).map_err(fail)?;
                    insert(&mut slow, &mut slow_h, k, v).map_err(fail)?;
                    model.insert(k.clone(), v.clone());
                }
                None => {
                    if !*sorted {
                        bulk_writer
                            .remove(&mut bulk, &mut bulk_h, k)
                            .map_err(fail)?;
                    }
                    writer.remove(&mut fast, &mut fast_h, k).map_err(fail)?;
                    remove(&mut slow, &mut slow_h, k).map_err(fail)?;
                    model.remove(k);
                }
            }
        }
        fast_writes += writer.fast_writes();
        prop_assert_eq!(fast_h, slow_h);
        prop_assert_eq!(bulk_h, slow_h);
        prop_assert_eq!(fast_h.len, model.len() as u64);
        prop_assert_eq!(fast.ids(), slow.ids());
        prop_assert_eq!(bulk.ids(), slow.ids());
        for id in fast.ids() {
            prop_assert!(fast.raw(id) == slow.raw(id), "page {} differs", id);
            prop_assert!(bulk.raw(id) == slow.raw(id), "page {} differs (bulk)", id);
        }
        check_tree(&fast, &fast_h).map_err(fail)?;
        let all: Vec<_> = iter(&fast, &fast_h)
            .map_err(fail)?
            .map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec())))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        prop_assert!(all.iter().map(|(k, v)| (k, v)).eq(model.iter()));
    }
    Ok(fast_writes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn batches_match_one_call_per_key_4k(
        batches in prop::collection::vec(
            (prop::collection::vec(write_gen(), 0..400), any::<bool>()), 1..6)
    ) {
        run(4080, &batches)?;
    }

    #[test]
    fn batches_match_one_call_per_key_small_pages(
        batches in prop::collection::vec(
            (prop::collection::vec(write_gen(), 0..300), any::<bool>()), 1..6)
    ) {
        run(512, &batches)?;
    }
}

#[test]
fn a_sorted_load_mostly_skips_the_descent() {
    let writes: Vec<Write> = (1..3000u16)
        .filter(|id| !id.is_multiple_of(97))
        .map(|id| (id, Some((40, id as u8))))
        .collect();
    let removals: Vec<Write> = (1..3000u16)
        .filter(|id| !id.is_multiple_of(97) && id.is_multiple_of(3))
        .map(|id| (id, None))
        .collect();
    let fast = run(4080, &[(writes, true), (removals, true)]).expect("batches agree");
    // About 4000 writes; only page splits and refills take the slow path.
    assert!(fast > 3_500, "{fast} writes took the fast path");
}

#[test]
fn an_ordered_load_starts_new_leaves_without_a_descent() {
    // Small pages: many leaves and several branch levels, so the separator
    // of a new rightmost leaf also splits branches and grows the root.
    let writes: Vec<Write> = (1..3000u16)
        .filter(|id| !id.is_multiple_of(97))
        .map(|id| (id, Some((20, id as u8))))
        .collect();
    let n = writes.len() as u64;
    let fast = run(512, &[(writes, true)]).expect("batches agree");
    // Only the writes into the one-leaf tree's root split take the slow path.
    assert!(fast + 2 >= n, "{fast} of {n} writes took the fast path");
}

#[test]
fn middle_splits_go_up_the_cached_path_without_a_descent() {
    // Small pages, several branch levels: the odd keys land between the
    // loaded even ones, splitting leaves in the middle (and branches above
    // them); every such write stays on the fast path and leaves the same
    // pages as one ordinary insert per key.
    let ids = |odd: u16| {
        (1..3000u16)
            .filter(move |id| !id.is_multiple_of(97) && id % 2 == odd)
            .map(|id| (id, Some((20, id as u8))))
            .collect::<Vec<Write>>()
    };
    let (evens, odds) = (ids(0), ids(1));
    let n = (evens.len() + odds.len()) as u64;
    for sorted in [true, false] {
        let fast = run(512, &[(evens.clone(), true), (odds.clone(), sorted)]).expect("agree");
        // Only the writes into the one-leaf tree's root split take the slow path.
        assert!(fast + 2 >= n, "{fast} of {n} writes took the fast path");
    }
}

#[test]
fn apply_sorted_appends_an_ordered_load_in_the_open_leaf() {
    let page_len = 4080;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (1..3000u16)
        .filter(|id| !id.is_multiple_of(97))
        .map(|id| (key(id), value((40, id as u8))))
        .collect();
    let mut pages = MemPages::new(page_len);
    let mut h = TreeHeader::EMPTY;
    let mut writer = BatchWriter::new(page_len).expect("writer");
    let sorted = entries.iter().map(|(k, v)| (&k[..], Some(&v[..])));
    writer
        .apply_sorted(&mut pages, &mut h, sorted)
        .expect("apply");
    assert_eq!(h.len, entries.len() as u64);
    check_tree(&pages, &h).expect("a valid tree");
    // Only the root leaf's first insert and each new leaf take another path.
    let n = entries.len() as u64;
    assert!(
        writer.fast_writes() + 100 >= n,
        "{} of {n}",
        writer.fast_writes()
    );
    // A removal and a key inside the loaded range stop the run; the rest
    // is applied as usual.
    let more = [
        (key(5), None),
        (key(7), Some(value((10, 1)))),
        (key(3001), Some(value((10, 2)))),
    ];
    let sorted = more.iter().map(|(k, v)| (&k[..], v.as_deref()));
    writer
        .apply_sorted(&mut pages, &mut h, sorted)
        .expect("apply");
    assert_eq!(h.len, n);
    assert_eq!(get(&pages, &h, &key(5)).expect("get"), None);
    let seven = get(&pages, &h, &key(7)).expect("get").map(|v| v.to_vec());
    assert_eq!(seven, Some(value((10, 1))));
    check_tree(&pages, &h).expect("a valid tree");
}

#[test]
fn too_large_keys_are_refused_as_by_insert() {
    let mut pages = MemPages::new(65_520);
    let mut h = TreeHeader::EMPTY;
    let mut writer = BatchWriter::new(65_520).expect("writer");
    writer
        .insert(&mut pages, &mut h, b"a", b"1")
        .expect("insert");
    let long = vec![7u8; MAX_KEY_BYTES + 1];
    assert!(matches!(
        writer.insert(&mut pages, &mut h, &long, b"v"),
        Err(crate::Error::TooLarge { .. })
    ));
    assert_eq!(h.len, 1);
}
