//! A fast hasher for maps keyed by [`PageId`]: page ids are internal,
//! dense integers, so SipHash's protection against chosen keys buys nothing
//! and costs a visible share of every page lookup.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use mmsb_wal::PageId;

/// Fibonacci hashing: one multiply spreads dense ids over the table.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PageIdHasher {
    state: u64,
}

impl Hasher for PageIdHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.state = (self.state.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A `HashMap` keyed by page id.
pub(crate) type PageMap<V> = HashMap<PageId, V, BuildHasherDefault<PageIdHasher>>;
/// A `HashSet` of page ids.
pub(crate) type PageSet = HashSet<PageId, BuildHasherDefault<PageIdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_spread_over_the_high_bits() {
        let mut buckets = [0usize; 64];
        for id in 0..64_000u64 {
            let mut hasher = PageIdHasher::default();
            hasher.write_u64(id);
            buckets[(hasher.finish() >> 58) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 500), "{buckets:?}");
    }
}
