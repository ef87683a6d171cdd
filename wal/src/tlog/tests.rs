//! Tests of the whole TLog: round trips, crashes, corruption, injected faults,
//! group commit, eventual durability, truncation, and a model-based property.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::format::{
    encode_commit_frame, parse_segment_file_name, segment_file_name, SegmentHeader,
    FRAME_OVERHEAD_BYTES, SEGMENT_HEADER_BYTES,
};
use super::*;
use crate::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage, Storage};

type Frames = Vec<(u64, Vec<u8>)>;

fn dir() -> PathBuf {
    PathBuf::from("/db/tlog")
}

/// Small segments, so a few dozen frames span several of them.
fn small_config() -> TLogConfig {
    TLogConfig {
        segment_target_bytes: 400,
        ..TLogConfig::new(dir())
    }
}

/// A payload whose length and bytes depend on the epoch.
fn payload(epoch: u64) -> Vec<u8> {
    let len = (epoch * 37 % 120) as usize;
    (0..len)
        .map(|i| (epoch as u8).wrapping_mul(31) ^ i as u8)
        .collect()
}

fn open(storage: &MemStorage, config: TLogConfig) -> TLog {
    TLog::open(Arc::new(storage.clone()), config).unwrap()
}

fn commit(log: &TLog, epoch: u64) -> Result<()> {
    let ticket = log.append(CommitEpoch(epoch), &payload(epoch))?;
    log.wait_durable(ticket)
}

fn replay_all(log: &TLog, after: u64) -> Result<Frames> {
    log.replay(CommitEpoch(after))?
        .map(|frame| frame.map(|(epoch, bytes)| (epoch.get(), bytes)))
        .collect()
}

fn expected(epochs: std::ops::RangeInclusive<u64>) -> Frames {
    epochs.map(|epoch| (epoch, payload(epoch))).collect()
}

fn segment_paths(storage: &dyn Storage) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = storage
        .list_dir(&dir())
        .unwrap()
        .into_iter()
        .filter(|p| parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    paths.sort();
    paths
}

/// Replayed frames are epochs `first..=last` without gaps, byte-identical to
/// what was appended, with `first <= first_at_most` and `last >= acked`.
fn assert_gap_free(frames: &Frames, first_at_most: u64, acked: u64, attempted: u64) {
    let Some(&(first, _)) = frames.first() else {
        assert_eq!(acked, 0, "acknowledged commits were lost");
        return;
    };
    assert!(first <= first_at_most, "log starts at {first}");
    for (index, (epoch, bytes)) in frames.iter().enumerate() {
        assert_eq!(*epoch, first + index as u64, "gap in replayed epochs");
        assert_eq!(bytes, &payload(*epoch), "payload of epoch {epoch} altered");
    }
    let last = frames.last().map_or(0, |f| f.0);
    assert!(
        last >= acked,
        "acknowledged epoch {acked} lost (log ends at {last})"
    );
    assert!(last <= attempted, "epoch {last} was never appended");
}

#[test]
fn the_log_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TLog>();
    assert_send_sync::<Replay>();
}

#[test]
fn round_trip_across_rotations_and_reopen() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=100 {
        commit(&log, epoch).unwrap();
    }
    assert!(
        segment_paths(&storage).len() > 5,
        "expected several segments"
    );
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=100));
    assert_eq!(replay_all(&log, 37).unwrap(), expected(38..=100));
    assert_eq!(replay_all(&log, 100).unwrap(), Vec::new());
    let created = log.stats().segments_created;
    assert_eq!(created as usize, segment_paths(&storage).len());
    drop(log);

    let log = open(&storage, small_config());
    assert_eq!(log.last_epoch(), CommitEpoch(100));
    assert_eq!(log.stats().torn_tail_bytes_cut, 0);
    assert_eq!(replay_all(&log, 64).unwrap(), expected(65..=100));
    commit(&log, 101).unwrap();
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=101));
}

#[test]
fn replay_lends_payloads_and_skips_earlier_segments() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=50 {
        commit(&log, epoch).unwrap();
    }
    let mut replay = log.replay(CommitEpoch(45)).unwrap();
    let mut seen = Vec::new();
    while let Some(frame) = replay.next_frame() {
        let (epoch, bytes) = frame.unwrap();
        assert_eq!(bytes, &payload(epoch.get())[..]);
        seen.push(epoch.get());
    }
    assert_eq!(seen, vec![46, 47, 48, 49, 50]);
    let skipped = log.shared.replay_segments(CommitEpoch(45)).len();
    assert!(
        skipped < segment_paths(&storage).len(),
        "no segment was skipped"
    );
}

#[test]
fn real_files_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TLogConfig {
        segment_target_bytes: 4096,
        ..TLogConfig::new(tmp.path().join("log"))
    };
    let storage: Arc<dyn Storage> = Arc::new(crate::storage::FileStorage);
    let log = TLog::open(Arc::clone(&storage), config.clone()).unwrap();
    for epoch in 1..=300 {
        let ticket = log.append(CommitEpoch(epoch), &payload(epoch)).unwrap();
        if epoch % 7 == 0 {
            log.wait_durable(ticket).unwrap();
        }
    }
    log.flush().unwrap();
    drop(log);
    let log = TLog::open(storage, config).unwrap();
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=300));
}

#[test]
fn empty_log_opens_and_replays_nothing() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    assert_eq!(log.last_epoch(), CommitEpoch::ZERO);
    assert_eq!(replay_all(&log, 0).unwrap(), Vec::new());
    log.flush().unwrap();
    drop(log);
    assert!(segment_paths(&storage).is_empty());
    let log = open(&storage, small_config());
    assert_eq!(log.last_epoch(), CommitEpoch::ZERO);
}

#[test]
fn oversized_payload_is_too_large() {
    let storage = MemStorage::new();
    let config = TLogConfig {
        max_frame_bytes: 100,
        ..small_config()
    };
    let log = open(&storage, config);
    let err = log.append(CommitEpoch(1), &[0u8; 101]).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::TooLarge {
                len: 101,
                limit: 100,
                ..
            }
        ),
        "{err}"
    );
    let ticket = log.append(CommitEpoch(1), &[0u8; 100]).unwrap();
    log.wait_durable(ticket).unwrap();
}

#[test]
fn bad_configurations_are_refused() {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let too_big = TLogConfig {
        max_frame_bytes: format::FRAME_PAYLOAD_LIMIT_BYTES + 1,
        ..small_config()
    };
    assert!(matches!(
        TLog::open(Arc::clone(&storage), too_big),
        Err(WalError::TooLarge { .. })
    ));
    let zero_interval = TLogConfig {
        durability: Durability::Eventual {
            flush_interval_ms: 0,
        },
        ..small_config()
    };
    assert!(matches!(
        TLog::open(storage, zero_interval),
        Err(WalError::InvalidArgument(_))
    ));
}

#[test]
fn epochs_must_increase_across_calls_and_reopens() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    commit(&log, 5).unwrap();
    for stale in [5, 4, 0] {
        let err = log.append(CommitEpoch(stale), b"x").unwrap_err();
        assert!(matches!(err, WalError::InvalidArgument(_)), "{err}");
    }
    let foreign = CommitTicket {
        epoch: CommitEpoch(9),
    };
    assert!(matches!(
        log.wait_durable(foreign),
        Err(WalError::InvalidArgument(_))
    ));
    drop(log);
    let log = open(&storage, small_config());
    assert!(log.append(CommitEpoch(5), b"x").is_err());
    commit(&log, 6).unwrap();
    assert_eq!(
        replay_all(&log, 0).unwrap(),
        vec![(5, payload(5)), (6, payload(6))]
    );
}

/// Commits `acked` frames durably, then appends `extra` more whose flush
/// fails at its fsync (leaving unsynced writes behind), then crashes.
fn crash_after_failed_flush(mode: CrashMode, acked: u64, extra: u64) -> (MemStorage, u64) {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    let log = TLog::open(Arc::new(faulty.clone()), small_config()).unwrap();
    for epoch in 1..=acked {
        commit(&log, epoch).unwrap();
    }
    faulty.set_plan(FaultPlan {
        fail_sync: Some(0),
        ..FaultPlan::default()
    });
    for epoch in acked + 1..=acked + extra {
        log.append(CommitEpoch(epoch), &payload(epoch)).unwrap();
    }
    assert!(matches!(log.flush(), Err(WalError::Io { .. })));
    mem.crash(mode);
    drop(log);
    (mem, acked + extra)
}

#[test]
fn crash_keeps_every_acknowledged_commit() {
    let mut torn_seen = 0;
    for seed in 0..300u64 {
        let mode = match seed % 3 {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::KeepUnsynced,
            _ => CrashMode::TearUnsynced { seed },
        };
        let acked = seed % 17;
        let (mem, attempted) = crash_after_failed_flush(mode, acked, 1 + seed % 6);
        let log = open(&mem, small_config());
        torn_seen += u64::from(log.stats().torn_tail_bytes_cut > 0);
        let frames = replay_all(&log, 0).unwrap();
        assert_gap_free(&frames, 1, acked, attempted);
        if mode == CrashMode::DropUnsynced {
            assert_eq!(
                frames.len() as u64,
                acked,
                "unsynced frames survived a power cut"
            );
        }
        // The log goes on after recovery.
        let next = log.last_epoch().get() + 1;
        commit(&log, next).unwrap();
    }
    assert!(
        torn_seen > 10,
        "torn tails were never exercised ({torn_seen})"
    );
}

#[test]
fn crash_during_concurrent_commits_keeps_acknowledged_prefix() {
    for round in 0..12u64 {
        let mem = MemStorage::new();
        let storage = TestStorage::new(&mem);
        let log = Arc::new(storage.open(small_config()));
        let next_epoch = Arc::new(Mutex::new(1u64));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (log, next_epoch, acked) = (log.clone(), next_epoch.clone(), acked.clone());
                std::thread::spawn(move || loop {
                    let ticket = {
                        let mut next = next_epoch.lock();
                        let epoch = *next;
                        match log.append(CommitEpoch(epoch), &payload(epoch)) {
                            Ok(ticket) => {
                                *next += 1;
                                ticket
                            }
                            Err(_) => return,
                        }
                    };
                    if log.wait_durable(ticket).is_err() {
                        return;
                    }
                    acked.lock().push(ticket.epoch().get());
                })
            })
            .collect();
        while *next_epoch.lock() < 20 + round * 5 {
            std::thread::yield_now();
        }
        let mode = if round % 2 == 0 {
            CrashMode::DropUnsynced
        } else {
            CrashMode::TearUnsynced { seed: round }
        };
        storage.crash(mode);
        for worker in workers {
            worker.join().unwrap();
        }
        let max_acked = acked.lock().iter().copied().max().unwrap_or(0);
        let attempted = *next_epoch.lock() - 1;
        drop(log);
        let log = open(&mem, small_config());
        assert_gap_free(&replay_all(&log, 0).unwrap(), 1, max_acked, attempted);
    }
}

/// A multi-segment log and what was written to it.
fn written_log() -> (Vec<(PathBuf, Vec<u8>)>, Frames) {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=40 {
        commit(&log, epoch).unwrap();
    }
    drop(log);
    let files = segment_paths(&storage)
        .into_iter()
        .map(|path| {
            let bytes = storage.file_bytes(&path).unwrap();
            (path, bytes)
        })
        .collect();
    (files, expected(1..=40))
}

#[test]
fn bit_flips_anywhere_are_caught_or_cut_as_a_tail() {
    for validation in [OpenValidation::AllFrames, OpenValidation::LastSegment] {
        bit_flips_with(validation);
    }
}

fn bit_flips_with(validation: OpenValidation) {
    let config = TLogConfig {
        open_validation: validation,
        ..small_config()
    };
    let (files, written) = written_log();
    assert!(files.len() > 3);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    let last_file = files.len() - 1;
    let last_frame_at = files[last_file].1.len() - FRAME_OVERHEAD_BYTES - payload(40).len();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut caught, mut cut) = (0, 0);
    for _ in 0..400 {
        let mut global = rng.gen_range(0..total);
        let mut victim = 0;
        while global >= files[victim].1.len() {
            global -= files[victim].1.len();
            victim += 1;
        }
        let storage = MemStorage::new();
        for (index, (path, bytes)) in files.iter().enumerate() {
            let mut bytes = bytes.clone();
            if index == victim {
                bytes[global] ^= 1 << rng.gen_range(0..8);
            }
            storage.set_file_bytes(path, bytes);
        }
        let opened = TLog::open(Arc::new(storage), config.clone());
        if validation == OpenValidation::AllFrames {
            assert!(
                opened.is_err() || victim == last_file,
                "open missed damage in sealed segment {victim}"
            );
        }
        match opened.and_then(|log| replay_all(&log, 0)) {
            Err(WalError::Corrupted { path, .. }) => {
                assert_eq!(path, files[victim].0, "corruption blamed on the wrong file");
                caught += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(frames) => {
                assert!(
                    victim == last_file && global >= last_frame_at,
                    "damage at byte {global} of file {victim} was not reported"
                );
                assert_eq!(frames, written[..written.len() - 1].to_vec());
                cut += 1;
            }
        }
    }
    assert!(caught > 300 && cut > 0, "caught {caught}, cut {cut}");
}

#[test]
fn torn_tail_is_cut_and_the_log_goes_on() {
    let storage = MemStorage::new();
    let log = open(&storage, TLogConfig::new(dir()));
    for epoch in 1..=5 {
        commit(&log, epoch).unwrap();
    }
    drop(log);
    let path = segment_paths(&storage).remove(0);
    let mut bytes = storage.file_bytes(&path).unwrap();
    let valid_len = bytes.len();
    bytes.extend_from_slice(&[0xF3, b'T', b'F']);
    let mut partial = Vec::new();
    encode_commit_frame(&mut partial, 1, CommitEpoch(6), &payload(6));
    bytes.extend_from_slice(&partial[..partial.len() / 2]);
    storage.set_file_bytes(&path, bytes.clone());
    let log = open(&storage, TLogConfig::new(dir()));
    assert_eq!(
        log.stats().torn_tail_bytes_cut,
        (bytes.len() - valid_len) as u64
    );
    assert_eq!(storage.file_bytes(&path).unwrap().len(), valid_len);
    assert_eq!(log.last_epoch(), CommitEpoch(5));
    commit(&log, 6).unwrap();
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=6));
}

#[test]
fn a_torn_or_empty_last_segment_is_removed() {
    let leftovers = [vec![1u8, 2, 3], Vec::new(), header_bytes(3, 9).to_vec()];
    let validations = [OpenValidation::AllFrames, OpenValidation::LastSegment];
    for (leftover, validation) in leftovers.iter().flat_map(|l| validations.map(|v| (l, v))) {
        let config = TLogConfig {
            open_validation: validation,
            ..small_config()
        };
        let storage = MemStorage::new();
        let log = open(&storage, config.clone());
        for epoch in 1..=8 {
            commit(&log, epoch).unwrap();
        }
        drop(log);
        let before = segment_paths(&storage);
        let last_seq = before.len() as u64;
        let extra = dir().join(segment_file_name(last_seq + 1));
        storage.set_file_bytes(&extra, leftover.clone());
        let log = open(&storage, config.clone());
        assert_eq!(
            segment_paths(&storage),
            before,
            "leftover {leftover:?} kept"
        );
        assert_eq!(log.stats().torn_tail_bytes_cut, leftover.len() as u64);
        assert_eq!(log.last_epoch(), CommitEpoch(8));
        commit(&log, 9).unwrap();
        for epoch in 10..=30 {
            commit(&log, epoch).unwrap();
        }
        drop(log);
        let log = open(&storage, config);
        assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=30));
    }
}

#[test]
fn an_unknown_format_version_is_refused_not_cut() {
    let storage = MemStorage::new();
    drop(open(&storage, small_config()));
    for version in [1u8, 3] {
        let mut header = header_bytes(1, 1);
        header[8] = version;
        let crc = crc32fast::hash(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        let path = dir().join(segment_file_name(1));
        storage.set_file_bytes(&path, header.to_vec());
        match TLog::open(Arc::new(storage.clone()), small_config()) {
            Err(WalError::Corrupted {
                offset: 8, reason, ..
            }) => assert!(reason.contains(&format!("version {version}")), "{reason}"),
            other => panic!("expected Corrupted at offset 8, got {other:?}"),
        }
        assert!(
            storage.file_bytes(&path).is_some(),
            "the segment was deleted"
        );
    }
}

#[test]
fn last_segment_validation_leaves_sealed_frames_to_replay() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=40 {
        commit(&log, epoch).unwrap();
    }
    drop(log);
    let paths = segment_paths(&storage);
    let mut bytes = storage.file_bytes(&paths[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // the CRC of the segment's last frame
    storage.set_file_bytes(&paths[1], bytes);
    let lazy = TLogConfig {
        open_validation: OpenValidation::LastSegment,
        ..small_config()
    };
    let log = open(&storage, lazy);
    assert_eq!(log.last_epoch(), CommitEpoch(40));
    let mut replay = log.replay(CommitEpoch::ZERO).unwrap();
    let good: Vec<_> = replay.by_ref().take_while(|frame| frame.is_ok()).collect();
    assert!(!good.is_empty());
    assert!(replay.next().is_none(), "a replay ends after its error");
    match replay_all(&log, 0) {
        Err(WalError::Corrupted { path, .. }) => assert_eq!(path, paths[1]),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    // Replaying only what follows the damaged segment does not read it.
    let after_damage = replay_all(&log, 35).unwrap();
    assert_eq!(after_damage, expected(36..=40));
    // The default validation refuses to open at all.
    assert!(matches!(
        TLog::open(Arc::new(storage), small_config()),
        Err(WalError::Corrupted { .. })
    ));
}

fn header_bytes(seq: u64, first_epoch: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    SegmentHeader {
        seq,
        first_epoch: CommitEpoch(first_epoch),
    }
    .encode()
}

/// Opens a log after `damage` changed its files; the error must be Corrupted.
fn corrupted_after(
    damage: impl FnOnce(&MemStorage, &[PathBuf]),
) -> (PathBuf, String, Vec<PathBuf>) {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=30 {
        commit(&log, epoch).unwrap();
    }
    drop(log);
    let paths = segment_paths(&storage);
    damage(&storage, &paths);
    match TLog::open(Arc::new(storage), small_config()) {
        Err(WalError::Corrupted { path, reason, .. }) => (path, reason, paths),
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

#[test]
fn damage_before_the_tail_is_corruption() {
    // A missing middle segment.
    let (path, reason, paths) =
        corrupted_after(|storage, paths| storage.remove_file(&paths[1]).unwrap());
    assert!(reason.contains("gap"), "{reason}");
    assert_eq!(path, paths[2]);
    // A bad header in a segment before the last.
    let (path, _, paths) = corrupted_after(|storage, paths| {
        let mut bytes = storage.file_bytes(&paths[0]).unwrap();
        bytes[3] ^= 1;
        storage.set_file_bytes(&paths[0], bytes);
    });
    assert_eq!(path, paths[0]);
    // A bad header in the last segment, which still holds frames.
    let (path, reason, paths) = corrupted_after(|storage, paths| {
        let last = paths.last().unwrap();
        let mut bytes = storage.file_bytes(last).unwrap();
        bytes[30] ^= 1;
        storage.set_file_bytes(last, bytes);
    });
    assert_eq!(Some(&path), paths.last());
    assert!(reason.contains("CRC"), "{reason}");
    // A segment truncated before the last one.
    let (_, reason, _) = corrupted_after(|storage, paths| {
        let mut bytes = storage.file_bytes(&paths[1]).unwrap();
        bytes.truncate(bytes.len() - 3);
        storage.set_file_bytes(&paths[1], bytes);
    });
    assert!(reason.contains("past the end"), "{reason}");
    // Epochs that go back across segments (a valid header with a stale epoch).
    let (_, reason, _) = corrupted_after(|storage, paths| {
        let mut bytes = storage.file_bytes(&paths[2]).unwrap();
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header_bytes(3, 1));
        storage.set_file_bytes(&paths[2], bytes);
    });
    assert!(reason.contains("does not follow"), "{reason}");
}

/// A small workload that rotates segments and truncates through epoch 4
/// before committing epoch 8; stops at the first error. Returns the highest
/// acknowledged epoch, the highest attempted, and that error.
fn fault_workload(log: &TLog) -> (u64, u64, Option<WalError>) {
    let mut acked = 0;
    for epoch in 1..=12 {
        let result = if epoch == 8 {
            log.truncate_through(CommitEpoch(4))
                .and_then(|()| commit(log, epoch))
        } else {
            commit(log, epoch)
        };
        match result {
            Ok(()) => acked = epoch,
            Err(err) => return (acked, epoch, Some(err)),
        }
    }
    (acked, 12, None)
}

fn run_with_plan(plan: FaultPlan) -> bool {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    faulty.set_plan(plan.clone());
    let log = TLog::open(Arc::new(faulty.clone()), small_config()).unwrap();
    let (acked, attempted, failure) = fault_workload(&log);
    let Some(err) = failure else {
        return false;
    };
    assert!(matches!(err, WalError::Io { .. }), "{plan:?}: {err}");
    let next = CommitEpoch(attempted + 1);
    assert!(
        matches!(log.append(next, b"x"), Err(WalError::Poisoned)),
        "{plan:?}"
    );
    assert!(matches!(log.flush(), Err(WalError::Poisoned)));
    let stale = CommitTicket {
        epoch: CommitEpoch(acked.max(1)),
    };
    assert!(matches!(log.wait_durable(stale), Err(WalError::Poisoned)));
    drop(log);
    let log = open(&mem, small_config());
    let first_at_most = if attempted >= 8 { 5 } else { 1 };
    assert_gap_free(
        &replay_all(&log, 0).unwrap(),
        first_at_most,
        acked,
        attempted,
    );
    true
}

#[test]
fn injected_faults_poison_and_reopen_recovers_a_prefix() {
    let mem = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(mem.clone()));
    let log = TLog::open(Arc::new(faulty.clone()), small_config()).unwrap();
    assert!(fault_workload(&log).2.is_none());
    let (writes, syncs) = (faulty.counters().writes(), faulty.counters().syncs());
    drop(log);
    assert!(
        writes > 10 && syncs > 10,
        "workload too small: {writes} writes, {syncs} syncs"
    );
    let mut failures = 0;
    for index in 0..writes {
        failures += u32::from(run_with_plan(FaultPlan {
            fail_write: Some(index),
            ..FaultPlan::default()
        }));
        for keep in [0, 1, 13, 40] {
            failures += u32::from(run_with_plan(FaultPlan {
                tear_write: Some((index, keep)),
                ..FaultPlan::default()
            }));
        }
    }
    for index in 0..syncs {
        failures += u32::from(run_with_plan(FaultPlan {
            fail_sync: Some(index),
            ..FaultPlan::default()
        }));
    }
    assert_eq!(
        u64::from(failures),
        writes * 5 + syncs,
        "some planned fault never fired"
    );
}

#[test]
fn disk_full_poisons_like_any_failed_write() {
    assert!(run_with_plan(FaultPlan {
        disk_full_after_bytes: Some(700),
        ..FaultPlan::default()
    }));
}

/// Storage for crash tests: file syncs may take a while, as a disk's do, and
/// [`TestStorage::crash`] is atomic with respect to every file operation (each
/// one completes wholly before the crash or fails after it), and stops the
/// process: a log still alive in the test can write nothing after the crash.
#[derive(Debug, Clone)]
struct TestStorage {
    mem: MemStorage,
    sync_delay: Duration,
    /// `true` once crashed; read-held during every operation.
    dead: Arc<RwLock<bool>>,
}

#[derive(Debug)]
struct TestFile {
    inner: Arc<dyn StorageFile>,
    sync_delay: Duration,
    dead: Arc<RwLock<bool>>,
}

fn while_alive<T>(
    dead: &RwLock<bool>,
    op: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dead = dead.read();
    if *dead {
        return Err(std::io::Error::other(
            "simulated crash: the process is gone",
        ));
    }
    op()
}

impl TestStorage {
    fn new(mem: &MemStorage) -> Self {
        TestStorage {
            mem: mem.clone(),
            sync_delay: Duration::ZERO,
            dead: Arc::default(),
        }
    }

    fn open(&self, config: TLogConfig) -> TLog {
        TLog::open(Arc::new(self.clone()), config).unwrap()
    }

    /// The process dies, then the machine crashes.
    fn crash(&self, mode: CrashMode) {
        let mut dead = self.dead.write();
        *dead = true;
        self.mem.crash(mode);
    }
}

impl Storage for TestStorage {
    fn open_file(&self, path: &Path, create: bool) -> std::io::Result<Arc<dyn StorageFile>> {
        let inner = while_alive(&self.dead, || self.mem.open_file(path, create))?;
        Ok(Arc::new(TestFile {
            inner,
            sync_delay: self.sync_delay,
            dead: Arc::clone(&self.dead),
        }))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        while_alive(&self.dead, || self.mem.remove_file(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        while_alive(&self.dead, || self.mem.rename(from, to))
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        while_alive(&self.dead, || self.mem.list_dir(dir))
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        while_alive(&self.dead, || self.mem.create_dir_all(dir))
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        while_alive(&self.dead, || self.mem.sync_dir(dir))
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        while_alive(&self.dead, || self.mem.exists(path))
    }
}

impl StorageFile for TestFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        while_alive(&self.dead, || self.inner.read_exact_at(buf, offset))
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        while_alive(&self.dead, || self.inner.write_all_at(buf, offset))
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if !self.sync_delay.is_zero() {
            std::thread::sleep(self.sync_delay);
        }
        while_alive(&self.dead, || self.inner.sync_data())
    }
    fn len(&self) -> std::io::Result<u64> {
        while_alive(&self.dead, || self.inner.len())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        while_alive(&self.dead, || self.inner.set_len(len))
    }
}

#[test]
fn group_commit_shares_fsyncs_and_keeps_append_order() {
    const THREADS: u64 = 8;
    const COMMITS_PER_THREAD: u64 = 200;
    let mem = MemStorage::new();
    let config = TLogConfig {
        segment_target_bytes: 64 << 10,
        ..TLogConfig::new(dir())
    };
    let storage = TestStorage {
        sync_delay: Duration::from_micros(200),
        ..TestStorage::new(&mem)
    };
    let log = Arc::new(storage.open(config.clone()));
    let next_epoch = Arc::new(Mutex::new(1u64));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (log, next_epoch) = (log.clone(), next_epoch.clone());
            std::thread::spawn(move || {
                for _ in 0..COMMITS_PER_THREAD {
                    let ticket = {
                        let mut next = next_epoch.lock();
                        let ticket = log.append(CommitEpoch(*next), &payload(*next)).unwrap();
                        *next += 1;
                        ticket
                    };
                    log.wait_durable(ticket).unwrap();
                    assert!(log.durable_epoch() >= ticket.epoch());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let commits = THREADS * COMMITS_PER_THREAD;
    let stats = log.stats();
    assert_eq!(stats.frames_appended, commits);
    assert!(
        stats.fsyncs < commits,
        "{} fsyncs for {commits} commits",
        stats.fsyncs
    );
    assert!(stats.group_flushes < commits);
    drop(log);
    mem.crash(CrashMode::DropUnsynced);
    let log = open(&mem, config);
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=commits));
}

#[test]
fn a_frame_appended_during_a_flush_waits_for_the_next_one() {
    let mem = MemStorage::new();
    let storage = TestStorage {
        sync_delay: Duration::from_millis(50),
        ..TestStorage::new(&mem)
    };
    let log = Arc::new(storage.open(TLogConfig::new(dir())));
    let leader = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || commit(&log, 1))
    };
    while !log.shared.is_flushing() {
        std::thread::yield_now();
    }
    let late = log.append(CommitEpoch(2), &payload(2)).unwrap();
    leader.join().unwrap().unwrap();
    assert_eq!(
        log.durable_epoch(),
        CommitEpoch(1),
        "frame 2 was never written"
    );
    storage.crash(CrashMode::DropUnsynced);
    assert!(log.wait_durable(late).is_err(), "frame 2 reported durable");
    drop(log);
    let log = open(&mem, TLogConfig::new(dir()));
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=1));
}

fn eventual(flush_interval_ms: u64) -> TLogConfig {
    TLogConfig {
        durability: Durability::Eventual { flush_interval_ms },
        ..small_config()
    }
}

#[test]
fn eventual_mode_flushes_in_the_background() {
    let mem = MemStorage::new();
    let storage = TestStorage::new(&mem);
    let log = storage.open(eventual(5));
    for epoch in 1..=10 {
        let ticket = log.append(CommitEpoch(epoch), &payload(epoch)).unwrap();
        log.wait_durable(ticket).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.durable_epoch() < CommitEpoch(10) {
        assert!(Instant::now() < deadline, "the flusher never flushed");
        std::thread::sleep(Duration::from_millis(1));
    }
    storage.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&mem, eventual(5));
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=10));
}

#[test]
fn eventual_mode_loses_at_most_the_unflushed_tail_and_flush_forces() {
    const HOUR_MS: u64 = 3_600_000;
    let mem = MemStorage::new();
    let storage = TestStorage::new(&mem);
    let log = storage.open(eventual(HOUR_MS));
    for epoch in 1..=5 {
        let ticket = log.append(CommitEpoch(epoch), &payload(epoch)).unwrap();
        log.wait_durable(ticket).unwrap();
    }
    assert_eq!(log.durable_epoch(), CommitEpoch::ZERO);
    log.flush().unwrap();
    assert_eq!(log.durable_epoch(), CommitEpoch(5));
    log.append(CommitEpoch(6), &payload(6)).unwrap();
    storage.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&mem, eventual(HOUR_MS));
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=5));
    // Closing flushes: nothing appended before a clean close is lost.
    log.append(CommitEpoch(6), &payload(6)).unwrap();
    drop(log);
    mem.crash(CrashMode::DropUnsynced);
    let log = open(&mem, eventual(HOUR_MS));
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=6));
}

#[test]
fn a_full_buffer_pushes_back_with_a_flush() {
    let mem = MemStorage::new();
    let config = TLogConfig {
        group_buffer_limit_bytes: 1000,
        ..eventual(3_600_000)
    };
    let log = open(&mem, config);
    for epoch in 1..=60 {
        log.append(CommitEpoch(epoch), &[7u8; 100]).unwrap();
        let buffered = log.shared.buffered_bytes();
        assert!(buffered <= 1000, "{buffered} bytes buffered");
    }
    assert!(log.stats().group_flushes >= 5);
    assert!(log.durable_epoch() > CommitEpoch(40));
}

#[test]
fn truncation_deletes_only_old_whole_segments() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    for epoch in 1..=60 {
        commit(&log, epoch).unwrap();
    }
    let before = segment_paths(&storage).len();
    log.truncate_through(CommitEpoch(30)).unwrap();
    let after = segment_paths(&storage).len();
    assert!(after < before);
    assert_eq!(log.stats().segments_deleted as usize, before - after);
    assert_eq!(replay_all(&log, 30).unwrap(), expected(31..=60));
    let oldest = replay_all(&log, 0).unwrap()[0].0;
    assert!(
        oldest > 1 && oldest <= 31,
        "oldest remaining epoch {oldest}"
    );
    log.truncate_through(CommitEpoch(1000)).unwrap();
    assert_eq!(
        segment_paths(&storage).len(),
        1,
        "the active segment must stay"
    );
    drop(log);
    let log = open(&storage, small_config());
    assert_eq!(log.last_epoch(), CommitEpoch(60));
    let remaining = replay_all(&log, 0).unwrap();
    assert_eq!(remaining.last().map(|f| f.0), Some(60));
    commit(&log, 61).unwrap();
}

#[test]
fn a_second_open_of_a_real_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TLogConfig::new(tmp.path());
    let storage: Arc<dyn Storage> = Arc::new(crate::storage::FileStorage);
    let _first = TLog::open(Arc::clone(&storage), config.clone()).unwrap();
    assert!(matches!(
        TLog::open(storage, config),
        Err(WalError::Io { .. })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Flush,
    Crash(u64),
    Reopen,
    Truncate(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..150).prop_map(Op::Append),
        1 => Just(Op::Flush),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Reopen),
        1 => (0u64..40).prop_map(Op::Truncate),
    ]
}

/// What the log must hold: every frame appended, how many are durable, and
/// the epoch through which segments may have been truncated.
#[derive(Debug, Default)]
struct Model {
    frames: Frames,
    durable: usize,
    truncated: u64,
}

impl Model {
    fn check(&self, log: &TLog) -> std::result::Result<(), TestCaseError> {
        let replayed =
            replay_all(log, self.truncated).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Frames = self.frames[..self.durable]
            .iter()
            .filter(|f| f.0 > self.truncated)
            .cloned()
            .collect();
        prop_assert_eq!(replayed, want);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn log_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mem = MemStorage::new();
        // Truncations that cover the active segment retire it too.
        let config = TLogConfig {
            retire_covered_min_bytes: 64,
            ..eventual(3_600_000)
        };
        let mut storage = TestStorage::new(&mem);
        let mut log = storage.open(config.clone());
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append(len) => {
                    // The caller's epochs: a log emptied by truncation and
                    // reopened knows none (the engine's floor is its checkpoint).
                    let epoch = model.frames.last().map_or(0, |f| f.0) + 1;
                    let bytes = vec![epoch as u8; len];
                    log.append(CommitEpoch(epoch), &bytes).unwrap();
                    model.frames.push((epoch, bytes));
                }
                Op::Flush => {
                    log.flush().unwrap();
                    model.durable = model.frames.len();
                    model.check(&log)?;
                }
                Op::Crash(seed) => {
                    let mode = match seed % 3 {
                        0 => CrashMode::DropUnsynced,
                        1 => CrashMode::KeepUnsynced,
                        _ => CrashMode::TearUnsynced { seed },
                    };
                    storage.crash(mode);
                    drop(log);
                    storage = TestStorage::new(&mem);
                    log = storage.open(config.clone());
                    // Unsynced frames may survive, as a prefix of those appended.
                    // A log left without segments by a truncation through its
                    // last frame reopens empty: then every durable frame was
                    // truncated and no unsynced one survived.
                    let last = log.last_epoch().get() as usize;
                    let survived = if last == 0 {
                        prop_assert!(model.frames[..model.durable]
                            .iter()
                            .all(|f| f.0 <= model.truncated));
                        model.durable
                    } else {
                        last.saturating_sub(model.frames.first().map_or(0, |f| f.0 as usize - 1))
                    };
                    prop_assert!(survived >= model.durable && survived <= model.frames.len());
                    model.frames.truncate(survived);
                    model.durable = survived;
                    model.check(&log)?;
                }
                Op::Reopen => {
                    drop(log);
                    log = storage.open(config.clone());
                    model.durable = model.frames.len();
                    model.check(&log)?;
                }
                Op::Truncate(through) => {
                    log.flush().unwrap();
                    model.durable = model.frames.len();
                    log.truncate_through(CommitEpoch(through)).unwrap();
                    model.truncated = model.truncated.max(through.min(model.frames.last().map_or(0, |f| f.0)));
                    model.check(&log)?;
                }
            }
            let last = model.frames.last().map_or(0, |f| f.0);
            let emptied = log.last_epoch() == CommitEpoch(0) && last <= model.truncated;
            prop_assert!(emptied || log.last_epoch() == CommitEpoch(last));
        }
    }
}

/// Length of the file at `path` (including unsynced writes).
fn file_len(storage: &MemStorage, path: &Path) -> usize {
    storage.file_bytes(path).map_or(0, |bytes| bytes.len())
}

#[test]
fn commits_overwrite_preallocated_space_and_close_trims_it() {
    let storage = MemStorage::new();
    let config = TLogConfig {
        preallocate_bytes: 4096,
        ..TLogConfig::new(dir())
    };
    let log = open(&storage, config.clone());
    commit(&log, 1).unwrap();
    let path = segment_paths(&storage).remove(0);
    let allocated = file_len(&storage, &path);
    let frames_end = SEGMENT_HEADER_BYTES + FRAME_OVERHEAD_BYTES + payload(1).len();
    assert_eq!(
        allocated,
        frames_end + 4096,
        "zeros ahead of the write position"
    );
    let mut end = frames_end;
    for epoch in 2..=20 {
        commit(&log, epoch).unwrap();
        end += FRAME_OVERHEAD_BYTES + payload(epoch).len();
        assert_eq!(
            file_len(&storage, &path),
            allocated,
            "commit {epoch} grew the file"
        );
    }
    let bytes = storage.file_bytes(&path).unwrap();
    assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "the space past the log is zeros"
    );
    assert_eq!(log.stats().preallocated_bytes, 4096);
    drop(log);
    assert_eq!(
        file_len(&storage, &path),
        end,
        "close trims the preallocated space"
    );
    let log = open(&storage, config);
    assert_eq!(log.stats().torn_tail_bytes_cut, 0);
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=20));
}

/// Commits one frame that takes `frame_bytes` bytes in its segment.
fn commit_frame_of(log: &TLog, epoch: u64, frame_bytes: usize) {
    let payload = vec![epoch as u8; frame_bytes - FRAME_OVERHEAD_BYTES];
    let ticket = log.append(CommitEpoch(epoch), &payload).unwrap();
    log.wait_durable(ticket).unwrap();
}

/// The close trims the active segment without a sync; the next process
/// reopens it and its first commit seals it. A crash that loses the old
/// process's unsynced trim must not bring the bytes past the frames back
/// into a segment that is no longer the last. The segment is a recycled
/// spare, so those bytes are another segment's stale frames (the shrunk
/// proptest case of `log_matches_a_model`, made deterministic).
#[test]
fn a_segment_trimmed_at_close_and_sealed_after_reopen_survives_a_crash() {
    const TARGET_BYTES: usize = 600;
    let mem = MemStorage::new();
    let config = TLogConfig {
        preallocate_bytes: 4096,
        segment_target_bytes: TARGET_BYTES as u64,
        ..TLogConfig::new(dir())
    };
    let storage = TestStorage::new(&mem);
    let log = storage.open(config.clone());
    // Segments 1 and 2 are full after one frame each; segment 3 takes two.
    commit_frame_of(&log, 1, TARGET_BYTES + 100 - SEGMENT_HEADER_BYTES);
    commit_frame_of(&log, 2, TARGET_BYTES + 20 - SEGMENT_HEADER_BYTES);
    commit_frame_of(&log, 3, 100);
    log.truncate_through(CommitEpoch(1)).unwrap();
    commit_frame_of(&log, 4, TARGET_BYTES);
    // Segment 4 is the recycled segment 1 (700 bytes); its frames end at
    // 610, short of the stale frame past them.
    commit_frame_of(&log, 5, TARGET_BYTES + 10 - SEGMENT_HEADER_BYTES);
    let recycled = segment_paths(&mem).pop().unwrap();
    assert_eq!(file_len(&mem, &recycled), TARGET_BYTES + 100);
    drop(log);
    assert_eq!(file_len(&mem, &recycled), TARGET_BYTES + 10, "close trims");
    let log = storage.open(config.clone());
    commit_frame_of(&log, 6, 100);
    assert_eq!(
        segment_paths(&mem).len(),
        4,
        "segments 2 to 5: 4 sealed, 5 started"
    );
    storage.crash(CrashMode::DropUnsynced);
    drop(log);
    let log = open(&mem, config);
    assert_eq!(log.last_epoch(), CommitEpoch(6));
    let epochs: Vec<u64> = replay_all(&log, 0)
        .unwrap()
        .iter()
        .map(|(epoch, _)| *epoch)
        .collect();
    assert_eq!(epochs, vec![2, 3, 4, 5, 6]);
}

#[test]
fn a_crash_leaves_preallocated_zeros_that_are_a_clean_end() {
    for mode in [CrashMode::KeepUnsynced, CrashMode::DropUnsynced] {
        let mem = MemStorage::new();
        let log = open(&mem, TLogConfig::new(dir()));
        for epoch in 1..=10 {
            commit(&log, epoch).unwrap();
        }
        mem.crash(mode);
        drop(log);
        let path = segment_paths(&mem).remove(0);
        let before = file_len(&mem, &path);
        let log = open(&mem, TLogConfig::new(dir()));
        assert_eq!(log.stats().torn_tail_bytes_cut, 0, "{mode:?}");
        assert_eq!(
            file_len(&mem, &path),
            before,
            "{mode:?}: the zeros were cut"
        );
        assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=10));
        commit(&log, 11).unwrap();
        assert_eq!(
            file_len(&mem, &path),
            before,
            "{mode:?}: the next commit grew the file"
        );
    }
}

/// A log whose segments rotate every few frames and whose truncation leaves
/// a spare, preallocated in steps smaller than a segment.
fn recycling_config() -> TLogConfig {
    TLogConfig {
        segment_target_bytes: 600,
        preallocate_bytes: 256,
        ..TLogConfig::new(dir())
    }
}

#[test]
fn truncated_segments_are_recycled_and_their_stale_frames_end_the_log() {
    let storage = MemStorage::new();
    let log = open(&storage, recycling_config());
    for epoch in 1..=40 {
        commit(&log, epoch).unwrap();
    }
    let created = log.stats().segments_created;
    log.truncate_through(CommitEpoch(20)).unwrap();
    assert!(storage.exists(&dir().join(SPARE_FILE_NAME)).unwrap());
    for epoch in 41..=80 {
        commit(&log, epoch).unwrap();
        if log.stats().segments_recycled > 0 {
            break;
        }
    }
    let stats = log.stats();
    assert_eq!(stats.segments_recycled, 1, "{stats:?}");
    assert!(!storage.exists(&dir().join(SPARE_FILE_NAME)).unwrap());
    let last = log.last_epoch().get();
    // The recycled segment holds one new frame, then stale ones of another tag.
    let recycled = segment_paths(&storage).pop().unwrap();
    assert!(
        file_len(&storage, &recycled) > 200,
        "the spare kept its size"
    );
    assert_eq!(stats.segments_created, created, "no file was created");
    let wanted = replay_all(&log, 20).unwrap();
    assert_eq!(wanted.last().map(|f| f.0), Some(last));
    storage.crash(CrashMode::KeepUnsynced);
    drop(log);
    let log = open(&storage, recycling_config());
    assert_eq!(
        log.stats().torn_tail_bytes_cut,
        0,
        "stale frames are a clean end"
    );
    assert_eq!(replay_all(&log, 20).unwrap(), wanted);
    for epoch in last + 1..=last + 30 {
        commit(&log, epoch).unwrap();
    }
    drop(log);
    let log = open(&storage, recycling_config());
    let frames = replay_all(&log, 20).unwrap();
    assert_eq!(frames.last().map(|f| f.0), Some(last + 30));
    assert_gap_free(&frames, 21, last + 30, last + 30);
}

#[test]
fn crashes_while_writing_over_a_recycled_segment_keep_acknowledged_commits() {
    let mut torn_seen = 0;
    for seed in 0..120u64 {
        let mem = MemStorage::new();
        let faulty = FaultyStorage::new(Arc::new(mem.clone()));
        let log = TLog::open(Arc::new(faulty.clone()), recycling_config()).unwrap();
        for epoch in 1..=30 {
            commit(&log, epoch).unwrap();
        }
        log.truncate_through(CommitEpoch(15)).unwrap();
        let acked = 30 + seed % 13;
        for epoch in 31..=acked {
            commit(&log, epoch).unwrap();
        }
        faulty.set_plan(FaultPlan {
            fail_sync: Some(0),
            ..FaultPlan::default()
        });
        let extra = 1 + seed % 4;
        for epoch in acked + 1..=acked + extra {
            log.append(CommitEpoch(epoch), &payload(epoch)).unwrap();
        }
        assert!(log.flush().is_err());
        let mode = match seed % 3 {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::KeepUnsynced,
            _ => CrashMode::TearUnsynced { seed },
        };
        mem.crash(mode);
        drop(log);
        let log = open(&mem, recycling_config());
        torn_seen += u64::from(log.stats().torn_tail_bytes_cut > 0);
        let frames = replay_all(&log, 15).unwrap();
        assert_gap_free(&frames, 16, acked, acked + extra);
        let next = log.last_epoch().get() + 1;
        commit(&log, next).unwrap();
        drop(log);
        let log = open(&mem, recycling_config());
        assert_eq!(log.last_epoch(), CommitEpoch(next), "seed {seed}");
    }
    assert!(
        torn_seen > 5,
        "torn writes were never exercised ({torn_seen})"
    );
}

/// Bytes of all the files in the log's directory.
fn dir_bytes(storage: &MemStorage) -> usize {
    storage
        .list_dir(&dir())
        .unwrap()
        .iter()
        .map(|path| file_len(storage, path))
        .sum()
}

#[test]
fn a_truncated_segment_far_past_the_target_is_kept_as_a_cut_spare() {
    let storage = MemStorage::new();
    let config = recycling_config();
    let target = config.segment_target_bytes as usize;
    let log = open(&storage, config.clone());
    commit(&log, 1).unwrap();
    // One frame ten times the segment target, then a small one that rotates.
    let huge = vec![7u8; 10 * target];
    let ticket = log.append(CommitEpoch(2), &huge).unwrap();
    log.wait_durable(ticket).unwrap();
    commit(&log, 3).unwrap();
    assert!(dir_bytes(&storage) > 10 * target);
    log.truncate_through(CommitEpoch(2)).unwrap();
    let spare = dir().join(SPARE_FILE_NAME);
    assert_eq!(
        file_len(&storage, &spare),
        config.preallocate_bytes as usize,
        "the huge segment became a spare of one preallocation step"
    );
    assert_eq!(log.stats().segments_deleted, 1);
    let limit = 2 * target;
    assert!(
        dir_bytes(&storage) <= limit,
        "{} bytes left on disk, more than {limit}",
        dir_bytes(&storage)
    );
    assert_eq!(replay_all(&log, 2).unwrap(), expected(3..=3));
}

#[test]
fn a_truncated_segment_near_the_target_is_still_kept_as_spare() {
    let storage = MemStorage::new();
    let log = open(&storage, recycling_config());
    for epoch in 1..=40 {
        commit(&log, epoch).unwrap();
    }
    log.truncate_through(CommitEpoch(20)).unwrap();
    assert!(storage.exists(&dir().join(SPARE_FILE_NAME)).unwrap());
}

#[test]
fn bytes_after_counts_the_frames_past_an_epoch_flushed_or_not() {
    let storage = MemStorage::new();
    let log = open(&storage, small_config());
    let frame = |epoch: u64| (FRAME_OVERHEAD_BYTES + payload(epoch).len()) as u64;
    for epoch in 1..=10 {
        commit(&log, epoch).unwrap();
    }
    // Appended, not yet durable: still counted.
    log.append(CommitEpoch(11), &payload(11)).unwrap();
    for through in 0..=11u64 {
        let want: u64 = (through + 1..=11).map(frame).sum();
        assert_eq!(
            log.bytes_after(CommitEpoch(through)),
            want,
            "after {through}"
        );
    }
    // Truncation does not change what lies past the epoch.
    log.truncate_through(CommitEpoch(6)).unwrap();
    assert_eq!(log.bytes_after(CommitEpoch(6)), (7..=11).map(frame).sum());
    // A reopened log counts from its last epoch.
    log.flush().unwrap();
    drop(log);
    let log = open(&storage, small_config());
    assert_eq!(log.bytes_after(CommitEpoch(11)), 0);
    commit(&log, 12).unwrap();
    assert_eq!(log.bytes_after(CommitEpoch(11)), frame(12));
}

#[test]
fn an_append_recorded_out_of_order_never_lowers_bytes_after() {
    let mut index = PositionIndex::new(CommitEpoch(0));
    index.record(CommitEpoch(2), 100);
    index.record(CommitEpoch(1), 10);
    // Epoch 1's frame came after epoch 2's mark: an upper bound, not exact.
    assert_eq!(index.bytes_after(CommitEpoch(1)), 110);
    assert_eq!(index.bytes_after(CommitEpoch(2)), 10);
    assert_eq!(index.bytes_after(CommitEpoch(0)), 110);
}

proptest! {
    /// Against a model holding every frame: `bytes_after` is exact for the
    /// last `EXACT_POSITION_FRAMES` frames and at most `POSITION_STEP_BYTES`
    /// high before them, for every epoch at or past the last truncation; the
    /// marks past the truncation are a step apart.
    #[test]
    fn bytes_after_matches_a_model_of_every_frame(
        frames in proptest::collection::vec(1u64..400_000, 1..600),
        cuts in proptest::collection::vec(0usize..600, 0..4),
        probe in 0usize..600,
    ) {
        let mut index = PositionIndex::new(CommitEpoch(0));
        let mut model: Vec<u64> = Vec::new();
        let mut cut_at = 0u64;
        for (i, &bytes) in frames.iter().enumerate() {
            let epoch = i as u64 + 1;
            index.record(CommitEpoch(epoch), bytes);
            model.push(bytes);
            if cuts.contains(&i) {
                cut_at = epoch;
                index.forget_through(CommitEpoch(cut_at));
            }
        }
        let last = frames.len() as u64;
        let through = cut_at + probe as u64 % (last - cut_at + 1);
        let want: u64 = model[through as usize..].iter().sum();
        let got = index.bytes_after(CommitEpoch(through));
        prop_assert!(got >= want, "{got} < {want}");
        if last - through < EXACT_POSITION_FRAMES as u64 {
            prop_assert_eq!(got, want);
        } else {
            prop_assert!(got < want + POSITION_STEP_BYTES, "{got} vs {want}");
        }
        // Marks at or below the cut may linger until the next truncation;
        // past it, they are at least a step apart.
        let held: u64 = model[cut_at as usize..].iter().sum();
        let past_cut = index.coarse.iter().filter(|m| m.0.get() > cut_at).count() as u64;
        prop_assert!(
            past_cut <= held / POSITION_STEP_BYTES + 1,
            "{past_cut} coarse marks for {held} bytes"
        );
    }
}

/// A config whose active segment is retired by any truncation covering it.
fn retiring_config() -> TLogConfig {
    TLogConfig {
        retire_covered_min_bytes: 0,
        ..TLogConfig::new(dir())
    }
}

#[test]
fn a_covered_active_segment_is_retired_by_the_truncation() {
    let storage = MemStorage::new();
    let config = retiring_config();
    let log = open(&storage, config.clone());
    for epoch in 1..=10 {
        commit(&log, epoch).unwrap();
    }
    assert_eq!(segment_paths(&storage).len(), 1);
    log.truncate_through(CommitEpoch(10)).unwrap();
    assert!(segment_paths(&storage).is_empty(), "retired at once");
    assert_eq!(log.stats().segments_deleted, 1);
    let spare = dir().join(SPARE_FILE_NAME);
    assert!(file_len(&storage, &spare) <= config.preallocate_bytes as usize);
    commit(&log, 11).unwrap();
    assert_eq!(segment_paths(&storage).len(), 1);
    assert_eq!(
        log.stats().segments_recycled,
        1,
        "the next flush used the spare"
    );
    assert_eq!(replay_all(&log, 0).unwrap(), expected(11..=11));
    drop(log);
    let log = open(&storage, config);
    assert_eq!(replay_all(&log, 0).unwrap(), expected(11..=11));
    assert_eq!(log.last_epoch(), CommitEpoch(11));
}

/// The file-size rule: after a truncation through the last frame the
/// directory holds the lock file and a spare of at most one preallocation
/// step, whatever the log held before; the next rotation still recycles.
#[test]
fn a_log_truncated_through_its_last_frame_keeps_at_most_one_preallocation_step() {
    let storage = MemStorage::new();
    let config = TLogConfig {
        segment_target_bytes: 4096,
        preallocate_bytes: 1024,
        retire_covered_min_bytes: 1024,
        ..TLogConfig::new(dir())
    };
    let log = open(&storage, config.clone());
    let mut epoch = 0;
    for round in 0..4 {
        // Frames of a few segments, one of them far past the target; the
        // active one holds more than the retire size.
        for len in [100, 3000, 20_000, 1500] {
            epoch += 1;
            let ticket = log.append(CommitEpoch(epoch), &vec![round; len]).unwrap();
            log.wait_durable(ticket).unwrap();
        }
        log.truncate_through(CommitEpoch(epoch)).unwrap();
        assert!(segment_paths(&storage).is_empty(), "round {round}");
        assert!(
            dir_bytes(&storage) <= config.preallocate_bytes as usize,
            "round {round}: {} bytes left",
            dir_bytes(&storage)
        );
    }
    let stats = log.stats();
    assert!(stats.segments_recycled >= 3, "{stats:?}");
    drop(log);
    let log = open(&storage, config);
    assert_eq!(log.last_epoch(), CommitEpoch(0), "nothing left to replay");
    commit(&log, epoch + 1).unwrap();
    assert_eq!(
        replay_all(&log, epoch).unwrap(),
        expected(epoch + 1..=epoch + 1)
    );
}

/// A crash at any point of a retiring truncation leaves a log that opens,
/// replays nothing at or below the truncation that it should not, and
/// takes new commits.
#[test]
fn crashes_around_a_retiring_truncation_leave_an_openable_log() {
    for (seed, mode) in [
        CrashMode::DropUnsynced,
        CrashMode::KeepUnsynced,
        CrashMode::TearUnsynced { seed: 3 },
        CrashMode::TearUnsynced { seed: 11 },
    ]
    .into_iter()
    .enumerate()
    {
        for fail_at in 0..6u64 {
            let mem = MemStorage::new();
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            let log = TLog::open(Arc::new(faulty.clone()), retiring_config()).unwrap();
            for epoch in 1..=20 {
                commit(&log, epoch).unwrap();
            }
            faulty.set_plan(FaultPlan {
                fail_sync: Some(fail_at),
                ..FaultPlan::default()
            });
            let truncated = log.truncate_through(CommitEpoch(20)).is_ok();
            mem.crash(mode);
            drop(log);
            let log = open(&mem, retiring_config());
            let frames = replay_all(&log, 20).unwrap();
            assert!(frames.is_empty(), "seed {seed} fail {fail_at}: {frames:?}");
            if truncated {
                assert!(segment_paths(&mem).is_empty(), "seed {seed} fail {fail_at}");
            }
            commit(&log, 21).unwrap();
            drop(log);
            let log = open(&mem, retiring_config());
            assert_eq!(replay_all(&log, 20).unwrap(), expected(21..=21));
        }
    }
}

/// A spare an older build kept whole is cut to one preallocation step when
/// the log opens.
#[test]
fn a_long_spare_left_by_an_older_build_is_cut_at_open() {
    let storage = MemStorage::new();
    let config = recycling_config();
    drop(open(&storage, config.clone()));
    let spare = dir().join(SPARE_FILE_NAME);
    let file = Storage::open_file(&storage, &spare, true).unwrap();
    file.write_all_at(&vec![9u8; 10_000], 0).unwrap();
    let log = open(&storage, config.clone());
    assert_eq!(
        file_len(&storage, &spare),
        config.preallocate_bytes as usize
    );
    commit(&log, 1).unwrap();
    assert_eq!(log.stats().segments_recycled, 1);
    assert_eq!(replay_all(&log, 0).unwrap(), expected(1..=1));
}

#[test]
fn a_frame_past_the_truncation_keeps_the_active_segment() {
    let storage = MemStorage::new();
    let log = open(&storage, retiring_config());
    for epoch in 1..=10 {
        commit(&log, epoch).unwrap();
    }
    let before = segment_paths(&storage);
    log.truncate_through(CommitEpoch(9)).unwrap();
    commit(&log, 11).unwrap();
    assert_eq!(segment_paths(&storage), before);
    assert_eq!(replay_all(&log, 9).unwrap(), expected(10..=11));
}

#[test]
fn a_small_covered_segment_is_kept_below_the_retire_size() {
    let storage = MemStorage::new();
    let log = open(&storage, TLogConfig::new(dir()));
    for epoch in 1..=10 {
        commit(&log, epoch).unwrap();
    }
    let before = segment_paths(&storage);
    log.truncate_through(CommitEpoch(10)).unwrap();
    commit(&log, 11).unwrap();
    assert_eq!(
        segment_paths(&storage),
        before,
        "under 1 MiB: not worth a new file"
    );
    assert_eq!(replay_all(&log, 10).unwrap(), expected(11..=11));
}

#[test]
fn a_frame_appended_while_the_truncation_runs_is_never_deleted() {
    // Frames keep coming on another thread while truncations retire the
    // active segment: every frame past a truncation stays replayable.
    let storage = MemStorage::new();
    let log = Arc::new(open(&storage, retiring_config()));
    commit(&log, 1).unwrap();
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for epoch in 2..=400 {
                commit(&log, epoch).unwrap();
            }
        })
    };
    let mut through = 0;
    while !writer.is_finished() {
        let durable = log.durable_epoch().get();
        log.truncate_through(CommitEpoch(durable)).unwrap();
        through = through.max(durable);
        let replayed = replay_all(&log, through).unwrap();
        let last = through + replayed.len() as u64;
        assert_eq!(
            replayed,
            expected(through + 1..=last),
            "a gap past {through}"
        );
    }
    writer.join().unwrap();
    assert_eq!(
        replay_all(&log, through).unwrap(),
        expected(through + 1..=400)
    );
    log.truncate_through(CommitEpoch(400)).unwrap();
    commit(&log, 401).unwrap();
    assert_eq!(replay_all(&log, 0).unwrap(), expected(401..=401));
    assert!(
        log.stats().segments_deleted > 0,
        "the covered segment was retired"
    );
}
