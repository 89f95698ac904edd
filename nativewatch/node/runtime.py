"""Node.js behind the runtime interface: V8's pages to `heap` and `code`, everything else as before.

Passive: V8's page headers are read through /proc/PID/mem and residency through /proc/PID/pagemap;
nothing is signalled, no inspector is opened, nothing attaches. Buffers and ArrayBuffers are malloc'd
outside the V8 heap and stay `native`; worker threads' stacks are found by their stack pointers like
every thread's. Without ptrace-read access, or with a V8 whose page header is not recognised, the
process keeps the native view and a problem says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nativewatch.attribute import Attribution
from nativewatch.model import Breakdown
from nativewatch.node.binary import find_node
from nativewatch.node.limit import heap_limit, node_flags
from nativewatch.node.v8heap import find_chunks, space_of
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
from nativewatch.sources.cgroup_memory import constrained_memory, parse_limit
from nativewatch.sources.pagemap import Pagemap
from nativewatch.sources.procmem import ProcMem

__all__ = ["NODE", "NodeRuntime"]

SOURCE = "v8-pages"
_SPACES = ("old", "young", "large", "code")
_LIBUV_1_45 = (20, 3, 0)  # the first Node whose libuv reads the process's own cgroup (v1 and v2)


def _read_text(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""


def _legacy_cgroup_limit(ctx: RefineContext) -> int | None:
    """What libuv before 1.45 (Node 18; Debian's build links Debian's libuv 1.44) reports: the file
    /sys/fs/cgroup/memory/memory.limit_in_bytes as the process sees it, in its own mount namespace (a
    container's cgroup mount; on a host, the root cgroup), read without following links out of its
    root. Nothing on cgroup v2."""
    from nativewatch.malloc_profile.symbolize import open_in_root  # only for these old Nodes

    try:
        raw = open_in_root(f"{ctx.proc_root}/{ctx.pid}/root", "sys/fs/cgroup/memory/memory.limit_in_bytes", 64)
    except OSError:
        return None
    v, _ = parse_limit(raw.decode("ascii", "replace"), 1)
    return v or None


def _mem_total(proc_root: str) -> int:
    for line in _read_text(f"{proc_root}/meminfo").splitlines():
        if line.startswith(b"MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return 0


def _spaces(details: dict[str, Any]) -> Iterator[tuple[str, float]]:
    spaces = detail_section(details, "node").get("spaces")
    if isinstance(spaces, dict):
        for name, v in spaces.items():
            if isinstance(v, dict) and isinstance(v.get("committed_bytes"), int):
                yield str(name), float(v["committed_bytes"])


class NodeRuntime(Runtime):
    name = "node"
    gauges = (DetailGauge("nativewatch_node_v8_committed_bytes",
                          "V8 heap pages mapped by Node, by kind of page (old, young, large, code)", "space",
                          _spaces),
              DetailGauge("nativewatch_node_heap_limit_bytes",
                          "V8's heap limit (--max-old-space-size plus the young generation, or V8's default)",
                          "", detail_figure("node", "heap_limit_bytes")))

    def detect(self, info: ProcessInfo) -> bool:
        return find_node(info.pid, info.proc_root, info.mappings) is not None

    def refine(self, ctx: RefineContext, base: Attribution) -> Refinement:
        binary = find_node(ctx.pid, ctx.proc_root, ctx.mappings)
        environ = _read_text(f"{ctx.proc_root}/{ctx.pid}/environ")
        cmdline = [a.decode("utf-8", "replace")
                   for a in _read_text(f"{ctx.proc_root}/{ctx.pid}/cmdline").split(b"\0") if a]
        version = binary.version if binary else None
        release = tuple(int(x) for x in version.split(".")) if version else None
        major = release[0] if release else None
        machine = _mem_total(ctx.proc_root)
        cgroup = _legacy_cgroup_limit(ctx) if release is not None and release < _LIBUV_1_45 else \
            constrained_memory(ctx.pid, cgroup_root=ctx.cgroup_root, proc_root=ctx.proc_root)
        memory = min(machine, cgroup) if cgroup and machine else (cgroup or machine)
        limit = heap_limit(node_flags(cmdline, environ), memory, major)
        info: dict[str, Any] = {"version": version, "heap_limit_bytes": limit.bytes,
                                "heap_limit_source": limit.source, "sized_for_bytes": memory,
                                "sized_for": "cgroup" if cgroup and memory == cgroup else "machine"}
        with ProcMem(ctx.pid, ctx.proc_root) as mem:
            heap = find_chunks(ctx.mappings, mem.read)
            error = mem.error
        problems: list[str] = []
        if error is not None:
            problems.append(f"V8 heap not located: /proc/{ctx.pid}/mem unreadable ({error}; needs ptrace-read "
                            "access, CAP_SYS_PTRACE): the V8 heap counts as native")
            return Refinement(dict(base.categories), tuple(base.sources), tuple(problems), {"node": info})
        if not heap.chunks:
            age = starting_age(ctx)
            if age is not None:
                problems.append(f"no V8 heap page yet: node started {age:.1f} s ago and may still be "
                                "initialising; the V8 heap counts as native")
                return Refinement(dict(base.categories), tuple(base.sources), tuple(problems), {"node": info})
            problems.append("no V8 heap page recognised (a V8 whose page header nativewatch does not know): "
                            "the V8 heap counts as native")
            return Refinement(dict(base.categories), tuple(base.sources), tuple(problems), {"node": info})
        if heap.truncated:
            problems.append(f"V8 page search stopped after {heap.candidates} candidate pages: part of the heap "
                            "may count as native")
        ranges = [(c.start, c.end, "code" if c.start in heap.code else "heap", space_of(c, heap))
                  for c in heap.chunks]
        pm = Pagemap(ctx.pid, ctx.proc_root)
        try:
            claimed = claim_ranges(base, ranges, pm)
        finally:
            pm.close()
        if not claimed.exact:
            problems.append("pagemap unreadable: V8 pages sharing a mapping with other memory were split by size")
        committed = dict.fromkeys(_SPACES, 0)
        for c in heap.chunks:
            committed[space_of(c, heap)] += c.size
        info.update({
            "isolates": heap.isolates, "pages": len(heap.chunks),
            "page_layout": "+".join(sorted({c.layout for c in heap.chunks})),
            "spaces": {s: {"committed_bytes": committed[s], "resident_bytes": claimed.by_label.get(s, 0)}
                       for s in _SPACES},
        })
        return Refinement(claimed.categories, (*base.sources, SOURCE), tuple(problems), {"node": info})

    def missing_figures(self, bd: Breakdown) -> str | None:
        if SOURCE in bd.sources:
            return None
        return ("V8 heap not located (needs ptrace-read access to the process): the JavaScript heap is shown "
                "as native")

    def details_table(self, details: dict[str, Any]) -> DetailTable | None:
        spaces = detail_section(details, "node").get("spaces")
        if not isinstance(spaces, dict):
            return None
        rows = tuple((str(name), (int(v.get("committed_bytes") or 0), int(v.get("resident_bytes") or 0)))
                     for name, v in spaces.items() if isinstance(v, dict))
        return DetailTable("V8 heap pages", ("V8 SPACE", "MAPPED", "RESIDENT"), rows)

    def heap_limit(self, details: dict[str, Any]) -> int | None:
        v = detail_section(details, "node").get("heap_limit_bytes")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


NODE = NodeRuntime()
