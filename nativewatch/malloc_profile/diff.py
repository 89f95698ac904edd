"""Compare two allocation-site profiles (JSON contract or pprof): what grew, per stack."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativewatch.malloc_profile.pprof import read_pprof
from nativewatch.malloc_profile.result import ProfileResult, Site, sort_sites

__all__ = ["load_profile", "SiteDelta", "diff_profiles", "delta_result"]


def load_profile(path: str | Path) -> ProfileResult:
    """Read a profile written by `nativewatch profile` (--json output, or the -o pprof file)."""
    data = Path(path).read_bytes()
    head = data.lstrip()[:1]
    if head == b"{":
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("sites"), list):
            raise ValueError(f"{path}: not a profile (no 'sites' list)")
        return ProfileResult.from_json(doc)
    try:
        return read_pprof(path)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: neither profile JSON nor a pprof file: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SiteDelta:
    frames: tuple[str, ...]
    outstanding_bytes_a: int
    outstanding_bytes_b: int
    outstanding_allocations_a: int
    outstanding_allocations_b: int
    allocated_bytes_a: int
    allocated_bytes_b: int

    @property
    def delta_outstanding_bytes(self) -> int:
        return self.outstanding_bytes_b - self.outstanding_bytes_a

    def to_json(self) -> dict[str, Any]:
        return {"frames": list(self.frames), "outstanding_bytes_a": self.outstanding_bytes_a,
                "outstanding_bytes_b": self.outstanding_bytes_b,
                "delta_outstanding_bytes": self.delta_outstanding_bytes,
                "outstanding_allocations_a": self.outstanding_allocations_a,
                "outstanding_allocations_b": self.outstanding_allocations_b,
                "delta_outstanding_allocations": self.outstanding_allocations_b - self.outstanding_allocations_a,
                "allocated_bytes_a": self.allocated_bytes_a, "allocated_bytes_b": self.allocated_bytes_b,
                "delta_allocated_bytes": self.allocated_bytes_b - self.allocated_bytes_a}


def diff_profiles(a: ProfileResult, b: ProfileResult) -> list[SiteDelta]:
    """Per-stack deltas B - A, largest growth of outstanding bytes first."""
    zero = Site((), 0, 0, 0, 0, None)
    sa = {s.frames: s for s in a.sites}
    sb = {s.frames: s for s in b.sites}
    out = []
    for frames in sa.keys() | sb.keys():
        x, y = sa.get(frames, zero), sb.get(frames, zero)
        out.append(SiteDelta(frames, x.outstanding_bytes, y.outstanding_bytes, x.outstanding_allocations,
                             y.outstanding_allocations, x.allocated_bytes, y.allocated_bytes))
    out.sort(key=lambda d: (-d.delta_outstanding_bytes, d.frames))
    return out


def delta_result(a: ProfileResult, b: ProfileResult, deltas: list[SiteDelta]) -> ProfileResult:
    """B - A as a profile (values may be negative), e.g. to write as pprof."""
    sites = [Site(d.frames, d.delta_outstanding_bytes, d.outstanding_allocations_b - d.outstanding_allocations_a,
                  d.allocated_bytes_b - d.allocated_bytes_a, 0, None) for d in deltas]
    return ProfileResult(pid=b.pid, duration_s=b.duration_s, mode=b.mode,
                         sampling_interval_bytes=b.sampling_interval_bytes, sites=sort_sites(sites), lost={},
                         start_time=b.start_time)
