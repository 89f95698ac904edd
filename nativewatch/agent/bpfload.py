"""Loading the agent's BPF programs: source path, -D flags, and one clear reason when it cannot run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nativewatch.errors import SourceUnavailable

__all__ = ["BPF_DIR", "bpf_source", "load_bpf"]

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


def bpf_source(name: str, defines: dict[str, int]) -> str:
    """The final program text, as loaded (for --dump-bpf)."""
    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + (BPF_DIR / name).read_text()


def load_bpf(name: str, defines: dict[str, int]) -> Any:
    if os.geteuid() != 0:
        raise SourceUnavailable("eBPF needs root (or CAP_BPF + CAP_PERFMON)")
    try:
        from bcc import BPF  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 - any import failure means the same thing here
        raise SourceUnavailable(f"python bcc not importable ({exc}): install python3-bpfcc") from exc
    src = BPF_DIR / name
    if not src.exists():
        raise SourceUnavailable(f"BPF program {src} missing")
    try:
        return BPF(src_file=str(src), cflags=[f"-D{k}={v}" for k, v in defines.items()])
    except Exception as exc:  # noqa: BLE001 - bcc raises plain Exception on compile/attach failure
        raise SourceUnavailable(f"cannot load {name}: {exc}") from exc
