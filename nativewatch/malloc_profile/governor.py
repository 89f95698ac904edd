"""The capture cost governor: probe hits per second times this kernel's measured cost per hit is the
CPU a capture adds to its target; over the budget, the capture stops.

Why hits times cost, not the target's CPU time: a probe's trap and program run inside the target's
own threads, so its system time includes them, but it also includes every syscall the target makes;
the probe's share cannot be told apart from a busy server's own work. The hit counters are exact and
the cost per hit is measured on this machine (calibrate.py), so the estimate needs no baseline.

The estimate is judged over a sliding window (half a second) as soon as the first tick has data, so a
program that allocates a million times a second is released within about 0.1 s, while a short burst in
an otherwise quiet program has to last a window to stop the capture.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_OVERHEAD", "HitCosts", "Governor", "OverheadReport", "parse_overhead"]

# A share of one core. 5%: the calibrated cost of a probe hit here is 1-3 us, so 5% admits roughly
# 20,000 allocator calls a second, which is most services between bursts and every leak of interest
# that is not in the hot path; above that the capture costs the target more than its own run-to-run
# CPU noise, and an incident capture must never be what tips a struggling pod over.
DEFAULT_MAX_OVERHEAD = 0.05
WINDOW_S = 0.5


@dataclass(frozen=True, slots=True)
class HitCosts:
    """Nanoseconds of target CPU per probe hit, per hit slot (probes.HIT_NAMES)."""
    alloc_ns: float
    free_ns: float
    return_ns: float
    source: str  # how they were obtained: "measured", "cached", or "default: <why>"
    # in-process sampling (nativewatch/inject): each hooked allocation call's own cost (hits count
    # only the sampled calls that reach a probe)
    hook_ns: float = 0.0

    def cost_ns(self, hits: dict[str, int]) -> float:
        return (hits.get("alloc", 0) * self.alloc_ns + hits.get("free", 0) * self.free_ns
                + hits.get("return", 0) * self.return_ns + hits.get("hooked", 0) * self.hook_ns)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alloc": round(self.alloc_ns, 1), "free": round(self.free_ns, 1),
                               "return": round(self.return_ns, 1), "source": self.source}
        if self.hook_ns:
            out["hooked_call"] = round(self.hook_ns, 1)
        return out


@dataclass(frozen=True, slots=True)
class OverheadReport:
    budget: float | None         # share of one core, None = unlimited
    peak: float                  # highest windowed estimate seen
    mean: float                  # over the whole capture
    calls_per_s: float           # allocator calls (entries) per second over the whole capture
    costs: HitCosts
    stopped: str | None          # why the capture stopped early, None if it ran to the end

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "estimated_peak": round(self.peak, 4),
                "estimated_mean": round(self.mean, 4), "calls_per_s": round(self.calls_per_s, 1),
                "cost_ns_per_hit": self.costs.to_json(), "stopped": self.stopped}


def _calls(hits: dict[str, int]) -> int:
    if "hooked" in hits:  # in-process sampling: allocation calls, sampled or not
        return hits["hooked"]
    return hits.get("alloc", 0) + hits.get("free", 0)


def _rate(n: float) -> str:
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f} "


class Governor:
    """Feed it (monotonic seconds, cumulative hits) at every tick; it says when to stop."""

    def __init__(self, budget: float | None, costs: HitCosts, *, window_s: float = WINDOW_S) -> None:
        if budget is not None and not budget > 0:
            raise ValueError("the overhead budget must be a positive share of a core (or None)")
        self.budget = budget
        self.costs = costs
        self.window_s = window_s
        self._points: deque[tuple[float, float, int]] = deque()  # (t, cumulative cost ns, calls)
        self._start: tuple[float, float, int] | None = None
        self._last: tuple[float, float, int] | None = None
        self.peak = 0.0
        self.stopped: str | None = None

    def observe(self, t: float, hits: dict[str, int]) -> bool:
        """True when the capture must stop now (over budget)."""
        point = (t, self.costs.cost_ns(hits), _calls(hits))
        if self._start is None:
            self._start = self._last = point
            self._points.append(point)
            return False
        self._last = point
        self._points.append(point)
        while len(self._points) > 2 and t - self._points[1][0] >= self.window_s:
            self._points.popleft()
        t0, c0, n0 = self._points[0]
        if t - t0 <= 0:
            return False
        share = (point[1] - c0) / ((t - t0) * 1e9)
        self.peak = max(self.peak, share)
        if self.budget is not None and share > self.budget and self.stopped is None:
            calls_s = (point[2] - n0) / (t - t0)
            self.stopped = (f"stopped after {t - self._start[0]:.1f} s: {_rate(calls_s)}calls/s would cost "
                            f"{share:.0%} of a core; budget {self.budget:.0%}")
            return True
        return False

    def report(self) -> OverheadReport:
        mean = calls = 0.0
        if self._start is not None and self._last is not None and self._last[0] > self._start[0]:
            span = self._last[0] - self._start[0]
            mean = (self._last[1] - self._start[1]) / (span * 1e9)
            calls = (self._last[2] - self._start[2]) / span
        return OverheadReport(self.budget, self.peak, mean, calls, self.costs, self.stopped)


def parse_overhead(text: str) -> float | None:
    """'5%', '0.05' -> 0.05; 'none' or 0 -> None (no limit). Raises ValueError otherwise."""
    s = text.strip().lower()
    if s in ("none", "off", "unlimited"):
        return None
    value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    if value == 0:
        return None
    if not 0 < value <= 64:  # up to every core of a big node; a share of one core each
        raise ValueError(f"overhead budget must be a positive share of one core, not {text!r}")
    return value
