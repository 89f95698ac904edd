"""Reaching a target's own /tmp and cwd without ever leaving its root, and who the target is.

A JVM in a container sees its own mount namespace: its /tmp is /proc/PID/root/tmp from the host.
A plain path walk through /proc/PID/root follows absolute symlinks relative to *our* root, so a
container could plant `/tmp -> /host/etc` and make a privileged agent write there. Directories are
therefore opened with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) against an O_PATH fd of the
target's root (symlinks resolve as if that root were "/"); where openat2 is missing (kernel < 5.6)
every component is opened with O_NOFOLLOW, so any symlink is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

from nativewatch.sources import procfs
from nativewatch.sources.procstat import parse_stat_starttime

__all__ = ["TargetIds", "target_ids", "open_target_root", "open_in_root", "open_target_tmp", "parse_stat_starttime"]

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class TargetIds:
    pid: int
    nspid: int  # the pid the JVM sees for itself (innermost PID namespace)
    euid: int
    egid: int
    starttime: int  # clock ticks since boot; tells a reused pid apart


def target_ids(pid: int, proc_root: str = "/proc", status: procfs.Status | None = None) -> TargetIds:
    st = status or procfs.read_status(pid, proc_root)
    nspid = st.nspid[-1] if st.nspid else pid
    euid = st.uid[1] if len(st.uid) > 1 else 0
    egid = st.gid[1] if len(st.gid) > 1 else 0
    return TargetIds(pid, nspid, euid, egid, parse_stat_starttime(procfs.read_file(pid, "stat", proc_root)))


def open_target_root(pid: int, proc_root: str = "/proc") -> int:
    return os.open(f"{proc_root}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    how = struct.pack("QQQ", flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, path.encode(), buf, ctypes.c_size_t(len(how)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


def _walk_nofollow(dir_fd: int, path: str, flags: int) -> int:
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise OSError(errno.EXDEV, "'..' refused", path)
    cur = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = os.open(part, (flags if last else os.O_PATH | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=cur)
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """Open `path` (relative to the target's root) so that no symlink can lead outside that root."""
    flags |= os.O_CLOEXEC
    if _SYS_OPENAT2 is not None:
        try:
            return _openat2(root_fd, path.lstrip("/"), flags)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
    return _walk_nofollow(root_fd, path, flags)


def open_target_tmp(pid: int, proc_root: str = "/proc") -> int:
    """A read/search fd of the target's /tmp (HotSpot's temp directory is always /tmp on Linux)."""
    root = open_target_root(pid, proc_root)
    try:
        return open_in_root(root, "tmp", os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(root)

