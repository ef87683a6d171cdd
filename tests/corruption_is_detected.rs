//! Damage to any file of a database — flipped bits, zeroed pages, files
//! truncated at random lengths, over the data file, the checkpoint manifest,
//! the double-write file and the TLog segments — is detected: the open fails,
//! a read fails, or recovery returns exactly an acknowledged state of the
//! workload (after repairing pages or rebuilding the manifest, or after
//! cutting a torn TLog tail). Never altered data: a wrong answer panics.
//!
//! More than 10,000 corruptions in all; each campaign prints its tally.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mmsb::storage::{MemStorage, Storage};
use mmsb::{Database, Options, PageId, PageRead, PageWrite};
use mmsb_wal::CheckpointManifest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Commits before the first checkpoint.
const FIRST_CHECKPOINT_COMMITS: u64 = 24;
/// Commits between the first and the second checkpoint (the double-write
/// file holds only the pages these changed).
const SECOND_CHECKPOINT_COMMITS: u64 = 6;
/// Commits only in the TLog.
const LOGGED_COMMITS: u64 = 20;
const CHECKPOINTED_COMMITS: u64 = FIRST_CHECKPOINT_COMMITS + SECOND_CHECKPOINT_COMMITS;
const ALL_COMMITS: u64 = CHECKPOINTED_COMMITS + LOGGED_COMMITS;
/// Corruptions per campaign: four campaigns make 12,000.
const CORRUPTIONS_PER_CAMPAIGN: usize = 3_000;
/// Bytes a "zeroed page" wipes in files that have no pages of their own.
const ZEROED_BLOCK_BYTES: usize = 4096;

const DIR: &str = "/corrupt";

fn db_path() -> PathBuf {
    PathBuf::from("/corrupt/db.mmsb")
}

fn manifest_path() -> PathBuf {
    PathBuf::from("/corrupt/db.mmsb-manifest")
}

fn dwb_path() -> PathBuf {
    PathBuf::from("/corrupt/db.mmsb-dwb")
}

fn tlog_dir() -> PathBuf {
    PathBuf::from("/corrupt/db.mmsb-tlog")
}

fn options(storage: MemStorage) -> Options {
    Options {
        storage: Arc::new(storage),
        background_workers: false,
        checkpoint_on_close: false,
        tlog_segment_bytes: 4 * 1024,
        ..Options::default()
    }
}

/// A database with two checkpoints and a TLog holding later commits.
fn build() -> MemStorage {
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    for index in 0..FIRST_CHECKPOINT_COMMITS {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    for index in FIRST_CHECKPOINT_COMMITS..CHECKPOINTED_COMMITS {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    for index in CHECKPOINTED_COMMITS..ALL_COMMITS {
        common::run_commit(&db, index).unwrap();
    }
    drop(db);
    storage
}

/// What opening and reading everything gave.
#[derive(Debug)]
enum Verdict {
    Detected(String),
    /// Commits present (the model was checked), pages repaired.
    Intact {
        commits: u64,
        repaired: u64,
    },
}

/// The model after each number of commits of the workload, computed once
/// (recomputing it for every corruption would dominate the test's time).
fn models() -> &'static [common::Model] {
    static MODELS: OnceLock<Vec<common::Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let mut model = common::Model::default();
        let mut all = vec![model.clone()];
        for _ in 0..ALL_COMMITS {
            model.apply_next(4096 - 16);
            all.push(model.clone());
        }
        all
    })
}

fn open_and_read_everything(storage: MemStorage) -> Verdict {
    open_and_read_with(storage, false)
}

fn open_and_read_with(storage: MemStorage, verify_pages_on_open: bool) -> Verdict {
    let opened = Options {
        verify_pages_on_open,
        ..options(storage)
    }
    .open(db_path());
    let db: Database = match opened {
        Ok(db) => db,
        Err(err) => return Verdict::Detected(format!("open: {err}")),
    };
    let present = match common::committed_count(&db) {
        Ok(present) => present,
        Err(err) => return Verdict::Detected(format!("count: {err}")),
    };
    let Some(model) = models().get(present as usize) else {
        panic!("WRONG ANSWER after corruption: {present} commits, only {ALL_COMMITS} were made");
    };
    assert_eq!(db.page_len(), 4096 - 16);
    match common::verify_against(&db, model) {
        Ok(()) => Verdict::Intact {
            commits: present,
            repaired: db.metrics().pages_repaired,
        },
        Err(diff) if diff.contains("differs") || diff.contains("pages, the database") => {
            panic!("WRONG ANSWER after corruption: {diff}")
        }
        Err(err) => Verdict::Detected(err),
    }
}

fn copy_files(from: &MemStorage) -> MemStorage {
    let to = MemStorage::new();
    let mut paths = from.list_dir(Path::new(DIR)).unwrap();
    paths.extend(from.list_dir(&tlog_dir()).unwrap());
    for path in paths {
        to.set_file_bytes(&path, from.file_bytes(&path).unwrap());
    }
    to
}

/// The three kinds of damage.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipBit,
    ZeroPage,
    Truncate,
}

/// Damages `bytes` in place; `page_bytes` is the unit a zeroed page wipes.
fn damage(bytes: &mut Vec<u8>, kind: Damage, page_bytes: usize, rng: &mut StdRng) -> String {
    match kind {
        Damage::FlipBit => {
            let at = rng.gen_range(0..bytes.len());
            let bit = rng.gen_range(0..8);
            bytes[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} flipped")
        }
        Damage::ZeroPage => {
            let pages = bytes.len().div_ceil(page_bytes);
            let page = rng.gen_range(0..pages);
            let end = ((page + 1) * page_bytes).min(bytes.len());
            bytes[page * page_bytes..end].fill(0);
            format!("page {page} zeroed")
        }
        Damage::Truncate => {
            let len = rng.gen_range(0..bytes.len());
            bytes.truncate(len);
            format!("truncated to {len} bytes")
        }
    }
}

/// How a campaign's corruptions ended. `wrong` stays 0: a wrong answer panics.
#[derive(Debug, Default)]
struct Tally {
    detected: usize,
    repaired: usize,
    tail_cut: usize,
    harmless: usize,
    wrong: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.detected + self.repaired + self.tail_cut + self.harmless + self.wrong
    }

    fn print(&self, what: &str, harmless: &str) {
        eprintln!(
            "{what}: {} corruptions: detected {} / repaired {} / tail-cut {} / {harmless} {} / wrong={}",
            self.total(),
            self.detected,
            self.repaired,
            self.tail_cut,
            self.harmless,
            self.wrong
        );
    }
}

fn pick_damage(rng: &mut StdRng) -> Damage {
    match rng.gen_range(0..10) {
        0..=5 => Damage::FlipBit,
        6..=7 => Damage::ZeroPage,
        _ => Damage::Truncate,
    }
}

/// Runs `CORRUPTIONS_PER_CAMPAIGN` corruptions; `corrupt` damages a fresh
/// copy of the pristine files and says what it did; `tail_cut_allowed`
/// says whether recovery may legitimately end before the last commit.
fn campaign(
    what: &str,
    harmless_label: &str,
    seed: u64,
    tail_cut_allowed: bool,
    mut corrupt: impl FnMut(&MemStorage, &mut StdRng) -> String,
) -> Tally {
    let pristine = build();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for _ in 0..CORRUPTIONS_PER_CAMPAIGN {
        let storage = copy_files(&pristine);
        let done = corrupt(&storage, &mut rng);
        match open_and_read_everything(storage) {
            Verdict::Detected(reason) => {
                if tally.detected == 0 {
                    eprintln!("{what}: first detection ({done}): {reason}");
                }
                tally.detected += 1;
            }
            Verdict::Intact { commits, repaired } if commits == ALL_COMMITS => {
                if repaired > 0 {
                    tally.repaired += 1;
                } else {
                    tally.harmless += 1;
                }
            }
            Verdict::Intact { commits, .. } => {
                assert!(
                    tail_cut_allowed && commits >= CHECKPOINTED_COMMITS,
                    "{what}: {done}: recovery lost commits ({commits} of {ALL_COMMITS})"
                );
                tally.tail_cut += 1;
            }
        }
    }
    tally.print(what, harmless_label);
    assert_eq!(tally.wrong, 0);
    assert_eq!(tally.total(), CORRUPTIONS_PER_CAMPAIGN);
    tally
}

fn damage_file(storage: &MemStorage, path: &Path, page_bytes: usize, rng: &mut StdRng) -> String {
    let mut bytes = storage.file_bytes(path).unwrap();
    let kind = pick_damage(rng);
    let done = damage(&mut bytes, kind, page_bytes, rng);
    storage.set_file_bytes(path, bytes);
    format!("{}: {done}", path.display())
}

#[test]
fn damaged_data_file_is_detected_or_repaired() {
    let tally = campaign("data file", "harmless", 1, false, |storage, rng| {
        // Half the time without the double-write file: nothing to repair from.
        if rng.gen_bool(0.5) {
            storage.remove_file(&dwb_path()).unwrap();
        }
        damage_file(storage, &db_path(), 4096, rng)
    });
    assert!(tally.detected > CORRUPTIONS_PER_CAMPAIGN / 4, "{tally:?}");
    assert!(tally.repaired > 0, "{tally:?}");
}

#[test]
fn damaged_manifest_is_detected_and_rebuilt() {
    let pristine_manifest = build().file_bytes(&manifest_path()).unwrap();
    assert!(!pristine_manifest.is_empty());
    let tally = campaign(
        "manifest",
        "detected by its SHA-256/length check and rebuilt",
        2,
        false,
        |storage, rng| {
            if rng.gen_bool(0.1) {
                storage.remove_file(&manifest_path()).unwrap();
                return "manifest removed".into();
            }
            let done = damage_file(storage, &manifest_path(), 4096, rng);
            let damaged = storage.file_bytes(&manifest_path()).unwrap();
            assert!(
                CheckpointManifest::decode(&damaged).is_err(),
                "{done}: the manifest still decodes"
            );
            done
        },
    );
    // The manifest is redundant with the page trailers: a damaged one is
    // rebuilt from them (counted as harmless above), and the data must come
    // back whole.
    assert_eq!(tally.detected, 0, "{tally:?}");
    assert_eq!(tally.harmless, CORRUPTIONS_PER_CAMPAIGN, "{tally:?}");
}

/// After a damaged manifest is rebuilt at open, the next checkpoint writes a
/// valid one again, even with nothing else to write.
#[test]
fn a_damaged_manifest_is_rewritten_by_the_next_checkpoint() {
    let storage = build();
    let mut bytes = storage.file_bytes(&manifest_path()).unwrap();
    bytes[45] ^= 4;
    storage.set_file_bytes(&manifest_path(), bytes.clone());
    assert!(CheckpointManifest::decode(&bytes).is_err());
    let db = options(storage.clone()).open(db_path()).unwrap();
    db.checkpoint().unwrap();
    db.checkpoint().unwrap();
    drop(db);
    let rewritten = storage.file_bytes(&manifest_path()).unwrap();
    let manifest = CheckpointManifest::decode(&rewritten).unwrap();
    assert_eq!(
        manifest.page_count * 4096,
        storage.file_bytes(&db_path()).unwrap().len() as u64
    );
    assert!(manifest.checkpoint_seq >= 3);
    let db = options(storage).open(db_path()).unwrap();
    common::verify_against_model(&db, ALL_COMMITS).unwrap();
}

#[test]
fn damaged_double_write_file_is_never_restored() {
    let pristine = build();
    let dwb = pristine.file_bytes(&dwb_path()).unwrap();
    // Entries are [page id u64][sealed page] after a 32-byte header.
    let first_entry_page = u64::from_le_bytes(dwb[32..40].try_into().unwrap());
    let tally = campaign("double-write file", "harmless", 3, false, |storage, rng| {
        let done = damage_file(storage, &dwb_path(), 4096 + 8, rng);
        // A torn write-back of a page the double-write file holds: only an
        // intact copy may repair it.
        if rng.gen_bool(0.5) {
            let mut data = storage.file_bytes(&db_path()).unwrap();
            let at = first_entry_page as usize * 4096;
            data[at..at + 100].fill(0x5a);
            storage.set_file_bytes(&db_path(), data);
            return format!("{done}; page {first_entry_page} torn");
        }
        done
    });
    assert!(tally.detected > 0 && tally.harmless > 0, "{tally:?}");
}

#[test]
fn damaged_tlog_segments_are_detected_or_cut_as_tail() {
    let pristine = build();
    let segments: Vec<PathBuf> = pristine
        .list_dir(&tlog_dir())
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|ext| ext != "lock"))
        .collect();
    assert!(
        segments.len() > 1,
        "the workload should span several segments: {segments:?}"
    );
    let tally = campaign("TLog", "harmless", 4, true, |storage, rng| {
        let path = &segments[rng.gen_range(0..segments.len())];
        damage_file(storage, path, ZEROED_BLOCK_BYTES, rng)
    });
    assert!(tally.detected + tally.tail_cut > CORRUPTIONS_PER_CAMPAIGN / 2);
}

/// A page that verifies on its own but is an older image than the one the
/// last checkpoint wrote (a lost write) is caught by the manifest's CRC table.
#[test]
fn a_stale_page_image_is_caught_by_the_manifest() {
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    for index in 0..10 {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    let old = storage.file_bytes(&db_path()).unwrap();
    let page = common::COUNTER_PAGE.get() as usize;
    let old_page = old[page * 4096..(page + 1) * 4096].to_vec();
    common::run_commit(&db, 10).unwrap();
    db.checkpoint().unwrap();
    drop(db);
    let mut bytes = storage.file_bytes(&db_path()).unwrap();
    assert_ne!(bytes[page * 4096..(page + 1) * 4096], old_page[..]);
    bytes[page * 4096..(page + 1) * 4096].copy_from_slice(&old_page);
    storage.set_file_bytes(&db_path(), bytes);
    storage.remove_file(&dwb_path()).unwrap();
    match open_and_read_everything(storage) {
        Verdict::Detected(reason) => {
            assert!(
                reason.contains("page 2") && reason.contains("manifest"),
                "{reason}"
            );
        }
        other => panic!("a stale page went unnoticed: {other:?}"),
    }
}

/// `verify_pages_on_open` fails the open naming every damaged page; without
/// it the open succeeds and the damage shows when a page is read.
#[test]
fn verify_pages_on_open_names_every_damaged_page() {
    // Checkpointed with an empty TLog: the open itself reads only the meta page.
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    for index in 0..12 {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    drop(db);
    storage.remove_file(&dwb_path()).unwrap();
    let mut bytes = storage.file_bytes(&db_path()).unwrap();
    let page_count = bytes.len() / 4096;
    let last = page_count - 1;
    bytes[3 * 4096 + 7] ^= 0x10;
    bytes[(last + 1) * 4096 - 16..(last + 1) * 4096].fill(0); // its trailer
    storage.set_file_bytes(&db_path(), bytes);
    let err = Options {
        verify_pages_on_open: true,
        ..options(copy_files(&storage))
    }
    .open(db_path())
    .map(drop)
    .unwrap_err();
    let text = err.to_string();
    assert!(err.is_corruption(), "{text}");
    for page in [3, last] {
        assert!(
            text.contains(&format!("page {page} ")) || text.contains(&format!("page {page}:")),
            "page {page} not named: {text}"
        );
    }
    // Without the option the open may succeed, but no read returns bad data.
    if let Verdict::Intact { .. } = open_and_read_with(storage, false) {
        panic!("a damaged page was read back as data");
    }
}

/// A damaged page that the TLog rewrote entirely since the checkpoint is
/// rebuilt from zeros plus those deltas, and counted.
#[test]
fn a_page_fully_rewritten_since_the_checkpoint_is_rebuilt_from_the_tlog() {
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    let mut tx = db.begin_page_write().unwrap();
    let page = tx.allocate_page().unwrap();
    let first = vec![0xffu8; tx.page_len()];
    tx.write(page, 0, &first).unwrap();
    tx.commit().unwrap();
    db.checkpoint().unwrap();
    let mut tx = db.begin_page_write().unwrap();
    let second: Vec<u8> = (0..tx.page_len()).map(|i| (i % 251) as u8).collect();
    tx.write(page, 0, &second).unwrap();
    tx.commit().unwrap();
    drop(db);
    storage.remove_file(&dwb_path()).unwrap();
    let mut bytes = storage.file_bytes(&db_path()).unwrap();
    let at = page.get() as usize * 4096;
    bytes[at..at + 4096].fill(0);
    storage.set_file_bytes(&db_path(), bytes);
    let db = options(storage.clone()).open(db_path()).unwrap();
    assert_eq!(db.metrics().pages_repaired, 1);
    let rx = db.begin_page_read().unwrap();
    assert_eq!(&rx.read_page(page).unwrap()[..], &second[..]);
    drop(rx);
    // The next checkpoint writes the rebuilt page back.
    db.checkpoint().unwrap();
    drop(db);
    let db = options(storage).open(db_path()).unwrap();
    assert_eq!(db.metrics().pages_repaired, 0);
    let rx = db.begin_page_read().unwrap();
    assert_eq!(&rx.read_page(page).unwrap()[..], &second[..]);
}

/// A damaged page with a partial rewrite in the TLog cannot be rebuilt: the
/// open fails naming it and its file offset.
#[test]
fn a_page_partly_rewritten_since_the_checkpoint_fails_the_open_by_name() {
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    let mut tx = db.begin_page_write().unwrap();
    let page = tx.allocate_page().unwrap();
    tx.write(page, 0, &[1u8; 64]).unwrap();
    tx.commit().unwrap();
    db.checkpoint().unwrap();
    let mut tx = db.begin_page_write().unwrap();
    tx.write(page, 100, &[2u8; 64]).unwrap();
    tx.commit().unwrap();
    drop(db);
    storage.remove_file(&dwb_path()).unwrap();
    let mut bytes = storage.file_bytes(&db_path()).unwrap();
    let at = page.get() as usize * 4096;
    bytes[at + 5] ^= 1;
    storage.set_file_bytes(&db_path(), bytes);
    let err = options(storage).open(db_path()).map(drop).unwrap_err();
    let text = err.to_string();
    assert!(err.is_corruption(), "{text}");
    assert!(text.contains(&format!("{page}")), "{text}");
    assert!(text.contains(&format!("byte {at}")), "{text}");
}

/// Pages read lazily after the open are repaired from the double-write file
/// too, and the repair is counted.
#[test]
fn a_torn_page_read_after_open_is_repaired_from_the_double_write_file() {
    let storage = MemStorage::new();
    let db = options(storage.clone()).open(db_path()).unwrap();
    for index in 0..10 {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    // The second checkpoint overwrites pages the first one wrote, so it
    // copies them to the double-write file (the first one copied only the
    // meta page: the others were past the page count on disk).
    for index in 10..12 {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    drop(db);
    // The TLog is empty now: the open reads only the meta page.
    let db = options(storage.clone()).open(db_path()).unwrap();
    let page = last_double_write_data_page(&storage);
    let mut bytes = storage.file_bytes(&db_path()).unwrap();
    let at = page.get() as usize * 4096;
    bytes[at + 10..at + 20].fill(0xee);
    storage.set_file_bytes(&db_path(), bytes);
    common::verify_against_model(&db, 12).unwrap();
    assert_eq!(db.metrics().pages_repaired, 1);
    drop(db);
    let db = options(storage).open(db_path()).unwrap();
    common::verify_against_model(&db, 12).unwrap();
    assert_eq!(
        db.metrics().pages_repaired,
        0,
        "the repair was written back"
    );
}

/// The highest page id past the meta page that the double-write file holds
/// (entries are `[page id u64][sealed page]` after a 32-byte header).
fn last_double_write_data_page(storage: &MemStorage) -> PageId {
    let dwb = storage.file_bytes(&dwb_path()).unwrap();
    dwb[32..]
        .chunks_exact(8 + 4096)
        .map(|entry| u64::from_le_bytes(entry[..8].try_into().unwrap()))
        .filter(|&id| id > 1)
        .max()
        .map(PageId)
        .expect("the second checkpoint copied a data page")
}

/// On the real file system: the checkpoint leaves `PATH-manifest` (and no
/// temp file) naming the header's checkpoint; a damaged one is rebuilt.
#[test]
fn the_manifest_on_a_real_disk_names_the_checkpoint_and_survives_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.mmsb");
    let real = |path: &Path| {
        Options {
            background_workers: false,
            checkpoint_on_close: false,
            ..Options::default()
        }
        .open(path)
        .unwrap()
    };
    let db = real(&path);
    for index in 0..12 {
        common::run_commit(&db, index).unwrap();
    }
    db.checkpoint().unwrap();
    drop(db);
    let manifest_file = mmsb_wal::manifest_path(&path);
    assert!(!dir.path().join("real.mmsb-manifest.tmp").exists());
    let mut bytes = std::fs::read(&manifest_file).unwrap();
    let manifest = CheckpointManifest::decode(&bytes).unwrap();
    assert_eq!(manifest.checkpoint_seq, 1);
    assert_eq!(manifest.page_count, 2 + common::BASE_PAGES);
    bytes[50] ^= 0x40;
    std::fs::write(&manifest_file, &bytes).unwrap();
    let db = real(&path);
    common::verify_against_model(&db, 12).unwrap();
    common::run_commit(&db, 12).unwrap();
    db.checkpoint().unwrap();
    drop(db);
    let manifest = CheckpointManifest::decode(&std::fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(manifest.checkpoint_seq, 2);
}
