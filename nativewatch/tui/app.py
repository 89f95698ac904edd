"""`nativewatch top` as a full-screen Textual app: the process/container table and the drill-down.

Why Textual: it diffs what it draws (no flicker at a 1-2 s refresh), has a line API so only visible rows
are rendered, and ships a headless pilot the tests drive. Scans and profiles run in daemon threads and
hand finished results to the UI thread, so keys stay responsive during a slow scan and quitting never
waits for one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from nativewatch.errors import AccessDenied, NativewatchError, ProcessGone
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.runtimes.registry import runtime_named
from nativewatch.tracker import Tracker
from nativewatch.tui.collect import Collector, Frame
from nativewatch.tui.drill import drill_renderable
from nativewatch.tui.render import header_text, legend_text, printable
from nativewatch.tui.state import FILTERS, SORTS, Row, ViewState, select_rows
from nativewatch.tui.table import RowTable

__all__ = ["TopApp", "MainScreen", "DrillScreen"]


def _spawn(target: Callable[[], None], name: str) -> threading.Thread:
    th = threading.Thread(target=target, name=name, daemon=True)
    th.start()
    return th


class DrillScreen(Screen):
    """One process: its categories now and over time, NMT figures, and native sites from a profile."""

    BINDINGS = [
        Binding("escape,backspace,left", "back", "Back"),
        Binding("p", "profile", "Profile sites"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    DrillScreen #drill-title { height: 1; background: $primary-background; }
    DrillScreen VerticalScroll { height: 1fr; }
    """

    def __init__(self, pid: int, app_ref: TopApp) -> None:
        super().__init__()
        self.pid = pid
        self.top = app_ref
        table = app_ref.collector.tracker
        # Its own series (the drill-down attaches to JVMs, the table may not), judged the table's way.
        self.tracker = Tracker(table.policy, max_points=table.history.max_points,
                               min_spacing_s=table.history.min_spacing_s)
        self.last: Breakdown | None = None
        self.gone = False
        self.profile_status = ""
        self.profile_sites: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._busy = False
        self._profiling = False
        self._seeded = False
        self.title_bar = Static(f" nativewatch top › pid {pid}", id="drill-title")
        self.body = Static("reading…", id="drill-body")

    def compose(self) -> ComposeResult:
        yield self.title_bar
        with VerticalScroll():
            yield self.body
        yield Footer()

    @property
    def _live(self) -> bool:
        # Results from threads can arrive while the screen is being taken down (its children first).
        return self.is_mounted and self.body.is_mounted

    def on_mount(self) -> None:
        self.set_interval(self.top.refresh_s, self._tick)
        self._tick()

    def on_unmount(self) -> None:
        self._stop.set()

    def action_back(self) -> None:
        self._stop.set()
        self.app.pop_screen()

    # -- sampling -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._busy or self.gone:
            return
        self._busy = True
        _spawn(self._sample, f"drill-{self.pid}")

    def _sample(self) -> None:
        try:
            bd = self.top.collector.drill(self.pid)
            err = None
        except ProcessGone:
            bd, err = None, "process exited"
        except (AccessDenied, NativewatchError, OSError) as exc:
            bd, err = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a drill-down must show a failure, not kill the UI
            bd, err = None, f"{type(exc).__name__}: {exc}"
        self.top.post_from_thread(lambda: self._apply(bd, err))

    def _apply(self, bd: Breakdown | None, err: str | None) -> None:
        self._busy = False
        if not self._live:  # the user left the drill-down while this sample was being taken
            return
        if bd is None:
            self.gone = err == "process exited"
            body = f"pid {self.pid}: {printable(err or '')}"
            if self.last is not None:
                body += f"\nlast seen: {printable(self.last.comm)}, RSS {self.last.rss_bytes:,} B"
            self.body.update(Text(body))  # Text, never markup
            return
        if not self._seeded:
            self._seeded = True
            # The table's history has the same categories unless the scan saw this process without the
            # attach its runtime needs (a JVM without NMT).
            if not runtime_named(bd.runtime).needs_attach or self.top.collector.jvm:
                ts, series = self.top.collector.process_series(self.pid)
                for i, t in enumerate(ts):
                    if t < bd.timestamp:
                        self.tracker.observe("pid", t, series["rss"][i], {c: series[c][i] for c in CATEGORIES})
        self.tracker.observe("pid", bd.timestamp, bd.rss_bytes, bd.categories)
        self.last = bd
        self._render_body()

    def _render_body(self) -> None:
        bd = self.last
        if bd is None or not self._live:
            return
        ts, hist = self.tracker.series("pid")
        growth = self.tracker.category_growth("pid")
        span = ts[-1] - ts[0] if len(ts) > 1 else 0.0
        row = self.top.row_for_pid(self.pid)
        live_sites = bd.extra.get("top_sites")
        if live_sites:
            sites, title = live_sites, "top native allocation sites (live profile)"
        elif self.profile_sites:
            sites, title = self.profile_sites, "top native allocation sites (last profile)"
        else:
            sites, title = None, ""
        self.body.update(drill_renderable(
            bd, growth, hist, span, oom_eta_s=row.oom_eta_s if row else None, sites=sites, sites_title=title,
            profile_status=self.profile_status))
        self.title_bar.update(Text(
            f" nativewatch top › pid {bd.pid} ({printable(bd.comm)}) — {len(ts)} samples — esc back, p profile, "
            "q quit"))

    # -- profiling ----------------------------------------------------------------------------------

    def action_profile(self) -> None:
        if self._profiling:
            return
        self._profiling = True
        duration = self.top.profile_s
        self.profile_status = f"profile: attaching eBPF probes to pid {self.pid}…"
        self._render_body()
        started = [0.0]

        def attached() -> None:
            started[0] = time.monotonic()
            self.top.post_from_thread(lambda: self._set_profile_status(
                f"profile running ({duration:.0f}s, sampled): sites update every refresh"))

        def work() -> None:
            try:
                res = self.top.collector.profile(self.pid, duration, stop=self._stop, on_attached=attached)
                sites = [s.to_json() for s in res.sites[:10]]
                status = (f"profile done: {len(res.sites)} sites over {res.duration_s:.0f}s "
                          f"(lost events {res.lost.get('events', 0)})")
            except ProcessGone:
                sites, status = [], "profile stopped: the process exited"
            except Exception as exc:  # noqa: BLE001 - eBPF missing, no permission, ...: show why
                sites, status = [], f"profile failed: {exc}"
            self.top.post_from_thread(lambda: self._profile_done(sites, status))

        _spawn(work, f"profile-{self.pid}")

    def _set_profile_status(self, text: str) -> None:
        self.profile_status = text
        self._render_body()

    def _profile_done(self, sites: list[dict[str, Any]], status: str) -> None:
        self._profiling = False
        if sites:
            self.profile_sites = sites
        self._set_profile_status(status)


class SearchBox(Input):
    """The `/` box. Enter is handled in key order, and keys that reach the box after it go back to the app.

    Textual routes a key to whichever widget has focus when the *app* receives it, so a key typed right
    after Enter (a fast typist, a multiplexer replaying keys) is already queued here when Enter closes
    the box. Re-posting it lets the app route it to the table, in order.
    """

    def __init__(self, on_enter: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_enter = on_enter
        self.closed = True

    def open(self, value: str) -> None:
        self.closed = False
        self.value = value
        self.focus()

    async def _on_key(self, event: events.Key) -> None:
        if self.closed:
            event.stop()
            event.prevent_default()
            if self.screen.focused is not self:  # never bounce a key back to ourselves
                self.app.post_message(events.Key(event.key, event.character))
            return
        if event.key == "enter":
            # Here, not through the "enter" binding: bindings run only once the key has bubbled back
            # up to the app, after the keys typed behind it were already routed to this box.
            event.stop()
            event.prevent_default()
            await self.action_submit()
            return
        await super()._on_key(event)

    async def action_submit(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_enter(self.value)
        await super().action_submit()


class MainScreen(Screen):
    """The table. Its keys (sort, filter, search, view) only act here, not in the drill-down."""

    BINDINGS = [
        Binding("q", "app.quit", "Quit"),
        Binding("slash", "search", "Search"),
        Binding("s", "sort(1)", "Sort"),
        Binding("S", "sort(-1)", "Sort back", show=False),
        Binding("r", "reverse", "Reverse"),
        Binding("f", "filter", "Filter"),
        Binding("c,tab", "toggle_view", "Procs/containers"),
        Binding("escape", "clear_search", "Clear search", show=False),
    ]
    DEFAULT_CSS = """
    MainScreen #status { height: 1; background: $primary-background; }
    MainScreen #legend { height: 1; }
    MainScreen #colhead { height: 1; }
    MainScreen RowTable { height: 1fr; scrollbar-size-vertical: 1; }
    MainScreen #search { dock: bottom; display: none; height: 3; }
    MainScreen #search.visible { display: block; }
    """

    def __init__(self, top: TopApp) -> None:
        super().__init__()
        self.top = top
        self.status = Static(" nativewatch top — scanning…", id="status")
        self.colhead = Static("", id="colhead")
        self.table = RowTable(id="table")
        self.search_box = SearchBox(self._search_entered,
                                    placeholder="search name, command line, pid or container (re: for a regex)",
                                    id="search")

    def compose(self) -> ComposeResult:
        yield self.status
        yield Static(legend_text(), id="legend")
        yield self.colhead
        yield self.table
        yield self.search_box
        yield Footer()

    def on_mount(self) -> None:
        self.table.focus()

    def show(self) -> None:
        top = self.top
        rows = top.visible_rows()
        self.table.set_rows(rows, containers=top.view.containers)
        self.colhead.update(header_text(self.table.layout(), top.view.sort, top.view.reverse))
        v = top.view
        f = top.frame
        what = "containers" if v.containers else "processes"
        total = (len(f.containers) if v.containers else len(f.processes)) if f else 0
        leaking = sum(1 for r in (f.processes if f else []) if r.leak)
        parts = [f" {what} {len(rows)}/{total}", f"sort {v.sort}{'▲' if v.reverse else '▼'}",
                 f"filter {v.filter}"]
        if v.search:
            parts.append(f"search '{v.search}'")
        if f:
            parts.append(f"leaking {leaking}")
            parts.append(f"scan {f.scan_s:.2f}s every {top.refresh_s:g}s")
            if f.errors:
                parts.append("skipped " + ",".join(f"{k}={n}" for k, n in f.errors.items()))
        if f and not top.collector.jvm and any(runtime_named(r.runtime).needs_attach for r in f.processes):
            parts.append("JVMs shown without NMT (--jvm splits heap/direct/...; Enter always does)")
        if top.scan_error:
            parts.append(top.scan_error)
        self.status.update(Text(printable("  │  ".join(parts)), no_wrap=True, overflow="ellipsis"))

    def on_resize(self) -> None:
        self.show()

    # -- actions ------------------------------------------------------------------------------------

    def action_sort(self, step: int) -> None:
        v = self.top.view
        v.sort = SORTS[(SORTS.index(v.sort) + step) % len(SORTS)]
        v.reverse = False
        self.show()

    def action_reverse(self) -> None:
        self.top.view.reverse = not self.top.view.reverse
        self.show()

    def action_filter(self) -> None:
        v = self.top.view
        v.filter = FILTERS[(FILTERS.index(v.filter) + 1) % len(FILTERS)]
        self.show()

    def action_toggle_view(self) -> None:
        self.top.view.containers = not self.top.view.containers
        self.show()

    def action_search(self) -> None:
        self.search_box.add_class("visible")
        self.search_box.open(self.top.view.search)

    def _back_to_table(self) -> None:
        self.search_box.closed = True
        self.search_box.remove_class("visible")
        self.set_focus(self.table)

    def _search_entered(self, value: str) -> None:
        self.top.view.search = value
        self._back_to_table()
        self.show()

    def action_clear_search(self) -> None:
        self.search_box.value = ""
        self.top.view.search = ""
        self._back_to_table()
        self.show()

    def on_input_changed(self, event: Input.Changed) -> None:
        if not self.search_box.closed:  # a late Changed after Enter must not undo the search
            self.top.view.search = event.value
            self.show()

    def on_row_table_selected(self, event: RowTable.Selected) -> None:
        row = event.row
        if row.pid is None:
            # A container: show its processes.
            self.top.view.containers = False
            self.top.view.search = row.container if row.container != "host" else ""
            self.show()
            return
        self.app.push_screen(DrillScreen(row.pid, self.top))


class TopApp(App):
    """The live table of processes (or containers) with their categories, growth and verdicts."""

    TITLE = "nativewatch top"

    def __init__(self, collector: Collector, *, refresh_s: float = 2.0, view: ViewState | None = None,
                 profile_s: float = 30.0) -> None:
        super().__init__()
        self.collector = collector
        self.refresh_s = refresh_s
        self.view = view or ViewState()
        self.profile_s = profile_s
        self.frame: Frame | None = None
        self.frames = 0  # frames applied (tests wait on it)
        self.scan_error = ""
        self._scanning = False
        self.main = MainScreen(self)

    def get_default_screen(self) -> Screen:
        return self.main

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self._tick)
        self._tick()

    def post_from_thread(self, fn: Callable[[], None]) -> None:
        """Run fn on the UI thread; silently dropped when the app has already exited."""
        # NoMatches: the widget the result was for is being removed right now (a screen popped).
        with contextlib.suppress(RuntimeError, NoMatches):
            self.call_from_thread(fn)

    # -- scanning -----------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._scanning:
            return  # a scan slower than the refresh: skip this tick rather than pile up threads
        self._scanning = True
        _spawn(self._scan, "scan")

    def _scan(self) -> None:
        try:
            frame, err = self.collector.collect(), ""
        except Exception as exc:  # noqa: BLE001 - shown in the status line; the next tick retries
            frame, err = None, f"scan failed: {type(exc).__name__}: {exc}"
        self.post_from_thread(lambda: self._apply(frame, err))

    def _apply(self, frame: Frame | None, err: str) -> None:
        self._scanning = False
        self.scan_error = err
        if frame is not None:
            self.frame = frame
            self.frames += 1
        self.main.show()

    def row_for_pid(self, pid: int) -> Row | None:
        if self.frame is None:
            return None
        return next((r for r in self.frame.processes if r.pid == pid), None)

    def visible_rows(self) -> list[Row]:
        if self.frame is None:
            return []
        return select_rows(self.frame.containers if self.view.containers else self.frame.processes, self.view)
