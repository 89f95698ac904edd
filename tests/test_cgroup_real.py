"""Real cgroups: kubelet-shaped cgroups on this host, a C program holding known memory moved into them.

Every cgroup is made *inside the test runner's own memory cgroup* (whatever /proc/self/cgroup says),
not at the hierarchy root: the test processes stay accounted to whoever runs the tests, and the
resulting paths look like a Kubernetes node nested in something else (as on kind or minikube nodes),
which is a shape the identity code must handle anyway. Everything is removed afterwards.

The memory tests need the memory controller on cgroup v1 (this project's CI host is v1-hybrid); the
namespace tests need `unshare --cgroup`.

Tolerances, all from how memcg accounts (mm/memcontrol.c):
- STAT_SLACK: memory.stat counters are per-CPU and folded in batches of 64 pages
  (MEMCG_CHARGE_BATCH), so a read can miss up to 64 pages per CPU of recent changes.
- KERNEL_SLACK: usage also counts kernel memory charged to the cgroup (page tables: 2 KiB per MiB
  touched, slab for the file and memfd inodes, the task's own structures) and up to 64 pre-charged
  pages per CPU; 4 MiB bounds all of that for a ~100 MiB process with room to spare.
- Anonymous pages the program touched *before* it was moved stay charged to the old cgroup, so the
  cgroup's anon is between what the program touched after the move and its whole RssAnon.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import build_c

from nativewatch.sources.cgroup import (
    CgroupGone,
    CgroupMembership,
    cgroup_version_info,
    container_identity,
    locate_memory_cgroup,
    parse_proc_cgroup,
    read_container_memory,
    read_proc_cgroup,
)

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGESIZE")
STAT_SLACK = 64 * PAGE * (os.cpu_count() or 1)
KERNEL_SLACK = 4 * MiB
WRITE_BUFFER = 1 * MiB  # touch_mem's static write buffer, touched only when it writes a file


def _mounts() -> dict[str, str]:
    """Ground truth from /proc/self/mountinfo: "cgroup2" and each v1 controller -> mount point."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _source, opts = post.split(" ", 2)
        mountpoint = pre.split(" ")[4]
        if fstype == "cgroup2":
            out.setdefault("cgroup2", mountpoint)
        elif fstype == "cgroup":
            for opt in opts.split(","):
                if opt in ("memory", "cpu", "pids", "name=systemd"):
                    out.setdefault(opt, mountpoint)
    return out


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path for a v1 controller, or the v2 path for None (parsed by hand)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if controller is None and hid == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    raise LookupError(controller)


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class Sandbox:
    """Scratch cgroups under our own v1 memory cgroup (and v2, when asked); cleaned up afterwards."""

    def __init__(self, program: Path) -> None:
        mounts = _mounts()
        if "memory" not in mounts:
            pytest.skip("the memory controller is not on cgroup v1 here")
        self.program = program
        self.name = f"nwtest-{os.getpid()}-{secrets.token_hex(3)}"
        self.own_v1 = _own_cgroup("memory")
        self.v1_root = mounts["memory"]
        self.v1_base = Path(self.v1_root + self.own_v1.rstrip("/")) / self.name
        self.v2_root = mounts.get("cgroup2")
        self.own_v2 = _own_cgroup(None) if self.v2_root else None
        self.v2_base = Path(self.v2_root + self.own_v2.rstrip("/")) / self.name if self.v2_root else None
        self.procs: list[subprocess.Popen] = []
        self.v1_base.mkdir()

    def mkdir(self, rel: str, *, limit: int | None = None, v2: bool = False) -> Path:
        base = self.v2_base if v2 else self.v1_base
        assert base is not None
        d = base / rel
        d.mkdir(parents=True)
        if limit is not None:
            (d / "memory.limit_in_bytes").write_text(str(limit))
        return d

    def shown_path(self, d: Path, v2: bool = False) -> str:
        """What /proc/PID/cgroup shows for a process in `d` (read from the host namespace)."""
        root = self.v2_root if v2 else self.v1_root
        return "/" + str(d.relative_to(root))

    def spawn(self, anon_mib: int, file_mib: int, shmem_mib: int, into: list[Path],
              file_path: Path | None = None) -> subprocess.Popen:
        args = [str(self.program), str(anon_mib), str(file_mib), str(shmem_mib)]
        if file_path is not None:
            args.append(str(file_path))
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().startswith("ready")
        for d in into:  # before anything is touched, so all of it is charged to the new cgroup
            (d / "cgroup.procs").write_text(str(proc.pid))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return proc

    def run_in(self, d: Path, command: str) -> subprocess.CompletedProcess:
        """Run a shell command after moving the shell into `d` (v1 memory hierarchy)."""
        return subprocess.run(["sh", "-c", f'echo $$ > "{d}/cgroup.procs" && exec {command}'],
                              capture_output=True, text=True, timeout=30)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        for base in (self.v1_base, self.v2_base):
            if base is None or not base.exists():
                continue
            for dirpath, _dirnames, _files in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
                os.rmdir(dirpath)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("moving processes between cgroups needs root")
    box = Sandbox(build_c("touch_mem.c", cflags=["-O1"]))
    try:
        yield box
    finally:
        box.cleanup()
    assert not box.v1_base.exists()


def _assert_anon_ws_limit(mem, proc, anon_touched: int):
    rss_anon = _status_bytes(proc.pid, "RssAnon")
    assert anon_touched - STAT_SLACK <= mem.anon_bytes <= rss_anon + STAT_SLACK
    assert anon_touched - STAT_SLACK <= mem.working_set_bytes <= rss_anon + mem.shmem_bytes + KERNEL_SLACK


def test_real_cgroupfs_layout_identity_and_memory(sandbox: Sandbox, tmp_path: Path):
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    d = sandbox.mkdir(f"kubepods/burstable/pod{uid}/{cid}", limit=256 * MiB)
    data = tmp_path / "written.dat"
    proc = sandbox.spawn(64, 16, 8, [d], file_path=data)
    assert proc.stdout.readline() == "touched\n"

    membership = read_proc_cgroup(proc.pid)
    assert membership.v1["memory"] == sandbox.shown_path(d)
    info = container_identity(membership)
    assert (info.id, info.pod_uid, info.qos, info.runtime) == (cid, uid, "burstable", "unknown")
    assert info.cgroup == sandbox.shown_path(d)
    assert container_identity(membership, runtime_hint="containerd").runtime == "containerd"

    mem = read_container_memory(proc.pid)
    assert (mem.version, mem.path, mem.problems) == (1, str(d), ())
    assert mem.limit_bytes == mem.effective_limit_bytes == 256 * MiB
    # 64 MiB malloc'd + the 1 MiB write buffer, all touched after the move.
    _assert_anon_ws_limit(mem, proc, 64 * MiB + WRITE_BUFFER)
    assert 8 * MiB - STAT_SLACK <= mem.shmem_bytes <= 8 * MiB + STAT_SLACK
    # total_cache = the written file + the memfd; program text was faulted in before the move.
    assert 16 * MiB - STAT_SLACK <= mem.file_bytes - mem.shmem_bytes <= 16 * MiB + STAT_SLACK
    # Written once and never read again, the file's pages stay on the inactive list ...
    assert 16 * MiB - STAT_SLACK <= mem.inactive_file_bytes <= mem.file_bytes
    # ... so the working set leaves them out: cAdvisor's rule, checked against what was touched.
    assert mem.usage_bytes - mem.working_set_bytes >= 16 * MiB - STAT_SLACK
    assert 72 * MiB + WRITE_BUFFER - STAT_SLACK <= mem.working_set_bytes
    kernel = mem.usage_bytes - (mem.anon_bytes + mem.file_bytes)
    assert -STAT_SLACK <= kernel <= KERNEL_SLACK
    assert mem.oom_kill == 0
    assert mem.peak_bytes >= mem.usage_bytes
    # The ContainerInfo path leads to the same cgroup.
    assert read_container_memory(info).path == str(d)
    data.unlink()


LAYOUTS = {
    # name: (relative dir, pod-level limit, container limit, expected runtime, qos, pod uid kind)
    "systemd-besteffort-containerd": (
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{cid}.scope",
        512 * MiB, None, "containerd", "besteffort", "uuid"),
    "systemd-guaranteed-crio-static": (
        "kubepods.slice/kubepods-pod{uid_}.slice/crio-{cid}.scope", None, 128 * MiB, "cri-o", "guaranteed", "static"),
    "cgroupfs-guaranteed-crio": (
        "kubepods/pod{uid}/crio-{cid}", None, 128 * MiB, "cri-o", "guaranteed", "uuid"),
    "systemd-plain-docker": ("system.slice/docker-{cid}.scope", None, 64 * MiB, "docker", None, None),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_real_layouts(sandbox: Sandbox, layout: str):
    rel, pod_limit, limit, runtime, qos, uid_kind = LAYOUTS[layout]
    uid = {"uuid": str(uuid.uuid4()), "static": secrets.token_hex(16), None: None}[uid_kind]
    cid = secrets.token_hex(32)
    rel = rel.format(uid=uid, uid_=(uid or "").replace("-", "_"), cid=cid)
    d = sandbox.mkdir(rel, limit=limit)
    if pod_limit is not None:
        (d.parent / "memory.limit_in_bytes").write_text(str(pod_limit))
    proc = sandbox.spawn(32, 0, 0, [d])
    assert proc.stdout.readline() == "touched\n"

    info = container_identity(read_proc_cgroup(proc.pid))
    assert (info.id, info.runtime, info.pod_uid, info.qos) == (cid, runtime, uid, qos)
    assert info.cgroup == sandbox.shown_path(d)

    mem = read_container_memory(info)
    assert mem.path == str(d)
    assert mem.limit_bytes == limit
    assert mem.effective_limit_bytes == (limit or pod_limit)
    _assert_anon_ws_limit(mem, proc, 32 * MiB)


def test_real_oom_kill_is_counted(sandbox: Sandbox):
    cid = secrets.token_hex(32)
    d = sandbox.mkdir(f"kubepods/burstable/pod{uuid.uuid4()}/{cid}", limit=32 * MiB)
    proc = sandbox.spawn(64, 0, 0, [d])  # no swap here: the memcg OOM killer has to kill it
    assert proc.stdout.readline() == ""
    assert proc.wait(timeout=60) == -signal.SIGKILL
    mem = read_container_memory(sandbox.shown_path(d))
    assert mem.oom_kill == 1
    assert mem.limit_bytes == 32 * MiB
    assert 32 * MiB - STAT_SLACK <= mem.peak_bytes <= 32 * MiB


def test_real_v2_systemd_layout_identity_on_hybrid_host(sandbox: Sandbox):
    if sandbox.v2_base is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    u = uid.replace("-", "_")
    rel = (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/"
           f"cri-containerd-{cid}.scope")
    d2 = sandbox.mkdir(rel, v2=True)
    d1 = sandbox.mkdir(f"kubepods/burstable/pod{uid}/{cid}", limit=128 * MiB)
    proc = sandbox.spawn(8, 0, 0, [d1, d2])
    assert proc.stdout.readline() == "touched\n"
    membership = read_proc_cgroup(proc.pid)
    assert membership.version == "hybrid"
    assert membership.v2 == sandbox.shown_path(d2, v2=True)
    v2_only = container_identity(CgroupMembership(v2=membership.v2))
    assert (v2_only.id, v2_only.runtime, v2_only.pod_uid, v2_only.qos) == (cid, "containerd", uid, "burstable")
    # With both, the memory controller's (v1) line decides the cgroup path.
    both = container_identity(membership)
    assert (both.id, both.cgroup) == (cid, sandbox.shown_path(d1))
    assert read_container_memory(proc.pid).path == str(d1)


def test_real_private_cgroup_namespace(sandbox: Sandbox):
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    d = sandbox.mkdir(f"kubepods/burstable/pod{uid}/{cid}", limit=128 * MiB)
    sibling = sandbox.mkdir("kubepods/reader")
    proc = sandbox.spawn(16, 0, 0, [d])
    assert proc.stdout.readline() == "touched\n"
    direct = read_container_memory(proc.pid)

    # A reader whose namespace is rooted at a sibling of the QoS directory sees `/../` paths.
    seen = sandbox.run_in(sibling, f"unshare --cgroup cat /proc/{proc.pid}/cgroup")
    if seen.returncode != 0:
        pytest.skip(f"unshare --cgroup failed here: {seen.stderr.strip()}")
    membership = parse_proc_cgroup(seen.stdout)
    assert membership.v1["memory"] == f"/../burstable/pod{uid}/{cid}"
    info = container_identity(membership)
    assert (info.id, info.pod_uid, info.qos) == (cid, uid, "burstable")
    mem = read_container_memory(membership)  # located by suffix under the host root
    assert mem.path == str(d)
    assert any("found by suffix" in p for p in mem.problems)
    assert abs(mem.anon_bytes - direct.anon_bytes) <= STAT_SLACK

    # Rooted at the QoS directory: the path starts mid-hierarchy and no longer shows the QoS class.
    seen = sandbox.run_in(d.parent.parent, f"unshare --cgroup cat /proc/{proc.pid}/cgroup")
    membership = parse_proc_cgroup(seen.stdout)
    assert membership.v1["memory"] == f"/pod{uid}/{cid}"
    info = container_identity(membership)
    assert (info.id, info.pod_uid, info.qos) == (cid, uid, None)
    assert read_container_memory(membership).path == str(d)

    # From inside the container's own namespace, a process only sees "/": no identity, no location.
    seen = sandbox.run_in(d, "unshare --cgroup cat /proc/self/cgroup")
    membership = parse_proc_cgroup(seen.stdout)
    assert membership.v1["memory"] == "/"
    assert container_identity(membership) is None
    # "/" cannot be told apart from the host's root cgroup, which is what a reader in the host's
    # cgroup namespace means by it: an agent has to run in the host cgroup namespace.
    assert locate_memory_cgroup(membership).path == sandbox.v1_root


def test_real_removed_cgroup_is_gone(sandbox: Sandbox):
    d = sandbox.mkdir(f"kubepods/besteffort/pod{uuid.uuid4()}/{secrets.token_hex(32)}")
    shown = sandbox.shown_path(d)
    assert read_container_memory(shown).usage_bytes == 0
    d.rmdir()
    with pytest.raises(CgroupGone):
        read_container_memory(shown)


def test_version_info_matches_mountinfo():
    mounts = _mounts()
    info = cgroup_version_info()
    if "memory" in mounts:
        assert (info.memory_version, info.memory_root) == (1, mounts["memory"])
    if "cgroup2" in mounts:
        assert info.v2_mount == mounts["cgroup2"]
    expected_mode = ("v2" if mounts.get("cgroup2") == "/sys/fs/cgroup" else
                     "hybrid" if "cgroup2" in mounts and "memory" in mounts else
                     "v1" if "memory" in mounts else info.mode)
    assert info.mode == expected_mode
    if "cpu" in mounts:
        assert info.v1_controllers["cpu"] == os.path.realpath(mounts["cpu"]) or \
            os.path.realpath(info.v1_controllers["cpu"]) == os.path.realpath(mounts["cpu"])
