"""The source readers on a captured /proc tree (tests/fixtures/proc, see its README): a kernel thread,
a process with spaces and parentheses in its comm and three threads, and a zombie, each read through
the public functions with `proc_root=` pointed at the tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from nativewatch.attribute import attribute_process
from nativewatch.errors import ProcessGone
from nativewatch.scan import is_kernel_thread
from nativewatch.sources import procfs
from nativewatch.sources.cgroup import container_identity, read_proc_cgroup
from nativewatch.sources.procstat import read_start_time, read_stat

ROOT = str(Path(__file__).resolve().parent / "fixtures" / "proc")
KTHREAD, PROC, ZOMBIE = 2, 300, 303
COMM = "x) S 1 (y z"
EXE = "/tmp/nativewatch-proc-fixture/proc-fixture"
PAGE = 4096


def test_the_tree_lists_its_pids_and_threads():
    assert procfs.list_pids(ROOT) == [KTHREAD, PROC, ZOMBIE]
    assert procfs.list_tids(PROC, ROOT) == [300, 301, 302]
    assert procfs.list_tids(ZOMBIE, ROOT) == [ZOMBIE]


def test_stat_of_a_comm_with_spaces_parentheses_and_fake_fields():
    st = read_stat(PROC, ROOT)
    assert st is not None
    assert (st.pid, st.comm, st.state, st.ppid, st.threads) == (PROC, COMM, "S", 1, 3)
    assert (st.starttime, st.rss_bytes, st.kernel_thread) == (104254, 374 * PAGE, False)
    assert read_start_time(PROC, ROOT) == 104254
    thread = read_stat(301, f"{ROOT}/{PROC}/task")  # a thread's stat has the same shape
    assert thread is not None and (thread.pid, thread.comm, thread.starttime) == (301, COMM, 104254)


def test_kernel_thread_has_the_flag_and_no_memory():
    st = read_stat(KTHREAD, ROOT)
    assert st is not None and st.kernel_thread and (st.comm, st.ppid, st.rss_bytes) == ("kthreadd", 0, 0)
    status = procfs.read_status(KTHREAD, ROOT)
    assert (status.name, status.state, status.vmrss_bytes, status.threads) == ("kthreadd", "S", 0, 1)
    assert procfs.read_cmdline(KTHREAD, ROOT) == []
    assert procfs.read_smaps(KTHREAD, ROOT).mappings == () and procfs.read_maps(KTHREAD, ROOT).mappings == ()
    assert is_kernel_thread(KTHREAD, ROOT) and not is_kernel_thread(PROC, ROOT)
    assert procfs.thread_stack_pointers(KTHREAD, ROOT) == {KTHREAD: None}


def test_zombie_reads_as_exited_and_empty():
    st = read_stat(ZOMBIE, ROOT)
    assert st is not None and (st.comm, st.state, st.ppid, st.rss_bytes) == ("exited-child", "Z", PROC, 0)
    assert not st.kernel_thread
    status = procfs.read_status(ZOMBIE, ROOT)
    assert (status.state, status.ppid, status.vmrss_bytes) == ("Z", PROC, 0)
    assert procfs.read_cmdline(ZOMBIE, ROOT) == []
    smaps = procfs.read_smaps(ZOMBIE, ROOT)
    assert smaps.mappings == () and not smaps.problems
    assert procfs.thread_stack_pointers(ZOMBIE, ROOT) == {ZOMBIE: None}  # "-1 0x0 0x0": no user sp


def test_status_comm_and_cmdline():
    status = procfs.read_status(PROC, ROOT)
    assert (status.name, status.pid, status.ppid, status.state, status.threads) == (COMM, PROC, 1, "S", 3)
    assert status.nspid == (PROC,) and status.uid == (0, 0, 0, 0) and status.gid == (0, 0, 0, 0)
    assert (status.vmrss_bytes, status.rss_anon_bytes, status.rss_file_bytes) == (1612 << 10, 116 << 10,
                                                                                  1496 << 10)
    assert not status.problems
    assert procfs.read_comm(PROC, ROOT) == COMM
    assert procfs.read_cmdline(PROC, ROOT) == [EXE, COMM]


def test_smaps_rollup_status_and_maps_agree():
    smaps = procfs.read_smaps(PROC, ROOT)
    assert not smaps.problems and len(smaps.mappings) == 28
    rollup = procfs.read_rollup(PROC, ROOT)
    # the same moment of an idle process: every view of its resident memory agrees
    assert smaps.rss == rollup["Rss"] == procfs.read_status(PROC, ROOT).vmrss_bytes == 1612 << 10
    assert sum(m.anonymous for m in smaps.mappings) == rollup["Anonymous"]
    assert [m.path for m in smaps.mappings if m.path == EXE] and any(m.path == "[stack]" for m in smaps.mappings)
    maps = procfs.read_maps(PROC, ROOT)
    assert [(m.start, m.end, m.perms, m.path) for m in maps.mappings] == \
        [(m.start, m.end, m.perms, m.path) for m in smaps.mappings]
    # and attribution of the tree's process sums to its Rss, as it must for every process
    att = attribute_process(smaps.mappings, thread_sps=procfs.thread_stack_pointers(PROC, ROOT))
    assert sum(att.categories.values()) == smaps.rss and att.categories["thread"] > 0


def test_thread_stack_pointers_of_every_thread():
    sps = procfs.thread_stack_pointers(PROC, ROOT)
    assert sps == {300: 0x7ffe9ad85b60, 301: 0x7fbe8bc0aeb0, 302: 0x7fbe8b409eb0}
    # the two extra threads' stacks are anonymous mappings of their own, the main one is [stack]
    smaps = procfs.read_smaps(PROC, ROOT)
    holders = [next(m for m in smaps.mappings if m.start <= sp < m.end) for sp in sps.values()]
    assert holders[0].path == "[stack]" and holders[1].is_anonymous and holders[2].is_anonymous


def test_cgroup_identity_through_the_tree():
    membership = read_proc_cgroup(PROC, ROOT)
    info = container_identity(membership)
    assert info is not None and (info.runtime, info.id[:12], info.pod_uid, info.qos) == (
        "containerd", "af3f1a8b193d", "9278951c-5fce-4ad1-923c-bd793858db89", "burstable")
    host = read_proc_cgroup(KTHREAD, ROOT)
    assert host.version == "hybrid" and host.memory_path == "/" and container_identity(host) is None


def test_a_pid_missing_from_the_tree_is_gone():
    with pytest.raises(ProcessGone):
        read_stat(999, ROOT)
    with pytest.raises(ProcessGone):
        procfs.read_status(999, ROOT)
    assert read_start_time(999, ROOT) is None
