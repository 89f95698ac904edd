"""The attach ladder and the cost governor, on real programs with real probes (issue 12, parts 1-3).

Ground truth as in test_profile_live.py: leaky_sites.c prints the bytes leaky_cache_insert retained.
Every rung runs the same BPF code (only the way it is attached differs), so in exact mode each must
report exactly those bytes, with nothing lost.

The governor tests use alloc_rate.c, a throughput-bound loop of malloc/free plus calibrated compute
making about a million allocator calls a second bare. Its "capture window" is the requested capture
duration from the moment the probes are attached: what a user asked for and what the target lives
through. Tolerances:
- stops within a second: the governor judges every 0.1 s; a million calls a second at this
  machine's measured ~0.5 us a hit is ~50% of a core, ten times the 5% budget, so the first tick
  decides. 1 s leaves room for a loaded CI machine's scheduling.
- throughput >= 0.95x over a 6 s window: a full capture costs this program ~30% of its throughput
  (measured: 0.72x); stopping at 0.1-0.2 s costs ~1%. Bare throughput varies by ~1% run to run on an
  idle machine, so 0.95 fails a governor that reacts later than ~1 s and passes a working one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import build_c
from test_profile_live import _text_bytes_at_probes, check_leak, leaky, profile_while, start, truth

from nativewatch.malloc_profile import run_profile
from nativewatch.malloc_profile.attach import RUNGS, choose_rung, supported_rungs
from nativewatch.sources.bpfsys import prog_ids, prog_name

pytestmark = pytest.mark.bpf

OUR_PROGRAMS = re.compile(r"^on_(alloc|free)")


def our_programs() -> list[str]:
    return [n for n in (prog_name(i) for i in prog_ids()) if n and OUR_PROGRAMS.match(n)]


def test_this_kernel_offers_every_rung_and_session_is_chosen(bpf_available):
    support = {s.rung: s for s in supported_rungs()}
    assert set(support) == set(RUNGS)
    assert all(s.ok for s in support.values()), support
    assert choose_rung() == "session"
    for rung in RUNGS:
        assert choose_rung(rung) == rung
    with pytest.raises(ValueError):
        choose_rung("kprobe")


@pytest.mark.parametrize("rung", RUNGS)
def test_each_forced_rung_finds_the_leak_with_the_same_bytes(bpf_available, rung):
    target = start(leaky())
    try:
        exact, replies = profile_while(target, ["go 1500"], mode="exact", via=rung)
        assert exact.via == rung
        check_leak(exact, truth(replies[0], "leaked"), exact=True)
        sampled, replies = profile_while(target, ["go 6000"], mode="sampled", via=rung)
        assert sampled.via == rung
        check_leak(sampled, truth(replies[0], "leaked"), exact=False)
        assert target.proc.poll() is None
    finally:
        target.stop()


@pytest.mark.parametrize("rung", RUNGS)
def test_sigkill_on_each_rung_leaves_no_probe_behind(bpf_available, rung, tmp_path):
    target = start(leaky())
    exe = Path(sys.executable).parent / "nativewatch"
    prof = subprocess.Popen([str(exe), "profile", "--pid", str(target.pid), "--duration", "120s", "--via", rung,
                             "--max-overhead", "none"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "NATIVEWATCH_STATE_DIR": str(tmp_path)})
    try:
        assert prof.stderr is not None
        line = prof.stderr.readline()
        assert "profiling pid" in line, line + prof.stderr.read()
        armed = _text_bytes_at_probes(target.pid)
        assert armed and all(mem == b"\xcc" for mem, _ in armed)  # every point really armed
        assert our_programs()
        assert "done leaked=" in target.ask("go 200")

        prof.send_signal(signal.SIGKILL)
        prof.wait(timeout=10)
        deadline = time.monotonic() + 5  # the kernel frees the programs after the last fd closes
        while our_programs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert our_programs() == []
        for mem, want in _text_bytes_at_probes(target.pid):
            assert mem == want
        assert "done leaked=" in target.ask("go 200") and target.proc.poll() is None
    finally:
        if prof.poll() is None:
            prof.kill()
        target.stop()


class RateTarget:
    def __init__(self, calls_per_s: int) -> None:
        self.proc = subprocess.Popen([str(build_c("alloc_rate.c", cflags=["-O2", "-pthread"])), str(calls_per_s)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith("ready")

    def mark(self) -> tuple[int, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("mark\n")
        self.proc.stdin.flush()
        m = re.search(r"pairs=(\d+) ns=(\d+)", self.proc.stdout.readline())
        assert m
        return int(m.group(1)), int(m.group(2))

    def rate(self, a: tuple[int, int], b: tuple[int, int]) -> float:
        return (b[0] - a[0]) / ((b[1] - a[1]) / 1e9)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.mark.parametrize("via", ["session", "inject"])
def test_a_million_calls_a_second_stops_within_a_second_and_keeps_its_throughput(bpf_available, via):
    """Through uprobes a million calls a second cost more than the budget: the capture stops within a
    second. Through the in-process sampler they cost a fraction of it: the capture runs to its end.
    Either way the program keeps its throughput."""
    target = RateTarget(1_000_000)
    window_s = 6.0
    try:
        a = target.mark()
        time.sleep(3)
        bare = target.rate(a, target.mark())
        assert 500_000 / 2 < bare < 2_000_000 / 2  # about a million calls (half a million pairs) a second
        marks: list[tuple[int, int]] = []
        result = run_profile(target.proc.pid, window_s, on_attached=lambda: marks.append(target.mark()), via=via)
        while time.monotonic_ns() < marks[0][1] + window_s * 1e9:
            time.sleep(0.05)
        during = target.rate(marks[0], target.mark())
    finally:
        target.stop()
    if via == "inject":
        # the whole 6 s overlap nativewatch's own work on this 2-core machine: run-to-run noise under
        # the full suite is about 5% (0.99-1.04 alone); the sampler's own cost here is ~0.4% (its
        # estimate below) and uprobes without the governor lose ~40%
        assert during >= 0.90 * bare, (during, bare)
        assert result.via == "inject" and result.stopped_early is None, result.overhead
        assert result.duration_s >= window_s - 0.2 and result.overhead["estimated_peak"] < 0.05
        assert result.sampled_allocations > 0
        return
    assert during >= 0.95 * bare, (during, bare)
    stopped = result.stopped_early
    assert stopped is not None and result.duration_s < 1.0, (result.duration_s, result.overhead)
    assert re.match(r"stopped after \d+\.\d s: .*calls/s would cost \d+% of a core; budget 5%$", stopped), stopped
    assert stopped in result.problems
    assert result.overhead is not None and result.overhead["estimated_peak"] > 0.05


def test_a_quiet_leaking_program_is_captured_to_the_end_under_the_same_budget(bpf_available):
    target = start(leaky())
    stop = threading.Event()
    replies: list[str] = []

    def drive() -> None:
        while not stop.wait(0.3):
            replies.append(target.ask("go 5"))

    t = threading.Thread(target=drive)
    try:
        t.start()
        result = run_profile(target.pid, 4.0, mode="sampled", interval_bytes=4096)
    finally:
        stop.set()
        t.join(30)
        target.stop()
    assert result.stopped_early is None and result.duration_s >= 3.9, result.overhead
    assert result.overhead is not None and result.overhead["budget"] == 0.05
    assert 0 < result.overhead["estimated_peak"] < 0.05
    assert result.sites and result.sites[0].frames[0].startswith("leaky_cache_insert ("), \
        [s.frames[:1] for s in result.sites[:3]]


def test_per_hit_costs_are_measured_for_the_targets_own_allocator(bpf_available, tmp_path):
    """jemalloc is calibrated on jemalloc itself (its free has no emulatable first instruction, so its
    cost differs from glibc's), and the second capture takes the figure from the cache."""
    from test_profile_live import JEMALLOC

    env = {"NATIVEWATCH_STATE_DIR": str(tmp_path)}
    target = start(leaky(), env={"LD_PRELOAD": JEMALLOC})
    old = os.environ.get("NATIVEWATCH_STATE_DIR")
    os.environ.update(env)
    try:
        first = run_profile(target.pid, 0.3, max_overhead=None, via="session")
        second = run_profile(target.pid, 0.3, max_overhead=None, via="session")
    finally:
        if old is None:
            os.environ.pop("NATIVEWATCH_STATE_DIR")
        else:
            os.environ["NATIVEWATCH_STATE_DIR"] = old
        target.stop()
    assert first.allocator_kind == "jemalloc"
    costs = first.overhead["cost_ns_per_hit"]
    assert costs["source"] == "measured on the target's allocator", costs
    # a uprobe hit is a trap into the kernel and back: between 0.1 and 20 us on any x86 machine
    assert 100 < costs["alloc"] < 20_000 and 100 < costs["free"] < 20_000, costs
    again = second.overhead["cost_ns_per_hit"]
    assert again["source"].startswith("cached") and again["alloc"] == pytest.approx(costs["alloc"], abs=0.1)
    assert json.loads((tmp_path / "probe-costs.json").read_text())


def test_cli_text_and_json_say_how_it_attached_and_why_it_stopped(bpf_available, nativewatch_cli):
    target = RateTarget(1_000_000)
    try:
        out = nativewatch_cli("profile", "--pid", str(target.proc.pid), "--duration", "5s", "--via", "multi",
                              "--json", check=True)
        text = nativewatch_cli("profile", "--pid", str(target.proc.pid), "--duration", "5s", "--via", "session",
                               check=True)
        default = nativewatch_cli("profile", "--pid", str(target.proc.pid), "--duration", "2s", check=True)
    finally:
        target.stop()
    doc = json.loads(out.stdout)
    assert doc["via"] == "multi" and doc["overhead"]["budget"] == 0.05
    assert doc["overhead"]["stopped"].startswith("stopped after") and doc["duration_s"] < 1.0
    assert "attached via session" in text.stdout
    assert "stopped after" in text.stdout and "budget 5%" in text.stdout
    assert "attached via inject" in default.stdout and "stopped after" not in default.stdout, default.stdout
