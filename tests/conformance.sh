#!/usr/bin/env bash
# Autobahn|Testsuite (the kit in ../shared/conformance/) against /echo of the
# server, with permessage-deflate on. Skipped, with a line saying so,
# where the kit is not beside this checkout.
#
#   bash tests/conformance.sh           # what tests/run.sh runs (CI): every case of
#                                       # groups 1-7, 9, 10 and the deflate groups in QUICK_DEFLATE
#   bash tests/conformance.sh --full    # all 517 cases against the release build (~25 min here)
#   CONFORMANCE_CASES='12.1.*' bash tests/conformance.sh   # chosen cases
#
# The deflate cases are slow in the suite itself (wstest is CPU-bound in
# Python 2), which is why CI runs a sample of them; benches/README.md has the
# full run's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${CONFORMANCE_KIT:-../shared/conformance}
if [ ! -f "$KIT/run.sh" ]; then
    echo "conformance: skipped: no Autobahn|Testsuite kit at $KIT"
    exit 0
fi
# Two deflate groups, one of each kind of offer: 12.1 (the default offer,
# messages of 16 B to 128 KiB) and 13.3 (the client restricts the server's
# window to 8 bits: stored blocks). Against the debug build each takes about
# 6 minutes here, the server's debug code being the slower side.
QUICK_DEFLATE='12.1.*,13.3.*'
CASES=${CONFORMANCE_CASES:-'1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,'"$QUICK_DEFLATE"}
timeout=1800
BIN=${SHARDCAST_BIN:-target/debug/shardcast}
if [ "${1:-}" = "--full" ]; then
    CASES='*'
    timeout=4500
    BIN=${SHARDCAST_BIN:-target/release/shardcast}
    cargo build --quiet --release --bin shardcast
fi
[ -x "$BIN" ] || cargo build --quiet --bin shardcast
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
printf '[limits]\nmax_message_bytes = 33554432\n[compression]\nenabled = true\n[log]\nlevel = "warn"\n' > "$work/conf.toml"
"$BIN" --config "$work/conf.toml" --listen 127.0.0.1:0 --admin-listen '' --shards 1 > "$work/out" &
server=$!
for _ in $(seq 100); do
    grep -q 'listening on ws://' "$work/out" 2>/dev/null && break
    sleep 0.1
done
addr=$(sed -n 's|^listening on ws://||p' "$work/out" | head -1)
[ -n "$addr" ] || { echo "conformance: the server did not start" >&2; exit 1; }
CASES="$CASES" RUN_TIMEOUT=$timeout AGENT=shardcast bash "$KIT/run.sh" "ws://$addr/echo" "${CONFORMANCE_REPORT:-target/autobahn}"
