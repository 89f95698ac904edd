"""Turn a target's user-space addresses into "function (object)" frames.

- Files are opened through /proc/PID/map_files/<range> (the exact inode mapped, also in containers and
  after the file was replaced on disk). With `hold_files` (a time-boxed profile of one process) the
  fds are kept open after each refresh() so frames of a process that exited mid-profile still
  resolve. Without it (the agent's node-wide symbolizers) a file is opened only to parse it and closed
  at once: the parsed image lives in elfimage's bounded cache keyed by build id / inode identity, so a
  symbolizer holds no descriptor at all and a process that is gone costs none; after exit it still
  names every address in an object it had parsed while alive.
- Symbols: pyelftools, .symtab and .dynsym, parsed once per build id (elfimage's cache).
- JIT frames: /tmp/perf-<nspid>.map inside the target's root, opened with openat2(RESOLVE_IN_ROOT) so
  symlinks planted by the target cannot lead outside its root. Falls back to a component-by-component
  O_NOFOLLOW walk on kernels without openat2. In a HotSpot JVM (libjvm.so mapped) the map's
  "Interpreter" blob names a frame `[java: interpreted]`, and code-cache addresses the map does not
  name (no map: JDK 11, or attach not allowed) say `[java: code cache]` rather than a bare address.
- C++ names: demangled in batches by binutils' c++filt in a subprocess. Symbol names come from the
  target's files and are untrusted; a crafted name that sends a demangler into deep recursion then
  kills only that subprocess (a timeout bounds it too), not the agent, and a correct Itanium demangler
  is far too large to write here. Without c++filt, names stay mangled.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nativewatch import cachestats
from nativewatch.errors import ProcessGone
from nativewatch.malloc_profile.elfimage import ElfImage, image_for_fd
from nativewatch.sources.procfs import read_maps, read_status
from nativewatch.unwind.tables import ObjectCfi, cfi_for_fd
from nativewatch.unwind.unwinder import STOP_END, Code

__all__ = ["JAVA_INTERPRETED", "JAVA_UNNAMED", "Symbolizer", "demangle", "open_in_root", "parse_perf_map"]

JAVA_INTERPRETED = "[java: interpreted]"
JAVA_UNNAMED = "[java: code cache]"  # JIT-compiled or interpreter code the JVM's perf map does not name

_MAX_PERF_MAP_BYTES = 64 << 20


@dataclass
class _Region:
    start: int
    end: int
    offset: int
    path: str
    fd: int | None
    inode: int = 0
    image: ElfImage | None = None
    loaded: bool = False
    cfi: ObjectCfi | None = None
    cfi_loaded: bool = False


class Symbolizer:
    def __init__(self, pid: int, proc_root: str = "/proc", *,
                 allocator_ranges: Sequence[tuple[int, int]] = (),
                 allocator_symbols: Iterable[str] = (), hold_files: bool = True) -> None:
        self.pid = pid
        self.hold_files = hold_files
        self.proc_root = proc_root
        self.allocator_ranges = tuple(allocator_ranges)
        self.allocator_symbols = frozenset(allocator_symbols)
        # code whose frames never show (the in-process sampler: nativewatch's own, not the program's)
        self.hidden_ranges: tuple[tuple[int, int], ...] = ()
        self._regions: list[_Region] = []
        self._starts: list[int] = []
        self._anon_exec: list[tuple[int, int]] = []
        self.is_jvm = False  # libjvm.so is mapped: anonymous code is HotSpot's code cache
        self._perf: tuple[list[int], list[tuple[int, str]]] | None = None
        self._perf_stale = False
        self._lock = threading.Lock()
        self.problems: list[str] = []
        self.generation = 0  # changes whenever the set of code mappings does
        # names interpreted Java frames (nativewatch.jvm.vmstructs.JavaMethodNames), when allowed
        self.java_methods: Any = None
        with contextlib.suppress(ProcessGone):
            self.refresh()

    # ---- mappings ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the maps; with hold_files, open (and keep open) each new executable file mapping."""
        maps = read_maps(self.pid, self.proc_root)
        known = {(r.start, r.end, r.path) for r in self._regions}
        current: set[tuple[int, int, str]] = set()
        new: list[_Region] = []
        anon: list[tuple[int, int]] = []
        jvm = False
        for m in maps.mappings:
            if m.path.endswith("/libjvm.so"):
                jvm = True
            if "x" not in m.perms:
                continue
            if not m.path.startswith("/") or m.inode == 0:
                anon.append((m.start, m.end))
                continue
            current.add((m.start, m.end, m.path))
            if (m.start, m.end, m.path) in known:
                continue
            if not self.hold_files:
                new.append(_Region(m.start, m.end, m.offset, m.path, None, m.inode))
                continue
            try:
                fd: int | None = self._open_mapped(m.start, m.end)
            except OSError as exc:
                fd = None
                self._problem(f"cannot open {m.path}: {exc.strerror}")
            new.append(_Region(m.start, m.end, m.offset, m.path, fd, m.inode))
        with self._lock:
            if new or anon != self._anon_exec or len(current) != len(known):
                self.generation += 1
            if not self.hold_files:
                # Without held files an unmapped range cannot be re-read anyway: drop it, so a process
                # that maps and unmaps code for its whole life keeps a bounded region list.
                kept = [r for r in self._regions if (r.start, r.end, r.path) in current]
                if len(kept) != len(self._regions):
                    self._regions = kept
                    self._starts = [r.start for r in kept]
            if new:
                self._regions.extend(new)
                self._regions.sort(key=lambda r: r.start)
                self._starts = [r.start for r in self._regions]
            self._anon_exec = anon
            self.is_jvm = jvm
            self._perf_stale = True

    def perf_map_rewritten(self) -> None:
        """The JIT's perf map was just written anew (e.g. Compiler.perfmap): read it again at the next
        lookup, hit or miss (code may have moved)."""
        with self._lock:
            self._perf = None

    def close(self) -> None:
        with self._lock:
            for r in self._regions:
                if r.fd is not None:
                    os.close(r.fd)
                    r.fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def _region(self, addr: int) -> _Region | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        # later mappings at the same address (after munmap+mmap) come last: prefer them
        for j in range(i, max(i - 4, -1), -1):
            r = self._regions[j]
            if r.start <= addr < r.end:
                return r
        return None

    def _open_mapped(self, start: int, end: int) -> int:
        """The file mapped at [start, end), through the kernel's map_files link (no path lookup)."""
        return os.open(f"{self.proc_root}/{self.pid}/map_files/{start:x}-{end:x}", os.O_RDONLY | os.O_CLOEXEC)

    def open_files(self) -> int:
        with self._lock:
            return sum(r.fd is not None for r in self._regions)

    def regions(self) -> int:
        return len(self._regions)

    def _image(self, r: _Region) -> ElfImage | None:
        if not r.loaded:
            r.loaded = True
            if r.fd is not None:
                try:
                    r.image = image_for_fd(r.fd)
                except OSError as exc:
                    self._problem(f"{r.path}: {exc.strerror}")
            elif not self.hold_files:
                r.image = self._image_on_demand(r)
        return r.image

    def _cfi(self, r: _Region) -> ObjectCfi | None:
        if r.cfi_loaded:
            return r.cfi
        r.cfi_loaded = True
        if r.fd is not None:
            fd, own = r.fd, False
        elif not self.hold_files:
            try:
                fd, own = self._open_mapped(r.start, r.end), True
            except OSError:
                return None
        else:
            return None
        try:
            if own and r.inode and os.fstat(fd).st_ino != r.inode:
                return None  # remapped since the maps line was read
            r.cfi = cfi_for_fd(fd)
        except OSError as exc:
            self._problem(f"{r.path}: CFI not read: {exc.strerror}")
        finally:
            if own:
                os.close(fd)
        return r.cfi

    def prepare_unwinding(self) -> None:
        """Read every mapped object's symbols and CFI now: the first stack copies then unwind at
        once instead of waiting for libc's debug symbols while a burst fills the ring buffer."""
        for r in list(self._regions):
            self._image(r)
            self._cfi(r)

    def code_at(self, addr: int) -> Code | None:
        """What an unwinder needs at addr: the object's CFI and its link-time offset, anonymous code
        (no CFI), or None when nothing executable is mapped there."""
        r = self._region(addr)
        if r is None:
            if not self._in_anon_exec(addr):
                return None
            return Code(None, 0, interpreter=self.is_jvm and self._interpreted(addr))
        img = self._image(r)
        vaddr = img.vaddr_of_offset(addr - r.start + r.offset) if img is not None else None
        if vaddr is None:
            return Code(None, 0)
        return Code(self._cfi(r), vaddr - addr)

    def _image_on_demand(self, r: _Region) -> ElfImage | None:
        """Open the mapping's file only to parse it (or find it in the cache), then close it. The
        inode must still be the one the maps line named: the range may have been remapped since."""
        try:
            fd = self._open_mapped(r.start, r.end)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: gone (exited, or unmapped); not a problem to report
                self._problem(f"cannot open {r.path}: {exc.strerror}")
            return None
        try:
            if r.inode and os.fstat(fd).st_ino != r.inode:
                return None
            return image_for_fd(fd)
        except OSError as exc:
            self._problem(f"{r.path}: {exc.strerror}")
            return None
        finally:
            os.close(fd)

    _MAX_PROBLEMS = 32

    def _problem(self, text: str) -> None:
        # bounded: a long-lived symbolizer of a process that keeps failing must not grow without end
        if len(self.problems) < self._MAX_PROBLEMS:
            self.problems.append(text)

    def is_executable(self, addr: int) -> bool:
        return self._region(addr) is not None or self._in_anon_exec(addr) \
            or self._perf_lookup(addr) is not None

    # ---- lookup --------------------------------------------------------------------------------
    def _raw_frame(self, addr: int, is_return: bool) -> tuple[str, str, bool]:
        """(function or hex, object basename, is_allocator_frame) for one address."""
        look = addr - 1 if is_return and addr > 0 else addr
        r = self._region(look)
        if r is None:
            name = self._perf_lookup(look)
            if self.is_jvm and (name is None or name == "Interpreter") and self._in_anon_exec(look):
                return (JAVA_INTERPRETED if name else JAVA_UNNAMED), "jvm", False
            if name is not None:
                return name, "[jit]", False
            return f"0x{addr:x}", "?", False
        obj = os.path.basename(r.path.removesuffix(" (deleted)"))
        file_off = look - r.start + r.offset
        img = self._image(r)
        sym = None
        if img is not None:
            vaddr = img.vaddr_of_offset(file_off)
            if vaddr is not None:
                sym = img.symbol_at(vaddr)
        in_alloc = any(lo <= look < hi for lo, hi in self.allocator_ranges)
        if sym is None:
            return f"0x{file_off:x}", obj, in_alloc
        base = sym.split("@")[0]
        return base, obj, in_alloc or base in self.allocator_symbols

    def function_at(self, addr: int) -> str:
        """The function containing addr (a hex offset when its object names none)."""
        return self._raw_frame(addr, False)[0]

    def frames(self, addresses: Sequence[int], *, first_is_return: bool = False) -> list[str]:
        """Frames for a stack, leaf first. The first address is taken as an exact instruction pointer
        (unless first_is_return), the others as return addresses (looked up at addr - 1)."""
        raws = [self._raw_frame(a, i > 0 or first_is_return) for i, a in enumerate(addresses)]
        names = demangle([n for n, _, _ in raws])
        return [f"{n} ({o})" for n, (_, o, _) in zip(names, raws, strict=True)]

    def site_frames(self, caller: int, stack: Sequence[int]) -> list[str]:
        """Frames of one allocation site: the immediate caller read at *(sp) on entry, then the
        frame-pointer stack minus its first entry (the probed allocator instruction). Frames that fall
        outside any executable mapping end the stack (a frame-pointer walk through code built without
        frame pointers runs off into garbage); leading allocator frames are trimmed."""
        addrs: list[int] = [caller] if caller else []
        for a in stack[1:]:
            if any(lo <= a - 1 < hi for lo, hi in self.hidden_ranges):
                continue  # the in-process sampler's hooks: between the caller and the probe
            if addrs and a == addrs[-1]:
                continue
            addrs.append(a)
        kept: list[tuple[str, str, bool]] = []
        for a in addrs:
            if not self.is_executable(a - 1):
                break
            kept.append(self._raw_frame(a, True))
        while len(kept) > 1 and kept[0][2]:
            kept.pop(0)
        names = demangle([n for n, _, _ in kept])
        return [f"{n} ({o})" for n, (_, o, _) in zip(names, kept, strict=True)]

    def _interpreted(self, addr: int) -> bool:
        """In a HotSpot JVM's template interpreter: from VMStructs when read, else its perf map."""
        if self.java_methods is not None and self.java_methods.interpreter[1]:
            return bool(self.java_methods.in_interpreter(addr))
        return self._perf_lookup(addr) == "Interpreter"

    def stack_frames(self, pcs: Sequence[int], stop: str = STOP_END,
                     methods: Sequence[tuple[int, int]] = ()) -> list[str]:
        """Frames of an unwound stack (pcs[0] the exact sampled ip, the rest return addresses),
        leading allocator frames trimmed; a walk that ended early ends in a frame saying why.
        `methods` (index into pcs, Method*) name interpreted Java frames when java_methods is set."""
        raws = [self._raw_frame(a, i > 0) for i, a in enumerate(pcs)]
        if methods and self.java_methods is not None:
            for i, method in methods:
                if 0 <= i < len(raws) and raws[i][0] in (JAVA_INTERPRETED, JAVA_UNNAMED):
                    name = self.java_methods.name(method)
                    if name is not None:
                        raws[i] = (name, "interpreted", False)
        kept = raws
        while len(kept) > 1 and kept[0][2]:
            kept.pop(0)
        names = demangle([n for n, _, _ in kept])
        out = [f"{n} ({o})" for n, (_, o, _) in zip(names, kept, strict=True)]
        if stop != STOP_END:
            out.append(f"[stack ends: {stop}]")
        return out

    # ---- JIT perf map --------------------------------------------------------------------------
    def _in_anon_exec(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self._anon_exec)

    def _perf_lookup(self, addr: int) -> str | None:
        if not self._in_anon_exec(addr):
            return None
        if self._perf is None:
            self._perf = self._load_perf_map()
            self._perf_stale = False
        name = self._perf_find(addr)
        if name is None and self._perf_stale:
            # JITs append to the map as they compile: re-read it once per refresh on a miss
            self._perf = self._load_perf_map()
            self._perf_stale = False
            name = self._perf_find(addr)
        return name

    def _perf_find(self, addr: int) -> str | None:
        assert self._perf is not None
        starts, entries = self._perf
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < entries[i][0]:
            return entries[i][1]
        return None

    def _load_perf_map(self) -> tuple[list[int], list[tuple[int, str]]]:
        try:
            nspid = read_status(self.pid, self.proc_root).nspid
        except ProcessGone:
            return [], []
        inner = nspid[-1] if nspid else self.pid
        try:
            data = open_in_root(f"{self.proc_root}/{self.pid}/root", f"tmp/perf-{inner}.map",
                                _MAX_PERF_MAP_BYTES)
        except OSError:
            return [], []
        return parse_perf_map(data)


def parse_perf_map(data: bytes) -> tuple[list[int], list[tuple[int, str]]]:
    """Parse "START SIZE name" lines (hex); bad lines are skipped. Returns sorted starts and
    (end, name) per start."""
    rows: list[tuple[int, int, str]] = []
    for line in data.split(b"\n"):
        parts = line.split(b" ", 2)
        if len(parts) != 3:
            continue
        try:
            start = int(parts[0], 16)
            size = int(parts[1], 16)
        except ValueError:
            continue
        if size <= 0:
            continue
        rows.append((start, start + size, parts[2].decode("utf-8", "replace").strip()))
    rows.sort()
    return [r[0] for r in rows], [(r[1], r[2]) for r in rows]


# ---- safe open under a root --------------------------------------------------------------------
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_in_root(root: str, relpath: str, limit: int) -> bytes:
    """Read at most `limit` bytes of relpath resolved inside root: absolute symlinks and '..' stay
    within root (openat2 RESOLVE_IN_ROOT), or any symlink is refused (fallback)."""
    dirfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        path = ctypes.create_string_buffer(os.fsencode(relpath))
        how = struct.pack("<QQQ", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, 0,
                          _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), path, ctypes.c_char_p(how),
                           ctypes.c_size_t(len(how)))
        if fd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):
                raise OSError(err, os.strerror(err), relpath)
            fd = _walk_nofollow(dirfd, relpath)
        try:
            st = os.fstat(fd)
            if not (st.st_mode & 0o170000 == 0o100000):
                raise OSError(errno.EINVAL, "not a regular file", relpath)
            chunks = []
            remaining = limit
            while remaining > 0:
                b = os.read(fd, min(remaining, 1 << 20))
                if not b:
                    break
                chunks.append(b)
                remaining -= len(b)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def _walk_nofollow(dirfd: int, relpath: str) -> int:
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OSError(errno.EPERM, "'..' refused", relpath)
    cur = os.dup(dirfd)
    try:
        for p in parts[:-1]:
            nxt = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=cur)
    finally:
        os.close(cur)


# ---- demangling --------------------------------------------------------------------------------
_demangled: dict[str, str] = {}
_demangle_lock = threading.Lock()
# Names come from every C++ program the agent ever symbolizes: bounded, emptied when full (a miss
# costs one c++filt batch, and the names in use come back within a scan).
_MAX_DEMANGLED = 65536
cachestats.register("demangled_names", lambda: len(_demangled))


def demangle(names: Sequence[str], *, timeout_s: float = 5.0) -> list[str]:
    """Demangle C++ (Itanium) names in one c++filt call; other names pass through unchanged."""
    with _demangle_lock:
        todo = sorted({n for n in names if n.startswith("_Z") and n not in _demangled
                       and "\n" not in n and len(n) < 4096})
    exe = shutil.which("c++filt")
    if todo and exe:
        try:
            out = subprocess.run([exe], input="\n".join(todo) + "\n", capture_output=True, text=True,
                                 timeout=timeout_s, check=False).stdout.split("\n")
            with _demangle_lock:
                if len(_demangled) + len(todo) > _MAX_DEMANGLED:
                    _demangled.clear()
                for n, d in zip(todo, out, strict=False):
                    _demangled[n] = d or n
        except (OSError, subprocess.SubprocessError):
            pass
    with _demangle_lock:
        return [_demangled.get(n, n) for n in names]
