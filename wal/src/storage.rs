//! The storage seam: every byte the page store and the TLog read or write
//! passes through [`Storage`] and [`StorageFile`].
//!
//! Three backends live here:
//! - [`FileStorage`]: the real file system; reads are served from a read-only
//!   memory map of the file (memmap2), writes go through `pwrite`.
//! - [`MemStorage`]: files in memory that remember what was synced, so a test
//!   can simulate a crash (`kill -9` or power loss) that drops or tears
//!   unsynced writes.
//! - [`FaultyStorage`]: wraps any backend and injects faults by plan: fail the
//!   Nth write or sync, tear the Nth write after K bytes, report a full disk.
//!
//! This module knows nothing of pages, frames or deltas.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// A file system as the engine sees it.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Opens `path` for reading and writing, creating it when `create` is set.
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Paths of the files directly inside `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
}

/// One open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Takes an exclusive advisory lock for this process; `Ok(false)` when
    /// another process holds it.
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        Ok(true)
    }
    /// Like [`StorageFile::read_exact_at`], but never through a memory map
    /// (a `pread` where the backend maps the file), so that the bytes read do
    /// not stay in the process's resident set. The default is `read_exact_at`.
    fn read_exact_at_unmapped(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

// ---------------------------------------------------------------------------
// FileStorage
// ---------------------------------------------------------------------------

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

impl Storage for FileStorage {
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(MappedFile {
            file,
            map: RwLock::new(None),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                paths.push(entry.path());
            }
        }
        paths.sort();
        Ok(paths)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
}

/// A real file whose reads come from a read-only memory map, remapped when the
/// file grows past it. Writes use `pwrite`, which Linux keeps coherent with
/// the map through the shared page cache.
struct MappedFile {
    file: File,
    map: RwLock<Option<memmap2::Mmap>>,
}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("mapped_len", &self.map.read().as_ref().map(|m| m.len()))
            .finish()
    }
}

impl MappedFile {
    /// Copies from the map when it covers the range; `false` when it does not.
    fn read_from_map(&self, buf: &mut [u8], offset: u64) -> bool {
        let guard = self.map.read();
        let Some(map) = guard.as_ref() else {
            return false;
        };
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > map.len() as u64 {
            return false;
        }
        buf.copy_from_slice(&map[offset as usize..end as usize]);
        true
    }

    fn remap(&self) -> io::Result<()> {
        let mut guard = self.map.write();
        let len = self.file.metadata()?.len();
        if len == 0 {
            *guard = None;
            return Ok(());
        }
        // SAFETY: the database holds an exclusive lock on its files, so no
        // other process truncates them; within this process every shrink goes
        // through `set_len`, which drops the map first under the write lock.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map(&self.file)?
        };
        *guard = Some(map);
        Ok(())
    }
}

impl StorageFile for MappedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_from_map(buf, offset) {
            return Ok(());
        }
        self.remap()?;
        if self.read_from_map(buf, offset) {
            return Ok(());
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut guard = self.map.write();
        *guard = None;
        self.file.set_len(len)
    }

    fn read_exact_at_unmapped(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(err)) => Err(err),
        }
    }
}

// ---------------------------------------------------------------------------
// MemStorage
// ---------------------------------------------------------------------------

/// What a simulated crash does to writes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost (power loss with an unhelpful disk).
    DropUnsynced,
    /// Unsynced writes survive (a `kill -9`: the kernel still has them).
    KeepUnsynced,
    /// A seeded random prefix of each file's unsynced writes survives, the
    /// last of them possibly torn at a random byte.
    TearUnsynced {
        /// Seed of the choice, so a failing case can be replayed.
        seed: u64,
    },
}

/// Files held in memory, with crash simulation. Cloning shares the files.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Arc<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    files: Mutex<HashMap<PathBuf, Arc<MemFileData>>>,
    /// Bumped by every crash; handles from an older generation fail.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct MemFileData {
    state: Mutex<MemFileState>,
}

#[derive(Debug, Default, Clone)]
struct MemFileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<UnsyncedOp>,
}

#[derive(Debug, Clone)]
enum UnsyncedOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl MemStorage {
    /// An empty in-memory file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates the death of the process (and, by `mode`, of the machine):
    /// every open handle starts failing, and unsynced writes are dropped, kept
    /// or torn. Open the database again afterwards to recover.
    pub fn crash(&self, mode: CrashMode) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let files = self.inner.files.lock();
        let mut rng = SplitMix64(match mode {
            CrashMode::TearUnsynced { seed } => seed,
            _ => 0,
        });
        let mut paths: Vec<&PathBuf> = files.keys().collect();
        paths.sort();
        for path in paths {
            let mut state = files[path].state.lock();
            let kept = match mode {
                CrashMode::DropUnsynced => 0,
                CrashMode::KeepUnsynced => state.unsynced.len(),
                CrashMode::TearUnsynced { .. } => {
                    (rng.next() % (state.unsynced.len() as u64 + 1)) as usize
                }
            };
            let mut image = state.durable.clone();
            let ops = std::mem::take(&mut state.unsynced);
            for (index, op) in ops.into_iter().take(kept).enumerate() {
                let torn = matches!(mode, CrashMode::TearUnsynced { .. }) && index + 1 == kept;
                apply_op(&mut image, op, torn.then(|| rng.next()));
            }
            state.durable = image.clone();
            state.current = image;
        }
    }

    /// The current bytes of a file (including unsynced writes), for tests that
    /// corrupt files on purpose.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let files = self.inner.files.lock();
        files
            .get(path)
            .map(|file| file.state.lock().current.clone())
    }

    /// Replaces a file's bytes outright, durable at once (test corruption).
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut files = self.inner.files.lock();
        let file = files.entry(path.to_path_buf()).or_default();
        let mut state = file.state.lock();
        state.durable = bytes.clone();
        state.current = bytes;
        state.unsynced.clear();
    }

    fn handle(&self, data: Arc<MemFileData>) -> MemFile {
        MemFile {
            data,
            inner: Arc::clone(&self.inner),
            generation: self.inner.generation.load(Ordering::SeqCst),
        }
    }
}

fn apply_op(image: &mut Vec<u8>, op: UnsyncedOp, tear: Option<u64>) {
    match op {
        UnsyncedOp::Write { offset, mut bytes } => {
            if let Some(random) = tear {
                bytes.truncate((random % (bytes.len() as u64 + 1)) as usize);
            }
            write_into(image, offset, &bytes);
        }
        UnsyncedOp::SetLen(len) => image.resize(len as usize, 0),
    }
}

fn write_into(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

impl Storage for MemStorage {
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut files = self.inner.files.lock();
        let data = match files.get(path) {
            Some(data) => Arc::clone(data),
            None if create => {
                let data = Arc::new(MemFileData::default());
                files.insert(path.to_path_buf(), Arc::clone(&data));
                data
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Arc::new(self.handle(data)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner
            .files
            .lock()
            .remove(path)
            .map(drop)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = self.inner.files.lock();
        let data = files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        files.insert(to.to_path_buf(), data);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let files = self.inner.files.lock();
        let mut paths: Vec<PathBuf> = files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect();
        paths.sort();
        Ok(paths)
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(self.inner.files.lock().contains_key(path))
    }
}

/// A handle to an in-memory file; it fails once its storage has crashed.
struct MemFile {
    data: Arc<MemFileData>,
    inner: Arc<MemInner>,
    generation: u64,
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFile")
            .field("generation", &self.generation)
            .finish()
    }
}

impl MemFile {
    fn alive(&self) -> io::Result<()> {
        if self.inner.generation.load(Ordering::SeqCst) == self.generation {
            Ok(())
        } else {
            Err(io::Error::other(
                "simulated crash: this handle's process is gone",
            ))
        }
    }
}

impl StorageFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.alive()?;
        let state = self.data.state.lock();
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if end > state.current.len() as u64 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&state.current[offset as usize..end as usize]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.alive()?;
        let mut state = self.data.state.lock();
        write_into(&mut state.current, offset, buf);
        state.unsynced.push(UnsyncedOp::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.alive()?;
        let mut state = self.data.state.lock();
        // Replay the unsynced operations onto the durable image: O(bytes
        // written since the last sync), not O(file) as a clone would be (a
        // preallocated TLog segment made that clone dominate every commit).
        let ops = std::mem::take(&mut state.unsynced);
        for op in ops {
            apply_op(&mut state.durable, op, None);
        }
        debug_assert!(
            state.durable == state.current,
            "sync must make durable == current"
        );
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.alive()?;
        Ok(self.data.state.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        let mut state = self.data.state.lock();
        state.current.resize(len as usize, 0);
        state.unsynced.push(UnsyncedOp::SetLen(len));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// FaultyStorage
// ---------------------------------------------------------------------------

/// What to break, counted over every file of a [`FaultyStorage`].
/// Operation numbers start at 0; `None` means never.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The write with this number fails with an I/O error and writes nothing.
    pub fail_write: Option<u64>,
    /// The write with this number writes only its first `.1` bytes, then fails.
    pub tear_write: Option<(u64, usize)>,
    /// The sync with this number fails (and, as on Linux, the dirty data it
    /// covered may be gone: the caller must not retry it).
    pub fail_sync: Option<u64>,
    /// Writes that would take the total written past this many bytes fail with
    /// `StorageFull` (ENOSPC) and write nothing.
    pub disk_full_after_bytes: Option<u64>,
}

/// Counts of what went through a [`FaultyStorage`].
#[derive(Debug, Default)]
pub struct FaultCounters {
    writes: AtomicU64,
    syncs: AtomicU64,
    bytes_written: AtomicU64,
    faults_injected: AtomicU64,
}

impl FaultCounters {
    /// Writes attempted so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
    /// Syncs attempted so far (file and directory).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::SeqCst)
    }
    /// Faults injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.faults_injected.load(Ordering::SeqCst)
    }
}

/// Wraps a backend and breaks it according to a [`FaultPlan`], which can be
/// changed while the storage is in use.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    shared: Arc<FaultShared>,
}

#[derive(Debug, Default)]
struct FaultShared {
    plan: Mutex<FaultPlan>,
    counters: FaultCounters,
    /// The file whose writes are logged, and its log (see
    /// [`FaultyStorage::log_writes_to`]).
    write_log: Mutex<Option<WriteLog>>,
}

/// The file whose writes a [`FaultyStorage`] logs, and each write's
/// `(offset, length)` in order.
type WriteLog = (PathBuf, Vec<(u64, usize)>);

impl FaultyStorage {
    /// Wraps `inner` with an empty plan (no faults).
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            shared: Arc::default(),
        }
    }

    /// Replaces the plan and resets the counters.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock() = plan;
        let counters = &self.shared.counters;
        counters.writes.store(0, Ordering::SeqCst);
        counters.syncs.store(0, Ordering::SeqCst);
        counters.bytes_written.store(0, Ordering::SeqCst);
        counters.faults_injected.store(0, Ordering::SeqCst);
    }

    /// Removes every planned fault, keeping the counters.
    pub fn heal(&self) {
        *self.shared.plan.lock() = FaultPlan::default();
    }

    /// What went through so far.
    pub fn counters(&self) -> &FaultCounters {
        &self.shared.counters
    }

    /// From now on records the offset and length of every write attempted
    /// on `path` (files opened before this call included), replacing any
    /// earlier log.
    pub fn log_writes_to(&self, path: &Path) {
        *self.shared.write_log.lock() = Some((path.to_path_buf(), Vec::new()));
    }

    /// Takes the writes logged since [`FaultyStorage::log_writes_to`] or the
    /// previous take, in order: `(offset, length)`; empty when none is
    /// logged.
    pub fn take_logged_writes(&self) -> Vec<(u64, usize)> {
        self.shared
            .write_log
            .lock()
            .as_mut()
            .map(|(_, log)| std::mem::take(log))
            .unwrap_or_default()
    }
}

impl FaultShared {
    fn injected(&self, err: io::Error) -> io::Error {
        self.counters.faults_injected.fetch_add(1, Ordering::SeqCst);
        err
    }

    fn before_sync(&self) -> io::Result<()> {
        let number = self.counters.syncs.fetch_add(1, Ordering::SeqCst);
        if self.plan.lock().fail_sync == Some(number) {
            return Err(self.injected(io::Error::other("injected fsync failure")));
        }
        Ok(())
    }
}

impl Storage for FaultyStorage {
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = self.inner.open_file(path, create)?;
        Ok(Arc::new(FaultyFile {
            inner: file,
            shared: Arc::clone(&self.shared),
            path: path.to_path_buf(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.shared.before_sync()?;
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    shared: Arc<FaultShared>,
    path: PathBuf,
}

impl StorageFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let counters = &self.shared.counters;
        let number = counters.writes.fetch_add(1, Ordering::SeqCst);
        if let Some((path, log)) = self.shared.write_log.lock().as_mut() {
            if *path == self.path {
                log.push((offset, buf.len()));
            }
        }
        let plan = self.shared.plan.lock().clone();
        if plan.fail_write == Some(number) {
            return Err(self
                .shared
                .injected(io::Error::other("injected write failure")));
        }
        if let Some(limit) = plan.disk_full_after_bytes {
            if counters.bytes_written() + buf.len() as u64 > limit {
                return Err(self
                    .shared
                    .injected(io::Error::from(io::ErrorKind::StorageFull)));
            }
        }
        if let Some((tear_number, keep)) = plan.tear_write {
            if tear_number == number {
                let keep = keep.min(buf.len());
                self.inner.write_all_at(&buf[..keep], offset)?;
                counters
                    .bytes_written
                    .fetch_add(keep as u64, Ordering::SeqCst);
                return Err(self
                    .shared
                    .injected(io::Error::other("injected torn write")));
            }
        }
        self.inner.write_all_at(buf, offset)?;
        counters
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.shared.before_sync()?;
        self.inner.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
}

/// A tiny deterministic generator for crash choices (no dependency needed).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        PathBuf::from("/db").join(name)
    }

    #[test]
    fn crash_drops_unsynced_writes() {
        let storage = MemStorage::new();
        let file = storage.open_file(&path("a"), true).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"world", 5).unwrap();
        storage.crash(CrashMode::DropUnsynced);
        assert!(file.len().is_err(), "old handles die with the process");
        let reopened = storage.open_file(&path("a"), false).unwrap();
        assert_eq!(reopened.len().unwrap(), 5);
        let mut buf = [0u8; 5];
        reopened.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn kill_keeps_unsynced_writes() {
        let storage = MemStorage::new();
        let file = storage.open_file(&path("a"), true).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        storage.crash(CrashMode::KeepUnsynced);
        let reopened = storage.open_file(&path("a"), false).unwrap();
        assert_eq!(reopened.len().unwrap(), 5);
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_writes() {
        for seed in 0..50 {
            let storage = MemStorage::new();
            let file = storage.open_file(&path("a"), true).unwrap();
            file.write_all_at(&[1u8; 8], 0).unwrap();
            file.write_all_at(&[2u8; 8], 8).unwrap();
            storage.crash(CrashMode::TearUnsynced { seed });
            let bytes = storage.file_bytes(&path("a")).unwrap();
            // Whatever survived is a prefix of the write sequence.
            let ones = bytes.iter().take(8).take_while(|&&b| b == 1).count();
            assert!(bytes.len() <= 16);
            if bytes.len() > 8 {
                assert_eq!(ones, 8);
                assert!(bytes[8..].iter().all(|&b| b == 2));
            }
        }
    }

    #[test]
    fn faulty_storage_fails_the_planned_operations() {
        let storage = FaultyStorage::new(Arc::new(MemStorage::new()));
        storage.set_plan(FaultPlan {
            fail_write: Some(1),
            fail_sync: Some(0),
            ..FaultPlan::default()
        });
        let file = storage.open_file(&path("a"), true).unwrap();
        file.write_all_at(b"ok", 0).unwrap();
        assert!(file.write_all_at(b"no", 2).is_err());
        assert!(file.sync_data().is_err());
        file.sync_data().unwrap();
        assert_eq!(storage.counters().faults_injected(), 2);
    }

    #[test]
    fn faulty_storage_logs_the_writes_of_one_file_until_taken() {
        let storage = FaultyStorage::new(Arc::new(MemStorage::new()));
        let a = storage.open_file(&path("a"), true).unwrap();
        let b = storage.open_file(&path("b"), true).unwrap();
        a.write_all_at(b"before", 0).unwrap();
        assert!(
            storage.take_logged_writes().is_empty(),
            "nothing logged yet"
        );
        storage.log_writes_to(&path("a"));
        a.write_all_at(b"xyz", 8).unwrap();
        b.write_all_at(b"other", 0).unwrap();
        a.write_all_at(b"q", 100).unwrap();
        assert_eq!(storage.take_logged_writes(), vec![(8, 3), (100, 1)]);
        assert!(storage.take_logged_writes().is_empty(), "taken");
        storage.set_plan(FaultPlan {
            fail_write: Some(0),
            ..FaultPlan::default()
        });
        assert!(a.write_all_at(b"no", 4).is_err());
        assert_eq!(storage.take_logged_writes(), vec![(4, 2)], "attempts too");
    }

    #[test]
    fn disk_full_reports_storage_full() {
        let storage = FaultyStorage::new(Arc::new(MemStorage::new()));
        storage.set_plan(FaultPlan {
            disk_full_after_bytes: Some(4),
            ..FaultPlan::default()
        });
        let file = storage.open_file(&path("a"), true).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        let err = file.write_all_at(b"de", 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn file_storage_reads_through_the_map_after_growth() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileStorage.open_file(&dir.path().join("f"), true).unwrap();
        file.write_all_at(&[7u8; 4096], 0).unwrap();
        let mut buf = [0u8; 16];
        file.read_exact_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [7u8; 16]);
        file.write_all_at(&[9u8; 4096], 4096).unwrap();
        file.read_exact_at(&mut buf, 5000).unwrap();
        assert_eq!(buf, [9u8; 16]);
        file.write_all_at(&[3u8; 16], 100).unwrap();
        file.read_exact_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [3u8; 16], "pwrite is visible through the map");
        assert!(file.read_exact_at(&mut buf, 8190).is_err());
    }

    #[test]
    fn second_lock_on_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileStorage.open_file(&dir.path().join("f"), true).unwrap();
        let second = FileStorage.open_file(&dir.path().join("f"), true).unwrap();
        assert!(first.try_lock_exclusive().unwrap());
        assert!(!second.try_lock_exclusive().unwrap());
    }
}
