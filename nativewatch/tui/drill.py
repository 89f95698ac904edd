"""The drill-down view of one process as a rich renderable: categories now and over time, the runtime's
own figures (NMT), sites."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from nativewatch.growth import LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.runtimes.base import DetailTable
from nativewatch.runtimes.registry import runtime_named
from nativewatch.tui.render import CATEGORY_STYLES, compact_rate, eta_text, printable, sparkline
from nativewatch.units import human_bytes

__all__ = ["drill_renderable"]


def _bar(v: int, total: int, width: int, style: Any) -> Text:
    n = round(width * v / total) if total > 0 else 0
    return Text("█" * n + "·" * (width - n), style=style)


def _sites_table(sites: Sequence[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, expand=False)
    t.add_column("OUTSTANDING", justify="right")
    t.add_column("ALLOCS", justify="right")
    t.add_column("OLDEST", justify="right")
    t.add_column("STACK (leaf first)", overflow="fold")
    for s in sites[:10]:
        frames = [str(f) for f in (s.get("frames") or ["?"])]
        age = s.get("oldest_age_s")
        t.add_row(human_bytes(int(s.get("outstanding_bytes", 0))), str(s.get("outstanding_allocations", "")),
                  f"{age:.0f}s" if isinstance(age, int | float) else "-",
                  Text(printable(" ← ".join(frames[:6])) + (" …" if len(frames) > 6 else "")))
    return t


def _details_table(dt: DetailTable) -> Table:
    t = Table(title=dt.title, title_justify="left", show_edge=False, pad_edge=False)
    t.add_column(dt.columns[0])
    for c in dt.columns[1:]:
        t.add_column(c, justify="right")
    for name, values in dt.rows:
        # Row names come from the target process (NMT category names): untrusted text.
        t.add_row(Text(printable(name)), *(human_bytes(v) for v in values))
    return t


def drill_renderable(bd: Breakdown, growth: dict[str, LeakVerdict], history: dict[str, Sequence[int]],
                     history_span_s: float, *, oom_eta_s: float | None = None,
                     sites: Sequence[dict[str, Any]] | None = None, sites_title: str = "",
                     profile_status: str = "", spark_width: int = 32) -> RenderableType:
    head = Text()
    head.append(f"pid {bd.pid}  ", style="bold")
    head.append(f"{printable(bd.comm)}  ", style="bold")
    head.append(f"runtime {bd.runtime}  threads {bd.threads}  ")
    head.append(f"RSS {human_bytes(bd.rss_bytes)} ({bd.rss_bytes:,} B)\n", style="bold")
    head.append(f"PSS {human_bytes(bd.detail.pss_bytes)}  swap {human_bytes(bd.detail.swap_bytes)}  "
                f"allocator {bd.detail.allocator} ({bd.detail.malloc_arenas} arenas)  ")
    head.append(f"container {bd.container.id[:12] if bd.container else '-'}  ")
    head.append(f"OOM in {eta_text(oom_eta_s)}\n")
    head.append(f"sources: {', '.join(bd.sources)}", style="dim")
    if bd.cmdline:
        head.append(f"\n{printable(' '.join(bd.cmdline))[:300]}", style="dim")

    t = Table(show_edge=False, pad_edge=False, expand=False)
    t.add_column("CATEGORY")
    t.add_column("BYTES", justify="right")
    t.add_column("SIZE", justify="right")
    t.add_column("%", justify="right")
    t.add_column("SHARE")
    t.add_column("GROWTH", justify="right")
    t.add_column("FIT", justify="right")
    t.add_column(f"LAST {history_span_s:.0f}s")
    t.add_column("VERDICT")
    total = bd.rss_bytes
    for c in CATEGORIES:
        v = int(bd.categories.get(c, 0))
        g = growth.get(c)
        style = CATEGORY_STYLES[c]
        verdict = Text("LEAK", style="bold red") if g is not None and g.leak else Text(
            g.reason if g is not None and g.bytes_per_second > 0 else "", style="dim")
        t.add_row(Text(c, style=style), f"{v:,}", human_bytes(v), f"{100 * v / total:.1f}" if total else "0.0",
                  _bar(v, total, 20, style), compact_rate(g.bytes_per_second) if g else "0",
                  f"{g.fit.fit:.0%}" if g and g.bytes_per_second > 0 else "",
                  Text(sparkline(history.get(c, ()), spark_width), style=style), verdict)
    parts: list[RenderableType] = [head, Text(""), t]
    rt = runtime_named(bd.runtime)
    dt = rt.details_table(bd.runtime_details)
    missing = rt.missing_figures(bd) if dt is None else None
    if dt is not None:
        parts += [Text(""), _details_table(dt)]
    elif missing:
        parts += [Text(""), Text(missing, style="dim")]
    parts.append(Text(""))
    if profile_status:
        parts.append(Text(profile_status, style="bold"))
    if sites:
        parts.append(_sites_table(sites, sites_title or "top native allocation sites"))
    elif not profile_status:
        parts.append(Text("press p to profile native allocation sites for 30 s (eBPF)", style="dim"))
    for p in bd.problems[:3]:
        parts.append(Text(f"note: {printable(p)}", style="dim"))
    return Group(*parts)
