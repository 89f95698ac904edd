"""`nativewatch top`: processes or containers with their category columns.

On a terminal it is a live full-screen UI (nativewatch.tui); with --once, --json, or without a
terminal on both stdin and stdout it prints one table and exits.
"""

from __future__ import annotations

import json
import sys

import click

from nativewatch.clickutil import DURATION, fail
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.scan import scan_all
from nativewatch.table import ContainerRow, container_rows, container_table, process_table

_SORTS = ("rss", "pid", "name", "growth", *CATEGORIES)


def _process_key(sort: str):  # type: ignore[no-untyped-def]
    if sort == "pid":
        return lambda b: b.pid
    if sort == "name":
        return lambda b: (b.comm.lower(), b.pid)
    if sort in CATEGORIES:
        return lambda b: (-b.categories.get(sort, 0), -b.rss_bytes)
    return lambda b: -b.rss_bytes  # rss; growth needs history, which one table does not have


def _container_key(sort: str):  # type: ignore[no-untyped-def]
    if sort == "pid":
        return lambda r: min(r.pids)
    if sort == "name":
        return lambda r: r.container_id
    if sort in CATEGORIES:
        return lambda r: (-r.categories.get(sort, 0), -r.rss_bytes)
    return lambda r: -r.rss_bytes


def _print_once(bds: list[Breakdown], errors: dict[str, int], *, as_json: bool, sort: str, limit: int,
                containers: bool) -> None:
    if containers:
        rows: list[ContainerRow] = container_rows(bds)
        rows.sort(key=_container_key(sort))
        if limit:
            rows = rows[:limit]
        if as_json:
            click.echo(json.dumps({"containers": [
                {"container_id": r.container_id, "runtime": r.runtime, "pod_uid": r.pod_uid, "pids": r.pids,
                 "rss_bytes": r.rss_bytes, "categories": r.categories} for r in rows], "errors": errors}))
        else:
            click.echo(container_table(rows))
        return
    bds.sort(key=_process_key(sort))
    if limit:
        bds = bds[:limit]
    if as_json:
        click.echo(json.dumps({"processes": [b.to_json() for b in bds], "errors": errors}))
    else:
        click.echo(process_table(bds))
        if errors:
            click.echo(f"\n(skipped: {', '.join(f'{k}={v}' for k, v in errors.items())})", err=True)


@click.command("top")
@click.option("--once", is_flag=True, help="Print one table and exit (the default without a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table (implies --once).")
@click.option("--sort", type=click.Choice(_SORTS), default="rss", show_default=True)
@click.option("--limit", "-n", type=int, default=30, show_default=True, help="Rows to print with --once (0 = all).")
@click.option("--containers", is_flag=True, help="One row per container instead of per process.")
@click.option("--jvm/--no-jvm", default=False, help="Attach to JVMs for NMT categories (slower).")
@click.option("--interval", "-d", type=DURATION, default=2.0, show_default=True,
              help="Seconds between refreshes of the live view.")
@click.option("--profile-duration", type=DURATION, default=30.0, show_default=True,
              help="Length of the native-site profile started with `p` in the drill-down.")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
def command(once: bool, as_json: bool, sort: str, limit: int, containers: bool, jvm: bool, interval: float,
            profile_duration: float, proc_root: str) -> None:
    """Show every process's (or container's) RSS broken down by category, live on a terminal.

    Keys: / search, s sort, r reverse, f filter, c processes/containers, Enter drill down, q quit.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if once or as_json or not interactive:
        bds, errors = scan_all(proc_root, jvm=jvm)
        _print_once(bds, errors, as_json=as_json, sort=sort, limit=limit, containers=containers)
        return
    if interval <= 0:
        fail("--interval must be positive", 2)
    from nativewatch.tui import run_top

    run_top(proc_root=proc_root, jvm=jvm, refresh_s=interval, sort=sort, containers=containers,
            profile_s=profile_duration)
