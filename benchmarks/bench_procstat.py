#!/usr/bin/env python3
"""The agent's cheap per-scan pass, per process: nativewatch's /proc/PID/stat parser against psutil
(the reason sources/procstat.py parses by hand; psutil is not a dependency, install it to run this).

    .venv/bin/python benchmarks/bench_procstat.py [--procs 2000] [--rounds 5]

--procs idle `sleep` processes are started on top of what already runs, then every pid is read
--rounds times each way, in alternating order (hand, psutil, psutil, hand, ...) so a change of machine
load hits both. Each way gets what the scan needs (sources/procstat.py): name, state, RSS, start time
and whether the task is a kernel thread.

- hand: `read_stat(pid)`: one read of /proc/PID/stat, parsed by sources/procstat.py.
- psutil Process: a new `psutil.Process(pid)` per pid, then name/status/create_time/ppid/memory_info
  inside `oneshot()` (ppid == 2 stands in for the kernel-thread flag, which psutil does not expose).
- psutil process_iter: `psutil.process_iter([...])` with the same attributes, its Process objects
  kept between scans as psutil does for a caller that scans periodically.

Reported: CPU time (user+sys) of this process per pid listed, the median round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

try:
    import psutil  # not a dependency of nativewatch: only this comparison uses it
except ImportError:
    sys.exit("bench_procstat.py compares against psutil: pip install psutil")

from nativewatch.errors import NativewatchError  # noqa: E402
from nativewatch.sources.procfs import list_pids  # noqa: E402
from nativewatch.sources.procstat import read_stat  # noqa: E402

ATTRS = ["name", "status", "create_time", "ppid", "memory_info"]


def hand_scan() -> int:
    n = 0
    for pid in list_pids():
        try:
            st = read_stat(pid)
        except NativewatchError:
            continue
        if st is not None:
            _ = (st.comm, st.state, st.rss_bytes, st.starttime, st.kernel_thread)
            n += 1
    return n


def psutil_process_scan() -> int:
    n = 0
    for pid in psutil.pids():
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                _ = (p.name(), p.status(), p.create_time(), p.ppid() == 2, p.memory_info().rss)
            n += 1
        except psutil.Error:
            continue
    return n


def psutil_iter_scan() -> int:
    n = 0
    for p in psutil.process_iter(ATTRS):
        info = p.info
        _ = (info["name"], info["status"], info["create_time"], info["ppid"] == 2, info["memory_info"])
        n += 1
    return n


def cpu_per_pid(scan: Callable[[], int]) -> float:
    c0 = time.process_time()
    n = scan()
    return (time.process_time() - c0) / max(1, n) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(args.procs)]
    try:
        time.sleep(1.0)
        ways = {"hand (sources/procstat.py)": hand_scan, "psutil Process + oneshot": psutil_process_scan,
                "psutil process_iter (cached)": psutil_iter_scan}
        for scan in ways.values():  # warm the dentry cache and process_iter's object cache
            scan()
        results: dict[str, list[float]] = {k: [] for k in ways}
        names = list(ways)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                results[name].append(cpu_per_pid(ways[name]))
        listed = len(list_pids())
        print(f"{listed} pids listed, {args.rounds} rounds, CPU µs per pid (median; min-max)")
        base = statistics.median(results[names[0]])
        for name in names:
            med = statistics.median(results[name])
            print(f"  {name:30s} {med:6.1f} µs  ({min(results[name]):.1f}-{max(results[name]):.1f})  "
                  f"x{med / base:.1f}")
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
