"""Floor slope, leak verdict and OOM ETA on synthetic series with known true slopes (issue 6)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.growth import MIN_SAMPLES, FloorFit, GrowthPolicy, assess, fit_floor, leak_verdict, oom_eta_s

MIB = 1024 * 1024


def series(duration_s: float, step_s: float, f) -> tuple[list[float], list[float]]:
    t0 = 1_750_000_000.0  # absolute epoch times, as the agent records them
    n = int(duration_s / step_s) + 1
    ts = [t0 + i * step_s for i in range(n)]
    return ts, [f(i * step_s) for i in range(n)]


def sawtooth(period_s: float, amplitude: float, base: float = 100 * MIB):
    return lambda t: base + amplitude * ((t % period_s) / period_s)


def verdict(fit: FloorFit):
    return leak_verdict(fit, min_slope_bytes_per_second=64 * 1024, min_window_s=30)


def test_steady_leak_slope_is_exact():
    ts, vs = series(120, 1, lambda t: 50 * MIB + 2 * MIB * t)
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == pytest.approx(2 * MIB, rel=1e-9)
    assert fit.fit == 1.0
    assert fit.samples == 121
    assert fit.window_s == 120
    assert fit.intercept == pytest.approx(50 * MIB + 240 * MIB, rel=1e-9)
    v = verdict(fit)
    assert v.leak, v.reason


@pytest.mark.parametrize("period_s", [5, 7.3, 10, 25, 45])
def test_sawtooth_is_not_growth(period_s):
    ts, vs = series(120, 1, sawtooth(period_s, 80 * MIB))
    fit = fit_floor(ts, vs)
    v = verdict(fit)
    assert not v.leak, (period_s, v.reason)
    # Shorter teeth than a bucket vanish entirely; longer ones only leave the last tooth's rise.
    assert fit.bytes_per_second < 0.05 * 80 * MIB / period_s


@pytest.mark.parametrize("period_s", [5, 10, 25])
def test_sawtooth_plus_leak_reads_the_leak(period_s):
    leak = 1 * MIB
    saw = sawtooth(period_s, 60 * MIB)
    ts, vs = series(240, 1, lambda t: saw(t) + leak * t)
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == pytest.approx(leak, rel=0.2)
    if period_s <= 240 / 12:  # teeth shorter than a bucket: the floor rises in every bucket
        assert verdict(fit).leak


def test_noise_is_not_a_leak():
    rng = random.Random(7)
    ts, vs = series(300, 1, lambda t: 200 * MIB + rng.gauss(0, 4 * MIB))
    fit = fit_floor(ts, vs)
    assert not verdict(fit).leak
    assert fit.fit < 0.5


def test_leak_under_noise_keeps_slope():
    rng = random.Random(11)
    ts, vs = series(120, 1, lambda t: 200 * MIB + 2 * MIB * t + rng.gauss(0, 2 * MIB))
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == pytest.approx(2 * MIB, rel=0.1)
    assert verdict(fit).leak


def test_single_step_is_not_a_leak():
    ts, vs = series(120, 1, lambda t: 100 * MIB if t < 60 else 300 * MIB)
    fit = fit_floor(ts, vs)
    v = verdict(fit)
    assert not v.leak
    assert "sub-windows" in v.reason
    assert fit.fit <= 1 / 7 + 1e-9  # one rise among the 8 coarse buckets at most


def test_staircase_of_steps_is_a_leak_with_its_mean_slope():
    # 10 MiB every 5 s (shorter than a 10 s bucket) = 2 MiB/s on average.
    ts, vs = series(120, 1, lambda t: 100 * MIB + 10 * MIB * (t // 5))
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == pytest.approx(2 * MIB, rel=0.1)
    assert verdict(fit).leak


def test_shrinking_series_reads_zero():
    ts, vs = series(120, 1, lambda t: 500 * MIB - MIB * t)
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == 0.0
    assert not verdict(fit).leak


def test_window_keeps_only_recent_samples():
    # Flat for 10 minutes, then leaking for the last 60 s: a 60 s window sees only the leak.
    ts, vs = series(660, 1, lambda t: 100 * MIB + (0 if t < 600 else MIB * (t - 600)))
    fit = fit_floor(ts, vs, window_s=60)
    assert fit.window_s == 60
    assert fit.samples == 61
    assert fit.bytes_per_second == pytest.approx(MIB, rel=1e-6)
    assert not verdict(fit_floor(ts, vs)).leak  # whole series: one late rise


@pytest.mark.parametrize("n", [0, 1, 2, MIN_SAMPLES - 1])
def test_too_few_points_never_give_a_verdict(n):
    ts, vs = series(n - 1, 1, lambda t: 2 * MIB * t) if n else ([], [])
    fit = fit_floor(ts, vs)
    assert fit.samples == n
    assert fit.fit == 0.0
    v = verdict(fit)
    assert not v.leak
    assert "too few samples" in v.reason


def test_short_window_never_gives_a_verdict():
    ts, vs = series(10, 0.5, lambda t: 2 * MIB * t)
    v = verdict(fit_floor(ts, vs))
    assert not v.leak and "shorter than" in v.reason


def test_small_slope_below_threshold():
    ts, vs = series(120, 1, lambda t: 100 * MIB + 1000 * t)
    fit = fit_floor(ts, vs)
    assert fit.bytes_per_second == pytest.approx(1000, rel=1e-6)
    v = verdict(fit)
    assert not v.leak and "below" in v.reason


def test_irregular_sampling_and_unsorted_input():
    rng = random.Random(3)
    ts = sorted(1000 + rng.uniform(0, 120) for _ in range(80))
    vs = [3 * MIB * (t - 1000) for t in ts]
    pairs = list(zip(ts, vs, strict=True))
    rng.shuffle(pairs)
    fit = fit_floor([p[0] for p in pairs], [p[1] for p in pairs])
    assert fit.bytes_per_second == pytest.approx(3 * MIB, rel=1e-6)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        fit_floor([1.0, 2.0], [1.0])


def test_oom_eta():
    assert oom_eta_s(100 * MIB, 200 * MIB, MIB) == pytest.approx(100)
    assert oom_eta_s(200 * MIB, 200 * MIB, MIB) == 0.0
    assert oom_eta_s(250 * MIB, 200 * MIB, 0) == 0.0
    assert oom_eta_s(100 * MIB, 200 * MIB, 0.0) is None
    assert oom_eta_s(100 * MIB, 200 * MIB, -5.0) is None
    assert oom_eta_s(100 * MIB, None, MIB) is None
    assert oom_eta_s(100 * MIB, math.inf, MIB) is None
    assert oom_eta_s(100 * MIB, 0, MIB) is None


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(finite, finite), max_size=200), st.one_of(st.none(), st.floats(0, 1e6)))
def test_fit_floor_never_crashes_and_stays_in_range(pairs, window):
    fit = fit_floor([p[0] for p in pairs], [p[1] for p in pairs], window_s=window)
    assert 0.0 <= fit.fit <= 1.0
    assert fit.bytes_per_second >= 0.0 or math.isnan(fit.bytes_per_second)
    leak_verdict(fit, min_slope_bytes_per_second=1, min_window_s=1)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1e7), st.floats(1, 1e9), st.integers(20, 300))
def test_adding_a_linear_leak_to_a_flat_series_gives_its_slope(slope, base, n):
    ts = [float(i) for i in range(n)]
    fit = fit_floor(ts, [base + slope * t for t in ts])
    assert fit.bytes_per_second == pytest.approx(slope, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("period_s", [300, 420, 600])
def test_slow_leak_in_a_big_sawtooth_with_the_agent_defaults(period_s):
    """An 8 MB/hour leak under a 50 MiB sawtooth, sampled once a minute for an hour (the agent's
    default cadence, window, threshold and fit): flagged, with its slope; the same sawtooth without the
    leak is not."""
    from nativewatch.agent.config import AgentConfig

    cfg = AgentConfig()
    leak = 8e6 / 3600
    saw = sawtooth(period_s, 50 * MIB)
    ts, vs = series(cfg.window_s, cfg.full_interval_s, lambda t: saw(t) + leak * t)
    v = assess(ts, vs, cfg.policy)
    assert v.leak, v.reason
    assert v.tier == "window"
    assert v.bytes_per_second == pytest.approx(leak, rel=0.2)
    ts, vs = series(cfg.window_s, cfg.full_interval_s, saw)
    # judged after every sample, as the agent does: never a verdict, fast or slow
    for n in range(1, len(ts) + 1):
        flat = assess(ts[:n], vs[:n], cfg.policy)
        assert not flat.leak, (n, flat.reason)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(finite, finite), max_size=120))
def test_assess_never_crashes_on_any_series(pairs):
    """The policy's entry point (what every front end calls) on arbitrary samples, times increasing."""
    pairs = sorted(pairs)
    v = assess([p[0] for p in pairs], [p[1] for p in pairs], GrowthPolicy())
    assert isinstance(v.leak, bool) and v.bytes_per_second >= 0 and not math.isnan(v.bytes_per_second)
