"""A /proc-shaped directory built from captured samples, so `take_snapshot` runs end to end offline.

Only the files the snapshot path opens are written; everything the samples lack (pagemap, mem) is
left out, which the code already treats as "unreadable" (the same as an unprivileged reader).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conftest import SAMPLES

PID = 4242
# The buildinfo magic alone, no ELF header: the Go probe's fallback scan finds it (sstrip-like binaries).
GO_EXE = b"\x00" * 64 + b"\xff Go buildinf:" + b"\x00" * 64
PLAIN_EXE = b"#!/bin/sh\n"
CONTAINER_ID = "0123456789abcdef" * 4
K8S_CGROUP = (f"0::/kubepods/besteffort/pod0e2a1c6e-6d1b-4b8e-9d43-0d4b2a7c9f11/{CONTAINER_ID}\n")
HOST_CGROUP = "0::/system.slice/app.service\n"


@dataclass(frozen=True)
class FakeProcess:
    comm: str
    smaps: Path
    cmdline: tuple[str, ...] = ()
    exe: bytes = PLAIN_EXE
    hsperfdata: Path | None = None
    cgroup: str = HOST_CGROUP
    threads: int = 1


def build(root: Path, proc: FakeProcess, pid: int = PID) -> str:
    """Write the process under `root` and return the proc_root to pass to the snapshot functions."""
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "status").write_text(f"Name:\t{proc.comm}\nState:\tS (sleeping)\nPid:\t{pid}\nPPid:\t1\n"
                              f"NSpid:\t{pid}\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nThreads:\t{proc.threads}\n")
    (d / "stat").write_text(f"{pid} ({proc.comm}) S 1 " + " ".join(["0"] * 17) + " 12345 0 0\n")
    (d / "comm").write_text(proc.comm + "\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in proc.cmdline))
    (d / "smaps").write_bytes(proc.smaps.read_bytes())
    # "running": no stack pointer, so stacks come from guard pages as in the fixture tests.
    (d / "task" / str(pid) / "syscall").write_text("running\n")
    (d / "mountinfo").write_text("22 1 0:21 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw\n")
    (d / "cgroup").write_text(proc.cgroup)
    (d / "exe").write_bytes(proc.exe)
    tmp = d / "root" / "tmp"
    tmp.mkdir(parents=True)
    if proc.hsperfdata is not None:
        (tmp / "hsperfdata_root").mkdir()
        (tmp / "hsperfdata_root" / str(pid)).write_bytes(proc.hsperfdata.read_bytes())
    return str(root)


def native(name: str, **kw: object) -> FakeProcess:
    return FakeProcess(comm=name[:15], smaps=SAMPLES / "native" / f"{name}-smaps.txt",
                       cmdline=(f"./{name}",), **kw)  # type: ignore[arg-type]


def go(name: str, **kw: object) -> FakeProcess:
    return FakeProcess(comm=name, smaps=SAMPLES / "go" / f"{name}-smaps.txt", cmdline=(f"./{name}",),
                       exe=GO_EXE, **kw)  # type: ignore[arg-type]


def jvm(version: int, *, hsperfdata: bool = True, **kw: object) -> FakeProcess:
    return FakeProcess(comm="java", smaps=SAMPLES / f"jdk{version}-proc-smaps.txt",
                       cmdline=("java", "-XX:NativeMemoryTracking=detail", "-Xmx512m", "Demo"),
                       hsperfdata=SAMPLES / f"hsperfdata-jdk{version}.bin" if hsperfdata else None,
                       threads=20, **kw)  # type: ignore[arg-type]
