#!/usr/bin/env bash
# Runs every target of benches/README.md three times and prints the medians.
# Server pinned to CPU 0, generator to CPU 1 (a 2-core host); adjust CPUS.
#
#   bash benches/targets.sh [OUT_DIR]       # ~10 minutes
#
# Needs: cargo build --release --bins; redis-server for the cross-node rows.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-results}
mkdir -p "$OUT"
B=target/release
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
SRV="taskset -c $SERVER_CPU $B/shardcast --listen 127.0.0.1:0 --shards 1 --config benches/server.toml"
GEN="taskset -c $GEN_CPU $B/shardcast-bench"
RUNS=${RUNS:-3}

run() { # name, args...
    local name=$1; shift
    : > "$OUT/$name.jsonl"
    for i in $(seq "$RUNS"); do
        $GEN "$@" --json >> "$OUT/$name.jsonl"
    done
}

run fanout-1k fanout --spawn "$SRV" --subscribers 1000 --publishers 1 --payload 64 --max --duration 5 --warmup 1
run fanout-10k fanout --spawn "$SRV" --subscribers 10000 --publishers 1 --payload 64 --max --duration 5 --warmup 1
run rooms rooms --spawn "$SRV" --clients 2000 --room-size 10 --msg-rate 10 --duration 10 --warmup 2
run idle-19k idle --spawn "$SRV" --connections 19000 --duration 30 --warmup 0
run connect connect --spawn "$SRV" --concurrency 64 --duration 5 --warmup 1
run echo echo --spawn "$SRV" --connections 64 --duration 5 --warmup 1
$GEN compare --rounds "$RUNS" --shardcast "$SRV" \
    --baseline "taskset -c $SERVER_CPU $B/shardcast-baseline --listen 127.0.0.1:0 --threads 1" \
    --scenario fanout --subscribers 1000 --max --duration 5 --warmup 1 --json > "$OUT/compare-fanout.jsonl"
for s in echo connect; do
    $GEN compare --rounds "$RUNS" --shardcast "$SRV" \
        --baseline "taskset -c $SERVER_CPU $B/shardcast-baseline --listen 127.0.0.1:0 --threads 1" \
        --scenario $s --duration 5 --warmup 1 --json > "$OUT/compare-$s.jsonl"
done
python3 benches/summarize.py "$OUT"
