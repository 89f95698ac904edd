#!/usr/bin/env bash
# The container image's build and start-up steps, one subcommand per Dockerfile RUN (and the
# ENTRYPOINT), so that tests/test_deploy_image.py can run exactly these steps on a host without a
# container engine, in the Dockerfile's order, into a temporary prefix.
#
#   image-steps.sh apt build|runtime      Debian packages of a stage (NW_APT_MODE=check: only verify
#                                         they are installed, for hosts that already have them)
#   image-steps.sh install SRC PREFIX     venv at PREFIX/venv (sees Debian's bcc), the project from SRC,
#                                         the BPF C sources next to the package
#   image-steps.sh kernel-headers PREFIX  generic Debian kernel headers copied to PREFIX/kernel-headers:
#                                         the fallback when the node has none to mount
#   image-steps.sh strip PREFIX           drop pip/setuptools, caches and bytecode from the venv
#   image-steps.sh finalize PREFIX        runtime stage: unprivileged user, /lib/modules redirected to a
#                                         writable place, no build tools, apt lists removed
#   image-steps.sh verify PREFIX          fail if the prefix holds a compiler/build tool or lacks the CLI
#   image-steps.sh entrypoint PREFIX ARGS pick kernel headers (the node's if mounted, else the
#                                         fallback), then exec `nativewatch ARGS`
set -euo pipefail
log() { printf '[image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Build stage: an interpreter that can make a venv. Runtime stage: the interpreter, Debian's bcc
# (python module + libbcc + its LLVM/clang libraries, needed at run time to compile the probes) and CA
# certificates for the API server. No compiler, make or pip in the runtime stage.
APT_BUILD=(python3 python3-venv ca-certificates linux-headers-amd64 gcc)
APT_RUNTIME=(python3 python3-bpfcc ca-certificates)

step_apt() {
    local stage=${1:?build|runtime}
    local -a pkgs
    case $stage in
        build) pkgs=("${APT_BUILD[@]}") ;;
        runtime) pkgs=("${APT_RUNTIME[@]}") ;;
        *) die "unknown stage $stage" ;;
    esac
    if [ "${NW_APT_MODE:-install}" = check ]; then
        local missing=()
        for p in "${pkgs[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] || die "not installed: ${missing[*]}"
        log "apt $stage: all installed (${pkgs[*]})"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    rm -rf /var/lib/apt/lists/*
    log "apt $stage: installed ${pkgs[*]}"
}

venv_purelib() {
    "$1/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

step_install() {
    local src=${1:?SRC} prefix=${2:?PREFIX}
    [ -f "$src/pyproject.toml" ] || die "$src is not the project"
    mkdir -p "$prefix"
    # --system-site-packages: Debian's bcc module lives in the system interpreter's dist-packages.
    /usr/bin/python3 -m venv --system-site-packages "$prefix/venv"
    "$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check "$src"
    # The BPF programs are C sources compiled at run time; the loader (nativewatch/sources/bpf.py)
    # looks for them in $NATIVEWATCH_BPF_DIR, else in a "bpf" directory beside the package's parent
    # (site-packages/bpf).
    local purelib
    purelib=$(venv_purelib "$prefix")
    mkdir -p "$purelib/bpf"
    cp "$src"/bpf/*.c "$src"/bpf/*.h "$purelib/bpf/" 2>/dev/null || cp "$src"/bpf/*.c "$purelib/bpf/"
    # The in-process sampler (profile --via inject) is compiled here, in the build stage, beside its
    # Python side; the runtime stage gets the object, not the compiler.
    sh "$src/nativewatch/inject/build-sampler.sh" "$purelib/nativewatch/inject/nwsampler.so"
    log "installed $("$prefix/venv/bin/nativewatch" --version) into $prefix/venv"
}

step_kernel_headers() {
    local prefix=${1:?PREFIX} src_root=${NW_USR_SRC:-/usr/src}
    local amd64 common
    amd64=$(ls -d "$src_root"/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    common=$(ls -d "$src_root"/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$amd64" ] && [ -n "$common" ] || die "no linux-headers-*-amd64/-common under $src_root"
    mkdir -p "$prefix/kernel-headers"
    # -a keeps the relative symlinks from the -amd64 tree into the -common tree.
    cp -a "$amd64" "$common" "$prefix/kernel-headers/"
    log "fallback kernel headers: $(basename "$amd64") + $(basename "$common")"
}

step_strip() {
    local prefix=${1:?PREFIX}
    "$prefix/venv/bin/python" -m pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true
    rm -rf "$prefix/venv/share" 2>/dev/null || true
    # Bytecode now: the root filesystem is read-only at run time.
    "$prefix/venv/bin/python" -m compileall -q "$(venv_purelib "$prefix")" >/dev/null || true
    log "stripped $prefix"
}

step_finalize() {
    local prefix=${1:?PREFIX} root=${NW_ROOT:?set NW_ROOT=/ in the image build (a host test points it elsewhere)}
    root=${root%/}
    # The image runs as an unprivileged user by default (CLI use: `nativewatch evidence show`,
    # `snapshot` of own processes). The node agent needs uid 0 plus its capabilities: the DaemonSet
    # sets runAsUser: 0 and adds exactly those (deploy/base/daemonset.yaml).
    if [ -z "$root" ] && ! getent passwd nativewatch >/dev/null; then
        useradd --system --uid 10001 --user-group --home-dir /var/lib/nativewatch --no-create-home \
            --shell /usr/sbin/nologin nativewatch
    fi
    # The root filesystem is read-only at run time and the node's /lib/modules is mounted at
    # /host/lib/modules, so /lib/modules points into /tmp where the entrypoint links the headers.
    mkdir -p "$root/lib"
    if [ ! -L "$root/lib/modules" ]; then
        rm -rf "$root/lib/modules"
        ln -s /tmp/nativewatch/lib-modules "$root/lib/modules"
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin 2>/dev/null || true
    step_verify "$prefix"
}

step_verify() {
    local prefix=${1:?PREFIX}
    local bad
    bad=$(find "$prefix" -type f \( -name 'gcc*' -o -name 'cc' -o -name 'make' -o -name 'pip' -o -name 'pip3*' \
            -o -name 'ld' -o -name 'as' \) -perm -u+x 2>/dev/null | head -n5)
    [ -z "$bad" ] || die "build tools left in $prefix: $bad"
    [ -x "$prefix/venv/bin/nativewatch" ] || die "no nativewatch CLI in $prefix"
    [ -z "$(ls "$prefix/venv/bin" | grep -E '^pip' || true)" ] || die "pip left in $prefix/venv/bin"
    ls "$(venv_purelib "$prefix")"/bpf/*.c >/dev/null 2>&1 || die "BPF sources missing in $prefix"
    log "verified $prefix"
}

link_headers() {
    local prefix=$1 modules=${NW_MODULES_DIR:-/lib/modules} host=${NW_HOST_MODULES:-/host/lib/modules}
    local krel dir build source
    krel=$(uname -r)
    dir="$modules/$krel"
    mkdir -p "$dir" 2>/dev/null || { log "cannot write $dir: eBPF will use whatever headers are there"; return; }
    build=$(readlink -f "$host/$krel/build" 2>/dev/null || true)
    source=$(readlink -f "$host/$krel/source" 2>/dev/null || true)
    if [ -n "$build" ] && [ -e "$build/include" ]; then
        # The node's own headers (its /usr/src is mounted at the same path, so links resolve).
        ln -sfn "$build" "$dir/build"
        if [ -n "$source" ] && [ -e "$source" ]; then ln -sfn "$source" "$dir/source"; else ln -sfn "$build" "$dir/source"; fi
        log "kernel headers: node's ($build)"
        return
    fi
    # Generic Debian headers: enough for uprobe and tracepoint programs, which read no kernel structs.
    build=$(ls -d "$prefix"/kernel-headers/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    source=$(ls -d "$prefix"/kernel-headers/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$build" ] && [ -n "$source" ]; then
        ln -sfn "$build" "$dir/build"
        ln -sfn "$source" "$dir/source"
        log "kernel headers: packaged fallback ($(basename "$build")) for kernel $krel"
    else
        log "no kernel headers: eBPF sources will be unavailable (nativewatch doctor says so)"
    fi
}

step_entrypoint() {
    local prefix=${1:?PREFIX}
    shift
    link_headers "$prefix"
    export NATIVEWATCH_BPF_DIR="${NATIVEWATCH_BPF_DIR:-$(venv_purelib "$prefix")/bpf}"
    exec "$prefix/venv/bin/nativewatch" "$@"
}

cmd=${1:-}
shift || true
case $cmd in
    apt) step_apt "$@" ;;
    install) step_install "$@" ;;
    kernel-headers) step_kernel_headers "$@" ;;
    strip) step_strip "$@" ;;
    finalize) step_finalize "$@" ;;
    verify) step_verify "$@" ;;
    entrypoint) step_entrypoint "$@" ;;
    *) die "usage: $0 apt|install|kernel-headers|strip|finalize|verify|entrypoint ..." ;;
esac
