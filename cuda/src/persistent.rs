//! The resident merge kernel and its host-fed queue.
//!
//! The queue lives in mapped pinned host memory (`Ctrl` in the CUDA source):
//! the host writes a [`Job`] into slot `seq % QUEUE_DEPTH`, then publishes
//! `submit_seq = seq`; block 0 of the kernel polls `submit_seq`, copies the
//! job to device memory and releases the other blocks; the last block to
//! finish writes `done_seq = seq` back to host memory, which the host polls.
//! Jobs run strictly in order and one at a time on the whole grid.
//!
//! Rules that keep it from deadlocking: every block must be resident at once
//! (the grid is sized from the occupancy calculator), nothing else may need
//! the SMs while it runs, and nothing may synchronize the whole device
//! (`cuMemFree` can): buffers used with it are allocated before it starts.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::driver::{Context, DeviceBuffer, KernelId, Module, PinnedBuffer, Stream};
use crate::error::GpuError;
use crate::kernel::{Job, BLOCK_THREADS, QUEUE_DEPTH, QUIT_PAGES};

/// Bytes of the host control block: two counters padded to 64, then the jobs.
const CTRL_JOBS_OFFSET: usize = 64;
/// Bytes of the device state block: four counters and one job.
const STATE_BYTES: usize = 16 + std::mem::size_of::<Job>();
/// How long [`Persistent::stop`] waits for the kernel to exit.
const STOP_TIMEOUT_MS: u64 = 2000;

/// Memory the running kernel reads: freed only once it has exited.
struct Shared {
    ctrl: PinnedBuffer,
    _state: DeviceBuffer,
}

/// A running resident kernel.
pub struct Persistent {
    shared: ManuallyDrop<Shared>,
    stream: Stream,
    grid: u32,
    submitted: u32,
    timeout: Duration,
    running: bool,
}

impl Persistent {
    /// Starts the kernel (its shared memory is static: any page length up to
    /// 64 KiB works). `timeout_ms` bounds every wait for a job.
    pub fn start(
        ctx: &Context,
        module: &Module,
        multiprocessors: u32,
        timeout_ms: u64,
    ) -> Result<Self, GpuError> {
        let per_sm = module.occupancy(KernelId::Persistent, BLOCK_THREADS, 0)?;
        if per_sm == 0 {
            return Err(GpuError::Unsupported(
                "persistent kernel cannot be resident (occupancy 0)".into(),
            ));
        }
        let grid = per_sm * multiprocessors;
        let ctrl = PinnedBuffer::alloc(
            ctx,
            CTRL_JOBS_OFFSET + QUEUE_DEPTH * std::mem::size_of::<Job>(),
            true,
        )?;
        let ctrl_device = ctrl
            .device_ptr()
            .ok_or_else(|| GpuError::Unsupported("host memory could not be mapped".into()))?;
        let state = DeviceBuffer::alloc(ctx, STATE_BYTES)?;
        let stream = Stream::new(ctx)?;
        // SAFETY: `state` holds STATE_BYTES bytes.
        unsafe { stream.fill(state.ptr(), 0, STATE_BYTES)? };
        stream.synchronize()?;
        let mut ctrl_arg = ctrl_device;
        let mut state_arg = state.ptr();
        let mut params: [*mut c_void; 2] = [
            (&mut ctrl_arg as *mut u64).cast(),
            (&mut state_arg as *mut u64).cast(),
        ];
        // SAFETY: parameters match `mmsb_merge_persistent(Ctrl*, DevState*)`;
        // ctrl and state outlive the kernel (stop() runs before drop).
        unsafe {
            module.launch(
                KernelId::Persistent,
                grid,
                BLOCK_THREADS,
                0,
                &stream,
                &mut params,
            )?
        };
        Ok(Persistent {
            shared: ManuallyDrop::new(Shared {
                ctrl,
                _state: state,
            }),
            stream,
            grid,
            submitted: 0,
            timeout: Duration::from_millis(timeout_ms),
            running: true,
        })
    }

    /// Blocks in the grid.
    pub fn grid(&self) -> u32 {
        self.grid
    }

    fn counter(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the control block is page-aligned pinned memory at least
        // CTRL_JOBS_OFFSET bytes long; offsets 0 and 4 hold u32 counters
        // shared with the device, accessed only atomically / volatilely.
        unsafe { &*(self.shared.ctrl.host_ptr().add(offset) as *const AtomicU32) }
    }

    fn done(&self) -> u32 {
        self.counter(4).load(Ordering::Acquire)
    }

    /// Queues `job` and returns its sequence number; waits (bounded) while
    /// the queue is full.
    pub fn submit(&mut self, job: Job) -> Result<u32, GpuError> {
        if !self.running {
            return Err(GpuError::Disabled("persistent kernel is stopped".into()));
        }
        let seq = self.submitted.wrapping_add(1);
        if seq as usize > QUEUE_DEPTH {
            self.wait(seq - QUEUE_DEPTH as u32)?;
        }
        let slot = seq as usize % QUEUE_DEPTH;
        // SAFETY: slot < QUEUE_DEPTH, so the job lies inside the control
        // block; the device reads it only after seeing submit_seq >= seq.
        unsafe {
            let at = self
                .shared
                .ctrl
                .host_ptr()
                .add(CTRL_JOBS_OFFSET + slot * std::mem::size_of::<Job>());
            ptr::write_volatile(at.cast::<Job>(), job);
        }
        fence(Ordering::SeqCst);
        self.counter(0).store(seq, Ordering::Release);
        self.submitted = seq;
        Ok(seq)
    }

    /// Waits until job `seq` is done, or errors after the timeout.
    pub fn wait(&self, seq: u32) -> Result<(), GpuError> {
        let start = Instant::now();
        let mut spins = 0u32;
        while self.done() < seq {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() > self.timeout {
                return Err(GpuError::Timeout {
                    seq,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
        }
        Ok(())
    }

    /// Runs one job to completion.
    pub fn run(&mut self, job: Job) -> Result<(), GpuError> {
        let seq = self.submit(job)?;
        self.wait(seq)
    }

    /// Tells the kernel to exit and waits (bounded) for it.
    pub fn stop(&mut self) -> Result<(), GpuError> {
        if !self.running {
            return Ok(());
        }
        let quit = Job {
            pages: QUIT_PAGES,
            ..Job::default()
        };
        self.submit(quit)?;
        self.running = false;
        let start = Instant::now();
        loop {
            if self.stream.is_idle()? {
                return Ok(());
            }
            if start.elapsed() > Duration::from_millis(STOP_TIMEOUT_MS) {
                return Err(GpuError::Timeout {
                    seq: self.submitted,
                    waited_ms: STOP_TIMEOUT_MS,
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl Drop for Persistent {
    fn drop(&mut self) {
        match self.stop() {
            // SAFETY: the kernel has exited; the buffers are dropped once.
            Ok(()) => unsafe { ManuallyDrop::drop(&mut self.shared) },
            // The kernel may still read the buffers: leak them rather than
            // free memory in use. Process exit reclaims them.
            Err(error) => {
                tracing::warn!(%error, "persistent merge kernel did not stop; leaking its buffers")
            }
        }
    }
}
