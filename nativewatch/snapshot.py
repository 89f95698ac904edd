"""One process, one breakdown: read every source once, detect the runtime, attribute, let the runtime
refine, attach identity.

This is the I/O edge of attribution: it gathers facts (smaps, status, thread stack pointers, mounts,
a few bytes of the target's memory to confirm glibc heaps) and hands them to pure functions.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from nativewatch.attribute import GLIBC_HEAP_MAX, Attribution, attribute_process
from nativewatch.errors import AccessDenied
from nativewatch.model import Breakdown, ContainerInfo
from nativewatch.runtimes.base import ProcessInfo, RefineContext, Runtime
from nativewatch.runtimes.registry import detect
from nativewatch.sources import procfs
from nativewatch.sources.cgroup import container_identity, parse_proc_cgroup

__all__ = ["take_snapshot", "ProcessFacts", "gather_facts", "shmem_devices", "parse_mountinfo_shmem"]

_SHMEM_FSTYPES = {"tmpfs", "ramfs", "hugetlbfs", "devtmpfs"}


_MOUNTINFO_SEEN: dict[bytes, frozenset[str]] = {}


def parse_mountinfo_shmem(data: bytes) -> frozenset[str]:
    """smaps-style device ids ("00:1a", hex) of every tmpfs-like mount in a mountinfo file.

    Every process of a mount namespace has the same text, so a scan parses each namespace's once."""
    seen = _MOUNTINFO_SEEN.get(data)
    if seen is not None:
        return seen
    devs = _parse_mountinfo_shmem(data)
    if len(_MOUNTINFO_SEEN) >= 64:  # a few namespaces per node; never let targets grow this
        _MOUNTINFO_SEEN.clear()
    _MOUNTINFO_SEEN[data] = devs
    return devs


def _parse_mountinfo_shmem(data: bytes) -> frozenset[str]:
    devs: set[str] = set()
    for line in data.decode("utf-8", "replace").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rtoks = right.split()
        if len(fields) < 3 or not rtoks or rtoks[0] not in _SHMEM_FSTYPES:
            continue
        major, _, minor = fields[2].partition(":")
        try:
            devs.add(f"{int(major):02x}:{int(minor):02x}")
        except ValueError:
            continue
    return frozenset(devs)


def shmem_devices(pid: int, proc_root: str = "/proc") -> frozenset[str]:
    try:
        return parse_mountinfo_shmem(procfs.read_file(pid, "mountinfo", proc_root))
    except (AccessDenied, OSError):
        return frozenset()


class _HeapChecker:
    """Confirms a 64 MiB-aligned region is a glibc heap by reading its heap_info header.

    glibc's heap_info starts {ar_ptr, prev, size, mprotect_size}; mprotect_size is the length of the
    read-write part, which smaps shows as the mapping's size. Reading needs ptrace-read access; when
    it is refused the structural guess stands (returns None).
    """

    def __init__(self, pid: int, proc_root: str, rw_sizes: dict[int, int]) -> None:
        self.path = f"{proc_root}/{pid}/mem"
        self.rw_sizes = rw_sizes
        self.fd: int | None = None
        self.failed = False

    def __call__(self, start: int) -> bool | None:
        if self.failed:
            return None
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            raw = os.pread(self.fd, 32, start)
        except OSError:
            self.failed = True
            return None
        if len(raw) < 32:
            return None
        ar_ptr, _prev, size, mprotect_size = struct.unpack("<4Q", raw)
        rw = self.rw_sizes.get(start, 0)
        return bool(ar_ptr) and 0 < size <= mprotect_size <= GLIBC_HEAP_MAX and mprotect_size == rw

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(slots=True)
class ProcessFacts:
    pid: int
    status: procfs.Status
    comm: str
    cmdline: list[str]
    smaps: procfs.SmapsResult
    attribution: Attribution
    cgroup_text: str
    runtime: Runtime


def gather_facts(pid: int, proc_root: str = "/proc") -> ProcessFacts:
    status = procfs.read_status(pid, proc_root)
    comm = procfs.read_comm(pid, proc_root)
    cmdline = procfs.read_cmdline(pid, proc_root)
    smaps = procfs.read_smaps(pid, proc_root)
    try:
        # One thread: its stack is the [stack] mapping, no stack pointer needed (most small processes).
        sps = procfs.thread_stack_pointers(pid, proc_root) if status.threads != 1 else {}
    except AccessDenied:
        sps = {}
    runtime = detect(ProcessInfo(pid, proc_root, comm, tuple(cmdline), smaps.mappings))
    rw_sizes = {m.start: m.size for m in smaps.mappings if m.start % GLIBC_HEAP_MAX == 0}
    checker = _HeapChecker(pid, proc_root, rw_sizes)
    try:
        attribution = attribute_process(smaps.mappings, thread_sps=sps, runtime=runtime.name,
                                        managed_heap=runtime.managed_heap, glibc_heap_check=checker,
                                        shmem_devs=shmem_devices(pid, proc_root))
    finally:
        checker.close()
    try:
        cgroup_text = procfs.read_file(pid, "cgroup", proc_root).decode("utf-8", "replace")
    except (AccessDenied, OSError):
        cgroup_text = ""
    problems = list(attribution.problems) + list(smaps.problems[:5])
    if sps == {} and status.threads > 1:
        problems.append("thread stack pointers unreadable (needs CAP_SYS_PTRACE): stacks found from layout")
    if problems != list(attribution.problems):
        attribution = Attribution(attribution.runtime, attribution.categories, attribution.shares,
                                  attribution.detail, attribution.sources, tuple(problems))
    return ProcessFacts(pid, status, comm, cmdline, smaps, attribution, cgroup_text, runtime)


def container_of(cgroup_text: str) -> ContainerInfo | None:
    if not cgroup_text:
        return None
    return container_identity(parse_proc_cgroup(cgroup_text))


def take_snapshot(pid: int, *, proc_root: str = "/proc", jvm: bool = True, jvm_timeout_s: float = 5.0,
                  with_sites: bool = True, cgroup_root: str = "/sys/fs/cgroup") -> Breakdown:
    """Breakdown of one process. Raises ProcessGone / AccessDenied for the caller to report.

    `jvm` / `jvm_timeout_s` (names kept for their callers) allow and bound talking to the process for
    any runtime that needs it; jvm=False is passive, nothing is ever signalled.
    """
    facts = gather_facts(pid, proc_root)
    att = facts.attribution
    ref = facts.runtime.refine(RefineContext(pid, proc_root, facts.smaps.mappings, attach=jvm,
                                             timeout_s=jvm_timeout_s, cgroup_root=cgroup_root), att)
    bd = Breakdown(
        pid=pid,
        comm=facts.comm or facts.status.name,
        runtime=facts.runtime.name,
        rss_bytes=facts.smaps.rss,
        categories=dict(ref.categories),
        threads=facts.status.threads,
        sources=list(ref.sources),
        container=container_of(facts.cgroup_text),
        detail=att.detail,
        cmdline=facts.cmdline,
        nspid=facts.status.nspid,
        timestamp=time.time(),
        problems=[*att.problems, *ref.problems],
        runtime_details=dict(ref.details),
    )
    if with_sites:
        sites = _running_sites(pid)
        if sites is not None:
            bd.extra["top_sites"] = sites
            bd.sources.append("bpf")
    return bd


class SnapshotSampler:
    """take_snapshot again and again (soak, explain), with JVM refinement that falls back to the smaps view
    if JVM support is missing."""

    def __init__(self, pid: int, proc_root: str, jvm: bool, jvm_timeout_s: float) -> None:
        self.pid, self.proc_root, self.jvm, self.jvm_timeout_s = pid, proc_root, jvm, jvm_timeout_s
        self.notes: list[str] = []

    def __call__(self) -> Breakdown:
        try:
            return take_snapshot(self.pid, proc_root=self.proc_root, jvm=self.jvm,
                                 jvm_timeout_s=self.jvm_timeout_s, with_sites=False)
        except ImportError as exc:
            if not self.jvm:
                raise
            self.jvm = False
            self.notes.append(f"JVM support unavailable ({exc}): JVM memory is shown as native/file")
            return take_snapshot(self.pid, proc_root=self.proc_root, jvm=False, with_sites=False)


def _running_sites(pid: int) -> list[dict] | None:
    try:
        from nativewatch.malloc_profile.state import running_top_sites
    except ImportError:
        return None
    try:
        return running_top_sites(pid)
    except OSError:
        return None
