"""Walk every process once and break each down; vanished pids are skipped, other errors counted."""

from __future__ import annotations

import os
from collections import Counter

from nativewatch.errors import AccessDenied, ProcessGone
from nativewatch.model import Breakdown
from nativewatch.snapshot import take_snapshot
from nativewatch.sources import procfs

__all__ = ["scan_all", "is_kernel_thread"]


def is_kernel_thread(pid: int, proc_root: str = "/proc") -> bool:
    # Kernel threads have no mm: an empty cmdline and no exe link. Cheaper than reading smaps.
    try:
        os.readlink(f"{proc_root}/{pid}/exe")
        return False
    except FileNotFoundError:
        return True
    except OSError:
        return False


def scan_all(proc_root: str = "/proc", *, jvm: bool = False, pids: list[int] | None = None,
             jvm_timeout_s: float = 2.0) -> tuple[list[Breakdown], dict[str, int]]:
    """Breakdowns of every user-space process (or of `pids`), plus error counts by kind."""
    out: list[Breakdown] = []
    errors: Counter[str] = Counter()
    self_pid = os.getpid()
    for pid in pids if pids is not None else procfs.list_pids(proc_root):
        if pid == self_pid and pids is None:
            continue
        if is_kernel_thread(pid, proc_root):
            continue
        try:
            out.append(take_snapshot(pid, proc_root=proc_root, jvm=jvm, jvm_timeout_s=jvm_timeout_s,
                                     with_sites=False))
        except ProcessGone:
            continue
        except AccessDenied:
            errors["access_denied"] += 1
        except Exception:  # noqa: BLE001 - one odd process must never stop the scan
            errors["attribution"] += 1
    return out, dict(errors)
