"""Which GOT slots of a process to point at the sampler's hooks, and where each hook forwards to.

A slot is patched only when it holds the very function its hook forwards to (the definition the
uprobe path would probe: resolve() found the allocator), or, for a PLT slot not bound yet, the
object's own lazy-binding stub. A slot holding anything else (a program's own allocator hook such as
curl_global_init_mem's, a sanitizer's malloc, another link namespace's libc) is left alone and
counted: redirecting it would hand memory to the wrong allocator.

Never patched: the loader, the sampler, the allocator's own object (its internal calls are its
business) except glibc's libc, whose own calls to malloc (strdup, fopen, getdelim...) go through its
GOT so that malloc can be interposed: those are patched, as uprobes on malloc see them. mmap/munmap are
never patched in the allocator or libc (their mmaps are the allocator's own, counted through malloc).
The malloc family is not patched in the object whose operator new is hooked (that new calls malloc:
one allocation would count twice).

Forwarders: some entry points are one jump through their own object's PLT to another (libstdc++'s
new[] is `jmp operator new@plt`, delete is `jmp free@plt`, glibc's reallocarray `jmp realloc@plt`).
Hooking both ends would count one call twice, and not hooking the target's slot in that object would
miss the calls the object makes itself (std::string's buffers come and go inside libstdc++). So a
forwarder is not hooked anywhere, and the slot it jumps through is patched even where the rules
above would skip it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from nativewatch.inject.gotslots import GotError, GotSlot, read_got
from nativewatch.inject.sampler import CXX_FAMILY, HOOKED, MALLOC_FAMILY, MEMFD_NAME, MMAP_FAMILY
from nativewatch.malloc_profile.elfimage import ElfImage, image_for_fd
from nativewatch.malloc_profile.resolve import ProbePlan, tail_jump_target
from nativewatch.sources.procfs import Mapping, read_maps

__all__ = ["Object", "objects", "Plan", "make_plan", "PlannedSlot", "plan_slots", "LDSO_RE", "LIBC_RE", "CXX_RE"]

LDSO_RE = re.compile(r"/ld-linux[^/]*\.so|/ld-[\d.]+\.so|/ld64\.so|/ld-musl")
LIBC_RE = re.compile(r"/libc(\.so\.\d+|-[\d.]+\.so)$|/ld-musl")
CXX_RE = re.compile(r"/libstdc\+\+\.so[.\d]*$|/libc\+\+\.so[.\d]*$")
_WANTED = frozenset(HOOKED)


@dataclass
class Object:
    path: str  # as the maps show it, without " (deleted)"
    inode: int
    mappings: list[Mapping]

    @property
    def first(self) -> Mapping:
        return min(self.mappings, key=lambda m: m.offset)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.inode, self.first.start)

    @property
    def span(self) -> tuple[int, int]:
        return (min(m.start for m in self.mappings), max(m.end for m in self.mappings))

    def exec_ranges(self) -> list[tuple[int, int]]:
        return [(m.start, m.end) for m in self.mappings if "x" in m.perms]

    def bias(self, img: ElfImage) -> int | None:
        """Load bias: run-time address minus link-time address."""
        first = self.first
        vaddr = img.vaddr_of_offset(first.offset)
        return None if vaddr is None else first.start - vaddr

    @property
    def is_sampler(self) -> bool:
        return self.path.startswith(f"/memfd:{MEMFD_NAME}")


def objects(pid: int, proc_root: str = "/proc") -> list[Object]:
    objs: dict[tuple[str, int], Object] = {}
    for m in read_maps(pid, proc_root).mappings:
        if m.inode == 0 or not m.path.startswith("/"):
            continue
        path = m.path.removesuffix(" (deleted)")  # upgraded on disk while mapped: the same object
        objs.setdefault((path, m.inode), Object(path, m.inode, [])).mappings.append(m)
    return [o for o in objs.values() if o.exec_ranges()]


def open_object(pid: int, o: Object, proc_root: str) -> int:
    f = o.first
    return os.open(f"{proc_root}/{pid}/map_files/{f.start:x}-{f.end:x}", os.O_RDONLY | os.O_CLOEXEC)


def image_of(pid: int, o: Object, proc_root: str) -> ElfImage | None:
    try:
        fd = open_object(pid, o, proc_root)
    except OSError:
        return None
    try:
        return image_for_fd(fd)
    finally:
        os.close(fd)


@dataclass
class Plan:
    reals: dict[str, int]                      # hooked function -> the definition its hook calls
    cxx: str = ""                              # object whose operator new is hooked
    forwarders: dict[str, tuple[str, str]] = field(default_factory=dict)  # f -> (object, g it jumps to)
    forced: set[tuple[str, str]] = field(default_factory=set)             # (object, g) slots patched anyway
    skipped_bound_elsewhere: int = 0

    @property
    def hooked(self) -> dict[str, int]:
        """What the hooks forward to, forwarders left out (their calls reach the hook of their target)."""
        return {n: a for n, a in self.reals.items() if n not in self.forwarders}


@dataclass(frozen=True, slots=True)
class PlannedSlot:
    addr: int
    symbol: str
    value: int  # what it held when planned (the original, restored at the end)


def _definition(pid: int, objs: list[Object], name: str, prefer: list[str], proc_root: str,
                images: dict[str, ElfImage | None]) -> tuple[int, Object] | None:
    """Run-time address of `name` as the process binds it: in the objects `prefer` names first (the
    allocator resolve() found), then any exporter."""
    order = sorted(objs, key=lambda o: (o.path not in prefer, prefer.index(o.path) if o.path in prefer else 0))
    for o in order:
        if o.is_sampler or LDSO_RE.search(o.path):
            continue
        if o.path not in images:
            images[o.path] = image_of(pid, o, proc_root)
        img = images[o.path]
        if img is None or name not in img.exports:
            continue
        bias = o.bias(img)
        if bias is not None:
            return bias + img.exports[name], o
    return None


def _got(pid: int, o: Object, proc_root: str) -> tuple[list[GotSlot], ElfImage] | None:
    try:
        fd = open_object(pid, o, proc_root)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            info = read_got(f, _WANTED)
        img = image_for_fd(fd)
    except (GotError, OSError):
        return None
    finally:
        os.close(fd)
    return [*info.slots, *info.self_slots], img


def _plt_slot(code: bytes, at: int) -> int | None:
    """The GOT slot a PLT stub at `at` jumps through: [endbr64] [bnd] jmp *disp32(%rip)."""
    i = 4 if code[:4] == b"\xf3\x0f\x1e\xfa" else 0
    if code[i:i + 1] == b"\xf2":
        i += 1
    if code[i:i + 2] != b"\xff\x25" or len(code) < i + 6:
        return None
    return at + i + 6 + int.from_bytes(code[i + 2:i + 6], "little", signed=True)


def _forwarder(pid: int, addr: int, o: Object, got: list[GotSlot], bias: int, mem: int) -> str | None:
    """The hooked function `addr` (in `o`) jumps to through o's own PLT at its first instruction."""
    code = os.pread(mem, 16, addr)
    target = tail_jump_target(code, addr)
    if target is None:
        return None
    slot = _plt_slot(os.pread(mem, 16, target), target)
    if slot is None:
        return None
    return next((s.symbol for s in got if bias + s.vaddr == slot and s.symbol in _WANTED), None)


def make_plan(pid: int, objs: list[Object], plan: ProbePlan, proc_root: str = "/proc") -> Plan:
    images: dict[str, ElfImage | None] = {}
    libc = [o.path for o in objs if LIBC_RE.search(o.path)]
    cxx = [o.path for o in objs if CXX_RE.search(o.path)]
    reals: dict[str, int] = {}
    owners: dict[str, Object] = {}
    for name in HOOKED:
        if name in MMAP_FAMILY:
            prefer = [plan.provider, *libc] if plan.provider_kind == "tcmalloc" else libc
        elif name in CXX_FAMILY:
            prefer = [plan.provider, *cxx]
        else:
            prefer = [plan.provider]
        found = _definition(pid, objs, name, prefer, proc_root, images)
        if found is not None:
            reals[name], owners[name] = found
    out = Plan(reals, cxx=owners["_Znwm"].path if "_Znwm" in owners else "")
    mem = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        gots: dict[str, tuple[list[GotSlot], ElfImage] | None] = {}
        for name, addr in reals.items():
            o = owners[name]
            if o.path not in gots:
                gots[o.path] = _got(pid, o, proc_root)
            got = gots[o.path]
            bias = o.bias(got[1]) if got is not None else None
            if got is None or bias is None:
                continue
            try:
                target = _forwarder(pid, addr, o, got[0], bias, mem)
            except OSError:
                continue
            if target is not None and target != name:
                out.forwarders[name] = (o.path, target)
    finally:
        os.close(mem)
    # glibc's reallocarray checks n * m, then jumps to realloc through libc's own GOT: a forwarder
    # whose jump is not its first instruction
    ra = owners.get("reallocarray")
    if ra is not None and LIBC_RE.search(ra.path) and "realloc" in reals:
        out.forwarders.setdefault("reallocarray", (ra.path, "realloc"))
    # the slot at the end of a chain (sized delete -> delete -> free) carries the hook
    out.forced = {(obj, g) for obj, g in out.forwarders.values() if g not in out.forwarders}
    return out


def _skipped(o: Object, plan: ProbePlan, p: Plan) -> frozenset[str]:
    if LDSO_RE.search(o.path) or o.is_sampler:
        return _WANTED
    skip: set[str] = set(p.forwarders)
    if o.path == plan.provider:
        skip.update(_WANTED if plan.provider_kind != "glibc" else MMAP_FAMILY)
    if LIBC_RE.search(o.path):
        skip.update(MMAP_FAMILY)
    if o.path == p.cxx:
        skip.update(MALLOC_FAMILY)
    return frozenset(n for n in skip if (o.path, n) not in p.forced)


def plan_slots(pid: int, objs: list[Object], plan: ProbePlan, p: Plan, proc_root: str,
               problems: list[str]) -> tuple[list[PlannedSlot], set[tuple[str, int, int]]]:
    """GOT slots of `objs` to point at the hooks, with their current values; and the objects looked at."""
    hooked = p.hooked
    out: list[PlannedSlot] = []
    scanned: set[tuple[str, int, int]] = set()
    mem = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for o in objs:
            scanned.add(o.key)
            skip = _skipped(o, plan, p)
            if skip == _WANTED:
                continue
            got = _got(pid, o, proc_root)
            if got is None:
                problems.append(f"{o.path}: GOT not read, its calls are not sampled")
                continue
            bias = o.bias(got[1])
            if bias is None:
                continue
            lo, hi = o.span
            for s in got[0]:
                if s.symbol in skip or s.symbol not in hooked:
                    continue
                addr = bias + s.vaddr
                try:
                    raw = os.pread(mem, 8, addr)
                except OSError:
                    continue
                if len(raw) != 8:
                    continue
                value = int.from_bytes(raw, "little")
                # not bound yet: the object's own lazy-binding stub (its own definition would be
                # the symbol's address in it, which binds it to itself, not to the allocator)
                own = got[1].exports.get(s.symbol)
                lazy = s.kind == "jump_slot" and lo <= value < hi and (own is None or value != bias + own)
                if value != hooked[s.symbol] and not lazy:
                    p.skipped_bound_elsewhere += 1
                    continue
                out.append(PlannedSlot(addr, s.symbol, value))
    finally:
        os.close(mem)
    return out, scanned
