"""Reads of a target's memory through /proc/PID/mem: no ptrace stop, no signal, bounded in count.

Needs ptrace-read access (root, or CAP_SYS_PTRACE in the agent's pod). Everything read is the target's
own bytes and therefore untrusted: callers validate before believing any of it. A read of an
unmapped or vanished range returns None; after `max_reads` every read returns None, so a process
with millions of candidate addresses costs a bounded number of syscalls.
"""

from __future__ import annotations

import os
import struct

__all__ = ["ProcMem"]


class ProcMem:
    def __init__(self, pid: int, proc_root: str = "/proc", max_reads: int = 1 << 18) -> None:
        self.path = f"{proc_root}/{pid}/mem"
        self.max_reads = max_reads
        self.reads = 0
        self.fd: int | None = None
        self.error: str | None = None  # why the file could not be opened (then every read is None)

    def _open(self) -> int | None:
        if self.fd is None and self.error is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                self.error = exc.strerror or str(exc)
        return self.fd

    @property
    def exhausted(self) -> bool:
        return self.reads >= self.max_reads

    def read(self, addr: int, size: int) -> bytes | None:
        if size <= 0 or addr < 0 or addr + size > 1 << 64 or self.exhausted:
            return None
        fd = self._open()
        if fd is None:
            return None
        self.reads += 1
        try:
            raw = os.pread(fd, size, addr)
        except (OSError, OverflowError):
            return None
        return raw if len(raw) == size else None

    def u64(self, addr: int) -> int | None:
        raw = self.read(addr, 8)
        return struct.unpack("<Q", raw)[0] if raw is not None else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ProcMem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
