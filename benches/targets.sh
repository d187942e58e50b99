#!/usr/bin/env bash
# Runs every scenario of benches/README.md's results table against shardcast,
# the tokio baseline, the Node.js `ws` peer (when Node.js is present) and the
# uWebSockets peer (when built: bash benches/peers/uws/build.sh),
# interleaved, RUNS rounds each, and prints the medians. Server pinned to CPU
# 0 with one shard, generator to CPU 1 (a 2-core host; adjust the CPUs).
#
#   bash benches/targets.sh [OUT_DIR]       # ~25 minutes, ~35 with uWebSockets
#   NO_NODE=1 bash benches/targets.sh       # without the Node.js peer (the referee's rows)
#
# Needs: cargo build --release --bins. Installs the Node.js peer's packages
# (benches/peers/install.sh) when node is present.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-results}
mkdir -p "$OUT"
B=target/release
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
RUNS=${RUNS:-3}
PIN="taskset -c $SERVER_CPU"
SRV="$PIN $B/shardcast --listen 127.0.0.1:0 --shards 1 --config benches/server.toml"
BASE="$PIN $B/shardcast-baseline --listen 127.0.0.1:0 --threads 1"
GEN="taskset -c $GEN_CPU $B/shardcast-bench"

bash benches/peers/install.sh
NODE=(--no-node)
if [ -z "${NO_NODE:-}" ] && [ -f benches/peers/ws/node_modules/ws/package.json ] && command -v node >/dev/null; then
    NODE=(--node "$PIN node benches/peers/ws/server.mjs --listen 127.0.0.1:0")
fi
UWS=(--no-uws)
if [ -x benches/peers/uws/uws-peer ]; then
    UWS=(--uws "$PIN benches/peers/uws/uws-peer --listen 127.0.0.1:0")
fi

compare() { # name, scenario args...
    local name=$1; shift
    echo "== $name" >&2
    $GEN compare --rounds "$RUNS" --shardcast "$SRV" --baseline "$BASE" "${NODE[@]}" "${UWS[@]}" "$@" --json > "$OUT/$name.jsonl"
}

compare fanout-1k-sweep --windows 1,8,64,256 --scenario fanout --subscribers 1000 --max --duration 5 --warmup 1
compare fanout-10k --scenario fanout --subscribers 10000 --max --window 8 --duration 5 --warmup 1
compare fanout-rate --scenario fanout --subscribers 1000 --rate 50 --duration 10 --warmup 2
compare rooms --scenario rooms --clients 2000 --room-size 10 --msg-rate 10 --duration 10 --warmup 2
compare idle-19k --scenario idle --connections 19000 --topics 19000 --duration 10 --warmup 0
compare connect --scenario connect --concurrency 64 --duration 5 --warmup 1
compare echo --scenario echo --connections 64 --duration 5 --warmup 1
python3 benches/summarize.py "$OUT"
