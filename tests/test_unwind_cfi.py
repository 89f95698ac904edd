"""The DWARF CFI parser and the unwinder (issue 11), without BPF.

Ground truth for the parser is binutils' own reading of the same files (`readelf
--debug-dump=frames-interp`, an independent implementation): for real objects of every kind the
profiler meets (Debian's libc, a JVM's libjvm.so, a -O2 program, a .debug_frame-only build, a file
whose section headers are gone) every row readelf prints must give the same CFA rule and the same
saved return address and rbp. The unwinder is checked on a stack whose frames the test lays out
itself, and both are fuzzed: no input may raise anything but the documented CfiError.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import build_c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nativewatch.unwind import cfi as C
from nativewatch.unwind.tables import ObjectCfi, load_cfi
from nativewatch.unwind.unwinder import (
    STOP_END,
    STOP_NO_CFI,
    STOP_TRUNCATED,
    STOP_UNMAPPED,
    Code,
    _eval,
    _Stack,
    unwind,
)

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
LIBJVM = Path("/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so")
_REG = {"rsp": C.RSP, "rbp": C.RBP}


def readelf_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    exe = shutil.which("readelf")
    if exe is None:
        pytest.fail("readelf missing: run scripts/setup.sh (binutils)")
    out = subprocess.run([exe, "--debug-dump=frames-interp", str(path)], capture_output=True, text=True,
                         check=False).stdout  # exits 1 on harmless warnings (e.g. libc's .debug_* links)
    rows: list[tuple[int, dict[str, str]]] = []
    for block in out.split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) < 3 or " FDE " not in lines[0] or not lines[1].lstrip().startswith("LOC"):
            continue
        cols = lines[1].split()
        for ln in lines[2:]:
            parts = ln.split()
            if len(parts) == len(cols):
                rows.append((int(parts[0], 16), dict(zip(cols, parts, strict=True))))
    return rows


def agrees(rule: C.Rule | None, row: dict[str, str]) -> bool:
    if rule is None:
        return False
    m = re.fullmatch(r"(rsp|rbp)\+(\d+)", row["CFA"])
    if m:
        if rule.cfa_expr is not None or rule.cfa_reg != _REG[m.group(1)] or rule.cfa_offset != int(m.group(2)):
            return False
    elif row["CFA"] == "exp":
        if rule.cfa_expr is None:
            return False
    else:
        return True  # a CFA in another register: readelf's spelling varies, the unwinder stops there
    for col, got in (("ra", rule.ra), ("rbp", rule.rbp)):
        want = row.get(col, "u")
        if want.startswith("c") and got != (C.OFFSET, int(want[1:])):
            return False
        if want == "u" and col == "rbp" and got[0] not in (C.SAME, C.UNDEFINED):
            return False
    return True


def check_against_readelf(path: Path, cfi: ObjectCfi, *, every: int = 1) -> int:
    rows = readelf_rows(path)
    assert rows, f"readelf printed no CFI rows for {path}"
    bad = [(hex(loc), row, cfi.rule_at(loc)) for loc, row in rows[::every] if not agrees(cfi.rule_at(loc), row)]
    assert not bad, bad[:5]
    return len(rows[::every])


def load(path: Path) -> ObjectCfi:
    with open(path, "rb") as f:
        return load_cfi(f, None)


def test_libc_rules_match_readelf():
    cfi = load(LIBC)
    assert cfi.source == ".eh_frame" and cfi.has_cfi
    assert check_against_readelf(LIBC, cfi) > 10_000


def test_libjvm_rules_match_readelf_and_fdes_are_decoded_lazily():
    if not LIBJVM.exists():
        pytest.fail(f"{LIBJVM} missing: run scripts/setup.sh (openjdk-17-jdk-headless)")
    cfi = load(LIBJVM)
    assert cfi.tables[0].cached_fdes() == 0 and len(cfi.tables[0]) > 20_000
    # every 7th row: the whole table is ~400,000 rows; a stride still visits every FDE's neighbourhood
    assert check_against_readelf(LIBJVM, cfi, every=7) > 20_000


def test_debug_frame_only_build_matches_readelf():
    flags = ["-O2", "-g", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]
    lib = build_c("xalloc_lib.c", name="libxalloc_debugframe.so", cflags=[*flags, "-fPIC", "-shared"])
    exe = build_c("wrapped_leak.c", name="wrapped_leak_debugframe", cflags=[*flags, "-pthread"],
                  ldflags=[str(lib)])
    for path in (lib, exe):
        cfi = load(path)
        assert ".debug_frame" in cfi.source, cfi.source
        check_against_readelf(path, cfi)


def test_file_without_section_headers_uses_the_program_header(tmp_path):
    lib = build_c("xalloc_lib.c", name="libxalloc.so", cflags=["-O2", "-fomit-frame-pointer", "-fPIC", "-shared"])
    data = bytearray(lib.read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)        # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    stripped = tmp_path / "noshdr.so"
    stripped.write_bytes(bytes(data))
    cfi = load(stripped)
    assert cfi.source == ".eh_frame (program headers)", cfi.problem
    full = load(lib)
    rows = readelf_rows(lib)
    assert rows
    for loc, row in rows:
        assert cfi.rule_at(loc) == full.rule_at(loc), (hex(loc), row)
        assert agrees(full.rule_at(loc), row), (hex(loc), row)


def test_plt_cfa_expression():
    # GCC/ld's .plt CFA: rsp + 8 + ((rip & 15) >= 11 ? 8 : 0)
    expr = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
    stack = _Stack(b"", 0)
    assert _eval(expr, {C.RSP: 0x1000, C.RA: 0x4020}, stack) == 0x1008
    assert _eval(expr, {C.RSP: 0x1000, C.RA: 0x402B}, stack) == 0x1010
    with pytest.raises(Exception):  # noqa: B017 - any register it lacks is "unknown", never a number
        _eval(bytes([0x73, 0x00]), {C.RSP: 0}, stack)  # breg3 (rbx)


class _FakeCfi(ObjectCfi):
    """Rules by address, for a stack the test lays out by hand."""

    def __init__(self, rules: dict[int, C.Rule]) -> None:
        super().__init__([], "test")
        self.rules = rules

    @property
    def has_cfi(self) -> bool:
        return True

    def rule_at(self, vaddr: int):
        return self.rules.get(vaddr)


def _frame_rule(cfa_offset: int) -> C.Rule:
    return C.Rule(C.RSP, cfa_offset, None, (C.OFFSET, -8), (C.SAME, 0))


def test_unwinder_walks_cfi_then_frame_pointers_and_says_why_it_stopped():
    # leaf at 0x1000 (frame of 32 bytes, CFA = rsp + 40), its caller at 0x2000 (no CFI: frame pointers),
    # whose caller at 0x3000 is the outermost frame (return address undefined)
    sp = 0x7000
    words = [0] * 64
    words[4] = 0x2005                # [sp+32]: return address into 0x2000's function (CFA-8)
    # 0x2000's frame: rbp = sp + 64 -> [rbp] = saved rbp (0), [rbp+8] = return address 0x3005
    words[8] = 0
    words[9] = 0x3005
    copy = b"".join(struct.pack("<Q", w) for w in words)
    code = {0x1000: Code(_FakeCfi({0x1000: _frame_rule(40)})), 0x2004: Code(None),
            0x3004: Code(_FakeCfi({0x3004: C.Rule(C.RSP, 8, None, (C.UNDEFINED, 0), (C.SAME, 0))}))}
    u = unwind(0x1000, sp, sp + 64, copy, code.get)
    assert u.pcs == (0x1000, 0x2005, 0x3005) and u.stop == STOP_END and u.fp_frames == 1
    # the same stack cut short
    assert unwind(0x1000, sp, sp + 64, copy[:40], code.get).stop == STOP_TRUNCATED
    # rbp that does not point up the stack is not followed
    assert unwind(0x1000, sp, sp - 16, copy, code.get).stop == STOP_NO_CFI
    # a return address into nothing mapped
    assert unwind(0x1000, sp, sp + 64, copy, {0x1000: code[0x1000]}.get).stop == STOP_UNMAPPED


_libc_cfi = None


def _libc() -> ObjectCfi:
    global _libc_cfi
    if _libc_cfi is None:
        _libc_cfi = load(LIBC)
    return _libc_cfi


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.binary(max_size=2048), hdr=st.one_of(st.none(), st.binary(max_size=256)),
       addrs=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8), debug=st.booleans())
def test_fuzz_cfi_parser_raises_only_cfierror(section, hdr, addrs, debug):
    try:
        table = C.FrameTable(section, 0x1000, debug_frame=debug, hdr=hdr, hdr_vaddr=0x800)
    except C.CfiError:
        return
    for a in addrs:
        with contextlib.suppress(C.CfiError):
            table.rule_at(a)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(copy=st.binary(max_size=1024), ip=st.integers(min_value=0, max_value=(1 << 64) - 1),
       bp=st.integers(min_value=0, max_value=(1 << 64) - 1), words=st.lists(
           st.integers(min_value=0, max_value=0x200000), max_size=64))
def test_fuzz_unwinder_never_raises(copy, ip, bp, words):
    # real libc CFI mapped at 0 (so many garbage words land in real functions) and garbage stacks
    libc = _libc()
    data = copy + b"".join(struct.pack("<Q", w) for w in words)
    u = unwind(ip & 0x1FFFFF, 0x10000, bp, data,
               lambda a: Code(libc) if 0 <= a < 0x200000 else None, max_frames=64)
    assert 1 <= len(u.pcs) <= 64


def test_load_cfi_of_garbage_is_a_problem_not_an_exception():
    cfi = load_cfi(io.BytesIO(b"\x7fELF" + b"\0" * 100), None)
    assert not cfi.has_cfi and cfi.problem


class _FakeMem:
    """A target's memory as one blob at 0x10000 (reads outside it fail, as unmapped ranges do)."""

    BASE = 0x10000

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def read(self, addr: int, size: int) -> bytes | None:
        off = addr - self.BASE
        if off < 0 or off + size > len(self.blob) or size <= 0:
            return None
        return self.blob[off:off + size]

    def u64(self, addr: int) -> int | None:
        raw = self.read(addr, 8)
        return struct.unpack("<Q", raw)[0] if raw else None

    def close(self) -> None:
        pass


def _names(blob: bytes):
    from nativewatch.jvm.vmstructs import HotSpotLayout, JavaMethodNames

    names = object.__new__(JavaMethodNames)
    names.mem = _FakeMem(blob)  # type: ignore[assignment]
    names.layout = HotSpotLayout(8, 8, 34, 24, 72, 24, 4, 6)  # JDK 17's, as read from its VMStructs
    names.problem = ""
    names._cache = __import__("collections").OrderedDict()
    return names


def test_java_method_name_from_a_hand_built_jvm_layout():
    base = _FakeMem.BASE
    blob = bytearray(0x1000)

    def put(off: int, fmt: str, *v: int) -> None:
        struct.pack_into(fmt, blob, off, *v)

    def symbol(off: int, text: bytes) -> int:
        put(off + 4, "<H", len(text))
        blob[off + 6:off + 6 + len(text)] = text
        return base + off

    method, const_method, pool, klass = 0x100, 0x200, 0x300, 0x500
    put(method + 8, "<Q", base + const_method)
    put(const_method + 8, "<Q", base + pool)
    put(const_method + 34, "<H", 5)
    put(pool + 24, "<Q", base + klass)
    put(pool + 72 + 8 * 5, "<Q", symbol(0x800, b"put"))
    put(klass + 24, "<Q", symbol(0x900, b"com/example/Cache"))
    names = _names(bytes(blob))
    assert names.name(base + method) == "com.example.Cache.put"
    assert names.name(base + method + 8) is None  # not a Method: its "fields" do not lead to names
    assert names.name(0) is None and names.name(base + method + 1) is None


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(min_size=0, max_size=4096), method=st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_fuzz_java_method_names_never_raise(blob, method):
    name = _names(blob).name(method)
    assert name is None or isinstance(name, str)


def test_cfi_is_read_once_per_build_id(tmp_path):
    """The same library in many containers is many inodes with one build id: one parsed table."""
    import os as _os
    import shutil as _shutil

    from nativewatch.unwind.tables import cfi_for_fd

    lib = build_c("xalloc_lib.c", name="libxalloc.so", cflags=["-O2", "-fomit-frame-pointer", "-fPIC", "-shared"])
    copies = [tmp_path / "a.so", tmp_path / "b.so"]
    for c in copies:
        _shutil.copy(lib, c)
    fds = [_os.open(c, _os.O_RDONLY) for c in copies]
    try:
        a, b = (cfi_for_fd(fd) for fd in fds)
        assert a is b and a.has_cfi
    finally:
        for fd in fds:
            _os.close(fd)
