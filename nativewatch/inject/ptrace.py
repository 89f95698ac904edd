"""ptrace, for the few moments nativewatch changes a running process: stop its threads, call a function
in one of them, let them go.

Only PTRACE_SEIZE/INTERRUPT is used (no SIGSTOP is sent, so the target's own job control and its
parent never see a stop), never PTRACE_O_EXITKILL (a nativewatch that dies lets its tracees run on),
and every wait has a deadline: a thread that does not stop in time (uninterruptible sleep) makes the
whole operation give up and release what it holds.

A remote call runs a function on a stopped thread as if that thread had called it: registers and
the extended FPU state are saved, the stack pointer moves below the red zone, the return address is
0, so the function returns into a fault the tracer catches (the fault is never delivered). Then
everything is put back exactly, including a system call the stop interrupted (the kernel restarts it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["PtraceError", "Regs", "Stopped", "stop_threads", "tracer_pid", "thread_ids", "remote_call"]

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
NT_PRFPREG = 2
_WALL = 0x40000000
_XSTATE_MAX = 16384

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long

# struct user_regs_struct (x86-64), in order
REG_NAMES = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
             "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
_REGS = struct.Struct(f"<{len(REG_NAMES)}Q")
_ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


class PtraceError(Exception):
    """A ptrace step failed; `errno` says why (ESRCH: the thread is gone; EPERM: traced by another)."""

    def __init__(self, msg: str, err: int = 0) -> None:
        super().__init__(msg)
        self.errno = err


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _ptrace(req: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0) -> int:
    ctypes.set_errno(0)
    r = _libc.ptrace(req, tid, ctypes.c_void_p(addr), data if isinstance(data, ctypes.c_void_p)
                     else ctypes.c_void_p(data or 0))
    if r == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(f"ptrace({req:#x}, {tid}): {os.strerror(err)}", err)
    return int(r)


@dataclass
class Regs:
    values: dict[str, int]

    def __getitem__(self, k: str) -> int:
        return self.values[k]

    def __setitem__(self, k: str, v: int) -> None:
        self.values[k] = v & 0xFFFFFFFFFFFFFFFF

    def copy(self) -> Regs:
        return Regs(dict(self.values))


def get_regs(tid: int) -> Regs:
    buf = ctypes.create_string_buffer(_REGS.size)
    _ptrace(PTRACE_GETREGS, tid, 0, ctypes.cast(buf, ctypes.c_void_p))
    return Regs(dict(zip(REG_NAMES, _REGS.unpack(buf.raw), strict=True)))


def set_regs(tid: int, regs: Regs) -> None:
    buf = ctypes.create_string_buffer(_REGS.pack(*(regs.values[n] for n in REG_NAMES)), _REGS.size)
    _ptrace(PTRACE_SETREGS, tid, 0, ctypes.cast(buf, ctypes.c_void_p))


def _get_regset(tid: int, kind: int) -> bytes:
    buf = ctypes.create_string_buffer(_XSTATE_MAX)
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), _XSTATE_MAX)
    _ptrace(PTRACE_GETREGSET, tid, kind, ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p))
    return buf.raw[:iov.len]


def _set_regset(tid: int, kind: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    _ptrace(PTRACE_SETREGSET, tid, kind, ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p))


def tracer_pid(pid: int, proc_root: str = "/proc") -> int:
    """TracerPid of /proc/PID/status (0: not traced; -1: unreadable)."""
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return -1
    return 0


def thread_ids(pid: int, proc_root: str = "/proc") -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"{proc_root}/{pid}/task") if t.isdigit())
    except OSError:
        return []


def _wait_stop(tid: int, deadline: float) -> int:
    """Wait for `tid`'s next stop; its status. Raises PtraceError(ETIMEDOUT) past the deadline and
    PtraceError(ESRCH) when the thread exited."""
    delay = 0.0001
    while True:
        try:
            got, status = os.waitpid(tid, os.WNOHANG | _WALL)
        except ChildProcessError:
            raise PtraceError(f"thread {tid} is gone", errno.ESRCH) from None
        if got == tid:
            if os.WIFSTOPPED(status):
                return status
            raise PtraceError(f"thread {tid} exited", errno.ESRCH)
        if time.monotonic() > deadline:
            raise PtraceError(f"thread {tid} did not stop in time", errno.ETIMEDOUT)
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


# Threads seized and interrupted that had not stopped when they were let go (a vfork parent, a
# thread in uninterruptible sleep): still traced by this process, and they will stop as soon as they
# can and wait for it. Each is detached as soon as it is seen stopped (service_stragglers, called at
# every step and every capture tick), so none stays frozen; the kernel lets them go if this process exits.
_stragglers: set[int] = set()


def alive(tid: int, proc_root: str = "/proc") -> bool:
    """The process or thread exists and is not a zombie."""
    try:
        with open(f"{proc_root}/{tid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except (OSError, ValueError):
        return False


def is_straggler(tid: int) -> bool:
    return tid in _stragglers


def service_stragglers() -> int:
    """Detach stragglers that have stopped since; how many are still waited for."""
    for tid in list(_stragglers):
        try:
            got, status = os.waitpid(tid, os.WNOHANG | _WALL)
        except ChildProcessError:
            _stragglers.discard(tid)
            continue
        if got != tid:
            if not alive(tid):
                _stragglers.discard(tid)
            continue
        if os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status)
            resend = 0 if (sig == signal.SIGTRAP and status >> 16 == PTRACE_EVENT_STOP) else sig
            with contextlib.suppress(PtraceError):
                _ptrace(PTRACE_DETACH, tid, 0, resend)
        _stragglers.discard(tid)
    return len(_stragglers)


def _urgent() -> tuple[int, int] | None:
    """Run this thread at a real-time priority while the target is held, so that the target's own
    threads, woken one by one as they are let go, cannot push it off the CPU between two of them (on
    a small machine with a busy target that stretched a 256-thread stop from 4 to 270 ms). Returns
    what to put back; None when not permitted (no CAP_SYS_NICE): it then only takes longer."""
    try:
        old = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (OSError, AttributeError):
        return None
    return old


def _relax(old: tuple[int, int] | None) -> None:
    if old is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, old[0], os.sched_param(old[1]))


@dataclass
class Stopped:
    """Threads of one process held in a ptrace stop. `pending` holds signals that arrived while they
    were being stopped: they are handed back at release, so the target loses none."""
    pid: int
    tids: list[int] = field(default_factory=list)
    settled: set[int] = field(default_factory=set)  # seized threads seen in their stop
    pending: dict[int, int] = field(default_factory=dict)
    stopped_at: float = 0.0
    released_at: float = 0.0
    priority: tuple[int, int] | None = None  # the scheduling policy to put back at release

    @property
    def stop_s(self) -> float:
        end = self.released_at or time.monotonic()
        return max(0.0, end - self.stopped_at) if self.stopped_at else 0.0

    def release(self) -> None:
        for tid in self.tids:
            sig = self.pending.pop(tid, 0)
            if tid not in self.settled:
                # interrupted but not stopped yet: PTRACE_DETACH only works on a stopped tracee
                _stragglers.add(tid)
                continue
            try:
                _ptrace(PTRACE_DETACH, tid, 0, sig)
            except PtraceError:
                # killed while stopped: collect its exit here, or the zombie waits for this tracer
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(tid, os.WNOHANG | _WALL)
        self.tids.clear()
        self.settled.clear()
        self.released_at = time.monotonic()
        _relax(self.priority)
        self.priority = None
        service_stragglers()

    def __enter__(self) -> Stopped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _seize(st: Stopped, tid: int) -> bool:
    """Seize and interrupt `tid` (it stops asynchronously); False when it is already gone."""
    try:
        _ptrace(PTRACE_SEIZE, tid, 0, 0)
    except PtraceError as exc:
        if exc.errno == errno.ESRCH:
            return False  # exited before it could be seized
        raise
    st.tids.append(tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
    except PtraceError as exc:
        if exc.errno != errno.ESRCH:
            raise
        st.tids.remove(tid)  # exited between the two calls
        return False
    return True


def _settle(st: Stopped, tids: list[int], deadline: float) -> None:
    """Wait until every seized thread in `tids` is in its stop; drop those that exited meanwhile."""
    for tid in tids:
        try:
            status = _wait_stop(tid, deadline)
        except PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
            st.tids.remove(tid)
            continue
        st.settled.add(tid)
        sig = os.WSTOPSIG(status)
        if not (sig == signal.SIGTRAP and status >> 16 == PTRACE_EVENT_STOP):
            st.pending[tid] = sig  # a signal was on its way: it is delivered at release


def stop_threads(pid: int, tids: Iterable[int] | None = None, *, timeout_s: float = 0.2,
                 proc_root: str = "/proc") -> Stopped:
    """Seize and stop `tids` (default: every thread of pid, including threads created meanwhile).
    Every thread is interrupted first and waited for after, so the stop lasts about one thread's
    stop latency, not the sum of them. Raises PtraceError (and releases what was stopped) when a
    thread is traced by someone else or does not stop within timeout_s."""
    service_stragglers()
    st = Stopped(pid, priority=_urgent())
    st.stopped_at = time.monotonic()
    deadline = st.stopped_at + timeout_s
    try:
        if tids is not None:
            want = list(tids)
            for tid in want:
                if not _seize(st, tid):
                    raise PtraceError(f"thread {tid} is gone", errno.ESRCH)
            _settle(st, want, deadline)
            if len(st.tids) != len(want):
                raise PtraceError("a thread exited while being stopped", errno.ESRCH)
            return st
        seen: set[int] = set()
        while True:
            # a thread created before its creator stopped shows up in the next listing
            new = [t for t in thread_ids(pid, proc_root) if t not in seen]
            if not new:
                break
            seen.update(new)
            _settle(st, [t for t in new if _seize(st, t)], deadline)
        if not st.tids:
            raise PtraceError(f"pid {pid} has no threads left", errno.ESRCH)
        return st
    except BaseException:
        st.release()
        raise


def write_mem(pid: int, addr: int, data: bytes, proc_root: str = "/proc") -> None:
    fd = os.open(f"{proc_root}/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.pwrite(fd, data, addr) != len(data):
            raise OSError(errno.EIO, f"short write at {addr:#x}")
    finally:
        os.close(fd)


def read_mem(pid: int, addr: int, n: int, proc_root: str = "/proc") -> bytes:
    fd = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, addr)
    finally:
        os.close(fd)


def remote_call(pid: int, tid: int, func: int, args: Sequence[int] = (), *, data: bytes = b"",
                timeout_s: float = 2.0, proc_root: str = "/proc") -> tuple[int, int]:
    """Call func(*args) on the stopped thread `tid` and return (rax, address of `data`). `data` is
    copied below the thread's stack first; an argument equal to DATA is replaced by its address.
    The thread is left stopped, with every register as it was."""
    if len(args) > len(_ARG_REGS):
        raise ValueError("at most six arguments")
    saved = get_regs(tid)
    xstate: tuple[int, bytes] | None = None
    for kind in (NT_X86_XSTATE, NT_PRFPREG):
        try:
            xstate = (kind, _get_regset(tid, kind))
            break
        except PtraceError:
            continue
    mask = _get_sigmask(tid)
    if mask is not None:
        # no handler of the target's runs on top of the call (it might take a lock the call holds);
        # signals stay pending and are handled once the mask is back
        _set_sigmask(tid, 0xFFFFFFFFFFFFFFFF)
    regs = saved.copy()
    # below the red zone (128 bytes) and whatever a signal frame might be building
    base = (saved["rsp"] - 1024 - len(data)) & ~0xF
    data_addr = base if data else 0
    sp = ((base - 64) & ~0xF) - 8  # at entry rsp + 8 is 16-byte aligned, as after a call
    write_mem(pid, sp, struct.pack("<Q", 0), proc_root)
    if data:
        write_mem(pid, base, data, proc_root)
    resolved = [data_addr if a == DATA else a for a in args]
    for name, value in zip(_ARG_REGS, resolved, strict=False):
        regs[name] = value
    regs["rsp"] = sp
    regs["rip"] = func
    regs["rax"] = 0  # no vector registers for a variadic callee
    regs["orig_rax"] = -1  # not in a system call any more: no restart of the interrupted one here
    set_regs(tid, regs)
    deadline = time.monotonic() + timeout_s
    result: int | None = None
    try:
        sig = 0
        while True:
            _ptrace(PTRACE_CONT, tid, 0, sig)
            status = _wait_stop(tid, deadline)
            sig = os.WSTOPSIG(status)
            if status >> 16 == PTRACE_EVENT_STOP:
                sig = 0  # a group stop or an interrupt: just go on
                continue
            if sig == signal.SIGSEGV:
                now = get_regs(tid)
                if now["rip"] == 0:
                    result = now["rax"]
                    break
                raise PtraceError(f"the call to {func:#x} faulted at {now['rip']:#x}", errno.EFAULT)
            # any other signal (a timer, SIGCHLD): the target's handler runs on top of the call
    except PtraceError as exc:
        if exc.errno == errno.ETIMEDOUT:
            # still inside the call: stop it where it is before putting the registers back
            try:
                _ptrace(PTRACE_INTERRUPT, tid)
                _wait_stop(tid, time.monotonic() + 0.5)
            except PtraceError:
                pass
        if exc.errno != errno.ESRCH:
            _restore(tid, saved, xstate, mask)
        raise
    _restore(tid, saved, xstate, mask)
    return result, data_addr


DATA = -0x7FFF_0000_0000_0001  # marker in `args`: the address `data` was copied to


def _restore(tid: int, saved: Regs, xstate: tuple[int, bytes] | None, mask: int | None) -> None:
    set_regs(tid, saved)
    if xstate is not None:
        _set_regset(tid, xstate[0], xstate[1])
    if mask is not None:
        _set_sigmask(tid, mask)


def _get_sigmask(tid: int) -> int | None:
    buf = ctypes.c_uint64(0)
    try:
        _ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.cast(ctypes.pointer(buf), ctypes.c_void_p))
    except PtraceError:
        return None
    return int(buf.value)


def _set_sigmask(tid: int, mask: int) -> None:
    buf = ctypes.c_uint64(mask)
    _ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.cast(ctypes.pointer(buf), ctypes.c_void_p))


def rseq_critical(pid: int, tid: int, rip: int, proc_root: str = "/proc") -> bool | None:
    """Whether the stopped thread is inside an rseq critical section (its rseq_cs descriptor covers
    rip): a call run on it would make the kernel skip that section's abort. None when the kernel
    cannot say."""

    class _RseqConf(ctypes.Structure):
        _fields_ = [("rseq_abi_pointer", ctypes.c_uint64), ("rseq_abi_size", ctypes.c_uint32),
                    ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]

    conf = _RseqConf()
    try:
        _ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf),
                ctypes.cast(ctypes.pointer(conf), ctypes.c_void_p))
    except PtraceError:
        return None
    if not conf.rseq_abi_pointer:
        return False  # no rseq registered
    try:
        raw = read_mem(pid, conf.rseq_abi_pointer + 8, 8, proc_root)  # struct rseq: rseq_cs at 8
        cs = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        if not cs:
            return False
        desc = read_mem(pid, cs, 32, proc_root)  # struct rseq_cs: version, flags, start_ip, post_commit_offset
    except OSError:
        return None
    if len(desc) < 24:
        return None
    start, length = struct.unpack_from("<QQ", desc, 8)
    return start <= rip < start + length
