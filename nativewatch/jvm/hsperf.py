"""hsperfdata source: the JVM's shared performance-counter file (/tmp/hsperfdata_USER/NSPID).

HotSpot writes it without any attach handshake, so it works when NMT is off or attach is disabled.
Layout (HotSpot perfMemory, format 2.x): a 32-byte prologue {magic 0xcafec0c0 (big-endian bytes),
byte_order (0 big, 1 little), major, minor, accessible, used, overflow, mod_time_stamp,
entry_offset, num_entries} then `num_entries` entries {entry_length, name_offset, vector_length,
data_type ('J' long / 'B' byte array), flags, data_units, data_variability, data_offset}.

The file is written by the target: every offset is bounds-checked and a bad entry ends the walk with
a problem instead of an exception.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

from nativewatch.errors import AccessDenied

__all__ = ["PerfData", "parse_hsperfdata", "read_hsperfdata", "find_hsperfdata", "jvm_memory_figures",
           "MAX_FILE_BYTES"]

MAGIC = 0xCAFEC0C0
MAX_FILE_BYTES = 4 << 20  # PerfDataMemorySize defaults to 32 KiB (64 KiB on some builds); cap hostile files
_UNITS = {1: "none", 2: "bytes", 3: "ticks", 4: "events", 5: "string", 6: "hertz"}
_VARIABILITY = {1: "constant", 2: "monotonic", 3: "variable"}
# Precompiled: a JVM's file has ~1,000 entries and a scan reads it for every JVM.
_ENTRY = {o: struct.Struct(o + "iiiBBBBi") for o in "<>"}
_LONG = {o: struct.Struct(o + "q") for o in "<>"}
_J, _B = ord("J"), ord("B")
_PAGE = 4096


@dataclass(frozen=True, slots=True)
class PerfData:
    version: tuple[int, int]
    accessible: bool
    values: dict[str, int | str]
    units: dict[str, str]
    problems: tuple[str, ...]

    def int_value(self, name: str) -> int | None:
        v = self.values.get(name)
        return v if isinstance(v, int) else None

    def str_value(self, name: str) -> str | None:
        v = self.values.get(name)
        return v if isinstance(v, str) else None


def parse_hsperfdata(data: bytes) -> PerfData:
    problems: list[str] = []
    values: dict[str, int | str] = {}
    units: dict[str, str] = {}
    if len(data) < 32:
        return PerfData((0, 0), False, {}, {}, ("file shorter than the 32-byte prologue",))
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic != MAGIC:
        return PerfData((0, 0), False, {}, {}, (f"bad magic {magic:#x}",))
    order = "<" if data[4] == 1 else ">"
    major, minor, accessible = data[5], data[6], data[7]
    _used, _overflow, _mod, entry_offset, num_entries = struct.unpack_from(order + "iiqii", data, 8)
    if major != 2:
        problems.append(f"unknown hsperfdata version {major}.{minor}; reading it as 2.x")
    off = entry_offset
    entry = _ENTRY[order].unpack_from
    long_at = _LONG[order].unpack_from
    size = len(data)
    for i in range(max(0, min(num_entries, 100_000))):
        if off < 32 or off + 20 > size:
            problems.append(f"entry {i}: offset {off} outside the file")
            break
        elen, name_off, vlen, dtype, _flags, dunits, _dvar, data_off = entry(data, off)
        if elen < 20 or off + elen > size:
            problems.append(f"entry {i}: bad length {elen}")
            break
        end = off + elen
        nstart = off + name_off
        if not (off + 20 <= nstart < end):
            problems.append(f"entry {i}: bad name offset")
            off = end
            continue
        nul = data.find(b"\0", nstart, end)
        name = data[nstart:nul if nul >= 0 else end].decode("ascii", "replace")
        dstart = off + data_off
        if dtype == _J and vlen == 0:
            if not (off + 20 <= dstart and dstart + 8 <= end):
                problems.append(f"{name}: bad data offset")
            else:
                (values[name],) = long_at(data, dstart)
        elif dtype == _B and vlen > 0:
            if not (off + 20 <= dstart and dstart + vlen <= end):
                problems.append(f"{name}: bad data offset")
            else:
                raw = data[dstart:dstart + vlen]
                values[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        units[name] = _UNITS.get(dunits, "unknown")
        off = end
    return PerfData((major, minor), bool(accessible), values, units, tuple(problems))


def _read_nofollow(dir_fd: int, name: str, owner: int | None) -> bytes:
    # O_PATH first: a device node or FIFO planted under that name is never really opened.
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            raise AccessDenied(0, f"hsperfdata {name} is not a regular file")
        if owner is not None and st.st_uid != owner:
            raise AccessDenied(0, f"hsperfdata {name} owned by uid {st.st_uid}, not the JVM's {owner}")
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)
    try:
        chunks = []
        total = 0
        while total < MAX_FILE_BYTES:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)[:MAX_FILE_BYTES]
    finally:
        os.close(fd)


def find_hsperfdata(tmp_fd: int, nspid: int, owner: int | None) -> bytes | None:
    """The hsperfdata file of namespace pid `nspid` under an open /tmp directory fd, or None.

    The directory is named after the JVM's user *inside its container*, which we cannot resolve, so
    every hsperfdata_* directory is tried; only a regular file owned by the JVM's uid counts, and no
    symlink is followed (O_NOFOLLOW on every step).
    """
    try:
        names = sorted(n for n in os.listdir(tmp_fd) if n.startswith("hsperfdata_"))
    except OSError:
        return None
    for d in names:
        try:
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp_fd)
        except OSError:
            continue
        try:
            return _read_nofollow(dfd, str(nspid), owner)
        except (FileNotFoundError, AccessDenied):
            continue
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM):
                continue
            continue
        finally:
            os.close(dfd)
    return None


def read_hsperfdata(pid: int, proc_root: str = "/proc") -> PerfData | None:
    """hsperfdata of host pid `pid`, read through its own root (containers keep their own /tmp)."""
    from nativewatch.jvm.paths import open_target_tmp, target_ids

    ids = target_ids(pid, proc_root)
    try:
        tmp_fd = open_target_tmp(pid, proc_root)
    except OSError:
        return None
    try:
        raw = find_hsperfdata(tmp_fd, ids.nspid, ids.euid)
    finally:
        os.close(tmp_fd)
    return parse_hsperfdata(raw) if raw is not None else None


def heap_reservation_bytes(pd: PerfData) -> int:
    """The heap reservation from hsperfdata. G1 (and other region-based collectors) publish the whole
    heap as every generation's max; Serial/Parallel split it between generations. HotSpot adds a
    few bytes to these counters, so round down to pages."""
    maxes = [pd.int_value(f"sun.gc.generation.{g}.maxCapacity") for g in range(4)]
    maxes = [v for v in maxes if v and v > 0]
    if not maxes:
        return 0
    top = max(maxes)
    size = top if all(v >= 0.9 * top for v in maxes) else sum(maxes)
    return size // _PAGE * _PAGE


def jvm_memory_figures(pd: PerfData) -> dict[str, int]:
    """Capacities the JVM publishes: heap (sum of generation capacities), metaspace, class space."""
    out: dict[str, int] = {}
    heap = 0
    found = False
    for gen in range(4):
        v = pd.int_value(f"sun.gc.generation.{gen}.capacity")
        if v is not None:
            heap += max(0, v)
            found = True
    if found:
        out["heap_capacity_bytes"] = heap
    for key, name in (("sun.gc.metaspace.capacity", "metaspace_capacity_bytes"),
                      ("sun.gc.metaspace.used", "metaspace_used_bytes"),
                      ("sun.gc.compressedclassspace.capacity", "class_space_capacity_bytes"),
                      ("sun.gc.compressedclassspace.used", "class_space_used_bytes"),
                      ("java.threads.live", "threads_live")):
        v = pd.int_value(key)
        if v is not None:
            out[name] = max(0, v)
    return out
