"""The cost governor's arithmetic and the ladder's choice, without a kernel (pure functions).

The live behaviour (a real million-calls-a-second program released, a quiet one captured to the end,
costs measured on real allocators) is in test_profile_ladder.py; here every figure is computed by hand.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nativewatch import doctor
from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile import attach
from nativewatch.malloc_profile.governor import Governor, HitCosts, parse_overhead

COSTS = HitCosts(alloc_ns=1000.0, free_ns=500.0, return_ns=1000.0, source="measured")


def hits(alloc: int, free: int = 0, ret: int = 0) -> dict[str, int]:
    return {"alloc": alloc, "free": free, "return": ret}


def test_share_of_a_core_is_hits_times_cost_over_time():
    g = Governor(0.05, COSTS)
    assert not g.observe(0.0, hits(0))
    # 0.1 s: 4,000 allocs (4 ms) + 2,000 frees (1 ms) + 1,000 returns (1 ms) = 6 ms of 100 ms = 6%
    assert g.observe(0.1, hits(4000, 2000, 1000))
    assert g.peak == pytest.approx(0.06)
    assert g.stopped == "stopped after 0.1 s: 60.0 kcalls/s would cost 6% of a core; budget 5%"
    rep = g.report()
    assert rep.stopped == g.stopped and rep.calls_per_s == pytest.approx(60000)
    assert rep.mean == pytest.approx(0.06)


def test_under_budget_never_stops_and_reports_the_mean():
    g = Governor(0.05, COSTS)
    for i in range(101):  # 10 s at 20,000 allocs/s = 2% of a core
        assert not g.observe(i * 0.1, hits(2000 * i))
    rep = g.report()
    assert rep.stopped is None and rep.mean == pytest.approx(0.02) and rep.peak == pytest.approx(0.02)
    assert rep.to_json()["estimated_mean"] == 0.02


def test_a_burst_must_last_the_window_to_stop_a_quiet_capture():
    g = Governor(0.05, COSTS, window_s=0.5)
    n = 0
    for i in range(50):  # quiet: 1,000 allocs/s = 0.1%
        # one 0.1 s tick at 10% (100,000/s), twice the budget; over the 0.5 s window it is ~2%
        n += 100 if i != 20 else 10000
        assert not g.observe(i * 0.1, hits(n)), i
    assert g.peak < 0.05


def test_no_budget_measures_but_never_stops():
    g = Governor(None, COSTS)
    g.observe(0.0, hits(0))
    assert not g.observe(1.0, hits(10**7))  # 10 s of CPU a second: way over any budget
    assert g.report().peak == pytest.approx(10.0) and g.report().budget is None


def test_repeated_timestamps_do_not_divide_by_zero():
    g = Governor(0.05, COSTS)
    for _ in range(5):
        assert not g.observe(1.0, hits(100))


@pytest.mark.parametrize("text,value", [("5%", 0.05), ("0.05", 0.05), (" 150% ", 1.5), ("none", None),
                                        ("0", None), ("0%", None), ("off", None)])
def test_parse_overhead(text, value):
    assert parse_overhead(text) == (pytest.approx(value) if value is not None else None)


@pytest.mark.parametrize("text", ["-5%", "abc", "nan", "inf", "6500%", ""])
def test_parse_overhead_rejects(text):
    with pytest.raises(ValueError):
        parse_overhead(text)


@given(st.text(max_size=20))
def test_parse_overhead_fuzz_only_raises_value_error(text):
    try:
        v = parse_overhead(text)
    except ValueError:
        return
    assert v is None or 0 < v <= 64


@given(st.lists(st.tuples(st.floats(0, 1e3), st.integers(0, 10**9), st.integers(0, 10**9)), max_size=30))
def test_governor_fuzz_never_crashes(points):
    g = Governor(0.05, COSTS)
    for t, a, f in sorted(points):
        g.observe(t, hits(a, f))
    rep = g.report()
    assert rep.peak >= 0 or rep.peak < 0  # a number, not an exception
    assert set(rep.to_json()) >= {"budget", "estimated_peak", "estimated_mean", "calls_per_s", "stopped"}


def _kernel(monkeypatch, ok: dict[str, bool]) -> None:
    """A kernel offering only some rungs (what an older node answers to the feature checks)."""
    support = tuple(attach.RungSupport(r, ok[r], "" if ok[r] else "Invalid argument (needs kernel >= x)")
                    for r in attach.RUNGS)
    monkeypatch.setattr(attach, "supported_rungs", lambda: support)


def test_an_older_kernel_gets_the_next_rung_and_doctor_says_what_degrades(monkeypatch):
    _kernel(monkeypatch, {"session": False, "multi": True, "perf": True})  # e.g. 6.8
    assert attach.choose_rung() == "multi"
    with pytest.raises(SourceUnavailable, match="cannot attach via session"):
        attach.choose_rung("session")
    c = doctor.check_attach()
    assert c.status == doctor.DEGRADED and "via multi" in c.detail and "6.13" in c.detail and c.fix
    _kernel(monkeypatch, {"session": False, "multi": False, "perf": True})  # e.g. RHEL 8's 4.18
    assert attach.choose_rung() == "perf"
    _kernel(monkeypatch, {"session": False, "multi": False, "perf": False})
    with pytest.raises(SourceUnavailable, match="session: .*multi: .*perf: "):
        attach.choose_rung()
    assert doctor.check_attach().status == doctor.MISSING
