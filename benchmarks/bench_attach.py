#!/usr/bin/env python3
"""Latency of `VM.native_memory summary` through nativewatch's attach vs the JDK's `jcmd`, one run (issue 7).

    .venv/bin/python benchmarks/bench_attach.py [--rounds 15] [--jdk 17]

One JVM (NMT summary) is started; its attach listener is started once before timing (both sides would
otherwise pay that once). Rounds alternate A/B so machine drift hits both:
- nativewatch: `attach.jcmd(pid, "VM.native_memory summary")` in this process (verification of the
  target included: libjvm mapped, SigCgt, attach flags, hsperfdata; plus connect, request, reply);
- jcmd: the JDK's own `jcmd PID VM.native_memory summary` process (a JVM start-up each time, which is
  what an agent shelling out to jcmd would pay);
- nativewatch CLI: `nativewatch jcmd PID VM.native_memory summary` (Python start-up included), the
  fair comparison for a command-line user.
Prints the median of each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "java"))

from harness import Jvm, compile_programs, java_home, jvm_argv  # noqa: E402

from nativewatch.jvm import attach  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--jdk", type=int, default=17)
    args = ap.parse_args()
    java = java_home(args.jdk)
    jcmd = (java.parent / "jcmd") if java else None
    if jcmd is None or not jcmd.exists():
        jcmd = Path(shutil.which("jcmd") or "/nonexistent")
    if java is None or not jcmd.exists():
        print(f"JDK {args.jdk} with jcmd needed", file=sys.stderr)
        return 2
    jvm = Jvm(jvm_argv(args.jdk, compile_programs(), "-Xmx128m", "-XX:NativeMemoryTracking=summary"))
    cli = [str(Path(sys.executable).parent / "nativewatch"), "jcmd"]
    try:
        pid = jvm.pid
        attach.jcmd(pid, "VM.native_memory summary")  # starts the listener, caches the protocol
        subprocess.run([str(jcmd), str(pid), "VM.native_memory", "summary"], check=True, capture_output=True)
        ours, theirs, ours_cli = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            out = attach.jcmd(pid, "VM.native_memory summary")
            ours.append(time.perf_counter() - t)
            assert "Native Memory Tracking" in out
            t = time.perf_counter()
            r = subprocess.run([str(jcmd), str(pid), "VM.native_memory", "summary"], capture_output=True, text=True)
            theirs.append(time.perf_counter() - t)
            assert "Native Memory Tracking" in r.stdout
            t = time.perf_counter()
            r = subprocess.run([*cli, str(pid), "VM.native_memory", "summary"], capture_output=True, text=True)
            ours_cli.append(time.perf_counter() - t)
            assert "Native Memory Tracking" in r.stdout, r.stderr
        a, b, c = (statistics.median(x) for x in (ours, theirs, ours_cli))
        print(f"JDK {args.jdk}, pid {pid}, {args.rounds} rounds, {os.cpu_count()} CPUs")
        print(f"nativewatch attach (in-process):  median {a * 1e3:8.2f} ms")
        print(f"nativewatch jcmd (CLI process):   median {c * 1e3:8.2f} ms")
        print(f"JDK jcmd (process):               median {b * 1e3:8.2f} ms")
        print(f"ratio jcmd / nativewatch in-process: {b / a:6.1f}x")
        print(f"ratio jcmd / nativewatch CLI:        {b / c:6.1f}x")
    finally:
        jvm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
