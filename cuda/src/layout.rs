//! The flat layout a [`MergeBatch`] takes on its way to the GPU.
//!
//! A batch is shipped in chunks of consecutive page slots. One chunk's
//! "meta" region is a single byte buffer (copied host → device in one
//! transfer, from pinned memory), little-endian, laid out as:
//!
//! ```text
//! offset 0                 run_starts: u32 × (pages + 1)   page i's runs are runs[run_starts[i] .. run_starts[i + 1]]
//! runs_offset (16-aligned) runs: GpuRun × run_count         8 bytes each, see GpuRun
//! payload_offset (16-al.)  payload: the runs' bytes         run r's bytes at payload[r.payload_offset ..][.. r.len]
//! ```
//!
//! Per page, runs are listed delta after delta in increasing epoch order, and
//! within a delta by increasing offset (the delta's own order), so applying
//! them in list order is exactly the CPU fold.
//!
//! Co-alignment: a run of at least [`VECTOR_MIN_RUN_BYTES`] bytes gets its
//! payload placed so that `payload_offset ≡ slot * page_len + page_offset
//! (mod 16)`: since the device buffers start 256-byte aligned, source and
//! destination then share their alignment and the kernel can copy whole
//! 16-byte chunks with one vector load. Shorter runs are packed with no
//! padding. The kernel checks alignment itself, so the padding is only a speed
//! matter, never a correctness one.

use std::ops::Range;

use mmsb_engine::merge::MergeBatch;

use crate::error::GpuError;

/// Bytes of one vector access in the kernel and of the co-alignment unit.
pub const CHUNK_BYTES: usize = 16;

/// Runs at least this long get co-aligned payload (see the module docs).
pub const VECTOR_MIN_RUN_BYTES: usize = 16;

/// Bytes of one [`GpuRun`] in the meta region.
pub const RUN_DESC_BYTES: usize = 8;

/// Largest payload region one chunk may carry: run payload offsets are `u32`.
pub const MAX_CHUNK_PAYLOAD_BYTES: u64 = u32::MAX as u64;

/// One run as the kernel reads it (8 bytes, little-endian):
/// `payload_offset: u32, page_offset: u16, len_minus_one: u16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuRun {
    /// Offset of the run's bytes in the chunk's payload region.
    pub payload_offset: u32,
    /// Offset of the run in its page (pages are at most 64 KiB).
    pub page_offset: u16,
    /// Length minus one (runs are never empty; a run may be 64 KiB long).
    pub len_minus_one: u16,
}

impl GpuRun {
    /// Length in bytes.
    pub fn len(self) -> usize {
        self.len_minus_one as usize + 1
    }

    /// Always false: runs are never empty (kept for API symmetry with `len`).
    pub fn is_empty(self) -> bool {
        false
    }

    /// Writes the 8-byte encoding.
    pub fn encode(self, out: &mut [u8; RUN_DESC_BYTES]) {
        out[0..4].copy_from_slice(&self.payload_offset.to_le_bytes());
        out[4..6].copy_from_slice(&self.page_offset.to_le_bytes());
        out[6..8].copy_from_slice(&self.len_minus_one.to_le_bytes());
    }

    /// Reads the 8-byte encoding.
    pub fn decode(bytes: &[u8; RUN_DESC_BYTES]) -> Self {
        GpuRun {
            payload_offset: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            page_offset: u16::from_le_bytes([bytes[4], bytes[5]]),
            len_minus_one: u16::from_le_bytes([bytes[6], bytes[7]]),
        }
    }
}

/// Where each part of one chunk's meta region sits, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Pages in the chunk.
    pub pages: usize,
    /// Runs in the chunk.
    pub runs: usize,
    /// Offset of the run descriptors.
    pub runs_offset: usize,
    /// Offset of the payload region.
    pub payload_offset: usize,
    /// Payload bytes including alignment padding.
    pub payload_len: usize,
    /// Payload bytes excluding padding (what the deltas change).
    pub payload_useful: usize,
    /// Total bytes of the meta region (16-aligned).
    pub total_len: usize,
}

impl ChunkLayout {
    /// Bytes of run descriptors plus run starts: the layout's overhead.
    pub fn index_bytes(&self) -> usize {
        self.payload_offset
    }
}

/// Rounds `value` up to a multiple of [`CHUNK_BYTES`].
pub fn align16(value: usize) -> usize {
    value.div_ceil(CHUNK_BYTES) * CHUNK_BYTES
}

/// Padding to put before a run's payload at `cursor` so that it is
/// co-aligned with its destination byte `dest` (see the module docs).
fn padding_for(cursor: usize, dest: usize, len: usize) -> usize {
    if len < VECTOR_MIN_RUN_BYTES {
        return 0;
    }
    (dest % CHUNK_BYTES + CHUNK_BYTES - cursor % CHUNK_BYTES) % CHUNK_BYTES
}

/// Splits the batch's slots into chunks of at most `max_pages` pages whose
/// meta region fits in `max_meta_bytes` (an upper bound is used: each run may
/// add up to 15 bytes of padding). A single page always forms a chunk, even
/// when it alone exceeds `max_meta_bytes`.
pub fn plan_chunks(
    batch: &MergeBatch<'_>,
    max_pages: usize,
    max_meta_bytes: usize,
) -> Vec<Range<usize>> {
    debug_assert!(max_pages > 0);
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for slot in 0..batch.len() {
        let page_bytes = page_meta_bound(batch, slot);
        let pages = slot - start;
        if pages > 0 && (pages >= max_pages || bytes + page_bytes > max_meta_bytes) {
            chunks.push(start..slot);
            start = slot;
            bytes = 0;
        }
        bytes += page_bytes;
    }
    if start < batch.len() {
        chunks.push(start..batch.len());
    }
    chunks
}

/// An upper bound of the meta bytes page `slot` adds to its chunk.
fn page_meta_bound(batch: &MergeBatch<'_>, slot: usize) -> usize {
    let chain = batch.chain(slot).unwrap_or(&[]);
    let (runs, bytes) = chain.iter().fold((0usize, 0usize), |(runs, bytes), entry| {
        (
            runs + entry.delta.run_count(),
            bytes + entry.delta.changed_len(),
        )
    });
    4 + runs * (RUN_DESC_BYTES + CHUNK_BYTES - 1) + bytes
}

/// Walks the runs of `slots` in kernel order: `on_page(page, first_run)` at
/// each page's start, `on_run(run_index, descriptor, bytes)` for each run.
/// Returns the chunk's layout.
fn walk<P, F>(
    batch: &MergeBatch<'_>,
    slots: Range<usize>,
    mut on_page: P,
    mut on_run: F,
) -> Result<ChunkLayout, GpuError>
where
    P: FnMut(usize, usize),
    F: FnMut(usize, GpuRun, &[u8]),
{
    let page_len = batch.page_len();
    let pages = slots.len();
    let (mut runs, mut cursor, mut useful) = (0usize, 0usize, 0usize);
    for (page, slot) in slots.enumerate() {
        on_page(page, runs);
        let chain = batch.chain(slot).unwrap_or(&[]);
        for entry in chain {
            for run in entry.delta.runs() {
                let len = run.bytes.len();
                let dest = page * page_len + run.offset as usize;
                cursor += padding_for(cursor, dest, len);
                let desc = GpuRun {
                    payload_offset: u32::try_from(cursor).map_err(|_| payload_too_large(cursor))?,
                    page_offset: u16::try_from(run.offset).map_err(|_| {
                        GpuError::Unsupported(format!("run offset {} past 64 KiB", run.offset))
                    })?,
                    len_minus_one: u16::try_from(len.saturating_sub(1)).map_err(|_| {
                        GpuError::Unsupported(format!("run of {len} bytes past 64 KiB"))
                    })?,
                };
                on_run(runs, desc, run.bytes);
                runs += 1;
                cursor += len;
                useful += len;
            }
        }
    }
    if cursor as u64 > MAX_CHUNK_PAYLOAD_BYTES || runs > u32::MAX as usize {
        return Err(payload_too_large(cursor));
    }
    let runs_offset = align16(4 * (pages + 1));
    let payload_offset = align16(runs_offset + runs * RUN_DESC_BYTES);
    Ok(ChunkLayout {
        pages,
        runs,
        runs_offset,
        payload_offset,
        payload_len: cursor,
        payload_useful: useful,
        total_len: align16(payload_offset + cursor),
    })
}

fn payload_too_large(bytes: usize) -> GpuError {
    GpuError::Unsupported(format!(
        "chunk payload of {bytes} bytes exceeds {MAX_CHUNK_PAYLOAD_BYTES}"
    ))
}

/// Computes the layout of `slots` without writing anything.
pub fn measure_chunk(batch: &MergeBatch<'_>, slots: Range<usize>) -> Result<ChunkLayout, GpuError> {
    walk(batch, slots, |_, _| {}, |_, _, _| {})
}

/// Writes the meta region of `slots` into `out` (at least
/// `layout.total_len` bytes, as [`measure_chunk`] returned it). Padding bytes
/// are zeroed so that the region never carries stale data.
pub fn fill_chunk(
    batch: &MergeBatch<'_>,
    slots: Range<usize>,
    layout: &ChunkLayout,
    out: &mut [u8],
) -> Result<(), GpuError> {
    if out.len() < layout.total_len {
        return Err(GpuError::Unsupported(format!(
            "staging buffer of {} bytes is smaller than the chunk's {} bytes",
            out.len(),
            layout.total_len
        )));
    }
    let out = &mut out[..layout.total_len];
    out.fill(0);
    let (starts, rest) = out.split_at_mut(layout.runs_offset);
    let (descs, payload) = rest.split_at_mut(layout.payload_offset - layout.runs_offset);
    let write_start = |starts: &mut [u8], page: usize, run: usize| {
        let at = 4 * page;
        starts[at..at + 4].copy_from_slice(&(run as u32).to_le_bytes());
    };
    let filled = walk(
        batch,
        slots,
        |page, first_run| write_start(starts, page, first_run),
        |run, desc, bytes| {
            let at = run * RUN_DESC_BYTES;
            let mut encoded = [0u8; RUN_DESC_BYTES];
            desc.encode(&mut encoded);
            descs[at..at + RUN_DESC_BYTES].copy_from_slice(&encoded);
            let from = desc.payload_offset as usize;
            payload[from..from + bytes.len()].copy_from_slice(bytes);
        },
    )?;
    if filled != *layout {
        return Err(GpuError::Unsupported(
            "batch changed between measuring and filling its layout".into(),
        ));
    }
    write_start(starts, layout.pages, layout.runs);
    Ok(())
}

/// A read-only view of one chunk's meta region (used by the CPU emulation
/// of the kernel and by tests).
#[derive(Clone, Copy, Debug)]
pub struct ChunkView<'a> {
    layout: ChunkLayout,
    meta: &'a [u8],
}

impl<'a> ChunkView<'a> {
    /// Views `meta` as laid out by `layout`; errors when it is too short.
    pub fn new(layout: ChunkLayout, meta: &'a [u8]) -> Result<Self, GpuError> {
        if meta.len() < layout.total_len {
            return Err(GpuError::Unsupported(
                "meta region shorter than its layout".into(),
            ));
        }
        Ok(ChunkView { layout, meta })
    }

    /// The layout.
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// Index range into the runs of page `page` (chunk-relative).
    pub fn page_runs(&self, page: usize) -> Range<usize> {
        let read = |i: usize| {
            let at = 4 * i;
            u32::from_le_bytes([
                self.meta[at],
                self.meta[at + 1],
                self.meta[at + 2],
                self.meta[at + 3],
            ]) as usize
        };
        read(page)..read(page + 1)
    }

    /// Run descriptor `index`.
    pub fn run(&self, index: usize) -> GpuRun {
        let at = self.layout.runs_offset + index * RUN_DESC_BYTES;
        let mut bytes = [0u8; RUN_DESC_BYTES];
        bytes.copy_from_slice(&self.meta[at..at + RUN_DESC_BYTES]);
        GpuRun::decode(&bytes)
    }

    /// The payload region.
    pub fn payload(&self) -> &'a [u8] {
        &self.meta[self.layout.payload_offset..self.layout.payload_offset + self.layout.payload_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_engine::merge::ChainEntry;
    use mmsb_wal::{CommitEpoch, Delta, DeltaRun, PageId};

    fn delta(page: u64, runs: &[(u32, &[u8])]) -> Delta {
        Delta::from_sorted_runs(
            PageId(page),
            runs.iter()
                .map(|&(offset, bytes)| DeltaRun { offset, bytes }),
        )
        .unwrap()
    }

    #[test]
    fn run_encoding_round_trips() {
        let run = GpuRun {
            payload_offset: 0xDEAD_BEEF,
            page_offset: 65535,
            len_minus_one: 65535,
        };
        let mut bytes = [0; RUN_DESC_BYTES];
        run.encode(&mut bytes);
        assert_eq!(GpuRun::decode(&bytes), run);
        assert_eq!(run.len(), 65536);
    }

    #[test]
    fn layout_lists_runs_in_epoch_order_with_co_aligned_long_runs() {
        let long = [7u8; 40];
        let older = delta(1, &[(3, &[1, 2]), (100, &long)]);
        let newer = delta(1, &[(0, &[9])]);
        let other = delta(2, &[(5, &long)]);
        let mut batch = MergeBatch::new(64 * 4).unwrap();
        batch
            .push_page(
                PageId(1),
                &[0; 256],
                [
                    ChainEntry::new(CommitEpoch(5), &newer),
                    ChainEntry::new(CommitEpoch(2), &older),
                ],
            )
            .unwrap();
        batch.push_page(PageId(3), &[0; 256], []).unwrap();
        batch
            .push_page(
                PageId(2),
                &[0; 256],
                [ChainEntry::new(CommitEpoch(1), &other)],
            )
            .unwrap();
        let layout = measure_chunk(&batch, 0..3).unwrap();
        assert_eq!((layout.pages, layout.runs), (3, 4));
        assert_eq!(layout.payload_useful, 2 + 40 + 1 + 40);
        let mut meta = vec![0xAA; layout.total_len];
        fill_chunk(&batch, 0..3, &layout, &mut meta).unwrap();
        let view = ChunkView::new(layout, &meta).unwrap();
        assert_eq!(view.page_runs(0), 0..3);
        assert_eq!(view.page_runs(1), 3..3);
        assert_eq!(view.page_runs(2), 3..4);
        let offsets: Vec<u16> = (0..4).map(|i| view.run(i).page_offset).collect();
        assert_eq!(offsets, [3, 100, 0, 5]);
        for (index, slot) in [(1usize, 0usize), (3, 2)] {
            let run = view.run(index);
            let dest = slot * 256 + run.page_offset as usize;
            assert_eq!(run.payload_offset as usize % 16, dest % 16);
            let from = run.payload_offset as usize;
            assert_eq!(&view.payload()[from..from + 40], &long);
        }
    }

    #[test]
    fn chunks_respect_page_and_byte_limits() {
        let deltas: Vec<Delta> = (0..10).map(|p| delta(p, &[(0, &[1; 100])])).collect();
        let mut batch = MergeBatch::new(128).unwrap();
        for (page, delta) in deltas.iter().enumerate() {
            batch
                .push_page(
                    PageId(page as u64),
                    &[0; 128],
                    [ChainEntry::new(CommitEpoch(1), delta)],
                )
                .unwrap();
        }
        assert_eq!(plan_chunks(&batch, 4, usize::MAX), [0..4, 4..8, 8..10]);
        let per_page = page_meta_bound(&batch, 0);
        assert_eq!(
            plan_chunks(&batch, 100, per_page * 3),
            [0..3, 3..6, 6..9, 9..10]
        );
        assert_eq!(plan_chunks(&batch, 100, 1).len(), 10);
    }
}
