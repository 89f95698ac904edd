"""The agent's embedded history: one SQLite file in the state dir, pruned to a retention window.

Rows are compact JSON per process / container per `history_interval_s`, plus an index of evidence
files, so `top` and `evidence` work on a lone machine with no other service. Readers open the file
read-only and never block the writer (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["HistoryStore", "STORE_FILE", "open_store"]

STORE_FILE = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS process_samples (
    ts REAL NOT NULL, pid INTEGER NOT NULL, comm TEXT NOT NULL, container_id TEXT NOT NULL,
    rss_bytes INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS process_samples_ts ON process_samples(ts);
CREATE INDEX IF NOT EXISTS process_samples_pid ON process_samples(pid, ts);
CREATE TABLE IF NOT EXISTS container_samples (
    ts REAL NOT NULL, container_id TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS container_samples_ts ON container_samples(ts);
CREATE TABLE IF NOT EXISTS evidence (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, pid INTEGER, comm TEXT,
    dominant_category TEXT, path TEXT NOT NULL);
"""


def open_store(state_dir: Path, *, retention_s: float) -> tuple[HistoryStore, str | None]:
    """Open (or make) the writable store. A file that is not a healthy SQLite database (torn by a
    crash, overwritten, truncated) is moved aside and a new one made: history is a convenience, and
    an agent that refused to start over it would lose the node's OOM post-mortems. Returns the store
    and, when that happened, one sentence saying so (the caller says it once)."""
    try:
        store = HistoryStore(state_dir, retention_s=retention_s)
        if store.healthy():
            return store, None
        store.close()
        why = "integrity check failed"
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        why = str(exc)
    path = Path(state_dir) / STORE_FILE
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{STORE_FILE}.corrupt-{stamp}")
    path.replace(aside)
    for suffix in ("-wal", "-shm"):  # the old file's journal belongs to it, not to the new one
        side = path.with_name(STORE_FILE + suffix)
        if side.exists():
            side.replace(aside.with_name(aside.name + suffix))
    store = HistoryStore(state_dir, retention_s=retention_s)
    return store, f"history database {path} was unreadable ({why}); moved aside to {aside.name}, a new one was made"


class HistoryStore:
    def __init__(self, state_dir: Path, *, retention_s: float, readonly: bool = False) -> None:
        self.path = Path(state_dir) / STORE_FILE
        self.retention_s = retention_s
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        self._last_prune = 0.0

    def close(self) -> None:
        self.db.close()

    def healthy(self) -> bool:
        """SQLite's own page-level check (quick_check: every page and index, no cross-checks)."""
        try:
            row = self.db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError:
            return False
        return row is not None and row[0] == "ok"

    def add_processes(self, ts: float, docs: Iterable[dict[str, Any]]) -> None:
        rows = [(ts, int(d["pid"]), str(d.get("comm", "")), (d.get("container") or {}).get("id") or "",
                 int(d.get("rss_bytes", 0)), json.dumps(d, separators=(",", ":"))) for d in docs]
        with self.db:
            self.db.executemany("INSERT INTO process_samples VALUES (?,?,?,?,?,?)", rows)

    def add_containers(self, ts: float, docs: Iterable[dict[str, Any]]) -> None:
        rows = [(ts, str(d.get("id", "")), json.dumps(d, separators=(",", ":"))) for d in docs]
        with self.db:
            self.db.executemany("INSERT INTO container_samples VALUES (?,?,?)", rows)

    def add_evidence(self, ev_id: str, ts: float, kind: str, pid: int | None, comm: str | None,
                     dominant_category: str | None, path: Path) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO evidence VALUES (?,?,?,?,?,?,?)",
                            (ev_id, ts, kind, pid, comm, dominant_category, str(path)))

    def prune(self, now: float | None = None, *, every_s: float = 60.0) -> int:
        """Drop rows older than the retention window (at most once per `every_s`); returns rows deleted."""
        now = time.time() if now is None else now
        if now - self._last_prune < every_s:
            return 0
        self._last_prune = now
        cutoff = now - self.retention_s
        with self.db:
            n = self.db.execute("DELETE FROM process_samples WHERE ts < ?", (cutoff,)).rowcount
            n += self.db.execute("DELETE FROM container_samples WHERE ts < ?", (cutoff,)).rowcount
        return n

    def latest_processes(self) -> list[dict[str, Any]]:
        """The newest row of every pid seen in the most recent write."""
        row = self.db.execute("SELECT MAX(ts) FROM process_samples").fetchone()
        if row is None or row[0] is None:
            return []
        cur = self.db.execute("SELECT doc FROM process_samples WHERE ts = ? ORDER BY rss_bytes DESC", (row[0],))
        return [json.loads(d) for (d,) in cur]

    def process_history(self, pid: int, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        cur = self.db.execute("SELECT ts, doc FROM process_samples WHERE pid = ? AND ts >= ? ORDER BY ts",
                              (pid, since))
        return [(ts, json.loads(d)) for ts, d in cur]

    def evidence(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT id, ts, kind, pid, comm, dominant_category, path FROM evidence ORDER BY ts")
        keys = ("id", "ts", "kind", "pid", "comm", "dominant_category", "path")
        return [dict(zip(keys, r, strict=True)) for r in cur]

    def count(self, table: str) -> int:
        if table not in {"process_samples", "container_samples", "evidence"}:
            raise ValueError(table)
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
