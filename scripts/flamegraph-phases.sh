#!/usr/bin/env bash
# Flamegraphs of the KV comparison's phases, one SVG per phase, for one engine
# (default mmsb): docs/benchmarks.md, "Where mmsb is not fastest".
#
#   scripts/flamegraph-phases.sh                       # mmsb, N = 1,000,000, into docs/flamegraphs/
#   scripts/flamegraph-phases.sh --engine lmdb         # another engine, same phases
#   scripts/flamegraph-phases.sh --entries 200000 --out /tmp/fg
#
# Needs Linux `perf` (kernel.perf_event_paranoid <= 2 for a user's own
# process) and inferno's collapse/render tools; the tools install through
# cargo into tools/ (ignored by git) on the first run:
#   cargo install inferno --locked --root tools
#
# How: the comparison's child process (one engine, one run) prints the end of
# every phase on CLOCK_MONOTONIC (MMSB_COMPARE_MONOTONIC=1), `perf record -k
# CLOCK_MONOTONIC` stamps its samples on the same clock, and `perf script
# --time START,END` cuts each phase's samples out. Every thread of the
# process is sampled (background workers included), so a phase's graph shows
# what ran while it was being timed, not only its own calls.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=mmsb
entries=1000000
out=docs/flamegraphs
frequency_hz=499
while [[ $# -gt 0 ]]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --entries) entries="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --frequency-hz) frequency_hz="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/flamegraph-tools.sh
. scripts/flamegraph-tools.sh

cargo build --release --locked --manifest-path compare/Cargo.toml --bin mmsb-compare
target_dir="${CARGO_TARGET_DIR:-compare/target}"
binary="$target_dir/release/mmsb-compare"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/db"

MMSB_COMPARE_MONOTONIC=1 perf record -q -k CLOCK_MONOTONIC -F "$frequency_hz" \
    --call-graph dwarf,16384 -o "$work/perf.data" -- \
    "$binary" --child "$engine" --entries "$entries" --dir "$work/db" \
    >"$work/report.json" 2>"$work/progress.txt"

# Progress lines: "<engine>: <phase label>: <value> [ended at CLOCK_MONOTONIC <s> s]",
# after one "<engine>: workload starts [at CLOCK_MONOTONIC <s> s]" line (data
# generation is over then): each phase runs from the previous mark to its own.
previous_end="$(sed -n 's/.*workload starts \[at CLOCK_MONOTONIC \([0-9.]*\) s\].*/\1/p' "$work/progress.txt")"
[[ -n "$previous_end" ]] || { echo "no start mark in the child's output" >&2; cat "$work/progress.txt" >&2; exit 1; }
event="$(perf evlist -i "$work/perf.data" 2>/dev/null | head -1)"
# The folded stacks (text, one line per distinct stack) stay next to the
# SVGs under folded/ for `inferno-diff-folded` and grep; they are not docs.
folded_dir="$out/folded"
mkdir -p "$folded_dir"
summary="$out/$engine-phases.txt"
: >"$summary"
while IFS= read -r line; do
    [[ "$line" =~ ^[^:]+:\ (.+):\ (.+)\ \[ended\ at\ CLOCK_MONOTONIC\ ([0-9.]+)\ s\]$ ]] || continue
    label="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    end="${BASH_REMATCH[3]}"
    slug="$(echo "$label" | tr 'A-Z' 'a-z' | sed -e 's/([^)]*)//g' -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')"
    svg="$out/$engine-$slug.svg"
    perf script -i "$work/perf.data" --time "$previous_end,$end" 2>/dev/null \
        | "$tools_bin/inferno-collapse-perf" --all >"$folded_dir/$engine-$slug.folded"
    weight="$(awk '{ s += $NF } END { printf "%d\n", s }' "$folded_dir/$engine-$slug.folded")"
    if [[ "$weight" -gt 0 ]]; then
        "$tools_bin/inferno-flamegraph" --title "$engine: $label ($value), N = $entries" \
            --width 1600 <"$folded_dir/$engine-$slug.folded" >"$svg"
        echo "$label: $value; sampled weight $weight ($event) -> $svg" | tee -a "$summary"
    fi
    previous_end="$end"
done <"$work/progress.txt"
echo "binary: $binary; commit $(git rev-parse --short HEAD); $(date -u +%FT%TZ)" >>"$summary"
