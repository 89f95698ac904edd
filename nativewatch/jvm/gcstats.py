"""The JVM's post-GC heap floor and GC time, read from its hsperfdata file without attaching.

hsperfdata is the memory-mapped counter file every HotSpot JVM publishes (jstat reads it): per collector
an invocation count and accumulated pause time in ticks of sun.os.hrt.frequency, per generation space
the bytes used. Polled a few times a second, a collector's count going up marks a collection, and the
heap used in that next sample is the heap right after it: the post-GC floor of the field guide, the
live set plus what the collection could not reclaim yet. A rising floor is a heap leak; a flat floor
under a busy sawtooth is allocation.

Collectors counted: HotSpot's collector.0 (young pauses) and collector.1 (full/old pauses), the same
pauses the GarbageCollectorMXBeans report ("G1 Young/Old Generation", "PS Scavenge/MarkSweep", ...).
G1's collector.2 counts its concurrent cycle's remark and cleanup pauses, which JDK 17's beans leave out,
so it is kept apart (`other_pause_s`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from nativewatch.jvm.hsperf import PerfData, heap_reservation_bytes

__all__ = ["GcSample", "gc_sample", "max_heap_bytes", "post_gc_floor", "FloorTrend", "floor_trend",
           "gc_time_ratio", "gc_figures"]

_SIZE = re.compile(r"^(\d+)([kKmMgGtT]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX_POINTS = 400  # Theil-Sen is quadratic: the last 400 collections are plenty for a slope


@dataclass(frozen=True, slots=True)
class GcSample:
    t: float              # seconds, monotonic clock of the sampler
    heap_used: int        # bytes used in every generation space
    collections: int      # young + full collections so far
    pause_s: float        # their accumulated pause time
    other_pause_s: float  # other pauses (G1 remark/cleanup)


def _int(pd: PerfData, name: str) -> int:
    v = pd.int_value(name)
    return v if v is not None and v >= 0 else 0


def gc_sample(pd: PerfData, t: float) -> GcSample | None:
    """One sample, or None when the file has no GC counters (not accessible, or not HotSpot)."""
    if not pd.accessible or pd.int_value("sun.gc.collector.0.invocations") is None:
        return None
    freq = pd.int_value("sun.os.hrt.frequency") or 0
    if freq <= 0:
        return None
    used = 0
    for gen in range(3):
        for space in range(4):
            used += _int(pd, f"sun.gc.generation.{gen}.space.{space}.used")
    collections = _int(pd, "sun.gc.collector.0.invocations") + _int(pd, "sun.gc.collector.1.invocations")
    pause = (_int(pd, "sun.gc.collector.0.time") + _int(pd, "sun.gc.collector.1.time")) / freq
    other = sum(_int(pd, f"sun.gc.collector.{c}.time") for c in range(2, 5)) / freq
    return GcSample(t, used, collections, pause, other)


def parse_size(text: str) -> int | None:
    m = _SIZE.match(text.strip())
    return int(m.group(1)) * _UNITS[m.group(2).lower()] if m else None


def max_heap_bytes(pd: PerfData) -> int | None:
    """-Xmx (or -XX:MaxHeapSize) when given on the command line, else the heap reservation the JVM
    publishes (hsperf.heap_reservation_bytes)."""
    args = " ".join(filter(None, (pd.str_value("java.rt.vmArgs"), pd.str_value("java.rt.vmFlags"))))
    found: int | None = None
    for tok in args.split():  # the last one wins, as for the JVM itself
        v = None
        if tok.startswith("-Xmx"):
            v = parse_size(tok[4:])
        elif tok.startswith("-XX:MaxHeapSize="):
            v = parse_size(tok.split("=", 1)[1])
        if v:
            found = v
    return found or heap_reservation_bytes(pd) or None


def post_gc_floor(samples: Sequence[GcSample]) -> list[tuple[float, int]]:
    """(time, heap used) in the first sample after each collection."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        if b.collections > a.collections:
            out.append((b.t, b.heap_used))
    return out


@dataclass(frozen=True, slots=True)
class FloorTrend:
    bytes: int                # the floor at the last collection
    bytes_per_second: float
    points: int               # collections seen
    fit: float

    def to_json(self) -> dict[str, float | int]:
        return {"bytes": self.bytes, "bytes_per_second": round(self.bytes_per_second, 1), "points": self.points,
                "fit": round(self.fit, 3)}


def floor_trend(points: Sequence[tuple[float, int]]) -> FloorTrend | None:
    """The floor's slope: the median of the slopes between every two collections (Theil-Sen: a
    collection that could not reclaim much, e.g. before a mixed one, does not tilt the line); `fit`
    is the least-squares R^2, for the reader. None with fewer than 3 collections."""
    pts = [(float(t), float(v)) for t, v in points[-_MAX_POINTS:]]
    if len(pts) < 3:
        return None
    slopes = [(v2 - v1) / (t2 - t1) for i, (t1, v1) in enumerate(pts) for t2, v2 in pts[i + 1:] if t2 > t1]
    if not slopes:
        return None
    slope = median(slopes)
    n = len(pts)
    mt, mv = sum(t for t, _ in pts) / n, sum(v for _, v in pts) / n
    stt = sum((t - mt) ** 2 for t, _ in pts)
    svv = sum((v - mv) ** 2 for _, v in pts)
    stv = sum((t - mt) * (v - mv) for t, v in pts)
    r2 = (stv * stv) / (stt * svv) if stt > 0 and svv > 0 else 0.0
    return FloorTrend(int(points[-1][1]), slope, len(points), r2)


def gc_time_ratio(samples: Sequence[GcSample]) -> float | None:
    """Share of wall time spent in young and full collection pauses over the samples."""
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return None
    return max(0.0, samples[-1].pause_s - samples[0].pause_s) / (samples[-1].t - samples[0].t)


def _eden_used(pd: PerfData) -> int | None:
    for space in range(4):
        if pd.str_value(f"sun.gc.generation.0.space.{space}.name") == "eden":
            return _int(pd, f"sun.gc.generation.0.space.{space}.used")
    return None


def gc_figures(pd: PerfData) -> dict[str, int | float] | None:
    """What a periodic reader (the agent, every scan) can publish of the GC from one hsperfdata read.

    `heap_post_gc_bytes` is the heap used outside eden: new objects are allocated in eden, so survivor
    and old-generation occupancy only change at collections, and between two collections this is what
    the last one left (plus objects too large for eden, which go straight to the old generation). It is
    the post-GC floor without having to catch the moment after each collection. None for collectors
    without an eden (ZGC, Shenandoah) or without GC counters."""
    s = gc_sample(pd, 0.0)
    eden = _eden_used(pd)
    if s is None or eden is None:
        return None
    out: dict[str, int | float] = {"heap_used_bytes": s.heap_used, "collections": s.collections,
                                   "pause_seconds": round(s.pause_s, 6)}
    if s.collections > 0:  # before the first collection there is no floor yet, only allocation
        out["heap_post_gc_bytes"] = max(0, s.heap_used - eden)
    limit = max_heap_bytes(pd)
    if limit:
        out["heap_max_bytes"] = limit
    return out
