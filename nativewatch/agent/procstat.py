"""The agent's cheapest per-process source: /proc/PID/stat (one small read per pid per scan).

It gives what a scan needs before deciding on expensive work: the name, RSS, thread count, whether it
is a kernel thread, and the start time that tells a reused pid from the process seen before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nativewatch.sources import procfs

__all__ = ["ProcStat", "parse_stat", "read_stat", "PF_KTHREAD"]

PF_KTHREAD = 0x00200000
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    threads: int
    starttime: int  # clock ticks after boot: (pid, starttime) names one process for its lifetime
    rss_bytes: int

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(data: bytes) -> ProcStat | None:
    """None when the text is not a stat line (never raises). comm may hold spaces and ')'."""
    text = data.decode("utf-8", "replace")
    open_p, close_p = text.find("("), text.rfind(")")
    if open_p < 1 or close_p < open_p:
        return None
    rest = text[close_p + 1:].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    if len(rest) < 22:
        return None
    try:
        return ProcStat(pid=int(text[:open_p]), comm=text[open_p + 1:close_p], state=rest[0],
                        ppid=int(rest[1]), flags=int(rest[6]), threads=int(rest[17]),
                        starttime=int(rest[19]), rss_bytes=max(0, int(rest[21])) * _PAGE)
    except ValueError:
        return None


def read_stat(pid: int, proc_root: str = "/proc") -> ProcStat | None:
    return parse_stat(procfs.read_file(pid, "stat", proc_root))
