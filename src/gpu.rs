//! The optional GPU merge backend (cargo feature `cuda`, crate `mmsb-cuda`).
//!
//! [`options_with_gpu`] gives [`Options`] whose
//! [`merge_backend`](Options::merge_backend) is [`GpuMerge`], so that
//! recovery folds large windows of the TLog on an NVIDIA GPU (batches below
//! [`Options::gpu_merge_min_pages`] pages still merge on the CPU). Without a
//! usable GPU (no driver, no device, no NVRTC, a failed compile) the options
//! keep the CPU merge; [`with_gpu`] also says why.
//!
//! ```no_run
//! # fn main() -> mmsb::Result<()> {
//! let db = mmsb::gpu::options_with_gpu()?.open("app.mmsb")?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

pub use mmsb_cuda::{GpuConfig, GpuMerge, GpuStatus};
use mmsb_engine::{Options, Result};

/// Default options, with the GPU merge as backend when a GPU is usable.
/// Errors only when the CPU merge the GPU falls back to cannot be made.
pub fn options_with_gpu() -> Result<Options> {
    Ok(with_gpu(Options::default(), &GpuConfig::default())?.0)
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
    fn on_this_machine_the_options_match_the_gpu_status() {
        let options = options_with_gpu().unwrap();
        let active = matches!(
            GpuMerge::new(&GpuConfig::default()).unwrap().status(),
            GpuStatus::Active(_)
        );
        assert_eq!(options.merge_backend.is_some(), active);
    }
}
