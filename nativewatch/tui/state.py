"""What `top` shows, without any terminal: rows, sort and filter over the analyze stage's results.

Pure over `Breakdown`s and a `Tracker` (no clock, no I/O), so the benchmark and tests drive it directly.
Growth and leak verdicts are the tracker's, under the same `GrowthPolicy` the agent and `soak` use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nativewatch.growth import NO_GROWTH, LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.runtimes.registry import names as runtime_names
from nativewatch.tracker import ContainerSummary, Tracker, container_key, fastest_category, process_key

__all__ = ["FILTERS", "SORTS", "Row", "ViewState", "build_container_rows", "build_process_rows", "select_rows"]

SORTS: tuple[str, ...] = ("rss", "growth", "pid", "name", *CATEGORIES)
FILTERS: tuple[str, ...] = ("all", "growing", "leaking", *runtime_names())


@dataclass(slots=True)
class Row:
    key: str
    pid: int | None  # None for container rows
    name: str
    runtime: str
    rss_bytes: int
    categories: dict[str, int]
    growth: dict[str, LeakVerdict]
    threads: int
    container: str  # short container id, "host" outside containers
    search_text: str
    procs: int = 1
    oom_eta_s: float | None = None
    limit_bytes: int | None = None
    spark: tuple[int, ...] = ()
    top_category: str | None = None  # fastest floor among the categories

    @property
    def top_growth(self) -> float:
        return self.growth[self.top_category].bytes_per_second if self.top_category else 0.0

    @property
    def leak(self) -> bool:
        return any(g.leak for g in self.growth.values())

    @property
    def leak_categories(self) -> tuple[str, ...]:
        return tuple(c for c in CATEGORIES if self.growth.get(c, NO_GROWTH).leak)


def _grow_all(tracker: Tracker, key: str) -> tuple[dict[str, LeakVerdict], str | None]:
    growth = tracker.category_growth(key)
    return growth, fastest_category(growth)


def _spark(tracker: Tracker, key: str, series: str, n: int = 40) -> tuple[int, ...]:
    vs = tracker.history.values(key, series)
    return tuple(vs[i] for i in range(max(0, len(vs) - n), len(vs)))


def _short_cid(b: Breakdown) -> str:
    return b.container.id[:12] if b.container else "host"


def build_process_rows(bds: Sequence[Breakdown], tracker: Tracker,
                       containers: Mapping[str, ContainerSummary] | None = None) -> list[Row]:
    """One row per process; the tracker must already hold this scan. A process in a container with a
    limit shows its container's OOM ETA (the kernel kills in the container when the container is full)."""
    rows = []
    for b in bds:
        key = process_key(b.pid)
        growth, top = _grow_all(tracker, key)
        cid = _short_cid(b)
        summary = (containers or {}).get(b.container.id) if b.container else None
        limit = summary.memory.limit_bytes if summary is not None and summary.memory is not None else None
        rows.append(Row(key=key, pid=b.pid, name=b.comm, runtime=b.runtime, rss_bytes=b.rss_bytes,
                        categories=dict(b.categories), growth=growth, threads=b.threads, container=cid,
                        search_text=f"{b.comm} {' '.join(b.cmdline)} {b.pid} {cid}".lower(),
                        oom_eta_s=summary.oom_eta_s if summary is not None else None, limit_bytes=limit,
                        spark=_spark(tracker, key, top or "rss"), top_category=top))
    return rows


def build_container_rows(summaries: Sequence[ContainerSummary], tracker: Tracker) -> list[Row]:
    rows = []
    for sm in summaries:
        key = container_key(sm.id)
        growth, top = _grow_all(tracker, key)
        runtimes = sorted({b.runtime for b in sm.members})
        first = sm.members[0]
        name = (first.container.pod_uid or first.container.runtime) if first.container else "(not in a container)"
        rows.append(Row(key=key, pid=None, name=name, runtime="/".join(runtimes),
                        rss_bytes=sm.rss_bytes, categories=dict(sm.categories), growth=growth,
                        threads=sum(b.threads for b in sm.members), container=sm.id[:12],
                        search_text=(sm.id + " " + name + " " + " ".join(b.comm for b in sm.members)).lower(),
                        procs=len(sm.members), oom_eta_s=sm.oom_eta_s,
                        limit_bytes=sm.memory.limit_bytes if sm.memory else None,
                        spark=_spark(tracker, key, top or "rss"), top_category=top))
    return rows


@dataclass(slots=True)
class ViewState:
    sort: str = "rss"
    reverse: bool = False  # False: largest first for sizes and growth, ascending for pid and name
    filter: str = "all"
    search: str = ""
    containers: bool = False


def _sort_key(sort: str) -> Callable[[Row], object]:
    if sort == "rss":
        return lambda r: -r.rss_bytes
    if sort == "growth":
        return lambda r: (-r.top_growth, -r.rss_bytes)
    if sort == "pid":
        return lambda r: r.pid if r.pid is not None else 0
    if sort == "name":
        return lambda r: (r.name.lower(), r.pid or 0)
    if sort in CATEGORIES:
        return lambda r: (-r.categories.get(sort, 0), -r.rss_bytes)
    raise ValueError(f"unknown sort {sort!r}")


def _matches(r: Row, flt: str) -> bool:
    if flt == "all":
        return True
    if flt == "growing":
        return r.top_growth > 0
    if flt == "leaking":
        return r.leak
    return flt in r.runtime.split("/")


def select_rows(rows: Sequence[Row], view: ViewState) -> list[Row]:
    """Filter, search (substring of name, command line, pid; `re:` prefix for a regex) and sort."""
    out = [r for r in rows if _matches(r, view.filter)]
    q = view.search.strip().lower()
    if q:
        if q.startswith("re:"):
            try:
                rx = re.compile(q[3:])
            except re.error:
                rx = re.compile(re.escape(q[3:]))
            out = [r for r in out if rx.search(r.search_text)]
        else:
            out = [r for r in out if q in r.search_text]
    out.sort(key=_sort_key(view.sort), reverse=view.reverse)
    return out
