"""Entry counts of the process-wide caches, for the agent's self-metrics.

Every cache that lives as long as the process registers one function counting its entries, next to
the cache itself; the exporter reads `sizes()` so an unbounded cache shows up as a rising series
long before it costs memory or descriptors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

__all__ = ["register", "sizes"]

_counters: dict[str, Callable[[], int]] = {}


def register(name: str, count: Callable[[], int]) -> None:
    _counters[name] = count


def sizes() -> dict[str, int]:
    out: dict[str, int] = {}
    for name, count in list(_counters.items()):
        with contextlib.suppress(Exception):  # a cache mid-update is counted next time
            out[name] = int(count())
    return out
