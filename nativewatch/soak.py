"""Soak test: sample one process's breakdown over a run and fail when a category's floor keeps rising.

The measurement is the agent's own (`nativewatch.growth.assess`, one policy): per category, the growth
of the samples taken after the warmup under the agent's policy with the limit as the slope threshold and
the run as the window (`soak_policy`). A category *exceeds* the limit when the agent would call it a
leak at that threshold, so a build that passes `soak` does not page anyone in production for the same
growth. Each category also carries `growth`: the verdict of the agent's own defaults on the same
samples, the object the agent's API and `top --json` show.

Pure parts (rates, evaluation, text/JSON/SVG reports) take samples and return values; `run_soak` is the
I/O edge: it samples through an injected function and watches an optional child process.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from xml.sax.saxutils import escape

from nativewatch.errors import ProcessGone
from nativewatch.growth import MIN_SAMPLES, FloorFit, GrowthPolicy, LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.tracker import Tracker, verdict_json
from nativewatch.units import human_bytes, human_rate, parse_bytes

__all__ = [
    "DEFAULT_CATEGORIES", "DEFAULT_MAX_GROWTH", "CategoryResult", "SoakReport", "SoakSample",
    "chart_svg", "evaluate", "parse_rate", "report_json", "report_text", "run_soak", "soak_policy",
]

# File-backed pages are page cache the kernel reclaims on its own (and a JVM or a big binary pages in
# its code for minutes): growth there is not a leak, so it is only watched when asked for.
DEFAULT_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c != "file")
DEFAULT_MAX_GROWTH = "5MB/h"

_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}


def parse_rate(text: str) -> float:
    """Bytes per second from "1MiB/h", "5MB/h", "100KiB/s", "2GB/d", "1MiB/min" or plain "2048" (B/s)."""
    m = re.fullmatch(r"\s*([^/]+?)\s*(?:/\s*([A-Za-z]+))?\s*", text)
    if not m:
        raise ValueError(f"not a rate: {text!r} (use e.g. 1MiB/h, 5MB/h, 100KiB/s)")
    per = (m.group(2) or "s").lower()
    if per not in _PER:
        raise ValueError(f"not a rate: {text!r}: unknown time unit {m.group(2)!r} (use s, min, h or d)")
    try:
        size = parse_bytes(m.group(1))
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (use e.g. 1MiB/h, 5MB/h, 100KiB/s)") from None
    return size / _PER[per]


@dataclass(frozen=True, slots=True)
class SoakSample:
    t_s: float  # seconds since the run started
    rss_bytes: int
    categories: dict[str, int]


@dataclass(frozen=True, slots=True)
class CategoryResult:
    category: str
    slope_bytes_per_second: float
    limit_bytes_per_second: float
    exceeded: bool
    reason: str
    fit: FloorFit
    first_bytes: int
    last_bytes: int
    growth: LeakVerdict | None = None  # the agent's defaults on the same samples

    def to_json(self) -> dict[str, Any]:
        return {"slope_bytes_per_second": self.slope_bytes_per_second,
                "limit_bytes_per_second": self.limit_bytes_per_second,
                "exceeded": self.exceeded, "fit": self.fit.fit, "samples": self.fit.samples,
                "window_s": self.fit.window_s, "first_bytes": self.first_bytes,
                "last_bytes": self.last_bytes, "reason": self.reason,
                "growth": verdict_json(self.growth) if self.growth is not None else None}


@dataclass(frozen=True, slots=True)
class SoakReport:
    target: str  # "pid 1234 (comm)" or the command line
    pid: int | None
    runtime: str
    duration_s: float  # requested
    elapsed_s: float  # actually sampled
    warmup_s: float
    interval_s: float
    limit_bytes_per_second: float
    watched: tuple[str, ...]
    samples: tuple[SoakSample, ...]
    results: dict[str, CategoryResult]
    failures: tuple[str, ...]  # every reason for a "fail", growth and otherwise
    notes: tuple[str, ...] = ()
    exit_status: int | None = None  # of the command soak ran, None with --pid or if soak stopped it
    sources: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> str:
        return "fail" if self.failures else "pass"


def soak_policy(limit_bytes_per_second: float, base: GrowthPolicy | None = None) -> GrowthPolicy:
    """The agent's policy with the limit as the slope threshold and the whole run as the window: the
    user chose how long to run, so there is no minimum window beyond MIN_SAMPLES."""
    base = base or GrowthPolicy()
    return replace(base, window_s=math.inf, min_window_s=0.0, min_slope_bytes_per_second=limit_bytes_per_second)


def evaluate(samples: Sequence[SoakSample], *, limit_bytes_per_second: float, watched: Sequence[str],
             warmup_s: float, policy: GrowthPolicy | None = None) -> dict[str, CategoryResult]:
    """Growth and verdict per watched category over the samples taken after the warmup: the analyze
    stage's tracker, once under the soak's policy (the limit) and once under the agent's."""
    agent = policy or GrowthPolicy()
    after = [s for s in samples if s.t_s >= warmup_s]
    judged, plain = Tracker(soak_policy(limit_bytes_per_second, agent), max_points=len(after) + 1), \
        Tracker(agent, max_points=len(after) + 1)
    for s in after:
        for tr in (judged, plain):
            tr.observe("soak", s.t_s, s.rss_bytes, s.categories)
    verdicts, agents = judged.category_growth("soak"), plain.category_growth("soak")
    out: dict[str, CategoryResult] = {}
    for cat in watched:
        v = verdicts[cat]
        first = int(after[0].categories.get(cat, 0)) if after else 0
        last = int(after[-1].categories.get(cat, 0)) if after else 0
        out[cat] = CategoryResult(cat, v.bytes_per_second, limit_bytes_per_second, v.leak, v.reason, v.fit,
                                  first, last, agents[cat])
    return out


def failures_of(results: dict[str, CategoryResult], samples_after_warmup: int,
                extra: Sequence[str] = ()) -> tuple[str, ...]:
    out = list(extra)
    if samples_after_warmup < MIN_SAMPLES:
        out.append(f"only {samples_after_warmup} samples after the warmup (need {MIN_SAMPLES}): "
                   "run longer or sample more often")
    for r in results.values():
        if r.exceeded:
            out.append(f"{r.category}: floor rising {human_rate(r.slope_bytes_per_second)} "
                       f"(limit {human_rate(r.limit_bytes_per_second)}, rose in {r.fit.fit:.0%} of sub-windows)")
    return tuple(out)


def report_json(r: SoakReport) -> dict[str, Any]:
    """DESIGN.md's soak contract ("verdict", "categories") plus context keys."""
    return {
        "verdict": r.verdict,
        "categories": {c: res.to_json() for c, res in r.results.items()},
        "failures": list(r.failures),
        "target": r.target, "pid": r.pid, "runtime": r.runtime,
        "duration_s": r.duration_s, "elapsed_s": r.elapsed_s, "warmup_s": r.warmup_s,
        "interval_s": r.interval_s, "limit_bytes_per_second": r.limit_bytes_per_second,
        "samples": len(r.samples), "exit_status": r.exit_status, "sources": list(r.sources),
        "notes": list(r.notes),
        "series": {"t_s": [s.t_s for s in r.samples],
                   "rss_bytes": [s.rss_bytes for s in r.samples],
                   **{c: [s.categories.get(c, 0) for s in r.samples] for c in CATEGORIES}},
    }


def report_text(r: SoakReport) -> str:
    after = sum(1 for s in r.samples if s.t_s >= r.warmup_s)
    lines = [f"nativewatch soak: {r.target}  runtime {r.runtime}",
             f"{len(r.samples)} samples over {r.elapsed_s:.1f}s (every {r.interval_s:g}s; "
             f"{after} after the {r.warmup_s:g}s warmup), limit {human_rate(r.limit_bytes_per_second)} "
             f"per category",
             ""]
    head = f"  {'CATEGORY':<10} {'START':>11} {'END':>11} {'FLOOR SLOPE':>14} {'FIT':>5}  RESULT"
    lines.append(head)
    idle = []
    for c in CATEGORIES:
        res = r.results.get(c)
        if res is None:
            continue
        if res.first_bytes == 0 and res.last_bytes == 0 and res.slope_bytes_per_second == 0:
            idle.append(c)
            continue
        mark = "FAIL" if res.exceeded else "ok"
        lines.append(f"  {c:<10} {human_bytes(res.first_bytes):>11} {human_bytes(res.last_bytes):>11} "
                     f"{human_rate(res.slope_bytes_per_second):>14} {res.fit.fit:>5.0%}  {mark}")
    if idle:
        lines.append(f"  (0 B throughout: {', '.join(idle)})")
    unwatched = [c for c in CATEGORIES if c not in r.results]
    if unwatched:
        lines.append(f"  (not watched: {', '.join(unwatched)})")
    lines.append("")
    if r.exit_status is not None:
        lines.append(f"command exited with status {r.exit_status}")
    for n in r.notes:
        lines.append(f"note: {n}")
    if r.failures:
        lines.append("FAIL")
        lines.extend(f"  - {f}" for f in r.failures)
    else:
        lines.append("PASS: no watched category's floor rose faster than the limit")
    return "\n".join(lines)


def run_soak(sample: Callable[[], Breakdown], *, duration_s: float, interval_s: float,
             child_status: Callable[[], int | None] | None = None,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep,
             on_sample: Callable[[SoakSample], None] | None = None,
             ) -> tuple[list[SoakSample], Breakdown | None, list[str], float]:
    """Sample every `interval_s` until `duration_s` has passed or the target is gone.

    Returns (samples, last breakdown, problems seen, elapsed seconds). A `ProcessGone` or a child that
    exited ends the run early; other exceptions propagate (the command reports them).
    """
    samples: list[SoakSample] = []
    problems: list[str] = []
    last: Breakdown | None = None
    start = clock()
    k = 0
    while True:
        if child_status is not None and child_status() is not None:
            break
        try:
            bd = sample()
        except ProcessGone:
            break
        # A process that exited but is not reaped yet (zombie) reads as empty: that is "gone", not a
        # sample of 0 bytes (which would pull every floor down to 0 and pass any leak).
        if bd.rss_bytes == 0 or (child_status is not None and child_status() is not None):
            break
        last = bd
        s = SoakSample(round(clock() - start, 3), bd.rss_bytes,
                       {c: int(bd.categories.get(c, 0)) for c in CATEGORIES})
        samples.append(s)
        for p in bd.problems:
            if p not in problems:
                problems.append(p)
        if on_sample is not None:
            on_sample(s)
        # Fixed schedule (not "interval after the previous sample") so slow samples do not stretch the
        # run; a sample slower than the interval skips the slots it overran instead of bunching up.
        now = clock() - start
        k = max(k + 1, math.floor(now / interval_s) + 1)
        nxt = k * interval_s
        if nxt > duration_s + 1e-9:
            break
        sleep(max(0.0, nxt - now))
    return samples, last, problems, clock() - start


# ---- chart ------------------------------------------------------------------------------------------

_COLORS = {"heap": "#1f77b4", "metaspace": "#9467bd", "thread": "#8c564b", "direct": "#d62728",
           "code": "#e377c2", "gc": "#7f7f7f", "runtime": "#bcbd22", "native": "#ff7f0e",
           "file": "#17becf", "shmem": "#2ca02c"}
CHART_W, CHART_H = 960, 460
PLOT_X0, PLOT_Y0, PLOT_X1, PLOT_Y1 = 80, 50, 720, 400


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _byte_axis(vmax: float) -> tuple[float, float, str]:
    """(top of axis in bytes, tick step in bytes, unit name) with ticks at round binary units."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("B", 1)):
        if vmax >= scale or unit == "B":
            step = _nice_step(max(vmax, 1) / scale) * scale
            return math.ceil(max(vmax, 1) / step) * step, step, unit
    raise AssertionError("unreachable")


def chart_svg(r: SoakReport) -> str:
    """A hand-written SVG line chart of every non-zero category over the run.

    Shaded: the warmup. Dashed: the fitted floor of each watched category that exceeded the limit.
    Coordinates are plain numbers (x: seconds, y: bytes, linearly mapped) so tests can map them back.
    """
    samples = r.samples
    t_end = max([s.t_s for s in samples] + [1.0])
    shown = [c for c in CATEGORIES if any(s.categories.get(c, 0) for s in samples)]
    vmax = max([s.categories.get(c, 0) for s in samples for c in shown] + [1])
    ytop, ystep, unit = _byte_axis(vmax)
    scale = {"GiB": 1024**3, "MiB": 1024**2, "KiB": 1024, "B": 1}[unit]

    def x(t: float) -> float:
        return PLOT_X0 + (PLOT_X1 - PLOT_X0) * t / t_end

    def y(v: float) -> float:
        return PLOT_Y1 - (PLOT_Y1 - PLOT_Y0) * v / ytop

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
           f'viewBox="0 0 {CHART_W} {CHART_H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{CHART_W}" height="{CHART_H}" fill="white"/>',
           f'<text x="{PLOT_X0}" y="28" font-size="16" font-weight="bold">'
           f'{escape(r.target)} — {r.verdict.upper()}</text>',
           f'<metadata id="nativewatch-axes" data-t-end="{t_end}" data-y-top="{ytop}"/>']
    if r.warmup_s > 0:
        out.append(f'<rect id="warmup" x="{PLOT_X0}" y="{PLOT_Y0}" width="{x(min(r.warmup_s, t_end)) - PLOT_X0:.2f}" '
                   f'height="{PLOT_Y1 - PLOT_Y0}" fill="#eeeeee"/>')
    ticks_y = int(round(ytop / ystep))
    for i in range(ticks_y + 1):
        v = i * ystep
        out.append(f'<line x1="{PLOT_X0}" y1="{y(v):.2f}" x2="{PLOT_X1}" y2="{y(v):.2f}" stroke="#dddddd"/>')
        out.append(f'<text x="{PLOT_X0 - 6}" y="{y(v) + 4:.2f}" text-anchor="end">{v / scale:g} {unit}</text>')
    tstep = _nice_step(t_end)
    i = 0
    while i * tstep <= t_end + 1e-9:
        t = i * tstep
        out.append(f'<text x="{x(t):.2f}" y="{PLOT_Y1 + 18}" text-anchor="middle">{t:g}s</text>')
        i += 1
    out.append(f'<rect x="{PLOT_X0}" y="{PLOT_Y0}" width="{PLOT_X1 - PLOT_X0}" height="{PLOT_Y1 - PLOT_Y0}" '
               f'fill="none" stroke="black"/>')
    for c in shown:
        pts = " ".join(f"{x(s.t_s):.2f},{y(s.categories.get(c, 0)):.2f}" for s in samples)
        out.append(f'<polyline id="series-{c}" fill="none" stroke="{_COLORS[c]}" stroke-width="1.5" '
                   f'points="{pts}"/>')
    for c, res in r.results.items():
        if not res.exceeded:
            continue
        t1 = samples[-1].t_s
        t0 = t1 - res.fit.window_s
        v1 = res.fit.intercept
        v0 = v1 - res.slope_bytes_per_second * res.fit.window_s
        out.append(f'<line id="floor-{c}" x1="{x(t0):.2f}" y1="{y(v0):.2f}" x2="{x(t1):.2f}" y2="{y(v1):.2f}" '
                   f'stroke="{_COLORS[c]}" stroke-width="2" stroke-dasharray="6,4"/>')
    ly = PLOT_Y0 + 8
    for c in shown:
        res = r.results.get(c)
        label = c if res is None else f"{c} {human_rate(res.slope_bytes_per_second)}" + (
            " FAIL" if res.exceeded else "")
        out.append(f'<line x1="{PLOT_X1 + 14}" y1="{ly}" x2="{PLOT_X1 + 34}" y2="{ly}" stroke="{_COLORS[c]}" '
                   f'stroke-width="3"/>')
        out.append(f'<text x="{PLOT_X1 + 40}" y="{ly + 4}">{escape(label)}</text>')
        ly += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"
