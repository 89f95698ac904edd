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
from nativewatch.malloc_profile.resolve import ProbePlan
from nativewatch.malloc_profile.uprobe_link import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    create_uprobe_multi,
)
from nativewatch.sources import bpf as bpfload

__all__ = ["PROGRAM", "build_defines", "dump_source", "load", "attach", "detach", "Loaded",
           "RawSite", "read_counters", "read_sites", "read_oldest", "read_stack", "COUNTER_NAMES"]

PROGRAM = "malloc_sites.c"

# counters[] slots in bpf/malloc_sites.h
COUNTER_NAMES = ("events_lost", "map_full", "unmatched_frees", "stack_lost", "sites_full", "sampled",
                 "skipped_mmaps")

# Hash maps are preallocated: ~100 bytes an entry. Sampled: 65536 sampled blocks stand for ~32 GiB at
# the default interval. Exact: 262144 live blocks (~25 MiB of kernel memory); beyond, map_full counts.
DEFAULT_MAX_ALLOCS = {"sampled": 65536, "exact": 262144}


def build_defines(pid: int, *, mode: str, interval_bytes: int, max_allocs: int | None = None,
                  max_sites: int = 16384, max_stacks: int = 8192,
                  nest_range: tuple[int, int] | None = None) -> dict[str, int | str]:
    if mode not in ("sampled", "exact"):
        raise ValueError(f"mode must be 'sampled' or 'exact', not {mode!r}")
    if mode == "sampled" and interval_bytes < sampling.WEIGHT_STEPS:
        raise ValueError(f"sampling interval must be at least {sampling.WEIGHT_STEPS} bytes")
    nest: dict[str, int | str] = (
        {"NEST_LO": f"{nest_range[0]:#x}ULL", "NEST_HI": f"{nest_range[1]:#x}ULL"} if nest_range else {})
    return {
        **nest,
        "TARGET_TGID": int(pid),
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
    alloc_fd: int
    free_fd: int
    links: list[int]
    interval_bytes: int
    mode: str


def load(defines: dict[str, int | str], *, mode: str, interval_bytes: int) -> Loaded:
    bpf = bpfload.load_bpf(PROGRAM, defines)
    try:
        alloc_fn = bpf.load_func(b"on_alloc", bpf.KPROBE, attach_type=BPF_TRACE_UPROBE_SESSION)
        free_fn = bpf.load_func(b"on_free", bpf.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    except Exception as exc:  # bcc raises bare Exception for verifier/load errors
        with contextlib.suppress(Exception):
            bpf.cleanup()
        raise SourceUnavailable(f"cannot load the malloc BPF program: {exc}") from exc
    if mode == "sampled":
        exp = bpf[b"exp_table"]
        for i, v in enumerate(sampling.exp_table(interval_bytes)):
            exp[exp.Key(i)] = exp.Leaf(v)
        wt = bpf[b"weight_table"]
        for i, v in enumerate(sampling.weight_table(interval_bytes)):
            wt[wt.Key(i)] = wt.Leaf(v)
        # start the countdown at a random point too, so the first sample is not biased to the start
        rem = bpf[b"remaining"]
        first = sampling.exp_table(interval_bytes)[int.from_bytes(os.urandom(2), "little") % sampling.EXP_SLOTS]
        rem[rem.Key(0)] = rem.Leaf(*([first] * len(rem.Leaf())))
    return Loaded(bpf, alloc_fn.fd, free_fn.fd, [], interval_bytes, mode)


def attach(loaded: Loaded, plan: ProbePlan) -> None:
    """One uprobe_multi link per (object, program), pid-filtered in the kernel. On failure everything
    attached so far is detached again."""
    skip = loaded.bpf[b"skip_ranges"]
    for i, (lo, hi) in enumerate(plan.skip_ranges):
        leaf = skip.Leaf()
        leaf.lo, leaf.hi = lo, hi
        skip[skip.Key(i)] = leaf
    groups: dict[tuple[str, bool], list[tuple[int, int]]] = {}
    for p in plan.points:
        groups.setdefault((p.path, p.session), []).append((p.file_offset, p.cookie))
    try:
        for (path, session), pts in groups.items():
            fd = loaded.alloc_fd if session else loaded.free_fd
            loaded.links.append(create_uprobe_multi(fd, path, [o for o, _ in pts], [c for _, c in pts],
                                                    plan.pid, session=session))
    except OSError as exc:
        detach(loaded)
        raise SourceUnavailable(f"cannot attach uprobes to pid {plan.pid}: {exc.strerror} "
                                "(needs root and a kernel with uprobe_multi sessions, >= 6.13)") from exc


def detach(loaded: Loaded) -> None:
    """Closing the link fds removes the breakpoints; the maps stay readable until cleanup()."""
    while loaded.links:
        with contextlib.suppress(OSError):
            os.close(loaded.links.pop())


def close(loaded: Loaded) -> None:
    detach(loaded)
    with contextlib.suppress(Exception):  # best effort at teardown
        loaded.bpf.cleanup()


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
