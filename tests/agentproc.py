"""A real `nativewatch agent` process for the reliability tests: started from a TOML config the test
writes, observed from outside (its /proc entry, /healthz, /metrics) as an operator would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class AgentProcess:
    def __init__(self, tmp: Path, *, prefix: tuple[str, ...] = (), **settings: Any) -> None:
        self.tmp = tmp
        self.port = free_port()
        conf = {"listen": f"127.0.0.1:{self.port}", "state_dir": tmp / "state", "evidence_dir": tmp / "ev",
                **settings}
        self.config = tmp / "agent.toml"
        self.config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in conf.items()))
        self.log = tmp / "agent.log"
        exe = Path(sys.executable).parent / "nativewatch"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nativewatch.cli"]
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*prefix, *cmd, "agent", "--config", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The agent's own pid (the last process of a prefix such as `unshare` execs into it)."""
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> dict[str, Any]:
        return json.loads(self.get("/healthz")[1])

    def wait_ready(self, scans: int = 2, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                h = self.health()
                if h.get("scans_total", 0) >= scans:
                    return h
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"agent not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    def wait_scans(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        target = self.health()["scans_total"] + n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["scans_total"] >= target:
                return h
            time.sleep(0.2)
        raise AssertionError(f"{n} scans did not complete within {timeout} s")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
        return sorted(out)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float | None:
        """Sum of the samples of one series name whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        total, found = 0.0, False
        for fam in text_string_to_metric_families(self.get("/metrics")[1].decode()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
                    found = True
        return total if found else None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.log.read_text(errors="replace")

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
