"""Is this executable a Go program? Decided from the ELF file, not from the address layout.

`.go.buildinfo` is written by every Go linker since 1.13 and survives `strip`; the build-info magic
is searched for as a fallback when section headers were removed altogether (sstrip/upx-like tools).
"""

from __future__ import annotations

import os
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from nativewatch import cachestats

__all__ = ["is_go_elf", "is_go_exe"]

_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_GO_SECTIONS = (".go.buildinfo", ".gopclntab", ".note.go.buildid")
_cache: dict[tuple[int, int, int], bool] = {}
cachestats.register("go_executables", lambda: len(_cache))


def is_go_elf(fh: BinaryIO) -> bool:
    try:
        elf = ELFFile(fh)
        if elf.num_sections():
            return any(elf.get_section_by_name(n) is not None for n in _GO_SECTIONS)
    except (ELFError, ValueError, OSError, AssertionError, KeyError, IndexError):
        pass
    # No section headers: scan the first 32 MiB for the build-info magic (16-byte aligned in Go).
    fh.seek(0)
    tail = b""
    for _ in range(32):
        chunk = fh.read(1 << 20)
        if not chunk:
            break
        if _BUILDINFO_MAGIC in tail + chunk:
            return True
        tail = chunk[-len(_BUILDINFO_MAGIC):]
    return False


def is_go_exe(pid: int, proc_root: str = "/proc") -> bool:
    """Open the target's executable through /proc/PID/exe (the kernel's link, so it cannot escape)."""
    path = f"{proc_root}/{pid}/exe"
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino, int(st.st_mtime))
    if key in _cache:
        return _cache[key]
    try:
        with open(path, "rb") as fh:
            result = is_go_elf(fh)
    except OSError:
        return False
    if len(_cache) > 4096:
        _cache.clear()
    _cache[key] = result
    return result
