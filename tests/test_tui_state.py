"""The pure parts of `top`: history, growth rows, sort/filter/search, cells, bars and layouts (issue 4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.growth import GrowthPolicy
from nativewatch.model import CATEGORIES, Breakdown, ContainerInfo
from nativewatch.tracker import ContainerMemoryFacts, SeriesHistory, Tracker
from nativewatch.tui.render import compact_rate, eta_text, layout_for, render_row, sparkline, stacked_bar
from nativewatch.tui.state import ViewState, build_container_rows, build_process_rows, select_rows

MIB = 1024 * 1024
T0 = 1_750_000_000.0


def bd(pid: int, comm: str, t: float, runtime: str = "native", container: ContainerInfo | None = None,
       **cats: int) -> Breakdown:
    c = dict.fromkeys(CATEGORIES, 0)
    c.update(cats)
    return Breakdown(pid=pid, comm=comm, runtime=runtime, rss_bytes=sum(c.values()), categories=c, threads=1,
                     sources=["smaps"], container=container, cmdline=[f"/bin/{comm}", "--flag"], timestamp=t)


def record(tracker: Tracker, bds: list[Breakdown]) -> None:
    for b in bds:
        tracker.observe_breakdown(b)


def frames(n: int = 40, step: float = 2.0) -> list[list[Breakdown]]:
    ctr = ContainerInfo(id="c" * 64, runtime="containerd", pod_uid="pod-1", cgroup="/kubepods/x")
    out = []
    for i in range(n):
        t = T0 + i * step
        out.append([
            bd(10, "leaker", t, native=10 * MIB + int(64 * 1024 * i * step), file=MIB),
            bd(20, "steady", t, native=50 * MIB, file=2 * MIB),
            bd(30, "java", t, runtime="jvm", container=ctr, heap=200 * MIB + (i % 5) * 20 * MIB, file=MIB),
            bd(31, "sidecar", t, container=ctr, native=5 * MIB),
        ])
    return out


def test_rows_carry_growth_leak_and_the_fastest_category():
    h = Tracker(GrowthPolicy(min_window_s=30))
    for f in frames():
        record(h, f)
    rows = {r.pid: r for r in build_process_rows(f, h)}
    leak = rows[10]
    assert leak.top_category == "native" and leak.leak
    assert leak.growth["native"].bytes_per_second == pytest.approx(64 * 1024, rel=1e-6)
    assert leak.leak_categories == ("native",)
    assert not rows[20].leak and rows[20].top_category is None
    assert not rows[30].leak  # a sawtooth heap is not a leak
    assert rows[30].container == "c" * 12 and rows[20].container == "host"
    assert len(leak.spark) == 40 and leak.spark[-1] == f[0].categories["native"]


def test_container_rows_sum_members_and_give_an_oom_eta_from_the_limit():
    h = Tracker(GrowthPolicy(min_window_s=30))
    ctr = ContainerInfo(id="d" * 64, runtime="containerd", pod_uid="pod-2", cgroup="/kubepods/y")
    limit = 512 * MIB
    for i in range(30):
        t = T0 + 2 * i
        members = [bd(40, "app", t, container=ctr, native=100 * MIB + MIB * i), bd(41, "x", t, container=ctr,
                                                                                     native=MIB)]
        summaries = h.containers(members, t, lambda info: ContainerMemoryFacts(None, 130 * MIB, limit))
    rows = build_container_rows(summaries, h)
    (row,) = rows
    procs = {r.pid: r for r in build_process_rows(members, h, {s.id: s for s in summaries})}
    assert procs[40].oom_eta_s == row.oom_eta_s and procs[40].limit_bytes == limit
    assert row.procs == 2 and row.rss_bytes == 101 * MIB + 29 * MIB
    # growing 1 MiB per 2 s from a 130 MiB working set towards 512 MiB
    assert row.oom_eta_s == pytest.approx((limit - 130 * MIB) / (MIB / 2), rel=1e-6)
    assert eta_text(row.oom_eta_s) == "12m"


def test_select_rows_sorts_filters_and_searches():
    h = Tracker(GrowthPolicy(min_window_s=30))
    for f in frames():
        record(h, f)
    rows = build_process_rows(f, h)
    assert [r.pid for r in select_rows(rows, ViewState())] == [30, 20, 10, 31]  # RSS, largest first
    assert [r.pid for r in select_rows(rows, ViewState(sort="pid"))] == [10, 20, 30, 31]
    assert [r.pid for r in select_rows(rows, ViewState(sort="pid", reverse=True))] == [31, 30, 20, 10]
    assert [r.pid for r in select_rows(rows, ViewState(sort="name"))] == [30, 10, 31, 20]
    assert select_rows(rows, ViewState(sort="growth"))[0].pid == 10
    assert [r.pid for r in select_rows(rows, ViewState(sort="heap"))][0] == 30
    assert [r.pid for r in select_rows(rows, ViewState(filter="leaking"))] == [10]
    assert [r.pid for r in select_rows(rows, ViewState(filter="jvm"))] == [30]
    assert [r.pid for r in select_rows(rows, ViewState(search="STEADY"))] == [20]
    assert [r.pid for r in select_rows(rows, ViewState(search="c" * 12))] == [30, 31]  # by container id
    assert [r.pid for r in select_rows(rows, ViewState(search="re:^(leak|side)"))] == [10, 31]
    assert select_rows(rows, ViewState(search="re:[unclosed")) == []  # a bad regex is a literal


def test_history_is_bounded_and_forgets_vanished_keys():
    h = SeriesHistory(max_points=10, max_age_s=100)
    for i in range(50):
        h.add("pid:1", T0 + i, i, {"native": i})
    assert len(h.times("pid:1")) == 10 and list(h.values("pid:1", "native")) == list(range(40, 50))
    h.add("pid:1", T0 + 49, 0, {})  # the same scan twice is ignored
    assert len(h.times("pid:1")) == 10
    h.add("pid:2", T0, 1, {})
    h.add("pid:2", T0 + 500, 1, {})
    assert list(h.times("pid:2")) == [T0 + 500]  # older than max_age_s
    h.forget(["pid:1"])
    assert "pid:1" not in h and len(h) == 1
    spaced = SeriesHistory(min_spacing_s=10)
    assert [spaced.add("k", T0 + t, 1, {}) for t in (0, 2, 9.9, 10, 25)] == [True, False, False, True, True]


def test_cells():
    assert compact_rate(0) == "0" and compact_rate(-5) == "0"
    assert compact_rate(2 * MIB) == "+2.0M/s"
    assert compact_rate(1000) == "+3.4M/h"
    assert [eta_text(x) for x in (None, 0, 59, 3599, 7300, 3 * 86400)] == ["-", "NOW", "59s", "59m", "2h01m", "3d"]
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5], 5) == "  ▁▁▁"
    assert sparkline([1000, 1001, 1002], 3) == "▁▁▁"  # under 1% of the level: noise, drawn flat
    assert sparkline(range(100), 4) == "▁▃▆█"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(CATEGORIES), st.integers(0, 1 << 40)), st.integers(0, 200))
def test_stacked_bar_fills_exactly_its_width(cats, width):
    total = sum(cats.values())
    segs = stacked_bar(cats, total, width)
    assert sum(len(s.text) for s in segs) == width
    if total:
        # every category's share is within one cell of its exact proportion
        for c in CATEGORIES:
            cells = sum(len(s.text) for s in segs if s.style is not None and s.text.startswith("█")
                        and s.style == stacked_bar({c: 1}, 1, 1)[0].style)
            assert abs(cells - width * cats.get(c, 0) / total) <= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(20, 400), st.booleans(), st.text(max_size=40))
def test_rows_are_exactly_the_terminal_width(width, containers, name):
    h = Tracker()
    b = bd(123456, name or "x", T0, native=3 * MIB, file=MIB)
    record(h, [b])
    row = build_process_rows([b], h)[0]
    lay = layout_for(width, containers)
    assert render_row(row, lay).cell_length == width
