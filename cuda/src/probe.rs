//! Finding out, without panicking, whether this machine can run the GPU merge.
//!
//! cudarc's dynamic loading panics when a library is missing, so every entry
//! point of this crate asks [`driver_library_present`] (and, before compiling,
//! [`nvrtc_library_present`]) first; both only try to open the libraries and
//! cache the answer.

use std::ffi::c_int;
use std::sync::OnceLock;

use cudarc::driver::result;
use cudarc::driver::sys::{CUdevice, CUdevice_attribute};

use crate::error::{DriverResultExt, GpuError};

/// True when `libcuda` can be opened (checked once per process).
pub fn driver_library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// True when `libnvrtc` can be opened (checked once per process).
pub fn nvrtc_library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    *PRESENT.get_or_init(|| unsafe { cudarc::nvrtc::sys::is_culib_present() })
}

/// What the merge needs to know about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name, such as `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability (major, minor); 9.0 for Hopper.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub multiprocessors: u32,
    /// Device memory in bytes.
    pub total_memory_bytes: u64,
    /// Largest dynamic shared memory a block may opt into, in bytes.
    pub max_shared_per_block_optin_bytes: u32,
    /// Whether the GPU can fault on managed memory while the host uses it.
    pub concurrent_managed_access: bool,
    /// Whether pinned host memory can be mapped into the device's space.
    pub can_map_host_memory: bool,
    /// Whether stream-ordered memory pools are supported.
    pub memory_pools: bool,
    /// Driver version as CUDA encodes it (13000 for 13.0).
    pub driver_version: u32,
}

impl DeviceInfo {
    /// The NVRTC target for this device, such as `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Number of CUDA devices (0 when the driver has none); errors without libcuda.
pub fn device_count() -> Result<usize, GpuError> {
    if !driver_library_present() {
        return Err(GpuError::NoDriver);
    }
    result::init().ctx("cuInit", 0)?;
    let count = result::device::get_count().ctx("cuDeviceGetCount", 0)?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Loads the driver, initializes it and reads device `ordinal`'s properties.
/// Errors: [`GpuError::NoDriver`] without libcuda, [`GpuError::NoDevice`] when
/// the ordinal does not exist, [`GpuError::Driver`] for any failed call.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, GpuError> {
    if !driver_library_present() {
        return Err(GpuError::NoDriver);
    }
    result::init().ctx("cuInit", 0)?;
    let count = result::device::get_count().ctx("cuDeviceGetCount", 0)?;
    let count = usize::try_from(count).unwrap_or(0);
    if ordinal >= count {
        return Err(GpuError::NoDevice { ordinal, count });
    }
    let device = result::device::get(ordinal as c_int).ctx("cuDeviceGet", 0)?;
    let attribute = |attribute| device_attribute(device, attribute);
    use CUdevice_attribute::*;
    let mut driver_version: c_int = 0;
    // SAFETY: plain out-parameter call on an initialized driver.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .ctx("cuDriverGetVersion", 0)?;
    Ok(DeviceInfo {
        ordinal,
        name: result::device::get_name(device).ctx("cuDeviceGetName", 0)?,
        compute_capability: (
            attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        multiprocessors: attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        // SAFETY: `device` came from cuDeviceGet.
        total_memory_bytes: unsafe { result::device::total_mem(device) }
            .ctx("cuDeviceTotalMem", 0)? as u64,
        max_shared_per_block_optin_bytes: attribute(
            CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?,
        concurrent_managed_access: attribute(CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS)? != 0,
        can_map_host_memory: attribute(CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)? != 0,
        memory_pools: attribute(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? != 0,
        driver_version: u32::try_from(driver_version).unwrap_or(0),
    })
}

fn device_attribute(device: CUdevice, attribute: CUdevice_attribute) -> Result<u32, GpuError> {
    // SAFETY: `device` came from cuDeviceGet.
    let value = unsafe { result::device::get_attribute(device, attribute) }
        .ctx("cuDeviceGetAttribute", 0)?;
    Ok(u32::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_agrees_with_the_library_check() {
        match probe(0) {
            Ok(info) => {
                assert!(driver_library_present());
                assert!(info.multiprocessors > 0);
                assert!(info.arch().starts_with("sm_"));
            }
            Err(GpuError::NoDriver) => assert!(!driver_library_present()),
            Err(other) => eprintln!("driver present but no usable device: {other}"),
        }
    }

    #[test]
    fn arch_is_formatted_from_the_capability() {
        let info = DeviceInfo {
            ordinal: 0,
            name: "x".into(),
            compute_capability: (9, 0),
            multiprocessors: 132,
            total_memory_bytes: 1,
            max_shared_per_block_optin_bytes: 1,
            concurrent_managed_access: true,
            can_map_host_memory: true,
            memory_pools: true,
            driver_version: 13000,
        };
        assert_eq!(info.arch(), "sm_90");
    }
}
