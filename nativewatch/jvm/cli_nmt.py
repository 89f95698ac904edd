"""The `snapshot --nmt-baseline / --nmt-diff` behaviour (kept here so cmd_snapshot stays small)."""

from __future__ import annotations

import json

import click

from nativewatch.clickutil import fail, pid_errors
from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.model import CATEGORIES
from nativewatch.units import human_bytes


def run_nmt_option(pid: int, *, baseline: bool, as_json: bool, proc_root: str, timeout_s: float) -> None:
    from nativewatch.jvm import attach
    from nativewatch.jvm.attribute import nmt_baseline, nmt_diff

    try:
        if baseline:
            nmt_baseline(pid, proc_root=proc_root, timeout_s=timeout_s)
            if as_json:
                click.echo(json.dumps({"pid": pid, "nmt_baseline": True}))
            else:
                click.echo(f"NMT baseline taken for pid {pid}; run --nmt-diff later to see the growth")
            return
        diff = nmt_diff(pid, proc_root=proc_root, timeout_s=timeout_s)
    except (ProcessGone, AccessDenied) as exc:
        pid_errors(pid, exc)
    except attach.AttachError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(diff))
        return
    click.echo(f"pid {pid}: NMT committed growth since baseline "
               f"(total {human_bytes(diff['total']['committed_delta_bytes'], signed=True)})")
    for c in CATEGORIES:
        if c in ("native", "file", "shmem"):
            continue  # NMT does not see these
        click.echo(f"  {c:10s} {human_bytes(diff['categories'][c], signed=True):>12s}")
    rows = sorted(diff["nmt_categories"].items(), key=lambda kv: -abs(kv[1]["committed_delta_bytes"]))
    moved = [(n, v) for n, v in rows if v["committed_delta_bytes"]]
    if moved:
        click.echo("  by NMT category:")
        for n, v in moved[:12]:
            click.echo(f"    {n:26s} {human_bytes(v['committed_delta_bytes'], signed=True):>12s}")
