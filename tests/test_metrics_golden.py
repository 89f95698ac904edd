"""The agent's whole /metrics output, end to end, against a golden file (node_exporter's e2e style).

A /proc tree built from captured samples (a tcmalloc process in a Kubernetes container, a cgo Go
program, a passive JDK 17) is scanned by the real agent loop (procfs sampler, attribution, analyze
stage, exporter) under a clock that advances one default 10 s interval per scan, while the native
process grows by 20 MiB per scan (2 MiB/s) through a new anonymous mapping in its smaps and its stat RSS.
Every family, label set and value is compared; only what depends on the host or the wall clock is left
out (named in VOLATILE). Regenerate, for an intended change only, with NATIVEWATCH_WRITE_GOLDEN=1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import fakeproc
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from nativewatch.agent.config import load_config
from nativewatch.agent.exporter import AgentCollector
from nativewatch.agent.loop import Agent
from nativewatch.jvm import attach
from nativewatch.sources import procfs

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "metrics" / "agent-e2e.prom"
MIB = 1 << 20
T0 = 1_800_000_000.0

# Wall-clock timings and the sizes of process-wide caches (which depend on what ran before in the
# same interpreter) are not facts about the fixture.
VOLATILE = re.compile(r"^nativewatch_(scrape_source_duration_seconds|agent_scan_(duration|cpu)_seconds\w*|"
                      r"agent_last_scan_\w+|agent_cache_entries)\b")

# The kernel ends an unnamed mapping's header and the VmFlags line with a space.
_BLOCK = """{start:x}-{end:x} rw-p 00000000 00:00 0{sp}
Size:           {kb:8d} kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:            {kb:8d} kB
Pss:            {kb:8d} kB
Pss_Dirty:      {kb:8d} kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:  {kb:8d} kB
Referenced:     {kb:8d} kB
Anonymous:      {kb:8d} kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac{sp}
"""


def _grow(root: Path, pid: int, base: bytes, extra_bytes: int) -> None:
    kb = extra_bytes // 1024
    start = 0x7E0000000000
    text = base + (_BLOCK.format(start=start, end=start + extra_bytes, kb=kb, sp=" ").encode() if kb else b"")
    (root / str(pid) / "smaps").write_bytes(text)
    rss_pages = procfs.parse_smaps(text).rss // 4096
    stat = f"{pid} (tcmalloc) S 1 " + " ".join(["0"] * 17) + f" 12345 0 {rss_pages}\n"
    (root / str(pid) / "stat").write_text(stat)


def _refused(pid: int, command_line: str, **_kw: object) -> str:
    raise attach.AttachError("connection refused")


def render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # The fixture pids are not this machine's: nothing may be attached to or signalled. The JVM's
    # attach is refused, as a JVM started with -XX:+DisableAttachMechanism refuses it.
    monkeypatch.setattr(attach, "jcmd", _refused)
    root = tmp_path / "proc"
    procs = {4242: fakeproc.native("tcmalloc", cgroup=fakeproc.K8S_CGROUP), 4243: fakeproc.go("goprobe"),
             4244: fakeproc.jvm(17)}
    for pid, proc in procs.items():
        fakeproc.build(root, proc, pid=pid)
    base = (root / "4242" / "smaps").read_bytes()
    clock = [T0]
    cfg = load_config(None, proc_root=str(root), cgroup_root=str(tmp_path / "no-cgroupfs"), bpf=False,
                      auto_capture=False, state_dir=tmp_path / "state", evidence_dir=tmp_path / "ev")
    agent = Agent(cfg, clock=lambda: clock[0])
    try:
        for i in range(14):
            _grow(root, 4242, base, 20 * MIB * i)
            agent.scan_once()
            clock[0] += cfg.interval_s
        reg = CollectorRegistry(auto_describe=False)
        reg.register(AgentCollector(lambda: agent.view, top_sites=cfg.top_sites))
        text = generate_latest(reg).decode()
    finally:
        agent.close()
    return "".join(ln + "\n" for ln in text.splitlines() if not VOLATILE.match(ln))


def test_agent_metrics_match_the_golden_exposition(tmp_path, monkeypatch):
    got = render(tmp_path, monkeypatch)
    if os.environ.get("NATIVEWATCH_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    # the facts the golden file pins, checked in words too: a fast leak verdict's slope is the growth
    pat = (r'nativewatch_process_memory_growth_bytes_per_second\{category="native",comm="tcmalloc",'
           r'container="",container_id="' + fakeproc.CONTAINER_ID + r'",namespace="",pid="4242",pod="",'
           r'runtime="native"\} (\S+)')
    m = re.search(pat, got)
    assert m is not None and abs(float(m.group(1)) - 2 * MIB) < 1e-6 * MIB, m
    assert got == GOLDEN.read_text()
