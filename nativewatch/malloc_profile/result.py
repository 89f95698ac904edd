"""The outcome of one profile: allocation sites with scaled-back figures (DESIGN profile contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Site", "ProfileResult", "LOST_KEYS", "sort_sites"]

LOST_KEYS = ("events", "map_full", "unmatched_frees")


@dataclass(frozen=True, slots=True)
class Site:
    frames: tuple[str, ...]          # leaf-most caller first, allocator frames trimmed
    outstanding_bytes: int
    outstanding_allocations: int
    allocated_bytes: int
    allocated_allocations: int
    oldest_age_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {"frames": list(self.frames), "outstanding_bytes": self.outstanding_bytes,
                "outstanding_allocations": self.outstanding_allocations,
                "allocated_bytes": self.allocated_bytes,
                "allocated_allocations": self.allocated_allocations,
                "oldest_age_s": self.oldest_age_s}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Site:
        return cls(frames=tuple(str(f) for f in d.get("frames", [])),
                   outstanding_bytes=int(d.get("outstanding_bytes", 0)),
                   outstanding_allocations=int(d.get("outstanding_allocations", 0)),
                   allocated_bytes=int(d.get("allocated_bytes", 0)),
                   allocated_allocations=int(d.get("allocated_allocations", 0)),
                   oldest_age_s=(None if d.get("oldest_age_s") is None else float(d["oldest_age_s"])))


def sort_sites(sites: list[Site]) -> tuple[Site, ...]:
    return tuple(sorted(sites, key=lambda s: (-s.outstanding_bytes, -s.allocated_bytes, s.frames)))


@dataclass(frozen=True, slots=True)
class ProfileResult:
    pid: int
    duration_s: float
    mode: str                       # "sampled" | "exact"
    sampling_interval_bytes: int    # 0 in exact mode
    sites: tuple[Site, ...]
    lost: dict[str, int]            # events, map_full, unmatched_frees (+ extra detail keys)
    allocator: str = ""             # object that provided malloc, as the target sees its path
    allocator_kind: str = ""
    target_exited: bool = False
    sampled_allocations: int = 0
    start_time: float = 0.0         # wall clock (epoch seconds) when the probes were attached
    problems: tuple[str, ...] = field(default_factory=tuple)
    via: str = ""                   # how it attached: inject | session | multi | perf
    overhead: dict[str, Any] | None = None  # governor.OverheadReport.to_json()
    java_frames: str | None = None  # JVMs: how JIT frames were named ("Compiler.perfmap"), or why not
    stacks: dict[str, Any] | None = None  # how stacks were taken: frame pointers, or copy + CFI and its figures
    inject: dict[str, Any] | None = None  # via inject: how the sampler got in, slots patched, stop times

    @property
    def stopped_early(self) -> str | None:
        return (self.overhead or {}).get("stopped")

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "duration_s": round(self.duration_s, 3),
            "mode": self.mode,
            "sampling_interval_bytes": self.sampling_interval_bytes,
            "via": self.via,
            "sites": [s.to_json() for s in self.sites],
            "lost": dict(self.lost),
            "overhead": self.overhead,
            "allocator": self.allocator,
            "allocator_kind": self.allocator_kind,
            "target_exited": self.target_exited,
            "sampled_allocations": self.sampled_allocations,
            "start_time": self.start_time,
            "problems": list(self.problems),
            "java_frames": self.java_frames,
            "stacks": self.stacks,
            "inject": self.inject,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProfileResult:
        return cls(pid=int(d.get("pid", 0)), duration_s=float(d.get("duration_s", 0.0)),
                   mode=str(d.get("mode", "")), sampling_interval_bytes=int(d.get("sampling_interval_bytes", 0)),
                   sites=sort_sites([Site.from_json(s) for s in d.get("sites", [])]),
                   lost={str(k): int(v) for k, v in dict(d.get("lost", {})).items()},
                   allocator=str(d.get("allocator", "")), allocator_kind=str(d.get("allocator_kind", "")),
                   target_exited=bool(d.get("target_exited", False)),
                   sampled_allocations=int(d.get("sampled_allocations", 0)),
                   start_time=float(d.get("start_time", 0.0)),
                   problems=tuple(str(p) for p in d.get("problems", [])), via=str(d.get("via", "")),
                   overhead=dict(d["overhead"]) if isinstance(d.get("overhead"), dict) else None,
                   java_frames=str(d["java_frames"]) if isinstance(d.get("java_frames"), str) else None,
                   stacks=dict(d["stacks"]) if isinstance(d.get("stacks"), dict) else None,
                   inject=dict(d["inject"]) if isinstance(d.get("inject"), dict) else None)

    @property
    def total_outstanding_bytes(self) -> int:
        return sum(s.outstanding_bytes for s in self.sites)
