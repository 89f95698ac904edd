"""Which object provides malloc/free/mmap for one process, and where exactly to put each probe.

The dynamic linker binds `malloc` to the first object in lookup order that defines it: the executable,
then LD_PRELOADed libraries, then the rest. We approximate that from the maps: an executable that
defines malloc (statically linked, or one that exports its own), else any non-libc library exporting
malloc (jemalloc, tcmalloc, mimalloc, ...), else libc. mmap/munmap are always libc's (or the static
executable's).

Probe points are file offsets inside the mapped file, opened through /proc/PID/map_files/<range> so
the kernel resolves the exact inode the target maps, also inside another mount namespace.

Probe placement: a uprobe on an instruction the kernel can emulate (push, jcc, jmp) costs several
times less than one it must single-step out of line. glibc's free begins with `test %rdi,%rdi; je`,
so we skip forward over a few flag-only or register-to-register instructions that leave the
argument registers and %rsp untouched and probe the first emulatable one. Anything unrecognised stops
the walk and the probe stays at the function entry (correct, just slower).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from nativewatch.errors import SourceUnavailable
from nativewatch.malloc_profile import placement
from nativewatch.malloc_profile.elfimage import ElfImage, image_for_fd
from nativewatch.sources.procfs import Mapping, read_maps

__all__ = ["ProbePoint", "ProbePlan", "resolve", "probe_offset", "ALLOC_FUNCS", "FREE_FUNCS"]

# cookie values mirror bpf/malloc_sites.h
ALLOC_FUNCS: dict[str, int] = {
    "malloc": 1, "calloc": 2, "realloc": 3, "posix_memalign": 5, "aligned_alloc": 6,
    "memalign": 6, "valloc": 7, "pvalloc": 8,
}
# reallocarray is not probed: glibc's calls realloc through its public entry, which we already see.
FREE_FUNCS: dict[str, int] = {"free": 1, "cfree": 1}
K_MMAP = 9
F_MUNMAP = 2
K_NEW = 10
F_DELETE = 3
# C++ operator new/delete (Itanium names, 64-bit size_t). The size is always the first argument.
NEW_FUNCS = ("_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_t",
             "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t", "_ZnamSt11align_val_tRKSt9nothrow_t")
DELETE_FUNCS = ("_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
                "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t", "_ZdlPvmSt11align_val_t",
                "_ZdaPvmSt11align_val_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
                "_ZdaPvSt11align_val_tRKSt9nothrow_t")

_LIBC_RE = re.compile(r"/libc(\.so\.\d+|-[\d.]+\.so)$")
_LIBSTDCXX_RE = re.compile(r"/libstdc\+\+\.so[.\d]*$|/libc\+\+\.so[.\d]*$")
_LDSO_RE = re.compile(r"/ld-linux[^/]*\.so|/ld-[\d.]+\.so|/ld64\.so")
# In a static binary the allocator's internals call __mmap directly; calls from these functions are
# counted through malloc already and must not be counted again as mmaps.
_STATIC_ALLOCATOR_INTERNALS = (
    "sysmalloc", "_int_malloc", "_int_realloc", "_int_memalign", "new_heap", "alloc_new_heap",
    "munmap_chunk", "mremap_chunk", "systrim", "heap_trim", "shrink_heap", "__libc_malloc",
    "__libc_realloc", "__libc_calloc", "__libc_memalign", "allocate_stack", "_dl_map_object_from_fd",
    "tcache_init", "ptmalloc_init", "_IO_file_doallocate", "__libc_alloc_buffer_allocate",
    "tcache_thread_shutdown", "__libc_thread_freeres", "arena_thread_freeres", "__malloc_arena_thread_freeres",
)


@dataclass(frozen=True, slots=True)
class ProbePoint:
    path: str          # /proc/PID/map_files/<range> of the object's first mapping
    file_offset: int
    cookie: int
    session: bool      # allocating entry point (needs the return value)
    symbol: str
    entry_offset: int  # the function's own entry (file offset), for reporting


@dataclass(frozen=True, slots=True)
class ProbePlan:
    pid: int
    provider: str               # path (as the target sees it) of the object providing malloc
    provider_kind: str          # "glibc" | "jemalloc" | "tcmalloc" | "static" | "other"
    points: tuple[ProbePoint, ...]
    skip_ranges: tuple[tuple[int, int], ...]   # [lo, hi) runtime addresses whose mmaps we ignore
    allocator_ranges: tuple[tuple[int, int], ...]  # exec ranges whose frames are trimmed
    allocator_symbols: frozenset[str] = frozenset()
    nest_range: tuple[int, int] | None = None  # text of the object whose operator new is probed
    problems: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class _Object:
    path: str
    mappings: list[Mapping]

    @property
    def first(self) -> Mapping:
        return min(self.mappings, key=lambda m: m.offset)

    def exec_ranges(self) -> list[tuple[int, int]]:
        return [(m.start, m.end) for m in self.mappings if "x" in m.perms]

    def runtime_address(self, img: ElfImage, vaddr: int) -> int | None:
        off = img.file_offset(vaddr)
        if off is None:
            return None
        for m in self.mappings:
            if m.offset <= off < m.offset + m.size:
                return m.start + off - m.offset
        return None


def _objects(mappings: tuple[Mapping, ...]) -> list[_Object]:
    objs: dict[str, _Object] = {}
    for m in mappings:
        if not m.path.startswith("/") or m.inode == 0:
            continue
        objs.setdefault(m.path, _Object(m.path, [])).mappings.append(m)
    return [o for o in objs.values() if o.exec_ranges()]


def _open_image(pid: int, obj: _Object, proc_root: str) -> ElfImage | None:
    first = obj.first
    path = f"{proc_root}/{pid}/map_files/{first.start:x}-{first.end:x}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return image_for_fd(fd)
    finally:
        os.close(fd)


def _read_code(pid: int, obj: _Object, img: ElfImage, vaddr: int, n: int, proc_root: str) -> bytes:
    off = img.file_offset(vaddr)
    if off is None:
        return b""
    first = obj.first
    try:
        fd = os.open(f"{proc_root}/{pid}/map_files/{first.start:x}-{first.end:x}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


# Argument registers each entry point's probe reads (ModRM numbering incl. REX: rdi=7 rsi=6 rdx=2
# rcx=1); %rsp (4) is always protected because the caller's return address is read at *(%rsp).
_ARG_REGS: dict[str, frozenset[int]] = {
    "malloc": frozenset({7}), "valloc": frozenset({7}), "pvalloc": frozenset({7}),
    "calloc": frozenset({7, 6}), "realloc": frozenset({7, 6}), "posix_memalign": frozenset({7, 2}),
    "aligned_alloc": frozenset({6}), "memalign": frozenset({6}), "mmap": frozenset({6, 1}),
    "mmap64": frozenset({6, 1}), "free": frozenset({7}), "cfree": frozenset({7}), "munmap": frozenset({7}),
}
_ALL_ARGS = frozenset({7, 6, 2, 1, 8, 9})


def probe_offset(code: bytes, protected: frozenset[int] = _ALL_ARGS) -> int:
    """Offset of the first kernel-emulatable instruction reachable without disturbing the `protected`
    registers or %rsp (see module doc); 0 when none is found within the first 32 bytes."""
    protected = protected | {4}
    i = 0
    while i < min(len(code), 32):
        if code[i:i + 4] == b"\xf3\x0f\x1e\xfa":  # endbr64
            i += 4
            continue
        start = i
        rex = 0
        if 0x40 <= code[i] <= 0x4F:
            rex = code[i]
            i += 1
        if i >= len(code):
            return 0
        b = code[i]
        if 0x50 <= b <= 0x57:  # push reg
            return start
        if not rex and (0x70 <= b <= 0x7F or b in (0xEB, 0xE9)):  # jcc short, jmp
            return start
        if i + 1 >= len(code):
            return 0
        if not rex and b == 0x0F and 0x80 <= code[i + 1] <= 0x8F:  # jcc near
            return start
        modrm = code[i + 1]
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        reg_x = reg + (8 if rex & 4 else 0)
        rm_x = rm + (8 if rex & 1 else 0)
        if 0xB8 <= b <= 0xBF:  # mov $imm, reg
            if (b - 0xB8) + (8 if rex & 1 else 0) in protected:
                return 0
            i += 9 if rex & 8 else 5
            continue
        if b == 0x85 and mod == 3:  # test reg,reg: flags only
            i += 2
        elif b == 0xF7 and mod == 3 and reg == 0:  # test $imm32, reg
            i += 6
        elif b in (0x80, 0x83) and mod == 0 and rm == 5 and reg == 7:  # cmp $imm8, disp32(%rip)
            i += 7
        elif b in (0x81, 0x83) and mod == 3:  # arith $imm, reg (cmp writes nothing)
            if reg != 7 and rm_x in protected:
                return 0
            i += 6 if b == 0x81 else 3
        elif b == 0xC1 and mod == 3:  # shift reg, $imm8
            if rm_x in protected:
                return 0
            i += 3
        elif b == 0x89 and mod == 3:  # mov reg,reg
            if rm_x in protected:
                return 0
            i += 2
        elif b in (0x8B, 0x8D) and mod == 0 and rm == 5:  # mov/lea disp32(%rip), reg
            if reg_x in protected:
                return 0
            i += 6
        else:
            return 0
    return 0


def tail_jump_target(code: bytes, vaddr: int) -> int | None:
    """Target of an unconditional jmp that begins a function (after endbr64), else None."""
    i = 4 if code[:4] == b"\xf3\x0f\x1e\xfa" else 0
    if len(code) >= i + 5 and code[i] == 0xE9:
        return vaddr + i + 5 + int.from_bytes(code[i + 1:i + 5], "little", signed=True)
    if len(code) >= i + 2 and code[i] == 0xEB:
        return vaddr + i + 2 + int.from_bytes(code[i + 1:i + 2], "little", signed=True)
    return None


def probed_vaddrs(img: ElfImage, names: dict[str, int]) -> set[int]:
    wanted = (*ALLOC_FUNCS, *FREE_FUNCS, *NEW_FUNCS, *DELETE_FUNCS)
    return {names[n] for n in wanted if n in names}


def _kind(path: str) -> str:
    base = os.path.basename(path)
    if "jemalloc" in base:
        return "jemalloc"
    if "tcmalloc" in base:
        return "tcmalloc"
    if _LIBC_RE.search(path):
        return "glibc"
    return "other"


def resolve(pid: int, proc_root: str = "/proc") -> ProbePlan:
    """Build the probe plan for pid. Raises ProcessGone, AccessDenied, or SourceUnavailable."""
    maps = read_maps(pid, proc_root)
    try:
        exe_path = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        exe_path = ""
    objs = _objects(maps.mappings)
    images: dict[str, ElfImage] = {}
    problems: list[str] = list(maps.problems)

    def image(o: _Object) -> ElfImage | None:
        if o.path not in images:
            img = _open_image(pid, o, proc_root)
            if img is None:
                problems.append(f"cannot open {o.path} through map_files")
                return None
            images[o.path] = img
            problems.extend(f"{o.path}: {p}" for p in img.problems)
        return images[o.path]

    exe = next((o for o in objs if o.path == exe_path), None)
    libc = next((o for o in objs if _LIBC_RE.search(o.path)), None)
    provider: _Object | None = None
    provider_kind = ""
    exe_img = image(exe) if exe else None
    if exe is not None and exe_img is not None and exe_img.is_static and "malloc" in exe_img.functions:
        provider, provider_kind = exe, "static"
    elif exe is not None and exe_img is not None and "malloc" in exe_img.exports:
        provider, provider_kind = exe, "other"
    else:
        for o in objs:
            if o is libc or o is exe or _LDSO_RE.search(o.path):
                continue
            img = image(o) if "alloc" in os.path.basename(o.path) else None
            if img is not None and "malloc" in img.exports and "free" in img.exports:
                provider, provider_kind = o, _kind(o.path)
                break
        if provider is None and libc is not None:
            provider, provider_kind = libc, "glibc"
    if provider is None:
        raise SourceUnavailable(f"pid {pid}: no object providing malloc found in its maps")
    pimg = image(provider)
    if pimg is None:
        raise SourceUnavailable(f"pid {pid}: cannot read {provider.path}")
    table = pimg.functions if provider_kind == "static" else pimg.exports

    points: list[ProbePoint] = []
    seen: set[tuple[str, int]] = set()

    def add(obj: _Object, img: ElfImage, name: str, cookie: int, session: bool, names: dict[str, int]) -> None:
        vaddr = names.get(name)
        if vaddr is None:
            return
        entry = img.file_offset(vaddr)
        if entry is None:
            problems.append(f"{name}: address {vaddr:#x} outside any segment")
            return
        size = img.sizes.get(name, 0)
        code = _read_code(pid, obj, img, vaddr, max(64, min(size, placement.MAX_BODY)), proc_root)
        target = tail_jump_target(code, vaddr)
        if target is not None and (img.in_plt(target) or target in probed_vaddrs(img, names)):
            # e.g. libstdc++'s new[] is `jmp operator new@plt`, delete is `jmp free@plt`: the callee
            # is probed and sees the real caller at *(%rsp); probing both would count one call twice
            return
        first = obj.first
        path = f"{proc_root}/{pid}/map_files/{first.start:x}-{first.end:x}"
        if (path, entry) in seen:  # aliases (memalign/aligned_alloc) share one address
            return
        seen.add((path, entry))
        placed = placement.place(code, vaddr, size, placement.ARG_REGS.get(name, placement.ALL_ARGS))
        off = placed.offset if placed is not None else probe_offset(code[:32], _ARG_REGS.get(name, _ALL_ARGS))
        points.append(ProbePoint(path, entry + off, cookie, session, name, entry))

    for name, cookie in ALLOC_FUNCS.items():
        add(provider, pimg, name, cookie, True, table)
    for name, cookie in FREE_FUNCS.items():
        add(provider, pimg, name, cookie, False, table)
    # C++: operator new in the provider when it has its own (jemalloc, tcmalloc), else libstdc++'s,
    # which calls malloc: without probing new itself, the caller of that malloc would be libstdc++
    # and the real caller would only be found through frame pointers (often absent).
    nest: tuple[int, int] | None = None
    cxx = provider if provider_kind != "static" and "_Znwm" in pimg.exports else \
        next((o for o in objs if _LIBSTDCXX_RE.search(o.path)), None)
    if cxx is not None and provider_kind != "static":
        cimg = image(cxx)
        if cimg is not None and "_Znwm" in cimg.exports:
            for name in NEW_FUNCS:
                add(cxx, cimg, name, K_NEW, True, cimg.exports)
            for name in DELETE_FUNCS:
                add(cxx, cimg, name, F_DELETE, False, cimg.exports)
            ranges = cxx.exec_ranges()
            nest = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
    if "malloc" not in {p.symbol for p in points} or "free" not in {p.symbol for p in points}:
        raise SourceUnavailable(f"pid {pid}: {provider.path} has no usable malloc/free symbols")

    # gperftools' libtcmalloc interposes mmap/munmap itself (for its mmap hooks) and makes the
    # syscall directly, so the provider's own mmap wins when it exports one.
    mmap_obj = provider if provider_kind == "static" or "mmap" in pimg.exports else libc
    skip: list[tuple[int, int]] = []
    if mmap_obj is not None:
        mimg = image(mmap_obj)
        if mimg is not None:
            mtable = mimg.functions if provider_kind == "static" else mimg.exports
            mname = "mmap" if "mmap" in mtable else "mmap64"
            add(mmap_obj, mimg, mname, K_MMAP, True, mtable)
            add(mmap_obj, mimg, "munmap", F_MUNMAP, False, mtable)
    if provider_kind == "static":
        for name in _STATIC_ALLOCATOR_INTERNALS:
            v = pimg.functions.get(name)
            if v is None:
                continue
            lo = provider.runtime_address(pimg, v)
            if lo is not None:
                skip.append((lo, lo + max(pimg.sizes.get(name, 0), 1)))
    else:
        for o in (provider, libc, *[o for o in objs if _LDSO_RE.search(o.path)]):
            if o is not None:
                skip.extend(o.exec_ranges())
    skip = skip[:16]

    alloc_ranges = tuple(provider.exec_ranges()) if provider_kind != "static" else ()
    alloc_symbols = frozenset(
        [*ALLOC_FUNCS, *FREE_FUNCS, "reallocarray", *_STATIC_ALLOCATOR_INTERNALS, "_int_free",
         "__libc_free", "tcache_init", "malloc_hook_ini", "__malloc_hook_ini", *NEW_FUNCS, *DELETE_FUNCS])
    return ProbePlan(pid=pid, provider=provider.path, provider_kind=provider_kind, points=tuple(points),
                     skip_ranges=tuple(skip), allocator_ranges=alloc_ranges,
                     allocator_symbols=alloc_symbols, nest_range=nest, problems=tuple(problems))
