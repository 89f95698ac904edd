"""The Python side of bpf/stack_copy.h, shared by `profile` (malloc_sites.c) and the agent's page-fault
sampler (page_faults.c): the stack-copy size limits, the layout of a walk handed to the kernel, and
which of a key's walk slots the next walk takes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable

__all__ = ["WALK_READS", "WALK_SLOTS", "MIN_STACK_COPY", "MAX_STACK_COPY", "check_stack_copy", "pack_walk",
           "WalkSlots"]

WALK_READS = 32   # stack words a remembered walk may depend on (bpf/stack_copy.h)
WALK_SLOTS = 4    # remembered walks per (ip, sp)
# a copy below this holds too few frames to be worth a ring record; above, a record gets unwieldy
MIN_STACK_COPY = 512
MAX_STACK_COPY = 65536
_WALK_VAL = struct.Struct(f"<IIIIQ{WALK_READS}I{WALK_READS}Q")  # struct walk_val


def check_stack_copy(n: int) -> None:
    """ValueError unless n is 0 (off) or a copy size the BPF side accepts."""
    if n and (n % 8 or not MIN_STACK_COPY <= n <= MAX_STACK_COPY):
        raise ValueError(f"stack copy must be 0 (off) or a multiple of 8 from {MIN_STACK_COPY} to "
                         f"{MAX_STACK_COPY} bytes, not {n}")


def pack_walk(group: int, words: list[tuple[int, int]], bp: int | None) -> bytes:
    """struct walk_val: the (offset from sp, word) pairs to check, and bp when the walk used it."""
    if len(words) > WALK_READS:
        raise ValueError(f"a walk the kernel checks has at most {WALK_READS} words, not {len(words)}")
    pad = [0] * (WALK_READS - len(words))
    return _WALK_VAL.pack(group, len(words), int(bp is not None), 0, bp or 0,
                          *[o for o, _ in words], *pad, *[v for _, v in words], *pad)


class WalkSlots:
    """The BPF side tries a key's slots in order and stops at the first empty one: walks fill them in
    order, and once all are taken the next replaces the oldest."""

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}

    def take(self, key: Hashable) -> int:
        slot = self._next.get(key, 0)
        self._next[key] = (slot + 1) % WALK_SLOTS
        return slot

    def clear(self) -> None:
        self._next.clear()

    def drop(self, which: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._next if which(k)]:
            del self._next[key]
