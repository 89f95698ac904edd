"""Native allocation sites with eBPF (issue 3): outstanding malloc/mmap memory per call stack.

Public API: run_profile(), ProfileResult, Site, write_pprof(), Symbolizer; the live-profile state
reader is nativewatch.malloc_profile.state.running_top_sites().
"""

from __future__ import annotations

from nativewatch.malloc_profile.pprof import write_pprof
from nativewatch.malloc_profile.result import ProfileResult, Site
from nativewatch.malloc_profile.runner import DEFAULT_INTERVAL, run_profile
from nativewatch.malloc_profile.symbolize import Symbolizer

__all__ = ["run_profile", "ProfileResult", "Site", "write_pprof", "Symbolizer", "DEFAULT_INTERVAL"]
