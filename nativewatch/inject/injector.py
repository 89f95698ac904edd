"""Put the sampler into a running process, point its allocator calls at it, and take them back.

1. Refuse early, with the reason, what cannot work or is not safe: a process already traced, a
   static binary (no GOT: uprobes are the way), Go without cgo, an allocator that cannot be found,
   no dynamic loader entry point.
2. Load (once per process; later captures reuse the mapped object): on one thread stopped at a safe
   point (its unwound stack is in no allocator, loader or signal frame; see safepoint.py) call
   memfd_create through the target's own syscall(), write the object into that memfd from outside
   through /proc/PID/fd, and call the target's own dlopen on /proc/self/fd/N, so a container needs
   nothing mounted. The other threads run on meanwhile (dlopen's locks must stay free to take).
3. Patch: with every thread stopped, write the real functions' addresses into the sampler, the
   sampling state, the patch log (slot, original value), then every GOT slot of every loaded object
   that imports a wrapped function, then switch it on. Objects mapped later are patched at the next
   poll (patch_new_objects). Writes through /proc/PID/mem ignore page protection, so RELRO'ed GOTs
   need no mprotect in the target.
4. Restore: every thread stopped, the sampler switched off, each slot given back its original value
   (only where it still holds the hook), the sampler's tables returned to untouched pages.

Which slots are patched (plan_slots): the allocator's own object never (its internal calls are its
business), nor the loader. mmap/munmap are not patched in the allocator or libc (their own mmaps are
the allocator's, counted through malloc). In the C++ runtime that provides operator new, the malloc
family is not patched (its `new` calls malloc: one allocation would count twice).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nativewatch.errors import ProcessGone, SourceUnavailable
from nativewatch.inject import ptrace
from nativewatch.inject.gotslots import GotError, read_got
from nativewatch.inject.sampler import (
    CXX_FAMILY,
    HOOKED,
    MALLOC_FAMILY,
    MEMFD_NAME,
    MMAP_FAMILY,
    SamplerFile,
    TargetSampler,
    sampler_file,
)
from nativewatch.malloc_profile import sampling
from nativewatch.malloc_profile.elfimage import ElfImage, image_for_fd
from nativewatch.malloc_profile.resolve import ProbePlan
from nativewatch.sources.procfs import Mapping, read_maps

__all__ = ["InjectRefused", "Injection", "preflight", "inject", "patch_new_objects", "remove", "find_sampler"]

_LDSO_RE = re.compile(r"/ld-linux[^/]*\.so|/ld-[\d.]+\.so|/ld64\.so|/ld-musl")
_LIBC_RE = re.compile(r"/libc(\.so\.\d+|-[\d.]+\.so)$|/ld-musl")
_CXX_RE = re.compile(r"/libstdc\+\+\.so[.\d]*$|/libc\+\+\.so[.\d]*$")
_WANTED = frozenset(HOOKED)
MFD_CLOEXEC = 1
SYS_MEMFD_CREATE = 319
SYS_CLOSE = 3
RTLD_NOW = 2
RTLD_NODELETE = 0x1000


class InjectRefused(SourceUnavailable):
    """Injection is not possible or not safe for this process; the message says why."""


@dataclass
class _Object:
    path: str
    inode: int
    mappings: list[Mapping]

    @property
    def start(self) -> int:
        return min(m.start for m in self.mappings)

    @property
    def first(self) -> Mapping:
        return min(self.mappings, key=lambda m: m.offset)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.inode, self.first.start)

    def exec_ranges(self) -> list[tuple[int, int]]:
        return [(m.start, m.end) for m in self.mappings if "x" in m.perms]

    def bias(self, img: ElfImage) -> int | None:
        """Load bias: run-time address minus link-time address."""
        first = self.first
        vaddr = img.vaddr_of_offset(first.offset)
        return None if vaddr is None else first.start - vaddr


def _objects(pid: int, proc_root: str) -> list[_Object]:
    objs: dict[tuple[str, int], _Object] = {}
    for m in read_maps(pid, proc_root).mappings:
        if m.inode == 0 or not (m.path.startswith("/")):
            continue
        objs.setdefault((m.path, m.inode), _Object(m.path, m.inode, [])).mappings.append(m)
    return [o for o in objs.values() if o.exec_ranges()]


def _open(pid: int, o: _Object, proc_root: str) -> int:
    f = o.first
    return os.open(f"{proc_root}/{pid}/map_files/{f.start:x}-{f.end:x}", os.O_RDONLY | os.O_CLOEXEC)


def _image(pid: int, o: _Object, proc_root: str) -> ElfImage | None:
    try:
        fd = _open(pid, o, proc_root)
    except OSError:
        return None
    try:
        return image_for_fd(fd)
    finally:
        os.close(fd)


def _is_sampler(o: _Object) -> bool:
    return o.path.startswith(f"/memfd:{MEMFD_NAME}")


@dataclass
class Injection:
    pid: int
    sampler: TargetSampler
    how: str                         # "loaded" | "reused"
    reals: dict[str, int]
    patches: list[tuple[int, int]] = field(default_factory=list)  # (slot address, original value)
    hooks: dict[int, int] = field(default_factory=dict)           # slot address -> hook written there
    scanned: set[tuple[str, int, int]] = field(default_factory=set)
    skip: dict[str, frozenset[str]] = field(default_factory=dict)  # object path -> functions not patched
    stops_s: list[float] = field(default_factory=list)            # every full stop, in seconds
    load_stop_s: float = 0.0                                      # the loading thread's stop
    problems: list[str] = field(default_factory=list)
    removed: bool = False

    @property
    def exec_range(self) -> tuple[int, int]:
        lo, hi = self.sampler.sf.exec_range
        return (self.sampler.bias + lo, self.sampler.bias + hi)

    def report(self) -> dict[str, object]:
        return {"how": self.how, "patched_slots": len(self.patches),
                "load_stop_ms": round(self.load_stop_s * 1000, 2),
                "max_stop_ms": round(max(self.stops_s, default=0.0) * 1000, 2),
                "stops": len(self.stops_s)}


# ---- refusals ---------------------------------------------------------------------------------
def go_without_cgo(pid: int, proc_root: str = "/proc", objs: list[_Object] | None = None) -> str:
    """Why a Go program without cgo cannot be sampled through malloc ('' when pid is not one)."""
    objs = _objects(pid, proc_root) if objs is None else objs
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return ""
    exe_obj = next((o for o in objs if o.path == exe), None)
    img = _image(pid, exe_obj, proc_root) if exe_obj is not None else None
    if img is None or "runtime.main" not in img.functions or any(_LIBC_RE.search(o.path) for o in objs):
        return ""
    return (f"pid {pid} is a Go program without cgo: its allocations never go through malloc (the Go heap "
            "is the `heap` category of a snapshot; Go's own runtime/pprof heap profile names its sites)")


def preflight(pid: int, plan: ProbePlan, proc_root: str = "/proc") -> None:
    """Raise InjectRefused when injection cannot work here; the reason names what to use instead."""
    tracer = ptrace.tracer_pid(pid, proc_root)
    if tracer > 0:
        raise InjectRefused(f"pid {pid} is already traced by pid {tracer} (a debugger?): not injecting")
    if tracer < 0:
        raise ProcessGone(pid, "its status is unreadable")
    objs = _objects(pid, proc_root)
    go = go_without_cgo(pid, proc_root, objs)
    if go:
        raise InjectRefused(go)
    if plan.provider_kind == "static" or not any(_LDSO_RE.search(o.path) for o in objs):
        raise InjectRefused(f"pid {pid} is a static binary: no GOT to patch and no loader (the uprobe rungs "
                            "work)")
    if not plan.provider:
        raise InjectRefused(f"pid {pid}: the allocator could not be identified")


# ---- which slots --------------------------------------------------------------------------------
def _skipped(o: _Object, plan: ProbePlan, cxx_provider: str) -> frozenset[str]:
    if _LDSO_RE.search(o.path) or _is_sampler(o):
        return _WANTED
    if o.path == plan.provider:
        return _WANTED if plan.provider_kind != "glibc" else frozenset(MMAP_FAMILY + CXX_FAMILY)
    skip: set[str] = set()
    if _LIBC_RE.search(o.path):
        skip.update(MMAP_FAMILY)
    if o.path == cxx_provider:
        skip.update(MALLOC_FAMILY)
    return frozenset(skip)


def _definition(pid: int, objs: list[_Object], name: str, prefer: list[str], proc_root: str,
                images: dict[str, ElfImage | None]) -> int | None:
    """Run-time address of `name` as the process binds it: in the objects `prefer` names first (the
    allocator resolve() found, which is the one the dynamic linker binds), then any exporter."""
    order = sorted(objs, key=lambda o: (o.path not in prefer, prefer.index(o.path) if o.path in prefer else 0))
    for o in order:
        if _is_sampler(o) or _LDSO_RE.search(o.path):
            continue
        if o.path not in images:
            images[o.path] = _image(pid, o, proc_root)
        img = images[o.path]
        if img is None or name not in img.exports:
            continue
        bias = o.bias(img)
        if bias is not None:
            return bias + img.exports[name]
    return None


@dataclass(frozen=True, slots=True)
class _Slot:
    addr: int
    symbol: str
    value: int  # what it holds now


def plan_slots(pid: int, objs: list[_Object], plan: ProbePlan, reals: dict[str, int], skip_done: set[tuple[str, int, int]],
               proc_root: str, problems: list[str]) -> tuple[list[_Slot], set[tuple[str, int, int]]]:
    """GOT slots to point at the hooks in objects not scanned yet, with their current values."""
    cxx = plan.provider if plan.nest_range is None else next(
        (o.path for o in objs if _CXX_RE.search(o.path)), "")
    out: list[_Slot] = []
    scanned: set[tuple[str, int, int]] = set()
    fd_mem = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for o in objs:
            if o.key in skip_done:
                continue
            scanned.add(o.key)
            skip = _skipped(o, plan, cxx)
            if skip == _WANTED:
                continue
            try:
                fd = _open(pid, o, proc_root)
            except OSError:
                problems.append(f"{o.path}: not opened through map_files, its calls are not sampled")
                continue
            try:
                with os.fdopen(fd, "rb", closefd=False) as f:
                    info = read_got(f, _WANTED)
                img = image_for_fd(fd)
            except (GotError, OSError) as exc:
                problems.append(f"{o.path}: GOT not read ({exc})")
                continue
            finally:
                os.close(fd)
            bias = o.bias(img)
            if bias is None:
                continue
            slots = list(info.slots)
            if o.path == plan.provider and plan.provider_kind == "glibc":
                slots += list(info.self_slots)  # libc's own calls to malloc go through its GOT
            for s in slots:
                if s.symbol in skip or s.symbol not in reals:
                    continue
                addr = bias + s.vaddr
                raw = os.pread(fd_mem, 8, addr)
                if len(raw) != 8:
                    continue
                value = int.from_bytes(raw, "little")
                out.append(_Slot(addr, s.symbol, value))
    finally:
        os.close(fd_mem)
    return out, scanned


def _reals(pid: int, objs: list[_Object], plan: ProbePlan, proc_root: str) -> dict[str, int]:
    images: dict[str, ElfImage | None] = {}
    libc = [o.path for o in objs if _LIBC_RE.search(o.path)]
    cxx = [o.path for o in objs if _CXX_RE.search(o.path)]
    out: dict[str, int] = {}
    for name in HOOKED:
        if name in MMAP_FAMILY:
            prefer = [plan.provider, *libc] if plan.provider_kind == "tcmalloc" else libc
        elif name in CXX_FAMILY:
            prefer = [plan.provider, *cxx]
        else:
            prefer = [plan.provider]
        addr = _definition(pid, objs, name, prefer, proc_root, images)
        if addr is not None:
            out[name] = addr
    return out


# ---- loading ----------------------------------------------------------------------------------
def find_sampler(pid: int, sf: SamplerFile, proc_root: str = "/proc") -> TargetSampler | None:
    """The sampler already mapped in pid (an earlier capture), if it is this build of it."""
    for o in _objects(pid, proc_root):
        if not _is_sampler(o):
            continue
        try:
            fd = _open(pid, o, proc_root)
        except OSError:
            continue
        try:
            same = os.pread(fd, len(sf.data) + 1, 0) == sf.data
        finally:
            os.close(fd)
        if same:
            return TargetSampler(pid, o.first.start - o.first.offset, sf, proc_root)
    return None


def _export(pid: int, objs: list[_Object], names: tuple[str, ...], proc_root: str) -> int | None:
    images: dict[str, ElfImage | None] = {}
    for name in names:
        addr = _definition(pid, objs, name, [o.path for o in objs if _LIBC_RE.search(o.path)], proc_root, images)
        if addr is not None:
            return addr
    return None


def _load(pid: int, sf: SamplerFile, plan: ProbePlan, proc_root: str, deadline: float) -> tuple[TargetSampler, float]:
    from nativewatch.inject.safepoint import stop_at_safe_point

    objs = _objects(pid, proc_root)
    syscall_fn = _export(pid, objs, ("syscall",), proc_root)
    dlopen_fn = _export(pid, objs, ("dlopen", "__libc_dlopen_mode"), proc_root)
    dlerror_fn = _export(pid, objs, ("dlerror",), proc_root)
    if syscall_fn is None or dlopen_fn is None:
        raise InjectRefused(f"pid {pid}: no syscall()/dlopen() found in its libc")
    st, tid = stop_at_safe_point(pid, plan, proc_root, deadline)
    with st:
        name = MEMFD_NAME.encode() + b"\0"
        fd, _ = ptrace.remote_call(pid, tid, syscall_fn, (SYS_MEMFD_CREATE, ptrace.DATA, MFD_CLOEXEC), data=name,
                                   proc_root=proc_root)
        fd = _signed(fd)
        if fd < 0:
            raise InjectRefused(f"pid {pid}: memfd_create failed in the target")
        try:
            wfd = os.open(f"{proc_root}/{pid}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(wfd, sf.data)
            finally:
                os.close(wfd)
            path = f"/proc/self/fd/{fd}".encode() + b"\0"
            handle, _ = ptrace.remote_call(pid, tid, dlopen_fn, (ptrace.DATA, RTLD_NOW | RTLD_NODELETE), data=path,
                                           proc_root=proc_root)
            if not handle:
                why = _dlerror(pid, tid, dlerror_fn, proc_root)
                raise InjectRefused(f"pid {pid}: its dlopen refused the sampler: {why}")
        finally:
            with contextlib.suppress(ptrace.PtraceError):
                ptrace.remote_call(pid, tid, syscall_fn, (SYS_CLOSE, fd), proc_root=proc_root)
    ts = find_sampler(pid, sf, proc_root)
    if ts is None:
        raise InjectRefused(f"pid {pid}: the sampler was loaded but is not in its maps")
    return ts, st.stop_s


def _dlerror(pid: int, tid: int, fn: int | None, proc_root: str) -> str:
    if fn is None:
        return "no dlerror"
    try:
        addr, _ = ptrace.remote_call(pid, tid, fn, (), proc_root=proc_root)
        if not addr:
            return "no message"
        return ptrace.read_mem(pid, addr, 256, proc_root).split(b"\0")[0].decode(errors="replace")
    except (ptrace.PtraceError, OSError) as exc:
        return str(exc)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# ---- patching ---------------------------------------------------------------------------------
def _apply(inj: Injection, slots: list[_Slot], *, enable_with: tuple[int, list[int]] | None,
           proc_root: str) -> None:
    """One full stop: write the reals (first time), the new patch log entries, the slots; enable."""
    ts = inj.sampler
    st = ptrace.stop_threads(inj.pid, proc_root=proc_root)
    try:
        new: list[tuple[int, int]] = []
        for s in slots:
            # a slot may have been bound lazily since it was read: take what it holds now
            raw = ptrace.read_mem(inj.pid, s.addr, 8, proc_root)
            value = int.from_bytes(raw, "little") if len(raw) == 8 else s.value
            if value == ts.hook(s.symbol):
                continue  # already pointing here
            new.append((s.addr, value))
        if enable_with is not None:
            for name, addr in inj.reals.items():
                ts.set_real(name, addr)
        ts.write_patches(inj.patches + new)
        ts.owner = os.getpid()
        by_addr = {s.addr: s for s in slots}
        written: list[tuple[int, int]] = []
        try:
            for addr, original in new:
                hook = ts.hook(by_addr[addr].symbol)
                ptrace.write_mem(inj.pid, addr, struct.pack("<Q", hook), proc_root)
                written.append((addr, original))
                inj.hooks[addr] = hook
        except OSError:
            for addr, original in written:  # all or nothing, while everything is still stopped
                with contextlib.suppress(OSError):
                    ptrace.write_mem(inj.pid, addr, struct.pack("<Q", original), proc_root)
            ts.write_patches(inj.patches)
            raise
        inj.patches.extend(new)
        if enable_with is not None:
            interval, exp = enable_with
            ts.write("enabled", 0)
            ts.write("interval", interval)
            ts.write("unacked", 0)
            ts.write("generation", ts.read("generation") + 1)
            if interval:
                ts.set_exp_table(exp)
            ts.reset_slots(interval, exp if interval else [0])
            ts.write("enabled", 1)
    finally:
        st.release()
        inj.stops_s.append(st.stop_s)


def inject(pid: int, plan: ProbePlan, *, interval: int, proc_root: str = "/proc",
           timeout_s: float = 3.0, before_patching: Callable[[TargetSampler], None] | None = None) -> Injection:
    """Load (or reuse) the sampler in pid and point its allocator calls at it, sampling every
    `interval` bytes on average (0: every call). `before_patching` runs once the sampler is mapped
    and before any call goes to it (to attach the probes on its report functions). Raises
    InjectRefused, ProcessGone."""
    preflight(pid, plan, proc_root)
    sf = sampler_file()
    deadline = time.monotonic() + timeout_s
    ts = find_sampler(pid, sf, proc_root)
    how = "reused"
    load_stop = 0.0
    try:
        if ts is None:
            ts, load_stop = _load(pid, sf, plan, proc_root, deadline)
            how = "loaded"
        if not ts.state:
            raise InjectRefused(f"pid {pid}: the sampler could not set up its state (kernel without "
                                "MADV_WIPEONFORK, < 4.14?)")
        if before_patching is not None:
            before_patching(ts)
        leftover = ts.read_patches()
        if leftover:
            _restore_log(pid, ts, leftover, proc_root)
        objs = _objects(pid, proc_root)
        reals = _reals(pid, objs, plan, proc_root)
        if "malloc" not in reals or "free" not in reals:
            raise InjectRefused(f"pid {pid}: malloc/free of {plan.provider} not found")
        inj = Injection(pid, ts, how, reals, load_stop_s=load_stop)
        slots, scanned = plan_slots(pid, objs, plan, reals, set(), proc_root, inj.problems)
        inj.scanned |= scanned
        exp = sampling.exp_table(interval) if interval else []
        _apply(inj, slots, enable_with=(interval, exp), proc_root=proc_root)
        if leftover:
            inj.problems.append(f"restored {len(leftover)} GOT entries an earlier capture had left patched "
                                "(it was killed before restoring them)")
        return inj
    except ptrace.PtraceError as exc:
        if exc.errno == errno.ESRCH or not _exists(pid, proc_root):
            raise ProcessGone(pid, "exited while the sampler was being put in") from None
        if exc.errno == errno.EPERM:
            raise InjectRefused(f"pid {pid}: ptrace not permitted ({exc}); traced by another tool, or "
                                "kernel.yama.ptrace_scope forbids it") from None
        raise InjectRefused(f"pid {pid}: {exc}") from None
    except OSError as exc:
        if not _exists(pid, proc_root):
            raise ProcessGone(pid, "exited while the sampler was being put in") from None
        raise InjectRefused(f"pid {pid}: {exc}") from None


def _exists(pid: int, proc_root: str) -> bool:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except (OSError, ValueError):
        return False


def patch_new_objects(inj: Injection, plan: ProbePlan, proc_root: str = "/proc") -> int:
    """Patch objects mapped since the last scan (dlopen'ed libraries). Returns how many slots."""
    if inj.removed:
        return 0
    objs = _objects(inj.pid, proc_root)
    todo = [o for o in objs if o.key not in inj.scanned]
    if not todo:
        return 0
    slots, scanned = plan_slots(inj.pid, todo, plan, inj.reals, set(), proc_root, inj.problems)
    inj.scanned |= scanned
    if slots:
        _apply(inj, slots, enable_with=None, proc_root=proc_root)
    return len(slots)


def acknowledge(inj: Injection) -> None:
    """Tell the sampler nativewatch is still there (see NW_UNACKED_LIMIT in nwsampler.c)."""
    with contextlib.suppress(OSError):
        inj.sampler.write("unacked", 0)


def _restore_log(pid: int, ts: TargetSampler, log: list[tuple[int, int]], proc_root: str) -> list[str]:
    st = ptrace.stop_threads(pid, proc_root=proc_root)
    try:
        return _restore_stopped(pid, ts, log, proc_root)
    finally:
        st.release()


def _restore_stopped(pid: int, ts: TargetSampler, log: list[tuple[int, int]], proc_root: str) -> list[str]:
    hooks = {ts.hook(n) for n in HOOKED}
    kept = 0
    ts.write("enabled", 0)
    for addr, original in log:
        raw = ptrace.read_mem(pid, addr, 8, proc_root)
        if len(raw) != 8:
            continue  # unmapped since (dlclose)
        if int.from_bytes(raw, "little") in hooks:
            ptrace.write_mem(pid, addr, struct.pack("<Q", original), proc_root)
        else:
            kept += 1
    ts.write_patches([])
    ts.owner = 0
    return [f"{kept} GOT entries changed since they were patched were left as they are"] if kept else []


def remove(inj: Injection, proc_root: str = "/proc") -> None:
    """Switch the sampler off and give every patched slot its original value back; the sampler's
    tables go back to untouched pages. The object stays mapped, inert."""
    if inj.removed:
        return
    inj.removed = True
    try:
        st = ptrace.stop_threads(inj.pid, proc_root=proc_root)
    except ptrace.PtraceError as exc:
        if exc.errno != errno.ESRCH:
            inj.problems.append(f"patched GOT entries not restored: {exc}")
        return
    try:
        inj.problems.extend(_restore_stopped(inj.pid, inj.sampler, inj.patches, proc_root))
        if st.tids:
            with contextlib.suppress(ptrace.PtraceError):
                ptrace.remote_call(inj.pid, st.tids[0], inj.sampler.addr("nw_release"), (), proc_root=proc_root)
    except OSError as exc:
        if exc.errno != errno.ENOENT and exc.errno != errno.ESRCH:
            inj.problems.append(f"restoring the GOT failed: {exc}")
    finally:
        st.release()
        inj.stops_s.append(st.stop_s)
