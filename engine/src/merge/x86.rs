//! The x86-64 SIMD merge kernels: AVX2 (32-byte vectors) and AVX-512 (64-byte
//! vectors). Compiled only for x86-64.
//!
//! Every function here is `#[target_feature]`: calling one is `unsafe` from
//! code compiled without the feature, and the only such caller is the dispatch
//! in `kernels.rs`, which holds a `MergeKernel` whose path was checked with
//! `is_x86_feature_detected!` when it was made.
//!
//! Both kernels copy a run of `n` bytes with unaligned vector loads and stores,
//! four vectors per loop step while at least four remain, then up to three
//! more in straight-line code (a one-vector loop would be recognised by LLVM
//! as a copy idiom and become a `memcpy` call). What is left over (fewer
//! bytes than a vector) is written
//! - by AVX2: with one vector that ends exactly at the run's end and overlaps
//!   bytes already written (same source bytes, so the result is unchanged);
//! - by AVX-512: with one `vmovdqu8` load and store under a byte mask
//!   (`_mm512_maskz_loadu_epi8` / `_mm512_mask_storeu_epi8`), which neither
//!   reads nor writes a byte outside the run.
//!
//! Runs shorter than one vector take two overlapping moves of the widest size
//! that fits (32, 16, 8, 4 or 2 bytes) on both paths. AVX-512 could use the
//! masked move for them too, but on the Zen 4 machine this was developed on
//! the masked load and store per short run made sparse merges (8..64-byte
//! runs) about a quarter slower in a development A/B (see docs/merge.md).
//!
//! No kernel touches a byte outside `[offset, offset + len)` of the page or
//! outside the run's payload.

use std::arch::x86_64::{
    __m128i, __m256i, __m512i, __mmask64, _mm256_loadu_si256, _mm256_storeu_si256,
    _mm512_loadu_si512, _mm512_mask_storeu_epi8, _mm512_maskz_loadu_epi8, _mm512_storeu_si512,
    _mm_loadu_si128, _mm_storeu_si128,
};
use std::ptr;

use mmsb_wal::Delta;

/// Bytes in one AVX2 vector.
const AVX2_VECTOR_BYTES: usize = 32;
/// Bytes in one AVX-512 vector.
const AVX512_VECTOR_BYTES: usize = 64;
/// Vectors moved per step of the unrolled main loops.
const UNROLL_VECTORS: usize = 4;

/// Copies `len < 32` bytes from `from` to `out` with at most two overlapping
/// moves of 16, 8, 4 or 2 bytes (or one byte). A macro, not a function, so
/// that it is inlined into each `#[target_feature]` kernel: such functions
/// cannot be `#[inline(always)]`, and an out-of-line call per run costs about
/// a third of the short-run throughput.
///
/// Safety: as for [`copy_two_overlapping`], with `len < 32`.
macro_rules! copy_short {
    ($out:expr, $from:expr, $len:expr) => {{
        let (out, from, len): (*mut u8, *const u8, usize) = ($out, $from, $len);
        debug_assert!(len < 32);
        if len >= 16 {
            let head = _mm_loadu_si128(from.cast::<__m128i>());
            let tail = _mm_loadu_si128(from.add(len - 16).cast::<__m128i>());
            _mm_storeu_si128(out.cast::<__m128i>(), head);
            _mm_storeu_si128(out.add(len - 16).cast::<__m128i>(), tail);
        } else if len >= 8 {
            copy_two_overlapping::<u64>(out, from, len);
        } else if len >= 4 {
            copy_two_overlapping::<u32>(out, from, len);
        } else if len >= 2 {
            copy_two_overlapping::<u16>(out, from, len);
        } else if len == 1 {
            *out = *from;
        }
    }};
}

/// Writes every run of `delta` into `page` with AVX2 moves.
///
/// The caller has checked `delta.extent() <= page.len()`; a run past the page
/// would hit a slice bounds check, never memory outside the page.
#[target_feature(enable = "avx2")]
pub(super) fn apply_runs_avx2(page: &mut [u8], delta: &Delta) {
    for run in delta.runs() {
        copy_avx2(&mut page[run.offset as usize..run.end()], run.bytes);
    }
}

/// Writes every run of `delta` into `page` with AVX-512 moves.
///
/// Same contract as [`apply_runs_avx2`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn apply_runs_avx512(page: &mut [u8], delta: &Delta) {
    for run in delta.runs() {
        copy_avx512(&mut page[run.offset as usize..run.end()], run.bytes);
    }
}

/// Copies `src` into `dst` (equal lengths; the shorter one bounds the copy).
#[target_feature(enable = "avx2")]
#[inline]
fn copy_avx2(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let len = dst.len().min(src.len());
    let (out, from) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY (for every block below): `out` is valid for `len` byte writes and
    // `from` for `len` byte reads, the two do not overlap (`dst` is `&mut`),
    // and every access below lies in `[0, len)`: the loop stops four vectors
    // before `len`, each straight-line store after it runs only when `rest`
    // covers it, the last one starts at `len - 32` with `len >= 32`, and
    // `copy_short!` gets `len < 32`. All loads and stores are unaligned forms.
    if len >= AVX2_VECTOR_BYTES {
        let step = AVX2_VECTOR_BYTES * UNROLL_VECTORS;
        let mut at = 0;
        while at + step <= len {
            unsafe {
                let v0 = load32(from.add(at));
                let v1 = load32(from.add(at + 32));
                let v2 = load32(from.add(at + 64));
                let v3 = load32(from.add(at + 96));
                store32(out.add(at), v0);
                store32(out.add(at + 32), v1);
                store32(out.add(at + 64), v2);
                store32(out.add(at + 96), v3);
            }
            at += step;
        }
        // Fewer than four vectors are left: straight-line code, not a loop
        // (LLVM turns a one-vector copy loop into a `memcpy` call). The last
        // store ends exactly at `len` and may overlap bytes already written.
        let rest = len - at;
        unsafe {
            if rest > AVX2_VECTOR_BYTES {
                store32(out.add(at), load32(from.add(at)));
            }
            if rest > 2 * AVX2_VECTOR_BYTES {
                store32(out.add(at + 32), load32(from.add(at + 32)));
            }
            if rest > 3 * AVX2_VECTOR_BYTES {
                store32(out.add(at + 64), load32(from.add(at + 64)));
            }
            if rest > 0 {
                let last = len - AVX2_VECTOR_BYTES;
                store32(out.add(last), load32(from.add(last)));
            }
        }
    } else {
        unsafe { copy_short!(out, from, len) };
    }
}

/// Copies `src` into `dst` (equal lengths; the shorter one bounds the copy).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn copy_avx512(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    let len = dst.len().min(src.len());
    let (out, from) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY (for every block below): `out` is valid for `len` byte writes and
    // `from` for `len` byte reads, they do not overlap, and every full-vector
    // access lies in `[0, len)`: short runs move `[0, 32)` and
    // `[len - 32, len)` with `len >= 32`, or go to `copy_short!` with
    // `len < 32`; the loop stops four vectors before `len` and each
    // straight-line store runs only when `rest` covers it. The masked tail
    // enables only the `len - at < 64` bytes left, and a masked-off byte is
    // neither read nor written (nor can it fault).
    if len < AVX512_VECTOR_BYTES {
        if len >= AVX2_VECTOR_BYTES {
            unsafe {
                let last = len - AVX2_VECTOR_BYTES;
                let head = load32(from);
                let tail = load32(from.add(last));
                store32(out, head);
                store32(out.add(last), tail);
            }
        } else {
            unsafe { copy_short!(out, from, len) };
        }
        return;
    }
    let step = AVX512_VECTOR_BYTES * UNROLL_VECTORS;
    let mut at = 0;
    while at + step <= len {
        unsafe {
            let v0 = load64(from.add(at));
            let v1 = load64(from.add(at + 64));
            let v2 = load64(from.add(at + 128));
            let v3 = load64(from.add(at + 192));
            store64(out.add(at), v0);
            store64(out.add(at + 64), v1);
            store64(out.add(at + 128), v2);
            store64(out.add(at + 192), v3);
        }
        at += step;
    }
    // Fewer than four vectors are left: straight-line code, not a loop
    // (LLVM turns a one-vector copy loop into a `memcpy` call).
    let rest = len - at;
    unsafe {
        if rest >= AVX512_VECTOR_BYTES {
            store64(out.add(at), load64(from.add(at)));
        }
        if rest >= 2 * AVX512_VECTOR_BYTES {
            store64(out.add(at + 64), load64(from.add(at + 64)));
        }
        if rest >= 3 * AVX512_VECTOR_BYTES {
            store64(out.add(at + 128), load64(from.add(at + 128)));
        }
    }
    let at = at + rest / AVX512_VECTOR_BYTES * AVX512_VECTOR_BYTES;
    let left = len - at;
    if left > 0 {
        let mask: __mmask64 = (1u64 << left) - 1;
        unsafe {
            let tail = _mm512_maskz_loadu_epi8(mask, from.add(at).cast::<i8>());
            _mm512_mask_storeu_epi8(out.add(at).cast::<i8>(), mask, tail);
        }
    }
}

/// Loads 32 bytes from `from` (any alignment).
///
/// # Safety
/// `from..from + 32` must be readable.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load32(from: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu needs no alignment.
    unsafe { _mm256_loadu_si256(from.cast::<__m256i>()) }
}

/// Stores 32 bytes at `out` (any alignment).
///
/// # Safety
/// `out..out + 32` must be writable.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store32(out: *mut u8, value: __m256i) {
    // SAFETY: the caller guarantees 32 writable bytes; storeu needs no alignment.
    unsafe { _mm256_storeu_si256(out.cast::<__m256i>(), value) }
}

/// Loads 64 bytes from `from` (any alignment).
///
/// # Safety
/// `from..from + 64` must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load64(from: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes; loadu needs no alignment.
    unsafe { _mm512_loadu_si512(from.cast::<__m512i>()) }
}

/// Stores 64 bytes at `out` (any alignment).
///
/// # Safety
/// `out..out + 64` must be writable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store64(out: *mut u8, value: __m512i) {
    // SAFETY: the caller guarantees 64 writable bytes; storeu needs no alignment.
    unsafe { _mm512_storeu_si512(out.cast::<__m512i>(), value) }
}

/// Copies `len` bytes, `size_of::<W>() <= len <= 2 * size_of::<W>()`, as two
/// possibly overlapping unaligned `W` moves: one at the start, one at the end.
///
/// # Safety
/// `out` must be valid for `len` byte writes, `from` for `len` byte reads,
/// the two must not overlap, and `len` must lie in the range above.
#[inline(always)]
unsafe fn copy_two_overlapping<W: Copy>(out: *mut u8, from: *const u8, len: usize) {
    let width = size_of::<W>();
    debug_assert!(width <= len && len <= 2 * width);
    // SAFETY: both moves lie in `[0, len)` because `width <= len`; unaligned
    // reads and writes need no alignment; the caller guarantees validity.
    unsafe {
        let head = ptr::read_unaligned(from.cast::<W>());
        let tail = ptr::read_unaligned(from.add(len - width).cast::<W>());
        ptr::write_unaligned(out.cast::<W>(), head);
        ptr::write_unaligned(out.add(len - width).cast::<W>(), tail);
    }
}
