#!/usr/bin/env python3
"""The agent's own footprint over a long run of mixed load (issue 16), measured from outside.

    sudo .venv/bin/python benchmarks/bench_agent_longrun.py [--duration 1h] [--sample 10] [--json out.json]

A real `nativewatch agent` (every BPF program on, default settings but a 5 s interval so an hour holds
720 scans) watches, for --duration:
- a leak (`agent_load leak 16`, 16 KiB/s: 56 MiB an hour) and a sawtooth (`agent_load sawtooth 64 8`);
- process churn: about 30 short-lived processes a second (sleeps, exec chains), the whole run;
- thread churn: a process starting 100 short-lived threads a second.
Every --sample seconds the agent's RSS, open descriptors and threads are read from /proc, and its
/metrics scraped (cache sizes, scan CPU). At the end nativewatch's own floor fit (the one the agent
alerts on) is applied to the agent itself: the slope of its RSS floor and descriptor floor. Printed:
first/last/max of each, the slopes, scans done, and whether the agent flagged the leak and not the
sawtooth (its own verdicts, from /api/v1/snapshot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agentproc import AgentProcess  # noqa: E402

from nativewatch.growth import fit_floor  # noqa: E402

MIB = 1 << 20
CHURN = r"""
while :; do
  for i in 1 2; do sleep 0.5 & done
  sh -c 'exec env sleep 0.3' &
  sleep 0.1
done
"""


def build(name: str, *flags: str) -> Path:
    out = ROOT / ".cache" / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    src = ROOT / "tests" / "programs" / f"{name}.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O1", "-fno-omit-frame-pointer", *flags, "-o", str(out), str(src)], check=True)
    return out


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def start(prog: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(prog), *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=parse_duration, default=3600.0)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    load = build("agent_load")
    threads = build("thread_churn", "-pthread")
    tmp = Path(tempfile.mkdtemp(prefix="nw-longrun-"))
    procs: list[subprocess.Popen] = []
    samples: list[dict[str, float]] = []
    with AgentProcess(tmp, interval_s=5.0) as agent:
        agent.wait_ready(scans=1)
        leak = start(load, "leak", "16")
        saw = start(load, "sawtooth", "64", "8")
        procs += [leak, saw, start(threads, "100"),
                  subprocess.Popen(["/bin/sh", "-c", CHURN], start_new_session=True)]
        t0 = time.monotonic()
        try:
            while (el := time.monotonic() - t0) < args.duration:
                row = {"t": el, "rss": float(agent.rss()), "fds": float(agent.fds()),
                       "threads": float(agent.threads())}
                for key, name in (("symbolizers", "symbolizers"), ("elf_files", "elf_files"),
                                  ("dead", "dead_processes")):
                    row[key] = agent.metric("nativewatch_agent_cache_entries", cache=name) or 0.0
                row["scan_cpu"] = agent.metric("nativewatch_agent_scan_cpu_seconds") or 0.0
                samples.append(row)
                time.sleep(max(0.0, args.sample - (time.monotonic() - t0 - el)))
            with urllib.request.urlopen(agent.url("/api/v1/snapshot"), timeout=30) as r:
                snap = json.loads(r.read())
            health = agent.health()
        finally:
            for p in procs:
                if p.args[0] == "/bin/sh":
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
                p.wait()
    verdicts = {}
    for p in snap["processes"]:
        if p["pid"] in (leak.pid, saw.pid):
            verdicts["leak" if p["pid"] == leak.pid else "sawtooth"] = p["growth"]["native"]
    ts = [s["t"] for s in samples]
    out: dict[str, object] = {"duration_s": args.duration, "samples": len(samples),
                              "scans_total": health["scans_total"], "faults": health["faults"],
                              "errors_by_source": health["errors_by_source"], "verdicts": verdicts}
    print(f"agent long run: {args.duration / 60:.0f} min, {len(samples)} samples, "
          f"{health['scans_total']} scans")
    print("| figure | first | last | max | floor slope |")
    print("|---|---:|---:|---:|---:|")
    for key, unit, scale, per in (("rss", "MiB", MIB, 3600), ("fds", "", 1, 3600), ("threads", "", 1, 3600),
                                  ("symbolizers", "", 1, 3600), ("elf_files", "", 1, 3600),
                                  ("dead", "", 1, 3600)):
        vals = [s[key] for s in samples]
        fit = fit_floor(ts, vals)
        slope = fit.bytes_per_second * per / scale
        out[key] = {"first": vals[0], "last": vals[-1], "max": max(vals),
                    "floor_slope_per_hour": slope, "fit": fit.fit}
        print(f"| {key} {unit} | {vals[0] / scale:.1f} | {vals[-1] / scale:.1f} | {max(vals) / scale:.1f} "
              f"| {slope:+.2f}{(' ' + unit) if unit else ''}/h (fit {fit.fit:.2f}) |")
    cpu = sorted(s["scan_cpu"] for s in samples)
    print(f"scan CPU median {cpu[len(cpu) // 2] * 1000:.1f} ms, max {cpu[-1] * 1000:.1f} ms")
    for name, v in verdicts.items():
        print(f"{name}: native floor {v['bytes_per_second'] / 1024:.1f} KiB/s, leak={v['leak']}")
    print(f"faults now: {health['faults']}; errors: {health['errors_by_source']}")
    if args.json:
        args.json.write_text(json.dumps({**out, "rows": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
