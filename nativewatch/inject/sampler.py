"""The sampler object (nwsampler.c, built by build-sampler.sh): its file, its symbols, and its state
inside a target, read and written through /proc/PID/mem.

The object exports nothing; everything is found in its own .symtab, read from the file nativewatch
built (the bytes put into the target are that file's, so the offsets are the same).
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from nativewatch.debugfiles import build_id
from nativewatch.errors import SourceUnavailable
from nativewatch.inject.ptrace import read_mem, write_mem

__all__ = ["SAMPLER_PATH", "SamplerFile", "sampler_file", "TargetSampler", "MEMFD_NAME", "HOOKED",
           "LAYOUT_FIELDS"]

SAMPLER_PATH = Path(os.environ.get("NATIVEWATCH_SAMPLER", Path(__file__).with_name("nwsampler.so")))
MEMFD_NAME = "nativewatch-sampler"

# Functions the sampler wraps (nwh_<name>, real pointer nwr_<name>), by family: which objects may be
# patched for each is decided in inject.plan.
MALLOC_FAMILY = ("malloc", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc", "memalign",
                 "valloc", "pvalloc", "free", "cfree")
MMAP_FAMILY = ("mmap", "mmap64", "munmap")
CXX_FAMILY = ("_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_t",
              "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t", "_ZnamSt11align_val_tRKSt9nothrow_t",
              "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
              "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t", "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t",
              "_ZdlPvSt11align_val_tRKSt9nothrow_t", "_ZdaPvSt11align_val_tRKSt9nothrow_t")
HOOKED = MALLOC_FAMILY + MMAP_FAMILY + CXX_FAMILY

# nw_layout[] in nwsampler.c, in order
LAYOUT_FIELDS = ("size", "enabled", "interval", "unacked", "sampled", "set_full", "generation", "exp", "slots",
                 "slot_size", "set", "set_slots", "nslots", "nexp")
NW_MAGIC = 0x6E77736D706C7231
PATCH_SLOTS = 8192


@dataclass(frozen=True, slots=True)
class SamplerFile:
    path: str
    data: bytes
    build_id: str
    symbols: dict[str, int]  # link-time addresses
    sizes: dict[str, int]
    layout: dict[str, int]
    exec_range: tuple[int, int]  # link-time [lo, hi) of its code
    segments: tuple[tuple[int, int, int], ...] = ()  # PT_LOAD (vaddr, offset, filesz)

    def file_offset(self, vaddr: int) -> int:
        for v, off, size in self.segments:
            if v <= vaddr < v + size:
                return vaddr - v + off
        raise ValueError(f"{vaddr:#x} is in no segment of the sampler")


def _layout(elf: ELFFile, data: bytes, vaddr: int) -> dict[str, int]:
    for seg in elf.iter_segments("PT_LOAD"):
        if seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
            off = vaddr - seg["p_vaddr"] + seg["p_offset"]
            vals = struct.unpack_from(f"<{len(LAYOUT_FIELDS)}Q", data, off)
            return dict(zip(LAYOUT_FIELDS, vals, strict=True))
    raise SourceUnavailable("sampler object: nw_layout not in a loaded segment")


@functools.cache
def sampler_file(path: str | None = None) -> SamplerFile:
    """The built sampler. Raises SourceUnavailable when it was not built (setup builds it)."""
    p = str(path or SAMPLER_PATH)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SourceUnavailable(f"the in-process sampler is not built ({p}: {exc.strerror}); "
                                "scripts/setup.sh builds it (nativewatch/inject/build-sampler.sh)") from None
    try:
        with open(p, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise SourceUnavailable(f"{p} has no symbol table (was it stripped?)")
            symbols: dict[str, int] = {}
            sizes: dict[str, int] = {}
            for sym in symtab.iter_symbols():
                if sym.name and sym["st_shndx"] != "SHN_UNDEF":
                    symbols[sym.name] = sym["st_value"]
                    sizes[sym.name] = sym["st_size"]
            loads = list(elf.iter_segments("PT_LOAD"))
            execs = [(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"]) for s in loads if s["p_flags"] & 1]
            segments = tuple((s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in loads)
            bid = build_id(elf) or ""
            layout = _layout(elf, data, symbols["nw_layout"])
    except (ELFError, KeyError, OSError, struct.error) as exc:
        raise SourceUnavailable(f"{p} is not a usable sampler object: {exc}") from None
    missing = [n for n in ("nw_state", "nw_report_alloc", "nw_report_free", "nw_release", "nw_reinit", "nw_patches",
                           "nw_npatches", "nw_owner") if n not in symbols]
    missing += [f"nwh_{n}" for n in HOOKED if f"nwh_{n}" not in symbols]
    if missing or not execs:
        raise SourceUnavailable(f"{p}: sampler symbols missing: {', '.join(missing[:5])}")
    return SamplerFile(p, data, bid, symbols, sizes, layout, (min(a for a, _ in execs), max(b for _, b in execs)),
                       segments)


class TargetSampler:
    """The sampler as loaded in one process at load bias `bias`."""

    def __init__(self, pid: int, bias: int, sf: SamplerFile, proc_root: str = "/proc") -> None:
        self.pid, self.bias, self.sf, self.proc_root = pid, bias, sf, proc_root
        self._state = 0

    def addr(self, symbol: str) -> int:
        return self.bias + self.sf.symbols[symbol]

    def hook(self, name: str) -> int:
        return self.addr(f"nwh_{name}")

    def real_slot(self, name: str) -> int:
        return self.addr(f"nwr_{name}")

    def _u64(self, addr: int) -> int:
        data = read_mem(self.pid, addr, 8, self.proc_root)
        if len(data) != 8:
            raise OSError(5, f"short read at {addr:#x}")
        return int.from_bytes(data, "little")

    def _put(self, addr: int, value: int) -> None:
        write_mem(self.pid, addr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF), self.proc_root)

    def forget_state(self) -> None:
        self._state = 0

    @property
    def state(self) -> int:
        """Address of the state mapping (0: the constructor could not make it)."""
        if not self._state:
            addr = self._u64(self.addr("nw_state"))
            if addr and self._u64(addr) == NW_MAGIC:
                self._state = addr
        return self._state

    def field(self, name: str) -> int:
        return self.state + self.sf.layout[name]

    def read(self, name: str) -> int:
        return self._u64(self.field(name))

    def write(self, name: str, value: int) -> None:
        self._put(self.field(name), value)

    def set_exp_table(self, table: list[int]) -> None:
        if len(table) != self.sf.layout["nexp"]:
            raise ValueError(f"exponential table of {len(table)} entries, the sampler takes {self.sf.layout['nexp']}")
        write_mem(self.pid, self.field("exp"), struct.pack(f"<{len(table)}Q", *table), self.proc_root)

    def set_real(self, name: str, value: int) -> None:
        self._put(self.real_slot(name), value)

    def calls(self) -> int:
        """Hook calls so far, summed over the countdown slots (each slot's count is not atomic)."""
        n, size = self.sf.layout["nslots"], self.sf.layout["slot_size"]
        data = read_mem(self.pid, self.field("slots"), n * size, self.proc_root)
        return sum(struct.unpack_from("<Q", data, i * size + 8)[0] for i in range(len(data) // size))

    def reset_slots(self, interval: int, first: list[int]) -> None:
        """Every countdown starts at its own draw (so the first samples are not biased to the start)."""
        n, size = self.sf.layout["nslots"], self.sf.layout["slot_size"]
        buf = bytearray(n * size)
        for i in range(n):
            struct.pack_into("<qQQ", buf, i * size, first[i % len(first)] if interval else 0, 0,
                             int.from_bytes(os.urandom(8), "little") | 1)
        write_mem(self.pid, self.field("slots"), bytes(buf), self.proc_root)

    # ---- the patch log ---------------------------------------------------------------------------
    def read_patches(self) -> list[tuple[int, int]]:
        n = min(self._u64(self.addr("nw_npatches")), PATCH_SLOTS)
        if not n:
            return []
        data = read_mem(self.pid, self.addr("nw_patches"), 16 * n, self.proc_root)
        return [struct.unpack_from("<QQ", data, 16 * i) for i in range(len(data) // 16)]

    def write_patches(self, patches: list[tuple[int, int]]) -> None:
        if len(patches) > PATCH_SLOTS:
            raise ValueError(f"more than {PATCH_SLOTS} GOT entries to patch")
        if patches:
            write_mem(self.pid, self.addr("nw_patches"), b"".join(struct.pack("<QQ", a, v) for a, v in patches),
                      self.proc_root)
        self._put(self.addr("nw_npatches"), len(patches))

    @property
    def owner(self) -> int:
        return self._u64(self.addr("nw_owner"))

    @owner.setter
    def owner(self, pid: int) -> None:
        self._put(self.addr("nw_owner"), pid)
