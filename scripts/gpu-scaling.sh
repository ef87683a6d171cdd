#!/usr/bin/env bash
# NCCL scaling run of the GPU merge (issue 10), on the device machine, from
# the repository root:
#
#   bash scripts/gpu-scaling.sh [PATH_TO_gpu_bench]   (default: .gpu-bin/gpu_bench)
#
# The bench must be built with the `nccl` feature (see docs/gpu.md):
#   cargo build --release -p mmsb-cuda --features nccl --example gpu_bench
# It runs the bench's correctness section, then shards 256 Ki pages over 1,
# 2, 4, 8 GPUs (as many as the machine has) and prints merge throughput, the
# host side alone, the scaling ratio throughput_N / (N x throughput_1),
# all-reduce latency and GPU-to-GPU move bandwidth per world size, where each
# GPU's host time went (plan, assign, wait, pack, enqueue, drain), and the
# same ratio with world sizes 1 and 2 alive at once and their folds
# alternated (the "interleaved" line: drift of the shared host hits both);
# then the decode-arena path (TLog records decoded into pinned per-GPU
# arenas, folded with whole-region copies only): its build cost against the
# Delta batch's, its fold per world size and its interleaved ratio. If
# .gpu-bin/nccl_test and .gpu-bin/session_test (integration test binaries)
# are there, they run too. Logs go under $OUT.
set -uo pipefail

BIN=${1:-.gpu-bin/gpu_bench}
OUT=${OUT:-/tmp/gpu-scaling-out}
mkdir -p "$OUT"
LOG="$OUT/scaling.log"
: >"$LOG"

# Keep NVLink multicast off (workplace rule).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
    if compgen -G "$dir/libnvrtc.so*" >/dev/null; then
        export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
        break
    fi
done

# cudarc opens "libnccl.so" (or libnccl.so.<CUDA major>), never the pip
# wheel's "libnccl.so.2": list what exists, and when the loader finds no
# libnccl.so, point one at a libnccl.so.2.
{
    echo "# NCCL libraries known to the loader:"
    ldconfig -p 2>/dev/null | grep -i nccl || echo "(none)"
    echo "# NCCL files on disk:"
    find /usr /opt /lib -name 'libnccl.so*' 2>/dev/null | head -20
} 2>&1 | tee -a "$LOG"
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
    found=""
    search=${LD_LIBRARY_PATH:-}
    for dir in ${search//:/ }; do
        [ -e "$dir/libnccl.so" ] && found="$dir/libnccl.so" && break
    done
    if [ -z "$found" ]; then
        wheel=$(find /usr /opt -name 'libnccl.so.2' 2>/dev/null | head -1)
        if [ -n "$wheel" ]; then
            mkdir -p /tmp/nccl-link
            ln -sf "$wheel" /tmp/nccl-link/libnccl.so
            export LD_LIBRARY_PATH="/tmp/nccl-link:${LD_LIBRARY_PATH:-}"
            echo "# linked /tmp/nccl-link/libnccl.so -> $wheel" | tee -a "$LOG"
        fi
    fi
fi

{
    echo "# gpu-scaling $(date -u +%FT%TZ)  binary: $BIN"
    nvidia-smi --query-gpu=index,name,memory.total --format=csv
    nvidia-smi topo -m
    lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|NUMA|L3)' || true
} 2>&1 | tee -a "$LOG"

# Every step runs under its own timeout, cut to what is left of the total
# budget (default 300 s: the whole script stays under 5 minutes even when a
# step hangs). On 2 GPUs a normal run takes about two minutes.
BUDGET_S=${BUDGET_S:-300}
START_S=$SECONDS
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
status=0
step() { # step LABEL LIMIT_S COMMAND...
    local label=$1 limit=$2 left
    shift 2
    left=$((BUDGET_S - (SECONDS - START_S)))
    if [ "$left" -le 5 ]; then
        echo "=== $label skipped: the ${BUDGET_S}s budget is spent" | tee -a "$LOG"
        status=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $label (timeout ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1 || status=1
}
# Correctness first (every kernel and backend mode against the CPU merge,
# mirror sessions), then world sizes 1, 2, 4, 8 (as many as there are GPUs).
step "section correct" 60 "$BIN" correct
step "section nccl" $((60 + 60 * ${GPUS:-1})) "$BIN" nccl
if [ -x .gpu-bin/nccl_test ]; then
    step "nccl integration test" 60 .gpu-bin/nccl_test --nocapture --test-threads=1
fi
if [ -x .gpu-bin/session_test ]; then
    step "session integration test" 60 .gpu-bin/session_test --nocapture --test-threads=1
fi

grep '^TABLE|' "$LOG" | cut -c7- >"$OUT/scaling-summary.txt"
echo "==================== NCCL scaling (full log: $LOG)"
grep -E '^(NCCL|ok|MISMATCH|SECTION|test |world size|interleaved|skipped|# linked|test result|===)' "$LOG" | tail -n 40
echo "--------------------"
cat "$OUT/scaling-summary.txt"
echo "==================== scaling: throughput_N / (N x throughput_1), bar 0.80"
grep -E 'nccl scaling|arena (scaling|fold|build)' "$OUT/scaling-summary.txt" || echo "(no scaling line: see $LOG)"
echo "total $((SECONDS - START_S)) s, exit status $status"
exit $status
