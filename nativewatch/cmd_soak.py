"""`nativewatch soak`: fail a build when a category's memory floor keeps rising over a run.

    nativewatch soak --duration 10m --max-growth 5MB/h -- ./my-server --port 0
    nativewatch soak --pid 1234 --duration 1h --category native --category direct --json

With `-- CMD` soak starts the command (its stdout goes to soak's stderr so `--json` stays clean),
samples it, stops it at the end (SIGTERM to its process group, SIGKILL after 5 s) and also fails if it
exits with a non-zero status before the end. Sample the program itself, not a shell around it (use
`exec` in a wrapper script): soak measures the pid it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from nativewatch.clickutil import DURATION, fail, pid_errors
from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.model import CATEGORIES
from nativewatch.runtimes.registry import runtime_named
from nativewatch.snapshot import SnapshotSampler
from nativewatch.soak import (
    DEFAULT_CATEGORIES,
    DEFAULT_MAX_GROWTH,
    SoakReport,
    SoakSample,
    chart_svg,
    evaluate,
    failures_of,
    parse_rate,
    report_json,
    report_text,
    run_soak,
)
from nativewatch.units import human_bytes


class _Rate(click.ParamType):
    name = "RATE"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_rate(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL it if still there after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_text(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


@click.command("soak", context_settings={"allow_interspersed_args": False})
@click.option("--duration", type=DURATION, default="10m", show_default=True, help="How long to sample.")
@click.option("--interval", type=DURATION, default=None,
              help="Seconds between samples [default: duration/120, between 1s and 60s].")
@click.option("--max-growth", "max_growth", type=_Rate(), default=DEFAULT_MAX_GROWTH, show_default=True,
              help="Fail when a watched category's floor rises faster (e.g. 1MiB/h, 5MB/h, 100KiB/s).")
@click.option("--category", "-c", "categories", multiple=True, type=click.Choice(CATEGORIES),
              help="Category to watch (repeat) [default: all but file].")
@click.option("--warmup", type=DURATION, default=None,
              help="Samples before this are charted but not judged [default: 10% of the duration].")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of text.")
@click.option("--chart", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write an SVG chart of the categories over time to this file (.svg).")
@click.option("--pid", "-p", type=int, default=None, help="Soak a running process.")
@click.option("--jvm/--no-jvm", default=True, show_default=True, help="Attach to JVMs for NMT categories.")
@click.option("--jvm-timeout", type=float, default=5.0, show_default=True, help="Seconds for a JVM attach.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def command(duration: float, interval: float | None, max_growth: float, categories: tuple[str, ...],
            warmup: float | None, as_json: bool, chart: str | None, pid: int | None, jvm: bool,
            jvm_timeout: float, quiet: bool, proc_root: str, cmd: tuple[str, ...]) -> None:
    """Sample a process over a run and fail (exit 1) if a category's memory floor keeps rising.

    Give either --pid PID or a command after `--`.
    """
    if (pid is None) == (not cmd):
        fail("give exactly one target: --pid PID or -- CMD [ARGS...]", 2)
    if duration <= 0:
        fail("--duration must be positive", 2)
    if interval is None:
        interval = min(60.0, max(1.0, duration / 120))
    if interval <= 0:
        fail("--interval must be positive", 2)
    if warmup is None:
        warmup = duration * 0.1
    if warmup >= duration:
        fail(f"--warmup ({warmup:g}s) must be shorter than --duration ({duration:g}s)", 2)
    if max_growth <= 0:
        fail("--max-growth must be positive", 2)
    if chart is not None and Path(chart).suffix.lower() != ".svg":
        # Checked before the run, not after an hour of soaking.
        fail(f"--chart {chart}: only SVG charts are written (name the file *.svg)", 2)
    watched = tuple(c for c in CATEGORIES if c in categories) if categories else DEFAULT_CATEGORIES

    child: subprocess.Popen | None = None
    if cmd:
        try:
            child = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                     start_new_session=True)
        except OSError as exc:
            fail(f"cannot run {cmd[0]}: {exc.strerror or exc}")
        target_pid = child.pid
    else:
        assert pid is not None
        if pid <= 0:
            fail(f"invalid pid: {pid}", 2)
        target_pid = pid

    sampler = SnapshotSampler(target_pid, proc_root, jvm, jvm_timeout)
    progress_every = max(interval, duration / 10)
    last_progress = [-progress_every]

    def progress(s: SoakSample) -> None:
        if quiet or s.t_s - last_progress[0] < progress_every:
            return
        last_progress[0] = s.t_s
        top = sorted(watched, key=lambda c: -s.categories.get(c, 0))[:3]
        click.echo(f"soak: {s.t_s:6.0f}s/{duration:g}s  rss {human_bytes(s.rss_bytes)}  "
                   + "  ".join(f"{c} {human_bytes(s.categories.get(c, 0))}" for c in top), err=True)

    interrupted = False
    try:
        samples, last, problems, elapsed = run_soak(
            sampler, duration_s=duration, interval_s=interval,
            child_status=child.poll if child is not None else None, on_sample=progress)
    except (AccessDenied, ProcessGone) as exc:
        if child is not None:
            _stop(child)
        pid_errors(target_pid, exc)
    except KeyboardInterrupt:
        interrupted = True
        samples, last, problems, elapsed = [], None, [], 0.0
    finally:
        status: int | None = None
        if child is not None:
            status = child.poll()
            if status is None:
                _stop(child)  # we ended it: its status is ours, not the command's
    extra_failures: list[str] = []
    notes = list(sampler.notes)
    if interrupted:
        extra_failures.append("interrupted before the end of the run")
    if status is not None and status != 0:
        extra_failures.append(f"command {_exit_text(status)} after {elapsed:.1f}s")
    elif status == 0 and elapsed < duration:
        notes.append(f"command exited with status 0 after {elapsed:.1f}s (before the {duration:g}s duration)")
    elif child is None and elapsed < duration and samples:
        notes.append(f"pid {target_pid} exited after {elapsed:.1f}s (before the {duration:g}s duration)")
    if not samples and child is None and not interrupted:
        fail(f"no such process: {target_pid} (it does not exist or exited)")
    if last is not None and (missing := runtime_named(last.runtime).missing_figures(last)):
        notes.append(missing)
    notes.extend(problems[:5])

    results = evaluate(samples, limit_bytes_per_second=max_growth, watched=watched, warmup_s=warmup)
    after = sum(1 for s in samples if s.t_s >= warmup)
    # The name comes from the target: control characters would reach the CI log or terminal.
    comm = "".join(ch if ch.isprintable() else "?" for ch in last.comm) if last is not None else "?"
    target = " ".join(cmd) if cmd else f"pid {target_pid} ({comm})"
    report = SoakReport(
        target=target, pid=target_pid, runtime=last.runtime if last is not None else "?",
        duration_s=duration, elapsed_s=round(elapsed, 3), warmup_s=warmup, interval_s=interval,
        limit_bytes_per_second=max_growth, watched=watched, samples=tuple(samples), results=results,
        failures=failures_of(results, after, extra_failures), notes=tuple(notes), exit_status=status,
        sources=tuple(last.sources) if last is not None else ())
    if chart is not None:
        try:
            Path(chart).write_text(chart_svg(report), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write chart {chart}: {exc.strerror or exc}")
    if as_json:
        click.echo(json.dumps(report_json(report)))
    else:
        click.echo(report_text(report))
    sys.exit(1 if report.verdict == "fail" else 0)


