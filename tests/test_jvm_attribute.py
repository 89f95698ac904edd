"""JVM attribution on captured NMT detail + smaps of the same process (JDK 11/17/21/25), and its
invariants under fuzzing (issue 7). Live JVMs are in test_jvm_live.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.attribute import attribute_process
from nativewatch.jvm import attribute as ja
from nativewatch.jvm import nmt
from nativewatch.model import CATEGORIES
from nativewatch.sources import procfs
from tests.conftest import SAMPLES

VERSIONS = (11, 17, 21, 25)


def _load(version: int):
    sm = procfs.parse_smaps((SAMPLES / f"jdk{version}-proc-smaps.txt").read_bytes())
    base = attribute_process(sm.mappings, thread_sps={})
    text = (SAMPLES / f"jdk{version}-detail.txt").read_text()
    report, vmap = nmt.parse_summary(text), nmt.parse_detail_regions(text)
    ver = (SAMPLES / f"jdk{version}-vm.version.txt").read_text().split("version ")[1].split()[0]
    regions = tuple(g for r in vmap.regions for g in ja._with_gaps(r))
    fetch = ja.NmtFetch(report, regions, "detail", "nmt-detail", ver, ())
    return sm, base, report, vmap, fetch


@pytest.mark.parametrize("version", VERSIONS)
def test_detail_categories_sum_exactly_to_smaps_rss(version):
    sm, base, _report, _vmap, fetch = _load(version)
    res = ja.refine(base, fetch, None, None)
    assert res.sources == ["smaps", "nmt-detail"]
    assert set(res.categories) == set(CATEGORIES)
    assert sum(res.categories.values()) == sm.rss
    assert res.nmt["source"] == "nmt-detail" and res.nmt["version"].startswith(str(version))
    # No pagemap in a fixture: the split of mixed VMAs is by size, and the result says so.
    assert any("pagemap" in p for p in res.problems)


@pytest.mark.parametrize("version", VERSIONS)
def test_detail_each_mmap_category_is_the_rss_of_its_regions(version):
    sm, base, report, vmap, fetch = _load(version)
    res = ja.refine(base, fetch, None, None)
    by_name: dict[str, list[nmt.NmtRegion]] = {}
    for r in vmap.regions:
        by_name.setdefault("Thread" if r.category == "Thread Stack" else r.category, []).append(r)
    for name, regs in by_name.items():
        got = res.nmt["categories"][name]["resident_mmap_bytes"]
        committed = report.category(name).mmap_committed_bytes
        inside = overlapping = 0
        for m in sm.mappings:
            over = [r for r in vmap.regions if r.start < m.end and r.end > m.start]
            mine = [r for r in over if r in regs]
            if not mine:
                continue
            overlapping += m.rss
            # A mapping lying wholly inside this category's reservations is all this category's.
            if len(over) == len(mine) and any(r.start <= m.start and m.end <= r.end for r in mine):
                inside += m.rss
        assert inside <= got <= overlapping, name
        assert got <= committed, f"{name}: resident {got} > committed {committed}"


@pytest.mark.parametrize("version", VERSIONS)
def test_detail_java_heap_equals_rss_of_heap_mappings(version):
    sm, base, _report, vmap, fetch = _load(version)
    res = ja.refine(base, fetch, None, None)
    heap = [r for r in vmap.regions if r.category == "Java Heap"]
    rss = sum(m.rss for m in sm.mappings for r in heap if r.start <= m.start and m.end <= r.end)
    assert res.categories["heap"] == rss > 0


@pytest.mark.parametrize("version", VERSIONS)
def test_detail_malloc_categories_follow_nmt_malloc(version):
    """Without a shortfall every malloc-backed category gets exactly NMT's figure (KB-truncated)."""
    _sm, base, report, _vmap, fetch = _load(version)
    res = ja.refine(base, fetch, None, None)
    cats = res.nmt["categories"]
    short = sum(c["resident_malloc_bytes"] for c in cats.values()) < sum(
        max(0, c["committed_bytes"] - c["mmap_committed_bytes"]) for n, c in cats.items()
        if n not in ("Java Heap", "Shared class space"))
    for c in report.categories:
        want = c.committed_bytes - c.mmap_committed_bytes
        got = res.nmt["categories"][c.name]["resident_malloc_bytes"]
        if c.name in ("Java Heap", "Shared class space"):
            assert got == 0
        elif short:
            assert got <= want
        else:
            assert got == max(0, want), c.name
    other = report.category("Other")
    assert res.categories["direct"] >= (other.malloc_bytes if not short else 0)


def test_internal_is_direct_only_on_jdk8():
    text = ("Total: reserved=10KB, committed=10KB\n-  Java Heap (reserved=4KB, committed=4KB)\n"
            "(mmap: reserved=4KB, committed=4KB)\n-  Internal (reserved=6KB, committed=6KB)\n(malloc=6KB #1)\n")
    report = nmt.parse_summary(text)
    assert ja._internal_is_direct(report, "1.8.0_392-b08")
    assert not ja._internal_is_direct(report, "11.0.13+8")
    assert ja._internal_is_direct(report, None)  # JDK 8 category set, no version known
    assert not ja._internal_is_direct(nmt.parse_summary((SAMPLES / "jdk17-summary.txt").read_text()), None)


def test_summary_only_places_heap_by_reservation_size():
    sm, base, report, vmap, _fetch = _load(21)
    fetch = ja.NmtFetch(report, None, "summary", None, "21.0.8", ())
    res = ja.refine(base, fetch, None, None)
    assert res.sources == ["smaps", "nmt-summary"]
    assert sum(res.categories.values()) == sm.rss
    heap = [r for r in vmap.regions if r.category == "Java Heap"][0]
    rss = sum(m.rss for m in sm.mappings if heap.start <= m.start and m.end <= heap.end)
    assert res.categories["heap"] == rss
    # Direct buffers (malloc'd) are fully paid before any mmap estimate.
    assert res.categories["direct"] == report.category("Other").malloc_bytes


def test_system_map_regions_from_jdk25_capture():
    sm_text = (SAMPLES / "jdk25-System.map.txt").read_text()
    report = nmt.parse_summary((SAMPLES / "jdk25-summary.txt").read_text())
    regs = ja._system_map_regions(nmt.parse_system_map(sm_text), report)
    assert regs and all(a[1] <= b[0] for a, b in zip(regs, regs[1:], strict=False))
    assert {r[2] for r in regs} >= {"Java Heap", "Class", "Metaspace", "Code", "GC", "Thread Stack"}


# ---- invariants ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**9), max_size=12))
def test_apportion_sums_exactly(total, weights):
    parts = ja.apportion(total, weights)
    assert len(parts) == len(weights)
    if weights:
        assert sum(parts) == total and all(p >= 0 for p in parts)


_mapping = st.builds(
    lambda start, npages, rss_pages, anon, kind: (start, npages, min(rss_pages, npages), anon, kind),
    st.integers(0, 200), st.integers(1, 40), st.integers(0, 40), st.booleans(),
    st.sampled_from(["anon", "file", "malloc-arena"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(_mapping, max_size=12), st.lists(st.tuples(st.integers(0, 400), st.integers(1, 30),
                                                           st.sampled_from(["Java Heap", "GC", "Code", "Other"]),
                                                           st.booleans()), max_size=10),
       st.dictionaries(st.sampled_from(["Other", "Symbol", "GC", "Thread"]), st.integers(0, 1 << 24)),
       st.booleans())
def test_refine_always_sums_to_rss(maps, regions, malloc, with_present):
    page = 4096
    ms, cur = [], 0x10000
    for start, npages, rss_pages, anon, _kind in maps:
        lo = cur + start * page
        path = "" if anon else "/usr/lib/libfake.so"
        ms.append(procfs.Mapping(lo, lo + npages * page, "rw-p", 0, "00:00" if anon else "fe:00",
                                 0 if anon else 7, path, {"Rss": rss_pages * page, "Anonymous": rss_pages * page}))
        cur = lo + npages * page
    base = attribute_process(ms, thread_sps={})
    regs = tuple((0x10000 + s * page, 0x10000 + (s + n) * page, name, c) for s, n, name, c in regions)
    lines = ["Total: reserved=1KB, committed=1KB"]
    for name, v in malloc.items():
        lines += [f"-  {name} (reserved={v // 1024}KB, committed={v // 1024}KB)", f"(malloc={v // 1024}KB #1)"]
    report = nmt.parse_summary("\n".join(lines))
    fetch = ja.NmtFetch(report, regs, "detail", "nmt-detail", "17.0.1", ())
    present = (lambda lo, hi: (hi - lo) // 2) if with_present else None
    res = ja.refine(base, fetch, None, present)
    assert sum(res.categories.values()) == sum(m.rss for m in ms)
    assert all(v >= 0 for v in res.categories.values())


@pytest.mark.parametrize("version", VERSIONS)
def test_hsperfdata_path_finds_heap_and_class_space(version):
    """NMT off: the heap and class-space reservations come from hsperfdata's max capacities."""
    from nativewatch.jvm import hsperf

    sm, base, _report, vmap, _fetch = _load(version)
    pd = hsperf.parse_hsperfdata((SAMPLES / f"hsperfdata-jdk{version}.bin").read_bytes())
    off = ja.NmtFetch(None, None, "off", None, f"{version}.0", ("native memory tracking is not enabled",))
    res = ja.refine(base, off, pd, None)
    assert res.sources == ["smaps", "hsperfdata"]
    assert sum(res.categories.values()) == sm.rss
    heap = [r for r in vmap.regions if r.category == "Java Heap"][0]
    assert res.nmt["categories"]["Java Heap"]["reserved_bytes"] == heap.end - heap.start == 512 << 20
    rss = sum(m.rss for m in sm.mappings if heap.start <= m.start and m.end <= heap.end)
    assert res.categories["heap"] == rss
    cls = [r for r in vmap.regions if r.category == "Class" and r.end - r.start == 1 << 30]
    cls_rss = sum(m.rss for m in sm.mappings if cls and cls[0].start <= m.start and m.end <= cls[0].end)
    assert res.nmt["categories"]["Class"]["resident_bytes"] == cls_rss
