#!/usr/bin/env bash
# A flamegraph of one row of the SQL benchmark (benches/sql_vs_sqlite.rs):
# criterion runs the row for --profile-time seconds under `perf record`.
#
#   scripts/flamegraph-sql.sh bulk_insert_1000000_rows/mmsb
#   MMSB_SQL_BENCH_ROWS=200000 scripts/flamegraph-sql.sh range_scans --out /tmp/fg
#
# The first argument is criterion's filter (a substring of the row's id);
# every row it matches is profiled together into one SVG. Needs `perf` and
# inferno (installed into tools/ through cargo on the first run, as
# scripts/flamegraph-phases.sh does). The setup of the row (loading the
# table) runs before criterion's profiling starts but is sampled too: read
# the graph under `Bencher::iter`.
set -euo pipefail
cd "$(dirname "$0")/.."

filter="${1:?usage: scripts/flamegraph-sql.sh FILTER [--out DIR] [--seconds S]}"
shift
out=docs/flamegraphs
seconds=10
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/flamegraph-tools.sh
. scripts/flamegraph-tools.sh

# `cargo bench --no-run` prints the bench executable's path.
binary="$(cargo bench --locked --bench sql_vs_sqlite --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*sql_vs_sqlite[^"]*\)".*/\1/p' | tail -1)"
[[ -x "$binary" ]] || { echo "could not build the sql_vs_sqlite bench" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/folded"
slug="$(echo "$filter" | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9]\+/-/g' -e 's/^-//' -e 's/-$//')"
rows="${MMSB_SQL_BENCH_ROWS:-1000000}"

perf record -q -F 499 --call-graph dwarf,16384 -o "$work/perf.data" -- \
    "$binary" --bench --profile-time "$seconds" "$filter"
perf script -i "$work/perf.data" 2>/dev/null \
    | "$tools_bin/inferno-collapse-perf" --all >"$out/folded/sql-$slug.folded"
"$tools_bin/inferno-flamegraph" --title "SQL bench: $filter ($rows rows, ${seconds} s of criterion --profile-time)" \
    --width 1600 <"$out/folded/sql-$slug.folded" >"$out/sql-$slug.svg"
echo "$filter -> $out/sql-$slug.svg (binary $binary; commit $(git rev-parse --short HEAD); $(date -u +%FT%TZ))"
