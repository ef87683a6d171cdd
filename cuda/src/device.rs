//! [`DeviceMerger`]: what a device must do for [`crate::GpuMerge`], and its
//! two implementations: [`CudaMerger`] (a real GPU) and [`SimulatedDevice`]
//! (the kernel's CPU twin, with the same fault hooks, for CI machines).
//!
//! [`CudaMerger`] pipelines a batch: the batch is cut into chunks
//! ([`plan_chunks`]) and chunk `i` goes to lane `i % lanes`, where a lane is
//! a stream with its own device buffers and pinned staging buffers. For chunk
//! `i` the host (1) retires the lane's previous chunk: waits for its stream
//! and copies its merged pages out of pinned staging into the batch; (2)
//! writes the chunk's meta region and copies its page images into the lane's
//! pinned staging, both in parallel on all cores; (3) queues H2D images, H2D
//! meta, the kernel and D2H images on the lane's stream and moves on. While
//! the host prepares chunk `i`, the device copies and folds the chunks before
//! it, and PCIe carries one chunk in and another out at the same time.
//!
//! A device may also keep a page mirror ([`DeviceMerger::mirror_open`] ..
//! [`DeviceMerger::mirror_finish`]): pages stay in device memory between
//! batches, so a run of batches (recovery's windows) uploads each page once,
//! ships only deltas per batch, and downloads each page once at the end.
//!
//! Contract on failure: a device may have written some chunks back before it
//! failed, but every byte of every image then holds either its base value or
//! the value of some prefix of its chain folded in order. Folding a chain is
//! idempotent (each touched byte ends as the last writer's value), so the CPU
//! fallback folding the whole batch again gives the exact result. Every lane
//! is drained before [`DeviceMerger::merge`] returns, on success or failure,
//! so no copy touches the batch afterwards.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::ops::Range;

use mmsb_engine::merge::MergeBatch;
use mmsb_wal::PageId;
use rayon::prelude::*;

use crate::arena::{adopt_new_pages, ArenaTarget, RankArena};
use crate::compile::compile_cubin;
use crate::config::{AllocMode, FaultInjection, GpuConfig, HostStaging, LaunchMode, MAX_STREAMS};
use crate::driver::{
    Context, DeviceBuffer, Event, HostRegistration, KernelId, KernelNames, MemPool, Module,
    PinnedBuffer, Stream,
};
use crate::emulate::Tiles;
use crate::error::GpuError;
use crate::kernel::{
    self, Job, BASELINE_KERNEL, BLOCK_THREADS, MERGE_KERNEL, PERSISTENT_KERNEL, V2_KERNEL,
    VARIANT_KERNELS,
};
use crate::layout::{plan_chunks, ChunkPlan, ChunkView};
use crate::persistent::Persistent;
use crate::probe::{probe, DeviceInfo};
use crate::shard::{
    ms_since, packed_len, slots_offset, ChunkLimits, FoldPhases, MirrorIndex, ShardPlan,
};

/// Shared memory a block gets without opting in.
const DEFAULT_SHARED_LIMIT_BYTES: usize = 48 * 1024;

/// Bytes one rayon task copies between the batch and pinned staging.
const COPY_PIECE_BYTES: usize = 1 << 20;

/// What one device merge moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Chunks the batch was split into.
    pub chunks: u64,
    /// Page-image bytes copied each way.
    pub image_bytes: u64,
    /// Meta bytes (run index + payload with padding) copied to the device.
    pub meta_bytes: u64,
}

/// A device that folds batches. Implementations keep the contract in the
/// module docs when they fail.
pub trait DeviceMerger: Send {
    /// Short name for logs.
    fn name(&self) -> &str;

    /// Folds every chain of an already validated batch into its images.
    fn merge(&mut self, batch: &mut MergeBatch<'_>) -> Result<DeviceStats, GpuError>;

    /// Arms (or clears) a forced failure for the next merges.
    fn set_fault(&mut self, fault: Option<FaultInjection>);

    /// Starts a page mirror of `page_len`-byte pages: pages stay on the
    /// device between [`Self::mirror_fold`] calls (see
    /// `mmsb_engine::merge::MergeSession`). Drops any previous mirror.
    fn mirror_open(&mut self, page_len: usize) -> Result<(), GpuError> {
        let _ = page_len;
        Err(GpuError::Unsupported(format!(
            "{} keeps no page mirror",
            self.name()
        )))
    }

    /// How this device cuts a mirror fold into chunks (what callers pass
    /// to the [`ShardPlan`]s they build for [`Self::mirror_fold_plan`]).
    fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits::default()
    }

    /// Folds a batch into the mirror: a page the mirror holds is folded
    /// from its mirrored image (the batch's is ignored); a new one is
    /// uploaded from the batch first. The batch's images are left as they
    /// were. Every chain's delta headers are checked (in parallel) before
    /// the device sees any of them; run bounds as each chunk is packed.
    fn mirror_fold(&mut self, batch: &MergeBatch<'_>) -> Result<DeviceStats, GpuError> {
        let plan = ShardPlan::whole(batch, self.chunk_limits())?;
        self.mirror_fold_plan(batch, &plan)
    }

    /// As [`Self::mirror_fold`], for the pages of `batch` that `plan` (built
    /// over this very batch) covers, chunk by chunk as `plan` cut them.
    fn mirror_fold_plan(
        &mut self,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
    ) -> Result<DeviceStats, GpuError> {
        let _ = (batch, plan);
        Err(GpuError::Unsupported("no page mirror is open".into()))
    }

    /// Hands every mirrored page, in the order first seen, to `sink`, then
    /// drops the mirror.
    fn mirror_finish(&mut self, sink: &mut MirrorSink<'_>) -> Result<(), GpuError> {
        let _ = sink;
        Err(GpuError::Unsupported("no page mirror is open".into()))
    }

    /// Drops the mirror, if any, and its device memory.
    fn mirror_close(&mut self) {}

    /// What an [`crate::arena::ArenaBuilder`] needs to build an arena for
    /// this device: its open mirror's index and where to pin host memory
    /// (`None` without an open mirror).
    fn arena_target(&self) -> Option<ArenaTarget<'_>> {
        None
    }

    /// Folds a decode arena built against this device's mirror (which must
    /// not have changed since): its new pages are uploaded into the slots
    /// the builder gave them, then its chunks fold in order, each after
    /// the one before. The host copies whole block regions and launches;
    /// it builds nothing per delta.
    fn mirror_fold_arena(&mut self, arena: &RankArena) -> Result<DeviceStats, GpuError> {
        let _ = arena;
        Err(GpuError::Unsupported(format!(
            "{} folds no decode arena",
            self.name()
        )))
    }

    /// Where the last mirror fold spent its host time (all zeros for a
    /// device that does not record it).
    fn last_fold_phases(&self) -> FoldPhases {
        FoldPhases::default()
    }
}

/// Where a page mirror hands each page and its image when it finishes.
pub type MirrorSink<'a> = dyn FnMut(PageId, &[u8]) -> Result<(), GpuError> + 'a;

/// A device page mirror: the index and one device buffer of page slots.
struct Mirror {
    index: MirrorIndex,
    images: Option<DeviceBuffer>,
}

/// Device buffers of one chunk, however they were obtained.
struct ChunkBuffers {
    images: DeviceBuffer,
    meta: DeviceBuffer,
}

/// How one batch's page images move (resolved from [`HostStaging`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    /// Straight from and to the pageable batch buffer.
    Pageable,
    /// Through the lane's pinned staging buffer.
    Staged,
    /// Straight from and to the batch buffer, page-locked for this merge.
    Direct,
}

/// The batch's image buffer as raw memory: chunks in flight are written by
/// DMA, so the merge only ever makes slices of one chunk's own range.
#[derive(Clone, Copy)]
struct Images {
    ptr: *mut u8,
    len: usize,
}

impl Images {
    /// The bytes of `range`; an error (never a panic: a panic would unwind
    /// past the drain while DMA is in flight) when it is out of bounds.
    ///
    /// # Safety
    /// No DMA may be writing `range`, and no other slice of it may be alive.
    unsafe fn slice_mut<'a>(self, range: Range<usize>) -> Result<&'a mut [u8], GpuError> {
        if range.start > range.end || range.end > self.len {
            return Err(GpuError::Unsupported(format!(
                "image range {range:?} outside a batch of {} bytes",
                self.len
            )));
        }
        // SAFETY: in bounds (checked above); exclusivity is the caller's.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) })
    }
}

/// A chunk queued on a lane and not yet retired.
struct InFlight {
    image_range: Range<usize>,
    /// Its merged pages land in the lane's pinned staging (copy them back).
    staged: bool,
    /// Buffers to free once the stream passed the chunk (non-reuse modes).
    buffers: Option<ChunkBuffers>,
}

/// One stream with the buffers it owns. Field order is drop order: buffers
/// go before the stream, since pool frees are queued on it.
struct Lane {
    in_flight: Option<InFlight>,
    kept: Option<ChunkBuffers>,
    mirror_meta: Option<DeviceBuffer>,
    meta_staging: Option<PinnedBuffer>,
    image_staging: Option<PinnedBuffer>,
    stream: Stream,
}

/// The GPU merger: one context, its lanes, the compiled kernels, and the
/// buffers its [`AllocMode`] keeps.
///
/// Field order is drop order: lanes and the resident kernel go before the
/// pool, module and context they depend on.
pub struct CudaMerger {
    persistent: Option<Persistent>,
    mirror: Option<Mirror>,
    /// Device copy of the decode arena blocks last folded (kept, grown).
    arena_device: Option<DeviceBuffer>,
    lanes: Vec<Lane>,
    pool: Option<MemPool>,
    module: Module,
    ctx: Context,
    info: DeviceInfo,
    config: GpuConfig,
    fault: Option<FaultInjection>,
    baseline_shared_allowed: usize,
    name: String,
    /// Where the last mirror fold's host time went.
    phases: FoldPhases,
}

impl CudaMerger {
    /// Opens device `config.ordinal`, compiles the kernels for its
    /// architecture and sets up what `config` asks for.
    pub fn new(config: &GpuConfig) -> Result<Self, GpuError> {
        match config.fault {
            Some(FaultInjection::NoDriver) => return Err(GpuError::NoDriver),
            Some(FaultInjection::NoDevice) => {
                return Err(GpuError::NoDevice {
                    ordinal: config.ordinal,
                    count: 0,
                })
            }
            _ => {}
        }
        if config.max_chunk_pages == 0
            || config.max_chunk_meta_bytes == 0
            || config.max_chunk_image_bytes == 0
        {
            return Err(GpuError::Unsupported(
                "chunk limits must be positive".into(),
            ));
        }
        if !(1..=MAX_STREAMS).contains(&config.streams) {
            return Err(GpuError::Unsupported(format!(
                "{} streams is outside 1..={MAX_STREAMS}",
                config.streams
            )));
        }
        let info = probe(config.ordinal)?;
        let ctx = Context::new(config.ordinal)?;
        let cubin = compile_cubin(&kernel::source(), &info.arch())?;
        let names = KernelNames {
            merge: MERGE_KERNEL,
            persistent: PERSISTENT_KERNEL,
            baseline: BASELINE_KERNEL,
            v2: V2_KERNEL,
            variants: &VARIANT_KERNELS,
        };
        let module = Module::load(&ctx, &cubin, names)?;
        let lane_count = match config.launch {
            LaunchMode::Persistent => 1,
            LaunchMode::PerBatch => config.streams,
        };
        let lanes = (0..lane_count)
            .map(|_| {
                Ok(Lane {
                    in_flight: None,
                    kept: None,
                    mirror_meta: None,
                    meta_staging: None,
                    image_staging: None,
                    stream: Stream::new(&ctx)?,
                })
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let pool = match config.alloc {
            AllocMode::StreamPool if info.memory_pools => Some(MemPool::new(&ctx)?),
            AllocMode::StreamPool => {
                return Err(GpuError::Unsupported("device has no memory pools".into()))
            }
            _ => None,
        };
        let name = merger_name(config);
        Ok(CudaMerger {
            persistent: None,
            mirror: None,
            arena_device: None,
            lanes,
            pool,
            module,
            ctx,
            fault: config.fault,
            info,
            config: config.clone(),
            baseline_shared_allowed: DEFAULT_SHARED_LIMIT_BYTES,
            name,
            phases: FoldPhases::default(),
        })
    }

    /// The device's properties.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context (for benches that time pieces themselves).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The loaded kernels.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Blocks for one launch of `mmsb_merge` over `pages` pages: as many as
    /// can be resident at once, at most one per page.
    pub fn grid_for(&self, pages: usize) -> Result<u32, GpuError> {
        self.grid_of(KernelId::Merge, pages)
    }

    /// Blocks for one launch of `kernel` (any but the baseline and the
    /// resident kernel) over `pages` pages.
    pub fn grid_of(&self, kernel: KernelId, pages: usize) -> Result<u32, GpuError> {
        let per_sm = self.blocks_per_sm(kernel)?.max(1);
        let full = per_sm.saturating_mul(self.info.multiprocessors).max(1);
        Ok(full.min(u32::try_from(pages).unwrap_or(u32::MAX)).max(1))
    }

    /// Resident blocks per multiprocessor of `kernel` (its static shared
    /// memory and registers decide).
    pub fn blocks_per_sm(&self, kernel: KernelId) -> Result<u32, GpuError> {
        self.module.occupancy(kernel, BLOCK_THREADS, 0)
    }

    /// Queues one `mmsb_merge` launch of `job` on `stream`.
    ///
    /// # Safety
    /// `job`'s addresses must be device buffers holding the chunk it
    /// describes, alive until the stream passed the launch.
    pub unsafe fn launch_job(&self, job: &Job, grid: u32, stream: &Stream) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { self.launch_with(KernelId::Merge, job, 0, grid, stream) }
    }

    /// Queues one launch of `kernel` (`Merge`, `V2` or a `Variant`) over
    /// `job`, whose page `i` lives in image slot `slots[i]` when `slots` is
    /// a device address (pipelined kernels only), else in slot `i`.
    ///
    /// # Safety
    /// As [`Self::launch_job`]; `slots`, when not 0, holds `job.pages`
    /// `u32` slot indices, each inside the image buffer.
    pub unsafe fn launch_with(
        &self,
        kernel: KernelId,
        job: &Job,
        slots: u64,
        grid: u32,
        stream: &Stream,
    ) -> Result<(), GpuError> {
        let mut job = *job;
        let mut slots = slots;
        let mut two: [*mut c_void; 2] = [
            (&mut job as *mut Job).cast(),
            (&mut slots as *mut u64).cast(),
        ];
        // SAFETY: `Merge` and the variants take (Job, const u32*), `V2`
        // takes (Job); forwarded contract for the addresses.
        unsafe {
            match kernel {
                KernelId::Merge | KernelId::Variant(_) => {
                    self.module
                        .launch(kernel, grid, BLOCK_THREADS, 0, stream, &mut two)
                }
                KernelId::V2 => self.launch_kernel(kernel, &job, grid, 0, stream),
                _ => Err(GpuError::Unsupported(format!(
                    "{kernel:?} is not launched with launch_with"
                ))),
            }
        }
    }

    /// Grid and dynamic shared memory of the baseline kernel for `pages`
    /// pages of `page_len` bytes (opting in to more shared memory if needed).
    pub fn baseline_shape(
        &mut self,
        pages: usize,
        page_len: usize,
    ) -> Result<(u32, usize), GpuError> {
        let shared = kernel::baseline_shared_bytes(page_len);
        if shared > self.info.max_shared_per_block_optin_bytes as usize {
            return Err(GpuError::Unsupported(format!(
                "pages of {page_len} bytes need {shared} bytes of shared memory"
            )));
        }
        if shared > self.baseline_shared_allowed {
            self.module.allow_shared(KernelId::Baseline, shared)?;
            self.baseline_shared_allowed = shared;
        }
        let per_sm = self
            .module
            .occupancy(KernelId::Baseline, BLOCK_THREADS, shared)?
            .max(1);
        let full = per_sm.saturating_mul(self.info.multiprocessors).max(1);
        Ok((
            full.min(u32::try_from(pages).unwrap_or(u32::MAX)).max(1),
            shared,
        ))
    }

    /// Queues one launch of the previous kernel (`mmsb_merge_baseline`), with
    /// a shape from [`Self::baseline_shape`]. Bench comparison only.
    ///
    /// # Safety
    /// As [`Self::launch_job`].
    pub unsafe fn launch_baseline(
        &self,
        job: &Job,
        (grid, shared): (u32, usize),
        stream: &Stream,
    ) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { self.launch_kernel(KernelId::Baseline, job, grid, shared, stream) }
    }

    /// # Safety
    /// As [`Self::launch_job`].
    unsafe fn launch_kernel(
        &self,
        kernel: KernelId,
        job: &Job,
        grid: u32,
        shared: usize,
        stream: &Stream,
    ) -> Result<(), GpuError> {
        let mut job = *job;
        let mut params: [*mut c_void; 1] = [(&mut job as *mut Job).cast()];
        // SAFETY: one parameter, `Job` by value, as both one-shot kernels
        // take; forwarded contract for the addresses.
        unsafe {
            self.module
                .launch(kernel, grid, BLOCK_THREADS, shared, stream, &mut params)
        }
    }

    fn take_fault(&mut self, kind: FaultInjection) -> bool {
        if self.fault == Some(kind) {
            self.fault = None;
            return true;
        }
        false
    }

    fn persistent_mode(&self) -> bool {
        self.config.launch == LaunchMode::Persistent
    }

    fn reuse_mode(&self) -> bool {
        self.persistent_mode() || self.config.alloc == AllocMode::Reuse
    }

    fn stop_persistent(&mut self) -> Result<(), GpuError> {
        match self.persistent.take() {
            Some(mut kernel) => kernel.stop(),
            None => Ok(()),
        }
    }

    /// Makes the lane's pinned buffer that `pick` selects at least `len`
    /// bytes long, reallocating it when it is smaller.
    fn ensure_pinned(
        &mut self,
        lane: usize,
        len: usize,
        pick: fn(&mut Lane) -> &mut Option<PinnedBuffer>,
    ) -> Result<(), GpuError> {
        let too_small = pick(&mut self.lanes[lane])
            .as_ref()
            .is_none_or(|buffer| buffer.len() < len);
        if too_small {
            // Freeing pinned memory may synchronize the device, which would
            // wait forever on a resident kernel: stop it first.
            self.stop_persistent()?;
            *pick(&mut self.lanes[lane]) = None;
            let buffer = PinnedBuffer::alloc(&self.ctx, grow(len), false)?;
            *pick(&mut self.lanes[lane]) = Some(buffer);
        }
        Ok(())
    }

    fn alloc(&mut self, lane: usize, len: usize) -> Result<DeviceBuffer, GpuError> {
        let len = if self.take_fault(FaultInjection::OutOfMemory) {
            usize::try_from(self.info.total_memory_bytes.saturating_mul(4)).unwrap_or(usize::MAX)
        } else {
            len
        };
        match (&self.pool, self.persistent_mode()) {
            (Some(pool), false) => {
                DeviceBuffer::alloc_from_pool(&self.ctx, pool, &self.lanes[lane].stream, len)
            }
            _ => DeviceBuffer::alloc(&self.ctx, len),
        }
    }

    /// Device buffers for a chunk of `images` and `meta` bytes on `lane`.
    fn acquire(
        &mut self,
        lane: usize,
        images: usize,
        meta: usize,
    ) -> Result<ChunkBuffers, GpuError> {
        if !self.reuse_mode() {
            return Ok(ChunkBuffers {
                images: self.alloc(lane, images)?,
                meta: self.alloc(lane, meta)?,
            });
        }
        if let Some(kept) = self.lanes[lane].kept.take() {
            if kept.images.len() >= images && kept.meta.len() >= meta {
                return Ok(kept);
            }
            // Growing: the resident kernel must not run while memory is freed.
            self.stop_persistent()?;
            drop(kept);
        }
        Ok(ChunkBuffers {
            images: self.alloc(lane, grow(images))?,
            meta: self.alloc(lane, grow(meta))?,
        })
    }

    /// Waits for `lane`'s chunk in flight, copies its pages back when they
    /// were staged (and `copy_back` is set), and keeps or frees its buffers.
    fn retire(&mut self, lane: usize, images: Images, copy_back: bool) -> Result<(), GpuError> {
        let reuse = self.reuse_mode();
        let lane = &mut self.lanes[lane];
        let Some(flight) = lane.in_flight.take() else {
            return Ok(());
        };
        let synced = lane.stream.synchronize();
        if synced.is_ok() && copy_back && flight.staged {
            let staging = lane
                .image_staging
                .as_ref()
                .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
            // SAFETY: the stream passed the chunk, so no DMA writes its range,
            // and no other slice of it is alive.
            let out = unsafe { images.slice_mut(flight.image_range.clone())? };
            par_copy(out, &staging.as_slice()[..flight.image_range.len()]);
        }
        if reuse {
            if let Some(buffers) = flight.buffers {
                lane.kept = Some(buffers);
            }
        }
        synced
    }

    /// Retires every lane; returns the first error.
    fn drain(&mut self, images: Images, copy_back: bool) -> Result<(), GpuError> {
        let mut first = Ok(());
        for lane in 0..self.lanes.len() {
            let retired = self.retire(lane, images, copy_back);
            if first.is_ok() {
                first = retired;
            }
        }
        first
    }

    /// Starts the resident kernel when it is not running.
    fn ensure_persistent(&mut self) -> Result<(), GpuError> {
        if self.persistent.is_none() {
            let kernel = Persistent::start(
                &self.ctx,
                &self.module,
                self.info.multiprocessors,
                self.config.persistent_timeout_ms,
            )?;
            self.persistent = Some(kernel);
        }
        Ok(())
    }

    /// Runs `job` on `lane` after the copies queued there.
    fn run_job(&mut self, lane: usize, job: &Job) -> Result<(), GpuError> {
        let fail = self.take_fault(FaultInjection::FailLaunch);
        if self.persistent_mode() && !fail {
            self.ensure_persistent()?;
            // The copies were queued on the lane's stream; the job may start
            // only once they landed.
            self.lanes[lane].stream.synchronize()?;
            return match self.persistent.as_mut() {
                Some(kernel) => kernel.run(*job),
                None => Err(GpuError::Disabled("persistent kernel missing".into())),
            };
        }
        // A zero-block grid is a real launch error (the forced failure).
        let grid = if fail {
            0
        } else {
            self.grid_for(job.pages as usize)?
        };
        // SAFETY: the job's buffers stay alive until the lane is retired,
        // which synchronizes its stream first.
        unsafe { self.launch_job(job, grid, &self.lanes[lane].stream) }
    }

    /// Queues chunk `plan` on `lane`: copies in, fold, copy out.
    fn queue_chunk(
        &mut self,
        lane: usize,
        batch: &MergeBatch<'_>,
        images: Images,
        plan: &ChunkPlan,
        transfer: Transfer,
    ) -> Result<(), GpuError> {
        let page_len = batch.page_len();
        let layout = *plan.layout();
        let slots = plan.slots();
        let range = slots.start * page_len..slots.end * page_len;
        self.ensure_pinned(lane, layout.total_len, |l| &mut l.meta_staging)?;
        if transfer == Transfer::Staged {
            self.ensure_pinned(lane, range.len(), |l| &mut l.image_staging)?;
        }
        let buffers = self.acquire(lane, range.len(), layout.total_len)?;
        let staged = transfer == Transfer::Staged;
        let job = Job {
            images: buffers.images.ptr(),
            meta: buffers.meta.ptr(),
            pages: layout.pages as u32,
            page_len: page_len as u32,
            runs_offset: layout.runs_offset as u32,
            payload_offset: layout.payload_offset as u32,
        };
        // From here on the lane owns the buffers: on any failure `retire`
        // waits for the stream before it keeps or frees them.
        let lane_ref = &mut self.lanes[lane];
        lane_ref.in_flight = Some(InFlight {
            image_range: range.clone(),
            staged,
            buffers: Some(buffers),
        });
        let meta = lane_ref
            .meta_staging
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("meta staging buffer".into()))?;
        plan.fill(batch, meta.as_mut_slice())?;
        if staged {
            let staging = lane_ref
                .image_staging
                .as_mut()
                .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
            // SAFETY: chunks cover disjoint ranges and this one has no DMA
            // in flight yet.
            let source = unsafe { images.slice_mut(range.clone())? };
            par_copy(&mut staging.as_mut_slice()[..range.len()], source);
        }
        let stream = &lane_ref.stream;
        // SAFETY: the device buffers hold at least these many bytes
        // (acquire); pinned sources and the registered batch range stay
        // untouched until the lane is retired; pageable sources are copied
        // before the call returns; the batch range has no other slice alive.
        unsafe {
            match transfer {
                Transfer::Staged => {
                    let staging = lane_ref
                        .image_staging
                        .as_ref()
                        .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
                    stream.copy_to_device(job.images, &staging.as_slice()[..range.len()])?
                }
                Transfer::Pageable | Transfer::Direct => {
                    stream.copy_to_device(job.images, images.slice_mut(range.clone())?)?
                }
            }
            stream.copy_to_device(job.meta, &meta.as_slice()[..layout.total_len])?;
        }
        self.run_job(lane, &job)?;
        let lane_ref = &mut self.lanes[lane];
        let stream = &lane_ref.stream;
        // SAFETY: the device buffer holds the chunk's images; the pinned or
        // registered destination is left alone until the lane is retired; a
        // pageable destination is written before return.
        unsafe {
            match transfer {
                Transfer::Staged => {
                    let staging = lane_ref
                        .image_staging
                        .as_mut()
                        .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
                    stream.copy_to_host(&mut staging.as_mut_slice()[..range.len()], job.images)
                }
                Transfer::Pageable | Transfer::Direct => {
                    stream.copy_to_host(images.slice_mut(range)?, job.images)
                }
            }
        }
    }

    /// Every chunk of the batch through the lanes, round robin.
    fn run_chunks(
        &mut self,
        batch: &MergeBatch<'_>,
        images: Images,
        transfer: Transfer,
    ) -> Result<DeviceStats, GpuError> {
        let mut stats = DeviceStats::default();
        let pages_by_bytes = (self.config.max_chunk_image_bytes / batch.page_len()).max(1);
        let chunks = plan_chunks(
            batch,
            self.config.max_chunk_pages.min(pages_by_bytes),
            self.config.max_chunk_meta_bytes,
        );
        for (index, slots) in chunks.into_iter().enumerate() {
            let lane = index % self.lanes.len();
            self.retire(lane, images, true)?;
            let plan = ChunkPlan::new(batch, slots.clone())?;
            self.queue_chunk(lane, batch, images, &plan, transfer)?;
            stats.chunks += 1;
            stats.image_bytes += (slots.len() * batch.page_len()) as u64;
            stats.meta_bytes += plan.layout().total_len as u64;
        }
        Ok(stats)
    }

    /// How this batch's images move, registering its buffer when asked to.
    fn transfer_for(&mut self, images: Images) -> (Transfer, Option<HostRegistration>) {
        match self.config.staging {
            HostStaging::Pageable => (Transfer::Pageable, None),
            // Registration may synchronize the device: never next to a
            // resident kernel.
            HostStaging::Pinned => (Transfer::Staged, None),
            HostStaging::Registered if self.persistent_mode() => (Transfer::Staged, None),
            HostStaging::Registered => {
                // SAFETY: the batch buffer outlives the merge, and the
                // registration is dropped only after every lane is drained.
                match unsafe { HostRegistration::new(&self.ctx, images.ptr, images.len) } {
                    Ok(registration) => (Transfer::Direct, Some(registration)),
                    Err(error) => {
                        tracing::warn!(%error, "cuMemHostRegister failed; staging this batch through pinned buffers");
                        (Transfer::Staged, None)
                    }
                }
            }
        }
    }
}

/// Pages per upload or download piece of a mirror (bounded by the chunk's
/// image bytes).
fn mirror_piece_pages(config: &GpuConfig, page_len: usize) -> usize {
    (config.max_chunk_image_bytes / page_len.max(1)).max(1)
}

impl CudaMerger {
    /// Makes the mirror's device buffer hold at least `pages` slots, keeping
    /// the slots below `kept` (grows by half again, copying on the device).
    fn mirror_reserve(&mut self, pages: usize, kept: usize) -> Result<(), GpuError> {
        let mirror = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let page_len = mirror.index.page_len();
        let need = pages.saturating_mul(page_len);
        if mirror.images.as_ref().is_some_and(|b| b.len() >= need) {
            return Ok(());
        }
        let want = need.max(mirror.images.as_ref().map_or(0, |b| b.len() + b.len() / 2));
        let fresh = match DeviceBuffer::alloc(&self.ctx, want) {
            Ok(buffer) => buffer,
            Err(_) => DeviceBuffer::alloc(&self.ctx, need)?,
        };
        if let Some(old) = mirror.images.take() {
            let stream = &self.lanes[0].stream;
            // SAFETY: both buffers hold `kept` slots; synchronized below
            // before the old buffer is freed.
            unsafe { stream.copy_on_device(fresh.ptr(), old.ptr(), kept * page_len)? };
            stream.synchronize()?;
        }
        mirror.images = Some(fresh);
        Ok(())
    }

    /// Uploads the batch's new pages (batch slots `new`) into mirror slots
    /// `first..first + new.len()`, through the lanes' pinned staging.
    fn mirror_upload(
        &mut self,
        batch: &MergeBatch<'_>,
        new: &[usize],
        first: usize,
    ) -> Result<u64, GpuError> {
        let page_len = batch.page_len();
        let per_piece = mirror_piece_pages(&self.config, page_len);
        let base = self.mirror_images_ptr()?;
        let lanes = self.lanes.len();
        for (k, piece) in new.chunks(per_piece).enumerate() {
            let lane = k % lanes;
            self.lanes[lane].stream.synchronize()?;
            let bytes = piece.len() * page_len;
            self.ensure_pinned(lane, bytes, |l| &mut l.image_staging)?;
            let lane_ref = &mut self.lanes[lane];
            let staging = lane_ref
                .image_staging
                .as_mut()
                .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
            staging.as_mut_slice()[..bytes]
                .par_chunks_mut(page_len)
                .zip(piece.par_iter())
                .try_for_each(|(to, &slot)| match batch.page(slot) {
                    Some(from) => {
                        to.copy_from_slice(from);
                        Ok(())
                    }
                    None => Err(GpuError::Unsupported(format!("batch slot {slot}"))),
                })?;
            let at = base + ((first + k * per_piece) * page_len) as u64;
            // SAFETY: the mirror holds `first + new.len()` slots (reserved);
            // the staging is not touched again before this lane is synchronized.
            unsafe {
                lane_ref
                    .stream
                    .copy_to_device(at, &staging.as_slice()[..bytes])?
            };
        }
        Ok((new.len() * page_len) as u64)
    }

    /// The open mirror's slot of `page`, if it holds it.
    pub fn mirror_slot(&self, page: PageId) -> Option<u32> {
        self.mirror.as_ref()?.index.get(page)
    }

    /// Device address of mirror slot `slot` (valid until the mirror grows).
    pub fn mirror_slot_ptr(&self, slot: u32) -> Option<u64> {
        let mirror = self.mirror.as_ref()?;
        let buffer = mirror.images.as_ref()?;
        let page_len = mirror.index.page_len() as u64;
        let at = slot as u64 * page_len;
        (at + page_len <= buffer.len() as u64).then(|| buffer.ptr() + at)
    }

    /// Gives `page` a fresh slot in the open mirror, whose image the caller
    /// then fills by a device-to-device transfer; returns the slot. A page
    /// the mirror held already is re-mapped and its old slot left empty
    /// (its bytes stay until the caller copied them). May grow the mirror,
    /// which moves every slot: read addresses only after the last adopt.
    pub fn mirror_adopt(&mut self, page: PageId) -> Result<u32, GpuError> {
        let slot = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?
            .index
            .adopt(page)?;
        self.mirror_reserve(slot as usize + 1, slot as usize)?;
        Ok(slot)
    }

    /// Drops `page` from the open mirror (it moved to another device); its
    /// slot stays empty. Returns whether the mirror held it.
    pub fn mirror_release(&mut self, page: PageId) -> bool {
        self.mirror
            .as_mut()
            .is_some_and(|mirror| mirror.index.release(page))
    }

    /// Pages the open mirror holds.
    pub fn mirror_len(&self) -> usize {
        self.mirror.as_ref().map_or(0, |m| m.index.len())
    }

    fn mirror_images_ptr(&self) -> Result<u64, GpuError> {
        self.mirror
            .as_ref()
            .and_then(|m| m.images.as_ref())
            .map(DeviceBuffer::ptr)
            .ok_or_else(|| GpuError::Unsupported("page mirror has no device buffer".into()))
    }

    /// Waits for every lane's stream.
    fn sync_lanes(&self) -> Result<(), GpuError> {
        for lane in &self.lanes {
            lane.stream.synchronize()?;
        }
        Ok(())
    }

    /// Ships one chunk's meta region and slot list on `lane` and launches
    /// the kernel over the mirror.
    fn mirror_chunk(
        &mut self,
        lane: usize,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
        chunk: &ChunkPlan,
        slots: &[u32],
    ) -> Result<u64, GpuError> {
        let layout = *chunk.layout();
        let slots_at = slots_offset(&layout);
        let total = packed_len(&layout);
        let waited = std::time::Instant::now();
        self.lanes[lane].stream.synchronize()?;
        self.phases.wait_ms += ms_since(waited);
        self.ensure_pinned(lane, total, |l| &mut l.meta_staging)?;
        if self.lanes[lane]
            .mirror_meta
            .as_ref()
            .is_none_or(|b| b.len() < total)
        {
            self.lanes[lane].mirror_meta = None;
            let buffer = self.alloc(lane, grow(total))?;
            self.lanes[lane].mirror_meta = Some(buffer);
        }
        let images = self.mirror_images_ptr()?;
        let fail = self.take_fault(FaultInjection::FailLaunch);
        let grid = if fail {
            0
        } else {
            self.grid_for(layout.pages)?
        };
        let lane_ref = &mut self.lanes[lane];
        let staging = lane_ref
            .meta_staging
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("meta staging buffer".into()))?;
        let packing = std::time::Instant::now();
        plan.pack(batch, chunk, slots, &mut staging.as_mut_slice()[..total])?;
        let packed = ms_since(packing);
        let queueing = std::time::Instant::now();
        let meta = lane_ref
            .mirror_meta
            .as_ref()
            .ok_or_else(|| GpuError::Unsupported("mirror meta buffer".into()))?;
        let job = Job {
            images,
            meta: meta.ptr(),
            pages: layout.pages as u32,
            page_len: batch.page_len() as u32,
            runs_offset: layout.runs_offset as u32,
            payload_offset: layout.payload_offset as u32,
        };
        // SAFETY: the device meta buffer holds `total` bytes; the staging
        // stays untouched until this lane is synchronized again.
        unsafe {
            lane_ref
                .stream
                .copy_to_device(meta.ptr(), &staging.as_slice()[..total])?
        };
        let stream = &self.lanes[lane].stream;
        // SAFETY: the meta buffer stays alive until the lane is synchronized
        // (it is replaced only after a synchronize); the slots all lie in
        // the mirror (assigned and reserved before).
        unsafe {
            self.launch_with(
                KernelId::Merge,
                &job,
                job.meta + slots_at as u64,
                grid,
                stream,
            )?
        };
        self.phases.pack_ms += packed;
        self.phases.enqueue_ms += ms_since(queueing);
        Ok(total as u64)
    }

    fn mirror_fold_inner(
        &mut self,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
    ) -> Result<DeviceStats, GpuError> {
        self.ctx.bind()?;
        self.phases = FoldPhases::default();
        let assigning = std::time::Instant::now();
        let mirror = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let first = mirror.index.slot_count();
        let (slots, new) = mirror.index.assign(batch, plan)?;
        let total = mirror.index.slot_count();
        self.mirror_reserve(total, first)?;
        let mut stats = DeviceStats {
            image_bytes: self.mirror_upload(batch, &new, first)?,
            ..DeviceStats::default()
        };
        // New pages must be on the device before any chunk folds them.
        self.sync_lanes()?;
        self.phases.assign_ms = ms_since(assigning);
        for (index, range) in plan.chunks().iter().enumerate() {
            let lane = index % self.lanes.len();
            let chunk = plan.chunk(index)?;
            let chunk_slots = slots
                .get(range.clone())
                .ok_or_else(|| GpuError::Unsupported(format!("chunk {index} of the plan")))?;
            stats.meta_bytes += self.mirror_chunk(lane, batch, plan, &chunk, chunk_slots)?;
            stats.chunks += 1;
        }
        // The next fold may touch the same pages from another lane.
        let draining = std::time::Instant::now();
        self.sync_lanes()?;
        self.phases.drain_ms = ms_since(draining);
        Ok(stats)
    }

    /// Uploads an arena's new pages (pinned base images) into their mirror
    /// slots on lane 0.
    fn arena_upload(&mut self, arena: &RankArena, first: usize) -> Result<u64, GpuError> {
        let page_len = arena.page_len();
        let base = self.mirror_images_ptr()?;
        let per = arena.pages_per_upload();
        let mut bytes = 0u64;
        for (k, (memory, pages)) in arena.uploads().enumerate() {
            if !memory.is_pinned() {
                return Err(GpuError::Unsupported(
                    "a decode arena in ordinary memory on a GPU".into(),
                ));
            }
            let len = pages * page_len;
            let at = base + ((first + k * per) * page_len) as u64;
            let src = memory
                .bytes()
                .get(..len)
                .ok_or_else(|| GpuError::Unsupported("arena upload block".into()))?;
            // SAFETY: the mirror holds the new slots (reserved before); the
            // arena is borrowed until the fold synchronized every lane.
            unsafe { self.lanes[0].stream.copy_to_device(at, src)? };
            bytes += len as u64;
        }
        Ok(bytes)
    }

    fn arena_fold_inner(&mut self, arena: &RankArena) -> Result<DeviceStats, GpuError> {
        self.ctx.bind()?;
        self.phases = FoldPhases::default();
        let assigning = std::time::Instant::now();
        let mirror = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let first = adopt_new_pages(&mut mirror.index, arena)?;
        let total = mirror.index.slot_count();
        self.mirror_reserve(total, first)?;
        let mut stats = DeviceStats {
            image_bytes: self.arena_upload(arena, first)?,
            ..DeviceStats::default()
        };
        let geometry = *arena.geometry();
        let block_bytes = geometry.block_bytes();
        let need = arena.blocks().len() * block_bytes;
        if self.arena_device.as_ref().is_none_or(|b| b.len() < need) {
            // Every lane was synchronized at the end of the last fold: no
            // copy or kernel uses the old buffer any more.
            self.arena_device = None;
            self.arena_device = Some(self.alloc(0, grow(need))?);
        }
        let device = self
            .arena_device
            .as_ref()
            .map(DeviceBuffer::ptr)
            .ok_or_else(|| GpuError::Unsupported("arena device buffer".into()))?;
        self.phases.assign_ms = ms_since(assigning);
        let queueing = std::time::Instant::now();
        // Lane 0 copies every block's used regions (after the uploads) and
        // records an event per block; the last lane runs the chunks in
        // order, each block's after its event.
        let run_lane = self.lanes.len() - 1;
        let mut copied = Vec::with_capacity(arena.blocks().len());
        for (k, block) in arena.blocks().iter().enumerate() {
            if !block.is_pinned() {
                return Err(GpuError::Unsupported(
                    "a decode arena in ordinary memory on a GPU".into(),
                ));
            }
            let at = device + (k * block_bytes) as u64;
            for range in block.used_ranges(&geometry) {
                let src = block
                    .bytes()
                    .get(range.clone())
                    .ok_or_else(|| GpuError::Unsupported("arena block range".into()))?;
                // SAFETY: the device buffer holds every block; the arena
                // stays borrowed until the lanes are synchronized below.
                unsafe {
                    self.lanes[0]
                        .stream
                        .copy_to_device(at + range.start as u64, src)?
                };
                stats.meta_bytes += range.len() as u64;
            }
            let event = Event::new(&self.ctx)?;
            event.record(&self.lanes[0].stream)?;
            copied.push(event);
        }
        let images = self.mirror_images_ptr()?;
        let mut waited = None;
        for chunk in arena.chunks() {
            if waited != Some(chunk.block) {
                let event = copied
                    .get(chunk.block)
                    .ok_or_else(|| GpuError::Unsupported("arena chunk block".into()))?;
                self.lanes[run_lane].stream.wait_event(event)?;
                waited = Some(chunk.block);
            }
            let layout = chunk.layout(&geometry);
            let block = device + (chunk.block * block_bytes) as u64;
            let job = Job {
                images,
                meta: block + chunk.meta_offset() as u64,
                pages: u32::try_from(layout.pages)
                    .map_err(|_| GpuError::Unsupported("arena chunk entries".into()))?,
                page_len: arena.page_len() as u32,
                runs_offset: u32::try_from(layout.runs_offset)
                    .map_err(|_| GpuError::Unsupported("arena runs offset".into()))?,
                payload_offset: u32::try_from(layout.payload_offset)
                    .map_err(|_| GpuError::Unsupported("arena payload offset".into()))?,
            };
            let grid = if self.take_fault(FaultInjection::FailLaunch) {
                0
            } else {
                self.grid_for(layout.pages)?
            };
            let slots = block + chunk.slots_offset(&geometry) as u64;
            // SAFETY: the chunk's meta region, slots and the mirror slots
            // they name are device memory written by the copies it waits
            // for; nothing frees them before the lanes are synchronized.
            unsafe {
                self.launch_with(
                    KernelId::Merge,
                    &job,
                    slots,
                    grid,
                    &self.lanes[run_lane].stream,
                )?
            };
            stats.chunks += 1;
        }
        self.phases.enqueue_ms = ms_since(queueing);
        let draining = std::time::Instant::now();
        self.sync_lanes()?;
        drop(copied);
        self.phases.drain_ms = ms_since(draining);
        Ok(stats)
    }

    fn mirror_finish_inner(&mut self, sink: &mut MirrorSink<'_>) -> Result<(), GpuError> {
        self.ctx.bind()?;
        let (page_len, count) = match &self.mirror {
            Some(m) => (m.index.page_len(), m.index.slot_count()),
            None => return Err(GpuError::Unsupported("no page mirror is open".into())),
        };
        if count == 0 {
            return Ok(());
        }
        let base = self.mirror_images_ptr()?;
        let per_piece = mirror_piece_pages(&self.config, page_len);
        let lanes = self.lanes.len();
        let mut pending: VecDeque<(usize, Range<usize>)> = VecDeque::new();
        let pieces: Vec<Range<usize>> = (0..count)
            .step_by(per_piece)
            .map(|start| start..(start + per_piece).min(count))
            .collect();
        for (k, range) in pieces.into_iter().enumerate() {
            let lane = k % lanes;
            if pending.len() == lanes {
                if let Some((done_lane, done)) = pending.pop_front() {
                    self.mirror_deliver(done_lane, done, sink)?;
                }
            }
            let bytes = range.len() * page_len;
            self.ensure_pinned(lane, bytes, |l| &mut l.image_staging)?;
            let lane_ref = &mut self.lanes[lane];
            let staging = lane_ref
                .image_staging
                .as_mut()
                .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
            // SAFETY: the mirror holds `count` slots; the staging is read
            // only after this lane is synchronized (mirror_deliver).
            unsafe {
                lane_ref.stream.copy_to_host(
                    &mut staging.as_mut_slice()[..bytes],
                    base + (range.start * page_len) as u64,
                )?
            };
            pending.push_back((lane, range));
        }
        while let Some((lane, range)) = pending.pop_front() {
            self.mirror_deliver(lane, range, sink)?;
        }
        Ok(())
    }

    /// Waits for `lane`'s download of mirror slots `range` and hands them out.
    fn mirror_deliver(
        &mut self,
        lane: usize,
        range: Range<usize>,
        sink: &mut MirrorSink<'_>,
    ) -> Result<(), GpuError> {
        self.lanes[lane].stream.synchronize()?;
        let mirror = self
            .mirror
            .as_ref()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let page_len = mirror.index.page_len();
        let staging = self.lanes[lane]
            .image_staging
            .as_ref()
            .ok_or_else(|| GpuError::Unsupported("image staging buffer".into()))?;
        let images = staging.as_slice()[..range.len() * page_len].chunks_exact(page_len);
        let pages = mirror.index.pages().get(range).unwrap_or(&[]);
        for (page_id, image) in pages.iter().zip(images) {
            if let Some(page_id) = page_id {
                sink(*page_id, image)?;
            }
        }
        Ok(())
    }
}

impl DeviceMerger for CudaMerger {
    fn name(&self) -> &str {
        &self.name
    }

    fn merge(&mut self, batch: &mut MergeBatch<'_>) -> Result<DeviceStats, GpuError> {
        self.ctx.bind()?;
        let (buffer, _, _) = batch.split_for_merge();
        let images = Images {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        };
        let (transfer, registration) = self.transfer_for(images);
        let outcome = self.run_chunks(batch, images, transfer);
        // Drain before anything else: DMA may still target the batch.
        let drained = self.drain(images, outcome.is_ok());
        drop(registration);
        let stats = outcome?;
        drained?;
        Ok(stats)
    }

    fn set_fault(&mut self, fault: Option<FaultInjection>) {
        self.fault = fault;
    }

    fn mirror_open(&mut self, page_len: usize) -> Result<(), GpuError> {
        if page_len == 0 || page_len > mmsb_wal::delta::MAX_PAGE_LEN {
            return Err(GpuError::Unsupported(format!("page length {page_len}")));
        }
        // The resident kernel runs jobs of its own; it must not sit on the
        // device while mirror kernels run.
        self.stop_persistent()?;
        self.mirror = Some(Mirror {
            index: MirrorIndex::new(page_len),
            images: None,
        });
        Ok(())
    }

    fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits {
            max_pages: self.config.max_chunk_pages,
            max_meta_bytes: self.config.max_chunk_meta_bytes,
        }
    }

    fn mirror_fold_plan(
        &mut self,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
    ) -> Result<DeviceStats, GpuError> {
        let outcome = self.mirror_fold_inner(batch, plan);
        if outcome.is_err() {
            // Leave no copy or kernel running on buffers that may go away.
            let _ = self.sync_lanes();
        }
        outcome
    }

    fn mirror_finish(&mut self, sink: &mut MirrorSink<'_>) -> Result<(), GpuError> {
        let outcome = self.mirror_finish_inner(sink);
        let synced = self.sync_lanes();
        self.mirror = None;
        outcome.and(synced)
    }

    fn mirror_close(&mut self) {
        let _ = self.sync_lanes();
        self.mirror = None;
    }

    fn arena_target(&self) -> Option<ArenaTarget<'_>> {
        self.mirror.as_ref().map(|mirror| ArenaTarget {
            index: &mirror.index,
            context: Some(&self.ctx),
        })
    }

    fn mirror_fold_arena(&mut self, arena: &RankArena) -> Result<DeviceStats, GpuError> {
        let outcome = self.arena_fold_inner(arena);
        if outcome.is_err() {
            // No copy may still read the arena once the caller has it back.
            let _ = self.sync_lanes();
        }
        outcome
    }

    fn last_fold_phases(&self) -> FoldPhases {
        self.phases
    }
}

fn merger_name(config: &GpuConfig) -> String {
    let launch = match config.launch {
        LaunchMode::PerBatch => "launch",
        LaunchMode::Persistent => "persistent",
    };
    let alloc = match config.alloc {
        AllocMode::Plain => "plain",
        AllocMode::StreamPool => "pool",
        AllocMode::Reuse => "reuse",
    };
    let staging = match config.staging {
        HostStaging::Pageable => "pageable",
        HostStaging::Pinned => "pinned",
        HostStaging::Registered => "registered",
    };
    format!("gpu-{launch}-{alloc}-{staging}-x{}", config.streams)
}

/// Copies `src` into `dst` (same length) on all cores.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    dst.par_chunks_mut(COPY_PIECE_BYTES)
        .zip(src.par_chunks(COPY_PIECE_BYTES))
        .for_each(|(to, from)| to.copy_from_slice(from));
}

/// Capacity to allocate for `len` bytes: a quarter more, so that batches
/// that grow a little do not reallocate every time.
fn grow(len: usize) -> usize {
    len.saturating_add(len / 4).max(4096)
}

/// A device that runs the kernel's CPU twin ([`crate::emulate`]) over the
/// same flat layout, with the same fault hooks. It lets CI machines without a
/// GPU exercise [`crate::GpuMerge`]'s fallback paths end to end.
#[derive(Debug, Default)]
pub struct SimulatedDevice {
    fault: Option<FaultInjection>,
    /// Chunks merged (and written back) before an armed
    /// [`FaultInjection::FailLaunch`] fires: a failure in the middle of a batch.
    pub fail_after_chunks: usize,
    /// Most pages per chunk.
    pub max_chunk_pages: usize,
    /// Shared-memory tiles of the emulated kernel (tiny ones drive pages
    /// down the kernel's large path).
    pub tiles: Tiles,
    /// The simulated page mirror: its index and its slots' images.
    mirror: Option<(MirrorIndex, Vec<u8>)>,
}

impl SimulatedDevice {
    /// A simulated device with chunks of `max_chunk_pages` pages.
    pub fn new(max_chunk_pages: usize) -> Self {
        SimulatedDevice {
            fault: None,
            fail_after_chunks: 0,
            max_chunk_pages: max_chunk_pages.max(1),
            tiles: Tiles::KERNEL,
            mirror: None,
        }
    }
}

/// The simulated mirror's fold of one chunk: gathers the images of `slots`,
/// folds them with the kernel's twin, and scatters them back.
fn fold_mirror_slots(
    images: &mut [u8],
    page_len: usize,
    slots: &[u32],
    view: &ChunkView<'_>,
    tiles: Tiles,
) -> Result<(), GpuError> {
    let mut work = Vec::with_capacity(slots.len() * page_len);
    for &slot in slots {
        let at = slot as usize * page_len;
        let image = images
            .get(at..at + page_len)
            .ok_or_else(|| GpuError::Unsupported(format!("mirror slot {slot}")))?;
        work.extend_from_slice(image);
    }
    crate::emulate::fold_chunk_with(&mut work, page_len, view, tiles);
    for (&slot, page) in slots.iter().zip(work.chunks_exact(page_len)) {
        let at = slot as usize * page_len;
        if let Some(image) = images.get_mut(at..at + page_len) {
            image.copy_from_slice(page);
        }
    }
    Ok(())
}

impl SimulatedDevice {
    /// Fires an armed fault before a mirror fold changes anything: out of
    /// memory (for an allocation of `bytes`) or a failed launch; any other
    /// armed fault stays armed.
    fn fire_armed_fault(&mut self, bytes: u64) -> Result<(), GpuError> {
        match self.fault.take() {
            Some(FaultInjection::OutOfMemory) => Err(GpuError::OutOfMemory {
                call: "cuMemAlloc (simulated)",
                bytes,
            }),
            Some(FaultInjection::FailLaunch) => Err(GpuError::Driver {
                call: "cuLaunchKernel (simulated)",
                code: 719,
                name: "CUDA_ERROR_LAUNCH_FAILED".into(),
            }),
            other => {
                self.fault = other;
                Ok(())
            }
        }
    }
}

impl DeviceMerger for SimulatedDevice {
    fn name(&self) -> &str {
        "gpu-simulated"
    }

    fn merge(&mut self, batch: &mut MergeBatch<'_>) -> Result<DeviceStats, GpuError> {
        if self.fault == Some(FaultInjection::OutOfMemory) {
            self.fault = None;
            return Err(GpuError::OutOfMemory {
                call: "cuMemAlloc (simulated)",
                bytes: batch.images().len() as u64,
            });
        }
        let page_len = batch.page_len();
        let mut stats = DeviceStats::default();
        for (index, slots) in plan_chunks(batch, self.max_chunk_pages.max(1), usize::MAX)
            .into_iter()
            .enumerate()
        {
            if self.fault == Some(FaultInjection::FailLaunch) && index >= self.fail_after_chunks {
                self.fault = None;
                return Err(GpuError::Driver {
                    call: "cuLaunchKernel (simulated)",
                    code: 719,
                    name: "CUDA_ERROR_LAUNCH_FAILED".into(),
                });
            }
            let plan = ChunkPlan::new(batch, slots.clone())?;
            let mut meta = vec![0u8; plan.layout().total_len];
            plan.fill(batch, &mut meta)?;
            let view = ChunkView::new(*plan.layout(), &meta)?;
            let (images, _, _) = batch.split_for_merge();
            crate::emulate::fold_chunk_with(
                &mut images[slots.start * page_len..slots.end * page_len],
                page_len,
                &view,
                self.tiles,
            );
            stats.chunks += 1;
            stats.image_bytes += (slots.len() * page_len) as u64;
            stats.meta_bytes += plan.layout().total_len as u64;
        }
        Ok(stats)
    }

    fn set_fault(&mut self, fault: Option<FaultInjection>) {
        self.fault = fault;
    }

    fn mirror_open(&mut self, page_len: usize) -> Result<(), GpuError> {
        self.mirror = Some((MirrorIndex::new(page_len), Vec::new()));
        Ok(())
    }

    fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits {
            max_pages: self.max_chunk_pages.max(1),
            max_meta_bytes: usize::MAX,
        }
    }

    /// Gathers the plan's pages from the mirror (new ones from the batch),
    /// folds them with the kernel's twin chunk by chunk, and scatters them
    /// back; an armed fault fires before anything changes.
    fn mirror_fold_plan(
        &mut self,
        batch: &MergeBatch<'_>,
        plan: &ShardPlan,
    ) -> Result<DeviceStats, GpuError> {
        self.fire_armed_fault(batch.images().len() as u64)?;
        let (index, images) = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let page_len = batch.page_len();
        let (slots, new) = index.assign(batch, plan)?;
        for &slot in &new {
            let page = batch
                .page(slot)
                .ok_or_else(|| GpuError::Unsupported(format!("batch slot {slot}")))?;
            images.extend_from_slice(page);
        }
        let mut stats = DeviceStats::default();
        for (chunk_index, range) in plan.chunks().iter().enumerate() {
            let chunk = plan.chunk(chunk_index)?;
            let mut meta = vec![0u8; chunk.layout().total_len];
            plan.fill(batch, &chunk, &mut meta)?;
            let view = ChunkView::new(*chunk.layout(), &meta)?;
            let chunk_slots = slots
                .get(range.clone())
                .ok_or_else(|| GpuError::Unsupported(format!("chunk {chunk_index}")))?;
            fold_mirror_slots(images, page_len, chunk_slots, &view, self.tiles)?;
            stats.chunks += 1;
            stats.meta_bytes += meta.len() as u64;
        }
        stats.image_bytes = (new.len() * page_len) as u64;
        Ok(stats)
    }

    fn mirror_finish(&mut self, sink: &mut MirrorSink<'_>) -> Result<(), GpuError> {
        let (index, images) = self
            .mirror
            .take()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let pages = images.chunks_exact(index.page_len().max(1));
        for (page_id, image) in index.pages().iter().zip(pages) {
            if let Some(page_id) = page_id {
                sink(*page_id, image)?;
            }
        }
        Ok(())
    }

    fn mirror_close(&mut self) {
        self.mirror = None;
    }

    fn arena_target(&self) -> Option<ArenaTarget<'_>> {
        self.mirror.as_ref().map(|(index, _)| ArenaTarget {
            index,
            context: None,
        })
    }

    /// Adopts the arena's new pages, then folds its chunks in order with
    /// the kernel's twin, each over the block bytes the kernel would read.
    fn mirror_fold_arena(&mut self, arena: &RankArena) -> Result<DeviceStats, GpuError> {
        self.fire_armed_fault(arena.blocks().len() as u64)?;
        let (index, images) = self
            .mirror
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("no page mirror is open".into()))?;
        let page_len = arena.page_len();
        adopt_new_pages(index, arena)?;
        for (memory, pages) in arena.uploads() {
            let bytes = memory
                .bytes()
                .get(..pages * page_len)
                .ok_or_else(|| GpuError::Unsupported("arena upload block".into()))?;
            images.extend_from_slice(bytes);
        }
        let mut stats = DeviceStats {
            image_bytes: (arena.new_pages().len() * page_len) as u64,
            ..DeviceStats::default()
        };
        for chunk in arena.chunks() {
            let view = arena.view(chunk)?;
            let slots = arena.slots(chunk)?;
            fold_mirror_slots(images, page_len, &slots, &view, self.tiles)?;
            stats.chunks += 1;
            stats.meta_bytes += view.layout().total_len as u64;
        }
        Ok(stats)
    }
}
