"""The I/O edge of `top`: scan every process, read container limits, keep history, build rows.

Runs in a worker thread; the app only receives finished `Frame`s, so a slow scan never blocks a key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo
from nativewatch.scan import scan_all
from nativewatch.snapshot import take_snapshot
from nativewatch.tui.state import (
    ContainerLimit,
    GrowthPolicy,
    History,
    Row,
    build_container_rows,
    build_process_rows,
    container_totals,
    growth_of,
)

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


def _read_limit(info: ContainerInfo) -> ContainerLimit | None:
    try:
        from nativewatch.sources.cgroup_memory import read_container_memory
    except ImportError:
        return None
    try:
        mem = read_container_memory(info)
    except Exception:  # noqa: BLE001 - a container that vanished or hides its cgroup has no limit to show
        return None
    limit = mem.effective_limit_bytes or mem.limit_bytes
    return ContainerLimit(limit, mem.working_set_bytes)


class Collector:
    def __init__(self, *, proc_root: str = "/proc", jvm: bool = False, policy: GrowthPolicy | None = None,
                 scan: ScanFn = scan_all, pids: list[int] | None = None, history_points: int = 300) -> None:
        self.proc_root = proc_root
        self.jvm = jvm
        self.policy = policy or GrowthPolicy()
        self.history = History(max_points=history_points, max_age_s=max(900.0, self.policy.window_s))
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
            return (list(self.history.times(key)),
                    {c: list(self.history.values(key, c)) for c in ("rss", *CATEGORIES)})

    def _frame(self, bds: list[Breakdown], errors: dict[str, int], scan_s: float, now: float) -> Frame:
        for b in bds:
            self.history.add(f"pid:{b.pid}", b.timestamp or now, b.rss_bytes, b.categories)
        groups = container_totals(bds)
        for cid, (_members, cats) in groups.items():
            self.history.add(f"ctr:{cid}", now, sum(cats.values()), cats)
        self.history.keep_only([f"pid:{b.pid}" for b in bds] + [f"ctr:{cid}" for cid in groups])
        limits: dict[str, ContainerLimit] = {}
        for cid, (members, _cats) in groups.items():
            info = members[0].container
            if info is not None:
                lim = _read_limit(info)
                if lim is not None:
                    limits[cid] = lim
        ctr_rows = build_container_rows(groups, self.history, self.policy, limits)
        ctr_growth = {cid: growth_of(self.history.times(f"ctr:{cid}"), self.history.values(f"ctr:{cid}", "rss"),
                                     self.policy).bytes_per_second for cid in limits}
        proc_rows = build_process_rows(bds, self.history, self.policy, limits, ctr_growth)
        return Frame(now, proc_rows, ctr_rows, {b.pid: b for b in bds}, scan_s, errors)

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

        return run_profile(pid, duration_s, mode="sampled", stop=stop, on_attached=on_attached,
                           proc_root=self.proc_root)
