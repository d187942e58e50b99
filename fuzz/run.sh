#!/usr/bin/env bash
# Builds the fuzz targets and runs each of them for a while on its committed
# seeds (fuzz/seeds/<target>/) plus its growing corpus (fuzz/corpus/<target>/,
# not committed). A crash fails the run; its input is left in
# fuzz/artifacts/<target>/ (reproduce: fuzz/run.sh --reproduce TARGET FILE).
#
#   bash fuzz/run.sh                 # every target, 20 s each (what tests/run.sh runs)
#   bash fuzz/run.sh 1800 frames     # one target for 30 minutes
#   FUZZ_RUNS=10000000 bash fuzz/run.sh 0 resp   # one target for 10 million executions
#   bash fuzz/run.sh --reproduce frames fuzz/artifacts/frames/crash-…
#
# Needs cargo-fuzz (installed here from crates.io when missing) and the
# machine's stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take the
# sanitizer flags cargo fuzz passes (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz/run.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (crates.io)"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
TARGETS=$(cargo fuzz list)
# -O: optimized, as fast as the server runs; debug assertions stay on, so an
# overflow in arithmetic on hostile lengths is a crash here, not a wrap.
BUILD=(-O --debug-assertions)

if [ "${1:-}" = "--reproduce" ]; then
    cargo fuzz run "${BUILD[@]}" "$2" "$3"
    exit
fi
seconds=${1:-20}
shift || true
[ $# -gt 0 ] && TARGETS="$*"

cargo fuzz build "${BUILD[@]}"
failed=0
for target in $TARGETS; do
    mkdir -p "corpus/$target"
    limit=(-max_total_time="$seconds")
    [ "$seconds" = 0 ] && limit=()
    [ -n "${FUZZ_RUNS:-}" ] && limit+=(-runs="$FUZZ_RUNS")
    log="$(mktemp)"
    # -rss_limit_mb: a parser that balloons on hostile input is a finding too.
    if cargo fuzz run "${BUILD[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
        echo "fuzz: $target: ${execs} executions, coverage ${cov}, no crash"
    else
        echo "fuzz: $target: FAILED (crash input in fuzz/artifacts/$target/)" >&2
        tail -n 40 "$log" >&2
        failed=$((failed + 1))
    fi
    rm -f "$log"
done
[ "$failed" = 0 ] || { echo "fuzz: $failed target(s) crashed" >&2; exit 1; }
