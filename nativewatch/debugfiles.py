"""Separate debug files (libc6-dbg and the like) found by build id.

Only under the host's debug directory, never through a path taken from a target: the build id is
read from the target's file and checked to be plain hex before it becomes a file name.
"""

from __future__ import annotations

import os
import re
import stat
from typing import BinaryIO

from elftools.elf.elffile import ELFFile

__all__ = ["DEBUG_BUILD_ID_DIR", "build_id", "open_debug_file"]

DEBUG_BUILD_ID_DIR = "/usr/lib/debug/.build-id"
_MAX_DEBUG_FILE_BYTES = 2 << 30
_BUILD_ID = re.compile(r"[0-9a-f]{4,128}")


def build_id(elf: ELFFile) -> str:
    """The GNU build id note's hex, or "" (pyelftools raises on damaged notes: callers catch)."""
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for note in seg.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return ""


def open_debug_file(bid: str, debug_dir: str, problems: list[str]) -> BinaryIO | None:
    """The debug file of build id `bid`, opened, when one is installed and is a plausible regular
    file; None otherwise (not installed is the usual case and no problem)."""
    if not _BUILD_ID.fullmatch(bid):
        return None
    path = os.path.join(debug_dir, bid[:2], bid[2:] + ".debug")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_DEBUG_FILE_BYTES:
        problems.append(f"debug file {path}: not a regular file or too large, ignored")
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")
