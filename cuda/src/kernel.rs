//! The merge kernels' CUDA C source and the job record they read.
//!
//! Algorithm (identical to [`crate::emulate::fold_chunk`], which is its CPU
//! twin and is what the CPU-side tests check): one thread block merges one
//! page at a time. Each thread owns the page's 16-byte chunks `tid, tid +
//! blockDim, ...`: it loads them (one 16-byte load each) into shared memory,
//! then walks the page's whole run list in order (runs staged through shared
//! memory in tiles of [`RUN_TILE`]) and, for every run that overlaps one of
//! its chunks, copies the overlapping bytes from the payload: one 16-byte
//! load when the run covers the whole chunk and the source is aligned,
//! byte loads otherwise. Finally it stores its chunks back. Because each
//! byte is written by exactly one thread, and that thread applies the runs in
//! list order (epoch order), later epochs win per byte with no races and no
//! barriers beyond the run-tile staging. Each page is read once and written
//! once; each payload byte is read once.
//!
//! `mmsb_merge` runs one job per launch over a grid-stride loop of pages;
//! `mmsb_merge_persistent` stays resident and takes jobs from a queue in
//! mapped host memory (see [`crate::persistent`]). Loads use `ld.global.cg`
//! (L2 only) so that a resident kernel never sees stale L1 lines of buffers
//! the host refilled between jobs.

use crate::layout::CHUNK_BYTES;

/// Threads per block of both kernels.
pub const BLOCK_THREADS: u32 = 256;

/// Runs staged in shared memory at a time (8 bytes each).
pub const RUN_TILE: usize = 512;

/// Slots of the persistent kernel's job queue.
pub const QUEUE_DEPTH: usize = 8;

/// `Job::pages` value that tells the persistent kernel to exit.
pub const QUIT_PAGES: u32 = u32::MAX;

/// Name of the one-job-per-launch kernel.
pub const MERGE_KERNEL: &str = "mmsb_merge";

/// Name of the resident kernel.
pub const PERSISTENT_KERNEL: &str = "mmsb_merge_persistent";

/// One merge job as both kernels read it (32 bytes, `repr(C)`, mirrored by
/// `struct Job` in the CUDA source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Job {
    /// Device address of the chunk's page images (`pages * page_len` bytes).
    pub images: u64,
    /// Device address of the chunk's meta region (see [`crate::layout`]).
    pub meta: u64,
    /// Pages in the chunk ([`QUIT_PAGES`] stops the persistent kernel).
    pub pages: u32,
    /// Bytes per page.
    pub page_len: u32,
    /// Offset of the run descriptors in the meta region.
    pub runs_offset: u32,
    /// Offset of the payload in the meta region.
    pub payload_offset: u32,
}

/// Dynamic shared memory a block needs for pages of `page_len` bytes.
pub fn shared_bytes(page_len: usize) -> usize {
    crate::layout::align16(page_len) + RUN_TILE * crate::layout::RUN_DESC_BYTES
}

/// The CUDA C source of both kernels, with this crate's constants.
pub fn source() -> String {
    format!(
        "#define CHUNK {CHUNK_BYTES}u\n#define RUN_TILE {RUN_TILE}u\n#define BLOCK_THREADS {BLOCK_THREADS}\n\
         #define QUEUE_DEPTH {QUEUE_DEPTH}u\n#define QUIT_PAGES 0x{QUIT_PAGES:X}u\n{KERNEL_BODY}"
    )
}

const KERNEL_BODY: &str = r#"
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct Job {
    u64 images;
    u64 meta;
    u32 pages;
    u32 page_len;
    u32 runs_offset;
    u32 payload_offset;
};

/* Host-written queue in mapped pinned memory. */
struct Ctrl {
    volatile u32 submit_seq;
    volatile u32 done_seq;
    u32 pad[14];
    Job jobs[QUEUE_DEPTH];
};

/* Device-side state of the resident kernel (zeroed before launch). */
struct DevState {
    u32 seq;
    u32 done;
    u32 next_page;
    u32 finished;
    Job job;
};

__device__ __forceinline__ uint4 ld_v4(const void* p) {
    uint4 r;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p) : "memory");
    return r;
}

__device__ __forceinline__ uint2 ld_v2(const void* p) {
    uint2 r;
    asm volatile("ld.global.cg.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p) : "memory");
    return r;
}

__device__ __forceinline__ u32 ld_u32(const void* p) {
    u32 r;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(r) : "l"(p) : "memory");
    return r;
}

__device__ __forceinline__ u8 ld_u8(const void* p) {
    u16 r;
    asm volatile("ld.global.cg.u8 %0, [%1];" : "=h"(r) : "l"(p) : "memory");
    return (u8)r;
}

__device__ __forceinline__ u32 umin(u32 a, u32 b) { return a < b ? a : b; }
__device__ __forceinline__ u32 umax(u32 a, u32 b) { return a > b ? a : b; }

/* Folds page `page` of `job`; spage holds >= align16(page_len) bytes, sruns RUN_TILE runs. */
__device__ __forceinline__ void merge_page(const Job& job, u32 page, u8* spage, uint2* sruns) {
    const u32 page_len = job.page_len;
    u8* img = (u8*)job.images + (u64)page * page_len;
    const u8* meta = (const u8*)job.meta;
    const uint2* runs = (const uint2*)(meta + job.runs_offset);
    const u8* payload = meta + job.payload_offset;
    const u32 r0 = ld_u32(meta + 4u * page);
    const u32 r1 = ld_u32(meta + 4u * (page + 1u));
    const u32 chunks = (page_len + CHUNK - 1u) / CHUNK;
    const bool vec = (page_len % CHUNK) == 0u;

    for (u32 c = threadIdx.x; c < chunks; c += blockDim.x) {
        const u32 lo = c * CHUNK;
        if (vec) {
            *(uint4*)(spage + lo) = ld_v4(img + lo);
        } else {
            const u32 hi = umin(lo + CHUNK, page_len);
            for (u32 x = lo; x < hi; ++x) spage[x] = ld_u8(img + x);
        }
    }
    for (u32 t = r0; t < r1; t += RUN_TILE) {
        const u32 n = umin(RUN_TILE, r1 - t);
        __syncthreads();
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) sruns[i] = ld_v2(runs + t + i);
        __syncthreads();
        for (u32 c = threadIdx.x; c < chunks; c += blockDim.x) {
            const u32 lo = c * CHUNK;
            const u32 hi = umin(lo + CHUNK, page_len);
            for (u32 i = 0; i < n; ++i) {
                const uint2 r = sruns[i];
                const u32 a = r.y & 0xFFFFu;
                const u32 b = a + (r.y >> 16) + 1u;
                const u32 s = umax(a, lo);
                const u32 e = umin(b, hi);
                if (s >= e) continue;
                const u8* src = payload + r.x + (s - a);
                if (e - s == CHUNK && (((u64)src) & (CHUNK - 1u)) == 0u) {
                    *(uint4*)(spage + lo) = ld_v4(src);
                } else {
                    for (u32 x = s; x < e; ++x) spage[x] = ld_u8(src + (x - s));
                }
            }
        }
    }
    for (u32 c = threadIdx.x; c < chunks; c += blockDim.x) {
        const u32 lo = c * CHUNK;
        if (vec) {
            *(uint4*)(img + lo) = *(const uint4*)(spage + lo);
        } else {
            const u32 hi = umin(lo + CHUNK, page_len);
            for (u32 x = lo; x < hi; ++x) img[x] = spage[x];
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) mmsb_merge(Job job) {
    extern __shared__ uint4 smem[];
    u8* spage = (u8*)smem;
    uint2* sruns = (uint2*)(spage + ((job.page_len + CHUNK - 1u) / CHUNK) * CHUNK);
    for (u32 page = blockIdx.x; page < job.pages; page += gridDim.x) {
        merge_page(job, page, spage, sruns);
    }
}

__device__ __forceinline__ Job load_job(const volatile Job* p) {
    Job j;
    j.images = p->images;
    j.meta = p->meta;
    j.pages = p->pages;
    j.page_len = p->page_len;
    j.runs_offset = p->runs_offset;
    j.payload_offset = p->payload_offset;
    return j;
}

__device__ __forceinline__ void store_job(volatile Job* p, const Job& j) {
    p->images = j.images;
    p->meta = j.meta;
    p->pages = j.pages;
    p->page_len = j.page_len;
    p->runs_offset = j.runs_offset;
    p->payload_offset = j.payload_offset;
}

/* Resident kernel: every block takes part in every job, in order. Block 0
   reads the host queue; the others follow st->seq. Pages are claimed with an
   atomic counter; the last block to finish a job resets the counters and
   tells the host (done_seq) and block 0 (st->done). `spage_bytes` is the
   shared page area this launch was given (>= align16(page_len) of every job). */
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mmsb_merge_persistent(Ctrl* ctrl, DevState* st, u32 spage_bytes) {
    extern __shared__ uint4 smem[];
    __shared__ Job s_job;
    __shared__ u32 s_page;
    u8* spage = (u8*)smem;
    uint2* sruns = (uint2*)(spage + spage_bytes);
    volatile DevState* vst = (volatile DevState*)st;
    u32 seq = 0;
    for (;;) {
        const u32 want = seq + 1u;
        if (threadIdx.x == 0) {
            if (blockIdx.x == 0) {
                while (vst->done < seq) __nanosleep(64);
                while (ctrl->submit_seq < want) __nanosleep(256);
                __threadfence_system();
                const Job j = load_job((const volatile Job*)&ctrl->jobs[want % QUEUE_DEPTH]);
                store_job(&vst->job, j);
                __threadfence();
                atomicExch(&st->seq, want);
                s_job = j;
            } else {
                while (vst->seq < want) __nanosleep(128);
                __threadfence();
                s_job = load_job(&vst->job);
            }
        }
        __syncthreads();
        const Job job = s_job;
        if (job.pages == QUIT_PAGES) return;
        for (;;) {
            if (threadIdx.x == 0) s_page = atomicAdd(&st->next_page, 1u);
            __syncthreads();
            const u32 page = s_page;
            __syncthreads();
            if (page >= job.pages) break;
            merge_page(job, page, spage, sruns);
        }
        if (threadIdx.x == 0) {
            __threadfence();
            const u32 finished = atomicAdd(&st->finished, 1u);
            if (finished == gridDim.x - 1u) {
                atomicExch(&st->next_page, 0u);
                atomicExch(&st->finished, 0u);
                __threadfence();
                atomicExch(&st->done, want);
                __threadfence_system();
                ctrl->done_seq = want;
                __threadfence_system();
            }
        }
        seq = want;
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_matches_the_c_layout() {
        assert_eq!(std::mem::size_of::<Job>(), 32);
        assert_eq!(std::mem::align_of::<Job>(), 8);
    }

    #[test]
    fn source_carries_the_rust_constants() {
        let src = source();
        assert!(src.contains("#define CHUNK 16u"));
        assert!(src.contains(&format!("#define RUN_TILE {RUN_TILE}u")));
        assert!(src.contains("QUIT_PAGES 0xFFFFFFFFu"));
        assert!(src.contains(MERGE_KERNEL) && src.contains(PERSISTENT_KERNEL));
    }

    #[test]
    fn shared_memory_covers_page_and_run_tile() {
        assert_eq!(shared_bytes(4096), 4096 + RUN_TILE * 8);
        assert_eq!(shared_bytes(4095), 4096 + RUN_TILE * 8);
    }
}
