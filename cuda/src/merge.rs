//! [`GpuMerge`]: the [`MergeBackend`] that folds batches on a GPU and falls
//! back to [`CpuMerge`] transparently.
//!
//! Fallback policy:
//! - no libcuda, no device, no NVRTC, a driver lacking an entry point, a
//!   failed compile: the merger starts CPU-only (logged once);
//! - a device failure during a batch: the batch is merged on the CPU at once
//!   (logged); the CPU merge starts before any device teardown, so the
//!   detection-to-CPU delay is a log line and a lock release, far under 1 ms;
//! - out-of-memory and layout limits are transient (the next batch tries the
//!   GPU again); any other device error retires the device for good, since a
//!   failed launch can leave the CUDA context unusable.
//!
//! Correctness of the fallback after a partial device merge rests on the
//! idempotence of folding (see [`crate::device`]).
//!
//! Sessions ([`MergeBackend::open_session`]) keep pages in the device's page
//! mirror across batches. A session cannot fall back batch by batch (the
//! pages live on the device), so a failed fold or finish is an error; the
//! engine then replays the whole TLog on the CPU.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmsb_engine::merge::{CpuMerge, MergeBackend, MergeBatch, MergeSession, MergeStats, PageSink};
use mmsb_engine::Error;
use mmsb_wal::PageId;
use parking_lot::{Mutex, MutexGuard};

use crate::config::{FaultInjection, GpuConfig};
use crate::device::{CudaMerger, DeviceMerger};
use crate::error::GpuError;

/// One batch that fell back to the CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackRecord {
    /// Why the device failed.
    pub error: GpuError,
    /// From detecting the failure to starting the CPU merge.
    pub detect_to_cpu_start: Duration,
    /// Whether the device was retired (later batches go to the CPU directly).
    pub device_retired: bool,
}

/// Where batches go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuStatus {
    /// Batches run on the named device merger.
    Active(String),
    /// Batches run on the CPU; the reason the GPU is not used.
    CpuOnly(String),
}

/// Merges batches on a GPU, with [`CpuMerge`] as a transparent fallback.
pub struct GpuMerge {
    device: Mutex<Option<Box<dyn DeviceMerger>>>,
    cpu_reason: Mutex<Option<String>>,
    cpu: CpuMerge,
    name: String,
    gpu_batches: AtomicU64,
    fallbacks: AtomicU64,
    last_fallback: Mutex<Option<FallbackRecord>>,
    session_fold_nanos: AtomicU64,
    session_finish_nanos: AtomicU64,
}

impl std::fmt::Debug for GpuMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMerge")
            .field("status", &self.status())
            .field("gpu_batches", &self.gpu_batches())
            .field("fallbacks", &self.fallback_count())
            .finish()
    }
}

impl GpuMerge {
    /// A merger on the GPU `config` names, or CPU-only (with a logged reason)
    /// when there is none. Errors only when the CPU merge cannot be made
    /// (`config.cpu_threads` out of range, threads refused).
    pub fn new(config: &GpuConfig) -> Result<Self, Error> {
        let cpu = CpuMerge::best(config.cpu_threads)?;
        let started = catch_unwind(|| CudaMerger::new(config))
            .unwrap_or_else(|_| Err(GpuError::Disabled("panic while opening the GPU".into())));
        Ok(match started {
            Ok(device) => Self::with_device(Box::new(device), cpu),
            Err(error) => {
                tracing::warn!(%error, "GPU merge unavailable; merging on the CPU");
                Self::cpu_only(cpu, error.to_string())
            }
        })
    }

    /// A merger on `device` (a real or simulated one) with `cpu` as fallback.
    pub fn with_device(device: Box<dyn DeviceMerger>, cpu: CpuMerge) -> Self {
        let name = device.name().to_string();
        GpuMerge {
            device: Mutex::new(Some(device)),
            cpu_reason: Mutex::new(None),
            cpu,
            name,
            gpu_batches: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_fallback: Mutex::new(None),
            session_fold_nanos: AtomicU64::new(0),
            session_finish_nanos: AtomicU64::new(0),
        }
    }

    fn cpu_only(cpu: CpuMerge, reason: String) -> Self {
        let name = format!("{}(gpu-unavailable)", cpu.name());
        GpuMerge {
            device: Mutex::new(None),
            cpu_reason: Mutex::new(Some(reason)),
            cpu,
            name,
            gpu_batches: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_fallback: Mutex::new(None),
            session_fold_nanos: AtomicU64::new(0),
            session_finish_nanos: AtomicU64::new(0),
        }
    }

    /// Whether batches go to a device, and if not, why.
    pub fn status(&self) -> GpuStatus {
        match self.device.lock().as_ref() {
            Some(device) => GpuStatus::Active(device.name().to_string()),
            None => GpuStatus::CpuOnly(
                self.cpu_reason
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "no device".into()),
            ),
        }
    }

    /// Batches the device merged.
    pub fn gpu_batches(&self) -> u64 {
        self.gpu_batches.load(Ordering::Relaxed)
    }

    /// Batches that fell back to the CPU after a device failure.
    pub fn fallback_count(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Time spent in merge sessions so far: in folds (validation, host
    /// layout, uploads, kernels) and in finishing (downloads, the sink).
    pub fn session_time(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.session_fold_nanos.load(Ordering::Relaxed)),
            Duration::from_nanos(self.session_finish_nanos.load(Ordering::Relaxed)),
        )
    }

    /// The latest fallback, if any.
    pub fn last_fallback(&self) -> Option<FallbackRecord> {
        self.last_fallback.lock().clone()
    }

    /// Arms a forced failure on the device for the next batches (tests).
    pub fn set_fault(&self, fault: Option<FaultInjection>) {
        if let Some(device) = self.device.lock().as_mut() {
            device.set_fault(fault);
        }
    }

    /// The CPU merger used for fallback.
    pub fn cpu(&self) -> &CpuMerge {
        &self.cpu
    }

    /// Runs the device; `Ok(false)` when there is no device.
    fn try_device(&self, batch: &mut MergeBatch<'_>) -> Result<bool, Error> {
        let mut guard = self.device.lock();
        let Some(device) = guard.as_mut() else {
            return Ok(false);
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| device.merge(batch)))
            .unwrap_or_else(|_| Err(GpuError::Disabled("panic in the GPU merge".into())));
        let error = match outcome {
            Ok(_) => {
                self.gpu_batches.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
            Err(error) => error,
        };
        let detected = Instant::now();
        let retire = !error.is_transient();
        // Take a retired device out now but drop it only after the CPU merge:
        // tearing a context down can take milliseconds.
        let retired = if retire { guard.take() } else { None };
        if retire {
            *self.cpu_reason.lock() = Some(format!("retired after: {error}"));
        }
        drop(guard);
        tracing::warn!(%error, retired = retire, "GPU merge failed; merging this batch on the CPU");
        let cpu_start = Instant::now();
        let merged = self.cpu.merge_batch(batch);
        let record = FallbackRecord {
            error,
            detect_to_cpu_start: cpu_start.duration_since(detected),
            device_retired: retire,
        };
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        *self.last_fallback.lock() = Some(record);
        drop(retired);
        merged.map(|_| true)
    }
}

impl MergeBackend for GpuMerge {
    fn name(&self) -> &str {
        &self.name
    }

    /// A session over a device page mirror, holding the device for its
    /// whole life (other batches wait). `None` when there is no device or
    /// the mirror cannot start (then the caller merges batch by batch).
    fn open_session(&self, page_len: usize) -> Result<Option<Box<dyn MergeSession + '_>>, Error> {
        let mut guard = self.device.lock();
        let Some(device) = guard.as_mut() else {
            return Ok(None);
        };
        let opened = catch_unwind(AssertUnwindSafe(|| device.mirror_open(page_len)))
            .unwrap_or_else(|_| Err(GpuError::Disabled("panic while opening a mirror".into())));
        match opened {
            Ok(()) => Ok(Some(Box::new(GpuSession {
                owner: self,
                device: guard,
            }))),
            Err(error) => {
                tracing::warn!(%error, "GPU page mirror unavailable; merging batch by batch");
                Ok(None)
            }
        }
    }

    fn merge_batch(&self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        // A bad batch is the caller's error, on any backend: no fallback.
        let stats = batch.validate()?;
        if batch.is_empty() {
            return Ok(stats);
        }
        if !self.try_device(batch)? {
            self.cpu.merge_batch(batch)?;
        }
        Ok(stats)
    }
}

/// A [`MergeSession`] over the device's page mirror ([`GpuMerge::open_session`]).
///
/// On a device failure the session reports an error (the engine then replays
/// on the CPU) and, unless the failure is transient, retires the device as a
/// failed batch does.
struct GpuSession<'a> {
    owner: &'a GpuMerge,
    device: MutexGuard<'a, Option<Box<dyn DeviceMerger>>>,
}

impl GpuSession<'_> {
    /// Records a device failure (retiring the device unless transient) and
    /// turns it into the engine's error.
    fn failed(&mut self, error: GpuError) -> Error {
        let retire = !error.is_transient();
        if retire {
            if let Some(mut device) = self.device.take() {
                device.mirror_close();
            }
            *self.owner.cpu_reason.lock() = Some(format!("retired after: {error}"));
        } else if let Some(device) = self.device.as_mut() {
            device.mirror_close();
        }
        tracing::warn!(%error, retired = retire, "GPU merge session failed");
        self.owner.fallbacks.fetch_add(1, Ordering::Relaxed);
        *self.owner.last_fallback.lock() = Some(FallbackRecord {
            error: error.clone(),
            detect_to_cpu_start: Duration::ZERO,
            device_retired: retire,
        });
        session_error(error)
    }
}

fn add_nanos(counter: &AtomicU64, since: Instant) {
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::Relaxed);
}

fn session_error(error: GpuError) -> Error {
    Error::io("GPU merge session", std::io::Error::other(error))
}

impl MergeSession for GpuSession<'_> {
    fn fold(&mut self, batch: &mut MergeBatch<'_>) -> Result<MergeStats, Error> {
        let stats = batch.validate()?;
        if batch.is_empty() {
            return Ok(stats);
        }
        let Some(device) = self.device.as_mut() else {
            return Err(session_error(GpuError::Disabled(
                "the device was retired".into(),
            )));
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| device.mirror_fold(batch)))
            .unwrap_or_else(|_| Err(GpuError::Disabled("panic in the GPU merge".into())));
        add_nanos(&self.owner.session_fold_nanos, started);
        match outcome {
            Ok(_) => {
                self.owner.gpu_batches.fetch_add(1, Ordering::Relaxed);
                Ok(stats)
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    fn finish(mut self: Box<Self>, sink: &mut PageSink<'_>) -> Result<(), Error> {
        let Some(device) = self.device.as_mut() else {
            return Err(session_error(GpuError::Disabled(
                "the device was retired".into(),
            )));
        };
        // The sink's own error is kept aside: it is the caller's, not the device's.
        let mut sink_error = None;
        let mut forward = |page_id: PageId, image: &[u8]| match sink(page_id, image) {
            Ok(()) => Ok(()),
            Err(error) => {
                sink_error = Some(error);
                Err(GpuError::Unsupported("the session's sink failed".into()))
            }
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| device.mirror_finish(&mut forward)))
            .unwrap_or_else(|_| Err(GpuError::Disabled("panic in the GPU merge".into())));
        add_nanos(&self.owner.session_finish_nanos, started);
        if let Some(error) = sink_error {
            return Err(error);
        }
        outcome.map_err(|error| self.failed(error))
    }
}

impl Drop for GpuSession<'_> {
    fn drop(&mut self) {
        if let Some(device) = self.device.as_mut() {
            device.mirror_close();
        }
    }
}
