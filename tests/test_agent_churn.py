"""Process churn while the agent scans (issue 6): thousands of short-lived processes, each scan fully
attributing every process it lists (so many reads race with exits), eBPF page-fault stacks on (so
symbol caches are made for processes that then vanish).

Expected: no error is counted for any of the churned pids (vanished ones are skipped quietly), the
agent's file descriptors do not grow, its per-pid state returns to its baseline once the grace period
passes, and its own memory (the agent's breakdown of itself: `heap` + `native`, i.e. Python's and
libc's malloc'd memory) does not grow between a first churn round (warm-up: arenas, caches) and a
second, identical one. Tolerance: 4 MiB, against ~3000 processes seen per round; a per-process leak
of a single symbol cache (>100 KiB) or record (~2 KiB) would exceed it.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from nativewatch.agent.config import load_config
from nativewatch.agent.loop import Agent
from nativewatch.snapshot import take_snapshot

MIB = 1 << 20
ROUND = 1500
CHURN = (f"i=0; while [ $i -lt {ROUND} ]; do sleep 0.05 & i=$((i+1)); "
         "if [ $((i % 30)) -eq 0 ]; then wait; fi; done; wait")


def _fds() -> int:
    """Descriptors a scan could leak: /proc and /sys files, sockets, pipes, BPF objects. Not the ELF
    files the per-pid symbolizers hold open for live processes (those follow the machine's other
    processes; that the caches of vanished pids are freed is checked directly)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.startswith(("/proc/", "/sys/", "socket:", "pipe:", "anon_inode:"))
    return n


def _own_malloc_bytes() -> int:
    bd = take_snapshot(os.getpid(), jvm=False)
    return bd.categories["native"] + bd.categories["heap"]


def _churn_round(agent: Agent) -> tuple[int, set[int]]:
    """Scan continuously while ROUND processes come and go; returns (scans, pids seen)."""
    before = set(os.listdir("/proc"))
    p = subprocess.Popen(["/bin/sh", "-c", CHURN])
    scans, seen = 0, set()
    while p.poll() is None:
        agent.scan_once()
        # Only our churn's processes: other work on this machine starts and ends processes too.
        seen |= {pid for pid, r in agent.procs.items() if r.comm == "sleep"}
        scans += 1
    seen -= {int(x) for x in before if x.isdigit()}
    return scans, seen


def _settle(agent: Agent) -> None:
    agent.scan_once()  # buries the last round's processes
    time.sleep(agent.cfg.dead_grace_s + 0.2)
    for _ in range(2):
        agent.scan_once()


def _agent(tmp_path, *, bpf: bool) -> Agent:
    cfg = load_config(None, interval_s=0.1, full_interval_s=0.0, scan_budget_s=30.0, dead_grace_s=1.0,
                      window_s=10, history_interval_s=3600, state_dir=tmp_path / "state",
                      evidence_dir=tmp_path / "ev", auto_capture=False, page_fault_sample_every=4, bpf=bpf)
    agent = Agent(cfg)
    for _ in range(5):
        agent.scan_once()
    return agent


def _assert_clean(agent: Agent, churned: set[int], errors_before: int) -> None:
    # The rounds really raced with exits: many short-lived pids were listed and fully attributed.
    assert len(churned) > 100
    bad = [e for e in list(agent.error_log)[errors_before:] if e[2] in churned]
    assert bad == [], bad
    # Per-pid state is back to the baseline once the grace period has passed: no record of a churned
    # pid unless that pid is alive again (reused). (A count would not do: the machine's other work
    # starts and ends processes too.)
    stale = [p for p in agent.procs if p in churned and not os.path.exists(f"/proc/{p}")]
    assert stale == []
    now = agent.clock()
    assert not any(pid in churned for pid, _ in agent.dead), [(r.pid, r.comm, now - (r.dead_at or 0)) for r in agent.dead.values()]


@pytest.mark.slow
def test_churn_leaves_no_errors_fds_or_memory_growth(tmp_path):
    """Without eBPF, so the agent's own malloc'd memory is not mixed with the symbol tables of the
    machine's other (live, changing) processes."""
    agent = _agent(tmp_path, bpf=False)
    try:
        fds0, errors_before = _fds(), len(agent.error_log)
        scans1, seen1 = _churn_round(agent)  # warm-up round: arenas, caches, interned strings
        _settle(agent)
        mem1, fds1 = _own_malloc_bytes(), _fds()
        scans2, seen2 = _churn_round(agent)
        _settle(agent)
        mem2, fds2 = _own_malloc_bytes(), _fds()
        print(f"round 1: {scans1} scans, {len(seen1)} churned pids seen; round 2: {scans2} scans, "
              f"{len(seen2)} seen; agent malloc'd memory {mem1 / MIB:.1f} -> {mem2 / MIB:.1f} MiB; "
              f"fds {fds0} {fds1} {fds2}; full snapshots {agent.full_total}")
        _assert_clean(agent, seen1 | seen2, errors_before)
        assert len(seen2) > 100
        assert fds1 <= fds0 and fds2 <= fds0
        assert mem2 - mem1 < 4 * MIB
    finally:
        agent.close()


@pytest.mark.slow
@pytest.mark.bpf
def test_churn_with_page_fault_stacks_frees_per_pid_bpf_state(bpf_available, tmp_path):
    agent = _agent(tmp_path, bpf=True)
    try:
        assert agent.faults is not None, agent.degraded
        fds0, errors_before = _fds(), len(agent.error_log)
        _scans, seen = _churn_round(agent)
        _settle(agent)
        _assert_clean(agent, seen, errors_before)
        assert _fds() <= fds0
        assert agent.faults.stats()["sampled"] > 0
        assert not any(pid in seen for pid in agent.faults.per_pid)
        assert not any(pid in seen for pid in agent.faults.symbols._caches)
    finally:
        agent.close()
