"""The Go heap from the address layout: the runtime reserves whole 64 MiB arenas for it.

Pure: a `ManagedHeap` for the runtime-neutral attribution, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from nativewatch.attribute import is_private_anon
from nativewatch.sources.procfs import Mapping

__all__ = ["GO_ARENA_BYTES", "GoArenas", "arena_indices"]

# Go: heapArenaBytes on linux/amd64 (and every 64-bit Linux port).
GO_ARENA_BYTES = 64 << 20


def arena_indices(ms: Sequence[Mapping], exclude: set[int]) -> set[int]:
    """Mappings of the Go heap: runs of contiguous private anonymous mappings that start and end on
    64 MiB arena boundaries (the runtime reserves whole arenas, then maps used parts read-write).

    The runtime's other big reservations (page-allocator summaries, arena index) are not
    arena-aligned, and a glibc heap (same shape) has been excluded by the caller.
    """
    out: set[int] = set()
    run: list[int] = []

    def close() -> None:
        if run and ms[run[0]].start % GO_ARENA_BYTES == 0 and ms[run[-1]].end % GO_ARENA_BYTES == 0 \
                and any(ms[i].perms.startswith("rw") for i in run):
            out.update(run)

    for i, m in enumerate(ms):
        eligible = i not in exclude and is_private_anon(m) and not m.path
        if eligible and run and ms[run[-1]].end == m.start:
            run.append(i)
            continue
        close()
        run = [i] if eligible else []
    close()
    return out


class GoArenas:
    kind = "go-heap"
    # A Go binary without cgo maps no libc: its only allocator is the runtime's own.
    allocator = "go"

    def find(self, mappings: Sequence[Mapping], exclude: set[int]) -> set[int]:
        return arena_indices(mappings, exclude)
