#!/usr/bin/env bash
# Installs the comparison peers' packages (the Node.js `ws` server) when
# Node.js is present; `shardcast-bench compare` picks the peer up by itself.
#
#   bash benches/peers/install.sh
set -euo pipefail
cd "$(dirname "$0")/ws"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "benches/peers/install.sh: node/npm not found; compare runs without the Node.js peer" >&2
    exit 0
fi
if [ ! -f node_modules/ws/package.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
echo "benches/peers/install.sh: Node.js $(node --version), ws $(node -p 'require("./node_modules/ws/package.json").version')"
