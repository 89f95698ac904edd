"""Attribution over real captured smaps (../shared/samples): glibc, jemalloc, tcmalloc, Go, JVM layouts.

Issue 2. Fixtures have no live threads to ask for stack pointers, so they exercise the guard-page
fallback (every thread "running"); live tests cover the stack-pointer path.
"""

from __future__ import annotations

import re

import pytest
from conftest import SAMPLES

from nativewatch.attribute import attribute_process
from nativewatch.go.heap import GoArenas
from nativewatch.jvm.runtime import JVM
from nativewatch.runtimes.base import ProcessInfo
from nativewatch.runtimes.registry import detect
from nativewatch.sources.procfs import parse_rollup, parse_smaps

NATIVE = SAMPLES / "native"
GO = SAMPLES / "go"


def _load(path):
    return parse_smaps(path.read_bytes())



@pytest.mark.parametrize("name", ["glibc-default", "glibc-arena-max-2", "jemalloc", "tcmalloc"])
def test_native_samples_sum_exactly_to_rss_and_rollup(name):
    sm = _load(NATIVE / f"{name}-smaps.txt")
    assert not sm.problems
    att = attribute_process(sm.mappings, thread_sps=dict.fromkeys(range(9)))
    assert sum(att.categories.values()) == sm.rss
    rollup, problems = parse_rollup((NATIVE / f"{name}-smaps_rollup.txt").read_bytes())
    assert not problems
    # smaps_rollup is taken a moment after smaps by the capture script; same process, idle by then.
    assert abs(rollup["Rss"] - sm.rss) <= 64 * 1024


def test_glibc_default_finds_main_plus_eight_thread_arenas():
    sm = _load(NATIVE / "glibc-default-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps=dict.fromkeys(range(9)))
    info = (NATIVE / "glibc-default.malloc_info.txt").read_text()
    arenas_in_malloc_info = len(re.findall(r"^Arena \d+:", info, re.M))
    assert att.detail.malloc_arenas == arenas_in_malloc_info == 9
    assert att.detail.allocator == "glibc"
    kinds = [s.kind for s in att.shares]
    assert kinds.count("malloc-arena") == 16  # 8 heaps: rw part + PROT_NONE tail each


def test_arena_max_2_finds_one_secondary_arena():
    sm = _load(NATIVE / "glibc-arena-max-2-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps=dict.fromkeys(range(9)))
    assert att.detail.malloc_arenas == 2


def test_pthread_stacks_found_by_guard_pages_when_sps_unknown():
    sm = _load(NATIVE / "glibc-default-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps=dict.fromkeys(range(9)))
    stacks = [s for s in att.shares if s.kind == "thread-stack"]
    assert len(stacks) == 9  # 8 pthread stacks + [stack]
    assert all(s.mapping.size in (8 << 20, 132 << 10) or s.mapping.path == "[stack]" for s in stacks)
    assert any("guard pages" in p for p in att.problems)


def test_stack_pointer_picks_exactly_that_mapping():
    sm = _load(NATIVE / "glibc-default-smaps.txt")
    stack = next(m for m in sm.mappings if m.start == 0x7f14f0737000)
    att = attribute_process(sm.mappings, thread_sps={1: stack.start + 4096, 2: 0x10})
    stacks = [s.mapping.start for s in att.shares if s.kind == "thread-stack"]
    assert 0x7f14f0737000 in stacks
    assert not any("guard pages" in p for p in att.problems)


@pytest.mark.parametrize("name,allocator", [("jemalloc", "jemalloc"), ("tcmalloc", "tcmalloc")])
def test_preloaded_allocators_are_named_and_not_mistaken_for_glibc_arenas(name, allocator):
    sm = _load(NATIVE / f"{name}-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps={})
    assert att.detail.allocator == allocator
    assert "malloc-arena" not in {s.kind for s in att.shares}


@pytest.mark.parametrize("name", ["goprobe", "goprobe-nocgo"])
def test_go_heap_is_the_arena_rss(name):
    sm = _load(GO / f"{name}-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps={}, runtime="go", managed_heap=GoArenas())
    arena = next(m for m in sm.mappings if m.start == 0xC000000000)
    assert att.categories["heap"] == arena.rss
    assert {s.kind for s in att.shares if s.mapping.start == arena.start} == {"go-heap"}
    assert sum(att.categories.values()) == sm.rss
    stdout = (GO / f"{name}.stdout").read_text()
    stats = dict(kv.split("=") for kv in stdout.split()[2:])
    # The arena's rw part is exactly what the runtime took for heap and stack spans.
    assert arena.size == int(stats["HeapSys"]) + int(stats["StackSys"])


def test_go_cgo_sample_keeps_glibc_arenas_native():
    sm = _load(GO / "goprobe-smaps.txt")
    att = attribute_process(sm.mappings, thread_sps={}, runtime="go", managed_heap=GoArenas())
    assert att.detail.malloc_arenas >= 4
    assert att.detail.allocator == "glibc"


@pytest.mark.parametrize("jdk", ["jdk11", "jdk17", "jdk21", "jdk25"])
def test_jvm_samples_are_detected_and_sum_exactly(jdk):
    sm = _load(SAMPLES / f"{jdk}-proc-smaps.txt")
    # Detected from libjvm.so in the mappings alone: no /proc access.
    assert detect(ProcessInfo(1, "/nonexistent", "java", (), sm.mappings)) is JVM
    att = attribute_process(sm.mappings, thread_sps={}, runtime="jvm")
    assert sum(att.categories.values()) == sm.rss


def test_shmem_devices_from_mountinfo():
    from nativewatch.snapshot import parse_mountinfo_shmem

    text = (b"22 1 0:21 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw\n"
            b"23 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            b"24 1 0:45 / /run rw - tmpfs tmpfs rw\n")
    assert parse_mountinfo_shmem(text) == frozenset({"00:15", "00:2d"})


def test_private_file_mapping_cow_pages_are_native():
    data = (b"7f0000000000-7f0000004000 rw-p 00001000 fe:00 42 /usr/lib/libx.so\n"
            b"Rss: 16 kB\nAnonymous: 8 kB\n"
            b"7f0000004000-7f0000008000 rw-s 00000000 00:15 7 /dev/shm/seg\n"
            b"Rss: 16 kB\nAnonymous: 0 kB\n")
    sm = parse_smaps(data)
    att = attribute_process(sm.mappings, thread_sps={}, shmem_devs=frozenset({"00:15"}))
    assert att.categories["file"] == 8192 and att.categories["native"] == 8192
    assert att.categories["shmem"] == 16384
