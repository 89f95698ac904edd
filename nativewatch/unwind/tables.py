"""The CFI of one mapped file, read once per build id and kept in a bounded cache.

Sources, best first: `.eh_frame` with `.eh_frame_hdr` (found by section header, or by the
PT_GNU_EH_FRAME program header when section headers are stripped), `.debug_frame` in the file, then
`.debug_frame` of the separate debug file found by build id under the host's debug directory (never a
path inside the target). Files are read through descriptors the caller opened (the target's
/proc/PID/map_files links), as elfimage does.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from nativewatch import cachestats
from nativewatch.debugfiles import DEBUG_BUILD_ID_DIR, build_id, open_debug_file
from nativewatch.unwind.cfi import CfiError, FrameTable

__all__ = ["ObjectCfi", "cfi_for_fd", "load_cfi", "cache_bytes", "set_cache_budget"]

_MAX_SECTION_BYTES = 256 << 20
_MAX_CACHED_FILES = 256
# Bytes of CFI kept (section bytes and decoded rows), least recently used file evicted first; an
# evicted file's CFI is read again when next needed. The agent lowers it (set_cache_budget).
_budget = {"bytes": 64 << 20, "fdes": 1024}
_ROW_BYTES = 1500  # a decoded FDE's rows, measured roughly: ~8 rules of ~180 bytes
_ELF_ERRORS = (ELFError, OSError, ValueError, KeyError, AssertionError, CfiError, UnicodeDecodeError)


class ObjectCfi:
    """CFI tables of one ELF file (possibly none). `source` says where they came from."""

    def __init__(self, tables: list[FrameTable], source: str, problem: str = "") -> None:
        self.tables = tables
        self.source = source
        self.problem = problem

    @property
    def has_cfi(self) -> bool:
        return bool(self.tables)

    def rule_at(self, vaddr: int):  # -> Rule | None
        for t in self.tables:
            rule = t.rule_at(vaddr)
            if rule is not None:
                return rule
        return None

    def nbytes(self) -> int:
        """Memory held: section bytes, the search index, and decoded rows (estimated per FDE)."""
        return sum(len(t.section) + t._starts.itemsize * len(t._starts) * 2 + t.cached_fdes() * _ROW_BYTES
                   for t in self.tables)


def _section(elf: ELFFile, f: BinaryIO, name: str) -> tuple[bytes, int] | None:
    sec = elf.get_section_by_name(name)
    if sec is None or sec["sh_type"] == "SHT_NOBITS":
        return None
    size = int(sec["sh_size"])
    if size <= 0 or size > _MAX_SECTION_BYTES:
        return None
    f.seek(int(sec["sh_offset"]))
    data = f.read(size)
    return (data, int(sec["sh_addr"])) if len(data) == size else None


def _eh_frame_from_segments(elf: ELFFile, f: BinaryIO) -> tuple[bytes, int, bytes, int] | None:
    """Section headers stripped: PT_GNU_EH_FRAME gives .eh_frame_hdr, whose eh_frame_ptr gives
    .eh_frame; its size is unknown, so read to the end of the load segment that holds it."""
    hdr_seg = next((s for s in elf.iter_segments() if s["p_type"] == "PT_GNU_EH_FRAME"), None)
    if hdr_seg is None:
        return None
    f.seek(int(hdr_seg["p_offset"]))
    hdr = f.read(min(int(hdr_seg["p_filesz"]), _MAX_SECTION_BYTES))
    hdr_vaddr = int(hdr_seg["p_vaddr"])
    if len(hdr) < 8 or hdr[0] != 1 or hdr[1] != 0x1B:  # version 1, eh_frame_ptr pcrel sdata4
        return None
    eh_vaddr = hdr_vaddr + 4 + int.from_bytes(hdr[4:8], "little", signed=True)
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        lo, n = int(seg["p_vaddr"]), int(seg["p_filesz"])
        if lo <= eh_vaddr < lo + n:
            off = int(seg["p_offset"]) + eh_vaddr - lo
            f.seek(off)
            data = f.read(min(lo + n - eh_vaddr, _MAX_SECTION_BYTES))
            return data, eh_vaddr, hdr, hdr_vaddr
    return None


def load_cfi(f: BinaryIO, debug_dir: str | None = DEBUG_BUILD_ID_DIR) -> ObjectCfi:
    """Never raises on a bad file: an object without usable CFI comes back with no tables and a
    problem saying why."""
    try:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            return ObjectCfi([], "none", f"not x86-64 ({elf['e_machine']})")
        tables: list[FrameTable] = []
        sources: list[str] = []
        eh = _section(elf, f, ".eh_frame")
        hdr = _section(elf, f, ".eh_frame_hdr")
        fdes = _budget["fdes"]
        if eh is not None:
            tables.append(FrameTable(eh[0], eh[1], hdr=hdr[0] if hdr else None, hdr_vaddr=hdr[1] if hdr else 0,
                                     max_cached_fdes=fdes))
            sources.append(".eh_frame")
        elif elf.num_sections() == 0:
            seg = _eh_frame_from_segments(elf, f)
            if seg is not None:
                tables.append(FrameTable(seg[0], seg[1], hdr=seg[2], hdr_vaddr=seg[3], max_cached_fdes=fdes))
                sources.append(".eh_frame (program headers)")
        dbg = _section(elf, f, ".debug_frame")
        if dbg is not None:
            tables.append(FrameTable(dbg[0], 0, debug_frame=True, max_cached_fdes=fdes))
            sources.append(".debug_frame")
        elif debug_dir:
            bid = build_id(elf)
            df = open_debug_file(bid, debug_dir, []) if bid else None
            if df is not None:
                try:
                    with df:
                        delf = ELFFile(df)
                        if build_id(delf) == bid:
                            d = _section(delf, df, ".debug_frame")
                            if d is not None:
                                tables.append(FrameTable(d[0], 0, debug_frame=True, max_cached_fdes=fdes))
                                sources.append("debug file .debug_frame")
                except _ELF_ERRORS:
                    pass
        tables = [t for t in tables if len(t)]
        return ObjectCfi(tables, " + ".join(sources) or "none", "" if tables else "no CFI in the file")
    except _ELF_ERRORS as exc:
        return ObjectCfi([], "none", f"unreadable CFI: {exc}")


_lock = threading.Lock()
_CacheKey = str | tuple[int, int, int, int]
_cache: OrderedDict[_CacheKey, ObjectCfi] = OrderedDict()
_idents: dict[tuple[int, int, int, int], _CacheKey] = {}  # file identity -> its cache key
# Every ObjectCfi still referenced (a symbolizer's region holds its file's): one evicted from the LRU
# but in use is found here instead of being read, and held, twice.
_alive: weakref.WeakValueDictionary[_CacheKey, ObjectCfi] = weakref.WeakValueDictionary()
cachestats.register("cfi_files", lambda: len(_cache))


def _key_of(fd: int, ident: tuple[int, int, int, int]) -> str | tuple[int, int, int, int]:
    """The build id (the same library in many containers is one entry), else the file identity."""
    key = _idents.get(ident)
    if key is not None:
        return key
    bid = ""
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            bid = build_id(ELFFile(f))
    except _ELF_ERRORS:
        pass
    key = f"build-id:{bid}" if len(bid) >= 8 else ident
    with _lock:
        if len(_idents) >= 4096:
            _idents.clear()
        _idents[ident] = key
    return key


def cfi_for_fd(fd: int) -> ObjectCfi:
    """The CFI of the file open at fd (the caller keeps the fd), cached by build id (or by file
    identity when the file has none)."""
    st = os.fstat(fd)
    key = _key_of(fd, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        hit = _alive.get(key)
        if hit is not None:
            _cache[key] = hit
            _trim()
            return hit
    with os.fdopen(os.dup(fd), "rb") as f:
        cfi = load_cfi(f)
    with _lock:
        _cache[key] = cfi
        _alive[key] = cfi
        _trim()
    return cfi


def _trim() -> None:
    total = sum(c.nbytes() for c in _cache.values())
    while len(_cache) > 1 and (len(_cache) > _MAX_CACHED_FILES or total > _budget["bytes"]):
        _, old = _cache.popitem(last=False)
        total -= old.nbytes()


def set_cache_budget(max_bytes: int, *, fdes_per_file: int = 1024) -> None:
    """Bound the CFI cache: `max_bytes` in all, `fdes_per_file` decoded FDEs per table. A caller that
    keeps an ObjectCfi (a symbolizer's region) keeps it alive beyond the budget until it lets go."""
    with _lock:
        _budget["bytes"], _budget["fdes"] = int(max_bytes), int(fdes_per_file)
        _trim()


def cache_bytes() -> int:
    with _lock:
        return sum(c.nbytes() for c in _cache.values())
