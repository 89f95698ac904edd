"""JVM source parsers against real captured output of JDK 11/17/21/25 (issue 7), plus fuzzing.

Expected figures are read off the captured text by eye and written here; the samples are the real
`jcmd` outputs in ../shared/samples (README there says how they were taken).
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nativewatch.jvm import attach, hsperf, nmt
from tests.conftest import SAMPLES

KB = 1024
VERSIONS = (11, 17, 21, 25)


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# ---- summary ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,heap_committed_kb,classes_count,other_kb,thread_stack_kb", [
    (11, 262144, 719, 98304, 1640),
    (17, 264192, 675, 98304, 1680),
    (21, 262144, 753, 98304, 1652),
    (25, 264192, 933, 98304, 1720),
])
def test_summary_key_figures_per_version(version, heap_committed_kb, classes_count, other_kb, thread_stack_kb):
    r = nmt.parse_summary(sample(f"jdk{version}-summary.txt"))
    assert r.enabled and not r.is_diff and r.problems == ()
    assert r.resolution_bytes == KB
    assert r.category("Java Heap").committed_bytes == heap_committed_kb * KB
    assert r.category("Java Heap").mmap_committed_bytes == heap_committed_kb * KB
    assert r.category("Class").figures["classes_count"] == classes_count
    assert r.category("Other").malloc_bytes == other_kb * KB
    thread = r.category("Thread")
    assert thread.figures["stack_committed"] == thread_stack_kb * KB
    # The Class sub-blocks must not overwrite the category's own figures.
    cls = r.category("Class")
    assert cls.reserved_bytes > cls.figures["class_space_reserved"] or version == 11


@pytest.mark.parametrize("version", VERSIONS)
def test_summary_categories_sum_to_total(version):
    r = nmt.parse_summary(sample(f"jdk{version}-summary.txt"))
    committed = sum(c.committed_bytes for c in r.categories)
    # Each category is printed rounded to KB independently: allow 1 KB per category.
    assert abs(committed - r.total["committed"]) <= len(r.categories) * KB
    malloc_backed = sum(c.committed_bytes - c.mmap_committed_bytes for c in r.categories)
    if "malloc" in r.total:  # JDK 17+ prints the malloc total
        assert abs(malloc_backed - r.total["malloc"]) <= len(r.categories) * KB


def test_summary_jdk11_thread_count_and_no_malloc_total():
    r = nmt.parse_summary(sample("jdk11-summary.txt"))
    assert r.category("Thread").figures["threads_count"] == 26
    assert "malloc" not in r.total
    assert r.category("Native Memory Tracking").figures["tracking_overhead"] == 180 * KB


def test_summary_jdk25_tag_annotations_are_not_figures():
    r = nmt.parse_summary(sample("jdk25-summary.txt"))
    cls = r.category("Class")
    assert cls.malloc_bytes == 86 * KB and cls.figures["malloc_count"] == 1233
    assert not any(k.startswith("tag") for c in r.categories for k in c.figures)
    assert r.category("Shared class space").figures["readonly"] == 0
    assert r.total["malloc"] == 106630 * KB


@pytest.mark.parametrize("name,unit", [
    ("jdk11-summary-scaleMB.txt", 1 << 20), ("jdk11-summary-scaleGB.txt", 1 << 30),
    ("jdk17-summary-scaleMB.txt", 1 << 20), ("jdk21-summary-scaleMB.txt", 1 << 20),
    ("jdk25-summary-scaleMB.txt", 1 << 20), ("jdk17-summary-scale1.txt", 1),
    ("jdk21-summary-scaleb.txt", 1), ("jdk25-summary-scale1.txt", 1),
])
def test_summary_scales(name, unit):
    r = nmt.parse_summary(sample(name))
    assert r.resolution_bytes == unit
    heap = r.category("Java Heap")
    # Coarse scales round each figure ("reserved=1GB" for 512 MiB at scale=GB).
    assert heap is not None and abs(heap.reserved_bytes - (512 << 20)) <= unit


def test_summary_scale_bytes_exact_figure():
    r = nmt.parse_summary(sample("jdk21-summary-scaleb.txt"))
    assert r.total["committed"] == 531566049
    assert r.category("Class").committed_bytes == 635030
    assert r.category("Thread").figures["stack_committed"] == 2138112


@pytest.mark.parametrize("version,other_delta_kb,thread_delta_count", [
    (11, 24576, 4), (17, 24576, 4), (21, 24576, 4), (25, 24576, 4),
])
def test_summary_diff_deltas(version, other_delta_kb, thread_delta_count):
    r = nmt.parse_summary(sample(f"jdk{version}-summary.diff.txt"))
    assert r.is_diff
    other = r.category("Other")
    assert other.deltas["committed"] == other_delta_kb * KB
    assert other.deltas["malloc"] == other_delta_kb * KB
    assert r.category("Thread").deltas["threads_count"] == thread_delta_count
    assert r.category("Code").deltas.get("committed", 0) == 0


def test_summary_diff_negative_and_unitless_deltas():
    r = nmt.parse_summary(sample("jdk17-summary.diff.txt"))
    # "(arena=36KB +5 #62 +8)": JDK 17 drops the unit of the arena delta; it is in the report's scale.
    assert r.category("Thread").deltas["arena"] == 5 * KB
    assert r.category("Thread").deltas["arena_count"] == 8
    assert r.category("Arena Chunk").deltas["committed"] == -4 * KB
    assert r.total_deltas["committed"] == 96575 * KB


def test_summary_diff_jdk25_totals_on_own_lines():
    r = nmt.parse_summary(sample("jdk25-summary.diff.txt"))
    assert r.total["malloc"] == 131524 * KB and r.total_deltas["malloc"] == 24891 * KB
    assert r.total_deltas["mmap_committed"] == 416 * KB


def test_nmt_off_reply():
    r = nmt.parse_summary(sample("jdk17client-to-jdk25-nmt-off.txt"))
    assert not r.enabled and r.categories == ()


# ---- detail virtual memory map --------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_detail_regions_committed_match_summary_mmap(version):
    text = sample(f"jdk{version}-detail.txt")
    vm = nmt.parse_detail_regions(text)
    rep = nmt.parse_summary(text)
    assert vm.problems == ()
    per: dict[str, int] = {}
    for r in vm.regions:
        per[r.category] = per.get(r.category, 0) + r.committed_bytes
        assert all(r.start <= s < e <= r.end for s, e in r.committed)
    per["Thread"] = per.pop("Thread Stack")
    for name, committed in per.items():
        assert committed == rep.category(name).mmap_committed_bytes, name
    # Every category with mmap'd memory has regions.
    assert {c.name for c in rep.categories if c.mmap_committed_bytes} <= set(per)


def test_detail_reserved_and_committed_without_subranges_is_fully_committed():
    vm = nmt.parse_detail_regions(sample("jdk21-detail.txt"))
    perf = [r for r in vm.regions if r.category == "Internal" and r.end - r.start == 32 * KB]
    assert perf and perf[0].committed == ((perf[0].start, perf[0].end),)


def test_detail_region_count_and_stack_regions():
    vm = nmt.parse_detail_regions(sample("jdk17-detail.txt"))
    stacks = [r for r in vm.regions if r.category == "Thread Stack"]
    assert len(stacks) == nmt.parse_summary(sample("jdk17-detail.txt")).category("Thread").figures["threads_count"]
    assert all(r.end - r.start == 1024 * KB for r in stacks)


def test_summary_only_text_has_no_regions():
    vm = nmt.parse_detail_regions(sample("jdk17-summary.txt"))
    assert vm.regions == () and vm.problems


def test_overlapping_regions_are_dropped_as_problem():
    text = ("Virtual memory map:\n[0x1000 - 0x5000] reserved 16KB for GC from\n"
            "[0x2000 - 0x3000] reserved 4KB for Code from\n\t[0x2000 - 0x3000] committed 4KB from\n")
    vm = nmt.parse_detail_regions(text)
    assert [r.category for r in vm.regions] == ["GC"]
    assert any("overlapping" in p for p in vm.problems)


# ---- System.map ---------------------------------------------------------------------------------

def test_system_map_jdk25():
    sm = nmt.parse_system_map(sample("jdk25-System.map.txt"))
    assert sm.problems == ()
    assert len(sm.entries) == 221  # "Number of mappings: 221"
    heap = [e for e in sm.entries if e.category == "Java Heap"]
    assert heap[0].start == 0xE0000000 and heap[0].rss_bytes == 101879808
    assert heap[2].path.endswith("classes.jsa")
    stacks = [e for e in sm.entries if e.category == "Thread Stack"]
    assert len(stacks) == 54 and stacks[0].tag == "STACK-4806-late-3"
    assert sum(e.rss_bytes for e in sm.entries) == 284217344  # the "rss:" total System.map prints


# ---- hsperfdata -----------------------------------------------------------------------------------

def _decoded(version: int) -> dict[str, str]:
    out = {}
    for line in sample(f"hsperfdata-decoded-jdk{version}.txt").splitlines():
        m = re.match(r"^(\S+)\s+type=(\w).*=\s(.*)$", line)
        if m and not line.startswith("magic"):
            out[m.group(1)] = m.group(3)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_hsperfdata_matches_decoded_capture(version):
    pd = hsperf.parse_hsperfdata((SAMPLES / f"hsperfdata-jdk{version}.bin").read_bytes())
    assert pd.problems == () and pd.version == (2, 0) and pd.accessible
    expected = _decoded(version)
    assert expected
    for name, text in expected.items():
        if text.startswith("'"):
            assert pd.str_value(name) == text.strip("'"), name
        else:
            assert pd.int_value(name) == int(text), name
    figs = hsperf.jvm_memory_figures(pd)
    assert figs["heap_capacity_bytes"] == sum(int(expected[f"sun.gc.generation.{g}.capacity"]) for g in (0, 1))


def test_hsperfdata_truncated_and_bad_magic():
    raw = (SAMPLES / "hsperfdata-jdk17.bin").read_bytes()
    assert hsperf.parse_hsperfdata(raw[:20]).problems
    assert hsperf.parse_hsperfdata(b"\0" * 64).problems[0].startswith("bad magic")
    cut = hsperf.parse_hsperfdata(raw[:2000])
    assert cut.problems and cut.values  # what could be read is kept


# ---- attach wire format ---------------------------------------------------------------------------

def _probe_requests() -> list[bytes]:
    return [eval(m) for m in re.findall(r"^REQUEST: (b'.*')$", sample("attach-protocol-probe.txt"), re.M)]


def test_encode_request_matches_captured_wire_bytes():
    reqs = _probe_requests()
    assert attach.encode_request("jcmd", ["VM.version"], 1) in reqs
    assert attach.encode_request("getversion", [], 1) in reqs
    assert attach.encode_request("getversion", ["options"], 1) in reqs
    assert attach.encode_request("jcmd", ["VM.version"], 2) in reqs
    assert attach.encode_request("jcmd", ["VM.native_memory summary scale=MB"], 2) in reqs
    assert attach.encode_request("properties", [], 1) in reqs


def test_encode_request_rejects_what_v1_cannot_carry():
    with pytest.raises(attach.AttachError):
        attach.encode_request("jcmd", ["a", "b", "c", "d"], 1)
    with pytest.raises(attach.AttachError):
        attach.encode_request("jcmd", ["x" * 1025], 1)
    with pytest.raises(attach.AttachError):
        attach.encode_request("jcmd", ["a\0b"], 2)
    assert attach.encode_request("jcmd", ["x" * 5000], 2).startswith(b"2\x005006\x00jcmd\x00")


def test_parse_reply_captured_replies():
    assert attach.parse_reply(b"0\n2 streaming") == (0, "2 streaming")
    code, out = attach.parse_reply(b"-1\nOperation getversion not recognized!")
    assert code == -1 and "not recognized" in out
    assert attach.parse_reply(b"101\n") == (101, "")
    for bad in (b"", b"hello\n", b"\xff\xfe\n0", b"0" * 40 + b"\n"):
        with pytest.raises(attach.AttachError):
            attach.parse_reply(bad)


# ---- fuzz: no parser raises on any input ------------------------------------------------------------

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_NMT_BITS = st.sampled_from([
    "Total: reserved=", "committed=", "KB", "MB", " +", " -", "#", "(", ")", "\n", "-  Java Heap (",
    "malloc=", "mmap: reserved=", "(  Metadata:   )", "(    reserved=", "[0x", " - 0x", "] reserved ",
    "and committed ", " for ", "Thread Stack", " from\n", "\t[0x", "] committed ", "Virtual memory map:\n",
    "Details:\n", "1", "0", "99999999999999999999", "ffff", "=", ", ", "peak=", "(at peak)", "tag=GC",
])


@_FUZZ
@given(st.lists(_NMT_BITS, max_size=80).map("".join) | st.text(max_size=400))
def test_fuzz_nmt_parsers_never_raise(text):
    r = nmt.parse_summary(text)
    assert all(c.name for c in r.categories)
    vm = nmt.parse_detail_regions(text)
    for a, b in zip(vm.regions, vm.regions[1:], strict=False):
        assert a.end <= b.start
    nmt.parse_system_map(text)


@_FUZZ
@given(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 200), st.binary(max_size=50))
def test_fuzz_mutated_samples_never_raise(which, pos, cut, junk):
    text = sample(["jdk11-detail.txt", "jdk17-summary.diff.txt", "jdk21-summary.txt",
                   "jdk25-System.map.txt"][which])
    p = pos % max(1, len(text))
    mutated = text[:p] + junk.decode("latin-1") + text[p + cut:]
    nmt.parse_summary(mutated)
    nmt.parse_detail_regions(mutated)
    nmt.parse_system_map(mutated)


@_FUZZ
@given(st.integers(0, 32767), st.binary(min_size=1, max_size=16), st.integers(0, 3))
def test_fuzz_hsperfdata_never_raises(pos, junk, which):
    raw = bytearray((SAMPLES / f"hsperfdata-jdk{VERSIONS[which]}.bin").read_bytes())
    raw[pos:pos + len(junk)] = junk
    hsperf.parse_hsperfdata(bytes(raw))
    hsperf.parse_hsperfdata(bytes(raw[: pos % 256]))


@_FUZZ
@given(st.binary(max_size=64))
def test_fuzz_hsperfdata_random_bytes(data):
    hsperf.parse_hsperfdata(struct.pack(">I", hsperf.MAGIC) + data)


@_FUZZ
@given(st.binary(max_size=100))
def test_fuzz_parse_reply_only_attach_error(data):
    try:
        code, out = attach.parse_reply(data)
    except attach.AttachError:
        return
    assert isinstance(code, int) and isinstance(out, str)


@_FUZZ
@given(st.binary(max_size=200))
def test_fuzz_stat_starttime_never_raises(data):
    from nativewatch.jvm.paths import parse_stat_starttime

    assert isinstance(parse_stat_starttime(data), int)
