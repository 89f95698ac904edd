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

Which slots, and what each hook forwards to: plan.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nativewatch.errors import ProcessGone, SourceUnavailable
from nativewatch.inject import ptrace
from nativewatch.inject.plan import (
    LDSO_RE,
    LIBC_RE,
    Object,
    Plan,
    PlannedSlot,
    image_of,
    make_plan,
    objects,
    open_object,
    plan_slots,
)
from nativewatch.inject.sampler import (
    HOOKED,
    MEMFD_NAME,
    PATCH_SLOTS,
    SamplerFile,
    TargetSampler,
    sampler_file,
)
from nativewatch.malloc_profile import sampling
from nativewatch.malloc_profile.resolve import ProbePlan

__all__ = ["InjectRefused", "Injection", "preflight", "inject", "patch_new_objects", "remove", "find_sampler",
           "go_without_cgo", "acknowledge"]

MFD_CLOEXEC = 1
SYS_MEMFD_CREATE = 319
SYS_CLOSE = 3
RTLD_NOW = 2
RTLD_NODELETE = 0x1000
# dlopen waits for the loader's lock, which another thread's dlopen may hold while it runs a slow
# library constructor; a call given up midway would leave that lock held forever
DLOPEN_TIMEOUT_S = 30.0


class InjectRefused(SourceUnavailable):
    """Injection is not possible or not safe for this process; the message says why."""


@dataclass
class Injection:
    pid: int
    sampler: TargetSampler
    how: str                         # "loaded" | "reused"
    plan: Plan
    patches: list[tuple[int, int]] = field(default_factory=list)  # (slot address, original value)
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
                "left_alone_slots": self.plan.skipped_bound_elsewhere,
                "load_stop_ms": round(self.load_stop_s * 1000, 2),
                "max_stop_ms": round(max(self.stops_s, default=0.0) * 1000, 2),
                "stops": len(self.stops_s)}


# ---- refusals ---------------------------------------------------------------------------------
def go_without_cgo(pid: int, proc_root: str = "/proc", objs: list[Object] | None = None) -> str:
    """Why a Go program without cgo cannot be sampled through malloc ('' when pid is not one)."""
    objs = objects(pid, proc_root) if objs is None else objs
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return ""
    exe_obj = next((o for o in objs if o.path == exe), None)
    img = image_of(pid, exe_obj, proc_root) if exe_obj is not None else None
    if img is None or "runtime.main" not in img.functions or any(LIBC_RE.search(o.path) for o in objs):
        return ""
    return (f"pid {pid} is a Go program without cgo: its allocations never go through malloc (the Go heap "
            "is the `heap` category of a snapshot; Go's own runtime/pprof heap profile names its sites)")


def preflight(pid: int, plan: ProbePlan, proc_root: str = "/proc", *, forced: bool = True) -> None:
    """Raise InjectRefused when injection cannot work here; the reason names what to use instead.
    Not `forced` (auto): also when a seccomp filter could deny, or kill the process for, one of the
    system calls loading makes (memfd_create, openat, mmap...): nativewatch cannot tell which."""
    if not forced and _seccomp_filtered(pid, proc_root):
        raise InjectRefused(f"pid {pid} runs under a seccomp filter: loading the sampler makes system calls it "
                            "might deny or kill the process for (--via inject takes that risk)")
    tracer = ptrace.tracer_pid(pid, proc_root)
    if tracer > 0:
        raise InjectRefused(f"pid {pid} is already traced by pid {tracer} (a debugger?): not injecting")
    if tracer < 0:
        raise ProcessGone(pid, "its status is unreadable")
    objs = objects(pid, proc_root)
    go = go_without_cgo(pid, proc_root, objs)
    if go:
        raise InjectRefused(go)
    if plan.provider_kind == "static" or not any(LDSO_RE.search(o.path) for o in objs):
        raise InjectRefused(f"pid {pid} is a static binary: no GOT to patch and no loader (the uprobe rungs "
                            "work)")
    if not plan.provider:
        raise InjectRefused(f"pid {pid}: the allocator could not be identified")


def _seccomp_filtered(pid: int, proc_root: str) -> bool:
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Seccomp:"):
                    return line.split()[1] == b"2"
    except (OSError, IndexError):
        return False
    return False


# ---- loading ----------------------------------------------------------------------------------
def find_sampler(pid: int, sf: SamplerFile, proc_root: str = "/proc") -> TargetSampler | None:
    """The sampler already mapped in pid (an earlier capture), if it is this build of it."""
    for o in objects(pid, proc_root):
        if not o.is_sampler:
            continue
        try:
            fd = open_object(pid, o, proc_root)
        except OSError:
            continue
        try:
            same = os.pread(fd, len(sf.data) + 1, 0) == sf.data
        finally:
            os.close(fd)
        if same:
            return TargetSampler(pid, o.first.start - o.first.offset, sf, proc_root)
    return None


def _export(pid: int, objs: list[Object], names: tuple[str, ...], proc_root: str) -> int | None:
    """Run-time address of the first of `names` libc (else any object) exports."""
    libc = [o for o in objs if LIBC_RE.search(o.path)]
    for name in names:
        for o in libc + [o for o in objs if o not in libc and not o.is_sampler and not LDSO_RE.search(o.path)]:
            img = image_of(pid, o, proc_root)
            bias = o.bias(img) if img is not None else None
            if img is not None and bias is not None and name in img.exports:
                return bias + img.exports[name]
    return None


def _load(pid: int, sf: SamplerFile, plan: ProbePlan, proc_root: str, deadline: float) -> tuple[TargetSampler, float]:
    from nativewatch.inject.safepoint import stop_at_safe_point

    objs = objects(pid, proc_root)
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
            # not the plain /proc/self/fd/N: the loader matches objects by that string, and the
            # program's own dlopen of a memfd plugin by the same number would get the sampler
            path = f"/proc/self/./fd/{fd}".encode() + b"\0"
            handle, _ = ptrace.remote_call(pid, tid, dlopen_fn, (ptrace.DATA, RTLD_NOW | RTLD_NODELETE), data=path,
                                           proc_root=proc_root, timeout_s=DLOPEN_TIMEOUT_S)
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


def _reinit(pid: int, ts: TargetSampler, plan: ProbePlan, proc_root: str, deadline: float) -> None:
    """The sampler is mapped but its state is not: a child forked from a process that had it (its
    MADV_WIPEONFORK mapping reads as zeros there). A new state mapping, made on a thread at a safe
    point (nw_reinit only makes two system calls; the hooks pass through meanwhile)."""
    from nativewatch.inject.safepoint import stop_at_safe_point

    st, tid = stop_at_safe_point(pid, plan, proc_root, deadline)
    with st:
        ptrace.remote_call(pid, tid, ts.addr("nw_reinit"), (), proc_root=proc_root)
    ts.forget_state()


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
def _apply(inj: Injection, slots: list[PlannedSlot], *, enable_with: tuple[int, list[int]] | None,
           proc_root: str) -> None:
    """One full stop: the real functions (first time), the patch log, the slots, then on. All or
    nothing: a failure puts back every slot this stop wrote."""
    ts = inj.sampler
    st = ptrace.stop_threads(inj.pid, proc_root=proc_root)
    written: list[tuple[int, int]] = []
    try:
        new: list[PlannedSlot] = []
        for s in slots:
            # still what was planned? (a library unloaded since, its range reused, is left alone)
            try:
                raw = ptrace.read_mem(inj.pid, s.addr, 8, proc_root)
            except OSError:
                continue
            if len(raw) == 8 and int.from_bytes(raw, "little") == s.value:
                new.append(s)
        if len(inj.patches) + len(new) > PATCH_SLOTS:
            raise InjectRefused(f"pid {inj.pid}: more than {PATCH_SLOTS} GOT entries to patch")
        if enable_with is not None:
            for name, addr in inj.plan.hooked.items():
                ts.set_real(name, addr)
        ts.write_patches(inj.patches + [(s.addr, s.value) for s in new])
        ts.owner = os.getpid()
        for s in new:
            hook = ts.hook(s.symbol)
            ptrace.write_mem(inj.pid, s.addr, struct.pack("<Q", hook), proc_root)
            written.append((s.addr, s.value))
        if enable_with is not None:
            interval, exp = enable_with
            ts.write("enabled", 0)
            ts.write("interval", interval)
            ts.write("unacked", 0)
            ts.write("set_full", 0)
            ts.write("generation", ts.read("generation") + 1)
            if interval:
                ts.set_exp_table(exp)
            ts.reset_slots(interval, exp if interval else [0])
            ts.write("enabled", 1)
        inj.patches.extend(written)
    except BaseException:
        for addr, original in written:
            with contextlib.suppress(OSError):
                ptrace.write_mem(inj.pid, addr, struct.pack("<Q", original), proc_root)
        with contextlib.suppress(OSError):
            ts.write_patches(inj.patches)
        raise
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
        if not ts.state and how == "reused":
            _reinit(pid, ts, plan, proc_root, deadline)  # a forked child: its copy of the state was wiped
        if not ts.state:
            raise InjectRefused(f"pid {pid}: the sampler could not set up its state (kernel without "
                                "MADV_WIPEONFORK, < 4.14?)")
        if before_patching is not None:
            before_patching(ts)
        leftover = ts.read_patches()
        owner = ts.owner
        if leftover and owner and owner != os.getpid() and _exists(owner, "/proc"):
            raise InjectRefused(f"pid {pid}: another nativewatch (pid {owner}) is capturing through the sampler "
                                "in this process")
        if leftover:
            _restore_log(pid, ts, leftover, proc_root)
        objs = objects(pid, proc_root)
        p = make_plan(pid, objs, plan, proc_root)
        if "malloc" not in p.hooked or "free" not in p.hooked:
            raise InjectRefused(f"pid {pid}: malloc/free of {plan.provider} not found")
        inj = Injection(pid, ts, how, p, load_stop_s=load_stop)
        slots, scanned = plan_slots(pid, objs, plan, p, proc_root, inj.problems)
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
    return ptrace.alive(pid, proc_root)


def patch_new_objects(inj: Injection, plan: ProbePlan, proc_root: str = "/proc") -> int:
    """Patch objects mapped since the last scan (dlopen'ed libraries). Returns how many slots."""
    if inj.removed:
        return 0
    objs = objects(inj.pid, proc_root)
    todo = [o for o in objs if o.key not in inj.scanned]
    if not todo:
        return 0
    slots, scanned = plan_slots(inj.pid, todo, plan, inj.plan, proc_root, inj.problems)
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
        try:
            raw = ptrace.read_mem(pid, addr, 8, proc_root)
        except OSError:
            continue  # unmapped since (dlclose): nothing left to restore there
        if len(raw) != 8:
            continue
        if int.from_bytes(raw, "little") in hooks:
            ptrace.write_mem(pid, addr, struct.pack("<Q", original), proc_root)
        else:
            kept += 1
    ts.write_patches([])
    ts.owner = 0
    return [f"{kept} GOT entries changed since they were patched were left as they are"] if kept else []


def _quiet_thread(pid: int, st: ptrace.Stopped, proc_root: str) -> int | None:
    """A stopped thread a remote call may run on: stopped in a system call and not inside an rseq
    critical section. None: the sampler's tables keep their pages this time."""
    for tid in st.tids:
        try:
            regs = ptrace.get_regs(tid)
        except ptrace.PtraceError:
            continue
        if regs["orig_rax"] < 1 << 63 and not ptrace.rseq_critical(pid, tid, regs["rip"], proc_root):
            return tid
    return None


def remove(inj: Injection, proc_root: str = "/proc") -> None:
    """Switch the sampler off and give every patched slot its original value back; the sampler's
    tables go back to untouched pages. The object stays mapped, inert."""
    if inj.removed:
        return
    inj.removed = True
    # Off at once, without a stop: only one byte of the flag changes, so even a torn write reads as
    # 0 or 1; the hooks then pass through while the slots wait to be restored.
    with contextlib.suppress(OSError):
        inj.sampler.write("enabled", 0)
    st = None
    for attempt in range(5):
        try:
            st = ptrace.stop_threads(inj.pid, proc_root=proc_root)
            break
        except ptrace.PtraceError as exc:
            if exc.errno == errno.ESRCH or not _exists(inj.pid, proc_root):
                return
            if attempt == 4:
                inj.problems.append(f"patched GOT entries not restored ({exc}); the sampler is off and its hooks "
                                    "pass every call through; the next capture restores them")
                return
            time.sleep(0.05 * (attempt + 1))
    assert st is not None
    try:
        inj.problems.extend(_restore_stopped(inj.pid, inj.sampler, inj.patches, proc_root))
        tid = _quiet_thread(inj.pid, st, proc_root)
        if tid is not None:
            with contextlib.suppress(ptrace.PtraceError):
                ptrace.remote_call(inj.pid, tid, inj.sampler.addr("nw_release"), (), proc_root=proc_root)
    except OSError as exc:
        if exc.errno != errno.ENOENT and exc.errno != errno.ESRCH:
            inj.problems.append(f"restoring the GOT failed: {exc}")
    finally:
        st.release()
        inj.stops_s.append(st.stop_s)
