"""Loaded eBPF maps read through the bpf(2) system call, without bcc: lookups, key walks, batch
lookup-and-delete, and a BPF ring buffer consumer over mmap.

This is what lets the agent hold its programs without holding bcc's compiler: a short-lived child
compiles and attaches them (`nativewatch.sources.bpfchild`) and hands over file descriptors; every read
after that is a system call on a descriptor. Layouts are the kernel's UAPI (`union bpf_attr`,
`struct bpf_map_info`, the ring buffer's consumer/producer pages), which are stable ABI.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["BpfMap", "MapInfo", "RingBuffer", "map_info", "prog_ids", "prog_name"]

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())

_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_GET_INFO_BY_FD = 15
_MAP_LOOKUP_AND_DELETE_BATCH = 25

MAP_TYPE_RINGBUF = 27
_ENOTSUPP = 524  # the kernel's own "operation not supported" (no name in Python's errno)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    if _NR_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    ret = _libc.syscall(_NR_BPF, cmd, attr, len(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(ret)


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(80)  # the fields up to and including name[16] are 40 bytes
    attr = ctypes.create_string_buffer(struct.pack("IIQ", fd, len(info), _addr(info)), 16)
    _bpf(_OBJ_GET_INFO_BY_FD, attr)
    typ, mid, ks, vs, me, _flags = struct.unpack_from("6I", info.raw, 0)
    name = info.raw[24:40].split(b"\0", 1)[0].decode("ascii", "replace")
    return MapInfo(typ, mid, ks, vs, me, name)


class BpfMap:
    """One map by descriptor: keys and values are bytes of the map's own sizes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.info = map_info(fd)
        self._batch_ok = True

    def _elem(self, cmd: int, key: bytes | None, out_size: int,
              extra: ctypes.Array[ctypes.c_char] | None = None) -> ctypes.Array[ctypes.c_char]:
        kbuf = ctypes.create_string_buffer(key, self.info.key_size) if key is not None else None
        out = ctypes.create_string_buffer(out_size) if out_size else None
        attr = ctypes.create_string_buffer(struct.pack("IIQQQ", self.fd, 0, _addr(kbuf), _addr(out), 0), 32)
        _bpf(cmd, attr)
        return out if out is not None else ctypes.create_string_buffer(0)

    def lookup(self, key: bytes) -> bytes | None:
        try:
            return self._elem(_MAP_LOOKUP_ELEM, key, self.info.value_size).raw
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def update(self, key: bytes, value: bytes) -> bool:
        """Insert or replace; False when the map is full (E2BIG) instead of raising."""
        kbuf = ctypes.create_string_buffer(key, self.info.key_size)
        vbuf = ctypes.create_string_buffer(value, self.info.value_size)
        attr = ctypes.create_string_buffer(struct.pack("IIQQQ", self.fd, 0, _addr(kbuf), _addr(vbuf), 0), 32)
        try:
            _bpf(_MAP_UPDATE_ELEM, attr)
        except OSError as exc:
            if exc.errno in (errno.E2BIG, errno.ENOMEM):
                return False
            raise
        return True

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(_MAP_DELETE_ELEM, key, 0)
            return True
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise

    def keys(self) -> Iterator[bytes]:
        """Every key, by the kernel's own walk; a key deleted meanwhile restarts nothing."""
        key: bytes | None = None
        for _ in range(self.info.max_entries + 1):
            try:
                key = self._elem(_MAP_GET_NEXT_KEY, key, self.info.key_size).raw
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            yield key

    def u64s(self, n: int) -> list[int]:
        """Slots 0..n-1 of a BPF_ARRAY of u64 (the programs' counters); a missing slot reads 0."""
        return [struct.unpack("Q", self.lookup(struct.pack("I", i)) or bytes(8))[0] for i in range(n)]

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def pop_all(self) -> list[tuple[bytes, bytes]]:
        """Read and delete every entry, in batches: one system call per batch, so an update made
        meanwhile is either returned or stays for the next call, never lost. Falls back to a walk on
        kernels or map types without batch operations."""
        if self._batch_ok:
            try:
                return self._pop_batch()
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                    raise
                self._batch_ok = False
        out = []
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None and self.delete(k):
                out.append((k, v))
        return out

    def _pop_batch(self) -> list[tuple[bytes, bytes]]:
        ks, vs = self.info.key_size, self.info.value_size
        n = max(1, min(self.info.max_entries, 4096))
        keys = ctypes.create_string_buffer(ks * n)
        values = ctypes.create_string_buffer(vs * n)
        token_in = ctypes.create_string_buffer(max(ks, 8))
        token_out = ctypes.create_string_buffer(max(ks, 8))
        out: list[tuple[bytes, bytes]] = []
        first = True
        for _ in range(self.info.max_entries // n + 2):
            attr = ctypes.create_string_buffer(struct.pack(
                "QQQQIIQQ", 0 if first else _addr(token_in), _addr(token_out), _addr(keys), _addr(values),
                n, self.fd, 0, 0), 56)
            done = False
            try:
                _bpf(_MAP_LOOKUP_AND_DELETE_BATCH, attr)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                done = True
            (count,) = struct.unpack_from("I", attr.raw, 32)
            kr, vr = keys.raw, values.raw
            out.extend((kr[i * ks:(i + 1) * ks], vr[i * vs:(i + 1) * vs]) for i in range(count))
            if done:
                return out
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False
        return out


class RingBuffer:
    """Consumer of a BPF_MAP_TYPE_RINGBUF map: records are read in order and handed to ``on_record``.

    Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (written by us), the next page
    the producer position, then the data area mapped twice so a record never wraps; each record has an
    8-byte header {u32 len | BUSY << 31 | DISCARD << 30, u32 page offset}, and records are 8-byte aligned.
    """

    _BUSY = 1 << 31
    _DISCARD = 1 << 30

    def __init__(self, fd: int, on_record: Callable[[bytes], None]) -> None:
        info = map_info(fd)
        if info.type != MAP_TYPE_RINGBUF:
            raise ValueError(f"map {info.name!r} is not a ring buffer (type {info.type})")
        self.size = info.max_entries
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data_off = page
        self.on_record = on_record

    def poll(self) -> int:
        """Consume every committed record; returns how many."""
        (cons,) = struct.unpack_from("Q", self._cons, 0)
        (prod,) = struct.unpack_from("Q", self._prod, 0)
        n = 0
        while cons < prod:
            off = self._data_off + (cons & self.mask)
            hdr, _pg = struct.unpack_from("II", self._prod, off)
            if hdr & self._BUSY:
                break  # reserved, not committed yet
            length = hdr & ~(self._BUSY | self._DISCARD)
            if not hdr & self._DISCARD:
                self.on_record(bytes(self._prod[off + 8:off + 8 + length]))
                n += 1
            cons += (length + 8 + 7) & ~7
            struct.pack_into("Q", self._cons, 0, cons)
        return n

    def close(self) -> None:
        self._cons.close()
        self._prod.close()


_PROG_GET_NEXT_ID = 11
_PROG_GET_FD_BY_ID = 13


def prog_ids() -> list[int]:
    """Ids of every eBPF program loaded on this machine (needs CAP_SYS_ADMIN): for checking that what
    a process attached went away with it."""
    out: list[int] = []
    start = 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("II", start, 0), 16)
        try:
            _bpf(_PROG_GET_NEXT_ID, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return out
            raise
        (start,) = struct.unpack_from("I", attr.raw, 4)
        out.append(start)


def prog_name(prog_id: int) -> str | None:
    """The program's name (its first 15 characters), None when it is gone."""
    attr = ctypes.create_string_buffer(struct.pack("I", prog_id), 16)
    try:
        fd = _bpf(_PROG_GET_FD_BY_ID, attr)
    except OSError:
        return None
    try:
        info = ctypes.create_string_buffer(256)
        attr = ctypes.create_string_buffer(struct.pack("IIQ", fd, len(info), _addr(info)), 16)
        _bpf(_OBJ_GET_INFO_BY_FD, attr)
        return info.raw[64:80].split(b"\0", 1)[0].decode("ascii", "replace")
    finally:
        os.close(fd)
