"""V8's heap from outside the process: its pages, found by their headers at 256 KiB boundaries.

V8 (x64, the way Node builds it: no pointer compression) maps every heap page ("chunk") on its own,
aligned to 256 KiB: regular pages of exactly 256 KiB, large-object pages of any size. Each chunk
starts with a header V8 keeps there; three layouts are known, each seen in the Node it names:

    "size-first", V8 10-11 (Node 18-21): +0 size  +8 flags  +16 Heap*  +24 area_start  +32 area_end
        ... the owning reservation's address (the chunk itself) among words 5-15
    "metadata-on-page", V8 12.4 (Node 22): +0 flags  +8 the chunk's own address (its metadata is
        still on the page)  +16 size  +24 Heap*  +32 area_start  +40 area_end ... the chunk again
    "metadata-off-page", V8 12.9, 13.6, 14.1 (Node 23, 24, 25): +0 flags  +8 a pointer to the page's
        metadata, malloc'd elsewhere: its +8 chunk address  +16 size  +56 area_end  +64 Heap*
        +72 area_start

A candidate is taken only when everything its layout says holds together: a size of whole pages of
at least 256 KiB whose range is mapped, a header shorter than 64 KiB, a usable area inside the chunk,
a non-null 8-aligned Heap* and the chunk's own address where the layout keeps it. One V8 isolate is
one Heap*, so worker threads show as more heaps.

Code pages are told from the data: a chunk whose usable area lies in an executable mapping (V8 maps
code r-x or rwx) holds JIT code. Young-generation pages (flags FROM_PAGE|TO_PAGE, bits 3-4 in every
layout above) and large pages (any size but 256 KiB) are named for the details only.

Pure: `parse_chunk` reads bytes (V8 12.9+'s off-page metadata through the read function it is given),
`find_chunks` takes a read function.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nativewatch.attribute import is_private_anon
from nativewatch.sources.procfs import Mapping

__all__ = ["CHUNK_ALIGN", "HEADER_READ", "LAYOUTS", "V8Chunk", "V8Heap", "parse_chunk", "find_chunks", "space_of"]

CHUNK_ALIGN = 256 << 10
HEADER_READ = 128  # bytes read at each candidate: the five fields and the reservation's words
_MAX_HEADER = 64 << 10
_MAX_CHUNK = 1 << 40  # no single V8 chunk is a terabyte; beyond it the "size" is someone else's data
_WORDS = struct.Struct("<16Q")
_YOUNG_FLAGS = 0x18
_MAX_FLAGS = 1 << 32  # the flag words seen use bits 0-25; a larger "flags" word is an object or a pointer
LAYOUTS = ("size-first", "metadata-on-page", "metadata-off-page")


@dataclass(frozen=True, slots=True)
class V8Chunk:
    start: int
    size: int
    flags: int
    heap: int  # the owning isolate's Heap*
    area_start: int
    area_end: int
    layout: str = "size-first"  # one of LAYOUTS

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True, slots=True)
class V8Heap:
    chunks: tuple[V8Chunk, ...]
    code: frozenset[int]  # starts of the chunks holding JIT code
    candidates: int  # 256 KiB boundaries looked at
    truncated: bool  # the read budget ran out before every candidate was looked at

    @property
    def isolates(self) -> int:
        return len({c.heap for c in self.chunks})


def _chunk(addr: int, size: int, flags: int, heap: int, area_start: int, area_end: int,
           layout: str) -> V8Chunk | None:
    if not (CHUNK_ALIGN <= size < _MAX_CHUNK) or size % 4096:
        return None
    if heap == 0 or heap % 8 or heap >= 1 << 48:
        return None
    if not (addr < area_start <= addr + _MAX_HEADER and area_start < area_end <= addr + size):
        return None
    return V8Chunk(addr, size, flags, heap, area_start, area_end, layout)


def parse_chunk(addr: int, raw: bytes, read: Callable[[int, int], bytes | None] | None = None) -> V8Chunk | None:
    """The chunk whose header `raw` (HEADER_READ bytes read at `addr`) is, or None. `read` lets V8 12.9+'s
    layout follow the pointer to the page's metadata; without it only the on-page layouts are tried."""
    if len(raw) < HEADER_READ or addr % CHUNK_ALIGN:
        return None
    w = _WORDS.unpack_from(raw)
    if addr in w[5:]:  # V8 10-11
        c = _chunk(addr, w[0], w[1], w[2], w[3], w[4], "size-first")
        if c is not None:
            return c
    if w[0] >= _MAX_FLAGS:
        return None
    if w[1] == addr:  # V8 12.4
        return _chunk(addr, w[2], w[0], w[3], w[4], w[5], "metadata-on-page") if addr in w[6:] else None
    meta = w[1]
    if read is None or meta == 0 or meta % 8 or meta >= 1 << 48:
        return None
    m = read(meta, HEADER_READ)
    if m is None or len(m) < HEADER_READ:
        return None
    mw = _WORDS.unpack_from(m)
    if mw[1] != addr:  # V8 12.9+: the metadata names its chunk
        return None
    return _chunk(addr, mw[2], w[0], mw[8], mw[9], mw[7], "metadata-off-page")


def _covered(ms: Sequence[Mapping], starts: list[int], lo: int, hi: int) -> bool:
    """[lo, hi) is mapped without a hole."""
    i = bisect.bisect_right(starts, lo) - 1
    cur = lo
    while cur < hi:
        if i < 0 or i >= len(ms) or not (ms[i].start <= cur < ms[i].end):
            return False
        cur = ms[i].end
        i += 1
    return True


def find_chunks(mappings: Sequence[Mapping], read: Callable[[int, int], bytes | None],
                max_candidates: int = 1 << 18) -> V8Heap:
    """Every V8 chunk whose header lies in a private anonymous read-write mapping of `mappings`."""
    ms = sorted(mappings, key=lambda m: m.start)
    starts = [m.start for m in ms]
    chunks: list[V8Chunk] = []
    code: set[int] = set()
    candidates = 0
    truncated = False
    skip_to = 0
    for m in ms:
        if not (is_private_anon(m) and not m.path and m.perms.startswith("rw")):
            continue
        a = max(m.start, skip_to)
        a = (a + CHUNK_ALIGN - 1) // CHUNK_ALIGN * CHUNK_ALIGN
        while a + HEADER_READ <= m.end:
            if candidates >= max_candidates:
                truncated = True
                break
            candidates += 1
            raw = read(a, HEADER_READ)
            c = parse_chunk(a, raw, read) if raw is not None else None
            if c is None or not _covered(ms, starts, c.start, c.end):
                a += CHUNK_ALIGN
                continue
            chunks.append(c)
            i = bisect.bisect_right(starts, c.area_start) - 1
            if i >= 0 and ms[i].start <= c.area_start < ms[i].end and "x" in ms[i].perms:
                code.add(c.start)
            # a large page's body holds objects, not headers: never read it as one
            a = (c.end + CHUNK_ALIGN - 1) // CHUNK_ALIGN * CHUNK_ALIGN
            skip_to = max(skip_to, c.end)
        if truncated:
            break
    return V8Heap(tuple(chunks), frozenset(code), candidates, truncated)


def space_of(c: V8Chunk, heap: V8Heap) -> str:
    """A display name: code, large (large-object pages), young (semispaces), old."""
    if c.start in heap.code:
        return "code"
    if c.size != CHUNK_ALIGN:
        return "large"
    if c.flags & _YOUNG_FLAGS:
        return "young"
    return "old"
