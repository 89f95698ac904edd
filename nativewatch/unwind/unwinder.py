"""Unwind a copied user stack (x86-64) with the mapped objects' CFI, frame pointers where an object
has none.

Input: the registers at the sampled instruction (ip, sp, bp) and a copy of the stack from sp upwards.
Every memory read comes from that copy, never from the process: the copy is what the stack held at
the sample, and the process has moved on. Output: the instruction pointers of the frames, innermost
first, and why the walk stopped.

Pure: the caller supplies `code_at`, which says what is mapped at an address (an object with its CFI
and the difference between its link-time and run-time addresses, anonymous code, or nothing).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nativewatch.unwind.cfi import (
    EXPR,
    OFFSET,
    RA,
    RBP,
    RSP,
    SAME,
    UNDEFINED,
    VAL_EXPR,
    VAL_OFFSET,
    CfiError,
    Reader,
    Rule,
)

if TYPE_CHECKING:  # tables imports elfimage, whose package imports this module
    from nativewatch.unwind.tables import ObjectCfi

__all__ = ["Code", "CodeAt", "Unwound", "unwind", "CachedUnwinder", "MAX_FRAMES", "STOP_END", "STOP_TRUNCATED",
           "STOP_NO_CFI", "STOP_UNMAPPED", "STOP_BAD_FRAME", "STOP_DEPTH", "STOP_BAD_CFI"]

MAX_FRAMES = 127  # what the kernel's own stack walker keeps (PERF_MAX_STACK_DEPTH)

# Why a walk ended. STOP_END is the normal end (the outermost frame says it has no caller).
STOP_END = ""
STOP_TRUNCATED = "truncated stack copy"
STOP_NO_CFI = "no CFI"
STOP_UNMAPPED = "unmapped address"
STOP_BAD_FRAME = "bad frame"
STOP_DEPTH = "depth limit"
STOP_BAD_CFI = "bad CFI"


@dataclass(frozen=True, slots=True)
class Code:
    """What is mapped at an address. cfi None: anonymous code (a JIT) or a file without CFI; `delta`
    turns a run-time address into the object's link-time address (vaddr = addr + delta)."""
    cfi: ObjectCfi | None
    delta: int = 0
    interpreter: bool = False  # a JVM's template interpreter: its frames hold their Method*


CodeAt = Callable[[int], "Code | None"]


@dataclass(frozen=True, slots=True)
class Unwound:
    pcs: tuple[int, ...]  # pcs[0]: the sampled ip; the rest are return addresses
    stop: str             # STOP_END, or why the walk ended early
    fp_frames: int = 0    # frames found by the frame-pointer fallback rather than CFI
    # (index into pcs, Method*) of each JVM interpreter frame: which Java method it runs (the pc
    # alone is the interpreter's, the same for every method)
    methods: tuple[tuple[int, int], ...] = ()


class _Truncated(Exception):
    pass


class _Unknown(Exception):
    """A value the copy and the registers we have cannot give (another register, bad expression)."""


class _Stack:
    __slots__ = ("data", "base", "end", "reads")

    def __init__(self, data: bytes, base: int, reads: list[tuple[int, int]] | None = None) -> None:
        self.data = data
        self.base = base
        self.end = base + len(data)
        self.reads = reads  # every (address, word) read, for the memo's later check

    def word(self, addr: int) -> int:
        if not self.base <= addr <= self.end - 8:
            if self.reads is not None:
                self.reads.append((addr, -1))  # -1: not in the copy (a word is never negative)
            raise _Truncated
        v = int(_WORD.unpack_from(self.data, addr - self.base)[0])
        if self.reads is not None:
            self.reads.append((addr, v))
        return v

    def holds(self, addr: int, value: int) -> bool:
        if not self.base <= addr <= self.end - 8:
            return value == -1
        return int(_WORD.unpack_from(self.data, addr - self.base)[0]) == value


_WORD = struct.Struct("<Q")
# a HotSpot interpreter frame's Method* is 3 words below its frame pointer (x86-64, JDK 8 to 25;
# nativewatch.jvm.vmstructs reads the method's name from it)
INTERPRETER_METHOD_SLOT = 24


_M64 = (1 << 64) - 1


def _eval(expr: bytes, regs: dict[int, int], stack: _Stack, initial: int | None = None) -> int:
    """The DWARF expressions x86-64 CFI uses in practice: PLT stubs' CFA (rsp, rip, and, ge, shl,
    plus) and signal frames' saved registers (breg, deref). Anything else is _Unknown."""
    try:
        return _run_expr(Reader(expr, 0, len(expr)), regs, stack, initial)
    except CfiError:  # truncated operands
        raise _Unknown from None


# const1u/2u/4u/8u, const1s/2s/4s/8s
_CONSTS = {0x08: ("<B", 1), 0x0A: ("<H", 2), 0x0C: ("<I", 4), 0x0E: ("<Q", 8),
           0x09: ("<b", 1), 0x0B: ("<h", 2), 0x0D: ("<i", 4), 0x0F: ("<q", 8)}
# binary operators on the two top entries (a below b); comparisons are signed, as DWARF says
_BINARY: dict[int, Callable[[int, int], int]] = {
    0x1A: lambda a, b: a & b, 0x1C: lambda a, b: a - b, 0x1E: lambda a, b: a * b,
    0x21: lambda a, b: a | b, 0x22: lambda a, b: a + b, 0x27: lambda a, b: a ^ b,
    0x24: lambda a, b: a << b if b < 64 else 0, 0x25: lambda a, b: a >> b if b < 64 else 0,
    0x29: lambda a, b: int(_signed(a) == _signed(b)), 0x2A: lambda a, b: int(_signed(a) >= _signed(b)),
    0x2B: lambda a, b: int(_signed(a) > _signed(b)), 0x2C: lambda a, b: int(_signed(a) <= _signed(b)),
    0x2D: lambda a, b: int(_signed(a) < _signed(b)), 0x2E: lambda a, b: int(_signed(a) != _signed(b)),
}


def _run_expr(r: Reader, regs: dict[int, int], stack: _Stack, initial: int | None) -> int:
    vals: list[int] = [] if initial is None else [initial]

    def pop() -> int:
        if not vals:
            raise _Unknown
        return vals.pop()

    steps = 0
    while r.pos < r.end:
        steps += 1
        if steps > 256 or len(vals) > 64:
            raise _Unknown
        op = r.u8()
        if 0x30 <= op <= 0x4F:  # lit0..lit31
            vals.append(op - 0x30)
        elif 0x70 <= op <= 0x8F:  # breg0..breg31
            reg = op - 0x70
            if reg not in regs:
                raise _Unknown
            vals.append((regs[reg] + r.sleb()) & _M64)
        elif op == 0x06:  # deref
            vals.append(stack.word(pop()))
        elif op in _CONSTS:
            vals.append(r.fixed(*_CONSTS[op]) & _M64)
        elif op == 0x10:  # constu
            vals.append(r.uleb() & _M64)
        elif op == 0x11:  # consts
            vals.append(r.sleb() & _M64)
        elif op == 0x23:  # plus_uconst
            vals.append((pop() + r.uleb()) & _M64)
        elif op in _BINARY:
            b, a = pop(), pop()
            vals.append(_BINARY[op](a, b) & _M64)
        else:
            raise _Unknown
    if not vals:
        raise _Unknown
    return vals[-1]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _register(rule: tuple[int, int | bytes], cfa: int, old: int | None, regs: dict[int, int],
              stack: _Stack) -> int | None:
    """The caller's value of one register; None when unknown (and not needed unless used later)."""
    kind, val = rule
    if kind == SAME:
        return old
    if kind == UNDEFINED:
        return None
    if kind == OFFSET:
        return stack.word((cfa + int(val)) & _M64)  # type: ignore[arg-type]
    if kind == VAL_OFFSET:
        return (cfa + int(val)) & _M64  # type: ignore[arg-type]
    if kind in (EXPR, VAL_EXPR):
        try:
            v = _eval(bytes(val), regs, stack, initial=cfa)  # type: ignore[arg-type]
        except _Unknown:
            return None
        return stack.word(v) if kind == EXPR else v
    return None  # REGISTER: saved in another register we do not track


def unwind(ip: int, sp: int, bp: int, stack_copy: bytes, code_at: CodeAt, *,
           max_frames: int = MAX_FRAMES) -> Unwound:
    return _walk(ip, sp, bp, _Stack(stack_copy, sp), code_at, max_frames)[0]


class CachedUnwinder:
    """unwind() with a memo: a thread that allocates from the same call path again has the same ip
    and stack pointer, and the walk reads the same few stack words. A walk is a pure function of
    (ip, sp, bp if it was used, the words it read, the code map), so a remembered walk whose words
    all hold the same values in a new copy is that copy's walk: checking ~2 words a frame instead of
    walking. clear() when the code map changes."""

    def __init__(self, code_at: CodeAt, *, max_keys: int = 16384, per_key: int = 4) -> None:
        self.code_at = code_at
        self.max_keys = max_keys
        self.per_key = per_key
        self._memo: dict[tuple[int, int], list[tuple[int | None, tuple[tuple[int, int], ...], Unwound]]] = {}
        self.hits = 0
        self.misses = 0
        # the last walk that was not found in the memo: its reads and whether it used bp
        self.last_walk: tuple[tuple[tuple[int, int], ...], bool] | None = None

    def clear(self) -> None:
        self._memo.clear()

    def fresh_walk(self, sp: int, copy_len: int, u: Unwound,
                   max_words: int) -> tuple[list[tuple[int, int]], bool] | None:
        """The walk unwind() just did, as sorted (offset from sp, word) pairs that a check of the live
        stack can compare, and whether it used bp. None when it came from the memo, ran off the copy
        (a longer stack there could end differently), or depends on more than max_words words."""
        walk = self.last_walk
        if walk is None or u.stop == STOP_TRUNCATED:
            return None
        reads, bp_used = walk
        words: dict[int, int] = {}
        for addr, val in reads:
            if val < 0 or not sp <= addr <= sp + copy_len - 8:
                return None
            words[addr - sp] = val
        if len(words) > max_words:
            return None
        return sorted(words.items()), bp_used

    def unwind(self, ip: int, sp: int, bp: int, stack_copy: bytes) -> Unwound:
        key = (ip, sp)
        stack = _Stack(stack_copy, sp)
        entries = self._memo.get(key)
        if entries:
            for used_bp, reads, result in entries:
                if (used_bp is None or used_bp == bp) and all(stack.holds(a, v) for a, v in reads):
                    self.hits += 1
                    self.last_walk = None
                    return result
        self.misses += 1
        reads: list[tuple[int, int]] = []
        stack.reads = reads
        result, bp_used = _walk(ip, sp, bp, stack, self.code_at, MAX_FRAMES)
        if entries is None:
            if len(self._memo) >= self.max_keys:
                self._memo.clear()
            entries = self._memo[key] = []
        elif len(entries) >= self.per_key:
            entries.pop(0)
        entries.append((bp if bp_used else None, tuple(reads), result))
        self.last_walk = (tuple(reads), bp_used)
        return result


class _Rbp:
    """The caller's rbp as the walk knows it: a value, or the stack slot it was saved in, read only
    when a frame needs it. Without frame pointers rbp is an ordinary register (a loop counter, a
    pointer), and a walk that read its saved copy would depend on it for nothing: such walks would
    never repeat, in the memo or in the kernel."""

    __slots__ = ("value", "at", "initial")

    def __init__(self, bp: int) -> None:
        self.value: int | None = bp
        self.at: int | None = None
        self.initial = True  # still the sampled register's own value

    @property
    def known(self) -> bool:
        return self.value is not None or self.at is not None

    def get(self, stack: _Stack) -> int:
        if self.at is not None:
            self.value = stack.word(self.at)
            self.at = None
        if self.value is None:
            raise _Unknown
        return self.value

    def update(self, rule: tuple[int, int | bytes], cfa: int, regs: dict[int, int], stack: _Stack) -> None:
        kind, val = rule
        if kind == SAME:
            return
        self.initial = False
        self.value = self.at = None
        if kind == OFFSET:
            self.at = (cfa + int(val)) & _M64  # type: ignore[arg-type]
        elif kind == VAL_OFFSET:
            self.value = (cfa + int(val)) & _M64  # type: ignore[arg-type]
        elif kind in (EXPR, VAL_EXPR):
            self.value = _register(rule, cfa, None, regs, stack)
        # UNDEFINED, REGISTER: unknown from here on


def _walk(ip: int, sp: int, bp: int, stack: _Stack, code_at: CodeAt, max_frames: int) -> tuple[Unwound, bool]:
    """The walk, and whether the incoming bp was used (it is part of a memo key only then)."""
    pcs = [ip]
    rsp, pc = sp, ip
    rbp = _Rbp(bp)
    bp_used = False
    fp_frames = 0
    methods: list[tuple[int, int]] = []
    first = True
    while True:
        if len(pcs) >= max_frames:
            return Unwound(tuple(pcs), STOP_DEPTH, fp_frames, tuple(methods)), bp_used
        # a return address points after its call: look up the call itself
        look = pc if first else pc - 1
        code = code_at(look)
        if code is None:
            return Unwound(tuple(pcs), STOP_UNMAPPED, fp_frames, tuple(methods)), bp_used
        rule: Rule | None = None
        if code.cfi is not None and code.cfi.has_cfi:
            try:
                rule = code.cfi.rule_at((look + code.delta) & _M64)
            except CfiError:
                return Unwound(tuple(pcs), STOP_BAD_CFI, fp_frames, tuple(methods)), bp_used
        try:
            if rule is None:
                # No CFI here (anonymous JIT code, an object without unwind tables): a frame pointer
                # chain, believed only while it climbs the stack inside the copy.
                bp_used = bp_used or rbp.initial
                if not rbp.known:
                    return Unwound(tuple(pcs), STOP_NO_CFI, fp_frames, tuple(methods)), bp_used
                frame = rbp.get(stack)
                if frame <= rsp or frame & 7:
                    return Unwound(tuple(pcs), STOP_NO_CFI, fp_frames, tuple(methods)), bp_used
                cfa = frame + 16
                ra = stack.word(frame + 8)
                if code.interpreter and frame - INTERPRETER_METHOD_SLOT >= rsp:
                    methods.append((len(pcs) - 1, stack.word(frame - INTERPRETER_METHOD_SLOT)))
                if ra != 0 and code_at(ra - 1) is None:
                    # rbp held data, not a frame: say so rather than report a garbage frame
                    return Unwound(tuple(pcs), STOP_NO_CFI, fp_frames, tuple(methods)), bp_used
                rbp.initial = False
                rbp.value, rbp.at = None, frame  # the caller's rbp is saved at the frame's base
                fp_frames += 1
            else:
                regs = {RSP: rsp, RA: pc}
                needs_rbp = (rule.cfa_expr is not None or rule.cfa_reg == RBP
                             or rule.ra[0] in (EXPR, VAL_EXPR) or rule.rbp[0] in (EXPR, VAL_EXPR))
                if needs_rbp and rbp.known:
                    bp_used = bp_used or rbp.initial
                    with contextlib.suppress(_Unknown):
                        regs[RBP] = rbp.get(stack)
                if rule.cfa_expr is not None:
                    try:
                        cfa = _eval(rule.cfa_expr, regs, stack)
                    except _Unknown:
                        return Unwound(tuple(pcs), STOP_BAD_CFI, fp_frames, tuple(methods)), bp_used
                elif rule.cfa_reg == RSP:
                    cfa = rsp + rule.cfa_offset
                elif rule.cfa_reg == RBP:
                    if RBP not in regs:
                        return Unwound(tuple(pcs), STOP_BAD_FRAME, fp_frames, tuple(methods)), bp_used
                    cfa = regs[RBP] + rule.cfa_offset
                else:
                    return Unwound(tuple(pcs), STOP_BAD_CFI, fp_frames, tuple(methods)), bp_used  # CFA in a register we lack
                if rule.ra[0] == UNDEFINED:
                    return Unwound(tuple(pcs), STOP_END, fp_frames, tuple(methods)), bp_used  # the outermost frame (_start)
                ra_v = _register(rule.ra, cfa, None, regs, stack)
                if ra_v is None:
                    return Unwound(tuple(pcs), STOP_BAD_CFI, fp_frames, tuple(methods)), bp_used
                ra = ra_v
                rbp.update(rule.rbp, cfa, regs, stack)
        except _Truncated:
            return Unwound(tuple(pcs), STOP_TRUNCATED, fp_frames, tuple(methods)), bp_used
        if ra == 0:
            return Unwound(tuple(pcs), STOP_END, fp_frames, tuple(methods)), bp_used
        # the caller's stack pointer is the CFA; it must move up the stack (signal frames may not)
        if cfa <= rsp and not (rule is not None and rule.signal_frame):
            return Unwound(tuple(pcs), STOP_BAD_FRAME, fp_frames, tuple(methods)), bp_used
        pcs.append(ra)
        pc, rsp = ra, cfa
        # the frame a signal interrupted resumes at its exact pc, not after a call
        first = rule is not None and rule.signal_frame
