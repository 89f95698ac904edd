"""`nativewatch explain` on real JVMs and a real C program, side by side for 90 s (issue 14, part 1).

Six processes leak (or do not) at the same time while six `explain --duration 90s --json` run beside
them, as on a node where one pod is in trouble:
- direct: `direct 2` a second, 2 MiB/s of direct ByteBuffers          -> off-heap, direct first
- thread: `threads 4` a second, parked threads with touched stacks      -> off-heap, thread first
- metaspace: `classes 300` a second, each class in a retained loader    -> off-heap, metaspace first
- heap: `heapleak 1` every 0.5 s: 2 MiB/s kept in a static list, 16 MiB/s of garbage -> heap
- sawtooth: `sawtooth 64` a second (64 MiB of garbage, then System.gc()) -> no-leak
- C: soak_leak at 2 MiB/s from main()                                 -> off-heap, native, main in sites
The heaps are pre-touched (-Xms = -Xmx, AlwaysPreTouch) the way production JVMs often run, so the
resident heap does not move and only the post-GC floor (hsperfdata) can say "heap".

Tolerances:
- post-GC floor slope of the heap leak within 25% of the driven rate (what the driver thread kept per
  second over the window): floors are read within 0.2 s of each collection, when up to 0.4 MiB of the
  next step may already be kept; over ~20 collections in 90 s that is a few percent.
- GC time ratio within 25% of the JVM's own GarbageCollectorMXBeans over the same wall-clock window
  (interpolated from readings every second): both sum the same pauses; the MXBeans count milliseconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import build_c

sys.path.insert(0, str(Path(__file__).resolve().parent / "java"))
from harness import Jvm, compile_programs, java_home, jvm_argv  # noqa: E402

pytestmark = [pytest.mark.jvm, pytest.mark.slow, pytest.mark.bpf]

MiB = 1 << 20
HEAP = ["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:+AlwaysPreTouch", "-XX:NativeMemoryTracking=summary"]
WINDOW_S = 90
SCENARIOS = {  # name: (command, period in seconds)
    "direct": ("direct 2", 1.0),
    "thread": ("threads 4", 1.0),
    "metaspace": ("classes 300", 1.0),
    "heap": ("heapleak 1", 0.5),
    "sawtooth": ("sawtooth 64", 1.0),
}


class Driver(threading.Thread):
    """Runs one step per period; for the heap leak also reads the MXBean GC time every second."""

    def __init__(self, jvm: Jvm, command: str, period: float) -> None:
        super().__init__(daemon=True)
        self.jvm, self.command, self.period = jvm, command, period
        self.stop = threading.Event()
        self.steps: list[float] = []              # wall clock of each finished step
        self.gc: list[tuple[float, float]] = []   # (wall, GC seconds by the MXBeans)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            nxt = time.monotonic()
            last_gc = 0.0
            while not self.stop.is_set():
                self.jvm.step(self.command)
                self.steps.append(time.time())
                if self.command.startswith("heapleak") and time.monotonic() - last_gc >= 1.0:
                    last_gc = time.monotonic()
                    line = next(x for x in self.jvm.step("gctime") if x.startswith("gctime"))
                    m = re.search(r"ms=(\d+) .*wall=(\d+)", line)
                    assert m
                    self.gc.append((int(m.group(2)) / 1000, int(m.group(1)) / 1000))
                nxt += self.period
                self.stop.wait(max(0.0, nxt - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _at(points: list[tuple[float, float]], t: float) -> float:
    for (t1, v1), (t2, v2) in zip(points, points[1:], strict=False):
        if t1 <= t <= t2:
            return v1 + (v2 - v1) * (t - t1) / (t2 - t1) if t2 > t1 else v1
    raise AssertionError(f"{t} outside the readings {points[0][0]}..{points[-1][0]}")


@pytest.fixture(scope="module")
def side_by_side(bpf_available):
    if java_home(17) is None:
        pytest.skip("JDK 17 not installed")
    classes = compile_programs()
    jvms: dict[str, Jvm] = {}
    drivers: dict[str, Driver] = {}
    leak = None
    try:
        for name in SCENARIOS:
            jvms[name] = Jvm(jvm_argv(17, classes, *HEAP))
        leak = subprocess.Popen([str(build_c("soak_leak.c", cflags=["-O1"])), "2"], stdout=subprocess.PIPE, text=True)
        assert leak.stdout is not None and leak.stdout.readline().startswith("READY")
        for name, (cmd, period) in SCENARIOS.items():
            drivers[name] = Driver(jvms[name], cmd, period)
            drivers[name].start()
        time.sleep(10)  # warm-up: JIT, first collections, the first metaspace chunks
        exe = Path(sys.executable).parent / "nativewatch"
        procs = {name: subprocess.Popen([str(exe), "explain", "--pid", str(j.pid), "--duration", f"{WINDOW_S}s",
                                         "--json", "--no-capture"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for name, j in jvms.items()}
        procs["native"] = subprocess.Popen([str(exe), "explain", "--pid", str(leak.pid), "--duration",
                                            f"{WINDOW_S}s", "--json"], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
        docs = {}
        for name, p in procs.items():
            out, err = p.communicate(timeout=WINDOW_S + 120)
            assert p.returncode == 0, (name, err)
            docs[name] = json.loads(out)
        time.sleep(2)  # one more GC-time reading after the last window ends
        for d in drivers.values():
            d.stop.set()
            d.join(60)
            assert d.error is None, d.error
        yield docs, drivers
    finally:
        for d in drivers.values():
            d.stop.set()
        for j in jvms.values():
            j.close()
        if leak is not None:
            leak.kill()
            leak.wait()


@pytest.mark.parametrize("name,category", [("direct", "direct"), ("thread", "thread"), ("metaspace", "metaspace")])
def test_off_heap_leaks_name_their_category_first(side_by_side, name, category):
    doc = side_by_side[0][name]
    assert doc["runtime"] == "jvm" and doc["managed_heap_limit_bytes"] == 512 * MiB
    assert doc["verdict"] == "off-heap", doc
    assert doc["growing"][0]["category"] == category, doc["growing"]
    assert any("MaxDirectMemorySize" in s or "Thread.print" in s or "classloader" in s.lower()
               for s in doc["next_steps"]), doc["next_steps"]


def test_a_heap_leak_is_heap_with_the_floor_slope_and_gc_time_of_the_jvm(side_by_side):
    docs, drivers = side_by_side
    doc, drv = docs["heap"], drivers["heap"]
    assert doc["verdict"] == "heap", doc
    start, dur = doc["window"]["start_time"], doc["window"]["duration_s"]
    kept = [t for t in drv.steps if start <= t <= start + dur]
    truth = len(kept) * MiB / (kept[-1] - kept[0]) if len(kept) > 1 else 0
    floor = doc["heap_post_gc"]
    assert floor is not None and floor["points"] >= 5, floor
    assert abs(floor["bytes_per_second"] - truth) <= 0.25 * truth, (floor, truth)
    mx = (_at(drv.gc, start + dur) - _at(drv.gc, start)) / dur
    print(f"heap leak: floor {floor['bytes_per_second'] / MiB:.3f} MiB/s vs driven {truth / MiB:.3f} MiB/s over "
          f"{floor['points']} collections; GC time ratio {doc['gc_time_ratio']:.5f} vs MXBeans {mx:.5f}")
    assert doc["gc_time_ratio"] is not None and mx > 0
    assert abs(doc["gc_time_ratio"] - mx) <= 0.25 * mx, (doc["gc_time_ratio"], mx)
    assert any("OldObjectSample" in s for s in doc["next_steps"]) and any("heap_dump" in s for s in doc["next_steps"])


def test_a_busy_sawtooth_heap_is_no_leak(side_by_side):
    doc = side_by_side[0]["sawtooth"]
    assert doc["verdict"] == "no-leak", doc
    assert doc["heap_post_gc"] is not None and doc["window"]["collections"] >= 30


def test_a_c_malloc_leak_is_native_with_the_leaking_function_in_sites(side_by_side):
    doc = side_by_side[0]["native"]
    assert doc["runtime"] == "native" and doc["managed_heap_limit_bytes"] is None
    assert doc["verdict"] == "off-heap" and doc["growing"][0]["category"] == "native", doc
    assert doc["growing"][0]["bytes_per_second"] == pytest.approx(2 * MiB, rel=0.15)
    assert doc["sites"] and doc["sites"][0]["frames"][0].startswith("main ("), doc["sites"]
    assert doc["capture"]["via"] == "inject" and doc["capture"]["stopped"] is None
    assert set(doc) >= {"pid", "runtime", "rss_bytes", "managed_heap_limit_bytes", "verdict", "growing",
                        "heap_post_gc", "gc_time_ratio", "sites", "next_steps"}
