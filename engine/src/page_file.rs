//! The data file: a header page and fixed-size data pages, each page sealed
//! by a trailer with a CRC32, plus the double-write file that makes in-place
//! write-back safe against torn pages.
//!
//! Layout (see docs/format.md for every byte):
//! - page 0 holds two header slots (at byte 0 and byte 512); a checkpoint
//!   writes the slot its sequence number selects, so a torn header write
//!   leaves the other slot, the previous checkpoint, intact;
//! - pages 1.. are data pages: `page_len` payload bytes then a 16-byte trailer
//!   `[crc32 u32][trailer magic u32][write epoch u64]`. The CRC covers the page
//!   id, the payload, the magic and the epoch, so a page written to the wrong
//!   place, a zeroed page and a flipped bit are all detected.
//!
//! It also keeps the in-memory table of every page's trailer CRC (4 bytes a
//! page) that the checkpoint manifest persists: every write updates it, and
//! every read checks the page against it, so a page that verifies on its own
//! but is not the image last written there (a lost or misdirected write) is
//! caught too.
//!
//! This module knows nothing of transactions, versions or the TLog.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mmsb_wal::storage::{Storage, StorageFile};
use mmsb_wal::{CommitEpoch, PageId};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::alloc::{PageFrame, PageFramePool, PoolConfig};
use crate::error::{Error, Result};

/// Magic at the start of each header slot.
pub const HEADER_MAGIC: [u8; 8] = *b"MMSBDB\x00\x01";
/// Version of the data file format described in docs/format.md.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the trailer that ends every data page.
pub const PAGE_TRAILER_LEN: usize = 16;
/// Smallest supported page size.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// Largest supported page size.
pub const MAX_PAGE_SIZE: u32 = 64 * 1024;
/// Default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// Offset of each header slot inside page 0.
const HEADER_SLOT_OFFSETS: [u64; 2] = [0, 512];
/// Bytes of one encoded header slot.
const HEADER_SLOT_LEN: usize = 64;
/// Marks a sealed page trailer.
const TRAILER_MAGIC: u32 = 0x5041_4745; // "PAGE"
/// Mixed into every page CRC so that an all-zero page never checks out.
const PAGE_CRC_SEED: u32 = 0x6d6d_7362; // "mmsb"
/// Most pages past the end of the data file that rebuilding the CRC table
/// records as damaged one by one; a header claiming more is refused.
const REBUILD_MISSING_PAGES_MAX: u64 = 1 << 20;
/// Magic at the start of the double-write file.
const DWB_MAGIC: [u8; 8] = *b"MMSBDWB1";
/// Bytes of the double-write file header.
const DWB_HEADER_LEN: usize = 32;
/// Largest double-write file kept once the in-place writes it protected
/// are synced ([`PageFile::retire_double_write`]): a
/// few pages stay to repair later damage to them, a checkpoint chunk of
/// thousands does not stay on disk as megabytes of copies no recovery needs.
pub const DOUBLE_WRITE_RETAINED_MAX_BYTES: u64 = 1 << 20;

/// One header slot: what the last completed checkpoint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Bytes per page, a power of two in [`MIN_PAGE_SIZE`], [`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// Counts checkpoints; selects the slot (`seq % 2`).
    pub checkpoint_seq: u64,
    /// Every commit up to this epoch is in the data pages.
    pub checkpoint_epoch: CommitEpoch,
    /// Pages `0..page_count` hold sealed pages; pages past it are not yet
    /// part of the database on disk and read as zeros during recovery.
    pub page_count: u64,
}

impl FileHeader {
    fn encode(&self) -> [u8; HEADER_SLOT_LEN] {
        let mut slot = [0u8; HEADER_SLOT_LEN];
        slot[0..8].copy_from_slice(&HEADER_MAGIC);
        slot[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        slot[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        slot[16..24].copy_from_slice(&self.checkpoint_seq.to_le_bytes());
        slot[24..32].copy_from_slice(&self.checkpoint_epoch.get().to_le_bytes());
        slot[32..40].copy_from_slice(&self.page_count.to_le_bytes());
        let crc = crc32fast::hash(&slot[..60]);
        slot[60..64].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    /// Decodes a slot; `Err` carries why it is not valid.
    fn decode(slot: &[u8; HEADER_SLOT_LEN]) -> Result<FileHeader, String> {
        if slot[0..8] != HEADER_MAGIC {
            return Err("bad magic".into());
        }
        let stored_crc = read_u32(slot, 60);
        if crc32fast::hash(&slot[..60]) != stored_crc {
            return Err("header checksum mismatch".into());
        }
        let version = read_u32(slot, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        let header = FileHeader {
            page_size: read_u32(slot, 12),
            checkpoint_seq: read_u64(slot, 16),
            checkpoint_epoch: CommitEpoch(read_u64(slot, 24)),
            page_count: read_u64(slot, 32),
        };
        validate_page_size(header.page_size).map_err(|err| err.to_string())?;
        if header.page_count < 2 {
            return Err(format!(
                "page count {} below the minimum of 2",
                header.page_count
            ));
        }
        Ok(header)
    }
}

/// Checks that `page_size` is a supported power of two.
pub fn validate_page_size(page_size: u32) -> Result<()> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(Error::InvalidArgument(format!(
            "page size {page_size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// CRC of a page as stored in its trailer.
fn page_crc(page_id: PageId, payload: &[u8], epoch: CommitEpoch) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(PAGE_CRC_SEED);
    hasher.update(&page_id.get().to_le_bytes());
    hasher.update(payload);
    hasher.update(&TRAILER_MAGIC.to_le_bytes());
    hasher.update(&epoch.get().to_le_bytes());
    hasher.finalize()
}

/// Writes `payload` and a sealed trailer into `out` (one whole page).
pub fn seal_page(page_id: PageId, payload: &[u8], epoch: CommitEpoch, out: &mut [u8]) {
    let page_len = out.len() - PAGE_TRAILER_LEN;
    assert_eq!(payload.len(), page_len, "payload must fill the page");
    out[..page_len].copy_from_slice(payload);
    let crc = page_crc(page_id, payload, epoch);
    out[page_len..page_len + 4].copy_from_slice(&crc.to_le_bytes());
    out[page_len + 4..page_len + 8].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
    out[page_len + 8..page_len + 16].copy_from_slice(&epoch.get().to_le_bytes());
}

/// Checks a whole sealed page; returns the epoch it was written at.
pub fn verify_page(page_id: PageId, page: &[u8]) -> Result<CommitEpoch, String> {
    let Some(page_len) = page.len().checked_sub(PAGE_TRAILER_LEN) else {
        return Err(format!(
            "{page_id}: {} bytes cannot hold a {PAGE_TRAILER_LEN}-byte page trailer",
            page.len()
        ));
    };
    let stored_crc = read_u32(page, page_len);
    let magic = read_u32(page, page_len + 4);
    let epoch = CommitEpoch(read_u64(page, page_len + 8));
    if magic != TRAILER_MAGIC {
        return Err(format!("{page_id}: trailer magic {magic:#010x} is wrong"));
    }
    if page_crc(page_id, &page[..page_len], epoch) != stored_crc {
        return Err(format!("{page_id}: checksum mismatch"));
    }
    Ok(epoch)
}

/// The data file and its double-write companion.
#[derive(Debug)]
pub struct PageFile {
    file: Arc<dyn StorageFile>,
    storage: Arc<dyn Storage>,
    dwb_path: PathBuf,
    dir: PathBuf,
    page_size: u32,
    crcs: RwLock<CrcTable>,
    /// Held by a reader waiting for in-place writes to end, and by a writer
    /// to wake it ([`PageFile::end_in_place_write`]).
    write_end_lock: Mutex<()>,
    /// Signalled each time an in-place write ends.
    write_ended: Condvar,
    /// Scratch frames for reads and write-back (see [`SCRATCH_FRAMES_BYTES_MAX`]).
    frames: PageFramePool,
    /// Whether this page file synced the directory after writing the
    /// double-write file (its entry is durable from then on, until the file
    /// goes missing).
    dwb_dir_synced: AtomicBool,
}

/// Times a page read that fails verification is read again because
/// in-place writes ran during it (the bytes may have been changing under
/// the read: a checkpoint writing that page back). A page that still fails,
/// or fails while no write ran, is corrupt.
const TORN_READ_RETRIES_MAX: u32 = 16;

/// Longest a read that met a torn page waits for the in-place writes in
/// flight to end before it gives up with an I/O error (a write that hangs
/// this long is a storage fault, not corruption).
const IN_PLACE_WRITE_WAIT_MS_MAX: u64 = 10_000;

/// The most memory the page file's scratch frame pool keeps (read buffers,
/// checkpoint write-back buffers); past it, scratch frames come from the heap.
pub const SCRATCH_FRAMES_BYTES_MAX: usize = 16 << 20;

/// Longest in-place write a checkpoint issues: a run of consecutive pages
/// is written with one `pwrite` of at most this many bytes (256 pages of
/// 4 KiB), so the per-call costs of a write (the system call, the CRC
/// table's lock pair, the file system's per-write work) are paid once per
/// run rather than once per page, while a read that meets a page being
/// written waits for at most this much to land.
pub const IN_PLACE_RUN_MAX_BYTES: usize = 1 << 20;

/// Frames per thread-cache magazine of the scratch pool: a reader uses one
/// frame at a time, so each thread keeps at most 16 idle (64 KiB at 4 KiB).
const SCRATCH_MAGAZINE_FRAMES: usize = 8;

/// Trailer CRC of every page as last written, and the epoch up to which the
/// table is authoritative.
#[derive(Debug, Default)]
struct CrcTable {
    /// `crcs[i]` belongs to page `i + 1`; pages past the end, and entries
    /// of [`UNKNOWN_CRC`], are checked against their own trailer only.
    crcs: Vec<u32>,
    /// A page sealed at this epoch or a later one is accepted even when
    /// its CRC differs: a checkpoint that never completed before a crash
    /// wrote it, and replay from the header's epoch makes it right. The
    /// epoch itself is included because a checkpoint's epoch need not move:
    /// one that runs while the only dirty pages hold commits not yet visible
    /// checkpoints at the epoch of the one before, and seals the pages it
    /// rewrites (their images as of that epoch, or, in a replay checkpoint,
    /// with part of the next commit) at that epoch. A lost write leaves an
    /// image sealed by an earlier checkpoint, still rejected.
    trusted_through: CommitEpoch,
    /// Counts the starts and ends of in-place writes
    /// ([`CrcTable::record_write`], [`CrcTable::finish_write`]). A reader
    /// records the CRC of the bytes it read only when no write was in
    /// flight, began or ended since before it read them: otherwise its
    /// (older) image could replace the CRC of the write that followed, and
    /// the next manifest would call that write lost.
    writes: u64,
    /// In-place writes recorded whose bytes may not be in place yet.
    writes_in_flight: u64,
}

/// A CRC table entry that says nothing (a page never written through this
/// table, or one that was damaged when the table was rebuilt). A page whose
/// real CRC is 0 (one in 2^32) is thereby checked by its trailer alone.
pub const UNKNOWN_CRC: u32 = 0;

impl CrcTable {
    fn slot(page_id: PageId) -> Option<usize> {
        usize::try_from(page_id.get().checked_sub(1)?).ok()
    }

    /// Whether a self-consistent page with this CRC and epoch is the image
    /// the table expects; `Err` says why not.
    fn accepts(&self, page_id: PageId, crc: u32, epoch: CommitEpoch) -> Result<(), String> {
        match self.expected(page_id) {
            Some(expected)
                if expected != UNKNOWN_CRC && expected != crc && epoch < self.trusted_through =>
            {
                Err(format!(
                    "{page_id} holds CRC {crc:#010x} sealed at {epoch}, \
                 the manifest expects {expected:#010x} (a lost or misplaced write)"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The CRC the table holds for `page_id`, if it covers it.
    fn expected(&self, page_id: PageId) -> Option<u32> {
        Self::slot(page_id).and_then(|slot| self.crcs.get(slot).copied())
    }

    /// Records the CRC of a page about to be written in place; call
    /// [`CrcTable::finish_write`] once the write returned.
    fn record_write(&mut self, page_id: PageId, crc: u32) {
        self.record_run_write(page_id, std::iter::once(crc));
    }

    /// Records the CRCs of consecutive pages from `first` about to be
    /// written in place by one write (one write in flight, however many
    /// pages); call [`CrcTable::finish_write`] once it returned.
    fn record_run_write(&mut self, first: PageId, crcs: impl Iterator<Item = u32>) {
        self.writes = self.writes.wrapping_add(1);
        self.writes_in_flight += 1;
        for (index, crc) in (0u64..).zip(crcs) {
            self.record(PageId(first.get() + index), crc);
        }
    }

    /// Counts the end of a write [`CrcTable::record_write`] began.
    fn finish_write(&mut self) {
        debug_assert!(self.writes_in_flight > 0, "a write finished twice");
        self.writes = self.writes.wrapping_add(1);
        self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
    }

    /// The token a reader takes before it reads page bytes: `None` while a
    /// write is in flight (the bytes may be changing).
    fn read_token(&self) -> Option<u64> {
        (self.writes_in_flight == 0).then_some(self.writes)
    }

    fn record(&mut self, page_id: PageId, crc: u32) {
        if let Some(slot) = Self::slot(page_id) {
            if self.crcs.len() <= slot {
                self.crcs.resize(slot + 1, UNKNOWN_CRC);
            }
            self.crcs[slot] = crc;
        }
    }
}

/// The stored trailer CRC of a sealed page.
pub fn sealed_crc(page: &[u8]) -> u32 {
    read_u32(page, page.len() - PAGE_TRAILER_LEN)
}

impl PageFile {
    /// Creates a new data file with an empty header at epoch 0 and `meta`
    /// (page 1) sealed. The file must be empty.
    pub fn create(
        storage: Arc<dyn Storage>,
        file: Arc<dyn StorageFile>,
        path: &Path,
        page_size: u32,
        meta: &[u8],
    ) -> Result<(PageFile, FileHeader)> {
        validate_page_size(page_size)?;
        let page_file = PageFile::new(storage, file, path, page_size)?;
        let header = FileHeader {
            page_size,
            checkpoint_seq: 0,
            checkpoint_epoch: CommitEpoch::ZERO,
            page_count: 2,
        };
        let mut page0 = vec![0u8; page_size as usize];
        for offset in HEADER_SLOT_OFFSETS {
            let start = offset as usize;
            page0[start..start + HEADER_SLOT_LEN].copy_from_slice(&header.encode());
        }
        page_file.write(&page0, 0, "write header page")?;
        page_file.write_page(PageId(1), meta, CommitEpoch::ZERO)?;
        page_file.sync("sync new data file")?;
        page_file
            .storage
            .sync_dir(&page_file.dir)
            .map_err(|err| Error::io("sync database directory", err))?;
        Ok((page_file, header))
    }

    /// Opens an existing data file and reads its newest valid header slot.
    pub fn open(
        storage: Arc<dyn Storage>,
        file: Arc<dyn StorageFile>,
        path: &Path,
    ) -> Result<(PageFile, FileHeader)> {
        let len = file.len().map_err(|err| Error::io("stat data file", err))?;
        if len < u64::from(MIN_PAGE_SIZE) {
            return Err(Error::BadFormat(format!(
                "{} is {len} bytes, shorter than one header page",
                path.display()
            )));
        }
        let header = read_best_header(file.as_ref())?;
        Ok((
            PageFile::new(storage, file, path, header.page_size)?,
            header,
        ))
    }

    fn new(
        storage: Arc<dyn Storage>,
        file: Arc<dyn StorageFile>,
        path: &Path,
        page_size: u32,
    ) -> Result<Self> {
        let frames = PageFramePool::new(PoolConfig {
            frame_bytes: page_size as usize,
            max_frames: (SCRATCH_FRAMES_BYTES_MAX / page_size.max(1) as usize).max(1),
            magazine_frames: SCRATCH_MAGAZINE_FRAMES,
        })?;
        // A bare file name ("app.mmsb") has an empty parent: the current directory.
        let dir = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut dwb_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        dwb_name.push("-dwb");
        Ok(PageFile {
            file,
            storage,
            dwb_path: dir.join(dwb_name),
            dir,
            page_size,
            crcs: RwLock::default(),
            write_end_lock: Mutex::new(()),
            write_ended: Condvar::new(),
            frames,
            dwb_dir_synced: AtomicBool::new(false),
        })
    }

    /// The pool of page-sized scratch frames (reads, write-back buffers).
    pub fn frames(&self) -> &PageFramePool {
        &self.frames
    }

    /// Bytes per page.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Usable bytes per page.
    pub fn page_len(&self) -> usize {
        self.page_size as usize - PAGE_TRAILER_LEN
    }

    fn offset_of(&self, page_id: PageId) -> u64 {
        page_id.get() * u64::from(self.page_size)
    }

    /// Reads and verifies a data page (its trailer, and its CRC against the
    /// table the manifest persists); returns its payload.
    pub fn read_page(&self, page_id: PageId) -> Result<Vec<u8>> {
        self.read_page_frame(page_id).map(|page| page.to_vec())
    }

    /// [`read_page`](Self::read_page) into a pooled scratch frame (no
    /// allocation), truncated to the payload.
    pub fn read_page_frame(&self, page_id: PageId) -> Result<PageFrame> {
        let offset = self.offset_of(page_id);
        let mut page = self.frames.alloc_or_unpooled();
        let mut retries = 0;
        loop {
            // Taken before the bytes are read (see `CrcTable::writes`).
            let writes_before = self.crcs.read().read_token();
            self.file.read_exact_at(&mut page, offset).map_err(|err| {
                if err.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::Corrupted(format!(
                        "{page_id} (byte {offset}) lies past the end of the data file"
                    ))
                } else {
                    Error::io(format!("read {page_id}"), err)
                }
            })?;
            match self.check_sealed(page_id, &page, writes_before) {
                Ok(()) => break,
                Err(_)
                    if retries < TORN_READ_RETRIES_MAX && self.writes_ran_since(writes_before) =>
                {
                    retries += 1;
                    self.wait_for_in_place_writes(page_id)?;
                }
                Err(reason) => {
                    return Err(Error::Corrupted(format!(
                        "{reason} (data file byte {offset})"
                    )))
                }
            }
        }
        page.truncate(self.page_len());
        Ok(page)
    }

    /// Whether an in-place write was in flight when a read took
    /// `writes_before`, or began or ended since.
    fn writes_ran_since(&self, writes_before: Option<u64>) -> bool {
        writes_before.is_none() || self.crcs.read().read_token() != writes_before
    }

    /// Waits until no in-place write is in flight (each one ends, failed or
    /// not, in [`PageFile::end_in_place_write`]).
    fn wait_for_in_place_writes(&self, page_id: PageId) -> Result<()> {
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(IN_PLACE_WRITE_WAIT_MS_MAX);
        let mut guard = self.write_end_lock.lock();
        while self.crcs.read().read_token().is_none() {
            if self
                .write_ended
                .wait_until(&mut guard, deadline)
                .timed_out()
            {
                return Err(Error::io(
                    format!("read {page_id}"),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "an in-place page write did not end within {IN_PLACE_WRITE_WAIT_MS_MAX} ms"
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Wakes reads waiting in [`PageFile::wait_for_in_place_writes`]; call
    /// after [`CrcTable::finish_write`], outside the table's lock.
    fn end_in_place_write(&self) {
        let _guard = self.write_end_lock.lock();
        self.write_ended.notify_all();
    }

    /// Verifies a sealed page's trailer and that the CRC table accepts it.
    /// `writes_before`: the table's read token taken before `page` was read
    /// ([`CrcTable::read_token`]).
    ///
    /// An accepted page the table does not expect (a page of an interrupted
    /// later checkpoint, or one the table did not know) becomes what it
    /// expects, but only when no in-place write was in flight, began or
    /// ended since the read began, checked and recorded under one lock: a
    /// checkpoint may have written a newer image meanwhile, and recording
    /// the older CRC read here over it would make the manifest call that
    /// write lost.
    fn check_sealed(
        &self,
        page_id: PageId,
        page: &[u8],
        writes_before: Option<u64>,
    ) -> Result<(), String> {
        let epoch = verify_page(page_id, page)?;
        let crc = sealed_crc(page);
        {
            let table = self.crcs.read();
            table.accepts(page_id, crc, epoch)?;
            if table.expected(page_id) == Some(crc) {
                return Ok(());
            }
        }
        let mut table = self.crcs.write();
        table.accepts(page_id, crc, epoch)?;
        if table.read_token().is_some() && table.read_token() == writes_before {
            table.record(page_id, crc);
        }
        Ok(())
    }

    /// Rebuilds a page that fails verification from its copy in the
    /// double-write file, when that copy verifies and is the image the CRC
    /// table expects (or newer); writes it back in place and syncs. Returns
    /// the payload, or `None` when the file holds no usable copy.
    pub fn repair_from_double_write(&self, page_id: PageId) -> Result<Option<Vec<u8>>> {
        let writes_before = self.crcs.read().read_token();
        let copies = self.double_write_pages()?;
        let Some((_, sealed)) = copies.into_iter().find(|(id, _)| *id == page_id) else {
            return Ok(None);
        };
        {
            // Checked and written under one lock, and only when no write
            // was recorded since the copy was read: a checkpoint running
            // meanwhile may have written a newer image, which this copy
            // must not overwrite (its own write waits for the lock).
            let mut table = self.crcs.write();
            let epoch = verify_page(page_id, &sealed);
            let accepted =
                epoch.and_then(|epoch| table.accepts(page_id, sealed_crc(&sealed), epoch));
            if accepted.is_err() || writes_before.is_none() || table.read_token() != writes_before {
                return Ok(None);
            }
            tracing::warn!(%page_id, "repairing a damaged page from the double-write file");
            table.record_write(page_id, sealed_crc(&sealed));
            let written = self.write(&sealed, self.offset_of(page_id), "write repaired page");
            table.finish_write();
            drop(table);
            self.end_in_place_write();
            written?;
        }
        self.sync("sync repaired page")?;
        let mut payload = sealed;
        payload.truncate(self.page_len());
        Ok(Some(payload))
    }

    /// Makes `crcs` (trailer CRCs of pages `1..=crcs.len()`, from a checkpoint
    /// manifest of `epoch`) the table reads are checked against.
    pub fn install_crc_table(&self, crcs: Vec<u32>, epoch: CommitEpoch) {
        let mut table = self.crcs.write();
        *table = CrcTable {
            crcs,
            trusted_through: epoch,
            // Kept counting: a read that began before the install records
            // nothing into the new table.
            writes: table.writes.wrapping_add(1),
            writes_in_flight: table.writes_in_flight,
        };
    }

    /// Rebuilds the CRC table from the trailers of pages `1..page_count` on
    /// disk (when the manifest is missing or damaged), trusting each page's
    /// own trailer. Pages that fail their trailer get [`UNKNOWN_CRC`] (and
    /// still fail when read). Returns the pages that failed.
    pub fn rebuild_crc_table(&self, page_count: u64, epoch: CommitEpoch) -> Result<Vec<PageId>> {
        // The header is written only after its pages are synced, so a count
        // far past the file's end is damage, not a reason to loop (and grow
        // a table) for as many pages as a crafted header claims.
        let file_pages = self
            .file
            .len()
            .map_err(|err| Error::io("stat data file", err))?
            / u64::from(self.page_size);
        if page_count > file_pages.saturating_add(REBUILD_MISSING_PAGES_MAX) {
            return Err(Error::Corrupted(format!(
                "the header counts {page_count} pages but the data file holds {file_pages}"
            )));
        }
        self.install_crc_table(Vec::new(), epoch);
        let mut crcs = Vec::new();
        let mut damaged = Vec::new();
        let mut page = vec![0u8; self.page_size as usize];
        for id in 1..page_count {
            let page_id = PageId(id);
            let read = self.file.read_exact_at(&mut page, self.offset_of(page_id));
            match read {
                Ok(()) if verify_page(page_id, &page).is_ok() => crcs.push(sealed_crc(&page)),
                Ok(()) => {
                    damaged.push(page_id);
                    crcs.push(UNKNOWN_CRC);
                }
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    damaged.push(page_id);
                    crcs.push(UNKNOWN_CRC);
                }
                Err(err) => return Err(Error::io(format!("read {page_id}"), err)),
            }
        }
        self.install_crc_table(crcs, epoch);
        Ok(damaged)
    }

    /// Trailer CRCs of pages `1..page_count` as last written (what a new
    /// manifest records); `None` when the table does not cover them all.
    pub fn crc_table(&self, page_count: u64) -> Option<Vec<u32>> {
        let len = usize::try_from(page_count.checked_sub(1)?).ok()?;
        self.crcs.read().crcs.get(..len).map(<[u32]>::to_vec)
    }

    /// Moves the epoch through which the CRC table is authoritative (after a
    /// checkpoint wrote a manifest of it).
    pub fn trust_crc_table_through(&self, epoch: CommitEpoch) {
        self.crcs.write().trusted_through = epoch;
    }

    /// Seals and writes one data page (not synced).
    pub fn write_page(&self, page_id: PageId, payload: &[u8], epoch: CommitEpoch) -> Result<()> {
        debug_assert!(page_id.get() >= 1, "page 0 is the header");
        let mut page = vec![0u8; self.page_size as usize];
        seal_page(page_id, payload, epoch, &mut page);
        self.write_sealed(page_id, &page)
    }

    /// Writes one already sealed page in place (not synced) and records its
    /// CRC in the table.
    pub fn write_sealed(&self, page_id: PageId, sealed: &[u8]) -> Result<()> {
        assert_eq!(sealed.len(), self.page_size as usize, "one whole page");
        self.write_sealed_run(page_id, sealed)
    }

    /// Writes sealed pages `first`, `first + 1`, ... (`sealed` holds them
    /// back to back, a whole number of pages) in place with one write (not
    /// synced), and records their CRCs in the table.
    pub fn write_sealed_run(&self, first: PageId, sealed: &[u8]) -> Result<()> {
        let page_size = self.page_size as usize;
        assert!(
            !sealed.is_empty() && sealed.len().is_multiple_of(page_size),
            "a run is a whole number of pages"
        );
        debug_assert!(first.get() >= 1, "page 0 is the header");
        debug_assert!(
            (0u64..)
                .zip(sealed.chunks_exact(page_size))
                .all(|(index, page)| verify_page(PageId(first.get() + index), page).is_ok()),
            "writing an unsealed page"
        );
        // Recorded first: a failed write leaves the pages unknown either
        // way, and the database refuses writes until it is reopened.
        self.crcs
            .write()
            .record_run_write(first, sealed.chunks_exact(page_size).map(sealed_crc));
        let written = self.write(sealed, self.offset_of(first), "write back pages");
        // Counted again once the bytes are in place: a read that began
        // while they were changing records nothing (see `CrcTable::writes`).
        self.crcs.write().finish_write();
        self.end_in_place_write();
        written
    }

    /// Writes the pages of `buffer` below `copy_below` to the double-write
    /// file and syncs it ([`write_double_write`](Self::write_double_write));
    /// returns whether there was any (no file is written otherwise).
    pub fn write_double_write_below(
        &self,
        checkpoint_seq: u64,
        buffer: &mut WriteBackBuffer,
        copy_below: u64,
    ) -> Result<bool> {
        debug_assert_eq!(buffer.page_size, self.page_size as usize);
        let (pages, scratch) = buffer.double_write_parts(copy_below);
        if pages.len() == 0 {
            return Ok(false);
        }
        self.write_double_write_with(checkpoint_seq, pages, scratch)?;
        Ok(true)
    }

    /// Writes every page of `buffer` in place (not synced): one write per
    /// run of consecutive page ids, each at most [`IN_PLACE_RUN_MAX_BYTES`].
    /// Returns how many writes it issued.
    pub fn write_back_runs(&self, buffer: &WriteBackBuffer) -> Result<usize> {
        debug_assert_eq!(buffer.page_size, self.page_size as usize);
        let run_max_pages = (IN_PLACE_RUN_MAX_BYTES / buffer.page_size).max(1);
        let mut writes = 0;
        for (first, sealed) in buffer.runs(run_max_pages) {
            self.write_sealed_run(first, sealed)?;
            writes += 1;
        }
        Ok(writes)
    }

    fn write(&self, bytes: &[u8], offset: u64, context: &str) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|err| Error::io(context, err))
    }

    /// `fdatasync` of the data file.
    pub fn sync(&self, context: &str) -> Result<()> {
        self.file.sync_data().map_err(|err| Error::io(context, err))
    }

    /// Writes the header slot `header.checkpoint_seq` selects, and syncs it.
    pub fn write_header(&self, header: &FileHeader) -> Result<()> {
        let slot = HEADER_SLOT_OFFSETS[(header.checkpoint_seq % 2) as usize];
        self.write(&header.encode(), slot, "write header slot")?;
        self.sync("sync header slot")
    }

    /// Writes sealed page images to the double-write file and syncs it, so a
    /// torn in-place write that follows can be repaired from it.
    pub fn write_double_write<P: AsRef<[u8]>>(
        &self,
        checkpoint_seq: u64,
        pages: &[(PageId, P)],
    ) -> Result<()> {
        let pages = pages
            .iter()
            .map(|(page_id, sealed)| (*page_id, sealed.as_ref()));
        self.write_double_write_with(checkpoint_seq, pages, &mut Vec::new())
    }

    /// [`write_double_write`](Self::write_double_write) of `pages`, built in
    /// `scratch` (cleared first; a checkpoint reuses it for every chunk, so
    /// no buffer is allocated and zeroed per chunk). The body CRC is taken
    /// as each entry is copied, while it is still in the cache. The
    /// directory is synced when the file was missing, and the first time
    /// this page file writes it (its entry may not be durable yet).
    pub fn write_double_write_with<'p>(
        &self,
        checkpoint_seq: u64,
        pages: impl ExactSizeIterator<Item = (PageId, &'p [u8])>,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let page_size = self.page_size as usize;
        let count = pages.len();
        scratch.clear();
        scratch.reserve(DWB_HEADER_LEN + count * (8 + page_size));
        scratch.extend_from_slice(&[0u8; DWB_HEADER_LEN]);
        let mut body = crc32fast::Hasher::new();
        for (page_id, sealed) in pages {
            assert_eq!(sealed.len(), page_size, "one whole page");
            let id = page_id.get().to_le_bytes();
            scratch.extend_from_slice(&id);
            scratch.extend_from_slice(sealed);
            body.update(&id);
            body.update(sealed);
        }
        debug_assert_eq!(scratch.len(), DWB_HEADER_LEN + count * (8 + page_size));
        scratch[0..8].copy_from_slice(&DWB_MAGIC);
        scratch[8..16].copy_from_slice(&checkpoint_seq.to_le_bytes());
        scratch[16..24].copy_from_slice(&(count as u64).to_le_bytes());
        scratch[24..28].copy_from_slice(&body.finalize().to_le_bytes());
        let header_crc = crc32fast::hash(&scratch[..28]);
        scratch[28..32].copy_from_slice(&header_crc.to_le_bytes());
        let existed = self
            .storage
            .exists(&self.dwb_path)
            .map_err(|err| Error::io("stat double-write file", err))?;
        let dwb = self
            .storage
            .open_file(&self.dwb_path, true)
            .map_err(|err| Error::io("open double-write file", err))?;
        dwb.set_len(0)
            .map_err(|err| Error::io("reset double-write file", err))?;
        dwb.write_all_at(scratch, 0)
            .map_err(|err| Error::io("write double-write file", err))?;
        dwb.sync_data()
            .map_err(|err| Error::io("sync double-write file", err))?;
        if existed && self.dwb_dir_synced.load(Ordering::Acquire) {
            return Ok(());
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|err| Error::io("sync database directory", err))?;
        self.dwb_dir_synced.store(true, Ordering::Release);
        Ok(())
    }

    /// The double-write file and its length, `None` when there is none.
    /// Never creates it.
    fn open_double_write(&self) -> Result<Option<(Arc<dyn StorageFile>, u64)>> {
        let exists = self
            .storage
            .exists(&self.dwb_path)
            .map_err(|err| Error::io("stat double-write file", err))?;
        if !exists {
            return Ok(None);
        }
        let dwb = self
            .storage
            .open_file(&self.dwb_path, false)
            .map_err(|err| Error::io("open double-write file", err))?;
        let len = dwb
            .len()
            .map_err(|err| Error::io("stat double-write file", err))?;
        Ok(Some((dwb, len)))
    }

    /// Empties the double-write file when it is longer than
    /// [`DOUBLE_WRITE_RETAINED_MAX_BYTES`]. Call it only once
    /// the in-place writes of its chunk are synced: from then on no torn
    /// write can need the copies. Not synced: should the emptying be lost in
    /// a crash, the file holds those copies again, each of them the image
    /// now in place, which recovery only ever compares against.
    pub fn retire_double_write(&self) -> Result<()> {
        let Some((dwb, len)) = self.open_double_write()? else {
            return Ok(());
        };
        if len <= DOUBLE_WRITE_RETAINED_MAX_BYTES {
            return Ok(());
        }
        dwb.set_len(0)
            .map_err(|err| Error::io("empty double-write file", err))
    }

    /// Repairs every page that fails verification but has a copy in a
    /// complete double-write file, and syncs. Returns how many pages were
    /// repaired. A torn or missing double-write file means in-place writes
    /// of its checkpoint never began.
    pub fn restore_double_write(&self) -> Result<usize> {
        let Some((dwb, len)) = self.open_double_write()? else {
            return Ok(0);
        };
        let Ok(len) = usize::try_from(len) else {
            return Ok(0);
        };
        if len < DWB_HEADER_LEN {
            return Ok(0);
        }
        let mut buf = vec![0u8; len];
        dwb.read_exact_at(&mut buf, 0)
            .map_err(|err| Error::io("read double-write file", err))?;
        let Some(pages) = self.parse_double_write(&buf) else {
            return Ok(0);
        };
        let mut restored = 0;
        for (page_id, sealed) in &pages {
            // An intact page holds either the old or the new image; replay
            // from the header's checkpoint makes both right. Only a torn or
            // damaged page needs its double-write copy.
            let writes_before = self.crcs.read().read_token();
            if self.read_page(*page_id).is_ok()
                || self.check_sealed(*page_id, sealed, writes_before).is_err()
            {
                continue;
            }
            tracing::warn!(%page_id, "repairing a damaged page from the double-write file");
            self.write_sealed(*page_id, sealed)?;
            restored += 1;
        }
        if restored > 0 {
            self.sync("sync restored pages")?;
        }
        Ok(restored)
    }

    /// The sealed pages of a complete double-write file (empty when there is
    /// none, or it is torn), for `mmsb check` and salvage. Never writes.
    pub(crate) fn double_write_pages(&self) -> Result<Vec<(PageId, Vec<u8>)>> {
        let Some((dwb, len)) = self.open_double_write()? else {
            return Ok(Vec::new());
        };
        let Some(len) = usize::try_from(len).ok().filter(|&l| l >= DWB_HEADER_LEN) else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; len];
        dwb.read_exact_at(&mut buf, 0)
            .map_err(|err| Error::io("read double-write file", err))?;
        Ok(self
            .parse_double_write(&buf)
            .unwrap_or_default()
            .into_iter()
            .map(|(page_id, sealed)| (page_id, sealed.to_vec()))
            .collect())
    }

    /// The entries of a complete, checksummed double-write image.
    fn parse_double_write<'a>(&self, buf: &'a [u8]) -> Option<Vec<(PageId, &'a [u8])>> {
        let page_size = self.page_size as usize;
        let entry_len = 8 + page_size;
        if buf[0..8] != DWB_MAGIC || crc32fast::hash(&buf[..28]) != read_u32(buf, 28) {
            return None;
        }
        let count = usize::try_from(read_u64(buf, 16)).ok()?;
        let body_len = count.checked_mul(entry_len)?;
        let body = buf.get(DWB_HEADER_LEN..DWB_HEADER_LEN.checked_add(body_len)?)?;
        if crc32fast::hash(body) != read_u32(buf, 24) {
            return None;
        }
        let mut pages = Vec::with_capacity(count);
        for entry in body.chunks_exact(entry_len) {
            let page_id = PageId(read_u64(entry, 0));
            let sealed = &entry[8..];
            // A sealed page that does not verify was never a valid entry.
            verify_page(page_id, sealed).ok()?;
            if page_id.get() == 0 {
                return None;
            }
            pages.push((page_id, sealed));
        }
        Some(pages)
    }
}

/// The sealed pages of one checkpoint chunk, back to back in page id order
/// in one buffer that the checkpoint reuses for each of its chunks: pages
/// are sealed straight into it (no scratch frame per page), a run of
/// consecutive ids is written in place from it with one write
/// ([`PageFile::write_back_runs`]), and its double-write copy is built in
/// the second buffer it keeps.
#[derive(Debug)]
pub struct WriteBackBuffer {
    page_size: usize,
    /// Sealed pages: `ids[i]` occupies `sealed[i * page_size..][..page_size]`.
    /// Longer than `ids` covers once a smaller chunk follows a larger one
    /// (kept, so the next chunk does not zero it again).
    sealed: Vec<u8>,
    /// Page ids in strictly increasing order.
    ids: Vec<PageId>,
    /// Where [`PageFile::write_double_write_with`] builds the double-write image.
    double_write: Vec<u8>,
}

impl WriteBackBuffer {
    /// An empty buffer for pages of `page_size` bytes.
    pub fn new(page_size: u32) -> Self {
        let page_size = page_size as usize;
        assert!(page_size > PAGE_TRAILER_LEN, "a page holds its trailer");
        WriteBackBuffer {
            page_size,
            sealed: Vec::new(),
            ids: Vec::new(),
            double_write: Vec::new(),
        }
    }

    /// Forgets the pages (keeps the memory).
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    /// Pages held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The page ids held, in increasing order.
    pub fn page_ids(&self) -> &[PageId] {
        &self.ids
    }

    /// Appends page `page_id` (greater than every page held) and returns its
    /// whole page slot, to be sealed ([`seal_page`]) before it is written.
    pub fn push(&mut self, page_id: PageId) -> &mut [u8] {
        assert!(
            self.ids.last().is_none_or(|last| *last < page_id),
            "pages are pushed in increasing id order"
        );
        let at = self.ids.len() * self.page_size;
        let end = at + self.page_size;
        if self.sealed.len() < end {
            self.sealed.resize(end, 0);
        }
        self.ids.push(page_id);
        &mut self.sealed[at..end]
    }

    /// Maximal runs of consecutive page ids, each at most `max_pages`
    /// long: the first id of each and the sealed bytes of its pages.
    pub fn runs(&self, max_pages: usize) -> impl Iterator<Item = (PageId, &[u8])> + '_ {
        let max_pages = max_pages.max(1);
        let mut start = 0;
        std::iter::from_fn(move || {
            let first = *self.ids.get(start)?;
            let mut end = start + 1;
            while end < self.ids.len()
                && end - start < max_pages
                && self.ids[end].get() == first.get() + (end - start) as u64
            {
                end += 1;
            }
            let bytes = &self.sealed[start * self.page_size..end * self.page_size];
            start = end;
            Some((first, bytes))
        })
    }

    /// The pages below `limit` (a prefix: ids increase) with their bytes,
    /// and the double-write scratch buffer, borrowed apart.
    fn double_write_parts(
        &mut self,
        limit: u64,
    ) -> (
        impl ExactSizeIterator<Item = (PageId, &[u8])> + '_,
        &mut Vec<u8>,
    ) {
        let count = self.ids.partition_point(|id| id.get() < limit);
        let page_size = self.page_size;
        let sealed = &self.sealed;
        let pages = self.ids[..count]
            .iter()
            .enumerate()
            .map(move |(index, id)| (*id, &sealed[index * page_size..(index + 1) * page_size]));
        (pages, &mut self.double_write)
    }
}

/// Both header slots as they are on disk, for `mmsb check`: each slot's byte
/// offset and its decoded header, or why it is invalid. Never writes.
pub(crate) fn inspect_header_slots(
    file: &dyn StorageFile,
) -> Result<Vec<(u64, Result<FileHeader, String>)>> {
    let mut slots = Vec::with_capacity(HEADER_SLOT_OFFSETS.len());
    for offset in HEADER_SLOT_OFFSETS {
        let mut slot = [0u8; HEADER_SLOT_LEN];
        file.read_exact_at(&mut slot, offset)
            .map_err(|err| Error::io("read header slot", err))?;
        slots.push((offset, FileHeader::decode(&slot)));
    }
    Ok(slots)
}

/// Reads both header slots and returns the valid one with the highest sequence.
fn read_best_header(file: &dyn StorageFile) -> Result<FileHeader> {
    let mut best: Option<FileHeader> = None;
    let mut reasons = Vec::new();
    for offset in HEADER_SLOT_OFFSETS {
        let mut slot = [0u8; HEADER_SLOT_LEN];
        file.read_exact_at(&mut slot, offset)
            .map_err(|err| Error::io("read header slot", err))?;
        match FileHeader::decode(&slot) {
            Ok(header) if best.is_none_or(|b| header.checkpoint_seq > b.checkpoint_seq) => {
                best = Some(header);
            }
            Ok(_) => {}
            Err(reason) => reasons.push(format!("slot at byte {offset}: {reason}")),
        }
    }
    best.ok_or_else(|| {
        let all_bad_magic = reasons.iter().all(|r| r.ends_with("bad magic"));
        if all_bad_magic {
            Error::BadFormat("no mmsb header found".into())
        } else {
            Error::Corrupted(format!(
                "both header slots are invalid: {}",
                reasons.join("; ")
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_wal::storage::MemStorage;

    fn new_file(page_size: u32) -> (MemStorage, PageFile, FileHeader) {
        let storage = MemStorage::new();
        let path = PathBuf::from("/db/test.mmsb");
        let file = storage.open_file(&path, true).unwrap();
        let meta = vec![7u8; page_size as usize - PAGE_TRAILER_LEN];
        let (page_file, header) =
            PageFile::create(Arc::new(storage.clone()), file, &path, page_size, &meta).unwrap();
        (storage, page_file, header)
    }

    #[test]
    fn header_round_trips_and_the_newer_slot_wins() {
        let (storage, page_file, header) = new_file(4096);
        let newer = FileHeader {
            checkpoint_seq: 1,
            checkpoint_epoch: CommitEpoch(9),
            page_count: 5,
            ..header
        };
        page_file.write_header(&newer).unwrap();
        let file = storage
            .open_file(Path::new("/db/test.mmsb"), false)
            .unwrap();
        assert_eq!(read_best_header(file.as_ref()).unwrap(), newer);
    }

    #[test]
    fn a_torn_header_slot_falls_back_to_the_other() {
        let (storage, page_file, header) = new_file(4096);
        let newer = FileHeader {
            checkpoint_seq: 1,
            ..header
        };
        page_file.write_header(&newer).unwrap();
        let path = Path::new("/db/test.mmsb");
        let mut bytes = storage.file_bytes(path).unwrap();
        bytes[512 + 20] ^= 0xff; // damage slot 1, which holds seq 1
        storage.set_file_bytes(path, bytes);
        let file = storage.open_file(path, false).unwrap();
        assert_eq!(read_best_header(file.as_ref()).unwrap(), header);
    }

    #[test]
    fn slices_too_short_for_a_trailer_are_refused_not_a_panic() {
        for len in 0..PAGE_TRAILER_LEN {
            let err = verify_page(PageId(3), &vec![0u8; len]).unwrap_err();
            assert!(err.contains("cannot hold"), "{err}");
        }
        assert!(verify_page(PageId(3), &[0u8; PAGE_TRAILER_LEN]).is_err());
    }

    #[test]
    fn every_flipped_page_bit_is_detected() {
        let (storage, page_file, _) = new_file(4096);
        let path = Path::new("/db/test.mmsb");
        let pristine = storage.file_bytes(path).unwrap();
        for bit in (0..4096 * 8).step_by(97) {
            let mut bytes = pristine.clone();
            bytes[4096 + bit / 8] ^= 1 << (bit % 8);
            storage.set_file_bytes(path, bytes);
            assert!(
                matches!(page_file.read_page(PageId(1)), Err(Error::Corrupted(_))),
                "bit {bit} flip went unnoticed"
            );
        }
    }

    #[test]
    fn reads_go_through_one_recycled_scratch_frame() {
        let (_storage, page_file, _) = new_file(4096);
        let first = page_file.read_page_frame(PageId(1)).unwrap();
        assert_eq!(first.len(), 4096 - PAGE_TRAILER_LEN);
        assert_eq!(&first[..], &page_file.read_page(PageId(1)).unwrap()[..]);
        let address = first.as_ptr();
        drop(first);
        for _ in 0..10 {
            let again = page_file.read_page_frame(PageId(1)).unwrap();
            assert_eq!(again.as_ptr(), address, "the scratch frame is reused");
        }
        let stats = page_file.frames().stats();
        assert!(
            stats.frames_allocated <= SCRATCH_MAGAZINE_FRAMES,
            "{stats:?}"
        );
        assert_eq!(stats.grow_batches, 1, "reads allocate no new frames");
    }

    #[test]
    fn zeroed_and_misplaced_pages_are_detected() {
        let (storage, page_file, _) = new_file(4096);
        let path = Path::new("/db/test.mmsb");
        let mut bytes = storage.file_bytes(path).unwrap();
        let sealed = bytes[4096..8192].to_vec();
        bytes.extend_from_slice(&sealed); // page 1's image written at page 2
        bytes.extend_from_slice(&[0u8; 4096]); // page 3 all zeros
        storage.set_file_bytes(path, bytes);
        assert!(page_file.read_page(PageId(1)).is_ok());
        assert!(matches!(
            page_file.read_page(PageId(2)),
            Err(Error::Corrupted(_))
        ));
        assert!(matches!(
            page_file.read_page(PageId(3)),
            Err(Error::Corrupted(_))
        ));
        assert!(matches!(
            page_file.read_page(PageId(4)),
            Err(Error::Corrupted(_))
        ));
    }

    #[test]
    fn double_write_restores_a_torn_page() {
        let (storage, page_file, _) = new_file(4096);
        let path = Path::new("/db/test.mmsb");
        let mut sealed = vec![0u8; 4096];
        seal_page(PageId(1), &vec![42u8; 4080], CommitEpoch(3), &mut sealed);
        page_file
            .write_double_write(1, &[(PageId(1), sealed)])
            .unwrap();
        let mut bytes = storage.file_bytes(path).unwrap();
        bytes[4096..4096 + 100].fill(42); // a torn in-place write
        storage.set_file_bytes(path, bytes);
        assert!(page_file.read_page(PageId(1)).is_err());
        assert_eq!(page_file.restore_double_write().unwrap(), 1);
        assert_eq!(
            page_file.restore_double_write().unwrap(),
            0,
            "nothing left to repair"
        );
        assert_eq!(page_file.read_page(PageId(1)).unwrap(), vec![42u8; 4080]);
    }

    /// The double-write copies of a large chunk are dropped once its pages
    /// are in place; a small file stays, and still repairs its pages.
    #[test]
    fn only_a_small_double_write_file_is_kept_after_its_writes() {
        let (storage, page_file, _) = new_file(4096);
        let dwb = Path::new("/db/test.mmsb-dwb");
        page_file.retire_double_write().unwrap();
        assert!(
            !storage.exists(dwb).unwrap(),
            "nothing to retire, nothing made"
        );
        let entry_bytes = 8 + 4096;
        let pages_over = DOUBLE_WRITE_RETAINED_MAX_BYTES as usize / entry_bytes + 1;
        let large: Vec<(PageId, Vec<u8>)> = (1..=pages_over as u64)
            .map(|id| (PageId(id), sealed(PageId(id), id as u8, 2)))
            .collect();
        page_file.write_double_write(1, &large).unwrap();
        let written = storage.file_bytes(dwb).unwrap().len() as u64;
        assert!(written > DOUBLE_WRITE_RETAINED_MAX_BYTES, "{written}");
        page_file.retire_double_write().unwrap();
        assert!(storage.file_bytes(dwb).unwrap().is_empty());
        assert!(page_file.double_write_pages().unwrap().is_empty());
        assert_eq!(page_file.restore_double_write().unwrap(), 0);

        let small = &large[..pages_over - 1];
        page_file.write_double_write(2, small).unwrap();
        let kept = storage.file_bytes(dwb).unwrap();
        assert!(kept.len() as u64 <= DOUBLE_WRITE_RETAINED_MAX_BYTES);
        page_file.retire_double_write().unwrap();
        assert_eq!(storage.file_bytes(dwb).unwrap(), kept, "a small file stays");
        for (page_id, page) in small {
            page_file.write_sealed(*page_id, page).unwrap();
        }
        let mut bytes = storage.file_bytes(Path::new("/db/test.mmsb")).unwrap();
        bytes[2 * 4096 + 7] ^= 1;
        storage.set_file_bytes(Path::new("/db/test.mmsb"), bytes);
        assert_eq!(page_file.restore_double_write().unwrap(), 1);
        assert_eq!(page_file.read_page(PageId(2)).unwrap(), vec![2u8; 4080]);
    }

    #[test]
    fn a_torn_double_write_file_is_ignored() {
        let (storage, page_file, _) = new_file(4096);
        let mut sealed = vec![0u8; 4096];
        seal_page(PageId(1), &vec![42u8; 4080], CommitEpoch(3), &mut sealed);
        page_file
            .write_double_write(1, &[(PageId(1), sealed)])
            .unwrap();
        let dwb = Path::new("/db/test.mmsb-dwb");
        let mut bytes = storage.file_bytes(dwb).unwrap();
        bytes.truncate(bytes.len() - 100);
        storage.set_file_bytes(dwb, bytes);
        assert_eq!(page_file.restore_double_write().unwrap(), 0);
        assert_eq!(page_file.read_page(PageId(1)).unwrap(), vec![7u8; 4080]);
    }

    /// Puts `image` at page 2 of the test file behind the page file's back
    /// (durable at once), as a crash or a lost write would leave it.
    fn put_page_2_on_disk(storage: &MemStorage, image: &[u8]) {
        let path = Path::new("/db/test.mmsb");
        let mut bytes = storage.file_bytes(path).unwrap();
        bytes[2 * 4096..3 * 4096].copy_from_slice(image);
        storage.set_file_bytes(path, bytes);
    }

    fn sealed(page_id: PageId, byte: u8, epoch: u64) -> Vec<u8> {
        let mut page = vec![0u8; 4096];
        seal_page(page_id, &vec![byte; 4080], CommitEpoch(epoch), &mut page);
        page
    }

    /// A buffer holding `ids`, each page sealed with its id as the byte.
    fn buffer_of(ids: &[u64]) -> WriteBackBuffer {
        let mut buffer = WriteBackBuffer::new(4096);
        for &id in ids {
            let payload = vec![id as u8; 4080];
            seal_page(
                PageId(id),
                &payload,
                CommitEpoch(5),
                buffer.push(PageId(id)),
            );
        }
        buffer
    }

    #[test]
    fn runs_are_cut_at_gaps_and_at_the_cap() {
        let buffer = buffer_of(&[2, 3, 4, 5, 9, 11, 12]);
        let runs: Vec<(u64, usize)> = buffer
            .runs(3)
            .map(|(first, bytes)| (first.get(), bytes.len() / 4096))
            .collect();
        assert_eq!(runs, vec![(2, 3), (5, 1), (9, 1), (11, 2)]);
        for (first, bytes) in buffer.runs(3) {
            for (index, page) in (0u64..).zip(bytes.chunks_exact(4096)) {
                assert_eq!(
                    verify_page(PageId(first.get() + index), page),
                    Ok(CommitEpoch(5))
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "increasing id order")]
    fn pages_pushed_out_of_order_are_refused() {
        let mut buffer = buffer_of(&[4]);
        buffer.push(PageId(3));
    }

    #[test]
    fn a_run_write_puts_every_page_in_place_and_records_its_crc() {
        let (_storage, page_file, _) = new_file(4096);
        let buffer = buffer_of(&[1, 2, 3, 5]);
        let token_before = page_file.crcs.read().read_token().unwrap();
        assert_eq!(page_file.write_back_runs(&buffer).unwrap(), 2);
        for id in [1u64, 2, 3, 5] {
            assert_eq!(
                page_file.read_page(PageId(id)).unwrap(),
                vec![id as u8; 4080]
            );
        }
        let table = page_file.crc_table(6).unwrap();
        for (index, (first, bytes)) in buffer.runs(usize::MAX).enumerate() {
            for (offset, page) in (0u64..).zip(bytes.chunks_exact(4096)) {
                let slot = (first.get() + offset - 1) as usize;
                assert_eq!(
                    table[slot],
                    sealed_crc(page),
                    "run {index}, page {}",
                    slot + 1
                );
            }
        }
        assert_eq!(table[3], UNKNOWN_CRC, "page 4 was never written");
        assert_eq!(
            page_file.crcs.read().read_token(),
            Some(token_before + 4),
            "two writes began and ended"
        );
    }

    /// A reused buffer's second, smaller double-write image holds exactly
    /// its own pages: nothing of the larger first one.
    #[test]
    fn a_reused_double_write_buffer_holds_only_the_last_pages() {
        let (_storage, page_file, _) = new_file(4096);
        let mut buffer = buffer_of(&[2, 3, 4, 7]);
        assert!(page_file
            .write_double_write_below(1, &mut buffer, 8)
            .unwrap());
        buffer.clear();
        for id in [3u64, 9] {
            let payload = vec![0x40 | id as u8; 4080];
            seal_page(
                PageId(id),
                &payload,
                CommitEpoch(6),
                buffer.push(PageId(id)),
            );
        }
        assert!(page_file
            .write_double_write_below(2, &mut buffer, 8)
            .unwrap());
        let copies = page_file.double_write_pages().unwrap();
        let ids: Vec<u64> = copies.iter().map(|(id, _)| id.get()).collect();
        assert_eq!(
            ids,
            vec![3],
            "only the pages below the limit, of the last chunk"
        );
        assert_eq!(verify_page(PageId(3), &copies[0].1), Ok(CommitEpoch(6)));
        assert!(!page_file
            .write_double_write_below(3, &mut buffer, 3)
            .unwrap());
    }

    #[test]
    fn writes_keep_the_crc_table_current() {
        let (_, page_file, _) = new_file(4096);
        let meta_crc = page_file.crc_table(2).unwrap()[0];
        let page = sealed(PageId(3), 9, 4);
        page_file.write_sealed(PageId(3), &page).unwrap();
        let table = page_file.crc_table(4).unwrap();
        assert_eq!(table, vec![meta_crc, UNKNOWN_CRC, sealed_crc(&page)]);
        assert_eq!(page_file.crc_table(5), None, "page 4 was never written");
    }

    #[test]
    fn gaps_in_the_crc_table_check_pages_by_their_trailer_only() {
        let (_, page_file, _) = new_file(4096);
        page_file.install_crc_table(Vec::new(), CommitEpoch::ZERO);
        page_file
            .write_sealed(PageId(5), &sealed(PageId(5), 3, 0))
            .unwrap();
        assert_eq!(page_file.crc_table(2).unwrap(), vec![UNKNOWN_CRC]);
        assert_eq!(page_file.read_page(PageId(1)).unwrap(), vec![7u8; 4080]);
        assert_eq!(page_file.read_page(PageId(5)).unwrap(), vec![3u8; 4080]);
    }

    #[test]
    fn a_stale_but_sealed_page_is_rejected_by_the_crc_table() {
        let (storage, page_file, _) = new_file(4096);
        let old = sealed(PageId(2), 1, 3);
        let new = sealed(PageId(2), 2, 5);
        page_file.write_sealed(PageId(2), &old).unwrap();
        page_file.write_sealed(PageId(2), &new).unwrap();
        page_file.trust_crc_table_through(CommitEpoch(5));
        put_page_2_on_disk(&storage, &old); // the newer write was lost
        let err = page_file.read_page(PageId(2)).unwrap_err();
        assert!(
            err.to_string().contains("manifest expects") && err.to_string().contains("8192"),
            "{err}"
        );
    }

    #[test]
    fn a_page_newer_than_the_trusted_epoch_is_accepted_and_recorded() {
        let (storage, page_file, _) = new_file(4096);
        let old = sealed(PageId(2), 1, 3);
        page_file.write_sealed(PageId(2), &old).unwrap();
        let table = page_file.crc_table(3).unwrap();
        page_file.install_crc_table(table, CommitEpoch(3));
        // An interrupted later checkpoint wrote epoch 7 before a crash.
        let newer = sealed(PageId(2), 2, 7);
        put_page_2_on_disk(&storage, &newer);
        assert_eq!(page_file.read_page(PageId(2)).unwrap(), vec![2u8; 4080]);
        assert_eq!(page_file.crc_table(3).unwrap()[1], sealed_crc(&newer));
    }

    /// A checkpoint whose epoch did not move (its dirty pages hold only
    /// commits not yet visible) rewrites pages sealed at the epoch of the
    /// manifest, with CRCs the manifest does not hold; killed before its own
    /// manifest, it leaves them on disk. They hold the pages as of that
    /// epoch and must be accepted; an image sealed earlier still is not.
    #[test]
    fn a_page_rewritten_at_the_trusted_epoch_is_accepted_an_older_one_is_not() {
        let (storage, page_file, _) = new_file(4096);
        // Last written by the checkpoint at epoch 3; the manifest is of epoch 5.
        let written = sealed(PageId(2), 1, 3);
        page_file.write_sealed(PageId(2), &written).unwrap();
        let table = page_file.crc_table(3).unwrap();
        page_file.install_crc_table(table, CommitEpoch(5));
        put_page_2_on_disk(&storage, &sealed(PageId(2), 1, 5));
        assert_eq!(page_file.read_page(PageId(2)).unwrap(), vec![1u8; 4080]);
        // An image of an earlier checkpoint than the manifest's entry: lost.
        page_file.install_crc_table(
            vec![page_file.crc_table(2).unwrap()[0], sealed_crc(&written)],
            CommitEpoch(5),
        );
        put_page_2_on_disk(&storage, &sealed(PageId(2), 9, 2));
        let err = page_file.read_page(PageId(2)).unwrap_err();
        assert!(err.to_string().contains("lost or misplaced"), "{err}");
    }

    /// The interleaving behind "page N holds CRC … the manifest expects …"
    /// after a crash: a reader read a page of an interrupted checkpoint
    /// (sealed past the trusted epoch, so accepted), a checkpoint then wrote
    /// a newer image of it, and only then did the reader record the CRC it
    /// read. That older CRC must not replace the write's, or the manifest
    /// (and every later read, once the trusted epoch moves on) rejects the
    /// page that is really there.
    #[test]
    fn a_read_that_began_before_a_write_never_records_over_it() {
        let (storage, page_file, _) = new_file(4096);
        let old = sealed(PageId(2), 1, 3);
        page_file.write_sealed(PageId(2), &old).unwrap();
        let table = page_file.crc_table(3).unwrap();
        page_file.install_crc_table(table, CommitEpoch(3));
        let interrupted = sealed(PageId(2), 2, 7);
        put_page_2_on_disk(&storage, &interrupted);
        // The reader has the bytes; the checkpoint writes epoch 9 meanwhile.
        let writes_before = page_file.crcs.read().read_token();
        let newer = sealed(PageId(2), 3, 9);
        page_file.write_sealed(PageId(2), &newer).unwrap();
        assert_eq!(
            page_file.check_sealed(PageId(2), &interrupted, writes_before),
            Ok(()),
            "the image read is still a valid page of a later checkpoint"
        );
        assert_eq!(page_file.crc_table(3).unwrap()[1], sealed_crc(&newer));
        page_file.trust_crc_table_through(CommitEpoch(9));
        assert_eq!(page_file.read_page(PageId(2)).unwrap(), vec![3u8; 4080]);
    }

    /// The same race with real threads: readers keep reading a page while a
    /// writer keeps writing newer images of it and moving the trusted epoch
    /// (as checkpoints do). After each write, once every read that began
    /// before it has finished, the table must expect the image written.
    #[test]
    fn concurrent_reads_never_leave_the_crc_table_behind_the_writes() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const WRITES: u64 = 200;
        const READERS: usize = 2;
        let (_storage, page_file, _) = new_file(4096);
        page_file
            .write_sealed(PageId(2), &sealed(PageId(2), 0, 1))
            .unwrap();
        page_file.trust_crc_table_through(CommitEpoch(1));
        let done = AtomicBool::new(false);
        let reads: [AtomicU64; READERS] = Default::default();
        std::thread::scope(|scope| {
            for count in &reads {
                let (done, page_file) = (&done, &page_file);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        // Errors are expected: an image older than the table.
                        let _ = page_file.read_page(PageId(2));
                        count.fetch_add(1, Ordering::Release);
                    }
                });
            }
            for epoch in 2..WRITES {
                // Every other image is left "interrupted" (past the trusted
                // epoch) for a while, as after a crash mid-checkpoint.
                let page = sealed(PageId(2), epoch as u8, epoch);
                page_file.write_sealed(PageId(2), &page).unwrap();
                if epoch % 2 == 0 {
                    page_file.trust_crc_table_through(CommitEpoch(epoch));
                }
                // Every read in flight during the write is done once each
                // reader finished the read it is in now, and one more.
                let before: Vec<u64> = reads.iter().map(|c| c.load(Ordering::Acquire)).collect();
                for (count, before) in reads.iter().zip(before) {
                    while count.load(Ordering::Acquire) < before + 2 {
                        std::thread::yield_now();
                    }
                }
                let expected = page_file.crc_table(3).unwrap()[1];
                if expected != sealed_crc(&page) {
                    done.store(true, Ordering::Relaxed);
                    panic!("after write {epoch} the CRC table expects an older image");
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        page_file.trust_crc_table_through(CommitEpoch(WRITES));
        let last = (WRITES - 1) as u8;
        assert_eq!(page_file.read_page(PageId(2)).unwrap(), vec![last; 4080]);
    }

    /// A reader that meets a page half written by a checkpoint's in-place
    /// write (a torn read, not damage) waits for the write to end and reads
    /// it again instead of calling the page corrupt.
    #[test]
    fn a_read_torn_by_an_in_place_write_is_read_again_not_called_corrupt() {
        let (storage, page_file, _) = new_file(4096);
        page_file
            .write_sealed(PageId(2), &sealed(PageId(2), 1, 3))
            .unwrap();
        page_file.trust_crc_table_through(CommitEpoch(3));
        let newer = sealed(PageId(2), 2, 5);
        // The write began: recorded, half of its bytes in place.
        page_file
            .crcs
            .write()
            .record_write(PageId(2), sealed_crc(&newer));
        let mut torn = sealed(PageId(2), 1, 3);
        torn[..2048].copy_from_slice(&newer[..2048]);
        put_page_2_on_disk(&storage, &torn);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| page_file.read_page(PageId(2)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            put_page_2_on_disk(&storage, &newer);
            page_file.crcs.write().finish_write();
            page_file.end_in_place_write();
            assert_eq!(reader.join().unwrap().unwrap(), vec![2u8; 4080]);
        });
    }

    /// Waiting for writes never hides damage: a page still torn once every
    /// write ended, or damaged while no write ran, is reported corrupt.
    #[test]
    fn a_page_still_damaged_after_the_writes_ended_is_corrupt() {
        let (storage, page_file, _) = new_file(4096);
        let mut damaged = sealed(PageId(2), 1, 3);
        page_file.write_sealed(PageId(2), &damaged).unwrap();
        damaged[100] ^= 0x10;
        put_page_2_on_disk(&storage, &damaged);
        assert!(matches!(
            page_file.read_page(PageId(2)),
            Err(Error::Corrupted(_))
        ));
        page_file.crcs.write().record_write(PageId(2), 0xdead_beef);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| page_file.read_page(PageId(2)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            page_file.crcs.write().finish_write();
            page_file.end_in_place_write();
            assert!(matches!(reader.join().unwrap(), Err(Error::Corrupted(_))));
        });
    }

    #[test]
    fn a_header_counting_far_more_pages_than_the_file_holds_is_refused() {
        let (_storage, page_file, _) = new_file(4096);
        let err = page_file
            .rebuild_crc_table(1 << 40, CommitEpoch(1))
            .unwrap_err();
        assert!(err.is_corruption(), "{err:?}");
        assert!(err.to_string().contains("data file holds"), "{err}");
    }

    #[test]
    fn rebuilding_the_crc_table_reports_damaged_pages() {
        let (storage, page_file, _) = new_file(4096);
        let path = Path::new("/db/test.mmsb");
        page_file
            .write_sealed(PageId(2), &sealed(PageId(2), 4, 1))
            .unwrap();
        page_file
            .write_sealed(PageId(3), &sealed(PageId(3), 5, 1))
            .unwrap();
        let expected = page_file.crc_table(4).unwrap();
        let mut bytes = storage.file_bytes(path).unwrap();
        bytes[3 * 4096 + 9] ^= 1;
        storage.set_file_bytes(path, bytes);
        let damaged = page_file.rebuild_crc_table(5, CommitEpoch(1)).unwrap();
        assert_eq!(damaged, vec![PageId(3), PageId(4)]);
        assert_eq!(page_file.crc_table(3).unwrap(), expected[..2].to_vec());
    }

    #[test]
    fn repair_from_double_write_refuses_a_copy_the_table_does_not_expect() {
        let (storage, page_file, _) = new_file(4096);
        let path = Path::new("/db/test.mmsb");
        let current = sealed(PageId(1), 8, 2);
        page_file.write_sealed(PageId(1), &current).unwrap();
        page_file.trust_crc_table_through(CommitEpoch(2));
        // The double-write file holds an older image of page 1.
        page_file
            .write_double_write(1, &[(PageId(1), sealed(PageId(1), 6, 1))])
            .unwrap();
        let mut bytes = storage.file_bytes(path).unwrap();
        bytes[4096 + 3] ^= 1;
        storage.set_file_bytes(path, bytes);
        assert_eq!(page_file.repair_from_double_write(PageId(1)).unwrap(), None);
        page_file
            .write_double_write(2, &[(PageId(1), current.clone())])
            .unwrap();
        assert_eq!(
            page_file.repair_from_double_write(PageId(1)).unwrap(),
            Some(vec![8u8; 4080])
        );
        assert_eq!(page_file.read_page(PageId(1)).unwrap(), vec![8u8; 4080]);
    }

    #[test]
    fn unsupported_page_sizes_are_rejected() {
        for size in [0, 1000, 2048, 4095, 128 * 1024] {
            assert!(validate_page_size(size).is_err(), "{size}");
        }
        for size in [4096, 8192, 16384, 32768, 65536] {
            assert!(validate_page_size(size).is_ok(), "{size}");
        }
    }
}
