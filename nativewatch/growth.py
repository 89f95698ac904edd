"""Growth of a memory series: the slope of its *floor*, a leak verdict, and the time left before a limit.

Pure functions over (time, bytes) samples; no clock, no I/O. Used by the agent, `soak` and the TUI.

Why a floor and not a plain regression: a healthy heap is a sawtooth (allocate, free, allocate...).
An ordinary least-squares line through a sawtooth tilts with wherever the window happens to cut the
teeth, and reads a large "growth" for a process that does not grow at all. What leaks is memory that is
never given back, i.e. the level the series never returns *below* afterwards. So:

1. **Window.** Keep the samples of the last ``window_s`` seconds (all of them when ``window_s`` is None).
2. **Sub-window minima.** Cut the window into ``B`` equal-time buckets (``B = min(max_buckets, n // 2)``,
   at least 3) and keep each bucket's minimum (value and time). This drops the teeth whose period is
   shorter than a bucket.
3. **Lower envelope = suffix minima.** ``floor[i] = min(bucket_min[i:])``: the lowest level the series
   reached from bucket ``i`` to the end. A tooth longer than a bucket is undercut by the next trough, so
   its top never enters the floor; memory that is never freed stays under every later sample and forms
   the whole floor. By construction the floor never decreases.
4. **Robust line.** Theil–Sen through the floor points: the slope is the median of the pairwise slopes
   (robust to the odd bucket whose minimum is high because of noise), the intercept the median of the
   floor values carried to the last sample's time.
5. **Fit (goodness).** The fraction of consecutive floor points that *strictly rise*. A steady leak rises
   in every bucket (fit ≈ 1). A sawtooth, a plateau, or a single step rises in few buckets (a step: one
   rise out of B-1). Stationary noise only rises at its "records from the right" (about ``ln(B)/B``).
6. **Two resolutions.** Steps 2-5 run with ``B`` and with ``2B/3`` buckets (12 and 8 by default) and the
   better fit wins (the finer one on a tie): a leak under teeth longer than a fine bucket still rises in
   every coarse bucket. Coarser still would let noise through: with 8 buckets, iid noise of up to 8 MiB
   around a flat level gave no verdict in 2000 simulated hours (1 sample/min, agent defaults); with 6
   buckets it gave 1.8%.

A leak verdict needs all of: enough samples, a long enough window, a slope above a threshold and a fit
above a threshold. The floor only rises, so a *shrinking* series reads as slope 0, not negative.
Limits: teeth longer than about a coarse bucket (window/8) lower the fit, a tooth as long as the window
cannot be told from growth (use a longer window), and a leak that grows in bursts rarer than one per
bucket reads as a lower fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median

__all__ = ["FloorFit", "LeakVerdict", "MIN_SAMPLES", "fit_floor", "leak_verdict", "oom_eta_s"]

MIN_SAMPLES = 6
"""Fewer samples than this never give a verdict: the fit is reported with ``fit == 0``."""

_DEFAULT_BUCKETS = 12


@dataclass(frozen=True, slots=True)
class FloorFit:
    """Slope of the floor of a series over a window.

    ``intercept`` is the fitted floor (bytes) at the time of the last sample in the window, so
    ``intercept + bytes_per_second * dt`` extrapolates ``dt`` seconds ahead. ``points`` is how many floor
    points (buckets) the line went through.
    """

    bytes_per_second: float
    window_s: float
    samples: int
    fit: float
    intercept: float
    points: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {"bytes_per_second": self.bytes_per_second, "window_s": self.window_s,
                "samples": self.samples, "fit": self.fit, "intercept": self.intercept,
                "points": self.points}


@dataclass(frozen=True, slots=True)
class LeakVerdict:
    leak: bool
    reason: str
    fit: FloorFit

    def to_json(self) -> dict[str, object]:
        return {"leak": self.leak, "reason": self.reason, **self.fit.to_json()}


def _buckets_minima(times: Sequence[float], values: Sequence[float], nbuckets: int) -> list[tuple[float, float]]:
    t0, t1 = times[0], times[-1]
    span = t1 - t0
    if span <= 0:
        i = min(range(len(values)), key=values.__getitem__)
        return [(times[i], values[i])]
    width = span / nbuckets
    minima: dict[int, tuple[float, float]] = {}
    for t, v in zip(times, values, strict=True):
        b = min(int((t - t0) / width), nbuckets - 1)
        cur = minima.get(b)
        if cur is None or v < cur[1]:
            minima[b] = (t, v)
    return [minima[b] for b in sorted(minima)]


def _theil_sen(points: Sequence[tuple[float, float]]) -> float:
    slopes = [(v2 - v1) / (t2 - t1)
              for i, (t1, v1) in enumerate(points) for (t2, v2) in points[i + 1:] if t2 != t1]
    return median(slopes) if slopes else 0.0


def fit_floor(times: Sequence[float], values: Sequence[float], *, window_s: float | None = None,
              max_buckets: int = _DEFAULT_BUCKETS) -> FloorFit:
    """Fit the floor of ``values`` sampled at ``times`` (seconds, increasing) over the last ``window_s``.

    Non-finite samples are dropped. With fewer than ``MIN_SAMPLES`` usable samples the result has
    ``fit == 0`` and slope 0 (never a verdict).
    """
    if len(times) != len(values):
        raise ValueError(f"times ({len(times)}) and values ({len(values)}) differ in length")
    pairs = sorted((float(t), float(v)) for t, v in zip(times, values, strict=True)
                   if math.isfinite(t) and math.isfinite(v))
    if pairs and window_s is not None:
        start = pairs[-1][0] - window_s
        pairs = [p for p in pairs if p[0] >= start]
    n = len(pairs)
    if n == 0:
        return FloorFit(0.0, 0.0, 0, 0.0, 0.0, 0)
    ts = [p[0] for p in pairs]
    vs = [p[1] for p in pairs]
    span = ts[-1] - ts[0]
    if n < MIN_SAMPLES or span <= 0:
        return FloorFit(0.0, span, n, 0.0, min(vs), 0)
    best: FloorFit | None = None
    for buckets in dict.fromkeys((max_buckets, (2 * max_buckets) // 3)):
        cand = _fit_with(ts, vs, max(3, min(buckets, n // 2)))
        if best is None or cand.fit > best.fit:
            best = cand
    assert best is not None
    return best


def _fit_with(ts: list[float], vs: list[float], nbuckets: int) -> FloorFit:
    minima = _buckets_minima(ts, vs, nbuckets)
    floor: list[tuple[float, float]] = []
    lowest = math.inf
    for t, v in reversed(minima):
        lowest = min(lowest, v)
        floor.append((t, lowest))
    floor.reverse()
    slope = max(0.0, _theil_sen(floor))
    t_end = ts[-1]
    intercept = median(v + slope * (t_end - t) for t, v in floor)
    rises = sum(1 for (_, a), (_, b) in pairwise(floor) if b > a)
    fit = rises / (len(floor) - 1) if len(floor) > 1 else 0.0
    return FloorFit(slope, ts[-1] - ts[0], len(ts), fit, intercept, len(floor))


def leak_verdict(fit: FloorFit, *, min_slope_bytes_per_second: float, min_window_s: float,
                 min_fit: float = 0.75) -> LeakVerdict:
    """Is this a leak? Every condition must hold; ``reason`` names the first that failed, or the evidence."""
    if fit.samples < MIN_SAMPLES:
        return LeakVerdict(False, f"too few samples ({fit.samples} < {MIN_SAMPLES})", fit)
    if fit.window_s < min_window_s:
        return LeakVerdict(False, f"window {fit.window_s:.0f}s shorter than {min_window_s:.0f}s", fit)
    if fit.bytes_per_second < min_slope_bytes_per_second:
        return LeakVerdict(False, f"floor slope {fit.bytes_per_second:.0f} B/s below "
                                  f"{min_slope_bytes_per_second:.0f} B/s", fit)
    if fit.fit < min_fit:
        return LeakVerdict(False, f"floor rose in only {fit.fit:.0%} of sub-windows (< {min_fit:.0%})", fit)
    return LeakVerdict(True, f"floor rising {fit.bytes_per_second:.0f} B/s over {fit.window_s:.0f}s "
                             f"in {fit.fit:.0%} of sub-windows", fit)


def oom_eta_s(current_bytes: float, limit_bytes: float | None, slope: float) -> float | None:
    """Seconds until ``current_bytes`` growing at ``slope`` B/s reaches ``limit_bytes``.

    None when there is no (finite, positive) limit or no growth; 0.0 when already at or over the limit.
    """
    if limit_bytes is None or not math.isfinite(limit_bytes) or limit_bytes <= 0:
        return None
    if current_bytes >= limit_bytes:
        return 0.0
    if not math.isfinite(slope) or slope <= 0:
        return None
    return (limit_bytes - current_bytes) / slope
