#!/usr/bin/env bash
# Builds the uWebSockets peer (benches/peers/uws/uws-peer) that
# `shardcast-bench compare` runs beside shardcast when it exists.
# uWebSockets (Apache-2.0) is not vendored: this script clones the pinned
# commits, or builds against checkouts you point it at:
#
#   bash benches/peers/uws/build.sh
#   UWS_SRC=~/src/uWebSockets USOCKETS_SRC=~/src/uSockets bash benches/peers/uws/build.sh
#
# Needs git (when cloning), make, g++ with C++20.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
UWS_COMMIT=66dcff3dd48f0c19dd1703426365d062039321d0       # uNetworking/uWebSockets, 2026-08-18
USOCKETS_COMMIT=86097c490263ab662d62e8e7b541390bdec7d149  # uNetworking/uSockets, its submodule there
work="$here/build"
mkdir -p "$work"

fetch() { # name, commit, url, override
    local dir="$work/$1"
    if [ -n "$4" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        (cd "$4" && git archive "$2" 2>/dev/null || git archive HEAD) | tar -x -C "$dir"
    elif [ ! -d "$dir" ]; then
        git clone --quiet "$3" "$dir"
        git -C "$dir" checkout --quiet "$2"
    fi
}
fetch uWebSockets "$UWS_COMMIT" https://github.com/uNetworking/uWebSockets.git "${UWS_SRC:-}"
fetch uSockets "$USOCKETS_COMMIT" https://github.com/uNetworking/uSockets.git "${USOCKETS_SRC:-}"

make -s -C "$work/uSockets" >/dev/null 2>&1 || { echo "benches/peers/uws/build.sh: building uSockets failed" >&2; exit 1; }
g++ -std=c++20 -O3 -DLIBUS_NO_SSL -DUWS_NO_ZLIB \
    -I "$work/uWebSockets/src" -I "$work/uSockets/src" \
    "$here/server.cpp" "$work/uSockets/uSockets.a" -o "$here/uws-peer"
echo "benches/peers/uws/build.sh: built $here/uws-peer"
