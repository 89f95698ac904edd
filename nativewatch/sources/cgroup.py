"""cgroup source: container identity from /proc/PID/cgroup and container memory from the memory cgroup.

The work is split in two modules with one job each; this module is the public face callers import.
"""

from __future__ import annotations

from nativewatch.sources.cgroup_identity import (
    CgroupMembership,
    container_identity,
    parse_proc_cgroup,
    path_components,
    read_proc_cgroup,
    runtime_hint_from_sockets,
)
from nativewatch.sources.cgroup_memory import (
    V1_UNLIMITED_THRESHOLD,
    CgroupGone,
    CgroupMemory,
    CgroupVersionInfo,
    KeyedValues,
    MemoryCgroupLocation,
    cgroup_version_info,
    locate_memory_cgroup,
    memory_from_files,
    parse_keyed,
    parse_limit,
    parse_memory_events,
    parse_memory_stat,
    parse_oom_control,
    parse_single_value,
    read_container_memory,
    read_memory_dir,
)

__all__ = [
    "CgroupGone", "CgroupMembership", "CgroupMemory", "CgroupVersionInfo", "KeyedValues",
    "MemoryCgroupLocation", "V1_UNLIMITED_THRESHOLD", "cgroup_version_info", "container_identity",
    "locate_memory_cgroup", "memory_from_files", "parse_keyed", "parse_limit", "parse_memory_events",
    "parse_memory_stat", "parse_oom_control", "parse_proc_cgroup", "parse_single_value", "path_components",
    "read_container_memory", "read_memory_dir", "read_proc_cgroup", "runtime_hint_from_sockets",
]
