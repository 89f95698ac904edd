"""A thread of the target stopped where calling the target's dlopen from it cannot deadlock.

dlopen takes the loader's lock and allocates. A thread stopped while it holds one of those (inside
malloc, inside the loader, in a dl_iterate_phdr callback) would wait for itself; a thread stopped
inside a signal handler must not call anything that is not async-signal-safe. So each thread is
stopped in turn, its stack is read through /proc/PID/mem and unwound with the objects' CFI, and it is
used only when no frame is
- in the allocator's object, the dynamic loader or the sampler,
- a signal frame (its return address is the sigreturn trampoline: `mov $15, %rax; syscall`),
- in libc inside a function that holds what dlopen needs: the malloc family and its internals, the
  dl* functions and dl_iterate_phdr, fork, exit and atexit processing, thread creation and exit,
  backtrace (it dlopens libgcc_s). Named by libc's symbols (its debug file's when installed; without
  it, internal functions are unnamed and judged by their named callers, which are on the stack).
A thread blocked in a system call (an event loop, a read) or running the program's own code is fine,
whatever other libc locks (a FILE's) it holds: dlopen takes none of them. Other threads keep running
meanwhile. When no thread qualifies, everything is let go and tried again a few milliseconds later,
until the deadline.
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import Any

from nativewatch.errors import ProcessGone
from nativewatch.inject import ptrace
from nativewatch.malloc_profile.resolve import ProbePlan
from nativewatch.malloc_profile.symbolize import Symbolizer
from nativewatch.sources.procfs import read_maps
from nativewatch.unwind.unwinder import STOP_END, unwind

__all__ = ["stop_at_safe_point", "thread_is_safe", "UNSAFE_LIBC"]

STACK_READ = 256 * 1024
MIN_STACK_LEFT = 64 * 1024
_LDSO_RE = re.compile(r"/ld-linux[^/]*\.so|/ld-[\d.]+\.so|/ld64\.so|/ld-musl")
_LIBC_RE = re.compile(r"/libc(\.so\.\d+|-[\d.]+\.so)$|/libpthread[.-]")

UNSAFE_LIBC = re.compile(r"alloc|free|^_int_|arena|tcache|heap_trim|systrim|^_?dl|^__libc_dl|dl_iterate_phdr|"
                         r"fork|exit|atexit|finalize|^pthread_create|^__pthread_create|^start_thread_unsafe|"
                         r"backtrace|freeres|^_IO_cleanup|^__libc_early_init|^__libc_start_main_unsafe")
_SIGRETURN = bytes.fromhex("48c7c00f0000000f05")  # mov $15, %rax; syscall (rt_sigreturn)


def _path(m: Any) -> str:
    # a library upgraded on disk while mapped reads "... (deleted)": still the same library
    return str(m.path).removesuffix(" (deleted)")


def _ranges(mappings: list[Any], pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    return [(m.start, m.end) for m in mappings if "x" in m.perms and pattern.search(_path(m))]


def _in(ranges: list[tuple[int, int]], addr: int) -> bool:
    return any(lo <= addr < hi for lo, hi in ranges)


def thread_is_safe(pid: int, tid: int, sym: Symbolizer, plan: ProbePlan, proc_root: str = "/proc") -> str:
    """'' when the stopped thread `tid` may call dlopen; otherwise why not."""
    regs = ptrace.get_regs(tid)
    maps = read_maps(pid, proc_root).mappings
    ldso = _ranges(maps, _LDSO_RE)
    libc = _ranges(maps, _LIBC_RE)
    unsafe = ldso + [(m.start, m.end) for m in maps if "x" in m.perms
                     and (_path(m) == plan.provider and plan.provider_kind != "glibc"
                          or "memfd:nativewatch-sampler" in m.path)]
    sp = regs["rsp"]
    stack_map = next((m for m in maps if m.start <= sp < m.end), None)
    if stack_map is None:
        return "its stack pointer is outside any mapping"
    top = stack_map.end
    # dlopen runs on this stack: a thread near its (guard page) limit would overflow in it. The main
    # thread's [stack] grows on demand.
    if stack_map.path != "[stack]" and sp - stack_map.start < MIN_STACK_LEFT:
        return f"only {sp - stack_map.start} bytes of stack left below its stack pointer"
    try:
        stack = ptrace.read_mem(pid, sp, min(STACK_READ, top - sp), proc_root)
    except OSError as exc:
        return f"its stack is unreadable ({exc.strerror})"
    in_syscall = regs["orig_rax"] < 1 << 63
    rseq = ptrace.rseq_critical(pid, tid, regs["rip"], proc_root)
    if rseq or (rseq is None and not in_syscall):
        return "it may be inside an rseq critical section"
    u = unwind(regs["rip"], sp, regs["rbp"], stack, sym.code_at)
    pcs = list(u.pcs)
    if not pcs:
        return "its stack could not be unwound"
    if u.stop != STOP_END:
        # frames beyond the end of the walk are unknown: one of them could hold the loader's lock
        return f"its stack is not unwound to its end ({u.stop})"
    for i, pc in enumerate(pcs):
        look = pc if i == 0 else pc - 1
        if _in(unsafe, look):
            return f"frame {i} is in the allocator or the loader ({sym.function_at(look)})"
        if i > 0 and _in(libc, pc) and _code(pid, pc, proc_root) == _SIGRETURN:
            return "it is running a signal handler"
        if _in(libc, look):
            name = sym.function_at(look)
            if UNSAFE_LIBC.search(name):
                return f"frame {i} is in libc's {name}"
    return ""


def _state(pid: int, tid: int, proc_root: str) -> str:
    try:
        with open(f"{proc_root}/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return "?"


def _code(pid: int, addr: int, proc_root: str) -> bytes:
    try:
        return ptrace.read_mem(pid, addr, len(_SIGRETURN), proc_root)
    except OSError:
        return b""


def stop_at_safe_point(pid: int, plan: ProbePlan, proc_root: str, deadline: float) -> tuple[ptrace.Stopped, int]:
    """One thread of pid, stopped at a safe point (the others running). Raises InjectRefused (via
    the caller's handling of PtraceError) or ProcessGone."""
    from nativewatch.inject.injector import InjectRefused

    sym = Symbolizer(pid, proc_root, hold_files=False)
    sym.prepare_unwinding()
    last = "no threads"
    try:
        while True:
            ptrace.service_stragglers()
            tids = ptrace.thread_ids(pid, proc_root)
            if not tids:
                raise ProcessGone(pid, "no threads")
            # threads asleep in a system call first (an rseq section cannot hold one; the call cannot
            # land in the middle of the program's own work); the main thread last among equals
            for tid in sorted(tids[1:] + tids[:1], key=lambda t: _state(pid, t, proc_root) != "S"):
                if ptrace.is_straggler(tid):
                    continue  # interrupted earlier and not stopped yet: still ours to let go
                try:
                    st = ptrace.stop_threads(pid, [tid], proc_root=proc_root)
                except ptrace.PtraceError as exc:
                    if exc.errno in (errno.ESRCH, errno.ETIMEDOUT):
                        continue
                    raise
                try:
                    why = thread_is_safe(pid, tid, sym, plan, proc_root)
                except (ptrace.PtraceError, OSError) as exc:
                    why = str(exc)
                if not why:
                    return st, tid
                st.release()
                last = f"thread {tid}: {why}"
            if time.monotonic() > deadline:
                raise InjectRefused(f"pid {pid}: no thread reached a safe point to load the sampler from "
                                    f"(last: {last})")
            time.sleep(0.005)
            if not os.path.exists(f"{proc_root}/{pid}"):
                raise ProcessGone(pid, "exited")
    finally:
        sym.close()
