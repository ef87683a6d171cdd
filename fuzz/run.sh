#!/usr/bin/env bash
# Runs fuzz targets two at a time under `nice -n 19`, each for FUZZ_SECONDS
# (default 600): new inputs into fuzz/work/<target>, crashes into
# fuzz/artifacts/<target>/, logs into fuzz/work/logs/<target>.log (their last
# lines hold libFuzzer's final stats).
#
# The binaries are built once (`cargo fuzz build -a`: debug assertions and
# overflow checks on, AddressSanitizer) and copied to fuzz/work/bin, so that
# edits to the working tree during a run do not trigger rebuilds.
# FUZZ_NO_BUILD=1 reuses the binaries already in fuzz/work/bin; FUZZ_FLAGS adds
# libFuzzer flags (e.g. "-len_control=0" to try long inputs from the start).
# Usage: fuzz/run.sh [target...]   (no target: all of `cargo fuzz list`)
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
bin=fuzz/work/bin
mkdir -p fuzz/work/logs "$bin"
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
    nice -n 19 cargo +nightly fuzz build -a || exit 1
    for target in "${targets[@]}"; do
        cp "fuzz/target/x86_64-unknown-linux-gnu/release/$target" "$bin/"
    done
fi
run_one() {
    local target=$1 log="fuzz/work/logs/$1.log"
    mkdir -p "fuzz/work/$target" "fuzz/corpus/$target" "fuzz/artifacts/$target"
    echo "start $(date -u +%FT%TZ)" > "$log"
    nice -n 19 "$bin/$target" -artifact_prefix="fuzz/artifacts/$target/" \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=60 ${FUZZ_FLAGS:-} \
        "fuzz/work/$target" "fuzz/corpus/$target" >> "$log" 2>&1
    echo "exit $? end $(date -u +%FT%TZ)" >> "$log"
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run_one "${targets[i]}" &
    if ((i + 1 < ${#targets[@]})); then run_one "${targets[i + 1]}" & fi
    wait
done
