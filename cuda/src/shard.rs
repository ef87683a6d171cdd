//! Host-side preparation of a mirror fold, shared by one GPU and by pages
//! sharded over several (`nccl::ShardedMerge`):
//!
//! - [`ShardPlan`]: which batch slots one device folds (all of them, or one
//!   rank's pages routed by an index list: the batch is never copied), each
//!   page's chain checked and sized from its delta headers alone (run count
//!   and changed bytes are O(1) per delta; the payload window is reserved at
//!   its co-alignment upper bound), in parallel, and the chunks the pages
//!   form. No run is read before its chunk is filled, and then only once.
//! - [`MirrorIndex`]: which slot of a device page mirror holds each page;
//!   lookups of a fold's pages run in parallel, only new pages are inserted
//!   one by one.
//! - [`fold_sharded`]: one batch folded over several devices' mirrors, one
//!   host thread per device (what `nccl::ShardedMerge::fold` runs).
//! - [`DeltaCounts`]: what a fold covered (pages, deltas, runs, bytes,
//!   epochs), the statistics NCCL aggregates over GPUs.
//!
//! Nothing here calls the driver, so `benches/shard_prepare.rs` times the
//! whole host side of a fold on any machine.

use std::ops::Range;

use mmsb_engine::merge::{ChainEntry, MergeBatch};
use mmsb_wal::PageId;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::config::{DEFAULT_MAX_CHUNK_META_BYTES, DEFAULT_MAX_CHUNK_PAGES};
use crate::device::DeviceMerger;
use crate::error::GpuError;
use crate::layout::{
    align16, invalid_batch, size_from_headers, ChunkLayout, ChunkPlan, PageSize, SlotMap,
};

/// Pages per rayon task when pages are checked, sized or looked up.
const PAGES_PER_TASK: usize = 512;

/// Meta bytes of any chunk besides its pages' own: up to 15 bytes of
/// padding after the run descriptors and the 16-byte tail margin.
const CHUNK_FIXED_META_BYTES: usize =
    crate::layout::TAIL_MARGIN_BYTES + crate::layout::CHUNK_BYTES - 1;

/// Pages in one block of the default ownership: blocks of consecutive page
/// ids go to the ranks in turn, so each rank's host work walks runs of
/// neighbouring pages (their deltas usually sit near each other in memory)
/// rather than every `world`-th page.
pub const OWNER_BLOCK_PAGES: u64 = 64;

/// The rank that owns `page` by default among `world` ranks:
/// `(page_id / OWNER_BLOCK_PAGES) % world`.
pub fn home_rank(page: PageId, world: usize) -> usize {
    ((page.get() / OWNER_BLOCK_PAGES) % world.max(1) as u64) as usize
}

/// Mirror slot value meaning "not in the mirror yet" during a lookup.
const NO_SLOT: u32 = u32::MAX;

/// Per-GPU delta statistics, and their aggregate over the communicator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaCounts {
    /// Pages folded (a page counts once per fold that touches it).
    pub pages: u64,
    /// Deltas folded.
    pub deltas: u64,
    /// Runs folded.
    pub runs: u64,
    /// Bytes the deltas wrote.
    pub bytes: u64,
    /// Lowest commit epoch folded (`u64::MAX` when none).
    pub min_epoch: u64,
    /// Highest commit epoch folded (0 when none).
    pub max_epoch: u64,
}

impl DeltaCounts {
    /// Nothing folded yet.
    pub const EMPTY: DeltaCounts = DeltaCounts {
        pages: 0,
        deltas: 0,
        runs: 0,
        bytes: 0,
        min_epoch: u64::MAX,
        max_epoch: 0,
    };

    /// One page's chain, walked delta by delta.
    pub fn of_chain(chain: &[ChainEntry<'_>]) -> DeltaCounts {
        let mut counts = DeltaCounts {
            pages: 1,
            ..DeltaCounts::EMPTY
        };
        for entry in chain {
            counts.deltas += 1;
            counts.runs += entry.delta.run_count() as u64;
            counts.bytes += entry.delta.changed_len() as u64;
            counts.min_epoch = counts.min_epoch.min(entry.epoch.get());
            counts.max_epoch = counts.max_epoch.max(entry.epoch.get());
        }
        counts
    }

    /// One page's chain from its size: a checked chain is in
    /// increasing epoch order, so only its ends are read.
    fn of_measured(chain: &[ChainEntry<'_>], size: PageSize) -> DeltaCounts {
        DeltaCounts {
            pages: 1,
            deltas: chain.len() as u64,
            runs: size.runs as u64,
            bytes: size.useful as u64,
            min_epoch: chain.first().map_or(u64::MAX, |e| e.epoch.get()),
            max_epoch: chain.last().map_or(0, |e| e.epoch.get()),
        }
    }

    /// Both counts together, as an all-reduce would give them.
    pub fn combine(self, other: DeltaCounts) -> DeltaCounts {
        DeltaCounts {
            pages: self.pages + other.pages,
            deltas: self.deltas + other.deltas,
            runs: self.runs + other.runs,
            bytes: self.bytes + other.bytes,
            min_epoch: self.min_epoch.min(other.min_epoch),
            max_epoch: self.max_epoch.max(other.max_epoch),
        }
    }
}

/// How a fold's pages are cut into chunks (one meta transfer and one kernel
/// launch each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Most pages in one chunk (at least one page always forms a chunk).
    pub max_pages: usize,
    /// Most meta bytes in one chunk (an upper bound of each page's share is
    /// used; a single page may exceed it alone).
    pub max_meta_bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_pages: DEFAULT_MAX_CHUNK_PAGES,
            max_meta_bytes: DEFAULT_MAX_CHUNK_META_BYTES,
        }
    }
}

/// The pages of one batch that one device folds, checked, sized and cut
/// into chunks (see the module docs). Positions `0..len()` stand for batch
/// slots through [`Self::slot_map`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    /// Batch slots in batch order; `None`: every slot of the batch.
    slots: Option<Vec<u32>>,
    sizes: Vec<PageSize>,
    chunks: Vec<Range<usize>>,
    counts: DeltaCounts,
}

impl ShardPlan {
    /// Every page of `batch`.
    pub fn whole(batch: &MergeBatch<'_>, limits: ChunkLimits) -> Result<Self, GpuError> {
        Self::build(batch, None, limits)
    }

    /// The pages of `batch` that `owner` gives to `rank`, in batch order.
    pub fn for_rank<F>(
        batch: &MergeBatch<'_>,
        rank: usize,
        owner: F,
        limits: ChunkLimits,
    ) -> Result<Self, GpuError>
    where
        F: Fn(PageId) -> usize + Sync,
    {
        check_slot_range(batch)?;
        let slots = batch
            .page_ids()
            .par_iter()
            .enumerate()
            .with_min_len(PAGES_PER_TASK)
            .filter(|&(_, &page)| owner(page) == rank)
            .map(|(slot, _)| slot as u32)
            .collect();
        Self::build(batch, Some(slots), limits)
    }

    /// The batch slots `slots` (each at most once, any order; folded in
    /// the order given).
    pub fn from_slots(
        batch: &MergeBatch<'_>,
        slots: Vec<u32>,
        limits: ChunkLimits,
    ) -> Result<Self, GpuError> {
        check_slot_range(batch)?;
        Self::build(batch, Some(slots), limits)
    }

    fn build(
        batch: &MergeBatch<'_>,
        slots: Option<Vec<u32>>,
        limits: ChunkLimits,
    ) -> Result<Self, GpuError> {
        if limits.max_pages == 0 || limits.max_meta_bytes == 0 {
            return Err(GpuError::Unsupported(
                "chunk limits must be positive".into(),
            ));
        }
        let map = slots.as_deref().map_or(SlotMap::Identity, SlotMap::List);
        let len = slots.as_ref().map_or(batch.len(), Vec::len);
        let slot_of = |position: usize| {
            map.slot(position)
                .ok_or_else(|| invalid_batch(format!("no slot at position {position}")))
        };
        let sizes: Vec<PageSize> = (0..len)
            .into_par_iter()
            .with_min_len(PAGES_PER_TASK)
            .map(|position| size_from_headers(batch, slot_of(position)?))
            .collect::<Result<_, _>>()?;
        let counts = sizes
            .par_iter()
            .enumerate()
            .with_min_len(PAGES_PER_TASK)
            .map(|(position, &size)| {
                let chain = map
                    .slot(position)
                    .and_then(|slot| batch.chain(slot))
                    .unwrap_or(&[]);
                DeltaCounts::of_measured(chain, size)
            })
            .reduce(|| DeltaCounts::EMPTY, DeltaCounts::combine);
        let chunks = plan_from_sizes(&sizes, limits);
        Ok(ShardPlan {
            slots,
            sizes,
            chunks,
            counts,
        })
    }

    /// Pages in the plan.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// True when the plan has no page.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Which batch slot each position stands for.
    pub fn slot_map(&self) -> SlotMap<'_> {
        self.slots
            .as_deref()
            .map_or(SlotMap::Identity, SlotMap::List)
    }

    /// The batch slot at `position`.
    pub fn slot(&self, position: usize) -> Option<usize> {
        (position < self.len())
            .then(|| self.slot_map().slot(position))
            .flatten()
    }

    /// The chunks, as ranges of positions, in order.
    pub fn chunks(&self) -> &[Range<usize>] {
        &self.chunks
    }

    /// What folding the plan's pages covers.
    pub fn counts(&self) -> DeltaCounts {
        self.counts
    }

    /// The layout of chunk `index`, from the pages' sizes.
    pub fn chunk(&self, index: usize) -> Result<ChunkPlan, GpuError> {
        let range = self
            .chunks
            .get(index)
            .ok_or_else(|| GpuError::Unsupported(format!("no chunk {index}")))?;
        let sizes = self
            .sizes
            .get(range.clone())
            .ok_or_else(|| GpuError::Unsupported(format!("chunk {index} out of range")))?;
        ChunkPlan::from_sizes(range.clone(), sizes)
    }

    /// Packs chunk `chunk` for a mirror fold into `out` (at least
    /// [`packed_len`] bytes): its meta region at 0, then at
    /// [`slots_offset`] the mirror slot of each of its pages (`u32`,
    /// little-endian) from `slots`. This is all the host writes for a chunk
    /// before the device copies it (GPU merger and benches alike).
    pub fn pack(
        &self,
        batch: &MergeBatch<'_>,
        chunk: &ChunkPlan,
        slots: &[u32],
        out: &mut [u8],
    ) -> Result<(), GpuError> {
        let layout = chunk.layout();
        let at = slots_offset(layout);
        if slots.len() != layout.pages || out.len() < packed_len(layout) {
            return Err(GpuError::Unsupported(format!(
                "{} slots and {} bytes for a chunk of {} pages needing {} bytes",
                slots.len(),
                out.len(),
                layout.pages,
                packed_len(layout)
            )));
        }
        let (meta, rest) = out.split_at_mut(at);
        self.fill(batch, chunk, meta)?;
        for (to, slot) in rest.chunks_exact_mut(4).zip(slots) {
            to.copy_from_slice(&slot.to_le_bytes());
        }
        Ok(())
    }

    /// Writes chunk `chunk`'s meta region into `out` (see
    /// [`ChunkPlan::fill_mapped`]).
    pub fn fill(
        &self,
        batch: &MergeBatch<'_>,
        chunk: &ChunkPlan,
        out: &mut [u8],
    ) -> Result<(), GpuError> {
        chunk.fill_mapped(batch, self.slot_map(), out)
    }
}

/// Where one rank's last mirror fold spent its wall time, in milliseconds
/// (host clock; device work is asynchronous, so `wait_ms` and `drain_ms`
/// are where the host waited for its GPU).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FoldPhases {
    /// Checking, sizing and chunking the rank's pages ([`ShardPlan`]).
    pub plan_ms: f64,
    /// Mirror slot lookups, and uploads of pages the mirror lacked.
    pub assign_ms: f64,
    /// Waiting for a lane's previous chunk before reusing its staging.
    pub wait_ms: f64,
    /// Packing chunks into pinned staging ([`ShardPlan::pack`]).
    pub pack_ms: f64,
    /// Queueing copies and kernel launches.
    pub enqueue_ms: f64,
    /// Waiting for every lane at the end of the fold.
    pub drain_ms: f64,
    /// The rank's whole fold (its plan included).
    pub total_ms: f64,
}

/// Milliseconds since `since`.
pub(crate) fn ms_since(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Folds `batch` into the page mirrors of `devices` (rank = index): each
/// page goes to rank `owner(page_id)`. One host thread per device builds
/// its [`ShardPlan`] (an index list over `batch`: the batch is never
/// copied; checks and sizing read only delta headers, in parallel); only
/// once every rank's pages passed their checks does each thread fold its
/// plan into its device ([`DeviceMerger::mirror_fold_plan`]: packing,
/// upload, launch). With one device the plan is the whole batch. Returns
/// what each rank folded. Host work runs on the shared rayon pool (see
/// [`fold_sharded_on`] for a pool per rank).
pub fn fold_sharded(
    devices: &mut [&mut dyn DeviceMerger],
    batch: &MergeBatch<'_>,
    owner: &(dyn Fn(PageId) -> usize + Sync),
) -> Result<Vec<DeltaCounts>, GpuError> {
    Ok(fold_sharded_on(devices, batch, owner, None)?
        .into_iter()
        .map(|(counts, _)| counts)
        .collect())
}

/// As [`fold_sharded`], with each rank's host work (plan, packing) run on
/// `pools[rank]` when `pools` is given (one pool per device, so the ranks
/// split the host cores instead of queueing on one pool), and with where
/// each rank's time went.
pub fn fold_sharded_on(
    devices: &mut [&mut dyn DeviceMerger],
    batch: &MergeBatch<'_>,
    owner: &(dyn Fn(PageId) -> usize + Sync),
    pools: Option<&[rayon::ThreadPool]>,
) -> Result<Vec<(DeltaCounts, FoldPhases)>, GpuError> {
    let world = devices.len();
    if world == 0 {
        return Err(GpuError::Unsupported("no device to fold on".into()));
    }
    if pools.is_some_and(|pools| pools.len() != world) {
        return Err(GpuError::Unsupported(format!(
            "{} host pools for {world} devices",
            pools.map_or(0, <[_]>::len)
        )));
    }
    let started = std::time::Instant::now();
    let mut limits: Vec<ChunkLimits> = devices.iter().map(|d| d.chunk_limits()).collect();
    let plans = on_each_rank(&mut limits, pools, |rank, &mut limits| {
        let plan = if world == 1 {
            ShardPlan::whole(batch, limits)
        } else {
            ShardPlan::for_rank(batch, rank, owner, limits)
        };
        plan.map(|plan| (plan, ms_since(started)))
    })?;
    let mut work: Vec<(&mut &mut dyn DeviceMerger, &(ShardPlan, f64))> =
        devices.iter_mut().zip(&plans).collect();
    on_each_rank(&mut work, pools, |_, (device, (plan, plan_ms))| {
        let mut phases = FoldPhases::default();
        if !plan.is_empty() {
            device.mirror_fold_plan(batch, plan)?;
            phases = device.last_fold_phases();
        }
        phases.plan_ms = *plan_ms;
        phases.total_ms = ms_since(started);
        Ok((plan.counts(), phases))
    })
}

/// Folds decode arenas (one per device, rank = index, built against these
/// devices' mirrors) on one host thread per device, inside `pools[rank]`
/// when given: each thread only copies its arena's block regions and
/// launches its chunks ([`DeviceMerger::mirror_fold_arena`]). Returns what
/// each rank folded and where its time went.
pub fn fold_arenas_on(
    devices: &mut [&mut dyn DeviceMerger],
    arenas: &crate::arena::DecodeArenas,
    pools: Option<&[rayon::ThreadPool]>,
) -> Result<Vec<(DeltaCounts, FoldPhases)>, GpuError> {
    let world = devices.len();
    if world == 0 || arenas.ranks().len() != world {
        return Err(GpuError::Unsupported(format!(
            "{} decode arenas for {world} devices",
            arenas.ranks().len()
        )));
    }
    if pools.is_some_and(|pools| pools.len() != world) {
        return Err(GpuError::Unsupported(format!(
            "{} host pools for {world} devices",
            pools.map_or(0, <[_]>::len)
        )));
    }
    let started = std::time::Instant::now();
    let mut work: Vec<(&mut &mut dyn DeviceMerger, &crate::arena::RankArena)> =
        devices.iter_mut().zip(arenas.ranks()).collect();
    on_each_rank(&mut work, pools, |_, (device, arena)| {
        let mut phases = FoldPhases::default();
        if !arena.chunks().is_empty() || !arena.new_pages().is_empty() {
            device.mirror_fold_arena(arena)?;
            phases = device.last_fold_phases();
        }
        phases.total_ms = ms_since(started);
        Ok((arena.counts(), phases))
    })
}

/// Runs `job(rank, item)` for every item on a thread of its own (one per
/// device, so each binds its own context), inside `pools[rank]` when
/// given; returns the results in rank order, or the first error.
fn on_each_rank<T, R, F>(
    items: &mut [T],
    pools: Option<&[rayon::ThreadPool]>,
    job: F,
) -> Result<Vec<R>, GpuError>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut T) -> Result<R, GpuError> + Sync,
{
    std::thread::scope(|scope| {
        let job = &job;
        let handles: Vec<_> = items
            .iter_mut()
            .enumerate()
            .map(|(rank, item)| {
                let pool = pools.and_then(|pools| pools.get(rank));
                scope.spawn(move || match pool {
                    Some(pool) => pool.install(|| job(rank, item)),
                    None => job(rank, item),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(GpuError::Disabled("shard thread panicked".into())))
            })
            .collect()
    })
}

/// Where a packed chunk's slot list starts (see [`ShardPlan::pack`]).
pub fn slots_offset(layout: &ChunkLayout) -> usize {
    align16(layout.total_len)
}

/// Bytes of a packed chunk: meta region, padding, slot list.
pub fn packed_len(layout: &ChunkLayout) -> usize {
    slots_offset(layout) + 4 * layout.pages
}

/// Slot lists hold `u32`: refuses batches with more slots.
fn check_slot_range(batch: &MergeBatch<'_>) -> Result<(), GpuError> {
    if u32::try_from(batch.len()).is_err() {
        return Err(GpuError::Unsupported(format!(
            "a batch of {} pages (slot lists hold 32-bit slots)",
            batch.len()
        )));
    }
    Ok(())
}

/// Cuts positions into chunks within `limits`, from each page's meta bound.
fn plan_from_sizes(sizes: &[PageSize], limits: ChunkLimits) -> Vec<Range<usize>> {
    debug_assert!(limits.max_pages > 0);
    let mut chunks = Vec::with_capacity(sizes.len() / limits.max_pages.max(1) + 1);
    let (mut start, mut bytes) = (0usize, CHUNK_FIXED_META_BYTES);
    for (position, size) in sizes.iter().enumerate() {
        let page_bytes = size.meta_bound();
        let pages = position - start;
        if pages > 0
            && (pages >= limits.max_pages
                || bytes.saturating_add(page_bytes) > limits.max_meta_bytes)
        {
            chunks.push(start..position);
            start = position;
            bytes = CHUNK_FIXED_META_BYTES;
        }
        bytes = bytes.saturating_add(page_bytes);
    }
    if start < sizes.len() {
        chunks.push(start..sizes.len());
    }
    chunks
}

/// Which slot of a device page mirror holds each page, and the reverse.
#[derive(Clone, Debug, Default)]
pub struct MirrorIndex {
    page_len: usize,
    slots: FxHashMap<PageId, u32>,
    /// Slot → page; `None` for a slot whose page moved away.
    pages: Vec<Option<PageId>>,
}

impl MirrorIndex {
    /// An empty index of `page_len`-byte pages.
    pub fn new(page_len: usize) -> Self {
        MirrorIndex {
            page_len,
            ..MirrorIndex::default()
        }
    }

    /// Bytes per page.
    pub fn page_len(&self) -> usize {
        self.page_len
    }

    /// Pages the mirror holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the mirror holds no page.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slots in use or left empty by moves (the device buffer's extent).
    pub fn slot_count(&self) -> usize {
        self.pages.len()
    }

    /// The slot of `page`, if the mirror holds it.
    pub fn get(&self, page: PageId) -> Option<u32> {
        self.slots.get(&page).copied()
    }

    /// Slot → page, `None` for an empty slot.
    pub fn pages(&self) -> &[Option<PageId>] {
        &self.pages
    }

    /// The mirror slot of each of `plan`'s pages (new pages get the next
    /// free slots, in plan order) and the batch slots of the new pages.
    /// Pages already held are looked up in parallel.
    pub fn assign(
        &mut self,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
    ) -> Result<(Vec<u32>, Vec<usize>), GpuError> {
        if batch.page_len() != self.page_len {
            return Err(GpuError::Unsupported(format!(
                "a batch of {}-byte pages in a mirror of {}-byte pages",
                batch.page_len(),
                self.page_len
            )));
        }
        let page_at = |position: usize| {
            plan.slot(position)
                .and_then(|slot| batch.page_ids().get(slot).copied())
                .ok_or_else(|| invalid_batch(format!("no page at position {position}")))
        };
        let held = &self.slots;
        let mut slots: Vec<u32> = (0..plan.len())
            .into_par_iter()
            .with_min_len(PAGES_PER_TASK)
            .map(|position| Ok(held.get(&page_at(position)?).copied().unwrap_or(NO_SLOT)))
            .collect::<Result<_, GpuError>>()?;
        let mut new = Vec::new();
        for (position, slot) in slots.iter_mut().enumerate() {
            if *slot != NO_SLOT {
                continue;
            }
            let page = page_at(position)?;
            let fresh = self.next_slot()?;
            // A page the batch lists twice (never, for a valid batch) keeps
            // its first slot.
            let assigned = *self.slots.entry(page).or_insert(fresh);
            if assigned == fresh {
                self.pages.push(Some(page));
                new.push(plan.slot(position).unwrap_or_default());
            }
            *slot = assigned;
        }
        Ok((slots, new))
    }

    /// Gives `page` a fresh slot (its old one, if any, is left empty);
    /// returns the slot.
    pub fn adopt(&mut self, page: PageId) -> Result<u32, GpuError> {
        let slot = self.next_slot()?;
        if let Some(old) = self.slots.insert(page, slot) {
            if let Some(entry) = self.pages.get_mut(old as usize) {
                *entry = None;
            }
        }
        self.pages.push(Some(page));
        Ok(slot)
    }

    /// Drops `page` (its slot stays empty); returns whether it was held.
    pub fn release(&mut self, page: PageId) -> bool {
        match self.slots.remove(&page) {
            Some(slot) => {
                if let Some(entry) = self.pages.get_mut(slot as usize) {
                    *entry = None;
                }
                true
            }
            None => false,
        }
    }

    fn next_slot(&self) -> Result<u32, GpuError> {
        u32::try_from(self.pages.len())
            .ok()
            .filter(|&slot| slot != NO_SLOT)
            .ok_or_else(|| GpuError::Unsupported("more than 2^32 - 1 pages in a mirror".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{DeltaShape, Workload};
    use crate::device::SimulatedDevice;
    use crate::layout::{plan_chunks, ChunkView};
    use mmsb_engine::merge::{CpuMerge, MergeBackend};
    use mmsb_wal::{CommitEpoch, Delta};
    use proptest::prelude::*;

    fn limits(max_pages: usize, max_meta_bytes: usize) -> ChunkLimits {
        ChunkLimits {
            max_pages,
            max_meta_bytes,
        }
    }

    /// The meta regions of every chunk of `plan`, concatenated.
    fn meta_of(batch: &MergeBatch<'_>, plan: &ShardPlan) -> Vec<Vec<u8>> {
        (0..plan.chunks().len())
            .map(|index| {
                let chunk = plan.chunk(index).unwrap();
                let mut out = vec![0xEE; chunk.layout().total_len];
                plan.fill(batch, &chunk, &mut out).unwrap();
                out
            })
            .collect()
    }

    /// Page `page` of a meta region: its descriptor with each run's page
    /// offset and bytes, in list order.
    fn decoded(view: &ChunkView<'_>, page: usize) -> (u32, u32, Vec<(u16, Vec<u8>)>) {
        let desc = view.page(page);
        let runs = view
            .page_runs(page)
            .map(|r| {
                let run = view.run(r);
                let at = run.payload_offset as usize;
                (run.page_offset, view.payload()[at..at + run.len()].to_vec())
            })
            .collect();
        (desc.run_count, desc.payload_len, runs)
    }

    #[test]
    fn header_sized_plans_carry_the_walked_layouts_runs_and_lengths() {
        let work = Workload::generate(300, 512, DeltaShape::default(), 5);
        let batch = work.batch().unwrap();
        let plan = ShardPlan::whole(&batch, limits(64, usize::MAX)).unwrap();
        assert_eq!(plan.chunks(), plan_chunks(&batch, 64, usize::MAX));
        for (index, meta) in meta_of(&batch, &plan).into_iter().enumerate() {
            let range = plan.chunks()[index].clone();
            let reference = ChunkPlan::new(&batch, range.clone()).unwrap();
            let mut expected = vec![0x11; reference.layout().total_len];
            reference.fill(&batch, &mut expected).unwrap();
            let layout = *plan.chunk(index).unwrap().layout();
            assert!(layout.total_len >= reference.layout().total_len);
            assert_eq!(layout.payload_useful, reference.layout().payload_useful);
            let view = ChunkView::new(layout, &meta).unwrap();
            let want = ChunkView::new(*reference.layout(), &expected).unwrap();
            for page in 0..range.len() {
                assert_eq!(view.page(page).payload_start % 16, 0);
                assert_eq!(
                    decoded(&view, page),
                    decoded(&want, page),
                    "chunk {index} page {page}"
                );
            }
        }
    }

    #[test]
    fn counts_from_sizes_equal_counts_walked_delta_by_delta() {
        let work = Workload::generate(200, 1024, DeltaShape::default(), 8);
        let batch = work.batch().unwrap();
        let plan = ShardPlan::whole(&batch, ChunkLimits::default()).unwrap();
        let walked = (0..batch.len())
            .map(|slot| DeltaCounts::of_chain(batch.chain(slot).unwrap()))
            .fold(DeltaCounts::EMPTY, DeltaCounts::combine);
        assert_eq!(plan.counts(), walked);
        assert_eq!(plan.counts().pages, 200);
        assert_eq!(plan.counts().bytes, work.payload_bytes());
    }

    #[test]
    fn rank_plans_partition_the_batch_in_batch_order() {
        let work = Workload::generate(257, 256, DeltaShape::default(), 9);
        let batch = work.batch().unwrap();
        let world = 3;
        let owner = |page: PageId| (page.get() % world as u64) as usize;
        let mut seen = vec![false; batch.len()];
        let mut total = DeltaCounts::EMPTY;
        for rank in 0..world {
            let plan = ShardPlan::for_rank(&batch, rank, owner, limits(10, usize::MAX)).unwrap();
            let slots: Vec<usize> = (0..plan.len()).map(|p| plan.slot(p).unwrap()).collect();
            assert!(slots.windows(2).all(|w| w[0] < w[1]));
            for slot in slots {
                assert_eq!(owner(batch.page_ids()[slot]), rank);
                assert!(!std::mem::replace(&mut seen[slot], true));
            }
            assert!(plan.chunks().iter().all(|c| c.len() <= 10));
            total = total.combine(plan.counts());
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(total.pages, 257);
        assert_eq!(plan_count_of(&batch), total);
    }

    fn plan_count_of(batch: &MergeBatch<'_>) -> DeltaCounts {
        ShardPlan::whole(batch, ChunkLimits::default())
            .unwrap()
            .counts()
    }

    #[test]
    fn meta_limits_hold_for_the_real_layouts() {
        let work = Workload::generate(400, 4096, DeltaShape::default(), 2);
        let batch = work.batch().unwrap();
        let max_meta = 64 * 1024;
        let plan = ShardPlan::whole(&batch, limits(1000, max_meta)).unwrap();
        assert!(plan.chunks().len() > 1);
        for index in 0..plan.chunks().len() {
            let chunk = plan.chunk(index).unwrap();
            if chunk.layout().pages > 1 {
                assert!(chunk.layout().total_len <= max_meta, "chunk {index}");
            }
        }
        assert_eq!(plan.chunks().last().map(|c| c.end), Some(batch.len()));
    }

    #[test]
    fn plans_over_missing_slots_or_zero_limits_are_refused() {
        let delta = Delta::full_image(PageId(0), &[1; 64]).unwrap();
        let mut batch = MergeBatch::new(64).unwrap();
        batch
            .push_page(
                PageId(0),
                &[0; 64],
                [ChainEntry::new(CommitEpoch(1), &delta)],
            )
            .unwrap();
        assert!(ShardPlan::whole(&batch, ChunkLimits::default()).is_ok());
        let bad = ShardPlan::from_slots(&batch, vec![0, 1], ChunkLimits::default());
        assert!(matches!(bad, Err(GpuError::Unsupported(_))), "{bad:?}");
        assert!(ShardPlan::whole(&batch, limits(0, 1)).is_err());
        assert!(ShardPlan::whole(&batch, limits(1, 0)).is_err());
    }

    #[test]
    fn mirror_index_assigns_new_pages_in_order_and_finds_held_ones() {
        let work = Workload::generate(2000, 64, DeltaShape::default(), 4);
        let batch = work.batch().unwrap();
        let mut index = MirrorIndex::new(64);
        let odd = ShardPlan::for_rank(
            &batch,
            1,
            |p| (p.get() % 2) as usize,
            ChunkLimits::default(),
        )
        .unwrap();
        let (slots, new) = index.assign(&batch, &odd).unwrap();
        assert_eq!(slots, (0..1000).collect::<Vec<u32>>());
        assert_eq!(new, (0..1000).map(|k| 2 * k + 1).collect::<Vec<usize>>());
        let all = ShardPlan::whole(&batch, ChunkLimits::default()).unwrap();
        let (slots, new) = index.assign(&batch, &all).unwrap();
        assert_eq!(new, (0..1000).map(|k| 2 * k).collect::<Vec<usize>>());
        for (slot, &mirror_slot) in slots.iter().enumerate() {
            let expected = if slot % 2 == 1 {
                slot / 2
            } else {
                1000 + slot / 2
            };
            assert_eq!(mirror_slot as usize, expected, "batch slot {slot}");
        }
        assert_eq!((index.len(), index.slot_count()), (2000, 2000));
        let moved = index.adopt(PageId(3)).unwrap();
        assert_eq!(moved, 2000);
        assert_eq!(index.pages()[1], None);
        assert!(index.release(PageId(3)));
        assert!(!index.release(PageId(3)));
        assert_eq!(index.get(PageId(3)), None);
        assert_eq!(index.len(), 1999);
        let mut other = MirrorIndex::new(128);
        assert!(other.assign(&batch, &all).is_err());
    }

    /// Folds `work` over `world` simulated devices twice (the second fold
    /// re-applies every chain to resident pages: folding is idempotent),
    /// with `owner` routing; returns every page finished, by page id.
    fn sharded_on_simulated(
        work: &Workload,
        world: usize,
        owner: &(dyn Fn(PageId) -> usize + Sync),
        max_chunk_pages: usize,
    ) -> (Vec<u8>, DeltaCounts) {
        let page_len = work.page_len;
        let mut sims: Vec<SimulatedDevice> = (0..world)
            .map(|_| SimulatedDevice::new(max_chunk_pages))
            .collect();
        for sim in &mut sims {
            sim.mirror_open(page_len).unwrap();
        }
        let batch = work.batch().unwrap();
        let mut total = DeltaCounts::EMPTY;
        for _ in 0..2 {
            let mut devices: Vec<&mut dyn DeviceMerger> = sims
                .iter_mut()
                .map(|s| s as &mut dyn DeviceMerger)
                .collect();
            let counts = fold_sharded(&mut devices, &batch, owner).unwrap();
            assert_eq!(counts.len(), world);
            total = counts.into_iter().fold(total, DeltaCounts::combine);
        }
        let mut out = vec![0xA5u8; work.base.len()];
        for (rank, sim) in sims.iter_mut().enumerate() {
            sim.mirror_finish(&mut |page, image| {
                assert_eq!(owner(page), rank, "{page} finished on rank {rank}");
                let at = page.get() as usize * page_len;
                out[at..at + page_len].copy_from_slice(image);
                Ok(())
            })
            .unwrap();
        }
        (out, total)
    }

    #[test]
    fn home_ranks_go_round_in_blocks() {
        let ranks: Vec<usize> = [0u64, 63, 64, 127, 128, 191, 192, 256]
            .iter()
            .map(|&p| home_rank(PageId(p), 3))
            .collect();
        assert_eq!(ranks, [0, 0, 1, 1, 2, 2, 0, 1]);
        assert_eq!(home_rank(PageId(u64::MAX), 1), 0);
        assert_eq!(home_rank(PageId(5), 0), 0);
    }

    #[test]
    fn sharded_folds_on_simulated_devices_equal_the_cpu_merge() {
        let work = Workload::generate(700, 256, DeltaShape::default(), 21);
        let mut expected = work.batch().unwrap();
        CpuMerge::best(1)
            .unwrap()
            .merge_batch(&mut expected)
            .unwrap();
        for world in [1usize, 2, 3, 4, 8] {
            let owner = move |page: PageId| home_rank(page, world);
            let (out, counts) = sharded_on_simulated(&work, world, &owner, 64);
            assert!(out == expected.images(), "world {world}: pages differ");
            assert_eq!(counts.pages, 1400);
            assert_eq!(counts.bytes, 2 * work.payload_bytes());
        }
        let mut none: Vec<&mut dyn DeviceMerger> = Vec::new();
        let batch = work.batch().unwrap();
        assert!(fold_sharded(&mut none, &batch, &|_| 0).is_err());
    }

    #[test]
    fn folds_on_a_pool_per_rank_equal_the_cpu_and_report_phases() {
        let work = Workload::generate(300, 256, DeltaShape::default(), 17);
        let mut expected = work.batch().unwrap();
        CpuMerge::best(1)
            .unwrap()
            .merge_batch(&mut expected)
            .unwrap();
        let pools: Vec<rayon::ThreadPool> = (0..2)
            .map(|_| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap()
            })
            .collect();
        let mut sims: Vec<SimulatedDevice> = (0..2).map(|_| SimulatedDevice::new(32)).collect();
        for sim in &mut sims {
            sim.mirror_open(256).unwrap();
        }
        let batch = work.batch().unwrap();
        let owner = |page: PageId| home_rank(page, 2);
        let mut devices: Vec<&mut dyn DeviceMerger> = sims
            .iter_mut()
            .map(|s| s as &mut dyn DeviceMerger)
            .collect();
        let outcomes = fold_sharded_on(&mut devices, &batch, &owner, Some(&pools)).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert_eq!(outcomes.iter().map(|(c, _)| c.pages).sum::<u64>(), 300);
        for (_, phases) in &outcomes {
            assert!(phases.total_ms >= phases.plan_ms && phases.plan_ms > 0.0);
        }
        let refused = fold_sharded_on(&mut devices, &batch, &owner, Some(&pools[..1]));
        assert!(
            matches!(refused, Err(GpuError::Unsupported(_))),
            "{refused:?}"
        );
        drop(devices);
        let mut out = vec![0xA5u8; work.base.len()];
        for sim in &mut sims {
            sim.mirror_finish(&mut |page, image| {
                let at = page.get() as usize * 256;
                out[at..at + 256].copy_from_slice(image);
                Ok(())
            })
            .unwrap();
        }
        assert!(out == expected.images());
    }

    #[test]
    fn a_failing_rank_fails_the_fold() {
        let work = Workload::generate(50, 128, DeltaShape::default(), 3);
        let batch = work.batch().unwrap();
        let mut sims: Vec<SimulatedDevice> = (0..2).map(|_| SimulatedDevice::new(8)).collect();
        for sim in &mut sims {
            sim.mirror_open(128).unwrap();
        }
        sims[1].set_fault(Some(crate::FaultInjection::FailLaunch));
        let mut devices: Vec<&mut dyn DeviceMerger> = sims
            .iter_mut()
            .map(|s| s as &mut dyn DeviceMerger)
            .collect();
        let owner = |page: PageId| (page.get() % 2) as usize;
        let failed = fold_sharded(&mut devices, &batch, &owner);
        assert!(
            matches!(failed, Err(GpuError::Driver { code: 719, .. })),
            "{failed:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Any world size, routing and chunk size: the sharded fold over
        /// simulated devices equals the CPU merge.
        #[test]
        fn sharded_fold_equals_the_cpu_for_any_routing(
            pages in 1usize..150,
            world in 1usize..6,
            max_chunk_pages in 1usize..50,
            salt in any::<u64>(),
        ) {
            let work = Workload::generate(pages, 64, DeltaShape::default(), salt);
            let mut expected = work.batch().unwrap();
            CpuMerge::best(1).unwrap().merge_batch(&mut expected).unwrap();
            let owner = move |page: PageId| {
                (page.get().wrapping_mul(salt | 1).rotate_left(17) % world as u64) as usize
            };
            let (out, counts) = sharded_on_simulated(&work, world, &owner, max_chunk_pages);
            prop_assert!(out == expected.images());
            prop_assert_eq!(counts.pages, 2 * pages as u64);
        }

        /// Any world size and chunk size: the rank plans' chunk meta
        /// regions equal those of a batch holding only that rank's pages.
        #[test]
        fn rank_plans_equal_copied_parts(
            pages in 1usize..120,
            world in 1usize..5,
            max_pages in 1usize..40,
            seed in any::<u64>(),
        ) {
            let work = Workload::generate(pages, 128, DeltaShape::default(), seed);
            let batch = work.batch().unwrap();
            let owner = |page: PageId| (page.get().wrapping_mul(7) % world as u64) as usize;
            for rank in 0..world {
                let plan = ShardPlan::for_rank(&batch, rank, owner, limits(max_pages, usize::MAX)).unwrap();
                let mut part = MergeBatch::new(128).unwrap();
                for slot in 0..batch.len() {
                    if owner(batch.page_ids()[slot]) == rank {
                        part.push_page(batch.page_ids()[slot], batch.page(slot).unwrap(),
                            batch.chain(slot).unwrap().iter().copied()).unwrap();
                    }
                }
                let copied = ShardPlan::whole(&part, limits(max_pages, usize::MAX)).unwrap();
                prop_assert_eq!(plan.chunks(), copied.chunks());
                prop_assert_eq!(plan.counts().pages, part.len() as u64);
                prop_assert_eq!(meta_of(&batch, &plan), meta_of(&part, &copied));
            }
        }
    }
}
