"""Present pages of address ranges, from /proc/PID/pagemap (one u64 per page, bit 63 = present).

Reading pagemap needs the same ptrace-read access as /proc/PID/mem and signals nothing. Without
CAP_SYS_ADMIN the kernel zeroes the frame numbers but keeps the present bit, which is all this uses.
"""

from __future__ import annotations

import os

__all__ = ["PAGE", "PAGEMAP_MAX_PAGES", "Pagemap", "count_present"]

PAGE = 4096
PAGEMAP_MAX_PAGES = 8 << 20  # 64 MiB of pagemap entries = 32 GiB of mixed mappings; beyond, use sizes
# bytes.translate deletes these; what is left of the entries' top bytes are the absent pages.
_PRESENT_TOP = bytes(range(0x80, 0x100))


def count_present(raw: bytes) -> int:
    """Present entries in raw pagemap bytes: bit 63 is the top bit of each little-endian u64's last byte."""
    top = raw[7::8]
    return len(top) - len(top.translate(None, _PRESENT_TOP))


class Pagemap:
    """Counts present pages of address ranges in /proc/PID/pagemap (bit 63 = present)."""

    def __init__(self, pid: int, proc_root: str) -> None:
        self.path = f"{proc_root}/{pid}/pagemap"
        self.fd: int | None = None
        self.failed = False
        self.pages_read = 0

    def __call__(self, start: int, end: int) -> int | None:
        if self.failed:
            return None
        first = start // PAGE
        npages = (end + PAGE - 1) // PAGE - first
        if npages <= 0:
            return 0
        if self.pages_read + npages > PAGEMAP_MAX_PAGES:
            return None
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            raw = os.pread(self.fd, npages * 8, first * 8)
        except OSError:
            self.failed = True
            return None
        self.pages_read += npages
        present = count_present(raw)
        return present * PAGE

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
