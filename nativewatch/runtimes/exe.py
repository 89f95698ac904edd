"""What runtime detection reads from a target's ELF files: a few dynamic symbols and bytes at addresses.

Files are opened through the kernel's links (/proc/PID/exe, /proc/PID/map_files/…), never by a path
taken from the target, and facts are cached by file identity (device, inode, mtime) so a node with
hundreds of interpreters opens each binary once. Dynamic symbols are looked up in .gnu.hash (or
.hash), which costs a few reads even in Node's 100 MB executable; a damaged or hostile file gives
"no symbols", never an exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from nativewatch import cachestats
from nativewatch.sources.procfs import Mapping

__all__ = ["ElfFacts", "elf_facts", "exe_facts", "mapped_file_facts", "map_files_path"]

_MAX_CACHE = 4096
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ElfFacts:
    symbols: dict[str, tuple[int, int]]  # name -> (st_value, st_size), only of the names asked for
    values: dict[str, bytes]  # name -> the symbol's bytes in the file (initialised data), when asked
    pattern: bytes | None  # the first match of the asked regex in the file's read-only data, if any


_cache: dict[tuple[object, ...], ElfFacts] = {}
cachestats.register("runtime_elf_facts", lambda: len(_cache))
_NOTHING = ElfFacts({}, {}, None)


def _file_bytes(elf: ELFFile, fh: BinaryIO, vaddr: int, size: int) -> bytes | None:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        lo, filesz = seg["p_vaddr"], seg["p_filesz"]
        if lo <= vaddr and vaddr + size <= lo + filesz:
            fh.seek(seg["p_offset"] + vaddr - lo)
            return fh.read(size)
    return None


def _search(elf: ELFFile, fh: BinaryIO, regex: re.Pattern[bytes], limit: int) -> bytes | None:
    sec = elf.get_section_by_name(".rodata")
    if sec is None:
        return None
    start, size = sec["sh_offset"], min(sec["sh_size"], limit)
    tail = b""
    done = 0
    while done < size:
        fh.seek(start + done)
        chunk = fh.read(min(_SCAN_CHUNK, size - done))
        if not chunk:
            break
        m = regex.search(tail + chunk)
        if m:
            return m.group(1)
        tail = chunk[-256:]
        done += len(chunk)
    return None


def elf_facts(fh: BinaryIO, names: Sequence[str], *, values: Sequence[str] = (),
              regex: re.Pattern[bytes] | None = None, regex_limit: int = 64 << 20) -> ElfFacts:
    """Look up `names` (and read the bytes of `values`, a subset) in an open ELF file."""
    try:
        elf = ELFFile(fh)
        table = elf.get_section_by_name(".gnu.hash") or elf.get_section_by_name(".hash")
        syms: dict[str, tuple[int, int]] = {}
        if table is not None and hasattr(table, "get_symbol"):
            for n in dict.fromkeys((*names, *values)):
                s = table.get_symbol(n)
                if s is not None and s["st_shndx"] != "SHN_UNDEF":
                    syms[n] = (int(s["st_value"]), int(s["st_size"]))
        vals: dict[str, bytes] = {}
        for n in values:
            if n in syms and 0 < syms[n][1] <= 4096:
                raw = _file_bytes(elf, fh, *syms[n])
                if raw is not None:
                    vals[n] = raw
        # the version search reads the whole read-only data: only for a file that is the runtime
        found = _search(elf, fh, regex, regex_limit) if regex is not None and any(n in syms for n in names) \
            else None
        return ElfFacts(syms, vals, found)
    except (ELFError, ValueError, OSError, AssertionError, KeyError, IndexError, TypeError, AttributeError):
        return _NOTHING


def _cached(path: str, names: Sequence[str], values: Sequence[str], regex: re.Pattern[bytes] | None) -> ElfFacts:
    try:
        st = os.stat(path)
    except OSError:
        return _NOTHING
    key = (st.st_dev, st.st_ino, int(st.st_mtime), st.st_size, tuple(names), tuple(values),
           regex.pattern if regex is not None else None)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        with open(path, "rb") as fh:
            facts = elf_facts(fh, names, values=values, regex=regex)
    except OSError:
        return _NOTHING
    if len(_cache) >= _MAX_CACHE:
        _cache.clear()
    _cache[key] = facts
    return facts


def exe_facts(pid: int, proc_root: str, names: Sequence[str], *, values: Sequence[str] = (),
              regex: re.Pattern[bytes] | None = None) -> ElfFacts:
    return _cached(f"{proc_root}/{pid}/exe", names, values, regex)


def map_files_path(pid: int, proc_root: str, m: Mapping) -> str:
    return f"{proc_root}/{pid}/map_files/{m.start:x}-{m.end:x}"


def mapped_file_facts(pid: int, proc_root: str, m: Mapping, names: Sequence[str], *,
                      values: Sequence[str] = (), regex: re.Pattern[bytes] | None = None) -> ElfFacts:
    """Facts of the file behind mapping `m`, opened through map_files (the kernel's link)."""
    return _cached(map_files_path(pid, proc_root, m), names, values, regex)
