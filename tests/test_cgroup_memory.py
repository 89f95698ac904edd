"""Memory cgroup parsers and readers against fixture cgroup roots (real v1 captures, v2 in kernel formats)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nativewatch.errors import SourceUnavailable
from nativewatch.model import ContainerInfo
from nativewatch.sources.cgroup import (
    CgroupGone,
    CgroupMembership,
    cgroup_version_info,
    locate_memory_cgroup,
    memory_from_files,
    parse_keyed,
    parse_limit,
    parse_oom_control,
    parse_single_value,
    read_container_memory,
)

ROOTS = Path(__file__).resolve().parent / "fixtures" / "cgroup" / "roots"
MiB = 1 << 20
POD_V1 = "/kubepods/burstable/pod35b4fac1-9817-4fe5-b0d1-5e23ee6491bf"
V1_LIMITED = f"{POD_V1}/9e5efc130d966159ba4ba4b3412439da9a59b5b06efcd357a823e2d79146eb93"
V1_UNLIMITED = f"{POD_V1}/c330b973b7ac1b8177819f509d2921fe2f86b80133bb75508eab47bb900e7872"
V1_OOMED = f"{POD_V1}/647baebf856e1994d47baadc29b6b5e2011168632d53116db3ef119ae0d48b87"
POD_V2 = ("/kubepods.slice/kubepods-burstable.slice/"
          "kubepods-burstable-podb1e4ea6a_1b8c_4d2f_b0da_ff984978c33c.slice")
V2_NEW = f"{POD_V2}/cri-containerd-d9c56967f870ab63f62b0f8ca9c835243e8a244f5c5eb0bdaaf29829facfc03e.scope"
V2_OLD = f"{POD_V2}/cri-containerd-aeea1e3d9d42fc427260bd5c1967d5265517490c03388693a04eaf0f3c6f987f.scope"


# ---- host layout


def test_version_info_hybrid():
    info = cgroup_version_info(str(ROOTS / "hybrid"))
    assert info.mode == "hybrid"
    assert (info.memory_version, info.memory_root) == (1, str(ROOTS / "hybrid" / "memory"))
    assert info.v2_mount == str(ROOTS / "hybrid" / "unified")
    assert info.v2_controllers == ()
    assert info.v1_controllers["cpu"] == info.v1_controllers["cpuacct"] == str(ROOTS / "hybrid" / "cpu,cpuacct")
    assert info.v1_controllers["name=systemd"] == str(ROOTS / "hybrid" / "systemd")
    assert "unified" not in info.v1_controllers
    assert info.problems == ()


def test_version_info_pure_v1_and_v2():
    v1 = cgroup_version_info(str(ROOTS / "v1"))
    assert (v1.mode, v1.memory_version, v1.v2_mount) == ("v1", 1, None)
    v2 = cgroup_version_info(str(ROOTS / "v2"))
    assert (v2.mode, v2.memory_version, v2.memory_root, v2.v1_controllers) == ("v2", 2, str(ROOTS / "v2"), {})
    assert "memory" in v2.v2_controllers


def test_version_info_missing_root_is_none_with_problem(tmp_path):
    info = cgroup_version_info(str(tmp_path / "nope"))
    assert (info.mode, info.memory_version) == ("none", None)
    assert info.problems
    empty = cgroup_version_info(str(tmp_path))
    assert empty.mode == "none" and any("memory" in p for p in empty.problems)


# ---- v1 (real captures)


def test_v1_container_with_limit_file_cache_and_shmem():
    mem = read_container_memory(V1_LIMITED, cgroup_root=str(ROOTS / "hybrid"))
    assert mem.version == 1
    assert mem.usage_bytes == 94109696
    assert mem.limit_bytes == 256 * MiB
    assert mem.inactive_file_bytes == 16 * MiB  # total_inactive_file: the 16 MiB file written once
    assert mem.working_set_bytes == 94109696 - 16 * MiB
    assert mem.anon_bytes == 65 * MiB  # total_rss: 64 MiB malloc + 1 MiB write buffer
    assert mem.file_bytes == 24 * MiB  # total_cache: file + memfd
    assert mem.shmem_bytes == 8 * MiB
    assert (mem.oom_kill, mem.peak_bytes, mem.effective_limit_bytes) == (0, 94109696, 256 * MiB)
    assert mem.problems == ()


def test_v1_unlimited_container_takes_pod_limit_as_effective():
    mem = read_container_memory(ContainerInfo("c330" + "0" * 60, "containerd", None, V1_UNLIMITED),
                                cgroup_root=str(ROOTS / "hybrid"))
    assert mem.limit_bytes is None  # 9223372036854771712 in the file
    assert mem.effective_limit_bytes == 512 * MiB  # hierarchical_memory_limit from the pod directory
    assert mem.anon_bytes == 8 * MiB


def test_v1_oom_killed_container_counts_the_kill():
    mem = read_container_memory(V1_OOMED, cgroup_root=str(ROOTS / "hybrid"))
    assert (mem.oom_kill, mem.limit_bytes, mem.peak_bytes) == (1, 32 * MiB, 32 * MiB)


def test_v1_prefers_hierarchical_total_keys():
    stat = "rss 100\ncache 10\ninactive_file 5\nshmem 1\ntotal_rss 400\ntotal_cache 40\ntotal_inactive_file 20\ntotal_shmem 4\n"
    mem = memory_from_files(1, {"memory.usage_in_bytes": "1000\n", "memory.limit_in_bytes": "4096\n",
                                "memory.stat": stat})
    assert (mem.anon_bytes, mem.file_bytes, mem.inactive_file_bytes, mem.shmem_bytes) == (400, 40, 20, 4)
    assert mem.working_set_bytes == 980
    assert "memory.oom_control" not in str(mem.problems)


def test_v1_root_style_stat_without_total_keys_uses_plain_keys():
    mem = memory_from_files(1, {"memory.usage_in_bytes": "1000\n", "memory.stat": "rss 7\ninactive_file 3\n"})
    assert (mem.anon_bytes, mem.inactive_file_bytes, mem.working_set_bytes) == (7, 3, 997)
    assert mem.problems == ("memory.limit_in_bytes missing",)


# ---- v2 (kernel-format fixtures)


def test_v2_container_new_kernel():
    mem = read_container_memory(V2_NEW, cgroup_root=str(ROOTS / "v2"))
    assert mem.version == 2
    assert mem.usage_bytes == 96632832
    assert mem.limit_bytes == 256 * MiB
    assert mem.working_set_bytes == 96632832 - 16777216
    assert (mem.anon_bytes, mem.file_bytes, mem.shmem_bytes) == (70254592, 25165824, 8388608)
    assert (mem.oom_kill, mem.peak_bytes) == (0, 101711872)
    assert mem.effective_limit_bytes == 256 * MiB
    assert mem.stat["pagetables"] == 188416
    assert mem.problems == ()


def test_v2_container_old_kernel_unlimited_with_oom_kills():
    mem = read_container_memory(V2_OLD, cgroup_root=str(ROOTS / "v2"))
    assert mem.limit_bytes is None  # "max"
    assert mem.effective_limit_bytes == 512 * MiB  # the pod slice's memory.max
    assert mem.peak_bytes is None  # memory.peak arrived in 5.19
    assert mem.oom_kill == 2
    assert mem.working_set_bytes == 8912896
    assert mem.problems == ()


def test_working_set_floors_at_zero():
    mem = memory_from_files(2, {"memory.current": "100\n", "memory.max": "max\n",
                                "memory.stat": "inactive_file 4096\n"})
    assert mem.working_set_bytes == 0


def test_missing_inactive_file_falls_back_to_usage_with_problem():
    mem = memory_from_files(2, {"memory.current": "100\n", "memory.max": "max\n", "memory.stat": "anon 5\n"})
    assert mem.working_set_bytes == 100
    assert any("inactive_file" in p for p in mem.problems)


def test_bad_version_is_a_programming_error():
    with pytest.raises(ValueError):
        memory_from_files(3, {})


# ---- parsers


def test_parse_limit():
    assert parse_limit("max\n", 2) == (None, ())
    assert parse_limit("9223372036854771712\n", 1) == (None, ())
    assert parse_limit("9223372036854710272\n", 1) == (None, ())  # 64 KiB pages
    assert parse_limit("268435456\n", 1) == (268435456, ())
    assert parse_limit("max\n", 1)[0] is None and parse_limit("max\n", 1)[1]
    assert parse_limit("", 2)[1]


def test_parse_single_value_rejects_garbage_and_negatives():
    assert parse_single_value("42\n") == (42, ())
    assert parse_single_value("-1")[0] is None
    assert parse_single_value("4 2")[0] is None
    assert parse_single_value("\u0663")[0] is None  # non-ASCII digit


def test_parse_oom_control_and_problems():
    kv = parse_oom_control("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert kv.values == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    bad = parse_keyed("a 1\nb x\nc\na 2\n")
    assert bad.values == {"a": 1}
    assert len(bad.problems) == 3


# ---- locating


def test_namespace_relative_path_found_by_suffix():
    hybrid = str(ROOTS / "hybrid")
    rel = "/../burstable/pod35b4fac1-9817-4fe5-b0d1-5e23ee6491bf/" + V1_LIMITED.rsplit("/", 1)[1]
    where = locate_memory_cgroup(CgroupMembership(v1={"memory": rel}), hybrid)
    assert where.path == str(ROOTS / "hybrid" / "memory") + V1_LIMITED
    mid = "/" + V1_LIMITED.rsplit("/", 1)[1]  # a namespace rooted at the pod directory
    assert read_container_memory(mid, cgroup_root=hybrid).usage_bytes == 94109696


def test_namespace_root_and_ambiguous_suffix_are_unavailable():
    hybrid = str(ROOTS / "hybrid")
    with pytest.raises(SourceUnavailable, match="namespace root"):
        read_container_memory(CgroupMembership(v1={"memory": "/../.."}), cgroup_root=hybrid)
    where = locate_memory_cgroup(CgroupMembership(v1={"memory": "/../burstable"}), hybrid)
    assert where.path is not None  # unique
    where = locate_memory_cgroup(CgroupMembership(v1={"memory": "/../memory.stat"}), hybrid)
    assert where.path is None


def test_ambiguous_suffix(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "v1", root)
    (root / "memory" / "a" / "x").mkdir(parents=True)
    (root / "memory" / "b" / "x").mkdir(parents=True)
    where = locate_memory_cgroup(CgroupMembership(v1={"memory": "/../x"}), str(root))
    assert where.path is None and "ambiguous" in where.problems[0]


def test_escaping_path_is_refused():
    where = locate_memory_cgroup(CgroupMembership(v1={"memory": "/kubepods/../../../etc"}), str(ROOTS / "hybrid"))
    assert where.path is None and "refusing" in where.problems[0]


def test_vanished_cgroup_raises_cgroup_gone():
    with pytest.raises(CgroupGone):
        read_container_memory(f"{POD_V1}/{'0' * 64}", cgroup_root=str(ROOTS / "hybrid"))


def test_process_without_memory_line_is_unavailable():
    with pytest.raises(SourceUnavailable, match="no v1 memory"):
        read_container_memory(CgroupMembership(v1={"cpu": "/"}, v2="/"), cgroup_root=str(ROOTS / "hybrid"))


def test_no_memory_controller_is_unavailable(tmp_path):
    with pytest.raises(SourceUnavailable, match="no memory controller"):
        read_container_memory("/x", cgroup_root=str(tmp_path))


def test_vanished_pid_is_process_gone():
    from nativewatch.errors import ProcessGone

    with pytest.raises(ProcessGone):
        read_container_memory(999_999_999, cgroup_root=str(ROOTS / "hybrid"))


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "hybrid", root)
    (root / "memory" / V1_LIMITED.lstrip("/") / "memory.stat").unlink()
    (root / "memory" / V1_LIMITED.lstrip("/") / "memory.stat").mkdir()  # reading it gives EISDIR
    mem = read_container_memory(V1_LIMITED, cgroup_root=str(root))
    assert mem.usage_bytes == 94109696
    assert mem.working_set_bytes == 94109696 and mem.anon_bytes is None
    assert any(p.startswith("memory.stat:") for p in mem.problems)


# ---- fuzz


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_fuzz_parse_keyed_never_raises(text):
    kv = parse_keyed(text)
    assert all(isinstance(v, int) for v in kv.values.values())


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from([1, 2]))
def test_fuzz_limit_and_single_value_never_raise(text, version):
    value, _ = parse_limit(text, version)
    assert value is None or 0 <= value < (1 << 60)
    value, _ = parse_single_value(text)
    assert value is None or value >= 0


keyed_line = st.tuples(st.sampled_from(["total_rss", "rss", "anon", "file", "inactive_file", "total_inactive_file",
                                        "shmem", "oom_kill", "hierarchical_memory_limit", "x"]),
                       st.one_of(st.integers(min_value=-5, max_value=1 << 64).map(str), st.text(max_size=5)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2]),
       st.dictionaries(st.sampled_from(["memory.usage_in_bytes", "memory.current", "memory.limit_in_bytes",
                                        "memory.max", "memory.stat", "memory.events", "memory.oom_control",
                                        "memory.peak", "memory.max_usage_in_bytes"]),
                       st.one_of(st.text(max_size=30),
                                 st.lists(keyed_line, max_size=8).map(
                                     lambda kv: "".join(f"{k} {v}\n" for k, v in kv)))))
def test_fuzz_memory_from_files_never_raises(version, files):
    mem = memory_from_files(version, files)
    if mem.working_set_bytes is not None:
        assert mem.working_set_bytes >= 0
