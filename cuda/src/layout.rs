//! The flat layout a [`MergeBatch`] takes on its way to the GPU.
//!
//! A batch is shipped in chunks of consecutive page slots. One chunk's
//! "meta" region is a single byte buffer (copied host → device in one
//! transfer, from pinned memory), little-endian, laid out as:
//!
//! ```text
//! offset 0                 pages: PageDesc × pages            16 bytes each, see PageDesc
//! runs_offset (= 16·pages) runs: GpuRun × run_count           8 bytes each, see GpuRun
//! payload_offset (16-al.)  payload: the runs' bytes           run r's bytes at payload[r.payload_offset ..][.. r.len]
//! total_len - 16           16 bytes of tail margin (zeros)
//! ```
//!
//! Per page, runs are listed delta after delta in increasing epoch order, and
//! within a delta by increasing offset (the delta's own order), so applying
//! them in list order is exactly the CPU fold. A page's runs are contiguous
//! in the run array (`first_run .. first_run + run_count`) and its payload is
//! contiguous in the payload region (`payload_start .. + payload_len`, with
//! `payload_start` a multiple of 16), so the kernel can stage a page's whole
//! payload in shared memory with a few 16-byte loads.
//!
//! Co-alignment: within a page's payload, a run of at least
//! [`VECTOR_MIN_RUN_BYTES`] bytes gets padding before it so that
//! `payload_offset ≡ page_offset (mod 16)`: a 16-byte chunk of the page that
//! the run covers whole is then one aligned 16-byte load of its source, both
//! in device memory and in shared memory. Shorter runs are packed with no
//! padding. The kernel checks alignment itself, so the padding is only a
//! speed matter, never a correctness one. Because every page's payload starts
//! 16-aligned, pages are laid out independently of each other, and a chunk is
//! measured and filled in parallel over pages.
//!
//! The tail margin lets the kernel read the 4-byte words around a run's last
//! byte without leaving the buffer.

use std::ops::Range;

use mmsb_engine::merge::{ChainEntry, MergeBatch};
use rayon::prelude::*;

use crate::error::GpuError;

/// Bytes of one vector access in the kernel and of the co-alignment unit.
pub const CHUNK_BYTES: usize = 16;

/// Runs at least this long get co-aligned payload (see the module docs).
pub const VECTOR_MIN_RUN_BYTES: usize = 16;

/// Bytes of one [`GpuRun`] in the meta region.
pub const RUN_DESC_BYTES: usize = 8;

/// Bytes of one [`PageDesc`] in the meta region.
pub const PAGE_DESC_BYTES: usize = 16;

/// Zero bytes after the payload (see the module docs).
pub const TAIL_MARGIN_BYTES: usize = 16;

/// Largest payload region one chunk may carry: run payload offsets are `u32`.
pub const MAX_CHUNK_PAYLOAD_BYTES: u64 = u32::MAX as u64 - TAIL_MARGIN_BYTES as u64;

/// Meta bytes of a chunk besides its pages' own: the tail margin and up to
/// 15 bytes of padding after the run descriptors.
const CHUNK_FIXED_META_BYTES: usize = TAIL_MARGIN_BYTES + CHUNK_BYTES - 1;

/// Pages per rayon task when a chunk is measured or filled.
const PAGES_PER_TASK: usize = 64;

/// How many pages ahead of the one being filled a fill prefetches.
const PREFETCH_AHEAD_PAGES: usize = 2;

/// Bytes of one cache line (the prefetch stride).
const CACHE_LINE_BYTES: usize = 64;

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

/// Where one page's runs and payload sit (16 bytes, little-endian, four
/// `u32` in field order; the kernel reads it with one 16-byte load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageDesc {
    /// Index of the page's first run in the chunk's run array.
    pub first_run: u32,
    /// Runs of the page.
    pub run_count: u32,
    /// Offset of the page's payload in the payload region (a multiple of 16).
    pub payload_start: u32,
    /// Bytes of the page's payload, padding between runs included.
    pub payload_len: u32,
}

impl PageDesc {
    /// Writes the 16-byte encoding.
    pub fn encode(self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), PAGE_DESC_BYTES);
        let fields = [
            self.first_run,
            self.run_count,
            self.payload_start,
            self.payload_len,
        ];
        for (slot, field) in out.chunks_exact_mut(4).zip(fields) {
            slot.copy_from_slice(&field.to_le_bytes());
        }
    }

    /// Reads the 16-byte encoding.
    pub fn decode(bytes: &[u8; PAGE_DESC_BYTES]) -> Self {
        let field = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        PageDesc {
            first_run: field(0),
            run_count: field(4),
            payload_start: field(8),
            payload_len: field(12),
        }
    }

    /// The runs, as indices into the chunk's run array.
    pub fn runs(&self) -> Range<usize> {
        self.first_run as usize..self.first_run as usize + self.run_count as usize
    }

    /// The 16-aligned window of the payload region that holds the page's
    /// payload (what the kernel stages in shared memory).
    pub fn staged_window(&self) -> Range<usize> {
        let start = self.payload_start as usize;
        start / CHUNK_BYTES * CHUNK_BYTES..align16(start + self.payload_len as usize)
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
    /// Total bytes of the meta region (16-aligned, tail margin included).
    pub total_len: usize,
}

impl ChunkLayout {
    /// Bytes of page and run descriptors: the layout's overhead.
    pub fn index_bytes(&self) -> usize {
        self.payload_offset
    }
}

/// Rounds `value` up to a multiple of [`CHUNK_BYTES`].
pub fn align16(value: usize) -> usize {
    value.div_ceil(CHUNK_BYTES) * CHUNK_BYTES
}

/// Padding to put before a run's payload at `cursor` (relative to a
/// 16-aligned page payload start) so that it is co-aligned with its page
/// offset `dest` (see the module docs).
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
    let (mut start, mut bytes) = (0usize, CHUNK_FIXED_META_BYTES);
    for slot in 0..batch.len() {
        let page_bytes = page_meta_bound(batch, slot);
        let pages = slot - start;
        if pages > 0 && (pages >= max_pages || bytes + page_bytes > max_meta_bytes) {
            chunks.push(start..slot);
            start = slot;
            bytes = CHUNK_FIXED_META_BYTES;
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
    PAGE_DESC_BYTES + runs * (RUN_DESC_BYTES + CHUNK_BYTES - 1) + bytes + CHUNK_BYTES - 1
}

/// What one page adds to a chunk: its runs and its payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PageSize {
    /// Runs of the page's whole chain.
    pub(crate) runs: usize,
    /// Payload bytes reserved for the page: co-alignment padding included
    /// when the chain was walked ([`walk_chain`]: exact), or its upper
    /// bound when sized from delta headers ([`size_from_headers`]). The
    /// descriptor written by [`ChunkPlan::fill_mapped`] always carries the
    /// exact length; the rest of the reserved window is zeroed.
    pub(crate) payload_len: usize,
    /// Payload bytes the deltas write (padding excluded).
    pub(crate) useful: usize,
}

impl PageSize {
    /// An upper bound of the meta bytes the page adds to any chunk (its
    /// descriptor, its run descriptors, its payload rounded up to 16).
    pub(crate) fn meta_bound(self) -> usize {
        PAGE_DESC_BYTES + self.runs * RUN_DESC_BYTES + align16(self.payload_len)
    }
}

/// Which batch slot each position of a chunk plan stands for: the batch's
/// own slots, or a list of them (one shard's pages, routed by index so that
/// the batch is never copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotMap<'s> {
    /// Position `p` is batch slot `p`.
    Identity,
    /// Position `p` is batch slot `list[p]`.
    List(&'s [u32]),
}

impl SlotMap<'_> {
    /// The batch slot at `position` (`None` past the end of a list).
    pub fn slot(self, position: usize) -> Option<usize> {
        match self {
            SlotMap::Identity => Some(position),
            SlotMap::List(list) => list.get(position).map(|&slot| slot as usize),
        }
    }
}

/// An invalid batch, as the GPU path reports it.
pub(crate) fn invalid_batch(what: String) -> GpuError {
    GpuError::Unsupported(format!("invalid batch: {what}"))
}

/// Checks page `slot`'s chain from the delta headers alone (every delta is
/// the page's own; epochs strictly increase) and sizes it without reading
/// a run: runs and changed bytes are O(1) per delta
/// ([`mmsb_wal::Delta::run_count`], [`mmsb_wal::Delta::changed_len`]), and
/// the payload is reserved at its upper bound (each run may need up to
/// [`CHUNK_BYTES`]` - 1` bytes of co-alignment padding). Run bounds
/// against the page length are checked while the chunk is filled, where
/// every run is read anyway (a [`MergeBatch`] checked them already when
/// its chains were pushed).
pub(crate) fn size_from_headers(batch: &MergeBatch<'_>, slot: usize) -> Result<PageSize, GpuError> {
    let (Some(&page_id), Some(chain)) = (batch.page_ids().get(slot), batch.chain(slot)) else {
        return Err(invalid_batch(format!("no slot {slot}")));
    };
    let mut size = PageSize::default();
    let mut previous = None;
    for entry in chain {
        let owner = entry.delta.page_id();
        if owner != page_id {
            return Err(invalid_batch(format!(
                "a delta of {owner} in the chain of {page_id}"
            )));
        }
        if previous.is_some_and(|epoch| entry.epoch <= epoch) {
            return Err(invalid_batch(format!(
                "the chain of {page_id} is not in strictly increasing epoch order"
            )));
        }
        previous = Some(entry.epoch);
        size.runs += entry.delta.run_count();
        size.useful += entry.delta.changed_len();
    }
    size.payload_len = size.useful + size.runs * (CHUNK_BYTES - 1);
    Ok(size)
}

/// Walks page `slot`'s runs in kernel order (see [`walk_chain`]).
fn walk_page<F>(batch: &MergeBatch<'_>, slot: usize, on_run: F) -> PageSize
where
    F: FnMut(usize, u32, &[u8]),
{
    walk_chain(batch.chain(slot).unwrap_or(&[]), on_run)
}

/// Walks a chain's runs in kernel order, calling `on_run(cursor, offset,
/// bytes)` with each run's payload position relative to the page's payload
/// start. Returns the page's size.
fn walk_chain<F>(chain: &[ChainEntry<'_>], mut on_run: F) -> PageSize
where
    F: FnMut(usize, u32, &[u8]),
{
    let mut size = PageSize::default();
    for entry in chain {
        for run in entry.delta.runs() {
            let len = run.bytes.len();
            size.payload_len += padding_for(size.payload_len, run.offset as usize, len);
            on_run(size.payload_len, run.offset, run.bytes);
            size.payload_len += len;
            size.useful += len;
            size.runs += 1;
        }
    }
    size
}

/// The layout of one chunk and the descriptor of each of its pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    slots: Range<usize>,
    layout: ChunkLayout,
    descs: Vec<PageDesc>,
}

impl ChunkPlan {
    /// Measures `slots` of `batch` (in parallel over pages for large chunks).
    /// Errors when a limit of the format is exceeded (payload past 4 GiB,
    /// more than `u32::MAX` runs, a page offset or run past 64 KiB).
    pub fn new(batch: &MergeBatch<'_>, slots: Range<usize>) -> Result<Self, GpuError> {
        let sizes: Vec<PageSize> = slots
            .clone()
            .into_par_iter()
            .with_min_len(PAGES_PER_TASK)
            .map(|slot| walk_page(batch, slot, |_, _, _| {}))
            .collect();
        Self::from_sizes(slots, &sizes)
    }

    /// The plan of chunk positions `slots` from their pages' sizes, measured
    /// before (`sizes[i]` is position `slots.start + i`): no page is walked.
    pub(crate) fn from_sizes(slots: Range<usize>, sizes: &[PageSize]) -> Result<Self, GpuError> {
        if sizes.len() != slots.len() {
            return Err(GpuError::Unsupported(format!(
                "{} page sizes for a chunk of {} pages",
                sizes.len(),
                slots.len()
            )));
        }
        let mut descs = Vec::with_capacity(sizes.len());
        let (mut runs, mut cursor, mut useful) = (0usize, 0usize, 0usize);
        for size in sizes {
            descs.push(PageDesc {
                first_run: to_u32(runs, "runs")?,
                run_count: to_u32(size.runs, "runs")?,
                payload_start: to_u32(cursor, "payload")?,
                payload_len: to_u32(size.payload_len, "payload")?,
            });
            runs += size.runs;
            cursor = align16(cursor + size.payload_len);
            useful += size.useful;
        }
        // The last page's payload end, not its 16-aligned successor.
        let payload_len = descs.last().map_or(0, |last| {
            last.payload_start as usize + last.payload_len as usize
        });
        if payload_len as u64 > MAX_CHUNK_PAYLOAD_BYTES {
            return Err(too_large("payload", payload_len));
        }
        let pages = slots.len();
        let runs_offset = PAGE_DESC_BYTES * pages;
        let payload_offset = align16(runs_offset + runs * RUN_DESC_BYTES);
        let layout = ChunkLayout {
            pages,
            runs,
            runs_offset,
            payload_offset,
            payload_len,
            payload_useful: useful,
            total_len: align16(payload_offset + payload_len) + TAIL_MARGIN_BYTES,
        };
        Ok(ChunkPlan {
            slots,
            layout,
            descs,
        })
    }

    /// The chunk's layout.
    pub fn layout(&self) -> &ChunkLayout {
        &self.layout
    }

    /// The batch slots the chunk covers.
    pub fn slots(&self) -> Range<usize> {
        self.slots.clone()
    }

    /// Writes the meta region into `out` (at least `layout().total_len`
    /// bytes), in parallel over pages. Padding bytes are zeroed so that the
    /// region never carries stale data. Errors when `out` is too short, or
    /// when a run is out of the format's range (offset or length past 64 KiB).
    pub fn fill(&self, batch: &MergeBatch<'_>, out: &mut [u8]) -> Result<(), GpuError> {
        self.fill_mapped(batch, SlotMap::Identity, out)
    }

    /// As [`Self::fill`], with the chunk's positions standing for the batch
    /// slots `map` gives (the plan must have been measured through the same
    /// map).
    pub fn fill_mapped(
        &self,
        batch: &MergeBatch<'_>,
        map: SlotMap<'_>,
        out: &mut [u8],
    ) -> Result<(), GpuError> {
        let layout = &self.layout;
        if out.len() < layout.total_len {
            return Err(GpuError::Unsupported(format!(
                "staging buffer of {} bytes is smaller than the chunk's {} bytes",
                out.len(),
                layout.total_len
            )));
        }
        let out = &mut out[..layout.total_len];
        let (desc_area, rest) = out.split_at_mut(layout.runs_offset);
        let (run_area, payload_area) =
            rest.split_at_mut(layout.payload_offset - layout.runs_offset);
        let (run_used, run_pad) = run_area.split_at_mut(layout.runs * RUN_DESC_BYTES);
        run_pad.fill(0);
        // Pages go in groups of PAGES_PER_TASK (one rayon task each): the
        // areas are cut per group here, per page inside the task. A page
        // gets its descriptor, its run descriptors and its payload window
        // (up to the next page's 16-aligned start, so padding is written).
        let mut groups = Vec::with_capacity(layout.pages / PAGES_PER_TASK + 1);
        let (mut desc_rest, mut runs_rest, mut payload_rest) = (desc_area, run_used, payload_area);
        for (index, descs) in self.descs.chunks(PAGES_PER_TASK).enumerate() {
            let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
                continue;
            };
            let next = self.descs.get((index + 1) * PAGES_PER_TASK);
            let run_end = next.map_or(layout.runs, |d| d.first_run as usize);
            let payload_end = next.map_or_else(
                || align16(last.payload_start as usize + last.payload_len as usize),
                |d| d.payload_start as usize,
            );
            let runs_len = (run_end.checked_sub(first.first_run as usize))
                .map(|runs| runs * RUN_DESC_BYTES)
                .filter(|&len| len <= runs_rest.len());
            let payload_len = payload_end
                .checked_sub(first.payload_start as usize)
                .map(|len| len.min(payload_rest.len()));
            let (Some(runs_len), Some(payload_len)) = (runs_len, payload_len) else {
                return Err(GpuError::Unsupported(
                    "chunk descriptors out of order".into(),
                ));
            };
            let (desc_mine, rest) = desc_rest.split_at_mut(descs.len() * PAGE_DESC_BYTES);
            desc_rest = rest;
            let (runs_mine, rest) = runs_rest.split_at_mut(runs_len);
            runs_rest = rest;
            let (payload_mine, rest) = payload_rest.split_at_mut(payload_len);
            payload_rest = rest;
            groups.push((index, descs, desc_mine, runs_mine, payload_mine));
        }
        payload_rest.fill(0);
        let start = self.slots.start;
        groups
            .into_par_iter()
            .try_for_each(|(index, descs, desc_area, runs_area, payload_area)| {
                fill_group(
                    batch,
                    map,
                    start + index * PAGES_PER_TASK,
                    descs,
                    (desc_area, runs_area, payload_area),
                )
            })
    }
}

/// Fills one group of consecutive pages (see [`ChunkPlan::fill_mapped`]):
/// `first` is the position of `descs[0]`; `areas` (page descriptors, run
/// descriptors, payload) start at the group's first page. The runs and
/// payload of the page [`PREFETCH_AHEAD_PAGES`] ahead are prefetched while a
/// page is filled: every delta's runs and payload are separate heap blocks,
/// so a fill is otherwise bound by one cache miss after another.
fn fill_group(
    batch: &MergeBatch<'_>,
    map: SlotMap<'_>,
    first: usize,
    descs: &[PageDesc],
    areas: (&mut [u8], &mut [u8], &mut [u8]),
) -> Result<(), GpuError> {
    let (desc_area, mut runs_rest, mut payload_rest) = areas;
    for (k, (desc, desc_out)) in descs
        .iter()
        .zip(desc_area.chunks_exact_mut(PAGE_DESC_BYTES))
        .enumerate()
    {
        let runs_len = desc.run_count as usize * RUN_DESC_BYTES;
        let payload_len = align16(desc.payload_len as usize).min(payload_rest.len());
        if runs_len > runs_rest.len() {
            return Err(changed_between());
        }
        let (runs_out, rest) = std::mem::take(&mut runs_rest).split_at_mut(runs_len);
        runs_rest = rest;
        let (payload_out, rest) = std::mem::take(&mut payload_rest).split_at_mut(payload_len);
        payload_rest = rest;
        let position = first + k;
        let slot = map
            .slot(position)
            .ok_or_else(|| GpuError::Unsupported(format!("no slot at {position}")))?;
        if let Some(ahead) = (k + PREFETCH_AHEAD_PAGES < descs.len())
            .then(|| map.slot(position + PREFETCH_AHEAD_PAGES))
            .flatten()
        {
            prefetch_page(batch, ahead);
        }
        let exact = fill_page(batch, slot, desc, runs_out, payload_out)?;
        PageDesc {
            payload_len: exact,
            ..*desc
        }
        .encode(desc_out);
    }
    Ok(())
}

/// Writes one page's run descriptors and payload into the page's reserved
/// window (`desc.payload_len` bytes, rounded up to 16); only the padding
/// between runs and the rest of the window are zeroed, so every payload
/// byte is written once. Checks each run against the page length. Returns
/// the page's exact payload length (what its descriptor carries).
fn fill_page(
    batch: &MergeBatch<'_>,
    slot: usize,
    desc: &PageDesc,
    runs_out: &mut [u8],
    payload_out: &mut [u8],
) -> Result<u32, GpuError> {
    let page_len = batch.page_len();
    let mut index = 0usize;
    let mut written = 0usize;
    let mut failure = None;
    let size = walk_page(batch, slot, |cursor, offset, bytes| {
        if failure.is_some() {
            return;
        }
        if offset as usize + bytes.len() > page_len {
            failure = Some(invalid_batch(format!(
                "a run of slot {slot} ends at byte {} of a {page_len}-byte page",
                offset as usize + bytes.len()
            )));
            return;
        }
        let at = index * RUN_DESC_BYTES;
        index += 1;
        let end = cursor + bytes.len();
        let run = encode_run(desc.payload_start as usize + cursor, offset, bytes.len());
        let desc_out = runs_out
            .get_mut(at..at + RUN_DESC_BYTES)
            .and_then(|out| <&mut [u8; RUN_DESC_BYTES]>::try_from(out).ok());
        let window = payload_out.get_mut(written..end);
        match (run, desc_out, window) {
            (Ok(run), Some(desc_out), Some(gap_and_run)) => {
                run.encode(desc_out);
                let (gap, run_out) = gap_and_run.split_at_mut(cursor - written);
                gap.fill(0);
                run_out.copy_from_slice(bytes);
                written = end;
            }
            (Err(error), _, _) => failure = Some(error),
            _ => failure = Some(changed_between()),
        }
    });
    if let Some(error) = failure {
        return Err(error);
    }
    if size.runs != desc.run_count as usize || size.payload_len > desc.payload_len as usize {
        return Err(changed_between());
    }
    if let Some(tail) = payload_out.get_mut(written..) {
        tail.fill(0);
    }
    to_u32(size.payload_len, "payload")
}

/// Asks the cache for page `slot`'s run lists and payload bytes (the run
/// lists are read to find the payload; only the payload is prefetched).
fn prefetch_page(batch: &MergeBatch<'_>, slot: usize) {
    for entry in batch.chain(slot).unwrap_or(&[]) {
        for run in entry.delta.runs() {
            for line in run.bytes.chunks(CACHE_LINE_BYTES) {
                prefetch(line.as_ptr());
            }
        }
    }
}

/// A hint that `at` will be read soon (nothing where the target has no
/// prefetch instruction).
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no memory, whatever the
    // address; SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

fn changed_between() -> GpuError {
    GpuError::Unsupported("batch changed between measuring and filling its layout".into())
}

fn encode_run(payload_offset: usize, page_offset: u32, len: usize) -> Result<GpuRun, GpuError> {
    Ok(GpuRun {
        payload_offset: to_u32(payload_offset, "payload")?,
        page_offset: u16::try_from(page_offset)
            .map_err(|_| GpuError::Unsupported(format!("run offset {page_offset} past 64 KiB")))?,
        len_minus_one: u16::try_from(len.saturating_sub(1))
            .map_err(|_| GpuError::Unsupported(format!("run of {len} bytes past 64 KiB")))?,
    })
}

fn to_u32(value: usize, what: &str) -> Result<u32, GpuError> {
    u32::try_from(value).map_err(|_| too_large(what, value))
}

fn too_large(what: &str, value: usize) -> GpuError {
    GpuError::Unsupported(format!(
        "chunk {what} of {value} exceeds the format's 32-bit offsets"
    ))
}

/// Computes the layout of `slots` without writing anything.
pub fn measure_chunk(batch: &MergeBatch<'_>, slots: Range<usize>) -> Result<ChunkLayout, GpuError> {
    Ok(*ChunkPlan::new(batch, slots)?.layout())
}

/// Writes the meta region of `slots` into `out`; returns its layout.
pub fn fill_chunk(
    batch: &MergeBatch<'_>,
    slots: Range<usize>,
    out: &mut [u8],
) -> Result<ChunkLayout, GpuError> {
    let plan = ChunkPlan::new(batch, slots)?;
    plan.fill(batch, out)?;
    Ok(*plan.layout())
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

    /// The whole meta region.
    pub fn meta(&self) -> &'a [u8] {
        self.meta
    }

    /// Descriptor of page `page` (chunk-relative).
    pub fn page(&self, page: usize) -> PageDesc {
        let at = PAGE_DESC_BYTES * page;
        let mut bytes = [0u8; PAGE_DESC_BYTES];
        bytes.copy_from_slice(&self.meta[at..at + PAGE_DESC_BYTES]);
        PageDesc::decode(&bytes)
    }

    /// Index range into the runs of page `page` (chunk-relative).
    pub fn page_runs(&self, page: usize) -> Range<usize> {
        self.page(page).runs()
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
    fn run_and_page_encodings_round_trip() {
        let run = GpuRun {
            payload_offset: 0xDEAD_BEEF,
            page_offset: 65535,
            len_minus_one: 65535,
        };
        let mut bytes = [0; RUN_DESC_BYTES];
        run.encode(&mut bytes);
        assert_eq!(GpuRun::decode(&bytes), run);
        assert_eq!(run.len(), 65536);
        let desc = PageDesc {
            first_run: 7,
            run_count: 3,
            payload_start: 48,
            payload_len: 0xFFFF_0001,
        };
        let mut bytes = [0; PAGE_DESC_BYTES];
        desc.encode(&mut bytes);
        assert_eq!(PageDesc::decode(&bytes), desc);
        assert_eq!(desc.runs(), 7..10);
    }

    #[test]
    fn staged_window_is_16_aligned_and_covers_the_payload() {
        let desc = PageDesc {
            payload_start: 32,
            payload_len: 17,
            ..PageDesc::default()
        };
        assert_eq!(desc.staged_window(), 32..64);
        let empty = PageDesc::default();
        assert_eq!(empty.staged_window(), 0..0);
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
        assert_eq!(layout.runs_offset, 3 * PAGE_DESC_BYTES);
        let mut meta = vec![0xAA; layout.total_len];
        assert_eq!(fill_chunk(&batch, 0..3, &mut meta).unwrap(), layout);
        assert!(meta[layout.total_len - TAIL_MARGIN_BYTES..]
            .iter()
            .all(|&b| b == 0));
        let view = ChunkView::new(layout, &meta).unwrap();
        assert_eq!(view.page_runs(0), 0..3);
        assert_eq!(view.page_runs(1), 3..3);
        assert_eq!(view.page_runs(2), 3..4);
        for page in 0..3 {
            assert_eq!(view.page(page).payload_start % 16, 0);
        }
        let offsets: Vec<u16> = (0..4).map(|i| view.run(i).page_offset).collect();
        assert_eq!(offsets, [3, 100, 0, 5]);
        for index in [1usize, 3] {
            let run = view.run(index);
            assert_eq!(
                run.payload_offset as usize % 16,
                run.page_offset as usize % 16
            );
            let from = run.payload_offset as usize;
            assert_eq!(&view.payload()[from..from + 40], &long);
        }
    }

    #[test]
    fn too_small_output_is_refused() {
        let d = delta(0, &[(0, &[1; 20])]);
        let mut batch = MergeBatch::new(64).unwrap();
        batch
            .push_page(PageId(0), &[0; 64], [ChainEntry::new(CommitEpoch(1), &d)])
            .unwrap();
        let plan = ChunkPlan::new(&batch, 0..1).unwrap();
        let mut out = vec![0; plan.layout().total_len - 1];
        assert!(matches!(
            plan.fill(&batch, &mut out),
            Err(GpuError::Unsupported(_))
        ));
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
            plan_chunks(&batch, 100, CHUNK_FIXED_META_BYTES + per_page * 3),
            [0..3, 3..6, 6..9, 9..10]
        );
        assert_eq!(plan_chunks(&batch, 100, 1).len(), 10);
        // The bound holds for the real layout.
        let layout = measure_chunk(&batch, 0..3).unwrap();
        assert!(layout.total_len <= CHUNK_FIXED_META_BYTES + per_page * 3);
    }
}
