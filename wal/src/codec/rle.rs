//! The `Rle` delta encoding, for sparse changes: varint, gap-coded run
//! offsets and lengths, and run-length encoding of run bytes that repeat.
//!
//! ```text
//! page id    varint zigzag(page id - previous delta's page id), wrapping
//! run count  varint
//! per run:   varint gap     first run: its offset;
//!                           later runs: offset - previous run's end - 1
//!            varint header  length << 1 | packed
//!            packed = 0:    `length` literal bytes
//!            packed = 1:    RLE tokens that expand to exactly `length` bytes
//! ```
//!
//! An RLE token is one control byte `c`:
//! - `c < 0x80`: a literal of `c + 1` bytes follows;
//! - `c >= 0x80`: one byte follows, repeated `(c & 0x7f) + 3` times.
//!
//! Runs of a delta are never adjacent, so the gap of a later run is stored
//! minus one: adjacency cannot be expressed and the runs come out sorted and
//! disjoint by construction.

use super::wire::{put_varint, unzigzag, zigzag, Reader};
use super::CodecError;
use crate::delta::{Delta, DeltaRun};
use crate::error::WalError;
use crate::ids::PageId;

/// Shortest repeat a token can express (and the encoder emits).
pub(crate) const MIN_REPEAT_LEN: usize = 3;
/// Longest repeat one token can express.
pub(crate) const MAX_REPEAT_LEN: usize = 0x7f + MIN_REPEAT_LEN;
/// Longest literal one token can carry.
pub(crate) const MAX_LITERAL_LEN: usize = 0x80;
/// Smallest encoded run: a gap byte, a header byte and one byte of data.
const MIN_RUN_BYTES: usize = 3;
/// Control bit marking a repeat token.
const REPEAT_BIT: u8 = 0x80;

/// Scratch buffers reused across the deltas of one record while decoding.
#[derive(Default)]
pub(crate) struct RleScratch {
    spans: Vec<(u32, u32)>,
    payload: Vec<u8>,
}

/// Appends the RLE encoding of `delta`; `prev_page` is the page id of the
/// record's previous delta (0 for the first).
pub(crate) fn encode(delta: &Delta, prev_page: PageId, out: &mut Vec<u8>) {
    let page_step = delta.page_id().get().wrapping_sub(prev_page.get()) as i64;
    put_varint(out, zigzag(page_step));
    put_varint(out, delta.run_count() as u64);
    let mut prev_end: Option<usize> = None;
    for run in delta.runs() {
        let offset = run.offset as usize;
        let gap = match prev_end {
            None => offset,
            // Runs of a canonical delta are separated by at least one byte.
            Some(end) => offset - end - 1,
        };
        put_varint(out, gap as u64);
        encode_run_bytes(run.bytes, out);
        prev_end = Some(run.end());
    }
}

/// Runs at least this long are packed in two parts, the first
/// [`PACK_TRIAL_BYTES`] first, and stored unpacked when those do not pack
/// well (see [`pack_unless_prefix_fails`]).
const PACK_TRIAL_MIN_RUN_BYTES: usize = 1024;
/// The prefix of a long run that decides whether the rest is packed.
const PACK_TRIAL_BYTES: usize = 512;
/// The prefix must pack to at least `PACK_TRIAL_BYTES / PACK_TRIAL_SAVING_DIVISOR`
/// bytes (1/32) fewer for the rest of the run to be packed.
const PACK_TRIAL_SAVING_DIVISOR: usize = 32;

/// Appends one run's header and bytes, packed when that is shorter. The
/// tokens are written in place: the packed flag is the header's low bit, so
/// flipping it never changes the header's length.
fn encode_run_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let header_at = out.len();
    put_varint(out, (bytes.len() as u64) << 1 | 1);
    if bytes.len() >= MIN_REPEAT_LEN {
        let tokens_at = out.len();
        if pack_unless_prefix_fails(bytes, out) && out.len() - tokens_at < bytes.len() {
            return;
        }
        out.truncate(tokens_at);
    }
    out[header_at] &= !1;
    out.extend_from_slice(bytes);
}

/// Appends the RLE tokens of `bytes` to `out`; `false` (with `out` holding
/// some tokens to cut) when `bytes` is a long run whose first
/// [`PACK_TRIAL_BYTES`] do not pack to at least
/// 1/[`PACK_TRIAL_SAVING_DIVISOR`] fewer bytes — a page image of random
/// values, say: stored unpacked it costs at most that fraction of its
/// prefix's rate more log bytes, and skips a pass over bytes that do not
/// repeat. A long run is packed as its prefix then the rest (the tokens
/// may differ from one pass's at the seam; they expand to the same bytes).
fn pack_unless_prefix_fails(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    if bytes.len() < PACK_TRIAL_MIN_RUN_BYTES {
        pack(bytes, out);
        return true;
    }
    let (prefix, rest) = bytes.split_at(PACK_TRIAL_BYTES);
    let prefix_at = out.len();
    pack(prefix, out);
    let prefix_tokens = out.len() - prefix_at;
    if prefix_tokens + PACK_TRIAL_BYTES / PACK_TRIAL_SAVING_DIVISOR > PACK_TRIAL_BYTES {
        return false;
    }
    pack(rest, out);
    true
}

/// Appends the RLE tokens of `bytes` to `out`.
pub(crate) fn pack(bytes: &[u8], out: &mut Vec<u8>) {
    let mut literal_start = 0;
    let mut pos = 0;
    while pos + MIN_REPEAT_LEN <= bytes.len() {
        // Most bytes start no repeat: skip eight at a time while no triple
        // starts among them, then one or two compares per byte.
        pos = skip_to_triple(bytes, pos);
        if pos + MIN_REPEAT_LEN > bytes.len() {
            break;
        }
        let byte = bytes[pos];
        if bytes[pos + 1] != byte {
            pos += 1;
            continue;
        }
        if bytes[pos + 2] != byte {
            pos += 2;
            continue;
        }
        let repeat = repeat_len(&bytes[pos..]);
        push_literals(&bytes[literal_start..pos], out);
        out.push(REPEAT_BIT | (repeat - MIN_REPEAT_LEN) as u8);
        out.push(byte);
        pos += repeat;
        literal_start = pos;
    }
    push_literals(&bytes[literal_start..], out);
}

/// Bytes a word-wide triple search reads past its first position: three
/// overlapping 8-byte loads at `pos`, `pos + 1` and `pos + 2`.
const TRIPLE_SCAN_BYTES: usize = 8 + MIN_REPEAT_LEN - 1;

/// The first position at or after `pos` where three equal bytes may start,
/// found eight positions at a time: never past the first such position (so
/// the packing is the same as a byte-by-byte scan), and at most where the
/// word-wide scan stops fitting (`bytes.len() - TRIPLE_SCAN_BYTES + 1`).
fn skip_to_triple(bytes: &[u8], mut pos: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while pos + TRIPLE_SCAN_BYTES <= bytes.len() {
        let word = |at: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(buf)
        };
        let x = word(pos);
        // Byte i of `diff` is zero iff bytes pos+i, pos+i+1, pos+i+2 are equal.
        let diff = (x ^ word(pos + 1)) | (x ^ word(pos + 2));
        let zero_bytes = diff.wrapping_sub(ONES) & !diff & HIGHS;
        if zero_bytes != 0 {
            // The lowest flagged byte is exact (higher ones may be borrows).
            return pos + (zero_bytes.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    pos
}

/// Length of the run of equal bytes at the start of `bytes`, capped at
/// [`MAX_REPEAT_LEN`]; 0 for an empty slice.
fn repeat_len(bytes: &[u8]) -> usize {
    let Some(&first) = bytes.first() else {
        return 0;
    };
    bytes
        .iter()
        .take(MAX_REPEAT_LEN)
        .position(|&byte| byte != first)
        .unwrap_or(bytes.len().min(MAX_REPEAT_LEN))
}

fn push_literals(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.chunks(MAX_LITERAL_LEN) {
        out.push((chunk.len() - 1) as u8);
        out.extend_from_slice(chunk);
    }
}

/// Reads one RLE-encoded delta whose runs must end within `page_len_limit`.
pub(crate) fn decode(
    reader: &mut Reader<'_>,
    prev_page: PageId,
    page_len_limit: usize,
    scratch: &mut RleScratch,
) -> Result<Delta, WalError> {
    let page_step = unzigzag(reader.varint("rle page id step")?);
    let page_id = PageId(prev_page.get().wrapping_add(page_step as u64));
    let count_limit = (reader.remaining() / MIN_RUN_BYTES).min(page_len_limit);
    let run_count = reader.varint_at_most("rle run count", count_limit)?;
    scratch.spans.clear();
    scratch.payload.clear();
    let mut prev_end: Option<usize> = None;
    for _ in 0..run_count {
        let (offset, len) = decode_run(reader, prev_end, page_len_limit, &mut scratch.payload)?;
        scratch.spans.push((offset as u32, len as u32));
        prev_end = Some(offset + len);
    }
    debug_assert!(scratch.payload.len() <= page_len_limit);
    let mut spans = scratch.spans.iter();
    let mut payload_pos = 0usize;
    let payload = &scratch.payload;
    super::build::build_delta(page_id, || {
        Ok(spans.next().map(|&(offset, len)| {
            let bytes = &payload[payload_pos..payload_pos + len as usize];
            payload_pos += len as usize;
            DeltaRun { offset, bytes }
        }))
    })
}

/// Reads one run, appends its bytes to `payload`, returns its offset and length.
fn decode_run(
    reader: &mut Reader<'_>,
    prev_end: Option<usize>,
    page_len_limit: usize,
    payload: &mut Vec<u8>,
) -> Result<(usize, usize), CodecError> {
    let gap_at = reader.pos();
    let gap = reader.varint_at_most("rle run gap", page_len_limit)?;
    let offset = prev_end.map_or(gap, |end| end + 1 + gap);
    let header_at = reader.pos();
    let header = reader.varint_at_most("rle run header", page_len_limit.saturating_mul(2) | 1)?;
    let (len, packed) = (header >> 1, header & 1 == 1);
    if len == 0 {
        return Err(CodecError::EmptyRun { at: gap_at });
    }
    let end = offset + len;
    if end > page_len_limit {
        return Err(CodecError::OutOfRange {
            at: header_at,
            what: "run end",
            value: end as u64,
            limit: page_len_limit as u64,
        });
    }
    if packed {
        unpack(reader, len, payload)?;
    } else {
        payload.extend_from_slice(reader.bytes(len, "rle literal run")?);
    }
    Ok((offset, len))
}

/// Expands RLE tokens from `reader` until exactly `len` bytes were appended
/// to `out`.
pub(crate) fn unpack(
    reader: &mut Reader<'_>,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let target = out.len() + len;
    while out.len() < target {
        let at = reader.pos();
        let control = reader.u8("rle token")?;
        let (count, repeat) = if control & REPEAT_BIT == 0 {
            (control as usize + 1, false)
        } else {
            ((control & !REPEAT_BIT) as usize + MIN_REPEAT_LEN, true)
        };
        if out.len() + count > target {
            return Err(CodecError::RleOverrun { at, len });
        }
        if repeat {
            let byte = reader.u8("rle repeated byte")?;
            out.resize(out.len() + count, byte);
        } else {
            out.extend_from_slice(reader.bytes(count, "rle literal token")?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::MAX_PAGE_LEN;
    use proptest::prelude::*;

    fn round_trip_pack(bytes: &[u8]) -> Vec<u8> {
        let mut tokens = Vec::new();
        pack(bytes, &mut tokens);
        let mut out = Vec::new();
        unpack(&mut Reader::new(&tokens), bytes.len(), &mut out).unwrap();
        out
    }

    /// The packer as it was before the word-wide skip: one byte at a time.
    fn pack_bytewise(bytes: &[u8], out: &mut Vec<u8>) {
        let mut literal_start = 0;
        let mut pos = 0;
        while pos + MIN_REPEAT_LEN <= bytes.len() {
            let byte = bytes[pos];
            if bytes[pos + 1] != byte || bytes[pos + 2] != byte {
                pos += 1;
                continue;
            }
            let repeat = repeat_len(&bytes[pos..]);
            push_literals(&bytes[literal_start..pos], out);
            out.push(REPEAT_BIT | (repeat - MIN_REPEAT_LEN) as u8);
            out.push(byte);
            pos += repeat;
            literal_start = pos;
        }
        push_literals(&bytes[literal_start..], out);
    }

    proptest! {
        #[test]
        fn pack_matches_the_bytewise_packer(
            bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(0u8), Just(7u8)], 0..300)
        ) {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            pack(&bytes, &mut fast);
            pack_bytewise(&bytes, &mut slow);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn pack_round_trips(bytes in prop::collection::vec(prop::sample::select(vec![0u8, 1, 0xff]), 0..600)) {
            prop_assert_eq!(round_trip_pack(&bytes), bytes);
        }

        #[test]
        fn pack_round_trips_random(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(round_trip_pack(&bytes), bytes);
        }
    }

    #[test]
    fn zero_run_collapses() {
        let mut tokens = Vec::new();
        pack(&[0u8; 260], &mut tokens);
        // 130 + 130 zeros: two repeat tokens of the longest kind.
        assert_eq!(tokens, vec![0xff, 0, 0xff, 0]);
    }

    #[test]
    fn mixed_literals_and_repeats() {
        let mut tokens = Vec::new();
        pack(&[1, 2, 7, 7, 7, 7, 3], &mut tokens);
        assert_eq!(tokens, vec![0x01, 1, 2, 0x81, 7, 0x00, 3]);
    }

    #[test]
    fn layout_of_a_small_delta() {
        let mut delta = Delta::new(PageId(5));
        delta.write(300, &[0xaa, 0xbb]).unwrap();
        delta.write(310, &[0u8; 10]).unwrap();
        let mut out = Vec::new();
        encode(&delta, PageId(7), &mut out);
        let expected = vec![
            0x03, // zigzag(5 - 7) = 3
            0x02, // two runs
            0xac, 0x02, // gap = offset 300
            0x04, 0xaa, 0xbb, // header 2 << 1, literal
            0x07, // gap = 310 - 302 - 1
            0x15, 0x87, 0x00, // header 10 << 1 | 1, repeat 10 zeros
        ];
        assert_eq!(out, expected);
        let decoded = decode(
            &mut Reader::new(&out),
            PageId(7),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap();
        assert_eq!(decoded, delta);
    }

    /// `delta` encoded and decoded again, with the packed flag of its only run.
    fn round_trip_one_run(delta: &Delta) -> (Delta, bool) {
        let mut out = Vec::new();
        encode(delta, PageId(0), &mut out);
        let mut reader = Reader::new(&out);
        let decoded = decode(&mut reader, PageId(0), 4096, &mut RleScratch::default()).unwrap();
        // page step, run count, gap: one byte each here; then the header.
        let mut header = Reader::new(&out[3..]);
        let packed = header.varint("header").unwrap() & 1 == 1;
        (decoded, packed)
    }

    #[test]
    fn a_long_run_is_packed_only_when_its_prefix_packs() {
        // Random bytes for the trial prefix, then zeros: the whole run would
        // pack to a third, but the trial sees only bytes that do not repeat.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes: Vec<u8> = (0..PACK_TRIAL_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        bytes.resize(4000, 0);
        let mut tokens = Vec::new();
        pack(&bytes, &mut tokens);
        assert!(
            tokens.len() < bytes.len() / 2,
            "packed whole it would shrink"
        );
        let mut delta = Delta::new(PageId(0));
        delta.write(8, &bytes).unwrap();
        let (decoded, packed) = round_trip_one_run(&delta);
        assert_eq!(decoded, delta);
        assert!(
            !packed,
            "the trial prefix did not pack, so the run is stored as it is"
        );
    }

    #[test]
    fn a_long_run_that_packs_in_its_prefix_is_packed() {
        // Zeros with a marker every 64 bytes: the trial prefix packs well.
        let bytes: Vec<u8> = (0..4000).map(|i| u8::from(i % 64 == 0)).collect();
        let mut delta = Delta::new(PageId(0));
        delta.write(8, &bytes).unwrap();
        let (decoded, packed) = round_trip_one_run(&delta);
        assert_eq!(decoded, delta);
        assert!(packed, "a mostly repeating run packs");
    }

    proptest! {
        #[test]
        fn long_runs_round_trip_packed_or_not(
            bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(0u8)], PACK_TRIAL_MIN_RUN_BYTES..4000)
        ) {
            let mut delta = Delta::new(PageId(0));
            delta.write(0, &bytes).unwrap();
            let mut out = Vec::new();
            encode(&delta, PageId(0), &mut out);
            let decoded = decode(&mut Reader::new(&out), PageId(0), 4096, &mut RleScratch::default()).unwrap();
            prop_assert_eq!(decoded, delta);
        }
    }

    #[test]
    fn token_overrunning_the_run_is_rejected() {
        // One run at 0 of length 4, packed, whose token repeats 5 bytes.
        let bytes = [0x00, 0x01, 0x00, 0x09, 0x82, 0x00];
        let err = decode(
            &mut Reader::new(&bytes),
            PageId(0),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::RleOverrun { at: 4, len: 4 })
        ));
    }

    #[test]
    fn empty_run_is_rejected() {
        let bytes = [0x00, 0x01, 0x05, 0x00];
        let err = decode(
            &mut Reader::new(&bytes),
            PageId(0),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::EmptyRun { at: 2 })
        ));
    }

    #[test]
    fn run_past_the_page_is_rejected() {
        // One run at 4090 of 8 literal bytes on a 4096-byte page.
        let mut bytes = vec![0x00, 0x01];
        put_varint(&mut bytes, 4090);
        bytes.push(8 << 1);
        bytes.extend_from_slice(&[1; 8]);
        let err = decode(
            &mut Reader::new(&bytes),
            PageId(0),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::OutOfRange {
                what: "run end",
                value: 4098,
                ..
            })
        ));
    }

    #[test]
    fn run_count_beyond_the_input_is_rejected() {
        let mut bytes = vec![0x00];
        put_varint(&mut bytes, MAX_PAGE_LEN as u64);
        let err = decode(
            &mut Reader::new(&bytes),
            PageId(0),
            MAX_PAGE_LEN,
            &mut RleScratch::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::OutOfRange {
                what: "rle run count",
                ..
            })
        ));
    }

    #[test]
    fn gap_beyond_the_page_is_rejected() {
        let mut bytes = vec![0x00, 0x01];
        put_varint(&mut bytes, u64::MAX);
        bytes.extend_from_slice(&[0x02, 0x01]);
        let err = decode(
            &mut Reader::new(&bytes),
            PageId(0),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::OutOfRange {
                what: "rle run gap",
                ..
            })
        ));
    }

    #[test]
    fn page_id_steps_wrap() {
        let delta = Delta::new(PageId(u64::MAX));
        let mut out = Vec::new();
        encode(&delta, PageId(1), &mut out);
        let decoded = decode(
            &mut Reader::new(&out),
            PageId(1),
            4096,
            &mut RleScratch::default(),
        )
        .unwrap();
        assert_eq!(decoded.page_id(), PageId(u64::MAX));
    }
}
