//! [`GpuConfig`] and the choices it carries: how kernels are launched, where
//! device buffers come from, how page images cross PCIe, how many streams
//! overlap the chunks of a batch, and the fault-injection hooks tests use.

/// How merge work reaches the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LaunchMode {
    /// One kernel launch per chunk of a batch.
    PerBatch,
    /// A resident kernel fed through a queue in mapped host memory.
    Persistent,
}

/// Where per-batch device buffers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocMode {
    /// `cuMemAlloc` / `cuMemFree` for every chunk of every batch.
    Plain,
    /// A stream-ordered `cuMemPool` that keeps freed memory
    /// (`cuMemAllocFromPoolAsync` / `cuMemFreeAsync`).
    StreamPool,
    /// This crate's own buffers, kept across batches and grown on demand.
    Reuse,
}

/// How page images travel between the batch (ordinary host memory) and the
/// device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostStaging {
    /// Copied straight from and to the batch's pageable buffer: the driver
    /// stages through its own small pinned buffers, and a device → host copy
    /// blocks the calling thread, so chunks cannot overlap.
    Pageable,
    /// Copied (by all cores) into pinned staging buffers kept across batches,
    /// one per stream; DMA from and to them overlaps the other streams' work.
    Pinned,
    /// The batch's image buffer is page-locked for the duration of the merge
    /// (`cuMemHostRegister`) and copied from and to directly; falls back to
    /// [`HostStaging::Pinned`] for a batch whose registration fails.
    Registered,
}

/// A failure forced on purpose, to test the fallback to the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultInjection {
    /// Behave as if libcuda were missing.
    NoDriver,
    /// Behave as if the driver reported no device.
    NoDevice,
    /// Make the next kernel launch fail (a real launch error on a GPU:
    /// the grid is given zero blocks).
    FailLaunch,
    /// Make the next device allocation fail with out-of-memory (a real
    /// allocation larger than the card on a GPU).
    OutOfMemory,
}

/// Settings of a [`crate::GpuMerge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// CUDA device ordinal.
    pub ordinal: usize,
    /// Kernel launch strategy.
    pub launch: LaunchMode,
    /// Device buffer strategy (ignored by [`LaunchMode::Persistent`], which
    /// always reuses its buffers: freeing memory could wait on the resident
    /// kernel forever).
    pub alloc: AllocMode,
    /// Most pages shipped to the device in one chunk.
    pub max_chunk_pages: usize,
    /// Most meta (run index + payload) bytes in one chunk.
    pub max_chunk_meta_bytes: usize,
    /// Most page-image bytes in one chunk (bounds each stream's staging and
    /// device buffers whatever the page size).
    pub max_chunk_image_bytes: usize,
    /// How page images cross PCIe.
    pub staging: HostStaging,
    /// Streams that overlap consecutive chunks (1 ..= [`MAX_STREAMS`]); each
    /// keeps its own device and staging buffers. [`LaunchMode::Persistent`]
    /// uses one (its queue runs jobs one after another anyway).
    pub streams: usize,
    /// Longest wait for the resident kernel to finish one job.
    pub persistent_timeout_ms: u64,
    /// Worker threads of the CPU merge used for fallback.
    pub cpu_threads: usize,
    /// Forced failure, for tests.
    pub fault: Option<FaultInjection>,
}

/// Default pages per chunk: 16 Ki pages, 64 MiB of 4 KiB pages (small
/// enough for several chunks of a large batch to be in flight at once).
pub const DEFAULT_MAX_CHUNK_PAGES: usize = 16 * 1024;
/// Default meta bytes per chunk: 64 MiB.
pub const DEFAULT_MAX_CHUNK_META_BYTES: usize = 64 * 1024 * 1024;
/// Default page-image bytes per chunk: 64 MiB.
pub const DEFAULT_MAX_CHUNK_IMAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default streams: copy in, fold and copy out of three chunks overlap.
pub const DEFAULT_STREAMS: usize = 3;
/// Most streams a merger may use.
pub const MAX_STREAMS: usize = 4;
/// Default bound on one persistent-kernel job: 10 s.
pub const DEFAULT_PERSISTENT_TIMEOUT_MS: u64 = 10_000;

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            ordinal: 0,
            launch: LaunchMode::PerBatch,
            alloc: AllocMode::Reuse,
            max_chunk_pages: DEFAULT_MAX_CHUNK_PAGES,
            max_chunk_meta_bytes: DEFAULT_MAX_CHUNK_META_BYTES,
            max_chunk_image_bytes: DEFAULT_MAX_CHUNK_IMAGE_BYTES,
            staging: HostStaging::Pinned,
            streams: DEFAULT_STREAMS,
            persistent_timeout_ms: DEFAULT_PERSISTENT_TIMEOUT_MS,
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fault: None,
        }
    }
}
