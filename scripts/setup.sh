#!/usr/bin/env bash
# Idempotent setup for a Debian/Ubuntu host, run as root:
#   system packages, kernel headers for bcc, tracefs, the virtualenv and the package itself.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${NATIVEWATCH_VENV:-$ROOT/.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run as root (apt, /lib/modules links and BPF need it)"; exit 1
fi

# libc6-dbg: Debian's libc.so.6 keeps only its exported symbols; the separate debug file (found by
# build id under /usr/lib/debug/.build-id) names its internal functions, e.g. the memset variant a
# page-fault stack starts in, which the agent's resident-growth stacks rely on.
APT_PKGS=(python3 python3-venv python3-dev python3-bpfcc bpfcc-tools linux-headers-amd64
          build-essential libelf-dev tmux openssl util-linux binutils libc6-dbg
          libjemalloc2 google-perftools prometheus golang-go openjdk-17-jdk-headless)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles its programs against kernel headers. The running kernel often has no package of its
# own (cloud/VM kernels); uprobe and tracepoint programs only need generic headers, so point
# /lib/modules/$(uname -r)/{build,source} at Debian's linux-headers-*-amd64/-common when absent.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build/include" ]; then
    amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$amd64" ] && [ -n "$common" ]; then
        log "linking $MODDIR/build -> $amd64, source -> $common (no headers for $KREL)"
        mkdir -p "$MODDIR"
        ln -sfn "$amd64" "$MODDIR/build"
        ln -sfn "$common" "$MODDIR/source"
    else
        log "WARNING: no kernel headers found under /usr/src; eBPF features will be unavailable"
    fi
fi

if [ ! -e /sys/kernel/tracing/events ] && [ -d /sys/kernel/tracing ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || log "WARNING: could not mount tracefs"
fi
if [ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi

# bcc's Python module lives in Debian's interpreter's dist-packages: build the venv from it.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    log "creating virtualenv $VENV from /usr/bin/python3 (--system-site-packages)"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.nativewatch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing nativewatch into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]"
    touch "$stamp"
fi
# The in-process allocation sampler (profile --via inject): a C shared object built next to its Python
# side; rebuilt when its source is newer.
sampler=nativewatch/inject/nwsampler.so
if [ ! -f "$sampler" ] || [ nativewatch/inject/nwsampler.c -nt "$sampler" ] \
        || [ nativewatch/inject/build-sampler.sh -nt "$sampler" ]; then
    log "building $sampler"
    sh nativewatch/inject/build-sampler.sh "$sampler"
fi
log "ready: $VENV/bin/nativewatch"
