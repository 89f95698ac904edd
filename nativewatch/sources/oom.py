"""OOM kills: every kill on the node from the oom:mark_victim tracepoint (bpf/oom_kill.c), or, when
eBPF is unavailable, from the memory cgroups' own kill counters (v1 memory.oom_control, v2
memory.events). The counters only say "a kill happened in this cgroup"; the agent names the victim
from the processes of that cgroup that vanished since the previous scan.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from nativewatch.sources.bpf import ProgramSpec, load_one, program_text
from nativewatch.sources.bpfsys import RingBuffer
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


# struct oom_event_t {u32 pid, uid; u64 total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb, ts_ns;
# char comm[16]} (bpf/oom_kill.c)
_EVENT = struct.Struct("IIQQQQQ16s")


class BpfOomWatcher:
    """The oom:mark_victim program, attached by a short-lived loader; its ring buffer is read here by
    descriptor (no bcc in this process)."""

    def __init__(self, ringbuf_pages: int = 8) -> None:
        self.defines = {"RINGBUF_PAGES": ringbuf_pages}
        self.prog = load_one(ProgramSpec("oom_kill.c", self.defines, ("oom_events", "oom_stats")))
        self._pending: list[OomEvent] = []
        try:
            self.ring = RingBuffer(self.prog.map_fd("oom_events"), self._on_record)
        except (OSError, ValueError):
            self.prog.close()
            raise

    def source(self) -> str:
        return program_text("oom_kill.c", self.defines)

    def _on_record(self, data: bytes) -> None:
        if len(data) < _EVENT.size:
            return
        pid, _uid, _vm, anon, file_, shmem, _ts, comm = _EVENT.unpack_from(data)
        self._pending.append(OomEvent(
            pid=int(pid), comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"), source="bpf", ts=time.time(),
            anon_rss_bytes=int(anon) * 1024, file_rss_bytes=int(file_) * 1024, shmem_rss_bytes=int(shmem) * 1024))

    def poll(self) -> list[OomEvent]:
        self.ring.poll()
        out, self._pending = self._pending, []
        return out

    def stats(self) -> dict[str, int]:
        full, seen = self.prog.map("oom_stats").u64s(2)
        return {"ringbuf_full": full, "kills_seen": seen}

    def close(self) -> None:
        self.ring.close()
        self.prog.close()


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
