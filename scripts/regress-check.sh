#!/usr/bin/env bash
# Instruction-count regression gate for CI (docs/benchmarks.md, "Regression gate").
#
# Builds `mmsb-regress` (release), runs each scenario of the key paths under
# `valgrind --tool=callgrind`, counting only the scenario's entry function,
# and compares the counts with regress/baseline.json. Fails (exit 1) when a
# gated scenario needs more than the threshold (10%) more instructions.
#
#   scripts/regress-check.sh                 # check
#   scripts/regress-check.sh --update        # re-pin the baseline (then commit it)
#   scripts/regress-check.sh --threshold 5   # other options go to `mmsb-regress gate`
#
# Without valgrind it prints a skip message and exits 0.
set -euo pipefail

if ! command -v valgrind >/dev/null 2>&1; then
    echo "regress-check: SKIPPED: valgrind is not installed, so instruction counts cannot be measured" \
        "(apt-get install valgrind to enable the gate)."
    exit 0
fi
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
started=$SECONDS
cargo build --release --locked -p mmsb-regress --bin mmsb-regress
built=$SECONDS

out_dir="$(mktemp -d "${TMPDIR:-/tmp}/mmsb-regress.XXXXXX")"
trap 'rm -rf "$out_dir"' EXIT

status=0
"$target_dir/release/mmsb-regress" gate --baseline regress/baseline.json --out-dir "$out_dir" "$@" || status=$?
echo "regress-check: build $((built - started)) s, measurement $((SECONDS - built)) s"
exit "$status"
