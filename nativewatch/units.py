"""Human units in and out: bytes as KiB/MiB/GiB, durations as s/m/h."""

from __future__ import annotations

import re

__all__ = ["human_bytes", "human_rate", "parse_bytes", "parse_duration"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
         "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
         "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}
_TIME = {"": 1, "s": 1, "sec": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600, "d": 86400}


def human_bytes(n: float, signed: bool = False) -> str:
    sign = "-" if n < 0 else ("+" if signed and n > 0 else "")
    v = abs(float(n))
    for unit in _UNITS:
        if v < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{sign}{int(v)} B"
            return f"{sign}{v:.1f} {unit}"
        v /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    """Growth reads best per hour for slow leaks and per second for fast ones."""
    if abs(bytes_per_second) >= 1024 * 1024 / 60:
        return human_bytes(bytes_per_second, signed=True) + "/s"
    return human_bytes(bytes_per_second * 3600, signed=True) + "/h"


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"not a size: {text!r} (use e.g. 512KiB, 2MiB, 1GB)")
    return int(float(m.group(1)) * _SIZE[m.group(2).lower()])


def parse_duration(text: str) -> float:
    total = 0.0
    pos = 0
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    for m in re.finditer(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", s):
        if m.start() != pos or m.group(2) not in _TIME:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h30m)")
        total += float(m.group(1)) * _TIME[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h30m)")
    return total
