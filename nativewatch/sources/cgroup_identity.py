"""cgroup source, part 1: which cgroups a process is in, and which container / pod that makes it.

`parse_proc_cgroup` turns /proc/PID/cgroup text (cgroup v1 `id:controllers:path` lines, the v2
`0::path` line, or both on a hybrid host) into a `CgroupMembership`. `container_identity` reads the
container id, runtime, pod UID and kubelet QoS class out of those paths.

Path shapes recognised (the container component is the deepest one that names a container; a pod is
only taken from the container's direct parent, so docker-in-a-pod does not borrow the outer pod):

  kubelet cgroupfs driver   /kubepods/burstable/pod<uid>/<id>        (besteffort likewise)
                            /kubepods/pod<uid>/<id>                  (guaranteed pods sit right under kubepods)
                            /kubepods/besteffort/pod<uid>/crio-<id>  (CRI-O names its cgroups even here)
  kubelet systemd driver    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
                              cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
                            /kubepods.slice/kubepods-pod<uid_>.slice/...  (guaranteed)
  plain docker              /docker/<id>, /system.slice/docker-<id>.scope
  podman / nerdctl          .../libpod-<id>.scope, /libpod_parent/libpod-<id>, .../nerdctl-<id>.scope

systemd cannot have '-' inside a unit name component, so the kubelet writes pod UIDs with '_' there;
they are turned back into the dashed UUID. Static pods have a 32-hex config hash as UID instead of a UUID.
Monitor processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not inside the container: None.

Paths read from inside a private cgroup namespace are relative to the reader's namespace root: they
may start with `/../` or start in the middle of the hierarchy (`/pod<uid>/<id>`). The container id and
pod UID still come out; the QoS class only when the path still shows it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from nativewatch.model import ContainerInfo

__all__ = [
    "CgroupMembership", "parse_proc_cgroup", "container_identity", "read_proc_cgroup", "path_components",
    "runtime_hint_from_sockets",
]

_HEX64 = r"[0-9a-f]{64}"
_UUID_DASHED = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_UNDERSCORED = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"
_HASH32 = r"[0-9a-f]{32}"  # static (and mirror) pods: the kubelet's hash of the pod manifest

# Prefixed container cgroups, with or without systemd's ".scope" (CRI-O's pod sandbox cgroup on the
# systemd driver has none; the cgroupfs driver never has one).
_PREFIXED = re.compile(rf"^(?P<prefix>cri-containerd|crio|docker|libpod|nerdctl)-(?P<id>{_HEX64})(?:\.scope)?$")
_MONITOR = re.compile(rf"^(?:crio|libpod)-conmon-{_HEX64}(?:\.scope)?$")
_BARE = re.compile(rf"^(?P<id>{_HEX64})$")
_RUNTIME_OF_PREFIX = {
    "cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", "libpod": "podman",
    "nerdctl": "containerd",
}
# Parent directory names that tell which engine made a bare-id cgroup outside Kubernetes.
_RUNTIME_OF_PARENT = {"docker": "docker", "libpod_parent": "podman"}

_POD_CGROUPFS = re.compile(rf"^pod(?P<uid>{_UUID_DASHED}|{_HASH32})$")
_POD_SYSTEMD = re.compile(
    rf"^(?P<prefix>(?:[a-z0-9_]+-)*?kubepods(?:-(?P<qos>burstable|besteffort))?)-pod"
    rf"(?P<uid>{_UUID_UNDERSCORED}|{_UUID_DASHED}|{_HASH32})\.slice$")
_QOS_DIRS = {"burstable": "burstable", "besteffort": "besteffort", "kubepods": "guaranteed"}

_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class CgroupMembership:
    """The cgroups of one process. Paths are verbatim (may be namespace-relative, e.g. `/../x`)."""

    v1: dict[str, str] = field(default_factory=dict)  # controller ("memory", "name=systemd") -> path
    v2: str | None = None  # the `0::` line; on a hybrid host it is there beside the v1 lines
    problems: tuple[str, ...] = ()
    deleted: bool = False  # the kernel marked the (v2) cgroup as removed: the process is exiting

    @property
    def memory_path(self) -> str | None:
        """Path in the hierarchy that carries the memory controller: v1 `memory` line, else v2."""
        return self.v1.get("memory", self.v2)

    @property
    def memory_version(self) -> int | None:
        if "memory" in self.v1:
            return 1
        return 2 if self.v2 is not None else None

    @property
    def version(self) -> str:
        """"v1", "v2", "hybrid" (v1 controllers plus the v2 line) or "none"."""
        if self.v1 and self.v2 is not None:
            return "hybrid"
        if self.v1:
            return "v1"
        return "v2" if self.v2 is not None else "none"


def parse_proc_cgroup(text: str) -> CgroupMembership:
    """Parse /proc/PID/cgroup. Never raises: unreadable lines are skipped and named in `problems`."""
    v1: dict[str, str] = {}
    v2: str | None = None
    problems: list[str] = []
    deleted = False
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split(":", 2)  # a path may itself contain ':'
        if len(parts) != 3:
            problems.append(f"line {lineno}: not 'id:controllers:path': {line[:80]!r}")
            continue
        hid, controllers, path = parts
        if not hid.isdecimal() or not hid.isascii():
            problems.append(f"line {lineno}: hierarchy id {hid[:20]!r} is not a number")
            continue
        if path.endswith(_DELETED):
            path = path[: -len(_DELETED)]
            deleted = True
        if not path.startswith("/"):
            problems.append(f"line {lineno}: path {path[:80]!r} is not absolute")
            continue
        if int(hid) == 0 and controllers == "":
            if v2 is not None:
                problems.append(f"line {lineno}: second cgroup v2 line ignored")
                continue
            v2 = path
            continue
        names = [c for c in controllers.split(",") if c]
        if not names:
            problems.append(f"line {lineno}: v1 hierarchy {hid} names no controller")
            continue
        for name in names:
            if name in v1:
                problems.append(f"line {lineno}: controller {name[:40]!r} listed twice; first kept")
                continue
            v1[name] = path
    return CgroupMembership(v1=v1, v2=v2, problems=tuple(problems), deleted=deleted)


def path_components(path: str) -> tuple[int, list[str]]:
    """(number of leading `..` components, remaining components) of a cgroup path."""
    comps = [c for c in path.split("/") if c and c != "."]
    ups = 0
    while ups < len(comps) and comps[ups] == "..":
        ups += 1
    return ups, comps[ups:]


@dataclass(frozen=True, slots=True)
class _Found:
    id: str
    runtime: str
    pod_uid: str | None
    qos: str | None
    cgroup: str


def _pod_of(parent: str | None, grandparent: str | None) -> tuple[str | None, str | None]:
    if parent is None:
        return None, None
    m = _POD_SYSTEMD.match(parent)
    if m:
        uid = m.group("uid").replace("_", "-")
        return uid, m.group("qos") or "guaranteed"
    m = _POD_CGROUPFS.match(parent)
    if m:
        return m.group("uid"), _QOS_DIRS.get(grandparent) if grandparent is not None else None
    return None, None


def _identify_path(path: str, runtime_hint: str | None) -> _Found | None:
    ups, comps = path_components(path)
    if ".." in comps:  # '..' only ever appears as a prefix in what the kernel writes
        return None
    for i in range(len(comps) - 1, -1, -1):
        comp = comps[i]
        if _MONITOR.match(comp):
            return None
        m = _PREFIXED.match(comp)
        bare = None if m else _BARE.match(comp)
        if not m and not bare:
            continue
        parent = comps[i - 1] if i >= 1 else None
        grandparent = comps[i - 2] if i >= 2 else None
        pod_uid, qos = _pod_of(parent, grandparent)
        if m:
            runtime = _RUNTIME_OF_PREFIX[m.group("prefix")]
            cid = m.group("id")
        else:
            assert bare is not None
            cid = bare.group("id")
            runtime = _RUNTIME_OF_PARENT.get(parent or "") or runtime_hint or "unknown"
        prefix = "/.." * ups
        return _Found(cid, runtime, pod_uid, qos, prefix + "/" + "/".join(comps[: i + 1]))
    return None


def container_identity(membership: CgroupMembership, *, runtime_hint: str | None = None) -> ContainerInfo | None:
    """The container a process runs in, or None for a process outside any container.

    `runtime_hint` names the runtime for the one shape that does not say (a bare 64-hex id under a
    kubelet cgroupfs pod directory: containerd and cri-dockerd both write that); otherwise "unknown".
    `cgroup` is the container's cgroup in the memory controller's hierarchy (v1 memory, else v2),
    cut at the container's own directory when the process sits in a sub-cgroup of it.
    """
    candidates: list[str] = []
    for path in (membership.memory_path, membership.v2, *membership.v1.values()):
        if path is not None and path not in candidates:
            candidates.append(path)
    for path in candidates:
        found = _identify_path(path, runtime_hint)
        if found is not None:
            return ContainerInfo(id=found.id, runtime=found.runtime, pod_uid=found.pod_uid,
                                 cgroup=found.cgroup, qos=found.qos)
    return None


def read_proc_cgroup(pid: int, proc_root: str = "/proc") -> CgroupMembership:
    """Read and parse /proc/PID/cgroup (ProcessGone / AccessDenied from procfs' reader)."""
    from nativewatch.sources import procfs

    return parse_proc_cgroup(procfs.read_file(pid, "cgroup", proc_root).decode("utf-8", "replace"))


# CRI sockets, most specific first: a cri-dockerd node also runs containerd underneath Docker.
_CRI_SOCKETS = (
    ("run/cri-dockerd.sock", "docker"), ("var/run/cri-dockerd.sock", "docker"),
    ("var/run/dockershim.sock", "docker"),
    ("run/crio/crio.sock", "cri-o"), ("var/run/crio/crio.sock", "cri-o"),
    ("run/containerd/containerd.sock", "containerd"), ("var/run/containerd/containerd.sock", "containerd"),
    ("run/k3s/containerd/containerd.sock", "containerd"),
)


def runtime_hint_from_sockets(host_root: str = "/") -> str | None:
    """Which CRI runtime a node runs, from the sockets under `host_root` (for `runtime_hint`)."""
    for rel, runtime in _CRI_SOCKETS:
        if os.path.exists(os.path.join(host_root, rel)):
            return runtime
    return None
