"""JVM refinement of the native attribution: resident bytes per JVM category, summing exactly to Rss.

Three paths, best first (`sources` says which one ran):
1. NMT detail ("smaps","nmt-detail") or, on JDK 21+ with NMT summary, System.map ("smaps","nmt-summary",
   "system-map"): every committed NMT region is intersected with smaps. A mapping covered by one NMT
   category gives it its whole Rss. When one VMA holds several NMT regions (the kernel merges adjacent
   anonymous VMAs with equal flags, e.g. code cache next to GC bitmaps), smaps has only the VMA total,
   so the present pages of each part are counted in /proc/PID/pagemap and the VMA's Rss is split in
   that ratio (largest remainder, so the parts sum to the VMA's Rss exactly). Without pagemap access the
   split falls back to committed sizes and a problem says so.
2. NMT summary only ("smaps","nmt-summary"): what smaps can prove is placed exactly - the Java heap and
   the compressed class space are the runs of contiguous anonymous mappings whose span equals their
   NMT reserved size - and the remaining NMT mmap figures join the malloc split below (capped by what
   is resident).
3. NMT off or attach impossible ("smaps","hsperfdata"): the heap and class-space reservations are found
   the same way from hsperfdata's max capacities; everything else keeps the native view.

Malloc split (DESIGN.md): glibc arenas, the brk heap, and private anonymous memory no NMT region covers
(glibc serves large malloc() requests, e.g. direct buffers, with their own mmaps) form the malloc pool.
NMT's malloc-backed figure per category (committed - mmap committed: malloc + arena + tracking
overhead) is taken from that pool; what is left stays `native` (JNI, fragmentation, allocator slack).
If NMT's figures exceed the pool they are scaled down to fit, so the sum always equals Rss.

NMT -> DESIGN categories: Java Heap -> heap; Class, Metaspace, Shared class space (CDS archives hold
class metadata) -> metaspace; Thread, Thread Stack -> thread; Other -> direct (JDK >= 11; on JDK 8,
with no "Other", Internal held direct buffers -> direct); Code -> code; GC, GCCardSet -> gc; the
rest -> runtime.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nativewatch.attribute import Attribution, MappingShare
from nativewatch.errors import AccessDenied, NativewatchError, ProcessGone
from nativewatch.jvm import attach, hsperf, nmt
from nativewatch.jvm.gcstats import gc_figures
from nativewatch.model import CATEGORIES
from nativewatch.regions import Region, apportion, split_by_regions
from nativewatch.sources.pagemap import PAGE, Pagemap
from nativewatch.sources.procfs import Mapping

__all__ = ["JvmAttribution", "attribute_jvm", "refine", "design_category", "apportion", "split_by_regions",
           "find_reservation", "nmt_baseline", "nmt_diff", "fetch_nmt", "NmtFetch"]

POOL_KINDS = ("malloc-arena", "brk-heap", "anon")
_MMAP_ONLY = ("Java Heap", "Shared class space", "Thread Stack")


@dataclass(frozen=True, slots=True)
class JvmAttribution:
    categories: dict[str, int]
    sources: list[str]
    nmt: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    gc: dict[str, Any] | None = None  # gcstats.gc_figures of the hsperfdata read


def design_category(nmt_name: str, *, has_other: bool = True) -> str:
    n = nmt_name.strip()
    if n == "Java Heap":
        return "heap"
    if n in ("Class", "Metaspace", "Shared class space"):
        return "metaspace"
    if n in ("Thread", "Thread Stack"):
        return "thread"
    if n == "Other":
        return "direct"
    if n == "Internal":
        return "runtime" if has_other else "direct"
    if n == "Code":
        return "code"
    if n in ("GC", "GCCardSet"):
        return "gc"
    return "runtime"


def find_reservation(shares: Sequence[MappingShare], size: int) -> tuple[int, int] | None:
    """The unique run of contiguous private anonymous (or CDS) mappings spanning exactly `size` bytes."""
    if size <= 0:
        return None
    ms = [s.mapping for s in shares]
    # glibc arenas are contiguous 64 MiB blocks too; they are never a JVM reservation.
    ok = [_plain_anon(s.mapping) and s.kind not in ("malloc-arena", "brk-heap", "thread-stack") for s in shares]
    found: list[tuple[int, int]] = []
    for i, m in enumerate(ms):
        if not ok[i]:
            continue
        end = m.end
        j = i
        while end - m.start < size and j + 1 < len(ms) and ms[j + 1].start == end and ok[j + 1]:
            j += 1
            end = ms[j].end
        if end - m.start == size:
            found.append((m.start, end))
    return found[0] if len(found) == 1 else None


def _plain_anon(m: Mapping) -> bool:
    # CDS maps archived heap objects from the .jsa file into the middle of the Java heap (JDK 12+).
    return not m.shared and ((m.path == "" and m.inode == 0) or m.path.endswith(".jsa"))


@dataclass(frozen=True, slots=True)
class NmtFetch:
    report: nmt.NmtReport | None
    regions: tuple[Region, ...] | None
    level: str  # "detail" | "summary" | "off" | "unavailable"
    region_source: str | None  # "nmt-detail" | "system-map" | None
    version: str | None
    problems: tuple[str, ...]


def _jdk_version(pid: int, proc_root: str) -> tuple[str | None, hsperf.PerfData | None]:
    try:
        pd = hsperf.read_hsperfdata(pid, proc_root)
    except (AccessDenied, OSError, NativewatchError):
        return None, None
    if pd is None:
        return None, None
    return pd.str_value("java.property.java.vm.version"), pd


def _major(version: str | None) -> int | None:
    if not version:
        return None
    head = version.split("+")[0].split("-")[0]
    parts = head.split(".")
    try:
        major = int(parts[0])
        return int(parts[1]) if major == 1 and len(parts) > 1 else major
    except ValueError:
        return None


def _remaining(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


def _with_gaps(r: nmt.NmtRegion) -> list[Region]:
    out: list[Region] = []
    cur = r.start
    for s, e in r.committed:
        if s > cur:
            out.append((cur, s, r.category, False))
        out.append((s, e, r.category, True))
        cur = e
    if cur < r.end:
        out.append((cur, r.end, r.category, False))
    return out


def fetch_nmt(pid: int, proc_root: str = "/proc", timeout_s: float = 5.0,
              version: str | None = None) -> NmtFetch:
    """Ask the JVM for NMT detail (one attach); fall back to summary (+ System.map on JDK 21+)."""
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    try:
        text = attach.jcmd(pid, "VM.native_memory detail", proc_root=proc_root, timeout_s=_remaining(deadline))
    except attach.NotAttachable as exc:
        return NmtFetch(None, None, "unavailable", None, version, (f"attach not possible: {exc}",))
    except attach.AttachError as exc:
        return NmtFetch(None, None, "unavailable", None, version, (f"attach failed: {exc}",))
    if nmt.nmt_disabled(text):
        return NmtFetch(None, None, "off", None, version, ("native memory tracking is not enabled "
                                                           "(-XX:NativeMemoryTracking=summary|detail)",))
    if "Virtual memory map" in text:
        report = nmt.parse_summary(text)
        vmap = nmt.parse_detail_regions(text)
        problems += [f"nmt: {p}" for p in report.problems[:5]] + [f"nmt detail: {p}" for p in vmap.problems[:5]]
        regions = tuple(reg for r in vmap.regions for reg in _with_gaps(r))
        return NmtFetch(report, regions, "detail", "nmt-detail", version, tuple(problems))
    try:
        text = attach.jcmd(pid, "VM.native_memory summary", proc_root=proc_root,
                           timeout_s=_remaining(deadline))
    except attach.AttachError as exc:
        return NmtFetch(None, None, "unavailable", None, version, (f"attach failed: {exc}",))
    report = nmt.parse_summary(text)
    if not report.enabled:
        return NmtFetch(None, None, "off", None, version, ("native memory tracking is not enabled",))
    problems += [f"nmt: {p}" for p in report.problems[:5]]
    major = _major(version)
    regions: tuple[Region, ...] | None = None
    source = None
    if major is None or major >= 21:
        try:
            smtext = attach.jcmd(pid, "System.map", proc_root=proc_root, timeout_s=_remaining(deadline))
        except attach.AttachError as exc:
            if major is not None:
                problems.append(f"System.map unavailable: {str(exc)[:200]}")
        else:
            sm = nmt.parse_system_map(smtext)
            regs = _system_map_regions(sm, report)
            if regs:
                regions, source = regs, "system-map"
            problems += [f"System.map: {p}" for p in sm.problems[:5]]
    return NmtFetch(report, regions, "summary", source, version, tuple(problems))


def _system_map_regions(sm: nmt.SystemMap, report: nmt.NmtReport) -> tuple[Region, ...]:
    """One region per tagged VMA; a VMA with several tags is cut in the ratio of the categories'
    mmap committed figures (System.map names the tags, not where each one starts)."""
    out: list[Region] = []
    for e in sm.entries:
        if not e.category:
            continue
        tags = [t for t in e.tag.split(",") if t]
        cats = []
        for t in tags:
            key = "STACK" if t.startswith("STACK-") else t
            c = nmt.SYSTEM_MAP_TAGS.get(key)
            if c and c not in cats:
                cats.append(c)
        if len(cats) <= 1:
            out.append((e.start, e.end, e.category, True))
            continue
        weights = []
        for c in cats:
            cat = report.category(c)
            weights.append(cat.mmap_committed_bytes if cat else 0)
        pages = apportion((e.end - e.start) // PAGE, weights)
        cur = e.start
        for c, n in zip(cats, pages, strict=True):
            if n:
                out.append((cur, cur + n * PAGE, c, True))
                cur += n * PAGE
    out.sort()
    clean: list[Region] = []
    for r in out:
        if clean and r[0] < clean[-1][1]:
            continue
        clean.append(r)
    return tuple(clean)


def _internal_is_direct(report: nmt.NmtReport, version: str | None) -> bool:
    """JDK 8 tracked direct buffers under "Internal"; JDK 9+ under "Other" (absent while empty, since
    the report omits categories under 1 KB, so look at the version or at 9+-only categories)."""
    major = _major(version)
    if major is not None:
        return major < 9
    if report.category("Other") is not None:
        return False
    newer = ("Module", "Logging", "Arguments", "Synchronization", "Synchronizer", "Metaspace", "Safepoint",
             "Serviceability", "Shared class space", "GCCardSet", "Metaspace")
    return not any(report.category(n) for n in newer)


def _nmt_json(report: nmt.NmtReport, fetch: NmtFetch, source: str, mapped: dict[str, int],
              from_pool: dict[str, int], has_other: bool) -> dict[str, Any]:
    mapped = dict(mapped)
    if "Thread Stack" in mapped:
        mapped["Thread"] = mapped.get("Thread", 0) + mapped.pop("Thread Stack")
    out = report.to_json()
    out["version"] = fetch.version
    out["source"] = source
    out["level"] = fetch.level
    for name, c in out["categories"].items():
        c["design_category"] = design_category(name, has_other=has_other)
        c["resident_mmap_bytes"] = mapped.get(name, 0)
        c["resident_malloc_bytes"] = from_pool.get(name, 0)
        c["resident_bytes"] = mapped.get(name, 0) + from_pool.get(name, 0)
    return out


def _sorted_regions(regions: Sequence[Region]) -> list[Region]:
    out: list[Region] = []
    for r in sorted(regions):
        if r[1] <= r[0]:
            continue
        if out and r[0] < out[-1][1]:
            continue
        out.append(r)
    return out


def _regions_in(regions: list[Region], starts: list[int], m: Mapping) -> list[Region]:
    import bisect

    i = max(0, bisect.bisect_right(starts, m.start) - 1)
    out = []
    while i < len(regions) and regions[i][0] < m.end:
        if regions[i][1] > m.start:
            out.append(regions[i])
        i += 1
    return out


def _refine(base: Attribution, regions: Sequence[Region], present: Callable[[int, int], int | None] | None,
            malloc_weights: dict[str, int], has_other: bool,
            estimates: dict[str, int] | None = None
            ) -> tuple[dict[str, int], dict[str, int], dict[str, int], bool, int]:
    """Pure core: (DESIGN categories, resident bytes per raw NMT name placed by regions, resident bytes
    per raw NMT name from the malloc pool, all splits exact, bytes by which the malloc-backed figures
    exceeded the malloc pool and were scaled down).

    The pool pays NMT's malloc-backed figures first (malloc'd memory is nearly always touched), then
    `estimates` (mmap figures no region places, summary mode) share what is left, each capped at its
    figure; the rest is `native`."""
    regs = _sorted_regions(regions)
    starts = [r[0] for r in regs]
    cats = dict.fromkeys(CATEGORIES, 0)
    raw: dict[str, int] = {}
    from_pool: dict[str, int] = {}
    pool = 0
    exact_all = True
    for sh in base.shares:
        m = sh.mapping
        inside = _regions_in(regs, starts, m) if regs else []
        if inside:
            parts, exact = split_by_regions(m, inside, present)
            exact_all = exact_all and exact
        else:
            parts = {None: m.rss}
        uncovered = parts.pop(None, 0)
        for name, v in parts.items():
            assert name is not None
            raw[name] = raw.get(name, 0) + v
            cats[design_category(name, has_other=has_other)] += v
        if uncovered:
            if len(sh.categories) == 1 and next(iter(sh.categories.values())) > 0:
                # The common case, a mapping wholly in one category: nothing to apportion.
                keys, split = list(sh.categories), [uncovered]
            else:
                keys = [k for k in CATEGORIES if sh.categories.get(k, 0) > 0]
                if not keys:
                    keys = ["native"]
                split = apportion(uncovered, [sh.categories.get(k, 0) for k in keys])
            for k, v in zip(keys, split, strict=True):
                if k == "native" and sh.kind in POOL_KINDS:
                    pool += v
                else:
                    cats[k] += v
    short = 0
    for tier in (malloc_weights, estimates or {}):
        names = [n for n, w in tier.items() if w > 0]
        want = sum(tier[n] for n in names)
        given = [tier[n] for n in names] if want <= pool else apportion(pool, [tier[n] for n in names])
        if tier is malloc_weights:
            short = max(0, want - pool)
        for n, v in zip(names, given, strict=True):
            from_pool[n] = from_pool.get(n, 0) + v
            cats[design_category(n, has_other=has_other)] += v
        pool -= sum(given)
    cats["native"] += pool
    return cats, raw, from_pool, exact_all, short


def _malloc_weights(report: nmt.NmtReport) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in report.categories:
        if c.name in _MMAP_ONLY:
            continue
        w = c.committed_bytes - c.mmap_committed_bytes
        if w > 0:
            out[c.name] = out.get(c.name, 0) + w
    return out


def _cds_regions(base: Attribution) -> list[Region]:
    """CDS archives are mapped from their .jsa file: the file name proves them."""
    return [(s.mapping.start, s.mapping.end, "Shared class space", True) for s in base.shares
            if s.mapping.path.endswith(".jsa")]


def _summary_regions(base: Attribution, report: nmt.NmtReport) -> tuple[list[Region], set[str]]:
    """Regions smaps can prove from NMT summary sizes: the Java heap and the compressed class space
    (runs of anonymous mappings spanning exactly their reserved size) and CDS (by file name)."""
    regions: list[Region] = _cds_regions(base)
    proven: set[str] = {"Shared class space"} if regions else set()
    heap = report.category("Java Heap")
    if heap and heap.reserved_bytes:
        r = find_reservation(base.shares, heap.reserved_bytes)
        if r:
            regions.append((r[0], r[1], "Java Heap", True))
            proven.add("Java Heap")
    cls = report.category("Class")
    if cls:
        size = cls.figures.get("class_space_reserved", 0)
        r = find_reservation(base.shares, size) if size else None
        if r:
            regions.append((r[0], r[1], "Class", True))
            proven.add("Class")
    return regions, proven


def _hsperf_regions(base: Attribution, pd: hsperf.PerfData) -> list[Region]:
    regions: list[Region] = _cds_regions(base)
    size = hsperf.heap_reservation_bytes(pd)
    r = find_reservation(base.shares, size) if size else None
    if r:
        regions.append((r[0], r[1], "Java Heap", True))
    ccs = pd.int_value("sun.gc.compressedclassspace.maxCapacity")
    if ccs:
        r = find_reservation(base.shares, ccs)
        if r:
            regions.append((r[0], r[1], "Class", True))
    return regions


def _hsperf_json(pd: hsperf.PerfData, version: str | None, mapped: dict[str, int]) -> dict[str, Any] | None:
    """The JVM's own capacities from hsperfdata, shaped like the NMT figures (source "hsperfdata"):
    heap capacity ~ NMT Java Heap committed, class space and metaspace capacities ~ Class/Metaspace."""
    def val(key: str) -> int:
        return max(0, pd.int_value(key) or 0)

    gens = [g for g in range(4) if pd.int_value(f"sun.gc.generation.{g}.capacity") is not None]
    if not gens:
        return None
    cats: dict[str, dict[str, int]] = {
        "Java Heap": {"committed_bytes": sum(val(f"sun.gc.generation.{g}.capacity") for g in gens) // PAGE * PAGE,
                      "reserved_bytes": hsperf.heap_reservation_bytes(pd)},
    }
    ccs, meta = val("sun.gc.compressedclassspace.capacity"), val("sun.gc.metaspace.capacity")
    if pd.int_value("sun.gc.metaspace.capacity") is not None:
        # metaspace.capacity includes the class space (JDK 8+ perf counters).
        cats["Metaspace"] = {"committed_bytes": max(0, meta - ccs),
                             "reserved_bytes": max(0, val("sun.gc.metaspace.maxCapacity") - val(
                                 "sun.gc.compressedclassspace.maxCapacity"))}
    if pd.int_value("sun.gc.compressedclassspace.capacity") is not None:
        cats["Class"] = {"committed_bytes": ccs, "reserved_bytes": val("sun.gc.compressedclassspace.maxCapacity")}
    for name, c in cats.items():
        c["resident_bytes"] = mapped.get(name, 0)
        c["design_category"] = design_category(name)
    return {"source": "hsperfdata", "level": "off", "version": version, "categories": cats,
            "threads_live": val("java.threads.live")}


def refine(base: Attribution, fetch: NmtFetch, perfdata: hsperf.PerfData | None,
           present: Callable[[int, int], int | None] | None = None) -> JvmAttribution:
    """Pure: the JVM view of `base` from what the JVM told us (NMT) or published (hsperfdata)."""
    problems: list[str] = list(fetch.problems)
    nmt_json: dict[str, Any] | None = None
    if fetch.report is not None:
        report = fetch.report
        has_other = not _internal_is_direct(report, fetch.version)
        weights = _malloc_weights(report)
        estimates: dict[str, int] = {}
        if fetch.regions is not None:
            # Regions place every mmap category; only malloc-backed figures join the pool split.
            regions = list(fetch.regions)
            sources = ["smaps", "nmt-detail"] if fetch.level == "detail" else ["smaps", "nmt-summary", "system-map"]
        else:
            regions, proven = _summary_regions(base, report)
            sources = ["smaps", "nmt-summary"]
            for c in report.categories:
                if c.name in proven or c.name in ("Thread", "Shared class space"):
                    continue  # thread stacks are placed by their stack pointers; CDS by file name
                if c.mmap_committed_bytes > 0:
                    estimates[c.name] = c.mmap_committed_bytes
            problems.append("NMT summary only: heap/class space placed by reservation size, other "
                            "mmap categories estimated from committed figures")
        cats, mapped, from_pool, exact, short = _refine(base, regions, present, weights, has_other, estimates)
        malloc_total = sum(weights.values())
        # Some malloc'd memory is never touched (idle JVMs: a few MiB); only a large gap is worth a note.
        if short > max(8 << 20, malloc_total // 10):
            problems.append(f"NMT malloc figures exceed the resident malloc pool by {short} bytes "
                            "(allocated but untouched memory): scaled down to fit")
        if not exact:
            problems.append("pagemap unreadable: mappings holding several NMT regions split by size")
        nmt_json = _nmt_json(report, fetch, sources[1], mapped, from_pool, has_other)
    elif perfdata is not None:
        sources = ["smaps", "hsperfdata"]
        regions = _hsperf_regions(base, perfdata)
        cats, mapped, _pool, _exact, _short = _refine(base, regions, present, {}, True)
        nmt_json = _hsperf_json(perfdata, fetch.version, mapped)
    else:
        sources = ["smaps"]
        cats = dict(base.categories)
        problems.append("no NMT and no hsperfdata: native view only")
    full = {c: int(cats.get(c, 0)) for c in CATEGORIES}
    if sum(full.values()) != sum(base.categories.values()):
        problems.append(f"internal: JVM refinement lost bytes ({sum(full.values())} != "
                        f"{sum(base.categories.values())}); native view kept")
        full = {c: int(base.categories.get(c, 0)) for c in CATEGORIES}
        sources, nmt_json = ["smaps"], None
    return JvmAttribution(full, sources, nmt_json, problems)


def attribute_jvm(pid: int, mappings: Sequence[Mapping], base: Attribution, *, proc_root: str = "/proc",
                  timeout_s: float = 5.0, attach_jvm: bool = True) -> JvmAttribution:
    """Refine `base` (the native view of this JVM's smaps) with NMT / System.map / hsperfdata.

    With `attach_jvm=False` the JVM is never signalled or connected to: only its hsperfdata file (a
    passive read) and smaps are used, and `problems` says so.
    """
    del mappings  # base.shares carries the same mappings, in address order, with their base split
    version, pd = _jdk_version(pid, proc_root)
    if not attach_jvm:
        fetch = NmtFetch(None, None, "unavailable", None, version,
                         ("JVM not attached (passive mode): NMT not asked; hsperfdata and smaps only",))
    else:
        try:
            fetch = fetch_nmt(pid, proc_root, timeout_s, version)
        except ProcessGone:
            raise
        except NativewatchError as exc:
            fetch = NmtFetch(None, None, "unavailable", None, version, (f"nmt: {exc}",))
    pagemap = Pagemap(pid, proc_root)
    try:
        res = refine(base, fetch, pd, pagemap)
    finally:
        pagemap.close()
    return dataclasses.replace(res, gc=gc_figures(pd)) if pd is not None else res


# ---- baseline / diff ---------------------------------------------------------------------------------

def nmt_baseline(pid: int, proc_root: str = "/proc", timeout_s: float = 5.0) -> None:
    out = attach.jcmd(pid, "VM.native_memory baseline", proc_root=proc_root, timeout_s=timeout_s)
    if nmt.nmt_disabled(out):
        raise attach.AttachError("native memory tracking is not enabled in this JVM")
    if "Baseline" not in out and "baseline" not in out:
        raise attach.AttachError(f"unexpected reply to baseline: {out.strip()[:200]}")


def nmt_diff(pid: int, proc_root: str = "/proc", timeout_s: float = 5.0) -> dict[str, Any]:
    """Growth since the last baseline: per DESIGN category and per raw NMT category (bytes)."""
    out = attach.jcmd(pid, "VM.native_memory summary.diff", proc_root=proc_root, timeout_s=timeout_s)
    if nmt.nmt_disabled(out):
        raise attach.AttachError("native memory tracking is not enabled in this JVM")
    if "No baseline" in out or "no baseline" in out:
        raise attach.AttachError("no NMT baseline: run with --nmt-baseline first")
    report = nmt.parse_summary(out)
    has_other = not _internal_is_direct(report, _jdk_version(pid, proc_root)[0])
    by_design = dict.fromkeys(CATEGORIES, 0)
    raw: dict[str, Any] = {}
    for c in report.categories:
        d = c.deltas.get("committed", 0)
        by_design[design_category(c.name, has_other=has_other)] += d
        raw[c.name] = {"committed_bytes": c.committed_bytes, "committed_delta_bytes": d,
                       "reserved_delta_bytes": c.deltas.get("reserved", 0),
                       "malloc_delta_bytes": c.deltas.get("malloc", 0),
                       "mmap_committed_delta_bytes": c.deltas.get("mmap_committed", 0)
                       + c.deltas.get("stack_committed", 0),
                       "design_category": design_category(c.name, has_other=has_other)}
    return {"pid": pid, "categories": by_design, "nmt_categories": raw,
            "total": {"committed_delta_bytes": report.total_deltas.get("committed", 0),
                      "reserved_delta_bytes": report.total_deltas.get("reserved", 0)},
            "resolution_bytes": report.resolution_bytes, "problems": list(report.problems)}
