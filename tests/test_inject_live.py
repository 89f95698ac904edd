"""The in-process sampler's profiles against ground truth and against the uprobe path (issue 13).

Each target runs in its own mount namespace where the directory holding the sampler object is
covered by an empty tmpfs: the object can only have arrived through the memfd nativewatch made
inside the target. The same target is profiled via inject and via uprobes (session) in turn, and both
are checked against the leak the program reports (check_leak: sampled tolerance 15%, its reasoning in
test_profile_live.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_c
from test_profile_live import JEMALLOC, TCMALLOC, check_leak, leaky, profile_while, start, truth

from nativewatch.inject.sampler import SAMPLER_PATH

pytestmark = pytest.mark.bpf

ROUNDS = 8000
CFLAGS = {"fp": ("-O2", "-fno-omit-frame-pointer"), "no-fp": ("-O2", "-fomit-frame-pointer")}
PRELOAD = {"glibc": None, "jemalloc": JEMALLOC, "tcmalloc": TCMALLOC}


def start_in_own_namespace(binary: Path, tmp_path: Path, preload: str | None):
    hidden = tmp_path / "app"
    hidden.mkdir()
    sampler_dir = SAMPLER_PATH.parent
    env = f"LD_PRELOAD={preload} " if preload else ""
    script = (f"mount -t tmpfs nw {sampler_dir} && mount -t tmpfs nw {hidden} && cp {binary} {hidden}/app "
              f"&& exec env {env}{hidden}/app")
    target = start(binary, argv=["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    assert not (hidden / "app").exists() and SAMPLER_PATH.exists()  # only the target's namespace differs
    return target


def _leak_frames(result) -> tuple[str, ...]:
    top = next(s for s in result.sites if s.frames[0].startswith("leaky_cache_insert ("))
    return top.frames


@pytest.mark.parametrize("build", list(CFLAGS))
@pytest.mark.parametrize("allocator", list(PRELOAD))
def test_leak_via_inject_matches_truth_and_the_uprobe_path(bpf_available, tmp_path, allocator, build):
    preload = PRELOAD[allocator]
    if preload and not Path(preload).exists():
        pytest.fail(f"{preload} missing: run scripts/setup.sh")
    target = start_in_own_namespace(leaky(CFLAGS[build]), tmp_path, preload)
    try:
        injected, replies = profile_while(target, [f"go {ROUNDS}"], mode="sampled", via="inject")
        assert injected.via == "inject" and injected.inject and injected.inject["patched_slots"] > 0
        check_leak(injected, truth(replies[0], "leaked"), exact=False)
        assert injected.allocator_kind == allocator
        uprobes, replies = profile_while(target, [f"go {ROUNDS}"], mode="sampled", via="session")
        check_leak(uprobes, truth(replies[0], "leaked"), exact=False)
        # the same stack either way, down to main (the app's own frames; the uprobe path and the
        # sampler end their stacks above the allocator in the same place)
        app = [f for f in _leak_frames(injected) if f.endswith("(app)")]
        assert app[:2] == ["leaky_cache_insert (app)", "main (app)"], _leak_frames(injected)
        assert app == [f for f in _leak_frames(uprobes) if f.endswith("(app)")]
        assert not any("nativewatch-sampler" in f or f.startswith("nwh_") for s in injected.sites for f in s.frames)
        assert target.proc.poll() is None
    finally:
        target.stop()


@pytest.mark.parametrize("allocator", list(PRELOAD))
def test_cpp_new_via_inject_counts_once(bpf_available, allocator):
    """operator new is hooked where it is imported; libstdc++'s own new calls malloc through its GOT,
    which is left alone, so an object counts once. ~28 MiB at 16 KiB: 15% is > 6 standard errors."""
    preload = PRELOAD[allocator]
    exe = build_c("leaky_sites_cpp.cpp", cflags=["-O2"], ldflags=["-lstdc++"])
    target = start(exe, env={"LD_PRELOAD": preload} if preload else None)
    try:
        result, replies = profile_while(target, ["go 12000"], mode="sampled", interval=16384, via="inject")
        leaked = truth(replies[0], "leaked")
        assert result.via == "inject"
        top = result.sites[0]
        assert top.frames[0].startswith("cache::Cache::insert("), [s.frames[:2] for s in result.sites[:3]]
        assert abs(top.outstanding_bytes - leaked) <= 0.15 * leaked, (top.outstanding_bytes, leaked)
    finally:
        target.stop()


@pytest.mark.parametrize("via", ["inject", "session"])
def test_buffers_libstdcxx_allocates_and_frees_itself_are_counted_once(bpf_available, via):
    """std::string's buffers come and go inside libstdc++ (through its own GOT for operator new and
    delete): the kept ones are found, the churned ones are not left behind as false leaks, and (via
    inject) glibc's reallocarray, which ends in realloc through libc's own GOT, counts once. 5,000 x
    2,001 bytes and 4 MB of arrays at 16 KiB: relative standard errors ~3% and ~6%; tolerance 25%.
    (The uprobe path attributes reallocarray's blocks to a wrong caller and over-counts them when
    sampled: a known problem of that path, not checked here.)"""
    exe = build_c("inject_strings.cpp", cflags=["-O2"], ldflags=["-lstdc++"])
    target = start(exe)
    try:
        commands = ["go 5000 2000", "rarray 1000"] if via == "inject" else ["go 5000 2000"]
        result, replies = profile_while(target, commands, mode="sampled", interval=16384, via=via)
        assert result.via == via
        leaked = truth(replies[0], "leaked")
        kept = sum(s.outstanding_bytes for s in result.sites if any(f.startswith("kept_strings(") for f in s.frames))
        churned = sum(s.outstanding_bytes for s in result.sites
                      if any(f.startswith("churn_strings(") for f in s.frames))
        made = sum(s.allocated_bytes for s in result.sites if any(f.startswith("churn_strings(") for f in s.frames))
        assert abs(kept - leaked) <= 0.25 * leaked, (kept, leaked, [s.frames[:4] for s in result.sites[:4]])
        assert made > 4 * leaked and churned <= 0.02 * made, (churned, made)
        if via == "inject":
            arrays = truth(replies[1], "leaked")
            held = sum(s.outstanding_bytes for s in result.sites if any(f.startswith("array_blocks(") for f in s.frames))
            assert abs(held - arrays) <= 0.25 * arrays, (held, arrays)
    finally:
        target.stop()
