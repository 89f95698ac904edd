"""procfs parsers: every smaps field, VmFlags, odd names; and no crash on any input (hypothesis).

Issue 2.
"""

from __future__ import annotations

from pathlib import Path

from conftest import SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nativewatch.attribute import attribute_process
from nativewatch.go.heap import GoArenas
from nativewatch.snapshot import parse_mountinfo_shmem
from nativewatch.sources.procfs import (
    parse_maps,
    parse_rollup,
    parse_smaps,
    parse_status,
    parse_thread_syscall,
)

SMAPS = b"""55ac0d22a000-55ac0d43a000 rw-p 00000000 00:00 0                          [heap]
Size:               2112 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                2060 kB
Pss:                2060 kB
Pss_Dirty:          2060 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:      2060 kB
Referenced:         2060 kB
Anonymous:          2060 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:      2048 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  4 kB
SwapPss:               4 kB
Locked:                0 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me ac sd
7f00000000-7f00001000 rw-p 00000000 00:00 0                              [anon:jemalloc pages]
Rss:                   4 kB
7f00001000-7f00002000 r--p 00000000 fe:00 123                            /tmp/with space/x (deleted)
Rss:                   4 kB
Anonymous:             0 kB
"""


def test_smaps_parses_every_field_in_bytes_and_vmflags():
    r = parse_smaps(SMAPS)
    assert not r.problems
    heap, anon, deleted = r.mappings
    assert heap.path == "[heap]" and heap.rss == 2060 * 1024 and heap.swap == 4096
    assert heap.fields["AnonHugePages"] == 2048 * 1024
    assert heap.fields["THPeligible"] == 1  # unitless numbers are kept as they are
    assert heap.vmflags == ("rd", "wr", "mr", "mw", "me", "ac", "sd")
    assert anon.anon_name == "jemalloc pages" and anon.is_anonymous
    assert deleted.path == "/tmp/with space/x (deleted)" and deleted.deleted and not deleted.is_anonymous


def test_smaps_parse_of_every_sample_has_no_problems():
    files = list(SAMPLES.glob("**/*-smaps.txt")) + list(SAMPLES.glob("*-proc-smaps.txt"))
    assert len(files) >= 10
    for f in files:
        r = parse_smaps(f.read_bytes())
        assert not r.problems, (f, r.problems[:3])
        assert r.mappings


def test_maps_and_smaps_agree_on_mappings():
    a = parse_maps((SAMPLES / "jdk17-proc-maps.txt").read_bytes())
    b = parse_smaps((SAMPLES / "jdk17-proc-smaps.txt").read_bytes())
    assert not a.problems
    # maps and smaps were read a moment apart from a running JVM: the layouts nearly coincide.
    common = {(m.start, m.end) for m in a.mappings} & {(m.start, m.end) for m in b.mappings}
    assert len(common) >= 0.9 * len(b.mappings)


def test_status_fields():
    st_ = parse_status(b"Name:\tjava\nPid:\t42\nNSpid:\t42\t1\nThreads:\t31\nVmRSS:\t  1024 kB\n"
                       b"Uid:\t1000\t1000\t1000\t1000\nSigCgt:\t0000000181005ccf\nState:\tS (sleeping)\n")
    assert st_.nspid == (42, 1) and st_.threads == 31 and st_.vmrss_bytes == 1 << 20
    assert st_.uid == (1000, 1000, 1000, 1000)
    assert st_.sigcgt >> 2 & 1  # SIGQUIT (3) is bit 2
    assert st_.state == "S"


def test_thread_syscall_stack_pointer():
    assert parse_thread_syscall(b"202 0x7f 0x80 0x0 0x0 0x0 0x0 0x7ffc1000 0x7f000\n") == 0x7FFC1000
    assert parse_thread_syscall(b"-1 0x7ffc2000 0x401000\n") == 0x7FFC2000
    assert parse_thread_syscall(b"running\n") is None
    assert parse_thread_syscall(b"") is None


def test_truncated_smaps_keeps_what_it_read():
    cut = SMAPS[: SMAPS.index(b"Referenced")] + b"Refer"
    r = parse_smaps(cut)
    assert r.mappings[0].rss == 2060 * 1024
    assert r.problems


def test_garbage_numbers_are_problems_not_values():
    r = parse_smaps(b"00400000-00401000 r-xp 00000000 fe:00 1 /bin/x\nRss: lots kB\nPss: -5 kB\n")
    assert r.mappings[0].rss == 0 and len(r.problems) == 2


def test_huge_smaps_parses():
    block = b"%x-%x rw-p 00000000 00:00 0 \nRss:  4 kB\nAnonymous:  4 kB\n"
    data = b"".join(block % (0x10000000 + i * 0x2000, 0x10001000 + i * 0x2000) for i in range(40000))
    r = parse_smaps(data)
    assert len(r.mappings) == 40000 and r.rss == 40000 * 4096


_lines = st.lists(st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"Rss: 4 kB", b"VmFlags: rd", b"0-1000 rw-p 0 00:00 0", b"ffff-0 r 0 0 0 /x",
                     b"Anonymous: 99999999999999999999 kB", b"Swap:", b"7f-80 rw-s 0 00:01 5 /memfd:a (deleted)",
                     b"c000000000-c004000000 rw-p 0 00:00 0 ", b"[heap]", b"Name:\t", b"NSpid: x y"]),
), max_size=60)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_lines)
def test_parsers_never_raise_and_attribution_sums(lines):
    data = b"\n".join(lines)
    sm = parse_smaps(data)
    parse_maps(data)
    parse_rollup(data)
    parse_status(data)
    parse_thread_syscall(data)
    parse_mountinfo_shmem(data)
    for heap in (None, GoArenas()):
        att = attribute_process(sm.mappings, thread_sps={1: 0x7F, 2: None}, managed_heap=heap)
        assert sum(att.categories.values()) == sm.rss


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000))
def test_parsers_never_raise_on_raw_bytes(data):
    parse_smaps(data)
    parse_maps(data)
    parse_status(data)
    parse_rollup(data)
    parse_mountinfo_shmem(data)


def test_fast_and_line_parsers_agree_on_every_sample():
    from nativewatch.sources.procfs import _parse_smaps_lines

    def key(r):
        return [(m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path, dict(m.fields), m.vmflags)
                for m in r.mappings]

    for f in list(SAMPLES.glob("**/*-smaps.txt")) + [Path("/proc/self/smaps")]:
        data = f.read_bytes()
        fast, slow = parse_smaps(data), _parse_smaps_lines(data)
        assert type(fast.mappings[0].fields).__name__ == "_SmapsFields", f  # the fast path was taken
        assert key(fast) == key(slow), f


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Rss:   4 kB", b"Pss: 8 kB", b"Swap: 0 kB", b"Anonymous: x kB",
                                 b"THPeligible:    0", b"VmFlags: rd wr", b"1000-2000 rw-p 0 00:00 0 ",
                                 b"3000-4000 r--p 0 fe:00 9 /lib/a.so", b"Bogus line"]), max_size=40))
def test_fast_path_equals_line_parser_on_kernel_shaped_fragments(lines):
    from nativewatch.sources.procfs import _parse_smaps_lines

    data = b"\n".join(lines) + b"\n"
    fast, slow = parse_smaps(data), _parse_smaps_lines(data)
    assert [(m.start, m.rss, m.pss, m.swap, m.anonymous) for m in fast.mappings] == \
        [(m.start, m.rss, m.pss, m.swap, m.anonymous) for m in slow.mappings]
    assert bool(fast.problems) == bool(slow.problems)
