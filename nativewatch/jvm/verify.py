"""Is this process a HotSpot JVM that will handle SIGQUIT as an attach request?

SIGQUIT's default action kills the process (with a core); a HotSpot JVM with attach disabled answers
it with a thread dump on its stdout. So nativewatch signals only a process where all of these hold:
- a HotSpot libjvm.so is mapped (and no OpenJ9 libj9vm, whose SIGQUIT writes a javacore);
- SIGQUIT is caught (SigCgt bit 3 in /proc/PID/status; -Xrs / -XX:+ReduceSignalUsage clear it);
- attach is not disabled: -XX:+DisableAttachMechanism in the command line, the JVM option
  environment variables, or hsperfdata's recorded JVM arguments (the last occurrence wins, as in
  HotSpot's own argument parsing).
`check_hotspot_facts` is the pure decision; `check_hotspot` gathers the facts.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nativewatch.errors import AccessDenied
from nativewatch.sources import procfs

__all__ = ["JvmCheck", "check_hotspot", "check_hotspot_facts", "attach_disabled_by_args", "sigquit_caught",
           "find_libjvm", "JVM_OPTION_ENV"]

JVM_OPTION_ENV = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")


@dataclass(frozen=True, slots=True)
class JvmCheck:
    pid: int
    libjvm: str | None
    sigquit_caught: bool
    attach_disabled: bool
    reasons: tuple[str, ...]  # why this process must not be signalled; empty means it may be

    @property
    def ok(self) -> bool:
        return not self.reasons


def sigquit_caught(sigcgt: int) -> bool:
    return bool(sigcgt >> (signal.SIGQUIT - 1) & 1)


def find_libjvm(mappings: Iterable[procfs.Mapping]) -> tuple[str | None, bool]:
    """(path of a mapped libjvm.so, whether an OpenJ9 VM library is mapped)."""
    libjvm = None
    j9 = False
    for m in mappings:
        base = m.path.rsplit("/", 1)[-1]
        if base == "libjvm.so" and libjvm is None:
            libjvm = m.path
        elif base.startswith("libj9vm"):
            j9 = True
    return libjvm, j9


def attach_disabled_by_args(args: Iterable[str]) -> bool:
    disabled = False
    for a in args:
        for tok in a.split():
            if tok == "-XX:+DisableAttachMechanism":
                disabled = True
            elif tok == "-XX:-DisableAttachMechanism":
                disabled = False
    return disabled


def check_hotspot_facts(pid: int, mappings: Sequence[procfs.Mapping], status: procfs.Status,
                        args: Sequence[str], env_options: Sequence[str] = (),
                        hsperf_args: Sequence[str] = ()) -> JvmCheck:
    reasons: list[str] = []
    libjvm, j9 = find_libjvm(mappings)
    if libjvm is None:
        reasons.append("no libjvm.so mapped: not a JVM")
    if j9:
        reasons.append("OpenJ9 VM (libj9vm) mapped: HotSpot attach does not apply")
    caught = sigquit_caught(status.sigcgt)
    if not caught:
        reasons.append("SIGQUIT not caught (-Xrs / ReduceSignalUsage, or not started yet): would kill it")
    if status.state in ("Z", "X"):
        reasons.append("process is a zombie")
    # Environment options come first, the command line overrides them; hsperfdata has the final list.
    disabled = attach_disabled_by_args([*env_options, *args])
    if hsperf_args:
        disabled = attach_disabled_by_args(hsperf_args) or disabled
    if disabled:
        reasons.append("attach disabled (-XX:+DisableAttachMechanism)")
    return JvmCheck(pid, libjvm, caught, disabled, tuple(reasons))


def _env_options(pid: int, proc_root: str) -> list[str]:
    try:
        raw = procfs.read_file(pid, "environ", proc_root)
    except (AccessDenied, OSError):
        return []
    out = []
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k.decode("ascii", "replace") in JVM_OPTION_ENV:
            out.append(v.decode("utf-8", "replace"))
    return out


def check_hotspot(pid: int, proc_root: str = "/proc", *, mappings: Sequence[procfs.Mapping] | None = None,
                  status: procfs.Status | None = None, hsperf_args: Sequence[str] | None = None) -> JvmCheck:
    """Gather the facts and decide. Raises ProcessGone if the pid vanished."""
    st = status or procfs.read_status(pid, proc_root)
    ms = mappings if mappings is not None else procfs.read_maps(pid, proc_root).mappings
    args = procfs.read_cmdline(pid, proc_root)
    if hsperf_args is None:
        from nativewatch.jvm.hsperf import read_hsperfdata

        hsperf_args = []
        try:
            pd = read_hsperfdata(pid, proc_root)
        except (AccessDenied, OSError):
            pd = None
        if pd is not None:
            for key in ("java.rt.vmArgs", "sun.rt.jvmFlags"):
                v = pd.str_value(key)
                if v:
                    hsperf_args.append(v)
    return check_hotspot_facts(pid, ms, st, args, _env_options(pid, proc_root), hsperf_args)
