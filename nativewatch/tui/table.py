"""A line-API table: draws only the rows in view, from strips cached until the next frame arrives.

A 1,000-row frame costs one sort and ~terminal-height row renders, not 1,000 (see
benchmarks/bench_top_render.py); the cursor follows its row (by key) across refreshes.
"""

from __future__ import annotations

from rich.style import Style
from textual.binding import Binding
from textual.events import Click, Resize
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from nativewatch.tui.render import Layout, layout_for, render_row
from nativewatch.tui.state import Row

__all__ = ["RowTable"]

_CURSOR = Style(bgcolor="rgb(40,60,110)", bold=True)


class RowTable(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("down,j", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "PgUp", show=False),
        Binding("pagedown", "page(1)", "PgDn", show=False),
        Binding("home,g", "jump(0)", "Top", show=False),
        Binding("end,G", "jump(-1)", "Bottom", show=False),
        Binding("enter", "select", "Drill down"),
    ]

    class Selected(Message):
        def __init__(self, row: Row) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, containers: bool = False, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.rows: list[Row] = []
        self.cursor = 0
        self.containers = containers
        self._cache: dict[int, Strip] = {}
        self._layout: Layout | None = None
        self.rendered_rows = 0  # rows rendered since the last frame (tests and the benchmark read it)

    # -- data ---------------------------------------------------------------------------------------

    def set_rows(self, rows: list[Row], *, containers: bool) -> None:
        key = self.rows[self.cursor].key if self.rows and self.cursor < len(self.rows) else None
        self.rows = rows
        self.containers = containers
        self._cache.clear()
        self._layout = None
        self.rendered_rows = 0
        idx = next((i for i, r in enumerate(rows) if r.key == key), None) if key else None
        self.cursor = idx if idx is not None else min(self.cursor, max(0, len(rows) - 1))
        self.virtual_size = Size(self.size.width, len(rows))
        self._keep_cursor_visible()
        self.refresh()

    @property
    def current(self) -> Row | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def layout(self) -> Layout:
        if self._layout is None or self._layout.width != self.size.width:
            self._layout = layout_for(self.size.width, self.containers)
            self._cache.clear()
        return self._layout

    # -- drawing ------------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        i = y + int(self.scroll_offset.y)
        width = self.size.width
        if i >= len(self.rows):
            return Strip.blank(width)
        lay = self.layout()
        strip = self._cache.get(i)
        if strip is None:
            strip = render_row(self.rows[i], lay)
            self._cache[i] = strip
            self.rendered_rows += 1
        if i == self.cursor:
            strip = strip.apply_style(_CURSOR)
        return strip

    def on_resize(self, event: Resize) -> None:
        self.virtual_size = Size(event.size.width, len(self.rows))
        self._cache.clear()

    # -- cursor -------------------------------------------------------------------------------------

    def _keep_cursor_visible(self) -> None:
        h = max(1, self.size.height)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + h:
            self.scroll_to(y=self.cursor - h + 1, animate=False)

    def _set_cursor(self, i: int) -> None:
        if not self.rows:
            self.cursor = 0
            return
        old, top = self.cursor, int(self.scroll_offset.y)
        self.cursor = max(0, min(len(self.rows) - 1, i))
        self._keep_cursor_visible()
        if int(self.scroll_offset.y) == top:
            # Only the two rows whose highlight changed are redrawn (scrolling redraws everything).
            self.refresh_line(old)
            self.refresh_line(self.cursor)
        else:
            self.refresh()

    def action_move(self, delta: int) -> None:
        self._set_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._set_cursor(self.cursor + direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        self._set_cursor(0 if where == 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        row = self.current
        if row is not None:
            self.post_message(self.Selected(row))

    def on_click(self, event: Click) -> None:
        self._set_cursor(event.y + int(self.scroll_offset.y))
        if event.chain == 2:
            self.action_select()
