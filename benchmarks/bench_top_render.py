"""How much of a frame does `nativewatch top` spend on 1,000 processes? (issue 4)

Measured side by side in one run, on the same 1,000 breakdowns (synthetic figures, real code paths):
  rows     - worker thread: history + floor-slope growth for every process (build_process_rows)
  select   - UI thread: filter + search + sort of the 1,000 rows (select_rows)
  visible  - UI thread: render only the rows in view (what RowTable does), 45 rows at 160 columns
  all      - UI thread: render all 1,000 rows (what a table without a line API would do)
  textual  - the real app, headless: apply a 1,000-row frame and let Textual composite the screen
  key      - the real app, headless: one cursor key press until the screen is updated, next to an
             unbound key (the pilot's own round trip, which waits for the app to go idle)
and, with --real N, the scan itself: `scan_all` over N real sleeping processes this script starts.

The frame budget is 33 ms (30 frames/s): the UI-thread work per refresh and per key must fit in it so
scrolling and typing stay smooth while the scan runs in its thread.

    .venv/bin/python benchmarks/bench_top_render.py [--rows 1000] [--repeat 20] [--real 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from nativewatch.growth import GrowthPolicy
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.scan import scan_all
from nativewatch.tracker import Tracker
from nativewatch.tui.app import TopApp
from nativewatch.tui.collect import Collector
from nativewatch.tui.render import layout_for, render_row
from nativewatch.tui.state import ViewState, build_process_rows, select_rows

BUDGET_S = 1 / 30
WIDTH, HEIGHT = 160, 50
VISIBLE = HEIGHT - 5  # status, legend, header, footer and a spare line
MIB = 1024 * 1024


def synthetic(n: int, t: float, rng: random.Random, leaking: set[int]) -> list[Breakdown]:
    out = []
    for pid in range(1000, 1000 + n):
        cats = dict.fromkeys(CATEGORIES, 0)
        r = random.Random(pid)  # stable composition per pid
        cats["native"] = r.randint(1, 400) * MIB + (int(2 * MIB * t) if pid in leaking else 0)
        cats["file"] = r.randint(1, 50) * MIB
        cats["thread"] = r.randint(1, 64) * 8192
        if pid % 7 == 0:
            cats["heap"] = r.randint(64, 2048) * MIB + rng.randint(0, 64) * MIB  # sawtooth-ish noise
            cats["metaspace"], cats["code"], cats["gc"] = 80 * MIB, 40 * MIB, 30 * MIB
        out.append(Breakdown(pid=pid, comm=f"proc{pid}", runtime="jvm" if pid % 7 == 0 else "native",
                             rss_bytes=sum(cats.values()), categories=cats, threads=r.randint(1, 200),
                             sources=["smaps"], cmdline=[f"/usr/bin/proc{pid}", "--serve"], timestamp=t))
    return out


def timed(fn, repeat: int) -> tuple[float, object]:
    samples = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


def bench_pure(n: int, repeat: int) -> dict[str, float]:
    rng = random.Random(1)
    leaking = set(range(1000, 1000 + n, 50))
    policy = GrowthPolicy(min_window_s=30)
    history = Tracker(policy)
    bds: list[Breakdown] = []
    for i in range(60):  # two minutes of history at a 2 s refresh
        bds = synthetic(n, 1_750_000_000.0 + 2 * i, rng, leaking)
        for b in bds:
            history.observe_breakdown(b)
    res: dict[str, float] = {}
    # growth is cached per sample: time what a refresh with a new sample per process costs
    res["rows"], rows = timed(lambda: (history.drop_cached(), build_process_rows(bds, history))[1],
                              max(3, repeat // 4))
    tracemalloc.start()
    full = Tracker(policy)
    for i in range(full.history.max_points):  # a full history: 376 points (an hour at one per 10 s)
        for b in bds:
            full.observe_breakdown(b, b.timestamp + 10 * i)
    res["history_mb"] = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    res["rows_full"], _ = timed(lambda: (full.drop_cached(), build_process_rows(bds, full))[1], 3)
    view = ViewState(sort="growth")
    res["select"], visible_rows = timed(lambda: select_rows(rows, view), repeat)  # type: ignore[arg-type]
    layout = layout_for(WIDTH, False)
    res["visible"], _ = timed(lambda: [render_row(r, layout) for r in visible_rows[:VISIBLE]], repeat)  # type: ignore[index]
    res["all"], _ = timed(lambda: [render_row(r, layout) for r in visible_rows], max(3, repeat // 4))  # type: ignore[union-attr]
    leaks = sum(1 for r in rows if r.leak)  # type: ignore[union-attr]
    print(f"  ({len(rows)} rows, {leaks} leak verdicts for {len(leaking)} leaking processes)")  # type: ignore[arg-type]
    return res


def bench_textual(n: int, repeat: int) -> dict[str, float]:
    rng = random.Random(2)
    frames = [synthetic(n, 1_750_000_000.0 + 2 * i, rng, set()) for i in range(repeat + 1)]
    it = iter(frames)

    def scan(_proc_root: str, **_kw: object) -> tuple[list[Breakdown], dict[str, int]]:
        return next(it, frames[-1]), {}

    app = TopApp(Collector(scan=scan), refresh_s=3600, view=ViewState())
    out: dict[str, float] = {}

    async def run() -> None:
        async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
            while app.frames < 1:
                await pilot.pause(0.05)
            comp = app.screen._compositor
            apply_s, key_s = [], []
            for _ in range(repeat):
                frame = app.collector.collect()  # worker-thread work, not timed here
                t0 = time.perf_counter()
                app._apply(frame, "")
                comp = app.screen._compositor
                app.screen._refresh_layout(app.screen.size)
                comp.render_strips()
                apply_s.append(time.perf_counter() - t0)
            table = app.main.table
            for _ in range(repeat):
                before = table.cursor
                t0 = time.perf_counter()
                await pilot.press("down")
                comp.render_strips()
                key_s.append(time.perf_counter() - t0)
                assert table.cursor == before + 1
            noop_s = []
            for _ in range(repeat):  # a key nothing is bound to: the pilot's own round trip
                t0 = time.perf_counter()
                await pilot.press("x")
                comp.render_strips()
                noop_s.append(time.perf_counter() - t0)
            work_s = []
            for _ in range(repeat):  # the work itself: move the cursor and draw every line in view
                t0 = time.perf_counter()
                table.action_move(1)
                for y in range(table.size.height):
                    table.render_line(y)
                work_s.append(time.perf_counter() - t0)
            out["key_work"] = statistics.median(work_s)
            out["textual"] = statistics.median(apply_s)
            out["key"] = statistics.median(key_s)
            out["key_noop"] = statistics.median(noop_s)
            out["rendered_rows"] = float(table.rendered_rows)

    asyncio.run(run())
    return out


def bench_real(n: int) -> dict[str, float]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler")
    tmp = Path(tempfile.mkdtemp(prefix="nw-bench-"))
    src = tmp / "idle.c"
    src.write_text("#include <unistd.h>\nint main(void){for(;;)pause();}\n")
    exe = tmp / "idle"
    subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True)
    procs = [subprocess.Popen([str(exe)]) for _ in range(n)]
    try:
        time.sleep(1.0)
        pids = [p.pid for p in procs]
        t0 = time.perf_counter()
        bds, _errors = scan_all(pids=pids)
        dt = time.perf_counter() - t0
        assert len(bds) == n, (len(bds), n)
        t0 = time.perf_counter()
        allbds, _ = scan_all()
        dt_all = time.perf_counter() - t0
        # UI work while a scan holds the interpreter in another thread (the GIL is shared): a cursor
        # move plus drawing 45 rows, repeated for as long as one scan of the N processes runs.
        rows = build_process_rows(bds, Tracker(GrowthPolicy()))
        layout = layout_for(WIDTH, False)
        view = ViewState()

        def ui_work() -> None:
            vis = select_rows(rows, view)
            for r in vis[:VISIBLE]:
                render_row(r, layout)

        idle = [timed(ui_work, 1)[0] for _ in range(50)]
        done = threading.Event()
        th = threading.Thread(target=lambda: (scan_all(pids=pids), done.set()))
        th.start()
        busy = []
        while not done.is_set():
            busy.append(timed(ui_work, 1)[0])
        th.join()
        return {"scan_n": dt, "scan_machine": dt_all, "machine_procs": float(len(allbds)),
                "ui_idle_p50": statistics.median(idle), "ui_busy_p50": statistics.median(busy),
                "ui_busy_max": max(busy), "ui_busy_n": float(len(busy)),
                "ui_busy_p99": sorted(busy)[int(0.99 * (len(busy) - 1))]}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--real", type=int, default=0, help="also scan this many real idle processes")
    args = ap.parse_args()
    print(f"nativewatch top render benchmark: {args.rows} processes, {WIDTH}x{HEIGHT} terminal, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, frame budget {BUDGET_S * 1000:.1f} ms")
    res = bench_pure(args.rows, args.repeat)
    res.update(bench_textual(args.rows, max(5, args.repeat // 2)))

    def line(name: str, what: str, thread: str) -> None:
        v = res[name]
        print(f"  {name:<8} {v * 1000:9.2f} ms  {v / BUDGET_S:6.2f} x budget  [{thread}] {what}")

    line("rows", "history + growth fits for every process (60 samples each)", "worker")
    line("rows_full", "the same with a full history (376 points each: an hour)", "worker")
    print(f"  history  {res['history_mb']:9.1f} MB  memory of a full history for {args.rows} processes")
    line("select", "filter + search + sort", "UI")
    line("visible", f"render the {VISIBLE} rows in view", "UI")
    line("all", f"render all {args.rows} rows (no line API)", "UI")
    line("textual", "apply a frame + composite the whole screen", "UI")
    line("key", "cursor key until the screen is updated (pilot round trip)", "UI")
    line("key_noop", "an unbound key, same round trip: the pilot's own overhead", "UI")
    res["key_net"] = max(0.0, res["key"] - res["key_noop"])
    line("key_net", "cursor key minus the pilot overhead (includes waiting for Textual's next 60 Hz frame)", "UI")
    line("key_work", "cursor move + drawing every line in view, called directly", "UI")
    print(f"  rows rendered by the table for the last frame and {args.repeat // 2} key presses: "
          f"{res['rendered_rows']:.0f}")
    print(f"  ratio all/visible: {res['all'] / res['visible']:.1f}x;  UI frame (select+visible) "
          f"= {(res['select'] + res['visible']) * 1000:.2f} ms = "
          f"{(res['select'] + res['visible']) / BUDGET_S:.2f} x budget")
    if args.real:
        r = bench_real(args.real)
        print(f"  scan    {r['scan_n'] * 1000:9.1f} ms  scan_all over {args.real} real idle processes "
              f"({r['scan_n'] / args.real * 1000:.2f} ms each) [worker]")
        print(f"  scan    {r['scan_machine'] * 1000:9.1f} ms  scan_all over the whole machine "
              f"({r['machine_procs']:.0f} processes) [worker]")
        print(f"  UI frame of {args.real} real rows (select + {VISIBLE} rows): {r['ui_idle_p50'] * 1000:.2f} ms idle, "
              f"{r['ui_busy_p50'] * 1000:.2f} ms median / {r['ui_busy_p99'] * 1000:.2f} ms p99 / "
              f"{r['ui_busy_max'] * 1000:.2f} ms worst while a scan runs "
              f"in another thread ({r['ui_busy_n']:.0f} frames); worst = {r['ui_busy_max'] / BUDGET_S:.2f} x budget")


if __name__ == "__main__":
    main()
