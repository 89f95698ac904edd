"""Is this process CPython, which version, and which file holds the interpreter's data?

The interpreter is the executable itself (Debian's python3.11 links libpython statically) or a mapped
libpython3.X.so (pyenv and most --enable-shared builds, embedders such as uwsgi). Either exports
`_PyRuntime`; 3.11 and later also export `Py_Version` (PY_VERSION_HEX), read from the file. Older
versions are known by the library's or executable's name.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nativewatch.runtimes.exe import ElfFacts, exe_facts, mapped_file_facts
from nativewatch.sources.procfs import Mapping

__all__ = ["PythonBinary", "find_python", "parse_py_version"]

_MARKERS = ("_PyRuntime", "Py_InitializeEx")
_VALUES = ("Py_Version",)
_LIBPYTHON = re.compile(r"/libpython(\d)\.(\d{1,2})(t?)[a-z]*\.so[.\d]*$")
_EXE_NAME = re.compile(r"python(\d)\.(\d{1,2})(t?)")


@dataclass(frozen=True, slots=True)
class PythonBinary:
    version: str | None  # "3.11.2", or "3.9" when only a name tells
    minor: tuple[int, int] | None
    free_threaded: bool  # a "t" build (3.13+ without the GIL): objects live in mimalloc, not pymalloc
    image: Mapping | None  # the libpython mapping holding the interpreter, None when it is the executable


def parse_py_version(raw: bytes) -> tuple[int, int, int] | None:
    """PY_VERSION_HEX (0xMMmmppLS) from the bytes of `Py_Version`."""
    if len(raw) not in (4, 8):
        return None
    v = struct.unpack("<I" if len(raw) == 4 else "<Q", raw)[0]
    major, minor, micro = v >> 24 & 0xFF, v >> 16 & 0xFF, v >> 8 & 0xFF
    return (major, minor, micro) if major == 3 and minor < 100 else None


def _from_facts(f: ElfFacts, name_match: re.Match[str] | None, image: Mapping | None) -> PythonBinary:
    full = parse_py_version(f.values["Py_Version"]) if "Py_Version" in f.values else None
    ft = bool(name_match and name_match.group(3))
    if full is not None:
        return PythonBinary(".".join(map(str, full)), full[:2], ft, image)
    if name_match is not None:
        mm = (int(name_match.group(1)), int(name_match.group(2)))
        return PythonBinary(f"{mm[0]}.{mm[1]}", mm, ft, image)
    return PythonBinary(None, None, ft, image)


def find_python(pid: int, proc_root: str, mappings: Sequence[Mapping]) -> PythonBinary | None:
    for m in mappings:
        if m.inode and m.offset == 0:
            nm = _LIBPYTHON.search(m.path)
            if nm is not None:
                f = mapped_file_facts(pid, proc_root, m, _MARKERS, values=_VALUES)
                if f.symbols:
                    return _from_facts(f, nm, m)
    f = exe_facts(pid, proc_root, _MARKERS, values=_VALUES)
    if "_PyRuntime" not in f.symbols:
        return None
    try:
        exe_name = os.path.basename(os.readlink(f"{proc_root}/{pid}/exe"))
    except OSError:
        exe_name = ""
    return _from_facts(f, _EXE_NAME.search(exe_name), None)
