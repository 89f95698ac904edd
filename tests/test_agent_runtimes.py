"""Node and Python under a real agent process (issue 15): the runtime label, their heap in the process
breakdown and their own gauges on /metrics, scraped as Prometheus would.

Node 20 holds ~100 MiB of JavaScript objects and Debian's CPython 3.11 ~100 MiB of Python objects.
The exported heap is checked against the process's own figure read just before and after the
scrape (heapTotal; pymalloc's arena bytes), with the tolerances of the snapshot tests (15% Node:
committed vs resident; 10% Python), and the runtimes' gauges against the same figures exactly where
they are the same quantity (V8's heap limit; arena count x arena size).
"""

from __future__ import annotations

import pytest
from agentproc import AgentProcess
from conftest import PROGRAMS
from interpreters import node_interpreters, python_interpreters
from lineproc import LineProc

MIB = 1 << 20


def test_node_and_python_series_carry_their_runtime_and_heap(tmp_path):
    node = next((n for n in node_interpreters() if n.name == "node20"), None)
    py = next((p for p in python_interpreters() if p.name == "debian-3.11"), None)
    if node is None or py is None:
        pytest.fail("Node 20 and Debian's python3.11 are part of the machine")
    with LineProc([*node.argv, str(PROGRAMS / "node_heap.js")], env=node.env) as n, \
            LineProc([*py.argv, str(PROGRAMS / "py_heap.py")], env=py.env) as p:
        n.ask("objects 100")
        p.ask("objects 100")
        with AgentProcess(tmp_path, interval_s=1.0, full_interval_s=1.0, bpf=False, auto_capture=False,
                          track=[n.pid, p.pid]) as agent:
            agent.wait_ready(scans=2)
            agent.wait_scans(2)
            nb, pb = n.ask("stats"), p.ask("stats")
            got = {
                "node_heap": agent.metric("nativewatch_process_memory_bytes", pid=str(n.pid), runtime="node",
                                          category="heap"),
                "node_old": agent.metric("nativewatch_node_v8_committed_bytes", pid=str(n.pid), space="old"),
                "node_limit": agent.metric("nativewatch_node_heap_limit_bytes", pid=str(n.pid)),
                "py_heap": agent.metric("nativewatch_process_memory_bytes", pid=str(p.pid), runtime="python",
                                        category="heap"),
                "py_arenas": agent.metric("nativewatch_python_pymalloc_arena_bytes", pid=str(p.pid)),
            }
            na, pa = n.ask("stats"), p.ask("stats")
    print(got)
    assert None not in got.values(), got
    heap_total = (nb["heapTotal"] + na["heapTotal"]) / 2
    assert abs(got["node_heap"] - heap_total) <= 0.15 * heap_total, (got, heap_total)
    assert 0 < got["node_old"] <= heap_total
    assert got["node_limit"] == nb["heap_size_limit"]
    arenas = (pb["arena_bytes"] + pa["arena_bytes"]) / 2
    assert abs(got["py_heap"] - arenas) <= 0.10 * arenas, (got, arenas)
    assert got["py_arenas"] in (pb["arena_bytes"], pa["arena_bytes"])
