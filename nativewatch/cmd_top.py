"""`nativewatch top`: processes or containers with their category columns.

On a terminal it is a live full-screen UI (nativewatch.tui); with --once, --json, or without a
terminal on both stdin and stdout it prints one table and exits.
"""

from __future__ import annotations

import json
import sys
import time

import click

from nativewatch.clickutil import DURATION, fail
from nativewatch.model import CATEGORIES
from nativewatch.table import container_table, process_table
from nativewatch.tracker import growth_json
from nativewatch.tui.collect import Collector, Frame
from nativewatch.tui.state import ViewState, select_rows

_SORTS = ("rss", "pid", "name", "growth", *CATEGORIES)


def observe(collector: Collector, duration_s: float, interval_s: float) -> Frame:
    """Scan now and then every ``interval_s`` until ``duration_s`` has passed; the last frame has the
    growth of everything seen (the same analyze stage as the live view and the agent)."""
    t_end = time.monotonic() + duration_s
    frame = collector.collect()
    while time.monotonic() < t_end:
        time.sleep(max(0.0, min(interval_s, t_end - time.monotonic())))
        frame = collector.collect()
    return frame


def _print_once(frame: Frame, *, as_json: bool, sort: str, limit: int, containers: bool) -> None:
    view = ViewState(sort=sort)
    if containers:
        order = select_rows(frame.containers, view)
        if limit:
            order = order[:limit]
        summaries = [frame.container_summaries[r.key] for r in order if r.key in frame.container_summaries]
        if as_json:
            click.echo(json.dumps({"containers": [
                {"container_id": sm.id, "runtime": sm.info.runtime if sm.info else "-",
                 "pod_uid": sm.info.pod_uid if sm.info else None, "pids": sorted(b.pid for b in sm.members),
                 "rss_bytes": sm.rss_bytes, "categories": sm.categories, "growth": growth_json(sm.growth),
                 "limit_bytes": sm.memory.limit_bytes if sm.memory else None,
                 "working_set_bytes": sm.memory.working_set_bytes if sm.memory else None,
                 "oom_eta_s": sm.oom_eta_s} for sm in summaries],
                "errors": frame.errors, "observed_s": frame.observed_s}))
        else:
            click.echo(container_table(summaries))
        return
    rows = select_rows(frame.processes, view)
    if limit:
        rows = rows[:limit]
    bds = [frame.breakdowns[r.pid] for r in rows if r.pid is not None]
    growth = {r.pid: r.growth for r in rows if r.pid is not None}
    if as_json:
        procs = []
        for b in bds:
            doc = b.to_json()
            doc["growth"] = growth_json(growth[b.pid])
            procs.append(doc)
        click.echo(json.dumps({"processes": procs, "errors": frame.errors, "observed_s": frame.observed_s}))
    else:
        click.echo(process_table(bds, growth if frame.observed_s > 0 else None))
        if frame.errors:
            click.echo(f"\n(skipped: {', '.join(f'{k}={v}' for k, v in frame.errors.items())})", err=True)


@click.command("top")
@click.option("--once", is_flag=True, help="Print one table and exit (the default without a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (implies --once).")
@click.option("--sort", type=click.Choice(_SORTS), default="rss", show_default=True)
@click.option("--limit", "-n", type=int, default=30, show_default=True, help="Rows to print with --once (0 = all).")
@click.option("--containers", is_flag=True, help="One row per container instead of per process.")
@click.option("--jvm/--no-jvm", default=False, help="Attach to JVMs for NMT categories (slower).")
@click.option("--interval", "-d", type=DURATION, default=2.0, show_default=True,
              help="Seconds between refreshes of the live view (and between scans of --duration).")
@click.option("--duration", type=DURATION, default=0.0, show_default=True,
              help="With --once/--json: watch this long before printing, so rows carry growth and leak "
                   "verdicts (the agent's policy; points at most every 10 s).")
@click.option("--profile-duration", type=DURATION, default=30.0, show_default=True,
              help="Length of the native-site profile started with `p` in the drill-down.")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
def command(once: bool, as_json: bool, sort: str, limit: int, containers: bool, jvm: bool, interval: float,
            duration: float, profile_duration: float, proc_root: str) -> None:
    """Show every process's (or container's) RSS broken down by category, live on a terminal.

    Keys: / search, s sort, r reverse, f filter, c processes/containers, Enter drill down, q quit.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if interval <= 0:
        fail("--interval must be positive", 2)
    if duration < 0:
        fail("--duration must not be negative", 2)
    if once or as_json or not interactive:
        frame = observe(Collector(proc_root=proc_root, jvm=jvm), duration, interval)
        _print_once(frame, as_json=as_json, sort=sort, limit=limit, containers=containers)
        return
    from nativewatch.tui import run_top

    run_top(proc_root=proc_root, jvm=jvm, refresh_s=interval, sort=sort, containers=containers,
            profile_s=profile_duration)
