"""The short-lived loader process: compile and attach eBPF programs with bcc, hand the descriptors to
the parent over a Unix socket (SCM_RIGHTS), exit.

bcc compiles with an in-process LLVM/clang: 90 MiB of library pages and 79 MiB of malloc arenas stayed
resident in a long-running agent that loaded its programs itself. Here that cost lives and dies with
this process. The kernel keeps programs, maps and attachments alive for as long as any descriptor to
them is open, and the parent holds a copy of each, so they outlive this process and still go away
with the parent, even if it is SIGKILLed.

Protocol: the parent sends one JSON request {"programs": [{"name", "defines", "maps"}]}; for each
program this process answers one message, JSON {"name", "maps": {map: index}, "links": n} with the
map descriptors (in that order) then n descriptors that keep the program attached, or JSON
{"name", "error"} without descriptors.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from nativewatch.errors import SourceUnavailable
from nativewatch.sources.bpf import load_bpf


def _load(prog: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    bpf = load_bpf(str(prog["name"]), dict(prog.get("defines", {})))
    fds: list[int] = []
    names: dict[str, int] = {}
    for m in prog.get("maps", []):
        names[m] = len(fds)
        fds.append(int(bpf[m.encode()].map_fd))
    # The attachment descriptors (a perf event per tracepoint, a link per raw tracepoint) keep each
    # program attached; the program descriptors are sent too, so nothing depends on their refcounts.
    links = [*bpf.tracepoint_fds.values(), *bpf.raw_tracepoint_fds.values(), *(f.fd for f in bpf.funcs.values())]
    if not bpf.tracepoint_fds and not bpf.raw_tracepoint_fds:
        raise SourceUnavailable(f"{prog['name']}: loaded but nothing attached")
    return {"name": prog["name"], "maps": names, "links": len(links)}, fds + [int(f) for f in links]


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    request = json.loads(sock.recv(1 << 20))
    for prog in request.get("programs", []):
        try:
            meta, fds = _load(prog)
        except Exception as exc:  # noqa: BLE001 - every failure is the parent's reason to degrade
            sock.send(json.dumps({"name": prog.get("name"), "error": str(exc)}).encode())
            continue
        socket.send_fds(sock, [json.dumps(meta).encode()], fds)
    sock.close()
    sys.stdout.flush()
    # No interpreter shutdown: bcc's atexit cleanup would detach what the parent now holds.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
