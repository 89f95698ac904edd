"""Where in an allocator function a uprobe is cheapest and still correct, decided by disassembling it.

A uprobe on an instruction the kernel emulates (a relative jump, jcc or call, a push) costs one trap;
on any other it must also single-step a copy of the instruction out of line, measured here at about
20x more (bench_malloc: 0.4 us against 13 us a hit). Allocators rarely start with one: jemalloc's
free begins with eleven instructions computing a table index from the pointer before its first jcc.
Running those before the probe fires is correct when none of them writes an argument register the
probe reads, %rsp (the caller's return address is read at *(%rsp)), or memory, and none of them is a
branch; the probe then sees exactly the registers and stack of the function's entry. And it must be
the only way in: a branch elsewhere in the function to an address in (entry, probe] would run the
probe a second time in one call (or skip the entry part), so the whole function is swept for direct
branch targets first, and an indirect jump anywhere in it (a jump table could land anywhere) or an
undecodable byte keeps the probe at the first candidate that needs no such proof, the entry.

Needs capstone; without it, or on any doubt, the probe goes where the conservative walker in
resolve.probe_offset puts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Placement", "place", "ARG_REGS", "available"]

# Argument registers each entry point's probe reads (System V: rdi rsi rdx rcx r8 r9).
ARG_REGS: dict[str, frozenset[str]] = {
    "malloc": frozenset({"rdi"}), "valloc": frozenset({"rdi"}), "pvalloc": frozenset({"rdi"}),
    "calloc": frozenset({"rdi", "rsi"}), "realloc": frozenset({"rdi", "rsi"}),
    "posix_memalign": frozenset({"rdi", "rdx"}), "aligned_alloc": frozenset({"rsi"}),
    "memalign": frozenset({"rsi"}), "mmap": frozenset({"rsi", "rcx"}), "mmap64": frozenset({"rsi", "rcx"}),
    "free": frozenset({"rdi"}), "cfree": frozenset({"rdi"}), "munmap": frozenset({"rdi"}),
}
ALL_ARGS = frozenset({"rdi", "rsi", "rdx", "rcx", "r8", "r9"})
WALK_BYTES = 64
WALK_INSNS = 16
MAX_BODY = 1 << 16

_ALIASES = {
    "rdi": ("rdi", "edi", "di", "dil"), "rsi": ("rsi", "esi", "si", "sil"), "rdx": ("rdx", "edx", "dx", "dl", "dh"),
    "rcx": ("rcx", "ecx", "cx", "cl", "ch"), "r8": ("r8", "r8d", "r8w", "r8b"), "r9": ("r9", "r9d", "r9w", "r9b"),
    "rsp": ("rsp", "esp", "sp", "spl"),
}


@dataclass(frozen=True, slots=True)
class Placement:
    offset: int       # from the function's entry
    emulated: bool    # the probed instruction is one the kernel emulates (cheap)
    how: str          # e.g. "jne after 9 instructions", for reports


def available() -> bool:
    try:
        import capstone  # noqa: F401
    except ImportError:
        return False
    return True


def _cs() -> Any:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _emulated(insn: Any, x86: Any, capstone: Any) -> bool:
    """Instructions the x86 uprobe code runs without single-stepping: relative jmp/jcc/call, push reg."""
    ops = insn.operands
    if insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
        return len(ops) == 1 and ops[0].type == x86.X86_OP_IMM
    return insn.mnemonic == "push" and len(ops) == 1 and ops[0].type == x86.X86_OP_REG


def _harmless(insn: Any, protected: frozenset[str], x86: Any, capstone: Any) -> bool:
    """Safe to run before the probe: no branch, no memory write, no write of a protected register."""
    for grp in (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET, capstone.CS_GRP_INT,
                capstone.CS_GRP_IRET, capstone.CS_GRP_PRIVILEGE):
        if insn.group(grp):
            return False
    if insn.mnemonic.startswith(("rep", "lock", "syscall", "sysenter", "xchg", "cmpxchg", "push", "pop",
                                 "enter", "leave", "stos", "movs", "cpuid", "rdtsc", "xbegin", "ud")):
        return False
    try:
        for op in insn.operands:
            if op.type == x86.X86_OP_MEM and op.access & capstone.CS_AC_WRITE:
                return False
        _read, written = insn.regs_access()
    except capstone.CsError:
        return False
    names = {insn.reg_name(r) for r in written}
    bad = {a for reg in (*protected, "rsp") for a in _ALIASES.get(reg, (reg,))}
    return not names & bad


def _branch_targets(md: Any, body: bytes, vaddr: int) -> set[int] | None:
    """Every direct branch target in the function; None when the sweep cannot vouch for it (an
    undecodable byte or an indirect jump)."""
    import capstone
    from capstone import x86

    targets: set[int] = set()
    end = vaddr
    for insn in md.disasm(body, vaddr):
        end = insn.address + insn.size
        if insn.group(capstone.CS_GRP_JUMP):
            ops = insn.operands
            if len(ops) == 1 and ops[0].type == x86.X86_OP_IMM:
                targets.add(int(ops[0].imm))
            else:
                return None  # indirect jump: a jump table may reach any instruction
    if end < vaddr + len(body):
        return None
    return targets


def place(code: bytes, vaddr: int, size: int, protected: frozenset[str] = ALL_ARGS) -> Placement | None:
    """The cheapest correct probe offset in the function at `vaddr` of `size` bytes (from its symbol),
    whose bytes are `code` (at least its first MAX_BODY); None without capstone, without a known
    size, or when nothing better than the entry is provable (the caller then uses its conservative
    walker)."""
    try:
        import capstone
        from capstone import x86
    except ImportError:
        return None
    if size <= 1 or len(code) < min(size, MAX_BODY):
        return None
    code = code[:min(size, MAX_BODY)]
    md = _cs()
    targets: set[int] | None = None
    for n, insn in enumerate(md.disasm(code[:WALK_BYTES], vaddr)):
        if n >= WALK_INSNS:
            return None
        off = insn.address - vaddr
        if insn.mnemonic == "endbr64":
            continue
        if _emulated(insn, x86, capstone):
            if off == 0:
                return Placement(0, True, f"{insn.mnemonic} at entry")
            if targets is None:
                targets = _branch_targets(md, code, vaddr)
                if targets is None:
                    return None
            if any(vaddr < t <= insn.address for t in targets):
                return None
            return Placement(off, True, f"{insn.mnemonic} after {n} instructions")
        if not _harmless(insn, protected, x86, capstone):
            return None
    return None
