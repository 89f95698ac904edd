"""The OOMKill triage of the field guide as a function: measured inputs in, a verdict and what to do next
out. Pure: the explain command gathers the inputs, this decides.

The decision, in the guide's order:
1. RSS against the managed-heap limit (-Xmx, GOMEMLIMIT): far above it, the growth is off-heap
   whatever the heap does (said as evidence; the growth decides the verdict).
2. Which categories grow (the shared growth policy, over the window sampled), ranked by slope.
3. For a JVM, the post-GC floor: rising means the live set grows, a heap leak (heap dump / JFR's
   old-object sample); a flat floor under a rising committed heap is allocation, not a leak.
4. Otherwise the growing off-heap category says which tool comes next: Metaspace -> class loaders,
   thread -> the unbounded executor, direct -> NIO/Netty buffers, native -> allocation sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nativewatch.growth import LeakVerdict
from nativewatch.jvm.gcstats import FloorTrend
from nativewatch.units import human_bytes

__all__ = ["Growing", "TriageInput", "Explanation", "explain", "VERDICTS", "MIN_SAMPLES", "MIN_WINDOW_S"]

VERDICTS = ("heap", "off-heap", "no-leak", "insufficient-data")
MIN_SAMPLES = 5
MIN_WINDOW_S = 20.0  # explain's own sampling: shorter says nothing about a trend
# A floor must rise this much over the window to count (young collections leave survivors behind,
# so consecutive floors wobble by a few MiB)
MIN_FLOOR_RISE_BYTES = 4 << 20
# The guide's cost of a live heap dump: a stop-the-world walk of the live heap, 10-30 s for 20 GB
DUMP_PAUSE_S_PER_GIB = (0.5, 1.5)


@dataclass(frozen=True, slots=True)
class Growing:
    category: str
    bytes_per_second: float
    share: float

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "bytes_per_second": round(self.bytes_per_second, 1),
                "share": round(self.share, 3)}


@dataclass(frozen=True, slots=True)
class TriageInput:
    pid: int
    runtime: str
    rss_bytes: int
    managed_heap_limit_bytes: int | None
    growth: Mapping[str, LeakVerdict]
    window_s: float
    samples: int
    heap_post_gc: FloorTrend | None = None
    gc_time_ratio: float | None = None
    sites: Sequence[Mapping[str, Any]] = ()
    container_working_set_bytes: int | None = None
    container_limit_bytes: int | None = None
    min_slope_bytes_per_second: float = 1024.0
    # shortest history that can say anything; the agent passes its own policy's (its verdicts already
    # embody its windows), explain its default
    min_window_s: float = MIN_WINDOW_S


@dataclass(frozen=True, slots=True)
class Explanation:
    verdict: str
    growing: tuple[Growing, ...]
    summary: str                      # one line: for an Event message or a terminal
    evidence: tuple[str, ...] = ()
    next_steps: tuple[str, ...] = ()
    sites: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "summary": self.summary, "growing": [g.to_json() for g in self.growing],
                "evidence": list(self.evidence), "next_steps": list(self.next_steps),
                "sites": [dict(s) for s in self.sites]}


def _growing(growth: Mapping[str, LeakVerdict]) -> tuple[Growing, ...]:
    up = sorted(((c, v.bytes_per_second) for c, v in growth.items() if v.leak and v.bytes_per_second > 0),
                key=lambda cs: (-cs[1], cs[0]))
    total = sum(s for _, s in up)
    return tuple(Growing(c, s, s / total) for c, s in up) if total > 0 else ()


def _rate(bps: float) -> str:
    return f"{human_bytes(int(abs(bps)))}/s"


def _floor_rising(inp: TriageInput) -> bool:
    f = inp.heap_post_gc
    return (f is not None and f.points >= 3 and f.bytes_per_second >= inp.min_slope_bytes_per_second
            and f.bytes_per_second * inp.window_s >= MIN_FLOOR_RISE_BYTES)


_OFF_HEAP_STEPS: dict[str, tuple[str, ...]] = {
    "metaspace": (
        "class-loader leak (redeploys, dynamic proxies, scripting engines): `jcmd {pid} VM.classloader_stats` "
        "and `jcmd {pid} GC.class_histogram` show which loader multiplies; in a heap dump, the class-loader "
        "explorer shows duplicate loaders and what pins them (often a ThreadLocal or a driver registry)",
        "cap -XX:MaxMetaspaceSize so the leak fails loudly with a Metaspace OutOfMemoryError instead of an "
        "OOMKill",
    ),
    "thread": (
        "thread leak (each thread keeps its stack resident): `jcmd {pid} Thread.print` and count threads by "
        "name prefix to find the unbounded executor or the thread started per request",
    ),
    "direct": (
        "direct (off-heap) buffers: NIO or Netty buffers that are kept or never released; cap "
        "-XX:MaxDirectMemorySize so it fails with an OutOfMemoryError naming direct memory",
        "Netty: -Dio.netty.leakDetection.level=paranoid logs the allocation stack of every buffer collected "
        "without release()",
        "`jcmd {pid} VM.native_memory summary.diff` against a baseline confirms the category over time",
    ),
    "code": (
        "the JIT code cache grows: many generated classes or a huge hot path; -XX:ReservedCodeCacheSize caps "
        "it; `jcmd {pid} Compiler.codecache` shows the segments",
    ),
    "gc": (
        "the collector's own structures grow (e.g. G1 remembered sets with the heap's region count): usually "
        "follows heap size; compare with the heap floor",
    ),
    "runtime": (
        "the runtime's own native structures grow: `jcmd {pid} VM.native_memory detail.diff` (JVM) names the "
        "subsystem",
    ),
    "file": (
        "file-backed pages grow (mapped files, page cache charged to the process): count as RSS but the kernel "
        "can reclaim clean ones; check memory-mapped files that are never unmapped",
    ),
    "shmem": (
        "shared memory grows (tmpfs files, SysV/POSIX shared memory): look for files in /dev/shm or tmpfs "
        "volumes that are never removed",
    ),
}


def _native_steps(inp: TriageInput) -> tuple[str, ...]:
    steps = []
    if inp.sites:
        top = inp.sites[0]
        frames = " <- ".join(list(top.get("frames", []))[:3])
        steps.append(f"the largest outstanding allocation site is {frames} "
                     f"({human_bytes(int(top.get('outstanding_bytes', 0)))} outstanding): start there")
    else:
        steps.append(f"`nativewatch profile --pid {inp.pid} --duration 60s` names the allocation sites that "
                     "hold the growth")
    if inp.runtime == "jvm":
        steps.append("in a JVM, native growth outside NMT's categories is JNI or a C library (compression, "
                     "crypto, image codecs): the sites' libraries say which")
    return tuple(steps)


def _heap_steps(inp: TriageInput) -> tuple[str, ...]:
    if inp.runtime == "go":
        return ("Go heap: `curl -s localhost:6060/debug/pprof/heap > a.pb.gz`, again later, then "
                "`go tool pprof -inuse_space -base a.pb.gz b.pb.gz` shows the growth by stack (nearly free)",)
    if inp.runtime == "node":
        return (f"V8 heap: start Node with `--heapsnapshot-signal=SIGUSR2`, then `kill -USR2 {inp.pid}` twice some "
                "minutes apart (the process pauses while each is written, and the file is about the heap's size); "
                "load both .heapsnapshot files in Chrome DevTools (Memory -> Comparison) to see which constructors grow",
                "`node --heapsnapshot-near-heap-limit=2` writes snapshots by itself before an out-of-heap crash")
    if inp.runtime == "python":
        return ("Python objects: `tracemalloc` (PYTHONTRACEMALLOC=25 at start, then "
                "`tracemalloc.take_snapshot().compare_to(old, 'traceback')`) names the lines whose objects grow",
                f"without a restart: `memray attach {inp.pid}` (injects into the process; try it on a drained "
                "instance) or `py-spy dump --pid` to see what the threads are doing",
                "gc.get_objects() counted by type twice, minutes apart, shows which types accumulate")
    if inp.runtime != "jvm":
        return ("the managed heap grows: take two heap snapshots some minutes apart under steady load and diff "
                "them",)
    live = inp.heap_post_gc.bytes if inp.heap_post_gc else 0
    gib = live / (1 << 30)
    lo, hi = (gib * x for x in DUMP_PAUSE_S_PER_GIB)
    return (
        f"JFR's old-object sample first (continuous, about 1% overhead, gives each leaking object's allocation "
        f"stack and GC root): `jcmd {inp.pid} JFR.start name=leak settings=profile` then "
        f"`jcmd {inp.pid} JFR.dump name=leak filename=leak.jfr` and `jfr print --events OldObjectSample leak.jfr`",
        f"a heap dump (`jcmd {inp.pid} GC.heap_dump /path/live.hprof`) writes about {human_bytes(int(live))} "
        f"(the live set) and stops the JVM for roughly {lo:.1f}-{hi:.1f} s: take it from a drained instance, "
        "and make sure the volume has the room",
        "two dumps some minutes apart under steady load, compared in Eclipse MAT (Histogram -> Compare), show "
        "which objects grow",
    )


def explain(inp: TriageInput) -> Explanation:
    growing = _growing(inp.growth)
    evidence: list[str] = []
    lim = inp.managed_heap_limit_bytes
    if lim:
        ratio = inp.rss_bytes / lim
        evidence.append(f"RSS {human_bytes(inp.rss_bytes)} is {ratio:.2f}x the managed-heap limit "
                        f"{human_bytes(lim)}" + (": the excess is outside the heap" if ratio > 1.2 else ""))
    if inp.container_limit_bytes and inp.container_working_set_bytes is not None:
        evidence.append(f"container working set {human_bytes(inp.container_working_set_bytes)} of its "
                        f"{human_bytes(inp.container_limit_bytes)} limit")
    for g in growing:
        evidence.append(f"{g.category} grows {_rate(g.bytes_per_second)} ({g.share:.0%} of the growth)")
    f = inp.heap_post_gc
    if f is not None:
        evidence.append(f"post-GC heap floor {human_bytes(f.bytes)}, {'+' if f.bytes_per_second >= 0 else '-'}"
                        f"{_rate(f.bytes_per_second)} over {f.points} collections")
    elif inp.runtime == "jvm":
        evidence.append("fewer than 3 collections in the window: no post-GC floor")
    if inp.gc_time_ratio is not None:
        evidence.append(f"{inp.gc_time_ratio:.1%} of the time in GC pauses")

    def insufficient(why: str) -> Explanation:
        return Explanation("insufficient-data", growing, f"pid {inp.pid}: {why}", tuple(evidence),
                           (f"watch longer: `nativewatch explain --pid {inp.pid} --duration 5m`",), tuple(inp.sites))

    if inp.samples < MIN_SAMPLES or inp.window_s < inp.min_window_s:
        return insufficient(f"not enough data ({inp.samples} samples over {inp.window_s:.0f} s)")
    off_heap = [g for g in growing if g.category != "heap"]
    heap_grows = any(g.category == "heap" for g in growing)
    verdict, cat = "no-leak", ""
    if inp.runtime == "jvm":
        if _floor_rising(inp) and (not off_heap or f is not None and f.bytes_per_second >= off_heap[0].bytes_per_second):
            verdict, cat = "heap", "heap"
        elif off_heap:
            verdict, cat = "off-heap", off_heap[0].category
        elif heap_grows and f is None:
            return insufficient("the heap's resident pages grow but fewer than 3 collections ran: a leak "
                                "cannot be told from allocation yet")
    elif growing:
        cat = growing[0].category
        verdict = "heap" if cat == "heap" else "off-heap"

    if verdict == "heap":
        steps = _heap_steps(inp)
        rate = f.bytes_per_second if (f is not None and inp.runtime == "jvm") else \
            next((g.bytes_per_second for g in growing if g.category == "heap"), 0.0)
        summary = f"heap leak: the live heap grows {_rate(rate)}"
    elif verdict == "off-heap":
        steps = _native_steps(inp) if cat == "native" else \
            tuple(s.format(pid=inp.pid) for s in _OFF_HEAP_STEPS.get(cat, ()))
        top = next(g for g in growing if g.category == cat)
        summary = f"off-heap growth: {cat} grows {_rate(top.bytes_per_second)}"
        if cat == "native" and inp.sites:
            summary += f", mostly at {list(inp.sites[0].get('frames', ['?']))[0]}"
        if lim and inp.rss_bytes > lim:
            summary += f"; RSS is {inp.rss_bytes / lim:.1f}x the heap limit: a heap dump will not show it"
    else:
        steps = ("memory is not rising in this window; if the container was OOM-killed anyway, its limit is below "
                 "the peak working set (sizing, not a leak) or the growth happens at other times: let the agent "
                 "watch it",)
        summary = "no leak: no category grows" + (" (the heap's post-GC floor is flat)" if f is not None else "")
    return Explanation(verdict, growing, f"pid {inp.pid} ({inp.runtime}): {summary}", tuple(evidence), steps,
                       tuple(inp.sites) if verdict == "off-heap" and cat == "native" else ())
