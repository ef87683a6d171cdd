//! The checkpoint manifest: the file `PATH-manifest` beside the data file
//! that names the checkpoint the data pages hold and carries the trailer CRC32
//! of every sealed page as of that checkpoint, sealed by a SHA-256.
//!
//! The SHA-256 covers the manifest's fields and its per-page CRC table; each
//! page is covered transitively, through its CRC32 in that table (the pages
//! themselves are not hashed). Byte layout (little-endian; see docs/format.md):
//!
//! ```text
//! [0..8)    magic "MMSBMAN1"
//! [8..12)   format_version u32
//! [12..16)  page_size u32
//! [16..24)  checkpoint_seq u64
//! [24..32)  checkpoint_epoch u64
//! [32..40)  page_count u64
//! [40..40+4(page_count-1))  trailer CRC32 of pages 1..page_count, u32 each
//! [..+32)   SHA-256 of every byte before it
//! ```
//!
//! The file is replaced atomically: written to `PATH-manifest.tmp`, synced,
//! renamed over `PATH-manifest`, and the directory synced
//! ([`CheckpointManifest::write_atomically`]).
//!
//! This module knows nothing of how pages are laid out or sealed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, WalError};
use crate::ids::CommitEpoch;
use crate::storage::Storage;

/// Magic at the start of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"MMSBMAN1";
/// Version of the manifest layout this build writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Bytes before the per-page CRC table.
pub const MANIFEST_HEADER_LEN: usize = 40;
/// Bytes of the SHA-256 that ends the manifest.
pub const MANIFEST_DIGEST_LEN: usize = 32;
/// Suffix appended to the data file's name to name its manifest.
pub const MANIFEST_SUFFIX: &str = "-manifest";
/// Suffix of the temporary file a new manifest is written to before the rename.
pub const MANIFEST_TMP_SUFFIX: &str = "-manifest.tmp";
/// Largest manifest this build reads (a 64 GiB table: 2^34 pages); anything
/// longer is damage, not data.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 36;
/// The name a decoded-from-memory manifest error reports as its path.
const UNNAMED_MANIFEST: &str = "<checkpoint manifest>";

/// Path of the manifest that belongs to the data file at `db_path`
/// (`app.mmsb` → `app.mmsb-manifest`).
pub fn manifest_path(db_path: &Path) -> PathBuf {
    sibling(db_path, MANIFEST_SUFFIX)
}

/// Path of the temporary file a new manifest is written to before it is
/// renamed over [`manifest_path`].
pub fn manifest_tmp_path(db_path: &Path) -> PathBuf {
    sibling(db_path, MANIFEST_TMP_SUFFIX)
}

fn sibling(db_path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = db_path
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    db_path.with_file_name(name)
}

/// What one checkpoint wrote: its sequence number and epoch, the shape of the
/// data file, and the trailer CRC32 of every sealed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointManifest {
    /// Manifest layout version ([`MANIFEST_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Bytes per page of the data file.
    pub page_size: u32,
    /// The checkpoint sequence number the data file header carries.
    pub checkpoint_seq: u64,
    /// Every commit up to this epoch is in the data pages.
    pub checkpoint_epoch: CommitEpoch,
    /// Pages `0..page_count` exist (page 0 is the header and has no CRC here).
    pub page_count: u64,
    /// Trailer CRC32 of pages `1..page_count`, in page order:
    /// `page_crcs[i]` belongs to page `i + 1`.
    pub page_crcs: Vec<u32>,
}

impl CheckpointManifest {
    /// Encoded length of a manifest covering `page_count` pages, or `None`
    /// when it would not fit in memory.
    pub fn encoded_len(page_count: u64) -> Option<usize> {
        let pages = usize::try_from(page_count.checked_sub(1)?).ok()?;
        pages
            .checked_mul(4)?
            .checked_add(MANIFEST_HEADER_LEN + MANIFEST_DIGEST_LEN)
    }

    /// The stored CRC32 of `page` (1-based page id), or `None` for page 0 and
    /// pages past `page_count`.
    pub fn page_crc(&self, page: u64) -> Option<u32> {
        let index = usize::try_from(page.checked_sub(1)?).ok()?;
        self.page_crcs.get(index).copied()
    }

    /// The manifest as bytes, sealed with its SHA-256.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.page_count >= 1, "page 0 always exists");
        debug_assert_eq!(
            self.page_crcs.len() as u64,
            self.page_count.saturating_sub(1),
            "one CRC per data page"
        );
        let mut out = Vec::with_capacity(
            MANIFEST_HEADER_LEN + 4 * self.page_crcs.len() + MANIFEST_DIGEST_LEN,
        );
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&self.format_version.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.checkpoint_seq.to_le_bytes());
        out.extend_from_slice(&self.checkpoint_epoch.get().to_le_bytes());
        out.extend_from_slice(&self.page_count.to_le_bytes());
        for crc in &self.page_crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Decodes and verifies a manifest held in memory. Every failure is
    /// [`WalError::Corrupted`] with the byte offset and the reason.
    pub fn decode(bytes: &[u8]) -> Result<CheckpointManifest> {
        Self::decode_at(Path::new(UNNAMED_MANIFEST), bytes)
    }

    /// Like [`CheckpointManifest::decode`], naming `path` in its errors.
    pub fn decode_at(path: &Path, bytes: &[u8]) -> Result<CheckpointManifest> {
        let corrupted = |offset: usize, reason: String| WalError::Corrupted {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < MANIFEST_HEADER_LEN + MANIFEST_DIGEST_LEN {
            return Err(corrupted(
                bytes.len(),
                format!("manifest of {} bytes is truncated", bytes.len()),
            ));
        }
        if bytes[0..8] != MANIFEST_MAGIC {
            return Err(corrupted(0, "bad manifest magic".into()));
        }
        let body_len = bytes.len() - MANIFEST_DIGEST_LEN;
        let digest = Sha256::digest(&bytes[..body_len]);
        if digest.as_slice() != &bytes[body_len..] {
            return Err(corrupted(body_len, "manifest SHA-256 mismatch".into()));
        }
        let format_version = read_u32(bytes, 8);
        if format_version != MANIFEST_FORMAT_VERSION {
            return Err(corrupted(
                8,
                format!(
                    "manifest format version {format_version} \
                     (this build reads {MANIFEST_FORMAT_VERSION})"
                ),
            ));
        }
        let page_count = read_u64(bytes, 32);
        if Self::encoded_len(page_count) != Some(bytes.len()) {
            return Err(corrupted(
                32,
                format!(
                    "page count {page_count} does not match a manifest of {} bytes",
                    bytes.len()
                ),
            ));
        }
        let page_crcs = bytes[MANIFEST_HEADER_LEN..body_len]
            .chunks_exact(4)
            .map(|word| read_u32(word, 0))
            .collect();
        Ok(CheckpointManifest {
            format_version,
            page_size: read_u32(bytes, 12),
            checkpoint_seq: read_u64(bytes, 16),
            checkpoint_epoch: CommitEpoch(read_u64(bytes, 24)),
            page_count,
            page_crcs,
        })
    }

    /// Reads and verifies the manifest of the data file at `db_path`;
    /// `Ok(None)` when there is none.
    pub fn read(storage: &dyn Storage, db_path: &Path) -> Result<Option<CheckpointManifest>> {
        let path = manifest_path(db_path);
        let context = || format!("read manifest {}", path.display());
        if !storage
            .exists(&path)
            .map_err(|err| WalError::io(context(), err))?
        {
            return Ok(None);
        }
        let file = storage
            .open_file(&path, false)
            .map_err(|err| WalError::io(context(), err))?;
        let len = file.len().map_err(|err| WalError::io(context(), err))?;
        if len > MAX_MANIFEST_BYTES {
            return Err(WalError::Corrupted {
                path,
                offset: 0,
                reason: format!("manifest of {len} bytes exceeds {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(WalError::TooLarge {
                what: "checkpoint manifest",
                len,
                limit: usize::MAX as u64,
            });
        };
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|err| WalError::io(context(), err))?;
        Self::decode_at(&path, &bytes).map(Some)
    }

    /// Replaces the manifest of the data file at `db_path` atomically: write
    /// `PATH-manifest.tmp`, fsync it, rename it over `PATH-manifest`, fsync
    /// the directory. A crash at any point leaves either the old or the new
    /// manifest under the final name (a stale `.tmp` is overwritten next time).
    pub fn write_atomically(&self, storage: &dyn Storage, db_path: &Path) -> Result<()> {
        let tmp = manifest_tmp_path(db_path);
        let bytes = self.encode();
        let file = storage
            .open_file(&tmp, true)
            .map_err(|err| WalError::io("create manifest temp file", err))?;
        file.set_len(0)
            .map_err(|err| WalError::io("reset manifest temp file", err))?;
        file.write_all_at(&bytes, 0)
            .map_err(|err| WalError::io("write manifest temp file", err))?;
        file.sync_data()
            .map_err(|err| WalError::io("sync manifest temp file", err))?;
        drop(file);
        storage
            .rename(&tmp, &manifest_path(db_path))
            .map_err(|err| WalError::io("rename manifest into place", err))?;
        let dir = db_path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        storage
            .sync_dir(dir)
            .map_err(|err| WalError::io("sync directory after manifest rename", err))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CrashMode, FaultPlan, FaultyStorage, MemStorage};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn sample(page_count: u64) -> CheckpointManifest {
        CheckpointManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            page_size: 4096,
            checkpoint_seq: 7,
            checkpoint_epoch: CommitEpoch(42),
            page_count,
            page_crcs: (1..page_count)
                .map(|p| (p as u32).wrapping_mul(0x9e37_79b9))
                .collect(),
        }
    }

    #[test]
    fn paths_are_siblings_of_the_data_file() {
        assert_eq!(
            manifest_path(Path::new("/db/app.mmsb")),
            PathBuf::from("/db/app.mmsb-manifest")
        );
        assert_eq!(
            manifest_tmp_path(Path::new("app.mmsb")),
            PathBuf::from("app.mmsb-manifest.tmp")
        );
    }

    #[test]
    fn round_trips_and_has_the_documented_length() {
        let manifest = sample(5);
        let bytes = manifest.encode();
        assert_eq!(bytes.len(), 40 + 4 * 4 + 32);
        assert_eq!(CheckpointManifest::encoded_len(5), Some(bytes.len()));
        assert_eq!(CheckpointManifest::decode(&bytes).unwrap(), manifest);
        assert_eq!(manifest.page_crc(0), None);
        assert_eq!(manifest.page_crc(1), Some(manifest.page_crcs[0]));
        assert_eq!(manifest.page_crc(5), None);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample(4).encode();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    CheckpointManifest::decode(&damaged),
                    Err(WalError::Corrupted { .. })
                ),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample(4).encode();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    CheckpointManifest::decode(&bytes[..len]),
                    Err(WalError::Corrupted { .. })
                ),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_resealed_lie_about_page_count_is_rejected() {
        let mut bytes = sample(4).encode();
        bytes.truncate(bytes.len() - MANIFEST_DIGEST_LEN);
        bytes[32..40].copy_from_slice(&9u64.to_le_bytes());
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let err = CheckpointManifest::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("page count 9"), "{err}");
    }

    #[test]
    fn write_atomically_replaces_and_survives_a_crash() {
        let storage = MemStorage::new();
        let db = Path::new("/db/app.mmsb");
        assert_eq!(CheckpointManifest::read(&storage, db).unwrap(), None);
        let first = sample(3);
        first.write_atomically(&storage, db).unwrap();
        let second = CheckpointManifest {
            checkpoint_seq: 8,
            ..sample(6)
        };
        second.write_atomically(&storage, db).unwrap();
        storage.crash(CrashMode::DropUnsynced);
        assert_eq!(
            CheckpointManifest::read(&storage, db).unwrap(),
            Some(second)
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_manifest() {
        let mem = MemStorage::new();
        let db = Path::new("/db/app.mmsb");
        let first = sample(3);
        first.write_atomically(&mem, db).unwrap();
        for plan in [
            FaultPlan {
                fail_write: Some(0),
                ..FaultPlan::default()
            },
            FaultPlan {
                tear_write: Some((0, 10)),
                ..FaultPlan::default()
            },
            FaultPlan {
                fail_sync: Some(0),
                ..FaultPlan::default()
            },
        ] {
            let faulty = FaultyStorage::new(Arc::new(mem.clone()));
            faulty.set_plan(plan);
            assert!(sample(9).write_atomically(&faulty, db).is_err());
            mem.crash(CrashMode::DropUnsynced);
            assert_eq!(
                CheckpointManifest::read(&mem, db).unwrap(),
                Some(first.clone())
            );
        }
    }

    #[test]
    fn write_atomically_works_on_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.mmsb");
        let storage = crate::storage::FileStorage;
        sample(4).write_atomically(&storage, &db).unwrap();
        let second = CheckpointManifest {
            checkpoint_seq: 9,
            ..sample(2)
        };
        second.write_atomically(&storage, &db).unwrap();
        assert!(
            !manifest_tmp_path(&db).exists(),
            "the temp file was renamed"
        );
        assert_eq!(
            CheckpointManifest::read(&storage, &db).unwrap(),
            Some(second)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CheckpointManifest::decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trips(
            seq in any::<u64>(),
            epoch in any::<u64>(),
            crcs in proptest::collection::vec(any::<u32>(), 0..64),
        ) {
            let manifest = CheckpointManifest {
                format_version: MANIFEST_FORMAT_VERSION,
                page_size: 8192,
                checkpoint_seq: seq,
                checkpoint_epoch: CommitEpoch(epoch),
                page_count: crcs.len() as u64 + 1,
                page_crcs: crcs,
            };
            prop_assert_eq!(CheckpointManifest::decode(&manifest.encode()).unwrap(), manifest);
        }
    }
}
