"""`soak` analysis: rates, per-category evaluation, reports and the SVG chart (issue 4).

Pure functions over samples whose true slopes the test sets; the live runs are in test_soak_live.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.snapshot import take_snapshot
from nativewatch.soak import (
    DEFAULT_CATEGORIES,
    PLOT_X0,
    PLOT_X1,
    PLOT_Y0,
    PLOT_Y1,
    SoakReport,
    SoakSample,
    chart_svg,
    evaluate,
    failures_of,
    parse_rate,
    report_json,
    report_text,
    run_soak,
)

MIB = 1024 * 1024
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("text", "bps"), [
    ("1MiB/h", MIB / 3600), ("5MB/h", 5e6 / 3600), ("100KiB/s", 100 * 1024), ("2048", 2048),
    ("2 GB / d", 2e9 / 86400), ("1MiB/min", MIB / 60), ("0.5MiB/s", MIB / 2), ("10k/m", 10_000 / 60),
])
def test_parse_rate_units(text, bps):
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["", "/h", "5MB/week", "fast", "5MB/h/s", "-1MiB/h", "MiB/s"])
def test_parse_rate_rejects_garbage_with_a_message(text):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parse_rate_never_crashes(text):
    try:
        v = parse_rate(text)
    except ValueError:
        return
    assert v >= 0 and math.isfinite(v)


def samples_of(duration_s: float, step_s: float, **series) -> list[SoakSample]:
    out = []
    n = int(duration_s / step_s) + 1
    for i in range(n):
        t = i * step_s
        cats = dict.fromkeys(CATEGORIES, 0)
        for c, f in series.items():
            cats[c] = int(f(t))
        out.append(SoakSample(t, sum(cats.values()), cats))
    return out


def test_steady_native_leak_exceeds_and_others_do_not():
    s = samples_of(60, 1, native=lambda t: 10 * MIB + 2 * MIB * t, file=lambda t: 3 * MIB,
                   thread=lambda t: 132 * 1024)
    res = evaluate(s, limit_bytes_per_second=parse_rate("5MB/h"), watched=DEFAULT_CATEGORIES, warmup_s=6)
    assert res["native"].exceeded
    assert res["native"].slope_bytes_per_second == pytest.approx(2 * MIB, rel=1e-9)
    assert res["native"].first_bytes == 10 * MIB + 12 * MIB  # first sample after the warmup (t=6)
    assert not any(r.exceeded for c, r in res.items() if c != "native")
    assert "file" not in res  # not watched by default
    fails = failures_of(res, 55)
    assert len(fails) == 1 and fails[0].startswith("native: floor rising +2.0 MiB/s")


def test_sawtooth_passes_although_a_straight_line_would_tilt():
    # 48 MiB teeth every 5 s; a least-squares line through t in [6, 58] tilts by ~ +0.1 MiB/s.
    s = samples_of(58, 1, native=lambda t: MIB + 48 * MIB * min(1.0, (t % 5) / 3) * ((t % 5) < 3))
    res = evaluate(s, limit_bytes_per_second=parse_rate("5MB/h"), watched=["native"], warmup_s=6)
    assert not res["native"].exceeded, res["native"].reason
    ts = [x.t_s for x in s if x.t_s >= 6]
    vs = [x.categories["native"] for x in s if x.t_s >= 6]
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    ols = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / sum((t - mt) ** 2 for t in ts)
    assert abs(ols) > parse_rate("5MB/h")  # what a naive fit would have failed


def test_growth_during_warmup_is_not_judged():
    # A JVM filling its heap for the first 50 s of a 65 s run, then flat.
    s = samples_of(65, 1, heap=lambda t: 200 * MIB * min(t, 50) / 50)
    judged = evaluate(s, limit_bytes_per_second=1000, watched=["heap"], warmup_s=50)
    assert not judged["heap"].exceeded
    assert judged["heap"].slope_bytes_per_second == 0
    naive = evaluate(s, limit_bytes_per_second=1000, watched=["heap"], warmup_s=0)
    assert naive["heap"].exceeded, naive["heap"].reason


def test_slow_leak_under_the_limit_passes_and_over_it_fails():
    s = samples_of(120, 2, direct=lambda t: 64 * MIB + 1000 * t)  # 1000 B/s = 3.6 MB/h
    assert not evaluate(s, limit_bytes_per_second=parse_rate("5MB/h"), watched=["direct"],
                        warmup_s=10)["direct"].exceeded
    assert evaluate(s, limit_bytes_per_second=parse_rate("1MB/h"), watched=["direct"],
                    warmup_s=10)["direct"].exceeded


def test_too_few_samples_is_a_failure_not_a_pass():
    s = samples_of(4, 1, native=lambda t: MIB)
    res = evaluate(s, limit_bytes_per_second=1000, watched=["native"], warmup_s=0)
    fails = failures_of(res, 5)
    assert any("only 5 samples" in f for f in fails)


def report(samples: list[SoakSample], watched=("native",), target="pid 1 (x)", limit=1000.0) -> SoakReport:
    res = evaluate(samples, limit_bytes_per_second=limit, watched=watched, warmup_s=5)
    return SoakReport(target=target, pid=1, runtime="native", duration_s=60, elapsed_s=60, warmup_s=5,
                      interval_s=1, limit_bytes_per_second=limit, watched=tuple(watched),
                      samples=tuple(samples), results=res,
                      failures=failures_of(res, sum(1 for x in samples if x.t_s >= 5)))


def test_report_json_follows_the_design_contract():
    r = report(samples_of(60, 1, native=lambda t: 2 * MIB * t, thread=lambda t: 8192))
    j = report_json(r)
    assert j["verdict"] == "fail"
    nat = j["categories"]["native"]
    assert set(nat) >= {"slope_bytes_per_second", "limit_bytes_per_second", "exceeded"}
    assert nat["exceeded"] is True and nat["limit_bytes_per_second"] == 1000.0
    assert nat["slope_bytes_per_second"] == pytest.approx(2 * MIB)
    assert len(j["series"]["native"]) == 61 and j["series"]["native"][10] == 20 * MIB
    text = report_text(r)
    assert "FAIL" in text and "native" in text and "+2.0 MiB/s" in text


def _polyline(root: ET.Element, cat: str) -> list[tuple[float, float]]:
    for el in root.iter(f"{SVG}polyline"):
        if el.get("id") == f"series-{cat}":
            return [tuple(map(float, p.split(","))) for p in el.get("points", "").split()]  # type: ignore[misc]
    raise AssertionError(f"no series for {cat}")


def test_chart_maps_back_to_the_samples_and_escapes_the_target():
    s = samples_of(60, 1, native=lambda t: 5 * MIB + 2 * MIB * t, thread=lambda t: 3 * MIB)
    svg = chart_svg(report(s, target='pid 7 (<evil&"name>)'))
    root = ET.fromstring(svg)  # well-formed despite the hostile name
    assert any('<evil&"name>' in (t.text or "") for t in root.iter(f"{SVG}text"))
    axes = next(root.iter(f"{SVG}metadata"))
    t_end, y_top = float(axes.get("data-t-end")), float(axes.get("data-y-top"))
    assert y_top >= 125 * MIB
    for cat in ("native", "thread"):
        pts = _polyline(root, cat)
        assert len(pts) == len(s)
        for (px, py), sample in zip(pts, s, strict=True):
            t = (px - PLOT_X0) / (PLOT_X1 - PLOT_X0) * t_end
            v = (PLOT_Y1 - py) / (PLOT_Y1 - PLOT_Y0) * y_top
            assert t == pytest.approx(sample.t_s, abs=t_end / 1000)  # 2 decimals of a pixel
            assert v == pytest.approx(sample.categories[cat], abs=y_top / 10_000)
    ids = {el.get("id") for el in root.iter()}
    assert "floor-native" in ids and "floor-thread" not in ids and "series-heap" not in ids
    assert "warmup" in ids


def test_run_soak_stops_when_the_child_exits_without_a_zero_sample():
    """A reaped-late child reads as a zombie with no memory: that must end the run, not be a sample."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    try:
        samples, last, _problems, elapsed = run_soak(lambda: take_snapshot(child.pid, with_sites=False),
                                                     duration_s=30, interval_s=0.2, child_status=child.poll)
    finally:
        child.kill()
        child.wait()
    assert isinstance(last, Breakdown)
    assert len(samples) >= 3 and elapsed < 10
    assert all(x.rss_bytes > 0 for x in samples)
    assert samples[-1].rss_bytes > MIB  # the last sample is the live interpreter, not its zombie
    assert child.returncode == 0
