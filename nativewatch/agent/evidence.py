"""Evidence files: one JSON document per OOM kill or auto-capture, written atomically to the evidence dir.

An OOM post-mortem holds what the victim was made of at its last scan, its category history over the
growth window, the growth verdicts, the top resident-growth stacks, NMT and native sites when known, and
`dominant_category`: the category that grew most over the window, else the largest one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativewatch.model import CATEGORIES

__all__ = ["EvidenceSummary", "dominant_category", "evidence_id", "write_evidence", "list_evidence",
           "load_evidence", "EVIDENCE_SCHEMA"]

EVIDENCE_SCHEMA = 1
_ID_RE = re.compile(r"^[a-z-]+-\d{8}T\d{6}-\d+(?:-\d+)?$")


@dataclass(frozen=True, slots=True)
class EvidenceSummary:
    id: str
    kind: str
    time: float
    pid: int | None
    comm: str
    dominant_category: str | None
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "time": self.time, "pid": self.pid, "comm": self.comm,
                "dominant_category": self.dominant_category, "path": str(self.path)}


def dominant_category(history: Sequence[Mapping[str, int]], last: Mapping[str, int] | None) -> str | None:
    """Category with the largest rise from the first to the last point of `history` (a rise > 0);
    otherwise the largest category of `last` (or of the last history point)."""
    if len(history) >= 2:
        first, final = history[0], history[-1]
        rises = {c: int(final.get(c, 0)) - int(first.get(c, 0)) for c in CATEGORIES}
        best = max(CATEGORIES, key=lambda c: rises[c])
        if rises[best] > 0:
            return best
    ref = last if last else (history[-1] if history else None)
    if not ref:
        return None
    best = max(CATEGORIES, key=lambda c: int(ref.get(c, 0)))
    return best if int(ref.get(best, 0)) > 0 else None


def evidence_id(kind: str, ts: float, pid: int | None) -> str:
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ts))}-{pid if pid is not None else 0}"


def write_evidence(directory: Path, doc: dict[str, Any]) -> Path:
    """Write `doc` (must hold "id") as <dir>/<id>.json atomically; a clashing id gets a -N suffix."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = doc["id"]
    ev_id, n = base, 1
    while (directory / f"{ev_id}.json").exists():
        n += 1
        ev_id = f"{base}-{n}"
    doc = {**doc, "id": ev_id, "schema": EVIDENCE_SCHEMA}
    path = directory / f"{ev_id}.json"
    tmp = directory / f".{ev_id}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def _summary(path: Path, doc: Mapping[str, Any]) -> EvidenceSummary:
    pid = doc.get("pid")
    return EvidenceSummary(id=str(doc.get("id", path.stem)), kind=str(doc.get("kind", "?")),
                           time=float(doc.get("time", 0.0)), pid=pid if isinstance(pid, int) else None,
                           comm=str(doc.get("comm", "")), dominant_category=doc.get("dominant_category"),
                           path=path)


def list_evidence(directory: Path) -> tuple[list[EvidenceSummary], list[str]]:
    """Every evidence file, oldest first, plus one problem line per unreadable file."""
    out: list[EvidenceSummary] = []
    problems: list[str] = []
    try:
        paths = sorted(Path(directory).glob("*.json"))
    except OSError as exc:
        return [], [f"{directory}: {exc}"]
    for p in paths:
        try:
            doc = json.loads(p.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            out.append(_summary(p, doc))
        except (OSError, ValueError) as exc:
            problems.append(f"{p.name}: {exc}")
    out.sort(key=lambda s: (s.time, s.id))
    return out, problems


def load_evidence(directory: Path, ev_id: str) -> dict[str, Any]:
    """The document of one evidence id; FileNotFoundError if there is none, ValueError for a bad id."""
    if not _ID_RE.match(ev_id):
        raise ValueError(f"not an evidence id: {ev_id!r}")
    doc = json.loads((Path(directory) / f"{ev_id}.json").read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{ev_id}: not a JSON object")
    return doc
