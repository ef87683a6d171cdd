//! Target over the checkpoint manifest (`mmsb_wal::manifest`): decoding
//! arbitrary bytes, bytes resealed with a correct SHA-256 (so the fields
//! behind the digest are reached), and damaged encodings of real manifests.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use mmsb_wal::manifest::{manifest_path, CheckpointManifest, MANIFEST_FORMAT_VERSION};
use mmsb_wal::storage::MemStorage;
use mmsb_wal::{CommitEpoch, WalError};
use sha2::{Digest, Sha256};

use crate::db_util::DB_PATH;

/// Input of [`checkpoint_manifest`].
#[derive(Debug, Arbitrary)]
enum ManifestInput {
    /// Bytes decoded as they are.
    Raw(Vec<u8>),
    /// Bytes with their correct SHA-256 appended.
    Resealed(Vec<u8>),
    /// A real manifest, encoded, then one byte flipped (if `mask` is not 0).
    Flipped {
        page_size: u32,
        checkpoint_seq: u64,
        checkpoint_epoch: u64,
        page_crcs: Vec<u32>,
        offset: u16,
        mask: u8,
    },
}

/// Fuzz target `checkpoint_manifest`: `decode` answers `Ok` or
/// `Corrupted`, never a panic; whatever decodes re-encodes to the same
/// bytes; reading the file through the storage agrees with `decode`; a real
/// manifest round-trips, and any one-byte change to it is refused.
pub fn checkpoint_manifest(data: &[u8]) {
    let Ok(input) = ManifestInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        ManifestInput::Raw(bytes) => check_bytes(&bytes),
        ManifestInput::Resealed(mut bytes) => {
            let digest = Sha256::digest(&bytes);
            bytes.extend_from_slice(&digest);
            check_bytes(&bytes);
        }
        ManifestInput::Flipped {
            page_size,
            checkpoint_seq,
            checkpoint_epoch,
            page_crcs,
            offset,
            mask,
        } => {
            let manifest = CheckpointManifest {
                format_version: MANIFEST_FORMAT_VERSION,
                page_size,
                checkpoint_seq,
                checkpoint_epoch: CommitEpoch(checkpoint_epoch),
                page_count: page_crcs.len() as u64 + 1,
                page_crcs,
            };
            check_flipped(&manifest, offset, mask);
        }
    }
}

/// `manifest` round-trips; with byte `offset` XOR `mask` (when not 0) it is refused.
fn check_flipped(manifest: &CheckpointManifest, offset: u16, mask: u8) {
    let mut bytes = manifest.encode();
    match CheckpointManifest::decode(&bytes) {
        Ok(decoded) => assert_eq!(&decoded, manifest, "a manifest does not round-trip"),
        Err(err) => panic!("an encoded manifest does not decode: {err}"),
    }
    if mask != 0 {
        let at = usize::from(offset) % bytes.len();
        bytes[at] ^= mask;
        assert!(
            CheckpointManifest::decode(&bytes).is_err(),
            "a manifest with byte {at} flipped decoded"
        );
    }
    check_bytes(&bytes);
}

/// Decodes `bytes` directly and as the manifest file of a database.
fn check_bytes(bytes: &[u8]) {
    let decoded = CheckpointManifest::decode(bytes);
    match &decoded {
        Ok(manifest) => {
            assert_eq!(
                manifest.encode(),
                bytes,
                "a decoded manifest re-encodes differently"
            );
            assert_eq!(manifest.page_crcs.len() as u64 + 1, manifest.page_count);
            for page in 0..manifest.page_count.min(4) + 1 {
                let crc = manifest.page_crc(page);
                assert_eq!(crc.is_some(), page >= 1 && page < manifest.page_count);
            }
        }
        Err(err) => assert!(
            matches!(err, WalError::Corrupted { .. }),
            "a bad manifest gave an error other than Corrupted: {err}"
        ),
    }
    let storage = MemStorage::new();
    let db = Path::new(DB_PATH);
    storage.set_file_bytes(&manifest_path(db), bytes.to_vec());
    let read = CheckpointManifest::read(&storage, db);
    match (read, decoded) {
        (Ok(Some(read)), Ok(decoded)) => assert_eq!(read, decoded),
        (Err(_), Err(_)) => {}
        (read, decoded) => panic!(
            "reading the manifest file ({:?}) disagrees with decoding it ({:?})",
            read.map(|m| m.is_some()),
            decoded.map(|_| ())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_flips_are_refused() {
        let manifest = CheckpointManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            page_size: 4096,
            checkpoint_seq: 3,
            checkpoint_epoch: CommitEpoch(17),
            page_count: 4,
            page_crcs: vec![1, 2, 3],
        };
        for mask in [0u8, 1, 0x80] {
            for offset in [0u16, 9, 40, 47, 60, 500] {
                check_flipped(&manifest, offset, mask);
            }
        }
    }

    #[test]
    fn garbage_and_resealed_garbage_are_corrupted() {
        checkpoint_manifest(&[]);
        check_bytes(b"MMSBMAN1 short");
        let mut bytes = b"MMSBMAN1".to_vec();
        bytes.extend_from_slice(&[0; 32]);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        check_bytes(&bytes);
    }
}
