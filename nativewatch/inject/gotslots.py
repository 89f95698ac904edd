"""The GOT slots through which an ELF object calls its allocator, read from program headers and the
dynamic section.

An in-process allocation sampler (the way async-profiler's nativemem works) does not trap malloc: it
writes the address of its own hook into the slots a running process already calls through. A call from
one object to a function defined in another goes through an 8-byte slot that the dynamic linker fills
with the function's address:

- R_X86_64_JUMP_SLOT: the PLT's slot (`call malloc@plt`), bound lazily or at load time (-z now);
- R_X86_64_GLOB_DAT: a GOT entry used directly (`call *malloc@GOTPCREL(%rip)` from -fno-plt code) or
  a function's address taken in code (`p = malloc`);
- R_X86_64_64 with addend 0: a function pointer stored in initialised data (`f = malloc` at file scope).

Overwriting such a slot in the process (at load bias + the link-time address given here) turns the
object's calls into calls to the hook, which calls on through the address it read from the slot.

glibc's libc.so defines malloc yet calls its own malloc (from strdup, fopen, ...) through GLOB_DAT slots
against its exported symbol, so that a malloc from the program or an LD_PRELOAD library replaces it for
libc's internal calls too; libstdc++ does the same for operator new. Those slots are not imports and are
kept apart in `GotInfo.self_slots`: patching them is how libc's internal allocations are seen.

Only PT_LOAD, PT_DYNAMIC, PT_GNU_RELRO and what the dynamic section points at are used, because section
headers may be stripped and the dynamic linker does not use them either. Every read is one bounded
seek+read of the range needed, so that hundreds of libraries are cheap, and a hostile or truncated file
costs no more memory than its size, bounded work, and comes back as a partial result with `problems`.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["GotError", "GotInfo", "GotSlot", "read_got"]

_EM_X86_64 = 62
_ET_EXEC, _ET_DYN = 2, 3
_ELF_TYPES = {0: "ET_NONE", 1: "ET_REL", _ET_EXEC: "ET_EXEC", _ET_DYN: "ET_DYN", 4: "ET_CORE"}
_PT_LOAD, _PT_DYNAMIC, _PT_GNU_RELRO = 1, 2, 0x6474E552
_PN_XNUM = 0xFFFF

_DT_NULL = 0
_DT_PLTRELSZ = 2
_DT_HASH = 4
_DT_STRTAB = 5
_DT_SYMTAB = 6
_DT_RELA = 7
_DT_RELASZ = 8
_DT_RELAENT = 9
_DT_STRSZ = 10
_DT_SYMENT = 11
_DT_REL = 17
_DT_PLTREL = 20
_DT_JMPREL = 23
_DT_GNU_HASH = 0x6FFFFEF5
# DT_RELR (36) is deliberately absent: it holds only relative relocations, never a symbol's slot.
_TAGS = frozenset({_DT_PLTRELSZ, _DT_HASH, _DT_STRTAB, _DT_SYMTAB, _DT_RELA, _DT_RELASZ, _DT_RELAENT,
                   _DT_STRSZ, _DT_SYMENT, _DT_REL, _DT_PLTREL, _DT_JMPREL, _DT_GNU_HASH})

_R_X86_64_64 = 1
_KINDS = {_R_X86_64_64: "abs64", 6: "glob_dat", 7: "jump_slot"}

_SHN_UNDEF = 0
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_STB_GLOBAL, _STB_WEAK = 1, 2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_RELA = struct.Struct("<QQq")
_SYM = struct.Struct("<IBBHQQ")
_WORD = 4

_MAX_RELOCS = 1_000_000
_MAX_SYMBOLS = 2_000_000
_MAX_NAME = 4096
_MAX_DYN_ENTRIES = 65_536
_MAX_PROBLEMS = 100
_MAX_EXTRA_SYMBOLS = 65_536
_CHAIN_CHUNK = 1024


@dataclass(frozen=True, slots=True)
class GotSlot:
    """One 8-byte slot holding the address of `symbol`."""

    symbol: str  # plain name from the string table; versions live in the version table, not here
    vaddr: int  # link-time address of the slot; at run time it is at load bias + vaddr (bias 0 for ET_EXEC)
    kind: str  # "jump_slot", "glob_dat" or "abs64"


@dataclass(frozen=True, slots=True)
class GotInfo:
    """What `read_got` found in one object; `problems` says what was skipped as malformed."""

    slots: tuple[GotSlot, ...]  # slots of wanted symbols the object imports (undefined in it)
    defines: frozenset[str]  # wanted functions the object exports itself
    relro: tuple[int, int] | None  # PT_GNU_RELRO [start, end): read-only after relocation, mprotect first
    elf_type: str  # "ET_DYN" or "ET_EXEC" ("ET_REL", "ET_CORE", ... come with a problem)
    has_dynamic: bool  # False for a static binary: no GOT to patch
    problems: tuple[str, ...]
    # Slots of wanted symbols the object defines and still reaches through the dynamic linker so that they
    # can be interposed (libc's own malloc calls); excluded from `slots` because they are not imports.
    self_slots: tuple[GotSlot, ...] = ()


class GotError(Exception):
    """The file is not an ELF64 little-endian x86-64 file at all."""


class _Problems:
    """Capped, so that garbage cannot turn into a million messages."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(text)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        if self.dropped:
            return (*self.items, f"... and {self.dropped} more problems")
        return tuple(self.items)


class _File:
    """Positional reads checked against the file size before reading, so that no length taken from the
    file can make us allocate more than the file holds."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        try:
            size = f.seek(0, 2)
        except (OSError, ValueError) as exc:
            raise GotError(f"cannot seek in the file: {exc}") from exc
        if not isinstance(size, int) or size < 0:
            raise GotError("cannot tell the file's size")
        self.size = size

    def read(self, offset: int, length: int) -> bytes | None:
        """Exactly `length` bytes at `offset`, or None if they are not all there."""
        if offset < 0 or length < 0 or offset + length > self.size:
            return None
        try:
            self._f.seek(offset)
            data = self._f.read(length)
        except (OSError, ValueError):
            return None
        # A file replaced or truncated while we read it gives a short read.
        if not isinstance(data, bytes | bytearray) or len(data) != length:
            return None
        return bytes(data)


@dataclass(frozen=True, slots=True)
class _Phdr:
    type: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


class _Image:
    """The file as the dynamic linker maps it: the dynamic section's pointers are virtual addresses."""

    def __init__(self, file: _File, loads: list[_Phdr], problems: _Problems) -> None:
        self.file = file
        self.problems = problems
        # PT_LOADs must be sorted by address; sorting anyway keeps bisect correct on a file that is not.
        self._loads = sorted(loads, key=lambda p: p.vaddr)
        self._starts = [p.vaddr for p in self._loads]

    def _segment(self, vaddr: int) -> _Phdr | None:
        i = bisect.bisect_right(self._starts, vaddr) - 1
        return self._loads[i] if i >= 0 else None

    def read_upto(self, vaddr: int, length: int) -> bytes:
        """Up to `length` bytes at `vaddr`, as many as the file backs in that segment; b"" if none."""
        seg = self._segment(vaddr)
        if seg is None or length <= 0 or not vaddr < seg.vaddr + seg.filesz:
            return b""
        offset = seg.offset + (vaddr - seg.vaddr)
        avail = min(seg.offset + seg.filesz, self.file.size) - offset
        if avail <= 0:
            return b""
        return self.file.read(offset, min(length, avail)) or b""

    def read(self, vaddr: int, length: int, what: str, *, partial: bool = False) -> bytes:
        """All `length` bytes at `vaddr`, or with partial=True those the file has; a problem if short."""
        data = self.read_upto(vaddr, length)
        if len(data) == length:
            return data
        if not data:
            self.problems.add(f"{what} at {vaddr:#x} ({length} bytes) is not in the file contents of any "
                              f"PT_LOAD segment")
            return b""
        self.problems.add(f"{what} at {vaddr:#x} runs past its segment or the file: {len(data)} of "
                          f"{length} bytes" + (" used" if partial else ", skipped"))
        return data if partial else b""

    def holds_slot(self, vaddr: int) -> bool:
        """Whether an 8-byte slot at `vaddr` is mapped memory at all (not necessarily file-backed)."""
        seg = self._segment(vaddr)
        return seg is not None and vaddr + 8 <= seg.vaddr + seg.memsz


@dataclass(slots=True)
class _Found:
    elf_type: str
    relro: tuple[int, int] | None = None
    has_dynamic: bool = False
    imports: set[GotSlot] = field(default_factory=set)
    own: set[GotSlot] = field(default_factory=set)
    defines: set[str] = field(default_factory=set)

    def result(self, problems: _Problems) -> GotInfo:
        return GotInfo(slots=_sorted(self.imports), defines=frozenset(self.defines), relro=self.relro,
                       elf_type=self.elf_type, has_dynamic=self.has_dynamic, problems=problems.result(),
                       self_slots=_sorted(self.own))


def _sorted(slots: set[GotSlot]) -> tuple[GotSlot, ...]:
    return tuple(sorted(slots, key=lambda s: (s.vaddr, s.symbol, s.kind)))


def read_got(f: BinaryIO, wanted: frozenset[str]) -> GotInfo:
    """The GOT slots of `wanted` functions in the ELF object open (binary, seekable) as `f`.

    Raises GotError only if `f` is not an ELF64 little-endian x86-64 file; anything malformed past that
    is skipped and described in `problems`.
    """
    file = _File(f)
    problems = _Problems()
    found = _Found(elf_type=_identify(file, problems))
    try:
        _parse(file, wanted, problems, found)
    except (struct.error, IndexError, ValueError, OverflowError, KeyError, TypeError) as exc:
        # Not expected (the fuzz tests look for this message), but a partial result beats an exception in
        # a scan over hundreds of libraries.
        problems.add(f"parsing stopped on unexpected data: {exc!r}")
    return found.result(problems)


def _identify(file: _File, problems: _Problems) -> str:
    ident = file.read(0, min(file.size, 20))
    if ident is None or len(ident) < 20 or ident[:4] != b"\x7fELF":
        raise GotError("not an ELF file")
    if ident[4] != 2:
        raise GotError(f"not a 64-bit ELF file (EI_CLASS {ident[4]})")
    if ident[5] != 1:
        raise GotError(f"not a little-endian ELF file (EI_DATA {ident[5]})")
    machine = int.from_bytes(ident[18:20], "little")
    if machine != _EM_X86_64:
        raise GotError(f"not an x86-64 ELF file (e_machine {machine})")
    e_type = int.from_bytes(ident[16:18], "little")
    name = _ELF_TYPES.get(e_type, f"ET_{e_type:#06x}")
    if e_type not in (_ET_EXEC, _ET_DYN):
        problems.add(f"{name} is neither an executable nor a shared object")
    return name


def _parse(file: _File, wanted: Iterable[str], problems: _Problems, found: _Found) -> None:
    phdrs = _program_headers(file, problems)
    relros = [p for p in phdrs if p.type == _PT_GNU_RELRO]
    if relros:
        found.relro = (relros[0].vaddr, relros[0].vaddr + relros[0].memsz)
    dynamics = [p for p in phdrs if p.type == _PT_DYNAMIC]
    if not dynamics:
        return
    found.has_dynamic = True
    if len(dynamics) > 1:
        problems.add(f"{len(dynamics)} PT_DYNAMIC headers; the first is used")
    image = _Image(file, [p for p in phdrs if p.type == _PT_LOAD], problems)
    tags = _dynamic_tags(image, dynamics[0], problems)
    names = _name_offsets(_string_table(image, tags, problems), wanted)
    if not names:
        return  # no wanted name in the string table: no symbol can be one, nothing else to read
    symbols = _symbol_table(image, tags, problems)
    found.defines.update(_defined(symbols, names))
    for what, addr, size in _rela_tables(tags, problems):
        _collect_slots(image, symbols, names, what, _relocations(image, what, addr, size, problems), found)


def _program_headers(file: _File, problems: _Problems) -> list[_Phdr]:
    raw = file.read(0, _EHDR.size)
    if raw is None:
        problems.add("ELF header truncated")
        return []
    fields = _EHDR.unpack(raw)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phnum == 0:
        problems.add("no program headers")
        return []
    if phnum == _PN_XNUM:
        problems.add("program header count in section header 0 (PN_XNUM) is not supported")
        return []
    if phentsize < _PHDR.size:
        problems.add(f"e_phentsize {phentsize} is smaller than an Elf64_Phdr")
        return []
    if phentsize != _PHDR.size:
        problems.add(f"e_phentsize {phentsize} is not {_PHDR.size}: the kernel would refuse to load this")
    fit = max(0, file.size - phoff) // phentsize if phoff <= file.size else 0
    if fit < phnum:
        problems.add(f"program headers run past the end of the file: {fit} of {phnum} read")
    count = min(phnum, fit)
    data = file.read(phoff, count * phentsize) or b""
    phdrs = []
    for i in range(len(data) // phentsize):
        p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = _PHDR.unpack_from(data, i * phentsize)
        phdrs.append(_Phdr(p_type, offset, vaddr, filesz, memsz))
    return phdrs


def _dynamic_tags(image: _Image, dynamic: _Phdr, problems: _Problems) -> dict[int, int]:
    # Read through the address, not p_offset: the address is what the dynamic linker uses (l_ld).
    count = dynamic.filesz // _DYN.size
    if count > _MAX_DYN_ENTRIES:
        problems.add(f"PT_DYNAMIC claims {count} entries; only the first {_MAX_DYN_ENTRIES} are read")
        count = _MAX_DYN_ENTRIES
    data = image.read(dynamic.vaddr, count * _DYN.size, "dynamic section", partial=True)
    tags: dict[int, int] = {}
    for tag, value in _DYN.iter_unpack(data[: len(data) // _DYN.size * _DYN.size]):
        if tag == _DT_NULL:
            break
        if tag in _TAGS:
            if tags.get(tag, value) != value:
                problems.add(f"dynamic tag {tag:#x} appears twice; the last is used, as the dynamic linker does")
            tags[tag] = value
    else:
        problems.add("dynamic section has no DT_NULL terminator")
    # The dynamic linker ignores these sizes and uses the fixed ELF64 ones; so do we.
    for tag, name, size in ((_DT_SYMENT, "DT_SYMENT", _SYM.size), (_DT_RELAENT, "DT_RELAENT", _RELA.size)):
        if tags.get(tag, size) != size:
            problems.add(f"{name} says {tags[tag]} bytes an entry; read as {size}")
    return tags


def _string_table(image: _Image, tags: dict[int, int], problems: _Problems) -> bytes:
    if _DT_STRTAB not in tags:
        problems.add("no DT_STRTAB: no symbol names")
        return b""
    size = tags.get(_DT_STRSZ)
    if size is None:
        problems.add("no DT_STRSZ: the string table is taken to run to the end of its segment")
        return image.read_upto(tags[_DT_STRTAB], image.file.size)
    return image.read(tags[_DT_STRTAB], size, "string table (DT_STRTAB)", partial=True)


def _name_offsets(strtab: bytes, wanted: Iterable[str]) -> dict[int, str]:
    """String table offsets at which a wanted name starts.

    Matching offsets instead of reading each symbol's name means the thousands of other names are never
    decoded. A name can start inside another one: linkers merge "free" into the tail of "cfree".
    """
    found: dict[int, str] = {}
    for name in wanted:
        if not isinstance(name, str):
            continue
        try:
            needle = name.encode() + b"\0"
        except UnicodeEncodeError:
            continue
        if not 2 <= len(needle) <= _MAX_NAME or b"\0" in needle[:-1]:
            continue
        pos = strtab.find(needle)
        while pos >= 0:
            found[pos] = name
            pos = strtab.find(needle, pos + len(needle))
    return found


class _Symbols:
    """The dynamic symbol table: the first `count` entries read at once (all of them, when the count is
    known), and any other entry a relocation names read on its own, as the dynamic linker would."""

    def __init__(self, image: _Image, addr: int | None, count: int | None) -> None:
        self._image = image
        self._addr = addr
        self._extra: dict[int, tuple[int, int, int] | None] = {}
        self.block = b""
        if addr is not None and count:
            data = image.read(addr, count * _SYM.size, "dynamic symbol table", partial=True)
            self.block = data[: len(data) // _SYM.size * _SYM.size]

    def get(self, index: int) -> tuple[int, int, int] | None:
        """(st_name, st_info, st_shndx) of symbol `index`, None if it is not there."""
        if (index + 1) * _SYM.size <= len(self.block):
            st_name, st_info, _other, st_shndx, _value, _size = _SYM.unpack_from(self.block, index * _SYM.size)
            return st_name, st_info, st_shndx
        if self._addr is None:
            return None
        if index not in self._extra:
            if len(self._extra) >= _MAX_EXTRA_SYMBOLS:
                return None  # garbage relocations naming ever new symbols: stop reading them one by one
            raw = self._image.read_upto(self._addr + index * _SYM.size, _SYM.size)
            entry = None
            if len(raw) == _SYM.size:
                st_name, st_info, _other, st_shndx, _value, _size = _SYM.unpack(raw)
                entry = (st_name, st_info, st_shndx)
            self._extra[index] = entry
        return self._extra[index]


def _symbol_table(image: _Image, tags: dict[int, int], problems: _Problems) -> _Symbols:
    addr = tags.get(_DT_SYMTAB)
    if addr is None:
        problems.add("no DT_SYMTAB: no symbols")
        return _Symbols(image, None, None)
    count = _symbol_count(image, tags, problems)
    if count is not None and count > _MAX_SYMBOLS:
        problems.add(f"{count} dynamic symbols claimed; only the first {_MAX_SYMBOLS} are read")
        count = _MAX_SYMBOLS
    return _Symbols(image, addr, count)


def _symbol_count(image: _Image, tags: dict[int, int], problems: _Problems) -> int | None:
    # ELF stores no symbol count in the dynamic section; the hash tables imply one.
    if _DT_GNU_HASH in tags:
        count = _gnu_hash_count(image, tags[_DT_GNU_HASH], problems)
        if count is not None:
            return count
    if _DT_HASH in tags:
        header = image.read(tags[_DT_HASH], 2 * _WORD, "DT_HASH header")
        if header:
            return struct.unpack("<II", header)[1]  # nchain: one chain entry per symbol
    symtab, strtab = tags[_DT_SYMTAB], tags.get(_DT_STRTAB)
    if strtab is not None and strtab > symtab:
        return (strtab - symtab) // _SYM.size  # GNU ld puts .dynstr right after .dynsym
    problems.add("dynamic symbol count unknown (no usable DT_GNU_HASH or DT_HASH, DT_STRTAB not after "
                 "DT_SYMTAB): defines not read, only symbols named by relocations")
    return None


def _gnu_hash_count(image: _Image, addr: int, problems: _Problems) -> int | None:
    """Symbols hashed in DT_GNU_HASH come last, so the end of the chain from the highest bucket is the count."""
    header = image.read(addr, 4 * _WORD, "DT_GNU_HASH header")
    if not header:
        return None
    nbuckets, symoffset, bloom_words, _shift = struct.unpack("<IIII", header)
    buckets_addr = addr + len(header) + bloom_words * 8
    raw = image.read(buckets_addr, nbuckets * _WORD, "DT_GNU_HASH buckets")
    if len(raw) != nbuckets * _WORD:
        return None
    last = max(struct.unpack(f"<{nbuckets}I", raw), default=0)
    if last == 0:
        # Nothing is hashed (an executable exporting nothing): GNU ld then writes symoffset 1 whatever the
        # real count, so the table says nothing and the caller falls back to the other ways.
        return None
    if last < symoffset:
        problems.add(f"DT_GNU_HASH bucket names symbol {last}, below symoffset {symoffset}")
        return None
    chain_addr = buckets_addr + nbuckets * _WORD
    index = last
    while index < _MAX_SYMBOLS:
        want = min(_CHAIN_CHUNK, _MAX_SYMBOLS - index) * _WORD
        words = image.read_upto(chain_addr + (index - symoffset) * _WORD, want)
        if len(words) < _WORD:
            problems.add(f"DT_GNU_HASH chain runs past its segment at symbol {index}")
            return None
        for word in struct.unpack(f"<{len(words) // _WORD}I", words[: len(words) // _WORD * _WORD]):
            index += 1
            if word & 1:  # the low bit marks the last symbol of a chain
                return index
    problems.add(f"DT_GNU_HASH chain does not end within {_MAX_SYMBOLS} symbols")
    return None


def _defined(symbols: _Symbols, names: dict[int, str]) -> set[str]:
    defined = set()
    for st_name, st_info, _other, st_shndx, _value, _size in _SYM.iter_unpack(symbols.block):
        name = names.get(st_name)
        if name is None or st_shndx == _SHN_UNDEF:
            continue
        if st_info & 0xF in (_STT_FUNC, _STT_GNU_IFUNC) and st_info >> 4 in (_STB_GLOBAL, _STB_WEAK):
            defined.add(name)
    return defined


def _rela_tables(tags: dict[int, int], problems: _Problems) -> list[tuple[str, int, int]]:
    """(name, address, size) of the RELA tables that can hold symbol slots."""
    tables = []
    if _DT_REL in tags:
        problems.add("DT_REL relocations skipped: x86-64 uses RELA")
    if _DT_RELA in tags:
        if _DT_RELASZ in tags:
            tables.append(("DT_RELA", tags[_DT_RELA], tags[_DT_RELASZ]))
        else:
            problems.add("DT_RELA without DT_RELASZ skipped")
    if _DT_JMPREL in tags:
        pltrel = tags.get(_DT_PLTREL)
        if _DT_PLTRELSZ not in tags:
            problems.add("DT_JMPREL without DT_PLTRELSZ skipped")
        elif pltrel == _DT_REL:
            problems.add("DT_JMPREL holds REL entries (DT_PLTREL is DT_REL): skipped, x86-64 uses RELA")
        else:
            if pltrel is None:
                problems.add("no DT_PLTREL; PLT relocations read as RELA")
            elif pltrel != _DT_RELA:
                problems.add(f"DT_PLTREL is {pltrel}, not DT_RELA; PLT relocations read as RELA")
            tables.append(("DT_JMPREL", tags[_DT_JMPREL], tags[_DT_PLTRELSZ]))
    return tables


def _relocations(image: _Image, what: str, addr: int, size: int,
                 problems: _Problems) -> Iterator[tuple[int, int, int]]:
    """(r_offset, r_info, r_addend) of the entries whose type can be a symbol's slot."""
    count, rest = divmod(size, _RELA.size)
    if rest:
        problems.add(f"{what} size {size} is not a multiple of {_RELA.size}")
    if count > _MAX_RELOCS:
        problems.add(f"{what} claims {count} relocations; only the first {_MAX_RELOCS} are read")
        count = _MAX_RELOCS
    data = image.read(addr, count * _RELA.size, what, partial=True)
    for r_offset, r_info, r_addend in _RELA.iter_unpack(data[: len(data) // _RELA.size * _RELA.size]):
        if r_info & 0xFFFFFFFF in _KINDS:
            yield r_offset, r_info, r_addend


def _collect_slots(image: _Image, symbols: _Symbols, names: dict[int, str], what: str,
                   relocations: Iterator[tuple[int, int, int]], found: _Found) -> None:
    unreadable = unmapped = 0
    for r_offset, r_info, r_addend in relocations:
        rtype, index = r_info & 0xFFFFFFFF, r_info >> 32
        if index == 0 or (rtype == _R_X86_64_64 and r_addend != 0):
            continue  # no symbol, or a pointer into the middle of one: not a call target
        symbol = symbols.get(index)
        if symbol is None:
            unreadable += 1
            continue
        st_name, _info, st_shndx = symbol
        name = names.get(st_name)
        if name is None:
            continue
        if not image.holds_slot(r_offset):
            unmapped += 1  # patching it would write outside the object's memory
            continue
        slot = GotSlot(symbol=name, vaddr=r_offset, kind=_KINDS[rtype])
        (found.imports if st_shndx == _SHN_UNDEF else found.own).add(slot)
    if unreadable:
        image.problems.add(f"{what}: {unreadable} relocations name symbols outside the symbol table")
    if unmapped:
        image.problems.add(f"{what}: {unmapped} slots of wanted symbols lie outside every PT_LOAD segment")
