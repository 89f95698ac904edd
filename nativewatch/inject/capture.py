"""A profile capture through the in-process sampler: what run_profile does differently with
`via: inject`, in one place (choose, start, every tick, every poll, stop).

Choosing (`auto`): inject when it is allowed, the mode is sampled (exact mode reports every call, so
a trap per call either way; the uprobe rungs are exact by construction) and the process passes the
refusals in injector.preflight; otherwise the best uprobe rung, with the reason in `problems`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from nativewatch.errors import ProcessGone, SourceUnavailable
from nativewatch.inject import injector, ptrace
from nativewatch.inject.sampler import TargetSampler, sampler_file
from nativewatch.malloc_profile import probes
from nativewatch.malloc_profile.attach import supported_rungs
from nativewatch.malloc_profile.governor import HitCosts
from nativewatch.malloc_profile.resolve import ProbePlan

__all__ = ["InjectCapture", "inject_rung", "injection_allowed", "HOOK_NS", "REPORT_NS", "ENV_NO_INJECT"]

# Target CPU per hooked allocation call (its free included) and per report trap, measured by
# benchmarks/bench_inject.py on this project's reference machine; the governor multiplies them by
# the sampler's own call counters and the probes' hit counters.
HOOK_NS = 8.0
REPORT_NS = 1500.0
# How often the maps are looked at for objects loaded since (their GOT is patched then): allocations
# a new library makes before that are not sampled.
RESCAN_S = 0.25
# Set (to anything but "" or "0") to forbid injection on this host, whatever a command asks.
ENV_NO_INJECT = "NATIVEWATCH_NO_INJECT"


def injection_allowed() -> tuple[bool, str]:
    v = os.environ.get(ENV_NO_INJECT, "")
    if v not in ("", "0"):
        return False, f"injection is turned off on this host ({ENV_NO_INJECT}={v})"
    try:
        sampler_file()
    except SourceUnavailable as exc:
        return False, str(exc)
    return True, ""


def inject_rung() -> str:
    """Which probe kind serves the report functions: uprobe_multi links when the kernel has them."""
    ok = {s.rung for s in supported_rungs() if s.ok}
    if ok & {"session", "multi"}:
        return "inject"
    if "perf" in ok:
        return "inject-perf"
    raise SourceUnavailable("no way to attach uprobes on this kernel: "
                            + "; ".join(f"{s.rung}: {s.reason}" for s in supported_rungs()))


@dataclass
class InjectCapture:
    pid: int
    plan: ProbePlan
    loaded: probes.Loaded
    interval: int
    proc_root: str = "/proc"
    inj: injector.Injection | None = None
    problems: list[str] = field(default_factory=list)
    _calls0: int = 0
    _scanned: float = 0.0

    def costs(self) -> HitCosts:
        return HitCosts(REPORT_NS, REPORT_NS / 2, 0.0,
                        "in-process sampler: per-call and per-report costs from benchmarks/bench_inject.py",
                        hook_ns=HOOK_NS)

    def start(self) -> None:
        """Put the sampler in (or reuse it), probe its report functions, patch, enable. SIGINT and
        SIGTERM wait until the target is consistent again."""
        def attach(ts: TargetSampler) -> None:
            sf = ts.sf
            first = ts.bias + sf.segments[0][0] - sf.segments[0][1]  # the mapping of file offset 0
            path = self._map_file(first)
            probes.attach_reports(self.loaded, self.pid, path, sf.file_offset(sf.symbols["nw_report_alloc"]),
                                  sf.file_offset(sf.symbols["nw_report_free"]))

        with _signals_held():
            self.inj = injector.inject(self.pid, self.plan, interval=self.interval, proc_root=self.proc_root,
                                       before_patching=attach)
        with contextlib.suppress(OSError):
            self._calls0 = self.inj.sampler.calls()

    def _map_file(self, start: int) -> str:
        with open(f"{self.proc_root}/{self.pid}/maps") as f:
            for line in f:
                lo, _, rest = line.partition("-")
                if int(lo, 16) == start:
                    hi = rest.split()[0]
                    return f"{self.proc_root}/{self.pid}/map_files/{lo}-{hi}"
        raise ProcessGone(self.pid, "the sampler's mapping is gone")

    @property
    def exec_range(self) -> tuple[int, int] | None:
        return self.inj.exec_range if self.inj else None

    def hits(self) -> dict[str, int]:
        h = probes.read_hits(self.loaded)
        if self.inj is not None and not self.inj.removed:
            injector.acknowledge(self.inj)  # every tick: the sampler's dead-man limit never trips while alive
            ptrace.service_stragglers()
            with contextlib.suppress(OSError):
                h["hooked"] = max(0, self.inj.sampler.calls() - self._calls0)
            now = time.monotonic()
            if now - self._scanned >= RESCAN_S:
                self._scanned = now
                self._patch_new()
        return h

    def _patch_new(self) -> None:
        """Patch libraries loaded since the last look (dlopen), a few times a second."""
        if self.inj is None:
            return
        try:
            with _signals_held():
                injector.patch_new_objects(self.inj, self.plan, self.proc_root)
        except Exception as exc:  # noqa: BLE001 - a ptrace error mid-capture must not lose the profile
            self._problem(f"libraries loaded during the capture were not patched: {exc}")

    def _problem(self, text: str) -> None:
        if text not in self.problems and len(self.problems) < 8:
            self.problems.append(text)

    def stop(self) -> None:
        if self.inj is None or self.inj.removed:
            return
        with contextlib.suppress(OSError):
            if not self.inj.sampler.read("enabled"):
                self._problem("the sampler switched itself off before the end (no acknowledgement from "
                              "nativewatch for a million sampled calls): the profile misses what came after")
        with _signals_held():
            injector.remove(self.inj, self.proc_root)
        ptrace.service_stragglers()

    def report(self) -> dict[str, object]:
        if self.inj is None:
            return {}
        out = self.inj.report()
        with contextlib.suppress(OSError):
            full = self.inj.sampler.read("set_full")
            if full:
                out["set_full"] = full
        return out

    def all_problems(self) -> list[str]:
        out = list(self.problems)
        if self.inj is not None:
            out += self.inj.problems
            full = self.report().get("set_full")
            if full:
                out.append(f"{full} sampled allocations were dropped: the sampler's address set was full "
                           "(a larger --interval samples fewer)")
        return out


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C in the middle of a remote call or a patch would leave the target half changed."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (OSError, ValueError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
