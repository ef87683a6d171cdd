//! `mmsb check`: verifies a closed database without changing a byte of it,
//! and lists every finding with its location and severity.
//!
//! What it verifies, in order: both header slots; every data page's trailer
//! CRC (and, when the checkpoint manifest exists, its SHA-256 and each page's
//! CRC against the manifest's table); every TLog segment and frame (header,
//! CRC, epochs in order, no gap after the checkpoint; a torn tail is reported
//! as such, not as corruption); the meta page; the catalog and every table's
//! B+tree invariants; the free list (in range, no cycle, no page both free and
//! owned by a tree, its length); and pages owned by nothing (leaks, warnings).
//!
//! Trees are checked as of the checkpoint plus the TLog: the TLog is replayed
//! into an in-memory overlay of the pages it touches (`DbImage`); every
//! other page is read from the data file and verified on each read. Nothing
//! is written, nothing is cut, and the data file lock is held throughout, so
//! a database in use is refused. Salvage (`crate::salvage`) reads through the
//! same image.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmsb_wal::manifest::CheckpointManifest;
use mmsb_wal::record::CommitRecord;
use mmsb_wal::storage::{FileStorage, Storage, StorageFile};
use mmsb_wal::tlog::format::{
    decode_frame_header, frame_crc_matches, is_clean_end, parse_segment_file_name, SegmentHeader,
    FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_OVERHEAD_BYTES, SEGMENT_HEADER_BYTES,
};
use mmsb_wal::{CommitEpoch, PageId, WalError};

use crate::btree::{self, TreeHeader};
use crate::catalog::{self, TableEntry};
use crate::error::{Error, Result};
use crate::meta::{free_link, Meta, META_PAGE};
use crate::page_access::{PageRead, PageRef};
use crate::page_file::{
    inspect_header_slots, verify_page, FileHeader, PageFile, MIN_PAGE_SIZE, PAGE_TRAILER_LEN,
};

/// Pages checked between two progress reports.
const PROGRESS_EVERY_PAGES: u64 = 1024;
/// Leaked pages listed one by one; the rest are counted in one finding.
const MAX_LISTED_LEAKS: usize = 32;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Normal after a crash and repaired on the next open (a torn TLog tail),
    /// or only informative.
    Info,
    /// Not damage to data, but worth knowing (a leaked page, an invalid
    /// header slot while the other is valid, a page a double-write copy repairs).
    Warning,
    /// Damage: some data cannot be trusted or read.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// Which part of the database a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// The header slots of page 0.
    Header,
    /// A data page's trailer (CRC, magic).
    DataPage,
    /// The double-write file.
    DoubleWrite,
    /// The checkpoint manifest (`PATH-manifest`).
    Manifest,
    /// A TLog segment or frame.
    TLog,
    /// The meta page (page 1).
    Meta,
    /// The catalog tree (table name → table).
    Catalog,
    /// A table's B+tree.
    Tree,
    /// The free list.
    FreeList,
    /// Pages owned by nothing.
    Leak,
}

impl Area {
    /// A short lowercase name, as printed in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Area::Header => "header",
            Area::DataPage => "page",
            Area::DoubleWrite => "double-write",
            Area::Manifest => "manifest",
            Area::TLog => "tlog",
            Area::Meta => "meta",
            Area::Catalog => "catalog",
            Area::Tree => "tree",
            Area::FreeList => "free-list",
            Area::Leak => "leak",
        }
    }
}

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// The file (data file, TLog segment, manifest, double-write file).
    pub file: PathBuf,
    /// The page, when the finding is about one.
    pub page: Option<PageId>,
    /// Byte offset in `file`.
    pub offset: Option<u64>,
    /// The table, when the finding is about one.
    pub table: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(table) = &self.table {
            write!(f, " table {table:?}")?;
        }
        if let Some(page) = self.page {
            write!(f, " {page}")?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        Ok(())
    }
}

/// One thing `check_database` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What part of the database it concerns.
    pub area: Area,
    /// Where it is.
    pub location: Location,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {}: {}",
            self.severity,
            self.area.name(),
            self.location,
            self.message
        )
    }
}

/// Counts over the whole check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckSummary {
    /// Bytes per page (0 when no header slot was valid).
    pub page_size: u32,
    /// Pages the checkpoint covers (the header's page count).
    pub checkpoint_pages: u64,
    /// Pages of the database after the TLog (the meta page's count).
    pub page_count: u64,
    /// Epoch of the checkpoint in the header.
    pub checkpoint_epoch: CommitEpoch,
    /// Newest epoch reached by replaying the TLog.
    pub last_epoch: CommitEpoch,
    /// Data pages whose trailer verified (including pages a double-write copy repairs).
    pub pages_verified: u64,
    /// Data pages that failed verification and have no double-write copy.
    pub pages_damaged: u64,
    /// Whether a checkpoint manifest was found and verified.
    pub manifest_verified: bool,
    /// TLog segment files.
    pub tlog_segments: u64,
    /// TLog frames whose CRC checked out.
    pub tlog_frames: u64,
    /// Bytes of torn TLog tail (cut on the next open).
    pub tlog_torn_bytes: u64,
    /// Tables in the catalog.
    pub tables: u64,
    /// Entries in all tables (as the tree headers count them).
    pub entries: u64,
    /// Pages owned by trees (the catalog included).
    pub tree_pages: u64,
    /// Pages on the free list.
    pub free_pages: u64,
    /// Pages neither owned by a tree nor free.
    pub leaked_pages: u64,
    /// Findings of severity error.
    pub errors: u64,
    /// Findings of severity warning.
    pub warnings: u64,
}

/// The result of [`check_database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The data file checked.
    pub path: PathBuf,
    /// Every finding, in the order found.
    pub findings: Vec<Finding>,
    /// Counts.
    pub summary: CheckSummary,
}

impl CheckReport {
    /// True when nothing of severity [`Severity::Error`] was found
    /// (warnings and infos allowed).
    pub fn is_clean(&self) -> bool {
        self.summary.errors == 0
    }

    /// Findings of at least `severity`.
    pub fn at_least(&self, severity: Severity) -> impl Iterator<Item = &Finding> + '_ {
        self.findings.iter().filter(move |f| f.severity >= severity)
    }
}

/// The phase a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPhase {
    /// Verifying data pages (`done`/`total` in pages).
    Pages,
    /// Reading the TLog (`done`/`total` in bytes).
    TLog,
    /// Checking trees (`done`/`total` in tables, the catalog included).
    Trees,
}

/// Where a long check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckProgress {
    /// The phase.
    pub phase: CheckPhase,
    /// Units done.
    pub done: u64,
    /// Units in this phase.
    pub total: u64,
}

/// How to run [`check_database`].
#[derive(Clone)]
pub struct CheckOptions<'a> {
    /// Where the files live; the real file system by default.
    pub storage: Arc<dyn Storage>,
    /// Called as the check advances (often: throttle in the callback).
    pub progress: Option<&'a dyn Fn(CheckProgress)>,
}

impl Default for CheckOptions<'_> {
    fn default() -> Self {
        CheckOptions {
            storage: Arc::new(FileStorage),
            progress: None,
        }
    }
}

impl fmt::Debug for CheckOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckOptions")
            .field("storage", &self.storage)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Verifies the closed database at `path` and reports every finding. Never
/// writes. `Err` only when the check cannot run: the file is missing or not
/// an mmsb database, the database is open (locked), or an I/O call fails;
/// damage is reported in the [`CheckReport`].
pub fn check_database(path: impl AsRef<Path>, options: &CheckOptions<'_>) -> Result<CheckReport> {
    let path = path.as_ref();
    let mut sink = Findings::new(path);
    let progress = |p: CheckProgress| {
        if let Some(report) = options.progress {
            report(p);
        }
    };
    let mut summary = CheckSummary::default();
    if let Some(mut image) = open_image(path, &options.storage, &mut sink, &progress)? {
        summary.page_size = image.page_size;
        summary.checkpoint_pages = image.header.page_count;
        summary.checkpoint_epoch = image.header.checkpoint_epoch;
        check_manifest(&image, &options.storage, &mut sink, &mut summary);
        verify_pages(&image, &mut sink, &mut summary, &progress)?;
        summary.tlog_segments = image.tlog.segments;
        summary.tlog_frames = image.tlog.frames;
        summary.tlog_torn_bytes = image.tlog.torn_bytes;
        summary.last_epoch = image.tlog.last_epoch;
        check_structure(&mut image, &mut sink, &mut summary, &progress)?;
    }
    summary.errors = sink.count(Severity::Error);
    summary.warnings = sink.count(Severity::Warning);
    Ok(CheckReport {
        path: path.to_path_buf(),
        findings: sink.findings,
        summary,
    })
}

/// Collects findings; knows the data file for default locations.
#[derive(Debug)]
pub(crate) struct Findings {
    path: PathBuf,
    pub(crate) findings: Vec<Finding>,
}

impl Findings {
    pub(crate) fn new(path: &Path) -> Self {
        Findings {
            path: path.to_path_buf(),
            findings: Vec::new(),
        }
    }

    fn count(&self, severity: Severity) -> u64 {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count() as u64
    }

    fn push(&mut self, severity: Severity, area: Area, location: Location, message: String) {
        self.findings.push(Finding {
            severity,
            area,
            location,
            message,
        });
    }

    /// A location in the data file: `page` and, when it is on disk, its offset.
    fn at_page(&self, page: Option<PageId>, offset: Option<u64>) -> Location {
        Location {
            file: self.path.clone(),
            page,
            offset,
            table: None,
        }
    }

    fn at_file(file: &Path, offset: Option<u64>) -> Location {
        Location {
            file: file.to_path_buf(),
            page: None,
            offset,
            table: None,
        }
    }
}

/// What the TLog scan found.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlogState {
    pub(crate) segments: u64,
    pub(crate) frames: u64,
    pub(crate) torn_bytes: u64,
    /// Newest epoch applied to the image (the checkpoint's when none).
    pub(crate) last_epoch: CommitEpoch,
    /// The replay stopped early at damage: later commits are missing.
    pub(crate) replay_cut: bool,
}

/// The database as of the checkpoint plus the intact part of the TLog,
/// read-only: pages the TLog touched live in memory, every other page is
/// read from the data file (or a complete double-write copy) and verified on
/// every read. Holds the data file, and so its lock.
pub(crate) struct DbImage {
    pub(crate) path: PathBuf,
    file: Arc<dyn StorageFile>,
    pub(crate) page_size: u32,
    pub(crate) header: FileHeader,
    /// Pages below this count are range-checked as in the database.
    page_count: u64,
    /// Sealed copies from a complete double-write file.
    dwb: HashMap<PageId, Vec<u8>>,
    /// The checkpoint manifest, when it is intact and describes the header's
    /// checkpoint: a page whose CRC differs from it is stale (a lost write).
    manifest: Option<CheckpointManifest>,
    /// Payloads the TLog replay produced.
    overlay: HashMap<PageId, Arc<[u8]>>,
    /// Pages the replay could not rebuild (their base page is damaged).
    unreplayable: HashMap<PageId, String>,
    pub(crate) tlog: TlogState,
    /// The last page `read_page` was asked for: where a tree error is.
    last_read: Cell<Option<PageId>>,
}

impl fmt::Debug for DbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbImage")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("overlay_pages", &self.overlay.len())
            .finish()
    }
}

impl DbImage {
    fn page_len(&self) -> usize {
        self.page_size as usize - PAGE_TRAILER_LEN
    }

    fn offset_of(&self, page: PageId) -> u64 {
        page.get() * u64::from(self.page_size)
    }

    /// The sealed bytes of `page` in the data file; `None` past its end.
    fn read_sealed(&self, page: PageId) -> Result<Option<Vec<u8>>> {
        let mut sealed = vec![0u8; self.page_size as usize];
        match self.file.read_exact_at(&mut sealed, self.offset_of(page)) {
            Ok(()) => Ok(Some(sealed)),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(err) => Err(Error::io(format!("read {page}"), err)),
        }
    }

    /// The verified payload of a checkpointed page: the data file's copy, or
    /// the double-write copy when the data file's fails. `Corrupted` when
    /// neither verifies.
    pub(crate) fn checkpointed_payload(&self, page: PageId) -> Result<Vec<u8>> {
        let why = match self.read_sealed(page)? {
            Some(sealed) => match self.verify(page, &sealed) {
                Ok(()) => return Ok(payload_of(sealed, self.page_len())),
                Err(why) => why,
            },
            None => format!("{page} lies past the end of the data file"),
        };
        match self.dwb.get(&page) {
            Some(copy) if self.verify(page, copy).is_ok() => {
                Ok(payload_of(copy.clone(), self.page_len()))
            }
            _ => Err(Error::Corrupted(why)),
        }
    }

    /// Verifies a sealed page: its trailer, then its CRC against the
    /// manifest (unless it was sealed at or after the manifest's checkpoint
    /// epoch: an interrupted later checkpoint, which replay makes right; the
    /// same rule as the open path's `CrcTable::accepts`).
    fn verify(&self, page: PageId, sealed: &[u8]) -> Result<(), String> {
        let epoch = verify_page(page, sealed)?;
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
        let stored = trailer_crc(sealed, self.page_len());
        match manifest.page_crc(page.get()) {
            Some(expected) if expected != stored && epoch < manifest.checkpoint_epoch => {
                Err(format!(
                    "{page}: CRC {stored:#010x} differs from the manifest's {expected:#010x} \
                     (a stale or misplaced page)"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The page as the image holds it (after replay), unchecked range.
    fn payload(&self, page: PageId) -> Result<Arc<[u8]>> {
        if let Some(image) = self.overlay.get(&page) {
            return Ok(Arc::clone(image));
        }
        if let Some(why) = self.unreplayable.get(&page) {
            return Err(Error::Corrupted(why.clone()));
        }
        if page.get() >= self.header.page_count {
            return Ok(Arc::from(vec![0u8; self.page_len()]));
        }
        self.checkpointed_payload(page).map(Arc::from)
    }

    /// The page whose read came last (where a tree check stopped).
    pub(crate) fn last_read(&self) -> Option<PageId> {
        self.last_read.get()
    }

    pub(crate) fn set_page_count(&mut self, page_count: u64) {
        self.page_count = page_count;
    }
}

impl PageRead for DbImage {
    fn page_len(&self) -> usize {
        DbImage::page_len(self)
    }

    fn read_page(&self, id: PageId) -> Result<PageRef> {
        self.last_read.set(Some(id));
        if id.get() < 2 || id.get() >= self.page_count {
            return Err(Error::PageOutOfRange(id));
        }
        self.payload(id).map(PageRef::new)
    }
}

fn payload_of(mut sealed: Vec<u8>, page_len: usize) -> Vec<u8> {
    sealed.truncate(page_len);
    sealed
}

/// The TLog directory of the data file at `path` (`PATH-tlog`).
pub(crate) fn tlog_dir(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push("-tlog");
    path.with_file_name(name)
}

/// Opens the data file (locked, never written), reads its header, the
/// double-write file and the TLog, and builds the image. `None` when no
/// header slot is valid (recorded as a finding).
pub(crate) fn open_image(
    path: &Path,
    storage: &Arc<dyn Storage>,
    sink: &mut Findings,
    progress: &dyn Fn(CheckProgress),
) -> Result<Option<DbImage>> {
    let file = storage.open_file(path, false).map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            Error::InvalidArgument(format!("{} does not exist", path.display()))
        } else {
            Error::io(format!("open {}", path.display()), err)
        }
    })?;
    if !file
        .try_lock_exclusive()
        .map_err(|err| Error::io("lock data file", err))?
    {
        return Err(Error::DatabaseLocked(path.to_path_buf()));
    }
    let len = file.len().map_err(|err| Error::io("stat data file", err))?;
    if len < u64::from(MIN_PAGE_SIZE) {
        return Err(Error::BadFormat(format!(
            "{} is {len} bytes, shorter than one header page",
            path.display()
        )));
    }
    if !check_header_slots(file.as_ref(), sink)? {
        return Ok(None);
    }
    let (page_file, header) = PageFile::open(Arc::clone(storage), Arc::clone(&file), path)?;
    let dwb = page_file.double_write_pages()?.into_iter().collect();
    // Damage to the manifest itself is reported by `check_manifest`.
    let manifest = CheckpointManifest::read(storage.as_ref(), path)
        .ok()
        .flatten()
        .filter(|m| {
            m.checkpoint_seq == header.checkpoint_seq
                && m.page_size == header.page_size
                && m.page_count == header.page_count
        });
    let mut image = DbImage {
        path: path.to_path_buf(),
        file,
        page_size: header.page_size,
        header,
        page_count: header.page_count,
        dwb,
        manifest,
        overlay: HashMap::new(),
        unreplayable: HashMap::new(),
        tlog: TlogState {
            last_epoch: header.checkpoint_epoch,
            ..TlogState::default()
        },
        last_read: Cell::new(None),
    };
    scan_tlog(&mut image, storage.as_ref(), sink, progress)?;
    Ok(Some(image))
}

/// Records invalid header slots; `false` when neither is valid (or the file
/// is not an mmsb file at all: `BadFormat`).
fn check_header_slots(file: &dyn StorageFile, sink: &mut Findings) -> Result<bool> {
    let slots = inspect_header_slots(file)?;
    let valid = slots.iter().filter(|(_, slot)| slot.is_ok()).count();
    if valid == 0
        && slots
            .iter()
            .all(|(_, s)| matches!(s, Err(r) if r == "bad magic"))
    {
        return Err(Error::BadFormat(format!(
            "{} is not an mmsb database (no header magic)",
            sink.path.display()
        )));
    }
    for (offset, slot) in &slots {
        if let Err(reason) = slot {
            let (severity, tail) = if valid > 0 {
                (Severity::Warning, "; the other slot is used")
            } else {
                (
                    Severity::Error,
                    "; no valid header: nothing else can be checked",
                )
            };
            let location = sink.at_page(Some(PageId(0)), Some(*offset));
            sink.push(
                severity,
                Area::Header,
                location,
                format!("header slot invalid: {reason}{tail}"),
            );
        }
    }
    Ok(valid > 0)
}

/// Verifies every checkpointed data page: its trailer, and its CRC against
/// the manifest when the manifest describes this checkpoint.
fn verify_pages(
    image: &DbImage,
    sink: &mut Findings,
    summary: &mut CheckSummary,
    progress: &dyn Fn(CheckProgress),
) -> Result<()> {
    let total = image.header.page_count;
    for id in 1..total {
        if id % PROGRESS_EVERY_PAGES == 0 {
            progress(CheckProgress {
                phase: CheckPhase::Pages,
                done: id,
                total,
            });
        }
        let page = PageId(id);
        let location = sink.at_page(Some(page), Some(image.offset_of(page)));
        let Some(sealed) = image.read_sealed(page)? else {
            let message = format!(
                "pages {id}..{total} lie past the end of the data file (the checkpoint covers {total} pages)"
            );
            sink.push(Severity::Error, Area::DataPage, location, message);
            summary.pages_damaged += total - id;
            break;
        };
        let Err(why) = image.verify(page, &sealed) else {
            summary.pages_verified += 1;
            continue;
        };
        // A page that verifies on its own but not against the manifest is stale.
        let area = match verify_page(page, &sealed) {
            Ok(_) => Area::Manifest,
            Err(_) => Area::DataPage,
        };
        let why = if sealed.iter().all(|&b| b == 0) {
            format!("{why} (the page is all zeros)")
        } else {
            why
        };
        let repairable = image
            .dwb
            .get(&page)
            .is_some_and(|copy| image.verify(page, copy).is_ok());
        if repairable {
            summary.pages_verified += 1;
            let message =
                format!("{why}; a complete double-write copy repairs it on the next open");
            sink.push(Severity::Warning, area, location, message);
        } else {
            summary.pages_damaged += 1;
            sink.push(Severity::Error, area, location, why);
        }
    }
    progress(CheckProgress {
        phase: CheckPhase::Pages,
        done: total,
        total,
    });
    Ok(())
}

fn trailer_crc(sealed: &[u8], page_len: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&sealed[page_len..page_len + 4]);
    u32::from_le_bytes(word)
}

/// Verifies the checkpoint manifest file (its SHA-256, and that it
/// describes the header's checkpoint). Each page's CRC is compared with it
/// by [`verify_pages`] (through [`DbImage`]).
fn check_manifest(
    image: &DbImage,
    storage: &Arc<dyn Storage>,
    sink: &mut Findings,
    summary: &mut CheckSummary,
) {
    let manifest = match CheckpointManifest::read(storage.as_ref(), &image.path) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => {
            let location = sink.at_page(None, None);
            let message = "no checkpoint manifest: page CRCs checked against their trailers only";
            sink.push(Severity::Info, Area::Manifest, location, message.into());
            return;
        }
        Err(WalError::Corrupted {
            path,
            offset,
            reason,
        }) => {
            let location = Findings::at_file(&path, Some(offset));
            sink.push(Severity::Error, Area::Manifest, location, reason);
            return;
        }
        Err(err) => {
            let location = sink.at_page(None, None);
            let message = format!("cannot read the manifest: {err}");
            sink.push(Severity::Error, Area::Manifest, location, message);
            return;
        }
    };
    summary.manifest_verified = true;
    let header = &image.header;
    if image.manifest.is_none() {
        let manifest_file = mmsb_wal::manifest::manifest_path(&image.path);
        let location = Findings::at_file(&manifest_file, None);
        let message = format!(
            "the manifest describes checkpoint {} ({} pages of {} bytes), the header checkpoint {} \
             ({} pages of {} bytes): a checkpoint was interrupted; page CRCs not compared",
            manifest.checkpoint_seq,
            manifest.page_count,
            manifest.page_size,
            header.checkpoint_seq,
            header.page_count,
            header.page_size
        );
        sink.push(Severity::Warning, Area::Manifest, location, message);
    }
}

/// One TLog segment file.
struct SegmentFile {
    seq: u64,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    len: u64,
}

/// Lists the segment files in log order; records a sequence gap.
fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
    sink: &mut Findings,
) -> Result<Vec<SegmentFile>> {
    let entries = match storage.list_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let location = Findings::at_file(dir, None);
            let message =
                "the TLog directory is missing: commits after the checkpoint, if any, are lost";
            sink.push(Severity::Warning, Area::TLog, location, message.into());
            return Ok(Vec::new());
        }
        Err(err) => return Err(Error::io(format!("list {}", dir.display()), err)),
    };
    let mut listed: Vec<(u64, PathBuf)> = entries
        .into_iter()
        .filter_map(|path| {
            let seq = parse_segment_file_name(path.file_name()?.to_str()?)?;
            Some((seq, path))
        })
        .collect();
    listed.sort();
    let mut segments = Vec::with_capacity(listed.len());
    for (seq, path) in listed {
        if let Some(prev) = segments.last().map(|s: &SegmentFile| s.seq) {
            if prev.checked_add(1) != Some(seq) {
                let location = Findings::at_file(&path, Some(0));
                let message = format!("segment {prev} is followed by {seq}: segments are missing");
                sink.push(Severity::Error, Area::TLog, location, message);
            }
        }
        let file = storage
            .open_file(&path, false)
            .map_err(|err| Error::io(format!("open {}", path.display()), err))?;
        let len = file
            .len()
            .map_err(|err| Error::io(format!("stat {}", path.display()), err))?;
        segments.push(SegmentFile {
            seq,
            path,
            file,
            len,
        });
    }
    Ok(segments)
}

/// Reads `len` bytes at `offset` of a segment.
fn read_at(segment: &SegmentFile, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    segment
        .file
        .read_exact_at(&mut buf, offset)
        .map_err(|err| Error::io(format!("read {}", segment.path.display()), err))?;
    Ok(buf)
}

/// Whether a self-consistent frame of the segment `owner` starts anywhere in
/// `[from, len)` of the segment: if not, damage at `from - 1` is a torn tail
/// (stale frames of a recycled file's earlier life do not count).
fn valid_frame_after(segment: &SegmentFile, owner: &SegmentHeader, from: u64) -> Result<bool> {
    if from >= segment.len {
        return Ok(false);
    }
    let rest = read_at(segment, from, (segment.len - from) as usize)?;
    for start in 0..rest.len() {
        if rest[start..].len() < FRAME_OVERHEAD_BYTES || rest[start..start + 4] != FRAME_MAGIC {
            continue;
        }
        let Ok(header) = decode_frame_header(&rest[start..]) else {
            continue;
        };
        if !header.belongs_to(owner) {
            continue;
        }
        let Some(frame) = rest.get(start..start + header.frame_len()) else {
            continue;
        };
        if frame_crc_matches(frame) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The TLog walk: checks every segment and frame, and replays the intact
/// commits after the checkpoint into the image.
struct TlogScan<'a> {
    image: &'a mut DbImage,
    sink: &'a mut Findings,
    /// Epoch the next frame must exceed.
    floor: CommitEpoch,
    /// Replay stopped at damage.
    replay_stopped: bool,
    bytes_done: u64,
    bytes_total: u64,
}

fn scan_tlog(
    image: &mut DbImage,
    storage: &dyn Storage,
    sink: &mut Findings,
    progress: &dyn Fn(CheckProgress),
) -> Result<()> {
    let dir = tlog_dir(&image.path);
    let segments = list_segments(storage, &dir, sink)?;
    let gaps = sink
        .findings
        .iter()
        .any(|f| f.area == Area::TLog && f.severity == Severity::Error);
    image.tlog.segments = segments.len() as u64;
    let bytes_total = segments.iter().map(|s| s.len).sum();
    let mut scan = TlogScan {
        image,
        sink,
        floor: CommitEpoch::ZERO,
        replay_stopped: gaps,
        bytes_done: 0,
        bytes_total,
    };
    for (index, segment) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        scan.segment(segment, is_last)?;
        scan.bytes_done += segment.len;
        progress(CheckProgress {
            phase: CheckPhase::TLog,
            done: scan.bytes_done,
            total: scan.bytes_total,
        });
    }
    scan.image.tlog.replay_cut = scan.replay_stopped;
    Ok(())
}

impl TlogScan<'_> {
    fn damage(&mut self, segment: &SegmentFile, offset: u64, message: String) {
        let location = Findings::at_file(&segment.path, Some(offset));
        self.sink
            .push(Severity::Error, Area::TLog, location, message);
        self.replay_stopped = true;
    }

    /// What the torn header of `segment` would have said: its file's
    /// number, and a first epoch above every frame before it.
    fn guessed_header(&self, segment: &SegmentFile) -> SegmentHeader {
        SegmentHeader {
            seq: segment.seq,
            first_epoch: CommitEpoch(self.floor.get().saturating_add(1)),
        }
    }

    fn torn(&mut self, segment: &SegmentFile, offset: u64, what: &str) {
        let torn = segment.len - offset;
        self.image.tlog.torn_bytes += torn;
        let location = Findings::at_file(&segment.path, Some(offset));
        let message = format!(
            "torn tail: {torn} bytes of {what} an interrupted write left; cut on the next open (not corruption)"
        );
        self.sink
            .push(Severity::Info, Area::TLog, location, message);
    }

    /// Checks one segment: header, then every frame.
    fn segment(&mut self, segment: &SegmentFile, is_last: bool) -> Result<()> {
        let head_len = segment.len.min(SEGMENT_HEADER_BYTES as u64) as usize;
        let head = read_at(segment, 0, head_len)?;
        let header = match SegmentHeader::decode(&head) {
            Ok(header) => header,
            Err((0, _))
                if is_last && !valid_frame_after(segment, &self.guessed_header(segment), 1)? =>
            {
                self.torn(segment, 0, "segment header");
                return Ok(());
            }
            Err((offset, reason)) => {
                self.damage(segment, offset, format!("segment header: {reason}"));
                return Ok(());
            }
        };
        if header.seq != segment.seq {
            let message = format!(
                "header names segment {} but the file is segment {}",
                header.seq, segment.seq
            );
            self.damage(segment, 12, message);
        }
        if header.first_epoch <= self.floor {
            let message = format!(
                "first {} does not follow {}",
                header.first_epoch, self.floor
            );
            self.damage(segment, 20, message);
        }
        let frames = self.frames(segment, &header, is_last)?;
        if frames == 0 && !is_last {
            let message = "a segment before the last holds no frame".to_string();
            self.damage(segment, SEGMENT_HEADER_BYTES as u64, message);
        }
        Ok(())
    }

    /// Checks the frames of a segment; returns how many checked out.
    fn frames(
        &mut self,
        segment: &SegmentFile,
        header: &SegmentHeader,
        is_last: bool,
    ) -> Result<u64> {
        let mut offset = SEGMENT_HEADER_BYTES as u64;
        let mut frames = 0u64;
        while offset < segment.len {
            match self.frame_at(segment, offset, header, frames == 0)? {
                Ok(next) => {
                    frames += 1;
                    offset = next;
                }
                Err(reason) => {
                    if is_last && !valid_frame_after(segment, header, offset + 1)? {
                        // Zeros or a stale frame past the log: preallocated
                        // or recycled space, the log's clean end.
                        let rest = read_at(segment, offset, (segment.len - offset) as usize)?;
                        if !is_clean_end(&rest, header) {
                            self.torn(segment, offset, "frame");
                        }
                    } else {
                        self.damage(segment, offset, reason);
                    }
                    break;
                }
            }
        }
        Ok(frames)
    }

    /// Reads and checks the frame at `offset`: `Ok(Ok(next offset))`, or
    /// `Ok(Err(reason))` when the bytes there are not a valid frame.
    fn frame_at(
        &mut self,
        segment: &SegmentFile,
        offset: u64,
        header: &SegmentHeader,
        first: bool,
    ) -> Result<Result<u64, String>> {
        let left = segment.len - offset;
        if left < FRAME_OVERHEAD_BYTES as u64 {
            return Ok(Err(format!("frame truncated: {left} bytes left")));
        }
        let head = read_at(segment, offset, FRAME_HEADER_BYTES)?;
        let frame_header = match decode_frame_header(&head) {
            Ok(h) => h,
            Err(reason) => return Ok(Err(reason)),
        };
        if !frame_header.belongs_to(header) {
            return Ok(Err(format!(
                "frame of {} with segment tag {:#08x} is not part of this segment (tag {:#08x})",
                frame_header.epoch,
                frame_header.segment_tag,
                header.tag()
            )));
        }
        let frame_len = frame_header.frame_len() as u64;
        if frame_len > left {
            return Ok(Err(format!(
                "frame of {frame_len} bytes runs past the end ({left} bytes left)"
            )));
        }
        let frame = read_at(segment, offset, frame_len as usize)?;
        if !frame_crc_matches(&frame) {
            return Ok(Err("frame CRC mismatch".into()));
        }
        let epoch = frame_header.epoch;
        if (first && epoch != header.first_epoch) || epoch <= self.floor {
            return Ok(Err(format!(
                "frame {epoch} out of order (after {}, segment starts at {})",
                self.floor, header.first_epoch
            )));
        }
        self.floor = epoch;
        self.image.tlog.frames += 1;
        let payload = &frame[FRAME_HEADER_BYTES..frame.len() - 4];
        self.replay(segment, offset, epoch, payload)?;
        Ok(Ok(offset + frame_len))
    }

    /// Applies one intact commit after the checkpoint to the image.
    fn replay(
        &mut self,
        segment: &SegmentFile,
        offset: u64,
        epoch: CommitEpoch,
        payload: &[u8],
    ) -> Result<()> {
        if self.replay_stopped || epoch <= self.image.header.checkpoint_epoch {
            return Ok(());
        }
        let expected = self.image.tlog.last_epoch.checked_next();
        if Some(epoch) != expected {
            let message = format!(
                "the TLog jumps from {} to {epoch}: commits are missing",
                self.image.tlog.last_epoch
            );
            self.damage(segment, offset, message);
            return Ok(());
        }
        let record = match CommitRecord::decode(payload, self.image.page_len()) {
            Ok(record) => record,
            Err(err) => {
                self.damage(segment, offset, format!("commit record of {epoch}: {err}"));
                return Ok(());
            }
        };
        for delta in record.deltas {
            if let Err(message) = self.apply(&delta)? {
                self.damage(segment, offset, format!("commit {epoch}: {message}"));
                return Ok(());
            }
        }
        self.image.tlog.last_epoch = epoch;
        Ok(())
    }

    /// Applies one delta; `Ok(Err(why))` when the delta itself is invalid.
    fn apply(&mut self, delta: &mmsb_wal::Delta) -> Result<Result<(), String>> {
        let page = delta.page_id();
        if page.get() == 0 {
            return Ok(Err("a delta targets the header page".into()));
        }
        if self.image.unreplayable.contains_key(&page) {
            return Ok(Ok(()));
        }
        let mut bytes = match self.image.overlay.remove(&page) {
            Some(image) => image.to_vec(),
            None => match self.image.payload(page) {
                Ok(image) => image.to_vec(),
                Err(err) if err.is_corruption() => {
                    let why = format!(
                        "{page} cannot be replayed: its checkpointed image is damaged ({err})"
                    );
                    self.image.unreplayable.insert(page, why);
                    return Ok(Ok(()));
                }
                Err(err) => return Err(err),
            },
        };
        if let Err(err) = delta.apply(&mut bytes) {
            return Ok(Err(format!("delta of {page}: {err}")));
        }
        self.image.overlay.insert(page, Arc::from(bytes));
        Ok(Ok(()))
    }
}

/// Reads and decodes the meta page of the image, recording why not.
pub(crate) fn read_meta(image: &DbImage, sink: &mut Findings) -> Option<Meta> {
    let meta = image
        .payload(META_PAGE)
        .and_then(|page| Meta::decode(&page));
    match meta {
        Ok(meta) if meta.page_count >= image.header.page_count => Some(meta),
        Ok(meta) => {
            let location = sink.at_page(Some(META_PAGE), Some(image.offset_of(META_PAGE)));
            let message = format!(
                "the meta page counts {} pages, fewer than the {} the checkpoint wrote",
                meta.page_count, image.header.page_count
            );
            sink.push(Severity::Error, Area::Meta, location, message);
            None
        }
        Err(err) => {
            let location = sink.at_page(Some(META_PAGE), Some(image.offset_of(META_PAGE)));
            let message = format!("{err}: no table, tree or free list can be checked");
            sink.push(Severity::Error, Area::Meta, location, message);
            None
        }
    }
}

/// Who owns each page, for the free-list and leak checks.
struct Owners {
    /// Index = page id; 0 = nobody, `FREE`, or 1 + tree index.
    owner: Vec<u32>,
    /// Tree names (`None` = the catalog).
    trees: Vec<Option<String>>,
}

const FREE: u32 = u32::MAX;

impl Owners {
    fn tree_name(&self, owner: u32) -> String {
        match self.trees.get(owner as usize - 1) {
            Some(Some(name)) => format!("table {name:?}"),
            _ => "the catalog".to_string(),
        }
    }
}

/// Checks the meta page, the catalog, every tree and the free list.
fn check_structure(
    image: &mut DbImage,
    sink: &mut Findings,
    summary: &mut CheckSummary,
    progress: &dyn Fn(CheckProgress),
) -> Result<()> {
    let Some(meta) = read_meta(image, sink) else {
        return Ok(());
    };
    image.set_page_count(meta.page_count);
    summary.page_count = meta.page_count;
    // The count comes from the meta page: reserve fallibly, so an absurd
    // count is a finding, not an aborted process.
    let mut owner = Vec::new();
    let reserved = usize::try_from(meta.page_count)
        .ok()
        .filter(|&len| owner.try_reserve_exact(len).is_ok());
    let Some(owner_len) = reserved else {
        let location = sink.at_page(Some(META_PAGE), Some(image.offset_of(META_PAGE)));
        let message = format!(
            "the meta page counts {} pages, more than a page map can be made for: \
             no table, tree or free list can be checked",
            meta.page_count
        );
        sink.push(Severity::Error, Area::Meta, location, message);
        return Ok(());
    };
    owner.resize(owner_len, 0u32);
    let mut owners = Owners {
        owner,
        trees: Vec::new(),
    };
    let (tables, catalog_intact) = check_catalog(image, &meta, &mut owners, sink)?;
    summary.tables = tables.len() as u64;
    let total = tables.len() as u64 + 1;
    let mut trees_intact = catalog_intact;
    for (done, (name, entry)) in tables.iter().enumerate() {
        progress(CheckProgress {
            phase: CheckPhase::Trees,
            done: done as u64 + 1,
            total,
        });
        summary.entries += entry.tree.len;
        trees_intact &= check_one_tree(image, Some(name), &entry.tree, &mut owners, sink)?;
    }
    progress(CheckProgress {
        phase: CheckPhase::Trees,
        done: total,
        total,
    });
    summary.tree_pages = owners
        .owner
        .iter()
        .filter(|&&o| o != 0 && o != FREE)
        .count() as u64;
    let free_intact = check_free_list(image, &meta, &mut owners, sink, summary)?;
    if trees_intact && free_intact {
        report_leaks(image, &owners, sink, summary);
    } else {
        let location = sink.at_page(None, None);
        let message = "leak check skipped: damaged trees or free list hide which pages are owned";
        sink.push(Severity::Info, Area::Leak, location, message.into());
    }
    Ok(())
}

/// Checks the catalog tree; returns the tables it could read and whether it
/// is intact.
fn check_catalog(
    image: &DbImage,
    meta: &Meta,
    owners: &mut Owners,
    sink: &mut Findings,
) -> Result<(Vec<(String, TableEntry)>, bool)> {
    let intact = check_one_tree(image, None, &meta.catalog, owners, sink)?;
    let mut tables = Vec::new();
    let mut bad_entries = Vec::new();
    btree::walk_tolerant(image, &meta.catalog, &mut |name, value| {
        let decoded = std::str::from_utf8(name)
            .map_err(|_| "the name is not UTF-8".to_string())
            .and_then(|text| {
                catalog::decode_entry(value)
                    .map(|entry| (text.to_string(), entry))
                    .map_err(|err| err.to_string())
            });
        match decoded {
            Ok(table) => tables.push(table),
            Err(why) => bad_entries.push(format!("{:?}: {why}", String::from_utf8_lossy(name))),
        }
        Ok(())
    })?;
    for bad in &bad_entries {
        let location = sink.at_page(None, None);
        sink.push(
            Severity::Error,
            Area::Catalog,
            location,
            format!("unreadable catalog entry {bad}"),
        );
    }
    Ok((tables, intact && bad_entries.is_empty()))
}

/// Checks one tree's invariants and records the pages it reaches; `true`
/// when it is intact. `name` is `None` for the catalog.
fn check_one_tree(
    image: &DbImage,
    name: Option<&str>,
    tree: &TreeHeader,
    owners: &mut Owners,
    sink: &mut Findings,
) -> Result<bool> {
    let area = if name.is_some() {
        Area::Tree
    } else {
        Area::Catalog
    };
    let location_of = |page: Option<PageId>, sink: &Findings| Location {
        offset: page
            .filter(|p| p.get() < image.header.page_count)
            .map(|p| image.offset_of(p)),
        table: name.map(str::to_string),
        ..sink.at_page(page, None)
    };
    let mut intact = true;
    if let Err(err) = btree::check_tree(image, tree) {
        if !err.is_corruption() && !matches!(err, Error::PageOutOfRange(_)) {
            return Err(err);
        }
        intact = false;
        let location = location_of(image.last_read(), sink);
        sink.push(Severity::Error, area, location, err.to_string());
    }
    owners.trees.push(name.map(str::to_string));
    let me = owners.trees.len() as u32;
    let outcome = btree::walk_tolerant(image, tree, &mut |_, _| Ok(()))?;
    for page in outcome.reached {
        let Some(current) = owners.owner.get(page.get() as usize).copied() else {
            continue;
        };
        if current != 0 && current != me {
            let other = owners.tree_name(current);
            let location = location_of(Some(page), sink);
            let message = format!("{page} is owned by two trees (also by {other})");
            sink.push(Severity::Error, area, location, message);
            intact = false;
        }
        owners.owner[page.get() as usize] = me;
    }
    if intact && !outcome.lost.is_empty() {
        // check_tree passed but the walk lost pages: cannot happen with
        // intact pages; report rather than trust either.
        for lost in &outcome.lost {
            let location = location_of(Some(lost.page), sink);
            sink.push(Severity::Error, area, location, lost.reason.clone());
        }
        intact = false;
    }
    Ok(intact)
}

/// Walks the free list; `true` when it is intact.
fn check_free_list(
    image: &DbImage,
    meta: &Meta,
    owners: &mut Owners,
    sink: &mut Findings,
    summary: &mut CheckSummary,
) -> Result<bool> {
    let mut prev: Option<PageId> = None;
    let mut next = meta.free_head;
    let mut count = 0u64;
    let mut problem: Option<(PageId, String)> = None;
    while next.get() != 0 {
        let at = prev.unwrap_or(META_PAGE);
        if next.get() < 2 || next.get() >= meta.page_count {
            problem = Some((
                at,
                format!(
                    "links to {next}, outside the data pages 2..{}",
                    meta.page_count
                ),
            ));
            break;
        }
        match owners.owner[next.get() as usize] {
            0 => {}
            FREE => {
                problem = Some((
                    at,
                    format!("links back to {next}: the free list has a cycle"),
                ));
                break;
            }
            tree => {
                let message = format!(
                    "{next} is on the free list and owned by {}",
                    owners.tree_name(tree)
                );
                problem = Some((next, message));
                break;
            }
        }
        owners.owner[next.get() as usize] = FREE;
        count += 1;
        let page = match image.read_page(next) {
            Ok(page) => page,
            Err(err) if err.is_corruption() => {
                problem = Some((next, format!("free page unreadable: {err}")));
                break;
            }
            Err(err) => return Err(err),
        };
        prev = Some(next);
        next = free_link(&page);
    }
    summary.free_pages = count;
    if let Some((page, message)) = problem {
        let offset = (page.get() < image.header.page_count).then(|| image.offset_of(page));
        let location = sink.at_page(Some(page), offset);
        sink.push(Severity::Error, Area::FreeList, location, message);
        return Ok(false);
    }
    if count != meta.free_count {
        let location = sink.at_page(Some(META_PAGE), Some(image.offset_of(META_PAGE)));
        let message = format!(
            "the meta page counts {} free pages, the list holds {count}",
            meta.free_count
        );
        sink.push(Severity::Error, Area::FreeList, location, message);
        return Ok(false);
    }
    Ok(true)
}

/// Reports pages neither owned by a tree nor free, as warnings.
fn report_leaks(image: &DbImage, owners: &Owners, sink: &mut Findings, summary: &mut CheckSummary) {
    let leaked: Vec<PageId> = (2..owners.owner.len())
        .filter(|&id| owners.owner[id] == 0)
        .map(|id| PageId(id as u64))
        .collect();
    summary.leaked_pages = leaked.len() as u64;
    for &page in leaked.iter().take(MAX_LISTED_LEAKS) {
        let offset = (page.get() < image.header.page_count).then(|| image.offset_of(page));
        let location = sink.at_page(Some(page), offset);
        let message = format!(
            "{page} is neither owned by a tree nor free (leaked, or allocated through the raw page API)"
        );
        sink.push(Severity::Warning, Area::Leak, location, message);
    }
    if leaked.len() > MAX_LISTED_LEAKS {
        let location = sink.at_page(None, None);
        let message = format!("{} more leaked pages", leaked.len() - MAX_LISTED_LEAKS);
        sink.push(Severity::Warning, Area::Leak, location, message);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use mmsb_wal::storage::MemStorage;

    use super::*;
    use crate::db::Options;

    fn path() -> PathBuf {
        PathBuf::from("/db/check.mmsb")
    }

    fn options(storage: &MemStorage) -> Options {
        Options {
            storage: Arc::new(storage.clone()),
            background_workers: false,
            checkpoint_on_close: false,
            tlog_segment_bytes: 2048,
            ..Options::default()
        }
    }

    /// One row per commit in table `t`; a checkpoint after `checkpointed`.
    fn build(checkpointed: u64, logged: u64) -> MemStorage {
        let storage = MemStorage::new();
        let db = options(&storage).open(path()).expect("open");
        for i in 0..checkpointed + logged {
            if i == checkpointed {
                db.checkpoint().expect("checkpoint");
            }
            let mut tx = db.begin_write().expect("begin");
            let key = format!("row{i:04}");
            tx.open_table("t")
                .expect("t")
                .insert(key.as_bytes(), &[7u8; 100])
                .expect("insert");
            tx.commit().expect("commit");
        }
        drop(db);
        storage
    }

    fn check(storage: &MemStorage) -> CheckReport {
        let options = CheckOptions {
            storage: Arc::new(storage.clone()),
            progress: None,
        };
        check_database(path(), &options).expect("check runs")
    }

    /// The segment holding the frame of `epoch`, and the frame's offset.
    fn find_frame(storage: &MemStorage, epoch: u64) -> (PathBuf, usize) {
        let dir = tlog_dir(&path());
        for seg in storage.list_dir(&dir).expect("list") {
            let Some(bytes) = storage.file_bytes(&seg) else {
                continue;
            };
            let mut at = SEGMENT_HEADER_BYTES;
            while let Ok(header) = decode_frame_header(bytes.get(at..).unwrap_or_default()) {
                if header.epoch.get() == epoch {
                    return (seg, at);
                }
                at += header.frame_len();
            }
        }
        panic!("no frame of epoch {epoch}");
    }

    #[test]
    fn damage_inside_the_tlog_stops_the_replay_before_it() {
        let storage = build(10, 20);
        assert!(check(&storage).is_clean());
        let (segment, at) = find_frame(&storage, 20);
        let mut bytes = storage.file_bytes(&segment).expect("segment");
        bytes[at + FRAME_HEADER_BYTES + 3] ^= 0x80;
        storage.set_file_bytes(&segment, bytes);
        let report = check(&storage);
        let errors: Vec<&Finding> = report.at_least(Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{report:#?}");
        assert_eq!(errors[0].area, Area::TLog);
        assert_eq!(errors[0].location.file, segment);
        assert_eq!(errors[0].location.offset, Some(at as u64));
        assert_eq!(report.summary.last_epoch, CommitEpoch(19));
        assert_eq!(
            report.summary.entries, 19,
            "trees as of the last intact commit"
        );
    }

    #[test]
    fn one_bad_header_slot_is_a_warning_two_stop_the_check() {
        let storage = build(3, 0);
        let mut bytes = storage.file_bytes(&path()).expect("data file");
        bytes[512 + 20] ^= 1;
        storage.set_file_bytes(&path(), bytes.clone());
        let report = check(&storage);
        assert!(report.is_clean());
        let warning = &report.findings[0];
        assert_eq!(
            (warning.severity, warning.area),
            (Severity::Warning, Area::Header)
        );
        assert_eq!(warning.location.offset, Some(512));
        bytes[20] ^= 1;
        storage.set_file_bytes(&path(), bytes);
        let report = check(&storage);
        assert_eq!(report.summary.errors, 2, "{:#?}", report.findings);
        assert_eq!(
            report.summary.tables, 0,
            "nothing past the header is checked"
        );
    }

    #[test]
    fn a_free_link_out_of_range_is_reported() {
        let storage = MemStorage::new();
        {
            let db = options(&storage).open(path()).expect("open");
            let mut tx = db.begin_write().expect("begin");
            tx.open_table("gone")
                .expect("t")
                .insert(b"k", &[1; 3000])
                .expect("insert");
            tx.commit().expect("commit");
            let mut tx = db.begin_write().expect("begin");
            tx.delete_table("gone").expect("drop");
            tx.commit().expect("commit");
            db.checkpoint().expect("checkpoint");
        }
        let _ = storage.remove_file(Path::new("/db/check.mmsb-dwb"));
        let report = check(&storage);
        assert!(report.is_clean(), "{:#?}", report.findings);
        assert!(report.summary.free_pages > 0);
        let mut bytes = storage.file_bytes(&path()).expect("data file");
        let page_size = report.summary.page_size as usize;
        let head = u64::from_le_bytes(bytes[page_size + 16..page_size + 24].try_into().expect("8"));
        let at = head as usize * page_size;
        bytes[at..at + 8].copy_from_slice(&999u64.to_le_bytes());
        let mut payload = bytes[at..at + page_size - PAGE_TRAILER_LEN].to_vec();
        payload.truncate(page_size - PAGE_TRAILER_LEN);
        let epoch = CommitEpoch(u64::from_le_bytes(
            bytes[at + page_size - 8..at + page_size]
                .try_into()
                .expect("8"),
        ));
        crate::page_file::seal_page(
            PageId(head),
            &payload,
            epoch,
            &mut bytes[at..at + page_size],
        );
        // As if a consistent but wrong write went through the normal path:
        // the manifest agrees with the page.
        let mut manifest = CheckpointManifest::read(&storage, &path())
            .expect("read")
            .expect("a manifest");
        let sealed = &bytes[at..at + page_size];
        manifest.page_crcs[head as usize - 1] = trailer_crc(sealed, page_size - PAGE_TRAILER_LEN);
        manifest
            .write_atomically(&storage, &path())
            .expect("write manifest");
        storage.set_file_bytes(&path(), bytes);
        let report = check(&storage);
        let error = report.at_least(Severity::Error).next().expect("an error");
        assert_eq!(error.area, Area::FreeList, "{error}");
        assert_eq!(error.location.page, Some(PageId(head)));
        assert!(error.message.contains("page 999"), "{error}");
    }

    #[test]
    fn progress_reaches_every_total() {
        let storage = build(5, 5);
        let seen = RefCell::new(Vec::new());
        let record = |p: CheckProgress| seen.borrow_mut().push(p);
        let options = CheckOptions {
            storage: Arc::new(storage.clone()),
            progress: Some(&record),
        };
        assert!(check_database(path(), &options).expect("check").is_clean());
        let seen = seen.into_inner();
        for phase in [CheckPhase::Pages, CheckPhase::TLog, CheckPhase::Trees] {
            let last = seen
                .iter()
                .rev()
                .find(|p| p.phase == phase)
                .expect("phase reported");
            assert_eq!(last.done, last.total, "{phase:?}");
        }
    }

    #[test]
    fn a_missing_or_foreign_file_cannot_be_checked() {
        let storage = MemStorage::new();
        let options = CheckOptions {
            storage: Arc::new(storage.clone()),
            progress: None,
        };
        assert!(matches!(
            check_database(path(), &options),
            Err(Error::InvalidArgument(_))
        ));
        let file = storage.open_file(&path(), true).expect("create");
        file.write_all_at(&[b'x'; 8192], 0).expect("write");
        assert!(matches!(
            check_database(path(), &options),
            Err(Error::BadFormat(_))
        ));
    }
}
