#!/usr/bin/env bash
# Runs the GPU merge bench on the device machine, from the repository root.
#
#   bash scripts/gpu-run.sh [PATH_TO_gpu_bench]      (default: .gpu-bin/gpu_bench)
#   SECTIONS="correct:90 throughput:150" bash scripts/gpu-run.sh   (only these, with these timeouts)
#
# The binary is built on the development machine (no Rust toolchain on the
# device machine) and carried along: see docs/gpu.md. Prints nvidia-smi, runs
# each bench section in its own process under a timeout (a hung resident
# kernel cannot stall the later sections), writes full logs under $OUT and
# prints the short table last.
set -uo pipefail

BIN=${1:-.gpu-bin/gpu_bench}
OUT=${OUT:-/tmp/gpu-run-out}
mkdir -p "$OUT"
LOG="$OUT/full.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"

# Keep NVLink multicast off (workplace rule), harmless on one GPU.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# cudarc opens libnvrtc.so / libnvrtc.so.13 by name: put CUDA's lib dir on the path.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
    if compgen -G "$dir/libnvrtc.so*" >/dev/null; then
        export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
        break
    fi
done
if ! ldconfig -p 2>/dev/null | grep -q libnvrtc && [[ "${LD_LIBRARY_PATH:-}" != *cuda* ]]; then
    found=$(find /usr /opt -name 'libnvrtc.so.13*' -not -name '*builtins*' 2>/dev/null | head -1)
    [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
fi

{
    echo "# gpu-run $(date -u +%FT%TZ)  binary: $BIN"
    echo "# LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    uname -a; nproc; free -g | head -2
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,power.limit --format=csv
} 2>&1 | tee "$OUT/nvidia-smi.txt" | tee -a "$LOG"

if [ ! -x "$BIN" ]; then
    chmod +x "$BIN" 2>/dev/null || { echo "missing binary $BIN" | tee -a "$LOG"; exit 2; }
fi
ldd "$BIN" 2>&1 | tee -a "$LOG"

status=0
# section:timeout_seconds (the default sum stays at 540 s, under the device
# call's 600 s); SECTIONS overrides the list. `correct` always runs first.
SECTIONS=${SECTIONS:-"correct:70 throughput:120 recovery:220 threshold:40 launch:30 alloc:30 prefetch:30"}
case "$SECTIONS" in
    correct*) ;;
    *) SECTIONS="correct:70 $SECTIONS" ;;
esac
for entry in $SECTIONS; do
    section=${entry%%:*}
    limit=${entry##*:}
    echo "=== section $section (timeout ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$BIN" "$section" >>"$LOG" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "TABLE|$section: exit code $rc$([ "$rc" -eq 124 ] && echo ' (TIMEOUT)')" >>"$LOG"
    fi
    echo "=== section $section exit $rc" | tee -a "$LOG"
done

grep '^TABLE|' "$LOG" | cut -c7- >"$SUMMARY"
echo
echo "==================== GPU merge summary (full log: $LOG)"
grep -E '^(device|ptxas|ok|MISMATCH|SECTION|recovery log|session|device copy|== .* took)' "$LOG" | tail -n 90
echo "--------------------"
cat "$SUMMARY"
exit $status
