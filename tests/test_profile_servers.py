"""Allocation sites of a real server nobody here wrote (issue 11): Debian's redis-server, built -O2
without frame pointers, allocating through its own wrapper (zmalloc) into jemalloc, filled through
its own protocol by a client on loopback.

Ground truth is the server's own accounting: INFO memory's used_memory, which zmalloc keeps as the
sum of the usable sizes of everything it allocated. The test fills 20,000 keys of 16,000-byte strings
with SETRANGE (whose handler, setrangeCommand, allocates the string: SET would keep the buffer the
protocol parser allocated) and compares the growth of used_memory with the outstanding bytes of the
sites whose stacks pass through redis's command dispatch (`call`).

Tolerance: sampling at 32 KiB over ~320 MiB has a relative standard error of sqrt(32 KiB / 320 MiB)
= 1%; zmalloc counts jemalloc's usable size, which rounds a 16,006-byte request up to its 16,384-byte
size class, so the profile (which counts requested bytes) reads ~2.5% low by construction. 10% is
that bias plus 7 standard errors.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nativewatch.malloc_profile import run_profile

pytestmark = pytest.mark.bpf

REDIS = "/usr/bin/redis-server"
KEYS = 20_000
VALUE = 16_000


class Redis:
    def __init__(self, tmp: Path, *, debug: bool = False) -> None:
        exe = shutil.which("redis-server") or REDIS
        if not os.path.exists(exe):
            pytest.fail("redis-server missing: run scripts/setup-test-servers.sh")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no",
                                      *(["--enable-debug-command", "yes"] if debug else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("rb")
        assert self.command(b"PING") == b"+PONG\r\n"

    def command(self, *args: bytes) -> bytes:
        self.sock.sendall(_resp(args))
        line = self.reader.readline()
        if line.startswith(b"$"):
            return self.reader.read(int(line[1:]) + 2)[:-2]
        return line

    def used_memory(self) -> int:
        info = self.command(b"INFO", b"memory").decode()
        return int(next(ln.split(":", 1)[1] for ln in info.split("\r\n") if ln.startswith("used_memory:")))

    def fill(self, keys: int, size: int, batch: int = 500) -> None:
        value = b"v" * size
        for i in range(0, keys, batch):
            n = min(keys, i + batch) - i
            self.sock.sendall(b"".join(_resp((b"SETRANGE", b"key:%08d" % j, b"0", value))
                                       for j in range(i, i + n)))
            for _ in range(n):
                reply = self.reader.readline()
                assert reply == b":%d\r\n" % size, reply

    def populate(self, keys: int) -> float:
        """Seconds DEBUG POPULATE of `keys` keys takes in a flushed database."""
        assert self.command(b"FLUSHALL", b"SYNC") == b"+OK\r\n"
        t0 = time.perf_counter()
        reply = self.command(b"DEBUG", b"POPULATE", b"%d" % keys, b"key", b"64")
        dt = time.perf_counter() - t0
        assert reply == b"+OK\r\n", reply
        return dt

    def stop(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait(10)


def _resp(args: tuple[bytes, ...]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


@pytest.mark.parametrize("via", ["inject", "session"])
def test_redis_command_sites_hold_what_redis_says_it_allocated(bpf_available, tmp_path, via):
    redis = Redis(tmp_path)
    try:
        exe = os.path.basename(os.path.realpath(f"/proc/{redis.proc.pid}/exe"))
        attached, stop = threading.Event(), threading.Event()
        growth: list[int] = []

        def drive() -> None:
            try:
                if attached.wait(60):
                    before = redis.used_memory()
                    redis.fill(KEYS, VALUE)
                    growth.append(redis.used_memory() - before)
            finally:
                stop.set()

        t = threading.Thread(target=drive)
        t.start()
        try:
            result = run_profile(redis.proc.pid, 300, mode="sampled", interval_bytes=32768, stop=stop,
                                 on_attached=attached.set, max_overhead=None, via=via)
        finally:
            stop.set()
            t.join(120)
        assert growth, "the fill did not finish"
        grew = growth[0]
        assert grew > KEYS * VALUE  # the server's own figure, before comparing against it
        dispatch = f"call ({exe})"
        handler = f"setrangeCommand ({exe})"
        reaching = [s for s in result.sites if dispatch in s.frames]
        held = sum(s.outstanding_bytes for s in reaching)
        assert abs(held - grew) <= 0.10 * grew, (held, grew, [s.frames[:6] for s in result.sites[:5]])
        top = result.sites[0]
        # the wrapper first, then the handler that allocated, the dispatch, and the event loop to main
        assert top.frames[0] == f"zmalloc_usable ({exe})"
        for f in (handler, dispatch, f"processCommand ({exe})", f"aeMain ({exe})", f"main ({exe})"):
            assert f in top.frames, top.frames
        assert top.frames.index(handler) < top.frames.index(dispatch) < top.frames.index(f"main ({exe})")
        assert result.lost["stack_copies_lost"] == 0 and result.allocator_kind == "jemalloc"
        assert result.via == via
        assert redis.proc.poll() is None and redis.command(b"DBSIZE") == b":%d\r\n" % KEYS
    finally:
        redis.stop()


def test_redis_filled_under_a_default_capture_is_at_most_one_and_a_half_times_slower(bpf_available, tmp_path):
    """DEBUG POPULATE (redis's own fill: ~3 allocations a key) of 200,000 keys, bare and under
    `nativewatch profile` at its defaults (auto: the in-process sampler), alternating in one run, best of
    three each (other load only adds time). Issue 13's bound is 1.5x; measured 1.1x here (the uprobe
    path: 13x, benchmarks/bench_inject.py). The capture must also have attributed the fill."""
    redis = Redis(tmp_path, debug=True)
    try:
        redis.populate(200_000)  # the dict grows to its size once
        bare, under = [], []
        results = []
        for _ in range(3):
            bare.append(redis.populate(200_000))
            attached, stop = threading.Event(), threading.Event()
            box: list = []

            def capture(box: list = box, stop: threading.Event = stop, attached: threading.Event = attached) -> None:
                box.append(run_profile(redis.proc.pid, 120, stop=stop, on_attached=attached.set))

            t = threading.Thread(target=capture)
            t.start()
            try:
                assert attached.wait(120)
                under.append(redis.populate(200_000))
            finally:
                stop.set()
                t.join(120)
            results.append(box[0])
        assert all(r.via == "inject" and r.stopped_early is None for r in results), [r.problems for r in results]
        assert min(under) <= 1.5 * min(bare), (bare, under)
        exe = os.path.basename(os.path.realpath(f"/proc/{redis.proc.pid}/exe"))
        # the 200,000 keys (~25 MB with their values) are held by sites through the DEBUG command
        held = sum(s.outstanding_bytes for s in results[-1].sites if f"debugCommand ({exe})" in s.frames)
        assert held > 10_000_000, [s.frames[:5] for s in results[-1].sites[:5]]
    finally:
        redis.stop()
