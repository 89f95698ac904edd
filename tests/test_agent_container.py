"""Containers (issue 6): a real memory cgroup shaped like a plain docker container (v1
/docker/<64 hex>, which cgroup identity recognises), limited to 96 MiB, holding `agent_load hold 16`
and `agent_load leak 4096` (4 MiB/s). No container engine is involved: the kernel's memory cgroup,
its limit and its OOM killer are real; only the directory name says "docker".

Checked against ground truth the test set up:
- the container's categories are the sums of its two processes' breakdowns, its `native` slope is
  4 MiB/s ±20% and flagged, its limit is 96 MiB;
- the OOM ETA, read once the leak is flagged, predicts the kernel's kill: |predicted - actual| ≤ 4 s
  (scans are 1 s apart, the kill is observed within one more scan, and the working set also holds
  page tables and libc's pages that grow a little with the leak);
- the kill is counted under the container's labels with dominant_category="native", and the
  evidence carries the container identity.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.agent.config import load_config
from nativewatch.agent.evidence import list_evidence, load_evidence
from nativewatch.agent.exporter import make_registry
from nativewatch.agent.loop import Agent
from nativewatch.model import CATEGORIES

MIB = 1 << 20
V1_MEMORY = Path("/sys/fs/cgroup/memory")
LIMIT = 96 * MIB


@pytest.fixture
def docker_like_cgroup():
    if os.geteuid() != 0 or not (V1_MEMORY / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    parent = V1_MEMORY / "docker"
    made_parent = not parent.exists()
    parent.mkdir(exist_ok=True)
    cid = secrets.token_hex(32)
    cg = parent / cid
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(LIMIT))
        if (cg / "memory.memsw.limit_in_bytes").exists():
            (cg / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
        yield cid, cg
    finally:
        for d in [cg] + ([parent] if made_parent else []):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _start_in(cg: Path, prog: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(prog), *args], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: (cg / "cgroup.procs").write_text(str(os.getpid())))
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_container_growth_limit_eta_and_oom_kill_under_container_labels(docker_like_cgroup, tmp_path):
    cid, cg = docker_like_cgroup
    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    hold = _start_in(cg, prog, "hold", "16")
    leak = _start_in(cg, prog, "leak", "4096")
    cfg = load_config(None, interval_s=1.0, full_interval_s=1.0, window_s=30, min_leak_window_s=6,
                      track=(hold.pid, leak.pid), state_dir=tmp_path / "state", evidence_dir=tmp_path / "ev",
                      bpf=False, auto_capture=False)
    agent = Agent(cfg)
    try:
        predicted_kill = None
        checked = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and leak.poll() is None:
            t_scan = time.monotonic()
            view = agent.scan_once()
            mine = [c for c in view.containers if c.id == cid]
            if mine and not checked and mine[0].growth["native"].leak and leak.poll() is None:
                c = mine[0]
                members = {p.breakdown.pid: p.breakdown for p in view.processes if p.breakdown.pid in c.pids}
                assert set(c.pids) == {hold.pid, leak.pid} == set(members)
                for cat in CATEGORIES:
                    assert c.categories[cat] == sum(b.categories[cat] for b in members.values()), cat
                assert c.info is not None and c.info.runtime == "docker"
                assert c.labels.container_id == cid
                assert c.growth["native"].fit.bytes_per_second == pytest.approx(4 * MIB, rel=0.2)
                assert c.limit_bytes == LIMIT
                assert c.working_set_bytes is not None and c.categories["native"] <= c.working_set_bytes <= LIMIT
                assert c.oom_eta_s is not None
                predicted_kill = t_scan + c.oom_eta_s
                reg = make_registry(lambda: agent.view)
                labels = {"namespace": "", "pod": "", "container": "", "container_id": cid}
                assert reg.get_sample_value("nativewatch_container_memory_limit_bytes", labels) == LIMIT
                assert reg.get_sample_value("nativewatch_container_memory_growth_bytes_per_second",
                                            {**labels, "category": "native"}) == pytest.approx(4 * MIB, rel=0.2)
                assert reg.get_sample_value("nativewatch_process_memory_bytes",
                                            {**labels, "pid": str(hold.pid), "comm": members[hold.pid].comm,
                                             "runtime": "native", "category": "native"}) >= 16 * MIB
                checked = True
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t_scan)))
        assert checked, "the container's leak was never flagged before the kill"
        assert leak.wait(timeout=30) == -9, "the kernel's OOM killer sends SIGKILL"
        killed_at = time.monotonic()
        print(f"OOM ETA predicted the kill {predicted_kill - killed_at:+.1f} s off")
        assert predicted_kill is not None and abs(predicted_kill - killed_at) <= 4.0, \
            (predicted_kill - killed_at)
        for _ in range(10):  # the cgroup counter fallback names the victim within a few scans
            agent.scan_once()
            if list_evidence(cfg.evidence_dir)[0]:
                break
            time.sleep(1)
        items = [s for s in list_evidence(cfg.evidence_dir)[0] if s.pid == leak.pid]
        assert len(items) == 1
        doc = load_evidence(cfg.evidence_dir, items[0].id)
        assert doc["dominant_category"] == "native"
        assert doc["container"]["id"] == cid and doc["labels"]["container_id"] == cid
        reg = make_registry(lambda: agent.view)
        assert reg.get_sample_value("nativewatch_container_oom_kills_total",
                                    {"namespace": "", "pod": "", "container": "", "container_id": cid,
                                     "dominant_category": "native"}) == 1
        assert hold.poll() is None  # the kernel picked the leaker, the agent named the leaker
    finally:
        agent.close()
        for p in (hold, leak):
            p.kill()
            p.wait()
