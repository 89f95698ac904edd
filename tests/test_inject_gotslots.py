"""GOT slots of imported allocator functions (nativewatch/inject/gotslots.py), read from program headers and
the dynamic section only.

Ground truth is binutils: `readelf -W -r` (relocations, which readelf finds through section headers) joined
by symbol index with `readelf -W --dyn-syms` (Ndx UND = imported). Fixtures: system libraries and
executables, and small programs built here with each way of calling malloc (PLT with lazy or immediate
binding, -fno-plt GOT calls, function pointers in data, a non-PIE executable, a library that defines malloc
and calls it through its own slots, a static binary). Robustness: a hypothesis fuzz over random bytes and
mutated or truncated real objects, where read_got may only raise GotError, must finish quickly and must
never read more than the file holds.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nativewatch.inject.gotslots import GotError, GotInfo, GotSlot, read_got

WANTED = frozenset({"malloc", "free", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign",
                    "valloc", "pvalloc", "mmap", "mmap64", "munmap", "_Znwm", "_Znam", "_ZdlPv", "_ZdaPv",
                    "_ZdlPvm", "_ZdaPvm", "dlopen"})
ALLOC = frozenset({"malloc", "free", "calloc", "realloc"})
KINDS = {"R_X86_64_JUMP_SLOT": "jump_slot", "R_X86_64_GLOB_DAT": "glob_dat", "R_X86_64_64": "abs64"}
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
SYSTEM_FILES = {
    "libc": LIBC,
    "redis-server": Path("/usr/bin/redis-server"),
    "libstdc++": Path("/lib/x86_64-linux-gnu/libstdc++.so.6"),
    "python3.11": Path("/usr/bin/python3.11"),
}
DT_HASH, DT_STRTAB, DT_RELA, DT_RELASZ, DT_REL, DT_PLTREL, DT_DEBUG = 4, 5, 7, 8, 17, 20, 21
DT_GNU_HASH = 0x6FFFFEF5


# --- ground truth from readelf ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Truth:
    imports: frozenset[tuple[str, int, str]]  # (symbol, slot address, kind) against undefined symbols
    own: frozenset[tuple[str, int, str]]  # the same against symbols the object defines
    defines: frozenset[str]
    relro: tuple[int, int] | None


_SYM_LINE = re.compile(r"^\s*(\d+):\s+[0-9a-f]+\s+\S+\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s*(\S*)")
_REL_LINE = re.compile(r"^([0-9a-f]{16})\s+([0-9a-f]{16})\s+(R_X86_64_\w+)\s+[0-9a-f]{16}\s+(\S+)\s+([+-])\s+"
                       r"([0-9a-f]+)\s*$")
_RELRO_LINE = re.compile(r"^\s*GNU_RELRO\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+"
                         r"(0x[0-9a-f]+)")


def _readelf(*args: str | Path) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(["readelf", "-W", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def readelf_truth(path: Path, wanted: frozenset[str] = WANTED) -> Truth:
    # index -> (plain name, undefined?, type, bind); joined by the index in r_info, not by the printed name
    symbols: dict[int, tuple[str, bool, str, str]] = {}
    for line in _readelf("--dyn-syms", path).splitlines():
        m = _SYM_LINE.match(line)
        if m:
            index, typ, bind, ndx, name = m.groups()
            symbols[int(index)] = (name.split("@")[0], ndx == "UND", typ, bind)
    imports, own = set(), set()
    for line in _readelf("-r", path).splitlines():
        m = _REL_LINE.match(line)
        if not m or m.group(3) not in KINDS:
            continue
        offset, info, rtype, _printed, sign, addend = m.groups()
        name, undefined, _typ, _bind = symbols[int(info, 16) >> 32]
        if name not in wanted or (rtype == "R_X86_64_64" and int(addend, 16) != 0):
            continue
        (imports if undefined else own).add((name, int(offset, 16), KINDS[rtype]))
    defines = {name for name, undefined, typ, bind in symbols.values()
               if name in wanted and not undefined and typ in ("FUNC", "IFUNC") and bind in ("GLOBAL", "WEAK")}
    relro = None
    for line in _readelf("-l", path).splitlines():
        m = _RELRO_LINE.match(line)
        if m:
            start = int(m.group(1), 16)
            relro = (start, start + int(m.group(2), 16))
    return Truth(frozenset(imports), frozenset(own), frozenset(defines), relro)


def triples(slots: tuple[GotSlot, ...]) -> frozenset[tuple[str, int, str]]:
    return frozenset((s.symbol, s.vaddr, s.kind) for s in slots)


def got_of(path: Path, wanted: frozenset[str] = WANTED) -> GotInfo:
    with path.open("rb") as f:
        return read_got(f, wanted)


def assert_matches_readelf(path: Path, wanted: frozenset[str] = WANTED) -> GotInfo:
    info, truth = got_of(path, wanted), readelf_truth(path, wanted)
    assert triples(info.slots) == truth.imports
    assert triples(info.self_slots) == truth.own
    assert info.defines == truth.defines
    assert info.relro == truth.relro
    assert info.has_dynamic
    assert info.problems == ()
    assert len(set(info.slots)) == len(info.slots)
    return info


def system_file(name: str) -> Path:
    path = SYSTEM_FILES[name]
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    return path.resolve()


# --- system files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SYSTEM_FILES))
def test_system_files_match_readelf(name):
    assert_matches_readelf(system_file(name))


def test_libc_reaches_its_own_malloc_through_interposable_slots():
    info = got_of(system_file("libc"))
    assert info.elf_type == "ET_DYN"
    assert info.defines >= ALLOC
    own = {(s.symbol, s.kind) for s in info.self_slots}
    assert {("malloc", "glob_dat"), ("free", "glob_dat"), ("realloc", "jump_slot"),
            ("calloc", "jump_slot")} <= own
    # libc imports none of them: they are its own definitions, not imports
    assert not {s.symbol for s in info.slots} & ALLOC


def test_redis_imports_the_allocator_from_jemalloc():
    info = got_of(system_file("redis-server"))
    assert {s.symbol for s in info.slots} >= ALLOC
    assert not info.defines & ALLOC
    assert "abs64" in {s.kind for s in info.slots if s.symbol == "malloc"}  # zmalloc's function pointers


def test_libstdcxx_imports_malloc_and_defines_operator_new():
    info = got_of(system_file("libstdc++"))
    assert {"malloc", "free"} <= {s.symbol for s in info.slots}
    assert "_Znwm" in info.defines
    assert "_Znwm" in {s.symbol for s in info.self_slots}


def test_python_executable_imports_malloc_through_its_plt():
    info = got_of(system_file("python3.11"))
    assert info.elf_type in ("ET_EXEC", "ET_DYN")
    assert ("malloc", "jump_slot") in {(s.symbol, s.kind) for s in info.slots}
    assert not info.defines & ALLOC


def test_libc_relro_matches_readelf_program_headers():
    info, truth = got_of(LIBC), readelf_truth(LIBC)
    assert truth.relro is not None
    assert info.relro == truth.relro
    # every slot libc's internal malloc calls go through is inside RELRO: a patcher must mprotect it first
    start, end = info.relro
    assert all(start <= s.vaddr < end for s in info.self_slots if s.kind == "glob_dat")


def test_symbol_count_fallbacks_give_the_same_result():
    """libc has DT_GNU_HASH and DT_HASH; without the first the count comes from DT_HASH, without both from
    where DT_STRTAB starts after DT_SYMTAB."""
    data = LIBC.read_bytes()
    reference = read_got(io.BytesIO(data), WANTED)
    no_gnu = patch_dynamic(data, {DT_GNU_HASH: (DT_DEBUG, 0)})
    no_hash = patch_dynamic(no_gnu, {DT_HASH: (DT_DEBUG, 0)})
    for variant in (no_gnu, no_hash):
        assert read_got(io.BytesIO(variant), WANTED) == reference


# --- programs built here ------------------------------------------------------------------------------------

LIB_C = r"""
#include <stdlib.h>
#include <string.h>
void *(*lib_alloc_ptr)(size_t) = malloc;  /* R_X86_64_64 against malloc */
void (*lib_free_ptr)(void *) = free;
void *lib_make(size_t n) { char *p = malloc(n); if (p) memset(p, 0, n); return p; }
void *lib_grow(void *p, size_t n) { return realloc(p, n); }
void *lib_zeroed(size_t n) { return calloc(n, 1); }
void lib_drop(void *p) { free(p); }
void *(*lib_malloc_address(void))(size_t) { return malloc; }  /* GLOB_DAT: address taken in code */
"""

MAIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
void *lib_make(size_t n);
void lib_drop(void *p);
void *(*main_alloc_ptr)(size_t) = malloc;
int main(int argc, char **argv) {
    char *p = malloc(16 * (size_t)argc);
    p = realloc(p, 64);
    void *q = calloc(4, 4);
    void *r = lib_make(8);
    printf("%p %p %p %p %s\n", (void *)p, q, r, (void *)main_alloc_ptr, argv[0]);
    free(p);
    free(q);
    lib_drop(r);
    return 0;
}
"""

INTERPOSER_C = r"""
#include <stddef.h>
#include <string.h>
static _Alignas(16) char pool[1 << 16];
static size_t used;
void *malloc(size_t n) { n = (n + 15) & ~(size_t)15; if (used + n > sizeof pool) return NULL;
                         used += n; return pool + used - n; }
void free(void *p) { (void)p; }
void *calloc(size_t a, size_t b) { void *p = malloc(a * b); if (p) memset(p, 0, a * b); return p; }
void *realloc(void *p, size_t n) { void *q = malloc(n); if (q && p) memcpy(q, p, n); return q; }
char *dup_string(const char *s) { size_t n = strlen(s) + 1; char *p = malloc(n); if (p) memcpy(p, s, n);
                                  return p; }
"""

STATIC_C = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) { char *p = malloc(32 * (size_t)argc); printf("%p %s\n", (void *)p, argv[0]);
                                  free(p); return 0; }
"""

VARIANTS = {
    "now": ["-Wl,-z,now"],
    "lazy": ["-Wl,-z,lazy"],
    "noplt": ["-fno-plt"],
    "hashboth": ["-Wl,--hash-style=both"],
}


def _cc(out: Path, sources: dict[str, str], flags: list[str], libs: tuple[str, ...] = ()) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    paths = []
    for name, text in sources.items():
        src = out.parent / name
        src.write_text(text)
        paths.append(str(src))
    subprocess.run([cc, "-O0", *flags, "-o", str(out), *paths, *libs], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """name -> binary: lib-<variant>, main-<variant>, main-nopie, interposer, static."""
    out: dict[str, Path] = {}
    for variant, flags in VARIANTS.items():
        d = tmp_path_factory.mktemp(variant)
        lib = _cc(d / "libt.so", {"lib.c": LIB_C}, ["-shared", "-fPIC", *flags])
        out[f"lib-{variant}"] = lib
        out[f"main-{variant}"] = _cc(d / "main", {"main.c": MAIN_C}, [*flags, f"-L{d}", f"-Wl,-rpath,{d}"],
                                     ("-lt",))
    d = tmp_path_factory.mktemp("nopie")
    _cc(d / "libt.so", {"lib.c": LIB_C}, ["-shared", "-fPIC"])
    out["main-nopie"] = _cc(d / "main", {"main.c": MAIN_C}, ["-no-pie", f"-L{d}", f"-Wl,-rpath,{d}"], ("-lt",))
    d = tmp_path_factory.mktemp("interposer")
    out["interposer"] = _cc(d / "libinterpose.so", {"interpose.c": INTERPOSER_C}, ["-shared", "-fPIC"])
    d = tmp_path_factory.mktemp("static")
    with contextlib.suppress(subprocess.CalledProcessError):  # no libc.a: test_static_binary skips
        out["static"] = _cc(d / "static", {"static.c": STATIC_C}, ["-static"])
    return out


BUILT_DYNAMIC = [f"{kind}-{variant}" for variant in VARIANTS for kind in ("lib", "main")] + \
    ["main-nopie", "interposer"]


@pytest.mark.parametrize("name", BUILT_DYNAMIC)
def test_built_objects_match_readelf(built, name):
    assert_matches_readelf(built[name])


def _kinds(info: GotInfo, symbol: str) -> set[str]:
    return {s.kind for s in info.slots if s.symbol == symbol}


@pytest.mark.parametrize("variant", ["now", "lazy"])
def test_plt_calls_are_jump_slots_with_either_binding(built, variant):
    lib = got_of(built[f"lib-{variant}"])
    for symbol in ALLOC - {"malloc"}:
        assert "jump_slot" in _kinds(lib, symbol), symbol
    assert _kinds(lib, "free") == {"jump_slot", "abs64"}  # called, and a pointer in data
    # malloc's address is also taken in code, so it has a GLOB_DAT slot, and ld routes its PLT call
    # through that same slot (.plt.got) instead of giving it a jump slot: patching the one catches both.
    assert _kinds(lib, "malloc") == {"glob_dat", "abs64"}
    assert not lib.defines & ALLOC
    assert lib.elf_type == "ET_DYN"
    main = got_of(built[f"main-{variant}"])
    assert {s.symbol for s in main.slots} >= ALLOC


def test_lazy_and_immediate_binding_use_the_same_kinds_of_slot(built):
    def shape(info: GotInfo) -> set[tuple[str, str]]:
        return {(s.symbol, s.kind) for s in info.slots}

    for kind in ("lib", "main"):
        assert shape(got_of(built[f"{kind}-now"])) == shape(got_of(built[f"{kind}-lazy"]))


def test_no_plt_calls_go_through_glob_dat(built):
    lib = got_of(built["lib-noplt"])
    for symbol in ALLOC:
        assert _kinds(lib, symbol) & {"glob_dat"}, symbol
        assert "jump_slot" not in _kinds(lib, symbol), symbol
    main = got_of(built["main-noplt"])
    for symbol in ALLOC:
        assert "glob_dat" in _kinds(main, symbol), symbol


def test_non_pie_executable(built):
    info = got_of(built["main-nopie"])
    assert info.elf_type == "ET_EXEC"
    assert "jump_slot" in _kinds(info, "malloc")


def test_a_library_defining_malloc_does_not_import_it(built):
    info = got_of(built["interposer"])
    assert info.defines >= ALLOC
    assert not {s.symbol for s in info.slots} & ALLOC
    # dup_string calls the library's own, interposable malloc through its PLT
    assert ("malloc", "jump_slot") in {(s.symbol, s.kind) for s in info.self_slots}


def strip_section_headers(data: bytes) -> bytes:
    """What `strip --strip-section-headers` (binutils >= 2.41) would leave for our purposes."""
    out = bytearray(data)
    struct.pack_into("<Q", out, 40, 0)  # e_shoff
    struct.pack_into("<HH", out, 60, 0, 0)  # e_shnum, e_shstrndx
    return bytes(out)


@pytest.mark.parametrize("name", ["lib-now", "main-lazy", "lib-noplt", "interposer"])
def test_section_headers_are_not_needed(built, name, tmp_path):
    original = built[name]
    stripped = tmp_path / original.name
    stripped.write_bytes(strip_section_headers(original.read_bytes()))
    assert "There are no sections" in _readelf("-S", stripped)
    assert got_of(stripped) == got_of(original)
    assert got_of(stripped).slots or got_of(stripped).self_slots


def test_static_binary(built):
    if "static" not in built:
        pytest.skip("gcc -static failed (no libc.a?)")
    info = got_of(built["static"])
    assert not info.has_dynamic
    assert info.slots == () and info.self_slots == ()
    assert info.defines == frozenset()


# --- malformed input ----------------------------------------------------------------------------------------

def dynamic_entries(data: bytes) -> list[tuple[int, int, int]]:
    """(file offset, tag, value) of each dynamic entry, found through PT_DYNAMIC's p_offset."""
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        p_type, _f, p_offset, _v, _p, p_filesz, _m, _a = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        if p_type == 2:
            return [(p_offset + j, *struct.unpack_from("<qQ", data, p_offset + j)) for j in range(0, p_filesz, 16)]
    raise AssertionError("no PT_DYNAMIC")


def patch_dynamic(data: bytes, changes: dict[int, tuple[int, int | None]]) -> bytes:
    """Rewrite the entry with tag t as (new tag, new value or the old one if None)."""
    out = bytearray(data)
    for offset, tag, value in dynamic_entries(data):
        if tag in changes:
            new_tag, new_value = changes[tag]
            struct.pack_into("<qQ", out, offset, new_tag, value if new_value is None else new_value)
    return bytes(out)


@pytest.fixture(scope="module")
def small_lib(built) -> bytes:
    return built["lib-now"].read_bytes()


def tiny_elf(*, strtab_first: bool) -> tuple[bytes, int]:
    """A hand-made ET_DYN with no hash table, one PT_LOAD and a dynamic section; returns (file, GOT address).

    Symbols: 1 "malloc" (undefined, its name is the tail of "xmalloc", as linkers merge strings),
    2 "xmalloc" (undefined), 3 "free" (defined). Relocations against them in a 6-slot GOT.
    """
    strtab = b"\0xmalloc\0free\0"
    sym = struct.Struct("<IBBHQQ")
    symtab = (bytes(24) + sym.pack(2, 0x12, 0, 0, 0, 0) + sym.pack(1, 0x12, 0, 0, 0, 0)
              + sym.pack(9, 0x12, 0, 1, 0x100, 8))
    dynamic_size, rela_size = 8 * 16, 6 * 24
    first, second = (strtab, symtab) if strtab_first else (symtab, strtab)
    base = 64 + 2 * 56
    first_at = base
    second_at = (first_at + len(first) + 7) & ~7
    rela_at = (second_at + len(second) + 7) & ~7
    dynamic_at = rela_at + rela_size
    got = dynamic_at + dynamic_size
    end = got + 6 * 8
    strtab_at, symtab_at = (first_at, second_at) if strtab_first else (second_at, first_at)
    rela = b"".join(struct.pack("<QQq", got + 8 * slot, (index << 32) | rtype, addend) for slot, index, rtype, addend in [
        (0, 1, 6, 0),  # GLOB_DAT malloc
        (1, 2, 7, 0),  # JUMP_SLOT xmalloc: not wanted
        (2, 3, 6, 0),  # GLOB_DAT free, defined here
        (3, 1, 1, 8),  # R_X86_64_64 malloc+8: not a call target
        (4, 1, 1, 0),  # R_X86_64_64 malloc
        (5, 0, 8, 0x40),  # RELATIVE
    ])
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in [
        (DT_STRTAB, strtab_at), (10, len(strtab)), (6, symtab_at), (11, 24),
        (DT_RELA, rela_at), (DT_RELASZ, rela_size), (9, 24), (0, 0)])
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01".ljust(16, b"\0"), 3, 62, 1, 0, 64, 0, 0,
                         64, 56, 2, 64, 0, 0)
    phdrs = (struct.pack("<IIQQQQQQ", 1, 6, 0, 0, 0, end, end, 0x1000)
             + struct.pack("<IIQQQQQQ", 2, 6, dynamic_at, dynamic_at, dynamic_at, dynamic_size, dynamic_size, 8))
    out = bytearray(end)
    for at, blob in [(0, header), (64, phdrs), (first_at, first), (second_at, second), (rela_at, rela),
                     (dynamic_at, dynamic)]:
        out[at:at + len(blob)] = blob
    return bytes(out), got


@pytest.mark.parametrize("strtab_first", [False, True])
def test_hand_made_object_without_hash_tables(strtab_first):
    data, got = tiny_elf(strtab_first=strtab_first)
    info = read_got(io.BytesIO(data), WANTED)
    assert info.slots == (GotSlot("malloc", got, "glob_dat"), GotSlot("malloc", got + 32, "abs64"))
    assert info.self_slots == (GotSlot("free", got + 16, "glob_dat"),)
    assert info.elf_type == "ET_DYN" and info.has_dynamic and info.relro is None
    if strtab_first:
        # no way to count the symbols: `defines` cannot be read, the relocations' symbols still are
        assert info.defines == frozenset()
        assert len(info.problems) == 1 and "symbol count unknown" in info.problems[0]
    else:
        assert info.defines == {"free"}  # counted up to DT_STRTAB
        assert info.problems == ()


@pytest.mark.parametrize("bad", [
    b"", b"\x7fEL", b"hello world, not an ELF file at all",
    b"\x7fELF\x01\x01\x01" + bytes(57),  # ELFCLASS32
])
def test_not_an_elf64_file(bad):
    with pytest.raises(GotError):
        read_got(io.BytesIO(bad), WANTED)


@pytest.mark.parametrize("offset,value", [(4, 1), (5, 2), (18, 183)])  # class 32, big-endian, aarch64
def test_other_elf_flavours_are_rejected(small_lib, offset, value):
    data = bytearray(small_lib)
    data[offset] = value
    with pytest.raises(GotError):
        read_got(io.BytesIO(bytes(data)), WANTED)


def test_relocation_table_larger_than_the_file(small_lib):
    reference = read_got(io.BytesIO(small_lib), WANTED)
    info = read_got(io.BytesIO(patch_dynamic(small_lib, {DT_RELASZ: (DT_RELASZ, 1 << 62)})), WANTED)
    assert any("DT_RELA" in p for p in info.problems)
    # the PLT relocations are a separate table and still read
    assert {s for s in reference.slots if s.kind == "jump_slot"} <= set(info.slots)


def test_plt_relocations_of_type_rel_are_skipped(small_lib):
    info = read_got(io.BytesIO(patch_dynamic(small_lib, {DT_PLTREL: (DT_PLTREL, DT_REL)})), WANTED)
    assert any("DT_PLTREL is DT_REL" in p for p in info.problems)
    assert "jump_slot" not in {s.kind for s in info.slots}
    assert "glob_dat" in {s.kind for s in info.slots}


def test_rel_table_is_reported(small_lib):
    info = read_got(io.BytesIO(patch_dynamic(small_lib, {DT_RELA: (DT_REL, None)})), WANTED)
    assert any("DT_REL relocations skipped" in p for p in info.problems)
    assert "jump_slot" in {s.kind for s in info.slots}  # DT_JMPREL is still RELA and still read


def test_endless_gnu_hash_chain_is_bounded(small_lib):
    """Point DT_GNU_HASH at the string table: garbage buckets and a chain that may never end."""
    strtab = next(value for _o, tag, value in dynamic_entries(small_lib) if tag == DT_STRTAB)
    start = time.monotonic()
    read_got(io.BytesIO(patch_dynamic(small_lib, {DT_GNU_HASH: (DT_GNU_HASH, strtab)})), WANTED)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("fraction", [0.002, 0.01, 0.05, 0.1, 0.3, 0.5])
def test_truncated_file_gives_a_partial_result(small_lib, fraction):
    info = read_got(io.BytesIO(small_lib[: int(len(small_lib) * fraction)]), WANTED)
    assert info.problems
    assert not any("unexpected" in p for p in info.problems)


# --- fuzz ---------------------------------------------------------------------------------------------------

class WatchedFile(io.BytesIO):
    """Fails the test if read_got ever asks for more than the file holds or reads far more than its size."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.total = 0

    def read(self, n: int | None = -1) -> bytes:
        assert n is not None and 0 <= n <= self.size, n
        self.total += n
        assert self.total <= 64 * self.size + (1 << 16), self.total
        return super().read(n)


def fuzz_call(data: bytes) -> None:
    start = time.monotonic()
    try:
        info = read_got(WatchedFile(data), WANTED)
    except GotError:
        return
    finally:
        assert time.monotonic() - start < 5
    assert not any("parsing stopped on unexpected data" in p for p in info.problems), info.problems
    assert all(isinstance(s, GotSlot) for s in info.slots + info.self_slots)
    assert info.defines <= WANTED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    fuzz_call(data)


X86_64_IDENT = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 3, 62)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes_behind_a_valid_identification(data):
    fuzz_call(X86_64_IDENT + data)


EDGES = [0, 1, 7, 8, 16, 23, 24, 0x7F, 0xFF, 0xFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
WORD = st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(EDGES).map(lambda v: struct.pack("<Q", v)))


def hot_offsets(data: bytes) -> list[int]:
    """File offsets of the fields read_got relies on: ELF and program headers, the dynamic section, and the
    start of every table it points at (found through the section headers, which the test may use)."""
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    hot = list(range(0, 64, 2)) + list(range(phoff, phoff + 56 * phnum, 8))
    hot += [offset + k for offset, _t, _v in dynamic_entries(data) for k in (0, 8)]
    shoff, = struct.unpack_from("<Q", data, 40)
    shnum, = struct.unpack_from("<H", data, 60)
    for i in range(shnum):
        sh_type, = struct.unpack_from("<I", data, shoff + 64 * i + 4)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, shoff + 64 * i + 24)
        if sh_type in (4, 5, 6, 11, 0x6FFFFFF6):  # RELA, HASH, DYNAMIC, DYNSYM, GNU_HASH
            hot += list(range(sh_offset, min(sh_offset + sh_size, sh_offset + 512), 8))
    return sorted(o for o in set(hot) if o < len(data))


@pytest.fixture(scope="module")
def fuzz_base(small_lib) -> tuple[bytes, list[int]]:
    return small_lib, hot_offsets(small_lib)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_real_object(fuzz_base, data):
    base, hot = fuzz_base
    out = bytearray(base)
    position = st.one_of(st.sampled_from(hot), st.integers(0, len(base) - 1))
    for pos, word in data.draw(st.lists(st.tuples(position, WORD), min_size=1, max_size=8)):
        out[pos:pos + len(word)] = word[: max(0, len(base) - pos)]
    if data.draw(st.booleans()):
        del out[data.draw(st.integers(0, len(out))):]
    fuzz_call(bytes(out))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 1 << 20))
def test_fuzz_truncated_libc(cut):
    data = _libc_bytes()
    fuzz_call(data[: cut * len(data) >> 20])


_LIBC_CACHE: list[bytes] = []


def _libc_bytes() -> bytes:
    if not _LIBC_CACHE:
        _LIBC_CACHE.append(LIBC.read_bytes())
    return _LIBC_CACHE[0]
