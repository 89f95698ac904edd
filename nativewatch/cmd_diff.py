"""`nativewatch diff A B [--json] [-o delta.pb.gz]`: per-stack growth between two allocation profiles."""

from __future__ import annotations

import json

import click

from nativewatch.clickutil import fail
from nativewatch.malloc_profile.diff import delta_result, diff_profiles, load_profile
from nativewatch.malloc_profile.pprof import write_pprof
from nativewatch.units import human_bytes


@click.command("diff")
@click.argument("profile_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("profile_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write B - A as a gzipped pprof.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows in the table.")
def command(profile_a: str, profile_b: str, as_json: bool, output: str | None, top: int) -> None:
    """Compare two profiles (JSON from `profile --json` or pprof from `profile -o`): B - A per stack."""
    try:
        a = load_profile(profile_a)
        b = load_profile(profile_b)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    deltas = diff_profiles(a, b)
    if output:
        write_pprof(delta_result(a, b, deltas), output)
    if as_json:
        click.echo(json.dumps({
            "a": profile_a, "b": profile_b,
            "outstanding_bytes_a": a.total_outstanding_bytes, "outstanding_bytes_b": b.total_outstanding_bytes,
            "delta_outstanding_bytes": b.total_outstanding_bytes - a.total_outstanding_bytes,
            "sites": [d.to_json() for d in deltas]}))
        return
    click.echo(f"outstanding: {human_bytes(a.total_outstanding_bytes)} -> {human_bytes(b.total_outstanding_bytes)}"
               f" ({human_bytes(b.total_outstanding_bytes - a.total_outstanding_bytes, signed=True)})")
    click.echo(f"{'DELTA':>12} {'A':>12} {'B':>12}  SITE")
    for d in deltas[:top]:
        click.echo(f"{human_bytes(d.delta_outstanding_bytes, signed=True):>12} {human_bytes(d.outstanding_bytes_a):>12}"
                   f" {human_bytes(d.outstanding_bytes_b):>12}  {' <- '.join(d.frames[:4])}")
