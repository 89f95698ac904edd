"""Resident-growth stacks from sampled first-touch page faults (issue 6).

`agent_load leakset 8192` writes 8 MiB/s of new pages through libc's memset, called from `leak_memset`.
memset is a leaf without a frame pointer, so a frame-pointer walk alone skips `leak_memset`; the
sampler's return-address hint must put it back. The estimated bytes of that stack must match what the
process made resident meanwhile (its Rss growth, from /proc), within the sampling error: at 1 fault in
8, 2 s of 8 MiB/s are ~500 samples (~5% relative error); ±25% bounds it generously.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.malloc_profile.elfimage import load_image
from nativewatch.sources.page_faults import _Symbols, with_return_hint

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
def _stop(pid: int) -> None:
    """SIGSTOP and wait until the process is really stopped (delivery is asynchronous)."""
    os.kill(pid, signal.SIGSTOP)
    for _ in range(500):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not stop")


def test_page_fault_stacks_name_the_function_that_calls_memset(bpf_available):
    from nativewatch.sources.page_faults import PageFaultSampler

    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    sampler = PageFaultSampler(8)
    p = subprocess.Popen([str(prog), "leakset", "8192"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        # The sampler's window and the RSS window must be the same: the program is stopped while its
        # counters are read and its RSS measured (the first collect parses libc, which takes a while).
        _stop(p.pid)
        sampler.collect({p.pid}, {p.pid})  # drop what came before "ready"
        sampler.per_pid.clear()
        rss0 = _rss(p.pid)
        os.kill(p.pid, signal.SIGCONT)
        time.sleep(2.0)
        _stop(p.pid)
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


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_symbols_resolve_after_exit_and_hold_no_files():
    """The per-pid symbolizer made while a process lives still names its frames once it has exited
    (an OOM post-mortem symbolizes a dead process), without holding any descriptor open: the parsed
    images live in the cache keyed by build id / inode identity."""
    if os.geteuid() != 0:
        pytest.skip("reading /proc/PID/map_files needs root")
    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    with open(prog, "rb") as f:
        img = load_image(f)
    fds0 = _open_fds()
    symbols = _Symbols()
    p = subprocess.Popen([str(prog), "hold", "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        maps = [ln.split() for ln in Path(f"/proc/{p.pid}/maps").read_text().splitlines()]
        base = min(int(m[0].split("-")[0], 16) for m in maps if len(m) >= 6 and m[5] == str(prog))
        leaf = base + img.functions["leak_grow"] + 4  # exact IP, then return addresses (looked up at -1)
        ret = base + img.functions["main"] + 1
        want = [f"leak_grow ({prog.name})", f"main ({prog.name})"]
        assert symbols.frames(p.pid, [leaf, ret]) == want
        # No descriptor held, even for a live process: files are opened only to be parsed (issue 16).
        assert symbols.sizes()["symbolizer_open_files"] == 0
        assert len(_open_fds()) == len(fds0) + 1  # only our pipe to the child
        # a return address one past a function's last byte belongs to that function, not the next
        assert symbols.frames(p.pid, [base + img.functions["leak_grow"]], first_is_return=True)[0] != \
            f"leak_grow ({prog.name})"
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert symbols.frames(p.pid, [leaf, ret]) == want
    assert symbols.frames(p.pid, [0x10])[0].startswith("0x10 ")  # outside any mapping: no crash
    symbols.forget_all_but(set())
    assert symbols._caches == {} and _open_fds() == fds0


@pytest.mark.bpf
def test_page_fault_symbolization_never_uses_bcc_symbol_caches(bpf_available, monkeypatch):
    """Regression guard: libbcc before 0.33 (Debian 12 ships 0.26) closes a random descriptor of the
    calling process whenever a symbol cache is made, refreshed or freed (an uninitialised fd in
    ProcSyms::ModulePath). The sampler must symbolize without bcc: every way into bcc's symbolizer
    fails here, and the frames must still be named."""
    import bcc
    from bcc.libbcc import lib

    from nativewatch.sources.page_faults import PageFaultSampler

    used: list[str] = []

    def refuse(what: str):
        def call(*_a, **_k):
            used.append(what)
            raise AssertionError(f"bcc symbolizer used: {what}")
        return call

    monkeypatch.setattr(bcc, "SymbolCache", refuse("SymbolCache"))
    monkeypatch.setattr(bcc.BPF, "sym", staticmethod(refuse("BPF.sym")))
    monkeypatch.setattr(bcc.BPF, "_sym_cache", staticmethod(refuse("BPF._sym_cache")))
    for fn in ("bcc_symcache_new", "bcc_symcache_refresh", "bcc_free_symcache", "bcc_symcache_resolve"):
        monkeypatch.setattr(lib, fn, refuse(fn))

    prog = build_c("agent_load.c", cflags=["-O1", "-fno-omit-frame-pointer"])
    sampler = PageFaultSampler(8)
    p = subprocess.Popen([str(prog), "leakset", "8192"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        sampler.collect({p.pid}, {p.pid})
        top = sampler.top(p.pid, 3)
        assert top, sampler.stats()
        assert top[0].frames[:3] != ("[unsymbolized]",)
        assert top[0].frames[0].startswith(("__memset", "memset")), top[0].frames
        assert top[0].frames[1].startswith("leak_memset "), top[0].frames
        p.kill()
        p.wait()
        sampler.collect(set(), set())  # forgets the pid: its symbolizer is closed, not bcc's cache freed
        assert sampler.symbols._caches == {}
    finally:
        p.kill()
        p.wait()
        sampler.close()
    assert used == []


def test_page_fault_stacks_without_frame_pointers_reach_main(bpf_available):
    """The wrapper program of the profile tests (built -O2 -fomit-frame-pointer, its allocator wrapper
    in its own library): a frame-pointer walk from a fault in malloc or memset stops at once. With
    stack copies unwound by CFI every new-page stack must run through leaky_cache_insert or
    churn_work, run_loop, to main; their estimated bytes must match the RSS growth (same tolerance as
    above) and repeats must be counted in the kernel from the walks handed back, not copied again."""
    from nativewatch.sources.page_faults import PageFaultSampler

    lib = build_c("xalloc_lib.c", name="libxalloc.so", cflags=["-O2", "-fomit-frame-pointer", "-fPIC", "-shared"])
    exe = build_c("wrapped_leak.c", cflags=["-O2", "-fomit-frame-pointer", "-pthread"], ldflags=[str(lib)])
    sampler = PageFaultSampler(8)
    p = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None

    def go(rounds: int) -> None:
        p.stdin.write(f"go {rounds}\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        assert p.stdout.readline().startswith("done")  # type: ignore[union-attr]

    try:
        assert p.stdout.readline().strip() == "ready"
        go(2000)  # the objects' CFI and symbols are parsed, the first walks learned
        time.sleep(0.5)
        sampler.collect({p.pid}, {p.pid})
        sampler.per_pid.clear()
        before = sampler.stats()
        rss0 = _rss(p.pid)
        for _ in range(3):
            go(4000)
        grown = _rss(p.pid) - rss0
        time.sleep(0.5)
        sampler.collect({p.pid}, {p.pid})
        stacks = sampler.top(p.pid, 50)
        after = sampler.stats()
        assert grown > 32 * MIB
        main = f"main ({exe.name})"
        whole = [s for s in stacks if main in s.frames]
        assert whole, [s.frames for s in stacks[:5]]
        top = max(whole, key=lambda s: s.bytes)
        i = top.frames.index(main)
        assert top.frames[i - 1] == f"run_loop ({exe.name})", top.frames
        assert top.frames[i - 2] in (f"leaky_cache_insert ({exe.name})", f"churn_work ({exe.name})"), top.frames
        assert sum(s.bytes for s in whole) >= 0.9 * sum(s.bytes for s in stacks)
        assert sum(s.bytes for s in stacks) == pytest.approx(grown, rel=0.25)
        copied = after["stacks_unwound"] - before["stacks_unwound"]
        samples = after["sampled"] - before["sampled"]
        assert copied < 0.2 * samples, (copied, samples)  # repeats were counted in the kernel
    finally:
        p.kill()
        p.wait()
        sampler.close()
