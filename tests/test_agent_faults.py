"""Resident-growth stacks from sampled first-touch page faults (issue 6).

`agent_load leakset 8192` writes 8 MiB/s of new pages through libc's memset, called from `leak_memset`.
memset is a leaf without a frame pointer, so a frame-pointer walk alone skips `leak_memset`; the
sampler's return-address hint must put it back. The estimated bytes of that stack must match what the
process made resident meanwhile (its Rss growth, from /proc), within the sampling error: at 1 fault in
8, 2 s of 8 MiB/s are ~500 samples (~5% relative error); ±25% bounds it generously.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.agent.faults import with_return_hint

MIB = 1 << 20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_return_hint_only_restores_the_caller_of_a_frameless_libc_leaf():
    leaf = ["__memset_avx2_unaligned_erms (libc.so.6)", "main (app)", "__libc_start_call_main (libc.so.6)"]
    assert with_return_hint(leaf, "grow (app)") == [leaf[0], "grow (app)", *leaf[1:]]
    assert with_return_hint(leaf, "main (app)") == leaf  # frame pointers already had the caller
    assert with_return_hint(leaf, "0x7f00 (?)") == leaf  # not a resolved function: garbage at sp
    assert with_return_hint(leaf, None) == leaf
    own = ["grow (app)", "main (app)"]
    assert with_return_hint(own, "other (app)") == own  # a leaf of the program: left as walked
    assert with_return_hint([], "x (app)") == []


@pytest.mark.bpf
def test_page_fault_stacks_name_the_function_that_calls_memset(bpf_available):
    from nativewatch.agent.faults import PageFaultSampler

    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    sampler = PageFaultSampler(8)
    p = subprocess.Popen([str(prog), "leakset", "8192"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        sampler.collect({p.pid}, {p.pid})  # drop what came before "ready"
        sampler.per_pid.clear()
        rss0 = _rss(p.pid)
        time.sleep(2.0)
        grown = _rss(p.pid) - rss0
        sampler.collect({p.pid}, {p.pid})
        top = sampler.top(p.pid, 3)
        assert top, sampler.stats()
        best = top[0]
        assert best.frames[0].startswith(("__memset", "memset")), best.frames
        assert best.frames[1].startswith("leak_memset "), best.frames
        assert best.frames[2].startswith("main "), best.frames
        assert grown > 8 * MIB
        assert best.bytes == pytest.approx(grown, rel=0.25)
    finally:
        p.kill()
        p.wait()
        sampler.close()
