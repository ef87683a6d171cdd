//! A checkpoint that runs while the only dirty pages hold a commit that is
//! logged and installed but not yet durable (its TLog fsync is in progress)
//! has nothing newer to write: its epoch is the last checkpoint's. A crash
//! right then (here: its manifest write fails, then the process dies with
//! every write kept, as after `kill -9`) must leave a database that opens
//! and holds every acknowledged commit, and the in-flight one wholly or not
//! at all.
//!
//! Before the fix such a checkpoint rewrote those pages sealed at the
//! manifest's epoch with CRCs the manifest did not hold, and the next open
//! refused them: "page N holds CRC … sealed at <epoch>, the manifest expects
//! … (a lost or misplaced write)".

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use mmsb::storage::{MemStorage, Storage, StorageFile};
use mmsb::{Database, Options, PageId, PageRead, PageWrite};

/// Bytes each commit writes at the start of a page.
const WRITE_LEN: usize = 64;
/// Longest the test waits for the committing thread to reach its fsync.
const GATE_WAIT_MS: u64 = 10_000;

fn db_path() -> PathBuf {
    PathBuf::from("/unmoved/db.mmsb")
}

/// What the gate does to TLog fsyncs and manifest writes.
#[derive(Debug, Default)]
struct GateState {
    /// TLog fsyncs wait while this is set.
    hold_tlog_sync: bool,
    /// A TLog fsync is waiting.
    tlog_sync_waiting: bool,
    /// Writes of the manifest's temp file fail.
    fail_manifest: bool,
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `MemStorage` whose TLog fsyncs can be held and manifest writes failed.
#[derive(Debug)]
struct GatedStorage {
    inner: MemStorage,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    gate: Arc<Gate>,
    tlog: bool,
    manifest: bool,
}

impl Storage for GatedStorage {
    fn open_file(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let name = path.to_string_lossy();
        Ok(Arc::new(GatedFile {
            inner: self.inner.open_file(path, create)?,
            gate: Arc::clone(&self.gate),
            tlog: name.contains("-tlog/"),
            manifest: name.ends_with("-manifest.tmp"),
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
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
}

impl StorageFile for GatedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.manifest && self.gate.lock().fail_manifest {
            return Err(io::Error::other("planned manifest write failure"));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.tlog {
            let mut state = self.gate.lock();
            while state.hold_tlog_sync {
                state.tlog_sync_waiting = true;
                self.gate.changed.notify_all();
                state = self
                    .gate
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.tlog_sync_waiting = false;
        }
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        storage,
        background_workers: false,
        checkpoint_on_close: false,
        ..Options::default()
    }
}

/// Every file of the database as it is now: what a `kill -9` leaves.
fn snapshot(mem: &MemStorage) -> MemStorage {
    let copy = MemStorage::new();
    let tlog = Path::new("/unmoved/db.mmsb-tlog");
    let mut paths = mem.list_dir(Path::new("/unmoved")).unwrap();
    paths.extend(mem.list_dir(tlog).unwrap_or_default());
    for path in paths {
        if let Some(bytes) = mem.file_bytes(&path) {
            copy.set_file_bytes(&path, bytes);
        }
    }
    copy
}

/// Writes `byte` over the first `len` bytes of each page in `pages` as one
/// commit.
fn write_pages(db: &Database, pages: &[PageId], byte: u8) -> mmsb::Result<()> {
    let mut tx = db.begin_page_write()?;
    for &page in pages {
        tx.write(page, 0, &[byte; WRITE_LEN])?;
    }
    tx.commit().map(drop)
}

/// The first `WRITE_LEN` bytes of `page` as the database holds them.
fn prefix(db: &Database, page: PageId) -> Vec<u8> {
    let rx = db.begin_page_read().expect("read");
    rx.read_page(page).expect("page")[..WRITE_LEN].to_vec()
}

#[test]
fn a_crash_in_a_checkpoint_whose_epoch_did_not_move_loses_nothing() {
    let mem = MemStorage::new();
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        inner: mem.clone(),
        gate: Arc::clone(&gate),
    });
    let db: Database = options(storage).open(db_path()).unwrap();
    // Page `a` is last written back by an earlier checkpoint than page `b`,
    // so the manifest holds `a` sealed at an older epoch than its own.
    let (a, b) = {
        let mut tx = db.begin_page_write().unwrap();
        let pages = (tx.allocate_page().unwrap(), tx.allocate_page().unwrap());
        tx.commit().unwrap();
        pages
    };
    write_pages(&db, &[a, b], 1).unwrap();
    db.checkpoint().unwrap();
    write_pages(&db, &[b], 2).unwrap();
    db.checkpoint().unwrap();

    // The next commit to `a` is logged and installed (`a` is dirty), but
    // its fsync is held: it is not visible, so a checkpoint now is at the
    // epoch of the one before.
    gate.lock().hold_tlog_sync = true;
    let committer = {
        let db = db.clone();
        std::thread::spawn(move || write_pages(&db, &[a], 3))
    };
    {
        let mut state = gate.lock();
        while !state.tlog_sync_waiting {
            let (next, waited) = gate
                .changed
                .wait_timeout(state, Duration::from_millis(GATE_WAIT_MS))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state = next;
            assert!(
                !waited.timed_out(),
                "the commit never reached its TLog fsync"
            );
        }
        state.fail_manifest = true;
    }
    // Whether it writes nothing or fails at its manifest, the crash comes
    // now, with every write it made kept.
    let checkpointed = db.checkpoint();
    let crashed = snapshot(&mem);

    {
        let mut state = gate.lock();
        state.hold_tlog_sync = false;
        state.fail_manifest = false;
        gate.changed.notify_all();
    }
    committer
        .join()
        .expect("committer thread")
        .expect("the held commit completes once its fsync does");
    drop(db);

    let label = format!("after a checkpoint at an unmoved epoch ({checkpointed:?})");
    let db = options(Arc::new(crashed.clone()))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: reopen failed: {err}"));
    let got_a = prefix(&db, a);
    assert!(
        got_a == [1; WRITE_LEN] || got_a == [3; WRITE_LEN],
        "{label}: page a holds {:?}",
        &got_a[..4]
    );
    assert_eq!(prefix(&db, b), [2; WRITE_LEN], "{label}: page b");
    // It keeps working: another commit and a checkpoint, then a clean reopen.
    write_pages(&db, &[a, b], 4).unwrap_or_else(|err| panic!("{label}: {err}"));
    db.checkpoint()
        .unwrap_or_else(|err| panic!("{label}: checkpoint: {err}"));
    drop(db);
    let db = options(Arc::new(crashed))
        .open(db_path())
        .unwrap_or_else(|err| panic!("{label}: second reopen failed: {err}"));
    assert_eq!(prefix(&db, a), [4; WRITE_LEN], "{label}: page a at the end");
    assert_eq!(prefix(&db, b), [4; WRITE_LEN], "{label}: page b at the end");
}
