"""Time to a leak verdict against leak rate, and the false-verdict rate of memory that does not leak.

Every series goes through the one growth policy (`nativewatch.growth.assess` at its defaults, as the
agent, `top` and `soak` apply it), sampled the way the agent samples a process at its defaults: a
breakdown every 60 s, and every 10 s scan while the process's RSS moved by >= 1 MiB since its last
breakdown. Each shape runs for an hour (or until its first verdict) with several seeds: random phase,
sampling jitter and noise.

    python benchmarks/bench_verdicts.py [--seeds 10] [--json]

Leaks: a steady rise of RATE on a 100 MiB base with +-256 KiB of noise; the time to the first verdict is
counted from the leak's start, and the slope at that verdict is compared with RATE.
Non-leaking shapes: sawtooth teeth, warm-ups that plateau, one-time steps and noisy flat memory; a run
is a false verdict when any sample of the hour gets a leak verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from statistics import median

from nativewatch.growth import GrowthPolicy, assess
from nativewatch.units import human_rate

MIB = 1024 * 1024
KIB = 1024
HOUR = 3600.0
SCAN_S = 10.0
FULL_S = 60.0
MOVE_BYTES = 1 * MIB

Shape = Callable[[float, random.Random], float]


def leak(rate: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        return lambda t, r: 100 * MIB + rate * t + r.uniform(-256, 256) * KIB
    return make


def sawtooth(amplitude: float, period: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        phase = rng.uniform(0, period)
        return lambda t, r: 100 * MIB + amplitude * (((t + phase) % period) / period)
    return make


def ramp(size: float, over_s: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        return lambda t, r: 100 * MIB + size * min(1.0, t / over_s) + r.uniform(-256, 256) * KIB
    return make


def exp_warmup(size: float, tau: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        return lambda t, r: 100 * MIB + size * (1 - math.exp(-t / tau)) + r.uniform(-256, 256) * KIB
    return make


def step(size: float, at_s: float, over_s: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        at = at_s + rng.uniform(0, 60)
        return lambda t, r: 100 * MIB + size * min(1.0, max(0.0, (t - at) / over_s))
    return make


def noise(amplitude: float) -> Callable[[random.Random], Shape]:
    def make(rng: random.Random) -> Shape:
        return lambda t, r: 200 * MIB + r.uniform(-amplitude / 2, amplitude / 2)
    return make


LEAKS = [1 * KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1 * MIB, 2 * MIB, 10 * MIB]
HEALTHY: list[tuple[str, Callable[[random.Random], Shape]]] = [
    ("sawtooth 64 MiB every 8 s", sawtooth(64 * MIB, 8)),
    ("sawtooth 256 MiB every 60 s", sawtooth(256 * MIB, 60)),
    ("sawtooth 256 MiB every 5 min", sawtooth(256 * MIB, 300)),
    ("sawtooth 512 MiB every 15 min", sawtooth(512 * MIB, 900)),
    ("JVM heap pre-touch: 512 MiB step at start", step(512 * MIB, 0, 1)),
    ("arena warm-up: 256 MiB ramp over 60 s", ramp(256 * MIB, 60)),
    ("arena warm-up: 256 MiB ramp over 90 s", ramp(256 * MIB, 90)),
    ("cache warm-up: 256 MiB, exponential, tau 60 s", exp_warmup(256 * MIB, 60)),
    ("cache warm-up: 256 MiB, exponential, tau 5 min", exp_warmup(256 * MIB, 300)),
    ("cache fill: 128 MiB step at 10 min", step(128 * MIB, 600, 1)),
    ("cache fill: 512 MiB over 30 s at 10 min", step(512 * MIB, 600, 30)),
    ("noisy flat: 8 MiB peak to peak", noise(8 * MIB)),
    ("noisy flat: 32 MiB peak to peak", noise(32 * MIB)),
]


def run(make: Callable[[random.Random], Shape], seed: int, policy: GrowthPolicy,
        stop_at_verdict: bool) -> tuple[float | None, float | None, float | None]:
    """(time of the first verdict or None, its slope, time of the last verdict) over an hour of
    agent-cadence samples; with ``stop_at_verdict`` the run ends at the first."""
    rng = random.Random(seed)
    shape = make(rng)
    ts: list[float] = []
    vs: list[float] = []
    t = rng.uniform(0, SCAN_S)  # when the first scan sees the process
    last_full_t, last_full_v = -math.inf, 0.0
    first: tuple[float, float] | None = None
    last: float | None = None
    while t <= HOUR:
        v = shape(t, rng)
        if t - last_full_t >= FULL_S or abs(v - last_full_v) >= MOVE_BYTES:
            ts.append(t)
            vs.append(v)
            last_full_t, last_full_v = t, v
            g = assess(ts, vs, policy)
            if g.leak:
                if first is None:
                    first = (t, g.bytes_per_second)
                last = t
                if stop_at_verdict:
                    break
        t += SCAN_S + rng.uniform(-0.5, 0.5)
    return (first[0], first[1], last) if first is not None else (None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    policy = GrowthPolicy()
    out: dict[str, list[dict[str, object]]] = {"leaks": [], "healthy": []}
    for rate in LEAKS:
        times: list[float] = []
        errors: list[float] = []
        for seed in range(args.seeds):
            t, slope, _ = run(leak(rate), seed, policy, True)
            if t is not None and slope is not None:
                times.append(t)
                errors.append(slope / rate - 1)
        out["leaks"].append({"rate_bytes_per_second": rate, "flagged": len(times), "runs": args.seeds,
                             "median_s": median(times) if times else None,
                             "max_s": max(times) if times else None,
                             "worst_slope_error": max(errors, key=abs) if errors else None})
    for name, make in HEALTHY:
        runs = [run(make, 1000 + seed, policy, False) for seed in range(args.seeds)]
        flagged = [r for r in runs if r[0] is not None]
        out["healthy"].append({"shape": name, "false_verdicts": len(flagged), "runs": args.seeds,
                               "after_15_min": sum(1 for r in flagged if (r[2] or 0) > 900),
                               "last_verdict_s": max((r[2] or 0) for r in flagged) if flagged else None})
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"time to verdict at the default policy ({args.seeds} runs each, agent cadence)")
    print(f"{'leak rate':>12} {'flagged':>8} {'median':>8} {'worst':>8} {'slope err':>10}")
    for r in out["leaks"]:
        med, worst, err = r["median_s"], r["max_s"], r["worst_slope_error"]
        print(f"{human_rate(float(r['rate_bytes_per_second'])):>12} {r['flagged']:>3}/{r['runs']:<4} "
              f"{'-' if med is None else f'{med:.0f}s':>8} {'-' if worst is None else f'{worst:.0f}s':>8} "
              f"{'-' if err is None else f'{float(err):+.1%}':>10}")
    print("\nfalse verdicts over an hour (any / any after the first 15 minutes / the last one)")
    for r in out["healthy"]:
        last = r["last_verdict_s"]
        print(f"  {r['false_verdicts']:>2}/{r['runs']:<3} {r['after_15_min']:>2}/{r['runs']:<3} "
              f"{'-' if last is None else f'{last:.0f}s':>6}  {r['shape']}")


if __name__ == "__main__":
    main()
