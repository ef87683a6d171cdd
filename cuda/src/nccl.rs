//! Merging over several GPUs of one process through NCCL (cargo feature
//! `nccl`): [`ShardedMerge`].
//!
//! - One communicator over N GPUs, made by cudarc's `Comm::from_devices`
//!   (one rank per GPU, all driven from this thread, collectives grouped).
//! - Pages are partitioned across the GPUs: a page belongs to rank
//!   `(page_id / 64) % world_size` ([`crate::shard::home_rank`]: blocks of
//!   64 neighbouring pages, for host locality) unless
//!   [`ShardedMerge::move_pages`] moved it.
//!   Each GPU keeps the pages it owns resident in its own page mirror (the
//!   same mirror `GpuMerge::open_session` uses).
//! - [`ShardedMerge::fold`] routes each page's chain to the GPU that owns the
//!   page by index lists over the caller's batch (never a copy): one host
//!   thread per GPU checks, sizes (from delta headers) and plans its pages
//!   ([`crate::shard::ShardPlan`]), then packs, uploads and launches them,
//!   so the host work is split N ways ([`ShardedMerge::set_host_threads`]
//!   gives each GPU a host thread pool of its own).
//! - Moving a page's ownership copies its image GPU to GPU (NCCL send on the
//!   old owner, receive into a fresh mirror slot on the new one). A move to
//!   the rank that already owns the page still goes through NCCL (a send to
//!   itself): that keeps the transfer path in use with a world size of 1.
//! - [`ShardedMerge::all_reduce_counts`] aggregates each GPU's delta
//!   statistics (pages, deltas, runs, bytes: sums; epochs: min and max)
//!   into one view with two NCCL all-reduces.
//!
//! NCCL is loaded at run time by cudarc, which looks for `libnccl.so` (and
//! `libnccl.so.<CUDA major>`), not the pip wheel's `libnccl.so.2`:
//! [`nccl_library_present`] says whether one loads, and
//! [`loaded_nccl_library`] which file did (scripts/gpu-scaling.sh links a
//! `libnccl.so` to a wheel's `libnccl.so.2` when no `libnccl.so` exists).

use std::sync::Arc;

use cudarc::driver::safe::{
    CudaContext, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::nccl::safe::{Comm, ReduceOp};
use mmsb_engine::merge::MergeBatch;
use mmsb_wal::PageId;
use rustc_hash::FxHashMap;

use crate::arena::{ArenaBuilder, ArenaGeometry, DecodeArenas};
use crate::config::GpuConfig;
use crate::device::{CudaMerger, DeviceMerger, MirrorSink};
use crate::error::GpuError;
use crate::probe::{driver_library_present, probe};
use crate::shard::{fold_arenas_on, fold_sharded_on, home_rank};
pub use crate::shard::{DeltaCounts, FoldPhases};

/// Whether an NCCL library loads (cudarc's names: `libnccl.so`, ...).
pub fn nccl_library_present() -> bool {
    // SAFETY: only tries to open the library; never calls into it.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// The NCCL file this process has loaded, read from `/proc/self/maps`.
pub fn loaded_nccl_library() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("libnccl"))
        .map(str::to_string)
}

fn nccl_error(call: &'static str, error: cudarc::nccl::result::NcclError) -> GpuError {
    GpuError::Disabled(format!("{call} failed: {error:?}"))
}

fn driver_error(call: &'static str, error: cudarc::driver::DriverError) -> GpuError {
    GpuError::Disabled(format!("{call} failed: {error:?}"))
}

/// The rank that owns `page`: where it was moved, else its home rank.
fn owner_of(moved: &FxHashMap<PageId, usize>, world: usize, page: PageId) -> usize {
    if !moved.is_empty() {
        if let Some(&rank) = moved.get(&page) {
            return rank;
        }
    }
    home_rank(page, world)
}

/// Raw device bytes seen as a cudarc slice, so that NCCL can read or write
/// a page mirror's slot. The caller orders the stream against other work.
struct RawBytes<'a> {
    ptr: CUdeviceptr,
    len: usize,
    stream: &'a Arc<CudaStream>,
}

impl DeviceSlice<u8> for RawBytes<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

impl DevicePtr<u8> for RawBytes<'_> {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

impl DevicePtrMut<u8> for RawBytes<'_> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Sync(None))
    }
}

/// One GPU of the communicator: its merger (with its page mirror open) and
/// what it has folded.
struct Shard {
    merger: CudaMerger,
    counts: DeltaCounts,
}

/// Pages partitioned over N GPUs, each folding the deltas of the pages it
/// owns (see the module docs).
///
/// Field order is drop order: communicators go before the mergers' contexts.
pub struct ShardedMerge {
    comms: Vec<Comm>,
    shards: Vec<Shard>,
    /// Pages whose owner is not their home rank.
    moved: FxHashMap<PageId, usize>,
    page_len: usize,
    /// One host thread pool per GPU (`None`: the shared rayon pool).
    pools: Option<Vec<rayon::ThreadPool>>,
    /// Where each rank's last fold spent its time.
    phases: Vec<FoldPhases>,
    /// Bumped whenever page ownership changes: decode arenas routed
    /// before a move are refused.
    ownership_stamp: u64,
}

impl std::fmt::Debug for ShardedMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedMerge")
            .field("world_size", &self.world_size())
            .field("page_len", &self.page_len)
            .field("moved", &self.moved.len())
            .finish()
    }
}

impl ShardedMerge {
    /// One communicator over the GPUs `ordinals` (distinct, at least one),
    /// each with a merger built from `config` (its `ordinal` replaced) and a
    /// page mirror of `page_len`-byte pages.
    pub fn from_devices(
        ordinals: &[usize],
        page_len: usize,
        config: &GpuConfig,
    ) -> Result<Self, GpuError> {
        if ordinals.is_empty() {
            return Err(GpuError::Unsupported("no GPU given".into()));
        }
        if !driver_library_present() {
            return Err(GpuError::NoDriver);
        }
        if !nccl_library_present() {
            return Err(GpuError::Disabled(
                "no NCCL library (cudarc looks for libnccl.so)".into(),
            ));
        }
        let mut shards = Vec::with_capacity(ordinals.len());
        let mut streams = Vec::with_capacity(ordinals.len());
        for &ordinal in ordinals {
            probe(ordinal)?;
            let mut merger = CudaMerger::new(&GpuConfig {
                ordinal,
                ..config.clone()
            })?;
            merger.mirror_open(page_len)?;
            let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("CudaContext::new", e))?;
            streams.push(
                ctx.new_stream()
                    .map_err(|e| driver_error("new_stream", e))?,
            );
            shards.push(Shard {
                merger,
                counts: DeltaCounts::EMPTY,
            });
        }
        let comms = Comm::from_devices(streams).map_err(|e| nccl_error("ncclCommInitAll", e))?;
        let world = shards.len();
        let mut merge = ShardedMerge {
            comms,
            shards,
            moved: FxHashMap::default(),
            page_len,
            pools: None,
            phases: vec![FoldPhases::default(); world],
            ownership_stamp: 0,
        };
        merge.set_host_threads(
            std::thread::available_parallelism().map_or(world, std::num::NonZero::get),
        )?;
        Ok(merge)
    }

    /// Gives each GPU's host work (planning, packing) a thread pool of its
    /// own, of `host_threads / world_size` threads (at least one), or, with
    /// `host_threads == 0`, moves it to the shared rayon pool. A new
    /// `ShardedMerge` splits all the machine's cores this way: each rank's
    /// fold then runs inside its own pool, so its parallel loops start on
    /// warm workers instead of being injected into one pool from outside
    /// (measured on 2× H100, 32 cores: 43.0 vs 58.9 ms with one GPU, 31.1
    /// vs 58.4 ms with two; docs/gpu.md).
    pub fn set_host_threads(&mut self, host_threads: usize) -> Result<(), GpuError> {
        if host_threads == 0 {
            self.pools = None;
            return Ok(());
        }
        let per_rank = (host_threads / self.world_size()).max(1);
        let pools = (0..self.world_size())
            .map(|rank| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(per_rank)
                    .thread_name(move |k| format!("mmsb-gpu{rank}-host{k}"))
                    .build()
                    .map_err(|e| GpuError::Disabled(format!("host thread pool: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.pools = Some(pools);
        Ok(())
    }

    /// Threads in each GPU's own host pool (`None`: the shared rayon pool).
    pub fn host_threads_per_gpu(&self) -> Option<usize> {
        self.pools
            .as_ref()
            .and_then(|pools| pools.first())
            .map(rayon::ThreadPool::current_num_threads)
    }

    /// Where each GPU's last fold spent its host time (rank order).
    pub fn last_fold_phases(&self) -> &[FoldPhases] {
        &self.phases
    }

    /// GPUs in the communicator.
    pub fn world_size(&self) -> usize {
        self.shards.len()
    }

    /// The rank (GPU index) that owns `page`.
    pub fn owner(&self, page: PageId) -> usize {
        owner_of(&self.moved, self.world_size(), page)
    }

    /// Pages each GPU's mirror holds.
    pub fn resident_pages(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.merger.mirror_len()).collect()
    }

    /// This process's own view of each GPU's counts (what the all-reduce
    /// aggregates).
    pub fn shard_counts(&self) -> Vec<DeltaCounts> {
        self.shards.iter().map(|s| s.counts).collect()
    }

    /// Folds `batch`: each page's chain goes to the GPU that owns the page
    /// (new pages are uploaded there from the batch; resident ones fold from
    /// their mirrored image). Each GPU has its own host thread, which picks
    /// its pages by an index list over `batch` (no copy), checks and sizes
    /// them from their delta headers and plans their chunks (in parallel,
    /// on the shared rayon pool or the GPU's own, see
    /// [`Self::set_host_threads`]), then packs, uploads and launches them.
    /// No GPU folds anything unless every chain of the batch passed the
    /// header checks (owner, epoch order); run bounds, which a
    /// [`MergeBatch`] checked when its chains were pushed, are checked
    /// again as chunks are packed. Returns what this fold did, over all
    /// GPUs.
    pub fn fold(&mut self, batch: &MergeBatch<'_>) -> Result<DeltaCounts, GpuError> {
        if batch.page_len() != self.page_len {
            return Err(GpuError::Unsupported(format!(
                "a batch of {}-byte pages for mirrors of {}-byte pages",
                batch.page_len(),
                self.page_len
            )));
        }
        let world = self.world_size();
        let moved = &self.moved;
        let owner = |page: PageId| owner_of(moved, world, page);
        let mut devices: Vec<&mut dyn DeviceMerger> = self
            .shards
            .iter_mut()
            .map(|shard| &mut shard.merger as &mut dyn DeviceMerger)
            .collect();
        let outcomes = fold_sharded_on(&mut devices, batch, &owner, self.pools.as_deref());
        drop(devices);
        let outcomes = outcomes?;
        debug_assert_eq!(outcomes.len(), world);
        Ok(self.record_outcomes(outcomes))
    }

    /// A builder of decode arenas for this communicator's GPUs: deltas go
    /// to the GPU that owns their page (as [`Self::fold`] routes them),
    /// into pinned blocks of that GPU's context, with the mirror slots the
    /// GPUs hold now (see [`crate::arena`]). Fold the result with
    /// [`Self::fold_arenas`] before any other fold or move changes the
    /// mirrors. Chunks hold at most `chunk_entries` entries.
    pub fn arena_builder(
        &self,
        geometry: ArenaGeometry,
        chunk_entries: usize,
    ) -> Result<ArenaBuilder<'_>, GpuError> {
        let targets = self
            .shards
            .iter()
            .map(|shard| {
                shard
                    .merger
                    .arena_target()
                    .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (moved, world) = (&self.moved, self.world_size());
        ArenaBuilder::new(
            self.page_len,
            targets,
            Box::new(move |page| owner_of(moved, world, page)),
            geometry,
            chunk_entries,
            self.ownership_stamp,
        )
    }

    /// Folds decode arenas built by [`Self::arena_builder`]: one host
    /// thread per GPU copies its arena's block regions to its GPU and
    /// launches its chunks (nothing is packed per delta). Refused when
    /// ownership or a mirror changed since the arenas were built. Returns
    /// what the fold did, over all GPUs.
    pub fn fold_arenas(&mut self, arenas: &DecodeArenas) -> Result<DeltaCounts, GpuError> {
        if arenas.stamp() != self.ownership_stamp {
            return Err(GpuError::Unsupported(
                "decode arenas routed before pages moved".into(),
            ));
        }
        let world = self.world_size();
        let mut devices: Vec<&mut dyn DeviceMerger> = self
            .shards
            .iter_mut()
            .map(|shard| &mut shard.merger as &mut dyn DeviceMerger)
            .collect();
        let outcomes = fold_arenas_on(&mut devices, arenas, self.pools.as_deref());
        drop(devices);
        let outcomes = outcomes?;
        debug_assert_eq!(outcomes.len(), world);
        Ok(self.record_outcomes(outcomes))
    }

    /// Adds each rank's fold outcome to its shard's counts and phases;
    /// returns the counts over all ranks.
    fn record_outcomes(&mut self, outcomes: Vec<(DeltaCounts, FoldPhases)>) -> DeltaCounts {
        let mut total = DeltaCounts::EMPTY;
        for ((shard, phases), (counts, timed)) in self
            .shards
            .iter_mut()
            .zip(self.phases.iter_mut())
            .zip(outcomes)
        {
            shard.counts = shard.counts.combine(counts);
            *phases = timed;
            total = total.combine(counts);
        }
        total
    }

    /// Moves each `(page, new_owner)`: the page's image goes from its
    /// owner's mirror to a fresh slot in `new_owner`'s, GPU to GPU through
    /// NCCL (one group of sends and receives). Pages no GPU holds yet only
    /// change owner. Returns the bytes transferred.
    pub fn move_pages(&mut self, moves: &[(PageId, usize)]) -> Result<u64, GpuError> {
        let world = self.world_size();
        if let Some(&(page, rank)) = moves.iter().find(|(_, rank)| *rank >= world) {
            return Err(GpuError::Unsupported(format!(
                "{page} cannot move to rank {rank} of {world}"
            )));
        }
        // (page, from, to, source slot): pages some GPU holds move by copy;
        // the others only change owner.
        let mut plan = Vec::new();
        for &(page, to) in moves {
            let from = self.owner(page);
            match self.shards[from].merger.mirror_slot(page) {
                Some(slot) => plan.push((page, from, to, slot)),
                None => {
                    self.moved.insert(page, to);
                }
            }
        }
        self.ownership_stamp += 1;
        if plan.is_empty() {
            return Ok(0);
        }
        // Every destination slot first (adopting may grow a mirror, which
        // moves its slots), then the addresses.
        let mut slots = Vec::with_capacity(plan.len());
        for &(page, _, to, _) in &plan {
            slots.push(self.shards[to].merger.mirror_adopt(page)?);
        }
        let mut transfers = Vec::with_capacity(plan.len());
        for (&(page, from, to, old), &new) in plan.iter().zip(&slots) {
            let address = |rank: usize, slot: u32| {
                self.shards[rank]
                    .merger
                    .mirror_slot_ptr(slot)
                    .ok_or_else(|| GpuError::Unsupported(format!("mirror slot {slot} of {page}")))
            };
            transfers.push((page, from, to, address(from, old)?, address(to, new)?));
        }
        let page_len = self.page_len;
        cudarc::nccl::result::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        let mut queued = Ok(());
        for &(_, from, to, src, dst) in &transfers {
            let send = RawBytes {
                ptr: src,
                len: page_len,
                stream: &self.comms[from].stream(),
            };
            if let Err(e) = self.comms[from].send(&send, to as i32) {
                queued = Err(nccl_error("ncclSend", e));
                break;
            }
            let stream = self.comms[to].stream();
            let mut recv = RawBytes {
                ptr: dst,
                len: page_len,
                stream: &stream,
            };
            if let Err(e) = self.comms[to].recv(&mut recv, from as i32) {
                queued = Err(nccl_error("ncclRecv", e));
                break;
            }
        }
        let ended = cudarc::nccl::result::group_end().map_err(|e| nccl_error("ncclGroupEnd", e));
        queued?;
        ended?;
        self.sync_comms()?;
        for &(page, from, to, _, _) in &transfers {
            if from != to {
                self.shards[from].merger.mirror_release(page);
            }
            self.moved.insert(page, to);
        }
        Ok((transfers.len() * page_len) as u64)
    }

    fn sync_comms(&self) -> Result<(), GpuError> {
        for comm in &self.comms {
            comm.stream()
                .synchronize()
                .map_err(|e| driver_error("cuStreamSynchronize", e))?;
        }
        Ok(())
    }

    /// Every GPU's counts aggregated through NCCL: sums of pages, deltas,
    /// runs and bytes (one all-reduce), the lowest and highest epoch (one
    /// all-reduce of maxima over `[max_epoch, !min_epoch]`).
    pub fn all_reduce_counts(&mut self) -> Result<DeltaCounts, GpuError> {
        let mut sums = Vec::with_capacity(self.comms.len());
        let mut maxima = Vec::with_capacity(self.comms.len());
        for (comm, shard) in self.comms.iter().zip(&self.shards) {
            let c = shard.counts;
            let stream = comm.stream();
            let sum_in = stream
                .clone_htod(&[c.pages, c.deltas, c.runs, c.bytes])
                .map_err(|e| driver_error("memcpy_stod", e))?;
            let max_in = stream
                .clone_htod(&[c.max_epoch, !c.min_epoch])
                .map_err(|e| driver_error("memcpy_stod", e))?;
            let sum_out = stream
                .alloc_zeros::<u64>(4)
                .map_err(|e| driver_error("alloc_zeros", e))?;
            let max_out = stream
                .alloc_zeros::<u64>(2)
                .map_err(|e| driver_error("alloc_zeros", e))?;
            sums.push((sum_in, sum_out));
            maxima.push((max_in, max_out));
        }
        cudarc::nccl::result::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        let mut queued = Ok(());
        for ((comm, (sum_in, sum_out)), (max_in, max_out)) in self
            .comms
            .iter()
            .zip(sums.iter_mut())
            .zip(maxima.iter_mut())
        {
            let outcome = comm
                .all_reduce(sum_in, sum_out, &ReduceOp::Sum)
                .and_then(|_| comm.all_reduce(max_in, max_out, &ReduceOp::Max));
            if let Err(e) = outcome {
                queued = Err(nccl_error("ncclAllReduce", e));
                break;
            }
        }
        let ended = cudarc::nccl::result::group_end().map_err(|e| nccl_error("ncclGroupEnd", e));
        queued?;
        ended?;
        let stream = self.comms[0].stream();
        let sum = stream
            .clone_dtoh(&sums[0].1)
            .map_err(|e| driver_error("memcpy_dtov", e))?;
        let max = stream
            .clone_dtoh(&maxima[0].1)
            .map_err(|e| driver_error("memcpy_dtov", e))?;
        self.sync_comms()?;
        match (sum.as_slice(), max.as_slice()) {
            ([pages, deltas, runs, bytes], [max_epoch, not_min]) => Ok(DeltaCounts {
                pages: *pages,
                deltas: *deltas,
                runs: *runs,
                bytes: *bytes,
                min_epoch: !*not_min,
                max_epoch: *max_epoch,
            }),
            _ => Err(GpuError::Unsupported("all-reduce result size".into())),
        }
    }

    /// Ends the mirrors: hands every page, from the GPU that owns it, to `sink`.
    pub fn finish(mut self, sink: &mut MirrorSink<'_>) -> Result<(), GpuError> {
        for shard in &mut self.shards {
            shard.merger.mirror_finish(sink)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_combine_like_an_all_reduce() {
        let a = DeltaCounts {
            pages: 2,
            deltas: 5,
            runs: 9,
            bytes: 100,
            min_epoch: 7,
            max_epoch: 20,
        };
        let b = DeltaCounts {
            pages: 1,
            deltas: 1,
            runs: 2,
            bytes: 8,
            min_epoch: 3,
            max_epoch: 9,
        };
        let both = a.combine(b);
        assert_eq!(
            both,
            DeltaCounts {
                pages: 3,
                deltas: 6,
                runs: 11,
                bytes: 108,
                min_epoch: 3,
                max_epoch: 20
            }
        );
        assert_eq!(DeltaCounts::EMPTY.combine(a), a);
    }

    #[test]
    fn no_nccl_is_loaded_before_a_communicator_exists() {
        // Probing opens and closes the library; only a live communicator
        // keeps it mapped (cudarc keeps it for the process once used).
        let _ = nccl_library_present();
        if let Some(path) = loaded_nccl_library() {
            assert!(path.contains("libnccl"), "{path}");
        }
    }

    #[test]
    fn without_a_gpu_or_nccl_the_communicator_is_refused() {
        if driver_library_present() && nccl_library_present() && probe(0).is_ok() {
            println!("skipped: a GPU and NCCL are present (tests/nccl.rs covers them)");
            return;
        }
        let refused = ShardedMerge::from_devices(&[0], 4096, &GpuConfig::default());
        assert!(refused.is_err(), "{refused:?}");
        assert!(ShardedMerge::from_devices(&[], 4096, &GpuConfig::default()).is_err());
    }
}
