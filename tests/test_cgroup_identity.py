"""/proc/PID/cgroup parsing and container identity: fixtures per runtime/driver/version, plus fuzzing."""

from __future__ import annotations

import json
import re
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.sources.cgroup import (
    CgroupMembership,
    container_identity,
    parse_proc_cgroup,
    path_components,
    runtime_hint_from_sockets,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cgroup" / "proc"
EXPECTED: dict[str, dict] = json.loads((FIXTURES / "expected.json").read_text())


def load(name: str) -> CgroupMembership:
    return parse_proc_cgroup((FIXTURES / f"{name}.txt").read_text())


def test_every_fixture_file_has_an_expectation():
    files = {p.stem for p in FIXTURES.glob("*.txt")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_identity(name: str):
    case = EXPECTED[name]
    info = container_identity(load(name), runtime_hint=case.get("runtime_hint"))
    if case["expect"] is None:
        assert info is None
    else:
        assert info is not None
        assert info.to_json() == case["expect"]


@pytest.mark.parametrize("name", sorted(n for n, c in EXPECTED.items() if c["expect"] and "pod_uid" in c["expect"]))
def test_pod_uid_is_dashed_uuid_or_static_hash(name: str):
    uid = container_identity(load(name), runtime_hint=EXPECTED[name].get("runtime_hint")).pod_uid
    if uid is not None:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", uid)


def test_bare_id_under_pod_takes_runtime_hint_else_unknown():
    m = load("containerd-cgroupfs-v1")
    assert container_identity(m).runtime == "unknown"
    assert container_identity(m, runtime_hint="containerd").runtime == "containerd"
    # A name that says its runtime is not overridden by the hint.
    assert container_identity(load("crio-cgroupfs-v1"), runtime_hint="docker").runtime == "cri-o"


def test_v1_fixture_parses_every_controller_line():
    m = load("containerd-cgroupfs-v1")
    assert m.version == "hybrid"
    assert m.problems == ()
    assert set(m.v1) == {"pids", "hugetlb", "devices", "cpu", "cpuacct", "blkio", "net_cls", "net_prio",
                         "perf_event", "freezer", "cpuset", "memory", "rdma", "name=systemd"}
    assert m.v1["rdma"] == "/"
    assert m.v2 == "/"
    assert m.memory_version == 1
    assert m.memory_path == m.v1["memory"]


def test_pure_v1_and_pure_v2_versions():
    assert load("crio-cgroupfs-v1").version == "v1"
    m = load("containerd-systemd-v2")
    assert (m.version, m.memory_version, m.v1) == ("v2", 2, {})
    assert m.memory_path == m.v2
    assert parse_proc_cgroup("").version == "none"


def test_cgroup_is_memory_controller_path_even_when_other_controllers_differ():
    cid = "ab" * 32
    text = ("5:cpu,cpuacct:/\n"
            f"4:memory:/kubepods/besteffort/pod0e2a1c6e-6d1b-4b8e-9d43-0d4b2a7c9f11/{cid}\n"
            f"0::/kubepods/besteffort/pod0e2a1c6e-6d1b-4b8e-9d43-0d4b2a7c9f11/{cid}\n")
    info = container_identity(parse_proc_cgroup(text))
    assert info.cgroup == f"/kubepods/besteffort/pod0e2a1c6e-6d1b-4b8e-9d43-0d4b2a7c9f11/{cid}"
    assert info.qos == "besteffort"


def test_identity_found_on_another_controller_when_memory_line_is_namespace_root():
    """A v1 cgroup namespace covers every hierarchy, but a process can be in different cgroups per
    hierarchy (e.g. moved only in `cpu`): the container is still found, from the line that names it."""
    cid = "cd" * 32
    text = f"4:memory:/\n3:pids:/docker/{cid}\n"
    info = container_identity(parse_proc_cgroup(text))
    assert (info.id, info.runtime, info.cgroup) == (cid, "docker", f"/docker/{cid}")


def test_deleted_suffix_is_stripped_and_flagged():
    m = load("deleted-systemd-v2")
    assert m.deleted
    assert not m.v2.endswith("(deleted)")


def test_garbage_lines_are_reported_not_raised():
    m = load("garbage-binary")
    assert m.v1 == {} and m.v2 is None
    assert len(m.problems) == 4  # one per garbage line
    assert any("not a number" in p for p in m.problems)
    assert any("not absolute" in p for p in m.problems)


def test_path_with_colon_keeps_rest_of_line():
    m = parse_proc_cgroup("4:memory:/a:b/c\n")
    assert m.v1 == {"memory": "/a:b/c"}


def test_duplicate_lines_keep_first_and_report():
    m = parse_proc_cgroup("0::/a\n0::/b\n4:memory:/x\n5:memory:/y\n")
    assert (m.v2, m.v1["memory"]) == ("/a", "/x")
    assert len(m.problems) == 2


def test_path_components_counts_namespace_prefix():
    assert path_components("/../../a/b") == (2, ["a", "b"])
    assert path_components("/") == (0, [])
    assert path_components("/a//b/") == (0, ["a", "b"])


# ---- generated paths: every (runtime, driver, qos, uid kind, namespace prefix) combination round-trips

HEX = "0123456789abcdef"
cid_st = st.text(HEX, min_size=64, max_size=64)
uuid_st = st.uuids().map(str)
static_st = st.text(HEX, min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(cid=cid_st, uid=st.one_of(uuid_st, static_st),
       runtime=st.sampled_from(["containerd", "cri-o", "docker"]),
       driver=st.sampled_from(["cgroupfs", "systemd"]),
       qos=st.sampled_from(["guaranteed", "burstable", "besteffort"]),
       version=st.sampled_from([1, 2]),
       ns_cut=st.integers(min_value=0, max_value=2), ups=st.integers(min_value=0, max_value=3),
       subcgroup=st.booleans())
def test_generated_kubelet_paths_round_trip(cid, uid, runtime, driver, qos, version, ns_cut, ups, subcgroup):
    if driver == "cgroupfs":
        qos_dirs = [] if qos == "guaranteed" else [qos]
        prefix = {"cri-o": "crio-", "containerd": "", "docker": ""}[runtime]
        comps = ["kubepods", *qos_dirs, f"pod{uid}", prefix + cid]
        known_runtime = runtime if runtime == "cri-o" else None
    else:
        u = uid.replace("-", "_")
        qos_part = "" if qos == "guaranteed" else f"-{qos}"
        slices = ["kubepods.slice"] + ([f"kubepods{qos_part}.slice"] if qos_part else [])
        scope = {"cri-o": "crio", "containerd": "cri-containerd", "docker": "docker"}[runtime]
        comps = [*slices, f"kubepods{qos_part}-pod{u}.slice", f"{scope}-{cid}.scope"]
        known_runtime = runtime
    if subcgroup:
        comps.append("container")
    container_at = len(comps) - (2 if subcgroup else 1)
    # A private cgroup namespace hides the top `cut` components (never the pod's); `ups` '..' then
    # climb from the reader's own cgroup up to the common ancestor.
    cut = min(ns_cut, container_at - 1)
    path = "/" + "/".join([".."] * (ups if cut else 0) + comps[cut:])
    text = (f"4:memory:{path}\n1:name=systemd:{path}\n0::/\n") if version == 1 else f"0::{path}\n"
    info = container_identity(parse_proc_cgroup(text), runtime_hint=None)
    assert info is not None
    assert info.id == cid
    assert info.pod_uid == uid
    assert info.runtime == (known_runtime or "unknown")
    # systemd slice names carry the QoS class; cgroupfs shows it only in the pod's parent directory.
    if driver == "systemd" or cut <= container_at - 2:
        assert info.qos == qos
    else:
        assert info.qos is None
    assert info.cgroup == path.rsplit("/container", 1)[0] if subcgroup else info.cgroup == path


@settings(max_examples=200, deadline=None)
@given(cid=cid_st, systemd=st.booleans(), nested=st.booleans())
def test_generated_plain_docker_paths(cid, systemd, nested):
    path = f"/system.slice/docker-{cid}.scope" if systemd else f"/docker/{cid}"
    if nested:  # docker inside a pod's container: the pod is not this container's pod
        path = "/kubepods/burstable/pod0e2a1c6e-6d1b-4b8e-9d43-0d4b2a7c9f11/" + "ef" * 32 + path
    info = container_identity(parse_proc_cgroup(f"0::{path}\n"))
    assert (info.id, info.runtime, info.pod_uid, info.qos) == (cid, "docker", None, None)


# ---- fuzz: no input makes the parser or the identity raise

line_alphabet = st.sampled_from(list("0123456789abcdef:/-_.,= \n") + ["kubepods", "pod", ".slice", ".scope",
                                                                       "crio-", "docker", "..", "memory",
                                                                       "cri-containerd-", "burstable"])


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text_never_raises(text):
    m = parse_proc_cgroup(text)
    container_identity(m)
    assert isinstance(m.problems, tuple)


@settings(max_examples=500, deadline=None)
@given(st.lists(line_alphabet, max_size=80).map("".join))
def test_fuzz_cgroup_like_text_never_raises(text):
    m = parse_proc_cgroup(text)
    info = container_identity(m, runtime_hint="containerd")
    if info is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", info.id)
        assert info.runtime in ("containerd", "cri-o", "docker", "podman", "unknown")


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_runtime_hint_from_real_sockets():
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="nws", dir="/tmp") as tmp:
        _check_runtime_hints(Path(tmp))


def _check_runtime_hints(tmp_path: Path) -> None:
    assert runtime_hint_from_sockets(str(tmp_path)) is None
    socks = [_listen(tmp_path / "run/containerd/containerd.sock")]
    try:
        assert runtime_hint_from_sockets(str(tmp_path)) == "containerd"
        socks.append(_listen(tmp_path / "var/run/cri-dockerd.sock"))  # Docker runs on containerd
        assert runtime_hint_from_sockets(str(tmp_path)) == "docker"
    finally:
        for s in socks:
            s.close()
    k3s = tmp_path / "k3s"
    socks = [_listen(k3s / "run/k3s/containerd/containerd.sock")]
    try:
        assert runtime_hint_from_sockets(str(k3s)) == "containerd"
    finally:
        socks[0].close()
