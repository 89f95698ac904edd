"""Auto-capture (issue 6): when a process's `native` floor keeps rising past the threshold, the agent arms
a time-boxed sampled malloc profile on that process alone and keeps the pprof file and top sites as
evidence, then exports the top sites.

Workload: `agent_load leak 4096` (4 MiB/s in 256 KiB-64 B blocks, malloc'd from `main`, never freed) next
to `agent_load hold 16` (static, must not be captured). Settings: 1 s scans, verdict after 8 s of
window, capture threshold 16 MiB of floor growth, 5 s profile. Ground truth for the profile: over its
duration D the leaker allocates 4 MiB x D that stays outstanding (~80 blocks in 5 s). Each 256 KiB block
is sampled with probability 1 - exp(-256/512) = 0.39 (~32 samples, Poisson: 18% relative standard
deviation), so the scaled-back figure is within ±60% (over 3 standard deviations) unless the capture
is wrong.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.agent.config import load_config
from nativewatch.agent.evidence import list_evidence, load_evidence
from nativewatch.agent.exporter import make_registry
from nativewatch.agent.loop import Agent

MIB = 1 << 20


def _start(prog: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(prog), *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.slow
@pytest.mark.bpf
def test_rising_native_floor_arms_a_time_boxed_malloc_profile(bpf_available, tmp_path):
    pytest.importorskip("nativewatch.malloc_profile")
    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    leak = _start(prog, "leak", "4096")
    hold = _start(prog, "hold", "16")
    cfg = load_config(None, interval_s=1.0, full_interval_s=1.0, window_s=30, min_leak_window_s=8,
                      track=(leak.pid, hold.pid), state_dir=tmp_path / "state", evidence_dir=tmp_path / "ev",
                      auto_capture_min_growth_bytes=16 * MIB, auto_capture_duration_s=5.0, bpf=False)
    agent = Agent(cfg)
    try:
        assert "auto-capture" not in agent.degraded, agent.degraded
        deadline = time.monotonic() + 60
        doc = None
        while time.monotonic() < deadline and doc is None:
            agent.scan_once()
            caps = [s for s in list_evidence(cfg.evidence_dir)[0]
                    if s.kind == "auto-capture" and s.pid == leak.pid]
            if caps:
                doc = load_evidence(cfg.evidence_dir, caps[0].id)
            time.sleep(1)
        assert doc is not None, f"no capture within 60 s: {agent.error_log}"
        assert doc["pid"] == leak.pid
        assert doc["trigger"]["leak"] is True
        assert doc["trigger"]["bytes_per_second"] == pytest.approx(4 * MIB, rel=0.2)
        assert "problems" not in doc, doc.get("problems")
        assert Path(doc["pprof"]).stat().st_size > 0
        # under the agent's default cost budget, a quiet leaker is captured to the end
        assert doc["profile"]["via"] == "inject"  # the in-process sampler: the default where it is safe
        assert doc["profile"]["overhead"]["budget"] == 0.05 and doc["profile"]["overhead"]["stopped"] is None
        assert doc["profile"]["duration_s"] >= 4.9
        sites = doc["profile"]["sites"]
        assert sites, doc["profile"]
        top = sites[0]
        assert any(f.startswith("main ") for f in top["frames"][:2]), top["frames"]
        truth = 4 * MIB * doc["profile"]["duration_s"]
        assert 0.4 * truth <= top["outstanding_bytes"] <= 1.6 * truth
        # Not again within the cool-down.
        for _ in range(3):
            agent.scan_once()
            time.sleep(0.5)
        caps = [s for s in list_evidence(cfg.evidence_dir)[0] if s.kind == "auto-capture"]
        # The agent watches the whole node: another leaking process on this machine may be captured
        # too (after ours: one capture at a time); ours exactly once, the static one never.
        assert [c.pid for c in caps].count(leak.pid) == 1
        assert hold.pid not in [c.pid for c in caps]
        reg = make_registry(lambda: agent.view)
        comm = Path(f"/proc/{leak.pid}/comm").read_text().strip()
        site = ";".join(top["frames"][:3])
        v = reg.get_sample_value("nativewatch_native_site_outstanding_bytes",
                                 {"pid": str(leak.pid), "comm": comm, "runtime": "native", "namespace": "",
                                  "pod": "", "container": "", "container_id": "", "site": site})
        assert v == top["outstanding_bytes"]
    finally:
        agent.close()
        for p in (leak, hold):
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.bpf
@pytest.mark.parametrize("inject", [False, True], ids=["uprobes", "inject"])
def test_an_automatic_capture_of_an_allocation_heavy_process_stops_at_the_budget(bpf_available, tmp_path,
                                                                                 nativewatch_cli, inject):
    """A process leaking 4 MiB/s on one thread while another calls malloc/free about a million times a
    second: the capture is armed by the leak. With uprobes (`inject = false`) the governor ends it
    within a second (a full 5 s capture would cost the process ~30% of its throughput, see
    test_profile_ladder.py); the evidence keeps what was captured and says why it stopped. With the
    in-process sampler (the default) the same process costs a fraction of the budget: the capture
    runs to its end and names the leak."""
    prog = build_c("alloc_rate.c", cflags=["-O2", "-pthread"])
    busy = subprocess.Popen([str(prog), "1000000", "4096"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert busy.stdout is not None and busy.stdout.readline().startswith("ready")
    cfg = load_config(None, interval_s=1.0, full_interval_s=1.0, window_s=30, min_leak_window_s=8,
                      track=(busy.pid,), state_dir=tmp_path / "state", evidence_dir=tmp_path / "ev",
                      auto_capture_min_growth_bytes=16 * MIB, auto_capture_duration_s=5.0, bpf=False,
                      inject=inject)
    agent = Agent(cfg)
    try:
        deadline = time.monotonic() + 60
        doc = None
        while time.monotonic() < deadline and doc is None:
            agent.scan_once()
            caps = [s for s in list_evidence(cfg.evidence_dir)[0] if s.kind == "auto-capture" and s.pid == busy.pid]
            if caps:
                doc = load_evidence(cfg.evidence_dir, caps[0].id)
            time.sleep(1)
        assert doc is not None, f"no capture within 60 s: {agent.error_log}"
        over = doc["profile"]["overhead"]
        if inject:
            assert doc["profile"]["via"] == "inject" and over["stopped"] is None, over
            assert over["estimated_peak"] < 0.05 and doc["profile"]["duration_s"] >= 4.5
            assert over["calls_per_s"] > 200_000  # the busy thread really was sampled through the hooks
            shown = nativewatch_cli("evidence", "show", caps[0].id, "--evidence-dir", str(cfg.evidence_dir),
                                    check=True)
            assert "via inject" in shown.stdout
            return
        assert over["budget"] == 0.05 and over["stopped"].startswith("stopped after"), over
        assert over["estimated_peak"] > 0.05 and doc["profile"]["duration_s"] < 1.0
        assert over["stopped"] in doc["profile"]["problems"]
        shown = nativewatch_cli("evidence", "show", caps[0].id, "--evidence-dir", str(cfg.evidence_dir), check=True)
        assert "via session" in shown.stdout and over["stopped"] in shown.stdout
    finally:
        agent.close()
        busy.kill()
        busy.wait()
