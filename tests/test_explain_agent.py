"""`explain` takes growth from the node agent's history when the agent watches the process (issue 14).

A real agent (1 s scans, 30 s window) tracks a C program leaking 2 MiB/s until its native verdict says
leak; then `explain --duration 3s` (three samples of its own, far too few for a verdict) answers
`off-heap`/`native` from the agent's verdict, with the agent's slope. Tolerance on the slope: the agent's
floor fit over a steady 2 MiB/s leak, within 15% as in test_growth_agreement.py.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from agentproc import AgentProcess
from conftest import build_c

from nativewatch.agent_history import parse_snapshot, verdict_from_json

MiB = 1 << 20


@pytest.mark.slow
def test_explain_uses_the_agents_verdicts_when_it_watches_the_process(tmp_path, nativewatch_cli):
    leak = subprocess.Popen([str(build_c("soak_leak.c", cflags=["-O1"])), "2"], stdout=subprocess.PIPE, text=True)
    assert leak.stdout is not None and leak.stdout.readline().startswith("READY")
    try:
        with AgentProcess(tmp_path, track=[leak.pid], interval_s=1.0, full_interval_s=1.0, window_s=30,
                          min_leak_window_s=8, bpf=False, auto_capture=False) as agent:
            agent.wait_ready()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                code, body = agent.get("/api/v1/snapshot")
                procs = json.loads(body).get("processes", []) if code == 200 else []
                mine = [p for p in procs if p.get("pid") == leak.pid]
                if mine and mine[0]["growth"]["native"].get("leak"):
                    break
                time.sleep(1)
            else:
                pytest.fail("the agent gave no native leak verdict within 90 s")
            r = nativewatch_cli("explain", "--pid", str(leak.pid), "--duration", "3s", "--interval", "1s", "--json",
                                "--no-capture", "--agent", agent.url(""), check=True)
            alone = nativewatch_cli("explain", "--pid", str(leak.pid), "--duration", "3s", "--interval", "1s",
                                    "--json", "--no-capture", "--agent", "none", check=True)
    finally:
        leak.kill()
        leak.wait()
    doc = json.loads(r.stdout)
    assert doc["growth_source"]["from"] == "agent" and doc["growth_source"]["window_s"] >= 8
    assert doc["verdict"] == "off-heap" and doc["growing"][0]["category"] == "native", doc
    assert doc["growing"][0]["bytes_per_second"] == pytest.approx(2 * MiB, rel=0.15)
    own = json.loads(alone.stdout)
    assert own["growth_source"]["from"] == "sampled" and own["verdict"] == "insufficient-data"


def test_agent_snapshot_parsing_is_strict_about_the_process():
    snap = {"processes": [{"pid": 7, "comm": "app", "growth": {
        "native": {"bytes_per_second": 2e6, "leak": True, "fit": 0.99, "window_s": 600, "samples": 60,
                   "tier": "window", "reason": "rising"},
        "heap": {"bytes_per_second": 0.0, "leak": False, "reason": "no history yet"}}}]}
    data = json.dumps(snap).encode()
    growth, window, samples = parse_snapshot(data, 7, "app")
    assert growth["native"].leak and growth["native"].bytes_per_second == 2e6 and window == 600 and samples == 60
    assert parse_snapshot(data, 7, "other") is None  # pid reused
    assert parse_snapshot(data, 8, "app") is None
    for junk in (b"", b"{", b"[]", b'{"processes": 3}', b'{"processes": [{"pid": 7, "growth": 5}]}'):
        assert parse_snapshot(junk, 7, "app") is None
    assert verdict_from_json({"bytes_per_second": "x"}) is not None and verdict_from_json(3) is None
