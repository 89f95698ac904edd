"""`nativewatch doctor`: what works on this host and what to do about what does not."""

from __future__ import annotations

import json
import sys

import click

from nativewatch.doctor import MISSING, OK, run_checks


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True)
@click.option("--strict", is_flag=True, help="Exit 2 when any check is not ok.")
def command(as_json: bool, strict: bool) -> None:
    """Check BPF, uprobes, tracefs, BTF, kernel headers, capabilities and cgroups."""
    checks = run_checks()
    if as_json:
        click.echo(json.dumps([{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix}
                               for c in checks]))
    else:
        for c in checks:
            click.echo(f"{c.status.upper():<9} {c.name:<15} {c.detail}")
            if c.status != OK and c.fix:
                click.echo(f"{'':<9} {'':<15} -> {c.fix}")
    if strict and any(c.status != OK for c in checks):
        sys.exit(2)
    if any(c.status == MISSING and c.name == "procfs" for c in checks):
        sys.exit(1)
