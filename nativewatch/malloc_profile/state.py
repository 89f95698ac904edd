"""A small state file per running profile, so other nativewatch processes (snapshot, the agent) can
show a live profile's top sites without talking to it.

File: <state dir>/profile-<target pid>.json, written atomically (temp file + rename) by the profiling
process, removed when it ends. A reader trusts it only if the writer is still alive and is the same
process (its start time in /proc/<writer>/stat matches), so a SIGKILLed writer's leftover is ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nativewatch.sources.procstat import read_start_time

__all__ = ["state_dir", "state_path", "write_state", "remove_state", "running_top_sites"]


def state_dir() -> Path:
    env = os.environ.get("NATIVEWATCH_STATE_DIR")
    if env:
        return Path(env)
    return Path("/run/nativewatch") if os.geteuid() == 0 else Path(f"/tmp/nativewatch-{os.geteuid()}")


def state_path(pid: int, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"profile-{int(pid)}.json"


def write_state(pid: int, top_sites: list[dict[str, Any]], *, started: float, mode: str,
                interval_bytes: int, directory: Path | None = None) -> Path:
    path = state_path(pid, directory)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    me = os.getpid()
    doc = {"target_pid": pid, "writer_pid": me, "writer_start_time": read_start_time(me), "started": started,
           "mode": mode, "sampling_interval_bytes": interval_bytes, "top_sites": top_sites}
    tmp = path.with_name(f".{path.name}.{me}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def remove_state(pid: int, directory: Path | None = None) -> None:
    path = state_path(pid, directory)
    try:
        doc = json.loads(path.read_text())
        if doc.get("writer_pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_top_sites(pid: int, n: int = 10, *, directory: Path | None = None) -> list[dict] | None:
    """Top sites of the live profile of pid, or None when no profile of pid is running."""
    try:
        doc = json.loads(state_path(pid, directory).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("target_pid") != pid:
        return None
    writer = doc.get("writer_pid")
    if not isinstance(writer, int) or writer <= 0:
        return None
    started = read_start_time(writer)
    if started is None or started != doc.get("writer_start_time"):
        return None
    sites = doc.get("top_sites")
    if not isinstance(sites, list):
        return None
    return [s for s in sites if isinstance(s, dict)][:n]
