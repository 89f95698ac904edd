"""`snapshot --json` of captured processes (native, Go, JVMs on every NMT path) against golden files.

The golden files were written by the code before runtimes became plug-ins; any change in a key, a value
or key order of the JSON contract shows up here. Regenerate (only for an intended contract change) with
NATIVEWATCH_WRITE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import fakeproc
import pytest
from conftest import SAMPLES

from nativewatch.jvm import attach
from nativewatch.snapshot import take_snapshot

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "snapshots"


def _text(name: str) -> str:
    return (SAMPLES / name).read_text()


def _replies(**by_command: str | Exception) -> Callable[..., str]:
    """A stand-in for attach.jcmd answering from captured jcmd output (no process is ever signalled)."""

    def jcmd(pid: int, command_line: str, **_kw: object) -> str:
        reply = by_command.get(command_line.split()[-1], attach.AttachError(f"unexpected {command_line!r}"))
        if isinstance(reply, Exception):
            raise reply
        return reply

    return jcmd


_OFF = "Native memory tracking is not enabled\n"

# name -> (process, jcmd replies or None for passive mode)
SCENARIOS: dict[str, tuple[fakeproc.FakeProcess, dict[str, str | Exception] | None]] = {
    "native-glibc": (fakeproc.native("glibc-default"), None),
    "native-jemalloc": (fakeproc.native("jemalloc"), None),
    "native-container": (fakeproc.native("tcmalloc", cgroup=fakeproc.K8S_CGROUP), None),
    "go-cgo": (fakeproc.go("goprobe"), None),
    "go-nocgo": (fakeproc.go("goprobe-nocgo"), None),
    **{f"jvm{v}-passive": (fakeproc.jvm(v), None) for v in (11, 17, 21, 25)},
    **{f"jvm{v}-detail": (fakeproc.jvm(v), {"detail": _text(f"jdk{v}-detail.txt")}) for v in (11, 17, 21, 25)},
    "jvm17-summary": (fakeproc.jvm(17), {"detail": _text("jdk17-summary.txt"),
                                         "summary": _text("jdk17-summary.txt")}),
    "jvm25-summary-system-map": (fakeproc.jvm(25), {"detail": _text("jdk25-summary.txt"),
                                                    "summary": _text("jdk25-summary.txt"),
                                                    "System.map": _text("jdk25-System.map.txt")}),
    "jvm17-nmt-off": (fakeproc.jvm(17), {"detail": _OFF}),
    "jvm21-attach-fails": (fakeproc.jvm(21), {"detail": attach.AttachError("connection refused")}),
    "jvm11-no-hsperfdata": (fakeproc.jvm(11, hsperfdata=False), {"detail": attach.AttachError("refused")}),
}


def snapshot_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    proc, replies = SCENARIOS[name]
    root = fakeproc.build(tmp_path, proc)
    monkeypatch.setattr(attach, "jcmd", _replies(**(replies or {})))
    bd = take_snapshot(fakeproc.PID, proc_root=root, jvm=replies is not None, with_sites=False)
    doc = bd.to_json()
    doc["timestamp"] = 0.0  # the only field that depends on when the test runs
    return json.dumps(doc, indent=1) + "\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_snapshot_json_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    got = snapshot_json(tmp_path, monkeypatch, name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("NATIVEWATCH_WRITE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    doc = json.loads(got)
    assert sum(doc["categories"].values()) == doc["rss_bytes"]
    assert got == path.read_text()


@pytest.mark.parametrize("name", ["jvm17-detail", "jvm25-passive", "go-cgo"])
def test_nmt_metric_family_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from prometheus_client.exposition import generate_latest

    from nativewatch.agent.exporter import make_registry
    from nativewatch.agent.views import AgentView, ContainerLabels, ProcessView

    proc, replies = SCENARIOS[name]
    root = fakeproc.build(tmp_path, proc)
    monkeypatch.setattr(attach, "jcmd", _replies(**(replies or {})))
    bd = take_snapshot(fakeproc.PID, proc_root=root, jvm=replies is not None, with_sites=False)
    view = AgentView(processes=(ProcessView(bd, ContainerLabels(), {}, False, bd.rss_bytes),))
    reg = make_registry(lambda: view)
    # The family is rendered by the scrape source named "jvm" (its duration/success series keep that label).
    assert reg.get_sample_value("nativewatch_scrape_source_success", {"source": "jvm"}) == 1
    text = generate_latest(reg).decode()
    got = "".join(ln + "\n" for ln in text.splitlines() if "nativewatch_jvm_nmt_committed_bytes" in ln)
    path = GOLDEN / f"{name}.nmt-metrics.txt"
    if os.environ.get("NATIVEWATCH_WRITE_GOLDEN") == "1":
        path.write_text(got)
    assert got == path.read_text()
