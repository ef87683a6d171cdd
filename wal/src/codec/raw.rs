//! The `Raw` delta encoding: the runs as they are, fixed-width fields, no
//! padding. It is the baseline the other encodings are measured against and
//! the input the `Zstd` encoding compresses.
//!
//! ```text
//! page id    u64 LE
//! run count  u32 LE
//! per run:   offset u32 LE, length u32 LE, `length` bytes
//! ```

use super::build::build_delta;
use super::wire::Reader;
use super::CodecError;
use crate::delta::{Delta, DeltaRun};
use crate::error::WalError;
use crate::ids::PageId;

/// Bytes of the page id and run count fields.
pub(crate) const RAW_HEADER_BYTES: usize = 8 + 4;
/// Bytes of one run's offset and length fields.
pub(crate) const RAW_RUN_HEADER_BYTES: usize = 4 + 4;

/// Exact length of [`encode`]'s output for `delta`.
pub(crate) fn encoded_len(delta: &Delta) -> usize {
    RAW_HEADER_BYTES + RAW_RUN_HEADER_BYTES * delta.run_count() + delta.changed_len()
}

/// Largest [`encode`] output for a delta of a page of `page_len_limit`
/// bytes: a canonical delta has at most one run per two bytes (runs are
/// separated by at least one untouched byte).
pub(crate) fn max_encoded_len(page_len_limit: usize) -> usize {
    RAW_HEADER_BYTES + RAW_RUN_HEADER_BYTES * page_len_limit.div_ceil(2) + page_len_limit
}

/// Appends the raw encoding of `delta` to `out`.
pub(crate) fn encode(delta: &Delta, out: &mut Vec<u8>) {
    out.reserve(encoded_len(delta));
    out.extend_from_slice(&delta.page_id().get().to_le_bytes());
    // A delta has at most MAX_PAGE_LEN / 2 runs and runs end within
    // MAX_PAGE_LEN, so every count, offset and length fits in a u32.
    out.extend_from_slice(&(delta.run_count() as u32).to_le_bytes());
    for run in delta.runs() {
        out.extend_from_slice(&run.offset.to_le_bytes());
        out.extend_from_slice(&(run.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(run.bytes);
    }
}

/// Reads one raw-encoded delta whose runs must end within `page_len_limit`.
pub(crate) fn decode(reader: &mut Reader<'_>, page_len_limit: usize) -> Result<Delta, WalError> {
    let page_id = PageId(reader.u64_le("raw page id")?);
    let count_at = reader.pos();
    let run_count = reader.u32_le("raw run count")? as usize;
    let count_limit = (reader.remaining() / RAW_RUN_HEADER_BYTES).min(page_len_limit);
    if run_count > count_limit {
        return Err(CodecError::OutOfRange {
            at: count_at,
            what: "raw run count",
            value: run_count as u64,
            limit: count_limit as u64,
        }
        .into());
    }
    let mut left = run_count;
    build_delta(page_id, || {
        if left == 0 {
            return Ok(None);
        }
        left -= 1;
        decode_run(reader, page_len_limit).map(Some)
    })
}

fn decode_run<'a>(
    reader: &mut Reader<'a>,
    page_len_limit: usize,
) -> Result<DeltaRun<'a>, CodecError> {
    let at = reader.pos();
    let offset = reader.u32_le("raw run offset")?;
    let len = reader.u32_le("raw run length")? as usize;
    if len == 0 {
        return Err(CodecError::EmptyRun { at });
    }
    let end = offset as u64 + len as u64;
    if end > page_len_limit as u64 {
        return Err(CodecError::OutOfRange {
            at,
            what: "run end",
            value: end,
            limit: page_len_limit as u64,
        });
    }
    let bytes = reader.bytes(len, "raw run bytes")?;
    Ok(DeltaRun { offset, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::{DeltaError, MAX_PAGE_LEN};

    fn sample() -> Delta {
        let mut delta = Delta::new(PageId(0x0102));
        delta.write(3, &[9, 8]).unwrap();
        delta.write(10, &[7]).unwrap();
        delta
    }

    #[test]
    fn layout_is_fixed_width() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        let expected: Vec<u8> = [
            &[0x02, 0x01, 0, 0, 0, 0, 0, 0][..],
            &[2, 0, 0, 0],
            &[3, 0, 0, 0, 2, 0, 0, 0, 9, 8],
            &[10, 0, 0, 0, 1, 0, 0, 0, 7],
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(out.len(), encoded_len(&sample()));
    }

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(decode(&mut reader, 4096).unwrap(), sample());
        assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn run_past_the_page_limit_is_rejected() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        let err = decode(&mut Reader::new(&out), 10).unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::OutOfRange {
                what: "run end",
                value: 11,
                limit: 10,
                ..
            })
        ));
    }

    #[test]
    fn overlapping_runs_are_rejected() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        // The second run (header at byte 22) now starts at 4, inside [3, 5).
        out[22..26].copy_from_slice(&4u32.to_le_bytes());
        let err = decode(&mut Reader::new(&out), 4096).unwrap_err();
        assert!(matches!(
            err,
            WalError::Delta(DeltaError::Unordered { offset: 4 })
        ));
    }

    #[test]
    fn empty_run_is_rejected() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        out[16..20].copy_from_slice(&0u32.to_le_bytes());
        let err = decode(&mut Reader::new(&out), 4096).unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::EmptyRun { at: 12 })
        ));
    }

    #[test]
    fn run_count_beyond_the_input_is_rejected() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        out[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&mut Reader::new(&out), MAX_PAGE_LEN).unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::OutOfRange {
                what: "raw run count",
                ..
            })
        ));
    }

    #[test]
    fn truncated_run_bytes_are_rejected() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        out.pop();
        let err = decode(&mut Reader::new(&out), 4096).unwrap_err();
        assert!(matches!(
            err,
            WalError::Codec(CodecError::Truncated {
                what: "raw run bytes",
                ..
            })
        ));
    }
}
