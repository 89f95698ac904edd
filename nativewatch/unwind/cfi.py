"""DWARF call frame information (x86-64): find the FDE that covers an address and run its CFA program
to the row for that address.

Two sources, one parser:
- `.eh_frame` with `.eh_frame_hdr`'s sorted search table (every GCC/Clang x86-64 build has both: the
  unwinder of C++ exceptions needs them, so distributions never strip them); an FDE is parsed only
  when an address in it is first asked for, so libjvm.so's ~50,000 FDEs cost nothing until used.
- `.debug_frame` (objects built without unwind tables, or a separate debug file): no search table, so
  its FDE headers are indexed once.

Everything here is pure: bytes in, rules out. The bytes come from the target's files and are
untrusted: malformed input raises CfiError (never IndexError or an endless loop), and callers treat
that object as having no CFI.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass

__all__ = ["CfiError", "Reader", "Rule", "FrameTable", "RSP", "RBP", "RA", "UNDEFINED", "OFFSET", "VAL_OFFSET",
           "SAME", "EXPR", "VAL_EXPR"]

RBP, RSP, RA = 6, 7, 16  # DWARF register numbers on x86-64 (16: the return address column)

# register rule kinds
SAME, UNDEFINED, OFFSET, VAL_OFFSET, EXPR, VAL_EXPR, REGISTER = range(7)

_MAX_PROGRAM_STEPS = 100_000
_MAX_STATE_STACK = 64


class CfiError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Rule:
    """How to find the caller's frame at one address. CFA = cfa_reg + cfa_offset, or cfa_expr (a
    DWARF expression) when it is not None. ra and rbp are (kind, value): OFFSET n means saved at
    CFA + n; VAL_OFFSET n means the value is CFA + n; EXPR/VAL_EXPR carry the expression bytes."""
    cfa_reg: int
    cfa_offset: int
    cfa_expr: bytes | None
    ra: tuple[int, int | bytes]
    rbp: tuple[int, int | bytes]
    signal_frame: bool = False


# DW_EH_PE value formats of a fixed size: absptr, udata2/4/8, sdata2/4/8
_FIXED_ENCODINGS = {0x00: ("<Q", 8), 0x02: ("<H", 2), 0x03: ("<I", 4), 0x04: ("<Q", 8),
                    0x0A: ("<h", 2), 0x0B: ("<i", 4), 0x0C: ("<q", 8)}


class Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | memoryview, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = min(end, len(data))

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise CfiError("truncated CFI")

    def u8(self) -> int:
        self.need(1)
        v = self.data[self.pos]
        self.pos += 1
        return v

    def fixed(self, fmt: str, n: int) -> int:
        self.need(n)
        v = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += n
        return int(v)

    def uleb(self) -> int:
        return self._leb(signed=False)

    def sleb(self) -> int:
        return self._leb(signed=True)

    def _leb(self, *, signed: bool) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result - (1 << shift) if signed and b & 0x40 else result
            if shift > 70:
                raise CfiError("LEB128 too long")

    def block(self, n: int) -> bytes:
        self.need(n)
        v = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return v

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos, self.end) if isinstance(self.data, bytes) else \
            bytes(self.data[self.pos:self.end]).find(b"\0") + self.pos
        if end < self.pos:
            raise CfiError("unterminated string")
        v = bytes(self.data[self.pos:end])
        self.pos = end + 1
        return v

    def encoded(self, enc: int, section_vaddr: int, data_base: int = 0) -> int:
        """A DW_EH_PE-encoded pointer read at the current position."""
        if enc == 0xFF:
            raise CfiError("omitted pointer")
        field_vaddr = section_vaddr + self.pos
        fmt = enc & 0x0F
        if fmt == 0x01:
            v = self.uleb()
        elif fmt == 0x09:
            v = self.sleb()
        elif fmt in _FIXED_ENCODINGS:
            v = self.fixed(*_FIXED_ENCODINGS[fmt])
        else:
            raise CfiError(f"pointer encoding {enc:#x}")
        app = enc & 0x70
        if app == 0x10:
            v += field_vaddr
        elif app == 0x30:
            v += data_base
        elif app not in (0x00,):
            raise CfiError(f"pointer application {enc:#x}")
        # indirect (0x80) pointers only occur for personality routines, which are skipped
        return v & 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True)
class _Cie:
    code_align: int
    data_align: int
    ra_reg: int
    fde_enc: int
    has_aug_data: bool
    signal_frame: bool
    initial: bytes
    address_size: int


_Regs = dict[int, tuple[int, int | bytes]]


class FrameTable:
    """The CFI of one object, addressed by the object's own virtual addresses (link-time addresses:
    the caller subtracts the load bias)."""

    def __init__(self, section: bytes, section_vaddr: int, *, debug_frame: bool = False,
                 hdr: bytes | None = None, hdr_vaddr: int = 0, max_cached_fdes: int = 4096) -> None:
        self.section = section
        self.vaddr = section_vaddr
        self.debug_frame = debug_frame
        self._cies: dict[int, _Cie] = {}
        self._rows: dict[int, tuple[array[int], list[Rule]]] = {}
        self._max_cached = max_cached_fdes
        starts, offsets = (self._index_hdr(hdr, hdr_vaddr) if hdr is not None and not debug_frame
                           else (None, None))
        if starts is None:
            starts, offsets = self._index_scan()
        self._starts: array[int] = starts
        self._fde_offsets: array[int] = offsets

    # ---- index -------------------------------------------------------------------------------
    def _index_hdr(self, hdr: bytes, hdr_vaddr: int) -> tuple[array[int] | None, array[int] | None]:
        """.eh_frame_hdr: version, eh_frame_ptr_enc, fde_count_enc, table_enc, then a table of
        (initial location, FDE address) pairs sorted by location."""
        try:
            r = Reader(hdr, 0, len(hdr))
            if r.u8() != 1:
                return None, None
            ptr_enc, count_enc, table_enc = r.u8(), r.u8(), r.u8()
            r.encoded(ptr_enc, hdr_vaddr)
            n = r.encoded(count_enc, hdr_vaddr)
            if table_enc != 0x3B or n <= 0 or r.pos + 8 * n > len(hdr):
                return None, None  # anything but datarel sdata4 is unusual enough to scan instead
            pairs = array("i")
            pairs.frombytes(hdr[r.pos:r.pos + 8 * n])
        except CfiError:
            return None, None
        starts = array("Q", ((hdr_vaddr + v) & 0xFFFF_FFFF_FFFF_FFFF for v in pairs[0::2]))
        offsets = array("q", (hdr_vaddr + v - self.vaddr for v in pairs[1::2]))
        if any(starts[i] > starts[i + 1] for i in range(len(starts) - 1)):
            return None, None  # not sorted: a hostile or broken table; the scan does not trust it
        return starts, offsets

    def _index_scan(self) -> tuple[array[int], array[int]]:
        entries: list[tuple[int, int]] = []
        pos = 0
        data = self.section
        while pos + 4 <= len(data) and len(entries) < 2_000_000:
            length = struct.unpack_from("<I", data, pos)[0]
            if length == 0:
                if self.debug_frame:
                    pos += 4
                    continue
                break  # .eh_frame terminator
            hdr = 4
            if length == 0xFFFFFFFF:
                if pos + 12 > len(data):
                    break
                length = struct.unpack_from("<Q", data, pos + 4)[0]
                hdr = 12
            end = pos + hdr + length
            if end > len(data) or length < 4:
                break
            try:
                if not self._is_cie(pos + hdr, hdr):
                    start, _ = self._fde_range(pos)
                    entries.append((start, pos))
            except CfiError:
                pass
            pos = end
        entries.sort()
        return array("Q", (s for s, _ in entries)), array("q", (o for _, o in entries))

    def _is_cie(self, id_pos: int, hdr: int) -> bool:
        if hdr == 12:
            cid = struct.unpack_from("<Q", self.section, id_pos)[0]
            return cid == (0xFFFF_FFFF_FFFF_FFFF if self.debug_frame else 0)
        cid = struct.unpack_from("<I", self.section, id_pos)[0]
        return cid == (0xFFFFFFFF if self.debug_frame else 0)

    def __len__(self) -> int:
        return len(self._starts)

    # ---- entries -----------------------------------------------------------------------------
    def _entry(self, pos: int) -> tuple[int, int, int]:
        """(id field position, end, header size) of the entry at pos."""
        data = self.section
        if pos < 0 or pos + 4 > len(data):
            raise CfiError("entry out of range")
        length = struct.unpack_from("<I", data, pos)[0]
        hdr = 4
        if length == 0xFFFFFFFF:
            if pos + 12 > len(data):
                raise CfiError("truncated entry")
            length = struct.unpack_from("<Q", data, pos + 4)[0]
            hdr = 12
        end = pos + hdr + length
        if length < 4 or end > len(data):
            raise CfiError("entry length out of range")
        return pos + hdr, end, hdr

    def _cie_at(self, pos: int) -> _Cie:
        cached = self._cies.get(pos)
        if cached is not None:
            return cached
        id_pos, end, hdr = self._entry(pos)
        if not self._is_cie(id_pos, hdr):
            raise CfiError("CIE pointer does not point at a CIE")
        r = Reader(self.section, id_pos + (8 if hdr == 12 else 4), end)
        version = r.u8()
        if version not in (1, 3, 4):
            raise CfiError(f"CIE version {version}")
        aug = r.cstring()
        address_size = 8
        if version == 4:
            address_size = r.u8()
            r.u8()  # segment selector size
        if b"eh" in aug:
            r.fixed("<Q", 8)
        code_align = r.uleb()
        data_align = r.sleb()
        ra_reg = r.u8() if version == 1 else r.uleb()
        fde_enc = 0x00
        signal = False
        has_aug = aug.startswith(b"z")
        if has_aug:
            n = r.uleb()
            aug_end = r.pos + n
            r.need(n)
            for ch in aug[1:]:
                if ch == ord("R"):
                    fde_enc = r.u8()
                elif ch == ord("L"):
                    r.u8()
                elif ch == ord("P"):
                    penc = r.u8()
                    r.encoded(penc & 0x7F, self.vaddr)
                elif ch == ord("S"):
                    signal = True
                elif ch in (ord("B"), ord("G")):
                    pass  # AArch64 BTI / MTE flags; nothing to read
                else:
                    break  # unknown augmentation: its data length lets us skip the rest
            r.pos = aug_end
        elif aug not in (b"", b"eh"):
            raise CfiError(f"unknown CIE augmentation {aug!r}")
        cie = _Cie(code_align, data_align, ra_reg, fde_enc, has_aug, signal, r.block(end - r.pos),
                   address_size)
        if len(self._cies) < 4096:
            self._cies[pos] = cie
        return cie

    def _fde_cie(self, pos: int) -> tuple[_Cie, Reader]:
        id_pos, end, hdr = self._entry(pos)
        if self._is_cie(id_pos, hdr):
            raise CfiError("expected an FDE")
        if hdr == 12:
            ptr = struct.unpack_from("<Q", self.section, id_pos)[0]
            after = id_pos + 8
        else:
            ptr = struct.unpack_from("<I", self.section, id_pos)[0]
            after = id_pos + 4
        cie_pos = ptr if self.debug_frame else id_pos - ptr
        cie = self._cie_at(cie_pos)
        return cie, Reader(self.section, after, end)

    def _fde_range(self, pos: int) -> tuple[int, int]:
        cie, r = self._fde_cie(pos)
        if self.debug_frame:
            fmt, n = ("<Q", 8) if cie.address_size == 8 else ("<I", 4)
            return r.fixed(fmt, n), r.fixed(fmt, n)
        start = r.encoded(cie.fde_enc, self.vaddr)
        size = r.encoded(cie.fde_enc & 0x0F, self.vaddr)
        return start, size

    # ---- lookup ------------------------------------------------------------------------------
    def rule_at(self, vaddr: int) -> Rule | None:
        """The rule for the instruction at vaddr, or None when no FDE covers it. Raises CfiError on
        a malformed entry."""
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i < 0:
            return None
        pos = int(self._fde_offsets[i])
        rows = self._rows.get(pos)
        if rows is None:
            rows = self._decode(pos)
            if rows is None:
                return None
            if len(self._rows) >= self._max_cached:
                self._rows.pop(next(iter(self._rows)))
            self._rows[pos] = rows
        locs, rules = rows
        if not locs or vaddr >= locs[-1]:  # locs[-1] is the FDE's end
            return None
        j = bisect.bisect_right(locs, vaddr) - 1
        return rules[j] if j >= 0 else None

    def cached_fdes(self) -> int:
        return len(self._rows)

    def _decode(self, pos: int) -> tuple[array[int], list[Rule]] | None:
        cie, r = self._fde_cie(pos)
        if self.debug_frame:
            fmt, n = ("<Q", 8) if cie.address_size == 8 else ("<I", 4)
            start, size = r.fixed(fmt, n), r.fixed(fmt, n)
        else:
            start = r.encoded(cie.fde_enc, self.vaddr)
            size = r.encoded(cie.fde_enc & 0x0F, self.vaddr)
            if cie.has_aug_data:
                n = r.uleb()
                r.need(n)
                r.pos += n
        if size <= 0 or size > 1 << 32:
            return None
        program = r.block(r.end - r.pos)
        return _run(cie, start, size, program)


def _run(cie: _Cie, start: int, size: int, program: bytes) -> tuple[array[int], list[Rule]]:
    """Execute the CIE's initial instructions and the FDE's program; one Rule per row."""
    state = _State(cie)
    state.execute(cie.initial, start, None)
    state.initial_regs = dict(state.regs)
    state.loc = start
    locs = array("Q")
    rules: list[Rule] = []
    state.execute(program, start, (locs, rules))
    state.emit(locs, rules)
    # keep one rule per distinct location: the last one at an address wins
    out_locs = array("Q")
    out_rules: list[Rule] = []
    for k in range(len(rules)):
        if out_locs and out_locs[-1] == locs[k]:
            out_rules[-1] = rules[k]
            continue
        out_locs.append(locs[k])
        out_rules.append(rules[k])
    out_locs.append(start + size)
    return out_locs, out_rules


class _State:
    def __init__(self, cie: _Cie) -> None:
        self.cie = cie
        self.cfa_reg = RSP
        self.cfa_offset = 0
        self.cfa_expr: bytes | None = None
        self.regs: _Regs = {}
        self.initial_regs: _Regs = {}
        self.stack: list[tuple[int, int, bytes | None, _Regs]] = []
        self.loc = 0

    def rule(self) -> Rule:
        ra = self.regs.get(self.cie.ra_reg, (SAME, 0))
        rbp = self.regs.get(RBP, (SAME, 0))
        return Rule(self.cfa_reg, self.cfa_offset, self.cfa_expr, ra, rbp, self.cie.signal_frame)

    def emit(self, locs: array[int], rules: list[Rule]) -> None:
        locs.append(self.loc)
        rules.append(self.rule())

    def advance(self, delta: int, out: tuple[array[int], list[Rule]] | None) -> None:
        if out is not None:
            self.emit(*out)
        self.loc += delta

    def execute(self, program: bytes, start: int, out: tuple[array[int], list[Rule]] | None) -> None:
        r = Reader(program, 0, len(program))
        ca, da = self.cie.code_align, self.cie.data_align
        steps = 0
        while r.pos < r.end:
            steps += 1
            if steps > _MAX_PROGRAM_STEPS:
                raise CfiError("CFA program too long")
            op = r.u8()
            hi, low = op & 0xC0, op & 0x3F
            if hi == 0x40:
                self.advance(low * ca, out)
            elif hi == 0x80:
                self.regs[low] = (OFFSET, r.uleb() * da)
            elif hi == 0xC0:
                self._restore(low)
            elif op == 0x00:
                pass
            elif op == 0x01:  # set_loc (GCC and Clang never emit it; absolute encodings only)
                new = r.encoded(self.cie.fde_enc & 0x0F, 0)
                if new < self.loc:
                    raise CfiError("set_loc backwards")
                self.advance(new - self.loc, out)
            elif op == 0x02:
                self.advance(r.u8() * ca, out)
            elif op == 0x03:
                self.advance(r.fixed("<H", 2) * ca, out)
            elif op == 0x04:
                self.advance(r.fixed("<I", 4) * ca, out)
            elif op == 0x05:
                reg = r.uleb()
                self.regs[reg] = (OFFSET, r.uleb() * da)
            elif op == 0x06:
                self._restore(r.uleb())
            elif op == 0x07:
                self.regs[r.uleb()] = (UNDEFINED, 0)
            elif op == 0x08:
                self.regs[r.uleb()] = (SAME, 0)
            elif op == 0x09:
                reg = r.uleb()
                self.regs[reg] = (REGISTER, r.uleb())
            elif op == 0x0A:
                if len(self.stack) >= _MAX_STATE_STACK:
                    raise CfiError("remember_state too deep")
                self.stack.append((self.cfa_reg, self.cfa_offset, self.cfa_expr, dict(self.regs)))
            elif op == 0x0B:
                if not self.stack:
                    raise CfiError("restore_state without remember_state")
                # DWARF: the CFA rule is restored too (GCC relies on it after epilogues)
                self.cfa_reg, self.cfa_offset, self.cfa_expr, self.regs = self.stack.pop()
            elif op == 0x0C:
                self.cfa_reg, self.cfa_offset, self.cfa_expr = r.uleb(), r.uleb(), None
            elif op == 0x0D:
                self.cfa_reg, self.cfa_expr = r.uleb(), None
            elif op == 0x0E:
                self.cfa_offset = r.uleb()
            elif op == 0x0F:
                self.cfa_expr = r.block(r.uleb())
            elif op == 0x10:
                reg = r.uleb()
                self.regs[reg] = (EXPR, r.block(r.uleb()))
            elif op == 0x11:
                reg = r.uleb()
                self.regs[reg] = (OFFSET, r.sleb() * da)
            elif op == 0x12:
                self.cfa_reg, self.cfa_offset, self.cfa_expr = r.uleb(), r.sleb() * da, None
            elif op == 0x13:
                self.cfa_offset = r.sleb() * da
            elif op == 0x14:
                reg = r.uleb()
                self.regs[reg] = (VAL_OFFSET, r.uleb() * da)
            elif op == 0x15:
                reg = r.uleb()
                self.regs[reg] = (VAL_OFFSET, r.sleb() * da)
            elif op == 0x16:
                reg = r.uleb()
                self.regs[reg] = (VAL_EXPR, r.block(r.uleb()))
            elif op == 0x2E:
                r.uleb()  # GNU_args_size: nothing to do for unwinding
            elif op == 0x2F:
                reg = r.uleb()
                self.regs[reg] = (OFFSET, -r.uleb() * da)
            else:
                raise CfiError(f"CFA opcode {op:#x}")

    def _restore(self, reg: int) -> None:
        if reg in self.initial_regs:
            self.regs[reg] = self.initial_regs[reg]
        else:
            self.regs.pop(reg, None)
