//! mmsb's optional GPU merge backend.
//!
//! [`GpuMerge`] implements the engine's [`mmsb_engine::merge::MergeBackend`]:
//! it ships a [`mmsb_engine::merge::MergeBatch`] to an NVIDIA GPU in chunks
//! (page images into a device buffer; run index and payload through pinned
//! host memory in the flat layout of [`layout`]), folds every page's delta
//! chain in epoch order with a kernel compiled at run time by NVRTC for the
//! device's own architecture, and copies the pages back, bit-identical to the
//! CPU merge. Any failure (no driver, no device, a failed launch, out of
//! memory) makes the batch run on [`mmsb_engine::merge::CpuMerge`] instead.
//!
//! cudarc is used with dynamic loading: this crate builds and runs on
//! machines without CUDA, and [`probe()`] checks for libcuda / libnvrtc before
//! any driver call, since cudarc panics when a library is missing.
//!
//! Modules: [`layout`] (flat chunk format), [`kernel`] (CUDA source, job
//! record), [`emulate`] (the kernel's CPU twin), [`compile`] (NVRTC),
//! [`driver`] (owned CUDA objects), [`persistent`] (resident kernel and its
//! queue), [`device`] (the device mergers and their page mirrors), [`merge`]
//! (the backend, its fallback and its merge sessions), [`mod@bench`]
//! (measurement helpers for the GPU bench), [`shard`] (the host side of a
//! mirror fold: routing, checking, chunk planning), [`arena`] (decode arenas:
//! TLog records decoded straight into pinned per-GPU chunks), and with the cargo feature
//! `nccl`, `nccl` (pages sharded over several GPUs through NCCL).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod arena;
pub mod bench;
pub mod compile;
pub mod config;
pub mod device;
pub mod driver;
pub mod emulate;
pub mod error;
pub mod kernel;
pub mod layout;
pub mod merge;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod persistent;
pub mod probe;
pub mod shard;

pub use arena::{ArenaBuilder, ArenaGeometry, DecodeArenas, RankArena};
pub use config::{AllocMode, FaultInjection, GpuConfig, HostStaging, LaunchMode};
pub use device::{CudaMerger, DeviceMerger, DeviceStats, SimulatedDevice};
pub use emulate::Tiles;
pub use error::GpuError;
pub use merge::{FallbackRecord, GpuMerge, GpuStatus};
pub use probe::{device_count, driver_library_present, nvrtc_library_present, probe, DeviceInfo};
pub use shard::{ChunkLimits, DeltaCounts, FoldPhases, MirrorIndex, ShardPlan};
