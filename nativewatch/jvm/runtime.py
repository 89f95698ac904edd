"""The JVM behind the runtime interface: detected from libjvm.so, refined from NMT or hsperfdata.

Kept light on purpose: the NMT/attach machinery (jvm.attribute) is imported only when a JVM is
refined, so when it cannot be imported the caller (the agent) degrades JVMs to the native view
instead of losing detection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nativewatch.attribute import Attribution
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
)

__all__ = ["JVM", "JvmRuntime"]

_NO_NMT = ("no NMT data for this JVM: start it with -XX:NativeMemoryTracking=summary to see "
           "heap/direct/metaspace/... (without it JVM memory counts as native)")


def _nmt_categories(details: dict[str, Any]) -> dict[Any, Any]:
    cats = detail_section(details, "nmt").get("categories")
    return cats if isinstance(cats, dict) else {}


def _nmt_committed(details: dict[str, Any]) -> Iterator[tuple[str, float]]:
    for name, c in _nmt_categories(details).items():
        if isinstance(c, dict) and isinstance(c.get("committed_bytes"), int | float):
            yield str(name), float(c["committed_bytes"])


class JvmRuntime(Runtime):
    name = "jvm"
    needs_attach = True  # NMT is asked over the attach socket; without it only hsperfdata is read
    gauges = (DetailGauge("nativewatch_jvm_nmt_committed_bytes",
                          "JVM Native Memory Tracking committed bytes by NMT category", "nmt_category",
                          _nmt_committed),
              DetailGauge("nativewatch_jvm_heap_post_gc_bytes",
                          "JVM heap used outside eden: what the last collection left (the post-GC floor)", "",
                          detail_figure("gc", "heap_post_gc_bytes")),
              DetailGauge("nativewatch_jvm_heap_max_bytes", "JVM maximum heap (-Xmx)", "",
                          detail_figure("gc", "heap_max_bytes")),
              DetailGauge("nativewatch_jvm_gc_pause_seconds",
                          "Time in young and full collection pauses since the JVM started (rate() is the GC "
                          "time ratio)", "", detail_figure("gc", "pause_seconds"), counter=True))

    def detect(self, info: ProcessInfo) -> bool:
        return any(m.path.endswith("/libjvm.so") for m in info.mappings if m.inode)

    def refine(self, ctx: RefineContext, base: Attribution) -> Refinement:
        from nativewatch.jvm.attribute import attribute_jvm

        res = attribute_jvm(ctx.pid, ctx.mappings, base, proc_root=ctx.proc_root, timeout_s=ctx.timeout_s,
                            attach_jvm=ctx.attach)
        # "nmt" is the snapshot contract's key for these figures (also when they come from hsperfdata).
        details: dict[str, Any] = {"nmt": res.nmt} if res.nmt is not None else {}
        if res.gc is not None:
            details["gc"] = res.gc  # the snapshot JSON's "gc" key: post-GC floor, pause time, -Xmx
        return Refinement(dict(res.categories), tuple(res.sources), tuple(res.problems), details)

    def missing_figures(self, bd: Breakdown) -> str | None:
        return None if any(s.startswith("nmt") for s in bd.sources) else _NO_NMT

    def details_table(self, details: dict[str, Any]) -> DetailTable | None:
        cats = _nmt_categories(details)
        if not cats:
            return None
        keys = ("committed_bytes", "reserved_bytes", "malloc_bytes")
        rows = [(str(name), tuple(int(v.get(k) or 0) for k in keys)) for name, v in cats.items() if isinstance(v, dict)]
        rows.sort(key=lambda r: -r[1][0])
        return DetailTable("JVM Native Memory Tracking (committed)",
                           ("NMT CATEGORY", "COMMITTED", "RESERVED", "MALLOC"),
                           tuple(r for r in rows if r[1][0] or r[1][1]))


JVM = JvmRuntime()
