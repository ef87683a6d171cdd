//! [`GpuError`]: every way the GPU path can fail, as a value.
//!
//! Nothing in this crate panics on a CUDA failure: each driver or NVRTC
//! status other than success becomes a `GpuError`, and [`crate::GpuMerge`]
//! turns any of them into a transparent fallback to the CPU merge.

use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;

/// Why the GPU could not (or did not) merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// `libcuda` could not be opened: no NVIDIA driver on this machine.
    #[error("no CUDA driver found (libcuda could not be loaded)")]
    NoDriver,
    /// `libnvrtc` could not be opened: the run-time compiler is missing.
    #[error("no NVRTC library found (libnvrtc could not be loaded)")]
    NoNvrtc,
    /// The driver loaded but reports no usable device at the requested ordinal.
    #[error("no CUDA device {ordinal} (the driver reports {count})")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// The device ran out of memory (also from a forced out-of-memory test hook).
    #[error("CUDA device out of memory in {call} ({bytes} bytes asked)")]
    OutOfMemory {
        /// The driver call that failed.
        call: &'static str,
        /// Bytes asked for.
        bytes: u64,
    },
    /// A driver call failed with a status code.
    #[error("{call} failed: {name} ({code})")]
    Driver {
        /// The driver call that failed.
        call: &'static str,
        /// The raw `CUresult` value.
        code: u32,
        /// The status name, such as `CUDA_ERROR_LAUNCH_FAILED`.
        name: String,
    },
    /// NVRTC refused the kernel source; `log` is the compiler's log.
    #[error("NVRTC failed ({status}): {log}")]
    Compile {
        /// The NVRTC status name.
        status: String,
        /// The compiler log, possibly empty.
        log: String,
    },
    /// The persistent kernel did not answer within its deadline.
    #[error("persistent merge kernel did not finish item {seq} within {waited_ms} ms")]
    Timeout {
        /// The queue item waited for.
        seq: u32,
        /// How long the host waited.
        waited_ms: u64,
    },
    /// A batch exceeds a layout limit of the GPU path (the CPU path still merges it).
    #[error("batch exceeds a GPU layout limit: {0}")]
    Unsupported(String),
    /// Input handed to the GPU path is malformed (a TLog record that does
    /// not decode, a run past its page): the bytes are wrong, not the device.
    #[error("corrupted input to the GPU path: {0}")]
    Corrupted(String),
    /// The device was disabled after an earlier failure.
    #[error("GPU merge disabled after an earlier failure: {0}")]
    Disabled(String),
}

impl GpuError {
    /// Wraps a driver status returned by `call`; out-of-memory gets its own variant.
    pub fn driver(call: &'static str, error: DriverError, bytes: u64) -> Self {
        if error.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return GpuError::OutOfMemory { call, bytes };
        }
        // cuGetErrorName needs libcuda; without it (unit tests) use the enum name.
        let name = if crate::probe::driver_library_present() {
            error
                .error_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("{:?}", error.0))
        } else {
            format!("{:?}", error.0)
        };
        GpuError::Driver {
            call,
            code: error.0 as u32,
            name,
        }
    }

    /// Wraps an NVRTC status with the compiler log.
    pub fn nvrtc(error: NvrtcError, log: String) -> Self {
        GpuError::Compile {
            status: format!("{:?}", error.0),
            log,
        }
    }

    /// True when the device stays usable after this error, so the next batch
    /// may try the GPU again (out of memory, a batch the layout cannot hold).
    /// Any other error disables the GPU path for the life of the merger.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GpuError::OutOfMemory { .. } | GpuError::Unsupported(_)
        )
    }
}

impl From<mmsb_wal::WalError> for GpuError {
    /// A TLog record that failed to decode is corrupted input.
    fn from(error: mmsb_wal::WalError) -> Self {
        GpuError::Corrupted(error.to_string())
    }
}

/// Shorthand: map a cudarc driver result into a [`GpuError`] naming `call`.
pub(crate) trait DriverResultExt<T> {
    /// Tags the error with the call and the bytes it asked for (0 if none).
    fn ctx(self, call: &'static str, bytes: u64) -> Result<T, GpuError>;
}

impl<T> DriverResultExt<T> for Result<T, DriverError> {
    fn ctx(self, call: &'static str, bytes: u64) -> Result<T, GpuError> {
        self.map_err(|error| GpuError::driver(call, error, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_its_own_transient_variant() {
        let error = GpuError::driver(
            "cuMemAlloc",
            DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY),
            42,
        );
        assert_eq!(
            error,
            GpuError::OutOfMemory {
                call: "cuMemAlloc",
                bytes: 42
            }
        );
        assert!(error.is_transient());
    }

    #[test]
    fn other_driver_errors_are_sticky_and_keep_their_code() {
        // error_name needs libcuda; without it the Debug name is used.
        let error = GpuError::driver(
            "cuLaunchKernel",
            DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED),
            0,
        );
        match &error {
            GpuError::Driver { call, code, .. } => {
                assert_eq!(*call, "cuLaunchKernel");
                assert_eq!(*code, CUresult::CUDA_ERROR_LAUNCH_FAILED as u32);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!error.is_transient());
        assert!(!GpuError::NoDriver.is_transient());
    }
}
