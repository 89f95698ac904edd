"""The runtime registry: which runtimes exist, in which order they are tried, and lookup by name.

Adding a runtime is one package implementing `Runtime` (nativewatch/runtimes/base.py) and one entry in
`_registry` below (with its import). The native view is the fallback and is never listed.
"""

from __future__ import annotations

from nativewatch.cpython.runtime import PYTHON
from nativewatch.go.runtime import GO
from nativewatch.jvm.runtime import JVM
from nativewatch.node.runtime import NODE
from nativewatch.runtimes.base import ProcessInfo, Runtime
from nativewatch.runtimes.native import NATIVE

__all__ = ["detect", "names", "register", "registered", "runtime_named", "unregister"]

# Detection order, first match wins: the JVM is recognised from its mappings before the executable is
# opened to look for Go (a Go program hosting libjvm through cgo counts as a JVM, as it always has).
_registry: list[Runtime] = [
    JVM,
    GO,
    NODE,
    PYTHON,
]


def registered() -> tuple[Runtime, ...]:
    """Every runtime, the native fallback last."""
    return (*_registry, NATIVE)


def names() -> tuple[str, ...]:
    return tuple(rt.name for rt in registered())


def register(rt: Runtime) -> None:
    """Add a runtime after the built-in ones (tests, out-of-tree runtimes)."""
    if rt.name in names():
        raise ValueError(f"runtime {rt.name!r} is already registered")
    _registry.append(rt)


def unregister(rt: Runtime) -> None:
    _registry.remove(rt)


def detect(info: ProcessInfo) -> Runtime:
    for rt in _registry:
        if rt.detect(info):
            return rt
    return NATIVE


def runtime_named(name: str) -> Runtime:
    """The runtime behind a breakdown's `runtime` value; the native fallback for a name no longer known."""
    for rt in _registry:
        if rt.name == name:
            return rt
    return NATIVE
