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
//! Contract on failure: a device may have written some chunks back before it
//! failed, but every byte of every image then holds either its base value or
//! the value of some prefix of its chain folded in order. Folding a chain is
//! idempotent (each touched byte ends as the last writer's value), so the CPU
//! fallback folding the whole batch again gives the exact result. Every lane
//! is drained before [`DeviceMerger::merge`] returns, on success or failure,
//! so no copy touches the batch afterwards.

use std::ffi::c_void;
use std::ops::Range;

use mmsb_engine::merge::MergeBatch;
use rayon::prelude::*;

use crate::compile::compile_cubin;
use crate::config::{AllocMode, FaultInjection, GpuConfig, HostStaging, LaunchMode, MAX_STREAMS};
use crate::driver::{
    Context, DeviceBuffer, HostRegistration, KernelId, KernelNames, MemPool, Module, PinnedBuffer,
    Stream,
};
use crate::emulate::Tiles;
use crate::error::GpuError;
use crate::kernel::{self, Job, BASELINE_KERNEL, BLOCK_THREADS, MERGE_KERNEL, PERSISTENT_KERNEL};
use crate::layout::{plan_chunks, ChunkPlan, ChunkView};
use crate::persistent::Persistent;
use crate::probe::{probe, DeviceInfo};

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
    lanes: Vec<Lane>,
    pool: Option<MemPool>,
    module: Module,
    ctx: Context,
    info: DeviceInfo,
    config: GpuConfig,
    fault: Option<FaultInjection>,
    baseline_shared_allowed: usize,
    name: String,
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
            lanes,
            pool,
            module,
            ctx,
            fault: config.fault,
            info,
            config: config.clone(),
            baseline_shared_allowed: DEFAULT_SHARED_LIMIT_BYTES,
            name,
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
        let per_sm = self
            .module
            .occupancy(KernelId::Merge, BLOCK_THREADS, 0)?
            .max(1);
        let full = per_sm.saturating_mul(self.info.multiprocessors).max(1);
        Ok(full.min(u32::try_from(pages).unwrap_or(u32::MAX)).max(1))
    }

    /// Queues one `mmsb_merge` launch of `job` on `stream`.
    ///
    /// # Safety
    /// `job`'s addresses must be device buffers holding the chunk it
    /// describes, alive until the stream passed the launch.
    pub unsafe fn launch_job(&self, job: &Job, grid: u32, stream: &Stream) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { self.launch_kernel(KernelId::Merge, job, grid, 0, stream) }
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
}

impl SimulatedDevice {
    /// A simulated device with chunks of `max_chunk_pages` pages.
    pub fn new(max_chunk_pages: usize) -> Self {
        SimulatedDevice {
            fault: None,
            fail_after_chunks: 0,
            max_chunk_pages: max_chunk_pages.max(1),
            tiles: Tiles::KERNEL,
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
}
