"""The sampler object on its own (issue 13): self-contained, and its hooks' decisions, run in this
process through ctypes (no BPF, no ptrace): what it samples, what it remembers, what a free finds.

Sampling statistics: an allocation of s bytes at mean interval T is sampled with probability
p = 1 - exp(-s/T); over n allocations the sampled count is binomial, so the test allows 5 standard
deviations, sqrt(n p (1 - p)), around n p.
"""

from __future__ import annotations

import ctypes
import math
import struct

import pytest
from elftools.elf.elffile import ELFFile

from nativewatch.inject.safepoint import UNSAFE_LIBC
from nativewatch.inject.sampler import HOOKED, sampler_file
from nativewatch.malloc_profile import sampling


def test_the_object_imports_nothing_and_needs_no_library():
    sf = sampler_file()
    with open(sf.path, "rb") as f:
        elf = ELFFile(f)
        dyn = elf.get_section_by_name(".dynamic")
        assert dyn is not None
        assert not [t for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        dynsym = elf.get_section_by_name(".dynsym")
        undefined = [s.name for s in dynsym.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"] \
            if dynsym is not None else []
        assert undefined == []
    assert sf.layout["nexp"] == sampling.EXP_SLOTS
    assert sf.layout["slot_size"] == 64 and sf.layout["size"] > sf.layout["set"]
    assert all(f"nwh_{n}" in sf.symbols for n in HOOKED)


class InProcess:
    """The sampler loaded into this process, its real functions pointed at libc's."""

    def __init__(self) -> None:
        sf = self.sf = sampler_file()
        self.lib = ctypes.CDLL(sf.path)
        base = None
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5] == sf.path and int(parts[2], 16) == 0:
                    base = int(parts[0].split("-")[0], 16)
                    break
        assert base is not None
        self.base = base
        libc = ctypes.CDLL(None)
        for name in ("malloc", "free", "calloc", "realloc", "posix_memalign"):
            self.u64(self.base + sf.symbols[f"nwr_{name}"]).value = ctypes.cast(getattr(libc, name),
                                                                               ctypes.c_void_p).value
        state = self.u64(self.base + sf.symbols["nw_state"]).value
        assert state, "the constructor made no state mapping"
        self.state = state
        self.malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(self.base + sf.symbols["nwh_malloc"])
        self.free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.base + sf.symbols["nwh_free"])
        self.realloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
            self.base + sf.symbols["nwh_realloc"])
        self.posix_memalign = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                               ctypes.c_size_t)(self.base + sf.symbols["nwh_posix_memalign"])

    @staticmethod
    def u64(addr: int) -> ctypes.c_uint64:
        return ctypes.c_uint64.from_address(addr)

    def field(self, name: str) -> ctypes.c_uint64:
        return self.u64(self.state + self.sf.layout[name])

    def enable(self, interval: int) -> None:
        self.field("enabled").value = 0
        self.field("interval").value = interval
        self.field("sampled").value = 0
        self.field("set_full").value = 0
        self.field("unacked").value = 0
        if interval:
            table = sampling.exp_table(interval)
            ctypes.memmove(self.state + self.sf.layout["exp"], struct.pack(f"<{len(table)}Q", *table), 8 * len(table))
        n, size = self.sf.layout["nslots"], self.sf.layout["slot_size"]
        ctypes.memset(self.state + self.sf.layout["slots"], 0, n * size)
        ctypes.memset(self.state + self.sf.layout["set"], 0, 8 * self.sf.layout["set_slots"])
        self.field("enabled").value = 1

    def disable(self) -> None:
        self.field("enabled").value = 0

    def in_set(self, ptr: int) -> bool:
        n = self.sf.layout["set_slots"]
        data = ctypes.string_at(self.state + self.sf.layout["set"], 8 * n)
        return ptr in struct.unpack(f"<{n}Q", data)


@pytest.fixture(scope="module")
def sampler():
    s = InProcess()
    yield s
    s.disable()


def test_off_it_passes_through(sampler):
    sampler.disable()
    p = sampler.malloc(100)
    assert p and not sampler.in_set(p)
    sampler.free(p)
    assert sampler.field("sampled").value == 0


def test_every_call_is_sampled_at_interval_zero_and_a_free_forgets_it(sampler):
    sampler.enable(0)
    ptrs = [sampler.malloc(64 + i) for i in range(100)]
    assert sampler.field("sampled").value == 100 and all(sampler.in_set(p) for p in ptrs)
    grown = sampler.realloc(ptrs[0], 100_000)
    assert grown and sampler.in_set(grown) and (grown == ptrs[0] or not sampler.in_set(ptrs[0]))
    out = ctypes.c_void_p()
    assert sampler.posix_memalign(ctypes.byref(out), 64, 256) == 0 and out.value % 64 == 0
    assert sampler.in_set(out.value)
    for p in [grown, out.value, *ptrs[1:]]:
        sampler.free(p)
    assert not any(sampler.in_set(p) for p in [grown, out.value, *ptrs[1:]])
    sampler.disable()


@pytest.mark.parametrize("size", [64, 4096, 65536])
def test_sampled_share_follows_the_poisson_scheme(sampler, size):
    interval = 65536
    n = 20_000
    sampler.enable(interval)
    ptrs = []
    for _ in range(n):
        p = sampler.malloc(size)
        ptrs.append(p)
        if len(ptrs) >= 256:  # keep the live set small: sampled ones are remembered
            for q in ptrs:
                sampler.free(q)
            ptrs.clear()
    for q in ptrs:
        sampler.free(q)
    got = sampler.field("sampled").value
    sampler.disable()
    p = -math.expm1(-size / interval)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(got - n * p) <= 5 * sd + 1, (got, n * p, sd)
    assert sampler.field("set_full").value == 0


def test_a_full_bucket_drops_the_sample_and_counts_it(sampler):
    """Eight addresses fill a bucket; a ninth that hashes there is not sampled (counted instead), and
    frees find exactly the ones kept. The "real" malloc here hands out chosen addresses."""
    buckets = sampler.sf.layout["set_slots"] // 8
    shift = 64 - int(math.log2(buckets))

    def bucket(ptr: int) -> int:
        return (((ptr >> 4) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> shift

    want = bucket(0x10000)
    chosen, cand = [], 0x10000
    while len(chosen) < 9:
        if bucket(cand) == want:
            chosen.append(cand)
        cand += 16
    queue = list(chosen)
    fake_malloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(lambda _n: queue.pop(0))
    fake_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _p: None)
    real_slot = sampler.u64(sampler.base + sampler.sf.symbols["nwr_malloc"])
    free_slot = sampler.u64(sampler.base + sampler.sf.symbols["nwr_free"])
    saved = (real_slot.value, free_slot.value)
    real_slot.value = ctypes.cast(fake_malloc, ctypes.c_void_p).value
    free_slot.value = ctypes.cast(fake_free, ctypes.c_void_p).value
    try:
        sampler.enable(0)
        got = [sampler.malloc(32) for _ in chosen]
        assert got == chosen
        assert sampler.field("set_full").value == 1 and sampler.field("sampled").value == 8
        assert [sampler.in_set(p) for p in chosen] == [True] * 8 + [False]
        for p in chosen:
            sampler.free(p)
        assert not any(sampler.in_set(p) for p in chosen)
    finally:
        sampler.disable()
        real_slot.value, free_slot.value = saved


@pytest.mark.parametrize("name,unsafe", [
    ("malloc", True), ("_int_malloc", True), ("__libc_free", True), ("dl_iterate_phdr", True),
    ("_dl_open", True), ("dlopen", True), ("fork", True), ("__run_exit_handlers", True),
    ("pthread_create", True), ("backtrace", True), ("tcache_init", True),
    ("read", False), ("epoll_wait", False), ("__GI___clock_nanosleep", False), ("fgets", False),
    ("_IO_file_underflow", False), ("start_thread", False), ("__libc_start_call_main", False),
    ("pthread_cond_wait", False),
])
def test_libc_functions_that_hold_what_dlopen_needs(name, unsafe):
    assert bool(UNSAFE_LIBC.search(name)) is unsafe, name
