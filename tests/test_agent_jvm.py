"""A real JVM under the agent (issue 6): NMT attach on its own slower cadence, NMT figures exported.

JDK 17 with -Xms128m -Xmx128m -XX:+AlwaysPreTouch and NMT summary: NMT's "Java Heap" committed is the
fixed heap, exactly 128 MiB. With scans every 0.5 s over ~4 s and `nmt_interval_s` = 2.5 s, the JVM
(tracked) gets exactly two full attributions (at the first scan and at the first scan 2.5 s later),
while a tracked native process gets one per scan.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nativewatch.agent.config import load_config
from nativewatch.agent.exporter import make_registry
from nativewatch.agent.loop import Agent

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
from harness import Jvm, compile_programs, java_home, jvm_argv  # noqa: E402

pytestmark = [pytest.mark.jvm]
MIB = 1 << 20


def test_jvm_gets_nmt_on_its_own_cadence_and_nmt_series_are_exported(tmp_path):
    if java_home(17) is None:
        pytest.skip("JDK 17 not installed")
    try:
        classes = compile_programs()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    jvm = Jvm(jvm_argv(17, classes, "-Xms128m", "-Xmx128m", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch",
                       "-XX:NativeMemoryTracking=summary"))
    native = subprocess.Popen(["sleep", "60"])
    cfg = load_config(None, interval_s=0.5, full_interval_s=0.5, nmt_interval_s=2.5,
                      track=(jvm.pid, native.pid), state_dir=tmp_path, evidence_dir=tmp_path / "ev",
                      bpf=False, auto_capture=False)
    agent = Agent(cfg)
    try:
        stamps: dict[int, set[float]] = {jvm.pid: set(), native.pid: set()}
        t0 = time.monotonic()
        scans = 0
        while time.monotonic() - t0 < 4.0:
            t = time.monotonic()
            view = agent.scan_once()
            scans += 1
            for p in view.processes:
                if p.breakdown.pid in stamps:
                    stamps[p.breakdown.pid].add(p.breakdown.timestamp)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
        assert "jvm" not in agent.degraded, agent.degraded
        assert len(stamps[jvm.pid]) == 2, sorted(stamps[jvm.pid])
        assert len(stamps[native.pid]) == scans
        bd = next(p.breakdown for p in view.processes if p.breakdown.pid == jvm.pid)
        assert bd.runtime == "jvm" and any(s.startswith("nmt") for s in bd.sources), bd.sources
        assert bd.categories["heap"] >= 120 * MIB  # pre-touched 128 MiB heap (a few regions may be untouched)
        reg = make_registry(lambda: agent.view)
        labels = {"pid": str(jvm.pid), "comm": bd.comm, "runtime": "jvm", "namespace": "", "pod": "",
                  "container": "", "container_id": ""}
        assert reg.get_sample_value("nativewatch_jvm_nmt_committed_bytes",
                                    {**labels, "nmt_category": "Java Heap"}) == 128 * MIB
        assert reg.get_sample_value("nativewatch_process_memory_bytes",
                                    {**labels, "category": "heap"}) == bd.categories["heap"]
    finally:
        agent.close()
        native.kill()
        native.wait()
        jvm.close()


def _attach_listener(pid: int) -> bool:
    """HotSpot starts its "Attach Listener" thread on the first attach, never before."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == "Attach Listener":
                return True
    return False


@pytest.mark.parametrize("allowed", [False, True], ids=["jvm_attach-false", "control"])
def test_jvm_attach_false_never_signals_or_connects_to_a_jvm(allowed, tmp_path):
    if java_home(17) is None:
        pytest.skip("JDK 17 not installed")
    jvm = Jvm(jvm_argv(17, compile_programs(), "-Xmx64m", "-XX:NativeMemoryTracking=summary"))
    cfg = load_config(None, interval_s=0.5, full_interval_s=0.5, nmt_interval_s=0.5, track=(jvm.pid,),
                      state_dir=tmp_path, evidence_dir=tmp_path / "ev", bpf=False, auto_capture=False,
                      jvm_attach=allowed)
    agent = Agent(cfg)
    try:
        assert not _attach_listener(jvm.pid)
        for _ in range(4):
            view = agent.scan_once()
            time.sleep(0.5)
        bd = next(p.breakdown for p in view.processes if p.breakdown.pid == jvm.pid)
        assert bd.runtime == "jvm"
        assert any(s.startswith("nmt") for s in bd.sources) == allowed, bd.sources
        assert _attach_listener(jvm.pid) == allowed
        # its automatic captures ask the JVM for a perf map only when allowed
        assert ("--jvm" if allowed else "--no-jvm") in agent.profile_argv(jvm.pid, 30.0, None)
    finally:
        agent.close()
        jvm.close()

