"""Go behind the runtime interface: detected from the executable, heap placed from the arena layout.

No refinement beyond the layout: the runtime's own figures (runtime/metrics) need its cooperation,
which nativewatch does not ask for.
"""

from __future__ import annotations

from nativewatch.go.binary import is_go_exe
from nativewatch.go.heap import GoArenas
from nativewatch.runtimes.base import ProcessInfo, Runtime

__all__ = ["GO", "GoRuntime"]


class GoRuntime(Runtime):
    name = "go"
    managed_heap = GoArenas()

    def detect(self, info: ProcessInfo) -> bool:
        return is_go_exe(info.pid, info.proc_root)


GO = GoRuntime()
