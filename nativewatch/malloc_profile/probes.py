"""Load bpf/malloc_sites.c (through the one loader, nativewatch.sources.bpf), attach it per a
ProbePlan, read its maps, detach.

Phases are separate functions (build_defines -> load -> attach -> read_* -> detach) so that the runner
never loads while reading and the CLI can print the final program (--dump-bpf) without loading it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from collections.abc import Callable, Iterator
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
from nativewatch.unwind.stackcopy import WALK_READS, WALK_SLOTS, check_stack_copy, pack_walk

__all__ = ["PROGRAM", "build_defines", "dump_source", "load", "attach", "detach", "Loaded",
           "RawSite", "read_counters", "read_sites", "read_oldest", "read_stack", "read_hits", "reset",
           "COUNTER_NAMES", "HIT_NAMES", "StackEvent", "CopiedAlloc", "open_events", "drain_events", "poll_events",
           "read_live", "attach_reports", "STACK_COPIED", "STACK_WALKED", "remember_walk", "forget_walks"]

PROGRAM = "malloc_sites.c"

# counters[] slots in bpf/malloc_sites.h
COUNTER_NAMES = ("events_lost", "map_full", "unmatched_frees", "stack_lost", "sites_full", "sampled",
                 "skipped_mmaps", "copies_lost", "walks_known")
# hits[] slots in bpf/malloc_sites.h
HIT_NAMES = ("alloc", "free", "return")

# Hash maps are preallocated: ~100 bytes an entry. Sampled: 65536 sampled blocks stand for ~32 GiB at
# the default interval. Exact: 262144 live blocks (~25 MiB of kernel memory); beyond, map_full counts.
DEFAULT_MAX_ALLOCS = {"sampled": 65536, "exact": 262144}

# The ring buffer holds this many copies in flight between two drains (user space drains as events
# arrive and unwinds ~20,000-35,000 stacks a second). Sampled: 500 is far above what byte sampling
# picks at any interval worth using. Exact mode copies every call: 4,000 absorbs a burst; beyond,
# calls keep their frame-pointer stack (counted in copies_lost) and the totals stay exact. The ring
# is kernel memory: capped at 64 MiB.
RING_RECORDS = {"sampled": 500, "exact": 4000}
_MAX_RING_PAGES = 16384


def ring_pages_for(stack_copy: int, mode: str) -> int:
    want = (RING_RECORDS[mode] * (stack_copy + 128) + 4095) // 4096
    pages = 16
    while pages < want and pages < _MAX_RING_PAGES:
        pages *= 2
    return pages


def build_defines(*, mode: str, interval_bytes: int, max_allocs: int | None = None,
                  max_sites: int = 16384, max_stacks: int = 8192,
                  nest_range: tuple[int, int] | None = None, rung: str = "session",
                  stack_copy: int = 0, ring_pages: int = 0) -> dict[str, int | str]:
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
        **_stack_copy_defines(stack_copy, ring_pages or ring_pages_for(stack_copy, mode)),
    }


def _stack_copy_defines(stack_copy: int, ring_pages: int) -> dict[str, int | str]:
    check_stack_copy(stack_copy)
    if stack_copy == 0:
        return {}
    pages = ring_pages
    if pages & (pages - 1) or pages < 16:
        raise ValueError(f"ring buffer pages must be a power of two >= 16, not {pages}")
    return {"STACK_COPY": int(stack_copy), "RING_PAGES": int(pages)}


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
    stack_copy: int = 0  # bytes of user stack copied per sampled allocation (0: frame pointers only)
    events_open: bool = False


# (function, expected attach type) each rung needs; the perf rung's per-kind programs are added
# on demand (only the kinds the plan has)
_RUNG_PROGRAMS = {
    "session": (("on_alloc", BPF_TRACE_UPROBE_SESSION), ("on_free", BPF_TRACE_UPROBE_MULTI)),
    "multi": (("on_alloc", BPF_TRACE_UPROBE_MULTI), ("on_alloc_ret", BPF_TRACE_UPROBE_MULTI),
              ("on_free", BPF_TRACE_UPROBE_MULTI)),
    "perf": (("on_alloc_ret", -1),),
    # the in-process sampler's report functions (nativewatch/inject): entry probes only
    "inject": (("on_report_alloc", BPF_TRACE_UPROBE_MULTI), ("on_report_free", BPF_TRACE_UPROBE_MULTI)),
    "inject-perf": (("on_report_alloc", -1), ("on_report_free", -1)),
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
    loaded = Loaded(bpf, rung, {}, [], interval_bytes, mode, int(defines.get("STACK_COPY", 0)))
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


def set_target(loaded: Loaded, pid: int, stack_top: int = 0) -> None:
    """The thread group the programs record (0: none), and where its main thread's frames end
    (/proc/PID/stat startstack; 0: unknown), which bounds the stack copies of that thread."""
    cfg = loaded.bpf[b"config"]
    cfg[cfg.Key(0)] = cfg.Leaf(int(pid))
    cfg[cfg.Key(1)] = cfg.Leaf(int(stack_top))


def reset(loaded: Loaded) -> None:
    """Forget everything recorded so far (after a calibration run on a helper process)."""
    for name in (b"allocs", b"sites", b"pending", b"counters", b"hits") + ((b"walks",) if loaded.stack_copy else ()):
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
    set_target(loaded, pid, _stack_top(pid) if loaded.stack_copy else 0)
    try:
        _attach_points(loaded, pid, plan.points if points is None else points)
    except OSError as exc:
        detach(loaded)
        raise SourceUnavailable(f"cannot attach uprobes to pid {pid} via {loaded.rung}: {exc.strerror or exc}") \
            from exc


def attach_reports(loaded: Loaded, pid: int, path: str, alloc_offset: int, free_offset: int) -> None:
    """Probe the in-process sampler's two report functions (file offsets in `path`, the sampler as
    mapped in pid) for process pid. On failure nothing stays attached."""
    set_target(loaded, pid, _stack_top(pid) if loaded.stack_copy else 0)
    try:
        for name, off in (("on_report_alloc", alloc_offset), ("on_report_free", free_offset)):
            prog = _program(loaded, name)
            if loaded.rung == "inject":
                loaded.links.append(create_uprobe_multi(prog, path, [off], [0], pid, session=False))
            else:
                loaded.links.append(open_perf_uprobe(prog, path, off, pid, return_probe=False))
    except OSError as exc:
        detach(loaded)
        raise SourceUnavailable(f"cannot probe the sampler in pid {pid}: {exc.strerror or exc}") from exc


def _stack_top(pid: int, proc_root: str = "/proc") -> int:
    """startstack (field 28 of /proc/PID/stat), rounded up to a word; 0 when unreadable."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return (int(fields[25]) + 7) & ~7  # field 28; the list starts at field 3
    except (OSError, ValueError, IndexError):
        return 0


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
    return read_live(loaded)[0]


@dataclass(frozen=True, slots=True)
class CopiedAlloc:
    """A live sampled allocation whose stack was copied (its site is the unwound stack of event `id`)."""
    id: int
    kind: int
    wbytes: int
    wcount: float
    ts_ns: int


def read_live(loaded: Loaded) -> tuple[dict[tuple[int, int, int], int], list[CopiedAlloc]]:
    """One pass over the live allocations: the oldest timestamp per kernel site key, and every live
    allocation whose stack was copied."""
    oldest: dict[tuple[int, int, int], int] = {}
    copied: list[CopiedAlloc] = []
    one = float(1 << sampling.FX_SHIFT)
    for _, v in _items(loaded.bpf[b"allocs"]):
        site = v.site
        ts = int(v.ts_ns)
        if site.stackid == STACK_COPIED:
            copied.append(CopiedAlloc(int(site.caller), int(site.kind), int(v.wbytes), v.wcount_fx / one, ts))
            continue
        key = (int(site.stackid), int(site.kind), int(site.caller))
        if key not in oldest or ts < oldest[key]:
            oldest[key] = ts
    return oldest, copied


def _items(table: Any) -> Iterator[tuple[Any, Any]]:
    # the batch syscall reads thousands of entries per call instead of two syscalls per entry
    try:
        yield from table.items_lookup_batch()
        return
    except Exception:  # noqa: BLE001 - old kernels/bcc without batch ops: walk key by key
        pass
    try:
        yield from table.items()
    except KeyError:  # an entry deleted while iterating
        return


# ---- stack copies (STACK_COPY > 0) -------------------------------------------------------------
STACK_COPIED = -1000  # bpf/malloc_sites.h
STACK_WALKED = -1001
_EV_SAMPLE, _EV_CANCEL = 1, 2
_EVENT_HEADER = struct.Struct("<IIQQQQQQQII")  # struct stack_event up to stack[]
_CANCEL = struct.Struct("<IIQ")


@dataclass(frozen=True, slots=True)
class StackEvent:
    id: int
    kind: int
    size: int
    wbytes: int
    ts_ns: int
    ip: int
    sp: int
    bp: int
    tid: int
    stack: bytes  # the user stack from sp upwards


def parse_event(data: bytes) -> StackEvent | int | None:
    """A ring buffer record: a StackEvent, a cancelled sample's id (int), or None if malformed."""
    if len(data) >= _EVENT_HEADER.size:
        (etype, kind, eid, size, wbytes, ts, ip, sp, bp, tid, copied) = _EVENT_HEADER.unpack_from(data)
        if etype == _EV_SAMPLE:
            copied = min(copied, len(data) - _EVENT_HEADER.size)
            return StackEvent(eid, kind, size, wbytes, ts, ip, sp, bp, tid,
                              bytes(data[_EVENT_HEADER.size:_EVENT_HEADER.size + copied]))
    if len(data) >= _CANCEL.size:
        etype, _, eid = _CANCEL.unpack_from(data)
        if etype == _EV_CANCEL:
            return int(eid)
    return None


def open_events(loaded: Loaded, on_event: Callable[[StackEvent | int], None]) -> bool:
    """Deliver stack-copy events to on_event from drain_events(). False when the program was built
    without stack copies."""
    if not loaded.stack_copy:
        return False

    def callback(_ctx: Any, data: Any, size: int) -> int:
        ev = parse_event(ctypes.string_at(data, size))
        if ev is not None:
            on_event(ev)
        return 0

    loaded.bpf[b"stack_events"].open_ring_buffer(callback)
    loaded.events_open = True
    return True


def poll_events(loaded: Loaded, timeout_s: float) -> None:
    """Wait up to timeout_s for events, running the callback for each as it arrives."""
    if loaded.events_open:
        # records are submitted without a wakeup except every 64th: consume after the wait either way
        loaded.bpf.ring_buffer_poll(max(0, int(timeout_s * 1000)))
        loaded.bpf.ring_buffer_consume()
    else:
        time.sleep(timeout_s)


def remember_walk(loaded: Loaded, ip: int, sp: int, slot: int, bp: int | None,
                  words: list[tuple[int, int]], group: int) -> bool:
    """Tell the BPF side that a stack at (ip, sp) whose `words` (offset from sp, value) hold those
    values is group `group` (and so needs no copy); `slot` (< WALK_SLOTS) is which of the walks at
    (ip, sp) this is. False when it cannot be remembered there."""
    if not loaded.stack_copy or len(words) > WALK_READS or not 0 <= slot < WALK_SLOTS:
        return False
    walks = loaded.bpf[b"walks"]
    k = walks.Key()
    k.ip, k.sp, k.slot = ip, sp, slot
    try:
        walks[k] = walks.Leaf.from_buffer_copy(pack_walk(group, words, bp))
    except Exception:  # noqa: BLE001 - bcc raises a bare Exception when the map is full
        return False
    return True


def forget_walks(loaded: Loaded) -> None:
    if loaded.stack_copy:
        with contextlib.suppress(Exception):
            loaded.bpf[b"walks"].clear()


def drain_events(loaded: Loaded) -> None:
    """Run the event callback for everything in the ring buffer now (never blocks)."""
    if loaded.events_open:
        loaded.bpf.ring_buffer_consume()


def read_stack(loaded: Loaded, stackid: int) -> list[int]:
    if stackid < 0:
        return []
    try:
        return [int(a) for a in loaded.bpf[b"stacks"].walk(stackid)]
    except KeyError:
        return []
