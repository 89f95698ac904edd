"""Prometheus exposition of the agent's last view: DESIGN.md's metric families plus agent self-metrics.

One collector function per source (process, container, oom, one per runtime that has gauges - today
jvm -, sites, agent). A runner calls each, times it and emits
`nativewatch_scrape_source_duration_seconds{source}` and `nativewatch_scrape_source_success{source}`;
a source that raises loses only its own series, never the scrape (client_python's registry does not
isolate collectors). Families are built fresh on every scrape from the immutable `AgentView`; nothing
here reads /proc.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from nativewatch import __version__
from nativewatch.agent.views import AgentView, ContainerLabels, ProcessView
from nativewatch.model import CATEGORIES
from nativewatch.runtimes.base import DetailGauge, Runtime
from nativewatch.runtimes.registry import registered

__all__ = ["AgentCollector", "SOURCES", "default_sources", "make_registry", "site_label"]

log = logging.getLogger("nativewatch.agent.exporter")

_CLABELS = list(ContainerLabels.NAMES)
_PLABELS = ["pid", "comm", "runtime", *_CLABELS]


def _plabels(p: ProcessView) -> list[str]:
    bd = p.breakdown
    return [str(bd.pid), bd.comm, bd.runtime, *p.labels.values()]


def site_label(site: dict[str, Any], depth: int = 3) -> str:
    frames = site.get("frames") or []
    return ";".join(str(f) for f in frames[:depth]) or "[unknown]"


def process_source(view: AgentView) -> Iterator[Metric]:
    mem = GaugeMetricFamily("nativewatch_process_memory_bytes",
                            "Resident bytes of a process by category (categories sum to smaps Rss)",
                            labels=[*_PLABELS, "category"])
    growth = GaugeMetricFamily("nativewatch_process_memory_growth_bytes_per_second",
                               "Slope of the floor of a category over the growth window (0: not growing)",
                               labels=[*_PLABELS, "category"])
    for p in view.processes:
        base = _plabels(p)
        for cat in CATEGORIES:
            mem.add_metric([*base, cat], float(p.breakdown.categories.get(cat, 0)))
            v = p.growth.get(cat)
            growth.add_metric([*base, cat], v.fit.bytes_per_second if v else 0.0)
    yield mem
    yield growth


def container_source(view: AgentView) -> Iterator[Metric]:
    mem = GaugeMetricFamily("nativewatch_container_memory_bytes",
                            "Resident bytes of a container's processes by category",
                            labels=[*_CLABELS, "category"])
    growth = GaugeMetricFamily("nativewatch_container_memory_growth_bytes_per_second",
                               "Slope of the floor of a container category over the growth window",
                               labels=[*_CLABELS, "category"])
    ws = GaugeMetricFamily("nativewatch_container_memory_working_set_bytes",
                           "Memory cgroup usage minus inactive file cache", labels=_CLABELS)
    limit = GaugeMetricFamily("nativewatch_container_memory_limit_bytes",
                              "Memory cgroup limit (smallest of the cgroup and its ancestors)", labels=_CLABELS)
    for c in view.containers:
        base = c.labels.values()
        for cat in CATEGORIES:
            mem.add_metric([*base, cat], float(c.categories.get(cat, 0)))
            v = c.growth.get(cat)
            growth.add_metric([*base, cat], v.fit.bytes_per_second if v else 0.0)
        if c.working_set_bytes is not None:
            ws.add_metric(base, float(c.working_set_bytes))
        if c.limit_bytes is not None:
            limit.add_metric(base, float(c.limit_bytes))
    yield from (mem, growth, ws, limit)


def oom_source(view: AgentView) -> Iterator[Metric]:
    kills = CounterMetricFamily("nativewatch_container_oom_kills",
                                "OOM kills seen by the agent, by the category that grew most before the kill",
                                labels=[*_CLABELS, "dominant_category"])
    for key, n in sorted(view.oom_kills.items()):
        kills.add_metric(list(key), float(n))
    yield kills


def runtime_source(rt: Runtime) -> Callable[[AgentView], Iterator[Metric]]:
    """The gauge families a runtime derives from its details, over the processes of that runtime."""

    def source(view: AgentView) -> Iterator[Metric]:
        fams: list[tuple[DetailGauge, GaugeMetricFamily | CounterMetricFamily]] = [
            (g, (CounterMetricFamily if g.counter else GaugeMetricFamily)(
                g.name, g.help, labels=[*_PLABELS, g.label] if g.label else list(_PLABELS)))
            for g in rt.gauges]
        for p in view.processes:
            # Details are keyed by the runtime's own names: only its own processes are read.
            if p.breakdown.runtime != rt.name:
                continue
            base = _plabels(p)
            for g, fam in fams:
                for key, value in g.values(p.breakdown.runtime_details):
                    fam.add_metric([*base, key] if g.label else base, value)
        for _, fam in fams:
            yield fam

    return source


def sites_source(view: AgentView, top_n: int) -> Iterator[Metric]:
    fam = GaugeMetricFamily("nativewatch_native_site_outstanding_bytes",
                            "Outstanding (allocated, not freed) bytes of the top native allocation sites",
                            labels=[*_PLABELS, "site"])
    by_pid = {p.breakdown.pid: p for p in view.processes}
    for pid, sites in sorted(view.sites.items()):
        p = by_pid.get(pid)
        if p is None:
            continue
        base = _plabels(p)
        merged: dict[str, float] = {}
        for s in sites[:top_n]:
            label = site_label(s)
            merged[label] = merged.get(label, 0.0) + float(s.get("outstanding_bytes", 0))
        for label, v in merged.items():
            fam.add_metric([*base, label], v)
    yield fam


def agent_source(view: AgentView) -> Iterator[Metric]:
    info = GaugeMetricFamily("nativewatch_build_info", "nativewatch build; value is always 1",
                             labels=["version"])
    info.add_metric([__version__], 1.0)
    yield info
    yield GaugeMetricFamily("nativewatch_agent_scan_duration_seconds", "Wall time of the last scan",
                            value=view.last_scan_duration_s)
    yield GaugeMetricFamily("nativewatch_agent_scan_cpu_seconds", "CPU time of the last scan",
                            value=view.last_scan_cpu_s)
    yield CounterMetricFamily("nativewatch_agent_scans", "Scans completed", value=view.scans_total)
    yield CounterMetricFamily("nativewatch_agent_scan_duration_seconds_sum", "Wall time of all scans",
                              value=view.scan_duration_sum_s)
    yield GaugeMetricFamily("nativewatch_agent_processes", "Processes seen in the last scan",
                            value=view.processes_seen)
    yield GaugeMetricFamily("nativewatch_agent_last_scan_timestamp_seconds", "Time of the last scan",
                            value=view.time)
    yield CounterMetricFamily("nativewatch_agent_full_snapshots", "Full attributions done",
                              value=view.full_snapshots_total)
    yield CounterMetricFamily("nativewatch_agent_deferred_snapshots",
                              "Full attributions postponed by the per-scan CPU budget",
                              value=view.deferred_total)
    errors = CounterMetricFamily("nativewatch_agent_source_errors", "Read/parse errors by source",
                                 labels=["source"])
    for src, n in sorted(view.errors_by_source.items()):
        errors.add_metric([src], float(n))
    yield errors
    lost = CounterMetricFamily("nativewatch_agent_bpf_lost",
                               "eBPF events lost or not recorded (ring buffer full, map full, stack lost)",
                               labels=["program", "reason"])
    seen = CounterMetricFamily("nativewatch_agent_bpf_events", "eBPF events recorded", labels=["program"])
    for prog, stats in sorted(view.bpf_stats.items()):
        for reason, n in sorted(stats.items()):
            if reason in ("sampled", "kills_seen"):
                seen.add_metric([prog], float(n))
            else:
                lost.add_metric([prog, reason], float(n))
    yield lost
    yield seen
    degraded = GaugeMetricFamily("nativewatch_agent_source_degraded",
                                 "1 when a source is off or degraded (see /healthz for why)", labels=["source"])
    for src in sorted(view.degraded):
        degraded.add_metric([src], 1.0)
    yield degraded
    ev = CounterMetricFamily("nativewatch_agent_evidence", "Evidence files written", labels=["kind"])
    for kind, n in sorted(view.evidence_total.items()):
        ev.add_metric([kind], float(n))
    yield ev
    yield GaugeMetricFamily("nativewatch_agent_evidence_pending",
                            "Evidence documents kept in memory until the evidence dir is writable again",
                            value=view.evidence_pending)
    yield CounterMetricFamily("nativewatch_agent_evidence_dropped",
                              "Evidence documents dropped: more were waiting than evidence_pending_max",
                              value=view.evidence_dropped_total)
    vanished = CounterMetricFamily("nativewatch_agent_vanished_processes",
                                   "Processes that exited between being listed and being read (not errors)",
                                   labels=["stage"])
    for stage, n in sorted(view.vanished_total.items()):
        vanished.add_metric([stage], float(n))
    yield vanished
    yield CounterMetricFamily("nativewatch_agent_scan_overruns", "Scans that took longer than the interval",
                              value=view.scan_overruns_total)
    faults = GaugeMetricFamily("nativewatch_agent_fault",
                               "1 while a runtime fault degrades the agent (see /healthz for why)", labels=["fault"])
    for name in sorted(view.faults):
        faults.add_metric([name], 1.0)
    yield faults
    caches = GaugeMetricFamily("nativewatch_agent_cache_entries", "Entries held by each of the agent's caches",
                               labels=["cache"])
    for name, n in sorted(view.cache_sizes.items()):
        caches.add_metric([name], float(n))
    yield caches


def default_sources() -> dict[str, Callable[..., Iterator[Metric]]]:
    """Every source, runtime sources named after their runtime (the scrape `source` label: "jvm")."""
    return {"process": process_source, "container": container_source, "oom": oom_source,
            **{rt.name: runtime_source(rt) for rt in registered() if rt.gauges},
            "sites": sites_source, "agent": agent_source}


SOURCES: dict[str, Callable[..., Iterator[Metric]]] = default_sources()


class AgentCollector:
    """The one registered collector: runs every source under node_exporter-style isolation."""

    def __init__(self, get_view: Callable[[], AgentView], *, top_sites: int = 20,
                 sources: dict[str, Callable[..., Iterator[Metric]]] | None = None) -> None:
        self.get_view = get_view
        self.top_sites = top_sites
        # Built now, not at import: a runtime registered later gets its series too.
        self.sources = default_sources() if sources is None else dict(sources)

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; keeps the registry from calling collect()

    def collect(self) -> Iterator[Metric]:
        view = self.get_view()
        dur = GaugeMetricFamily("nativewatch_scrape_source_duration_seconds",
                                "Time to render a source's series", labels=["source"])
        ok = GaugeMetricFamily("nativewatch_scrape_source_success", "1 if the source rendered without error",
                               labels=["source"])
        for name, fn in self.sources.items():
            t0 = time.perf_counter()
            try:
                fams = list(fn(view, self.top_sites) if name == "sites" else fn(view))
                success = 1.0
            except Exception:  # noqa: BLE001 - one broken source loses only its own series
                log.exception("metrics source %s failed", name)
                fams, success = [], 0.0
            dur.add_metric([name], time.perf_counter() - t0)
            ok.add_metric([name], success)
            yield from fams
        yield dur
        yield ok


def make_registry(get_view: Callable[[], AgentView], *, top_sites: int = 20) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AgentCollector(get_view, top_sites=top_sites))
    # The agent's own CPU, memory and fds (nativewatch_agent_process_*), so its cost is watched too.
    ProcessCollector(namespace="nativewatch_agent", registry=reg)
    return reg
