"""V8's heap limit for a Node process, from its flags (command line and NODE_OPTIONS) or V8's default.

V8's heap_size_limit is the old-generation limit plus the young generation (3 semispaces: two for
the scavenger, one for the new large-object space). Measured against `v8.getHeapStatistics()` of
Node 18 and 20 on x64: `--max-old-space-size=N` gives N MiB + 3 x 16 MiB, `--max-semi-space-size=S`
replaces the 16 MiB. Without a flag, V8 sizes the old generation from physical memory: a quarter of
it times two (pointer size / 4), at most 2 GiB, or 4 GiB on machines with 16 GiB or more (Node 18
and 20 look at the machine, not at a cgroup limit: a container's limit does not lower it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HeapLimit", "heap_limit", "node_flags"]

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_SEMI_SPACE = 16 * MIB
_OLD_FLAGS = ("--max-old-space-size", "--max_old_space_size")
_SEMI_FLAGS = ("--max-semi-space-size", "--max_semi_space_size")


@dataclass(frozen=True, slots=True)
class HeapLimit:
    bytes: int
    source: str  # "flag" (the process's own --max-old-space-size) or "default"


def _flag_value(args: Sequence[str], names: tuple[str, ...]) -> float | None:
    value: float | None = None
    for a in args:
        for n in names:
            # only --flag=value: node refuses "--max-old-space-size 512" ("illegal value")
            if a.startswith(n + "="):
                raw = a[len(n) + 1:]
                try:
                    v = float(raw)
                except ValueError:
                    continue
                if 0 < v < 1 << 30:
                    value = v  # the last one wins, as in V8
    return value


def node_flags(cmdline: Sequence[str], environ: bytes) -> list[str]:
    """NODE_OPTIONS first, then the command line's options before the script (V8 reads both)."""
    flags: list[str] = []
    for item in environ.split(b"\0"):
        if item.startswith(b"NODE_OPTIONS="):
            flags.extend(item[13:].decode("utf-8", "replace").split())
    for a in cmdline[1:]:
        if not a.startswith("-"):
            break  # the script: what follows are its own arguments
        flags.append(a)
    return flags


def heap_limit(flags: Sequence[str], physical_memory: int) -> HeapLimit:
    semi = _flag_value(flags, _SEMI_FLAGS)
    young = 3 * (int(semi * MIB) if semi else DEFAULT_SEMI_SPACE)
    old = _flag_value(flags, _OLD_FLAGS)
    if old is not None:
        return HeapLimit(int(old * MIB) + young, "flag")
    cap = 4 * GIB if physical_memory >= 16 * GIB else 2 * GIB
    old_default = max(256 * MIB, min(physical_memory // 4 * 2, cap))
    return HeapLimit(old_default + young, "default")
