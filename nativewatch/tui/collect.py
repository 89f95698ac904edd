"""The I/O edge of `top`: scan every process, read container limits, keep history, build rows.

Runs in a worker thread; the app only receives finished `Frame`s, so a slow scan never blocks a key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nativewatch.growth import GrowthPolicy
from nativewatch.model import Breakdown, ContainerInfo
from nativewatch.scan import scan_all
from nativewatch.snapshot import take_snapshot
from nativewatch.tracker import (
    SAMPLE_SPACING_S,
    ContainerMemoryFacts,
    ContainerSummary,
    Tracker,
    container_key,
    memory_facts,
    process_key,
)
from nativewatch.tui.state import Row, build_container_rows, build_process_rows

if TYPE_CHECKING:
    from nativewatch.malloc_profile.result import ProfileResult

__all__ = ["Collector", "Frame"]

ScanFn = Callable[..., tuple[list[Breakdown], dict[str, int]]]


@dataclass(frozen=True, slots=True)
class Frame:
    t: float
    processes: list[Row]
    containers: list[Row]
    breakdowns: dict[int, Breakdown]
    scan_s: float
    errors: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    container_summaries: dict[str, ContainerSummary] = field(default_factory=dict)  # by row key
    observed_s: float = 0.0  # since the collector's first scan: how much history the growth rests on


def _read_memory(info: ContainerInfo) -> ContainerMemoryFacts | None:
    try:
        from nativewatch.sources.cgroup_memory import read_container_memory
    except ImportError:
        return None
    try:
        return memory_facts(read_container_memory(info))
    except Exception:  # noqa: BLE001 - a container that vanished or hides its cgroup has no limit to show
        return None


class Collector:
    def __init__(self, *, proc_root: str = "/proc", jvm: bool = False, policy: GrowthPolicy | None = None,
                 scan: ScanFn = scan_all, pids: list[int] | None = None, history_points: int | None = None,
                 min_spacing_s: float = SAMPLE_SPACING_S) -> None:
        self.proc_root = proc_root
        self.jvm = jvm
        self.policy = policy or GrowthPolicy()
        # The agent's analyze stage, with the agent's spacing of points: the same evidence for a verdict.
        points = history_points or int(self.policy.window_s / max(min_spacing_s, 1.0)) + 16
        self.tracker = Tracker(self.policy, max_points=points, min_spacing_s=min_spacing_s)
        self.containers: dict[str, ContainerSummary] = {}
        self._first: float | None = None
        self.scan = scan
        self.pids = pids
        # History is written by the scan thread and read by the drill-down on the UI thread.
        self._lock = threading.Lock()

    def collect(self) -> Frame:
        t0 = time.monotonic()
        bds, errors = self.scan(self.proc_root, jvm=self.jvm, pids=self.pids)
        scan_s = time.monotonic() - t0
        now = time.time()
        with self._lock:
            return self._frame(bds, errors, scan_s, now)

    def series(self, key: str) -> tuple[list[float], dict[str, list[int]]]:
        """A copy of one key's history: (times, {"rss"|category: values})."""
        with self._lock:
            return self.tracker.series(key)

    def process_series(self, pid: int) -> tuple[list[float], dict[str, list[int]]]:
        return self.series(process_key(pid))

    def _frame(self, bds: list[Breakdown], errors: dict[str, int], scan_s: float, now: float) -> Frame:
        for b in bds:
            self.tracker.observe_breakdown(b, b.timestamp or now)
        summaries = self.tracker.containers(bds, now, _read_memory)
        self.containers = {sm.id: sm for sm in summaries}
        self.tracker.keep_only([process_key(b.pid) for b in bds] + [container_key(sm.id) for sm in summaries])
        ctr_rows = build_container_rows(summaries, self.tracker)
        proc_rows = build_process_rows(bds, self.tracker, self.containers)
        if self._first is None:
            self._first = now
        return Frame(now, proc_rows, ctr_rows, {b.pid: b for b in bds}, scan_s, errors,
                     container_summaries={container_key(sm.id): sm for sm in summaries},
                     observed_s=now - self._first)

    # --- the drill-down's reads: through the collector, so the app never calls a source itself ----
    def drill(self, pid: int) -> Breakdown:
        """One process in full for the drill-down: NMT attach allowed (the user picked this one JVM)
        and a running profile's top sites. ProcessGone / AccessDenied as take_snapshot raises them."""
        return take_snapshot(pid, proc_root=self.proc_root, jvm=True, jvm_timeout_s=2.0, with_sites=True)

    def profile(self, pid: int, duration_s: float, *, stop: threading.Event,
                on_attached: Callable[[], None]) -> ProfileResult:
        """A sampled native-allocation profile of pid (eBPF); SourceUnavailable when eBPF cannot run."""
        # Imported on use: `top` runs on a build or host where the profiler cannot.
        from nativewatch.malloc_profile import run_profile

        # the drill-down's snapshot attaches to JVMs too (NMT): the same consent names JIT frames
        return run_profile(pid, duration_s, mode="sampled", stop=stop, on_attached=on_attached,
                           proc_root=self.proc_root, jvm_attach=True)
