"""Typed facts shared by attribution and presenters: the categories and the `Breakdown` of one process.

The JSON shape produced by `Breakdown.to_json` is the snapshot contract of DESIGN.md: keep key meanings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATEGORIES: tuple[str, ...] = (
    "heap", "metaspace", "thread", "direct", "code", "gc", "runtime", "native", "file", "shmem",
)


def empty_categories() -> dict[str, int]:
    return dict.fromkeys(CATEGORIES, 0)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    runtime: str  # containerd | cri-o | docker | unknown
    pod_uid: str | None
    cgroup: str
    qos: str | None = None  # guaranteed | burstable | besteffort (kubelet QoS class)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "runtime": self.runtime, "pod_uid": self.pod_uid,
                "cgroup": self.cgroup, "qos": self.qos}


@dataclass(frozen=True, slots=True)
class MemoryDetail:
    """Per-process figures beside the categories (all bytes, from smaps)."""

    pss_bytes: int = 0
    swap_bytes: int = 0
    anon_bytes: int = 0
    file_backed_bytes: int = 0
    shmem_bytes: int = 0
    malloc_arenas: int = 0
    malloc_arena_rss_bytes: int = 0
    allocator: str = "unknown"  # glibc | jemalloc | tcmalloc | go | static | unknown

    def to_json(self) -> dict[str, Any]:
        return {"pss_bytes": self.pss_bytes, "swap_bytes": self.swap_bytes, "anon_bytes": self.anon_bytes,
                "file_backed_bytes": self.file_backed_bytes, "shmem_bytes": self.shmem_bytes,
                "malloc_arenas": self.malloc_arenas, "malloc_arena_rss_bytes": self.malloc_arena_rss_bytes,
                "allocator": self.allocator}


@dataclass(slots=True)
class Breakdown:
    """Every resident byte of one process in exactly one category: sum(categories) == rss_bytes."""

    pid: int
    comm: str
    runtime: str
    rss_bytes: int
    categories: dict[str, int]
    threads: int
    sources: list[str]
    container: ContainerInfo | None = None
    detail: MemoryDetail = field(default_factory=MemoryDetail)
    cmdline: list[str] = field(default_factory=list)
    nspid: tuple[int, ...] = ()
    timestamp: float = 0.0
    problems: list[str] = field(default_factory=list)
    # Raw figures of the detected runtime, under keys the runtime names (the JVM's "nmt"); each key is
    # a top-level key of the JSON. The model never looks inside.
    runtime_details: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def check_sum(self) -> None:
        total = sum(self.categories.values())
        if total != self.rss_bytes:
            raise AssertionError(f"pid {self.pid}: categories sum {total} != rss {self.rss_bytes}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pid": self.pid,
            "comm": self.comm,
            "runtime": self.runtime,
            "rss_bytes": self.rss_bytes,
            "categories": {c: int(self.categories.get(c, 0)) for c in CATEGORIES},
            "threads": self.threads,
            "sources": list(self.sources),
            "container": self.container.to_json() if self.container else None,
            "timestamp": self.timestamp,
            "cmdline": list(self.cmdline),
            "nspid": list(self.nspid),
            "memory": self.detail.to_json(),
            "problems": list(self.problems),
        }
        for key, value in self.runtime_details.items():
            # A runtime may add keys, never change one the contract defines.
            out.setdefault(key, value)
        out.update(self.extra)
        return out
