"""`nativewatch top`: processes or containers with their category columns."""

from __future__ import annotations

import json

import click

from nativewatch.scan import scan_all
from nativewatch.table import container_rows, container_table, process_table


@click.command("top")
@click.option("--once", is_flag=True, help="Print one table and exit (the default without a terminal).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print JSON instead of a table.")
@click.option("--sort", type=click.Choice(["rss", "pid"]), default="rss", show_default=True)
@click.option("--limit", "-n", type=int, default=30, show_default=True, help="Rows to show (0 = all).")
@click.option("--containers", is_flag=True, help="One row per container instead of per process.")
@click.option("--jvm/--no-jvm", default=False, help="Attach to JVMs for NMT categories (slower).")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
def command(once: bool, as_json: bool, sort: str, limit: int, containers: bool, jvm: bool, proc_root: str) -> None:
    """Show every process's (or container's) RSS broken down by category."""
    bds, errors = scan_all(proc_root, jvm=jvm)
    if containers:
        rows = container_rows(bds)
        rows.sort(key=(lambda r: -r.rss_bytes) if sort == "rss" else (lambda r: min(r.pids)))
        if limit:
            rows = rows[:limit]
        if as_json:
            click.echo(json.dumps({"containers": [
                {"container_id": r.container_id, "runtime": r.runtime, "pod_uid": r.pod_uid, "pids": r.pids,
                 "rss_bytes": r.rss_bytes, "categories": r.categories} for r in rows], "errors": errors}))
        else:
            click.echo(container_table(rows))
        return
    bds.sort(key=(lambda b: -b.rss_bytes) if sort == "rss" else (lambda b: b.pid))
    if limit:
        bds = bds[:limit]
    if as_json:
        click.echo(json.dumps({"processes": [b.to_json() for b in bds], "errors": errors}))
    else:
        click.echo(process_table(bds))
        if errors:
            click.echo(f"\n(skipped: {', '.join(f'{k}={v}' for k, v in errors.items())})", err=True)
