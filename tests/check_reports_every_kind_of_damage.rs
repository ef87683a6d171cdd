//! `mmsb check` (`check_database`) reports every kind of damage with its
//! location: a flipped page, a zeroed page, a broken TLog frame, a torn TLog
//! tail (as a torn tail, not corruption), a free-list cycle, a leaked page, a
//! broken tree invariant, a damaged manifest; a clean database is clean; the
//! check never changes a byte; an open database is refused. The CLI prints
//! the report and exits 0 / 1 / 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mmsb::{
    check_database, Area, CheckOptions, CheckReport, Database, Durability, Error, Options, PageId,
    PageWrite, Severity,
};
use mmsb_engine::page_file::seal_page;
use mmsb_wal::manifest::CheckpointManifest;

const PAGE_SIZE: usize = 4096;
const PAGE_LEN: usize = PAGE_SIZE - 16;
const LEAF_KIND: u8 = 0xB1;
const ROWS: u64 = 600;
/// Commits left in the TLog after the checkpoint: enough (about 70 bytes
/// of frame each) to fill more than one 4 KiB segment on their own, so the
/// tests always find a sealed segment.
const LOGGED_COMMITS: u64 = 80;

fn options() -> Options {
    Options {
        background_workers: false,
        durability: Durability::Immediate,
        checkpoint_on_close: false,
        tlog_segment_bytes: 4 * 1024,
        ..Options::default()
    }
}

fn key(table: &str, i: u64) -> Vec<u8> {
    format!("{table}-{i:06}").into_bytes()
}

/// A database with three tables, a dropped one (free pages), a page
/// allocated through the raw page API (a leak) when `leak`, and, when
/// `logged`, commits after the last checkpoint left in the TLog. Returns the
/// data file path and the leaked page.
fn build(dir: &Path, leak: bool, logged: bool) -> (PathBuf, Option<PageId>) {
    let path = dir.join("db.mmsb");
    let db = options().open(&path).expect("open");
    for table in ["alpha", "beta", "doomed"] {
        let mut tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(table).expect("table");
            for i in 0..ROWS {
                t.insert(
                    &key(table, i),
                    format!("value of {i} ....................").as_bytes(),
                )
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let mut tx = db.begin_write().expect("begin");
    assert!(tx.delete_table("doomed").expect("drop"));
    tx.commit().expect("commit");
    let leaked = leak.then(|| {
        let mut pages = db.begin_page_write().expect("page tx");
        let page = pages.allocate_page().expect("allocate");
        pages.page_mut(page).expect("page")[100] = 7;
        pages.commit().expect("commit");
        page
    });
    db.checkpoint().expect("checkpoint");
    if logged {
        for i in 0..LOGGED_COMMITS {
            let mut tx = db.begin_write().expect("begin");
            tx.open_table("gamma")
                .expect("table")
                .insert(&key("gamma", i), &[i as u8; 40])
                .expect("insert");
            tx.commit().expect("commit");
        }
    }
    drop(db);
    // The double-write copy would repair page damage: tests of page damage
    // want it reported as an error.
    let _ = std::fs::remove_file(dir.join("db.mmsb-dwb"));
    (path, leaked)
}

/// Commits one row into table `t`, then checkpoints.
fn insert_and_checkpoint(db: &Database, key: &[u8], value: &[u8]) {
    let mut tx = db.begin_write().expect("begin");
    tx.open_table("t")
        .expect("t")
        .insert(key, value)
        .expect("insert");
    tx.commit().expect("commit");
    db.checkpoint().expect("checkpoint");
}

fn check(path: &Path) -> CheckReport {
    check_database(path, &CheckOptions::default()).expect("check runs")
}

fn errors(report: &CheckReport) -> Vec<String> {
    report
        .at_least(Severity::Error)
        .map(ToString::to_string)
        .collect()
}

/// Ids of leaf pages whose payload holds `needle`.
fn leaves_holding(bytes: &[u8], needle: &[u8]) -> Vec<u64> {
    (2..(bytes.len() / PAGE_SIZE) as u64)
        .filter(|&id| {
            let payload = &bytes[id as usize * PAGE_SIZE..id as usize * PAGE_SIZE + PAGE_LEN];
            payload[0] == LEAF_KIND && payload.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// Re-seals page `id` of the data file at `path` (whose bytes are `bytes`)
/// after its payload was edited, and records its new CRC in the manifest, as
/// a consistent but wrong write would: only the structural damage remains.
fn reseal(path: &Path, bytes: &mut [u8], id: u64) {
    let at = id as usize * PAGE_SIZE;
    let payload = bytes[at..at + PAGE_LEN].to_vec();
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[at + PAGE_LEN + 8..at + PAGE_SIZE]);
    let epoch = mmsb::CommitEpoch(u64::from_le_bytes(epoch));
    seal_page(PageId(id), &payload, epoch, &mut bytes[at..at + PAGE_SIZE]);
    let storage = mmsb::storage::FileStorage;
    let mut manifest = CheckpointManifest::read(&storage, path)
        .expect("read manifest")
        .expect("a manifest");
    let crc = &bytes[at + PAGE_LEN..at + PAGE_LEN + 4];
    manifest.page_crcs[id as usize - 1] = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    manifest
        .write_atomically(&storage, path)
        .expect("write manifest");
}

fn edit_file(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    edit(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

/// Every file of the directory and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

fn segments(path: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(path.with_file_name("db.mmsb-tlog"))
        .expect("tlog dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Offsets of the frames of a segment (32-byte header, frames of 24 + len bytes).
fn frame_offsets(segment: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 32;
    while at + 24 <= segment.len() {
        offsets.push(at);
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().expect("4 bytes"));
        at += 24 + len as usize;
    }
    offsets
}

#[test]
fn a_clean_database_is_clean_and_check_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, true);
    let before = snapshot(dir.path());
    let report = check(&path);
    assert!(report.is_clean(), "{:#?}", report.findings);
    assert_eq!(report.summary.warnings, 0, "{:#?}", report.findings);
    let s = &report.summary;
    assert_eq!(s.tables, 3, "alpha, beta and gamma");
    assert_eq!(s.entries, 2 * ROWS + LOGGED_COMMITS);
    assert!(s.free_pages > 0, "dropping a table freed pages");
    assert_eq!(s.leaked_pages, 0);
    assert!(s.manifest_verified);
    assert_eq!(
        s.last_epoch.get(),
        s.checkpoint_epoch.get() + LOGGED_COMMITS
    );
    assert!(s.tlog_segments > 1);
    assert_eq!(snapshot(dir.path()), before, "check wrote to the database");
}

#[test]
fn an_open_database_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let db = Database::open(&path).expect("open");
    match check_database(&path, &CheckOptions::default()) {
        Err(Error::DatabaseLocked(_)) => {}
        other => panic!("expected DatabaseLocked, got {other:?}"),
    }
    drop(db);
    assert!(check(&path).is_clean());
}

#[test]
fn a_flipped_and_a_zeroed_page_are_reported_at_their_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let bytes = std::fs::read(&path).expect("read");
    let flipped = leaves_holding(&bytes, &key("alpha", 300))[0];
    let zeroed = leaves_holding(&bytes, &key("beta", 10))[0];
    edit_file(&path, |b| {
        b[flipped as usize * PAGE_SIZE + 2000] ^= 0x10;
        b[zeroed as usize * PAGE_SIZE..(zeroed as usize + 1) * PAGE_SIZE].fill(0);
    });
    let report = check(&path);
    assert!(!report.is_clean());
    for (page, what) in [(flipped, "checksum"), (zeroed, "all zeros")] {
        let found = report
            .findings
            .iter()
            .find(|f| f.area == Area::DataPage && f.location.page == Some(PageId(page)));
        let found =
            found.unwrap_or_else(|| panic!("page {page} not reported: {:#?}", errors(&report)));
        assert_eq!(found.severity, Severity::Error);
        assert_eq!(found.location.offset, Some(page * PAGE_SIZE as u64));
        assert_eq!(found.location.file, path);
        assert!(found.message.contains(what), "{found}");
    }
    assert_eq!(report.summary.pages_damaged, 2);
    // The trees that own them are reported too, naming the table.
    for table in ["alpha", "beta"] {
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.area == Area::Tree && f.location.table.as_deref() == Some(table)),
            "{table}: {:#?}",
            errors(&report)
        );
    }
}

#[test]
fn a_page_with_a_double_write_copy_is_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.mmsb");
    {
        let db = options().open(&path).expect("open");
        insert_and_checkpoint(&db, b"k", b"v");
        // Page 2 is on disk now: the next checkpoint overwrites it, so it
        // copies it to the double-write file first (a page written for the
        // first time gets no copy: recovery never reads it before then).
        insert_and_checkpoint(&db, b"k2", b"v2");
    }
    // Page 2 was overwritten by the last checkpoint: its double-write copy is complete.
    edit_file(&path, |b| b[2 * PAGE_SIZE + 5] ^= 1);
    let report = check(&path);
    assert!(report.is_clean(), "{:#?}", report.findings);
    let warning = report
        .findings
        .iter()
        .find(|f| f.location.page == Some(PageId(2)))
        .expect("page 2 reported");
    assert_eq!(warning.severity, Severity::Warning);
    assert!(warning.message.contains("double-write"), "{warning}");
}

/// A checkpoint copies to the double-write file only pages the checkpoint
/// on disk held (torn-write protection needs no more): damage found later in
/// a page it wrote for the first time has no copy to repair it, and is an
/// error, even though the double-write file exists.
#[test]
fn a_page_first_written_by_the_last_checkpoint_has_no_double_write_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.mmsb");
    {
        let db = options().open(&path).expect("open");
        insert_and_checkpoint(&db, b"k", b"v");
    }
    assert!(
        dir.path().join("db.mmsb-dwb").exists(),
        "the meta page, on disk before, was copied"
    );
    edit_file(&path, |b| b[2 * PAGE_SIZE + 5] ^= 1);
    let report = check(&path);
    let error = report
        .findings
        .iter()
        .find(|f| f.location.page == Some(PageId(2)))
        .expect("page 2 reported");
    assert_eq!(error.severity, Severity::Error, "{error}");
    assert!(!report.is_clean());
}

#[test]
fn a_broken_tlog_frame_is_corruption_at_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, true);
    let segs = segments(&path);
    assert!(segs.len() > 1, "want a sealed segment");
    let sealed = &segs[segs.len() - 2];
    let bytes = std::fs::read(sealed).expect("read");
    let offsets = frame_offsets(&bytes);
    assert!(offsets.len() >= 2);
    let broken = offsets[1];
    edit_file(sealed, |b| b[broken + 30] ^= 0x01);
    let report = check(&path);
    assert!(!report.is_clean());
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::TLog && f.severity == Severity::Error)
        .unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert_eq!(found.location.file, *sealed);
    assert_eq!(found.location.offset, Some(broken as u64));
    assert!(found.message.contains("CRC"), "{found}");
}

#[test]
fn a_torn_tail_is_reported_as_such_not_as_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, true);
    let segs = segments(&path);
    let last = segs.last().expect("a segment");
    let bytes = std::fs::read(last).expect("read");
    let last_frame = *frame_offsets(&bytes).last().expect("a frame");
    edit_file(last, |b| b.truncate(b.len() - 7));
    let before = snapshot(dir.path());
    let report = check(&path);
    assert!(report.is_clean(), "{:#?}", report.findings);
    let torn = report
        .findings
        .iter()
        .find(|f| f.area == Area::TLog)
        .expect("torn tail reported");
    assert_eq!(torn.severity, Severity::Info);
    assert!(torn.message.contains("torn tail"), "{torn}");
    assert_eq!(torn.location.file, *last);
    assert_eq!(torn.location.offset, Some(last_frame as u64));
    assert_eq!(
        report.summary.tlog_torn_bytes,
        (bytes.len() - 7 - last_frame) as u64
    );
    let s = &report.summary;
    assert_eq!(
        s.last_epoch.get(),
        s.checkpoint_epoch.get() + LOGGED_COMMITS - 1
    );
    assert_eq!(snapshot(dir.path()), before, "check cut the tail itself");
}

#[test]
fn a_free_list_cycle_is_reported_at_the_page_that_links_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let mut head = 0u64;
    edit_file(&path, |b| {
        let meta = PAGE_SIZE;
        head = u64::from_le_bytes(b[meta + 16..meta + 24].try_into().expect("8 bytes"));
        assert_ne!(head, 0, "the dropped table left free pages");
        // The head links to itself.
        let at = head as usize * PAGE_SIZE;
        b[at..at + 8].copy_from_slice(&head.to_le_bytes());
        reseal(&path, b, head);
    });
    let report = check(&path);
    assert!(!report.is_clean());
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::FreeList)
        .unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert_eq!(found.severity, Severity::Error);
    assert_eq!(found.location.page, Some(PageId(head)));
    assert!(found.message.contains("cycle"), "{found}");
    assert_eq!(
        report.summary.pages_damaged, 0,
        "every CRC still checks out"
    );
    assert_eq!(report.summary.errors, 1, "{:#?}", report.findings);
}

#[test]
fn a_leaked_page_is_a_warning_naming_the_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, leaked) = build(dir.path(), true, false);
    let leaked = leaked.expect("a leaked page");
    let report = check(&path);
    assert!(report.is_clean(), "{:#?}", report.findings);
    assert_eq!(report.summary.leaked_pages, 1);
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::Leak)
        .expect("leak reported");
    assert_eq!(found.severity, Severity::Warning);
    assert_eq!(found.location.page, Some(leaked));
    assert_eq!(found.location.offset, Some(leaked.get() * PAGE_SIZE as u64));
}

#[test]
fn a_broken_tree_invariant_is_reported_with_table_and_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let bytes = std::fs::read(&path).expect("read");
    let (a, b) = (key("alpha", 200), key("alpha", 201));
    let page = leaves_holding(&bytes, &a)[0];
    assert_eq!(
        leaves_holding(&bytes, &b),
        vec![page],
        "both keys in one leaf"
    );
    edit_file(&path, |bytes| {
        let base = page as usize * PAGE_SIZE;
        let payload = &bytes[base..base + PAGE_LEN];
        let find = |k: &[u8]| payload.windows(k.len()).position(|w| w == k).expect("key");
        let (at_a, at_b) = (base + find(&a), base + find(&b));
        // Swap the last digits: the two keys are now out of order.
        let last = a.len() - 1;
        bytes.swap(at_a + last, at_b + last);
        reseal(&path, bytes, page);
    });
    let report = check(&path);
    assert!(!report.is_clean());
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::Tree)
        .unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert_eq!(found.location.table.as_deref(), Some("alpha"));
    assert_eq!(found.location.page, Some(PageId(page)));
    assert!(found.message.contains("order"), "{found}");
    assert_eq!(report.summary.pages_damaged, 0);
    assert_eq!(report.summary.errors, 1, "{:#?}", report.findings);
}

#[test]
fn a_damaged_manifest_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let manifest = dir.path().join("db.mmsb-manifest");
    edit_file(&manifest, |b| b[45] ^= 0x40);
    let report = check(&path);
    assert!(!report.is_clean());
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::Manifest)
        .unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert_eq!(found.severity, Severity::Error);
    assert_eq!(found.location.file, manifest);
    assert!(found.message.contains("SHA-256"), "{found}");
}

#[test]
fn a_stale_page_that_verifies_on_its_own_is_caught_by_the_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let bytes = std::fs::read(&path).expect("read");
    let page = leaves_holding(&bytes, &key("alpha", 300))[0] as usize;
    let stale = bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE].to_vec();
    {
        let db = options().open(&path).expect("open");
        let mut tx = db.begin_write().expect("begin");
        tx.open_table("alpha")
            .expect("alpha")
            .insert(&key("alpha", 300), b"a newer value")
            .expect("update");
        tx.commit().expect("commit");
        db.checkpoint().expect("checkpoint");
    }
    let _ = std::fs::remove_file(dir.path().join("db.mmsb-dwb"));
    // A lost write: the older, correctly sealed image is back in place.
    edit_file(&path, |b| {
        b[page * PAGE_SIZE..(page + 1) * PAGE_SIZE].copy_from_slice(&stale)
    });
    let report = check(&path);
    assert_eq!(
        report.summary.pages_damaged, 1,
        "a stale page is as unreadable as a damaged one"
    );
    let found = report
        .findings
        .iter()
        .find(|f| f.area == Area::Manifest)
        .unwrap_or_else(|| panic!("{:#?}", report.findings));
    assert_eq!(found.severity, Severity::Error);
    assert_eq!(found.location.page, Some(PageId(page as u64)));
    assert_eq!(found.location.offset, Some((page * PAGE_SIZE) as u64));
}

#[test]
fn the_cli_prints_the_report_and_exits_0_1_or_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = build(dir.path(), false, false);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mmsb"))
            .arg("check")
            .args(args)
            .output()
            .expect("run mmsb");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let db = path.to_str().expect("utf-8 path");
    let (code, stdout) = run(&[db]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("result: clean"), "{stdout}");

    let bytes = std::fs::read(&path).expect("read");
    let page = leaves_holding(&bytes, &key("alpha", 300))[0];
    edit_file(&path, |b| b[page as usize * PAGE_SIZE + 100] ^= 1);
    let (code, stdout) = run(&[db]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("page {page} at byte {}", page * PAGE_SIZE as u64)),
        "{stdout}"
    );

    let (code, json) = run(&[db, "--format", "json"]);
    assert_eq!(code, Some(1));
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(json.contains("\"clean\":false"), "{json}");
    assert!(json.contains(&format!("\"page\":{page}")), "{json}");

    let out = dir.path().join("out.mmsb");
    let (code, stdout) = run(&[db, "--repair", out.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "rows were lost: {stdout}");
    assert!(stdout.contains("INCOMPLETE"), "{stdout}");
    assert!(stdout.contains("output check: clean"), "{stdout}");
    let (code, stdout) = run(&[out.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "the salvaged database is clean: {stdout}");

    let missing = dir.path().join("missing.mmsb");
    let (code, _) = run(&[missing.to_str().expect("utf-8")]);
    assert_eq!(code, Some(2));
}
