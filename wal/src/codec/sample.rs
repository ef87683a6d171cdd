//! A cheap compressibility probe: decides, from a small sample, whether
//! zstd is worth calling on a buffer at all.
//!
//! zstd at level 1 costs about 50 000 instructions even on a buffer of a few
//! hundred bytes (Huffman and FSE table builds per block); on data it cannot
//! shrink by much (random keys and values, slot arrays, already compressed
//! blobs) all of it is wasted, because the adaptive codec then keeps the RLE
//! encoding anyway. The probe looks at up to [`SAMPLE_BYTES`] bytes spread
//! over the buffer and reports "incompressible" when neither of zstd's
//! levers is predicted to pay:
//! - LZ matches: fewer than one in [`MIN_MATCH_SHARE`] of the sampled 4-byte
//!   windows repeats an earlier one, and
//! - entropy coding: the order-0 entropy `H` (bias-corrected, Miller–Madow)
//!   predicts a Huffman-coded size `n·H/8` plus the table (half a byte per
//!   symbol seen) plus [`FRAME_OVERHEAD_BYTES`] that saves less than one
//!   [`MIN_GAIN_SHARE`]th of the buffer's `n` bytes.
//!
//! A wrong "incompressible" costs bytes (the delta is stored RLE), a wrong
//! "compressible" costs one zstd call: the small-sample bias of the entropy
//! estimate (it reads low) leans towards trying zstd.

use std::sync::OnceLock;

/// Bytes of the buffer the probe reads at most.
pub(crate) const SAMPLE_BYTES: usize = 512;
/// Chunks the sample is split into, spread evenly over a larger buffer.
const SAMPLE_CHUNKS: usize = 4;
/// Below this many bytes the probe does not judge (returns "compressible"):
/// the entropy estimate of a shorter sample says too little.
const MIN_SAMPLE_BYTES: usize = 64;
/// The sample counts as repetitive when at least 1 in this many of its
/// 4-byte windows repeats an earlier window.
const MIN_MATCH_SHARE: usize = 16;
/// zstd is predicted to pay when entropy coding saves at least one
/// `MIN_GAIN_SHARE`th of the buffer (6.25%: for a 4 KiB buffer an entropy
/// of at most about 7.2 bits per byte, for 700 bytes about 5.9 bits).
const MIN_GAIN_SHARE: usize = 16;
/// Bytes of a zstd frame besides its literals and Huffman table: frame,
/// block and literals-section headers.
const FRAME_OVERHEAD_BYTES: usize = 16;
/// log2 of the slots of the window hash table.
const HASH_BITS: u32 = 9;

/// Whether `bytes` looks incompressible (see the module docs). Reads at
/// most [`SAMPLE_BYTES`] bytes; never allocates.
pub(crate) fn looks_incompressible(bytes: &[u8]) -> bool {
    if bytes.len() < MIN_SAMPLE_BYTES {
        return false;
    }
    // Repeats first: compressible data usually stops here, early.
    if is_repetitive(bytes) {
        return false;
    }
    let mut histogram = [0u32; 256];
    let mut sampled = 0usize;
    for chunk in sample_chunks(bytes) {
        for &b in chunk {
            histogram[usize::from(b)] += 1;
        }
        sampled += chunk.len();
    }
    let symbols = histogram.iter().filter(|&&count| count > 0).count();
    let entropy = entropy_millibits(&histogram, sampled);
    predicted_gain_bytes(bytes.len(), entropy, symbols) < bytes.len() / MIN_GAIN_SHARE
}

/// Bytes entropy coding is predicted to save on `len` bytes of `entropy`
/// millibits per byte with `symbols` distinct byte values (0 when it would
/// grow them).
fn predicted_gain_bytes(len: usize, entropy: u32, symbols: usize) -> usize {
    let coded = (len as u64 * u64::from(entropy)).div_ceil(8_000) as usize;
    let table = symbols.div_ceil(2);
    len.saturating_sub(coded + table + FRAME_OVERHEAD_BYTES)
}

/// Whether at least one in [`MIN_MATCH_SHARE`] of the sampled 4-byte
/// windows repeats an earlier window; stops as soon as that many are seen.
fn is_repetitive(bytes: &[u8]) -> bool {
    let windows: usize = sample_chunks(bytes)
        .map(|chunk| chunk.len().saturating_sub(3))
        .sum();
    let needed = windows.div_ceil(MIN_MATCH_SHARE).max(1);
    let mut table = [u32::MAX; 1 << HASH_BITS];
    let mut matches = 0usize;
    for chunk in sample_chunks(bytes) {
        for w in chunk.windows(4) {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let slot = (word.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize;
            if table[slot] == word {
                matches += 1;
                if matches >= needed {
                    return true;
                }
            }
            table[slot] = word;
        }
    }
    false
}

/// Up to [`SAMPLE_CHUNKS`] chunks totalling at most [`SAMPLE_BYTES`],
/// evenly spread over `bytes` (all of it when it is short enough).
fn sample_chunks(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let whole = bytes.len() <= SAMPLE_BYTES;
    let chunk = if whole {
        bytes.len()
    } else {
        SAMPLE_BYTES / SAMPLE_CHUNKS
    };
    let count = if whole { 1 } else { SAMPLE_CHUNKS };
    let stride = if count > 1 {
        (bytes.len() - chunk) / (count - 1)
    } else {
        0
    };
    (0..count).map(move |i| &bytes[i * stride..i * stride + chunk])
}

/// `c · log2(c)` in thousandths, for every count a sample can hold.
fn count_log_table() -> &'static [u64; SAMPLE_BYTES + 1] {
    static TABLE: OnceLock<[u64; SAMPLE_BYTES + 1]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u64; SAMPLE_BYTES + 1];
        for (c, slot) in table.iter_mut().enumerate().skip(1) {
            let c = c as f64;
            *slot = (c * c.log2() * 1000.0).round() as u64;
        }
        table
    })
}

/// Miller–Madow corrected order-0 entropy of `n` bytes with `histogram`,
/// in thousandths of a bit per byte: `log2 n − Σ c·log2 c / n`, plus
/// `(symbols − 1) / (2 n ln 2)`. `n` is at most [`SAMPLE_BYTES`].
fn entropy_millibits(histogram: &[u32; 256], n: usize) -> u32 {
    debug_assert!(n <= SAMPLE_BYTES);
    debug_assert_eq!(histogram.iter().map(|&c| c as usize).sum::<usize>(), n);
    if n == 0 || n > SAMPLE_BYTES {
        return 0;
    }
    let table = count_log_table();
    let mut sum = 0u64;
    let mut symbols = 0u64;
    for &count in histogram {
        sum += table[count as usize];
        symbols += u64::from(count > 0);
    }
    let n_f = n as f64;
    let bits = n_f.log2() - sum as f64 / 1000.0 / n_f;
    let correction = symbols.saturating_sub(1) as f64 / (2.0 * n_f * std::f64::consts::LN_2);
    ((bits + correction) * 1000.0).clamp(0.0, 8000.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 bytes: a stand-in for random keys and values.
    fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn random_bytes_are_incompressible() {
        for len in [MIN_SAMPLE_BYTES, 300, 1024, 4096, 1 << 20] {
            assert!(
                looks_incompressible(&random_bytes(len, len as u64)),
                "{len} random bytes"
            );
        }
    }

    #[test]
    fn zstd_agrees_on_random_bytes() {
        let data = random_bytes(4096, 7);
        let mut frame = Vec::new();
        super::super::zstd_compress(&data, 1, &mut frame).unwrap();
        assert!(frame.len() * 100 >= data.len() * 98, "zstd saved >2%");
    }

    #[test]
    fn repetitive_or_skewed_bytes_are_compressible() {
        let text = b"account 00012345 balance 0000001000 updated 2026-11-25 ".repeat(40);
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&[0u8; 4096]));
        // Skewed but unrepeated: only 16 distinct byte values (4 bits each).
        let nibbles: Vec<u8> = random_bytes(4096, 3).iter().map(|b| b & 0x0f).collect();
        assert!(!looks_incompressible(&nibbles));
        // Random payload whose second sampled chunk (at 1322) repeats the first.
        let mut mixed = random_bytes(4096, 9);
        let copy = mixed[..128].to_vec();
        mixed[1322..1450].copy_from_slice(&copy);
        assert!(!looks_incompressible(&mixed));
    }

    #[test]
    fn very_short_buffers_are_never_judged_incompressible() {
        assert!(!looks_incompressible(&random_bytes(
            MIN_SAMPLE_BYTES - 1,
            1
        )));
        assert!(!looks_incompressible(&[]));
    }

    #[test]
    fn short_random_buffers_are_incompressible() {
        for len in [MIN_SAMPLE_BYTES, 128, 200, 300] {
            let judged = (0..200u64)
                .filter(|&seed| looks_incompressible(&random_bytes(len, seed * 1000 + len as u64)))
                .count();
            assert_eq!(judged, 200, "{len} random bytes");
        }
    }

    #[test]
    fn short_skewed_or_repetitive_buffers_are_compressible() {
        for len in [150, 200, 255] {
            let text = b"account 00012345 balance 0000001000 ".repeat(8);
            assert!(!looks_incompressible(&text[..len]), "{len} bytes of text");
            // Five bits per byte, no repeats to speak of.
            let skewed: Vec<u8> = random_bytes(len, 5).iter().map(|b| b & 0x1f).collect();
            assert!(!looks_incompressible(&skewed), "{len} skewed bytes");
            // Random, except one 4-byte word in every 12 bytes repeats.
            let mut words = random_bytes(len, 11);
            for chunk in words.chunks_mut(12).filter(|c| c.len() == 12) {
                chunk[8..].copy_from_slice(&[1, 2, 3, 4]);
            }
            assert!(!looks_incompressible(&words), "{len} bytes with repeats");
        }
    }

    #[test]
    fn zstd_agrees_where_the_probe_says_incompressible() {
        // Random bytes, and random bytes with a slot-array-like share of
        // small values: the probe skips both, and zstd would gain < 1/16.
        for len in [MIN_SAMPLE_BYTES, 200, 700, 4096] {
            let mut data = random_bytes(len, 3);
            for (i, byte) in data.iter_mut().enumerate().filter(|(i, _)| i % 10 == 1) {
                *byte = (i % 16) as u8;
            }
            assert!(looks_incompressible(&data), "{len} bytes");
            let mut frame = Vec::new();
            super::super::zstd_compress(&data, 1, &mut frame).unwrap();
            assert!(
                frame.len() + len / MIN_GAIN_SHARE > len,
                "zstd saved {} of {len} bytes",
                len - frame.len()
            );
        }
    }

    #[test]
    fn predicted_gain_counts_the_table_and_the_frame() {
        // 1000 bytes at 4 bits with 16 symbols: 500 coded + 8 table + 16.
        assert_eq!(predicted_gain_bytes(1000, 4_000, 16), 476);
        assert_eq!(predicted_gain_bytes(100, 8_000, 256), 0);
    }

    #[test]
    fn sample_stays_within_bounds_and_limit() {
        for len in [
            MIN_SAMPLE_BYTES,
            SAMPLE_BYTES,
            SAMPLE_BYTES + 1,
            10_000,
            65_537,
        ] {
            let data = vec![1u8; len];
            let total: usize = sample_chunks(&data).map(<[u8]>::len).sum();
            assert!(total <= SAMPLE_BYTES.max(len.min(SAMPLE_BYTES)));
            assert!(total >= len.min(SAMPLE_BYTES) - SAMPLE_CHUNKS);
        }
    }

    #[test]
    fn entropy_of_uniform_and_constant_histograms() {
        let mut uniform = [0u32; 256];
        uniform.iter_mut().for_each(|c| *c = 2);
        assert!(entropy_millibits(&uniform, 512) >= 7_990);
        let mut constant = [0u32; 256];
        constant[7] = 512;
        assert_eq!(entropy_millibits(&constant, 512), 0);
        let mut two = [0u32; 256];
        two[1] = 256;
        two[2] = 256;
        // One bit, plus the small-sample correction of 1 / (1024 ln 2).
        assert!((1_000..=1_002).contains(&entropy_millibits(&two, 512)));
    }
}
