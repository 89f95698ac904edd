"""Load bpf/malloc_sites.c with bcc, attach it per a ProbePlan, read its maps, detach.

Phases are separate functions (build_cflags -> load -> attach -> read_* -> detach) so that the runner
never loads while reading and the CLI can print the final program (--dump-bpf) without loading it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile import sampling
from nativewatch.malloc_profile.resolve import ProbePlan
from nativewatch.malloc_profile.uprobe_link import (
    BPF_TRACE_UPROBE_MULTI,
    BPF_TRACE_UPROBE_SESSION,
    create_uprobe_multi,
)

__all__ = ["BPF_DIR", "SOURCE", "build_cflags", "dump_source", "load", "attach", "detach", "Loaded",
           "RawSite", "read_counters", "read_sites", "read_oldest", "read_stack", "COUNTER_NAMES"]


def _bpf_dir() -> Path:
    env = os.environ.get("NATIVEWATCH_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"


BPF_DIR = _bpf_dir()
SOURCE = BPF_DIR / "malloc_sites.c"

# counters[] slots in bpf/malloc_sites.h
COUNTER_NAMES = ("events_lost", "map_full", "unmatched_frees", "stack_lost", "sites_full", "sampled",
                 "skipped_mmaps")

# Hash maps are preallocated: ~100 bytes an entry. Sampled: 65536 sampled blocks stand for ~32 GiB at
# the default interval. Exact: 262144 live blocks (~25 MiB of kernel memory); beyond, map_full counts.
DEFAULT_MAX_ALLOCS = {"sampled": 65536, "exact": 262144}


def build_cflags(pid: int, *, mode: str, interval_bytes: int, max_allocs: int | None = None,
                 max_sites: int = 16384, max_stacks: int = 8192,
                 nest_range: tuple[int, int] | None = None) -> list[str]:
    if mode not in ("sampled", "exact"):
        raise ValueError(f"mode must be 'sampled' or 'exact', not {mode!r}")
    if mode == "sampled" and interval_bytes < sampling.WEIGHT_STEPS:
        raise ValueError(f"sampling interval must be at least {sampling.WEIGHT_STEPS} bytes")
    nest = [f"-DNEST_LO={nest_range[0]:#x}ULL", f"-DNEST_HI={nest_range[1]:#x}ULL"] if nest_range else []
    return [
        *nest,
        f"-I{BPF_DIR}",
        f"-DTARGET_TGID={int(pid)}",
        f"-DEXACT={1 if mode == 'exact' else 0}",
        f"-DINTERVAL={int(interval_bytes) if mode == 'sampled' else 1}",
        f"-DMAX_ALLOCS={int(max_allocs or DEFAULT_MAX_ALLOCS[mode])}",
        f"-DMAX_SITES={int(max_sites)}",
        f"-DMAX_STACKS={int(max_stacks)}",
    ]


def dump_source(cflags: list[str]) -> str:
    defs = "\n".join(f"#define {f[2:].replace('=', ' ', 1)}" for f in cflags if f.startswith("-D"))
    header = (BPF_DIR / "malloc_sites.h").read_text()
    body = SOURCE.read_text().replace('#include "malloc_sites.h"', header)
    return f"/* cflags: {' '.join(cflags)} */\n{defs}\n{body}"


@dataclass
class Loaded:
    bpf: Any  # bcc.BPF
    alloc_fd: int
    free_fd: int
    links: list[int]
    interval_bytes: int
    mode: str


def load(cflags: list[str], *, mode: str, interval_bytes: int) -> Loaded:
    try:
        from bcc import BPF  # imported lazily: the rest of nativewatch works without bcc
    except ImportError as exc:
        raise SourceUnavailable(f"bcc is not importable ({exc}); install python3-bpfcc") from exc
    try:
        bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        alloc_fn = bpf.load_func(b"on_alloc", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_SESSION)
        free_fn = bpf.load_func(b"on_free", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
    except Exception as exc:  # bcc raises bare Exception for compile/load errors
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
