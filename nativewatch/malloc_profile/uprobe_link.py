"""Uprobe attachments through raw syscalls: uprobe_multi links (bpf(2); bcc 0.26 has no API for them)
and perf-event uprobes (perf_event_open(2) on the uprobe PMU), all bound to file descriptors.

Why uprobe_multi instead of bcc's attach_uprobe/attach_uretprobe:
- *session* mode (kernel >= 6.13): one program runs at entry, and the kernel arms the return probe
  only when the entry half returns 0. Unsampled mallocs therefore never pay for a uretprobe.
- a pid filter in the kernel: breakpoints are installed only in the target's mm.
- the link is an fd: when nativewatch exits or is SIGKILLed the kernel drops the link and removes
  every breakpoint; nothing is left in tracefs' uprobe_events.
- attach cookies tell one program which entry point fired.
Kernels without uprobe_multi (< 6.6) get perf-event uprobes: one event per point, opened for the
target's pid (the kernel filters on the target's mm, so every thread is covered), the program set with
PERF_EVENT_IOC_SET_BPF. Closing the event's fd removes the breakpoint just the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
from collections.abc import Sequence
from pathlib import Path

BPF_LINK_CREATE = 28
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_GET_FD_BY_ID = 30
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_TRACE_UPROBE_MULTI = 48
BPF_TRACE_UPROBE_SESSION = 57
BPF_LINK_TYPE_UPROBE_MULTI = 12
BPF_F_UPROBE_MULTI_RETURN = 1
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_KPROBE = 2
_SYS_BPF = 321  # x86_64
_SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    ret = _libc.syscall(_SYS_BPF, ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


def create_uprobe_multi(prog_fd: int, path: str, offsets: Sequence[int], cookies: Sequence[int],
                        pid: int, *, session: bool, return_probe: bool = False) -> int:
    """Attach prog_fd at file `offsets` of `path` for process `pid`; returns the link fd.
    `return_probe`: a uretprobe_multi link (the program runs when each function returns).

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
                     ctypes.addressof(cks), n, BPF_F_UPROBE_MULTI_RETURN if return_probe else 0, pid)
    return _bpf(BPF_LINK_CREATE, attr)


def _uprobe_pmu() -> tuple[int, int]:
    """(PMU type, config bit that makes a uretprobe) of the kernel's uprobe PMU."""
    try:
        pmu_type = int(Path(f"{UPROBE_PMU}/type").read_text())
        fmt = Path(f"{UPROBE_PMU}/format/retprobe").read_text().strip()  # e.g. "config:0"
        return pmu_type, int(fmt.split(":", 1)[1])
    except (OSError, ValueError, IndexError) as exc:
        raise OSError(2, f"no uprobe PMU ({exc})") from None


def open_perf_uprobe(prog_fd: int, path: str, offset: int, pid: int, *, return_probe: bool) -> int:
    """A perf-event uprobe (or uretprobe) at file `offset` of `path` for process `pid`, running
    prog_fd (a plain kprobe-type program); returns the event's fd."""
    pmu_type, ret_bit = _uprobe_pmu()
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    # type, size, config, sample_period, sample_type, read_format, flags (bit 0: disabled),
    # wakeup_events, bp_type, config1 (uprobe_path), config2 (probe_offset)
    struct.pack_into("<IIQQQQQIIQQ", attr, 0, pmu_type, _PERF_ATTR_SIZE, (1 << ret_bit) if return_probe else 0,
                     1, 0, 0, 1, 1, 0, ctypes.addressof(path_buf), offset)
    fd = _libc.syscall(_SYS_PERF_EVENT_OPEN, attr, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1),
                       ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open(uprobe): {os.strerror(err)}")
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return int(fd)


def load_noop_program(expected_attach_type: int = 0) -> int:
    """A two-instruction kprobe-type program (r0 = 0; exit), loaded without bcc: what a feature
    probe needs to ask the kernel whether an attach type exists. Returns its fd."""
    insns = ctypes.create_string_buffer(bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]), 16)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_KPROBE, 2, ctypes.addressof(insns), ctypes.addressof(lic))
    struct.pack_into("<I", attr, 68, expected_attach_type)
    return _bpf(BPF_PROG_LOAD, attr)


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
