"""cgroup source, part 2: a container's memory as its memory cgroup counts it.

Pure parsers turn the controller's files into numbers; `memory_from_files` combines them into a
`CgroupMemory`; thin readers find the cgroup directory of a process (or a cgroup path) under a cgroup
root and read the files. The root is a parameter so an agent can read the host's cgroups from
wherever the host's /sys is mounted.

Figures follow the kubelet/cAdvisor conventions, because those are the numbers the OOM killer and
`kubectl top` users compare against:
  working set = usage - inactive_file, floored at 0 (cgroup v1: the hierarchical `total_inactive_file`)
  v1: usage = memory.usage_in_bytes, anon = total_rss, file = total_cache, shmem = total_shmem,
      oom kills = memory.oom_control `oom_kill` (kernel >= 4.13)
  v2: usage = memory.current, anon = anon, file = file, shmem = shmem, oom kills = memory.events `oom_kill`
v1 counts its children in the `total_*` keys and only the cgroup itself in the plain ones; a container
cgroup can have children (sub-cgroups of a pod sandbox, systemd in a container), so `total_*` wins
whenever it is there.
"""

from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass, field

from nativewatch.errors import NativewatchError, SourceUnavailable
from nativewatch.model import ContainerInfo
from nativewatch.sources.cgroup_identity import CgroupMembership, path_components, read_proc_cgroup

__all__ = [
    "CgroupGone", "CgroupMemory", "CgroupVersionInfo", "KeyedValues", "MemoryCgroupLocation",
    "V1_UNLIMITED_THRESHOLD", "cgroup_version_info", "constrained_memory", "locate_memory_cgroup",
    "memory_from_files", "parse_keyed", "parse_limit", "parse_memory_events", "parse_memory_stat",
    "parse_oom_control", "parse_single_value", "read_container_memory", "read_memory_dir",
]

# cgroup v1 writes "no limit" as PAGE_COUNTER_MAX pages in bytes: 9223372036854771712 with 4 KiB pages,
# a different number with 16/64 KiB pages. No machine has 1 EiB of memory, so anything above is "none".
V1_UNLIMITED_THRESHOLD = 1 << 60

V1_FILES = ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat", "memory.oom_control",
            "memory.max_usage_in_bytes")
V2_FILES = ("memory.current", "memory.max", "memory.stat", "memory.events", "memory.peak")
# Files a v1/v2 memory cgroup directory must have; the rest are optional (memory.peak: kernel >= 5.19).
_REQUIRED = {1: ("memory.usage_in_bytes", "memory.stat"), 2: ("memory.current", "memory.stat")}
# How deep below the cgroup root to look for a namespace-relative path (kubelet's deepest container
# cgroup, kubepods.slice/kubepods-burstable.slice/<pod>.slice/<ctr>.scope, is 4 levels; leave room for
# a node-in-a-container prefix like kind's).
_SUFFIX_SEARCH_DEPTH = 6


class CgroupGone(NativewatchError):
    """The cgroup directory vanished (its container exited): skip it quietly, like ProcessGone."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cgroup {path} is gone")
        self.path = path


@dataclass(frozen=True, slots=True)
class KeyedValues:
    """`key value` lines (memory.stat, memory.events, memory.oom_control) as integers."""

    values: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def parse_keyed(text: str) -> KeyedValues:
    """Parse `key <integer>` lines. Never raises; odd lines are skipped and named in `problems`."""
    values: dict[str, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(f"line {lineno}: not 'key value': {line[:80]!r}")
            continue
        key, raw = parts
        value = _int(raw)
        if value is None:
            problems.append(f"line {lineno}: {key[:40]!r} value {raw[:40]!r} is not an integer")
            continue
        if key in values:
            problems.append(f"line {lineno}: {key[:40]!r} repeated; first kept")
            continue
        values[key] = value
    return KeyedValues(values, tuple(problems))


def parse_memory_stat(text: str) -> KeyedValues:
    """memory.stat (v1: bytes plus page-event counters; v2: bytes plus event counters)."""
    return parse_keyed(text)


def parse_memory_events(text: str) -> KeyedValues:
    """v2 memory.events: low, high, max, oom, oom_kill, oom_group_kill counters."""
    return parse_keyed(text)


def parse_oom_control(text: str) -> KeyedValues:
    """v1 memory.oom_control: oom_kill_disable, under_oom, and (kernel >= 4.13) oom_kill."""
    return parse_keyed(text)


def _int(raw: str) -> int | None:
    raw = raw.strip()
    if not raw.isascii() or not raw.lstrip("-").isdecimal():
        return None
    return int(raw)


def parse_single_value(text: str) -> tuple[int | None, tuple[str, ...]]:
    """A one-number file (memory.usage_in_bytes, memory.current, memory.peak)."""
    value = _int(text)
    if value is None:
        return None, (f"not an integer: {text.strip()[:40]!r}",)
    if value < 0:
        return None, (f"negative byte count {value}",)
    return value, ()


def parse_limit(text: str, version: int) -> tuple[int | None, tuple[str, ...]]:
    """A limit file (v1 memory.limit_in_bytes, v2 memory.max). None means unlimited."""
    stripped = text.strip()
    if version == 2 and stripped == "max":
        return None, ()
    value, problems = parse_single_value(stripped)
    if value is not None and value >= V1_UNLIMITED_THRESHOLD:
        return None, problems
    return value, problems


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """One memory cgroup's figures, all bytes; None where the kernel did not provide the figure."""

    version: int  # 1 or 2
    path: str  # the directory read
    usage_bytes: int | None
    limit_bytes: int | None  # None: unlimited (or unreadable: see problems)
    working_set_bytes: int | None  # usage - inactive_file, floored at 0 (cAdvisor)
    inactive_file_bytes: int | None
    anon_bytes: int | None  # v1 total_rss, v2 anon
    file_bytes: int | None  # page cache incl. tmpfs/shmem: v1 total_cache, v2 file
    shmem_bytes: int | None
    oom_kill: int | None  # OOM kills inside this cgroup since it was created
    peak_bytes: int | None = None  # v1 max_usage_in_bytes, v2 memory.peak (kernel >= 5.19)
    effective_limit_bytes: int | None = None  # smallest limit of this cgroup and its ancestors
    stat: dict[str, int] = field(default_factory=dict)  # memory.stat verbatim
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version, "path": self.path, "usage_bytes": self.usage_bytes,
            "limit_bytes": self.limit_bytes, "working_set_bytes": self.working_set_bytes,
            "inactive_file_bytes": self.inactive_file_bytes, "anon_bytes": self.anon_bytes,
            "file_bytes": self.file_bytes, "shmem_bytes": self.shmem_bytes, "oom_kill": self.oom_kill,
            "peak_bytes": self.peak_bytes, "effective_limit_bytes": self.effective_limit_bytes,
            "problems": list(self.problems),
        }


def _stat_get(stat: dict[str, int], version: int, v1_key: str, v2_key: str) -> int | None:
    if version == 2:
        return stat.get(v2_key)
    return stat.get("total_" + v1_key, stat.get(v1_key))


def memory_from_files(version: int, files: dict[str, str], *, path: str = "",
                      ancestor_limits: tuple[int | None, ...] = ()) -> CgroupMemory:
    """Combine the texts of one memory cgroup's files (name -> text; absent = not readable).

    `ancestor_limits` are the v2 `memory.max` limits of the parents (v1 reports the hierarchical limit
    in memory.stat itself).
    """
    if version not in (1, 2):
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}")
    problems: list[str] = []

    def single(name: str) -> int | None:
        if name not in files:
            return None
        value, probs = parse_single_value(files[name])
        problems.extend(f"{name}: {p}" for p in probs)
        return value

    def keyed(name: str) -> dict[str, int]:
        if name not in files:
            return {}
        parsed = parse_keyed(files[name])
        problems.extend(f"{name}: {p}" for p in parsed.problems)
        return parsed.values

    for name in _REQUIRED[version]:
        if name not in files:
            problems.append(f"{name} missing")

    usage = single("memory.usage_in_bytes" if version == 1 else "memory.current")
    limit_name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    limit: int | None = None
    if limit_name in files:
        limit, probs = parse_limit(files[limit_name], version)
        problems.extend(f"{limit_name}: {p}" for p in probs)
    else:
        problems.append(f"{limit_name} missing")
    stat = keyed("memory.stat")

    inactive_file = _stat_get(stat, version, "inactive_file", "inactive_file")
    working_set: int | None = None
    if usage is not None:
        if inactive_file is None:
            if stat:
                problems.append("memory.stat has no inactive_file: working set = usage")
            working_set = usage
        else:
            working_set = max(0, usage - inactive_file)

    if version == 1:
        events = keyed("memory.oom_control")
        oom_kill = events.get("oom_kill")
        peak = single("memory.max_usage_in_bytes")
        hierarchical = stat.get("hierarchical_memory_limit")
        effective = None if hierarchical is None or hierarchical >= V1_UNLIMITED_THRESHOLD else hierarchical
        if effective is None and limit is not None:
            effective = limit
    else:
        events = keyed("memory.events")
        oom_kill = events.get("oom_kill")
        peak = single("memory.peak")
        known = [x for x in (limit, *ancestor_limits) if x is not None]
        effective = min(known) if known else None
    if oom_kill is None and ("memory.oom_control" if version == 1 else "memory.events") in files:
        problems.append("no oom_kill counter (kernel older than 4.13?)")

    return CgroupMemory(
        version=version, path=path, usage_bytes=usage, limit_bytes=limit, working_set_bytes=working_set,
        inactive_file_bytes=inactive_file,
        anon_bytes=_stat_get(stat, version, "rss", "anon"),
        file_bytes=_stat_get(stat, version, "cache", "file"),
        shmem_bytes=_stat_get(stat, version, "shmem", "shmem"),
        oom_kill=oom_kill, peak_bytes=peak, effective_limit_bytes=effective, stat=stat,
        problems=tuple(problems),
    )


# ---- host layout ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupVersionInfo:
    """What the host's cgroup root holds (for `nativewatch doctor` and for locating cgroups)."""

    root: str
    mode: str  # "v1" | "v2" | "hybrid" | "none"
    v1_controllers: dict[str, str]  # controller (or "name=systemd") -> mounted hierarchy directory
    v2_mount: str | None  # the cgroup2 hierarchy: the root itself (v2), root/unified (hybrid)
    v2_controllers: tuple[str, ...]  # controllers the v2 hierarchy offers (cgroup.controllers)
    memory_version: int | None  # which hierarchy carries the memory controller
    memory_root: str | None  # its directory
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"root": self.root, "mode": self.mode, "v1_controllers": dict(self.v1_controllers),
                "v2_mount": self.v2_mount, "v2_controllers": list(self.v2_controllers),
                "memory_version": self.memory_version, "memory_root": self.memory_root,
                "problems": list(self.problems)}


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def cgroup_version_info(cgroup_root: str = "/sys/fs/cgroup") -> CgroupVersionInfo:
    """Probe a cgroup root by its files (not /proc/mounts, so a root mounted elsewhere works too)."""
    root = os.path.normpath(cgroup_root)
    problems: list[str] = []
    if not os.path.isdir(root):
        return CgroupVersionInfo(root, "none", {}, None, (), None, None, (f"{root} is not a directory",))
    v2_mount: str | None = None
    v1: dict[str, str] = {}
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        v2_mount = root
    else:
        if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
            v2_mount = os.path.join(root, "unified")
        try:
            entries = sorted(os.scandir(root), key=lambda e: (e.is_symlink(), e.name))
        except OSError as exc:
            entries = []
            problems.append(f"cannot list {root}: {exc.strerror}")
        for entry in entries:
            full = os.path.join(root, entry.name)
            if full == v2_mount or not os.path.isdir(full):
                continue
            if not os.path.exists(os.path.join(full, "cgroup.procs")):
                continue
            # A named hierarchy without controllers (systemd's) is mounted as "name=systemd".
            names = ["name=" + entry.name] if entry.name in ("systemd", "elogind") else entry.name.split(",")
            for name in names:
                v1.setdefault(name, full)
    v2_controllers: tuple[str, ...] = ()
    if v2_mount is not None:
        text = _read_text(os.path.join(v2_mount, "cgroup.controllers"))
        if text is None:
            problems.append(f"cannot read {v2_mount}/cgroup.controllers")
        else:
            v2_controllers = tuple(text.split())
    memory_version: int | None = None
    memory_root: str | None = None
    if "memory" in v1 and os.path.exists(os.path.join(v1["memory"], "memory.usage_in_bytes")):
        memory_version, memory_root = 1, v1["memory"]
    elif v2_mount is not None and "memory" in v2_controllers:
        memory_version, memory_root = 2, v2_mount
    else:
        problems.append("no memory controller found (booted with cgroup_disable=memory?)")
    if v2_mount == root:
        mode = "v2"
    elif v1 and v2_mount is not None:
        mode = "hybrid"
    elif v1:
        mode = "v1"
    else:
        mode = "none"
        problems.append(f"no cgroup hierarchy found under {root}")
    return CgroupVersionInfo(root, mode, v1, v2_mount, v2_controllers, memory_version, memory_root,
                             tuple(problems))


# ---- locating and reading ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryCgroupLocation:
    path: str | None  # directory on this host, None when it could not be found
    version: int | None
    problems: tuple[str, ...] = ()
    gone: bool = False  # an absolute path whose directory does not exist (anymore)


def _join_under(base: str, comps: list[str]) -> str | None:
    if any(c in ("..", ".") or "\0" in c for c in comps):
        return None
    joined = os.path.normpath(os.path.join(base, *comps))
    return joined if joined == base or joined.startswith(base + os.sep) else None


def _search_suffix(base: str, comps: list[str]) -> list[str]:
    """Directories under `base` (any depth up to the bound) that end with the components `comps`."""
    escaped = [glob.escape(c) for c in comps]
    found: list[str] = []
    for depth in range(1, _SUFFIX_SEARCH_DEPTH + 1):
        pattern = os.path.join(glob.escape(base), *(["*"] * depth), *escaped)
        found.extend(p for p in glob.glob(pattern) if os.path.isdir(p))
        if found:
            break
    return found


def locate_memory_cgroup(membership: CgroupMembership, cgroup_root: str = "/sys/fs/cgroup", *,
                         layout: CgroupVersionInfo | None = None) -> MemoryCgroupLocation:
    """Find the memory cgroup directory of a membership under `cgroup_root`.

    Paths relative to a private cgroup namespace (`/../x/y`, or starting mid-hierarchy) cannot be
    joined to the root directly: they are looked up as a suffix of a directory below the root, and
    used only if exactly one directory matches.
    """
    layout = layout or cgroup_version_info(cgroup_root)
    if layout.memory_version is None or layout.memory_root is None:
        return MemoryCgroupLocation(None, None, ("no memory controller under " + layout.root, *layout.problems))
    version = layout.memory_version
    base = layout.memory_root
    path = membership.v1.get("memory") if version == 1 else membership.v2
    if path is None:
        which = "v1 memory" if version == 1 else "v2"
        return MemoryCgroupLocation(None, version, (f"process has no {which} cgroup line",))
    ups, comps = path_components(path)
    direct = _join_under(base, comps)
    if direct is None:
        return MemoryCgroupLocation(None, version, (f"refusing cgroup path {path[:120]!r}",))
    if ups == 0 and os.path.isdir(direct):
        return MemoryCgroupLocation(direct, version)
    if not comps:
        return MemoryCgroupLocation(None, version, (
            f"cgroup path {path!r} is the reader's own cgroup namespace root: run with the host's "
            "cgroup namespace (e.g. hostCgroup / --cgroupns=host) to see where it is",))
    matches = _search_suffix(base, comps)
    if len(matches) == 1:
        return MemoryCgroupLocation(matches[0], version, (f"namespace-relative path {path!r} found by suffix",))
    if not matches:
        return MemoryCgroupLocation(None, version, (f"no directory for cgroup {path!r} under {base}",),
                                    gone=ups == 0)
    return MemoryCgroupLocation(None, version, (f"cgroup {path!r} is ambiguous under {base}: {len(matches)} matches",))


def _v2_ancestor_limits(directory: str, base: str) -> tuple[int | None, ...]:
    limits: list[int | None] = []
    current = os.path.dirname(directory)
    while current.startswith(base + os.sep) or current == base:
        if current == base:
            break  # the v2 root has no memory.max
        text = _read_text(os.path.join(current, "memory.max"))
        if text is not None:
            limits.append(parse_limit(text, 2)[0])
        current = os.path.dirname(current)
    return tuple(limits)


def read_memory_dir(directory: str, version: int, *, v2_root: str | None = None) -> CgroupMemory:
    """Read one memory cgroup directory. Raises CgroupGone if it vanished before or while reading."""
    files: dict[str, str] = {}
    problems: list[str] = []
    gone = False
    for name in V1_FILES if version == 1 else V2_FILES:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as fh:
                files[name] = fh.read()
        except FileNotFoundError:
            gone = True
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror or exc}")
            if exc.errno == errno.ENODEV:  # a removed cgroup's files answer ENODEV while still open
                gone = True
    if gone and not os.path.isdir(directory):
        raise CgroupGone(directory)
    ancestors = _v2_ancestor_limits(directory, v2_root) if version == 2 and v2_root else ()
    result = memory_from_files(version, files, path=directory, ancestor_limits=ancestors)
    if problems:
        return _with_problems(result, problems)
    return result


def _with_problems(mem: CgroupMemory, extra: list[str]) -> CgroupMemory:
    from dataclasses import replace

    return replace(mem, problems=(*extra, *mem.problems))


def read_container_memory(target: int | str | CgroupMembership | ContainerInfo, *,
                          cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc",
                          layout: CgroupVersionInfo | None = None) -> CgroupMemory:
    """Memory of the cgroup of a pid, a `CgroupMembership`, a `ContainerInfo` or a cgroup path.

    A str / ContainerInfo.cgroup is a path in the hierarchy that carries the memory controller.
    Raises ProcessGone (pid vanished), CgroupGone (cgroup vanished) or SourceUnavailable (no memory
    controller, or the cgroup cannot be found under `cgroup_root`; the message says why).
    """
    layout = layout or cgroup_version_info(cgroup_root)
    if isinstance(target, CgroupMembership):
        membership = target
    elif isinstance(target, int):
        membership = read_proc_cgroup(target, proc_root)
    else:
        path = target.cgroup if isinstance(target, ContainerInfo) else target
        membership = (CgroupMembership(v1={"memory": path}) if layout.memory_version == 1
                      else CgroupMembership(v2=path))
    where = locate_memory_cgroup(membership, cgroup_root, layout=layout)
    if where.gone:
        raise CgroupGone(str(membership.memory_path))
    if where.path is None or where.version is None:
        raise SourceUnavailable("; ".join(where.problems) or "memory cgroup not found")
    mem = read_memory_dir(where.path, where.version,
                          v2_root=layout.memory_root if where.version == 2 else None)
    if where.problems:
        return _with_problems(mem, list(where.problems))
    return mem


def constrained_memory(pid: int, *, cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc") -> int | None:
    """The lowest of the hard and soft limits of pid's own memory cgroup (v1 memory.limit_in_bytes and
    memory.soft_limit_in_bytes, v2 memory.max and memory.high), None when unlimited or unknown: what
    libuv >= 1.45 reports as the constrained memory (checked with Node on v1: a soft limit counts, a
    parent's limit does not)."""
    try:
        membership = read_proc_cgroup(pid, proc_root)
        where = locate_memory_cgroup(membership, cgroup_root)
    except (NativewatchError, OSError):
        return None
    if where.path is None or where.version is None:
        return None
    names = ("memory.limit_in_bytes", "memory.soft_limit_in_bytes") if where.version == 1 else \
        ("memory.max", "memory.high")
    limits = []
    for name in names:
        text = _read_text(os.path.join(where.path, name))
        if text is not None:
            v, _ = parse_limit(text, where.version)
            if v is not None and v > 0:
                limits.append(v)
    return min(limits) if limits else None
