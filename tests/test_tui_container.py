"""`top`'s container view and OOM ETA against a real memory cgroup with a limit (issue 4).

A scratch cgroup v1 directory shaped like a kubelet container (kubepods/burstable/pod<uid>/<64 hex>)
is made under this test's own memory cgroup with a 1 GiB limit, and a program leaking 2 MiB/s is moved
into it. The ETA on screen must be (limit - working set) / growth: with the working set read from the
cgroup at the same moment and the true rate of 2.03 MiB/s (65 pages per 256 KiB chunk), the shown
minutes must be within 20% (the growth is a floor slope over a few seconds of 0.5 s samples, see
test_tui.py, and the cell has whole-minute resolution).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import build_c
from test_tui import SIZE, make_app, screen_lines, table_rows, type_search, wait_for

from nativewatch.sources.cgroup import read_container_memory

MIB = 1024 * 1024
LIMIT = 1024 * MIB
RATE = 2 * MIB * 65 / 64


def _memory_mount() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if rfields and rfields[0] == "cgroup" and "memory" in rfields[-1].split(","):
            return fields[4]
    return None


@pytest.fixture
def container_cgroup():
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    mount = _memory_mount()
    if mount is None:
        pytest.skip("no cgroup v1 memory controller here")
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.split(":", 2)[1] == "memory")
    base = Path(mount + own.rstrip("/")) / f"nwtop-{os.getpid()}-{secrets.token_hex(3)}"
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    d = base / "kubepods" / "burstable" / f"pod{uid}" / cid
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(LIMIT))
    procs: list[subprocess.Popen] = []
    yield d, cid, procs
    for p in procs:
        p.kill()
        p.wait()
    for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
        os.rmdir(dirpath)


def test_container_view_shows_the_oom_eta_from_the_cgroup_limit(container_cgroup):
    d, cid, procs = container_cgroup
    leak = build_c("soak_leak.c", cflags=["-O1"])
    marker = f"m{uuid.uuid4().hex[:10]}"
    p = subprocess.Popen([str(leak), "2", "256", marker], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    (d / "cgroup.procs").write_text(str(p.pid))
    assert p.stdout is not None and p.stdout.readline().startswith("READY")

    async def run() -> None:
        app = make_app(window_s=60, min_window_s=4)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("c")
            await wait_for(pilot, lambda: any(r[0] == cid[:12] for r in table_rows(app)), what="container row")

            def eta_cell() -> str | None:
                row = next((r for r in table_rows(app) if r[0] == cid[:12]), None)
                if row is None:
                    return None
                m = re.search(r"\s(\d+m|\d+h\d\dm|\d+s|NOW)\s+1\s*$",
                              next(ln for ln in screen_lines(app) if ln.lstrip().startswith(cid[:12])))
                return m.group(1) if m else None

            await wait_for(pilot, lambda: eta_cell() is not None, timeout_s=30, what="an OOM ETA")
            shown = eta_cell()
            mem = read_container_memory(p.pid)
            assert mem.limit_bytes == LIMIT
            expected_s = (LIMIT - mem.working_set_bytes) / RATE
            assert shown is not None and shown.endswith("m") and "h" not in shown, shown
            assert 0.8 * expected_s / 60 <= int(shown[:-1]) <= 1.2 * expected_s / 60 + 1, (shown, expected_s)
            row = next(r for r in app.frame.containers if r.container == cid[:12])
            assert row.limit_bytes == LIMIT and row.procs == 1 and row.pid is None

            # Enter on a container lists its processes; the process row shows the container's ETA.
            table = app.main.table
            table.cursor = [r.key for r in table.rows].index(row.key)
            await pilot.press("enter")
            await wait_for(pilot, lambda: not app.view.containers and table_rows(app)
                           and table_rows(app)[0][0] == str(p.pid), what="the container's processes")
            assert app.view.search == cid[:12]
            proc_row = table_rows(app)[0]
            assert cid[:12] == proc_row[-1]
            await type_search(pilot, marker)
            await wait_for(pilot, lambda: [r[0] for r in table_rows(app)] == [str(p.pid)], what="search")
            await pilot.press("q")

    asyncio.run(run())
