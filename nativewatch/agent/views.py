"""What the agent publishes after each scan: immutable views that presenters (exporter, HTTP API) read.

Presenters never trigger a read; they only see the last `AgentView`, swapped in whole after a scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nativewatch.growth import LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo
from nativewatch.tracker import growth_json

__all__ = ["ContainerLabels", "ProcessView", "ContainerView", "AgentView", "growth_json"]


@dataclass(frozen=True, slots=True)
class ContainerLabels:
    namespace: str = ""
    pod: str = ""
    container: str = ""
    container_id: str = ""

    def values(self) -> list[str]:
        return [self.namespace, self.pod, self.container, self.container_id]

    NAMES = ("namespace", "pod", "container", "container_id")


@dataclass(frozen=True, slots=True)
class ProcessView:
    breakdown: Breakdown
    labels: ContainerLabels
    growth: dict[str, LeakVerdict]
    tracked: bool
    rss_now_bytes: int  # from the cheap source of the latest scan (the breakdown may be older)

    def to_json(self) -> dict[str, Any]:
        out = self.breakdown.to_json()
        out["growth"] = growth_json(self.growth)
        out["tracked"] = self.tracked
        out["rss_now_bytes"] = self.rss_now_bytes
        return out


@dataclass(frozen=True, slots=True)
class ContainerView:
    id: str
    info: ContainerInfo | None
    labels: ContainerLabels
    categories: dict[str, int]
    growth: dict[str, LeakVerdict]
    pids: tuple[int, ...]
    usage_bytes: int | None = None
    working_set_bytes: int | None = None
    limit_bytes: int | None = None
    total_growth_bytes_per_second: float = 0.0
    oom_eta_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "container": self.info.to_json() if self.info else None,
                "labels": dict(zip(ContainerLabels.NAMES, self.labels.values(), strict=True)),
                "categories": {c: int(self.categories.get(c, 0)) for c in CATEGORIES},
                "growth": growth_json(self.growth), "pids": list(self.pids),
                "usage_bytes": self.usage_bytes, "working_set_bytes": self.working_set_bytes,
                "limit_bytes": self.limit_bytes,
                "total_growth_bytes_per_second": self.total_growth_bytes_per_second,
                "oom_eta_s": self.oom_eta_s}


@dataclass(frozen=True, slots=True)
class AgentView:
    time: float = 0.0
    scans_total: int = 0
    processes: tuple[ProcessView, ...] = ()
    containers: tuple[ContainerView, ...] = ()
    # (container labels..., dominant_category) -> kills
    oom_kills: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)
    last_scan_duration_s: float = 0.0
    last_scan_cpu_s: float = 0.0
    scan_duration_sum_s: float = 0.0
    processes_seen: int = 0
    full_snapshots_total: int = 0
    deferred_total: int = 0  # full snapshots postponed by the CPU budget
    errors_by_source: dict[str, int] = field(default_factory=dict)
    bpf_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    degraded: dict[str, str] = field(default_factory=dict)  # source -> why it is off
    sites: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # pid -> top native sites
    evidence_total: dict[str, int] = field(default_factory=dict)
    vanished_total: dict[str, int] = field(default_factory=dict)  # stage -> pids gone mid-read
    scan_overruns_total: int = 0
    faults: dict[str, str] = field(default_factory=dict)  # runtime faults now: what and why
    notices: tuple[str, ...] = ()
    recent_errors: tuple[dict[str, Any], ...] = ()  # the latest errors with their pid and detail
    evidence_pending: int = 0
    evidence_dropped_total: int = 0
    cache_sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "scans_total": self.scans_total,
                "processes": [p.to_json() for p in self.processes],
                "containers": [c.to_json() for c in self.containers],
                "degraded": dict(self.degraded)}
