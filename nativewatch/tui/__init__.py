"""Full-screen `nativewatch top` (Textual). `run_top` is the entry point used by `cmd_top`."""

from __future__ import annotations

from nativewatch.tui.collect import Collector
from nativewatch.tui.state import GrowthPolicy, ViewState

__all__ = ["run_top"]


def run_top(*, proc_root: str = "/proc", jvm: bool = False, refresh_s: float = 2.0, sort: str = "rss",
            containers: bool = False, profile_s: float = 30.0, policy: GrowthPolicy | None = None) -> None:
    from nativewatch.tui.app import TopApp  # Textual is imported only when a terminal UI is wanted

    collector = Collector(proc_root=proc_root, jvm=jvm, policy=policy)
    TopApp(collector, refresh_s=refresh_s, view=ViewState(sort=sort, containers=containers),
           profile_s=profile_s).run()
