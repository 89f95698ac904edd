#!/usr/bin/env python3
"""Memory and start-up of nativewatch's processes, side by side in one run (issue 12).

- the agent at its defaults (every eBPF program loaded through the short-lived loader child) watching
  a tracked C program that leaks 256 KiB/s: time from start to the first answered /metrics, and its
  RSS sampled every 10 s for --hold seconds (default 60; 3600 for the hour figure);
- the same two programs loaded the way the agent used to, with bcc inside the process: its RSS right
  after loading (what a long-running process keeps when bcc's compiler runs in it);
- peak RSS (ru_maxrss) of `nativewatch top --once` and of a 5 s `nativewatch profile` of the leak.

    .venv/bin/python benchmarks/bench_footprint.py [--hold 3600]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from agentproc import AgentProcess  # noqa: E402

MIB = 1 << 20

IN_PROCESS = """
import os
from nativewatch.sources.bpf import load_bpf
a = load_bpf("page_faults.c", {"SAMPLE_EVERY": 64, "MAX_ENTRIES": 16384, "STACK_ENTRIES": 8192,
                               "SKIP_TGID": os.getpid()})
b = load_bpf("oom_kill.c", {"RINGBUF_PAGES": 8})
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) * 1024)
"""


def peak_rss(cmd: list[str]) -> tuple[int, int]:
    """(ru_maxrss in bytes, exit status) of one child process."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(p.pid, 0)
    return usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def build_leak(tmp: Path) -> Path:
    exe = tmp / "soak_leak"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(ROOT / "tests/programs/soak_leak.c")], check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hold", type=float, default=60.0, help="seconds to watch the agent's RSS")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nw-footprint-"))
    leak = subprocess.Popen([str(build_leak(tmp)), "0.25"], stdout=subprocess.PIPE, text=True)
    assert leak.stdout is not None
    leak.stdout.readline()
    exe = str(Path(sys.executable).parent / "nativewatch")
    try:
        t0 = time.monotonic()
        with AgentProcess(tmp, track=[leak.pid]) as agent:
            first = None
            while first is None and time.monotonic() - t0 < 180:
                try:
                    code, body = agent.get("/metrics", timeout=2)
                    if code == 200 and b"nativewatch_agent_scans_total" in body:
                        first = time.monotonic() - t0
                except OSError:
                    time.sleep(0.1)
            samples: list[tuple[float, int]] = []
            start = time.monotonic()
            while time.monotonic() - start < args.hold:
                time.sleep(min(10.0, max(0.0, args.hold - (time.monotonic() - start))))
                samples.append((time.monotonic() - start, agent.rss()))
                print(f"  t={samples[-1][0]:.0f}s agent RSS {samples[-1][1] / MIB:.1f} MiB", file=sys.stderr,
                      flush=True)
            degraded = agent.health().get("degraded", {})
        rss_inproc = int(subprocess.run([sys.executable, "-c", IN_PROCESS], capture_output=True, text=True,
                                        check=True, cwd=ROOT).stdout.split()[-1])
        top_rss, top_rc = peak_rss([exe, "top", "--once"])
        prof_rss, prof_rc = peak_rss([exe, "profile", "--pid", str(leak.pid), "--duration", "5s", "--json"])
    finally:
        leak.kill()
        leak.wait()
    rss = [r for _, r in samples]
    print(f"nativewatch footprint, {time.strftime('%Y-%m-%d')}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, page size {resource.getpagesize()}")
    print(f"  agent: first /metrics answered {first:.1f} s after start" if first else "  agent: no /metrics")
    print(f"  agent RSS over {args.hold:.0f} s (every 10 s): first {rss[0] / MIB:.1f} MiB, "
          f"max {max(rss) / MIB:.1f} MiB, last {rss[-1] / MIB:.1f} MiB; degraded: {sorted(degraded) or 'none'}")
    print(f"  the same programs loaded with bcc in the process: {rss_inproc / MIB:.1f} MiB "
          f"({rss_inproc / max(rss):.1f}x the agent's max)")
    print(f"  top --once peak RSS {top_rss / MIB:.1f} MiB (exit {top_rc}); "
          f"profile 5 s peak RSS {prof_rss / MIB:.1f} MiB (exit {prof_rc})")


if __name__ == "__main__":
    main()
