"""The runtime-neutral attribution: every resident byte of smaps into exactly one category.

Pure functions over parsed mappings plus a few facts gathered at the edges (thread stack pointers, which
devices are tmpfs, whether a 64 MiB region really is a glibc heap). Runtimes (nativewatch.runtimes)
refine the result afterwards (the JVM from NMT); a runtime whose heap shows in the address layout alone
(Go's arenas) hands a `ManagedHeap` in, because its heap must be known before thread stacks are placed.

Rules, per mapping (each mapping's Rss is split so the categories sum exactly to smaps Rss):
- `[stack]` and every mapping that contains a thread's stack pointer -> `thread`;
- the mappings a `ManagedHeap` claims (Go arenas) -> `heap`;
- `[heap]`, glibc secondary heaps and any other private anonymous memory -> `native`;
- shared memory (tmpfs/devtmpfs-less shm, /dev/shm, memfd, SysV, shared anonymous) -> `shmem`;
- file-backed pages -> `file`; copy-on-write (Anonymous) pages inside a private file or tmpfs mapping
  are the process's own anonymous memory (a library's .data after relocation) -> `native`.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nativewatch.model import CATEGORIES, MemoryDetail
from nativewatch.sources.procfs import SPECIAL_NAMES, Mapping

__all__ = [
    "Attribution", "MappingShare", "ManagedHeap", "attribute_process", "detect_allocator", "is_private_anon",
    "GLIBC_HEAP_MAX",
]

# glibc: HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 64 MiB on 64-bit; heaps are aligned to it.
GLIBC_HEAP_MAX = 64 << 20

# Besides these, a ManagedHeap names the kind of its own mappings (e.g. "go-heap").
KINDS = ("brk-heap", "malloc-arena", "thread-stack", "anon", "file", "shmem", "special")


class ManagedHeap(Protocol):
    """A runtime's own allocator whose heap is recognisable from the address layout alone.

    Only runtimes that never need the process's cooperation for their heap provide one (Go); the
    claimed mappings are decided before thread stacks, so a goroutine stack pointer inside the heap
    never turns the heap into a "thread stack".
    """

    kind: str  # MappingShare.kind of the claimed mappings
    allocator: str  # MemoryDetail.allocator when no malloc library is mapped

    def find(self, mappings: Sequence[Mapping], exclude: set[int]) -> set[int]:
        """Indices (into address-sorted `mappings`) of the heap, never one of `exclude` (glibc heaps)."""
        ...


@dataclass(frozen=True, slots=True)
class MappingShare:
    mapping: Mapping
    kind: str
    categories: dict[str, int]


@dataclass(frozen=True, slots=True)
class Attribution:
    runtime: str
    categories: dict[str, int]
    shares: tuple[MappingShare, ...]
    detail: MemoryDetail
    sources: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def rss(self) -> int:
        return sum(self.categories.values())


_START = operator.attrgetter("start")


def detect_allocator(mappings: Iterable[Mapping], fallback: str = "static") -> str:
    """The malloc library mapped into the process; `fallback` when none is (static or runtime-owned)."""
    names = {m.path.rsplit("/", 1)[-1] for m in mappings if m.inode and m.path.startswith("/")}
    joined = " ".join(names)
    if "libjemalloc" in joined:
        return "jemalloc"
    if "libtcmalloc" in joined:
        return "tcmalloc"
    if "libmimalloc" in joined:
        return "mimalloc"
    if any(n.startswith("libc.so") or n.startswith("libc-") for n in names):
        return "glibc"
    return fallback


def is_private_anon(m: Mapping) -> bool:
    return m.is_anonymous and not m.shared and m.path not in ("[stack]",) and not m.path.startswith("[anon_shmem")


def _is_shmem(m: Mapping, shmem_devs: frozenset[str]) -> bool:
    p = m.path
    if p.startswith(("/memfd:", "/SYSV", "/dev/shm/", "[anon_shmem")):
        return True
    if p.startswith("/dev/zero") and m.shared:
        return True  # MAP_SHARED|MAP_ANONYMOUS is shmem-backed and shows as /dev/zero (deleted)
    return bool(m.inode and m.dev in shmem_devs)


def _glibc_heaps(ms: Sequence[Mapping], check: Callable[[int], bool | None] | None) -> set[int]:
    """Indices of mappings that are glibc secondary heaps (rw part, and its PROT_NONE tail).

    Shape: a private anonymous rw mapping starting on a 64 MiB boundary, followed contiguously by a
    PROT_NONE anonymous mapping up to the next boundary (or filling it alone). A Go arena can have the
    same shape, so when `check` can read the target's memory it decides from the heap_info header.
    """
    out: set[int] = set()
    for i, m in enumerate(ms):
        if m.start % GLIBC_HEAP_MAX or not is_private_anon(m) or m.path or not m.perms.startswith("rw"):
            continue
        tail = None
        if m.end - m.start == GLIBC_HEAP_MAX:
            pass
        elif m.end - m.start < GLIBC_HEAP_MAX and i + 1 < len(ms):
            n = ms[i + 1]
            if n.start == m.end and n.end == m.start + GLIBC_HEAP_MAX and n.perms.startswith("---") \
                    and is_private_anon(n) and not n.path:
                tail = i + 1
            else:
                continue
        else:
            continue
        verdict = check(m.start) if check is not None else None
        if verdict is False:
            continue
        out.add(i)
        if tail is not None:
            out.add(tail)
    return out


def _thread_stack_indices(ms: Sequence[Mapping], thread_sps: dict[int, int | None],
                          taken: set[int]) -> tuple[set[int], int]:
    """Mappings holding a thread's stack pointer; returns (indices, threads whose SP was unknown)."""
    starts = [m.start for m in ms]
    out: set[int] = set()
    unknown = 0
    for sp in thread_sps.values():
        if sp is None:
            unknown += 1
            continue
        i = bisect.bisect_right(starts, sp) - 1
        if i >= 0 and ms[i].start <= sp < ms[i].end and i not in taken:
            m = ms[i]
            # A goroutine's stack lives in the Go heap; a managed or glibc heap is never "a thread's stack".
            if m.path in ("[heap]",) or not (is_private_anon(m) or m.path == "[stack]"):
                continue
            out.add(i)
    return out, unknown


def _guard_heuristic_stacks(ms: Sequence[Mapping], taken: set[int]) -> set[int]:
    """pthread stacks whose thread SP could not be read: rw anon mapping right above a PROT_NONE guard.

    glibc places the guard (default one page, at most a few) at the low end of the stack mapping.
    Only used for threads that were running on a CPU at every read.
    """
    out: set[int] = set()
    for i in range(1, len(ms)):
        m, g = ms[i], ms[i - 1]
        if i in taken or (i - 1) in taken:
            continue
        if g.end == m.start and g.perms.startswith("---") and is_private_anon(g) and not g.path \
                and g.size <= 64 * 1024 and is_private_anon(m) and not m.path and m.perms.startswith("rw"):
            out.add(i)
    return out


def attribute_process(mappings: Sequence[Mapping], *, thread_sps: dict[int, int | None],
                      runtime: str = "native", managed_heap: ManagedHeap | None = None,
                      glibc_heap_check: Callable[[int], bool | None] | None = None,
                      shmem_devs: frozenset[str] = frozenset()) -> Attribution:
    """`runtime` is the detected runtime's name (recorded, not interpreted here)."""
    ms = sorted(mappings, key=_START)
    problems: list[str] = []
    allocator = detect_allocator(ms, managed_heap.allocator if managed_heap is not None else "static")

    # With a managed heap glibc heaps are looked for whatever the allocator: they share its shape and
    # must be kept out of it.
    heaps = (_glibc_heaps(ms, glibc_heap_check)
             if allocator in ("glibc", "static") or managed_heap is not None else set())
    managed = managed_heap.find(ms, heaps) if managed_heap is not None else set()
    managed_kind = managed_heap.kind if managed_heap is not None else ""
    stacks, unknown = _thread_stack_indices(ms, thread_sps, heaps | managed)
    if unknown:
        guessed = _guard_heuristic_stacks(ms, heaps | managed | stacks)
        if guessed:
            stacks |= guessed
            problems.append(f"{unknown} thread(s) running at every read: their stacks were found from "
                            "guard pages, not stack pointers")

    shares: list[MappingShare] = []
    totals = dict.fromkeys(CATEGORIES, 0)
    pss = swap = anon = file_backed = shmem_total = 0
    arena_rss = 0
    arena_count = 0
    get = dict.get  # the hot smaps fields, without a property call each (every mapping, every scan)
    for i, m in enumerate(ms):
        f = m.fields
        rss = get(f, "Rss", 0)
        pss += get(f, "Pss", 0)
        swap += get(f, "Swap", 0)
        anon += get(f, "Anonymous", 0)
        cats: dict[str, int]
        if m.path == "[stack]" or i in stacks:
            kind, cats = "thread-stack", {"thread": rss}
        elif i in managed:
            kind, cats = managed_kind, {"heap": rss}
        elif m.path == "[heap]":
            kind, cats = "brk-heap", {"native": rss}
            if allocator in ("glibc", "static"):
                arena_count += 1
                arena_rss += rss
        elif i in heaps:
            kind, cats = "malloc-arena", {"native": rss}
            arena_rss += rss
            if m.perms.startswith("rw"):
                arena_count += 1
        elif m.path in SPECIAL_NAMES:
            kind, cats = "special", {"file": rss}
        elif _is_shmem(m, shmem_devs):
            cow = min(m.anonymous, rss)
            kind, cats = "shmem", {"shmem": rss - cow, "native": cow}
            shmem_total += rss - cow
        elif m.is_anonymous:
            kind, cats = "anon", {"native": rss}
        else:
            cow = min(m.anonymous, rss)
            kind, cats = "file", {"file": rss - cow, "native": cow}
            file_backed += rss - cow
        for c, v in cats.items():
            totals[c] += v
        shares.append(MappingShare(m, kind, cats))

    if allocator in ("glibc", "static") and arena_count == 0 and managed_heap is None:
        arena_count = 1  # the main arena exists even before its first brk (a runtime may never call malloc)
    detail = MemoryDetail(pss_bytes=pss, swap_bytes=swap, anon_bytes=anon, file_backed_bytes=file_backed,
                          shmem_bytes=shmem_total, malloc_arenas=arena_count,
                          malloc_arena_rss_bytes=arena_rss, allocator=allocator)
    return Attribution(runtime=runtime, categories=totals, shares=tuple(shares), detail=detail,
                       sources=("smaps",), problems=tuple(problems))
