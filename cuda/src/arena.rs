//! Decode arenas: a fold's delta runs laid out at decode time, in the
//! kernel's own chunk format, in page-locked host memory of the GPU that
//! will fold them, so that the fold itself copies a few whole regions to
//! the device and launches; the host builds nothing per delta at fold time.
//!
//! - [`ArenaBuilder`]: takes deltas one by one as a TLog record is decoded
//!   (`(page, epoch, runs)`, [`ArenaBuilder::push_record`] straight from
//!   record bytes through [`mmsb_wal::record::visit_deltas`]), routes each
//!   to its owning rank, and appends its run descriptors, payload and page
//!   entry to that rank's arena. Each page gets its mirror slot when it is
//!   first seen (its resident slot, or the next free one for a page given a
//!   base image by [`ArenaBuilder::push_base`]).
//! - [`RankArena`] / [`DecodeArenas`]: what one rank / all ranks fold.
//!
//! One arena is a list of blocks of one [`ArenaGeometry`]; each block is a
//! single buffer (pinned for a real GPU, [`ArenaMemory`]) laid out as
//!
//! ```text
//! 0                    page entries: PageDesc x entries   16 B each (layout::PageDesc)
//! slots_offset         mirror slots: u32 x entries        one per entry, little-endian
//! runs_offset          runs: GpuRun x runs                8 B each (layout::GpuRun)
//! payload_offset       payload (16-aligned per entry)     then a 16-byte tail margin
//! ```
//!
//! and holds consecutive chunks (one kernel launch each). Chunk `c` is the
//! kernel's meta region read from the block at `16 * first_entry`: its
//! entries' `first_run` and `payload_start` and its runs' `payload_offset`
//! are relative to the chunk's own first run and 16-aligned payload start,
//! and the `Job`'s `runs_offset` / `payload_offset` point from there into
//! the block's run and payload areas. Within an entry, runs and payload are
//! exactly what [`crate::layout::ChunkPlan::fill`] writes for that page
//! (co-aligned runs, zeroed padding), so a page-major feed reproduces the
//! existing layout byte for byte.
//!
//! An entry is one page's consecutive deltas. Deltas of one page that
//! arrive apart (record after record, the usual TLog order) become separate
//! entries, and no chunk holds two entries of one page: the next entry of a
//! page that the open chunk already holds starts a new chunk. Chunks fold
//! one after another in order, so each page's deltas apply in decode order.

use mmsb_wal::{Delta, DeltaRun, PageId};
use rustc_hash::FxHashMap;

use crate::driver::{Context, PinnedBuffer};
use crate::error::GpuError;
use crate::layout::{
    align16, ChunkLayout, ChunkView, GpuRun, PageDesc, CHUNK_BYTES, PAGE_DESC_BYTES,
    RUN_DESC_BYTES, TAIL_MARGIN_BYTES, VECTOR_MIN_RUN_BYTES,
};
use crate::shard::{DeltaCounts, MirrorIndex};

/// Bytes of one mirror slot in a block's slot area.
pub const SLOT_BYTES: usize = 4;

/// Default page entries per block.
pub const DEFAULT_BLOCK_ENTRIES: usize = 256 * 1024;

/// Default runs per block.
pub const DEFAULT_BLOCK_RUNS: usize = 1024 * 1024;

/// Default payload bytes per block.
pub const DEFAULT_BLOCK_PAYLOAD_BYTES: usize = 64 << 20;

/// Default most entries per chunk (one kernel launch).
pub const DEFAULT_CHUNK_ENTRIES: usize = 64 * 1024;

/// Bytes of one block of new pages' base images.
const UPLOAD_BLOCK_BYTES: usize = 16 << 20;

/// Epoch value of a page no delta was pushed for yet.
const NO_EPOCH: u64 = 0;

/// Chunk id of a page no entry was written for yet.
const NO_CHUNK: u32 = u32::MAX;

/// How big each block of an arena is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaGeometry {
    /// Page entries a block holds.
    pub entries: usize,
    /// Run descriptors a block holds.
    pub runs: usize,
    /// Payload bytes a block holds (entries start 16-aligned).
    pub payload_bytes: usize,
}

impl Default for ArenaGeometry {
    fn default() -> Self {
        ArenaGeometry {
            entries: DEFAULT_BLOCK_ENTRIES,
            runs: DEFAULT_BLOCK_RUNS,
            payload_bytes: DEFAULT_BLOCK_PAYLOAD_BYTES,
        }
    }
}

impl ArenaGeometry {
    /// Offset of the slot area in a block.
    pub fn slots_offset(&self) -> usize {
        self.entries * PAGE_DESC_BYTES
    }

    /// Offset of the run area in a block.
    pub fn runs_offset(&self) -> usize {
        align16(self.slots_offset() + self.entries * SLOT_BYTES)
    }

    /// Offset of the payload area in a block.
    pub fn payload_offset(&self) -> usize {
        align16(self.runs_offset() + self.runs * RUN_DESC_BYTES)
    }

    /// Bytes of one block (tail margin included).
    pub fn block_bytes(&self) -> usize {
        self.payload_offset() + align16(self.payload_bytes) + TAIL_MARGIN_BYTES
    }

    /// Refuses empty areas and blocks whose offsets leave `u32`.
    fn check(&self) -> Result<(), GpuError> {
        let fits = u32::try_from(
            self.entries
                .checked_mul(PAGE_DESC_BYTES + SLOT_BYTES)
                .and_then(|b| b.checked_add(self.runs.checked_mul(RUN_DESC_BYTES)?))
                .and_then(|b| b.checked_add(self.payload_bytes.checked_add(64)?))
                .unwrap_or(usize::MAX),
        )
        .is_ok();
        if self.entries == 0 || self.runs == 0 || self.payload_bytes == 0 || !fits {
            return Err(GpuError::Unsupported(format!(
                "arena geometry {self:?}: areas must be non-empty and a block under 4 GiB"
            )));
        }
        Ok(())
    }
}

/// One block's memory: pinned (and portable) for a real GPU, ordinary for
/// the simulated device.
pub enum ArenaMemory {
    /// Page-locked host memory the device copies from by DMA.
    Pinned(PinnedBuffer),
    /// Ordinary heap memory.
    Heap(Vec<u8>),
}

impl std::fmt::Debug for ArenaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_pinned() { "pinned" } else { "heap" };
        write!(f, "ArenaMemory({kind}, {} bytes)", self.bytes().len())
    }
}

impl ArenaMemory {
    /// `len` zeroed bytes: pinned through `context` when given.
    pub fn alloc(context: Option<&Context>, len: usize) -> Result<Self, GpuError> {
        match context {
            Some(ctx) => Ok(ArenaMemory::Pinned(PinnedBuffer::alloc(ctx, len, false)?)),
            None => Ok(ArenaMemory::Heap(vec![0; len])),
        }
    }

    /// Whether the memory is page-locked.
    pub fn is_pinned(&self) -> bool {
        matches!(self, ArenaMemory::Pinned(_))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ArenaMemory::Pinned(buffer) => buffer.as_slice(),
            ArenaMemory::Heap(bytes) => bytes,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            ArenaMemory::Pinned(buffer) => buffer.as_mut_slice(),
            ArenaMemory::Heap(bytes) => bytes,
        }
    }
}

/// What a builder needs from the device a rank folds on: the mirror index
/// the arena's slots refer to, and the context to pin memory in (`None`:
/// ordinary memory, for the simulated device).
#[derive(Clone, Copy)]
pub struct ArenaTarget<'a> {
    /// The rank's page mirror as it stands while the arena is built.
    pub index: &'a MirrorIndex,
    /// Where to pin the arena's blocks.
    pub context: Option<&'a Context>,
}

/// One block and how much of each area is used.
#[derive(Debug)]
pub struct ArenaBlock {
    memory: ArenaMemory,
    entries: usize,
    runs: usize,
    /// Payload bytes used, from the payload area's start.
    payload: usize,
}

impl ArenaBlock {
    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.memory.bytes()
    }

    /// Whether the block is page-locked.
    pub fn is_pinned(&self) -> bool {
        self.memory.is_pinned()
    }

    /// The byte ranges of the block that hold data (entries, slots, runs,
    /// payload with its tail margin): what a fold copies to the device,
    /// each to the same offset of a device block.
    pub fn used_ranges(&self, geometry: &ArenaGeometry) -> [std::ops::Range<usize>; 4] {
        let slots = geometry.slots_offset();
        let runs = geometry.runs_offset();
        let payload = geometry.payload_offset();
        [
            0..self.entries * PAGE_DESC_BYTES,
            slots..slots + self.entries * SLOT_BYTES,
            runs..runs + self.runs * RUN_DESC_BYTES,
            payload..payload + align16(self.payload) + TAIL_MARGIN_BYTES,
        ]
    }
}

/// One chunk of an arena: consecutive entries of one block, folded by one
/// kernel launch (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaChunk {
    /// Index of its block.
    pub block: usize,
    /// Its first entry's index in the block.
    pub first_entry: usize,
    /// Entries (kernel "pages").
    pub entries: usize,
    /// Its first run's index in the block.
    pub first_run: usize,
    /// Runs.
    pub runs: usize,
    /// Start of its payload in the block's payload area (16-aligned).
    pub payload_start: usize,
    /// Payload bytes up to the end of its last entry.
    pub payload_len: usize,
    /// Payload bytes the deltas write (padding excluded).
    pub payload_useful: usize,
}

impl ArenaChunk {
    /// Offset of its meta region (its first entry) in the block.
    pub fn meta_offset(&self) -> usize {
        self.first_entry * PAGE_DESC_BYTES
    }

    /// Offset of its slot list in the block.
    pub fn slots_offset(&self, geometry: &ArenaGeometry) -> usize {
        geometry.slots_offset() + self.first_entry * SLOT_BYTES
    }

    /// Its meta region's layout, relative to [`Self::meta_offset`].
    pub fn layout(&self, geometry: &ArenaGeometry) -> ChunkLayout {
        let meta = self.meta_offset();
        let runs_offset = geometry.runs_offset() + self.first_run * RUN_DESC_BYTES - meta;
        let payload_offset = geometry.payload_offset() + self.payload_start - meta;
        ChunkLayout {
            pages: self.entries,
            runs: self.runs,
            runs_offset,
            payload_offset,
            payload_len: self.payload_len,
            payload_useful: self.payload_useful,
            total_len: payload_offset + align16(self.payload_len) + TAIL_MARGIN_BYTES,
        }
    }
}

/// Everything one rank folds: its blocks and chunks, the pages it adds to
/// its mirror, and what the fold covers.
#[derive(Debug)]
pub struct RankArena {
    geometry: ArenaGeometry,
    page_len: usize,
    blocks: Vec<ArenaBlock>,
    chunks: Vec<ArenaChunk>,
    base_slots: usize,
    new_pages: Vec<PageId>,
    uploads: Vec<ArenaMemory>,
    counts: DeltaCounts,
}

impl RankArena {
    /// The blocks' geometry.
    pub fn geometry(&self) -> &ArenaGeometry {
        &self.geometry
    }

    /// Bytes per page.
    pub fn page_len(&self) -> usize {
        self.page_len
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[ArenaBlock] {
        &self.blocks
    }

    /// The chunks, in fold order.
    pub fn chunks(&self) -> &[ArenaChunk] {
        &self.chunks
    }

    /// Slots the mirror had when the arena was built: a fold checks the
    /// mirror still has exactly these.
    pub fn base_slots(&self) -> usize {
        self.base_slots
    }

    /// Pages the fold adds to the mirror, in slot order from
    /// [`Self::base_slots`].
    pub fn new_pages(&self) -> &[PageId] {
        &self.new_pages
    }

    /// Pages of base images per upload block.
    pub fn pages_per_upload(&self) -> usize {
        (UPLOAD_BLOCK_BYTES / self.page_len.max(1)).max(1)
    }

    /// The new pages' base images, [`Self::pages_per_upload`] per block
    /// (the last block holds the rest), as `(memory, pages)`.
    pub fn uploads(&self) -> impl Iterator<Item = (&ArenaMemory, usize)> + '_ {
        let per = self.pages_per_upload();
        let total = self.new_pages.len();
        self.uploads
            .iter()
            .enumerate()
            .map(move |(k, memory)| (memory, per.min(total - k * per)))
    }

    /// What folding the arena covers.
    pub fn counts(&self) -> DeltaCounts {
        self.counts
    }

    /// Chunk `chunk`'s meta region and layout, as the kernel reads it.
    pub fn view(&self, chunk: &ArenaChunk) -> Result<ChunkView<'_>, GpuError> {
        let block = self
            .blocks
            .get(chunk.block)
            .ok_or_else(|| GpuError::Unsupported(format!("arena block {}", chunk.block)))?;
        let meta = block
            .bytes()
            .get(chunk.meta_offset()..)
            .ok_or_else(|| GpuError::Unsupported("arena chunk outside its block".into()))?;
        ChunkView::new(chunk.layout(&self.geometry), meta)
    }

    /// Chunk `chunk`'s mirror slots, one per entry.
    pub fn slots(&self, chunk: &ArenaChunk) -> Result<Vec<u32>, GpuError> {
        let at = chunk.slots_offset(&self.geometry);
        let bytes = self
            .blocks
            .get(chunk.block)
            .and_then(|b| b.bytes().get(at..at + chunk.entries * SLOT_BYTES))
            .ok_or_else(|| GpuError::Unsupported("arena slots outside their block".into()))?;
        Ok(bytes
            .chunks_exact(SLOT_BYTES)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .collect())
    }
}

/// The arenas of every rank of one fold, with the ownership stamp they
/// were routed by (see `nccl::ShardedMerge::fold_arenas`).
#[derive(Debug)]
pub struct DecodeArenas {
    ranks: Vec<RankArena>,
    stamp: u64,
}

impl DecodeArenas {
    /// Rank `rank`'s arena.
    pub fn rank(&self, rank: usize) -> Option<&RankArena> {
        self.ranks.get(rank)
    }

    /// Every rank's arena, in rank order.
    pub fn ranks(&self) -> &[RankArena] {
        &self.ranks
    }

    /// The ownership stamp the builder was given.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// What folding every arena covers.
    pub fn counts(&self) -> DeltaCounts {
        self.ranks
            .iter()
            .map(RankArena::counts)
            .fold(DeltaCounts::EMPTY, DeltaCounts::combine)
    }
}

/// What the builder knows of the page in one mirror slot.
#[derive(Clone, Copy, Debug)]
struct PageState {
    /// Id of the chunk holding its last entry ([`NO_CHUNK`]: none yet).
    chunk: u32,
    /// Whether a delta or base of the page was pushed (counted once).
    seen: bool,
    /// Epoch of its last delta.
    epoch: u64,
}

/// A slot's state before anything of its page was pushed.
const UNSEEN: PageState = PageState {
    chunk: NO_CHUNK,
    seen: false,
    epoch: NO_EPOCH,
};

/// The chunk being filled, in the last block.
#[derive(Clone, Copy, Debug, Default)]
struct OpenChunk {
    first_entry: usize,
    entries: usize,
    first_run: usize,
    runs: usize,
    payload_start: usize,
    useful: usize,
}

/// The entry being filled (the last one of the open chunk).
#[derive(Clone, Copy, Debug)]
struct OpenEntry {
    page: PageId,
    /// Its index in the block.
    index: usize,
    desc: PageDesc,
}

/// One rank's arena while it is built.
struct RankBuilder<'a> {
    target: ArenaTarget<'a>,
    blocks: Vec<ArenaBlock>,
    free: Vec<ArenaMemory>,
    free_uploads: Vec<ArenaMemory>,
    chunks: Vec<ArenaChunk>,
    open: OpenChunk,
    entry: Option<OpenEntry>,
    /// Per mirror slot (resident pages, then new ones): one indexed load
    /// per delta after the mirror's own lookup.
    states: Vec<PageState>,
    /// Slots of the pages given a base image.
    new_slots: FxHashMap<PageId, u32>,
    /// The last page looked up and its slot: the next page id usually
    /// sits in the next slot (pages are uploaded in order), which one
    /// sequential read confirms without a hash probe.
    last: Option<(PageId, u32)>,
    new_pages: Vec<PageId>,
    uploads: Vec<ArenaMemory>,
    counts: DeltaCounts,
    base_slots: usize,
}

/// Builds [`DecodeArenas`] from deltas as they are decoded (see the module
/// docs).
pub struct ArenaBuilder<'a> {
    page_len: usize,
    geometry: ArenaGeometry,
    chunk_entries: usize,
    owner: Box<dyn Fn(PageId) -> usize + Sync + 'a>,
    stamp: u64,
    ranks: Vec<RankBuilder<'a>>,
}

impl<'a> ArenaBuilder<'a> {
    /// A builder for `targets.len()` ranks of `page_len`-byte pages; each
    /// delta goes to rank `owner(page)`; chunks hold at most
    /// `chunk_entries` entries; `stamp` is handed on to the arenas.
    pub fn new(
        page_len: usize,
        targets: Vec<ArenaTarget<'a>>,
        owner: Box<dyn Fn(PageId) -> usize + Sync + 'a>,
        geometry: ArenaGeometry,
        chunk_entries: usize,
        stamp: u64,
    ) -> Result<Self, GpuError> {
        geometry.check()?;
        if targets.is_empty() || chunk_entries == 0 {
            return Err(GpuError::Unsupported(
                "an arena builder needs a rank and chunks of at least one entry".into(),
            ));
        }
        if page_len == 0 || page_len > mmsb_wal::delta::MAX_PAGE_LEN {
            return Err(GpuError::Unsupported(format!("page length {page_len}")));
        }
        if let Some(target) = targets.iter().find(|t| t.index.page_len() != page_len) {
            return Err(GpuError::Unsupported(format!(
                "arena of {page_len}-byte pages for a mirror of {}-byte pages",
                target.index.page_len()
            )));
        }
        let ranks = targets
            .into_iter()
            .map(|target| RankBuilder {
                target,
                blocks: Vec::new(),
                free: Vec::new(),
                free_uploads: Vec::new(),
                chunks: Vec::new(),
                open: OpenChunk::default(),
                entry: None,
                states: vec![UNSEEN; target.index.slot_count()],
                new_slots: FxHashMap::default(),
                last: None,
                new_pages: Vec::new(),
                uploads: Vec::new(),
                counts: DeltaCounts::EMPTY,
                base_slots: target.index.slot_count(),
            })
            .collect();
        Ok(ArenaBuilder {
            page_len,
            geometry,
            chunk_entries,
            owner,
            stamp,
            ranks,
        })
    }

    /// Reuses the blocks of arenas folded before (same ranks), so that a
    /// steady decode pins no new memory.
    pub fn recycle(&mut self, old: DecodeArenas) {
        for (rank, arena) in self.ranks.iter_mut().zip(old.ranks) {
            if arena.geometry == self.geometry {
                rank.free
                    .extend(arena.blocks.into_iter().map(|block| block.memory));
            }
            if arena.page_len == self.page_len {
                rank.free_uploads.extend(arena.uploads);
            }
        }
    }

    /// Ranks the builder routes to.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    fn rank_of(&self, page: PageId) -> Result<usize, GpuError> {
        let rank = (self.owner)(page);
        if rank >= self.ranks.len() {
            return Err(GpuError::Unsupported(format!(
                "{page} routed to rank {rank} of {}",
                self.ranks.len()
            )));
        }
        Ok(rank)
    }

    /// Gives `page`, which its rank's mirror does not hold, the base image
    /// `image`: the fold uploads it into the next free slot before any
    /// delta folds. A page the mirror holds or that was seen already is
    /// refused.
    pub fn push_base(&mut self, page: PageId, image: &[u8]) -> Result<(), GpuError> {
        if image.len() != self.page_len {
            return Err(GpuError::Corrupted(format!(
                "a {}-byte base image of {page} for {}-byte pages",
                image.len(),
                self.page_len
            )));
        }
        let rank = self.rank_of(page)?;
        self.ranks[rank].push_base(page, image)
    }

    /// Appends one delta of `page` at `epoch`: `runs()` walks its runs,
    /// sorted, disjoint and non-empty (as in a [`Delta`]; it is walked
    /// twice: checked, then copied), `run_count` of them writing `useful`
    /// bytes. A page's epochs must not decrease; every run must end within
    /// the page. The page must be resident on its rank or given a base
    /// first ([`Self::push_base`]).
    pub fn push_runs<'r, F, I>(
        &mut self,
        page: PageId,
        epoch: u64,
        runs: F,
        run_count: usize,
        useful: usize,
    ) -> Result<(), GpuError>
    where
        F: Fn() -> I,
        I: Iterator<Item = DeltaRun<'r>>,
    {
        let rank = self.rank_of(page)?;
        let shape = DeltaShape {
            page,
            epoch,
            run_count,
            useful,
        };
        let (geometry, chunk_entries, page_len) =
            (self.geometry, self.chunk_entries, self.page_len);
        self.ranks[rank].push(&geometry, chunk_entries, page_len, shape, runs)
    }

    /// [`Self::push_runs`] with a decoded [`Delta`].
    pub fn push_delta(&mut self, epoch: u64, delta: &Delta) -> Result<(), GpuError> {
        self.push_runs(
            delta.page_id(),
            epoch,
            || delta.runs(),
            delta.run_count(),
            delta.changed_len(),
        )
    }

    /// Decodes one TLog commit record (the bytes
    /// [`mmsb_wal::CommitRecord::encode`] wrote) of commit `epoch` straight
    /// into the arenas: no `Delta` outlives its own push. Returns the
    /// deltas pushed; a record that does not decode gives
    /// [`GpuError::Corrupted`] (deltas before the damage stay pushed).
    pub fn push_record(&mut self, epoch: u64, record: &[u8]) -> Result<usize, GpuError> {
        let page_len = self.page_len;
        mmsb_wal::record::visit_deltas::<GpuError, _>(record, page_len, |delta| {
            self.push_delta(epoch, delta)
        })
    }

    /// Seals every rank's arena.
    pub fn finish(self) -> DecodeArenas {
        let geometry = self.geometry;
        let page_len = self.page_len;
        let ranks = self
            .ranks
            .into_iter()
            .map(|mut rank| {
                rank.seal_chunk();
                RankArena {
                    geometry,
                    page_len,
                    blocks: rank.blocks,
                    chunks: rank.chunks,
                    base_slots: rank.base_slots,
                    new_pages: rank.new_pages,
                    uploads: rank.uploads,
                    counts: rank.counts,
                }
            })
            .collect();
        DecodeArenas {
            ranks,
            stamp: self.stamp,
        }
    }
}

/// One delta's header, as a push sees it.
#[derive(Clone, Copy, Debug)]
struct DeltaShape {
    page: PageId,
    epoch: u64,
    run_count: usize,
    useful: usize,
}

impl DeltaShape {
    /// Payload bytes the delta may take with co-alignment padding.
    fn payload_bound(&self) -> usize {
        self.useful + self.run_count * (CHUNK_BYTES - 1)
    }
}

/// Padding before a run of `len` bytes at `cursor` (relative to the
/// entry's 16-aligned payload start) so that it is co-aligned with its page
/// offset `dest` (as [`crate::layout`] pads).
fn padding_for(cursor: usize, dest: usize, len: usize) -> usize {
    if len < VECTOR_MIN_RUN_BYTES {
        return 0;
    }
    (dest % CHUNK_BYTES + CHUNK_BYTES - cursor % CHUNK_BYTES) % CHUNK_BYTES
}

impl RankBuilder<'_> {
    fn push_base(&mut self, page: PageId, image: &[u8]) -> Result<(), GpuError> {
        if self.target.index.get(page).is_some() || self.new_slots.contains_key(&page) {
            return Err(GpuError::Unsupported(format!(
                "{page} already has an image on its rank"
            )));
        }
        let slot = u32::try_from(self.base_slots + self.new_pages.len())
            .ok()
            .filter(|&slot| slot != u32::MAX)
            .ok_or_else(|| GpuError::Unsupported("more than 2^32 - 1 mirror slots".into()))?;
        let page_len = image.len();
        let per = (UPLOAD_BLOCK_BYTES / page_len.max(1)).max(1);
        let k = self.new_pages.len() % per;
        if k == 0 {
            let memory = match self.free_uploads.pop() {
                Some(memory) if memory.bytes().len() >= per * page_len => memory,
                _ => ArenaMemory::alloc(self.target.context, per * page_len)?,
            };
            self.uploads.push(memory);
        }
        let block = self
            .uploads
            .last_mut()
            .ok_or_else(|| GpuError::Unsupported("upload block".into()))?;
        block.bytes_mut()[k * page_len..(k + 1) * page_len].copy_from_slice(image);
        self.new_pages.push(page);
        self.new_slots.insert(page, slot);
        self.counts.pages += 1;
        debug_assert_eq!(self.states.len(), slot as usize);
        self.states.push(PageState {
            seen: true,
            ..UNSEEN
        });
        Ok(())
    }

    /// Id of the open chunk.
    fn open_id(&self) -> u32 {
        self.chunks.len() as u32
    }

    fn push<'r, F, I>(
        &mut self,
        geometry: &ArenaGeometry,
        chunk_entries: usize,
        page_len: usize,
        shape: DeltaShape,
        runs: F,
    ) -> Result<(), GpuError>
    where
        F: Fn() -> I,
        I: Iterator<Item = DeltaRun<'r>>,
    {
        check_runs(shape, page_len, runs())?;
        let (slot, state) = self.page_state(shape.page)?;
        if shape.epoch < state.epoch {
            return Err(GpuError::Corrupted(format!(
                "{} got epoch {} after epoch {}",
                shape.page, shape.epoch, state.epoch
            )));
        }
        self.counts.deltas += 1;
        self.counts.min_epoch = self.counts.min_epoch.min(shape.epoch);
        self.counts.max_epoch = self.counts.max_epoch.max(shape.epoch);
        if shape.run_count == 0 {
            self.states[slot as usize].epoch = shape.epoch;
            return Ok(());
        }
        let bound = shape.payload_bound();
        if bound > geometry.payload_bytes || shape.run_count > geometry.runs {
            return Err(GpuError::Unsupported(format!(
                "a delta of {} runs and {} bytes exceeds an arena block",
                shape.run_count, shape.useful
            )));
        }
        let extend = self.entry.is_some_and(|e| e.page == shape.page)
            && state.chunk == self.open_id()
            && self.fits(geometry, 0, shape.run_count, bound, false);
        if !extend {
            self.start_entry(geometry, chunk_entries, shape, slot, state, bound)?;
        }
        self.append(geometry, shape, runs())?;
        let open = self.open_id();
        let state = &mut self.states[slot as usize];
        state.chunk = open;
        state.epoch = shape.epoch;
        Ok(())
    }

    /// The page's mirror slot (resident, or given with a base) and what
    /// the builder knows of it; a page seen for the first time is counted.
    fn page_state(&mut self, page: PageId) -> Result<(u32, PageState), GpuError> {
        let guess = self
            .last
            .filter(|(last, _)| last.get().wrapping_add(1) == page.get())
            .map(|(_, slot)| slot.wrapping_add(1))
            .filter(|&slot| self.holds(slot, page));
        let slot = guess
            .or_else(|| self.target.index.get(page))
            .or_else(|| self.new_slots.get(&page).copied())
            .ok_or_else(|| {
                GpuError::Unsupported(format!(
                    "{page} is not resident on its rank and was given no base image"
                ))
            })?;
        let state = self
            .states
            .get_mut(slot as usize)
            .ok_or_else(|| GpuError::Unsupported(format!("mirror slot {slot} of {page}")))?;
        if !state.seen {
            state.seen = true;
            self.counts.pages += 1;
        }
        let state = *state;
        self.last = Some((page, slot));
        Ok((slot, state))
    }

    /// Whether mirror slot `slot` is `page`'s (resident, or given a base).
    fn holds(&self, slot: u32, page: PageId) -> bool {
        let slot = slot as usize;
        match slot.checked_sub(self.base_slots) {
            None => self.target.index.pages().get(slot) == Some(&Some(page)),
            Some(new) => self.new_pages.get(new) == Some(&page),
        }
    }

    /// Whether the last block can take `entries` more entries, `runs` more
    /// runs and `bound` more payload bytes (after 16-alignment when a new
    /// entry starts).
    fn fits(
        &self,
        geometry: &ArenaGeometry,
        entries: usize,
        runs: usize,
        bound: usize,
        new_entry: bool,
    ) -> bool {
        self.blocks.last().is_some_and(|block| {
            let payload = if new_entry {
                align16(block.payload)
            } else {
                block.payload
            };
            block.entries + entries <= geometry.entries
                && block.runs + runs <= geometry.runs
                && payload + bound <= geometry.payload_bytes
        })
    }

    /// Starts a new entry for `shape.page`, sealing the open chunk when it
    /// holds the page already or is full, and starting a block when the
    /// last one cannot take the delta.
    fn start_entry(
        &mut self,
        geometry: &ArenaGeometry,
        chunk_entries: usize,
        shape: DeltaShape,
        slot: u32,
        state: PageState,
        bound: usize,
    ) -> Result<(), GpuError> {
        let fits = self.fits(geometry, 1, shape.run_count, bound, true);
        if state.chunk == self.open_id() || self.open.entries >= chunk_entries || !fits {
            self.seal_chunk();
        }
        if !fits {
            self.start_block(geometry)?;
        }
        let block = self
            .blocks
            .last_mut()
            .ok_or_else(|| GpuError::Unsupported("arena block".into()))?;
        let index = block.entries;
        let start = align16(block.payload);
        let payload_at = geometry.payload_offset();
        block.memory.bytes_mut()[payload_at + block.payload..payload_at + start].fill(0);
        block.payload = start;
        block.entries += 1;
        let desc = PageDesc {
            first_run: to_u32(block.runs - self.open.first_run)?,
            run_count: 0,
            payload_start: to_u32(start - self.open.payload_start)?,
            payload_len: 0,
        };
        let at = geometry.slots_offset() + index * SLOT_BYTES;
        block.memory.bytes_mut()[at..at + SLOT_BYTES].copy_from_slice(&slot.to_le_bytes());
        self.open.entries += 1;
        self.entry = Some(OpenEntry {
            page: shape.page,
            index,
            desc,
        });
        Ok(())
    }

    /// Appends the delta's runs to the open entry and rewrites its
    /// descriptor.
    fn append<'r, I>(
        &mut self,
        geometry: &ArenaGeometry,
        shape: DeltaShape,
        runs: I,
    ) -> Result<(), GpuError>
    where
        I: Iterator<Item = DeltaRun<'r>>,
    {
        let (Some(mut entry), Some(block)) = (self.entry, self.blocks.last_mut()) else {
            return Err(GpuError::Unsupported("no open arena entry".into()));
        };
        let payload_at = geometry.payload_offset();
        let runs_at = geometry.runs_offset();
        let chunk_payload = self.open.payload_start;
        let entry_start = chunk_payload + entry.desc.payload_start as usize;
        let bytes = block.memory.bytes_mut();
        let mut cursor = entry.desc.payload_len as usize;
        for run in runs {
            let len = run.bytes.len();
            let pad = padding_for(cursor, run.offset as usize, len);
            let at = payload_at + entry_start + cursor;
            bytes[at..at + pad].fill(0);
            bytes[at + pad..at + pad + len].copy_from_slice(run.bytes);
            cursor += pad;
            let gpu_run = GpuRun {
                payload_offset: to_u32(entry.desc.payload_start as usize + cursor)?,
                page_offset: u16::try_from(run.offset)
                    .map_err(|_| GpuError::Unsupported("run offset past 64 KiB".into()))?,
                len_minus_one: u16::try_from(len - 1)
                    .map_err(|_| GpuError::Unsupported("run past 64 KiB".into()))?,
            };
            let r = runs_at + block.runs * RUN_DESC_BYTES;
            let out: &mut [u8; RUN_DESC_BYTES] = (&mut bytes[r..r + RUN_DESC_BYTES])
                .try_into()
                .map_err(|_| GpuError::Unsupported("run slot".into()))?;
            gpu_run.encode(out);
            block.runs += 1;
            cursor += len;
        }
        debug_assert!(cursor - entry.desc.payload_len as usize <= shape.payload_bound());
        entry.desc.run_count += to_u32(shape.run_count)?;
        entry.desc.payload_len = to_u32(cursor)?;
        entry
            .desc
            .encode(&mut bytes[entry.index * PAGE_DESC_BYTES..][..PAGE_DESC_BYTES]);
        block.payload = entry_start + cursor;
        self.open.runs += shape.run_count;
        self.open.useful += shape.useful;
        self.counts.runs += shape.run_count as u64;
        self.counts.bytes += shape.useful as u64;
        self.entry = Some(entry);
        debug_assert_eq!(
            block.runs,
            self.open.first_run + self.open.runs,
            "runs of a chunk are contiguous"
        );
        Ok(())
    }

    /// Closes the open chunk (if it holds an entry) and opens the next one
    /// where the last block's areas end.
    fn seal_chunk(&mut self) {
        if let Some(block) = self.blocks.last() {
            if self.open.entries > 0 {
                let payload_len = block.payload - self.open.payload_start;
                self.chunks.push(ArenaChunk {
                    block: self.blocks.len() - 1,
                    first_entry: self.open.first_entry,
                    entries: self.open.entries,
                    first_run: self.open.first_run,
                    runs: self.open.runs,
                    payload_start: self.open.payload_start,
                    payload_len,
                    payload_useful: self.open.useful,
                });
            }
            self.open = OpenChunk {
                first_entry: block.entries,
                first_run: block.runs,
                payload_start: align16(block.payload),
                ..OpenChunk::default()
            };
        }
        self.entry = None;
    }

    /// Starts a fresh block (a recycled one when there is one).
    fn start_block(&mut self, geometry: &ArenaGeometry) -> Result<(), GpuError> {
        let bytes = geometry.block_bytes();
        let memory = match self.free.pop() {
            Some(memory) if memory.bytes().len() >= bytes => memory,
            _ => ArenaMemory::alloc(self.target.context, bytes)?,
        };
        self.blocks.push(ArenaBlock {
            memory,
            entries: 0,
            runs: 0,
            payload: 0,
        });
        self.open = OpenChunk::default();
        self.entry = None;
        Ok(())
    }
}

/// Checks a delta's runs before anything is written: non-empty, sorted,
/// disjoint, within the page, as many and as long as the header says.
fn check_runs<'r>(
    shape: DeltaShape,
    page_len: usize,
    runs: impl Iterator<Item = DeltaRun<'r>>,
) -> Result<(), GpuError> {
    let (mut count, mut bytes, mut end) = (0usize, 0usize, 0usize);
    for run in runs {
        let start = run.offset as usize;
        if run.bytes.is_empty() || (count > 0 && start < end) || run.end() > page_len {
            return Err(GpuError::Corrupted(format!(
                "a run [{start}, {}) of {} is empty, out of order or past its {page_len}-byte page",
                run.end(),
                shape.page
            )));
        }
        end = run.end();
        count += 1;
        bytes += run.bytes.len();
    }
    if count != shape.run_count || bytes != shape.useful {
        return Err(GpuError::Corrupted(format!(
            "a delta of {} has {count} runs of {bytes} bytes, its header says {} of {}",
            shape.page, shape.run_count, shape.useful
        )));
    }
    Ok(())
}

fn to_u32(value: usize) -> Result<u32, GpuError> {
    u32::try_from(value)
        .map_err(|_| GpuError::Unsupported(format!("arena offset {value} past 32 bits")))
}

/// Adds `arena`'s new pages to `index` (the mirror it was built against:
/// same page length, exactly [`RankArena::base_slots`] slots), each into
/// the slot the builder gave it. Returns the first new slot.
pub(crate) fn adopt_new_pages(
    index: &mut MirrorIndex,
    arena: &RankArena,
) -> Result<usize, GpuError> {
    if index.page_len() != arena.page_len() {
        return Err(GpuError::Unsupported(format!(
            "an arena of {}-byte pages for a mirror of {}-byte pages",
            arena.page_len(),
            index.page_len()
        )));
    }
    let first = index.slot_count();
    if first != arena.base_slots() {
        return Err(GpuError::Unsupported(format!(
            "an arena built against a mirror of {} slots, which now has {first}",
            arena.base_slots()
        )));
    }
    for (k, &page) in arena.new_pages().iter().enumerate() {
        if index.get(page).is_some() {
            return Err(GpuError::Unsupported(format!(
                "{page} became resident after its arena was built"
            )));
        }
        let slot = index.adopt(page)?;
        debug_assert_eq!(slot as usize, first + k);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{DeltaShape as Shape, Workload};
    use crate::device::{DeviceMerger, SimulatedDevice};
    use crate::layout::ChunkPlan;
    use crate::shard::fold_arenas_on;
    use mmsb_engine::merge::{CpuMerge, MergeBackend};
    use mmsb_wal::{CodecConfig, CodecMode, CommitRecord};
    use proptest::prelude::*;

    /// A block geometry small enough for tests to cross block edges.
    fn small(entries: usize, runs: usize, payload_bytes: usize) -> ArenaGeometry {
        ArenaGeometry {
            entries,
            runs,
            payload_bytes,
        }
    }

    fn devices(world: usize, page_len: usize) -> Vec<SimulatedDevice> {
        (0..world)
            .map(|_| {
                let mut sim = SimulatedDevice::new(64);
                sim.mirror_open(page_len).unwrap();
                sim
            })
            .collect()
    }

    fn builder<'a>(
        sims: &'a [SimulatedDevice],
        page_len: usize,
        geometry: ArenaGeometry,
        chunk_entries: usize,
    ) -> ArenaBuilder<'a> {
        let world = sims.len();
        let targets = sims.iter().map(|s| s.arena_target().unwrap()).collect();
        ArenaBuilder::new(
            page_len,
            targets,
            Box::new(move |page: PageId| crate::shard::home_rank(page, world)),
            geometry,
            chunk_entries,
            0,
        )
        .unwrap()
    }

    fn fold(sims: &mut [SimulatedDevice], arenas: &DecodeArenas) -> DeltaCounts {
        let mut devices: Vec<&mut dyn DeviceMerger> = sims
            .iter_mut()
            .map(|s| s as &mut dyn DeviceMerger)
            .collect();
        fold_arenas_on(&mut devices, arenas, None)
            .unwrap()
            .into_iter()
            .fold(DeltaCounts::EMPTY, |all, (counts, _)| all.combine(counts))
    }

    fn finish(sims: &mut [SimulatedDevice], work: &Workload) -> Vec<u8> {
        let page_len = work.page_len;
        let mut out = vec![0xA5u8; work.base.len()];
        for sim in sims {
            sim.mirror_finish(&mut |page, image| {
                let at = page.get() as usize * page_len;
                out[at..at + page_len].copy_from_slice(image);
                Ok(())
            })
            .unwrap();
        }
        out
    }

    fn cpu(work: &Workload) -> Vec<u8> {
        let mut batch = work.batch().unwrap();
        CpuMerge::best(1).unwrap().merge_batch(&mut batch).unwrap();
        batch.images().to_vec()
    }

    fn push_bases(builder: &mut ArenaBuilder<'_>, work: &Workload) {
        for (page, image) in work.base.chunks_exact(work.page_len).enumerate() {
            builder.push_base(PageId(page as u64), image).unwrap();
        }
    }

    /// Layer `k` of a workload: every page's `k`-th delta (epoch order),
    /// in page order: what decoding the TLog's records in order gives.
    fn push_layers(
        builder: &mut ArenaBuilder<'_>,
        work: &Workload,
        layers: std::ops::Range<usize>,
    ) {
        for k in layers {
            for (page, chain) in work.chains.iter().enumerate() {
                if let Some((epoch, delta)) = chain.get(k) {
                    assert_eq!(delta.page_id(), PageId(page as u64));
                    builder.push_delta(epoch.get(), delta).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_page_major_feed_reproduces_the_walked_layout_byte_for_byte() {
        for page_len in [4096usize, 1000] {
            let work = Workload::generate(300, page_len, Shape::default(), 3);
            let batch = work.batch().unwrap();
            let sims = devices(1, page_len);
            let mut b = builder(&sims, page_len, small(4096, 1 << 16, 8 << 20), 64);
            push_bases(&mut b, &work);
            for chain in &work.chains {
                for (epoch, delta) in chain {
                    b.push_delta(epoch.get(), delta).unwrap();
                }
            }
            let arenas = b.finish();
            let arena = arenas.rank(0).unwrap();
            assert_eq!(arena.chunks().len(), 300usize.div_ceil(64));
            for (index, chunk) in arena.chunks().iter().enumerate() {
                let range = index * 64..(index * 64 + 64).min(300);
                assert_eq!(
                    (chunk.first_entry, chunk.entries),
                    (range.start, range.len())
                );
                let plan = ChunkPlan::new(&batch, range.clone()).unwrap();
                let want = *plan.layout();
                let mut expected = vec![0x11; want.total_len];
                plan.fill(&batch, &mut expected).unwrap();
                let view = arena.view(chunk).unwrap();
                let got = *view.layout();
                assert_eq!(
                    (got.pages, got.runs, got.payload_len, got.payload_useful),
                    (want.pages, want.runs, want.payload_len, want.payload_useful)
                );
                let meta = view.meta();
                assert_eq!(meta[..want.runs_offset], expected[..want.runs_offset]);
                let runs = want.runs * RUN_DESC_BYTES;
                assert_eq!(
                    meta[got.runs_offset..got.runs_offset + runs],
                    expected[want.runs_offset..want.runs_offset + runs]
                );
                assert_eq!(
                    view.payload(),
                    &expected[want.payload_offset..][..want.payload_len]
                );
                let slots: Vec<u32> = range.clone().map(|p| p as u32).collect();
                assert_eq!(arena.slots(chunk).unwrap(), slots);
                // The fold path's own packing (header-sized windows, slack
                // zeroed) carries the same runs, bytes and lengths.
                let shard = crate::shard::ShardPlan::whole(
                    &batch,
                    crate::shard::ChunkLimits {
                        max_pages: 64,
                        max_meta_bytes: usize::MAX,
                    },
                )
                .unwrap();
                let packed_plan = shard.chunk(index).unwrap();
                let mut packed = vec![0x22; crate::shard::packed_len(packed_plan.layout())];
                shard
                    .pack(&batch, &packed_plan, &slots, &mut packed)
                    .unwrap();
                let packed_view = ChunkView::new(*packed_plan.layout(), &packed).unwrap();
                for page in 0..range.len() {
                    assert_eq!(decoded(&view, page), decoded(&packed_view, page));
                }
            }
        }
    }

    /// Entry `page` of a meta region: run count, exact payload length, and
    /// each run's page offset and bytes, in list order.
    fn decoded(view: &ChunkView<'_>, page: usize) -> (u32, u32, Vec<(u16, Vec<u8>)>) {
        let desc = view.page(page);
        let runs = desc
            .runs()
            .map(|r| {
                let run = view.run(r);
                let at = run.payload_offset as usize;
                (run.page_offset, view.payload()[at..at + run.len()].to_vec())
            })
            .collect();
        (desc.run_count, desc.payload_len, runs)
    }

    #[test]
    fn record_order_folds_like_the_cpu_and_keeps_pages_apart_within_a_chunk() {
        let work = Workload::generate(500, 4096, Shape::default(), 11);
        let expected = cpu(&work);
        for world in [1usize, 2, 3] {
            let mut sims = devices(world, 4096);
            let arenas = {
                let mut b = builder(&sims, 4096, small(700, 3000, 256 << 10), 200);
                push_bases(&mut b, &work);
                push_layers(&mut b, &work, 0..8);
                b.finish()
            };
            for arena in arenas.ranks() {
                assert!(arena.blocks().len() > 1, "the test must cross block edges");
                for chunk in arena.chunks() {
                    let mut slots = arena.slots(chunk).unwrap();
                    slots.sort_unstable();
                    assert!(
                        slots.windows(2).all(|w| w[0] < w[1]),
                        "a page twice in a chunk"
                    );
                }
            }
            let counts = fold(&mut sims, &arenas);
            assert_eq!(counts.pages, 500);
            assert_eq!(counts.bytes, work.payload_bytes());
            assert!(finish(&mut sims, &work) == expected, "world {world}");
        }
    }

    #[test]
    fn tlog_records_decode_into_arenas_that_fold_like_the_cpu() {
        let work = Workload::generate(400, 4096, Shape::default(), 5);
        let expected = cpu(&work);
        for mode in [CodecMode::Raw, CodecMode::Adaptive] {
            // Records of 50 pages each, layer after layer, as commits write.
            let mut records = Vec::new();
            for k in 0..8 {
                for pages in work.chains.chunks(50) {
                    let deltas: Vec<_> = pages.iter().filter_map(|c| c.get(k)).collect();
                    let epoch = deltas.iter().map(|(e, _)| e.get()).max().unwrap_or(0);
                    let record = CommitRecord::new(deltas.iter().map(|(_, d)| d.clone()).collect());
                    let mut bytes = Vec::new();
                    record
                        .encode(&CodecConfig::with_mode(mode), &mut bytes)
                        .unwrap();
                    records.push((epoch, bytes));
                }
            }
            let mut sims = devices(2, 4096);
            let arenas = {
                let mut b = builder(&sims, 4096, ArenaGeometry::default(), DEFAULT_CHUNK_ENTRIES);
                push_bases(&mut b, &work);
                // Epochs per record only need to grow per page: use the
                // record index (every page's k-th delta is in layer k).
                for (index, (_, bytes)) in records.iter().enumerate() {
                    assert!(b.push_record(index as u64, bytes).unwrap() > 0);
                }
                b.finish()
            };
            fold(&mut sims, &arenas);
            assert!(finish(&mut sims, &work) == expected, "{mode:?}");
        }
    }

    #[test]
    fn a_second_arena_folds_over_resident_pages_and_a_stale_one_is_refused() {
        let work = Workload::generate(200, 512, Shape::default(), 8);
        let expected = cpu(&work);
        let mut sims = devices(2, 512);
        let first = {
            let mut b = builder(&sims, 512, small(64, 512, 16 << 10), 32);
            push_bases(&mut b, &work);
            push_layers(&mut b, &work, 0..3);
            b.finish()
        };
        // Built before the first one folded: against the empty mirrors.
        let stale = {
            let mut b = builder(&sims, 512, small(64, 512, 16 << 10), 32);
            b.push_base(PageId(0), &work.base[..512]).unwrap();
            b.finish()
        };
        fold(&mut sims, &first);
        let mut devs: Vec<&mut dyn DeviceMerger> = sims
            .iter_mut()
            .map(|s| s as &mut dyn DeviceMerger)
            .collect();
        let refused = fold_arenas_on(&mut devs, &stale, None);
        assert!(
            matches!(refused, Err(GpuError::Unsupported(_))),
            "{refused:?}"
        );
        drop(devs);
        let second = {
            let mut b = builder(&sims, 512, small(64, 512, 16 << 10), 32);
            b.recycle(first);
            push_layers(&mut b, &work, 3..8);
            b.finish()
        };
        assert!(second.ranks().iter().all(|r| r.new_pages().is_empty()));
        fold(&mut sims, &second);
        assert!(finish(&mut sims, &work) == expected);
    }

    #[test]
    fn bad_deltas_and_records_are_refused_before_anything_is_written() {
        let sims = devices(1, 256);
        let mut b = builder(&sims, 256, small(16, 64, 4096), 8);
        let delta = |page: u64, offset: u32, len: usize| {
            Delta::from_sorted_runs(
                PageId(page),
                [DeltaRun {
                    offset,
                    bytes: &vec![7u8; len],
                }],
            )
            .unwrap()
        };
        let unknown = b.push_delta(1, &delta(9, 0, 8));
        assert!(
            matches!(unknown, Err(GpuError::Unsupported(_))),
            "{unknown:?}"
        );
        b.push_base(PageId(9), &[0; 256]).unwrap();
        assert!(b.push_base(PageId(9), &[0; 256]).is_err());
        assert!(matches!(
            b.push_base(PageId(8), &[0; 255]),
            Err(GpuError::Corrupted(_))
        ));
        let past = b.push_delta(1, &delta(9, 250, 8));
        assert!(matches!(past, Err(GpuError::Corrupted(_))), "{past:?}");
        b.push_delta(5, &delta(9, 0, 8)).unwrap();
        let back = b.push_delta(4, &delta(9, 0, 8));
        assert!(matches!(back, Err(GpuError::Corrupted(_))), "{back:?}");
        let one = delta(9, 0, 8);
        let lying = b.push_runs(PageId(9), 6, || one.runs(), 2, 8);
        assert!(matches!(lying, Err(GpuError::Corrupted(_))), "{lying:?}");
        let garbage = b.push_record(7, &[1, 0, 5, 0xFF]);
        assert!(
            matches!(garbage, Err(GpuError::Corrupted(_))),
            "{garbage:?}"
        );
        let arenas = b.finish();
        let arena = arenas.rank(0).unwrap();
        assert_eq!(arena.counts().deltas, 1);
        assert_eq!(arena.chunks().len(), 1);
        assert!(ArenaGeometry {
            entries: 0,
            ..ArenaGeometry::default()
        }
        .check()
        .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any page count, page size, world size, chunk size and block
        /// geometry: arenas fed in record order, half of the layers over
        /// new pages and the rest over resident ones, fold like the CPU.
        #[test]
        fn arenas_fold_like_the_cpu_for_any_shape(
            pages in 1usize..120,
            page_len in prop_oneof![Just(64usize), Just(200), Just(1024), Just(4096)],
            world in 1usize..4,
            chunk_entries in 1usize..40,
            entries in 1usize..50,
            runs in 4usize..200,
            payload_kib in 2usize..32,
            split in 0usize..=8,
            seed in any::<u64>(),
        ) {
            let shape = Shape { max_run_bytes: 256.min(page_len), ..Shape::default() };
            let work = Workload::generate(pages, page_len, shape, seed);
            let expected = cpu(&work);
            let geometry = small(entries, runs, payload_kib << 10);
            let mut sims = devices(world, page_len);
            let first = {
                let mut b = builder(&sims, page_len, geometry, chunk_entries);
                push_bases(&mut b, &work);
                push_layers(&mut b, &work, 0..split);
                b.finish()
            };
            fold(&mut sims, &first);
            let second = {
                let mut b = builder(&sims, page_len, geometry, chunk_entries);
                b.recycle(first);
                push_layers(&mut b, &work, split..8);
                b.finish()
            };
            fold(&mut sims, &second);
            prop_assert!(finish(&mut sims, &work) == expected);
        }
    }
}
