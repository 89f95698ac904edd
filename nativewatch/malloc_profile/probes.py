"""Load bpf/malloc_sites.c (through the one loader, nativewatch.sources.bpf), attach it per a
ProbePlan, read its maps, detach.

Phases are separate functions (build_defines -> load -> attach -> read_* -> detach) so that the runner
never loads while reading and the CLI can print the final program (--dump-bpf) without loading it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile import sampling
from nativewatch.malloc_profile.resolve import ProbePlan, ProbePoint
from nativewatch.malloc_profile.uprobe_link import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    create_uprobe_multi,
    open_perf_uprobe,
)
from nativewatch.sources import bpf as bpfload

__all__ = ["PROGRAM", "build_defines", "dump_source", "load", "attach", "detach", "Loaded",
           "RawSite", "read_counters", "read_sites", "read_oldest", "read_stack", "read_hits", "reset",
           "COUNTER_NAMES", "HIT_NAMES"]

PROGRAM = "malloc_sites.c"

# counters[] slots in bpf/malloc_sites.h
COUNTER_NAMES = ("events_lost", "map_full", "unmatched_frees", "stack_lost", "sites_full", "sampled",
                 "skipped_mmaps")
# hits[] slots in bpf/malloc_sites.h
HIT_NAMES = ("alloc", "free", "return")

# Hash maps are preallocated: ~100 bytes an entry. Sampled: 65536 sampled blocks stand for ~32 GiB at
# the default interval. Exact: 262144 live blocks (~25 MiB of kernel memory); beyond, map_full counts.
DEFAULT_MAX_ALLOCS = {"sampled": 65536, "exact": 262144}


def build_defines(*, mode: str, interval_bytes: int, max_allocs: int | None = None,
                  max_sites: int = 16384, max_stacks: int = 8192,
                  nest_range: tuple[int, int] | None = None, rung: str = "session") -> dict[str, int | str]:
    if mode not in ("sampled", "exact"):
        raise ValueError(f"mode must be 'sampled' or 'exact', not {mode!r}")
    if mode == "sampled" and interval_bytes < sampling.WEIGHT_STEPS:
        raise ValueError(f"sampling interval must be at least {sampling.WEIGHT_STEPS} bytes")
    nest: dict[str, int | str] = (
        {"NEST_LO": f"{nest_range[0]:#x}ULL", "NEST_HI": f"{nest_range[1]:#x}ULL"} if nest_range else {})
    return {
        **nest,
        "COMPAT_READ": 1 if rung == "perf" else 0,
        "EXACT": 1 if mode == "exact" else 0,
        "INTERVAL": int(interval_bytes) if mode == "sampled" else 1,
        "MAX_ALLOCS": int(max_allocs or DEFAULT_MAX_ALLOCS[mode]),
        "MAX_SITES": int(max_sites),
        "MAX_STACKS": int(max_stacks),
    }


def dump_source(defines: dict[str, int | str]) -> str:
    return bpfload.program_text(PROGRAM, defines)


@dataclass
class Loaded:
    bpf: Any  # bcc.BPF
    rung: str  # attach.RUNGS
    programs: dict[str, int]  # function name -> loaded program fd
    links: list[int]  # link or perf event fds
    interval_bytes: int
    mode: str


# (function, expected attach type) each rung needs; the perf rung's per-kind programs are added
# on demand (only the kinds the plan has)
_RUNG_PROGRAMS = {
    "session": (("on_alloc", BPF_TRACE_UPROBE_SESSION), ("on_free", BPF_TRACE_UPROBE_MULTI)),
    "multi": (("on_alloc", BPF_TRACE_UPROBE_MULTI), ("on_alloc_ret", BPF_TRACE_UPROBE_MULTI),
              ("on_free", BPF_TRACE_UPROBE_MULTI)),
    "perf": (("on_alloc_ret", -1),),
}


def _program(loaded: Loaded, name: str, attach_type: int = -1) -> int:
    fd = loaded.programs.get(name)
    if fd is None:
        try:
            fd = loaded.programs[name] = loaded.bpf.load_func(name.encode(), loaded.bpf.KPROBE,
                                                              attach_type=attach_type).fd
        except Exception as exc:  # bcc raises bare Exception for verifier/load errors
            raise SourceUnavailable(f"cannot load the malloc BPF program {name}: {exc}") from exc
    return fd


def load(defines: dict[str, int | str], *, mode: str, interval_bytes: int, rung: str) -> Loaded:
    bpf = bpfload.load_bpf(PROGRAM, defines)
    loaded = Loaded(bpf, rung, {}, [], interval_bytes, mode)
    try:
        for name, attach_type in _RUNG_PROGRAMS[rung]:
            _program(loaded, name, attach_type)
    except SourceUnavailable:
        with contextlib.suppress(Exception):
            bpf.cleanup()
        raise
    if mode == "sampled":
        exp = bpf[b"exp_table"]
        for i, v in enumerate(sampling.exp_table(interval_bytes)):
            exp[exp.Key(i)] = exp.Leaf(v)
        wt = bpf[b"weight_table"]
        for i, v in enumerate(sampling.weight_table(interval_bytes)):
            wt[wt.Key(i)] = wt.Leaf(v)
        _restart_countdown(loaded)
    return loaded


def _restart_countdown(loaded: Loaded) -> None:
    if loaded.mode != "sampled":
        return
    # start the countdown at a random point too, so the first sample is not biased to the start
    rem = loaded.bpf[b"remaining"]
    first = sampling.exp_table(loaded.interval_bytes)[int.from_bytes(os.urandom(2), "little") % sampling.EXP_SLOTS]
    rem[rem.Key(0)] = rem.Leaf(*([first] * len(rem.Leaf())))


def set_target(loaded: Loaded, pid: int) -> None:
    """The thread group the programs record (0: none)."""
    cfg = loaded.bpf[b"config"]
    cfg[cfg.Key(0)] = cfg.Leaf(int(pid))


def reset(loaded: Loaded) -> None:
    """Forget everything recorded so far (after a calibration run on a helper process)."""
    for name in (b"allocs", b"sites", b"pending", b"counters", b"hits"):
        with contextlib.suppress(Exception):
            loaded.bpf[name].clear()
    # stack ids are only referenced from sites, which are gone; the table itself is left as is
    _restart_countdown(loaded)


def _attach_points(loaded: Loaded, pid: int, points: tuple[ProbePoint, ...] | list[ProbePoint]) -> None:
    if loaded.rung == "perf":
        for p in points:
            kind_prog = _program(loaded, f"on_alloc_k{p.cookie}" if p.session else f"on_free_f{p.cookie}")
            loaded.links.append(open_perf_uprobe(kind_prog, p.path, p.file_offset, pid, return_probe=False))
            if p.session:
                loaded.links.append(open_perf_uprobe(_program(loaded, "on_alloc_ret"), p.path, p.file_offset,
                                                     pid, return_probe=True))
        return
    groups: dict[tuple[str, bool], list[tuple[int, int]]] = {}
    for p in points:
        groups.setdefault((p.path, p.session), []).append((p.file_offset, p.cookie))
    for (path, alloc), pts in groups.items():
        offsets, cookies = [o for o, _ in pts], [c for _, c in pts]
        prog = _program(loaded, "on_alloc" if alloc else "on_free")
        loaded.links.append(create_uprobe_multi(prog, path, offsets, cookies, pid,
                                                session=alloc and loaded.rung == "session"))
        if alloc and loaded.rung == "multi":
            loaded.links.append(create_uprobe_multi(_program(loaded, "on_alloc_ret"), path, offsets, cookies, pid,
                                                    session=False, return_probe=True))


def attach(loaded: Loaded, plan: ProbePlan, *, pid: int | None = None,
           points: tuple[ProbePoint, ...] | list[ProbePoint] | None = None) -> None:
    """Probe `points` (default: the whole plan) in process `pid` (default: the plan's) the way
    loaded.rung says, recording only that process. On failure everything attached so far is
    detached again."""
    pid = plan.pid if pid is None else pid
    skip = loaded.bpf[b"skip_ranges"]
    ranges = list(plan.skip_ranges)
    for i in range(len(skip)):  # every slot: a calibration run may have left other ranges
        leaf = skip.Leaf()
        leaf.lo, leaf.hi = ranges[i] if i < len(ranges) else (0, 0)
        skip[skip.Key(i)] = leaf
    set_target(loaded, pid)
    try:
        _attach_points(loaded, pid, plan.points if points is None else points)
    except OSError as exc:
        detach(loaded)
        raise SourceUnavailable(f"cannot attach uprobes to pid {pid} via {loaded.rung}: {exc.strerror or exc}") \
            from exc


def detach(loaded: Loaded) -> None:
    """Closing the link/event fds removes the breakpoints; the maps stay readable until cleanup()."""
    while loaded.links:
        with contextlib.suppress(OSError):
            os.close(loaded.links.pop())


def close(loaded: Loaded) -> None:
    detach(loaded)
    with contextlib.suppress(Exception):  # best effort at teardown
        loaded.bpf.cleanup()


def read_hits(loaded: Loaded) -> dict[str, int]:
    """Probe hits so far, summed over CPUs."""
    h = loaded.bpf[b"hits"]
    return {name: int(sum(int(v) for v in h[h.Key(i)])) for i, name in enumerate(HIT_NAMES)}


def read_counters(loaded: Loaded) -> dict[str, int]:
    c = loaded.bpf[b"counters"]
    return {name: int(c[c.Key(i)].value) for i, name in enumerate(COUNTER_NAMES)}


@dataclass(frozen=True, slots=True)
class RawSite:
    stackid: int
    kind: int
    caller: int
    out_bytes: int
    out_count: int
    alloc_bytes: int
    alloc_count: int


def read_sites(loaded: Loaded) -> list[RawSite]:
    out = []
    one = 1 << sampling.FX_SHIFT
    for k, v in loaded.bpf[b"sites"].items():
        out.append(RawSite(int(k.stackid), int(k.kind), int(k.caller), max(0, int(v.out_bytes)),
                           max(0, round(v.out_count_fx / one)), int(v.alloc_bytes),
                           round(v.alloc_count_fx / one)))
    return out


def read_oldest(loaded: Loaded) -> dict[tuple[int, int, int], int]:
    """Oldest outstanding allocation's timestamp (CLOCK_MONOTONIC ns) per site key."""
    oldest: dict[tuple[int, int, int], int] = {}
    for _, v in _items(loaded.bpf[b"allocs"]):
        key = (int(v.site.stackid), int(v.site.kind), int(v.site.caller))
        ts = int(v.ts_ns)
        if key not in oldest or ts < oldest[key]:
            oldest[key] = ts
    return oldest


def _items(table: Any) -> Iterator[tuple[Any, Any]]:
    try:
        yield from table.items()
    except KeyError:  # an entry deleted while iterating
        return


def read_stack(loaded: Loaded, stackid: int) -> list[int]:
    if stackid < 0:
        return []
    try:
        return [int(a) for a in loaded.bpf[b"stacks"].walk(stackid)]
    except KeyError:
        return []
