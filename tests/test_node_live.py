"""Node.js on real interpreters (issue 15): V8's heap found from outside, Buffers left native.

Node 20 (the machine's nodesource build: one 100 MB executable), Debian's Node 18 (a small
executable linking libnode.so.108) and the official Node 22 and 24 builds (the two later V8 page
layouts) each hold ~190 MiB of JavaScript objects and a 64 MiB Buffer;
the program reports V8's own figures (process.memoryUsage, v8.getHeapStatistics) just before and
after `nativewatch snapshot`, and the breakdown is checked against them.

Tolerance for heap vs heapTotal, 15%: heapTotal is what V8 has *committed* for every space; nativewatch
counts *resident* pages. They differ by the committed but untouched part (mostly the young
generation's semispaces, up to 3 x 16 MiB), by code space (its own category here, inside heapTotal)
and by what the heap does between the two reads. With ~190 MiB of objects that stays well inside
15% (measured: 0.5-1.2% for Node 18, 20 and 22). Node 24's V8 13 commits its young generation
(semispaces of up to 64 MiB) long before it touches it, so there heapTotal overstates what is resident
by up to that much (measured -9% to -18%): its heap must lie between heapTotal less the young
generation's unused part and heapTotal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import time
import uuid
from pathlib import Path

import pytest
from conftest import PROGRAMS
from interpreters import Interp, node_interpreters
from lineproc import LineProc

NODES = node_interpreters()
NODE_IDS = [n.name for n in NODES]
MIB = 1 << 20


# the V8 page layout each build must be read with (v8heap's docstring)
LAYOUT = {"node18-debian": "size-first", "node20": "size-first", "node22": "metadata-on-page",
          "node24": "metadata-off-page"}


def _require_all() -> None:
    names = {n.name for n in NODES}
    if names != set(LAYOUT):
        pytest.fail(f"need Node 18 (Debian), 20, 22 and 24 (scripts/setup-test-node.sh); found {sorted(names)}")


def _snapshot(nativewatch_cli, pid: int) -> dict:
    r = nativewatch_cli("snapshot", "--pid", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_every_node_build_is_here() -> None:
    _require_all()


@pytest.mark.parametrize("node", NODES, ids=NODE_IDS)
def test_v8_heap_matches_heap_total_and_buffer_stays_native(node: Interp, nativewatch_cli) -> None:
    with LineProc([*node.argv, str(PROGRAMS / "node_heap.js")], env=node.env) as p:
        p.ask("objects 190")
        p.ask("buffer 64")
        before = p.ask("stats")
        snap = _snapshot(nativewatch_cli, p.pid)
        after = p.ask("stats")
    cats = snap["categories"]
    assert snap["runtime"] == "node", snap
    assert "v8-pages" in snap["sources"], snap
    assert not [x for x in snap["problems"] if "V8" in x], snap["problems"]
    assert sum(cats.values()) == snap["rss_bytes"]
    heap_total = (before["heapTotal"] + after["heapTotal"]) / 2
    if node.name == "node24":
        # V8 13 commits semispaces of up to 64 MiB that it touches only as it allocates into them: its
        # heapTotal counts them whole, RSS as far as they are used. Resident V8 memory lies between
        # heapTotal without the young generation's unused part and heapTotal.
        unused = max(b["newSpaceSize"] - b["newSpaceUsed"] for b in (before, after))
        assert 0.85 * (heap_total - unused) <= cats["heap"] <= 1.15 * heap_total, (cats["heap"], before, after)
    else:
        assert abs(cats["heap"] - heap_total) <= 0.15 * heap_total, (cats["heap"], before, after)
    assert cats["native"] >= 64 * MIB, cats
    assert cats["code"] > 0, cats
    details = snap["node"]
    assert details["version"] == before["version"]
    assert details["page_layout"] == LAYOUT[node.name]
    assert details["isolates"] == 1
    assert details["heap_limit_bytes"] == before["heap_size_limit"]
    resident = sum(s["resident_bytes"] for s in details["spaces"].values())
    assert resident == cats["heap"] + cats["code"]


@pytest.mark.parametrize("flags", [("--max-old-space-size=300",), ("--max_old_space_size=1536",),
                                   ("--max-semi-space-size=8", "--max-old-space-size=700")],
                         ids=["dashes", "underscores", "semi"])
@pytest.mark.parametrize("node", NODES, ids=NODE_IDS)
def test_heap_limit_is_v8s_own(node: Interp, flags: tuple[str, ...], nativewatch_cli) -> None:
    with LineProc([*node.argv, *flags, str(PROGRAMS / "node_heap.js")], env=node.env) as p:
        own = p.ask("stats")["heap_size_limit"]
        snap = _snapshot(nativewatch_cli, p.pid)
    assert snap["node"]["heap_limit_bytes"] == own
    assert snap["node"]["heap_limit_source"] == "flag"


@pytest.mark.parametrize("node", NODES, ids=NODE_IDS)
def test_node_options_environment_sets_the_limit(node: Interp, nativewatch_cli) -> None:
    with LineProc([*node.argv, str(PROGRAMS / "node_heap.js")],
                  env={**node.env, "NODE_OPTIONS": "--max-old-space-size=400"}) as p:
        own = p.ask("stats")["heap_size_limit"]
        snap = _snapshot(nativewatch_cli, p.pid)
    assert snap["node"]["heap_limit_bytes"] == own
    assert 400 * MIB < own <= (400 + 192) * MIB


@pytest.fixture
def memory_cgroup():
    """A v1 memory cgroup of this test's own (the machine's hierarchy is v1), removed afterwards."""
    root = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (root / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    path = root / f"nw-node-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.1)


@pytest.mark.parametrize("where", ["cgroup", "container", "soft-limit"])
@pytest.mark.parametrize("node", NODES, ids=NODE_IDS)
def test_heap_limit_follows_the_memory_node_sizes_v8_for(node: Interp, where: str, memory_cgroup,
                                                          nativewatch_cli) -> None:
    """Inside a 1.5 GiB memory cgroup V8 is sized for the cgroup, not the 24 GiB machine: by Node 20+
    from the process's own cgroup; by Debian's Node 18 (libuv 1.44) only from the cgroup mount it sees
    itself, as in a container ("container": its own mount namespace with the cgroup mounted where
    libuv looks). A soft limit counts for the newer libuv. The process's own heap_size_limit is the
    truth in every case, whichever rule its libuv follows."""
    (memory_cgroup / ("memory.soft_limit_in_bytes" if where == "soft-limit" else "memory.limit_in_bytes")) \
        .write_text(str(1536 * MIB))
    inner = f"echo $$ > {memory_cgroup}/cgroup.procs && "
    if where == "container":
        inner += f"mount --make-rprivate / && mount --bind {memory_cgroup} /sys/fs/cgroup/memory && "
    inner += "exec " + " ".join(shlex.quote(a) for a in (*node.argv, str(PROGRAMS / "node_heap.js")))
    argv = ["unshare", "-m", "sh", "-c", inner] if where == "container" else ["sh", "-c", inner]
    with LineProc(argv, env=node.env) as p:
        own = p.ask("stats")["heap_size_limit"]
        snap = _snapshot(nativewatch_cli, p.pid)
    print(f"{node.name} {where}: V8 {own / MIB:.0f} MiB, nativewatch {snap['node']['heap_limit_bytes'] / MIB:.0f} "
          f"MiB (sized for {snap['node']['sized_for']})")
    assert snap["node"]["heap_limit_bytes"] == own
    if node.name != "node18-debian" or where == "container":
        assert own < 2 * 1024 * MIB and snap["node"]["sized_for"] == "cgroup"


@pytest.mark.parametrize("node", NODES, ids=NODE_IDS)
def test_worker_thread_heap_and_stack(node: Interp, nativewatch_cli) -> None:
    with LineProc([*node.argv, str(PROGRAMS / "node_heap.js")], env=node.env) as p:
        p.ask("objects 40")
        solo = _snapshot(nativewatch_cli, p.pid)
        w = p.ask("worker 60")
        snap = _snapshot(nativewatch_cli, p.pid)
        after = p.ask("stats")
    assert snap["node"]["isolates"] == 2, snap["node"]
    grew = snap["categories"]["heap"] - solo["categories"]["heap"]
    # the worker's own isolate holds its ~60 MiB of objects (its heapTotal says how much it committed)
    assert grew >= 0.7 * w["worker_heapTotal"], (grew, w["worker_heapTotal"])
    assert snap["threads"] > solo["threads"]
    # a worker's stack (Node gives it 4 MiB) is found by its stack pointer: thread grows by whatever of it is resident
    assert snap["categories"]["thread"] > solo["categories"]["thread"]
    assert sum(snap["categories"].values()) == snap["rss_bytes"]
    assert after["heapTotal"] > 0
