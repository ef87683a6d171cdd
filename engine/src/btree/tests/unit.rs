//! Example-based tests: basic operations, bulk loads and fill, limits, big
//! values, freeing, corruption.

use mmsb_wal::PageId;

use super::mem::MemPages;
use crate::btree::*;
use crate::Error;

fn key(i: u32) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

#[test]
fn smoke() {
    let mut pages = MemPages::new(4080);
    let mut h = TreeHeader::EMPTY;
    for i in 0..1000u32 {
        assert_eq!(
            insert(&mut pages, &mut h, &key(i), &i.to_le_bytes()).unwrap(),
            None
        );
    }
    check_tree(&pages, &h).unwrap();
    for i in 0..1000u32 {
        assert_eq!(
            &*get(&pages, &h, &key(i)).unwrap().unwrap(),
            &i.to_le_bytes()
        );
    }
    for i in 0..1000u32 {
        assert!(remove(&mut pages, &mut h, &key(i)).unwrap().is_some());
    }
    assert_eq!(h, TreeHeader::EMPTY);
    assert_eq!(pages.live_pages(), 0);
}

/// Thousands of random operations on tiny pages (deep trees: every split,
/// merge, redistribution and rotation path), checked against a `BTreeMap`.
#[test]
fn stress_deep_trees_against_model() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    for (seed, page_len) in [(1u64, 256usize), (2, 256), (3, 512), (4, 4080)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut pages = MemPages::new(page_len);
        let mut h = TreeHeader::EMPTY;
        let mut model = BTreeMap::new();
        for round in 0..3 {
            // Grow, then shrink to a few percent, so every level refills and drains.
            for _ in 0..3000 {
                let k: Vec<u8> = if rng.gen_bool(0.05) {
                    let mut k = vec![b'q'; rng.gen_range(100..2048)];
                    let at = rng.gen_range(0..k.len());
                    k[at] = rng.gen();
                    k
                } else {
                    let len = rng.gen_range(1..24);
                    (0..len).map(|_| rng.gen_range(b'a'..b'f')).collect()
                };
                let vlen = if rng.gen_bool(0.1) {
                    rng.gen_range(0..5000)
                } else {
                    rng.gen_range(0..60)
                };
                let v = vec![rng.gen::<u8>(); vlen];
                assert_eq!(
                    insert(&mut pages, &mut h, &k, &v).unwrap(),
                    model.insert(k, v)
                );
            }
            check_tree(&pages, &h).unwrap();
            let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
            for (i, k) in keys.iter().enumerate() {
                if (i + round) % 20 != 0 {
                    assert_eq!(remove(&mut pages, &mut h, k).unwrap(), model.remove(k));
                }
                if i % 500 == 0 {
                    check_tree(&pages, &h).unwrap();
                }
            }
            let stats = check_tree(&pages, &h).unwrap();
            assert_eq!(stats.total_pages() as usize, pages.live_pages());
            assert_eq!(h.len, model.len() as u64);
        }
        let got: Vec<_> = iter(&pages, &h)
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec())).unwrap())
            .collect();
        assert!(got.iter().map(|(k, v)| (k, v)).eq(model.iter()));
        free_tree(&mut pages, &mut h).unwrap();
        assert_eq!(pages.live_pages(), 0);
    }
}

/// Loads `keys` in the given order with 16-byte values; returns the stats.
fn bulk_load(
    page_len: usize,
    keys: impl Iterator<Item = u32>,
) -> (MemPages, TreeHeader, TreeStats) {
    let mut pages = MemPages::new(page_len);
    let mut h = TreeHeader::EMPTY;
    for i in keys {
        insert(&mut pages, &mut h, &i.to_be_bytes(), &[i as u8; 16]).unwrap();
    }
    let stats = check_tree(&pages, &h).unwrap();
    assert_eq!(stats.total_pages() as usize, pages.live_pages());
    (pages, h, stats)
}

#[test]
fn bulk_loads_in_key_order_fill_pages() {
    const N: u32 = 100_000;
    for page_len in [4080, 65520] {
        for (name, reverse) in [("sequential", false), ("reverse", true)] {
            let keys: Box<dyn Iterator<Item = u32>> = if reverse {
                Box::new((0..N).rev())
            } else {
                Box::new(0..N)
            };
            let (pages, h, stats) = bulk_load(page_len, keys);
            eprintln!(
                "{name} bulk load of {N} entries, page_len {page_len}: height {}, {} leaves, \
                 leaf fill {:.3}, branch fill {:.3}",
                stats.height,
                stats.leaf_pages,
                stats.leaf_fill(),
                stats.branch_fill()
            );
            assert_eq!(stats.entries, u64::from(N));
            // Ascending loads append at the tree's right edge and leave
            // about 1/8 of each leaf free; descending ones fill leaves.
            let fill = stats.leaf_fill();
            if reverse {
                assert!(fill > 0.95, "{name} leaf fill {fill}");
            } else {
                assert!((0.80..=0.876).contains(&fill), "{name} leaf fill {fill}");
            }
            let got = get(&pages, &h, &77_777u32.to_be_bytes()).unwrap().unwrap();
            assert!(got.is_borrowed());
            assert_eq!(&*got, &[77_777u32 as u8; 16]);
        }
    }
}

#[test]
fn random_inserts_after_an_ordered_load_rarely_split_leaves() {
    use rand::Rng;
    use rand::SeedableRng;
    // Even keys in order, then 10 % more entries at random odd keys: the
    // slack an ordered load leaves absorbs most of them without a split.
    let (mut pages, mut h, loaded) = bulk_load(4080, (0..40_000u32).map(|i| i * 2));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..4_000 {
        let i = rng.gen_range(0..40_000u32) * 2 + 1;
        insert(&mut pages, &mut h, &i.to_be_bytes(), &[i as u8; 16]).unwrap();
    }
    let stats = check_tree(&pages, &h).unwrap();
    eprintln!(
        "leaves {} -> {} after 10 % random inserts",
        loaded.leaf_pages, stats.leaf_pages
    );
    assert!(stats.entries > 43_000, "{stats:?}");
    // Full leaves would nearly all split (about +90 % leaves).
    assert!(
        stats.leaf_pages * 10 < loaded.leaf_pages * 12,
        "{} -> {} leaves",
        loaded.leaf_pages,
        stats.leaf_pages
    );
}

#[test]
fn random_order_load_fills_pages_reasonably() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut keys: Vec<u32> = (0..20_000).collect();
    keys.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let (_, _, stats) = bulk_load(4080, keys.into_iter());
    eprintln!(
        "random load of 20000 entries, page_len 4080: leaf fill {:.3}",
        stats.leaf_fill()
    );
    assert!(stats.leaf_fill() > 0.6, "leaf fill {}", stats.leaf_fill());
}

#[test]
fn deleting_most_entries_shrinks_the_tree() {
    let (mut pages, mut h, full) = bulk_load(4080, 0..20_000);
    for i in 0..20_000u32 {
        if i % 100 != 0 {
            remove(&mut pages, &mut h, &i.to_be_bytes())
                .unwrap()
                .unwrap();
        }
    }
    let stats = check_tree(&pages, &h).unwrap();
    assert_eq!(stats.entries, 200);
    assert!(stats.leaf_pages * 10 < full.leaf_pages, "{stats:?}");
    assert!(stats.height <= full.height);
    assert_eq!(stats.total_pages() as usize, pages.live_pages());
}

#[test]
fn limits_are_enforced() {
    let mut pages = MemPages::new(4080);
    let mut h = TreeHeader::EMPTY;
    let long_key = vec![1u8; MAX_KEY_BYTES + 1];
    assert!(matches!(
        insert(&mut pages, &mut h, &long_key, b"v"),
        Err(Error::TooLarge { what: "key", .. })
    ));
    // calloc'd, so the oversized value costs no real memory.
    let huge = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        insert(&mut pages, &mut h, b"k", &huge),
        Err(Error::TooLarge { what: "value", .. })
    ));
    assert_eq!(pages.live_pages(), 0);
    assert_eq!(get(&pages, &h, &long_key).unwrap(), None);
    assert_eq!(remove(&mut pages, &mut h, &long_key).unwrap(), None);
    // The largest key works at the smallest product page size, many times over.
    for i in 0..50u8 {
        let mut k = vec![7u8; MAX_KEY_BYTES];
        k[MAX_KEY_BYTES - 1] = i;
        insert(&mut pages, &mut h, &k, &[i; 3000]).unwrap();
    }
    let stats = check_tree(&pages, &h).unwrap();
    assert!(stats.height >= 2, "{stats:?}");
    let mut k = vec![7u8; MAX_KEY_BYTES];
    k[MAX_KEY_BYTES - 1] = 49;
    assert_eq!(&*get(&pages, &h, &k).unwrap().unwrap(), &[49u8; 3000]);
    free_tree(&mut pages, &mut h).unwrap();
    assert_eq!(pages.live_pages(), 0);
}

/// One huge value: written, read back, rewritten in place, removed.
fn big_value_round_trip(len: usize) {
    let mut pages = MemPages::new(4080);
    let mut h = TreeHeader::EMPTY;
    let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    insert(&mut pages, &mut h, b"small", b"x").unwrap();
    insert(&mut pages, &mut h, b"big", &value).unwrap();
    let got = get(&pages, &h, b"big").unwrap().unwrap();
    assert!(!got.is_borrowed());
    assert!(*got == value[..]);
    drop(got);
    let stats = check_tree(&pages, &h).unwrap();
    let live = pages.live_pages();
    assert_eq!(stats.total_pages() as usize, live);
    // Rewriting a same-length value reuses its pages.
    let mut changed = value.clone();
    changed[len / 2] ^= 0xFF;
    let old = insert(&mut pages, &mut h, b"big", &changed)
        .unwrap()
        .unwrap();
    assert!(old == value);
    assert_eq!(pages.live_pages(), live);
    assert!(*get(&pages, &h, b"big").unwrap().unwrap() == changed[..]);
    let removed = remove(&mut pages, &mut h, b"big").unwrap().unwrap();
    assert!(removed == changed);
    assert_eq!(pages.live_pages(), 1);
    check_tree(&pages, &h).unwrap();
}

#[test]
fn value_of_64_mib_round_trips() {
    big_value_round_trip(64 << 20);
}

#[test]
fn overflow_values_grow_shrink_and_go_inline() {
    let mut pages = MemPages::new(4080);
    let mut h = TreeHeader::EMPTY;
    for len in [10usize, 5000, 20_000, 4064, 4065, 100, 0, 9000] {
        insert(&mut pages, &mut h, b"k", &vec![len as u8; len]).unwrap();
        assert_eq!(
            &*get(&pages, &h, b"k").unwrap().unwrap(),
            &vec![len as u8; len][..]
        );
        let stats = check_tree(&pages, &h).unwrap();
        assert_eq!(stats.total_pages() as usize, pages.live_pages());
        assert_eq!(
            stats.overflow_pages as usize,
            if len > 1000 { len.div_ceil(4064) } else { 0 }
        );
    }
}

/// Bytes that differ between two snapshots of every page.
fn changed_bytes(before: &MemPages, after: &MemPages) -> Vec<(PageId, usize)> {
    let mut out = Vec::new();
    for id in after.ids() {
        let new = after.raw(id);
        let n = match before.ids().binary_search(&id) {
            Ok(_) => before
                .raw(id)
                .iter()
                .zip(&new)
                .filter(|(a, b)| a != b)
                .count(),
            Err(_) => new.len(),
        };
        if n > 0 {
            out.push((id, n));
        }
    }
    out
}

#[test]
fn edits_touch_only_the_bytes_they_change() {
    let (mut pages, mut h, _) = bulk_load(4080, (0..2000).map(|i| i * 2));
    // An insert into a leaf with room (the last one; in-order loading left
    // the others full): slot shift + cell + header fields.
    let before = pages.clone();
    insert(&mut pages, &mut h, &3997u32.to_be_bytes(), &[9; 16]).unwrap();
    let changed = changed_bytes(&before, &pages);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].1 <= 4 + 16 + 7 + 6 + 2 * 200, "{changed:?}");
    // A same-size update rewrites the value bytes only.
    let before = pages.clone();
    insert(&mut pages, &mut h, &1000u32.to_be_bytes(), &[8; 16]).unwrap();
    let changed = changed_bytes(&before, &pages);
    assert_eq!(changed.len(), 1);
    assert!(changed[0].1 <= 16, "{changed:?}");
    // An append split leaves the old leaf's bytes alone but for its header.
    let mut appended = 0;
    loop {
        let before = pages.clone();
        let key: u32 = 10_000 + appended;
        insert(&mut pages, &mut h, &key.to_be_bytes(), &[1; 16]).unwrap();
        appended += 1;
        if pages.live_pages() > before.live_pages() {
            for (id, n) in changed_bytes(&before, &pages) {
                let is_new = before.ids().binary_search(&id).is_err();
                assert!(is_new || n <= 64, "{id}: {n} bytes changed");
            }
            break;
        }
    }
    check_tree(&pages, &h).unwrap();
}

#[test]
fn tree_header_round_trips_and_rejects_garbage() {
    let h = TreeHeader {
        root: PageId(42),
        len: 7,
        height: 3,
    };
    assert_eq!(TreeHeader::decode(&h.encode()).unwrap(), h);
    assert_eq!(
        TreeHeader::decode(&TreeHeader::EMPTY.encode()).unwrap(),
        TreeHeader::EMPTY
    );
    let mut bad = h.encode();
    bad[20] = 1;
    assert!(TreeHeader::decode(&bad).unwrap_err().is_corruption());
    assert!(TreeHeader::decode(&bad[..10]).unwrap_err().is_corruption());
    let inconsistent = TreeHeader {
        root: PageId(0),
        len: 3,
        height: 0,
    };
    assert!(TreeHeader::decode(&inconsistent.encode()).is_err());
    let pages = MemPages::new(4080);
    assert!(get(&pages, &inconsistent, b"k")
        .unwrap_err()
        .is_corruption());
    let dangling = TreeHeader {
        root: PageId(99),
        len: 1,
        height: 1,
    };
    assert!(get(&pages, &dangling, b"k").unwrap_err().is_corruption());
}

#[test]
fn free_tree_and_clear_free_every_page() {
    let mut pages = MemPages::new(4080);
    let mut h = TreeHeader::EMPTY;
    for i in 0..3000u32 {
        let v = vec![i as u8; (i as usize % 7) * 1000];
        let mut k = i.to_be_bytes().to_vec();
        if i % 50 == 0 {
            k.resize(1500, b'z');
        }
        insert(&mut pages, &mut h, &k, &v).unwrap();
    }
    let stats = check_tree(&pages, &h).unwrap();
    assert!(stats.overflow_pages > 0 && stats.height >= 2);
    free_tree(&mut pages, &mut h).unwrap();
    assert_eq!((h, pages.live_pages()), (TreeHeader::EMPTY, 0));
    insert(&mut pages, &mut h, b"a", b"b").unwrap();
    clear(&mut pages, &mut h).unwrap();
    assert_eq!((h, pages.live_pages()), (TreeHeader::EMPTY, 0));
    assert_eq!(first(&pages, &h).unwrap(), None);
}

#[test]
fn ranges_with_inverted_or_empty_bounds_are_empty() {
    use std::ops::Bound::*;
    let (pages, h, _) = bulk_load(4080, 0..100);
    let k = |i: u32| i.to_be_bytes();
    let (a, b) = (k(50), k(40));
    assert_eq!(
        range(&pages, &h, (Included(&a[..]), Excluded(&b[..])))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        range(&pages, &h, (Excluded(&a[..]), Excluded(&a[..])))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        range(&pages, &h, (Included(&a[..]), Included(&a[..])))
            .unwrap()
            .count(),
        1
    );
    let past = k(1000);
    assert_eq!(
        range(&pages, &h, (Included(&past[..]), Unbounded))
            .unwrap()
            .count(),
        0
    );
    let r: Vec<_> = range(&pages, &h, (Excluded(&b[..]), Excluded(&a[..])))
        .unwrap()
        .rev()
        .map(|e| e.unwrap().0.into_vec())
        .collect();
    let want: Vec<_> = (41..50).rev().map(|i| k(i).to_vec()).collect();
    assert_eq!(r, want);
    let (fk, _) = first(&pages, &h).unwrap().unwrap();
    let (lk, _) = last(&pages, &h).unwrap().unwrap();
    assert_eq!((&*fk, &*lk), (&k(0)[..], &k(99)[..]));
}
