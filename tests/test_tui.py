"""The live `top` UI driven by Textual's pilot against real processes (issue 4).

What is on screen is read back from the compositor (the exact cells a terminal would get) and checked
against `take_snapshot` of the same process taken at the same moment:
- `tui_hold` mallocs a fixed amount, starts idle threads, prints READY and sleeps in pause(): after
  READY nothing in it allocates or touches new pages, so its smaps figures are constant and the table
  must show exactly `short()` of the snapshot's RSS, and the drill-down exactly its bytes per category;
- `soak_leak` grows at 2 MiB/s (2.03 MiB/s resident: 65 pages per 256 KiB chunk); the growth column is
  the floor slope of samples 0.5 s apart over a few seconds, where one chunk of quantisation per sample
  and scheduling jitter move the slope by <10%, so it must read between 1.6 and 2.5 MiB/s.
The scans cover every process on the machine (as `top` does); a unique marker in the test programs'
command lines lets the search isolate them.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, build_c

from nativewatch.growth import GrowthPolicy
from nativewatch.model import CATEGORIES
from nativewatch.snapshot import take_snapshot
from nativewatch.table import short
from nativewatch.tui.app import DrillScreen, MainScreen, TopApp
from nativewatch.tui.collect import Collector
from nativewatch.tui.state import ViewState
from nativewatch.units import human_bytes

MIB = 1024 * 1024
SIZE = (170, 45)


def _start(cmd: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        raise AssertionError(f"{cmd[0]} did not start: {line!r}")
    return p


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def start(cmd: list[str]) -> subprocess.Popen:
        p = _start(cmd)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def screen_lines(app: TopApp) -> list[str]:
    # The compositor's strips are what the driver writes to the terminal (private API, test-only).
    return [s.text for s in app.screen._compositor.render_strips()]


async def wait_for(pilot, cond: Callable[[], object], timeout_s: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or cond}:\n" + "\n".join(screen_lines(pilot.app)))
        await pilot.pause(0.1)


async def type_search(pilot, text: str) -> None:
    await pilot.press("slash")
    for ch in text:
        await pilot.press(ch)
    await pilot.press("enter")
    await pilot.pause(0.1)


def table_rows(app: TopApp) -> list[list[str]]:
    """Table lines split into cells (first cell PID or CONTAINER), up to the first blank line."""
    lines = screen_lines(app)
    head = next(i for i, line in enumerate(lines) if re.match(r"\s*(PID|CONTAINER)\b", line))
    out = []
    for line in lines[head + 1:]:
        if not line.strip() or not re.match(r"\s*\S+\s", line):
            break
        out.append(line.split())
    return out


def parse_short(cell: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([BKMGT])", cell)
    assert m, cell
    return float(m.group(1)) * {"B": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024**4}[m.group(2)]


def make_app(**policy) -> TopApp:
    pol = GrowthPolicy(**policy) if policy else GrowthPolicy()
    # compressed time: a point per refresh, not one per 10 s as at the real cadence
    return TopApp(Collector(policy=pol, min_spacing_s=0.0), refresh_s=0.5, view=ViewState(), profile_s=4.0)


def test_table_and_drill_down_show_the_snapshot_numbers(procs):
    exe = build_c("tui_hold.c", cflags=["-O1", "-pthread"])
    marker = f"m{uuid.uuid4().hex[:10]}"
    p = procs([str(exe), "48", "3", marker])

    async def run() -> None:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.frame and p.pid in app.frame.breakdowns, what="first scan")
            await type_search(pilot, marker)
            await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="search")
            cells = table_rows(app)[0]
            snap = take_snapshot(p.pid, with_sites=False)
            assert cells[1] == snap.comm[:16] and cells[1].startswith("tui_hold") and cells[2] == "native"
            assert cells[3] == short(snap.rss_bytes)  # holds still: identical to the unit's rounding
            assert parse_short(cells[3]) >= 48 * MIB
            assert cells[-2] == "4" and cells[-1] == "host"  # threads (3 + main), not in a container

            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DrillScreen)
                           and any("CATEGORY" in ln for ln in screen_lines(app)), what="drill-down")
            await wait_for(pilot, lambda: any(f"({snap.rss_bytes:,} B)" in ln for ln in screen_lines(app)),
                           timeout_s=10, what="drill RSS equal to the snapshot")
            shown: dict[str, int] = {}
            for ln in screen_lines(app):
                cells = [c.strip() for c in ln.split("│")]
                if len(cells) > 2 and cells[0] in CATEGORIES:
                    shown[cells[0]] = int(cells[1].replace(",", ""))
            snap2 = take_snapshot(p.pid, with_sites=False)
            assert snap2.categories == snap.categories  # it held still while the UI read it
            assert shown == {c: snap.categories[c] for c in CATEGORIES}
            assert shown["native"] >= 48 * MIB
            assert sum(shown.values()) == snap.rss_bytes

            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen), what="back to the table")
            await pilot.press("q")
            await pilot.pause(0.2)
            assert not app.is_running

    asyncio.run(run())


def test_sort_filter_and_growth_column(procs):
    hold = build_c("tui_hold.c", cflags=["-O1", "-pthread"])
    leak = build_c("soak_leak.c", cflags=["-O1"])
    marker = f"m{uuid.uuid4().hex[:10]}"
    small = procs([str(hold), "16", "1", marker])
    big = procs([str(hold), "64", "1", marker])
    leaky = procs([str(leak), "2", "256", marker])
    ours = {small.pid, big.pid, leaky.pid}

    async def run() -> None:
        # Leak verdicts after 4 s of history instead of the agent's minutes, to keep the test short.
        app = make_app(window_s=60, min_window_s=4)
        async with app.run_test(size=SIZE) as pilot:
            await type_search(pilot, marker)
            await wait_for(pilot, lambda: {int(r[0]) for r in table_rows(app)} == ours, what="our three")
            order = [int(r[0]) for r in table_rows(app)]
            assert order.index(big.pid) < order.index(small.pid)  # default: RSS, largest first

            for _ in range(2):  # rss -> growth -> pid
                await pilot.press("s")
            assert app.view.sort == "pid"
            await pilot.pause(0.1)
            assert [int(r[0]) for r in table_rows(app)] == sorted(ours)
            await pilot.press("r")
            await pilot.pause(0.1)
            assert [int(r[0]) for r in table_rows(app)] == sorted(ours, reverse=True)
            assert any("PID▲" in ln for ln in screen_lines(app))

            await pilot.press("S")  # back to growth
            assert app.view.sort == "growth"
            # The leak becomes a leak once 4 s of rising floor are in its history.
            await wait_for(pilot, lambda: any(r[0] == str(leaky.pid) and "LEAK" in r for r in table_rows(app)),
                           timeout_s=30, what="LEAK verdict")
            rows = table_rows(app)
            assert int(rows[0][0]) == leaky.pid  # fastest growth first
            row = rows[0]
            i = len(row) - 1 - row[::-1].index("native")  # the GROWTH cell, not the RT one
            m = re.fullmatch(r"\+([0-9.]+[BKMGT])/s", row[i + 1])
            assert m, row
            assert 1.6 * MIB <= parse_short(m.group(1)) <= 2.5 * MIB
            # The TREND sparkline of a steady leak only rises and ends at the top block.
            trend = row[i + 2]
            blocks = "▁▂▃▄▅▆▇█"
            assert len(trend) >= 4 and set(trend) <= set(blocks), row
            assert [blocks.index(ch) for ch in trend] == sorted(blocks.index(ch) for ch in trend)
            assert trend[-1] == "█" and trend[0] != "█"
            for r in rows[1:]:
                assert "LEAK" not in r

            await pilot.press("f")  # all -> growing
            assert app.view.filter == "growing"
            await pilot.pause(0.1)
            assert [int(r[0]) for r in table_rows(app)] == [leaky.pid]
            await pilot.press("f")  # -> leaking
            await pilot.pause(0.1)
            assert [int(r[0]) for r in table_rows(app)] == [leaky.pid]
            await pilot.press("f")  # -> jvm: none of ours
            await pilot.pause(0.1)
            assert table_rows(app) == []
            await pilot.press("f", "f", "f", "f", "f")  # go, node, python, native, all
            assert app.view.filter == "all"
            await pilot.press("escape")  # clears the search: every process again
            await wait_for(pilot, lambda: len(table_rows(app)) > 3, what="unfiltered")
            await pilot.press("q")

    asyncio.run(run())


def test_container_view_sums_the_processes(procs):
    exe = build_c("tui_hold.c", cflags=["-O1", "-pthread"])
    procs([str(exe), "8", "0", "container-view"])

    async def run() -> None:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.frames >= 1, what="first scan")
            await pilot.press("c")
            assert app.view.containers
            await wait_for(pilot, lambda: table_rows(app) and table_rows(app)[0][0] != "PID", what="containers")
            frame = app.frame
            assert frame is not None
            rows = {r[0]: r for r in table_rows(app)}
            expected: dict[str, list[int]] = {}
            for b in frame.breakdowns.values():
                expected.setdefault(b.container.id[:12] if b.container else "host", []).append(b.rss_bytes)
            assert set(rows) == set(expected)
            for cid, cells in rows.items():
                assert cells[-1] == str(len(expected[cid]))  # PROCS
                rss_cell = next(c for c in cells[2:] if re.fullmatch(r"[0-9.]+[BKMGT]", c))
                assert rss_cell == short(sum(expected[cid]))
            await pilot.press("c")
            assert not app.view.containers
            # Search text is shown literally: brackets are not markup, a bad regex is not a crash.
            await type_search(pilot, "re:[bold]x(")
            await wait_for(pilot, lambda: any("search 're:[bold]x('" in ln for ln in screen_lines(app)),
                           what="literal search text")
            assert table_rows(app) == []
            await pilot.press("q")

    asyncio.run(run())


@pytest.mark.bpf
def test_drill_down_profile_shows_the_leaking_site(procs, bpf_available):
    leak = build_c("soak_leak.c", cflags=["-O0", "-g", "-fno-omit-frame-pointer"])
    marker = f"m{uuid.uuid4().hex[:10]}"
    p = procs([str(leak), "4", "256", marker])

    async def run() -> None:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.frame and p.pid in app.frame.breakdowns, what="first scan")
            await type_search(pilot, marker)
            await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="search")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DrillScreen), what="drill-down")
            await pilot.press("p")
            await wait_for(pilot, lambda: any("profile done" in ln or "profile failed" in ln
                                              for ln in screen_lines(app)), timeout_s=90, what="profile end")
            text = "\n".join(screen_lines(app))
            assert "profile done" in text, text
            sites = app.screen.profile_sites  # type: ignore[attr-defined]
            assert sites, text
            top = sites[0]
            # 4 MiB/s for the ~4 s profile, sampled: at least a few MiB outstanding from main.
            assert top["outstanding_bytes"] >= 4 * MIB
            assert any("main" in f for f in top["frames"]), top
            assert "top native allocation sites" in text
            await pilot.press("q")

    asyncio.run(run())


@pytest.mark.jvm
def test_drill_down_of_a_jvm_shows_its_nmt_figures(procs, tmp_path):
    pytest.importorskip("nativewatch.jvm.attribute", reason="JVM support (nativewatch.jvm) not landed")
    javac = Path("/usr/bin/javac")
    if not javac.exists():
        pytest.skip("Debian JDK 17 not installed (scripts/setup.sh installs it)")
    subprocess.run([str(javac), "-d", str(tmp_path), str(ROOT / "tests" / "java" / "SoakDirectLeak.java")],
                   check=True)
    marker = f"m{uuid.uuid4().hex[:10]}"
    # 0.001 MiB/s: one 256 KiB buffer every ~4 minutes, i.e. a JVM that holds still during the test.
    p = procs(["/usr/bin/java", "-XX:NativeMemoryTracking=summary", "-Xms64m", "-Xmx64m", "-XX:+UseSerialGC",
               "-cp", str(tmp_path), "SoakDirectLeak", "0.001", marker])

    async def run() -> None:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await type_search(pilot, marker)
            await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="search")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("Native Memory Tracking" in ln for ln in screen_lines(app)),
                           timeout_s=30, what="NMT table")
            drill = app.screen
            assert isinstance(drill, DrillScreen) and drill.last is not None
            text = screen_lines(app)
            heap_line = next(ln for ln in text if ln.strip().startswith("Java Heap"))
            # -Xms = -Xmx = 64m: NMT's committed Java heap is exactly 64 MiB.
            assert heap_line.split("│")[1].strip() == "64.0 MiB", heap_line
            nmt = drill.last.runtime_details.get("nmt")
            assert nmt is not None
            shown = {ln.split("│")[0].strip(): ln.split("│")[1].strip() for ln in text if ln.count("│") == 3}
            for name, v in nmt["categories"].items():
                if v["committed_bytes"] or v["reserved_bytes"]:
                    assert shown.get(name) == human_bytes(v["committed_bytes"]), (name, shown)
            assert any(s.startswith("nmt") for s in drill.last.sources)
            cats = {}
            for ln in text:
                cells = [c.strip() for c in ln.split("│")]
                if len(cells) > 2 and cells[0] in CATEGORIES:
                    cats[cells[0]] = int(cells[1].replace(",", ""))
            assert cats == {c: drill.last.categories[c] for c in CATEGORIES}
            assert sum(cats.values()) == drill.last.rss_bytes
            assert cats["heap"] > 0 and cats["metaspace"] > 0 and cats["code"] > 0
            await pilot.press("q")

    asyncio.run(run())


def test_drill_down_says_when_the_process_exits(procs):
    exe = build_c("tui_hold.c", cflags=["-O1", "-pthread"])
    p = procs([str(exe), "4", "0", "exits"])

    async def run() -> None:
        app = TopApp(Collector(pids=[p.pid]), refresh_s=0.3)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="row")
            await pilot.press("enter")
            await wait_for(pilot, lambda: any("CATEGORY" in ln for ln in screen_lines(app)), what="drill-down")
            rss = app.screen.last.rss_bytes  # type: ignore[attr-defined]
            p.kill()
            p.wait()
            await wait_for(pilot, lambda: any(f"pid {p.pid}: process exited" in ln for ln in screen_lines(app)),
                           what="exit notice")
            assert any(f"RSS {rss:,} B" in ln for ln in screen_lines(app))
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, MainScreen) and table_rows(app) == [],
                           what="the exited process leaves the table")
            await pilot.press("q")

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["node", "python"])
def test_drill_down_of_node_and_python_shows_their_heap(kind):
    from conftest import PROGRAMS
    from interpreters import node_interpreters, python_interpreters
    from lineproc import LineProc

    interp = next((i for i in (node_interpreters() if kind == "node" else python_interpreters())
                   if i.name in ("node20", "debian-3.11")), None)
    if interp is None:
        pytest.fail(f"{kind}: the machine's interpreter is missing")
    marker = f"m{uuid.uuid4().hex[:10]}"
    prog = PROGRAMS / ("node_heap.js" if kind == "node" else "py_heap.py")
    title = "V8 heap pages" if kind == "node" else "pymalloc"

    with LineProc([*interp.argv, str(prog), marker], env=interp.env) as p:
        p.ask("objects 64")

        async def run() -> None:
            app = make_app()
            async with app.run_test(size=SIZE) as pilot:
                await type_search(pilot, marker)
                await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="search")
                assert kind in table_rows(app)[0], table_rows(app)
                await pilot.press("enter")
                await wait_for(pilot, lambda: any(title in ln for ln in screen_lines(app)), what=title)
                drill = app.screen
                assert isinstance(drill, DrillScreen) and drill.last is not None
                assert drill.last.runtime == kind
                cats = {}
                for ln in screen_lines(app):
                    cells = [c.strip() for c in ln.split("│")]
                    # the V8 table has a "code" row too, in human units: the category table's are exact bytes
                    if len(cells) > 2 and cells[0] in CATEGORIES and re.fullmatch(r"[\d,]+", cells[1]):
                        cats[cells[0]] = int(cells[1].replace(",", ""))
                assert cats == {c: drill.last.categories[c] for c in CATEGORIES}
                assert sum(cats.values()) == drill.last.rss_bytes and cats["heap"] >= 60 * MIB, cats
                await pilot.press("q")

        asyncio.run(run())
