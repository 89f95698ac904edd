"""The pure parts of the Node and Python runtimes (issue 15) on built memory images, plus fuzzing.

V8 chunk headers and pymalloc arena tables are laid out byte for byte the way the interpreters keep them
(the live tests check the same readers against real Node 18/20 and CPython 3.8-3.13); here each rule is
shown to hold on its own: what is accepted, what is refused, and no crash on any bytes.
"""

from __future__ import annotations

import io
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.attribute import attribute_process
from nativewatch.cpython.arenas import ENTRY, locate_table, parse_entries, read_table
from nativewatch.cpython.binary import parse_py_version
from nativewatch.node.limit import heap_limit, node_flags
from nativewatch.node.v8heap import CHUNK_ALIGN, HEADER_READ, find_chunks, parse_chunk, space_of
from nativewatch.runtimes.claim import claim_ranges
from nativewatch.runtimes.exe import elf_facts
from nativewatch.sources.procfs import Mapping

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BASE = 0x7F00_0000_0000


def _map(start: int, end: int, perms: str = "rw-p", path: str = "", rss: int | None = None) -> Mapping:
    size = end - start
    r = size if rss is None else rss
    return Mapping(start, end, perms, 0, "00:00", 0, path, {"Rss": r, "Pss": r, "Anonymous": r if not path or
                                                           path.startswith("[") else 0, "Private_Dirty": r})


class Memory:
    """A sparse address space: bytes written at addresses, readable only inside the mappings."""

    def __init__(self, mappings: list[Mapping]) -> None:
        self.mappings = mappings
        self.data: dict[int, bytearray] = {m.start: bytearray(m.size) for m in mappings}

    def write(self, addr: int, raw: bytes) -> None:
        for m in self.mappings:
            if m.start <= addr and addr + len(raw) <= m.end:
                self.data[m.start][addr - m.start:addr - m.start + len(raw)] = raw
                return
        raise AssertionError(f"{addr:#x} not mapped")

    def read(self, addr: int, n: int) -> bytes | None:
        for m in self.mappings:
            if m.start <= addr and addr + n <= m.end:
                return bytes(self.data[m.start][addr - m.start:addr - m.start + n])
        return None


def _header(addr: int, size: int, *, flags: int = 0, heap: int = 0x5555_0000_1000, area: int = 0x140,
            back: int = 10) -> bytes:
    """V8 10-11 ("size-first")."""
    words = [0] * 16
    words[:5] = [size, flags, heap, addr + area, addr + size]
    words[back] = addr  # the reservation's first word: the chunk itself
    return struct.pack("<16Q", *words)


def _header_12(addr: int, size: int, *, flags: int = 0x4, heap: int = 0x5555_0000_1000, area: int = 0x1140) -> bytes:
    """V8 12.4 ("metadata-on-page"), as read from Node 22.20."""
    words = [0] * 16
    words[:6] = [flags, addr, size, heap, addr + area, addr + size]
    words[11] = addr
    return struct.pack("<16Q", *words)


def _meta_13(addr: int, size: int, *, heap: int = 0x5555_0000_1000, area: int = 0x10) -> bytes:
    """V8 12.9+ ("metadata-off-page") metadata, as read from Node 23.11, 24.19 and 25.9."""
    words = [0] * 16
    words[:11] = [0x6b2_0ab0, addr, size, size - area, 0, size, size, addr + size, heap, addr + area, 0x2fbc_7190]
    return struct.pack("<16Q", *words)


# --- V8 -------------------------------------------------------------------------------------------

def test_a_v8_header_is_taken_only_when_every_field_agrees() -> None:
    a = BASE
    c = parse_chunk(a, _header(a, CHUNK_ALIGN, flags=0x18))
    assert c is not None and (c.start, c.size, c.flags, c.area_start, c.end) == (a, CHUNK_ALIGN, 0x18, a + 0x140,
                                                                                 a + CHUNK_ALIGN)
    bad = {
        "unaligned address": (a + 4096, _header(a + 4096, CHUNK_ALIGN)),
        "size below a page": (a, _header(a, 4096)),
        "size not whole pages": (a, _header(a, CHUNK_ALIGN + 8)),
        "null Heap*": (a, _header(a, CHUNK_ALIGN, heap=0)),
        "unaligned Heap*": (a, _header(a, CHUNK_ALIGN, heap=0x5555_0000_1004)),
        "area before the chunk": (a, _header(a, CHUNK_ALIGN, area=-8)),
        "header over 64 KiB": (a, _header(a, CHUNK_ALIGN, area=65 * KIB)),
        "no pointer back": (a, struct.pack("<16Q", CHUNK_ALIGN, 0, 0x5555_0000_1000, a + 0x140, a + CHUNK_ALIGN,
                                           *([0] * 11))),
        "short read": (a, _header(a, CHUNK_ALIGN)[:HEADER_READ - 8]),
    }
    for why, (addr, raw) in bad.items():
        assert parse_chunk(addr, raw) is None, why


def test_the_later_v8_layouts_are_read_and_each_rule_still_refuses() -> None:
    a = BASE
    c = parse_chunk(a, _header_12(a, CHUNK_ALIGN, flags=0x800a))
    assert c is not None and (c.layout, c.flags, c.area_start, c.size) == ("metadata-on-page", 0x800a, a + 0x1140,
                                                                          CHUNK_ALIGN)
    assert parse_chunk(a, _header_12(a, CHUNK_ALIGN, heap=0)) is None
    no_back = bytearray(_header_12(a, CHUNK_ALIGN))
    struct.pack_into("<Q", no_back, 88, 0)
    assert parse_chunk(a, bytes(no_back)) is None
    # 12.9+: the page holds flags and a pointer to malloc'd metadata that names the page
    meta_at = 0x5555_0100_0000
    malloc = _map(meta_at, meta_at + 4096)
    mem = Memory([malloc])
    mem.write(meta_at, _meta_13(a, 3 * CHUNK_ALIGN))
    page = struct.pack("<16Q", 0x12, meta_at, *([0x342b_457c_0129] * 14))
    c = parse_chunk(a, page, mem.read)
    assert c is not None and (c.layout, c.size, c.area_start, c.flags) == ("metadata-off-page", 3 * CHUNK_ALIGN,
                                                                          a + 0x10, 0x12)
    assert parse_chunk(a, page) is None  # without a reader the metadata cannot be followed
    mem.write(meta_at, _meta_13(a + CHUNK_ALIGN, CHUNK_ALIGN))  # metadata of another page
    assert parse_chunk(a, page, mem.read) is None
    assert parse_chunk(a, struct.pack("<16Q", 1 << 40, meta_at, *([0] * 14)), mem.read) is None  # not a flag word


def test_find_chunks_walks_pages_skips_large_bodies_and_tells_code() -> None:
    data = _map(BASE, BASE + 4 * CHUNK_ALIGN)                      # two regular pages, one 512 KiB large page
    hdr = _map(BASE + 4 * CHUNK_ALIGN, BASE + 4 * CHUNK_ALIGN + 4096)    # a code page: rw header ...
    body = _map(hdr.end, BASE + 5 * CHUNK_ALIGN, "r-xp")                   # ... r-x body
    stack = _map(BASE + 8 * CHUNK_ALIGN, BASE + 9 * CHUNK_ALIGN, path="[stack]")
    mem = Memory([data, hdr, body, stack])
    mem.write(BASE, _header(BASE, CHUNK_ALIGN))
    mem.write(BASE + CHUNK_ALIGN, _header(BASE + CHUNK_ALIGN, CHUNK_ALIGN, flags=0x08))
    large = BASE + 2 * CHUNK_ALIGN
    mem.write(large, _header(large, 2 * CHUNK_ALIGN))
    # a copy of a header inside the large page's body is object data, not a page
    mem.write(large + CHUNK_ALIGN, _header(large + CHUNK_ALIGN, CHUNK_ALIGN))
    code = BASE + 4 * CHUNK_ALIGN
    mem.write(code, _header(code, CHUNK_ALIGN, area=8192))
    mem.write(stack.start, _header(stack.start, CHUNK_ALIGN))  # a fake header in a thread stack
    heap = find_chunks(mem.mappings, mem.read)
    assert [c.start for c in heap.chunks] == [BASE, BASE + CHUNK_ALIGN, large, code]
    assert [space_of(c, heap) for c in heap.chunks] == ["old", "young", "large", "code"]
    assert heap.isolates == 1 and not heap.truncated
    capped = find_chunks(mem.mappings, mem.read, max_candidates=1)
    assert capped.truncated and len(capped.chunks) == 1


def test_a_chunk_that_claims_more_than_is_mapped_is_refused() -> None:
    m = _map(BASE, BASE + CHUNK_ALIGN)
    mem = Memory([m])
    mem.write(BASE, _header(BASE, 2 * CHUNK_ALIGN))
    assert find_chunks(mem.mappings, mem.read).chunks == ()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=2 * HEADER_READ), st.integers(0, 1 << 48))
def test_parse_chunk_never_crashes_and_keeps_its_invariants(raw: bytes, addr: int) -> None:
    c = parse_chunk(addr, raw)
    if c is not None:
        assert c.start % CHUNK_ALIGN == 0 and c.start < c.area_start < c.area_end <= c.end


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.binary(min_size=HEADER_READ, max_size=HEADER_READ)),
                max_size=8), st.booleans())
def test_find_chunks_on_random_memory_stays_inside_the_mappings(writes, real: bool) -> None:
    m = _map(BASE, BASE + 16 * CHUNK_ALIGN)
    mem = Memory([m])
    for slot, raw in writes:
        a = BASE + slot * CHUNK_ALIGN
        mem.write(a, _header(a, CHUNK_ALIGN) if real and slot % 3 == 0 else raw)
    heap = find_chunks(mem.mappings, mem.read)
    for c in heap.chunks:
        assert m.start <= c.start < c.end <= m.end


# --- Node flags and heap limit ---------------------------------------------------------------------

def test_node_flags_come_from_node_options_then_argv_before_the_script() -> None:
    env = b"PATH=/bin\0NODE_OPTIONS=--max-old-space-size=300 --trace-gc\0"
    flags = node_flags(["node", "--max-old-space-size=700", "app.js", "--max-old-space-size=9000"], env)
    assert flags == ["--max-old-space-size=300", "--trace-gc", "--max-old-space-size=700"]
    assert heap_limit(flags, 8 * GIB).bytes == 700 * MIB + 3 * 16 * MIB  # the last one wins, as in V8


# heap_size_limit (MiB) of real Node 20/22 and 24 on this 24 GiB machine inside v1 memory cgroups of
# the given size (MiB), measured 2026-12-03 with v8.getHeapStatistics(); flags as given
MEASURED = [
    (256, (), 259, 259), (512, (), 259, 259), (1024, (), 524, 560), (1536, (), 792, 864),
    (2048, (), 1048, 1120), (3072, (), 1584, 1728), (4096, (), 2096, 2240), (8192, (), 2096, 2240),
    (12288, (), 2096, 2240), (16384, (), 4144, 4288), (24576, (), 4144, 4288),
    (1024, ("--max-old-space-size=2048",), 2060, 2096), (1024, ("--max-old-space-size=300",), 312, 348),
    (1024, ("--max-semi-space-size=2",), 518, 518), (3072, ("--max-old-space-size=2048",), 2096, 2240),
    (3072, ("--max-old-space-size=300",), 348, 492), (3072, ("--max-semi-space-size=2",), 1542, 1542),
    (24576, ("--max-old-space-size=64",), 112, 256),
    (24576, ("--max-old-space-size=512", "--max-semi-space-size=8"), 536, 536),
]


def test_heap_limit_matches_what_real_node_reported() -> None:
    for memory, flags, before_24, from_24 in MEASURED:
        for major, want in ((20, before_24), (22, before_24), (24, from_24)):
            assert heap_limit(list(flags), memory * MIB, major).bytes == want * MIB, (memory, flags, major)


def test_heap_limit_defaults_and_spelling() -> None:
    assert heap_limit([], 8 * GIB).bytes == 2 * GIB + 48 * MIB
    assert heap_limit([], 32 * GIB).bytes == 4 * GIB + 48 * MIB
    assert heap_limit([], 512 * MIB).bytes == 256 * MIB + 3 * MIB  # a 1 MiB semispace at the smallest heap
    assert heap_limit([], 8 * GIB).source == "default"
    got = heap_limit(["--max_old_space_size=100", "--max-semi-space-size=32"], 8 * GIB)
    assert (got.bytes, got.source) == (100 * MIB + 96 * MIB, "flag")
    # node refuses the spaced form ("illegal value"): it must not set the limit
    assert heap_limit(["--max-old-space-size", "512"], 8 * GIB).source == "default"
    assert heap_limit(["--max-old-space-size=lots"], 8 * GIB).source == "default"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=8), st.binary(max_size=200), st.integers(0, 1 << 44))
def test_node_flags_and_limit_never_crash(argv, environ, phys) -> None:
    lim = heap_limit(node_flags(argv, environ), phys)
    assert lim.bytes > 0 and lim.source in ("flag", "default")


# --- pymalloc arenas -------------------------------------------------------------------------------

ARENA = 1 << 20


def _entry(address: int, ntotal: int = 64, nfree: int = 3) -> bytes:
    return ENTRY.pack(address, address + 4096 * 5 if address else 0, nfree if address else 0, ntotal if address else 0,
                      0, 0, 0)


class PyImage:
    """An interpreter's bss holding `arenas` and `maxarenas` beside other pointers, and its heap."""

    def __init__(self, used: int, slots: int, *, maxarenas_at: int = 8) -> None:
        self.anon = _map(BASE, BASE + (used + 2) * ARENA)
        self.malloc = _map(0x5555_0000_0000, 0x5555_0000_0000 + 8 * MIB)
        self.mem = Memory([self.anon, self.malloc])
        self.bss = bytearray(4096)
        self.slot_off, self.max_off = 512, 512 + maxarenas_at
        self.used = used
        self.place(0x5555_0000_1000, slots)

    def place(self, table: int, slots: int) -> None:
        raw = b"".join(_entry(BASE + i * ARENA if i < self.used else 0) for i in range(slots))
        self.mem.write(table, raw)
        self.table = table
        struct.pack_into("<Q", self.bss, self.slot_off, table)
        struct.pack_into("<I", self.bss, self.max_off, slots)
        # usable_arenas and a nfp2lasta[] entry: pointers into the middle of the same table
        struct.pack_into("<Q", self.bss, 1024, table + 3 * ENTRY.size)
        struct.pack_into("<Q", self.bss, 1032, table + 7 * ENTRY.size)

    def read(self, addr: int, n: int) -> bytes | None:
        bss_at = 0x5555_1000_0000
        if bss_at <= addr and addr + n <= bss_at + len(self.bss):
            return bytes(self.bss[addr - bss_at:addr - bss_at + n])
        return self.mem.read(addr, n)

    def segments(self) -> list[tuple[int, bytes]]:
        return [(0x5555_1000_0000, bytes(self.bss))]

    def anon_ranges(self) -> list[tuple[int, int]]:
        return [(self.anon.start, self.anon.end), (self.malloc.start, self.malloc.end)]


def test_the_arena_table_is_found_from_its_slot_not_from_pointers_into_it() -> None:
    img = PyImage(used=10, slots=32)
    got = locate_table(img.segments(), img.read, ARENA, img.anon_ranges())
    assert got is not None
    table, near = got
    assert table.slot == 0x5555_1000_0000 + img.slot_off and table.address == img.table
    assert table.entries == 32 and [a.address for a in table.arenas] == [BASE + i * ARENA for i in range(10)]
    assert 8 in near


def test_a_grown_table_is_followed_through_its_slot() -> None:
    img = PyImage(used=10, slots=16)
    table, near = locate_table(img.segments(), img.read, ARENA, img.anon_ranges())  # type: ignore[misc]
    assert table.entries == 16
    img.used = 20
    img.anon = _map(BASE, BASE + 22 * ARENA)
    img.mem = Memory([img.anon, img.malloc])
    img.place(0x5555_0020_0000, 64)  # realloc'd elsewhere, maxarenas doubled twice
    again = read_table(table.slot, img.read, ARENA, lambda a: img.anon.start <= a < img.anon.end, near)
    assert again is not None and again.address == 0x5555_0020_0000 and again.entries == 64
    assert len(again.arenas) == 20


def test_without_maxarenas_the_table_is_read_to_its_first_invalid_entry() -> None:
    img = PyImage(used=5, slots=16, maxarenas_at=48)
    struct.pack_into("<I", img.bss, img.max_off, 0)  # no count anywhere near the slot
    img.mem.write(img.table + 16 * ENTRY.size, b"\xff" * ENTRY.size)
    table, _ = locate_table(img.segments(), img.read, ARENA, img.anon_ranges())  # type: ignore[misc]
    assert table.entries == 16 and len(table.arenas) == 5


def test_entries_outside_the_arena_rules_end_the_table() -> None:
    inside = lambda a: BASE <= a < BASE + 64 * ARENA  # noqa: E731
    ok = _entry(BASE) + _entry(0) + _entry(BASE + ARENA, ntotal=63)
    assert parse_entries(ok, ARENA, inside) is not None
    got = parse_entries(ok, ARENA, inside)
    assert got is not None and [a.index for a in got[0]] == [0, 2] and got[1] == 3
    assert parse_entries(_entry(BASE, ntotal=65), ARENA, inside) is None
    assert parse_entries(_entry(0x1000), ARENA, inside) is None  # an arena outside anonymous memory
    stops = parse_entries(_entry(BASE) + _entry(BASE, nfree=70), ARENA, inside)
    assert stops is not None and stops[1] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=16 * 48 * 2))
def test_parse_entries_never_crashes(raw: bytes) -> None:
    got = parse_entries(raw, ARENA, lambda a: a % 2 == 0)
    if got is not None:
        assert got[1] <= len(raw) // ENTRY.size and all(a.ntotalpools in (63, 64) for a in got[0])


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=8, max_size=512), st.binary(max_size=4096))
def test_locate_table_on_random_data_never_crashes(bss: bytes, heap: bytes) -> None:
    mem = Memory([_map(BASE, BASE + 64 * KIB)])
    mem.write(BASE, heap)
    words = bytearray(bss[: len(bss) // 8 * 8])
    if len(words) >= 8:
        struct.pack_into("<Q", words, 0, BASE)  # at least one pointer into the "heap"
    locate_table([(0x1000, bytes(words))], mem.read, ARENA, [(BASE, BASE + 64 * KIB)])


# --- CPython version, ELF ---------------------------------------------------------------------------

def test_py_version_from_py_version_hex() -> None:
    assert parse_py_version(struct.pack("<I", 0x030B04F0)) == (3, 11, 4)
    assert parse_py_version(struct.pack("<I", 0x030D00A1)) == (3, 13, 0)
    assert parse_py_version(struct.pack("<I", 0x020706F0)) is None
    assert parse_py_version(b"\x01\x02") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=12))
def test_parse_py_version_never_crashes(raw: bytes) -> None:
    v = parse_py_version(raw)
    assert v is None or v[0] == 3


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_elf_facts_on_garbage_finds_nothing(raw: bytes) -> None:
    f = elf_facts(io.BytesIO(b"\x7fELF\x02\x01\x01" + raw), ["_PyRuntime", "napi_create_object"],
                  values=["Py_Version"])
    assert isinstance(f.symbols, dict) and isinstance(f.values, dict)


# --- claiming ranges out of native ------------------------------------------------------------------

def test_claims_move_only_malloc_pool_memory_and_keep_the_exact_sum() -> None:
    anon = _map(BASE, BASE + 4 * MIB, rss=3 * MIB)
    stack = _map(BASE + 4 * MIB, BASE + 5 * MIB, path="[stack]")
    lib = _map(BASE + 5 * MIB, BASE + 6 * MIB, "r--p", path="/usr/lib/libx.so")
    base = attribute_process([anon, stack, lib], thread_sps={})
    ranges = [(BASE, BASE + 2 * MIB, "heap", "old"), (BASE + MIB, BASE + 3 * MIB, "heap", "overlap"),
              (BASE + 3 * MIB, BASE + 6 * MIB, "code", "code"), (BASE, BASE + 1, "not-a-category", "x")]
    # present 4 KiB pages: 768 in all, as Rss says; 128 of them in the part nobody claims
    present = {BASE: 512, BASE + 2 * MIB: 128, BASE + 3 * MIB: 128}

    def count(lo: int, hi: int) -> int | None:
        return sum(n for a, n in present.items() if lo <= a < hi)

    got = claim_ranges(base, ranges, count)
    assert sum(got.categories.values()) == sum(base.categories.values())
    assert got.by_label.get("old") == 512 * 4096 and got.by_label.get("code") == 128 * 4096
    assert "overlap" not in got.by_label and got.exact
    assert got.categories["heap"] == 2 * MIB and got.categories["code"] == base.categories["code"] + 512 * KIB
    assert got.categories["native"] == 512 * KIB
    for cat in ("thread", "file"):
        assert got.categories.get(cat) == base.categories.get(cat)
