//! The zstd gate: per record, remembers whether zstd has been paying on the
//! record's large deltas and, after a streak of misses, stops trying it on
//! most of the following ones.
//!
//! The adaptive codec tries zstd on every delta whose raw encoding reaches
//! [`CodecConfig::zstd_min_bytes`](super::CodecConfig::zstd_min_bytes):
//! first the compressibility probe (`sample`, a few thousand instructions),
//! then, where the probe lets it through, zstd itself (tens of thousands).
//! On a commit of random keys and values every one of those tries is wasted
//! (the RLE encoding wins), and they were a sixth of a batch insert's
//! instructions. Deltas of one commit tend to look alike, so after
//! [`ZSTD_MISS_STREAK_MAX`] large deltas in a row where zstd did not win,
//! the gate lets only one large delta in `2^k` through (`k` growing with
//! the streak, the gap capped at [`ZSTD_SKIP_MAX_DELTAS`]); a win reopens
//! it fully. A skipped delta is encoded RLE or raw exactly as when zstd
//! loses, so the record format is untouched: the gate trades, at worst,
//! a few compressible deltas stored uncompressed for the calls it saves.

/// Large deltas in a row on which zstd may lose before the gate starts
/// skipping tries.
pub(crate) const ZSTD_MISS_STREAK_MAX: u32 = 4;

/// Most large deltas skipped between two tries while the streak lasts.
pub(crate) const ZSTD_SKIP_MAX_DELTAS: u32 = 32;

/// How zstd fared on the large deltas of one record so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ZstdGate {
    /// Tries in a row on which zstd did not win (the probe said no, or the
    /// compressed entry was not the smallest).
    misses: u32,
    /// Large deltas still to skip before the next try.
    skip_left: u32,
}

impl ZstdGate {
    /// Whether to try zstd on the next large delta; counts a skip.
    pub(crate) fn admits(&mut self) -> bool {
        if self.skip_left > 0 {
            self.skip_left -= 1;
            return false;
        }
        true
    }

    /// Records the outcome of a try the gate admitted: `won` when the zstd
    /// entry was the one written.
    pub(crate) fn record(&mut self, won: bool) {
        if won {
            *self = ZstdGate::default();
            return;
        }
        self.misses = self.misses.saturating_add(1);
        if self.misses >= ZSTD_MISS_STREAK_MAX {
            let doublings = (self.misses - ZSTD_MISS_STREAK_MAX).min(ZSTD_SKIP_MAX_DELTAS.ilog2());
            self.skip_left = (1u32 << doublings).min(ZSTD_SKIP_MAX_DELTAS);
        }
        debug_assert!(self.skip_left <= ZSTD_SKIP_MAX_DELTAS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Which of `outcomes.len()` large deltas get a try, when the try on
    /// each would win as `outcomes` says.
    fn tried(outcomes: &[bool]) -> Vec<bool> {
        let mut gate = ZstdGate::default();
        outcomes
            .iter()
            .map(|&win| {
                let admitted = gate.admits();
                if admitted {
                    gate.record(win);
                }
                admitted
            })
            .collect()
    }

    #[test]
    fn winners_keep_the_gate_open() {
        assert!(tried(&[true; 100]).iter().all(|&t| t));
    }

    #[test]
    fn a_streak_of_misses_spaces_the_tries_out() {
        let tries = tried(&[false; 200]);
        let count = tries.iter().filter(|&&t| t).count();
        // 4 in a row, then gaps of 1, 2, 4, 8, 16 and 32 thereafter.
        assert!(tries[..ZSTD_MISS_STREAK_MAX as usize].iter().all(|&t| t));
        assert!(!tries[ZSTD_MISS_STREAK_MAX as usize]);
        assert!((8..=14).contains(&count), "{count} tries of 200");
    }

    #[test]
    fn a_win_after_a_streak_reopens_the_gate() {
        let mut gate = ZstdGate::default();
        for _ in 0..50 {
            if gate.admits() {
                gate.record(false);
            }
        }
        while !gate.admits() {}
        gate.record(true);
        assert_eq!(gate, ZstdGate::default());
        assert!(gate.admits());
    }

    proptest! {
        /// Against a model: the gap between two tries is 0 until the streak
        /// reaches its limit, then doubles per miss up to the cap, and a win
        /// resets it.
        #[test]
        fn matches_a_model(outcomes in prop::collection::vec(any::<bool>(), 0..300)) {
            let tries = tried(&outcomes);
            let (mut misses, mut gap) = (0u32, 0u32);
            let mut expected = Vec::new();
            for &win in &outcomes {
                if gap > 0 {
                    gap -= 1;
                    expected.push(false);
                    continue;
                }
                expected.push(true);
                if win {
                    misses = 0;
                } else {
                    misses += 1;
                    if misses >= ZSTD_MISS_STREAK_MAX {
                        gap = 2u32.pow((misses - ZSTD_MISS_STREAK_MAX).min(5)).min(ZSTD_SKIP_MAX_DELTAS);
                    }
                }
            }
            prop_assert_eq!(tries, expected);
        }
    }
}
