#!/usr/bin/env bash
# Runs every benchmark target of the workspace (criterion and plain-main ones)
# and collects criterion's medians into one file,
# benches/baselines/<date>-<short machine id>.json, with the machine
# (CPU model, cores, memory, kernel), the date, the git commit and rustc.
#
#   scripts/bench-all.sh                                   # full run (many minutes)
#   scripts/bench-all.sh --warm-up-time 1 --measurement-time 2   # quicker, noisier
#
# Arguments go to every benchmark binary (criterion's flags; plain-main
# benches ignore them). Honours CARGO_TARGET_DIR. Needs no jq or python: the
# JSON is assembled by `mmsb-regress collect-criterion`.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
date_iso="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
run_started="$(date +%s)"

# The collector first, so a build problem shows before the long run.
cargo build --release --locked -p mmsb-regress --bin mmsb-regress

cargo bench --workspace --locked --bench '*' -- "$@"

commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
    commit="$commit (dirty)"
fi

"$target_dir/release/mmsb-regress" collect-criterion \
    --criterion-dir "$target_dir/criterion" \
    --out-dir benches/baselines \
    --date "$date_iso" \
    --since "$run_started" \
    --git-commit "$commit" \
    --rustc "$(rustc -V)" \
    --bench-args "$*"
