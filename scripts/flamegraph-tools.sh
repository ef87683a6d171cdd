# Sourced by scripts/flamegraph-*.sh (from the repository root): checks for
# Linux `perf`, installs inferno's collapse/render tools through cargo into
# tools/ (ignored by git) on the first run, and sets `tools_bin`.
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
tools_bin="$PWD/tools/bin"
if [[ ! -x "$tools_bin/inferno-flamegraph" ]]; then
    cargo install inferno --locked --root tools
fi
