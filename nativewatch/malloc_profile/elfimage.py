"""What nativewatch needs from one ELF file: function symbols, load segments, build id, exports.

Read with pyelftools from an already-open file object (callers open targets' files through
/proc/PID/map_files, never by path). Images are cached by build id (or by inode identity when a file
has none) so a library mapped by many processes is parsed once. A damaged or hostile ELF yields an
image with fewer symbols and a problem string, never an exception.

Stripped libraries (Debian's libc.so.6: .dynsym only) name few of their functions; their internal
ones (libc's memset/memcpy variants) are in a separate debug file (libc6-dbg and the like), found here
by build id under the host's /usr/lib/debug/.build-id/ only: never through a path taken from the
target. A debug file is used only when its own build id and load segments match the stripped file's,
so it is the same binary and its symbol values are the same virtual addresses. Its symbols name
addresses (symbol_at) but are not added to `functions`/`exports`/`sizes`, which probes are placed by.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, overload

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from nativewatch import cachestats
from nativewatch.debugfiles import DEBUG_BUILD_ID_DIR, open_debug_file
from nativewatch.debugfiles import build_id as _build_id

__all__ = ["ElfImage", "NameTable", "Segment", "load_image", "image_for_fd"]

_MAX_SYMBOLS = 2_000_000

# The host's debug directory (separate debug files by build id). Never a path inside a target's root.


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    executable: bool


class NameTable(Sequence[str]):
    """Symbol names in one bytes blob with an offset array: a long-running process holds the names
    of every library it symbolizes, and as str objects (~50 bytes of overhead each, spread over
    Python's small-object arenas) they cost several times their text and leave fragmented arenas
    behind when an image is dropped. One blob and one array are two large allocations, returned to
    the system when the image goes."""

    __slots__ = ("_blob", "_offs")

    def __init__(self, names: Iterable[str] = ()) -> None:
        offs = array("Q", [0])
        parts: list[bytes] = []
        total = 0
        for n in names:
            b = n.encode("utf-8", "surrogateescape")
            parts.append(b)
            total += len(b)
            offs.append(total)
        self._blob = b"".join(parts)
        self._offs = offs

    @classmethod
    def from_blob(cls, blob: bytes, offs: array[int]) -> NameTable:
        """From names already concatenated: offs[i]..offs[i+1] is name i (len(offs) = names + 1)."""
        t = cls()
        t._blob, t._offs = blob, offs
        return t

    def __len__(self) -> int:
        return len(self._offs) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("name index out of range")
        return self._blob[self._offs[i]:self._offs[i + 1]].decode("utf-8", "surrogateescape")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NameTable):
            return self._blob == other._blob and self._offs == other._offs
        return isinstance(other, Sequence) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(self._blob)


# per-symbol flags
_F_DYNSYM = 1   # from .dynsym
_F_EXPORT = 2   # defined in .dynsym with global or weak binding
_F_DEBUG = 4    # from a separate debug file: names addresses only, never a probe point


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ElfImage:
    """Symbols sorted by start address in parallel arrays; `functions`, `exports` and `sizes` are
    built on first use (only probe planning asks for them, for a few allocator libraries)."""
    build_id: str
    is_static: bool            # no PT_INTERP: libc (and malloc) live in the executable itself
    segments: tuple[Segment, ...]
    starts: array[int] = field(default_factory=lambda: array("Q"))  # sorted FUNC symbol start vaddrs
    ends: array[int] = field(default_factory=lambda: array("Q"))
    names: NameTable = field(default_factory=NameTable)
    ranks: array[int] = field(default_factory=lambda: array("I"))  # order in the file (.symtab, .dynsym)
    flags: bytes = b""
    plt_ranges: tuple[tuple[int, int], ...] = ()  # .plt* sections: jumps there leave the object
    problems: tuple[str, ...] = ()
    _lazy: dict[str, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)

    def _in_file_order(self, want: int) -> Iterator[tuple[str, int, int]]:
        """(name, start, end) of the symbols with any of `want` flags (0: all but debug ones), in
        the order the file lists them, so the first of several same-named symbols wins."""
        idx = sorted(range(len(self.ranks)), key=self.ranks.__getitem__)
        for i in idx:
            f = self.flags[i]
            if f & _F_DEBUG or (want and not f & want):
                continue
            yield self.names[i], self.starts[i], self.ends[i]

    def _table(self, key: str) -> dict[str, int]:
        table = self._lazy.get(key)
        if table is None:
            table = {}
            if key == "functions":
                for name, start, _end in self._in_file_order(0):
                    table.setdefault(name, start)
            elif key == "sizes":
                for name, start, end in self._in_file_order(0):
                    table.setdefault(name, end - start)
            else:
                for name, start, _end in self._in_file_order(_F_EXPORT):
                    table.setdefault(name.split("@")[0], start)
            self._lazy[key] = table
        return table

    @property
    def functions(self) -> dict[str, int]:
        """Every named FUNC (symtab first) -> vaddr."""
        return self._table("functions")

    @property
    def exports(self) -> dict[str, int]:
        """Defined global/weak .dynsym FUNC -> vaddr (version suffix dropped)."""
        return self._table("exports")

    @property
    def sizes(self) -> dict[str, int]:
        """FUNC -> size (a size-0 symbol reads as 1)."""
        return self._table("sizes")

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


def load_image(f: BinaryIO, debug_dir: str | None = DEBUG_BUILD_ID_DIR) -> ElfImage:
    """Parse one ELF. Without a .symtab, function symbols also come from the separate debug file
    <debug_dir>/<xx>/<rest of build id>.debug when there is one (None: not looked for)."""
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
        return ElfImage("", False, (), problems=(f"not a readable ELF: {exc}",))

    # Collected straight into arrays and one name buffer: a library's symbols as Python tuples and
    # strings would be the peak of a parse (and its leftover, in fragmented arenas).
    starts, ends, flags = array("Q"), array("Q"), bytearray()
    blob, offs = bytearray(), array("Q", [0])

    def add(start: int, end: int, name: str, flag: int) -> None:
        starts.append(start)
        ends.append(end)
        flags.append(flag)
        blob.extend(name.encode("utf-8", "surrogateescape"))
        offs.append(len(blob))

    has_symtab = False
    for secname in (".symtab", ".dynsym"):
        try:
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            has_symtab = has_symtab or (secname == ".symtab" and isinstance(sec, SymbolTableSection))
            for value, size, name, bind in _func_symbols(sec, secname, problems):
                flag = 0
                if secname == ".dynsym":
                    flag = _F_DYNSYM | (_F_EXPORT if bind in ("STB_GLOBAL", "STB_WEAK") else 0)
                add(value, value + max(size, 1), name, flag)
        except (ELFError, OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as exc:
            problems.append(f"{secname}: {exc}")
    if not has_symtab and build_id and debug_dir:
        for start, end, name in _debug_symbols(build_id, segments, debug_dir, problems):
            add(start, end, name, _F_DEBUG)
    plt: list[tuple[int, int]] = []
    try:
        for sec in elf.iter_sections():
            if sec.name.startswith(".plt"):
                plt.append((int(sec["sh_addr"]), int(sec["sh_addr"]) + int(sec["sh_size"])))
    except (ELFError, OSError, ValueError, KeyError, AssertionError, UnicodeDecodeError) as exc:
        problems.append(f"sections: {exc}")
    # by start address; stable, so same-address symbols keep the file's order
    order = sorted(range(len(starts)), key=starts.__getitem__)
    sorted_blob, sorted_offs = bytearray(), array("Q", [0])
    for i in order:
        sorted_blob += blob[offs[i]:offs[i + 1]]
        sorted_offs.append(len(sorted_blob))
    return ElfImage(
        build_id=build_id, is_static=is_static, segments=segments,
        starts=array("Q", (starts[i] for i in order)), ends=array("Q", (ends[i] for i in order)),
        names=NameTable.from_blob(bytes(sorted_blob), sorted_offs), ranks=array("I", order),
        flags=bytes(flags[i] for i in order), plt_ranges=tuple(plt), problems=tuple(problems))


def _func_symbols(sec: object, secname: str, problems: list[str]) -> Iterator[tuple[int, int, str, str]]:
    """(value, size, name, binding) of the defined function symbols of one symbol table; at most
    _MAX_SYMBOLS entries are read."""
    if not isinstance(sec, SymbolTableSection):
        return
    for n, sym in enumerate(sec.iter_symbols()):
        if n > _MAX_SYMBOLS:
            problems.append(f"{secname}: too many symbols, truncated")
            return
        if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
            continue
        value = int(sym["st_value"])
        if value == 0 or sym["st_shndx"] == "SHN_UNDEF":
            continue
        yield value, int(sym["st_size"]), sym.name, sym["st_info"]["bind"]


def _load_layout(elf: ELFFile) -> list[tuple[int, int, bool]]:
    return sorted((int(s["p_vaddr"]), int(s["p_memsz"]), bool(s["p_flags"] & 1))
                  for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")


def _debug_symbols(build_id: str, segments: tuple[Segment, ...], debug_dir: str,
                   problems: list[str]) -> list[tuple[int, int, str]]:
    """Function symbols (start, end, name) of the separate debug file of `build_id` in the host's
    debug directory; [] when there is none or it does not match. Never raises."""
    f = open_debug_file(build_id, debug_dir, problems)
    if f is None:
        return []
    path = f.name
    out: list[tuple[int, int, str]] = []
    try:
        with f:
            elf = ELFFile(f)
            if _build_id(elf) != build_id:
                problems.append(f"debug file {path}: build id differs, ignored")
                return []
            want = sorted((s.vaddr, s.memsz, s.executable) for s in segments)
            if _load_layout(elf) != want:
                problems.append(f"debug file {path}: load segments differ, ignored")
                return []
            sec = elf.get_section_by_name(".symtab")
            if sec is None:
                return []
            for value, size, name, _bind in _func_symbols(sec, f"{path} .symtab", problems):
                out.append((value, value + max(size, 1), name))
    except Exception as exc:  # noqa: BLE001 - a damaged debug file costs only its names
        problems.append(f"debug file {path}: {exc}")
        return []
    return out


_cache_lock = threading.Lock()
# Least recently used first. Bounded: a long-running agent meets every library of every process on
# the host over time; an evicted image is re-parsed when next needed (callers keep their own reference).
_MAX_CACHED_FILES = 1024
_MAX_CACHED_SYMBOLS = 1_000_000
_by_build_id: OrderedDict[str, ElfImage] = OrderedDict()
# Every image still referenced anywhere (a symbolizer keeps the images of its process): one evicted
# from the LRU above but still in use is found here instead of being parsed, and held, twice.
_alive_by_identity: weakref.WeakValueDictionary[tuple[int, int, int, int], ElfImage] = weakref.WeakValueDictionary()
_alive_by_build_id: weakref.WeakValueDictionary[str, ElfImage] = weakref.WeakValueDictionary()
_by_identity: OrderedDict[tuple[int, int, int, int], ElfImage] = OrderedDict()
cachestats.register("elf_files", lambda: len(_by_identity))
cachestats.register("elf_images", lambda: len(_by_build_id))


def image_for_fd(fd: int) -> ElfImage:
    """Parse (or fetch from the cache) the ELF open at fd; the fd stays owned by the caller."""
    st = os.fstat(fd)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _by_identity.get(ident) or _alive_by_identity.get(ident)
        if hit is not None:
            _by_identity[ident] = hit
            _by_identity.move_to_end(ident)
            if hit.build_id:
                _by_build_id.setdefault(hit.build_id, hit)
            _trim_cache()
            return hit
    with os.fdopen(os.dup(fd), "rb") as f:
        img = load_image(f, DEBUG_BUILD_ID_DIR)
    with _cache_lock:
        if img.build_id:
            # same build id from another path/container: reuse the parsed tables
            img = _by_build_id.get(img.build_id) or _alive_by_build_id.get(img.build_id) or img
            _by_build_id[img.build_id] = img
            _alive_by_build_id[img.build_id] = img
        _by_identity[ident] = img
        _alive_by_identity[ident] = img
        _by_identity.move_to_end(ident)
        _trim_cache()
    return img


def set_cache_budget(symbols: int) -> None:
    """Bound the parsed images by their symbols (about 30 bytes each plus the name: ~100 for C++ libraries): a long-running
    process sets what it can afford; images past it are evicted and parsed again when needed."""
    global _MAX_CACHED_SYMBOLS
    with _cache_lock:
        _MAX_CACHED_SYMBOLS = max(1, int(symbols))
        _trim_cache()


def _trim_cache() -> None:
    """Evict least recently used files until within bounds; an image goes with its last file."""
    held = {id(i): i for i in _by_identity.values()}
    symbols = sum(len(i.names) for i in held.values())
    while len(_by_identity) > 1 and (len(_by_identity) > _MAX_CACHED_FILES or symbols > _MAX_CACHED_SYMBOLS):
        _ident, old = _by_identity.popitem(last=False)
        if any(i is old for i in _by_identity.values()):
            continue
        held.pop(id(old), None)
        symbols -= len(old.names)
        if old.build_id and _by_build_id.get(old.build_id) is old:
            del _by_build_id[old.build_id]
