"""Rows to terminal cells: fixed columns, a stacked category bar, sparklines. No Textual app state here.

Every function returns rich `Segment`s / Textual `Strip`s of an exact cell width, so the table widget
can cache them per row and draw only the lines that are visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

from nativewatch.model import CATEGORIES
from nativewatch.table import compact_rate, short
from nativewatch.tui.state import Row

__all__ = ["CATEGORY_STYLES", "Layout", "compact_rate", "eta_text", "header_text", "layout_for",
           "legend_text", "printable", "render_row", "sparkline", "stacked_bar"]

CATEGORY_STYLES: dict[str, Style] = {
    "heap": Style(color="rgb(80,140,230)"), "metaspace": Style(color="rgb(170,110,220)"),
    "thread": Style(color="rgb(170,120,90)"), "direct": Style(color="rgb(230,70,70)"),
    "code": Style(color="rgb(230,130,200)"), "gc": Style(color="rgb(150,150,150)"),
    "runtime": Style(color="rgb(190,190,60)"), "native": Style(color="rgb(255,150,40)"),
    "file": Style(color="rgb(60,190,210)"), "shmem": Style(color="rgb(90,190,90)"),
}
_BLOCKS = "▁▂▃▄▅▆▇█"
_DIM = Style(dim=True)
_LEAK = Style(color="rgb(255,80,80)", bold=True)
_GROW = Style(color="rgb(230,200,60)")
_HEAD = Style(bold=True)
_SORTED = Style(bold=True, underline=True)


def printable(text: str) -> str:
    """Names and command lines come from the target: control characters would drive the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def eta_text(eta_s: float | None) -> str:
    if eta_s is None:
        return "-"
    if eta_s <= 0:
        return "NOW"
    s = int(eta_s)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters, scaled between their own min and max."""
    if width <= 0:
        return ""
    vs = list(values)[-width:]
    if not vs:
        return " " * width
    lo, hi = min(vs), max(vs)
    # Changes under 1% of the level are noise (a page or two of a library): drawing them full-height
    # would make a steady process look busy.
    if hi - lo <= abs(hi) * 0.01:
        line = _BLOCKS[0] * len(vs)
    else:
        top = len(_BLOCKS) - 1
        line = "".join(_BLOCKS[round((v - lo) / (hi - lo) * top)] for v in vs)
    return line.rjust(width)


def stacked_bar(categories: dict[str, int], total: int, width: int) -> list[Segment]:
    """`width` cells split between the categories in proportion (largest remainder, so cells sum exactly)."""
    if width <= 0:
        return []
    if total <= 0:
        return [Segment(" " * width)]
    exact = [(c, categories.get(c, 0) * width / total) for c in CATEGORIES]
    cells = {c: int(x) for c, x in exact}
    left = width - sum(cells.values())
    for c, x in sorted(exact, key=lambda cx: cx[1] - int(cx[1]), reverse=True)[:max(0, left)]:
        if x > 0:
            cells[c] += 1
    out = [Segment("█" * cells[c], CATEGORY_STYLES[c]) for c in CATEGORIES if cells[c]]
    used = sum(cells.values())
    if used < width:
        out.append(Segment(" " * (width - used)))
    return out


@dataclass(frozen=True, slots=True)
class Layout:
    """Column widths for one terminal width and view (processes or containers).

    Always shown: id, name, RSS, the category bar, growth, leak. Optional columns are added in order
    of usefulness while the bar keeps at least `MIN_BAR` cells: OOM ETA, trend, runtime, threads,
    container. Whatever width is left goes to the bar (and the trend, up to `MAX_SPARK`).
    """

    containers: bool
    width: int
    bar: int
    spark: int
    show_eta: bool
    show_rt: bool
    show_thr: bool
    show_container: bool

    ID_W = 12
    PID_W = 7
    NAME_W = 16
    RT_W = 7
    RSS_W = 7
    GROWTH_W = 18
    LEAK_W = 5
    ETA_W = 7
    CTR_W = 12
    THR_W = 5
    MIN_BAR = 12
    MIN_SPARK = 8
    MAX_SPARK = 24


def layout_for(width: int, containers: bool) -> Layout:
    ident = Layout.ID_W if containers else Layout.PID_W
    core = ident + Layout.NAME_W + Layout.RSS_W + Layout.GROWTH_W + Layout.LEAK_W + 5  # + separators
    rest = width - core
    shown: dict[str, bool] = {}
    for name, w in (("eta", Layout.ETA_W), ("spark", Layout.MIN_SPARK), ("rt", Layout.RT_W),
                    ("thr", Layout.THR_W), ("ctr", Layout.CTR_W)):
        ok = rest - (w + 1) >= Layout.MIN_BAR and not (name == "ctr" and containers)
        shown[name] = ok
        if ok:
            rest -= w + 1
    bar = max(4, rest)
    spark = Layout.MIN_SPARK if shown["spark"] else 0
    if spark and bar > 3 * Layout.MIN_BAR:
        extra = min(Layout.MAX_SPARK - spark, (bar - 3 * Layout.MIN_BAR) // 2)
        spark += extra
        bar -= extra
    return Layout(containers, width, bar, spark, shown["eta"], shown["rt"], shown["thr"], shown["ctr"])


def _cell(text: str, width: int, right: bool = False) -> str:
    text = text[:width]
    return text.rjust(width) if right else text.ljust(width)


def _titles(layout: Layout) -> list[tuple[str, str, int, bool]]:
    """(title, sort key or "", width, right-aligned) per shown column, in order."""
    first = ("CONTAINER", "name", Layout.ID_W, False) if layout.containers else ("PID", "pid", Layout.PID_W, True)
    cols = [first, ("POD/RUNTIME" if layout.containers else "COMM", "name", Layout.NAME_W, False)]
    if layout.show_rt:
        cols.append(("RT", "", Layout.RT_W, False))
    cols += [("RSS", "rss", Layout.RSS_W, True),
             ("CATEGORIES" if layout.bar >= 10 else "CAT", "", layout.bar, False),
             ("GROWTH", "growth", Layout.GROWTH_W, False)]
    if layout.spark:
        cols.append(("TREND", "", layout.spark, False))
    cols.append(("LEAK", "", Layout.LEAK_W, False))
    if layout.show_eta:
        cols.append(("OOM IN", "", Layout.ETA_W, True))
    if layout.show_thr:
        cols.append(("PROCS" if layout.containers else "THR", "", Layout.THR_W, True))
    if layout.show_container:
        cols.append(("CONTAINER", "", Layout.CTR_W, False))
    return cols


def header_text(layout: Layout, sort: str, reverse: bool) -> Text:
    t = Text(no_wrap=True, overflow="crop")
    arrow = "▲" if reverse else "▼"
    for i, (title, key, w, right) in enumerate(_titles(layout)):
        if w <= 0:
            continue
        if i:
            t.append(" ")
        label = title + (arrow if key == sort else "")
        by_category = sort in CATEGORIES and title in ("CATEGORIES", "CAT")
        if by_category:
            label = f"{title} by {sort}{arrow}"
        t.append(_cell(label, w, right), _SORTED if (key == sort or by_category) else _HEAD)
    return t


def legend_text() -> Text:
    t = Text(no_wrap=True, overflow="crop")
    for c in CATEGORIES:
        t.append("█", CATEGORY_STYLES[c])
        t.append(f" {c}  ")
    return t


def render_row(row: Row, layout: Layout) -> Strip:
    segs: list[Segment] = []

    def add(text: str, width: int, right: bool = False, style: Style | None = None, sep: bool = True) -> None:
        if width <= 0:
            return
        if sep and segs:
            segs.append(Segment(" "))
        segs.append(Segment(_cell(text, width, right), style))

    if layout.containers:
        add(row.container, Layout.ID_W)
    else:
        add(str(row.pid), Layout.PID_W, right=True)
    add(printable(row.name), Layout.NAME_W)
    if layout.show_rt:
        add(row.runtime, Layout.RT_W, style=_DIM)
    add(short(row.rss_bytes), Layout.RSS_W, right=True)
    segs.append(Segment(" "))
    segs.extend(stacked_bar(row.categories, row.rss_bytes, layout.bar))
    if row.top_category:
        g = row.growth[row.top_category]
        add(f"{row.top_category} {compact_rate(g.bytes_per_second)}", Layout.GROWTH_W,
            style=_LEAK if g.leak else _GROW)
    else:
        add("-", Layout.GROWTH_W, style=_DIM)
    if layout.spark:
        add(sparkline(row.spark, layout.spark), layout.spark,
            style=CATEGORY_STYLES.get(row.top_category or "", _DIM))
    add("LEAK" if row.leak else "", Layout.LEAK_W, style=_LEAK)
    if layout.show_eta:
        add(eta_text(row.oom_eta_s), Layout.ETA_W, right=True,
            style=_LEAK if row.oom_eta_s is not None and row.oom_eta_s < 3600 else None)
    if layout.show_thr:
        add(str(row.procs if layout.containers else row.threads), Layout.THR_W, right=True)
    if layout.show_container:
        add(row.container, Layout.CTR_W, style=_DIM)
    return Strip(segs).adjust_cell_length(layout.width)
