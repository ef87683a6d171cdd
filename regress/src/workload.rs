//! Deterministic inputs for the scenarios: a seeded SplitMix64 generator and
//! builders of page images and sparse edits.
//!
//! Nothing here reads the clock, the environment or the OS random source, so
//! the same seed gives the same bytes on every machine and every run: the
//! precondition for instruction counts that only change when code changes.

/// A SplitMix64 pseudo-random generator (Steele, Lea, Flood 2014): tiny,
/// fast and identical everywhere, unlike `rand`'s generators across versions.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `low..=high` (`low <= high`).
    pub fn in_range(&mut self, low: usize, high: usize) -> usize {
        debug_assert!(low <= high, "empty range {low}..={high}");
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as usize
    }

    /// Fills `out` with pseudo-random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A `len`-byte page image of pseudo-random bytes.
pub fn random_page(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let mut page = vec![0u8; len];
    rng.fill(&mut page);
    page
}

/// Applies `edits` small edits of 1 ..= `max_edit_bytes` bytes at random
/// offsets of `page`, each incrementing the bytes it touches (the way
/// counters, balances and timestamps change: low bytes move).
pub fn sparse_edit(rng: &mut SplitMix64, page: &mut [u8], edits: usize, max_edit_bytes: usize) {
    debug_assert!(max_edit_bytes >= 1 && max_edit_bytes <= page.len());
    for _ in 0..edits {
        let len = rng.in_range(1, max_edit_bytes);
        let offset = rng.in_range(0, page.len() - len);
        for byte in &mut page[offset..offset + len] {
            *byte = byte.wrapping_add(1);
        }
    }
}

/// The 16-byte key of row `index`: a scrambled prefix (so inserts land all
/// over the tree) followed by the index, both big-endian.
pub fn row_key(index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&index.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A 64-byte value for row `index` at `version`: mostly stable text with a
/// few changing bytes, like a real row.
pub fn row_value(index: u64, version: u64) -> [u8; 64] {
    let mut value = [b'.'; 64];
    value[..8].copy_from_slice(&index.to_le_bytes());
    value[8..16].copy_from_slice(&version.to_le_bytes());
    value[16..24].copy_from_slice(b"regress:");
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_the_reference_splitmix64() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn in_range_stays_in_range_and_hits_both_ends() {
        let mut rng = SplitMix64::new(7);
        let values: Vec<usize> = (0..1000).map(|_| rng.in_range(3, 6)).collect();
        assert!(values.iter().all(|v| (3..=6).contains(v)));
        assert!(values.contains(&3) && values.contains(&6));
    }

    #[test]
    fn sparse_edits_change_few_bytes() {
        let mut rng = SplitMix64::new(1);
        let old = random_page(&mut rng, 4096);
        let mut new = old.clone();
        sparse_edit(&mut rng, &mut new, 10, 8);
        let changed = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        assert!((1..=80).contains(&changed), "{changed} bytes changed");
    }

    #[test]
    fn keys_are_distinct() {
        let keys: std::collections::BTreeSet<_> = (0..1000).map(row_key).collect();
        assert_eq!(keys.len(), 1000);
    }
}
