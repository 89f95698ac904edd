"""pprof (profile.proto, gzipped) writer and reader for allocation-site profiles.

Hand-encoded: the subset of profile.proto written here is six small messages, and encoding them
directly keeps the protobuf runtime out of the agent's dependencies. Sample types follow Go's heap
profiles (alloc_objects, alloc_space, inuse_objects, inuse_space; default inuse_space) so
`go tool pprof` shows them under their usual names. Values are already scaled back from sampling.
The reader accepts what this writer produces and any well-formed heap profile with those sample
types; a malformed file raises ValueError (it is user input to a CLI, not a target's).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from nativewatch.malloc_profile.result import ProfileResult, Site, sort_sites

__all__ = ["encode_profile", "write_pprof", "read_pprof", "SAMPLE_TYPES"]

SAMPLE_TYPES = (("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"),
                ("inuse_space", "bytes"))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, v: int) -> bytes:
    return _key(field, 0) + _varint(v) if v else b""


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _packed(field: int, values: list[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values)) if values else b""


def _split_frame(frame: str) -> tuple[str, str]:
    """'func (obj)' -> ('func', 'obj'); anything else is all name."""
    if frame.endswith(")") and " (" in frame:
        name, _, obj = frame[:-1].rpartition(" (")
        return name, obj
    return frame, ""


def encode_profile(result: ProfileResult) -> bytes:
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        return strings.setdefault(text, len(strings))

    out = bytearray()
    for t, u in SAMPLE_TYPES:
        out += _bytes(1, _int(1, s(t)) + _int(2, s(u)))
    functions: dict[tuple[str, str], int] = {}
    locations: dict[str, int] = {}
    mappings: dict[str, int] = {}
    body_loc = bytearray()
    body_fn = bytearray()
    body_map = bytearray()
    for site in result.sites:
        loc_ids = []
        for frame in site.frames or ("[unknown]",):
            if frame not in locations:
                name, obj = _split_frame(frame)
                if obj not in mappings:
                    mid = len(mappings) + 1
                    mappings[obj] = mid
                    body_map += _bytes(3, _int(1, mid) + _int(5, s(obj)) + _int(7, 1) + _int(8, 1))
                fkey = (name, obj)
                if fkey not in functions:
                    fid = len(functions) + 1
                    functions[fkey] = fid
                    body_fn += _bytes(5, _int(1, fid) + _int(2, s(name)) + _int(3, s(name)) + _int(4, s(obj)))
                lid = len(locations) + 1
                locations[frame] = lid
                body_loc += _bytes(4, _int(1, lid) + _int(2, mappings[obj]) + _bytes(4, _int(1, functions[fkey])))
            loc_ids.append(locations[frame])
        values = [site.allocated_allocations, site.allocated_bytes, site.outstanding_allocations,
                  site.outstanding_bytes]
        out += _bytes(2, _packed(1, loc_ids) + _packed(2, values))
    out += body_map + body_loc + body_fn
    time_ns = int(result.start_time * 1e9)
    tail = bytearray()
    tail += _int(9, time_ns) + _int(10, int(result.duration_s * 1e9))
    tail += _bytes(11, _int(1, s("space")) + _int(2, s("bytes")))
    tail += _int(12, result.sampling_interval_bytes)
    comment = (f"nativewatch profile pid={result.pid} mode={result.mode} allocator={result.allocator} "
               f"lost={result.lost}")
    tail += _int(13, s(comment))
    tail += _int(14, s("inuse_space"))
    for text in strings:  # dict preserves insertion order == index order
        out += _bytes(6, text.encode("utf-8", "replace"))
    out += tail
    return bytes(out)


def write_pprof(result: ProfileResult, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    data = gzip.compress(encode_profile(result), mtime=0)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


# ---- reader ------------------------------------------------------------------------------------
def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
            yield field, wire, v
        elif wire == 2:
            ln, i = _read_varint(buf, i)
            if i + ln > len(buf):
                raise ValueError("truncated field")
            yield field, wire, buf[i:i + ln]
            i += ln
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _ints(wire: int, v: int | bytes) -> list[int]:
    if wire == 0:
        assert isinstance(v, int)
        return [v]
    assert isinstance(v, bytes)
    out, i = [], 0
    while i < len(v):
        n, i = _read_varint(v, i)
        out.append(n - (1 << 64) if n >= 1 << 63 else n)
    return out


def read_pprof(path: str | os.PathLike[str]) -> ProfileResult:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"bad gzip data: {exc}") from exc
    strings: list[str] = []
    sample_types: list[tuple[int, int]] = []
    samples: list[tuple[list[int], list[int]]] = []
    locations: dict[int, list[int]] = {}
    functions: dict[int, tuple[int, int]] = {}
    period = 0
    duration_ns = 0
    for field, _wire, v in _fields(raw):
        if field == 6 and isinstance(v, bytes):
            strings.append(v.decode("utf-8", "replace"))
        elif field == 1 and isinstance(v, bytes):
            d = {f: val for f, _, val in _fields(v)}
            sample_types.append((int(d.get(1, 0)), int(d.get(2, 0))))  # type: ignore[arg-type]
        elif field == 2 and isinstance(v, bytes):
            locs: list[int] = []
            vals: list[int] = []
            for f, w, val in _fields(v):
                if f == 1:
                    locs += _ints(w, val)
                elif f == 2:
                    vals += _ints(w, val)
            samples.append((locs, vals))
        elif field == 4 and isinstance(v, bytes):
            lid, fids = 0, []
            for f, _, val in _fields(v):
                if f == 1:
                    lid = int(val)  # type: ignore[arg-type]
                elif f == 4 and isinstance(val, bytes):
                    fids += [int(x) for g, _, x in _fields(val) if g == 1]  # type: ignore[arg-type]
            locations[lid] = fids
        elif field == 5 and isinstance(v, bytes):
            d = {f: val for f, _, val in _fields(v)}
            functions[int(d.get(1, 0))] = (int(d.get(2, 0)), int(d.get(4, 0)))  # type: ignore[arg-type]
        elif field == 12 and isinstance(v, int):
            period = v
        elif field == 10 and isinstance(v, int):
            duration_ns = v

    def st(i: int) -> str:
        return strings[i] if 0 <= i < len(strings) else ""

    names = [st(t) for t, _ in sample_types]
    missing = [t for t, _ in SAMPLE_TYPES if t not in names]
    if missing:
        raise ValueError(f"not an allocation profile: no sample type(s) {', '.join(missing)}")
    idx = {t: names.index(t) for t, _ in SAMPLE_TYPES}
    merged: dict[tuple[str, ...], list[int]] = {}
    for locs, vals in samples:
        if len(vals) != len(names):
            raise ValueError("sample with a wrong number of values")
        frames: list[str] = []
        for lid in locs:
            for fid in reversed(locations.get(lid, [])):  # inlined functions: last is the caller
                name_i, file_i = functions.get(fid, (0, 0))
                obj = st(file_i)
                frames.append(f"{st(name_i)} ({obj})" if obj else st(name_i))
        acc = merged.setdefault(tuple(frames), [0, 0, 0, 0])
        for k, t in enumerate(("alloc_objects", "alloc_space", "inuse_objects", "inuse_space")):
            acc[k] += vals[idx[t]]
    sites = [Site(frames=f, outstanding_bytes=a[3], outstanding_allocations=a[2], allocated_bytes=a[1],
                  allocated_allocations=a[0], oldest_age_s=None) for f, a in merged.items()]
    return ProfileResult(pid=0, duration_s=duration_ns / 1e9, mode="sampled" if period else "exact",
                         sampling_interval_bytes=period, sites=sort_sites(sites), lost={})
