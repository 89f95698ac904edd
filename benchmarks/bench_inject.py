#!/usr/bin/env python3
"""In-process sampling (issue 13): added cost per malloc/free pair and on a real server, side by side
in one run.

    sudo .venv/bin/python benchmarks/bench_inject.py [--passes 3] [--rounds 5] [--pairs 2000000]
                                                     [--preload /usr/lib/x86_64-linux-gnu/libjemalloc.so.2]
                                                     [--redis-keys 200000] [--only pairs|redis]

pairs: one target (tests/programs/bench_pairs.c) times malloc(64)+free pairs; configurations run in
turn on that same process, --passes times, each keeping its lowest pass (load from elsewhere only
adds time): no capture; nativewatch default via inject (the sampler in the process, 512 KiB);
nativewatch default via the best uprobe rung; memleak-bpfcc (Debian's bcc tool). No cost governor.

stops: how long the process is stopped, for processes of 4, 64 and 256 threads allocating in bursts
(tests/programs/many_threads.c): --passes x (put in, take out) with the injector itself; the load stop
(one thread, first time only) and every full stop (patch, restore), median and max.

redis: Debian's redis-server (jemalloc, no frame pointers) filled with `DEBUG POPULATE N` into a
flushed database, bare and under each capture, alternating, best of --passes. The figure is the
ratio to bare in the same run (issue 13's target: <= 1.5x via inject).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_malloc import MEMLEAK, Target, best_of, build_target, memleak, nativewatch, no_probes  # noqa: E402

from nativewatch.malloc_profile.attach import supported_rungs  # noqa: E402


def best_rung() -> str:
    return next(s.rung for s in supported_rungs() if s.ok)


def pairs_table(args: argparse.Namespace) -> None:
    t = Target(build_target(), args.preload)
    rung = best_rung()
    configs: list[tuple[str, Callable[[Target], object], int]] = [
        ("no capture", no_probes, args.pairs),
        ("nativewatch default via inject (in-process sampler)", nativewatch("sampled", "inject"), args.pairs),
        (f"nativewatch default via {rung} (uprobes)", nativewatch("sampled", rung), args.pairs // 10),
    ]
    if Path(MEMLEAK).exists() and not args.preload:
        configs.append(("memleak-bpfcc (default options)", memleak, args.pairs // 10))
    try:
        best = best_of(t, configs, args.passes, args.rounds)
    finally:
        t.close()
    base = best[configs[0][0]]
    print(f"target allocator: {args.preload or 'glibc'}")
    print("| configuration | ns per malloc/free pair | added ns per pair |")
    print("|---|---:|---:|")
    for name, _, _ in configs:
        print(f"| {name} | {best[name]:,.1f} | {best[name] - base:,.1f} |")
    inj = best[configs[1][0]] - base
    up = best[configs[2][0]] - base
    print(f"\ninject adds {inj:.1f} ns a pair (target <= 50); the uprobe default adds {up / max(inj, 0.1):.0f}x that.")


# ---- redis --------------------------------------------------------------------------------------
class Redis:
    def __init__(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.dir = tempfile.mkdtemp(prefix="nw-bench-redis-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.proc = subprocess.Popen([exe, "--port", "0", "--unixsocket", self.sock, "--save", "",
                                      "--appendonly", "no", "--enable-debug-command", "yes", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(self.sock)
        self.f = self.s.makefile("rb")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cmd(self, *args: str) -> bytes:
        out = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
        self.s.sendall(out)
        return self.f.readline()

    def populate(self, keys: int) -> float:
        self.cmd("FLUSHALL", "SYNC")
        t0 = time.perf_counter()
        reply = self.cmd("DEBUG", "POPULATE", str(keys), "key", "64")
        dt = time.perf_counter() - t0
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"DEBUG POPULATE: {reply!r}")
        return dt

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def bare(_r: object):
    yield


def redis_table(args: argparse.Namespace) -> None:
    r = Redis()
    rung = best_rung()
    configs = [("bare", bare), ("nativewatch default via inject", nativewatch("sampled", "inject")),
               (f"nativewatch default via {rung}", nativewatch("sampled", rung))]
    best: dict[str, float] = {}
    try:
        r.populate(args.redis_keys)  # warm: the dict grows to its size once
        for n in range(args.passes):
            for name, ctx in configs:
                with ctx(r):  # type: ignore[operator]
                    dt = r.populate(args.redis_keys)
                best[name] = min(dt, best.get(name, dt))
                print(f"# pass {n + 1}: {name}: {dt:.3f} s", file=sys.stderr, flush=True)
    finally:
        r.close()
    base = best["bare"]
    print(f"\nDebian redis-server, DEBUG POPULATE {args.redis_keys} into a flushed database")
    print("| configuration | seconds | x bare |")
    print("|---|---:|---:|")
    for name, _ in configs:
        print(f"| {name} | {best[name]:.3f} | {best[name] / base:.2f} |")


def stops_table(args: argparse.Namespace) -> None:
    import statistics

    from nativewatch.inject import injector
    from nativewatch.malloc_profile.resolve import resolve

    src = ROOT / "tests" / "programs" / "many_threads.c"
    exe = ROOT / ".cache" / "bench" / "many_threads"
    exe.parent.mkdir(parents=True, exist_ok=True)
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    print("\n| threads | load stop (first time) | full stops, median | full stops, max |")
    print("|---:|---:|---:|---:|")
    for n in (4, 64, 256):
        proc = subprocess.Popen([str(exe), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            plan = resolve(proc.pid)
            load = 0.0
            full: list[float] = []
            for i in range(max(args.passes, 5) * 4):
                inj = injector.inject(proc.pid, plan, interval=524288)
                if i == 0:
                    load = inj.load_stop_s
                time.sleep(0.05)
                injector.remove(inj)
                full.extend(inj.stops_s)
            print(f"| {n} | {load * 1000:.1f} ms | {statistics.median(full) * 1000:.1f} ms | "
                  f"{max(full) * 1000:.1f} ms |")
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=2_000_000)
    ap.add_argument("--preload", help="LD_PRELOAD this allocator into the pairs target")
    ap.add_argument("--redis-keys", type=int, default=200_000)
    ap.add_argument("--only", choices=["pairs", "stops", "redis"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (ptrace, uprobes)")
    if args.only in (None, "pairs"):
        pairs_table(args)
    if args.only in (None, "stops"):
        stops_table(args)
    if args.only in (None, "redis") and shutil.which("redis-server"):
        redis_table(args)


if __name__ == "__main__":
    main()
