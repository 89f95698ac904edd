"""The triage decision, hsperfdata GC figures and GOMEMLIMIT parsing, as pure functions.

gcstats is checked against the captured hsperfdata of JDK 11/17/21/25 (../shared/samples, decoded
copies beside them give the ground truth) and against hand-built sample series; triage.explain against
hand-built inputs covering each branch of the guide's tree.
"""

from __future__ import annotations

import math
import os

import pytest
from conftest import SAMPLES
from hypothesis import given
from hypothesis import strategies as st

from nativewatch.cmd_explain import gomemlimit
from nativewatch.growth import NO_GROWTH, FloorFit, LeakVerdict
from nativewatch.jvm.gcstats import (
    GcSample,
    floor_trend,
    gc_sample,
    gc_time_ratio,
    max_heap_bytes,
    post_gc_floor,
)
from nativewatch.jvm.hsperf import parse_hsperfdata
from nativewatch.triage import TriageInput, explain

MiB = 1 << 20


def _decoded(version: int) -> dict[str, str]:
    out = {}
    for line in (SAMPLES / f"hsperfdata-decoded-jdk{version}.txt").read_text().splitlines():
        if "=" in line and line.split()[0].startswith(("sun.", "java.")):
            out[line.split()[0]] = line.rsplit("=", 1)[1].strip().strip("'")
    return out


@pytest.mark.parametrize("version", [11, 17, 21, 25])
def test_gc_sample_and_max_heap_from_real_hsperfdata(version):
    pd = parse_hsperfdata((SAMPLES / f"hsperfdata-jdk{version}.bin").read_bytes())
    truth = _decoded(version)
    s = gc_sample(pd, 5.0)
    assert s is not None and s.t == 5.0
    used = sum(int(v) for k, v in truth.items() if k.startswith("sun.gc.generation.") and k.endswith(".used")
               and ".space." in k)
    assert s.heap_used == used
    freq = int(truth["sun.os.hrt.frequency"])
    assert s.collections == int(truth["sun.gc.collector.0.invocations"]) + int(truth["sun.gc.collector.1.invocations"])
    assert s.pause_s == pytest.approx((int(truth["sun.gc.collector.0.time"]) + int(truth["sun.gc.collector.1.time"])) / freq)
    assert max_heap_bytes(pd) == 512 * MiB  # -Xmx512m on their command lines


def _series(floors: list[int], *, period: float = 2.0, pause: float = 0.01) -> list[GcSample]:
    """A collection every `period` seconds with heap used `floors[i]` just after it, and allocation
    in between (the sample before each collection is 64 MiB higher)."""
    out = [GcSample(0.0, floors[0] + 64 * MiB, 0, 0.0, 0.0)]
    for i, f in enumerate(floors):
        t = (i + 1) * period
        out.append(GcSample(t - 0.1, f + 64 * MiB, i, i * pause, 0.0))
        out.append(GcSample(t + 0.1, f, i + 1, (i + 1) * pause, 0.0))
    return out


def test_post_gc_floor_slope_and_gc_ratio_of_a_synthetic_leak():
    floors = [100 * MiB + i * 4 * MiB for i in range(20)]  # +4 MiB every 2 s = 2 MiB/s
    s = _series(floors)
    pts = post_gc_floor(s)
    assert [v for _, v in pts] == floors
    tr = floor_trend(pts)
    assert tr is not None and tr.bytes_per_second == pytest.approx(2 * MiB, rel=0.02) and tr.points == 20
    assert tr.bytes == floors[-1] and tr.fit > 0.99
    assert gc_time_ratio(s) == pytest.approx(20 * 0.01 / s[-1].t, rel=1e-6)


def test_a_flat_floor_with_one_outlier_is_flat():
    floors = [200 * MiB] * 15
    floors[7] += 80 * MiB  # one collection that could not reclaim much
    tr = floor_trend(post_gc_floor(_series(floors)))
    assert tr is not None and abs(tr.bytes_per_second) < 64 * 1024


def test_fewer_than_three_collections_is_no_trend():
    assert floor_trend(post_gc_floor(_series([1, 2]))) is None
    assert gc_time_ratio([]) is None


@pytest.mark.parametrize("env,want", [
    (b"A=1\0GOMEMLIMIT=512MiB\0", 512 * MiB), (b"GOMEMLIMIT=1GiB\0", 1 << 30), (b"GOMEMLIMIT=123456\0", 123456),
    (b"GOMEMLIMIT=off\0", None), (b"GOMEMLIMIT=12XB\0", None), (b"PATH=/bin\0", None), (b"", None)])
def test_gomemlimit(env, want):
    assert gomemlimit(env) == want


@given(st.binary(max_size=300))
def test_gomemlimit_fuzz(env):
    v = gomemlimit(env)
    assert v is None or v >= 0


def _leak(bps: float) -> LeakVerdict:
    return LeakVerdict(True, "rising", FloorFit(bps, 90.0, 45, 0.95, 0.0, 10))


def _inp(runtime="jvm", growth=None, floor=None, samples=45, window=90.0, limit=512 * MiB, rss=900 * MiB, sites=()):
    return TriageInput(pid=42, runtime=runtime, rss_bytes=rss, managed_heap_limit_bytes=limit,
                       growth=growth or {}, window_s=window, samples=samples, heap_post_gc=floor,
                       gc_time_ratio=0.02, sites=sites)


def _floor(bps: float, points: int = 20):
    return floor_trend([(t * 4.5, int(300 * MiB + bps * t * 4.5)) for t in range(points)])


def test_triage_branches():
    off = explain(_inp(growth={"direct": _leak(2 * MiB), "native": _leak(0.1 * MiB), "heap": NO_GROWTH},
                       floor=_floor(0)))
    assert off.verdict == "off-heap" and [g.category for g in off.growing] == ["direct", "native"]
    assert off.growing[0].share == pytest.approx(2 / 2.1)
    assert any("MaxDirectMemorySize" in s for s in off.next_steps) and "1.8x the heap limit" in off.summary
    heap = explain(_inp(growth={"gc": _leak(0.05 * MiB)}, floor=_floor(2 * MiB)))
    assert heap.verdict == "heap" and any("OldObjectSample" in s for s in heap.next_steps)
    assert any("writes about" in s for s in heap.next_steps)
    # a floor rising slower than an off-heap category does not make it a heap leak
    mixed = explain(_inp(growth={"metaspace": _leak(3 * MiB)}, floor=_floor(1 * MiB)))
    assert mixed.verdict == "off-heap" and mixed.growing[0].category == "metaspace"
    assert explain(_inp(growth={"heap": _leak(1 * MiB)}, floor=_floor(0))).verdict == "no-leak"
    assert explain(_inp(growth={"heap": _leak(1 * MiB)}, floor=None)).verdict == "insufficient-data"
    assert explain(_inp(samples=3)).verdict == "insufficient-data"
    assert explain(_inp(window=10.0)).verdict == "insufficient-data"
    sites = ({"frames": ["leak_here (app)", "main (app)"], "outstanding_bytes": 90 * MiB},)
    nat = explain(_inp(runtime="native", limit=None, growth={"native": _leak(2 * MiB)}, sites=sites))
    assert nat.verdict == "off-heap" and nat.sites == sites and "leak_here" in nat.summary
    assert explain(_inp(runtime="go", growth={"heap": _leak(MiB)}, limit=None)).verdict == "heap"
    assert explain(_inp(runtime="native", growth={})).verdict == "no-leak"


@given(st.dictionaries(st.sampled_from(["heap", "metaspace", "thread", "direct", "native", "code", "gc"]),
                       st.floats(-1e9, 1e9, allow_nan=False), max_size=7),
       st.one_of(st.none(), st.floats(-1e8, 1e8, allow_nan=False)),
       st.integers(0, 100), st.floats(0, 1e5, allow_nan=False), st.sampled_from(["jvm", "go", "native", "node"]))
def test_triage_fuzz_always_one_of_the_four_verdicts(rates, floor_bps, samples, window, runtime):
    growth = {c: (_leak(r) if r > 0 else NO_GROWTH) for c, r in rates.items()}
    ex = explain(_inp(runtime=runtime, growth=growth, floor=None if floor_bps is None else _floor(floor_bps),
                      samples=samples, window=window))
    assert ex.verdict in ("heap", "off-heap", "no-leak", "insufficient-data")
    assert math.isclose(sum(g.share for g in ex.growing), 1.0) or not ex.growing
    assert ex.next_steps and ex.summary


def test_cli_errors_and_a_short_window(nativewatch_cli):
    import json
    import subprocess

    r = nativewatch_cli("explain", "--pid", "999999999", "--duration", "2s")
    assert r.returncode != 0 and "999999999" in r.stderr and "Traceback" not in r.stderr
    r = nativewatch_cli("explain", "--pod", "default/web-0", env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})
    assert r.returncode != 0 and "--container" in r.stderr and "Traceback" not in r.stderr
    r = nativewatch_cli("explain", "--pid", "1", "--container", "abcdef")
    assert r.returncode != 0 and "exactly one" in r.stderr
    quiet = subprocess.Popen(["sleep", "60"])
    try:
        r = nativewatch_cli("explain", "--pid", str(quiet.pid), "--duration", "3s", "--interval", "1s", "--json",
                            "--no-capture", check=True)
    finally:
        quiet.kill()
        quiet.wait()
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "insufficient-data" and doc["runtime"] == "native" and doc["growing"] == []
    assert doc["heap_post_gc"] is None and doc["gc_time_ratio"] is None and doc["next_steps"]


@pytest.mark.parametrize("version", [11, 17, 21, 25])
def test_gc_figures_for_the_agent_floor_is_heap_outside_eden(version):
    from nativewatch.jvm.gcstats import gc_figures

    pd = parse_hsperfdata((SAMPLES / f"hsperfdata-jdk{version}.bin").read_bytes())
    truth = _decoded(version)
    eden = int(truth["sun.gc.generation.0.space.0.used"])
    fig = gc_figures(pd)
    assert fig is not None and fig["heap_max_bytes"] == 512 * MiB
    assert fig["heap_post_gc_bytes"] == fig["heap_used_bytes"] - eden
    # a JVM that never collected has no floor yet
    fresh = parse_hsperfdata((SAMPLES / f"hsperfdata-jdk{version}.bin").read_bytes())
    for k in ("sun.gc.collector.0.invocations", "sun.gc.collector.1.invocations"):
        fresh.values[k] = 0
    assert "heap_post_gc_bytes" not in (gc_figures(fresh) or {})
