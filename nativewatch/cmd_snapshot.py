"""`nativewatch snapshot --pid PID [--json]`: the breakdown of one process (DESIGN snapshot contract)."""

from __future__ import annotations

import json

import click

from nativewatch.clickutil import fail, pid_errors
from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.snapshot import take_snapshot
from nativewatch.table import snapshot_text


@click.command("snapshot")
@click.option("--pid", "-p", type=int, required=True, help="Process to break down.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON contract instead of text.")
@click.option("--proc-root", default="/proc", show_default=True, hidden=True)
@click.option("--no-jvm", is_flag=True, help="Do not attach to JVMs (smaps-only view).")
@click.option("--jvm-timeout", type=float, default=5.0, show_default=True, help="Seconds for JVM attach.")
@click.option("--nmt-baseline", is_flag=True, help="JVM: take an NMT baseline now (for a later --nmt-diff).")
@click.option("--nmt-diff", is_flag=True, help="JVM: growth per category since the last --nmt-baseline.")
def command(pid: int, as_json: bool, proc_root: str, no_jvm: bool, jvm_timeout: float,
            nmt_baseline: bool, nmt_diff: bool) -> None:
    """Break a process's RSS down into categories that sum exactly to smaps Rss."""
    if pid <= 0:
        fail(f"invalid pid: {pid}")
    if nmt_baseline or nmt_diff:
        from nativewatch.jvm.cli_nmt import run_nmt_option

        run_nmt_option(pid, baseline=nmt_baseline, as_json=as_json, proc_root=proc_root, timeout_s=jvm_timeout)
        return
    try:
        bd = take_snapshot(pid, proc_root=proc_root, jvm=not no_jvm, jvm_timeout_s=jvm_timeout)
    except (ProcessGone, AccessDenied) as exc:
        pid_errors(pid, exc)
    if as_json:
        click.echo(json.dumps(bd.to_json(), sort_keys=False))
    else:
        click.echo(snapshot_text(bd))
