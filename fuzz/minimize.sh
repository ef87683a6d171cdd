#!/usr/bin/env bash
# Folds what fuzz/run.sh found (fuzz/work/<target>) into the kept corpus
# fuzz/corpus/<target>: libFuzzer's set-cover merge keeps the smallest set of
# inputs that covers every feature of both, then the set is capped at
# MAX_FILES files (default 200) and MAX_BYTES (default 2 MB), smallest first;
# the hand-written seeds (seed-*) are always kept.
# Usage: fuzz/minimize.sh [target...]   (no target: all binaries in fuzz/work/bin)
set -uo pipefail
cd "$(dirname "$0")/.."
max_files=${MAX_FILES:-200}
max_bytes=${MAX_BYTES:-2000000}
bin=fuzz/work/bin
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(ls "$bin"); fi
for target in "${targets[@]}"; do
    merged=$(mktemp -d)
    mkdir -p "fuzz/work/$target"
    nice -n 19 "$bin/$target" -set_cover_merge=1 "$merged" "fuzz/corpus/$target" "fuzz/work/$target" \
        > "fuzz/work/logs/$target.merge.log" 2>&1
    kept=$(mktemp -d)
    cp fuzz/corpus/"$target"/seed-* "$kept"/ 2>/dev/null
    total=$(du -cb "$kept" | tail -1 | cut -f1)
    count=$(ls "$kept" | wc -l)
    while read -r size file; do
        ((count >= max_files || total + size > max_bytes)) && break
        cp "$merged/$file" "$kept/$file"
        count=$((count + 1)); total=$((total + size))
    done < <(cd "$merged" && find . -type f -printf '%s %f\n' | sort -n)
    rm -rf "fuzz/corpus/$target" "$merged"
    mv "$kept" "fuzz/corpus/$target"
    chmod 755 "fuzz/corpus/$target"
    echo "$target: $count files, $total bytes"
done
