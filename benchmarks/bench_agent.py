#!/usr/bin/env python3
"""What the node agent costs, measured side by side in one run (issue 6).

    sudo .venv/bin/python benchmarks/bench_agent.py [--procs 50,200] [--scans 8] [--rounds 5] [--markdown]

1. Agent CPU per scan for N processes. N idle C programs (`agent_load hold 1`) are started on top of
   whatever already runs on the machine; for each N the agent does --scans scans of each kind:
   - cheap: /proc/PID/stat of every process only (the per-interval work between full attributions);
   - full: every process fully attributed (smaps + attribution, what `snapshot` does) each scan.
   CPU is the agent process's own CPU time (user+sys) per scan; the per-process figure divides by the
   number of processes the scan listed.
2. Slowdown of a page-fault-heavy program with the agent's continuous eBPF on vs off: tests/programs/
   fault_storm.c writes one byte per page of 256 MiB mappings (one first-touch fault per page). Off and
   on alternate in ABBA order (off, on, on, off, ...) for --rounds pairs; "on" means the OOM tracepoint program and the
   page-fault sampler are loaded and a thread reads and clears the sampler's maps every second, as the
   agent does. Reported: median CPU time (user+sys) of the program itself, which includes the kernel's
   fault handling and the BPF program (it runs in the faulting task); CPU time is less disturbed than
   wall time by other work on a shared machine. Median wall times are printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nativewatch.agent.config import load_config  # noqa: E402
from nativewatch.agent.loop import Agent  # noqa: E402


def build(name: str, *flags: str) -> Path:
    out = ROOT / ".cache" / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    src = ROOT / "tests" / "programs" / f"{name}.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", *flags, "-o", str(out), str(src)], check=True)
    return out


def cpu_s() -> float:
    return time.process_time()  # this process's user+sys CPU, all threads, ns resolution


def scan_cost(n_extra: int, scans: int, hold: Path, state: Path) -> dict[str, float]:
    procs = []
    try:
        for _ in range(n_extra):
            p = subprocess.Popen([str(hold), "hold", "1"], stdout=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        out: dict[str, float] = {}
        for kind, full_interval in (("cheap", 1e9), ("full", 0.0)):
            cfg = load_config(None, interval_s=1.0, full_interval_s=full_interval, scan_budget_s=1e9,
                              state_dir=state, evidence_dir=state / "ev", bpf=False, auto_capture=False,
                              history_interval_s=1e9)
            agent = Agent(cfg)
            agent.scan_once()  # first scan: everything is new and fully attributed in both kinds
            c0, w0 = cpu_s(), time.monotonic()
            for _ in range(scans):
                agent.scan_once()
            out[f"{kind}_cpu_ms"] = (cpu_s() - c0) / scans * 1000
            out[f"{kind}_wall_ms"] = (time.monotonic() - w0) / scans * 1000
            out["processes"] = agent.view.processes_seen
            agent.close()
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


class Collector(threading.Thread):
    def __init__(self, agent: Agent) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.agent.faults.collect(set(int(p) for p in os.listdir("/proc") if p.isdigit()))
            self.agent.oom_bpf.poll()


def fault_storm(storm: Path, mib: int, rounds: int) -> tuple[float, float, int]:
    out = subprocess.run([str(storm), str(mib), str(rounds)], capture_output=True, text=True, check=True)
    wall, cpu, faults = out.stdout.split()
    return float(wall), float(cpu), int(faults)


def bpf_overhead(rounds: int, storm: Path, state: Path, sample_every: int) -> dict[str, float]:
    cfg = load_config(None, state_dir=state, evidence_dir=state / "ev", auto_capture=False,
                      page_fault_sample_every=sample_every)
    fault_storm(storm, 256, 2)  # warm-up
    off: list[tuple[float, float, int]] = []
    on: list[tuple[float, float, int]] = []
    sampled = 0
    for i in range(rounds):
        # ABBA order (off/on, then on/off) so that a drift in the machine's load cancels out.
        if i % 2 == 0:
            off.append(fault_storm(storm, 256, 8))
        agent = Agent(cfg)
        if agent.faults is None or agent.oom_bpf is None:
            raise SystemExit(f"eBPF unavailable: {agent.degraded}")
        col = Collector(agent)
        col.start()
        s0 = agent.faults.stats()["sampled"]
        on.append(fault_storm(storm, 256, 8))
        sampled += agent.faults.stats()["sampled"] - s0
        col.stop.set()
        col.join()
        agent.close()
        if i % 2 == 1:
            off.append(fault_storm(storm, 256, 8))
    cpu_off, cpu_on = statistics.median(r[1] for r in off), statistics.median(r[1] for r in on)
    return {"off_s": cpu_off, "on_s": cpu_on, "ratio": cpu_on / cpu_off,
            "wall_off_s": statistics.median(r[0] for r in off), "wall_on_s": statistics.median(r[0] for r in on),
            "pair_ratios": [b[1] / a[1] for a, b in zip(off, on, strict=True)], "sampled_faults": sampled,
            "faults": off[0][2], "sample_every": cfg.page_fault_sample_every}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="0,50,200")
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sample-every", default="64,1024", help="page-fault sampling rates to measure")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    hold = build("agent_load")
    storm = build("fault_storm")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        rows = []
        for n in [int(x) for x in args.procs.split(",")]:
            r = scan_cost(n, args.scans, hold, state)
            rows.append((n, r))
            print(f"+{n:>4} idle procs ({r['processes']:.0f} listed): cheap scan {r['cheap_cpu_ms']:7.1f} ms CPU "
                  f"({r['cheap_cpu_ms'] / r['processes'] * 1000:6.1f} us/proc), full scan {r['full_cpu_ms']:7.1f} ms "
                  f"CPU ({r['full_cpu_ms'] / r['processes']:5.2f} ms/proc)", flush=True)
        bres = []
        if os.geteuid() == 0:
            for every in [int(x) for x in args.sample_every.split(",")]:
                b = bpf_overhead(args.rounds, storm, state, every)
                bres.append(b)
                print(f"fault_storm ({b['faults']} first-touch faults), sampling 1/{every}: CPU eBPF off "
                      f"{b['off_s']:.3f} s, on {b['on_s']:.3f} s, ratio {b['ratio']:.3f} (pairs: "
                      f"{', '.join(f'{x:.3f}' for x in b['pair_ratios'])}); wall {b['wall_off_s']:.3f} -> "
                      f"{b['wall_on_s']:.3f} s; {b['sampled_faults']} faults sampled node-wide", flush=True)
        else:
            print("not root: eBPF overhead skipped")
    if args.markdown:
        print("\n| extra idle processes | processes listed | cheap scan CPU | per process | full scan CPU | per process |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n, r in rows:
            print(f"| {n} | {r['processes']:.0f} | {r['cheap_cpu_ms']:.1f} ms | "
                  f"{r['cheap_cpu_ms'] / r['processes'] * 1000:.0f} µs | {r['full_cpu_ms']:.1f} ms | "
                  f"{r['full_cpu_ms'] / r['processes']:.2f} ms |")
        if bres:
            print("\n| fault_storm, median of " f"{args.rounds}" " pairs | CPU eBPF off | CPU eBPF on | ratio | "
                  "wall off | wall on |")
            print("|---|---:|---:|---:|---:|---:|")
            for b in bres:
                print(f"| sampling 1/{b['sample_every']} | {b['off_s']:.3f} s | {b['on_s']:.3f} s | "
                      f"{b['ratio']:.3f} | {b['wall_off_s']:.3f} s | {b['wall_on_s']:.3f} s |")


if __name__ == "__main__":
    main()
