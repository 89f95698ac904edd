"""What nativewatch needs from one ELF file: function symbols, load segments, build id, exports.

Read with pyelftools from an already-open file object (callers open targets' files through
/proc/PID/map_files, never by path). Images are cached by build id (or by inode identity when a file
has none) so a library mapped by many processes is parsed once. A damaged or hostile ELF yields an
image with fewer symbols and a problem string, never an exception.
"""

from __future__ import annotations

import bisect
import os
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

__all__ = ["ElfImage", "Segment", "load_image", "image_for_fd"]

_MAX_SYMBOLS = 2_000_000


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    executable: bool


@dataclass(frozen=True, slots=True)
class ElfImage:
    build_id: str
    is_static: bool            # no PT_INTERP: libc (and malloc) live in the executable itself
    segments: tuple[Segment, ...]
    starts: tuple[int, ...]    # sorted symbol start vaddrs (FUNC symbols, symtab + dynsym)
    ends: tuple[int, ...]
    names: tuple[str, ...]
    exports: dict[str, int] = field(default_factory=dict)   # defined dynsym FUNC -> vaddr
    functions: dict[str, int] = field(default_factory=dict)  # every named FUNC -> vaddr (symtab wins)
    sizes: dict[str, int] = field(default_factory=dict)
    plt_ranges: tuple[tuple[int, int], ...] = ()  # .plt* sections: jumps there leave the object
    problems: tuple[str, ...] = ()

    def in_plt(self, vaddr: int) -> bool:
        return any(lo <= vaddr < hi for lo, hi in self.plt_ranges)

    def file_offset(self, vaddr: int) -> int | None:
        """File offset of a virtual address (what uprobes are placed by)."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + max(s.filesz, 1):
                return vaddr - s.vaddr + s.offset
        return None

    def vaddr_of_offset(self, offset: int) -> int | None:
        for s in self.segments:
            if s.offset <= offset < s.offset + s.filesz:
                return offset - s.offset + s.vaddr
        return None

    def symbol_at(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.starts, vaddr) - 1
        # symbols can nest or have size 0: walk back a few candidates for one that covers vaddr
        for j in range(i, max(i - 8, -1), -1):
            if self.starts[j] <= vaddr < self.ends[j]:
                return self.names[j]
        return None


def _build_id(elf: ELFFile) -> str:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for note in seg.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return ""


def load_image(f: BinaryIO) -> ElfImage:
    problems: list[str] = []
    try:
        elf = ELFFile(f)
        segments = tuple(
            Segment(int(s["p_vaddr"]), int(s["p_offset"]), int(s["p_filesz"]), int(s["p_memsz"]),
                    bool(s["p_flags"] & 1))
            for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        is_static = not any(s["p_type"] == "PT_INTERP" for s in elf.iter_segments())
        build_id = _build_id(elf)
    except (ELFError, OSError, ValueError, KeyError, AssertionError) as exc:  # hostile input
        return ElfImage("", False, (), (), (), (), problems=(f"not a readable ELF: {exc}",))

    syms: list[tuple[int, int, str]] = []
    exports: dict[str, int] = {}
    functions: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for secname in (".symtab", ".dynsym"):
        try:
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            for n, sym in enumerate(sec.iter_symbols()):
                if n > _MAX_SYMBOLS:
                    problems.append(f"{secname}: too many symbols, truncated")
                    break
                if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
                    continue
                value = int(sym["st_value"])
                if value == 0 or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                name = sym.name
                size = int(sym["st_size"])
                syms.append((value, value + max(size, 1), name))
                functions.setdefault(name, value)
                sizes.setdefault(name, size)
                if secname == ".dynsym" and sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK"):
                    exports.setdefault(name.split("@")[0], value)
        except (ELFError, OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as exc:
            problems.append(f"{secname}: {exc}")
    plt: list[tuple[int, int]] = []
    try:
        for sec in elf.iter_sections():
            if sec.name.startswith(".plt"):
                plt.append((int(sec["sh_addr"]), int(sec["sh_addr"]) + int(sec["sh_size"])))
    except (ELFError, OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as exc:
        problems.append(f"sections: {exc}")
    syms.sort()
    return ElfImage(
        build_id=build_id, is_static=is_static, segments=segments,
        starts=tuple(s[0] for s in syms), ends=tuple(s[1] for s in syms), names=tuple(s[2] for s in syms),
        exports=exports, functions=functions, sizes=sizes, plt_ranges=tuple(plt), problems=tuple(problems))


_cache_lock = threading.Lock()
_by_build_id: dict[str, ElfImage] = {}
_by_identity: dict[tuple[int, int, int, int], ElfImage] = {}


def image_for_fd(fd: int) -> ElfImage:
    """Parse (or fetch from the cache) the ELF open at fd; the fd stays owned by the caller."""
    st = os.fstat(fd)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _by_identity.get(ident)
    if hit is not None:
        return hit
    with os.fdopen(os.dup(fd), "rb") as f:
        img = load_image(f)
    with _cache_lock:
        if img.build_id:
            # same build id from another path/container: reuse the parsed tables
            img = _by_build_id.setdefault(img.build_id, img)
        _by_identity[ident] = img
    return img
