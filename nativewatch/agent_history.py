"""The node agent's growth history of one process, for commands that would otherwise have to wait for
their own: `explain` judges growth from the agent's verdicts (hours of history, the agent's policy)
when the agent watches the process, and from its own sampling otherwise.

Read from the agent's /api/v1/snapshot (the DESIGN contract: each process with a `growth` object per
category). A pid can be reused: the agent's `comm` for it must match the process's own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from nativewatch.growth import FloorFit, LeakVerdict
from nativewatch.model import CATEGORIES

__all__ = ["AgentHistory", "agent_history", "verdict_from_json", "DEFAULT_AGENT_URL"]

DEFAULT_AGENT_URL = "http://127.0.0.1:9847"


@dataclass(frozen=True, slots=True)
class AgentHistory:
    growth: dict[str, LeakVerdict]
    window_s: float   # the longest window any category's verdict covers
    samples: int
    url: str


def _num(v: object, default: float = 0.0) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else default


def verdict_from_json(d: object) -> LeakVerdict | None:
    """A growth object (tracker.verdict_json) back into a verdict; None for anything else."""
    if not isinstance(d, dict) or "bytes_per_second" not in d:
        return None
    fit = FloorFit(_num(d.get("bytes_per_second")), _num(d.get("window_s")), int(_num(d.get("samples"))),
                   _num(d.get("fit")), 0.0, 0)
    return LeakVerdict(d.get("leak") is True, str(d.get("reason", "")), fit, str(d.get("tier", "window")))


def parse_snapshot(data: bytes, pid: int, comm: str) -> tuple[dict[str, LeakVerdict], float, int] | None:
    try:
        doc: Any = json.loads(data)
    except ValueError:
        return None
    procs = doc.get("processes") if isinstance(doc, dict) else None
    if not isinstance(procs, list):
        return None
    for p in procs:
        if not isinstance(p, dict) or p.get("pid") != pid:
            continue
        if comm and p.get("comm") not in (comm, None):
            return None  # the pid was reused since the agent saw it
        raw = p.get("growth")
        if not isinstance(raw, dict):
            return None
        growth = {c: v for c in CATEGORIES if (v := verdict_from_json(raw.get(c))) is not None}
        if not growth:
            return None
        return growth, max(v.window_s for v in growth.values()), max(v.fit.samples for v in growth.values())
    return None


def agent_history(pid: int, comm: str, url: str = DEFAULT_AGENT_URL, timeout_s: float = 3.0) -> AgentHistory | None:
    """The agent's verdicts for pid, None when no agent answers or it does not watch the process."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/snapshot", timeout=timeout_s) as resp:
            data = resp.read(64 << 20)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    parsed = parse_snapshot(data, pid, comm)
    if parsed is None:
        return None
    growth, window, samples = parsed
    return AgentHistory(growth, window, samples, url)
