#!/usr/bin/env bash
# Side-by-side KV benchmark of mmsb against redb, LMDB (heed), fjall and
# SQLite (rusqlite): the tables and chart of docs/benchmarks.md, section
# "Against redb, LMDB, fjall, SQLite".
#
#   scripts/compare.sh                         # N = 1,000,000 (the recorded run)
#   scripts/compare.sh --entries 200000        # smaller N
#   scripts/compare.sh --engines mmsb,lmdb     # a subset, in column order
#   MMSB_COMPARE_DIR=/data scripts/compare.sh  # databases elsewhere (real disk, not tmpfs)
#
# Writes compare/results/<date>.md, compare/results/<date>.json and
# docs/compare-kv.svg, and prints the table. compare/ is its own Cargo
# workspace (so the root workspace never builds the other engines); this
# builds it in release mode with its own Cargo.lock. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --manifest-path compare/Cargo.toml --bin mmsb-compare

target_dir="${CARGO_TARGET_DIR:-compare/target}"
export MMSB_COMPARE_COMMAND="scripts/compare.sh${*:+ $*}"
exec "$target_dir/release/mmsb-compare" \
    --results-dir compare/results \
    --chart docs/compare-kv.svg \
    "$@"
