//! GpuMerge end to end: results equal the CPU merge on every path, and each
//! failure (no driver, no device, failed launch, out of memory) falls back
//! to the CPU. The simulated-device and no-driver cases run anywhere; the
//! real-GPU cases skip with a printed reason when there is no device.

use std::time::Duration;

use mmsb_cuda::bench::{DeltaShape, Workload};
use mmsb_cuda::{
    probe, AllocMode, FaultInjection, GpuConfig, GpuError, GpuMerge, GpuStatus, HostStaging,
    LaunchMode, SimulatedDevice, Tiles,
};
use mmsb_engine::merge::{CpuMerge, MergeBackend};

/// Bound on detection → CPU start (the requirement is 1 ms).
const FALLBACK_BOUND: Duration = Duration::from_millis(1);

fn workload(pages: usize, seed: u64) -> Workload {
    Workload::generate(pages, 512, DeltaShape::default(), seed)
}

fn cpu_result(work: &Workload) -> Vec<u8> {
    let mut batch = work.batch().unwrap();
    CpuMerge::best(1).unwrap().merge_batch(&mut batch).unwrap();
    batch.into_images()
}

fn merged_by(merge: &GpuMerge, work: &Workload) -> Vec<u8> {
    let mut batch = work.batch().unwrap();
    let stats = merge.merge_batch(&mut batch).unwrap();
    assert_eq!(stats.pages as usize, work.pages());
    batch.into_images()
}

fn simulated(fail_after_chunks: usize, fault: Option<FaultInjection>) -> GpuMerge {
    let mut device = SimulatedDevice::new(4);
    device.fail_after_chunks = fail_after_chunks;
    let merge = GpuMerge::with_device(Box::new(device), CpuMerge::best(2).unwrap());
    merge.set_fault(fault);
    merge
}

#[test]
fn no_driver_runs_on_the_cpu() {
    let config = GpuConfig {
        fault: Some(FaultInjection::NoDriver),
        ..GpuConfig::default()
    };
    let merge = GpuMerge::new(&config).unwrap();
    assert!(
        matches!(merge.status(), GpuStatus::CpuOnly(reason) if reason.contains("no CUDA driver"))
    );
    let work = workload(20, 1);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
    assert_eq!(merge.gpu_batches(), 0);
}

#[test]
fn no_device_runs_on_the_cpu() {
    let config = GpuConfig {
        fault: Some(FaultInjection::NoDevice),
        ..GpuConfig::default()
    };
    let merge = GpuMerge::new(&config).unwrap();
    assert!(
        matches!(merge.status(), GpuStatus::CpuOnly(reason) if reason.contains("no CUDA device"))
    );
    let work = workload(5, 2);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
}

#[test]
fn bad_stream_counts_and_chunk_limits_run_on_the_cpu() {
    for config in [
        GpuConfig {
            streams: 0,
            ..GpuConfig::default()
        },
        GpuConfig {
            streams: mmsb_cuda::config::MAX_STREAMS + 1,
            ..GpuConfig::default()
        },
        GpuConfig {
            max_chunk_image_bytes: 0,
            ..GpuConfig::default()
        },
    ] {
        let merge = GpuMerge::new(&config).unwrap();
        assert!(
            matches!(merge.status(), GpuStatus::CpuOnly(ref reason) if reason.contains("streams") || reason.contains("chunk limits")),
            "{:?}",
            merge.status()
        );
        let work = workload(6, 9);
        assert_eq!(merged_by(&merge, &work), cpu_result(&work));
    }
}

#[test]
fn default_config_on_this_machine_never_fails() {
    let merge = GpuMerge::new(&GpuConfig::default()).unwrap();
    if !mmsb_cuda::driver_library_present() {
        assert!(matches!(merge.status(), GpuStatus::CpuOnly(_)));
    }
    let work = workload(33, 3);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
}

#[test]
fn simulated_device_matches_the_cpu() {
    let merge = simulated(0, None);
    for seed in 0..4 {
        let work = workload(37, 100 + seed);
        assert_eq!(merged_by(&merge, &work), cpu_result(&work), "seed {seed}");
    }
    assert_eq!(merge.gpu_batches(), 4);
    assert_eq!(merge.fallback_count(), 0);
}

#[test]
fn simulated_large_path_matches_the_cpu() {
    let mut device = SimulatedDevice::new(5);
    device.tiles = Tiles {
        runs: 3,
        payload_bytes: 64,
    };
    let merge = GpuMerge::with_device(Box::new(device), CpuMerge::best(1).unwrap());
    let work = workload(23, 44);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
    assert_eq!((merge.gpu_batches(), merge.fallback_count()), (1, 0));
}

#[test]
fn launch_failure_mid_batch_falls_back_and_retires_the_device() {
    // Two chunks of 4 pages are merged and written back before the failure.
    let merge = simulated(2, Some(FaultInjection::FailLaunch));
    let work = workload(30, 4);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
    let record = merge.last_fallback().unwrap();
    assert!(matches!(record.error, GpuError::Driver { .. }));
    assert!(record.device_retired);
    assert!(record.detect_to_cpu_start < FALLBACK_BOUND, "{record:?}");
    assert_eq!(merge.fallback_count(), 1);
    assert!(matches!(merge.status(), GpuStatus::CpuOnly(reason) if reason.contains("retired")));
    // Later batches go straight to the CPU.
    let next = workload(9, 5);
    assert_eq!(merged_by(&merge, &next), cpu_result(&next));
    assert_eq!((merge.fallback_count(), merge.gpu_batches()), (1, 0));
}

#[test]
fn out_of_memory_falls_back_once_and_keeps_the_device() {
    let merge = simulated(0, Some(FaultInjection::OutOfMemory));
    let work = workload(12, 6);
    assert_eq!(merged_by(&merge, &work), cpu_result(&work));
    let record = merge.last_fallback().unwrap();
    assert!(matches!(record.error, GpuError::OutOfMemory { .. }));
    assert!(!record.device_retired);
    assert!(record.detect_to_cpu_start < FALLBACK_BOUND, "{record:?}");
    let next = workload(12, 7);
    assert_eq!(merged_by(&merge, &next), cpu_result(&next));
    assert_eq!((merge.fallback_count(), merge.gpu_batches()), (1, 1));
    assert!(matches!(merge.status(), GpuStatus::Active(_)));
}

#[test]
fn a_bad_batch_is_an_error_not_a_fallback() {
    let merge = simulated(0, None);
    let mut batch = mmsb_engine::merge::MergeBatch::new(64).unwrap();
    batch.push_page(mmsb_wal::PageId(1), &[0; 64], []).unwrap();
    assert!(merge.merge_batch(&mut batch).is_ok());
    assert_eq!(merge.fallback_count(), 0);
}

/// The real GPU, when there is one: every launch and allocation mode must
/// match the CPU, and forced failures must fall back.
#[test]
fn real_gpu_modes_match_the_cpu_and_fall_back() {
    if let Err(reason) = probe(0) {
        eprintln!("skipping real-GPU test: {reason}");
        return;
    }
    let work = workload(3000, 8);
    let expected = cpu_result(&work);
    for launch in [LaunchMode::PerBatch, LaunchMode::Persistent] {
        for alloc in [AllocMode::Plain, AllocMode::StreamPool, AllocMode::Reuse] {
            for staging in [
                HostStaging::Pageable,
                HostStaging::Pinned,
                HostStaging::Registered,
            ] {
                for streams in [1, 3] {
                    let config = GpuConfig {
                        launch,
                        alloc,
                        staging,
                        streams,
                        max_chunk_pages: 700,
                        ..GpuConfig::default()
                    };
                    let merge = GpuMerge::new(&config).unwrap();
                    assert!(
                        matches!(merge.status(), GpuStatus::Active(_)),
                        "{:?}",
                        merge.status()
                    );
                    let what = format!("{launch:?} {alloc:?} {staging:?} x{streams}");
                    for _ in 0..2 {
                        assert_eq!(merged_by(&merge, &work), expected, "{what}");
                    }
                    assert_eq!(merge.fallback_count(), 0, "{what}");
                }
            }
        }
    }
    for fault in [FaultInjection::FailLaunch, FaultInjection::OutOfMemory] {
        let merge = GpuMerge::new(&GpuConfig::default()).unwrap();
        merge.set_fault(Some(fault));
        assert_eq!(merged_by(&merge, &work), expected, "{fault:?}");
        let record = merge.last_fallback().unwrap();
        assert!(record.detect_to_cpu_start < FALLBACK_BOUND, "{record:?}");
    }
}
