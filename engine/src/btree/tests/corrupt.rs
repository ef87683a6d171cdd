//! Damaged pages: random garbage in any page of a tree yields
//! `Error::Corrupted` (or, for bytes no check can judge, such as value
//! bytes, a wrong answer) and never a panic or a hang.

use std::sync::OnceLock;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::mem::MemPages;
use crate::btree::*;
use crate::Error;

/// A tree of three levels at 4 KiB pages with overflow keys and values.
fn base() -> &'static (MemPages, TreeHeader, Vec<Vec<u8>>) {
    static BASE: OnceLock<(MemPages, TreeHeader, Vec<Vec<u8>>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut pages = MemPages::new(4080);
        let mut h = TreeHeader::EMPTY;
        let mut keys = Vec::new();
        for i in 0..1500u32 {
            let mut k = format!("{:06}", i * 7919 % 1500).into_bytes();
            if i % 40 == 0 {
                k.resize(1200, b'x');
            }
            let v = vec![i as u8; [3, 40, 900, 5000][i as usize % 4]];
            insert(&mut pages, &mut h, &k, &v).expect("build");
            keys.push(k);
        }
        let stats = check_tree(&pages, &h).expect("valid base");
        assert!(stats.height >= 2 && stats.overflow_pages > 0);
        (pages, h, keys)
    })
}

#[derive(Clone, Debug)]
enum Damage {
    /// Every byte random.
    Whole(u64),
    /// Every byte but the kind/version/level header random.
    KeepHeader(u64),
    /// A short run of random bytes.
    Span { at: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<u64>().prop_map(Damage::Whole),
        any::<u64>().prop_map(Damage::KeepHeader),
        (0usize..4080, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Span { at, bytes }),
        // Header fields and the start of the slot array.
        (0usize..40, prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(at, bytes)| Damage::Span { at, bytes }),
    ]
}

fn apply(page: &mut [u8], damage: &Damage) {
    match damage {
        Damage::Whole(seed) => rand::rngs::StdRng::seed_from_u64(*seed).fill(page),
        Damage::KeepHeader(seed) => rand::rngs::StdRng::seed_from_u64(*seed).fill(&mut page[3..]),
        Damage::Span { at, bytes } => {
            let end = (at + bytes.len()).min(page.len());
            page[*at..end].copy_from_slice(&bytes[..end - at]);
        }
    }
}

/// `Ok`, or an error that reports corruption.
fn tolerable<T>(r: Result<T, Error>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_corruption() => Ok(None),
        Err(e) => Err(TestCaseError::fail(format!("not a corruption error: {e}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_pages_are_reported_not_panicked_on(which in any::<prop::sample::Index>(), d in damage()) {
        let (base, h, keys) = base();
        let mut pages = base.clone();
        let ids = pages.ids();
        let id = ids[which.index(ids.len())];
        apply(pages.raw_mut(id), &d);

        for k in keys.iter().step_by(5) {
            tolerable(get(&pages, h, k))?;
        }
        for backwards in [false, true] {
            if let Some(mut it) = tolerable(range(&pages, h, ..))? {
                for _ in 0..=keys.len() {
                    let item = if backwards { it.next_back() } else { it.next() };
                    match item {
                        None => break,
                        Some(r) => if tolerable(r)?.is_none() { break },
                    }
                }
            }
        }
        tolerable(first(&pages, h))?;
        tolerable(last(&pages, h))?;
        let checked = tolerable(check_tree(&pages, h))?;
        if matches!(d, Damage::Whole(_) | Damage::KeepHeader(_)) {
            prop_assert!(checked.is_none(), "check_tree missed a garbage page");
        }

        // Writes on the damaged tree: errors are fine (the caller rolls
        // back), panics are not. The test double reports double frees.
        let mut h = *h;
        for k in keys.iter().step_by(97) {
            let r = remove(&mut pages, &mut h, k);
            if !matches!(r, Err(Error::InvalidArgument(_))) && tolerable(r)?.is_none() {
                break;
            }
            let r = insert(&mut pages, &mut h, k, b"new value");
            if !matches!(r, Err(Error::InvalidArgument(_))) && tolerable(r)?.is_none() {
                break;
            }
        }
    }
}

#[test]
fn wrong_page_kind_is_corruption() {
    let (base, h, keys) = base();
    let mut pages = base.clone();
    pages.raw_mut(h.root)[0] = 0x00;
    assert!(get(&pages, h, &keys[0]).unwrap_err().is_corruption());
    assert!(range(&pages, h, ..)
        .err()
        .is_some_and(|e| e.is_corruption()));
    assert!(check_tree(&pages, h).unwrap_err().is_corruption());
}
