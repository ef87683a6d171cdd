//! [`DeviceMerger`]: what a device must do for [`crate::GpuMerge`], and its
//! two implementations: [`CudaMerger`] (a real GPU) and [`SimulatedDevice`]
//! (the kernel's CPU twin, with the same fault hooks, for CI machines).
//!
//! Contract on failure: a device may have written some chunks back before it
//! failed, but every byte of every image then holds either its base value or
//! the value of some prefix of its chain folded in order. Folding a chain is
//! idempotent (each touched byte ends as the last writer's value), so the CPU
//! fallback folding the whole batch again gives the exact result.

use std::ffi::c_void;
use std::ops::Range;

use mmsb_engine::merge::MergeBatch;

use crate::compile::compile_cubin;
use crate::config::{AllocMode, FaultInjection, GpuConfig, LaunchMode};
use crate::driver::{Context, DeviceBuffer, KernelId, MemPool, Module, PinnedBuffer, Stream};
use crate::error::GpuError;
use crate::kernel::{self, Job, BLOCK_THREADS, MERGE_KERNEL, PERSISTENT_KERNEL};
use crate::layout::{fill_chunk, measure_chunk, plan_chunks, ChunkLayout, ChunkView};
use crate::persistent::Persistent;
use crate::probe::{probe, DeviceInfo};

/// Shared memory a block gets without opting in.
const DEFAULT_SHARED_LIMIT_BYTES: usize = 48 * 1024;

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

/// The GPU merger: one context, one stream, the compiled kernels, and the
/// buffers its [`AllocMode`] keeps.
///
/// Field order is drop order: buffers and the resident kernel go before the
/// module, streams and context they depend on.
pub struct CudaMerger {
    persistent: Option<Persistent>,
    kept: Option<ChunkBuffers>,
    staging: Option<PinnedBuffer>,
    pool: Option<MemPool>,
    module: Module,
    stream: Stream,
    ctx: Context,
    info: DeviceInfo,
    config: GpuConfig,
    fault: Option<FaultInjection>,
    shared_allowed: usize,
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
        if config.max_chunk_pages == 0 || config.max_chunk_meta_bytes == 0 {
            return Err(GpuError::Unsupported(
                "chunk limits must be positive".into(),
            ));
        }
        let info = probe(config.ordinal)?;
        let ctx = Context::new(config.ordinal)?;
        let cubin = compile_cubin(&kernel::source(), &info.arch())?;
        let module = Module::load(&ctx, &cubin, MERGE_KERNEL, PERSISTENT_KERNEL)?;
        let stream = Stream::new(&ctx)?;
        let pool = match config.alloc {
            AllocMode::StreamPool if info.memory_pools => Some(MemPool::new(&ctx)?),
            AllocMode::StreamPool => {
                return Err(GpuError::Unsupported("device has no memory pools".into()))
            }
            _ => None,
        };
        let name = format!(
            "gpu-{}-{}",
            match config.launch {
                LaunchMode::PerBatch => "launch",
                LaunchMode::Persistent => "persistent",
            },
            match config.alloc {
                AllocMode::Plain => "plain",
                AllocMode::StreamPool => "pool",
                AllocMode::Reuse => "reuse",
            }
        );
        Ok(CudaMerger {
            persistent: None,
            kept: None,
            staging: None,
            pool,
            module,
            stream,
            ctx,
            fault: config.fault,
            info,
            config: config.clone(),
            shared_allowed: DEFAULT_SHARED_LIMIT_BYTES,
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

    /// Lets the merge kernel use the shared memory pages of `page_len` need.
    pub fn prepare_page_len(&mut self, page_len: usize) -> Result<usize, GpuError> {
        let shared = kernel::shared_bytes(page_len);
        if shared > self.info.max_shared_per_block_optin_bytes as usize {
            return Err(GpuError::Unsupported(format!(
                "pages of {page_len} bytes need {shared} bytes of shared memory"
            )));
        }
        if shared > self.shared_allowed {
            self.module.allow_shared(KernelId::Merge, shared)?;
            self.shared_allowed = shared;
        }
        Ok(shared)
    }

    /// Blocks for one launch of `mmsb_merge` over `pages` pages.
    pub fn grid_for(&self, pages: usize, shared: usize) -> Result<u32, GpuError> {
        let per_sm = self
            .module
            .occupancy(KernelId::Merge, BLOCK_THREADS, shared)?
            .max(1);
        let full = per_sm.saturating_mul(self.info.multiprocessors).max(1);
        Ok(full.min(u32::try_from(pages).unwrap_or(u32::MAX)).max(1))
    }

    /// Queues one `mmsb_merge` launch of `job` on `stream`.
    ///
    /// # Safety
    /// `job`'s addresses must be device buffers holding the chunk it
    /// describes, alive until the stream passed the launch.
    pub unsafe fn launch_job(
        &self,
        job: &Job,
        grid: u32,
        shared: usize,
        stream: &Stream,
    ) -> Result<(), GpuError> {
        let mut job = *job;
        let mut params: [*mut c_void; 1] = [(&mut job as *mut Job).cast()];
        // SAFETY: one parameter, `Job` by value, as `mmsb_merge(Job)` takes;
        // forwarded contract for the addresses.
        unsafe {
            self.module.launch(
                KernelId::Merge,
                grid,
                BLOCK_THREADS,
                shared,
                stream,
                &mut params,
            )
        }
    }

    fn take_fault(&mut self, kind: FaultInjection) -> bool {
        if self.fault == Some(kind) {
            self.fault = None;
            return true;
        }
        false
    }

    fn staging_for(&mut self, len: usize) -> Result<&mut PinnedBuffer, GpuError> {
        let too_small = self.staging.as_ref().is_none_or(|s| s.len() < len);
        if too_small {
            // Freeing pinned memory may synchronize the device, which would
            // wait forever on a resident kernel: stop it first.
            self.stop_persistent()?;
            self.staging = None;
            self.staging = Some(PinnedBuffer::alloc(&self.ctx, grow(len), false)?);
        }
        self.staging
            .as_mut()
            .ok_or_else(|| GpuError::Unsupported("staging buffer".into()))
    }

    fn alloc(&mut self, len: usize) -> Result<DeviceBuffer, GpuError> {
        let len = if self.take_fault(FaultInjection::OutOfMemory) {
            usize::try_from(self.info.total_memory_bytes.saturating_mul(4)).unwrap_or(usize::MAX)
        } else {
            len
        };
        match (&self.pool, self.persistent_mode()) {
            (Some(pool), false) => {
                DeviceBuffer::alloc_from_pool(&self.ctx, pool, &self.stream, len)
            }
            _ => DeviceBuffer::alloc(&self.ctx, len),
        }
    }

    fn persistent_mode(&self) -> bool {
        self.config.launch == LaunchMode::Persistent
    }

    fn reuse_mode(&self) -> bool {
        self.persistent_mode() || self.config.alloc == AllocMode::Reuse
    }

    /// Device buffers for a chunk of `images` and `meta` bytes.
    fn acquire(&mut self, images: usize, meta: usize) -> Result<ChunkBuffers, GpuError> {
        if self.reuse_mode() {
            if let Some(kept) = self.kept.take() {
                if kept.images.len() >= images && kept.meta.len() >= meta {
                    return Ok(kept);
                }
                // Growing: the resident kernel must not run while memory is freed.
                self.stop_persistent()?;
                drop(kept);
            }
            return Ok(ChunkBuffers {
                images: self.alloc(grow(images))?,
                meta: self.alloc(grow(meta))?,
            });
        }
        Ok(ChunkBuffers {
            images: self.alloc(images)?,
            meta: self.alloc(meta)?,
        })
    }

    fn release(&mut self, buffers: ChunkBuffers) {
        if self.reuse_mode() {
            self.kept = Some(buffers);
        }
        // Otherwise dropped here: cuMemFree, or cuMemFreeAsync on the stream.
    }

    fn stop_persistent(&mut self) -> Result<(), GpuError> {
        match self.persistent.take() {
            Some(mut kernel) => kernel.stop(),
            None => Ok(()),
        }
    }

    fn run_job(&mut self, job: &Job, page_len: usize) -> Result<(), GpuError> {
        let shared = self.prepare_page_len(page_len)?;
        let fail = self.take_fault(FaultInjection::FailLaunch);
        if self.persistent_mode() && !fail {
            let stale = self
                .persistent
                .as_ref()
                .is_some_and(|k| k.page_capacity() < page_len);
            if stale {
                self.stop_persistent()?;
            }
            if self.persistent.is_none() {
                let kernel = Persistent::start(
                    &self.ctx,
                    &self.module,
                    self.info.multiprocessors,
                    page_len,
                    self.config.persistent_timeout_ms,
                )?;
                self.persistent = Some(kernel);
            }
            // The copies were queued on `stream`; the job may start only once
            // they landed.
            self.stream.synchronize()?;
            return match self.persistent.as_mut() {
                Some(kernel) => kernel.run(*job),
                None => Err(GpuError::Disabled("persistent kernel missing".into())),
            };
        }
        let grid = if fail {
            0
        } else {
            self.grid_for(job.pages as usize, shared)?
        };
        // SAFETY: the job's buffers are held by the caller until the stream
        // is synchronized.
        unsafe { self.launch_job(job, grid, shared, &self.stream) }
    }

    fn merge_chunk(
        &mut self,
        batch: &mut MergeBatch<'_>,
        slots: Range<usize>,
    ) -> Result<ChunkLayout, GpuError> {
        let page_len = batch.page_len();
        let layout = measure_chunk(batch, slots.clone())?;
        let staging = self.staging_for(layout.total_len)?;
        fill_chunk(batch, slots.clone(), &layout, staging.as_mut_slice())?;
        let image_range = slots.start * page_len..slots.end * page_len;
        let buffers = self.acquire(image_range.len(), layout.total_len)?;
        let outcome = self.ship_and_fold(batch, image_range, &layout, &buffers);
        // Free (or keep) only once the stream is idle; on error, wait too.
        let synced = self.stream.synchronize();
        self.release(buffers);
        outcome?;
        synced?;
        Ok(layout)
    }

    fn ship_and_fold(
        &mut self,
        batch: &mut MergeBatch<'_>,
        image_range: Range<usize>,
        layout: &ChunkLayout,
        buffers: &ChunkBuffers,
    ) -> Result<(), GpuError> {
        let page_len = batch.page_len();
        let staging = self
            .staging
            .as_ref()
            .ok_or_else(|| GpuError::Unsupported("staging buffer".into()))?;
        // SAFETY: both device buffers hold at least these many bytes (acquire);
        // pageable images are copied before return; the pinned staging stays
        // untouched until the stream is synchronized in merge_chunk.
        unsafe {
            self.stream
                .copy_to_device(buffers.images.ptr(), &batch.images()[image_range.clone()])?;
            self.stream
                .copy_to_device(buffers.meta.ptr(), &staging.as_slice()[..layout.total_len])?;
        }
        let job = Job {
            images: buffers.images.ptr(),
            meta: buffers.meta.ptr(),
            pages: layout.pages as u32,
            page_len: page_len as u32,
            runs_offset: layout.runs_offset as u32,
            payload_offset: layout.payload_offset as u32,
        };
        self.run_job(&job, page_len)?;
        let (images, _, _) = batch.split_for_merge();
        // SAFETY: the device buffer holds the chunk's images; a pageable
        // destination is written before return.
        unsafe {
            self.stream
                .copy_to_host(&mut images[image_range], buffers.images.ptr())
        }
    }
}

impl DeviceMerger for CudaMerger {
    fn name(&self) -> &str {
        &self.name
    }

    fn merge(&mut self, batch: &mut MergeBatch<'_>) -> Result<DeviceStats, GpuError> {
        self.ctx.bind()?;
        let mut stats = DeviceStats::default();
        for slots in plan_chunks(
            batch,
            self.config.max_chunk_pages,
            self.config.max_chunk_meta_bytes,
        ) {
            let pages = slots.len();
            let layout = self.merge_chunk(batch, slots)?;
            stats.chunks += 1;
            stats.image_bytes += (pages * batch.page_len()) as u64;
            stats.meta_bytes += layout.total_len as u64;
        }
        Ok(stats)
    }

    fn set_fault(&mut self, fault: Option<FaultInjection>) {
        self.fault = fault;
    }
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
}

impl SimulatedDevice {
    /// A simulated device with chunks of `max_chunk_pages` pages.
    pub fn new(max_chunk_pages: usize) -> Self {
        SimulatedDevice {
            fault: None,
            fail_after_chunks: 0,
            max_chunk_pages: max_chunk_pages.max(1),
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
            let layout = measure_chunk(batch, slots.clone())?;
            let mut meta = vec![0u8; layout.total_len];
            fill_chunk(batch, slots.clone(), &layout, &mut meta)?;
            let view = ChunkView::new(layout, &meta)?;
            let (images, _, _) = batch.split_for_merge();
            crate::emulate::fold_chunk(
                &mut images[slots.start * page_len..slots.end * page_len],
                page_len,
                &view,
            );
            stats.chunks += 1;
            stats.image_bytes += (slots.len() * page_len) as u64;
            stats.meta_bytes += layout.total_len as u64;
        }
        Ok(stats)
    }

    fn set_fault(&mut self, fault: Option<FaultInjection>) {
        self.fault = fault;
    }
}
