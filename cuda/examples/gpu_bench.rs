//! GPU merge bench: correctness against the CPU merge, then throughput,
//! the CPU/GPU crossover, recovery through the GPU backend, launch
//! strategies, allocation strategies and managed-memory prefetch.
//!
//! Usage: `gpu_bench [SECTION ...] [--quick] [--print-kernel] [--ptxas]`
//! where SECTION is `correct`, `throughput`, `threshold`, `recovery`,
//! `launch`, `alloc`, `prefetch` (default: all), or `nccl` (only when named;
//! needs the cargo feature `nccl`). Lines starting with
//! `TABLE|` form the summary table (scripts/gpu-run.sh collects them). Exits
//! 0 with a clear message when there is no GPU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use mmsb_cuda::bench::{gb_per_s, median, DeltaShape, SplitMix64, Workload};
use mmsb_cuda::driver::{
    DeviceBuffer, Event, Graph, KernelId, ManagedBuffer, PinnedBuffer, Stream,
};
use mmsb_cuda::kernel::Job;
use mmsb_cuda::layout::{fill_chunk, measure_chunk, ChunkLayout};
use mmsb_cuda::persistent::Persistent;
use mmsb_cuda::{
    driver_library_present, nvrtc_library_present, probe, AllocMode, CudaMerger, GpuConfig,
    GpuError, GpuMerge, GpuStatus, HostStaging, LaunchMode,
};
use mmsb_engine::merge::{ChainEntry, CpuMerge, MergeBackend, MergeBatch};
use mmsb_engine::{Database, Durability, Options, PageId, PageRead, PageWrite};
use mmsb_wal::codec::{CodecConfig, CodecMode};

/// Page size of every workload.
const PAGE_LEN: usize = 4096;
/// Pages of the large throughput batches.
const LARGE_PAGES: [usize; 2] = [64 * 1024, 256 * 1024];
/// Timed repetitions of long runs (after one warm-up).
const REPS_LONG: usize = 7;
/// Timed repetitions of short runs (after warm-ups).
const REPS_SHORT: usize = 200;

/// Backend modes the correctness section checks: (launch, allocation,
/// image staging, streams).
const CHECKED_MODES: [(LaunchMode, AllocMode, HostStaging, usize); 7] = [
    (
        LaunchMode::PerBatch,
        AllocMode::Reuse,
        HostStaging::Pinned,
        3,
    ),
    (
        LaunchMode::PerBatch,
        AllocMode::Reuse,
        HostStaging::Registered,
        3,
    ),
    (
        LaunchMode::PerBatch,
        AllocMode::Reuse,
        HostStaging::Pageable,
        1,
    ),
    (
        LaunchMode::PerBatch,
        AllocMode::Plain,
        HostStaging::Pinned,
        2,
    ),
    (
        LaunchMode::PerBatch,
        AllocMode::StreamPool,
        HostStaging::Pinned,
        3,
    ),
    (
        LaunchMode::PerBatch,
        AllocMode::StreamPool,
        HostStaging::Registered,
        4,
    ),
    (
        LaunchMode::Persistent,
        AllocMode::Reuse,
        HostStaging::Pinned,
        1,
    ),
];

/// One-shot kernels the bench checks and times on resident pages: (label,
/// kernel), the baseline (v1) aside since its launch shape differs.
const KERNELS: [(&str, KernelId); 4] = [
    ("kernel v3 (mmsb_merge, 5 blocks/SM cap)", KernelId::Merge),
    ("kernel v3 variant b4 (no reg cap)", KernelId::Variant(0)),
    ("kernel v3 variant b6 (40 regs)", KernelId::Variant(1)),
    ("kernel v2 (one page per block)", KernelId::V2),
];

/// Round-trip configurations the throughput section times: (label,
/// staging, streams). The first is the previous behaviour.
const TRIP_MODES: [(&str, HostStaging, usize); 4] = [
    ("pageable, 1 stream", HostStaging::Pageable, 1),
    ("pinned staging, 1 stream", HostStaging::Pinned, 1),
    ("pinned staging, 3 streams", HostStaging::Pinned, 3),
    ("registered batch, 3 streams", HostStaging::Registered, 3),
];

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn table(line: String) {
    println!("TABLE|{line}");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--print-kernel") {
        print!("{}", mmsb_cuda::kernel::source());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--ptxas") {
        return match mmsb_cuda::compile::ptxas_report(&mmsb_cuda::kernel::source(), "sm_90") {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("ptxas report unavailable: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(at) = args.iter().position(|a| a == "--recovery-cpu") {
        // CPU-only profile of the replay paths (no GPU needed).
        let pages = args
            .get(at + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(16 * 1024);
        return match recovery_cpu_profile(pages) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                println!("recovery-cpu failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(at) = args.iter().position(|a| a == "--layout-profile") {
        let pages = args
            .get(at + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(64 * 1024);
        return match layout_profile(pages) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                println!("layout-profile failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if !driver_library_present() {
        println!("no CUDA driver found; skipping GPU runs");
        return ExitCode::SUCCESS;
    }
    if !nvrtc_library_present() {
        println!("no NVRTC library found (set LD_LIBRARY_PATH to CUDA's lib64); skipping GPU runs");
        return ExitCode::SUCCESS;
    }
    let info = match probe(0) {
        Ok(info) => info,
        Err(error) => {
            println!("no usable CUDA device ({error}); skipping GPU runs");
            return ExitCode::SUCCESS;
        }
    };
    println!("device: {info:?}");
    let quick = args.iter().any(|a| a == "--quick");
    let sections: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let all = sections.is_empty();
    let want = |name: &str| all || sections.contains(&name);
    if want("correct") {
        print_ptxas(&info.arch());
    }
    let mut failed = false;
    let mut run = |name: &str, section: &dyn Fn() -> BenchResult<()>| {
        if want(name) {
            println!("== {name}");
            let start = Instant::now();
            if let Err(error) = section() {
                println!("SECTION {name} FAILED: {error}");
                table(format!("{name}: FAILED: {error}"));
                failed = true;
            }
            println!("== {name} took {:.1} s", start.elapsed().as_secs_f64());
        }
    };
    run("correct", &|| correctness(quick));
    run("throughput", &|| throughput(quick));
    run("threshold", &|| threshold(quick));
    run("recovery", &|| recovery(quick));
    run("launch", &launch_strategies);
    run("alloc", &|| alloc_strategies(quick));
    run("prefetch", &|| {
        prefetch(quick, info.concurrent_managed_access)
    });
    if sections.contains(&"nccl") {
        run("nccl", &|| nccl_scaling(quick));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The ptxas report of the kernels for `arch`: registers, spills, shared memory.
fn print_ptxas(arch: &str) {
    match mmsb_cuda::compile::ptxas_report(&mmsb_cuda::kernel::source(), arch) {
        Ok(report) => report
            .lines()
            .filter(|l| l.contains("Compiling entry") || l.contains("spill") || l.contains("Used"))
            .for_each(|l| println!("ptxas: {l}")),
        Err(error) => println!("ptxas report unavailable: {error}"),
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_reference(work: &Workload) -> BenchResult<Vec<u8>> {
    let mut batch = work.batch()?;
    CpuMerge::best(threads())?.merge_batch(&mut batch)?;
    Ok(batch.into_images())
}

/// Device buffers holding one workload as a single chunk, plus its job.
struct Resident {
    images: DeviceBuffer,
    meta: DeviceBuffer,
    staging: PinnedBuffer,
    layout: ChunkLayout,
    job: Job,
}

fn make_resident(gpu: &CudaMerger, work: &Workload, stream: &Stream) -> BenchResult<Resident> {
    let batch = work.batch()?;
    let measured = measure_chunk(&batch, 0..batch.len())?;
    let mut staging = PinnedBuffer::alloc(gpu.context(), measured.total_len, false)?;
    let layout = fill_chunk(&batch, 0..batch.len(), staging.as_mut_slice())?;
    let images = DeviceBuffer::alloc(gpu.context(), work.base.len())?;
    let meta = DeviceBuffer::alloc(gpu.context(), layout.total_len)?;
    // SAFETY: buffers hold these many bytes; we synchronize before returning.
    unsafe {
        stream.copy_to_device(images.ptr(), &work.base)?;
        stream.copy_to_device(meta.ptr(), staging.as_slice())?;
    }
    stream.synchronize()?;
    let job = Job {
        images: images.ptr(),
        meta: meta.ptr(),
        pages: layout.pages as u32,
        page_len: work.page_len as u32,
        runs_offset: layout.runs_offset as u32,
        payload_offset: layout.payload_offset as u32,
    };
    Ok(Resident {
        images,
        meta,
        staging,
        layout,
        job,
    })
}

fn grid_v3(gpu: &CudaMerger, pages: usize) -> Result<u32, GpuError> {
    gpu.grid_for(pages)
}

fn per_batch_gpu() -> BenchResult<CudaMerger> {
    Ok(CudaMerger::new(&GpuConfig::default())?)
}

/// (1) Correctness: fresh inputs per check, poisoned outputs, every mode.
fn correctness(quick: bool) -> BenchResult<()> {
    let mut gpu = per_batch_gpu()?;
    let stream = Stream::new(gpu.context())?;
    let sizes: &[(usize, usize, usize)] = if quick {
        &[(500, 4096, 8), (300, 1000, 8), (50, 4096, 96)]
    } else {
        &[
            (2000, 4096, 8),
            (700, 4000, 8),
            (300, 1000, 8),
            (64, 65536, 8),
            (20000, 4080, 8),
            // Long chains: more runs and payload than the kernel stages, so
            // pages take its large path (run tiles, sources in global memory).
            (400, 4096, 96),
            (40, 65536, 300),
        ]
    };
    let mut checks = 0;
    for (index, &(pages, page_len, deltas_per_page)) in sizes.iter().enumerate() {
        let shape = DeltaShape {
            deltas_per_page,
            max_run_bytes: 256.min(page_len),
            ..DeltaShape::default()
        };
        let work = Workload::generate(pages, page_len, shape, 1000 + index as u64);
        let expected = cpu_reference(&work)?;
        // Each kernel alone, output poisoned before the copy back.
        for kernel in KERNELS
            .iter()
            .map(|(label, id)| (*label, Some(*id)))
            .chain([("baseline kernel (v1)", None)])
        {
            let (name, id) = kernel;
            let resident = make_resident(&gpu, &work, &stream)?;
            match id {
                None => {
                    let shape = gpu.baseline_shape(pages, page_len)?;
                    // SAFETY: the resident buffers hold the job's chunk until synchronize.
                    unsafe { gpu.launch_baseline(&resident.job, shape, &stream)? };
                }
                Some(id) => {
                    let grid = gpu.grid_of(id, pages)?;
                    // SAFETY: as above.
                    unsafe { gpu.launch_with(id, &resident.job, 0, grid, &stream)? };
                }
            }
            let mut out = vec![0xA5u8; work.base.len()];
            // SAFETY: the device buffer holds out.len() bytes.
            unsafe { stream.copy_to_host(&mut out, resident.images.ptr())? };
            stream.synchronize()?;
            verdict(&format!("{name} {pages}x{page_len}"), &out, &expected)?;
            checks += 1;
        }
        // A device page mirror session: three batches, resident pages given
        // garbage bases, against folding everything at once.
        {
            let merge = GpuMerge::new(&GpuConfig {
                max_chunk_pages: (pages / 3).max(1),
                ..GpuConfig::default()
            })?;
            let got = folded_in_session(&merge, &work, 3)?;
            verdict(
                &format!("mirror session {pages}x{page_len}"),
                &got,
                &expected,
            )?;
            if merge.fallback_count() != 0 {
                return Err(
                    format!("mirror session fell back: {:?}", merge.last_fallback()).into(),
                );
            }
            checks += 1;
        }
        // Backend modes through MergeBackend, small chunks to cross chunk edges.
        for (launch, alloc, staging, streams) in CHECKED_MODES {
            let config = GpuConfig {
                launch,
                alloc,
                staging,
                streams,
                max_chunk_pages: (pages / 3).max(1),
                ..GpuConfig::default()
            };
            let what = format!("{launch:?}/{alloc:?}/{staging:?}/x{streams} {pages}x{page_len}");
            let merge = GpuMerge::new(&config)?;
            if let GpuStatus::CpuOnly(reason) = merge.status() {
                return Err(format!("{what} did not start: {reason}").into());
            }
            for _ in 0..2 {
                let mut batch = work.batch()?;
                merge.merge_batch(&mut batch)?;
                if merge.fallback_count() != 0 {
                    return Err(format!("{what} fell back: {:?}", merge.last_fallback()).into());
                }
                verdict(&what, batch.images(), &expected)?;
                checks += 1;
            }
        }
    }
    // Forced failures on the real device fall back to the CPU.
    let work = Workload::generate(1000, PAGE_LEN, DeltaShape::default(), 77);
    let expected = cpu_reference(&work)?;
    for fault in [
        mmsb_cuda::FaultInjection::FailLaunch,
        mmsb_cuda::FaultInjection::OutOfMemory,
    ] {
        let merge = GpuMerge::new(&GpuConfig::default())?;
        merge.set_fault(Some(fault));
        let mut batch = work.batch()?;
        merge.merge_batch(&mut batch)?;
        let record = merge
            .last_fallback()
            .ok_or_else(|| format!("{fault:?} did not fall back"))?;
        verdict(&format!("fallback {fault:?}"), batch.images(), &expected)?;
        println!(
            "fallback {fault:?}: error {} ; detect->cpu {:?} ; retired {}",
            record.error, record.detect_to_cpu_start, record.device_retired
        );
        table(format!(
            "fallback {fault:?}: CPU result exact, detect->CPU start {:.1} us",
            record.detect_to_cpu_start.as_secs_f64() * 1e6
        ));
        checks += 1;
    }
    #[cfg(feature = "nccl")]
    {
        checks += arena_correctness(quick)?;
    }
    table(format!(
        "correctness: {checks} checks passed (fresh random inputs, poisoned outputs)"
    ));
    Ok(())
}

/// Folds `work` through a mirror session in `parts` batches (each page's
/// chain cut into contiguous pieces); pages a batch brings again carry a
/// garbage base that the session must ignore. Returns the delivered images,
/// every slot poisoned first.
fn folded_in_session(merge: &GpuMerge, work: &Workload, parts: usize) -> BenchResult<Vec<u8>> {
    let page_len = work.page_len;
    let garbage = vec![0xEEu8; page_len];
    let mut session = merge
        .open_session(page_len)?
        .ok_or("the GPU offered no mirror session")?;
    let mut seen = vec![false; work.pages()];
    for part in 0..parts {
        let mut batch = MergeBatch::new(page_len)?;
        for (page, chain) in work.chains.iter().enumerate() {
            let mut order: Vec<usize> = (0..chain.len()).collect();
            order.sort_by_key(|&i| chain[i].0);
            let cut = |j: usize| ((j * order.len()) / parts + page % 3).min(order.len());
            let from = if part == 0 { 0 } else { cut(part) };
            let to = if part + 1 == parts {
                order.len()
            } else {
                cut(part + 1)
            };
            if from >= to {
                continue;
            }
            let base = if seen[page] {
                &garbage[..]
            } else {
                &work.base[page * page_len..(page + 1) * page_len]
            };
            seen[page] = true;
            let entries = order[from..to]
                .iter()
                .map(|&i| ChainEntry::new(chain[i].0, &chain[i].1));
            batch.push_page(PageId(page as u64), base, entries)?;
        }
        session.fold(&mut batch)?;
    }
    let mut out = vec![0xA5u8; work.base.len()];
    for (page, seen) in seen.iter().enumerate() {
        if !seen {
            out[page * page_len..(page + 1) * page_len]
                .copy_from_slice(&work.base[page * page_len..(page + 1) * page_len]);
        }
    }
    session.finish(&mut |page_id, image| {
        let at = page_id.get() as usize * page_len;
        out[at..at + page_len].copy_from_slice(image);
        Ok(())
    })?;
    Ok(out)
}

fn verdict(what: &str, got: &[u8], expected: &[u8]) -> BenchResult<()> {
    if got == expected {
        println!("ok   {what}");
        return Ok(());
    }
    let first = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let wrong = got.iter().zip(expected).filter(|(a, b)| a != b).count();
    Err(format!(
        "MISMATCH {what}: {wrong} bytes differ, first at {first} (page {})",
        first / PAGE_LEN
    )
    .into())
}

fn time_events<F>(stream: &Stream, gpu: &CudaMerger, reps: usize, mut body: F) -> BenchResult<f64>
where
    F: FnMut(&Stream) -> Result<(), GpuError>,
{
    let (start, end) = (Event::new(gpu.context())?, Event::new(gpu.context())?);
    body(stream)?;
    stream.synchronize()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        start.record(stream)?;
        body(stream)?;
        end.record(stream)?;
        samples.push(start.elapsed_ms(&end)?);
    }
    Ok(median(&mut samples))
}

fn time_wall<F>(reps: usize, warmup: usize, mut body: F) -> BenchResult<f64>
where
    F: FnMut() -> BenchResult<()>,
{
    for _ in 0..warmup {
        body()?;
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        body()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut samples))
}

/// (2) Throughput: kernel, mirror and round trip vs the CPU and vs D2D copy.
fn throughput(quick: bool) -> BenchResult<()> {
    let mut gpu = per_batch_gpu()?;
    let stream = Stream::new(gpu.context())?;
    // Device copy bandwidth: 1 GiB device to device, read + write counted.
    let copy_len = 1usize << 30;
    let (src, dst) = (
        DeviceBuffer::alloc(gpu.context(), copy_len)?,
        DeviceBuffer::alloc(gpu.context(), copy_len)?,
    );
    // SAFETY: both buffers hold copy_len bytes.
    unsafe { stream.fill(src.ptr(), 0x3C, copy_len)? };
    let copy_ms = time_events(&stream, &gpu, 10, |s| unsafe {
        s.copy_on_device(dst.ptr(), src.ptr(), copy_len)
    })?;
    let copy_gbs = gb_per_s(2 * copy_len as u64, copy_ms);
    drop((src, dst));
    println!("device copy: {copy_ms:.3} ms for 2 x 1 GiB = {copy_gbs:.0} GB/s");
    table(format!(
        "device D2D copy bandwidth (read+write): {copy_gbs:.0} GB/s"
    ));
    let cpu = CpuMerge::best(threads())?;
    let sizes: &[usize] = if quick { &[16 * 1024] } else { &LARGE_PAGES };
    for &pages in sizes {
        let gen_start = Instant::now();
        let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), pages as u64);
        let bytes = work.bytes_moved();
        println!(
            "workload {pages} pages x {PAGE_LEN} B, 8 deltas/page, payload {:.1} MB, generated in {:.1} s",
            work.payload_bytes() as f64 / 1e6,
            gen_start.elapsed().as_secs_f64()
        );
        let expected = cpu_reference(&work)?;
        // CPU: all cores, SIMD, the same batch merged again (folding is idempotent).
        let mut batch = work.batch()?;
        let cpu_ms = time_wall(5, 1, || {
            cpu.merge_batch(&mut batch)?;
            Ok(())
        })?;
        drop(batch);
        // Kernels alone, pages and deltas resident (re-folding merged pages
        // is idempotent, so every repetition does the same work). v3 is
        // timed first and again last: the spread of one version.
        let mut kernel_rows = Vec::new();
        let mut out = vec![0x5Au8; work.base.len()];
        let order = KERNELS
            .iter()
            .copied()
            .chain([("kernel v3 (mmsb_merge), timed again", KernelId::Merge)]);
        for (label, id) in order {
            let resident = make_resident(&gpu, &work, &stream)?;
            let grid = gpu.grid_of(id, pages)?;
            let ms = time_events(&stream, &gpu, REPS_LONG, |s| unsafe {
                gpu.launch_with(id, &resident.job, 0, grid, s)
            })?;
            out.fill(0x5A);
            // SAFETY: the device buffer holds out.len() bytes.
            unsafe { stream.copy_to_host(&mut out, resident.images.ptr())? };
            stream.synchronize()?;
            verdict(&format!("throughput {label} {pages}"), &out, &expected)?;
            let per_sm = gpu.blocks_per_sm(id)?;
            kernel_rows.push((format!("GPU {label} [{per_sm} blk/SM]"), ms));
        }
        let resident = make_resident(&gpu, &work, &stream)?;
        let shape = gpu.baseline_shape(pages, PAGE_LEN)?;
        let baseline_ms = time_events(&stream, &gpu, REPS_LONG, |s| unsafe {
            gpu.launch_baseline(&resident.job, shape, s)
        })?;
        // SAFETY: the device buffer holds out.len() bytes.
        unsafe { stream.copy_to_host(&mut out, resident.images.ptr())? };
        stream.synchronize()?;
        verdict(
            &format!("throughput baseline kernel {pages}"),
            &out,
            &expected,
        )?;
        // Mirror: pages resident, deltas shipped from pinned memory, then folded.
        let meta_len = resident.layout.total_len;
        let mirror_ms = time_events(&stream, &gpu, REPS_LONG, |s| unsafe {
            s.copy_to_device(
                resident.meta.ptr(),
                &resident.staging.as_slice()[..meta_len],
            )?;
            gpu.launch_job(&resident.job, grid_v3(&gpu, pages)?, s)
        })?;
        drop(resident);
        // Session (device page mirror through MergeBackend::open_session):
        // the first fold uploads the pages; later folds of the same pages
        // (host layout + deltas H2D + kernel) are what a recovery window
        // costs; finish downloads every page once.
        let session_merge = GpuMerge::new(&GpuConfig::default())?;
        let mut session = session_merge
            .open_session(PAGE_LEN)?
            .ok_or("no mirror session")?;
        let mut batch = work.batch()?;
        let first_ms = time_wall(1, 0, || {
            session.fold(&mut batch)?;
            Ok(())
        })?;
        let fold_ms = time_wall(3, 0, || {
            session.fold(&mut batch)?;
            Ok(())
        })?;
        let finish_start = Instant::now();
        session.finish(&mut |_, _| Ok(()))?;
        let finish_ms = finish_start.elapsed().as_secs_f64() * 1e3;
        drop(batch);
        println!(
            "session {pages}: first fold (uploads) {first_ms:.1} ms, resident fold {fold_ms:.1} ms, finish {finish_ms:.1} ms"
        );
        // Round trips through MergeBackend: flatten, copy in, fold, copy out.
        let mut trips = Vec::new();
        for (label, staging, streams) in TRIP_MODES {
            let merge = GpuMerge::new(&GpuConfig {
                staging,
                streams,
                ..GpuConfig::default()
            })?;
            let mut batch = work.batch()?;
            let trip_ms = time_wall(3, 1, || {
                merge.merge_batch(&mut batch)?;
                Ok(())
            })?;
            verdict(
                &format!("round trip {label} {pages}"),
                batch.images(),
                &expected,
            )?;
            if merge.fallback_count() != 0 {
                return Err(
                    format!("round trip {label} fell back: {:?}", merge.last_fallback()).into(),
                );
            }
            trips.push((label, trip_ms));
        }
        let line = |name: &str, ms: f64| {
            format!(
                "{pages:>6} pages {name:<40} {ms:>9.3} ms {:>7.1} GB/s  {:>6.1}x CPU  {:>5.1}% of D2D",
                gb_per_s(bytes, ms),
                cpu_ms / ms,
                100.0 * gb_per_s(bytes, ms) / copy_gbs
            )
        };
        table(line(
            &format!("CPU merge ({} threads, {})", threads(), cpu.path()),
            cpu_ms,
        ));
        for (label, ms) in &kernel_rows {
            table(line(label, *ms));
        }
        table(line("GPU baseline kernel v1 (resident)", baseline_ms));
        table(line("GPU mirror (deltas H2D + kernel v3)", mirror_ms));
        table(line("GPU session fold, pages resident", fold_ms));
        table(line("GPU session first fold (uploads pages)", first_ms));
        for (label, trip_ms) in trips {
            table(line(&format!("GPU round trip: {label}"), trip_ms));
        }
    }
    table("  (GB/s counts page images in + out + delta payload; 'x CPU' = CPU time / time)".into());
    Ok(())
}

/// Usable bytes of a 4 KiB engine page (page size minus the trailer).
const ENGINE_PAGE_LEN: usize = 4096 - 16;

/// (3) Where the GPU round trip (default configuration: pinned staging,
/// 3 streams) starts to beat the all-core CPU merge on the same batches: the
/// measured value for `Options::gpu_merge_min_pages`.
fn threshold(quick: bool) -> BenchResult<()> {
    let sizes: &[usize] = if quick {
        &[1024, 8192]
    } else {
        &[1024, 4096, 16 * 1024, 64 * 1024]
    };
    let cpu = CpuMerge::best(threads())?;
    let merge = GpuMerge::new(&GpuConfig::default())?;
    let mut crossover = None;
    for &pages in sizes {
        let work = Workload::generate(
            pages,
            ENGINE_PAGE_LEN,
            DeltaShape::default(),
            700 + pages as u64,
        );
        let expected = cpu_reference(&work)?;
        let reps = if pages >= 16 * 1024 { 5 } else { 15 };
        let mut batch = work.batch()?;
        let cpu_ms = time_wall(reps, 2, || {
            cpu.merge_batch(&mut batch)?;
            Ok(())
        })?;
        let mut batch = work.batch()?;
        let gpu_ms = time_wall(reps, 2, || {
            merge.merge_batch(&mut batch)?;
            Ok(())
        })?;
        verdict(&format!("threshold {pages}"), batch.images(), &expected)?;
        if gpu_ms < cpu_ms && crossover.is_none() {
            crossover = Some(pages);
        }
        table(format!(
            "{pages:>6} pages of {ENGINE_PAGE_LEN} B  CPU merge {cpu_ms:>8.3} ms | GPU round trip {gpu_ms:>8.3} ms ({:.2}x CPU)",
            cpu_ms / gpu_ms
        ));
    }
    table(match crossover {
        Some(pages) => format!("gpu_merge_min_pages: the GPU round trip wins from {pages} pages"),
        None => "gpu_merge_min_pages: the CPU merge wins at every size measured".into(),
    });
    Ok(())
}

/// Pages the recovery workload writes, and full passes of writes over them
/// (one delta per page per pass: page chains of `RECOVERY_PASSES` deltas).
const RECOVERY_PAGES: usize = 256 * 1024;
/// Write passes over every page.
const RECOVERY_PASSES: usize = 8;
/// Pages one allocating commit allocates.
const RECOVERY_ALLOC_PER_COMMIT: usize = 16 * 1024;
/// Pages one writing commit changes.
const RECOVERY_PAGES_PER_COMMIT: usize = 2048;
/// Timed opens per configuration (after one warm-up open).
const RECOVERY_REPS: usize = 2;
/// A window larger than the whole log: recovery merges once.
const ONE_WINDOW_BYTES: usize = 1 << 40;

/// Memory budget of the recovery databases (16 GiB: the 1 GiB default
/// would checkpoint the largest log while it is built).
const RECOVERY_MEMORY_BUDGET_BYTES: u64 = 16 << 30;

fn recovery_options() -> Options {
    Options {
        durability: Durability::Eventual {
            flush_interval_ms: 100,
        },
        checkpoint_tlog_bytes: u64::MAX,
        checkpoint_on_close: false,
        background_workers: false,
        codec: CodecConfig::with_mode(CodecMode::Raw),
        // Room for every page: no eviction checkpoint while the log is built.
        memory_budget_bytes: RECOVERY_MEMORY_BUDGET_BYTES,
        ..Options::default()
    }
}

/// Allocates `pages` pages, then writes 1–4 runs of 8–256 random bytes into
/// every page, `passes` times. Returns the commits and the page ids.
fn build_recovery_log(
    path: &Path,
    pages: usize,
    passes: usize,
    max_run: usize,
) -> BenchResult<(u64, Vec<PageId>)> {
    let db = recovery_options().open(path)?;
    let page_len = db.page_len();
    let mut ids = Vec::with_capacity(pages);
    let mut commits = 0u64;
    while ids.len() < pages {
        let mut tx = db.begin_page_write()?;
        for _ in 0..RECOVERY_ALLOC_PER_COMMIT.min(pages - ids.len()) {
            ids.push(tx.allocate_page()?);
        }
        tx.commit()?;
        commits += 1;
    }
    let mut rng = SplitMix64::new(0x005E_ED0F_70C5);
    let mut bytes = vec![0u8; max_run];
    for _ in 0..passes {
        for group in ids.chunks(RECOVERY_PAGES_PER_COMMIT) {
            let mut tx = db.begin_page_write()?;
            for &id in group {
                for _ in 0..rng.range(1, 4) {
                    let len = rng.range(8, max_run);
                    let offset = rng.range(0, page_len - len);
                    rng.fill(&mut bytes[..len]);
                    tx.write(id, offset, &bytes[..len])?;
                }
            }
            tx.commit()?;
            commits += 1;
        }
    }
    db.flush()?;
    Ok((commits, ids))
}

/// A cheap 64-bit fingerprint of every page (to compare recoveries).
fn fingerprint(db: &Database, ids: &[PageId]) -> BenchResult<u64> {
    let rx = db.begin_page_read()?;
    let mut hash = 0xCBF2_9CE4_8422_2325u64;
    for &id in ids {
        let page = rx.read_page(id)?;
        for word in page.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..word.len()].copy_from_slice(word);
            hash = (hash ^ u64::from_le_bytes(buf)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    Ok(hash)
}

/// Opens `path` once untimed (warm-up, fingerprint), then `RECOVERY_REPS`
/// times timed; returns the median open time, the fingerprint and the
/// commits recovered.
fn time_open(path: &Path, options: &Options, ids: &[PageId]) -> BenchResult<(f64, u64, u64)> {
    let db = options.open(path)?;
    let print = fingerprint(&db, ids)?;
    let recovered = db.metrics().recovered_commits;
    drop(db);
    let ms = time_wall(RECOVERY_REPS, 0, || {
        drop(options.open(path)?);
        Ok(())
    })?;
    Ok((ms, print, recovered))
}

/// Reads every TLog segment once, in order; returns the bytes read.
fn read_tlog(dir: &Path) -> BenchResult<u64> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let mut bytes = 0u64;
    for path in paths {
        bytes += std::fs::read(&path)?.len() as u64;
    }
    Ok(bytes)
}

/// (4) Recovery: TLogs of `RECOVERY_SIZES` pages (× `RECOVERY_PASSES`
/// deltas) on local disk, replayed at open on the CPU (folding in place, no
/// backend) and through the GPU's mirror session (pages uploaded once,
/// deltas streamed per window, pages downloaded once), with the default
/// window and with one window for the whole log. The pages of every GPU
/// recovery must equal the CPU recovery's.
fn recovery(quick: bool) -> BenchResult<()> {
    let shapes: &[(usize, usize, usize)] = if quick {
        &[(16 * 1024, RECOVERY_PASSES, 256)]
    } else {
        &RECOVERY_SHAPES
    };
    for &shape in shapes {
        let dir = std::env::temp_dir().join(format!("mmsb-gpu-recovery-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let outcome = recovery_in(&dir, shape);
        let _ = std::fs::remove_dir_all(&dir);
        outcome?;
    }
    Ok(())
}

/// Logs the recovery section measures: (pages, write passes over every
/// page, longest run in bytes). The last one has hot pages: long chains of
/// large runs per page, where folding is a larger share of replay.
const RECOVERY_SHAPES: [(usize, usize, usize); 4] = [
    (16 * 1024, RECOVERY_PASSES, 256),
    (64 * 1024, RECOVERY_PASSES, 256),
    (RECOVERY_PAGES, RECOVERY_PASSES, 256),
    (4 * 1024, 32, 2048),
];

fn recovery_in(dir: &Path, (pages, passes, max_run): (usize, usize, usize)) -> BenchResult<()> {
    let path = dir.join("recovery.mmsb");
    let started = Instant::now();
    let (commits, ids) = build_recovery_log(&path, pages, passes, max_run)?;
    let tlog_dir = dir.join("recovery.mmsb-tlog");
    let tlog_bytes = read_tlog(&tlog_dir)?;
    println!(
        "recovery log: {pages} pages x {passes} passes (runs up to {max_run} B), {commits} commits, {:.1} MiB of TLog, built in {:.1} s",
        tlog_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let read_ms = time_wall(RECOVERY_REPS, 1, || {
        read_tlog(&tlog_dir)?;
        Ok(())
    })?;
    let gpu = Arc::new(GpuMerge::new(&GpuConfig::default())?);
    if let GpuStatus::CpuOnly(reason) = gpu.status() {
        return Err(format!("GPU backend did not start: {reason}").into());
    }
    let backend: Arc<dyn MergeBackend> = gpu.clone();
    let configs = [
        ("CPU, in place (no backend)", None, None),
        ("GPU session, default window", Some(&backend), None),
        (
            "GPU session, one window",
            Some(&backend),
            Some(ONE_WINDOW_BYTES),
        ),
    ];
    let mut reference = None;
    let mut cpu_ms = 0.0f64;
    table(format!(
        "recovery: {pages} pages x {passes} deltas (runs 8..{max_run} B), {commits} commits, TLog {:.0} MiB, sequential read {read_ms:.1} ms",
        tlog_bytes as f64 / 1048576.0
    ));
    for (label, backend, window) in configs {
        let options = Options {
            merge_backend: backend.cloned(),
            gpu_merge_min_pages: 1,
            replay_window_bytes: window.unwrap_or(recovery_options().replay_window_bytes),
            ..recovery_options()
        };
        let batches_before = gpu.gpu_batches();
        let session_before = gpu.session_time();
        let (ms, print, recovered) = time_open(&path, &options, &ids)?;
        let session_after = gpu.session_time();
        let opens = RECOVERY_REPS as u32 + 1;
        let fold_ms = (session_after.0 - session_before.0).as_secs_f64() * 1e3 / opens as f64;
        let finish_ms = (session_after.1 - session_before.1).as_secs_f64() * 1e3 / opens as f64;
        if recovered != commits {
            return Err(format!("{label}: recovered {recovered} of {commits} commits").into());
        }
        if gpu.fallback_count() != 0 {
            return Err(format!(
                "{label}: the GPU session fell back: {:?}",
                gpu.last_fallback()
            )
            .into());
        }
        match reference {
            None => reference = Some(print),
            Some(expected) if expected != print => {
                return Err(format!(
                    "MISMATCH recovery {label}: pages differ from the CPU recovery"
                )
                .into())
            }
            Some(_) => println!("ok   recovery {label}: pages identical to the CPU recovery"),
        }
        let versus = if backend.is_some() {
            let folds = (gpu.gpu_batches() - batches_before) / (RECOVERY_REPS as u64 + 1);
            if folds == 0 {
                return Err(format!("{label}: no window reached the GPU").into());
            }
            format!(
                "{:.2}x CPU, {folds} GPU folds/open (session: folds {fold_ms:.0} ms + finish {finish_ms:.0} ms per open)",
                cpu_ms / ms
            )
        } else {
            cpu_ms = ms;
            "(reference)".into()
        };
        table(format!(
            "recovery {pages:>6} pages, {label:<28} {ms:>9.1} ms  replay/read {:>5.2}x  {versus}",
            ms / read_ms
        ));
    }
    Ok(())
}

/// (5) Launch strategies on resident data: per-batch launch vs persistent
/// kernel; the full sequence (H2D, kernel, D2H) plain vs CUDA graph replay.
fn launch_strategies() -> BenchResult<()> {
    let gpu = per_batch_gpu()?;
    let stream = Stream::new(gpu.context())?;
    for pages in [64usize, 1024, 16 * 1024] {
        let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 9000 + pages as u64);
        let expected = cpu_reference(&work)?;
        let resident = make_resident(&gpu, &work, &stream)?;
        let grid = gpu.grid_for(pages)?;
        let launch_ms = time_wall(REPS_SHORT, 20, || {
            // SAFETY: resident buffers outlive the synchronize below.
            unsafe { gpu.launch_job(&resident.job, grid, &stream)? };
            stream.synchronize()?;
            Ok(())
        })?;
        let persistent_ms = {
            let mut kernel = Persistent::start(
                gpu.context(),
                gpu.module(),
                gpu.info().multiprocessors,
                10_000,
            )?;
            let ms = time_wall(REPS_SHORT, 20, || Ok(kernel.run(resident.job)?))?;
            kernel.stop()?;
            ms
        };
        let mut out = vec![0x11u8; work.base.len()];
        // SAFETY: the device buffer holds out.len() bytes.
        unsafe { stream.copy_to_host(&mut out, resident.images.ptr())? };
        stream.synchronize()?;
        verdict(&format!("launch/persistent {pages}"), &out, &expected)?;
        // Full sequence from pinned staging: plain launches vs graph replay.
        let mut host_images = PinnedBuffer::alloc(gpu.context(), work.base.len(), false)?;
        host_images.as_mut_slice().copy_from_slice(&work.base);
        let mut host_out = PinnedBuffer::alloc(gpu.context(), work.base.len(), false)?;
        let meta_len = resident.layout.total_len;
        let enqueue = |s: &Stream, out: &mut [u8]| -> Result<(), GpuError> {
            // SAFETY: pinned buffers and device buffers outlive every
            // synchronize below; sizes match.
            unsafe {
                s.copy_to_device(resident.images.ptr(), host_images.as_slice())?;
                s.copy_to_device(
                    resident.meta.ptr(),
                    &resident.staging.as_slice()[..meta_len],
                )?;
                gpu.launch_job(&resident.job, grid, s)?;
                s.copy_to_host(out, resident.images.ptr())
            }
        };
        let out_slice = host_out.as_mut_slice();
        let plain_ms = time_wall(REPS_SHORT / 2, 10, || {
            enqueue(&stream, out_slice)?;
            stream.synchronize()?;
            Ok(())
        })?;
        let graph = Graph::capture(gpu.context(), &stream, |s| enqueue(s, out_slice))?;
        out_slice.fill(0x22);
        let graph_ms = time_wall(REPS_SHORT / 2, 10, || {
            graph.launch(&stream)?;
            stream.synchronize()?;
            Ok(())
        })?;
        verdict(&format!("graph {pages}"), out_slice, &expected)?;
        table(format!(
            "{pages:>6} pages  launch+sync {launch_ms:>8.4} ms | persistent {persistent_ms:>8.4} ms ({:.2}x) || H2D+kernel+D2H plain {plain_ms:>8.4} ms | graph {graph_ms:>8.4} ms ({:.2}x)",
            launch_ms / persistent_ms,
            plain_ms / graph_ms
        ));
    }
    table(
        "  (host wall-clock medians per batch, data already resident for launch/persistent)".into(),
    );
    Ok(())
}

/// (6) Allocation strategies through MergeBackend.
fn alloc_strategies(quick: bool) -> BenchResult<()> {
    let sizes: &[usize] = if quick {
        &[256, 4096]
    } else {
        &[256, 4096, 32 * 1024]
    };
    for &pages in sizes {
        let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 5000 + pages as u64);
        let expected = cpu_reference(&work)?;
        let mut cells = Vec::new();
        for alloc in [AllocMode::Plain, AllocMode::StreamPool, AllocMode::Reuse] {
            let merge = GpuMerge::new(&GpuConfig {
                alloc,
                ..GpuConfig::default()
            })?;
            let mut batch = work.batch()?;
            let reps = if pages > 10_000 { 10 } else { 50 };
            let ms = time_wall(reps, 3, || {
                merge.merge_batch(&mut batch)?;
                Ok(())
            })?;
            verdict(
                &format!("alloc {alloc:?} {pages}"),
                batch.images(),
                &expected,
            )?;
            cells.push(format!("{alloc:?} {ms:>8.3} ms"));
        }
        table(format!(
            "{pages:>6} pages  round trip by allocation: {}",
            cells.join(" | ")
        ));
    }
    Ok(())
}

/// (7) Managed memory: on-demand page migration vs cuMemPrefetchAsync.
fn prefetch(quick: bool, concurrent_managed: bool) -> BenchResult<()> {
    if !concurrent_managed {
        table("prefetch: skipped (device lacks concurrent managed access)".into());
        return Ok(());
    }
    let gpu = per_batch_gpu()?;
    let stream = Stream::new(gpu.context())?;
    let pages = if quick { 8 * 1024 } else { 64 * 1024 };
    let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 31337);
    let expected = cpu_reference(&work)?;
    let resident = make_resident(&gpu, &work, &stream)?;
    let mut managed = ManagedBuffer::alloc(gpu.context(), work.base.len())?;
    let grid = gpu.grid_for(pages)?;
    let job = Job {
        images: managed.ptr(),
        ..resident.job
    };
    let mut results = Vec::new();
    for prefetch in [false, true] {
        let mut gpu_samples = Vec::new();
        let mut host_samples = Vec::new();
        for rep in 0..6 {
            // Pages start on the host, as the engine would have written them.
            // SAFETY: no device work is pending (synchronized below).
            unsafe { managed.as_mut_slice() }.copy_from_slice(&work.base);
            let start = Instant::now();
            if prefetch {
                managed.prefetch(&stream, true)?;
            }
            // SAFETY: managed memory and resident meta outlive the synchronize.
            unsafe { gpu.launch_job(&job, grid, &stream)? };
            if prefetch {
                managed.prefetch(&stream, false)?;
            }
            stream.synchronize()?;
            let gpu_ms = start.elapsed().as_secs_f64() * 1e3;
            let host_start = Instant::now();
            // SAFETY: synchronized above.
            let images = unsafe { managed.as_mut_slice() };
            let checksum = images
                .iter()
                .step_by(64)
                .fold(0u64, |a, &b| a.wrapping_add(b as u64));
            let host_ms = host_start.elapsed().as_secs_f64() * 1e3;
            if rep == 0 {
                verdict(&format!("managed prefetch={prefetch}"), images, &expected)?;
                println!("checksum {checksum}");
            } else {
                gpu_samples.push(gpu_ms);
                host_samples.push(host_ms);
            }
        }
        let (gpu_ms, host_ms) = (median(&mut gpu_samples), median(&mut host_samples));
        results.push((prefetch, gpu_ms, host_ms));
    }
    for (prefetch, gpu_ms, host_ms) in &results {
        table(format!(
            "{pages} pages managed, {:<11} fold {gpu_ms:>8.3} ms + host read-back {host_ms:>8.3} ms = {:>8.3} ms",
            if *prefetch { "prefetch" } else { "on-demand" },
            gpu_ms + host_ms
        ));
    }
    Ok(())
}

/// `--recovery-cpu PAGES`: replay of one log folding in place, batch by
/// batch on the CPU merge (windows), and through a simulated mirror session
/// (the kernel's CPU twin), to see what the window machinery costs.
fn recovery_cpu_profile(pages: usize) -> BenchResult<()> {
    let dir = std::env::temp_dir().join(format!("mmsb-recovery-cpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("recovery.mmsb");
    let started = Instant::now();
    let (commits, ids) = build_recovery_log(&path, pages, RECOVERY_PASSES, 256)?;
    println!(
        "built {commits} commits in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let cpu: Arc<dyn MergeBackend> = Arc::new(CpuMerge::best(threads())?);
    let sim: Arc<dyn MergeBackend> = Arc::new(GpuMerge::with_device(
        Box::new(mmsb_cuda::SimulatedDevice::new(16 * 1024)),
        CpuMerge::best(threads())?,
    ));
    let only = std::env::var("MMSB_PROFILE_ONLY").unwrap_or_default();
    for (label, backend) in [
        ("in place", None),
        ("windows, CPU batches", Some(&cpu)),
        ("session, simulated", Some(&sim)),
    ] {
        if !label.contains(only.as_str()) {
            continue;
        }
        let options = Options {
            merge_backend: backend.cloned(),
            gpu_merge_min_pages: 1,
            ..recovery_options()
        };
        let (ms, print, _) = time_open(&path, &options, &ids)?;
        println!("{label:<24} {ms:>9.1} ms  fingerprint {print:016x}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--layout-profile PAGES`: host time of each step a session fold does
/// before the device sees a byte (no GPU needed).
fn layout_profile(pages: usize) -> BenchResult<()> {
    let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 3);
    let batch = work.batch()?;
    for round in 0..3 {
        let t = Instant::now();
        batch.validate()?;
        let validate = t.elapsed();
        let t = Instant::now();
        let chunks = mmsb_cuda::layout::plan_chunks(&batch, 16 * 1024, 64 << 20);
        let plan = t.elapsed();
        let (mut measure, mut fill) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        let mut out = Vec::new();
        for range in chunks {
            let t = Instant::now();
            let chunk = mmsb_cuda::layout::ChunkPlan::new(&batch, range)?;
            measure += t.elapsed();
            out.resize(chunk.layout().total_len.max(out.len()), 0u8);
            let t = Instant::now();
            chunk.fill(&batch, &mut out[..chunk.layout().total_len])?;
            fill += t.elapsed();
        }
        println!("round {round}: validate {validate:?} plan_chunks {plan:?} measure {measure:?} fill {fill:?}");
    }
    Ok(())
}

/// World sizes the NCCL scaling section tries (as many as the machine has).
#[cfg(feature = "nccl")]
const NCCL_WORLD_SIZES: [usize; 4] = [1, 2, 4, 8];

/// (8) NCCL scaling: 256 Ki pages sharded over 1, 2, 4, 8 GPUs (as many as
/// exist): upload fold, resident fold (the merge throughput), an all-reduce
/// of the delta counts, and ownership moves GPU to GPU (to the next rank; a
/// send to itself with one GPU). Every world size's pages are checked
/// against the CPU merge.
#[cfg(feature = "nccl")]
fn nccl_scaling(quick: bool) -> BenchResult<()> {
    use mmsb_cuda::nccl::{loaded_nccl_library, nccl_library_present, DeltaCounts, ShardedMerge};
    if !nccl_library_present() {
        table("nccl: skipped, no NCCL library (cudarc looks for libnccl.so)".into());
        return Ok(());
    }
    let count = mmsb_cuda::device_count()?;
    let pages = if quick { 16 * 1024 } else { 256 * 1024 };
    host_copy_probe(if quick { 64 << 20 } else { 640 << 20 })?;
    let work = Workload::generate(pages, PAGE_LEN, DeltaShape::default(), 99);
    let expected = cpu_reference(&work)?;
    let bytes = work.bytes_moved();
    let mut one_gpu_ms = None;
    // Chunk size override for tuning runs (`MMSB_CHUNK_PAGES`); the
    // default is what the merger ships with.
    let config = GpuConfig {
        max_chunk_pages: std::env::var("MMSB_CHUNK_PAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GpuConfig::default().max_chunk_pages),
        ..GpuConfig::default()
    };
    table(format!(
        "nccl: chunks of at most {} pages",
        config.max_chunk_pages
    ));
    // Warm-up, not reported: on a fresh machine the first process to touch
    // its memory pays for the VM backing it, which would slow whichever
    // world size runs first (seen 2026-11-25: world 1 at 41.0 ms first in
    // a process, 27.4 ms in a later process on the same machine).
    {
        let batch = work.batch()?;
        let mut warm = ShardedMerge::from_devices(&[0], PAGE_LEN, &config)?;
        let warm_ms = time_wall(3, 1, || {
            warm.fold(&batch)?;
            Ok(())
        })?;
        table(format!(
            "nccl warm-up (world 1, not reported): fold resident {warm_ms:.2} ms"
        ));
    }
    for world in NCCL_WORLD_SIZES.into_iter().filter(|&n| n <= count) {
        let ordinals: Vec<usize> = (0..world).collect();
        let mut sharded = ShardedMerge::from_devices(&ordinals, PAGE_LEN, &config)?;
        if world == 1 {
            println!("NCCL library loaded: {:?}", loaded_nccl_library());
            table(format!("nccl: library loaded {:?}", loaded_nccl_library()));
        }
        let batch = work.batch()?;
        let upload_ms = time_wall(1, 0, || {
            sharded.fold(&batch)?;
            Ok(())
        })?;
        let fold_ms = time_wall(5, 0, || {
            sharded.fold(&batch)?;
            Ok(())
        })?;
        let phases = sharded.last_fold_phases().to_vec();
        // The same fold with a host thread pool per GPU (cores / world
        // threads each) instead of the shared rayon pool.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default_pools = sharded.host_threads_per_gpu();
        sharded.set_host_threads(if default_pools.is_some() { 0 } else { cores })?;
        let other_ms = time_wall(5, 1, || {
            sharded.fold(&batch)?;
            Ok(())
        })?;
        let other_phases = sharded.last_fold_phases().to_vec();
        let other_pools = sharded.host_threads_per_gpu();
        sharded.set_host_threads(default_pools.map_or(0, |per| per * world))?;
        let describe = |pools: Option<usize>| match pools {
            Some(per) => format!("a pool of {per} host threads per GPU"),
            None => "the shared rayon pool".to_string(),
        };
        for (label, pools, ms, phases) in [
            ("default", default_pools, fold_ms, &phases),
            ("variant", other_pools, other_ms, &other_phases),
        ] {
            table(format!(
                "nccl world {world} {label} ({}): fold {ms:.2} ms",
                describe(pools)
            ));
            for (rank, p) in phases.iter().enumerate() {
                table(format!(
                    "  rank {rank}: plan {:.2} | assign {:.2} | wait {:.2} | pack {:.2} | enqueue {:.2} | drain {:.2} | total {:.2} ms (last fold)",
                    p.plan_ms, p.assign_ms, p.wait_ms, p.pack_ms, p.enqueue_ms, p.drain_ms, p.total_ms
                ));
            }
        }
        // The same fold's host side alone (plans, slot lookups, packing into
        // ordinary memory; no driver call), on the same cores.
        let host_ms = host_prepare_ms(&batch, world)?;
        let reduce_ms = time_wall(20, 2, || {
            sharded.all_reduce_counts()?;
            Ok(())
        })?;
        let reduced = sharded.all_reduce_counts()?;
        let local = sharded
            .shard_counts()
            .into_iter()
            .fold(DeltaCounts::EMPTY, DeltaCounts::combine);
        if reduced != local {
            return Err(format!("all-reduce {reduced:?} != local sum {local:?}").into());
        }
        let moves: Vec<(PageId, usize)> = (0..pages as u64 / 16)
            .map(|p| (PageId(p), (sharded.owner(PageId(p)) + 1) % world))
            .collect();
        let started = Instant::now();
        let moved = sharded.move_pages(&moves)?;
        let move_ms = started.elapsed().as_secs_f64() * 1e3;
        // One more fold after the moves, then every page back and checked.
        sharded.fold(&batch)?;
        let mut out = vec![0xA5u8; work.base.len()];
        sharded.finish(&mut |page, image| {
            let at = page.get() as usize * PAGE_LEN;
            out[at..at + PAGE_LEN].copy_from_slice(image);
            Ok(())
        })?;
        verdict(&format!("nccl world {world} pages"), &out, &expected)?;
        table(format!(
            "nccl world {world}: {pages} pages, fold resident {fold_ms:8.2} ms ({:7.1} GB/s), first fold (uploads) {upload_ms:8.1} ms, all-reduce {:6.1} us, move {} pages {move_ms:6.2} ms ({:5.1} GB/s)",
            gb_per_s(bytes, fold_ms),
            reduce_ms * 1e3,
            moves.len(),
            gb_per_s(moved, move_ms)
        ));
        let base_ms = *one_gpu_ms.get_or_insert(fold_ms);
        // throughput_N / (N x throughput_1) = fold_1 / (N x fold_N).
        let ratio = base_ms / (world as f64 * fold_ms);
        println!("world size {world}: fold {fold_ms:.2} ms, host side alone {host_ms:.2} ms, {ratio:.2}x linear");
        table(format!(
            "nccl scaling world {world}: fold resident {fold_ms:8.2} ms ({:7.1} GB/s), host side alone {host_ms:7.2} ms, vs 1 GPU {base_ms:8.2} ms: {ratio:.2}x linear (bar 0.80x)",
            gb_per_s(bytes, fold_ms)
        ));
    }
    nccl_arena_path(&work, &expected, &config, count)?;
    if count >= 2 {
        nccl_interleaved(
            &work,
            &config,
            if quick { 3 } else { NCCL_INTERLEAVED_ROUNDS },
        )?;
    }
    Ok(())
}

/// Pages per TLog commit record in the arena bench (as `recovery` writes).
#[cfg(feature = "nccl")]
const RECORD_PAGES: usize = 2048;

/// The workload as TLog commit records, in commit order: record `r` holds
/// the `k`-th delta (epoch order) of up to [`RECORD_PAGES`] pages, layer
/// after layer; returns `(epoch, bytes)` with epochs that grow per page.
#[cfg(feature = "nccl")]
fn tlog_records(work: &Workload, mode: CodecMode) -> BenchResult<Vec<(u64, Vec<u8>)>> {
    let layers = work.chains.iter().map(Vec::len).max().unwrap_or(0);
    let config = CodecConfig::with_mode(mode);
    let mut records = Vec::new();
    for k in 0..layers {
        for pages in work.chains.chunks(RECORD_PAGES) {
            let deltas = pages
                .iter()
                .filter_map(|chain| chain.get(k))
                .map(|(_, d)| d);
            let mut bytes = Vec::new();
            mmsb_wal::record::encode_deltas(deltas.collect::<Vec<_>>(), &config, &mut bytes)?;
            records.push((records.len() as u64 + 1, bytes));
        }
    }
    Ok(records)
}

/// Decoded TLog records into decode arenas for `sharded`'s GPUs, on this
/// thread (`old`: blocks to reuse).
#[cfg(feature = "nccl")]
fn arenas_from_records(
    sharded: &mmsb_cuda::nccl::ShardedMerge,
    records: &[(u64, Vec<u8>)],
    old: Option<mmsb_cuda::DecodeArenas>,
) -> BenchResult<mmsb_cuda::DecodeArenas> {
    let mut builder = sharded.arena_builder(
        mmsb_cuda::ArenaGeometry::default(),
        mmsb_cuda::arena::DEFAULT_CHUNK_ENTRIES,
    )?;
    if let Some(old) = old {
        builder.recycle(old);
    }
    for (epoch, bytes) in records {
        builder.push_record(*epoch, bytes)?;
    }
    Ok(builder.finish())
}

/// GPU-vs-CPU checks of the decode-arena path at world sizes 1 and 2 (as
/// many GPUs as exist): fresh random pages given as base images in a first
/// arena (with half of the TLog records), the rest of the records in a
/// second arena over the resident pages, then every page compared with the
/// CPU merge. Returns the checks passed.
#[cfg(feature = "nccl")]
fn arena_correctness(quick: bool) -> BenchResult<usize> {
    use mmsb_cuda::nccl::{nccl_library_present, ShardedMerge};
    if !nccl_library_present() {
        table("arena correctness: skipped, no NCCL library".into());
        return Ok(0);
    }
    let count = mmsb_cuda::device_count()?;
    let mut checks = 0;
    let sizes: &[(usize, usize)] = if quick {
        &[(3000, 4096)]
    } else {
        &[(20000, 4096), (5000, 4000), (3000, 1000)]
    };
    for &(pages, page_len) in sizes {
        for mode in [CodecMode::Raw, CodecMode::Adaptive] {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                ^ (pages * page_len) as u64;
            let work = Workload::generate(pages, page_len, DeltaShape::default(), seed);
            let expected = cpu_reference(&work)?;
            let records = tlog_records(&work, mode)?;
            let half = records.len() / 2;
            for world in NCCL_WORLD_SIZES.into_iter().filter(|&w| w <= count) {
                let ordinals: Vec<usize> = (0..world).collect();
                let mut sharded =
                    ShardedMerge::from_devices(&ordinals, page_len, &GpuConfig::default())?;
                let first = {
                    let mut builder = sharded.arena_builder(
                        mmsb_cuda::ArenaGeometry::default(),
                        mmsb_cuda::arena::DEFAULT_CHUNK_ENTRIES,
                    )?;
                    for (page, image) in work.base.chunks_exact(page_len).enumerate() {
                        builder.push_base(PageId(page as u64), image)?;
                    }
                    for (epoch, bytes) in &records[..half] {
                        builder.push_record(*epoch, bytes)?;
                    }
                    builder.finish()
                };
                sharded.fold_arenas(&first)?;
                let second = arenas_from_records(&sharded, &records[half..], Some(first))?;
                sharded.fold_arenas(&second)?;
                let mut out = vec![0xA5u8; work.base.len()];
                sharded.finish(&mut |page, image| {
                    let at = page.get() as usize * page_len;
                    out[at..at + page_len].copy_from_slice(image);
                    Ok(())
                })?;
                verdict(
                    &format!("decode-arena fold world {world} {pages}x{page_len} {mode:?} records"),
                    &out,
                    &expected,
                )?;
                checks += 1;
            }
        }
    }
    Ok(checks)
}

/// The decode-arena path at 256 Ki pages: the host time to build its
/// input from TLog records (arenas vs the `Delta` batch the old path
/// folds), then per world size the resident fold from the arenas (median
/// of 5), checked against the CPU merge.
#[cfg(feature = "nccl")]
fn nccl_arena_path(
    work: &Workload,
    expected: &[u8],
    config: &GpuConfig,
    count: usize,
) -> BenchResult<()> {
    use mmsb_cuda::nccl::ShardedMerge;
    let records = tlog_records(work, CodecMode::Raw)?;
    let record_bytes: usize = records.iter().map(|(_, b)| b.len()).sum();
    table(format!(
        "arena: {} TLog records (Raw codec, {RECORD_PAGES} pages each, layer after layer), {:.1} MiB",
        records.len(),
        record_bytes as f64 / (1 << 20) as f64
    ));
    // Build cost, host only, one thread (decode is sequential per TLog).
    let page_len = work.page_len;
    let pages = work.pages();
    let decode_ms = time_wall(5, 1, || {
        let mut chains: Vec<Vec<(u64, mmsb_wal::Delta)>> = (0..pages).map(|_| Vec::new()).collect();
        for (epoch, bytes) in &records {
            for delta in mmsb_wal::CommitRecord::decode(bytes, page_len)?.deltas {
                let page = delta.page_id().get() as usize;
                chains
                    .get_mut(page)
                    .ok_or("page out of range")?
                    .push((*epoch, delta));
            }
        }
        std::hint::black_box(&chains);
        Ok(())
    })?;
    let mut chains: Vec<Vec<(u64, mmsb_wal::Delta)>> = (0..pages).map(|_| Vec::new()).collect();
    for (epoch, bytes) in &records {
        for delta in mmsb_wal::CommitRecord::decode(bytes, page_len)?.deltas {
            let page = delta.page_id().get() as usize;
            chains
                .get_mut(page)
                .ok_or("page out of range")?
                .push((*epoch, delta));
        }
    }
    let batch_ms = time_wall(5, 1, || {
        let deltas = chains.iter().map(Vec::len).sum();
        let mut batch = MergeBatch::with_capacity(page_len, pages, deltas)?;
        for (page, (chain, base)) in chains
            .iter()
            .zip(work.base.chunks_exact(page_len))
            .enumerate()
        {
            batch.push_page(
                PageId(page as u64),
                base,
                chain
                    .iter()
                    .map(|(e, d)| ChainEntry::new(mmsb_wal::CommitEpoch(*e), d)),
            )?;
        }
        std::hint::black_box(&batch);
        Ok(())
    })?;
    drop(chains);
    table(format!(
        "arena build cost (host, 1 thread, median of 5): Delta batch = decode records into Deltas grouped per page {decode_ms:.1} ms + MergeBatch assembly (copies base images) {batch_ms:.1} ms = {:.1} ms",
        decode_ms + batch_ms
    ));
    let batch = work.batch()?;
    for world in NCCL_WORLD_SIZES.into_iter().filter(|&w| w <= count) {
        let ordinals: Vec<usize> = (0..world).collect();
        let mut sharded = ShardedMerge::from_devices(&ordinals, PAGE_LEN, config)?;
        // Pages resident, as for the old path's resident fold.
        sharded.fold(&batch)?;
        let mut arenas = Some(arenas_from_records(&sharded, &records, None)?);
        let build_ms = time_wall(5, 1, || {
            let old = arenas.take();
            arenas = Some(arenas_from_records(&sharded, &records, old)?);
            Ok(())
        })?;
        let arenas = arenas.ok_or("no arenas")?;
        let blocks: usize = arenas.ranks().iter().map(|r| r.blocks().len()).sum();
        let copied: usize = arenas
            .ranks()
            .iter()
            .flat_map(|r| r.blocks().iter().map(move |b| (r, b)))
            .flat_map(|(r, b)| b.used_ranges(r.geometry()))
            .map(|range| range.len())
            .sum();
        let chunks: usize = arenas.ranks().iter().map(|r| r.chunks().len()).sum();
        table(format!(
            "arena build cost world {world} (host, 1 thread, median of 5, blocks reused): TLog records -> pinned decode arenas {build_ms:.1} ms ({blocks} blocks, {chunks} chunks, {:.1} MiB copied to the GPUs per fold)",
            copied as f64 / (1 << 20) as f64
        ));
        let fold_ms = time_wall(5, 1, || {
            sharded.fold_arenas(&arenas)?;
            Ok(())
        })?;
        for (rank, p) in sharded.last_fold_phases().iter().enumerate() {
            table(format!(
                "  arena rank {rank}: assign {:.2} | enqueue {:.2} | drain {:.2} | total {:.2} ms (last fold)",
                p.assign_ms, p.enqueue_ms, p.drain_ms, p.total_ms
            ));
        }
        let mut out = vec![0xA5u8; work.base.len()];
        sharded.finish(&mut |page, image| {
            let at = page.get() as usize * PAGE_LEN;
            out[at..at + PAGE_LEN].copy_from_slice(image);
            Ok(())
        })?;
        verdict(&format!("decode-arena world {world} pages"), &out, expected)?;
        table(format!(
            "arena fold from pinned decode arenas world {world}: {fold_ms:8.2} ms ({:7.1} GB/s, median of 5)",
            gb_per_s(work.bytes_moved(), fold_ms)
        ));
    }
    Ok(())
}

/// Rounds of [`nccl_interleaved`].
#[cfg(feature = "nccl")]
const NCCL_INTERLEAVED_ROUNDS: usize = 11;

/// The same scaling ratio measured with both world sizes alive at once and
/// their resident folds alternated round after round (world 1 on GPU 0,
/// world 2 on GPUs 0 and 1): drift of the shared host (other tenants, memory
/// the VM is still backing) then weighs on both alike, where the
/// sequential measurement above times world 1 first and world 2 later.
/// Prints the medians and ranges and the ratio of the medians.
#[cfg(feature = "nccl")]
fn nccl_interleaved(work: &Workload, config: &GpuConfig, rounds: usize) -> BenchResult<()> {
    use mmsb_cuda::nccl::ShardedMerge;
    let batch = work.batch()?;
    let mut one = ShardedMerge::from_devices(&[0], PAGE_LEN, config)?;
    let mut two = ShardedMerge::from_devices(&[0, 1], PAGE_LEN, config)?;
    one.fold(&batch)?;
    two.fold(&batch)?;
    // The decode-arena path on the same mergers (pages resident), timed in
    // the same rounds.
    let records = tlog_records(work, CodecMode::Raw)?;
    let arenas_one = arenas_from_records(&one, &records, None)?;
    let arenas_two = arenas_from_records(&two, &records, None)?;
    one.fold_arenas(&arenas_one)?;
    two.fold_arenas(&arenas_two)?;
    let (mut ones, mut twos) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let (mut arena_ones, mut arena_twos) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        for (merge, samples) in [(&mut one, &mut ones), (&mut two, &mut twos)] {
            let started = Instant::now();
            merge.fold(&batch)?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        for (merge, arenas, samples) in [
            (&mut one, &arenas_one, &mut arena_ones),
            (&mut two, &arenas_two, &mut arena_twos),
        ] {
            let started = Instant::now();
            merge.fold_arenas(arenas)?;
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    {
        let ((low1, high1), (low2, high2)) = (spread(&arena_ones), spread(&arena_twos));
        let (median1, median2) = (median(&mut arena_ones), median(&mut arena_twos));
        let ratio = median1 / (2.0 * median2);
        println!("interleaved arenas: world 1 {median1:.2} ms, world 2 {median2:.2} ms, {ratio:.2}x linear");
        table(format!(
            "arena scaling interleaved ({rounds} rounds, fold from pinned decode arenas, alternated with the Delta-batch folds): world 1 median {median1:.2} ms (range {low1:.2}-{high1:.2}), world 2 median {median2:.2} ms (range {low2:.2}-{high2:.2}): {ratio:.2}x linear (bar 0.80x)"
        ));
    }
    let ((low1, high1), (low2, high2)) = (spread(&ones), spread(&twos));
    let (median1, median2) = (median(&mut ones), median(&mut twos));
    let ratio = median1 / (2.0 * median2);
    println!("interleaved: world 1 {median1:.2} ms, world 2 {median2:.2} ms, {ratio:.2}x linear");
    table(format!(
        "nccl scaling interleaved ({rounds} rounds, folds alternated): world 1 median {median1:.2} ms (range {low1:.2}-{high1:.2}), world 2 median {median2:.2} ms (range {low2:.2}-{high2:.2}): {ratio:.2}x linear (bar 0.80x)"
    ));
    Ok(())
}

/// Lowest and highest of `samples`.
#[cfg(feature = "nccl")]
fn spread(samples: &[f64]) -> (f64, f64) {
    let low = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let high = samples.iter().copied().fold(0.0, f64::max);
    (low, high)
}

/// Host memory copy bandwidth by thread count (`len` bytes copied between
/// two buffers touched beforehand, pieces of 1 MiB): how much of the
/// fold's host side the memory system allows.
#[cfg(feature = "nccl")]
fn host_copy_probe(len: usize) -> BenchResult<()> {
    use rayon::prelude::*;
    const PIECE_BYTES: usize = 1 << 20;
    let mut src = vec![0u8; len];
    SplitMix64::new(5).fill(&mut src[..4096.min(len)]);
    src.par_chunks_mut(PIECE_BYTES)
        .for_each(|piece| piece.iter_mut().step_by(4096).for_each(|b| *b = 1));
    let mut dst = vec![0u8; len];
    dst.par_chunks_mut(PIECE_BYTES)
        .for_each(|piece| piece.iter_mut().step_by(4096).for_each(|b| *b = 2));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut line = String::new();
    for threads in [1usize, 2, 4, 8, 16, 32, 64]
        .into_iter()
        .filter(|&t| t <= cores)
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let ms = time_wall(3, 1, || {
            pool.install(|| {
                dst.par_chunks_mut(PIECE_BYTES)
                    .zip(src.par_chunks(PIECE_BYTES))
                    .for_each(|(to, from)| to.copy_from_slice(from))
            });
            Ok(())
        })?;
        line.push_str(&format!(" {threads}t {:.1}", gb_per_s(len as u64, ms)));
    }
    if dst[len / 2] != src[len / 2] {
        return Err("host copy probe: copy mismatch".into());
    }
    table(format!(
        "host memcpy GB/s (bytes copied, {} MiB):{line}",
        len >> 20
    ));
    Ok(())
}

/// Median host side of one resident fold over `world` ranks, no driver
/// call: each rank's thread plans its pages (`ShardPlan`), looks up their
/// mirror slots and packs every chunk into ordinary memory, as
/// `ShardedMerge::fold` does before its uploads (`benches/shard_prepare.rs`
/// times the same on any machine).
#[cfg(feature = "nccl")]
fn host_prepare_ms(batch: &MergeBatch<'_>, world: usize) -> BenchResult<f64> {
    use mmsb_cuda::shard::{home_rank, packed_len, ChunkLimits, MirrorIndex, ShardPlan};
    let mut ranks: Vec<(MirrorIndex, Vec<u8>)> = (0..world)
        .map(|_| (MirrorIndex::new(batch.page_len()), Vec::new()))
        .collect();
    let prepare =
        |rank: usize, (index, staging): &mut (MirrorIndex, Vec<u8>)| -> Result<(), GpuError> {
            let limits = ChunkLimits::default();
            let plan = if world == 1 {
                ShardPlan::whole(batch, limits)?
            } else {
                ShardPlan::for_rank(batch, rank, |p| home_rank(p, world), limits)?
            };
            let (slots, _) = index.assign(batch, &plan)?;
            for (at, range) in plan.chunks().iter().enumerate() {
                let chunk = plan.chunk(at)?;
                let len = packed_len(chunk.layout());
                if staging.len() < len {
                    staging.resize(len, 0);
                }
                plan.pack(batch, &chunk, &slots[range.clone()], &mut staging[..len])?;
            }
            Ok(())
        };
    time_wall(5, 1, || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .iter_mut()
                .enumerate()
                .map(|(rank, state)| scope.spawn(move || prepare(rank, state)))
                .collect();
            for handle in handles {
                handle.join().map_err(|_| "rank thread panicked")??;
            }
            Ok(())
        })
    })
}

#[cfg(not(feature = "nccl"))]
fn nccl_scaling(_quick: bool) -> BenchResult<()> {
    table("nccl: skipped, gpu_bench was built without the `nccl` feature".into());
    Ok(())
}
