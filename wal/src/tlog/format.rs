//! The TLog's on-disk format: segment file names, the segment header and the
//! commit frame, as pure encode/decode functions (no I/O here).
//!
//! The byte-by-byte description lives in `docs/format-tlog.md`; keep the two
//! in step (the constants below are the single source of the numbers).

use crate::CommitEpoch;

/// Version of the segment and frame layout written (and the only one read) by
/// this code. Version 2 added the segment tag to every frame, so that a
/// preallocated or recycled segment can hold zeros or stale frames past the
/// end of the log; version 1 segments are refused (see [`SegmentHeader::decode`]).
pub const FORMAT_VERSION: u16 = 2;

/// The format version before segment tags (appended, never preallocated).
pub const FORMAT_VERSION_UNTAGGED: u16 = 1;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MMSBTLOG";

/// Size of the segment header that opens every segment file.
pub const SEGMENT_HEADER_BYTES: usize = 32;

/// First 4 bytes of every frame: a sync marker that lets the scanner tell a
/// frame from garbage (0xF3 never starts a UTF-8 character nor a small integer).
pub const FRAME_MAGIC: [u8; 4] = [0xF3, b'T', b'F', b'R'];

/// Bytes before the payload: magic, payload length, type, segment tag, epoch.
pub const FRAME_HEADER_BYTES: usize = 20;

/// Mask that keeps the bits of a sequence number a frame's segment tag holds.
pub const SEGMENT_TAG_MASK: u32 = 0x00FF_FFFF;

/// Bytes after the payload: the CRC32.
pub const FRAME_TRAILER_BYTES: usize = 4;

/// Bytes a frame adds to its payload.
pub const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;

/// Largest payload the format admits, whatever the configuration: a length
/// field above it is an impossible length (damage), not a frame.
pub const FRAME_PAYLOAD_LIMIT_BYTES: u64 = 1 << 30;

/// Frame type byte of a commit frame (the only type of format version 2).
pub const FRAME_TYPE_COMMIT: u8 = 1;

const SEGMENT_NAME_PREFIX: &str = "tlog-";
const SEGMENT_NAME_SUFFIX: &str = ".seg";
const SEGMENT_NAME_DIGITS: usize = 20;

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; the first segment ever is 1.
    pub seq: u64,
    /// Epoch of the segment's first frame.
    pub first_epoch: CommitEpoch,
}

impl SegmentHeader {
    /// The header's 32 bytes, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 10..12: flags, zero in version 2.
        bytes[12..20].copy_from_slice(&self.seq.to_le_bytes());
        bytes[20..28].copy_from_slice(&self.first_epoch.get().to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header. The error gives the offset of the field
    /// that failed and why; offset 0 (short, bad magic, bad CRC) is the only
    /// damage a torn header write can cause: the other checks run on a header
    /// whose CRC holds, so they mean a deliberate but unusable header.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, (u64, String)> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            let reason = format!(
                "segment header truncated: {} of {SEGMENT_HEADER_BYTES} bytes",
                bytes.len()
            );
            return Err((0, reason));
        };
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err((0, "bad segment magic".to_string()));
        }
        let stored_crc = le_u32(&bytes[28..32]);
        if stored_crc != crc32fast::hash(&bytes[..28]) {
            return Err((0, "segment header CRC mismatch".to_string()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version == FORMAT_VERSION_UNTAGGED {
            let reason = format!(
                "TLog format version {version} (untagged frames, written by an older mmsb) \
                 is not readable by this build, which reads version {FORMAT_VERSION}"
            );
            return Err((8, reason));
        }
        if version != FORMAT_VERSION {
            return Err((8, format!("unsupported TLog format version {version}")));
        }
        if bytes[10..12] != [0, 0] {
            return Err((10, "unknown segment header flags".to_string()));
        }
        let first_epoch = CommitEpoch(le_u64(&bytes[20..28]));
        if first_epoch == CommitEpoch::ZERO {
            return Err((
                20,
                "segment header names epoch 0 as its first epoch".to_string(),
            ));
        }
        Ok(SegmentHeader {
            seq: le_u64(&bytes[12..20]),
            first_epoch,
        })
    }

    /// The tag every frame of this segment carries.
    pub fn tag(&self) -> u32 {
        segment_tag(self.seq)
    }
}

/// The segment tag of the segment with sequence number `seq`: its low 24
/// bits. A recycled segment file gets a new, higher sequence number, so the
/// stale frames it still holds carry another tag (or, after 2^24 segments,
/// an epoch below the segment's first epoch: see [`FrameHeader::belongs_to`]).
pub fn segment_tag(seq: u64) -> u32 {
    (seq as u32) & SEGMENT_TAG_MASK
}

/// The checked fields of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes (at most [`FRAME_PAYLOAD_LIMIT_BYTES`]).
    pub payload_len: usize,
    /// The commit epoch the frame carries.
    pub epoch: CommitEpoch,
    /// The tag of the segment the frame was written to ([`segment_tag`]).
    pub segment_tag: u32,
}

impl FrameHeader {
    /// Whether the frame was written to the segment with this header in its
    /// current life: the tag matches and the epoch is not below the
    /// segment's first. A frame left from an earlier life of a recycled file
    /// fails this (it is the end of the log, not damage).
    pub fn belongs_to(&self, header: &SegmentHeader) -> bool {
        self.segment_tag == header.tag() && self.epoch >= header.first_epoch
    }

    /// Whole frame length: header, payload and CRC.
    pub fn frame_len(&self) -> usize {
        FRAME_OVERHEAD_BYTES + self.payload_len
    }
}

/// The frame header of a commit frame for the segment with sequence number
/// `segment_seq` and the CRC that ends the frame; the frame is
/// `header ++ payload ++ crc.to_le_bytes()`. Split so that the payload's CRC
/// can be computed before the group-commit lock is taken (the segment is
/// known only then): see [`payload_crc`] and [`commit_frame_header`].
pub fn commit_frame_parts(
    segment_seq: u64,
    epoch: CommitEpoch,
    payload: &[u8],
) -> ([u8; FRAME_HEADER_BYTES], u32) {
    let header = commit_frame_header(segment_seq, epoch, payload.len());
    (
        header,
        frame_crc(&header, payload_crc(payload), payload.len()),
    )
}

/// The header of a commit frame with a payload of `payload_len` bytes.
pub fn commit_frame_header(
    segment_seq: u64,
    epoch: CommitEpoch,
    payload_len: usize,
) -> [u8; FRAME_HEADER_BYTES] {
    debug_assert!(payload_len as u64 <= FRAME_PAYLOAD_LIMIT_BYTES);
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[8] = FRAME_TYPE_COMMIT;
    header[9..12].copy_from_slice(&segment_tag(segment_seq).to_le_bytes()[..3]);
    header[12..20].copy_from_slice(&epoch.get().to_le_bytes());
    header
}

/// The CRC32 of a payload alone, to be combined with its frame header by
/// [`frame_crc`].
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// The CRC32 of `header ++ payload` from the payload's own CRC
/// ([`payload_crc`]) and length: the frame's trailer.
pub fn frame_crc(header: &[u8; FRAME_HEADER_BYTES], payload_crc: u32, payload_len: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.combine(&crc32fast::Hasher::new_with_initial_len(
        payload_crc,
        payload_len as u64,
    ));
    hasher.finalize()
}

/// Stamps a buffered frame (`header ++ payload ++ trailer`, as laid out by
/// [`commit_frame_header`] with any tag) for the segment `segment_seq`: sets
/// its tag and its trailing CRC from the payload's CRC, in O(log payload).
pub fn stamp_frame(frame: &mut [u8], segment_seq: u64, payload_crc: u32) {
    debug_assert!(frame.len() >= FRAME_OVERHEAD_BYTES);
    let payload_len = frame.len() - FRAME_OVERHEAD_BYTES;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header.copy_from_slice(&frame[..FRAME_HEADER_BYTES]);
    header[9..12].copy_from_slice(&segment_tag(segment_seq).to_le_bytes()[..3]);
    let crc = frame_crc(&header, payload_crc, payload_len);
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    let trailer = frame.len() - FRAME_TRAILER_BYTES;
    frame[trailer..].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the bytes at the end of a log are the clean end of a preallocated
/// or recycled segment rather than a torn write: the frame header there is
/// all zeros (preallocated space), or `rest` opens with a whole,
/// CRC-valid frame that is not part of the segment `header` (a stale frame
/// of the file's earlier life). A torn frame of the segment is neither: its
/// first bytes are written, and its CRC fails.
pub fn is_clean_end(rest: &[u8], header: &SegmentHeader) -> bool {
    let head = &rest[..rest.len().min(FRAME_HEADER_BYTES)];
    if head.iter().all(|&byte| byte == 0) {
        return true;
    }
    let Ok(frame) = decode_frame_header(rest) else {
        return false;
    };
    !frame.belongs_to(header) && rest.get(..frame.frame_len()).is_some_and(frame_crc_matches)
}

/// Appends a whole commit frame for the segment `segment_seq` to `out`.
pub fn encode_commit_frame(
    out: &mut Vec<u8>,
    segment_seq: u64,
    epoch: CommitEpoch,
    payload: &[u8],
) {
    let (header, crc) = commit_frame_parts(segment_seq, epoch, payload);
    out.reserve(FRAME_OVERHEAD_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Parses and checks the first [`FRAME_HEADER_BYTES`] of a frame (everything
/// but the CRC, which covers the whole frame: see [`frame_crc_matches`]).
pub fn decode_frame_header(bytes: &[u8]) -> Result<FrameHeader, String> {
    let Some(bytes) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Err("frame header truncated".to_string());
    };
    if bytes[0..4] != FRAME_MAGIC {
        return Err("bad frame magic".to_string());
    }
    let payload_len = u64::from(le_u32(&bytes[4..8]));
    if payload_len > FRAME_PAYLOAD_LIMIT_BYTES {
        return Err(format!("impossible frame payload length {payload_len}"));
    }
    if bytes[8] != FRAME_TYPE_COMMIT {
        return Err(format!("unknown frame type {}", bytes[8]));
    }
    Ok(FrameHeader {
        payload_len: payload_len as usize,
        epoch: CommitEpoch(le_u64(&bytes[12..20])),
        segment_tag: u32::from_le_bytes([bytes[9], bytes[10], bytes[11], 0]),
    })
}

/// Whether a whole frame's trailing CRC matches the bytes before it.
pub fn frame_crc_matches(frame: &[u8]) -> bool {
    let Some(split) = frame.len().checked_sub(FRAME_TRAILER_BYTES) else {
        return false;
    };
    let (body, trailer) = frame.split_at(split);
    crc32fast::hash(body) == le_u32(trailer)
}

/// File name of the segment with sequence number `seq`; names sort in log order.
pub fn segment_file_name(seq: u64) -> String {
    format!(
        "{SEGMENT_NAME_PREFIX}{seq:0width$}{SEGMENT_NAME_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// The sequence number in a segment file name; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_NAME_PREFIX)?
        .strip_suffix(SEGMENT_NAME_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(array)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            seq: 7,
            first_epoch: CommitEpoch(42),
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&damaged).is_err(),
                "bit {bit} went unnoticed"
            );
        }
        assert!(SegmentHeader::decode(&bytes[..31]).is_err());
    }

    #[test]
    fn segment_names_sort_in_log_order_and_parse_back() {
        let names: Vec<String> = [1u64, 9, 10, 11, 100, u64::MAX]
            .iter()
            .map(|&seq| segment_file_name(seq))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, seq) in names.iter().zip([1u64, 9, 10, 11, 100, u64::MAX]) {
            assert_eq!(parse_segment_file_name(name), Some(seq));
        }
        assert_eq!(parse_segment_file_name("tlog-1.seg"), None);
        assert_eq!(
            parse_segment_file_name("tlog-0000000000000000000x.seg"),
            None
        );
        assert_eq!(parse_segment_file_name("tlog.lock"), None);
    }

    #[test]
    fn frame_rejects_unknown_type_flags_and_impossible_length() {
        let mut frame = Vec::new();
        encode_commit_frame(&mut frame, 1, CommitEpoch(3), b"abc");
        let mut bad_type = frame.clone();
        bad_type[8] = 2;
        assert!(decode_frame_header(&bad_type).is_err());
        let mut other_tag = frame.clone();
        other_tag[9] = 2;
        let decoded = decode_frame_header(&other_tag).map_err(|e| e.to_string());
        assert_eq!(decoded.map(|h| h.segment_tag), Ok(2));
        assert!(!frame_crc_matches(&other_tag), "the tag is under the CRC");
        let mut bad_len = frame.clone();
        bad_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_frame_header(&bad_len).is_err());
        assert!(!frame_crc_matches(&frame[..3]));
    }

    #[test]
    fn version_one_headers_are_refused_by_name() {
        let mut bytes = SegmentHeader {
            seq: 1,
            first_epoch: CommitEpoch(1),
        }
        .encode();
        bytes[8..10].copy_from_slice(&FORMAT_VERSION_UNTAGGED.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        let (offset, reason) = SegmentHeader::decode(&bytes).unwrap_err();
        assert_eq!(offset, 8);
        assert!(reason.contains("version 1"), "{reason}");
    }

    #[test]
    fn tags_tie_frames_to_one_life_of_a_segment() {
        let header = SegmentHeader {
            seq: 5,
            first_epoch: CommitEpoch(100),
        };
        let mut own = Vec::new();
        encode_commit_frame(&mut own, 5, CommitEpoch(100), b"new");
        let mut stale = Vec::new();
        encode_commit_frame(&mut stale, 2, CommitEpoch(40), b"old");
        let mut stale_same_tag = Vec::new();
        let wrapped = 5 + u64::from(SEGMENT_TAG_MASK) + 1;
        encode_commit_frame(&mut stale_same_tag, wrapped, CommitEpoch(40), b"old");
        let decode = |frame: &[u8]| decode_frame_header(frame).unwrap();
        assert!(decode(&own).belongs_to(&header));
        assert!(!decode(&stale).belongs_to(&header));
        assert!(
            !decode(&stale_same_tag).belongs_to(&header),
            "an epoch below the segment's first is stale too"
        );
        assert!(!is_clean_end(&own, &header));
        assert!(is_clean_end(&stale, &header));
        assert!(is_clean_end(&[0u8; 64], &header));
        assert!(
            is_clean_end(&[0u8; 3], &header),
            "zeros up to the file's end"
        );
        let mut torn = own.clone();
        torn.truncate(FRAME_HEADER_BYTES + 1);
        assert!(!is_clean_end(&torn, &header));
        let mut torn_stale = stale.clone();
        torn_stale[FRAME_HEADER_BYTES] ^= 1;
        assert!(
            !is_clean_end(&torn_stale, &header),
            "a stale frame must be whole"
        );
    }

    proptest! {
        #[test]
        fn stamping_a_buffered_frame_equals_encoding_it(
            seq in 1u64..u64::MAX,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut expected = Vec::new();
            encode_commit_frame(&mut expected, seq, CommitEpoch(9), &payload);
            let mut buffered = commit_frame_header(0, CommitEpoch(9), payload.len()).to_vec();
            buffered.extend_from_slice(&payload);
            buffered.extend_from_slice(&[0u8; FRAME_TRAILER_BYTES]);
            stamp_frame(&mut buffered, seq, payload_crc(&payload));
            prop_assert_eq!(buffered, expected);
        }

        #[test]
        fn frame_round_trips_and_any_bit_flip_is_caught(
            epoch in 1u64..u64::MAX,
            seq in 1u64..u64::MAX,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut frame = Vec::new();
            encode_commit_frame(&mut frame, seq, CommitEpoch(epoch), &payload);
            prop_assert_eq!(frame.len(), payload.len() + FRAME_OVERHEAD_BYTES);
            let header = decode_frame_header(&frame).map_err(TestCaseError::fail)?;
            prop_assert_eq!(header.epoch, CommitEpoch(epoch));
            prop_assert_eq!(header.payload_len, payload.len());
            prop_assert_eq!(header.segment_tag, segment_tag(seq));
            prop_assert!(frame_crc_matches(&frame));
            prop_assert_eq!(&frame[FRAME_HEADER_BYTES..frame.len() - 4], &payload[..]);
            let bit = flip.index(frame.len() * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
            let caught = decode_frame_header(&frame).map(|h| h.frame_len() != frame.len()).unwrap_or(true)
                || !frame_crc_matches(&frame);
            prop_assert!(caught, "flipped bit {} went unnoticed", bit);
        }
    }
}
