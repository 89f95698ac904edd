"""The attach ladder: which way this kernel can put allocation probes into one process.

Rungs, best first (bpf/malloc_sites.c explains what each costs):
- session: uprobe_multi session links (kernel >= 6.13). A return trap only for sampled calls.
- multi: uprobe_multi + uretprobe_multi links (>= 6.6). Every allocating call pays a return trap.
- perf: perf-event uprobes and uretprobes (>= 4.17), one event per probe point, no attach cookies.
Every rung is scoped to the target by the kernel and bound to file descriptors, so a killed
nativewatch leaves no probe behind.

Support is asked of the kernel, not read from its version (distribution kernels backport): each rung
is tried with a two-instruction program and a probe on a file no process here maps, so nothing is
ever armed by the check.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile.uprobe_link import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    create_uprobe_multi,
    load_noop_program,
    open_perf_uprobe,
)

__all__ = ["RUNGS", "RUNG_KERNEL", "RUNG_COST", "RungSupport", "supported_rungs", "choose_rung"]

RUNGS = ("session", "multi", "perf")
RUNG_KERNEL = {"session": "6.13", "multi": "6.6", "perf": "4.17"}
RUNG_COST = {
    "session": "one trap per allocator call; a return trap only for sampled allocations",
    "multi": "one trap per allocator call plus a return trap on every allocating call",
    "perf": "one trap per allocator call plus a return trap on every allocating call; one perf event "
            "per probe point",
}


@dataclass(frozen=True, slots=True)
class RungSupport:
    rung: str
    ok: bool
    reason: str  # why not, when not ok


def _try_multi(session: bool) -> None:
    prog = load_noop_program(BPF_TRACE_UPROBE_SESSION if session else BPF_TRACE_UPROBE_MULTI)
    try:
        # this source file: regular, never mapped executable, so the link arms nothing
        link = create_uprobe_multi(prog, os.path.realpath(__file__), [0], [0], os.getpid(), session=session,
                                   return_probe=not session)
        os.close(link)
    finally:
        os.close(prog)


def _try_perf() -> None:
    prog = load_noop_program()
    try:
        os.close(open_perf_uprobe(prog, os.path.realpath(__file__), 0, os.getpid(), return_probe=True))
    finally:
        os.close(prog)


_TRIES: dict[str, Callable[[], None]] = {
    "session": lambda: _try_multi(True),
    "multi": lambda: _try_multi(False),
    "perf": _try_perf,
}


@functools.cache
def supported_rungs() -> tuple[RungSupport, ...]:
    out = []
    for rung in RUNGS:
        try:
            _TRIES[rung]()
            out.append(RungSupport(rung, True, ""))
        except OSError as exc:
            out.append(RungSupport(rung, False, f"{exc.strerror or exc} (needs kernel >= {RUNG_KERNEL[rung]} "
                                               "and root or CAP_BPF + CAP_PERFMON)"))
    return tuple(out)


def choose_rung(forced: str | None = None) -> str:
    """The best rung this kernel supports, or `forced` if it is supported. Raises SourceUnavailable
    with every rung's reason otherwise."""
    if forced is not None and forced not in RUNGS:
        raise ValueError(f"unknown attach method {forced!r} (one of {', '.join(RUNGS)})")
    support = supported_rungs()
    for s in support:
        if (forced is None or s.rung == forced) and s.ok:
            return s.rung
    if forced is not None:
        why = next(s.reason for s in support if s.rung == forced)
        raise SourceUnavailable(f"cannot attach via {forced}: {why}")
    raise SourceUnavailable("no way to attach uprobes on this kernel: "
                            + "; ".join(f"{s.rung}: {s.reason}" for s in support))
