"""Java method names for JIT frames: the JVM writes its own perf map when asked through attach.

HotSpot (JDK 17 and later) has the diagnostic command `Compiler.perfmap`, which writes
/tmp/perf-<pid>.map inside the JVM's own root: one line per code blob of the code cache (compiled
methods as `void com.example.Cache.put(java.lang.Object)`, the interpreter as `Interpreter`, stubs).
The symbolizer already reads that file; this asks for it. Code is compiled and moved as the capture
runs, so the map is asked for again whenever a site has a code-cache frame it does not name, at most
once per `min_interval_s`.

Only a process that `check_hotspot` verifies (libjvm.so mapped, SIGQUIT caught, attach not disabled)
is ever attached to, and only when the caller allows attaching (`--no-jvm` / the agent's JVM setting):
the first attach to a JVM makes it start its attach listener (one SIGQUIT). JDK 11 has no
Compiler.perfmap: its Java frames stay `[java: code cache]`, and `status` says why.
"""

from __future__ import annotations

import time

from nativewatch.errors import NativewatchError

__all__ = ["PerfMapWriter"]


class PerfMapWriter:
    def __init__(self, pid: int, proc_root: str = "/proc", *, allowed: bool, timeout_s: float = 5.0,
                 min_interval_s: float = 5.0) -> None:
        self.pid, self.proc_root, self.timeout_s, self.min_interval_s = pid, proc_root, timeout_s, min_interval_s
        self.allowed = allowed
        self.status: str | None = None  # None: not a JVM (nothing to say)
        self._last = float("-inf")
        self._usable: bool | None = None  # None: not decided yet

    def _decide(self) -> bool:
        from nativewatch.jvm.verify import check_hotspot

        try:
            check = check_hotspot(self.pid, self.proc_root)
        except (NativewatchError, OSError) as exc:
            self.status = f"not checked: {exc}"
            return False
        if check.libjvm is None:
            return False  # not a JVM: no status, Java frames do not apply
        if not self.allowed:
            self.status = "JIT frames unnamed: attaching to JVMs is not allowed here (--no-jvm)"
            return False
        if not check.ok:
            self.status = "JIT frames unnamed: not attached (" + "; ".join(check.reasons) + ")"
            return False
        return True

    def write(self, *, force: bool = False) -> bool:
        """Ask the JVM for a fresh perf map; True when it wrote one. Rate-limited unless `force`."""
        if self._usable is None:
            self._usable = self._decide()
        if not self._usable:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        from nativewatch.jvm.attach import AttachError, jcmd

        try:
            jcmd(self.pid, "Compiler.perfmap", proc_root=self.proc_root, timeout_s=self.timeout_s)
        except AttachError as exc:
            text = str(exc)
            if "Unknown diagnostic command" in text:
                self.status = "JIT frames unnamed: this JVM has no Compiler.perfmap (JDK 17+ has it)"
                self._usable = False
            else:
                self.status = f"JIT frames unnamed: Compiler.perfmap failed: {text[:200]}"
            return False
        except (NativewatchError, OSError) as exc:
            self.status = f"JIT frames unnamed: attach failed: {exc}"
            return False
        self.status = "Compiler.perfmap"
        return True
