//! The optional GPU merge backend (cargo feature `cuda`, crate `mmsb-cuda`).
//!
//! [`options_with_gpu`] gives [`Options`] whose
//! [`merge_backend`](Options::merge_backend) is [`GpuMerge`]: recovery can
//! then fold its windows of the TLog in a page mirror on an NVIDIA GPU, from
//! the first window of [`Options::gpu_merge_min_pages`] pages on. The
//! measured threshold ([`MEASURED_GPU_MIN_PAGES`]) is "never" for now: see
//! its docs. Without a usable GPU (no driver, no device, no NVRTC, a failed
//! compile) the options keep the CPU merge; [`with_gpu`] also says why.
//!
//! ```no_run
//! # fn main() -> mmsb::Result<()> {
//! let db = mmsb::gpu::options_with_gpu()?.open("app.mmsb")?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use mmsb_cuda::{GpuConfig, GpuMerge, GpuStatus};
use mmsb_engine::{Options, Result};

/// Fewest pages a recovery window must have before recovery folds on the
/// GPU, as measured (docs/gpu.md, "Where the engine uses the GPU", H100,
/// 2026-11-25): recovery through the GPU's page mirror was slower than
/// folding in place on the CPU at every log measured (44 to 702 MiB, 4 Ki
/// to 256 Ki pages, 0.25x to 0.70x), and a batch round trip lost to the
/// all-core CPU merge at every size (1 Ki to 256 Ki pages, 0.13x to 0.5x).
/// So no window size routes to the GPU by default: `usize::MAX`. Replay is
/// bound by host work (decoding, per-delta allocation, the layout the GPU
/// reads), not by folding, which the GPU does 50x faster once pages are on
/// it. Lower [`Options::gpu_merge_min_pages`] to use the GPU anyway.
pub const MEASURED_GPU_MIN_PAGES: usize = usize::MAX;

/// Default options, with the GPU merge as backend when a GPU is usable and
/// [`Options::gpu_merge_min_pages`] at [`MEASURED_GPU_MIN_PAGES`] (with the
/// measurements so far, recovery stays on the CPU until a caller lowers it).
/// Errors only when the CPU merge the GPU falls back to cannot be made.
pub fn options_with_gpu() -> Result<Options> {
    let options = Options {
        gpu_merge_min_pages: MEASURED_GPU_MIN_PAGES,
        ..Options::default()
    };
    Ok(with_gpu(options, &GpuConfig::default())?.0)
}

/// `options` with a [`GpuMerge`] built from `config` as merge backend, and
/// where batches will go. When no GPU is usable, `options` come back without
/// a backend (the CPU merge) and the status gives the reason.
pub fn with_gpu(mut options: Options, config: &GpuConfig) -> Result<(Options, GpuStatus)> {
    let merge = GpuMerge::new(config)?;
    let status = merge.status();
    if matches!(status, GpuStatus::Active(_)) {
        options.merge_backend = Some(Arc::new(merge));
    }
    Ok((options, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmsb_cuda::FaultInjection;

    #[test]
    fn without_a_device_the_options_keep_the_cpu_merge() {
        let config = GpuConfig {
            fault: Some(FaultInjection::NoDevice),
            ..GpuConfig::default()
        };
        let (options, status) = with_gpu(Options::default(), &config).unwrap();
        assert!(options.merge_backend.is_none());
        assert!(matches!(status, GpuStatus::CpuOnly(reason) if reason.contains("device")));
    }

    #[test]
    fn the_default_threshold_is_the_measured_one() {
        assert_eq!(
            options_with_gpu().unwrap().gpu_merge_min_pages,
            MEASURED_GPU_MIN_PAGES
        );
        // with_gpu keeps the caller's own threshold.
        let options = Options {
            gpu_merge_min_pages: 5,
            ..Options::default()
        };
        assert_eq!(
            with_gpu(options, &GpuConfig::default())
                .unwrap()
                .0
                .gpu_merge_min_pages,
            5
        );
    }

    #[test]
    fn on_this_machine_the_options_match_the_gpu_status() {
        let options = options_with_gpu().unwrap();
        let active = matches!(
            GpuMerge::new(&GpuConfig::default()).unwrap().status(),
            GpuStatus::Active(_)
        );
        assert_eq!(options.merge_backend.is_some(), active);
    }
}
