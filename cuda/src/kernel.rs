//! The merge kernels' CUDA C source and the job record they read.
//!
//! Per-page algorithm (v2 and v3 alike; [`crate::emulate::fold_chunk`] is
//! its CPU twin, which is what the CPU-side tests check): one thread block
//! merges one page at a time (grid-stride over the chunk's pages).
//!
//! 1. Every thread holds its own 16-byte chunk of the page image in
//!    registers.
//! 2. Staged path (the page has at most [`RUN_TILE`] runs and its payload
//!    fits [`PAYLOAD_TILE_BYTES`]): the page's run descriptors and its whole
//!    payload window sit in shared memory. Each thread walks the run list in
//!    order and merges every run that overlaps its chunk into the registers,
//!    reading the source from shared memory: a run covering the whole chunk
//!    with a co-aligned source is one 16-byte shared load; otherwise each of
//!    the chunk's four 32-bit words that the run touches is built from two
//!    aligned shared words with a funnel shift and merged under a byte mask.
//!    Finally the chunk is stored with one 16-byte store.
//! 3. Large path (more runs or more payload): the run list is staged in
//!    tiles; the source words are read from global memory instead, with the
//!    same word arithmetic.
//!
//! Each byte has one writer (the thread that owns its chunk), which applies
//! the runs in list order (epoch order): later epochs win, no races, no
//! per-run barriers. Global memory sees each page read once and written
//! once, each payload byte read once, and only wide coalesced accesses.
//!
//! `mmsb_merge` (v3) adds, around that per-page work: a two-deep page
//! pipeline (the next page's runs and payload copied into a second shared
//! stage by `cp.async`, and its image chunks loaded into registers, while
//! the current page folds; descriptors three pages ahead in a shared ring),
//! a warp-filtered run walk (a ballot over 32 runs at a time keeps only the
//! runs that touch the warp's 512 bytes; the same runs in the same order
//! reach each thread, so results are those of the plain walk), and a slot
//! array for device page mirrors (page `i` of a job in image slot
//! `slots[i]`). `mmsb_merge_v2` (one page at a time, plain walk),
//! `mmsb_merge_baseline` (v1: run edges copied byte by byte from global
//! memory) and the register-cap variants [`VARIANT_KERNELS`] stay for the
//! bench's comparison.
//!
//! `mmsb_merge` runs one job per launch; `mmsb_merge_persistent` (v2 page
//! fold) stays resident and takes jobs from a queue in mapped host memory
//! (see [`crate::persistent`]). Global loads use `ld.global.cg` (`__ldcg`,
//! L2 only) so that a resident kernel never sees stale L1 lines of buffers
//! the host refilled between jobs; `cp.async.cg` bypasses L1 too.

use crate::layout::CHUNK_BYTES;

/// Threads per block of every kernel.
pub const BLOCK_THREADS: u32 = 256;

/// Most runs of a page staged in shared memory at once (8 bytes each).
pub const RUN_TILE: usize = 256;

/// Most payload bytes of a page staged in shared memory (its 16-aligned
/// window); pages with more take the large path.
pub const PAYLOAD_TILE_BYTES: usize = 8 * 1024;

/// Bytes of slack before and after the staged payload: the kernel reads the
/// aligned words around a run's first and last bytes.
pub const STAGE_MARGIN_BYTES: usize = 16;

/// Runs staged at a time by the baseline kernel.
pub const BASELINE_RUN_TILE: usize = 512;

/// Slots of the persistent kernel's job queue.
pub const QUEUE_DEPTH: usize = 8;

/// `Job::pages` value that tells the persistent kernel to exit.
pub const QUIT_PAGES: u32 = u32::MAX;

/// Name of the one-job-per-launch kernel.
pub const MERGE_KERNEL: &str = "mmsb_merge";

/// Name of the resident kernel.
pub const PERSISTENT_KERNEL: &str = "mmsb_merge_persistent";

/// Name of the previous kernel, kept so that the bench can compare.
pub const BASELINE_KERNEL: &str = "mmsb_merge_baseline";

/// Name of kernel v2 (one page at a time per block), kept for the bench.
pub const V2_KERNEL: &str = "mmsb_merge_v2";

/// Bench-only variants of `mmsb_merge` under other register caps, in the
/// order of [`crate::driver::KernelId::Variant`]'s index.
pub const VARIANT_KERNELS: [&str; 2] = ["mmsb_merge_b4", "mmsb_merge_b6"];

/// Blocks per multiprocessor `mmsb_merge` is compiled for
/// (`__launch_bounds__` minimum: caps its registers at 64 K / (256 × this)).
pub const MERGE_MIN_BLOCKS: u32 = 5;

/// One merge job as the kernels read it (32 bytes, `repr(C)`, mirrored by
/// `struct Job` in the CUDA source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Job {
    /// Device address of the chunk's page images (`pages * page_len` bytes).
    pub images: u64,
    /// Device address of the chunk's meta region (see [`crate::layout`]);
    /// its page descriptors start at offset 0.
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

/// Static shared memory of `mmsb_merge` and `mmsb_merge_persistent`.
pub const fn stage_bytes() -> usize {
    2 * STAGE_MARGIN_BYTES + PAYLOAD_TILE_BYTES + RUN_TILE * crate::layout::RUN_DESC_BYTES
}

/// Dynamic shared memory the baseline kernel needs for pages of `page_len` bytes.
pub fn baseline_shared_bytes(page_len: usize) -> usize {
    crate::layout::align16(page_len) + BASELINE_RUN_TILE * crate::layout::RUN_DESC_BYTES
}

/// The CUDA C source of every kernel, with this crate's constants.
pub fn source() -> String {
    format!(
        "#define CHUNK {CHUNK_BYTES}u\n#define RUN_TILE {RUN_TILE}u\n\
         #define PAYLOAD_TILE {PAYLOAD_TILE_BYTES}u\n#define MARGIN {STAGE_MARGIN_BYTES}u\n\
         #define BASELINE_RUN_TILE {BASELINE_RUN_TILE}u\n#define BLOCK_THREADS {BLOCK_THREADS}u\n\
         #define QUEUE_DEPTH {QUEUE_DEPTH}u\n#define QUIT_PAGES 0x{QUIT_PAGES:X}u\n\
         #define MERGE_MIN_BLOCKS {MERGE_MIN_BLOCKS}\n{KERNEL_BODY}"
    )
}

const KERNEL_BODY: &str = r#"
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
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

/* Shared memory of one block: a page's payload window with a margin on each
   side, and its run descriptors. */
struct __align__(16) Stage {
    uint4 payload[(2u * MARGIN + PAYLOAD_TILE) / CHUNK];
    uint2 runs[RUN_TILE];
};

__device__ __forceinline__ u32 umin(u32 a, u32 b) { return a < b ? a : b; }
__device__ __forceinline__ u32 umax(u32 a, u32 b) { return a > b ? a : b; }

/* Mask of the low n bytes of a word (n clamped to 0..4). */
__device__ __forceinline__ u32 low_mask(int n) {
    return n <= 0 ? 0u : (n >= 4 ? 0xFFFFFFFFu : ((1u << (8 * n)) - 1u));
}

/* Run sources: `at` is a position in the source's own coordinates, found by
   adding `base` to a payload offset; `word` reads at a 4-aligned position,
   `vec` at a 16-aligned one. Shared positions are u32 (wrapping sums land
   in the stage: every word read lies within MARGIN of the staged window);
   global ones are signed 64-bit (a word may start up to 4 bytes before the
   payload region, inside the run descriptors). */
struct SharedSrc {
    typedef u32 Pos;
    const u32* words;
    u32 base;
    __device__ __forceinline__ u32 word(u32 at) const { return words[at >> 2]; }
    __device__ __forceinline__ uint4 vec(u32 at) const { return ((const uint4*)words)[at >> 4]; }
};

struct GlobalSrc {
    typedef i64 Pos;
    const u8* payload;
    i64 base;
    __device__ __forceinline__ u32 word(i64 at) const {
        return __ldcg((const unsigned int*)(payload + at));
    }
    __device__ __forceinline__ uint4 vec(i64 at) const {
        return __ldcg((const uint4*)(payload + at));
    }
};

/* Merges into word k of a chunk the bytes [s, e) (chunk-relative) of a run
   whose source byte for chunk byte 0 sits at position p0. */
template <class Src>
__device__ __forceinline__ void merge_word(u32& w, int k, int s, int e, typename Src::Pos p0,
                                           const Src& src) {
    typedef typename Src::Pos Pos;
    const u32 m = low_mask(e - 4 * k) & ~low_mask(s - 4 * k);
    if (m == 0u) return;
    const Pos p = p0 + (Pos)(4 * k);
    const Pos at = p & ~(Pos)3;
    const u32 shift = (u32)(p & 3);
    u32 x = src.word(at);
    if (shift != 0u) x = __funnelshift_r(x, src.word(at + 4), 8u * shift);
    w = (w & ~m) | (x & m);
}

/* Applies runs[0..n) in order to the chunk v at page offset lo. */
template <class Src>
__device__ __forceinline__ void apply_runs(uint4& v, u32 lo, const uint2* runs, u32 n,
                                           const Src& src) {
    const u32 hi = lo + CHUNK;
    for (u32 i = 0; i < n; ++i) {
        const uint2 r = runs[i];
        const u32 a = r.y & 0xFFFFu;
        const u32 b = a + (r.y >> 16) + 1u;
        if (a >= hi || b <= lo) continue;
        typedef typename Src::Pos Pos;
        const Pos p0 = (Pos)r.x + src.base + (Pos)lo - (Pos)a;
        if (a <= lo && b >= hi && (p0 & 15) == 0) {
            v = src.vec(p0);
            continue;
        }
        const int s = (int)umax(a, lo) - (int)lo;
        const int e = (int)umin(b, hi) - (int)lo;
        merge_word(v.x, 0, s, e, p0, src);
        merge_word(v.y, 1, s, e, p0, src);
        merge_word(v.z, 2, s, e, p0, src);
        merge_word(v.w, 3, s, e, p0, src);
    }
}

/* Page images: 16-byte accesses when page_len is a multiple of 16 (every
   engine page size), byte accesses otherwise. */
__device__ __forceinline__ u32 load_word_bytes(const u8* img, u32 at, u32 page_len) {
    u32 w = 0u;
#pragma unroll
    for (u32 j = 0; j < 4u; ++j) {
        if (at + j < page_len) w |= (u32)__ldcg(img + at + j) << (8u * j);
    }
    return w;
}

__device__ __forceinline__ void store_word_bytes(u8* img, u32 at, u32 page_len, u32 w) {
#pragma unroll
    for (u32 j = 0; j < 4u; ++j) {
        if (at + j < page_len) img[at + j] = (u8)(w >> (8u * j));
    }
}

__device__ __forceinline__ uint4 load_chunk(const u8* img, u32 lo, u32 page_len) {
    if ((page_len & (CHUNK - 1u)) == 0u) return __ldcg((const uint4*)(img + lo));
    uint4 v;
    v.x = load_word_bytes(img, lo, page_len);
    v.y = load_word_bytes(img, lo + 4u, page_len);
    v.z = load_word_bytes(img, lo + 8u, page_len);
    v.w = load_word_bytes(img, lo + 12u, page_len);
    return v;
}

__device__ __forceinline__ void store_chunk(u8* img, u32 lo, u32 page_len, const uint4& v) {
    if ((page_len & (CHUNK - 1u)) == 0u) {
        *(uint4*)(img + lo) = v;
        return;
    }
    store_word_bytes(img, lo, page_len, v.x);
    store_word_bytes(img, lo + 4u, page_len, v.y);
    store_word_bytes(img, lo + 8u, page_len, v.z);
    store_word_bytes(img, lo + 12u, page_len, v.w);
}

/* A page descriptor loaded ahead by thread 0, stored to shared memory by
   `commit` while the block waits for the current page's loads anyway. */
struct Prefetch {
    uint4* slot;  /* null: nothing to prefetch */
    uint4 value;
    __device__ __forceinline__ void commit() const {
        if (slot != 0) *slot = value;
    }
};

/* Folds page `page` (descriptor d: first_run, run_count, payload_start,
   payload_len) of `job`; every thread of the block calls it, and it ends
   with a barrier (after which `pf` is visible to the block). */
__device__ __forceinline__ void merge_page(const Job& job, u32 page, const uint4 d, Stage& st,
                                           const Prefetch& pf) {
    const u8* meta = (const u8*)job.meta;
    const u32 page_len = job.page_len;
    u8* img = (u8*)job.images + (u64)page * page_len;
    const u32 chunks = (page_len + CHUNK - 1u) / CHUNK;
    const u32 tid = threadIdx.x;
    if (d.y == 0u) { /* no runs: the image stays as it is */
        pf.commit();
        __syncthreads();
        return;
    }
    uint4 first = make_uint4(0u, 0u, 0u, 0u);
    if (tid < chunks) first = load_chunk(img, tid * CHUNK, page_len);
    const uint2* runs = (const uint2*)(meta + job.runs_offset) + d.x;
    const u8* payload = meta + job.payload_offset;
    const u32 ws = d.z & ~(CHUNK - 1u);
    const u32 span = ((d.z + d.w + CHUNK - 1u) & ~(CHUNK - 1u)) - ws;
    if (d.y <= RUN_TILE && span <= PAYLOAD_TILE) {
        for (u32 i = tid; i < d.y; i += BLOCK_THREADS) st.runs[i] = __ldcg(runs + i);
        const uint4* from = (const uint4*)(payload + ws);
        for (u32 i = tid; i < span / CHUNK; i += BLOCK_THREADS) {
            st.payload[MARGIN / CHUNK + i] = __ldcg(from + i);
        }
        pf.commit();
        __syncthreads();
        SharedSrc src;
        src.words = (const u32*)st.payload;
        src.base = MARGIN - ws; /* u32 arithmetic: positions wrap into 0..span+2*MARGIN */
        for (u32 c = tid; c < chunks; c += BLOCK_THREADS) {
            uint4 v = c == tid ? first : load_chunk(img, c * CHUNK, page_len);
            apply_runs(v, c * CHUNK, st.runs, d.y, src);
            store_chunk(img, c * CHUNK, page_len, v);
        }
    } else {
        GlobalSrc src;
        src.payload = payload;
        src.base = 0;
        pf.commit();
        for (u32 t = 0; t < d.y; t += RUN_TILE) {
            const u32 n = umin(RUN_TILE, d.y - t);
            for (u32 i = tid; i < n; i += BLOCK_THREADS) st.runs[i] = __ldcg(runs + t + i);
            __syncthreads();
            for (u32 c = tid; c < chunks; c += BLOCK_THREADS) {
                uint4 v = (t == 0u && c == tid) ? first : load_chunk(img, c * CHUNK, page_len);
                apply_runs(v, c * CHUNK, st.runs, n, src);
                store_chunk(img, c * CHUNK, page_len, v);
            }
            __syncthreads();
        }
    }
    __syncthreads(); /* the next page restages shared memory */
}

/* Kernel v2 (kept for the bench's comparison): blocks stride over the
   pages; thread 0 loads the next page's descriptor while the current page's
   loads are in flight, so each page costs one round of dependent loads. */
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) mmsb_merge_v2(Job job) {
    __shared__ Stage st;
    __shared__ uint4 descs[2];
    const uint4* desc_of = (const uint4*)job.meta;
    u32 page = blockIdx.x;
    if (page >= job.pages) return;
    if (threadIdx.x == 0) descs[0] = __ldcg(desc_of + page);
    __syncthreads();
    for (u32 i = 0; page < job.pages; ++i, page += gridDim.x) {
        const u32 next = page + gridDim.x;
        Prefetch pf;
        pf.slot = 0;
        if (threadIdx.x == 0 && next < job.pages) {
            pf.slot = &descs[(i + 1u) & 1u];
            pf.value = __ldcg(desc_of + next);
        }
        merge_page(job, page, descs[i & 1u], st, pf);
    }
}

/* ---- Kernel v3: pipelined pages, warp-filtered run walk. ---- */

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(src)
                 : "memory");
}

__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(smem_addr(dst)), "l"(src)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

__device__ __forceinline__ void cp_async_wait_prev() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

__device__ __forceinline__ bool page_is_staged(const uint4 d) {
    const u32 ws = d.z & ~(CHUNK - 1u);
    const u32 span = ((d.z + d.w + CHUNK - 1u) & ~(CHUNK - 1u)) - ws;
    return d.y <= RUN_TILE && span <= PAYLOAD_TILE;
}

/* Starts copying page d's run descriptors and payload window into st
   (cp.async: no registers, completes in the background). Large pages are
   not staged here: their fold stages run tiles itself. */
__device__ __forceinline__ void stage_async(const Job& job, const uint4 d, Stage& st) {
    if (d.y == 0u || !page_is_staged(d)) return;
    const u8* meta = (const u8*)job.meta;
    const uint2* runs = (const uint2*)(meta + job.runs_offset) + d.x;
    for (u32 i = threadIdx.x; i < d.y; i += BLOCK_THREADS) cp_async8(&st.runs[i], runs + i);
    const u32 ws = d.z & ~(CHUNK - 1u);
    const u32 span = ((d.z + d.w + CHUNK - 1u) & ~(CHUNK - 1u)) - ws;
    const uint4* from = (const uint4*)(meta + job.payload_offset + ws);
    for (u32 i = threadIdx.x; i < span / CHUNK; i += BLOCK_THREADS) {
        cp_async16(&st.payload[MARGIN / CHUNK + i], from + i);
    }
}

/* Applies one run to the chunk v at page offset lo (the v2 loop body). */
template <class Src>
__device__ __forceinline__ void apply_one(uint4& v, u32 lo, const uint2 r, const Src& src) {
    typedef typename Src::Pos Pos;
    const u32 hi = lo + CHUNK;
    const u32 a = r.y & 0xFFFFu;
    const u32 b = a + (r.y >> 16) + 1u;
    if (a >= hi || b <= lo) return;
    const Pos p0 = (Pos)r.x + src.base + (Pos)lo - (Pos)a;
    if (a <= lo && b >= hi && (p0 & 15) == 0) {
        v = src.vec(p0);
        return;
    }
    const int s = (int)umax(a, lo) - (int)lo;
    const int e = (int)umin(b, hi) - (int)lo;
    merge_word(v.x, 0, s, e, p0, src);
    merge_word(v.y, 1, s, e, p0, src);
    merge_word(v.z, 2, s, e, p0, src);
    merge_word(v.w, 3, s, e, p0, src);
}

/* Applies runs[0..n) in order to the warp's 32 chunks [wlo, whi) (byte
   offsets): lane k tests run t + k against the warp's span, a ballot keeps
   the runs that touch it, and the warp walks only those, in list order.
   Every lane of the warp must call it; `mine` says whether v is a chunk. */
template <class Src>
__device__ __forceinline__ void apply_runs_warp(uint4& v, u32 lo, bool mine, u32 wlo, u32 whi,
                                                const uint2* runs, u32 n, const Src& src) {
    const u32 lane = threadIdx.x & 31u;
    for (u32 t = 0; t < n; t += 32u) {
        bool hit = false;
        if (t + lane < n) {
            const uint2 r = runs[t + lane];
            const u32 a = r.y & 0xFFFFu;
            const u32 b = a + (r.y >> 16) + 1u;
            hit = a < whi && b > wlo;
        }
        u32 m = __ballot_sync(0xFFFFFFFFu, hit);
        while (m != 0u) {
            const u32 j = (u32)__ffs(m) - 1u;
            m &= m - 1u;
            if (mine) apply_one(v, lo, runs[t + j], src);
        }
    }
}

/* Large pages (more runs or payload than a stage holds): run tiles staged
   one after another, sources read from global memory. */
__device__ __forceinline__ void fold_large_v3(const Job& job, u8* img, const uint4 d, Stage& st,
                                           uint4 first) {
    const u32 page_len = job.page_len;
    const u32 chunks = (page_len + CHUNK - 1u) / CHUNK;
    const u32 lane = threadIdx.x & 31u;
    const u32 warp_first = threadIdx.x & ~31u;
    const u8* meta = (const u8*)job.meta;
    const uint2* runs = (const uint2*)(meta + job.runs_offset) + d.x;
    GlobalSrc src;
    src.payload = meta + job.payload_offset;
    src.base = 0;
    for (u32 t = 0; t < d.y; t += RUN_TILE) {
        const u32 n = umin(RUN_TILE, d.y - t);
        __syncthreads();
        for (u32 i = threadIdx.x; i < n; i += BLOCK_THREADS) st.runs[i] = __ldcg(runs + t + i);
        __syncthreads();
        for (u32 base = warp_first; base < chunks; base += BLOCK_THREADS) {
            const u32 c = base + lane;
            const bool mine = c < chunks;
            uint4 v = first;
            if ((t != 0u || base != warp_first) && mine) v = load_chunk(img, c * CHUNK, page_len);
            const u32 whi = umin(base + 32u, chunks) * CHUNK;
            apply_runs_warp(v, c * CHUNK, mine, base * CHUNK, whi, st.runs, n, src);
            if (mine) store_chunk(img, c * CHUNK, page_len, v);
        }
    }
}

/* Folds a page whose stage (if staged) is complete and visible; `first` is
   this thread's first chunk, loaded ahead. Loops are warp-uniform. */
__device__ __forceinline__ void fold_page_v3(const Job& job, u8* img, const uint4 d, Stage& st,
                                             uint4 first) {
    const u32 page_len = job.page_len;
    const u32 chunks = (page_len + CHUNK - 1u) / CHUNK;
    const u32 lane = threadIdx.x & 31u;
    const u32 warp_first = threadIdx.x & ~31u;
    if (page_is_staged(d)) {
        SharedSrc src;
        src.words = (const u32*)st.payload;
        src.base = MARGIN - (d.z & ~(CHUNK - 1u));
        for (u32 base = warp_first; base < chunks; base += BLOCK_THREADS) {
            const u32 c = base + lane;
            const bool mine = c < chunks;
            uint4 v = first;
            if (base != warp_first && mine) v = load_chunk(img, c * CHUNK, page_len);
            const u32 whi = umin(base + 32u, chunks) * CHUNK;
            apply_runs_warp(v, c * CHUNK, mine, base * CHUNK, whi, st.runs, d.y, src);
            if (mine) store_chunk(img, c * CHUNK, page_len, v);
        }
        return;
    }
    fold_large_v3(job, img, d, st, first);
}

__device__ __forceinline__ u8* page_image(const Job& job, u32 slot) {
    return (u8*)job.images + (u64)slot * job.page_len;
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(smem_addr(dst)), "l"(src)
                 : "memory");
}

/* One job, pages pipelined two deep per block: while the block folds page i
   (its stage complete), the runs and payload of page i + 1 stream into the
   other stage by cp.async and its image chunks into registers; descriptors
   (and mirror slots) run three pages ahead through a ring of four, also by
   cp.async, so no register holds them across a fold. `slots` maps a job
   page to its image slot (a device page mirror), or is null: page i is
   slot i. */
__device__ __forceinline__ void merge_pipelined(const Job& job, const u32* slots) {
    __shared__ Stage st[2];
    __shared__ uint4 descs[4];
    __shared__ u32 sslot[4];
    const uint4* desc_of = (const uint4*)job.meta;
    const u32 tid = threadIdx.x;
    const u32 chunks = (job.page_len + CHUNK - 1u) / CHUNK;
    u32 page = blockIdx.x;
    if (page >= job.pages) return;
    if (tid == 0u) {
        for (u32 k = 0; k < 3u; ++k) {
            const u32 p = page + k * gridDim.x;
            if (p < job.pages) {
                descs[k] = __ldcg(desc_of + p);
                sslot[k] = slots != 0 ? __ldcg(slots + p) : p;
            }
        }
    }
    __syncthreads();
    stage_async(job, descs[0], st[0]);
    cp_async_commit();
    uint4 cur = make_uint4(0u, 0u, 0u, 0u);
    if (descs[0].y != 0u && tid < chunks) {
        cur = load_chunk(page_image(job, sslot[0]), tid * CHUNK, job.page_len);
    }
    for (u32 i = 0;; ++i) {
        __syncthreads(); /* ring slot (i+1)&3 visible; st[(i+1)&1] free */
        const u32 next = page + gridDim.x;
        const bool has_next = next < job.pages;
        uint4 nimg = make_uint4(0u, 0u, 0u, 0u);
        if (has_next) {
            const uint4 dn = descs[(i + 1u) & 3u];
            stage_async(job, dn, st[(i + 1u) & 1u]);
            if (dn.y != 0u && tid < chunks) {
                nimg = load_chunk(page_image(job, sslot[(i + 1u) & 3u]), tid * CHUNK, job.page_len);
            }
        }
        const u32 ahead = page + 3u * gridDim.x;
        if (tid == 0u && ahead < job.pages) {
            cp_async16(&descs[(i + 3u) & 3u], desc_of + ahead);
            if (slots != 0) {
                cp_async4(&sslot[(i + 3u) & 3u], slots + ahead);
            } else {
                sslot[(i + 3u) & 3u] = ahead;
            }
        }
        cp_async_commit();
        cp_async_wait_prev(); /* this thread's copies for page i landed */
        __syncthreads();      /* everyone's did */
        const uint4 d = descs[i & 3u];
        if (d.y != 0u) fold_page_v3(job, page_image(job, sslot[i & 3u]), d, st[i & 1u], cur);
        if (!has_next) break;
        page = next;
        cur = nimg;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MERGE_MIN_BLOCKS)
mmsb_merge(Job job, const u32* slots) {
    merge_pipelined(job, slots);
}

/* The same kernel under other register caps (bench variants). */
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, 4)
mmsb_merge_b4(Job job, const u32* slots) {
    merge_pipelined(job, slots);
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, 6)
mmsb_merge_b6(Job job, const u32* slots) {
    merge_pipelined(job, slots);
}

/* ---- The previous kernel, kept for comparison in the bench. ---- */

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

__device__ __forceinline__ u8 ld_u8(const void* p) {
    u16 r;
    asm volatile("ld.global.cg.u8 %0, [%1];" : "=h"(r) : "l"(p) : "memory");
    return (u8)r;
}

/* One block per page; each thread owns 16-byte chunks in shared memory and
   walks the whole run list, copying overlaps straight from global memory. */
__device__ __forceinline__ void merge_page_baseline(const Job& job, u32 page, u8* spage,
                                                    uint2* sruns) {
    const u32 page_len = job.page_len;
    u8* img = (u8*)job.images + (u64)page * page_len;
    const u8* meta = (const u8*)job.meta;
    const uint2* runs = (const uint2*)(meta + job.runs_offset);
    const u8* payload = meta + job.payload_offset;
    const uint4 d = ld_v4(meta + 16u * page);
    const u32 r0 = d.x;
    const u32 r1 = d.x + d.y;
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
    for (u32 t = r0; t < r1; t += BASELINE_RUN_TILE) {
        const u32 n = umin(BASELINE_RUN_TILE, r1 - t);
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

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) mmsb_merge_baseline(Job job) {
    extern __shared__ uint4 smem[];
    u8* spage = (u8*)smem;
    uint2* sruns = (uint2*)(spage + ((job.page_len + CHUNK - 1u) / CHUNK) * CHUNK);
    for (u32 page = blockIdx.x; page < job.pages; page += gridDim.x) {
        merge_page_baseline(job, page, spage, sruns);
    }
}

/* ---- The resident kernel. ---- */

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

/* Every block takes part in every job, in order. Block 0 reads the host
   queue; the others follow st->seq. Pages are claimed with an atomic counter;
   the last block to finish a job resets the counters and tells the host
   (done_seq) and block 0 (st->done). */
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mmsb_merge_persistent(Ctrl* ctrl, DevState* state) {
    __shared__ Stage stage;
    __shared__ Job s_job;
    __shared__ u32 s_page;
    volatile DevState* vst = (volatile DevState*)state;
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
                atomicExch(&state->seq, want);
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
            if (threadIdx.x == 0) s_page = atomicAdd(&state->next_page, 1u);
            __syncthreads();
            const u32 page = s_page;
            __syncthreads();
            if (page >= job.pages) break;
            Prefetch none;
            none.slot = 0;
            merge_page(job, page, __ldcg((const uint4*)job.meta + page), stage, none);
        }
        if (threadIdx.x == 0) {
            __threadfence();
            const u32 finished = atomicAdd(&state->finished, 1u);
            if (finished == gridDim.x - 1u) {
                atomicExch(&state->next_page, 0u);
                atomicExch(&state->finished, 0u);
                __threadfence();
                atomicExch(&state->done, want);
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
        assert!(src.contains(&format!("#define PAYLOAD_TILE {PAYLOAD_TILE_BYTES}u")));
        assert!(src.contains("QUIT_PAGES 0xFFFFFFFFu"));
        for name in [MERGE_KERNEL, PERSISTENT_KERNEL, BASELINE_KERNEL, V2_KERNEL] {
            assert!(src.contains(name));
        }
    }

    #[test]
    fn shared_memory_fits_the_default_limit_and_many_blocks() {
        // 48 KiB is what a block gets without opting in; 8 blocks of 256
        // threads fill an SM, and 8 stages must fit its 228 KiB.
        assert!(stage_bytes() <= 48 * 1024);
        assert!(8 * stage_bytes() <= 200 * 1024);
        assert_eq!(baseline_shared_bytes(4095), 4096 + BASELINE_RUN_TILE * 8);
    }
}
