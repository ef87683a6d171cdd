//! The commit record: the payload of one TLog commit frame, holding the
//! deltas of one committed transaction in the order the engine gave them
//! (several deltas may target one page; replay applies them in that order).
//!
//! ```text
//! version      u8      RECORD_FORMAT_VERSION (1)
//! flags        u8      bit 0: FLAG_BODY_ZSTD; bits 1-7 reserved, must be 0
//! delta count  varint
//! body         flags bit 0 clear: the encoded deltas, back to back, to the end
//!              flags bit 0 set:   varint body length, then one zstd frame
//!                                 (to the end) that decompresses to exactly
//!                                 that many bytes of encoded deltas
//! ```
//!
//! Each encoded delta starts with its encoding tag (see `codec`). Page ids
//! in RLE-encoded deltas are steps from the previous delta's page id, so a
//! record of deltas to nearby pages (sorted or not) spends a byte or two
//! per page id instead of eight. The TLog frames, checksums and orders
//! records; this module knows nothing of frames. Byte layouts:
//! `docs/format-record.md`.
//!
//! Choosing the body pass costs something too (a probe of a few thousand
//! instructions, a trial compression on a large body), so two cheap
//! checks come first: a body mostly made of entries the per-delta zstd try
//! already judged is not probed again, and a per-thread gate skips most
//! passes after a streak that missed (see `BodyGate`).

use std::cell::Cell;

use crate::codec::{
    self, put_varint, varint_len, zstd_compress, zstd_decompress, CodecConfig, CodecError,
    CodecMode, DecodeScratch, DeltaEncoding, EncodeScratch, Reader, MIN_ENCODED_DELTA_BYTES,
};
use crate::delta::{Delta, MAX_PAGE_LEN};
use crate::error::WalError;
use crate::ids::PageId;

/// Version of the record format this build writes and reads.
pub const RECORD_FORMAT_VERSION: u8 = 1;
/// Flag: the record body is one zstd frame.
pub const FLAG_BODY_ZSTD: u8 = 0x01;
/// Flags this build understands; a record with any other bit set is rejected.
const KNOWN_FLAGS: u8 = FLAG_BODY_ZSTD;
/// Largest record body compressed whole: the pass is meant for records of
/// many small deltas, and the bound caps what decoding a hostile record may
/// allocate. Larger records rely on per-delta encodings.
pub const MAX_ZSTD_BODY_BYTES: usize = 4 << 20;
/// Bodies longer than [`BODY_TRIAL_MIN_BODY_BYTES`] are compressed whole
/// only when their first `BODY_TRIAL_BYTES` bytes compress by at least one
/// [`BODY_TRIAL_MIN_GAIN_SHARE`]th: the sampling probe reads a few hundred
/// bytes and passes bodies of incompressible cells mixed with small varint
/// headers, on which a whole-body zstd call (a few hundred KiB, about
/// 3.5 instructions a byte) saves a few percent of bytes at best, less
/// than the time it costs (a batch of random 150-byte values: 7.5%).
const BODY_TRIAL_BYTES: usize = 16 << 10;
/// Bodies at least this long take the trial first (small ones, the pass's
/// main use, are compressed whole at once: the trial would cost a good share
/// of the whole call).
const BODY_TRIAL_MIN_BODY_BYTES: usize = 4 * BODY_TRIAL_BYTES;
/// The trial passes when zstd saves at least one this-many-th of its bytes
/// (12.5%).
const BODY_TRIAL_MIN_GAIN_SHARE: usize = 8;
/// Bytes of the version and flags fields.
const RECORD_PREFIX_BYTES: usize = 2;
/// Offset of the flags byte from the start of the record.
const FLAGS_OFFSET: usize = 1;

/// The deltas of one committed transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRecord {
    /// The deltas in the order the engine gave them; order matters when
    /// several deltas target one page.
    pub deltas: Vec<Delta>,
}

/// What [`CommitRecord::encode`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Deltas encoded.
    pub delta_count: usize,
    /// Bytes the deltas change (sum of [`Delta::changed_len`]).
    pub changed_bytes: usize,
    /// Length the record would have with [`CodecMode::Raw`]: the uncompressed baseline.
    pub raw_bytes: usize,
    /// Bytes appended to the output.
    pub encoded_bytes: usize,
    /// Deltas encoded [`DeltaEncoding::Raw`].
    pub raw_deltas: usize,
    /// Deltas encoded [`DeltaEncoding::Rle`].
    pub rle_deltas: usize,
    /// Deltas encoded [`DeltaEncoding::Zstd`].
    pub zstd_deltas: usize,
    /// Whether the body was compressed whole ([`FLAG_BODY_ZSTD`]).
    pub body_zstd: bool,
}

impl EncodeStats {
    /// `raw_bytes / encoded_bytes`: how many times smaller than raw the record came out.
    pub fn ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.encoded_bytes.max(1) as f64
    }

    fn count(&mut self, encoding: DeltaEncoding) {
        match encoding {
            DeltaEncoding::Raw => self.raw_deltas += 1,
            DeltaEncoding::Rle => self.rle_deltas += 1,
            DeltaEncoding::Zstd => self.zstd_deltas += 1,
        }
    }

    /// Adds the per-delta counts of a part of the record encoded apart.
    fn absorb(&mut self, part: &EncodeStats) {
        self.raw_deltas += part.raw_deltas;
        self.rle_deltas += part.rle_deltas;
        self.zstd_deltas += part.zstd_deltas;
        self.changed_bytes += part.changed_bytes;
    }
}

impl CommitRecord {
    /// A record of `deltas`, in order.
    pub fn new(deltas: Vec<Delta>) -> Self {
        CommitRecord { deltas }
    }

    /// Exact length of this record encoded with [`CodecMode::Raw`].
    pub fn raw_encoded_len(&self) -> usize {
        raw_record_len(self.deltas.iter())
    }

    /// Appends the encoded record to `out` (whose earlier contents are kept).
    /// On error `out` is left as it was.
    pub fn encode(&self, config: &CodecConfig, out: &mut Vec<u8>) -> Result<EncodeStats, WalError> {
        encode_deltas(self.deltas.iter(), config, out)
    }

    /// Decodes a record that [`CommitRecord::encode`] wrote. Every run must
    /// end within `page_len_limit` (itself capped at [`MAX_PAGE_LEN`]).
    /// Malformed bytes give [`WalError::Codec`] or [`WalError::Delta`].
    pub fn decode(bytes: &[u8], page_len_limit: usize) -> Result<CommitRecord, WalError> {
        let page_len_limit = page_len_limit.min(MAX_PAGE_LEN);
        let mut reader = Reader::new(bytes);
        let version = reader.u8("record version")?;
        if version != RECORD_FORMAT_VERSION {
            return Err(CodecError::UnknownVersion { version }.into());
        }
        let flags = reader.u8("record flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CodecError::UnknownFlags { flags }.into());
        }
        let count_at = reader.pos();
        let count = reader.varint("delta count")?;
        if flags & FLAG_BODY_ZSTD == 0 {
            return decode_body(&mut reader, count, count_at, page_len_limit);
        }
        let body_len = reader.varint_at_most("record body length", MAX_ZSTD_BODY_BYTES)?;
        let frame_at = reader.pos();
        let mut body = Vec::new();
        zstd_decompress(reader.rest(), body_len, &mut body, frame_at, "record body")?;
        decode_body(&mut Reader::new(&body), count, count_at, page_len_limit)
    }
}

/// Decodes a record that [`CommitRecord::encode`] wrote, like
/// [`CommitRecord::decode`], but hands each delta to `visit` in record
/// order instead of collecting them: the caller reads the delta's page and
/// runs ([`Delta::runs`] gives borrowed slices) and keeps none of it, so no
/// `Vec<Delta>` is built and each delta's heap blocks are freed before the
/// next one is decoded. Returns the deltas visited. The same checks as
/// [`CommitRecord::decode`] apply (runs within `page_len_limit`, capped at
/// [`MAX_PAGE_LEN`]); a malformed record gives [`WalError::Codec`] or
/// [`WalError::Delta`], converted into `E`, and an error from `visit` stops
/// the walk and is returned as is. Deltas visited before a decoding error
/// stay visited.
pub fn visit_deltas<E, F>(bytes: &[u8], page_len_limit: usize, mut visit: F) -> Result<usize, E>
where
    E: From<WalError>,
    F: FnMut(&Delta) -> Result<(), E>,
{
    let page_len_limit = page_len_limit.min(MAX_PAGE_LEN);
    let mut reader = Reader::new(bytes);
    let version = reader.u8("record version").map_err(WalError::from)?;
    if version != RECORD_FORMAT_VERSION {
        return Err(WalError::from(CodecError::UnknownVersion { version }).into());
    }
    let flags = reader.u8("record flags").map_err(WalError::from)?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(WalError::from(CodecError::UnknownFlags { flags }).into());
    }
    let count_at = reader.pos();
    let count = reader.varint("delta count").map_err(WalError::from)?;
    if flags & FLAG_BODY_ZSTD == 0 {
        return visit_body(&mut reader, count, count_at, page_len_limit, &mut visit);
    }
    let body_len = reader
        .varint_at_most("record body length", MAX_ZSTD_BODY_BYTES)
        .map_err(WalError::from)?;
    let frame_at = reader.pos();
    let mut body = Vec::new();
    zstd_decompress(reader.rest(), body_len, &mut body, frame_at, "record body")
        .map_err(WalError::from)?;
    visit_body(
        &mut Reader::new(&body),
        count,
        count_at,
        page_len_limit,
        &mut visit,
    )
}

/// [`visit_deltas`]'s walk over `count` deltas that must fill `reader`.
fn visit_body<E, F>(
    reader: &mut Reader<'_>,
    count: u64,
    count_at: usize,
    page_len_limit: usize,
    visit: &mut F,
) -> Result<usize, E>
where
    E: From<WalError>,
    F: FnMut(&Delta) -> Result<(), E>,
{
    let count_limit = reader.remaining() / MIN_ENCODED_DELTA_BYTES;
    let count = match usize::try_from(count) {
        Ok(count) if count <= count_limit => count,
        _ => {
            return Err(WalError::from(CodecError::OutOfRange {
                at: count_at,
                what: "delta count",
                value: count,
                limit: count_limit as u64,
            })
            .into())
        }
    };
    let mut scratch = DecodeScratch::default();
    let mut prev_page = PageId(0);
    for _ in 0..count {
        let (delta, _) = codec::decode_delta(reader, prev_page, page_len_limit, &mut scratch)?;
        prev_page = delta.page_id();
        visit(&delta)?;
    }
    reader.expect_end("record body").map_err(WalError::from)?;
    Ok(count)
}

/// Exact length of the record of `deltas` encoded with [`CodecMode::Raw`].
fn raw_record_len<'a>(deltas: impl ExactSizeIterator<Item = &'a Delta>) -> usize {
    RECORD_PREFIX_BYTES
        + varint_len(deltas.len() as u64)
        + deltas.map(codec::raw_encoded_len).sum::<usize>()
}

/// Appends the record of `deltas` (in order) to `out`, exactly as
/// [`CommitRecord::encode`] would encode a record holding them, without
/// the record having to own (or the caller to clone) the deltas. On error
/// `out` is left as it was.
pub fn encode_deltas<'a, I>(
    deltas: I,
    config: &CodecConfig,
    out: &mut Vec<u8>,
) -> Result<EncodeStats, WalError>
where
    I: IntoIterator<Item = &'a Delta>,
    I::IntoIter: ExactSizeIterator + Clone,
{
    let deltas = deltas.into_iter();
    let start = out.len();
    let result = encode_inner(deltas, config, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_inner<'a>(
    deltas: impl ExactSizeIterator<Item = &'a Delta> + Clone,
    config: &CodecConfig,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<EncodeStats, WalError> {
    let mut stats = EncodeStats {
        delta_count: deltas.len(),
        raw_bytes: raw_record_len(deltas.clone()),
        ..EncodeStats::default()
    };
    // No encoding is longer than raw: one reservation covers the record.
    out.reserve(stats.raw_bytes);
    out.push(RECORD_FORMAT_VERSION);
    out.push(0);
    put_varint(out, stats.delta_count as u64);
    let body_start = out.len();
    let parts = parallel_parts(stats.raw_bytes, config);
    let judged = if parts > 1 {
        let deltas: Vec<&Delta> = deltas.collect();
        encode_parts(&deltas, parts, config, out, &mut stats)?
    } else {
        encode_run(deltas, PageId(0), config, out, &mut stats)?
    };
    if config.mode == CodecMode::Adaptive {
        stats.body_zstd = compress_body(out, body_start, judged, config)?;
        if stats.body_zstd {
            out[start + FLAGS_OFFSET] |= FLAG_BODY_ZSTD;
        }
    }
    stats.encoded_bytes = out.len() - start;
    debug_assert!(config.mode != CodecMode::Raw || stats.encoded_bytes == stats.raw_bytes);
    debug_assert!(config.mode != CodecMode::Adaptive || stats.encoded_bytes <= stats.raw_bytes);
    Ok(stats)
}

/// Bytes of a run of encoded entries that the whole-body zstd pass would
/// gain little on: entries zstd encoded already, and entries of deltas
/// large enough for the per-delta zstd try (at least
/// [`CodecConfig::zstd_min_bytes`] raw) that did not come out zstd (the
/// compressibility probe refused them, zstd lost to RLE or raw, or the
/// gate skipped them after a streak of such losses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct JudgedBytes {
    /// Bytes of zstd-encoded entries.
    zstd: usize,
    /// Bytes of the entries of large deltas that zstd passed on.
    refused: usize,
}

impl JudgedBytes {
    fn add(&mut self, other: JudgedBytes) {
        self.zstd += other.zstd;
        self.refused += other.refused;
    }

    /// Whether these bytes are at least half of a body of `body_len`
    /// bytes: the body pass could then gain on less than half of it,
    /// and its probe (thousands of instructions) or its zstd call (tens
    /// of thousands) would cost more than it saves (a single-row commit
    /// of random bytes: its leaf delta was probed already).
    fn dominate(&self, body_len: usize) -> bool {
        (self.zstd + self.refused).saturating_mul(2) >= body_len
    }
}

/// Appends the entries of `deltas`, the first one's page id relative to
/// `prev_page`, counting them into `stats`; returns the bytes of the
/// entries zstd encoded or passed on.
fn encode_run<'a>(
    deltas: impl Iterator<Item = &'a Delta>,
    mut prev_page: PageId,
    config: &CodecConfig,
    out: &mut Vec<u8>,
    stats: &mut EncodeStats,
) -> Result<JudgedBytes, WalError> {
    let mut scratch = EncodeScratch::default();
    let mut judged = JudgedBytes::default();
    let adaptive = config.mode == CodecMode::Adaptive;
    for delta in deltas {
        let entry_start = out.len();
        let encoding = codec::encode_delta(delta, prev_page, config, out, &mut scratch)?;
        let entry_bytes = out.len() - entry_start;
        if encoding == DeltaEncoding::Zstd {
            judged.zstd += entry_bytes;
        } else if adaptive && codec::raw_encoded_len(delta) >= config.zstd_min_bytes {
            judged.refused += entry_bytes;
        }
        stats.count(encoding);
        stats.changed_bytes += delta.changed_len();
        prev_page = delta.page_id();
    }
    Ok(judged)
}

/// A record whose deltas are at least this many raw bytes is encoded in
/// parts on several threads (zstd is most of a large commit's encoding:
/// a bulk load's fresh leaves are each their own zstd frame).
pub const PARALLEL_ENCODE_MIN_RAW_BYTES: usize = 1 << 20;

/// Raw bytes each part of a parallel encoding gets at least (below this
/// the hand-off costs more than the part's encoding).
const PARALLEL_ENCODE_PART_MIN_RAW_BYTES: usize = 256 << 10;

/// Most parts one record is encoded in.
const PARALLEL_ENCODE_MAX_PARTS: usize = 8;

/// How many parts a record of `raw_bytes` is encoded in: 1 (on the
/// calling thread) unless it is adaptive (the only mode with zstd) and
/// large, else as many as the thread pool and the size allow.
fn parallel_parts(raw_bytes: usize, config: &CodecConfig) -> usize {
    if config.mode != CodecMode::Adaptive || raw_bytes < PARALLEL_ENCODE_MIN_RAW_BYTES {
        return 1;
    }
    rayon::current_num_threads()
        .min(raw_bytes / PARALLEL_ENCODE_PART_MIN_RAW_BYTES)
        .clamp(1, PARALLEL_ENCODE_MAX_PARTS)
}

/// One part of a parallel encoding: its entries, their counts, and the
/// bytes of those zstd encoded or passed on.
type EncodedPart = (Vec<u8>, EncodeStats, JudgedBytes);

/// Encodes `deltas` as `parts` consecutive runs on rayon's pool and
/// appends them in order: part `i` starts its page ids from the last
/// page of part `i - 1`, so the body is a valid sequence of entries that
/// decodes to the same deltas. Each part has its own zstd gate, so the
/// encodings chosen (not what they decode to) can differ from a
/// one-thread encoding; they depend only on the deltas and `parts`.
/// Returns the bytes of the entries zstd encoded or passed on.
fn encode_parts(
    deltas: &[&Delta],
    parts: usize,
    config: &CodecConfig,
    out: &mut Vec<u8>,
    stats: &mut EncodeStats,
) -> Result<JudgedBytes, WalError> {
    use rayon::prelude::*;
    debug_assert!(parts > 1);
    let part_len = deltas.len().div_ceil(parts).max(1);
    let encoded: Vec<Result<EncodedPart, WalError>> = deltas
        .par_chunks(part_len)
        .enumerate()
        .map(|(i, part)| {
            // Part `i` continues from the last page of part `i - 1`.
            let prev_page = match i {
                0 => PageId(0),
                _ => deltas[i * part_len - 1].page_id(),
            };
            let mut bytes =
                Vec::with_capacity(part.iter().map(|d| codec::raw_encoded_len(d)).sum());
            let mut part_stats = EncodeStats::default();
            let judged = encode_run(
                part.iter().copied(),
                prev_page,
                config,
                &mut bytes,
                &mut part_stats,
            )?;
            Ok((bytes, part_stats, judged))
        })
        .collect();
    let mut judged = JudgedBytes::default();
    for part in encoded {
        let (bytes, part_stats, part_judged) = part?;
        out.extend_from_slice(&bytes);
        stats.absorb(&part_stats);
        judged.add(part_judged);
    }
    Ok(judged)
}

/// Whole-body passes in a row (on one thread) that may miss — the probe
/// refuses the body, the trial fails, or zstd does not shrink it — before
/// `BodyGate` starts skipping passes.
pub const BODY_MISS_STREAK_MAX: u32 = 4;

/// Most records whose body pass `BodyGate` skips between two tries.
pub const BODY_SKIP_MAX_RECORDS: u32 = 32;

/// How the whole-body pass fared on the last records this thread encoded:
/// the per-record counterpart of the codec's per-delta zstd gate. A stream
/// of small commits of random bytes (a key-value workload's single-row
/// commits) pays the compressibility probe, a few thousand instructions,
/// on every record and never gains; after [`BODY_MISS_STREAK_MAX`] misses
/// in a row the gate lets only one record in `2^k` try (`k` growing with
/// the streak, the gap capped at [`BODY_SKIP_MAX_RECORDS`]), and a win
/// reopens it fully. A skipped record is written exactly as one the pass
/// does not pay on (flag clear), so the format is untouched; the cost is,
/// at worst, a few compressible records of a changed workload stored
/// without the pass until the next try wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BodyGate {
    /// Tries in a row that missed.
    misses: u32,
    /// Records still to skip before the next try.
    skip_left: u32,
}

impl BodyGate {
    /// Whether the next record may try the pass; counts a skip.
    fn admits(&mut self) -> bool {
        if self.skip_left > 0 {
            self.skip_left -= 1;
            return false;
        }
        true
    }

    /// Records the outcome of a try the gate admitted.
    fn record(&mut self, won: bool) {
        if won {
            *self = BodyGate::default();
            return;
        }
        self.misses = self.misses.saturating_add(1);
        if self.misses >= BODY_MISS_STREAK_MAX {
            let doublings = (self.misses - BODY_MISS_STREAK_MAX).min(BODY_SKIP_MAX_RECORDS.ilog2());
            self.skip_left = (1u32 << doublings).min(BODY_SKIP_MAX_RECORDS);
        }
        debug_assert!(self.skip_left <= BODY_SKIP_MAX_RECORDS);
    }
}

thread_local! {
    /// The body gate of the records this thread encodes (each committing
    /// thread learns from its own stream of commits).
    static BODY_GATE: Cell<BodyGate> = const {
        Cell::new(BodyGate {
            misses: 0,
            skip_left: 0,
        })
    };
}

/// Replaces the body that starts at `body_start` with its zstd frame when
/// the pass applies and wins; returns whether it did. Skipped, before any
/// probe, when at least half the body is entries that zstd encoded already
/// or passed on (see [`JudgedBytes`]), or when this thread's [`BodyGate`]
/// says so.
fn compress_body(
    out: &mut Vec<u8>,
    body_start: usize,
    judged: JudgedBytes,
    config: &CodecConfig,
) -> Result<bool, CodecError> {
    let body_len = out.len() - body_start;
    let applies = body_len >= config.record_zstd_min_bytes
        && body_len <= MAX_ZSTD_BODY_BYTES
        && !judged.dominate(body_len);
    if !applies {
        return Ok(false);
    }
    let mut gate = BODY_GATE.get();
    if !gate.admits() {
        BODY_GATE.set(gate);
        return Ok(false);
    }
    let result = try_body_pass(out, body_start, config);
    gate.record(matches!(result, Ok(true)));
    BODY_GATE.set(gate);
    result
}

/// The body pass proper: the probe, the trial of a large body, zstd; the
/// body is replaced only when its frame is smaller.
fn try_body_pass(
    out: &mut Vec<u8>,
    body_start: usize,
    config: &CodecConfig,
) -> Result<bool, CodecError> {
    let body_len = out.len() - body_start;
    if codec::looks_incompressible(&out[body_start..]) {
        return Ok(false);
    }
    let mut frame = Vec::new();
    if body_len >= BODY_TRIAL_MIN_BODY_BYTES && !trial_pays(&out[body_start..], config, &mut frame)?
    {
        return Ok(false);
    }
    zstd_compress(&out[body_start..], config.zstd_level, &mut frame)?;
    if varint_len(body_len as u64) + frame.len() >= body_len {
        return Ok(false);
    }
    out.truncate(body_start);
    put_varint(out, body_len as u64);
    out.extend_from_slice(&frame);
    Ok(true)
}

/// Whether zstd saves at least one [`BODY_TRIAL_MIN_GAIN_SHARE`]th of the
/// first [`BODY_TRIAL_BYTES`] of `body` (`frame` is scratch).
fn trial_pays(body: &[u8], config: &CodecConfig, frame: &mut Vec<u8>) -> Result<bool, CodecError> {
    let trial = &body[..body.len().min(BODY_TRIAL_BYTES)];
    zstd_compress(trial, config.zstd_level, frame)?;
    Ok(frame.len() + trial.len() / BODY_TRIAL_MIN_GAIN_SHARE <= trial.len())
}

/// Reads `count` deltas that must fill `reader` exactly.
fn decode_body(
    reader: &mut Reader<'_>,
    count: u64,
    count_at: usize,
    page_len_limit: usize,
) -> Result<CommitRecord, WalError> {
    let count_limit = reader.remaining() / MIN_ENCODED_DELTA_BYTES;
    let count = match usize::try_from(count) {
        Ok(count) if count <= count_limit => count,
        _ => {
            return Err(CodecError::OutOfRange {
                at: count_at,
                what: "delta count",
                value: count,
                limit: count_limit as u64,
            }
            .into())
        }
    };
    let mut deltas = Vec::with_capacity(count);
    let mut scratch = DecodeScratch::default();
    let mut prev_page = PageId(0);
    for _ in 0..count {
        let (delta, _) = codec::decode_delta(reader, prev_page, page_len_limit, &mut scratch)?;
        prev_page = delta.page_id();
        deltas.push(delta);
    }
    reader.expect_end("record body")?;
    Ok(CommitRecord { deltas })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaRun;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const MODES: [CodecMode; 4] = [
        CodecMode::Raw,
        CodecMode::Rle,
        CodecMode::Zstd,
        CodecMode::Adaptive,
    ];

    fn encode(record: &CommitRecord, mode: CodecMode) -> Vec<u8> {
        let mut out = Vec::new();
        record
            .encode(&CodecConfig::with_mode(mode), &mut out)
            .unwrap();
        out
    }

    fn codec_err(bytes: &[u8], page_len_limit: usize) -> CodecError {
        match CommitRecord::decode(bytes, page_len_limit) {
            Err(WalError::Codec(err)) => err,
            other => panic!("expected a codec error, got {other:?}"),
        }
    }

    #[test]
    fn visiting_a_record_sees_what_decoding_collects() {
        let record = CommitRecord::new(vec![
            sparse_delta(3, &[(0, b"abc"), (100, b"xyz")]),
            sparse_delta(1, &[(7, &[9; 40])]),
            sparse_delta(3, &[(1, b"q")]),
        ]);
        for mode in MODES {
            let bytes = encode(&record, mode);
            let mut seen = Vec::new();
            let count = visit_deltas::<WalError, _>(&bytes, 4096, |delta| {
                seen.push(delta.clone());
                Ok(())
            })
            .unwrap();
            assert_eq!(count, 3);
            assert_eq!(seen, CommitRecord::decode(&bytes, 4096).unwrap().deltas);
            let mut visits = 0;
            let stopped = visit_deltas::<WalError, _>(&bytes, 4096, |_| {
                visits += 1;
                Err(WalError::from(crate::delta::DeltaError::Unordered {
                    offset: 1,
                }))
            });
            assert!(matches!(stopped, Err(WalError::Delta(_))), "{stopped:?}");
            assert_eq!(visits, 1);
            let short = visit_deltas::<WalError, _>(&bytes[..bytes.len() - 1], 4096, |_| Ok(()));
            assert!(short.is_err());
            let narrow = visit_deltas::<WalError, _>(&bytes, 64, |_| Ok(()));
            assert!(narrow.is_err(), "a run past the page limit must be refused");
        }
    }

    fn sparse_delta(page: u64, writes: &[(usize, &[u8])]) -> Delta {
        let mut delta = Delta::new(PageId(page));
        for &(offset, bytes) in writes {
            delta.write(offset, bytes).unwrap();
        }
        delta
    }

    /// How a generated delta looks.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        /// A few short writes at random offsets.
        Sparse,
        /// About half of the page's bytes changed, in random spans.
        Dense,
        /// A full image of random bytes with zero runs.
        FullImage,
        /// Short writes of repeated bytes.
        Repeats,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Sparse),
            Just(Shape::Dense),
            Just(Shape::FullImage),
            Just(Shape::Repeats),
        ]
    }

    fn page_len() -> impl Strategy<Value = usize> {
        prop_oneof![Just(4096usize), 1usize..=MAX_PAGE_LEN]
    }

    /// A delta of `shape` on a page of `page_len` bytes, from `rng`.
    fn gen_delta(rng: &mut StdRng, page: u64, page_len: usize, shape: Shape) -> Delta {
        let mut delta = Delta::new(PageId(page));
        match shape {
            Shape::Sparse | Shape::Repeats => {
                for _ in 0..rng.gen_range(0..40) {
                    let offset = rng.gen_range(0..page_len);
                    let len = rng.gen_range(1..=16).min(page_len - offset);
                    let bytes: Vec<u8> = match shape {
                        Shape::Repeats => vec![rng.gen_range(0..3); len],
                        _ => (0..len).map(|_| rng.gen()).collect(),
                    };
                    delta.write(offset, &bytes).unwrap();
                }
            }
            Shape::Dense => {
                let old: Vec<u8> = (0..page_len).map(|_| rng.gen()).collect();
                let mut new = old.clone();
                for byte in new.iter_mut() {
                    if rng.gen_bool(0.5) {
                        *byte = byte.wrapping_add(1);
                    }
                }
                delta = Delta::from_diff(PageId(page), &old, &new).unwrap();
            }
            Shape::FullImage => {
                let image: Vec<u8> = (0..page_len)
                    .map(|i| if (i / 64) % 3 == 0 { 0 } else { rng.gen() })
                    .collect();
                delta = Delta::full_image(PageId(page), &image).unwrap();
            }
        }
        delta
    }

    fn gen_record(seed: u64, page_len: usize, shapes: &[Shape]) -> CommitRecord {
        let mut rng = StdRng::seed_from_u64(seed);
        let deltas = shapes
            .iter()
            .map(|&shape| {
                // Few distinct pages, in no particular order: some repeat.
                let page = rng.gen_range(0..6u64) * rng.gen_range(1..1_000_000u64);
                gen_delta(&mut rng, page, page_len, shape)
            })
            .collect();
        CommitRecord::new(deltas)
    }

    fn assert_well_formed(record: &CommitRecord, page_len_limit: usize) {
        for delta in &record.deltas {
            assert!(delta.check_invariants());
            assert!(delta.extent() <= page_len_limit.min(MAX_PAGE_LEN));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_mode_round_trips(
            seed in any::<u64>(),
            page_len in page_len(),
            shapes in prop::collection::vec(shape(), 0..6),
        ) {
            let record = gen_record(seed, page_len, &shapes);
            let mut sizes = Vec::new();
            let mut adaptive_zstd_deltas = 0;
            for mode in MODES {
                let mut bytes = Vec::new();
                let stats = record.encode(&CodecConfig::with_mode(mode), &mut bytes).unwrap();
                if mode == CodecMode::Adaptive {
                    // Rle is never longer than Raw (docs/format-record.md).
                    prop_assert_eq!(stats.raw_deltas, 0);
                    adaptive_zstd_deltas = stats.zstd_deltas;
                }
                let decoded = CommitRecord::decode(&bytes, page_len).unwrap();
                prop_assert_eq!(&decoded, &record, "mode {:?}", mode);
                sizes.push(bytes.len());
            }
            prop_assert_eq!(sizes[0], record.raw_encoded_len());
            prop_assert!(sizes[3] <= sizes[0], "adaptive sizes {:?}", sizes);
            // A zstd delta that halves its raw bytes is taken without trying
            // RLE, which may (rarely) have been shorter still.
            prop_assert!(adaptive_zstd_deltas > 0 || sizes[3] <= sizes[1], "adaptive sizes {:?}", sizes);
        }

        #[test]
        fn many_small_deltas_round_trip_through_the_body_pass(
            seed in any::<u64>(),
            count in 0usize..300,
        ) {
            let record = gen_record(seed, 4096, &vec![Shape::Sparse; count]);
            let mut bytes = Vec::new();
            let stats = record.encode(&CodecConfig::default(), &mut bytes).unwrap();
            prop_assert_eq!(stats.encoded_bytes, bytes.len());
            prop_assert_eq!(stats.delta_count, count);
            prop_assert_eq!(stats.body_zstd, bytes[1] & FLAG_BODY_ZSTD != 0);
            prop_assert_eq!(CommitRecord::decode(&bytes, 4096).unwrap(), record);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            head in prop::sample::select(vec![vec![], vec![1u8, 0], vec![1u8, 1]]),
            tail in prop::collection::vec(any::<u8>(), 0..256),
            page_len_limit in prop_oneof![Just(4096usize), Just(usize::MAX), 0usize..70_000],
        ) {
            let bytes = [head, tail].concat();
            if let Ok(record) = CommitRecord::decode(&bytes, page_len_limit) {
                assert_well_formed(&record, page_len_limit);
            }
        }

        #[test]
        fn damaged_encodings_never_panic(
            seed in any::<u64>(),
            shapes in prop::collection::vec(shape(), 1..4),
            mode in prop::sample::select(MODES.to_vec()),
            damage in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8, 0u8..4), 1..4),
        ) {
            let record = gen_record(seed, 2048, &shapes);
            let mut bytes = encode(&record, mode);
            for (index, bit, how) in damage {
                let at = index.index(bytes.len());
                match how {
                    0 | 1 => bytes[at] ^= 1 << bit,
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, bit.wrapping_mul(37)),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(decoded) = CommitRecord::decode(&bytes, 2048) {
                assert_well_formed(&decoded, 2048);
            }
        }
    }

    #[test]
    fn layout_of_a_small_record() {
        let record = CommitRecord::new(vec![
            sparse_delta(9, &[(4, &[0xaa])]),
            sparse_delta(10, &[(0, &[1, 2])]),
        ]);
        let bytes = encode(&record, CodecMode::Adaptive);
        let expected = [
            RECORD_FORMAT_VERSION,
            0, // flags: body not compressed (too short for the pass)
            2, // two deltas
            1,
            18,
            1,
            4,
            2,
            0xaa, // rle, page step +9, one run at 4, one literal byte
            1,
            2,
            1,
            0,
            4,
            1,
            2, // rle, page step +1, one run at 0, two literal bytes
        ];
        assert_eq!(bytes, expected);
        assert_eq!(CommitRecord::decode(&bytes, 4096).unwrap(), record);
    }

    #[test]
    fn empty_record_round_trips() {
        for mode in MODES {
            let bytes = encode(&CommitRecord::default(), mode);
            assert_eq!(bytes, [RECORD_FORMAT_VERSION, 0, 0]);
            assert_eq!(
                CommitRecord::decode(&bytes, 4096).unwrap(),
                CommitRecord::default()
            );
        }
    }

    #[test]
    fn deltas_to_one_page_keep_their_order() {
        let record = CommitRecord::new(vec![
            sparse_delta(3, &[(0, &[1, 1, 1])]),
            sparse_delta(3, &[(1, &[2])]),
            sparse_delta(1, &[(0, &[5])]),
            sparse_delta(3, &[(2, &[3])]),
        ]);
        for mode in MODES {
            let decoded = CommitRecord::decode(&encode(&record, mode), 4096).unwrap();
            assert_eq!(decoded, record);
            let mut page = [0u8; 4];
            for delta in decoded.deltas.iter().filter(|d| d.page_id() == PageId(3)) {
                delta.apply(&mut page).unwrap();
            }
            assert_eq!(page, [1, 2, 3, 0]);
        }
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let record = CommitRecord::new(vec![sparse_delta(1, &[(0, &[7; 300])])]);
        let mut out = vec![0xee; 5];
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert_eq!(&out[..5], &[0xee; 5]);
        assert_eq!(stats.encoded_bytes, out.len() - 5);
        assert_eq!(CommitRecord::decode(&out[5..], 4096).unwrap(), record);
    }

    #[test]
    fn adaptive_picks_zstd_for_compressible_full_pages_and_rle_for_sparse() {
        let image: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let record = CommitRecord::new(vec![
            Delta::full_image(PageId(1), &image).unwrap(),
            sparse_delta(2, &[(100, &[1, 2, 3, 4])]),
        ]);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert_eq!(
            (stats.zstd_deltas, stats.rle_deltas, stats.raw_deltas),
            (1, 1, 0)
        );
        assert!(
            !stats.body_zstd,
            "a body of mostly zstd deltas is not recompressed"
        );
        assert!(stats.ratio() > 10.0, "ratio {}", stats.ratio());
    }

    #[test]
    fn zstd_is_not_tried_below_its_threshold() {
        let record = CommitRecord::new(vec![Delta::full_image(PageId(1), &[0u8; 100]).unwrap()]);
        let config = CodecConfig {
            zstd_min_bytes: 200,
            ..CodecConfig::default()
        };
        let mut out = Vec::new();
        let stats = record.encode(&config, &mut out).unwrap();
        assert_eq!(stats.zstd_deltas, 0);
        assert_eq!(stats.rle_deltas, 1);
    }

    #[test]
    fn many_small_deltas_take_the_body_pass() {
        let deltas = (0..200u64)
            .map(|page| {
                sparse_delta(
                    page * 3,
                    &[((page as usize * 40) % 4000, &[page as u8, 0, 1])],
                )
            })
            .collect();
        let record = CommitRecord::new(deltas);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert!(stats.body_zstd);
        assert_eq!(out[1], FLAG_BODY_ZSTD);
        let mut off = Vec::new();
        let no_pass = CodecConfig {
            record_zstd_min_bytes: usize::MAX,
            ..CodecConfig::default()
        };
        let stats_off = record.encode(&no_pass, &mut off).unwrap();
        assert!(!stats_off.body_zstd);
        assert!(out.len() < off.len());
        assert_eq!(CommitRecord::decode(&out, 4096).unwrap(), record);
    }

    #[test]
    fn a_body_mostly_of_a_refused_large_delta_skips_the_body_pass() {
        // A single-row commit of random bytes: its leaf delta is large
        // enough for the per-delta zstd try, which the probe refuses; the
        // body beside it is a small edit.
        let deltas = vec![random_delta(1, 600, 1), sparse_delta(2, &[(8, b"slot")])];
        let config = CodecConfig::default();
        let (mut out, mut stats) = (Vec::new(), EncodeStats::default());
        let judged = encode_run(deltas.iter(), PageId(0), &config, &mut out, &mut stats).unwrap();
        assert_eq!(judged.zstd, 0);
        assert!(judged.refused > 600 && judged.refused < out.len());
        assert!(judged.dominate(out.len()));
        let record = CommitRecord::new(deltas);
        let mut encoded = Vec::new();
        assert!(!record.encode(&config, &mut encoded).unwrap().body_zstd);
        assert_eq!(CommitRecord::decode(&encoded, 4096).unwrap(), record);
    }

    #[test]
    fn rle_mode_judges_nothing() {
        let deltas = [random_delta(1, 600, 1)];
        let config = CodecConfig::with_mode(CodecMode::Rle);
        let (mut out, mut stats) = (Vec::new(), EncodeStats::default());
        let judged = encode_run(deltas.iter(), PageId(0), &config, &mut out, &mut stats).unwrap();
        assert_eq!(judged, JudgedBytes::default());
        assert!(!judged.dominate(out.len()));
    }

    #[test]
    fn many_small_deltas_beside_a_refused_one_still_take_the_body_pass() {
        let mut deltas = vec![random_delta(1, 600, 1)];
        deltas.extend((0..200u64).map(|page| {
            sparse_delta(
                10 + page * 3,
                &[((page as usize * 40) % 4000, &[page as u8, 0, 1])],
            )
        }));
        let record = CommitRecord::new(deltas);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert!(stats.body_zstd, "the small deltas are most of the body");
        assert_eq!(CommitRecord::decode(&out, 4096).unwrap(), record);
    }

    #[test]
    fn the_body_gate_backs_off_after_a_streak_of_misses_and_a_win_reopens_it() {
        let mut gate = BodyGate::default();
        for _ in 0..BODY_MISS_STREAK_MAX - 1 {
            assert!(gate.admits());
            gate.record(false);
        }
        assert_eq!(
            gate.skip_left, 0,
            "no skip before the streak is long enough"
        );
        // The gaps double: 1, 2, 4, ... up to the cap.
        let mut gaps = Vec::new();
        for _ in 0..10 {
            assert!(gate.admits());
            gate.record(false);
            let mut gap = 0;
            while !gate.admits() {
                gap += 1;
            }
            gaps.push(gap);
            // `admits` said yes: that try is the next loop's; undo its count.
            gate.skip_left = 0;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 32, 32, 32, 32]);
        gate.record(true);
        assert_eq!(gate, BodyGate::default());
    }

    proptest! {
        /// Model: whatever the outcomes, the gate never skips more than
        /// `BODY_SKIP_MAX_RECORDS` records in a row, never skips before a
        /// streak of `BODY_MISS_STREAK_MAX` misses, and a win reopens it.
        #[test]
        fn the_body_gate_skips_boundedly(outcomes in prop::collection::vec(any::<bool>(), 0..200)) {
            let mut gate = BodyGate::default();
            let (mut skipped_in_a_row, mut misses_in_a_row) = (0u32, 0u32);
            let mut outcomes = outcomes.into_iter();
            for _ in 0..2000 {
                if !gate.admits() {
                    skipped_in_a_row += 1;
                    prop_assert!(skipped_in_a_row <= BODY_SKIP_MAX_RECORDS);
                    prop_assert!(misses_in_a_row >= BODY_MISS_STREAK_MAX);
                    continue;
                }
                skipped_in_a_row = 0;
                let Some(won) = outcomes.next() else { break };
                gate.record(won);
                misses_in_a_row = if won { 0 } else { misses_in_a_row + 1 };
                if won {
                    prop_assert!(gate.admits(), "a win reopens the gate");
                    gate = BodyGate::default();
                }
            }
        }
    }

    #[test]
    fn a_thread_of_incompressible_records_stops_probing_until_a_try_wins() {
        // A thread of its own: the gate is per thread.
        let outcome = std::thread::spawn(|| {
            let config = CodecConfig::default();
            // Small random deltas (under the per-delta zstd threshold), a
            // body over the pass's minimum: the probe refuses each one.
            let noise = |seed: u64| {
                CommitRecord::new(vec![
                    random_delta(1, 200, 2 * seed),
                    random_delta(2, 40, 2 * seed + 1),
                ])
            };
            let text = b"account 00012345 balance 0000001000 updated ".repeat(4);
            let prose = CommitRecord::new(vec![
                sparse_delta(1, &[(0, &text[..90])]),
                sparse_delta(2, &[(0, &text[..90])]),
            ]);
            let encode = |record: &CommitRecord| {
                let mut out = Vec::new();
                let stats = record.encode(&config, &mut out).unwrap();
                assert_eq!(&CommitRecord::decode(&out, 4096).unwrap(), record);
                stats.body_zstd
            };
            assert!(encode(&prose), "a fresh gate tries the pass, and it wins");
            for seed in 0..u64::from(BODY_MISS_STREAK_MAX) {
                assert!(!encode(&noise(seed)));
            }
            // The streak is long enough: the next record is skipped
            // (stored without the pass although it would gain).
            let skipped = !encode(&prose);
            // Within the cap a try comes, wins, and reopens the gate.
            let mut tries = 0;
            while !encode(&prose) {
                tries += 1;
                assert!(tries <= BODY_SKIP_MAX_RECORDS);
            }
            (skipped, BODY_GATE.get())
        })
        .join()
        .unwrap();
        assert_eq!(outcome, (true, BodyGate::default()));
    }

    /// A delta writing `len` random bytes (from `seed`) at offset 0 of `page`.
    fn random_delta(page: u64, len: usize, seed: u64) -> Delta {
        let mut rng = StdRng::seed_from_u64(seed);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        sparse_delta(page, &[(0, &bytes)])
    }

    #[test]
    fn gate_skips_zstd_after_misses_and_retries_until_it_wins() {
        let text = b"account 00012345 balance 0000001000 updated ".repeat(20);
        let mut deltas: Vec<Delta> = (0..40).map(|page| random_delta(page, 600, page)).collect();
        deltas.extend((40..100).map(|page| sparse_delta(page, &[(0, &text[..])])));
        let record = CommitRecord::new(deltas);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        // After the streak the gate skips up to 32 compressible pages
        // before its next try wins, then admits every one.
        assert!(
            (20..60).contains(&stats.zstd_deltas),
            "{} zstd deltas",
            stats.zstd_deltas
        );
        assert_eq!(CommitRecord::decode(&out, 4096).unwrap(), record);
    }

    #[test]
    fn large_incompressible_bodies_skip_the_body_pass() {
        // Deltas under the per-delta zstd threshold, random bytes behind
        // compressible run headers: the trial stops the whole-body call.
        let deltas: Vec<Delta> = (0..2000)
            .map(|page| {
                let mut delta = random_delta(page, 120, page);
                delta.write(1000, &[0u8; 8]).unwrap();
                delta
            })
            .collect();
        let record = CommitRecord::new(deltas);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert!(out.len() > BODY_TRIAL_MIN_BODY_BYTES);
        assert!(!stats.body_zstd);
        assert_eq!(CommitRecord::decode(&out, 4096).unwrap(), record);
    }

    #[test]
    fn large_compressible_bodies_take_the_body_pass() {
        let text = b"account 00012345 balance 0000001000 updated ".repeat(2);
        let deltas: Vec<Delta> = (0..2000)
            .map(|page| sparse_delta(page * 7, &[((page as usize * 13) % 3000, &text[..])]))
            .collect();
        let record = CommitRecord::new(deltas);
        let mut out = Vec::new();
        let stats = record.encode(&CodecConfig::default(), &mut out).unwrap();
        assert!(stats.raw_bytes > BODY_TRIAL_MIN_BODY_BYTES);
        assert!(stats.body_zstd);
        assert!(stats.ratio() > 3.0, "ratio {}", stats.ratio());
        assert_eq!(CommitRecord::decode(&out, 4096).unwrap(), record);
    }

    #[test]
    fn truncated_header_is_rejected() {
        assert!(matches!(
            codec_err(&[], 4096),
            CodecError::Truncated { at: 0, .. }
        ));
        assert!(matches!(
            codec_err(&[1], 4096),
            CodecError::Truncated { at: 1, .. }
        ));
        assert!(matches!(
            codec_err(&[1, 0], 4096),
            CodecError::Truncated { at: 2, .. }
        ));
    }

    #[test]
    fn unknown_version_is_rejected() {
        assert_eq!(
            codec_err(&[2, 0, 0], 4096),
            CodecError::UnknownVersion { version: 2 }
        );
    }

    #[test]
    fn reserved_flags_are_rejected() {
        assert_eq!(
            codec_err(&[1, 0x82, 0], 4096),
            CodecError::UnknownFlags { flags: 0x82 }
        );
    }

    #[test]
    fn delta_count_beyond_the_body_is_rejected() {
        let mut bytes = encode(
            &CommitRecord::new(vec![sparse_delta(1, &[(0, &[1])])]),
            CodecMode::Rle,
        );
        bytes[2] = 100;
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::OutOfRange {
                at: 2,
                what: "delta count",
                value: 100,
                ..
            }
        ));
    }

    #[test]
    fn delta_count_short_of_the_body_is_rejected() {
        let record = CommitRecord::new(vec![
            sparse_delta(1, &[(0, &[1])]),
            sparse_delta(2, &[(0, &[1])]),
        ]);
        let mut bytes = encode(&record, CodecMode::Rle);
        bytes[2] = 1;
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::TrailingBytes {
                what: "record body",
                ..
            }
        ));
    }

    #[test]
    fn unknown_encoding_tag_is_rejected() {
        assert_eq!(
            codec_err(&[1, 0, 1, 9, 0, 0], 4096),
            CodecError::UnknownEncoding { at: 3, tag: 9 }
        );
    }

    #[test]
    fn run_past_the_callers_page_limit_is_rejected() {
        let record = CommitRecord::new(vec![sparse_delta(1, &[(4000, &[1; 10])])]);
        for mode in MODES {
            let err = codec_err(&encode(&record, mode), 4000);
            assert!(
                matches!(
                    err,
                    CodecError::OutOfRange {
                        what: "run end",
                        value: 4010,
                        limit: 4000,
                        ..
                    }
                ),
                "{mode:?}: {err:?}"
            );
        }
    }

    #[test]
    fn page_limit_is_capped_at_max_page_len() {
        let mut bytes = vec![1, 0, 1, DeltaEncoding::Raw.tag()];
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(MAX_PAGE_LEN as u32).to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(7);
        let err = codec_err(&bytes, usize::MAX);
        assert!(matches!(
            err,
            CodecError::OutOfRange {
                what: "run end",
                ..
            }
        ));
    }

    #[test]
    fn body_length_over_the_limit_is_rejected() {
        let mut bytes = vec![1, FLAG_BODY_ZSTD, 1];
        put_varint(&mut bytes, MAX_ZSTD_BODY_BYTES as u64 + 1);
        bytes.extend_from_slice(&[0; 8]);
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::OutOfRange {
                what: "record body length",
                ..
            }
        ));
    }

    #[test]
    fn body_shorter_than_declared_is_rejected() {
        let body = [DeltaEncoding::Rle.tag(), 2, 0];
        let mut frame = Vec::new();
        zstd_compress(&body, 1, &mut frame).unwrap();
        let mut bytes = vec![1, FLAG_BODY_ZSTD, 1, 4];
        bytes.extend_from_slice(&frame);
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::LengthMismatch {
                at: 4,
                what: "record body",
                expected: 4,
                actual: 3
            }
        ));
        // The same frame with its true length decodes.
        bytes[3] = 3;
        let record = CommitRecord::decode(&bytes, 4096).unwrap();
        assert_eq!(record.deltas, vec![Delta::new(PageId(1))]);
    }

    #[test]
    fn corrupt_body_frame_is_rejected() {
        let bytes = [1, FLAG_BODY_ZSTD, 1, 3, 0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff];
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::Zstd { at: 4, .. }
        ));
    }

    /// A record of one zstd delta whose raw encoding is `raw`, with the raw
    /// length field set to `declared_raw_len`.
    fn zstd_delta_record(raw: &[u8], declared_raw_len: u64) -> Vec<u8> {
        let mut frame = Vec::new();
        zstd_compress(raw, 1, &mut frame).unwrap();
        let mut bytes = vec![1, 0, 1, DeltaEncoding::Zstd.tag()];
        put_varint(&mut bytes, declared_raw_len);
        put_varint(&mut bytes, frame.len() as u64);
        bytes.extend_from_slice(&frame);
        bytes
    }

    #[test]
    fn zstd_delta_raw_length_over_the_page_bound_is_rejected() {
        let bytes = zstd_delta_record(&[0; 12], 1 << 40);
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::OutOfRange {
                what: "zstd delta raw length",
                ..
            }
        ));
    }

    #[test]
    fn zstd_delta_frame_length_past_the_input_is_rejected() {
        let mut bytes = zstd_delta_record(&[0; 12], 12);
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::OutOfRange {
                what: "zstd delta frame length",
                ..
            }
        ));
    }

    #[test]
    fn zstd_delta_with_bytes_after_its_runs_is_rejected() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&5u64.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.push(0xee);
        let bytes = zstd_delta_record(&raw, raw.len() as u64);
        assert!(matches!(
            codec_err(&bytes, 4096),
            CodecError::TrailingBytes {
                what: "zstd delta",
                count: 1,
                ..
            }
        ));
    }

    #[test]
    fn overlapping_raw_runs_are_a_delta_error() {
        let runs = [DeltaRun {
            offset: 0,
            bytes: &[1, 2, 3],
        }];
        let delta = Delta::from_sorted_runs(PageId(1), runs).unwrap();
        let mut bytes = encode(&CommitRecord::new(vec![delta]), CodecMode::Raw);
        // Append a second run [1, 2) that overlaps the first, and count it.
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(9);
        bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            CommitRecord::decode(&bytes, 4096),
            Err(WalError::Delta(crate::delta::DeltaError::Unordered {
                offset: 1
            }))
        ));
    }

    /// A record of `deltas` whose body is encoded in `parts` parts (1: on
    /// this thread, as a small record is), framed as `encode_inner` frames it.
    fn record_in_parts(deltas: &[Delta], parts: usize) -> (Vec<u8>, EncodeStats) {
        let config = CodecConfig::default();
        let mut out = vec![RECORD_FORMAT_VERSION, 0];
        put_varint(&mut out, deltas.len() as u64);
        let mut stats = EncodeStats::default();
        if parts > 1 {
            let refs: Vec<&Delta> = deltas.iter().collect();
            encode_parts(&refs, parts, &config, &mut out, &mut stats).unwrap();
        } else {
            encode_run(deltas.iter(), PageId(0), &config, &mut out, &mut stats).unwrap();
        }
        (out, stats)
    }

    /// Pages of random bytes, of repeated text and sparse edits, with gaps
    /// and a step back in the page ids: about 1.4 MiB raw.
    fn large_record_deltas() -> Vec<Delta> {
        let text = b"account 00012345 balance 0000001000 updated ".repeat(90);
        (0..420u64)
            .map(|i| {
                let page = if i == 200 { 3 } else { 10 + i * 3 };
                match i % 3 {
                    0 => random_delta(page, 4000, i),
                    1 => sparse_delta(page, &[(96, &text[..])]),
                    _ => sparse_delta(page, &[(8, b"slot"), (2000, &[7; 300])]),
                }
            })
            .collect()
    }

    #[test]
    fn a_record_encoded_in_parts_decodes_to_the_same_deltas() {
        let deltas = large_record_deltas();
        let (one, one_stats) = record_in_parts(&deltas, 1);
        let want = CommitRecord::new(deltas.clone());
        assert_eq!(CommitRecord::decode(&one, 4096).unwrap(), want);
        for parts in [2, 3, 7] {
            let (bytes, stats) = record_in_parts(&deltas, parts);
            assert_eq!(
                CommitRecord::decode(&bytes, 4096).unwrap(),
                want,
                "{parts} parts"
            );
            assert_eq!(
                stats.raw_deltas + stats.rle_deltas + stats.zstd_deltas,
                deltas.len(),
                "{parts} parts: {stats:?}"
            );
            assert_eq!(stats.changed_bytes, one_stats.changed_bytes);
            // Each part's gate starts afresh: zstd is tried at least as often.
            assert!(
                stats.zstd_deltas >= one_stats.zstd_deltas,
                "{stats:?} vs {one_stats:?}"
            );
        }
    }

    #[test]
    fn a_large_record_is_encoded_in_parts_and_round_trips() {
        let deltas = large_record_deltas();
        let raw = raw_record_len(deltas.iter());
        assert!(raw >= PARALLEL_ENCODE_MIN_RAW_BYTES, "{raw} raw bytes");
        let config = CodecConfig::default();
        let expected_parts =
            rayon::current_num_threads().min(raw / PARALLEL_ENCODE_PART_MIN_RAW_BYTES);
        assert_eq!(
            parallel_parts(raw, &config),
            expected_parts.clamp(1, PARALLEL_ENCODE_MAX_PARTS)
        );
        assert_eq!(
            parallel_parts(raw, &CodecConfig::with_mode(CodecMode::Rle)),
            1
        );
        assert_eq!(
            parallel_parts(PARALLEL_ENCODE_MIN_RAW_BYTES - 1, &config),
            1
        );
        let mut out = vec![0xAB];
        let stats = encode_deltas(&deltas, &config, &mut out).unwrap();
        assert_eq!(out[0], 0xAB, "bytes before the record are kept");
        assert_eq!(stats.encoded_bytes, out.len() - 1);
        assert_eq!(stats.delta_count, deltas.len());
        assert_eq!(
            CommitRecord::decode(&out[1..], 4096).unwrap(),
            CommitRecord::new(deltas)
        );
    }
}
