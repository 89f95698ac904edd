"""V8's heap limit for a Node process, from its flags (command line and NODE_OPTIONS) and the memory
Node sizes V8 for.

Measured against `v8.getHeapStatistics().heap_size_limit` of Node 18, 20, 22, 23, 24 and 25 on x64,
on the whole 24 GiB machine and inside memory cgroups of 256 MiB to 20 GiB:

- The memory is the machine's, or the process's cgroup limit when that is lower (Node asks libuv for
  the constrained memory and takes the smaller).
- The old generation defaults to half of it, at least 256 MiB, at most 2 GiB, or 4 GiB when the memory
  is 16 GiB or more; `--max-old-space-size=N` replaces it with N MiB.
- The young generation is three semispaces (two for the scavenger, one for new large objects). A
  semispace defaults to 1 MiB while the *default* old generation is at most 256 MiB, else to that old
  generation / R rounded up to a power of two, at most S: R = 128 and S = 16 MiB before Node 24 (V8 13),
  R = 32 and S = 64 MiB from it. It follows the memory even when the old generation comes from the
  flag; `--max-semi-space-size=M` replaces it with M MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HeapLimit", "default_old_generation", "default_semi_space", "heap_limit", "node_flags"]

MIB = 1 << 20
GIB = 1 << 30
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


def _pow2_at_least(v: int) -> int:
    p = 1
    while p < v:
        p <<= 1
    return p


def default_old_generation(memory: int) -> int:
    cap = 4 * GIB if memory >= 16 * GIB else 2 * GIB
    return max(256 * MIB, min(memory // 2, cap))


def default_semi_space(memory: int, node_major: int | None) -> int:
    old = default_old_generation(memory)
    if old <= 256 * MIB:
        return MIB
    ratio, most = (32, 64 * MIB) if node_major is not None and node_major >= 24 else (128, 16 * MIB)
    return min(_pow2_at_least(-(-old // ratio)), most)


def heap_limit(flags: Sequence[str], memory: int, node_major: int | None = None) -> HeapLimit:
    """`memory`: what Node sizes V8 for (the machine's, or the cgroup limit when lower)."""
    semi = _flag_value(flags, _SEMI_FLAGS)
    young = 3 * (int(semi * MIB) if semi else default_semi_space(memory, node_major))
    old = _flag_value(flags, _OLD_FLAGS)
    if old is not None:
        return HeapLimit(int(old * MIB) + young, "flag")
    return HeapLimit(default_old_generation(memory) + young, "default")
