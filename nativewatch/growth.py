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
above a threshold. `assess` applies one `GrowthPolicy` (every threshold, defined once) and adds *fast*
verdicts for growth the evidence already proves in a few minutes (see `GrowthPolicy`). The floor only rises, so a *shrinking* series reads as slope 0, not negative.
Limits: teeth longer than about a coarse bucket (window/8) lower the fit, a tooth as long as the window
cannot be told from growth (use a longer window), and a leak that grows in bursts rarer than one per
bucket reads as a lower fit.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median

__all__ = ["DEFAULT_WINDOW_S", "FloorFit", "GrowthPolicy", "LeakVerdict", "MIN_SAMPLES", "NO_GROWTH", "assess",
           "fit_floor", "leak_verdict", "oom_eta_s"]

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
    """A verdict and the fit it rests on. ``tier`` is the window that decided: ``"window"`` for the
    policy's full window, ``"fast-120s"`` and the like for a fast verdict (see `GrowthPolicy`)."""

    leak: bool
    reason: str
    fit: FloorFit
    tier: str = "window"

    @property
    def bytes_per_second(self) -> float:
        return self.fit.bytes_per_second

    @property
    def window_s(self) -> float:
        return self.fit.window_s

    def to_json(self) -> dict[str, object]:
        return {"leak": self.leak, "reason": self.reason, "tier": self.tier, **self.fit.to_json()}


NO_GROWTH = LeakVerdict(False, "flat", FloorFit(0.0, 0.0, 0, 0.0, 0.0, 0))


def _buckets_minima(times: Sequence[float], values: Sequence[float], nbuckets: int) -> list[tuple[float, float]]:
    t0, t1 = times[0], times[-1]
    span = t1 - t0
    if span <= 0:
        i = min(range(len(values)), key=values.__getitem__)
        return [(times[i], values[i])]
    width = span / nbuckets
    minima: dict[int, tuple[float, float]] = {}
    n = len(times)
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        # Times so far apart that their difference overflows (hostile input, not a clock) are
        # bucketed by rank instead.
        b = min(int((t - t0) / width), nbuckets - 1) if math.isfinite(span) else min(i * nbuckets // n, nbuckets - 1)
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
    eta = (limit_bytes - current_bytes) / slope
    return eta if math.isfinite(eta) else None  # a vanishing slope: no ETA, not infinity


MIB = 1024 * 1024
DEFAULT_WINDOW_S = 3600.0


@dataclass(frozen=True, slots=True)
class GrowthPolicy:
    """Every leak threshold of nativewatch, in one place; the agent, `top`, `soak` and `explain` all judge
    a series with `assess(times, values, policy)`.

    **The window verdict** (slow leaks): the floor over the last ``window_s`` rises at least
    ``min_slope_bytes_per_second`` in at least ``min_fit`` of its sub-windows, with at least
    ``min_window_s`` of data (default a quarter of the window). An hour's window at 1 KiB/s catches the
    field guide's 5-30 MB/h leaks, which only stand out of a sawtooth over tens of minutes.

    It must also keep rising in the window's second half (``min_steadiness`` of the pace of the whole):
    a warm-up in the first minutes followed by flat memory is not a leak, although its floor's line
    through the whole window rises.

    **Fast verdicts** (fast leaks, before they OOM-kill the container): over each window of
    ``fast_windows_s``, the shorter the more growth it needs (``fast_min_rise_bytes``, one per window:
    two minutes of evidence must show more than five), the floor must
      - span at least ``fast_min_span`` of that window (a process younger than that gets none), with at
        least ``fast_min_samples`` samples in it (a process sampled once a minute never gets one: six
        points do not tell the first tooth of a slow sawtooth from a leak),
      - rise by at least that window's ``fast_min_rise_bytes`` in total, so that noise, a cache fill and
        the teeth of most sawtooths never qualify,
      - rise in at least ``fast_min_fit`` of its sub-windows: a steady rise, not a step,
      - keep its pace: the slope of the window's second half at least ``fast_min_steadiness`` of the
        first half's, so a warm-up that is levelling off (arena growth, a cache filling ever more slowly)
        does not qualify while it flattens,
    and the series must not have fallen, anywhere in the full window, by more than ``fast_max_drawdown``
    of that rise: memory that was given back before (a sawtooth's teeth, a GC) may be a tooth again, and
    only the window verdict's floor can judge it. What a fast verdict cannot tell from a leak is a steady
    ramp longer than the fast window (a 2-minute bulk load) or the first tooth of a sawtooth whose teeth
    are longer than the fast window; both stop being flagged once they level off or drop.
    """

    window_s: float = DEFAULT_WINDOW_S
    min_window_s: float | None = None  # default: a quarter of the window
    min_slope_bytes_per_second: float = 1024.0
    min_fit: float = 0.75
    min_steadiness: float = 0.25
    fast_windows_s: tuple[float, ...] = (120.0, 300.0)
    fast_min_rise_bytes: tuple[float, ...] = (64 * MIB, 16 * MIB)
    fast_min_span: float = 0.75
    fast_min_samples: int = 8
    fast_min_fit: float = 0.9
    fast_min_steadiness: float = 0.75
    fast_max_drawdown: float = 0.25

    @property
    def long_min_window_s(self) -> float:
        return self.min_window_s if self.min_window_s is not None else self.window_s / 4

    def problems(self) -> list[str]:
        """What makes this policy unusable (empty when it is fine): for configuration errors."""
        out = []
        if not (self.window_s > 0):
            out.append("the growth window must be positive")
        if self.min_window_s is not None and not (0 <= self.min_window_s <= self.window_s):
            out.append("the minimum leak window must lie between 0 and the window")
        if not (0 < self.min_fit <= 1) or not (0 < self.fast_min_fit <= 1):
            out.append("fit thresholds must lie in (0, 1]")
        if self.min_slope_bytes_per_second < 0 or any(r < 0 for r in self.fast_min_rise_bytes):
            out.append("slope and rise thresholds must not be negative")
        if len(self.fast_min_rise_bytes) < len(self.fast_windows_s):
            out.append("every fast window needs its minimum rise")
        if any(not (0 < w <= self.window_s) for w in self.fast_windows_s):
            out.append("every fast window must be positive and no longer than the window")
        return out


def _window(times: Sequence[float], values: Sequence[float], start: float) -> tuple[list[float], list[float]]:
    i = bisect_left(times, start)
    return list(times[i:]), [float(v) for v in values[i:]]


def _max_drawdown(values: Sequence[float]) -> float:
    peak = -math.inf
    worst = 0.0
    for v in values:
        if v > peak:
            peak = v
        elif peak - v > worst:
            worst = peak - v
    return worst


def _steadiness(ts: Sequence[float], vs: Sequence[float]) -> float:
    """Pace of the floor's rise over the second half of the samples against the first half's
    (1 for a straight line, about 0 for a rise that stopped); 1 when the first half did not rise."""
    floor = list(vs)
    for i in range(len(floor) - 2, -1, -1):
        floor[i] = min(floor[i], floor[i + 1])
    mid = min(max(bisect_left(ts, (ts[0] + ts[-1]) / 2), 1), len(ts) - 2)
    d_early, d_late = ts[mid] - ts[0], ts[-1] - ts[mid]
    if not (d_early > 0 and d_late > 0):
        return 1.0  # repeated timestamps: a half without duration says nothing about the pace
    early = (floor[mid] - floor[0]) / d_early
    late = (floor[-1] - floor[mid]) / d_late
    return late / early if early > 0 else 1.0


def _fast_verdict(ts: list[float], vs: list[float], w: float, min_rise: float, policy: GrowthPolicy,
                  drawdown: float) -> LeakVerdict | None:
    wt, wv = _window(ts, vs, ts[-1] - w)
    if len(wt) < max(MIN_SAMPLES, policy.fast_min_samples) or wt[-1] - wt[0] < policy.fast_min_span * w:
        return None
    # Cheap gate first: most series never rise this much in a few minutes, and the fit is the cost.
    if wv[-1] - min(wv) < min_rise:
        return None
    fit = fit_floor(wt, wv)
    rise = fit.bytes_per_second * fit.window_s
    if (rise < min_rise or fit.fit < policy.fast_min_fit
            or fit.bytes_per_second < policy.min_slope_bytes_per_second):
        return None
    if drawdown > policy.fast_max_drawdown * rise:
        return None
    if _steadiness(wt, wv) < policy.fast_min_steadiness:
        return None
    return LeakVerdict(True, f"floor rising {fit.bytes_per_second:.0f} B/s over the last {fit.window_s:.0f}s "
                             f"(+{rise / MIB:.0f} MiB, in {fit.fit:.0%} of sub-windows, steady; fast verdict)",
                       fit, tier=f"fast-{w:.0f}s")


_FLAT: dict[tuple[int, float, float], LeakVerdict] = {}


def assess(times: Sequence[float], values: Sequence[float], policy: GrowthPolicy) -> LeakVerdict:
    """The growth of one series under ``policy``: the window verdict, else the first fast verdict, else no
    leak with the window's slope and the reason. ``times`` increase (seconds)."""
    if len(values) < MIN_SAMPLES:
        return LeakVerdict(False, f"too few samples ({len(values)} < {MIN_SAMPLES})",
                           FloorFit(0.0, 0.0, len(values), 0.0, float(values[-1]) if len(values) else 0.0, 0))
    first = values[0]
    if values.count(first) == len(values):  # C-speed on arrays and lists
        # Most series of most processes never move (most categories of most processes are 0): skip
        # the fits and share the verdict object, the costs that scale with rows in `top`.
        key = (len(values), times[-1] - times[0], first)
        flat = _FLAT.get(key)
        if flat is None:
            if len(_FLAT) >= 4096:
                _FLAT.clear()
            flat = _FLAT[key] = LeakVerdict(False, "flat", FloorFit(0.0, key[1], key[0], 0.0, float(first), 0))
        return flat
    ts, vs = _window(times, values, times[-1] - policy.window_s)
    fit = fit_floor(ts, vs)
    verdict = leak_verdict(fit, min_slope_bytes_per_second=policy.min_slope_bytes_per_second,
                           min_window_s=policy.long_min_window_s, min_fit=policy.min_fit)
    if verdict.leak:
        steady = _steadiness(ts, vs)
        if steady >= policy.min_steadiness:
            return verdict
        verdict = LeakVerdict(False, f"floor rose early in the window and then only at {steady:.0%} of that "
                                     "pace: a warm-up or a step, not a steady leak", fit)
    if not policy.fast_windows_s:
        return verdict
    drawdown = _max_drawdown(vs)
    for w, min_rise in sorted(zip(policy.fast_windows_s, policy.fast_min_rise_bytes, strict=False)):
        fast = _fast_verdict(ts, vs, w, min_rise, policy, drawdown)
        if fast is not None:
            return fast
    return verdict
