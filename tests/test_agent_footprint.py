"""The agent's own memory with every eBPF program loaded (issue 12): at most 64 MiB resident, because
bcc's compiler lives only in a short-lived loader child, and the programs it attached still work in
the agent and still go away with the agent when it is SIGKILLed.

Real agent process at its defaults (BPF on, auto-capture on), a real tracked leaking C program, real
page faults and a real OOM-kill program; the kernel's own program list is the ground truth for
"nothing left behind".
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentproc import AgentProcess
from conftest import build_c

from nativewatch.sources.bpfsys import prog_ids, prog_name

MIB = 1 << 20
LIMIT = 64 * MIB


@pytest.mark.slow
def test_agent_holds_its_programs_in_64_mib_and_sigkill_takes_them_away(tmp_path, bpf_available):
    leak_prog = build_c("soak_leak.c", cflags=["-O1"])
    leak = subprocess.Popen([str(leak_prog), "0.25"], stdout=subprocess.PIPE, text=True)
    assert leak.stdout is not None and leak.stdout.readline().startswith("READY")
    before = set(prog_ids())
    try:
        with AgentProcess(tmp_path, track=[leak.pid]) as agent:
            health = agent.wait_ready(scans=1, timeout=120)
            assert not any(k.startswith("bpf") for k in health.get("degraded", {})), health
            ours = {i: prog_name(i) for i in set(prog_ids()) - before}
            # the kernel's names for the two programs (their tracepoints, 15 characters at most)
            assert {"page_fault_user", "oom__mark_victi"} <= set(ours.values()), ours
            t0 = time.monotonic()
            peak = 0
            while time.monotonic() - t0 < 60:
                peak = max(peak, agent.rss())
                time.sleep(2)
            maps = Path(f"/proc/{agent.pid}/maps").read_text()
            assert "libLLVM" not in maps and "libbcc" not in maps and "libclang" not in maps
            # the programs work from the agent: faults sampled, and the leak's growth has stacks
            sampled = agent.metric("nativewatch_agent_bpf_events_total", program="page_faults")
            print(f"agent RSS peak over 60 s: {peak / MIB:.1f} MiB; page faults sampled: {sampled}")
            assert sampled and sampled > 0
            assert peak <= LIMIT, f"agent RSS {peak / MIB:.1f} MiB > 64 MiB"
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(timeout=30)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and set(ours) & set(prog_ids()):
                time.sleep(0.2)  # the kernel frees programs once the last descriptor is gone
            left = {i: prog_name(i) for i in set(ours) & set(prog_ids())}
            assert not left, f"programs left behind after SIGKILL: {left}"
    finally:
        leak.kill()
        leak.wait()


@pytest.mark.slow
def test_the_loader_child_works_with_exactly_the_daemonset_capabilities(tmp_path, bpf_available):
    """The child that compiles the programs runs with the agent's capabilities (root with the
    DaemonSet's bounding set, no new privileges): what the cluster gives the agent is enough for it,
    and the agent reads the maps it handed over."""
    from test_deploy_privileges import daemonset_capabilities, with_caps

    prefix = tuple(with_caps(daemonset_capabilities(), ["true"])[:-1])  # setpriv ... --
    with AgentProcess(tmp_path, prefix=prefix, interval_s=1.0) as agent:
        health = agent.wait_ready(scans=3, timeout=120)
        assert not any(k.startswith("bpf") for k in health.get("degraded", {})), health
        status = Path(f"/proc/{agent.pid}/status").read_text()
        bounding = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapBnd:")), 16)
        assert bounding != (1 << 41) - 1, "the agent ran with every capability: the test proves nothing"
        # 64 MiB written page by page: 16,384 first-touch faults, about 256 samples at 1 in 64
        subprocess.run([sys.executable, "-c", "b = b'x' * (64 << 20)"], check=True)
        agent.wait_scans(2)
        assert (agent.metric("nativewatch_agent_bpf_events_total", program="page_faults") or 0) > 0
