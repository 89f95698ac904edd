"""A test program driven one command a line on stdin, answering one JSON line on stdout."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Sequence
from typing import Any


class LineProc:
    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env={**os.environ, **(env or {})}, text=True, bufsize=1)
        self.pid = self.p.pid

    def ask(self, line: str, timeout: float = 120.0) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{line!r}: no answer in {timeout} s")
            ready, _, _ = select.select([self.p.stdout], [], [], left)
            if ready:
                out = self.p.stdout.readline()
                if not out:
                    err = self.p.stderr.read() if self.p.stderr else ""
                    raise RuntimeError(f"{line!r}: the program exited ({self.p.poll()}): {err[-2000:]}")
                doc = json.loads(out)
                assert "error" not in doc, doc
                return doc

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> LineProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
