#!/usr/bin/env python3
"""Added cost per malloc/free pair, side by side in one run on one process (issues 3 and 12).

    sudo .venv/bin/python benchmarks/bench_malloc.py [--passes 3] [--rounds 5] [--pairs 200000]
                                                     [--preload /usr/lib/x86_64-linux-gnu/libjemalloc.so.2]

One target (tests/programs/bench_pairs.c) times malloc(64)+free pairs in a loop. For each
configuration the probes are attached to that same process, a warm-up round runs, then the median of
--rounds timed rounds is taken. All configurations are measured in turn, --passes times, and each
reports its lowest pass: other load on a shared machine only ever adds time, so the lowest pass is
the closest to the configuration's own cost.

- no probes
- trap floor: empty BPF programs at exactly the points nativewatch probes (the entry half of a
  session probe returning "no return probe", and free at its emulatable instruction): the cost of
  the traps alone, which no uprobe-based design can go below
- trap floor at function entry: the same with every probe at offset 0 (free's first instruction
  must be single-stepped): shows what the probe placement saves
- nativewatch default (sampled, 512 KiB mean interval) on each rung of the attach ladder: session
  (uprobe_multi sessions), multi (uprobe_multi + uretprobe_multi), perf (perf-event uprobes)
- nativewatch exact (every allocation recorded)
- memleak-bpfcc (Debian's bcc tool, default options)
All nativewatch rows run without the cost governor (it would stop them: that is its job).
--preload runs the same table on a target using another allocator (e.g. jemalloc, whose free has no
emulatable instruction before its argument registers change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nativewatch.malloc_profile import run_profile  # noqa: E402
from nativewatch.malloc_profile.resolve import resolve  # noqa: E402
from nativewatch.malloc_profile.uprobe_link import create_uprobe_multi  # noqa: E402

MEMLEAK = "/usr/sbin/memleak-bpfcc"
EMPTY = b"int keep_entry_only(struct pt_regs *ctx) { return 1; }\nint plain(struct pt_regs *ctx) { return 0; }\n"


def build_target() -> Path:
    out = ROOT / ".cache" / "bench" / "bench_pairs"
    out.parent.mkdir(parents=True, exist_ok=True)
    src = ROOT / "tests" / "programs" / "bench_pairs.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(out), str(src)], check=True)
    return out


class Target:
    def __init__(self, binary: Path, preload: str | None = None) -> None:
        env = {**os.environ, **({"LD_PRELOAD": preload} if preload else {})}
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, pairs: int, size: int = 64) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"run {pairs} {size}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline().split("=")[1])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def no_probes(_t: Target) -> Iterator[None]:
    yield


def floor(at_entry: bool) -> Callable[[Target], object]:
    @contextmanager
    def ctx(t: Target) -> Iterator[None]:
        from bcc import BPF

        from nativewatch.malloc_profile.uprobe_link import BPF_TRACE_UPROBE_MULTI, BPF_TRACE_UPROBE_SESSION

        b = BPF(text=EMPTY)
        entry_only = b.load_func(b"keep_entry_only", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_SESSION)
        plain = b.load_func(b"plain", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        plan = resolve(t.pid)
        groups: dict[tuple[str, bool], list[tuple[int, int]]] = {}
        for p in plan.points:
            off = p.entry_offset if at_entry else p.file_offset
            groups.setdefault((p.path, p.session), []).append((off, p.cookie))
        links = [create_uprobe_multi(entry_only.fd if session else plain.fd, path, [o for o, _ in pts],
                                     [c for _, c in pts], t.pid, session=session)
                 for (path, session), pts in groups.items()]
        try:
            yield
        finally:
            for fd in links:
                os.close(fd)
            b.cleanup()
    return ctx


def nativewatch(mode: str, via: str | None = None) -> Callable[[Target], object]:
    @contextmanager
    def ctx(t: Target) -> Iterator[None]:
        attached, stop = threading.Event(), threading.Event()
        th = threading.Thread(target=run_profile, args=(t.pid, 3600.0),
                              kwargs={"mode": mode, "stop": stop, "on_attached": attached.set, "via": via,
                                      "max_overhead": None}, daemon=True)
        th.start()
        if not attached.wait(60):
            raise RuntimeError("nativewatch did not attach")
        try:
            yield
        finally:
            stop.set()
            th.join(60)
    return ctx


@contextmanager
def memleak(t: Target) -> Iterator[None]:
    proc = subprocess.Popen([MEMLEAK, "-p", str(t.pid), "3600"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "Attaching" not in line:
        proc.kill()
        raise RuntimeError(f"memleak-bpfcc did not start: {line}{proc.stdout.read()}")
    time.sleep(1.0)
    try:
        yield
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(t: Target, ctx: Callable[[Target], object], pairs: int, rounds: int) -> float:
    with ctx(t):  # type: ignore[attr-defined]
        t.run(max(pairs // 10, 1000))
        return statistics.median(t.run(pairs) for _ in range(rounds))


def best_of(t: Target, configs: list[tuple[str, Callable[[Target], object], int]], passes: int,
            rounds: int) -> dict[str, float]:
    """Each configuration's lowest ns per pair over `passes` passes through all of them in turn."""
    best: dict[str, float] = {}
    for n in range(passes):
        for name, ctx, pairs in configs:
            ns = measure(t, ctx, pairs, rounds)
            best[name] = min(ns, best.get(name, ns))
            print(f"# pass {n + 1}: {name}: {ns:.1f} ns/pair", file=sys.stderr, flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--no-memleak", action="store_true")
    ap.add_argument("--preload", help="LD_PRELOAD this allocator into the target")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (uprobes)")
    from nativewatch.malloc_profile.attach import supported_rungs

    t = Target(build_target(), args.preload)
    configs: list[tuple[str, Callable[[Target], object], int]] = [
        ("no probes", no_probes, args.pairs * 10),
        ("trap floor (nativewatch's probe points, empty programs)", floor(False), args.pairs),
        ("trap floor with every probe at function entry", floor(True), args.pairs),
        *[(f"nativewatch default (sampled, 512 KiB) via {s.rung}", nativewatch("sampled", s.rung), args.pairs)
          for s in supported_rungs() if s.ok],
        ("nativewatch exact", nativewatch("exact"), args.pairs),
    ]
    if not args.no_memleak and Path(MEMLEAK).exists():
        configs.append(("memleak-bpfcc (default options)", memleak, args.pairs))
    try:
        best = best_of(t, configs, args.passes, args.rounds)
    finally:
        t.close()
    results = [(name, best[name]) for name, _, _ in configs]
    base = results[0][1]
    added = {name: ns - base for name, ns in results}
    print(f"target allocator: {args.preload or 'glibc'}")
    print("| configuration | ns per malloc/free pair | added ns per pair |")
    print("|---|---:|---:|")
    for name, ns in results:
        print(f"| {name} | {ns:,.0f} | {added[name]:,.0f} |")
    ml = next((v for k, v in added.items() if k.startswith("memleak")), None)
    nd = next(v for k, v in added.items() if k.startswith("nativewatch default"))  # the best rung
    if ml:
        print(f"\nnativewatch default adds {nd / ml:.2f}x what memleak-bpfcc adds (target <= 0.25).")


if __name__ == "__main__":
    main()
