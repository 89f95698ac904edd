"""`nativewatch profile --pid PID --duration 30s [--json] [-o native.pb.gz]`: outstanding native
allocations by call stack, measured with eBPF uprobes on the allocator the process really uses."""

from __future__ import annotations

import json
import signal
import threading

import click

from nativewatch.clickutil import DURATION, SIZE, fail, pid_errors
from nativewatch.errors import AccessDenied, ProcessGone, SourceUnavailable
from nativewatch.malloc_profile import probes
from nativewatch.malloc_profile.attach import RUNGS
from nativewatch.malloc_profile.governor import DEFAULT_MAX_OVERHEAD, parse_overhead
from nativewatch.malloc_profile.pprof import write_pprof
from nativewatch.malloc_profile.resolve import resolve
from nativewatch.malloc_profile.result import ProfileResult
from nativewatch.malloc_profile.runner import (
    DEFAULT_INTERVAL,
    DEFAULT_STACK_COPY,
    run_profile,
    supports_stack_copy,
)
from nativewatch.units import human_bytes


def render_text(r: ProfileResult, top: int) -> str:
    lines = [f"pid {r.pid}: {r.mode} profile over {r.duration_s:.1f}s, allocator {r.allocator or '?'}"
             + (f", sampling every {human_bytes(r.sampling_interval_bytes)} on average"
                if r.sampling_interval_bytes else "")
             + (" (target exited)" if r.target_exited else "")
             + (f", attached via {r.via}" if r.via else "")
             + (f"; Java frames: {r.java_frames}" if r.java_frames else "")
             + (f"; stacks: {r.stacks['method']}" if r.stacks else ""),
             f"outstanding: {human_bytes(r.total_outstanding_bytes)} in {len(r.sites)} sites; lost: "
             + ", ".join(f"{k}={v}" for k, v in r.lost.items()),
             f"{'OUTSTANDING':>12} {'COUNT':>9} {'ALLOCATED':>12} {'AGE':>8}  SITE"]
    if r.overhead:
        budget = r.overhead.get("budget")
        lines.insert(1, f"cost to the target: ~{r.overhead.get('estimated_mean', 0):.1%} of a core "
                        f"(peak {r.overhead.get('estimated_peak', 0):.1%}; budget "
                        f"{'none' if budget is None else f'{budget:.0%}'})"
                        + (f"; {r.stopped_early}" if r.stopped_early else ""))
    for s in r.sites[:top]:
        age = f"{s.oldest_age_s:.1f}s" if s.oldest_age_s is not None else "-"
        lines.append(f"{human_bytes(s.outstanding_bytes):>12} {s.outstanding_allocations:>9} "
                     f"{human_bytes(s.allocated_bytes):>12} {age:>8}  {' <- '.join(s.frames[:4])}")
    return "\n".join(lines)


@click.command("profile")
@click.option("--pid", "-p", type=int, required=True, help="Process to profile.")
@click.option("--duration", "-d", type=DURATION, default="30s", show_default=True, help="How long to watch.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract instead of a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write a gzipped pprof profile here.")
@click.option("--mode", type=click.Choice(["sampled", "exact"]), default="sampled", show_default=True,
              help="sampled: byte-based sampling (low overhead); exact: record every allocation.")
@click.option("--interval", type=SIZE, default=str(DEFAULT_INTERVAL), show_default=True,
              help="Mean sampling interval in bytes (sampled mode).")
@click.option("--via", type=click.Choice(["auto", "inject", *RUNGS]), default="auto", show_default=True,
              help="How to capture: inject = the in-process sampler (no kernel trap per unsampled call); "
                   "session/multi/perf = uprobes on the allocator; auto = inject when allowed and safe, else "
                   "the best uprobe rung (see `doctor`).")
@click.option("--inject/--no-inject", "allow_inject", default=True, show_default=True,
              help="Whether auto may put the sampler into the process (never with --no-inject, or when "
                   "NATIVEWATCH_NO_INJECT is set).")
@click.option("--max-overhead", default=f"{DEFAULT_MAX_OVERHEAD:.0%}", show_default=True,
              help="Stop the capture early when it would cost the target more than this share of one core "
                   "('none': no limit).")
@click.option("--top", type=int, default=20, show_default=True, help="Rows in the table.")
@click.option("--jvm/--no-jvm", "jvm", default=True, show_default=True,
              help="Ask a HotSpot JVM (JDK 17+) for its perf map through attach, so JIT frames are named.")
@click.option("--stack-copy", type=SIZE, default=str(DEFAULT_STACK_COPY), show_default=True,
              help="Bytes of user stack copied per sampled allocation and unwound with the binaries' CFI, "
                   "so code built without frame pointers gets whole stacks (0: frame pointers only).")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the final BPF program and exit.")
def command(pid: int, duration: float, as_json: bool, output: str | None, mode: str, interval: int,
            via: str, allow_inject: bool, max_overhead: str, top: int, jvm: bool, stack_copy: int,
            proc_root: str, dump_bpf: bool) -> None:
    """Outstanding malloc/mmap memory by call stack (sites sorted by bytes, with age)."""
    if pid <= 0:
        fail(f"invalid pid: {pid}")
    if duration <= 0:
        fail("duration must be positive")
    if via == "inject" and not allow_inject:
        fail("--via inject contradicts --no-inject")
    rung = via if via in RUNGS else ("inject" if via == "inject" else "session")
    try:
        budget = parse_overhead(max_overhead)
        defines = probes.build_defines(mode=mode, interval_bytes=interval, rung=rung,
                                       stack_copy=stack_copy if supports_stack_copy(rung) else 0)
    except ValueError as exc:
        fail(str(exc))
    if dump_bpf:
        try:  # with the target's C++ nest range when it can be resolved
            plan = resolve(pid, proc_root)
            defines = probes.build_defines(mode=mode, interval_bytes=interval, nest_range=plan.nest_range,
                                           rung=rung,
                                           stack_copy=stack_copy if supports_stack_copy(rung) else 0)
        except (ProcessGone, AccessDenied, SourceUnavailable):
            pass
        click.echo(probes.dump_source(defines))
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def attached() -> None:
        click.echo(f"nativewatch: profiling pid {pid} for {duration:g}s (Ctrl-C stops early)", err=True)

    try:
        result = run_profile(pid, duration, mode=mode, interval_bytes=interval, stop=stop, proc_root=proc_root,
                             on_attached=attached, via=via, max_overhead=budget, jvm_attach=jvm,
                             stack_copy=stack_copy, allow_inject=allow_inject)
    except (ProcessGone, AccessDenied) as exc:
        pid_errors(pid, exc)
    except SourceUnavailable as exc:
        fail(str(exc))
    if output:
        write_pprof(result, output)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(render_text(result, top))
