"""uprobe_multi links through the raw bpf(2) syscall (bcc 0.26 has no API for them).

Why uprobe_multi instead of bcc's attach_uprobe/attach_uretprobe:
- *session* mode (kernel >= 6.13): one program runs at entry, and the kernel arms the return probe
  only when the entry half returns 0. Unsampled mallocs therefore never pay for a uretprobe.
- a pid filter in the kernel: breakpoints are installed only in the target's mm.
- the link is an fd: when nativewatch exits or is SIGKILLed the kernel drops the link and removes
  every breakpoint; nothing is left in tracefs' uprobe_events.
- attach cookies tell one program which entry point fired.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Sequence

BPF_LINK_CREATE = 28
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_GET_FD_BY_ID = 30
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_TRACE_UPROBE_MULTI = 48
BPF_TRACE_UPROBE_SESSION = 57
BPF_LINK_TYPE_UPROBE_MULTI = 12
_SYS_BPF = 321  # x86_64

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_SYS_BPF, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


def create_uprobe_multi(prog_fd: int, path: str, offsets: Sequence[int], cookies: Sequence[int],
                        pid: int, *, session: bool) -> int:
    """Attach prog_fd at file `offsets` of `path` for process `pid`; returns the link fd.

    `path` is resolved by the kernel in *our* mount namespace, so callers pass
    /proc/PID/map_files/<range> (the exact inode the target maps, also inside containers)."""
    n = len(offsets)
    if n == 0 or n != len(cookies):
        raise ValueError("offsets and cookies must be non-empty and the same length")
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    offs = (ctypes.c_uint64 * n)(*offsets)
    cks = (ctypes.c_uint64 * n)(*cookies)
    attr = ctypes.create_string_buffer(64)
    attach_type = BPF_TRACE_UPROBE_SESSION if session else BPF_TRACE_UPROBE_MULTI
    struct.pack_into("<IIII", attr, 0, prog_fd, 0, attach_type, 0)
    struct.pack_into("<QQQQIII", attr, 16, ctypes.addressof(path_buf), ctypes.addressof(offs), 0,
                     ctypes.addressof(cks), n, 0, pid)
    return _bpf(BPF_LINK_CREATE, attr)


def uprobe_multi_link_pids() -> list[int]:
    """Pids targeted by every uprobe_multi link alive on the system (for leak checks in tests)."""
    pids: list[int] = []
    link_id = 0
    while True:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, link_id)
        try:
            _bpf(BPF_LINK_GET_NEXT_ID, attr)
        except OSError:
            return pids
        link_id = struct.unpack_from("<I", attr, 4)[0]
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, link_id)
        try:
            fd = _bpf(BPF_LINK_GET_FD_BY_ID, attr)
        except OSError:
            continue
        try:
            info = ctypes.create_string_buffer(256)
            attr = ctypes.create_string_buffer(16)
            struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
            _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
            link_type = struct.unpack_from("<I", info, 0)[0]
            if link_type == BPF_LINK_TYPE_UPROBE_MULTI:
                # struct bpf_link_info: type, id, prog_id, then the uprobe_multi union member at 16:
                # path(u64) offsets(u64) ref_ctr_offsets(u64) cookies(u64) path_size cnt flags pid
                pids.append(struct.unpack_from("<I", info, 16 + 32 + 12)[0])
        finally:
            os.close(fd)
