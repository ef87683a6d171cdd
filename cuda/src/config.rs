//! [`GpuConfig`] and the choices it carries: how kernels are launched, where
//! device buffers come from, and the fault-injection hooks tests use.

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
    /// Longest wait for the resident kernel to finish one job.
    pub persistent_timeout_ms: u64,
    /// Worker threads of the CPU merge used for fallback.
    pub cpu_threads: usize,
    /// Forced failure, for tests.
    pub fault: Option<FaultInjection>,
}

/// Default pages per chunk: 64 Ki pages, 256 MiB of 4 KiB pages.
pub const DEFAULT_MAX_CHUNK_PAGES: usize = 64 * 1024;
/// Default meta bytes per chunk: 256 MiB.
pub const DEFAULT_MAX_CHUNK_META_BYTES: usize = 256 * 1024 * 1024;
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
            persistent_timeout_ms: DEFAULT_PERSISTENT_TIMEOUT_MS,
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            fault: None,
        }
    }
}
