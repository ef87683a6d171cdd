//! Target over the TLog's segment and frame decoding: segment files built
//! from the fuzzer's bytes are opened (validated, torn tail cut) and replayed
//! through the wal crate's public API, on an in-memory file system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use mmsb_wal::storage::MemStorage;
use mmsb_wal::tlog::format::{encode_commit_frame, segment_file_name, SegmentHeader};
use mmsb_wal::tlog::{OpenValidation, TLog, TLogConfig};
use mmsb_wal::CommitEpoch;

/// Directory the segments are put in.
const LOG_DIR: &str = "/fuzz/db.mmsb-tlog";

/// Largest segment target the input may choose (small targets make appends rotate).
const SEGMENT_TARGET_LIMIT_BYTES: u64 = 1 << 16;

/// A frame of a well-formed segment.
#[derive(Debug, Arbitrary)]
struct FrameSpec {
    /// Epoch gap from the previous frame, minus one (epochs always increase).
    epoch_gap: u8,
    payload: Vec<u8>,
}

/// Damage done to the well-formed segments before they are opened.
#[derive(Debug, Arbitrary)]
enum Damage {
    /// Flips the bits of `mask` in one byte.
    Xor { file: u8, offset: u16, mask: u8 },
    /// Cuts a file to `len` bytes (if shorter than it is).
    Truncate { file: u8, len: u16 },
    /// Appends bytes to a file (a half-written frame, garbage).
    Append { file: u8, bytes: Vec<u8> },
    /// Removes a file.
    Remove { file: u8 },
}

/// Input of [`tlog_frames`].
#[derive(Debug, Arbitrary)]
enum TLogInput {
    /// Segment files given byte for byte, by sequence number.
    Raw {
        files: Vec<(u8, Vec<u8>)>,
        validate_all: bool,
        after: u8,
    },
    /// Well-formed segments (each a list of frames), then damaged.
    Built {
        first_epoch: u8,
        segments: Vec<Vec<FrameSpec>>,
        damage: Vec<Damage>,
        validate_all: bool,
        after: u8,
        segment_target: u16,
    },
}

/// Fuzz target `tlog_frames`: opens segment files made from the input as a
/// TLog. `open` and `replay` must answer `Ok` or a typed error; a log that
/// opens replays frames in strictly increasing epoch order, every one above
/// the replay's start; an undamaged log replays exactly the frames written;
/// and an opened log accepts a new frame and replays it back.
pub fn tlog_frames(data: &[u8]) {
    let Ok(input) = TLogInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let storage = MemStorage::new();
    let dir = PathBuf::from(LOG_DIR);
    match input {
        TLogInput::Raw {
            files,
            validate_all,
            after,
        } => {
            for (seq, bytes) in files {
                storage.set_file_bytes(&dir.join(segment_file_name(u64::from(seq))), bytes);
            }
            check_log(
                &storage,
                validate_all,
                CommitEpoch(u64::from(after)),
                None,
                1 << 20,
            );
        }
        TLogInput::Built {
            first_epoch,
            segments,
            damage,
            validate_all,
            after,
            segment_target,
        } => {
            let (paths, frames) = write_segments(&storage, &dir, first_epoch, &segments);
            for hurt in &damage {
                apply_damage(&storage, &paths, hurt);
            }
            let expected = damage.is_empty().then_some(frames);
            let target = u64::from(segment_target).clamp(1, SEGMENT_TARGET_LIMIT_BYTES);
            check_log(
                &storage,
                validate_all,
                CommitEpoch(u64::from(after)),
                expected,
                target,
            );
        }
    }
}

/// Writes one segment file per non-empty frame list; returns the files and
/// every frame written as `(epoch, payload)`.
fn write_segments(
    storage: &MemStorage,
    dir: &Path,
    first_epoch: u8,
    segments: &[Vec<FrameSpec>],
) -> (Vec<PathBuf>, Vec<(u64, Vec<u8>)>) {
    let mut paths = Vec::new();
    let mut written = Vec::new();
    let mut epoch = u64::from(first_epoch).max(1);
    let mut next_epoch = epoch;
    for (index, frames) in segments.iter().filter(|f| !f.is_empty()).enumerate() {
        let seq = index as u64 + 1;
        let header = SegmentHeader {
            seq,
            first_epoch: CommitEpoch(next_epoch),
        };
        let mut bytes = header.encode().to_vec();
        for frame in frames {
            epoch = next_epoch;
            encode_commit_frame(&mut bytes, seq, CommitEpoch(epoch), &frame.payload);
            written.push((epoch, frame.payload.clone()));
            next_epoch = epoch + 1 + u64::from(frame.epoch_gap % 4);
        }
        let path = dir.join(segment_file_name(seq));
        storage.set_file_bytes(&path, bytes);
        paths.push(path);
    }
    (paths, written)
}

fn apply_damage(storage: &MemStorage, paths: &[PathBuf], damage: &Damage) {
    let pick = |file: u8| paths.get(usize::from(file) % paths.len().max(1));
    match *damage {
        Damage::Xor { file, offset, mask } => {
            if let Some(path) = pick(file) {
                let mut bytes = storage.file_bytes(path).unwrap_or_default();
                let len = bytes.len();
                if let Some(byte) = bytes.get_mut(usize::from(offset) % len.max(1)) {
                    *byte ^= mask.max(1);
                }
                storage.set_file_bytes(path, bytes);
            }
        }
        Damage::Truncate { file, len } => {
            if let Some(path) = pick(file) {
                let mut bytes = storage.file_bytes(path).unwrap_or_default();
                bytes.truncate(usize::from(len));
                storage.set_file_bytes(path, bytes);
            }
        }
        Damage::Append { file, ref bytes } => {
            if let Some(path) = pick(file) {
                let mut old = storage.file_bytes(path).unwrap_or_default();
                old.extend_from_slice(bytes);
                storage.set_file_bytes(path, old);
            }
        }
        Damage::Remove { file } => {
            if let Some(path) = pick(file) {
                use mmsb_wal::storage::Storage;
                // A missing file is as good as a removed one.
                let _ = storage.remove_file(path);
            }
        }
    }
}

/// Opens the log, replays it, appends a frame and replays that back.
/// `expected`: the frames of an undamaged log, which must open and replay whole.
fn check_log(
    storage: &MemStorage,
    validate_all: bool,
    after: CommitEpoch,
    expected: Option<Vec<(u64, Vec<u8>)>>,
    segment_target_bytes: u64,
) {
    let validation = if validate_all {
        OpenValidation::AllFrames
    } else {
        OpenValidation::LastSegment
    };
    let config = TLogConfig {
        open_validation: validation,
        segment_target_bytes,
        ..TLogConfig::new(LOG_DIR)
    };
    let log = match TLog::open(Arc::new(storage.clone()), config) {
        Ok(log) => log,
        Err(err) => {
            assert!(expected.is_none(), "an undamaged log failed to open: {err}");
            return;
        }
    };
    let replayed = replay_all(&log, after, validation);
    if let (Some(expected), Some(replayed)) = (&expected, &replayed) {
        let wanted: Vec<_> = expected.iter().filter(|(e, _)| *e > after.get()).collect();
        let got: Vec<_> = replayed.iter().collect();
        assert_eq!(got, wanted, "an undamaged log replayed other frames");
    }
    if expected.is_some() {
        assert!(replayed.is_some(), "an undamaged log failed to replay");
    }
    append_and_read_back(&log);
}

/// Every frame after `after`, checked for order; `None` if the replay
/// stopped with a typed error.
fn replay_all(
    log: &TLog,
    after: CommitEpoch,
    validation: OpenValidation,
) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut replay = match log.replay(after) {
        Ok(replay) => replay,
        Err(err) => {
            assert!(
                validation != OpenValidation::AllFrames,
                "a log validated whole at open failed to start a replay: {err}"
            );
            return None;
        }
    };
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut last = after.get();
    while let Some(frame) = replay.next_frame() {
        match frame {
            Ok((epoch, payload)) => {
                assert!(
                    epoch.get() > last,
                    "replay gave epoch {epoch} after {last} (start {after})"
                );
                last = epoch.get();
                frames.push((epoch.get(), payload.to_vec()));
            }
            Err(err) => {
                assert!(
                    validation != OpenValidation::AllFrames,
                    "a log validated whole at open failed during replay: {err}"
                );
                return None;
            }
        }
    }
    if let Some((epoch, _)) = frames.last() {
        assert!(
            *epoch <= log.last_epoch().get(),
            "replay passed the log's last epoch"
        );
    }
    Some(frames)
}

/// Appends one frame after the last and replays it back.
fn append_and_read_back(log: &TLog) {
    let last = log.last_epoch();
    let Some(next) = last.checked_next() else {
        return;
    };
    let payload = b"fuzz frame".as_slice();
    let appended = log
        .append(next, payload)
        .and_then(|ticket| log.wait_durable(ticket));
    if let Err(err) = appended {
        panic!("an opened log refused a frame at {next}: {err}");
    }
    let mut replay = match log.replay(last) {
        Ok(replay) => replay,
        Err(err) => panic!("replaying the frame just appended failed: {err}"),
    };
    match replay.next_frame() {
        Some(Ok((epoch, got))) => {
            assert_eq!(epoch, next);
            assert_eq!(got, payload);
        }
        Some(Err(err)) => panic!("the frame just appended does not replay: {err}"),
        None => panic!("the frame just appended is missing from the replay"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_log_round_trips() {
        let storage = MemStorage::new();
        let dir = PathBuf::from(LOG_DIR);
        let frame = |gap, payload: &[u8]| FrameSpec {
            epoch_gap: gap,
            payload: payload.to_vec(),
        };
        let segments = vec![
            vec![frame(0, b"a"), frame(2, b"bb")],
            vec![],
            vec![frame(1, b"")],
        ];
        let (paths, frames) = write_segments(&storage, &dir, 3, &segments);
        assert_eq!(paths.len(), 2);
        assert_eq!(
            frames.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![3, 4, 7]
        );
        check_log(&storage, true, CommitEpoch(3), Some(frames), 1 << 20);
    }

    #[test]
    fn damaged_log_is_refused_or_cut() {
        let storage = MemStorage::new();
        let dir = PathBuf::from(LOG_DIR);
        let segments = vec![vec![FrameSpec {
            epoch_gap: 0,
            payload: vec![1; 40],
        }]];
        let (paths, _) = write_segments(&storage, &dir, 1, &segments);
        apply_damage(
            &storage,
            &paths,
            &Damage::Xor {
                file: 0,
                offset: 40,
                mask: 1,
            },
        );
        check_log(&storage, true, CommitEpoch::ZERO, None, 1 << 20);
    }

    #[test]
    fn tlog_frames_ignores_short_input() {
        tlog_frames(&[]);
        tlog_frames(&[0, 1, 2, 3]);
    }
}
