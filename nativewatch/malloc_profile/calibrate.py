"""What one probe hit costs the target on this kernel, for the allocator the target really uses.

Measured, not assumed: the cost of a uprobe depends on the kernel (mitigations, the uretprobe
syscall), on the rung (a session return vs a uretprobe on every call) and on the probed instruction
(one the kernel emulates vs one it must single-step out of line, e.g. jemalloc's free). So before a
capture attaches to its target, the already loaded programs are attached the same way to a helper
process that calls the same allocator file's malloc and free in a loop, timed bare and probed:

    cost per alloc-side hit = (probed loop - bare loop) / (entry hits + return hits)

(the alloc placement's entry and return are costed alike: one figure per placement from one run),
and likewise for free. The helper is a Python interpreter calling through ctypes: the ~0.2 us of a
ctypes call is in both loops and cancels. Results are cached per boot, kernel, rung, mode and file
identity, so a node pays the ~1 s once per allocator build.

The helper runs with the target's allocator library preloaded when it is a separate one (jemalloc,
tcmalloc...: they use initial-exec TLS and cannot be dlopened late), through the target's own
map_files entry so the probes hit the same inode; a glibc or static target is calibrated on the
helper's own glibc (another glibc cannot be loaded into one process), which the source field says.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from nativewatch.errors import ProcessGone, SourceUnavailable
from nativewatch.malloc_profile import probes
from nativewatch.malloc_profile.governor import HitCosts
from nativewatch.malloc_profile.resolve import ProbePlan, ProbePoint, resolve
from nativewatch.malloc_profile.state import state_dir

__all__ = ["measure_costs", "DEFAULT_COSTS_NS", "cache_path"]

# Used only when measuring fails (reported as "default"): the highest per-hit cost measured on the
# development machines (an out-of-line single-stepped entry with a uretprobe), so the governor errs
# towards stopping early.
DEFAULT_COSTS_NS = 3000.0
_LOOPS = 60000

_HELPER = r"""
import ctypes, sys, time
lib = ctypes.CDLL(None)
malloc, free = lib.malloc, lib.free
malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
free.restype, free.argtypes = None, [ctypes.c_void_p]
free(malloc(24))
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t = time.perf_counter_ns()
    for _ in range(n):
        free(malloc(24))
    print((time.perf_counter_ns() - t) / n, flush=True)
"""


def cache_path() -> Path:
    return state_dir() / "probe-costs.json"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _identity(point: ProbePoint) -> str:
    st = os.stat(point.path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{int(st.st_mtime)}:{point.file_offset}"


def _points(plan: ProbePlan) -> tuple[ProbePoint, ProbePoint] | None:
    by = {p.symbol: p for p in plan.points}
    if "malloc" in by and "free" in by:
        return by["malloc"], by["free"]
    return None


class _Helper:
    def __init__(self, preload: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if preload:
            env["LD_PRELOAD"] = preload
        self.proc = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        if self._line() != "ready":
            self.close()
            raise RuntimeError("calibration helper did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def run(self, n: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(timeout=10)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _measure(loaded: probes.Loaded, plan: ProbePlan, helper: _Helper, malloc_pt: ProbePoint,
             free_pt: ProbePoint) -> tuple[float, float]:
    bare = min(helper.run(_LOOPS) for _ in range(2))
    per_hit: list[float] = []
    for point, slots in ((malloc_pt, ("alloc", "return")), (free_pt, ("free",))):
        probes.attach(loaded, plan, pid=helper.proc.pid, points=[point])
        try:
            before = probes.read_hits(loaded)
            probed = helper.run(_LOOPS)
            hits = _delta(probes.read_hits(loaded), before)
        finally:
            probes.detach(loaded)
        n = sum(hits[s] for s in slots)
        if n < _LOOPS // 2:
            raise RuntimeError(f"calibration saw {n} hits for {_LOOPS} calls")
        per_hit.append(max(0.0, (probed - bare) * _LOOPS / n))
    return per_hit[0], per_hit[1]


def measure_costs(loaded: probes.Loaded, plan: ProbePlan, proc_root: str = "/proc") -> HitCosts:
    """Per-hit costs for the rung and allocator of `loaded`/`plan`, measured (or from the cache).
    Leaves `loaded` detached and empty. Never raises: a failed measurement falls back to
    DEFAULT_COSTS_NS with the reason."""
    target_pts = _points(plan)
    if target_pts is None:
        return HitCosts(DEFAULT_COSTS_NS, DEFAULT_COSTS_NS, DEFAULT_COSTS_NS, "default: no malloc/free points")
    own_library = plan.provider_kind not in ("glibc", "static")
    helper: _Helper | None = None
    try:
        helper = _Helper(target_pts[0].path if own_library else "")
        if own_library:
            pts, where = target_pts, "the target's allocator"
        else:
            hplan = resolve(helper.proc.pid, proc_root)
            hp = _points(hplan)
            if hp is None:
                raise RuntimeError("no malloc/free in the helper's libc")
            same = _identity(hp[0]) == _identity(target_pts[0])
            pts, where = hp, ("the target's allocator" if same else "this node's glibc")
            plan = hplan
        key = "|".join((_boot_id(), os.uname().release, loaded.rung, loaded.mode, _identity(pts[0]),
                        _identity(pts[1])))
        cached = _read_cache().get(key)
        if cached:
            return HitCosts(cached[0], cached[1], cached[0], f"cached (measured on {where})")
        alloc_ns, free_ns = _measure(loaded, plan, helper, *pts)
        _write_cache(key, (alloc_ns, free_ns))
        return HitCosts(alloc_ns, free_ns, alloc_ns, f"measured on {where}")
    except (OSError, RuntimeError, ValueError, SourceUnavailable, ProcessGone, subprocess.SubprocessError) as exc:
        return HitCosts(DEFAULT_COSTS_NS, DEFAULT_COSTS_NS, DEFAULT_COSTS_NS,
                        f"default: calibration failed ({str(exc)[:200]})")
    finally:
        if helper is not None:
            helper.close()
        probes.detach(loaded)
        probes.reset(loaded)


def _read_cache() -> dict[str, list[float]]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items()
            if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)}


def _write_cache(key: str, costs: tuple[float, float]) -> None:
    data = _read_cache()
    data[key] = [round(costs[0], 1), round(costs[1], 1)]
    if len(data) > 256:  # old boots and builds: keep the newest entries
        data = dict(list(data.items())[-256:])
    path = cache_path()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
