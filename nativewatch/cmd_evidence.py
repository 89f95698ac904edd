"""`nativewatch evidence ls|show ID`: the agent's OOM post-mortems and auto-captures on this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from nativewatch.clickutil import fail

__all__ = ["command"]

_DEFAULT_DIR = Path("/var/lib/nativewatch/evidence")
_DIR_OPTION = click.option("--evidence-dir", type=click.Path(path_type=Path), default=_DEFAULT_DIR,
                           show_default=True, help="The agent's --evidence-dir.")


def _safe(text: object) -> str:
    """Names and frames come from target processes: never let them reach the terminal as control codes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def _mib(n: object) -> str:
    return f"{n / 1048576:.1f} MiB" if isinstance(n, int | float) else "-"


@click.group("evidence")
def command() -> None:
    """List and open evidence files written by `nativewatch agent`."""


@command.command("ls")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(evidence_dir: Path, as_json: bool) -> None:
    """One line per evidence file, oldest first."""
    from nativewatch.agent.evidence import list_evidence

    items, problems = list_evidence(evidence_dir)
    if as_json:
        click.echo(json.dumps({"evidence": [i.to_json() for i in items], "problems": problems}))
        return
    if not items:
        click.echo(f"no evidence in {evidence_dir}")
    for i in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.time))
        click.echo(f"{_safe(i.id):<40} {when}  {_safe(i.kind):<12} pid={i.pid if i.pid is not None else '-':<8} "
                   f"{_safe(i.comm):<16} dominant={_safe(i.dominant_category or '-')}")
    for p in problems:
        click.echo(f"unreadable: {p}", err=True)


@command.command("show")
@click.argument("ev_id")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the whole document.")
def show_cmd(ev_id: str, evidence_dir: Path, as_json: bool) -> None:
    """Summary of one evidence file (the whole JSON with --json)."""
    from nativewatch.agent.evidence import load_evidence

    try:
        doc = load_evidence(evidence_dir, ev_id)
    except FileNotFoundError:
        fail(f"no evidence {ev_id!r} in {evidence_dir}")
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(f"{_safe(doc.get('id'))}: {_safe(doc.get('kind'))} of pid {_safe(doc.get('pid'))} "
               f"({_safe(doc.get('comm', ''))}) "
               f"at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(doc.get('time', 0))))}")
    click.echo(f"dominant category: {_safe(doc.get('dominant_category'))}")
    bd = doc.get("last_breakdown") or {}
    if bd:
        click.echo(f"last breakdown (rss {_mib(bd.get('rss_bytes'))}):")
        for cat, n in sorted((bd.get("categories") or {}).items(), key=lambda kv: -kv[1]):
            if n:
                g = (doc.get("growth") or {}).get(cat) or {}
                slope = g.get("bytes_per_second")
                trend = f"  growing {slope / 1024:.1f} KiB/s{' LEAK' if g.get('leak') else ''}" if slope else ""
                click.echo(f"  {_safe(cat):<10} {_mib(n):>12}{trend}")
    for title, key, fig in (("top resident-growth stacks", "top_stacks", "bytes"),
                            ("native sites", "native_sites", "outstanding_bytes")):
        rows = doc.get(key) or []
        if rows:
            click.echo(f"{title}:")
            for s in rows[:5]:
                click.echo(f"  {_mib(s.get(fig)):>12}  " + " <- ".join(map(_safe, (s.get("frames") or [])[:4])))
    ex = doc.get("explanation") if isinstance(doc.get("explanation"), dict) else None
    if ex:
        click.echo(f"explanation: {_safe(ex.get('summary', ''))}")
        for step in (ex.get("next_steps") or [])[:4]:
            click.echo(f"  next: {_safe(step)}")
    prof = doc.get("profile") if isinstance(doc.get("profile"), dict) else {}
    over = prof.get("overhead") if isinstance(prof.get("overhead"), dict) else None
    if prof:
        line = f"malloc profile: {_safe(prof.get('duration_s'))} s via {_safe(prof.get('via') or '?')}"
        if over:
            line += f", ~{_safe(over.get('estimated_mean'))} of a core (budget {_safe(over.get('budget'))})"
            if over.get("stopped"):
                line += f"; {_safe(over.get('stopped'))}"
        click.echo(line)
    if prof.get("sites"):
        click.echo("malloc profile sites:")
        for s in doc["profile"]["sites"][:5]:
            click.echo(f"  {_mib(s.get('outstanding_bytes')):>12}  " + " <- ".join(map(_safe, s.get("frames", [])[:4])))
    if doc.get("pprof"):
        click.echo(f"pprof: {_safe(doc['pprof'])}")
    for p in doc.get("problems") or []:
        click.echo(f"problem: {_safe(p)}")
