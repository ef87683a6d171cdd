//! Targets over the wal crate's byte codecs: commit records and the delta
//! encodings inside them (raw, RLE, zstd), plus the delta algebra
//! (`apply`, `merge`) the codecs must preserve.

use arbitrary::{Arbitrary, Unstructured};
use mmsb_wal::codec::{CodecConfig, CodecMode, DeltaEncoding};
use mmsb_wal::delta::MAX_PAGE_LEN;
use mmsb_wal::record::{CommitRecord, FLAG_BODY_ZSTD, RECORD_FORMAT_VERSION};
use mmsb_wal::{Delta, PageId};

/// Page length the decoded deltas are checked against when the input does not choose one.
pub const DEFAULT_PAGE_LEN_BYTES: usize = 4096 - 16;

/// Bytes of the page image the round trip applies deltas to.
const MODEL_PAGE_LEN_BYTES: usize = 4096;

/// Every codec mode, in the order a mode selector byte picks them.
const MODES: [CodecMode; 4] = [
    CodecMode::Raw,
    CodecMode::Rle,
    CodecMode::Zstd,
    CodecMode::Adaptive,
];

/// One write of a delta under construction.
#[derive(Debug, Arbitrary)]
struct Write {
    offset: u16,
    /// Bytes written: given outright, or one byte repeated (cheap long runs).
    bytes: Payload,
}

#[derive(Debug, Arbitrary)]
enum Payload {
    Given(Vec<u8>),
    Repeated { byte: u8, len: u16 },
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Given(bytes) => bytes.clone(),
            Payload::Repeated { byte, len } => vec![*byte; usize::from(*len % 2048)],
        }
    }
}

/// A delta to build: a page id and its writes in order.
#[derive(Debug, Arbitrary)]
struct DeltaSpec {
    page: u64,
    writes: Vec<Write>,
}

/// Input of [`delta_codecs`].
#[derive(Debug, Arbitrary)]
enum CodecInput {
    /// One encoded delta (`tag`, then `body`) wrapped in a record header.
    OneDelta {
        tag: u8,
        page_len: u16,
        body: Vec<u8>,
    },
    /// A whole record body compressed as one zstd frame.
    ZstdBody {
        count: u8,
        declared_len: u32,
        frame: Vec<u8>,
    },
    /// Deltas built from writes, encoded in `mode`, decoded again.
    RoundTrip {
        mode: u8,
        level: i8,
        zstd_min_bytes: u16,
        record_zstd_min_bytes: u16,
        deltas: Vec<DeltaSpec>,
    },
}

/// Fuzz target `delta_codecs`: decodes single RLE, zstd and raw delta
/// encodings and whole-body zstd records; and round-trips deltas built from
/// arbitrary writes through every codec mode (decode(encode(d)) == d), checking
/// on the way that `write`, `apply` and `merge` agree with a plain page model.
pub fn delta_codecs(data: &[u8]) {
    let Ok(input) = CodecInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        CodecInput::OneDelta {
            tag,
            page_len,
            body,
        } => {
            let mut record = vec![RECORD_FORMAT_VERSION, 0, 1, tag % 4];
            record.extend_from_slice(&body);
            check_decode(&record, usize::from(page_len));
        }
        CodecInput::ZstdBody {
            count,
            declared_len,
            frame,
        } => {
            let mut record = vec![RECORD_FORMAT_VERSION, FLAG_BODY_ZSTD, count & 0x7f];
            put_varint(&mut record, u64::from(declared_len));
            record.extend_from_slice(&frame);
            check_decode(&record, DEFAULT_PAGE_LEN_BYTES);
        }
        CodecInput::RoundTrip {
            mode,
            level,
            zstd_min_bytes,
            record_zstd_min_bytes,
            deltas,
        } => {
            let config = CodecConfig {
                mode: MODES[usize::from(mode) % MODES.len()],
                zstd_level: i32::from(level),
                zstd_min_bytes: usize::from(zstd_min_bytes),
                record_zstd_min_bytes: usize::from(record_zstd_min_bytes),
            };
            round_trip(&config, &deltas);
        }
    }
}

/// Fuzz target `commit_record`: arbitrary bytes as a commit record. A record
/// that decodes must hold only valid deltas within the page length, and must
/// survive re-encoding in every codec mode unchanged.
pub fn commit_record(data: &[u8]) {
    let Some((&limit_selector, bytes)) = data.split_first() else {
        return;
    };
    // Page lengths the engine uses (4 KiB and 64 KiB pages less the trailer), or a small one.
    let page_len = match limit_selector % 3 {
        0 => DEFAULT_PAGE_LEN_BYTES,
        1 => MAX_PAGE_LEN - 16,
        _ => usize::from(limit_selector),
    };
    check_decode(bytes, page_len);
}

/// Decodes `bytes`; when that succeeds, checks the record and re-encodes it
/// in every mode.
fn check_decode(bytes: &[u8], page_len: usize) {
    let Ok(record) = CommitRecord::decode(bytes, page_len) else {
        return;
    };
    let limit = page_len.min(MAX_PAGE_LEN);
    for delta in &record.deltas {
        assert!(
            delta.check_invariants(),
            "decoded delta breaks its invariants"
        );
        assert!(
            delta.extent() <= limit,
            "decoded delta reaches byte {} past the {limit}-byte page",
            delta.extent()
        );
    }
    for mode in MODES {
        assert_round_trip(&record, &CodecConfig::with_mode(mode), page_len);
    }
}

/// Encodes `record` with `config` and decodes it again: it must come back equal.
fn assert_round_trip(record: &CommitRecord, config: &CodecConfig, page_len: usize) {
    let mut encoded = Vec::new();
    let stats = match record.encode(config, &mut encoded) {
        Ok(stats) => stats,
        // zstd may refuse (a typed error); nothing was written then.
        Err(_) => {
            assert!(encoded.is_empty(), "a failed encode left bytes behind");
            return;
        }
    };
    assert_eq!(stats.encoded_bytes, encoded.len());
    if config.mode == CodecMode::Raw {
        assert_eq!(encoded.len(), record.raw_encoded_len());
    }
    match CommitRecord::decode(&encoded, page_len) {
        Ok(decoded) => assert_eq!(
            &decoded, record,
            "round trip in {:?} changed it",
            config.mode
        ),
        Err(err) => panic!(
            "a record encoded in {:?} does not decode: {err}",
            config.mode
        ),
    }
}

/// Builds the deltas, checks them against a page model, and round-trips
/// them as one record.
fn round_trip(config: &CodecConfig, specs: &[DeltaSpec]) {
    let mut deltas = Vec::with_capacity(specs.len());
    for spec in specs {
        let page_id = PageId(spec.page);
        let mut delta = Delta::new(page_id);
        let mut model = vec![0u8; MODEL_PAGE_LEN_BYTES];
        let mut older: Option<Delta> = None;
        for write in &spec.writes {
            let bytes = write.bytes.bytes();
            let offset = usize::from(write.offset);
            let before = delta.clone();
            match delta.write(offset, &bytes) {
                Ok(()) => {}
                Err(_) => {
                    assert_eq!(delta, before, "a refused write changed the delta");
                    continue;
                }
            }
            assert!(delta.check_invariants());
            if let Some(end) = offset.checked_add(bytes.len()) {
                if end <= model.len() {
                    model[offset..end].copy_from_slice(&bytes);
                }
            }
            check_merge(&mut older, page_id, offset, &bytes);
        }
        check_apply(&delta, &model);
        if let Some(older) = &older {
            assert_eq!(
                older, &delta,
                "merging single writes differs from writing them"
            );
        }
        deltas.push(delta);
    }
    let record = CommitRecord::new(deltas);
    assert_round_trip(&record, config, MAX_PAGE_LEN);
    let page_len = record.deltas.iter().map(Delta::extent).max().unwrap_or(0);
    let encodings = [DeltaEncoding::Raw, DeltaEncoding::Rle, DeltaEncoding::Zstd];
    debug_assert!(encodings
        .iter()
        .all(|e| DeltaEncoding::from_tag(e.tag()) == Some(*e)));
    if page_len > 0 {
        // Decoding against a page one byte too short must refuse the record.
        let mut encoded = Vec::new();
        if record.encode(config, &mut encoded).is_ok() {
            assert!(
                CommitRecord::decode(&encoded, page_len - 1).is_err(),
                "a delta reaching byte {page_len} decoded against a shorter page"
            );
        }
    }
}

/// Merges a delta of the single write into `older` (the merge of every
/// earlier write); in the end it must equal the delta built by `write`.
fn check_merge(older: &mut Option<Delta>, page_id: PageId, offset: usize, bytes: &[u8]) {
    let mut single = Delta::new(page_id);
    if single.write(offset, bytes).is_err() {
        return;
    }
    let merged = match older {
        Some(prev) => match prev.merge(&single) {
            Ok(merged) => merged,
            Err(err) => panic!("merging deltas of one page failed: {err}"),
        },
        None => single,
    };
    assert!(merged.check_invariants());
    *older = Some(merged);
}

/// Applying `delta` to a zero page gives the model page, when it fits.
fn check_apply(delta: &Delta, model: &[u8]) {
    let mut page = vec![0u8; model.len()];
    match delta.apply(&mut page) {
        Ok(()) => assert_eq!(page, model, "apply differs from the page model"),
        Err(_) => {
            assert!(
                delta.extent() > page.len(),
                "apply refused a delta that fits"
            );
            assert!(
                page.iter().all(|&b| b == 0),
                "a refused apply changed the page"
            );
        }
    }
}

/// Appends `value` as an unsigned LEB128 varint (the record format's).
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(record: &CommitRecord, mode: CodecMode) -> Vec<u8> {
        let mut out = Vec::new();
        let encoded = record.encode(&CodecConfig::with_mode(mode), &mut out);
        assert!(encoded.is_ok());
        out
    }

    #[test]
    fn commit_record_accepts_every_encoding_of_a_valid_record() {
        let mut delta = Delta::new(PageId(7));
        assert!(delta.write(10, &[1, 2, 3]).is_ok());
        assert!(delta.write(300, &[9; 200]).is_ok());
        let record = CommitRecord::new(vec![delta]);
        for mode in MODES {
            let mut input = vec![0u8];
            input.extend_from_slice(&encode(&record, mode));
            commit_record(&input);
        }
    }

    #[test]
    fn commit_record_ignores_garbage() {
        commit_record(&[]);
        commit_record(&[0, 1, 0, 0xff, 0xff, 0xff]);
        commit_record(&[2, 1, 1, 5, 2, 0, 0, 0]);
    }

    #[test]
    fn delta_codecs_round_trips_built_deltas_in_every_mode() {
        let specs = [DeltaSpec {
            page: 3,
            writes: vec![
                Write {
                    offset: 5,
                    bytes: Payload::Given(vec![1, 2, 3]),
                },
                Write {
                    offset: 6,
                    bytes: Payload::Repeated { byte: 7, len: 300 },
                },
                Write {
                    offset: 4000,
                    bytes: Payload::Given(vec![4; 200]),
                },
            ],
        }];
        for mode in MODES {
            round_trip(&CodecConfig::with_mode(mode), &specs);
        }
    }

    #[test]
    fn put_varint_matches_leb128() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
