"""Full-screen `nativewatch top` (Textual). `run_top` is the entry point used by `cmd_top`."""

from __future__ import annotations

import os

from nativewatch.growth import GrowthPolicy
from nativewatch.tui.collect import Collector
from nativewatch.tui.state import ViewState

__all__ = ["run_top"]


def run_top(*, proc_root: str = "/proc", jvm: bool = False, refresh_s: float = 2.0, sort: str = "rss",
            containers: bool = False, profile_s: float = 30.0, policy: GrowthPolicy | None = None) -> None:
    from nativewatch.tui.app import TopApp  # Textual is imported only when a terminal UI is wanted

    # Textual sizes the screen with shutil.get_terminal_size(), which believes exported COLUMNS/LINES
    # over the terminal (and keeps believing them on SIGWINCH). A full-screen app must follow the tty:
    # a stale export (some shells and multiplexers pass one on) would freeze the UI at the wrong size.
    for var in ("COLUMNS", "LINES"):
        os.environ.pop(var, None)
    collector = Collector(proc_root=proc_root, jvm=jvm, policy=policy or GrowthPolicy())
    TopApp(collector, refresh_s=refresh_s, view=ViewState(sort=sort, containers=containers),
           profile_s=profile_s).run()
