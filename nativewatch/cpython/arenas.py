"""pymalloc's arenas, from the interpreter's own table of them, read through /proc/PID/mem.

pymalloc keeps one `struct arena_object` per arena slot in a malloc'd array (`arenas`, `maxarenas`
entries; static variables in obmalloc.c up to 3.11, the main interpreter's `obmalloc.mgmt` inside
`_PyRuntime` from 3.12). The layout of an entry has not changed since 2.5:

    uintptr_t address; block *pool_address; uint nfreepools; uint ntotalpools;
    pool_header *freepools; arena_object *nextarena, *prevarena;          (48 bytes on x64)

A slot in use has the arena's mmap'd base in `address` (0 for a free slot), `pool_address` inside the
arena and 63 or 64 pools (64 = ARENA_SIZE / POOL_SIZE, one fewer when the base is not pool-aligned).
No exported symbol names the table (CPython 3.13's debug offsets, made for out-of-process tools,
describe threads and frames, not the allocator), so it is found where it must be: a pointer in the
interpreter's writable data whose target reads as such a table, at least 16 entries long (the table
starts at 16 and doubles). Pointers into the middle of the table (usable_arenas, nfp2lasta[]) read
the same way and are told apart by lying at whole entries after the lowest one. `maxarenas` lies
within a few words of `arenas` in every layout seen (3.10-3.13; static or struct): a 32-bit value
16 << k there that covers every entry seen bounds the table; without one the table is read until an
entry that is neither free nor valid.

Pure apart from the read function handed in.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ENTRY", "Arena", "ArenaTable", "arena_size_for", "parse_entries", "locate_table", "read_table"]

ENTRY = struct.Struct("<QQIIQQQ")
INITIAL_ENTRIES = 16
MAX_ENTRIES = 1 << 16  # 64 GiB of 1 MiB arenas; a longer "table" is someone else's memory
_NEAR = 64  # bytes around the `arenas` slot searched for `maxarenas`


@dataclass(frozen=True, slots=True)
class Arena:
    index: int
    address: int
    pool_address: int
    nfreepools: int
    ntotalpools: int


@dataclass(frozen=True, slots=True)
class ArenaTable:
    slot: int  # where the interpreter keeps the table's address (stable for the process's life)
    address: int  # the table itself (moves when it grows)
    entries: int  # maxarenas, or the entries read when it was not found
    arenas: tuple[Arena, ...]  # slots in use


def arena_size_for(minor: tuple[int, int] | None) -> int:
    """ARENA_SIZE on 64-bit Linux: 1 MiB since 3.10 (with the radix tree), 256 KiB before."""
    if minor is not None and minor < (3, 10):
        return 256 << 10
    return 1 << 20


def parse_entries(raw: bytes, arena_size: int, in_anon: Callable[[int], bool],
                  first_index: int = 0) -> tuple[list[Arena], int] | None:
    """(arenas in use, entries read) from raw table bytes; None at the first entry that is neither free
    nor valid when it is entry 0, else the entries up to it."""
    out: list[Arena] = []
    n = len(raw) // ENTRY.size
    for i in range(n):
        address, pool, nfree, ntotal, _free, _next, _prev = ENTRY.unpack_from(raw, i * ENTRY.size)
        if address == 0:
            continue
        if not (address <= pool <= address + arena_size and ntotal in (63, 64) and nfree <= ntotal
                and in_anon(address)):
            if i == 0:
                return None
            return out, i
        out.append(Arena(first_index + i, address, pool, nfree, ntotal))
    return out, n


def _is_table_start(raw: bytes, arena_size: int, in_anon: Callable[[int], bool]) -> bool:
    got = parse_entries(raw, arena_size, in_anon)
    return got is not None and got[1] == INITIAL_ENTRIES and bool(got[0])


def _is_count(v: int) -> bool:
    return INITIAL_ENTRIES <= v <= MAX_ENTRIES and v & (v - 1) == 0


def _maxarenas_near(data: bytes, off: int) -> list[tuple[int, int]]:
    """(offset from the slot, value) of 32-bit values 16 << k within _NEAR bytes of data[off], nearest first."""
    found: list[tuple[int, int, int]] = []
    for d in range(-_NEAR, _NEAR + 8, 4):
        o = off + d
        if o < 0 or o + 4 > len(data) or d in (0, 4):
            continue
        v = struct.unpack_from("<I", data, o)[0]
        if _is_count(v):
            found.append((abs(d), d, v))
    return [(d, v) for _, d, v in sorted(found)]


def read_table(slot: int, read: Callable[[int, int], bytes | None], arena_size: int,
               in_anon: Callable[[int], bool], maxarenas_at: Sequence[int] = ()) -> ArenaTable | None:
    """The table `slot` points at now, or None when it no longer reads as one. `maxarenas_at` are
    offsets from the slot where `maxarenas` may be (read afresh: the table doubles as it grows)."""
    raw = read(slot, 8)
    if raw is None:
        return None
    address = struct.unpack("<Q", raw)[0]
    head = read(address, INITIAL_ENTRIES * ENTRY.size) if address else None
    if head is None or not _is_table_start(head, arena_size, in_anon):
        return None
    for d in maxarenas_at:
        word = read(slot + d, 4)
        m = struct.unpack("<I", word)[0] if word is not None else 0
        if not _is_count(m):
            continue
        body = read(address, m * ENTRY.size)
        if body is None:
            continue
        got = parse_entries(body, arena_size, in_anon)
        if got is not None and got[1] == m:
            return ArenaTable(slot, address, m, tuple(got[0]))
    # No trustworthy maxarenas: read on while entries are free or valid.
    arenas: list[Arena] = []
    n = 0
    step = 256
    while n < MAX_ENTRIES:
        body = read(address + n * ENTRY.size, step * ENTRY.size)
        if body is None:
            break
        got = parse_entries(body, arena_size, in_anon, n)
        if got is None:
            break
        arenas.extend(got[0])
        n += got[1]
        if got[1] < step:
            break
    return ArenaTable(slot, address, n, tuple(arenas))


def locate_table(segments: Iterable[tuple[int, bytes]], read: Callable[[int, int], bytes | None],
                 arena_size: int, anon_ranges: Sequence[tuple[int, int]]) -> tuple[ArenaTable, list[int]] | None:
    """Search the interpreter's writable data (address, bytes) for the arena table.

    Returns the table and where `maxarenas` may lie beside its slot (offsets, for `read_table` later)."""
    ranges = sorted(anon_ranges)
    starts = [r[0] for r in ranges]

    def in_anon(a: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return i >= 0 and a < ranges[i][1]

    lo = ranges[0][0] if ranges else 0
    hi = ranges[-1][1] if ranges else 0
    cands: list[tuple[int, int, bytes, int]] = []  # (table address, slot, segment data, offset)
    for base, data in segments:
        n = len(data) // 8
        words = struct.unpack_from(f"<{n}Q", data)
        for k, p in enumerate(words):
            if p < lo or p >= hi or p & 7 or not in_anon(p):
                continue
            head = read(p, INITIAL_ENTRIES * ENTRY.size)
            if head is not None and _is_table_start(head, arena_size, in_anon):
                cands.append((p, base + 8 * k, data, 8 * k))
    if not cands:
        return None
    cands.sort()
    best: tuple[int, int, bytes, int] | None = None
    best_score = -1
    for c in cands:
        # pointers that land a whole number of entries after this one point into the same table
        score = sum(1 for q in cands if q[0] > c[0] and (q[0] - c[0]) % ENTRY.size == 0
                    and q[0] - c[0] < MAX_ENTRIES * ENTRY.size)
        if score > best_score:
            best, best_score = c, score
    assert best is not None
    p, slot, data, off = best
    near = [d for d, m in _maxarenas_near(data, off)
            if all(q[0] < p + m * ENTRY.size for q in cands if q[0] >= p and (q[0] - p) % ENTRY.size == 0)]
    table = read_table(slot, read, arena_size, in_anon, near)
    return (table, near) if table is not None else None
