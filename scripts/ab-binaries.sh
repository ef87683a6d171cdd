#!/usr/bin/env bash
# Alternates release binaries of two (or more) builds on one machine, for
# before/after comparisons on a quiet host (how the device-host A/B runs in
# docs/benchmarks.md were made). Each ARG is NAME=PATH of a built binary.
#
#   scripts/ab-binaries.sh kv 3 base=/tmp/compare-base new=/tmp/compare-new
#   scripts/ab-binaries.sh sql 3 base=/tmp/sql_vs_sqlite-base new=/tmp/sql_vs_sqlite-new
#
# kv:  mmsb-compare binaries, mmsb only, one run each round (phase rows printed);
# sql: sql_vs_sqlite bench executables (`cargo bench --no-run` prints them),
#      the bulk_insert and range_scans rows at MMSB_SQL_BENCH_ROWS (1M default).
# AB_PIN="taskset -c 0,1" pins every run to two cores (to resemble a 2-vCPU
# machine on a bigger host).
set -euo pipefail
kind="${1:?usage: scripts/ab-binaries.sh kv|sql ROUNDS NAME=PATH...}"
rounds="${2:?rounds}"
shift 2
pin=(${AB_PIN:-})
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export MMSB_SQL_BENCH_ROWS="${MMSB_SQL_BENCH_ROWS:-1000000}"
for round in $(seq 1 "$rounds"); do
    for arg in "$@"; do
        name="${arg%%=*}"
        binary="${arg#*=}"
        echo "== $name, round $round"
        case "$kind" in
            kv)
                "${pin[@]}" "$binary" --engines mmsb --runs 1 --dir "$work" \
                    --results-dir "$work/results" --chart "$work/chart.svg" 2>&1 \
                    | grep -E '^\| (bulk|individual|batch|len|random|range|removals|file size)'
                ;;
            sql)
                for row in bulk_insert range_scans; do
                    "${pin[@]}" "$binary" --bench --warm-up-time 1 --measurement-time 4 "$row" 2>&1 \
                        | grep -E '^sql/|time:'
                done
                ;;
            *) echo "unknown kind: $kind" >&2; exit 2 ;;
        esac
    done
done
