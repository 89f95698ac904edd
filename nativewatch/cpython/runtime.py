"""CPython behind the runtime interface: resident pymalloc arenas to `heap`, the rest of malloc `native`.

Passive: the arena table is read through /proc/PID/mem and residency through /proc/PID/pagemap;
nothing is signalled or attached. Objects larger than 512 bytes (and bytearray/bytes buffers, numpy
arrays, C extensions' memory) are malloc'd by CPython outside the arenas and stay `native`, which is
where a C-level leak shows. The slot holding the table's address is searched once per process and
kept; later reads cost a few syscalls. What cannot be read (no ptrace-read access, PYTHONMALLOC=malloc,
a free-threaded build, a table not found) keeps the native view with a problem saying so.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from nativewatch.attribute import Attribution, is_private_anon
from nativewatch.cpython.arenas import ArenaTable, arena_size_for, locate_table, read_table
from nativewatch.cpython.binary import PythonBinary, find_python
from nativewatch.model import Breakdown
from nativewatch.runtimes.base import (
    DetailGauge,
    DetailTable,
    ProcessInfo,
    RefineContext,
    Refinement,
    Runtime,
    detail_figure,
    detail_section,
    starting_age,
)
from nativewatch.runtimes.claim import claim_ranges
from nativewatch.sources.pagemap import Pagemap
from nativewatch.sources.procfs import Mapping
from nativewatch.sources.procmem import ProcMem

__all__ = ["PYTHON", "PythonRuntime"]

SOURCE = "pymalloc"
_MAX_SEGMENT = 64 << 20  # writable data of an interpreter is a few MiB; never read more than this
_slots: OrderedDict[tuple[int, int, int], tuple[int, tuple[int, ...]]] = OrderedDict()
_MAX_SLOTS = 4096


def _environ_malloc(proc_root: str, pid: int) -> str | None:
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            env = f.read(1 << 20)
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"PYTHONMALLOC="):
            return item[13:].decode("ascii", "replace")
    return None


def _image_segments(mappings: Sequence[Mapping], binary: PythonBinary, pid: int,
                    proc_root: str) -> list[Mapping]:
    """The interpreter file's writable mappings and the anonymous .bss right after them."""
    if binary.image is not None:
        key = (binary.image.dev, binary.image.inode)
    else:
        key = None
        try:
            st = os.stat(f"{proc_root}/{pid}/exe")
        except OSError:
            return []
        for m in mappings:
            if m.inode == st.st_ino and m.offset == 0:
                key = (m.dev, m.inode)
                break
        if key is None:
            return []
    ms = sorted(mappings, key=lambda m: m.start)
    out: list[Mapping] = []
    for i, m in enumerate(ms):
        if (m.dev, m.inode) == key and m.perms.startswith("rw"):
            out.append(m)
            if i + 1 < len(ms) and ms[i + 1].start == m.end and ms[i + 1].inode == 0 and not ms[i + 1].path:
                out.append(ms[i + 1])
    return out


def _anon_ranges(mappings: Sequence[Mapping]) -> list[tuple[int, int]]:
    return [(m.start, m.end) for m in mappings
            if m.perms.startswith("rw") and (m.path == "[heap]" or (is_private_anon(m) and not m.path))]


def _find_table(pid: int, proc_root: str, mappings: Sequence[Mapping], binary: PythonBinary,
                mem: ProcMem, arena_size: int) -> ArenaTable | None:
    anon = _anon_ranges(mappings)
    starts = [a for a, _ in anon]

    def in_anon(a: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return i >= 0 and a < anon[i][1]

    segs = _image_segments(mappings, binary, pid, proc_root)
    key = (pid, segs[0].start if segs else 0, segs[0].inode if segs else 0)
    known = _slots.get(key)
    if known is not None:
        table = read_table(known[0], mem.read, arena_size, in_anon, known[1])
        if table is not None:
            return table
    data: list[tuple[int, bytes]] = []
    for m in segs:
        raw = mem.read(m.start, min(m.size, _MAX_SEGMENT))
        if raw is not None:
            data.append((m.start, raw))
    found = locate_table(data, mem.read, arena_size, anon)
    if found is None:
        return None
    table, near = found
    _slots[key] = (table.slot, tuple(near))
    while len(_slots) > _MAX_SLOTS:
        _slots.popitem(last=False)
    return table


class PythonRuntime(Runtime):
    name = "python"
    gauges = (DetailGauge("nativewatch_python_pymalloc_arena_bytes",
                          "Bytes of pymalloc arenas CPython has mapped (arenas x arena size)", "",
                          detail_figure("python", "arena_bytes")),)

    def detect(self, info: ProcessInfo) -> bool:
        return find_python(info.pid, info.proc_root, info.mappings) is not None

    def refine(self, ctx: RefineContext, base: Attribution) -> Refinement:
        binary = find_python(ctx.pid, ctx.proc_root, ctx.mappings)
        native = Refinement(dict(base.categories), tuple(base.sources))
        if binary is None:
            return native
        info: dict[str, Any] = {"version": binary.version}

        def degraded(why: str) -> Refinement:
            return Refinement(dict(base.categories), tuple(base.sources), (why,), {"python": info})

        setting = _environ_malloc(ctx.proc_root, ctx.pid)
        if setting is not None and setting.startswith("malloc"):
            info["allocator"] = "malloc"
            return degraded(f"PYTHONMALLOC={setting}: Python objects are malloc'd, so they count as native")
        if binary.free_threaded:
            info["allocator"] = "mimalloc"
            return degraded("free-threaded CPython keeps objects in mimalloc heaps, not pymalloc arenas: "
                            "they count as native")
        arena_size = arena_size_for(binary.minor)
        with ProcMem(ctx.pid, ctx.proc_root) as mem:
            table = _find_table(ctx.pid, ctx.proc_root, ctx.mappings, binary, mem, arena_size)
            error = mem.error
        if error is not None:
            return degraded(f"pymalloc arenas not located: /proc/{ctx.pid}/mem unreadable ({error}; needs "
                            "ptrace-read access, CAP_SYS_PTRACE): Python objects count as native")
        if table is None:
            age = starting_age(ctx)
            if age is not None:
                return degraded(f"pymalloc's arena table not found yet: the interpreter started {age:.1f} s ago "
                                "and may still be initialising; Python objects count as native")
            return degraded("pymalloc's arena table not found in the interpreter's data (an unknown build?): "
                            "Python objects count as native")
        ranges = [(a.address, a.address + arena_size, "heap", "arenas") for a in table.arenas]
        pm = Pagemap(ctx.pid, ctx.proc_root)
        try:
            claimed = claim_ranges(base, ranges, pm)
        finally:
            pm.close()
        problems: tuple[str, ...] = ()
        if not claimed.exact:
            problems = ("pagemap unreadable: arenas sharing a mapping with other memory were split by size",)
        info.update({"allocator": "pymalloc", "arenas": len(table.arenas), "arena_size_bytes": arena_size,
                     "arena_bytes": len(table.arenas) * arena_size,
                     "arena_resident_bytes": claimed.by_label.get("arenas", 0),
                     "free_pools": sum(a.nfreepools for a in table.arenas)})
        return Refinement(claimed.categories, (*base.sources, SOURCE), problems, {"python": info})

    def missing_figures(self, bd: Breakdown) -> str | None:
        if SOURCE in bd.sources:
            return None
        return "pymalloc arenas not located: Python objects are shown as native"

    def details_table(self, details: dict[str, Any]) -> DetailTable | None:
        p = detail_section(details, "python")
        if not isinstance(p.get("arenas"), int):
            return None
        return DetailTable(f"CPython {p.get('version') or ''} pymalloc", ("", "MAPPED", "RESIDENT"),
                           (("arenas", (int(p.get("arena_bytes") or 0), int(p.get("arena_resident_bytes") or 0))),))


PYTHON = PythonRuntime()
