"""The runtime registry: a runtime is one object behind one interface, found by detection, refining the
native view, carrying its own details to the JSON, the exporter and the drill-down.

The toy runtime below is registered by the test only; it shows what a new runtime (Node, CPython) gets
without touching the snapshot, the model or a presenter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeproc
import pytest
from rich.console import Console

from nativewatch.agent.exporter import make_registry
from nativewatch.agent.views import AgentView, ContainerLabels, ProcessView
from nativewatch.attribute import Attribution
from nativewatch.cpython.runtime import PYTHON
from nativewatch.go.runtime import GO
from nativewatch.jvm import attach
from nativewatch.jvm.runtime import JVM
from nativewatch.model import CATEGORIES, Breakdown
from nativewatch.node.runtime import NODE
from nativewatch.runtimes.base import (
    DetailGauge,
    DetailTable,
    ProcessInfo,
    RefineContext,
    Refinement,
    Runtime,
)
from nativewatch.runtimes.native import NATIVE
from nativewatch.runtimes.registry import detect, names, register, registered, runtime_named, unregister
from nativewatch.snapshot import gather_facts, take_snapshot
from nativewatch.tui.drill import drill_renderable


def _anon_arenas(details: dict[str, Any]) -> Iterator[tuple[str, float]]:
    for kind, n in details.get("toy", {}).get("by_kind", {}).items():
        yield kind, float(n)


class ToyRuntime(Runtime):
    """Claims the anonymous mappings of processes started as `toyrt …` as its heap."""

    name = "toy"
    gauges = (DetailGauge("nativewatch_toy_heap_bytes", "toy heap by mapping kind", "kind", _anon_arenas),)

    def detect(self, info: ProcessInfo) -> bool:
        return info.cmdline[:1] == ("toyrt",)

    def refine(self, ctx: RefineContext, base: Attribution) -> Refinement:
        cats = dict(base.categories)
        heap = sum(s.categories.get("native", 0) for s in base.shares if s.kind == "anon")
        cats["native"] -= heap
        cats["heap"] += heap
        # "categories" collides with a contract key: it must never reach the JSON.
        return Refinement(cats, (*base.sources, "toy-state"), ("toy: refined",),
                          {"toy": {"heap_bytes": heap, "by_kind": {"anon": heap}}, "categories": "bogus"})

    def missing_figures(self, bd: Breakdown) -> str | None:
        return None if "toy-state" in bd.sources else "toy runtime without its state"

    def details_table(self, details: dict[str, Any]) -> DetailTable | None:
        toy = details.get("toy")
        return DetailTable("Toy runtime heap", ("KIND", "BYTES"),
                           tuple((k, (int(v),)) for k, v in toy["by_kind"].items())) if toy else None


@pytest.fixture
def toy() -> Iterator[ToyRuntime]:
    rt = ToyRuntime()
    register(rt)
    try:
        yield rt
    finally:
        unregister(rt)


def _toy_proc(tmp_path: Path) -> str:
    proc = fakeproc.native("glibc-default")
    return fakeproc.build(tmp_path, fakeproc.FakeProcess(comm="toy", smaps=proc.smaps, cmdline=("toyrt", "app.js")))


def test_builtin_registry_order_and_fallback() -> None:
    assert registered() == (JVM, GO, NODE, PYTHON, NATIVE)
    assert names() == ("jvm", "go", "node", "python", "native")
    assert runtime_named("jvm") is JVM and runtime_named("go") is GO
    assert runtime_named("node") is NODE and runtime_named("python") is PYTHON
    # A name no runtime answers to any more (old evidence, another agent version) reads as native.
    assert runtime_named("ruby") is NATIVE
    assert JVM.needs_attach and not GO.needs_attach and not NATIVE.needs_attach
    assert GO.managed_heap is not None and JVM.managed_heap is None


def test_a_registered_runtime_is_detected_and_its_details_reach_the_json(tmp_path: Path, toy: ToyRuntime) -> None:
    root = _toy_proc(tmp_path)
    assert gather_facts(fakeproc.PID, root).runtime is toy
    doc = json.loads(json.dumps(take_snapshot(fakeproc.PID, proc_root=root, jvm=False, with_sites=False).to_json()))
    assert doc["runtime"] == "toy"
    assert doc["sources"] == ["smaps", "toy-state"]
    assert doc["problems"][-1] == "toy: refined"
    assert doc["toy"]["heap_bytes"] > 0 and doc["categories"]["heap"] == doc["toy"]["heap_bytes"]
    assert set(doc["categories"]) == set(CATEGORIES)  # the colliding "categories" detail was not applied
    assert sum(doc["categories"].values()) == doc["rss_bytes"]


def test_without_the_toy_the_same_process_is_native(tmp_path: Path) -> None:
    root = _toy_proc(tmp_path)
    bd = take_snapshot(fakeproc.PID, proc_root=root, jvm=False, with_sites=False)
    assert bd.runtime == "native" and bd.runtime_details == {} and "toy" not in bd.to_json()


def test_register_refuses_a_second_runtime_of_the_same_name(toy: ToyRuntime) -> None:
    with pytest.raises(ValueError):
        register(ToyRuntime())
    assert runtime_named("toy") is toy


def test_a_registered_runtime_gets_its_gauges_and_drill_down_table(tmp_path: Path, toy: ToyRuntime) -> None:
    bd = take_snapshot(fakeproc.PID, proc_root=_toy_proc(tmp_path), jvm=False, with_sites=False)
    view = AgentView(processes=(ProcessView(bd, ContainerLabels(), {}, False, bd.rss_bytes),))
    reg = make_registry(lambda: view)
    lbl = {"pid": str(fakeproc.PID), "comm": "toy", "runtime": "toy", "namespace": "", "pod": "",
           "container": "", "container_id": ""}
    assert reg.get_sample_value("nativewatch_toy_heap_bytes", {**lbl, "kind": "anon"}) == bd.categories["heap"]
    assert reg.get_sample_value("nativewatch_scrape_source_success", {"source": "toy"}) == 1
    console = Console(record=True, width=160)
    console.print(drill_renderable(bd, {}, {}, 60.0))
    text = console.export_text()
    # rich wraps a title wider than its table: look for the header and the row instead.
    assert "KIND" in text and "anon │ " in text and "toy runtime without its state" not in text


def test_missing_figures_note_comes_from_the_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_a: object, **_kw: object) -> str:
        raise AssertionError("a passive snapshot must not attach")

    monkeypatch.setattr(attach, "jcmd", never)
    root = fakeproc.build(tmp_path, fakeproc.jvm(17, hsperfdata=False))
    bd = take_snapshot(fakeproc.PID, proc_root=root, jvm=False, with_sites=False)
    assert bd.runtime == "jvm" and bd.sources == ["smaps"] and bd.runtime_details == {}
    note = JVM.missing_figures(bd)
    assert note is not None and "-XX:NativeMemoryTracking=summary" in note
    console = Console(record=True, width=200)
    console.print(drill_renderable(bd, {}, {}, 60.0))
    assert "-XX:NativeMemoryTracking=summary" in console.export_text()
    bd.sources = ["smaps", "nmt-detail"]
    assert JVM.missing_figures(bd) is None
    assert GO.missing_figures(bd) is None and NATIVE.missing_figures(bd) is None


def test_detection_of_the_fixtures(tmp_path: Path) -> None:
    for i, (proc, want) in enumerate([(fakeproc.jvm(25), JVM), (fakeproc.go("goprobe-nocgo"), GO),
                                      (fakeproc.native("jemalloc"), NATIVE)]):
        root = fakeproc.build(tmp_path / str(i), proc)
        assert gather_facts(fakeproc.PID, root).runtime is want
    # The JVM is found from its mappings before the executable is opened: a Go binary hosting libjvm.
    jvm_maps = gather_facts(fakeproc.PID, str(tmp_path / "0")).smaps.mappings
    assert detect(ProcessInfo(fakeproc.PID, str(tmp_path / "1"), "x", (), jvm_maps)) is JVM
