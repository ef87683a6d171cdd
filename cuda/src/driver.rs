//! Owned CUDA driver objects: context, stream, event, device / pinned /
//! managed buffers, host-memory registration, memory pool, module, graph. Each frees its handle on drop
//! and every call returns a [`GpuError`] instead of panicking.
//!
//! All handles belong to one primary context, which each object re-binds to
//! the calling thread before using it (one `cuCtxSetCurrent`, which is cheap),
//! so the objects may move between threads.

use std::ffi::{c_void, CString};
use std::ptr;
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUcontext, CUdevice, CUdeviceptr, CUevent, CUstream};

use crate::error::{DriverResultExt, GpuError};

/// Every driver entry point this crate calls. cudarc panics on a missing
/// symbol, so [`Context::new`] checks them all first.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDriverGetVersion",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime_v2",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocFromPoolAsync",
    "cuMemFreeAsync",
    "cuMemPoolCreate",
    "cuMemPoolDestroy",
    "cuMemPoolSetAttribute",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemHostGetDevicePointer_v2",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
    "cuMemAllocManaged",
    "cuMemPrefetchAsync_v2",
    "cuMemGetInfo_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemsetD8Async",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuOccupancyMaxActiveBlocksPerMultiprocessor",
    "cuLaunchKernel",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuGetErrorName",
];

/// Names in [`REQUIRED_SYMBOLS`] that the loaded libcuda lacks.
/// Call only when [`crate::probe::driver_library_present`] is true.
pub fn missing_driver_symbols() -> Vec<&'static str> {
    // SAFETY: the caller checked the library can be opened; `get` only looks
    // the names up, nothing is called.
    let lib = unsafe { sys::culib() };
    REQUIRED_SYMBOLS
        .iter()
        .copied()
        .filter(|name| unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_err())
        .collect()
}

struct ContextInner {
    device: CUdevice,
    ctx: CUcontext,
}

// SAFETY: a CUDA context handle may be used from any thread once made current
// there, which `Context::bind` does before every use.
unsafe impl Send for ContextInner {}
// SAFETY: as above; the driver serializes concurrent use of one context.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: retained in Context::new; released exactly once here.
        let _ = unsafe { result::primary_ctx::release(self.device) };
    }
}

/// The device's primary context, retained for as long as any clone lives.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.inner.device)
            .finish()
    }
}

impl Context {
    /// Retains device `ordinal`'s primary context (after [`crate::probe::probe`]).
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        let missing = missing_driver_symbols();
        if !missing.is_empty() {
            return Err(GpuError::Unsupported(format!(
                "the CUDA driver lacks {}",
                missing.join(", ")
            )));
        }
        result::init().ctx("cuInit", 0)?;
        let ordinal =
            i32::try_from(ordinal).map_err(|_| GpuError::NoDevice { ordinal, count: 0 })?;
        let device = result::device::get(ordinal).ctx("cuDeviceGet", 0)?;
        // SAFETY: `device` came from cuDeviceGet.
        let ctx =
            unsafe { result::primary_ctx::retain(device) }.ctx("cuDevicePrimaryCtxRetain", 0)?;
        let context = Context {
            inner: Arc::new(ContextInner { device, ctx }),
        };
        context.bind()?;
        Ok(context)
    }

    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<(), GpuError> {
        // SAFETY: the context is retained while `self` lives.
        unsafe { result::ctx::set_current(self.inner.ctx) }.ctx("cuCtxSetCurrent", 0)
    }

    /// The device handle.
    pub fn device(&self) -> CUdevice {
        self.inner.device
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(u64, u64), GpuError> {
        self.bind()?;
        let (free, total) = result::mem_get_info().ctx("cuMemGetInfo", 0)?;
        Ok((free as u64, total as u64))
    }
}

/// A non-blocking stream (never synchronizes with the legacy null stream,
/// which matters while the persistent kernel runs).
pub struct Stream {
    ctx: Context,
    raw: CUstream,
}

// SAFETY: stream handles are usable from any thread with the context bound.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a non-blocking stream.
    pub fn new(ctx: &Context) -> Result<Self, GpuError> {
        ctx.bind()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .ctx("cuStreamCreate", 0)?;
        Ok(Stream {
            ctx: ctx.clone(),
            raw,
        })
    }

    /// The raw handle.
    pub fn raw(&self) -> CUstream {
        self.raw
    }

    /// Blocks until every queued operation finished; returns any error they hit.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.ctx.bind()?;
        // SAFETY: the stream lives as long as `self`.
        unsafe { result::stream::synchronize(self.raw) }.ctx("cuStreamSynchronize", 0)
    }

    /// True when every queued operation finished; errors when one failed.
    pub fn is_idle(&self) -> Result<bool, GpuError> {
        self.ctx.bind()?;
        // SAFETY: the stream lives as long as `self`.
        match unsafe { sys::cuStreamQuery(self.raw) }.result() {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(GpuError::driver("cuStreamQuery", e, 0)),
        }
    }

    /// Queues a host → device copy of `src` to `dst`.
    ///
    /// # Safety
    /// `dst` must hold `src.len()` bytes, and `src` must stay alive and
    /// unchanged until the stream has passed this copy (pinned memory makes
    /// the copy asynchronous; pageable memory is copied before return).
    pub unsafe fn copy_to_device(&self, dst: CUdeviceptr, src: &[u8]) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { result::memcpy_htod_async(dst, src, self.raw) }
            .ctx("cuMemcpyHtoDAsync", src.len() as u64)
    }

    /// Queues a device → host copy of `dst.len()` bytes from `src`.
    ///
    /// # Safety
    /// `src` must hold `dst.len()` bytes and `dst` must stay alive and
    /// untouched until the stream has passed this copy.
    pub unsafe fn copy_to_host(&self, dst: &mut [u8], src: CUdeviceptr) -> Result<(), GpuError> {
        let len = dst.len() as u64;
        // SAFETY: forwarded contract.
        unsafe { result::memcpy_dtoh_async(dst, src, self.raw) }.ctx("cuMemcpyDtoHAsync", len)
    }

    /// Queues a device → device copy.
    ///
    /// # Safety
    /// Both ranges must be valid device memory of `len` bytes.
    pub unsafe fn copy_on_device(
        &self,
        dst: CUdeviceptr,
        src: CUdeviceptr,
        len: usize,
    ) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { result::memcpy_dtod_async(dst, src, len, self.raw) }
            .ctx("cuMemcpyDtoDAsync", len as u64)
    }

    /// Makes work queued on this stream after this call wait until
    /// `event` (recorded on another stream of the same context) completed.
    pub fn wait_event(&self, event: &Event) -> Result<(), GpuError> {
        // SAFETY: both handles are alive while `self` and `event` are.
        unsafe {
            result::stream::wait_event(
                self.raw,
                event.raw,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .ctx("cuStreamWaitEvent", 0)
    }

    /// Queues a byte fill.
    ///
    /// # Safety
    /// `dst` must be valid device memory of `len` bytes.
    pub unsafe fn fill(&self, dst: CUdeviceptr, value: u8, len: usize) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { result::memset_d8_async(dst, value, len, self.raw) }
            .ctx("cuMemsetD8Async", len as u64)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: created in `new`, destroyed once.
            let _ = unsafe { result::stream::destroy(self.raw) };
        }
    }
}

/// A CUDA event for timing.
pub struct Event {
    ctx: Context,
    raw: CUevent,
}

// SAFETY: event handles are usable from any thread with the context bound.
unsafe impl Send for Event {}

impl Event {
    /// Creates a timing event.
    pub fn new(ctx: &Context) -> Result<Self, GpuError> {
        ctx.bind()?;
        let raw =
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).ctx("cuEventCreate", 0)?;
        Ok(Event {
            ctx: ctx.clone(),
            raw,
        })
    }

    /// Records the event on `stream`.
    pub fn record(&self, stream: &Stream) -> Result<(), GpuError> {
        // SAFETY: both handles are alive.
        unsafe { result::event::record(self.raw, stream.raw()) }.ctx("cuEventRecord", 0)
    }

    /// Milliseconds from `self` to `end`, waiting for `end` first.
    pub fn elapsed_ms(&self, end: &Event) -> Result<f64, GpuError> {
        // SAFETY: both handles are alive.
        unsafe { result::event::synchronize(end.raw) }.ctx("cuEventSynchronize", 0)?;
        // SAFETY: both handles are alive and recorded.
        let ms =
            unsafe { result::event::elapsed(self.raw, end.raw) }.ctx("cuEventElapsedTime", 0)?;
        Ok(f64::from(ms))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: created in `new`, destroyed once.
            let _ = unsafe { result::event::destroy(self.raw) };
        }
    }
}

/// Where a [`DeviceBuffer`]'s memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// `cuMemAlloc`; freed with `cuMemFree`.
    Plain,
    /// `cuMemAllocFromPoolAsync` on a stream; freed with `cuMemFreeAsync` on it.
    Pool(CUstream),
}

/// Device memory.
pub struct DeviceBuffer {
    ctx: Context,
    ptr: CUdeviceptr,
    len: usize,
    origin: Origin,
}

// SAFETY: a device address is usable from any thread with the context bound.
unsafe impl Send for DeviceBuffer {}
// SAFETY: as above; the buffer itself has no host-side interior state.
unsafe impl Sync for DeviceBuffer {}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("len", &self.len)
            .field("origin", &self.origin)
            .finish()
    }
}

impl DeviceBuffer {
    /// `len` bytes from `cuMemAlloc` (at least 1 byte is asked for).
    pub fn alloc(ctx: &Context, len: usize) -> Result<Self, GpuError> {
        ctx.bind()?;
        // SAFETY: plain allocation; the memory is treated as bytes.
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.ctx("cuMemAlloc", len as u64)?;
        Ok(DeviceBuffer {
            ctx: ctx.clone(),
            ptr,
            len,
            origin: Origin::Plain,
        })
    }

    /// `len` bytes from `pool`, ordered on `stream` (the buffer must be dropped
    /// while `stream` lives; its free is queued on it).
    pub fn alloc_from_pool(
        ctx: &Context,
        pool: &MemPool,
        stream: &Stream,
        len: usize,
    ) -> Result<Self, GpuError> {
        ctx.bind()?;
        // SAFETY: pool and stream are alive.
        let ptr = unsafe { result::mem_pool::alloc_async(pool.raw, len.max(1), stream.raw()) }
            .ctx("cuMemAllocFromPoolAsync", len as u64)?;
        Ok(DeviceBuffer {
            ctx: ctx.clone(),
            ptr,
            len,
            origin: Origin::Pool(stream.raw()),
        })
    }

    /// The device address.
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind().is_err() {
            return;
        }
        // SAFETY: allocated in this type's constructors and freed once, the
        // way it was allocated.
        let _ = unsafe {
            match self.origin {
                Origin::Plain => result::free_sync(self.ptr),
                Origin::Pool(stream) => result::free_async(self.ptr, stream),
            }
        };
    }
}

/// Page-locked host memory, optionally mapped into the device's address space.
pub struct PinnedBuffer {
    ctx: Context,
    ptr: *mut u8,
    len: usize,
    device_ptr: Option<CUdeviceptr>,
}

// SAFETY: the allocation is plain host memory owned by this value.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// `len` bytes of pinned memory; `mapped` also maps it for the device.
    pub fn alloc(ctx: &Context, len: usize, mapped: bool) -> Result<Self, GpuError> {
        ctx.bind()?;
        let flags = if mapped {
            sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE
        } else {
            sys::CU_MEMHOSTALLOC_PORTABLE
        };
        // SAFETY: allocation call; the memory is zeroed below before use.
        let raw =
            unsafe { result::malloc_host(len.max(1), flags) }.ctx("cuMemHostAlloc", len as u64)?;
        let ptr = raw.cast::<u8>();
        // SAFETY: `ptr` points to at least `len.max(1)` writable bytes.
        unsafe { ptr::write_bytes(ptr, 0, len.max(1)) };
        let mut buffer = PinnedBuffer {
            ctx: ctx.clone(),
            ptr,
            len,
            device_ptr: None,
        };
        if mapped {
            let mut device_ptr: CUdeviceptr = 0;
            // SAFETY: `raw` was allocated with DEVICEMAP.
            unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, raw, 0) }
                .result()
                .ctx("cuMemHostGetDevicePointer", 0)?;
            buffer.device_ptr = Some(device_ptr);
        }
        Ok(buffer)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len` bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The host address (for volatile / atomic access to mapped memory).
    pub fn host_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The device address of a mapped buffer.
    pub fn device_ptr(&self) -> Option<CUdeviceptr> {
        self.device_ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: allocated with cuMemHostAlloc, freed once.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

/// A range of ordinary host memory page-locked for the device
/// (`cuMemHostRegister`), so that copies from and to it are asynchronous
/// DMA; unregistered on drop.
pub struct HostRegistration {
    ctx: Context,
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the registration is a driver-side record of an address range; it
// owns no host memory.
unsafe impl Send for HostRegistration {}

impl HostRegistration {
    /// Page-locks `len` bytes at `ptr`.
    ///
    /// # Safety
    /// The range must be valid host memory that stays allocated until the
    /// registration is dropped, and no copy may use it after that.
    pub unsafe fn new(ctx: &Context, ptr: *mut u8, len: usize) -> Result<Self, GpuError> {
        ctx.bind()?;
        // SAFETY: forwarded contract; flags 0 = plain page-locking.
        unsafe { sys::cuMemHostRegister_v2(ptr.cast(), len, 0) }
            .result()
            .ctx("cuMemHostRegister", len as u64)?;
        Ok(HostRegistration {
            ctx: ctx.clone(),
            ptr: ptr.cast(),
            len,
        })
    }

    /// Bytes registered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when zero bytes are registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: registered in `new`, unregistered once.
            let _ = unsafe { sys::cuMemHostUnregister(self.ptr) };
        }
    }
}

/// Unified (managed) memory, accessible from host and device.
pub struct ManagedBuffer {
    ctx: Context,
    ptr: CUdeviceptr,
    len: usize,
}

// SAFETY: managed memory is plain memory owned by this value.
unsafe impl Send for ManagedBuffer {}

impl ManagedBuffer {
    /// Most managed memory this crate will ask for, as a share of the
    /// device's free memory: never more than the card has free.
    pub const MAX_SHARE_OF_FREE_PERCENT: u64 = 50;

    /// `len` bytes of managed memory, refused (as out-of-memory) when `len`
    /// exceeds [`Self::MAX_SHARE_OF_FREE_PERCENT`] of the device's free memory.
    pub fn alloc(ctx: &Context, len: usize) -> Result<Self, GpuError> {
        let (free, _) = ctx.memory_info()?;
        if len as u64 > free / 100 * Self::MAX_SHARE_OF_FREE_PERCENT {
            return Err(GpuError::OutOfMemory {
                call: "cuMemAllocManaged (refused: over half the free memory)",
                bytes: len as u64,
            });
        }
        // SAFETY: allocation call; the bytes are written by the caller before use.
        let ptr = unsafe {
            result::malloc_managed(len.max(1), sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL)
        }
        .ctx("cuMemAllocManaged", len as u64)?;
        Ok(ManagedBuffer {
            ctx: ctx.clone(),
            ptr,
            len,
        })
    }

    /// The address (valid on host and device).
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// The bytes, from the host (faults pages back to the host as touched).
    ///
    /// # Safety
    /// No device work may be using the buffer (synchronize first).
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: managed memory is host-addressable for `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }

    /// Queues a prefetch of the whole buffer to the device (`to_device`) or host.
    pub fn prefetch(&self, stream: &Stream, to_device: bool) -> Result<(), GpuError> {
        let location = if to_device {
            sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: self.ctx.device(),
            }
        } else {
            sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST,
                id: 0,
            }
        };
        // SAFETY: the range is exactly this allocation.
        unsafe { result::mem_prefetch_async(self.ptr, self.len, location, stream.raw()) }
            .ctx("cuMemPrefetchAsync", self.len as u64)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for ManagedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: allocated with cuMemAllocManaged, freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// A stream-ordered memory pool of device memory that keeps what it freed
/// (release threshold: unlimited), so allocations after the first are served
/// without the driver.
pub struct MemPool {
    ctx: Context,
    raw: sys::CUmemoryPool,
}

// SAFETY: pool handles are usable from any thread with the context bound.
unsafe impl Send for MemPool {}
// SAFETY: as above.
unsafe impl Sync for MemPool {}

impl MemPool {
    /// Creates a pool on the context's device.
    pub fn new(ctx: &Context) -> Result<Self, GpuError> {
        ctx.bind()?;
        // SAFETY: an all-zero CUmemPoolProps is its documented default; the
        // fields that matter are set below.
        let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
        props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
        props.location = sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ctx.device(),
        };
        // SAFETY: `props` is a valid, initialized struct.
        let raw = unsafe { result::mem_pool::create(&props) }.ctx("cuMemPoolCreate", 0)?;
        let pool = MemPool {
            ctx: ctx.clone(),
            raw,
        };
        let mut threshold: u64 = u64::MAX;
        // SAFETY: RELEASE_THRESHOLD takes a u64.
        unsafe {
            result::mem_pool::set_attribute(
                raw,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
        }
        .ctx("cuMemPoolSetAttribute", 0)?;
        Ok(pool)
    }
}

impl Drop for MemPool {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: created in `new`, destroyed once, after its buffers
            // (owners drop buffers before the pool).
            let _ = unsafe { result::mem_pool::destroy(self.raw) };
        }
    }
}

/// Which of the module's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelId {
    /// The one-job-per-launch kernel.
    Merge,
    /// The resident kernel.
    Persistent,
    /// The previous one-job-per-launch kernel (bench comparison only).
    Baseline,
    /// Kernel v2, one page at a time per block (bench comparison only).
    V2,
    /// `mmsb_merge` under another register cap: index into
    /// [`KernelNames::variants`] (bench comparison only).
    Variant(usize),
}

/// Names of the module's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelNames<'a> {
    /// Name of [`KernelId::Merge`].
    pub merge: &'a str,
    /// Name of [`KernelId::Persistent`].
    pub persistent: &'a str,
    /// Name of [`KernelId::Baseline`].
    pub baseline: &'a str,
    /// Name of [`KernelId::V2`].
    pub v2: &'a str,
    /// Names of [`KernelId::Variant`] `0..`.
    pub variants: &'a [&'a str],
}

/// A loaded module and its merge kernels.
pub struct Module {
    ctx: Context,
    raw: sys::CUmodule,
    merge: sys::CUfunction,
    persistent: sys::CUfunction,
    baseline: sys::CUfunction,
    v2: sys::CUfunction,
    variants: Vec<sys::CUfunction>,
}

// SAFETY: module and function handles are usable from any thread with the
// context bound.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// Loads a CUBIN image and looks up its kernels.
    pub fn load(ctx: &Context, image: &[u8], names: KernelNames<'_>) -> Result<Self, GpuError> {
        ctx.bind()?;
        // SAFETY: `image` is a complete CUBIN produced by NVRTC for this device.
        let raw = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .ctx("cuModuleLoadData", image.len() as u64)?;
        let mut module = Module {
            ctx: ctx.clone(),
            raw,
            merge: ptr::null_mut(),
            persistent: ptr::null_mut(),
            baseline: ptr::null_mut(),
            v2: ptr::null_mut(),
            variants: Vec::new(),
        };
        module.merge = module.function(names.merge)?;
        module.persistent = module.function(names.persistent)?;
        module.baseline = module.function(names.baseline)?;
        module.v2 = module.function(names.v2)?;
        module.variants = names
            .variants
            .iter()
            .map(|name| module.function(name))
            .collect::<Result<_, _>>()?;
        Ok(module)
    }

    fn handle(&self, kernel: KernelId) -> Result<sys::CUfunction, GpuError> {
        Ok(match kernel {
            KernelId::Merge => self.merge,
            KernelId::Persistent => self.persistent,
            KernelId::Baseline => self.baseline,
            KernelId::V2 => self.v2,
            KernelId::Variant(index) => *self.variants.get(index).ok_or_else(|| {
                GpuError::Unsupported(format!("no kernel variant {index} in the module"))
            })?,
        })
    }

    fn function(&self, name: &str) -> Result<sys::CUfunction, GpuError> {
        let name = CString::new(name).map_err(|_| GpuError::Unsupported("kernel name".into()))?;
        // SAFETY: the module is loaded.
        unsafe { result::module::get_function(self.raw, name) }.ctx("cuModuleGetFunction", 0)
    }

    /// Lets `function` use up to `bytes` of dynamic shared memory.
    pub fn allow_shared(&self, kernel: KernelId, bytes: usize) -> Result<(), GpuError> {
        let function = self.handle(kernel)?;
        self.ctx.bind()?;
        let bytes =
            i32::try_from(bytes).map_err(|_| GpuError::Unsupported("shared memory".into()))?;
        // SAFETY: `function` belongs to this loaded module.
        unsafe {
            sys::cuFuncSetAttribute(
                function,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )
        }
        .result()
        .ctx("cuFuncSetAttribute", bytes as u64)
    }

    /// Resident blocks per multiprocessor for `function` at this block size
    /// and dynamic shared memory.
    pub fn occupancy(
        &self,
        kernel: KernelId,
        threads: u32,
        shared: usize,
    ) -> Result<u32, GpuError> {
        let function = self.handle(kernel)?;
        self.ctx.bind()?;
        // SAFETY: `function` belongs to this loaded module.
        let blocks = unsafe {
            result::occupancy::max_active_block_per_multiprocessor(function, threads as i32, shared)
        }
        .ctx("cuOccupancyMaxActiveBlocksPerMultiprocessor", 0)?;
        Ok(u32::try_from(blocks).unwrap_or(0))
    }

    /// Queues `function` on `stream` with the given parameters.
    ///
    /// # Safety
    /// `params` must point to values matching the kernel's parameter list,
    /// alive until this call returns; every device address they carry must
    /// stay valid until the kernel finished.
    pub unsafe fn launch(
        &self,
        kernel: KernelId,
        grid: u32,
        threads: u32,
        shared: usize,
        stream: &Stream,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        let function = self.handle(kernel)?;
        // SAFETY: forwarded contract.
        unsafe {
            result::launch_kernel(
                function,
                (grid, 1, 1),
                (threads, 1, 1),
                shared as u32,
                stream.raw(),
                params,
            )
        }
        .ctx("cuLaunchKernel", 0)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: loaded in `load`, unloaded once.
            let _ = unsafe { result::module::unload(self.raw) };
        }
    }
}

/// An instantiated CUDA graph captured from a stream.
pub struct Graph {
    ctx: Context,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: graph handles are usable from any thread with the context bound.
unsafe impl Send for Graph {}

impl Graph {
    /// Captures what `enqueue` queues on `stream` into a graph and
    /// instantiates it. Nothing runs during capture.
    pub fn capture<F>(ctx: &Context, stream: &Stream, enqueue: F) -> Result<Self, GpuError>
    where
        F: FnOnce(&Stream) -> Result<(), GpuError>,
    {
        ctx.bind()?;
        // SAFETY: the stream is alive.
        unsafe {
            result::stream::begin_capture(
                stream.raw(),
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .ctx("cuStreamBeginCapture", 0)?;
        let queued = enqueue(stream);
        // SAFETY: capture was begun on this stream; always end it.
        let ended =
            unsafe { result::stream::end_capture(stream.raw()) }.ctx("cuStreamEndCapture", 0);
        queued?;
        let graph = ended?;
        // SAFETY: `graph` was just captured.
        let exec =
            match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
                Ok(exec) => exec,
                Err(error) => {
                    // SAFETY: destroy the graph we own before reporting.
                    let _ = unsafe { result::graph::destroy(graph) };
                    return Err(GpuError::driver("cuGraphInstantiate", error, 0));
                }
            };
        Ok(Graph {
            ctx: ctx.clone(),
            graph,
            exec,
        })
    }

    /// Queues one replay on `stream`.
    pub fn launch(&self, stream: &Stream) -> Result<(), GpuError> {
        // SAFETY: both handles are alive.
        unsafe { result::graph::launch(self.exec, stream.raw()) }.ctx("cuGraphLaunch", 0)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: created in `capture`, destroyed once.
            let _ = unsafe { result::graph::exec_destroy(self.exec) };
            // SAFETY: as above.
            let _ = unsafe { result::graph::destroy(self.graph) };
        }
    }
}
