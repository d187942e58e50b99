#!/usr/bin/env bash
# Autobahn|Testsuite (the kit in ../shared/conformance/) against /echo of the
# debug build, with permessage-deflate on. Skipped, with a line saying so,
# where the kit is not beside this checkout.
#
#   bash tests/conformance.sh           # what tests/run.sh runs (CI): every case of
#                                       # groups 1-7, 9, 10 and the deflate groups in QUICK_DEFLATE
#   bash tests/conformance.sh --full    # all 517 cases, 12.* and 13.* whole (~25 min here)
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
# One deflate group of each kind: 12.1 small messages and 12.5 large ones
# (default offer), 13.3 the client restricting the server's window to 8 bits
# (stored blocks), 13.7 several offers at once.
QUICK_DEFLATE='12.1.*,12.5.*,13.3.*,13.7.*'
CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,'"$QUICK_DEFLATE"
timeout=1500
if [ "${1:-}" = "--full" ]; then
    CASES='*'
    timeout=4500
fi
BIN=${SHARDCAST_BIN:-target/debug/shardcast}
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
