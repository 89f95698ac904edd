"""Whole stacks for page-fault samples (issue 11): the copies of the user stack bpf/page_faults.c
takes, unwound with the objects' CFI, grouped per process and stack, and handed back to the kernel
as walks so the next fault from the same stack is counted there with no copy.

Groups have ids that are never reused (a count the kernel made for a group forgotten since cannot
land on another stack); a group's frames are symbolized once, while its process is alive.
"""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nativewatch.malloc_profile.symbolize import Symbolizer
from nativewatch.unwind.stackcopy import WALK_READS, WalkSlots, pack_walk
from nativewatch.unwind.unwinder import STOP_UNMAPPED, CachedUnwinder, Unwound

__all__ = ["FaultCopy", "FaultWalks", "parse_copy", "COPY_HEADER"]

COPY_HEADER = struct.Struct("<IIQQQ")  # struct fault_copy_t up to stack[]
_WALK_KEY = struct.Struct("<IIQQ")     # struct walk_key_t
_COUNT_KEY = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class FaultCopy:
    tgid: int
    ip: int
    sp: int
    bp: int
    stack: bytes


def parse_copy(data: bytes) -> FaultCopy | None:
    if len(data) < COPY_HEADER.size:
        return None
    tgid, copied, ip, sp, bp = COPY_HEADER.unpack_from(data)
    return FaultCopy(tgid, ip, sp, bp, bytes(data[COPY_HEADER.size:COPY_HEADER.size + copied]))


class FaultWalks:
    """`symbolizer(pid)` gives the (refreshed as needed) symbolizer of a process, or None."""

    MAX_GROUPS = 4096  # ~1 KiB of frames each

    def __init__(self, symbolizer: Callable[[int], Symbolizer | None], walks_map: object | None) -> None:
        self.symbolizer = symbolizer
        self.walks = walks_map  # bpfsys.BpfMap of fault_walks, or None (no walks handed back)
        self._next_gid = 1
        self._groups: OrderedDict[tuple[int, tuple[int, ...], str], int] = OrderedDict()
        self._frames: dict[int, tuple[str, ...]] = {}
        self._by_pid: dict[int, set[int]] = {}
        self._unwinders: dict[int, tuple[CachedUnwinder, int]] = {}
        self._slots = WalkSlots()  # by (tgid, ip, sp)
        self.unwound = 0
        self.handed_back = 0

    def frames_of(self, gid: int) -> tuple[str, ...] | None:
        return self._frames.get(gid)

    def add(self, c: FaultCopy) -> tuple[str, ...]:
        """The frames of one copied sample (unwound, or found in the memo)."""
        sym = self.symbolizer(c.tgid)
        if sym is None:
            return ("[unsymbolized]",)
        unw = self._unwinder(c.tgid, sym)
        u = unw.unwind(c.ip, c.sp, c.bp, c.stack)
        if u.stop == STOP_UNMAPPED:
            sym.refresh()
            unw = self._unwinder(c.tgid, sym)
            u = unw.unwind(c.ip, c.sp, c.bp, c.stack)
        self.unwound += 1
        key = (c.tgid, u.pcs, u.stop)
        gid = self._groups.get(key)
        if gid is None:
            if len(self._groups) >= self.MAX_GROUPS:
                self._evict()
            gid = self._groups[key] = self._next_gid
            self._next_gid += 1
            self._frames[gid] = tuple(sym.stack_frames(u.pcs, u.stop))
            self._by_pid.setdefault(c.tgid, set()).add(gid)
        self._hand_back(c, u, unw, gid)
        return self._frames[gid]

    def _unwinder(self, pid: int, sym: Symbolizer) -> CachedUnwinder:
        got = self._unwinders.get(pid)
        if got is None or got[1] != sym.generation:
            # small: one per process the agent follows, and a page-fault stack repeats in the kernel
            got = self._unwinders[pid] = (CachedUnwinder(sym.code_at, max_keys=64, per_key=2), sym.generation)
        return got[0]

    def _hand_back(self, c: FaultCopy, u: Unwound, unw: CachedUnwinder, gid: int) -> None:
        walk = unw.fresh_walk(c.sp, len(c.stack), u, WALK_READS) if self.walks is not None else None
        if walk is None:
            return
        words, bp_used = walk
        slot = self._slots.take((c.tgid, c.ip, c.sp))
        value = pack_walk(gid, words, c.bp if bp_used else None)
        try:
            if self.walks.update(_WALK_KEY.pack(c.tgid, slot, c.ip, c.sp), value):  # type: ignore[attr-defined]
                self.handed_back += 1
        except OSError:
            self.walks = None  # the kernel refuses updates: go on copying

    def counted(self, raw: list[tuple[bytes, bytes]]) -> list[tuple[int, int, int]]:
        """The kernel's walk_counts entries as (tgid, group id, samples)."""
        out = []
        for k, v in raw:
            tgid, gid = _COUNT_KEY.unpack(k)
            out.append((tgid, gid, struct.unpack("Q", v)[0]))
        return out

    def _evict(self) -> None:
        """Full: forget the oldest half of the groups (their walks in the kernel too)."""
        for _ in range(len(self._groups) // 2):
            (pid, _, _), gid = self._groups.popitem(last=False)
            self._frames.pop(gid, None)
            self._by_pid.get(pid, set()).discard(gid)
        self._slots.clear()
        self._clear_kernel_walks()

    def _clear_kernel_walks(self) -> None:
        if self.walks is not None:
            with contextlib.suppress(OSError):
                self.walks.clear()  # type: ignore[attr-defined]

    def forget(self, pid: int) -> None:
        for gid in self._by_pid.pop(pid, set()):
            self._frames.pop(gid, None)
        for key in [k for k in self._groups if k[0] == pid]:
            del self._groups[key]
        self._unwinders.pop(pid, None)
        self._slots.drop(lambda k: k[0] == pid)  # type: ignore[index]

    def sizes(self) -> dict[str, int]:
        return {"fault_walk_groups": len(self._groups), "fault_walk_unwinders": len(self._unwinders)}
