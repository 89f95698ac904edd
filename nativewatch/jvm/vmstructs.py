"""Names of interpreted Java methods, read from a running HotSpot JVM's memory with the layout the JVM
itself exports (issue 11).

libjvm.so exports `gHotSpotVMStructs` and `gHotSpotVMTypes`: tables of (type, field, offset) and
(type, size) that the Serviceability Agent uses to read a JVM from outside. An interpreter frame holds
its `Method*` three words below its frame pointer (frame::interpreter_frame_method_offset, -3 on x86-64
since JDK 8; the unwinder reads it from the stack copy). From the tables: Method::_constMethod ->
ConstMethod::_constants (ConstantPool*) and ConstMethod::_name_index; the pool's entries follow the
ConstantPool header (sizeof(ConstantPool) from the types table) and a name's slot holds its Symbol*;
ConstantPool::_pool_holder -> Klass::_name; Symbol::_length and Symbol::_body.

Everything is read through /proc/PID/mem (no ptrace stop, no signal) and is the target's own bytes:
every pointer is checked to be readable and every name to be a plausible Java identifier before it is
believed; anything else is None, and the frame stays `[java: interpreted]`.
"""

from __future__ import annotations

import os
import re
import struct
from collections import OrderedDict
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from nativewatch.sources.procfs import read_maps
from nativewatch.sources.procmem import ProcMem

__all__ = ["HotSpotLayout", "JavaMethodNames", "read_layout"]

_EXPORTS = ("gHotSpotVMStructs", "gHotSpotVMStructEntryArrayStride", "gHotSpotVMStructEntryTypeNameOffset",
            "gHotSpotVMStructEntryFieldNameOffset", "gHotSpotVMStructEntryOffsetOffset",
            "gHotSpotVMStructEntryAddressOffset",
            "gHotSpotVMStructEntryTypeStringOffset", "gHotSpotVMStructEntryIsStaticOffset",
            "gHotSpotVMTypes", "gHotSpotVMTypeEntryArrayStride", "gHotSpotVMTypeEntryTypeNameOffset",
            "gHotSpotVMTypeEntrySizeOffset")
_FIELDS = {("Method", "_constMethod"), ("ConstMethod", "_constants"), ("ConstMethod", "_name_index"),
           ("ConstantPool", "_pool_holder"), ("Klass", "_name"), ("Symbol", "_length"), ("Symbol", "_body"),
           ("StubQueue", "_stub_buffer"), ("StubQueue", "_buffer_limit")}
# static: where the interpreter's code lives (a StubQueue), so its frames are known without a perf map
_STATICS = {("AbstractInterpreter", "_code")}
_MAX_ENTRIES = 10_000
_NAME = re.compile(r"[A-Za-z_$<][A-Za-z0-9_$<>/.\[;-]{0,400}")


@dataclass(frozen=True, slots=True)
class HotSpotLayout:
    method_const_method: int
    const_method_constants: int
    const_method_name_index: int
    pool_holder: int
    pool_size: int        # sizeof(ConstantPool): the entries follow it
    klass_name: int
    symbol_length: int
    symbol_body: int
    stub_buffer: int = 0       # StubQueue::_stub_buffer
    buffer_limit: int = 0      # StubQueue::_buffer_limit
    interpreter_code: int = 0  # &AbstractInterpreter::_code (0: unknown)


def _cstring(mem: ProcMem, addr: int, limit: int = 128) -> str | None:
    raw = mem.read(addr, limit)
    if raw is None:
        # near the end of a mapping: shorter reads
        raw = mem.read(addr, 32)
        if raw is None:
            return None
    end = raw.find(b"\0")
    if end < 0:
        return None
    return raw[:end].decode("ascii", "replace")


def read_layout(mem: ProcMem, exports: dict[str, int]) -> HotSpotLayout | None:
    """The offsets this JVM was built with, from its own tables; None when they cannot be read."""
    def word(name: str) -> int | None:
        addr = exports.get(name)
        return mem.u64(addr) if addr else None

    structs, stride = word("gHotSpotVMStructs"), word("gHotSpotVMStructEntryArrayStride")
    o_type, o_field = word("gHotSpotVMStructEntryTypeNameOffset"), word("gHotSpotVMStructEntryFieldNameOffset")
    o_off, o_static = word("gHotSpotVMStructEntryOffsetOffset"), word("gHotSpotVMStructEntryIsStaticOffset")
    o_addr = word("gHotSpotVMStructEntryAddressOffset")
    types, tstride = word("gHotSpotVMTypes"), word("gHotSpotVMTypeEntryArrayStride")
    t_name, t_size = word("gHotSpotVMTypeEntryTypeNameOffset"), word("gHotSpotVMTypeEntrySizeOffset")
    vals = (structs, stride, o_type, o_field, o_off, o_static, types, tstride, t_name, t_size)
    if any(v is None for v in vals) or not stride or not tstride or stride > 4096 or tstride > 4096:
        return None
    assert structs is not None and stride is not None and types is not None and tstride is not None
    found: dict[tuple[str, str], int] = {}
    statics: dict[tuple[str, str], int] = {}
    for i in range(_MAX_ENTRIES):
        entry = structs + i * stride
        tp = mem.u64(entry + o_type)  # type: ignore[operator]
        if not tp:
            break
        fp = mem.u64(entry + o_field)  # type: ignore[operator]
        tname = _cstring(mem, tp)
        fname = _cstring(mem, fp) if fp else None
        if tname is None or fname is None:
            continue
        if (tname, fname) in _STATICS and o_addr is not None:
            addr = mem.u64(entry + o_addr)
            if addr:
                statics[(tname, fname)] = addr
            continue
        if (tname, fname) not in _FIELDS:
            continue
        static = mem.read(entry + o_static, 4)  # type: ignore[operator]
        off = mem.u64(entry + o_off)  # type: ignore[operator]
        if static is not None and struct.unpack("<i", static)[0] == 0 and off is not None and off < 4096:
            found[(tname, fname)] = off
        if len(found) == len(_FIELDS) and len(statics) == len(_STATICS):
            break
    pool_size = None
    for i in range(_MAX_ENTRIES):
        entry = types + i * tstride
        tp = mem.u64(entry + t_name)  # type: ignore[operator]
        if not tp:
            break
        if _cstring(mem, tp) == "ConstantPool":
            pool_size = mem.u64(entry + t_size)  # type: ignore[operator]
            break
    names = ("Method", "_constMethod"), ("ConstMethod", "_constants"), ("ConstMethod", "_name_index"), \
        ("ConstantPool", "_pool_holder"), ("Klass", "_name"), ("Symbol", "_length"), ("Symbol", "_body")
    if any(n not in found for n in names) or not pool_size or pool_size > 4096:
        return None
    return HotSpotLayout(found[names[0]], found[names[1]], found[names[2]], found[names[3]], pool_size,
                         found[names[4]], found[names[5]], found[names[6]],
                         found.get(("StubQueue", "_stub_buffer"), 0), found.get(("StubQueue", "_buffer_limit"), 0),
                         statics.get(("AbstractInterpreter", "_code"), 0))


def _libjvm_exports(pid: int, proc_root: str) -> dict[str, int]:
    """Run-time addresses of the gHotSpot* exports of the libjvm.so mapped in pid."""
    maps = read_maps(pid, proc_root)
    base = None
    start_end = None
    for m in maps.mappings:
        if m.path.endswith("/libjvm.so") and m.offset == 0:
            base, start_end = m.start, (m.start, m.end)
            break
    if base is None or start_end is None:
        return {}
    fd = os.open(f"{proc_root}/{pid}/map_files/{start_end[0]:x}-{start_end[1]:x}", os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".dynsym")
        if not isinstance(sec, SymbolTableSection):
            return {}
        first_load = next((s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"), None)
        bias = base - (int(first_load["p_vaddr"]) - int(first_load["p_offset"])) if first_load else base
        out = {}
        for name in _EXPORTS:
            syms = sec.get_symbol_by_name(name)
            if syms:
                out[name] = bias + int(syms[0]["st_value"])
        return out


class JavaMethodNames:
    """`Class.method` for a Method* of one JVM, cached; None when it cannot be read or looks wrong."""

    MAX_CACHED = 65536

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.mem = ProcMem(pid, proc_root)
        self.problem = ""
        self.layout: HotSpotLayout | None = None
        try:
            exports = _libjvm_exports(pid, proc_root)
            self.layout = read_layout(self.mem, exports) if exports else None
            if self.layout is None:
                self.problem = "the JVM's VMStructs could not be read" if exports else "no libjvm.so exports"
        except (OSError, ValueError, KeyError) as exc:
            self.problem = f"VMStructs not read: {exc}"
        self._cache: OrderedDict[int, str | None] = OrderedDict()
        self.interpreter = self._interpreter_range()

    def _interpreter_range(self) -> tuple[int, int]:
        """[start, end) of the template interpreter's code, from AbstractInterpreter::_code; (0, 0)
        when unknown. Generated once at start-up, it does not move."""
        lay = self.layout
        if lay is None or not lay.interpreter_code or not lay.stub_buffer:
            return 0, 0
        queue = self.mem.u64(lay.interpreter_code)
        if not queue:
            return 0, 0
        start = self.mem.u64(queue + lay.stub_buffer)
        raw = self.mem.read(queue + lay.buffer_limit, 4)
        if not start or raw is None:
            return 0, 0
        size = struct.unpack("<i", raw)[0]
        return (start, start + size) if 0 < size < 1 << 28 else (0, 0)

    def in_interpreter(self, addr: int) -> bool:
        return self.interpreter[0] <= addr < self.interpreter[1]

    def _symbol(self, addr: int | None) -> str | None:
        if not addr or self.layout is None:
            return None
        raw = self.mem.read(addr + self.layout.symbol_length, 2)
        if raw is None:
            return None
        n = struct.unpack("<H", raw)[0]
        if not 0 < n <= 512:
            return None
        body = self.mem.read(addr + self.layout.symbol_body, n)
        if body is None:
            return None
        text = body.decode("utf-8", "replace")
        return text if _NAME.fullmatch(text) else None

    def name(self, method: int) -> str | None:
        if method in self._cache:
            self._cache.move_to_end(method)
            return self._cache[method]
        got = self._resolve(method)
        self._cache[method] = got
        if len(self._cache) > self.MAX_CACHED:
            self._cache.popitem(last=False)
        return got

    def _resolve(self, method: int) -> str | None:
        lay = self.layout
        if lay is None or not method or method & 7:
            return None
        cm = self.mem.u64(method + lay.method_const_method)
        if not cm or cm & 7:
            return None
        cp = self.mem.u64(cm + lay.const_method_constants)
        raw = self.mem.read(cm + lay.const_method_name_index, 2)
        if not cp or cp & 7 or raw is None:
            return None
        index = struct.unpack("<H", raw)[0]
        holder = self.mem.u64(cp + lay.pool_holder)
        if not index or not holder:
            return None
        meth = self._symbol(self.mem.u64(cp + lay.pool_size + 8 * index))
        klass = self._symbol(self.mem.u64(holder + lay.klass_name))
        if meth is None or klass is None:
            return None
        return f"{klass.replace('/', '.')}.{meth}"

    def close(self) -> None:
        self.mem.close()
