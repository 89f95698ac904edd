"""OOM kills: every kill on the node from the oom:mark_victim tracepoint (bpf/oom_kill.c), or, when
eBPF is unavailable, from the memory cgroups' own kill counters (v1 memory.oom_control, v2
memory.events). The counters only say "a kill happened in this cgroup"; the agent names the victim
from the processes of that cgroup that vanished since the previous scan.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass

from nativewatch.sources.bpf import load_bpf, program_text
from nativewatch.sources.cgroup import CgroupMemory

__all__ = ["OomEvent", "BpfOomWatcher", "CgroupOomWatcher"]


@dataclass(frozen=True, slots=True)
class OomEvent:
    pid: int | None  # None: a cgroup counter rose and no vanished process was found
    comm: str
    source: str  # "bpf" | "cgroup"
    ts: float
    cgroup: str | None = None
    anon_rss_bytes: int | None = None
    file_rss_bytes: int | None = None
    shmem_rss_bytes: int | None = None


class BpfOomWatcher:
    def __init__(self, ringbuf_pages: int = 8) -> None:
        self.defines = {"RINGBUF_PAGES": ringbuf_pages}
        self.bpf = load_bpf("oom_kill.c", self.defines)
        self._pending: list[OomEvent] = []
        self.bpf["oom_events"].open_ring_buffer(self._on_event)

    def source(self) -> str:
        return program_text("oom_kill.c", self.defines)

    def _on_event(self, _ctx: object, data: int, _size: int) -> None:
        ev = self.bpf["oom_events"].event(data)
        self._pending.append(OomEvent(
            pid=int(ev.pid), comm=bytes(ev.comm).split(b"\0", 1)[0].decode("utf-8", "replace"),
            source="bpf", ts=time.time(), anon_rss_bytes=int(ev.anon_rss_kb) * 1024,
            file_rss_bytes=int(ev.file_rss_kb) * 1024, shmem_rss_bytes=int(ev.shmem_rss_kb) * 1024))

    def poll(self) -> list[OomEvent]:
        self.bpf.ring_buffer_poll(0)
        out, self._pending = self._pending, []
        return out

    def stats(self) -> dict[str, int]:
        t = self.bpf["oom_stats"]
        return {"ringbuf_full": int(t[ctypes.c_int(0)].value), "kills_seen": int(t[ctypes.c_int(1)].value)}

    def close(self) -> None:
        self.bpf.cleanup()


class CgroupOomWatcher:
    """Kill counters of the memory cgroups the agent has seen processes in."""

    def __init__(self, read: Callable[[str], CgroupMemory | None]) -> None:
        self.read = read
        self._last: dict[str, int] = {}

    def poll(self, cgroups: set[str]) -> dict[str, int]:
        """New kills per memory-cgroup path since the previous poll; a cgroup seen first counts 0."""
        out: dict[str, int] = {}
        for key in cgroups:
            st = self.read(key)
            if st is None or st.oom_kill is None:
                continue
            prev = self._last.get(key)
            self._last[key] = st.oom_kill
            if prev is not None and st.oom_kill > prev:
                out[key] = st.oom_kill - prev
        for key in [k for k in self._last if k not in cgroups]:
            del self._last[key]
        return out
