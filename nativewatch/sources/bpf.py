"""The one loader of nativewatch's eBPF programs: where the C lives, its -D settings, and one clear
reason when it cannot run.

The programs are C sources (bpf/*.c) that bcc compiles at run time against the node's kernel headers.
Long-running processes (the agent) load them with `load_detached`: a short-lived child compiles and
attaches them and hands back descriptors, so bcc's compiler never stays resident; short commands
(`profile`) use `load_bpf` and bcc's own objects.
They are found in $NATIVEWATCH_BPF_DIR, else in a `bpf` directory beside the package's parent: the
checkout's bpf/ when run from source, site-packages/bpf when installed (scripts/image-steps.sh copies
them there and its entrypoint sets the variable).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nativewatch.errors import SourceUnavailable

__all__ = ["DetachedProgram", "ProgramSpec", "bpf_dir", "cflags", "load_bpf", "load_detached", "load_one",
           "program_path", "program_text"]

Defines = Mapping[str, int | str]

_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.-]+)"[ \t]*$', re.MULTILINE)


def bpf_dir() -> Path:
    # Read on every call, not at import: a test or the entrypoint may set it after nativewatch loaded.
    env = os.environ.get("NATIVEWATCH_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"


def program_path(name: str) -> Path:
    return bpf_dir() / name


def cflags(defines: Defines) -> list[str]:
    """Compiler flags for bcc: the bpf directory for local headers, then one -D per setting."""
    return [f"-I{bpf_dir()}", *(f"-D{k}={v}" for k, v in defines.items())]


def program_text(name: str, defines: Defines) -> str:
    """The final program as bcc compiles it, settings as #defines and local headers inlined
    (for --dump-bpf: what runs in the kernel can be read without loading it)."""
    directory = bpf_dir()

    def inline(m: re.Match[str]) -> str:
        header = directory / m.group(1)
        return header.read_text() if header.is_file() else m.group(0)

    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + _LOCAL_INCLUDE.sub(inline, (directory / name).read_text())


def load_bpf(name: str, defines: Defines) -> Any:
    """Compile and load bpf/<name>; returns the bcc.BPF object. Raises SourceUnavailable, never a
    bare bcc error, so every caller can degrade with the reason."""
    if os.geteuid() != 0:
        raise SourceUnavailable("eBPF needs root (or CAP_BPF + CAP_PERFMON)")
    src = program_path(name)
    if not src.is_file():
        raise SourceUnavailable(f"BPF program {src} missing (set NATIVEWATCH_BPF_DIR?)")
    try:
        from bcc import BPF  # type: ignore[import-not-found]  # lazily: the rest works without bcc
    except Exception as exc:  # noqa: BLE001 - any import failure means the same thing here
        raise SourceUnavailable(f"python bcc not importable ({exc}): install python3-bpfcc") from exc
    try:
        return BPF(src_file=str(src).encode(), cflags=cflags(defines))
    except Exception as exc:  # noqa: BLE001 - bcc raises plain Exception on compile/load failure
        raise SourceUnavailable(f"cannot load {name}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    name: str  # bpf/<name>
    defines: dict[str, int | str]
    maps: tuple[str, ...]  # the maps the caller reads


class DetachedProgram:
    """A program compiled and attached by a child process: its maps by name, and the descriptors that
    keep it attached. ``close`` detaches it (so does the death of this process)."""

    def __init__(self, name: str, maps: dict[str, int], keep: list[int]) -> None:
        self.name = name
        self._map_fds = maps
        self._keep = keep
        self._maps: dict[str, Any] = {}

    def map(self, name: str) -> Any:
        from nativewatch.sources.bpfsys import BpfMap

        m = self._maps.get(name)
        if m is None:
            m = self._maps[name] = BpfMap(self._map_fds[name])
        return m

    def map_fd(self, name: str) -> int:
        return self._map_fds[name]

    def close(self) -> None:
        for fd in [*self._map_fds.values(), *self._keep]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._map_fds, self._keep, self._maps = {}, [], {}


LOAD_TIMEOUT_S = 120.0


def load_detached(specs: list[ProgramSpec], timeout_s: float = LOAD_TIMEOUT_S) -> dict[str, DetachedProgram | str]:
    """Compile, load and attach each program in a short-lived child (`nativewatch.sources.bpfchild`)
    and receive its descriptors: this process never maps bcc's compiler. Returns per program either
    the loaded program or the reason it failed; raises SourceUnavailable when nothing could run."""
    if os.geteuid() != 0:
        raise SourceUnavailable("eBPF needs root (or CAP_BPF + CAP_PERFMON)")
    for spec in specs:
        if not program_path(spec.name).is_file():
            raise SourceUnavailable(f"BPF program {program_path(spec.name)} missing (set NATIVEWATCH_BPF_DIR?)")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out: dict[str, DetachedProgram | str] = {}
    try:
        with tempfile.TemporaryFile() as errf:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "nativewatch.sources.bpfchild", str(child.fileno())],
                                        pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=errf)
            except OSError as exc:
                raise SourceUnavailable(f"cannot start the BPF loader: {exc}") from exc
            child.close()
            try:
                parent.send(json.dumps({"programs": [
                    {"name": s.name, "defines": dict(s.defines), "maps": list(s.maps)} for s in specs]}).encode())
                parent.settimeout(timeout_s)
                for _ in specs:
                    try:
                        msg, fds, _flags, _addr = socket.recv_fds(parent, 1 << 16, 256)
                    except (TimeoutError, OSError) as exc:
                        raise SourceUnavailable(f"BPF loader gave no answer: {exc}") from exc
                    if not msg:
                        break  # the child died
                    meta = json.loads(msg)
                    name = str(meta.get("name"))
                    if meta.get("error") is not None:
                        for fd in fds:
                            os.close(fd)
                        out[name] = str(meta["error"])
                        continue
                    nmaps = len(meta["maps"])
                    maps = {m: fds[i] for m, i in meta["maps"].items()}
                    out[name] = DetachedProgram(name, maps, list(fds[nmaps:]))
            finally:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            errf.seek(0)
            tail = errf.read()[-2000:].decode("utf-8", "replace").strip()
        # libbcc says why (the errno text) on the loader's stderr, not in the exception it raises
        said = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        for spec in specs:
            got = out.get(spec.name)
            if got is None:
                out[spec.name] = f"the BPF loader exited ({proc.returncode}) before loading it" + (
                    f": {said}" if said else "")
            elif isinstance(got, str) and said and said not in got:
                out[spec.name] = f"{got} ({said})"
        return out
    except BaseException:
        for v in out.values():
            if isinstance(v, DetachedProgram):
                v.close()
        raise
    finally:
        parent.close()
        with contextlib.suppress(OSError):
            child.close()


def load_one(spec: ProgramSpec) -> DetachedProgram:
    """One program, or SourceUnavailable with the reason it could not run."""
    got = load_detached([spec]).get(spec.name)
    if isinstance(got, DetachedProgram):
        return got
    raise SourceUnavailable(str(got) if str(got).startswith("cannot load") else f"cannot load {spec.name}: {got}")
