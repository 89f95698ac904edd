#!/usr/bin/env python3
"""Cost of a full breakdown of every process vs the raw read of the same /proc files, in one run.

Both sides read, for every user-space pid: status, comm, cmdline, smaps, cgroup, mountinfo and each
thread's task/TID/syscall. The "raw" side only reads the bytes; the "breakdown" side is
nativewatch's scan (read + parse + attribute + container identity). Rounds alternate A/B so machine
drift hits both; the ratio of medians is printed.

    .venv/bin/python benchmarks/bench_breakdown.py [--rounds 15] [--no-workload]

By default it first starts a representative node workload beside whatever already runs: a JVM with a
512 MiB pre-touched heap and 4 C programs holding 200 MiB each across 8 threads (tiny idle shells alone
measure mostly Python start-up costs, not the cost that matters on a busy node).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nativewatch.scan import is_kernel_thread, scan_all  # noqa: E402
from nativewatch.sources import procfs  # noqa: E402


def raw_read(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        for name in ("status", "comm", "cmdline", "smaps", "cgroup", "mountinfo"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as fh:
                    n += len(fh.read())
            except OSError:
                pass
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{tid}/syscall", "rb") as fh:
                        n += len(fh.read())
                except OSError:
                    pass
        except OSError:
            pass
    return n


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def start_workload() -> list[subprocess.Popen]:
    import tempfile

    tmp = tempfile.mkdtemp(prefix="nw-bench-")
    exe = os.path.join(tmp, "holdings")
    subprocess.run(["cc", "-O1", "-pthread", "-o", exe, os.path.join(ROOT, "tests/programs/holdings.c")],
                   check=True)
    data = os.path.join(tmp, "data.bin")
    with open(data, "wb") as fh:
        fh.write(os.urandom(32 << 20))
    procs = []
    for _ in range(4):
        p = subprocess.Popen([exe, "100", "60", "8", "256", data, "32", "8", "0"], stdout=subprocess.PIPE)
        p.stdout.readline()  # type: ignore[union-attr]
        procs.append(p)
    src = os.path.join(tmp, "Idle.java")
    with open(src, "w") as fh:
        fh.write("public class Idle { public static void main(String[] a) throws Exception {"
                 " System.out.println(\"READY\"); Thread.sleep(600000); } }")
    subprocess.run(["javac", "-d", tmp, src], check=True)
    j = subprocess.Popen(["java", "-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch", "-cp", tmp, "Idle"],
                         stdout=subprocess.PIPE)
    j.stdout.readline()  # type: ignore[union-attr]
    procs.append(j)
    return procs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-workload", action="store_true", help="scan only what already runs")
    args = ap.parse_args()
    extra = [] if args.no_workload else start_workload()
    try:
        pids = [p for p in procfs.list_pids() if p != os.getpid() and not is_kernel_thread(p)]
        raw_t, full_t = [], []
        scan_all(pids=pids)  # warm-up: imports, ELF checks cached per executable
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            raw_read(pids)
            t1 = time.perf_counter()
            bds, _ = scan_all(pids=pids)
            t2 = time.perf_counter()
            raw_t.append(t1 - t0)
            full_t.append(t2 - t1)
        r, f = statistics.median(raw_t), statistics.median(full_t)
        ratios = [b / a for a, b in zip(raw_t, full_t, strict=True)]
        print(f"processes: {len(pids)}  breakdowns: {len(bds)}  mappings: "
              f"{sum(len(procfs.read_maps(b.pid).mappings) for b in bds)}")
        print(f"raw read of the same /proc files  median {r * 1000:8.1f} ms")
        print(f"full breakdown (nativewatch scan) median {f * 1000:8.1f} ms")
        print(f"ratio breakdown/raw: median {statistics.median(ratios):.2f}x  "
              f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    finally:
        for p in extra:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
