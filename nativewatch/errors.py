"""The small exception tree shared by every source.

`ProcessGone` is the only "normal" failure: a pid that exits mid-read is skipped quietly by scans and
reported in one line by single-pid commands. Everything else that a target can do to us is either a
`AccessDenied` (reported, not raised through a scan) or a parse problem (returned, not raised).
"""

from __future__ import annotations


class NativewatchError(Exception):
    """Base class: every error nativewatch raises on purpose."""


class ProcessGone(NativewatchError):
    def __init__(self, pid: int, what: str = "") -> None:
        super().__init__(f"process {pid} is gone" + (f" ({what})" if what else ""))
        self.pid = pid


class AccessDenied(NativewatchError):
    def __init__(self, pid: int, what: str = "") -> None:
        super().__init__(f"permission denied reading process {pid}" + (f": {what}" if what else ""))
        self.pid = pid


class SourceUnavailable(NativewatchError):
    """A source (BPF, NMT, cgroup controller, ...) cannot run here; the message says why and what to do."""
