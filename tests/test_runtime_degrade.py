"""Builds that look like Node or CPython but whose heap nativewatch cannot find (issue 15): the answer is
today's native one with a `problems` entry, never a split made from planted look-alikes.

tests/programs/fake_runtime.c exports the marker symbols (N-API; _PyRuntime and Py_Version) the way
the interpreters do, holds 64 MiB of malloc'd memory, and plants consistent V8 page headers in its
main thread's stack, a shared anonymous mapping and a private file mapping, plus an "arena table"
pointing at the shared mapping. Only malloc-pool memory may ever be claimed, so none of it counts.
The control plants the same header in a private anonymous mapping too, and that one page is heap.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import build_c

MIB = 1 << 20


def _snapshots(nativewatch_cli, *defines: str, at_age_s: tuple[float, ...] = (0.0,)) -> list[dict]:
    """Snapshots of the program taken once it is each of `at_age_s` seconds old."""
    exe = build_c("fake_runtime.c", name="fake_runtime", cflags=["-O1", *(f"-D{d}" for d in defines)],
                  ldflags=["-rdynamic"])
    t0 = time.monotonic()
    p = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
    out = []
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
        for age in at_age_s:
            time.sleep(max(0.0, t0 + age - time.monotonic()))
            r = nativewatch_cli("snapshot", "--pid", str(p.pid), "--json")
            assert r.returncode == 0, r.stderr
            out.append(json.loads(r.stdout))
        return out
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("variant,runtime,starting,problem", [
    ("FAKE_NODE", "node", "no V8 heap page yet", "no V8 heap page recognised"),
    ("FAKE_PYTHON", "python", "arena table not found yet", "arena table not found in the interpreter's data"),
])
def test_a_look_alike_runtime_degrades_to_native_with_a_problem(variant, runtime, starting, problem,
                                                                 nativewatch_cli):
    # right after exec the runtime may not have made its heap yet, and says so; after 3 s it is unknown
    young, snap = _snapshots(nativewatch_cli, variant, at_age_s=(0.0, 3.5))
    assert any(starting in x for x in young["problems"]), young["problems"]
    assert young["categories"]["heap"] == 0
    cats = snap["categories"]
    assert snap["runtime"] == runtime, snap
    assert any(problem in x for x in snap["problems"]), snap["problems"]
    assert cats["heap"] == 0 and cats["code"] < 4 * MIB, cats
    assert cats["native"] >= 64 * MIB and cats["thread"] >= 768 * 1024 and cats["shmem"] >= 16 * MIB, cats
    assert sum(cats.values()) == snap["rss_bytes"]
    assert "v8-pages" not in snap["sources"] and "pymalloc" not in snap["sources"]


def test_control_the_same_header_in_private_anonymous_memory_is_a_v8_page(nativewatch_cli):
    snap = _snapshots(nativewatch_cli, "FAKE_NODE", "PLANT_ANON")[0]
    node = snap["node"]
    assert snap["runtime"] == "node" and "v8-pages" in snap["sources"], snap
    assert node["pages"] == 1 and snap["categories"]["heap"] == 256 * 1024, (node, snap["categories"])
