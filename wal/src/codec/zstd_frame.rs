//! zstd through the crate's bulk API, with one compression and one
//! decompression context cached per thread (creating a context costs more
//! than compressing a small delta), and decompression bounded by a capacity.

use std::cell::RefCell;

use zstd::bulk::{Compressor, Decompressor};

use super::CodecError;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `level` clamped into the range the linked zstd accepts.
pub(crate) fn clamp_level(level: i32) -> i32 {
    let range = zstd::compression_level_range();
    level.clamp(*range.start(), *range.end())
}

/// Compresses `src` into `dst` (cleared first) as one zstd frame.
pub(crate) fn compress(src: &[u8], level: i32, dst: &mut Vec<u8>) -> Result<(), CodecError> {
    let level = clamp_level(level);
    dst.clear();
    dst.reserve(zstd::zstd_safe::compress_bound(src.len()));
    COMPRESSOR.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => compress_cached(&mut cached, src, level, dst),
        // Only reachable through reentrancy, which this module never does.
        Err(_) => compress_fresh(src, level, dst),
    })
}

fn compress_cached(
    cached: &mut Option<(i32, Compressor<'static>)>,
    src: &[u8],
    level: i32,
    dst: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let compressor = match cached {
        Some((cached_level, compressor)) if *cached_level == level => compressor,
        _ => {
            let fresh = Compressor::new(level).map_err(compress_error)?;
            &mut cached.insert((level, fresh)).1
        }
    };
    compressor
        .compress_to_buffer(src, dst)
        .map(drop)
        .map_err(compress_error)
}

fn compress_fresh(src: &[u8], level: i32, dst: &mut Vec<u8>) -> Result<(), CodecError> {
    Compressor::new(level)
        .and_then(|mut compressor| compressor.compress_to_buffer(src, dst))
        .map(drop)
        .map_err(compress_error)
}

fn compress_error(err: std::io::Error) -> CodecError {
    CodecError::Compress(err.to_string())
}

/// Decompresses the single zstd frame `src` into `dst` (cleared first),
/// which must come out exactly `expected_len` bytes long. At most
/// `expected_len` bytes are ever allocated or written; the caller bounds
/// `expected_len`. `at` and `what` locate the frame in error messages.
pub(crate) fn decompress(
    src: &[u8],
    expected_len: usize,
    dst: &mut Vec<u8>,
    at: usize,
    what: &'static str,
) -> Result<(), CodecError> {
    dst.clear();
    // zstd writes at most the slice's length: the bound is strict even when
    // a reused buffer has more capacity.
    dst.resize(expected_len, 0);
    let window = dst.as_mut_slice();
    let result = DECOMPRESSOR.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => {
            let decompressor = match cached.as_mut() {
                Some(decompressor) => decompressor,
                None => cached.insert(Decompressor::new()?),
            };
            decompressor.decompress_to_buffer(src, window)
        }
        Err(_) => Decompressor::new()?.decompress_to_buffer(src, window),
    });
    if let Ok(len) = result {
        dst.truncate(len);
    }
    match result {
        Ok(len) if len == expected_len => Ok(()),
        Ok(len) => Err(CodecError::LengthMismatch {
            at,
            what,
            expected: expected_len,
            actual: len,
        }),
        Err(err) => Err(CodecError::Zstd {
            at,
            what,
            reason: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reuses_contexts() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let mut compressed = Vec::new();
        let mut restored = Vec::new();
        for level in [1, 1, 3, 19, 1000] {
            compress(&src, level, &mut compressed).unwrap();
            assert!(compressed.len() < src.len());
            decompress(&compressed, src.len(), &mut restored, 0, "test").unwrap();
            assert_eq!(restored, src);
        }
    }

    #[test]
    fn output_longer_than_expected_is_rejected() {
        let src = vec![7u8; 1000];
        let mut compressed = Vec::new();
        compress(&src, 1, &mut compressed).unwrap();
        let mut restored = Vec::new();
        let err = decompress(&compressed, 999, &mut restored, 5, "frame").unwrap_err();
        assert!(matches!(
            err,
            CodecError::Zstd {
                at: 5,
                what: "frame",
                ..
            }
        ));
    }

    #[test]
    fn output_shorter_than_expected_is_rejected() {
        let mut compressed = Vec::new();
        compress(&[1, 2, 3], 1, &mut compressed).unwrap();
        let mut restored = Vec::new();
        let err = decompress(&compressed, 10, &mut restored, 0, "frame").unwrap_err();
        assert_eq!(
            err,
            CodecError::LengthMismatch {
                at: 0,
                what: "frame",
                expected: 10,
                actual: 3
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut restored = Vec::new();
        let err = decompress(&[1, 2, 3, 4, 5], 10, &mut restored, 0, "frame").unwrap_err();
        assert!(matches!(err, CodecError::Zstd { .. }));
    }
}
