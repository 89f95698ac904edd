"""Is this process Node.js, and which version? Decided from the ELF files it maps, not its name.

Node exports its addon API (N-API) from the executable, or from libnode.so when Debian-style builds
link it as a library, and V8's postmortem tables (`v8dbg_*`) beside it: both survive `strip`. The
version is the release URL Node embeds for `process.release` (".../release/vX.Y.Z/").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nativewatch.runtimes.exe import ElfFacts, exe_facts, mapped_file_facts
from nativewatch.sources.procfs import Mapping

__all__ = ["NodeBinary", "find_node"]

_MARKERS = ("napi_create_object", "node_module_register")
_VERSION = re.compile(rb"/release/v(\d{1,3}\.\d{1,4}\.\d{1,4})/")
_LIBNODE = re.compile(r"/libnode\.so(\.\d+)*$")


@dataclass(frozen=True, slots=True)
class NodeBinary:
    version: str | None
    file: str  # "exe" or the library's path as mapped (display only)


def _is_node(f: ElfFacts) -> bool:
    return any(n in f.symbols for n in _MARKERS)


def find_node(pid: int, proc_root: str, mappings: Sequence[Mapping]) -> NodeBinary | None:
    for m in mappings:
        if m.inode and _LIBNODE.search(m.path) and m.offset == 0:
            f = mapped_file_facts(pid, proc_root, m, _MARKERS, regex=_VERSION)
            if _is_node(f):
                return NodeBinary(f.pattern.decode() if f.pattern else None, m.path)
    f = exe_facts(pid, proc_root, _MARKERS, regex=_VERSION)
    if _is_node(f):
        return NodeBinary(f.pattern.decode() if f.pattern else None, "exe")
    return None
