"""Shared test helpers: building real C programs, BPF/JVM gating, sample paths.

NATIVEWATCH_REQUIRE_BPF=1 (set by .ci/run) turns every "eBPF unavailable" skip into a failure, so a CI
machine that silently lost BPF cannot pass with the eBPF tests skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"
PROGRAMS = Path(__file__).resolve().parent / "programs"
BUILD_DIR = ROOT / ".cache" / "test-build"


def bpf_required() -> bool:
    return os.environ.get("NATIVEWATCH_REQUIRE_BPF") == "1"


def skip_or_fail_bpf(reason: str) -> None:
    """Skip an eBPF test when eBPF is missing, or fail it under NATIVEWATCH_REQUIRE_BPF=1."""
    if bpf_required():
        pytest.fail(f"eBPF required (NATIVEWATCH_REQUIRE_BPF=1) but unavailable: {reason}")
    pytest.skip(f"eBPF unavailable: {reason}")


@pytest.fixture(scope="session")
def bpf_available() -> None:
    """Use as a fixture in every test that needs bcc + uprobes/tracepoints."""
    if os.geteuid() != 0:
        skip_or_fail_bpf("not root")
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on host
        skip_or_fail_bpf(f"cannot import bcc: {exc}")
    if not Path("/sys/kernel/tracing/events").exists() and not Path("/sys/kernel/debug/tracing/events").exists():
        skip_or_fail_bpf("tracefs not mounted")


def build_c(source: Path | str, *, name: str | None = None, cflags: list[str] | tuple[str, ...] = (),
            ldflags: list[str] | tuple[str, ...] = ()) -> Path:
    """Compile a C program once per (source, flags) and return the binary path (cached by content)."""
    src = Path(source)
    if not src.is_absolute():
        src = PROGRAMS / src
    key = hashlib.sha256(src.read_bytes() + repr((list(cflags), list(ldflags))).encode()).hexdigest()[:12]
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    out = BUILD_DIR / f"{name or src.stem}-{key}"
    if not out.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            pytest.fail("no C compiler: run scripts/setup.sh")
        tmp = out.with_suffix(".tmp")
        subprocess.run([cc, *cflags, "-o", str(tmp), str(src), *ldflags], check=True)
        tmp.rename(out)
    return out


def build_go(name: str, *, cgo: bool) -> Path:
    """Build the Go program in tests/programs/NAME (module cache and build cache in .cache)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("golang-go missing: run scripts/setup.sh")
    out = ROOT / ".cache" / "test-build" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOCACHE=str(ROOT / ".cache" / "gocache"), GOFLAGS="-mod=mod",
               CGO_ENABLED="1" if cgo else "0")
    subprocess.run([go, "build", "-o", str(out), "."], cwd=PROGRAMS / name, env=env, check=True)
    return out


@pytest.fixture
def nativewatch_cli():
    """Run the real console script as a user would; returns CompletedProcess."""

    def run(*args: str, timeout: float = 120, check: bool = False, env: dict | None = None):
        exe = Path(sys.executable).parent / "nativewatch"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nativewatch.cli"]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                              check=check, env=env)

    return run
