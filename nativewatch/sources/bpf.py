"""The one loader of nativewatch's eBPF programs: where the C lives, its -D settings, and one clear
reason when it cannot run.

The programs are C sources (bpf/*.c) that bcc compiles at run time against the node's kernel headers.
They are found in $NATIVEWATCH_BPF_DIR, else in a `bpf` directory beside the package's parent: the
checkout's bpf/ when run from source, site-packages/bpf when installed (scripts/image-steps.sh copies
them there and its entrypoint sets the variable).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nativewatch.errors import SourceUnavailable

__all__ = ["bpf_dir", "program_path", "cflags", "program_text", "load_bpf"]

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
