"""The analyze stage, once for every front end: history per process and per container, growth under one
`GrowthPolicy`, per-container totals with their limit and OOM ETA.

The agent, `top` (live and `--once`), `soak` and `explain` all feed breakdowns into a `Tracker` and read
verdicts back, so they never disagree about the same process. Pure (no clock, no I/O): the caller passes
times and, for containers, a function that reads a container's memory cgroup.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nativewatch.growth import NO_GROWTH, GrowthPolicy, LeakVerdict, assess, oom_eta_s
from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo
from nativewatch.sources.cgroup_memory import CgroupMemory

__all__ = [
    "HOST", "SAMPLE_SPACING_S", "ContainerMemoryFacts", "ContainerSummary", "SeriesHistory", "Tracker", "container_key",
    "container_totals", "fastest_category", "growth_json", "memory_facts", "process_key", "verdict_json",
]

HOST = "host"
"""The group of processes outside any container (`top` shows it; the agent exports containers only)."""

SERIES: tuple[str, ...] = ("rss", *CATEGORIES)

SAMPLE_SPACING_S = 10.0
"""At most one point per this many seconds, the agent's scan interval: `top` refreshing every 2 s keeps
the same evidence the agent has (and a fifth of the memory), so their verdicts agree."""


def process_key(pid: int, start: int = 0) -> str:
    """History key of one process: a pid reused by a new process (another start time) is a new series."""
    return f"pid:{pid}:{start}"


def container_key(cid: str) -> str:
    return f"ctr:{cid}"


def verdict_json(v: LeakVerdict) -> dict[str, Any]:
    """The growth object of one category, the same in the agent's API, `top --json` and `soak --json`."""
    return {"bytes_per_second": v.bytes_per_second, "leak": v.leak, "fit": v.fit.fit, "window_s": v.window_s,
            "samples": v.fit.samples, "tier": v.tier, "reason": v.reason}


def growth_json(growth: Mapping[str, LeakVerdict]) -> dict[str, dict[str, Any]]:
    """The `growth` object of a process or container: every category, "no history yet" where none."""
    return {c: verdict_json(growth[c]) if c in growth else
            {"bytes_per_second": 0.0, "leak": False, "reason": "no history yet"} for c in CATEGORIES}


class SeriesHistory:
    """Per key: timestamps and the rss + per-category bytes, bounded in points and in age.

    Machine arrays (8 bytes a value, not a Python int each): 1,000 processes x 11 series x 300 points
    measured 31.8 MB, against 89.8 MB in deques of ints. Trimming happens in chunks so appends stay O(1)
    amortised. Points closer than ``min_spacing_s`` to the previous one are not kept: a refresh every 2 s
    would otherwise need five times the memory for the same window, and growth over minutes does not need
    them.
    """

    def __init__(self, max_points: int = 400, max_age_s: float = 3600.0, min_spacing_s: float = 0.0) -> None:
        self.max_points = max_points
        self.max_age_s = max_age_s
        self.min_spacing_s = min_spacing_s
        self._slack = max(1, max_points // 4)
        self._t: dict[str, array[float]] = {}
        self._v: dict[str, dict[str, array[int]]] = {}

    def add(self, key: str, t: float, rss: int, categories: Mapping[str, int]) -> bool:
        """Record one sample; False when it was not kept (older than the last one, or too close to it)."""
        ts = self._t.get(key)
        if ts is None:
            ts = self._t[key] = array("d")
            self._v[key] = {c: array("q") for c in SERIES}
        if ts and t - ts[-1] < max(self.min_spacing_s, 1e-9):
            return False
        vs = self._v[key]
        ts.append(t)
        vs["rss"].append(int(rss))
        for c in CATEGORIES:
            vs[c].append(int(categories.get(c, 0)))
        drop = len(ts) - self.max_points if len(ts) >= self.max_points + self._slack else 0
        if ts[-1] - ts[0] > self.max_age_s:
            drop = max(drop, bisect_left(ts, ts[-1] - self.max_age_s))
        if drop > 0:
            del ts[:drop]
            for d in vs.values():
                del d[:drop]
        return True

    # The arrays themselves when within bounds (read-only to callers): a copy per series per refresh
    # was a third of `top`'s row-building time.
    def times(self, key: str) -> Sequence[float]:
        ts = self._t.get(key)
        if ts is None:
            return ()
        return ts if len(ts) <= self.max_points else ts[-self.max_points:]

    def values(self, key: str, series: str) -> Sequence[int]:
        v = self._v.get(key)
        if v is None:
            return ()
        vs = v[series]
        return vs if len(vs) <= self.max_points else vs[-self.max_points:]

    def forget(self, keys: Iterable[str]) -> None:
        for k in keys:
            self._t.pop(k, None)
            self._v.pop(k, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._t))

    def __contains__(self, key: str) -> bool:
        return key in self._t

    def __len__(self) -> int:
        return len(self._t)


@dataclass(frozen=True, slots=True)
class ContainerMemoryFacts:
    """What the memory cgroup says; ``limit_bytes`` is the smallest limit of the cgroup and its ancestors
    (the one the OOM killer enforces), else its own."""

    usage_bytes: int | None
    working_set_bytes: int | None
    limit_bytes: int | None


def memory_facts(mem: CgroupMemory) -> ContainerMemoryFacts:
    """The one place that decides which limit counts."""
    return ContainerMemoryFacts(mem.usage_bytes, mem.working_set_bytes, mem.effective_limit_bytes or mem.limit_bytes)


def fastest_category(growth: Mapping[str, LeakVerdict]) -> str | None:
    """The category whose floor rises fastest (the first in CATEGORIES on a tie), None when none rises."""
    top: str | None = None
    for c in CATEGORIES:
        g = growth.get(c)
        if g is not None and g.bytes_per_second > 0 and (top is None or g.bytes_per_second > growth[top].bytes_per_second):
            top = c
    return top


@dataclass(frozen=True, slots=True)
class ContainerSummary:
    id: str  # container id, or HOST
    info: ContainerInfo | None
    members: tuple[Breakdown, ...]
    categories: dict[str, int]
    growth: dict[str, LeakVerdict]
    total_growth: LeakVerdict  # of the sum of the categories
    memory: ContainerMemoryFacts | None
    oom_eta_s: float | None

    @property
    def rss_bytes(self) -> int:
        return sum(self.categories.values())


def container_totals(bds: Iterable[Breakdown]) -> dict[str, tuple[list[Breakdown], dict[str, int]]]:
    """Members and summed categories per container id (processes outside containers under HOST)."""
    groups: dict[str, tuple[list[Breakdown], dict[str, int]]] = {}
    for b in bds:
        cid = b.container.id if b.container else HOST
        members, cats = groups.setdefault(cid, ([], dict.fromkeys(CATEGORIES, 0)))
        members.append(b)
        for c in CATEGORIES:
            cats[c] += b.categories.get(c, 0)
    return groups


class Tracker:
    """History and growth of processes and containers under one policy.

    Growth is computed when asked for and kept until the key gets a new sample: the agent asks for a
    process after each of its samples, `top` for every row on each refresh.
    """

    def __init__(self, policy: GrowthPolicy | None = None, *, max_points: int | None = None,
                 min_spacing_s: float = 0.0) -> None:
        self.policy = policy or GrowthPolicy()
        points = max_points or 400
        self.history = SeriesHistory(max_points=points, max_age_s=self.policy.window_s,
                                     min_spacing_s=min_spacing_s)
        self._growth: dict[str, dict[str, LeakVerdict]] = {}

    # --- recording -------------------------------------------------------------------------------
    def observe(self, key: str, t: float, rss: int, categories: Mapping[str, int]) -> bool:
        kept = self.history.add(key, t, rss, categories)
        if kept:
            self._growth.pop(key, None)
        return kept

    def observe_breakdown(self, b: Breakdown, t: float | None = None) -> None:
        """Record one breakdown under its pid (callers that know the start time use `observe` with
        `process_key(pid, start)`, as the agent does)."""
        self.observe(process_key(b.pid), b.timestamp if t is None else t, b.rss_bytes, b.categories)

    def forget(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.history.forget(keys)
        for k in keys:
            self._growth.pop(k, None)

    def keep_only(self, keys: Iterable[str]) -> None:
        live = set(keys)
        self.forget([k for k in self.history if k not in live])

    def drop_cached(self) -> None:
        """Forget computed growth (the next read recomputes): what a refresh costs when every key moved."""
        self._growth.clear()

    # --- reading ---------------------------------------------------------------------------------
    def _assess(self, key: str, series: tuple[str, ...]) -> dict[str, LeakVerdict]:
        cached = self._growth.setdefault(key, {})
        missing = [s for s in series if s not in cached]
        if missing:
            ts = self.history.times(key)
            for s in missing:
                cached[s] = assess(ts, self.history.values(key, s), self.policy) if ts else NO_GROWTH
        return {s: cached[s] for s in series}

    def category_growth(self, key: str) -> dict[str, LeakVerdict]:
        """Verdict per category (the total is only judged when asked: processes rarely need it)."""
        return self._assess(key, CATEGORIES)

    def total_growth(self, key: str) -> LeakVerdict:
        return self._assess(key, ("rss",))["rss"]

    def series(self, key: str) -> tuple[list[float], dict[str, list[int]]]:
        return list(self.history.times(key)), {s: list(self.history.values(key, s)) for s in SERIES}

    def containers(self, bds: Iterable[Breakdown], t: float,
                   memory: Callable[[ContainerInfo], ContainerMemoryFacts | None] | None = None,
                   *, include_host: bool = True) -> list[ContainerSummary]:
        """Record this scan's per-container totals and summarise each container (members, growth, limit,
        OOM ETA). ``memory`` reads a container's cgroup (None when it cannot)."""
        out: list[ContainerSummary] = []
        for cid, (members, cats) in container_totals(bds).items():
            if cid == HOST and not include_host:
                continue
            key = container_key(cid)
            self.observe(key, t, sum(cats.values()), cats)
            g = self.category_growth(key)
            total = self.total_growth(key)
            info = members[0].container
            facts = memory(info) if memory is not None and info is not None else None
            eta = None
            if facts is not None and facts.limit_bytes:
                usage = facts.working_set_bytes if facts.working_set_bytes is not None else sum(cats.values())
                eta = oom_eta_s(usage, facts.limit_bytes, total.bytes_per_second)
            out.append(ContainerSummary(cid, info, tuple(members), dict(cats), g, total, facts, eta))
        return out
