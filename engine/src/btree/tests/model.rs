//! Model test: random operation sequences against `BTreeMap`, at several
//! page sizes, with keys and values on both sides of the overflow limits.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;

use super::mem::MemPages;
use crate::btree::*;

/// A key: short keys from a small alphabet (many shared prefixes), or long
/// keys sharing a long prefix (overflowing at 4 KiB pages).
#[derive(Clone, Debug)]
enum KeyGen {
    Small(u16),
    Large(u16),
}

impl KeyGen {
    fn bytes(&self) -> Vec<u8> {
        match *self {
            KeyGen::Small(id) => {
                let len = usize::from(id % 5); // includes the empty key
                (0..len)
                    .map(|i| b'a' + ((id >> (2 * i)) % 5) as u8)
                    .collect()
            }
            KeyGen::Large(id) => {
                let len = 980 + usize::from(id % 5) * 267;
                let mut k = vec![b'k'; len];
                // Differ near the end (compare goes through the overflow
                // suffix) or just after the in-page prefix.
                let at = if id % 2 == 0 { len - 1 } else { 975 };
                k[at] = b'a' + (id % 7) as u8;
                k
            }
        }
    }
}

/// A value: `(len, seed)`.
#[derive(Clone, Debug)]
struct ValGen(usize, u8);

impl ValGen {
    fn bytes(&self) -> Vec<u8> {
        (0..self.0)
            .map(|i| (i as u8).wrapping_mul(31) ^ self.1)
            .collect()
    }
}

#[derive(Clone, Debug)]
enum BoundGen {
    Unbounded,
    Included(KeyGen),
    Excluded(KeyGen),
}

impl BoundGen {
    fn bound(&self) -> Bound<Vec<u8>> {
        match self {
            BoundGen::Unbounded => Bound::Unbounded,
            BoundGen::Included(k) => Bound::Included(k.bytes()),
            BoundGen::Excluded(k) => Bound::Excluded(k.bytes()),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(KeyGen, ValGen),
    Remove(KeyGen),
    Get(KeyGen),
    Range(BoundGen, BoundGen, Vec<bool>),
    First,
    Last,
}

fn key_gen() -> impl Strategy<Value = KeyGen> {
    prop_oneof![
        8 => (0u16..400).prop_map(KeyGen::Small),
        1 => (0u16..40).prop_map(KeyGen::Large),
    ]
}

fn val_gen(big: usize) -> impl Strategy<Value = ValGen> {
    prop_oneof![
        6 => (0usize..40, any::<u8>()).prop_map(|(l, s)| ValGen(l, s)),
        3 => (700usize..1300, any::<u8>()).prop_map(|(l, s)| ValGen(l, s)),
        1 => (3000usize..9000, any::<u8>()).prop_map(|(l, s)| ValGen(l, s)),
        1 => (big / 2..big, any::<u8>()).prop_map(|(l, s)| ValGen(l, s)),
    ]
}

fn bound_gen() -> impl Strategy<Value = BoundGen> {
    prop_oneof![
        1 => Just(BoundGen::Unbounded),
        2 => key_gen().prop_map(BoundGen::Included),
        2 => key_gen().prop_map(BoundGen::Excluded),
    ]
}

fn op_gen(big: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (key_gen(), val_gen(big)).prop_map(|(k, v)| Op::Insert(k, v)),
        5 => key_gen().prop_map(Op::Remove),
        3 => key_gen().prop_map(Op::Get),
        2 => (bound_gen(), bound_gen(), prop::collection::vec(any::<bool>(), 0..40))
            .prop_map(|(a, b, d)| Op::Range(a, b, d)),
        1 => Just(Op::First),
        1 => Just(Op::Last),
    ]
}

fn in_bounds(k: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let above = match lo {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= &l[..],
        Bound::Excluded(l) => k > &l[..],
    };
    let below = match hi {
        Bound::Unbounded => true,
        Bound::Included(h) => k <= &h[..],
        Bound::Excluded(h) => k < &h[..],
    };
    above && below
}

type Entry = (Vec<u8>, Vec<u8>);

fn as_pair(e: Option<&Entry>) -> Option<(&[u8], &[u8])> {
    e.map(|(k, v)| (&k[..], &v[..]))
}

/// Runs `ops` on a tree and on a `BTreeMap`, comparing every answer; then
/// checks the tree, empties it and checks every page was freed.
fn run_model(page_len: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut pages = MemPages::new(page_len);
    let mut h = TreeHeader::EMPTY;
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Insert(k, v) => {
                let (k, v) = (k.bytes(), v.bytes());
                let got = insert(&mut pages, &mut h, &k, &v).map_err(fail)?;
                prop_assert_eq!(got, model.insert(k, v));
            }
            Op::Remove(k) => {
                let k = k.bytes();
                let got = remove(&mut pages, &mut h, &k).map_err(fail)?;
                prop_assert_eq!(got, model.remove(&k));
            }
            Op::Get(k) => {
                let k = k.bytes();
                let got = get(&pages, &h, &k).map_err(fail)?;
                prop_assert_eq!(got.as_deref(), model.get(&k).map(|v| &v[..]));
            }
            Op::Range(lo, hi, dirs) => {
                let (lo, hi) = (lo.bound(), hi.bound());
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| in_bounds(k, &lo, &hi))
                    .collect();
                let bounds = (lo.as_ref().map(|b| &b[..]), hi.as_ref().map(|b| &b[..]));
                let mut it = range(&pages, &h, bounds).map_err(fail)?;
                let (mut i, mut j) = (0, want.len());
                for &forward in dirs.iter().chain(std::iter::repeat_n(&true, 3)) {
                    let got = if forward { it.next() } else { it.next_back() };
                    let expect = if i == j {
                        None
                    } else if forward {
                        i += 1;
                        Some(want[i - 1])
                    } else {
                        j -= 1;
                        Some(want[j])
                    };
                    let got = got.transpose().map_err(fail)?;
                    let got = got.as_ref().map(|(k, v)| (&k[..], &v[..]));
                    prop_assert_eq!(got, expect.map(|(k, v)| (&k[..], &v[..])));
                }
            }
            Op::First => {
                let got = first(&pages, &h).map_err(fail)?;
                let got = got.as_ref().map(|(k, v)| (&k[..], &v[..]));
                let want = model.first_key_value().map(|(k, v)| (k.clone(), v.clone()));
                prop_assert_eq!(got, as_pair(want.as_ref()));
            }
            Op::Last => {
                let got = last(&pages, &h).map_err(fail)?;
                let got = got.as_ref().map(|(k, v)| (&k[..], &v[..]));
                let want = model.last_key_value().map(|(k, v)| (k.clone(), v.clone()));
                prop_assert_eq!(got, as_pair(want.as_ref()));
            }
        }
        prop_assert_eq!(h.len, model.len() as u64);
        if n % 32 == 31 {
            check_tree(&pages, &h).map_err(fail)?;
        }
    }
    let stats = check_tree(&pages, &h).map_err(fail)?;
    prop_assert_eq!(stats.total_pages() as usize, pages.live_pages());
    let all: Vec<_> = iter(&pages, &h)
        .map_err(fail)?
        .map(|e| e.map(|(k, v)| (k.into_vec(), v.into_vec())))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    prop_assert!(all.iter().map(|(k, v)| (k, v)).eq(model.iter()));
    // Empty the tree from both ends, checking as it shrinks.
    let keys: Vec<_> = model.keys().cloned().collect();
    let (mut lo, mut hi) = (0, keys.len());
    let mut n = 0;
    while lo < hi {
        let k = if n % 2 == 0 {
            lo += 1;
            &keys[lo - 1]
        } else {
            hi -= 1;
            &keys[hi]
        };
        let got = remove(&mut pages, &mut h, k).map_err(fail)?;
        prop_assert_eq!(got.as_ref(), model.get(k));
        n += 1;
        if n % 16 == 0 {
            let stats = check_tree(&pages, &h).map_err(fail)?;
            prop_assert_eq!(stats.total_pages() as usize, pages.live_pages());
        }
    }
    prop_assert_eq!(h, TreeHeader::EMPTY);
    prop_assert_eq!(pages.live_pages(), 0);
    Ok(())
}

fn fail(e: crate::Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn model_4k(ops in prop::collection::vec(op_gen(40_000), 1..300)) {
        run_model(4080, &ops)?;
    }

    #[test]
    fn model_64k(ops in prop::collection::vec(op_gen(300_000), 1..300)) {
        run_model(65520, &ops)?;
    }

    #[test]
    fn model_small_pages(ops in prop::collection::vec(op_gen(2_000), 1..300)) {
        run_model(512, &ops)?;
    }
}
