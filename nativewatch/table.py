"""Plain-text tables of breakdowns (the non-interactive `top` and `snapshot` views)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nativewatch.growth import LeakVerdict
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.tracker import ContainerSummary, fastest_category
from nativewatch.units import human_bytes

__all__ = ["compact_rate", "container_table", "process_table", "short", "snapshot_text"]

_SHORT = {"heap": "HEAP", "metaspace": "META", "thread": "THREAD", "direct": "DIRECT", "code": "CODE",
          "gc": "GC", "runtime": "RUNTIME", "native": "NATIVE", "file": "FILE", "shmem": "SHMEM"}


def short(n: int) -> str:
    """Compact size for table cells: 4 significant characters plus a unit letter."""
    v = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if v < 1024 or unit == "T":
            return f"{int(v)}{unit}" if unit == "B" else (f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}")
        v /= 1024
    return str(n)


def _render(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = []
    for r in [headers, *rows]:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def compact_rate(bps: float) -> str:
    """Growth in at most 8 cells: per second when fast (>= 1 MiB/min), otherwise per hour."""
    if bps <= 0:
        return "0"
    if bps >= 1024 * 1024 / 60:
        return f"+{short(int(bps))}/s"
    return f"+{short(int(bps * 3600))}/h"


def _growth_cell(growth: Mapping[str, LeakVerdict] | None) -> str:
    cat = fastest_category(growth) if growth else None
    if growth is None or cat is None:
        return "-"
    return f"{cat} {compact_rate(growth[cat].bytes_per_second)}" + (
        " LEAK" if any(g.leak for g in growth.values()) else "")


def process_table(bds: Sequence[Breakdown], growth: Mapping[int, Mapping[str, LeakVerdict]] | None = None) -> str:
    """One line per process; with ``growth`` (per pid) a GROWTH column: the fastest category's floor slope
    and LEAK when any category has a verdict."""
    headers = ["PID", "COMM", "RUNTIME", "RSS", *[_SHORT[c] for c in CATEGORIES], "THR", "CONTAINER"]
    if growth is not None:
        headers.append("GROWTH")
    rows = []
    for b in bds:
        cid = b.container.id[:12] if b.container else "-"
        row = [str(b.pid), b.comm[:16], b.runtime, short(b.rss_bytes),
               *[short(b.categories.get(c, 0)) for c in CATEGORIES], str(b.threads), cid]
        if growth is not None:
            row.append(_growth_cell(growth.get(b.pid)))
        rows.append(row)
    return _render(headers, rows, right=set(range(3, 3 + 1 + len(CATEGORIES) + 1)) | {0})


def container_table(rows: Sequence[ContainerSummary]) -> str:
    headers = ["CONTAINER", "RUNTIME", "POD", "PROCS", "RSS", *[_SHORT[c] for c in CATEGORIES], "LIMIT",
               "GROWTH"]
    out = []
    for r in rows:
        info = r.info
        lim = r.memory.limit_bytes if r.memory else None
        out.append([r.id[:12], info.runtime if info else "-", ((info.pod_uid if info else None) or "-")[:36],
                    str(len(r.members)), short(r.rss_bytes), *[short(r.categories[c]) for c in CATEGORIES],
                    short(lim) if lim else "-", _growth_cell(r.growth)])
    return _render(headers, out, right=set(range(3, 6 + len(CATEGORIES))))


def snapshot_text(b: Breakdown) -> str:
    lines = [f"pid {b.pid} ({b.comm})  runtime {b.runtime}  threads {b.threads}",
             f"RSS {human_bytes(b.rss_bytes)}  PSS {human_bytes(b.detail.pss_bytes)}  "
             f"swap {human_bytes(b.detail.swap_bytes)}  anon {human_bytes(b.detail.anon_bytes)}  "
             f"allocator {b.detail.allocator} ({b.detail.malloc_arenas} arenas, "
             f"{human_bytes(b.detail.malloc_arena_rss_bytes)} resident)"]
    if b.container:
        lines.append(f"container {b.container.id[:12]} ({b.container.runtime})  pod {b.container.pod_uid or '-'}  "
                     f"qos {b.container.qos or '-'}")
    lines.append("")
    total = b.rss_bytes or 1
    for c in CATEGORIES:
        v = b.categories.get(c, 0)
        bar = "#" * round(30 * v / total)
        lines.append(f"  {c:<10} {human_bytes(v):>12}  {100 * v / total:5.1f}%  {bar}")
    lines.append(f"\nsources: {', '.join(b.sources)}")
    for p in b.problems:
        lines.append(f"note: {p}")
    sites = b.extra.get("top_sites")
    if sites:
        lines.append("\ntop native sites (live profile):")
        for s in sites[:10]:
            frames = s.get("frames") or ["?"]
            lines.append(f"  {human_bytes(s.get('outstanding_bytes', 0)):>12}  {frames[0]}")
    return "\n".join(lines)
