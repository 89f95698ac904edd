"""Sampled allocations whose user stack the BPF side copied: unwound in user space as their events
arrive, grouped by unwound stack, and handed to the collector as ordinary sites.

Each group gets a synthetic site key (STACK_COPIED, kind, group index), so everything downstream of
the kernel's own sites (symbolizing, merging by frames, Java names, JSON) treats both alike.
Outstanding bytes come from the kernel's live-allocation map (each live copied allocation carries its
sample id), so frees stay exact; allocated totals come from the events, less those whose call failed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from nativewatch.malloc_profile.probes import STACK_COPIED, CopiedAlloc, RawSite, StackEvent
from nativewatch.unwind.stackcopy import WALK_READS, WalkSlots
from nativewatch.unwind.unwinder import (
    STOP_END,
    STOP_UNMAPPED,
    CachedUnwinder,
    CodeAt,
    Unwound,
)

__all__ = ["CopiedSites", "UnwindStats"]

# groups are never dropped during one capture (their totals are part of the result); past this many
# distinct stacks new ones share one group per kind that says so
_MAX_GROUPS = 65536
OVERFLOW = (0,), "too many distinct stacks"
# how often an address outside every known mapping may trigger a re-read of the maps
_REFRESH_EVERY_S = 0.25


@dataclass
class UnwindStats:
    stacks: int = 0          # events unwound
    frames: int = 0
    fp_frames: int = 0       # frames found through frame pointers (objects without CFI, JIT code)
    seconds: float = 0.0     # spent unwinding
    cancelled: int = 0
    remembered_in_kernel: int = 0  # walks handed to the BPF side (later calls from them need no copy)

    def to_json(self, stops: Counter[str], remembered: int) -> dict[str, object]:
        """`remembered`: stacks whose walk was found in the memo."""
        return {"stacks": self.stacks, "frames": self.frames, "frame_pointer_frames": self.fp_frames,
                "remembered": remembered, "walks_handed_to_kernel": self.remembered_in_kernel,
                "stopped_early": {k: v for k, v in sorted(stops.items()) if k != STOP_END},
                "cancelled": self.cancelled,
                "stacks_per_second": round(self.stacks / self.seconds) if self.seconds > 0 else None}


class CopiedSites:
    def __init__(self, code_at: CodeAt, refresh: Callable[[], None], generation: Callable[[], int],
                 remember: Callable[[int, int, int, int | None, list[tuple[int, int]], int], bool] | None = None,
                 forget: Callable[[], None] | None = None) -> None:
        self.unwinder = CachedUnwinder(code_at)
        self.remember = remember
        self.forget = forget
        self.refresh = refresh
        self.generation = generation
        self._generation = generation()
        self.accepting = False  # events from the calibration run are dropped
        self._groups: dict[tuple[tuple[int, ...], str, tuple[tuple[int, int], ...], int], int] = {}
        self._stacks: list[tuple[tuple[int, ...], str, tuple[tuple[int, int], ...]]] = []
        self._alloc: list[list[float]] = []   # per group: [bytes, count]
        self._kinds: list[int] = []
        self._ids: dict[int, tuple[int, int, float]] = {}  # live-or-recent sample id -> (group, wbytes, wcount)
        self._absent: set[int] = set()
        self._last_refresh = 0.0
        self._slots = WalkSlots()  # by (ip, sp)
        self.stats = UnwindStats()
        self.stops: Counter[str] = Counter()

    def on_event(self, ev: StackEvent | int) -> None:
        if not self.accepting:
            return
        if isinstance(ev, int):
            rec = self._ids.pop(ev, None)
            if rec is not None:
                acc = self._alloc[rec[0]]
                acc[0] -= rec[1]
                acc[1] -= rec[2]
                self.stats.cancelled += 1
            return
        t0 = time.perf_counter()
        u = self._unwind(ev)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.stacks += 1
        self.stats.frames += len(u.pcs)
        self.stats.fp_frames += u.fp_frames
        self.stops[u.stop] += 1
        gkey = (u.pcs, u.stop, u.methods, ev.kind)
        g = self._groups.get(gkey)
        if g is None:
            if len(self._groups) >= _MAX_GROUPS:
                gkey = (OVERFLOW[0], OVERFLOW[1], (), ev.kind)
                g = self._groups.get(gkey)
            if g is None:
                g = self._groups[gkey] = len(self._stacks)
                self._stacks.append((gkey[0], gkey[1], gkey[2]))
                self._alloc.append([0.0, 0.0])
                self._kinds.append(ev.kind)
        self._remember(ev, u, g)
        wcount = ev.wbytes / ev.size if ev.size else 1.0
        acc = self._alloc[g]
        acc[0] += ev.wbytes
        acc[1] += wcount
        self._ids[ev.id] = (g, ev.wbytes, wcount)

    def _unwind(self, ev: StackEvent) -> Unwound:
        if self.generation() != self._generation:  # code mapped or unmapped: remembered walks may differ
            self._new_code_map()
        u = self.unwinder.unwind(ev.ip, ev.sp, ev.bp, ev.stack)
        if u.stop == STOP_UNMAPPED:
            # code mapped since the last read of the maps (a dlopen, a JIT): read them again, bounded
            now = time.monotonic()
            if now - self._last_refresh >= _REFRESH_EVERY_S:
                self._last_refresh = now
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the process may be gone; keep the partial stack
                    return u
                self._new_code_map()
                u = self.unwinder.unwind(ev.ip, ev.sp, ev.bp, ev.stack)
        return u

    def _new_code_map(self) -> None:
        self._generation = self.generation()
        self.unwinder.clear()
        self._slots.clear()
        if self.forget is not None:
            self.forget()

    def _remember(self, ev: StackEvent, u: Unwound, group: int) -> None:
        """Hand a fresh walk to the BPF side, so the next call from the same stack needs no copy. Not
        a walk that ran off the copy: a longer stack there could end differently."""
        if self.remember is None:
            return
        walk = self.unwinder.fresh_walk(ev.sp, len(ev.stack), u, WALK_READS)
        if walk is None:
            return
        words, bp_used = walk
        slot = self._slots.take((ev.ip, ev.sp))
        if self.remember(ev.ip, ev.sp, slot, ev.bp if bp_used else None, words, group):
            self.stats.remembered_in_kernel += 1

    def report(self) -> dict[str, object]:
        return self.stats.to_json(self.stops, self.unwinder.hits)

    def stack(self, group: int) -> tuple[tuple[int, ...], str, tuple[tuple[int, int], ...]]:
        """(pcs, why the walk stopped, interpreter frames' Method*) of a group."""
        return self._stacks[group]

    def raw_sites(self, live: list[CopiedAlloc]) -> tuple[list[RawSite], dict[tuple[int, int, int], int]]:
        """Sites for every group (outstanding from `live`, the copied allocations in the kernel's map
        now) and the oldest live timestamp per group key. Sample ids neither live now nor at the
        previous call are forgotten (their frees are final; their allocated totals stay)."""
        out_b = [0] * len(self._stacks)
        out_c = [0.0] * len(self._stacks)
        oldest: dict[tuple[int, int, int], int] = {}
        live_ids: set[int] = set()
        for a in live:
            rec = self._ids.get(a.id)
            if rec is None:
                continue  # its event was lost or not drained yet: counted once it is
            live_ids.add(a.id)
            g = rec[0]
            out_b[g] += a.wbytes
            out_c[g] += a.wcount
            key = (STACK_COPIED, self._kinds[g], g)
            if key not in oldest or a.ts_ns < oldest[key]:
                oldest[key] = a.ts_ns
        gone = {i for i in self._ids if i not in live_ids}
        for i in gone & self._absent:
            del self._ids[i]
        self._absent = gone - self._absent
        sites = [RawSite(STACK_COPIED, self._kinds[g], g, out_b[g], round(out_c[g]),
                         max(0, round(self._alloc[g][0])), max(0, round(self._alloc[g][1])))
                 for g in range(len(self._stacks))]
        return sites, oldest
