"""run_profile: resolve -> choose a rung -> load -> calibrate -> attach -> poll (govern the cost every
tick; symbolize new sites and publish top sites every poll) -> detach.

Sites are symbolized while the target is alive (on every poll, only keys not seen before), and the
symbolizer keeps the mapped files open, so a target that exits mid-profile still gets named frames.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nativewatch.errors import ProcessGone, SourceUnavailable
from nativewatch.malloc_profile import probes
from nativewatch.malloc_profile.attach import RUNGS, choose_rung
from nativewatch.malloc_profile.calibrate import measure_costs
from nativewatch.malloc_profile.copied import CopiedSites
from nativewatch.malloc_profile.governor import DEFAULT_MAX_OVERHEAD, Governor
from nativewatch.malloc_profile.javaperfmap import PerfMapWriter
from nativewatch.malloc_profile.resolve import ProbePlan, resolve
from nativewatch.malloc_profile.result import ProfileResult, Site, sort_sites
from nativewatch.malloc_profile.state import remove_state, write_state
from nativewatch.malloc_profile.symbolize import JAVA_UNNAMED, Symbolizer
from nativewatch.sources.procfs import read_status

if TYPE_CHECKING:
    from nativewatch.inject.capture import InjectCapture

__all__ = ["run_profile", "DEFAULT_INTERVAL"]

DEFAULT_INTERVAL = 524288
# perf record --call-graph dwarf's default too; see the README's cost table for the measurement
DEFAULT_STACK_COPY = 8192
GOVERNOR_TICK_S = 0.1
_SiteKey = tuple[int, int, int]


def _alive(pid: int, proc_root: str) -> bool:
    try:
        return read_status(pid, proc_root).state not in ("Z", "X")
    except ProcessGone:
        return False


def _thread_group(pid: int, proc_root: str) -> int:
    """A thread id names its process: probes filter on the thread group id."""
    tgid = read_status(pid, proc_root).fields.get("Tgid", "")
    return int(tgid) if tgid.isdigit() and int(tgid) > 0 else pid


class _Collector:
    def __init__(self, loaded: probes.Loaded, sym: Symbolizer, *, remember_walks: bool = True) -> None:
        self.loaded = loaded
        self.sym = sym
        self.frames: dict[_SiteKey, tuple[str, ...]] = {}
        self.copies: CopiedSites | None = None
        if loaded.stack_copy:
            self.copies = CopiedSites(
                sym.code_at, sym.refresh, lambda: sym.generation,
                remember=(lambda ip, sp, slot, bp, reads, group: probes.remember_walk(loaded, ip, sp, slot, bp,
                                                                                     reads, group))
                if remember_walks else None,
                forget=lambda: probes.forget_walks(loaded))
            probes.open_events(loaded, self.copies.on_event)

    def start(self) -> None:
        """The real capture begins: whatever the calibration run left in the ring buffer is dropped."""
        if self.copies is not None:
            probes.drain_events(self.loaded)
            self.copies.accepting = True

    def drain(self) -> None:
        if self.copies is not None:
            probes.drain_events(self.loaded)

    def wait(self, seconds: float, stop: threading.Event | None) -> bool:
        """Sleep for `seconds`, unwinding stack copies as they arrive (so bursts do not fill the ring
        buffer). True when `stop` was set."""
        if self.copies is None:
            if stop is not None:
                return stop.wait(seconds)
            time.sleep(seconds)
            return False
        end = time.monotonic() + seconds
        while True:
            if stop is not None and stop.is_set():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            probes.poll_events(self.loaded, min(left, 0.05))

    def read(self, *, with_oldest: bool) -> tuple[list[probes.RawSite], dict[_SiteKey, int] | None]:
        """Every site now: the kernel's (frame-pointer stacks) and the unwound copied ones."""
        self.drain()
        raw = probes.read_sites(self.loaded)
        if self.copies is None:
            return raw, probes.read_oldest(self.loaded) if with_oldest else None
        oldest, live = probes.read_live(self.loaded)
        copied, copied_oldest = self.copies.raw_sites(live)
        oldest.update(copied_oldest)
        return raw + copied, oldest if with_oldest else None

    def symbolize_new(self, raw: list[probes.RawSite]) -> None:
        for r in raw:
            key = (r.stackid, r.kind, r.caller)
            if key not in self.frames:
                self._symbolize(key)

    def _symbolize(self, key: _SiteKey) -> None:
        if key[0] in (probes.STACK_COPIED, probes.STACK_WALKED) and self.copies is not None:
            pcs, stop, methods = self.copies.stack(key[2])
            self.frames[key] = tuple(self.sym.stack_frames(pcs, stop, methods)) or (f"[stack ends: {stop}]",)
            return
        stack = probes.read_stack(self.loaded, key[0])
        self.frames[key] = tuple(self.sym.site_frames(key[2], stack)) or (f"0x{key[2]:x} (?)",)

    def unnamed_java(self) -> list[_SiteKey]:
        """Sites with a code-cache frame the JVM's perf map did not name (yet)."""
        return [k for k, f in self.frames.items() if any(x.startswith(JAVA_UNNAMED) for x in f)]

    def resymbolize(self, keys: list[_SiteKey]) -> None:
        for k in keys:
            self._symbolize(k)

    def name_java_frames(self, writer: PerfMapWriter, *, force: bool = False) -> bool:
        """Ask the JVM for a fresh perf map when a site has an unnamed Java frame, and name them again.
        True when sites were named anew."""
        keys = self.unnamed_java()
        if not keys or not writer.write(force=force):
            return False
        self.sym.perf_map_rewritten()
        self.resymbolize(keys)
        return True

    def sites(self, raw: list[probes.RawSite], oldest: dict[_SiteKey, int] | None,
              now_ns: int) -> tuple[Site, ...]:
        self.symbolize_new(raw)
        merged: dict[tuple[str, ...], list[int]] = {}
        for r in raw:
            key = (r.stackid, r.kind, r.caller)
            acc = merged.setdefault(self.frames[key], [0, 0, 0, 0, 0])
            acc[0] += r.out_bytes
            acc[1] += r.out_count
            acc[2] += r.alloc_bytes
            acc[3] += r.alloc_count
            ts = (oldest or {}).get(key)
            if ts is not None and (acc[4] == 0 or ts < acc[4]):
                acc[4] = ts
        return sort_sites([
            Site(frames=f, outstanding_bytes=a[0], outstanding_allocations=a[1], allocated_bytes=a[2],
                 allocated_allocations=a[3],
                 oldest_age_s=(round(max(0, now_ns - a[4]) / 1e9, 3) if a[4] and a[0] > 0 else None))
            for f, a in merged.items()])


def run_profile(pid: int, duration_s: float, *, mode: str = "sampled", interval_bytes: int = DEFAULT_INTERVAL,
                stop: threading.Event | None = None, proc_root: str = "/proc",
                on_attached: Callable[[], None] | None = None, poll_s: float = 1.0,
                state_directory: Path | None = None, max_allocs: int | None = None,
                top_n_state: int = 10, via: str | None = None,
                max_overhead: float | None = DEFAULT_MAX_OVERHEAD, jvm_attach: bool = False,
                stack_copy: int = DEFAULT_STACK_COPY, remember_walks: bool = True,
                allow_inject: bool = True) -> ProfileResult:
    """Profile pid's outstanding native allocations for duration_s seconds (or until `stop` is set, the
    target exits, or the capture would cost the target more than `max_overhead` of a core; None: no
    limit). `via` forces an attach rung. `stack_copy` bytes of user stack are copied per sampled
    allocation and unwound with CFI (0: the kernel's frame-pointer walk only); `remember_walks` False
    makes every sampled call copy its stack even when it repeats a walk (to measure what a copy
    costs). `jvm_attach` allows asking a verified HotSpot JVM for its perf map (javaperfmap) so JIT
    frames are named, and reading its interpreted frames' methods (jvm.vmstructs). Raises ProcessGone if pid is gone before attaching,
    SourceUnavailable if eBPF cannot be used."""
    if duration_s <= 0:
        raise ValueError("duration must be positive")
    # the inject package builds on this one (resolve, probes): imported when a profile runs
    from nativewatch.inject.capture import InjectCapture
    from nativewatch.inject.injector import go_without_cgo

    if via not in (None, "auto", "inject", *RUNGS):
        raise ValueError(f"unknown attach method {via!r} (one of auto, inject, {', '.join(RUNGS)})")
    pid = _thread_group(pid, proc_root)
    try:
        plan = resolve(pid, proc_root)
    except SourceUnavailable as exc:
        go = go_without_cgo(pid, proc_root)
        if go:
            raise SourceUnavailable(f"{go} ({exc})") from None
        raise
    rung, not_injected = _choose(pid, plan, via, mode, allow_inject, proc_root)
    sym = Symbolizer(pid, proc_root, allocator_ranges=plan.allocator_ranges,
                     allocator_symbols=plan.allocator_symbols)
    java = PerfMapWriter(pid, proc_root, allowed=jvm_attach)
    exited = False
    state_problem: list[str] = []
    capture: InjectCapture | None = None
    loaded: probes.Loaded | None = None
    try:
        while True:
            defines = probes.build_defines(mode=mode, interval_bytes=interval_bytes, max_allocs=max_allocs,
                                           nest_range=plan.nest_range, rung=rung,
                                           stack_copy=stack_copy if supports_stack_copy(rung) else 0)
            loaded = probes.load(defines, mode=mode, interval_bytes=interval_bytes, rung=rung)
            col = _Collector(loaded, sym, remember_walks=remember_walks)
            injecting = rung.startswith("inject")
            if injecting:
                capture = InjectCapture(pid, plan, loaded, interval_bytes if mode == "sampled" else 0, proc_root)
                governor = Governor(max_overhead, capture.costs())
            else:
                governor = Governor(max_overhead, measure_costs(loaded, plan, proc_root))
            if col.copies is not None:
                sym.prepare_unwinding()
                if sym.is_jvm and jvm_attach and sym.java_methods is None:
                    _name_interpreted_frames(sym, java, pid, proc_root)
            try:
                col.start()
                if capture is not None:
                    capture.start()
                    if capture.exec_range is not None:
                        sym.allocator_ranges = (*sym.allocator_ranges, capture.exec_range)
                        sym.hidden_ranges = (capture.exec_range,)
                    sym.refresh()
                    if col.copies is not None:
                        sym.prepare_unwinding()
                else:
                    probes.attach(loaded, plan)
                break
            except SourceUnavailable as exc:
                if capture is None or via == "inject" or not _alive(pid, proc_root):
                    if not _alive(pid, proc_root):
                        raise ProcessGone(pid, "exited before the probes were attached") from None
                    raise
                # auto: the uprobe rungs, in a fresh program (the loaded one only has report probes)
                not_injected = f"not injected: {exc}"
                capture.stop()  # whatever it got to: nothing stays patched
                capture = None
                probes.close(loaded)
                loaded = None
                rung = choose_rung(None)

        def hits() -> dict[str, int]:
            return capture.hits() if capture is not None else probes.read_hits(loaded)

        t0 = time.monotonic()
        wall0 = time.time()
        governor.observe(t0, hits())
        if on_attached is not None:
            on_attached()
        deadline = t0 + duration_s
        next_poll = t0 + poll_s
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                break
            wait = min(GOVERNOR_TICK_S, left, max(0.0, next_poll - now))
            if col.wait(wait, stop):
                break
            col.drain()
            if governor.observe(time.monotonic(), hits()):
                break
            if time.monotonic() < next_poll:
                continue
            next_poll += poll_s
            if not _alive(pid, proc_root):
                exited = True
                break
            try:
                sym.refresh()
            except ProcessGone:
                exited = True
                break
            raw_now, _ = col.read(with_oldest=False)
            current = col.sites(raw_now, None, time.monotonic_ns())
            if sym.is_jvm and col.name_java_frames(java):
                current = col.sites(raw_now, None, time.monotonic_ns())
            try:
                write_state(pid, [s.to_json() for s in current[:top_n_state]], started=wall0, mode=mode,
                            interval_bytes=interval_bytes if mode == "sampled" else 0,
                            directory=state_directory)
            except OSError as exc:  # the live view is optional; the profile itself goes on
                if not state_problem:
                    state_problem.append(f"live state file not written: {exc}")
        if capture is not None:  # the GOT back first: reports go on until then
            final_hits = capture.hits()
            capture.stop()
        probes.detach(loaded)
        elapsed = time.monotonic() - t0
        governor.observe(time.monotonic(), final_hits if capture is not None else hits())
        now_ns = time.monotonic_ns()
        raw, oldest = col.read(with_oldest=True)
        counters = probes.read_counters(loaded)
        col.symbolize_new(raw)
        if sym.is_jvm and not exited and _alive(pid, proc_root):
            col.name_java_frames(java, force=True)  # code compiled since the last map
        sites = col.sites(raw, oldest, now_ns)
    finally:
        if capture is not None:
            capture.stop()  # after an error: never leave the target patched
        if loaded is not None:
            probes.close(loaded)
        if sym.java_methods is not None:
            sym.java_methods.close()
        sym.close()
        remove_state(pid, state_directory)
    lost = {"events": counters["events_lost"], "map_full": counters["map_full"] + counters["sites_full"],
            "unmatched_frees": counters["unmatched_frees"], "stack_lost": counters["stack_lost"],
            "stack_copies_lost": counters["copies_lost"]}
    overhead = governor.report()
    problems = list(plan.problems) + sym.problems + state_problem
    if not_injected:
        problems.append(not_injected)
    if capture is not None:
        problems.extend(capture.all_problems())
    if overhead.stopped:
        problems.append(overhead.stopped)
    if counters["copies_lost"]:
        problems.append(f"{counters['copies_lost']} allocations kept only their frame-pointer stack: the "
                        f"stack-copy ring buffer was full (allocation bursts faster than stacks are "
                        f"unwound; sampled mode or a smaller --stack-copy copies fewer bytes)")
    if overhead.costs.source.startswith("default"):
        problems.append(f"probe cost not measured, assumed {overhead.costs.alloc_ns:.0f} ns a hit: "
                        f"{overhead.costs.source}")
    if mode == "sampled":
        problems.append("unmatched_frees is only counted in exact mode (in sampled mode most frees are "
                        "of unsampled blocks)")
    return ProfileResult(pid=pid, duration_s=elapsed, mode=mode,
                         sampling_interval_bytes=interval_bytes if mode == "sampled" else 0, sites=sites,
                         lost=lost, allocator=plan.provider, allocator_kind=plan.provider_kind,
                         target_exited=exited, sampled_allocations=counters["sampled"], start_time=wall0,
                         problems=tuple(problems), via="inject" if capture is not None else rung,
                         overhead=overhead.to_json(), inject=capture.report() if capture is not None else None,
                         java_frames=(java.status or "no unnamed Java frames in the sites") if sym.is_jvm else None,
                         stacks=_stacks_report(loaded, col, counters))


def _choose(pid: int, plan: ProbePlan, via: str | None, mode: str, allow_inject: bool,
            proc_root: str) -> tuple[str, str]:
    """(rung, why not injected or ''). `via` None/auto: inject when allowed, sampled and safe (see
    inject/capture.py), else the best uprobe rung; `inject`: only that, or SourceUnavailable."""
    from nativewatch.inject.capture import inject_rung, injection_allowed
    from nativewatch.inject.injector import InjectRefused, preflight

    want = via or "auto"
    if want not in ("auto", "inject"):
        return choose_rung(want), ""
    ok, why = injection_allowed() if allow_inject else (False, "injection is turned off (--no-inject)")
    if ok and want == "auto" and mode == "exact":
        ok, why = False, "exact mode records every call, which the uprobe path does at the same cost"
    if ok:
        try:
            preflight(pid, plan, proc_root, forced=want == "inject")
        except InjectRefused as exc:
            ok, why = False, str(exc)
    if ok:
        return inject_rung(), ""
    if want == "inject":
        raise InjectRefused(why)
    return choose_rung(None), f"not injected: {why}"


def _name_interpreted_frames(sym: Symbolizer, java: PerfMapWriter, pid: int, proc_root: str) -> None:
    """A perf map before the first stack arrives (its Interpreter blob tells the unwinder which frames
    hold a Method*), and the reader of method names from the JVM's VMStructs."""
    from nativewatch.jvm.vmstructs import JavaMethodNames

    if java.write(force=True):
        sym.perf_map_rewritten()
    names = JavaMethodNames(pid, proc_root)
    if names.layout is None:
        sym.problems.append(f"interpreted Java frames unnamed: {names.problem}")
        names.close()
        return
    sym.java_methods = names


def supports_stack_copy(rung: str) -> bool:
    """Stack copies travel through a BPF ring buffer (kernel 5.8); the perf rung serves older kernels."""
    return rung != "perf"


def _stacks_report(loaded: probes.Loaded, col: _Collector, counters: dict[str, int]) -> dict[str, object]:
    if col.copies is None:
        return {"method": "frame pointers", "stack_copy_bytes": 0}
    # copied: unwound from a copy; known: matched a walk already done, in the kernel, with no copy
    return {"method": "stack copy + CFI", "stack_copy_bytes": loaded.stack_copy,
            "copied": col.copies.stats.stacks, "known": counters["walks_known"],
            "copies_lost": counters["copies_lost"], "unwind": col.copies.report()}
