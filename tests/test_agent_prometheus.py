"""The real `nativewatch agent` scraped by a real Prometheus (Debian's package), with workloads the test
starts (issue 6):

- `hold 48`: 48 MiB malloc'd and written once. Its `native` series must be 48 MiB plus what an idle C
  program holds besides (libc's own heap and the stack-less anonymous bits: well under 1 MiB here), and
  its categories must sum exactly to the Rss of its smaps_rollup (the process does not change).
- `leak 2048`: 2 MiB/s in 256 KiB-64 B blocks; each block plus glibc's 16-byte header fits in 64 pages,
  so resident growth is exactly 2 MiB/s. The agent (1 s scans, 60 s window, verdict after 30 s) must flag
  it within 2 minutes with its `native` slope within 20% of 2 MiB/s, and Prometheus must hold that slope.
- `sawtooth 64 8`: ramps to 64 MiB over 7.2 s, frees everything, repeats. It must never be flagged, on any
  scan, and its exported slope must be ~0 (below 5% of the tooth's own 8.9 MiB/s ramp).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.model import CATEGORIES

MIB = 1 << 20
PROMETHEUS = "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _start(prog: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(prog), *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _prom_value(port: int, query: str) -> float | None:
    doc = _get_json(f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    result = doc["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def _rollup_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Rss line")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian's prometheus package is not installed")
def test_prometheus_holds_agent_series_for_leak_sawtooth_and_hold(tmp_path):
    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    procs = [_start(prog, "hold", "48")]
    procs.append(_start(prog, "leak", "2048"))
    t_leak = time.monotonic()
    procs.append(_start(prog, "sawtooth", "64", "8"))
    hold, leak, saw = procs
    aport, pport = _free_port(), _free_port()
    (tmp_path / "agent.toml").write_text(
        "full_interval_s = 1\nwindow_s = 60\nmin_leak_window_s = 30\nhistory_interval_s = 5\n")
    exe = Path(sys.executable).parent / "nativewatch"
    agent = subprocess.Popen([str(exe), "agent", "--listen", f"127.0.0.1:{aport}", "--interval", "1s",
                              "--config", str(tmp_path / "agent.toml"), "--state-dir", str(tmp_path / "state"),
                              "--evidence-dir", str(tmp_path / "ev"),
                              *[a for p in procs for a in ("--track", str(p.pid))]],
                             stderr=subprocess.PIPE, text=True)
    (tmp_path / "prom.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: nativewatch\n    static_configs:\n      - targets: ['127.0.0.1:{aport}']\n")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prom.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        flagged_at = None
        leak_slope = None
        saw_seen_rising = False
        while time.monotonic() - t_leak < 120:
            time.sleep(1)
            try:
                snap = _get_json(f"http://127.0.0.1:{aport}/api/v1/snapshot")
            except OSError:
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                continue
            assert "containers" in snap
            by_pid = {p["pid"]: p for p in snap["processes"]}
            if saw.pid in by_pid:
                g = by_pid[saw.pid]["growth"]["native"]
                assert not g["leak"], f"sawtooth flagged: {g}"
                saw_seen_rising |= by_pid[saw.pid]["categories"]["native"] > 32 * MIB
            if leak.pid in by_pid:
                g = by_pid[leak.pid]["growth"]["native"]
                if g["leak"] and flagged_at is None:
                    flagged_at = time.monotonic() - t_leak
                    leak_slope = g["bytes_per_second"]
            if flagged_at is not None and time.monotonic() - t_leak > flagged_at + 5:
                break
        assert flagged_at is not None and flagged_at <= 120, "2 MiB/s leak not flagged within 2 minutes"
        print(f"leak flagged {flagged_at:.1f}s after start, slope {leak_slope / MIB:.3f} MiB/s")
        assert leak_slope == pytest.approx(2 * MIB, rel=0.2)
        assert saw_seen_rising, "the sawtooth never reached its teeth: the no-flag result would be vacuous"

        # What Prometheus holds, read back through its own query API.
        assert _prom_value(pport, 'up{job="nativewatch"}') == 1
        native = _prom_value(pport, f'nativewatch_process_memory_bytes{{pid="{hold.pid}",category="native"}}')
        assert native is not None and 48 * MIB <= native <= 49 * MIB
        total = _prom_value(pport, f'sum(nativewatch_process_memory_bytes{{pid="{hold.pid}"}})')
        assert total == _rollup_rss(hold.pid)
        slope = _prom_value(pport, f'nativewatch_process_memory_growth_bytes_per_second{{pid="{leak.pid}",'
                                   'category="native"}')
        assert slope == pytest.approx(2 * MIB, rel=0.2)
        saw_slope = _prom_value(pport, f'nativewatch_process_memory_growth_bytes_per_second{{pid="{saw.pid}",'
                                       'category="native"}')
        assert saw_slope is not None and saw_slope < 0.05 * 64 * MIB / 7.2
        comm = Path(f"/proc/{leak.pid}/comm").read_text().strip()
        n = _prom_value(pport, f'count(nativewatch_process_memory_bytes{{pid="{leak.pid}",comm="{comm}",'
                               'runtime="native",container_id=""})')
        assert n == len(CATEGORIES)
        for src in ("process", "container", "oom", "jvm", "sites", "agent"):
            assert _prom_value(pport, f'nativewatch_scrape_source_success{{source="{src}"}}') == 1, src
        assert _prom_value(pport, 'nativewatch_build_info') == 1
        assert _prom_value(pport, 'nativewatch_agent_scans_total') >= 30
    finally:
        prom.terminate()
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(timeout=30)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            prom.wait(timeout=30)
    assert rc == 0, "agent did not shut down cleanly on SIGTERM"
    # The history store kept rows for the tracked processes.
    from nativewatch.agent.store import HistoryStore

    store = HistoryStore(tmp_path / "state", retention_s=3600, readonly=True)
    assert len(store.process_history(leak.pid)) >= 5
    store.close()
