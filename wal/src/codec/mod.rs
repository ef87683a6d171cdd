//! Delta codecs: how one [`Delta`] becomes bytes in a commit record and back.
//!
//! Three encodings, chosen per delta and recorded in a one-byte tag so that
//! decoding never guesses (byte layouts in `docs/format-record.md`):
//! - [`DeltaEncoding::Raw`] (`raw`): the runs as they are, fixed-width fields;
//! - [`DeltaEncoding::Rle`] (`rle`): varint gap-coded runs, repeated bytes
//!   collapsed, page id coded as a step from the previous delta's;
//! - [`DeltaEncoding::Zstd`] (`zstd_frame`): zstd over the raw encoding.
//!
//! [`CodecMode::Adaptive`] picks per delta: zstd is tried first, only when
//! the raw encoding is at least [`CodecConfig::zstd_min_bytes`] long and a
//! sample of it does not look incompressible (`sample`: zstd is predicted
//! to save too little, as on random keys and values); when zstd halves the
//! raw size it is taken (see [`ZSTD_CLEAR_WIN_FACTOR`]), else the RLE
//! encoding is built and the smallest candidate wins. Within one record,
//! a streak of large deltas on which zstd lost makes the `gate` skip the
//! probe and zstd on most of the following ones.
//!
//! Decoding validates every count, length, offset and varint against the
//! input's size and the caller's page length limit before using it; a
//! malformed input is a [`CodecError`] (inside [`WalError::Codec`]) or a
//! [`DeltaError`](crate::DeltaError), never a panic.
//!
//! The commit record that holds the encoded deltas is in `record`.

mod build;
mod gate;
mod raw;
mod rle;
mod sample;
mod wire;
mod zstd_frame;

use crate::delta::Delta;
use crate::error::WalError;
use crate::ids::PageId;

pub(crate) use sample::looks_incompressible;
pub(crate) use wire::{put_varint, varint_len, Reader};
pub(crate) use zstd_frame::{compress as zstd_compress, decompress as zstd_decompress};

/// zstd level used by default: the fastest standard level. Commits pay for
/// compression on their latency path, and higher levels gain little on
/// small deltas (see `benches/codec.rs`).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default [`CodecConfig::zstd_min_bytes`]: below this raw size zstd's frame
/// and table overhead (a dozen bytes, plus up to 128 for a Huffman table)
/// rarely pays for itself, while the call costs about 50 000 instructions
/// (a B+tree leaf insert's delta, about 230 bytes, never gained). Small
/// deltas are left to the record body pass, which compresses them together.
pub const DEFAULT_ZSTD_MIN_BYTES: usize = 256;
/// Default [`CodecConfig::record_zstd_min_bytes`]: on the sparse-update
/// workload the pass starts to win on commits of about ten updated rows
/// (bodies of 100-150 bytes); below that it only costs a zstd call.
pub const DEFAULT_RECORD_ZSTD_MIN_BYTES: usize = 128;

/// Which encoding the codec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CodecMode {
    /// Per delta, the smallest of the encodings tried; a whole-record zstd
    /// pass when it pays (see [`CodecConfig::record_zstd_min_bytes`]).
    #[default]
    Adaptive,
    /// Every delta [`DeltaEncoding::Raw`]; no record pass.
    Raw,
    /// Every delta [`DeltaEncoding::Rle`]; no record pass.
    Rle,
    /// Every delta [`DeltaEncoding::Zstd`]; no record pass.
    Zstd,
}

/// Tunables of the codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecConfig {
    /// Which encoding to use.
    pub mode: CodecMode,
    /// zstd compression level, clamped to the range zstd accepts.
    pub zstd_level: i32,
    /// In adaptive mode, a delta whose raw encoding is shorter than this is
    /// never tried with zstd.
    pub zstd_min_bytes: usize,
    /// In adaptive mode, a record body at least this long (and at most
    /// [`crate::record::MAX_ZSTD_BODY_BYTES`]) is also tried compressed
    /// whole with zstd, which wins on many small deltas; `usize::MAX` turns
    /// the pass off.
    pub record_zstd_min_bytes: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            mode: CodecMode::Adaptive,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            zstd_min_bytes: DEFAULT_ZSTD_MIN_BYTES,
            record_zstd_min_bytes: DEFAULT_RECORD_ZSTD_MIN_BYTES,
        }
    }
}

impl CodecConfig {
    /// The default configuration with `mode` forced.
    pub fn with_mode(mode: CodecMode) -> Self {
        CodecConfig {
            mode,
            ..CodecConfig::default()
        }
    }
}

/// The encoding of one delta, as recorded in its tag byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeltaEncoding {
    /// Fixed-width runs (tag 0).
    Raw,
    /// Varint gap-coded, run-length-packed runs (tag 1).
    Rle,
    /// zstd frame over the raw encoding (tag 2).
    Zstd,
}

impl DeltaEncoding {
    /// The tag byte written before the encoded delta.
    pub const fn tag(self) -> u8 {
        match self {
            DeltaEncoding::Raw => 0,
            DeltaEncoding::Rle => 1,
            DeltaEncoding::Zstd => 2,
        }
    }

    /// The encoding a tag byte names, if any.
    pub const fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(DeltaEncoding::Raw),
            1 => Some(DeltaEncoding::Rle),
            2 => Some(DeltaEncoding::Zstd),
            _ => None,
        }
    }
}

/// Why bytes could not be decoded as a commit record or delta (or, for
/// [`CodecError::Compress`], could not be encoded). Byte offsets are into
/// the buffer being parsed: the record, or a decompressed body or delta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ends inside a field.
    #[error("truncated at byte {at}: {what} needs {needed} more bytes")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// The field.
        what: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("malformed varint ({what}) at byte {at}")]
    BadVarint {
        /// Offset of the varint.
        at: usize,
        /// The field.
        what: &'static str,
    },
    /// The record's format version is not one this build reads.
    #[error("unknown commit record format version {version}")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The record's flags set bits this build does not know.
    #[error("commit record flags {flags:#04x} set reserved bits")]
    UnknownFlags {
        /// The flags byte found.
        flags: u8,
    },
    /// A delta's encoding tag is not one this build knows.
    #[error("unknown delta encoding tag {tag} at byte {at}")]
    UnknownEncoding {
        /// Offset of the tag.
        at: usize,
        /// The tag found.
        tag: u8,
    },
    /// A count, length or offset exceeds what the input or the page allows.
    #[error("{what} of {value} at byte {at} exceeds the limit of {limit}")]
    OutOfRange {
        /// Offset of the field.
        at: usize,
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The largest value allowed there.
        limit: u64,
    },
    /// A run of length zero (encoders never write one).
    #[error("empty delta run at byte {at}")]
    EmptyRun {
        /// Offset of the run.
        at: usize,
    },
    /// RLE tokens expand past the run's length.
    #[error("RLE token at byte {at} expands past the run's {len} bytes")]
    RleOverrun {
        /// Offset of the token.
        at: usize,
        /// The run's length.
        len: usize,
    },
    /// Bytes are left after the last field of a self-delimited section.
    #[error("{count} bytes left over after the {what} at byte {at}")]
    TrailingBytes {
        /// Offset of the first byte left over.
        at: usize,
        /// The section.
        what: &'static str,
        /// Bytes left over.
        count: usize,
    },
    /// zstd refused a frame (corrupt, or larger than its declared length).
    #[error("zstd {what} at byte {at}: {reason}")]
    Zstd {
        /// Offset of the frame.
        at: usize,
        /// What the frame holds.
        what: &'static str,
        /// zstd's message.
        reason: String,
    },
    /// A zstd frame decompressed to fewer bytes than its declared length.
    #[error("zstd {what} at byte {at} decompressed to {actual} bytes, {expected} declared")]
    LengthMismatch {
        /// Offset of the frame.
        at: usize,
        /// What the frame holds.
        what: &'static str,
        /// The declared length.
        expected: usize,
        /// The length it decompressed to.
        actual: usize,
    },
    /// zstd failed to compress (out of memory or a bad parameter).
    #[error("zstd compression failed: {0}")]
    Compress(String),
}

/// In adaptive mode a zstd entry at most this many times smaller than the
/// raw encoding is taken without building the RLE encoding too: on large
/// compressible deltas (new pages of SQL rows) RLE packing costs about a
/// third of zstd and, whenever zstd halves the raw bytes, rarely beats it
/// (only on pages of long repeats, where both are tiny).
pub const ZSTD_CLEAR_WIN_FACTOR: usize = 2;

/// Smallest encoded delta: a tag, a one-byte page id step and a zero run count.
pub(crate) const MIN_ENCODED_DELTA_BYTES: usize = 3;

/// Buffers reused across the deltas of one record while encoding.
#[derive(Default)]
pub(crate) struct EncodeScratch {
    raw: Vec<u8>,
    compressed: Vec<u8>,
    /// Whether zstd has been paying on this record's large deltas.
    gate: gate::ZstdGate,
}

/// Buffers reused across the deltas of one record while decoding.
#[derive(Default)]
pub(crate) struct DecodeScratch {
    rle: rle::RleScratch,
    raw: Vec<u8>,
}

/// Exact length of the [`DeltaEncoding::Raw`] encoding of `delta`, tag included.
pub fn raw_encoded_len(delta: &Delta) -> usize {
    1 + raw::encoded_len(delta)
}

/// Appends `delta`, tag first, in the encoding `config` asks for; returns
/// the encoding used. `prev_page` is the page id of the record's previous
/// delta (0 for the first).
pub(crate) fn encode_delta(
    delta: &Delta,
    prev_page: PageId,
    config: &CodecConfig,
    out: &mut Vec<u8>,
    scratch: &mut EncodeScratch,
) -> Result<DeltaEncoding, CodecError> {
    debug_assert!(delta.check_invariants());
    match config.mode {
        CodecMode::Raw => {
            encode_raw(delta, out);
            Ok(DeltaEncoding::Raw)
        }
        CodecMode::Rle => {
            encode_rle(delta, prev_page, out);
            Ok(DeltaEncoding::Rle)
        }
        CodecMode::Zstd => {
            compress_raw(delta, config.zstd_level, scratch)?;
            write_zstd(out, scratch);
            Ok(DeltaEncoding::Zstd)
        }
        CodecMode::Adaptive => encode_adaptive(delta, prev_page, config, out, scratch),
    }
}

/// The smallest of RLE, raw and (for large enough deltas) zstd;
/// RLE is not tried when zstd already shrinks the raw encoding to at most
/// one [`ZSTD_CLEAR_WIN_FACTOR`]th. zstd is tried only where the record's
/// gate admits it (see `gate`), which learns from the outcome.
fn encode_adaptive(
    delta: &Delta,
    prev_page: PageId,
    config: &CodecConfig,
    out: &mut Vec<u8>,
    scratch: &mut EncodeScratch,
) -> Result<DeltaEncoding, CodecError> {
    let raw_len = raw_encoded_len(delta);
    let tried = raw_len >= config.zstd_min_bytes && scratch.gate.admits();
    let zstd_len = if tried {
        try_zstd(delta, config.zstd_level, scratch)?
    } else {
        None
    };
    let encoding = write_smallest(delta, prev_page, raw_len, zstd_len, out, scratch);
    if tried {
        scratch.gate.record(encoding == DeltaEncoding::Zstd);
    }
    Ok(encoding)
}

/// Writes the smallest of the zstd entry in `scratch` (when `zstd_len`
/// says there is one), RLE and raw; returns the encoding written.
fn write_smallest(
    delta: &Delta,
    prev_page: PageId,
    raw_len: usize,
    zstd_len: Option<usize>,
    out: &mut Vec<u8>,
    scratch: &EncodeScratch,
) -> DeltaEncoding {
    if zstd_len.is_some_and(|len| len.saturating_mul(ZSTD_CLEAR_WIN_FACTOR) <= raw_len) {
        write_zstd(out, scratch);
        return DeltaEncoding::Zstd;
    }
    let start = out.len();
    encode_rle(delta, prev_page, out);
    let rle_len = out.len() - start;
    if zstd_len.is_some_and(|len| len < rle_len.min(raw_len)) {
        out.truncate(start);
        write_zstd(out, scratch);
        return DeltaEncoding::Zstd;
    }
    if raw_len < rle_len {
        out.truncate(start);
        encode_raw(delta, out);
        return DeltaEncoding::Raw;
    }
    DeltaEncoding::Rle
}

/// Compresses the raw encoding of `delta` into `scratch` unless it looks
/// incompressible; returns the zstd entry's length.
fn try_zstd(
    delta: &Delta,
    level: i32,
    scratch: &mut EncodeScratch,
) -> Result<Option<usize>, CodecError> {
    scratch.raw.clear();
    raw::encode(delta, &mut scratch.raw);
    if looks_incompressible(&scratch.raw) {
        return Ok(None);
    }
    zstd_frame::compress(&scratch.raw, level, &mut scratch.compressed)?;
    Ok(Some(zstd_entry_len(scratch)))
}

fn encode_raw(delta: &Delta, out: &mut Vec<u8>) {
    out.push(DeltaEncoding::Raw.tag());
    raw::encode(delta, out);
}

fn encode_rle(delta: &Delta, prev_page: PageId, out: &mut Vec<u8>) {
    out.push(DeltaEncoding::Rle.tag());
    rle::encode(delta, prev_page, out);
}

/// Leaves the raw encoding in `scratch.raw` and its zstd frame in `scratch.compressed`.
fn compress_raw(delta: &Delta, level: i32, scratch: &mut EncodeScratch) -> Result<(), CodecError> {
    scratch.raw.clear();
    raw::encode(delta, &mut scratch.raw);
    zstd_frame::compress(&scratch.raw, level, &mut scratch.compressed)
}

fn zstd_entry_len(scratch: &EncodeScratch) -> usize {
    1 + varint_len(scratch.raw.len() as u64)
        + varint_len(scratch.compressed.len() as u64)
        + scratch.compressed.len()
}

/// Writes a zstd entry from the buffers [`compress_raw`] filled.
fn write_zstd(out: &mut Vec<u8>, scratch: &EncodeScratch) {
    out.push(DeltaEncoding::Zstd.tag());
    put_varint(out, scratch.raw.len() as u64);
    put_varint(out, scratch.compressed.len() as u64);
    out.extend_from_slice(&scratch.compressed);
}

/// Reads one encoded delta, tag first. `prev_page` is the page id of the
/// record's previous delta (0 for the first); every run must end within
/// `page_len_limit`.
pub(crate) fn decode_delta(
    reader: &mut Reader<'_>,
    prev_page: PageId,
    page_len_limit: usize,
    scratch: &mut DecodeScratch,
) -> Result<(Delta, DeltaEncoding), WalError> {
    let at = reader.pos();
    let tag = reader.u8("delta encoding tag")?;
    let encoding = DeltaEncoding::from_tag(tag).ok_or(CodecError::UnknownEncoding { at, tag })?;
    let delta = match encoding {
        DeltaEncoding::Raw => raw::decode(reader, page_len_limit)?,
        DeltaEncoding::Rle => rle::decode(reader, prev_page, page_len_limit, &mut scratch.rle)?,
        DeltaEncoding::Zstd => decode_zstd(reader, page_len_limit, scratch)?,
    };
    Ok((delta, encoding))
}

fn decode_zstd(
    reader: &mut Reader<'_>,
    page_len_limit: usize,
    scratch: &mut DecodeScratch,
) -> Result<Delta, WalError> {
    let raw_len = reader.varint_at_most(
        "zstd delta raw length",
        raw::max_encoded_len(page_len_limit),
    )?;
    let frame = reader.length_prefixed("zstd delta frame length")?;
    let frame_at = reader.pos() - frame.len();
    zstd_frame::decompress(frame, raw_len, &mut scratch.raw, frame_at, "delta frame")?;
    let mut inner = Reader::new(&scratch.raw);
    let delta = raw::decode(&mut inner, page_len_limit)?;
    inner.expect_end("zstd delta")?;
    Ok(delta)
}
